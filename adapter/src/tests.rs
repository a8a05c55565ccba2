use std::str::FromStr;

use super::*;

fn meta(kind: AdapterKind, in_dim: usize, out_dim: usize) -> AdapterMeta {
    let name = AdapterName {
        new: "new@1".into(),
        old: "old@1".into(),
        kind: kind.as_str(),
        version: 1,
    };
    AdapterMeta {
        pairs: 10,
        holdout_pairs: 2,
        train_cosine: 0.9,
        holdout_cosine: Some(0.8),
        ..AdapterMeta::new(&name, in_dim, out_dim, "test".into())
    }
}

fn m(rows: usize, cols: usize, seed: f32) -> Matrix {
    Matrix::new(
        rows,
        cols,
        (0..rows * cols).map(|i| (i as f32 * seed).sin()).collect(),
    )
}

fn naive(w: &Matrix, x: &[f32]) -> Vec<f32> {
    w.data
        .chunks_exact(w.cols)
        .map(|r| r.iter().zip(x).map(|(a, b)| a * b).sum())
        .collect()
}

fn unit(v: Vec<f32>) -> Vec<f32> {
    let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    v.into_iter().map(|x| x / n).collect()
}

#[test]
fn names_round_trip_and_reject_garbage() {
    let n: AdapterName = "mpnet-base-v2@1_to_minilm-l6-v2@1.procrustes.v3"
        .parse()
        .unwrap();
    assert_eq!(n.new, "mpnet-base-v2@1");
    assert_eq!(n.old, "minilm-l6-v2@1");
    assert_eq!(n.kind, "procrustes");
    assert_eq!(n.version, 3);
    assert_eq!(
        n.to_string(),
        "mpnet-base-v2@1_to_minilm-l6-v2@1.procrustes.v3"
    );
    for bad in [
        "",
        "a@1_to_b@1.procrustes",
        "a@1_to_b@1.linear.v1",
        "a_to_b@1.mlp.v1",
        "a@1_to_b@1.mlp.v0",
        "a@1-b@1.mlp.v1",
        "../x@1_to_b@1.mlp.v1",
    ] {
        assert!(bad.parse::<AdapterName>().is_err(), "{bad}");
    }
}

#[test]
fn every_kind_applies_as_its_formula_and_survives_a_round_trip() {
    let dir = std::env::temp_dir().join(format!("adapter-test-{}", std::process::id()));
    let x: Vec<f32> = (0..6).map(|i| (i as f32 * 0.9).cos()).collect();
    let cases = [
        Adapter::new(
            meta(AdapterKind::Procrustes, 6, 4),
            Layers::Linear {
                w: m(4, 6, 0.3),
                b: vec![0.1, 0.2, 0.3, 0.4],
            },
        ),
        Adapter::new(
            meta(AdapterKind::Affine, 6, 4),
            Layers::LowRank {
                u: m(2, 6, 0.7),
                v: m(4, 2, 0.5),
                b: vec![0.0, 1.0, 0.0, -1.0],
            },
        ),
        Adapter::new(
            meta(AdapterKind::Mlp, 6, 4),
            Layers::Residual {
                w: m(4, 6, 0.3),
                b: vec![0.1; 4],
                w1: m(3, 6, 1.1),
                b1: vec![-0.2, 0.0, 0.2],
                w2: m(4, 3, 0.9),
            },
        ),
    ];
    for adapter in cases {
        let want = match adapter.layers() {
            Layers::Linear { w, b } => naive(w, &x).iter().zip(b).map(|(a, b)| a + b).collect(),
            Layers::LowRank { u, v, b } => naive(v, &naive(u, &x))
                .iter()
                .zip(b)
                .map(|(a, b)| a + b)
                .collect(),
            Layers::Residual { w, b, w1, b1, w2 } => {
                let h: Vec<f32> = naive(w1, &x)
                    .iter()
                    .zip(b1)
                    .map(|(a, b)| (a + b).max(0.0))
                    .collect();
                let r = naive(w2, &h);
                naive(w, &x)
                    .iter()
                    .zip(b)
                    .zip(r)
                    .map(|((a, b), r)| a + b + r)
                    .collect::<Vec<f32>>()
            }
        };
        let want = unit(want);
        let got = adapter.apply_exact(&x).unwrap();
        for (g, w) in got.iter().zip(&want) {
            assert!(
                (g - w).abs() < 1e-5,
                "{:?}: {got:?} vs {want:?}",
                adapter.meta.kind
            );
        }
        let served = adapter.apply(&x).unwrap();
        let cosine: f32 = served.iter().zip(&want).map(|(a, b)| a * b).sum();
        assert!(
            cosine > 0.999,
            "{:?}: int8 {served:?} vs {want:?}",
            adapter.meta.kind
        );
        let path = AdapterName::from_str(&adapter.meta.name)
            .unwrap()
            .path_in(&dir);
        adapter.save(&path).unwrap();
        assert_eq!(Adapter::load(&path).unwrap(), adapter);
        assert_eq!(resolve(&dir, &adapter.meta.name).unwrap(), path);
    }
    assert_eq!(list(&dir).unwrap().len(), 3);
    assert_eq!(
        next_name(&dir, "new@1", "old@1", AdapterKind::Mlp)
            .unwrap()
            .version,
        2
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn corrupt_files_wrong_dimensions_and_unknown_names_are_refused() {
    let dir = std::env::temp_dir().join(format!("adapter-bad-{}", std::process::id()));
    let adapter = Adapter::new(
        meta(AdapterKind::Procrustes, 6, 4),
        Layers::Linear {
            w: m(4, 6, 0.3),
            b: vec![0.0; 4],
        },
    );
    assert!(matches!(
        adapter.apply(&[1.0; 5]),
        Err(AdapterError::Dimension {
            expected: 6,
            got: 5,
            ..
        })
    ));
    let path = dir.join(format!("{}.safetensors", adapter.meta.name));
    adapter.save(&path).unwrap();
    let mut bytes = std::fs::read(&path).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0x40;
    std::fs::write(&path, &bytes).unwrap();
    let err = Adapter::load(&path).unwrap_err().to_string();
    assert!(err.contains("checksum"), "{err}");
    std::fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();
    assert!(matches!(
        Adapter::load(&path),
        Err(AdapterError::Invalid { .. })
    ));
    assert!(matches!(
        resolve(&dir, "new@1_to_old@1.affine.v9"),
        Err(AdapterError::NotFound { .. })
    ));
    let mut layers = adapter.layers().clone();
    if let Layers::Linear { w, .. } = &mut layers {
        w.data[3] = f32::NAN;
    }
    let nan = Adapter::new(adapter.meta.clone(), layers);
    assert!(nan.save(&path).is_err());
    std::fs::remove_dir_all(&dir).unwrap();
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(
        std::env::var("PROPTEST_CASES").ok().and_then(|c| c.parse().ok()).unwrap_or(64)
    ))]

    /// Whatever bytes an artifact file holds, loading it gives an adapter that applies to a
    /// vector of its input dimension, or an error; never a panic.
    #[test]
    fn a_damaged_artifact_loads_or_is_refused(
        edits in proptest::collection::vec((proptest::prelude::any::<usize>(), proptest::prelude::any::<u8>()), 1..6),
        cut in proptest::option::of(proptest::prelude::any::<usize>()),
    ) {
        let dir = std::env::temp_dir().join(format!("adapter-prop-{}", std::process::id()));
        let adapter = Adapter::new(
            meta(AdapterKind::Procrustes, 6, 4),
            Layers::Linear { w: m(4, 6, 0.3), b: vec![0.0; 4] },
        );
        let path = dir.join(format!("{}.safetensors", adapter.meta.name));
        adapter.save(&path).unwrap();
        let mut bytes = std::fs::read(&path).unwrap();
        for &(at, byte) in &edits {
            let at = at % bytes.len();
            bytes[at] = byte;
        }
        if let Some(cut) = cut {
            bytes.truncate(cut % (bytes.len() + 1));
        }
        std::fs::write(&path, &bytes).unwrap();
        if let Ok(loaded) = Adapter::load(&path) {
            let _ = loaded.apply(&vec![0.5; loaded.meta.in_dim]);
            let _ = loaded.apply_exact(&vec![0.5; loaded.meta.in_dim]);
        }
    }
}

/// An adapter that swaps the two coordinates of a 2-d space: on data where the new space is
/// the old one swapped, it is exact; a query of the old model is exact on its own.
fn swap() -> Adapter {
    Adapter::new(
        meta(AdapterKind::Procrustes, 2, 2),
        Layers::Linear {
            w: Matrix::new(2, 2, vec![0.0, 1.0, 1.0, 0.0]),
            b: vec![0.0; 2],
        },
    )
}

fn at(angle: f32) -> Vec<f32> {
    vec![angle.cos(), angle.sin()]
}

#[test]
fn fusing_weighs_both_queries_and_refuses_what_it_cannot_normalize() {
    let a = swap();
    // new = (0, 1) maps to (1, 0); fused with own = (0, 1) at 0.5 is the diagonal.
    let f = a.fuse(&[0.0, 1.0], &[0.0, 1.0], 0.5).unwrap();
    assert!(
        (f[0] - f[1]).abs() < 1e-6 && (f[0] - 0.5f32.sqrt()).abs() < 1e-4,
        "{f:?}"
    );
    // Weight 1 is the adapted query alone.
    let f = a.fuse(&[0.0, 1.0], &[0.0, 1.0], 1.0).unwrap();
    assert!((f[0] - 1.0).abs() < 1e-3 && f[1].abs() < 1e-3, "{f:?}");
    for w in [0.0, -0.1, 1.5, f64::NAN] {
        assert!(matches!(
            a.fuse(&[0.0, 1.0], &[0.0, 1.0], w),
            Err(AdapterError::Refused { .. })
        ));
    }
    // Opposite queries at equal weight cancel out.
    assert!(matches!(
        a.fuse(&[-1.0, 0.0], &[0.0, 1.0], 0.5),
        Err(AdapterError::Degenerate { .. })
    ));
    assert!(matches!(
        a.fuse(&[1.0, 0.0, 0.0], &[0.0, 1.0], 0.5),
        Err(AdapterError::Dimension { .. })
    ));
}

#[test]
fn evaluation_compares_every_arm_with_both_models_on_the_same_queries() {
    // 40 items around the circle; query i is item i. The old model's queries are exact; the
    // new model's are exact in the new (swapped) space for the even queries and point two
    // items further for the odd ones: a new model worse than the old one, which the exact adapter
    // carries over whole (it recovers all of the re-embed and half of old/old).
    let items: Vec<(String, Vec<f32>)> = (0..40)
        .map(|i| (format!("i{i}"), at(i as f32 * 0.157)))
        .collect();
    let swapped = |v: &[f32]| vec![v[1], v[0]];
    let new_items: Vec<(String, Vec<f32>)> = items
        .iter()
        .map(|(id, v)| (id.clone(), swapped(v)))
        .collect();
    let new_q: Vec<Vec<f32>> = (0..40)
        .map(|i| {
            let j = if i % 2 == 0 { i } else { (i + 2) % 40 };
            swapped(&items[j].1)
        })
        .collect();
    let excluded: Vec<String> = Vec::new();
    let queries: Vec<eval::Query> = (0..40)
        .map(|i| eval::Query {
            old: &items[i].1,
            new: &new_q[i],
            relevant: [items[i].0.as_str()].into_iter().collect(),
            exclude: &excluded,
        })
        .collect();
    let sets = [eval::ConsumerSet {
        consumer: "search".into(),
        metric: "precision@1".into(),
        k: 1,
        queries,
    }];
    let metric = |_: &str, _: usize, rel: &std::collections::BTreeSet<&str>, r: &[String]| {
        f64::from(u8::from(
            r.first().is_some_and(|id| rel.contains(id.as_str())),
        ))
    };
    let row = eval::evaluate(&swap(), &sets, &items, &new_items, &[0.2], &metric).unwrap();
    let c = &row.consumers[0];
    assert_eq!((c.old.value, c.old.ci_low, c.old.ci_high), (1.0, 1.0, 1.0));
    let adapted = c.arm("adapted").unwrap();
    assert!((adapted.metric.value - 0.5).abs() < 1e-9, "{adapted:?}");
    assert!(adapted.metric.ci_low < 0.5 && adapted.metric.ci_high > 0.5);
    assert!((c.full_reembed.value - 0.5).abs() < 1e-9, "{c:?}");
    // Worse than old/old beyond the interval; all of the re-embed, half of old/old.
    assert!(adapted.vs_old.ci_high < 0.0, "{adapted:?}");
    assert!((adapted.recovery_new.value - 1.0).abs() < 1e-9);
    assert!(adapted.recovery_new.ci_low <= 1.0 && adapted.recovery_new.ci_high >= 1.0);
    assert!((adapted.recovery_old.value - 0.5).abs() < 1e-9);
    // Fused with the exact old query at weight 0.2, the odd queries are pulled back to their
    // item: as good as old/old.
    let fused = c.arm("fused@0.2").unwrap();
    assert_eq!(fused.metric.value, 1.0, "{fused:?}");
    assert!(fused.vs_old.ci_low <= 0.0 && fused.vs_old.ci_high >= 0.0);
    assert!((fused.recovery_new.value - 2.0).abs() < 1e-9);
    assert_eq!(row.mean_recovery, adapted.recovery_new.value);
    assert!(matches!(
        eval::evaluate(&swap(), &sets, &items, &new_items, &[0.0], &metric),
        Err(AdapterError::Refused { .. })
    ));
}
