//! Fills an embedding topic with the rows of a `base.f32` (from `index_data.py`): row `i` is
//! item `i<i>`, written once, as fast as the broker takes them (the stage's producer
//! settings: idempotent, acks=all). Used by `loadtest/slices_bench.py` to give every sink
//! the same catalog. Creates the topic (compacted) when missing. Prints `{"records",
//! "seconds", "per_second"}`. `--delete-prefix P` deletes a run's topics instead.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Parser;
use embedstream_loadtest::embedding_record;
use embedstream_schemas::codec::{Codec, encode_datum};
use embedstream_schemas::records::EmbeddingRecord;
use embedstream_schemas::wire;
use embedstream_topics::KafkaConfig;
use embedstream_topics::admin::{Admin, TopicSpec};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};

#[derive(Parser)]
struct Args {
    #[arg(long, default_value = "127.0.0.1:9092")]
    bootstrap: String,
    #[arg(long, default_value = "http://127.0.0.1:8081")]
    registry_url: String,
    #[arg(long)]
    topic: String,
    /// Vectors: a base.f32 from index_data.py.
    #[arg(long)]
    vectors: std::path::PathBuf,
    #[arg(long, default_value_t = 384)]
    dim: usize,
    /// Rows to write (all when 0).
    #[arg(long, default_value_t = 0)]
    n: usize,
    /// Partitions of the topic, created (compacted) when missing.
    #[arg(long, default_value_t = 6)]
    partitions: i32,
    /// Delete every topic whose name starts with this prefix and exit (a run's cleanup).
    #[arg(long)]
    delete_prefix: Option<String>,
    /// Share of the rows (spread evenly by a hash of the row) whose event time is
    /// `--old-age-days` ago instead of now: what an index's cold tier takes.
    #[arg(long, default_value_t = 0.0)]
    old_share: f64,
    #[arg(long, default_value_t = 60)]
    old_age_days: i64,
}

/// Row `row`'s record: item `i<row>`, its source event at offset `row`, aged per `args`.
fn record(args: &Args, row: usize, vector: Vec<f32>) -> EmbeddingRecord {
    let mut r = embedding_record(format!("i{row}"), vector, row as i64);
    let spread = (row as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 32;
    if (spread as f64) < args.old_share * f64::from(u32::MAX) {
        r.event_time -= args.old_age_days * 24 * 3600 * 1000;
    }
    r
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<()> {
    let args = Args::parse();
    let kafka = KafkaConfig::from_sources(&args.bootstrap, None, std::env::vars(), &[])?;
    let admin = Admin::new(&kafka, Duration::from_secs(30))?;
    if let Some(prefix) = &args.delete_prefix {
        let names: Vec<String> = admin
            .list()?
            .into_iter()
            .map(|t| t.name)
            .filter(|n| n.starts_with(prefix.as_str()))
            .collect();
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        admin.delete(&names).await?;
        println!("{}", serde_json::json!({ "deleted": names }));
        return Ok(());
    }
    admin
        .ensure(&[TopicSpec::compacted(&args.topic, args.partitions)])
        .await?;
    // Rows are read as they are sent: a set of millions of rows never sits in memory whole.
    let row_bytes = 4 * args.dim;
    let size = std::fs::metadata(&args.vectors)
        .with_context(|| args.vectors.display().to_string())?
        .len();
    let total = (size / row_bytes as u64) as usize;
    let n = if args.n == 0 {
        total
    } else {
        args.n.min(total)
    };
    if n == 0 {
        bail!("no vectors");
    }
    let mut rows = std::io::BufReader::with_capacity(
        1 << 20,
        std::fs::File::open(&args.vectors).with_context(|| args.vectors.display().to_string())?,
    );
    let mut bytes = vec![0u8; row_bytes];
    let mut next_row = move || -> Result<Vec<f32>> {
        std::io::Read::read_exact(&mut rows, &mut bytes)?;
        Ok(bytes
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect())
    };
    let first_row = next_row()?;
    let codec = Codec::new(&args.registry_url);
    let first = codec
        .encode(&args.topic, &record(&args, 0, first_row.clone()))
        .await?;
    let (schema_id, _) = wire::split(&first)?;
    let producer: ThreadedProducer<DefaultProducerContext> = kafka
        .client()
        .set("linger.ms", "20")
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("compression.type", "lz4")
        .create()?;
    let started = Instant::now();
    let mut pending = Some(first_row);
    for row in 0..n {
        let vector = match pending.take() {
            Some(v) => v,
            None => next_row()?,
        };
        let payload = wire::frame(schema_id, &encode_datum(&record(&args, row, vector))?);
        let key = format!("i{row}");
        loop {
            match producer.send(
                BaseRecord::<str, [u8]>::to(&args.topic)
                    .key(&key)
                    .payload(&payload),
            ) {
                Ok(()) => break,
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                    std::thread::sleep(Duration::from_millis(1));
                }
                Err((e, _)) => return Err(e.into()),
            }
        }
    }
    producer.flush(Duration::from_secs(60))?;
    let seconds = started.elapsed().as_secs_f64();
    println!(
        "{}",
        serde_json::json!({"records": n, "seconds": seconds, "per_second": n as f64 / seconds})
    );
    Ok(())
}
