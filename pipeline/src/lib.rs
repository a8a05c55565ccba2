//! The embedding stage, the stream stage, and what the `embedstream` binary shares between
//! its subcommands (telemetry, shutdown).
//!
//! The embedding engine and the stream stage arrive with their issues; today this crate holds
//! the process plumbing every service uses.

pub mod adapter;
pub mod control;
pub mod drift;
pub mod embed;
pub mod encoder;
mod error;
pub mod eval;
pub mod migrate;
pub mod models;
pub mod stage;
pub mod telemetry;

pub use error::{Error, Result};
