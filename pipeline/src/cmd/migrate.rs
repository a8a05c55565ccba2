//! `embedstream migrate …`: the operator's commands. Each one either writes to the control log
//! directly (the default: the operator has Kafka access) or, with `--admin-url`, goes through
//! the platform's admin HTTP API with a bearer token.

use std::io::IsTerminal;
use std::time::Duration;

use anyhow::Context;
use embedstream_pipeline::embed::burn_model::Device;
use embedstream_pipeline::embed::engine::EngineConfig;
use embedstream_pipeline::eval;
use embedstream_pipeline::migrate::backfill::{self, BackfillConfig};
use embedstream_pipeline::migrate::check::{CheckConfig, CheckReport, Checker};
use embedstream_pipeline::migrate::{Migrator, Status, VersionWrites, plan};
use embedstream_pipeline::stage::validate::Limits;
use embedstream_topics::{KafkaConfig, ModelRef};
use tokio_util::sync::CancellationToken;

use super::platform::PlatformArgs;

/// Where a command goes.
#[derive(Debug, Clone, clap::Args)]
pub struct Target {
    #[command(flatten)]
    pub platform: PlatformArgs,
    /// Send the command to this admin API (e.g. http://127.0.0.1:9400) instead of writing the
    /// control log directly.
    #[arg(long, env = "EMBEDSTREAM_ADMIN_URL", global = true)]
    pub admin_url: Option<String>,
    /// Bearer token of the admin API.
    #[arg(
        long,
        env = "EMBEDSTREAM_ADMIN_TOKEN",
        global = true,
        hide_env_values = true
    )]
    pub token: Option<String>,
    /// Consumers the migration gates (comma-separated); by default every consumer of
    /// `--consumers-file`, or the built-in ones.
    #[arg(long, value_delimiter = ',', global = true)]
    pub consumers: Vec<String>,
}

impl Target {
    /// The consumers the migration gates.
    fn gated(&self) -> anyhow::Result<Vec<String>> {
        if !self.consumers.is_empty() {
            return Ok(self.consumers.clone());
        }
        Ok(self.platform.consumers()?.names())
    }
}

/// The subcommands.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum MigrateCommand {
    /// Start a migration: the new version is written beside the old one (dual-write).
    Start {
        /// Version migrated from (`id@version`).
        #[arg(long)]
        from: ModelRef,
        /// Version migrated to.
        #[arg(long)]
        to: ModelRef,
    },
    /// Phase, backfill coverage per partition and ETA, plans and gate results.
    Status {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
        /// Keep printing every N seconds until the backfill is complete.
        #[arg(long)]
        watch: Option<u64>,
        /// The stage's `/metrics`, for its write counts per version.
        #[arg(
            long,
            env = "EMBEDSTREAM_STAGE_METRICS",
            default_value = "http://127.0.0.1:9301/metrics"
        )]
        stage_metrics: String,
    },
    /// Set the share of a consumer's reads that come from the new version.
    Weight {
        /// Consumer.
        #[arg(long)]
        consumer: String,
        /// Weight of the new version, 0 <= w < 1.
        #[arg(long = "new")]
        new_weight: f64,
        /// Read the old version's share "new model via adapter": queries embedded with the new
        /// model, mapped into the old space by this Drift-Adapter (`embedstream adapter train`).
        /// Refused unless `migrate gate --adapter` found these reads not worse than the old
        /// model's own queries for this consumer.
        #[arg(long)]
        adapter: Option<String>,
        /// With --adapter, fused reads: the old index is searched with normalize((1 - W) * the
        /// old model's query + W * the adapted new-model query); `--fuse` alone is W = 0.5.
        #[arg(long, requires = "adapter", num_args = 0..=1, default_missing_value = "0.5", value_name = "W")]
        fuse: Option<f64>,
        /// With --adapter, read through it even though its gate did not pass (recorded).
        #[arg(long, requires = "adapter")]
        force: bool,
    },
    /// Send a share of a consumer's users (or sessions) to the new version alone: a
    /// request-level canary, sticky by the unit id callers give (`unit_id`). 0 ends it.
    Canary {
        /// Consumer.
        #[arg(long)]
        consumer: String,
        /// Share of units in the canary, 0 <= share <= 1 (0 ends the canary).
        #[arg(long)]
        share: f64,
    },
    /// Evaluate old vs new on every consumer's golden set and record the gate results.
    Gate {
        /// Golden sets (`golden.json`); default: each consumer's `golden_set` in the consumers
        /// file.
        #[arg(long)]
        golden: Option<std::path::PathBuf>,
        /// The query router.
        #[arg(
            long,
            env = "EMBEDSTREAM_ROUTER_URL",
            default_value = "http://127.0.0.1:9400"
        )]
        router: String,
        /// Where query embeddings run.
        #[arg(long, env = "EMBEDSTREAM_DEVICE", default_value = "cpu")]
        device: Device,
        /// The adapter gate instead: reads of the old version through this Drift-Adapter
        /// against the old model's own queries (what `migrate weight --adapter` asks for).
        #[arg(long)]
        adapter: Option<String>,
        /// With --adapter, gate fused reads with this weight (`--fuse` alone: 0.5).
        #[arg(long, requires = "adapter", num_args = 0..=1, default_missing_value = "0.5", value_name = "W")]
        fuse: Option<f64>,
        /// One consumer (default: all).
        #[arg(long)]
        consumer: Option<String>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Move consumers to the new version; refused unless the gate passed.
    Cutover {
        /// One consumer (default: all).
        #[arg(long)]
        consumer: Option<String>,
        /// Cut over even if the gate refuses (recorded in the control log).
        #[arg(long)]
        force: bool,
    },
    /// Restore the plan consumers had before the migration.
    Rollback {
        /// One consumer (default: all).
        #[arg(long)]
        consumer: Option<String>,
    },
    /// Retire the version no consumer reads any more and close the migration.
    Decommission,
    /// Replay `items` with the new model into its topic, newest first (resumes a killed run).
    Backfill {
        /// Items/s at most (0: no limit).
        #[arg(long, default_value_t = 0.0)]
        max_rate: f64,
        /// Offsets per chunk and checkpoint.
        #[arg(long, default_value_t = 256)]
        chunk: i64,
        #[command(flatten)]
        model: ModelArgs,
    },
    /// Sample items, compare the two versions' topics, re-queue the items where the new one is
    /// behind, report (and export) the divergence ratio.
    Check {
        /// Share of items sampled, in (0, 1].
        #[arg(long, default_value_t = 0.1)]
        sample: f64,
        /// Seed of the sample (default: a new one each run).
        #[arg(long)]
        seed: Option<u64>,
        /// Seconds differing items get to converge before they count as divergent.
        #[arg(long, default_value_t = 10.0)]
        settle: f64,
        /// Report only; re-queue nothing.
        #[arg(long)]
        dry_run: bool,
        /// Print JSON.
        #[arg(long)]
        json: bool,
        /// Check again every N seconds, serving the divergence ratio on `/metrics`.
        #[arg(long)]
        every: Option<u64>,
        /// Address of `/metrics` with `--every`.
        #[arg(long, default_value = "127.0.0.1:9465")]
        listen: std::net::SocketAddr,
        #[command(flatten)]
        model: ModelArgs,
    },
}

/// How the new model runs (backfill and re-queue).
#[derive(Debug, Clone, clap::Args)]
pub struct ModelArgs {
    /// Where the model runs.
    #[arg(long, env = "EMBEDSTREAM_DEVICE", default_value = "cpu")]
    device: Device,
    /// Max padded tokens per forward pass.
    #[arg(long, default_value_t = 8192)]
    batch_tokens: usize,
    /// Same as the stage's: longer texts were dead-lettered there and are skipped here.
    #[arg(long, default_value_t = 65_536)]
    max_text_bytes: usize,
}

impl ModelArgs {
    fn replay(
        &self,
        target: &Target,
        chunk: i64,
        max_rate: f64,
        by: &str,
    ) -> anyhow::Result<BackfillConfig> {
        Ok(BackfillConfig {
            kafka: target.platform.kafka()?,
            registry_url: target.platform.registry_url.clone(),
            names: target.platform.names(),
            chunk: chunk.max(1),
            max_rate,
            device: self.device,
            engine: EngineConfig {
                max_batch_tokens: self.batch_tokens,
                ..EngineConfig::default()
            },
            limits: Limits {
                max_text_bytes: self.max_text_bytes,
            },
            by: format!("{by}:{}", operator()),
        })
    }
}

fn operator() -> String {
    std::env::var("USER").unwrap_or_else(|_| "operator".to_owned())
}

/// Runs one subcommand.
pub async fn run(target: Target, command: MigrateCommand) -> anyhow::Result<()> {
    if let Some(url) = &target.admin_url {
        return remote(url, target.token.as_deref(), &command).await;
    }
    let token = CancellationToken::new();
    let log = target.platform.control_log(token.clone()).await?;
    let migrator = Migrator::new(log.clone(), target.gated()?, &operator());
    let result = local(&target, &migrator, command).await;
    token.cancel();
    result
}

async fn local(target: &Target, m: &Migrator, command: MigrateCommand) -> anyhow::Result<()> {
    let applied = match command {
        MigrateCommand::Start { from, to } => m.start(&from, &to).await?,
        MigrateCommand::Weight {
            consumer,
            new_weight,
            adapter,
            fuse,
            force,
        } => {
            let adapter = adapter.map(|name| plan::AdapterRead { name, fuse });
            m.weight(&consumer, new_weight, adapter.as_ref(), force)
                .await?
        }
        MigrateCommand::Canary { consumer, share } => m.canary(&consumer, share).await?,
        MigrateCommand::Cutover { consumer, force } => {
            m.cutover(consumer.as_deref(), force).await?
        }
        MigrateCommand::Rollback { consumer } => m.rollback(consumer.as_deref()).await?,
        MigrateCommand::Decommission => m.decommission().await?,
        MigrateCommand::Gate {
            golden,
            router,
            device,
            adapter,
            fuse,
            consumer,
            json,
        } => {
            let state = m.log().state();
            let migration = plan::current(&state)?.clone();
            let versions = vec![migration.from_model.clone(), migration.to_model.clone()];
            let consumers: Vec<String> = match consumer {
                Some(c) if m.consumers().contains(&c) => vec![c],
                Some(c) => anyhow::bail!(
                    "unknown consumer {c:?}; known: {}",
                    m.consumers().join(", ")
                ),
                None => m.consumers().to_vec(),
            };
            let arms = match &adapter {
                None => super::eval::arms(&versions, &[], &[]),
                Some(name) => {
                    if let Some(w) = fuse.filter(|w| !embedstream_adapter::is_fuse_weight(*w)) {
                        anyhow::bail!("--fuse is in (0, 1], not {w}");
                    }
                    let mut arms = super::eval::arms(&versions[..1], &[], &[]);
                    let label = if fuse.is_some() { "fused" } else { "adapted" };
                    arms.push(super::eval::adapter_arm(
                        &migration.from_model,
                        name,
                        fuse,
                        label.into(),
                    ));
                    arms
                }
            };
            let config = eval::EvalConfig {
                router,
                golden: target.platform.golden(golden.as_deref())?,
                arms,
                versions,
                consumers,
                concurrency: 8,
                device,
                catalog: embedstream_pipeline::control::catalog(&state),
            };
            let evaluation = eval::evaluate(&config).await?;
            super::eval::print(&evaluation, json)?;
            let gates = match &adapter {
                None => eval::gate_results(&evaluation, &migration.migration_id),
                Some(name) => {
                    eval::adapter_gate_results(&evaluation, &migration.migration_id, name, fuse)
                }
            };
            for g in &gates {
                eprintln!(
                    "gate {}: {} {}",
                    g.consumer,
                    g.metric,
                    if g.passed { "PASS" } else { "FAIL" }
                );
            }
            m.record_gates(gates).await?
        }
        MigrateCommand::Status {
            json,
            watch,
            stage_metrics,
        } => {
            loop {
                let mut status = m.status();
                status.versions = writes(target, &status, &stage_metrics).await;
                print_status(&status, json)?;
                let done = status
                    .migration
                    .as_ref()
                    .is_none_or(|s| s.backfill_fraction >= 1.0);
                match watch {
                    Some(secs) if !done => tokio::time::sleep(Duration::from_secs(secs)).await,
                    _ => break,
                }
            }
            return Ok(());
        }
        MigrateCommand::Backfill {
            max_rate,
            chunk,
            model,
        } => {
            let shutdown = super::super::shutdown_on_signal();
            let config = model.replay(target, chunk, max_rate, "backfill")?;
            let report = backfill::run(config, m.log().clone(), shutdown).await?;
            println!("{}", serde_json::to_string(&report)?);
            return Ok(());
        }
        MigrateCommand::Check {
            sample,
            seed,
            settle,
            dry_run,
            json,
            every,
            listen,
            model,
        } => {
            anyhow::ensure!(
                sample > 0.0 && sample <= 1.0,
                "--sample must be in (0, 1], not {sample}"
            );
            let shutdown = super::super::shutdown_on_signal();
            let server = match every {
                Some(_) => Some(
                    super::platform::serve(
                        listen,
                        embedstream_pipeline::telemetry::metrics_router()?,
                        None,
                        shutdown.clone(),
                    )
                    .await?,
                ),
                None => None,
            };
            let mut checker = Checker::new(CheckConfig {
                replay: model.replay(target, 256, 0.0, "check")?,
                sample,
                settle: Duration::from_secs_f64(settle.max(0.0)),
                requeue: !dry_run,
            });
            loop {
                let report = checker
                    .run(seed.unwrap_or_else(rand_seed), m.log(), shutdown.clone())
                    .await?;
                print_check(&report, json)?;
                match every {
                    Some(secs) if !shutdown.is_cancelled() => {
                        tokio::select! {
                            () = shutdown.cancelled() => break,
                            () = tokio::time::sleep(Duration::from_secs(secs)) => {}
                        }
                    }
                    _ => break,
                }
            }
            shutdown.cancel();
            if let Some(server) = server {
                let _ = server.await;
            }
            return Ok(());
        }
    };
    for key in applied.keys {
        println!("wrote {key}");
    }
    Ok(())
}

/// Each version's records on its topic and the stage's write counts (what answers).
async fn writes(target: &Target, status: &Status, stage_metrics: &str) -> Vec<VersionWrites> {
    let Some(m) = &status.migration else {
        return Vec::new();
    };
    let exposition = match reqwest::Client::new()
        .get(stage_metrics)
        .timeout(Duration::from_secs(3))
        .send()
        .await
    {
        Ok(r) if r.status().is_success() => r.text().await.ok(),
        _ => None,
    };
    let names = target.platform.names();
    let Ok(kafka) = target.platform.kafka() else {
        return Vec::new();
    };
    let models = [m.from.clone(), m.to.clone()];
    let topics: Vec<Option<String>> = models
        .iter()
        .map(|v| v.parse::<ModelRef>().ok().map(|r| names.embeddings(&r)))
        .collect();
    let records = tokio::task::spawn_blocking(move || topic_records(&kafka, &topics))
        .await
        .unwrap_or_default();
    models
        .iter()
        .zip(records)
        .map(|(model, topic_records)| {
            let (stage_ok, stage_failed) = exposition
                .as_deref()
                .map_or((None, None), |e| VersionWrites::stage_counts(e, model));
            VersionWrites {
                model: model.clone(),
                topic_records,
                stage_ok,
                stage_failed,
            }
        })
        .collect()
}

/// Sum of each topic's partitions' end offsets (`None` where the broker did not answer).
fn topic_records(kafka: &KafkaConfig, topics: &[Option<String>]) -> Vec<Option<i64>> {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    let timeout = Duration::from_secs(5);
    let consumer: Option<BaseConsumer> = kafka.client().create().ok();
    topics
        .iter()
        .map(|topic| {
            let (consumer, topic) = (consumer.as_ref()?, topic.as_deref()?);
            let metadata = consumer.fetch_metadata(Some(topic), timeout).ok()?;
            let partitions: Vec<i32> = metadata
                .topics()
                .iter()
                .flat_map(|t| t.partitions().iter().map(|p| p.id()))
                .collect();
            if partitions.is_empty() {
                return None;
            }
            partitions.iter().try_fold(0i64, |sum, &p| {
                let (_, high) = consumer.fetch_watermarks(topic, p, timeout).ok()?;
                Some(sum + high)
            })
        })
        .collect()
}

fn print_status(status: &Status, json: bool) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string(status)?);
        return Ok(());
    }
    let tty = std::io::stdout().is_terminal();
    match &status.migration {
        None => println!("no migration in progress"),
        Some(m) => {
            println!(
                "migration {}  {} -> {}  phase {}",
                m.id, m.from, m.to, m.phase
            );
            let eta = m
                .backfill_eta_s
                .map_or_else(String::new, |s| format!("  ETA {:.0} s", s));
            println!(
                "backfill {:>5.1}%  {} items embedded{eta}",
                m.backfill_fraction * 100.0,
                m.backfill_embedded
            );
            for p in &m.backfill {
                let bar = if tty { bar(p.fraction) } else { String::new() };
                println!(
                    "  partition {:>3} {bar} {:>5.1}%  offsets [{}, {}) next_end {}",
                    p.partition,
                    p.fraction * 100.0,
                    p.start,
                    p.end,
                    p.next_end
                );
            }
        }
    }
    for v in &status.versions {
        let show = |n: Option<i64>| n.map_or_else(|| "?".to_owned(), |n| n.to_string());
        println!(
            "  {:<18} topic records {}  stage writes ok {} failed {}",
            v.model,
            show(v.topic_records),
            show(v.stage_ok.map(|n| n as i64)),
            show(v.stage_failed.map(|n| n as i64)),
        );
    }
    for c in &status.consumers {
        let plan: Vec<String> = c.plan.iter().map(|(m, w)| format!("{m}={w:.2}")).collect();
        let gate = c.gate.as_ref().map_or_else(
            || "gate: not evaluated".to_owned(),
            |g| {
                format!(
                    "gate: {} old {:.3} new {:.3} diff CI [{:+.3}, {:+.3}] coverage {:.1}% n={} {}",
                    g.metric,
                    g.old_value,
                    g.new_value,
                    g.ci_low,
                    g.ci_high,
                    g.coverage * 100.0,
                    g.queries,
                    if g.passed { "PASS" } else { "FAIL" }
                )
            },
        );
        let forced = if c.forced { " (forced)" } else { "" };
        let canary = c.canary.as_ref().map_or_else(String::new, |s| {
            let arm: Vec<String> = s
                .entries
                .iter()
                .map(|e| format!("{}={:.2}", e.model, e.weight))
                .collect();
            format!(
                "  canary {:.1}% of units: {}",
                s.share * 100.0,
                arm.join(" ")
            )
        });
        println!(
            "  {:<8} {}{forced}{canary}  {gate}",
            c.consumer,
            plan.join(" ")
        );
    }
    Ok(())
}

fn rand_seed() -> u64 {
    let id = uuid::Uuid::new_v4().as_u64_pair();
    id.0 ^ id.1
}

fn print_check(r: &CheckReport, json: bool) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string(r)?);
        return Ok(());
    }
    println!(
        "check {}  {} vs {}  sampled {} of {} items (seed {})",
        r.migration, r.old, r.new, r.sampled, r.items, r.seed
    );
    println!(
        "divergent {} ({:.2}%)  settled {}  re-queued {}  skipped {}  in {:.1} s",
        r.divergent,
        r.divergence_ratio * 100.0,
        r.settled,
        r.requeued,
        r.requeue_skipped,
        r.seconds
    );
    for (kind, n) in &r.kinds {
        println!("  {kind:<16} {n}");
    }
    Ok(())
}

fn bar(fraction: f64) -> String {
    let width = 30;
    let filled = ((fraction.clamp(0.0, 1.0)) * width as f64).round() as usize;
    format!("[{}{}]", "#".repeat(filled), "-".repeat(width - filled))
}

/// Sends a command to the admin API.
async fn remote(url: &str, token: Option<&str>, command: &MigrateCommand) -> anyhow::Result<()> {
    let token = token.context("--admin-url needs --token (or EMBEDSTREAM_ADMIN_TOKEN)")?;
    let (method_get, path, body) = match command {
        MigrateCommand::Start { from, to } => (
            false,
            "start",
            serde_json::json!({"from": from.to_string(), "to": to.to_string()}),
        ),
        MigrateCommand::Weight {
            consumer,
            new_weight,
            adapter,
            fuse,
            force,
        } => (
            false,
            "weight",
            serde_json::json!({"consumer": consumer, "new": new_weight, "adapter": adapter, "fuse": fuse, "force": force}),
        ),
        MigrateCommand::Canary { consumer, share } => (
            false,
            "canary",
            serde_json::json!({"consumer": consumer, "share": share}),
        ),
        MigrateCommand::Cutover { consumer, force } => (
            false,
            "cutover",
            serde_json::json!({"consumer": consumer, "force": force}),
        ),
        MigrateCommand::Rollback { consumer } => {
            (false, "rollback", serde_json::json!({"consumer": consumer}))
        }
        MigrateCommand::Decommission => (false, "decommission", serde_json::json!({})),
        MigrateCommand::Status { .. } => (true, "status", serde_json::Value::Null),
        MigrateCommand::Gate { .. } => {
            anyhow::bail!("the gate runs the evaluation here; run it without --admin-url")
        }
        MigrateCommand::Backfill { .. } | MigrateCommand::Check { .. } => {
            anyhow::bail!(
                "the backfill and the checker run where Kafka is reachable; run them without --admin-url"
            )
        }
    };
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap_or_default();
    let endpoint = format!("{}/admin/v1/migration/{path}", url.trim_end_matches('/'));
    let request = if method_get {
        client.get(&endpoint)
    } else {
        client.post(&endpoint).json(&body)
    };
    let response = request
        .bearer_auth(token)
        .send()
        .await
        .with_context(|| format!("cannot reach {endpoint}"))?;
    let status = response.status();
    let text = response.text().await.unwrap_or_default();
    if !status.is_success() {
        anyhow::bail!("{endpoint}: {status}: {text}");
    }
    println!("{text}");
    Ok(())
}
