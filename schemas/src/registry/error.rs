//! Registry errors, answered as Confluent's error JSON (`{"error_code", "message"}`).

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

/// An error answered to a registry client, with Confluent's HTTP status and error code.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum RegistryError {
    /// 40401. Not retryable.
    #[error("Subject '{subject}' not found.")]
    SubjectNotFound {
        /// Subject asked for.
        subject: String,
    },
    /// 40402. Not retryable.
    #[error("Version {version} not found.")]
    VersionNotFound {
        /// Version asked for.
        version: String,
    },
    /// 40403. Not retryable.
    #[error("Schema {what} not found")]
    SchemaNotFound {
        /// Id, or "" for a lookup by content.
        what: String,
    },
    /// 40404. Not retryable.
    #[error("Subject '{subject}' was soft deleted.Set permanent=true to delete permanently")]
    SubjectSoftDeleted {
        /// Subject.
        subject: String,
    },
    /// 40405. Not retryable.
    #[error("Subject '{subject}' was not deleted first before being permanently deleted")]
    SubjectNotSoftDeleted {
        /// Subject.
        subject: String,
    },
    /// 40406. Not retryable.
    #[error(
        "Subject '{subject}' Version {version} was soft deleted.Set permanent=true to delete permanently"
    )]
    VersionSoftDeleted {
        /// Subject.
        subject: String,
        /// Version.
        version: u32,
    },
    /// 40407. Not retryable.
    #[error(
        "Subject '{subject}' Version {version} was not deleted first before being permanently deleted"
    )]
    VersionNotSoftDeleted {
        /// Subject.
        subject: String,
        /// Version.
        version: u32,
    },
    /// 40408. Not retryable.
    #[error("Subject '{subject}' does not have subject-level compatibility configured")]
    SubjectCompatibilityNotConfigured {
        /// Subject.
        subject: String,
    },
    /// 404 for a path the registry does not serve.
    #[error("HTTP 404 Not Found")]
    NotFound,
    /// 409. The schema breaks the subject's compatibility rule.
    #[error(
        "Schema being registered is incompatible with an earlier schema for subject \"{subject}\", details: {details:?}"
    )]
    Incompatible {
        /// Subject.
        subject: String,
        /// One line per violated rule.
        details: Vec<String>,
    },
    /// 415. The request body's content type is not JSON.
    #[error("HTTP 415 Unsupported Media Type: {content_type}")]
    UnsupportedMediaType {
        /// What was sent.
        content_type: String,
    },
    /// 400. The request body is not the JSON the endpoint expects.
    #[error("Unrecognized request body: {reason}")]
    BadRequest {
        /// What is wrong.
        reason: String,
    },
    /// 42201. The schema is not valid Avro (or not Avro at all).
    #[error("Invalid schema: {reason}")]
    InvalidSchema {
        /// The parser's message.
        reason: String,
    },
    /// 42202. A version that is neither a positive int nor "latest".
    #[error(
        "The specified version '{version}' is not a valid version id. Allowed values are between [1, 2^31-1] and the string \"latest\""
    )]
    InvalidVersion {
        /// What was given.
        version: String,
    },
    /// 42203. An unknown compatibility level.
    #[error(
        "Invalid compatibility level. Valid values are none, backward, forward, full, backward_transitive, forward_transitive, and full_transitive"
    )]
    InvalidCompatibilityLevel,
    /// 50001. Writing to the `_schemas` topic failed. Retryable.
    #[error("Error while storing the schema: {reason}")]
    Store {
        /// What the broker said.
        reason: String,
    },
    /// 50002. The write was not read back in time. Retryable.
    #[error("Write to the schemas topic timed out: {reason}")]
    Timeout {
        /// What timed out.
        reason: String,
    },
}

impl RegistryError {
    /// Confluent's error code.
    pub fn error_code(&self) -> u32 {
        match self {
            Self::SubjectNotFound { .. } => 40401,
            Self::VersionNotFound { .. } => 40402,
            Self::SchemaNotFound { .. } => 40403,
            Self::SubjectSoftDeleted { .. } => 40404,
            Self::SubjectNotSoftDeleted { .. } => 40405,
            Self::VersionSoftDeleted { .. } => 40406,
            Self::VersionNotSoftDeleted { .. } => 40407,
            Self::SubjectCompatibilityNotConfigured { .. } => 40408,
            Self::NotFound => 404,
            Self::Incompatible { .. } => 409,
            Self::UnsupportedMediaType { .. } => 415,
            Self::BadRequest { .. } => 400,
            Self::InvalidSchema { .. } => 42201,
            Self::InvalidVersion { .. } => 42202,
            Self::InvalidCompatibilityLevel => 42203,
            Self::Store { .. } => 50001,
            Self::Timeout { .. } => 50002,
        }
    }

    /// The HTTP status: the error code's first three digits.
    pub fn status(&self) -> StatusCode {
        let code = self.error_code();
        let status = if code >= 10_000 { code / 100 } else { code };
        StatusCode::from_u16(status as u16).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
    }
}

impl IntoResponse for RegistryError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({
            "error_code": self.error_code(),
            "message": self.to_string(),
        });
        super::http::json_response(self.status(), &body)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_is_the_code_prefix() {
        assert_eq!(
            RegistryError::SubjectNotFound {
                subject: "x".into()
            }
            .status(),
            StatusCode::NOT_FOUND
        );
        assert_eq!(
            RegistryError::Incompatible {
                subject: "x".into(),
                details: vec![]
            }
            .status(),
            StatusCode::CONFLICT
        );
        assert_eq!(
            RegistryError::InvalidSchema { reason: "x".into() }.status(),
            StatusCode::UNPROCESSABLE_ENTITY
        );
        assert_eq!(
            RegistryError::Store { reason: "x".into() }.status(),
            StatusCode::INTERNAL_SERVER_ERROR
        );
    }
}
