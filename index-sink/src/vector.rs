//! Vector arithmetic: the dot product every search uses, and validation plus L2
//! normalization of incoming vectors.
//!
//! The dot product runs on the widest SIMD the CPU has (AVX-512 or AVX2 with FMA, detected
//! once at run time through `pulp`, which `gemm` already brings; plain scalar code elsewhere)
//! with four independent accumulators. Its summation order depends only on the instruction
//! set, so on one machine the same two vectors always give bit-identical scores — hot and
//! main rank an item the same way.

use std::sync::LazyLock;

use pulp::{Arch, Simd, WithSimd};

use crate::error::{Error, Result};

static ARCH: LazyLock<Arch> = LazyLock::new(Arch::new);

/// Dot product of two equal-length slices (the shorter length is used if they differ).
#[inline]
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    let n = a.len().min(b.len());
    ARCH.dispatch(Dot {
        a: &a[..n],
        b: &b[..n],
    })
}

/// `out[i] = dot(query, vectors[rows[i]])` for rows of `dim` floats in one flat slice: one
/// SIMD dispatch for the whole batch (a graph search's neighbour list), so the per-call cost
/// of the run-time dispatch is paid once and the loads of consecutive rows overlap.
pub(crate) fn dots(query: &[f32], vectors: &[f32], dim: usize, rows: &[u32], out: &mut Vec<f32>) {
    out.clear();
    ARCH.dispatch(Dots {
        query,
        vectors,
        dim,
        rows,
        out,
    });
}

struct Dots<'a> {
    query: &'a [f32],
    vectors: &'a [f32],
    dim: usize,
    rows: &'a [u32],
    out: &'a mut Vec<f32>,
}

impl WithSimd for Dots<'_> {
    type Output = ();

    #[inline(always)]
    fn with_simd<S: Simd>(self, simd: S) {
        let q = &self.query[..self.dim.min(self.query.len())];
        for &row in self.rows {
            let start = row as usize * self.dim;
            let v = &self.vectors[start..start + self.dim];
            self.out.push(Dot { a: q, b: v }.with_simd(simd));
        }
    }
}

struct Dot<'a> {
    a: &'a [f32],
    b: &'a [f32],
}

impl WithSimd for Dot<'_> {
    type Output = f32;

    #[inline(always)]
    fn with_simd<S: Simd>(self, simd: S) -> f32 {
        let (va, ta) = S::as_simd_f32s(self.a);
        let (vb, tb) = S::as_simd_f32s(self.b);
        let zero = simd.splat_f32s(0.0);
        let mut acc = [zero; 4];
        let (ca, cb) = (va.chunks_exact(4), vb.chunks_exact(4));
        let (ra, rb) = (ca.remainder(), cb.remainder());
        for (x, y) in ca.zip(cb) {
            for i in 0..4 {
                acc[i] = simd.mul_add_e_f32s(x[i], y[i], acc[i]);
            }
        }
        for (i, (x, y)) in ra.iter().zip(rb).enumerate() {
            acc[i] = simd.mul_add_e_f32s(*x, *y, acc[i]);
        }
        let sum = simd.add_f32s(simd.add_f32s(acc[0], acc[1]), simd.add_f32s(acc[2], acc[3]));
        let mut sum = simd.reduce_sum_f32s(sum);
        for (x, y) in ta.iter().zip(tb) {
            sum = x.mul_add(*y, sum);
        }
        sum
    }
}

/// Checks the dimension and finiteness and returns the L2-normalized copy.
pub fn normalized(v: &[f32], dim: usize) -> Result<Vec<f32>> {
    if v.len() != dim {
        return Err(Error::DimensionMismatch {
            expected: dim,
            got: v.len(),
        });
    }
    if let Some(index) = v.iter().position(|x| !x.is_finite()) {
        return Err(Error::NonFinite { index });
    }
    // Accumulate in f64: large components must not overflow the norm.
    let norm = v
        .iter()
        .map(|&x| f64::from(x) * f64::from(x))
        .sum::<f64>()
        .sqrt();
    if !(norm.is_finite() && norm > f64::from(f32::MIN_POSITIVE)) {
        return Err(Error::ZeroVector);
    }
    Ok(v.iter().map(|&x| (f64::from(x) / norm) as f32).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dot_matches_naive_for_every_remainder() {
        for n in [0, 1, 7, 8, 9, 15, 16, 17, 33, 63, 64, 65, 384, 385, 768] {
            let a: Vec<f32> = (0..n).map(|i| (i as f32 * 0.37).sin()).collect();
            let b: Vec<f32> = (0..n).map(|i| (i as f32 * 0.11).cos()).collect();
            let naive: f64 = a.iter().zip(&b).map(|(x, y)| f64::from(x * y)).sum();
            assert!((f64::from(dot(&a, &b)) - naive).abs() < 1e-4, "n = {n}");
        }
    }

    #[test]
    fn batched_dots_equal_single_dots() {
        let dim = 37;
        let vectors: Vec<f32> = (0..dim * 5).map(|i| (i as f32 * 0.13).sin()).collect();
        let query: Vec<f32> = (0..dim).map(|i| (i as f32 * 0.7).cos()).collect();
        let mut out = vec![9.0];
        dots(&query, &vectors, dim, &[4, 0, 2], &mut out);
        let want: Vec<f32> = [4, 0, 2]
            .iter()
            .map(|&r| dot(&query, &vectors[r * dim..(r + 1) * dim]))
            .collect();
        assert_eq!(out, want);
    }

    #[test]
    fn normalization_and_rejections() {
        let v = normalized(&[3.0, 4.0], 2).unwrap();
        assert_eq!(v, vec![0.6, 0.8]);
        assert!(matches!(
            normalized(&[1.0], 2),
            Err(Error::DimensionMismatch {
                expected: 2,
                got: 1
            })
        ));
        assert!(matches!(
            normalized(&[1.0, f32::NAN], 2),
            Err(Error::NonFinite { index: 1 })
        ));
        assert!(matches!(
            normalized(&[f32::INFINITY, 0.0], 2),
            Err(Error::NonFinite { index: 0 })
        ));
        assert!(matches!(normalized(&[0.0, 0.0], 2), Err(Error::ZeroVector)));
        let big = normalized(&[f32::MAX, f32::MAX], 2).unwrap();
        assert!((dot(&big, &big) - 1.0).abs() < 1e-6);
    }
}
