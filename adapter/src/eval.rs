//! Evaluation: what an adapter's reads are worth on golden query sets, against both models,
//! read exactly (every item scored), with the int8 products the sink serves with and with the
//! f32 map.
//!
//! For each consumer's queries (each embedded with both models) it measures the metric of the
//! old model's queries on the old catalog (`old`), of the new model's on the new catalog
//! (`full_reembed`), and, on the old catalog, of the mapped new queries (`adapted`) and of
//! fused queries (`fused@w`: `normalize((1 − w) · old query + w · adapted query)`). Each arm
//! has its recovery against both models (`÷ full_reembed` and `÷ old`) and its difference
//! with `old`, all with 95% bootstrap intervals: an adapter whose reads are worse than simply
//! keeping the old model for queries shows it. Timing the map is a benchmark's job
//! (`loadtest/`).

use std::collections::BTreeSet;

use rayon::prelude::*;
use serde::Serialize;

use crate::matrix::dot;
use crate::{Adapter, AdapterError, AdapterKind};

/// One golden query, embedded with both models.
#[derive(Debug, Clone)]
pub struct Query<'a> {
    /// Embedded with the old model.
    pub old: &'a [f32],
    /// Embedded with the new model.
    pub new: &'a [f32],
    /// The relevant item ids.
    pub relevant: BTreeSet<&'a str>,
    /// Ids removed from the results first (the query's own item).
    pub exclude: &'a [String],
}

/// One consumer's golden set.
#[derive(Debug, Clone)]
pub struct ConsumerSet<'a> {
    /// The consumer.
    pub consumer: String,
    /// Its metric (`recall@k`, `precision@1`): passed to the scoring function.
    pub metric: String,
    /// Results cut.
    pub k: usize,
    /// Its queries.
    pub queries: Vec<Query<'a>>,
}

/// A metric of one query's results: `(metric, k, relevant, results) -> value`.
pub type Metric<'m> = dyn Fn(&str, usize, &BTreeSet<&str>, &[String]) -> f64 + Sync + 'm;

/// A value measured on a sample of queries, with its 95% bootstrap interval (percentile,
/// resampling queries, every arm of a consumer on the same resamples).
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Estimate {
    /// On all the queries.
    pub value: f64,
    /// Lower bound of the 95% interval.
    pub ci_low: f64,
    /// Upper bound.
    pub ci_high: f64,
}

/// One way of answering the old index with the new model's queries.
#[derive(Debug, Clone, Serialize)]
pub struct ArmRow {
    /// `adapted` (int8, as served), `adapted_f32`, or `fused@<weight>` (int8).
    pub arm: String,
    /// The metric.
    pub metric: Estimate,
    /// Its difference with the old model's own queries (`old`): not worse than keeping the
    /// old model when `ci_high ≥ 0`.
    pub vs_old: Estimate,
    /// `metric ÷ full_reembed`: how much of a full re-embed it recovers.
    pub recovery_new: Estimate,
    /// `metric ÷ old`: above 1 it improves on keeping the old model for queries.
    pub recovery_old: Estimate,
}

/// One consumer's figures.
#[derive(Debug, Clone, Serialize)]
pub struct ConsumerRow {
    /// The consumer.
    pub consumer: String,
    /// Its metric.
    pub metric: String,
    /// Queries measured.
    pub queries: usize,
    /// The old model's queries on the old catalog.
    pub old: Estimate,
    /// The new model's queries on the new catalog (a full re-embed).
    pub full_reembed: Estimate,
    /// The adapter's arms on the old catalog.
    pub arms: Vec<ArmRow>,
}

impl ConsumerRow {
    /// The arm named `arm`.
    pub fn arm(&self, arm: &str) -> Option<&ArmRow> {
        self.arms.iter().find(|a| a.arm == arm)
    }
}

/// One adapter's figures.
#[derive(Debug, Clone, Serialize)]
pub struct AdapterRow {
    /// Its name.
    pub adapter: String,
    /// Its kind.
    pub kind: AdapterKind,
    /// Pairs it was trained on, held-out ones included.
    pub pairs: usize,
    /// Its held-out cosine.
    pub holdout_cosine: Option<f64>,
    /// Per consumer.
    pub consumers: Vec<ConsumerRow>,
    /// Mean over the consumers of the adapted arm's recovery of the full re-embed.
    pub mean_recovery: f64,
    /// Mean over the consumers of the adapted arm's ratio to the old model's own queries.
    pub mean_recovery_old: f64,
    /// Mean cosine of the int8 map to the f32 map over the queries.
    pub int8_cosine_mean: f64,
    /// Its minimum.
    pub int8_cosine_min: f64,
}

/// Resampled weights of `n` queries for a bootstrap: per resample, how many times each query
/// was drawn (splitmix64 from a fixed seed, so a run is repeatable).
#[derive(Debug, Clone)]
pub struct Resamples {
    counts: Vec<Vec<u32>>,
}

impl Resamples {
    /// `resamples` draws of `n` queries with replacement.
    pub fn new(n: usize, resamples: usize, seed: u64) -> Self {
        let mut state = seed;
        let mut next = || {
            state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = state;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^ (z >> 31)
        };
        let counts = if n == 0 {
            Vec::new()
        } else {
            (0..resamples)
                .map(|_| {
                    let mut c = vec![0u32; n];
                    for _ in 0..n {
                        c[(next() % n as u64) as usize] += 1;
                    }
                    c
                })
                .collect()
        };
        Self { counts }
    }

    /// The 95% percentile interval of `stat` over the resamples; `stat` gets one resample's
    /// counts (use [`weighted_mean`]). `(0, 0)` with no query.
    pub fn interval(&self, stat: impl Fn(&[u32]) -> f64) -> (f64, f64) {
        let mut values: Vec<f64> = self.counts.iter().map(|c| stat(c)).collect();
        if values.is_empty() {
            return (0.0, 0.0);
        }
        values.sort_by(f64::total_cmp);
        let last = values.len() - 1;
        let at = |q: f64| values[((q * last as f64).round() as usize).min(last)];
        (at(0.025), at(0.975))
    }

    /// `stat` on all the queries, with its interval.
    fn estimate(&self, all: f64, stat: impl Fn(&[u32]) -> f64) -> Estimate {
        let (ci_low, ci_high) = self.interval(stat);
        Estimate {
            value: all,
            ci_low,
            ci_high,
        }
    }
}

/// The mean of `values` with each counted `counts[i]` times.
pub fn weighted_mean(values: &[f64], counts: &[u32]) -> f64 {
    let (sum, n) = values
        .iter()
        .zip(counts)
        .fold((0.0, 0u64), |(s, n), (v, &c)| {
            (s + v * f64::from(c), n + u64::from(c))
        });
    if n == 0 { 0.0 } else { sum / n as f64 }
}

/// `a ÷ b`, NaN when `b` is 0.
fn ratio(a: f64, b: f64) -> f64 {
    if b > 0.0 { a / b } else { f64::NAN }
}

/// The ids of the `k` best items by dot product, skipping `exclude`; ties by id.
pub fn top(
    query: &[f32],
    items: &[(String, Vec<f32>)],
    k: usize,
    exclude: &[String],
) -> Vec<String> {
    let mut scored: Vec<(f32, &String)> = items
        .iter()
        .filter(|(id, _)| !exclude.contains(id))
        .map(|(id, v)| (dot(query, v), id))
        .collect();
    scored.sort_by(|a, b| b.0.total_cmp(&a.0).then_with(|| a.1.cmp(b.1)));
    scored
        .into_iter()
        .take(k)
        .map(|(_, id)| id.clone())
        .collect()
}

/// Evaluates `adapter` on `sets` against the old and the new catalog: the adapted arm (int8,
/// as served), the same with f32 products, and one fused arm per weight of `fuse_weights`.
/// Refuses a consumer with no query and a fuse weight out of (0, 1].
pub fn evaluate(
    adapter: &Adapter,
    sets: &[ConsumerSet<'_>],
    old_items: &[(String, Vec<f32>)],
    new_items: &[(String, Vec<f32>)],
    fuse_weights: &[f64],
    metric: &Metric<'_>,
) -> Result<AdapterRow, AdapterError> {
    if let Some(w) = fuse_weights.iter().find(|w| !crate::is_fuse_weight(**w)) {
        return Err(AdapterError::refused(format!(
            "a fuse weight is in (0, 1], not {w}"
        )));
    }
    let mut consumers = Vec::new();
    let (mut cos_sum, mut cos_min, mut cos_n) = (0.0, f64::INFINITY, 0usize);
    for set in sets {
        if set.queries.is_empty() {
            return Err(AdapterError::Refused {
                reason: format!("no query of {} has vectors of both models", set.consumer),
            });
        }
        let mut names = vec!["adapted".to_owned(), "adapted_f32".to_owned()];
        names.extend(fuse_weights.iter().map(|w| format!("fused@{w}")));
        // Per query: old/old, new/new, the int8 map's cosine to the f32 map, and each arm.
        let scored: Vec<(f64, f64, f64, Vec<f64>)> = set
            .queries
            .par_iter()
            .map(|q| {
                let m = |v: &[f32]| {
                    let results = top(v, old_items, set.k, q.exclude);
                    metric(&set.metric, set.k, &q.relevant, &results)
                };
                let full = metric(
                    &set.metric,
                    set.k,
                    &q.relevant,
                    &top(q.new, new_items, set.k, q.exclude),
                );
                let served = adapter.apply(q.new)?;
                let f32_map = adapter.apply_exact(q.new)?;
                let mut arms = vec![m(&served), m(&f32_map)];
                for &w in fuse_weights {
                    let fused = crate::apply::fuse_mapped(&adapter.meta.name, q.old, &served, w)?;
                    arms.push(m(&fused));
                }
                Ok((m(q.old), full, f64::from(dot(&served, &f32_map)), arms))
            })
            .collect::<Result<_, AdapterError>>()?;
        let (mut old, mut full) = (Vec::new(), Vec::new());
        let mut arms: Vec<Vec<f64>> = vec![Vec::new(); names.len()];
        for (o, f, c, values) in scored {
            old.push(o);
            full.push(f);
            cos_sum += c;
            cos_min = cos_min.min(c);
            cos_n += 1;
            for (arm, v) in arms.iter_mut().zip(values) {
                arm.push(v);
            }
        }
        let resamples = Resamples::new(old.len(), 2000, 0x5EED);
        let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
        let (old_all, full_all) = (mean(&old), mean(&full));
        let arms = names
            .into_iter()
            .zip(&arms)
            .map(|(arm, v)| {
                let all = mean(v);
                let diffs: Vec<f64> = v.iter().zip(&old).map(|(a, b)| a - b).collect();
                ArmRow {
                    arm,
                    metric: resamples.estimate(all, |c| weighted_mean(v, c)),
                    vs_old: resamples.estimate(all - old_all, |c| weighted_mean(&diffs, c)),
                    recovery_new: resamples.estimate(ratio(all, full_all), |c| {
                        ratio(weighted_mean(v, c), weighted_mean(&full, c))
                    }),
                    recovery_old: resamples.estimate(ratio(all, old_all), |c| {
                        ratio(weighted_mean(v, c), weighted_mean(&old, c))
                    }),
                }
            })
            .collect();
        consumers.push(ConsumerRow {
            consumer: set.consumer.clone(),
            metric: set.metric.clone(),
            queries: set.queries.len(),
            old: resamples.estimate(old_all, |c| weighted_mean(&old, c)),
            full_reembed: resamples.estimate(full_all, |c| weighted_mean(&full, c)),
            arms,
        });
    }
    let mean = |f: fn(&ArmRow) -> f64| {
        consumers
            .iter()
            .filter_map(|c| c.arm("adapted").map(f))
            .sum::<f64>()
            / consumers.len().max(1) as f64
    };
    Ok(AdapterRow {
        adapter: adapter.meta.name.clone(),
        kind: adapter.meta.kind,
        pairs: adapter.meta.pairs + adapter.meta.holdout_pairs,
        holdout_cosine: adapter.meta.holdout_cosine,
        mean_recovery: mean(|a| a.recovery_new.value),
        mean_recovery_old: mean(|a| a.recovery_old.value),
        int8_cosine_mean: cos_sum / cos_n.max(1) as f64,
        int8_cosine_min: cos_min,
        consumers,
    })
}
