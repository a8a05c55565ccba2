//! Dead letters stay deliverable and come back after a fix: a record near the broker's size
//! limit gets a cut letter with Kafka Connect headers (the stage does not crash-loop on it),
//! and `embedstream dlq replay` re-sends chosen letters to `items` without letting an old
//! event win over a newer one.

use std::process::Command;
use std::time::Duration;

use embedstream_pipeline::dlq::{REPLAYED_FROM, headers};
use sha2::{Digest, Sha256};

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_near_the_size_limit_gets_a_cut_letter_with_connect_headers() {
    let p = Platform::new("dlq-big");
    p.ensure_topics().await;
    // Just under the producer's 1 MB record limit: a letter carrying it whole would not fit.
    let mut value = vec![b'x'; 999_900];
    value[0] = b'{';
    p.produce_raw(&[(Some(b"big".to_vec()), Some(value.clone()))])
        .await;
    p.produce_events(&[upsert("good-after", "A well-formed item after the big one")])
        .await;
    let mut stage = p.spawn_stage("stage");
    p.wait_caught_up(Duration::from_secs(120)).await;
    assert!(terminate(&mut stage).success());
    assert!(p.embedding_state().await.contains_key("good-after"));

    let letters = p.dead_letters().await;
    assert_eq!(letters.len(), 1, "{letters:?}");
    let l = &letters[0];
    assert_eq!(l.error_kind, "malformed_framing");
    assert!(l.truncated);
    assert_eq!(l.original_value.as_deref(), Some(&value[..256 * 1024]));
    assert_eq!(l.original_value_size, Some(999_900));
    let digest: String = Sha256::digest(&value)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(l.original_value_sha256.as_deref(), Some(digest.as_str()));

    let on_dlq = p.read_with_headers(&p.names.items_dlq());
    let ((key, _, _, _), h) = &on_dlq[0];
    assert_eq!(
        key.as_deref(),
        Some(&b"big"[..]),
        "keyed by the original key"
    );
    assert_eq!(h[headers::TOPIC], p.names.items());
    assert_eq!(h[headers::PARTITION], l.source.partition.to_string());
    assert_eq!(h[headers::OFFSET], l.source.offset.to_string());
    assert_eq!(h[headers::EXCEPTION], "malformed_framing");
    assert_eq!(h[headers::MESSAGE], l.message);
    assert_eq!(h[headers::STAGE], "VALUE_CONVERTER");
    assert_eq!(h[headers::ORIGINAL_SHA256], digest);
}

fn dlq(p: &Platform, args: &[&str]) -> Vec<serde_json::Value> {
    let out = Command::new(env!("CARGO_BIN_EXE_embedstream"))
        .arg("dlq")
        .args(args)
        .args(p.args())
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// `(item, action)` per line, by item (letters of items on different partitions of `items`
/// reach the dead-letter topic in either order).
fn actions(lines: &[serde_json::Value]) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = lines
        .iter()
        .map(|l| {
            (
                l["item"].as_str().unwrap().to_owned(),
                l["action"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    out.sort();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_resends_fixed_letters_and_never_lets_an_old_event_win() {
    let p = Platform::new("dlq-replay");
    p.ensure_topics().await;
    let long = "a description longer than the first limit ".repeat(8);
    p.produce_events(&[
        upsert("a", &long),
        upsert("b", &long),
        upsert("b", "b's later, shorter text"),
        upsert("c", "c is fine"),
    ])
    .await;
    let mut stage = p
        .stage_command()
        .args(["--listen", "127.0.0.1:0", "--max-text-bytes", "200"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    p.wait_caught_up(Duration::from_secs(120)).await;
    assert!(terminate(&mut stage).success());
    let letters = p.dead_letters().await;
    assert_eq!(letters.len(), 2, "{letters:?}");

    let listed = dlq(&p, &["list", "--kind", "text_too_long"]);
    assert_eq!(
        actions(&listed),
        [("a".into(), "listed".into()), ("b".into(), "listed".into())]
    );
    let dry = dlq(&p, &["replay", "--dry-run"]);
    assert_eq!(
        actions(&dry),
        [
            ("a".into(), "would_replay".into()),
            ("b".into(), "superseded".into())
        ],
        "b has a later event on items: its old text must not come back"
    );
    let replayed = dlq(&p, &["replay", "--kind", "text_too_long"]);
    assert_eq!(
        actions(&replayed),
        [
            ("a".into(), "replayed".into()),
            ("b".into(), "superseded".into())
        ]
    );
    let again = dlq(&p, &["replay"]);
    assert_eq!(
        actions(&again),
        [
            ("a".into(), "superseded".into()),
            ("b".into(), "superseded".into())
        ],
        "a replay is not sent twice"
    );

    // The replayed record is the original, in its original partition, named as a replay.
    let on_items = p.read_with_headers(&p.names.items());
    let replays: Vec<_> = on_items
        .iter()
        .filter(|(_, h)| h.contains_key(REPLAYED_FROM))
        .collect();
    assert_eq!(replays.len(), 1);
    let ((key, value, partition, offset), _) = replays[0];
    let a = letters
        .iter()
        .find(|l| l.original_key.as_deref() == Some(b"a"))
        .unwrap();
    assert_eq!(key.as_deref(), Some(&b"a"[..]));
    assert_eq!(value, &a.original_value);
    assert_eq!(*partition, a.source.partition);

    // After the fix (the default limit), the stage embeds the replay; b keeps its newer text.
    let mut stage = p.spawn_stage("after-fix");
    p.wait_caught_up(Duration::from_secs(120)).await;
    assert!(terminate(&mut stage).success());
    let state = p.embedding_state().await;
    assert_eq!(
        state["a"].source.offset, *offset,
        "a embedded from its replay"
    );
    let b_later = on_items
        .iter()
        .filter(|((k, _, _, _), _)| k.as_deref() == Some(&b"b"[..]))
        .map(|((_, _, _, o), _)| *o)
        .max()
        .unwrap();
    assert_eq!(state["b"].source.offset, b_later, "b keeps its later event");
    assert!(state.contains_key("c"));
    assert_eq!(p.dead_letters().await.len(), 2, "nothing new dead-lettered");
}
