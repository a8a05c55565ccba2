use crate::{Adapter, AdapterKind, AdapterName, Layers};

use super::*;

/// Deterministic pseudo-random numbers in [-1, 1).
fn noise(seed: u64, n: usize) -> Vec<f32> {
    let mut rng = embedstream_topics::testing::XorShift::new(seed);
    (0..n).map(|_| 2.0 * rng.centered()).collect()
}

/// `n` pairs: new vectors random in `in_dim`, old = normalize(f(new)).
fn synthetic(n: usize, in_dim: usize, out_dim: usize, f: impl Fn(&[f32]) -> Vec<f32>) -> Pairs {
    let mut pairs = Pairs::default();
    let x = noise(42, n * in_dim);
    for i in 0..n {
        let new = &x[i * in_dim..(i + 1) * in_dim];
        pairs
            .push(format!("item-{i}"), new, &f(new), "synthetic")
            .unwrap();
    }
    assert_eq!(pairs.out_dim, out_dim);
    pairs
}

fn meta_name(kind: AdapterKind) -> AdapterName {
    AdapterName {
        new: "new@1".into(),
        old: "old@1".into(),
        kind: kind.as_str(),
        version: 1,
    }
}

fn adapter(layers: Layers, kind: AdapterKind, pairs: &Pairs) -> Adapter {
    let meta =
        crate::AdapterMeta::new(&meta_name(kind), pairs.in_dim, pairs.out_dim, "test".into());
    Adapter::new(meta, layers)
}

/// An orthogonal 16 × 16 matrix (Gram-Schmidt on random rows).
fn rotation() -> Vec<Vec<f32>> {
    let mut rows: Vec<Vec<f32>> = Vec::new();
    for r in noise(7, 16 * 16).chunks(16) {
        let mut v = r.to_vec();
        for u in &rows {
            let d: f32 = v.iter().zip(u).map(|(a, b)| a * b).sum();
            for (a, b) in v.iter_mut().zip(u) {
                *a -= d * b;
            }
        }
        let n = v.iter().map(|a| a * a).sum::<f32>().sqrt();
        rows.push(v.into_iter().map(|a| a / n).collect());
    }
    rows
}

/// Pairs where the old vector is exactly the first 8 coordinates of the new one after a
/// rotation: new = Rᵀ [z; 0] for unit z in 8 dimensions, old = z.
fn rotated_pairs(n: usize) -> Pairs {
    let r = rotation();
    let mut pairs = Pairs::default();
    let z = noise(11, n * 8);
    for (i, z) in z.chunks(8).enumerate() {
        let new: Vec<f32> = (0..16)
            .map(|c| (0..8).map(|k| r[k][c] * z[k]).sum())
            .collect();
        pairs
            .push(format!("item-{i}"), &new, z, "synthetic")
            .unwrap();
    }
    pairs
}

/// `rotated_pairs`' map applied to any vector (for the MLP's nonlinear target).
fn rotate_and_drop(x: &[f32]) -> Vec<f32> {
    rotation()
        .iter()
        .take(8)
        .map(|r| r.iter().zip(x).map(|(a, b)| a * b).sum::<f32>())
        .collect()
}

#[test]
fn procrustes_recovers_a_rotation_across_a_dimension_change() {
    let pairs = rotated_pairs(400);
    let (fit, held) = pairs.split(0.2, 1);
    assert!(
        held.len() > 40 && fit.len() > 250,
        "{} {}",
        fit.len(),
        held.len()
    );
    let a = adapter(
        linear::procrustes(&fit).unwrap(),
        AdapterKind::Procrustes,
        &fit,
    );
    let (mean, min) = cosines(&a, &held).unwrap();
    assert!(mean > 0.999 && min > 0.99, "{mean} {min}");
    // Its matrix is a scaled map with orthonormal rows (8 × 16).
    let Layers::Linear { w, .. } = a.layers() else {
        panic!()
    };
    let gram = |i: usize, j: usize| -> f32 {
        w.data[i * 16..(i + 1) * 16]
            .iter()
            .zip(&w.data[j * 16..(j + 1) * 16])
            .map(|(a, b)| a * b)
            .sum()
    };
    let s = gram(0, 0);
    for i in 0..8 {
        for j in 0..8 {
            let want = if i == j { s } else { 0.0 };
            assert!((gram(i, j) - want).abs() < 1e-3 * s, "({i},{j})");
        }
    }
}

#[test]
fn whitening_and_a_diagonal_scale_recover_a_stretched_rotation_that_plain_procrustes_cannot() {
    // The old space is the rotation's 8 coordinates, each stretched by its own factor.
    let stretch = [0.15_f32, 0.3, 0.5, 0.8, 1.0, 1.5, 2.5, 4.0];
    let f = |x: &[f32]| -> Vec<f32> {
        rotate_and_drop(x)
            .iter()
            .zip(stretch)
            .map(|(v, s)| v * s)
            .collect()
    };
    let pairs = synthetic(2000, 16, 8, f);
    let (fit, held) = pairs.split(0.2, 1);
    let held_cosine = |options: linear::ProcrustesOptions| {
        let layers = linear::procrustes_with(&fit, &options).unwrap();
        cosines(&adapter(layers, AdapterKind::Procrustes, &fit), &held)
            .unwrap()
            .0
    };
    let plain = held_cosine(linear::ProcrustesOptions::default());
    let scaled = held_cosine(linear::ProcrustesOptions {
        diag_scale: true,
        ..Default::default()
    });
    let whitened = held_cosine(linear::ProcrustesOptions {
        whiten: Some(1e-6),
        ..Default::default()
    });
    assert!(
        scaled > plain + 0.02 && scaled > 0.98,
        "diag {scaled} vs plain {plain}"
    );
    assert!(
        whitened > plain + 0.02 && whitened > 0.98,
        "whitened {whitened} vs plain {plain}"
    );
    // A bad regularization is refused, not fitted.
    for eps in [0.0, -1.0, f64::NAN] {
        let options = linear::ProcrustesOptions {
            whiten: Some(eps),
            ..Default::default()
        };
        assert!(linear::procrustes_with(&fit, &options).is_err(), "{eps}");
    }
}

#[test]
fn low_rank_affine_recovers_a_rank_3_map_and_not_with_rank_1() {
    let u = noise(3, 3 * 16);
    let v = noise(5, 8 * 3);
    let f = |x: &[f32]| -> Vec<f32> {
        let mid: Vec<f32> = u
            .chunks(16)
            .map(|r| r.iter().zip(x).map(|(a, b)| a * b).sum())
            .collect();
        v.chunks(3)
            .map(|r| r.iter().zip(&mid).map(|(a, b)| a * b).sum::<f32>() + 0.5)
            .collect()
    };
    let pairs = synthetic(500, 16, 8, f);
    let (fit, held) = pairs.split(0.2, 1);
    let exact = adapter(
        linear::affine(&fit, 3, 1e-6).unwrap(),
        AdapterKind::Affine,
        &fit,
    );
    let (mean, _) = cosines(&exact, &held).unwrap();
    assert!(mean > 0.98, "rank 3: {mean}");
    let short = adapter(
        linear::affine(&fit, 1, 1e-6).unwrap(),
        AdapterKind::Affine,
        &fit,
    );
    let (worse, _) = cosines(&short, &held).unwrap();
    assert!(worse < mean - 0.05, "rank 1: {worse} vs {mean}");
}

#[test]
fn the_mlp_starts_at_procrustes_and_beats_it_on_a_nonlinear_map() {
    let f = |x: &[f32]| -> Vec<f32> {
        let r = rotate_and_drop(x);
        r.iter().map(|v| v + 0.8 * (3.0 * v).tanh()).collect()
    };
    let pairs = synthetic(3000, 16, 8, f);
    let (fit, held) = pairs.split(0.2, 1);
    let base = adapter(
        linear::procrustes(&fit).unwrap(),
        AdapterKind::Procrustes,
        &fit,
    );
    let (base_cos, _) = cosines(&base, &held).unwrap();
    let config = TrainConfig {
        kind: AdapterKind::Mlp,
        hidden: 32,
        epochs: 30,
        lr: 3e-3,
        batch: 64,
        ..TrainConfig::default()
    };
    let (layers, epoch) = mlp::train(&fit, &held, &config, &meta_name(AdapterKind::Mlp)).unwrap();
    let trained = adapter(layers, AdapterKind::Mlp, &fit);
    let (cos, _) = cosines(&trained, &held).unwrap();
    assert!(epoch > 0, "no epoch improved on Procrustes");
    assert!(cos > base_cos + 0.005, "mlp {cos} vs procrustes {base_cos}");
}

fn write(lines: &[String]) -> tempfile_path::Path {
    tempfile_path::Path::with(lines)
}

/// A file in the temp dir, removed on drop.
mod tempfile_path {
    use std::io::Write;

    pub struct Path(pub std::path::PathBuf);
    impl Path {
        pub fn with(lines: &[String]) -> Self {
            static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
            let p = std::env::temp_dir().join(format!(
                "pairs-{}-{}.jsonl",
                std::process::id(),
                N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            ));
            let mut f = std::fs::File::create(&p).unwrap();
            for l in lines {
                writeln!(f, "{l}").unwrap();
            }
            Path(p)
        }
    }
    impl Drop for Path {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }
}

#[test]
fn bad_pairs_are_refused_with_the_line() {
    let ok = r#"{"id": "a", "old": [1, 0], "new": [0, 1, 0]}"#.to_string();
    let cases = [
        (
            vec![
                ok.clone(),
                r#"{"id": "b", "old": [1, 0, 0], "new": [0, 1, 0]}"#.into(),
            ],
            ":2: item \"b\" has a 3-d new and a 3-d old",
        ),
        (
            vec![
                ok.clone(),
                r#"{"id": "b", "old": [0, 0], "new": [0, 1, 0]}"#.into(),
            ],
            ":2: item \"b\": old vector: the vector is zero",
        ),
        (vec![ok.clone(), ok.clone()], ":2: item \"a\" appears twice"),
        (vec!["{not json".into()], ":1: not a pair line"),
        (
            vec![r#"{"id": "a", "old": [1e999, 0], "new": [0, 1, 0]}"#.into()],
            ":1: not a pair line",
        ),
    ];
    for (lines, want) in cases {
        let f = write(&lines);
        let err = Pairs::from_pairs_file(&f.0).unwrap_err().to_string();
        assert!(err.contains(want), "{err} (want {want})");
    }
    let f = write(&[ok]);
    assert_eq!(Pairs::from_pairs_file(&f.0).unwrap().len(), 1);
}

#[test]
fn joined_files_must_embed_the_same_items() {
    let old = write(&[
        r#"{"id": "a", "vector": [1, 0]}"#.into(),
        r#"{"id": "b", "vector": [0, 1]}"#.into(),
    ]);
    let new = write(&[
        r#"{"id": "b", "vector": [0, 1, 0]}"#.into(),
        r#"{"id": "c", "vector": [1, 0, 0]}"#.into(),
    ]);
    let err = Pairs::join(&old.0, &new.0).unwrap_err().to_string();
    assert!(
        err.contains("embed different items: 1 only in")
            && err.contains("\"a\"")
            && err.contains("\"c\""),
        "{err}"
    );
    let new = write(&[
        r#"{"id": "b", "vector": [0, 1, 0]}"#.into(),
        r#"{"id": "a", "vector": [1, 0, 0]}"#.into(),
    ]);
    let pairs = Pairs::join(&old.0, &new.0).unwrap();
    assert_eq!(pairs.ids, ["a", "b"]);
    assert_eq!(pairs.new_row(0), [1.0, 0.0, 0.0]);
}

#[test]
fn training_refuses_wrong_dimensions_and_too_few_pairs() {
    let new = embedstream_topics::catalog::lookup(&"mpnet-base-v2@1".parse().unwrap()).unwrap();
    let old = embedstream_topics::catalog::lookup(&"minilm-l6-v2@1".parse().unwrap()).unwrap();
    let name = AdapterName {
        new: new.model.to_string(),
        old: old.model.to_string(),
        kind: "procrustes",
        version: 1,
    };
    let config = TrainConfig::default();
    let few = synthetic(100, 768, 384, |x| x[..384].to_vec());
    let err = train(&few, &old, &new, &name, "t".into(), &config)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("too few pairs") && err.contains("at least 768"),
        "{err}"
    );
    let other_kind = AdapterName {
        kind: "affine",
        ..name.clone()
    };
    let err = train(&few, &old, &new, &other_kind, "t".into(), &config)
        .unwrap_err()
        .to_string();
    assert!(err.contains("does not say a procrustes adapter"), "{err}");
    let swapped = synthetic(10, 384, 768, |x| [x, x].concat());
    let err = train(&swapped, &old, &new, &name, "t".into(), &config)
        .unwrap_err()
        .to_string();
    assert!(err.contains("384-d new and 768-d old"), "{err}");
}
