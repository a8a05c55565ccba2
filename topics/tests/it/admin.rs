use std::time::Duration;

use embedstream_topics::admin::{Admin, Ensured, TopicSpec};
use embedstream_topics::kafka::Replication;
use embedstream_topics::testing::{kafka, unique};

fn admin() -> Admin {
    Admin::new(&kafka(), Duration::from_secs(10)).unwrap()
}

#[tokio::test]
async fn ensure_creates_then_accepts_existing_topics() {
    let admin = admin();
    let compacted = unique("it-compacted");
    let plain = unique("it-retained");
    let specs = vec![
        TopicSpec::compacted(&compacted, 3),
        TopicSpec::retained(&plain, 2, Duration::from_secs(3600)),
    ];
    let first = admin.ensure(&specs).await.unwrap();
    assert_eq!(
        first,
        vec![
            Ensured::Created(compacted.clone()),
            Ensured::Created(plain.clone())
        ]
    );
    assert_eq!(admin.partitions(&compacted).unwrap(), Some(3));
    assert_eq!(admin.partitions(&plain).unwrap(), Some(2));

    let second = admin.ensure(&specs).await.unwrap();
    assert_eq!(
        second,
        vec![
            Ensured::Existed {
                name: compacted.clone(),
                partitions: 3,
                differences: vec![]
            },
            Ensured::Existed {
                name: plain.clone(),
                partitions: 2,
                differences: vec![]
            }
        ]
    );
    let listed = admin.list().unwrap();
    assert!(
        listed
            .iter()
            .any(|t| t.name == compacted && t.partitions == 3)
    );
}

#[tokio::test]
async fn ensure_refuses_a_topic_with_too_few_partitions() {
    let admin = admin();
    let name = unique("it-small");
    admin
        .ensure(&[TopicSpec::compacted(&name, 1)])
        .await
        .unwrap();
    let err = admin
        .ensure(&[TopicSpec::compacted(&name, 4)])
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("fewer than the 4 configured"),
        "{err}"
    );
}

#[tokio::test]
async fn unknown_topic_has_no_partitions() {
    assert_eq!(admin().partitions(&unique("it-missing")).unwrap(), None);
}

#[tokio::test]
async fn ensure_reports_each_difference_of_an_existing_topic() {
    let admin = admin();
    let name = unique("it-differs");
    // Made by someone else: delete instead of compact, short tombstone retention, more partitions.
    admin
        .ensure(&[TopicSpec::retained(&name, 3, Duration::from_secs(60))
            .with_config("delete.retention.ms", "1000")])
        .await
        .unwrap();
    let ensured = admin
        .ensure(&[TopicSpec::compacted(&name, 2)])
        .await
        .unwrap();
    let [Ensured::Existed { differences, .. }] = ensured.as_slice() else {
        panic!("{ensured:?}");
    };
    let by_setting = |s: &str| differences.iter().find(|d| d.setting == s).cloned();
    assert_eq!(
        by_setting("cleanup.policy").map(|d| (d.wanted, d.actual)),
        Some(("compact".to_owned(), Some("delete".to_owned())))
    );
    assert_eq!(
        by_setting("delete.retention.ms").map(|d| (d.wanted, d.actual)),
        Some(("86400000".to_owned(), Some("1000".to_owned())))
    );
    assert_eq!(
        by_setting("partitions").map(|d| (d.wanted, d.actual)),
        Some(("2".to_owned(), Some("3".to_owned())))
    );
    assert_eq!(differences.len(), 3, "{differences:?}");
}

/// Every topic takes its replication from the one setting: `min.insync.replicas` lands on the
/// topic, and a factor the one-node cluster cannot meet is refused by the broker.
#[tokio::test]
async fn created_topics_take_the_clusters_replication_setting() {
    let replicated = |factor, min_insync| {
        Admin::new(
            &kafka().with_replication(Replication {
                factor: Some(factor),
                min_insync: Some(min_insync),
            }),
            Duration::from_secs(10),
        )
        .unwrap()
    };
    let name = unique("it-replication");
    let ensured = replicated(1, 1)
        .ensure(&[TopicSpec::compacted(&name, 1)])
        .await
        .unwrap();
    assert_eq!(ensured, vec![Ensured::Created(name.clone())]);
    let again = replicated(1, 1)
        .ensure(&[TopicSpec::compacted(&name, 1)])
        .await
        .unwrap();
    assert!(
        matches!(&again[..], [Ensured::Existed { differences, .. }] if differences.is_empty()),
        "min.insync.replicas=1 and one replica are on the topic: {again:?}"
    );
    // The same topic checked against another setting reports both.
    let stricter = replicated(3, 2)
        .ensure(&[TopicSpec::compacted(&name, 1)])
        .await
        .unwrap();
    let [Ensured::Existed { differences, .. }] = stricter.as_slice() else {
        panic!("{stricter:?}");
    };
    let settings: Vec<&str> = differences.iter().map(|d| d.setting.as_str()).collect();
    assert_eq!(settings, ["replication.factor", "min.insync.replicas"]);
    let err = replicated(3, 2)
        .ensure(&[TopicSpec::compacted(unique("it-replication"), 1)])
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("InvalidReplicationFactor"),
        "{err}"
    );
}
