//! Freshness load for `loadtest/sink_bench.py`: produces embedding records to a topic at a
//! fixed rate (real vectors from `index_data.py`'s base.f32, Avro through the registry) while
//! measuring, over the same window:
//!
//! - **sink**: a probe record every `--probe-ms` (same producer, so same queue and batches as
//!   the load), then `GET /v1/items/{id}` on the sink every millisecond until it is there:
//!   freshness = found − the record's timestamp (CreateTime, set at produce time);
//! - **peer**: a bare consumer (librdkafka, its own assignment of every partition from the
//!   end, no processing) on the same topic: received − record timestamp for every record —
//!   what Kafka itself costs on this broker, the floor under any sink;
//! - **producer acks**: delivery report − record timestamp for every record the load sends
//!   (linger, the produce request and the broker's write): the part of both numbers above
//!   that happens before any consumer can see the record.
//!
//! Without `--sink-url` no probes are sent (the sink's own histogram is then the measure);
//! with `--no-peer` no peer runs, so the broker serves one consumer, as in a deployment.
//!
//! `--client KEY=VALUE` (repeatable) sets a librdkafka property on the producer and the peer,
//! for A/B runs of client settings.
//!
//! Prints one JSON object.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Parser;
use embedstream_loadtest::{at_quantile, embedding_record, read_le_words};
use embedstream_schemas::codec::{Codec, encode_datum};
use embedstream_schemas::records::EmbeddingRecord;
use embedstream_schemas::wire;
use embedstream_topics::KafkaConfig;
use embedstream_topics::kafka::ClientBuilder;
use embedstream_topics::time::now_ms;
use rdkafka::ClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message;
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use serde_json::json;

#[derive(Parser)]
struct Args {
    #[arg(long, default_value = "127.0.0.1:9092")]
    bootstrap: String,
    #[arg(long, default_value = "http://127.0.0.1:8081")]
    registry_url: String,
    #[arg(long)]
    topic: String,
    /// The sink's HTTP address; without it only the peer is measured.
    #[arg(long)]
    sink_url: Option<String>,
    /// Vectors to send (cycled): a base.f32 from index_data.py.
    #[arg(long)]
    vectors: std::path::PathBuf,
    #[arg(long, default_value_t = 384)]
    dim: usize,
    /// Records per second.
    #[arg(long, default_value_t = 5000)]
    rate: u64,
    /// Measured window, after the warm-up.
    #[arg(long, default_value_t = 60)]
    secs: u64,
    #[arg(long, default_value_t = 10)]
    warmup_secs: u64,
    #[arg(long, default_value_t = 100)]
    probe_ms: u64,
    /// The peer's `fetch.wait.max.ms` (keep it equal to the sink's).
    #[arg(long, default_value_t = 500)]
    fetch_wait_ms: u64,
    /// Distinct item ids the load cycles through (updates once they repeat).
    #[arg(long, default_value_t = 50_000)]
    ids: usize,
    /// Run no peer: the broker then serves the sink's consumer alone, as in a deployment.
    #[arg(long)]
    no_peer: bool,
    /// A librdkafka property for the producer and the peer (`KEY=VALUE`, repeatable).
    #[arg(long = "client")]
    client: Vec<String>,
}

/// The platform's client builder with every `--client` property (and any
/// `EMBEDSTREAM_KAFKA_*` variable) on top of the role's settings.
fn client<'a>(kafka: &'a KafkaConfig, settings: &[(&str, String)]) -> ClientBuilder<'a> {
    let mut c = kafka.client();
    for (k, v) in settings {
        c.set(k, v.as_str());
    }
    c
}

/// Producer context that times each record from its timestamp to its delivery report.
struct Acks {
    measuring: Arc<AtomicBool>,
    ms: Mutex<Vec<f64>>,
}

impl ClientContext for Acks {}

impl ProducerContext for Acks {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        if let Ok(msg) = result
            && self.measuring.load(Ordering::Relaxed)
            && let Some(ts) = msg.timestamp().to_millis()
        {
            let at = now_ms();
            self.ms.lock().expect("acks").push((at - ts) as f64);
        }
    }
}

/// The next source offset a made-up record names.
static NEXT_SOURCE: std::sync::atomic::AtomicI64 = std::sync::atomic::AtomicI64::new(0);

/// A record of `id`, each a newer source event than the last, as the stage writes them.
fn record(id: String, vector: Vec<f32>) -> EmbeddingRecord {
    embedding_record(
        id,
        vector,
        NEXT_SOURCE.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
    )
}

fn summary(mut ms: Vec<f64>) -> serde_json::Value {
    if ms.is_empty() {
        return json!({"count": 0});
    }
    ms.sort_by(f64::total_cmp);
    let p = |q: f64| at_quantile(&ms, q);
    json!({
        "count": ms.len(), "p50_ms": p(0.5), "p95_ms": p(0.95), "p99_ms": p(0.99),
        "max_ms": p(1.0), "mean_ms": ms.iter().sum::<f64>() / ms.len() as f64,
    })
}

/// The bare consumer: every partition from its current end, latency per record.
fn peer(
    args: &Args,
    kafka: &KafkaConfig,
    measuring: Arc<AtomicBool>,
    done: Arc<AtomicBool>,
) -> Result<Vec<f64>> {
    let consumer: BaseConsumer = client(
        kafka,
        &[
            ("group.id", format!("bench-peer-{}", std::process::id())),
            ("enable.auto.commit", "false".into()),
            ("fetch.wait.max.ms", args.fetch_wait_ms.to_string()),
        ],
    )
    .create()?;
    let metadata = consumer.fetch_metadata(Some(&args.topic), Duration::from_secs(10))?;
    let partitions = metadata
        .topics()
        .first()
        .map(|t| t.partitions().len())
        .context("topic metadata")?;
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions as i32 {
        tpl.add_partition_offset(&args.topic, p, Offset::End)?;
    }
    consumer.assign(&tpl)?;
    let mut out = Vec::new();
    while !done.load(Ordering::Relaxed) {
        if let Some(msg) = consumer.poll(Duration::from_millis(100)) {
            let msg = msg?;
            if measuring.load(Ordering::Relaxed)
                && let Some(ts) = msg.timestamp().to_millis()
            {
                out.push((now_ms() - ts) as f64);
            }
        }
    }
    Ok(out)
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<()> {
    let args = Arc::new(Args::parse());
    let kafka = Arc::new(KafkaConfig::from_sources(
        &args.bootstrap,
        None,
        std::env::vars(),
        &args.client,
    )?);
    let vectors: Vec<Vec<f32>> = read_le_words(&args.vectors, f32::from_le_bytes)?
        .chunks_exact(args.dim)
        .take(args.ids)
        .map(<[f32]>::to_vec)
        .collect();
    if vectors.is_empty() {
        bail!("no vectors");
    }
    // The schema id once through the registry; then frames are built without it.
    let codec = Codec::new(&args.registry_url);
    let first = codec
        .encode(&args.topic, &record("warm".into(), vectors[0].clone()))
        .await?;
    let (schema_id, _) = wire::split(&first)?;
    let encode = move |id: &str, v: &[f32]| -> Result<Vec<u8>> {
        Ok(wire::frame(
            schema_id,
            &encode_datum(&record(id.to_owned(), v.to_vec()))?,
        ))
    };

    let measuring = Arc::new(AtomicBool::new(false));
    let producer: Arc<ThreadedProducer<Acks>> = Arc::new(
        client(
            &kafka,
            // The stage's producer settings (pipeline/src/stage/mod.rs).
            &[
                ("linger.ms", "5".into()),
                ("enable.idempotence", "true".into()),
                ("acks", "all".into()),
            ],
        )
        .create_with_context(Acks {
            measuring: Arc::clone(&measuring),
            ms: Mutex::new(Vec::new()),
        })?,
    );
    let send = {
        let (producer, topic) = (Arc::clone(&producer), args.topic.clone());
        move |key: &str, payload: &[u8]| loop {
            match producer.send(
                BaseRecord::<str, [u8]>::to(&topic)
                    .key(key)
                    .payload(payload),
            ) {
                Ok(()) => return Ok(()),
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                    std::thread::sleep(Duration::from_millis(1));
                }
                Err((e, _)) => return Err(anyhow::Error::from(e)),
            }
        }
    };

    let done = Arc::new(AtomicBool::new(false));
    let peer_thread = (!args.no_peer).then(|| {
        let (args, kafka) = (Arc::clone(&args), Arc::clone(&kafka));
        let (m, d) = (Arc::clone(&measuring), Arc::clone(&done));
        std::thread::spawn(move || peer(&args, &kafka, m, d))
    });
    std::thread::sleep(Duration::from_secs(2)); // let the peer's assignment settle

    let sent = Arc::new(AtomicU64::new(0));
    let load_thread = {
        let (args, done, sent) = (Arc::clone(&args), Arc::clone(&done), Arc::clone(&sent));
        let send = send.clone();
        std::thread::spawn(move || -> Result<()> {
            let started = Instant::now();
            let mut n: u64 = 0;
            while !done.load(Ordering::Relaxed) {
                let due = (started.elapsed().as_secs_f64() * args.rate as f64) as u64;
                while n < due {
                    let row = (n as usize) % vectors.len();
                    let id = format!("bench-{row}");
                    send(&id, &encode(&id, &vectors[row])?)?;
                    n += 1;
                }
                sent.store(n, Ordering::Relaxed);
                std::thread::sleep(Duration::from_micros(500));
            }
            Ok(())
        })
    };

    let http = reqwest::Client::new();
    let probe_vector = {
        let v: Vec<f32> = (0..args.dim).map(|i| ((i * 7) % 11) as f32 - 5.0).collect();
        let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
        v.into_iter().map(|x| x / norm).collect::<Vec<f32>>()
    };
    let warmup_end = Instant::now() + Duration::from_secs(args.warmup_secs);
    let end = warmup_end + Duration::from_secs(args.secs);
    let (mut probes, mut missed) = (Vec::new(), 0u64);
    let mut sent_at_start = 0;
    let mut probe_n = 0u64;
    let mut started_measuring = None;
    while Instant::now() < end {
        let tick = Instant::now();
        if tick >= warmup_end && started_measuring.is_none() {
            measuring.store(true, Ordering::Relaxed);
            sent_at_start = sent.load(Ordering::Relaxed);
            started_measuring = Some(tick);
        }
        let Some(sink_url) = &args.sink_url else {
            tokio::time::sleep(Duration::from_millis(args.probe_ms)).await;
            continue;
        };
        probe_n += 1;
        let id = format!("probe-{}-{probe_n}", std::process::id());
        let payload = encode(&id, &probe_vector)?;
        send(&id, &payload)?;
        let produced_ms = now_ms();
        let url = format!("{sink_url}/v1/items/{id}");
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut found = None;
        while Instant::now() < deadline {
            if http.get(&url).send().await?.status().is_success() {
                found = Some(now_ms());
                break;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        if started_measuring.is_some() {
            match found {
                Some(at) => probes.push((at - produced_ms) as f64),
                None => missed += 1,
            }
        }
        let next = tick + Duration::from_millis(args.probe_ms);
        tokio::time::sleep_until(next.into()).await;
    }
    let window = started_measuring.map_or(0.0, |s| s.elapsed().as_secs_f64());
    let sent_in_window = sent.load(Ordering::Relaxed) - sent_at_start;
    done.store(true, Ordering::Relaxed);
    load_thread.join().expect("load thread")?;
    producer.flush(Duration::from_secs(30))?;
    let peer = match peer_thread {
        Some(thread) => Some(summary(thread.join().expect("peer thread")?)),
        None => None,
    };
    let acks = std::mem::take(&mut *producer.context().ms.lock().expect("acks"));
    println!(
        "{}",
        json!({
            "rate_target": args.rate, "rate_sent": sent_in_window as f64 / window,
            "window_s": window, "topic": args.topic,
            "sink_probe": summary(probes), "probes_not_found_in_10s": missed,
            "peer_bare_consumer": peer,
            "producer_acks": summary(acks),
            "client": args.client,
        })
    );
    Ok(())
}
