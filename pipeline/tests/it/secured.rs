//! The platform on a secured cluster: a broker of the test's own whose clients' listener is
//! SASL_SSL (SCRAM-SHA-512 over TLS, the broker's certificate signed by a CA the test makes),
//! and every process and client — registry, stage, sink, the test's own producer and
//! readers — connected through that listener only, with the properties in one file. A wrong
//! password or a certificate the client does not trust is a clear error within seconds. And
//! the registry as a secured deployment serves it (HTTPS, basic auth): a producer registers
//! and encodes through it with the credentials in the URL, and is refused without them.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::{free_port, wait_broker, wait_http};
use crate::sink::{Sink, config, test_dir};
use crate::stage::{Platform, terminate, upsert};

const USER: &str = "embedstream";
const PASSWORD: &str = "s3cret-for-the-test";

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .output()
        .expect("openssl runs");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A CA (`<name>.pem`), and with `broker`, a broker key and certificate for 127.0.0.1 and
/// localhost signed by it, as one PEM file (PKCS#8 key, then the certificate).
fn certificates(dir: &Path, name: &str, broker: bool) {
    let ca_key = format!("{name}.key");
    let ca = format!("{name}.pem");
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            &ca_key,
            "-out",
            &ca,
            "-days",
            "2",
            "-subj",
            &format!("/CN={name}"),
        ],
    );
    if broker {
        std::fs::write(
            dir.join("san.ext"),
            "subjectAltName=DNS:localhost,IP:127.0.0.1\n",
        )
        .unwrap();
        openssl(
            dir,
            &[
                "req",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-keyout",
                "broker.key",
                "-out",
                "broker.csr",
                "-subj",
                "/CN=localhost",
            ],
        );
        openssl(
            dir,
            &[
                "x509",
                "-req",
                "-in",
                "broker.csr",
                "-CA",
                &ca,
                "-CAkey",
                &ca_key,
                "-CAcreateserial",
                "-out",
                "broker.crt",
                "-days",
                "2",
                "-extfile",
                "san.ext",
            ],
        );
        openssl(
            dir,
            &[
                "pkcs8",
                "-topk8",
                "-nocrypt",
                "-in",
                "broker.key",
                "-out",
                "broker.pk8",
            ],
        );
        let pem = [
            std::fs::read_to_string(dir.join("broker.pk8")).unwrap(),
            std::fs::read_to_string(dir.join("broker.crt")).unwrap(),
        ]
        .concat();
        std::fs::write(dir.join("broker.pem"), pem).unwrap();
    }
}

/// The broker, its clients' listener SASL_SSL only (`compose/dev broker` with the secured
/// listener's settings).
fn start_broker(dir: &Path, ports: (u16, u16, u16)) -> Child {
    let (plain, controller, secured) = ports;
    let log = std::fs::File::create(dir.join("broker.log")).unwrap();
    Command::new(Path::new(env!("CARGO_MANIFEST_DIR")).join("../compose/dev"))
        .args(["broker", dir.to_str().unwrap()])
        .env("KAFKA_BOOTSTRAP", format!("127.0.0.1:{plain}"))
        .env("KAFKA_CONTROLLER_PORT", controller.to_string())
        .env("KAFKA_SASL_SSL_PORT", secured.to_string())
        .env("KAFKA_SSL_KEYSTORE_PEM", dir.join("broker.pem"))
        .env("KAFKA_SCRAM_USERS", format!("{USER}:{PASSWORD}"))
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .expect("compose/dev runs")
}

/// The clients' properties file: SASL_SSL with SCRAM-SHA-512, trusting the test's CA.
fn client_properties(dir: &Path) -> PathBuf {
    let path = dir.join("client.properties");
    std::fs::write(
        &path,
        format!(
            "# The test's secured listener\nsecurity.protocol=SASL_SSL\nsasl.mechanism=SCRAM-SHA-512\n\
             sasl.username={USER}\nsasl.password={PASSWORD}\nssl.ca.location={}\n",
            dir.join("ca.pem").display()
        ),
    )
    .unwrap();
    path
}

struct Killed(Vec<Child>);

impl Drop for Killed {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// `embedstream topics list` over the secured listener with extra properties: (success,
/// stderr, how long it took).
fn topics_list(bootstrap: &str, properties: &Path, extra: &[&str]) -> (bool, String, Duration) {
    let started = Instant::now();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_embedstream"));
    cmd.args([
        "topics",
        "list",
        "--bootstrap",
        bootstrap,
        "--timeout-secs",
        "10",
    ])
    .arg("--kafka-config")
    .arg(properties)
    .env("NO_COLOR", "1")
    .env("RUST_BACKTRACE", "0");
    for p in extra {
        cmd.args(["--kafka-property", p]);
    }
    let out = cmd.output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
        started.elapsed(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_platform_runs_over_a_sasl_ssl_listener_and_bad_credentials_are_clear_errors() {
    let dir = std::env::temp_dir()
        .join("embedstream-tests")
        .join(embedstream_topics::testing::unique("secured"));
    std::fs::create_dir_all(&dir).unwrap();
    certificates(&dir, "ca", true);
    certificates(&dir, "other-ca", false);
    let ports = (free_port(), free_port(), free_port());
    let bootstrap = format!("127.0.0.1:{}", ports.2);
    let mut children = Killed(vec![start_broker(&dir, ports)]);
    let properties = client_properties(&dir);
    let kafka =
        embedstream_topics::KafkaConfig::from_sources(&bootstrap, Some(&properties), [], &[])
            .unwrap();

    wait_broker(&kafka, &dir.join("broker.log"));

    // A wrong password and an untrusted certificate: clear errors, within seconds.
    let (ok, stderr, took) = topics_list(&bootstrap, &properties, &["sasl.password=wrong"]);
    assert!(!ok, "a wrong password was accepted");
    assert!(took < Duration::from_secs(20), "took {took:?}");
    assert!(stderr.contains("Authentication failed"), "{stderr}");
    let other_ca = format!("ssl.ca.location={}", dir.join("other-ca.pem").display());
    let (ok, stderr, took) = topics_list(&bootstrap, &properties, &[&other_ca]);
    assert!(!ok, "an untrusted certificate was accepted");
    assert!(took < Duration::from_secs(20), "took {took:?}");
    assert!(stderr.contains("certificate verify failed"), "{stderr}");

    // The registry, the stage and the sink, all over the secured listener.
    let registry_port = free_port();
    let registry = format!("http://127.0.0.1:{registry_port}");
    let log = std::fs::File::create(dir.join("registry.log")).unwrap();
    children.0.push(
        Command::new(env!("CARGO_BIN_EXE_embedstream"))
            .args(["registry", "--bootstrap", &bootstrap])
            .arg("--kafka-config")
            .arg(&properties)
            .args(["--listen", &format!("127.0.0.1:{registry_port}")])
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap(),
    );
    wait_http(&format!("{registry}/subjects")).await;

    let p = Platform::secured(&kafka, &properties, &registry, "secured");
    p.ensure_topics().await;
    let events: Vec<_> = (0..30)
        .map(|i| {
            upsert(
                &format!("s-{i}"),
                &format!("Package {i}: a tool that does task number {i} securely."),
            )
        })
        .collect();
    p.produce_events(&events).await;
    let mut stage = p.spawn_stage("stage");
    p.wait_caught_up(Duration::from_secs(180)).await;
    assert!(terminate(&mut stage).success());
    let sink_dir = test_dir(&p);
    let sink = Sink::start(&p, &sink_dir, &config(1000, 1.0), "sink").await;
    sink.wait_caught_up(&p, Duration::from_secs(60)).await;
    // Search with an item's own vector from the versioned topic: it is its own nearest.
    let state = p.embedding_state().await;
    assert_eq!(state.len(), 30, "every item on the versioned topic");
    let (id, record) = state.iter().next().unwrap();
    let (id, vector) = (id.clone(), record.vector.clone());
    let top = sink.top_k("search", &vector, 1).await;
    assert_eq!(top[0].0, id, "{top:?}");

    // The registry behind HTTPS (the test's CA) and basic auth.
    let proxy_port = free_port();
    let proxy =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/registry-proxy/proxy.py");
    let python = std::env::var("EMBEDSTREAM_PYTHON").unwrap_or_else(|_| "python3".to_owned());
    children.0.push(
        Command::new(python)
            .arg(proxy)
            .args(["--listen", &proxy_port.to_string(), "--upstream", &registry])
            .arg("--cert")
            .arg(dir.join("broker.crt"))
            .arg("--key")
            .arg(dir.join("broker.pk8"))
            .args(["--user", USER, "--password", PASSWORD])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", proxy_port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "the registry's TLS front did not listen"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let q = Platform::secured(&kafka, &properties, &registry, "secured-registry");
    q.ensure_topics().await;
    let input = dir.join("items.jsonl");
    std::fs::write(
        &input,
        "{\"id\": \"r-1\", \"text\": \"one\"}\n{\"id\": \"r-2\", \"text\": \"two\"}\n",
    )
    .unwrap();
    let produce = |password: &str| {
        Command::new(env!("CARGO_BIN_EXE_embedstream"))
            .args([
                "produce",
                "--bootstrap",
                &bootstrap,
                "--topic-prefix",
                &q.prefix,
                "--partitions",
                "3",
            ])
            .arg("--kafka-config")
            .arg(&properties)
            .args([
                "--registry-url",
                &format!("https://{USER}:{password}@localhost:{proxy_port}"),
            ])
            .arg("--input")
            .arg(&input)
            .env("SSL_CERT_FILE", dir.join("ca.pem"))
            .env("NO_COLOR", "1")
            .output()
            .unwrap()
    };
    let out = produce(PASSWORD);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let codec = embedstream_schemas::Codec::new(&registry);
    let mut ids = Vec::new();
    for (_, value, _, _) in q.read_all(&q.names.items()) {
        let e: embedstream_schemas::records::ItemEvent =
            codec.decode(&value.unwrap()).await.unwrap();
        ids.push(e.item_id);
    }
    ids.sort();
    assert_eq!(ids, ["r-1", "r-2"]);
    let refused = produce("wrong");
    assert!(
        !refused.status.success(),
        "a wrong registry password was accepted"
    );
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("401"), "{stderr}");
}

/// `embedstream registry` as a secured deployment of its own: HTTPS with the test CA's
/// certificate, changes only with a listed user, `/metrics` on an address of its own; and the
/// platform's clients register through it with the credentials in the URL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_registry_serves_https_guards_its_changes_and_moves_metrics_to_their_own_address() {
    let dir = std::env::temp_dir().join(embedstream_topics::testing::unique("secured-registry"));
    std::fs::create_dir_all(&dir).unwrap();
    certificates(&dir, "ca", true);
    std::fs::write(
        dir.join("users.toml"),
        format!(
            "[users]\n{USER} = \"sha256:{}\"\n",
            embedstream_schemas::access::Secret::hex_of(PASSWORD)
        ),
    )
    .unwrap();
    let (port, metrics_port) = (free_port(), free_port());
    let log = std::fs::File::create(dir.join("registry.log")).unwrap();
    let mut registry = Command::new(env!("CARGO_BIN_EXE_embedstream"))
        .args([
            "registry",
            "--bootstrap",
            &embedstream_topics::testing::bootstrap(),
        ])
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .args([
            "--topic",
            &embedstream_topics::testing::unique("_schemas-secured"),
        ])
        .args(["--metrics-listen", &format!("127.0.0.1:{metrics_port}")])
        .arg("--tls-cert")
        .arg(dir.join("broker.crt"))
        .arg("--tls-key")
        .arg(dir.join("broker.pk8"))
        .arg("--users")
        .arg(dir.join("users.toml"))
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    let ca = std::fs::read(dir.join("ca.pem")).unwrap();
    let client = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(&ca).unwrap())
        .build()
        .unwrap();
    let base = format!("https://localhost:{port}");
    let deadline = Instant::now() + Duration::from_secs(60);
    while !client
        .get(format!("{base}/subjects"))
        .send()
        .await
        .is_ok_and(|r| r.status().is_success())
    {
        assert!(
            Instant::now() < deadline,
            "the registry did not serve HTTPS: {}",
            std::fs::read_to_string(dir.join("registry.log")).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    // Plain HTTP gets no answer on the TLS port.
    let plain = reqwest::get(format!("http://127.0.0.1:{port}/subjects")).await;
    assert!(plain.is_err() || !plain.unwrap().status().is_success());

    // A change needs the listed user.
    let schema = serde_json::json!({"schema": r#"{"type":"record","name":"T","fields":[{"name":"id","type":"string"}]}"#});
    let register = async |user: Option<(&str, &str)>| {
        let mut request = client
            .post(format!("{base}/subjects/t-value/versions"))
            .header("content-type", "application/vnd.schemaregistry.v1+json")
            .body(schema.to_string());
        if let Some((name, password)) = user {
            request = request.basic_auth(name, Some(password));
        }
        request.send().await.unwrap().status().as_u16()
    };
    assert_eq!(register(None).await, 401);
    assert_eq!(register(Some((USER, PASSWORD))).await, 200);

    // `/metrics` answers on its own address (over the same TLS), not on the API's.
    let metrics = client
        .get(format!("https://localhost:{metrics_port}/metrics"))
        .send()
        .await
        .unwrap();
    assert_eq!(metrics.status().as_u16(), 200);
    let text = metrics.text().await.unwrap();
    assert!(
        text.contains("embedstream_registry_requests_total"),
        "{text}"
    );
    let on_api = client.get(format!("{base}/metrics")).send().await.unwrap();
    assert_eq!(on_api.status().as_u16(), 404);
    let ready = client
        .get(format!("https://localhost:{metrics_port}/ready"))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status().as_u16(), 200);

    let _ = registry.kill();
    let _ = registry.wait();
    let _ = std::fs::remove_dir_all(&dir);
}
