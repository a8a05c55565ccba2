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
    BackfillProgress, ControlKind, ControlRecord, GateResult, MigrationRecord, ModelState,
    ModelVersionRecord, ReadPlan, ReadPlanEntry,
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
        ControlKind::GateResult => record.gate.as_ref().map(|g| match g.adapter {
            None => gate_key(&g.migration_id, &g.consumer),
            Some(_) => adapter_gate_key(&g.migration_id, &g.consumer),
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
}
