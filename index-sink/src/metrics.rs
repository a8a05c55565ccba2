//! Metric names, buckets and handles. Names follow `embedstream_index_<thing>_<unit>`;
//! labels are the index name (`index`, usually the topic), the shard number (`shard`) and,
//! for counters of outcomes, a small fixed set (`outcome`, `reason`). Never an item id.
//!
//! The crate only records through the `metrics` facade; the binary installs the exporter and
//! declares every histogram's buckets.

use std::fmt;

use metrics::{Counter, Gauge, Histogram, counter, gauge, histogram};

/// Every metric name the crate records.
pub mod names {
    /// Gauge: vectors in the shard's hot part.
    pub const HOT_VECTORS: &str = "embedstream_index_hot_vectors";
    /// Gauge: points in the shard's main part (hidden ones included).
    pub const MAIN_VECTORS: &str = "embedstream_index_main_vectors";
    /// Gauge: points of main hidden by a later delete or update.
    pub const MAIN_TOMBSTONES: &str = "embedstream_index_main_tombstones";
    /// Gauge: tombstones / main points.
    pub const TOMBSTONE_RATIO: &str = "embedstream_index_tombstone_ratio";
    /// Counter: writes applied, by `outcome` (upserted, deleted, already_covered, stale).
    pub const WRITES_TOTAL: &str = "embedstream_index_writes_total";
    /// Histogram: one query over all shards, seconds, by `tier` (`all`, or `hot` for queries
    /// that asked for the hot tier only).
    pub const QUERY_SECONDS: &str = "embedstream_index_query_seconds";
    /// Gauge: items queries can find in the shard's cold tier.
    pub const COLD_VECTORS: &str = "embedstream_index_cold_vectors";
    /// Gauge: the shard's cold segments.
    pub const COLD_SEGMENTS: &str = "embedstream_index_cold_segments";
    /// Gauge: bytes of the shard's cold segment files (mapped, not all resident).
    pub const COLD_BYTES: &str = "embedstream_index_cold_bytes";
    /// Counter: filtered searches of a main part, by `strategy` (`exact`: a scan of the
    /// matching items; `graph`: the walk keeping matching items; `none`: nothing matched).
    pub const FILTERED_SEARCHES_TOTAL: &str = "embedstream_index_filtered_searches_total";
    /// Histogram: one compaction (capture, build, swap; snapshot excluded), seconds.
    pub const COMPACTION_SECONDS: &str = "embedstream_index_compaction_seconds";
    /// Counter: compactions finished, by `reason`.
    pub const COMPACTIONS_TOTAL: &str = "embedstream_index_compactions_total";
    /// Gauge: Unix time (seconds) the shard's last compaction finished.
    pub const LAST_COMPACTION_TIMESTAMP_SECONDS: &str =
        "embedstream_index_last_compaction_timestamp_seconds";
    /// Histogram: writing one shard snapshot, seconds.
    pub const SNAPSHOT_WRITE_SECONDS: &str = "embedstream_index_snapshot_write_seconds";
    /// Gauge: size of the shard's newest snapshot, bytes.
    pub const SNAPSHOT_BYTES: &str = "embedstream_index_snapshot_bytes";
    /// Gauge: the shard's recall@10 by its last self-check (its search against an exact scan,
    /// on a sample of its own vectors).
    pub const RECALL_AT_10: &str = "embedstream_index_recall_at_10";
    /// Gauge: the shard's recall@10 measured first after its main was built or loaded.
    pub const RECALL_BASELINE: &str = "embedstream_index_recall_baseline";
    /// Gauge: the same self-check on the consumers' golden queries (embedded with the index's
    /// model), where the consumers file names golden sets.
    pub const GOLDEN_RECALL_AT_10: &str = "embedstream_index_golden_recall_at_10";
    /// Gauge: the golden queries' recall@10 measured first on the current main.
    pub const GOLDEN_RECALL_BASELINE: &str = "embedstream_index_golden_recall_baseline";
    /// Counter: snapshot files found corrupt at open (each one falls back to an older one).
    pub const SNAPSHOT_CORRUPT_TOTAL: &str = "embedstream_index_snapshot_corrupt_total";
    /// Counter: snapshots set aside at open because they are older than the topic keeps
    /// tombstones, or of a format without item attributes (the shard is rebuilt by a replay
    /// from the beginning).
    pub const SNAPSHOT_EXPIRED_TOTAL: &str = "embedstream_index_snapshot_expired_total";
}

/// Handles of one shard, registered once.
#[derive(Clone)]
pub(crate) struct ShardMetrics {
    pub(crate) hot: Gauge,
    pub(crate) main: Gauge,
    pub(crate) tombstones: Gauge,
    pub(crate) ratio: Gauge,
    pub(crate) upserted: Counter,
    pub(crate) deleted: Counter,
    pub(crate) covered: Counter,
    pub(crate) stale: Counter,
    pub(crate) compaction: Histogram,
    pub(crate) last_compaction: Gauge,
    pub(crate) snapshot_write: Histogram,
    pub(crate) snapshot_bytes: Gauge,
    pub(crate) recall: Gauge,
    pub(crate) recall_baseline: Gauge,
    pub(crate) golden_recall: Gauge,
    pub(crate) golden_recall_baseline: Gauge,
    cold_vectors: Gauge,
    cold_segments: Gauge,
    cold_bytes: Gauge,
    index: String,
    shard: String,
}

impl fmt::Debug for ShardMetrics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ShardMetrics")
            .field("index", &self.index)
            .field("shard", &self.shard)
            .finish_non_exhaustive()
    }
}

impl ShardMetrics {
    pub(crate) fn new(index: &str, shard: usize) -> Self {
        let (i, s) = (index.to_owned(), shard.to_string());
        let writes = |outcome: &'static str| counter!(names::WRITES_TOTAL, "index" => i.clone(), "shard" => s.clone(), "outcome" => outcome);
        Self {
            hot: gauge!(names::HOT_VECTORS, "index" => i.clone(), "shard" => s.clone()),
            main: gauge!(names::MAIN_VECTORS, "index" => i.clone(), "shard" => s.clone()),
            tombstones: gauge!(names::MAIN_TOMBSTONES, "index" => i.clone(), "shard" => s.clone()),
            ratio: gauge!(names::TOMBSTONE_RATIO, "index" => i.clone(), "shard" => s.clone()),
            upserted: writes("upserted"),
            deleted: writes("deleted"),
            covered: writes("already_covered"),
            stale: writes("stale"),
            compaction: histogram!(names::COMPACTION_SECONDS, "index" => i.clone(), "shard" => s.clone()),
            last_compaction: gauge!(names::LAST_COMPACTION_TIMESTAMP_SECONDS, "index" => i.clone(), "shard" => s.clone()),
            snapshot_write: histogram!(names::SNAPSHOT_WRITE_SECONDS, "index" => i.clone(), "shard" => s.clone()),
            snapshot_bytes: gauge!(names::SNAPSHOT_BYTES, "index" => i.clone(), "shard" => s.clone()),
            recall: gauge!(names::RECALL_AT_10, "index" => i.clone(), "shard" => s.clone()),
            recall_baseline: gauge!(names::RECALL_BASELINE, "index" => i.clone(), "shard" => s.clone()),
            golden_recall: gauge!(names::GOLDEN_RECALL_AT_10, "index" => i.clone(), "shard" => s.clone()),
            golden_recall_baseline: gauge!(names::GOLDEN_RECALL_BASELINE, "index" => i.clone(), "shard" => s.clone()),
            cold_vectors: gauge!(names::COLD_VECTORS, "index" => i.clone(), "shard" => s.clone()),
            cold_segments: gauge!(names::COLD_SEGMENTS, "index" => i.clone(), "shard" => s.clone()),
            cold_bytes: gauge!(names::COLD_BYTES, "index" => i.clone(), "shard" => s.clone()),
            index: i,
            shard: s,
        }
    }

    pub(crate) fn compactions(&self, reason: &'static str) -> Counter {
        counter!(names::COMPACTIONS_TOTAL, "index" => self.index.clone(), "shard" => self.shard.clone(), "reason" => reason)
    }

    pub(crate) fn sizes(&self, hot: usize, main: usize, tombstones: usize) {
        self.hot.set(hot as f64);
        self.main.set(main as f64);
        self.tombstones.set(tombstones as f64);
        self.ratio.set(ratio(tombstones, main));
    }

    /// The cold tier's sizes (live items count those the segments do not hide).
    pub(crate) fn cold_sizes(&self, segments: &[crate::cold::Segment]) {
        let live: usize = segments.iter().map(crate::cold::Segment::live).sum();
        self.cold_vectors.set(live as f64);
        self.cold_segments.set(segments.len() as f64);
        let bytes: u64 = segments.iter().map(|s| s.bytes).sum();
        self.cold_bytes.set(bytes as f64);
    }
}

pub(crate) fn ratio(tombstones: usize, main: usize) -> f64 {
    if main == 0 {
        0.0
    } else {
        tombstones as f64 / main as f64
    }
}

pub(crate) fn query_duration(index: &str, tier: &'static str) -> Histogram {
    histogram!(names::QUERY_SECONDS, "index" => index.to_owned(), "tier" => tier)
}

pub(crate) fn filtered_search(index: &str, strategy: &'static str) -> Counter {
    counter!(names::FILTERED_SEARCHES_TOTAL, "index" => index.to_owned(), "strategy" => strategy)
}

pub(crate) fn snapshot_corrupt(index: &str, shard: usize) -> Counter {
    counter!(names::SNAPSHOT_CORRUPT_TOTAL, "index" => index.to_owned(), "shard" => shard.to_string())
}

pub(crate) fn snapshot_expired(index: &str, shard: usize) -> Counter {
    counter!(names::SNAPSHOT_EXPIRED_TOTAL, "index" => index.to_owned(), "shard" => shard.to_string())
}
