//! Measures the index core on random normalized vectors (no cluster structure: the hardest
//! case for HNSW): main build time, recall@10 and latency per `ef`, exact hot-scan latency,
//! snapshot write and load time. A report tool, not a test.
//!
//! `cargo run --release -p embedstream-index-sink --example measure -- [N] [DIM] [THREADS]`

use std::time::{Duration, Instant};

use embedstream_index_sink::{
    CompactionReason, IndexConfig, Query, ShardedIndex, Upsert, dot, normalized,
};

fn main() -> anyhow::Result<()> {
    let arg = |i: usize, d: usize| {
        std::env::args()
            .nth(i)
            .and_then(|a| a.parse().ok())
            .unwrap_or(d)
    };
    let (n, dim, threads) = (arg(1, 5000), arg(2, 384), arg(3, 2));
    let mut rng = embedstream_topics::testing::XorShift::new(0x9e37_79b9_7f4a_7c15);
    let mut unit = || normalized(&rng.centered_vec(dim), dim).expect("non-zero");
    let data: Vec<Vec<f32>> = (0..n).map(|_| unit()).collect();
    let queries: Vec<Vec<f32>> = (0..200).map(|_| unit()).collect();
    let mut config = IndexConfig::with_dim(dim);
    config.shards = 1;
    config.compaction.threads = threads;
    let dir = std::env::temp_dir().join(format!("index-sink-measure-{}", std::process::id()));
    let index = ShardedIndex::open(&dir, config.clone())?;
    for (i, v) in data.iter().enumerate() {
        index.apply(Upsert {
            item_id: format!("item-{i:07}"),
            vector: v.clone(),
            partition: 0,
            offset: i as i64,
            event_time_ms: 0,
            source: None,
            attributes: Default::default(),
        })?;
    }
    let truth: Vec<Vec<String>> = queries
        .iter()
        .map(|q| {
            let mut all: Vec<(f32, usize)> = data
                .iter()
                .enumerate()
                .map(|(i, v)| (dot(q, v), i))
                .collect();
            all.sort_by(|a, b| b.0.total_cmp(&a.0));
            all[..10]
                .iter()
                .map(|&(_, i)| format!("item-{i:07}"))
                .collect()
        })
        .collect();
    let run = |index: &ShardedIndex, ef: Option<usize>| -> anyhow::Result<(f64, Duration)> {
        let started = Instant::now();
        let mut found = 0;
        for (q, want) in queries.iter().zip(&truth) {
            let hits = index.search(Query {
                vector: q,
                k: 10,
                ef_search: ef,
                filter: None,
                hot_only: false,
            })?;
            found += hits.iter().filter(|h| want.contains(&h.item_id)).count();
        }
        Ok((
            found as f64 / (10 * queries.len()) as f64,
            started.elapsed() / queries.len() as u32,
        ))
    };
    let (r, t) = run(&index, None)?;
    println!("N={n} dim={dim}: hot exact scan: recall@10 {r:.3}, {t:?}/query");
    let started = Instant::now();
    index.compact(0, CompactionReason::Manual)?;
    let stats = &index.stats()[0];
    let total = started.elapsed();
    let build = stats
        .last_compaction
        .as_ref()
        .map(|c| c.duration_ms)
        .unwrap_or(0);
    println!(
        "compaction ({threads} threads, ef_construction {}): build+swap {build} ms, with snapshot write {total:?}",
        config.main.ef_construction
    );
    for ef in [16, 32, 64, 100, 200] {
        let (r, t) = run(&index, Some(ef))?;
        println!("main ef={ef:>3}: recall@10 {r:.3}, {t:?}/query (1 thread)");
    }
    let size: u64 = std::fs::read_dir(&dir)?
        .map(|e| {
            e.map(|e| e.metadata().map(|m| m.len()).unwrap_or(0))
                .unwrap_or(0)
        })
        .sum();
    let started = Instant::now();
    let reopened = ShardedIndex::open(&dir, config)?;
    println!(
        "snapshot: {size} bytes; open (load + checks) {:?}",
        started.elapsed()
    );
    assert_eq!(run(&reopened, Some(100))?.0, run(&index, Some(100))?.0);
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}
