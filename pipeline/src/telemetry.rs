//! Logs and metrics for every embedstream process.
//!
//! Metrics go through the `metrics` facade into one Prometheus recorder per process, served
//! on `/metrics` of the process's HTTP port; histogram buckets are declared here, in one
//! place, for every phase.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::http::StatusCode;
use axum::routing::get;
use embedstream_index_sink::metric_names as index_metrics;
use embedstream_index_sink::service::metrics as sink_metrics;
use embedstream_topics::KafkaConfig;
use embedstream_topics::admin::Admin;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

/// Latency buckets in seconds, shared by every `*_seconds` histogram: 100 µs to 30 s.
pub const LATENCY_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0, 30.0,
];

/// Buckets (seconds) of the sinks' freshness histograms: 25 ms apart from 50 to 150 ms, so a
/// p99 near the 100 ms target is read from a narrow bucket rather than interpolated across
/// the shared buckets' 100–250 ms.
pub const FRESHNESS_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.125, 0.15, 0.2, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0, 30.0,
];

/// Buckets (seconds) of the index's background work (compaction, snapshot writes), which
/// can take minutes on a large shard: 1 ms to 30 min.
pub const BACKGROUND_BUCKETS: &[f64] = &[
    0.001, 0.01, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0,
];

/// The histograms of background work, which take [`BACKGROUND_BUCKETS`].
const BACKGROUND_HISTOGRAMS: [&str; 2] = [
    index_metrics::COMPACTION_SECONDS,
    index_metrics::SNAPSHOT_WRITE_SECONDS,
];

/// Size buckets for every `*_items` histogram (batch sizes): 1 to 4096.
pub const SIZE_BUCKETS: &[f64] = &[
    1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0, 4096.0,
];

/// Starts `tracing` output on stderr, filtered by `RUST_LOG` (default `info`).
pub fn init_logs() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

/// The exporter with every process's buckets. A `Full` matcher takes precedence over a
/// `Suffix` one (the exporter tries them in that order), so the sinks' freshness histograms
/// and the index's background work get their own buckets although their names end in
/// `_seconds`.
fn exporter() -> anyhow::Result<PrometheusBuilder> {
    let mut builder = PrometheusBuilder::new();
    for name in sink_metrics::FRESHNESS_HISTOGRAMS {
        builder =
            builder.set_buckets_for_metric(Matcher::Full(name.to_owned()), FRESHNESS_BUCKETS)?;
    }
    for name in BACKGROUND_HISTOGRAMS {
        builder =
            builder.set_buckets_for_metric(Matcher::Full(name.to_owned()), BACKGROUND_BUCKETS)?;
    }
    Ok(builder
        .set_buckets_for_metric(Matcher::Suffix("_seconds".to_owned()), LATENCY_BUCKETS)?
        .set_buckets_for_metric(Matcher::Suffix("_items".to_owned()), SIZE_BUCKETS)?)
}

/// Installs the process's Prometheus recorder and returns the route that serves it.
pub fn metrics_router() -> anyhow::Result<Router> {
    let handle: PrometheusHandle = exporter()?.install_recorder()?;
    Ok(Router::new().route(
        "/metrics",
        get(move || {
            let handle = handle.clone();
            async move { handle.render() }
        }),
    ))
}

/// `/metrics` with the health routes of a service whose clients use `kafka`:
/// - `/healthz`: 200 while the process serves HTTP (liveness);
/// - `/ready`: 200 when a metadata request to the brokers, with the service's own client
///   properties, answers within 2 s; 503 with the reason otherwise (a broker down, a wrong
///   password, an untrusted certificate).
pub fn service_router(kafka: KafkaConfig) -> anyhow::Result<Router> {
    let kafka = Arc::new(kafka);
    let health = Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route(
            "/ready",
            get(move || {
                let kafka = Arc::clone(&kafka);
                async move {
                    let asked = tokio::task::spawn_blocking(move || {
                        Admin::new(&kafka, Duration::from_secs(2))?.list()
                    })
                    .await;
                    match asked {
                        Ok(Ok(_)) => (StatusCode::OK, "ready\n".to_owned()),
                        Ok(Err(e)) => {
                            (StatusCode::SERVICE_UNAVAILABLE, format!("not ready: {e}\n"))
                        }
                        Err(_) => (
                            StatusCode::SERVICE_UNAVAILABLE,
                            "not ready: the check failed\n".to_owned(),
                        ),
                    }
                }
            }),
        );
    Ok(metrics_router()?.merge(health))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The buckets rendered for one histogram: (`le`, cumulative count), in order.
    fn buckets(text: &str, name: &str) -> Vec<(String, String)> {
        let prefix = format!("{name}_bucket{{");
        text.lines()
            .filter(|line| line.starts_with(&prefix))
            .map(|line| {
                let le = line
                    .split("le=\"")
                    .nth(1)
                    .unwrap()
                    .split('"')
                    .next()
                    .unwrap();
                let count = line.rsplit(' ').next().unwrap();
                (le.to_owned(), count.to_owned())
            })
            .collect()
    }

    fn bounds(text: &str, name: &str) -> Vec<String> {
        buckets(text, name).into_iter().map(|(le, _)| le).collect()
    }

    #[test]
    fn freshness_histograms_get_their_own_buckets_and_other_seconds_the_shared_ones() {
        let recorder = exporter().unwrap().build_recorder();
        let handle = recorder.handle();
        metrics::with_local_recorder(&recorder, || {
            metrics::histogram!(sink_metrics::FRESHNESS_SECONDS).record(0.12);
            metrics::histogram!(sink_metrics::EVENT_FRESHNESS_SECONDS).record(0.12);
            metrics::histogram!(sink_metrics::QUERY_SECONDS).record(0.12);
            metrics::histogram!(index_metrics::COMPACTION_SECONDS).record(95.0);
            metrics::histogram!("embedstream_stage_batch_items").record(3.0);
        });
        let text = handle.render();
        let le = |values: &[f64]| {
            let mut v: Vec<String> = values.iter().map(|b| b.to_string()).collect();
            v.push("+Inf".to_owned());
            v
        };
        for name in [
            sink_metrics::FRESHNESS_SECONDS,
            sink_metrics::EVENT_FRESHNESS_SECONDS,
        ] {
            assert_eq!(bounds(&text, name), le(FRESHNESS_BUCKETS), "{name}");
        }
        assert_eq!(
            bounds(&text, sink_metrics::QUERY_SECONDS),
            le(LATENCY_BUCKETS)
        );
        assert_eq!(
            bounds(&text, "embedstream_stage_batch_items"),
            le(SIZE_BUCKETS)
        );
        assert_eq!(
            bounds(&text, index_metrics::COMPACTION_SECONDS),
            le(BACKGROUND_BUCKETS)
        );
        // 0.12 s falls in the freshness buckets' (0.1, 0.125] and the shared (0.1, 0.25].
        let count = |name: &str, le: &str| {
            buckets(&text, name)
                .into_iter()
                .find(|(bound, _)| bound == le)
                .map(|(_, count)| count)
        };
        assert_eq!(
            count(sink_metrics::FRESHNESS_SECONDS, "0.1").as_deref(),
            Some("0")
        );
        assert_eq!(
            count(sink_metrics::FRESHNESS_SECONDS, "0.125").as_deref(),
            Some("1")
        );
        assert_eq!(
            count(sink_metrics::QUERY_SECONDS, "0.25").as_deref(),
            Some("1")
        );
    }
}
