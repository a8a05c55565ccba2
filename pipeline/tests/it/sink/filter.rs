//! Filtered search end to end: records carrying attributes through the real topic into the
//! sink binary, queried with filters through the router (and the sink) and checked against an
//! exact filtered oracle, before and after items move from main to hot; bad filters refused
//! with their kind; an attribute declared in the followed consumers file without a restart.

use std::collections::HashMap;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::{Oracle, Put, Sink, config, free_port, produce, record, test_dir, unit_vector};
use crate::migrate::Killed;
use crate::stage::Platform;

const MINILM: &str = "minilm-l6-v2@1";
const SECTIONS: [&str; 4] = ["utils", "devel", "libs", "games"];

const CONSUMERS: &str = r#"
[consumers.exact]
ef_search = 1000
default_k = 10
max_k = 100

[consumers.search]
ef_search = 100
default_k = 10
max_k = 100

[attributes]
section = "keyword"
size = "number"
"#;

/// Item `i`'s attributes in round `round`: a section and a size that both change between
/// rounds, so a rewritten item moves in and out of every filter.
fn attributes(i: u64, round: u64) -> HashMap<String, String> {
    HashMap::from([
        (
            "section".to_owned(),
            SECTIONS[((i + round) % 4) as usize].to_owned(),
        ),
        ("size".to_owned(), ((i * 7 + round * 13) % 100).to_string()),
    ])
}

/// Which items a filter keeps, by their attributes.
type Keep = Box<dyn Fn(&HashMap<String, String>) -> bool>;

async fn post(client: &reqwest::Client, url: &str, body: &Value) -> (u16, Value) {
    let r = client.post(url).json(body).send().await.unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

/// The exact filtered top 10 for `query` among live items whose attributes `keep` accepts.
fn exact(
    oracle: &Oracle,
    attrs: &HashMap<String, HashMap<String, String>>,
    query: &[f32],
    keep: &dyn Fn(&HashMap<String, String>) -> bool,
) -> Vec<String> {
    let mut all: Vec<(String, f32)> = oracle
        .live()
        .filter(|(id, _, _)| keep(&attrs[*id]))
        .map(|(id, v, _)| (id.clone(), v.iter().zip(query).map(|(a, b)| a * b).sum()))
        .collect();
    all.sort_by(|a, b| b.1.total_cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    all.into_iter().take(10).map(|(id, _)| id).collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn filtered_search_through_the_router_is_exact_before_and_after_rewrites() {
    let platform = Platform::new("sink-filter");
    platform.ensure_topics().await;
    let dir = test_dir(&platform);
    let consumers = dir.join("consumers.toml");
    std::fs::write(&consumers, CONSUMERS).unwrap();
    let mut oracle = Oracle::default();
    let mut attrs: HashMap<String, HashMap<String, String>> = HashMap::new();

    let write = |i: u64, round: u64, attrs: &mut HashMap<String, HashMap<String, String>>| {
        let id = format!("item-{i}");
        let mut r = record(&id, unit_vector(i + 1000 * round));
        r.attributes = attributes(i, round);
        attrs.insert(id, r.attributes.clone());
        Put::Record(r)
    };
    let puts = (0..400).map(|i| write(i, 0, &mut attrs)).collect();
    produce(&platform, &mut oracle, puts).await;
    let consumers_arg = consumers.to_str().unwrap();
    let sink = Sink::start_with(
        &platform,
        &dir,
        &config(100, 0.5),
        "sink",
        &["--consumers-file", consumers_arg],
    )
    .await;
    sink.wait_caught_up(&platform, Duration::from_secs(30))
        .await;
    sink.wait_compactions(1, Duration::from_secs(30)).await;

    let router_port = free_port();
    let _router = Killed(
        Command::new(env!("CARGO_BIN_EXE_embedstream"))
            .arg("router")
            .args(platform.args())
            .args(["--consumers-file", consumers_arg])
            .args(["--listen", &format!("127.0.0.1:{router_port}")])
            .args(["--backend", &format!("{MINILM}={}", sink.url(""))])
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let router = format!("http://127.0.0.1:{router_port}/v1/search");
    let client = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while client
        .get(format!("http://127.0.0.1:{router_port}/v1/plans"))
        .send()
        .await
        .is_err()
    {
        assert!(Instant::now() < deadline, "the router never answered");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let plan = json!([{"model": MINILM, "weight": 1.0}]);

    let filters: Vec<(Value, Keep)> = vec![
        (
            json!({"attribute": "section", "eq": "utils"}),
            Box::new(|a| a["section"] == "utils"),
        ),
        (
            json!({"attribute": "section", "in": ["devel", "games"]}),
            Box::new(|a| a["section"] == "devel" || a["section"] == "games"),
        ),
        (
            json!({"attribute": "size", "gte": 10, "lt": 20}),
            Box::new(|a| (10..20).contains(&a["size"].parse::<u32>().unwrap())),
        ),
        (
            json!({"or": [
                {"and": [{"attribute": "section", "eq": "libs"}, {"attribute": "size", "lte": 30}]},
                {"attribute": "size", "eq": 99}
            ]}),
            Box::new(|a| {
                let size = a["size"].parse::<u32>().unwrap();
                a["section"] == "libs" && size <= 30 || size == 99
            }),
        ),
    ];
    let check = |oracle: &Oracle, attrs: &HashMap<String, HashMap<String, String>>, round: u64| {
        let queries: Vec<_> = (0..5)
            .map(|q| unit_vector(50_000 + q + 100 * round))
            .collect();
        let mut expected = Vec::new();
        for (filter, keep) in &filters {
            for q in &queries {
                let want = exact(oracle, attrs, q, keep.as_ref());
                assert_eq!(want.len(), 10, "the oracle finds 10 for {filter}");
                expected.push((filter.clone(), q.clone(), want));
            }
        }
        expected
    };
    for round in 0..2 {
        if round == 1 {
            // Rewrite a third of the items (now in main) with new vectors and attributes:
            // their main copies still carry the old attributes and must stay hidden.
            let puts = (0..400)
                .filter(|i| i % 3 == 0)
                .map(|i| write(i, 1, &mut attrs))
                .collect();
            produce(&platform, &mut oracle, puts).await;
            sink.wait_caught_up(&platform, Duration::from_secs(30))
                .await;
        }
        for (filter, q, want) in check(&oracle, &attrs, round) {
            let (status, body) = post(
                &client,
                &router,
                &json!({"consumer": "exact", "vector": q, "k": 10, "filter": filter, "plan": plan}),
            )
            .await;
            assert_eq!(status, 200, "{filter}: {body}");
            let got: Vec<&str> = body["results"]
                .as_array()
                .unwrap()
                .iter()
                .map(|h| h["item_id"].as_str().unwrap())
                .collect();
            assert_eq!(got, want, "round {round}, {filter}");
            // The sink answers the same filter itself.
            let (status, direct) = sink
                .search(json!({"consumer": "exact", "vector": q, "k": 10, "filter": filter}))
                .await;
            assert_eq!(status, 200, "{direct}");
            assert_eq!(direct["results"].as_array().unwrap().len(), 10);
        }
    }

    // Bad filters: one clear 400 of their kind, from the router and the sink alike.
    let q = unit_vector(7);
    for (filter, kind, says) in [
        (
            json!({"attribute": "color", "eq": "red"}),
            "undeclared_attribute",
            "section (keyword), size (number)",
        ),
        (
            json!({"attribute": "size", "eq": "big"}),
            "invalid_filter",
            "takes numbers",
        ),
        (
            json!({"attribute": "section", "gt": 3}),
            "invalid_filter",
            "ranges apply to number attributes",
        ),
        (json!({"and": []}), "invalid_filter", "non-empty array"),
        (json!("section = utils"), "invalid_filter", "a JSON object"),
    ] {
        let body = json!({"consumer": "exact", "vector": q, "filter": filter, "plan": plan});
        let (status, answer) = post(&client, &router, &body).await;
        assert_eq!(
            (status, answer["kind"].as_str()),
            (400, Some(kind)),
            "{filter}: {answer}"
        );
        assert!(answer["error"].as_str().unwrap().contains(says), "{answer}");
        let (status, answer) = sink
            .search(json!({"consumer": "exact", "vector": q, "filter": filter}))
            .await;
        assert_eq!(
            (status, answer["kind"].as_str()),
            (400, Some(kind)),
            "sink, {filter}: {answer}"
        );
    }

    // Declaring an attribute in the followed file takes effect without a restart.
    std::fs::write(&consumers, format!("{CONSUMERS}color = \"keyword\"\n")).unwrap();
    let body = json!({"consumer": "exact", "vector": q, "filter": {"attribute": "color", "eq": "red"}, "plan": plan});
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (status, answer) = post(&client, &router, &body).await;
        if status == 200 {
            assert_eq!(
                answer["results"],
                json!([]),
                "no item has a color: {answer}"
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "color was never declared: {answer}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    drop(sink);
}
