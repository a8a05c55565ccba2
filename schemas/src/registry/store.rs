//! The registry's storage: the compacted `_schemas` topic, written through and read back.
//!
//! One reader task follows the topic from the beginning and applies every record to the
//! in-memory state; a write is answered only after the reader has applied it, so what a
//! client is told is what a restarted registry will rebuild. Writes are serialized by one
//! lock, so ids and versions are assigned in order. One registry process writes at a time
//! (there is no leader election): run one per cluster, as a single local service.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use embedstream_topics::KafkaConfig;
use futures::StreamExt;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};
use tokio::sync::{Mutex, watch};
use tokio_util::sync::CancellationToken;

use super::StartError;
use super::error::RegistryError;
use super::state::{LogRecord, RegistryState};

/// The state, its log, and the write lock.
#[derive(Clone)]
pub struct Store {
    state: Arc<RwLock<RegistryState>>,
    producer: FutureProducer,
    topic: String,
    applied: watch::Receiver<i64>,
    write_lock: Arc<Mutex<()>>,
    write_timeout: Duration,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("topic", &self.topic)
            .finish_non_exhaustive()
    }
}

/// A held write lock: plan against the state it guards, then [`WriteGuard::append`].
#[derive(Debug)]
pub struct WriteGuard<'a> {
    store: &'a Store,
    _lock: tokio::sync::MutexGuard<'a, ()>,
}

impl Store {
    /// Opens the log: creates the topic if needed, replays it to its end, and keeps following it.
    pub async fn open(
        kafka: &KafkaConfig,
        topic: &str,
        write_timeout: Duration,
        shutdown: CancellationToken,
    ) -> Result<Self, StartError> {
        let bootstrap = kafka.bootstrap();
        let admin = embedstream_topics::admin::Admin::new(kafka, write_timeout)
            .map_err(|e| StartError::Topic { source: e })?;
        admin
            .ensure(&[embedstream_topics::admin::TopicSpec::compacted(topic, 1)])
            .await
            .map_err(|e| StartError::Topic { source: e })?;

        let kafka_error = |source| StartError::Kafka {
            bootstrap: bootstrap.to_owned(),
            source,
        };
        let producer: FutureProducer = kafka
            .client()
            .set("acks", "all")
            .set("linger.ms", "0")
            .set("message.timeout.ms", write_timeout.as_millis().to_string())
            .create()
            .map_err(kafka_error)?;
        let consumer: StreamConsumer = kafka
            .client()
            .set(
                "group.id",
                format!("embedstream-registry-{}", std::process::id()),
            )
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "earliest")
            .create()
            .map_err(kafka_error)?;
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(topic, 0, Offset::Beginning)
            .map_err(kafka_error)?;
        consumer.assign(&tpl).map_err(kafka_error)?;
        // A broker that has just started may not have elected the partition's leader yet:
        // ask again until the write timeout has passed.
        let deadline = tokio::time::Instant::now() + write_timeout;
        let high = loop {
            match consumer.fetch_watermarks(topic, 0, write_timeout) {
                Ok((_, high)) => break high,
                Err(e) if tokio::time::Instant::now() < deadline => {
                    tracing::warn!(error = %e, topic, "Cannot read the schemas log's end yet; asking again.");
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
                Err(e) => return Err(kafka_error(e)),
            }
        };

        let state = Arc::new(RwLock::new(RegistryState::default()));
        let (applied_tx, applied) = watch::channel(0i64);
        tokio::spawn(follow(consumer, state.clone(), applied_tx, shutdown));

        let store = Self {
            state,
            producer,
            topic: topic.to_owned(),
            applied,
            write_lock: Arc::new(Mutex::new(())),
            write_timeout,
        };
        // Serve only once the log has been read to where it ended at start.
        store
            .wait_applied(high, Duration::from_secs(120))
            .await
            .map_err(|e| StartError::Replay {
                reason: e.to_string(),
            })?;
        tracing::info!(topic, records = high, "Replayed the schemas log.");
        Ok(store)
    }

    /// Reads the state.
    pub fn read<T>(&self, f: impl FnOnce(&RegistryState) -> T) -> T {
        let guard = self
            .state
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        f(&guard)
    }

    /// Takes the write lock.
    pub async fn lock(&self) -> WriteGuard<'_> {
        WriteGuard {
            store: self,
            _lock: self.write_lock.lock().await,
        }
    }

    async fn wait_applied(&self, offset: i64, timeout: Duration) -> Result<(), RegistryError> {
        let mut applied = self.applied.clone();
        tokio::time::timeout(timeout, applied.wait_for(|a| *a >= offset))
            .await
            .map_err(|_| RegistryError::Timeout {
                reason: format!("offset {offset} was not read back within {timeout:?}"),
            })?
            .map_err(|_| RegistryError::Store {
                reason: "the log reader stopped".to_owned(),
            })?;
        Ok(())
    }
}

impl WriteGuard<'_> {
    /// Reads the state under the write lock (for planning).
    pub fn read<T>(&self, f: impl FnOnce(&RegistryState) -> T) -> T {
        self.store.read(f)
    }

    /// Appends records in order and returns once they are applied.
    pub async fn append(&self, records: &[LogRecord]) -> Result<(), RegistryError> {
        let mut last = None;
        for r in records {
            let mut record = FutureRecord::<[u8], [u8]>::to(&self.store.topic)
                .key(&r.key)
                .partition(0);
            if let Some(v) = &r.value {
                record = record.payload(v);
            }
            let delivery = self
                .store
                .producer
                .send(record, self.store.write_timeout)
                .await
                .map_err(|(e, _)| RegistryError::Store {
                    reason: e.to_string(),
                })?;
            last = Some(delivery.offset);
        }
        if let Some(offset) = last {
            self.store
                .wait_applied(offset + 1, self.store.write_timeout)
                .await?;
        }
        Ok(())
    }
}

async fn follow(
    consumer: StreamConsumer,
    state: Arc<RwLock<RegistryState>>,
    applied: watch::Sender<i64>,
    shutdown: CancellationToken,
) {
    let mut stream = consumer.stream();
    loop {
        let msg = tokio::select! {
            () = shutdown.cancelled() => return,
            msg = stream.next() => msg,
        };
        match msg {
            None => return,
            Some(Err(e)) => {
                tracing::warn!(error = %e, "Error reading the schemas log; retrying.");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Some(Ok(m)) => {
                let Some(key) = m.key() else {
                    applied.send_replace(m.offset() + 1);
                    continue;
                };
                let result = state
                    .write()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .apply(key, m.payload());
                if let Err(reason) = result {
                    tracing::warn!(offset = m.offset(), %reason, "Skipped a schemas log record.");
                }
                applied.send_replace(m.offset() + 1);
            }
        }
    }
}
