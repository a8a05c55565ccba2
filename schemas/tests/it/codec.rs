use std::time::Duration;

use embedstream_schemas::records::{DriftKind, DriftReport, ItemEvent, ItemOp};
use embedstream_schemas::{Codec, CodecError, wire};
use embedstream_topics::admin::{Admin, TopicSpec};
use embedstream_topics::testing::{kafka, unique};
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};

use crate::common::TestRegistry;

pub(crate) fn event(i: usize) -> ItemEvent {
    ItemEvent {
        item_id: format!("item-{i}"),
        op: if i.is_multiple_of(3) {
            ItemOp::Delete
        } else {
            ItemOp::Upsert
        },
        text: (!i.is_multiple_of(3)).then(|| format!("text number {i} — ünïcødé")),
        title: None,
        attributes: [("i".to_owned(), i.to_string())].into(),
        event_time: 1_700_000_000_000 + i as i64,
        producer: None,
    }
}

#[tokio::test]
async fn records_round_trip_through_the_registry_and_the_broker() {
    let registry = TestRegistry::start().await;
    let codec = Codec::new(&registry.url);
    let topic = unique("it-items");
    Admin::new(&kafka(), Duration::from_secs(10))
        .unwrap()
        .ensure(&[TopicSpec::compacted(&topic, 2)])
        .await
        .unwrap();

    let producer: FutureProducer = kafka().client().create().unwrap();
    let sent: Vec<ItemEvent> = (0..20).map(event).collect();
    for e in &sent {
        let bytes = codec.encode(&topic, e).await.unwrap();
        // Registered under the topic name strategy's subject.
        let (id, _) = wire::split(&bytes).unwrap();
        assert!(id > 0);
        producer
            .send(
                FutureRecord::to(&topic).key(&e.item_id).payload(&bytes),
                Duration::from_secs(10),
            )
            .await
            .unwrap();
    }
    let (_, subjects) = registry.call(reqwest::Method::GET, "/subjects", None).await;
    assert_eq!(subjects, serde_json::json!([format!("{topic}-value")]));

    let consumer: StreamConsumer = kafka()
        .client()
        .set("group.id", unique("it-group"))
        .set("auto.offset.reset", "earliest")
        .create()
        .unwrap();
    consumer.subscribe(&[&topic]).unwrap();
    let mut received = Vec::new();
    while received.len() < sent.len() {
        let m = tokio::time::timeout(Duration::from_secs(30), consumer.recv())
            .await
            .expect("records arrive")
            .unwrap();
        let e: ItemEvent = codec.decode(m.payload().unwrap()).await.unwrap();
        assert_eq!(m.key(), Some(e.item_id.as_bytes()));
        received.push(e);
    }
    received.sort_by_key(|e| e.event_time);
    assert_eq!(received, sent);
    registry.stop().await;
}

#[tokio::test]
async fn decode_failures_are_classified_against_a_real_registry() {
    let registry = TestRegistry::start().await;
    let codec = Codec::new(&registry.url);
    let topic = unique("it-misc");

    let err = codec
        .decode::<ItemEvent>(&wire::frame(987_654, b"\x02"))
        .await
        .unwrap_err();
    assert!(
        matches!(err, CodecError::UnknownSchemaId { id: 987_654, .. }),
        "{err}"
    );
    assert!(!err.is_retryable());

    let report = report();
    let bytes = codec.encode(&topic, &report).await.unwrap();
    let err = codec.decode::<ItemEvent>(&bytes).await.unwrap_err();
    assert_eq!(err.kind(), "wrong_schema", "{err}");

    let good = codec.encode(&topic, &event(1)).await;
    // Registering an ItemEvent under a subject holding DriftReport is refused (BACKWARD).
    assert!(
        matches!(
            good,
            Err(CodecError::Register {
                retryable: false,
                ..
            })
        ),
        "{good:?}"
    );

    let err = codec.decode::<ItemEvent>(b"plain text").await.unwrap_err();
    assert_eq!(err.kind(), "malformed_framing");

    let mut truncated = bytes.clone();
    truncated.truncate(bytes.len() - 3);
    let err = codec.decode::<DriftReport>(&truncated).await.unwrap_err();
    assert_eq!(err.kind(), "malformed_avro", "{err}");
    registry.stop().await;

    // The registry is gone: an id not yet cached is an outage, which is retryable.
    let fresh = Codec::new(&registry_url_that_refuses());
    let err = fresh.decode::<DriftReport>(&bytes).await.unwrap_err();
    assert!(err.is_retryable(), "{err}");
}

fn registry_url_that_refuses() -> String {
    // Bind and drop: the port is closed when the codec connects.
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", l.local_addr().unwrap());
    drop(l);
    url
}

/// A registry that fails: answers `status` to every request while `failing` is set, and
/// passes requests through to `upstream` once it is cleared.
async fn faulty_registry(
    upstream: String,
    status: u16,
    failing: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> String {
    use axum::http::{StatusCode, Uri};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let client = reqwest::Client::new();
    let app = axum::Router::new().fallback(move |uri: Uri| {
        let (upstream, failing, client) = (upstream.clone(), failing.clone(), client.clone());
        async move {
            if failing.load(std::sync::atomic::Ordering::SeqCst) {
                let body = r#"{"error_code": 50001, "message": "failing on purpose"}"#;
                return (StatusCode::from_u16(status).unwrap(), body.to_owned());
            }
            let r = client.get(format!("{upstream}{uri}")).send().await.unwrap();
            let status = StatusCode::from_u16(r.status().as_u16()).unwrap();
            (status, r.text().await.unwrap())
        }
    });
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    url
}

#[tokio::test]
async fn a_failing_registry_is_an_outage_and_is_asked_again_once_it_recovers() {
    let registry = TestRegistry::start().await;
    let topic = unique("it-faulty");
    let report = report();
    let bytes = Codec::new(&registry.url)
        .encode(&topic, &report)
        .await
        .unwrap();
    for status in [500, 504, 401, 429] {
        let failing = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
        let url = faulty_registry(registry.url.clone(), status, failing.clone()).await;
        let codec = Codec::new(&url);
        for _ in 0..2 {
            let err = codec.decode::<DriftReport>(&bytes).await.unwrap_err();
            assert!(
                matches!(err, CodecError::RegistryUnavailable { .. }),
                "status {status}: {err}"
            );
            assert!(err.is_retryable(), "status {status}: {err}");
        }
        failing.store(false, std::sync::atomic::Ordering::SeqCst);
        let decoded: DriftReport = codec.decode(&bytes).await.unwrap();
        assert_eq!(decoded, report, "status {status}");
    }
    registry.stop().await;
}

/// A drift report: a record of another type than the item events.
fn report() -> DriftReport {
    DriftReport {
        kind: DriftKind::SelfCheck,
        model_id: "m".into(),
        model_version: 1,
        compared_model_id: None,
        compared_model_version: None,
        adapter: None,
        canary_count: 1,
        mean_cosine: 1.0,
        min_cosine: 1.0,
        max_norm_error: 0.0,
        verdict: "ok".into(),
        report_time: 0,
    }
}
