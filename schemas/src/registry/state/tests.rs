use super::*;

const V1: &str = r#"{"type":"record","name":"R","fields":[{"name":"a","type":"string"}]}"#;
const V2_DEFAULT: &str = r#"{"type":"record","name":"R","fields":[{"name":"a","type":"string"},{"name":"b","type":"int","default":0}]}"#;
const V2_BREAKING: &str = r#"{"type":"record","name":"R","fields":[{"name":"a","type":"string"},{"name":"b","type":"int"}]}"#;

fn apply(state: &mut RegistryState, record: &LogRecord) {
    state.apply(&record.key, record.value.as_deref()).unwrap();
}

fn register(state: &mut RegistryState, subject: &str, text: &str) -> Result<u32, RegistryError> {
    match state.plan_register(subject, text)? {
        Registration::Existing { id } => Ok(id),
        Registration::New { id, record, .. } => {
            apply(state, &record);
            Ok(id)
        }
    }
}

#[test]
fn ids_are_global_and_reused_for_the_same_schema() {
    let mut s = RegistryState::default();
    assert_eq!(register(&mut s, "a-value", V1), Ok(1));
    // Same schema again, with other whitespace and key order: same id, no new version.
    let reordered =
        r#"{ "fields": [ {"type":"string", "name":"a"} ], "name":"R", "type":"record" }"#;
    assert_eq!(register(&mut s, "a-value", reordered), Ok(1));
    assert_eq!(s.versions("a-value", false).unwrap(), vec![1]);
    // Same schema under another subject: same id, that subject's version 1.
    assert_eq!(register(&mut s, "b-value", V1), Ok(1));
    assert_eq!(
        s.version("b-value", VersionSpec::Latest, false)
            .unwrap()
            .version,
        1
    );
    // A new schema: a new id and version 2.
    assert_eq!(register(&mut s, "a-value", V2_DEFAULT), Ok(2));
    let latest = s.version("a-value", VersionSpec::Latest, false).unwrap();
    assert_eq!((latest.version, latest.id), (2, 2));
    assert_eq!(
        s.versions_of_id(1, false).unwrap(),
        vec![("a-value".to_owned(), 1), ("b-value".to_owned(), 1)]
    );
    assert_eq!(s.subjects(false), vec!["a-value", "b-value"]);
}

#[test]
fn incompatible_schemas_are_refused_until_compatibility_is_none() {
    let mut s = RegistryState::default();
    register(&mut s, "x", V1).unwrap();
    let err = register(&mut s, "x", V2_BREAKING).unwrap_err();
    assert_eq!(err.error_code(), 409, "{err}");
    assert_eq!(s.versions("x", false).unwrap(), vec![1]);

    apply(
        &mut s,
        &RegistryState::plan_set_config(Some("x"), Compatibility::None),
    );
    assert_eq!(s.compatibility("x"), Compatibility::None);
    assert_eq!(s.compatibility("other"), Compatibility::Backward);
    assert_eq!(register(&mut s, "x", V2_BREAKING), Ok(2));

    let (old, record) = s.plan_delete_config("x").unwrap();
    assert_eq!(old, Compatibility::None);
    apply(&mut s, &record);
    assert_eq!(s.subject_compatibility("x"), None);
}

#[test]
fn global_config_applies_to_subjects_without_their_own() {
    let mut s = RegistryState::default();
    apply(
        &mut s,
        &RegistryState::plan_set_config(None, Compatibility::Forward),
    );
    assert_eq!(s.compatibility("any"), Compatibility::Forward);
    register(&mut s, "x", V1).unwrap();
    // FORWARD: adding a required field is fine (old readers ignore it).
    assert_eq!(register(&mut s, "x", V2_BREAKING), Ok(2));
}

#[test]
fn invalid_schemas_store_nothing() {
    let s = RegistryState::default();
    for bad in [
        "{not json",
        r#"{"type":"recordz","name":"R"}"#,
        r#"{"type":"record","name":"R","fields":[{"name":"a","type":"nope"}]}"#,
    ] {
        let err = s.plan_register("x", bad).unwrap_err();
        assert_eq!(err.error_code(), 42201, "{bad}: {err}");
    }
    assert!(s.subjects(true).is_empty());
}

#[test]
fn lookups_and_not_found_errors() {
    let mut s = RegistryState::default();
    register(&mut s, "x", V1).unwrap();
    assert_eq!(s.lookup("x", V1, false).unwrap().version, 1);
    assert_eq!(
        s.lookup("x", V2_DEFAULT, false).unwrap_err().error_code(),
        40403
    );
    assert_eq!(s.lookup("y", V1, false).unwrap_err().error_code(), 40401);
    assert_eq!(
        s.version("x", VersionSpec::Number(7), false)
            .unwrap_err()
            .error_code(),
        40402
    );
    assert_eq!(s.schema_by_id(99).unwrap_err().error_code(), 40403);
    assert_eq!(VersionSpec::parse("0").unwrap_err().error_code(), 42202);
    assert_eq!(VersionSpec::parse("abc").unwrap_err().error_code(), 42202);
    assert_eq!(VersionSpec::parse("-1"), Ok(VersionSpec::Latest));
}

#[test]
fn soft_then_permanent_delete() {
    let mut s = RegistryState::default();
    register(&mut s, "x", V1).unwrap();
    register(&mut s, "x", V2_DEFAULT).unwrap();
    assert_eq!(
        s.plan_delete_subject("x", true).unwrap_err().error_code(),
        40405
    );

    let (versions, records) = s.plan_delete_subject("x", false).unwrap();
    assert_eq!(versions, vec![1, 2]);
    records.iter().for_each(|r| apply(&mut s, r));
    assert!(s.subjects(false).is_empty());
    assert_eq!(s.subjects(true), vec!["x"]);
    assert_eq!(s.versions("x", false).unwrap_err().error_code(), 40401);
    assert_eq!(s.versions("x", true).unwrap(), vec![1, 2]);
    // Ids stay readable (old records still decode).
    assert!(s.schema_by_id(1).is_ok());
    assert_eq!(
        s.plan_delete_subject("x", false).unwrap_err().error_code(),
        40404
    );

    let (_, records) = s.plan_delete_subject("x", true).unwrap();
    records.iter().for_each(|r| apply(&mut s, r));
    assert!(s.subjects(true).is_empty());
    // Re-registering after a permanent delete starts at version 1 with the old id.
    assert_eq!(register(&mut s, "x", V1), Ok(1));
}

#[test]
fn a_deleted_version_does_not_constrain_compatibility() {
    let mut s = RegistryState::default();
    register(&mut s, "x", V1).unwrap();
    let (v, record) = s
        .plan_delete_version("x", VersionSpec::Latest, false)
        .unwrap();
    assert_eq!(v, 1);
    apply(&mut s, &record);
    // Nothing live left to be compatible with; the next version number still grows.
    match s.plan_register("x", V2_BREAKING).unwrap() {
        Registration::New { version, .. } => assert_eq!(version, 2),
        other => panic!("{other:?}"),
    }
}

#[test]
fn replaying_the_log_rebuilds_the_same_state() {
    let mut s = RegistryState::default();
    let mut log = Vec::new();
    for (subject, text) in [("a", V1), ("a", V2_DEFAULT), ("b", V1)] {
        if let Registration::New { record, .. } = s.plan_register(subject, text).unwrap() {
            apply(&mut s, &record);
            log.push(record);
        }
    }
    let cfg = RegistryState::plan_set_config(None, Compatibility::Full);
    apply(&mut s, &cfg);
    log.push(cfg);

    let mut replayed = RegistryState::default();
    // Twice: applying is idempotent.
    for r in log.iter().chain(log.iter()) {
        apply(&mut replayed, r);
    }
    assert_eq!(replayed.subjects(false), s.subjects(false));
    assert_eq!(
        replayed.version("a", VersionSpec::Latest, false),
        s.version("a", VersionSpec::Latest, false)
    );
    assert_eq!(replayed.global_compatibility(), Compatibility::Full);
    assert_eq!(replayed.lookup("b", V1, false).unwrap().id, 1);
}

#[test]
fn keys_match_confluents_layout() {
    let record = RegistryState::plan_set_config(None, Compatibility::None);
    assert_eq!(
        String::from_utf8(record.key).unwrap(),
        r#"{"keytype":"CONFIG","subject":null,"magic":0}"#
    );
    assert_eq!(
        String::from_utf8(record.value.unwrap()).unwrap(),
        r#"{"compatibilityLevel":"NONE"}"#
    );
}
