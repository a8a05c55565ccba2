//! The operator commands as separate processes see them: the gate refuses a cutover, `--force`
//! is recorded, rollback restores the saved plan in one record, decommission refuses while a
//! consumer still reads both versions; the admin API wants its bearer token.

use embedstream_pipeline::migrate::Migrator;
use embedstream_router::admin;
use embedstream_schemas::consumers::default_consumer_names as default_consumers;
use embedstream_schemas::records::{GateResult, ReadPlanEntry};
use tokio_util::sync::CancellationToken;

use super::*;
use crate::common::free_port;
use crate::stage::{MINILM, Platform};

fn err(out: &std::process::Output) -> String {
    assert!(!out.status.success(), "expected a refusal");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn plan(entries: &[ReadPlanEntry]) -> Vec<(String, f64)> {
    entries
        .iter()
        .map(|e| (e.model.clone(), e.weight))
        .collect()
}

fn failing_gate(migration: &str, consumer: &str) -> GateResult {
    GateResult {
        migration_id: migration.to_owned(),
        consumer: consumer.to_owned(),
        metric: "recall@10".to_owned(),
        old_value: 0.80,
        new_value: 0.74,
        ci_low: -0.09,
        ci_high: -0.03,
        coverage: 1.0,
        passed: false,
        queries: 500,
        adapter: None,
        fuse: None,
        online: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gate_refuses_force_is_recorded_and_rollback_restores_the_plan() {
    let p = Platform::new("migrate-gate");
    p.ensure_topics().await;
    activate_minilm(&p).await;
    ok(&migrate(&p, &["start", "--from", MINILM, "--to", MPNET]));
    let again = err(&migrate(&p, &["start", "--from", MINILM, "--to", MPNET]));
    assert!(again.contains("decommission it first"), "{again}");

    let refused = err(&migrate(&p, &["cutover", "--consumer", "search"]));
    assert!(refused.contains("no gate result"), "{refused}");

    let token = CancellationToken::new();
    let log = control(&p, &token).await;
    let id = log
        .state()
        .current_migration()
        .unwrap()
        .migration_id
        .clone();
    Migrator::new(log.clone(), default_consumers(), "test")
        .record_gates(vec![failing_gate(&id, "search")])
        .await
        .unwrap();
    let refused = err(&migrate(&p, &["cutover", "--consumer", "search"]));
    assert!(
        refused.contains("refused by the gate") && refused.contains("below 0"),
        "{refused}"
    );
    ok(&migrate(
        &p,
        &["weight", "--consumer", "ads", "--new", "0.5"],
    ));
    ok(&migrate(
        &p,
        &["cutover", "--consumer", "search", "--force"],
    ));

    // A process started now reads the same state.
    let fresh = control(&p, &token).await;
    let s = fresh.state();
    let search = s.plan("search").unwrap();
    assert!(search.forced, "the override is in the control log");
    assert_eq!(plan(&search.entries), [(MPNET.to_owned(), 1.0)]);
    assert_eq!(
        plan(&s.plan("ads").unwrap().entries),
        [(MINILM.to_owned(), 0.5), (MPNET.to_owned(), 0.5)]
    );
    let before = s.applied;

    let out = ok(&migrate(&p, &["rollback", "--consumer", "search"]));
    assert_eq!(out.lines().count(), 1, "one record: {out}");
    let fresh = control(&p, &token).await;
    let s = fresh.state();
    assert_eq!(s.applied, before + 1);
    assert_eq!(
        plan(&s.plan("search").unwrap().entries),
        [(MINILM.to_owned(), 1.0)]
    );
    assert!(!s.plan("search").unwrap().forced);
    assert_eq!(
        plan(&s.plan("ads").unwrap().entries),
        [(MINILM.to_owned(), 0.5), (MPNET.to_owned(), 0.5)],
        "other consumers are untouched"
    );
    assert_eq!(
        s.active_models().len(),
        2,
        "both versions are still written"
    );

    let refused = err(&migrate(&p, &["decommission"]));
    assert!(refused.contains("read both versions"), "{refused}");
    ok(&migrate(&p, &["rollback"]));
    ok(&migrate(&p, &["decommission"]));
    let s = control(&p, &token).await.state();
    let active: Vec<_> = s
        .active_models()
        .iter()
        .map(|m| m.model_id.clone())
        .collect();
    assert_eq!(active, ["minilm-l6-v2"], "the abandoned version is retired");
    assert!(s.current_migration().is_none());
    token.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_actions_need_the_bearer_token() {
    let p = Platform::new("migrate-admin");
    p.ensure_topics().await;
    activate_minilm(&p).await;
    let token = CancellationToken::new();
    let log = control(&p, &token).await;
    let app = admin::router(
        std::sync::Arc::new(Migrator::new(log.clone(), default_consumers(), "admin-api")),
        Some("s3cret".to_owned()),
    );
    let port = free_port();
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .unwrap();
    let stop = token.clone();
    tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(stop.cancelled_owned())
            .await
    });
    let url = format!("http://127.0.0.1:{port}");
    let client = reqwest::Client::new();
    let status_url = format!("{url}/admin/v1/migration/status");
    let r = client.get(&status_url).send().await.unwrap();
    assert_eq!(r.status(), 401);
    let r = client
        .get(&status_url)
        .bearer_auth("wrong")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let r = client
        .post(format!("{url}/admin/v1/migration/start"))
        .json(&serde_json::json!({"from": MINILM, "to": MPNET}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401, "no token, no action");
    assert!(log.state().current_migration().is_none());

    // The CLI through the API.
    let cli = |args: &[&str], token: &str| {
        std::process::Command::new(env!("CARGO_BIN_EXE_embedstream"))
            .arg("migrate")
            .args(args)
            .args(["--admin-url", &url, "--token", token])
            .env("NO_COLOR", "1")
            .output()
            .unwrap()
    };
    ok(&cli(&["start", "--from", MINILM, "--to", MPNET], "s3cret"));
    let refused = cli(&["weight", "--consumer", "ads", "--new", "0.3"], "nope");
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("401"));
    ok(&cli(
        &["weight", "--consumer", "ads", "--new", "0.3"],
        "s3cret",
    ));
    let conflict = cli(&["cutover", "--consumer", "ads"], "s3cret");
    let stderr = String::from_utf8_lossy(&conflict.stderr);
    assert!(
        stderr.contains("409") && stderr.contains("no gate result"),
        "{stderr}"
    );

    let s = control(&p, &token).await.state();
    assert_eq!(
        plan(&s.plan("ads").unwrap().entries),
        [(MINILM.to_owned(), 0.7), (MPNET.to_owned(), 0.3)]
    );
    assert_eq!(s.current_migration().unwrap().from_model, MINILM);
    token.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_undecodable_control_record_halts_every_follower_at_it() {
    let p = Platform::new("control-halt");
    let token = CancellationToken::new();
    let running = control(&p, &token).await;
    activate_minilm(&p).await;
    let mut view = running.subscribe();
    let before = view
        .wait_for(|v| v.state.models().next().is_some())
        .await
        .unwrap()
        .next_offset;

    // A record no process can decode (no registry framing), appended as any writer could.
    let topic = p.names.control();
    p.producer()
        .send(
            rdkafka::producer::FutureRecord::<[u8], [u8]>::to(&topic)
                .partition(0)
                .key(b"model/minilm-l6-v2@1")
                .payload(b"not an avro record"),
            std::time::Duration::from_secs(30),
        )
        .await
        .map_err(|(e, _)| e)
        .unwrap();

    // The running follower halts at it and keeps the state before it.
    let halted = tokio::time::timeout(
        std::time::Duration::from_secs(60),
        view.wait_for(|v| v.halted.is_some()),
    )
    .await
    .expect("the follower halts at the record")
    .unwrap()
    .clone();
    assert_eq!(halted.next_offset, before, "halted at the bad record");
    assert!(
        halted
            .halted
            .as_deref()
            .unwrap()
            .contains("cannot be decoded")
    );
    let model = running
        .state()
        .models()
        .next()
        .cloned()
        .expect("state kept");
    assert_eq!(
        model.state,
        embedstream_schemas::records::ModelState::Active
    );

    // Writing through it fails with the reason, and a process starting now refuses to start.
    let spec = embedstream_topics::catalog::lookup(&MINILM.parse().unwrap()).unwrap();
    let refused = running
        .set_model_state(
            &spec,
            embedstream_schemas::records::ModelState::Retired,
            "test",
        )
        .await
        .expect_err("a write behind a halted record cannot be applied");
    assert!(
        refused.to_string().contains("halted at offset"),
        "{refused}"
    );
    let starting = embedstream_pipeline::control::ControlLog::open(
        &p.kafka,
        embedstream_schemas::Codec::new(&p.registry),
        &topic,
        token.clone(),
    )
    .await
    .expect_err("a new process stops at the record too");
    assert!(
        starting
            .to_string()
            .contains(&format!("halted at offset {before}")),
        "{starting}"
    );
    token.cancel();
}

/// A follower whose broker froze for longer than the broker's session timeout (the single
/// broker is fenced and the log's partition is leaderless for a moment): it still applies
/// the records written after the thaw, by replacing its consumer when that stops fetching.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_applies_records_written_after_its_broker_froze_and_thawed() {
    let stack = crate::common::OwnStack::start("control-frozen").await;
    let p = Platform::on(&stack.bootstrap, &stack.registry, "control-frozen");
    p.ensure_topics().await;
    activate_minilm(&p).await;
    let token = CancellationToken::new();
    let follower = control(&p, &token).await;
    let before = follower.subscribe().borrow().next_offset;
    stack.stop_broker();
    tokio::time::sleep(Duration::from_secs(12)).await;
    stack.continue_broker();
    // A writer of its own, started after the thaw.
    let spec = embedstream_topics::catalog::lookup(&super::MPNET.parse().unwrap()).unwrap();
    let writer_token = CancellationToken::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    let writer = loop {
        match ControlLog::open(
            &p.kafka,
            Codec::new(&p.registry),
            &p.names.control(),
            writer_token.clone(),
        )
        .await
        {
            Ok(log) => break log,
            Err(e) => {
                assert!(
                    std::time::Instant::now() < deadline,
                    "no writer after the thaw: {e}"
                );
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    };
    writer
        .set_model_state(
            &spec,
            embedstream_schemas::records::ModelState::Registered,
            "test",
        )
        .await
        .unwrap();
    let written = writer.subscribe().borrow().next_offset;
    assert!(written > before);
    let mut view = follower.subscribe();
    let applied = tokio::time::timeout(
        Duration::from_secs(90),
        view.wait_for(|v| v.next_offset >= written),
    )
    .await;
    assert!(
        applied.is_ok(),
        "the follower stayed at offset {} of {written} after the thaw",
        follower.subscribe().borrow().next_offset
    );
    assert!(
        follower
            .state()
            .models()
            .any(|m| m.model_id == spec.model.id),
        "the record written after the thaw is applied"
    );
    writer_token.cancel();
    token.cancel();
}
