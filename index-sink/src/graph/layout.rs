//! The graph's layout: vectors in one array of `f32`, neighbour lists in arrays of `u32`, by
//! point id; each array owned or mapped from a segment file (`store.rs`).

use crate::config::{M, M0};
use crate::error::Result;
use crate::sq8::Codes;
use crate::store::Store;

pub(super) const INVALID: u32 = u32::MAX;

/// A graph over `n` points; point ids (`pid`) are 0..n in the builder's order.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Graph {
    pub(crate) dim: usize,
    /// `n * dim`, by pid.
    pub(crate) vectors: Store<f32>,
    /// `n * M0` neighbour ids, `u32::MAX`-terminated.
    pub(crate) zero: Store<u32>,
    /// Upper layers, lowest first; layer `i` holds nodes `0..len/M` with `M` links each.
    pub(crate) layers: Vec<Store<u32>>,
    /// `vectors` in 8 bits, for the traversal (see `sq8.rs`).
    pub(super) codes: Codes,
}

/// The build's result: the graph and, for each pid, the input row it came from.
#[derive(Debug)]
pub(crate) struct Built {
    pub(crate) graph: Graph,
    pub(crate) input_row: Vec<u32>,
}

impl Graph {
    pub(crate) fn new(
        dim: usize,
        vectors: Vec<f32>,
        zero: Vec<u32>,
        layers: Vec<Vec<u32>>,
    ) -> Self {
        let codes = Codes::new(&vectors, dim);
        Self {
            dim,
            vectors: vectors.into(),
            zero: zero.into(),
            layers: layers.into_iter().map(Store::from).collect(),
            codes,
        }
    }

    /// A graph whose arrays are already laid out (read back from a segment file).
    pub(crate) fn from_parts(
        dim: usize,
        vectors: Store<f32>,
        zero: Store<u32>,
        layers: Vec<Store<u32>>,
        codes: Codes,
    ) -> Self {
        Self {
            dim,
            vectors,
            zero,
            layers,
            codes,
        }
    }

    /// The 8-bit copies of the vectors.
    pub(crate) fn codes(&self) -> &Codes {
        &self.codes
    }

    /// Whether the vectors live in a mapped file.
    #[cfg(test)]
    pub(crate) fn is_mapped(&self) -> bool {
        self.vectors.is_mapped()
    }

    pub(crate) fn len(&self) -> usize {
        self.zero.len() / M0
    }

    pub(crate) fn vector(&self, pid: u32) -> &[f32] {
        let i = pid as usize * self.dim;
        &self.vectors[i..i + self.dim]
    }

    /// Internal consistency, used after the bridge and after reading a snapshot.
    pub(crate) fn check(&self) -> Result<(), &'static str> {
        let n = self.len();
        if !self.zero.len().is_multiple_of(M0) || self.vectors.len() != n * self.dim {
            return Err("sizes of vectors and layer 0 differ");
        }
        let mut below = n;
        for layer in &self.layers {
            if !layer.len().is_multiple_of(M) || layer.len() / M > below || layer.is_empty() {
                return Err("upper layer larger than the one below");
            }
            below = layer.len() / M;
        }
        let ok = |ids: &[u32], n: usize| ids.iter().all(|&p| p == INVALID || (p as usize) < n);
        if !ok(&self.zero, n) || !self.layers.iter().all(|l| ok(l, n)) {
            return Err("neighbour id out of range");
        }
        Ok(())
    }
}
