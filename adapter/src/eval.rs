//! Evaluation: how much of a full re-embed's quality an adapter recovers on golden query
//! sets, read exactly (every item scored), with the int8 products the sink serves with and
//! with the f32 map.
//!
//! For each consumer's queries (each embedded with both models) it measures the metric of the
//! old model's queries on the old catalog (`old`), of the new model's on the new catalog
//! (`full_reembed`), and of the mapped new queries on the old catalog (`adapter`);
//! `recovery = adapter / full_reembed`. Timing the map is a benchmark's job (`loadtest/`).

use std::collections::BTreeSet;

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
pub type Metric<'m> = dyn Fn(&str, usize, &BTreeSet<&str>, &[String]) -> f64 + 'm;

/// One consumer's figures.
#[derive(Debug, Clone, Serialize)]
pub struct ConsumerRow {
    /// The consumer.
    pub consumer: String,
    /// Its metric.
    pub metric: String,
    /// Queries measured.
    pub queries: usize,
    /// The old model on the old catalog.
    pub old: f64,
    /// The new model on the new catalog.
    pub full_reembed: f64,
    /// Mapped new queries on the old catalog, with the int8 products the sink serves with.
    pub adapter: f64,
    /// `adapter / full_reembed`.
    pub recovery: f64,
    /// The same with f32 products.
    pub adapter_exact: f64,
    /// `adapter_exact / full_reembed`.
    pub recovery_exact: f64,
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
    /// Mean recovery over the consumers.
    pub mean_recovery: f64,
    /// The same with f32 products.
    pub mean_recovery_exact: f64,
    /// Mean cosine of the int8 map to the f32 map over the queries.
    pub int8_cosine_mean: f64,
    /// Its minimum.
    pub int8_cosine_min: f64,
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

/// Evaluates `adapter` on `sets` against the old and the new catalog. Refuses a consumer
/// with no query.
pub fn evaluate(
    adapter: &Adapter,
    sets: &[ConsumerSet<'_>],
    old_items: &[(String, Vec<f32>)],
    new_items: &[(String, Vec<f32>)],
    metric: &Metric<'_>,
) -> Result<AdapterRow, AdapterError> {
    let mut consumers = Vec::new();
    let (mut cos_sum, mut cos_min, mut cos_n) = (0.0, f64::INFINITY, 0usize);
    for set in sets {
        if set.queries.is_empty() {
            return Err(AdapterError::Refused {
                reason: format!("no query of {} has vectors of both models", set.consumer),
            });
        }
        let (mut old, mut full, mut mapped, mut exact) = (0.0, 0.0, 0.0, 0.0);
        for q in &set.queries {
            let m = |results: Vec<String>| metric(&set.metric, set.k, &q.relevant, &results);
            old += m(top(q.old, old_items, set.k, q.exclude));
            full += m(top(q.new, new_items, set.k, q.exclude));
            let served = adapter.apply(q.new)?;
            let f32_map = adapter.apply_exact(q.new)?;
            let c = f64::from(dot(&served, &f32_map));
            cos_sum += c;
            cos_min = cos_min.min(c);
            cos_n += 1;
            mapped += m(top(&served, old_items, set.k, q.exclude));
            exact += m(top(&f32_map, old_items, set.k, q.exclude));
        }
        let n = set.queries.len() as f64;
        consumers.push(ConsumerRow {
            consumer: set.consumer.clone(),
            metric: set.metric.clone(),
            queries: set.queries.len(),
            old: old / n,
            full_reembed: full / n,
            adapter: mapped / n,
            recovery: if full > 0.0 { mapped / full } else { f64::NAN },
            adapter_exact: exact / n,
            recovery_exact: if full > 0.0 { exact / full } else { f64::NAN },
        });
    }
    let mean = |f: fn(&ConsumerRow) -> f64| {
        consumers.iter().map(f).sum::<f64>() / consumers.len().max(1) as f64
    };
    Ok(AdapterRow {
        adapter: adapter.meta.name.clone(),
        kind: adapter.meta.kind,
        pairs: adapter.meta.pairs + adapter.meta.holdout_pairs,
        holdout_cosine: adapter.meta.holdout_cosine,
        mean_recovery: mean(|c| c.recovery),
        mean_recovery_exact: mean(|c| c.recovery_exact),
        int8_cosine_mean: cos_sum / cos_n.max(1) as f64,
        int8_cosine_min: cos_min,
        consumers,
    })
}
