//! The canary drill's repeated runs (`loadtest/canary_drill.py`): simulated users of one
//! consumer search a real query set; each answer is the top 10 of the user's arm's ranking of
//! that query (computed by the drill from the models' real vectors); users click with the
//! position-based model — rank r is examined with probability (1 / (r + 1))^eta, an examined
//! relevant item is clicked with probability `attract`, an examined irrelevant one with
//! `noise` — and the exposures and clicks go through the product's own join and online gate
//! (`embedstream_pipeline::canary`), judged every `look` exposures as the join job does every
//! second. Prints one JSON object per run: its verdict, the exposures when the gate decided,
//! and for the first run the trajectory of the interval.

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Parser;
use embedstream_pipeline::canary::gate::{judge, tally};
use embedstream_pipeline::canary::join::{Join, JoinConfig};
use embedstream_schemas::consumers::CanaryPolicy;
use embedstream_schemas::records::{
    Exposure, ExposureArm, FeedbackEvent, FeedbackKind, OnlineVerdict,
};
use serde::Deserialize;
use serde_json::json;

#[derive(Parser)]
struct Cli {
    /// `{"relevant": [[id…] per query], "arms": {"name": [[id…] top 10 per query]}}`.
    #[arg(long)]
    rankings: PathBuf,
    /// The arm the control serves.
    #[arg(long)]
    control: String,
    /// The arm the canary serves.
    #[arg(long)]
    canary: String,
    /// Independent runs.
    #[arg(long, default_value_t = 200)]
    runs: u64,
    /// Exposures per run at most (a run ends earlier at REGRESSION or PARITY).
    #[arg(long, default_value_t = 60_000)]
    max_exposures: u64,
    /// Share of units in the canary.
    #[arg(long, default_value_t = 0.5)]
    share: f64,
    /// Exposures between two looks of the gate.
    #[arg(long, default_value_t = 100)]
    look: u64,
    /// Position bias: rank r (0-based) is examined with probability (1 / (r + 1))^eta.
    #[arg(long, default_value_t = 1.0)]
    eta: f64,
    /// Click probability of an examined relevant item.
    #[arg(long, default_value_t = 0.7)]
    attract: f64,
    /// Click probability of an examined irrelevant item.
    #[arg(long, default_value_t = 0.03)]
    noise: f64,
    /// The offline gate's gain (new − old), for the parity check.
    #[arg(long)]
    offline_gain: Option<f64>,
    /// The policy's margin (CTR points as a fraction).
    #[arg(long, default_value_t = CanaryPolicy::default().margin)]
    margin: f64,
    /// Seed of the first run (run i uses seed + i).
    #[arg(long, default_value_t = 1)]
    seed: u64,
}

#[derive(Deserialize)]
struct Rankings {
    relevant: Vec<Vec<String>>,
    arms: BTreeMap<String, Vec<Vec<String>>>,
}

/// SplitMix64: a seeded uniform stream.
struct Rng(u64);

impl Rng {
    fn next_f64(&mut self) -> f64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        (z >> 11) as f64 / (1u64 << 53) as f64
    }
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let text = std::fs::read_to_string(&cli.rankings)
        .with_context(|| format!("reading {}", cli.rankings.display()))?;
    let rankings: Rankings = serde_json::from_str(&text)?;
    let arm = |name: &str| {
        rankings
            .arms
            .get(name)
            .with_context(|| format!("no arm {name:?} in the rankings"))
    };
    let (control, canary) = (arm(&cli.control)?, arm(&cli.canary)?);
    let queries = rankings.relevant.len();
    anyhow::ensure!(
        queries > 0 && control.len() == queries && canary.len() == queries,
        "each arm needs one ranking per query"
    );
    let policy = CanaryPolicy {
        margin: cli.margin,
        ..CanaryPolicy::default()
    };
    // Exposures are served 10 ms apart; feedback comes 1 s after its answer; the window
    // closes 5 s after it (the join's rules, on a compressed clock).
    let config = JoinConfig {
        window_ms: 5_000,
        lateness_ms: 0,
        skew_ms: 0,
    };
    for run in 0..cli.runs {
        let mut rng = Rng(cli
            .seed
            .wrapping_add(run)
            .wrapping_mul(0x2545_f491_4f6c_dd1d));
        let mut join = Join::new(config);
        let mut decided: Option<(OnlineVerdict, u64)> = None;
        let mut first_pass: Option<u64> = None;
        let mut trajectory = Vec::new();
        let mut served = 0u64;
        while served < cli.max_exposures {
            let at = i64::try_from(served).unwrap_or(i64::MAX) * 10;
            let in_canary = rng.next_f64() < cli.share;
            let q = ((rng.next_f64() * queries as f64) as usize).min(queries - 1);
            let shown = if in_canary { &canary[q] } else { &control[q] };
            let id = format!("r{served}");
            join.exposure(Exposure {
                request_id: id.clone(),
                unit_id: id.clone(),
                consumer: "sim".to_owned(),
                arm: if in_canary {
                    ExposureArm::Canary
                } else {
                    ExposureArm::Control
                },
                migration_id: "sim".to_owned(),
                share: cli.share,
                models: Vec::new(),
                items: shown.clone(),
                served_at: at,
            });
            for (rank, item) in shown.iter().enumerate() {
                let examined = rng.next_f64() < (1.0 / (rank as f64 + 1.0)).powf(cli.eta);
                let p = if rankings.relevant[q].contains(item) {
                    cli.attract
                } else {
                    cli.noise
                };
                if examined && rng.next_f64() < p {
                    join.feedback(
                        FeedbackEvent {
                            request_id: id.clone(),
                            item_id: item.clone(),
                            kind: FeedbackKind::Click,
                            value: 1.0,
                            event_time: at + 1_000,
                        },
                        at + 1_000,
                    );
                }
            }
            served += 1;
            if !served.is_multiple_of(cli.look.max(1)) {
                continue;
            }
            join.advance(at);
            let arm = |a: ExposureArm| {
                let key = ("sim".to_owned(), "sim".to_owned(), a);
                tally(
                    &join.outcomes().get(&key).copied().unwrap_or_default(),
                    &policy.metric,
                )
            };
            let (c, t) = (arm(ExposureArm::Control), arm(ExposureArm::Canary));
            let judged = judge(&policy, &c, &t, cli.offline_gain);
            let counted = c.n + t.n;
            if run == 0
                && let Some(cmp) = judged.comparison
            {
                trajectory.push(json!([counted, cmp.difference, cmp.low, cmp.high]));
            }
            match judged.verdict {
                OnlineVerdict::Regression | OnlineVerdict::Parity => {
                    decided = Some((judged.verdict, counted));
                    break;
                }
                OnlineVerdict::Passed if first_pass.is_none() => first_pass = Some(counted),
                _ => {}
            }
        }
        join.advance(i64::MAX);
        let means: Vec<f64> = [ExposureArm::Control, ExposureArm::Canary]
            .into_iter()
            .map(|a| {
                let key = ("sim".to_owned(), "sim".to_owned(), a);
                join.outcomes().get(&key).map_or(0.0, |o| o.click.mean())
            })
            .collect();
        let (verdict, at) = match decided {
            Some((v, n)) => (format!("{v:?}"), Some(n)),
            None if first_pass.is_some() => ("Passed".to_owned(), first_pass),
            None => ("Pending".to_owned(), None),
        };
        println!(
            "{}",
            json!({
                "run": run,
                "verdict": verdict,
                "decided_at_exposures": at,
                "first_passed_at_exposures": first_pass,
                "exposures": served,
                "ctr_control": means[0],
                "ctr_canary": means[1],
                "trajectory": (run == 0).then_some(trajectory),
            })
        );
    }
    Ok(())
}
