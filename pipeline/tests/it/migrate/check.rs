//! The consistency checker against the real broker: items from before the migration (never
//! backfilled), a record of an older event and a record of a deleted item written to the new
//! topic late — it finds each kind, re-queues them through the new model, and a second check
//! finds nothing; the divergence ratio is served on `/metrics`.

use std::process::Stdio;
use std::time::{Duration, Instant};

use embedstream_schemas::Codec;
use embedstream_schemas::records::{EmbeddingRecord, SourceCoordinates};
use rdkafka::producer::FutureRecord;

use super::*;
use crate::common::free_port;
use crate::stage::{MINILM, Platform, delete, terminate, upsert};

fn check(p: &Platform, extra: &[&str]) -> serde_json::Value {
    let mut args = vec!["check", "--sample", "1", "--settle", "1", "--json"];
    args.extend_from_slice(extra);
    let out = migrate(p, &args);
    serde_json::from_str(ok(&out).trim()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_checker_finds_and_requeues_what_the_new_version_misses() {
    let p = Platform::new("migrate-check");
    p.ensure_topics().await;
    activate_minilm(&p).await;
    let (mut stage, stage_log) = p.spawn_stage_logged("stage");
    let before: Vec<_> = (0..8)
        .map(|i| {
            upsert(
                &format!("a-{i}"),
                &format!("An item from before the migration, {i}."),
            )
        })
        .collect();
    p.produce_events(&before).await;
    p.wait_caught_up(Duration::from_secs(180)).await;

    start_dual_write(&p, &stage_log).await;
    let during: Vec<_> = (0..4)
        .map(|i| {
            upsert(
                &format!("b-{i}"),
                &format!("Written during the migration, {i}."),
            )
        })
        .chain([upsert("b-0", "The newer text of b-0."), delete("b-1")])
        .collect();
    p.produce_events(&during).await;
    p.wait_caught_up(Duration::from_secs(180)).await;
    assert!(terminate(&mut stage).success());

    // A late writer (a backfill of an older snapshot, say) leaves two wrong records on the new
    // topic: b-0 from its first event, b-1 alive after its delete.
    let events: Vec<_> = p
        .read_all(&p.names.items())
        .into_iter()
        .filter_map(|(k, _, partition, offset)| {
            Some((String::from_utf8(k?).ok()?, partition, offset))
        })
        .collect();
    let first_event = |id: &str| {
        events
            .iter()
            .find(|(k, _, _)| k == id)
            .map(|(_, p, o)| (*p, *o))
            .unwrap()
    };
    let new_state = version_records(&p, MPNET).await;
    let some_vector = new_state["b-2"].last().unwrap().1.clone().unwrap();
    let codec = Codec::new(&p.registry);
    let new_topic = p.names.embeddings(&MPNET.parse().unwrap());
    let producer = p.producer();
    for id in ["b-0", "b-1"] {
        let (partition, offset) = first_event(id);
        let record = EmbeddingRecord {
            item_id: id.to_owned(),
            source: SourceCoordinates {
                topic: p.names.items(),
                partition,
                offset,
            },
            ..some_vector.clone()
        };
        let bytes = codec.encode(&new_topic, &record).await.unwrap();
        producer
            .send(
                FutureRecord::to(&new_topic).key(id).payload(&bytes),
                Duration::from_secs(30),
            )
            .await
            .map_err(|(e, _)| e)
            .unwrap();
    }

    let first = check(&p, &[]);
    assert_eq!(first["sampled"], 12, "{first}");
    assert_eq!(first["divergent"], 10, "{first}");
    assert_eq!(first["kinds"]["missing_in_new"], 8, "{first}");
    assert_eq!(first["kinds"]["stale_in_new"], 1, "{first}");
    assert_eq!(first["kinds"]["deleted_in_old"], 1, "{first}");
    assert_eq!(first["requeued"], 10, "{first}");
    let ratio = first["divergence_ratio"].as_f64().unwrap();
    assert!((ratio - 10.0 / 12.0).abs() < 1e-9, "{first}");

    // Re-queued through the new model: every item's last record on the new topic is the old
    // version's event (or its delete), in the partition the stage writes that key to.
    let old_state = version_records(&p, MINILM).await;
    let new_state = version_records(&p, MPNET).await;
    for (id, records) in &old_state {
        let (old_partition, old_last) = records.last().unwrap();
        let new_records = &new_state[id];
        assert!(
            new_records.iter().all(|(q, _)| q == old_partition),
            "{id}: records in several partitions of the new topic: {new_records:?}"
        );
        let new_last = &new_records.last().unwrap().1;
        match (old_last, new_last) {
            (None, None) => {}
            (Some(o), Some(n)) => {
                assert_eq!(
                    (n.source.partition, n.source.offset, n.vector.len()),
                    (o.source.partition, o.source.offset, 768),
                    "{id}"
                );
            }
            other => panic!("{id}: old and new differ after the re-queue: {other:?}"),
        }
    }
    assert!(new_state["b-1"].last().unwrap().1.is_none(), "b-1 deleted");

    let second = check(&p, &["--dry-run"]);
    assert_eq!(
        (second["sampled"].as_i64(), second["divergent"].as_i64()),
        (Some(12), Some(0)),
        "{second}"
    );

    // The periodic checker serves the ratio.
    let port = free_port();
    let mut every = Killed(
        migrate_command(
            &p,
            &[
                "check",
                "--sample",
                "1",
                "--dry-run",
                "--every",
                "60",
                "--listen",
                &format!("127.0.0.1:{port}"),
            ],
        )
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap(),
    );
    let deadline = Instant::now() + Duration::from_secs(120);
    let line = loop {
        let body = match reqwest::get(format!("http://127.0.0.1:{port}/metrics")).await {
            Ok(r) => r.text().await.unwrap_or_default(),
            Err(_) => String::new(),
        };
        if let Some(l) = body
            .lines()
            .find(|l| l.starts_with("embedstream_migration_divergence_ratio"))
        {
            break l.to_owned();
        }
        assert!(Instant::now() < deadline, "no divergence ratio on /metrics");
        sleep_ms(300).await;
    };
    assert!(terminate(&mut every.0).success());
    assert!(line.ends_with(" 0"), "{line}");
}
