//! Configuration, one struct per component. Unknown fields are errors; every field has a
//! default, so `{}` is a valid configuration except for `dim`, which must be set (the sink
//! service sets it from the model catalog). Durations
//! are written as strings with a unit: `"250ms"`, `"30s"`, `"5m"`, `"1h"`.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Links per node in the main graph's upper layers (`M` of instant-distance 0.6.1, whose
/// graphs the bridge copies).
pub(crate) const M: usize = 32;
/// Links per node in layer 0 (`2 M`).
pub(crate) const M0: usize = 2 * M;

/// The whole index of one embedding topic.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IndexConfig {
    /// Name of the index in metrics labels and logs, usually the embedding topic.
    #[serde(default = "default_name")]
    pub name: String,
    /// Vector dimension of the model version this index serves (384 for MiniLM). The sink
    /// service fills it in from the model catalog when it is left out (0); the core refuses 0.
    #[serde(default)]
    pub dim: usize,
    /// Number of shards; an item's shard is FNV-1a-64(item id) mod shards. Changing it
    /// invalidates the snapshots (they are refused, and the topic must be replayed).
    ///
    /// A query searches every shard (in parallel, on the query pool), so each shard adds one
    /// graph search to its cost: fewer shards are less work per query, more shards more
    /// parallelism per query and smaller compaction rebuilds. The default, 2, suits a host with
    /// two cores for queries: there it answers at lower latency than 4 shards at the same
    /// recall (`loadtest/reports/index.md` §2); with more cores to spare per query, more shards
    /// lower the latency further.
    #[serde(default = "default_shards")]
    pub shards: usize,
    /// The slice of the version's id-hash space this index holds (`"i/n"`, default `"0/1"`:
    /// every item). Writes of items outside it are skipped (their offsets still count as
    /// applied). A snapshot directory belongs to one slice: opening it as another is refused.
    #[serde(default)]
    pub slice: embedstream_topics::slice::Slice,
    /// Largest `k` a query may ask for.
    #[serde(default = "default_max_k")]
    pub max_k: usize,
    /// The hot parts.
    #[serde(default)]
    pub hot: HotConfig,
    /// The main (HNSW) parts.
    #[serde(default)]
    pub main: MainConfig,
    /// When and how main parts are rebuilt.
    #[serde(default)]
    pub compaction: CompactionConfig,
    /// Snapshots written at each swap.
    #[serde(default)]
    pub snapshot: SnapshotConfig,
    /// The cold tier: older items in memory-mapped segment files.
    #[serde(default)]
    pub cold: ColdConfig,
}

/// The cold tier. Off by default: every item is held in memory (hot part and main). On,
/// each compaction moves the items whose event time is older than `hot_window` out of the
/// main into a new **segment**: an HNSW graph with its vectors and 8-bit codes written to a
/// file in the snapshot directory and memory-mapped, so the operating system keeps in memory
/// only the pages queries touch and a shard can hold more vectors than its memory (each
/// item's id, version and attributes stay in memory). Queries search the hot tier (hot part
/// and main) and every segment, unless they ask for the hot tier only. Needs snapshots on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ColdConfig {
    /// Whether the cold tier is on.
    #[serde(default)]
    pub enabled: bool,
    /// Items whose event time is within this window of now stay in the hot tier.
    #[serde(default = "default_hot_window", with = "duration")]
    pub hot_window: Duration,
    /// Fewest aged items a compaction moves at once: below it they wait in main, so that a
    /// trickle of aging items does not make a segment per compaction. Policy `age` rebuilds
    /// a shard whose main holds this many aged items.
    #[serde(default = "default_min_move")]
    pub min_move: usize,
    /// Most segments per shard: past it, a compaction merges the smallest ones. Each
    /// segment is one more graph search per query.
    #[serde(default = "default_max_segments")]
    pub max_segments: usize,
    /// Largest segment a compaction makes. A build holds its segment's vectors and graph in
    /// memory (about 10 KB per 384-d item at its peak), so this bounds a compaction's memory,
    /// not the tier's size.
    #[serde(default = "default_segment_max_vectors")]
    pub segment_max_vectors: usize,
}

impl Default for ColdConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            hot_window: default_hot_window(),
            min_move: default_min_move(),
            max_segments: default_max_segments(),
            segment_max_vectors: default_segment_max_vectors(),
        }
    }
}

const fn default_hot_window() -> Duration {
    Duration::from_secs(30 * 24 * 3600)
}
const fn default_min_move() -> usize {
    1000
}
const fn default_max_segments() -> usize {
    8
}
const fn default_segment_max_vectors() -> usize {
    500_000
}

/// The hot part of each shard: exact search over recent writes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HotConfig {
    /// Most vectors one shard's hot part holds; writes beyond are refused (retryable) until
    /// a compaction drains it, which bounds memory and exact-search time.
    #[serde(default = "default_hot_max_vectors")]
    pub max_vectors: usize,
}

/// The main part of each shard: an HNSW graph built by `instant-distance` (M = 32, fixed by
/// that crate).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MainConfig {
    /// `efConstruction`: candidate list size while building; higher is better recall and a
    /// slower build.
    #[serde(default = "default_ef_construction")]
    pub ef_construction: usize,
    /// Default `ef` for queries that do not bring their own; never below `k`.
    #[serde(default = "default_ef_search")]
    pub ef_search: usize,
    /// Seed of the layer assignment, for repeatable builds. The neighbour lists still depend
    /// on thread scheduling when the build uses more than one thread.
    #[serde(default = "default_seed")]
    pub seed: u64,
    /// Whether layer-0 neighbour lists are topped up with the candidates the HNSW heuristic
    /// pruned (`instant-distance`'s default). Off: lists hold only the heuristic's picks, as
    /// in hnswlib — fewer links per node, so cheaper searches and much cheaper builds.
    #[serde(default)]
    pub keep_pruned: bool,
    /// Whether the built layer-0 links are made two-way where lists have room (see
    /// `graph.rs`): more recall per `ef` at the same search cost per visited node.
    #[serde(default = "default_true")]
    pub reverse_links: bool,
    /// A second pass over the built graph that re-selects layer-0 lists with a relaxed
    /// pruning rule (see `graph.rs`): recall@10 0.89 → 0.95 at `ef` 10 on 60k real MiniLM
    /// vectors, for about twice the build time (loadtest/reports/index.md). It makes its own
    /// links back, so `reverse_links` only applies when it is `null` (off).
    #[serde(default = "default_refine")]
    pub refine: Option<RefineConfig>,
    /// Filtered queries: a main part where at most this many items match scans them exactly
    /// (exact results); where more match, it walks the graph keeping matching items. The
    /// crossover where the walk becomes cheaper is measured in `loadtest/reports/filter.md`.
    #[serde(default = "default_filter_exact_max")]
    pub filter_exact_max: usize,
}

/// The refinement pass over layer 0 (DiskANN's robust prune on the HNSW graph's own search).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RefineConfig {
    /// How many nearest each node searches for: the pool its new list is chosen from.
    pub ef: usize,
    /// The pruning slack on distances (1 - cosine): 1 is the HNSW heuristic; above 1 keeps
    /// some longer links.
    pub alpha: f32,
    /// Most links a node picks for itself (links back from others can fill up to 2M).
    pub degree: usize,
    /// Most links a node ends with (at most 2M).
    pub max_links: usize,
}

impl Default for RefineConfig {
    fn default() -> Self {
        // Chosen on 60k real MiniLM vectors against hnswlib (loadtest/reports/index.md):
        // 1.2 kept recall highest per unit of search work; a pool of 64 did as well as 100.
        Self {
            ef: 64,
            alpha: 1.2,
            degree: 32,
            max_links: 64,
        }
    }
}

/// Compaction: planning (the policies below) and doing (a rebuild on its own threads).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CompactionConfig {
    /// Threads of the dedicated rebuild pool: the CPU budget of compaction. Queries and
    /// writes do not run on it.
    #[serde(default = "default_threads")]
    pub threads: usize,
    /// Policy `hot-share`: rebuild when hot holds at least this fraction of main's size...
    #[serde(default = "default_hot_fraction")]
    pub hot_fraction: f64,
    /// ...and at least this many vectors (so that an empty main gets its first build once
    /// hot has this many, and a tiny main is not rebuilt on every write).
    #[serde(default = "default_min_hot")]
    pub min_hot: usize,
    /// Policy `interval`: rebuild a shard whose last rebuild is older than this, if it has
    /// anything to merge. `null` turns the policy off.
    #[serde(default = "default_interval", with = "opt_duration")]
    pub interval: Option<Duration>,
    /// Policy `tombstones`: rebuild when more than this fraction of main's points are hidden
    /// (deleted or replaced since the build). The maintenance runbook's threshold is 8%.
    #[serde(default = "default_max_tombstone_ratio")]
    pub max_tombstone_ratio: f64,
    /// How often the background maintenance thread asks the policies.
    #[serde(default = "default_check_every", with = "duration")]
    pub check_every: Duration,
    /// Recall self-check: how often each shard measures its recall@10 against an exact scan
    /// on a sample of its own vectors (on the compaction threads). `null` turns it off.
    #[serde(default = "default_recall_every", with = "opt_duration")]
    pub recall_every: Option<Duration>,
    /// Vectors each recall self-check queries (the same ones each time while they live).
    #[serde(default = "default_recall_queries")]
    pub recall_queries: usize,
    /// Policy `recall`: rebuild when the self-check's recall@10 is more than this below the
    /// first one measured after the build (the runbook's 2 points).
    #[serde(default = "default_max_recall_drop")]
    pub max_recall_drop: f64,
}

/// Snapshots and recovery.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SnapshotConfig {
    /// Write a snapshot of the shard after each swap.
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// How many valid snapshots to keep per shard (at least 2, so that a corrupt newest one
    /// has a fallback).
    #[serde(default = "default_keep")]
    pub keep: usize,
}

fn default_name() -> String {
    "index".to_owned()
}
const fn default_shards() -> usize {
    2
}
const fn default_max_k() -> usize {
    1000
}
const fn default_hot_max_vectors() -> usize {
    1_000_000
}
const fn default_ef_construction() -> usize {
    100
}
const fn default_ef_search() -> usize {
    100
}
const fn default_filter_exact_max() -> usize {
    4000
}
const fn default_seed() -> u64 {
    0x5eed_0001
}
const fn default_threads() -> usize {
    1
}
const fn default_hot_fraction() -> f64 {
    0.05
}
const fn default_min_hot() -> usize {
    1000
}
const fn default_interval() -> Option<Duration> {
    Some(Duration::from_secs(3600))
}
const fn default_max_tombstone_ratio() -> f64 {
    0.08
}
const fn default_recall_every() -> Option<Duration> {
    Some(Duration::from_secs(600))
}
const fn default_recall_queries() -> usize {
    100
}
const fn default_max_recall_drop() -> f64 {
    0.02
}
const fn default_check_every() -> Duration {
    Duration::from_secs(5)
}
const fn default_true() -> bool {
    true
}
#[allow(clippy::unnecessary_wraps)] // serde's default for an optional section
fn default_refine() -> Option<RefineConfig> {
    Some(RefineConfig::default())
}
const fn default_keep() -> usize {
    2
}

impl Default for HotConfig {
    fn default() -> Self {
        Self {
            max_vectors: default_hot_max_vectors(),
        }
    }
}

impl Default for MainConfig {
    fn default() -> Self {
        Self {
            ef_construction: default_ef_construction(),
            ef_search: default_ef_search(),
            seed: default_seed(),
            keep_pruned: false,
            reverse_links: true,
            refine: default_refine(),
            filter_exact_max: default_filter_exact_max(),
        }
    }
}

impl Default for CompactionConfig {
    fn default() -> Self {
        Self {
            threads: default_threads(),
            hot_fraction: default_hot_fraction(),
            min_hot: default_min_hot(),
            interval: default_interval(),
            max_tombstone_ratio: default_max_tombstone_ratio(),
            check_every: default_check_every(),
            recall_every: default_recall_every(),
            recall_queries: default_recall_queries(),
            max_recall_drop: default_max_recall_drop(),
        }
    }
}

impl Default for SnapshotConfig {
    fn default() -> Self {
        Self {
            enabled: default_true(),
            keep: default_keep(),
        }
    }
}

impl IndexConfig {
    /// A configuration with every default and the given dimension.
    pub fn with_dim(dim: usize) -> Self {
        Self {
            name: default_name(),
            dim,
            shards: default_shards(),
            slice: embedstream_topics::slice::Slice::WHOLE,
            max_k: default_max_k(),
            hot: HotConfig::default(),
            main: MainConfig::default(),
            compaction: CompactionConfig::default(),
            snapshot: SnapshotConfig::default(),
            cold: ColdConfig::default(),
        }
    }

    /// Checks what serde cannot.
    pub fn validate(&self) -> Result<()> {
        let bad = |field, reason| Err(Error::InvalidConfig { field, reason });
        if self.dim == 0 {
            return bad("dim", "must be at least 1");
        }
        if self.shards == 0 || self.shards > u32::MAX as usize {
            return bad("shards", "must be between 1 and 2^32 - 1");
        }
        if self.max_k == 0 {
            return bad("max_k", "must be at least 1");
        }
        if self.cold.enabled && !self.snapshot.enabled {
            return bad("cold.enabled", "the cold tier needs snapshots on");
        }
        if self.cold.enabled && (self.cold.max_segments < 2 || self.cold.segment_max_vectors == 0) {
            return bad(
                "cold.max_segments",
                "must be at least 2, and segment_max_vectors at least 1",
            );
        }
        if self.main.ef_construction == 0 || self.main.ef_search == 0 {
            return bad("main.ef_*", "must be at least 1");
        }
        if let Some(r) = &self.main.refine {
            if !(r.alpha.is_finite() && r.alpha >= 1.0) {
                return bad("main.refine.alpha", "must be a finite number >= 1");
            }
            if r.ef == 0 || r.degree == 0 || !(r.degree..=M0).contains(&r.max_links) {
                return bad(
                    "main.refine",
                    "ef and degree must be at least 1, degree <= max_links <= 64",
                );
            }
        }
        if self.compaction.threads == 0 {
            return bad("compaction.threads", "must be at least 1");
        }
        if !(self.compaction.hot_fraction.is_finite() && self.compaction.hot_fraction >= 0.0) {
            return bad("compaction.hot_fraction", "must be a finite number >= 0");
        }
        if !(0.0..=1.0).contains(&self.compaction.max_tombstone_ratio) {
            return bad("compaction.max_tombstone_ratio", "must be in [0, 1]");
        }
        if self.snapshot.keep < 2 {
            return bad("snapshot.keep", "must be at least 2");
        }
        Ok(())
    }
}

/// Parses `"250ms"`, `"30s"`, `"5m"`, `"1h"`, `"30d"`.
fn parse_duration(s: &str) -> Option<Duration> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit())?;
    let (n, unit) = s.split_at(split);
    let n: u64 = n.parse().ok()?;
    match unit.trim() {
        "ms" => Some(Duration::from_millis(n)),
        "s" => Some(Duration::from_secs(n)),
        "m" => n.checked_mul(60).map(Duration::from_secs),
        "h" => n.checked_mul(3600).map(Duration::from_secs),
        "d" => n.checked_mul(24 * 3600).map(Duration::from_secs),
        _ => None,
    }
}

fn format_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if !ms.is_multiple_of(1000) {
        format!("{ms}ms")
    } else {
        format!("{}s", ms / 1000)
    }
}

pub(crate) mod duration {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer, de::Error as _};

    pub(crate) fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&super::format_duration(*d))
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let s = String::deserialize(d)?;
        super::parse_duration(&s)
            .ok_or_else(|| D::Error::custom(format!("bad duration {s:?}, want e.g. \"30s\"")))
    }
}

mod opt_duration {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer, de::Error as _};

    pub(super) fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => s.serialize_str(&super::format_duration(*d)),
            None => s.serialize_none(),
        }
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<Duration>, D::Error> {
        match Option::<String>::deserialize(d)? {
            None => Ok(None),
            Some(s) => super::parse_duration(&s)
                .map(Some)
                .ok_or_else(|| D::Error::custom(format!("bad duration {s:?}, want e.g. \"30s\""))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minimal_config_gets_defaults() {
        let c: IndexConfig = serde_json::from_str(r#"{"dim": 384}"#).unwrap();
        assert_eq!(c, IndexConfig::with_dim(384));
        assert_eq!(c.compaction.interval, Some(Duration::from_secs(3600)));
        c.validate().unwrap();
    }

    #[test]
    fn durations_and_unknown_fields() {
        let c: IndexConfig = serde_json::from_str(
            r#"{"dim": 8, "compaction": {"interval": "5m", "check_every": "250ms"}}"#,
        )
        .unwrap();
        assert_eq!(c.compaction.interval, Some(Duration::from_secs(300)));
        assert_eq!(c.compaction.check_every, Duration::from_millis(250));
        let back: IndexConfig = serde_json::from_str(&serde_json::to_string(&c).unwrap()).unwrap();
        assert_eq!(back, c);
        let off: IndexConfig =
            serde_json::from_str(r#"{"dim": 8, "compaction": {"interval": null}}"#).unwrap();
        assert_eq!(off.compaction.interval, None);
        assert!(serde_json::from_str::<IndexConfig>(r#"{"dim": 8, "shard": 3}"#).is_err());
        assert!(serde_json::from_str::<IndexConfig>(r#"{"dim": 8, "main": {"m": 16}}"#).is_err());
        assert!(
            serde_json::from_str::<IndexConfig>(
                r#"{"dim": 8, "compaction": {"interval": "5 parsecs"}}"#
            )
            .is_err()
        );
    }

    #[test]
    fn validate_rejects_nonsense() {
        let mut c = IndexConfig::with_dim(0);
        assert!(c.validate().is_err());
        c.dim = 4;
        c.snapshot.keep = 1;
        assert!(c.validate().is_err());
        c.snapshot.keep = 2;
        assert!(c.validate().is_ok());
        for bad in [
            RefineConfig {
                alpha: 0.9,
                ..RefineConfig::default()
            },
            RefineConfig {
                alpha: f32::NAN,
                ..RefineConfig::default()
            },
            RefineConfig {
                max_links: 65,
                ..RefineConfig::default()
            },
            RefineConfig {
                degree: 40,
                max_links: 32,
                ..RefineConfig::default()
            },
            RefineConfig {
                ef: 0,
                ..RefineConfig::default()
            },
        ] {
            c.main.refine = Some(bad);
            assert!(c.validate().is_err(), "{:?}", c.main.refine);
        }
        c.main.refine = None;
        assert!(c.validate().is_ok());
    }
}
