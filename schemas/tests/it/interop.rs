//! Interop with Confluent's Python client (`confluent-kafka` with its `SchemaRegistryClient`,
//! `AvroSerializer` and `AvroDeserializer`) against the registry service and broker that
//! `compose/dev test` started.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use embedstream_schemas::Codec;
use embedstream_schemas::records::{EmbeddingRecord, ItemEvent, ItemOp, SourceCoordinates};
use embedstream_topics::admin::{Admin, TopicSpec};
use embedstream_topics::testing::{bootstrap, kafka, unique};
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde_json::Value;

fn registry_url() -> String {
    std::env::var("SCHEMA_REGISTRY_URL")
        .expect("SCHEMA_REGISTRY_URL is not set: run the tests with `compose/dev test`")
}

/// Runs the Confluent client script and parses its JSON answer.
fn python(args: &[&str]) -> Value {
    let python = std::env::var("EMBEDSTREAM_PYTHON").expect(
        "EMBEDSTREAM_PYTHON is not set: `compose/dev test` points it at a venv with confluent-kafka",
    );
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/interop/confluent_client.py");
    let out = Command::new(python)
        .arg(script)
        .args(args)
        .args(["--registry", &registry_url()])
        .output()
        .expect("python runs");
    assert!(
        out.status.success(),
        "confluent client failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("one JSON document on stdout")
}

async fn topic(prefix: &str) -> String {
    let name = unique(prefix);
    Admin::new(&kafka(), Duration::from_secs(10))
        .unwrap()
        .ensure(&[TopicSpec::compacted(&name, 3)])
        .await
        .unwrap();
    name
}

#[tokio::test]
async fn python_avro_serializer_to_rust_decoder() {
    let topic = topic("it-py-items").await;
    let answer = python(&[
        "produce-items",
        "--bootstrap",
        &bootstrap(),
        "--topic",
        &topic,
        "--count",
        "12",
    ]);
    assert_eq!(answer["produced"], 12);

    let codec = Codec::new(&registry_url());
    let consumer: StreamConsumer = kafka()
        .client()
        .set("group.id", unique("it-rust"))
        .set("auto.offset.reset", "earliest")
        .create()
        .unwrap();
    consumer.subscribe(&[&topic]).unwrap();
    let mut events = Vec::new();
    while events.len() < 12 {
        let m = tokio::time::timeout(Duration::from_secs(30), consumer.recv())
            .await
            .expect("python's records arrive")
            .unwrap();
        let e: ItemEvent = codec.decode(m.payload().unwrap()).await.unwrap();
        assert_eq!(m.key(), Some(e.item_id.as_bytes()));
        events.push(e);
    }
    events.sort_by_key(|e| e.event_time);
    for (i, e) in events.iter().enumerate() {
        assert_eq!(e.item_id, format!("py-{i}"));
        assert_eq!(e.event_time, 1_700_000_000_000 + i as i64);
        if i % 4 == 3 {
            assert_eq!(e.op, ItemOp::Delete);
            assert_eq!(e.text, None);
        } else {
            assert_eq!(e.op, ItemOp::Upsert);
            assert_eq!(
                e.text.as_deref(),
                Some(format!("python item {i} – naïve café").as_str())
            );
        }
        assert_eq!(e.title.is_some(), i % 2 == 0);
        assert_eq!(e.attributes["client"], "confluent-kafka-python");
        assert_eq!(
            e.producer.as_ref().unwrap().request_id.as_deref(),
            Some(i.to_string().as_str())
        );
    }
}

#[tokio::test]
async fn rust_records_to_python_avro_deserializer() {
    let topic = topic("it-rust-embeddings").await;
    let codec = Codec::new(&registry_url());
    let producer: FutureProducer = kafka().client().create().unwrap();
    let records: Vec<EmbeddingRecord> = (0..5)
        .map(|i| EmbeddingRecord {
            item_id: format!("r-{i}"),
            model_id: "minilm-l6-v2".into(),
            model_version: 1,
            dimension: 3,
            vector: vec![0.25 * i as f32, -1.5, 3.0e-3],
            normalized: false,
            source: SourceCoordinates {
                topic: "items".into(),
                partition: i,
                offset: 100 + i as i64,
            },
            event_time: 1_700_000_000_000,
            embed_time: 1_700_000_000_500,
            attributes: Default::default(),
            request_id: None,
        })
        .collect();
    for r in &records {
        let bytes = codec.encode(&topic, r).await.unwrap();
        producer
            .send(
                FutureRecord::to(&topic).key(&r.item_id).payload(&bytes),
                Duration::from_secs(10),
            )
            .await
            .unwrap();
    }
    let answer = python(&[
        "consume",
        "--bootstrap",
        &bootstrap(),
        "--topic",
        &topic,
        "--count",
        "5",
        "--group",
        &unique("it-py"),
    ]);
    let mut got: Vec<Value> = answer["records"].as_array().unwrap().clone();
    assert_eq!(got.len(), 5, "{answer}");
    got.sort_by_key(|r| r["key"].as_str().unwrap().to_owned());
    for (r, g) in records.iter().zip(&got) {
        let v = &g["value"];
        assert_eq!(g["key"], r.item_id.as_str());
        assert_eq!(v["item_id"], r.item_id.as_str());
        assert_eq!(v["model_id"], "minilm-l6-v2");
        assert_eq!(v["dimension"], 3);
        assert_eq!(v["source"]["offset"], r.source.offset);
        let vector: Vec<f32> = v["vector"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_f64().unwrap() as f32)
            .collect();
        assert_eq!(vector, r.vector);
    }
}

#[test]
fn python_client_sees_confluent_compatibility_errors() {
    let subject = unique("it-py-evolving");
    let answer = python(&["evolve", "--subject", &subject]);
    assert_eq!(answer["incompatible"]["http_status"], 409, "{answer}");
    assert_eq!(answer["incompatible"]["error_code"], 409, "{answer}");
    assert_eq!(
        answer["set_compatibility"]["compatibility"], "NONE",
        "{answer}"
    );
    assert_ne!(answer["v1_id"], answer["v2_id"]);
    assert_eq!(answer["versions"], serde_json::json!([1, 2]));
    assert_eq!(answer["latest"]["version"], 2);
    assert_eq!(answer["latest"]["schema_id"], answer["v2_id"]);
}
