//! Nothing committed is lost: kill -9 mid-stream, a broker restart, a rebalance between two
//! stage processes — each ends with exactly the live ids on the embedding topic, each with the
//! vector of its last text, and no deleted id alive.

use std::time::Duration;

use super::*;
use crate::common::{OwnStack, free_port, spawn_registry, wait_http};

const N: usize = 1200;

async fn produce_scenario(p: &Platform) -> HashMap<String, String> {
    p.ensure_topics().await;
    let (events, tombstones, live) = scenario(N);
    p.produce_events(&events).await;
    p.produce_raw(&tombstones).await;
    live
}

/// Exactly-once (the default) with the replica's stable transactional id: the restarted
/// process fences the killed one's open transaction, and no event is written twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_mid_stream_then_restart_loses_nothing_and_writes_each_event_once() {
    let p = Platform::new("kill9");
    let live = produce_scenario(&p).await;
    let id = format!("{}-stage-0", p.prefix);
    let args = ["--transactional-id", id.as_str()];
    let (mut stage, _) = p.spawn_stage_with("first", &args);
    p.wait_records(300, Duration::from_secs(120)).await;
    kill9(&mut stage);
    let lag = p.group_lag();
    assert!(
        lag > 0,
        "the kill came after the stage had finished; the test proves nothing"
    );
    let (mut stage, _) = p.spawn_stage_with("second", &args);
    p.wait_caught_up(Duration::from_secs(180)).await;
    assert!(terminate(&mut stage).success());
    assert_state(&p, &live).await;
    assert_each_event_once(&p).await;
}

/// At-least-once may write an event twice after a kill; it never loses one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_least_once_kill_9_mid_stream_then_restart_loses_nothing() {
    let p = Platform::new("kill9-alo");
    let live = produce_scenario(&p).await;
    let args = ["--delivery", "at-least-once"];
    let (mut stage, _) = p.spawn_stage_with("first", &args);
    p.wait_records(300, Duration::from_secs(120)).await;
    kill9(&mut stage);
    assert!(
        p.group_lag() > 0,
        "the kill came after the stage had finished"
    );
    let (mut stage, _) = p.spawn_stage_with("second", &args);
    p.wait_caught_up(Duration::from_secs(180)).await;
    assert!(terminate(&mut stage).success());
    assert_state(&p, &live).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rebalance_between_two_stage_processes_loses_nothing() {
    let p = Platform::new("rebalance");
    let live = produce_scenario(&p).await;
    let (mut a, a_log) = p.spawn_stage_logged("a");
    p.wait_records(100, Duration::from_secs(120)).await;
    // B joins while A is busy: the group rebalances, A drains what it gives up.
    let (mut b, b_log) = p.spawn_stage_logged("b");
    wait_log(&b_log, "Partitions assigned", Duration::from_secs(90)).await;
    wait_log(
        &a_log,
        "Drained revoked partitions",
        Duration::from_secs(10),
    )
    .await;
    assert!(
        p.group_lag() > 0,
        "A finished before B joined; the test proves nothing (make the scenario bigger)"
    );
    // A leaves: B takes its partitions over.
    assert!(terminate(&mut a).success(), "A drains and exits cleanly");
    p.wait_caught_up(Duration::from_secs(180)).await;
    assert!(terminate(&mut b).success());
    assert_state(&p, &live).await;
    assert_each_event_once(&p).await;
}

/// A rebalance whose drain cannot finish (1 s) while updates keep arriving: batches of the
/// revoked partitions still in flight are aborted (exactly-once) and read again by their new
/// owner; nothing is lost and no stale vector is left.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rebalance_with_a_1s_drain_while_updates_arrive_loses_nothing() {
    let p = Platform::new("rebalance-1s");
    let mut live = produce_scenario(&p).await;
    // Sixteen batches in flight take seconds to embed: the drain cannot finish in 1 s.
    let args = ["--drain-timeout-secs", "1", "--in-flight-batches", "16"];
    let (mut a, a_log) = p.spawn_stage_with("a", &args);
    p.wait_records(100, Duration::from_secs(120)).await;
    let updates: Vec<ItemEvent> = (0..200)
        .map(|i| {
            let id = format!("item-{}", i * 5);
            let text =
                format!("Package {id}, rewritten while the group rebalances: tools for {i}.");
            live.insert(id.clone(), text.clone());
            upsert(&id, &text)
        })
        .collect();
    let writer = {
        let p = p.clone();
        tokio::spawn(async move {
            for chunk in updates.chunks(20) {
                p.produce_events(chunk).await;
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        })
    };
    let (mut b, b_log) = p.spawn_stage_with("b", &args);
    wait_log(&b_log, "Partitions assigned", Duration::from_secs(90)).await;
    writer.await.unwrap();
    p.wait_caught_up(Duration::from_secs(300)).await;
    let _ = terminate(&mut a);
    let _ = terminate(&mut b);
    let a_text = std::fs::read_to_string(&a_log).unwrap();
    assert!(
        a_text.contains("Revoke drain timed out"),
        "A's drain finished in time; the test proves nothing (make the batches in flight bigger)"
    );
    assert_state(&p, &live).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_restart_while_running_loses_nothing() {
    let mut stack = OwnStack::start("own-broker").await;
    let p = Platform::on(&stack.bootstrap, &stack.registry, "broker-restart");
    let live = produce_scenario(&p).await;
    let mut stage = p.spawn_stage("stage");
    p.wait_records(300, Duration::from_secs(120)).await;

    // The broker dies hard and comes back on the same storage and port.
    stack.kill_broker();
    tokio::time::sleep(Duration::from_secs(3)).await;
    stack.restart_broker();

    p.wait_caught_up(Duration::from_secs(240)).await;
    assert!(
        stage.try_wait().unwrap().is_none(),
        "the stage rode out the restart instead of exiting"
    );
    assert!(terminate(&mut stage).success());
    assert_state(&p, &live).await;
}

/// The stage's registry process killed (-9) for 30 s, on its own `_schemas` topic of the
/// shared broker: events the stage has no schema cached for wait, nothing is dead-lettered,
/// and once the registry is back (same topic, same ids) every event is embedded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_registry_down_for_30s_pauses_the_stage_and_loses_nothing() {
    let bootstrap = embedstream_topics::testing::bootstrap();
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}");
    let prefix = embedstream_topics::testing::unique("registry-down");
    let dir = std::env::temp_dir().join("embedstream-tests");
    std::fs::create_dir_all(&dir).unwrap();
    let topic = format!("{prefix}._schemas");
    let start_registry = |run: &str| {
        let log = dir.join(format!("{prefix}-registry-{run}.log"));
        spawn_registry(&bootstrap, port, Some(&topic), &log)
    };
    let mut registry = start_registry("first");
    wait_http(&format!("{url}/subjects")).await;
    let p = Platform::on(&bootstrap, &url, "registry-down");
    p.ensure_topics().await;
    let (mut stage, log) = p.spawn_stage_logged("stage");
    wait_log(&log, "Partitions assigned", Duration::from_secs(90)).await;

    // Encoded while the registry is up (the schema is registered), produced after it died:
    // the stage has never decoded an item event, so it must ask the registry.
    let (events, tombstones, live) = scenario(300);
    let codec = Codec::new(&p.registry);
    let mut raw = Vec::new();
    for e in &events {
        let bytes = codec.encode(&p.names.items(), e).await.unwrap();
        raw.push((Some(e.item_id.as_bytes().to_vec()), Some(bytes)));
    }
    raw.extend(tombstones);
    registry.kill().unwrap();
    registry.wait().unwrap();
    p.produce_raw(&raw).await;
    wait_log_count(
        &log,
        "Registry unavailable; retrying the record.",
        3,
        Duration::from_secs(60),
    )
    .await;
    tokio::time::sleep(Duration::from_secs(30)).await;
    assert!(
        p.read_all(&p.embeddings()).is_empty(),
        "records were written while the registry was down"
    );
    assert!(
        stage.try_wait().unwrap().is_none(),
        "the stage waits, it does not exit"
    );

    let mut registry = start_registry("second");
    wait_http(&format!("{url}/subjects")).await;
    p.wait_caught_up(Duration::from_secs(240)).await;
    assert!(terminate(&mut stage).success());
    assert_state(&p, &live).await;
    assert!(
        p.dead_letters().await.is_empty(),
        "a record was dead-lettered"
    );
    let _ = registry.kill();
    let _ = registry.wait();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registry_answering_500_pauses_the_stage_and_dead_letters_nothing() {
    let real = Platform::new("registry-500");
    real.ensure_topics().await;
    let failing = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let p = Platform {
        registry: crate::common::failing_registry(real.registry.clone(), failing.clone()).await,
        ..real.clone()
    };
    let (mut stage, log) = p.spawn_stage_logged("stage");
    wait_log(&log, "Partitions assigned", Duration::from_secs(90)).await;

    // The registry fails from before the first event: the stage has no schema cached.
    failing.store(true, std::sync::atomic::Ordering::SeqCst);
    let events: Vec<ItemEvent> = (0..20)
        .map(|i| upsert(&format!("pkg:{i}"), &format!("package number {i}")))
        .collect();
    real.produce_events(&events).await;
    wait_log_count(
        &log,
        "Registry unavailable; retrying the record.",
        3,
        Duration::from_secs(60),
    )
    .await;
    assert!(
        p.read_all(&p.embeddings()).is_empty(),
        "records were written while the registry failed"
    );
    assert!(
        p.dead_letters().await.is_empty(),
        "a record was dead-lettered"
    );

    failing.store(false, std::sync::atomic::Ordering::SeqCst);
    p.wait_caught_up(Duration::from_secs(120)).await;
    assert!(terminate(&mut stage).success());
    let live: HashMap<String, String> = events
        .iter()
        .map(|e| (e.item_id.clone(), e.text.clone().unwrap_or_default()))
        .collect();
    assert_state(&p, &live).await;
    assert!(
        p.dead_letters().await.is_empty(),
        "a record was dead-lettered"
    );
}
