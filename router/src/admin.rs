//! The admin HTTP API of migrations: the `migrate` commands for operators without Kafka
//! access. The commands themselves are a [`Migrations`] (the pipeline's migrator, which
//! writes the control log); this module is their HTTP face: authentication, parsing, and the
//! mapping of outcomes to status codes. Every route needs `Authorization: Bearer <token>`; without a configured token the
//! routes answer 404 (`admin_disabled`) and do nothing.
//!
//! - `GET  /admin/v1/migration/status` → [`Migrations::status`]
//! - `POST /admin/v1/migration/start` `{"from", "to"}`
//! - `POST /admin/v1/migration/weight` `{"consumer", "new", "adapter"?}`
//! - `POST /admin/v1/migration/cutover` `{"consumer"?, "force"?}`
//! - `POST /admin/v1/migration/rollback` `{"consumer"?}`
//! - `POST /admin/v1/migration/decommission`
//!
//! A refused command answers 409 with the reason; a malformed body 400; a missing or wrong
//! token 401.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use embedstream_topics::ModelRef;
use serde::Deserialize;

/// One migration command, as the admin API received it.
#[derive(Debug, Clone, PartialEq)]
pub enum Command {
    /// `migrate start`: dual-write `to` beside `from`.
    Start {
        /// The version serving now.
        from: ModelRef,
        /// The version migrated to.
        to: ModelRef,
    },
    /// `migrate weight`: the new version's share of `consumer`'s reads.
    Weight {
        /// The consumer whose plan changes.
        consumer: String,
        /// The new version's weight, 0 to 1.
        new: f64,
        /// A Drift-Adapter for the old version's entry.
        adapter: Option<String>,
        /// With the adapter, fused reads: the adapted query's weight beside the old model's
        /// own query, in (0, 1].
        fuse: Option<f64>,
        /// Read through the adapter although its gate did not pass (recorded).
        force: bool,
    },
    /// `migrate canary`: a share of `consumer`'s units read the new version alone.
    Canary {
        /// The consumer whose requests are split.
        consumer: String,
        /// Share of its units in the canary, 0 to 1 (0 ends the canary).
        share: f64,
    },
    /// `migrate cutover`: one consumer (or all) reads the new version only.
    Cutover {
        /// `None`: every consumer.
        consumer: Option<String>,
        /// Cut over although the recall gate did not pass (recorded).
        force: bool,
    },
    /// `migrate rollback`: restore the saved plan of one consumer (or all).
    Rollback {
        /// `None`: every consumer.
        consumer: Option<String>,
    },
    /// `migrate decommission`: retire the old version.
    Decommission,
}

/// Why a command was not applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CommandError {
    /// The migration's state does not allow it (answered 409); nothing was written.
    Refused(String),
    /// It could not be applied (the control log could not be written, say; answered 500).
    /// Retryable: nothing was applied in part.
    Failed(String),
}

/// What a command's future yields: a JSON description of what was written.
pub type CommandFuture<'a> =
    Pin<Box<dyn Future<Output = Result<serde_json::Value, CommandError>> + Send + 'a>>;

/// The migration commands behind the admin API.
pub trait Migrations: Send + Sync + 'static {
    /// The migration's status, as JSON.
    fn status(&self) -> serde_json::Value;
    /// Applies `command`.
    fn apply(&self, command: Command) -> CommandFuture<'_>;
}

pub(crate) struct Admin {
    migrations: Arc<dyn Migrations>,
    token: Option<String>,
}

/// The admin routes over `migrations`; `token` `None` disables them.
pub fn router(migrations: Arc<dyn Migrations>, token: Option<String>) -> Router {
    let state = Arc::new(Admin {
        migrations,
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
        let body = embedstream_schemas::api::ErrorBody::new(self.message, self.kind);
        let mut response = body.into_response(self.status);
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
        // Not a server failure to retry: the routes are not enabled on this router.
        return Err(error(
            StatusCode::NOT_FOUND,
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

/// The current migration and every consumer's plan.
#[utoipa::path(
    get,
    path = "/admin/v1/migration/status",
    tag = "admin",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The migration's status", body = Object),
        (status = 401, description = "No or a wrong bearer token", body = embedstream_schemas::api::ErrorBody),
        (status = 404, description = "The admin API is disabled (no admin token)", body = embedstream_schemas::api::ErrorBody),
    )
)]
pub(crate) async fn status(State(admin): State<Arc<Admin>>, headers: HeaderMap) -> Response {
    if let Err(r) = authorize(&admin, &headers) {
        return r.into_response();
    }
    axum::Json(admin.migrations.status()).into_response()
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
    #[serde(default)]
    fuse: Option<f64>,
    #[serde(default)]
    force: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CanaryBody {
    consumer: String,
    share: f64,
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

fn command(action: &str, body: &[u8]) -> Result<Command, AdminError> {
    Ok(match action {
        "start" => {
            let b: StartBody = parse(body)?;
            let model = |s: &str| {
                s.parse::<ModelRef>()
                    .map_err(|e| error(StatusCode::BAD_REQUEST, "invalid_model", e.to_string()))
            };
            Command::Start {
                from: model(&b.from)?,
                to: model(&b.to)?,
            }
        }
        "weight" => {
            let b: WeightBody = parse(body)?;
            if b.adapter.is_none() && (b.fuse.is_some() || b.force) {
                return Err(error(
                    StatusCode::BAD_REQUEST,
                    "invalid_json",
                    "\"fuse\" and \"force\" go with an \"adapter\"",
                ));
            }
            Command::Weight {
                consumer: b.consumer,
                new: b.new,
                adapter: b.adapter,
                fuse: b.fuse,
                force: b.force,
            }
        }
        "canary" => {
            let b: CanaryBody = parse(body)?;
            Command::Canary {
                consumer: b.consumer,
                share: b.share,
            }
        }
        "cutover" => {
            let b: ConsumerBody = parse(body)?;
            Command::Cutover {
                consumer: b.consumer,
                force: b.force,
            }
        }
        "rollback" => {
            let b: ConsumerBody = parse(body)?;
            if b.force {
                return Err(error(
                    StatusCode::BAD_REQUEST,
                    "invalid_json",
                    "rollback takes no force",
                ));
            }
            Command::Rollback {
                consumer: b.consumer,
            }
        }
        "decommission" => Command::Decommission,
        other => {
            return Err(error(
                StatusCode::NOT_FOUND,
                "unknown_action",
                format!(
                    "no action {other:?}: start, weight, canary, cutover, rollback, decommission"
                ),
            ));
        }
    })
}

/// A migration action: `start` `{"from", "to"}`, `weight` `{"consumer", "new", "adapter"?}`,
/// `canary` `{"consumer", "share"}`, `cutover`, `rollback` or `decommission`
/// `{"consumer"?, "force"?}`.
#[utoipa::path(
    post,
    path = "/admin/v1/migration/{action}",
    tag = "admin",
    security(("bearer" = [])),
    params(("action" = String, Path, description = "start, weight, cutover, rollback or decommission")),
    request_body(content = Object, description = "The action's fields"),
    responses(
        (status = 200, description = "What the action wrote to the control log", body = Object),
        (status = 400, description = "A body the action cannot read", body = embedstream_schemas::api::ErrorBody),
        (status = 401, description = "No or a wrong bearer token", body = embedstream_schemas::api::ErrorBody),
        (status = 404, description = "No such action, or the admin API is disabled (no admin token)", body = embedstream_schemas::api::ErrorBody),
        (status = 409, description = "Refused by the migration's rules", body = embedstream_schemas::api::ErrorBody),
        (status = 500, description = "The control log could not be written", body = embedstream_schemas::api::ErrorBody),
    )
)]
pub(crate) async fn action(
    State(admin): State<Arc<Admin>>,
    Path(action): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Err(r) = authorize(&admin, &headers) {
        return r.into_response();
    }
    let command = match command(&action, &body) {
        Ok(c) => c,
        Err(e) => return e.into_response(),
    };
    match admin.migrations.apply(command).await {
        Ok(applied) => {
            tracing::info!(action, applied = %applied, "Admin action applied.");
            axum::Json(applied).into_response()
        }
        Err(CommandError::Refused(reason)) => {
            error(StatusCode::CONFLICT, "refused", reason).into_response()
        }
        Err(CommandError::Failed(reason)) => {
            error(StatusCode::INTERNAL_SERVER_ERROR, "failed", reason).into_response()
        }
    }
}
