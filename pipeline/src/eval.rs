//! The eval harness: golden query sets per consumer, run against the live indexes through the
//! query router, old version against new on the same items, with confidence intervals.
//!
//! - **Golden sets** (`loadtest/golden_sets.py`): per consumer a metric (`recall@k` or
//!   `precision@1`), `k`, and queries `{id, text, relevant, exclude}` whose relevance comes
//!   from the catalog, not from a model.
//! - **Same items.** A query's relevant items are cut to those present in every evaluated
//!   version's index (asked through the router's `/v1/items/{id}`); a query left with none is
//!   dropped and counted. Coverage is reported on its own (items in the new index ÷ items in
//!   the old one, from the sinks' stats), so "is the model better" and "is the index complete"
//!   are not mixed up.
//! - **Query vectors** are embedded here, in batches, with each version's model, and cached
//!   in `<golden dir>/vectors/<id@v>.jsonl`, so repeated evaluations (and the drill's probes)
//!   do not embed again.
//! - **Confidence.** For each arm against the baseline (the old version), a paired bootstrap
//!   over queries (2,000 resamples, fixed seed) gives a 95% interval of the mean difference;
//!   the gate passes when its upper bound is ≥ 0 (the new version is not worse beyond noise)
//!   and coverage ≥ 99%.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use futures::StreamExt;
use serde::{Deserialize, Serialize};

use crate::embed::burn_model::Device;
use crate::embed::engine::{EmbedOptions, EngineConfig, InputKind};
use crate::error::{Error, Result};
use crate::migrate::plan::passes;
use embedstream_schemas::records::ReadPlanEntry;

pub use embedstream_schemas::consumers::{GoldenQuery, GoldenSet};

/// Reads `golden.json`.
pub fn load_golden(path: &Path) -> Result<BTreeMap<String, GoldenSet>> {
    read_json(path)
}

fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<T> {
    let text = std::fs::read_to_string(path).map_err(Error::io(path))?;
    serde_json::from_str(&text).map_err(|source| Error::GoldenSet {
        path: path.to_path_buf(),
        source,
    })
}

/// Golden sets by consumer, and where their query vectors are cached.
#[derive(Debug, Clone)]
pub struct Golden {
    /// Consumer → its set.
    pub sets: BTreeMap<String, GoldenSet>,
    /// Folder of the query vectors (`<id@v>.jsonl`).
    pub cache: PathBuf,
}

impl Golden {
    /// A `golden.json` holding every consumer's set; vectors cached in `vectors/` beside it.
    pub fn from_file(path: &Path) -> Result<Self> {
        Ok(Self {
            sets: load_golden(path)?,
            cache: path.parent().unwrap_or(Path::new(".")).join("vectors"),
        })
    }

    /// The sets a consumers file names (`golden_set`, relative to the file), one file per
    /// consumer; consumers without one are not evaluated. Query ids are prefixed with the
    /// consumer's name (two files may use the same ids), and vectors are cached in `vectors/`
    /// beside the consumers file.
    pub fn from_consumers(
        file: &Path,
        profiles: &embedstream_schemas::consumers::Profiles,
    ) -> Result<Self> {
        let dir = file.parent().unwrap_or(Path::new("."));
        let mut sets = BTreeMap::new();
        for (consumer, profile) in profiles {
            let Some(path) = &profile.golden_set else {
                continue;
            };
            let mut set: GoldenSet = read_json(&dir.join(path))?;
            for q in &mut set.queries {
                q.id = format!("{consumer}:{}", q.id);
            }
            sets.insert(consumer.clone(), set);
        }
        Ok(Self {
            sets,
            cache: dir.join("vectors"),
        })
    }
}

/// An arm: a read plan to evaluate.
#[derive(Debug, Clone, Serialize)]
pub struct Arm {
    /// Name in the table (`old`, `new`, `rrf@0.5`, ...).
    pub name: String,
    /// The versions read, with their weights and adapters.
    pub plan: Vec<ReadPlanEntry>,
    /// Blending method, for blends.
    pub blend: Option<String>,
}

/// A metric with its interval against the baseline.
#[derive(Debug, Clone, Serialize)]
pub struct ArmResult {
    /// Arm name.
    pub arm: String,
    /// Mean metric.
    pub mean: f64,
    /// Mean of (this − baseline).
    pub diff: f64,
    /// 95% bootstrap interval of the difference.
    pub ci_low: f64,
    /// Upper bound.
    pub ci_high: f64,
}

/// One consumer's evaluation.
#[derive(Debug, Clone, Serialize)]
pub struct ConsumerEval {
    /// Consumer.
    pub consumer: String,
    /// Metric name.
    pub metric: String,
    /// Queries evaluated.
    pub queries: usize,
    /// Queries dropped (no relevant item present in every version).
    pub dropped: usize,
    /// Per arm, the first being the baseline.
    pub arms: Vec<ArmResult>,
    /// Queries whose request failed (should be 0).
    pub failed: usize,
}

/// The whole evaluation.
#[derive(Debug, Clone, Serialize)]
pub struct Evaluation {
    /// Items in each version's index.
    pub items: BTreeMap<String, i64>,
    /// Items in the last version's index ÷ items in the first's (at most 1).
    pub coverage: f64,
    /// Per consumer.
    pub consumers: Vec<ConsumerEval>,
}

/// Where the evaluation runs.
#[derive(Debug, Clone)]
pub struct EvalConfig {
    /// Router base URL.
    pub router: String,
    /// Golden sets.
    pub golden: Golden,
    /// Versions: baseline first.
    pub versions: Vec<String>,
    /// Arms (plans) to evaluate; the first is the baseline.
    pub arms: Vec<Arm>,
    /// Consumers to evaluate (all in the file when empty).
    pub consumers: Vec<String>,
    /// Requests in flight.
    pub concurrency: usize,
    /// Where query embeddings run.
    pub device: Device,
    /// The model versions (built-in and registered).
    pub catalog: embedstream_topics::catalog::Catalog,
}

/// The vectors of every golden query for `version`, from the cache or embedded now.
pub async fn query_vectors(
    golden: &BTreeMap<String, GoldenSet>,
    cache_dir: &Path,
    version: &str,
    catalog: &embedstream_topics::catalog::Catalog,
    device: Device,
) -> Result<HashMap<String, Vec<f32>>> {
    let path = cache_dir.join(format!("{version}.jsonl"));
    let mut vectors: HashMap<String, Vec<f32>> = HashMap::new();
    if let Ok(file) = std::fs::File::open(&path) {
        for line in std::io::BufReader::new(file).lines() {
            let line = line.map_err(Error::io(&path))?;
            #[derive(Deserialize)]
            struct Cached {
                id: String,
                vector: Vec<f32>,
            }
            if let Ok(c) = serde_json::from_str::<Cached>(&line) {
                vectors.insert(c.id, c.vector);
            }
        }
    }
    let missing: Vec<(String, String)> = golden
        .values()
        .flat_map(|g| &g.queries)
        .filter(|q| !vectors.contains_key(&q.id))
        .map(|q| (q.id.clone(), q.text.clone()))
        .collect::<BTreeMap<_, _>>()
        .into_iter()
        .collect();
    if missing.is_empty() {
        return Ok(vectors);
    }
    tracing::info!(
        version,
        queries = missing.len(),
        "Embedding golden queries."
    );
    let spec = catalog.lookup(&version.parse()?)?;
    let label = spec.model.to_string();
    let (engine, _threads) = tokio::task::spawn_blocking(move || {
        crate::embed::open_named(&spec, device, EngineConfig::default(), "eval")
    })
    .await
    .map_err(Error::task(format!("loading {label}")))??;
    let texts: Vec<String> = missing.iter().map(|(_, t)| t.clone()).collect();
    let queries = EmbedOptions {
        input: InputKind::Query,
        ..EmbedOptions::default()
    };
    let embedded = engine
        .embed_with(texts, queries)
        .await
        .map_err(|source| Error::Engine {
            model: label,
            source,
        })?
        .vectors;
    std::fs::create_dir_all(cache_dir).map_err(Error::io(cache_dir))?;
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .map_err(Error::io(&path))?;
    for ((id, _), vector) in missing.into_iter().zip(embedded) {
        let line = serde_json::json!({"id": id, "vector": vector});
        writeln!(file, "{line}").map_err(Error::io(&path))?;
        vectors.insert(id, vector);
    }
    Ok(vectors)
}

/// `GET url` as JSON; a [`Error::Router`] when the router does not answer or its answer is
/// not JSON.
async fn get_json(client: &reqwest::Client, url: &str) -> Result<serde_json::Value> {
    let router = |source| Error::Router {
        url: url.to_owned(),
        source,
    };
    client
        .get(url)
        .send()
        .await
        .map_err(router)?
        .json()
        .await
        .map_err(router)
}

/// Per consumer, the metric of one query's result list.
pub fn metric_value(metric: &str, k: usize, relevant: &BTreeSet<&str>, results: &[String]) -> f64 {
    let top: Vec<&String> = results.iter().take(k).collect();
    if metric.starts_with("precision") {
        return top
            .first()
            .map_or(0.0, |r| f64::from(u8::from(relevant.contains(r.as_str()))));
    }
    let hits = top.iter().filter(|r| relevant.contains(r.as_str())).count();
    hits as f64 / relevant.len().min(k).max(1) as f64
}

/// Paired bootstrap: 95% interval of the mean of `diffs`.
pub fn bootstrap_ci(diffs: &[f64], resamples: usize, seed: u64) -> (f64, f64) {
    use embedstream_adapter::eval::{Resamples, weighted_mean};
    Resamples::new(diffs.len(), resamples, seed).interval(|c| weighted_mean(diffs, c))
}

#[derive(Debug, Deserialize)]
struct Routed {
    results: Vec<RoutedHit>,
}

#[derive(Debug, Deserialize)]
struct RoutedHit {
    item_id: String,
}

/// Runs the evaluation.
pub async fn evaluate(config: &EvalConfig) -> Result<Evaluation> {
    let golden = &config.golden.sets;
    let cache = &config.golden.cache;
    let mut vectors: BTreeMap<String, HashMap<String, Vec<f32>>> = BTreeMap::new();
    for v in &config.versions {
        vectors.insert(
            v.clone(),
            query_vectors(golden, cache, v, &config.catalog, config.device).await?,
        );
    }
    let client = reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(30))
        .build()
        .unwrap_or_default();
    let router = config.router.trim_end_matches('/').to_owned();

    // Presence of every relevant item in every index an arm reads.
    let read: BTreeSet<String> = config
        .arms
        .iter()
        .flat_map(|a| a.plan.iter().map(|e| e.model.clone()))
        .collect();
    let relevant: BTreeSet<String> = golden
        .iter()
        .filter(|(c, _)| config.consumers.is_empty() || config.consumers.contains(c))
        .flat_map(|(_, g)| g.queries.iter().flat_map(|q| q.relevant.clone()))
        .collect();
    let present: HashMap<String, bool> = futures::stream::iter(relevant)
        .map(|id| {
            let (client, router, read) = (&client, &router, &read);
            async move {
                let url = format!("{router}/v1/items/{}", encode(&id));
                let v = get_json(client, &url).await?;
                let all = read.iter().all(|ver| !v[ver].is_null());
                Ok::<_, Error>((id, all))
            }
        })
        .buffer_unordered(config.concurrency.max(1))
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<Result<_>>()?;

    let stats = get_json(&client, &format!("{router}/v1/versions")).await?;
    let items: BTreeMap<String, i64> = config
        .versions
        .iter()
        .map(|v| (v.clone(), stats[v]["items"].as_i64().unwrap_or(0)))
        .collect();
    let coverage = match (config.versions.first(), config.versions.last()) {
        (Some(a), Some(b)) if config.versions.len() > 1 => {
            let (old, new) = (items[a], items[b]);
            if old == 0 {
                0.0
            } else {
                (new as f64 / old as f64).min(1.0)
            }
        }
        _ => 1.0,
    };

    let vectors = Arc::new(vectors);
    let mut consumers = Vec::new();
    for (consumer, set) in golden {
        if !config.consumers.is_empty() && !config.consumers.contains(consumer) {
            continue;
        }
        let kept: Vec<(&GoldenQuery, BTreeSet<&str>)> = set
            .queries
            .iter()
            .map(|q| {
                let rel: BTreeSet<&str> = q
                    .relevant
                    .iter()
                    .filter(|r| present.get(*r).copied().unwrap_or(false))
                    .map(String::as_str)
                    .collect();
                (q, rel)
            })
            .filter(|(_, rel)| !rel.is_empty())
            .collect();
        let dropped = set.queries.len() - kept.len();
        let mut per_arm: Vec<Vec<f64>> = Vec::new();
        let mut failed = 0;
        for arm in &config.arms {
            let values: Vec<Option<f64>> = futures::stream::iter(&kept)
                .map(|(q, rel)| {
                    let (client, router, vectors) = (&client, &router, Arc::clone(&vectors));
                    async move {
                        let mut map = serde_json::Map::new();
                        for e in arm.plan.iter().filter(|e| e.weight > 0.0) {
                            // An adapter's entry reads with the new model's query (and, fused,
                            // with the entry's own model's too).
                            let mut models = vec![query_model(e)];
                            if e.fuse.is_some() {
                                models.push(e.model.clone());
                            }
                            for v in models {
                                let vec = vectors.get(&v).and_then(|m| m.get(&q.id))?;
                                map.insert(v, serde_json::json!(vec));
                            }
                        }
                        let plan: Vec<_> = arm
                            .plan
                            .iter()
                            .map(|e| {
                                serde_json::json!({"model": e.model, "weight": e.weight, "adapter": e.adapter, "fuse": e.fuse})
                            })
                            .collect();
                        let mut body = serde_json::json!({
                            "consumer": consumer,
                            "k": set.k + q.exclude.len(),
                            "vectors": map,
                            "plan": plan,
                        });
                        if let Some(b) = &arm.blend {
                            body["blend"] = serde_json::json!(b);
                        }
                        let r = client
                            .post(format!("{router}/v1/search"))
                            .json(&body)
                            .send()
                            .await
                            .ok()?;
                        if !r.status().is_success() {
                            tracing::warn!(status = %r.status(), query = q.id, "A golden query failed.");
                            return None;
                        }
                        let routed: Routed = r.json().await.ok()?;
                        let results: Vec<String> = routed
                            .results
                            .into_iter()
                            .map(|h| h.item_id)
                            .filter(|id| !q.exclude.contains(id))
                            .collect();
                        Some(metric_value(&set.metric, set.k, rel, &results))
                    }
                })
                .buffered(config.concurrency.max(1))
                .collect()
                .await;
            failed += values.iter().filter(|v| v.is_none()).count();
            per_arm.push(values.into_iter().map(|v| v.unwrap_or(0.0)).collect());
        }
        let base = per_arm.first().cloned().unwrap_or_default();
        let n = base.len().max(1) as f64;
        let arms = config
            .arms
            .iter()
            .zip(&per_arm)
            .map(|(arm, values)| {
                let diffs: Vec<f64> = values.iter().zip(&base).map(|(a, b)| a - b).collect();
                let (ci_low, ci_high) = bootstrap_ci(&diffs, 2000, 0x5EED);
                ArmResult {
                    arm: arm.name.clone(),
                    mean: values.iter().sum::<f64>() / n,
                    diff: diffs.iter().sum::<f64>() / n,
                    ci_low,
                    ci_high,
                }
            })
            .collect();
        consumers.push(ConsumerEval {
            consumer: consumer.clone(),
            metric: set.metric.clone(),
            queries: kept.len(),
            dropped,
            arms,
            failed,
        });
    }
    Ok(Evaluation {
        items,
        coverage,
        consumers,
    })
}

/// The model whose query vector an entry reads with: the adapter's new model, or its own.
pub fn query_model(e: &ReadPlanEntry) -> String {
    e.adapter
        .as_deref()
        .and_then(|a| a.parse::<embedstream_adapter::AdapterName>().ok())
        .map_or_else(|| e.model.clone(), |n| n.new)
}

fn encode(id: &str) -> String {
    id.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// The adapter gate results of an evaluation whose arms are `old` (the old version with its
/// own queries) then reads of the old version through `adapter`: they pass when the adapter's
/// reads are not worse than the old model's own beyond the interval (the old index is the
/// same in both arms, so coverage does not enter).
pub fn adapter_gate_results(
    eval: &Evaluation,
    migration_id: &str,
    adapter: &str,
    fuse: Option<f64>,
) -> Vec<embedstream_schemas::records::GateResult> {
    eval.consumers
        .iter()
        .filter_map(|c| {
            let (old, read) = (c.arms.first()?, c.arms.get(1)?);
            Some(embedstream_schemas::records::GateResult {
                migration_id: migration_id.to_owned(),
                consumer: c.consumer.clone(),
                metric: c.metric.clone(),
                old_value: old.mean,
                new_value: read.mean,
                ci_low: read.ci_low,
                ci_high: read.ci_high,
                coverage: 1.0,
                passed: passes(read.ci_high, 1.0) && c.failed == 0 && c.queries > 0,
                queries: i32::try_from(c.queries).unwrap_or(i32::MAX),
                adapter: Some(adapter.to_owned()),
                fuse,
                online: None,
            })
        })
        .collect()
}

/// The gate results of an old-vs-new evaluation (arms `old` then `new`).
pub fn gate_results(
    eval: &Evaluation,
    migration_id: &str,
) -> Vec<embedstream_schemas::records::GateResult> {
    eval.consumers
        .iter()
        .filter_map(|c| {
            let old = c.arms.first()?;
            let new = c.arms.iter().find(|a| a.arm == "new")?;
            Some(embedstream_schemas::records::GateResult {
                migration_id: migration_id.to_owned(),
                consumer: c.consumer.clone(),
                metric: c.metric.clone(),
                old_value: old.mean,
                new_value: new.mean,
                ci_low: new.ci_low,
                ci_high: new.ci_high,
                coverage: eval.coverage,
                passed: passes(new.ci_high, eval.coverage) && c.failed == 0 && c.queries > 0,
                queries: i32::try_from(c.queries).unwrap_or(i32::MAX),
                adapter: None,
                fuse: None,
                online: None,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_follow_their_definitions() {
        let rel: BTreeSet<&str> = ["a", "b", "c"].into_iter().collect();
        let r = |ids: &[&str]| ids.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
        assert_eq!(
            metric_value("recall@5", 5, &rel, &r(&["a", "x", "b"])),
            2.0 / 3.0
        );
        // Fewer slots than relevant items: the denominator is k.
        assert_eq!(metric_value("recall@2", 2, &rel, &r(&["a", "b", "c"])), 1.0);
        assert_eq!(metric_value("recall@2", 2, &rel, &r(&["x", "a"])), 0.5);
        assert_eq!(metric_value("precision@1", 1, &rel, &r(&["b", "x"])), 1.0);
        assert_eq!(metric_value("precision@1", 1, &rel, &r(&["x", "b"])), 0.0);
        assert_eq!(metric_value("precision@1", 1, &rel, &[]), 0.0);
    }

    #[test]
    fn the_bootstrap_interval_covers_the_mean_and_shrinks_with_n() {
        let diffs: Vec<f64> = (0..400)
            .map(|i| if i % 10 < 6 { 0.1 } else { -0.1 })
            .collect();
        let (lo, hi) = bootstrap_ci(&diffs, 2000, 1);
        let mean = 0.02;
        assert!(lo < mean && mean < hi, "[{lo}, {hi}]");
        assert!(
            lo > 0.0,
            "a 0.02 mean on 400 queries with sd 0.1 is distinguishable: {lo}"
        );
        let (lo4, hi4) = bootstrap_ci(&diffs[..40], 2000, 1);
        assert!(hi4 - lo4 > 2.0 * (hi - lo));
        assert_eq!(
            bootstrap_ci(&diffs, 2000, 1),
            (lo, hi),
            "seeded: repeatable"
        );
    }

    #[test]
    fn golden_sets_come_from_the_consumers_file_beside_it() {
        let dir = std::env::temp_dir().join(format!("embedstream-golden-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("sets")).unwrap();
        let set = |q: &str| {
            serde_json::json!({"metric": "recall@k", "k": 10, "queries": [
                {"id": "q1", "text": q, "relevant": ["pkg:a"]}
            ]})
            .to_string()
        };
        std::fs::write(dir.join("sets/search.json"), set("a shell")).unwrap();
        std::fs::write(dir.join("ads.json"), set("an editor")).unwrap();
        let file = dir.join("consumers.toml");
        std::fs::write(
            &file,
            r#"
[consumers.search]
ef_search = 100
default_k = 10
max_k = 100
golden_set = "sets/search.json"
[consumers.ads]
ef_search = 64
default_k = 5
max_k = 50
golden_set = "ads.json"
[consumers.audit]
ef_search = 300
default_k = 20
max_k = 200
"#,
        )
        .unwrap();
        let profiles = embedstream_schemas::consumers::load(&file).unwrap();
        let golden = Golden::from_consumers(&file, &profiles).unwrap();
        assert_eq!(
            golden.sets.keys().collect::<Vec<_>>(),
            ["ads", "search"],
            "a consumer without a golden_set is not evaluated"
        );
        assert_eq!(golden.sets["search"].queries[0].id, "search:q1");
        assert_eq!(golden.sets["ads"].queries[0].id, "ads:q1", "ids kept apart");
        assert_eq!(golden.sets["ads"].queries[0].text, "an editor");
        assert_eq!(golden.cache, dir.join("vectors"));

        // A set that is not one is refused, naming its file.
        std::fs::write(dir.join("ads.json"), "{\"metric\": 3}").unwrap();
        let err = Golden::from_consumers(&file, &profiles).unwrap_err();
        assert!(err.to_string().contains("ads.json"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
