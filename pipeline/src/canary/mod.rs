//! The request-level canary's data path: the router's exposures to the `exposures` topic
//! (keyed by request id; `exposure.avsc`), beside the `feedback` topic downstream applications
//! write (`feedback_event.avsc`), co-partitioned with it; the [`join`] of the two, and the
//! [`stats`] its [`gate`] reads, and the [`job`] that runs them on the topics.

pub mod gate;
pub mod job;
pub mod join;
pub mod stats;

use embedstream_schemas::Codec;
use embedstream_schemas::records::Exposure;
use embedstream_topics::KafkaConfig;
use embedstream_topics::admin::{Layout, canary_topics};
use embedstream_topics::names::TopicNames;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Counter: exposures the broker acknowledged.
pub const EXPOSURES_WRITTEN: &str = "embedstream_exposures_written_total";
/// Counter, by `reason` (`encode`, `delivery`): exposures that did not reach the topic.
pub const EXPOSURES_FAILED: &str = "embedstream_exposures_failed_total";

/// Exposures the router's queue holds while the writer is behind.
pub const QUEUE: usize = 50_000;

/// Writes exposures from `queue` to the exposures topic until `shutdown`. A missing topic is
/// created with the partition count of `items` (as `feedback` is), or the default layout's.
pub fn spawn_exposures(
    kafka: KafkaConfig,
    registry_url: &str,
    names: &TopicNames,
    queue: mpsc::Receiver<Exposure>,
    shutdown: CancellationToken,
) {
    let [exposures, _] = canary_topics(names, Layout::default().partitions);
    crate::outbox::spawn(
        crate::outbox::Writer {
            kafka,
            codec: Codec::new(registry_url),
            spec: exposures,
            partitions_like: Some(names.items()),
            key: |e: &Exposure| e.request_id.clone(),
            written: EXPOSURES_WRITTEN,
            failed: EXPOSURES_FAILED,
        },
        queue,
        shutdown,
    );
}
