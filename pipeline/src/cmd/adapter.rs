//! `embedstream adapter`: train, apply, list and evaluate Drift-Adapters.
//!
//! - `train --from OLD --to NEW --kind K` fits a map from NEW's space into OLD's (so OLD's
//!   index answers NEW's queries) on pairs: a sample of `--pairs N` live items of the `items`
//!   topic (or of `--items FILE`) embedded with both models, or pairs the user brings
//!   (`--pairs-file`, or two `embed` outputs with `--old-vectors` / `--new-vectors`). A sample
//!   of queries can be added to the items: from the router's query log (`--query-log`, the
//!   `queries` topic) or a file (`--queries`), embedded by both models as queries. It writes
//!   the next version of `<new>_to_<old>.<kind>` into the adapters folder.
//! - `apply --adapter NAME` maps `{"id", "vector"}` lines from the new space into the old one.
//! - `list` shows the artifacts and their training metadata.
//! - `eval` measures, on the golden sets, each adapter's reads (adapted, and fused with the
//!   old model's query) against both the old model's own queries and a full re-embed, with 95%
//!   intervals; `loadtest/` times the map.

use std::collections::BTreeMap;
use std::io::{BufRead, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, bail};
use embedstream_adapter::eval::{ConsumerSet, Estimate, Query, evaluate};
use embedstream_adapter::train::linear::ProcrustesOptions;
use embedstream_adapter::train::{Pairs, TrainConfig};
use embedstream_adapter::{self as adapter, Adapter, AdapterKind};
use embedstream_pipeline::embed::burn_model::Device;
use embedstream_pipeline::embed::engine::{EmbedOptions, EngineConfig, InputKind};
use embedstream_pipeline::eval::{load_golden, metric_value};
use embedstream_pipeline::migrate::backfill::{self, ItemsSource};
use embedstream_pipeline::query_log;
use embedstream_pipeline::stage::validate::Limits;
use embedstream_topics::{ModelRef, ModelSpec};
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use super::platform::PlatformArgs;

/// The adapters folder option.
#[derive(Debug, Clone, clap::Args)]
pub struct DirArg {
    /// Folder of adapter artifacts (default `$EMBEDSTREAM_HOME/adapters`).
    #[arg(long = "adapters-dir")]
    pub dir: Option<PathBuf>,
}

impl DirArg {
    /// The folder.
    pub fn path(&self) -> PathBuf {
        self.dir
            .clone()
            .unwrap_or_else(embedstream_pipeline::models::adapters_dir)
    }
}

/// `adapter` subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum AdapterCommand {
    /// Fit an adapter from the new model's space into the old one's.
    Train(Box<TrainArgs>),
    /// Map JSON lines `{"id", "vector"}` from the new space into the old one (stdin → stdout).
    Apply {
        #[command(flatten)]
        dir: DirArg,
        /// Adapter name (`<new>_to_<old>.<kind>.v<N>`) or file.
        #[arg(long)]
        adapter: String,
        /// Input (stdin when absent).
        #[arg(long)]
        input: Option<PathBuf>,
        /// Output (stdout when absent).
        #[arg(long)]
        output: Option<PathBuf>,
        /// f32 products instead of the int8 ones the sink serves with (cosine ≥ 0.9989
        /// between the two on the golden queries; f32 is ~5× slower).
        #[arg(long)]
        exact: bool,
    },
    /// List the adapters and their training metadata.
    List {
        #[command(flatten)]
        dir: DirArg,
        /// JSON lines instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Recovery ratio (adapter recall ÷ full re-embed recall) per consumer on the golden sets,
    /// and the latency each adapter adds per query.
    Eval(EvalArgs),
}

/// Options of `adapter train`.
#[derive(Debug, clap::Args)]
pub struct TrainArgs {
    #[command(flatten)]
    platform: PlatformArgs,
    #[command(flatten)]
    dir: DirArg,
    /// The old model (`id@version`): the index that will answer.
    #[arg(long)]
    from: ModelRef,
    /// The new model (`id@version`): whose query vectors are mapped.
    #[arg(long)]
    to: ModelRef,
    /// procrustes, affine or mlp.
    #[arg(long, default_value = "procrustes")]
    kind: AdapterKind,
    /// Pairs to use (a seeded sample of the items, or of the given pairs).
    #[arg(long, default_value_t = 5000)]
    pairs: usize,
    /// Train on these pairs (`{"id", "old", "new"}` lines) instead of embedding a sample.
    #[arg(long, conflicts_with_all = ["items", "old_vectors", "new_vectors"])]
    pairs_file: Option<PathBuf>,
    /// Old-model vectors (`embed` output, `{"id", "vector"}`), joined by id with
    /// `--new-vectors`.
    #[arg(long, requires = "new_vectors", conflicts_with = "items")]
    old_vectors: Option<PathBuf>,
    /// New-model vectors of the same items.
    #[arg(long, requires = "old_vectors")]
    new_vectors: Option<PathBuf>,
    /// Embed a sample of these items (`{"id", "text"}` lines) instead of the `items` topic.
    #[arg(long)]
    items: Option<PathBuf>,
    /// Also train on pairs of queries from the router's query log (the `queries` topic): a
    /// seeded sample of `--query-pairs` distinct texts, embedded by both models as queries.
    #[arg(long, conflicts_with_all = ["pairs_file", "old_vectors", "new_vectors"])]
    query_log: bool,
    /// Also train on pairs of these queries (one text per line), embedded by both models as
    /// queries.
    #[arg(long, conflicts_with_all = ["pairs_file", "old_vectors", "new_vectors"])]
    queries: Option<PathBuf>,
    /// With `--query-log`: only this consumer's queries (default: every consumer's).
    #[arg(long, requires = "query_log")]
    query_consumer: Option<String>,
    /// Query pairs to add with `--query-log` or `--queries`.
    #[arg(long, default_value_t = 1000)]
    query_pairs: usize,
    /// Share of the pairs held out to measure the fit.
    #[arg(long, default_value_t = 0.1)]
    holdout: f64,
    /// Seed of the sample, the hold-out split and the MLP.
    #[arg(long, default_value_t = 7)]
    seed: u64,
    /// procrustes: whiten both spaces first (a whitened Procrustes, CCA's directions matched
    /// one to one), each covariance regularized by this share of its mean eigenvalue.
    #[arg(long)]
    whiten: Option<f64>,
    /// procrustes: scale each output coordinate by its least-squares factor after the map.
    #[arg(long)]
    diag_scale: bool,
    /// affine: rank of the map.
    #[arg(long, default_value_t = TrainConfig::default().rank)]
    rank: usize,
    /// affine: ridge, relative to the mean eigenvalue of XᵀX.
    #[arg(long, default_value_t = TrainConfig::default().ridge)]
    ridge: f64,
    /// mlp: hidden units.
    #[arg(long, default_value_t = TrainConfig::default().hidden)]
    hidden: usize,
    /// mlp: most epochs (it stops after 3 without a held-out gain).
    #[arg(long, default_value_t = TrainConfig::default().epochs)]
    epochs: usize,
    /// mlp: learning rate.
    #[arg(long, default_value_t = TrainConfig::default().lr)]
    lr: f64,
    /// Where the models run when a sample is embedded.
    #[arg(long, env = "EMBEDSTREAM_DEVICE", default_value = "cpu")]
    device: Device,
    /// Print the artifact's metadata as JSON.
    #[arg(long)]
    json: bool,
}

/// Options of `adapter eval`.
#[derive(Debug, clap::Args)]
pub struct EvalArgs {
    #[command(flatten)]
    dir: DirArg,
    /// Adapters to evaluate (names or files).
    #[arg(long, value_delimiter = ',', required = true)]
    adapters: Vec<String>,
    /// Golden sets (`golden.json` from `loadtest/golden_sets.py`).
    #[arg(long)]
    golden: PathBuf,
    /// The catalog embedded with the old model (`{"id", "vector"}`): the old index.
    #[arg(long)]
    old_items: PathBuf,
    /// The catalog embedded with the new model: the full re-embed.
    #[arg(long)]
    new_items: PathBuf,
    /// The golden queries embedded with the old model.
    #[arg(long)]
    old_queries: PathBuf,
    /// The golden queries embedded with the new model.
    #[arg(long)]
    new_queries: PathBuf,
    /// Weights of the adapted query in the fused arms (`fused@w`), each in (0, 1].
    #[arg(long, value_delimiter = ',', default_value = "0.5")]
    fuse_weights: Vec<f64>,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

/// Runs an `adapter` subcommand.
pub async fn run(command: AdapterCommand, shutdown: CancellationToken) -> anyhow::Result<()> {
    match command {
        AdapterCommand::Train(args) => train(*args, shutdown).await,
        AdapterCommand::Apply {
            dir,
            adapter,
            input,
            output,
            exact,
        } => apply(&dir.path(), &adapter, input, output, exact),
        AdapterCommand::List { dir, json } => list(&dir.path(), json),
        AdapterCommand::Eval(args) => eval(&args),
    }
}

/// Pairs of `items` (embedded as documents) and of `queries` (embedded as queries, with ids
/// `query:<n>`), each embedded by both models.
async fn embed_both(
    old: &ModelSpec,
    new: &ModelSpec,
    items: Vec<(String, String)>,
    queries: Vec<String>,
    device: Device,
) -> anyhow::Result<Pairs> {
    let item_texts: Vec<String> = items.iter().map(|(_, t)| t.clone()).collect();
    let total = items.len() + queries.len();
    let mut vectors = Vec::new();
    for model in [old, new] {
        let started = Instant::now();
        let m = model.clone();
        let model = &model.model;
        let (engine, threads) = tokio::task::spawn_blocking(move || {
            embedstream_pipeline::embed::open(&m, device, EngineConfig::default())
        })
        .await??;
        let mut out = Vec::with_capacity(total);
        for (texts, input) in [
            (&item_texts, InputKind::Document),
            (&queries, InputKind::Query),
        ] {
            for chunk in texts.chunks(256) {
                let options = EmbedOptions {
                    input,
                    ..EmbedOptions::default()
                };
                out.extend(engine.embed_with(chunk.to_vec(), options).await?.vectors);
                tracing::info!(model = %model, done = out.len(), of = total, "Embedding the sample.");
            }
        }
        drop(engine);
        threads.join();
        tracing::info!(model = %model, items = total, seconds = started.elapsed().as_secs_f64(), "Embedded the sample.");
        vectors.push(out);
    }
    let ids = items
        .into_iter()
        .map(|(id, _)| id)
        .chain((0..queries.len()).map(|i| format!("query:{i}")));
    let mut pairs = Pairs::default();
    for (i, id) in ids.enumerate() {
        pairs.push(id, &vectors[1][i], &vectors[0][i], "the sample")?;
    }
    Ok(pairs)
}

/// The queries `--query-log` / `--queries` add, and how the artifact's source names them.
async fn training_queries(
    args: &TrainArgs,
    shutdown: &CancellationToken,
) -> anyhow::Result<(Vec<String>, String)> {
    let mut queries = Vec::new();
    let mut sources = Vec::new();
    if args.query_log {
        let names = args.platform.names();
        let sampled = query_log::sample_texts(
            &args.platform.kafka()?,
            &args.platform.registry_url,
            &names,
            args.query_consumer.as_deref(),
            args.query_pairs,
            args.seed,
            shutdown,
        )
        .await?;
        if sampled.is_empty() {
            bail!(
                "the query log ({}) has no text queries{}; it fills as the router answers them",
                names.queries(),
                args.query_consumer
                    .as_deref()
                    .map(|c| format!(" of consumer {c:?}"))
                    .unwrap_or_default()
            );
        }
        sources.push(format!(
            "{} queries of {}{}",
            sampled.len(),
            names.queries(),
            args.query_consumer
                .as_deref()
                .map(|c| format!(" (consumer {c})"))
                .unwrap_or_default()
        ));
        queries.extend(sampled);
    }
    if let Some(file) = &args.queries {
        let text = std::fs::read_to_string(file).with_context(|| file.display().to_string())?;
        let mut sample = query_log::TextSample::new(args.query_pairs, args.seed);
        text.lines().for_each(|l| sample.offer(l));
        let lines = sample.into_texts();
        if lines.is_empty() {
            bail!("{} has no queries (one text per line)", file.display());
        }
        sources.push(format!("{} queries of {}", lines.len(), file.display()));
        queries.extend(lines);
    }
    let source = sources.iter().map(|s| format!(" + {s}")).collect();
    Ok((queries, source))
}

fn read_items(path: &Path) -> anyhow::Result<Vec<(String, String)>> {
    let file = std::fs::File::open(path).with_context(|| path.display().to_string())?;
    let mut items = Vec::new();
    for (n, line) in std::io::BufReader::new(file).lines().enumerate() {
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        let v: Value = serde_json::from_str(&line)
            .with_context(|| format!("{}:{}: invalid JSON", path.display(), n + 1))?;
        let (Some(id), Some(Value::String(text))) = (v.get("id"), v.get("text")) else {
            bail!("{}:{}: want {{\"id\", \"text\"}}", path.display(), n + 1);
        };
        if !text.trim().is_empty() {
            let id = id.as_str().map_or_else(|| id.to_string(), str::to_owned);
            items.push((id, text.clone()));
        }
    }
    Ok(items)
}

async fn train(args: TrainArgs, shutdown: CancellationToken) -> anyhow::Result<()> {
    let dir = args.dir.path();
    if args.kind != AdapterKind::Procrustes && (args.whiten.is_some() || args.diag_scale) {
        bail!("--whiten and --diag-scale are options of --kind procrustes");
    }
    let (old, new) = (
        args.platform.model_spec(&args.from).await?,
        args.platform.model_spec(&args.to).await?,
    );
    let (queries, query_source) = training_queries(&args, &shutdown).await?;
    let (pairs, source) = if let Some(file) = &args.pairs_file {
        let all = Pairs::from_pairs_file(file)?;
        let n = all.len();
        (
            all.sample(args.pairs, args.seed),
            format!("pairs file {} ({n} pairs)", file.display()),
        )
    } else if let (Some(old_file), Some(new_file)) = (&args.old_vectors, &args.new_vectors) {
        let all = Pairs::join(old_file, new_file)?;
        let n = all.len();
        (
            all.sample(args.pairs, args.seed),
            format!(
                "{} + {} ({n} items)",
                old_file.display(),
                new_file.display()
            ),
        )
    } else {
        let (items, source) = if let Some(file) = &args.items {
            let mut items = read_items(file)?;
            let n = items.len();
            items.sort_by_cached_key(|(id, _)| {
                embedstream_topics::hash::fnv1a64(format!("{}:{id}", args.seed).as_bytes())
            });
            items.truncate(args.pairs);
            (items, format!("items file {} ({n} items)", file.display()))
        } else {
            let source = ItemsSource {
                kafka: args.platform.kafka()?,
                registry_url: args.platform.registry_url.clone(),
                names: args.platform.names(),
                limits: Limits {
                    max_text_bytes: 1 << 20,
                },
            };
            let items =
                backfill::sample_items(&source, &old, args.pairs, args.seed, &shutdown).await?;
            (items, format!("topic {}", args.platform.names().items()))
        };
        let n = items.len();
        (
            embed_both(&old, &new, items, queries, args.device).await?,
            format!(
                "{source}, {n} sampled with seed {}{query_source}",
                args.seed
            ),
        )
    };
    if pairs.len() < args.pairs {
        tracing::warn!(
            wanted = args.pairs,
            got = pairs.len(),
            "Fewer pairs than asked for."
        );
    }
    let name = adapter::next_name(
        &dir,
        &args.to.to_string(),
        &args.from.to_string(),
        args.kind,
    )?;
    let config = TrainConfig {
        kind: args.kind,
        holdout: args.holdout,
        seed: args.seed,
        rank: args.rank,
        ridge: args.ridge,
        hidden: args.hidden,
        epochs: args.epochs,
        lr: args.lr,
        procrustes: ProcrustesOptions {
            whiten: args.whiten,
            diag_scale: args.diag_scale,
        },
        ..TrainConfig::default()
    };
    let fitted = tokio::task::spawn_blocking(move || {
        embedstream_adapter::train::train(&pairs, &old, &new, &name, source, &config)
            .map(|a| (a, name))
    })
    .await??;
    let (adapter, name) = fitted;
    let path = name.path_in(&dir);
    adapter.save(&path)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&adapter.meta)?);
    } else {
        let m = &adapter.meta;
        println!(
            "{}: {} pairs ({} held out), cosine to the old vectors {:.4} fitted, {} held out, {:.1} s\n{}",
            m.name,
            m.pairs,
            m.holdout_pairs,
            m.train_cosine,
            m.holdout_cosine
                .map_or("-".to_owned(), |c| format!("{c:.4}")),
            m.fit_seconds,
            path.display()
        );
    }
    Ok(())
}

fn apply(
    dir: &Path,
    name: &str,
    input: Option<PathBuf>,
    output: Option<PathBuf>,
    exact: bool,
) -> anyhow::Result<()> {
    let adapter = Adapter::load(&adapter::resolve(dir, name)?)?;
    let reader: Box<dyn BufRead> = match &input {
        Some(p) => Box::new(std::io::BufReader::new(
            std::fs::File::open(p).with_context(|| p.display().to_string())?,
        )),
        None => Box::new(std::io::stdin().lock()),
    };
    let writer: Box<dyn Write> = match &output {
        Some(p) => Box::new(BufWriter::new(
            std::fs::File::create(p).with_context(|| p.display().to_string())?,
        )),
        None => Box::new(BufWriter::new(std::io::stdout().lock())),
    };
    let bad = embedstream_adapter::lines::map_lines(&adapter, exact, reader, writer, |n, e| {
        eprintln!("line {n}: {e}");
    })?;
    if bad > 0 {
        bail!("{bad} line(s) could not be mapped (see above)");
    }
    Ok(())
}

fn list(dir: &Path, json: bool) -> anyhow::Result<()> {
    for name in adapter::list(dir)? {
        let path = name.path_in(dir);
        match Adapter::load(&path) {
            Ok(a) if json => println!("{}", serde_json::to_string(&a.meta)?),
            Ok(a) => println!(
                "{}  {}→{} dims  {} pairs  held-out cosine {}  {}",
                a.meta.name,
                a.meta.in_dim,
                a.meta.out_dim,
                a.meta.pairs,
                a.meta
                    .holdout_cosine
                    .map_or("-".to_owned(), |c| format!("{c:.4}")),
                a.meta.source
            ),
            Err(e) => println!("{name}  INVALID: {e}"),
        }
    }
    Ok(())
}

/// `{"id", "vector"}` lines by id.
fn vectors(path: &Path) -> anyhow::Result<BTreeMap<String, Vec<f32>>> {
    Ok(embedstream_adapter::lines::read_vectors(path)?
        .into_iter()
        .map(|(id, (_, v))| (id, v))
        .collect())
}

fn eval(args: &EvalArgs) -> anyhow::Result<()> {
    let dir = args.dir.path();
    let golden = load_golden(&args.golden)?;
    let as_list =
        |m: BTreeMap<String, Vec<f32>>| -> Vec<(String, Vec<f32>)> { m.into_iter().collect() };
    let old_items = as_list(vectors(&args.old_items)?);
    let new_items = as_list(vectors(&args.new_items)?);
    let old_q = vectors(&args.old_queries)?;
    let new_q = vectors(&args.new_queries)?;
    let sets: Vec<ConsumerSet> = golden
        .iter()
        .map(|(consumer, set)| ConsumerSet {
            consumer: consumer.clone(),
            metric: set.metric.clone(),
            k: set.k,
            queries: set
                .queries
                .iter()
                .filter_map(|q| {
                    Some(Query {
                        old: old_q.get(&q.id)?,
                        new: new_q.get(&q.id)?,
                        relevant: q.relevant.iter().map(String::as_str).collect(),
                        exclude: &q.exclude,
                    })
                })
                .collect(),
        })
        .collect();
    let mut rows = Vec::new();
    for name in &args.adapters {
        let a = Adapter::load(&adapter::resolve(&dir, name)?)?;
        rows.push(evaluate(
            &a,
            &sets,
            &old_items,
            &new_items,
            &args.fuse_weights,
            &metric_value,
        )?);
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(());
    }
    let ci = |e: &Estimate| format!("{:.3} [{:.3}, {:.3}]", e.value, e.ci_low, e.ci_high);
    let diff = |e: &Estimate| format!("{:+.3} [{:+.3}, {:+.3}]", e.value, e.ci_low, e.ci_high);
    for r in &rows {
        println!(
            "{} ({} pairs, held-out cosine {}): adapted recovers {:.3} of a re-embed, {:.3} of the old model; int8 vs f32 cosine mean {:.6} min {:.6}",
            r.adapter,
            r.pairs,
            r.holdout_cosine
                .map_or("-".to_owned(), |c| format!("{c:.4}")),
            r.mean_recovery,
            r.mean_recovery_old,
            r.int8_cosine_mean,
            r.int8_cosine_min
        );
        for c in &r.consumers {
            println!(
                "  {} {} ({} queries; 95% intervals): old/old {}  new/new {}",
                c.consumer,
                c.metric,
                c.queries,
                ci(&c.old),
                ci(&c.full_reembed)
            );
            for a in &c.arms {
                let verdict = if a.vs_old.ci_high < 0.0 {
                    "worse than old/old"
                } else if a.vs_old.ci_low > 0.0 {
                    "better than old/old"
                } else {
                    "not distinguishable from old/old"
                };
                println!(
                    "    {:<12} {}  vs old {}  recovery: of new/new {}, of old/old {}  ({verdict})",
                    a.arm,
                    ci(&a.metric),
                    diff(&a.vs_old),
                    ci(&a.recovery_new),
                    ci(&a.recovery_old)
                );
            }
        }
    }
    Ok(())
}
