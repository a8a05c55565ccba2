//! Reading `drift.reports` from its beginning and as reports arrive (the status page's
//! drift history).

use std::time::Duration;

use embedstream_schemas::Codec;
use embedstream_schemas::records::DriftReport;
use embedstream_topics::KafkaConfig;
use embedstream_topics::admin::{Admin, TopicSpec};
use tokio_util::sync::CancellationToken;

use crate::error::{Error, Result};

/// How long `drift.reports` keeps reports (a history, not compacted: the platform's topic
/// layout says the same).
pub(super) const REPORT_RETENTION: Duration = Duration::from_secs(28 * 24 * 3600);

/// Reads `topic` (drift reports) from its beginning and hands each report to `on_report`,
/// following it until `shutdown` (the status page's drift history). Undecodable records are
/// logged and skipped; an unreachable registry is retried.
pub async fn follow_reports(
    kafka: &KafkaConfig,
    codec: Codec,
    topic: &str,
    mut on_report: impl FnMut(DriftReport) + Send + 'static,
    shutdown: CancellationToken,
) -> Result<()> {
    use futures::StreamExt;
    use rdkafka::consumer::{Consumer, StreamConsumer};
    use rdkafka::{Message, Offset, TopicPartitionList};

    let kafka_error = Error::kafka(kafka);
    Admin::new(kafka, Duration::from_secs(30))?
        .ensure(&[TopicSpec::retained(topic, 1, REPORT_RETENTION)])
        .await?;
    let consumer: StreamConsumer = kafka
        .client()
        .set(
            "group.id",
            format!("embedstream-drift-view-{}", uuid::Uuid::new_v4()),
        )
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .set("fetch.wait.max.ms", "100")
        .create()
        .map_err(&kafka_error)?;
    let metadata = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(30))
        .map_err(&kafka_error)?;
    let mut tpl = TopicPartitionList::new();
    for p in metadata.topics().iter().flat_map(|t| t.partitions()) {
        tpl.add_partition_offset(topic, p.id(), Offset::Beginning)
            .map_err(&kafka_error)?;
    }
    consumer.assign(&tpl).map_err(&kafka_error)?;
    let mut stream = consumer.stream();
    loop {
        let msg = tokio::select! {
            () = shutdown.cancelled() => return Ok(()),
            msg = stream.next() => msg,
        };
        let Some(msg) = msg else { return Ok(()) };
        let msg = match msg {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!(error = %e, topic, "Error reading drift reports; retrying.");
                tokio::time::sleep(Duration::from_millis(500)).await;
                continue;
            }
        };
        let Some(bytes) = msg.payload() else { continue };
        loop {
            match codec.decode::<DriftReport>(bytes).await {
                Ok(r) => {
                    on_report(r);
                    break;
                }
                Err(e) if e.is_retryable() => {
                    tokio::select! {
                        () = shutdown.cancelled() => return Ok(()),
                        () = tokio::time::sleep(Duration::from_millis(500)) => {}
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, offset = msg.offset(), topic, "Skipping an undecodable drift report.");
                    break;
                }
            }
        }
    }
}
