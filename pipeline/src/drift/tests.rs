use embedstream_topics::ModelRef;

use super::score::norm;
use super::*;

#[test]
fn the_canary_set_is_1000_distinct_real_items() {
    let all = canaries(0);
    assert_eq!(all.len(), 1000);
    let ids: std::collections::BTreeSet<_> = all.iter().map(|c| &c.id).collect();
    assert_eq!(ids.len(), 1000);
    assert!(
        all.iter()
            .all(|c| c.id.starts_with("pkg:") && c.text.len() >= 20)
    );
    assert_eq!(canaries(10).len(), 10);
    assert_ne!(digest(&canaries(10)), digest(&canaries(11)));
}

#[test]
fn verdicts_follow_the_thresholds() {
    let unit = |v: Vec<f32>| -> Vec<f32> {
        let n = norm(&v) as f32;
        v.into_iter().map(|x| x / n).collect()
    };
    let a = vec![unit(vec![1.0, 0.0, 0.0]), unit(vec![0.0, 1.0, 0.0])];
    let same = score(&a, &a);
    assert!((same.mean - 1.0).abs() < 1e-9 && same.max_norm_error < 1e-6);
    assert_eq!(self_verdict(&same, true, Thresholds::default()), "ok");
    // Unnormalized: cosine 1, norm error 2.
    let scaled: Vec<Vec<f32>> = a
        .iter()
        .map(|v| v.iter().map(|x| x * 3.0).collect())
        .collect();
    let s = score(&scaled, &a);
    assert!((s.mean - 1.0).abs() < 1e-9 && (s.max_norm_error - 2.0).abs() < 1e-6);
    let v = self_verdict(&s, true, Thresholds::default());
    assert!(v.starts_with("alert: vectors are not unit length"), "{v}");
    assert_eq!(self_verdict(&s, false, Thresholds::default()), "ok");
    // One canary turned by 0.3 rad: mean (cos 0.3 + 1) / 2 ≈ 0.978 < 0.99.
    let turned = vec![vec![0.3f32.cos(), 0.3f32.sin(), 0.0], a[1].clone()];
    let s = score(&turned, &a);
    assert!((s.min - f64::from(0.3f32.cos())).abs() < 1e-6);
    assert!(self_verdict(&s, true, Thresholds::default()).contains("mean cosine"));
    assert_eq!(cross_verdict(0.97), "incremental");
    assert_eq!(cross_verdict(0.9), "partial");
    assert_eq!(cross_verdict(0.5), "full_backfill");
}

#[test]
fn references_round_trip() {
    let dir = std::env::temp_dir().join(format!("drift-ref-{}", std::process::id()));
    let model: ModelRef = "minilm-l6-v2@1".parse().unwrap();
    assert!(load_reference(&dir, &model).unwrap().is_none());
    let r = Reference {
        digest: "abc".into(),
        vectors: vec![vec![1.0, 2.0], vec![3.0, 4.0], vec![5.0, 6.0]],
    };
    save_reference(&dir, &model, &r).unwrap();
    let back = load_reference(&dir, &model).unwrap().unwrap();
    assert_eq!(back.digest, "abc");
    assert_eq!(back.vectors, r.vectors);
    std::fs::remove_dir_all(&dir).unwrap();
}
