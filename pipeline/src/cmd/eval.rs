//! `embedstream eval`: the per-consumer table of old vs new (and blends) on the golden sets.

use std::path::PathBuf;

use anyhow::Context;
use embedstream_pipeline::embed::burn_model::Device;
use embedstream_pipeline::eval::{self, Arm, EvalConfig, Evaluation};
use embedstream_pipeline::migrate::plan;
use tokio_util::sync::CancellationToken;

use super::platform::PlatformArgs;

/// Options of `eval`.
#[derive(Debug, Clone, clap::Args)]
pub struct EvalArgs {
    #[command(flatten)]
    pub platform: PlatformArgs,
    /// Golden sets (`golden.json` from `loadtest/golden_sets.py`); default: each consumer's
    /// `golden_set` in the consumers file.
    #[arg(long)]
    pub golden: Option<PathBuf>,
    /// The query router.
    #[arg(
        long,
        env = "EMBEDSTREAM_ROUTER_URL",
        default_value = "http://127.0.0.1:9400"
    )]
    pub router: String,
    /// Versions, baseline first (default: the current migration's from and to).
    #[arg(long, value_delimiter = ',')]
    pub versions: Vec<String>,
    /// Blending methods to evaluate as well (rrf, zscore).
    #[arg(long, value_delimiter = ',')]
    pub blends: Vec<String>,
    /// Weights of the new version in the blends.
    #[arg(long, value_delimiter = ',', default_value = "0.5")]
    pub weights: Vec<f64>,
    /// Drift-Adapters (new model into the baseline's) whose reads of the baseline's index are
    /// evaluated as well: adapted, and fused at each of `--fuse-weights`.
    #[arg(long, value_delimiter = ',')]
    pub adapters: Vec<String>,
    /// Weights of the adapted query in the fused arms, each in (0, 1].
    #[arg(long, value_delimiter = ',', default_value = "0.5")]
    pub fuse_weights: Vec<f64>,
    /// Consumers (default: every consumer in the golden file).
    #[arg(long, value_delimiter = ',')]
    pub consumers: Vec<String>,
    /// Requests in flight.
    #[arg(long, default_value_t = 8)]
    pub concurrency: usize,
    /// Where query embeddings run.
    #[arg(long, env = "EMBEDSTREAM_DEVICE", default_value = "cpu")]
    pub device: Device,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
    /// Only embed (and cache) the golden queries' vectors with each version, then exit.
    #[arg(long)]
    pub prepare: bool,
}

/// The versions to compare: given, or the current migration's.
pub async fn versions(
    platform: &PlatformArgs,
    given: &[String],
) -> anyhow::Result<(Vec<String>, Option<String>)> {
    if !given.is_empty() {
        return Ok((given.to_vec(), None));
    }
    let token = CancellationToken::new();
    let log = platform.control_log(token.clone()).await?;
    let state = log.state();
    token.cancel();
    let m = state
        .current_migration()
        .context("no migration in progress: give --versions old,new")?;
    Ok((
        vec![m.from_model.clone(), m.to_model.clone()],
        Some(m.migration_id.clone()),
    ))
}

/// The arms: old, new, then each blend at each weight.
pub fn arms(versions: &[String], blends: &[String], weights: &[f64]) -> Vec<Arm> {
    let mut arms: Vec<Arm> = versions
        .iter()
        .enumerate()
        .map(|(i, v)| Arm {
            name: match i {
                0 => "old".to_owned(),
                1 => "new".to_owned(),
                _ => v.clone(),
            },
            plan: vec![plan::entry(v, 1.0)],
            blend: None,
        })
        .collect();
    if versions.len() == 2 {
        for b in blends {
            for w in weights {
                arms.push(Arm {
                    name: format!("{b}@{w}"),
                    plan: vec![
                        plan::entry(&versions[0], 1.0 - w),
                        plan::entry(&versions[1], *w),
                    ],
                    blend: Some(b.clone()),
                });
            }
        }
    }
    arms
}

/// Runs `eval`.
pub async fn run(args: EvalArgs) -> anyhow::Result<()> {
    let (versions, _) = versions(&args.platform, &args.versions).await?;
    let golden = args.platform.golden(args.golden.as_deref())?;
    let catalog = args.platform.catalog().await?;
    if args.prepare {
        for v in &versions {
            let n = eval::query_vectors(&golden.sets, &golden.cache, v, &catalog, args.device)
                .await?
                .len();
            println!("{v}\t{n} query vectors in {}", golden.cache.display());
        }
        return Ok(());
    }
    let config = EvalConfig {
        router: args.router.clone(),
        golden,
        arms: [
            arms(&versions, &args.blends, &args.weights),
            adapter_arms(&versions[0], &args.adapters, &args.fuse_weights)?,
        ]
        .concat(),
        versions,
        consumers: args.consumers.clone(),
        concurrency: args.concurrency,
        device: args.device,
        catalog,
    };
    let evaluation = eval::evaluate(&config).await?;
    print(&evaluation, args.json)?;
    Ok(())
}

/// The arms reading the baseline `old` through each adapter: adapted, then fused at each weight.
pub fn adapter_arms(old: &str, adapters: &[String], fuse: &[f64]) -> anyhow::Result<Vec<Arm>> {
    if let Some(w) = fuse
        .iter()
        .find(|w| !embedstream_adapter::is_fuse_weight(**w))
    {
        anyhow::bail!("--fuse-weights are in (0, 1], not {w}");
    }
    let mut out = Vec::new();
    for a in adapters {
        out.push(adapter_arm(old, a, None, format!("adapted {a}")));
        for &w in fuse {
            out.push(adapter_arm(old, a, Some(w), format!("fused@{w} {a}")));
        }
    }
    Ok(out)
}

/// The arm `name` reading all of `old` through `adapter`, fused at `fuse` when set.
pub fn adapter_arm(old: &str, adapter: &str, fuse: Option<f64>, name: String) -> Arm {
    Arm {
        name,
        plan: vec![embedstream_schemas::records::ReadPlanEntry {
            adapter: Some(adapter.to_owned()),
            fuse,
            ..plan::entry(old, 1.0)
        }],
        blend: None,
    }
}

/// Prints the table (or JSON).
pub fn print(e: &Evaluation, json: bool) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string(e)?);
        return Ok(());
    }
    let items: Vec<String> = e.items.iter().map(|(v, n)| format!("{v}: {n}")).collect();
    println!(
        "items {}  coverage {:.2}%",
        items.join(", "),
        e.coverage * 100.0
    );
    for c in &e.consumers {
        println!(
            "{:<7} {:<12} n={:<4} (dropped {}, failed {})",
            c.consumer, c.metric, c.queries, c.dropped, c.failed
        );
        let old = c.arms.first().map_or(0.0, |a| a.mean);
        let new = c.arms.iter().find(|a| a.arm == "new").map(|a| a.mean);
        for a in &c.arms {
            // Reads through an adapter: their ratio to both models' own reads.
            let recovery = if a.arm.starts_with("adapted ") || a.arm.starts_with("fused@") {
                let ratio = |b: f64| if b > 0.0 { a.mean / b } else { f64::NAN };
                format!(
                    "  ÷ old {:.3}{}",
                    ratio(old),
                    new.map_or(String::new(), |n| format!("  ÷ new {:.3}", ratio(n)))
                )
            } else {
                String::new()
            };
            println!(
                "    {:<10} {:.3}   diff vs old {:+.3}  95% CI [{:+.3}, {:+.3}]{recovery}",
                a.arm, a.mean, a.diff, a.ci_low, a.ci_high
            );
        }
    }
    Ok(())
}
