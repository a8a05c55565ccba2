//! The drift consumer, a semantic drift monitor: a fixed canary set of 1,000 real items
//! (Debian packages, `pipeline/canaries/debian-1000.jsonl`, built into the binary) scored on
//! an interval.
//!
//! - **References.** The first time the consumer sees a model version in the control log
//!   (registered or active) and has no reference for it, it embeds the canaries and saves them
//!   (`<state>/references/<id@version>.safetensors`, with a digest of the canary set; a
//!   reference for another canary set is made again).
//! - **Self reports.** Every interval, each active version's model is loaded afresh from its
//!   folder (a pushed build shows up at the next tick) and the canaries re-embedded; the report
//!   gives the mean and minimum cosine to the reference and, for normalized models, the largest
//!   `|‖v‖ − 1|` (a normalization change leaves the cosine at 1 but breaks every dot-product
//!   score). Alert when the mean cosine is below the threshold (0.99) or the norm error above
//!   its tolerance (0.01).
//! - **Cross-version reports.** During a migration, the old and new models' canary vectors are
//!   compared: directly when the dimensions agree, else through the newest Drift-Adapter from
//!   the new space into the old one (none: no report, a warning). The reading: mean > 0.95
//!   `incremental`, < 0.80 `full_backfill` (backfill before recall comparisons mean anything),
//!   else `partial`.
//!
//! Reports go to `drift.reports` (Avro, keyed by `id@version`) and to metrics.
//!
//! One file per concern: `canaries`, `score`, `reference`, `consumer` and `reports` (the
//! reader the status page uses).

mod canaries;
mod consumer;
mod reference;
mod reports;
mod score;

pub use self::canaries::{Canary, canaries, digest};
pub use self::consumer::{Drift, DriftConfig, newest_adapter};
pub use self::reference::{Reference, load_reference, save_reference};
pub use self::reports::follow_reports;
pub use self::score::{Score, Thresholds, cross_verdict, kind_label, score, self_verdict};

pub mod metrics;

#[cfg(test)]
mod tests;
