//! Watching the stage's group consumer: one that stays out of a steady group, or stops fetching
//! a partition that has records for it, while the brokers answer, is replaced by a fresh one.
//!
//! Rule: the consumer is stuck rather than waiting out an outage when, for [`Watchdog::after`]
//! (twice the session timeout: longer than any rebalance, drain included), either the client's
//! statistics have not shown the member joined and steady (group state `up`, join state
//! `steady`), or an assigned partition's fetch position has not moved with nothing waiting in
//! its fetch queue (so not held back by a slow stage) while a separate client sees records past
//! that position ([`embedstream_topics::stall`]); in both cases only while that separate
//! client reads the topic's metadata. The stage then starts over with a new consumer and
//! producer. Nothing is lost by it: the old member's unacknowledged events were
//! never committed, and its partitions were revoked (and drained) when its session ended.
//! While the brokers do not answer, the consumer is left to reconnect by itself.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use embedstream_topics::KafkaConfig;
use embedstream_topics::stall::{FetchStalls, leaders_known, records_past};
use rdkafka::statistics::ConsumerGroup;

/// The membership as the client's statistics last showed it.
#[derive(Debug)]
pub struct Membership {
    state: Mutex<Seen>,
    /// The consumed topic's partitions whose fetching stalled.
    pub fetch: FetchStalls,
}

#[derive(Debug)]
struct Seen {
    /// When the member was last seen joined and steady (or created).
    steady_at: Instant,
    /// When the last report came (reports are delivered by polls: a thread that did not poll
    /// for a while has none, and is not judged on old ones).
    report_at: Instant,
    /// The last group and join states, to log changes.
    last: (String, String),
}

impl Default for Membership {
    fn default() -> Self {
        Self {
            state: Mutex::new(Seen {
                steady_at: Instant::now(),
                report_at: Instant::now(),
                last: (String::new(), String::new()),
            }),
            fetch: FetchStalls::default(),
        }
    }
}

impl Membership {
    /// Takes the group part of a statistics report.
    pub fn observe(&self, group: &ConsumerGroup) {
        let mut seen = self
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        seen.report_at = Instant::now();
        if group.state == "up" && group.join_state == "steady" {
            seen.steady_at = Instant::now();
        }
        if seen.last.0 != group.state || seen.last.1 != group.join_state {
            tracing::debug!(
                state = %group.state,
                join_state = %group.join_state,
                assigned = group.assignment_size,
                "Group membership changed."
            );
            seen.last = (group.state.clone(), group.join_state.clone());
        }
    }

    /// How long the member has not been seen joined and steady, and how old the last report
    /// is.
    pub fn unsteady_for(&self) -> (Duration, Duration) {
        let seen = self
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        (seen.steady_at.elapsed(), seen.report_at.elapsed())
    }

    /// The last group and join states seen.
    pub fn last(&self) -> (String, String) {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .last
            .clone()
    }
}

/// When the consumer thread gives its consumer up.
#[derive(Debug, Clone)]
pub struct Watchdog {
    /// How long out of a steady group is too long.
    pub after: Duration,
    /// How often the consumer thread looks.
    pub every: Duration,
    /// For the probe client.
    pub kafka: KafkaConfig,
    /// The topic whose metadata the probe reads.
    pub topic: String,
}

impl Watchdog {
    /// Whether the consumer is stuck (see the module's rule).
    pub fn stuck(&self, membership: &Membership) -> bool {
        let (out_for, report_age) = membership.unsteady_for();
        // Judged on a recent report only (statistics come every few seconds while polling).
        if report_age > self.every * 3 {
            return false;
        }
        let stalled = membership.fetch.stalled(self.after);
        if out_for < self.after && stalled.is_empty() {
            return false;
        }
        if !leaders_known(&self.kafka, &self.topic) {
            tracing::info!(
                out_for_secs = out_for.as_secs(),
                "The brokers do not answer; the group consumer waits for them."
            );
            return false;
        }
        if out_for >= self.after {
            let (state, join_state) = membership.last();
            tracing::warn!(
                out_for_secs = out_for.as_secs(),
                %state,
                %join_state,
                "The group consumer has not rejoined its group while the brokers answer; replacing it."
            );
            return true;
        }
        if let Some((partition, position, end)) = records_past(&self.kafka, &self.topic, &stalled) {
            tracing::warn!(
                partition,
                position,
                end,
                "The group consumer stopped fetching a partition with records while the brokers answer; replacing it."
            );
            return true;
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_an_up_and_steady_report_counts_as_joined() {
        let m = Membership::default();
        std::thread::sleep(Duration::from_millis(20));
        let report = |state: &str, join_state: &str| ConsumerGroup {
            state: state.into(),
            join_state: join_state.into(),
            ..ConsumerGroup::default()
        };
        m.observe(&report("query-coord", "init"));
        m.observe(&report("up", "wait-join"));
        let (out_for, report_age) = m.unsteady_for();
        assert!(out_for >= Duration::from_millis(20));
        assert!(report_age < Duration::from_millis(20));
        assert_eq!(m.last(), ("up".to_owned(), "wait-join".to_owned()));
        m.observe(&report("up", "steady"));
        assert!(m.unsteady_for().0 < Duration::from_millis(20));
    }
}
