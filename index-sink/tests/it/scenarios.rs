//! Search correctness, shadowing of stale main copies, idempotent replay and request
//! validation, each run with the data in hot, in main and in the cold tier.

use embedstream_index_sink::{Applied, Error, Query, ShardedIndex};

use crate::common::*;

const DIM: usize = 32;

#[test]
fn search_equals_brute_force_oracle() {
    for stage in STAGES {
        let (index, _dir) = index_for(stage, DIM, 4);
        let mut rng = Rng::new(1);
        let mut oracle = Oracle::default();
        for i in 0..600 {
            let w = upsert(&format!("item-{i:05}"), rng.unit(DIM), 0, i);
            oracle.apply(&w);
            assert_eq!(index.apply(w).unwrap(), Applied::Upserted);
        }
        settle(&index, stage);
        assert_eq!(index.len(), 600);
        for _ in 0..30 {
            let q = rng.unit(DIM);
            for k in [1, 10, 50] {
                assert_same_hits(
                    &search(&index, &q, k),
                    &oracle.search(&q, k),
                    &format!("{stage:?} k={k}"),
                );
            }
        }
        // k above the item count returns everything, ranked.
        let all = search(&index, &rng.unit(DIM), 1000);
        assert_eq!(all.len(), 600);
        assert!(all.windows(2).all(|w| w[0].score >= w[1].score));
    }
}

#[test]
fn updates_and_deletes_hide_stale_copies() {
    for stage in STAGES {
        let (index, _dir) = index_for(stage, DIM, 3);
        let mut rng = Rng::new(2);
        let mut oracle = Oracle::default();
        let mut old = Vec::new();
        for i in 0..300 {
            let v = rng.unit(DIM);
            old.push(v.clone());
            let w = upsert(&format!("item-{i:05}"), v, 0, i);
            oracle.apply(&w);
            index.apply(w).unwrap();
        }
        settle(&index, stage);
        // Move items 0..50 elsewhere, delete 50..100, after the (possible) build.
        for i in 0..100 {
            let id = format!("item-{i:05}");
            let w = if i < 50 {
                upsert(&id, rng.unit(DIM), 0, 1000 + i)
            } else {
                delete(&id, 0, 1000 + i)
            };
            oracle.apply(&w);
            index.apply(w).unwrap();
        }
        if stage == Stage::Main {
            let tomb: usize = index.stats().iter().map(|s| s.main_tombstones).sum();
            assert_eq!(
                tomb, 100,
                "every replaced or deleted main point is a tombstone"
            );
        }
        if stage == Stage::Cold {
            let hidden: usize = index.stats().iter().map(|s| s.cold_hidden).sum();
            assert_eq!(hidden, 100, "every replaced or deleted cold item is hidden");
        }
        for (i, v) in old.iter().enumerate().take(100) {
            let id = format!("item-{i:05}");
            let hits = search(&index, v, 10);
            assert_same_hits(&hits, &oracle.search(v, 10), &format!("{stage:?} {id}"));
            if i >= 50 {
                assert!(
                    hits.iter().all(|h| h.item_id != id),
                    "{stage:?}: deleted {id} returned"
                );
            } else if let Some(h) = hits.iter().find(|h| h.item_id == id) {
                // If still near its old place, only with the new vector's score.
                assert!(
                    h.score < 0.99,
                    "{stage:?}: stale copy of {id} returned: {h:?}"
                );
            }
        }
        assert_same_state(&index, &oracle, (0..300).map(|i| format!("item-{i:05}")));
        // And the updated state survives a further compaction.
        settle(&index, stage.max(Stage::Main));
        if stage == Stage::Cold {
            // A third of each segment hidden: each is rewritten without its hidden items.
            for s in index.stats() {
                assert_eq!(s.cold_hidden, 0, "{s:?}");
            }
        }
        assert_same_state(&index, &oracle, (0..300).map(|i| format!("item-{i:05}")));
        for v in old.iter().take(100) {
            assert_same_hits(
                &search(&index, v, 10),
                &oracle.search(v, 10),
                "after recompaction",
            );
        }
    }
}

#[test]
fn replay_is_idempotent() {
    for stage in STAGES {
        let (index, _dir) = index_for(stage, DIM, 4);
        let mut rng = Rng::new(3);
        let log = random_log(&mut rng, DIM, 200, 1500, 3);
        let mut oracle = Oracle::default();
        for w in &log {
            oracle.apply(w);
            index.apply(w.clone()).unwrap();
        }
        settle(&index, stage);
        let queries: Vec<_> = (0..10).map(|_| rng.unit(DIM)).collect();
        let before: Vec<_> = queries.iter().map(|q| search(&index, q, 20)).collect();
        // Re-deliver everything, and a suffix once more (at-least-once after a rebalance).
        for w in log.iter().chain(&log[1000..]) {
            let applied = index.apply(w.clone()).unwrap();
            assert!(
                matches!(applied, Applied::Stale | Applied::AlreadyCovered),
                "{stage:?}: replay of {w:?} gave {applied:?}"
            );
        }
        if stage != Stage::HotOnly {
            // After a swap the shard skips covered records without looking at the item.
            let w = log
                .iter()
                .find(|w| w.item_id() == "item-00007")
                .unwrap()
                .clone();
            assert_eq!(index.apply(w).unwrap(), Applied::AlreadyCovered);
        }
        let after: Vec<_> = queries.iter().map(|q| search(&index, q, 20)).collect();
        assert_eq!(before, after, "{stage:?}");
        assert_same_state(&index, &oracle, (0..200).map(|i| format!("item-{i:05}")));
        for q in &queries {
            assert_same_hits(&search(&index, q, 20), &oracle.search(q, 20), "oracle");
        }
        // An older write of one item, delivered late, does not win over the newer one.
        let (id, (v, _)) = oracle.items.iter().next().unwrap();
        let stale = upsert(id, rng.unit(DIM), v.partition, v.offset - 1);
        assert_ne!(index.apply(stale).unwrap(), Applied::Upserted);
        assert_eq!(index.lookup(id), Some(*v));
    }
}

#[test]
fn the_later_source_event_wins_whatever_order_the_records_arrive_in() {
    for stage in STAGES {
        let dir = TempDir::new("source-order");
        let c = config_for(stage, DIM, 2);
        let index = ShardedIndex::open(&dir.0, c.clone()).unwrap();
        let mut rng = Rng::new(4);
        let newest = rng.unit(DIM);
        // Record 1 carries source event 10; record 2, written later (a zombie writer, a
        // backfill racing the dual-write), carries the older event 5.
        let a10 = from_source(upsert("a", newest.clone(), 0, 1), 0, 10);
        assert_eq!(index.apply(a10.clone()).unwrap(), Applied::Upserted);
        settle(&index, stage);
        let a5 = from_source(upsert("a", rng.unit(DIM), 0, 2), 0, 5);
        assert_eq!(index.apply(a5).unwrap(), Applied::Stale, "{stage:?}");
        let del3 = from_source(delete("a", 0, 3), 0, 3);
        assert_eq!(index.apply(del3).unwrap(), Applied::Stale, "{stage:?}");
        assert_eq!(index.lookup("a"), Some(a10.version()));
        assert_eq!(search(&index, &newest, 1)[0].item_id, "a");

        // A tombstone from a later event deletes; an older upsert after it stays out, also
        // after a snapshot and a reopen.
        let del11 = from_source(delete("a", 0, 4), 0, 11);
        assert_eq!(index.apply(del11).unwrap(), Applied::Deleted);
        settle(&index, stage);
        index.persist().unwrap();
        let reopened = ShardedIndex::open(&dir.0, c).unwrap();
        let a9 = from_source(upsert("a", rng.unit(DIM), 1, 0), 0, 9);
        assert_eq!(reopened.apply(a9).unwrap(), Applied::Stale, "{stage:?}");
        assert_eq!(reopened.lookup("a"), None);

        // Without a source on both sides, the embedding topic's order decides.
        let b = upsert("b", rng.unit(DIM), 0, 6);
        assert_eq!(reopened.apply(b).unwrap(), Applied::Upserted);
        let b_later = from_source(upsert("b", rng.unit(DIM), 0, 7), 0, 1);
        assert_eq!(reopened.apply(b_later.clone()).unwrap(), Applied::Upserted);
        assert_eq!(reopened.lookup("b"), Some(b_later.version()));
    }
}

#[test]
fn bad_requests_and_records_are_rejected_without_effect() {
    let index = ShardedIndex::new(config(4, 2)).unwrap();
    index
        .apply(upsert("a", vec![1.0, 0.0, 0.0, 0.0], 0, 0))
        .unwrap();
    let q = |v: &[f32], k| {
        index.search(Query {
            vector: v,
            k,
            ef_search: None,
            filter: None,
            hot_only: false,
        })
    };
    assert!(matches!(
        q(&[1.0, 0.0, 0.0], 1),
        Err(Error::DimensionMismatch {
            expected: 4,
            got: 3
        })
    ));
    assert!(matches!(
        q(&[1.0, f32::NAN, 0.0, 0.0], 1),
        Err(Error::NonFinite { index: 1 })
    ));
    assert!(matches!(q(&[0.0; 4], 1), Err(Error::ZeroVector)));
    assert!(matches!(
        q(&[1.0, 0.0, 0.0, 0.0], 0),
        Err(Error::KOutOfRange { k: 0, .. })
    ));
    assert!(matches!(
        q(&[1.0, 0.0, 0.0, 0.0], 1001),
        Err(Error::KOutOfRange { k: 1001, max: 1000 })
    ));
    let bad = [
        upsert("b", vec![1.0; 5], 0, 1),
        upsert("b", vec![f32::INFINITY, 0.0, 0.0, 0.0], 0, 2),
        upsert("b", vec![0.0; 4], 0, 3),
        upsert("", vec![1.0; 4], 0, 4),
    ];
    for w in bad {
        let e = index.apply(w).unwrap_err();
        assert!(e.is_poison() && !e.is_retryable(), "{e}");
    }
    assert_eq!(index.len(), 1);
    assert_eq!(index.lookup("b"), None);
    // Ingest normalizes: a scaled vector scores like the unit one.
    index
        .apply(upsert("c", vec![0.0, 5.0, 0.0, 0.0], 0, 5))
        .unwrap();
    let hits = q(&[0.0, 2.0, 0.0, 0.0], 1).unwrap();
    assert_eq!(hits[0].item_id, "c");
    assert!((hits[0].score - 1.0).abs() < 1e-6);
}

#[test]
fn hot_limit_is_retryable_and_compaction_frees_it() {
    let mut c = config(4, 1);
    c.hot.max_vectors = 3;
    let index = ShardedIndex::new(c).unwrap();
    for i in 0..3 {
        index
            .apply(upsert(
                &format!("i{i}"),
                vec![1.0, i as f32, 0.0, 0.0],
                0,
                i,
            ))
            .unwrap();
    }
    // Replacing an item already in hot needs no room.
    index
        .apply(upsert("i0", vec![0.0, 1.0, 0.0, 0.0], 0, 3))
        .unwrap();
    let full = index.apply(upsert("i3", vec![1.0; 4], 0, 4)).unwrap_err();
    assert!(full.is_retryable(), "{full}");
    assert_eq!(index.lookup("i3"), None);
    // The caller pauses the partition, compaction drains hot, the same record is retried.
    settle(&index, Stage::Main);
    assert_eq!(
        index.apply(upsert("i3", vec![1.0; 4], 0, 4)).unwrap(),
        Applied::Upserted
    );
    assert_eq!(index.len(), 4);
}
