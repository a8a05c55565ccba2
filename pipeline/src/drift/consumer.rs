//! The drift consumer: follows the control log, makes missing references, scores each active
//! version every interval and, during a migration, the old version against the new one, and
//! publishes the reports.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use embedstream_adapter::{self as adapter, Adapter};
use embedstream_schemas::Codec;
use embedstream_schemas::records::{DriftKind, DriftReport};
use embedstream_topics::admin::{Admin, TopicSpec};
use embedstream_topics::catalog::Catalog;
use embedstream_topics::names::TopicNames;
use embedstream_topics::time::now_ms;
use embedstream_topics::{KafkaConfig, ModelRef};
use rdkafka::producer::{FutureProducer, FutureRecord};
use tokio_util::sync::CancellationToken;

use super::canaries::{Canary, canaries, digest};
use super::metrics;
use super::reference::{Reference, load_reference, save_reference};
use super::reports::REPORT_RETENTION;
use super::score::{Score, Thresholds, cross_verdict, kind_label, score, self_verdict};
use crate::control::ControlLog;
use crate::embed::burn_model::{Device, load_embedder};
use crate::embed::engine::{Engine, EngineConfig, EngineThreads};
use crate::embed::tokenize::TextTokenizer;
use crate::error::{Error, Result};
use crate::models;

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
    /// The engines of the versions being scored, loaded once and kept between scorings while
    /// their folder's files stay the same (a changed folder is loaded again; a version no
    /// longer scored is unloaded): a model loaded and dropped every interval would cost its
    /// load time each time and leave the allocator's heap higher after every scoring.
    engines: tokio::sync::Mutex<BTreeMap<String, Loaded>>,
    /// The versions embedded during the current scoring.
    used: std::sync::Mutex<BTreeSet<String>>,
    /// The model versions as of the current scoring (built-in and registered).
    catalog: std::sync::Mutex<Catalog>,
}

/// A loaded model: its engine, its threads, and the fingerprint of the folder it came from.
struct Loaded {
    engine: Engine,
    threads: EngineThreads,
    folder: String,
}

/// Names, sizes and modification times of the files in `dir`: a changed build changes it.
fn fingerprint(dir: &Path) -> String {
    let mut files: Vec<String> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let meta = e.metadata().ok()?;
            let modified = meta
                .modified()
                .ok()
                .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                .map_or(0, |d| d.as_nanos());
            Some(format!(
                "{}:{}:{modified}",
                e.file_name().to_string_lossy(),
                meta.len()
            ))
        })
        .collect();
    files.sort();
    format!("{}|{}", dir.display(), files.join(","))
}

impl std::fmt::Debug for Drift {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Drift")
            .field("config", &self.config)
            .field("canaries", &self.canaries.len())
            .finish_non_exhaustive()
    }
}

/// Stops an engine and waits for its threads.
async fn unload(loaded: Loaded) {
    let Loaded {
        engine, threads, ..
    } = loaded;
    drop(engine);
    let _ = tokio::task::spawn_blocking(move || threads.join()).await;
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
            engines: tokio::sync::Mutex::default(),
            used: std::sync::Mutex::default(),
            catalog: std::sync::Mutex::default(),
        })
    }

    /// Embeds the canaries with `model`'s folder (loaded on first use, and again when the
    /// folder's files change).
    pub async fn embed(&self, model: &ModelRef) -> Result<Vec<Vec<f32>>> {
        let dir = match self.config.model_dirs.get(&model.to_string()) {
            Some(dir) => dir.clone(),
            None => {
                let spec = self
                    .catalog
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .lookup(model)?;
                tokio::task::spawn_blocking(move || models::fetch(&spec, &models::home()))
                    .await
                    .map_err(Error::task(format!("fetching {model}")))??
            }
        };
        let key = model.to_string();
        self.used
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(key.clone());
        let folder = fingerprint(&dir);
        let engine = {
            let mut engines = self.engines.lock().await;
            match engines.get(&key) {
                Some(loaded) if loaded.folder == folder => loaded.engine.clone(),
                _ => {
                    if let Some(stale) = engines.remove(&key) {
                        tracing::info!(%model, "The model's folder changed: loading it again.");
                        unload(stale).await;
                    }
                    let loaded = self.load(model, dir, folder).await?;
                    let engine = loaded.engine.clone();
                    engines.insert(key, loaded);
                    engine
                }
            }
        };
        let texts = self.canaries.iter().map(|c| c.text.clone()).collect();
        engine.embed(texts).await.map_err(|source| Error::Engine {
            model: model.to_string(),
            source,
        })
    }

    async fn load(&self, model: &ModelRef, dir: PathBuf, folder: String) -> Result<Loaded> {
        let device = self.config.device;
        let name = format!("drift:{model}");
        let (engine, threads) = tokio::task::spawn_blocking(move || -> Result<_> {
            let (embedder, config) = load_embedder(&dir, device)?;
            let tokenizer = TextTokenizer::for_model(&dir, &config)?;
            Ok(Engine::start_replicated(
                vec![embedder],
                tokenizer,
                EngineConfig::default(),
                &name,
            ))
        })
        .await
        .map_err(Error::task(format!("loading {model}")))??;
        Ok(Loaded {
            engine,
            threads,
            folder,
        })
    }

    /// Unloads the engines of the versions this scoring did not embed.
    async fn unload_unused(&self) {
        let used = std::mem::take(&mut *self.used.lock().unwrap_or_else(|e| e.into_inner()));
        let mut engines = self.engines.lock().await;
        let unused: Vec<String> = engines
            .keys()
            .filter(|k| !used.contains(*k))
            .cloned()
            .collect();
        for key in unused {
            if let Some(loaded) = engines.remove(&key) {
                tracing::info!(model = %key, "No longer scored: its model is unloaded.");
                unload(loaded).await;
            }
        }
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
        self.used.lock().unwrap_or_else(|e| e.into_inner()).clear();
        let reports = self.score_all(control).await;
        self.unload_unused().await;
        reports
    }

    async fn score_all(&self, control: &ControlLog) -> Result<Vec<DriftReport>> {
        let state = control.state();
        *self.catalog.lock().unwrap_or_else(|e| e.into_inner()) = crate::control::catalog(&state);
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
