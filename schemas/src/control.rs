//! The platform state that the control log (`embedstream.control`) describes, as a pure fold
//! over its records.
//!
//! Every change is one record whose key names the entity it replaces (`model/<id>@<v>`,
//! `migration/<id>`, `plan/<consumer>`, `gate/<migration>/<consumer>`, and
//! `gate/<migration>/<consumer>/adapter` for an adapter gate); a tombstone removes the
//! entity. Folding the log from the beginning, in order, gives the same state in every process,
//! which is why any process can restart at any time and resume. This module does no I/O: the
//! follower that reads the topic lives with the stages.

use std::collections::BTreeMap;

use crate::records::{
    BackfillProgress, CanarySplit, ControlKind, ControlRecord, GateResult, MigrationRecord,
    ModelState, ModelVersionRecord, ReadPlan, ReadPlanEntry,
};

/// Key of a model version's record.
pub fn model_key(model_id: &str, version: i32) -> String {
    format!("model/{model_id}@{version}")
}

/// Key of a migration's record.
pub fn migration_key(migration_id: &str) -> String {
    format!("migration/{migration_id}")
}

/// Key of a consumer's read plan.
pub fn plan_key(consumer: &str) -> String {
    format!("plan/{consumer}")
}

/// Key of a gate result.
pub fn gate_key(migration_id: &str, consumer: &str) -> String {
    format!("gate/{migration_id}/{consumer}")
}

/// Key of an adapter gate result: the latest one of a consumer in a migration.
pub fn adapter_gate_key(migration_id: &str, consumer: &str) -> String {
    format!("gate/{migration_id}/{consumer}/adapter")
}

/// Key of an online gate result: the request-level canary's latest verdict for a consumer in a
/// migration.
pub fn online_gate_key(migration_id: &str, consumer: &str) -> String {
    format!("gate/{migration_id}/{consumer}/online")
}

/// Key of a backfill checkpoint.
pub fn backfill_key(migration_id: &str, partition: i32) -> String {
    format!("backfill/{migration_id}/{partition}")
}

/// The key a record must be stored under.
pub fn key_of(record: &ControlRecord) -> Option<String> {
    match record.kind {
        ControlKind::ModelVersion => record
            .model
            .as_ref()
            .map(|m| model_key(&m.model_id, m.version)),
        ControlKind::Migration => record
            .migration
            .as_ref()
            .map(|m| migration_key(&m.migration_id)),
        ControlKind::ReadPlan => record.read_plan.as_ref().map(|p| plan_key(&p.consumer)),
        ControlKind::GateResult => record.gate.as_ref().map(|g| {
            if g.online.is_some() {
                online_gate_key(&g.migration_id, &g.consumer)
            } else if g.adapter.is_some() {
                adapter_gate_key(&g.migration_id, &g.consumer)
            } else {
                gate_key(&g.migration_id, &g.consumer)
            }
        }),
        ControlKind::Backfill => record
            .backfill
            .as_ref()
            .map(|b| backfill_key(&b.migration_id, b.partition)),
    }
}

/// Why a control record was not applied.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ControlError {
    /// The payload named by `kind` is missing, or the key does not name that payload. Poison:
    /// the record is skipped (the state stays as it was).
    #[error("control record under key {key:?} is inconsistent: {reason}")]
    Inconsistent {
        /// The record's key.
        key: String,
        /// What does not match.
        reason: String,
    },
}

/// The fold of the control log.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ControlState {
    models: BTreeMap<String, ModelVersionRecord>,
    migrations: BTreeMap<String, MigrationRecord>,
    plans: BTreeMap<String, ReadPlan>,
    gates: BTreeMap<String, GateResult>,
    backfills: BTreeMap<String, BackfillProgress>,
    /// Records applied so far (tombstones included).
    pub applied: u64,
}

impl ControlState {
    /// Applies one record of the log: `None` is a tombstone for `key`.
    pub fn apply(&mut self, key: &str, record: Option<ControlRecord>) -> Result<(), ControlError> {
        self.applied += 1;
        let Some(record) = record else {
            self.models.remove(key);
            self.migrations.remove(key);
            self.plans.remove(key);
            self.gates.remove(key);
            self.backfills.remove(key);
            return Ok(());
        };
        let expected = key_of(&record).ok_or_else(|| ControlError::Inconsistent {
            key: key.to_owned(),
            reason: format!("kind {:?} without its payload", record.kind),
        })?;
        if expected != key {
            return Err(ControlError::Inconsistent {
                key: key.to_owned(),
                reason: format!("the payload belongs under {expected:?}"),
            });
        }
        let key = key.to_owned();
        // `key_of` returned Some, so the payload named by `kind` is set.
        match record.kind {
            ControlKind::ModelVersion => {
                if let Some(m) = record.model {
                    self.models.insert(key, m);
                }
            }
            ControlKind::Migration => {
                if let Some(m) = record.migration {
                    self.migrations.insert(key, m);
                }
            }
            ControlKind::ReadPlan => {
                if let Some(p) = record.read_plan {
                    self.plans.insert(key, p);
                }
            }
            ControlKind::GateResult => {
                if let Some(g) = record.gate {
                    self.gates.insert(key, g);
                }
            }
            ControlKind::Backfill => {
                if let Some(b) = record.backfill {
                    self.backfills.insert(key, b);
                }
            }
        }
        Ok(())
    }

    /// Every model version in the catalog, by `model/<id>@<v>` key order.
    pub fn models(&self) -> impl Iterator<Item = &ModelVersionRecord> {
        self.models.values()
    }

    /// One model version.
    pub fn model(&self, model_id: &str, version: i32) -> Option<&ModelVersionRecord> {
        self.models.get(&model_key(model_id, version))
    }

    /// The versions the embed stage writes: state `ACTIVE`.
    pub fn active_models(&self) -> Vec<&ModelVersionRecord> {
        self.models
            .values()
            .filter(|m| m.state == ModelState::Active)
            .collect()
    }

    /// Every migration.
    pub fn migrations(&self) -> impl Iterator<Item = &MigrationRecord> {
        self.migrations.values()
    }

    /// A consumer's read plan.
    pub fn plan(&self, consumer: &str) -> Option<&ReadPlan> {
        self.plans.get(&plan_key(consumer))
    }

    /// Every read plan.
    pub fn plans(&self) -> impl Iterator<Item = &ReadPlan> {
        self.plans.values()
    }

    /// Every gate result, cutover and adapter gates.
    pub fn gates(&self) -> impl Iterator<Item = &GateResult> {
        self.gates.values()
    }

    /// One migration.
    pub fn migration(&self, migration_id: &str) -> Option<&MigrationRecord> {
        self.migrations.get(&migration_key(migration_id))
    }

    /// The gate result of a consumer in a migration.
    pub fn gate(&self, migration_id: &str, consumer: &str) -> Option<&GateResult> {
        self.gates.get(&gate_key(migration_id, consumer))
    }

    /// The latest adapter gate result of a consumer in a migration.
    pub fn adapter_gate(&self, migration_id: &str, consumer: &str) -> Option<&GateResult> {
        self.gates.get(&adapter_gate_key(migration_id, consumer))
    }

    /// The latest online gate result (the request-level canary's) of a consumer in a
    /// migration.
    pub fn online_gate(&self, migration_id: &str, consumer: &str) -> Option<&GateResult> {
        self.gates.get(&online_gate_key(migration_id, consumer))
    }

    /// A migration's backfill checkpoints, by partition.
    pub fn backfill(&self, migration_id: &str) -> Vec<&BackfillProgress> {
        let prefix = format!("backfill/{migration_id}/");
        let mut v: Vec<_> = self
            .backfills
            .range(prefix.clone()..)
            .take_while(|(k, _)| k.starts_with(&prefix))
            .map(|(_, b)| b)
            .collect();
        v.sort_by_key(|b| b.partition);
        v
    }

    /// The versions a consumer reads now: its plan, or — without one — the serving version
    /// at weight 1 (the current migration's `from`, else the newest active version).
    pub fn read_plan_for(&self, consumer: &str) -> Vec<ReadPlanEntry> {
        if let Some(plan) = self.plan(consumer) {
            return plan.entries.clone();
        }
        self.serving_default()
            .map(|model| {
                vec![ReadPlanEntry {
                    model,
                    weight: 1.0,
                    adapter: None,
                    fuse: None,
                }]
            })
            .unwrap_or_default()
    }

    /// The consumer's request-level canary, when one runs (a share above 0).
    pub fn canary(&self, consumer: &str) -> Option<&CanarySplit> {
        self.plan(consumer)?
            .canary
            .as_ref()
            .filter(|c| c.share > 0.0)
    }

    /// What one request of `consumer` from `unit` reads, and its arm: the canary's entries
    /// when the unit falls in the consumer's canary, else [`Self::read_plan_for`].
    pub fn read_plan_for_unit(&self, consumer: &str, unit: &str) -> (Arm, Vec<ReadPlanEntry>) {
        match self.canary(consumer) {
            Some(c) if canary_arm(c, consumer, unit) == Arm::Canary => {
                (Arm::Canary, c.entries.clone())
            }
            _ => (Arm::Control, self.read_plan_for(consumer)),
        }
    }

    /// The version a consumer without a plan reads: the current migration's `from`, else the
    /// newest active version (`id@version`).
    pub fn serving_default(&self) -> Option<String> {
        if let Some(m) = self.current_migration() {
            return Some(m.from_model.clone());
        }
        self.active_models()
            .last()
            .map(|m| format!("{}@{}", m.model_id, m.version))
    }

    /// The migration in progress: the newest one not decommissioned.
    /// Share of `items`' offsets a migration's backfill has done, over every partition; `None`
    /// before its first checkpoint.
    pub fn backfill_coverage(&self, migration_id: &str) -> Option<f64> {
        let parts = self.backfill(migration_id);
        if parts.is_empty() {
            return None;
        }
        let total: i64 = parts.iter().map(|b| (b.end - b.start).max(0)).sum();
        let done: i64 = parts
            .iter()
            .map(|b| (b.end - b.next_end.max(b.start)).clamp(0, (b.end - b.start).max(0)))
            .sum();
        Some(if total == 0 {
            1.0
        } else {
            done as f64 / total as f64
        })
    }

    pub fn current_migration(&self) -> Option<&MigrationRecord> {
        self.migrations
            .values()
            .filter(|m| m.phase != crate::records::MigrationPhase::Decommissioned)
            .max_by_key(|m| m.started_at)
    }
}

/// The arm of a request under a consumer's canary split.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Arm {
    /// The consumer's plan (also every request of a consumer without a canary).
    Control,
    /// The canary's entries.
    Canary,
}

impl Arm {
    /// `control` / `canary`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Control => "control",
            Self::Canary => "canary",
        }
    }
}

/// Where `unit` of `consumer` falls in `[0, 1)` under `salt`: FNV-1a 64 of
/// `salt \0 consumer \0 unit`, mixed by SplitMix64's finalizer, as a fraction of 2^64. Fixed:
/// changing it would move units between arms in the middle of an experiment.
pub fn unit_position(salt: &str, consumer: &str, unit: &str) -> f64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for (i, part) in [salt, consumer, unit].iter().enumerate() {
        if i > 0 {
            // The separator byte 0.
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        for b in part.bytes() {
            h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
    }
    h ^= h >> 30;
    h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h ^= h >> 27;
    h = h.wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^= h >> 31;
    // The top 53 bits, exactly representable.
    (h >> 11) as f64 / (1u64 << 53) as f64
}

/// The arm of `unit` of `consumer` under `split`: canary when its position is below the
/// share, so a unit stays in the canary while the share only grows.
pub fn canary_arm(split: &CanarySplit, consumer: &str, unit: &str) -> Arm {
    if unit_position(&split.salt, consumer, unit) < split.share {
        Arm::Canary
    } else {
        Arm::Control
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn model(id: &str, version: i32, state: ModelState) -> ControlRecord {
        ControlRecord {
            kind: ControlKind::ModelVersion,
            model: Some(ModelVersionRecord {
                model_id: id.to_owned(),
                version,
                architecture: "bert".to_owned(),
                dimension: 384,
                pooling: "mean".to_owned(),
                normalized: true,
                max_seq_length: 256,
                weights: "pypi:x".to_owned(),
                state,
                weights_folder: None,
                files: Vec::new(),
            }),
            migration: None,
            read_plan: None,
            gate: None,
            backfill: None,
            updated_at: 0,
            updated_by: "test".to_owned(),
        }
    }

    #[test]
    fn latest_record_per_key_wins_and_tombstones_remove() {
        let mut s = ControlState::default();
        let a = model("a", 1, ModelState::Active);
        let b = model("b", 1, ModelState::Registered);
        s.apply(&key_of(&a).unwrap(), Some(a)).unwrap();
        s.apply(&key_of(&b).unwrap(), Some(b)).unwrap();
        let ids = |s: &ControlState| -> Vec<String> {
            s.active_models()
                .iter()
                .map(|m| m.model_id.clone())
                .collect()
        };
        assert_eq!(ids(&s), ["a"]);
        s.apply("model/b@1", Some(model("b", 1, ModelState::Active)))
            .unwrap();
        assert_eq!(ids(&s), ["a", "b"]);
        s.apply("model/a@1", Some(model("a", 1, ModelState::Retired)))
            .unwrap();
        assert_eq!(ids(&s), ["b"]);
        s.apply("model/b@1", None).unwrap();
        assert!(ids(&s).is_empty());
        assert_eq!(s.models().count(), 1);
    }

    #[test]
    fn a_record_under_the_wrong_key_is_refused() {
        let mut s = ControlState::default();
        let err = s
            .apply("model/other@1", Some(model("a", 1, ModelState::Active)))
            .unwrap_err();
        assert!(matches!(err, ControlError::Inconsistent { .. }));
        let mut empty = model("a", 1, ModelState::Active);
        empty.model = None;
        assert!(s.apply("model/a@1", Some(empty)).is_err());
        assert!(s.active_models().is_empty());
    }

    #[test]
    fn canary_units_are_sticky_spread_and_grow_with_the_share() {
        let split = |share: f64, salt: &str| CanarySplit {
            share,
            entries: Vec::new(),
            salt: salt.to_owned(),
            started_at: 0,
        };
        let units: Vec<String> = (0..20_000).map(|i| format!("user-{i}")).collect();
        let in_canary = |s: &CanarySplit| -> Vec<&String> {
            units
                .iter()
                .filter(|u| canary_arm(s, "ads", u) == Arm::Canary)
                .collect()
        };
        let one = in_canary(&split(0.01, "m1"));
        let five = in_canary(&split(0.05, "m1"));
        // About the share (binomial sd ≈ 14 and 31 units).
        assert!((140..=260).contains(&one.len()), "{}", one.len());
        assert!((880..=1120).contains(&five.len()), "{}", five.len());
        // Growing the share keeps every unit already in the canary.
        assert!(one.iter().all(|u| five.contains(u)));
        // The same unit always lands in the same arm.
        assert_eq!(one, in_canary(&split(0.01, "m1")));
        // Another migration (salt) or consumer draws other arms.
        let other = in_canary(&split(0.05, "m2"));
        let shared = five.iter().filter(|u| other.contains(u)).count();
        assert!(shared < 150, "{shared} units in both migrations' canaries");
        assert_ne!(
            unit_position("m1", "ads", "user-1"),
            unit_position("m1", "recsys", "user-1")
        );
        assert_eq!(in_canary(&split(1.0, "m1")).len(), units.len());
    }
}
