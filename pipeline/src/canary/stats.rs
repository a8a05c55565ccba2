//! The canary's comparison: the difference of the canary arm's mean outcome and the control
//! arm's, with an **always-valid** confidence interval — a confidence sequence that holds at
//! every sample size at once, so the gate may look at it after every exposure and stop the
//! first time it excludes a value without inflating its error rate (a fixed-n interval
//! checked repeatedly would).
//!
//! The interval is the mixture sequential probability ratio test's (mSPRT) with a normal
//! mixing distribution N(0, τ²), inverted as in Johari, Pekelis, Koomen and Walsh, "Always
//! Valid Inference: Continuous Monitoring of A/B Tests" (Operations Research, 2022): with Δ
//! the observed difference and V = s²_c / n_c + s²_t / n_t its estimated variance, θ is in the
//! (1 − α) interval while
//!
//! ```text
//!   (Δ − θ)² < 2 · V (V + τ²) / τ² · ( ln(1/α) + ½ · ln((V + τ²) / V) )
//! ```
//!
//! The guarantee is asymptotic (the difference is treated as normal with the estimated
//! variance), as in that paper's two-sample use. τ sets where the interval is tightest: the
//! effect sizes that matter, here the gate's margin.

/// Outcomes of one arm: a count and the sum and sum of squares of a per-exposure value (1/0
/// for click-through, seconds for dwell).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Tally {
    /// Exposures.
    pub n: u64,
    /// Sum of the values.
    pub sum: f64,
    /// Sum of their squares.
    pub sum_sq: f64,
}

impl Tally {
    /// Adds one exposure's value.
    pub fn add(&mut self, value: f64) {
        self.n += 1;
        self.sum += value;
        self.sum_sq += value * value;
    }

    /// The mean (0 with no exposures).
    pub fn mean(&self) -> f64 {
        if self.n == 0 {
            0.0
        } else {
            self.sum / self.n as f64
        }
    }

    /// The sample variance (with n − 1; 0 below two exposures).
    pub fn variance(&self) -> f64 {
        if self.n < 2 {
            return 0.0;
        }
        let n = self.n as f64;
        ((self.sum_sq - self.sum * self.sum / n) / (n - 1.0)).max(0.0)
    }
}

/// The canary arm against the control arm.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Comparison {
    /// Canary mean − control mean.
    pub difference: f64,
    /// Lower end of the always-valid interval of the difference.
    pub low: f64,
    /// Upper end.
    pub high: f64,
}

/// The difference of `canary` and `control` with its always-valid `1 − alpha` interval for a
/// mixing scale `tau`; `None` until both arms have two exposures and some variance.
pub fn compare(control: &Tally, canary: &Tally, alpha: f64, tau: f64) -> Option<Comparison> {
    if control.n < 2 || canary.n < 2 {
        return None;
    }
    let v = control.variance() / control.n as f64 + canary.variance() / canary.n as f64;
    let usable = v > 0.0 && tau > 0.0 && alpha > 0.0 && alpha < 1.0;
    if !usable {
        return None;
    }
    let half = half_width(v, alpha, tau);
    let difference = canary.mean() - control.mean();
    Some(Comparison {
        difference,
        low: difference - half,
        high: difference + half,
    })
}

/// Half the width of the always-valid `1 − alpha` interval when the difference's variance is
/// `v` (`v`, `tau` > 0).
pub fn half_width(v: f64, alpha: f64, tau: f64) -> f64 {
    let t2 = tau * tau;
    (2.0 * v * (v + t2) / t2 * ((1.0 / alpha).ln() + 0.5 * ((v + t2) / v).ln())).sqrt()
}

/// Exposures per arm after which a canary **no worse than control** has its always-valid
/// interval above `−margin` with probability `power` — the sample size the gate waits for
/// before it may pass (it may fail at any size: the interval stays valid). `var_control` and
/// `var_canary` are the per-exposure variances; the mixing scale is the margin. `None` when a
/// variance is not positive or the inputs are out of range.
pub fn required_exposures(
    var_control: f64,
    var_canary: f64,
    margin: f64,
    alpha: f64,
    power: f64,
) -> Option<u64> {
    let total = var_control + var_canary;
    let usable = total > 0.0
        && total.is_finite()
        && margin > 0.0
        && alpha > 0.0
        && alpha < 1.0
        && power > 0.0
        && power < 1.0;
    if !usable {
        return None;
    }
    let z = normal_quantile(power);
    // Under no difference the estimate is N(0, V): it clears −margin + half width with
    // probability Φ((margin − h(V)) / √V).
    let enough = |n: u64| {
        let v = total / n as f64;
        margin - half_width(v, alpha, margin) >= z * v.sqrt()
    };
    let (mut lo, mut hi) = (1u64, 2u64);
    while !enough(hi) {
        lo = hi;
        hi = hi.checked_mul(2)?;
        if hi > 1 << 50 {
            return None;
        }
    }
    while hi - lo > 1 {
        let mid = lo + (hi - lo) / 2;
        if enough(mid) {
            hi = mid;
        } else {
            lo = mid;
        }
    }
    Some(hi)
}

/// The standard normal quantile Φ⁻¹(p) for p in (0, 1): Acklam's rational approximation
/// (relative error below 1.2e-9), which needs no special functions.
pub fn normal_quantile(p: f64) -> f64 {
    const A: [f64; 6] = [
        -3.969_683_028_665_376e1,
        2.209_460_984_245_205e2,
        -2.759_285_104_469_687e2,
        1.383_577_518_672_69e2,
        -3.066_479_806_614_716e1,
        2.506_628_277_459_239,
    ];
    const B: [f64; 5] = [
        -5.447_609_879_822_406e1,
        1.615_858_368_580_409e2,
        -1.556_989_798_598_866e2,
        6.680_131_188_771_972e1,
        -1.328_068_155_288_572e1,
    ];
    const C: [f64; 6] = [
        -7.784_894_002_430_293e-3,
        -3.223_964_580_411_365e-1,
        -2.400_758_277_161_838,
        -2.549_732_539_343_734,
        4.374_664_141_464_968,
        2.938_163_982_698_783,
    ];
    const D: [f64; 4] = [
        7.784_695_709_041_462e-3,
        3.224_671_290_700_398e-1,
        2.445_134_137_142_996,
        3.754_408_661_907_416,
    ];
    const LOW: f64 = 0.024_25;
    let tail = |q: f64| {
        (((((C[0] * q + C[1]) * q + C[2]) * q + C[3]) * q + C[4]) * q + C[5])
            / ((((D[0] * q + D[1]) * q + D[2]) * q + D[3]) * q + 1.0)
    };
    if p <= 0.0 {
        return f64::NEG_INFINITY;
    }
    if p >= 1.0 {
        return f64::INFINITY;
    }
    if p < LOW {
        tail((-2.0 * p.ln()).sqrt())
    } else if p > 1.0 - LOW {
        -tail((-2.0 * (1.0 - p).ln()).sqrt())
    } else {
        let q = p - 0.5;
        let r = q * q;
        (((((A[0] * r + A[1]) * r + A[2]) * r + A[3]) * r + A[4]) * r + A[5]) * q
            / (((((B[0] * r + B[1]) * r + B[2]) * r + B[3]) * r + B[4]) * r + 1.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A seeded Bernoulli stream (SplitMix64).
    struct Coin(u64);

    impl Coin {
        fn flip(&mut self, p: f64) -> f64 {
            self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^= z >> 31;
            f64::from(u8::from(((z >> 11) as f64 / (1u64 << 53) as f64) < p))
        }
    }

    #[test]
    fn the_interval_is_wider_than_a_fixed_sample_ones_and_narrows_with_exposures() {
        let arm = |n: u64, p: f64| Tally {
            n,
            sum: p * n as f64,
            sum_sq: p * n as f64,
        };
        let small = compare(&arm(1000, 0.1), &arm(1000, 0.1), 0.05, 0.005).unwrap();
        let large = compare(&arm(100_000, 0.1), &arm(100_000, 0.1), 0.05, 0.005).unwrap();
        let fixed = 1.96 * (2.0 * 0.1 * 0.9 / 1000.0_f64).sqrt();
        assert!(small.high > fixed && small.low < -fixed, "{small:?}");
        assert!(large.high - large.low < small.high - small.low);
        assert!(large.high < 0.005, "{large:?}");
        assert!(compare(&arm(1, 0.1), &arm(1000, 0.1), 0.05, 0.005).is_none());
    }

    #[test]
    fn the_normal_quantile_matches_known_values() {
        for (p, z) in [
            (0.5, 0.0),
            (0.8, 0.841_621_233_6),
            (0.975, 1.959_963_985),
            (0.01, -2.326_347_874),
            (0.999, 3.090_232_306),
        ] {
            assert!(
                (normal_quantile(p) - z).abs() < 1e-6,
                "{p}: {}",
                normal_quantile(p)
            );
        }
    }

    /// At the required exposures a canary equal to control passes (interval above −margin)
    /// in about `power` of the runs; a quarter of them passes in far fewer.
    #[test]
    fn the_required_exposures_give_the_configured_power() {
        let (p, margin, alpha, power) = (0.1, 0.02, 0.05, 0.8);
        let n = required_exposures(p * (1.0 - p), p * (1.0 - p), margin, alpha, power).unwrap();
        assert!((2_000..20_000).contains(&n), "{n}");
        let wider = required_exposures(p * (1.0 - p), p * (1.0 - p), margin * 2.0, alpha, power);
        assert!(wider.unwrap() < n / 2);
        let runs = 300;
        let passed_at = |n: u64, seed: u64| {
            let mut passed = 0;
            for run in 0..runs {
                let mut coin = Coin(seed + run);
                let (mut c, mut t) = (Tally::default(), Tally::default());
                for _ in 0..n {
                    c.add(coin.flip(p));
                    t.add(coin.flip(p));
                }
                let cmp = compare(&c, &t, alpha, margin).unwrap();
                passed += usize::from(cmp.low > -margin);
            }
            passed as f64 / runs as f64
        };
        let at_n = passed_at(n, 1_000);
        assert!(
            (0.72..=0.90).contains(&at_n),
            "passed in {at_n} of the runs"
        );
        assert!(passed_at(n / 4, 5_000) < 0.5);
        assert!(required_exposures(0.0, 0.0, margin, alpha, power).is_none());
    }

    /// Looked at after every 100 exposures per arm, up to 20,000: with no difference the
    /// interval excludes 0 in at most about α of the runs (a fixed-n 95% interval looked at
    /// that often would in far more); with a 2-point drop it excludes 0 in nearly all.
    #[test]
    fn peeking_keeps_the_error_rate_and_a_real_drop_is_found() {
        let runs = 200;
        let mut false_alarms = 0;
        let mut naive_alarms = 0;
        let mut found = 0;
        for run in 0..runs {
            for (drop, alarms, naive) in [
                (0.0, &mut false_alarms, Some(&mut naive_alarms)),
                (0.02, &mut found, None),
            ] {
                let mut coin = Coin(run * 2 + u64::from(drop > 0.0));
                let (mut c, mut t) = (Tally::default(), Tally::default());
                let mut alarmed = false;
                let mut naive_alarmed = false;
                for step in 1..=200 {
                    for _ in 0..100 {
                        c.add(coin.flip(0.10));
                        t.add(coin.flip(0.10 - drop));
                    }
                    let cmp = compare(&c, &t, 0.05, 0.005).unwrap();
                    alarmed |= cmp.low > 0.0 || cmp.high < 0.0;
                    let se = (c.variance() / c.n as f64 + t.variance() / t.n as f64).sqrt();
                    naive_alarmed |= step > 1 && cmp.difference.abs() > 1.96 * se;
                }
                *alarms += usize::from(alarmed);
                if let Some(n) = naive {
                    *n += usize::from(naive_alarmed);
                }
            }
        }
        assert!(
            false_alarms <= 15,
            "{false_alarms} of {runs} runs alarmed with no difference"
        );
        assert!(
            naive_alarms > 3 * false_alarms.max(5),
            "naive {naive_alarms}"
        );
        assert!(
            found >= runs as usize * 95 / 100,
            "a 2-point drop found in {found} of {runs}"
        );
    }
}
