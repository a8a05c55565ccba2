//! What can go wrong with an adapter: its file, its name, or the vector it is given.

use std::path::PathBuf;

/// What can go wrong with an adapter artifact.
#[derive(Debug, thiserror::Error)]
pub enum AdapterError {
    /// The file could not be read or written.
    #[error("{op} adapter {path}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The file is not a valid adapter (truncated, checksum mismatch, missing tensor, ...).
    #[error("adapter {path} is invalid: {reason}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What check failed.
        reason: String,
    },
    /// No adapter of that name (or none for that pair of versions).
    #[error("no adapter {name} in {dir}")]
    NotFound {
        /// What was asked for.
        name: String,
        /// Where it was looked for.
        dir: PathBuf,
    },
    /// A name that is not `<from>_to_<to>.<kind>.v<N>`.
    #[error(
        "{0:?} is not an adapter name (want <new>_to_<old>.<kind>.v<N>, e.g. mpnet-base-v2@1_to_minilm-l6-v2@1.procrustes.v1)"
    )]
    BadName(String),
    /// The query vector does not fit the adapter.
    #[error("adapter {name} maps {expected}-d vectors of {new_model}; got {got}-d")]
    Dimension {
        /// The adapter.
        name: String,
        /// Its source model.
        new_model: String,
        /// Its input dimension.
        expected: usize,
        /// The vector's length.
        got: usize,
    },
    /// Training refused its input or its fit (bad pairs, wrong dimensions, too few pairs, a
    /// fit that is not finite); nothing was written. Not retryable with the same input.
    #[error("{reason}")]
    Refused {
        /// Why.
        reason: String,
    },
    /// A model that is not in the catalog, or not a model reference.
    #[error(transparent)]
    Model(#[from] embedstream_topics::Error),
    /// The mapped vector is not finite or is zero.
    #[error("adapter {name} produced a vector that cannot be normalized")]
    Degenerate {
        /// The adapter.
        name: String,
    },
}

impl AdapterError {
    /// A [`AdapterError::Refused`] for `reason`.
    pub(crate) fn refused(reason: impl Into<String>) -> Self {
        Self::Refused {
            reason: reason.into(),
        }
    }
}
