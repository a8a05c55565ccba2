//! The serving loop: the model runs on its own thread behind a bounded queue; texts are
//! tokenized on another thread (so tokenization overlaps inference); the model thread takes
//! what is queued, sorts it by length and cuts batches by a token budget, so a batch pads only
//! to its own longest text and short texts are not held behind long ones.
//!
//! Guarantees: vectors come back in request order; a request is answered once all its texts
//! are embedded; every queue is bounded, so a caller that outruns the model waits. Not
//! guaranteed: fairness between concurrent requests beyond arrival order within a window.

use std::sync::mpsc::{self, Receiver, SyncSender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use super::tokenize::TextTokenizer;
pub use crate::error::EngineError;
use crate::models::config::Prompts;

/// Tokenizing one request (a batch of the stage).
pub const TOKENIZE_SECONDS: &str = "embedstream_embed_tokenize_seconds";
/// One forward pass, pooling included.
pub const INFER_SECONDS: &str = "embedstream_embed_infer_seconds";
/// Texts per forward pass.
pub const BATCH_ITEMS: &str = "embedstream_embed_batch_items";
/// Tokens computed, padding included.
pub const PADDED_TOKENS: &str = "embedstream_embed_padded_tokens_total";
/// Real tokens embedded.
pub const TOKENS: &str = "embedstream_embed_tokens_total";

/// A model that embeds a batch of tokenized texts. Implementations own their weights and run
/// on the engine's model thread only.
pub trait Embedder: Send {
    /// Output dimension.
    fn dimension(&self) -> usize;
    /// Embeds `batch` (token ids, special tokens included, unpadded); one vector per text.
    fn embed(&mut self, batch: &[&[u32]]) -> Vec<Vec<f32>>;
    /// Tokens a forward pass over `batch` computes, padding included: `texts × longest` for a
    /// model that pads (the default), fewer for one that does not.
    fn computed_tokens(&self, batch: &[&[u32]]) -> u64 {
        (batch.len() * batch.iter().map(|t| t.len()).max().unwrap_or(0)) as u64
    }
    /// Whether the model's own pipeline ends with L2 normalization (what a request that does
    /// not say gets).
    fn normalizes(&self) -> bool {
        false
    }
    /// The pooled vectors of `batch` before any normalization; [`Embedder::embed`] for a
    /// model that does not normalize.
    fn embed_pooled(&mut self, batch: &[&[u32]]) -> Vec<Vec<f32>> {
        self.embed(batch)
    }
}

/// What a request's texts are, which picks the model's prompt for them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum InputKind {
    /// Items (the stage, backfills, drift canaries): the model's document prompt, if any.
    #[default]
    Document,
    /// Queries: the model's query prompt, if any.
    Query,
    /// Texts embedded as they are (the caller applied a prompt itself, or wants none).
    AsIs,
}

/// How one request's texts are embedded.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EmbedOptions {
    /// What the texts are.
    pub input: InputKind,
    /// Refuse a text over the model's token limit ([`EngineError::TooLong`]) instead of
    /// truncating it.
    pub refuse_over_limit: bool,
    /// L2-normalize the vectors, or not; `None`: as the model's own pipeline does.
    pub normalize: Option<bool>,
}

/// The vectors of one request, in its order, and the tokens each text took (special tokens
/// included, after truncation).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Embedded {
    /// One vector per text.
    pub vectors: Vec<Vec<f32>>,
    /// Tokens per text.
    pub tokens: Vec<usize>,
}

/// Engine limits.
#[derive(Debug, Clone, Copy)]
pub struct EngineConfig {
    /// Max padded tokens (`texts × longest`) per forward pass.
    pub max_batch_tokens: usize,
    /// Max texts per forward pass.
    pub max_batch_size: usize,
    /// Texts waiting for the model, at most.
    pub queue_capacity: usize,
    /// How many queued texts the model thread sorts together.
    pub sort_window: usize,
    /// Model replicas, each on its own thread, taking batches from one queue. On a CPU, two
    /// replicas keep both cores busy where one forward pass alone leaves a core idle in its
    /// serial parts; on a GPU, one.
    pub replicas: usize,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            max_batch_tokens: 16_384,
            max_batch_size: 64,
            queue_capacity: 4096,
            sort_window: 1024,
            replicas: 1,
        }
    }
}

/// Time spent per phase, summed over the engine's life (for reports and metrics).
#[derive(Debug, Clone, Copy, Default)]
pub struct PhaseTimes {
    /// Tokenizing.
    pub tokenize: Duration,
    /// Forward passes (including pooling).
    pub forward: Duration,
    /// Texts embedded.
    pub texts: u64,
    /// Real (unpadded) tokens embedded.
    pub tokens: u64,
    /// Padded tokens computed.
    pub padded_tokens: u64,
    /// Forward passes.
    pub batches: u64,
}

type Reply = oneshot::Sender<Result<Embedded, EngineError>>;

struct RequestState {
    vectors: Vec<Option<Vec<f32>>>,
    tokens: Vec<usize>,
    remaining: usize,
    normalize: Option<bool>,
    reply: Option<Reply>,
}

struct Item {
    ids: Vec<u32>,
    index: usize,
    /// Arrival order, so the oldest text is served first.
    seq: u64,
    /// When it was queued.
    queued: Instant,
    request: Arc<Mutex<RequestState>>,
}

/// What the batcher receives: texts from the tokenizer, and replicas asking for work.
enum ToBatcher {
    Item(Item),
    /// Replica `n` is idle.
    Ready(usize),
    /// The tokenizer is gone: serve what is pending, then stop.
    Closed,
}

struct Request {
    texts: Vec<String>,
    options: EmbedOptions,
    reply: Reply,
}

/// Vectors of a submitted request, not yet received.
#[derive(Debug)]
pub struct Pending(oneshot::Receiver<Result<Embedded, EngineError>>);

impl Pending {
    /// Waits for the vectors (from a plain thread).
    pub fn wait(self) -> Result<Vec<Vec<f32>>, EngineError> {
        Ok(self
            .0
            .blocking_recv()
            .map_err(|_| EngineError::Stopped)??
            .vectors)
    }

    /// Waits for the vectors (from async code).
    pub async fn recv(self) -> Result<Vec<Vec<f32>>, EngineError> {
        Ok(self.recv_embedded().await?.vectors)
    }

    /// Waits for the vectors and token counts (from async code).
    pub async fn recv_embedded(self) -> Result<Embedded, EngineError> {
        self.0.await.map_err(|_| EngineError::Stopped)?
    }
}

/// A handle to a running engine. Cheap to clone; the engine stops when every handle is gone.
#[derive(Clone)]
pub struct Engine {
    requests: SyncSender<Request>,
    times: Arc<Mutex<PhaseTimes>>,
    dimension: usize,
    max_seq_length: usize,
    prompts: Arc<Prompts>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("dimension", &self.dimension)
            .finish_non_exhaustive()
    }
}

/// The engine's threads, to join on shutdown.
#[derive(Debug)]
pub struct EngineThreads {
    tokenizer: JoinHandle<()>,
    model: JoinHandle<()>,
    replicas: Vec<JoinHandle<()>>,
}

impl EngineThreads {
    /// Waits for both threads (after every [`Engine`] handle is dropped).
    pub fn join(self) {
        let _ = self.tokenizer.join();
        let _ = self.model.join();
        for r in self.replicas {
            let _ = r.join();
        }
    }
}

impl Engine {
    /// Starts the tokenizer and model threads.
    pub fn start(
        model: Box<dyn Embedder>,
        tokenizer: TextTokenizer,
        config: EngineConfig,
    ) -> (Self, EngineThreads) {
        Self::start_named(model, tokenizer, config, "unnamed")
    }

    /// [`Engine::start`], with the `model_version` label its metrics carry.
    pub fn start_named(
        model: Box<dyn Embedder>,
        tokenizer: TextTokenizer,
        config: EngineConfig,
        name: &str,
    ) -> (Self, EngineThreads) {
        Self::start_replicated(vec![model], tokenizer, config, name)
    }

    /// Starts the engine with one thread per model replica (all of the same weights).
    ///
    /// # Panics
    /// When `models` is empty, or a thread cannot be spawned.
    pub fn start_replicated(
        models: Vec<Box<dyn Embedder>>,
        tokenizer: TextTokenizer,
        config: EngineConfig,
        name: &str,
    ) -> (Self, EngineThreads) {
        assert!(!models.is_empty(), "an engine needs a model");
        let dimension = models[0].dimension();
        let max_seq_length = tokenizer.max_seq_length();
        let (req_tx, req_rx) = mpsc::sync_channel::<Request>(64);
        let (item_tx, item_rx) = mpsc::sync_channel::<ToBatcher>(config.queue_capacity);
        let ready_tx = item_tx.clone();
        // Each replica gets its batches through a channel of its own, one batch at a time.
        let (batch_txs, batch_rxs): (Vec<_>, Vec<_>) = (0..models.len())
            .map(|_| mpsc::sync_channel::<Vec<Item>>(1))
            .unzip();
        let times = Arc::new(Mutex::new(PhaseTimes::default()));
        let spawn = |thread: String, f: Box<dyn FnOnce() + Send>| {
            std::thread::Builder::new()
                .name(thread.clone())
                .spawn(f)
                .unwrap_or_else(|e| panic!("cannot spawn the {thread} thread: {e}"))
        };
        let (t1, n1) = (times.clone(), name.to_owned());
        let tokenizer_thread = spawn(
            "embed-tokenize".into(),
            Box::new(move || tokenize_loop(tokenizer, req_rx, item_tx, t1, n1)),
        );
        let model_thread = spawn(
            "embed-batcher".into(),
            Box::new(move || batch_loop(item_rx, config, batch_txs)),
        );
        // With several replicas, each gets its own share of the cores as a rayon pool of its
        // own: replicas sharing the global pool oversubscribe it (its idle workers spin), and
        // measured no faster than one.
        let count = models.len();
        let cores = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
        let replicas = models
            .into_iter()
            .zip(batch_rxs)
            .enumerate()
            .map(|(i, (model, rx))| {
                let (ready, t, n) = (ready_tx.clone(), times.clone(), name.to_owned());
                let pool = (count > 1).then(|| {
                    rayon::ThreadPoolBuilder::new()
                        .num_threads((cores / count).max(1))
                        .thread_name(move |j| format!("embed-model-{i}-{j}"))
                        .build()
                        .unwrap_or_else(|e| panic!("cannot start a rayon pool: {e}"))
                });
                spawn(
                    format!("embed-model-{i}"),
                    Box::new(move || match pool {
                        Some(pool) => {
                            pool.install(move || model_loop(model, i, &ready, &rx, &t, n))
                        }
                        None => model_loop(model, i, &ready, &rx, &t, n),
                    }),
                )
            })
            .collect();
        drop(ready_tx);
        (
            Self {
                requests: req_tx,
                times,
                dimension,
                max_seq_length,
                prompts: Arc::default(),
            },
            EngineThreads {
                tokenizer: tokenizer_thread,
                model: model_thread,
                replicas,
            },
        )
    }

    /// Output dimension.
    pub fn dimension(&self) -> usize {
        self.dimension
    }

    /// The model's token limit.
    pub fn max_seq_length(&self) -> usize {
        self.max_seq_length
    }

    /// The model's prompts (none unless set with [`Engine::with_prompts`]).
    pub fn prompts(&self) -> &Prompts {
        &self.prompts
    }

    /// This engine, knowing its model's prompts.
    #[must_use]
    pub fn with_prompts(mut self, prompts: Prompts) -> Self {
        self.prompts = Arc::new(prompts);
        self
    }

    /// Embeds texts as documents (with the model's document prompt, if it has one); vectors
    /// come back in the same order. Waits when the queue is full.
    pub async fn embed(&self, texts: Vec<String>) -> Result<Vec<Vec<f32>>, EngineError> {
        Ok(self
            .embed_with(texts, EmbedOptions::default())
            .await?
            .vectors)
    }

    /// [`Engine::embed`] with per-request options, also counting each text's tokens.
    pub async fn embed_with(
        &self,
        texts: Vec<String>,
        options: EmbedOptions,
    ) -> Result<Embedded, EngineError> {
        let engine = self.clone();
        // The queue is bounded and std: block a blocking-pool thread, never a runtime worker.
        let pending = tokio::task::spawn_blocking(move || engine.submit_with(texts, options))
            .await
            .map_err(|_| EngineError::Stopped)??;
        pending.recv_embedded().await
    }

    /// Queues texts (as documents) from a plain thread (waiting while the queue is full) and
    /// returns where the vectors will arrive, so a caller can keep several requests in flight.
    pub fn submit(&self, texts: Vec<String>) -> Result<Pending, EngineError> {
        self.submit_with(texts, EmbedOptions::default())
    }

    /// [`Engine::submit`] with per-request options.
    pub fn submit_with(
        &self,
        texts: Vec<String>,
        options: EmbedOptions,
    ) -> Result<Pending, EngineError> {
        let prompt = match options.input {
            InputKind::Document => self.prompts.for_input(false),
            InputKind::Query => self.prompts.for_input(true),
            InputKind::AsIs => None,
        };
        let texts = match prompt {
            Some(p) => texts.into_iter().map(|t| format!("{p}{t}")).collect(),
            None => texts,
        };
        let (reply, rx) = oneshot::channel();
        self.requests
            .send(Request {
                texts,
                options,
                reply,
            })
            .map_err(|_| EngineError::Stopped)?;
        Ok(Pending(rx))
    }

    /// Embeds texts from a plain thread (no runtime needed).
    pub fn embed_blocking(&self, texts: Vec<String>) -> Result<Vec<Vec<f32>>, EngineError> {
        self.submit(texts)?.wait()
    }

    /// Phase times so far.
    pub fn times(&self) -> PhaseTimes {
        *self
            .times
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

fn tokenize_loop(
    tokenizer: TextTokenizer,
    requests: Receiver<Request>,
    items: SyncSender<ToBatcher>,
    times: Arc<Mutex<PhaseTimes>>,
    name: String,
) {
    let mut seq = 0u64;
    tokenize_requests(&tokenizer, requests, &items, &times, &name, &mut seq);
    let _ = items.send(ToBatcher::Closed);
}

fn tokenize_requests(
    tokenizer: &TextTokenizer,
    requests: Receiver<Request>,
    items: &SyncSender<ToBatcher>,
    times: &Arc<Mutex<PhaseTimes>>,
    name: &str,
    seq: &mut u64,
) {
    let tokenize_seconds =
        metrics::histogram!(TOKENIZE_SECONDS, "model_version" => name.to_owned());
    for Request {
        texts,
        options,
        reply,
    } in requests
    {
        let start = Instant::now();
        let mut tokenized = Vec::with_capacity(texts.len());
        let mut failed = None;
        for (index, text) in texts.iter().enumerate() {
            match tokenizer.encode(text) {
                Ok(t) if t.truncated && options.refuse_over_limit => {
                    failed = Some(EngineError::TooLong {
                        index,
                        max: tokenizer.max_seq_length(),
                    });
                    break;
                }
                Ok(t) => tokenized.push(t.ids),
                Err(reason) => {
                    failed = Some(EngineError::Tokenize { index, reason });
                    break;
                }
            }
        }
        tokenize_seconds.record(start.elapsed().as_secs_f64());
        if let Ok(mut t) = times.lock() {
            t.tokenize += start.elapsed();
        }
        if let Some(e) = failed {
            let _ = reply.send(Err(e));
            continue;
        }
        if tokenized.is_empty() {
            let _ = reply.send(Ok(Embedded::default()));
            continue;
        }
        let state = Arc::new(Mutex::new(RequestState {
            vectors: vec![None; tokenized.len()],
            tokens: tokenized.iter().map(Vec::len).collect(),
            remaining: tokenized.len(),
            normalize: options.normalize,
            reply: Some(reply),
        }));
        for (index, ids) in tokenized.into_iter().enumerate() {
            *seq += 1;
            let item = Item {
                ids,
                index,
                seq: *seq,
                queued: Instant::now(),
                request: state.clone(),
            };
            if items.send(ToBatcher::Item(item)).is_err() {
                return;
            }
        }
    }
}

/// Cuts `sorted` (ascending length) into batches under the token budget.
pub(crate) fn cut_batches(
    lengths: &[usize],
    max_tokens: usize,
    max_size: usize,
) -> Vec<std::ops::Range<usize>> {
    let mut batches = Vec::new();
    let mut start = 0;
    while start < lengths.len() {
        let mut end = start + 1;
        // Ascending order: the longest text of [start, end) is lengths[end - 1].
        while end < lengths.len()
            && end - start < max_size
            && lengths[end] * (end + 1 - start) <= max_tokens
        {
            end += 1;
        }
        batches.push(start..end);
        start = end;
    }
    batches
}

/// After this long in the queue, a text's batch is served before fuller ones.
const OLDEST_FIRST_AFTER: Duration = Duration::from_millis(500);

/// Continuous batching: texts wait here until a replica is idle; then everything pending is
/// sorted by length, cut under the token budget, and the idle replica gets the first (full)
/// batch, or the one holding the oldest text once that has waited [`OLDEST_FIRST_AFTER`]. While the replicas are busy, arrivals pile up and the next batch is cut
/// from all of them, so batches grow with load instead of being fixed ahead of time.
fn batch_loop(
    messages: Receiver<ToBatcher>,
    config: EngineConfig,
    replicas: Vec<SyncSender<Vec<Item>>>,
) {
    let mut pending: Vec<Item> = Vec::new();
    let mut idle: std::collections::VecDeque<usize> = std::collections::VecDeque::new();
    let mut closed = false;
    let handle = |m: ToBatcher,
                  pending: &mut Vec<Item>,
                  idle: &mut std::collections::VecDeque<usize>,
                  closed: &mut bool| match m {
        ToBatcher::Item(item) => pending.push(item),
        ToBatcher::Ready(r) => idle.push_back(r),
        ToBatcher::Closed => *closed = true,
    };
    loop {
        if closed && pending.is_empty() {
            return;
        }
        if idle.is_empty() || pending.is_empty() {
            match messages.recv() {
                Ok(m) => handle(m, &mut pending, &mut idle, &mut closed),
                Err(_) => return,
            }
            // A short wait lets a request's texts arrive together.
            while pending.len() < config.sort_window {
                match messages.recv_timeout(Duration::from_micros(200)) {
                    Ok(m) => handle(m, &mut pending, &mut idle, &mut closed),
                    Err(_) => break,
                }
            }
            continue;
        }
        // Take everything queued now.
        while pending.len() < config.sort_window {
            match messages.try_recv() {
                Ok(m) => handle(m, &mut pending, &mut idle, &mut closed),
                Err(_) => break,
            }
        }
        while !pending.is_empty()
            && let Some(replica) = idle.pop_front()
        {
            pending.sort_by_key(|i| i.ids.len());
            let lengths: Vec<usize> = pending.iter().map(|i| i.ids.len()).collect();
            let (oldest, waited) = pending
                .iter()
                .enumerate()
                .min_by_key(|(_, i)| i.seq)
                .map_or((0, Duration::ZERO), |(at, i)| (at, i.queued.elapsed()));
            let ranges = cut_batches(&lengths, config.max_batch_tokens, config.max_batch_size);
            // The first cut is a full one (the greedy cut starts there), the most efficient
            // pass; a text that has waited too long goes first instead.
            let range = if waited >= OLDEST_FIRST_AFTER {
                ranges.into_iter().find(|r| r.contains(&oldest))
            } else {
                ranges.into_iter().next()
            }
            .unwrap_or(0..1);
            let batch: Vec<Item> = pending.drain(range).collect();
            if replicas[replica].send(batch).is_err() {
                return;
            }
        }
    }
}

fn model_loop(
    mut model: Box<dyn Embedder>,
    replica: usize,
    ready: &SyncSender<ToBatcher>,
    batches: &Receiver<Vec<Item>>,
    times: &Arc<Mutex<PhaseTimes>>,
    name: String,
) {
    let infer_seconds = metrics::histogram!(INFER_SECONDS, "model_version" => name.clone());
    let batch_items = metrics::histogram!(BATCH_ITEMS, "model_version" => name.clone());
    let padded = metrics::counter!(PADDED_TOKENS, "model_version" => name.clone());
    let real = metrics::counter!(TOKENS, "model_version" => name);
    loop {
        if ready.send(ToBatcher::Ready(replica)).is_err() {
            return;
        }
        let Ok(batch) = batches.recv() else { return };
        let ids: Vec<&[u32]> = batch.iter().map(|i| i.ids.as_slice()).collect();
        let start = Instant::now();
        let vectors = model.embed_pooled(&ids);
        infer_seconds.record(start.elapsed().as_secs_f64());
        batch_items.record(batch.len() as f64);
        let tokens = ids.iter().map(|i| i.len() as u64).sum::<u64>();
        let padded_tokens = model.computed_tokens(&ids);
        real.increment(tokens);
        padded.increment(padded_tokens);
        if let Ok(mut t) = times.lock() {
            t.forward += start.elapsed();
            t.batches += 1;
            t.texts += batch.len() as u64;
            t.tokens += tokens;
            t.padded_tokens += padded_tokens;
        }
        let model_normalizes = model.normalizes();
        for (item, mut vector) in batch.iter().zip(vectors) {
            let mut state = item
                .request
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if state.normalize.unwrap_or(model_normalizes) {
                l2_normalize(&mut vector);
            }
            state.vectors[item.index] = Some(vector);
            state.remaining -= 1;
            if state.remaining == 0
                && let Some(reply) = state.reply.take()
            {
                let vectors = std::mem::take(&mut state.vectors)
                    .into_iter()
                    .map(Option::unwrap_or_default)
                    .collect();
                let tokens = std::mem::take(&mut state.tokens);
                let _ = reply.send(Ok(Embedded { vectors, tokens }));
            }
        }
    }
}

/// Scales `v` to unit length (sentence-transformers' `Normalize`: a zero vector stays zero).
pub fn l2_normalize(v: &mut [f32]) {
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-12);
    v.iter_mut().for_each(|x| *x /= norm);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_respect_the_token_budget_and_size() {
        let lengths = [3, 3, 4, 10, 10, 10, 50];
        let batches = cut_batches(&lengths, 30, 64);
        assert_eq!(batches, vec![0..3, 3..6, 6..7]);
        for b in &batches {
            let longest = lengths[b.end - 1];
            assert!(longest * b.len() <= 30 || b.len() == 1);
        }
        assert_eq!(
            cut_batches(&lengths, 10_000, 2),
            vec![0..2, 2..4, 4..6, 6..7]
        );
        // A text longer than the budget still gets a batch of its own.
        assert_eq!(cut_batches(&[100], 10, 8), vec![0..1]);
        assert!(cut_batches(&[], 10, 8).is_empty());
    }
}
