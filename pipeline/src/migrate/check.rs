//! The consistency checker of a migration: samples items, compares what the old and the new
//! version's topics hold for each (presence, and freshness as the `items` offset each record
//! was embedded from), re-queues the items where the new version is behind, and exports the
//! divergence ratio.
//!
//! - **Topics, not indexes.** The versioned topics are the contract (downstream consumers and
//!   every sink read them), and each record carries the `items` coordinates it was embedded
//!   from, which the two versions share; an index only knows its own topic's offsets.
//! - **Sampling.** An item is sampled when a hash of its id and a per-run seed falls under the
//!   rate, so both topics agree on the sample without listing it, and every run looks at other
//!   items. Only sampled records are decoded.
//! - **Settling.** The dual-write embeds the new version beside the old one, so an item updated
//!   a moment ago may be on one topic and not yet on the other. Items that differ are read
//!   again after `settle`; only those that still differ count as divergent.
//! - **Re-queue.** Where the new version is behind the old (missing, older source event, or
//!   alive where the old one deleted it), the old version's source event is read from `items`,
//!   embedded with the new model and written to the new topic, the way the backfill does; a
//!   record the new topic received for the item since it was last read wins instead (it comes
//!   from a newer event). Where the new version is ahead (the old stage lags), nothing is
//!   re-queued: the divergence is reported.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::hash::{BuildHasher, Hasher};
use std::time::{Duration, Instant};

use embedstream_schemas::records::EmbeddingRecord;
use embedstream_topics::ModelRef;
use rdkafka::Message;
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use super::backfill::{BackfillConfig, BackfillReport, Replayer, Step, partitions};
use super::plan;
use crate::control::ControlLog;
use crate::error::Result;
use crate::range::{PartitionRange, watermarks};

/// How a check runs.
#[derive(Debug, Clone)]
pub struct CheckConfig {
    /// Where and how re-queued items are embedded (the backfill's settings).
    pub replay: BackfillConfig,
    /// Share of items sampled, in (0, 1].
    pub sample: f64,
    /// How long differing items are given to converge before they count as divergent.
    pub settle: Duration,
    /// Whether divergent items are re-queued (false: report only).
    pub requeue: bool,
}

/// Where an item stands on one version's topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "state")]
pub enum Held {
    /// A vector embedded from the `items` event at `partition`/`offset`.
    Live {
        /// Partition of `items`.
        partition: i32,
        /// Offset of the event in it.
        offset: i64,
    },
    /// A tombstone.
    Deleted,
}

/// How the new version differs from the old one for an item.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Divergence {
    /// The old version has the item, the new one not.
    MissingInNew,
    /// Both have it; the new one from an older event.
    StaleInNew,
    /// The old version deleted it; the new one still has it.
    DeletedInOld,
    /// Both have it from events of different partitions of `items`.
    Moved,
    /// The new version has it, the old one never had it (the old stage lags).
    MissingInOld,
    /// Both have it; the old one from an older event (the old stage lags).
    StaleInOld,
}

impl Divergence {
    /// Its name in reports.
    pub fn name(self) -> &'static str {
        match self {
            Self::MissingInNew => "missing_in_new",
            Self::StaleInNew => "stale_in_new",
            Self::DeletedInOld => "deleted_in_old",
            Self::Moved => "moved",
            Self::MissingInOld => "missing_in_old",
            Self::StaleInOld => "stale_in_old",
        }
    }

    /// Whether the new version is the one behind (and a re-queue fixes it).
    pub fn new_is_behind(self) -> bool {
        matches!(
            self,
            Self::MissingInNew | Self::StaleInNew | Self::DeletedInOld | Self::Moved
        )
    }
}

/// Compares an item's state on the two topics (`None`: never on that topic).
pub fn compare(old: Option<Held>, new: Option<Held>) -> Option<Divergence> {
    let live = |h: Option<Held>| match h {
        Some(Held::Live { partition, offset }) => Some((partition, offset)),
        _ => None,
    };
    match (live(old), live(new)) {
        (None, None) => None,
        (Some(_), None) => Some(Divergence::MissingInNew),
        (None, Some(_)) if old == Some(Held::Deleted) => Some(Divergence::DeletedInOld),
        (None, Some(_)) => Some(Divergence::MissingInOld),
        (Some((po, _)), Some((pn, _))) if po != pn => Some(Divergence::Moved),
        (Some((_, oo)), Some((_, on))) if on < oo => Some(Divergence::StaleInNew),
        (Some((_, oo)), Some((_, on))) if on > oo => Some(Divergence::StaleInOld),
        (Some(_), Some(_)) => None,
    }
}

/// One divergent item, for the report.
#[derive(Debug, Clone, Serialize)]
pub struct Divergent {
    /// Item id.
    pub item_id: String,
    /// How it differs.
    pub kind: Divergence,
    /// On the old version's topic.
    pub old: Option<Held>,
    /// On the new version's topic.
    pub new: Option<Held>,
}

/// What a check found and did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct CheckReport {
    /// The migration checked.
    pub migration: String,
    /// Old version.
    pub old: String,
    /// New version.
    pub new: String,
    /// Seed of the sample.
    pub seed: u64,
    /// Distinct items on either topic.
    pub items: usize,
    /// Items sampled.
    pub sampled: usize,
    /// Sampled items that differed at first and matched after settling.
    pub settled: usize,
    /// Sampled items that still differ.
    pub divergent: usize,
    /// `divergent / sampled` (0 when nothing is sampled).
    pub divergence_ratio: f64,
    /// Divergent items by kind.
    pub kinds: BTreeMap<String, usize>,
    /// Divergent items re-queued (embedded and written to the new topic).
    pub requeued: usize,
    /// Divergent items not re-queued: the new topic got a record for them meanwhile, or their
    /// source event is gone or cannot be embedded.
    pub requeue_skipped: usize,
    /// Up to 20 divergent items.
    pub examples: Vec<Divergent>,
    /// Seconds the check took.
    pub seconds: f64,
}

/// One version's topic as read so far: positions, and the sampled items' states.
struct View {
    topic: String,
    next: BTreeMap<i32, i64>,
    held: HashMap<String, Held>,
}

impl View {
    fn new(topic: String) -> Self {
        Self {
            topic,
            next: BTreeMap::new(),
            held: HashMap::new(),
        }
    }

    /// Reads every partition from where it stopped to the current end; returns the keys seen
    /// (every key, sampled or not).
    async fn catch_up(
        &mut self,
        r: &Replayer,
        sampled: &impl Fn(&[u8]) -> bool,
        all_keys: &mut HashSet<Vec<u8>>,
        shutdown: &CancellationToken,
    ) -> Result<HashSet<String>> {
        let mut touched = HashSet::new();
        for p in partitions(&r.reader, &self.topic, &r.kafka, shutdown).await? {
            let (low, high) = watermarks(&r.reader, &self.topic, p, &r.kafka, shutdown).await?;
            let from = self.next.get(&p).copied().unwrap_or(low).max(low);
            let mut range = PartitionRange::open(&r.kafka, &self.topic, p, from, high)?;
            while let Some(m) = range.next(shutdown).await? {
                let Some(key) = m.key() else { continue };
                all_keys.insert(key.to_vec());
                let Ok(id) = std::str::from_utf8(key) else {
                    continue;
                };
                touched.insert(id.to_owned());
                if !sampled(key) {
                    continue;
                }
                let state = match m.payload() {
                    None => Held::Deleted,
                    Some(bytes) => match r.codec.decode::<EmbeddingRecord>(bytes).await {
                        Ok(e) => Held::Live {
                            partition: e.source.partition,
                            offset: e.source.offset,
                        },
                        // The sinks dead-letter such records and keep what they had.
                        Err(e) => {
                            tracing::debug!(error = %e, topic = self.topic, "Undecodable record.");
                            continue;
                        }
                    },
                };
                self.held.insert(id.to_owned(), state);
            }
            self.next.insert(p, high.max(from));
        }
        Ok(touched)
    }
}

/// The old and the new version's topics, read side by side.
struct Views {
    old: View,
    new: View,
    /// Every key on either topic.
    all_keys: HashSet<Vec<u8>>,
}

impl Views {
    /// Reads both topics to their current ends.
    async fn catch_up(
        &mut self,
        r: &Replayer,
        sampled: &impl Fn(&[u8]) -> bool,
        shutdown: &CancellationToken,
    ) -> Result<()> {
        self.old
            .catch_up(r, sampled, &mut self.all_keys, shutdown)
            .await?;
        self.new
            .catch_up(r, sampled, &mut self.all_keys, shutdown)
            .await?;
        Ok(())
    }

    /// The item's state on each topic.
    fn states(&self, id: &str) -> (Option<Held>, Option<Held>) {
        (
            self.old.held.get(id).copied(),
            self.new.held.get(id).copied(),
        )
    }

    /// How the item differs, if it does.
    fn differs(&self, id: &str) -> Option<Divergence> {
        let (old, new) = self.states(id);
        compare(old, new)
    }
}

/// Whether `key` is in the sample of `seed` at `rate`.
pub fn in_sample(key: &[u8], seed: u64, rate: f64) -> bool {
    if rate >= 1.0 {
        return true;
    }
    let mut h =
        std::hash::BuildHasherDefault::<std::collections::hash_map::DefaultHasher>::default()
            .build_hasher();
    h.write_u64(seed);
    h.write(key);
    // The top 53 bits as a uniform number in [0, 1).
    ((h.finish() >> 11) as f64 / (1u64 << 53) as f64) < rate
}

/// Checks the migration in progress, again and again if asked: the connections (and the new
/// model, once a re-queue needs it) are kept between checks.
pub struct Checker {
    config: CheckConfig,
    replayer: Option<Replayer>,
}

impl std::fmt::Debug for Checker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Checker")
            .field("config", &self.config)
            .field("connected", &self.replayer.is_some())
            .finish()
    }
}

impl Checker {
    /// A checker; it connects on its first check.
    pub fn new(config: CheckConfig) -> Self {
        Self {
            config,
            replayer: None,
        }
    }

    /// Runs one check with the sample of `seed`.
    pub async fn run(
        &mut self,
        seed: u64,
        control: &ControlLog,
        shutdown: CancellationToken,
    ) -> Result<CheckReport> {
        let started = Instant::now();
        let state = control.state();
        let migration = plan::current(&state)?.clone();
        let old: ModelRef = migration.from_model.parse()?;
        let new: ModelRef = migration.to_model.parse()?;
        let config = &self.config;
        // A new migration since the last check writes another topic with another model.
        if self.replayer.as_ref().is_none_or(|r| r.to != new) {
            let spec = crate::control::catalog(&state).lookup(&new)?;
            self.replayer = Some(Replayer::open(&config.replay, &spec, "check", &shutdown).await?);
        }
        let r = self.replayer.as_ref().expect("opened above");
        let rate = config.sample.clamp(f64::MIN_POSITIVE, 1.0);
        let sampled = move |key: &[u8]| in_sample(key, seed, rate);

        let names = &config.replay.names;
        let mut views = Views {
            old: View::new(names.embeddings(&old)),
            new: View::new(names.embeddings(&new)),
            all_keys: HashSet::new(),
        };
        views.catch_up(r, &sampled, &shutdown).await?;
        let sample: Vec<String> = {
            let mut ids: HashSet<&String> = views.old.held.keys().collect();
            ids.extend(views.new.held.keys());
            let mut v: Vec<String> = ids.into_iter().cloned().collect();
            v.sort();
            v
        };
        let mut candidates: Vec<String> = sample
            .iter()
            .filter(|id| views.differs(id).is_some())
            .cloned()
            .collect();
        let first = candidates.len();
        if !candidates.is_empty() && !config.settle.is_zero() {
            tracing::info!(
                differing = first,
                settle_s = config.settle.as_secs_f64(),
                "Items differ; reading them again after the settle time."
            );
            tokio::select! {
                () = shutdown.cancelled() => {}
                () = tokio::time::sleep(config.settle) => {}
            }
            views.catch_up(r, &sampled, &shutdown).await?;
            candidates.retain(|id| views.differs(id).is_some());
        }

        let mut report = CheckReport {
            migration: migration.migration_id.clone(),
            old: old.to_string(),
            new: new.to_string(),
            seed,
            items: views.all_keys.len(),
            sampled: sample.len(),
            settled: first - candidates.len(),
            divergent: candidates.len(),
            divergence_ratio: if sample.is_empty() {
                0.0
            } else {
                candidates.len() as f64 / sample.len() as f64
            },
            ..CheckReport::default()
        };
        let mut behind = Vec::new();
        for id in &candidates {
            let (o, n) = views.states(id);
            let Some(kind) = compare(o, n) else { continue };
            *report.kinds.entry(kind.name().to_owned()).or_default() += 1;
            if report.examples.len() < 20 {
                report.examples.push(Divergent {
                    item_id: id.clone(),
                    kind,
                    old: o,
                    new: n,
                });
            }
            if kind.new_is_behind() {
                behind.push((id.clone(), o));
            }
        }
        metrics::gauge!(super::metrics::DIVERGENCE_RATIO, "migration" => migration.migration_id.clone())
            .set(report.divergence_ratio);
        if config.requeue && !behind.is_empty() {
            requeue(r, &mut views.new, behind, &mut report, &shutdown).await?;
            metrics::counter!(super::metrics::REQUEUED).increment(report.requeued as u64);
        }
        report.seconds = started.elapsed().as_secs_f64();
        Ok(report)
    }
}

/// Embeds the old version's source event of each item (or deletes it) into the new topic,
/// unless the new topic got a record for it since it was read.
async fn requeue(
    r: &Replayer,
    new_view: &mut View,
    behind: Vec<(String, Option<Held>)>,
    report: &mut CheckReport,
    shutdown: &CancellationToken,
) -> Result<()> {
    let mut steps = Vec::new();
    let mut scratch = BackfillReport::default();
    for (id, old) in &behind {
        match old {
            Some(Held::Live { partition, offset }) => {
                let records = r
                    .read_range(*partition, *offset, offset + 1, shutdown)
                    .await?;
                let records: Vec<_> = records
                    .into_iter()
                    .filter(|m| m.key() == Some(id.as_bytes()))
                    .collect();
                if records.is_empty() {
                    // Compacted away: a newer event replaced it, which the stage embeds.
                    report.requeue_skipped += 1;
                    continue;
                }
                let before = steps.len();
                steps.extend(
                    r.prepare(records, &mut HashSet::new(), &mut scratch, shutdown)
                        .await?,
                );
                if steps.len() == before {
                    report.requeue_skipped += 1;
                }
            }
            _ => steps.push(Step::Delete {
                key: id.as_bytes().to_vec(),
                source: None,
            }),
        }
    }
    let embedded = r.embed(steps).await?;
    // Whatever the new topic received since it was read comes from a newer event: it wins.
    let mut ignored = HashSet::new();
    let fresh: HashSet<Vec<u8>> = new_view
        .catch_up(r, &|_| false, &mut ignored, shutdown)
        .await?
        .into_iter()
        .map(String::into_bytes)
        .collect();
    let before = scratch.skipped;
    let count = r.produce(embedded, &fresh, &mut scratch).await?;
    report.requeued = usize::try_from(count.embedded).unwrap_or(0)
        + usize::try_from(scratch.deleted).unwrap_or(0);
    report.requeue_skipped += usize::try_from(scratch.skipped - before).unwrap_or(0);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const fn live(partition: i32, offset: i64) -> Option<Held> {
        Some(Held::Live { partition, offset })
    }

    #[test]
    fn divergences_are_told_apart() {
        assert_eq!(compare(None, None), None);
        assert_eq!(compare(Some(Held::Deleted), None), None);
        assert_eq!(compare(None, Some(Held::Deleted)), None);
        assert_eq!(compare(live(0, 5), live(0, 5)), None);
        assert_eq!(compare(live(0, 5), None), Some(Divergence::MissingInNew));
        assert_eq!(
            compare(live(0, 5), Some(Held::Deleted)),
            Some(Divergence::MissingInNew)
        );
        assert_eq!(
            compare(live(0, 5), live(0, 3)),
            Some(Divergence::StaleInNew)
        );
        assert_eq!(
            compare(live(0, 3), live(0, 5)),
            Some(Divergence::StaleInOld)
        );
        assert_eq!(
            compare(Some(Held::Deleted), live(0, 5)),
            Some(Divergence::DeletedInOld)
        );
        assert_eq!(compare(None, live(0, 5)), Some(Divergence::MissingInOld));
        assert_eq!(compare(live(1, 5), live(0, 5)), Some(Divergence::Moved));
        assert!(Divergence::StaleInNew.new_is_behind());
        assert!(!Divergence::StaleInOld.new_is_behind());
        assert!(!Divergence::MissingInOld.new_is_behind());
    }

    #[test]
    fn the_sample_has_the_asked_share_and_changes_with_the_seed() {
        let keys: Vec<String> = (0..20_000).map(|i| format!("item-{i}")).collect();
        let share = |seed, rate| {
            keys.iter()
                .filter(|k| in_sample(k.as_bytes(), seed, rate))
                .count() as f64
                / keys.len() as f64
        };
        assert!((share(1, 0.1) - 0.1).abs() < 0.01, "{}", share(1, 0.1));
        assert!((share(2, 0.5) - 0.5).abs() < 0.02);
        assert_eq!(share(3, 1.0), 1.0);
        let a: Vec<bool> = keys
            .iter()
            .map(|k| in_sample(k.as_bytes(), 1, 0.1))
            .collect();
        let b: Vec<bool> = keys
            .iter()
            .map(|k| in_sample(k.as_bytes(), 2, 0.1))
            .collect();
        assert_ne!(a, b);
        let again: Vec<bool> = keys
            .iter()
            .map(|k| in_sample(k.as_bytes(), 1, 0.1))
            .collect();
        assert_eq!(a, again);
    }
}
