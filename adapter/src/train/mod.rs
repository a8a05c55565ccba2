//! Drift-Adapter training: fits a map from a new model's space into an old one's on pairs of
//! embeddings of the same items, as a versioned artifact ([`crate::artifact`]).
//!
//! Pairs come from a sample of items embedded with both models (`embedstream adapter
//! train`), or from the user (`--pairs-file`, or two `embed` outputs joined by id). Every
//! vector is L2-normalized on the way in (the index compares unit vectors), a seeded hash of
//! the item id holds out a share of the pairs, and the fit is reported as the mean cosine of
//! mapped new vectors to their old vectors on both parts.
//!
//! Kinds ([`linear`], [`mlp`]):
//! - `procrustes`: orthogonal Procrustes with one scale and a translation (optionally on
//!   whitened spaces, and with a per-coordinate scale after it: [`linear::ProcrustesOptions`]). The dimension change
//!   (768 → 384 for MPNet → MiniLM) is handled explicitly: the map's 768 × 384 matrix has
//!   orthonormal columns, i.e. it is an orthogonal map of the new space followed by keeping 384
//!   coordinates — the square Procrustes problem with the old space zero-padded to 768
//!   dimensions. Its solution is `U Vᵀ` from the SVD of the cross-covariance `Xᵀ Y`.
//! - `affine`: reduced-rank ridge regression: the ridge solution projected onto the top `rank`
//!   directions of its fitted values (the least-squares optimum among rank-r maps).
//! - `mlp`: the Procrustes map plus a residual `W₂ relu(W₁ x + b₁) + b₂` (W₂ starts at zero, so
//!   training starts from Procrustes), trained with Burn's autodiff on `1 − cos`, keeping the
//!   epoch with the best held-out cosine.

pub mod linear;
pub mod mlp;

use std::collections::HashMap;
use std::path::Path;
use std::time::Instant;

use embedstream_topics::catalog::Catalog;
use embedstream_topics::{ModelRef, ModelSpec};

use crate::lines::{id_string, nonblank_lines, read_vectors};
use crate::matrix::dot;
use crate::{Adapter, AdapterError, AdapterKind, AdapterMeta, AdapterName};

/// Training's results: refusals are [`AdapterError::Refused`].
pub type Result<T, E = AdapterError> = std::result::Result<T, E>;

/// Paired embeddings of the same items: row `i` of `new` and of `old` embed item `ids[i]`.
#[derive(Debug, Clone, Default)]
pub struct Pairs {
    /// Item ids.
    pub ids: Vec<String>,
    /// New-model vectors, row-major, `in_dim` each, unit length.
    pub new: Vec<f32>,
    /// Old-model vectors, row-major, `out_dim` each, unit length.
    pub old: Vec<f32>,
    /// New dimension.
    pub in_dim: usize,
    /// Old dimension.
    pub out_dim: usize,
}

/// A checked, unit-length copy of `v`, or why not.
fn unit(v: &[f32]) -> Result<Vec<f32>, String> {
    if let Some(i) = v.iter().position(|x| !x.is_finite()) {
        return Err(format!("component {i} is not a finite number"));
    }
    let norm = v.iter().map(|&x| f64::from(x).powi(2)).sum::<f64>().sqrt();
    if norm < 1e-12 {
        return Err("the vector is zero".into());
    }
    Ok(v.iter().map(|&x| (f64::from(x) / norm) as f32).collect())
}

impl Pairs {
    /// Number of pairs.
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    /// No pairs.
    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    /// Row `i` of the new vectors.
    pub fn new_row(&self, i: usize) -> &[f32] {
        &self.new[i * self.in_dim..(i + 1) * self.in_dim]
    }

    /// Row `i` of the old vectors.
    pub fn old_row(&self, i: usize) -> &[f32] {
        &self.old[i * self.out_dim..(i + 1) * self.out_dim]
    }

    /// Adds one pair; `what` names it in errors (a file and line).
    pub fn push(&mut self, id: String, new: &[f32], old: &[f32], what: &str) -> Result<()> {
        if self.ids.is_empty() {
            self.in_dim = new.len();
            self.out_dim = old.len();
        }
        if new.len() != self.in_dim || old.len() != self.out_dim {
            return Err(AdapterError::refused(format!(
                "{what}: item {id:?} has a {}-d new and a {}-d old vector; the pairs before it are {}-d and {}-d",
                new.len(),
                old.len(),
                self.in_dim,
                self.out_dim
            )));
        }
        let new = unit(new)
            .map_err(|e| AdapterError::refused(format!("{what}: item {id:?}: new vector: {e}")))?;
        let old = unit(old)
            .map_err(|e| AdapterError::refused(format!("{what}: item {id:?}: old vector: {e}")))?;
        self.ids.push(id);
        self.new.extend(new);
        self.old.extend(old);
        Ok(())
    }

    /// Reads JSON lines `{"id", "old": [...], "new": [...]}`.
    pub fn from_pairs_file(path: &Path) -> Result<Pairs> {
        #[derive(serde::Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Line {
            id: serde_json::Value,
            old: Vec<f32>,
            new: Vec<f32>,
        }
        let mut pairs = Pairs::default();
        let mut seen = std::collections::HashSet::new();
        for (n, line) in nonblank_lines(path)? {
            let what = format!("{}:{n}", path.display());
            let parsed: Line = serde_json::from_str(&line).map_err(|e| {
                AdapterError::refused(format!(
                    "{what}: not a pair line {{\"id\", \"old\", \"new\"}}: {e}"
                ))
            })?;
            let id = id_string(&parsed.id);
            if !seen.insert(id.clone()) {
                return Err(AdapterError::refused(format!(
                    "{what}: item {id:?} appears twice"
                )));
            }
            pairs.push(id, &parsed.new, &parsed.old, &what)?;
        }
        Ok(pairs)
    }

    /// Joins two `embed` outputs (`{"id", "vector"}` lines) by id; the two files must embed
    /// the same items.
    pub fn join(old_file: &Path, new_file: &Path) -> Result<Pairs> {
        let old = read_vectors(old_file)?;
        let new = read_vectors(new_file)?;
        let only_old: Vec<&String> = old.keys().filter(|k| !new.contains_key(*k)).collect();
        let only_new: Vec<&String> = new.keys().filter(|k| !old.contains_key(*k)).collect();
        if !only_old.is_empty() || !only_new.is_empty() {
            return Err(AdapterError::refused(format!(
                "the two files embed different items: {} only in {} (e.g. {:?}), {} only in {} (e.g. {:?})",
                only_old.len(),
                old_file.display(),
                only_old.iter().take(3).collect::<Vec<_>>(),
                only_new.len(),
                new_file.display(),
                only_new.iter().take(3).collect::<Vec<_>>(),
            )));
        }
        let mut pairs = Pairs::default();
        for (id, (line, o)) in old {
            let (_, n) = &new[&id];
            let what = format!("{}:{line}", old_file.display());
            pairs.push(id, n, &o, &what)?;
        }
        Ok(pairs)
    }

    /// The pairs of rows `rows`, in that order.
    fn rows(&self, rows: impl IntoIterator<Item = usize>) -> Pairs {
        let mut out = Pairs {
            in_dim: self.in_dim,
            out_dim: self.out_dim,
            ..Pairs::default()
        };
        for i in rows {
            out.ids.push(self.ids[i].clone());
            out.new.extend_from_slice(self.new_row(i));
            out.old.extend_from_slice(self.old_row(i));
        }
        out
    }

    /// Splits off the pairs whose seeded id hash falls in the `holdout` share.
    pub fn split(&self, holdout: f64, seed: u64) -> (Pairs, Pairs) {
        let (held, fit): (Vec<usize>, Vec<usize>) = (0..self.len()).partition(|&i| {
            let h = embedstream_topics::hash::fnv1a64(format!("{seed}:{}", self.ids[i]).as_bytes());
            (h % 10_000) as f64 / 10_000.0 < holdout
        });
        (self.rows(fit), self.rows(held))
    }

    /// The first `n` pairs in a seeded order (a sample of `n`).
    pub fn sample(&self, n: usize, seed: u64) -> Pairs {
        let mut order: Vec<(u64, usize)> = (0..self.len())
            .map(|i| {
                let key = format!("s{seed}:{}", self.ids[i]);
                (embedstream_topics::hash::fnv1a64(key.as_bytes()), i)
            })
            .collect();
        order.sort_unstable();
        self.rows(order.into_iter().take(n).map(|(_, i)| i))
    }
}

/// Checks that the adapter `name` in `dir` can serve: it loads (checksum, shapes, finite
/// weights) and its dimensions are its two models' dimensions in the catalog.
pub fn check_deployable(dir: &Path, name: &str, catalog: &Catalog) -> Result<Adapter> {
    let adapter = Adapter::load(&crate::resolve(dir, name)?)?;
    let dim = |m: &str| -> Result<usize> {
        Ok(catalog.lookup(&m.parse::<ModelRef>()?)?.dimension as usize)
    };
    let (new_dim, old_dim) = (dim(&adapter.meta.new_model)?, dim(&adapter.meta.old_model)?);
    if adapter.meta.in_dim != new_dim || adapter.meta.out_dim != old_dim {
        return Err(AdapterError::refused(format!(
            "{name} maps {}-d vectors to {}-d, but {} is {new_dim}-d and {} is {old_dim}-d: it cannot serve this index",
            adapter.meta.in_dim,
            adapter.meta.out_dim,
            adapter.meta.new_model,
            adapter.meta.old_model
        )));
    }
    Ok(adapter)
}

/// How to fit.
#[derive(Debug, Clone)]
pub struct TrainConfig {
    /// The kind.
    pub kind: AdapterKind,
    /// Share of pairs held out to measure the fit.
    pub holdout: f64,
    /// Seed of the hold-out split and of the MLP's initialization and batches.
    pub seed: u64,
    /// Affine: rank of the map.
    pub rank: usize,
    /// Affine: ridge, relative to the mean eigenvalue of `XᵀX`.
    pub ridge: f64,
    /// MLP: hidden units.
    pub hidden: usize,
    /// MLP: most epochs.
    pub epochs: usize,
    /// MLP: Adam's learning rate.
    pub lr: f64,
    /// MLP: pairs per step.
    pub batch: usize,
    /// Procrustes: whitening and diagonal scaling ([`linear::ProcrustesOptions`]).
    pub procrustes: linear::ProcrustesOptions,
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
            kind: AdapterKind::Procrustes,
            holdout: 0.1,
            seed: 7,
            rank: 256,
            ridge: 0.01,
            hidden: 256,
            epochs: 40,
            lr: 1e-3,
            batch: 128,
            procrustes: linear::ProcrustesOptions::default(),
        }
    }
}

/// Mean and minimum cosine of `adapter(new)` to `old` over the pairs, with the f32 map (the
/// fit's quality; the int8 serving path's vectors have a cosine ≥ 0.9989 to it).
pub fn cosines(adapter: &Adapter, pairs: &Pairs) -> Result<(f64, f64)> {
    if pairs.is_empty() {
        return Ok((f64::NAN, f64::NAN));
    }
    let (mut sum, mut min) = (0.0, f64::INFINITY);
    for i in 0..pairs.len() {
        let mapped = adapter.apply_exact(pairs.new_row(i))?;
        let c = f64::from(dot(&mapped, pairs.old_row(i)));
        sum += c;
        min = min.min(c);
    }
    Ok((sum / pairs.len() as f64, min))
}

/// Fits an adapter from `new`'s space into `old`'s. Refuses,
/// writing nothing: dimensions that are not the two models', fewer training pairs than the
/// new dimension (the map would be under-determined), a fit that is not finite.
pub fn train(
    pairs: &Pairs,
    old: &ModelSpec,
    new: &ModelSpec,
    name: &AdapterName,
    source: String,
    config: &TrainConfig,
) -> Result<Adapter> {
    let (new_dim, old_dim) = (new.dimension as usize, old.dimension as usize);
    let (old, new) = (&old.model, &new.model);
    if pairs.is_empty() {
        return Err(AdapterError::refused("no pairs"));
    }
    if pairs.in_dim != new_dim || pairs.out_dim != old_dim {
        return Err(AdapterError::refused(format!(
            "the pairs are {}-d new and {}-d old, but {new} is {new_dim}-d and {old} is {old_dim}-d (are \"old\" and \"new\" swapped, or the models wrong?)",
            pairs.in_dim, pairs.out_dim
        )));
    }
    if name.kind != config.kind.as_str()
        || name.new != new.to_string()
        || name.old != old.to_string()
    {
        return Err(AdapterError::refused(format!(
            "the name {name} does not say a {} adapter from {new} into {old}",
            config.kind
        )));
    }
    let (fit, held) = pairs.split(config.holdout, config.seed);
    if fit.len() < new_dim {
        return Err(AdapterError::refused(format!(
            "too few pairs: {} to fit on (after holding out {}), need at least {new_dim} (the new model's dimension) for the map to be determined",
            fit.len(),
            held.len()
        )));
    }
    let started = Instant::now();
    let mut params = HashMap::new();
    let layers = match config.kind {
        AdapterKind::Procrustes => {
            let options = config.procrustes;
            if let Some(eps) = options.whiten {
                params.insert("whiten".into(), eps.to_string());
            }
            if options.diag_scale {
                params.insert("diag_scale".into(), "true".into());
            }
            linear::procrustes_with(&fit, &options)?
        }
        AdapterKind::Affine => {
            params.insert("rank".into(), config.rank.to_string());
            params.insert("ridge".into(), config.ridge.to_string());
            linear::affine(&fit, config.rank, config.ridge)?
        }
        AdapterKind::Mlp => {
            params.insert("hidden".into(), config.hidden.to_string());
            params.insert("lr".into(), config.lr.to_string());
            params.insert("batch".into(), config.batch.to_string());
            let (layers, epochs) = mlp::train(&fit, &held, config, name)?;
            params.insert("max_epochs".into(), config.epochs.to_string());
            params.insert("best_epoch".into(), epochs.to_string());
            layers
        }
    };
    params.insert("seed".into(), config.seed.to_string());
    let mut adapter = Adapter::new(
        AdapterMeta {
            pairs: fit.len(),
            holdout_pairs: held.len(),
            params,
            created_at_ms: embedstream_topics::time::now_ms(),
            fit_seconds: started.elapsed().as_secs_f64(),
            ..AdapterMeta::new(name, new_dim, old_dim, source)
        },
        layers,
    );
    adapter
        .validate()
        .map_err(|e| AdapterError::refused(format!("the fit failed: {e}")))?;
    adapter.meta.train_cosine = cosines(&adapter, &fit)?.0;
    adapter.meta.holdout_cosine = (!held.is_empty())
        .then(|| cosines(&adapter, &held).map(|c| c.0))
        .transpose()?;
    Ok(adapter)
}

#[cfg(test)]
mod tests;
