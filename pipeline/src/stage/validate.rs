//! What the embed stage does with one consumed record: embed it, delete it, or dead-letter it
//! with a reason. Pure: decoding happens before, producing after.

use std::collections::HashMap;

use embedstream_schemas::CodecError;
use embedstream_schemas::records::{ItemEvent, ItemOp};

/// The work one valid record asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Work {
    /// Embed `text` and write it under `item_id` on every active version.
    Upsert {
        /// Item id (the output key).
        item_id: String,
        /// What is embedded: the title (when present) and the text.
        text: String,
        /// Producer's event time, ms.
        event_time: i64,
        /// The event's attributes, carried to the embedding records.
        attributes: HashMap<String, String>,
        /// The event's `producer.request_id`, carried to the embedding records.
        request_id: Option<String>,
    },
    /// Write a tombstone for `item_id` on every active version.
    Delete {
        /// Item id (the output key).
        item_id: String,
        /// Producer's event time, ms, when the delete was an event (not a bare tombstone).
        event_time: Option<i64>,
    },
}

impl Work {
    /// The output key.
    pub fn item_id(&self) -> &str {
        match self {
            Self::Upsert { item_id, .. } | Self::Delete { item_id, .. } => item_id,
        }
    }
}

/// Why a record is dead-lettered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Poison {
    /// Fixed, machine-readable reason (a metrics label and the DLQ's `error_kind`).
    pub kind: &'static str,
    /// Human-readable explanation.
    pub message: String,
}

impl Poison {
    fn new(kind: &'static str, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
        }
    }
}

impl From<&CodecError> for Poison {
    fn from(e: &CodecError) -> Self {
        Self::new(e.kind(), e.to_string())
    }
}

/// Limits on what is accepted.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Largest text (title + text, UTF-8 bytes) accepted; longer is dead-lettered rather
    /// than silently truncated, because the producer most likely sent the wrong field.
    pub max_text_bytes: usize,
}

/// A Kafka tombstone on `items` (no value): a delete of the item named by the key.
pub fn tombstone(key: Option<&[u8]>) -> Result<Work, Poison> {
    let key = key.ok_or_else(|| Poison::new("missing_key", "a tombstone without a key"))?;
    let item_id = std::str::from_utf8(key).map_err(|e| {
        Poison::new(
            "invalid_utf8",
            format!("the tombstone's key is not UTF-8: {e}"),
        )
    })?;
    if item_id.trim().is_empty() {
        return Err(Poison::new("missing_key", "a tombstone with an empty key"));
    }
    Ok(Work::Delete {
        item_id: item_id.to_owned(),
        event_time: None,
    })
}

/// Checks a decoded item event.
pub fn event(event: ItemEvent, limits: Limits) -> Result<Work, Poison> {
    if event.item_id.trim().is_empty() {
        return Err(Poison::new("missing_key", "item_id is empty"));
    }
    match event.op {
        ItemOp::Delete => Ok(Work::Delete {
            item_id: event.item_id,
            event_time: Some(event.event_time),
        }),
        ItemOp::Unknown => Err(Poison::new(
            "unknown_op",
            format!(
                "item {}: the op is not one this stage knows (written by a newer schema?)",
                event.item_id
            ),
        )),
        ItemOp::Upsert => {
            let text = event.text.as_deref().unwrap_or("");
            if text.trim().is_empty() {
                return Err(Poison::new(
                    "empty_text",
                    format!("item {}: an upsert needs a non-blank text", event.item_id),
                ));
            }
            let text = match event.title.as_deref().map(str::trim) {
                Some(title) if !title.is_empty() => format!("{title}\n{text}"),
                _ => text.to_owned(),
            };
            if text.len() > limits.max_text_bytes {
                return Err(Poison::new(
                    "text_too_long",
                    format!(
                        "item {}: text is {} bytes, over the limit of {}",
                        event.item_id,
                        text.len(),
                        limits.max_text_bytes
                    ),
                ));
            }
            Ok(Work::Upsert {
                item_id: event.item_id,
                text,
                event_time: event.event_time,
                attributes: event.attributes,
                request_id: event.producer.and_then(|p| p.request_id),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    const LIMITS: Limits = Limits { max_text_bytes: 20 };

    fn ev(op: ItemOp, text: Option<&str>, title: Option<&str>) -> ItemEvent {
        ItemEvent {
            item_id: "a".into(),
            op,
            text: text.map(Into::into),
            title: title.map(Into::into),
            attributes: HashMap::new(),
            event_time: 5,
            producer: None,
        }
    }

    #[test]
    fn upserts_get_their_title_and_deletes_pass() {
        assert_eq!(
            event(ev(ItemOp::Upsert, Some("body"), Some("Title")), LIMITS),
            Ok(Work::Upsert {
                item_id: "a".into(),
                text: "Title\nbody".into(),
                event_time: 5,
                attributes: HashMap::new(),
                request_id: None,
            })
        );
        assert_eq!(
            event(ev(ItemOp::Delete, None, None), LIMITS),
            Ok(Work::Delete {
                item_id: "a".into(),
                event_time: Some(5)
            })
        );
    }

    #[test]
    fn bad_events_are_poison_with_their_kind() {
        let kind = |e: ItemEvent| event(e, LIMITS).unwrap_err().kind;
        assert_eq!(kind(ev(ItemOp::Upsert, None, None)), "empty_text");
        assert_eq!(
            kind(ev(ItemOp::Upsert, Some(" \n\t"), Some("t"))),
            "empty_text"
        );
        assert_eq!(
            kind(ev(ItemOp::Upsert, Some(&"x".repeat(21)), None)),
            "text_too_long"
        );
        assert_eq!(kind(ev(ItemOp::Unknown, Some("x"), None)), "unknown_op");
        let mut no_id = ev(ItemOp::Upsert, Some("x"), None);
        no_id.item_id = " ".into();
        assert_eq!(kind(no_id), "missing_key");
    }

    #[test]
    fn tombstones_need_a_utf8_key() {
        assert_eq!(
            tombstone(Some(b"k1")),
            Ok(Work::Delete {
                item_id: "k1".into(),
                event_time: None
            })
        );
        assert_eq!(tombstone(None).unwrap_err().kind, "missing_key");
        assert_eq!(
            tombstone(Some(&[0xff, 0xfe])).unwrap_err().kind,
            "invalid_utf8"
        );
    }
}
