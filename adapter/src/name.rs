//! The name grammar: `<new>_to_<old>.<kind>.v<N>`, both models as `id@version`.

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::AdapterError;

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
