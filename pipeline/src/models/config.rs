//! A model folder's own configuration: the architecture from `config.json` (never from the
//! model's name), the sequence limit from `sentence_bert_config.json`, the pooling from
//! `1_Pooling/config.json`, and normalization from `modules.json`.

use std::path::Path;

use embedstream_topics::catalog::{Architecture, Pooling};
use serde::Deserialize;

use crate::error::{Error, Result};

/// What the model code needs to know about one model folder.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelConfig {
    /// Encoder architecture.
    pub architecture: Architecture,
    /// Hidden size (the embedding dimension).
    pub hidden_size: usize,
    /// Encoder layers.
    pub num_layers: usize,
    /// Attention heads.
    pub num_heads: usize,
    /// Feed-forward inner size.
    pub intermediate_size: usize,
    /// Vocabulary size.
    pub vocab_size: usize,
    /// Position embedding rows.
    pub max_position_embeddings: usize,
    /// Token type rows (BERT; 0 for MPNet).
    pub type_vocab_size: usize,
    /// LayerNorm epsilon.
    pub layer_norm_eps: f64,
    /// Padding token id (MPNet's positions start after it).
    pub pad_token_id: usize,
    /// MPNet's relative attention buckets.
    pub relative_attention_num_buckets: usize,
    /// Max tokens per text, special tokens included (sentence-transformers' limit).
    pub max_seq_length: usize,
    /// Pooling.
    pub pooling: Pooling,
    /// Whether the pipeline ends with L2 normalization.
    pub normalize: bool,
}

#[derive(Deserialize)]
struct HfConfig {
    model_type: String,
    hidden_size: usize,
    num_hidden_layers: usize,
    num_attention_heads: usize,
    intermediate_size: usize,
    vocab_size: usize,
    max_position_embeddings: usize,
    #[serde(default)]
    type_vocab_size: usize,
    layer_norm_eps: f64,
    #[serde(default)]
    pad_token_id: usize,
    #[serde(default)]
    relative_attention_num_buckets: usize,
    #[serde(default = "default_act")]
    hidden_act: String,
}

fn default_act() -> String {
    "gelu".to_owned()
}

#[derive(Deserialize)]
struct SentenceBertConfig {
    max_seq_length: usize,
}

#[derive(Deserialize)]
struct PoolingConfig {
    #[serde(default)]
    pooling_mode_cls_token: bool,
    #[serde(default)]
    pooling_mode_mean_tokens: bool,
    #[serde(default)]
    pooling_mode_max_tokens: bool,
    #[serde(default)]
    pooling_mode_mean_sqrt_len_tokens: bool,
}

#[derive(Deserialize)]
struct Module {
    #[serde(rename = "type")]
    kind: String,
}

fn read<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<T> {
    let text = std::fs::read_to_string(path).map_err(Error::io(path))?;
    serde_json::from_str(&text).map_err(|e| Error::Config {
        path: path.to_owned(),
        reason: e.to_string(),
    })
}

impl ModelConfig {
    /// Reads the configuration of the model folder `dir`.
    pub fn load(dir: &Path) -> Result<Self> {
        let hf_path = dir.join("config.json");
        let hf: HfConfig = read(&hf_path)?;
        let bad = |path: &Path, reason: String| Error::Config {
            path: path.to_owned(),
            reason,
        };
        let architecture = match hf.model_type.as_str() {
            "bert" => Architecture::Bert,
            "mpnet" => Architecture::Mpnet,
            other => {
                return Err(bad(
                    &hf_path,
                    format!("model_type {other:?} is not supported (bert, mpnet)"),
                ));
            }
        };
        if hf.hidden_act != "gelu" {
            return Err(bad(
                &hf_path,
                format!("hidden_act {:?} is not supported (gelu)", hf.hidden_act),
            ));
        }
        if hf.num_attention_heads == 0 || !hf.hidden_size.is_multiple_of(hf.num_attention_heads) {
            return Err(bad(
                &hf_path,
                "hidden_size is not a multiple of the heads".to_owned(),
            ));
        }
        let st_path = dir.join("sentence_bert_config.json");
        let st: SentenceBertConfig = read(&st_path)?;
        let pool_path = dir.join("1_Pooling").join("config.json");
        let pool: PoolingConfig = read(&pool_path)?;
        let pooling = match (
            pool.pooling_mode_mean_tokens,
            pool.pooling_mode_cls_token,
            pool.pooling_mode_max_tokens || pool.pooling_mode_mean_sqrt_len_tokens,
        ) {
            (true, false, false) => Pooling::Mean,
            (false, true, false) => Pooling::Cls,
            _ => {
                return Err(bad(
                    &pool_path,
                    "only mean or cls pooling is supported".to_owned(),
                ));
            }
        };
        let modules: Vec<Module> = read(&dir.join("modules.json"))?;
        let normalize = modules.iter().any(|m| m.kind.ends_with("models.Normalize"));
        // Positions: BERT uses 0.., MPNet starts after the padding id.
        let position_offset = match architecture {
            Architecture::Bert => 0,
            Architecture::Mpnet => hf.pad_token_id + 1,
        };
        if st.max_seq_length + position_offset > hf.max_position_embeddings {
            return Err(bad(
                &st_path,
                format!(
                    "max_seq_length {} exceeds the {} position embeddings",
                    st.max_seq_length, hf.max_position_embeddings
                ),
            ));
        }
        Ok(Self {
            architecture,
            hidden_size: hf.hidden_size,
            num_layers: hf.num_hidden_layers,
            num_heads: hf.num_attention_heads,
            intermediate_size: hf.intermediate_size,
            vocab_size: hf.vocab_size,
            max_position_embeddings: hf.max_position_embeddings,
            type_vocab_size: hf.type_vocab_size,
            layer_norm_eps: hf.layer_norm_eps,
            pad_token_id: hf.pad_token_id,
            relative_attention_num_buckets: hf.relative_attention_num_buckets,
            max_seq_length: st.max_seq_length,
            pooling,
            normalize,
        })
    }
}
