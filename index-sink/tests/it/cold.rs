//! The cold tier: items move out of memory into mapped segments as they age, queries can ask
//! for the hot tier only, segments merge and their files are pruned, and a snapshot whose
//! segment is gone falls back to a replay.

use std::time::Duration;

use embedstream_index_sink::{
    Applied, Attributes, CompactionReason, IndexConfig, Query, ShardedIndex, Upsert, Write,
};
use embedstream_topics::time::now_ms;

use crate::common::*;

const DIM: usize = 16;

fn cold_config(window: Duration, min_move: usize) -> IndexConfig {
    let mut c = config(DIM, 2);
    c.cold.enabled = true;
    c.cold.hot_window = window;
    c.cold.min_move = min_move;
    c.compaction.recall_every = None;
    c
}

fn at(id: &str, vector: Vec<f32>, offset: i64, event_time_ms: i64) -> Write {
    Write::Upsert(Upsert {
        item_id: id.to_owned(),
        vector,
        partition: 0,
        offset,
        event_time_ms,
        source: None,
        attributes: Attributes::default(),
    })
}

fn hot_only(index: &ShardedIndex, q: &[f32], k: usize) -> Vec<String> {
    let hits = index
        .search(Query {
            vector: q,
            k,
            ef_search: None,
            filter: None,
            hot_only: true,
        })
        .unwrap();
    hits.into_iter().map(|h| h.item_id).collect()
}

fn compact_all(index: &ShardedIndex, reason: CompactionReason) {
    for shard in 0..index.config().shards {
        index.compact(shard, reason).unwrap().unwrap();
    }
}

fn segment_files(dir: &std::path::Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".seg"))
        .collect();
    names.sort();
    names
}

#[test]
fn items_move_to_the_cold_tier_as_they_age_and_hot_only_queries_skip_it() {
    let dir = TempDir::new("cold-age");
    let index = ShardedIndex::open(&dir.0, cold_config(Duration::from_secs(3), 10)).unwrap();
    let mut rng = Rng::new(11);
    let mut oracle = Oracle::default();
    let now = now_ms();
    // 200 items from last week, 200 from now.
    for i in 0..400 {
        let when = if i < 200 {
            now - 7 * 24 * 3600 * 1000
        } else {
            now
        };
        let w = at(&format!("item-{i:05}"), rng.unit(DIM), i, when);
        oracle.apply(&w);
        assert_eq!(index.apply(w).unwrap(), Applied::Upserted);
    }
    compact_all(&index, CompactionReason::Manual);
    let stats = index.stats();
    let sum =
        |f: fn(&embedstream_index_sink::ShardStats) -> usize| stats.iter().map(f).sum::<usize>();
    assert_eq!(sum(|s| s.cold_vectors), 200);
    assert_eq!(sum(|s| s.main_vectors), 200);
    assert_eq!(sum(|s| s.cold_segments), 2);
    assert!(stats.iter().all(|s| s.cold_bytes > 0));
    assert_eq!(segment_files(&dir.0).len(), 2);
    assert_eq!(index.len(), 400);
    for _ in 0..20 {
        let q = rng.unit(DIM);
        assert_same_hits(&search(&index, &q, 10), &oracle.search(&q, 10), "all tiers");
        // Hot only: exactly the recent items' top 10.
        let mut recent = oracle.clone();
        recent.items.retain(|id, _| id.as_str() >= "item-00200");
        let want: Vec<String> = recent
            .search(&q, 10)
            .into_iter()
            .map(|h| h.item_id)
            .collect();
        assert_eq!(hot_only(&index, &q, 10), want);
    }
    // The recent items age past the window: the planner moves them (policy `age`), with
    // nothing written.
    std::thread::sleep(Duration::from_millis(3200));
    let aged: usize = index.stats().iter().map(|s| s.aged_vectors).sum();
    assert_eq!(aged, 200);
    let plan = index.plan();
    assert_eq!(plan.len(), 2, "{plan:?}");
    assert!(plan.iter().all(|(_, r)| *r == CompactionReason::Age));
    assert_eq!(index.compact_due().unwrap(), 2);
    let stats = index.stats();
    assert_eq!(stats.iter().map(|s| s.cold_vectors).sum::<usize>(), 400);
    assert_eq!(stats.iter().map(|s| s.main_vectors).sum::<usize>(), 0);
    let q = rng.unit(DIM);
    assert!(hot_only(&index, &q, 10).is_empty());
    assert_same_hits(&search(&index, &q, 10), &oracle.search(&q, 10), "all cold");
}

#[test]
fn cold_items_are_replaced_deleted_merged_and_read_back_after_a_restart() {
    let dir = TempDir::new("cold-merge");
    let mut c = cold_config(Duration::from_secs(3600), 1);
    c.cold.max_segments = 2;
    let old = now_ms() - 48 * 3600 * 1000;
    let index = ShardedIndex::open(&dir.0, c.clone()).unwrap();
    let mut rng = Rng::new(12);
    let mut oracle = Oracle::default();
    let mut offset = 0;
    let write = |index: &ShardedIndex, oracle: &mut Oracle, w: Write| {
        oracle.apply(&w);
        index.apply(w).unwrap()
    };
    // Three rounds of old items, each compacted into new segments: at most two per shard.
    for round in 0..3 {
        for i in 0..100 {
            offset += 1;
            let id = format!("item-{round}-{i:03}");
            write(&index, &mut oracle, at(&id, rng.unit(DIM), offset, old));
        }
        compact_all(&index, CompactionReason::Manual);
        for s in index.stats() {
            assert!(s.cold_segments <= 2, "{s:?}");
        }
    }
    assert_eq!(index.len(), 300);
    // Replace 20 cold items (one with a recent event time: it goes to main) and delete 20.
    for i in 0..40 {
        offset += 1;
        let id = format!("item-1-{i:03}");
        let w = match i {
            0 => at(&id, rng.unit(DIM), offset, now_ms()),
            1..20 => at(&id, rng.unit(DIM), offset, old),
            _ => delete(&id, 0, offset),
        };
        write(&index, &mut oracle, w);
    }
    let ids: Vec<String> = oracle.items.keys().cloned().collect();
    let all_ids = (0..3).flat_map(|r| (0..100).map(move |i| format!("item-{r}-{i:03}")));
    assert_same_state(&index, &oracle, all_ids.clone());
    // A late copy of a replaced cold item does not win.
    let stale = at("item-1-005", rng.unit(DIM), offset - 35, old);
    assert_ne!(index.apply(stale).unwrap(), Applied::Upserted);
    compact_all(&index, CompactionReason::Manual);
    assert_same_state(&index, &oracle, all_ids.clone());
    let main: usize = index.stats().iter().map(|s| s.main_vectors).sum();
    assert_eq!(main, 1, "the replaced item with a recent event time");
    let queries: Vec<Vec<f32>> = (0..20).map(|_| rng.unit(DIM)).collect();
    for q in &queries {
        assert_same_hits(&search(&index, q, 10), &oracle.search(q, 10), "merged");
    }
    // Segment files: only those the kept snapshots name.
    let files = segment_files(&dir.0);
    let segments: usize = index.stats().iter().map(|s| s.cold_segments).sum();
    assert!(
        files.len() >= segments && files.len() <= 2 * 2 * 2,
        "{files:?}"
    );

    index.persist().unwrap();
    drop(index);
    let reopened = ShardedIndex::open(&dir.0, c).unwrap();
    assert_same_state(&reopened, &oracle, all_ids);
    assert_eq!(reopened.len(), ids.len());
    for q in &queries {
        assert_same_hits(&search(&reopened, q, 10), &oracle.search(q, 10), "reopened");
    }
}

#[test]
fn a_snapshot_whose_segment_is_gone_falls_back_to_a_replay() {
    let dir = TempDir::new("cold-missing");
    let c = cold_config(Duration::from_secs(3600), 1);
    let old = now_ms() - 48 * 3600 * 1000;
    let mut rng = Rng::new(13);
    let mut oracle = Oracle::default();
    let log: Vec<Write> = (0..200)
        .map(|i| at(&format!("item-{i:05}"), rng.unit(DIM), i, old))
        .collect();
    {
        let index = ShardedIndex::open(&dir.0, c.clone()).unwrap();
        for w in &log {
            oracle.apply(w);
            index.apply(w.clone()).unwrap();
        }
        compact_all(&index, CompactionReason::Manual);
        assert_eq!(index.resume_offsets().get(&0), Some(&200));
    }
    for name in segment_files(&dir.0) {
        std::fs::remove_file(dir.0.join(name)).unwrap();
    }
    let index = ShardedIndex::open(&dir.0, c).unwrap();
    // Neither shard can use its snapshot: the partition is read from the beginning.
    assert!(index.resume_offsets().is_empty());
    assert_eq!(index.len(), 0);
    for w in &log {
        assert_eq!(index.apply(w.clone()).unwrap(), Applied::Upserted);
    }
    let q = rng.unit(DIM);
    assert_same_hits(&search(&index, &q, 10), &oracle.search(&q, 10), "replayed");
}

#[test]
fn the_cold_tier_needs_a_snapshot_directory() {
    let c = cold_config(Duration::from_secs(3600), 1);
    assert!(ShardedIndex::new(c.clone()).is_err());
    let mut no_snapshots = c;
    no_snapshots.snapshot.enabled = false;
    let dir = TempDir::new("cold-no-snap");
    assert!(ShardedIndex::open(&dir.0, no_snapshots).is_err());
}
