//! Integration tests of the index core. Scenarios are written once and run against each
//! [`common::Stage`]: everything still in hot, and everything merged into main.

mod cold;
mod common;
mod compaction;
mod properties;
mod recall;
mod scenarios;
mod snapshots;
