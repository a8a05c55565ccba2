//! References: a model version's canary vectors, saved once as
//! `<state>/references/<id@version>.safetensors` with the canary set's digest.

use std::path::{Path, PathBuf};

use embedstream_topics::ModelRef;
use embedstream_topics::time::now_ms;
use safetensors::tensor::{Dtype, SafeTensors, TensorView};

use crate::error::{Error, Result};

/// Saved reference vectors of one model version.
#[derive(Debug, Clone)]
pub struct Reference {
    /// Digest of the canary set they embed.
    pub digest: String,
    /// One vector per canary, in order.
    pub vectors: Vec<Vec<f32>>,
}

fn reference_path(state: &Path, model: &ModelRef) -> PathBuf {
    state
        .join("references")
        .join(format!("{model}.safetensors"))
}

/// Reads a saved reference, if there is one.
pub fn load_reference(state: &Path, model: &ModelRef) -> Result<Option<Reference>> {
    let path = reference_path(state, model);
    let bytes = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::io(&path)(e)),
    };
    let bad = |reason: String| Error::Config {
        path: path.clone(),
        reason,
    };
    let (_, header) = SafeTensors::read_metadata(&bytes).map_err(|e| bad(e.to_string()))?;
    let digest = header
        .metadata()
        .as_ref()
        .and_then(|m| m.get("canary_digest").cloned())
        .ok_or_else(|| bad("no canary_digest".into()))?;
    let st = SafeTensors::deserialize(&bytes).map_err(|e| bad(e.to_string()))?;
    let t = st.tensor("vectors").map_err(|e| bad(e.to_string()))?;
    let [_, dim] = t.shape()[..] else {
        return Err(bad("vectors is not a matrix".into()));
    };
    let flat: Vec<f32> = t
        .data()
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    Ok(Some(Reference {
        digest,
        vectors: flat.chunks(dim.max(1)).map(<[f32]>::to_vec).collect(),
    }))
}

/// Saves a reference (through a temporary file and a rename).
pub fn save_reference(state: &Path, model: &ModelRef, reference: &Reference) -> Result<()> {
    let path = reference_path(state, model);
    let dim = reference.vectors.first().map_or(0, Vec::len);
    let data: Vec<u8> = reference
        .vectors
        .iter()
        .flatten()
        .flat_map(|v| v.to_le_bytes())
        .collect();
    let view =
        TensorView::new(Dtype::F32, vec![reference.vectors.len(), dim], &data).map_err(|e| {
            Error::Config {
                path: path.clone(),
                reason: e.to_string(),
            }
        })?;
    let meta = [
        ("canary_digest".to_string(), reference.digest.clone()),
        ("model".to_string(), model.to_string()),
        ("created_at_ms".to_string(), now_ms().to_string()),
    ]
    .into_iter()
    .collect();
    let bytes = safetensors::tensor::serialize([("vectors", view)], Some(meta)).map_err(|e| {
        Error::Config {
            path: path.clone(),
            reason: e.to_string(),
        }
    })?;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(Error::io(dir))?;
    }
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes).map_err(Error::io(&tmp))?;
    std::fs::rename(&tmp, &path).map_err(Error::io(&path))
}
