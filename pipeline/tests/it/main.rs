//! Embedding engine tests with the real models (fetched into `EMBEDSTREAM_HOME` by
//! `compose/dev test`) against reference vectors made by sentence-transformers
//! (`pipeline/scripts/reference_vectors.py`).

mod adapter;
mod cli;
mod common;
mod drift;
mod engine;
mod health;
mod migrate;
mod parity;
mod secured;
mod sink;
mod stage;
mod status;
mod tokenize;
