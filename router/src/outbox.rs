//! Records the router hands to writers (the platform's: Kafka topics) through bounded queues:
//! the query log and the canary's exposures.
//!
//! Neither ever slows or fails a query: a record is offered to its queue and, when the queue is
//! full (the writer is behind, or the broker or registry is away longer than the queue lasts),
//! it is dropped and counted.
//!
//! - **The query log** ([`QueryLog`]): each answered text query, a training source for the
//!   adapters, not a record of every query. Not logged: queries by vector, a consumer with
//!   `log_queries = false`, a request with `"log_query": false`, and requests that bring their
//!   own `plan` (evaluation traffic: golden-set queries must not become training data for the
//!   adapters those sets judge). Drops: `embedstream_router_query_log_dropped_total`.
//! - **Exposures** ([`ExposureLog`]): each answer served to a consumer under a request-level
//!   canary, in either arm (requests with their own `plan` are outside the experiment). A
//!   drop does not depend on the arm, so it costs the experiment exposures, not balance; the
//!   join counts feedback whose exposure it never saw. Drops:
//!   `embedstream_router_exposures_dropped_total`.

use embedstream_schemas::records::{Exposure, LoggedQuery};
use tokio::sync::mpsc;

use crate::metrics;
use ::metrics as metrics_crate;

/// The router's end of one writer's queue.
#[derive(Debug)]
pub struct Outbox<T> {
    queue: mpsc::Sender<T>,
    queued: &'static str,
    dropped: &'static str,
}

impl<T> Clone for Outbox<T> {
    fn clone(&self) -> Self {
        Self {
            queue: self.queue.clone(),
            queued: self.queued,
            dropped: self.dropped,
        }
    }
}

impl<T> Outbox<T> {
    fn new(
        capacity: usize,
        queued: &'static str,
        dropped: &'static str,
    ) -> (Self, mpsc::Receiver<T>) {
        let (queue, rx) = mpsc::channel(capacity.max(1));
        (
            Self {
                queue,
                queued,
                dropped,
            },
            rx,
        )
    }

    /// Queues `record` (of `consumer`) for the writer, or counts it dropped when the queue is
    /// full or closed.
    pub fn offer(&self, record: T, consumer: &str) {
        let counter = match self.queue.try_send(record) {
            Ok(()) => self.queued,
            Err(_) => self.dropped,
        };
        metrics_crate::counter!(counter, "consumer" => consumer.to_owned()).increment(1);
    }
}

/// The query log's queue.
pub type QueryLog = Outbox<LoggedQuery>;

impl Outbox<LoggedQuery> {
    /// A query log whose queue holds `capacity` queries, and the writer's end.
    pub fn channel(capacity: usize) -> (Self, mpsc::Receiver<LoggedQuery>) {
        Self::new(
            capacity,
            metrics::QUERY_LOG_QUEUED,
            metrics::QUERY_LOG_DROPPED,
        )
    }
}

/// The exposures' queue.
pub type ExposureLog = Outbox<Exposure>;

impl Outbox<Exposure> {
    /// An exposure log whose queue holds `capacity` exposures, and the writer's end.
    pub fn channel(capacity: usize) -> (Self, mpsc::Receiver<Exposure>) {
        Self::new(
            capacity,
            metrics::EXPOSURES_QUEUED,
            metrics::EXPOSURES_DROPPED,
        )
    }
}
