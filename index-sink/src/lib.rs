//! Index sinks: hot shards, main HNSW indexes (`instant-distance`), compaction with atomic
//! swap, snapshots and recovery, and query serving.
//!
//! Not built yet: this crate is the place the index-sink issue fills. It is a workspace
//! member today so that the layout, the lints and CI cover it from the start.
