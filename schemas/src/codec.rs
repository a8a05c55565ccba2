//! Encoding and decoding of typed records with Confluent framing through a schema registry.
//!
//! Encoding registers the record's schema under `<topic>-value` (Confluent's topic name
//! strategy) on first use and caches the id. Decoding fetches the writer's schema by the id in
//! the frame (cached), decodes with it, and resolves to this build's schema, so records written
//! with an older or newer compatible schema still decode. Each failure is classified (see
//! [`CodecError::kind`]) so the stream stage can dead-letter poison and retry outages.
//!
//! Every registry request has a timeout ([`REQUEST_TIMEOUT`]). The registry's own "not found"
//! (404) for a schema id is [`CodecError::UnknownSchemaId`], as is a schema the client cannot
//! use; any failure of the registry itself — a 5xx, a refused credential, a timeout, an
//! unreachable registry — is [`CodecError::RegistryUnavailable`], retryable, and never cached:
//! the next call asks again. Encoding likewise: only a schema the registry refuses (409, 422)
//! or a record that does not serialize is a non-retryable [`CodecError::Register`].

use std::io::Read;
use std::sync::Arc;

use apache_avro::Schema;
use apache_avro::error::Details;
use apache_avro::reader::datum::GenericDatumReader;
use apache_avro::writer::datum::GenericDatumWriter;
use schema_registry_converter::async_impl::avro::{AvroDecoder, AvroEncoder};
use schema_registry_converter::async_impl::schema_registry::SrSettings;
use schema_registry_converter::error::SRCError;
use schema_registry_converter::schema_registry_common::{
    SchemaType, SubjectNameStrategy, SuppliedSchema,
};

use crate::records::AvroRecord;
use crate::wire::{self, FrameError};

/// How long one registry request may take.
pub const REQUEST_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Why a record could not be encoded or decoded.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    /// The bytes do not start with a Confluent header. Poison.
    #[error("not a Confluent-framed record: {source}")]
    Frame {
        /// The framing problem.
        #[from]
        source: FrameError,
    },
    /// The registry answered that it does not know the schema id in the frame. Poison for the
    /// stage (the record is dead-lettered whole); a sink pauses on it instead, since its topic
    /// is written only with registered schemas.
    #[error("schema id {id} is unknown to the registry: {message}")]
    UnknownSchemaId {
        /// The id in the frame.
        id: u32,
        /// What the registry said.
        message: String,
    },
    /// The registry could not be reached, timed out, refused the request or failed. Retryable.
    #[error("schema registry unavailable: {message}")]
    RegistryUnavailable {
        /// What failed.
        message: String,
    },
    /// The record was written with a schema that does not resolve to the expected one. Poison.
    #[error("record has schema {found}, which does not resolve to {expected}: {message}")]
    WrongSchema {
        /// This build's record name.
        expected: &'static str,
        /// The writer schema's name.
        found: String,
        /// Why it does not resolve.
        message: String,
    },
    /// The Avro datum is truncated or corrupt. Poison.
    #[error("malformed Avro datum: {message}")]
    MalformedAvro {
        /// What the decoder said.
        message: String,
    },
    /// A string in the datum is not valid UTF-8. Poison.
    #[error("invalid UTF-8 in a string field: {message}")]
    InvalidUtf8 {
        /// What the decoder said.
        message: String,
    },
    /// The schema could not be registered: refused by the registry (incompatible, invalid;
    /// fatal) or the registry failed (down, slow, 5xx; retryable).
    #[error("could not register schema for {subject}: {message}")]
    Register {
        /// Subject registered under.
        subject: String,
        /// What the registry said.
        message: String,
        /// Whether retrying may help (registry down) or not (schema refused).
        retryable: bool,
    },
}

impl CodecError {
    /// A short, fixed name for metrics labels and dead-letter records.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Frame { .. } => "malformed_framing",
            Self::UnknownSchemaId { .. } => "unknown_schema_id",
            Self::RegistryUnavailable { .. } => "registry_unavailable",
            Self::WrongSchema { .. } => "wrong_schema",
            Self::MalformedAvro { .. } => "malformed_avro",
            Self::InvalidUtf8 { .. } => "invalid_utf8",
            Self::Register { .. } => "register_failed",
        }
    }

    /// Whether retrying the same input later may succeed.
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::RegistryUnavailable { .. } => true,
            Self::Register { retryable, .. } => *retryable,
            _ => false,
        }
    }
}

/// Encodes and decodes records through one registry. Cheap to clone; caches are shared.
#[derive(Clone)]
pub struct Codec {
    encoder: Arc<AvroEncoder>,
    decoder: Arc<AvroDecoder>,
}

impl std::fmt::Debug for Codec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Codec").finish_non_exhaustive()
    }
}

impl Codec {
    /// A codec for the registry at `url` (e.g. `http://127.0.0.1:8081`).
    pub fn new(url: &str) -> Self {
        let settings = || {
            SrSettings::new_builder(url.to_owned())
                .set_timeout(REQUEST_TIMEOUT)
                .build()
                .unwrap_or_else(|_| SrSettings::new(url.to_owned()))
        };
        Self {
            encoder: Arc::new(AvroEncoder::new(settings())),
            decoder: Arc::new(AvroDecoder::new(settings())),
        }
    }

    /// The subject a record of `topic` is registered under (Confluent's topic name strategy).
    pub fn value_subject(topic: &str) -> String {
        format!("{topic}-value")
    }

    /// Encodes `record` as the value of a record on `topic`, registering its schema on first use.
    pub async fn encode<T: AvroRecord>(
        &self,
        topic: &str,
        record: &T,
    ) -> Result<Vec<u8>, CodecError> {
        let strategy = SubjectNameStrategy::TopicNameStrategyWithSchema(
            topic.to_owned(),
            false,
            SuppliedSchema::new(
                Some(T::FULL_NAME.to_owned()),
                SchemaType::Avro,
                T::SCHEMA_JSON.to_owned(),
            ),
        );
        self.encoder
            .encode_struct(record, &strategy)
            .await
            .map_err(|e| {
                if !e.retriable {
                    // As for decoding: a failure is not remembered, the next call asks again.
                    self.encoder.remove_errors_from_cache();
                }
                CodecError::Register {
                    subject: Self::value_subject(topic),
                    message: describe(&e),
                    retryable: e.retriable || (is_http_failure(&e) && !is_refusal(&e)),
                }
            })
    }

    /// Decodes a framed record written with any schema that resolves to `T`'s.
    pub async fn decode<T: AvroRecord>(&self, bytes: &[u8]) -> Result<T, CodecError> {
        let (id, mut datum) = wire::split(bytes)?;
        let writer = self.decoder.get_schema(id).await.map_err(|e| {
            if !e.retriable {
                // The client keeps non-retryable errors; a registry that failed once must be
                // asked again next time.
                self.decoder.remove_errors_from_cache();
            }
            if !is_not_found(&e) && (e.retriable || is_http_failure(&e)) {
                CodecError::RegistryUnavailable {
                    message: describe(&e),
                }
            } else {
                CodecError::UnknownSchemaId {
                    id,
                    message: describe(&e),
                }
            }
        })?;
        decode_datum::<T>(&writer.parsed, &mut datum)
    }
}

/// Decodes one datum written with `writer` into `T`, resolving to `T`'s schema. Trailing bytes
/// are an error: a datum is the whole payload.
pub fn decode_datum<T: AvroRecord>(writer: &Schema, datum: &mut &[u8]) -> Result<T, CodecError> {
    let wrong = |message: String| CodecError::WrongSchema {
        expected: T::FULL_NAME,
        found: schema_name(writer),
        message,
    };
    if schema_name(writer) != T::FULL_NAME {
        return Err(wrong("the record names differ".to_owned()));
    }
    let reader = GenericDatumReader::builder(writer)
        .build()
        .map_err(|e| wrong(e.to_string()))?;
    let value = reader.read_value(datum).map_err(|e| match e.details() {
        Details::ConvertToUtf8(_) | Details::ConvertToUtf8Error(_) => CodecError::InvalidUtf8 {
            message: e.to_string(),
        },
        _ => CodecError::MalformedAvro {
            message: e.to_string(),
        },
    })?;
    let mut rest = Vec::new();
    let trailing = datum.read_to_end(&mut rest).unwrap_or(0);
    if trailing > 0 {
        return Err(CodecError::MalformedAvro {
            message: format!("{trailing} bytes left after the datum"),
        });
    }
    let resolved = value
        .resolve(T::schema())
        .map_err(|e| wrong(e.to_string()))?;
    apache_avro::from_value::<T>(&resolved).map_err(|e| wrong(e.to_string()))
}

/// Encodes `record` as a bare datum with its own schema (no framing).
pub fn encode_datum<T: AvroRecord>(record: &T) -> Result<Vec<u8>, apache_avro::Error> {
    GenericDatumWriter::builder(T::schema())
        .build()?
        .write_ser_to_vec(record)
}

fn schema_name(schema: &Schema) -> String {
    match schema {
        Schema::Record(r) => r.name.fullname(None),
        other => format!("{:?}", apache_avro::schema::SchemaKind::from(other)),
    }
}

/// Whether the registry answered with an HTTP error (as opposed to a schema the client could
/// not parse or a record it could not serialize, which asking again cannot change).
fn is_http_failure(e: &SRCError) -> bool {
    e.error.contains("failed with status")
}

/// Whether the registry refused the schema itself: incompatible with the subject's versions
/// (HTTP 409) or invalid (422). Retrying the same schema cannot help.
fn is_refusal(e: &SRCError) -> bool {
    e.error.contains("failed with status 409") || e.error.contains("failed with status 422")
}

/// Whether the registry answered that it does not have what was asked for (HTTP 404).
fn is_not_found(e: &SRCError) -> bool {
    e.error.contains("failed with status 404")
}

fn describe(e: &SRCError) -> String {
    match &e.cause {
        Some(cause) => format!("{}: {cause}", e.error),
        None => e.error.clone(),
    }
}
