//! The closed-form kinds: orthogonal Procrustes and reduced-rank (low-rank affine) ridge
//! regression, in f64 with `nalgebra`.

use crate::{Layers, Matrix};
use nalgebra::{DMatrix, DVector, SymmetricEigen};

use super::{Pairs, Result};
use crate::AdapterError;

/// The pairs as centered f64 matrices `X` (n × in), `Y` (n × out) and their column means.
struct Centered {
    x: DMatrix<f64>,
    y: DMatrix<f64>,
    mean_x: DVector<f64>,
    mean_y: DVector<f64>,
}

fn centered(pairs: &Pairs) -> Centered {
    let n = pairs.len();
    let x = DMatrix::from_row_iterator(n, pairs.in_dim, pairs.new.iter().map(|&v| f64::from(v)));
    let y = DMatrix::from_row_iterator(n, pairs.out_dim, pairs.old.iter().map(|&v| f64::from(v)));
    let mean_x = x.row_mean().transpose();
    let mean_y = y.row_mean().transpose();
    let mut x = x;
    let mut y = y;
    for mut row in x.row_iter_mut() {
        row -= mean_x.transpose();
    }
    for mut row in y.row_iter_mut() {
        row -= mean_y.transpose();
    }
    Centered {
        x,
        y,
        mean_x,
        mean_y,
    }
}

/// `w` (out × in) as an f32 [`Matrix`] and `b = mean_y − w · mean_x`.
fn export(w: &DMatrix<f64>, c: &Centered) -> (Matrix, Vec<f32>) {
    let b = &c.mean_y - w * &c.mean_x;
    let data = w.transpose().iter().map(|&v| v as f32).collect();
    (
        Matrix::new(w.nrows(), w.ncols(), data),
        b.iter().map(|&v| v as f32).collect(),
    )
}

/// Orthogonal Procrustes with scale and translation: `y ≈ s Rᵀ (x − x̄) + ȳ`, `R` (in × out)
/// with orthonormal columns from the SVD of `Xᵀ Y = U Σ Vᵀ` (`R = U Vᵀ`), `s = tr Σ / ‖X‖²`.
pub fn procrustes(pairs: &Pairs) -> Result<Layers> {
    procrustes_with(pairs, &ProcrustesOptions::default())
}

/// Variants of the Procrustes fit, each still one linear map (the sink serves it as it serves
/// plain Procrustes).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct ProcrustesOptions {
    /// Whiten both spaces before the rotation (`y ≈ Σ_y^{½} Rᵀ Σ_x^{-½} (x − x̄) + ȳ`, `R` from
    /// the SVD of the whitened cross-covariance `Σ_x^{-½} Σ_xy Σ_y^{-½}`: the canonical
    /// directions of CCA matched one to one, without shrinking by their correlations — the
    /// shrunk map is ridge regression, which `affine` at full rank is). The value regularizes
    /// each covariance by that share of its mean eigenvalue.
    pub whiten: Option<f64>,
    /// Scale each output coordinate of the fitted map by its least-squares factor (a diagonal
    /// scaling after the rotation).
    pub diag_scale: bool,
}

/// Procrustes with `options`.
pub fn procrustes_with(pairs: &Pairs, options: &ProcrustesOptions) -> Result<Layers> {
    let c = centered(pairs);
    let mut w = match options.whiten {
        Some(eps) => whitened_map(&c, eps)?,
        None => procrustes_map(&c)?,
    };
    if options.diag_scale {
        w = diag_scaled(&c, w);
    }
    let (w, b) = export(&w, &c);
    Ok(Layers::Linear { w, b })
}

/// The covariance `AᵀA / n` in its eigenbasis, each eigenvalue raised by `eps` times their
/// mean: decomposed once, raised to any power.
struct Spectrum {
    vectors: DMatrix<f64>,
    values: DVector<f64>,
}

impl Spectrum {
    fn of(a: &DMatrix<f64>, eps: f64) -> Self {
        let n = a.nrows().max(1) as f64;
        let eig = SymmetricEigen::new(a.tr_mul(a) / n);
        let mean =
            eig.eigenvalues.iter().map(|v| v.max(0.0)).sum::<f64>() / eig.eigenvalues.len() as f64;
        let values = eig.eigenvalues.map(|v| v.max(0.0) + eps * mean);
        Self {
            vectors: eig.eigenvectors,
            values,
        }
    }

    /// `Σ^{power}`.
    fn power(&self, power: f64) -> DMatrix<f64> {
        let d = self.values.map(|v| v.powf(power));
        &self.vectors * DMatrix::from_diagonal(&d) * self.vectors.transpose()
    }
}

/// Whitened Procrustes (see [`ProcrustesOptions::whiten`]), as out × in.
fn whitened_map(c: &Centered, eps: f64) -> Result<DMatrix<f64>> {
    if !(eps.is_finite() && eps > 0.0) {
        return Err(AdapterError::refused(
            "the whitening's regularization must be a positive number",
        ));
    }
    let x_inv_sqrt = Spectrum::of(&c.x, eps).power(-0.5);
    let y = Spectrum::of(&c.y, eps);
    let (y_sqrt, y_inv_sqrt) = (y.power(0.5), y.power(-0.5));
    let m = &x_inv_sqrt * c.x.tr_mul(&c.y) * &y_inv_sqrt;
    let svd = m.svd(true, true);
    let (Some(u), Some(v_t)) = (svd.u.as_ref(), svd.v_t.as_ref()) else {
        return Err(AdapterError::refused(
            "the SVD of the whitened cross-covariance did not converge",
        ));
    };
    let r = u * v_t;
    Ok(y_sqrt * r.transpose() * x_inv_sqrt)
}

/// `diag(d) w`, `d_j` the least-squares scale of output coordinate `j` over the pairs.
fn diag_scaled(c: &Centered, w: DMatrix<f64>) -> DMatrix<f64> {
    let fitted = &c.x * w.transpose();
    let mut w = w;
    for j in 0..w.nrows() {
        let (f, y) = (fitted.column(j), c.y.column(j));
        let denominator = f.norm_squared();
        let d = if denominator > 0.0 {
            f.dot(&y) / denominator
        } else {
            1.0
        };
        w.row_mut(j).scale_mut(d);
    }
    w
}

/// `s Rᵀ` (out × in).
fn procrustes_map(c: &Centered) -> Result<DMatrix<f64>> {
    let m = c.x.tr_mul(&c.y);
    let svd = m.svd(true, true);
    let (Some(u), Some(v_t)) = (svd.u.as_ref(), svd.v_t.as_ref()) else {
        return Err(AdapterError::refused(
            "the SVD of the cross-covariance did not converge",
        ));
    };
    let r = u * v_t;
    let scale = svd.singular_values.sum() / c.x.norm_squared();
    if !scale.is_finite() || scale <= 0.0 {
        return Err(AdapterError::refused(
            "the new vectors do not vary (every pair has the same new vector?)",
        ));
    }
    Ok(r.transpose() * scale)
}

/// Reduced-rank ridge regression: `B = (XᵀX + λI)⁻¹ XᵀY`, then `B V_r V_rᵀ` where `V_r` holds
/// the top `rank` eigenvectors of the fitted values' covariance `Bᵀ XᵀX B`; stored as
/// `U = (B V_r)ᵀ` (rank × in) and `V = V_r` (out × rank). `λ = ridge · tr(XᵀX) / in`.
pub fn affine(pairs: &Pairs, rank: usize, ridge: f64) -> Result<Layers> {
    if rank == 0 {
        return Err(AdapterError::refused("the rank must be at least 1"));
    }
    let c = centered(pairs);
    let rank = rank.min(pairs.out_dim);
    let xtx = c.x.tr_mul(&c.x);
    let lambda = ridge * xtx.trace() / pairs.in_dim as f64;
    let mut reg = xtx.clone();
    for i in 0..reg.nrows() {
        reg[(i, i)] += lambda;
    }
    let chol = reg.cholesky().ok_or_else(|| {
        AdapterError::refused("XᵀX + λI is not positive definite (raise --ridge)")
    })?;
    let b = chol.solve(&c.x.tr_mul(&c.y));
    let fitted = b.transpose() * &xtx * &b;
    let eig = SymmetricEigen::new(fitted);
    let mut order: Vec<usize> = (0..eig.eigenvalues.len()).collect();
    order.sort_by(|&i, &j| eig.eigenvalues[j].total_cmp(&eig.eigenvalues[i]));
    let v_r = DMatrix::from_fn(pairs.out_dim, rank, |row, k| {
        eig.eigenvectors[(row, order[k])]
    });
    let u = (&b * &v_r).transpose();
    let w = &v_r * &u;
    let bias = &c.mean_y - &w * &c.mean_x;
    let f32s = |m: &DMatrix<f64>| m.transpose().iter().map(|&v| v as f32).collect();
    Ok(Layers::LowRank {
        u: Matrix::new(rank, pairs.in_dim, f32s(&u)),
        v: Matrix::new(pairs.out_dim, rank, f32s(&v_r)),
        b: bias.iter().map(|&v| v as f32).collect(),
    })
}

/// The Procrustes map's weights as `(w: out × in, b)`, for the MLP's starting point.
pub fn procrustes_weights(pairs: &Pairs) -> Result<(Matrix, Vec<f32>)> {
    let c = centered(pairs);
    let w = procrustes_map(&c)?;
    Ok(export(&w, &c))
}
