//! The artifact: a safetensors file holding the matrices, with the training metadata and a
//! CRC-32 of the tensor bytes in its header; written through a temporary file and a rename.
//! And the adapters folder: listing, the next version of a name, resolving a name or a path.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use safetensors::tensor::{Dtype, SafeTensors, TensorView};
use serde::{Deserialize, Serialize};

use crate::{Adapter, AdapterError, AdapterKind, AdapterName, Layers, Matrix};

/// Training metadata, kept in the artifact's header.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AdapterMeta {
    /// `<new>_to_<old>.<kind>.v<N>`.
    pub name: String,
    /// The kind.
    pub kind: AdapterKind,
    /// New model, `id@version`: its vectors go in.
    pub new_model: String,
    /// Old model, `id@version`: its index is searched with the output.
    pub old_model: String,
    /// Input (new model) dimension.
    pub in_dim: usize,
    /// Output (old model) dimension.
    pub out_dim: usize,
    /// Pairs fitted on.
    pub pairs: usize,
    /// Pairs held out to measure the fit.
    pub holdout_pairs: usize,
    /// Mean cosine of mapped new vectors to their old vectors, on the fitted pairs.
    pub train_cosine: f64,
    /// The same on the held-out pairs (none when nothing was held out).
    #[serde(default)]
    pub holdout_cosine: Option<f64>,
    /// Kind-specific settings (rank, ridge, hidden size, epochs, ...).
    pub params: HashMap<String, String>,
    /// Where the pairs came from.
    pub source: String,
    /// When it was trained, ms since the epoch.
    pub created_at_ms: i64,
    /// Seconds the fit took.
    pub fit_seconds: f64,
}

impl AdapterMeta {
    /// The metadata of an adapter named `name` (its kind and models come from the name),
    /// before any training figures are known.
    pub fn new(name: &AdapterName, in_dim: usize, out_dim: usize, source: String) -> Self {
        AdapterMeta {
            name: name.to_string(),
            kind: name
                .kind
                .parse()
                .expect("an AdapterName's kind is one of the kinds"),
            new_model: name.new.clone(),
            old_model: name.old.clone(),
            in_dim,
            out_dim,
            pairs: 0,
            holdout_pairs: 0,
            train_cosine: 0.0,
            holdout_cosine: None,
            params: HashMap::new(),
            source,
            created_at_ms: 0,
            fit_seconds: 0.0,
        }
    }
}

const META_KEY: &str = "embedstream.adapter";
const CRC_KEY: &str = "embedstream.crc32";

impl Adapter {
    /// Writes the artifact to `path` (through a temporary file and a rename: a reader never
    /// sees half a file).
    pub fn save(&self, path: &Path) -> Result<(), AdapterError> {
        let invalid = |reason: String| AdapterError::Invalid {
            path: path.to_path_buf(),
            reason,
        };
        self.validate().map_err(invalid)?;
        let mut tensors: Vec<(&str, Vec<usize>, Vec<u8>)> = Vec::new();
        let mut put_m = |name: &'static str, m: &Matrix| {
            tensors.push((name, vec![m.rows, m.cols], bytes(&m.data)));
        };
        match &self.layers {
            Layers::Linear { w, .. } => put_m("w", w),
            Layers::LowRank { u, v, .. } => {
                put_m("u", u);
                put_m("v", v);
            }
            Layers::Residual { w, w1, w2, .. } => {
                put_m("w", w);
                put_m("w1", w1);
                put_m("w2", w2);
            }
        }
        let (b, b1) = match &self.layers {
            Layers::Linear { b, .. } | Layers::LowRank { b, .. } => (b, None),
            Layers::Residual { b, b1, .. } => (b, Some(b1)),
        };
        tensors.push(("b", vec![b.len()], bytes(b)));
        if let Some(b1) = b1 {
            tensors.push(("b1", vec![b1.len()], bytes(b1)));
        }
        tensors.sort_by(|a, b| a.0.cmp(b.0));
        let mut crc = crc32fast::Hasher::new();
        for (_, _, data) in &tensors {
            crc.update(data);
        }
        let mut header = HashMap::new();
        header.insert(
            META_KEY.to_string(),
            serde_json::to_string(&self.meta).map_err(|e| invalid(e.to_string()))?,
        );
        header.insert(CRC_KEY.to_string(), crc.finalize().to_string());
        let views = tensors
            .iter()
            .map(|(name, shape, data)| {
                TensorView::new(Dtype::F32, shape.clone(), data).map(|v| (*name, v))
            })
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| invalid(e.to_string()))?;
        let buffer = safetensors::tensor::serialize(views, Some(header))
            .map_err(|e| invalid(e.to_string()))?;
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(|source| AdapterError::Io {
                op: "creating the folder of",
                path: path.to_path_buf(),
                source,
            })?;
        }
        let tmp = path.with_extension("safetensors.tmp");
        let io = |op, source| AdapterError::Io {
            op,
            path: path.to_path_buf(),
            source,
        };
        std::fs::write(&tmp, &buffer).map_err(|e| io("writing", e))?;
        std::fs::rename(&tmp, path).map_err(|e| io("renaming into place", e))
    }

    /// Reads and checks an artifact: header, checksum, shapes, finiteness, and that the file
    /// name matches the metadata's name.
    pub fn load(path: &Path) -> Result<Adapter, AdapterError> {
        let buffer = std::fs::read(path).map_err(|source| AdapterError::Io {
            op: "reading",
            path: path.to_path_buf(),
            source,
        })?;
        let invalid = |reason: String| AdapterError::Invalid {
            path: path.to_path_buf(),
            reason,
        };
        let (_, header) = SafeTensors::read_metadata(&buffer)
            .map_err(|e| invalid(format!("not a safetensors file: {e}")))?;
        let st = SafeTensors::deserialize(&buffer).map_err(|e| invalid(e.to_string()))?;
        let extra = header.metadata().clone().unwrap_or_default();
        let meta: AdapterMeta = serde_json::from_str(
            extra
                .get(META_KEY)
                .ok_or_else(|| invalid(format!("no {META_KEY} in the header")))?,
        )
        .map_err(|e| invalid(format!("metadata: {e}")))?;
        let want_crc: u32 = extra
            .get(CRC_KEY)
            .and_then(|c| c.parse().ok())
            .ok_or_else(|| invalid(format!("no {CRC_KEY} in the header")))?;
        let mut names: Vec<String> = st.names().into_iter().map(String::from).collect();
        names.sort();
        let mut crc = crc32fast::Hasher::new();
        let mut tensors = HashMap::new();
        for name in &names {
            let view = st.tensor(name).map_err(|e| invalid(e.to_string()))?;
            if view.dtype() != Dtype::F32 {
                return Err(invalid(format!("{name} is {:?}, want F32", view.dtype())));
            }
            crc.update(view.data());
            let values: Vec<f32> = view
                .data()
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect();
            tensors.insert(name.clone(), (view.shape().to_vec(), values));
        }
        if crc.finalize() != want_crc {
            return Err(invalid("checksum mismatch (the file is corrupt)".into()));
        }
        let mut take = |name: &str| {
            tensors
                .remove(name)
                .ok_or_else(|| invalid(format!("no tensor {name:?}")))
        };
        let mut matrix = |name: &str| -> Result<Matrix, AdapterError> {
            let (shape, data) = take(name)?;
            match shape[..] {
                [r, c] => Ok(Matrix::new(r, c, data)),
                _ => Err(invalid(format!("{name} is not a matrix"))),
            }
        };
        let layers = match meta.kind {
            AdapterKind::Procrustes => Layers::Linear {
                w: matrix("w")?,
                b: take("b")?.1,
            },
            AdapterKind::Affine => Layers::LowRank {
                u: matrix("u")?,
                v: matrix("v")?,
                b: take("b")?.1,
            },
            AdapterKind::Mlp => Layers::Residual {
                w: matrix("w")?,
                w1: matrix("w1")?,
                w2: matrix("w2")?,
                b: take("b")?.1,
                b1: take("b1")?.1,
            },
        };
        let adapter = Adapter::new(meta, layers);
        adapter.validate().map_err(invalid)?;
        if path.file_stem().and_then(|s| s.to_str()) != Some(adapter.meta.name.as_str()) {
            return Err(invalid(format!(
                "the file name does not match the adapter's name {}",
                adapter.meta.name
            )));
        }
        Ok(adapter)
    }
}

fn bytes(values: &[f32]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

/// The adapters in a folder, by name (files that do not parse as names are ignored).
pub fn list(dir: &Path) -> Result<Vec<AdapterName>, AdapterError> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => {
            return Err(AdapterError::Io {
                op: "listing",
                path: dir.to_path_buf(),
                source,
            });
        }
    };
    let mut names: Vec<AdapterName> = entries
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            name.strip_suffix(".safetensors")?.parse().ok()
        })
        .collect();
    names.sort();
    Ok(names)
}

/// The next name (version) for (new, old, kind) in `dir`.
pub fn next_name(
    dir: &Path,
    new: &str,
    old: &str,
    kind: AdapterKind,
) -> Result<AdapterName, AdapterError> {
    let version = list(dir)?
        .into_iter()
        .filter(|n| n.new == new && n.old == old && n.kind == kind.as_str())
        .map(|n| n.version)
        .max()
        .unwrap_or(0)
        + 1;
    Ok(AdapterName {
        new: new.to_string(),
        old: old.to_string(),
        kind: kind.as_str(),
        version,
    })
}

/// Resolves a name or a path to an artifact file: a path that exists is taken as is, else
/// the name is looked up in `dir`.
pub fn resolve(dir: &Path, name_or_path: &str) -> Result<PathBuf, AdapterError> {
    let as_path = Path::new(name_or_path);
    if name_or_path.ends_with(".safetensors") && as_path.exists() {
        return Ok(as_path.to_path_buf());
    }
    let name: AdapterName = name_or_path.parse()?;
    let path = name.path_in(dir);
    if path.exists() {
        Ok(path)
    } else {
        Err(AdapterError::NotFound {
            name: name_or_path.to_string(),
            dir: dir.to_path_buf(),
        })
    }
}
