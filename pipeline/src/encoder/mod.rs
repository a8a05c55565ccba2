//! Transformer encoders in Burn: BERT (absolute positions, token types), RoBERTa /
//! XLM-RoBERTa (BERT's layers, positions after the padding id) and MPNet (relative position
//! buckets shared across layers), with mean, CLS, max or last-token pooling and L2
//! normalization, as sentence-transformers runs them. One module type serves both architectures; the
//! architecture (from the folder's `config.json`) decides which parts exist.
//!
//! Two ways to run a batch, with the same weights:
//! - **packed** (the CPU backend): the texts' tokens one after the other, `[tokens, hidden]`,
//!   with no padding at all. Every layer but attention works token by token, so each
//!   projection is one large matmul over the batch's real tokens; attention runs within each
//!   text ([`attention::attention`]); pooling reads each text's own rows.
//! - **padded** (other backends, or [`Encoder::with_padded`]): texts right-padded
//!   to the batch's longest, `[batch, len, hidden]`, with Burn's masked `attention`; padded
//!   keys are masked out of attention and padded tokens out of pooling.
//!
//! Either way a text's vector does not depend on its batch (checked by the parity tests).

pub mod activation;
pub mod attention;
mod load;
pub mod mpnet;

use std::any::TypeId;
use std::ops::Range;
use std::sync::LazyLock;

use burn::module::Module;
use burn::nn::{Embedding, EmbeddingConfig, LayerNorm, LayerNormConfig, Linear, LinearConfig};
use burn::tensor::backend::Backend;
use burn::tensor::module::attention;
use burn::tensor::ops::AttentionModuleOptions;
use burn::tensor::{Bool, Int, Tensor, TensorData};
use embedstream_topics::catalog::{Architecture, Pooling};

/// The CPU backend.
#[cfg(not(feature = "ndarray"))]
pub type Cpu = burn::backend::Flex;
/// The CPU backend in builds that measure ndarray (with or without OpenBLAS) instead of flex.
#[cfg(feature = "ndarray")]
pub type Cpu = burn::backend::NdArray;

pub use load::load;

use crate::models::ModelConfig;

/// The widest SIMD this CPU has, detected once, for the CPU backend's own kernels (attention,
/// GELU).
static SIMD: LazyLock<pulp::Arch> = LazyLock::new(pulp::Arch::new);

/// Whether `B` is the CPU backend (the one the encoder's own CPU kernels serve).
fn on_cpu<B: Backend>() -> bool {
    TypeId::of::<B>() == TypeId::of::<Cpu>()
}

/// Where each text's tokens are in a packed batch: the ranges of token indices of texts of
/// `lens` tokens, one after the other.
fn spans(lens: &[usize]) -> impl Iterator<Item = Range<usize>> + '_ {
    lens.iter().scan(0, |start, &n| {
        let span = *start..*start + n;
        *start += n;
        Some(span)
    })
}

/// One encoder layer: self-attention and feed-forward, each with a residual and LayerNorm.
#[derive(Module, Debug)]
pub struct EncoderLayer<B: Backend> {
    query: Linear<B>,
    key: Linear<B>,
    value: Linear<B>,
    attention_out: Linear<B>,
    attention_norm: LayerNorm<B>,
    intermediate: Linear<B>,
    output: Linear<B>,
    output_norm: LayerNorm<B>,
}

/// A BERT or MPNet encoder with its embeddings.
#[derive(Module, Debug)]
pub struct Encoder<B: Backend> {
    word_embeddings: Embedding<B>,
    position_embeddings: Embedding<B>,
    token_type_embeddings: Option<Embedding<B>>,
    embeddings_norm: LayerNorm<B>,
    layers: Vec<EncoderLayer<B>>,
    relative_attention_bias: Option<Embedding<B>>,
    /// The padded path even on the CPU backend (for comparing the two paths).
    padded: bool,
}

/// A tokenized batch for a device: its texts' tokens, and the padded shape for backends
/// that run it padded.
#[derive(Debug)]
pub struct Batch<B: Backend> {
    /// Every text's tokens, one text after the other.
    tokens: Vec<u32>,
    /// Each text's length.
    lens: Vec<usize>,
    /// The padded length: the longest text, rounded up to the multiple asked for.
    len: usize,
    pad_id: u32,
    device: B::Device,
}

impl<B: Backend> Batch<B> {
    /// A batch of `texts`, padded (where a backend pads) with `pad_id` to the longest, rounded
    /// up to a multiple of `multiple` but not past `max_len` (the model's token limit, within
    /// its position table).
    ///
    /// A multiple above 1 bounds the number of distinct shapes a backend sees (a JIT backend
    /// compiles and tunes kernels per shape); padded tokens are masked, so vectors do not change.
    pub fn new(
        texts: &[&[u32]],
        pad_id: u32,
        multiple: usize,
        max_len: usize,
        device: &B::Device,
    ) -> Self {
        let longest = texts.iter().map(|t| t.len()).max().unwrap_or(0);
        Self {
            tokens: texts.concat(),
            lens: texts.iter().map(|t| t.len()).collect(),
            len: Self::padded_len(longest, multiple, max_len),
            pad_id,
            device: device.clone(),
        }
    }

    /// The padded length of a batch whose longest text has `longest` tokens (at least 1).
    pub fn padded_len(longest: usize, multiple: usize, max_len: usize) -> usize {
        let longest = longest.max(1);
        longest
            .next_multiple_of(multiple.max(1))
            .min(max_len.max(longest))
    }

    /// Token ids `[batch, len]`, padded.
    fn padded_ids(&self) -> Tensor<B, 2, Int> {
        let mut ids = Vec::with_capacity(self.lens.len() * self.len);
        for text in self.texts() {
            ids.extend(text.iter().map(|&t| i64::from(t)));
            ids.extend((text.len()..self.len).map(|_| i64::from(self.pad_id)));
        }
        Tensor::from_data(
            TensorData::new(ids, [self.lens.len(), self.len]),
            &self.device,
        )
    }

    /// 1.0 at real tokens, 0.0 at padding, `[batch, len, 1]`.
    fn real(&self) -> Tensor<B, 3> {
        let mut real = Vec::with_capacity(self.lens.len() * self.len);
        for &n in &self.lens {
            real.extend((0..self.len).map(|i| if i < n { 1.0f32 } else { 0.0 }));
        }
        Tensor::from_data(
            TensorData::new(real, [self.lens.len(), self.len, 1]),
            &self.device,
        )
    }

    /// 1.0 at each text's last token, 0.0 elsewhere, `[batch, len, 1]`.
    fn last(&self) -> Tensor<B, 3> {
        let mut last = Vec::with_capacity(self.lens.len() * self.len);
        for &n in &self.lens {
            last.extend((0..self.len).map(|i| if i + 1 == n { 1.0f32 } else { 0.0 }));
        }
        Tensor::from_data(
            TensorData::new(last, [self.lens.len(), self.len, 1]),
            &self.device,
        )
    }

    /// `true` where a query may not look: padded keys, `[batch, 1, len, len]`.
    fn attention_mask(&self) -> Tensor<B, 4, Bool> {
        let mut mask = Vec::with_capacity(self.lens.len() * self.len * self.len);
        for &n in &self.lens {
            for _query in 0..self.len {
                mask.extend((0..self.len).map(|key| key >= n));
            }
        }
        Tensor::from_data(
            TensorData::new(mask, [self.lens.len(), 1, self.len, self.len]),
            &self.device,
        )
    }

    /// Each text's tokens.
    fn texts(&self) -> impl Iterator<Item = &[u32]> {
        spans(&self.lens).map(|span| &self.tokens[span])
    }
}

impl<B: Backend> EncoderLayer<B> {
    fn new(c: &ModelConfig, device: &B::Device) -> Self {
        let h = c.hidden_size;
        let linear = |i, o| LinearConfig::new(i, o).init(device);
        let norm = || {
            LayerNormConfig::new(h)
                .with_epsilon(c.layer_norm_eps)
                .init(device)
        };
        Self {
            query: linear(h, h),
            key: linear(h, h),
            value: linear(h, h),
            attention_out: linear(h, h),
            attention_norm: norm(),
            intermediate: linear(h, c.intermediate_size),
            output: linear(c.intermediate_size, h),
            output_norm: norm(),
        }
    }

    /// The padded path: `x` is `[batch, len, hidden]`.
    fn forward_padded(
        &self,
        x: Tensor<B, 3>,
        heads: usize,
        mask: Tensor<B, 4, Bool>,
        bias: Option<Tensor<B, 4>>,
    ) -> Tensor<B, 3> {
        let [batch, len, hidden] = x.dims();
        let split = |t: Tensor<B, 3>| {
            t.reshape([batch, len, heads, hidden / heads])
                .swap_dims(1, 2)
        };
        let q = split(self.query.forward(x.clone()));
        let k = split(self.key.forward(x.clone()));
        let v = split(self.value.forward(x.clone()));
        let context = attention(q, k, v, Some(mask), bias, AttentionModuleOptions::default())
            .swap_dims(1, 2)
            .reshape([batch, len, hidden]);
        self.after_attention(context, x)
    }

    /// The packed path: `x` is `[tokens, hidden]`, the texts of `lens` one after the other.
    fn forward_packed(
        &self,
        x: Tensor<B, 2>,
        heads: usize,
        lens: &[usize],
        bias: Option<&[Vec<f32>]>,
    ) -> Tensor<B, 2> {
        let [tokens, hidden] = x.dims();
        let q = self.query.forward(x.clone()).into_data();
        let k = self.key.forward(x.clone()).into_data();
        let v = self.value.forward(x.clone()).into_data();
        let context = attention::attention(
            floats(&q),
            floats(&k),
            floats(&v),
            lens,
            hidden,
            heads,
            bias,
        );
        let context = Tensor::from_data(TensorData::new(context, [tokens, hidden]), &x.device());
        self.after_attention(context, x)
    }

    /// Attention's output projection and the feed-forward block, each with its residual.
    fn after_attention<const D: usize>(
        &self,
        context: Tensor<B, D>,
        x: Tensor<B, D>,
    ) -> Tensor<B, D> {
        let x = self
            .attention_norm
            .forward(self.attention_out.forward(context) + x);
        let inner = activation::gelu(self.intermediate.forward(x.clone()));
        self.output_norm.forward(self.output.forward(inner) + x)
    }
}

/// A float tensor's values (f32 on the CPU backend), borrowed from its data.
fn floats(data: &TensorData) -> &[f32] {
    match data.as_slice() {
        Ok(v) => v,
        Err(e) => panic!("the CPU backend's floats are f32: {e:?}"),
    }
}

/// [`floats`], to change in place.
fn floats_mut(data: &mut TensorData) -> &mut [f32] {
    match data.as_mut_slice() {
        Ok(v) => v,
        Err(e) => panic!("the CPU backend's floats are f32: {e:?}"),
    }
}

impl<B: Backend> Encoder<B> {
    /// An encoder of the configured shape with untrained weights (load them with [`load`]).
    pub fn new(c: &ModelConfig, device: &B::Device) -> Self {
        let h = c.hidden_size;
        let embedding = |n| EmbeddingConfig::new(n, h).init(device);
        Self {
            word_embeddings: embedding(c.vocab_size),
            position_embeddings: embedding(c.max_position_embeddings),
            token_type_embeddings: (c.architecture != Architecture::Mpnet)
                .then(|| embedding(c.type_vocab_size.max(1))),
            embeddings_norm: LayerNormConfig::new(h)
                .with_epsilon(c.layer_norm_eps)
                .init(device),
            layers: (0..c.num_layers)
                .map(|_| EncoderLayer::new(c, device))
                .collect(),
            relative_attention_bias: (c.architecture == Architecture::Mpnet).then(|| {
                EmbeddingConfig::new(c.relative_attention_num_buckets, c.num_heads).init(device)
            }),
            padded: false,
        }
    }

    /// Runs the padded path (Burn's masked `attention`) on the CPU backend too; other
    /// backends always run it.
    #[must_use]
    pub fn with_padded(mut self, padded: bool) -> Self {
        self.padded = padded;
        self
    }

    /// Whether a batch runs packed (no padding computed): on the CPU backend, unless
    /// [`Encoder::with_padded`] asked otherwise.
    pub fn packs(&self) -> bool {
        on_cpu::<B>() && !self.padded
    }

    /// Pooled (and, if configured, normalized) sentence vectors `[batch, hidden]`.
    pub fn embed(&self, c: &ModelConfig, batch: &Batch<B>) -> Tensor<B, 2> {
        if self.packs() {
            self.embed_packed(c, batch)
        } else {
            self.embed_padded(c, batch)
        }
    }

    /// The first position id: BERT numbers positions from 0, MPNet and RoBERTa from
    /// `padding_idx + 1`.
    fn first_position(c: &ModelConfig) -> i64 {
        match c.architecture {
            Architecture::Bert => 0,
            Architecture::Mpnet | Architecture::Roberta => c.pad_token_id as i64 + 1,
        }
    }

    fn embed_packed(&self, c: &ModelConfig, batch: &Batch<B>) -> Tensor<B, 2> {
        let device = &batch.device;
        let (texts, hidden) = (batch.lens.len(), c.hidden_size);
        let tokens = batch.tokens.len();
        if tokens == 0 {
            return Tensor::zeros([texts, hidden], device);
        }
        let first = Self::first_position(c);
        let ids: Vec<i64> = batch.tokens.iter().map(|&t| i64::from(t)).collect();
        let positions: Vec<i64> = batch
            .lens
            .iter()
            .flat_map(|&n| first..first + n as i64)
            .collect();
        let row =
            |v: Vec<i64>| Tensor::<B, 2, Int>::from_data(TensorData::new(v, [1, tokens]), device);
        let mut x = self.word_embeddings.forward(row(ids))
            + self.position_embeddings.forward(row(positions));
        if let Some(types) = &self.token_type_embeddings {
            x = x + types.forward(Tensor::<B, 2, Int>::zeros([1, tokens], device));
        }
        let mut x = self.embeddings_norm.forward(x.reshape([tokens, hidden]));
        let longest = batch.lens.iter().copied().max().unwrap_or(1);
        let bias = self.relative_attention_bias.as_ref().map(|table| {
            relative_bias(
                table,
                longest,
                c.relative_attention_num_buckets,
                c.num_heads,
            )
        });
        for layer in &self.layers {
            x = layer.forward_packed(x, c.num_heads, &batch.lens, bias.as_deref());
        }

        // Pooling and normalization on the rows themselves.
        let x = x.into_data();
        let x = floats(&x);
        let mut pooled = vec![0.0f32; texts * hidden];
        for (out, span) in pooled.chunks_exact_mut(hidden).zip(spans(&batch.lens)) {
            let n = span.len();
            let rows = &x[span.start * hidden..span.end * hidden];
            match c.pooling {
                Pooling::Mean => {
                    for token in rows.chunks_exact(hidden) {
                        out.iter_mut().zip(token).for_each(|(o, x)| *o += x);
                    }
                    let count = (n as f32).max(1e-9);
                    out.iter_mut().for_each(|o| *o /= count);
                }
                Pooling::Cls => {
                    if n > 0 {
                        out.copy_from_slice(&rows[..hidden]);
                    }
                }
                Pooling::Max => {
                    out.fill(f32::NEG_INFINITY);
                    for token in rows.chunks_exact(hidden) {
                        out.iter_mut().zip(token).for_each(|(o, x)| *o = o.max(*x));
                    }
                    if n == 0 {
                        out.fill(0.0);
                    }
                }
                Pooling::LastToken => {
                    if n > 0 {
                        out.copy_from_slice(&rows[(n - 1) * hidden..]);
                    }
                }
            }
            if c.normalize {
                let norm = out.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-12);
                out.iter_mut().for_each(|o| *o /= norm);
            }
        }
        Tensor::from_data(TensorData::new(pooled, [texts, hidden]), device)
    }

    fn embed_padded(&self, c: &ModelConfig, batch: &Batch<B>) -> Tensor<B, 2> {
        let device = batch.device.clone();
        let ids = batch.padded_ids();
        let [n, len] = ids.dims();
        // Padded positions are masked, so their ids do not matter.
        let offset = Self::first_position(c);
        let positions = Tensor::<B, 1, Int>::arange(offset..offset + len as i64, &device)
            .reshape([1, len])
            .repeat_dim(0, n);
        let mut x = self.word_embeddings.forward(ids) + self.position_embeddings.forward(positions);
        if let Some(types) = &self.token_type_embeddings {
            x = x + types.forward(Tensor::<B, 2, Int>::zeros([n, len], &device));
        }
        let mut x = self.embeddings_norm.forward(x);

        // [n, 1, len, len]: one contiguous mask shared by the heads (broadcast, not copied,
        // by the CPU backend's attention) and by every layer.
        let mask = batch.attention_mask();
        let bias = self.relative_attention_bias.as_ref().map(|table| {
            let buckets = mpnet::bucket_matrix(len, c.relative_attention_num_buckets);
            let buckets =
                Tensor::<B, 2, Int>::from_data(TensorData::new(buckets, [len, len]), &device);
            // [len, len, heads] -> [1, heads, len, len]
            table
                .forward(buckets)
                .permute([2, 0, 1])
                .reshape([1, c.num_heads, len, len])
        });
        for layer in &self.layers {
            x = layer.forward_padded(x, c.num_heads, mask.clone(), bias.clone());
        }

        let real = batch.real();
        let pooled = match c.pooling {
            Pooling::Mean => {
                let summed = (x * real.clone()).sum_dim(1).reshape([n, c.hidden_size]);
                let counts = real.sum_dim(1).reshape([n, 1]).clamp_min(1e-9);
                summed / counts
            }
            Pooling::Cls => x.slice([0..n, 0..1]).reshape([n, c.hidden_size]),
            // sentence-transformers sets padded tokens to -1e9 before taking the maximum.
            Pooling::Max => {
                let padding = (real.neg() + 1.0) * -1e9;
                (x + padding).max_dim(1).reshape([n, c.hidden_size])
            }
            Pooling::LastToken => (x * batch.last()).sum_dim(1).reshape([n, c.hidden_size]),
        };
        if c.normalize {
            let norm = pooled
                .clone()
                .powi_scalar(2)
                .sum_dim(1)
                .sqrt()
                .clamp_min(1e-12);
            pooled / norm
        } else {
            pooled
        }
    }
}

/// MPNet's bias per head over relative positions `key - query ∈ [-(len-1), len-1]`, at index
/// `(len - 1) + key - query` (centred, as [`attention::attention`] reads it): the bucket table
/// read once per batch.
fn relative_bias<B: Backend>(
    table: &Embedding<B>,
    len: usize,
    buckets: usize,
    heads: usize,
) -> Vec<Vec<f32>> {
    let weights = table.weight.val().into_data();
    let weights = floats(&weights);
    let relative = -(len as i64 - 1)..len as i64;
    (0..heads)
        .map(|h| {
            relative
                .clone()
                .map(|r| {
                    let bucket = mpnet::relative_position_bucket(r, buckets as i64, 128) as usize;
                    weights[bucket * heads + h]
                })
                .collect()
        })
        .collect()
}
