//! What the router's handlers share, and asking every version's sink at once.

use std::collections::BTreeMap;
use std::sync::Arc;

use embedstream_schemas::control::ControlState;
use tokio::sync::watch;

use crate::config::RouterConfig;

pub(crate) struct Shared {
    pub(crate) config: RouterConfig,
    pub(crate) client: reqwest::Client,
    pub(crate) plans: watch::Receiver<Arc<ControlState>>,
}

/// Each version's sink `GET path`: `{"id@v": body | null}` (null when it failed or 404).
pub(crate) async fn fan_out_get(
    shared: &Shared,
    path: &str,
    key: Option<&(axum::http::HeaderName, axum::http::HeaderValue)>,
) -> BTreeMap<String, serde_json::Value> {
    let calls: Vec<_> = shared
        .config
        .backends
        .snapshot()
        .into_iter()
        .map(|(model, base)| {
            let url = format!("{}{path}", base.trim_end_matches('/'));
            let mut call = shared.client.get(url);
            if let Some((name, value)) = key {
                call = call.header(name, value);
            }
            (model.clone(), call.send())
        })
        .collect();
    let mut out = BTreeMap::new();
    for (model, call) in calls {
        let value = match call.await {
            Ok(r) if r.status().is_success() => r.json().await.unwrap_or(serde_json::Value::Null),
            _ => serde_json::Value::Null,
        };
        out.insert(model, value);
    }
    out
}
