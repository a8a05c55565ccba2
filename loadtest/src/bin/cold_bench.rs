//! The index core's side of `loadtest/cold_bench.py`: the same vectors held by an index with
//! every item in memory (`--tier hot`) or in the cold tier's memory-mapped segments
//! (`--tier cold`). Prints one JSON object per command on stdout.
//!
//! - `build`: applies every row of `base.f32` (ids `r<row>`, event times a week old) to an
//!   index in `--dir` and compacts every shard: for `hot`, into main (the snapshot holds it);
//!   for `cold`, into segments.
//! - `serve`: opens the index from `--dir` and runs the held-out queries one at a time,
//!   `--passes` times over (the first pass after a cache drop reads from disk), reporting
//!   recall@10 against the exact top 10 and per-query latency per pass, and the process's
//!   resident memory (now and at its peak).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Result;
use clap::{Args, Parser, Subcommand, ValueEnum};
use embedstream_index_sink::{CompactionReason, IndexConfig, Query, ShardedIndex, Upsert};
use embedstream_loadtest::{VectorSet, at_quantile};
use serde_json::json;

#[derive(Parser)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    Build(Common),
    Serve(ServeArgs),
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Tier {
    Hot,
    Cold,
}

#[derive(Args)]
struct Common {
    /// Directory with base.f32, queries.f32, truth.u32, meta.json.
    #[arg(long)]
    data: PathBuf,
    /// The index's snapshot directory.
    #[arg(long)]
    dir: PathBuf,
    #[arg(long, value_enum)]
    tier: Tier,
    #[arg(long, default_value_t = 2)]
    shards: usize,
    /// Compaction (build) threads.
    #[arg(long, default_value_t = 2)]
    threads: usize,
}

#[derive(Args)]
struct ServeArgs {
    #[command(flatten)]
    common: Common,
    #[arg(long, default_value_t = 100)]
    ef: usize,
    #[arg(long, default_value_t = 2)]
    passes: usize,
}

fn config(c: &Common, dim: usize) -> IndexConfig {
    let mut config = IndexConfig::with_dim(dim);
    config.name = "cold-bench".into();
    config.shards = c.shards;
    config.compaction.threads = c.threads;
    config.compaction.recall_every = None;
    config.compaction.interval = None;
    config.hot.max_vectors = usize::MAX;
    // Nothing compacts by itself: `build` does it once, by hand.
    config.compaction.min_hot = usize::MAX;
    if c.tier == Tier::Cold {
        config.cold.enabled = true;
        config.cold.hot_window = Duration::from_secs(24 * 3600);
        config.cold.min_move = 1;
    }
    config
}

fn build(c: &Common) -> Result<serde_json::Value> {
    let data = VectorSet::load(&c.data, true)?;
    let index = ShardedIndex::open(&c.dir, config(c, data.dim))?;
    let week_ago = embedstream_topics::time::now_ms() - 7 * 24 * 3600 * 1000;
    let started = Instant::now();
    for (row, v) in data.base.chunks_exact(data.dim).enumerate() {
        index.apply(Upsert {
            item_id: format!("r{row}"),
            vector: v.to_vec(),
            partition: 0,
            offset: row as i64,
            event_time_ms: week_ago,
            source: None,
            attributes: Default::default(),
        })?;
    }
    for shard in 0..c.shards {
        index.compact(shard, CompactionReason::Manual)?;
    }
    let stats = index.stats();
    Ok(json!({
        "command": "build",
        "tier": tier_name(c.tier),
        "rows": data.base.len() / data.dim,
        "build_s": started.elapsed().as_secs_f64(),
        "main_vectors": stats.iter().map(|s| s.main_vectors).sum::<usize>(),
        "cold_vectors": stats.iter().map(|s| s.cold_vectors).sum::<usize>(),
        "cold_bytes": stats.iter().map(|s| s.cold_bytes).sum::<u64>(),
    }))
}

fn serve(a: &ServeArgs) -> Result<serde_json::Value> {
    let c = &a.common;
    let data = VectorSet::load(&c.data, false)?;
    let opened = Instant::now();
    let index = ShardedIndex::open(&c.dir, config(c, data.dim))?;
    let open_s = opened.elapsed().as_secs_f64();
    let after_open = memory();
    let n = data.queries.len() / data.dim;
    let mut passes = Vec::new();
    for pass in 0..a.passes {
        let mut latencies = Vec::with_capacity(n);
        let mut found = 0usize;
        for (q, vector) in data.queries.chunks_exact(data.dim).enumerate() {
            let started = Instant::now();
            let hits = index.search(Query {
                vector,
                k: 10,
                ef_search: Some(a.ef),
                filter: None,
                hot_only: false,
            })?;
            latencies.push(started.elapsed().as_secs_f64() * 1000.0);
            found += data.hits_in_top10(q, hits.iter().map(|h| h.item_id.as_str()));
        }
        latencies.sort_by(f64::total_cmp);
        passes.push(json!({
            "pass": pass,
            "recall_at_10": found as f64 / (n * 10) as f64,
            "p50_ms": at_quantile(&latencies, 0.50),
            "p95_ms": at_quantile(&latencies, 0.95),
            "p99_ms": at_quantile(&latencies, 0.99),
        }));
    }
    let stats = index.stats();
    let (rss, hwm) = memory();
    Ok(json!({
        "command": "serve",
        "tier": tier_name(c.tier),
        "items": index.len(),
        "cold_vectors": stats.iter().map(|s| s.cold_vectors).sum::<usize>(),
        "cold_bytes": stats.iter().map(|s| s.cold_bytes).sum::<u64>(),
        "open_s": open_s,
        "rss_after_open_mb": after_open.0,
        "rss_mb": rss,
        "peak_rss_mb": hwm,
        "ef": a.ef,
        "passes": passes,
    }))
}

fn tier_name(t: Tier) -> &'static str {
    match t {
        Tier::Hot => "hot",
        Tier::Cold => "cold",
    }
}

/// (VmRSS, VmHWM) of this process in MB, from /proc (0 where it cannot be read).
fn memory() -> (f64, f64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
            .map_or(0.0, |kb| kb / 1024.0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

fn main() -> Result<()> {
    let out = match Cli::parse().command {
        Command::Build(c) => build(&c)?,
        Command::Serve(a) => serve(&a)?,
    };
    println!("{out}");
    Ok(())
}
