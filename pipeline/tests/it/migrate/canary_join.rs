//! The canary join job (`embedstream canary-join`, its own process) on the real broker:
//! exposures and feedback written as an application would (Avro through the registry, keyed by
//! request id), joined with duplicate, early, unattributable and late feedback; the online gate
//! recorded in the control log — PASSED for a canary no worse than control, REGRESSION for a
//! worse one, whose canary the job then ends — and the cutover it allows or refuses. A kill -9
//! and a restart replay the topics into the same tallies.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use embedstream_schemas::AvroRecord;
use embedstream_schemas::Codec;
use embedstream_schemas::records::{
    Exposure, ExposureArm, FeedbackEvent, FeedbackKind, OnlineVerdict,
};
use embedstream_topics::time::now_ms;
use rdkafka::producer::FutureRecord;
use tokio_util::sync::CancellationToken;

use super::*;
use crate::common::free_port;
use crate::stage::MINILM;

const CONSUMERS: &str = r#"
[consumers.search]
ef_search = 100
default_k = 10
max_k = 100
[consumers.search.canary]
margin = 0.2

[consumers.ads]
ef_search = 64
default_k = 5
max_k = 50
[consumers.ads.canary]
margin = 0.05

[consumers.recsys]
ef_search = 128
default_k = 50
max_k = 500

[consumers.dedup]
ef_search = 200
default_k = 1
max_k = 20
"#;

/// Encodes `records` and produces them keyed by request id, in order, all in flight at once
/// (as an application's client batches them).
async fn produce<T: AvroRecord>(p: &Platform, topic: &str, records: &[(String, T)]) {
    let codec = Codec::new(&p.registry);
    let producer = p.producer();
    let mut deliveries = Vec::new();
    for (key, r) in records {
        let bytes = codec.encode(topic, r).await.unwrap();
        deliveries.push(
            producer
                .send_result(FutureRecord::to(topic).key(key).payload(&bytes))
                .map_err(|(e, _)| e)
                .unwrap(),
        );
    }
    for d in deliveries {
        d.await.unwrap().map_err(|(e, _)| e).unwrap();
    }
}

fn exposure(consumer: &str, migration: &str, arm: ExposureArm, id: &str) -> (String, Exposure) {
    (
        id.to_owned(),
        Exposure {
            request_id: id.to_owned(),
            unit_id: format!("u-{id}"),
            consumer: consumer.to_owned(),
            arm,
            migration_id: migration.to_owned(),
            share: 0.5,
            models: vec![MINILM.to_owned()],
            items: vec!["a".to_owned(), "b".to_owned(), "c".to_owned()],
            served_at: now_ms(),
        },
    )
}

fn click(id: &str, item: &str) -> (String, FeedbackEvent) {
    (
        id.to_owned(),
        FeedbackEvent {
            request_id: id.to_owned(),
            item_id: item.to_owned(),
            kind: FeedbackKind::Click,
            value: 1.0,
            event_time: now_ms(),
        },
    )
}

struct Job {
    child: Child,
    port: u16,
}

impl Drop for Job {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_job(p: &Platform, consumers: &std::path::Path) -> Job {
    let port = free_port();
    let dir = std::env::temp_dir().join("embedstream-tests");
    std::fs::create_dir_all(&dir).unwrap();
    let log = std::fs::File::create(dir.join(format!("{}-canary-join.log", p.prefix))).unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_embedstream"))
        .arg("canary-join")
        .args(p.args())
        .args(["--consumers-file", consumers.to_str().unwrap()])
        .args([
            "--window-secs",
            "2",
            "--lateness-secs",
            "1",
            "--skew-ms",
            "500",
        ])
        .args(["--tick-ms", "200", "--record-secs", "0"])
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    Job { child, port }
}

/// The value of the series `name{labels…}` on the job's `/metrics`.
async fn metric(job: &Job, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let text = reqwest::get(format!("http://127.0.0.1:{}/metrics", job.port))
        .await
        .ok()?
        .text()
        .await
        .ok()?;
    text.lines().find_map(|line| {
        let (series, value) = line.rsplit_once(' ')?;
        let rest = series.strip_prefix(name)?;
        let matches = (rest.is_empty() || rest.starts_with('{'))
            && labels
                .iter()
                .all(|(k, v)| rest.contains(&format!("{k}=\"{v}\"")));
        matches.then(|| value.parse().ok()).flatten()
    })
}

/// A series and the value wanted: `(name, labels, value)`.
type Want<'a> = (&'a str, &'a [(&'a str, &'a str)], f64);

/// Waits until every `(name, labels, value)` holds on the job's `/metrics`.
async fn wait_metrics(job: &Job, want: &[Want<'_>], what: &str) {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let mut seen = Vec::new();
        for (name, labels, value) in want {
            seen.push(metric(job, name, labels).await);
            if seen.last() != Some(&Some(*value)) {
                break;
            }
        }
        if seen.len() == want.len() && seen.iter().zip(want).all(|(s, w)| *s == Some(w.2)) {
            return;
        }
        assert!(Instant::now() < deadline, "{what}: saw {seen:?}");
        sleep_ms(200).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_join_counts_feedback_once_and_the_online_gate_passes_a_good_canary_and_stops_a_bad_one()
 {
    let p = Platform::new("canary-join");
    p.ensure_topics().await;
    activate_minilm(&p).await;
    ok(&migrate(&p, &["start", "--from", MINILM, "--to", MPNET]));
    ok(&migrate(
        &p,
        &["canary", "--consumer", "search", "--share", "0.5"],
    ));
    ok(&migrate(
        &p,
        &["canary", "--consumer", "ads", "--share", "0.5"],
    ));
    let dir = std::env::temp_dir().join("embedstream-tests");
    std::fs::create_dir_all(&dir).unwrap();
    let consumers = dir.join(format!("{}-consumers.toml", p.prefix));
    std::fs::write(&consumers, CONSUMERS).unwrap();
    let token = CancellationToken::new();
    let log = control(&p, &token).await;
    let migration = current_migration_id(&log);
    let mut job = start_job(&p, &consumers);
    let (exposures, feedback) = (p.names.exposures(), p.names.feedback());
    let arms = [
        ("control", ExposureArm::Control),
        ("canary", ExposureArm::Canary),
    ];

    // Exposures that close before their feedback arrives: the feedback is late, not counted.
    let mut early_round = Vec::new();
    for (label, arm) in arms {
        for i in 0..50 {
            early_round.push(exposure(
                "search",
                &migration,
                arm,
                &format!("s-late-{label}-{i}"),
            ));
        }
    }
    // The job makes the topics when it starts.
    let deadline = Instant::now() + Duration::from_secs(60);
    while metric(
        &job,
        "embedstream_canary_verdict",
        &[("consumer", "search")],
    )
    .await
    .is_none()
    {
        assert!(Instant::now() < deadline, "the job never judged search");
        sleep_ms(200).await;
    }
    produce(&p, &exposures, &early_round).await;
    let exposed = "embedstream_canary_exposures";
    wait_metrics(
        &job,
        &[
            (exposed, &[("consumer", "search"), ("arm", "control")], 50.0),
            (exposed, &[("consumer", "search"), ("arm", "canary")], 50.0),
        ],
        "the first round's exposures never closed",
    )
    .await;
    let late: Vec<_> = early_round.iter().map(|(id, _)| click(id, "b")).collect();
    produce(&p, &feedback, &late).await;
    let dropped = "embedstream_canary_feedback_not_attributed";
    wait_metrics(
        &job,
        &[(dropped, &[("reason", "late")], 100.0)],
        "late feedback",
    )
    .await;

    // The second round, 300 exposures per arm and consumer. search: the same clicks in both
    // arms (3 in 10 clicked, each click sent twice; 1 in 10 clicked before its exposure was
    // written; 1 in 10 clicks an item the answer did not show). ads: control clicks 8 in 20,
    // canary 1 in 20.
    let (mut shown, mut before, mut after) = (Vec::new(), Vec::new(), Vec::new());
    for (label, arm) in arms {
        for i in 0..300 {
            let id = format!("s-{label}-{i}");
            shown.push(exposure("search", &migration, arm, &id));
            match i % 10 {
                0..=2 => after.extend([click(&id, "b"), click(&id, "b")]),
                3 => after.push(click(&id, "zzz")),
                4 => before.push(click(&id, "a")),
                _ => {}
            }
            let id = format!("a-{label}-{i}");
            shown.push(exposure("ads", &migration, arm, &id));
            let clicks = if arm == ExposureArm::Control { 8 } else { 1 };
            if i % 20 < clicks {
                after.push(click(&id, "c"));
            }
        }
    }
    produce(&p, &feedback, &before).await;
    produce(&p, &exposures, &shown).await;
    produce(&p, &feedback, &after).await;

    // ads: a regression, recorded, and the canary ended by the job.
    let deadline = Instant::now() + Duration::from_secs(120);
    let regression = loop {
        let state = log.state();
        if let Some(g) = state.online_gate(&migration, "ads")
            && g.online.as_ref().unwrap().verdict == OnlineVerdict::Regression
            && state.canary("ads").is_none()
        {
            break g.clone();
        }
        assert!(
            Instant::now() < deadline,
            "ads never regressed: {:?}",
            state.online_gate(&migration, "ads")
        );
        sleep_ms(200).await;
    };
    assert_eq!(regression.metric, "online:click");
    assert!(regression.ci_high < -0.05, "{regression:?}");

    // search: passed, with every click counted once (late and unattributed ones not at all).
    let want = 120.0 / 350.0;
    let deadline = Instant::now() + Duration::from_secs(120);
    let passed = loop {
        let state = log.state();
        if let Some(g) = state.online_gate(&migration, "search")
            && g.online.as_ref().unwrap().verdict == OnlineVerdict::Passed
            && g.online.as_ref().unwrap().canary_exposures == 350
            && g.online.as_ref().unwrap().control_exposures == 350
        {
            break g.clone();
        }
        assert!(
            Instant::now() < deadline,
            "search never passed: {:?}",
            state.online_gate(&migration, "search")
        );
        sleep_ms(200).await;
    };
    assert!((passed.old_value - want).abs() < 1e-12, "{passed:?}");
    assert!((passed.new_value - want).abs() < 1e-12, "{passed:?}");
    assert!(passed.ci_low > -0.2, "{passed:?}");
    let o = passed.online.as_ref().unwrap();
    assert!(o.required_exposures.unwrap() <= 350, "{o:?}");
    wait_metrics(
        &job,
        &[
            (dropped, &[("reason", "late")], 100.0),
            (dropped, &[("reason", "unattributed")], 60.0),
        ],
        "late and unattributed feedback",
    )
    .await;

    // kill -9 and a restart: the topics replay into the same tallies.
    let _ = job.child.kill();
    let _ = job.child.wait();
    let job = start_job(&p, &consumers);
    wait_metrics(
        &job,
        &[
            (
                exposed,
                &[("consumer", "search"), ("arm", "control")],
                350.0,
            ),
            (exposed, &[("consumer", "search"), ("arm", "canary")], 350.0),
            (dropped, &[("reason", "late")], 100.0),
            (dropped, &[("reason", "unattributed")], 60.0),
            (
                "embedstream_canary_verdict",
                &[("consumer", "search"), ("verdict", "passed")],
                1.0,
            ),
        ],
        "the replay after kill -9",
    )
    .await;
    let mean = metric(
        &job,
        "embedstream_canary_metric_mean",
        &[("consumer", "search"), ("arm", "canary")],
    )
    .await
    .unwrap();
    assert!((mean - want).abs() < 1e-9, "{mean}");

    // The cutover: search's online gate passed (with its offline gate); ads's stopped it.
    embedstream_pipeline::migrate::Migrator::new(
        log.clone(),
        embedstream_schemas::consumers::default_consumer_names(),
        "test",
    )
    .record_gates(
        ["search", "ads"]
            .map(|c| embedstream_schemas::records::GateResult {
                migration_id: migration.clone(),
                consumer: c.to_owned(),
                metric: "recall@10".to_owned(),
                old_value: 0.80,
                new_value: 0.81,
                ci_low: -0.01,
                ci_high: 0.03,
                coverage: 1.0,
                passed: true,
                queries: 500,
                adapter: None,
                fuse: None,
                online: None,
            })
            .to_vec(),
    )
    .await
    .unwrap();
    ok(&migrate(&p, &["cutover", "--consumer", "search"]));
    let refused = migrate(&p, &["cutover", "--consumer", "ads"]);
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        !refused.status.success() && stderr.contains("Regression"),
        "{stderr}"
    );
    ok(&migrate(&p, &["cutover", "--consumer", "ads", "--force"]));
    let deadline = Instant::now() + Duration::from_secs(30);
    while !log.state().plan("ads").is_some_and(|pl| pl.forced) {
        assert!(
            Instant::now() < deadline,
            "the forced cutover was not recorded"
        );
        sleep_ms(100).await;
    }
    token.cancel();
}
