//! Subcommands with enough code to want a file of their own.

pub mod adapter;
pub mod canary;
pub mod dlq;
pub mod drift;
pub mod embed;
pub mod eval;
pub mod migrate;
pub mod platform;
pub mod produce;
pub mod router;
pub mod sink;
pub mod slices;
pub mod stage;
pub mod up;
