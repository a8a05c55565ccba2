//! Int8 matrix–vector products: how a sink applies an adapter's matrices to a query in a few
//! microseconds.
//!
//! A matrix is quantized once, per row, to integers in ±63 with one f32 scale per row; each
//! query is quantized per call to integers in ±127 with one scale and shifted by 127 into
//! 0..=254, the unsigned operand AVX2's `vpmaddubsw` wants. From there the arithmetic is exact:
//! a pair of products is at most 2 · 254 · 63 = 32,004, inside the instruction's saturating
//! i16, so nothing saturates, and the shift is taken back out with each row's precomputed sum.
//! The only error is the two roundings (the cosine of the int8 map to the f32 map is measured
//! by the adapter evaluation). Weights take a quarter of f32's bytes.
//!
//! On x86-64 the kernel is SIMD, chosen at run time ([`Kernel`]): with AVX-512 VNNI one
//! `vpdpbusd` does what AVX2 needs three instructions for, with the same integers; with AVX2
//! alone (pulp's `V3`), `vpmaddubsw` + `vpmaddwd`; elsewhere a scalar loop. All three give
//! bit-identical results (tested on every kernel the CPU has).
//!
//! A non-finite or all-zero input is not quantized: [`Int8Matrix::apply`] returns `None` and
//! the caller uses the f32 path, which reports it.

use std::sync::LazyLock;

use crate::Matrix;

/// Columns per SIMD block (one 256-bit register of bytes).
const BLOCK: usize = 32;
/// Rows computed together (their accumulators fill eight registers).
const ROWS: usize = 8;
/// Blocks of quantized input kept on the stack.
const STACK_BLOCKS: usize = 64;
/// Largest quantized weight.
const W_MAX: f32 = 63.0;
/// Largest quantized input before the shift.
const X_MAX: f32 = 127.0;
/// The shift that makes a quantized input unsigned.
const X_SHIFT: i32 = 127;

/// The code that computes the products; all give bit-identical results (tested).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kernel {
    /// A plain loop (every CPU; the others' reference).
    Scalar,
    /// AVX2 (pulp's `V3`): `vpmaddubsw`, `vpmaddwd`, `vpaddd` per 32 products.
    Avx2,
    /// AVX2 with AVX-512 VNNI's 256-bit `vpdpbusd`: one instruction per 32 products (Intel
    /// since Ice Lake, AMD since Zen 4).
    Vnni,
}

impl Kernel {
    /// Whether this CPU can run the kernel.
    fn available(self) -> bool {
        match self {
            Kernel::Scalar => true,
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx2 => pulp::x86::V3::is_available(),
            #[cfg(target_arch = "x86_64")]
            Kernel::Vnni => {
                pulp::x86::V3::is_available()
                    && std::arch::is_x86_feature_detected!("avx512vnni")
                    && std::arch::is_x86_feature_detected!("avx512vl")
            }
            #[cfg(not(target_arch = "x86_64"))]
            _ => false,
        }
    }

    /// The fastest kernel this CPU has, detected once; `EMBEDSTREAM_NO_VNNI` set in the
    /// environment passes over VNNI (to compare the two SIMD kernels on one machine).
    fn best() -> Kernel {
        static BEST: LazyLock<Kernel> = LazyLock::new(|| {
            let no_vnni = std::env::var_os("EMBEDSTREAM_NO_VNNI").is_some();
            [Kernel::Vnni, Kernel::Avx2]
                .into_iter()
                .filter(|&k| !(no_vnni && k == Kernel::Vnni))
                .find(|k| k.available())
                .unwrap_or(Kernel::Scalar)
        });
        *BEST
    }
}

/// One block of quantized weights, aligned so that no load straddles two cache lines.
#[derive(Debug, Clone, Copy, PartialEq)]
#[repr(align(32))]
struct Block([i8; BLOCK]);

/// Where block `b` of row `r` is kept: a group of `ROWS` rows is stored block by block, the
/// rows' blocks side by side, so the kernel reads each group as one sequential stream.
fn block_index(r: usize, b: usize, blocks: usize) -> usize {
    (r / ROWS * blocks + b) * ROWS + r % ROWS
}

/// A matrix quantized for int8 products, one row per output.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Int8Matrix {
    rows: usize,
    cols: usize,
    /// `cols / BLOCK`, rounded up.
    blocks: usize,
    /// Rows (padded to a multiple of `ROWS` with zero rows) × blocks, in [`block_index`]'s
    /// order; padding columns are 0.
    weights: Vec<Block>,
    /// Per (padded) row: the f32 value of one quantized step.
    scales: Vec<f32>,
    /// Per (padded) row: `X_SHIFT` × the sum of its quantized weights.
    shifts: Vec<i32>,
}

impl Int8Matrix {
    /// Quantizes `m`, each row to ±63 with its own scale.
    pub(crate) fn new(m: &Matrix) -> Self {
        let blocks = m.cols.div_ceil(BLOCK);
        let padded = m.rows.div_ceil(ROWS) * ROWS;
        let mut weights = vec![Block([0; BLOCK]); padded * blocks];
        let mut scales = vec![0f32; padded];
        let mut shifts = vec![0i32; padded];
        for (r, row) in m.data.chunks_exact(m.cols).enumerate() {
            let max = row.iter().fold(0f32, |a, v| a.max(v.abs()));
            if !(max.is_finite() && max > 0.0) {
                continue;
            }
            let scale = max / W_MAX;
            let mut sum = 0i32;
            for (j, &v) in row.iter().enumerate() {
                let q = (v / scale).round().clamp(-W_MAX, W_MAX) as i8;
                weights[block_index(r, j / BLOCK, blocks)].0[j % BLOCK] = q;
                sum += i32::from(q);
            }
            scales[r] = scale;
            shifts[r] = X_SHIFT * sum;
        }
        Int8Matrix {
            rows: m.rows,
            cols: m.cols,
            blocks,
            weights,
            scales,
            shifts,
        }
    }

    /// `out = self · x` (approximately), or `None` when `x` is not finite, is all zero or
    /// does not have `cols` values.
    pub(crate) fn apply(&self, x: &[f32], out: &mut Vec<f32>) -> Option<()> {
        self.apply_with(Kernel::best(), x, out)
    }

    /// [`Int8Matrix::apply`] with the given kernel (each gives the same result).
    fn apply_with(&self, kernel: Kernel, x: &[f32], out: &mut Vec<f32>) -> Option<()> {
        if x.len() != self.cols {
            return None;
        }
        // The quantized input on the stack up to 2,048 columns (a heap allocation per query
        // was measurable).
        let mut stack = [[X_SHIFT as u8; BLOCK]; STACK_BLOCKS];
        let mut heap = Vec::new();
        let xq: &mut [[u8; BLOCK]] = if self.blocks <= STACK_BLOCKS {
            &mut stack[..self.blocks]
        } else {
            heap.resize(self.blocks, [X_SHIFT as u8; BLOCK]);
            &mut heap
        };
        out.clear();
        out.resize(self.scales.len(), 0.0);
        #[cfg(target_arch = "x86_64")]
        if let (Some(simd), Kernel::Avx2 | Kernel::Vnni) = (pulp::x86::V3::try_new(), kernel) {
            simd.vectorize(avx2::Apply {
                simd,
                vnni: kernel == Kernel::Vnni,
                m: self,
                x,
                xq,
                out,
            })?;
            out.truncate(self.rows);
            return Some(());
        }
        let step = self.quantize(x, xq)?;
        self.rows_scalar(xq, step, out);
        out.truncate(self.rows);
        Some(())
    }

    /// `x` (`cols` values) into `xq` (`blocks` blocks, padding already 127) as unsigned bytes,
    /// `round(x · 127 / max|x|) + 127`, and the value of one step; `None` for an input that is
    /// not finite or all zero.
    fn quantize(&self, x: &[f32], xq: &mut [[u8; BLOCK]]) -> Option<f32> {
        let (mut max, mut finite) = (0f32, true);
        for v in x {
            finite &= v.is_finite();
            max = max.max(v.abs());
        }
        let inv = inverse_step(max, finite)?;
        for (block, chunk) in xq.iter_mut().zip(x.chunks(BLOCK)) {
            for (q, &v) in block.iter_mut().zip(chunk) {
                *q = quantize_one(v, inv);
            }
        }
        Some(max / X_MAX)
    }

    /// The exact integer products, one row at a time (every CPU; the SIMD kernel's reference).
    fn rows_scalar(&self, xq: &[[u8; BLOCK]], step: f32, out: &mut [f32]) {
        for (r, o) in out.iter_mut().enumerate() {
            let mut acc = 0i32;
            for (b, x) in xq.iter().enumerate() {
                let Block(w) = &self.weights[block_index(r, b, self.blocks)];
                for (&w, &x) in w.iter().zip(x) {
                    acc += i32::from(w) * i32::from(x);
                }
            }
            *o = ((acc - self.shifts[r]) as f32) * step * self.scales[r];
        }
    }
}

/// `127 / max|x|`, or `None` when there is nothing (finite) to scale.
#[inline(always)]
fn inverse_step(max: f32, finite: bool) -> Option<f32> {
    (finite && max.is_finite() && max > 0.0).then(|| X_MAX / max)
}

/// One input value as an unsigned byte (ties to even, as the SIMD conversion rounds).
#[inline(always)]
fn quantize_one(v: f32, inv: f32) -> u8 {
    ((v * inv).round_ties_even().clamp(-X_MAX, X_MAX) as i32 + X_SHIFT) as u8
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::{__m256, __m256i, _CMP_UNORD_Q};

    use pulp::x86::V3;

    use super::{BLOCK, Int8Matrix, ROWS, X_MAX, X_SHIFT, inverse_step, quantize_one};

    /// Quantizes the input (`vcvtps2dq` rounds ties to even, like the scalar path), then the
    /// rows ([`rows_with`]): with `vpmaddubsw` (32 products summed in pairs to i16) then
    /// `vpmaddwd` by ones (to i32), or with VNNI's `vpdpbusd`.
    pub(super) struct Apply<'a> {
        pub(super) simd: V3,
        /// Use [`vnni::rows`] (only when `Kernel::Vnni` is available).
        pub(super) vnni: bool,
        pub(super) m: &'a Int8Matrix,
        pub(super) x: &'a [f32],
        pub(super) xq: &'a mut [[u8; BLOCK]],
        pub(super) out: &'a mut [f32],
    }

    impl pulp::NullaryFnOnce for Apply<'_> {
        type Output = Option<()>;

        #[inline(always)]
        fn call(self) -> Option<()> {
            let Apply {
                simd,
                vnni,
                m,
                x,
                xq,
                out,
            } = self;
            let (avx, avx2) = (simd.avx, simd.avx2);

            let sign = avx._mm256_set1_ps(-0.0);
            let (mut vmax, mut vnan) = (avx._mm256_setzero_ps(), avx._mm256_setzero_ps());
            let (lanes, tail) = x.split_at(x.len() / 8 * 8);
            for v in lanes.chunks_exact(8) {
                let v: __m256 = pulp::cast(<[f32; 8]>::try_from(v).expect("8 lanes"));
                vmax = avx._mm256_max_ps(vmax, avx._mm256_andnot_ps(sign, v));
                vnan = avx._mm256_or_ps(vnan, avx._mm256_cmp_ps::<_CMP_UNORD_Q>(v, v));
            }
            let (mut max, mut finite) = (0f32, avx._mm256_movemask_ps(vnan) == 0);
            for m in pulp::cast::<__m256, [f32; 8]>(vmax) {
                max = max.max(m);
            }
            for v in tail {
                finite &= v.is_finite();
                max = max.max(v.abs());
            }
            let inv = inverse_step(max, finite)?;
            let vinv = avx._mm256_set1_ps(inv);
            let shift = avx._mm256_set1_epi32(X_SHIFT);
            let order = avx._mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
            let (full, rest) = x.split_at(x.len() / BLOCK * BLOCK);
            for (q, v) in xq.iter_mut().zip(full.chunks_exact(BLOCK)) {
                let lane = |i: usize| {
                    let v: __m256 =
                        pulp::cast(<[f32; 8]>::try_from(&v[i * 8..i * 8 + 8]).expect("8 lanes"));
                    avx2._mm256_add_epi32(avx._mm256_cvtps_epi32(avx._mm256_mul_ps(v, vinv)), shift)
                };
                let ab = avx2._mm256_packs_epi32(lane(0), lane(1));
                let cd = avx2._mm256_packs_epi32(lane(2), lane(3));
                let bytes =
                    avx2._mm256_permutevar8x32_epi32(avx2._mm256_packus_epi16(ab, cd), order);
                *q = pulp::cast(bytes);
            }
            if let Some(q) = xq.get_mut(full.len() / BLOCK) {
                for (q, &v) in q.iter_mut().zip(rest) {
                    *q = quantize_one(v, inv);
                }
            }
            let step = max / X_MAX;
            if vnni {
                vnni::rows(simd, m, xq, step, out);
            } else {
                let ones = avx._mm256_set1_epi16(1);
                rows_with(simd, m, xq, step, out, |acc, x, w| {
                    let pairs = avx2._mm256_maddubs_epi16(x, w);
                    avx2._mm256_add_epi32(acc, avx2._mm256_madd_epi16(pairs, ones))
                });
            }
            Some(())
        }
    }

    /// `out = step · scale · (weights · xq − shift)` for every row, eight rows at a time:
    /// per block of 32 columns, one load of the input and, per row, `dot(acc, x, w)`, which
    /// adds to each of `acc`'s eight i32 lanes the four products of its four bytes of `x`
    /// (unsigned) and `w` (signed).
    #[inline(always)]
    pub(super) fn rows_with(
        simd: V3,
        m: &Int8Matrix,
        xq: &[[u8; BLOCK]],
        step: f32,
        out: &mut [f32],
        dot: impl Fn(__m256i, __m256i, __m256i) -> __m256i,
    ) {
        let (avx, avx2) = (simd.avx, simd.avx2);
        let step = avx._mm256_set1_ps(step);
        let group = ROWS * m.blocks;
        for ((weights, shifts), (scales, out)) in m
            .weights
            .chunks_exact(group)
            .zip(m.shifts.chunks_exact(ROWS))
            .zip(m.scales.chunks_exact(ROWS).zip(out.chunks_exact_mut(ROWS)))
        {
            let mut acc = [avx._mm256_setzero_si256(); ROWS];
            for (x, w) in xq.iter().zip(weights.chunks_exact(ROWS)) {
                let x: __m256i = pulp::cast(*x);
                for k in 0..ROWS {
                    acc[k] = dot(acc[k], x, pulp::cast(w[k].0));
                }
            }
            // Eight accumulators into one vector of eight row totals.
            let h01 = avx2._mm256_hadd_epi32(acc[0], acc[1]);
            let h23 = avx2._mm256_hadd_epi32(acc[2], acc[3]);
            let h45 = avx2._mm256_hadd_epi32(acc[4], acc[5]);
            let h67 = avx2._mm256_hadd_epi32(acc[6], acc[7]);
            let h0123 = avx2._mm256_hadd_epi32(h01, h23);
            let h4567 = avx2._mm256_hadd_epi32(h45, h67);
            let totals = avx2._mm256_add_epi32(
                avx2._mm256_permute2x128_si256::<0x20>(h0123, h4567),
                avx2._mm256_permute2x128_si256::<0x31>(h0123, h4567),
            );
            let shifts: [i32; ROWS] = shifts.try_into().expect("ROWS shifts");
            let scales: [f32; ROWS] = scales.try_into().expect("ROWS scales");
            let exact = avx2._mm256_sub_epi32(totals, pulp::cast(shifts));
            let values: __m256 = avx._mm256_mul_ps(
                avx._mm256_mul_ps(avx._mm256_cvtepi32_ps(exact), step),
                pulp::cast(scales),
            );
            out.copy_from_slice(&pulp::cast::<__m256, [f32; ROWS]>(values));
        }
    }

    /// The rows with AVX-512 VNNI's `vpdpbusd` (256-bit form), which does in one instruction
    /// what AVX2 needs three for (`vpmaddubsw`, `vpmaddwd`, `vpaddd`), with the same integers:
    /// each i32 lane gets the same four products either way, and no intermediate saturates
    /// (AVX2's i16 pairs stay within bounds by the quantization's ranges, VNNI has none).
    mod vnni {
        use std::arch::x86_64::_mm256_dpbusd_epi32;

        use pulp::x86::V3;

        use super::super::{BLOCK, Int8Matrix, Kernel};

        /// [`super::rows_with`] with `vpdpbusd`.
        ///
        /// # Panics
        /// When the CPU has no AVX-512 VNNI (callers choose [`Kernel::Vnni`] only when it is
        /// available).
        pub(super) fn rows(
            simd: V3,
            m: &Int8Matrix,
            xq: &[[u8; BLOCK]],
            step: f32,
            out: &mut [f32],
        ) {
            assert!(Kernel::Vnni.available(), "the CPU has no AVX-512 VNNI");
            // SAFETY: `rows_vnni`'s target features are AVX2 (which `simd` proves the CPU
            // has) and AVX-512 VNNI with AVX-512VL (detected at run time just above); it
            // has no other requirement: its body is safe code.
            #[allow(unsafe_code)]
            unsafe {
                rows_vnni(simd, m, xq, step, out);
            }
        }

        #[target_feature(enable = "avx2,avx512vnni,avx512vl")]
        fn rows_vnni(simd: V3, m: &Int8Matrix, xq: &[[u8; BLOCK]], step: f32, out: &mut [f32]) {
            super::rows_with(simd, m, xq, step, out, |acc, x, w| {
                _mm256_dpbusd_epi32(acc, x, w)
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn random(seed: &mut u64, n: usize, scale: f32) -> Vec<f32> {
        (0..n)
            .map(|_| {
                *seed ^= *seed << 13;
                *seed ^= *seed >> 7;
                *seed ^= *seed << 17;
                ((*seed >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * scale
            })
            .collect()
    }

    /// The kernels this CPU can run (a SIMD kernel the CPU lacks is said, not failed).
    fn kernels() -> impl Iterator<Item = Kernel> + Clone {
        [Kernel::Scalar, Kernel::Avx2, Kernel::Vnni]
            .into_iter()
            .filter(|k| {
                let here = k.available();
                if !here {
                    eprintln!("{k:?} not tested: this CPU cannot run it");
                }
                here
            })
    }

    #[test]
    fn the_best_kernel_is_one_this_cpu_runs() {
        let best = Kernel::best();
        assert!(best.available());
        if std::env::var_os("EMBEDSTREAM_NO_VNNI").is_none() {
            assert_eq!(best == Kernel::Vnni, Kernel::Vnni.available());
        }
    }

    fn cosine(a: &[f32], b: &[f32]) -> f64 {
        let d: f64 = a.iter().zip(b).map(|(x, y)| f64::from(x * y)).sum();
        let n = |v: &[f32]| v.iter().map(|x| f64::from(x * x)).sum::<f64>().sqrt();
        d / (n(a) * n(b))
    }

    #[test]
    fn products_are_close_to_f32_and_simd_equals_scalar() {
        let mut seed = 0x9e37_79b9_7f4a_7c15;
        // Odd shapes: rows not a multiple of 8, columns not a multiple of 32.
        for (rows, cols) in [(384, 768), (13, 70), (1, 5), (64, 256)] {
            let m = Matrix::new(rows, cols, random(&mut seed, rows * cols, 0.2));
            let q = Int8Matrix::new(&m);
            for _ in 0..20 {
                let x = random(&mut seed, cols, 2.0);
                let want: Vec<f32> = m
                    .data
                    .chunks_exact(cols)
                    .map(|row| row.iter().zip(&x).map(|(a, b)| a * b).sum())
                    .collect();
                let mut got = Vec::new();
                q.apply(&x, &mut got).expect("finite input");
                assert_eq!(got.len(), rows);
                if rows > 1 {
                    // Few outputs vary more; the adapter's shape is held to 0.9999.
                    let bound = if rows >= 384 { 0.9999 } else { 0.999 };
                    let c = cosine(&got, &want);
                    assert!(c > bound, "{rows}×{cols}: cosine {c}");
                }
                // Each output is off by no more than its roundings allow: half a step of x
                // times |w|, half a step of w times |x|, and their product.
                let x_step = x.iter().fold(0f32, |a, v| a.max(v.abs())) / X_MAX;
                let x_abs: f32 = x.iter().map(|v| v.abs()).sum();
                for (r, row) in m.data.chunks_exact(cols).enumerate() {
                    let w_step = row.iter().fold(0f32, |a, v| a.max(v.abs())) / W_MAX;
                    let w_abs: f32 = row.iter().map(|v| v.abs()).sum();
                    let bound = 0.5 * x_step * w_abs
                        + 0.5 * w_step * x_abs
                        + 0.25 * x_step * w_step * cols as f32;
                    let err = (got[r] - want[r]).abs();
                    assert!(
                        err <= bound * 1.001 + 1e-6,
                        "{rows}×{cols} row {r}: error {err} > {bound}"
                    );
                }
                let mut xq = vec![[X_SHIFT as u8; BLOCK]; q.blocks];
                let step = q.quantize(&x, &mut xq).unwrap();
                let mut scalar = vec![0f32; q.scales.len()];
                q.rows_scalar(&xq, step, &mut scalar);
                for kernel in kernels() {
                    q.apply_with(kernel, &x, &mut got).expect("finite input");
                    assert_eq!(&scalar[..rows], &got[..], "{kernel:?} and scalar differ");
                }
            }
        }
    }

    #[test]
    fn extreme_values_do_not_saturate() {
        // Every weight and input at its largest magnitude, signs aligned: the i16 pairs are at
        // their bound (2 · 254 · 63) and the total must still be exact.
        let cols = 96;
        let m = Matrix::new(2, cols, [vec![1.0; cols], vec![-1.0; cols]].concat());
        let q = Int8Matrix::new(&m);
        for (x, kernel) in [vec![1.0; cols], vec![-1.0; cols]]
            .into_iter()
            .flat_map(|x| kernels().map(move |k| (x.clone(), k)))
        {
            let mut got = Vec::new();
            q.apply_with(kernel, &x, &mut got).unwrap();
            let want = x.iter().sum::<f32>();
            assert!(
                (got[0] - want).abs() < 1e-3,
                "{kernel:?}: {got:?} vs {want}"
            );
            assert!(
                (got[1] + want).abs() < 1e-3,
                "{kernel:?}: {got:?} vs {}",
                -want
            );
        }
    }

    #[test]
    fn inputs_that_cannot_be_quantized_are_refused() {
        let q = Int8Matrix::new(&Matrix::new(2, 3, vec![1.0; 6]));
        let mut out = Vec::new();
        assert!(q.apply(&[0.0, 0.0, 0.0], &mut out).is_none());
        assert!(q.apply(&[1.0, f32::NAN, 0.0], &mut out).is_none());
        assert!(q.apply(&[1.0, f32::INFINITY, 0.0], &mut out).is_none());
        assert!(q.apply(&[1.0, 2.0], &mut out).is_none());
        assert!(q.apply(&[1.0, 2.0, 3.0], &mut out).is_some());
    }
}
