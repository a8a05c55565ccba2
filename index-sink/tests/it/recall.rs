//! HNSW recall against exact search on random normalized 384-d vectors (the hardest case
//! for a graph index: no cluster structure). Prints the build time and query latency; the
//! assertion is on recall only (timings are not test thresholds).

use std::time::Instant;

use embedstream_index_sink::{CompactionReason, Query, ShardedIndex};

use crate::common::*;

#[test]
fn hnsw_recall_at_10_is_at_least_0_95() {
    const N: usize = 2000;
    const DIM: usize = 384;
    let mut c = config(DIM, 1);
    c.main.ef_construction = 100;
    c.main.ef_search = 100;
    c.compaction.threads = 2;
    let index = ShardedIndex::new(c).unwrap();
    let mut rng = Rng::new(42);
    let mut oracle = Oracle::default();
    for i in 0..N {
        let w = upsert(&format!("item-{i:05}"), rng.unit(DIM), 0, i as i64);
        oracle.apply(&w);
        index.apply(w).unwrap();
    }
    let queries: Vec<_> = (0..100).map(|_| rng.unit(DIM)).collect();
    let started = Instant::now();
    for q in &queries[..20] {
        search(&index, q, 10);
    }
    let hot_latency = started.elapsed() / 20;
    let started = Instant::now();
    index.compact(0, CompactionReason::Manual).unwrap().unwrap();
    let build = started.elapsed();
    assert_eq!(index.stats()[0].main_vectors, N);
    let mut found = 0;
    let started = Instant::now();
    for q in &queries {
        let got = search(&index, q, 10);
        let want = oracle.search(q, 10);
        found += got
            .iter()
            .filter(|h| want.iter().any(|w| w.item_id == h.item_id))
            .count();
    }
    let main_latency = started.elapsed() / queries.len() as u32;
    let recall = found as f64 / (10 * queries.len()) as f64;
    // A narrow search must do worse: the recall measure is not vacuous.
    let mut narrow = 0;
    for q in &queries {
        let got = index
            .search(Query {
                vector: q,
                k: 10,
                ef_search: Some(10),
            })
            .unwrap();
        let want = oracle.search(q, 10);
        narrow += got
            .iter()
            .filter(|h| want.iter().any(|w| w.item_id == h.item_id))
            .count();
    }
    let narrow = narrow as f64 / (10 * queries.len()) as f64;
    println!(
        "N={N} dim={DIM}: build {build:?} (ef_construction 100, 2 threads); recall@10 {recall:.3} at ef 100, \
         {narrow:.3} at ef 10; query {main_latency:?} (main, ef 100) vs {hot_latency:?} (exact scan of hot)"
    );
    assert!(recall >= 0.95, "recall@10 = {recall}");
    assert!(
        narrow < recall,
        "ef 10 ({narrow}) should trail ef 100 ({recall})"
    );
}
