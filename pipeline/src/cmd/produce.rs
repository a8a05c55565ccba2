//! `embedstream produce`: JSON lines → Avro item events on `items`, through the registry, as
//! any upstream producer would write them (Confluent framing, key = item id, the Java
//! client's partitioner).
//!
//! Each line is `{"id": "...", "text": "...", "title"?: "...", "op"?: "upsert"|"delete",
//! "attributes"?: {"k": "v"}, "event_time"?: ms}` (`item_id` is accepted for `id`). A bad line
//! is reported with its number and skipped; the run exits non-zero at the end if any was bad.

use std::collections::HashMap;
use std::io::{BufRead, IsTerminal, Write};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use embedstream_schemas::Codec;
use embedstream_schemas::records::{ItemEvent, ItemOp, ProducerMetadata};
use embedstream_topics::time::now_ms;
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde::Deserialize;

use super::platform::PlatformArgs;

/// Options of `produce`.
#[derive(Debug, clap::Args)]
pub struct ProduceArgs {
    #[command(flatten)]
    platform: PlatformArgs,
    /// JSON lines to read (stdin when absent).
    #[arg(long)]
    input: Option<PathBuf>,
    /// Stop after this many events (all when absent).
    #[arg(long)]
    limit: Option<usize>,
    /// Events in flight (sent, not yet acknowledged), at most.
    #[arg(long, default_value_t = 10_000)]
    in_flight: usize,
    /// Events per second, at most (unlimited when absent).
    #[arg(long)]
    rate: Option<f64>,
    /// The `producer.source` written into each event.
    #[arg(long, default_value = "embedstream-produce")]
    source: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Line {
    #[serde(alias = "item_id")]
    id: String,
    #[serde(default)]
    text: Option<String>,
    #[serde(default)]
    title: Option<String>,
    #[serde(default)]
    op: Option<String>,
    #[serde(default)]
    attributes: HashMap<String, String>,
    #[serde(default)]
    event_time: Option<i64>,
}

fn parse(line: &str, source: &str) -> Result<ItemEvent, String> {
    let l: Line = serde_json::from_str(line).map_err(|e| e.to_string())?;
    if l.id.trim().is_empty() {
        return Err("empty id".to_owned());
    }
    let op = match l.op.as_deref().unwrap_or("upsert") {
        "upsert" | "UPSERT" => ItemOp::Upsert,
        "delete" | "DELETE" => ItemOp::Delete,
        other => return Err(format!("unknown op {other:?} (upsert or delete)")),
    };
    Ok(ItemEvent {
        item_id: l.id,
        op,
        text: l.text,
        title: l.title,
        attributes: l.attributes,
        event_time: l.event_time.unwrap_or_else(now_ms),
        producer: Some(ProducerMetadata {
            source: source.to_owned(),
            request_id: None,
        }),
    })
}

/// Runs `produce`.
pub async fn run(args: ProduceArgs) -> anyhow::Result<()> {
    let topic = args.platform.names().items();
    // Kafka producers do not create topics; make sure the platform's exist (idempotent).
    let kafka = args.platform.kafka()?;
    embedstream_topics::admin::Admin::new(&kafka, Duration::from_secs(30))?
        .ensure(&embedstream_topics::admin::named_platform_topics(
            &args.platform.names(),
            embedstream_topics::admin::Layout {
                partitions: args.platform.partitions,
            },
            &[],
        ))
        .await
        .context("cannot create the platform's topics")?;
    let codec = Codec::new(&args.platform.registry_url);
    let producer: FutureProducer = kafka
        .client()
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", "20")
        .set("partitioner", "murmur2_random")
        .set("queue.buffering.max.messages", "1000000")
        .create()
        .context("cannot create the Kafka producer")?;
    let reader: Box<dyn BufRead + Send> = match &args.input {
        Some(path) => Box::new(std::io::BufReader::new(
            std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?,
        )),
        None => Box::new(std::io::BufReader::new(std::io::stdin())),
    };
    let progress = std::io::stderr().is_terminal();
    // A file's lines are counted first, so that the progress line can show a bar.
    let total = match (&args.input, progress) {
        (Some(path), true) => std::fs::read(path)
            .ok()
            .map(|b| b.split(|c| *c == b'\n').filter(|l| !l.is_empty()).count())
            .map(|n| args.limit.map_or(n, |l| n.min(l))),
        _ => None,
    };
    let start = Instant::now();
    let mut in_flight = FuturesUnordered::new();
    let (mut sent, mut acked, mut bad) = (0usize, 0usize, 0usize);
    for (n, line) in reader.lines().enumerate() {
        let line = line.context("cannot read the input")?;
        if line.trim().is_empty() {
            continue;
        }
        if args.limit.is_some_and(|l| sent >= l) {
            break;
        }
        let event = match parse(&line, &args.source) {
            Ok(e) => e,
            Err(reason) => {
                eprintln!("line {}: {reason}", n + 1);
                bad += 1;
                continue;
            }
        };
        let payload = codec
            .encode(&topic, &event)
            .await
            .context("cannot encode through the registry")?;
        while in_flight.len() >= args.in_flight.max(1) {
            if let Some(r) = in_flight.next().await {
                acked += ack(r)?;
            }
        }
        let key = event.item_id.clone();
        let delivery = loop {
            match producer.send_result(FutureRecord::to(&topic).key(&key).payload(&payload)) {
                Ok(d) => break d,
                Err((
                    rdkafka::error::KafkaError::MessageProduction(
                        rdkafka::types::RDKafkaErrorCode::QueueFull,
                    ),
                    _,
                )) => {
                    if let Some(r) = in_flight.next().await {
                        acked += ack(r)?;
                    }
                }
                Err((e, _)) => bail!("cannot produce to {topic}: {e}"),
            }
        };
        in_flight.push(delivery);
        sent += 1;
        if let Some(rate) = args.rate {
            let due = Duration::from_secs_f64(sent as f64 / rate.max(0.001));
            if let Some(wait) = due.checked_sub(start.elapsed()) {
                tokio::time::sleep(wait).await;
            }
        }
        if progress && sent % 500 == 0 {
            eprint!("\r{}", progress_line(sent, total, &topic, start.elapsed()));
            let _ = std::io::stderr().flush();
        }
    }
    while let Some(r) = in_flight.next().await {
        acked += ack(r)?;
    }
    if progress {
        eprintln!();
    }
    let secs = start.elapsed().as_secs_f64();
    eprintln!(
        "produced {acked} events to {topic} in {secs:.1} s ({:.0}/s); {bad} bad lines",
        acked as f64 / secs.max(1e-9)
    );
    if bad > 0 {
        bail!("{bad} input lines were bad (see above)");
    }
    Ok(())
}

/// `[#####.....] 12,500 / 63,681 events to items (20%), 4,100/s` (no bar when the total is
/// unknown).
fn progress_line(sent: usize, total: Option<usize>, topic: &str, elapsed: Duration) -> String {
    let rate = sent as f64 / elapsed.as_secs_f64().max(1e-9);
    match total {
        Some(total) if total > 0 => {
            let share = (sent as f64 / total as f64).min(1.0);
            let filled = (share * 30.0).round() as usize;
            format!(
                "[{}{}] {sent} / {total} events to {topic} ({:.0}%), {rate:.0}/s",
                "#".repeat(filled),
                ".".repeat(30 - filled),
                share * 100.0
            )
        }
        _ => format!("produced {sent} events to {topic}, {rate:.0}/s"),
    }
}

fn ack(
    r: Result<
        rdkafka::producer::future_producer::OwnedDeliveryResult,
        futures::channel::oneshot::Canceled,
    >,
) -> anyhow::Result<usize> {
    match r {
        Ok(Ok(_)) => Ok(1),
        Ok(Err((e, _))) => bail!("an event was not delivered: {e}"),
        Err(_) => bail!("the producer stopped"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_become_events() {
        let e = parse(
            r#"{"id":"a","text":"t","title":"T","attributes":{"k":"v"},"event_time":5}"#,
            "s",
        )
        .unwrap();
        assert_eq!(
            (e.item_id.as_str(), e.op, e.event_time),
            ("a", ItemOp::Upsert, 5)
        );
        assert_eq!(e.attributes["k"], "v");
        let d = parse(r#"{"item_id":"b","op":"delete"}"#, "s").unwrap();
        assert_eq!(d.op, ItemOp::Delete);
        for bad in [
            r#"{"text":"x"}"#,
            r#"{"id":"a","op":"merge"}"#,
            r#"{"id":" "}"#,
            "nope",
            r#"{"id":"a","colour":1}"#,
        ] {
            assert!(parse(bad, "s").is_err(), "{bad}");
        }
    }
}
