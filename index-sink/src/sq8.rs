//! 8-bit copies of a main part's vectors, for the graph search's traversal.
//!
//! A graph search spends its time fetching the vectors of the nodes it expands: at 60k × 384
//! the f32 vectors are 92 MB, far past this CPU's 32 MB L3, and every distance reads 1.5 KB
//! from memory. Each vector is kept a second time as 384 signed bytes (`round(v / s)` with
//! `s = max|v| / 127`, one scale per vector) and the query as 16-bit integers
//! (`round(q · 32767 / max|q|)`), so a distance reads a quarter of the bytes and is an exact
//! integer dot product (`vpmovsxbw` + `vpmaddwd` on AVX2) times the two scales. The order the
//! traversal sees is approximately the true one; the main index scores what it returns with
//! the f32 vectors (`MainIndex::search`), so results and scores stay exact and only which
//! nodes get expanded can differ (measured: loadtest/reports/index.md).
//!
//! Integers cannot overflow: a product is at most 127 · 32767 < 2²², a sum of `dim` of them
//! fits an i32 for `dim` < 512, and longer vectors are summed in i64 per 512-value chunk. The
//! SIMD and scalar paths compute the same integers, hence the same distances (tested).

use crate::store::Store;

/// Query values are scaled to ±`Q_MAX`.
const Q_MAX: f32 = 32767.0;
/// Vector values are scaled to ±`V_MAX`.
const V_MAX: f32 = 127.0;
/// Values per SIMD step (one 16-byte load of codes, sign-extended to sixteen i16).
const LANES: usize = 16;
/// Values whose products an i32 can sum without overflow (512 · 127 · 32767 < 2³¹).
const CHUNK: usize = 512;

/// The 8-bit vectors of a graph, by pid.
#[derive(Debug, Clone, PartialEq, Default)]
pub(crate) struct Codes {
    dim: usize,
    codes: Store<i8>,
    scales: Store<f32>,
}

/// A query prepared for [`Codes::distances`].
#[derive(Debug, Default)]
pub(crate) struct QueryCodes {
    values: Vec<i16>,
    scale: f32,
}

impl Codes {
    /// `vectors`: `n * dim` values, by pid.
    pub(crate) fn new(vectors: &[f32], dim: usize) -> Self {
        let mut codes = Vec::with_capacity(vectors.len());
        let mut scales = Vec::with_capacity(vectors.len() / dim.max(1));
        for v in vectors.chunks_exact(dim.max(1)) {
            let max = v.iter().fold(0f32, |m, x| m.max(x.abs()));
            let (scale, inv) = if max > 0.0 && max.is_finite() {
                (max / V_MAX, V_MAX / max)
            } else {
                (0.0, 0.0)
            };
            codes.extend(v.iter().map(|x| (x * inv).round() as i8));
            scales.push(scale);
        }
        Self {
            dim,
            codes: codes.into(),
            scales: scales.into(),
        }
    }

    /// Codes read back from a segment file: `codes` holds `n * dim` values, `scales` `n`.
    pub(crate) fn from_parts(dim: usize, codes: Store<i8>, scales: Store<f32>) -> Self {
        Self { dim, codes, scales }
    }

    /// The codes, by pid (`n * dim`), and each vector's scale.
    pub(crate) fn parts(&self) -> (&[i8], &[f32]) {
        (&self.codes, &self.scales)
    }

    /// Prepares `query` (`dim` values, finite).
    pub(crate) fn prepare(query: &[f32], out: &mut QueryCodes) {
        let max = query.iter().fold(0f32, |m, x| m.max(x.abs()));
        let inv = if max > 0.0 && max.is_finite() {
            Q_MAX / max
        } else {
            0.0
        };
        out.values.clear();
        out.values
            .extend(query.iter().map(|x| (x * inv).round() as i16));
        out.scale = if inv > 0.0 { max / Q_MAX } else { 0.0 };
    }

    /// `out[i]` = 1 − (approximate dot of the query and row `rows[i]`).
    pub(crate) fn distances(&self, query: &QueryCodes, rows: &[u32], out: &mut Vec<f32>) {
        out.clear();
        #[cfg(target_arch = "x86_64")]
        if self.dim.is_multiple_of(LANES)
            && query.values.len() == self.dim
            && let Some(simd) = pulp::x86::V3::try_new()
        {
            simd.vectorize(avx2::Distances {
                simd,
                codes: self,
                query,
                rows,
                out,
            });
            return;
        }
        for &row in rows {
            let dot = self.dot_scalar(&query.values, row);
            out.push(self.distance(query, row, dot));
        }
    }

    fn row(&self, row: u32) -> &[i8] {
        let start = row as usize * self.dim;
        &self.codes[start..start + self.dim]
    }

    fn distance(&self, query: &QueryCodes, row: u32, dot: i64) -> f32 {
        1.0 - dot as f32 * (self.scales[row as usize] * query.scale)
    }

    fn dot_scalar(&self, query: &[i16], row: u32) -> i64 {
        self.row(row)
            .chunks(CHUNK)
            .zip(query.chunks(CHUNK))
            .map(|(c, q)| {
                let sum: i32 = c
                    .iter()
                    .zip(q)
                    .map(|(&c, &q)| i32::from(c) * i32::from(q))
                    .sum();
                i64::from(sum)
            })
            .sum()
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::{__m128i, __m256i};

    use pulp::x86::V3;

    use super::{CHUNK, Codes, LANES, QueryCodes};

    /// Per row: sixteen codes at a time sign-extended to i16 (`vpmovsxbw`), multiplied by
    /// the query's sixteen i16 and summed in pairs to i32 (`vpmaddwd`), accumulated in eight
    /// i32 lanes, summed across lanes at the end of each chunk.
    pub(super) struct Distances<'a> {
        pub(super) simd: V3,
        pub(super) codes: &'a Codes,
        pub(super) query: &'a QueryCodes,
        pub(super) rows: &'a [u32],
        pub(super) out: &'a mut Vec<f32>,
    }

    impl pulp::NullaryFnOnce for Distances<'_> {
        type Output = ();

        #[inline(always)]
        fn call(self) {
            let Distances {
                simd,
                codes,
                query,
                rows,
                out,
            } = self;
            let avx2 = simd.avx2;
            for &row in rows {
                let c = codes.row(row);
                let mut dot = 0i64;
                for (c, q) in c.chunks(CHUNK).zip(query.values.chunks(CHUNK)) {
                    let mut acc = [simd.avx._mm256_setzero_si256(); 2];
                    for (i, (c, q)) in c.chunks_exact(LANES).zip(q.chunks_exact(LANES)).enumerate()
                    {
                        let c: __m128i = pulp::cast(<[i8; LANES]>::try_from(c).expect("16"));
                        let q: __m256i = pulp::cast(<[i16; LANES]>::try_from(q).expect("16"));
                        let products = avx2._mm256_madd_epi16(avx2._mm256_cvtepi8_epi16(c), q);
                        acc[i & 1] = avx2._mm256_add_epi32(acc[i & 1], products);
                    }
                    let lanes: [i32; 8] = pulp::cast(avx2._mm256_add_epi32(acc[0], acc[1]));
                    dot += i64::from(lanes.iter().copied().fold(0i32, i32::wrapping_add));
                }
                out.push(codes.distance(query, row, dot));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use embedstream_topics::testing::XorShift;

    use super::*;

    fn random(rng: &mut XorShift, n: usize) -> Vec<f32> {
        rng.centered_vec(n)
    }

    #[test]
    fn distances_are_close_and_simd_equals_scalar() {
        let mut seed = XorShift::new(0x9e37_79b9_7f4a_7c15);
        for dim in [16, 384, 768, 1024, 20] {
            let n = 50;
            let vectors = random(&mut seed, n * dim);
            let codes = Codes::new(&vectors, dim);
            let q = random(&mut seed, dim);
            let mut qc = QueryCodes::default();
            Codes::prepare(&q, &mut qc);
            let rows: Vec<u32> = (0..n as u32).rev().collect();
            let mut got = Vec::new();
            codes.distances(&qc, &rows, &mut got);
            for (&row, &d) in rows.iter().zip(&got) {
                let v = &vectors[row as usize * dim..(row as usize + 1) * dim];
                let exact: f32 = v.iter().zip(&q).map(|(a, b)| a * b).sum();
                let scalar = codes.distance(&qc, row, codes.dot_scalar(&qc.values, row));
                assert_eq!(d.to_bits(), scalar.to_bits(), "dim {dim} row {row}");
                // Each product is off by at most half a step of each factor.
                let bound = v.iter().zip(&q).fold(0f32, |b, (a, x)| {
                    b + a.abs() * 0.5 * qc.scale + x.abs() * 0.5 * codes.scales[row as usize]
                }) + dim as f32 * 0.25 * qc.scale * codes.scales[row as usize];
                assert!(
                    ((1.0 - d) - exact).abs() <= bound * 1.001,
                    "dim {dim} row {row}: {} vs {exact} (bound {bound})",
                    1.0 - d
                );
            }
        }
    }

    #[test]
    fn extreme_and_zero_values() {
        let dim = 32;
        // Every code at ±127 and the query at ±32767: the largest sums there are.
        let mut v = vec![1.0f32; dim];
        v[..dim / 2].fill(-1.0);
        let codes = Codes::new(&[v.clone(), vec![0.0; dim]].concat(), dim);
        let mut qc = QueryCodes::default();
        Codes::prepare(&v, &mut qc);
        let mut got = Vec::new();
        codes.distances(&qc, &[0, 1], &mut got);
        assert!((got[0] - (1.0 - dim as f32)).abs() < 1e-3, "{got:?}");
        assert_eq!(got[1], 1.0, "a zero vector is at distance 1");
        Codes::prepare(&vec![0.0; dim], &mut qc);
        codes.distances(&qc, &[0], &mut got);
        assert_eq!(got[0], 1.0, "a zero query is at distance 1 from everything");
    }
}
