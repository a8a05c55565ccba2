//! Upserts, updates, deletes, tombstones and poison records through the real topic into the
//! sink binary; exact answers over HTTP before and after compactions.

use std::time::Duration;

use serde_json::json;

use super::{
    Oracle, Put, Sink, assert_exact_search, assert_items, config, produce, record, test_dir,
    unit_vector,
};
use crate::stage::Platform;

#[tokio::test(flavor = "multi_thread")]
async fn queries_are_exact_over_hot_and_main_with_updates_deletes_and_poison() {
    let platform = Platform::new("sink-serve");
    platform.ensure_topics().await;
    let dir = test_dir(&platform);
    let mut oracle = Oracle::default();

    // Phase 1: 300 items; enough for each of the 2 shards to build its first main.
    let puts = (0..300)
        .map(|i| Put::Record(record(&format!("item-{i}"), unit_vector(i))))
        .collect();
    produce(&platform, &mut oracle, puts).await;
    let sink = Sink::start(&platform, &dir, &config(100, 0.08), "sink").await;
    sink.wait_caught_up(&platform, Duration::from_secs(30))
        .await;
    let stats = sink.wait_compactions(1, Duration::from_secs(30)).await;
    assert!(
        stats["shards"]
            .as_array()
            .unwrap()
            .iter()
            .all(|s| s["main_vectors"].as_u64().unwrap() > 0),
        "every shard has a main: {stats}"
    );
    assert_items(&sink, &oracle).await;
    assert_exact_search(&sink, &oracle, "exact", &[1000, 1001, 1002, 1003, 1004]).await;

    // Phase 2, on items now in main: updates (new vectors), deletes by tombstone, new items,
    // and poison: wrong dimension, NaN, undecodable bytes, key ≠ item id, zero vector.
    let mut puts = Vec::new();
    for i in (0..300).step_by(7) {
        puts.push(Put::Record(record(
            &format!("item-{i}"),
            unit_vector(10_000 + i),
        )));
    }
    for i in (3..300).step_by(11) {
        puts.push(Put::Tombstone(format!("item-{i}")));
    }
    for i in 300..340 {
        puts.push(Put::Record(record(&format!("item-{i}"), unit_vector(i))));
    }
    puts.push(Put::Record(record("item-1", vec![0.5; 3])));
    let mut nan = unit_vector(2);
    nan[17] = f32::NAN;
    puts.push(Put::Record(record("item-2", nan)));
    puts.push(Put::Raw(
        "item-4".into(),
        vec![0xff, 0x01, 0x02, 0x03, 0x04, 0x05],
    ));
    puts.push(Put::Record(record("item-5", vec![0.0; 384])));
    let mut mismatched = record("item-6", unit_vector(6));
    mismatched.item_id = "someone-else".into();
    let mismatched_bytes = embedstream_schemas::Codec::new(&platform.registry)
        .encode(&platform.embeddings(), &mismatched)
        .await
        .unwrap();
    puts.push(Put::Raw("item-6".into(), mismatched_bytes));
    // A good record after the poison on the same keys: the partition kept going.
    puts.push(Put::Record(record("item-1", unit_vector(20_001))));
    produce(&platform, &mut oracle, puts).await;
    sink.wait_caught_up(&platform, Duration::from_secs(30))
        .await;

    assert_items(&sink, &oracle).await;
    assert_exact_search(&sink, &oracle, "exact", &[2000, 2001, 2002, 2003, 2004]).await;
    // An updated item is found by its new vector and no longer by its old one.
    let top = sink.top_k("exact", &unit_vector(10_007), 1).await;
    assert_eq!(top[0].0, "item-7");
    assert!(top[0].1 > 0.9999);
    let old = sink.top_k("exact", &unit_vector(7), 1).await;
    assert_ne!(
        old[0].0, "item-7",
        "the stale vector of item-7 is still served"
    );
    for gone in ["item-2", "item-3", "item-4", "item-5", "item-6"] {
        assert_eq!(sink.item(gone).await, None, "{gone} must be gone");
    }
    // The lag gauge comes with the client's first statistics (every second by default).
    let expected = [
        "embedstream_sink_query_seconds_bucket{consumer=\"exact\"",
        "embedstream_sink_freshness_seconds",
        "embedstream_sink_consumer_lag_records",
        "embedstream_index_hot_vectors",
        "embedstream_index_compactions_total",
    ];
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let metrics = loop {
        let text = reqwest::get(sink.url("/metrics"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        if expected.iter().all(|name| text.contains(name)) || std::time::Instant::now() > deadline {
            break text;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    for kind in [
        "dimension_mismatch",
        "non_finite",
        "malformed_framing",
        "zero_vector",
        "key_mismatch",
    ] {
        assert!(
            metrics.contains(&format!("error_type=\"{kind}\"")),
            "no poison count for {kind} in /metrics"
        );
    }
    for name in expected {
        assert!(metrics.contains(name), "{name} missing from /metrics");
    }

    // After the next compactions (triggered by the phase 2 writes) answers stay exact.
    let (status, body) = sink
        .search(json!({"consumer": "search", "vector": unit_vector(3000)}))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["k"], 10, "the profile's default k");
    assert_eq!(body["results"].as_array().unwrap().len(), 10);
    drop(sink);
}

#[tokio::test(flavor = "multi_thread")]
async fn text_queries_are_embedded_with_the_topics_model() {
    let platform = Platform::new("sink-text");
    platform.ensure_topics().await;
    let dir = test_dir(&platform);
    let texts = [
        "GNU Bourne Again SHell",
        "lossless data compression with the LZMA algorithm",
        "a free office suite with a word processor and spreadsheets",
    ];
    let vectors = crate::stage::engine()
        .embed(texts.iter().map(|t| (*t).to_owned()).collect())
        .await
        .unwrap();
    let mut oracle = Oracle::default();
    let puts = vectors
        .into_iter()
        .enumerate()
        .map(|(i, v)| Put::Record(record(&format!("pkg-{i}"), v)))
        .collect();
    produce(&platform, &mut oracle, puts).await;
    let sink = Sink::start(&platform, &dir, &config(1000, 0.08), "sink").await;
    sink.wait_caught_up(&platform, Duration::from_secs(30))
        .await;
    for (i, text) in texts.iter().enumerate() {
        let (status, body) = sink
            .search(json!({"consumer": "search", "text": text, "k": 3}))
            .await;
        assert_eq!(status, 200, "{body}");
        let top = &body["results"][0];
        assert_eq!(top["item_id"], format!("pkg-{i}"), "{body}");
        assert!(top["score"].as_f64().unwrap() > 0.9999, "{body}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_schema_id_the_registry_does_not_know_pauses_its_partition_and_deletes_nothing() {
    let platform = Platform::new("sink-schema-id");
    platform.ensure_topics().await;
    let dir = test_dir(&platform);
    let mut oracle = Oracle::default();
    let puts = (0..30)
        .map(|i| Put::Record(record(&format!("item-{i}"), unit_vector(i))))
        .collect();
    produce(&platform, &mut oracle, puts).await;
    let sink = Sink::start(&platform, &dir, &config(1000, 0.5), "sink").await;
    sink.wait_caught_up(&platform, Duration::from_secs(30))
        .await;
    let before = sink.item("item-5").await.expect("item-5 is served");

    // A record of item-5 framed with a schema id the registry never gave, then an update of
    // item-5 behind it on the same partition, and an update of an item on another partition.
    let other = oracle
        .live()
        .find(|(_, _, (p, _))| *p != before.0)
        .map(|(id, _, _)| id.clone())
        .expect("an item on another partition");
    let unknown = embedstream_schemas::wire::frame(987_654, b"\x02");
    produce(
        &platform,
        &mut Oracle::default(),
        vec![
            Put::Raw("item-5".into(), unknown),
            Put::Record(record("item-5", unit_vector(5_005))),
            Put::Record(record(&other, unit_vector(7_007))),
        ],
    )
    .await;

    // The other partition goes on.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while sink.top_k("exact", &unit_vector(7_007), 1).await[0].0 != other {
        assert!(
            std::time::Instant::now() < deadline,
            "the update of {other} on another partition was not applied"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The paused partition retries the record and keeps item-5 as it was: neither deleted
    // nor overtaken by the update behind it.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let metrics = reqwest::get(sink.url("/metrics"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        if metrics.lines().any(|l| {
            l.starts_with("embedstream_sink_retries_total") && l.contains("unknown_schema_id")
        }) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no retry of the unknown schema id in /metrics"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(sink.item("item-5").await, Some(before), "item-5 changed");
    let top = sink.top_k("exact", &unit_vector(5), 1).await;
    assert_eq!(top[0].0, "item-5");
    assert!(top[0].1 > 0.9999, "item-5 keeps its vector: {top:?}");
    drop(sink);
}

/// A record written after a newer one of the same item, but computed from an older source
/// event (a zombie stage member, a backfill racing the dual-write), never replaces it; nor
/// does an older tombstone, and an older vector cannot bring a deleted item back.
#[tokio::test(flavor = "multi_thread")]
async fn an_older_source_event_written_later_never_replaces_a_newer_one() {
    use embedstream_schemas::headers::{SOURCE_OFFSET, SOURCE_PARTITION};
    use rdkafka::message::{Header, OwnedHeaders};
    use rdkafka::producer::FutureRecord;

    let platform = Platform::new("sink-source-order");
    platform.ensure_topics().await;
    let dir = test_dir(&platform);
    let codec = embedstream_schemas::Codec::new(&platform.registry);
    let topic = platform.embeddings();
    let producer = platform.producer();
    let sourced = |source: i64| {
        let o = source.to_string();
        OwnedHeaders::new()
            .insert(Header {
                key: SOURCE_PARTITION,
                value: Some("0"),
            })
            .insert(Header {
                key: SOURCE_OFFSET,
                value: Some(o.as_str()),
            })
    };
    // (item, source offset, vector seed; None for a tombstone)
    let writes: [(&str, i64, Option<u64>); 8] = [
        ("x", 10, Some(1)),
        ("x", 5, Some(2)),
        ("x", 3, None),
        ("y", 15, Some(3)),
        ("y", 20, None),
        ("y", 12, Some(4)),
        ("z", 1, Some(5)),
        ("z", 2, Some(6)),
    ];
    let mut at = Vec::new();
    for (id, source, seed) in writes {
        let payload = match seed {
            Some(seed) => {
                let mut r = record(id, unit_vector(seed));
                r.source.offset = source;
                Some(codec.encode(&topic, &r).await.unwrap())
            }
            None => None,
        };
        let mut r = FutureRecord::<[u8], [u8]>::to(&topic)
            .key(id.as_bytes())
            .headers(sourced(source));
        if let Some(p) = &payload {
            r = r.payload(p);
        }
        let d = producer
            .send(r, Duration::from_secs(30))
            .await
            .map_err(|(e, _)| e)
            .unwrap();
        at.push((d.partition, d.offset));
    }
    let sink = Sink::start(&platform, &dir, &config(100, 0.08), "sink").await;
    sink.wait_caught_up(&platform, Duration::from_secs(30))
        .await;
    assert_eq!(sink.item("x").await, Some(at[0]), "x keeps source event 10");
    let top = sink.top_k("exact", &unit_vector(1), 1).await;
    assert_eq!(top[0].0, "x");
    assert!(top[0].1 > 0.9999, "x is served with its newest vector");
    assert_eq!(sink.item("y").await, None, "y stays deleted");
    assert_eq!(
        sink.item("z").await,
        Some(at[7]),
        "a newer event still wins"
    );
}
