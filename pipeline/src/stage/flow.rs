//! What moves between the stage's steps: decoded entries, submitted batches, and the output
//! records on their way to the broker.

use std::time::Instant;

use rdkafka::message::OwnedMessage;
use rdkafka::producer::DeliveryFuture;

use super::models::ActiveModel;
use super::validate::{Poison, Work};
use crate::embed::engine::Pending;

/// The stage's name in dead letters and logs.
pub const STAGE: &str = "embed-stage";

/// One consumed record, decoded and checked.
pub(super) struct Entry {
    pub(super) message: OwnedMessage,
    pub(super) outcome: std::result::Result<Work, Poison>,
}

/// A record's delivery: still to be reported, or already awaited (exactly-once awaits them
/// before it commits).
pub(super) enum Delivery {
    /// The client will report it.
    Pending(DeliveryFuture),
    /// Reported: the error, if it failed.
    Done(Option<crate::error::Error>),
}

/// A batch whose texts are queued on every active version's engine.
pub(super) struct Submitted {
    /// `Tracker::given_up` when the batch was cut.
    pub(super) given_up: u64,
    pub(super) entries: Vec<Entry>,
    pub(super) models: Vec<ActiveModel>,
    /// Per model, the vectors of the batch's upserts in order.
    pub(super) pending: Vec<Pending>,
    pub(super) texts: Vec<String>,
    pub(super) embed_start: Instant,
}

/// Output records of a batch on their way to the broker.
pub(super) struct Sent {
    pub(super) events: Vec<(String, i32, i64)>,
    pub(super) event_times: Vec<i64>,
    /// Per record: its metric label (the model version, or `dlq`), its topic, its delivery.
    pub(super) deliveries: Vec<(String, String, Delivery)>,
    pub(super) produce_start: Instant,
    /// Exactly-once aborted the batch's transaction: nothing of it is visible, and its events
    /// are read again by their partitions' owner.
    pub(super) aborted: bool,
}
