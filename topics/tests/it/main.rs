//! Topic admin against the real broker (`KAFKA_BOOTSTRAP`).

mod admin;
mod broker;
mod clients;
