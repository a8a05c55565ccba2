//! What each migration command writes to the control log, decided from the folded state alone
//! (no I/O), so that every rule — which phase allows what, what the gate demands, what a
//! rollback restores — is a pure function with unit tests.
//!
//! Read plans: a consumer without a plan reads the serving version (the migration's `from`, or
//! the only active version) at weight 1. The first change a migration makes to a consumer's
//! plan saves the plan it had in `previous`; every later change carries `previous` forward, so
//! a rollback is one record that restores it, at any phase, and a re-cutover after a rollback
//! works the same way as the first.

use embedstream_schemas::control::ControlState;
use embedstream_schemas::records::{
    CanarySplit, ControlKind, ControlRecord, GateResult, MigrationPhase, MigrationRecord,
    ModelState, ModelVersionRecord, ReadPlan, ReadPlanEntry,
};
use embedstream_topics::ModelRef;

/// Least coverage of the new index (items in it ÷ live items) a cutover accepts.
pub const MIN_COVERAGE: f64 = 0.99;

/// Why a migration command was refused. Nothing is written when one is returned.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Refused {
    /// No migration is in progress.
    #[error("no migration is in progress; start one with `embedstream migrate start`")]
    NoMigration,
    /// One is already in progress.
    #[error("migration {id} ({from} -> {to}) is in phase {phase:?}; decommission it first")]
    InProgress {
        /// Its id.
        id: String,
        /// Its from version.
        from: String,
        /// Its to version.
        to: String,
        /// Its phase.
        phase: MigrationPhase,
    },
    /// A version is not usable as asked.
    #[error("{model}: {reason}")]
    Model {
        /// The version.
        model: String,
        /// Why.
        reason: String,
    },
    /// A weight outside [0, 1).
    #[error("weight {0} is out of range: use 0 <= w < 1 (w = 1 is a cutover: `migrate cutover`)")]
    Weight(f64),
    /// A canary share outside [0, 1], or a canary that cannot run.
    #[error("canary: {0}")]
    Canary(String),
    /// The consumer is not known.
    #[error("unknown consumer {consumer:?}; known: {known}")]
    UnknownConsumer {
        /// Asked for.
        consumer: String,
        /// Known consumers.
        known: String,
    },
    /// The gate refuses the cutover of these consumers.
    #[error("cutover refused by the gate (use --force to override; it is recorded): {}", .0.join("; "))]
    Gate(Vec<String>),
    /// The adapter gate refuses reads through this adapter.
    #[error(
        "reads through the adapter refused by the gate (use --force to override; it is recorded): {0}"
    )]
    AdapterGate(String),
    /// Decommission would leave a consumer without its index.
    #[error("cannot decommission: {0}")]
    Decommission(String),
    /// The adapter does not map the migration's new model into its old one (or cannot be
    /// used).
    #[error("adapter {name}: {reason}")]
    Adapter {
        /// The adapter named.
        name: String,
        /// Why it cannot serve this migration.
        reason: String,
    },
}

/// The read plan a consumer follows now (its control arm when a canary runs).
pub fn effective_plan(state: &ControlState, consumer: &str) -> Vec<ReadPlanEntry> {
    state.read_plan_for(consumer)
}

/// Whether any request of `consumer` reads `model` now: through its plan or its canary.
fn reads_model(state: &ControlState, consumer: &str, model: &str) -> bool {
    effective_plan(state, consumer)
        .iter()
        .chain(state.canary(consumer).map_or(&[][..], |c| &c.entries[..]))
        .any(|e| e.model == model && e.weight > 0.0)
}

/// A plan entry reading `model` with its own queries.
pub fn entry(model: &str, weight: f64) -> ReadPlanEntry {
    ReadPlanEntry {
        model: model.to_owned(),
        weight,
        adapter: None,
        fuse: None,
    }
}

/// The record of a change.
pub fn record(kind: ControlKind, by: &str, now: i64) -> ControlRecord {
    ControlRecord {
        kind,
        model: None,
        migration: None,
        read_plan: None,
        gate: None,
        backfill: None,
        updated_at: now,
        updated_by: by.to_owned(),
    }
}

fn migration_record(m: MigrationRecord, by: &str, now: i64) -> ControlRecord {
    ControlRecord {
        migration: Some(m),
        ..record(ControlKind::Migration, by, now)
    }
}

fn model_record(m: ModelVersionRecord, by: &str, now: i64) -> ControlRecord {
    ControlRecord {
        model: Some(m),
        ..record(ControlKind::ModelVersion, by, now)
    }
}

/// The id of the migration `from -> to`.
pub fn migration_id(from: &ModelRef, to: &ModelRef) -> String {
    format!("{}-v{}-to-{}-v{}", from.id, from.version, to.id, to.version)
}

/// The migration commands act on: the one in progress.
pub fn current(state: &ControlState) -> Result<&MigrationRecord, Refused> {
    state.current_migration().ok_or(Refused::NoMigration)
}

/// `migrate start`: the new version becomes ACTIVE (the stage dual-writes from then on) and
/// the migration is recorded in phase DUAL_WRITE. `to_spec` is the catalog form of `to`.
pub fn start(
    state: &ControlState,
    from: &ModelRef,
    to: &ModelRef,
    to_spec: ModelVersionRecord,
    by: &str,
    now: i64,
) -> Result<Vec<ControlRecord>, Refused> {
    if let Some(m) = state.current_migration() {
        return Err(Refused::InProgress {
            id: m.migration_id.clone(),
            from: m.from_model.clone(),
            to: m.to_model.clone(),
            phase: m.phase,
        });
    }
    if from == to {
        return Err(Refused::Model {
            model: to.to_string(),
            reason: "a migration needs two different versions".to_owned(),
        });
    }
    let version = |m: &ModelRef| i32::try_from(m.version).unwrap_or(i32::MAX);
    match state.model(&from.id, version(from)) {
        Some(m) if m.state == ModelState::Active => {}
        Some(m) => {
            return Err(Refused::Model {
                model: from.to_string(),
                reason: format!(
                    "it is {:?}, not ACTIVE: only a written version can be migrated from",
                    m.state
                ),
            });
        }
        None => {
            return Err(Refused::Model {
                model: from.to_string(),
                reason: "not in the control log; activate it first (`embedstream models activate`)"
                    .to_owned(),
            });
        }
    }
    if let Some(existing) = state.model(&to.id, version(to))
        && existing.dimension != to_spec.dimension
    {
        return Err(Refused::Model {
            model: to.to_string(),
            reason: "the control log has it with another dimension".to_owned(),
        });
    }
    let mut records = vec![model_record(
        ModelVersionRecord {
            state: ModelState::Active,
            ..to_spec
        },
        by,
        now,
    )];
    records.push(migration_record(
        MigrationRecord {
            migration_id: migration_id(from, to),
            from_model: from.to_string(),
            to_model: to.to_string(),
            phase: MigrationPhase::DualWrite,
            started_at: now,
        },
        by,
        now,
    ));
    Ok(records)
}

fn check_consumer(consumer: &str, known: &[String]) -> Result<(), Refused> {
    if known.iter().any(|k| k == consumer) {
        Ok(())
    } else {
        Err(Refused::UnknownConsumer {
            consumer: consumer.to_owned(),
            known: known.join(", "),
        })
    }
}

/// The plan record that sets `consumer` to `entries` in the current migration.
fn plan_change(
    state: &ControlState,
    migration: &MigrationRecord,
    consumer: &str,
    entries: Vec<ReadPlanEntry>,
    forced: bool,
    by: &str,
    now: i64,
) -> ControlRecord {
    // `previous` belongs to the migration that set it only if it was saved while this
    // migration ran: a plan written before `started_at` is itself the plan to restore.
    let previous = match state.plan(consumer) {
        Some(p) if !p.previous.is_empty() && plan_in_migration(state, consumer, migration) => {
            p.previous.clone()
        }
        _ => effective_plan(state, consumer),
    };
    // A canary of this migration keeps running while the control arm's blend changes.
    let canary = state
        .canary(consumer)
        .filter(|c| c.salt == migration.migration_id)
        .cloned();
    ControlRecord {
        read_plan: Some(ReadPlan {
            consumer: consumer.to_owned(),
            entries,
            forced,
            previous,
            canary,
        }),
        ..record(ControlKind::ReadPlan, by, now)
    }
}

/// Whether the consumer's current plan was written by `migration` (it reads one of its two
/// versions and was saved with a `previous` plan).
fn plan_in_migration(state: &ControlState, consumer: &str, migration: &MigrationRecord) -> bool {
    state.plan(consumer).is_some_and(|p| {
        p.entries
            .iter()
            .chain(&p.previous)
            .any(|e| e.model == migration.to_model)
    })
}

fn phase_change(
    migration: &MigrationRecord,
    phase: MigrationPhase,
    by: &str,
    now: i64,
) -> Option<ControlRecord> {
    (migration.phase != phase).then(|| {
        migration_record(
            MigrationRecord {
                phase,
                ..migration.clone()
            },
            by,
            now,
        )
    })
}

/// Reads of the old version through a Drift-Adapter (from the new model into the old one).
#[derive(Debug, Clone, PartialEq)]
pub struct AdapterRead {
    /// The adapter's name.
    pub name: String,
    /// Fused reads: the adapted query's weight beside the old model's own query, in (0, 1];
    /// `None`: the adapted query alone.
    pub fuse: Option<f64>,
}

/// `migrate weight --consumer C --new W`: the consumer reads a blend, `W` of the new version.
///
/// With `adapter`, the old version's share is read "new model via adapter": queries are
/// embedded with the new model and mapped into the old index's space (fused with the old
/// model's own query when `fuse` is set), so the query side moves to the new model before the
/// backfill is done. Refused unless the consumer's adapter gate, for this adapter and fuse
/// weight, found those reads not worse than the old model's own (with `force`, written with
/// `forced` set).
#[allow(clippy::too_many_arguments)]
pub fn weight(
    state: &ControlState,
    consumer: &str,
    new_weight: f64,
    adapter: Option<&AdapterRead>,
    force: bool,
    known: &[String],
    by: &str,
    now: i64,
) -> Result<Vec<ControlRecord>, Refused> {
    let m = current(state)?.clone();
    check_consumer(consumer, known)?;
    if !(0.0..1.0).contains(&new_weight) || !new_weight.is_finite() {
        return Err(Refused::Weight(new_weight));
    }
    let mut forced = false;
    if let Some(AdapterRead { name, fuse }) = adapter {
        if let Some(w) = fuse.filter(|w| !embedstream_adapter::is_fuse_weight(*w)) {
            return Err(Refused::Adapter {
                name: name.clone(),
                reason: format!("the fuse weight is in (0, 1], not {w}"),
            });
        }
        let refuse = |reason: String| Refused::Adapter {
            name: name.to_owned(),
            reason,
        };
        let parsed: embedstream_adapter::AdapterName =
            name.parse().map_err(|e| refuse(format!("{e}")))?;
        if parsed.new != m.to_model || parsed.old != m.from_model {
            return Err(refuse(format!(
                "it maps {} into {}; the migration is {} -> {} (it must map {} into {})",
                parsed.new, parsed.old, m.from_model, m.to_model, m.to_model, m.from_model
            )));
        }
        let gate = state.adapter_gate(&m.migration_id, consumer);
        if let Some(refusal) = adapter_gate_refusal(gate, consumer, name, *fuse) {
            if !force {
                return Err(Refused::AdapterGate(refusal));
            }
            forced = true;
        }
    }
    let old = ReadPlanEntry {
        adapter: adapter.map(|a| a.name.clone()),
        fuse: adapter.and_then(|a| a.fuse),
        ..entry(&m.from_model, 1.0 - new_weight)
    };
    let entries = if new_weight == 0.0 {
        vec![old]
    } else {
        vec![old, entry(&m.to_model, new_weight)]
    };
    let mut records = vec![plan_change(state, &m, consumer, entries, forced, by, now)];
    if new_weight > 0.0 {
        records.extend(reads_begin(&m, by, now));
    }
    Ok(records)
}

/// The phase change when a consumer starts reading the new version: BLENDED, unless the
/// migration is there or further already.
fn reads_begin(m: &MigrationRecord, by: &str, now: i64) -> Option<ControlRecord> {
    matches!(
        m.phase,
        MigrationPhase::DualWrite | MigrationPhase::Backfill | MigrationPhase::RolledBack
    )
    .then(|| phase_change(m, MigrationPhase::Blended, by, now))
    .flatten()
}

/// `migrate canary --consumer C --share S`: a share `S` of the consumer's units (users or
/// sessions, by a sticky hash salted with the migration id) read the new version alone; the
/// others keep the consumer's plan (which may itself be a blend). Raising the share keeps the
/// units already in the canary; `S = 0` ends the canary in one record, as a rollback does.
pub fn canary(
    state: &ControlState,
    consumer: &str,
    share: f64,
    known: &[String],
    by: &str,
    now: i64,
) -> Result<Vec<ControlRecord>, Refused> {
    let m = current(state)?.clone();
    check_consumer(consumer, known)?;
    if !(0.0..=1.0).contains(&share) || !share.is_finite() {
        return Err(Refused::Canary(format!(
            "share {share} is out of range: use 0 <= share <= 1 (0 ends the canary)"
        )));
    }
    let control = effective_plan(state, consumer);
    if share > 0.0 && reads_only(&control, &m.to_model) {
        return Err(Refused::Canary(format!(
            "{consumer} already reads {} only; a canary needs a control arm",
            m.to_model
        )));
    }
    let forced = state.plan(consumer).is_some_and(|p| p.forced);
    let mut change = plan_change(state, &m, consumer, control, forced, by, now);
    let started_at = state
        .canary(consumer)
        .filter(|c| c.salt == m.migration_id)
        .map_or(now, |c| c.started_at);
    if let Some(p) = change.read_plan.as_mut() {
        p.canary = (share > 0.0).then(|| CanarySplit {
            share,
            entries: vec![entry(&m.to_model, 1.0)],
            salt: m.migration_id.clone(),
            started_at,
        });
    }
    let mut records = vec![change];
    if share > 0.0 {
        records.extend(reads_begin(&m, by, now));
    }
    Ok(records)
}

/// Why the gate refuses `consumer`, or `None` when it lets it through.
pub fn gate_refusal(gate: Option<&GateResult>, consumer: &str) -> Option<String> {
    let Some(g) = gate else {
        return Some(format!(
            "{consumer}: no gate result; run `embedstream migrate gate`"
        ));
    };
    if g.coverage < MIN_COVERAGE {
        return Some(format!(
            "{consumer}: coverage {:.2}% < {:.0}%",
            g.coverage * 100.0,
            MIN_COVERAGE * 100.0
        ));
    }
    if !g.passed {
        return Some(format!(
            "{consumer}: {} new {:.3} vs old {:.3}, difference CI [{:+.3}, {:+.3}] below 0",
            g.metric, g.new_value, g.old_value, g.ci_low, g.ci_high
        ));
    }
    None
}

/// Why the adapter gate refuses reads of `consumer` through `adapter` (fused with `fuse`), or
/// `None` when it lets them through: its latest adapter gate measured this adapter with this
/// fuse weight and found the reads not worse than the old model's own queries beyond the
/// interval.
pub fn adapter_gate_refusal(
    gate: Option<&GateResult>,
    consumer: &str,
    adapter: &str,
    fuse: Option<f64>,
) -> Option<String> {
    let how = |a: &str, f: Option<f64>| match f {
        Some(w) => format!("{a} fused at {w}"),
        None => a.to_owned(),
    };
    let asked = how(adapter, fuse);
    let Some(g) = gate else {
        return Some(format!(
            "{consumer}: no adapter gate result; run `embedstream migrate gate --consumer {consumer} --adapter {adapter}{}`",
            fuse.map_or(String::new(), |w| format!(" --fuse {w}"))
        ));
    };
    let measured = how(g.adapter.as_deref().unwrap_or("-"), g.fuse);
    if measured != asked {
        return Some(format!(
            "{consumer}: the last adapter gate measured {measured}, not {asked}"
        ));
    }
    if !g.passed {
        return Some(format!(
            "{consumer}: {} through {asked} {:.3} vs the old model's own queries {:.3}, difference CI [{:+.3}, {:+.3}] below 0",
            g.metric, g.new_value, g.old_value, g.ci_low, g.ci_high
        ));
    }
    None
}

/// Whether a gate result passes: the new version's metric is not below the old one's beyond
/// the confidence interval of the difference (its upper bound is ≥ 0), and coverage ≥ 99%.
pub fn passes(ci_high: f64, coverage: f64) -> bool {
    ci_high >= 0.0 && coverage >= MIN_COVERAGE
}

fn consumers_of<'a>(consumer: Option<&'a str>, known: &'a [String]) -> Vec<&'a str> {
    consumer.map_or_else(|| known.iter().map(String::as_str).collect(), |c| vec![c])
}

/// `migrate cutover [--consumer C] [--force]`: the consumer(s) read the new version only —
/// refused unless each one's gate passed and, for a consumer whose request-level canary ran
/// in this migration, its online gate passed too (with `force`, written with `forced` set).
pub fn cutover(
    state: &ControlState,
    consumer: Option<&str>,
    force: bool,
    known: &[String],
    by: &str,
    now: i64,
) -> Result<Vec<ControlRecord>, Refused> {
    let m = current(state)?.clone();
    if let Some(c) = consumer {
        check_consumer(c, known)?;
    }
    let targets = consumers_of(consumer, known);
    let refusals: Vec<(String, String)> = targets
        .iter()
        .flat_map(|c| {
            let canary_ran = state
                .canary(c)
                .is_some_and(|split| split.salt == m.migration_id);
            [
                gate_refusal(state.gate(&m.migration_id, c), c),
                crate::canary::gate::online_refusal(
                    state.online_gate(&m.migration_id, c),
                    c,
                    canary_ran,
                ),
            ]
            .into_iter()
            .flatten()
            .map(|r| ((*c).to_owned(), r))
        })
        .collect();
    if !refusals.is_empty() && !force {
        return Err(Refused::Gate(
            refusals.into_iter().map(|(_, r)| r).collect(),
        ));
    }
    let mut records: Vec<ControlRecord> = targets
        .iter()
        .map(|c| {
            let forced = refusals.iter().any(|(r, _)| r == c);
            let mut change =
                plan_change(state, &m, c, vec![entry(&m.to_model, 1.0)], forced, by, now);
            // Every request reads the new version: the canary is over.
            if let Some(p) = change.read_plan.as_mut() {
                p.canary = None;
            }
            change
        })
        .collect();
    let all_new = known.iter().all(|c| {
        targets.contains(&c.as_str())
            || (reads_only(&effective_plan(state, c), &m.to_model)
                && !reads_model(state, c, &m.from_model))
    });
    if all_new {
        records.extend(phase_change(&m, MigrationPhase::Cutover, by, now));
    } else {
        records.extend(phase_change(&m, MigrationPhase::Blended, by, now));
    }
    Ok(records)
}

fn reads_only(entries: &[ReadPlanEntry], model: &str) -> bool {
    !entries.is_empty() && entries.iter().all(|e| e.model == model || e.weight == 0.0)
}

/// `migrate rollback [--consumer C]`: each consumer gets back the plan it had before this
/// migration changed it, in one record; the migration is ROLLED_BACK when every consumer reads
/// the old version only. Dual-write stays on and both indexes stay until decommission.
pub fn rollback(
    state: &ControlState,
    consumer: Option<&str>,
    known: &[String],
    by: &str,
    now: i64,
) -> Result<Vec<ControlRecord>, Refused> {
    let m = current(state)?.clone();
    if let Some(c) = consumer {
        check_consumer(c, known)?;
    }
    let targets = consumers_of(consumer, known);
    let mut records = Vec::new();
    for c in &targets {
        let restore = match state.plan(c) {
            Some(p) if plan_in_migration(state, c, &m) && !p.previous.is_empty() => {
                p.previous.clone()
            }
            _ => vec![entry(&m.from_model, 1.0)],
        };
        records.push(ControlRecord {
            read_plan: Some(ReadPlan {
                consumer: (*c).to_owned(),
                entries: restore.clone(),
                forced: false,
                previous: restore,
                canary: None,
            }),
            ..record(ControlKind::ReadPlan, by, now)
        });
    }
    let all_old = known
        .iter()
        .all(|c| targets.contains(&c.as_str()) || !reads_model(state, c, &m.to_model));
    if all_old {
        records.extend(phase_change(&m, MigrationPhase::RolledBack, by, now));
    }
    Ok(records)
}

/// `migrate decommission`: retires the version no consumer reads any more — the old one after
/// a full cutover, the new one after a full rollback — and closes the migration.
pub fn decommission(
    state: &ControlState,
    known: &[String],
    by: &str,
    now: i64,
) -> Result<Vec<ControlRecord>, Refused> {
    let m = current(state)?.clone();
    let reads = |model: &str| {
        known
            .iter()
            .filter(|c| reads_model(state, c, model))
            .cloned()
            .collect::<Vec<_>>()
    };
    let (old_readers, new_readers) = (reads(&m.from_model), reads(&m.to_model));
    // Every consumer reads the new version: retire the old one; the other way round after a
    // full rollback.
    let retire_old = match (old_readers.is_empty(), new_readers.is_empty()) {
        (true, false) => true,
        (false, true) => false,
        _ => {
            return Err(Refused::Decommission(format!(
                "consumers still read both versions (old: [{}], new: [{}]); cut them over or roll them back first",
                old_readers.join(", "),
                new_readers.join(", ")
            )));
        }
    };
    let retired = if retire_old {
        &m.from_model
    } else {
        &m.to_model
    };
    let model: ModelRef = retired.parse().map_err(|e| Refused::Model {
        model: retired.clone(),
        reason: format!("{e}"),
    })?;
    let version = i32::try_from(model.version).unwrap_or(i32::MAX);
    let record_of = state
        .model(&model.id, version)
        .cloned()
        .ok_or_else(|| Refused::Model {
            model: retired.clone(),
            reason: "not in the control log".to_owned(),
        })?;
    let mut records = vec![model_record(
        ModelVersionRecord {
            state: ModelState::Retired,
            ..record_of
        },
        by,
        now,
    )];
    records.extend(phase_change(&m, MigrationPhase::Decommissioned, by, now));
    Ok(records)
}

/// A gate record.
pub fn gate_record(gate: GateResult, by: &str, now: i64) -> ControlRecord {
    ControlRecord {
        gate: Some(gate),
        ..record(ControlKind::GateResult, by, now)
    }
}

#[cfg(test)]
mod tests;
