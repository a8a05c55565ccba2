//! Self-attention on the CPU backend, over texts packed one after the other (no padding).
//!
//! Burn's `attention` takes `[batch, heads, len, head_dim]`: the generic path copies Q, K and
//! V into that layout and the context back out of it, and attends over padded positions only
//! to mask them away. On the CPU the encoder instead keeps a batch as `[tokens, hidden]`, each
//! text's tokens after the previous text's (the projections are then one large matmul with no
//! padded rows); this kernel reads Q, K and V where the projections left them, attends within
//! each text over its own tokens, and writes each head's context straight into its columns of
//! the output. A text's context therefore cannot depend on its batch. The inner loops are
//! plain slices that the compiler vectorizes for the widest SIMD the CPU has (chosen at run
//! time through `pulp`).

use pulp::{Simd, WithSimd};
use rayon::prelude::*;

use super::activation::exp_neg;
use super::{SIMD, spans};

/// `softmax(Q_h K_hᵀ / √d + bias_h) V_h` within every text, for every head. Q, K and V are
/// `[tokens, hidden]` with text `b`'s `lens[b]` tokens after text `b - 1`'s and head `h` in
/// columns `h·d .. (h+1)·d`; the context comes back in the same layout. `bias`, if any, is per
/// head a vector over relative positions, centred: `bias[h][c + key - query]` with
/// `c = (bias[h].len() - 1) / 2`, long enough for the longest text (MPNet's buckets).
pub fn attention(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    lens: &[usize],
    hidden: usize,
    heads: usize,
    bias: Option<&[Vec<f32>]>,
) -> Vec<f32> {
    attend_with(q, k, v, lens, hidden, heads, bias, |a| SIMD.dispatch(a))
}

/// [`attention`], each text run through `run` (the run-time dispatch, or in tests one
/// instruction set).
#[allow(clippy::too_many_arguments)]
fn attend_with(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    lens: &[usize],
    hidden: usize,
    heads: usize,
    bias: Option<&[Vec<f32>]>,
    run: impl Fn(Attend<'_>) + Sync,
) -> Vec<f32> {
    let tokens: usize = lens.iter().sum();
    assert_eq!(q.len(), tokens * hidden, "query shape");
    assert_eq!(k.len(), q.len(), "key shape");
    assert_eq!(v.len(), q.len(), "value shape");
    assert!(
        heads > 0 && hidden.is_multiple_of(heads),
        "hidden size divisible by heads"
    );
    if let Some(bias) = bias {
        let longest = lens.iter().copied().max().unwrap_or(0);
        assert_eq!(bias.len(), heads, "one bias vector per head");
        assert!(
            bias.iter()
                .all(|b| b.len() % 2 == 1 && b.len() / 2 + 1 >= longest),
            "bias vectors cover the longest text"
        );
    }
    let mut out = vec![0.0f32; q.len()];
    // Each text's rows of the output, to fill in parallel.
    let mut texts = Vec::with_capacity(lens.len());
    let mut rest = out.as_mut_slice();
    for span in spans(lens) {
        let n = span.len();
        let (mine, tail) = rest.split_at_mut(n * hidden);
        let rows = span.start * hidden..span.end * hidden;
        texts.push((
            Text {
                q: &q[rows.clone()],
                k: &k[rows.clone()],
                v: &v[rows],
                n,
                hidden,
                heads,
                bias,
            },
            mine,
        ));
        rest = tail;
    }
    texts
        .into_par_iter()
        .for_each(|(text, out)| run(Attend { text, out }));
    out
}

/// One text's Q, K and V (`[n, hidden]` each).
struct Text<'a> {
    q: &'a [f32],
    k: &'a [f32],
    v: &'a [f32],
    n: usize,
    hidden: usize,
    heads: usize,
    bias: Option<&'a [Vec<f32>]>,
}

/// One text's attention, written once for every instruction set `pulp` dispatches to.
struct Attend<'a> {
    text: Text<'a>,
    out: &'a mut [f32],
}

impl WithSimd for Attend<'_> {
    type Output = ();

    #[inline(always)]
    fn with_simd<S: Simd>(self, simd: S) {
        let Attend { text, out } = self;
        let (n, hidden) = (text.n, text.hidden);
        let d = hidden / text.heads;
        let scale = 1.0 / (d as f32).sqrt();
        // K_h transposed, each row padded with zeros to whole vectors: `[d][stride]`. V_h as
        // `[n][d]`. Queries go four at a time through small register-blocked products (each
        // load of K or V serves four queries, and the sums run in independent registers).
        let stride = n.next_multiple_of(S::F32_LANES);
        let mut kt = vec![0.0f32; d * stride];
        let mut vh = vec![0.0f32; n * d];
        let mut scores = vec![0.0f32; BLOCK * stride];
        for h in 0..text.heads {
            let cols = h * d..(h + 1) * d;
            for j in 0..n {
                let row = &text.k[j * hidden + cols.start..j * hidden + cols.end];
                for (t, &x) in row.iter().enumerate() {
                    kt[t * stride + j] = x;
                }
                vh[j * d..(j + 1) * d]
                    .copy_from_slice(&text.v[j * hidden + cols.start..j * hidden + cols.end]);
            }
            let bias = text.bias.map(|b| (b[h].as_slice(), (b[h].len() - 1) / 2));
            for first in (0..n).step_by(BLOCK) {
                let rows = (n - first).min(BLOCK);
                let query = |r: usize| {
                    let at = (first + r) * hidden;
                    &text.q[at + cols.start..at + cols.end]
                };
                if rows == BLOCK {
                    scores_block::<S, BLOCK>(
                        simd,
                        [query(0), query(1), query(2), query(3)],
                        &kt,
                        &mut scores,
                    );
                } else {
                    for r in 0..rows {
                        scores_block::<S, 1>(simd, [query(r)], &kt, &mut scores[r * stride..]);
                    }
                }
                for r in 0..rows {
                    let i = first + r;
                    let row = &mut scores[r * stride..r * stride + n];
                    match bias {
                        Some((bias, centre)) => {
                            // key j, query i: bias[centre + j - i]
                            let start = centre - i;
                            for (s, &b) in row.iter_mut().zip(&bias[start..start + n]) {
                                *s = *s * scale + b;
                            }
                        }
                        None => row.iter_mut().for_each(|s| *s *= scale),
                    }
                    softmax(simd, row);
                }
                let out = &mut out[first * hidden..];
                weighted_values(simd, &scores, stride, rows, &vh, d, out, hidden, cols.start);
            }
        }
    }
}

/// Queries handled together.
const BLOCK: usize = 4;

/// `scores[r][j] = Σ_t query[r][t] · kt[t][j]` for the `R` queries (rows of `scores`, `stride`
/// apart) and every column of `kt` (`[d][stride]`, stride a multiple of the vector width):
/// `R × 2` vectors of sums in registers, each vector of `kt` loaded once for the `R` queries.
#[inline(always)]
fn scores_block<S: Simd, const R: usize>(
    simd: S,
    query: [&[f32]; R],
    kt: &[f32],
    scores: &mut [f32],
) {
    let d = query[0].len();
    let (kt, _) = S::as_simd_f32s(kt);
    let chunks = kt.len() / d;
    let (out, _) = S::as_mut_simd_f32s(scores);
    let mut c = 0;
    while c + 2 <= chunks {
        scores_tile::<S, R, 2>(simd, &query, kt, chunks, c, out);
        c += 2;
    }
    if c < chunks {
        scores_tile::<S, R, 1>(simd, &query, kt, chunks, c, out);
    }
}

/// Columns `c .. c + W` (in vectors) of [`scores_block`], the `R × W` sums in registers.
#[inline(always)]
fn scores_tile<S: Simd, const R: usize, const W: usize>(
    simd: S,
    query: &[&[f32]; R],
    kt: &[S::f32s],
    chunks: usize,
    c: usize,
    out: &mut [S::f32s],
) {
    let mut acc = [[simd.splat_f32s(0.0); W]; R];
    for t in 0..query[0].len() {
        let k: &[S::f32s; W] = kt[t * chunks + c..t * chunks + c + W]
            .try_into()
            .expect("W vectors");
        for (acc, q) in acc.iter_mut().zip(query) {
            let a = simd.splat_f32s(q[t]);
            for (acc, &k) in acc.iter_mut().zip(k) {
                *acc = simd.mul_add_e_f32s(a, k, *acc);
            }
        }
    }
    for (r, acc) in acc.iter().enumerate() {
        out[r * chunks + c..r * chunks + c + W].copy_from_slice(acc);
    }
}

/// For each of `rows` queries `r`: `out[r][col..col + d] = Σ_j p[r][j] · vh[j]`, with `p[r]` row
/// `r` of `scores` (`stride` apart) and `out` rows `hidden` apart. Kept in registers when a
/// row of V is 1, 2, 4 or 8 whole vectors.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn weighted_values<S: Simd>(
    simd: S,
    scores: &[f32],
    stride: usize,
    rows: usize,
    vh: &[f32],
    d: usize,
    out: &mut [f32],
    hidden: usize,
    col: usize,
) {
    let values = Values {
        scores,
        stride,
        vh,
        d,
        hidden,
        col,
    };
    let lanes = S::F32_LANES;
    if d.is_multiple_of(lanes) {
        match d / lanes {
            1 => return values.rows::<S, 1, 4>(simd, rows, out),
            2 => return values.rows::<S, 2, 4>(simd, rows, out),
            4 => return values.rows::<S, 4, 2>(simd, rows, out),
            8 => return values.rows::<S, 8, 1>(simd, rows, out),
            _ => {}
        }
    }
    for r in 0..rows {
        let p = &scores[r * stride..];
        let out = &mut out[r * hidden + col..r * hidden + col + d];
        for (&p, v) in p.iter().zip(vh.chunks_exact(d)) {
            for (o, &v) in out.iter_mut().zip(v) {
                *o += p * v;
            }
        }
    }
}

struct Values<'a> {
    scores: &'a [f32],
    stride: usize,
    vh: &'a [f32],
    d: usize,
    hidden: usize,
    col: usize,
}

impl Values<'_> {
    /// `rows` queries, `R` at a time, a row of V being `M` vectors.
    #[inline(always)]
    fn rows<S: Simd, const M: usize, const R: usize>(&self, simd: S, rows: usize, out: &mut [f32]) {
        let mut r = 0;
        while r + R <= rows {
            self.block::<S, M, R>(simd, r, out);
            r += R;
        }
        while r < rows {
            self.block::<S, M, 1>(simd, r, out);
            r += 1;
        }
    }

    #[inline(always)]
    fn block<S: Simd, const M: usize, const R: usize>(
        &self,
        simd: S,
        first: usize,
        out: &mut [f32],
    ) {
        let (v, _) = S::as_simd_f32s(self.vh);
        let n = self.vh.len() / self.d;
        let mut acc = [[simd.splat_f32s(0.0); M]; R];
        for j in 0..n {
            let v: &[S::f32s; M] = v[j * M..(j + 1) * M].try_into().expect("M vectors");
            for (r, acc) in acc.iter_mut().enumerate() {
                let p = simd.splat_f32s(self.scores[(first + r) * self.stride + j]);
                for (acc, &v) in acc.iter_mut().zip(v) {
                    *acc = simd.mul_add_e_f32s(p, v, *acc);
                }
            }
        }
        for (r, acc) in acc.iter().enumerate() {
            let at = (first + r) * self.hidden + self.col;
            let (row, _) = S::as_mut_simd_f32s(&mut out[at..at + self.d]);
            row.copy_from_slice(acc);
        }
    }
}

/// Softmax in place (empty stays empty).
#[inline(always)]
fn softmax<S: Simd>(simd: S, s: &mut [f32]) {
    let (head, tail) = S::as_simd_f32s(s);
    let mut max = simd.splat_f32s(f32::NEG_INFINITY);
    for &x in head {
        max = simd.max_f32s(max, x);
    }
    let max = tail
        .iter()
        .copied()
        .fold(simd.reduce_max_f32s(max), f32::max);
    for x in s.iter_mut() {
        *x = exp_neg(max - *x);
    }
    let (head, tail) = S::as_simd_f32s(s);
    let mut sum = simd.splat_f32s(0.0);
    for &x in head {
        sum = simd.add_f32s(sum, x);
    }
    let inv = 1.0 / (simd.reduce_sum_f32s(sum) + tail.iter().sum::<f32>());
    s.iter_mut().for_each(|x| *x *= inv);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Plain f64 attention within each text.
    fn reference(
        q: &[f32],
        k: &[f32],
        v: &[f32],
        lens: &[usize],
        hidden: usize,
        heads: usize,
        bias: Option<&[Vec<f32>]>,
    ) -> Vec<f64> {
        let d = hidden / heads;
        let mut out = vec![0.0f64; q.len()];
        let mut first = 0;
        for &n in lens {
            let at = |x: &[f32], i: usize, c: usize| f64::from(x[(first + i) * hidden + c]);
            for h in 0..heads {
                for i in 0..n {
                    let mut w: Vec<f64> = (0..n)
                        .map(|j| {
                            let dot: f64 = (0..d)
                                .map(|t| at(q, i, h * d + t) * at(k, j, h * d + t))
                                .sum();
                            let extra = bias.map_or(0.0, |bias| {
                                let centre = (bias[h].len() - 1) / 2;
                                f64::from(bias[h][centre + j - i])
                            });
                            dot / (d as f64).sqrt() + extra
                        })
                        .collect();
                    let max = w.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                    w.iter_mut().for_each(|x| *x = (*x - max).exp());
                    let sum: f64 = w.iter().sum();
                    for t in 0..d {
                        out[(first + i) * hidden + h * d + t] =
                            (0..n).map(|j| w[j] / sum * at(v, j, h * d + t)).sum();
                    }
                }
            }
            first += n;
        }
        out
    }

    fn values(n: usize, seed: u64) -> Vec<f32> {
        let mut x = seed;
        (0..n)
            .map(|_| {
                x = x
                    .wrapping_mul(6_364_136_223_846_793_005)
                    .wrapping_add(1_442_695_040_888_963_407);
                ((x >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 6.0
            })
            .collect()
    }

    type Kernel = Box<dyn Fn(Attend<'_>) + Sync>;

    /// The kernel on every instruction set this CPU has, the scalar one included.
    fn kernels() -> Vec<(&'static str, Kernel)> {
        let mut kernels: Vec<(&'static str, Kernel)> = vec![
            ("dispatched", Box::new(|a| SIMD.dispatch(a))),
            ("scalar", Box::new(|a| a.with_simd(pulp::Scalar::new()))),
        ];
        #[cfg(target_arch = "x86_64")]
        {
            if let Some(simd) = pulp::x86::V3::try_new() {
                kernels.push(("AVX2", Box::new(move |a| Simd::vectorize(simd, a))));
            }
            if let Some(simd) = pulp::x86::V4::try_new() {
                kernels.push(("AVX-512", Box::new(move |a| Simd::vectorize(simd, a))));
            }
        }
        kernels
    }

    #[test]
    fn matches_attention_within_each_text() {
        // Head sizes of 1, 2, 4 and 8 vectors of 8 or 16 lanes, and one of none (12).
        for (hidden, heads) in [(48, 3), (96, 3), (128, 2), (64, 1), (36, 3)] {
            let lens = [37, 1, 20, 4, 5];
            let tokens: usize = lens.iter().sum();
            let n = tokens * hidden;
            let (q, k, v) = (values(n, 1), values(n, 2), values(n, 3));
            // Centred on 40: longer than the longest text needs.
            let bias: Vec<Vec<f32>> = (0..heads as u64).map(|h| values(81, 10 + h)).collect();
            for bias in [None, Some(bias.as_slice())] {
                let want = reference(&q, &k, &v, &lens, hidden, heads, bias);
                for (name, kernel) in kernels() {
                    let got = attend_with(&q, &k, &v, &lens, hidden, heads, bias, &kernel);
                    for (at, (g, w)) in got.iter().zip(&want).enumerate() {
                        assert!(
                            (f64::from(*g) - w).abs() < 1e-5,
                            "{name}, head size {}: token {} column {}: {g} vs {w}",
                            hidden / heads,
                            at / hidden,
                            at % hidden
                        );
                    }
                    // The third text alone, with the bias vectors cut to its own length: the
                    // same context bit for bit.
                    let rows = 38 * hidden..58 * hidden;
                    let alone_bias: Option<Vec<Vec<f32>>> =
                        bias.map(|b| b.iter().map(|h| h[40 - 19..=40 + 19].to_vec()).collect());
                    let alone = attend_with(
                        &q[rows.clone()],
                        &k[rows.clone()],
                        &v[rows.clone()],
                        &[20],
                        hidden,
                        heads,
                        alone_bias.as_deref(),
                        &kernel,
                    );
                    assert_eq!(alone, got[rows], "{name}");
                }
            }
        }
    }

    #[test]
    fn empty_batch() {
        assert!(attention(&[], &[], &[], &[], 8, 2, None).is_empty());
        assert!(attention(&[], &[], &[], &[0, 0], 8, 2, None).is_empty());
    }

    #[test]
    #[should_panic(expected = "bias vectors cover the longest text")]
    fn short_bias_is_refused() {
        let q = values(3 * 4, 1);
        let bias = vec![vec![0.0; 3]; 2];
        attention(&q, &q, &q, &[3], 4, 2, Some(&bias));
    }
}
