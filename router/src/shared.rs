//! What the router's handlers share, and asking every version's sink at once.

use std::collections::BTreeMap;
use std::sync::Arc;

use embedstream_schemas::control::ControlState;
use embedstream_topics::slice::Slice;
use tokio::sync::watch;

use crate::config::RouterConfig;

pub(crate) struct Shared {
    pub(crate) config: RouterConfig,
    pub(crate) client: reqwest::Client,
    pub(crate) plans: watch::Receiver<Arc<ControlState>>,
}

/// `GET path` of each of `targets` (`(label, base URL)`), at once: each label with the body,
/// or null when the call failed or answered an error.
pub(crate) async fn get_each<K>(
    shared: &Shared,
    targets: Vec<(K, String)>,
    path: &str,
    key: Option<&(axum::http::HeaderName, axum::http::HeaderValue)>,
) -> Vec<(K, serde_json::Value)> {
    let calls = targets.into_iter().map(|(label, base)| {
        let url = format!("{}{path}", base.trim_end_matches('/'));
        let mut call = shared.client.get(url);
        if let Some((name, value)) = key {
            call = call.header(name, value);
        }
        async move {
            let value = match call.send().await {
                Ok(r) if r.status().is_success() => {
                    r.json().await.unwrap_or(serde_json::Value::Null)
                }
                _ => serde_json::Value::Null,
            };
            (label, value)
        }
    });
    futures::future::join_all(calls).await
}

/// Each version's `/v1/stats`: its one instance's, or, for a version in slices, one replica's
/// per slice summed (`items`, `lag`) with their shards listed together and `slices` saying
/// which answered. Null when no slice answered.
pub(crate) async fn version_stats(shared: &Shared) -> BTreeMap<String, serde_json::Value> {
    let layouts = shared.config.backends.layouts();
    let mut targets = Vec::new();
    for (model, scatter) in &layouts {
        for t in &scatter.slices {
            if let Some((_, url)) = t.replicas.first() {
                targets.push(((model.clone(), t.slice), url.clone()));
            }
        }
    }
    let answers: BTreeMap<(String, Slice), serde_json::Value> =
        get_each(shared, targets, "/v1/stats", None)
            .await
            .into_iter()
            .collect();
    layouts
        .into_iter()
        .map(|(model, scatter)| {
            let parts: Vec<(Slice, &serde_json::Value)> = scatter
                .slices
                .iter()
                .map(|t| {
                    let v = answers
                        .get(&(model.clone(), t.slice))
                        .unwrap_or(&serde_json::Value::Null);
                    (t.slice, v)
                })
                .collect();
            let answered: Vec<&(Slice, &serde_json::Value)> =
                parts.iter().filter(|(_, v)| !v.is_null()).collect();
            let value = match answered.as_slice() {
                [] => serde_json::Value::Null,
                [(slice, one)] if parts.len() == 1 && slice.is_whole() => (*one).clone(),
                _ => {
                    let sum = |field: &str| -> i64 {
                        answered.iter().filter_map(|(_, v)| v[field].as_i64()).sum()
                    };
                    let shards: Vec<serde_json::Value> = answered
                        .iter()
                        .flat_map(|(_, v)| v["shards"].as_array().cloned().unwrap_or_default())
                        .collect();
                    let slices: BTreeMap<String, bool> = parts
                        .iter()
                        .map(|(s, v)| (s.to_string(), !v.is_null()))
                        .chain(scatter.missing.iter().map(|m| (m.clone(), false)))
                        .collect();
                    serde_json::json!({
                        "topic": answered[0].1["topic"],
                        "items": sum("items"),
                        "lag": sum("lag"),
                        "shards": shards,
                        "slices": slices,
                    })
                }
            };
            (model, value)
        })
        .collect()
}
