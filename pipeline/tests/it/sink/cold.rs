//! The cold tier on the real broker: items whose event time is past the hot window go to
//! memory-mapped segments at compaction; queries over every tier stay exact, `tier: hot`
//! answers from the recent items only; a kill -9 and restart maps the segments back, and
//! later updates and deletes of cold items win, and merges drop the replaced copies.

use std::time::Duration;

use serde_json::json;

use super::slices::{Router, ids};
use super::{
    Oracle, Put, Sink, assert_exact_search, assert_items, config, produce, record, test_dir,
    unit_vector,
};
use crate::stage::{Platform, kill9};

const WEEK_MS: i64 = 7 * 24 * 3600 * 1000;

/// A cold tier with a one-day window; compactions every 2 s while there is anything to
/// merge, so that the sink settles with everything merged.
/// A cold tier with a one-day hot window that moves aged items in batches of `min_move`.
fn cold_config(min_move: usize) -> String {
    let base = config(150, 0.08).replace("interval = \"1h\"", "interval = \"2s\"");
    format!("{base}\n[index.cold]\nenabled = true\nhot_window = \"1d\"\nmin_move = {min_move}\n")
}

fn sum(stats: &serde_json::Value, field: &str) -> u64 {
    let shards = stats["shards"].as_array().unwrap();
    shards.iter().map(|s| s[field].as_u64().unwrap()).sum()
}

/// Waits until every write is merged: hot parts and pending deletes empty, nothing compacting.
async fn wait_merged(sink: &Sink) -> serde_json::Value {
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    loop {
        let stats = sink.stats().await;
        let busy = stats["shards"]
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s["compacting"] == true);
        if !busy && sum(&stats, "hot_vectors") == 0 && sum(&stats, "pending_deletes") == 0 {
            return stats;
        }
        assert!(std::time::Instant::now() < deadline, "not merged: {stats}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// `id` with `seed`'s vector and an event time `age_ms` ago.
fn aged(id: &str, seed: u64, age_ms: i64) -> Put {
    let mut r = record(id, unit_vector(seed));
    r.event_time -= age_ms;
    Put::Record(r)
}

async fn hot_only(sink: &Sink, q: &[f32]) -> Vec<String> {
    let (status, body) = sink
        .search(json!({"consumer": "exact", "vector": q, "k": 10, "tier": "hot"}))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["tier"], "hot");
    let results = body["results"].as_array().unwrap();
    results
        .iter()
        .map(|r| r["item_id"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aged_items_go_cold_stay_exact_and_survive_a_kill_9() {
    let platform = Platform::new("sink-cold");
    platform.ensure_topics().await;
    let dir = test_dir(&platform);
    // First every aged item goes cold (batches of one: a compaction that began while the
    // topic was still being read leaves none behind); after the restart, batches of 50.
    let first = cold_config(1);
    let config = cold_config(50);
    let mut oracle = Oracle::default();
    // 400 items from last week, 400 from now.
    let puts = (0..800)
        .map(|i| aged(&format!("item-{i}"), i, if i < 400 { WEEK_MS } else { 0 }))
        .collect();
    produce(&platform, &mut oracle, puts).await;
    let mut sink = Sink::start(&platform, &dir, &first, "first").await;
    sink.wait_caught_up(&platform, Duration::from_secs(60))
        .await;
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    let stats = loop {
        let stats = wait_merged(&sink).await;
        if sum(&stats, "aged_vectors") == 0 {
            break stats;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "aged items stay in main: {stats}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(sum(&stats, "cold_vectors"), 400, "{stats}");
    assert_eq!(sum(&stats, "main_vectors"), 400, "{stats}");
    assert!(sum(&stats, "cold_bytes") > 400 * 384 * 4, "{stats}");
    assert_items(&sink, &oracle).await;
    assert_exact_search(&sink, &oracle, "exact", &[1, 2, 3, 4, 5]).await;
    // Hot only: the exact top 10 of the recent items.
    let mut recent = Oracle::default();
    for (id, (v, at)) in &oracle.items {
        let n: u64 = id.trim_start_matches("item-").parse().unwrap();
        if n >= 400 {
            recent.observe(id.clone(), v.clone(), *at);
        }
    }
    // The router passes the tier on: through it, the same answers.
    let consumers = dir.join("consumers.toml");
    std::fs::write(
        &consumers,
        "[consumers.exact]\nef_search = 1000\ndefault_k = 10\nmax_k = 100\n",
    )
    .unwrap();
    let router = Router::start(&platform, &consumers).await;
    router.wait_replicas(1).await;
    for seed in [11, 12, 13] {
        let q = unit_vector(seed);
        let want: Vec<String> = recent.top_k(&q, 10).into_iter().map(|x| x.0).collect();
        assert_eq!(hot_only(&sink, &q).await, want, "query {seed}");
        let body = json!({"consumer": "exact", "vector": q, "k": 10, "tier": "hot"});
        let (status, routed) = router.search_body(body).await;
        assert_eq!(status, 200, "{routed}");
        assert_eq!(ids(&routed), want, "query {seed} through the router");
        let all: Vec<String> = oracle.top_k(&q, 10).into_iter().map(|x| x.0).collect();
        let body = json!({"consumer": "exact", "vector": q, "k": 10});
        assert_eq!(ids(&router.search_body(body).await.1), all);
    }
    let body = json!({"consumer": "exact", "vector": unit_vector(1), "tier": "warm"});
    assert_eq!(router.search_body(body).await.0, 400);
    drop(router);

    kill9(&mut sink.child);
    // While it is down: cold items replaced (still old) and deleted, recent ones replaced.
    let mut puts = Vec::new();
    for i in (0..400).step_by(5) {
        puts.push(aged(&format!("item-{i}"), 10_000 + i, WEEK_MS));
    }
    for i in (1..400).step_by(9) {
        puts.push(Put::Tombstone(format!("item-{i}")));
    }
    for i in (400..800).step_by(7) {
        puts.push(aged(&format!("item-{i}"), 20_000 + i, 0));
    }
    produce(&platform, &mut oracle, puts).await;
    // Restarted with a consumers file that names a golden set: the recall self-check embeds
    // its queries with the version's model and measures them too.
    let golden = json!({"metric": "recall@k", "k": 10, "queries": [
        {"id": "q1", "text": "GNU Bourne Again SHell", "relevant": []},
        {"id": "q2", "text": "an image editor for photos", "relevant": []},
        {"id": "q3", "text": "lossless data compression", "relevant": []},
    ]});
    std::fs::write(dir.join("golden.json"), golden.to_string()).unwrap();
    let consumers_file = dir.join("consumers.toml");
    let with_golden = format!(
        "{}golden_set = \"golden.json\"\n",
        std::fs::read_to_string(&consumers_file).unwrap()
    );
    std::fs::write(&consumers_file, with_golden).unwrap();
    let args = ["--consumers-file", consumers_file.to_str().unwrap()];
    let sink = Sink::start_with(&platform, &dir, &config, "second", &args).await;
    sink.wait_caught_up(&platform, Duration::from_secs(60))
        .await;
    assert_items(&sink, &oracle).await;
    assert_exact_search(&sink, &oracle, "exact", &[6, 7, 8, 9]).await;
    // Merged: the replaced cold items in new segments, the deleted ones gone.
    let stats = wait_merged(&sink).await;
    let live_old = oracle
        .live()
        .filter(|(id, _, _)| id.trim_start_matches("item-").parse::<u64>().unwrap() < 400)
        .count();
    // Fewer than `min_move` (50) replaced old items per shard: they wait in main.
    let old_held = sum(&stats, "cold_vectors") + sum(&stats, "aged_vectors");
    assert_eq!(old_held as usize, live_old, "{stats}");
    assert_eq!(
        sum(&stats, "cold_hidden"),
        0,
        "merged segments drop hidden items: {stats}"
    );
    assert_items(&sink, &oracle).await;
    assert_exact_search(&sink, &oracle, "exact", &[10, 11]).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let stats = sink.stats().await;
        let golden: Vec<f64> = stats["shards"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|s| s["golden_recall_at_10"].as_f64())
            .collect();
        if golden.len() == 2 {
            assert!(golden.iter().all(|&r| r > 0.9), "{stats}");
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no golden recall measured: {stats}; log: {}",
            sink.log_text()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for i in (0..400).step_by(5).filter(|i| i % 9 != 1) {
        // The replaced cold item (not deleted after) is found with its new vector.
        let q = unit_vector(10_000 + i);
        let top = sink.top_k("exact", &q, 1).await;
        assert_eq!(top[0].0, format!("item-{i}"));
        assert!(top[0].1 > 0.999, "{top:?}");
    }
}
