//! How the router runs, and the sink of each version.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use embedstream_schemas::access::ApiKeys;
use embedstream_schemas::consumers::Consumers;
use embedstream_schemas::serve::Tls;

use crate::blend::Blend;
use crate::feed::StatusFeed;

/// How the router runs.
#[derive(Debug, Clone)]
pub struct RouterConfig {
    /// Where it serves.
    pub listen: SocketAddr,
    /// The sink of each version: `id@version` → base URL.
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
}

/// The sink of each version (`id@version` → base URL), shared: `embedstream up` adds a
/// version's sink when the control log registers it, while queries are routed.
#[derive(Debug, Clone, Default)]
pub struct Backends(Arc<std::sync::RwLock<BTreeMap<String, String>>>);

impl Backends {
    /// Adds (or moves) a version's sink.
    pub fn insert(&self, model: impl Into<String>, url: impl Into<String>) {
        self.0
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(model.into(), url.into());
    }

    /// Forgets a version's sink (its version was retired).
    pub fn remove(&self, model: &str) {
        self.0
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(model);
    }

    /// The base URL of a version's sink.
    pub fn get(&self, model: &str) -> Option<String> {
        self.0
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(model)
            .cloned()
    }

    /// Every version and its sink, now.
    pub fn snapshot(&self) -> BTreeMap<String, String> {
        self.0.read().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

impl From<BTreeMap<String, String>> for Backends {
    fn from(map: BTreeMap<String, String>) -> Self {
        Self(Arc::new(std::sync::RwLock::new(map)))
    }
}
