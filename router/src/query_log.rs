//! The query log: each answered text query, handed to a writer (the platform's: the `queries`
//! topic) through a bounded queue.
//!
//! Logging never slows or fails a query: a query is offered to the queue and, when the queue
//! is full (the writer is behind, or the broker or registry is away longer than the queue
//! lasts), it is not logged and `embedstream_router_query_log_dropped_total` counts it. The
//! log is a training source, not a record of every query. Not logged: queries by vector, a
//! consumer with `log_queries = false`, a request with `"log_query": false`, and requests
//! that bring their own `plan` (evaluation traffic: golden-set queries must not become
//! training data for the adapters those sets judge).

use embedstream_schemas::records::LoggedQuery;
use tokio::sync::mpsc;

use crate::metrics;
use ::metrics as metrics_crate;

/// The router's end of the query log.
#[derive(Debug, Clone)]
pub struct QueryLog(mpsc::Sender<LoggedQuery>);

impl QueryLog {
    /// A log whose queue holds `capacity` queries, and the writer's end.
    pub fn channel(capacity: usize) -> (Self, mpsc::Receiver<LoggedQuery>) {
        let (tx, rx) = mpsc::channel(capacity.max(1));
        (Self(tx), rx)
    }

    /// Queues `query` for the writer, or counts it dropped when the queue is full or closed.
    pub fn offer(&self, query: LoggedQuery) {
        let consumer = query.consumer.clone();
        match self.0.try_send(query) {
            Ok(()) => {
                metrics_crate::counter!(metrics::QUERY_LOG_QUEUED, "consumer" => consumer)
                    .increment(1);
            }
            Err(_) => {
                metrics_crate::counter!(metrics::QUERY_LOG_DROPPED, "consumer" => consumer)
                    .increment(1);
            }
        }
    }
}
