//! The consumers of the indexes: who queries, how wide each searches, how many results each
//! may ask for and its latency objective. The sinks, the router and the migration commands
//! all read their consumers from here, so a consumer is named and tuned in one place: the
//! built-in four, or a consumers file (`[consumers.<name>]` tables) that every process is given
//! and follows while it runs ([`Consumers::follow_file`]). The same file declares the item
//! attributes search filters may name (an `[attributes]` table of `name = "keyword"` or
//! `name = "number"`, see [`crate::filter`]); without a file, none are declared.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::access::{FileError, load_file};
use crate::filter::Declared;

/// Gauge, by `consumer`: the consumer's p95 latency objective (its profile's `p95_slo_ms`),
/// seconds; the alert rules compare the measured p95 with it.
pub const CONSUMER_SLO_SECONDS: &str = "embedstream_consumer_slo_seconds";

/// How one consumer of the index queries it: each consumer has its own `ef_search`, result
/// bounds and latency budget.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsumerProfile {
    /// HNSW search width in main parts; raised to `k` when smaller.
    pub ef_search: usize,
    /// `k` when a request does not say.
    pub default_k: usize,
    /// Largest `k` a request may ask for (also bounded by the index's `max_k`).
    pub max_k: usize,
    /// Latency objective: p95 of a query, in milliseconds. Exported as
    /// [`CONSUMER_SLO_SECONDS`] for the alert rule that compares it with the measured p95.
    #[serde(default = "default_p95_slo_ms")]
    pub p95_slo_ms: u64,
    /// The consumer's golden set (`{"metric", "k", "queries"}`), a path relative to the
    /// consumers file: what the migration gate and `eval` judge this consumer's quality by.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub golden_set: Option<PathBuf>,
    /// Whether the router logs this consumer's text queries to the `queries` topic (for
    /// training adapters on queries like its own); `false` opts the consumer out.
    #[serde(default = "yes")]
    pub log_queries: bool,
    /// The replica pool the router reads this consumer's queries from, where a version has
    /// replicas in it (dedicated replicas: another consumer's load cannot reach them); none:
    /// the `shared` pool.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pool: Option<String>,
    /// How this consumer's request-level canary is judged (a `[consumers.<name>.canary]`
    /// table); absent: [`CanaryPolicy::default`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub canary: Option<CanaryPolicy>,
}

/// The engagement a consumer's request-level canary is judged by, and how strictly.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CanaryPolicy {
    /// `click` (click-through: exposures with a click), `conversion`, or `dwell` (seconds per
    /// exposure: session depth).
    pub metric: String,
    /// Largest drop of the metric the consumer accepts, in its units: 0.005 is half a point of
    /// click-through.
    pub margin: f64,
    /// Error rate of the always-valid interval (two-sided).
    pub alpha: f64,
    /// Probability that a canary no worse than control passes once each arm has the required
    /// exposures: what the required exposures are computed for.
    pub power: f64,
    /// Offline gains (new − old of the cutover gate) at least this large are checked online.
    pub parity_gain: f64,
    /// The online gain predicted per unit of offline gain: the parity check halts the migration
    /// when the interval lies below `parity_lift × offline gain`.
    pub parity_lift: f64,
    /// Whether the join job ends the canary (share 0) when it shows a regression.
    pub abort_on_regression: bool,
}

impl Default for CanaryPolicy {
    fn default() -> Self {
        Self {
            metric: "click".to_owned(),
            margin: 0.005,
            alpha: 0.05,
            power: 0.8,
            parity_gain: 0.03,
            parity_lift: 0.1,
            abort_on_regression: true,
        }
    }
}

impl CanaryPolicy {
    /// Why the policy is unusable, if it is.
    pub fn check(&self) -> Result<(), String> {
        if !matches!(self.metric.as_str(), "click" | "conversion" | "dwell") {
            return Err(format!(
                "canary.metric {:?}: one of click, conversion, dwell",
                self.metric
            ));
        }
        let open_unit = |v: f64| v > 0.0 && v < 1.0;
        if !(self.margin > 0.0 && self.margin.is_finite()) {
            return Err(format!("canary.margin {}: a positive number", self.margin));
        }
        if !open_unit(self.alpha) || !open_unit(self.power) {
            return Err(format!(
                "canary.alpha {} and canary.power {}: each in (0, 1)",
                self.alpha, self.power
            ));
        }
        if !(self.parity_gain.is_finite()
            && self.parity_lift.is_finite()
            && self.parity_lift >= 0.0)
        {
            return Err("canary.parity_gain and canary.parity_lift: finite, lift ≥ 0".to_owned());
        }
        Ok(())
    }
}

const fn yes() -> bool {
    true
}

const fn default_p95_slo_ms() -> u64 {
    100
}

/// The built-in consumers, with widths chosen for their recall targets: `search` recall@10
/// ≥ 0.85, `recsys` recall@50 ≥ 0.75, `ads` recall@5 ≥ 0.90 within 30 ms, `dedup`
/// precision@1 ≥ 0.95 in batch (so it can afford a wide search; its objective is 1 s).
pub fn default_consumers() -> BTreeMap<String, ConsumerProfile> {
    let p = |ef_search, default_k, max_k, p95_slo_ms| ConsumerProfile {
        ef_search,
        default_k,
        max_k,
        p95_slo_ms,
        golden_set: None,
        log_queries: true,
        pool: None,
        canary: None,
    };
    BTreeMap::from([
        ("search".to_owned(), p(100, 10, 100, 50)),
        ("recsys".to_owned(), p(128, 50, 500, 50)),
        ("ads".to_owned(), p(64, 5, 50, 30)),
        ("dedup".to_owned(), p(200, 1, 20, 1000)),
    ])
}

/// The names of the built-in consumers, in order: those a migration gates when the operator
/// names none.
pub fn default_consumer_names() -> Vec<String> {
    default_consumers().into_keys().collect()
}

/// Gauge: 1 while the consumers file on disk is refused (the process keeps serving the
/// consumers it read last), 0 once it reads.
pub const CONSUMERS_FILE_REFUSED: &str = "embedstream_consumers_file_refused";

/// How often a process looks at the consumers file it follows.
pub const FOLLOW_EVERY: Duration = Duration::from_secs(2);

/// Consumer profiles by name.
pub type Profiles = BTreeMap<String, ConsumerProfile>;

/// One consumer's golden set (the file a profile's `golden_set` names): what `eval` and
/// `migrate gate` judge it by, and whose queries the sinks' recall self-check measures.
#[derive(Debug, Clone, Deserialize)]
pub struct GoldenSet {
    /// `recall@k` or `precision@1`.
    pub metric: String,
    /// Results cut.
    pub k: usize,
    /// Queries.
    pub queries: Vec<GoldenQuery>,
}

/// One golden query.
#[derive(Debug, Clone, Deserialize)]
pub struct GoldenQuery {
    /// Id (also the cache key of its vectors).
    pub id: String,
    /// Query text.
    pub text: String,
    /// Relevant item ids.
    pub relevant: Vec<String>,
    /// Ids removed from the results first (the query item itself).
    #[serde(default)]
    pub exclude: Vec<String>,
}

/// What a consumers file holds: the consumers and the declared attributes.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsumersFile {
    /// Consumer profiles by name.
    pub consumers: Profiles,
    /// The attributes filters may name, with how each compares.
    #[serde(default)]
    pub attributes: Declared,
}

/// Parses the text of a consumers file (`[consumers.<name>]` tables) and checks it.
pub fn parse(text: &str) -> Result<Profiles, String> {
    parse_file(text).map(|f| f.consumers)
}

/// [`parse`], with the `[attributes]` table.
pub fn parse_file(text: &str) -> Result<ConsumersFile, String> {
    let file: ConsumersFile = toml::from_str(text).map_err(|e| e.to_string())?;
    check(&file.consumers)?;
    for name in file.attributes.keys() {
        if name.is_empty() || name.len() > 128 || name.chars().any(char::is_control) {
            return Err(format!(
                "attributes.{name:?}: a name is 1 to 128 characters, none of them control characters"
            ));
        }
    }
    Ok(file)
}

/// Reads a consumers file.
pub fn load(path: &Path) -> Result<Profiles, FileError> {
    load_file("consumers", path, parse)
}

/// Reads a consumers file, with its `[attributes]` table.
pub fn load_all(path: &Path) -> Result<ConsumersFile, FileError> {
    load_file("consumers", path, parse_file)
}

/// Whether `name` may name a consumer or a replica pool: 1 to 64 letters, digits, `_`, `-` and
/// `.` (names are metric labels).
pub fn is_label_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
}

/// What every set of profiles must hold: at least one consumer; names of letters, digits, `_`,
/// `-` and `.` (at most 64: they are metric labels); `ef_search` ≥ 1; 1 ≤ `default_k` ≤
/// `max_k`. An index's own `max_k` bound is checked where the index is known.
pub fn check(profiles: &Profiles) -> Result<(), String> {
    if profiles.is_empty() {
        return Err("at least one consumer is needed".to_owned());
    }
    for (name, p) in profiles {
        let bad = |reason: String| Err(format!("consumers.{name}: {reason}"));
        if !is_label_name(name) {
            return bad("a name is 1 to 64 letters, digits, '_', '-' or '.'".to_owned());
        }
        if p.pool.as_deref().is_some_and(|pool| !is_label_name(pool)) {
            return bad("a pool is named by 1 to 64 letters, digits, '_', '-' or '.'".to_owned());
        }
        if p.ef_search == 0 {
            return bad("ef_search must be at least 1".to_owned());
        }
        if let Some(Err(reason)) = p.canary.as_ref().map(CanaryPolicy::check) {
            return bad(reason);
        }
        if p.max_k == 0 {
            return bad("max_k must be at least 1".to_owned());
        }
        if p.default_k == 0 || p.default_k > p.max_k {
            return bad(format!("default_k must be in 1..={}", p.max_k));
        }
    }
    Ok(())
}

/// A process's consumers and declared attributes, shared by its handlers and replaced as a
/// whole when the consumers file changes: a request sees one set, never half of a change.
#[derive(Debug, Clone)]
pub struct Consumers(Arc<RwLock<Arc<ConsumersFile>>>);

impl Default for Consumers {
    fn default() -> Self {
        Self::new(default_consumers())
    }
}

impl Consumers {
    /// These profiles, with no attributes declared.
    pub fn new(profiles: Profiles) -> Self {
        Self::with_attributes(profiles, Declared::new())
    }

    /// These profiles and declared attributes.
    pub fn with_attributes(profiles: Profiles, attributes: Declared) -> Self {
        Self(Arc::new(RwLock::new(Arc::new(ConsumersFile {
            consumers: profiles,
            attributes,
        }))))
    }

    /// The built-in consumers, or the file's when one is given.
    pub fn from_file(path: Option<&Path>) -> Result<Self, FileError> {
        Ok(match path {
            Some(path) => {
                let file = load_all(path)?;
                Self::with_attributes(file.consumers, file.attributes)
            }
            None => Self::default(),
        })
    }

    fn file(&self) -> Arc<ConsumersFile> {
        self.0.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The current profiles.
    pub fn current(&self) -> Arc<Profiles> {
        Arc::new(self.file().consumers.clone())
    }

    /// The attributes filters may name now.
    pub fn attributes(&self) -> Declared {
        self.file().attributes.clone()
    }

    /// One consumer's profile.
    pub fn get(&self, name: &str) -> Option<ConsumerProfile> {
        self.file().consumers.get(name).cloned()
    }

    /// Whether a consumer is configured.
    pub fn contains(&self, name: &str) -> bool {
        self.file().consumers.contains_key(name)
    }

    /// The configured names, sorted.
    pub fn names(&self) -> Vec<String> {
        self.file().consumers.keys().cloned().collect()
    }

    /// Replaces every profile at once; the declared attributes stay.
    pub fn replace(&self, profiles: Profiles) {
        let attributes = self.attributes();
        self.replace_all(ConsumersFile {
            consumers: profiles,
            attributes,
        });
    }

    /// Replaces every profile and declared attribute at once.
    pub fn replace_all(&self, file: ConsumersFile) {
        export_slos(&file.consumers);
        *self.0.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(file);
    }

    /// Follows a consumers file until `shutdown`: when it changes (its modification time or
    /// size, looked at every `every`), it is read and checked, with `extra` for what the
    /// process itself needs (a sink's `max_k` bound), and replaces the profiles. A file that
    /// cannot be read or is refused leaves the profiles as they were, logs why and sets
    /// [`CONSUMERS_FILE_REFUSED`] until a good file replaces it.
    pub fn follow_file(
        &self,
        path: PathBuf,
        every: Duration,
        extra: impl Fn(&Profiles) -> Result<(), String> + Send + 'static,
        shutdown: CancellationToken,
    ) -> tokio::task::JoinHandle<()> {
        let consumers = self.clone();
        let stamp = |p: &Path| -> Option<(SystemTime, u64)> {
            let m = std::fs::metadata(p).ok()?;
            Some((m.modified().ok()?, m.len()))
        };
        metrics::gauge!(CONSUMERS_FILE_REFUSED).set(0.0);
        tokio::spawn(async move {
            let mut seen = stamp(&path);
            loop {
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    () = tokio::time::sleep(every) => {}
                }
                let now = stamp(&path);
                if now == seen {
                    continue;
                }
                seen = now;
                let read = load_all(&path).map_err(|e| e.to_string()).and_then(|file| {
                    extra(&file.consumers).map_err(|reason| {
                        format!("the consumers file {}: {reason}", path.display())
                    })?;
                    Ok(file)
                });
                match read {
                    Ok(file) => {
                        tracing::info!(
                            path = %path.display(),
                            consumers = ?file.consumers.keys().collect::<Vec<_>>(),
                            attributes = ?file.attributes,
                            "Consumers file read again."
                        );
                        consumers.replace_all(file);
                        metrics::gauge!(CONSUMERS_FILE_REFUSED).set(0.0);
                    }
                    Err(reason) => {
                        tracing::warn!(%reason, "Consumers file refused; the consumers read last stay.");
                        metrics::gauge!(CONSUMERS_FILE_REFUSED).set(1.0);
                    }
                }
            }
        })
    }
}

/// Sets [`CONSUMER_SLO_SECONDS`] for each consumer profile.
pub fn export_slos(consumers: &BTreeMap<String, ConsumerProfile>) {
    for (name, profile) in consumers {
        metrics::gauge!(CONSUMER_SLO_SECONDS, "consumer" => name.clone())
            .set(profile.p95_slo_ms as f64 / 1000.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TWO: &str = r#"
        [consumers.search]
        ef_search = 100
        default_k = 10
        max_k = 100
        p95_slo_ms = 50

        [consumers.catalog-audit]
        ef_search = 300
        default_k = 20
        max_k = 200
    "#;

    #[test]
    fn a_consumers_file_reads_with_the_default_objective() {
        let profiles = parse(TWO).unwrap();
        assert_eq!(
            profiles.keys().collect::<Vec<_>>(),
            ["catalog-audit", "search"]
        );
        assert_eq!(profiles["catalog-audit"].p95_slo_ms, 100);
        assert_eq!(profiles["search"].max_k, 100);
    }

    #[test]
    fn a_consumers_file_declares_the_attributes_filters_may_name() {
        use crate::filter::AttributeKind;
        let text = format!("{TWO}\n[attributes]\nsection = \"keyword\"\nsize = \"number\"\n");
        let file = parse_file(&text).unwrap();
        assert_eq!(file.attributes["section"], AttributeKind::Keyword);
        assert_eq!(file.attributes["size"], AttributeKind::Number);
        assert!(parse_file(TWO).unwrap().attributes.is_empty());
        let e = parse_file(&format!("{TWO}\n[attributes]\nsize = \"float\"\n")).unwrap_err();
        assert!(e.contains("unknown variant `float`"), "{e}");
    }

    #[test]
    fn the_demo_consumers_file_holds_the_built_in_profiles_and_the_catalog_attributes() {
        use crate::filter::AttributeKind;
        let file = parse_file(include_str!("../../compose/consumers.toml")).unwrap();
        assert_eq!(file.consumers, default_consumers());
        assert_eq!(
            file.attributes,
            Declared::from([
                ("installed_size".to_owned(), AttributeKind::Number),
                ("section".to_owned(), AttributeKind::Keyword),
                ("source".to_owned(), AttributeKind::Keyword),
            ])
        );
    }

    #[test]
    fn a_bad_consumers_file_is_refused_with_the_reason() {
        for (text, reason) in [
            ("[consumers]", "at least one consumer"),
            (
                "[consumers.a]\nef_search = 1\ndefault_k = 9\nmax_k = 5",
                "consumers.a: default_k must be in 1..=5",
            ),
            (
                "[consumers.a]\nef_search = 0\ndefault_k = 1\nmax_k = 5",
                "ef_search must be at least 1",
            ),
            (
                "[consumers.\"a b\"]\nef_search = 1\ndefault_k = 1\nmax_k = 5",
                "a name is 1 to 64",
            ),
            (
                "[consumers.a]\nef_search = 1\ndefault_k = 1\nmax_k = 5\nef = 3",
                "unknown field `ef`",
            ),
            ("[other]\nx = 1", "unknown field `other`"),
        ] {
            let e = parse(text).unwrap_err();
            assert!(e.contains(reason), "{text:?}: {e}");
        }
    }

    #[tokio::test]
    async fn a_followed_file_replaces_the_consumers_and_a_refused_one_keeps_them() {
        let dir = std::env::temp_dir().join(format!("consumers-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("consumers.toml");
        std::fs::write(&path, TWO).unwrap();
        let consumers = Consumers::from_file(Some(&path)).unwrap();
        assert_eq!(consumers.names(), ["catalog-audit", "search"]);
        let stop = CancellationToken::new();
        let task = consumers.follow_file(
            path.clone(),
            Duration::from_millis(20),
            |p| match p.values().any(|c| c.max_k > 150) {
                true => Err("max_k above the index's 150".to_owned()),
                false => Ok(()),
            },
            stop.clone(),
        );
        // Refused by the process's own bound: the two stay.
        std::fs::write(&path, TWO.replace("max_k = 100", "max_k = 160")).unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(consumers.names(), ["catalog-audit", "search"]);
        assert_eq!(consumers.get("search").unwrap().max_k, 100);
        // Refused by the shared checks, then a good file: the good one replaces them.
        std::fs::write(&path, "[consumers.x]\nef_search = 0").unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(consumers.names(), ["catalog-audit", "search"]);
        std::fs::write(
            &path,
            "[consumers.ads]\nef_search = 64\ndefault_k = 5\nmax_k = 50\np95_slo_ms = 30",
        )
        .unwrap();
        for _ in 0..200 {
            if consumers.names() == ["ads"] {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(consumers.names(), ["ads"]);
        assert!(!consumers.contains("search"));
        stop.cancel();
        task.await.unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
