//! The backfill killed with -9 mid-way and restarted, while the stage dual-writes updates and
//! deletes: it resumes from its checkpoint, and on the new topic every live item ends with its
//! newest event, the deleted one with none.

use std::collections::HashMap;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use embedstream_schemas::Codec;
use embedstream_schemas::records::{EmbeddingRecord, ItemEvent};
use tokio_util::sync::CancellationToken;

use super::*;
use crate::stage::{Platform, delete, terminate, upsert};

fn backfill_command(p: &Platform, extra: &[&str]) -> Command {
    let mut args = vec!["backfill", "--chunk", "6"];
    args.extend_from_slice(extra);
    let mut cmd = migrate_command(p, &args);
    cmd.env("RUST_LOG", "info");
    cmd
}

/// The last event per item on `items`: `(offset, deleted)`.
async fn latest_items(p: &Platform) -> HashMap<String, (i32, i64, bool)> {
    let codec = Codec::new(&p.registry);
    let mut out = HashMap::new();
    for (key, value, partition, offset) in p.read_all(&p.names.items()) {
        let key = String::from_utf8(key.unwrap()).unwrap();
        let deleted = match value {
            None => true,
            Some(v) => {
                let e: ItemEvent = codec.decode(&v).await.unwrap();
                e.op == embedstream_schemas::records::ItemOp::Delete
            }
        };
        out.insert(key, (partition, offset, deleted));
    }
    out
}

/// On the new version's topic, every item's last record is of its newest event on `items`, and
/// a deleted item has none; returns the live items' last records.
async fn assert_newest_events_won(p: &Platform) -> HashMap<String, EmbeddingRecord> {
    let latest = latest_items(p).await;
    let on_new: HashMap<String, Option<EmbeddingRecord>> = version_records(p, MPNET)
        .await
        .into_iter()
        .map(|(id, mut records)| (id, records.pop().and_then(|(_, r)| r)))
        .collect();
    let mut live = HashMap::new();
    for (id, (partition, offset, deleted)) in &latest {
        let got = on_new.get(id).cloned().flatten();
        if *deleted {
            assert!(
                got.is_none(),
                "{id} was deleted but the new topic has {got:?}"
            );
            continue;
        }
        let r = got.unwrap_or_else(|| panic!("{id} is missing on the new topic"));
        assert_eq!(
            (r.source.partition, r.source.offset),
            (*partition, *offset),
            "{id}: the new topic's last record is not of the item's newest event"
        );
        live.insert(id.clone(), r);
    }
    live
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_backfill_resumes_and_the_newest_event_of_every_item_wins() {
    let p = Platform::new("backfill-kill");
    p.ensure_topics().await;
    activate_minilm(&p).await;
    let (mut stage, stage_log) = p.spawn_stage_logged("stage");
    // The corpus from before the migration; ids 0..10 have an older text first.
    let older: Vec<ItemEvent> = (0..10)
        .map(|i| upsert(&format!("b-{i}"), &format!("An outdated text of item {i}.")))
        .collect();
    p.produce_events(&older).await;
    let corpus: Vec<ItemEvent> = (0..60)
        .map(|i| {
            upsert(
                &format!("b-{i}"),
                &format!("Package {i}: a small utility that does thing number {i}."),
            )
        })
        .collect();
    p.produce_events(&corpus).await;
    p.wait_caught_up(Duration::from_secs(180)).await;

    // The running stage loads MPNet and dual-writes from now on.
    start_dual_write(&p, &stage_log).await;

    let token = CancellationToken::new();
    let log = control(&p, &token).await;
    let migration = current_migration_id(&log);
    let mut first = Killed(
        backfill_command(&p, &["--max-rate", "6"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    // Kill -9 once some chunks are checkpointed and some are not.
    let deadline = Instant::now() + Duration::from_secs(180);
    let at_kill = loop {
        let parts: Vec<_> = log
            .state()
            .backfill(&migration)
            .into_iter()
            .cloned()
            .collect();
        let done: i64 = parts.iter().map(|b| b.end - b.next_end).sum();
        if parts.len() == 3 && done >= 12 {
            first.kill();
            break parts;
        }
        assert!(Instant::now() < deadline, "no checkpoint: {parts:?}");
        sleep_ms(50).await;
    };
    assert!(
        at_kill.iter().any(|b| !b.done()),
        "killed before the end: {at_kill:?}"
    );
    let done_at_kill: i64 = at_kill.iter().map(|b| b.embedded).sum();

    // Updates and a delete after the backfill's range: the dual-write's to embed; the
    // backfill must not overwrite them with the older texts it finds further back.
    let updates: Vec<ItemEvent> = (0..5)
        .chain(20..25)
        .map(|i| {
            upsert(
                &format!("b-{i}"),
                &format!("Updated during the migration: {i}."),
            )
        })
        .chain([delete("b-30")])
        .collect();
    p.produce_events(&updates).await;

    let out = backfill_command(&p, &[]).output().unwrap();
    let report: serde_json::Value = serde_json::from_str(ok(&out).trim()).unwrap();
    assert_eq!(report["complete"], true, "{report}");
    let resumed = report["embedded"].as_i64().unwrap();
    assert!(
        resumed < 60 - done_at_kill + 18,
        "the second run redid at most one chunk per partition: {resumed} after {done_at_kill}"
    );
    p.wait_caught_up(Duration::from_secs(180)).await;
    assert!(terminate(&mut stage).success());

    let live = assert_newest_events_won(&p).await;
    assert!(live.values().all(|r| r.vector.len() == 768));
    assert_eq!(live.len(), 59);
    let status: serde_json::Value = serde_json::from_str(
        ok(&migrate(
            &p,
            &[
                "status",
                "--json",
                "--stage-metrics",
                "http://127.0.0.1:1/metrics",
            ],
        ))
        .trim(),
    )
    .unwrap();
    assert_eq!(status["migration"]["backfill_fraction"], 1.0, "{status}");
    // Writes per version: each topic's records as the broker counts them; no stage answers.
    for (i, model) in [crate::stage::MINILM, MPNET].into_iter().enumerate() {
        let v = &status["versions"][i];
        assert_eq!(v["model"], model, "{status}");
        // End offsets summed (compaction may have removed records before a partition's
        // last, and each transaction's commit marker takes an offset).
        let topic = p.names.embeddings(&model.parse().unwrap());
        let reader: rdkafka::consumer::BaseConsumer = p.kafka.client().create().unwrap();
        let ends: i64 = (0..3)
            .map(|partition| {
                rdkafka::consumer::Consumer::fetch_watermarks(
                    &reader,
                    &topic,
                    partition,
                    Duration::from_secs(10),
                )
                .unwrap()
                .1
            })
            .sum();
        assert_eq!(v["topic_records"], ends, "{status}");
        assert!(v["stage_ok"].is_null(), "{status}");
    }
    // The consistency checker agrees: the two versions hold the same events.
    let check: serde_json::Value = serde_json::from_str(
        ok(&migrate(
            &p,
            &[
                "check",
                "--sample",
                "1",
                "--settle",
                "2",
                "--dry-run",
                "--json",
            ],
        ))
        .trim(),
    )
    .unwrap();
    assert_eq!(check["sampled"], 60, "{check}");
    assert_eq!(check["divergent"], 0, "{check}");
    token.cancel();
}

/// A backfill over an `items` that the log cleaner has compacted (older texts and deleted
/// items gone, offsets with gaps): every live item ends on the new topic with its newest
/// event, and the deleted ones are not there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backfill_over_a_compacted_items_topic_rebuilds_the_live_state() {
    let p = Platform::new("backfill-cleaned");
    p.ensure_eagerly_cleaned(&p.names.items()).await;
    p.ensure_topics().await;
    activate_minilm(&p).await;
    // Each event's attributes name its round: the replayed records carry the newest's.
    for round in 0..3 {
        let events: Vec<ItemEvent> = (0..30)
            .map(|i| ItemEvent {
                attributes: HashMap::from([("round".to_owned(), round.to_string())]),
                ..upsert(&format!("c-{i}"), &format!("Text {round} of item {i}."))
            })
            .collect();
        p.produce_events(&events).await;
        sleep_ms(150).await;
    }
    let deleted: Vec<String> = (0..30).step_by(5).map(|i| format!("c-{i}")).collect();
    let deletes: Vec<ItemEvent> = deleted.iter().map(|id| delete(id)).collect();
    p.produce_events(&deletes).await;
    // Wait until the cleaner kept one event per item (segments roll on later writes).
    let deadline = Instant::now() + Duration::from_secs(120);
    for round in 0.. {
        sleep_ms(300).await;
        let rolls: Vec<ItemEvent> = (0..6)
            .map(|j| upsert(&format!("roll-{j}"), &format!("Roll {round} of {j}.")))
            .collect();
        p.produce_events(&rolls).await;
        let mut per_key: HashMap<Vec<u8>, usize> = HashMap::new();
        for (key, _, _, _) in p.read_all(&p.names.items()) {
            *per_key.entry(key.unwrap()).or_default() += 1;
        }
        let compacted = (0..30).all(|i| per_key.get(format!("c-{i}").as_bytes()) == Some(&1));
        if compacted {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the cleaner did not compact items in 120 s: {per_key:?}"
        );
    }

    ok(&migrate(
        &p,
        &["start", "--from", crate::stage::MINILM, "--to", MPNET],
    ));
    let out = backfill_command(&p, &[]).output().unwrap();
    let report: serde_json::Value = serde_json::from_str(ok(&out).trim()).unwrap();
    assert_eq!(report["complete"], true, "{report}");

    let live = assert_newest_events_won(&p).await;
    assert!(deleted.iter().all(|id| !live.contains_key(id)), "{live:?}");
    assert_eq!(
        live.len(),
        30 - deleted.len() + 6,
        "the live items and the 6 roll items"
    );
    for (id, r) in live.iter().filter(|(id, _)| id.starts_with("c-")) {
        assert_eq!(
            r.attributes,
            HashMap::from([("round".to_owned(), "2".to_owned())]),
            "{id}: the replayed record carries its newest event's attributes"
        );
    }
}

/// The broker frozen (SIGSTOP) for 10 s while a backfill is half-way, with the stage
/// dual-writing: nothing ends a range early or moves a checkpoint past what was written; the
/// same backfill run finishes once the broker thaws, and every item ends with its newest event.
///
/// A freeze longer than the controller's `broker.session.timeout.ms` (9 s) fences the single
/// broker, every partition is leaderless for a moment, and librdkafka 2.12 clients that saw the
/// leaderless metadata can stop fetching for good, or, for a group consumer whose session timed
/// out meanwhile, never rejoin the group (<https://github.com/confluentinc/librdkafka/issues/5430>).
/// The control log's followers and the stage's watchdog replace such consumers, so the stage
/// catches up by itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_frozen_for_10s_mid_backfill_skips_nothing() {
    let stack = crate::common::OwnStack::start("backfill-frozen").await;
    let p = Platform::on(&stack.bootstrap, &stack.registry, "backfill-frozen");
    p.ensure_topics().await;
    activate_minilm(&p).await;
    let (mut stage, stage_log) = p.spawn_stage_logged("stage");
    let corpus: Vec<ItemEvent> = (0..60)
        .map(|i| {
            upsert(
                &format!("f-{i}"),
                &format!("Package {i}: a small utility that does thing number {i}."),
            )
        })
        .collect();
    p.produce_events(&corpus).await;
    p.wait_caught_up(Duration::from_secs(180)).await;
    start_dual_write(&p, &stage_log).await;

    let token = CancellationToken::new();
    let log = control(&p, &token).await;
    let migration = current_migration_id(&log);
    let backfill_log = std::env::temp_dir()
        .join("embedstream-tests")
        .join(format!("{}-backfill.log", p.prefix));
    let backfill = backfill_command(&p, &["--max-rate", "4"])
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&backfill_log).unwrap())
        .spawn()
        .unwrap();
    let mut backfill = Killed(backfill);
    let deadline = Instant::now() + Duration::from_secs(180);
    let at_stop = loop {
        let parts: Vec<_> = log
            .state()
            .backfill(&migration)
            .into_iter()
            .cloned()
            .collect();
        let done: i64 = parts.iter().map(|b| b.end - b.next_end).sum();
        if parts.len() == 3 && done >= 12 {
            stack.stop_broker();
            break parts;
        }
        assert!(Instant::now() < deadline, "no checkpoint: {parts:?}");
        sleep_ms(50).await;
    };
    tokio::time::sleep(Duration::from_secs(10)).await;
    stack.continue_broker();
    assert!(
        at_stop.iter().any(|b| !b.done()),
        "the backfill had finished before the broker froze: {at_stop:?}"
    );
    // Updates after the thaw: the dual-write's to embed, newer than what the backfill reads.
    let updates: Vec<ItemEvent> = (0..5)
        .map(|i| upsert(&format!("f-{i}"), &format!("Updated after the thaw: {i}.")))
        .chain([delete("f-30")])
        .collect();
    p.produce_events(&updates).await;

    let deadline = Instant::now() + Duration::from_secs(240);
    let status = loop {
        if let Some(status) = backfill.0.try_wait().unwrap() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "the backfill did not finish after the thaw; its log: {}",
            std::fs::read_to_string(&backfill_log).unwrap_or_default()
        );
        sleep_ms(200).await;
    };
    let mut stdout = String::new();
    std::io::Read::read_to_string(&mut backfill.0.stdout.take().unwrap(), &mut stdout).unwrap();
    assert!(
        status.success(),
        "the backfill failed ({status}); its log: {}",
        std::fs::read_to_string(&backfill_log).unwrap_or_default()
    );
    let report: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(report["complete"], true, "{report}");
    let seen = report["embedded"].as_i64().unwrap() + report["skipped"].as_i64().unwrap();
    assert_eq!(seen, 60, "one run read every item once: {report}");
    p.wait_caught_up(Duration::from_secs(180)).await;
    assert!(terminate(&mut stage).success());
    let live = assert_newest_events_won(&p).await;
    assert_eq!(live.len(), 59);
    token.cancel();
}
