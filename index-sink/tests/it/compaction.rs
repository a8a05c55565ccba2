//! Compaction while writers and readers run: nothing lost, newer writes kept.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use embedstream_index_sink::{CompactionReason, ShardedIndex};

use crate::common::*;

const DIM: usize = 32;

#[test]
fn compaction_during_concurrent_writes_loses_nothing() {
    let mut c = config(DIM, 2);
    c.main.ef_search = 3000;
    let index = Arc::new(ShardedIndex::new(c).unwrap());
    let mut rng = Rng::new(11);
    let mut oracle = Oracle::default();
    // A main to start from.
    for i in 0..1000 {
        let p = (i % 2) as i32;
        let w = upsert(&format!("item-{i:05}"), rng.unit(DIM), p, i / 2);
        oracle.apply(&w);
        index.apply(w).unwrap();
    }
    for s in 0..2 {
        index.compact(s, CompactionReason::Manual).unwrap();
    }
    // Then two partitions' worth of updates, deletes and new items, applied by one thread
    // each (the caller contract), while a third thread compacts and a fourth queries.
    let logs: Vec<Vec<_>> = (0..2)
        .map(|p| {
            let mut rng = Rng::new(100 + p as u64);
            (0..1500)
                .map(|j| {
                    let i = rng.below(1000) * 2 + p as u64;
                    let id = format!("item-{i:05}");
                    let o = 10_000 + j;
                    if rng.below(5) == 0 {
                        delete(&id, p, o)
                    } else {
                        upsert(&id, rng.unit(DIM), p, o)
                    }
                })
                .collect()
        })
        .collect();
    for log in &logs {
        for w in log {
            oracle.apply(w);
        }
    }
    let done = Arc::new(AtomicBool::new(false));
    let overlapped = Arc::new(AtomicUsize::new(0));
    let finished = Arc::new(AtomicUsize::new(0));
    std::thread::scope(|scope| {
        let writers: Vec<_> = logs
            .iter()
            .map(|log| {
                let (index, finished) = (&index, &finished);
                scope.spawn(move || {
                    for (j, w) in log.iter().enumerate() {
                        index.apply(w.clone()).unwrap();
                        // Let compactions finish between bursts of writes, so that builds
                        // certainly overlap writes whatever the machine's speed.
                        if j % 250 == 249 {
                            let start = Instant::now();
                            while finished.load(Ordering::SeqCst) < j / 250 + 1
                                && start.elapsed() < Duration::from_secs(20)
                            {
                                std::thread::sleep(Duration::from_millis(1));
                            }
                        }
                    }
                })
            })
            .collect();
        let compactor = {
            let (index, done, overlapped, finished) = (&index, &done, &overlapped, &finished);
            scope.spawn(move || {
                let mut shard = 0;
                while !done.load(Ordering::SeqCst) {
                    index.compact(shard, CompactionReason::Manual).unwrap();
                    finished.fetch_add(1, Ordering::SeqCst);
                    if !done.load(Ordering::SeqCst) {
                        overlapped.fetch_add(1, Ordering::SeqCst);
                    }
                    shard = 1 - shard;
                }
            })
        };
        let reader = {
            let (index, done) = (&index, &done);
            scope.spawn(move || {
                let mut rng = Rng::new(7);
                let mut n = 0;
                while !done.load(Ordering::SeqCst) || n == 0 {
                    let hits = search(index, &rng.unit(DIM), 20);
                    assert_eq!(hits.len(), 20);
                    let mut ids: Vec<_> = hits.iter().map(|h| &h.item_id).collect();
                    ids.sort();
                    ids.dedup();
                    assert_eq!(
                        ids.len(),
                        20,
                        "an item was returned twice (stale copy visible)"
                    );
                    n += 1;
                }
            })
        };
        for w in writers {
            w.join().unwrap();
        }
        done.store(true, Ordering::SeqCst);
        compactor.join().unwrap();
        reader.join().unwrap();
    });
    assert!(
        overlapped.load(Ordering::SeqCst) >= 1,
        "no compaction overlapped the writes"
    );
    let ids = (0..2000).map(|i| format!("item-{i:05}"));
    assert_same_state(&index, &oracle, ids.clone());
    // Once more after a final compaction that merges whatever stayed in hot.
    for s in 0..2 {
        index.compact(s, CompactionReason::Manual).unwrap();
    }
    assert_same_state(&index, &oracle, ids);
    let mut rng = Rng::new(8);
    for _ in 0..20 {
        let q = rng.unit(DIM);
        assert_same_hits(&search(&index, &q, 10), &oracle.search(&q, 10), "final");
    }
    let counts: u64 = index
        .stats()
        .iter()
        .map(|s| s.last_compaction.as_ref().unwrap().count)
        .sum();
    assert!(counts >= 5, "{counts}");
}

#[test]
fn maintenance_thread_builds_first_main_and_reacts_to_tombstones() {
    let mut c = config(DIM, 2);
    c.compaction.min_hot = 100;
    c.compaction.check_every = Duration::from_millis(20);
    c.compaction.interval = None;
    let index = Arc::new(ShardedIndex::new(c).unwrap());
    let maintenance = index.spawn_maintenance();
    let mut rng = Rng::new(5);
    let mut oracle = Oracle::default();
    for i in 0..400 {
        let w = upsert(&format!("item-{i:05}"), rng.unit(DIM), 0, i);
        oracle.apply(&w);
        index.apply(w).unwrap();
    }
    let wait = |what: &str, cond: &dyn Fn() -> bool| {
        let start = Instant::now();
        while !cond() {
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "timed out waiting for {what}"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    };
    wait("first build", &|| {
        index
            .stats()
            .iter()
            .all(|s| s.main_vectors > 0 && s.hot_vectors == 0)
    });
    // 15% deletes: above the 8% tombstone policy, with an empty hot (hot-share cannot fire);
    // the tombstone policy must trigger the rebuild.
    for i in 0..60 {
        let w = delete(&format!("item-{i:05}"), 0, 1000 + i);
        oracle.apply(&w);
        index.apply(w).unwrap();
    }
    wait("tombstone rebuild", &|| {
        index
            .stats()
            .iter()
            .all(|s| s.main_tombstones == 0 && s.pending_deletes == 0)
    });
    maintenance.stop();
    let reasons: Vec<_> = index
        .stats()
        .iter()
        .map(|s| s.last_compaction.clone().unwrap().reason)
        .collect();
    assert!(
        reasons.contains(&CompactionReason::Tombstones),
        "{reasons:?}"
    );
    assert_same_state(&index, &oracle, (0..400).map(|i| format!("item-{i:05}")));
}
