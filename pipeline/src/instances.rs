//! Sink instances announcing themselves on `embedstream.instances` (compacted, keyed by
//! instance id, Avro `SinkInstance` through the registry), and routers following it.
//!
//! - [`announce`] runs beside a sink: it reads the topic's high watermarks when the instance
//!   starts, then asks the sink's own `/v1/stats` every [`ANNOUNCE_EVERY`]. The instance is
//!   *ready* once its consumer has passed every partition's start watermark: it holds what
//!   the topic held when it started. It announces at once when that changes and every
//!   [`HEARTBEAT`] otherwise (with its lag and items). At shutdown it writes the tombstone
//!   first and only then lets the sink stop, after [`DRAIN`], so routers stop sending it
//!   queries before it stops answering. Broker or registry trouble delays announcements;
//!   the sink serves meanwhile.
//! - [`retire`] writes an instance's tombstone from anywhere (`embedstream slices retire`):
//!   routers stop using the instance at once, and the instance, which watches its own key,
//!   stops announcing and stops after [`DRAIN`].
//! - [`follow`] reads the topic from the beginning into a router's
//!   [`embedstream_router::Backends`] and keeps following it: an announcement adds or
//!   refreshes an instance, a tombstone forgets it. A record that cannot be decoded is skipped
//!   with a warning (the instance's next announcement replaces it); registry trouble waits.

use std::collections::BTreeMap;
use std::time::Duration;

use embedstream_router::Backends;
use embedstream_schemas::Codec;
use embedstream_schemas::records::SinkInstance;
use embedstream_topics::KafkaConfig;
use embedstream_topics::admin::{Admin, instances_topic};
use embedstream_topics::names::TopicNames;
use embedstream_topics::time::now_ms;
use futures::StreamExt;
use rdkafka::consumer::Consumer;
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};
use tokio_util::sync::CancellationToken;

use crate::error::Result;
use crate::range::{new_reader, partitions, watermarks};
use crate::stage::prepare::decode_waiting;
use crate::stage::produce::encode;

/// How often an announcer asks its sink how it is doing.
pub const ANNOUNCE_EVERY: Duration = Duration::from_secs(1);
/// Longest time between two announcements of an unchanged instance.
pub const HEARTBEAT: Duration = Duration::from_secs(10);
/// How long a retiring instance keeps answering after its tombstone.
pub const DRAIN: Duration = Duration::from_secs(2);

/// What an instance announces, besides what its sink reports.
#[derive(Debug, Clone)]
pub struct Announcement {
    /// Unique name of the instance (the record's key).
    pub instance_id: String,
    /// The version it serves (`id@version`).
    pub model: String,
    /// Its embedding topic.
    pub topic: String,
    /// Its slice.
    pub slice: embedstream_topics::slice::Slice,
    /// Its replica pool.
    pub pool: String,
    /// A hot standby.
    pub standby: bool,
    /// Where routers reach it.
    pub url: String,
    /// Where the announcer asks it for `/v1/stats` (its own address).
    pub stats_url: String,
    /// Certificates (PEM) to trust when that address is HTTPS, besides the system's.
    pub trust_pem: Option<Vec<u8>>,
}

/// Announces the instance until `shutdown`, then writes its tombstone and cancels `sink` after
/// [`DRAIN`]. Returns when `sink` is cancelled.
pub fn announce(
    kafka: KafkaConfig,
    registry_url: &str,
    names: &TopicNames,
    who: Announcement,
    shutdown: CancellationToken,
    sink: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    let codec = Codec::new(registry_url);
    let spec = instances_topic(names);
    tokio::spawn(async move {
        let announcer = Announcer {
            kafka,
            codec,
            topic: spec.name.clone(),
            who,
            started_at: now_ms(),
        };
        // The announcements stop at shutdown; the tombstone then goes out before the sink
        // stops.
        if let Some(producer) = announcer.run(&spec, &shutdown).await {
            announcer.retire(&producer).await;
            tokio::time::sleep(DRAIN).await;
        }
        sink.cancel();
    })
}

struct Announcer {
    kafka: KafkaConfig,
    codec: Codec,
    topic: String,
    who: Announcement,
    started_at: i64,
}

impl Announcer {
    /// Announces until shutdown; the producer, once it could be made.
    async fn run(
        &self,
        spec: &embedstream_topics::admin::TopicSpec,
        shutdown: &CancellationToken,
    ) -> Option<FutureProducer> {
        let mut backoff = Duration::from_millis(200);
        let producer = loop {
            match self.open(spec).await {
                Ok(p) => break p,
                Err(e) => {
                    tracing::warn!(error = %e, topic = %self.topic, "Cannot announce the instance yet; retrying.");
                    tokio::select! {
                        () = shutdown.cancelled() => return None,
                        () = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        };
        let start = loop {
            match self.start_watermarks(shutdown).await {
                Ok(w) => break w,
                Err(_) if shutdown.is_cancelled() => return Some(producer),
                Err(e) => {
                    tracing::warn!(error = %e, topic = %self.who.topic, "Cannot read the topic's watermarks yet; retrying.");
                    tokio::select! {
                        () = shutdown.cancelled() => return Some(producer),
                        () = tokio::time::sleep(Duration::from_secs(1)) => {}
                    }
                }
            }
        };
        let mut client = reqwest::Client::builder().timeout(Duration::from_secs(5));
        if let Some(pem) = &self.who.trust_pem {
            for cert in reqwest::Certificate::from_pem_bundle(pem).unwrap_or_default() {
                client = client.add_root_certificate(cert);
            }
        }
        let client = client.build().unwrap_or_default();
        let stats_url = format!("{}/v1/stats", self.who.stats_url.trim_end_matches('/'));
        let mut ready = false;
        let mut last: Option<(bool, i64)> = None;
        // Cancelled when the instance's tombstone appears after its first announcement.
        let retired = CancellationToken::new();
        let mut watching: Option<tokio::task::JoinHandle<()>> = None;
        let mut tick = tokio::time::interval(ANNOUNCE_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = shutdown.cancelled() => break,
                () = retired.cancelled() => {
                    tracing::info!(instance = %self.who.instance_id, "The instance was retired; it stops after draining its queries.");
                    break;
                }
                _ = tick.tick() => {}
            }
            let Some(stats) = stats(&client, &stats_url).await else {
                continue;
            };
            let positions: BTreeMap<i32, i64> =
                serde_json::from_value(stats["consumer"]["positions"].clone()).unwrap_or_default();
            if !ready {
                ready = start
                    .iter()
                    .all(|(p, &high)| high == 0 || positions.get(p).is_some_and(|&at| at >= high));
                if ready {
                    tracing::info!(instance = %self.who.instance_id, slice = %self.who.slice, "Caught up with the topic; announcing the instance ready.");
                }
            }
            let record = SinkInstance {
                instance_id: self.who.instance_id.clone(),
                model: self.who.model.clone(),
                topic: self.who.topic.clone(),
                slice: self.who.slice.index() as i32,
                slices: self.who.slice.count() as i32,
                pool: self.who.pool.clone(),
                standby: self.who.standby,
                url: self.who.url.clone(),
                ready,
                lag: stats["lag"].as_i64().unwrap_or(-1),
                items: stats["items"].as_i64().unwrap_or(0),
                started_at: self.started_at,
                announced_at: now_ms(),
            };
            let due = last
                .is_none_or(|(r, at)| r != ready || now_ms() - at >= HEARTBEAT.as_millis() as i64);
            if due && let Some(offset) = self.send(&producer, Some(&record)).await {
                last = Some((ready, record.announced_at));
                if watching.is_none() {
                    watching = Some(watch_for_retirement(
                        self.kafka.clone(),
                        self.topic.clone(),
                        self.who.instance_id.clone(),
                        offset + 1,
                        retired.clone(),
                    ));
                }
            }
        }
        if let Some(w) = watching {
            w.abort();
        }
        Some(producer)
    }

    async fn open(
        &self,
        spec: &embedstream_topics::admin::TopicSpec,
    ) -> std::result::Result<FutureProducer, String> {
        Admin::new(&self.kafka, Duration::from_secs(30))
            .map_err(|e| e.to_string())?
            .ensure(std::slice::from_ref(spec))
            .await
            .map_err(|e| e.to_string())?;
        self.kafka
            .client()
            .set("message.timeout.ms", "10000")
            .set("linger.ms", "0")
            .create()
            .map_err(|e| e.to_string())
    }

    async fn start_watermarks(&self, shutdown: &CancellationToken) -> Result<BTreeMap<i32, i64>> {
        let reader = new_reader(&self.kafka, "announce")?;
        let mut out = BTreeMap::new();
        for p in partitions(&reader, &self.who.topic, &self.kafka, shutdown).await? {
            let (_, high) = watermarks(&reader, &self.who.topic, p, &self.kafka, shutdown).await?;
            out.insert(p, high);
        }
        Ok(out)
    }

    /// Writes the announcement (or the tombstone); its offset when the broker took it.
    async fn send(&self, producer: &FutureProducer, record: Option<&SinkInstance>) -> Option<i64> {
        let payload = match record {
            Some(r) => match encode(&self.codec, &self.topic, r).await {
                Ok(p) => Some(p),
                Err(e) => {
                    tracing::warn!(error = %e, "The instance's announcement cannot be encoded.");
                    return None;
                }
            },
            None => None,
        };
        let mut out = FutureRecord::<str, Vec<u8>>::to(&self.topic).key(&self.who.instance_id);
        if let Some(p) = &payload {
            out = out.payload(p);
        }
        match producer.send(out, Duration::from_secs(10)).await {
            Ok(delivery) => Some(delivery.offset),
            Err((e, _)) => {
                tracing::warn!(error = %e, "The instance's announcement was not delivered.");
                None
            }
        }
    }

    async fn retire(&self, producer: &FutureProducer) {
        let sent = tokio::time::timeout(Duration::from_secs(10), self.send(producer, None)).await;
        if matches!(sent, Ok(Some(_))) {
            tracing::info!(instance = %self.who.instance_id, "Retired the instance's announcement.");
        } else {
            tracing::warn!(instance = %self.who.instance_id, "The instance's retirement was not delivered; routers find it down.");
        }
    }
}

/// Cancels `retired` when `instance_id`'s tombstone appears on `topic` at or after `from`.
fn watch_for_retirement(
    kafka: KafkaConfig,
    topic: String,
    instance_id: String,
    from: i64,
    retired: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut backoff = Duration::from_millis(200);
        let reader = loop {
            match follower(&kafka, &topic, Offset::Offset(from)) {
                Ok(r) => break r,
                Err(e) => {
                    tracing::warn!(error = %e, topic, "Cannot watch the instance's key yet; retrying.");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        };
        let mut stream = reader.stream();
        while let Some(message) = stream.next().await {
            let Ok(message) = message else { continue };
            if message.key() == Some(instance_id.as_bytes()) && message.payload().is_none() {
                retired.cancel();
                return;
            }
        }
    })
}

/// A consumer of the announcements' one partition from `offset`, outside any group, without
/// end-of-partition events (a follower idles there).
fn follower(
    kafka: &KafkaConfig,
    topic: &str,
    offset: Offset,
) -> std::result::Result<rdkafka::consumer::StreamConsumer, rdkafka::error::KafkaError> {
    let reader: rdkafka::consumer::StreamConsumer = kafka
        .client()
        .set(
            "group.id",
            format!("embedstream-instances-{}", uuid::Uuid::new_v4()),
        )
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("fetch.wait.max.ms", "100")
        .create()?;
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, 0, offset)?;
    reader.assign(&tpl)?;
    Ok(reader)
}

/// Writes `instance_id`'s tombstone: routers forget the instance, and the instance stops.
pub async fn retire(
    kafka: &KafkaConfig,
    names: &TopicNames,
    instance_id: &str,
) -> anyhow::Result<()> {
    let producer: FutureProducer = kafka.client().set("message.timeout.ms", "10000").create()?;
    let topic = names.instances();
    producer
        .send(
            FutureRecord::<str, [u8]>::to(&topic).key(instance_id),
            Duration::from_secs(10),
        )
        .await
        .map_err(|(e, _)| anyhow::anyhow!("the retirement was not delivered: {e}"))?;
    Ok(())
}

/// Every instance announced now (the topic read to its end): id → its last announcement.
pub async fn read_all(
    kafka: &KafkaConfig,
    registry_url: &str,
    names: &TopicNames,
    shutdown: &CancellationToken,
) -> Result<BTreeMap<String, SinkInstance>> {
    let topic = names.instances();
    let codec = Codec::new(registry_url);
    let reader = new_reader(kafka, "instances-list")?;
    let (low, high) = watermarks(&reader, &topic, 0, kafka, shutdown).await?;
    let mut out = BTreeMap::new();
    if high <= low {
        return Ok(out);
    }
    let mut range = crate::range::PartitionRange::open(kafka, &topic, 0, low, high)?;
    while let Some(m) = range.next(shutdown).await? {
        let Some(key) = m
            .key()
            .and_then(|k| std::str::from_utf8(k).ok())
            .map(str::to_owned)
        else {
            continue;
        };
        match m.payload() {
            None => {
                out.remove(&key);
            }
            Some(bytes) => match decode_waiting::<SinkInstance>(&codec, bytes, shutdown).await {
                None => break,
                Some(Ok(i)) if i.instance_id == key => {
                    out.insert(key, i);
                }
                Some(_) => tracing::warn!(key, "An undecodable announcement; skipped."),
            },
        }
    }
    Ok(out)
}

async fn stats(client: &reqwest::Client, url: &str) -> Option<serde_json::Value> {
    let r = client.get(url).send().await.ok()?;
    if !r.status().is_success() {
        return None;
    }
    r.json().await.ok()
}

/// Follows `embedstream.instances` into `backends` until `shutdown` (see the module docs).
pub fn follow(
    kafka: KafkaConfig,
    registry_url: &str,
    names: &TopicNames,
    backends: Backends,
    shutdown: CancellationToken,
) {
    let codec = Codec::new(registry_url);
    let spec = instances_topic(names);
    tokio::spawn(async move {
        let topic = spec.name.clone();
        let mut backoff = Duration::from_millis(200);
        let reader = loop {
            let ready = async {
                Admin::new(&kafka, Duration::from_secs(30))?
                    .ensure(std::slice::from_ref(&spec))
                    .await?;
                anyhow::Ok(follower(&kafka, &topic, Offset::Beginning)?)
            };
            match ready.await {
                Ok(r) => break r,
                Err(e) => {
                    tracing::warn!(error = %e, topic, "Cannot follow the instances' announcements yet; retrying.");
                    tokio::select! {
                        () = shutdown.cancelled() => return,
                        () = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        };
        let mut stream = reader.stream();
        loop {
            let message = tokio::select! {
                () = shutdown.cancelled() => return,
                m = stream.next() => m,
            };
            let message = match message {
                Some(Ok(m)) => m,
                Some(Err(e)) => {
                    tracing::warn!(error = %e, topic, "Reading the instances' announcements failed; going on.");
                    continue;
                }
                None => return,
            };
            let Some(key) = message.key().and_then(|k| std::str::from_utf8(k).ok()) else {
                continue;
            };
            let Some(payload) = message.payload() else {
                backends.forget(key);
                tracing::info!(instance = key, "An instance retired.");
                continue;
            };
            match decode_waiting::<SinkInstance>(&codec, payload, &shutdown).await {
                None => return,
                Some(Ok(instance)) if instance.instance_id == key => backends.announce(&instance),
                Some(Ok(instance)) => {
                    tracing::warn!(key, id = %instance.instance_id, "An announcement's key is not its instance id; skipped.");
                }
                Some(Err(e)) => {
                    tracing::warn!(error = %e, key, offset = message.offset(), "An undecodable announcement; skipped.");
                }
            }
        }
    });
}
