//! Dual-write: activating a second model version in the control log makes the running stage
//! write every later event to both versions, each counted on its own.

use std::collections::HashMap;
use std::process::{Command, Stdio};
use std::time::Duration;

use embedstream_schemas::Codec;
use embedstream_schemas::records::{EmbeddingRecord, ItemEvent, ProducerMetadata};

use super::*;
use crate::common::free_port;

fn models_command(p: &Platform, action: &str, model: &str) {
    let status = Command::new(env!("CARGO_BIN_EXE_embedstream"))
        .args(["models", action, model])
        .args(p.args())
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(status.success(), "models {action} {model}");
}

fn metric(body: &str, name_and_labels: &str) -> f64 {
    body.lines()
        .find(|l| l.starts_with(name_and_labels))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn activating_a_second_version_turns_on_dual_write_without_a_restart() {
    let p = Platform::new("dual-write");
    p.ensure_topics().await;
    let port = free_port();
    let log_path = std::env::temp_dir()
        .join("embedstream-tests")
        .join(format!("{}-stage.log", p.prefix));
    std::fs::create_dir_all(log_path.parent().unwrap()).unwrap();
    let log = std::fs::File::create(&log_path).unwrap();
    let mut stage = p
        .stage_command()
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .env("NO_COLOR", "1")
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    let before: Vec<ItemEvent> = (0..8)
        .map(|i| {
            upsert(
                &format!("old-{i}"),
                &format!("An item from before the migration, number {i}"),
            )
        })
        .collect();
    p.produce_events(&before).await;
    p.wait_caught_up(Duration::from_secs(120)).await;

    models_command(&p, "activate", "mpnet-base-v2@1");
    // The running stage follows the control log: it loads MPNet, and events from then on go
    // to both versions.
    wait_log_count(
        &log_path,
        "Writing a new model version",
        2,
        Duration::from_secs(120),
    )
    .await;
    // Attributes and the producer's request id travel to every version's record.
    let after: Vec<ItemEvent> = (0..6)
        .map(|i| ItemEvent {
            attributes: HashMap::from([
                ("section".to_owned(), "utils".to_owned()),
                ("n".to_owned(), i.to_string()),
            ]),
            producer: Some(ProducerMetadata {
                source: "test".to_owned(),
                request_id: Some(format!("req-{i}")),
            }),
            ..upsert(
                &format!("new-{i}"),
                &format!("An item written during the migration, number {i}"),
            )
        })
        .collect();
    p.produce_events(&after).await;
    p.produce_raw(&[(Some(b"old-0".to_vec()), None)]).await;
    p.wait_caught_up(Duration::from_secs(180)).await;

    // The stage runs exactly-once here, where the client does not know the committed offsets:
    // its lag still comes out, from its position, with the client's statistics (every 5 s).
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let metrics = loop {
        let metrics = reqwest::get(format!("http://127.0.0.1:{port}/metrics"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        if metrics
            .lines()
            .any(|l| l.starts_with("embedstream_stage_consumer_lag_records{"))
        {
            break metrics;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the stage exports its lag per partition"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    assert!(terminate(&mut stage).success());

    let mpnet = p.names.embeddings(&"mpnet-base-v2@1".parse().unwrap());
    let mut on_mpnet: Vec<(String, Option<usize>)> = Vec::new();
    let codec = Codec::new(&p.registry);
    let carried = |r: &EmbeddingRecord| {
        let n = r.item_id.strip_prefix("new-").unwrap();
        assert_eq!(r.attributes["n"], n, "{r:?}");
        assert_eq!(r.attributes["section"], "utils", "{r:?}");
        assert_eq!(r.request_id, Some(format!("req-{n}")), "{r:?}");
    };
    for (key, value, _, _) in p.read_all(&mpnet) {
        let key = String::from_utf8(key.unwrap()).unwrap();
        let dim = match value {
            Some(v) => {
                let r = codec.decode::<EmbeddingRecord>(&v).await.unwrap();
                carried(&r);
                Some(r.vector.len())
            }
            None => None,
        };
        on_mpnet.push((key, dim));
    }
    on_mpnet.sort();
    let mut want: Vec<(String, Option<usize>)> =
        (0..6).map(|i| (format!("new-{i}"), Some(768))).collect();
    want.push(("old-0".to_owned(), None));
    want.sort();
    assert_eq!(
        on_mpnet, want,
        "only events after the activation, 768-d, and the delete"
    );
    let minilm = p.embedding_state().await;
    assert_eq!(minilm.len(), 8 + 6 - 1, "MiniLM kept getting every event");
    assert!(minilm.values().all(|r| r.vector.len() == 384));
    for r in minilm.values().filter(|r| r.item_id.starts_with("new-")) {
        carried(r);
    }
    assert!(
        minilm
            .values()
            .filter(|r| !r.item_id.starts_with("new-"))
            .all(|r| r.attributes.is_empty() && r.request_id.is_none()),
        "events without attributes give records without them"
    );
    // Each version's writes are counted on their own.
    let ok = |v: &str| {
        metric(
            &metrics,
            &format!("embedstream_stage_produced_total{{model_version=\"{v}\",result=\"ok\"}}"),
        )
    };
    assert_eq!(ok("minilm-l6-v2@1"), 15.0, "{metrics}");
    assert_eq!(ok("mpnet-base-v2@1"), 7.0, "{metrics}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_wait_while_no_version_is_active_and_flow_once_one_is() {
    let p = Platform::new("no-active");
    p.ensure_topics().await;
    let mut stage = p
        .stage_command()
        .args(["--listen", "127.0.0.1:0", "--initial-model", ""])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let events: Vec<ItemEvent> = (0..5)
        .map(|i| {
            upsert(
                &format!("w-{i}"),
                &format!("An item that waits for a model, number {i}"),
            )
        })
        .collect();
    p.produce_events(&events).await;
    tokio::time::sleep(Duration::from_secs(8)).await;
    assert!(
        p.group_lag() > 0,
        "nothing may be committed while no version is active"
    );
    models_command(&p, "activate", MINILM);
    p.wait_caught_up(Duration::from_secs(120)).await;
    assert!(terminate(&mut stage).success());
    let state = p.embedding_state().await;
    assert_eq!(
        state.len(),
        5,
        "the waiting events were embedded once a version was active"
    );
}
