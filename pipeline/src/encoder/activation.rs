//! GELU (the exact, erf-based one BERT and MPNet use). On the CPU backend it runs as one
//! vectorized pass over the data, in place, instead of the backend's per-element `libm` erf,
//! which was an eighth of MiniLM's time; other backends use Burn's own `gelu`.

use pulp::{Simd, WithSimd};

use burn::tensor::activation::gelu as burn_gelu;
use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};

/// GELU of `x`.
pub fn gelu<B: Backend, const D: usize>(x: Tensor<B, D>) -> Tensor<B, D> {
    if !super::on_cpu::<B>() {
        return burn_gelu(x);
    }
    let device = x.device();
    // The backend's own buffer, changed in place (no copy when the tensor is not shared).
    let mut data: TensorData = x.into_data();
    gelu_in_place(super::floats_mut(&mut data));
    Tensor::from_data(data, &device)
}

/// `x · Φ(x)` for every element, on the rayon pool the CPU backend uses, with the widest SIMD
/// the CPU has.
pub fn gelu_in_place(values: &mut [f32]) {
    use rayon::prelude::*;
    values
        .par_chunks_mut(16 * 1024)
        .for_each(|chunk| super::SIMD.dispatch(Gelu(chunk)));
}

struct Gelu<'a>(&'a mut [f32]);

impl WithSimd for Gelu<'_> {
    type Output = ();

    /// A plain loop, compiled here for each instruction set (the vectorizer does the rest).
    #[inline(always)]
    fn with_simd<S: Simd>(self, _simd: S) {
        for v in self.0.iter_mut() {
            let x = *v;
            *v = 0.5 * x * (1.0 + erf(x * std::f32::consts::FRAC_1_SQRT_2));
        }
    }
}

/// erf with absolute error below 5e-7 in f32 (Abramowitz & Stegun 7.1.26, polynomial exp),
/// written without branches or library calls so the loop above vectorizes.
#[inline(always)]
fn erf(z: f32) -> f32 {
    const P: f32 = 0.327_591_1;
    const A: [f32; 5] = [
        0.254_829_6,
        -0.284_496_74,
        1.421_413_8,
        -1.453_152_1,
        1.061_405_4,
    ];
    let a = z.abs();
    let t = 1.0 / (1.0 + P * a);
    let poly = t * (A[0] + t * (A[1] + t * (A[2] + t * (A[3] + t * A[4]))));
    let y = 1.0 - poly * exp_neg(a * a);
    y.copysign(z)
}

/// e^(-x) for x ≥ 0 (relative error near f32 rounding; 2^-125 floor past the f32 range).
#[inline(always)]
pub(crate) fn exp_neg(x: f32) -> f32 {
    let t = (-x * std::f32::consts::LOG2_E).max(-125.0);
    // Round to nearest by the 1.5·2^23 trick (`f32::round` is a libm call on baseline x86-64):
    // `t + MAGIC` holds round(t) in its low mantissa bits, so the integer needs no float to
    // int conversion (which does not vectorize well).
    const MAGIC: f32 = 12_582_912.0;
    let shifted = t + MAGIC;
    let i = shifted - MAGIC;
    // 2^f for f in [-0.5, 0.5]: degree-7 Taylor series of e^(f ln 2) (remainder < 1e-8).
    let g = (t - i) * std::f32::consts::LN_2;
    let p = 1.0
        + g * (1.0
            + g * (0.5
                + g * (1.0 / 6.0
                    + g * (1.0 / 24.0
                        + g * (1.0 / 120.0 + g * (1.0 / 720.0 + g * (1.0 / 5040.0)))))));
    // round(t) + 127 in [2, 127]: the biased exponent of 2^round(t).
    let exponent = shifted
        .to_bits()
        .wrapping_sub(MAGIC.to_bits())
        .wrapping_add(127);
    let scale = f32::from_bits(exponent << 23);
    p * scale
}

#[cfg(test)]
mod tests {
    use super::*;

    fn erf_f64(x: f64) -> f64 {
        // Reference by its Taylor series, exact to ~1e-13 for |x| <= 3.
        let mut sum = 0.0;
        let mut term = x;
        let mut n = 0.0;
        while term.abs() > 1e-17 {
            sum += term / (2.0 * n + 1.0);
            n += 1.0;
            term *= -x * x / n;
            if n > 400.0 {
                break;
            }
        }
        sum * 2.0 / std::f64::consts::PI.sqrt()
    }

    #[test]
    fn erf_and_gelu_are_accurate() {
        let mut worst = 0.0f64;
        for i in -3000..=3000 {
            let x = i as f64 / 1000.0;
            let e = (f64::from(erf(x as f32)) - erf_f64(x)).abs();
            worst = worst.max(e);
        }
        assert!(worst < 5e-7, "erf error {worst}");
        // Past 3, erf is within 2.3e-5 of ±1 and keeps rising.
        for i in 3000..=20000 {
            let x = i as f32 / 1000.0;
            assert!(
                erf(x) >= 0.999_977 && erf(x) <= 1.0 && erf(-x) == -erf(x),
                "{x}"
            );
        }
        let mut v = vec![
            -10.0, -3.0, -1.0, -0.5, 0.0, 0.5, 1.0, 3.0, 10.0, 100.0, -100.0,
        ];
        let expected: Vec<f64> = v
            .iter()
            .map(|x: &f32| {
                let x = f64::from(*x);
                let z = x / 2f64.sqrt();
                let erf = if z.abs() <= 3.0 {
                    erf_f64(z)
                } else {
                    z.signum()
                };
                0.5 * x * (1.0 + erf)
            })
            .collect();
        gelu_in_place(&mut v);
        for (got, want) in v.iter().zip(&expected) {
            let tolerance = 3e-5 * want.abs().max(1.0);
            assert!(
                (f64::from(*got) - want).abs() < tolerance,
                "{got} vs {want}"
            );
        }
    }
}
