//! The online gate: what a consumer's request-level canary has shown, judged by its
//! [`CanaryPolicy`] into an [`OnlineVerdict`] the control log records under
//! `gate/<migration>/<consumer>/online` and `migrate cutover` reads.
//!
//! Rules, in order (Δ = canary − control on the policy's metric, [low, high] its always-valid
//! interval with the margin as mixing scale):
//!
//! 1. **Regression** when `high < −margin`: the canary is worse than the consumer accepts.
//!    Checked at every look, from the first exposures (the interval stays valid).
//! 2. **Parity** when the offline gate's gain is at least `parity_gain` and `high <
//!    parity_lift × gain`: the gain predicted offline is excluded online, so the golden set no
//!    longer represents production and the migration halts for its audit.
//! 3. **Passed** when each arm has the exposures the configured power needs
//!    ([`required_exposures`]) and `low > −margin` (no regression beyond the margin).
//! 4. **Pending** otherwise.
//!
//! Regression and parity are final for a migration: the join job does not overwrite them.

use embedstream_schemas::consumers::CanaryPolicy;
use embedstream_schemas::records::{GateResult, OnlineGate, OnlineVerdict};

use super::join::ArmOutcomes;
use super::stats::{Comparison, Tally, compare, required_exposures};

/// The tally of `metric` (`click`, `conversion`, `dwell`) in an arm's outcomes.
pub fn tally(outcomes: &ArmOutcomes, metric: &str) -> Tally {
    match metric {
        "conversion" => outcomes.conversion,
        "dwell" => outcomes.dwell,
        _ => outcomes.click,
    }
}

/// The gate's judgement of one consumer's canary.
#[derive(Debug, Clone, PartialEq)]
pub struct Judged {
    /// The verdict.
    pub verdict: OnlineVerdict,
    /// Canary − control with its interval, once both arms have two exposures and variance.
    pub comparison: Option<Comparison>,
    /// Exposures per arm for the configured power, once the variance is known.
    pub required: Option<u64>,
    /// The online gain the offline gain predicts, when parity is checked.
    pub predicted_gain: Option<f64>,
    /// The verdict in words.
    pub reason: String,
}

/// Judges `canary` against `control` by `policy`; `offline_gain` is new − old of the
/// migration's cutover gate, when one was recorded.
pub fn judge(
    policy: &CanaryPolicy,
    control: &Tally,
    canary: &Tally,
    offline_gain: Option<f64>,
) -> Judged {
    let metric = &policy.metric;
    let margin = policy.margin;
    let required = required_exposures(
        control.variance(),
        canary.variance(),
        margin,
        policy.alpha,
        policy.power,
    );
    let predicted_gain = offline_gain
        .filter(|g| *g >= policy.parity_gain)
        .map(|g| g * policy.parity_lift);
    let judged = |verdict, comparison, reason: String| Judged {
        verdict,
        comparison,
        required,
        predicted_gain,
        reason,
    };
    let Some(cmp) = compare(control, canary, policy.alpha, margin) else {
        return judged(
            OnlineVerdict::Pending,
            None,
            format!(
                "{} control and {} canary exposures: waiting for two in each arm and some variance in {metric}",
                control.n, canary.n
            ),
        );
    };
    let interval = format!(
        "{metric} canary {:.4} vs control {:.4}, difference {:+.4} in [{:+.4}, {:+.4}]",
        canary.mean(),
        control.mean(),
        cmp.difference,
        cmp.low,
        cmp.high
    );
    if cmp.high < -margin {
        return judged(
            OnlineVerdict::Regression,
            Some(cmp),
            format!("regression: {interval}, below the margin −{margin}"),
        );
    }
    if let Some(predicted) = predicted_gain
        && cmp.high < predicted
    {
        return judged(
            OnlineVerdict::Parity,
            Some(cmp),
            format!(
                "parity: the offline gate's gain {:+.4} predicts {predicted:+.4} online, which {interval} excludes; audit the golden set",
                offline_gain.unwrap_or_default()
            ),
        );
    }
    let enough = required.is_some_and(|r| control.n >= r && canary.n >= r);
    if enough && cmp.low > -margin {
        return judged(
            OnlineVerdict::Passed,
            Some(cmp),
            format!("passed: {interval}, above the margin −{margin}"),
        );
    }
    let wanted = required.map_or_else(|| "unknown".to_owned(), |r| r.to_string());
    judged(
        OnlineVerdict::Pending,
        Some(cmp),
        format!(
            "pending: {interval}; {} control and {} canary exposures of {wanted} per arm",
            control.n, canary.n
        ),
    )
}

/// The gate record of a judgement.
#[allow(clippy::too_many_arguments)]
pub fn gate_result(
    migration_id: &str,
    consumer: &str,
    policy: &CanaryPolicy,
    control: &Tally,
    canary: &Tally,
    offline_gain: Option<f64>,
    judged: &Judged,
    watermark: i64,
) -> GateResult {
    let (low, high) = judged
        .comparison
        .map_or((f64::NEG_INFINITY, f64::INFINITY), |c| (c.low, c.high));
    let as_i64 = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
    GateResult {
        migration_id: migration_id.to_owned(),
        consumer: consumer.to_owned(),
        metric: format!("online:{}", policy.metric),
        old_value: control.mean(),
        new_value: canary.mean(),
        ci_low: low,
        ci_high: high,
        coverage: 1.0,
        passed: judged.verdict == OnlineVerdict::Passed,
        queries: 0,
        adapter: None,
        fuse: None,
        online: Some(OnlineGate {
            verdict: judged.verdict,
            control_exposures: as_i64(control.n),
            canary_exposures: as_i64(canary.n),
            required_exposures: judged.required.map(as_i64),
            margin: policy.margin,
            alpha: policy.alpha,
            power: policy.power,
            offline_gain,
            predicted_gain: judged.predicted_gain,
            watermark,
            reason: judged.reason.clone(),
        }),
    }
}

/// Why the online gate refuses `consumer`'s cutover, or `None` when it lets it through. The
/// gate applies to a consumer whose canary ran in this migration (`canary_ran`) or that has an
/// online gate record; it lets through only a PASSED verdict.
pub fn online_refusal(
    gate: Option<&GateResult>,
    consumer: &str,
    canary_ran: bool,
) -> Option<String> {
    let online = gate.and_then(|g| g.online.as_ref());
    match online {
        None if canary_ran => Some(format!(
            "{consumer}: its canary has no online verdict yet (the canary join job records one)"
        )),
        None => None,
        Some(o) if o.verdict == OnlineVerdict::Passed => None,
        Some(o) => Some(format!(
            "{consumer}: online gate {:?}: {}",
            o.verdict, o.reason
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn arm(n: u64, rate: f64) -> Tally {
        let clicks = (n as f64 * rate).round();
        Tally {
            n,
            sum: clicks,
            sum_sq: clicks,
        }
    }

    #[test]
    fn each_verdict_in_its_order() {
        let policy = CanaryPolicy::default();
        let pending = judge(&policy, &arm(1, 0.1), &arm(1, 0.1), None);
        assert_eq!(pending.verdict, OnlineVerdict::Pending);
        assert!(pending.comparison.is_none());

        // A 3-point drop at 5,000 exposures per arm: out beyond the 0.5-point margin.
        let drop = judge(&policy, &arm(5000, 0.10), &arm(5000, 0.07), None);
        assert_eq!(drop.verdict, OnlineVerdict::Regression, "{drop:?}");

        // Equal arms: pending below the required exposures, passed above them.
        let required = judge(&policy, &arm(1000, 0.1), &arm(1000, 0.1), None)
            .required
            .unwrap();
        assert!(required > 10_000, "{required}");
        let early = judge(&policy, &arm(1000, 0.1), &arm(1000, 0.1), None);
        assert_eq!(early.verdict, OnlineVerdict::Pending);
        let n = required * 2;
        let pass = judge(&policy, &arm(n, 0.1), &arm(n, 0.1), None);
        assert_eq!(pass.verdict, OnlineVerdict::Passed, "{pass:?}");
        assert!(pass.reason.starts_with("passed"));

        // The same arms after an offline gain of 5 points (predicting +0.5 online): parity.
        let parity = judge(&policy, &arm(n, 0.1), &arm(n, 0.1), Some(0.05));
        assert_eq!(parity.verdict, OnlineVerdict::Parity, "{parity:?}");
        assert_eq!(parity.predicted_gain, Some(0.05 * policy.parity_lift));
        // A gain below parity_gain is not checked; a canary that shows the gain passes.
        let small = judge(&policy, &arm(n, 0.1), &arm(n, 0.1), Some(0.02));
        assert_eq!(small.verdict, OnlineVerdict::Passed);
        let shown = judge(&policy, &arm(n, 0.10), &arm(n, 0.11), Some(0.05));
        assert_eq!(shown.verdict, OnlineVerdict::Passed, "{shown:?}");
    }

    #[test]
    fn the_record_and_the_refusal() {
        let policy = CanaryPolicy::default();
        let (c, t) = (arm(5000, 0.10), arm(5000, 0.07));
        let judged = judge(&policy, &c, &t, Some(0.01));
        let g = gate_result("m1", "ads", &policy, &c, &t, Some(0.01), &judged, 42);
        assert_eq!(g.metric, "online:click");
        assert!(!g.passed);
        let o = g.online.as_ref().unwrap();
        assert_eq!(
            (o.control_exposures, o.canary_exposures, o.watermark),
            (5000, 5000, 42)
        );
        let refusal = online_refusal(Some(&g), "ads", true).unwrap();
        assert!(refusal.contains("Regression"), "{refusal}");
        assert!(online_refusal(None, "ads", true).is_some());
        assert!(online_refusal(None, "ads", false).is_none());
        let passed = GateResult {
            online: Some(OnlineGate {
                verdict: OnlineVerdict::Passed,
                ..o.clone()
            }),
            ..g.clone()
        };
        assert!(online_refusal(Some(&passed), "ads", true).is_none());
    }
}
