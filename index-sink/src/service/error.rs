//! Errors that stop the sink service. Every one is fatal to the process: bad records and bad
//! requests never become a `ServiceError` (they are counted, logged and skipped, or answered
//! with 400), and retryable conditions (a full hot part, an unreachable registry) are retried
//! in place.
//!
//! The service has its own enum beside the index core's [`crate::Error`] because the core
//! knows no Kafka, no HTTP and no files but its snapshots; a core error reaches the service as
//! [`ServiceError::Index`] with its source.

use std::net::SocketAddr;
use std::path::PathBuf;

/// `Result` with [`ServiceError`].
pub type ServiceResult<T, E = ServiceError> = std::result::Result<T, E>;

/// Why the sink service cannot start or go on.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// Fatal: the config file cannot be read.
    #[error("cannot read the config file {path}")]
    ReadConfig {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// Fatal: the config file is not valid TOML/JSON for [`super::Settings`].
    #[error("config file {path}: {message}")]
    ParseConfig {
        /// The file.
        path: PathBuf,
        /// What the parser said (with line and column).
        message: String,
    },
    /// Fatal: a setting cannot work.
    #[error("invalid setting {field}: {reason}")]
    Settings {
        /// Dotted path of the field.
        field: String,
        /// Why.
        reason: String,
    },
    /// Fatal: the index core refused (configuration, snapshot directory, an incompatible
    /// snapshot).
    #[error("index")]
    Index {
        /// The core's error.
        #[source]
        source: crate::Error,
    },
    /// Fatal: the Kafka client failed where the sink cannot go on.
    #[error("kafka: {op}")]
    Kafka {
        /// What was being done.
        op: &'static str,
        /// The client's error.
        #[source]
        source: rdkafka::error::KafkaError,
    },
    /// Fatal: the HTTP port cannot be bound.
    #[error("cannot listen on {addr}")]
    Listen {
        /// The address.
        addr: SocketAddr,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// Fatal: a thread of the service panicked or could not start.
    #[error("the {what} thread failed")]
    Thread {
        /// Which thread.
        what: &'static str,
    },
}
