//! The pipeline and the `embedstream` binary against the real parts: the models (fetched into
//! `EMBEDSTREAM_HOME` by `compose/dev test`) checked against reference vectors made by
//! sentence-transformers, and the stage, sinks, migrations, drift monitor, adapters, status
//! page and secured clusters against the test broker and registry that `compose/dev test`
//! starts. The catalogue is in CONTRIBUTING.md.

mod adapter;
mod cli;
mod common;
mod drift;
mod embeddings;
mod engine;
mod health;
mod migrate;
mod models;
mod parity;
mod query_log;
mod secured;
mod sink;
mod stage;
mod status;
mod tokenize;
