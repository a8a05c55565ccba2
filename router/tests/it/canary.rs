//! A consumer's request-level canary in the router: arms drawn per unit, sticky, near the
//! share; every answer names its arm and request id; each answer under the canary is handed to
//! the exposure log with what it showed; a request with its own plan is outside the
//! experiment; ending the canary (one control record) puts every unit back in control.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use embedstream_router::{Backends, Blend, ExposureLog, RouterConfig, StatusFeed};
use embedstream_schemas::consumers::Consumers;
use embedstream_schemas::control::{Arm, ControlState, canary_arm, key_of};
use embedstream_schemas::records::{
    CanarySplit, ControlKind, ControlRecord, ExposureArm, ReadPlan, ReadPlanEntry,
};
use serde_json::json;
use tokio_util::sync::CancellationToken;

use super::{ITEMS, MINILM, free_addr, search, serve, sink, vector};

const SHARE: f64 = 0.3;

fn entries() -> Vec<ReadPlanEntry> {
    vec![ReadPlanEntry {
        model: MINILM.to_owned(),
        weight: 1.0,
        adapter: None,
        fuse: None,
    }]
}

fn split() -> CanarySplit {
    CanarySplit {
        share: SHARE,
        entries: entries(),
        salt: "m1".to_owned(),
        started_at: 1,
    }
}

/// The `search` consumer's plan, with `canary`.
fn state(canary: Option<CanarySplit>) -> Arc<ControlState> {
    let record = ControlRecord {
        kind: ControlKind::ReadPlan,
        model: None,
        migration: None,
        read_plan: Some(ReadPlan {
            consumer: "search".to_owned(),
            entries: entries(),
            forced: false,
            previous: Vec::new(),
            canary,
        }),
        gate: None,
        backfill: None,
        updated_at: 1,
        updated_by: "test".to_owned(),
    };
    let mut s = ControlState::default();
    s.apply(&key_of(&record).unwrap(), Some(record)).unwrap();
    Arc::new(s)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_canary_draws_sticky_arms_per_unit_and_logs_every_answer_it_serves() {
    let shutdown = CancellationToken::new();
    let sink = sink(&shutdown).await;
    let (log, mut exposures) = ExposureLog::channel(10_000);
    let config = RouterConfig {
        listen: free_addr(),
        backends: Backends::from(BTreeMap::from([(MINILM.to_owned(), sink.url.clone())])),
        blend: Blend::Rrf,
        consumers: Consumers::default(),
        timeout: Duration::from_secs(2),
        status: StatusFeed::new(),
        api_keys: None,
        tls: None,
        trust_pem: None,
        query_log: None,
        exposure_log: Some(log),
    };
    let (plans_tx, plans) = tokio::sync::watch::channel(state(Some(split())));
    let router = serve(config, plans, (), &shutdown, None).await;

    // 300 units, two requests each: the same arm both times, the one the hash draws.
    let mut answers = HashMap::new();
    let mut canary_units = 0;
    for u in 0..300 {
        let unit = format!("user-{u}");
        let want = canary_arm(&split(), "search", &unit);
        canary_units += usize::from(want == Arm::Canary);
        for n in 0..2 {
            let (status, body) = search(
                &router,
                json!({"consumer": "search", "vector": vector(u % ITEMS), "k": 3,
                       "unit_id": unit, "request_id": format!("{unit}-{n}")}),
            )
            .await;
            assert_eq!(status, 200, "{body}");
            assert_eq!(body["arm"], want.as_str(), "{unit}: {body}");
            assert_eq!(body["request_id"], format!("{unit}-{n}"));
            let shown: Vec<String> = body["results"]
                .as_array()
                .unwrap()
                .iter()
                .map(|r| r["item_id"].as_str().unwrap().to_owned())
                .collect();
            assert_eq!(shown[0], format!("item-{}", u % ITEMS));
            answers.insert(format!("{unit}-{n}"), (unit.clone(), want, shown));
        }
    }
    // 30% of 300 units: binomial sd ≈ 8.
    assert!((60..=120).contains(&canary_units), "{canary_units}");

    // Every answer was handed to the exposure log, as served.
    let mut logged = 0;
    while let Ok(e) = exposures.try_recv() {
        let (unit, arm, shown) = &answers[&e.request_id];
        assert_eq!(&e.unit_id, unit);
        assert_eq!(e.consumer, "search");
        let want = match arm {
            Arm::Control => ExposureArm::Control,
            Arm::Canary => ExposureArm::Canary,
        };
        assert_eq!(e.arm, want);
        assert_eq!((e.migration_id.as_str(), e.share), ("m1", SHARE));
        assert_eq!(&e.items, shown);
        assert_eq!(e.models, vec![MINILM.to_owned()]);
        logged += 1;
    }
    assert_eq!(logged, answers.len());

    // Without a unit the request id is the unit; without either the router makes an id
    // (returned), and the header's id is taken.
    let (_, body) = search(
        &router,
        json!({"consumer": "search", "vector": vector(1), "k": 3}),
    )
    .await;
    let made = body["request_id"].as_str().unwrap().to_owned();
    assert_eq!(made.len(), 32, "{body}");
    let e = exposures.try_recv().unwrap();
    assert_eq!(
        (e.request_id.as_str(), e.unit_id.as_str()),
        (made.as_str(), made.as_str())
    );
    let r = reqwest::Client::new()
        .post(format!("{router}/v1/search"))
        .header("x-request-id", "from-header")
        .json(&json!({"consumer": "search", "vector": vector(1), "k": 3}))
        .send()
        .await
        .unwrap();
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["request_id"], "from-header");
    assert_eq!(exposures.try_recv().unwrap().request_id, "from-header");

    // A request with its own plan is outside the experiment: no arm, no exposure.
    let (_, body) = search(
        &router,
        json!({"consumer": "search", "vector": vector(1), "k": 3, "unit_id": "user-1",
               "plan": [{"model": MINILM, "weight": 1.0}]}),
    )
    .await;
    assert!(body["arm"].is_null(), "{body}");
    assert!(exposures.try_recv().is_err());
    let (status, body) = search(
        &router,
        json!({"consumer": "search", "vector": vector(1), "unit_id": ""}),
    )
    .await;
    assert_eq!((status, body["kind"].as_str()), (400, Some("invalid_id")));

    // The canary ends (the consumer's plan record without it): every unit reads control, and
    // nothing more is logged.
    plans_tx.send(state(None)).unwrap();
    for u in 0..50 {
        let (_, body) = search(
            &router,
            json!({"consumer": "search", "vector": vector(u % ITEMS), "k": 3,
                   "unit_id": format!("user-{u}")}),
        )
        .await;
        assert_eq!(body["arm"], "control", "{body}");
    }
    assert!(exposures.try_recv().is_err());
    shutdown.cancel();
}
