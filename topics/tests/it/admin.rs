use std::time::Duration;

use embedstream_topics::admin::{Admin, Ensured, TopicSpec};
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
        TopicSpec::compacted(&compacted, 3, 1),
        TopicSpec::retained(&plain, 2, 1, Duration::from_secs(3600)),
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
                partitions: 3
            },
            Ensured::Existed {
                name: plain.clone(),
                partitions: 2
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
        .ensure(&[TopicSpec::compacted(&name, 1, 1)])
        .await
        .unwrap();
    let err = admin
        .ensure(&[TopicSpec::compacted(&name, 4, 1)])
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
