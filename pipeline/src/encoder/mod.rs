//! Transformer encoders in Burn: BERT (absolute positions, token types) and MPNet (relative
//! position buckets shared across layers), with mean or CLS pooling and L2 normalization, as
//! sentence-transformers runs them. One module type serves both architectures; the
//! architecture (from the folder's `config.json`) decides which parts exist.
//!
//! Texts in a batch are right-padded to the batch's longest; padded keys are masked out of
//! attention and padded tokens out of pooling, so a text's vector does not depend on its
//! batch (checked by the parity tests).

pub mod activation;
mod load;
pub mod mpnet;

use burn::module::Module;
use burn::nn::{Embedding, EmbeddingConfig, LayerNorm, LayerNormConfig, Linear, LinearConfig};
use burn::tensor::backend::Backend;
use burn::tensor::module::attention;
use burn::tensor::ops::AttentionModuleOptions;
use burn::tensor::{Bool, Int, Tensor, TensorData};
use embedstream_topics::catalog::{Architecture, Pooling};

pub use load::load;

use crate::models::ModelConfig;

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
}

/// A tokenized, padded batch on a device.
#[derive(Debug)]
pub struct Batch<B: Backend> {
    /// Token ids `[batch, len]`, padded.
    pub ids: Tensor<B, 2, Int>,
    /// 1.0 at real tokens, 0.0 at padding `[batch, len, 1]`.
    pub real: Tensor<B, 3>,
    /// `true` where a query may not look: padded keys, `[batch, 1, len, len]`.
    pub attention_mask: Tensor<B, 4, Bool>,
}

impl<B: Backend> Batch<B> {
    /// Pads `texts` with `pad_id` to the longest, rounded up to a multiple of `multiple` but
    /// not past `max_len` (the model's token limit, within its position table).
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
        let batch = texts.len();
        let longest = texts.iter().map(|t| t.len()).max().unwrap_or(0).max(1);
        let len = longest
            .next_multiple_of(multiple.max(1))
            .min(max_len.max(longest));
        let mut ids = Vec::with_capacity(batch * len);
        let mut real = Vec::with_capacity(batch * len);
        for t in texts {
            for i in 0..len {
                let is_real = i < t.len();
                ids.push(i64::from(if is_real { t[i] } else { pad_id }));
                real.push(if is_real { 1.0f32 } else { 0.0 });
            }
        }
        let mut attention_mask = Vec::with_capacity(batch * len * len);
        for t in texts {
            for _query in 0..len {
                attention_mask.extend((0..len).map(|key| key >= t.len()));
            }
        }
        Self {
            attention_mask: Tensor::from_data(
                TensorData::new(attention_mask, [batch, 1, len, len]),
                device,
            ),
            ids: Tensor::from_data(TensorData::new(ids, [batch, len]), device),
            real: Tensor::from_data(TensorData::new(real, [batch, len, 1]), device),
        }
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

    fn forward(
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
        let x = self
            .attention_norm
            .forward(self.attention_out.forward(context) + x);
        let inner = activation::gelu(self.intermediate.forward(x.clone()));
        self.output_norm.forward(self.output.forward(inner) + x)
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
            token_type_embeddings: (c.architecture == Architecture::Bert)
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
        }
    }

    /// Pooled (and, if configured, normalized) sentence vectors `[batch, hidden]`.
    pub fn embed(&self, c: &ModelConfig, batch: &Batch<B>) -> Tensor<B, 2> {
        let device = batch.ids.device();
        let [n, len] = batch.ids.dims();
        // BERT numbers positions from 0; MPNet from padding_idx + 1 (padded positions are masked).
        let offset = match c.architecture {
            Architecture::Bert => 0,
            Architecture::Mpnet => c.pad_token_id as i64 + 1,
        };
        let positions = Tensor::<B, 1, Int>::arange(offset..offset + len as i64, &device)
            .reshape([1, len])
            .repeat_dim(0, n);
        let mut x = self.word_embeddings.forward(batch.ids.clone())
            + self.position_embeddings.forward(positions);
        if let Some(types) = &self.token_type_embeddings {
            x = x + types.forward(Tensor::<B, 2, Int>::zeros([n, len], &device));
        }
        let mut x = self.embeddings_norm.forward(x);

        // [n, 1, len, len]: one contiguous mask shared by the heads (broadcast, not copied,
        // by the CPU backend's attention) and by every layer.
        let mask = batch.attention_mask.clone();
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
            x = layer.forward(x, c.num_heads, mask.clone(), bias.clone());
        }

        let pooled = match c.pooling {
            Pooling::Mean => {
                let summed = (x * batch.real.clone())
                    .sum_dim(1)
                    .reshape([n, c.hidden_size]);
                let counts = batch
                    .real
                    .clone()
                    .sum_dim(1)
                    .reshape([n, 1])
                    .clamp_min(1e-9);
                summed / counts
            }
            Pooling::Cls => x.slice([0..n, 0..1]).reshape([n, c.hidden_size]),
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
