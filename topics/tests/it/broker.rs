//! The Kafka features the platform relies on, checked against the broker the tests run on
//! (Apache Kafka, started by `compose/dev test`): topic configs, idempotent writes, offsets by
//! time (past the end too), commits, rebalances, transactions, the log cleaner compacting and
//! expiring tombstones, and topic deletion that touches only the topic named.

use std::time::Duration;

use embedstream_topics::admin::{Admin, TopicSpec};
use embedstream_topics::testing::{kafka, unique};
use rdkafka::admin::{AdminClient, AdminOptions, ResourceSpecifier};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Message, Offset, TopicPartitionList};

async fn topic(partitions: i32) -> (Admin, String) {
    let admin = Admin::new(&kafka(), Duration::from_secs(10)).unwrap();
    let name = unique("it-broker");
    admin
        .ensure(&[TopicSpec::compacted(&name, partitions)])
        .await
        .unwrap();
    (admin, name)
}

#[tokio::test]
async fn topic_configs_are_stored_and_described() {
    let (_, name) = topic(1).await;
    let raw: AdminClient<DefaultClientContext> = kafka().client().create().unwrap();
    let described = raw
        .describe_configs(&[ResourceSpecifier::Topic(&name)], &AdminOptions::new())
        .await
        .unwrap();
    let resource = described.into_iter().next().unwrap().unwrap();
    let policy = resource
        .entries
        .iter()
        .find(|e| e.name == "cleanup.policy")
        .and_then(|e| e.value.clone());
    assert_eq!(policy.as_deref(), Some("compact"));
}

#[tokio::test]
async fn idempotent_producer_commits_and_time_lookups() {
    let (_, name) = topic(1).await;
    let producer: FutureProducer = kafka()
        .client()
        .set("enable.idempotence", "true")
        .create()
        .unwrap();
    for (i, ts) in [1000i64, 2000, 3000].into_iter().enumerate() {
        let d = producer
            .send(
                FutureRecord::to(&name)
                    .key(&format!("k{i}"))
                    .payload("v")
                    .partition(0)
                    .timestamp(ts),
                Duration::from_secs(10),
            )
            .await
            .unwrap();
        assert_eq!(d.offset, i as i64);
    }
    let consumer: BaseConsumer = kafka()
        .client()
        .set("group.id", unique("it-group"))
        .create()
        .unwrap();
    assert_eq!(
        consumer
            .fetch_watermarks(&name, 0, Duration::from_secs(5))
            .unwrap(),
        (0, 3)
    );
    // List offsets by time: the first record at or after the time; past the newest, the end.
    for (target, expected) in [(500, 0), (1500, 1), (2500, 2), (3000, 2)] {
        let mut q = TopicPartitionList::new();
        q.add_partition_offset(&name, 0, Offset::Offset(target))
            .unwrap();
        let found = consumer
            .offsets_for_times(q, Duration::from_secs(5))
            .unwrap();
        assert_eq!(
            found.elements()[0].offset(),
            Offset::Offset(expected),
            "{target}"
        );
    }
    let mut q = TopicPartitionList::new();
    q.add_partition_offset(&name, 0, Offset::Offset(3500))
        .unwrap();
    let past_the_end = consumer
        .offsets_for_times(q, Duration::from_secs(5))
        .unwrap();
    assert_eq!(past_the_end.elements()[0].offset(), Offset::End);
    let mut commit = TopicPartitionList::new();
    commit
        .add_partition_offset(&name, 0, Offset::Offset(2))
        .unwrap();
    consumer.commit(&commit, CommitMode::Sync).unwrap();
    let committed = consumer
        .committed_offsets(commit.clone(), Duration::from_secs(5))
        .unwrap();
    assert_eq!(committed.elements()[0].offset(), Offset::Offset(2));
}

#[test]
fn a_consumer_group_rebalances_when_members_join_and_leave() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (_, name) = rt.block_on(topic(4));
    let group = unique("it-rebalance");
    let member = || {
        let c: BaseConsumer = kafka()
            .client()
            .set("group.id", &group)
            .set("session.timeout.ms", "6000")
            .create()
            .unwrap();
        c.subscribe(&[&name]).unwrap();
        c
    };
    let count = |c: &BaseConsumer| c.assignment().unwrap().count();
    let poll_until = |members: &[&BaseConsumer], done: &dyn Fn() -> bool| {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while !done() {
            assert!(std::time::Instant::now() < deadline, "no rebalance in 30 s");
            for m in members {
                let _ = m.poll(Duration::from_millis(50));
            }
        }
    };
    let a = member();
    poll_until(&[&a], &|| count(&a) == 4);
    let b = member();
    poll_until(&[&a, &b], &|| count(&a) == 2 && count(&b) == 2);
    drop(b);
    poll_until(&[&a], &|| count(&a) == 4);
}

/// Reads every record of partition 0 of `topic` from its beginning: (key, value or None for a
/// tombstone).
fn read_all(topic: &str) -> Vec<(String, Option<String>)> {
    let consumer: BaseConsumer = kafka()
        .client()
        .set("group.id", unique("it-read"))
        .set("enable.partition.eof", "true")
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, 0, Offset::Beginning)
        .unwrap();
    consumer.assign(&tpl).unwrap();
    let mut out = Vec::new();
    loop {
        match consumer.poll(Duration::from_secs(10)) {
            Some(Ok(m)) => out.push((
                String::from_utf8_lossy(m.key().unwrap_or_default()).into_owned(),
                m.payload().map(|v| String::from_utf8_lossy(v).into_owned()),
            )),
            Some(Err(rdkafka::error::KafkaError::PartitionEOF(_))) => return out,
            Some(Err(e)) => panic!("{e}"),
            None => panic!("no end of partition in 10 s"),
        }
    }
}

/// The log cleaner really runs: older records of a key go, a tombstone goes after
/// `delete.retention.ms`, and the newest value of every live key stays.
#[tokio::test]
async fn the_log_cleaner_compacts_and_expires_tombstones() {
    let admin = Admin::new(&kafka(), Duration::from_secs(10)).unwrap();
    let name = unique("it-cleaner");
    admin
        .ensure(&[TopicSpec::compacted(&name, 1)
            .with_config("segment.ms", "100")
            .with_config("min.cleanable.dirty.ratio", "0.01")
            .with_config("delete.retention.ms", "500")])
        .await
        .unwrap();
    let producer: FutureProducer = kafka().client().create().unwrap();
    let send = async |key: &str, value: Option<&str>| {
        let mut r = FutureRecord::<str, str>::to(&name).key(key).partition(0);
        if let Some(v) = value {
            r = r.payload(v);
        }
        producer
            .send(r, Duration::from_secs(10))
            .await
            .map_err(|(e, _)| e)
            .unwrap();
    };
    for round in 0..3 {
        for key in ["a", "b", "c"] {
            send(key, Some(&format!("{key}{round}"))).await;
        }
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    send("c", None).await;
    // Segments roll only on a write after `segment.ms`; the active one is never cleaned.
    let deadline = std::time::Instant::now() + Duration::from_secs(90);
    loop {
        tokio::time::sleep(Duration::from_millis(300)).await;
        send("roll", Some("x")).await;
        let records: Vec<(String, Option<String>)> = read_all(&name)
            .into_iter()
            .filter(|(k, _)| k != "roll")
            .collect();
        let want = [
            ("a".to_owned(), Some("a2".to_owned())),
            ("b".to_owned(), Some("b2".to_owned())),
        ];
        if records == want {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the cleaner did not compact in 90 s: {records:?}"
        );
    }
}

/// Transactions: a read_committed consumer sees committed records, never aborted ones.
#[tokio::test]
async fn transactions_commit_and_abort() {
    use rdkafka::producer::Producer;
    let (_, name) = topic(1).await;
    let producer: FutureProducer = kafka()
        .client()
        .set("transactional.id", unique("it-txn"))
        .create()
        .unwrap();
    let timeout = Duration::from_secs(30);
    producer.init_transactions(timeout).unwrap();
    for (key, commit) in [("kept", true), ("aborted", false)] {
        producer.begin_transaction().unwrap();
        producer
            .send(
                FutureRecord::<str, str>::to(&name).key(key).payload("v"),
                timeout,
            )
            .await
            .map_err(|(e, _)| e)
            .unwrap();
        if commit {
            producer.commit_transaction(timeout).unwrap();
        } else {
            producer.abort_transaction(timeout).unwrap();
        }
    }
    let consumer: BaseConsumer = kafka()
        .client()
        .set("group.id", unique("it-txn-read"))
        .set("isolation.level", "read_committed")
        .set("enable.partition.eof", "true")
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(&name, 0, Offset::Beginning)
        .unwrap();
    consumer.assign(&tpl).unwrap();
    let mut keys = Vec::new();
    loop {
        match consumer.poll(Duration::from_secs(10)) {
            Some(Ok(m)) => keys.push(String::from_utf8_lossy(m.key().unwrap()).into_owned()),
            Some(Err(rdkafka::error::KafkaError::PartitionEOF(_))) => break,
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(keys, ["kept"]);
}

/// Deleting a topic deletes that topic only.
#[tokio::test]
async fn deleting_a_topic_leaves_the_others() {
    let (admin, doomed) = topic(1).await;
    let (_, kept) = topic(1).await;
    admin.delete(&[&doomed]).await.unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while admin.partitions(&doomed).unwrap().is_some() {
        assert!(
            std::time::Instant::now() < deadline,
            "{doomed} still listed"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(admin.partitions(&kept).unwrap(), Some(1));
    // Deleting what is not there is not an error.
    admin.delete(&[&doomed]).await.unwrap();
}
