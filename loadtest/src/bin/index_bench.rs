//! The index core's side of `loadtest/index_bench.py`: builds a [`ShardedIndex`] over the
//! vectors `loadtest/index_data.py` wrote, then measures what the script asks for. Prints one
//! JSON object per measurement on stdout.
//!
//! - `search`: recall@10 against the exact top-10, and per-query latency and QPS for each
//!   `ef`, with the queries run on a pool of `--query-threads` threads (1: single-thread QPS,
//!   the number compared with hnswlib). The built index is snapshotted in `--snapshot-dir`
//!   and reloaded by a later run instead of rebuilt (what a restarted sink does).
//! - `compaction`: query latency from one client while idle, then while the maintenance
//!   policy rebuilds every shard's main (hot at `--hot-share` of main), then idle again. The
//!   `idle` row pools both idle windows (each window's p99 is in it too): a rebuild under a
//!   client that never stops takes minutes, and a VM's speed drifts over that long, so an idle
//!   window on one side only would compare the rebuild with one moment of the drift.
//! - `filtered`: filtered search. Each row gets the attributes `bucket` (a number, 0–99, from
//!   `--buckets`: one byte per row) and `label` (`l<bucket>`); three filters select 50%
//!   (`bucket < 50`, a range), 10% (`label` in ten labels) and 1% (`label` equal to one). Per
//!   filter and `ef`: recall@10 against the exact filtered top 10 (computed here by a full
//!   scan) and single-thread latency, for the sink's choice of strategy (`auto`) and for each
//!   strategy forced (`graph`, `exact`), so the crossover can be read off.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::{Args, Parser, Subcommand};
use embedstream_index_sink::{
    CompactionReason, IndexConfig, Query, RefineConfig, ShardedIndex, Upsert,
};
use embedstream_loadtest::{VectorSet as Data, at_quantile};
use serde_json::json;

#[derive(Parser)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    Search(SearchArgs),
    Compaction(CompactionArgs),
    Filtered(FilteredArgs),
}

#[derive(Args)]
struct FilteredArgs {
    #[command(flatten)]
    common: Common,
    /// One byte per row of base: its bucket (0–99).
    #[arg(long)]
    buckets: PathBuf,
    /// Keep the built index here and reuse it.
    #[arg(long)]
    snapshot_dir: PathBuf,
    #[arg(long, default_value_t = 2)]
    build_threads: usize,
    #[arg(long, value_delimiter = ',', default_value = "64,100,200")]
    efs: Vec<usize>,
    /// Strategies: auto (the configured limit), graph (always walk), exact (always scan).
    #[arg(long, value_delimiter = ',', default_value = "auto,graph,exact")]
    modes: Vec<String>,
}

#[derive(Args)]
struct Common {
    /// Directory with base.f32, queries.f32, truth.u32, meta.json.
    #[arg(long)]
    data: PathBuf,
    /// Shards (the sink's default unless said).
    #[arg(long, default_value_t = embedstream_index_sink::IndexConfig::with_dim(0).shards)]
    shards: usize,
    #[arg(long, default_value_t = 100)]
    ef_construction: usize,
    /// Top layer-0 lists up with pruned candidates (instant-distance's default).
    #[arg(long)]
    keep_pruned: bool,
    /// The layer-0 refinement pass: `default` (the sink's), `off` (the graph as
    /// instant-distance built it, plus reverse links), or `ALPHA,DEGREE,MAX_LINKS,EF`.
    #[arg(long, default_value = "default", value_parser = parse_refine)]
    refine: RefineArg,
}

#[derive(Clone, Debug)]
enum RefineArg {
    Default,
    Set(Option<RefineConfig>),
}

fn parse_refine(s: &str) -> std::result::Result<RefineArg, String> {
    match s {
        "default" => Ok(RefineArg::Default),
        "off" => Ok(RefineArg::Set(None)),
        _ => {
            let v: Vec<&str> = s.split(',').collect();
            let [alpha, degree, max_links, ef] = v[..] else {
                return Err("want default, off or ALPHA,DEGREE,MAX_LINKS,EF".into());
            };
            let num = |x: &str| x.trim().parse::<usize>().map_err(|e| format!("{x}: {e}"));
            Ok(RefineArg::Set(Some(RefineConfig {
                alpha: alpha.trim().parse().map_err(|e| format!("{alpha}: {e}"))?,
                degree: num(degree)?,
                max_links: num(max_links)?,
                ef: num(ef)?,
            })))
        }
    }
}

#[derive(Args)]
struct SearchArgs {
    #[command(flatten)]
    common: Common,
    /// Threads of the compaction pool for the initial build.
    #[arg(long, default_value_t = 2)]
    build_threads: usize,
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "16,24,32,48,64,100,150,200"
    )]
    efs: Vec<usize>,
    #[arg(long, default_value_t = 1)]
    query_threads: usize,
    /// Keep the built index here and reuse it when it holds the same data.
    #[arg(long)]
    snapshot_dir: Option<PathBuf>,
}

#[derive(Args)]
struct CompactionArgs {
    #[command(flatten)]
    common: Common,
    /// Hot share of main when the policy rebuilds (the default policy's threshold).
    #[arg(long, default_value_t = 0.05)]
    hot_share: f64,
    /// Compaction threads: its CPU budget.
    #[arg(long, default_value_t = 1)]
    threads: usize,
    #[arg(long, default_value_t = 100)]
    ef: usize,
    /// Length of each idle window (one before the rebuild, one after).
    #[arg(long, default_value_t = 20)]
    idle_secs: u64,
    /// Open-loop query rate as a share of the idle back-to-back capacity (0: back to back
    /// throughout, which leaves no idle CPU when the queries use every core).
    #[arg(long, default_value_t = 0.5)]
    load: f64,
}

/// The index's upserts of a vector set: row `i` is item `i<i>`.
trait Rows {
    fn upsert(&self, row: usize) -> Upsert;
}

impl Rows for Data {
    fn upsert(&self, row: usize) -> Upsert {
        Upsert {
            item_id: format!("i{row}"),
            vector: self.row(row).to_vec(),
            partition: 0,
            offset: row as i64,
            event_time_ms: 0,
            source: None,
            attributes: Default::default(),
        }
    }
}

fn config(common: &Common, dim: usize, n: usize) -> IndexConfig {
    let mut config = IndexConfig::with_dim(dim);
    config.name = "bench".into();
    config.shards = common.shards;
    config.main.ef_construction = common.ef_construction;
    config.main.keep_pruned = common.keep_pruned;
    if let RefineArg::Set(refine) = &common.refine {
        config.main.refine = refine.clone();
    }
    config.hot.max_vectors = n + 1;
    // Compaction only when this program asks for it.
    config.compaction.interval = None;
    config.compaction.hot_fraction = 1e9;
    config.compaction.max_tombstone_ratio = 1.0;
    config
}

fn peak_rss_mb() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    at_quantile(sorted, p).as_secs_f64() * 1e6
}

/// Applies rows `range` and rebuilds every shard's main on the compaction pool.
fn load_and_build(index: &ShardedIndex, data: &Data, rows: std::ops::Range<usize>) -> Result<()> {
    for row in rows {
        index.apply(data.upsert(row))?;
    }
    for shard in 0..index.stats().len() {
        index.compact(shard, CompactionReason::Manual)?;
    }
    Ok(())
}

fn search(args: SearchArgs) -> Result<()> {
    let data = Data::load(&args.common.data, true)?;
    let n = data.n();
    let mut config = config(&args.common, data.dim, n);
    config.compaction.threads = args.build_threads;
    let started = Instant::now();
    let (index, reused) = match &args.snapshot_dir {
        Some(dir) => {
            let index = ShardedIndex::open(dir, config)?;
            let reused = index.len() == n && index.stats().iter().all(|s| s.hot_vectors == 0);
            if !reused {
                if !index.is_empty() {
                    bail!("{} holds another index; remove it", dir.display());
                }
                load_and_build(&index, &data, 0..n)?;
            }
            (index, reused)
        }
        None => {
            config.snapshot.enabled = false;
            let index = ShardedIndex::new(config)?;
            load_and_build(&index, &data, 0..n)?;
            (index, false)
        }
    };
    println!(
        "{}",
        json!({
            "kind": "build", "n": n, "dim": data.dim, "shards": args.common.shards,
            "ef_construction": args.common.ef_construction, "threads": args.build_threads,
            "seconds": started.elapsed().as_secs_f64(), "loaded_from_snapshot": reused,
            "peak_rss_mb": peak_rss_mb(),
        })
    );
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(args.query_threads)
        .build()?;
    for &ef in &args.efs {
        // One pass to warm caches, one measured.
        for pass in 0..2 {
            let mut lat = Vec::with_capacity(data.nq());
            let mut found = 0;
            let total = Instant::now();
            pool.install(|| -> Result<()> {
                for q in 0..data.nq() {
                    let t = Instant::now();
                    let hits = index.search(Query {
                        vector: data.query(q),
                        k: 10,
                        ef_search: Some(ef),
                        filter: None,
                        hot_only: false,
                    })?;
                    lat.push(t.elapsed());
                    let ids: Vec<String> = hits.into_iter().map(|h| h.item_id).collect();
                    found += data.hits_in_top10(q, ids.iter().map(String::as_str));
                }
                Ok(())
            })?;
            if pass == 1 {
                let secs = total.elapsed().as_secs_f64();
                lat.sort();
                println!(
                    "{}",
                    json!({
                        "kind": "search", "ef": ef, "query_threads": args.query_threads,
                        "recall10": found as f64 / (10 * data.nq()) as f64,
                        "qps": data.nq() as f64 / secs,
                        "p50_us": percentile(&lat, 0.5), "p95_us": percentile(&lat, 0.95),
                        "p99_us": percentile(&lat, 0.99),
                    })
                );
            }
        }
    }
    Ok(())
}

/// One client until `stop`: back to back (`rate` None) or open loop at `rate` queries/s, each
/// latency counted from its scheduled start (a late query is not forgiven its wait).
fn query_loop(
    index: &ShardedIndex,
    data: &Data,
    ef: usize,
    rate: Option<f64>,
    stop: &AtomicBool,
) -> Vec<Duration> {
    let mut lat = Vec::new();
    let mut q = 0;
    let started = Instant::now();
    while !stop.load(Ordering::Relaxed) {
        let t = match rate {
            None => Instant::now(),
            Some(rate) => {
                let due = started + Duration::from_secs_f64(q as f64 / rate);
                if let Some(wait) = due.checked_duration_since(Instant::now()) {
                    std::thread::sleep(wait);
                }
                due
            }
        };
        let hits = index.search(Query {
            vector: data.query(q % data.nq()),
            k: 10,
            ef_search: Some(ef),
            filter: None,
            hot_only: false,
        });
        lat.push(t.elapsed());
        assert!(hits.is_ok_and(|h| h.len() == 10), "a query failed");
        q += 1;
    }
    lat
}

fn compaction(args: CompactionArgs) -> Result<()> {
    let data = Arc::new(Data::load(&args.common.data, true)?);
    let n = data.n();
    let mut config = config(&args.common, data.dim, n);
    config.snapshot.enabled = false;
    config.compaction.threads = args.threads;
    let in_main = (n as f64 / (1.0 + args.hot_share)) as usize;
    let index = Arc::new(ShardedIndex::new(config)?);
    load_and_build(&index, &data, 0..in_main)?;
    for row in in_main..n {
        index.apply(data.upsert(row))?;
    }
    let measure = |rate: Option<f64>, during: &dyn Fn()| -> Vec<Duration> {
        let stop = Arc::new(AtomicBool::new(false));
        let client = {
            let (index, data, stop) = (Arc::clone(&index), Arc::clone(&data), Arc::clone(&stop));
            std::thread::spawn(move || query_loop(&index, &data, args.ef, rate, &stop))
        };
        during();
        stop.store(true, Ordering::Relaxed);
        let mut lat = client.join().expect("query client");
        lat.sort();
        lat
    };
    let report = |phase: &str, lat: &[Duration], secs: f64, extra: serde_json::Value| {
        let mut row = json!({
            "kind": "compaction", "phase": phase, "queries": lat.len(), "seconds": secs,
            "shards": args.common.shards, "n": n, "hot": n - in_main,
            "compaction_threads": args.threads, "ef": args.ef, "load": args.load,
            "p50_us": percentile(lat, 0.5), "p95_us": percentile(lat, 0.95),
            "p99_us": percentile(lat, 0.99), "max_us": percentile(lat, 1.0),
        });
        if let (Some(row), serde_json::Value::Object(extra)) = (row.as_object_mut(), extra) {
            row.extend(extra);
        }
        println!("{row}");
    };
    let capacity = measure(None, &|| std::thread::sleep(Duration::from_secs(5)));
    let rate = (args.load > 0.0).then(|| capacity.len() as f64 / 5.0 * args.load);
    println!(
        "{}",
        json!({"kind": "compaction", "phase": "capacity", "qps": capacity.len() as f64 / 5.0,
               "load_qps": rate})
    );
    let idle_window = || {
        measure(rate, &|| {
            std::thread::sleep(Duration::from_secs(args.idle_secs))
        })
    };
    let before = idle_window();
    let started = Instant::now();
    let during = measure(rate, &|| {
        for shard in 0..args.common.shards {
            let record = index.compact(shard, CompactionReason::HotShare);
            assert!(matches!(record, Ok(Some(_))), "compaction failed");
        }
    });
    let took = started.elapsed().as_secs_f64();
    let after = idle_window();
    let mut idle: Vec<Duration> = before.iter().chain(&after).copied().collect();
    idle.sort();
    report(
        "idle",
        &idle,
        2.0 * args.idle_secs as f64,
        json!({"p99_before_us": percentile(&before, 0.99), "p99_after_us": percentile(&after, 0.99)}),
    );
    report("during_compaction", &during, took, json!({}));
    let stats = index.stats();
    if stats.iter().any(|s| s.hot_vectors != 0) {
        bail!("compaction left items in hot");
    }
    Ok(())
}

fn filtered(args: FilteredArgs) -> Result<()> {
    use embedstream_index_sink::Attributes;
    use embedstream_schemas::filter::{AttributeKind, Declared, parse};

    let data = Data::load(&args.common.data, true)?;
    let n = data.n();
    let buckets = std::fs::read(&args.buckets).context("buckets")?;
    if buckets.len() != n || buckets.iter().any(|&b| b >= 100) {
        bail!("--buckets must hold one byte below 100 per row ({n})");
    }
    let mut config = config(&args.common, data.dim, n);
    config.compaction.threads = args.build_threads;
    let started = Instant::now();
    let reused = {
        let index = ShardedIndex::open(&args.snapshot_dir, config.clone())?;
        let reused = index.len() == n && index.stats().iter().all(|s| s.hot_vectors == 0);
        if !reused {
            if !index.is_empty() {
                bail!(
                    "{} holds another index; remove it",
                    args.snapshot_dir.display()
                );
            }
            for (row, &b) in buckets.iter().enumerate() {
                index.apply(Upsert {
                    attributes: Attributes::new([
                        ("bucket".to_owned(), b.to_string()),
                        ("label".to_owned(), format!("l{b}")),
                    ]),
                    ..data.upsert(row)
                })?;
            }
            for shard in 0..index.stats().len() {
                index.compact(shard, CompactionReason::Manual)?;
            }
        }
        reused
    };
    println!(
        "{}",
        json!({
            "kind": "build", "n": n, "dim": data.dim, "shards": args.common.shards,
            "seconds": started.elapsed().as_secs_f64(), "loaded_from_snapshot": reused,
        })
    );
    let declared = Declared::from([
        ("bucket".to_owned(), AttributeKind::Number),
        ("label".to_owned(), AttributeKind::Keyword),
    ]);
    let ten: Vec<String> = (0..10).map(|b| format!("l{b}")).collect();
    let cases = [
        ("50%", json!({"attribute": "bucket", "lt": 50}), 50u8),
        ("10%", json!({"attribute": "label", "in": ten}), 10),
        ("1%", json!({"attribute": "label", "eq": "l0"}), 1),
    ];
    let pool = rayon::ThreadPoolBuilder::new().num_threads(1).build()?;
    for mode in &args.modes {
        let mut config = config.clone();
        config.main.filter_exact_max = match mode.as_str() {
            "auto" => config.main.filter_exact_max,
            "graph" => 0,
            "exact" => usize::MAX,
            other => bail!("unknown mode {other}"),
        };
        let index = ShardedIndex::open(&args.snapshot_dir, config)?;
        for (share, json, below) in &cases {
            let filter = parse(json, &declared)?;
            let matching: Vec<usize> = (0..n).filter(|&r| buckets[r] < *below).collect();
            let truth: Vec<Vec<usize>> = (0..data.nq())
                .map(|q| {
                    let query = data.query(q);
                    let mut scored: Vec<(f32, usize)> = matching
                        .iter()
                        .map(|&r| (embedstream_index_sink::dot(query, data.row(r)), r))
                        .collect();
                    scored.sort_by(|a, b| b.0.total_cmp(&a.0));
                    scored.into_iter().take(10).map(|(_, r)| r).collect()
                })
                .collect();
            for &ef in &args.efs {
                for pass in 0..2 {
                    let mut lat = Vec::with_capacity(data.nq());
                    let mut found = 0;
                    let total = Instant::now();
                    pool.install(|| -> Result<()> {
                        for (q, want) in truth.iter().enumerate() {
                            let t = Instant::now();
                            let hits = index.search(Query {
                                vector: data.query(q),
                                k: 10,
                                ef_search: Some(ef),
                                filter: Some(&filter),
                                hot_only: false,
                            })?;
                            lat.push(t.elapsed());
                            found += hits
                                .iter()
                                .filter_map(|h| h.item_id.strip_prefix('i')?.parse::<usize>().ok())
                                .filter(|r| want.contains(r))
                                .count();
                        }
                        Ok(())
                    })?;
                    if pass == 1 {
                        let secs = total.elapsed().as_secs_f64();
                        lat.sort();
                        println!(
                            "{}",
                            json!({
                                "kind": "filtered", "system": "embedstream", "mode": mode,
                                "selectivity": share, "matching": matching.len(), "ef": ef,
                                "recall10": found as f64 / (10 * data.nq()) as f64,
                                "qps": data.nq() as f64 / secs,
                                "p50_us": percentile(&lat, 0.5), "p95_us": percentile(&lat, 0.95),
                                "p99_us": percentile(&lat, 0.99),
                            })
                        );
                    }
                }
            }
        }
    }
    Ok(())
}

fn main() -> Result<()> {
    match Cli::parse().command {
        Command::Search(args) => search(args),
        Command::Compaction(args) => compaction(args),
        Command::Filtered(args) => filtered(args),
    }
}
