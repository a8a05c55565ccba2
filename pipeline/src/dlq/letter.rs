//! Building a dead letter: the envelope on `items.dlq` and its Kafka Connect headers.

use embedstream_schemas::records::{DeadLetter, SourceCoordinates};
use embedstream_topics::time::now_ms;
use rdkafka::message::{Header, OwnedHeaders};
use sha2::{Digest, Sha256};

use crate::hex;
use crate::stage::validate::Poison;

/// The header names of Kafka Connect's dead-letter queue
/// (`errors.deadletterqueue.context.headers.enable`), so tools written for Connect's DLQs read
/// ours.
pub mod headers {
    /// Topic the failed record was read from.
    pub const TOPIC: &str = "__connect.errors.topic";
    /// Its partition (decimal text).
    pub const PARTITION: &str = "__connect.errors.partition";
    /// Its offset (decimal text).
    pub const OFFSET: &str = "__connect.errors.offset";
    /// The process that dead-lettered it (the stage's name).
    pub const CONNECTOR: &str = "__connect.errors.connector.name";
    /// Where in processing it failed: `VALUE_CONVERTER` (decoding) or `TASK_PUT` (checks).
    pub const STAGE: &str = "__connect.errors.stage";
    /// The component that failed.
    pub const CLASS: &str = "__connect.errors.class.name";
    /// The error kind (`malformed_avro`, `text_too_long`, ...).
    pub const EXCEPTION: &str = "__connect.errors.exception.class.name";
    /// The error message.
    pub const MESSAGE: &str = "__connect.errors.exception.message";
    /// Bytes of the whole original value.
    pub const ORIGINAL_SIZE: &str = "embedstream.original.size";
    /// Hex SHA-256 of the whole original value.
    pub const ORIGINAL_SHA256: &str = "embedstream.original.sha256";
}

/// The error kinds raised while decoding (Connect's `VALUE_CONVERTER` stage).
const DECODE_KINDS: &[&str] = &[
    "malformed_framing",
    "unknown_schema_id",
    "wrong_schema",
    "malformed_avro",
    "invalid_utf8",
];

/// Longest message kept, in bytes (cut on a character boundary).
const MAX_MESSAGE_BYTES: usize = 4096;

/// How dead letters are written.
#[derive(Debug, Clone, Copy)]
pub struct DeadLetterPolicy {
    /// The original key and value are each cut to this many bytes, so a dead letter stays
    /// under the broker's record limit whatever the input was; the size and SHA-256 of the
    /// whole value are kept. A cut letter cannot be replayed.
    pub max_original_bytes: usize,
}

impl Default for DeadLetterPolicy {
    fn default() -> Self {
        Self {
            max_original_bytes: 256 * 1024,
        }
    }
}

/// A failed record as read.
#[derive(Debug)]
pub struct Failed<'a> {
    /// Its key.
    pub key: Option<&'a [u8]>,
    /// Its value.
    pub value: Option<&'a [u8]>,
    /// Where it was read.
    pub source: SourceCoordinates,
}

/// The dead letter of `failed` and the headers that go with it.
pub fn dead_letter(
    failed: &Failed<'_>,
    poison: &Poison,
    stage: &str,
    policy: DeadLetterPolicy,
) -> (DeadLetter, OwnedHeaders) {
    let limit = policy.max_original_bytes;
    let cut = |b: &[u8]| b[..b.len().min(limit)].to_vec();
    let truncated = failed.key.is_some_and(|k| k.len() > limit)
        || failed.value.is_some_and(|v| v.len() > limit);
    let size = failed
        .value
        .map(|v| i64::try_from(v.len()).unwrap_or(i64::MAX));
    let sha256 = failed.value.map(|v| hex(&Sha256::digest(v)));
    let message = cut_message(&poison.message);
    let letter = DeadLetter {
        original_key: failed.key.map(cut),
        original_value: failed.value.map(cut),
        source: failed.source.clone(),
        error_kind: poison.kind.to_owned(),
        message: message.clone(),
        stage: stage.to_owned(),
        failed_at: now_ms(),
        original_value_size: size,
        original_value_sha256: sha256.clone(),
        truncated,
    };
    let step = if DECODE_KINDS.contains(&poison.kind) {
        "VALUE_CONVERTER"
    } else {
        "TASK_PUT"
    };
    let (partition, offset) = (
        failed.source.partition.to_string(),
        failed.source.offset.to_string(),
    );
    let mut h = OwnedHeaders::new();
    for (key, value) in [
        (headers::TOPIC, Some(failed.source.topic.as_str())),
        (headers::PARTITION, Some(partition.as_str())),
        (headers::OFFSET, Some(offset.as_str())),
        (headers::CONNECTOR, Some(stage)),
        (headers::STAGE, Some(step)),
        (headers::CLASS, Some("io.embedstream.EmbedStage")),
        (headers::EXCEPTION, Some(poison.kind)),
        (headers::MESSAGE, Some(message.as_str())),
        (
            headers::ORIGINAL_SIZE,
            size.map(|s| s.to_string()).as_deref(),
        ),
        (headers::ORIGINAL_SHA256, sha256.as_deref()),
    ] {
        if let Some(value) = value {
            h = h.insert(Header {
                key,
                value: Some(value),
            });
        }
    }
    (letter, h)
}

fn cut_message(message: &str) -> String {
    if message.len() <= MAX_MESSAGE_BYTES {
        return message.to_owned();
    }
    let mut end = MAX_MESSAGE_BYTES;
    while !message.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &message[..end])
}

#[cfg(test)]
mod tests {
    use rdkafka::message::Headers;

    use super::*;

    fn failed<'a>(key: Option<&'a [u8]>, value: Option<&'a [u8]>) -> Failed<'a> {
        Failed {
            key,
            value,
            source: SourceCoordinates {
                topic: "items".into(),
                partition: 2,
                offset: 41,
            },
        }
    }

    fn poison(kind: &'static str, message: &str) -> Poison {
        Poison {
            kind,
            message: message.into(),
        }
    }

    fn header(h: &OwnedHeaders, name: &str) -> Option<String> {
        h.iter()
            .find(|x| x.key == name)
            .and_then(|x| x.value)
            .map(|v| String::from_utf8(v.to_vec()).unwrap())
    }

    #[test]
    fn a_value_over_the_limit_is_cut_with_its_size_and_hash_kept() {
        let value = vec![7u8; 1000];
        let policy = DeadLetterPolicy {
            max_original_bytes: 100,
        };
        let (l, h) = dead_letter(
            &failed(Some(b"k"), Some(&value)),
            &poison("text_too_long", "too long"),
            "embed-stage",
            policy,
        );
        assert!(l.truncated);
        assert_eq!(l.original_value.as_deref(), Some(&value[..100]));
        assert_eq!(l.original_key.as_deref(), Some(&b"k"[..]));
        assert_eq!(l.original_value_size, Some(1000));
        let digest = hex(&Sha256::digest(&value));
        assert_eq!(l.original_value_sha256.as_deref(), Some(digest.as_str()));
        assert_eq!(header(&h, headers::ORIGINAL_SHA256), Some(digest));
        assert_eq!(header(&h, headers::ORIGINAL_SIZE).as_deref(), Some("1000"));
        assert_eq!(header(&h, headers::STAGE).as_deref(), Some("TASK_PUT"));
    }

    #[test]
    fn a_small_record_is_kept_whole_and_named_in_connect_headers() {
        let (l, h) = dead_letter(
            &failed(Some(b"k"), Some(b"\x01abc")),
            &poison("malformed_framing", "no magic byte"),
            "embed-stage",
            DeadLetterPolicy::default(),
        );
        assert!(!l.truncated);
        assert_eq!(l.original_value.as_deref(), Some(&b"\x01abc"[..]));
        assert_eq!(header(&h, headers::TOPIC).as_deref(), Some("items"));
        assert_eq!(header(&h, headers::PARTITION).as_deref(), Some("2"));
        assert_eq!(header(&h, headers::OFFSET).as_deref(), Some("41"));
        assert_eq!(
            header(&h, headers::EXCEPTION).as_deref(),
            Some("malformed_framing")
        );
        assert_eq!(
            header(&h, headers::MESSAGE).as_deref(),
            Some("no magic byte")
        );
        assert_eq!(
            header(&h, headers::STAGE).as_deref(),
            Some("VALUE_CONVERTER")
        );
        assert_eq!(
            hex(&Sha256::digest(b"")),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }

    #[test]
    fn a_tombstone_has_no_size_and_a_long_key_or_message_is_cut() {
        let key = vec![b'k'; 300];
        let message = "é".repeat(3000);
        let (l, _) = dead_letter(
            &failed(Some(&key), None),
            &poison("missing_key", &message),
            "embed-stage",
            DeadLetterPolicy {
                max_original_bytes: 256,
            },
        );
        assert!(l.truncated, "the key was cut");
        assert_eq!(l.original_key.map(|k| k.len()), Some(256));
        assert_eq!(
            (l.original_value_size, l.original_value_sha256),
            (None, None)
        );
        assert!(l.message.len() <= MAX_MESSAGE_BYTES + '…'.len_utf8());
        assert!(l.message.ends_with('…'));
    }
}
