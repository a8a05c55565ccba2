//! The canary join job: the drift consumer's sibling. It reads `exposures` and `feedback` side
//! by side, joins them ([`Join`]) in event time, judges each consumer's canary ([`judge`]) and
//! records the online gate in the control log; metrics per consumer and arm.
//!
//! - **Where it reads from.** The earliest start of the current migration's canaries (less the
//!   clock skew and a minute), found by record timestamp; a canary that starts earlier than the
//!   job reads from makes it read again from there. Nothing is committed: a restarted job
//!   replays the same records into the same tallies, so its verdicts do not depend on when it
//!   restarted. Exposures served before their consumer's canary began are not counted.
//! - **Watermark.** The least, over every partition of both topics, of the latest record
//!   timestamp read from it; a partition read to its end counts as now (an idle topic does not
//!   hold the others back). A partition not read yet holds it at the start. Record timestamps
//!   (when the record reached Kafka), not event times, so that what is *late* — feedback whose
//!   record is newer than its exposure's window plus lateness — is the same whether the job
//!   reads live or replays after a restart (up to producers' clock skew).
//! - **Records.** The online gate of a consumer is written when its verdict changes, and again
//!   every `record_every` while its counts change. REGRESSION and PARITY are final for the
//!   migration; on REGRESSION the job also ends the canary (share 0, one record) unless the
//!   consumer's policy says not to.
//! - **Faults.** A broker or registry away makes the readers wait and retry (the watermark
//!   stops, nothing is judged on partial data); a record that cannot be decoded for good is
//!   poison: counted in `embedstream_canary_poison_total{topic}` and skipped.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use embedstream_schemas::AvroRecord;
use embedstream_schemas::Codec;
use embedstream_schemas::consumers::{CanaryPolicy, Consumers};
use embedstream_schemas::records::{
    Exposure, ExposureArm, FeedbackEvent, GateResult, OnlineVerdict,
};
use embedstream_topics::KafkaConfig;
use embedstream_topics::admin::{Admin, Layout, canary_topics};
use embedstream_topics::names::TopicNames;
use embedstream_topics::time::now_ms;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::{Message, Offset, TopicPartitionList};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::gate::{Judged, gate_result, judge, tally};
use super::join::{ArmOutcomes, Join, JoinConfig};
use crate::control::ControlLog;
use crate::error::{Error, Result};
use crate::migrate::plan;
use crate::range::QuietEnd;

/// Gauge, by `consumer` and `arm`: final exposures joined.
pub const EXPOSURES: &str = "embedstream_canary_exposures";
/// Gauge, by `consumer`, `arm` and `metric`: the arm's mean of the consumer's metric.
pub const MEAN: &str = "embedstream_canary_metric_mean";
/// Gauge, by `consumer` and `bound` (`estimate`, `low`, `high`): canary − control and its
/// always-valid interval.
pub const DIFFERENCE: &str = "embedstream_canary_difference";
/// Gauge, by `consumer`: exposures per arm the configured power needs.
pub const REQUIRED: &str = "embedstream_canary_required_exposures";
/// Gauge, by `consumer` and `verdict`: 1 for the consumer's current verdict, 0 for the others.
pub const VERDICT: &str = "embedstream_canary_verdict";
/// Gauge, by `reason` (`late`, `unmatched`, `unattributed`): feedback not attributed, since
/// the job started reading.
pub const FEEDBACK_DROPPED: &str = "embedstream_canary_feedback_not_attributed";
/// Gauge: exposures waiting for their window to close.
pub const OPEN: &str = "embedstream_canary_open_exposures";
/// Gauge: seconds the watermark is behind the wall clock.
pub const WATERMARK_LAG: &str = "embedstream_canary_watermark_lag_seconds";
/// Counter, by `topic`: records that cannot be decoded for good, skipped.
pub const POISON: &str = "embedstream_canary_poison_total";

/// Events applied in a row before the job looks at the control log and its tick again.
const DRAIN: usize = 10_000;

/// How the join job runs.
#[derive(Debug, Clone)]
pub struct JobConfig {
    /// The brokers and the client properties of every Kafka client.
    pub kafka: KafkaConfig,
    /// Schema registry URL.
    pub registry_url: String,
    /// Topic names.
    pub names: TopicNames,
    /// The join's time rules.
    pub join: JoinConfig,
    /// How often the watermark advances and the canaries are judged.
    pub tick: Duration,
    /// How often a verdict that did not change is recorded again with its new counts.
    pub record_every: Duration,
    /// The consumers and their canary policies.
    pub consumers: Consumers,
    /// Who the records are written by.
    pub by: String,
}

/// What a reader hands the job.
#[derive(Debug)]
enum Event {
    /// The partitions of a topic, before its first record.
    Partitions(Side, Vec<i32>),
    /// An exposure read from a partition, with its record's timestamp.
    Exposure(i32, i64, Exposure),
    /// A feedback event read from a partition, with its record's timestamp.
    Feedback(i32, i64, FeedbackEvent),
    /// A partition was read to its end.
    End(Side, i32),
}

/// Which topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Side {
    Exposures,
    Feedback,
}

/// The latest record timestamp read from a partition, and whether it was read to its end
/// since.
#[derive(Debug, Clone, Copy)]
struct Progress {
    latest: i64,
    at_end: bool,
}

/// The readers of one pass over the topics, and the join they feed.
struct Pass {
    migration_id: String,
    from: i64,
    join: Join,
    progress: BTreeMap<(Side, i32), Progress>,
    announced: BTreeSet<Side>,
    events: mpsc::Receiver<Event>,
    stop: CancellationToken,
}

impl Pass {
    /// The least latest event time over every partition (now for one read to its end);
    /// `i64::MIN` until both topics named their partitions.
    fn watermark(&self, now: i64) -> i64 {
        if self.announced.len() < 2 {
            return i64::MIN;
        }
        self.progress
            .values()
            .map(|p| {
                if p.at_end {
                    p.latest.max(now)
                } else {
                    p.latest
                }
            })
            .min()
            .unwrap_or(now)
    }
}

impl Drop for Pass {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// The join job.
#[derive(Debug)]
pub struct JoinJob {
    config: JobConfig,
    codec: Codec,
}

/// What the job last recorded for a consumer.
struct Recorded {
    verdict: OnlineVerdict,
    counts: (u64, u64),
    at: Instant,
}

impl JoinJob {
    /// The job; [`Self::run`] makes the topics when they are missing.
    pub fn new(config: JobConfig) -> Self {
        Self {
            codec: Codec::new(&config.registry_url),
            config,
        }
    }

    /// The consumers of the current migration whose canary is running, with its start.
    fn canaries(control: &ControlLog) -> Option<(String, BTreeMap<String, i64>)> {
        let state = control.state();
        let m = state.current_migration()?;
        let running: BTreeMap<String, i64> = state
            .plans()
            .filter_map(|p| {
                let c = p.canary.as_ref()?;
                (c.salt == m.migration_id).then(|| (p.consumer.clone(), c.started_at))
            })
            .collect();
        Some((m.migration_id.clone(), running))
    }

    async fn ensure_topics(&self, shutdown: &CancellationToken) -> Result<()> {
        let mut backoff = Duration::from_millis(200);
        loop {
            let kafka = self.config.kafka.clone();
            let items = self.config.names.items();
            let counted = tokio::task::spawn_blocking(move || {
                Admin::new(&kafka, Duration::from_secs(30))?.partitions(&items)
            })
            .await
            .map_err(Error::task("counting the items partitions"))?;
            let ready = match counted {
                Ok(n) => {
                    let specs = canary_topics(
                        &self.config.names,
                        n.unwrap_or(Layout::default().partitions),
                    );
                    match Admin::new(&self.config.kafka, Duration::from_secs(30)) {
                        Ok(admin) => admin.ensure(&specs).await.map(|_| ()),
                        Err(e) => Err(e),
                    }
                }
                Err(e) => Err(e),
            };
            match ready {
                Ok(()) => return Ok(()),
                Err(e) => {
                    tracing::warn!(error = %e, "Cannot make the exposures and feedback topics yet; retrying.");
                    tokio::select! {
                        () = shutdown.cancelled() => return Err(Error::Interrupted),
                        () = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        }
    }

    /// Starts readers of both topics from `from` (ms) for `migration_id`.
    fn start(&self, migration_id: &str, from: i64, shutdown: &CancellationToken) -> Pass {
        let (tx, events) = mpsc::channel(10_000);
        let stop = shutdown.child_token();
        for side in [Side::Exposures, Side::Feedback] {
            let topic = match side {
                Side::Exposures => self.config.names.exposures(),
                Side::Feedback => self.config.names.feedback(),
            };
            let (kafka, codec, tx, stop) = (
                self.config.kafka.clone(),
                self.codec.clone(),
                tx.clone(),
                stop.clone(),
            );
            tokio::spawn(async move {
                if let Err(e) = read(side, &topic, from, &kafka, &codec, &tx, &stop).await
                    && !matches!(e, Error::Interrupted)
                {
                    tracing::error!(error = %e, topic, "The canary join's reader stopped.");
                }
            });
        }
        tracing::info!(
            migration = migration_id,
            from,
            "The canary join reads exposures and feedback."
        );
        Pass {
            migration_id: migration_id.to_owned(),
            from,
            join: Join::new(self.config.join),
            progress: BTreeMap::new(),
            announced: BTreeSet::new(),
            events,
            stop,
        }
    }

    /// Joins and judges until `shutdown`.
    pub async fn run(&self, control: &ControlLog, shutdown: &CancellationToken) -> Result<()> {
        self.ensure_topics(shutdown).await?;
        let mut pass: Option<Pass> = None;
        let mut recorded: BTreeMap<String, Recorded> = BTreeMap::new();
        let mut tick = tokio::time::interval(self.config.tick);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            // Which pass the control log asks for.
            if let Some((migration_id, running)) = Self::canaries(control) {
                let earliest = running.values().min().copied();
                let skew = self.config.join.skew_ms + 60_000;
                let restart = match (&pass, earliest) {
                    (None, Some(_)) => true,
                    (Some(p), Some(at)) => p.migration_id != migration_id || at - skew < p.from,
                    (Some(p), None) => p.migration_id != migration_id,
                    (None, None) => false,
                };
                if restart {
                    recorded.clear();
                    pass = earliest.map(|at| self.start(&migration_id, at - skew, shutdown));
                }
            } else if pass.take().is_some() {
                recorded.clear();
            }
            let Some(p) = pass.as_mut() else {
                tokio::select! {
                    () = shutdown.cancelled() => return Ok(()),
                    _ = tick.tick() => continue,
                }
            };
            tokio::select! {
                () = shutdown.cancelled() => return Ok(()),
                event = p.events.recv() => {
                    if let Some(event) = event {
                        self.apply(p, control, event);
                        // Some of what is ready, without going back to the control log.
                        for _ in 0..DRAIN {
                            let Ok(event) = p.events.try_recv() else { break };
                            self.apply(p, control, event);
                        }
                    }
                }
                _ = tick.tick() => {
                    if let Err(e) = self.judge_all(p, control, &mut recorded).await {
                        tracing::warn!(error = %e, "Cannot record the online gate yet; judging again next tick.");
                    }
                }
            }
        }
    }

    fn apply(&self, p: &mut Pass, control: &ControlLog, event: Event) {
        match event {
            Event::Partitions(side, parts) => {
                for part in parts {
                    p.progress.entry((side, part)).or_insert(Progress {
                        latest: p.from,
                        at_end: false,
                    });
                }
                p.announced.insert(side);
            }
            Event::End(side, part) => {
                if let Some(g) = p.progress.get_mut(&(side, part)) {
                    g.at_end = true;
                }
            }
            Event::Exposure(part, ts, e) => {
                if let Some(g) = p.progress.get_mut(&(Side::Exposures, part)) {
                    g.latest = g.latest.max(ts);
                    g.at_end = false;
                }
                let state = control.state();
                let started = state
                    .canary(&e.consumer)
                    .filter(|c| c.salt == e.migration_id)
                    .map(|c| c.started_at);
                if e.migration_id == p.migration_id && started.is_none_or(|at| e.served_at >= at) {
                    p.join.exposure(e);
                }
            }
            Event::Feedback(part, ts, f) => {
                if let Some(g) = p.progress.get_mut(&(Side::Feedback, part)) {
                    g.latest = g.latest.max(ts);
                    g.at_end = false;
                }
                p.join.feedback(f, ts);
            }
        }
    }

    /// Advances the watermark, judges every consumer the canary ran for, sets the metrics and
    /// records what changed.
    async fn judge_all(
        &self,
        p: &mut Pass,
        control: &ControlLog,
        recorded: &mut BTreeMap<String, Recorded>,
    ) -> Result<()> {
        let now = now_ms();
        let watermark = p.watermark(now);
        p.join.advance(watermark);
        ::metrics::gauge!(OPEN).set(p.join.open() as f64);
        if watermark > i64::MIN {
            ::metrics::gauge!(WATERMARK_LAG).set((now - watermark).max(0) as f64 / 1000.0);
        }
        for (reason, n) in [
            ("late", p.join.late),
            ("unmatched", p.join.unmatched),
            ("unattributed", p.join.unattributed),
        ] {
            ::metrics::gauge!(FEEDBACK_DROPPED, "reason" => reason).set(n as f64);
        }
        let state = control.state();
        let mut consumers: BTreeSet<String> = p
            .join
            .outcomes()
            .keys()
            .filter(|(_, m, _)| *m == p.migration_id)
            .map(|(c, _, _)| c.clone())
            .collect();
        consumers.extend(
            state
                .plans()
                .filter(|pl| pl.canary.as_ref().is_some_and(|c| c.salt == p.migration_id))
                .map(|pl| pl.consumer.clone()),
        );
        for consumer in consumers {
            let policy = self
                .config
                .consumers
                .get(&consumer)
                .and_then(|profile| profile.canary)
                .unwrap_or_default();
            let arm = |a: ExposureArm| {
                p.join
                    .outcomes()
                    .get(&(consumer.clone(), p.migration_id.clone(), a))
                    .copied()
                    .unwrap_or_default()
            };
            let (control_arm, canary_arm): (ArmOutcomes, ArmOutcomes) =
                (arm(ExposureArm::Control), arm(ExposureArm::Canary));
            let (c, t) = (
                tally(&control_arm, &policy.metric),
                tally(&canary_arm, &policy.metric),
            );
            let offline_gain = state
                .gate(&p.migration_id, &consumer)
                .map(|g| g.new_value - g.old_value);
            let judged = judge(&policy, &c, &t, offline_gain);
            export(&consumer, &policy, &c, &t, &judged);
            let existing = state.online_gate(&p.migration_id, &consumer);
            let final_verdict = existing.and_then(|g| g.online.as_ref()).is_some_and(|o| {
                matches!(o.verdict, OnlineVerdict::Regression | OnlineVerdict::Parity)
            });
            if final_verdict {
                continue;
            }
            let counts = (c.n, t.n);
            let due = match recorded.get(&consumer) {
                None => existing.is_none_or(|g| differs(g, judged.verdict, counts)),
                Some(r) => {
                    r.verdict != judged.verdict
                        || (r.counts != counts && r.at.elapsed() >= self.config.record_every)
                }
            };
            if !due {
                continue;
            }
            let gate = gate_result(
                &p.migration_id,
                &consumer,
                &policy,
                &c,
                &t,
                offline_gain,
                &judged,
                watermark,
            );
            let changed = recorded
                .get(&consumer)
                .is_none_or(|r| r.verdict != judged.verdict);
            control
                .publish(&plan::gate_record(gate, &self.config.by, now))
                .await?;
            if changed {
                tracing::info!(consumer, verdict = ?judged.verdict, reason = %judged.reason, "Online gate.");
            }
            recorded.insert(
                consumer.clone(),
                Recorded {
                    verdict: judged.verdict,
                    counts,
                    at: Instant::now(),
                },
            );
            if judged.verdict == OnlineVerdict::Regression && policy.abort_on_regression {
                self.end_canary(control, &consumer, now).await?;
            }
        }
        Ok(())
    }

    /// Ends `consumer`'s canary in one record (its share to 0).
    async fn end_canary(&self, control: &ControlLog, consumer: &str, now: i64) -> Result<()> {
        let state = control.state();
        if state.canary(consumer).is_none() {
            return Ok(());
        }
        let known = [consumer.to_owned()];
        let records = plan::canary(&state, consumer, 0.0, &known, &self.config.by, now)
            .map_err(|refused| Error::Refused { refused })?;
        for r in &records {
            control.publish(r).await?;
        }
        tracing::warn!(
            consumer,
            "The canary showed a regression: it is ended (share 0)."
        );
        Ok(())
    }
}

/// Whether a recorded online gate differs from a verdict and counts.
fn differs(g: &GateResult, verdict: OnlineVerdict, counts: (u64, u64)) -> bool {
    g.online.as_ref().is_none_or(|o| {
        o.verdict != verdict
            || (o.control_exposures, o.canary_exposures)
                != (
                    i64::try_from(counts.0).unwrap_or(i64::MAX),
                    i64::try_from(counts.1).unwrap_or(i64::MAX),
                )
    })
}

fn export(
    consumer: &str,
    policy: &CanaryPolicy,
    control: &super::stats::Tally,
    canary: &super::stats::Tally,
    judged: &Judged,
) {
    let c = consumer.to_owned();
    for (arm, t) in [("control", control), ("canary", canary)] {
        ::metrics::gauge!(EXPOSURES, "consumer" => c.clone(), "arm" => arm).set(t.n as f64);
        ::metrics::gauge!(MEAN, "consumer" => c.clone(), "arm" => arm, "metric" => policy.metric.clone())
            .set(t.mean());
    }
    if let Some(cmp) = judged.comparison {
        for (bound, v) in [
            ("estimate", cmp.difference),
            ("low", cmp.low),
            ("high", cmp.high),
        ] {
            ::metrics::gauge!(DIFFERENCE, "consumer" => c.clone(), "bound" => bound).set(v);
        }
    }
    if let Some(r) = judged.required {
        ::metrics::gauge!(REQUIRED, "consumer" => c.clone()).set(r as f64);
    }
    for v in [
        OnlineVerdict::Pending,
        OnlineVerdict::Passed,
        OnlineVerdict::Regression,
        OnlineVerdict::Parity,
    ] {
        ::metrics::gauge!(VERDICT, "consumer" => c.clone(), "verdict" => verdict_label(v))
            .set(f64::from(u8::from(v == judged.verdict)));
    }
}

/// A verdict as a metric label.
pub fn verdict_label(v: OnlineVerdict) -> &'static str {
    match v {
        OnlineVerdict::Pending => "pending",
        OnlineVerdict::Passed => "passed",
        OnlineVerdict::Regression => "regression",
        OnlineVerdict::Parity => "parity",
        OnlineVerdict::Unknown => "unknown",
    }
}

/// Reads `topic` from the first records at or after `from` (by record timestamp), decoded,
/// into `tx`, until `stop`.
async fn read(
    side: Side,
    topic: &str,
    from: i64,
    kafka: &KafkaConfig,
    codec: &Codec,
    tx: &mpsc::Sender<Event>,
    stop: &CancellationToken,
) -> Result<()> {
    let consumer: StreamConsumer<QuietEnd> = crate::range::reader_client(kafka, "canary-join")
        .create_with_context(QuietEnd)
        .map_err(Error::kafka(kafka))?;
    let parts = crate::range::partitions(&consumer, topic, kafka, stop).await?;
    let mut at = TopicPartitionList::new();
    for p in &parts {
        at.add_partition_offset(topic, *p, Offset::Offset(from))
            .map_err(Error::kafka(kafka))?;
    }
    let at = crate::range::until_answered("offsets-for-times", topic, kafka, stop, || {
        consumer.offsets_for_times(at.clone(), Duration::from_secs(10))
    })
    .await?;
    consumer.assign(&at).map_err(Error::kafka(kafka))?;
    if tx.send(Event::Partitions(side, parts)).await.is_err() {
        return Ok(());
    }
    loop {
        let message = tokio::select! {
            () = stop.cancelled() => return Err(Error::Interrupted),
            m = consumer.recv() => m,
        };
        let event = match message {
            Ok(m) => {
                let partition = m.partition();
                let ts = m.timestamp().to_millis().unwrap_or_else(now_ms);
                let Some(bytes) = m.payload() else {
                    ::metrics::counter!(POISON, "topic" => topic.to_owned()).increment(1);
                    continue;
                };
                match side {
                    Side::Exposures => decoded(codec, topic, bytes, stop)
                        .await?
                        .map(|e| Event::Exposure(partition, ts, e)),
                    Side::Feedback => decoded(codec, topic, bytes, stop)
                        .await?
                        .map(|f| Event::Feedback(partition, ts, f)),
                }
            }
            Err(KafkaError::PartitionEOF(p)) => Some(Event::End(side, p)),
            Err(e) => {
                tracing::warn!(error = %e, topic, "Reading for the canary join; retrying.");
                tokio::select! {
                    () = stop.cancelled() => return Err(Error::Interrupted),
                    () = tokio::time::sleep(Duration::from_millis(500)) => {}
                }
                None
            }
        };
        if let Some(event) = event
            && tx.send(event).await.is_err()
        {
            return Ok(());
        }
    }
}

/// Decodes one record: registry trouble is waited out; a record that cannot be decoded for
/// good is counted as poison and `None`.
async fn decoded<T: AvroRecord>(
    codec: &Codec,
    topic: &str,
    bytes: &[u8],
    stop: &CancellationToken,
) -> Result<Option<T>> {
    let mut backoff = Duration::from_millis(200);
    loop {
        match codec.decode::<T>(bytes).await {
            Ok(v) => return Ok(Some(v)),
            Err(e) if e.is_retryable() => {
                tracing::warn!(error = %e, topic, "The registry did not answer; decoding again.");
                tokio::select! {
                    () = stop.cancelled() => return Err(Error::Interrupted),
                    () = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
            Err(e) => {
                tracing::warn!(error = %e, topic, "A record cannot be decoded; skipped.");
                ::metrics::counter!(POISON, "topic" => topic.to_owned()).increment(1);
                return Ok(None);
            }
        }
    }
}
