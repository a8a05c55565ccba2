//! The Burn encoders against sentence-transformers' own vectors, and batch invariance.

use embedstream_pipeline::embed::burn_model::{BurnEmbedder, Cpu};
use embedstream_pipeline::embed::engine::Embedder;

use crate::common::*;

fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let dot: f64 = a
        .iter()
        .zip(b)
        .map(|(x, y)| f64::from(*x) * f64::from(*y))
        .sum();
    let na: f64 = a.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt();
    let nb: f64 = b.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt();
    dot / (na * nb)
}

/// `padded`: the padded path with Burn's masked attention (what the CUDA backend runs)
/// instead of the CPU backend's packed one.
fn check(model: &str, padded: bool) {
    let (spec, dir) = model_dir(model);
    let reference = reference(&spec);
    let load = || {
        BurnEmbedder::<Cpu>::load(&dir, Default::default())
            .unwrap()
            .with_padded(padded)
    };
    let mut embedder = load();
    assert_eq!(embedder.dimension(), reference.dimension);

    // Each text alone, as the reference was made.
    let alone: Vec<Vec<f32>> = reference
        .texts
        .iter()
        .map(|t| embedder.embed(&[t.input_ids.as_slice()]).remove(0))
        .collect();
    let mut sum = 0.0;
    for (t, v) in reference.texts.iter().zip(&alone) {
        let c = cosine(v, &t.vector);
        eprintln!("{model} {:<20} cosine {c:.7}", t.name);
        assert!(c >= 0.999, "{model} {}: cosine {c}", t.name);
        let norm: f32 = v.iter().map(|x| x * x).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-4, "{model} {}: norm {norm}", t.name);
        sum += c;
    }
    let mean = sum / reference.texts.len() as f64;
    eprintln!("{model} mean cosine {mean:.7}");
    assert!(mean >= 0.9999, "{model}: mean cosine {mean}");

    // All texts in one padded batch (lengths 3..max): same vectors as alone.
    let ids: Vec<&[u32]> = reference
        .texts
        .iter()
        .map(|t| t.input_ids.as_slice())
        .collect();
    let batched = embedder.embed(&ids);
    // Padded further, to a multiple of 32 tokens as the CUDA backend pads: still the same.
    let mut padded = load().with_pad_multiple(32);
    let padded = padded.embed(&ids);
    for (((t, a), b), p) in reference
        .texts
        .iter()
        .zip(&alone)
        .zip(&batched)
        .zip(&padded)
    {
        for (what, other) in [("batched", b), ("padded to 32", p)] {
            let diff = a
                .iter()
                .zip(other)
                .map(|(x, y)| (x - y).abs())
                .fold(0.0f32, f32::max);
            assert!(
                diff < 1e-5,
                "{model} {}: {what} differs from alone by {diff}",
                t.name
            );
        }
    }
}

#[test]
fn minilm_matches_sentence_transformers() {
    check("minilm-l6-v2@1", false);
}

#[test]
fn mpnet_matches_sentence_transformers() {
    check("mpnet-base-v2@1", false);
}

#[test]
fn minilm_matches_sentence_transformers_padded() {
    check("minilm-l6-v2@1", true);
}

#[test]
fn mpnet_matches_sentence_transformers_padded() {
    check("mpnet-base-v2@1", true);
}

/// The tiny random-weight models of `pipeline/scripts/tiny_models.py`: one per family and
/// pooling mode, saved by sentence-transformers as a user's own model would be.
const TINY: [&str; 7] = [
    "bert-mean",
    "bert-cls",
    "bert-max",
    "bert-lasttoken",
    "roberta-mean",
    "xlm-roberta-cls",
    "mpnet-max",
];

fn tiny_dir(name: &str) -> std::path::PathBuf {
    std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/tiny")
        .join(name)
}

fn tiny_reference(name: &str) -> Reference {
    let path = tiny_dir(name).with_extension("json");
    serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap()
}

/// Every family and pooling mode, from the folder's own configs: the tokenizer gives
/// sentence-transformers' ids, and both paths (packed and padded, each text alone and all in
/// one batch) give its vectors.
#[test]
fn every_family_and_pooling_matches_sentence_transformers() {
    use embedstream_pipeline::embed::tokenize::TextTokenizer;
    use embedstream_pipeline::models::ModelConfig;
    for name in TINY {
        let dir = tiny_dir(name);
        let reference = tiny_reference(name);
        let config = ModelConfig::load(&dir).unwrap();
        assert_eq!(config.max_seq_length, reference.max_seq_length, "{name}");
        let tokenizer = TextTokenizer::for_model(&dir, &config).unwrap();
        for t in &reference.texts {
            let ids = tokenizer.encode(&t.text).unwrap().ids;
            assert_eq!(ids, t.input_ids, "{name} {}: token ids", t.name);
        }
        let ids: Vec<&[u32]> = reference
            .texts
            .iter()
            .map(|t| t.input_ids.as_slice())
            .collect();
        for padded in [false, true] {
            let mut embedder = BurnEmbedder::<Cpu>::load(&dir, Default::default())
                .unwrap()
                .with_padded(padded);
            assert_eq!(embedder.dimension(), reference.dimension, "{name}");
            let batched = embedder.embed(&ids);
            for (t, b) in reference.texts.iter().zip(&batched) {
                let alone = embedder.embed(&[t.input_ids.as_slice()]).remove(0);
                let scale = t.vector.iter().fold(0.0f32, |m, x| m.max(x.abs()));
                for (what, v) in [("alone", &alone), ("batched", b)] {
                    let c = cosine(v, &t.vector);
                    let diff = v
                        .iter()
                        .zip(&t.vector)
                        .map(|(x, y)| (x - y).abs())
                        .fold(0.0f32, f32::max);
                    assert!(
                        c >= 0.99999 && diff <= 1e-4 * scale.max(1.0),
                        "{name} {} ({what}, padded {padded}): cosine {c}, max difference {diff}",
                        t.name
                    );
                }
            }
        }
    }
}
