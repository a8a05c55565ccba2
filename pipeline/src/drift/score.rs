//! Scoring: mean and minimum cosine of two embeddings of the canaries, the largest norm
//! error, and the verdicts their thresholds give.

use embedstream_schemas::records::DriftKind;

/// A self or cross-version score.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Score {
    /// Canaries compared.
    pub count: usize,
    /// Mean cosine.
    pub mean: f64,
    /// Minimum cosine.
    pub min: f64,
    /// Largest |‖v‖ − 1| of the live (or new) vectors.
    pub max_norm_error: f64,
}

pub(super) fn norm(v: &[f32]) -> f64 {
    v.iter().map(|&x| f64::from(x).powi(2)).sum::<f64>().sqrt()
}

/// Cosines of `a[i]` to `b[i]`.
pub fn score(a: &[Vec<f32>], b: &[Vec<f32>]) -> Score {
    let mut s = Score {
        count: a.len().min(b.len()),
        mean: 0.0,
        min: f64::INFINITY,
        max_norm_error: 0.0,
    };
    for (x, y) in a.iter().zip(b) {
        let (nx, ny) = (norm(x), norm(y));
        let dot: f64 = x
            .iter()
            .zip(y)
            .map(|(p, q)| f64::from(*p) * f64::from(*q))
            .sum();
        let c = if nx > 0.0 && ny > 0.0 {
            dot / (nx * ny)
        } else {
            0.0
        };
        s.mean += c;
        s.min = s.min.min(c);
        s.max_norm_error = s.max_norm_error.max((nx - 1.0).abs());
    }
    if s.count > 0 {
        s.mean /= s.count as f64;
    } else {
        s.min = f64::NAN;
        s.mean = f64::NAN;
    }
    s
}

/// Alert thresholds.
#[derive(Debug, Clone, Copy)]
pub struct Thresholds {
    /// Mean cosine to the reference below this alerts (0.99).
    pub min_mean_cosine: f64,
    /// Largest |‖v‖ − 1| above this alerts (normalized models only).
    pub norm_tolerance: f64,
}

impl Default for Thresholds {
    fn default() -> Self {
        Thresholds {
            min_mean_cosine: 0.99,
            norm_tolerance: 0.01,
        }
    }
}

/// `ok`, or `alert: <why>`.
pub fn self_verdict(s: &Score, normalized: bool, t: Thresholds) -> String {
    let mut why = Vec::new();
    // NaN (no canary) alerts too.
    if s.mean.is_nan() || s.mean < t.min_mean_cosine {
        why.push(format!(
            "mean cosine to the reference {:.4} < {}",
            s.mean, t.min_mean_cosine
        ));
    }
    if normalized && s.max_norm_error > t.norm_tolerance {
        why.push(format!(
            "vectors are not unit length (max |norm - 1| = {:.4} > {})",
            s.max_norm_error, t.norm_tolerance
        ));
    }
    if why.is_empty() {
        "ok".into()
    } else {
        format!("alert: {}", why.join("; "))
    }
}

/// The reading of old-vs-new similarity: how much of the index a migration must backfill
/// before recall comparisons mean anything.
pub fn cross_verdict(mean: f64) -> &'static str {
    if mean > 0.95 {
        "incremental"
    } else if mean < 0.80 {
        "full_backfill"
    } else {
        "partial"
    }
}

/// A report kind as metrics and the status page name it: `self` or `cross_version`.
pub fn kind_label(kind: DriftKind) -> &'static str {
    match kind {
        DriftKind::SelfCheck => "self",
        DriftKind::CrossVersion => "cross_version",
    }
}
