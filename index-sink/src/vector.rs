//! Vector arithmetic: the dot product every search uses, and validation plus L2
//! normalization of incoming vectors.
//!
//! The dot product is written over fixed 16-lane chunks with independent accumulators so
//! that the compiler vectorizes it (SSE on baseline x86-64, AVX when the target allows)
//! without `unsafe` or fast-math. Its summation order is fixed, so the same two vectors
//! always give bit-identical scores — hot and main rank an item the same way.

use crate::error::{Error, Result};

const LANES: usize = 16;

/// Dot product of two equal-length slices (the shorter length is used if they differ).
#[inline]
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    let n = a.len().min(b.len());
    let (a, b) = (&a[..n], &b[..n]);
    let mut acc = [0.0f32; LANES];
    let (ca, cb) = (a.chunks_exact(LANES), b.chunks_exact(LANES));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for i in 0..LANES {
            acc[i] += x[i] * y[i];
        }
    }
    // Pairwise reduction keeps the order fixed and short.
    let mut width = LANES / 2;
    while width > 0 {
        for i in 0..width {
            acc[i] += acc[i + width];
        }
        width /= 2;
    }
    let mut sum = acc[0];
    for (x, y) in ra.iter().zip(rb) {
        sum += x * y;
    }
    sum
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
        for n in [0, 1, 15, 16, 17, 33, 384, 385] {
            let a: Vec<f32> = (0..n).map(|i| (i as f32 * 0.37).sin()).collect();
            let b: Vec<f32> = (0..n).map(|i| (i as f32 * 0.11).cos()).collect();
            let naive: f64 = a.iter().zip(&b).map(|(x, y)| f64::from(x * y)).sum();
            assert!((f64::from(dot(&a, &b)) - naive).abs() < 1e-4, "n = {n}");
        }
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
