//! A Confluent-compatible schema registry (Avro only), storing its state in the compacted
//! `_schemas` topic so that it survives restarts with the same ids.
//!
//! It serves the REST subset that `schema_registry_converter` and Confluent's own clients use:
//! register, lookup, get by id, subjects and versions, latest, soft and permanent deletes,
//! compatibility checks, and global and per-subject compatibility config (BACKWARD by default),
//! with Confluent's error codes. It does not serve schema references, Protobuf or JSON Schema,
//! modes other than READWRITE, contexts, or leader election between several instances.

mod api;
pub mod auth;
pub mod compat;
pub mod error;
mod http;
pub mod state;
mod store;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use tokio_util::sync::CancellationToken;

use embedstream_topics::KafkaConfig;

pub use api::{router, router_with_auth};
pub use auth::WriteAuth;
pub use compat::Compatibility;
pub use error::RegistryError;
pub use http::CONTENT_TYPE;
pub use store::Store;

/// Configuration of the registry service.
#[derive(Debug, Clone)]
pub struct RegistryConfig {
    /// Address to serve HTTP on.
    pub listen: SocketAddr,
    /// The brokers and the client properties of every Kafka client.
    pub kafka: KafkaConfig,
    /// Topic holding the schemas (`_schemas`).
    pub topic: String,
    /// How long a write may take to be acknowledged and read back.
    pub write_timeout: Duration,
    /// Who may change the registry; `None`: anyone who reaches it.
    pub auth: Option<Arc<WriteAuth>>,
    /// Serve over TLS with this certificate and key.
    pub tls: Option<crate::serve::Tls>,
}

/// Why the registry could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The Kafka client could not be created or the log read. Fatal.
    #[error("cannot use the broker at {bootstrap}: {source}")]
    Kafka {
        /// Where.
        bootstrap: String,
        /// What the client said.
        #[source]
        source: rdkafka::error::KafkaError,
    },
    /// The `_schemas` topic could not be created. Fatal.
    #[error("cannot create the schemas topic: {source}")]
    Topic {
        /// Why.
        #[source]
        source: embedstream_topics::Error,
    },
    /// The log could not be replayed in time. Fatal.
    #[error("cannot replay the schemas log: {reason}")]
    Replay {
        /// Why.
        reason: String,
    },
    /// The listen address is taken or not allowed. Fatal.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// Where.
        addr: SocketAddr,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// Runs the registry until `shutdown` is cancelled. `extra` routes (e.g. `/metrics`) are
/// served beside the registry's.
pub async fn run(
    config: RegistryConfig,
    extra: Router,
    shutdown: CancellationToken,
) -> Result<(), StartError> {
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|source| StartError::Bind {
            addr: config.listen,
            source,
        })?;
    let store = Store::open(
        &config.kafka,
        &config.topic,
        config.write_timeout,
        shutdown.child_token(),
    )
    .await?;
    let app = router_with_auth(store, config.auth.clone()).merge(extra);
    tracing::info!(listen = %config.listen, topic = %config.topic, "Schema registry is serving.");
    crate::serve::serve(listener, app, config.tls.as_ref(), shutdown)
        .await
        .map_err(|source| StartError::Bind {
            addr: config.listen,
            source,
        })
}
