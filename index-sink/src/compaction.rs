//! Compaction planning: each reason to rebuild a shard's main is a named policy that looks
//! at the shard's stats and says yes or no. The planner only decides; doing it (capture,
//! build on the compaction pool, swap, snapshot) is `Shard::compact`, driven by
//! [`crate::ShardedIndex::compact`] or its maintenance thread.
//!
//! Guarantees: a shard with nothing to merge (empty hot, no pending deletes) is never
//! planned (with the cold tier on, items in main older than the hot window count as
//! something to merge, from `cold.min_move` of them); a shard already being compacted is never
//! planned twice; policies are asked in a fixed order (hot share, tombstones, recall, age,
//! interval) and the first that fires is the reason.

use std::fmt;
use std::time::Duration;

use crate::config::{ColdConfig, CompactionConfig};
pub use crate::stats::CompactionReason;
use crate::stats::ShardStats;

/// One reason to rebuild a shard.
pub trait CompactionPolicy: fmt::Debug + Send + Sync {
    /// The reason this policy gives when it fires.
    fn reason(&self) -> CompactionReason;
    /// Whether the shard should be rebuilt now (`now_ms`: Unix milliseconds). Only asked
    /// for shards that have something to merge.
    fn fires(&self, stats: &ShardStats, now_ms: i64) -> bool;
}

/// Rebuild when hot holds at least `fraction` of main's size and at least `min_hot` vectors.
#[derive(Debug, Clone, Copy)]
pub struct HotShare {
    /// Share of main's size.
    pub fraction: f64,
    /// Least hot size; with an empty main this alone decides the first build.
    pub min_hot: usize,
}

impl CompactionPolicy for HotShare {
    fn reason(&self) -> CompactionReason {
        CompactionReason::HotShare
    }
    fn fires(&self, s: &ShardStats, _now_ms: i64) -> bool {
        s.hot_vectors >= self.min_hot
            && s.hot_vectors as f64 >= self.fraction * s.main_vectors as f64
    }
}

/// Rebuild when more than `max_ratio` of main's points are hidden.
#[derive(Debug, Clone, Copy)]
pub struct Tombstones {
    /// Largest tolerated tombstone ratio.
    pub max_ratio: f64,
}

impl CompactionPolicy for Tombstones {
    fn reason(&self) -> CompactionReason {
        CompactionReason::Tombstones
    }
    fn fires(&self, s: &ShardStats, _now_ms: i64) -> bool {
        s.main_vectors > 0 && s.tombstone_ratio > self.max_ratio
    }
}

/// Rebuild when main was swapped in (or the index opened) longer than `every` ago.
#[derive(Debug, Clone, Copy)]
pub struct Interval {
    /// The interval.
    pub every: Duration,
}

impl CompactionPolicy for Interval {
    fn reason(&self) -> CompactionReason {
        CompactionReason::Interval
    }
    fn fires(&self, s: &ShardStats, now_ms: i64) -> bool {
        now_ms.saturating_sub(s.since_ms) >= self.every.as_millis() as i64
    }
}

/// Rebuild when the recall self-check, on the shard's own vectors or on the golden queries,
/// fell more than `max_drop` below its post-build baseline.
#[derive(Debug, Clone, Copy)]
pub struct RecallDrop {
    /// Largest tolerated drop of recall@10.
    pub max_drop: f64,
}

impl CompactionPolicy for RecallDrop {
    fn reason(&self) -> CompactionReason {
        CompactionReason::Recall
    }
    fn fires(&self, s: &ShardStats, _now_ms: i64) -> bool {
        let dropped = |now: Option<f64>, base: Option<f64>| matches!((now, base), (Some(now), Some(base)) if now < base - self.max_drop);
        dropped(s.recall_at_10, s.recall_baseline)
            || dropped(s.golden_recall_at_10, s.golden_recall_baseline)
    }
}

/// Rebuild when main holds at least `min_move` items older than the cold tier's hot window,
/// so that they move to the cold tier.
#[derive(Debug, Clone, Copy)]
pub struct Age {
    /// Fewest aged items worth a move (`cold.min_move`).
    pub min_move: usize,
}

impl CompactionPolicy for Age {
    fn reason(&self) -> CompactionReason {
        CompactionReason::Age
    }
    fn fires(&self, s: &ShardStats, _now_ms: i64) -> bool {
        s.aged_vectors >= self.min_move
    }
}

/// Asks the policies, in order, for every shard.
#[derive(Debug)]
pub struct Planner {
    policies: Vec<Box<dyn CompactionPolicy>>,
    /// With the cold tier on: this many aged items in main are something to do, like hot
    /// writes and deletes are.
    age_min_move: Option<usize>,
}

impl Planner {
    /// The policies of `config`, in the fixed order.
    pub fn from_config(config: &CompactionConfig, cold: &ColdConfig) -> Self {
        let mut policies: Vec<Box<dyn CompactionPolicy>> = vec![
            Box::new(HotShare {
                fraction: config.hot_fraction,
                min_hot: config.min_hot,
            }),
            Box::new(Tombstones {
                max_ratio: config.max_tombstone_ratio,
            }),
            Box::new(RecallDrop {
                max_drop: config.max_recall_drop,
            }),
        ];
        let age_min_move = cold.enabled.then_some(cold.min_move);
        if let Some(min_move) = age_min_move {
            policies.push(Box::new(Age { min_move }));
        }
        if let Some(every) = config.interval {
            policies.push(Box::new(Interval { every }));
        }
        Self {
            policies,
            age_min_move,
        }
    }

    /// Own policies, asked in the given order.
    pub fn new(policies: Vec<Box<dyn CompactionPolicy>>) -> Self {
        Self {
            policies,
            age_min_move: None,
        }
    }

    /// The shards to rebuild and why.
    pub fn plan(&self, shards: &[ShardStats], now_ms: i64) -> Vec<(usize, CompactionReason)> {
        shards
            .iter()
            .filter(|s| {
                let aged = self.age_min_move.is_some_and(|m| s.aged_vectors >= m);
                !s.compacting && (s.hot_vectors > 0 || s.pending_deletes > 0 || aged)
            })
            .filter_map(|s| {
                self.policies
                    .iter()
                    .find(|p| p.fires(s, now_ms))
                    .map(|p| (s.shard, p.reason()))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stats(hot: usize, main: usize, tomb: usize, deletes: usize, since_ms: i64) -> ShardStats {
        ShardStats {
            shard: 0,
            hot_vectors: hot,
            main_vectors: main,
            main_tombstones: tomb,
            tombstone_ratio: crate::metrics::ratio(tomb, main),
            pending_deletes: deletes,
            covered_offsets: Default::default(),
            since_ms,
            compacting: false,
            last_compaction: None,
            recall_at_10: None,
            recall_baseline: None,
            golden_recall_at_10: None,
            golden_recall_baseline: None,
            aged_vectors: 0,
            cold_vectors: 0,
            cold_hidden: 0,
            cold_segments: 0,
            cold_bytes: 0,
        }
    }

    #[test]
    fn each_policy_fires_on_its_own_condition() {
        let config = CompactionConfig {
            interval: Some(Duration::from_secs(60)),
            ..CompactionConfig::default()
        };
        let cold = ColdConfig {
            enabled: true,
            ..ColdConfig::default()
        };
        let p = Planner::from_config(&config, &cold);
        let now = 1_000_000;
        let plan = |s: ShardStats| p.plan(&[s], now).first().map(|x| x.1);
        // Empty main: the first build waits for min_hot (1000).
        assert_eq!(plan(stats(999, 0, 0, 0, now)), None);
        assert_eq!(
            plan(stats(1000, 0, 0, 0, now)),
            Some(CompactionReason::HotShare)
        );
        // 5% of 100k is 5000.
        assert_eq!(plan(stats(4999, 100_000, 0, 0, now)), None);
        assert_eq!(
            plan(stats(5000, 100_000, 0, 0, now)),
            Some(CompactionReason::HotShare)
        );
        // Tombstones above 8%.
        assert_eq!(plan(stats(0, 100_000, 8000, 10, now)), None);
        assert_eq!(
            plan(stats(0, 100_000, 8001, 10, now)),
            Some(CompactionReason::Tombstones)
        );
        // Interval, only with something to merge.
        assert_eq!(plan(stats(1, 100_000, 0, 0, now - 59_999)), None);
        assert_eq!(
            plan(stats(1, 100_000, 0, 0, now - 60_000)),
            Some(CompactionReason::Interval)
        );
        assert_eq!(plan(stats(0, 100_000, 0, 0, now - 600_000)), None);
        // Recall more than 2 points under its baseline, with something to merge.
        let recall = |now_r, base| {
            let mut s = stats(1, 100_000, 0, 0, now);
            s.recall_at_10 = Some(now_r);
            s.recall_baseline = Some(base);
            s
        };
        assert_eq!(plan(recall(0.935, 0.95)), None);
        assert_eq!(plan(recall(0.92, 0.95)), Some(CompactionReason::Recall));
        // The same on the golden queries.
        let mut golden = stats(1, 100_000, 0, 0, now);
        golden.golden_recall_at_10 = Some(0.90);
        golden.golden_recall_baseline = Some(0.95);
        assert_eq!(plan(golden), Some(CompactionReason::Recall));
        // Aged items in main: nothing else to merge, from min_move (1000) of them.
        let aged = |n| {
            let mut s = stats(0, 100_000, 0, 0, now);
            s.aged_vectors = n;
            s
        };
        assert_eq!(plan(aged(999)), None);
        assert_eq!(plan(aged(1000)), Some(CompactionReason::Age));
        let off = Planner::from_config(&config, &ColdConfig::default());
        assert!(off.plan(&[aged(5000)], now).is_empty());
        let mut busy = stats(5000, 0, 0, 0, now);
        busy.compacting = true;
        assert_eq!(plan(busy), None);
    }
}
