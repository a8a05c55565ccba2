use embedstream_schemas::control::key_of;
use embedstream_schemas::records::OnlineVerdict;

use super::*;

const OLD: &str = "minilm-l6-v2@1";
const NEW: &str = "mpnet-base-v2@1";

fn known() -> Vec<String> {
    ["ads", "search"].map(str::to_owned).to_vec()
}

fn spec(id: &str, dim: i32, state: ModelState) -> ModelVersionRecord {
    ModelVersionRecord {
        model_id: id.to_owned(),
        version: 1,
        architecture: "bert".to_owned(),
        dimension: dim,
        pooling: "mean".to_owned(),
        normalized: true,
        max_seq_length: 256,
        weights: "pypi:x".to_owned(),
        state,
        weights_folder: None,
        files: Vec::new(),
    }
}

fn apply(state: &mut ControlState, records: Vec<ControlRecord>) {
    for r in records {
        let key = key_of(&r).unwrap();
        state.apply(&key, Some(r)).unwrap();
    }
}

/// The old version active, the migration to the new one started.
fn started() -> ControlState {
    let mut s = ControlState::default();
    apply(
        &mut s,
        vec![model_record(
            spec("minilm-l6-v2", 384, ModelState::Active),
            "t",
            1,
        )],
    );
    let records = start(
        &s,
        &OLD.parse().unwrap(),
        &NEW.parse().unwrap(),
        spec("mpnet-base-v2", 768, ModelState::Registered),
        "t",
        2,
    )
    .unwrap();
    apply(&mut s, records);
    s
}

/// A cutover gate result of `consumer` in the current migration whose difference's interval
/// ends at `ci_high`.
fn gate_result(s: &ControlState, consumer: &str, ci_high: f64, coverage: f64) -> GateResult {
    GateResult {
        migration_id: current(s).unwrap().migration_id.clone(),
        consumer: consumer.to_owned(),
        metric: "recall@10".to_owned(),
        old_value: 0.8,
        new_value: 0.8 + ci_high - 0.01,
        ci_low: ci_high - 0.02,
        ci_high,
        coverage,
        passed: passes(ci_high, coverage),
        queries: 500,
        adapter: None,
        fuse: None,
        online: None,
    }
}

/// An online gate result of `consumer` in the current migration with `verdict`.
fn online_gate(s: &mut ControlState, consumer: &str, verdict: OnlineVerdict) {
    let policy = embedstream_schemas::consumers::CanaryPolicy::default();
    let arm = |rate: f64| crate::canary::stats::Tally {
        n: 100_000,
        sum: rate * 100_000.0,
        sum_sq: rate * 100_000.0,
    };
    let (c, t) = (arm(0.1), arm(0.1));
    let mut judged = crate::canary::gate::judge(&policy, &c, &t, None);
    judged.verdict = verdict;
    let id = current(s).unwrap().migration_id.clone();
    let g = crate::canary::gate::gate_result(&id, consumer, &policy, &c, &t, None, &judged, 7);
    apply(s, vec![gate_record(g, "t", 3)]);
}

fn gate(s: &mut ControlState, consumer: &str, ci_high: f64, coverage: f64) {
    let g = gate_result(s, consumer, ci_high, coverage);
    apply(s, vec![gate_record(g, "t", 3)]);
}

fn models(entries: &[ReadPlanEntry]) -> Vec<(String, f64)> {
    entries
        .iter()
        .map(|e| (e.model.clone(), e.weight))
        .collect()
}

#[test]
fn start_turns_dual_write_on_and_refuses_a_second_migration() {
    let s = started();
    assert_eq!(s.active_models().len(), 2, "the new version is written too");
    let m = current(&s).unwrap();
    assert_eq!(m.phase, MigrationPhase::DualWrite);
    assert_eq!((m.from_model.as_str(), m.to_model.as_str()), (OLD, NEW));
    let again = start(
        &s,
        &OLD.parse().unwrap(),
        &NEW.parse().unwrap(),
        spec("mpnet-base-v2", 768, ModelState::Registered),
        "t",
        3,
    );
    assert!(matches!(again, Err(Refused::InProgress { .. })));
    // Consumers without a plan read the old version.
    assert_eq!(
        models(&effective_plan(&s, "search")),
        [(OLD.to_owned(), 1.0)]
    );
}

#[test]
fn start_needs_an_active_source_version() {
    let s = ControlState::default();
    let r = start(
        &s,
        &OLD.parse().unwrap(),
        &NEW.parse().unwrap(),
        spec("mpnet-base-v2", 768, ModelState::Registered),
        "t",
        1,
    );
    assert!(matches!(r, Err(Refused::Model { .. })), "{r:?}");
}

#[test]
fn weights_blend_and_keep_the_plan_to_restore() {
    let mut s = started();
    let r = weight(&s, "search", 0.1, None, false, &known(), "t", 3).unwrap();
    apply(&mut s, r);
    let plan = s.plan("search").unwrap();
    assert_eq!(
        models(&plan.entries),
        [(OLD.to_owned(), 0.9), (NEW.to_owned(), 0.1)]
    );
    assert_eq!(models(&plan.previous), [(OLD.to_owned(), 1.0)]);
    assert_eq!(current(&s).unwrap().phase, MigrationPhase::Blended);
    let r = weight(&s, "search", 0.5, None, false, &known(), "t", 4).unwrap();
    apply(&mut s, r);
    assert_eq!(
        models(&s.plan("search").unwrap().previous),
        [(OLD.to_owned(), 1.0)],
        "the saved plan is the one before the migration, not the last blend"
    );
    assert!(matches!(
        weight(&s, "search", 1.0, None, false, &known(), "t", 5),
        Err(Refused::Weight(_))
    ));
    assert!(matches!(
        weight(&s, "nobody", 0.5, None, false, &known(), "t", 5),
        Err(Refused::UnknownConsumer { .. })
    ));
    assert!(weight(&s, "search", f64::NAN, None, false, &known(), "t", 5).is_err());
}

#[test]
fn cutover_is_refused_without_a_passing_gate_and_forced_is_recorded() {
    let mut s = started();
    let r = cutover(&s, Some("search"), false, &known(), "t", 3);
    assert!(
        matches!(&r, Err(Refused::Gate(v)) if v[0].contains("no gate result")),
        "{r:?}"
    );
    gate(&mut s, "search", -0.01, 1.0);
    let r = cutover(&s, Some("search"), false, &known(), "t", 3);
    assert!(
        matches!(&r, Err(Refused::Gate(v)) if v[0].contains("below 0")),
        "{r:?}"
    );
    gate(&mut s, "search", 0.02, 0.95);
    let r = cutover(&s, Some("search"), false, &known(), "t", 3);
    assert!(
        matches!(&r, Err(Refused::Gate(v)) if v[0].contains("coverage")),
        "{r:?}"
    );

    let r = cutover(&s, Some("search"), true, &known(), "t", 3).unwrap();
    apply(&mut s, r);
    let plan = s.plan("search").unwrap();
    assert!(plan.forced);
    assert_eq!(models(&plan.entries), [(NEW.to_owned(), 1.0)]);
    // Only one of two consumers is cut over.
    assert_eq!(current(&s).unwrap().phase, MigrationPhase::Blended);

    gate(&mut s, "ads", 0.0, 0.995);
    let r = cutover(&s, Some("ads"), false, &known(), "t", 4).unwrap();
    apply(&mut s, r);
    assert!(!s.plan("ads").unwrap().forced);
    assert_eq!(current(&s).unwrap().phase, MigrationPhase::Cutover);
}

#[test]
fn rollback_restores_the_plan_in_one_record_and_recutover_works() {
    let mut s = started();
    gate(&mut s, "search", 0.02, 1.0);
    gate(&mut s, "ads", 0.02, 1.0);
    let r = weight(&s, "ads", 0.5, None, false, &known(), "t", 3).unwrap();
    apply(&mut s, r);
    let r = cutover(&s, None, false, &known(), "t", 4).unwrap();
    apply(&mut s, r);
    assert_eq!(current(&s).unwrap().phase, MigrationPhase::Cutover);

    let r = rollback(&s, Some("ads"), &known(), "t", 5).unwrap();
    assert_eq!(r.len(), 1, "one record per consumer");
    apply(&mut s, r);
    assert_eq!(
        models(&s.plan("ads").unwrap().entries),
        [(OLD.to_owned(), 1.0)]
    );
    assert_eq!(
        models(&s.plan("search").unwrap().entries),
        [(NEW.to_owned(), 1.0)]
    );
    assert!(matches!(
        decommission(&s, &known(), "t", 6),
        Err(Refused::Decommission(_))
    ));

    let r = rollback(&s, None, &known(), "t", 6).unwrap();
    apply(&mut s, r);
    assert_eq!(current(&s).unwrap().phase, MigrationPhase::RolledBack);
    assert_eq!(
        s.active_models().len(),
        2,
        "dual-write stays on after a rollback"
    );

    let r = cutover(&s, None, false, &known(), "t", 7).unwrap();
    apply(&mut s, r);
    assert_eq!(current(&s).unwrap().phase, MigrationPhase::Cutover);
    assert_eq!(
        models(&s.plan("ads").unwrap().entries),
        [(NEW.to_owned(), 1.0)]
    );
    let r = rollback(&s, Some("ads"), &known(), "t", 8).unwrap();
    apply(&mut s, r);
    assert_eq!(
        models(&s.plan("ads").unwrap().entries),
        [(OLD.to_owned(), 1.0)],
        "a second rollback restores the same plan"
    );
}

#[test]
fn decommission_retires_the_version_nobody_reads() {
    let mut s = started();
    gate(&mut s, "search", 0.02, 1.0);
    gate(&mut s, "ads", 0.02, 1.0);
    let r = cutover(&s, None, false, &known(), "t", 3).unwrap();
    apply(&mut s, r);
    let r = decommission(&s, &known(), "t", 4).unwrap();
    apply(&mut s, r);
    let active: Vec<_> = s
        .active_models()
        .iter()
        .map(|m| m.model_id.clone())
        .collect();
    assert_eq!(active, ["mpnet-base-v2"]);
    assert!(s.current_migration().is_none());
    assert!(matches!(
        decommission(&s, &known(), "t", 5),
        Err(Refused::NoMigration)
    ));

    // A migration rolled back everywhere retires its new version.
    let mut s = started();
    let r = weight(&s, "ads", 0.5, None, false, &known(), "t", 3).unwrap();
    apply(&mut s, r);
    let r = rollback(&s, None, &known(), "t", 4).unwrap();
    apply(&mut s, r);
    let r = decommission(&s, &known(), "t", 5).unwrap();
    apply(&mut s, r);
    let active: Vec<_> = s
        .active_models()
        .iter()
        .map(|m| m.model_id.clone())
        .collect();
    assert_eq!(active, ["minilm-l6-v2"]);
}

fn adapter_gate(s: &mut ControlState, consumer: &str, adapter: &str, fuse: Option<f64>, ci: f64) {
    let g = GateResult {
        adapter: Some(adapter.to_owned()),
        fuse,
        ..gate_result(s, consumer, ci, 1.0)
    };
    apply(s, vec![gate_record(g, "t", 3)]);
}

fn read(name: &str, fuse: Option<f64>) -> AdapterRead {
    AdapterRead {
        name: name.to_owned(),
        fuse,
    }
}

#[test]
fn a_plan_can_read_the_old_version_through_an_adapter_its_gate_passed() {
    let mut s = started();
    let name = "mpnet-base-v2@1_to_minilm-l6-v2@1.procrustes.v2";
    let plain = read(name, None);
    adapter_gate(&mut s, "search", name, None, 0.01);
    let r = weight(&s, "search", 0.0, Some(&plain), false, &known(), "t", 3).unwrap();
    let plan = r[0].read_plan.as_ref().unwrap();
    assert_eq!(plan.entries.len(), 1);
    assert_eq!(plan.entries[0].model, "minilm-l6-v2@1");
    assert_eq!(plan.entries[0].adapter.as_deref(), Some(name));
    assert_eq!(plan.entries[0].fuse, None);
    assert!(!plan.forced);
    let r = weight(&s, "search", 0.25, Some(&plain), false, &known(), "t", 3).unwrap();
    let e = &r[0].read_plan.as_ref().unwrap().entries;
    assert_eq!((e[0].weight, e[0].adapter.as_deref()), (0.75, Some(name)));
    assert_eq!(
        (e[1].model.as_str(), e[1].adapter.as_deref()),
        ("mpnet-base-v2@1", None)
    );
    for wrong in [
        "minilm-l6-v2@1_to_mpnet-base-v2@1.procrustes.v1",
        "mpnet-base-v2@2_to_minilm-l6-v2@1.affine.v1",
        "not-an-adapter",
    ] {
        assert!(
            matches!(
                weight(
                    &s,
                    "search",
                    0.0,
                    Some(&read(wrong, None)),
                    true,
                    &known(),
                    "t",
                    3
                ),
                Err(Refused::Adapter { .. })
            ),
            "{wrong}"
        );
    }
    for w in [0.0, -0.5, 1.5, f64::NAN] {
        assert!(matches!(
            weight(
                &s,
                "search",
                0.0,
                Some(&read(name, Some(w))),
                true,
                &known(),
                "t",
                3
            ),
            Err(Refused::Adapter { .. })
        ));
    }
}

#[test]
fn the_adapter_gate_refuses_reads_it_did_not_pass_and_force_is_recorded() {
    let mut s = started();
    let name = "mpnet-base-v2@1_to_minilm-l6-v2@1.procrustes.v2";
    let fused = read(name, Some(0.5));
    let refused = |s: &ControlState, a: &AdapterRead, consumer: &str| match weight(
        s,
        consumer,
        0.0,
        Some(a),
        false,
        &known(),
        "t",
        3,
    ) {
        Err(Refused::AdapterGate(why)) => why,
        other => panic!("not refused by the gate: {other:?}"),
    };
    // No gate yet.
    assert!(refused(&s, &fused, "search").contains("no adapter gate result"));
    // A gate of the adapter alone does not cover fused reads, nor another consumer's.
    adapter_gate(&mut s, "search", name, None, 0.02);
    assert!(refused(&s, &fused, "search").contains("not"));
    assert!(refused(&s, &fused, "ads").contains("no adapter gate result"));
    // Fused reads measured worse than the old model's own queries.
    adapter_gate(&mut s, "search", name, Some(0.5), -0.01);
    assert!(refused(&s, &fused, "search").contains("below 0"));
    // Forced: written, and marked.
    let r = weight(&s, "search", 0.0, Some(&fused), true, &known(), "t", 3).unwrap();
    let plan = r[0].read_plan.as_ref().unwrap();
    assert!(plan.forced);
    assert_eq!(plan.entries[0].fuse, Some(0.5));
    // Measured not worse: accepted without force.
    adapter_gate(&mut s, "search", name, Some(0.5), 0.03);
    let r = weight(&s, "search", 0.0, Some(&fused), false, &known(), "t", 3).unwrap();
    assert!(!r[0].read_plan.as_ref().unwrap().forced);
    // The cutover gate is apart from the adapter gate.
    assert!(
        s.gate(&current(&s).unwrap().migration_id, "search")
            .is_none()
    );
}

#[test]
fn a_canary_splits_requests_keeps_its_units_and_ends_in_one_record() {
    let mut s = started();
    let k = known();
    assert!(matches!(
        canary(&s, "ads", 1.5, &k, "t", 5),
        Err(Refused::Canary(_))
    ));
    assert!(matches!(
        canary(&s, "nobody", 0.1, &k, "t", 5),
        Err(Refused::UnknownConsumer { .. })
    ));
    let records = canary(&s, "ads", 0.01, &k, "t", 5).unwrap();
    assert_eq!(records.len(), 2, "the plan and the phase (BLENDED)");
    apply(&mut s, records);
    let split = s.canary("ads").unwrap().clone();
    assert_eq!(split.share, 0.01);
    assert_eq!(models(&split.entries), vec![(NEW.to_owned(), 1.0)]);
    assert_eq!(
        models(&effective_plan(&s, "ads")),
        vec![(OLD.to_owned(), 1.0)]
    );
    assert!(s.canary("search").is_none());
    assert_eq!(current(&s).unwrap().phase, MigrationPhase::Blended);

    // Raising the share keeps when it began; a blend of the control arm keeps the canary.
    let r = canary(&s, "ads", 0.05, &k, "t", 9).unwrap();
    apply(&mut s, r);
    assert_eq!(s.canary("ads").unwrap().started_at, 5);
    let r = weight(&s, "ads", 0.2, None, false, &k, "t", 10).unwrap();
    apply(&mut s, r);
    assert_eq!(s.canary("ads").unwrap().share, 0.05);
    assert_eq!(
        models(&effective_plan(&s, "ads")),
        vec![(OLD.to_owned(), 0.8), (NEW.to_owned(), 0.2)]
    );

    // While a canary reads the new version, neither version can be decommissioned.
    assert!(matches!(
        decommission(&s, &k, "t", 11),
        Err(Refused::Decommission(_))
    ));

    // Share 0 ends it in one record, leaving the control arm as it was.
    let end = canary(&s, "ads", 0.0, &k, "t", 12).unwrap();
    assert_eq!(end.len(), 1);
    apply(&mut s, end);
    assert!(s.canary("ads").is_none());
    assert_eq!(
        models(&effective_plan(&s, "ads")),
        vec![(OLD.to_owned(), 0.8), (NEW.to_owned(), 0.2)]
    );

    // Rollback ends a canary in the same one record that restores the plan.
    let r = canary(&s, "ads", 0.05, &k, "t", 13).unwrap();
    apply(&mut s, r);
    let back = rollback(&s, Some("ads"), &k, "t", 14).unwrap();
    let plans: Vec<_> = back.iter().filter_map(|r| r.read_plan.as_ref()).collect();
    assert_eq!(plans.len(), 1);
    apply(&mut s, back);
    assert!(s.canary("ads").is_none());
    assert_eq!(
        models(&effective_plan(&s, "ads")),
        vec![(OLD.to_owned(), 1.0)]
    );

    // A cut-over consumer has no control arm left; a cutover ends a running canary. While
    // the canary runs, the cutover also needs its online gate to pass.
    let r = canary(&s, "search", 0.05, &k, "t", 15).unwrap();
    apply(&mut s, r);
    gate(&mut s, "search", 0.01, 1.0);
    let refused = |s: &ControlState| match cutover(s, Some("search"), false, &k, "t", 16) {
        Err(Refused::Gate(reasons)) => reasons.join("; "),
        other => panic!("{other:?}"),
    };
    assert!(refused(&s).contains("no online verdict"), "{}", refused(&s));
    for verdict in [
        OnlineVerdict::Pending,
        OnlineVerdict::Regression,
        OnlineVerdict::Parity,
    ] {
        online_gate(&mut s, "search", verdict);
        assert!(
            refused(&s).contains(&format!("{verdict:?}")),
            "{}",
            refused(&s)
        );
    }
    online_gate(&mut s, "search", OnlineVerdict::Passed);
    let r = cutover(&s, Some("search"), false, &k, "t", 16).unwrap();
    apply(&mut s, r);
    assert!(s.canary("search").is_none());
    assert!(matches!(
        canary(&s, "search", 0.05, &k, "t", 17),
        Err(Refused::Canary(_))
    ));
}

#[test]
fn a_failed_online_gate_is_overridden_only_by_force_and_stays_after_the_canary_ends() {
    let mut s = started();
    let k = known();
    let r = canary(&s, "ads", 0.05, &k, "t", 5).unwrap();
    apply(&mut s, r);
    gate(&mut s, "ads", 0.01, 1.0);
    online_gate(&mut s, "ads", OnlineVerdict::Regression);
    // Ending the canary does not clear its verdict: the cutover stays refused.
    let r = canary(&s, "ads", 0.0, &k, "t", 6).unwrap();
    apply(&mut s, r);
    assert!(matches!(
        cutover(&s, Some("ads"), false, &k, "t", 7),
        Err(Refused::Gate(_))
    ));
    let r = cutover(&s, Some("ads"), true, &k, "t", 7).unwrap();
    apply(&mut s, r);
    assert!(s.plan("ads").unwrap().forced);
    // A consumer whose canary never ran needs no online gate.
    gate(&mut s, "search", 0.01, 1.0);
    assert!(cutover(&s, Some("search"), false, &k, "t", 8).is_ok());
}
