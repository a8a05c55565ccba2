//! One way to build a Kafka client: every producer, consumer and admin client of the platform
//! is made by [`KafkaConfig::client`], so the user's librdkafka properties (TLS, SASL, tuning)
//! reach every one of them.
//!
//! Guarantees:
//! - The user's properties are applied after the settings a client sets for its role, so a
//!   user can tune any client (`linger.ms`, `fetch.wait.max.ms`, `socket.keepalive.enable`, …).
//! - The keys the platform's delivery guarantees rest on ([`PLATFORM_OWNED`]: offsets stored
//!   only after delivery, idempotent writes, where a consumer starts) cannot be given: they are
//!   refused when the properties are read, with the reason, instead of being silently ignored.
//! - Sources, a later one winning for the same key: a properties file (`key=value` lines, `#`
//!   or `!` comments, as Kafka's `client.properties`), environment variables
//!   `EMBEDSTREAM_KAFKA_<KEY>` (the key upper-cased with `.` as `_`:
//!   `EMBEDSTREAM_KAFKA_SASL_PASSWORD` is `sasl.password`), then `key=value` pairs given on
//!   the command line.
//! - Secrets (`*password*`, `*secret*`, `*.key.pem`, `sasl.jaas.config`) never reach `Debug`
//!   output.
//!
//! Not checked here: whether librdkafka knows a key or accepts its value; that is reported
//! with librdkafka's own message when the first client is created.

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;

use rdkafka::ClientConfig;
use rdkafka::client::ClientContext;
use rdkafka::config::{FromClientConfig, FromClientConfigAndContext};
use rdkafka::error::{KafkaResult, RDKafkaErrorCode};

use crate::error::{Error, Result};

/// Keys the platform sets itself, with the reason a user may not override them.
pub const PLATFORM_OWNED: &[(&str, &str)] = &[
    (
        "bootstrap.servers",
        "give the brokers with --bootstrap / KAFKA_BOOTSTRAP",
    ),
    (
        "group.id",
        "each service names its own consumer group (options such as --group)",
    ),
    (
        "enable.auto.commit",
        "offsets are committed only after every output of a record was acknowledged",
    ),
    (
        "enable.auto.offset.store",
        "offsets are stored only after every output of a record was acknowledged",
    ),
    (
        "enable.idempotence",
        "writes are idempotent so that retries never duplicate or reorder records",
    ),
    (
        "acks",
        "idempotent writes need acknowledgement by all in-sync replicas",
    ),
    (
        "auto.offset.reset",
        "each consumer starts where its recovery needs (a replay from the start, or the end)",
    ),
    (
        "isolation.level",
        "each consumer reads with the isolation its guarantees need",
    ),
    (
        "transactional.id",
        "transactions are managed by the platform",
    ),
    (
        "enable.partition.eof",
        "consumers rely on their own end-of-partition handling",
    ),
    (
        "partition.assignment.strategy",
        "the stage drains revoked partitions under the eager assignors",
    ),
];

/// The environment variables that carry properties start with this.
pub const ENV_PREFIX: &str = "EMBEDSTREAM_KAFKA_";

/// Variables under [`ENV_PREFIX`] that name an option of the platform, not a property.
const ENV_NOT_PROPERTIES: &[&str] = &["EMBEDSTREAM_KAFKA_CONFIG"];

/// How every topic the platform creates is replicated: one setting for the cluster, used by
/// every path that creates a topic (`topics ensure`, the stage, the control log, backfill, the
/// registry's `_schemas`, …). `None` leaves it to the broker's `default.replication.factor`
/// and `min.insync.replicas`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Replication {
    /// Replicas of every partition.
    pub factor: Option<i32>,
    /// Replicas that must acknowledge a write (`acks=all`) for it to succeed.
    pub min_insync: Option<i32>,
}

/// Where the brokers are, the user's properties for every client, and how the platform's
/// topics are replicated there.
#[derive(Clone, PartialEq, Eq)]
pub struct KafkaConfig {
    bootstrap: String,
    properties: BTreeMap<String, String>,
    replication: Replication,
}

/// Errors no retry mends: the client's credentials, its trust in the broker's certificate, or
/// what its principal may do. Every other broker error (timeouts, a partition between leaders,
/// a broker away) is waited out by the platform's clients.
pub fn is_fatal(code: RDKafkaErrorCode) -> bool {
    matches!(
        code,
        RDKafkaErrorCode::Authentication
            | RDKafkaErrorCode::SSL
            | RDKafkaErrorCode::SaslAuthenticationFailed
            | RDKafkaErrorCode::TopicAuthorizationFailed
            | RDKafkaErrorCode::GroupAuthorizationFailed
            | RDKafkaErrorCode::ClusterAuthorizationFailed
    )
}

impl fmt::Debug for KafkaConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let shown: BTreeMap<&str, &str> = self
            .properties
            .iter()
            .map(|(k, v)| (k.as_str(), if secret(k) { "<redacted>" } else { v }))
            .collect();
        f.debug_struct("KafkaConfig")
            .field("bootstrap", &self.bootstrap)
            .field("properties", &shown)
            .field("replication", &self.replication)
            .finish()
    }
}

fn secret(key: &str) -> bool {
    key.contains("password")
        || key.contains("secret")
        || key.ends_with(".key.pem")
        || key == "sasl.jaas.config"
}

impl KafkaConfig {
    /// The brokers at `bootstrap` (`host:port,…`), with no properties of the user's.
    pub fn new(bootstrap: impl Into<String>) -> Self {
        Self {
            bootstrap: bootstrap.into(),
            properties: BTreeMap::new(),
            replication: Replication::default(),
        }
    }

    /// Sets how the platform's topics are replicated.
    #[must_use]
    pub fn with_replication(mut self, replication: Replication) -> Self {
        self.replication = replication;
        self
    }

    /// How the platform's topics are replicated.
    pub fn replication(&self) -> Replication {
        self.replication
    }

    /// Reads the user's properties from their three sources (see the module docs): the file
    /// (if any), then the `EMBEDSTREAM_KAFKA_*` variables among `env`, then the `key=value`
    /// pairs of the command line.
    pub fn from_sources(
        bootstrap: impl Into<String>,
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
        pairs: &[String],
    ) -> Result<Self> {
        let mut config = Self::new(bootstrap);
        if let Some(path) = file {
            let text = std::fs::read_to_string(path).map_err(|source| Error::KafkaConfigFile {
                path: path.to_owned(),
                source,
            })?;
            for (n, line) in text.lines().enumerate() {
                let line = line.trim();
                if line.is_empty() || line.starts_with('#') || line.starts_with('!') {
                    continue;
                }
                let origin = format!("{}:{}", path.display(), n + 1);
                let (k, v) = split_pair(line, &origin)?;
                config = config.with_property_from(k, v, &origin)?;
            }
        }
        let mut from_env: Vec<(String, String)> = env
            .into_iter()
            .filter(|(name, _)| {
                name.starts_with(ENV_PREFIX) && !ENV_NOT_PROPERTIES.contains(&name.as_str())
            })
            .collect();
        from_env.sort();
        for (name, value) in from_env {
            let key = name[ENV_PREFIX.len()..]
                .to_ascii_lowercase()
                .replace('_', ".");
            config = config.with_property_from(&key, &value, &name)?;
        }
        for pair in pairs {
            let (k, v) = split_pair(pair, "--kafka-property")?;
            config = config.with_property_from(k, v, "--kafka-property")?;
        }
        Ok(config)
    }

    /// Adds one property for every client; refuses the keys in [`PLATFORM_OWNED`].
    pub fn with_property(self, key: &str, value: &str) -> Result<Self> {
        self.with_property_from(key, value, "a property")
    }

    fn with_property_from(mut self, key: &str, value: &str, origin: &str) -> Result<Self> {
        if let Some((_, reason)) = PLATFORM_OWNED.iter().find(|(k, _)| *k == key) {
            return Err(Error::KafkaProperty {
                origin: origin.to_owned(),
                key: key.to_owned(),
                reason: format!("the platform sets it: {reason}"),
            });
        }
        self.properties.insert(key.to_owned(), value.to_owned());
        Ok(self)
    }

    /// The brokers, as given.
    pub fn bootstrap(&self) -> &str {
        &self.bootstrap
    }

    /// The user's properties, by key.
    pub fn properties(&self) -> &BTreeMap<String, String> {
        &self.properties
    }

    /// The same properties for other brokers (a test's own broker, say).
    pub fn with_bootstrap(&self, bootstrap: impl Into<String>) -> Self {
        Self {
            bootstrap: bootstrap.into(),
            ..self.clone()
        }
    }

    /// Starts a client: set its role's settings on the builder, then create it.
    pub fn client(&self) -> ClientBuilder<'_> {
        let mut config = ClientConfig::new();
        config.set("bootstrap.servers", &self.bootstrap);
        ClientBuilder {
            kafka: self,
            config,
        }
    }
}

fn split_pair<'a>(pair: &'a str, origin: &str) -> Result<(&'a str, &'a str)> {
    match pair.split_once('=') {
        Some((k, v)) if !k.trim().is_empty() => Ok((k.trim(), v.trim())),
        _ => Err(Error::KafkaProperty {
            origin: origin.to_owned(),
            key: pair.to_owned(),
            reason: "expected key=value".to_owned(),
        }),
    }
}

/// A client being built: the role's settings, then the user's properties on top.
pub struct ClientBuilder<'a> {
    kafka: &'a KafkaConfig,
    config: ClientConfig,
}

impl fmt::Debug for ClientBuilder<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientBuilder")
            .field("kafka", self.kafka)
            .finish_non_exhaustive()
    }
}

impl ClientBuilder<'_> {
    /// Sets one of the role's settings (the user's properties still win, see the module docs).
    pub fn set(&mut self, key: &str, value: impl Into<String>) -> &mut Self {
        self.config.set(key, value);
        self
    }

    /// The complete settings: the role's, then the user's.
    pub fn config(&self) -> ClientConfig {
        let mut config = self.config.clone();
        for (k, v) in &self.kafka.properties {
            config.set(k, v);
        }
        config
    }

    /// Creates the client.
    pub fn create<T: FromClientConfig>(&self) -> KafkaResult<T> {
        self.config().create()
    }

    /// Creates the client with a context of its own.
    pub fn create_with_context<C: ClientContext, T: FromClientConfigAndContext<C>>(
        &self,
        context: C,
    ) -> KafkaResult<T> {
        self.config().create_with_context(context)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(p: &[&str]) -> Vec<String> {
        p.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn later_sources_win_and_every_client_gets_the_properties() {
        let dir = std::env::temp_dir().join(format!("kafka-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("client.properties");
        std::fs::write(
            &file,
            "# a comment\n! another\nsecurity.protocol=SASL_SSL\nsasl.mechanism = PLAIN\nlinger.ms=5\n",
        )
        .unwrap();
        let env = [
            ("EMBEDSTREAM_KAFKA_SASL_MECHANISM", "SCRAM-SHA-512"),
            ("EMBEDSTREAM_KAFKA_CONFIG", "ignored: names the file"),
            ("OTHER", "x"),
        ]
        .map(|(k, v)| (k.to_owned(), v.to_owned()));
        let config =
            KafkaConfig::from_sources("b:9092", Some(&file), env, &pairs(&["linger.ms=20"]))
                .unwrap();
        let got: Vec<(&str, &str)> = config
            .properties()
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        assert_eq!(
            got,
            [
                ("linger.ms", "20"),
                ("sasl.mechanism", "SCRAM-SHA-512"),
                ("security.protocol", "SASL_SSL"),
            ]
        );
        // The user's properties land on top of the role's settings.
        let mut builder = config.client();
        builder.set("linger.ms", "1").set("acks", "all");
        let built = builder.config();
        assert_eq!(built.get("bootstrap.servers"), Some("b:9092"));
        assert_eq!(built.get("linger.ms"), Some("20"));
        assert_eq!(built.get("acks"), Some("all"));
        assert_eq!(built.get("security.protocol"), Some("SASL_SSL"));
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn keys_the_platform_owns_and_malformed_pairs_are_refused_with_their_origin() {
        let err = KafkaConfig::from_sources("b", None, [], &pairs(&["enable.auto.commit=true"]))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("enable.auto.commit") && err.contains("--kafka-property"),
            "{err}"
        );
        let env = [("EMBEDSTREAM_KAFKA_GROUP_ID".to_owned(), "g".to_owned())];
        let err = KafkaConfig::from_sources("b", None, env, &[])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("group.id") && err.contains("EMBEDSTREAM_KAFKA_GROUP_ID"),
            "{err}"
        );
        let err = KafkaConfig::from_sources("b", None, [], &pairs(&["linger.ms"]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("expected key=value"), "{err}");
        let missing = Path::new("/nonexistent/client.properties");
        assert!(matches!(
            KafkaConfig::from_sources("b", Some(missing), [], &[]),
            Err(Error::KafkaConfigFile { .. })
        ));
    }

    #[test]
    fn secrets_stay_out_of_debug_output() {
        let config = KafkaConfig::new("b")
            .with_property("sasl.password", "hunter2")
            .unwrap()
            .with_property("sasl.username", "alice")
            .unwrap();
        let shown = format!("{config:?}");
        assert!(
            !shown.contains("hunter2") && shown.contains("alice"),
            "{shown}"
        );
    }
}
