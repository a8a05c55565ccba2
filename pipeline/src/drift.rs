//! The drift consumer (seed 003's semantic drift monitor): a fixed canary set of 1,000 real
//! items (Debian packages, `pipeline/canaries/debian-1000.jsonl`, built into the binary)
//! scored on an interval.
//!
//! - **References.** The first time the consumer sees a model version in the control log
//!   (registered or active) and has no reference for it, it embeds the canaries and saves them
//!   (`<state>/references/<id@version>.safetensors`, with a digest of the canary set; a
//!   reference for another canary set is made again).
//! - **Self reports.** Every interval, each active version's model is loaded afresh from its
//!   folder (a pushed build shows up at the next tick) and the canaries re-embedded; the report
//!   gives the mean and minimum cosine to the reference and, for normalized models, the largest
//!   `|‖v‖ − 1|` (a normalization change leaves the cosine at 1 but breaks every dot-product
//!   score). Alert when the mean cosine is below the threshold (0.99) or the norm error above
//!   its tolerance (0.01).
//! - **Cross-version reports.** During a migration, the old and new models' canary vectors are
//!   compared: directly when the dimensions agree, else through the newest Drift-Adapter from
//!   the new space into the old one (none: no report, a warning). Seed 003's reading: mean > 0.95
//!   `incremental`, < 0.80 `full_backfill` (backfill before recall comparisons mean anything),
//!   else `partial`.
//!
//! Reports go to `drift.reports` (Avro, keyed by `id@version`) and to metrics.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use embedstream_adapter::{self as adapter, Adapter};
use embedstream_schemas::Codec;
use embedstream_schemas::records::{DriftKind, DriftReport};
use embedstream_topics::admin::{Admin, TopicSpec};
use embedstream_topics::names::TopicNames;
use embedstream_topics::{KafkaConfig, ModelRef, catalog};
use rdkafka::producer::{FutureProducer, FutureRecord};
use safetensors::tensor::{Dtype, SafeTensors, TensorView};
use sha2::{Digest, Sha256};
use tokio_util::sync::CancellationToken;

use embedstream_topics::time::now_ms;

use crate::control::ControlLog;

/// How long `drift.reports` keeps reports (a history, not compacted: the platform's topic
/// layout says the same).
const REPORT_RETENTION: Duration = Duration::from_secs(28 * 24 * 3600);
use crate::embed::burn_model::{Device, load_embedder};
use crate::embed::engine::{Engine, EngineConfig};
use crate::embed::tokenize::TextTokenizer;
use crate::error::{Error, Result};
use crate::models;

/// Metric names.
pub mod metrics {
    /// Gauge, by model and kind (`self`, `cross_version`): mean cosine of the last report.
    pub const MEAN_COSINE: &str = "embedstream_drift_mean_cosine";
    /// Gauge, by model and kind: minimum cosine of the last report.
    pub const MIN_COSINE: &str = "embedstream_drift_min_cosine";
    /// Gauge, by model: largest |‖v‖ − 1| of the last self report.
    pub const NORM_ERROR: &str = "embedstream_drift_max_norm_error";
    /// Gauge, by model: 1 while the last self report is an alert.
    pub const ALERT: &str = "embedstream_drift_alert";
    /// Gauge, by model: 1 while the version is active and scored every interval, 0 once it
    /// is not (retired, rolled back): its other gauges then keep their last values, which
    /// alert rules must not read as current (they join on this being 1).
    pub const SCORED: &str = "embedstream_drift_scored";
    /// Counter, by model, kind and verdict: reports published.
    pub const REPORTS: &str = "embedstream_drift_reports_total";
}

/// The built-in canary set.
const CANARIES: &str = include_str!("../canaries/debian-1000.jsonl");

/// One canary item.
#[derive(Debug, Clone, serde::Deserialize)]
pub struct Canary {
    /// Item id.
    pub id: String,
    /// Its text.
    pub text: String,
}

/// The first `limit` canaries (all 1,000 when `limit` is 0 or larger).
pub fn canaries(limit: usize) -> Vec<Canary> {
    let all: Vec<Canary> = CANARIES
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).expect("the built-in canary set is valid JSON lines"))
        .collect();
    let n = if limit == 0 {
        all.len()
    } else {
        limit.min(all.len())
    };
    all.into_iter().take(n).collect()
}

/// A digest of a canary set (ids and texts, in order).
pub fn digest(canaries: &[Canary]) -> String {
    let mut h = Sha256::new();
    for c in canaries {
        h.update(c.id.as_bytes());
        h.update([0]);
        h.update(c.text.as_bytes());
        h.update([0]);
    }
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// A self or cross-version score.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Score {
    /// Canaries compared.
    pub count: usize,
    /// Mean cosine.
    pub mean: f64,
    /// Minimum cosine.
    pub min: f64,
    /// Largest |‖v‖ − 1| of the live (or new) vectors.
    pub max_norm_error: f64,
}

fn norm(v: &[f32]) -> f64 {
    v.iter().map(|&x| f64::from(x).powi(2)).sum::<f64>().sqrt()
}

/// Cosines of `a[i]` to `b[i]`.
pub fn score(a: &[Vec<f32>], b: &[Vec<f32>]) -> Score {
    let mut s = Score {
        count: a.len().min(b.len()),
        mean: 0.0,
        min: f64::INFINITY,
        max_norm_error: 0.0,
    };
    for (x, y) in a.iter().zip(b) {
        let (nx, ny) = (norm(x), norm(y));
        let dot: f64 = x
            .iter()
            .zip(y)
            .map(|(p, q)| f64::from(*p) * f64::from(*q))
            .sum();
        let c = if nx > 0.0 && ny > 0.0 {
            dot / (nx * ny)
        } else {
            0.0
        };
        s.mean += c;
        s.min = s.min.min(c);
        s.max_norm_error = s.max_norm_error.max((nx - 1.0).abs());
    }
    if s.count > 0 {
        s.mean /= s.count as f64;
    } else {
        s.min = f64::NAN;
        s.mean = f64::NAN;
    }
    s
}

/// Alert thresholds.
#[derive(Debug, Clone, Copy)]
pub struct Thresholds {
    /// Mean cosine to the reference below this alerts (seed 003: 0.99).
    pub min_mean_cosine: f64,
    /// Largest |‖v‖ − 1| above this alerts (normalized models only).
    pub norm_tolerance: f64,
}

impl Default for Thresholds {
    fn default() -> Self {
        Thresholds {
            min_mean_cosine: 0.99,
            norm_tolerance: 0.01,
        }
    }
}

/// `ok`, or `alert: <why>`.
pub fn self_verdict(s: &Score, normalized: bool, t: Thresholds) -> String {
    let mut why = Vec::new();
    // NaN (no canary) alerts too.
    if s.mean.is_nan() || s.mean < t.min_mean_cosine {
        why.push(format!(
            "mean cosine to the reference {:.4} < {}",
            s.mean, t.min_mean_cosine
        ));
    }
    if normalized && s.max_norm_error > t.norm_tolerance {
        why.push(format!(
            "vectors are not unit length (max |norm - 1| = {:.4} > {})",
            s.max_norm_error, t.norm_tolerance
        ));
    }
    if why.is_empty() {
        "ok".into()
    } else {
        format!("alert: {}", why.join("; "))
    }
}

/// Seed 003's reading of old-vs-new similarity.
pub fn cross_verdict(mean: f64) -> &'static str {
    if mean > 0.95 {
        "incremental"
    } else if mean < 0.80 {
        "full_backfill"
    } else {
        "partial"
    }
}

/// Saved reference vectors of one model version.
#[derive(Debug, Clone)]
pub struct Reference {
    /// Digest of the canary set they embed.
    pub digest: String,
    /// One vector per canary, in order.
    pub vectors: Vec<Vec<f32>>,
}

fn reference_path(state: &Path, model: &ModelRef) -> PathBuf {
    state
        .join("references")
        .join(format!("{model}.safetensors"))
}

/// Reads a saved reference, if there is one.
pub fn load_reference(state: &Path, model: &ModelRef) -> Result<Option<Reference>> {
    let path = reference_path(state, model);
    let bytes = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::io(&path)(e)),
    };
    let bad = |reason: String| Error::Config {
        path: path.clone(),
        reason,
    };
    let (_, header) = SafeTensors::read_metadata(&bytes).map_err(|e| bad(e.to_string()))?;
    let digest = header
        .metadata()
        .as_ref()
        .and_then(|m| m.get("canary_digest").cloned())
        .ok_or_else(|| bad("no canary_digest".into()))?;
    let st = SafeTensors::deserialize(&bytes).map_err(|e| bad(e.to_string()))?;
    let t = st.tensor("vectors").map_err(|e| bad(e.to_string()))?;
    let [_, dim] = t.shape()[..] else {
        return Err(bad("vectors is not a matrix".into()));
    };
    let flat: Vec<f32> = t
        .data()
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    Ok(Some(Reference {
        digest,
        vectors: flat.chunks(dim.max(1)).map(<[f32]>::to_vec).collect(),
    }))
}

/// Saves a reference (through a temporary file and a rename).
pub fn save_reference(state: &Path, model: &ModelRef, reference: &Reference) -> Result<()> {
    let path = reference_path(state, model);
    let dim = reference.vectors.first().map_or(0, Vec::len);
    let data: Vec<u8> = reference
        .vectors
        .iter()
        .flatten()
        .flat_map(|v| v.to_le_bytes())
        .collect();
    let view =
        TensorView::new(Dtype::F32, vec![reference.vectors.len(), dim], &data).map_err(|e| {
            Error::Config {
                path: path.clone(),
                reason: e.to_string(),
            }
        })?;
    let meta = [
        ("canary_digest".to_string(), reference.digest.clone()),
        ("model".to_string(), model.to_string()),
        ("created_at_ms".to_string(), now_ms().to_string()),
    ]
    .into_iter()
    .collect();
    let bytes = safetensors::tensor::serialize([("vectors", view)], Some(meta)).map_err(|e| {
        Error::Config {
            path: path.clone(),
            reason: e.to_string(),
        }
    })?;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(Error::io(dir))?;
    }
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes).map_err(Error::io(&tmp))?;
    std::fs::rename(&tmp, &path).map_err(Error::io(&path))
}

/// How the drift consumer runs.
#[derive(Debug, Clone)]
pub struct DriftConfig {
    /// The brokers and the client properties of every Kafka client.
    pub kafka: KafkaConfig,
    /// Schema registry URL.
    pub registry_url: String,
    /// Topic names.
    pub names: TopicNames,
    /// Between scorings.
    pub interval: Duration,
    /// Canaries to use (0: all 1,000).
    pub canaries: usize,
    /// Where references are kept.
    pub state_dir: PathBuf,
    /// Model folders to score instead of the catalog's (`id@version` → folder): a deployed
    /// build, checked as it is.
    pub model_dirs: BTreeMap<String, PathBuf>,
    /// Drift-Adapters folder (cross-version reports when dimensions differ).
    pub adapters_dir: PathBuf,
    /// Where the models run.
    pub device: Device,
    /// Alert thresholds.
    pub thresholds: Thresholds,
}

/// The drift consumer.
pub struct Drift {
    config: DriftConfig,
    canaries: Vec<Canary>,
    digest: String,
    producer: FutureProducer,
    codec: Codec,
    topic: String,
    /// The versions the last scoring reported on (whose gauges are current).
    scored: std::sync::Mutex<BTreeSet<String>>,
}

impl std::fmt::Debug for Drift {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Drift")
            .field("config", &self.config)
            .field("canaries", &self.canaries.len())
            .finish_non_exhaustive()
    }
}

impl Drift {
    /// Connects and makes sure `drift.reports` exists.
    pub async fn open(config: DriftConfig) -> Result<Drift> {
        let canaries = canaries(config.canaries);
        let digest = digest(&canaries);
        let topic = config.names.drift_reports();
        Admin::new(&config.kafka, Duration::from_secs(30))?
            .ensure(&[TopicSpec::retained(topic.clone(), 1, REPORT_RETENTION)])
            .await?;
        let producer: FutureProducer = config
            .kafka
            .client()
            .set("message.timeout.ms", "30000")
            .create()
            .map_err(Error::kafka(&config.kafka))?;
        Ok(Drift {
            codec: Codec::new(&config.registry_url),
            config,
            canaries,
            digest,
            producer,
            topic,
            scored: std::sync::Mutex::default(),
        })
    }

    /// Embeds the canaries with `model`'s folder, loaded now.
    pub async fn embed(&self, model: &ModelRef) -> Result<Vec<Vec<f32>>> {
        let dir = match self.config.model_dirs.get(&model.to_string()) {
            Some(dir) => dir.clone(),
            None => {
                let spec = catalog::lookup(model)?;
                tokio::task::spawn_blocking(move || models::fetch(&spec, &models::home()))
                    .await
                    .map_err(Error::task(format!("fetching {model}")))??
            }
        };
        let device = self.config.device;
        let name = format!("drift:{model}");
        let (engine, threads) = tokio::task::spawn_blocking(move || -> Result<_> {
            let (embedder, config) = load_embedder(&dir, device)?;
            let tokenizer = TextTokenizer::load(&dir, config.max_seq_length)?;
            Ok(Engine::start_replicated(
                vec![embedder],
                tokenizer,
                EngineConfig::default(),
                &name,
            ))
        })
        .await
        .map_err(Error::task(format!("loading {model}")))??;
        let texts = self.canaries.iter().map(|c| c.text.clone()).collect();
        let vectors = engine.embed(texts).await.map_err(|source| Error::Engine {
            model: model.to_string(),
            source,
        });
        drop(engine);
        threads.join();
        vectors
    }

    /// The saved reference of `model`, made now when there is none (or it embeds another
    /// canary set); `true` when it was made now (its vectors are then the live model's).
    pub async fn reference(&self, model: &ModelRef) -> Result<(Reference, bool)> {
        if let Some(r) = load_reference(&self.config.state_dir, model)? {
            if r.digest == self.digest && r.vectors.len() == self.canaries.len() {
                return Ok((r, false));
            }
            tracing::warn!(%model, "The saved reference embeds another canary set; making it again.");
        }
        let reference = Reference {
            digest: self.digest.clone(),
            vectors: self.embed(model).await?,
        };
        save_reference(&self.config.state_dir, model, &reference)?;
        tracing::info!(%model, canaries = reference.vectors.len(), "Saved the drift reference.");
        Ok((reference, true))
    }

    /// Publishes a report and sets the metrics.
    async fn publish(&self, report: &DriftReport) -> Result<()> {
        let model = format!("{}@{}", report.model_id, report.model_version);
        let kind = kind_label(report.kind);
        ::metrics::gauge!(metrics::MEAN_COSINE, "model_version" => model.clone(), "kind" => kind)
            .set(report.mean_cosine);
        ::metrics::gauge!(metrics::MIN_COSINE, "model_version" => model.clone(), "kind" => kind)
            .set(report.min_cosine);
        ::metrics::counter!(metrics::REPORTS, "model_version" => model.clone(), "kind" => kind, "verdict" => report.verdict.split(':').next().unwrap_or_default().to_owned())
            .increment(1);
        if report.kind == DriftKind::SelfCheck {
            ::metrics::gauge!(metrics::NORM_ERROR, "model_version" => model.clone())
                .set(report.max_norm_error);
            let alert = report.verdict.starts_with("alert");
            ::metrics::gauge!(metrics::ALERT, "model_version" => model.clone())
                .set(f64::from(u8::from(alert)));
            ::metrics::gauge!(metrics::SCORED, "model_version" => model.clone()).set(1.0);
            if alert {
                tracing::error!(%model, verdict = %report.verdict, "Drift alert: the live model does not reproduce its reference vectors.");
            } else {
                tracing::info!(%model, mean = report.mean_cosine, min = report.min_cosine, "Drift: ok.");
            }
        } else {
            tracing::info!(%model, compared = ?report.compared_model_id, mean = report.mean_cosine, verdict = %report.verdict, "Cross-version drift.");
        }
        let payload = self.codec.encode(&self.topic, report).await?;
        let key = match report.kind {
            DriftKind::SelfCheck => model,
            DriftKind::CrossVersion => format!(
                "{model}~{}@{}",
                report.compared_model_id.clone().unwrap_or_default(),
                report.compared_model_version.unwrap_or_default()
            ),
        };
        self.producer
            .send(
                FutureRecord::to(&self.topic).key(&key).payload(&payload),
                Duration::from_secs(30),
            )
            .await
            .map_err(|(e, _)| Error::produce(&self.topic)(e))?;
        Ok(())
    }

    fn report(&self, kind: DriftKind, model: &ModelRef, s: &Score, verdict: String) -> DriftReport {
        DriftReport {
            kind,
            model_id: model.id.clone(),
            model_version: i32::try_from(model.version).unwrap_or(i32::MAX),
            compared_model_id: None,
            compared_model_version: None,
            adapter: None,
            canary_count: i32::try_from(s.count).unwrap_or(i32::MAX),
            mean_cosine: s.mean,
            min_cosine: s.min,
            max_norm_error: s.max_norm_error,
            verdict,
            report_time: now_ms(),
        }
    }

    /// One scoring: references for new versions, a self report per active version, a
    /// cross-version report for the migration in progress. Returns the reports published.
    pub async fn tick(&self, control: &ControlLog) -> Result<Vec<DriftReport>> {
        let state = control.state();
        let mut reports = Vec::new();
        let mut live: BTreeMap<String, Vec<Vec<f32>>> = BTreeMap::new();
        for m in state.models() {
            if m.state == embedstream_schemas::records::ModelState::Retired {
                continue;
            }
            let model = ModelRef::new(&m.model_id, u32::try_from(m.version).unwrap_or(0))?;
            let (reference, made_now) = self.reference(&model).await?;
            if m.state != embedstream_schemas::records::ModelState::Active {
                continue;
            }
            // A reference made this tick is the live model's output: not embedded twice.
            let vectors = if made_now {
                reference.vectors.clone()
            } else {
                self.embed(&model).await?
            };
            let s = score(&vectors, &reference.vectors);
            let verdict = self_verdict(&s, m.normalized, self.config.thresholds);
            let report = self.report(DriftKind::SelfCheck, &model, &s, verdict);
            self.publish(&report).await?;
            reports.push(report);
            live.insert(model.to_string(), vectors);
        }
        self.unscore_all_but(live.keys());
        if let Some(migration) = state.current_migration() {
            let (old, new) = (
                migration.from_model.parse::<ModelRef>()?,
                migration.to_model.parse::<ModelRef>()?,
            );
            let get = async |m: &ModelRef| -> Result<Vec<Vec<f32>>> {
                match live.get(&m.to_string()) {
                    Some(v) => Ok(v.clone()),
                    None => self.embed(m).await,
                }
            };
            let old_v = get(&old).await?;
            let new_v = get(&new).await?;
            let (mapped, adapter) = self.in_old_space(&old, &new, &old_v, new_v)?;
            if let Some(mapped) = mapped {
                let s = score(&mapped, &old_v);
                let mut report = self.report(
                    DriftKind::CrossVersion,
                    &new,
                    &s,
                    cross_verdict(s.mean).to_owned(),
                );
                report.compared_model_id = Some(old.id.clone());
                report.compared_model_version = i32::try_from(old.version).ok();
                report.adapter = adapter;
                self.publish(&report).await?;
                reports.push(report);
            }
        }
        Ok(reports)
    }

    /// Marks the versions scored before but not now (no longer active) as unscored: their
    /// gauges stay at their last values, so without this a rolled-back bad push would keep
    /// its alert firing until the process restarts.
    fn unscore_all_but<'a>(&self, now: impl Iterator<Item = &'a String>) {
        let now: BTreeSet<String> = now.cloned().collect();
        let mut scored = self.scored.lock().unwrap_or_else(|e| e.into_inner());
        for model in scored.difference(&now) {
            ::metrics::gauge!(metrics::SCORED, "model_version" => model.clone()).set(0.0);
            ::metrics::gauge!(metrics::ALERT, "model_version" => model.clone()).set(0.0);
            tracing::info!(%model, "No longer active: its drift gauges are marked unscored.");
        }
        *scored = now;
    }

    /// New vectors in the old space: as they are when the dimensions agree, else through the
    /// newest adapter from `new` into `old`.
    #[allow(clippy::type_complexity)]
    fn in_old_space(
        &self,
        old: &ModelRef,
        new: &ModelRef,
        old_v: &[Vec<f32>],
        new_v: Vec<Vec<f32>>,
    ) -> Result<(Option<Vec<Vec<f32>>>, Option<String>)> {
        let same_dim = old_v.first().map(Vec::len) == new_v.first().map(Vec::len);
        if same_dim {
            return Ok((Some(new_v), None));
        }
        let Some(a) = newest_adapter(&self.config.adapters_dir, new, old)? else {
            tracing::warn!(%old, %new, dir = %self.config.adapters_dir.display(), "No Drift-Adapter between the migration's models and their dimensions differ: no cross-version report (train one with `embedstream adapter train`).");
            return Ok((None, None));
        };
        let mapped = new_v
            .iter()
            .map(|v| a.apply(v))
            .collect::<std::result::Result<Vec<_>, _>>()?;
        Ok((Some(mapped), Some(a.meta.name)))
    }

    /// Scores every interval until `shutdown` (for one scoring, [`Self::tick`]).
    pub async fn run(&self, control: &ControlLog, shutdown: &CancellationToken) -> Result<()> {
        loop {
            match self.tick(control).await {
                Ok(reports) => tracing::debug!(reports = reports.len(), "Drift scoring done."),
                Err(e) => {
                    tracing::warn!(error = %e, "Drift scoring failed; trying again next interval.")
                }
            }
            tokio::select! {
                () = shutdown.cancelled() => return Ok(()),
                () = tokio::time::sleep(self.config.interval) => {}
            }
        }
    }
}

/// A report kind as metrics and the status page name it: `self` or `cross_version`.
pub fn kind_label(kind: DriftKind) -> &'static str {
    match kind {
        DriftKind::SelfCheck => "self",
        DriftKind::CrossVersion => "cross_version",
    }
}

/// The most recently trained adapter from `new`'s space into `old`'s.
pub fn newest_adapter(dir: &Path, new: &ModelRef, old: &ModelRef) -> Result<Option<Adapter>> {
    let mut best: Option<Adapter> = None;
    for name in adapter::list(dir)? {
        if name.new != new.to_string() || name.old != old.to_string() {
            continue;
        }
        match Adapter::load(&name.path_in(dir)) {
            Ok(a) => {
                if best
                    .as_ref()
                    .is_none_or(|b| a.meta.created_at_ms > b.meta.created_at_ms)
                {
                    best = Some(a);
                }
            }
            Err(e) => tracing::warn!(error = %e, "Skipping an unreadable adapter."),
        }
    }
    Ok(best)
}

/// Reads `topic` (drift reports) from its beginning and hands each report to `on_report`,
/// following it until `shutdown` (the status page's drift history). Undecodable records are
/// logged and skipped; an unreachable registry is retried.
pub async fn follow_reports(
    kafka: &KafkaConfig,
    codec: Codec,
    topic: &str,
    mut on_report: impl FnMut(DriftReport) + Send + 'static,
    shutdown: CancellationToken,
) -> Result<()> {
    use futures::StreamExt;
    use rdkafka::consumer::{Consumer, StreamConsumer};
    use rdkafka::{Message, Offset, TopicPartitionList};

    let kafka_error = Error::kafka(kafka);
    Admin::new(kafka, Duration::from_secs(30))?
        .ensure(&[TopicSpec::retained(topic, 1, REPORT_RETENTION)])
        .await?;
    let consumer: StreamConsumer = kafka
        .client()
        .set(
            "group.id",
            format!("embedstream-drift-view-{}", uuid::Uuid::new_v4()),
        )
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .set("fetch.wait.max.ms", "100")
        .create()
        .map_err(&kafka_error)?;
    let metadata = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(30))
        .map_err(&kafka_error)?;
    let mut tpl = TopicPartitionList::new();
    for p in metadata.topics().iter().flat_map(|t| t.partitions()) {
        tpl.add_partition_offset(topic, p.id(), Offset::Beginning)
            .map_err(&kafka_error)?;
    }
    consumer.assign(&tpl).map_err(&kafka_error)?;
    let mut stream = consumer.stream();
    loop {
        let msg = tokio::select! {
            () = shutdown.cancelled() => return Ok(()),
            msg = stream.next() => msg,
        };
        let Some(msg) = msg else { return Ok(()) };
        let msg = match msg {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!(error = %e, topic, "Error reading drift reports; retrying.");
                tokio::time::sleep(Duration::from_millis(500)).await;
                continue;
            }
        };
        let Some(bytes) = msg.payload() else { continue };
        loop {
            match codec.decode::<DriftReport>(bytes).await {
                Ok(r) => {
                    on_report(r);
                    break;
                }
                Err(e) if e.is_retryable() => {
                    tokio::select! {
                        () = shutdown.cancelled() => return Ok(()),
                        () = tokio::time::sleep(Duration::from_millis(500)) => {}
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, offset = msg.offset(), topic, "Skipping an undecodable drift report.");
                    break;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_canary_set_is_1000_distinct_real_items() {
        let all = canaries(0);
        assert_eq!(all.len(), 1000);
        let ids: std::collections::BTreeSet<_> = all.iter().map(|c| &c.id).collect();
        assert_eq!(ids.len(), 1000);
        assert!(
            all.iter()
                .all(|c| c.id.starts_with("pkg:") && c.text.len() >= 20)
        );
        assert_eq!(canaries(10).len(), 10);
        assert_ne!(digest(&canaries(10)), digest(&canaries(11)));
    }

    #[test]
    fn verdicts_follow_the_thresholds() {
        let unit = |v: Vec<f32>| -> Vec<f32> {
            let n = norm(&v) as f32;
            v.into_iter().map(|x| x / n).collect()
        };
        let a = vec![unit(vec![1.0, 0.0, 0.0]), unit(vec![0.0, 1.0, 0.0])];
        let same = score(&a, &a);
        assert!((same.mean - 1.0).abs() < 1e-9 && same.max_norm_error < 1e-6);
        assert_eq!(self_verdict(&same, true, Thresholds::default()), "ok");
        // Unnormalized: cosine 1, norm error 2.
        let scaled: Vec<Vec<f32>> = a
            .iter()
            .map(|v| v.iter().map(|x| x * 3.0).collect())
            .collect();
        let s = score(&scaled, &a);
        assert!((s.mean - 1.0).abs() < 1e-9 && (s.max_norm_error - 2.0).abs() < 1e-6);
        let v = self_verdict(&s, true, Thresholds::default());
        assert!(v.starts_with("alert: vectors are not unit length"), "{v}");
        assert_eq!(self_verdict(&s, false, Thresholds::default()), "ok");
        // One canary turned by 0.3 rad: mean (cos 0.3 + 1) / 2 ≈ 0.978 < 0.99.
        let turned = vec![vec![0.3f32.cos(), 0.3f32.sin(), 0.0], a[1].clone()];
        let s = score(&turned, &a);
        assert!((s.min - f64::from(0.3f32.cos())).abs() < 1e-6);
        assert!(self_verdict(&s, true, Thresholds::default()).contains("mean cosine"));
        assert_eq!(cross_verdict(0.97), "incremental");
        assert_eq!(cross_verdict(0.9), "partial");
        assert_eq!(cross_verdict(0.5), "full_backfill");
    }

    #[test]
    fn references_round_trip() {
        let dir = std::env::temp_dir().join(format!("drift-ref-{}", std::process::id()));
        let model: ModelRef = "minilm-l6-v2@1".parse().unwrap();
        assert!(load_reference(&dir, &model).unwrap().is_none());
        let r = Reference {
            digest: "abc".into(),
            vectors: vec![vec![1.0, 2.0], vec![3.0, 4.0], vec![5.0, 6.0]],
        };
        save_reference(&dir, &model, &r).unwrap();
        let back = load_reference(&dir, &model).unwrap().unwrap();
        assert_eq!(back.digest, "abc");
        assert_eq!(back.vectors, r.vectors);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
