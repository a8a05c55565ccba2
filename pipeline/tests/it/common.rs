use std::path::PathBuf;

use embedstream_pipeline::models;
use embedstream_topics::{ModelSpec, catalog};
use serde::Deserialize;

pub const MODELS: [&str; 2] = ["minilm-l6-v2@1", "mpnet-base-v2@1"];

/// The model's folder, fetched if it is not there yet.
pub fn model_dir(model: &str) -> (ModelSpec, PathBuf) {
    let spec = catalog::lookup(&model.parse().unwrap()).unwrap();
    let dir = models::fetch(&spec, &models::home()).expect("model weights are fetched");
    (spec, dir)
}

#[derive(Debug, Deserialize)]
pub struct Reference {
    pub max_seq_length: usize,
    pub dimension: usize,
    pub texts: Vec<ReferenceText>,
}

#[derive(Debug, Deserialize)]
pub struct ReferenceText {
    pub name: String,
    pub text: String,
    pub input_ids: Vec<u32>,
    pub vector: Vec<f32>,
}

pub fn reference(spec: &ModelSpec) -> Reference {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/reference")
        .join(format!("{}.json", spec.model.id));
    serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap()
}

/// Kills the child when a failed assertion unwinds past it.
pub struct KillOnDrop(pub std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if matches!(self.0.try_wait(), Ok(None)) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// `embedstream up` on the platform's topics, on free ports, its data and log in
/// [`up_dir`]; killed when dropped.
pub struct Up {
    pub process: KillOnDrop,
    /// The query API's port (router, status page).
    pub query: u16,
    /// The `/metrics` port.
    pub metrics: u16,
    pub log_path: PathBuf,
}

/// The folder of a platform's `up`: its sinks' data, its log.
pub fn up_dir(platform: &crate::stage::Platform) -> PathBuf {
    std::env::temp_dir()
        .join("embedstream-tests")
        .join(&platform.prefix)
}

impl Up {
    /// Starts `up` with `extra` arguments after the common ones.
    pub fn start(platform: &crate::stage::Platform, extra: &[&str]) -> Self {
        let (query, metrics, sink) = (free_port(), free_port(), free_port());
        let dir = up_dir(platform);
        std::fs::create_dir_all(&dir).unwrap();
        let log_path = dir.join("up.log");
        let log = std::fs::File::create(&log_path).unwrap();
        let process = KillOnDrop(
            std::process::Command::new(env!("CARGO_BIN_EXE_embedstream"))
                .arg("up")
                .args(platform.args())
                .args(["--group", &platform.group, "--partitions", "3"])
                .args(["--listen", &format!("127.0.0.1:{metrics}")])
                .args(["--query-listen", &format!("127.0.0.1:{query}")])
                .args(["--sink-listen", &format!("127.0.0.1:{sink}")])
                .arg("--sink-data-dir")
                .arg(dir.join("sink"))
                .args(extra)
                .env("RUST_LOG", "info")
                .env("NO_COLOR", "1")
                .stdin(std::process::Stdio::null())
                .stdout(log.try_clone().unwrap())
                .stderr(log)
                .spawn()
                .unwrap(),
        );
        Self {
            process,
            query,
            metrics,
            log_path,
        }
    }

    /// What it logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }
}

/// A free loopback port (bound, read, released).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Waits until `url` answers 2xx (60 s at most).
pub async fn wait_http(url: &str) {
    for _ in 0..240 {
        if reqwest::get(url)
            .await
            .is_ok_and(|r| r.status().is_success())
        {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    }
    panic!("{url} did not come up");
}

/// Waits until the brokers of `kafka` answer a metadata request (60 s at most); on failure
/// the panic shows the broker's log at `log`.
pub fn wait_broker(kafka: &embedstream_topics::KafkaConfig, log: &std::path::Path) {
    let admin =
        embedstream_topics::admin::Admin::new(kafka, std::time::Duration::from_secs(2)).unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while admin.list().is_err() {
        assert!(
            std::time::Instant::now() < deadline,
            "the broker at {} did not answer; its log: {}",
            kafka.bootstrap(),
            std::fs::read_to_string(log).unwrap_or_default()
        );
        std::thread::sleep(std::time::Duration::from_millis(250));
    }
}

/// A registry in trouble: while `failing` is set it answers every request with HTTP 500, and
/// once it is cleared it passes requests (method, path, body, content type) through to the
/// real registry at `upstream`. Returns its URL.
pub async fn failing_registry(
    upstream: String,
    failing: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> String {
    use axum::body::Bytes;
    use axum::http::{HeaderMap, Method, StatusCode, Uri, header};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let client = reqwest::Client::new();
    let app = axum::Router::new().fallback(
        move |method: Method, uri: Uri, headers: HeaderMap, body: Bytes| {
            let (upstream, failing, client) = (upstream.clone(), failing.clone(), client.clone());
            async move {
                if failing.load(std::sync::atomic::Ordering::SeqCst) {
                    let body = r#"{"error_code": 50001, "message": "failing on purpose"}"#;
                    return (StatusCode::INTERNAL_SERVER_ERROR, body.to_owned());
                }
                let method = reqwest::Method::from_bytes(method.as_str().as_bytes()).unwrap();
                let mut request = client
                    .request(method, format!("{upstream}{uri}"))
                    .body(body);
                if let Some(ct) = headers.get(header::CONTENT_TYPE) {
                    request = request.header("content-type", ct.as_bytes());
                }
                let r = request.send().await.unwrap();
                let status = StatusCode::from_u16(r.status().as_u16()).unwrap();
                (status, r.text().await.unwrap())
            }
        },
    );
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    url
}

/// `embedstream registry` on `port` of 127.0.0.1, its state in `topic` (default `_schemas`) on
/// the cluster at `bootstrap`, its log in `log`.
pub fn spawn_registry(
    bootstrap: &str,
    port: u16,
    topic: Option<&str>,
    log: &std::path::Path,
) -> std::process::Child {
    let log = std::fs::File::create(log).unwrap();
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_embedstream"));
    cmd.args(["registry", "--bootstrap", bootstrap])
        .args(["--listen", &format!("127.0.0.1:{port}")]);
    if let Some(topic) = topic {
        cmd.args(["--topic", topic]);
    }
    cmd.stdin(std::process::Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap()
}

/// A broker of the test's own, run by `compose/dev broker` (the same settings as the stack's),
/// its data in `dir/data` and kept across restarts; the child is the broker's JVM itself.
fn start_broker(dir: &std::path::Path, port: u16, controller_port: u16) -> std::process::Child {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("broker.log"))
        .unwrap();
    std::process::Command::new(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../compose/dev"),
    )
    .args(["broker", dir.to_str().unwrap()])
    .env("KAFKA_BOOTSTRAP", format!("127.0.0.1:{port}"))
    .env("KAFKA_CONTROLLER_PORT", controller_port.to_string())
    .stdin(std::process::Stdio::null())
    .stdout(log.try_clone().unwrap())
    .stderr(log)
    .spawn()
    .expect("compose/dev runs")
}

/// A broker of the test's own (its storage kept across restarts) and a registry on it, for
/// the faults that would disturb the other tests on the shared broker.
pub struct OwnStack {
    pub bootstrap: String,
    pub registry: String,
    pub kafka: embedstream_topics::KafkaConfig,
    dir: PathBuf,
    port: u16,
    controller_port: u16,
    broker: std::process::Child,
    registry_child: std::process::Child,
}

impl OwnStack {
    /// Starts both and waits until they answer.
    pub async fn start(name: &str) -> Self {
        let dir = std::env::temp_dir()
            .join("embedstream-tests")
            .join(embedstream_topics::testing::unique(name));
        std::fs::create_dir_all(&dir).unwrap();
        let (port, controller_port, registry_port) = (free_port(), free_port(), free_port());
        let bootstrap = format!("127.0.0.1:{port}");
        let kafka = embedstream_topics::testing::kafka().with_bootstrap(&bootstrap);
        let broker = start_broker(&dir, port, controller_port);
        wait_broker(&kafka, &dir.join("broker.log"));
        let registry_child =
            spawn_registry(&bootstrap, registry_port, None, &dir.join("registry.log"));
        let registry = format!("http://127.0.0.1:{registry_port}");
        wait_http(&format!("{registry}/subjects")).await;
        Self {
            bootstrap,
            registry,
            kafka,
            dir,
            port,
            controller_port,
            broker,
            registry_child,
        }
    }

    /// kill -9 of the broker's JVM.
    pub fn kill_broker(&mut self) {
        self.broker.kill().unwrap();
        self.broker.wait().unwrap();
    }

    /// Starts the broker again on the same storage and port and waits until it answers.
    pub fn restart_broker(&mut self) {
        self.broker = start_broker(&self.dir, self.port, self.controller_port);
        wait_broker(&self.kafka, &self.dir.join("broker.log"));
    }

    /// Freezes the broker (SIGSTOP): its connections stay open and nothing answers.
    pub fn stop_broker(&self) {
        self.signal_broker("-STOP");
    }

    /// Thaws a frozen broker (SIGCONT).
    pub fn continue_broker(&self) {
        self.signal_broker("-CONT");
    }

    fn signal_broker(&self, signal: &str) {
        let status = std::process::Command::new("kill")
            .args([signal, &self.broker.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success(), "kill {signal} of the broker");
    }
}

impl Drop for OwnStack {
    fn drop(&mut self) {
        // A frozen broker does not die of SIGTERM; SIGKILL works whatever its state.
        let _ = self.registry_child.kill();
        let _ = self.broker.kill();
        let _ = self.registry_child.wait();
        let _ = self.broker.wait();
    }
}
