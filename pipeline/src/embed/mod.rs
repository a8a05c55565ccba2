//! The embedding engine: tokenizer, encoder models, and the serving loop.

pub mod burn_model;
pub mod engine;
pub mod tokenize;

use embedstream_topics::ModelSpec;

use self::burn_model::{Device, load_embedder};
use self::engine::{Engine, EngineConfig, EngineThreads};
use self::tokenize::TextTokenizer;
use crate::error::Result;
use crate::models;

/// Fetches (if needed) and loads a model version, and starts an engine serving it.
pub fn open(
    spec: &ModelSpec,
    device: Device,
    config: EngineConfig,
) -> Result<(Engine, EngineThreads)> {
    open_named(spec, device, config, &spec.model.to_string())
}

/// [`open`], with the name its metrics carry.
pub fn open_named(
    spec: &ModelSpec,
    device: Device,
    config: EngineConfig,
    name: &str,
) -> Result<(Engine, EngineThreads)> {
    let dir = models::fetch(spec, &models::home())?;
    let (embedder, model_config) = load_embedder(&dir, device)?;
    let mut replicas = vec![embedder];
    // A GPU runs one replica; CPU replicas share the cores (see `EngineConfig::replicas`).
    if device == Device::Cpu {
        for _ in 1..config.replicas.max(1) {
            replicas.push(load_embedder(&dir, device)?.0);
        }
    }
    let tokenizer = TextTokenizer::for_model(&dir, &model_config)?;
    let (engine, threads) = Engine::start_replicated(replicas, tokenizer, config, name);
    Ok((engine.with_prompts(model_config.prompts), threads))
}
