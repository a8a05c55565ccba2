//! Topic naming and versioning, topic administration, and the model-version catalog.
//!
//! Naming and the catalog are pure (no Kafka needed to use them); [`admin`] talks to the
//! broker. Every topic the platform uses is declared in [`admin::platform_topics`], with its
//! partition count and configs, so that creating them is one idempotent call.

pub mod admin;
pub mod catalog;
mod error;
pub mod hash;
pub mod kafka;
pub mod names;
pub mod slice;
pub mod stall;
pub mod time;

pub use catalog::{ModelRef, ModelSpec};
pub use error::{Error, Result};
pub use kafka::KafkaConfig;
#[cfg(feature = "testing")]
pub mod testing;
