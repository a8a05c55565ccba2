//! `embedstream slices`: the sink instances of every version as they announce themselves
//! (`list`), retiring one (`retire`), and splitting a slice in two by replay (`split`).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use embedstream_pipeline::instances;
use embedstream_schemas::records::SHARED_POOL;
use embedstream_topics::ModelRef;
use embedstream_topics::slice::Slice;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::platform::PlatformArgs;
use super::sink::SinkArgs;

/// Subcommands of `slices`.
#[derive(Debug, clap::Subcommand)]
pub enum SlicesCommand {
    /// Every sink instance announced now: version, slice, pool, role, readiness, lag, items.
    List {
        #[command(flatten)]
        platform: PlatformArgs,
        /// Only this version's (`id@version`).
        #[arg(long)]
        model: Option<ModelRef>,
    },
    /// Retire an instance: routers stop using it at once, and it stops after draining.
    Retire {
        #[command(flatten)]
        platform: PlatformArgs,
        /// Its instance id (as `slices list` shows it).
        instance_id: String,
    },
    /// Split a slice in two by replay: serve its halves (`i/2n` and `i+n/2n`) in this
    /// process, each reading the versioned topic from its beginning and keeping its half;
    /// once both have caught up, retire every instance of the old slice in the pool (routers
    /// switch to the halves in one step), then keep serving the halves until stopped.
    Split(SplitArgs),
}

/// Options of `slices split`.
#[derive(Debug, Clone, clap::Args)]
pub struct SplitArgs {
    #[command(flatten)]
    platform: PlatformArgs,
    /// The version (`id@version`).
    #[arg(long)]
    model: ModelRef,
    /// The slice to split, `i/n`.
    #[arg(long)]
    slice: Slice,
    /// The replica pool of the slice.
    #[arg(long, default_value = SHARED_POOL)]
    pool: String,
    /// The halves' replica name.
    #[arg(long, default_value = "r0")]
    replica: String,
    /// Where the two halves serve (give it twice: first half, second half).
    #[arg(long, num_args = 1, required = true)]
    listen: Vec<SocketAddr>,
    /// Base directory of the halves' snapshots (as `sink --data-dir`).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// The halves' sink config file (as `sink --config`).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Longest wait for both halves to catch up before giving up (the old slice then keeps
    /// serving and nothing is retired).
    #[arg(long, default_value_t = 3600)]
    catch_up_secs: u64,
}

/// Runs a `slices` subcommand.
pub async fn run(command: SlicesCommand, shutdown: CancellationToken) -> anyhow::Result<()> {
    match command {
        SlicesCommand::List { platform, model } => {
            let all = instances::read_all(
                &platform.kafka()?,
                &platform.registry_url,
                &platform.names(),
                &shutdown,
            )
            .await?;
            let now = embedstream_topics::time::now_ms();
            println!("instance\tversion\tslice\tpool\trole\tready\tlag\titems\turl\tannounced");
            for i in all.values() {
                if model.as_ref().is_some_and(|m| m.to_string() != i.model) {
                    continue;
                }
                println!(
                    "{}\t{}\t{}/{}\t{}\t{}\t{}\t{}\t{}\t{}\t{:.0} s ago",
                    i.instance_id,
                    i.model,
                    i.slice,
                    i.slices,
                    i.pool,
                    if i.standby { "standby" } else { "primary" },
                    i.ready,
                    i.lag,
                    i.items,
                    i.url,
                    (now - i.announced_at) as f64 / 1000.0
                );
            }
            Ok(())
        }
        SlicesCommand::Retire {
            platform,
            instance_id,
        } => {
            instances::retire(&platform.kafka()?, &platform.names(), &instance_id).await?;
            println!("retired {instance_id}");
            Ok(())
        }
        SlicesCommand::Split(args) => {
            let metrics = args.platform.service_routes(&shutdown).await?;
            split(args, metrics, shutdown).await
        }
    }
}

async fn split(
    args: SplitArgs,
    metrics: axum::Router,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let [first, second] = args.listen[..] else {
        anyhow::bail!("give --listen twice: where each half serves");
    };
    let (a, b) = args.slice.halves()?;
    let (kafka, names) = (args.platform.kafka()?, args.platform.names());
    let token = shutdown.child_token();
    let mut tasks = JoinSet::new();
    let mut ids = Vec::new();
    for (half, listen) in [(a, first), (b, second)] {
        let mut sink = SinkArgs::for_model(
            args.platform.clone(),
            args.model.clone(),
            listen,
            args.data_dir.clone(),
        );
        sink.slice(half);
        sink.placed(&args.pool, &args.replica, args.config.clone());
        ids.push(sink.instance_id(&args.model));
        let (metrics, token) = (metrics.clone(), token.clone());
        tasks.spawn(async move { super::sink::run(sink, metrics, token).await });
    }
    tracing::info!(slice = %args.slice, halves = ?ids, "Serving both halves; waiting for them to catch up.");
    // The announcements as a router sees them, followed for as long as the halves run.
    let seen = embedstream_router::Backends::default();
    instances::follow(
        kafka.clone(),
        &args.platform.registry_url,
        &names,
        seen.clone(),
        token.clone(),
    );
    let deadline = tokio::time::Instant::now() + Duration::from_secs(args.catch_up_secs);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => break,
            done = tasks.join_next() => {
                token.cancel();
                return done
                    .context("no half is running")?
                    .context("a half panicked")?
                    .context("a half stopped before the split was done: nothing was retired");
            }
            () = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
        let all = seen.snapshot();
        if ids
            .iter()
            .all(|id| all.iter().any(|r| &r.id == id && r.ready))
        {
            let old: Vec<String> = all
                .iter()
                .filter(|r| {
                    r.model == args.model.to_string()
                        && r.pool == args.pool
                        && r.slice == args.slice
                })
                .map(|r| r.id.clone())
                .collect();
            for id in &old {
                instances::retire(&kafka, &names, id).await?;
                tracing::info!(instance = %id, "Retired the old slice's instance.");
            }
            println!(
                "split {} of {} into {} and {}; retired {}",
                args.slice,
                args.model,
                a,
                b,
                if old.is_empty() {
                    "none".to_owned()
                } else {
                    old.join(", ")
                }
            );
            break;
        }
        if tokio::time::Instant::now() > deadline {
            token.cancel();
            while tasks.join_next().await.is_some() {}
            anyhow::bail!(
                "the halves did not catch up within {} s; the old slice keeps serving",
                args.catch_up_secs
            );
        }
    }
    // The halves serve until stopped.
    let mut failure = None;
    while let Some(done) = tasks.join_next().await {
        token.cancel();
        if let Ok(Err(e)) = done {
            failure.get_or_insert(e);
        }
    }
    failure.map_or(Ok(()), Err)
}
