//! API keys of the query APIs (the router's and each sink's), per consumer: a key reads as the
//! consumers it is granted and no other.
//!
//! The keys file (TOML) maps each key to the consumers it may query, `"*"` for all of them. A
//! key is written as itself or, so that the file holds no secret, as `sha256:<hex>` of it:
//!
//! ```toml
//! [keys]
//! "sha256:5e884898da28047151d0e56f8dc6292773603d0d6aabbdd62a11ef721d1542d8" = ["ads"]
//! "a-key-for-search-and-recsys" = ["search", "recsys"]
//! "sha256:6b3a55e0261b0304143f805a24924d0c1c44524821305f31d9277843b8a10f4e" = ["*"]
//! ```
//!
//! A request names its key as `Authorization: Bearer <key>` or `X-API-Key: <key>`. With a keys
//! file, a request without a known key gets 401, and a search as a consumer its key does not
//! grant gets 403. Without one, the APIs are open (bind them to loopback or a private network).

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use sha2::{Digest, Sha256};

/// Why a settings file (API keys, registry users, consumers) cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    /// The file cannot be read.
    #[error("cannot read the {what} file {path}: {source}")]
    Read {
        /// What the file holds.
        what: &'static str,
        /// Which file.
        path: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The file does not hold what it should.
    #[error("the {what} file {path} is not valid: {reason}")]
    Invalid {
        /// What the file holds.
        what: &'static str,
        /// Which file.
        path: String,
        /// What is wrong.
        reason: String,
    },
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct KeysFile {
    keys: BTreeMap<String, Vec<String>>,
}

/// A request named a key that the keys file does not list.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("unknown API key")]
pub struct UnknownKey;

/// What a key may read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Grant {
    /// Every consumer.
    All,
    /// These consumers only.
    Consumers(BTreeSet<String>),
}

impl Grant {
    /// Whether a search as `consumer` is allowed.
    pub fn allows(&self, consumer: &str) -> bool {
        match self {
            Self::All => true,
            Self::Consumers(c) => c.contains(consumer),
        }
    }
}

/// A secret (an API key, a password, a token) known by its SHA-256, never kept as itself.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Secret([u8; 32]);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(..)")
    }
}

impl Secret {
    /// The fewest characters a secret written as itself may have.
    pub const MIN_LEN: usize = 16;

    /// The secret whose text is `plain`.
    pub fn of(plain: &str) -> Self {
        Self(Sha256::digest(plain.as_bytes()).into())
    }

    /// A secret as a file writes it: `sha256:<64 hex digits>`, or the secret itself (at least
    /// [`Self::MIN_LEN`] characters).
    pub fn parse(written: &str) -> Result<Self, String> {
        match written.strip_prefix("sha256:") {
            Some(hex) => parse_hex_digest(&hex.to_ascii_lowercase())
                .map(Self)
                .ok_or_else(|| format!("{written:?} is not sha256: and 64 hex digits")),
            None if written.chars().count() < Self::MIN_LEN => Err(format!(
                "a secret must have at least {} characters ({} has {})",
                Self::MIN_LEN,
                redact(written),
                written.chars().count()
            )),
            None => Ok(Self::of(written)),
        }
    }

    /// Whether `plain` is this secret.
    pub fn matches(&self, plain: &str) -> bool {
        Self::of(plain) == *self
    }

    /// `sha256:`'s hex digits for `plain`, as a file writes the secret without holding it.
    pub fn hex_of(plain: &str) -> String {
        Self::of(plain)
            .0
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }
}

fn parse_hex_digest(hex: &str) -> Option<[u8; 32]> {
    if hex.len() != 64 || !hex.is_ascii() {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
}

/// The keys of a query API, by the SHA-256 of each key.
#[derive(Debug, Clone, Default)]
pub struct ApiKeys {
    by_digest: BTreeMap<Secret, Grant>,
}

/// Reads a settings file holding `what` with `parse`, naming the file in either error.
pub(crate) fn load_file<T>(
    what: &'static str,
    path: &Path,
    parse: impl FnOnce(&str) -> Result<T, String>,
) -> Result<T, FileError> {
    let text = std::fs::read_to_string(path).map_err(|source| FileError::Read {
        what,
        path: path.display().to_string(),
        source,
    })?;
    parse(&text).map_err(|reason| FileError::Invalid {
        what,
        path: path.display().to_string(),
        reason,
    })
}

impl ApiKeys {
    /// Reads a keys file.
    pub fn load(path: &Path) -> Result<Self, FileError> {
        load_file("API keys", path, Self::parse)
    }

    /// Parses the text of a keys file.
    pub fn parse(text: &str) -> Result<Self, String> {
        let file: KeysFile = toml::from_str(text).map_err(|e| e.to_string())?;
        let mut by_digest = BTreeMap::new();
        for (key, consumers) in file.keys {
            let d = Secret::parse(&key)?;
            if consumers.is_empty() {
                return Err(format!("{} grants no consumer", redact(&key)));
            }
            let grant = if consumers.iter().any(|c| c == "*") {
                Grant::All
            } else {
                Grant::Consumers(consumers.into_iter().collect())
            };
            if by_digest.insert(d, grant).is_some() {
                return Err(format!("{} is listed twice", redact(&key)));
            }
        }
        if by_digest.is_empty() {
            return Err("the file lists no key".to_owned());
        }
        Ok(Self { by_digest })
    }

    /// What the key presented in `headers` may read: `Ok(None)` when the request names no key.
    pub fn grant(&self, headers: &HeaderMap) -> Result<Option<&Grant>, UnknownKey> {
        let Some(key) = presented(headers) else {
            return Ok(None);
        };
        self.by_digest
            .get(&Secret::of(key))
            .map(Some)
            .ok_or(UnknownKey)
    }
}

/// The key a request names, if any.
pub fn presented(headers: &HeaderMap) -> Option<&str> {
    if let Some(v) = headers.get("x-api-key").and_then(|v| v.to_str().ok()) {
        return Some(v.trim());
    }
    let auth = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = auth.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then_some(token.trim())
}

/// The headers that carry the presented key on to another service (the router to a sink).
pub fn forwarded(headers: &HeaderMap) -> Option<(header::HeaderName, HeaderValue)> {
    presented(headers)
        .and_then(|key| HeaderValue::from_str(key).ok())
        .map(|v| (header::HeaderName::from_static("x-api-key"), v))
}

fn redact(key: &str) -> String {
    let head: String = key.chars().take(4).collect();
    format!("the key starting {head:?}")
}

fn refuse(status: StatusCode, kind: &str, message: &str) -> Response {
    let body = serde_json::json!({"error": message, "kind": kind});
    let mut r = (status, axum::Json(body)).into_response();
    if status == StatusCode::UNAUTHORIZED {
        r.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Bearer realm=\"embedstream\""),
        );
    }
    r
}

/// The 403 of a search as a consumer the key does not grant.
pub fn forbidden(consumer: &str) -> Response {
    refuse(
        StatusCode::FORBIDDEN,
        "forbidden_consumer",
        &format!("this API key may not query as consumer {consumer:?}"),
    )
}

/// Middleware: with keys configured, a request without a known key gets 401; a known key's
/// [`Grant`] goes into the request's extensions for the handler to check the consumer.
/// Without keys every request passes with [`Grant::All`].
pub async fn require_key(
    State(keys): State<Option<Arc<ApiKeys>>>,
    mut request: Request,
    next: Next,
) -> Response {
    let grant = match &keys {
        None => Grant::All,
        Some(keys) => match keys.grant(request.headers()) {
            Ok(Some(g)) => g.clone(),
            Ok(None) => {
                return refuse(
                    StatusCode::UNAUTHORIZED,
                    "unauthorized",
                    "this API needs a key: send it as `Authorization: Bearer <key>` or `X-API-Key: <key>`",
                );
            }
            Err(e) => return refuse(StatusCode::UNAUTHORIZED, "unauthorized", &e.to_string()),
        },
    };
    request.extensions_mut().insert(grant);
    next.run(request).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(
                header::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    #[test]
    fn a_key_reads_as_its_consumers_only_whether_written_plain_or_hashed() {
        let hashed: String = Sha256::digest(b"the-ads-team-key-0001")
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        let keys = ApiKeys::parse(&format!(
            "[keys]\n\"sha256:{hashed}\" = [\"ads\"]\n\"search-and-recsys-key\" = [\"search\", \"recsys\"]\n\"operators-key-000001\" = [\"*\"]\n"
        ))
        .unwrap();
        let ads = keys
            .grant(&headers(&[(
                "authorization",
                "Bearer the-ads-team-key-0001",
            )]))
            .unwrap()
            .unwrap();
        assert!(ads.allows("ads") && !ads.allows("search"));
        let search = keys
            .grant(&headers(&[("x-api-key", "search-and-recsys-key")]))
            .unwrap()
            .unwrap();
        assert!(search.allows("recsys") && !search.allows("ads"));
        let ops = keys
            .grant(&headers(&[(
                "authorization",
                "bearer operators-key-000001",
            )]))
            .unwrap()
            .unwrap();
        assert!(ops.allows("anything"));
        assert!(keys.grant(&headers(&[])).unwrap().is_none());
        assert!(
            keys.grant(&headers(&[("x-api-key", "guess-guess-guess")]))
                .is_err()
        );
        assert!(
            keys.grant(&headers(&[(
                "authorization",
                "Basic the-ads-team-key-0001"
            )]))
            .unwrap()
            .is_none(),
            "only a bearer token or X-API-Key names a key"
        );
    }

    #[test]
    fn a_bad_keys_file_is_refused_with_the_reason() {
        for (text, reason) in [
            ("[keys]\n", "no key"),
            ("[keys]\n\"short\" = [\"ads\"]\n", "at least 16"),
            ("[keys]\n\"sha256:abc\" = [\"ads\"]\n", "64 hex"),
            ("[keys]\n\"a-long-enough-key-1\" = []\n", "no consumer"),
            (
                "[keys]\n\"a-long-enough-key-1\" = \"ads\"\n",
                "invalid type",
            ),
            ("[users]\n", "unknown field"),
        ] {
            let err = ApiKeys::parse(text).unwrap_err();
            assert!(err.contains(reason), "{text:?}: {err}");
            assert!(!err.contains("a-long-enough-key-1\" grants"), "{err}");
        }
    }
}
