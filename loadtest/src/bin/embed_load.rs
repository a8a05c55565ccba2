//! Closed-loop load on an embeddings API for `loadtest/embed_api_bench.py`: `--concurrency`
//! clients, each sending the next `--batch` texts of `--texts` (JSON lines with `"text"`,
//! taken in order, each text once) and waiting for the answer before sending again, until
//! every text was sent. Every answer must be 200 with one vector per text (counted in the
//! body, not parsed, so the client spends little of the machine).
//!
//! Prints one JSON object: requests, texts, seconds, requests/s, texts/s, latency p50/p99
//! (ms), errors.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use clap::Parser;
use embedstream_loadtest::at_quantile;
use serde_json::json;

#[derive(Parser)]
struct Args {
    /// The router's base URL.
    #[arg(long, default_value = "http://127.0.0.1:9401")]
    url: String,
    /// `openai` (`POST /v1/embeddings`) or `tei` (`POST /embed`).
    #[arg(long, default_value = "openai")]
    api: String,
    #[arg(long, default_value = "minilm-l6-v2@1")]
    model: String,
    /// JSON lines with a `"text"`.
    #[arg(long)]
    texts: std::path::PathBuf,
    /// Texts per request.
    #[arg(long, default_value_t = 1)]
    batch: usize,
    /// Requests in flight.
    #[arg(long, default_value_t = 8)]
    concurrency: usize,
    /// Send only the first this many texts (all when absent).
    #[arg(long)]
    limit: Option<usize>,
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    let texts: Vec<String> = std::fs::read_to_string(&args.texts)
        .with_context(|| format!("cannot read {}", args.texts.display()))?
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| -> Result<String> {
            let v: serde_json::Value = serde_json::from_str(l)?;
            Ok(v["text"]
                .as_str()
                .context("a line without text")?
                .to_owned())
        })
        .collect::<Result<_>>()?;
    let texts = &texts[..args.limit.unwrap_or(texts.len()).min(texts.len())];
    let batches: Vec<Vec<String>> = texts
        .chunks(args.batch.max(1))
        .map(<[String]>::to_vec)
        .collect();
    let (path, marker) = match args.api.as_str() {
        "openai" => ("/v1/embeddings", "\"object\":\"embedding\""),
        "tei" => ("/embed", "["),
        other => bail!("unknown api {other:?} (openai, tei)"),
    };
    let url = format!("{}{path}", args.url.trim_end_matches('/'));
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(args.concurrency)
        .build()?;
    let batches = Arc::new(batches);
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..args.concurrency.max(1) {
        let (client, url, batches, next) = (
            client.clone(),
            url.clone(),
            Arc::clone(&batches),
            Arc::clone(&next),
        );
        let (api, model) = (args.api.clone(), args.model.clone());
        tasks.spawn(async move {
            let mut latencies = Vec::new();
            let mut errors = 0usize;
            let mut embedded = 0usize;
            let mut first_error = None;
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(batch) = batches.get(i) else { break };
                let body = if api == "openai" {
                    json!({"input": batch, "model": model})
                } else {
                    json!({"inputs": batch, "model": model, "truncate": true})
                };
                let sent = Instant::now();
                let outcome = match client.post(&url).json(&body).send().await {
                    Ok(r) => {
                        let status = r.status();
                        match r.text().await {
                            // TEI: an array of arrays, so one more '[' than vectors.
                            Ok(t)
                                if status.is_success()
                                    && t.matches(marker).count()
                                        == batch.len() + usize::from(marker == "[") =>
                            {
                                Ok(())
                            }
                            Ok(t) => Err(format!("{status}: {}", &t[..t.len().min(300)])),
                            Err(e) => Err(format!("{status}: unreadable body: {e}")),
                        }
                    }
                    Err(e) => Err(format!("no answer: {e}")),
                };
                let ok = match outcome {
                    Ok(()) => true,
                    Err(e) => {
                        first_error.get_or_insert(e);
                        false
                    }
                };
                if ok {
                    latencies.push(sent.elapsed().as_secs_f64() * 1000.0);
                    embedded += batch.len();
                } else {
                    errors += 1;
                }
            }
            (latencies, errors, embedded, first_error)
        });
    }
    let mut latencies = Vec::new();
    let (mut errors, mut embedded, mut first_error) = (0, 0, None);
    while let Some(done) = tasks.join_next().await {
        let (l, e, t, f) = done?;
        latencies.extend(l);
        errors += e;
        embedded += t;
        first_error = first_error.or(f);
    }
    let seconds = started.elapsed().as_secs_f64();
    if latencies.is_empty() {
        bail!("no request succeeded ({errors} errors)");
    }
    latencies.sort_by(f64::total_cmp);
    let requests = latencies.len();
    println!(
        "{}",
        json!({
            "api": args.api,
            "batch": args.batch,
            "concurrency": args.concurrency,
            "requests": requests,
            "texts": embedded,
            "seconds": seconds,
            "requests_per_s": requests as f64 / seconds,
            "texts_per_s": embedded as f64 / seconds,
            "p50_ms": at_quantile(&latencies, 0.50),
            "p99_ms": at_quantile(&latencies, 0.99),
            "errors": errors,
            "first_error": first_error,
        })
    );
    Ok(())
}
