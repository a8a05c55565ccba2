//! The backfill of a migration: replays `items` with the new model into the new version's
//! topic, newest first, checkpointed in the control log, idempotent with the dual-write,
//! throttled.
//!
//! - **Range.** Per partition of `items`, the offsets `[low, high)` of when the backfill first
//!   ran; everything after `high` is the dual-write's (the migration turned it on before).
//! - **Newest first.** Kafka reads forwards only, so each partition is walked backwards in
//!   chunks: read `[next_end − chunk, next_end)`, handle it newest record first, move
//!   `next_end` down. Partitions take turns chunk by chunk, so recent items of every partition
//!   are covered before old ones (recent items are the most queried).
//! - **Idempotent with the dual-write.** An item's newest event wins: before each chunk the
//!   keys of every record after the chunk (the part already done, and whatever the dual-write
//!   has taken since — keys only, no embedding) are in a seen set, and a record whose item is
//!   in it is skipped. The set is scanned again just before the chunk's records are produced,
//!   so an update that lands while the chunk is being embedded is not overwritten by the older
//!   text: the window left is between that scan and the produce (milliseconds), while the
//!   dual-write's own record of the update comes after its embedding (tens of ms at least), so
//!   on the compacted topic the newest text is last. The consistency checker covers the rest.
//! - **Checkpointed.** After a chunk's records are acknowledged, one `BACKFILL` control record
//!   per partition stores `next_end`; a killed backfill resumes from it (the seen set is
//!   rebuilt by scanning keys), redoing at most one chunk.
//! - **Throttled.** At most `max_rate` items/s (0 = unthrottled), and the engine has its own
//!   threads: run the backfill beside a live stage with a rate that leaves the stage its CPU.

use std::collections::{BTreeMap, HashSet};
use std::time::Instant;

use embedstream_schemas::records::{
    BackfillProgress, ControlKind, MigrationPhase, MigrationRecord,
};
use embedstream_topics::ModelRef;
use embedstream_topics::time::now_ms;
use tokio_util::sync::CancellationToken;

use crate::control::ControlLog;
use crate::error::{Error, Result};
use crate::migrate::plan;

mod config;
mod replayer;
mod sample;
mod throttle;

pub use self::config::{BackfillConfig, BackfillReport};
pub(crate) use self::replayer::{Replayer, Step};
pub use self::sample::{ItemsSource, sample_items};
use self::throttle::Throttle;
pub(crate) use crate::range::partitions;

/// Runs (or resumes) the backfill of the migration in progress until it is complete or
/// `shutdown` (then the report is not `complete`; a chunk cut short is not checkpointed).
pub async fn run(
    config: BackfillConfig,
    control: ControlLog,
    shutdown: CancellationToken,
) -> Result<BackfillReport> {
    let started = Instant::now();
    let mut report = BackfillReport::default();
    match walk(config, control, &mut report, shutdown).await {
        Ok(()) | Err(Error::Interrupted) => {
            report.seconds = started.elapsed().as_secs_f64();
            Ok(report)
        }
        Err(e) => Err(e),
    }
}

async fn walk(
    config: BackfillConfig,
    control: ControlLog,
    report: &mut BackfillReport,
    shutdown: CancellationToken,
) -> Result<()> {
    let state = control.state();
    let migration = plan::current(&state)?.clone();
    let to: ModelRef = migration.to_model.parse()?;
    let spec = crate::control::catalog(&state).lookup(&to)?;
    let work = Replayer::open(&config, &spec, "backfill", &shutdown).await?;
    // Loaded now, so a model that cannot load fails the backfill before it writes anything.
    work.engine().await?;
    let partitions = work.partitions(&shutdown).await?;

    // Checkpoints: resume each partition, or start it at its current watermarks.
    let mut progress: BTreeMap<i32, BackfillProgress> = state
        .backfill(&migration.migration_id)
        .into_iter()
        .map(|b| (b.partition, b.clone()))
        .collect();
    for &p in &partitions {
        if progress.contains_key(&p) {
            continue;
        }
        let (low, high) = work.watermarks(p, &shutdown).await?;
        let b = BackfillProgress {
            migration_id: migration.migration_id.clone(),
            partition: p,
            start: low,
            end: high,
            next_end: high,
            embedded: 0,
            skipped: 0,
        };
        checkpoint(&control, &b, &config.by).await?;
        progress.insert(p, b);
    }
    if migration.phase == MigrationPhase::DualWrite {
        set_phase(&control, &migration, MigrationPhase::Backfill, &config.by).await?;
    }
    tracing::info!(
        migration = %migration.migration_id,
        model = %to,
        topic = %work.topic,
        partitions = ?progress.values().map(|b| (b.partition, b.start, b.next_end, b.end)).collect::<Vec<_>>(),
        "Backfilling newest first."
    );

    // Keys of everything after each partition's position: done, or the dual-write's.
    let mut seen: BTreeMap<i32, HashSet<Vec<u8>>> = BTreeMap::new();
    let mut scanned: BTreeMap<i32, i64> = BTreeMap::new();
    for (&p, b) in &progress {
        if b.done() {
            continue;
        }
        let set = seen.entry(p).or_default();
        let to_offset = work.scan_keys(p, b.next_end, set, &shutdown).await?;
        scanned.insert(p, to_offset);
    }

    let mut throttle = Throttle::new(config.max_rate);
    loop {
        let pending: Vec<i32> = progress
            .values()
            .filter(|b| !b.done())
            .map(|b| b.partition)
            .collect();
        if pending.is_empty() {
            report.complete = true;
            break;
        }
        for p in pending {
            if shutdown.is_cancelled() {
                return Ok(());
            }
            let b = progress
                .get_mut(&p)
                .expect("pending partitions have progress");
            let set = seen.entry(p).or_default();
            let from = scanned.get(&p).copied().unwrap_or(b.next_end);
            let upto = work.scan_keys(p, from, set, &shutdown).await?;
            scanned.insert(p, upto);

            let lo = (b.next_end - config.chunk).max(b.start);
            let records = work.read_range(p, lo, b.next_end, &shutdown).await?;
            let records_len = records.len();
            let chunk = work.prepare(records, set, report, &shutdown).await?;
            let embedded = work.embed(chunk).await?;
            // Anything that arrived while the chunk was embedded is newer than the chunk.
            let mut fresh = HashSet::new();
            let upto = work
                .scan_keys(p, scanned[&p], &mut fresh, &shutdown)
                .await?;
            scanned.insert(p, upto);
            let read = records_len;
            let count = work.produce(embedded, &fresh, report).await?;
            tracing::info!(
                partition = p,
                from = lo,
                to = b.next_end,
                read,
                embedded = count.embedded,
                skipped = count.skipped,
                "Chunk written."
            );
            set.extend(fresh);
            b.embedded += count.embedded;
            b.skipped += count.skipped;
            b.next_end = lo;
            checkpoint(&control, b, &config.by).await?;
            metrics::counter!(super::metrics::BACKFILL_ITEMS).increment(count.embedded as u64);
            metrics::gauge!(super::metrics::BACKFILL_PROGRESS_RATIO, "partition" => p.to_string())
                .set(b.fraction());
            throttle.wait(count.embedded, &shutdown).await;
        }
    }
    tracing::info!(?report, "Backfill complete.");
    Ok(())
}

async fn checkpoint(control: &ControlLog, b: &BackfillProgress, by: &str) -> Result<()> {
    control
        .publish(&embedstream_schemas::records::ControlRecord {
            backfill: Some(b.clone()),
            ..plan::record(ControlKind::Backfill, by, now_ms())
        })
        .await
}

async fn set_phase(
    control: &ControlLog,
    m: &MigrationRecord,
    phase: MigrationPhase,
    by: &str,
) -> Result<()> {
    control
        .publish(&embedstream_schemas::records::ControlRecord {
            migration: Some(MigrationRecord { phase, ..m.clone() }),
            ..plan::record(ControlKind::Migration, by, now_ms())
        })
        .await
}
