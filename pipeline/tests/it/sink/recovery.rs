//! Kill -9 after a compaction wrote its snapshots, with writes in hot that no snapshot holds
//! and more written while the sink is down: the restarted sink loads the snapshots, replays
//! from their offsets, and equals the topic's compacted state. And on a topic whose log
//! cleaner really runs: a snapshot older than the topic keeps tombstones is not resumed from.

use std::time::Duration;

use super::{
    Oracle, Put, Sink, assert_exact_search, assert_items, config, produce, record, test_dir,
    unit_vector,
};
use crate::stage::{Platform, kill9, terminate};

#[tokio::test(flavor = "multi_thread")]
async fn kill_9_after_a_snapshot_then_restart_equals_the_compacted_topic() {
    let platform = Platform::new("sink-recovery");
    platform.ensure_topics().await;
    let dir = test_dir(&platform);
    let mut oracle = Oracle::default();
    // min_hot 150 and no tombstone policy: the 400 first items (≈ 200 per shard) compact;
    // the ≈ 110 writes per shard of phase 2 stay in hot and pending deletes, shadowing their
    // stale copies in the snapshotted main, so the kill loses them from memory.
    let config = config(150, 1.0);

    let puts = (0..400)
        .map(|i| Put::Record(record(&format!("item-{i}"), unit_vector(i))))
        .collect();
    produce(&platform, &mut oracle, puts).await;
    let mut sink = Sink::start(&platform, &dir, &config, "first").await;
    sink.wait_caught_up(&platform, Duration::from_secs(30))
        .await;
    sink.wait_compactions(1, Duration::from_secs(30)).await;
    let snapshots = |dir: &std::path::Path| {
        std::fs::read_dir(dir)
            .map(|d| {
                d.filter_map(Result::ok)
                    .filter(|e| e.file_name().to_string_lossy().ends_with(".snap"))
                    .count()
            })
            .unwrap_or(0)
    };
    let snap_dir = dir.join("data").join(platform.embeddings()).join("test");
    assert!(
        snapshots(&snap_dir) >= 2,
        "each shard wrote a snapshot in {}",
        snap_dir.display()
    );

    // Phase 2: updates and deletes of items in main, new items; applied, then kill -9.
    let mut puts = Vec::new();
    for i in (0..400).step_by(5) {
        puts.push(Put::Record(record(
            &format!("item-{i}"),
            unit_vector(50_000 + i),
        )));
    }
    for i in (1..400).step_by(9) {
        puts.push(Put::Tombstone(format!("item-{i}")));
    }
    for i in 400..460 {
        puts.push(Put::Record(record(&format!("item-{i}"), unit_vector(i))));
    }
    produce(&platform, &mut oracle, puts).await;
    sink.wait_caught_up(&platform, Duration::from_secs(30))
        .await;
    assert_items(&sink, &oracle).await;
    let before = sink.stats().await;
    assert!(
        before["shards"]
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s["hot_vectors"].as_u64().unwrap() > 0),
        "phase 2 is in hot when the sink dies: {before}"
    );
    kill9(&mut sink.child);

    // Phase 3, while the sink is down: more updates, deletes of updated items, re-inserts of
    // deleted ones.
    let mut puts = Vec::new();
    for i in (0..400).step_by(10) {
        puts.push(Put::Tombstone(format!("item-{i}")));
    }
    for i in (1..400).step_by(18) {
        puts.push(Put::Record(record(
            &format!("item-{i}"),
            unit_vector(70_000 + i),
        )));
    }
    for i in (2..460).step_by(13) {
        puts.push(Put::Record(record(
            &format!("item-{i}"),
            unit_vector(90_000 + i),
        )));
    }
    produce(&platform, &mut oracle, puts).await;

    let mut sink = Sink::start(&platform, &dir, &config, "second").await;
    sink.wait_caught_up(&platform, Duration::from_secs(30))
        .await;
    let log = sink.log_text();
    assert!(
        log.contains("Loaded shard snapshot") && log.contains("from its snapshot offset"),
        "the restart used the snapshots; log: {log}"
    );
    assert_items(&sink, &oracle).await;
    assert_exact_search(
        &sink,
        &oracle,
        "exact",
        &[7000, 7001, 7002, 7003, 7004, 7005],
    )
    .await;
    assert_newest_vectors(&sink, &oracle).await;

    // Phase 4: enough writes for the next compactions, and a kill -9 as soon as one is seen
    // running (or when the writes are done, if none was seen), then a restart.
    let puts: Vec<Put> = (0..460)
        .step_by(2)
        .map(|i| Put::Record(record(&format!("item-{i}"), unit_vector(110_000 + i))))
        .chain((460..700).map(|i| Put::Record(record(&format!("item-{i}"), unit_vector(i)))))
        .collect();
    let producing = {
        let platform = platform.clone();
        tokio::spawn(async move {
            let mut written = Oracle::default();
            produce(&platform, &mut written, puts).await;
            written
        })
    };
    let mut seen_compacting = false;
    while !producing.is_finished() {
        let stats = sink.stats().await;
        if stats["shards"]
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s["compacting"] == true)
        {
            seen_compacting = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    kill9(&mut sink.child);
    eprintln!("killed the sink while a compaction ran: {seen_compacting}");
    oracle.items.extend(producing.await.unwrap().items);
    let sink = Sink::start(&platform, &dir, &config, "third").await;
    sink.wait_caught_up(&platform, Duration::from_secs(30))
        .await;
    assert_items(&sink, &oracle).await;
    assert_exact_search(&sink, &oracle, "exact", &[8000, 8001, 8002, 8003]).await;
    assert_newest_vectors(&sink, &oracle).await;
}

/// No stale vector: rewritten items are their own nearest neighbours by their newest vector.
async fn assert_newest_vectors(sink: &Sink, oracle: &Oracle) {
    for i in (1..700).step_by(4) {
        let id = format!("item-{i}");
        if let Some((Some(v), _)) = oracle.items.get(&id) {
            let top = sink.top_k("exact", v, 1).await;
            assert_eq!(top[0].0, id);
            assert!(top[0].1 > 0.9999, "{id}: {top:?}");
        }
    }
}

/// Reads the embedding topic until none of `gone` has a record left on it (the log cleaner
/// compacted the segments and then expired the tombstones), writing a few records meanwhile so
/// that segments roll; those writes go into the oracle like any other.
async fn wait_cleaned(platform: &Platform, oracle: &mut Oracle, gone: &[String]) {
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    for round in 0u64.. {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let rolls = (0..6)
            .map(|j| {
                Put::Record(record(
                    &format!("roll-{j}"),
                    unit_vector(1_000_000 + round * 6 + j),
                ))
            })
            .collect();
        produce(platform, oracle, rolls).await;
        let left: Vec<String> = platform
            .read_all(&platform.embeddings())
            .into_iter()
            .filter_map(|(k, _, _, _)| k.map(|k| String::from_utf8_lossy(&k).into_owned()))
            .filter(|k| gone.contains(k))
            .collect();
        if left.is_empty() {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the cleaner left records of deleted items after 120 s: {left:?}"
        );
    }
}

/// On a compacted embedding topic whose cleaner really runs: a sink stopped longer than the
/// topic keeps tombstones does not resume from its snapshot (the deletes written meanwhile are
/// gone from the topic) but rebuilds from the beginning, and a new replica reading the cleaned
/// topic from scratch ends with the same live state.
#[tokio::test(flavor = "multi_thread")]
async fn a_snapshot_older_than_the_tombstone_retention_is_not_resumed_from() {
    let platform = Platform::new("sink-tombstone-expiry");
    platform
        .ensure_eagerly_cleaned(&platform.embeddings())
        .await;
    platform.ensure_topics().await;
    let dir = test_dir(&platform);
    let mut oracle = Oracle::default();
    let config = config(1000, 1.0);
    let puts = (0..120)
        .map(|i| Put::Record(record(&format!("item-{i}"), unit_vector(i))))
        .collect();
    produce(&platform, &mut oracle, puts).await;
    let mut sink = Sink::start(&platform, &dir, &config, "first").await;
    sink.wait_caught_up(&platform, Duration::from_secs(30))
        .await;
    assert_items(&sink, &oracle).await;
    assert!(
        terminate(&mut sink.child).success(),
        "a clean stop writes the final snapshots"
    );

    // While the sink is down: deletes, which the cleaner then removes for good.
    let gone: Vec<String> = (0..120).step_by(4).map(|i| format!("item-{i}")).collect();
    let puts = gone.iter().map(|id| Put::Tombstone(id.clone())).collect();
    produce(&platform, &mut oracle, puts).await;
    wait_cleaned(&platform, &mut oracle, &gone).await;

    let sink = Sink::start(&platform, &dir, &config, "second").await;
    sink.wait_caught_up(&platform, Duration::from_secs(30))
        .await;
    let log = sink.log_text();
    assert!(
        log.contains("Snapshot is older than the topic keeps tombstones"),
        "the restart set its snapshots aside; log: {log}"
    );
    assert_items(&sink, &oracle).await;
    drop(sink);

    // A new replica, from nothing, on the cleaned topic.
    let fresh = dir.join("fresh");
    std::fs::create_dir_all(&fresh).unwrap();
    let replica = Sink::start(&platform, &fresh, &config, "fresh").await;
    replica
        .wait_caught_up(&platform, Duration::from_secs(30))
        .await;
    assert_items(&replica, &oracle).await;
}
