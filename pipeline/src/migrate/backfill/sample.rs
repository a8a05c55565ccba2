//! A seeded sample of the live items of `items`, read through the backfill's replay (for
//! adapter training).

use std::collections::{BinaryHeap, HashSet};

use embedstream_topics::names::TopicNames;
use embedstream_topics::{KafkaConfig, ModelSpec};
use tokio_util::sync::CancellationToken;

use super::config::{BackfillConfig, BackfillReport};
use super::replayer::{Replayer, Step};

use crate::embed::burn_model::Device;
use crate::embed::engine::EngineConfig;
use crate::error::Result;
use crate::stage::validate::Limits;

/// Where the items to sample are.
#[derive(Debug, Clone)]
pub struct ItemsSource {
    /// The brokers and the client properties of every Kafka client.
    pub kafka: KafkaConfig,
    /// Schema registry URL (decoding item events).
    pub registry_url: String,
    /// Topic names (prefix).
    pub names: TopicNames,
    /// What the stage accepts: records it would dead-letter are left out.
    pub limits: Limits,
}

/// Records read per step of the sampler's backward walk.
const SAMPLE_CHUNK: i64 = 1000;

/// A seeded sample of `n` live items of `items` as `(item_id, text)`: the whole topic is read,
/// the newest event of each item wins, deleted items and records the stage dead-lettered are
/// left out (what the Drift-Adapter trains on when no pairs are given). `old` is the version
/// whose topic the replay would write to; nothing is embedded or written.
///
/// Each partition is walked backwards in chunks, as the backfill does, so the newest event of
/// an item is met first. Memory: the keys of the items seen, one chunk, and the `n` items kept
/// (the ones whose seeded hash is smallest).
pub async fn sample_items(
    source: &ItemsSource,
    old: &ModelSpec,
    n: usize,
    seed: u64,
    shutdown: &CancellationToken,
) -> Result<Vec<(String, String)>> {
    let config = BackfillConfig {
        kafka: source.kafka.clone(),
        registry_url: source.registry_url.clone(),
        names: source.names.clone(),
        chunk: 1,
        max_rate: 0.0,
        device: Device::default(),
        engine: EngineConfig::default(),
        limits: source.limits,
        by: "sample".into(),
    };
    let replayer = Replayer::open(&config, old, "sample", shutdown).await?;
    let (mut seen, mut report) = (HashSet::new(), BackfillReport::default());
    let mut kept: BinaryHeap<(u64, String, String)> = BinaryHeap::with_capacity(n + 1);
    for p in replayer.partitions(shutdown).await? {
        let (low, high) = replayer.watermarks(p, shutdown).await?;
        let mut end = high;
        while end > low {
            let lo = (end - SAMPLE_CHUNK).max(low);
            let records = replayer.read_range(p, lo, end, shutdown).await?;
            for step in replayer
                .prepare(records, &mut seen, &mut report, shutdown)
                .await?
            {
                if let Step::Upsert { item_id, text, .. } = step {
                    let hash =
                        embedstream_topics::hash::fnv1a64(format!("{seed}:{item_id}").as_bytes());
                    kept.push((hash, item_id, text));
                    if kept.len() > n {
                        kept.pop();
                    }
                }
            }
            end = lo;
        }
    }
    Ok(kept
        .into_sorted_vec()
        .into_iter()
        .map(|(_, id, text)| (id, text))
        .collect())
}
