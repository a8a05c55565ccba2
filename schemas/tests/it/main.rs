//! Schema registry and codec tests against the real broker (`KAFKA_BOOTSTRAP`), and interop
//! with Confluent's Python client (`EMBEDSTREAM_PYTHON`, `SCHEMA_REGISTRY_URL`).

mod codec;
mod common;
mod compatibility;
mod interop;
mod rest;
mod restart;
