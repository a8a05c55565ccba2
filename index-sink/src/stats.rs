//! What a shard reports about itself: its sizes, coverage and last compaction. Read by the
//! compaction planner, written into snapshots, served on the sink's `/v1/stats`.

use std::collections::BTreeMap;
use std::fmt;

use serde::Serialize;

/// Why a shard was rebuilt.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CompactionReason {
    /// Hot reached its configured share of main ([`crate::HotShare`]).
    HotShare,
    /// Too many of main's points are hidden ([`crate::Tombstones`]).
    Tombstones,
    /// The last rebuild is older than the interval ([`crate::Interval`]).
    Interval,
    /// Asked for by the caller.
    Manual,
    /// The recall self-check fell below its post-build baseline ([`crate::RecallDrop`]).
    Recall,
    /// Main holds enough items older than the hot window to move them to the cold tier
    /// ([`crate::Age`]).
    Age,
}

impl CompactionReason {
    /// The label value in metrics and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::HotShare => "hot_share",
            Self::Tombstones => "tombstones",
            Self::Interval => "interval",
            Self::Manual => "manual",
            Self::Recall => "recall",
            Self::Age => "age",
        }
    }
}

impl fmt::Display for CompactionReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The last compaction of a shard.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CompactionRecord {
    /// Compactions of this shard so far (survives restarts through snapshots).
    pub count: u64,
    /// When the last one swapped its main in, Unix milliseconds.
    pub finished_at_ms: i64,
    /// How long it took from capture to swap (the snapshot write is not included).
    pub duration_ms: u64,
    /// Why it ran.
    pub reason: CompactionReason,
}

/// What one shard holds; `GET /v1/stats` material.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ShardStats {
    /// The shard number.
    pub shard: usize,
    /// Vectors in hot.
    pub hot_vectors: usize,
    /// Points in main, hidden ones included.
    pub main_vectors: usize,
    /// Points in main hidden by a later update or delete.
    pub main_tombstones: usize,
    /// `main_tombstones / main_vectors` (0 for an empty main).
    pub tombstone_ratio: f64,
    /// Deletes not yet merged into main.
    pub pending_deletes: usize,
    /// Per partition, the next offset the shard's last swap (or loaded snapshot) covers.
    pub covered_offsets: BTreeMap<i32, i64>,
    /// When main was last swapped in, or the shard was opened if never; Unix ms.
    pub since_ms: i64,
    /// Whether a compaction of this shard is running.
    pub compacting: bool,
    /// The last compaction, if any.
    pub last_compaction: Option<CompactionRecord>,
    /// Recall@10 by the last self-check of the current main (none before the first).
    pub recall_at_10: Option<f64>,
    /// Recall@10 measured first after the current main was built or loaded.
    pub recall_baseline: Option<f64>,
    /// Recall@10 of the same self-check on the consumers' golden queries (none without them).
    pub golden_recall_at_10: Option<f64>,
    /// Its first measurement on the current main.
    pub golden_recall_baseline: Option<f64>,
    /// Items of main older than the cold tier's hot window (0 with the cold tier off): what
    /// the next compaction moves to the cold tier.
    pub aged_vectors: usize,
    /// Items in the cold tier's segments that queries can find.
    pub cold_vectors: usize,
    /// Items in the segments replaced or deleted since (dropped when a merge rewrites them).
    pub cold_hidden: usize,
    /// Cold segments.
    pub cold_segments: usize,
    /// Bytes of the segment files (mapped: the operating system keeps what queries touch).
    pub cold_bytes: u64,
}
