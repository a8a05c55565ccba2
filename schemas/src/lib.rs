//! Avro schemas of embedstream, their typed Rust records, Confluent wire framing through a
//! schema registry, and a small Confluent-compatible schema registry.
//!
//! - [`records`]: the records of `schemas/*.avsc` as Rust types (pure, no I/O).
//! - [`wire`]: the Confluent framing (magic byte, 4-byte schema id) (pure).
//! - [`headers`]: the Kafka headers of the topic contract (pure).
//! - [`control`]: the platform state as a fold of the control log's records (pure).
//! - [`consumers`]: the consumers of the indexes and their query profiles (pure).
//! - [`filter`]: search filters on item attributes (pure).
//! - [`codec`]: encode and decode records through a registry (`schema_registry_converter`).
//! - [`registry`]: the registry server, storing its state in the compacted `_schemas` topic.

pub mod access;
pub mod api;
pub mod codec;
pub mod consumers;
pub mod control;
pub mod filter;
pub mod headers;
pub mod records;
pub mod registry;
pub mod serve;
pub mod wire;

#[cfg(test)]
mod properties;

pub use codec::{Codec, CodecError};
pub use records::AvroRecord;
