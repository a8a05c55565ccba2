//! Reading a range of offsets of one partition, streaming: what the backfill, the
//! consistency checker, the sampler and the dead-letter replay read with.
//!
//! A range `[lo, hi)` ends at its end position (a record at `hi − 1` or later) or at the
//! partition's end (the broker says the fetch reached the high watermark: the rest of the
//! range was compacted away or the log is shorter), never on idle time. A broker that stalls
//! or is away makes the read wait, with a warning every 30 s, until it answers or shutdown is
//! asked for; shutdown ends the read with [`Error::Interrupted`], so a caller never takes a
//! cut-short range for a whole one.

use std::time::Duration;

use embedstream_topics::KafkaConfig;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::message::OwnedMessage;
use rdkafka::{Message, Offset, TopicPartitionList};
use tokio_util::sync::CancellationToken;

use crate::error::{Error, Result};

/// How long a read waits for a record before it logs that it is still waiting.
const STALL_WARNING: Duration = Duration::from_secs(30);

/// The client context of a consumer that reads with `enable.partition.eof`: reaching a
/// partition's end is how it tells that it caught up, not an error to log (every other error
/// is logged as the default context does).
pub(crate) struct QuietEnd;

impl rdkafka::ClientContext for QuietEnd {
    fn error(&self, error: KafkaError, reason: &str) {
        if !matches!(
            error,
            KafkaError::Global(rdkafka::error::RDKafkaErrorCode::PartitionEOF)
                | KafkaError::PartitionEOF(_)
        ) {
            tracing::error!("librdkafka: {error}: {reason}");
        }
    }
}

impl rdkafka::consumer::ConsumerContext for QuietEnd {}

/// The client settings of a consumer with no group membership that commits nothing, starts
/// below the log start at the log start and reports each partition's end.
pub(crate) fn reader_client<'a>(
    kafka: &'a KafkaConfig,
    name: &str,
) -> embedstream_topics::kafka::ClientBuilder<'a> {
    let mut client = kafka.client();
    client
        .set(
            "group.id",
            format!("embedstream-{name}-{}", uuid::Uuid::new_v4()),
        )
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        // A range below the log start (retention removed it) reads from the log start.
        .set("auto.offset.reset", "earliest")
        .set("enable.partition.eof", "true");
    client
}

/// A consumer with no group membership, for metadata and range reads.
pub(crate) fn new_reader(kafka: &KafkaConfig, name: &str) -> Result<StreamConsumer> {
    reader_client(kafka, name)
        .set("fetch.wait.max.ms", "10")
        .create()
        .map_err(Error::kafka(kafka))
}

/// How long a metadata or watermark request waits for the brokers before it is asked again.
const METADATA_TIMEOUT: Duration = Duration::from_secs(10);

/// Runs the metadata request `ask` until the brokers answer it. Broker trouble (a timeout, a
/// partition between leaders after a broker pause, a broker away) waits and asks again, with a
/// warning and a backoff up to 5 s; an error no retry mends ([`embedstream_topics::kafka::is_fatal`])
/// is returned; shutdown while waiting is [`Error::Interrupted`].
pub(crate) async fn until_answered<T>(
    what: &str,
    topic: &str,
    kafka: &KafkaConfig,
    shutdown: &CancellationToken,
    mut ask: impl FnMut() -> std::result::Result<T, KafkaError>,
) -> Result<T> {
    let mut backoff = Duration::from_millis(200);
    loop {
        match ask() {
            Ok(v) => return Ok(v),
            Err(e)
                if e.rdkafka_error_code()
                    .is_some_and(embedstream_topics::kafka::is_fatal) =>
            {
                return Err(Error::kafka(kafka)(e));
            }
            Err(e) => {
                tracing::warn!(error = %e, topic, "The brokers did not answer a {what} request; asking again.");
                tokio::select! {
                    () = shutdown.cancelled() => return Err(Error::Interrupted),
                    () = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
}

/// The partitions of `topic`, sorted; an error when it has none. Waits out broker trouble
/// (see [`until_answered`]).
pub(crate) async fn partitions<C: rdkafka::consumer::ConsumerContext + 'static>(
    reader: &StreamConsumer<C>,
    topic: &str,
    kafka: &KafkaConfig,
    shutdown: &CancellationToken,
) -> Result<Vec<i32>> {
    let metadata = until_answered("metadata", topic, kafka, shutdown, || {
        reader.fetch_metadata(Some(topic), METADATA_TIMEOUT)
    })
    .await?;
    let mut partitions: Vec<i32> = metadata
        .topics()
        .iter()
        .flat_map(|t| t.partitions().iter().map(|p| p.id()))
        .collect();
    partitions.sort_unstable();
    if partitions.is_empty() {
        return Err(Error::MissingTopic {
            topic: topic.to_owned(),
        });
    }
    Ok(partitions)
}

/// The low and high watermarks of `topic`'s partition `p`. Waits out broker trouble (see
/// [`until_answered`]).
pub(crate) async fn watermarks(
    reader: &StreamConsumer,
    topic: &str,
    p: i32,
    kafka: &KafkaConfig,
    shutdown: &CancellationToken,
) -> Result<(i64, i64)> {
    until_answered("watermark", topic, kafka, shutdown, || {
        reader.fetch_watermarks(topic, p, METADATA_TIMEOUT)
    })
    .await
}

/// `[lo, hi)` of one partition, read in offset order; fewer records where compaction removed
/// some. Memory: one record at a time (plus the client's fetch buffer).
pub(crate) struct PartitionRange {
    // A consumer of its own for each range: one re-assigned to another position may still
    // hand out records it fetched for the previous one.
    consumer: StreamConsumer,
    topic: String,
    partition: i32,
    lo: i64,
    hi: i64,
    done: bool,
}

impl PartitionRange {
    /// Starts reading `[lo, hi)` of `topic`'s partition `partition`.
    pub(crate) fn open(
        kafka: &KafkaConfig,
        topic: &str,
        partition: i32,
        lo: i64,
        hi: i64,
    ) -> Result<Self> {
        let consumer = new_reader(kafka, "range")?;
        if hi > lo {
            let mut tpl = TopicPartitionList::new();
            tpl.add_partition_offset(topic, partition, Offset::Offset(lo))
                .map_err(Error::kafka(kafka))?;
            consumer.assign(&tpl).map_err(Error::kafka(kafka))?;
        }
        Ok(Self {
            consumer,
            topic: topic.to_owned(),
            partition,
            lo,
            hi,
            done: hi <= lo,
        })
    }

    /// The next record of the range; `None` once the range is read.
    pub(crate) async fn next(
        &mut self,
        shutdown: &CancellationToken,
    ) -> Result<Option<OwnedMessage>> {
        while !self.done {
            let received = tokio::select! {
                () = shutdown.cancelled() => return Err(Error::Interrupted),
                r = tokio::time::timeout(STALL_WARNING, self.consumer.recv()) => r,
            };
            match received {
                Ok(Ok(m))
                    if m.partition() != self.partition
                        || m.topic() != self.topic
                        || m.offset() < self.lo =>
                {
                    tracing::warn!(
                        topic = m.topic(),
                        partition = m.partition(),
                        offset = m.offset(),
                        "Ignoring a record outside the assigned range."
                    );
                }
                Ok(Ok(m)) => {
                    if m.offset() >= self.hi {
                        self.done = true;
                        return Ok(None);
                    }
                    self.done = m.offset() >= self.hi - 1;
                    return Ok(Some(m.detach()));
                }
                Ok(Err(KafkaError::PartitionEOF(p))) if p == self.partition => {
                    self.done = true;
                }
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, topic = self.topic, partition = self.partition, "Read error; retrying.");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(_) => tracing::warn!(
                    topic = self.topic,
                    partition = self.partition,
                    lo = self.lo,
                    hi = self.hi,
                    "No record for 30 s and the partition's end not reached; still waiting for the broker."
                ),
            }
        }
        Ok(None)
    }

    /// The rest of the range, collected (for ranges whose size the caller bounds).
    pub(crate) async fn collect(
        mut self,
        shutdown: &CancellationToken,
    ) -> Result<Vec<OwnedMessage>> {
        let mut out = Vec::new();
        while let Some(m) = self.next(shutdown).await? {
            out.push(m);
        }
        Ok(out)
    }
}
