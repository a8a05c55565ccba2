//! One shard: hot part, pending deletes and main part behind one lock, plus compaction and
//! snapshots of that state.
//!
//! Guarantees:
//! - **Visibility**: a write is searchable when `apply` returns; a query reads hot, deletes
//!   and main under one read lock, so it never sees a half-applied write or half a swap.
//! - **Shadowing**: an item in hot or in the pending deletes hides its copy in main.
//! - **Ordering**: a write whose version is not newer than the item's current one, or whose
//!   offset the shard's last swap already covers, is ignored; so replays and at-least-once
//!   re-deliveries are harmless.
//! - **Compaction keeps newer writes**: the build works on a copy taken at its start; at the
//!   swap, only hot rows and delete markers still at the copied version are dropped —
//!   anything written during the build stays and keeps shadowing the new main.
//! - **Deletes outlive compaction**: a delete that carries its source event is remembered for
//!   [`DELETE_RETENTION`] after compaction merges it (the graveyard), so an older event's
//!   vector that arrives after the merge (a zombie writer, a backfill) cannot bring the item
//!   back; past that, such a late record would (as Kafka forgets tombstones after
//!   `delete.retention.ms`). Memory: one entry per item deleted in the retention window.
//! - **Coverage**: `covered[p]` is the partition's global next offset, read under this shard's
//!   write lock. The caller applies each partition's records in order, and the global offset
//!   moves under the lock of the shard a record goes to, so every record of `p` below
//!   `covered[p]` that routes here is in this state. Snapshots store it; the consumer resumes
//!   from the minimum over shards.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{Duration, Instant};

use embedstream_schemas::filter::Filter;
use embedstream_topics::time::now_ms;

use crate::cold::{self, Segment};
use crate::compaction::CompactionReason;
use crate::config::IndexConfig;
use crate::error::{Error, Result};
use crate::filtered::{FilterPlan, Strategy};
use crate::hot::{Hot, Row};
use crate::main_index::MainIndex;
use crate::metrics::{ShardMetrics, ratio};
use crate::snapshot::{self, Content, Header, Loaded};
pub(crate) use crate::stats::{CompactionRecord, ShardStats};
use crate::topk::merge;
use crate::types::{Applied, Hit, ItemId, Version, Write};
use crate::vector::normalized;
use rayon::prelude::*;

/// How long a merged delete with a source is remembered.
pub(crate) const DELETE_RETENTION: Duration = Duration::from_secs(24 * 3600);

/// Deleted items merged by compaction: their delete's version and when it was merged (ms).
pub(crate) type Graveyard = HashMap<ItemId, (Version, i64)>;

#[derive(Debug)]
struct State {
    hot: Hot,
    deletes: HashMap<ItemId, Version>,
    graveyard: Graveyard,
    main: Arc<MainIndex>,
    /// Items of main that are in hot or in `deletes`.
    tombstones: usize,
    /// The cold tier's segments.
    cold: Vec<Segment>,
    /// Live items of the segments that are in hot or in `deletes`.
    cold_shadowed: usize,
    covered: BTreeMap<i32, i64>,
    since_ms: i64,
    last: Option<CompactionRecord>,
    /// Last snapshot sequence number used.
    seq: u64,
}

impl State {
    fn shadows(&self, id: &str) -> bool {
        self.hot.contains(id) || self.deletes.contains_key(id)
    }

    fn count_tombstones(&self) -> usize {
        let hot = self.hot.rows().iter().filter(|r| self.main.contains(&r.id));
        let deleted = self.deletes.keys().filter(|id| self.main.contains(id));
        hot.count() + deleted.count()
    }

    /// The segment holding `id` live, if any (at most one does).
    fn cold_holder(&self, id: &str) -> Option<&Segment> {
        self.cold.iter().find(|s| s.holds(id))
    }

    fn count_cold_shadowed(&self) -> usize {
        let shadowed = self.hot.rows().iter().map(|r| r.id.as_str());
        let shadowed = shadowed.chain(self.deletes.keys().map(String::as_str));
        shadowed.filter(|id| self.cold_holder(id).is_some()).count()
    }

    fn cold_live(&self) -> usize {
        self.cold.iter().map(Segment::live).sum()
    }

    fn recount(&mut self) {
        self.tombstones = self.count_tombstones();
        self.cold_shadowed = self.count_cold_shadowed();
    }
}

/// The recall self-check of the current main.
#[derive(Debug, Default)]
struct RecallCheck {
    /// The main the numbers belong to (its allocation's address; a swap changes it).
    main: usize,
    baseline: Option<f64>,
    last: Option<f64>,
    /// The same on the consumers' golden queries, when the index has them.
    golden_baseline: Option<f64>,
    golden_last: Option<f64>,
    checked: Option<Instant>,
}

/// Results a recall self-check compares.
const RECALL_K: usize = 10;

#[derive(Debug)]
pub(crate) struct Shard {
    id: usize,
    dim: usize,
    /// The cold tier's hot window in ms; `None` with the cold tier off.
    hot_window_ms: Option<i64>,
    recall: Mutex<RecallCheck>,
    state: RwLock<State>,
    /// Held for a whole compaction or snapshot: one at a time per shard, in order.
    busy: Mutex<()>,
    metrics: ShardMetrics,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The global next offset per partition.
pub(crate) type Offsets = Mutex<BTreeMap<i32, i64>>;

/// Moves the global next offset of `version`'s partition past it (never back).
pub(crate) fn advance(offsets: &Offsets, version: Version) {
    let mut offsets = lock(offsets);
    let next = offsets.entry(version.partition).or_insert(0);
    *next = (*next).max(version.offset.saturating_add(1));
}

impl Shard {
    pub(crate) fn new(id: usize, config: &IndexConfig, loaded: Option<Loaded>) -> Self {
        let metrics = ShardMetrics::new(&config.name, id);
        let state = match loaded {
            None => State {
                hot: Hot::new(config.dim),
                deletes: HashMap::new(),
                graveyard: HashMap::new(),
                main: Arc::new(MainIndex::empty(config.dim)),
                tombstones: 0,
                cold: Vec::new(),
                cold_shadowed: 0,
                covered: BTreeMap::new(),
                since_ms: now_ms(),
                last: None,
                seq: 0,
            },
            Some(l) => {
                let mut s = State {
                    hot: l.hot,
                    deletes: l.deletes,
                    graveyard: l.graveyard,
                    main: Arc::new(l.main),
                    tombstones: 0,
                    cold: l.cold,
                    cold_shadowed: 0,
                    covered: l.covered,
                    since_ms: l.last.as_ref().map_or(l.created_ms, |r| r.finished_at_ms),
                    last: l.last,
                    seq: l.seq,
                };
                s.recount();
                s
            }
        };
        metrics.sizes(state.hot.len(), state.main.len(), state.tombstones);
        metrics.cold_sizes(&state.cold);
        Self {
            id,
            dim: config.dim,
            hot_window_ms: config
                .cold
                .enabled
                .then_some(config.cold.hot_window.as_millis() as i64),
            recall: Mutex::new(RecallCheck::default()),
            state: RwLock::new(state),
            busy: Mutex::new(()),
            metrics,
        }
    }

    fn read(&self) -> RwLockReadGuard<'_, State> {
        self.state.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn write(&self) -> RwLockWriteGuard<'_, State> {
        self.state.write().unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) fn set_seq_floor(&self, seq: u64) {
        let mut st = self.write();
        st.seq = st.seq.max(seq);
    }

    pub(crate) fn covered(&self) -> BTreeMap<i32, i64> {
        self.read().covered.clone()
    }

    pub(crate) fn apply(&self, write: Write, offsets: &Offsets, max_hot: usize) -> Result<Applied> {
        if write.item_id().is_empty() {
            return Err(Error::EmptyItemId);
        }
        let version = write.version();
        // Validate before taking the lock: a poison record costs no contention.
        let vector = match &write {
            Write::Upsert(u) => Some(normalized(&u.vector, self.dim)?),
            Write::Delete(_) => None,
        };
        let mut st = self.write();
        let outcome = self.apply_locked(&mut st, write, vector, max_hot)?;
        advance(offsets, version);
        match outcome {
            Applied::Upserted => self.metrics.upserted.increment(1),
            Applied::Deleted => self.metrics.deleted.increment(1),
            Applied::AlreadyCovered => self.metrics.covered.increment(1),
            Applied::Stale => self.metrics.stale.increment(1),
            Applied::OtherSlice => {}
        }
        self.metrics
            .sizes(st.hot.len(), st.main.len(), st.tombstones);
        Ok(outcome)
    }

    fn apply_locked(
        &self,
        st: &mut State,
        write: Write,
        vector: Option<Vec<f32>>,
        max_hot: usize,
    ) -> Result<Applied> {
        let version = write.version();
        if st
            .covered
            .get(&version.partition)
            .is_some_and(|&next| version.offset < next)
        {
            return Ok(Applied::AlreadyCovered);
        }
        let id = write.item_id();
        let held = st
            .hot
            .get(id)
            .map(|r| r.version)
            .or_else(|| st.deletes.get(id).copied())
            .or_else(|| st.main.get(id).map(|r| r.version))
            .or_else(|| {
                st.cold_holder(id)
                    .and_then(|s| s.main.get(id))
                    .map(|r| r.version)
            })
            .or_else(|| st.graveyard.get(id).map(|&(v, _)| v));
        if held.is_some_and(|held| !version.supersedes(held)) {
            return Ok(Applied::Stale);
        }
        let newly_shadowed = !st.shadows(id) && st.main.contains(id);
        let newly_cold_shadowed = !st.shadows(id) && st.cold_holder(id).is_some();
        let outcome = match write {
            Write::Upsert(u) => {
                if !st.hot.contains(&u.item_id) && st.hot.len() >= max_hot {
                    return Err(Error::HotFull {
                        shard: self.id,
                        len: st.hot.len(),
                    });
                }
                st.deletes.remove(&u.item_id);
                st.graveyard.remove(&u.item_id);
                let vector = vector.expect("validated above");
                st.hot.upsert(
                    Row {
                        id: u.item_id,
                        version,
                        event_time_ms: u.event_time_ms,
                        attributes: u.attributes,
                    },
                    &vector,
                );
                Applied::Upserted
            }
            Write::Delete(d) => {
                st.hot.remove(&d.item_id);
                st.graveyard.remove(&d.item_id);
                st.deletes.insert(d.item_id, version);
                Applied::Deleted
            }
        };
        if newly_shadowed {
            st.tombstones += 1;
        }
        if newly_cold_shadowed {
            st.cold_shadowed += 1;
        }
        Ok(outcome)
    }

    /// Hot, main and (unless `hot_only`) each cold segment searched in parallel under one
    /// read lock, among the items `filter` matches; `query` normalized. Also says how main
    /// answered a filtered search.
    pub(crate) fn search(
        &self,
        query: &[f32],
        k: usize,
        ef: usize,
        filter: Option<(&Filter, FilterPlan)>,
        hot_only: bool,
    ) -> (Vec<Hit>, Option<Strategy>) {
        let st = self.read();
        let ((main, strategy), (hot, cold)) = rayon::join(
            || search_part(&st.main, query, k, ef, filter, |id| st.shadows(id)),
            || {
                rayon::join(
                    || st.hot.search(query, k, filter.map(|(f, _)| f)),
                    || {
                        if hot_only {
                            return Vec::new();
                        }
                        st.cold
                            .par_iter()
                            .map(|seg| {
                                let hidden = |id: &str| st.shadows(id) || seg.dead.contains(id);
                                search_part(&seg.main, query, k, ef, filter, hidden).0
                            })
                            .collect::<Vec<_>>()
                    },
                )
            },
        );
        let mut lists = vec![hot, main];
        lists.extend(cold);
        (merge(lists, k), strategy)
    }

    /// The version of the item queries see, if any.
    pub(crate) fn lookup(&self, id: &str) -> Option<Version> {
        let st = self.read();
        if let Some(row) = st.hot.get(id) {
            return Some(row.version);
        }
        if st.deletes.contains_key(id) {
            return None;
        }
        st.main
            .get(id)
            .or_else(|| st.cold_holder(id).and_then(|s| s.main.get(id)))
            .map(|r| r.version)
    }

    /// Items queries can return.
    pub(crate) fn visible(&self) -> usize {
        let st = self.read();
        st.hot.len() + st.main.len() - st.tombstones + st.cold_live() - st.cold_shadowed
    }

    pub(crate) fn stats(&self) -> ShardStats {
        let compacting = self.busy.try_lock().is_err();
        let st = self.read();
        let (recall_at_10, recall_baseline, golden_recall_at_10, golden_recall_baseline) = {
            let r = lock(&self.recall);
            if r.main == Arc::as_ptr(&st.main) as usize {
                (r.last, r.baseline, r.golden_last, r.golden_baseline)
            } else {
                (None, None, None, None)
            }
        };
        ShardStats {
            recall_at_10,
            recall_baseline,
            golden_recall_at_10,
            golden_recall_baseline,
            shard: self.id,
            hot_vectors: st.hot.len(),
            main_vectors: st.main.len(),
            main_tombstones: st.tombstones,
            tombstone_ratio: ratio(st.tombstones, st.main.len()),
            pending_deletes: st.deletes.len(),
            covered_offsets: st.covered.clone(),
            since_ms: st.since_ms,
            compacting,
            last_compaction: st.last.clone(),
            aged_vectors: self
                .hot_window_ms
                .map_or(0, |w| st.main.older_than(now_ms() - w)),
            cold_vectors: st.cold_live() - st.cold_shadowed,
            cold_hidden: st.cold.iter().map(|s| s.dead.len()).sum::<usize>() + st.cold_shadowed,
            cold_segments: st.cold.len(),
            cold_bytes: st.cold.iter().map(|s| s.bytes).sum(),
        }
    }

    /// Makes the recall self-check due now (new golden queries).
    pub(crate) fn recall_stale(&self) {
        lock(&self.recall).checked = None;
    }

    /// Whether the recall self-check is due: never run on the current main, or `every` ago.
    pub(crate) fn recall_due(&self, every: Duration) -> bool {
        let main = Arc::as_ptr(&self.read().main) as usize;
        let r = lock(&self.recall);
        r.main != main || r.checked.is_none_or(|at| at.elapsed() >= every)
    }

    /// Measures recall@10 of this shard's search of its hot tier (hot and main) at `ef`
    /// against an exact scan of what that tier holds now, querying the vectors of `queries`
    /// of its items (those with the smallest salted item hash, so the same items while they
    /// live), and apart the `golden` query vectors (normalized), on `pool`. The first
    /// measurement of a main is its baseline (the golden one's too, whenever the first
    /// golden queries arrive). `None` when the shard holds too few items.
    pub(crate) fn check_recall(
        &self,
        queries: usize,
        ef: usize,
        golden: &[Vec<f32>],
        pool: &rayon::ThreadPool,
    ) -> Option<f64> {
        let (main, hot, deletes) = {
            let st = self.read();
            (st.main.clone(), st.hot.clone(), st.deletes.clone())
        };
        let (measured, golden) = pool.install(|| {
            use rayon::prelude::*;
            let graph = main.graph();
            let mut visible: Vec<(&str, &[f32])> = main
                .rows()
                .iter()
                .enumerate()
                .filter(|(_, row)| !hot.contains(&row.id) && !deletes.contains_key(&row.id))
                .map(|(pid, row)| (row.id.as_str(), graph.vector(pid as u32)))
                .collect();
            visible.extend(
                hot.rows()
                    .iter()
                    .enumerate()
                    .map(|(i, row)| (row.id.as_str(), hot.vector(i))),
            );
            if visible.len() < 2 * RECALL_K || queries == 0 {
                return None;
            }
            let salted = |id: &str| {
                embedstream_topics::hash::fnv1a64(format!("recall-check/{id}").as_bytes())
            };
            let mut sample: Vec<(u64, usize)> = visible
                .iter()
                .enumerate()
                .map(|(i, (id, _))| (salted(id), i))
                .collect();
            sample.sort_unstable();
            sample.truncate(queries);
            let recall = |queries: Vec<&[f32]>| {
                let found: usize = queries
                    .par_iter()
                    .map(|&query| {
                        let exact = exact_top(&visible, query, RECALL_K);
                        let (approx, _) = self.search(query, RECALL_K, ef, None, true);
                        approx
                            .iter()
                            .filter(|h| exact.contains(&h.item_id.as_str()))
                            .count()
                    })
                    .sum();
                (!queries.is_empty()).then(|| found as f64 / (queries.len() * RECALL_K) as f64)
            };
            let own = recall(sample.iter().map(|&(_, q)| visible[q].1).collect())?;
            Some((own, recall(golden.iter().map(Vec::as_slice).collect())))
        })?;
        let mut r = lock(&self.recall);
        let main = Arc::as_ptr(&main) as usize;
        if r.main != main {
            *r = RecallCheck {
                main,
                baseline: Some(measured),
                ..RecallCheck::default()
            };
            self.metrics.recall_baseline.set(measured);
        }
        r.last = Some(measured);
        r.checked = Some(Instant::now());
        self.metrics.recall.set(measured);
        if let Some(golden) = golden {
            if r.golden_baseline.is_none() {
                r.golden_baseline = Some(golden);
                self.metrics.golden_recall_baseline.set(golden);
            }
            r.golden_last = Some(golden);
            self.metrics.golden_recall.set(golden);
        }
        Some(measured)
    }

    /// Rebuilds main from main ∪ hot − deleted on `pool`, swaps it in and, if `dir` is
    /// given, writes a snapshot. `None` if a compaction of this shard is already running.
    ///
    /// With the cold tier on, the items older than the hot window (from `cold.min_move` of
    /// them) go to new segments instead of main, the segments hide what hot and the deletes
    /// replaced, and segments past `cold.max_segments` or with more than
    /// `compaction.max_tombstone_ratio` hidden are merged (their live items rebuilt into one).
    pub(crate) fn compact(
        &self,
        reason: CompactionReason,
        config: &IndexConfig,
        pool: &rayon::ThreadPool,
        offsets: &Offsets,
        dir: Option<&Path>,
    ) -> Result<Option<CompactionRecord>> {
        let Ok(_busy) = self.busy.try_lock() else {
            return Ok(None);
        };
        let started = Instant::now();
        let (main, hot, deletes, cold, seq) = {
            let mut st = self.write();
            // The number of this compaction's snapshot and segment files.
            st.seq += 1;
            let cold = st.cold.clone();
            (
                st.main.clone(),
                st.hot.clone(),
                st.deletes.clone(),
                cold,
                st.seq,
            )
        };
        let dim = self.dim;
        let cold_dir = dir.filter(|_| self.hot_window_ms.is_some());
        let cutoff = self.hot_window_ms.map(|w| now_ms() - w);
        let (new_main, new_cold, moved) = pool.install(|| -> Result<_> {
            let keep = |id: &str| !hot.contains(id) && !deletes.contains_key(id);
            let graph = main.graph();
            let mut young = Part::with_capacity(main.len() + hot.len(), dim);
            let mut aged = Part::with_capacity(0, dim);
            let mut add = |row: &Row, vector: &[f32]| {
                let old = cutoff.is_some_and(|c| row.event_time_ms < c) && cold_dir.is_some();
                let part = if old { &mut aged } else { &mut young };
                part.push(row.clone(), vector);
            };
            for (pid, row) in main.rows().iter().enumerate() {
                if keep(&row.id) {
                    add(row, graph.vector(pid as u32));
                }
            }
            for (i, row) in hot.rows().iter().enumerate() {
                add(row, hot.vector(i));
            }
            if aged.rows.len() < config.cold.min_move {
                young.append(aged);
                aged = Part::with_capacity(0, dim);
            }
            let new_main = MainIndex::build(young.rows, &young.vectors, dim, &config.main)?;
            let Some(cold_dir) = cold_dir else {
                return Ok((new_main, cold, 0));
            };
            let moved = aged.rows.len();
            let mut writer = SegmentWriter {
                dir: cold_dir,
                shard: self.id as u32,
                seq,
                next: 0,
                config,
            };
            let mut segments = hide_replaced(&cold, &hot, &deletes);
            segments.extend(writer.write_all(aged)?);
            let merge = pick_merges(&segments, config);
            if merge.is_empty() {
                return Ok((new_main, segments, moved));
            }
            let (merged, kept): (Vec<_>, Vec<_>) = segments
                .into_iter()
                .enumerate()
                .partition(|(i, _)| merge.contains(i));
            let mut live = Part::with_capacity(0, dim);
            for (_, seg) in &merged {
                let g = seg.main.graph();
                for (pid, row) in seg.main.rows().iter().enumerate() {
                    if !seg.dead.contains(&row.id) {
                        live.push(row.clone(), g.vector(pid as u32));
                    }
                }
            }
            let mut segments: Vec<Segment> = kept.into_iter().map(|(_, s)| s).collect();
            segments.extend(writer.write_all(live)?);
            Ok((new_main, segments, moved))
        })?;
        drop(main);

        let (record, snapshot) = {
            let mut st = self.write();
            for row in hot.rows() {
                if st
                    .hot
                    .get(&row.id)
                    .is_some_and(|now| now.version == row.version)
                {
                    st.hot.remove(&row.id);
                }
            }
            let merged_at = now_ms();
            let retention = DELETE_RETENTION.as_millis() as i64;
            st.graveyard
                .retain(|_, (_, at)| merged_at - *at < retention);
            for (id, version) in &deletes {
                if st.deletes.get(id) == Some(version) {
                    st.deletes.remove(id);
                    if version.source.is_some() {
                        st.graveyard.insert(id.clone(), (*version, merged_at));
                    }
                }
            }
            st.main = Arc::new(new_main);
            st.cold = new_cold;
            st.recount();
            raise_covered(&mut st.covered, &lock(offsets));
            let finished = now_ms();
            st.since_ms = finished;
            let record = CompactionRecord {
                count: st.last.as_ref().map_or(0, |r| r.count) + 1,
                finished_at_ms: finished,
                duration_ms: started.elapsed().as_millis() as u64,
                reason,
            };
            st.last = Some(record.clone());
            self.metrics
                .sizes(st.hot.len(), st.main.len(), st.tombstones);
            self.metrics.cold_sizes(&st.cold);
            let snapshot = dir.map(|_| {
                (
                    st.main.clone(),
                    st.hot.clone(),
                    st.deletes.clone(),
                    st.graveyard.clone(),
                    st.covered.clone(),
                    st.cold.clone(),
                )
            });
            (record, snapshot)
        };
        self.metrics
            .compaction
            .record(Duration::from_millis(record.duration_ms).as_secs_f64());
        self.metrics.compactions(reason.as_str()).increment(1);
        self.metrics
            .last_compaction
            .set(record.finished_at_ms as f64 / 1000.0);
        tracing::info!(
            shard = self.id,
            reason = reason.as_str(),
            duration_ms = record.duration_ms,
            merged_hot = hot.len(),
            merged_deletes = deletes.len(),
            moved_cold = moved,
            "Compacted shard."
        );
        if let (Some(dir), Some((main, hot, deletes, graveyard, covered, cold))) = (dir, snapshot) {
            let content = Content {
                main: &main,
                hot: &hot,
                deletes: &deletes,
                graveyard: &graveyard,
                covered: &covered,
                last: Some(&record),
                cold: &cold,
            };
            self.write_snapshot(dir, config, seq, &content)?;
        }
        Ok(Some(record))
    }

    /// Writes a snapshot of the current state without rebuilding main (e.g. at shutdown),
    /// waiting for a running compaction of the shard to finish first.
    pub(crate) fn persist(
        &self,
        config: &IndexConfig,
        offsets: &Offsets,
        dir: &Path,
    ) -> Result<()> {
        let _busy = lock(&self.busy);
        let (seq, main, hot, deletes, graveyard, covered, last, cold) = {
            let mut st = self.write();
            st.seq += 1;
            // Under the write lock no write to this shard is half-applied, so the global
            // offsets are covered here; taking them as `covered` also lets replays skip.
            raise_covered(&mut st.covered, &lock(offsets));
            (
                st.seq,
                st.main.clone(),
                st.hot.clone(),
                st.deletes.clone(),
                st.graveyard.clone(),
                st.covered.clone(),
                st.last.clone(),
                st.cold.clone(),
            )
        };
        let content = Content {
            main: &main,
            hot: &hot,
            deletes: &deletes,
            graveyard: &graveyard,
            covered: &covered,
            last: last.as_ref(),
            cold: &cold,
        };
        self.write_snapshot(dir, config, seq, &content)
    }

    fn write_snapshot(
        &self,
        dir: &Path,
        config: &IndexConfig,
        seq: u64,
        content: &Content<'_>,
    ) -> Result<()> {
        let started = Instant::now();
        let (path, bytes) = snapshot::write(dir, header(self.id, config), seq, now_ms(), content)?;
        snapshot::prune(dir, self.id as u32, config.snapshot.keep)?;
        let took = started.elapsed();
        self.metrics.snapshot_write.record(took.as_secs_f64());
        self.metrics.snapshot_bytes.set(bytes as f64);
        tracing::info!(
            shard = self.id,
            path = %path.display(),
            bytes,
            duration_ms = took.as_millis() as u64,
            "Wrote shard snapshot."
        );
        Ok(())
    }
}

/// Rows and their vectors gathered for a build.
struct Part {
    rows: Vec<Row>,
    vectors: Vec<f32>,
}

impl Part {
    fn with_capacity(n: usize, dim: usize) -> Self {
        Self {
            rows: Vec::with_capacity(n),
            vectors: Vec::with_capacity(n * dim),
        }
    }

    fn push(&mut self, row: Row, vector: &[f32]) {
        self.rows.push(row);
        self.vectors.extend_from_slice(vector);
    }

    fn append(&mut self, mut other: Part) {
        self.rows.append(&mut other.rows);
        self.vectors.append(&mut other.vectors);
    }
}

/// Builds and writes the segments of one compaction, numbered in order.
struct SegmentWriter<'a> {
    dir: &'a Path,
    shard: u32,
    seq: u64,
    next: usize,
    config: &'a IndexConfig,
}

impl SegmentWriter<'_> {
    /// `part` as segments of at most `cold.segment_max_vectors` items, each built, written,
    /// and opened again mapped (so that the built copy leaves memory).
    fn write_all(&mut self, part: Part) -> Result<Vec<Segment>> {
        let dim = self.config.dim;
        let per = self.config.cold.segment_max_vectors;
        let mut out = Vec::new();
        let mut rows = part.rows.into_iter();
        for vectors in part.vectors.chunks(per * dim) {
            let rows: Vec<Row> = rows.by_ref().take(per).collect();
            let built = MainIndex::build(rows, vectors, dim, &self.config.main)?;
            let name = cold::file_name(self.shard, self.seq, self.next);
            self.next += 1;
            cold::write(self.dir, &name, self.shard, &built)?;
            drop(built);
            let (main, bytes) = cold::open(self.dir, &name, self.shard, dim)?;
            out.push(Segment {
                name,
                main: Arc::new(main),
                dead: Arc::default(),
                bytes,
            });
        }
        Ok(out)
    }
}

/// `cold` with each segment's items that `hot` or `deletes` replaced added to its dead.
fn hide_replaced(cold: &[Segment], hot: &Hot, deletes: &HashMap<ItemId, Version>) -> Vec<Segment> {
    cold.iter()
        .map(|seg| {
            let replaced = hot.rows().iter().map(|r| &r.id).chain(deletes.keys());
            let newly: Vec<&ItemId> = replaced.filter(|id| seg.holds(id)).collect();
            if newly.is_empty() {
                return seg.clone();
            }
            let mut dead = (*seg.dead).clone();
            dead.extend(newly.into_iter().cloned());
            Segment {
                dead: Arc::new(dead),
                ..seg.clone()
            }
        })
        .collect()
}

/// Which segments to merge: those with more than `compaction.max_tombstone_ratio` of their
/// items hidden, then the smallest while there are more than `cold.max_segments`, as long as
/// the merge stays within `cold.segment_max_vectors`. Nothing when that leaves one segment
/// with little hidden (a merge of one is only worth it to drop its hidden items).
fn pick_merges(segments: &[Segment], config: &IndexConfig) -> Vec<usize> {
    let cold = &config.cold;
    let over =
        |s: &Segment| ratio(s.dead.len(), s.main.len()) > config.compaction.max_tombstone_ratio;
    let mut pick: Vec<usize> = (0..segments.len())
        .filter(|&i| over(&segments[i]))
        .collect();
    let mut total: usize = pick.iter().map(|&i| segments[i].live()).sum();
    let mut rest: Vec<usize> = (0..segments.len()).filter(|i| !pick.contains(i)).collect();
    rest.sort_by_key(|&i| segments[i].live());
    for i in rest {
        let after = segments.len() - pick.len() + usize::from(!pick.is_empty());
        if after <= cold.max_segments || total + segments[i].live() > cold.segment_max_vectors {
            break;
        }
        pick.push(i);
        total += segments[i].live();
    }
    if pick.len() == 1 && !over(&segments[pick[0]]) {
        pick.clear();
    }
    pick
}

/// The top `k` of one main part or segment, hiding what `hidden` says.
fn search_part(
    main: &MainIndex,
    query: &[f32],
    k: usize,
    ef: usize,
    filter: Option<(&Filter, FilterPlan)>,
    hidden: impl Fn(&str) -> bool,
) -> (Vec<Hit>, Option<Strategy>) {
    match filter {
        None => (main.search(query, k, ef, hidden), None),
        Some((f, plan)) => main.search_filtered(query, k, ef, f, plan, hidden),
    }
}

/// The ids of the `k` vectors of `visible` closest to `query` (higher dot product first, then
/// the smaller id: the index's order).
fn exact_top<'a>(visible: &[(&'a str, &[f32])], query: &[f32], k: usize) -> Vec<&'a str> {
    let mut top: Vec<(f32, &'a str)> = Vec::with_capacity(k + 1);
    let before = |a: &(f32, &str), b: &(f32, &str)| b.0.total_cmp(&a.0).then_with(|| a.1.cmp(b.1));
    for &(id, v) in visible {
        let cand = (crate::vector::dot(query, v), id);
        if top.len() == k && before(&top[k - 1], &cand).is_le() {
            continue;
        }
        let at = top.partition_point(|t| before(t, &cand).is_lt());
        top.insert(at, cand);
        top.truncate(k);
    }
    top.into_iter().map(|(_, id)| id).collect()
}

/// Coverage only grows: what the shard covered stays in its state through swaps, and after a
/// restart the global offsets start at the minimum over shards, below this shard's own.
fn raise_covered(covered: &mut BTreeMap<i32, i64>, global: &BTreeMap<i32, i64>) {
    for (&p, &next) in global {
        let c = covered.entry(p).or_insert(next);
        *c = (*c).max(next);
    }
}

pub(crate) fn header(shard: usize, config: &IndexConfig) -> Header {
    Header {
        shard: shard as u32,
        shards: config.shards as u32,
        dim: config.dim as u32,
        routing: crate::hash::ROUTING_FNV1A64,
    }
}
