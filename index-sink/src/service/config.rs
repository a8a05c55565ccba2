//! The sink service's configuration: what the binary decides ([`SinkConfig`]: where Kafka,
//! the registry, the snapshots and the HTTP port are) and what an optional file tunes
//! ([`Settings`]: the index, the per-consumer query profiles, the Kafka client, the HTTP
//! server). Every field of the file has a default, so no file at all is a working setup.
//!
//! The file is TOML (`*.toml`, or any other name) or JSON (`*.json`); unknown fields are
//! errors; durations are strings with a unit (`"250ms"`, `"30s"`, `"5m"`).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use embedstream_schemas::consumers::{self, ConsumerProfile, Profiles, default_consumers};
use embedstream_schemas::filter::Declared;
use embedstream_topics::{KafkaConfig, ModelSpec};
use serde::{Deserialize, Serialize};

use super::error::{ServiceError, ServiceResult};
use crate::config::IndexConfig;

/// Everything [`super::run`] needs.
#[derive(Debug, Clone)]
pub struct SinkConfig {
    /// The brokers and the client properties of every Kafka client.
    pub kafka: KafkaConfig,
    /// Schema registry URL (decoding `EmbeddingRecord`s).
    pub registry_url: String,
    /// The model version whose topic this sink serves (from the catalog: built-in or
    /// registered).
    pub spec: ModelSpec,
    /// Its embedding topic (`[<prefix>.]embeddings.<model>.v<N>`).
    pub topic: String,
    /// Consumer group of this replica: used for committed offsets (lag tools), never for
    /// recovery, which comes from the snapshots.
    pub group: String,
    /// Directory of this replica's snapshots.
    pub data_dir: PathBuf,
    /// Address of the query API and `/metrics`.
    pub listen: SocketAddr,
    /// Folder of Drift-Adapter artifacts that queries may name (`"adapter"`): new-model
    /// queries mapped into this version's space.
    pub adapters_dir: PathBuf,
    /// What the config file says (or the defaults).
    pub settings: Settings,
    /// The API keys of search and items (per consumer), if they need one.
    pub api_keys: Option<std::sync::Arc<embedstream_schemas::access::ApiKeys>>,
    /// Serve over TLS with this certificate and key.
    pub tls: Option<embedstream_schemas::serve::Tls>,
    /// A consumers file whose profiles replace `settings.consumers` (the caller reads it in)
    /// and which the sink follows while it runs.
    pub consumers_file: Option<PathBuf>,
}

/// The config file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// The index (shards, hot limit, HNSW, compaction, snapshots). `dim` and `name` may be
    /// left out: they come from the model catalog and the topic.
    #[serde(default = "default_index")]
    pub index: IndexConfig,
    /// Query profiles by consumer name. When given, this map replaces the built-in one
    /// (`search`, `recsys`, `ads`, `dedup`) entirely.
    #[serde(default = "default_consumers")]
    pub consumers: BTreeMap<String, ConsumerProfile>,
    /// The attributes search filters may name (`name = "keyword"` or `"number"`), as in a
    /// consumers file's `[attributes]` table (which replaces this one when a file is given).
    #[serde(default)]
    pub attributes: Declared,
    /// The Kafka consumer.
    #[serde(default)]
    pub kafka: KafkaSettings,
    /// The HTTP server.
    #[serde(default)]
    pub http: HttpSettings,
}

/// The Kafka consumer of the embedding topic.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaSettings {
    /// How long a blocked partition (full hot part, registry unreachable) waits before its
    /// record is tried again.
    #[serde(default = "default_retry_backoff", with = "crate::config::duration")]
    pub retry_backoff: Duration,
    /// How often the topic's partition count is checked, so that added partitions are
    /// consumed too.
    #[serde(default = "default_metadata_refresh", with = "crate::config::duration")]
    pub metadata_refresh: Duration,
    /// How often consumed offsets are committed to the replica's group (for lag tools only).
    #[serde(default = "default_commit_every", with = "crate::config::duration")]
    pub commit_every: Duration,
    /// How often librdkafka reports statistics (high watermarks, hence the lag gauge).
    #[serde(default = "default_statistics_every", with = "crate::config::duration")]
    pub statistics_every: Duration,
    /// Extra librdkafka properties of this sink's consumer (`fetch.max.bytes`, ...), on top of
    /// the sink's own settings and the platform-wide ones (`--kafka-property`); the keys the
    /// platform owns (`group.id`, `enable.auto.commit`, ...) are refused.
    #[serde(default)]
    pub properties: BTreeMap<String, String>,
}

/// The query API's server.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpSettings {
    /// Queries searched at once; more wait for a slot (admission control).
    #[serde(default = "default_max_concurrent_queries")]
    pub max_concurrent_queries: usize,
    /// Largest request body, bytes.
    #[serde(default = "default_max_body_bytes")]
    pub max_body_bytes: usize,
    /// Longest text of a text query or an embed request's input, bytes.
    #[serde(default = "default_max_text_bytes")]
    pub max_text_bytes: usize,
    /// Most texts in one embed request.
    #[serde(default = "default_max_embed_inputs")]
    pub max_embed_inputs: usize,
}

fn default_index() -> IndexConfig {
    IndexConfig::with_dim(0)
}

const fn default_retry_backoff() -> Duration {
    Duration::from_millis(200)
}
const fn default_metadata_refresh() -> Duration {
    Duration::from_secs(30)
}
const fn default_commit_every() -> Duration {
    Duration::from_secs(5)
}
const fn default_statistics_every() -> Duration {
    Duration::from_secs(5)
}
const fn default_max_concurrent_queries() -> usize {
    64
}
const fn default_max_body_bytes() -> usize {
    1 << 20
}
const fn default_max_text_bytes() -> usize {
    64 << 10
}
const fn default_max_embed_inputs() -> usize {
    256
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            index: default_index(),
            consumers: default_consumers(),
            attributes: Declared::new(),
            kafka: KafkaSettings::default(),
            http: HttpSettings::default(),
        }
    }
}

impl Default for KafkaSettings {
    fn default() -> Self {
        Self {
            retry_backoff: default_retry_backoff(),
            metadata_refresh: default_metadata_refresh(),
            commit_every: default_commit_every(),
            statistics_every: default_statistics_every(),
            properties: BTreeMap::new(),
        }
    }
}

impl Default for HttpSettings {
    fn default() -> Self {
        Self {
            max_concurrent_queries: default_max_concurrent_queries(),
            max_body_bytes: default_max_body_bytes(),
            max_embed_inputs: default_max_embed_inputs(),
            max_text_bytes: default_max_text_bytes(),
        }
    }
}

impl Settings {
    /// Reads a config file: JSON when the name ends in `.json`, TOML otherwise.
    pub fn load(path: &Path) -> ServiceResult<Self> {
        let text = std::fs::read_to_string(path).map_err(|source| ServiceError::ReadConfig {
            path: path.to_owned(),
            source,
        })?;
        let json = path
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("json"));
        let parsed = if json {
            serde_json::from_str(&text).map_err(|e| e.to_string())
        } else {
            toml::from_str(&text).map_err(|e| e.to_string())
        };
        parsed.map_err(|message| ServiceError::ParseConfig {
            path: path.to_owned(),
            message,
        })
    }

    /// Fills in what comes from the model (dimension) and the topic (index name), and checks
    /// what serde cannot.
    pub fn resolve(mut self, spec: &ModelSpec, topic: &str) -> ServiceResult<Self> {
        let dim = spec.dimension as usize;
        if self.index.dim == 0 {
            self.index.dim = dim;
        } else if self.index.dim != dim {
            return Err(ServiceError::Settings {
                field: "index.dim".to_owned(),
                reason: format!(
                    "is {}, but {} has dimension {dim}",
                    self.index.dim, spec.model
                ),
            });
        }
        if self.index.name == default_index().name {
            topic.clone_into(&mut self.index.name);
        }
        self.index
            .validate()
            .map_err(|source| ServiceError::Index { source })?;
        consumers::check(&self.consumers)
            .and_then(|()| within_index_bound(&self.consumers, self.index.max_k))
            .map_err(|reason| ServiceError::Settings {
                field: "consumers".to_owned(),
                reason,
            })?;
        if self.http.max_concurrent_queries == 0 {
            return Err(ServiceError::Settings {
                field: "http.max_concurrent_queries".to_owned(),
                reason: "must be at least 1".to_owned(),
            });
        }
        Ok(self)
    }
}

/// A sink's own bound on its consumers: no `max_k` above the index's.
pub(crate) fn within_index_bound(profiles: &Profiles, index_max_k: usize) -> Result<(), String> {
    match profiles.iter().find(|(_, p)| p.max_k > index_max_k) {
        Some((name, p)) => Err(format!(
            "consumers.{name}: max_k {} is above the index's max_k {index_max_k}",
            p.max_k
        )),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> ModelSpec {
        embedstream_topics::catalog::lookup(&"minilm-l6-v2@1".parse().unwrap()).unwrap()
    }

    #[test]
    fn no_file_is_a_working_setup() {
        let s = Settings::default()
            .resolve(&spec(), "embeddings.minilm-l6-v2.v1")
            .unwrap();
        assert_eq!(s.index.dim, 384);
        assert_eq!(s.index.name, "embeddings.minilm-l6-v2.v1");
        assert_eq!(s.consumers.len(), 4);
    }

    #[test]
    fn toml_file_overrides_and_refuses_unknown_fields() {
        let s: Settings = toml::from_str(
            r#"
            [index]
            shards = 2
            [index.compaction]
            min_hot = 20
            check_every = "100ms"
            [consumers.test]
            ef_search = 500
            default_k = 10
            max_k = 50
            [kafka]
            retry_backoff = "50ms"
            properties = { "fetch.wait.max.ms" = "10" }
            "#,
        )
        .unwrap();
        let s = s.resolve(&spec(), "t").unwrap();
        assert_eq!(s.index.shards, 2);
        assert_eq!(s.index.compaction.check_every, Duration::from_millis(100));
        assert_eq!(s.consumers.keys().collect::<Vec<_>>(), ["test"]);
        assert_eq!(s.kafka.retry_backoff, Duration::from_millis(50));
        assert!(toml::from_str::<Settings>("[kafka]\nretry = \"1s\"").is_err());
        let wrong_dim: Settings = serde_json::from_str(r#"{"index": {"dim": 768}}"#).unwrap();
        assert!(wrong_dim.resolve(&spec(), "t").is_err());
        let bad_k: Settings = serde_json::from_str(
            r#"{"consumers": {"x": {"ef_search": 1, "default_k": 9, "max_k": 5}}}"#,
        )
        .unwrap();
        assert!(bad_k.resolve(&spec(), "t").is_err());
    }
}
