//! A model folder's own configuration: the architecture from `config.json` (never from the
//! model's name), the sequence limit and lower-casing from `sentence_bert_config.json`, the
//! module pipeline from `modules.json` (Transformer, Pooling, optionally Normalize), the
//! pooling from the Pooling module's `config.json`, and prompts from
//! `config_sentence_transformers.json` when there is one. Anything the engine cannot run the
//! way sentence-transformers does (another architecture, another module, another pooling) is
//! refused with the file and the reason.

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
    /// Whether texts are lower-cased before tokenizing (sentence-transformers'
    /// `do_lower_case`).
    pub lower_case: bool,
    /// The Pooling module's config file, relative to the folder (its folder is named by
    /// `modules.json`).
    pub pooling_config: String,
    /// The model's prompts.
    pub prompts: Prompts,
}

/// Texts put before an input, by name (sentence-transformers' `prompts`, e.g. E5's
/// `query: ` / `passage: `), and the one used when a request names none.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct Prompts {
    /// Prompt name → text.
    #[serde(default)]
    pub prompts: std::collections::BTreeMap<String, String>,
    /// Used when a request names no prompt.
    #[serde(default)]
    pub default_prompt_name: Option<String>,
}

impl Prompts {
    /// The names a query may give for documents, in order of preference.
    pub const DOCUMENT_NAMES: [&str; 3] = ["document", "passage", "doc"];

    /// The prompt `name` (or the default one when `None`): `Ok(None)` when there is none to
    /// apply, `Err` with the known names when `name` is not one of them.
    pub fn resolve(&self, name: Option<&str>) -> Result<Option<&str>, Vec<String>> {
        match name.or(self.default_prompt_name.as_deref()) {
            None => Ok(None),
            Some(n) => self
                .prompts
                .get(n)
                .map(|p| Some(p.as_str()).filter(|p| !p.is_empty()))
                .ok_or_else(|| self.prompts.keys().cloned().collect()),
        }
    }

    /// The prompt for a kind of input (`query` or `document`): the model's prompt of that
    /// name (documents also `passage` / `doc`), none when the model has none for it.
    pub fn for_input(&self, query: bool) -> Option<&str> {
        let names: &[&str] = if query {
            &["query"]
        } else {
            &Self::DOCUMENT_NAMES
        };
        names
            .iter()
            .find_map(|n| self.prompts.get(*n))
            .map(String::as_str)
            .filter(|p| !p.is_empty())
    }
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

/// `sentence_bert_config.json`. Folders saved by sentence-transformers 6 leave both out: the
/// limit is then the tokenizer's `model_max_length` and lower-casing is in `tokenizer.json`.
#[derive(Deserialize)]
struct SentenceBertConfig {
    #[serde(default)]
    max_seq_length: Option<usize>,
    #[serde(default)]
    do_lower_case: bool,
}

#[derive(Deserialize)]
struct TokenizerConfig {
    #[serde(default)]
    model_max_length: Option<f64>,
}

/// A Pooling module's `config.json`: `pooling_mode` (a name, or several names to concatenate)
/// as sentence-transformers 6 writes it, or the older `pooling_mode_*` flags.
#[derive(Deserialize)]
struct PoolingConfig {
    #[serde(default)]
    pooling_mode: Option<PoolingModes>,
    #[serde(default)]
    pooling_mode_cls_token: bool,
    #[serde(default)]
    pooling_mode_mean_tokens: bool,
    #[serde(default)]
    pooling_mode_max_tokens: bool,
    #[serde(default)]
    pooling_mode_mean_sqrt_len_tokens: bool,
    #[serde(default)]
    pooling_mode_weightedmean_tokens: bool,
    #[serde(default)]
    pooling_mode_lasttoken: bool,
    #[serde(default = "yes")]
    include_prompt: bool,
}

fn yes() -> bool {
    true
}

#[derive(Deserialize)]
#[serde(untagged)]
enum PoolingModes {
    One(String),
    Several(Vec<String>),
}

#[derive(Deserialize)]
struct Module {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    path: String,
}

/// The module pipeline sentence-transformers runs: a Transformer at the folder's root, one
/// Pooling module, and an optional Normalize, in that order. Returns the Pooling module's
/// config file (relative to `dir`) and whether the vectors are normalized.
fn modules(dir: &Path) -> Result<(String, bool)> {
    let path = dir.join("modules.json");
    let modules: Vec<Module> = read(&path)?;
    let bad = |reason: String| Error::Config {
        path: path.clone(),
        reason,
    };
    let kinds: Vec<&str> = modules
        .iter()
        .map(|m| m.kind.rsplit('.').next().unwrap_or(&m.kind))
        .collect();
    match kinds.as_slice() {
        ["Transformer", "Pooling"] | ["Transformer", "Pooling", "Normalize"] => {}
        other => {
            return Err(bad(format!(
                "modules {other:?} are not supported (Transformer, Pooling and an optional \
                 Normalize)"
            )));
        }
    }
    if !modules[0].path.is_empty() {
        return Err(bad(format!(
            "the Transformer module must be the folder itself, not {:?}",
            modules[0].path
        )));
    }
    let pooling_config = format!("{}/config.json", modules[1].path.trim_matches('/'));
    Ok((pooling_config, kinds.len() == 3))
}

/// The one pooling mode a Pooling module's config selects.
fn pooling(path: &Path) -> Result<Pooling> {
    let pool: PoolingConfig = read(path)?;
    let bad = |reason: String| Error::Config {
        path: path.to_owned(),
        reason,
    };
    if !pool.include_prompt {
        return Err(bad(
            "include_prompt false (pooling without the prompt's tokens) is not supported"
                .to_owned(),
        ));
    }
    let names: Vec<String> = match pool.pooling_mode {
        Some(PoolingModes::One(name)) => vec![name],
        Some(PoolingModes::Several(names)) => names,
        None => [
            (pool.pooling_mode_mean_tokens, "mean"),
            (pool.pooling_mode_cls_token, "cls"),
            (pool.pooling_mode_max_tokens, "max"),
            (pool.pooling_mode_lasttoken, "lasttoken"),
            (
                pool.pooling_mode_mean_sqrt_len_tokens,
                "mean_sqrt_len_tokens",
            ),
            (pool.pooling_mode_weightedmean_tokens, "weightedmean"),
        ]
        .into_iter()
        .filter(|(on, _)| *on)
        .map(|(_, name)| name.to_owned())
        .collect(),
    };
    match names.as_slice() {
        [name] => match name.as_str() {
            "mean" => Ok(Pooling::Mean),
            "cls" => Ok(Pooling::Cls),
            "max" => Ok(Pooling::Max),
            "lasttoken" => Ok(Pooling::LastToken),
            other => Err(bad(format!(
                "pooling {other:?} is not supported (mean, cls, max, lasttoken)"
            ))),
        },
        [] => Err(bad("no pooling mode is set".to_owned())),
        several => Err(bad(format!(
            "pooling modes {several:?} together (concatenated) are not supported: one of \
             mean, cls, max, lasttoken"
        ))),
    }
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
            "roberta" | "xlm-roberta" => Architecture::Roberta,
            other => {
                return Err(bad(
                    &hf_path,
                    format!(
                        "model_type {other:?} is not supported (bert, mpnet, roberta, \
                         xlm-roberta)"
                    ),
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
        let (pooling_config, normalize) = modules(dir)?;
        let pooling = pooling(&dir.join(&pooling_config))?;
        // Positions: BERT uses 0.., MPNet and RoBERTa start after the padding id.
        let position_offset = match architecture {
            Architecture::Bert => 0,
            Architecture::Mpnet | Architecture::Roberta => hf.pad_token_id + 1,
        };
        let positions = hf.max_position_embeddings.saturating_sub(position_offset);
        let tokenizer_limit = || -> Result<Option<usize>> {
            let path = dir.join("tokenizer_config.json");
            if !path.exists() {
                return Ok(None);
            }
            let c: TokenizerConfig = read(&path)?;
            // transformers writes a huge number when the tokenizer sets no limit.
            Ok(c.model_max_length
                .filter(|n| *n >= 1.0 && *n < 1e6)
                .map(|n| n as usize))
        };
        let max_seq_length = match st.max_seq_length {
            Some(n) => n,
            None => tokenizer_limit()?.unwrap_or(positions).min(positions),
        };
        if max_seq_length > positions {
            return Err(bad(
                &st_path,
                format!(
                    "max_seq_length {max_seq_length} exceeds the {} position embeddings",
                    hf.max_position_embeddings
                ),
            ));
        }
        // Optional: most models have no prompts.
        let prompts_path = dir.join("config_sentence_transformers.json");
        let prompts: Prompts = if prompts_path.exists() {
            read(&prompts_path)?
        } else {
            Prompts::default()
        };
        if let Some(name) = &prompts.default_prompt_name
            && !prompts.prompts.contains_key(name)
        {
            return Err(bad(
                &prompts_path,
                format!("default_prompt_name {name:?} is not one of its prompts"),
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
            max_seq_length,
            pooling,
            normalize,
            lower_case: st.do_lower_case,
            pooling_config,
            prompts,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::Prompts;

    fn e5() -> Prompts {
        serde_json::from_str(
            r#"{"prompts": {"query": "query: ", "passage": "passage: ", "none": ""},
                "default_prompt_name": null, "similarity_fn_name": "cosine"}"#,
        )
        .unwrap()
    }

    #[test]
    fn prompts_resolve_by_name_by_kind_and_by_default() {
        let p = e5();
        assert_eq!(p.resolve(Some("query")), Ok(Some("query: ")));
        assert_eq!(p.resolve(Some("none")), Ok(None), "an empty prompt is none");
        assert_eq!(p.resolve(None), Ok(None), "no default");
        assert_eq!(
            p.resolve(Some("title")),
            Err(vec![
                "none".to_owned(),
                "passage".to_owned(),
                "query".to_owned()
            ])
        );
        assert_eq!(p.for_input(true), Some("query: "));
        assert_eq!(p.for_input(false), Some("passage: "), "documents: passage");
        let with_default = Prompts {
            default_prompt_name: Some("query".to_owned()),
            ..e5()
        };
        assert_eq!(with_default.resolve(None), Ok(Some("query: ")));
        let bare = Prompts::default();
        assert_eq!(bare.resolve(None), Ok(None));
        assert_eq!(bare.for_input(true), None);
        assert_eq!(bare.resolve(Some("query")), Err(Vec::new()));
    }
}
