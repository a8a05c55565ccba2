//! The crate's one error type.
//!
//! Every variant says what the caller should do with it: **retryable** (try the same thing
//! again later; nothing was changed), **poison** (this record or request can never succeed:
//! skip and dead-letter it, or answer 400), or **fatal** (the sink cannot go on safely; stop
//! and let an operator look). Nothing here is flattened into a string: sources are kept.

use std::path::PathBuf;

/// `Result` with this crate's [`Error`] as the default error.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What can go wrong in the index core.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Poison: the vector has another dimension than the index.
    #[error("vector has dimension {got}, the index expects {expected}")]
    DimensionMismatch {
        /// The index's dimension.
        expected: usize,
        /// The vector's length.
        got: usize,
    },
    /// Poison: a component of the vector is NaN or infinite.
    #[error("vector component {index} is not a finite number")]
    NonFinite {
        /// Position of the first bad component.
        index: usize,
    },
    /// Poison: the vector has norm 0 (or so close to 0 that it cannot be normalized).
    #[error("vector has zero norm and cannot be normalized")]
    ZeroVector,
    /// Poison: an upsert or delete without an item id.
    #[error("item id is empty")]
    EmptyItemId,
    /// Poison (a bad request): `k` is 0 or above the configured maximum.
    #[error("k = {k} is out of range 1..={max}")]
    KOutOfRange {
        /// The requested k.
        k: usize,
        /// The largest k the index serves.
        max: usize,
    },
    /// Retryable: the hot shard is full; compaction drains it. Nothing was applied: pause the
    /// partition and retry this same record before any later one of its partition.
    #[error("hot part of shard {shard} holds {len} vectors, its limit")]
    HotFull {
        /// The shard.
        shard: usize,
        /// Vectors in its hot part.
        len: usize,
    },
    /// Fatal: the configuration cannot work.
    #[error("invalid configuration: {field}: {reason}")]
    InvalidConfig {
        /// The offending field, dotted path.
        field: &'static str,
        /// Why.
        reason: &'static str,
    },
    /// Fatal: the snapshot directory holds another slice's index.
    #[error("{dir} holds the index of slice {held}, not of slice {wanted}")]
    OtherSliceDirectory {
        /// The snapshot directory.
        dir: PathBuf,
        /// The slice its marker names.
        held: String,
        /// The slice asked for.
        wanted: String,
    },
    /// Fatal: file-system I/O on the snapshot directory failed.
    #[error("{op} {path}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// Internal, never returned by `open` (a corrupt snapshot makes it fall back to an older
    /// one or to an empty shard): the snapshot file failed its checks.
    #[error("snapshot {path} is corrupt: {reason}")]
    SnapshotCorrupt {
        /// The snapshot file.
        path: PathBuf,
        /// Which check failed.
        reason: &'static str,
    },
    /// Internal, like `SnapshotCorrupt`: a cold segment file failed its checks (the snapshot
    /// that names it is then unusable and handled as corrupt).
    #[error("cold segment {path} is corrupt: {reason}")]
    SegmentCorrupt {
        /// The segment file.
        path: PathBuf,
        /// Which check failed.
        reason: String,
    },
    /// Fatal: a valid snapshot belongs to another index layout (shard count, dimension or
    /// hash), so loading it would misroute items. Use a fresh directory and replay the topic.
    #[error("snapshot {path} does not fit this index: {reason}")]
    SnapshotIncompatible {
        /// The snapshot file.
        path: PathBuf,
        /// Which field differs.
        reason: String,
    },
    /// Fatal: copying the graph out of `instant-distance` failed, which means its private
    /// layout is not the one this crate was written against (the dependency changed).
    #[error("cannot read the graph built by instant-distance")]
    GraphBridge {
        /// The decode error.
        #[source]
        source: GraphBridgeError,
    },
    /// Fatal: the compaction thread pool could not be started.
    #[error("cannot start the compaction thread pool")]
    ThreadPool {
        /// Rayon's error.
        #[source]
        source: rayon::ThreadPoolBuildError,
    },
}

/// Either side of the bincode bridge in [`Error::GraphBridge`].
#[derive(Debug, thiserror::Error)]
pub enum GraphBridgeError {
    /// Serializing instant-distance's graph failed.
    #[error(transparent)]
    Encode(#[from] bincode::error::EncodeError),
    /// Deserializing it into our layout failed.
    #[error(transparent)]
    Decode(#[from] bincode::error::DecodeError),
    /// It decoded, but the parts do not agree with each other.
    #[error("graph layout check failed: {0}")]
    Layout(&'static str),
}

impl Error {
    /// Whether trying the same thing again later can succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(self, Self::HotFull { .. })
    }

    /// Whether the record or request itself is bad (skip and dead-letter it, or answer 400).
    pub fn is_poison(&self) -> bool {
        matches!(
            self,
            Self::DimensionMismatch { .. }
                | Self::NonFinite { .. }
                | Self::ZeroVector
                | Self::EmptyItemId
                | Self::KOutOfRange { .. }
        )
    }

    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io {
            op,
            path: path.into(),
            source,
        }
    }
}
