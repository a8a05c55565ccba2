//! The records the index applies and the hits it returns.
//!
//! A write's [`Version`] is the Kafka position of the record that carried it, and, when the
//! record says so, the position of the source event it was computed from on `items`
//! ([`Source`]). Which of two writes of an item is newer:
//! - both have a source: the source event's order decides. Events of one item share a
//!   partition of `items` (it is keyed by item id), so the later event wins whatever order
//!   the embedding topic delivers them in — a zombie writer's or a backfill's older vector
//!   that lands last is ignored;
//! - otherwise the embedding topic's order decides: within one partition, positions are the
//!   order of the writes.
//!
//! A write that is not newer than what the index holds for the item (a replay, a re-delivery,
//! an older event) is ignored. If the two positions are on different partitions (a topic was
//! re-partitioned), they cannot be compared and the write that arrives last wins.

use std::fmt;
use std::sync::Arc;

use embedstream_schemas::filter::Filter;

/// An item's id, as the key of the embedding topic.
pub type ItemId = String;

/// Where a source event sits on `items`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Source {
    /// Partition of `items`.
    pub partition: i32,
    /// Offset of the event in it.
    pub offset: i64,
}

/// Where a write came from: the Kafka (partition, offset) of its record, and its source event
/// when known.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Version {
    /// The record's partition.
    pub partition: i32,
    /// The record's offset in its partition.
    pub offset: i64,
    /// The source event the record was computed from.
    pub source: Option<Source>,
}

impl Version {
    /// Whether a write at `self` replaces what a write at `held` left (see the module docs).
    pub fn supersedes(self, held: Version) -> bool {
        match (self.source, held.source) {
            (Some(new), Some(old)) => new.partition != old.partition || new.offset > old.offset,
            _ => self.partition != held.partition || self.offset > held.offset,
        }
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.partition, self.offset)?;
        if let Some(s) = self.source {
            write!(f, " (source {}@{})", s.partition, s.offset)?;
        }
        Ok(())
    }
}

/// One attribute: name and value.
type Pair = (Box<str>, Box<str>);

/// An item's attributes as its record carried them, sorted by name; cloning shares them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Attributes(Option<Arc<[Pair]>>);

impl Attributes {
    /// From name/value pairs (a name given twice keeps its last value).
    pub fn new(pairs: impl IntoIterator<Item = (String, String)>) -> Self {
        let mut pairs: Vec<Pair> = pairs
            .into_iter()
            .map(|(k, v)| (k.into_boxed_str(), v.into_boxed_str()))
            .collect();
        if pairs.is_empty() {
            return Self(None);
        }
        // Stable: of equal names the last given ends last, and dedup keeps the first of a
        // run, so reverse first.
        pairs.reverse();
        pairs.sort_by(|a, b| a.0.cmp(&b.0));
        pairs.dedup_by(|a, b| a.0 == b.0);
        Self(Some(pairs.into()))
    }

    /// The value of `name`.
    pub fn get(&self, name: &str) -> Option<&str> {
        let pairs = self.0.as_deref()?;
        pairs
            .binary_search_by(|(k, _)| (**k).cmp(name))
            .ok()
            .map(|i| &*pairs[i].1)
    }

    /// Every (name, value), by name.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0
            .as_deref()
            .unwrap_or_default()
            .iter()
            .map(|(k, v)| (&**k, &**v))
    }

    /// How many there are.
    pub fn len(&self) -> usize {
        self.0.as_deref().map_or(0, <[_]>::len)
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Insert or replace an item's vector.
#[derive(Debug, Clone, PartialEq)]
pub struct Upsert {
    /// The item.
    pub item_id: ItemId,
    /// Its embedding; normalized by the index (L2), so any non-zero finite vector is fine.
    pub vector: Vec<f32>,
    /// Kafka partition of the record.
    pub partition: i32,
    /// Kafka offset of the record.
    pub offset: i64,
    /// The record's event time, milliseconds since the Unix epoch (kept for freshness).
    pub event_time_ms: i64,
    /// The source event on `items`, when the record names it.
    pub source: Option<Source>,
    /// The item's attributes, for filters.
    pub attributes: Attributes,
}

/// Remove an item (a delete event or a Kafka tombstone).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delete {
    /// The item.
    pub item_id: ItemId,
    /// Kafka partition of the record.
    pub partition: i32,
    /// Kafka offset of the record.
    pub offset: i64,
    /// The source event on `items` (the delete event), when the record names it.
    pub source: Option<Source>,
}

/// One record for the index.
#[derive(Debug, Clone, PartialEq)]
pub enum Write {
    /// See [`Upsert`].
    Upsert(Upsert),
    /// See [`Delete`].
    Delete(Delete),
}

impl Write {
    /// The item the write is about.
    pub fn item_id(&self) -> &str {
        match self {
            Self::Upsert(u) => &u.item_id,
            Self::Delete(d) => &d.item_id,
        }
    }

    /// The write's version.
    pub fn version(&self) -> Version {
        match self {
            Self::Upsert(u) => Version {
                partition: u.partition,
                offset: u.offset,
                source: u.source,
            },
            Self::Delete(d) => Version {
                partition: d.partition,
                offset: d.offset,
                source: d.source,
            },
        }
    }
}

impl From<Upsert> for Write {
    fn from(u: Upsert) -> Self {
        Self::Upsert(u)
    }
}

impl From<Delete> for Write {
    fn from(d: Delete) -> Self {
        Self::Delete(d)
    }
}

/// What applying a write did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    /// The item's vector was inserted or replaced; queries see it now.
    Upserted,
    /// The item was removed; queries no longer return it.
    Deleted,
    /// A replay: the shard's snapshot already covers this record's offset.
    AlreadyCovered,
    /// A replay: the index holds a newer (or the same) version of the item.
    Stale,
    /// The item belongs to another slice ([`crate::IndexConfig::slice`]): nothing changed
    /// but the partition's applied offset.
    OtherSlice,
}

/// One search result.
#[derive(Debug, Clone, PartialEq)]
pub struct Hit {
    /// The item.
    pub item_id: ItemId,
    /// Cosine similarity with the query (dot product of normalized vectors), in [-1, 1].
    pub score: f32,
}

/// A query: the vector, how many results, optionally a search width for main and a filter.
#[derive(Debug, Clone, Copy)]
pub struct Query<'a> {
    /// The query vector; normalized by the index.
    pub vector: &'a [f32],
    /// How many results.
    pub k: usize,
    /// HNSW search width for main parts (the consumer's profile); `None`: the configured
    /// default. Raised to `k` when smaller.
    pub ef_search: Option<usize>,
    /// Only items whose attributes match; `None`: every item.
    pub filter: Option<&'a Filter>,
    /// Only the hot tier (hot parts and mains: recent items, in memory), not the cold
    /// tier's segments. Without a cold tier it changes nothing.
    pub hot_only: bool,
}
