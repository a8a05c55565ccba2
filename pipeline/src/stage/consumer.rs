//! The consumer side of the stage: one OS thread polls the group consumer, cuts batches (by
//! count or linger time) and hands them to the async side through a bounded channel; the
//! rebalance callback drains a revoked partition's in-flight events and commits before the
//! partition goes to another member.
//!
//! Polling on a thread of its own keeps the rebalance callback, which must block until the
//! drain is done, off the async runtime's workers (they are the ones that finish the drain).

use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use embedstream_topics::KafkaConfig;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance};
use rdkafka::message::OwnedMessage;
use rdkafka::statistics::Statistics;
use rdkafka::{ClientContext, Message};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::membership::{Membership, Watchdog};
use super::metrics as m;
use super::offsets::OffsetTracker;

/// In-flight events and the assignment epoch, shared by the consumer thread, the rebalance
/// callback and the acknowledging task.
#[derive(Debug, Default)]
pub struct Tracker {
    state: Mutex<TrackerState>,
    drained: Condvar,
}

#[derive(Debug, Default)]
struct TrackerState {
    offsets: OffsetTracker,
    /// Bumped on every revoke: a batch cut before it may hold events of partitions this
    /// process no longer owns, and is dropped (they are re-delivered to their new owner).
    epoch: u64,
    /// Bumped when a revoke gives its partitions up (after the drain): a batch cut before it
    /// that is still in flight was not drained in time, and exactly-once aborts its
    /// transaction (its events are read again by their owner).
    given_up: u64,
}

impl Tracker {
    fn lock(&self) -> MutexGuard<'_, TrackerState> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Marks events done, stores the offsets that moved, and wakes a waiting drain.
    pub fn complete<C: ConsumerContext>(
        &self,
        consumer: &BaseConsumer<C>,
        events: impl IntoIterator<Item = (String, i32, i64)>,
    ) {
        let mut state = self.lock();
        for (topic, partition, point) in state.offsets.complete(events) {
            // librdkafka commits the stored offset + 1, the next event to consume.
            if let Err(e) = consumer.store_offset(&topic, partition, point - 1) {
                tracing::debug!(error = %e, topic, partition, "Offset not stored (partition no longer assigned).");
            }
        }
        metrics::gauge!(m::IN_FLIGHT).set(state.offsets.total_in_flight() as f64);
        drop(state);
        self.drained.notify_all();
    }

    /// Events in flight in every partition.
    pub fn total_in_flight(&self) -> usize {
        self.lock().offsets.total_in_flight()
    }

    /// How many revokes have given their partitions up so far.
    pub fn given_up(&self) -> u64 {
        self.lock().given_up
    }
}

/// The consumer's context: drains on revoke, exports lag.
#[derive(Debug)]
pub struct StageContext {
    /// Shared with the acknowledging task.
    pub tracker: Arc<Tracker>,
    /// The consumed topic (for lag).
    pub topic: String,
    /// How long a revoke waits for in-flight events (shorter than the session timeout).
    pub drain_timeout: Duration,
    /// Whether the consumer commits offsets itself (at-least-once); exactly-once commits them
    /// in its transactions.
    pub commits_offsets: bool,
    /// The group membership from the statistics.
    pub membership: Membership,
}

/// A partition's lag: from the committed offset when the client knows it (at-least-once);
/// under exactly-once the offsets are committed through transactions, which the consumer
/// does not track, so from its position instead (the last stable offset minus the next offset
/// the stage reads; the events between position and commit are the in-flight ones, bounded).
fn lag(p: &rdkafka::statistics::Partition) -> Option<i64> {
    if p.consumer_lag >= 0 {
        Some(p.consumer_lag)
    } else if p.ls_offset >= 0 && p.app_offset >= 0 {
        Some((p.ls_offset - p.app_offset).max(0))
    } else {
        None
    }
}

impl ClientContext for StageContext {
    fn stats(&self, statistics: Statistics) {
        if let Some(group) = &statistics.cgrp {
            self.membership.observe(group);
        }
        if let Some(topic) = statistics.topics.get(&self.topic) {
            self.membership.fetch.observe(topic);
            for (partition, p) in &topic.partitions {
                if let Some(lag) = lag(p)
                    && *partition >= 0
                {
                    metrics::gauge!(m::CONSUMER_LAG, "partition" => partition.to_string())
                        .set(lag as f64);
                }
            }
        }
    }
}

impl ConsumerContext for StageContext {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let Rebalance::Revoke(tpl) = rebalance else {
            return;
        };
        let revoked: Vec<(String, i32)> = tpl
            .elements()
            .iter()
            .map(|e| (e.topic().to_owned(), e.partition()))
            .collect();
        let start = Instant::now();
        let mut state = self.tracker.lock();
        state.epoch += 1;
        let pending = |s: &TrackerState| -> usize {
            revoked
                .iter()
                .map(|(t, p)| s.offsets.in_flight(t, *p))
                .sum()
        };
        let (mut state, _) = self
            .tracker
            .drained
            .wait_timeout_while(state, self.drain_timeout, |s| pending(s) > 0)
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let left = pending(&state);
        for (t, p) in &revoked {
            state.offsets.forget(t, *p);
        }
        state.given_up += 1;
        drop(state);
        // Commit what is stored now, so the next owner starts right after the drained events.
        if self.commits_offsets
            && let Err(e) = consumer.commit_consumer_state(CommitMode::Sync)
        {
            tracing::debug!(error = %e, "Nothing to commit on revoke.");
        }
        if left > 0 {
            tracing::warn!(
                partitions = revoked.len(),
                left,
                "Revoke drain timed out; those events will be re-delivered to the next owner."
            );
        } else {
            tracing::info!(
                partitions = revoked.len(),
                elapsed_ms = start.elapsed().as_millis() as u64,
                "Drained revoked partitions."
            );
        }
    }

    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(tpl) = rebalance {
            tracing::info!(partitions = tpl.count(), "Partitions assigned.");
        }
    }
}

/// A cut of consumed records, in consumption order.
#[derive(Debug)]
pub struct Batch {
    /// The records.
    pub messages: Vec<OwnedMessage>,
    /// When the first of them was consumed.
    pub first_at: Instant,
    /// [`Tracker::given_up`] when the batch was cut.
    pub given_up: u64,
}

/// How the consumer thread cuts batches.
#[derive(Debug, Clone, Copy)]
pub struct Batching {
    /// Records per batch, at most.
    pub max_events: usize,
    /// How long the first record of a batch waits for more.
    pub linger: Duration,
}

/// Why the consumer thread returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// Cancelled, or the receiving side is gone.
    Stopped,
    /// The consumer stayed out of its group, or stopped fetching a partition with records,
    /// while the brokers answered ([`Watchdog`]).
    Stuck,
}

/// Polls until `shutdown`, sending batches to `out`, and returns [`Ended::Stuck`] when the
/// watchdog gives the consumer up.
pub fn consume_loop(
    consumer: &BaseConsumer<StageContext>,
    batching: Batching,
    out: &mpsc::Sender<Batch>,
    shutdown: &CancellationToken,
    watchdog: &Watchdog,
) -> Ended {
    let tracker = consumer.context().tracker.clone();
    let mut buffer: Vec<OwnedMessage> = Vec::new();
    let mut buffer_epoch = 0;
    let mut first_at = Instant::now();
    let mut looked_at = Instant::now();
    while !shutdown.is_cancelled() {
        if looked_at.elapsed() >= watchdog.every {
            looked_at = Instant::now();
            if watchdog.stuck(&consumer.context().membership) {
                return Ended::Stuck;
            }
        }
        let wait = if buffer.is_empty() {
            Duration::from_millis(100)
        } else {
            batching.linger.saturating_sub(first_at.elapsed())
        };
        match consumer.poll(wait) {
            Some(Ok(msg)) => {
                metrics::counter!(m::CONSUMED).increment(1);
                let epoch = tracker.lock().epoch;
                if buffer.is_empty() || epoch != buffer_epoch {
                    buffer.clear();
                    buffer_epoch = epoch;
                    first_at = Instant::now();
                }
                buffer.push(msg.detach());
            }
            Some(Err(e)) => tracing::warn!(error = %e, "Consumer error; continuing."),
            None => {}
        }
        let full = buffer.len() >= batching.max_events;
        let due = !buffer.is_empty() && first_at.elapsed() >= batching.linger;
        if full || due {
            let messages = std::mem::take(&mut buffer);
            let given_up = {
                let mut state = tracker.lock();
                if state.epoch != buffer_epoch {
                    // Cut before a revoke: these go to the partitions' next owner.
                    continue;
                }
                state.offsets.submit(
                    messages
                        .iter()
                        .map(|m| (m.topic().to_owned(), m.partition(), m.offset())),
                );
                metrics::gauge!(m::IN_FLIGHT).set(state.offsets.total_in_flight() as f64);
                state.given_up
            };
            let batch = Batch {
                messages,
                first_at,
                given_up,
            };
            if out.blocking_send(batch).is_err() {
                return Ended::Stopped;
            }
        }
    }
    Ended::Stopped
}

/// Reads how far a consumer group is behind on a topic, through one Kafka client kept for it
/// (the group's committed offsets are read without joining the group).
pub struct GroupLag {
    consumer: BaseConsumer,
    topic: String,
    kafka: KafkaConfig,
}

impl std::fmt::Debug for GroupLag {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GroupLag")
            .field("topic", &self.topic)
            .field("kafka", &self.kafka)
            .finish_non_exhaustive()
    }
}

impl GroupLag {
    /// A reader of `group`'s lag on `topic`.
    pub fn new(kafka: &KafkaConfig, group: &str, topic: &str) -> crate::Result<Self> {
        let consumer = kafka
            .client()
            .set("group.id", group)
            .set("enable.auto.commit", "false")
            .create()
            .map_err(crate::Error::kafka(kafka))?;
        Ok(Self {
            consumer,
            topic: topic.to_owned(),
            kafka: kafka.clone(),
        })
    }

    /// Σ over partitions of (high watermark − committed offset, or the low watermark where the
    /// group has committed nothing), and Σ of high watermarks.
    pub fn read(&self) -> crate::Result<(i64, i64)> {
        use rdkafka::{Offset, TopicPartitionList};
        let timeout = Duration::from_secs(5);
        let kafka = crate::Error::kafka(&self.kafka);
        let topic = self.topic.as_str();
        let metadata = self
            .consumer
            .fetch_metadata(Some(topic), timeout)
            .map_err(&kafka)?;
        let mut tpl = TopicPartitionList::new();
        for p in metadata.topics().iter().flat_map(|t| t.partitions()) {
            tpl.add_partition(topic, p.id());
        }
        let committed = self
            .consumer
            .committed_offsets(tpl, timeout)
            .map_err(&kafka)?;
        let (mut lag, mut total) = (0, 0);
        for e in committed.elements() {
            let (low, high) = self
                .consumer
                .fetch_watermarks(topic, e.partition(), timeout)
                .map_err(&kafka)?;
            let at = match e.offset() {
                Offset::Offset(o) => o.max(low),
                _ => low,
            };
            lag += (high - at).max(0);
            total += high;
        }
        Ok((lag, total))
    }
}
