//! Blending the result lists of two (or more) model versions into one top-k.
//!
//! Two models' cosine scores are not on one scale (MiniLM's top-10 for a query may sit at
//! 0.45–0.60 where MPNet's sit at 0.55–0.75), so a raw-score merge would let the model with
//! the higher habitual scores take every slot whatever the weights say. Two ways to make them
//! comparable, both weighted by the consumer's read plan:
//!
//! - [`Blend::Rrf`] — weighted reciprocal rank fusion: an item scores Σ w_v / (60 + rank_v)
//!   over the lists it is in (rank from 1; 60 is the usual constant of Cormack et al.). Only
//!   ranks matter.
//! - [`Blend::Zscore`] — calibrated scores: each list's scores are standardised over that list
//!   (z = (s − mean) / std) and an item scores Σ w_v · z_v, with an item missing from a list
//!   given that list's lowest z. Score gaps matter, not only order.
//!
//! Z-scores serve by default, as measured on the golden sets (migration drill report,
//! `loadtest/reports/drill/report.md`): with RRF a 10% (or 90%) weight changes nothing — an
//! item only the lighter list has scores at most 0.1/61 ≈ 0.0016, below the heavier list's
//! 10th (0.9/70 ≈ 0.013) — so a consumer at "10% new" still gets the old version's answers;
//! z-scores blend in proportion, and on the four consumers' golden sets they were as good or
//! better at 0.1 and 0.9 and even on average at 0.5.
//!
//! Scores in an answer mean one thing: every result's `score` is the cosine its own version
//! gave it (the version in `model_version`, the list that contributed most), `scores` has the
//! cosine of each version that returned it, and a blended answer's rank score is apart in
//! `blend_score` (its scale depends on the method, so never threshold on it).

use std::collections::{BTreeMap, HashMap};

/// A blending method.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Default,
    serde::Serialize,
    serde::Deserialize,
    utoipa::ToSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Blend {
    /// Weighted reciprocal rank fusion.
    Rrf,
    /// Per-list standardised scores, weighted (the default: see the module docs).
    #[default]
    Zscore,
}

impl std::str::FromStr for Blend {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "rrf" => Ok(Self::Rrf),
            "zscore" => Ok(Self::Zscore),
            other => Err(format!("unknown blend {other:?}: rrf or zscore")),
        }
    }
}

/// The RRF constant.
pub const RRF_K: f64 = 60.0;

/// One version's results, best first.
#[derive(Debug, Clone)]
pub struct Ranked {
    /// `id@version`.
    pub version: String,
    /// Weight in the plan.
    pub weight: f64,
    /// `(item_id, score)`, best first.
    pub hits: Vec<(String, f32)>,
}

/// One result of an answer.
#[derive(Debug, Clone, PartialEq, serde::Serialize, utoipa::ToSchema)]
pub struct Blended {
    /// Item.
    pub item_id: String,
    /// The cosine similarity `model_version` gave it: the same meaning with one version or a
    /// blend, the score to threshold on.
    pub score: f64,
    /// The version whose score `score` is (in a blend, the one that contributed most).
    pub model_version: String,
    /// Every version that returned it.
    pub versions: Vec<String>,
    /// The cosine each version in `versions` gave it.
    pub scores: BTreeMap<String, f64>,
    /// In a blended answer, the blend's rank score the results are ordered by (weighted RRF
    /// or z-scores: its scale depends on the method); absent with one version.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub blend_score: Option<f64>,
}

impl Blended {
    /// A result of a one-version answer.
    pub fn single(item_id: String, version: &str, score: f32) -> Self {
        Self {
            item_id,
            score: f64::from(score),
            model_version: version.to_owned(),
            versions: vec![version.to_owned()],
            scores: BTreeMap::from([(version.to_owned(), f64::from(score))]),
            blend_score: None,
        }
    }
}

/// Merges the lists into the top `k`; ties break by item id, so results are deterministic.
pub fn blend(lists: &[Ranked], method: Blend, k: usize) -> Vec<Blended> {
    struct Acc {
        score: f64,
        best: (f64, usize),
        versions: Vec<(usize, f32)>,
    }
    let mut acc: HashMap<&str, Acc> = HashMap::new();
    let stats: Vec<(f64, f64, f64)> = lists.iter().map(|l| zstats(&l.hits)).collect();
    for (li, list) in lists.iter().enumerate() {
        if list.weight <= 0.0 {
            continue;
        }
        let (mean, std, _) = stats[li];
        for (rank, (id, score)) in list.hits.iter().enumerate() {
            let part = match method {
                Blend::Rrf => list.weight / (RRF_K + rank as f64 + 1.0),
                Blend::Zscore => list.weight * (f64::from(*score) - mean) / std,
            };
            let a = acc.entry(id.as_str()).or_insert(Acc {
                score: 0.0,
                best: (f64::NEG_INFINITY, li),
                versions: Vec::new(),
            });
            a.score += part;
            if part > a.best.0 {
                a.best = (part, li);
            }
            a.versions.push((li, *score));
        }
    }
    if method == Blend::Zscore {
        // Missing from a list: that list's lowest z.
        for a in acc.values_mut() {
            for (li, list) in lists.iter().enumerate() {
                if list.weight > 0.0
                    && !a.versions.iter().any(|&(v, _)| v == li)
                    && !list.hits.is_empty()
                {
                    a.score += list.weight * stats[li].2;
                }
            }
        }
    }
    let mut out: Vec<Blended> = acc
        .into_iter()
        .map(|(id, a)| {
            let scores: BTreeMap<String, f64> = a
                .versions
                .iter()
                .map(|&(i, s)| (lists[i].version.clone(), f64::from(s)))
                .collect();
            // The best contributor returned the item, so its cosine is in `scores`.
            let model_version = lists[a.best.1].version.clone();
            Blended {
                item_id: id.to_owned(),
                score: scores[&model_version],
                model_version,
                versions: a
                    .versions
                    .iter()
                    .map(|&(i, _)| lists[i].version.clone())
                    .collect(),
                scores,
                blend_score: Some(a.score),
            }
        })
        .collect();
    let rank = |b: &Blended| b.blend_score.unwrap_or(b.score);
    out.sort_by(|a, b| {
        rank(b)
            .total_cmp(&rank(a))
            .then_with(|| a.item_id.cmp(&b.item_id))
    });
    out.truncate(k);
    out
}

/// Mean, standard deviation (floored) and lowest z of a list's scores.
fn zstats(hits: &[(String, f32)]) -> (f64, f64, f64) {
    if hits.is_empty() {
        return (0.0, 1.0, 0.0);
    }
    let n = hits.len() as f64;
    let mean = hits.iter().map(|(_, s)| f64::from(*s)).sum::<f64>() / n;
    let var = hits
        .iter()
        .map(|(_, s)| (f64::from(*s) - mean).powi(2))
        .sum::<f64>()
        / n;
    let std = var.sqrt().max(1e-3);
    let min = hits
        .iter()
        .map(|(_, s)| f64::from(*s))
        .fold(f64::INFINITY, f64::min);
    (mean, std, (min - mean) / std)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(version: &str, weight: f64, hits: &[(&str, f32)]) -> Ranked {
        Ranked {
            version: version.to_owned(),
            weight,
            hits: hits.iter().map(|(i, s)| ((*i).to_owned(), *s)).collect(),
        }
    }

    fn ids(r: &[Blended]) -> Vec<&str> {
        r.iter().map(|b| b.item_id.as_str()).collect()
    }

    #[test]
    fn a_single_list_keeps_its_order() {
        let l = [list("a@1", 1.0, &[("x", 0.9), ("y", 0.8), ("z", 0.1)])];
        for m in [Blend::Rrf, Blend::Zscore] {
            assert_eq!(ids(&blend(&l, m, 2)), ["x", "y"]);
        }
    }

    #[test]
    fn weights_decide_between_disagreeing_lists() {
        // The new model scores everything higher; with raw scores it would always win.
        let old = |w| list("old@1", w, &[("o1", 0.50), ("o2", 0.48), ("o3", 0.30)]);
        let new = |w| list("new@1", w, &[("n1", 0.80), ("n2", 0.79), ("n3", 0.60)]);
        for m in [Blend::Rrf, Blend::Zscore] {
            let mostly_old = blend(&[old(0.9), new(0.1)], m, 2);
            assert_eq!(ids(&mostly_old), ["o1", "o2"], "{m:?}");
            assert_eq!(mostly_old[0].model_version, "old@1");
            let mostly_new = blend(&[old(0.1), new(0.9)], m, 2);
            assert_eq!(ids(&mostly_new), ["n1", "n2"], "{m:?}");
        }
    }

    #[test]
    fn a_blended_result_keeps_each_versions_cosine_and_the_rank_score_apart() {
        let old = list("old@1", 0.5, &[("a", 0.9), ("both", 0.8), ("c", 0.7)]);
        let new = list("new@1", 0.5, &[("d", 0.6), ("both", 0.55), ("f", 0.2)]);
        for m in [Blend::Rrf, Blend::Zscore] {
            let r = blend(&[old.clone(), new.clone()], m, 6);
            for b in &r {
                assert_eq!(b.score, b.scores[&b.model_version], "{m:?}: {b:?}");
                assert!(b.blend_score.is_some());
            }
            let both = r.iter().find(|b| b.item_id == "both").unwrap();
            assert_eq!(both.scores["old@1"], f64::from(0.8f32));
            assert_eq!(both.scores["new@1"], f64::from(0.55f32));
            let ranks: Vec<f64> = r.iter().map(|b| b.blend_score.unwrap()).collect();
            assert!(
                ranks.windows(2).all(|w| w[0] >= w[1]),
                "{m:?}: ordered by rank: {r:?}"
            );
        }
        let single = Blended::single("x".into(), "old@1", 0.75);
        assert_eq!((single.score, single.blend_score), (0.75, None));
    }

    #[test]
    fn items_in_both_lists_rise() {
        let old = list("old@1", 0.5, &[("a", 0.9), ("both", 0.8), ("c", 0.7)]);
        let new = list("new@1", 0.5, &[("d", 0.9), ("both", 0.85), ("f", 0.2)]);
        for m in [Blend::Rrf, Blend::Zscore] {
            let r = blend(&[old.clone(), new.clone()], m, 3);
            assert_eq!(r[0].item_id, "both", "{m:?}: {r:?}");
            assert_eq!(r[0].versions, ["old@1", "new@1"]);
        }
    }

    #[test]
    fn zero_weight_lists_are_ignored_and_ties_are_deterministic() {
        let a = list("a@1", 1.0, &[("x", 0.5), ("y", 0.5)]);
        let b = list("b@1", 0.0, &[("z", 0.99)]);
        let r = blend(&[a, b], Blend::Rrf, 5);
        assert_eq!(ids(&r), ["x", "y"]);
        let tie = [
            list("a@1", 0.5, &[("p", 0.5)]),
            list("b@1", 0.5, &[("q", 0.5)]),
        ];
        assert_eq!(ids(&blend(&tie, Blend::Rrf, 2)), ["p", "q"]);
    }
}
