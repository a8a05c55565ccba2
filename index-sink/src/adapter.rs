//! Drift-Adapter artifacts (seed 002): a map from a new model's embedding space into an old
//! one's, so that the old version's index answers queries embedded with the new model.
//!
//! An adapter is a versioned file, `<new>_to_<old>.<kind>.v<N>.safetensors` (its name is the
//! file stem: `mpnet-base-v2@1_to_minilm-l6-v2@1.procrustes.v3` maps MPNet vectors into
//! MiniLM's space), holding f32 matrices and,
//! in the safetensors header, its training metadata ([`AdapterMeta`]) and a CRC-32 of the
//! tensor bytes. Every kind applies as `normalize(map(x))`:
//!
//! - `procrustes`: `W x + b` with `W` (out × in) = `s · V Uᵀ`, orthonormal rows scaled by one
//!   factor `s`;
//! - `affine`: `V (U x) + b`, a rank-r linear map (`U`: r × in, `V`: out × r);
//! - `mlp`: the Procrustes map plus a residual `W₂ relu(W₁ x + b₁) + b₂`.
//!
//! Matrices are stored with one row per output, so each output is one SIMD dot product
//! over a contiguous row ([`crate::dot`]). Training lives in the pipeline crate; this module
//! only reads, checks, applies and writes artifacts, so the sink needs no linear-algebra or
//! autodiff code to serve one.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::OnceLock;

use safetensors::tensor::{Dtype, SafeTensors, TensorView};
use serde::{Deserialize, Serialize};

use crate::int8::Int8Matrix;
use crate::vector::dot;

/// What can go wrong with an adapter artifact.
#[derive(Debug, thiserror::Error)]
pub enum AdapterError {
    /// The file could not be read or written.
    #[error("{op} adapter {path}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The file is not a valid adapter (truncated, checksum mismatch, missing tensor, ...).
    #[error("adapter {path} is invalid: {reason}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What check failed.
        reason: String,
    },
    /// No adapter of that name (or none for that pair of versions).
    #[error("no adapter {name} in {dir}")]
    NotFound {
        /// What was asked for.
        name: String,
        /// Where it was looked for.
        dir: PathBuf,
    },
    /// A name that is not `<from>_to_<to>.<kind>.v<N>`.
    #[error(
        "{0:?} is not an adapter name (want <new>_to_<old>.<kind>.v<N>, e.g. mpnet-base-v2@1_to_minilm-l6-v2@1.procrustes.v1)"
    )]
    BadName(String),
    /// The query vector does not fit the adapter.
    #[error("adapter {name} maps {expected}-d vectors of {new_model}; got {got}-d")]
    Dimension {
        /// The adapter.
        name: String,
        /// Its source model.
        new_model: String,
        /// Its input dimension.
        expected: usize,
        /// The vector's length.
        got: usize,
    },
    /// The mapped vector is not finite or is zero.
    #[error("adapter {name} produced a vector that cannot be normalized")]
    Degenerate {
        /// The adapter.
        name: String,
    },
}

/// Adapter kinds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AdapterKind {
    /// Orthogonal Procrustes (with scale and translation).
    Procrustes,
    /// Low-rank affine map.
    Affine,
    /// Procrustes plus a residual MLP.
    Mlp,
}

impl AdapterKind {
    /// Its name in files and on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            AdapterKind::Procrustes => "procrustes",
            AdapterKind::Affine => "affine",
            AdapterKind::Mlp => "mlp",
        }
    }
}

impl fmt::Display for AdapterKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for AdapterKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "procrustes" => Ok(AdapterKind::Procrustes),
            "affine" => Ok(AdapterKind::Affine),
            "mlp" => Ok(AdapterKind::Mlp),
            other => Err(format!(
                "unknown adapter kind {other:?} (procrustes, affine, mlp)"
            )),
        }
    }
}

/// An adapter's identity: `<new>_to_<old>.<kind>.v<N>`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AdapterName {
    /// The new model (`id@version`) whose vectors go in.
    pub new: String,
    /// The old model (`id@version`) whose space they come out in.
    pub old: String,
    /// The kind.
    pub kind: &'static str,
    /// Artifact version, from 1, per (from, to, kind).
    pub version: u32,
}

impl AdapterName {
    /// The file an adapter of this name has in `dir`.
    pub fn path_in(&self, dir: &Path) -> PathBuf {
        dir.join(format!("{self}.safetensors"))
    }
}

impl fmt::Display for AdapterName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}_to_{}.{}.v{}",
            self.new, self.old, self.kind, self.version
        )
    }
}

impl FromStr for AdapterName {
    type Err = AdapterError;
    fn from_str(s: &str) -> Result<Self, AdapterError> {
        let bad = || AdapterError::BadName(s.to_string());
        let (pair, rest) = s.split_once('.').ok_or_else(bad)?;
        let (new, old) = pair.split_once("_to_").ok_or_else(bad)?;
        let (kind, version) = rest.split_once(".v").ok_or_else(bad)?;
        let kind = kind.parse::<AdapterKind>().map_err(|_| bad())?.as_str();
        let version = version.parse::<u32>().map_err(|_| bad())?;
        let valid = |m: &str| {
            m.split_once('@').is_some_and(|(id, v)| {
                !id.is_empty()
                    && v.parse::<u32>().is_ok()
                    && id
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
            })
        };
        if !valid(new) || !valid(old) || version == 0 {
            return Err(bad());
        }
        Ok(AdapterName {
            new: new.to_string(),
            old: old.to_string(),
            kind,
            version,
        })
    }
}

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

/// A row-major f32 matrix, one row per output.
#[derive(Debug, Clone, PartialEq)]
pub struct Matrix {
    /// Rows (outputs).
    pub rows: usize,
    /// Columns (inputs).
    pub cols: usize,
    /// `rows × cols` values.
    pub data: Vec<f32>,
}

impl Matrix {
    /// A matrix from its values; `data.len()` must be `rows × cols`.
    pub fn new(rows: usize, cols: usize, data: Vec<f32>) -> Self {
        assert_eq!(data.len(), rows * cols, "matrix data has the wrong length");
        Matrix { rows, cols, data }
    }

    /// `out = self · x`.
    fn apply(&self, x: &[f32], out: &mut Vec<f32>) {
        out.clear();
        out.extend(self.data.chunks_exact(self.cols).map(|row| dot(row, x)));
    }
}

/// The maps an artifact holds.
#[derive(Debug, Clone, PartialEq)]
pub enum Layers {
    /// `w x + b`.
    Linear {
        /// out × in.
        w: Matrix,
        /// out.
        b: Vec<f32>,
    },
    /// `v (u x) + b`.
    LowRank {
        /// r × in.
        u: Matrix,
        /// out × r.
        v: Matrix,
        /// out.
        b: Vec<f32>,
    },
    /// `w x + b + w2 relu(w1 x + b1) + b2`.
    Residual {
        /// out × in.
        w: Matrix,
        /// out (the residual's output bias folded in).
        b: Vec<f32>,
        /// hidden × in.
        w1: Matrix,
        /// hidden.
        b1: Vec<f32>,
        /// out × hidden.
        w2: Matrix,
    },
}

/// A loaded adapter.
///
/// [`Adapter::apply`] is the serving path: int8 products ([`crate::int8`], quantized on
/// first use), a few microseconds per query and the same result on every CPU;
/// [`Adapter::apply_exact`] is the f32 map, for fitting and for comparison.
#[derive(Debug, Clone)]
pub struct Adapter {
    /// Its metadata.
    pub meta: AdapterMeta,
    /// Its maps (private: the int8 form is derived from them once).
    layers: Layers,
    /// The matrices of `layers`, quantized, in [`Layers::matrices`]' order.
    int8: OnceLock<Vec<Int8Matrix>>,
}

impl PartialEq for Adapter {
    fn eq(&self, other: &Self) -> bool {
        self.meta == other.meta && self.layers == other.layers
    }
}

impl Layers {
    /// Its matrices: `[w]`, `[u, v]` or `[w, w1, w2]`.
    fn matrices(&self) -> Vec<&Matrix> {
        match self {
            Layers::Linear { w, .. } => vec![w],
            Layers::LowRank { u, v, .. } => vec![u, v],
            Layers::Residual { w, w1, w2, .. } => vec![w, w1, w2],
        }
    }
}

const META_KEY: &str = "embedstream.adapter";
const CRC_KEY: &str = "embedstream.crc32";

impl Adapter {
    /// An adapter of these maps (checked by [`Adapter::validate`] when saved or loaded).
    pub fn new(meta: AdapterMeta, layers: Layers) -> Self {
        Adapter {
            meta,
            layers,
            int8: OnceLock::new(),
        }
    }

    /// Its maps.
    pub fn layers(&self) -> &Layers {
        &self.layers
    }

    /// Its maps, taken out.
    pub fn into_layers(self) -> Layers {
        self.layers
    }

    /// Checks that the layers' shapes agree with the metadata's dimensions.
    pub fn validate(&self) -> Result<(), String> {
        let (i, o) = (self.meta.in_dim, self.meta.out_dim);
        let shape = |m: &Matrix, r: usize, c: usize, n: &str| {
            if m.rows == r && m.cols == c {
                Ok(())
            } else {
                Err(format!("{n} is {}×{}, want {r}×{c}", m.rows, m.cols))
            }
        };
        let len = |v: &[f32], n: usize, name: &str| {
            if v.len() == n {
                Ok(())
            } else {
                Err(format!("{name} has {} values, want {n}", v.len()))
            }
        };
        match &self.layers {
            Layers::Linear { w, b } => {
                shape(w, o, i, "w")?;
                len(b, o, "b")
            }
            Layers::LowRank { u, v, b } => {
                shape(u, u.rows, i, "u")?;
                shape(v, o, u.rows, "v")?;
                len(b, o, "b")
            }
            Layers::Residual { w, b, w1, b1, w2 } => {
                shape(w, o, i, "w")?;
                len(b, o, "b")?;
                shape(w1, w1.rows, i, "w1")?;
                len(b1, w1.rows, "b1")?;
                shape(w2, o, w1.rows, "w2")
            }
        }?;
        let finite = |m: &[f32]| m.iter().all(|x| x.is_finite());
        let all_finite = match &self.layers {
            Layers::Linear { w, b } => finite(&w.data) && finite(b),
            Layers::LowRank { u, v, b } => finite(&u.data) && finite(&v.data) && finite(b),
            Layers::Residual { w, b, w1, b1, w2 } => {
                finite(&w.data) && finite(b) && finite(&w1.data) && finite(b1) && finite(&w2.data)
            }
        };
        if all_finite {
            Ok(())
        } else {
            Err("a weight is NaN or infinite".into())
        }
    }

    /// Maps one new-model vector into the old space and L2-normalizes it: the serving path,
    /// int8 products (cosine ≥ 0.9989 to [`Adapter::apply_exact`] on the golden queries,
    /// ≥ 0.9998 for Procrustes: `adapter eval` measures it). An input the int8 path
    /// cannot quantize (not finite, all zero) goes through the f32 map, which reports it.
    pub fn apply(&self, x: &[f32]) -> Result<Vec<f32>, AdapterError> {
        self.check_input(x)?;
        let int8 = self.int8.get_or_init(|| {
            self.layers
                .matrices()
                .into_iter()
                .map(Int8Matrix::new)
                .collect()
        });
        match self.forward(x, |i, x, out| int8[i].apply(x, out)) {
            Some(out) => self.normalized(out),
            None => self.apply_exact(x),
        }
    }

    /// [`Adapter::apply`] with f32 products throughout (what the adapter was fitted as).
    pub fn apply_exact(&self, x: &[f32]) -> Result<Vec<f32>, AdapterError> {
        self.check_input(x)?;
        let matrices = self.layers.matrices();
        let out = self
            .forward(x, |i, x, out| {
                matrices[i].apply(x, out);
                Some(())
            })
            .expect("f32 products always succeed");
        self.normalized(out)
    }

    fn check_input(&self, x: &[f32]) -> Result<(), AdapterError> {
        if x.len() == self.meta.in_dim {
            Ok(())
        } else {
            Err(AdapterError::Dimension {
                name: self.meta.name.clone(),
                new_model: self.meta.new_model.clone(),
                expected: self.meta.in_dim,
                got: x.len(),
            })
        }
    }

    /// The map before normalization, with `product(i, x, out)` computing `out = M_i x` for
    /// the i-th of [`Layers::matrices`]; `None` if a product gives up.
    fn forward(
        &self,
        x: &[f32],
        product: impl Fn(usize, &[f32], &mut Vec<f32>) -> Option<()>,
    ) -> Option<Vec<f32>> {
        let add = |out: &mut Vec<f32>, b: &[f32]| {
            for (o, b) in out.iter_mut().zip(b) {
                *o += b;
            }
        };
        let mut out = Vec::with_capacity(self.meta.out_dim);
        match &self.layers {
            Layers::Linear { b, .. } => {
                product(0, x, &mut out)?;
                add(&mut out, b);
            }
            Layers::LowRank { u, b, .. } => {
                let mut mid = Vec::with_capacity(u.rows);
                product(0, x, &mut mid)?;
                product(1, &mid, &mut out)?;
                add(&mut out, b);
            }
            Layers::Residual { w1, b, b1, .. } => {
                let mut hidden = Vec::with_capacity(w1.rows);
                product(1, x, &mut hidden)?;
                add(&mut hidden, b1);
                for h in &mut hidden {
                    *h = h.max(0.0);
                }
                product(0, x, &mut out)?;
                add(&mut out, b);
                let mut residual = Vec::with_capacity(out.len());
                product(2, &hidden, &mut residual)?;
                add(&mut out, &residual);
            }
        }
        Some(out)
    }

    fn normalized(&self, mut out: Vec<f32>) -> Result<Vec<f32>, AdapterError> {
        let norm = f64::from(dot(&out, &out)).sqrt();
        if !(norm.is_finite() && norm > 1e-12) {
            return Err(AdapterError::Degenerate {
                name: self.meta.name.clone(),
            });
        }
        let inv = (1.0 / norm) as f32;
        for v in &mut out {
            *v *= inv;
        }
        Ok(out)
    }

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

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(kind: AdapterKind, in_dim: usize, out_dim: usize) -> AdapterMeta {
        let name = AdapterName {
            new: "new@1".into(),
            old: "old@1".into(),
            kind: kind.as_str(),
            version: 1,
        };
        AdapterMeta {
            pairs: 10,
            holdout_pairs: 2,
            train_cosine: 0.9,
            holdout_cosine: Some(0.8),
            ..AdapterMeta::new(&name, in_dim, out_dim, "test".into())
        }
    }

    fn m(rows: usize, cols: usize, seed: f32) -> Matrix {
        Matrix::new(
            rows,
            cols,
            (0..rows * cols).map(|i| (i as f32 * seed).sin()).collect(),
        )
    }

    fn naive(w: &Matrix, x: &[f32]) -> Vec<f32> {
        w.data
            .chunks_exact(w.cols)
            .map(|r| r.iter().zip(x).map(|(a, b)| a * b).sum())
            .collect()
    }

    fn unit(v: Vec<f32>) -> Vec<f32> {
        let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
        v.into_iter().map(|x| x / n).collect()
    }

    #[test]
    fn names_round_trip_and_reject_garbage() {
        let n: AdapterName = "mpnet-base-v2@1_to_minilm-l6-v2@1.procrustes.v3"
            .parse()
            .unwrap();
        assert_eq!(n.new, "mpnet-base-v2@1");
        assert_eq!(n.old, "minilm-l6-v2@1");
        assert_eq!(n.kind, "procrustes");
        assert_eq!(n.version, 3);
        assert_eq!(
            n.to_string(),
            "mpnet-base-v2@1_to_minilm-l6-v2@1.procrustes.v3"
        );
        for bad in [
            "",
            "a@1_to_b@1.procrustes",
            "a@1_to_b@1.linear.v1",
            "a_to_b@1.mlp.v1",
            "a@1_to_b@1.mlp.v0",
            "a@1-b@1.mlp.v1",
            "../x@1_to_b@1.mlp.v1",
        ] {
            assert!(bad.parse::<AdapterName>().is_err(), "{bad}");
        }
    }

    #[test]
    fn every_kind_applies_as_its_formula_and_survives_a_round_trip() {
        let dir = std::env::temp_dir().join(format!("adapter-test-{}", std::process::id()));
        let x: Vec<f32> = (0..6).map(|i| (i as f32 * 0.9).cos()).collect();
        let cases = [
            Adapter::new(
                meta(AdapterKind::Procrustes, 6, 4),
                Layers::Linear {
                    w: m(4, 6, 0.3),
                    b: vec![0.1, 0.2, 0.3, 0.4],
                },
            ),
            Adapter::new(
                meta(AdapterKind::Affine, 6, 4),
                Layers::LowRank {
                    u: m(2, 6, 0.7),
                    v: m(4, 2, 0.5),
                    b: vec![0.0, 1.0, 0.0, -1.0],
                },
            ),
            Adapter::new(
                meta(AdapterKind::Mlp, 6, 4),
                Layers::Residual {
                    w: m(4, 6, 0.3),
                    b: vec![0.1; 4],
                    w1: m(3, 6, 1.1),
                    b1: vec![-0.2, 0.0, 0.2],
                    w2: m(4, 3, 0.9),
                },
            ),
        ];
        for adapter in cases {
            let want = match adapter.layers() {
                Layers::Linear { w, b } => naive(w, &x).iter().zip(b).map(|(a, b)| a + b).collect(),
                Layers::LowRank { u, v, b } => naive(v, &naive(u, &x))
                    .iter()
                    .zip(b)
                    .map(|(a, b)| a + b)
                    .collect(),
                Layers::Residual { w, b, w1, b1, w2 } => {
                    let h: Vec<f32> = naive(w1, &x)
                        .iter()
                        .zip(b1)
                        .map(|(a, b)| (a + b).max(0.0))
                        .collect();
                    let r = naive(w2, &h);
                    naive(w, &x)
                        .iter()
                        .zip(b)
                        .zip(r)
                        .map(|((a, b), r)| a + b + r)
                        .collect::<Vec<f32>>()
                }
            };
            let want = unit(want);
            let got = adapter.apply_exact(&x).unwrap();
            for (g, w) in got.iter().zip(&want) {
                assert!(
                    (g - w).abs() < 1e-5,
                    "{:?}: {got:?} vs {want:?}",
                    adapter.meta.kind
                );
            }
            let served = adapter.apply(&x).unwrap();
            let cosine: f32 = served.iter().zip(&want).map(|(a, b)| a * b).sum();
            assert!(
                cosine > 0.999,
                "{:?}: int8 {served:?} vs {want:?}",
                adapter.meta.kind
            );
            let path = AdapterName::from_str(&adapter.meta.name)
                .unwrap()
                .path_in(&dir);
            adapter.save(&path).unwrap();
            assert_eq!(Adapter::load(&path).unwrap(), adapter);
            assert_eq!(resolve(&dir, &adapter.meta.name).unwrap(), path);
        }
        assert_eq!(list(&dir).unwrap().len(), 3);
        assert_eq!(
            next_name(&dir, "new@1", "old@1", AdapterKind::Mlp)
                .unwrap()
                .version,
            2
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn corrupt_files_wrong_dimensions_and_unknown_names_are_refused() {
        let dir = std::env::temp_dir().join(format!("adapter-bad-{}", std::process::id()));
        let adapter = Adapter::new(
            meta(AdapterKind::Procrustes, 6, 4),
            Layers::Linear {
                w: m(4, 6, 0.3),
                b: vec![0.0; 4],
            },
        );
        assert!(matches!(
            adapter.apply(&[1.0; 5]),
            Err(AdapterError::Dimension {
                expected: 6,
                got: 5,
                ..
            })
        ));
        let path = dir.join(format!("{}.safetensors", adapter.meta.name));
        adapter.save(&path).unwrap();
        let mut bytes = std::fs::read(&path).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 0x40;
        std::fs::write(&path, &bytes).unwrap();
        let err = Adapter::load(&path).unwrap_err().to_string();
        assert!(err.contains("checksum"), "{err}");
        std::fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();
        assert!(matches!(
            Adapter::load(&path),
            Err(AdapterError::Invalid { .. })
        ));
        assert!(matches!(
            resolve(&dir, "new@1_to_old@1.affine.v9"),
            Err(AdapterError::NotFound { .. })
        ));
        let mut layers = adapter.layers().clone();
        if let Layers::Linear { w, .. } = &mut layers {
            w.data[3] = f32::NAN;
        }
        let nan = Adapter::new(adapter.meta.clone(), layers);
        assert!(nan.save(&path).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
