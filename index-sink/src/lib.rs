//! Index sinks: hot shards, main HNSW indexes (`instant-distance`), compaction with atomic
//! swap, snapshots and recovery — the pure core, with no Kafka and no HTTP — and
//! [`service`], the sink process around it.
//!
//! [`ShardedIndex`] is the one entry point: [`ShardedIndex::open`] a snapshot directory,
//! seek the consumer to [`ShardedIndex::resume_offsets`], [`ShardedIndex::apply`] each record
//! in partition order, [`ShardedIndex::search`] from any thread, run compaction in the
//! background with [`ShardedIndex::spawn_maintenance`], read [`ShardedIndex::stats`].
//!
//! Guarantees: a write is visible to the next query once `apply` returns; a query sees each
//! shard in one consistent state (hot, deletes and main together); compaction never loses a
//! write nor lets an older one win; a snapshot is either complete and checksummed or
//! ignored. Not guaranteed: HNSW results in main are approximate (exact in hot).
//!
//! [`service`] is the I/O edge on top of it: the Kafka consumer of one embedding topic and
//! the HTTP query API (`embedstream sink`).

mod cold;
mod compaction;
mod config;
mod error;
mod filtered;
mod graph;
mod hash;
mod hot;
mod index;
mod main_index;
mod metrics;
pub mod service;
mod shard;
mod snapshot;
mod sq8;
mod stats;
mod store;
mod topk;
mod types;
mod vector;
mod yielding;

pub use compaction::{
    Age, CompactionPolicy, CompactionReason, HotShare, Interval, Planner, RecallDrop, Tombstones,
};
pub use config::{
    ColdConfig, CompactionConfig, HotConfig, IndexConfig, MainConfig, RefineConfig, SnapshotConfig,
};
pub use error::{Error, GraphBridgeError, Result};
pub use hash::shard_of;
pub use index::{Maintenance, ShardedIndex};
pub use metrics::names as metric_names;
pub use stats::{CompactionRecord, ShardStats};
pub use types::{Applied, Attributes, Delete, Hit, ItemId, Query, Source, Upsert, Version, Write};
pub use vector::{dot, normalized};
