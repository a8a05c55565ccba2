//! A version past one process: sink binaries each holding one slice (or one replica of a
//! pool) announce themselves on the real broker, and the router binary finds them there,
//! scatters each query to one replica per slice and merges. Checked against the exact
//! oracle: four slices answer exactly; a killed slice is flagged in the answer, which is still
//! exact over the rest; a killed replica of a pinned consumer costs no query, and its standby
//! is promoted.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use embedstream_topics::slice::Slice;
use serde_json::{Value, json};

use super::{Oracle, Put, Sink, config, free_port, produce, record, test_dir, unit_vector};
use crate::migrate::Killed;
use crate::stage::Platform;

const MINILM: &str = "minilm-l6-v2@1";

const CONSUMERS: &str = r#"
[consumers.exact]
ef_search = 1000
default_k = 10
max_k = 100

[consumers.ads]
ef_search = 1000
default_k = 5
max_k = 50
pool = "ads"
"#;

pub(super) struct Router {
    /// The router process, when it is one of its own (not `up`'s).
    _process: Option<Killed>,
    port: u16,
    client: reqwest::Client,
}

impl Router {
    pub(super) async fn start(platform: &Platform, consumers: &Path) -> Self {
        let port = free_port();
        let process = Killed(
            Command::new(env!("CARGO_BIN_EXE_embedstream"))
                .arg("router")
                .args(platform.args())
                .arg("--consumers-file")
                .arg(consumers)
                .args(["--listen", &format!("127.0.0.1:{port}")])
                .env("RUST_LOG", "warn")
                .stdin(Stdio::null())
                .spawn()
                .unwrap(),
        );
        let mut router = Self::at(port);
        router._process = Some(process);
        router.wait_up(Duration::from_secs(30), String::new).await;
        router
    }

    /// The router at `port` (one it did not start).
    fn at(port: u16) -> Self {
        Self {
            _process: None,
            port,
            client: reqwest::Client::new(),
        }
    }

    /// Waits until it answers; `log` says why not.
    async fn wait_up(&self, timeout: Duration, log: impl Fn() -> String) {
        let deadline = Instant::now() + timeout;
        while self.client.get(self.url("/v1/plans")).send().await.is_err() {
            assert!(
                Instant::now() < deadline,
                "the router never answered: {}",
                log()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// `GET url` as JSON.
    async fn get_json(&self, url: &str) -> Value {
        self.client
            .get(url)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    async fn replicas(&self) -> Vec<Value> {
        serde_json::from_value(self.get_json(&self.url("/v1/slices")).await).unwrap()
    }

    /// Waits until the router knows `n` instances, each caught up and healthy.
    pub(super) async fn wait_replicas(&self, n: usize) -> Vec<Value> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let replicas = self.replicas().await;
            let up = replicas
                .iter()
                .filter(|r| r["ready"] == true && r["healthy"] == true)
                .count();
            if replicas.len() == n && up == n {
                return replicas;
            }
            assert!(
                Instant::now() < deadline,
                "the router never saw {n} healthy caught-up instances: {replicas:#?}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    async fn search(&self, consumer: &str, query: &[f32], k: usize) -> (u16, Value) {
        self.search_body(json!({"consumer": consumer, "vector": query, "k": k}))
            .await
    }

    /// A search of MiniLM alone with `body`'s fields.
    pub(super) async fn search_body(&self, mut body: Value) -> (u16, Value) {
        body["plan"] = json!([{"model": MINILM, "weight": 1.0}]);
        let r = self
            .client
            .post(self.url("/v1/search"))
            .json(&body)
            .send()
            .await;
        match r {
            Ok(r) => {
                let status = r.status().as_u16();
                (status, r.json().await.unwrap_or(Value::Null))
            }
            Err(e) => (0, json!({"error": e.to_string()})),
        }
    }
}

/// Queries asked in turn through the router, each checked against its exact answer: any
/// failed, partial or different answer is kept.
struct Probe {
    consumer: &'static str,
    k: usize,
    queries: Vec<Vec<f32>>,
    answers: Vec<Vec<String>>,
    asked: usize,
    wrong: Vec<String>,
}

impl Probe {
    /// `n` queries from `seed` on, with the exact top `k` of `oracle`.
    fn new(oracle: &Oracle, consumer: &'static str, k: usize, seed: u64, n: u64) -> Self {
        let queries: Vec<Vec<f32>> = (0..n).map(|s| unit_vector(seed + s)).collect();
        let answers = queries
            .iter()
            .map(|q| exact(oracle, q, k, |_| true))
            .collect();
        Self {
            consumer,
            k,
            queries,
            answers,
            asked: 0,
            wrong: Vec::new(),
        }
    }

    async fn ask(&mut self, router: &Router) {
        let i = self.asked % self.queries.len();
        self.asked += 1;
        let (status, body) = router.search(self.consumer, &self.queries[i], self.k).await;
        if status != 200 || body["partial"] != json!([]) || ids(&body) != self.answers[i] {
            self.wrong.push(format!("query {i}: {status} {body}"));
        }
    }

    fn assert_all_right(&self) {
        assert!(
            self.wrong.is_empty(),
            "{} of {} queries failed or were wrong: {:#?}",
            self.wrong.len(),
            self.asked,
            self.wrong
        );
    }
}

pub(super) fn ids(body: &Value) -> Vec<String> {
    body["results"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|r| r["item_id"].as_str().unwrap().to_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// The exact top k among live items `keep` accepts.
fn exact(oracle: &Oracle, query: &[f32], k: usize, keep: impl Fn(&str) -> bool) -> Vec<String> {
    let mut all: Vec<(String, f32)> = oracle
        .live()
        .filter(|(id, _, _)| keep(id))
        .map(|(id, v, _)| (id.clone(), v.iter().zip(query).map(|(a, b)| a * b).sum()))
        .collect();
    all.sort_by(|a, b| b.1.total_cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    all.into_iter().take(k).map(|(id, _)| id).collect()
}

/// A platform named `name` whose embedding topic holds `items` records (`item-<i>`), its
/// test folder with the consumers file, and the oracle of what the topic holds.
async fn setup(
    name: &str,
    items: u64,
) -> (Platform, std::path::PathBuf, std::path::PathBuf, Oracle) {
    let platform = Platform::new(name);
    platform.ensure_topics().await;
    let dir = test_dir(&platform);
    let consumers = dir.join("consumers.toml");
    std::fs::write(&consumers, CONSUMERS).unwrap();
    let mut oracle = Oracle::default();
    let puts = (0..items)
        .map(|i| Put::Record(record(&format!("item-{i}"), unit_vector(i))))
        .collect();
    produce(&platform, &mut oracle, puts).await;
    (platform, dir, consumers, oracle)
}

async fn start_sink(platform: &Platform, dir: &Path, name: &str, extra: &[&str]) -> Sink {
    let consumers = dir.join("consumers.toml");
    let mut args = vec!["--consumers-file", consumers.to_str().unwrap()];
    args.extend_from_slice(extra);
    Sink::start_with(platform, dir, &config(100, 0.5), name, &args).await
}

#[tokio::test(flavor = "multi_thread")]
async fn four_slices_answer_exactly_through_the_router_and_a_dead_slice_is_flagged() {
    let (platform, dir, consumers, mut oracle) = setup("sink-slices", 800).await;
    // Some items rewritten and some deleted: every slice applies its own items' history.
    let mut later: Vec<Put> = (0..100)
        .map(|i| Put::Record(record(&format!("item-{i}"), unit_vector(5_000 + i))))
        .collect();
    later.extend((700..760).map(|i| Put::Tombstone(format!("item-{i}"))));
    produce(&platform, &mut oracle, later).await;

    let mut sinks = Vec::new();
    for i in 0..4 {
        let (replica, slice) = (format!("s{i}"), format!("{i}/4"));
        let sink = start_sink(
            &platform,
            &dir,
            &format!("slice-{i}"),
            &["--replica", &replica, "--slice", &slice],
        )
        .await;
        sinks.push(sink);
    }
    let router = Router::start(&platform, &consumers).await;
    router.wait_replicas(4).await;

    // Each slice holds exactly its items, and together they hold every live item once.
    let mut total = 0;
    for (i, sink) in sinks.iter().enumerate() {
        let slice = Slice::new(i as u32, 4).unwrap();
        let want = oracle
            .live()
            .filter(|(id, _, _)| slice.contains(id))
            .count();
        let items = sink.stats().await["items"].as_u64().unwrap() as usize;
        assert_eq!(items, want, "slice {slice}");
        total += items;
    }
    assert_eq!(total, oracle.live_count());
    let versions = router.get_json(&router.url("/v1/versions")).await;
    assert_eq!(versions[MINILM]["items"], total as u64, "{versions}");
    let item = router.get_json(&router.url("/v1/items/item-5")).await;
    assert!(item[MINILM]["offset"].is_i64(), "{item}");

    for seed in 0..30 {
        let q = unit_vector(100_000 + seed);
        let (status, body) = router.search("exact", &q, 10).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["partial"], json!([]), "{body}");
        assert_eq!(ids(&body), exact(&oracle, &q, 10, |_| true), "query {seed}");
    }

    // Slice 2 dies: answers still come, say what they lack, and are exact over the rest.
    let dead = Slice::new(2, 4).unwrap();
    let killed = sinks.remove(2);
    drop(killed);
    for seed in 0..10 {
        let q = unit_vector(200_000 + seed);
        let (status, body) = router.search("exact", &q, 10).await;
        assert_eq!(status, 200, "{body}");
        let partial = body["partial"].as_array().unwrap();
        assert_eq!(partial.len(), 1, "{body}");
        assert!(partial[0].as_str().unwrap().contains("slice 2/4"), "{body}");
        assert_eq!(
            ids(&body),
            exact(&oracle, &q, 10, |id| !dead.contains(id)),
            "query {seed}"
        );
    }
    let metrics = router
        .client
        .get(router.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics
            .contains(r#"embedstream_router_queries_total{consumer="exact",result="partial"} 10"#),
        "{metrics}"
    );

    // Back from its snapshots and a replay: whole answers again.
    let back = start_sink(
        &platform,
        &dir,
        "slice-2-again",
        &["--replica", "s2", "--slice", "2/4"],
    )
    .await;
    sinks.insert(2, back);
    router.wait_replicas(4).await;
    for seed in 0..10 {
        let q = unit_vector(300_000 + seed);
        let (status, body) = router.search("exact", &q, 10).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["partial"], json!([]), "{body}");
        assert_eq!(ids(&body), exact(&oracle, &q, 10, |_| true), "query {seed}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_killed_replica_costs_no_query_and_the_standby_takes_over() {
    let (platform, dir, consumers, oracle) = setup("sink-failover", 300).await;

    // The ads pool: two primaries and a hot standby.
    let mut pool = Vec::new();
    for (replica, standby) in [("p1", false), ("p2", false), ("standby", true)] {
        let mut args = vec!["--replica", replica, "--pool", "ads"];
        if standby {
            args.push("--standby");
        }
        pool.push(start_sink(&platform, &dir, replica, &args).await);
    }
    let router = Router::start(&platform, &consumers).await;
    let replicas = router.wait_replicas(3).await;
    let serving: BTreeSet<String> = replicas
        .iter()
        .filter(|r| r["active"] == true)
        .map(|r| r["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(serving.len(), 2, "two primaries serve: {replicas:#?}");
    assert!(
        serving.iter().all(|id| !id.contains("standby")),
        "{serving:?}"
    );

    let mut probe = Probe::new(&oracle, "ads", 5, 400_000, 50);
    for _ in 0..50 {
        probe.ask(&router).await;
    }

    // kill -9 of a serving replica, under queries.
    let killed_at = Instant::now();
    pool[0].child.kill().unwrap();
    let _ = pool[0].child.wait();
    let mut recovered = None;
    while killed_at.elapsed() < Duration::from_secs(40) {
        probe.ask(&router).await;
        match recovered {
            None => {
                let replicas = router.replicas().await;
                let active: Vec<&Value> = replicas
                    .iter()
                    .filter(|r| r["active"] == true && r["healthy"] == true)
                    .collect();
                if active.len() == 2 && active.iter().any(|r| r["standby"] == true) {
                    recovered = Some(killed_at.elapsed());
                }
            }
            // Queries go on for 3 s after the promotion.
            Some(at) if killed_at.elapsed() > at + Duration::from_secs(3) => break,
            Some(_) => {}
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let recovered = recovered.expect("the standby was never promoted");
    eprintln!(
        "failover: two healthy replicas serve again {:.2} s after kill -9; {} queries, {} wrong or failed",
        recovered.as_secs_f64(),
        probe.asked,
        probe.wrong.len()
    );
    assert!(recovered < Duration::from_secs(30), "{recovered:?}");
    probe.assert_all_right();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_slice_splits_by_replay_while_queries_get_exact_answers_throughout() {
    let (platform, dir, consumers, oracle) = setup("sink-split", 600).await;
    let mut old = start_sink(
        &platform,
        &dir,
        "s0",
        &["--replica", "s0", "--slice", "0/2"],
    )
    .await;
    let _other = start_sink(
        &platform,
        &dir,
        "s1",
        &["--replica", "s1", "--slice", "1/2"],
    )
    .await;
    let router = Router::start(&platform, &consumers).await;
    router.wait_replicas(2).await;

    let mut probe = Probe::new(&oracle, "exact", 10, 500_000, 40);
    for _ in 0..40 {
        probe.ask(&router).await;
    }

    let (a, b) = (free_port(), free_port());
    let split_log = std::fs::File::create(dir.join("split.log")).unwrap();
    let _split = Killed(
        Command::new(env!("CARGO_BIN_EXE_embedstream"))
            .args(["slices", "split"])
            .args(platform.args())
            .arg("--consumers-file")
            .arg(&consumers)
            .args(["--model", MINILM, "--slice", "0/2", "--replica", "halves"])
            .args(["--listen", &format!("127.0.0.1:{a}")])
            .args(["--listen", &format!("127.0.0.1:{b}")])
            .arg("--data-dir")
            .arg(dir.join("data"))
            .arg("--config")
            .arg(dir.join("sink.toml"))
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(split_log.try_clone().unwrap())
            .stderr(split_log)
            .spawn()
            .unwrap(),
    );
    // Queries all along: before the halves catch up, at the switch, and after.
    let started = Instant::now();
    let switched = loop {
        probe.ask(&router).await;
        let replicas = router.replicas().await;
        let slices: BTreeSet<String> = replicas
            .iter()
            .filter(|r| r["active"] == true)
            .map(|r| r["slice"].as_str().unwrap().to_owned())
            .collect();
        if slices == BTreeSet::from(["0/4".to_owned(), "1/2".to_owned(), "2/4".to_owned()]) {
            break started.elapsed();
        }
        assert!(
            started.elapsed() < Duration::from_secs(90),
            "the split never switched: {replicas:#?}; log: {}",
            std::fs::read_to_string(dir.join("split.log")).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    // The retired instance stops by itself.
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        probe.ask(&router).await;
        if let Some(status) = old.child.try_wait().unwrap() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "the old slice's sink did not stop: {}",
            old.log_text()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(status.success(), "{status}: {}", old.log_text());
    for _ in 0..40 {
        probe.ask(&router).await;
    }
    eprintln!(
        "split: switched {:.1} s after start; {} queries, {} wrong or failed",
        switched.as_secs_f64(),
        probe.asked,
        probe.wrong.len()
    );
    probe.assert_all_right();
    // Each half holds exactly its items.
    for (port, slice) in [(a, "0/4"), (b, "2/4")] {
        let slice: Slice = slice.parse().unwrap();
        let stats = router
            .get_json(&format!("http://127.0.0.1:{port}/v1/stats"))
            .await;
        let want = oracle
            .live()
            .filter(|(id, _, _)| slice.contains(id))
            .count();
        assert_eq!(stats["items"].as_u64().unwrap() as usize, want, "{slice}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn up_serves_each_version_in_slices_and_the_router_merges_them() {
    // `up` keeps its data in the same test folder.
    let (platform, _, consumers, oracle) = setup("up-slices", 300).await;
    let up = crate::common::Up::start(
        &platform,
        &[
            "--slices",
            "3",
            "--drift-interval-secs",
            "0",
            "--consumers-file",
            consumers.to_str().unwrap(),
        ],
    );
    let router = Router::at(up.query);
    router.wait_up(Duration::from_secs(120), || up.log()).await;
    let replicas = router.wait_replicas(3).await;
    let slices: BTreeSet<&str> = replicas
        .iter()
        .map(|r| r["slice"].as_str().unwrap())
        .collect();
    assert_eq!(
        slices,
        BTreeSet::from(["0/3", "1/3", "2/3"]),
        "{replicas:#?}"
    );
    for seed in 0..10 {
        let q = unit_vector(600_000 + seed);
        let (status, body) = router.search("exact", &q, 10).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["partial"], json!([]), "{body}");
        assert_eq!(ids(&body), exact(&oracle, &q, 10, |_| true), "query {seed}");
    }
}
