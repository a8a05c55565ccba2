//! Faults under the sink: kill -9 while a compaction is running, the broker killed (-9)
//! and restarted under a steady 2,000 writes/s, and the broker frozen past its session. Each ends with the sink equal to the topic,
//! per key: every live id at its last write, no deleted id.

use std::time::{Duration, Instant};

use embedstream_schemas::Codec;
use rdkafka::producer::FutureRecord;

use super::{
    Oracle, Put, Sink, assert_exact_search, assert_items, config, produce, record, test_dir,
    unit_vector,
};
use crate::common::OwnStack;
use crate::stage::{Platform, kill9, terminate};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_while_a_compaction_runs_then_restart_equals_the_topic() {
    let platform = Platform::new("sink-kill-compacting");
    platform.ensure_topics().await;
    let dir = test_dir(&platform);
    let mut oracle = Oracle::default();
    // A shard's first compaction starts once its hot holds 3,000 vectors and builds a graph of
    // them: seconds of work on the one compaction thread.
    let config = config(3000, 1.0);
    let puts = (0..5000)
        .map(|i| Put::Record(record(&format!("item-{i}"), unit_vector(i))))
        .collect();
    produce(&platform, &mut oracle, puts).await;
    let mut sink = Sink::start(&platform, &dir, &config, "first").await;
    sink.wait_caught_up(&platform, Duration::from_secs(60))
        .await;
    // Past the threshold: the next records start a compaction; kill while it runs.
    let puts = (5000..7000)
        .map(|i| Put::Record(record(&format!("item-{i}"), unit_vector(i))))
        .collect();
    produce(&platform, &mut oracle, puts).await;
    let deadline = Instant::now() + Duration::from_secs(120);
    let shard = loop {
        let stats = sink.stats().await;
        let running = stats["shards"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["compacting"] == true)
            .map(|s| s["shard"].as_u64().unwrap());
        if let Some(shard) = running {
            kill9(&mut sink.child);
            break shard;
        }
        assert!(
            Instant::now() < deadline,
            "no compaction started: {stats}; log: {}",
            sink.log_text()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    assert!(
        !sink
            .log_text()
            .contains(&format!("Compacted shard. shard={shard}")),
        "shard {shard}'s compaction finished before the kill; the test proves nothing"
    );

    // While the sink is down: updates, deletes, new items.
    let mut puts = Vec::new();
    for i in (0..7000).step_by(7) {
        puts.push(Put::Record(record(
            &format!("item-{i}"),
            unit_vector(100_000 + i),
        )));
    }
    for i in (3..7000).step_by(11) {
        puts.push(Put::Tombstone(format!("item-{i}")));
    }
    for i in 7000..7300 {
        puts.push(Put::Record(record(&format!("item-{i}"), unit_vector(i))));
    }
    produce(&platform, &mut oracle, puts).await;

    let sink = Sink::start(&platform, &dir, &config, "second").await;
    sink.wait_caught_up(&platform, Duration::from_secs(120))
        .await;
    assert_items(&sink, &oracle).await;
    assert_exact_search(&sink, &oracle, "exact", &[1, 2, 3, 4, 5]).await;
    // The interrupted compaction runs again to its end, and the answer stays the same.
    sink.wait_compactions(1, Duration::from_secs(180)).await;
    assert_items(&sink, &oracle).await;
    assert_exact_search(&sink, &oracle, "exact", &[6, 7, 8]).await;
}

/// `rate` writes/s for `secs` seconds over `ids` item ids (one in ten a tombstone), sent in
/// ticks of 10 ms whatever the broker does; returns the oracle of what was delivered (every
/// write must be) and how many were sent.
async fn steady_load(platform: Platform, rate: u64, secs: u64, ids: u64) -> (Oracle, u64) {
    let codec = Codec::new(&platform.registry);
    let topic = platform.embeddings();
    let producer = platform.producer();
    let per_tick = rate / 100;
    let mut tick = tokio::time::interval(Duration::from_millis(10));
    let mut sent = Vec::new();
    let mut n = 0u64;
    for _ in 0..secs * 100 {
        tick.tick().await;
        for _ in 0..per_tick {
            let id = format!("item-{}", (n * 7919) % ids);
            let vector = (n % 10 != 9).then(|| unit_vector(1_000_000 + n));
            let payload = match &vector {
                Some(v) => Some(codec.encode(&topic, &record(&id, v.clone())).await.unwrap()),
                None => None,
            };
            let mut r = FutureRecord::<[u8], [u8]>::to(&topic).key(id.as_bytes());
            if let Some(p) = &payload {
                r = r.payload(p);
            }
            let delivery = producer.send_result(r).map_err(|(e, _)| e).unwrap();
            sent.push((id, vector, delivery));
            n += 1;
        }
    }
    let mut oracle = Oracle::default();
    for (id, vector, delivery) in sent {
        match delivery.await.unwrap() {
            Ok(d) => oracle.observe(id, vector, (d.partition, d.offset)),
            Err((e, _)) => panic!("{id} was not delivered: {e}"),
        }
    }
    (oracle, n)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_killed_under_2k_writes_per_second_loses_nothing_at_the_sink() {
    let mut stack = OwnStack::start("sink-broker-kill").await;
    let platform = Platform::on(&stack.bootstrap, &stack.registry, "sink-broker-kill");
    platform.ensure_topics().await;
    let dir = test_dir(&platform);
    // Compactions keep running under the load.
    let config = config(1000, 0.1);
    let mut sink = Sink::start(&platform, &dir, &config, "sink").await;
    let writer = tokio::spawn(steady_load(platform.clone(), 2000, 20, 3000));
    tokio::time::sleep(Duration::from_secs(6)).await;
    tokio::task::block_in_place(|| {
        stack.kill_broker();
        std::thread::sleep(Duration::from_secs(2));
        stack.restart_broker();
    });
    let (oracle, sent) = writer.await.unwrap();
    assert_eq!(sent, 40_000);
    sink.wait_caught_up(&platform, Duration::from_secs(180))
        .await;
    assert!(
        sink.child.try_wait().unwrap().is_none(),
        "the sink rode out the broker's restart instead of exiting; log: {}",
        sink.log_text()
    );
    assert_items(&sink, &oracle).await;
    assert_exact_search(&sink, &oracle, "exact", &[11, 12, 13]).await;
    assert!(terminate(&mut sink.child).success());
}

/// The broker frozen (SIGSTOP) for 12 s, longer than the controller's 9 s broker session, so
/// it is fenced and its partitions are leaderless for a moment: the sink keeps reading what is
/// written after the thaw (librdkafka clients that saw leaderless partitions can otherwise stop
/// fetching for good) and ends equal to the topic.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_frozen_past_its_session_leaves_the_sink_current() {
    let stack = OwnStack::start("sink-broker-frozen").await;
    let platform = Platform::on(&stack.bootstrap, &stack.registry, "sink-broker-frozen");
    platform.ensure_topics().await;
    let dir = test_dir(&platform);
    let mut oracle = Oracle::default();
    let puts = |round: u64| {
        (0..300)
            .map(|i| Put::Record(record(&format!("item-{i}"), unit_vector(round * 1000 + i))))
            .collect()
    };
    produce(&platform, &mut oracle, puts(1)).await;
    let mut sink = Sink::start(&platform, &dir, &config(1000, 0.1), "sink").await;
    sink.wait_caught_up(&platform, Duration::from_secs(60))
        .await;
    tokio::task::block_in_place(|| {
        stack.stop_broker();
        std::thread::sleep(Duration::from_secs(12));
        stack.continue_broker();
    });
    // Every item rewritten after the thaw: a sink that stopped fetching serves round 1.
    produce(&platform, &mut oracle, puts(2)).await;
    sink.wait_caught_up(&platform, Duration::from_secs(180))
        .await;
    assert_items(&sink, &oracle).await;
    assert_exact_search(&sink, &oracle, "exact", &[21, 22, 23]).await;
    assert!(terminate(&mut sink.child).success());
}
