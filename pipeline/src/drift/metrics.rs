//! Metric names of the drift monitor.

/// Gauge, by model and kind (`self`, `cross_version`): mean cosine of the last report.
pub const MEAN_COSINE: &str = "embedstream_drift_mean_cosine";
/// Gauge, by model and kind: minimum cosine of the last report.
pub const MIN_COSINE: &str = "embedstream_drift_min_cosine";
/// Gauge, by model: largest |‖v‖ − 1| of the last self report.
pub const NORM_ERROR: &str = "embedstream_drift_max_norm_error";
/// Gauge, by model: 1 while the last self report is an alert.
pub const ALERT: &str = "embedstream_drift_alert";
/// Gauge, by model: 1 while the version is active and scored every interval, 0 once it
/// is not (retired, rolled back): its other gauges then keep their last values, which
/// alert rules must not read as current (they join on this being 1).
pub const SCORED: &str = "embedstream_drift_scored";
/// Counter, by model, kind and verdict: reports published.
pub const REPORTS: &str = "embedstream_drift_reports_total";
