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
                filter: None,
                hot_only: false,
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

/// Filtered search against exact filtered search on random vectors, at 50%, 10% and 1% of
/// the items matching, with both strategies taking part (the exact-scan limit is set so 10%
/// walks the graph and 1% scans), and with items rewritten after the build so that main's
/// old attributes are shadowed by hot's new ones.
#[test]
fn filtered_search_keeps_recall_at_50_10_and_1_percent_and_never_returns_a_non_match() {
    use embedstream_index_sink::{Attributes, Upsert, Write};
    use embedstream_schemas::filter::{AttributeKind, Declared, Filter, parse};
    use serde_json::json;

    const N: usize = 6000;
    const DIM: usize = 384;
    let mut c = config(DIM, 2);
    c.main.ef_construction = 100;
    c.compaction.threads = 2;
    c.main.filter_exact_max = 100;
    let index = ShardedIndex::new(c).unwrap();
    let mut rng = Rng::new(7);
    let write = |id: usize, v: Vec<f32>, bucket: u64, offset: i64| {
        Write::Upsert(Upsert {
            item_id: format!("item-{id:05}"),
            vector: v,
            partition: 0,
            offset,
            event_time_ms: 0,
            source: None,
            attributes: Attributes::new([
                ("bucket".to_owned(), bucket.to_string()),
                ("label".to_owned(), format!("l{bucket}")),
            ]),
        })
    };
    // The truth: every item's vector and bucket as last written.
    let mut items: Vec<(Vec<f32>, u64)> = Vec::new();
    for i in 0..N {
        let (v, b) = (rng.unit(DIM), rng.below(100));
        index.apply(write(i, v.clone(), b, i as i64)).unwrap();
        items.push((v, b));
    }
    for shard in 0..2 {
        index
            .compact(shard, CompactionReason::Manual)
            .unwrap()
            .unwrap();
    }
    // Rewrite 300 items after the build with a new bucket and vector (now in hot).
    for j in 0..300 {
        let i = rng.below(N as u64) as usize;
        let (v, b) = (rng.unit(DIM), rng.below(100));
        index.apply(write(i, v.clone(), b, (N + j) as i64)).unwrap();
        items[i] = (v, b);
    }
    let declared = Declared::from([
        ("bucket".to_owned(), AttributeKind::Number),
        ("label".to_owned(), AttributeKind::Keyword),
    ]);
    let labels = |n: u64| (0..n).map(|b| format!("l{b}")).collect::<Vec<_>>();
    let cases = [
        ("50%", json!({"attribute": "bucket", "lt": 50})),
        ("10%", json!({"attribute": "label", "in": labels(10)})),
        (
            "1%",
            json!({"and": [{"attribute": "bucket", "gte": 0}, {"attribute": "label", "eq": "l7"}]}),
        ),
    ];
    let queries: Vec<_> = (0..60).map(|_| rng.unit(DIM)).collect();
    for (share, json) in cases {
        let filter: Filter = parse(&json, &declared).unwrap();
        let matches = |b: u64| {
            let (bucket, label) = (b.to_string(), format!("l{b}"));
            filter.matches(&|name| match name {
                "bucket" => Some(bucket.as_str()),
                "label" => Some(label.as_str()),
                _ => None,
            })
        };
        let mut found = 0;
        let mut asked = 0;
        for q in &queries {
            let got = index
                .search(Query {
                    vector: q,
                    k: 10,
                    ef_search: Some(100),
                    filter: Some(&filter),
                    hot_only: false,
                })
                .unwrap();
            let mut want: Vec<(f32, usize)> = items
                .iter()
                .enumerate()
                .filter(|(_, (_, b))| matches(*b))
                .map(|(i, (v, _))| (embedstream_index_sink::dot(q, v), i))
                .collect();
            want.sort_by(|a, b| b.0.total_cmp(&a.0));
            want.truncate(10);
            for h in &got {
                let i: usize = h.item_id["item-".len()..].parse().unwrap();
                assert!(matches(items[i].1), "{share}: {} does not match", h.item_id);
            }
            asked += want.len();
            found += want
                .iter()
                .filter(|(_, i)| got.iter().any(|h| h.item_id == format!("item-{i:05}")))
                .count();
        }
        let recall = found as f64 / asked as f64;
        println!("filtered recall@10 at {share}: {recall:.3}");
        assert!(recall >= 0.95, "{share}: recall@10 = {recall}");
    }
}
