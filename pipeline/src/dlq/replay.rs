//! Reading `items.dlq` and sending chosen dead letters back to `items` once the cause is
//! fixed (a producer bug, a limit, a schema).
//!
//! - **Original bytes, original partition.** A replayed letter is its original key and value,
//!   produced to the partition of `items` it was read from (so it stays behind the item's
//!   earlier events, whatever partitioner wrote them), with an `embedstream.replayed.from`
//!   header naming the letter.
//! - **Never older over newer.** A letter whose item has a later record on `items` than the
//!   dead-lettered one is *superseded* and not replayed (unless asked): the later event is the
//!   producer's latest word, and replaying the old one would make it win. A replayed letter
//!   supersedes itself, so running the same replay twice sends nothing the second time.
//! - **Truncated letters are not replayed**: their bytes are cut (the stage's
//!   `--dlq-max-original-bytes`); the letter keeps the size and SHA-256 of the original to
//!   find it upstream.
//! - **Memory**: listing streams; a replay holds the letters it selected (at most `limit`,
//!   each at most the stage's cut size) and one latest offset per selected item.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use embedstream_schemas::Codec;
use embedstream_schemas::records::{DeadLetter, SourceCoordinates};
use embedstream_topics::KafkaConfig;
use embedstream_topics::names::TopicNames;
use rdkafka::Message;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use crate::error::{Error, Result};
use crate::range::{PartitionRange, new_reader, partitions, watermarks};
use crate::stage::prepare::decode_waiting;

/// Header of a replayed record: `<dlq topic>/<partition>/<offset>` of its letter.
pub const REPLAYED_FROM: &str = "embedstream.replayed.from";

/// Where the dead letters are.
#[derive(Debug, Clone)]
pub struct DlqSource {
    /// The brokers and the client properties of every Kafka client.
    pub kafka: KafkaConfig,
    /// Schema registry URL (decoding letters).
    pub registry_url: String,
    /// Topic names (prefix).
    pub names: TopicNames,
}

/// Which dead letters a command takes: all of those given must match.
#[derive(Debug, Clone, Default)]
pub struct Selection {
    /// Error kinds (`malformed_avro`, `text_too_long`, ...); empty for every kind.
    pub kinds: Vec<String>,
    /// Item ids (the original key); empty for every item.
    pub items: Vec<String>,
    /// First offset of `items.dlq` to take (inclusive).
    pub from_offset: Option<i64>,
    /// Offset of `items.dlq` to stop before.
    pub to_offset: Option<i64>,
    /// At most this many letters.
    pub limit: Option<usize>,
}

impl Selection {
    fn takes(&self, letter: &DeadLetter) -> bool {
        (self.kinds.is_empty() || self.kinds.contains(&letter.error_kind))
            && (self.items.is_empty()
                || letter
                    .original_key
                    .as_deref()
                    .is_some_and(|k| self.items.iter().any(|i| i.as_bytes() == k)))
    }
}

/// What a command did with one letter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    /// Listed only.
    Listed,
    /// Sent to `items`.
    Replayed,
    /// Would be sent (a dry run).
    WouldReplay,
    /// Not sent: the item has a later record on `items`.
    Superseded,
    /// Not sent: its bytes were cut.
    Truncated,
    /// Not sent: it was read from another topic than this platform's `items`.
    OtherTopic,
    /// The letter itself cannot be decoded.
    Undecodable,
}

/// One letter as a command reports it (a JSON line).
#[derive(Debug, Clone, Serialize)]
pub struct Line {
    /// Partition of `items.dlq`.
    pub dlq_partition: i32,
    /// Offset in it.
    pub dlq_offset: i64,
    /// What was done.
    pub action: Action,
    /// The original key as text (lossy), when it had one.
    pub item: Option<String>,
    /// Error kind.
    pub error_kind: Option<String>,
    /// Error message (or why the letter cannot be decoded).
    pub message: Option<String>,
    /// Where the failed record was read.
    pub source: Option<SourceCoordinates>,
    /// When it failed, ms since the epoch.
    pub failed_at: Option<i64>,
    /// Bytes of the original value.
    pub original_value_size: Option<i64>,
    /// Whether its bytes were cut.
    pub truncated: Option<bool>,
}

impl Line {
    fn of(dlq_partition: i32, dlq_offset: i64, letter: &DeadLetter, action: Action) -> Self {
        Self {
            dlq_partition,
            dlq_offset,
            action,
            item: letter
                .original_key
                .as_deref()
                .map(|k| String::from_utf8_lossy(k).into_owned()),
            error_kind: Some(letter.error_kind.clone()),
            message: Some(letter.message.clone()),
            source: Some(letter.source.clone()),
            failed_at: Some(letter.failed_at),
            original_value_size: letter.original_value_size,
            truncated: Some(letter.truncated),
        }
    }

    fn undecodable(dlq_partition: i32, dlq_offset: i64, reason: String) -> Self {
        Self {
            dlq_partition,
            dlq_offset,
            action: Action::Undecodable,
            item: None,
            error_kind: None,
            message: Some(reason),
            source: None,
            failed_at: None,
            original_value_size: None,
            truncated: None,
        }
    }
}

/// How a replay runs.
#[derive(Debug, Clone, Copy, Default)]
pub struct ReplayOptions {
    /// Report what would be sent; send nothing.
    pub dry_run: bool,
    /// Send superseded letters too (their old event then wins over the item's later ones).
    pub include_superseded: bool,
}

/// Reads the selected letters of `items.dlq` (up to its end when the command started), in
/// partition and offset order, calling `each` with every decoded letter and every letter that
/// cannot be decoded (as `Err(reason)`). Returns how many it handed over.
async fn read_letters(
    source: &DlqSource,
    selection: &Selection,
    shutdown: &CancellationToken,
    mut each: impl FnMut(i32, i64, std::result::Result<DeadLetter, String>),
) -> Result<usize> {
    let topic = source.names.items_dlq();
    let reader = new_reader(&source.kafka, "dlq")?;
    let codec = Codec::new(&source.registry_url);
    let mut taken = 0;
    for p in partitions(&reader, &topic, &source.kafka, shutdown).await? {
        let (low, high) = watermarks(&reader, &topic, p, &source.kafka, shutdown).await?;
        let lo = selection.from_offset.unwrap_or(low).max(low);
        let hi = selection.to_offset.unwrap_or(high).min(high);
        let mut range = PartitionRange::open(&source.kafka, &topic, p, lo, hi)?;
        while let Some(m) = range.next(shutdown).await? {
            if selection.limit.is_some_and(|l| taken >= l) {
                return Ok(taken);
            }
            let decoded = match m.payload() {
                None => Err("a record without a value".to_owned()),
                Some(bytes) => decode_waiting::<DeadLetter>(&codec, bytes, shutdown)
                    .await
                    .ok_or(Error::Interrupted)?
                    .map_err(|e| e.to_string()),
            };
            if decoded.as_ref().is_ok_and(|l| !selection.takes(l)) {
                continue;
            }
            taken += 1;
            each(p, m.offset(), decoded);
        }
    }
    Ok(taken)
}

/// Lists the selected letters.
pub async fn list(
    source: &DlqSource,
    selection: &Selection,
    shutdown: &CancellationToken,
    mut each: impl FnMut(Line),
) -> Result<usize> {
    read_letters(source, selection, shutdown, |p, offset, letter| {
        each(match letter {
            Ok(l) => Line::of(p, offset, &l, Action::Listed),
            Err(reason) => Line::undecodable(p, offset, reason),
        });
    })
    .await
}

/// Replays the selected letters to `items` (see the module's rules); returns one line per
/// selected letter, in `items.dlq` order.
pub async fn replay(
    source: &DlqSource,
    selection: &Selection,
    options: ReplayOptions,
    shutdown: &CancellationToken,
) -> Result<Vec<Line>> {
    let items = source.names.items();
    let mut letters = Vec::new();
    let mut lines = Vec::new();
    read_letters(
        source,
        selection,
        shutdown,
        |p, offset, letter| match letter {
            Ok(l) => letters.push((p, offset, l)),
            Err(reason) => lines.push(Line::undecodable(p, offset, reason)),
        },
    )
    .await?;

    let latest = latest_offsets(source, &items, &letters, shutdown).await?;
    let producer: FutureProducer = source
        .kafka
        .client()
        .set("enable.idempotence", "true")
        .set("message.timeout.ms", "60000")
        .create()
        .map_err(Error::kafka(&source.kafka))?;
    let dlq = source.names.items_dlq();
    for (p, offset, letter) in &letters {
        let later = letter.original_key.as_ref().and_then(|k| {
            latest
                .get(&(letter.source.partition, k.clone()))
                .filter(|&&o| o > letter.source.offset)
        });
        let action = if letter.source.topic != items {
            Action::OtherTopic
        } else if letter.truncated {
            Action::Truncated
        } else if later.is_some() && !options.include_superseded {
            Action::Superseded
        } else if options.dry_run {
            Action::WouldReplay
        } else {
            let from = format!("{dlq}/{p}/{offset}");
            let mut record = FutureRecord::<[u8], [u8]>::to(&items)
                .partition(letter.source.partition)
                .headers(OwnedHeaders::new().insert(Header {
                    key: REPLAYED_FROM,
                    value: Some(from.as_str()),
                }));
            if let Some(k) = &letter.original_key {
                record = record.key(k);
            }
            if let Some(v) = &letter.original_value {
                record = record.payload(v);
            }
            producer
                .send(record, Duration::from_secs(60))
                .await
                .map_err(|(e, _)| Error::produce(&items)(e))?;
            Action::Replayed
        };
        lines.push(Line::of(*p, *offset, letter, action));
    }
    lines.sort_by_key(|l| (l.dlq_partition, l.dlq_offset));
    Ok(lines)
}

/// The latest offset on `items` of each selected letter's item, per partition, read from the
/// earliest letter's source offset of each partition to the partition's current end.
async fn latest_offsets(
    source: &DlqSource,
    items: &str,
    letters: &[(i32, i64, DeadLetter)],
    shutdown: &CancellationToken,
) -> Result<HashMap<(i32, Vec<u8>), i64>> {
    let mut from: BTreeMap<i32, i64> = BTreeMap::new();
    let mut keys: HashMap<(i32, Vec<u8>), i64> = HashMap::new();
    for (_, _, l) in letters {
        if l.source.topic != items {
            continue;
        }
        if let Some(k) = &l.original_key {
            let f = from.entry(l.source.partition).or_insert(l.source.offset);
            *f = (*f).min(l.source.offset);
            keys.insert((l.source.partition, k.clone()), l.source.offset);
        }
    }
    let reader = new_reader(&source.kafka, "dlq-replay")?;
    for (p, first) in from {
        let (_, high) = watermarks(&reader, items, p, &source.kafka, shutdown).await?;
        let mut range = PartitionRange::open(&source.kafka, items, p, first + 1, high)?;
        while let Some(m) = range.next(shutdown).await? {
            if let Some(k) = m.key()
                && let Some(latest) = keys.get_mut(&(p, k.to_vec()))
            {
                *latest = (*latest).max(m.offset());
            }
        }
    }
    Ok(keys)
}
