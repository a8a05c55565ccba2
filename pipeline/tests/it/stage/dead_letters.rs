//! Each kind of bad input on `items` ends on `items.dlq` with its original bytes, source
//! coordinates and reason, and the record after it is still embedded.

use std::time::Duration;

use embedstream_schemas::records::{EmbeddingRecord, ItemEvent, SourceCoordinates};
use embedstream_schemas::{AvroRecord, Codec, wire};

use super::*;

/// Produces `bad` then a good upsert, runs the stage until it has committed both, and
/// returns the dead letters.
async fn dead_letter_of(
    p: Platform,
    bad: impl AsyncFnOnce(&Platform) -> Raw,
) -> (Platform, Raw, Vec<DeadLetter>) {
    p.ensure_topics().await;
    let bad = bad(&p).await;
    p.produce_raw(std::slice::from_ref(&bad)).await;
    p.produce_events(&[upsert("good-after", "A well-formed item after the bad one")])
        .await;
    let mut stage = p.spawn_stage("stage");
    p.wait_caught_up(Duration::from_secs(120)).await;
    assert!(
        terminate(&mut stage).success(),
        "the stage exits cleanly on SIGTERM"
    );
    let state = p.embedding_state().await;
    assert!(
        state.contains_key("good-after"),
        "the stream goes on after a bad record"
    );
    let letters = p.dead_letters().await;
    (p, bad, letters)
}

async fn assert_one(test: &str, kind: &str, bad: impl AsyncFnOnce(&Platform) -> Raw) {
    assert_one_on(Platform::new(test), kind, bad).await;
}

async fn assert_one_on(p: Platform, kind: &str, bad: impl AsyncFnOnce(&Platform) -> Raw) {
    let (p, (key, value), letters) = dead_letter_of(p, bad).await;
    assert_eq!(letters.len(), 1, "exactly one dead letter: {letters:?}");
    let l = &letters[0];
    assert_eq!(l.error_kind, kind, "{}", l.message);
    assert!(!l.message.is_empty());
    assert_eq!(l.stage, "embed-stage");
    assert_eq!(l.original_key, key, "the original key is kept");
    assert_eq!(l.original_value, value, "the original bytes are kept");
    assert_eq!(l.source.topic, p.names.items());
    // The bad record's coordinates: find it on items.
    let on_items = p.read_all(&p.names.items());
    let (_, _, partition, offset) = on_items
        .iter()
        .find(|(k, v, _, _)| *k == key && *v == value)
        .expect("the bad record is on items");
    assert_eq!((l.source.partition, l.source.offset), (*partition, *offset));
}

async fn framed_event(p: &Platform, event: &ItemEvent) -> Vec<u8> {
    Codec::new(&p.registry)
        .encode(&p.names.items(), event)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_framing() {
    assert_one("dlq-framing", "malformed_framing", async |_| {
        (
            Some(b"k".to_vec()),
            Some(b"not an Avro record at all".to_vec()),
        )
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_schema_id() {
    assert_one("dlq-schema-id", "unknown_schema_id", async |_| {
        let datum = embedstream_schemas::codec::encode_datum(&upsert("k", "text")).unwrap();
        (Some(b"k".to_vec()), Some(wire::frame(987_654, &datum)))
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_schema() {
    assert_one("dlq-wrong-schema", "wrong_schema", async |p| {
        let record = EmbeddingRecord {
            item_id: "k".into(),
            model_id: "m".into(),
            model_version: 1,
            dimension: 1,
            vector: vec![1.0],
            normalized: true,
            source: SourceCoordinates {
                topic: "t".into(),
                partition: 0,
                offset: 0,
            },
            event_time: 0,
            embed_time: 0,
            attributes: Default::default(),
            request_id: None,
        };
        // Registered under another subject, written to items by mistake.
        let bytes = Codec::new(&p.registry)
            .encode(&format!("{}.elsewhere", p.prefix), &record)
            .await
            .unwrap();
        (Some(b"k".to_vec()), Some(bytes))
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_avro() {
    assert_one("dlq-malformed", "malformed_avro", async |p| {
        let mut bytes = framed_event(p, &upsert("k", "a text that gets cut")).await;
        bytes.truncate(bytes.len() - 6);
        (Some(b"k".to_vec()), Some(bytes))
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn empty_text() {
    assert_one("dlq-empty", "empty_text", async |p| {
        (
            Some(b"k".to_vec()),
            Some(framed_event(p, &upsert("k", " \n\t ")).await),
        )
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn text_too_long() {
    assert_one("dlq-too-long", "text_too_long", async |p| {
        // 100 KB: over the stage's 64 KiB default, under the broker's 1 MB record limit.
        let text = "long text ".repeat(10_000);
        (
            Some(b"k".to_vec()),
            Some(framed_event(p, &upsert("k", &text)).await),
        )
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_utf8() {
    assert_one("dlq-utf8", "invalid_utf8", async |p| {
        let mut bytes = framed_event(p, &upsert("xy", "text")).await;
        // After the 5-byte frame header, the datum starts with item_id: length 2, "xy".
        assert_eq!(&bytes[5..8], &[4, b'x', b'y']);
        bytes[6] = 0xff;
        bytes[7] = 0xfe;
        (Some(b"xy".to_vec()), Some(bytes))
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_op() {
    assert_one("dlq-op", "unknown_op", async |p| {
        // A newer producer's schema adds an op; the registry accepts it (backward compatible).
        let newer = ItemEvent::SCHEMA_JSON.replace(
            r#""symbols": ["UPSERT", "DELETE", "UNKNOWN"]"#,
            r#""symbols": ["UPSERT", "DELETE", "UNKNOWN", "ARCHIVE"]"#,
        );
        assert_ne!(newer, ItemEvent::SCHEMA_JSON);
        let subject = format!("{}-value", p.names.items());
        let response: serde_json::Value = reqwest::Client::new()
            .post(format!("{}/subjects/{subject}/versions", p.registry))
            .header("content-type", "application/vnd.schemaregistry.v1+json")
            .json(&serde_json::json!({ "schema": newer }))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let id = u32::try_from(response["id"].as_u64().expect("registered")).unwrap();
        let schema = apache_avro::Schema::parse_str(&newer).unwrap();
        let mut value = apache_avro::to_value(upsert("k", "archive me")).unwrap();
        if let apache_avro::types::Value::Record(fields) = &mut value {
            fields[1].1 = apache_avro::types::Value::Enum(3, "ARCHIVE".into());
        }
        let datum = apache_avro::writer::datum::GenericDatumWriter::builder(&schema)
            .build()
            .unwrap()
            .write_value_to_vec(value)
            .unwrap();
        (Some(b"k".to_vec()), Some(wire::frame(id, &datum)))
    })
    .await;
}

/// Kafka refuses a record without a key on a compacted topic, so on the platform's `items`
/// the broker keeps keyless records out; an `items` made with `cleanup.policy=delete` lets one
/// through, and the stage dead-letters it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tombstone_without_key() {
    let compacted = Platform::new("dlq-no-key-compacted");
    compacted.ensure_topics().await;
    let refused = compacted
        .producer()
        .send(
            FutureRecord::<[u8], [u8]>::to(&compacted.names.items()),
            Duration::from_secs(30),
        )
        .await
        .map_err(|(e, _)| e)
        .expect_err("the broker refuses a keyless record on a compacted topic");
    assert!(refused.to_string().contains("InvalidRecord"), "{refused}");

    let p = Platform::new("dlq-no-key");
    embedstream_topics::admin::Admin::new(&p.kafka, Duration::from_secs(30))
        .unwrap()
        .ensure(&[embedstream_topics::admin::TopicSpec::retained(
            p.names.items(),
            6,
            Duration::from_secs(3600),
        )])
        .await
        .unwrap();
    assert_one_on(p, "missing_key", async |_| (None, None)).await;
}
