//! `/healthz` and `/ready` of a service: alive as soon as it serves HTTP; ready only while its
//! Kafka clients reach the brokers.

use std::process::Stdio;

use crate::common::{free_port, wait_http};
use crate::stage::Platform;

/// Starts `cmd` listening on a free port and waits until its `/healthz` answers: the child
/// and its base URL.
async fn alive(mut cmd: std::process::Command) -> (std::process::Child, String) {
    let port = free_port();
    let child = cmd
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let base = format!("http://127.0.0.1:{port}");
    wait_http(&format!("{base}/healthz")).await;
    (child, base)
}

async fn get(url: &str) -> (u16, String) {
    let r = reqwest::get(url).await.unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_is_ready_only_while_its_brokers_answer() {
    let p = Platform::new("health");
    p.ensure_topics().await;
    let (mut stage, base) = alive(p.stage_command()).await;
    assert_eq!(
        get(&format!("{base}/ready")).await,
        (200, "ready\n".to_owned())
    );
    let _ = stage.kill();
    let _ = stage.wait();

    // Its brokers are not there: alive, not ready, and why.
    let nowhere = format!("127.0.0.1:{}", free_port());
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_embedstream"));
    cmd.args([
        "embed-stage",
        "--bootstrap",
        &nowhere,
        "--registry-url",
        &p.registry,
    ]);
    let (mut lost, base) = alive(cmd).await;
    let (status, body) = get(&format!("{base}/ready")).await;
    assert_eq!(status, 503, "{body}");
    assert!(body.starts_with("not ready: "), "{body}");
    let _ = lost.kill();
    let _ = lost.wait();
}
