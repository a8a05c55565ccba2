use std::collections::BTreeMap;

use embedstream_index_sink::{
    Attributes, CompactionReason, Delete, Hit, IndexConfig, Query, ShardedIndex, Source, Upsert,
    Version, Write, dot, normalized,
};
use embedstream_schemas::filter::{AttributeKind, Declared, parse};
use embedstream_topics::testing::XorShift;

/// The tests' generator ([`XorShift`]) with what these tests draw from it.
pub struct Rng(XorShift);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(XorShift::mixed(seed))
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0.next_u64()
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }
    /// A random unit vector (uniform direction).
    pub fn unit(&mut self, dim: usize) -> Vec<f32> {
        loop {
            let v: Vec<f32> = (0..dim)
                .map(|_| {
                    // Sum of uniforms: close enough to Gaussian for a uniform direction.
                    (0..4).map(|_| self.0.unit_interval()).sum::<f32>() - 2.0
                })
                .collect();
            if let Ok(n) = normalized(&v, dim) {
                return n;
            }
        }
    }
}

/// Where the data is when the scenario checks it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Stage {
    /// Nothing compacted: every item in hot.
    HotOnly,
    /// Every shard compacted after the writes: everything in main.
    Main,
    /// The cold tier on with a one-day hot window, and every shard compacted after the
    /// writes: every item (their event times are in 2023) in memory-mapped cold segments.
    Cold,
}

pub const STAGES: [Stage; 3] = [Stage::HotOnly, Stage::Main, Stage::Cold];

/// `config(dim, shards)`, with the cold tier on for [`Stage::Cold`].
pub fn config_for(stage: Stage, dim: usize, shards: usize) -> IndexConfig {
    let mut c = config(dim, shards);
    if stage == Stage::Cold {
        c.cold.enabled = true;
        c.cold.hot_window = std::time::Duration::from_secs(24 * 3600);
        c.cold.min_move = 1;
    }
    c
}

/// An empty index for the stage: in memory, or in a fresh directory for the cold tier.
pub fn index_for(stage: Stage, dim: usize, shards: usize) -> (ShardedIndex, Option<TempDir>) {
    let c = config_for(stage, dim, shards);
    if stage == Stage::Cold {
        let dir = TempDir::new("cold");
        (ShardedIndex::open(&dir.0, c).unwrap(), Some(dir))
    } else {
        (ShardedIndex::new(c).unwrap(), None)
    }
}

pub fn settle(index: &ShardedIndex, stage: Stage) {
    if stage != Stage::HotOnly {
        for shard in 0..index.config().shards {
            index
                .compact(shard, CompactionReason::Manual)
                .unwrap()
                .unwrap();
        }
        for s in index.stats() {
            assert_eq!(s.hot_vectors, 0, "{s:?}");
            assert_eq!(s.pending_deletes, 0, "{s:?}");
            if stage == Stage::Cold {
                assert_eq!(s.main_vectors, 0, "{s:?}");
            }
        }
    }
}

pub fn config(dim: usize, shards: usize) -> IndexConfig {
    let mut c = IndexConfig::with_dim(dim);
    c.shards = shards;
    c.compaction.threads = 1;
    // Small shards: ef >= shard size makes main's search exhaustive, so it can be compared
    // with the oracle exactly.
    c.main.ef_search = 400;
    c.main.ef_construction = 64;
    c
}

/// The expected state: item -> (version, normalized vector). Applies writes with the same
/// rule the index documents (newer offset in the partition wins).
#[derive(Debug, Default, Clone)]
pub struct Oracle {
    pub items: BTreeMap<String, (Version, Vec<f32>)>,
    held: BTreeMap<String, Version>,
}

impl Oracle {
    pub fn apply(&mut self, w: &Write) {
        let v = w.version();
        if self
            .held
            .get(w.item_id())
            .is_some_and(|h| !v.supersedes(*h))
        {
            return;
        }
        self.held.insert(w.item_id().to_owned(), v);
        match w {
            Write::Upsert(u) => {
                let n = normalized(&u.vector, u.vector.len()).unwrap();
                self.items.insert(u.item_id.clone(), (v, n));
            }
            Write::Delete(d) => {
                self.items.remove(&d.item_id);
            }
        }
    }

    /// Exact top-k with the index's order (score desc, then id asc).
    pub fn search(&self, q: &[f32], k: usize) -> Vec<Hit> {
        let q = normalized(q, q.len()).unwrap();
        let mut all: Vec<Hit> = self
            .items
            .iter()
            .map(|(id, (_, v))| Hit {
                item_id: id.clone(),
                score: dot(&q, v),
            })
            .collect();
        all.sort_by(|a, b| {
            b.score
                .total_cmp(&a.score)
                .then_with(|| a.item_id.cmp(&b.item_id))
        });
        all.truncate(k);
        all
    }
}

pub fn upsert(id: &str, vector: Vec<f32>, partition: i32, offset: i64) -> Write {
    Write::Upsert(Upsert {
        item_id: id.to_owned(),
        vector,
        partition,
        offset,
        event_time_ms: 1_700_000_000_000 + offset,
        source: None,
        attributes: Attributes::new([("parity".to_owned(), (offset % 2).to_string())]),
    })
}

/// Only items whose last write was at an even offset (`upsert` gives each write its
/// offset's parity as an attribute).
pub fn search_even(index: &ShardedIndex, q: &[f32], k: usize) -> Vec<Hit> {
    let declared = Declared::from([("parity".to_owned(), AttributeKind::Number)]);
    let filter = parse(
        &serde_json::json!({"attribute": "parity", "eq": 0}),
        &declared,
    )
    .unwrap();
    index
        .search(Query {
            vector: q,
            k,
            ef_search: None,
            filter: Some(&filter),
            hot_only: false,
        })
        .unwrap()
}

pub fn delete(id: &str, partition: i32, offset: i64) -> Write {
    Write::Delete(Delete {
        item_id: id.to_owned(),
        partition,
        offset,
        source: None,
    })
}

/// `w` computed from the source event at `offset` of partition `partition` of `items`.
pub fn from_source(mut w: Write, partition: i32, offset: i64) -> Write {
    let source = Some(Source { partition, offset });
    match &mut w {
        Write::Upsert(u) => u.source = source,
        Write::Delete(d) => d.source = source,
    }
    w
}

pub fn search(index: &ShardedIndex, q: &[f32], k: usize) -> Vec<Hit> {
    index
        .search(Query {
            vector: q,
            k,
            ef_search: None,
            filter: None,
            hot_only: false,
        })
        .unwrap()
}

/// Every item the oracle holds is visible at its version, nothing else is.
pub fn assert_same_state(
    index: &ShardedIndex,
    oracle: &Oracle,
    ids: impl IntoIterator<Item = String>,
) {
    for id in ids {
        assert_eq!(
            index.lookup(&id),
            oracle.items.get(&id).map(|(v, _)| *v),
            "item {id}"
        );
    }
    assert_eq!(index.len(), oracle.items.len());
}

/// Same ids in the same order, scores equal to float precision.
pub fn assert_same_hits(got: &[Hit], want: &[Hit], what: &str) {
    let g: Vec<_> = got.iter().map(|h| h.item_id.as_str()).collect();
    let w: Vec<_> = want.iter().map(|h| h.item_id.as_str()).collect();
    assert_eq!(g, w, "{what}");
    for (a, b) in got.iter().zip(want) {
        assert!((a.score - b.score).abs() < 1e-5, "{what}: {a:?} vs {b:?}");
    }
}

/// A random log over `partitions` partitions: upserts of `ids` items, re-upserts and
/// deletes, each partition's offsets increasing. Items are keyed to a partition by id, as a
/// keyed topic does.
pub fn random_log(
    rng: &mut Rng,
    dim: usize,
    ids: usize,
    len: usize,
    partitions: i32,
) -> Vec<Write> {
    let mut next = vec![0i64; partitions as usize];
    (0..len)
        .map(|_| {
            let i = rng.below(ids as u64);
            let id = format!("item-{i:05}");
            let p = (i % partitions as u64) as i32;
            let o = next[p as usize];
            next[p as usize] += 1 + rng.below(3) as i64;
            // Sources in the same order as the records (as the stage writes them), so that
            // snapshots carry them.
            let w = if rng.below(10) == 0 {
                delete(&id, p, o)
            } else {
                upsert(&id, rng.unit(dim), p, o)
            };
            from_source(w, p, 2 * o)
        })
        .collect()
}

/// A fresh directory under the system temp dir, removed on drop.
pub struct TempDir(pub std::path::PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> Self {
        use std::sync::atomic::{AtomicU64, Ordering};
        static N: AtomicU64 = AtomicU64::new(0);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos();
        let p = std::env::temp_dir().join(format!(
            "index-sink-{tag}-{}-{}-{nanos}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&p).unwrap();
        Self(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// What a consumer does after `open`: seek to the resume offsets and apply from there.
pub fn replay(index: &ShardedIndex, log: &[Write]) {
    let resume = index.resume_offsets();
    for w in log {
        let v = w.version();
        if resume
            .get(&v.partition)
            .is_some_and(|&next| v.offset < next)
        {
            continue;
        }
        index.apply(w.clone()).unwrap();
    }
}
