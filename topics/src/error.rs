//! Errors of the topics crate.

/// Errors of topic naming and administration.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A name that is not a legal model id or model reference. Fatal (fix the input).
    #[error("invalid model reference {input:?}: {reason}")]
    InvalidModelRef {
        /// What was given.
        input: String,
        /// Why it is not valid.
        reason: &'static str,
    },
    /// A model reference that is not in the catalog. Fatal (fix the input).
    #[error("unknown model {model}; known: {known}")]
    UnknownModel {
        /// What was asked for.
        model: String,
        /// The catalog's models, comma-separated.
        known: String,
    },
    /// The broker refused or failed an admin request. Retryable when the broker is starting;
    /// fatal when `reason` says the client cannot authenticate or does not trust the broker.
    #[error(
        "topic admin request for {topic:?} failed: {source}{}",
        .reason.as_deref().map(|r| format!(" ({r})")).unwrap_or_default()
    )]
    Admin {
        /// The topic concerned ("*" for a metadata request).
        topic: String,
        /// What the client said.
        #[source]
        source: rdkafka::error::KafkaError,
        /// The last error the client met on its connections (a failed authentication, an
        /// untrusted certificate), when it met one.
        reason: Option<Box<str>>,
    },
    /// The broker answered a per-topic error code. Fatal unless the code says otherwise.
    #[error("broker refused {operation} of topic {topic:?}: {code:?}")]
    TopicRefused {
        /// create / describe / delete.
        operation: &'static str,
        /// The topic.
        topic: String,
        /// The broker's error code.
        code: rdkafka::types::RDKafkaErrorCode,
    },
    /// An existing topic has fewer partitions than the platform needs. Fatal: increase them
    /// with the broker's tools (keys would move to other partitions, so it is not automatic).
    #[error("topic {topic:?} exists with {actual} partitions, fewer than the {wanted} configured")]
    TooFewPartitions {
        /// The topic.
        topic: String,
        /// What exists.
        actual: i32,
        /// What the config asks for.
        wanted: i32,
    },
    /// A Kafka client property that cannot be used. Fatal (fix the configuration).
    #[error("Kafka property {key:?} from {origin}: {reason}")]
    KafkaProperty {
        /// Where it was given (a file and line, an environment variable, an option).
        origin: String,
        /// The key (or the whole text when it is not `key=value`).
        key: String,
        /// Why it was refused.
        reason: String,
    },
    /// The Kafka properties file cannot be read. Fatal.
    #[error("cannot read the Kafka properties file {path:?}: {source}")]
    KafkaConfigFile {
        /// The file.
        path: std::path::PathBuf,
        /// What the OS said.
        #[source]
        source: std::io::Error,
    },
}

/// Result with the crate's error.
pub type Result<T, E = Error> = std::result::Result<T, E>;
