//! The join of exposures and feedback, by request id, in event time: pure state, fed by the
//! Kafka reader in order and advanced by a watermark, so every rule is unit-tested.
//!
//! - **Attribution.** Feedback counts for an exposure when it names one of the items the
//!   answer showed and its event time is within `window` after the answer was served (or up to
//!   `skew` before: clocks of the router and the application differ).
//! - **Duplicates.** A repeat of the same (request, item, kind) counts once; a repeated
//!   exposure (a producer retry) is one exposure.
//! - **Out of order.** Feedback read before its exposure waits for it (the two topics are read
//!   side by side, not in one order).
//! - **Late.** An exposure is final once the watermark passes `served_at + window + lateness`:
//!   it is then added to its arm's tallies and forgotten. Feedback that *arrived* (reached
//!   Kafka) after that time is *late*: counted (`late`), not attributed, so a tally never
//!   changes after it was reported — and, since arrival is a property of the record and not of
//!   when it was read, a replay counts the same feedback late as the live run did.
//!   Feedback whose exposure never comes (dropped by a full queue, or outside any canary) is
//!   *unmatched* once the watermark passes its time plus `window + lateness`.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use embedstream_schemas::records::{Exposure, ExposureArm, FeedbackEvent, FeedbackKind};

use super::stats::Tally;

/// The join's time rules, in ms.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JoinConfig {
    /// Feedback up to this long after an answer counts for it.
    pub window_ms: i64,
    /// How long after the window an exposure stays open for feedback read late.
    pub lateness_ms: i64,
    /// Feedback up to this long before the answer's time still counts (clock skew).
    pub skew_ms: i64,
}

impl Default for JoinConfig {
    fn default() -> Self {
        Self {
            window_ms: 30 * 60 * 1000,
            lateness_ms: 5 * 60 * 1000,
            skew_ms: 5000,
        }
    }
}

/// What one consumer's arm in one migration's canary has shown, over final exposures.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct ArmOutcomes {
    /// Per exposure: 1 when any shown item was clicked (click-through).
    pub click: Tally,
    /// Per exposure: 1 when any shown item converted.
    pub conversion: Tally,
    /// Per exposure: seconds of dwell over its items.
    pub dwell: Tally,
}

/// Which tallies: `(consumer, migration id, arm)`.
pub type ArmKey = (String, String, ExposureArm);

#[derive(Debug)]
struct Open {
    key: ArmKey,
    served_at: i64,
    items: HashSet<String>,
    seen: HashSet<(String, FeedbackKind)>,
    clicked: bool,
    converted: bool,
    dwell: f64,
}

/// The join's state.
#[derive(Debug, Default)]
pub struct Join {
    config: JoinConfig,
    open: HashMap<String, Open>,
    /// `(final at, request id)`, to close exposures in time order.
    closing: BTreeSet<(i64, String)>,
    /// Request ids of final exposures, until `final at + window` (to tell late feedback).
    closed: HashMap<String, i64>,
    /// Feedback read before its exposure (with when it arrived), by request id.
    waiting: HashMap<String, Vec<(FeedbackEvent, i64)>>,
    watermark: i64,
    outcomes: BTreeMap<ArmKey, ArmOutcomes>,
    /// Feedback for exposures already final.
    pub late: u64,
    /// Feedback whose exposure never came.
    pub unmatched: u64,
    /// Feedback that names an item the answer did not show, or falls outside the window.
    pub unattributed: u64,
}

impl Join {
    /// An empty join.
    pub fn new(config: JoinConfig) -> Self {
        Self {
            config,
            watermark: i64::MIN,
            ..Self::default()
        }
    }

    /// The tallies of final exposures.
    pub fn outcomes(&self) -> &BTreeMap<ArmKey, ArmOutcomes> {
        &self.outcomes
    }

    /// Exposures waiting for feedback.
    pub fn open(&self) -> usize {
        self.open.len()
    }

    /// Reads an exposure.
    pub fn exposure(&mut self, e: Exposure) {
        if matches!(e.arm, ExposureArm::Unknown)
            || self.open.contains_key(&e.request_id)
            || self.closed.contains_key(&e.request_id)
        {
            return;
        }
        let closes = e
            .served_at
            .saturating_add(self.config.window_ms + self.config.lateness_ms);
        let id = e.request_id.clone();
        self.open.insert(
            id.clone(),
            Open {
                key: (e.consumer, e.migration_id, e.arm),
                served_at: e.served_at,
                items: e.items.into_iter().collect(),
                seen: HashSet::new(),
                clicked: false,
                converted: false,
                dwell: 0.0,
            },
        );
        self.closing.insert((closes, id.clone()));
        for (f, arrived_at) in self.waiting.remove(&id).unwrap_or_default() {
            self.feedback(f, arrived_at);
        }
        // Already final by the watermark (read after it passed): close it now.
        self.advance(self.watermark);
    }

    /// Reads a feedback event that reached Kafka at `arrived_at` (its record's timestamp).
    pub fn feedback(&mut self, f: FeedbackEvent, arrived_at: i64) {
        if matches!(f.kind, FeedbackKind::Unknown) {
            return;
        }
        if self.closed.contains_key(&f.request_id) {
            self.late += 1;
            return;
        }
        let JoinConfig {
            window_ms,
            skew_ms,
            lateness_ms,
        } = self.config;
        let Some(open) = self.open.get_mut(&f.request_id) else {
            self.waiting
                .entry(f.request_id.clone())
                .or_default()
                .push((f, arrived_at));
            return;
        };
        if arrived_at > open.served_at.saturating_add(window_ms + lateness_ms) {
            self.late += 1;
            return;
        }
        let in_window =
            f.event_time >= open.served_at - skew_ms && f.event_time <= open.served_at + window_ms;
        if !in_window || !open.items.contains(&f.item_id) {
            self.unattributed += 1;
            return;
        }
        if !open.seen.insert((f.item_id, f.kind)) {
            return;
        }
        match f.kind {
            FeedbackKind::Click => open.clicked = true,
            FeedbackKind::Conversion => open.converted = true,
            FeedbackKind::Dwell => open.dwell += f.value.max(0.0),
            FeedbackKind::Unknown => {}
        }
    }

    /// Moves the watermark to `to` (never back): closes the exposures it makes final and
    /// counts the waiting feedback whose exposure can no longer come.
    pub fn advance(&mut self, to: i64) {
        self.watermark = self.watermark.max(to);
        let w = self.watermark;
        while let Some((closes, _)) = self.closing.first()
            && *closes <= w
        {
            let (closes, id) = self.closing.pop_first().unwrap_or_default();
            if let Some(o) = self.open.remove(&id) {
                let out = self.outcomes.entry(o.key).or_default();
                out.click.add(f64::from(u8::from(o.clicked)));
                out.conversion.add(f64::from(u8::from(o.converted)));
                out.dwell.add(o.dwell);
                self.closed.insert(id, closes + self.config.window_ms);
            }
        }
        self.closed.retain(|_, until| *until > w);
        let horizon = self.config.window_ms + self.config.lateness_ms;
        let mut expired = 0;
        self.waiting.retain(|_, events| {
            let before = events.len();
            events.retain(|(f, _)| f.event_time.saturating_add(horizon) > w);
            expired += (before - events.len()) as u64;
            !events.is_empty()
        });
        self.unmatched += expired;
    }
}

#[cfg(test)]
mod tests;
