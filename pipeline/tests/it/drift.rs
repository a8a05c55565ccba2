//! The drift consumer against the real broker and registry: a good model matches its saved
//! reference; a deployed build with its normalization dropped, or with perturbed weights,
//! fires the alert (exit code, report verdict, `drift.reports` on the topic).

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use embedstream_schemas::Codec;
use embedstream_schemas::records::{DriftKind, DriftReport};
use serde_json::Value;

use crate::common::model_dir;
use crate::migrate::activate_minilm;
use crate::stage::{MINILM, Platform};

/// `embedstream drift` on `p`'s platform with `state` as its state folder.
fn drift_command(p: &Platform, state: &Path) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_embedstream"));
    command
        .arg("drift")
        .args(p.args())
        .arg("--state-dir")
        .arg(state)
        .env("NO_COLOR", "1")
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null());
    command
}

fn drift(p: &Platform, state: &Path, extra: &[&str]) -> Output {
    drift_command(p, state)
        .args(["--once", "--canaries", "100"])
        .args(extra)
        .output()
        .unwrap()
}

/// A platform named `name` with MiniLM active, a work folder, its drift state folder, and
/// MiniLM's model folder.
async fn minilm_platform(name: &str) -> (Platform, PathBuf, PathBuf, PathBuf) {
    let p = Platform::new(name);
    p.ensure_topics().await;
    activate_minilm(&p).await;
    let work = std::env::temp_dir().join(embedstream_topics::testing::unique(name));
    let state = work.join("state");
    let (_, good) = model_dir(MINILM);
    (p, work, state, good)
}

fn reports(out: &Output) -> Vec<Value> {
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// A copy of the model folder (the weights linked, not copied) to break.
fn deployed_copy(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            deployed_copy(&entry.path(), &target);
        } else if entry.file_name() == "model.safetensors" {
            std::os::unix::fs::symlink(entry.path(), target).unwrap();
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

/// Multiplies every layer's feed-forward output weight by `1 + sin(i)` (a corrupted build).
fn perturb_weights(dir: &Path) {
    let path = dir.join("model.safetensors");
    let mut bytes = std::fs::read(&path).unwrap();
    std::fs::remove_file(&path).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: serde_json::Map<String, Value> = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    let targets: Vec<(usize, usize)> = header
        .iter()
        .filter(|(k, _)| k.ends_with("output.dense.weight") && !k.contains("attention"))
        .map(|(k, info)| {
            assert_eq!(info["dtype"], "F32", "{k}");
            let offsets = &info["data_offsets"];
            (
                8 + n + offsets[0].as_u64().unwrap() as usize,
                8 + n + offsets[1].as_u64().unwrap() as usize,
            )
        })
        .collect();
    assert!(!targets.is_empty(), "no feed-forward output weights found");
    for (start, end) in targets {
        for (i, chunk) in bytes[start..end].chunks_exact_mut(4).enumerate() {
            let v = f32::from_le_bytes(chunk.try_into().unwrap());
            chunk.copy_from_slice(&(v * (1.0 + (i as f32).sin())).to_le_bytes());
        }
    }
    std::fs::write(&path, bytes).unwrap();
}

fn drop_normalize(dir: &Path) {
    let path = dir.join("modules.json");
    let modules: Vec<Value> =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let kept: Vec<Value> = modules
        .into_iter()
        .filter(|m| {
            !m["type"]
                .as_str()
                .unwrap_or_default()
                .ends_with("Normalize")
        })
        .collect();
    std::fs::write(&path, serde_json::to_string(&kept).unwrap()).unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_bad_model_push_fires_the_drift_alert() {
    let (p, work, state, good) = minilm_platform("drift").await;

    // The live model: the reference is saved on first sight and the model matches it.
    let out = drift(&p, &state, &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r = reports(&out);
    assert_eq!(r.len(), 1, "{r:?}");
    assert_eq!(r[0]["kind"], "SELF");
    assert_eq!(r[0]["canary_count"], 100);
    assert_eq!(r[0]["verdict"], "ok");
    assert!(r[0]["mean_cosine"].as_f64().unwrap() > 0.9999, "{r:?}");
    assert!(
        state
            .join("references")
            .join(format!("{MINILM}.safetensors"))
            .exists()
    );

    // A push that drops the Normalize module: cosine unchanged, vectors not unit length.
    let unnormalized: PathBuf = work.join("unnormalized");
    deployed_copy(&good, &unnormalized);
    drop_normalize(&unnormalized);
    let arg = format!("{MINILM}={}", unnormalized.display());
    let out = drift(&p, &state, &["--model-dir", &arg]);
    assert!(!out.status.success(), "the alert must fail the run");
    let r = reports(&out);
    let verdict = r[0]["verdict"].as_str().unwrap();
    assert!(
        verdict.starts_with("alert: vectors are not unit length"),
        "{verdict}"
    );
    assert!(r[0]["mean_cosine"].as_f64().unwrap() > 0.999);
    assert!(r[0]["max_norm_error"].as_f64().unwrap() > 0.5);

    // A push with perturbed weights: the canaries move away from their references.
    let perturbed = work.join("perturbed");
    deployed_copy(&good, &perturbed);
    perturb_weights(&perturbed);
    let arg = format!("{MINILM}={}", perturbed.display());
    let out = drift(&p, &state, &["--model-dir", &arg]);
    let r = reports(&out);
    assert!(!out.status.success(), "{r:?}");
    let verdict = r[0]["verdict"].as_str().unwrap();
    assert!(
        verdict.starts_with("alert: mean cosine to the reference"),
        "{verdict}"
    );
    assert!(r[0]["mean_cosine"].as_f64().unwrap() < 0.99, "{r:?}");

    // Every report is on drift.reports, keyed by the version, in order.
    let codec = Codec::new(&p.registry);
    let mut on_topic = Vec::new();
    for (key, value, _, _) in p.read_all(&p.names.drift_reports()) {
        assert_eq!(key.as_deref(), Some(MINILM.as_bytes()));
        on_topic.push(codec.decode::<DriftReport>(&value.unwrap()).await.unwrap());
    }
    let verdicts: Vec<&str> = on_topic
        .iter()
        .map(|r| r.verdict.split(':').next().unwrap())
        .collect();
    assert_eq!(verdicts, ["ok", "alert", "alert"]);
    assert!(on_topic.iter().all(|r| r.kind == DriftKind::SelfCheck));
    std::fs::remove_dir_all(&work).unwrap();
}

/// The value of `name{model_version="<model>"}` on a Prometheus page, if present.
fn gauge(page: &str, name: &str, model: &str) -> Option<f64> {
    let series = format!("{name}{{model_version=\"{model}\"}} ");
    page.lines()
        .find_map(|l| l.strip_prefix(&series))
        .map(|v| v.trim().parse().unwrap())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_retired_version_stops_alerting() {
    let (p, work, state, good) = minilm_platform("drift-retired").await;
    // Reference from the good build, then the consumer runs the unnormalized one: it alerts.
    assert!(drift(&p, &state, &[]).status.success());
    let unnormalized = work.join("unnormalized");
    deployed_copy(&good, &unnormalized);
    drop_normalize(&unnormalized);
    let port = crate::common::free_port();
    let mut consumer = crate::migrate::Killed(
        drift_command(&p, &state)
            .args(["--interval-secs", "1", "--canaries", "20", "--model-dir"])
            .arg(format!("{MINILM}={}", unnormalized.display()))
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .spawn()
            .unwrap(),
    );
    let page = async || match reqwest::get(format!("http://127.0.0.1:{port}/metrics")).await {
        Ok(r) => r.text().await.unwrap_or_default(),
        Err(_) => String::new(),
    };
    let wait_for = async |what: &str, ok: &dyn Fn(&str) -> bool| {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
        loop {
            let body = page().await;
            if ok(&body) {
                return body;
            }
            assert!(std::time::Instant::now() < deadline, "{what}:\n{body}");
            tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        }
    };
    let alerting = |b: &str| {
        gauge(b, "embedstream_drift_alert", MINILM) == Some(1.0)
            && gauge(b, "embedstream_drift_scored", MINILM) == Some(1.0)
    };
    let body = wait_for("the unnormalized build alerts", &alerting).await;
    assert!(gauge(&body, "embedstream_drift_max_norm_error", MINILM).unwrap() > 0.5);

    // Rolled back (retired): no longer scored, the alert gauge drops, the last values stay.
    crate::migrate::set_minilm_state(&p, embedstream_schemas::records::ModelState::Retired).await;
    let quiet = |b: &str| {
        gauge(b, "embedstream_drift_alert", MINILM) == Some(0.0)
            && gauge(b, "embedstream_drift_scored", MINILM) == Some(0.0)
    };
    let body = wait_for("the retired version is unscored", &quiet).await;
    assert!(gauge(&body, "embedstream_drift_max_norm_error", MINILM).unwrap() > 0.5);
    assert!(crate::stage::terminate(&mut consumer.0).success());
    std::fs::remove_dir_all(&work).unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_migration_gets_a_cross_version_report_through_the_adapter() {
    use embedstream_adapter::{Adapter, AdapterMeta, Layers, Matrix};
    let p = Platform::new("drift-cross");
    p.ensure_topics().await;
    activate_minilm(&p).await;
    crate::migrate::ok(&crate::migrate::migrate(
        &p,
        &["start", "--from", MINILM, "--to", crate::migrate::MPNET],
    ));
    let work = std::env::temp_dir().join(embedstream_topics::testing::unique("drift-cross"));
    let (state, adapters) = (work.join("state"), work.join("adapters"));

    // One scoring with the adapters folder: its reports.
    let dir = adapters.display().to_string();
    let score = || {
        let out = drift(&p, &state, &["--adapters-dir", &dir]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        reports(&out)
    };

    // Without an adapter the dimensions differ (768 vs 384): self reports only.
    let r = score();
    assert_eq!(r.len(), 2, "{r:?}");
    assert!(
        r.iter()
            .all(|r| r["kind"] == "SELF" && r["verdict"] == "ok")
    );

    // With one (a plain projection: any valid map will do), the old-vs-new report comes too.
    let mut w = vec![0.0f32; 384 * 768];
    for i in 0..384 {
        w[i * 768 + i] = 1.0;
    }
    let name = format!("{}_to_{MINILM}.procrustes.v1", crate::migrate::MPNET);
    let adapter = Adapter::new(
        AdapterMeta::new(&name.parse().unwrap(), 768, 384, "test".into()),
        Layers::Linear {
            w: Matrix::new(384, 768, w),
            b: vec![0.0; 384],
        },
    );
    adapter
        .save(&adapters.join(format!("{name}.safetensors")))
        .unwrap();
    let r = score();
    let cross = r
        .iter()
        .find(|r| r["kind"] == "CROSS_VERSION")
        .expect("a cross-version report");
    assert_eq!(cross["adapter"], name.as_str());
    assert_eq!(cross["model_id"], "mpnet-base-v2");
    assert_eq!(cross["compared_model_id"], "minilm-l6-v2");
    let mean = cross["mean_cosine"].as_f64().unwrap();
    assert_eq!(
        cross["verdict"].as_str().unwrap(),
        embedstream_pipeline::drift::cross_verdict(mean),
        "{cross}"
    );
    std::fs::remove_dir_all(&work).unwrap();
}
