//! `embedstream embed`: JSON lines `{"id", "text"}` in, `{"id", "vector"}` out, same order.
//!
//! A bad line (invalid JSON, no id, empty or whitespace-only text, text over the size limit)
//! is reported on stderr with its line number and id and skipped; the others go on, and the
//! run exits non-zero at the end if any line was bad. Reading and validating, the model, and
//! writing run concurrently with a few chunks in flight.

use std::io::{BufRead, BufWriter, IsTerminal, Write};
use std::path::PathBuf;
use std::sync::mpsc;
use std::time::Instant;

use anyhow::{Context, bail};
use embedstream_pipeline::embed::burn_model::Device;
use embedstream_pipeline::embed::engine::{EmbedOptions, EngineConfig, InputKind, Pending};
use embedstream_topics::{ModelRef, ModelSpec};
use serde_json::Value;

/// Options of `embed`.
#[derive(Debug, clap::Args)]
pub struct EmbedArgs {
    /// Model version (`id@version`, or just the id for version 1): built in, or registered
    /// in the platform's control log (read only for a version that is not built in).
    #[arg(long)]
    model: String,
    #[command(flatten)]
    platform: super::platform::PlatformArgs,
    /// JSON lines to read (stdin when absent).
    #[arg(long)]
    input: Option<PathBuf>,
    /// Where to write the vectors (stdout when absent).
    #[arg(long)]
    output: Option<PathBuf>,
    /// Max texts per forward pass.
    #[arg(long, default_value_t = 32)]
    batch_size: usize,
    /// Max padded tokens per forward pass.
    #[arg(long, default_value_t = 8192)]
    batch_tokens: usize,
    /// cpu or cuda.
    #[arg(long, default_value = "cpu")]
    device: Device,
    /// Model replicas on their own threads (CPU only; a GPU runs one): one per core to keep
    /// busy.
    #[arg(long, env = "EMBEDSTREAM_REPLICAS", default_value_t = 2)]
    replicas: usize,
    /// What the texts are: `document` (the model's document prompt, if it has one), `query`
    /// (its query prompt) or `as-is` (no prompt).
    #[arg(long, default_value = "document", value_parser = ["document", "query", "as-is"])]
    input_type: String,
    /// Texts longer than this many bytes are refused (they would be truncated anyway).
    #[arg(long, default_value_t = 1 << 20)]
    max_text_bytes: usize,
}

const CHUNK: usize = 512;

struct Chunk {
    ids: Vec<Value>,
    pending: Pending,
}

fn parse_model(s: &str) -> anyhow::Result<ModelRef> {
    if s.contains('@') {
        Ok(s.parse()?)
    } else {
        Ok(ModelRef::new(s, 1)?)
    }
}

/// Validates one input line; `Err` is the message to report.
fn parse_line(line: &str, max_bytes: usize) -> Result<(Value, String), (Option<Value>, String)> {
    let v: Value = serde_json::from_str(line).map_err(|e| (None, format!("invalid JSON: {e}")))?;
    let id = v.get("id").cloned().filter(|id| !id.is_null());
    let Some(id) = id else {
        return Err((None, "no \"id\"".to_owned()));
    };
    let text = match v.get("text") {
        Some(Value::String(t)) => t,
        Some(_) => return Err((Some(id), "\"text\" is not a string".to_owned())),
        None => return Err((Some(id), "no \"text\"".to_owned())),
    };
    if text.trim().is_empty() {
        return Err((Some(id), "empty text".to_owned()));
    }
    if text.len() > max_bytes {
        return Err((
            Some(id),
            format!(
                "text is {} bytes, over the {max_bytes}-byte limit",
                text.len()
            ),
        ));
    }
    Ok((id, text.clone()))
}

/// The catalog entry of the model `args` names.
pub async fn model_spec(args: &EmbedArgs) -> anyhow::Result<ModelSpec> {
    args.platform.model_spec(&parse_model(&args.model)?).await
}

/// Embeds the input with `spec`, the model `args` names.
pub fn run(args: EmbedArgs, spec: ModelSpec) -> anyhow::Result<()> {
    let model = spec.model.clone();
    let config = EngineConfig {
        max_batch_size: args.batch_size.max(1),
        max_batch_tokens: args.batch_tokens.max(1),
        replicas: args.replicas.max(1),
        ..EngineConfig::default()
    };
    let (engine, threads) = embedstream_pipeline::embed::open(&spec, args.device, config)
        .with_context(|| format!("cannot load model {model}"))?;

    let input: Box<dyn BufRead + Send> = match &args.input {
        Some(p) => Box::new(std::io::BufReader::new(
            std::fs::File::open(p).with_context(|| format!("cannot open {}", p.display()))?,
        )),
        None => Box::new(std::io::BufReader::new(std::io::stdin())),
    };
    let mut output: Box<dyn Write> = match &args.output {
        Some(p) => Box::new(BufWriter::new(
            std::fs::File::create(p).with_context(|| format!("cannot create {}", p.display()))?,
        )),
        None => Box::new(BufWriter::new(std::io::stdout())),
    };

    let options = EmbedOptions {
        input: match args.input_type.as_str() {
            "query" => InputKind::Query,
            "as-is" => InputKind::AsIs,
            _ => InputKind::Document,
        },
        ..EmbedOptions::default()
    };
    // Reader: validate lines, submit chunks; at most 4 chunks in flight.
    let (tx, rx) = mpsc::sync_channel::<Chunk>(4);
    let max_bytes = args.max_text_bytes;
    let reader_engine = engine.clone();
    let reader = std::thread::spawn(move || -> anyhow::Result<usize> {
        let mut bad = 0usize;
        let mut ids = Vec::with_capacity(CHUNK);
        let mut texts = Vec::with_capacity(CHUNK);
        let flush = |ids: &mut Vec<Value>, texts: &mut Vec<String>| -> anyhow::Result<()> {
            if ids.is_empty() {
                return Ok(());
            }
            let pending = reader_engine.submit_with(std::mem::take(texts), options)?;
            tx.send(Chunk {
                ids: std::mem::take(ids),
                pending,
            })
            .ok();
            Ok(())
        };
        for (n, line) in input.lines().enumerate() {
            let line = line.with_context(|| format!("cannot read line {}", n + 1))?;
            if line.trim().is_empty() {
                continue;
            }
            match parse_line(&line, max_bytes) {
                Ok((id, text)) => {
                    ids.push(id);
                    texts.push(text);
                    if ids.len() == CHUNK {
                        flush(&mut ids, &mut texts)?;
                    }
                }
                Err((id, reason)) => {
                    bad += 1;
                    match id {
                        Some(id) => eprintln!("line {} (id {id}): {reason}", n + 1),
                        None => eprintln!("line {}: {reason}", n + 1),
                    }
                }
            }
        }
        flush(&mut ids, &mut texts)?;
        Ok(bad)
    });

    let progress = std::io::stderr().is_terminal();
    let start = Instant::now();
    let mut done = 0usize;
    for chunk in rx {
        let vectors = chunk.pending.wait()?;
        done += chunk.ids.len();
        for (id, vector) in chunk.ids.into_iter().zip(vectors) {
            serde_json::to_writer(
                &mut output,
                &serde_json::json!({"id": id, "vector": vector}),
            )?;
            output.write_all(b"\n")?;
        }
        if progress {
            let rate = done as f64 / start.elapsed().as_secs_f64().max(1e-9);
            eprint!("\r{done} texts embedded, {rate:.0}/s   ");
        }
    }
    if progress {
        eprintln!();
    }
    output.flush()?;
    let t = engine.times();
    tracing::info!(
        texts = t.texts,
        tokens = t.tokens,
        padded_tokens = t.padded_tokens,
        batches = t.batches,
        tokenize_s = t.tokenize.as_secs_f64(),
        forward_s = t.forward.as_secs_f64(),
        wall_s = start.elapsed().as_secs_f64(),
        "Embedded."
    );
    // The engine's threads end once its last handle (this one; the reader's is gone) drops.
    drop(engine);
    let bad = reader
        .join()
        .map_err(|_| anyhow::anyhow!("the reader thread panicked"))??;
    threads.join();
    if bad > 0 {
        bail!("{bad} line(s) could not be embedded (reported above)");
    }
    Ok(())
}
