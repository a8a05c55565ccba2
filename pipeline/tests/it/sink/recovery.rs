//! Kill -9 after a compaction wrote its snapshots, with writes in hot that no snapshot holds
//! and more written while the sink is down: the restarted sink loads the snapshots, replays
//! from their offsets, and equals the topic's compacted state.

use std::time::Duration;

use super::{
    Oracle, Put, Sink, assert_exact_search, assert_items, config, produce, record, test_dir,
    unit_vector,
};
use crate::stage::{Platform, kill9};

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
