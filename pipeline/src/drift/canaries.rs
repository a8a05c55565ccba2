//! The canary set: 1,000 real items (Debian packages, built into the binary) every model
//! version is scored on, and its digest (a reference made for another set is made again).

use sha2::{Digest, Sha256};

/// The built-in canary set.
const CANARIES: &str = include_str!("../../canaries/debian-1000.jsonl");

/// One canary item.
#[derive(Debug, Clone, serde::Deserialize)]
pub struct Canary {
    /// Item id.
    pub id: String,
    /// Its text.
    pub text: String,
}

/// The first `limit` canaries (all 1,000 when `limit` is 0 or larger).
pub fn canaries(limit: usize) -> Vec<Canary> {
    let all: Vec<Canary> = CANARIES
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).expect("the built-in canary set is valid JSON lines"))
        .collect();
    let n = if limit == 0 {
        all.len()
    } else {
        limit.min(all.len())
    };
    all.into_iter().take(n).collect()
}

/// A digest of a canary set (ids and texts, in order).
pub fn digest(canaries: &[Canary]) -> String {
    let mut h = Sha256::new();
    for c in canaries {
        h.update(c.id.as_bytes());
        h.update([0]);
        h.update(c.text.as_bytes());
        h.update([0]);
    }
    crate::hex(&h.finalize())
}
