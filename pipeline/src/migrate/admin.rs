//! The admin HTTP API of migrations: the `migrate` commands for operators without Kafka
//! access. Every route needs `Authorization: Bearer <token>`; without a configured token the
//! routes answer 503 and do nothing.
//!
//! - `GET  /admin/v1/migration/status` → [`Status`](super::Status)
//! - `POST /admin/v1/migration/start` `{"from", "to"}`
//! - `POST /admin/v1/migration/weight` `{"consumer", "new", "adapter"?}`
//! - `POST /admin/v1/migration/cutover` `{"consumer"?, "force"?}`
//! - `POST /admin/v1/migration/rollback` `{"consumer"?}`
//! - `POST /admin/v1/migration/decommission`
//!
//! A refused command answers 409 with the reason; a malformed body 400; a missing or wrong
//! token 401.

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use embedstream_topics::ModelRef;
use serde::Deserialize;

use super::{Applied, Migrator};
use crate::error::Error;

struct Admin {
    migrator: Migrator,
    token: Option<String>,
}

/// The admin routes over `migrator`; `token` `None` disables them.
pub fn router(migrator: Migrator, token: Option<String>) -> Router {
    let state = Arc::new(Admin {
        migrator,
        token: token.filter(|t| !t.is_empty()),
    });
    Router::new()
        .route("/admin/v1/migration/status", get(status))
        .route("/admin/v1/migration/{action}", post(action))
        .with_state(state)
}

/// A refused request: status, a fixed kind, a message for people.
#[derive(Debug)]
struct AdminError {
    status: StatusCode,
    kind: &'static str,
    message: String,
}

fn error(status: StatusCode, kind: &'static str, message: impl Into<String>) -> AdminError {
    AdminError {
        status,
        kind,
        message: message.into(),
    }
}

impl IntoResponse for AdminError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({"error": self.message, "kind": self.kind});
        let mut response = (self.status, axum::Json(body)).into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, "Bearer".parse().expect("static"));
        }
        response
    }
}

/// Constant-time comparison, so the token cannot be guessed byte by byte from timings.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn authorize(admin: &Admin, headers: &HeaderMap) -> Result<(), AdminError> {
    let Some(expected) = &admin.token else {
        return Err(error(
            StatusCode::SERVICE_UNAVAILABLE,
            "admin_disabled",
            "the admin API is disabled: start the service with EMBEDSTREAM_ADMIN_TOKEN set",
        ));
    };
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    match given {
        Some(t) if same(t.trim().as_bytes(), expected.as_bytes()) => Ok(()),
        Some(_) => Err(error(
            StatusCode::UNAUTHORIZED,
            "bad_token",
            "the bearer token is not the admin token",
        )),
        None => Err(error(
            StatusCode::UNAUTHORIZED,
            "missing_token",
            "admin actions need an Authorization: Bearer <token> header",
        )),
    }
}

async fn status(State(admin): State<Arc<Admin>>, headers: HeaderMap) -> Response {
    if let Err(r) = authorize(&admin, &headers) {
        return r.into_response();
    }
    axum::Json(admin.migrator.status()).into_response()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct StartBody {
    from: String,
    to: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct WeightBody {
    consumer: String,
    new: f64,
    #[serde(default)]
    adapter: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ConsumerBody {
    #[serde(default)]
    consumer: Option<String>,
    #[serde(default)]
    force: bool,
}

fn parse<T: for<'de> Deserialize<'de>>(body: &[u8]) -> Result<T, AdminError> {
    let body = if body.iter().all(u8::is_ascii_whitespace) {
        b"{}".as_slice()
    } else {
        body
    };
    serde_json::from_slice(body).map_err(|e| {
        error(
            StatusCode::BAD_REQUEST,
            "invalid_json",
            format!("the body is not valid for this action: {e}"),
        )
    })
}

async fn action(
    State(admin): State<Arc<Admin>>,
    Path(action): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Err(r) = authorize(&admin, &headers) {
        return r.into_response();
    }
    let m = &admin.migrator;
    let result: Result<Result<Applied, Error>, AdminError> = async {
        Ok(match action.as_str() {
            "start" => {
                let b: StartBody = parse(&body)?;
                let model = |s: &str| {
                    s.parse::<ModelRef>()
                        .map_err(|e| error(StatusCode::BAD_REQUEST, "invalid_model", e.to_string()))
                };
                let (from, to) = (model(&b.from)?, model(&b.to)?);
                m.start(&from, &to).await
            }
            "weight" => {
                let b: WeightBody = parse(&body)?;
                m.weight(&b.consumer, b.new, b.adapter.as_deref()).await
            }
            "cutover" => {
                let b: ConsumerBody = parse(&body)?;
                m.cutover(b.consumer.as_deref(), b.force).await
            }
            "rollback" => {
                let b: ConsumerBody = parse(&body)?;
                if b.force {
                    return Err(error(
                        StatusCode::BAD_REQUEST,
                        "invalid_json",
                        "rollback takes no force",
                    ));
                }
                m.rollback(b.consumer.as_deref()).await
            }
            "decommission" => m.decommission().await,
            other => {
                return Err(error(
                    StatusCode::NOT_FOUND,
                    "unknown_action",
                    format!("no action {other:?}: start, weight, cutover, rollback, decommission"),
                ));
            }
        })
    }
    .await;
    match result {
        Err(e) => e.into_response(),
        Ok(Ok(applied)) => {
            tracing::info!(action, keys = ?applied.keys, "Admin action applied.");
            axum::Json(applied).into_response()
        }
        Ok(Err(Error::Refused { refused })) => {
            error(StatusCode::CONFLICT, "refused", refused.to_string()).into_response()
        }
        Ok(Err(e)) => {
            error(StatusCode::INTERNAL_SERVER_ERROR, "failed", e.to_string()).into_response()
        }
    }
}
