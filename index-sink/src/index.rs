//! The sharded index of one embedding topic: routing, parallel query and merge, background
//! compaction, snapshots and recovery. This is the API the Kafka consumer and the HTTP
//! server call.
//!
//! Caller contract: records of one partition are applied in offset order (one consumer
//! thread per partition is the natural way); different partitions may be applied
//! concurrently, and queries may run from any number of threads at any time.
//!
//! Guarantees: after [`ShardedIndex::open`], seeking the consumer to
//! [`ShardedIndex::resume_offsets`] (partitions not listed: from the beginning) and applying
//! from there yields the topic's compacted state — records the snapshots already cover come
//! back as [`Applied::AlreadyCovered`] or [`Applied::Stale`] and change nothing. Compaction
//! runs on its own thread pool (`compaction.threads`), never on the caller's or on rayon's
//! global pool, which queries use.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::Instant;

use metrics::Histogram;
use rayon::prelude::*;

use crate::compaction::{CompactionReason, Planner};
use crate::config::IndexConfig;
use crate::error::{Error, Result};
use crate::filtered::{FilterPlan, Strategy};
use crate::hash::shard_of;
use crate::metrics::{filtered_search, query_duration, snapshot_corrupt, snapshot_expired};
use embedstream_topics::time::now_ms;

use crate::shard::{Offsets, Shard, header};
use crate::snapshot;
use crate::stats::{CompactionRecord, ShardStats};
use crate::topk::merge;
use crate::types::{Applied, Hit, Query, Version, Write};
use crate::vector::normalized;
use crate::yielding::QueryInFlight;

/// The file in a snapshot directory that names the slice its snapshots hold.
const SLICE_MARKER: &str = "SLICE";

/// Marks `dir` as `slice`'s, or checks that it is. A directory without a marker holds the
/// whole space (it predates slices) or nothing yet.
fn claim_slice(dir: &Path, slice: embedstream_topics::slice::Slice) -> Result<()> {
    let path = dir.join(SLICE_MARKER);
    let held = match std::fs::read_to_string(&path) {
        Ok(text) => text.trim().to_owned(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let has_snapshots = std::fs::read_dir(dir)
                .map_err(|e| Error::io("list snapshot directory", dir, e))?
                .filter_map(std::result::Result::ok)
                .any(|e| e.file_name().to_string_lossy().ends_with(".snap"));
            if has_snapshots && !slice.is_whole() {
                embedstream_topics::slice::Slice::WHOLE.to_string()
            } else {
                std::fs::write(&path, format!("{slice}\n"))
                    .map_err(|e| Error::io("write slice marker", &path, e))?;
                return Ok(());
            }
        }
        Err(e) => return Err(Error::io("read slice marker", &path, e)),
    };
    if held != slice.to_string() {
        return Err(Error::OtherSliceDirectory {
            dir: dir.to_owned(),
            held,
            wanted: slice.to_string(),
        });
    }
    Ok(())
}

/// See the module docs.
pub struct ShardedIndex {
    config: IndexConfig,
    shards: Vec<Shard>,
    offsets: Offsets,
    dir: Option<PathBuf>,
    pool: rayon::ThreadPool,
    planner: Planner,
    query_duration: Histogram,
    hot_query_duration: Histogram,
    /// The consumers' golden query vectors for the recall self-check, normalized.
    golden: std::sync::RwLock<Arc<Vec<Vec<f32>>>>,
}

impl std::fmt::Debug for ShardedIndex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ShardedIndex")
            .field("name", &self.config.name)
            .field("shards", &self.shards.len())
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

impl ShardedIndex {
    /// An empty index that writes no snapshots (so it has no cold tier: asking for one is
    /// an error).
    pub fn new(config: IndexConfig) -> Result<Self> {
        config.validate()?;
        if config.cold.enabled {
            return Err(Error::InvalidConfig {
                field: "cold.enabled",
                reason: "the cold tier needs a snapshot directory (open one)",
            });
        }
        let shards = (0..config.shards)
            .map(|i| Shard::new(i, &config, None))
            .collect();
        Self::assemble(config, shards, None)
    }

    /// Opens the index persisted in `dir` (created if missing): each shard from its newest
    /// valid snapshot, falling back past corrupt ones to older ones or to empty. A valid
    /// snapshot of another layout (shard count, dimension, routing, format) is an error.
    pub fn open(dir: impl AsRef<Path>, config: IndexConfig) -> Result<Self> {
        Self::open_newer_than(dir, config, None)
    }

    /// [`Self::open`], except that a shard whose newest valid snapshot was written before
    /// `not_before_ms` (ms since the epoch) starts empty, so that its partitions are replayed
    /// from the beginning: on a compacted topic, a reader that stopped longer ago than the
    /// topic's `delete.retention.ms` may have missed tombstones that the cleaner has since
    /// removed, and resuming from its offsets would bring deleted items back.
    pub fn open_newer_than(
        dir: impl AsRef<Path>,
        config: IndexConfig,
        not_before_ms: Option<i64>,
    ) -> Result<Self> {
        config.validate()?;
        let dir = dir.as_ref();
        std::fs::create_dir_all(dir).map_err(|e| Error::io("create snapshot directory", dir, e))?;
        claim_slice(dir, config.slice)?;
        let mut shards = Vec::with_capacity(config.shards);
        for i in 0..config.shards {
            let loaded = snapshot::load_newest(dir, header(i, &config), |path, error| {
                tracing::warn!(shard = i, path = %path.display(), error = %error, "Snapshot is corrupt; trying an older one.");
                snapshot_corrupt(&config.name, i).increment(1);
            })?;
            let loaded = loaded.filter(|l| {
                let stale = not_before_ms.is_some_and(|t| l.created_ms < t);
                if stale {
                    tracing::warn!(shard = i, path = %l.path.display(), created_ms = l.created_ms, "Snapshot is older than the topic keeps tombstones; the shard is rebuilt by a replay from the beginning.");
                    snapshot_expired(&config.name, i).increment(1);
                }
                // Its items have no attributes: filters would miss them until each is
                // written again. The topic has them; a replay brings them back.
                let without_attributes = l.format < snapshot::ATTRIBUTES_FORMAT;
                if without_attributes && !stale {
                    tracing::warn!(shard = i, path = %l.path.display(), format = l.format, "Snapshot predates item attributes; the shard is rebuilt by a replay from the beginning.");
                    snapshot_expired(&config.name, i).increment(1);
                }
                !stale && !without_attributes
            });
            match &loaded {
                Some(l) => {
                    tracing::info!(shard = i, path = %l.path.display(), seq = l.seq, "Loaded shard snapshot.")
                }
                None => tracing::info!(shard = i, "No valid snapshot; the shard starts empty."),
            }
            let shard = Shard::new(i, &config, loaded);
            shard.set_seq_floor(snapshot::max_seq(dir, i as u32)?);
            shards.push(shard);
        }
        let index = Self::assemble(config, shards, Some(dir.to_owned()))?;
        *index.offsets.lock().unwrap_or_else(PoisonError::into_inner) = index.resume_offsets();
        Ok(index)
    }

    fn assemble(config: IndexConfig, shards: Vec<Shard>, dir: Option<PathBuf>) -> Result<Self> {
        let name = config.name.clone();
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(config.compaction.threads)
            .thread_name(move |i| format!("compact-{name}-{i}"))
            // Queries preempt compaction: the budget in threads bounds how many cores a
            // build may take, the policy that it takes them only when queries leave them
            // idle. SCHED_IDLE (Linux) is preempted as soon as a query thread wakes; nice 19
            // alone still let a running build finish its slice first (p99 x3 during a
            // rebuild, loadtest/reports/index.md). The build also steps aside by itself
            // while queries are in flight (`yielding`).
            .start_handler(|_| lower_compaction_priority())
            .build()
            .map_err(|source| Error::ThreadPool { source })?;
        Ok(Self {
            planner: Planner::from_config(&config.compaction, &config.cold),
            query_duration: query_duration(&config.name, "all"),
            hot_query_duration: query_duration(&config.name, "hot"),
            golden: std::sync::RwLock::default(),
            dir: dir.filter(|_| config.snapshot.enabled),
            config,
            shards,
            offsets: Mutex::new(BTreeMap::new()),
            pool,
        })
    }

    /// The configuration.
    pub fn config(&self) -> &IndexConfig {
        &self.config
    }

    /// The shard an item belongs to.
    pub fn shard_of(&self, item_id: &str) -> usize {
        shard_of(item_id, self.shards.len())
    }

    /// Applies one record; visible to queries when this returns. Errors: poison for a bad
    /// vector or empty id, retryable [`Error::HotFull`]. Nothing is changed on error.
    pub fn apply(&self, write: impl Into<Write>) -> Result<Applied> {
        let write = write.into();
        if !self.config.slice.contains(write.item_id()) {
            // No shard holds it: the record is done, as far as this slice is concerned.
            crate::shard::advance(&self.offsets, write.version());
            return Ok(Applied::OtherSlice);
        }
        let shard = &self.shards[self.shard_of(write.item_id())];
        shard.apply(write, &self.offsets, self.config.hot.max_vectors)
    }

    /// The global top `k`: every shard's hot and main searched in parallel (rayon's global
    /// pool, or the pool the caller runs in), merged by score, ties by item id.
    pub fn search(&self, query: Query<'_>) -> Result<Vec<Hit>> {
        let started = Instant::now();
        // Running compactions pause while this is alive (see `yielding`).
        let _in_flight = QueryInFlight::enter();
        if query.k == 0 || query.k > self.config.max_k {
            return Err(Error::KOutOfRange {
                k: query.k,
                max: self.config.max_k,
            });
        }
        let q = normalized(query.vector, self.config.dim)?;
        let ef = query.ef_search.unwrap_or(self.config.main.ef_search);
        let plan = FilterPlan {
            exact_max: self.config.main.filter_exact_max,
        };
        let filter = query.filter.map(|f| (f, plan));
        let lists: Vec<Vec<Hit>> = self
            .shards
            .par_iter()
            .map(|s| {
                let (hits, strategy) = s.search(&q, query.k, ef, filter, query.hot_only);
                if filter.is_some() {
                    let label = strategy.map_or("none", Strategy::label);
                    filtered_search(&self.config.name, label).increment(1);
                }
                hits
            })
            .collect();
        let hits = merge(lists, query.k);
        let duration = if query.hot_only {
            &self.hot_query_duration
        } else {
            &self.query_duration
        };
        duration.record(started.elapsed().as_secs_f64());
        Ok(hits)
    }

    /// Where the consumer must resume: per partition, the smallest next offset any shard's
    /// state covers. A partition not in the map must be read from the beginning (some shard
    /// has no snapshot covering it).
    pub fn resume_offsets(&self) -> BTreeMap<i32, i64> {
        let mut shards = self.shards.iter().map(Shard::covered);
        let Some(mut min) = shards.next() else {
            return BTreeMap::new();
        };
        for covered in shards {
            min.retain(|p, next| match covered.get(p) {
                Some(&c) => {
                    *next = (*next).min(c);
                    true
                }
                None => false,
            });
        }
        min
    }

    /// Per partition, the next offset after the highest record applied so far (or the
    /// resume offset right after `open`).
    pub fn applied_offsets(&self) -> BTreeMap<i32, i64> {
        self.offsets
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The version of `item_id` that queries see, or `None` if it is absent or deleted.
    pub fn lookup(&self, item_id: &str) -> Option<Version> {
        self.shards[self.shard_of(item_id)].lookup(item_id)
    }

    /// How many items queries can return.
    pub fn len(&self) -> usize {
        self.shards.iter().map(Shard::visible).sum()
    }

    /// Whether no item is visible.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Per-shard statistics.
    pub fn stats(&self) -> Vec<ShardStats> {
        self.shards.iter().map(Shard::stats).collect()
    }

    /// Which shards the policies want rebuilt now.
    pub fn plan(&self) -> Vec<(usize, CompactionReason)> {
        self.planner.plan(&self.stats(), now_ms())
    }

    /// Rebuilds one shard's main now on the compaction pool (blocking the caller until the
    /// swap and its snapshot are done). `None` if that shard is already being compacted.
    pub fn compact(
        &self,
        shard: usize,
        reason: CompactionReason,
    ) -> Result<Option<CompactionRecord>> {
        self.shards[shard].compact(
            reason,
            &self.config,
            &self.pool,
            &self.offsets,
            self.dir.as_deref(),
        )
    }

    /// Plans and runs what is due, one shard after another; returns how many ran.
    pub fn compact_due(&self) -> Result<usize> {
        let mut ran = 0;
        for (shard, reason) in self.plan() {
            if self.compact(shard, reason)?.is_some() {
                ran += 1;
            }
        }
        Ok(ran)
    }

    /// Runs the recall self-check of every shard that is due (see
    /// [`crate::CompactionConfig::recall_every`]) and not being compacted; returns how many
    /// ran. A drop below the baseline is left to the planner's `recall` policy.
    pub fn check_recall_due(&self) -> usize {
        let Some(every) = self.config.compaction.recall_every else {
            return 0;
        };
        let mut ran = 0;
        for shard in &self.shards {
            if shard.stats().compacting || !shard.recall_due(every) {
                continue;
            }
            let golden = Arc::clone(&self.golden.read().unwrap_or_else(PoisonError::into_inner));
            if let Some(recall) = shard.check_recall(
                self.config.compaction.recall_queries,
                self.config.main.ef_search,
                &golden,
                &self.pool,
            ) {
                ran += 1;
                let stats = shard.stats();
                if let Some(base) = stats.recall_baseline
                    && recall < base - self.config.compaction.max_recall_drop
                {
                    tracing::warn!(index = %self.config.name, shard = stats.shard, recall, baseline = base, "Recall fell below the post-build baseline; the shard will be rebuilt.");
                }
            }
        }
        ran
    }

    /// Sets the query vectors the recall self-check also measures (the consumers' golden
    /// queries embedded with this index's model), and makes the check due at once. Vectors
    /// that cannot be normalized (wrong dimension, zero, not finite) are an error and change
    /// nothing.
    pub fn set_golden_queries(&self, vectors: &[Vec<f32>]) -> Result<()> {
        let normalized = vectors
            .iter()
            .map(|v| normalized(v, self.config.dim))
            .collect::<Result<Vec<_>>>()?;
        *self.golden.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(normalized);
        for shard in &self.shards {
            shard.recall_stale();
        }
        Ok(())
    }

    /// Snapshots every shard as it is, without rebuilding (for a clean shutdown: restart
    /// then replays nothing that was applied). No-op without a snapshot directory.
    pub fn persist(&self) -> Result<()> {
        let Some(dir) = &self.dir else { return Ok(()) };
        for shard in &self.shards {
            shard.persist(&self.config, &self.offsets, dir)?;
        }
        Ok(())
    }

    /// Starts a thread that runs [`Self::compact_due`] and [`Self::check_recall_due`] every
    /// `compaction.check_every` until
    /// the returned handle is stopped or dropped. Errors are logged and retried next round.
    pub fn spawn_maintenance(self: &Arc<Self>) -> Maintenance {
        let (stop, stopped) = mpsc::channel::<()>();
        let index = Arc::clone(self);
        let every = self.config.compaction.check_every;
        let handle = std::thread::Builder::new()
            .name(format!("maintain-{}", self.config.name))
            .spawn(move || {
                loop {
                    match stopped.recv_timeout(every) {
                        Err(RecvTimeoutError::Timeout) => {
                            if let Err(error) = index.compact_due() {
                                tracing::error!(error = %error, "Compaction failed; retrying next round.");
                            }
                            index.check_recall_due();
                        }
                        Ok(()) | Err(RecvTimeoutError::Disconnected) => return,
                    }
                }
            })
            .expect("spawning a thread");
        Maintenance {
            stop: Some(stop),
            handle: Some(handle),
        }
    }
}

/// Puts the calling (compaction) thread on the lowest scheduling class the OS has: SCHED_IDLE
/// on Linux, else the lowest priority of its normal policy.
fn lower_compaction_priority() {
    use thread_priority::{NormalThreadSchedulePolicy, ThreadPriority, ThreadSchedulePolicy};
    #[cfg(target_os = "linux")]
    let idle = thread_priority::set_thread_priority_and_policy(
        thread_priority::thread_native_id(),
        ThreadPriority::Min,
        ThreadSchedulePolicy::Normal(NormalThreadSchedulePolicy::Idle),
    );
    #[cfg(not(target_os = "linux"))]
    let idle: Result<(), thread_priority::Error> =
        Err(thread_priority::Error::Priority("not Linux"));
    if idle.is_err()
        && let Err(error) = thread_priority::set_current_thread_priority(ThreadPriority::Min)
    {
        tracing::warn!(?error, "Could not lower the compaction thread's priority.");
    }
}

/// The maintenance thread; stopping waits for a running compaction to finish.
#[derive(Debug)]
pub struct Maintenance {
    stop: Option<mpsc::Sender<()>>,
    handle: Option<JoinHandle<()>>,
}

impl Maintenance {
    /// Stops the thread and waits for it.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(handle) = self.handle.take() {
            let _ = handle.join();
        }
    }
}

impl Drop for Maintenance {
    fn drop(&mut self) {
        self.shutdown();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// This thread's scheduling policy, from /proc (field 41 of its stat line).
    fn policy() -> u32 {
        let stat = std::fs::read_to_string("/proc/thread-self/stat").unwrap();
        let after_name = &stat[stat.rfind(')').unwrap() + 2..];
        after_name.split(' ').nth(38).unwrap().parse().unwrap()
    }

    #[test]
    #[cfg(target_os = "linux")]
    fn compaction_threads_run_in_the_idle_class() {
        const SCHED_OTHER: u32 = 0;
        const SCHED_IDLE: u32 = 5;
        let index = ShardedIndex::new(IndexConfig::with_dim(4)).unwrap();
        assert_eq!(policy(), SCHED_OTHER);
        assert_eq!(index.pool.install(policy), SCHED_IDLE);
    }

    #[test]
    fn a_slice_keeps_its_items_only_and_its_directory_only() {
        use crate::types::Upsert;
        use embedstream_topics::slice::Slice;
        let dir = std::env::temp_dir().join(format!("es-slice-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let mut config = IndexConfig::with_dim(2);
        config.slice = Slice::new(1, 2).unwrap();
        let index = ShardedIndex::open(&dir, config.clone()).unwrap();
        let mut kept = 0;
        for i in 0..200_i64 {
            let id = format!("item-{i}");
            let applied = index
                .apply(Upsert {
                    item_id: id.clone(),
                    vector: vec![1.0, i as f32],
                    partition: 0,
                    offset: i,
                    event_time_ms: 0,
                    source: None,
                    attributes: crate::Attributes::default(),
                })
                .unwrap();
            if config.slice.contains(&id) {
                assert_eq!(applied, Applied::Upserted);
                kept += 1;
            } else {
                assert_eq!(applied, Applied::OtherSlice);
                assert!(index.lookup(&id).is_none());
            }
        }
        assert_eq!(index.len(), kept);
        assert!((60..140).contains(&kept), "{kept}");
        // Skipped records still count as applied: a restart does not read them again.
        assert_eq!(index.applied_offsets().get(&0), Some(&200));
        drop(index);
        config.slice = Slice::new(0, 2).unwrap();
        let refused = ShardedIndex::open(&dir, config).unwrap_err();
        assert!(
            matches!(refused, Error::OtherSliceDirectory { .. }),
            "{refused}"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn the_recall_self_check_sets_a_baseline_and_a_drop_plans_a_rebuild() {
        use crate::types::Upsert;
        let mut config = IndexConfig::with_dim(96);
        config.shards = 1;
        config.compaction.threads = 1;
        config.main.ef_search = 400;
        // An unrefined graph, whose narrow searches miss more.
        config.main.refine = None;
        config.main.ef_construction = 16;
        let index = ShardedIndex::new(config).unwrap();
        let mut seed = 7_u64;
        let mut random = move || {
            (0..96)
                .map(|_| {
                    seed = seed
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407);
                    ((seed >> 33) as f32 / (1u64 << 31) as f32) - 0.5
                })
                .collect::<Vec<f32>>()
        };
        let upsert = |i: i64, vector: Vec<f32>| Upsert {
            item_id: format!("item-{i}"),
            vector,
            partition: 0,
            offset: i,
            event_time_ms: 0,
            source: None,
            attributes: crate::Attributes::default(),
        };
        for i in 0..4000 {
            index.apply(upsert(i, random())).unwrap();
        }
        index.compact(0, CompactionReason::Manual).unwrap().unwrap();
        assert_eq!(index.check_recall_due(), 1);
        let stats = &index.stats()[0];
        let base = stats.recall_baseline.unwrap();
        assert_eq!(stats.recall_at_10, Some(base));
        assert!(base > 0.9, "{base}");
        // Not due again until `recall_every` has passed.
        assert_eq!(index.check_recall_due(), 0);
        assert_eq!(stats.golden_recall_at_10, None);
        // Golden queries (here: random ones) make it due at once, with a baseline of their own.
        let golden: Vec<Vec<f32>> = (0..50).map(|_| random()).collect();
        assert!(index.set_golden_queries(&[vec![1.0; 95]]).is_err());
        index.set_golden_queries(&golden).unwrap();
        assert_eq!(index.check_recall_due(), 1);
        let stats = &index.stats()[0];
        let golden_base = stats.golden_recall_baseline.unwrap();
        assert_eq!(stats.golden_recall_at_10, Some(golden_base));
        assert!(golden_base > 0.9, "{golden_base}");
        // The same main searched narrowly: recall falls on both query sets, and with a write
        // to merge the planner rebuilds for it.
        let golden_now = index.golden.read().unwrap().clone();
        let narrow = index.shards[0]
            .check_recall(100, 10, &golden_now, &index.pool)
            .unwrap();
        assert!(narrow < base - 0.02, "{narrow} vs {base}");
        let golden_narrow = index.stats()[0].golden_recall_at_10.unwrap();
        assert!(
            golden_narrow < golden_base - 0.02,
            "{golden_narrow} vs {golden_base}"
        );
        assert!(index.plan().is_empty(), "nothing to merge yet");
        index.apply(upsert(4000, random())).unwrap();
        assert_eq!(index.plan(), vec![(0, CompactionReason::Recall)]);
        // A new main gets a baseline of its own.
        index.compact(0, CompactionReason::Recall).unwrap().unwrap();
        assert_eq!(index.stats()[0].recall_baseline, None);
        assert_eq!(index.check_recall_due(), 1);
        assert!(index.stats()[0].recall_baseline.unwrap() > 0.9);
    }
}
