//! Drift-Adapter latency for `loadtest/adapter_eval.py`: the time of one `apply` (map and
//! normalize, the sink's serving path on int8 products) and of one `apply_exact` (f32) per
//! query, single thread, back to back over the query vectors, `--passes` times. Prints one
//! JSON array, one object per adapter, with p50 and p99 in microseconds.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Result;
use clap::Parser;
use embedstream_adapter::{Adapter, AdapterError};
use embedstream_loadtest::at_quantile;

#[derive(Debug, Parser)]
struct Args {
    /// Folder of adapter artifacts.
    #[arg(long)]
    adapters_dir: PathBuf,
    /// Adapters to time (names or files).
    #[arg(long, value_delimiter = ',', required = true)]
    adapters: Vec<String>,
    /// Query vectors of the new model (`{"id", "vector"}` lines).
    #[arg(long)]
    queries: PathBuf,
    /// Timed passes over the queries.
    #[arg(long, default_value_t = 20)]
    passes: usize,
}

/// p50 and p99 of `f` over `queries`, `passes` times, in microseconds.
fn timed(
    queries: &[Vec<f32>],
    passes: usize,
    f: impl Fn(&[f32]) -> Result<Vec<f32>, AdapterError>,
) -> Result<(f64, f64)> {
    let mut times = Vec::with_capacity(queries.len() * passes.max(1));
    for _ in 0..passes.max(1) {
        for q in queries {
            let t = Instant::now();
            let out = f(q);
            times.push(t.elapsed().as_secs_f64() * 1e6);
            std::hint::black_box(out)?;
        }
    }
    times.sort_by(f64::total_cmp);
    Ok((at_quantile(&times, 0.5), at_quantile(&times, 0.99)))
}

fn main() -> Result<()> {
    let args = Args::parse();
    let queries: Vec<Vec<f32>> = embedstream_adapter::lines::read_vectors(&args.queries)?
        .into_values()
        .map(|(_, v)| v)
        .collect();
    anyhow::ensure!(
        !queries.is_empty(),
        "{}: no query vectors",
        args.queries.display()
    );
    let mut rows = Vec::new();
    for name in &args.adapters {
        let a = Adapter::load(&embedstream_adapter::resolve(&args.adapters_dir, name)?)?;
        let (p50, p99) = timed(&queries, args.passes, |q| a.apply(q))?;
        let (exact_p50, exact_p99) = timed(&queries, args.passes, |q| a.apply_exact(q))?;
        rows.push(serde_json::json!({
            "adapter": a.meta.name,
            "queries": queries.len(),
            "passes": args.passes,
            "latency_us_p50": p50,
            "latency_us_p99": p99,
            "exact_latency_us_p50": exact_p50,
            "exact_latency_us_p99": exact_p99,
        }));
    }
    println!("{}", serde_json::to_string_pretty(&rows)?);
    Ok(())
}
