//! How the router runs, and the sink of each version.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use embedstream_schemas::access::ApiKeys;
use embedstream_schemas::consumers::Consumers;
use embedstream_schemas::serve::Tls;

use crate::blend::Blend;
use crate::feed::StatusFeed;
pub use crate::topology::Backends;

/// How the router runs.
#[derive(Debug, Clone)]
pub struct RouterConfig {
    /// Where it serves.
    pub listen: SocketAddr,
    /// The sink instances of each version (slices and replicas).
    pub backends: Backends,
    /// Default blending method.
    pub blend: Blend,
    /// Consumer profiles (default and largest `k`), followed while the router runs.
    pub consumers: Consumers,
    /// Per backend request.
    pub timeout: Duration,
    /// What the status page shows beside what it asks for (drift reports, recent latencies).
    pub status: Arc<StatusFeed>,
    /// The API keys of the query routes (per consumer), if they need one.
    pub api_keys: Option<Arc<ApiKeys>>,
    /// Serve over TLS with this certificate and key.
    pub tls: Option<Tls>,
    /// Certificates (PEM) to trust when calling the sinks over HTTPS, besides the system's.
    pub trust_pem: Option<Vec<u8>>,
    /// Where answered text queries go ([`crate::QueryLog`]); none: not logged.
    pub query_log: Option<crate::QueryLog>,
    /// Where answers served under a canary go ([`crate::ExposureLog`]); none: not logged.
    pub exposure_log: Option<crate::ExposureLog>,
}
