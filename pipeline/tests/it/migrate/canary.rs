//! A request-level canary on the running platform (`up`), set and ended by `migrate canary`
//! as a separate process: each unit stays in its arm, canary answers come from the new version
//! and control answers from the old one, every answer under the canary lands in the
//! `exposures` topic (Avro through the registry, keyed by request id) with what it showed, and
//! ending the canary — `--share 0` or a rollback — is one control record.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use embedstream_schemas::Codec;
use embedstream_schemas::records::{Exposure, ExposureArm};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use super::*;
use crate::common::Up;
use crate::stage::{MINILM, upsert};

async fn ask(client: &reqwest::Client, url: &str, unit: &str, n: usize) -> Value {
    let body = json!({"consumer": "search", "text": "an editor for photos", "k": 3,
                      "unit_id": unit, "request_id": format!("{unit}/{n}")});
    let r = client.post(url).json(&body).send().await.unwrap();
    assert_eq!(r.status(), 200);
    r.json().await.unwrap()
}

async fn exposures(p: &Platform) -> Vec<Exposure> {
    let codec = Codec::new(&p.registry);
    let mut out = Vec::new();
    for (key, value, _, _) in p.read_all(&p.names.exposures()) {
        let e: Exposure = codec.decode(&value.unwrap()).await.unwrap();
        assert_eq!(key.as_deref(), Some(e.request_id.as_bytes()));
        out.push(e);
    }
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn a_canary_keeps_units_in_their_arm_logs_exposures_and_ends_in_one_record() {
    let p = Platform::new("canary");
    p.ensure_topics().await;
    activate_minilm(&p).await;
    ok(&migrate(&p, &["start", "--from", MINILM, "--to", MPNET]));
    let up = Up::start(&p, &["--drift-interval-secs", "0"]);
    let items: Vec<_> = (0..12)
        .map(|i| {
            upsert(
                &format!("pkg:{i}"),
                &format!("Program number {i} for editing photos"),
            )
        })
        .collect();
    p.produce_events(&items).await;
    let client = reqwest::Client::new();
    let url = format!("http://127.0.0.1:{}/v1/search", up.query);
    let status = format!("http://127.0.0.1:{}/v1/status", up.query);

    // Both versions searchable with every item.
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let ready = match client.get(&status).send().await {
            Ok(r) if r.status().is_success() => {
                let v: Value = r.json().await.unwrap_or_default();
                v["versions"]
                    .as_array()
                    .is_some_and(|vs| vs.len() == 2 && vs.iter().all(|v| v["sink"]["items"] == 12))
            }
            _ => false,
        };
        if ready {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "both versions never served 12 items:\n{}",
            up.log()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    // Each version's first text query loads its model in the sink: done before the canary,
    // so that its answers are timed like any other.
    for model in [MINILM, MPNET] {
        let body = json!({"consumer": "search", "text": "warming up", "k": 1,
                          "plan": [{"model": model, "weight": 1.0}]});
        let deadline = Instant::now() + Duration::from_secs(120);
        while client
            .post(&url)
            .json(&body)
            .send()
            .await
            .map_or(0, |r| r.status().as_u16())
            != 200
        {
            assert!(
                Instant::now() < deadline,
                "{model} never answered a text query:\n{}",
                up.log()
            );
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    let wrote = ok(&migrate(
        &p,
        &["canary", "--consumer", "search", "--share", "0.5"],
    ));
    assert!(wrote.contains("plan/search"), "{wrote}");
    let refused = migrate(&p, &["canary", "--consumer", "search", "--share", "1.5"]);
    assert!(!refused.status.success());
    let token = CancellationToken::new();
    let log = control(&p, &token).await;
    let split = log
        .state()
        .canary("search")
        .cloned()
        .expect("the canary is in the log");

    // The router follows the log: wait until a canary unit is answered by the new version.
    let units: Vec<String> = (0..40).map(|u| format!("user-{u}")).collect();
    let in_canary = |u: &str| {
        embedstream_schemas::control::canary_arm(&split, "search", u)
            == embedstream_schemas::control::Arm::Canary
    };
    let first = units.iter().find(|u| in_canary(u)).unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while ask(&client, &url, first, 0).await["arm"] != "canary" {
        assert!(
            Instant::now() < deadline,
            "the router never read the canary"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let mut served = HashMap::new();
    for u in &units {
        let want = if in_canary(u) {
            ("canary", MPNET)
        } else {
            ("control", MINILM)
        };
        for n in 1..=3 {
            let body = ask(&client, &url, u, n).await;
            assert_eq!(body["arm"], want.0, "{u}: {body}");
            let results = body["results"].as_array().unwrap();
            assert_eq!(results.len(), 3, "{body}");
            assert!(
                results.iter().all(|r| r["model_version"] == want.1),
                "{u}: {body}"
            );
            let shown: Vec<String> = results
                .iter()
                .map(|r| r["item_id"].as_str().unwrap().to_owned())
                .collect();
            served.insert(format!("{u}/{n}"), (u.clone(), want, shown));
        }
    }
    let canary_units = units.iter().filter(|u| in_canary(u)).count();
    assert!(
        (8..=32).contains(&canary_units),
        "{canary_units} of 40 units in a 50% canary"
    );

    // Every answer is in the exposures topic, as served.
    let deadline = Instant::now() + Duration::from_secs(60);
    let logged = loop {
        let logged: Vec<Exposure> = exposures(&p)
            .await
            .into_iter()
            .filter(|e| served.contains_key(&e.request_id))
            .collect();
        if logged.len() >= served.len() {
            break logged;
        }
        assert!(
            Instant::now() < deadline,
            "{} of {} exposures:\n{}",
            logged.len(),
            served.len(),
            up.log()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    assert_eq!(logged.len(), served.len(), "each answer once");
    for e in &logged {
        let (unit, (arm, model), shown) = &served[&e.request_id];
        assert_eq!(&e.unit_id, unit);
        let want = if *arm == "canary" {
            ExposureArm::Canary
        } else {
            ExposureArm::Control
        };
        assert_eq!(e.arm, want);
        assert_eq!(e.models, vec![(*model).to_owned()]);
        assert_eq!(&e.items, shown);
        assert_eq!(
            (e.migration_id.as_str(), e.share),
            (split.salt.as_str(), 0.5)
        );
    }

    // Share 0 ends it: one record, and every unit is back in control.
    let out = ok(&migrate(
        &p,
        &["canary", "--consumer", "search", "--share", "0"],
    ));
    assert_eq!(out.lines().count(), 1, "one record: {out}");
    let deadline = Instant::now() + Duration::from_secs(30);
    while ask(&client, &url, first, 9).await["arm"] != "control" {
        assert!(
            Instant::now() < deadline,
            "the router never left the canary"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for u in &units {
        let body = ask(&client, &url, u, 10).await;
        assert_eq!(body["arm"], "control", "{body}");
        assert_eq!(body["results"][0]["model_version"], MINILM);
    }

    // A rollback ends a canary in the one record that restores the plan.
    ok(&migrate(
        &p,
        &["canary", "--consumer", "search", "--share", "0.2"],
    ));
    let out = ok(&migrate(&p, &["rollback", "--consumer", "search"]));
    let plans = out.lines().filter(|l| l.contains("plan/")).count();
    assert_eq!(plans, 1, "{out}");
    let fresh = control(&p, &token).await;
    assert!(fresh.state().canary("search").is_none());
    token.cancel();
}
