//! Loading Hugging Face `model.safetensors` into [`Encoder`]: tensor names are remapped from
//! the `transformers` layout of each architecture to the module's, PyTorch's `[out, in]`
//! Linear weights are transposed and LayerNorm `weight`/`bias` are renamed `gamma`/`beta` here (burn-store's
//! `PyTorchToBurnAdapter` transposes the Linear weights). Every module tensor must be found; the only file tensors left over
//! may be the pooler and the position-id buffer, which sentence-transformers does not use.

use std::path::Path;

use burn::tensor::backend::Backend;
use burn_store::{ModuleSnapshot, PyTorchToBurnAdapter, SafetensorsStore};
use embedstream_topics::catalog::Architecture;

use super::Encoder;
use crate::error::{Error, Result};
use crate::models::ModelConfig;

const COMMON: &[(&str, &str)] = &[
    (r"^embeddings\.LayerNorm\.weight$", "embeddings_norm.gamma"),
    (r"^embeddings\.LayerNorm\.bias$", "embeddings_norm.beta"),
    (
        r"^embeddings\.(word|position|token_type)_embeddings\.",
        "${1}_embeddings.",
    ),
    (
        r"^encoder\.layer\.(\d+)\.intermediate\.dense\.",
        "layers.${1}.intermediate.",
    ),
    (
        r"^encoder\.layer\.(\d+)\.output\.dense\.",
        "layers.${1}.output.",
    ),
    (
        r"^encoder\.layer\.(\d+)\.output\.LayerNorm\.weight$",
        "layers.${1}.output_norm.gamma",
    ),
    (
        r"^encoder\.layer\.(\d+)\.output\.LayerNorm\.bias$",
        "layers.${1}.output_norm.beta",
    ),
];

const BERT: &[(&str, &str)] = &[
    (
        r"^encoder\.layer\.(\d+)\.attention\.self\.(query|key|value)\.",
        "layers.${1}.${2}.",
    ),
    (
        r"^encoder\.layer\.(\d+)\.attention\.output\.dense\.",
        "layers.${1}.attention_out.",
    ),
    (
        r"^encoder\.layer\.(\d+)\.attention\.output\.LayerNorm\.weight$",
        "layers.${1}.attention_norm.gamma",
    ),
    (
        r"^encoder\.layer\.(\d+)\.attention\.output\.LayerNorm\.bias$",
        "layers.${1}.attention_norm.beta",
    ),
];

const MPNET: &[(&str, &str)] = &[
    (
        r"^encoder\.layer\.(\d+)\.attention\.attn\.q\.",
        "layers.${1}.query.",
    ),
    (
        r"^encoder\.layer\.(\d+)\.attention\.attn\.k\.",
        "layers.${1}.key.",
    ),
    (
        r"^encoder\.layer\.(\d+)\.attention\.attn\.v\.",
        "layers.${1}.value.",
    ),
    (
        r"^encoder\.layer\.(\d+)\.attention\.attn\.o\.",
        "layers.${1}.attention_out.",
    ),
    (
        r"^encoder\.layer\.(\d+)\.attention\.LayerNorm\.weight$",
        "layers.${1}.attention_norm.gamma",
    ),
    (
        r"^encoder\.layer\.(\d+)\.attention\.LayerNorm\.bias$",
        "layers.${1}.attention_norm.beta",
    ),
    (
        r"^encoder\.relative_attention_bias\.",
        "relative_attention_bias.",
    ),
];

/// File tensors that sentence-transformers does not use.
fn ignorable(name: &str) -> bool {
    name.starts_with("pooler.") || name.ends_with("position_ids")
}

/// Builds the encoder of `config` on `device` and loads `dir/model.safetensors` into it.
pub fn load<B: Backend>(
    config: &ModelConfig,
    dir: &Path,
    device: &B::Device,
) -> Result<Encoder<B>> {
    let path = dir.join("model.safetensors");
    let bad = |reason: String| Error::Config {
        path: path.clone(),
        reason,
    };
    let mut store = SafetensorsStore::from_file(&path).with_from_adapter(PyTorchToBurnAdapter);
    let specific = match config.architecture {
        Architecture::Bert | Architecture::Roberta => BERT,
        Architecture::Mpnet => MPNET,
    };
    for (from, to) in COMMON.iter().chain(specific) {
        store = store.with_key_remapping(*from, *to);
    }
    let mut encoder = Encoder::<B>::new(config, device);
    let result = encoder
        .load_from(&mut store)
        .map_err(|e| bad(e.to_string()))?;
    if !result.missing.is_empty() {
        let missing: Vec<&str> = result.missing.iter().map(|(p, _)| p.as_str()).collect();
        return Err(bad(format!("tensors missing from the file: {missing:?}")));
    }
    if !result.errors.is_empty() {
        return Err(bad(format!("tensors that do not fit: {:?}", result.errors)));
    }
    let unused: Vec<&String> = result.unused.iter().filter(|n| !ignorable(n)).collect();
    if !unused.is_empty() {
        return Err(bad(format!(
            "file tensors the model does not use: {unused:?}"
        )));
    }
    Ok(encoder)
}
