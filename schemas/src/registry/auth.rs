//! Who may change the registry. With a users file, every request that changes it — registering
//! a schema, a soft or permanent delete, setting or deleting compatibility config — needs HTTP
//! basic auth of a listed user or a listed bearer token; reads, lookups and compatibility
//! checks stay open, so decoders need no credentials. Without one, the registry is open (bind
//! it to loopback or a private network).
//!
//! The file (TOML) lists users with their passwords and bearer tokens with the name they act
//! as. A password or token is written as itself or, so that the file holds no secret, as
//! `sha256:<hex>` of it:
//!
//! ```toml
//! [users]
//! embedstream = "sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
//! operator = "a-password-of-16-chars-or-more"
//!
//! [tokens]
//! "sha256:2c26b46b68ffc68ff99b453c1d30413413422d706483bfa0f98a5e886266e7ae" = "ci"
//! ```
//!
//! Clients send the credentials as Confluent's do: basic auth from the URL's user info
//! (`https://user:password@registry:8081`) or `Authorization: Bearer <token>`. A refused write
//! gets 401 with Confluent's error body (`error_code` 40101).

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::Response;
use base64::Engine as _;
use serde::Deserialize;
use serde_json::json;

use super::http::json_response;
use crate::access::{FileError, Secret, load_file};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct UsersFile {
    #[serde(default)]
    users: BTreeMap<String, String>,
    #[serde(default)]
    tokens: BTreeMap<String, String>,
}

/// The users and tokens that may change the registry.
#[derive(Debug, Clone, Default)]
pub struct WriteAuth {
    users: BTreeMap<String, Secret>,
    tokens: BTreeMap<Secret, String>,
}

impl WriteAuth {
    /// Reads a users file.
    pub fn load(path: &Path) -> Result<Self, FileError> {
        load_file("registry users", path, Self::parse)
    }

    /// Parses the text of a users file.
    pub fn parse(text: &str) -> Result<Self, String> {
        let file: UsersFile = toml::from_str(text).map_err(|e| e.to_string())?;
        let mut users = BTreeMap::new();
        for (name, password) in file.users {
            if name.is_empty() || name.contains(':') {
                return Err(format!("user {name:?}: a name is not empty and has no ':'"));
            }
            let secret = Secret::parse(&password).map_err(|e| format!("user {name:?}: {e}"))?;
            users.insert(name, secret);
        }
        let mut tokens = BTreeMap::new();
        for (token, name) in file.tokens {
            let secret = Secret::parse(&token).map_err(|e| format!("token of {name:?}: {e}"))?;
            if tokens.insert(secret, name.clone()).is_some() {
                return Err(format!("the token of {name:?} is listed twice"));
            }
        }
        if users.is_empty() && tokens.is_empty() {
            return Err("the file lists no user and no token".to_owned());
        }
        Ok(Self { users, tokens })
    }

    /// The name the request's credentials act as, `None` when it has none that are listed.
    pub fn who(&self, headers: &HeaderMap) -> Option<&str> {
        let auth = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
        let (scheme, value) = auth.split_once(' ')?;
        let value = value.trim();
        if scheme.eq_ignore_ascii_case("basic") {
            let decoded = base64::engine::general_purpose::STANDARD
                .decode(value)
                .ok()?;
            let decoded = String::from_utf8(decoded).ok()?;
            let (user, password) = decoded.split_once(':')?;
            let (name, secret) = self.users.get_key_value(user)?;
            return secret.matches(password).then_some(name.as_str());
        }
        if scheme.eq_ignore_ascii_case("bearer") {
            return self.tokens.get(&Secret::of(value)).map(String::as_str);
        }
        None
    }
}

/// Whether a request changes the registry: a registration, any delete, any config change.
pub fn is_write(method: &Method, path: &str) -> bool {
    match *method {
        Method::PUT | Method::DELETE => true,
        // `POST /subjects/{s}` is a lookup and `POST /compatibility/...` a check: reads.
        Method::POST => {
            let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
            matches!(parts.as_slice(), ["subjects", _, "versions"])
        }
        Method::GET | Method::HEAD | Method::OPTIONS => false,
        _ => true,
    }
}

/// Middleware: with a users file, a write without listed credentials gets 401.
pub async fn require_writer(
    State(auth): State<Option<Arc<WriteAuth>>>,
    request: Request,
    next: Next,
) -> Response {
    if let Some(auth) = &auth
        && is_write(request.method(), request.uri().path())
        && auth.who(request.headers()).is_none()
    {
        let mut r = json_response(
            StatusCode::UNAUTHORIZED,
            &json!({
                "error_code": 40101,
                "message": "Unauthorized: this change to the registry needs a listed user (basic auth) or bearer token",
            }),
        );
        r.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Basic realm=\"embedstream-registry\""),
        );
        return r;
    }
    next.run(request).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn basic(user: &str, password: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        let value = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_str(&format!("Basic {value}")).unwrap(),
        );
        h
    }

    #[test]
    fn listed_users_and_tokens_act_as_their_names_and_nothing_else_does() {
        let hashed = Secret::hex_of("operator-password-1");
        let auth = WriteAuth::parse(&format!(
            "[users]\nembedstream = \"embedstream-password\"\noperator = \"sha256:{hashed}\"\n[tokens]\n\"a-ci-token-of-enough-length\" = \"ci\"\n"
        ))
        .unwrap();
        assert_eq!(
            auth.who(&basic("embedstream", "embedstream-password")),
            Some("embedstream")
        );
        assert_eq!(
            auth.who(&basic("operator", "operator-password-1")),
            Some("operator")
        );
        assert_eq!(auth.who(&basic("operator", "embedstream-password")), None);
        assert_eq!(auth.who(&basic("nobody", "embedstream-password")), None);
        let mut bearer = HeaderMap::new();
        bearer.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Bearer a-ci-token-of-enough-length"),
        );
        assert_eq!(auth.who(&bearer), Some("ci"));
        bearer.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Bearer a-ci-token-of-enough-lengtX"),
        );
        assert_eq!(auth.who(&bearer), None);
        assert_eq!(auth.who(&HeaderMap::new()), None);
    }

    #[test]
    fn a_users_file_without_anyone_or_with_a_short_password_is_refused() {
        assert!(WriteAuth::parse("").is_err());
        assert!(WriteAuth::parse("[users]\nme = \"short\"\n").is_err());
        assert!(WriteAuth::parse("[users]\n\"a:b\" = \"a-long-enough-password\"\n").is_err());
        assert!(WriteAuth::parse("[other]\n").is_err());
    }

    #[test]
    fn registrations_deletes_and_config_are_writes_lookups_and_checks_are_not() {
        assert!(is_write(&Method::POST, "/subjects/items-value/versions"));
        assert!(is_write(&Method::DELETE, "/subjects/items-value"));
        assert!(is_write(
            &Method::DELETE,
            "/subjects/items-value/versions/1"
        ));
        assert!(is_write(&Method::PUT, "/config"));
        assert!(is_write(&Method::PUT, "/config/items-value"));
        assert!(is_write(&Method::DELETE, "/config/items-value"));
        assert!(!is_write(&Method::POST, "/subjects/items-value"));
        assert!(!is_write(
            &Method::POST,
            "/compatibility/subjects/items-value/versions/latest"
        ));
        assert!(!is_write(&Method::GET, "/subjects/items-value/versions"));
        assert!(!is_write(&Method::GET, "/schemas/ids/1"));
    }
}
