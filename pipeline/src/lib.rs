//! The embedding engine and the stream stage, migrations, the drift monitor, the eval
//! harness, and what the `embedstream` binary's subcommands share (telemetry, shutdown).

pub mod canary;
pub mod control;
pub mod dlq;
pub mod drift;
pub mod embed;
pub mod encoder;
mod error;
pub mod eval;
mod hex;
pub mod instances;
pub mod migrate;
pub mod models;
pub mod outbox;
pub mod query_log;
mod range;
pub mod stage;
pub mod telemetry;

pub use error::{Error, Result};
pub(crate) use hex::hex;
