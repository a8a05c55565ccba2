//! The maps an artifact holds: row-major f32 matrices, one row per output, so that each
//! output is one dot product over a contiguous row.

/// A row-major f32 matrix, one row per output.
#[derive(Debug, Clone, PartialEq)]
pub struct Matrix {
    /// Rows (outputs).
    pub rows: usize,
    /// Columns (inputs).
    pub cols: usize,
    /// `rows × cols` values.
    pub data: Vec<f32>,
}

impl Matrix {
    /// A matrix from its values; `data.len()` must be `rows × cols`.
    pub fn new(rows: usize, cols: usize, data: Vec<f32>) -> Self {
        assert_eq!(data.len(), rows * cols, "matrix data has the wrong length");
        Matrix { rows, cols, data }
    }

    /// `out = self · x`.
    pub(crate) fn apply(&self, x: &[f32], out: &mut Vec<f32>) {
        out.clear();
        out.extend(self.data.chunks_exact(self.cols).map(|row| dot(row, x)));
    }
}

/// The maps an artifact holds.
#[derive(Debug, Clone, PartialEq)]
pub enum Layers {
    /// `w x + b`.
    Linear {
        /// out × in.
        w: Matrix,
        /// out.
        b: Vec<f32>,
    },
    /// `v (u x) + b`.
    LowRank {
        /// r × in.
        u: Matrix,
        /// out × r.
        v: Matrix,
        /// out.
        b: Vec<f32>,
    },
    /// `w x + b + w2 relu(w1 x + b1) + b2`.
    Residual {
        /// out × in.
        w: Matrix,
        /// out (the residual's output bias folded in).
        b: Vec<f32>,
        /// hidden × in.
        w1: Matrix,
        /// hidden.
        b1: Vec<f32>,
        /// out × hidden.
        w2: Matrix,
    },
}

impl Layers {
    /// Its matrices: `[w]`, `[u, v]` or `[w, w1, w2]`.
    pub(crate) fn matrices(&self) -> Vec<&Matrix> {
        match self {
            Layers::Linear { w, .. } => vec![w],
            Layers::LowRank { u, v, .. } => vec![u, v],
            Layers::Residual { w, w1, w2, .. } => vec![w, w1, w2],
        }
    }
}

/// `a · b` in f32: the reference product of the exact path. Eight independent partial sums,
/// so the compiler can keep them in one SIMD register.
pub(crate) fn dot(a: &[f32], b: &[f32]) -> f32 {
    const LANES: usize = 8;
    let n = a.len().min(b.len());
    let (a, b) = (&a[..n], &b[..n]);
    let mut acc = [0.0f32; LANES];
    for (x, y) in a.chunks_exact(LANES).zip(b.chunks_exact(LANES)) {
        for i in 0..LANES {
            acc[i] += x[i] * y[i];
        }
    }
    let tail = n - n % LANES;
    let rest: f32 = a[tail..].iter().zip(&b[tail..]).map(|(x, y)| x * y).sum();
    acc.iter().sum::<f32>() + rest
}
