//! The bridge from `instant-distance`: builds its HNSW graph and copies it into the crate's
//! own layout through the crate's `with-serde` derive and bincode, checking every build.

use std::sync::Arc;

use instant_distance::{Builder, Heuristic, Point};
use serde::de::{self, Deserializer, SeqAccess, Visitor};
use serde::{Deserialize, Serialize, Serializer};

use super::layout::{Built, Graph, INVALID};
use crate::config::MainConfig;
use crate::config::{M, M0};
use crate::error::{Error, GraphBridgeError, Result};
use crate::vector::dot;

#[derive(Clone)]
pub(super) struct BuildPoint(pub(super) Arc<[f32]>);

impl Point for BuildPoint {
    fn distance(&self, other: &Self) -> f32 {
        crate::yielding::yield_to_queries();
        1.0 - dot(&self.0, &other.0)
    }
}

// Only the graph crosses the bridge; the vectors are copied directly.
impl Serialize for BuildPoint {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_unit()
    }
}

/// `HnswMap<BuildPoint, u32>` as `instant-distance` 0.6.1 serializes it.
#[derive(Deserialize)]
struct MapMirror {
    hnsw: HnswMirror,
    values: Vec<u32>,
}

#[derive(Deserialize)]
struct HnswMirror {
    #[allow(dead_code)]
    ef_search: usize,
    points: Vec<()>,
    zero: Vec<Zero>,
    layers: Vec<Vec<Upper>>,
}

#[derive(Deserialize, Clone, Copy)]
struct Pid(u32);

#[derive(Deserialize)]
struct Upper([Pid; M]);

struct Zero([u32; M0]);

impl<'de> Deserialize<'de> for Zero {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Outer;
        struct Inner;
        impl<'de> Visitor<'de> for Inner {
            type Value = Zero;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                write!(f, "{M0} point ids")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Zero, A::Error> {
                let mut out = [INVALID; M0];
                for (i, slot) in out.iter_mut().enumerate() {
                    *slot = seq
                        .next_element::<Pid>()?
                        .ok_or_else(|| de::Error::invalid_length(i, &self))?
                        .0;
                }
                Ok(Zero(out))
            }
        }
        impl<'de> Visitor<'de> for Outer {
            type Value = Zero;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                write!(f, "a ZeroNode")
            }
            fn visit_newtype_struct<D: Deserializer<'de>>(self, d: D) -> Result<Zero, D::Error> {
                d.deserialize_tuple(M0, Inner)
            }
        }
        d.deserialize_newtype_struct("ZeroNode", Outer)
    }
}

/// Builds the graph of `vectors` (`n * dim`, normalized) on the current rayon pool.
pub(crate) fn build(vectors: &[f32], dim: usize, config: &MainConfig) -> Result<Built> {
    let n = vectors.len() / dim;
    let points: Vec<BuildPoint> = vectors
        .chunks_exact(dim)
        .map(|v| BuildPoint(Arc::from(v)))
        .collect();
    let map = Builder::default()
        .seed(config.seed)
        .ef_construction(config.ef_construction)
        .ef_search(config.ef_search)
        .select_heuristic(Some(Heuristic {
            extend_candidates: false,
            keep_pruned: config.keep_pruned,
        }))
        .build(points, (0..n as u32).collect());
    let bridge = |source: GraphBridgeError| Error::GraphBridge { source };
    let bytes = bincode::serde::encode_to_vec(&map, bincode::config::standard())
        .map_err(|e| bridge(e.into()))?;
    let (mirror, used): (MapMirror, usize) =
        bincode::serde::decode_from_slice(&bytes, bincode::config::standard())
            .map_err(|e| bridge(e.into()))?;
    let layout = |what| Err(bridge(GraphBridgeError::Layout(what)));
    if used != bytes.len() {
        return layout("trailing bytes");
    }
    let MapMirror { hnsw, values } = mirror;
    if hnsw.points.len() != n || hnsw.zero.len() != n || values.len() != n {
        return layout("point, node and value counts differ");
    }
    let mut graph_vectors = Vec::with_capacity(n * dim);
    for (i, (pid, p)) in map.iter().enumerate() {
        if pid.into_inner() as usize != i {
            return layout("points are not in pid order");
        }
        graph_vectors.extend_from_slice(&p.0);
    }
    drop(map);
    let zero: Vec<u32> = hnsw.zero.iter().flat_map(|z| z.0).collect();
    let layers: Vec<Vec<u32>> = hnsw
        .layers
        .iter()
        .map(|l| l.iter().flat_map(|u| u.0.map(|p| p.0)).collect())
        .collect();
    let mut graph = Graph::new(dim, graph_vectors, zero, layers);
    if let Err(what) = graph.check() {
        return layout(what);
    }
    if let Some(refine) = &config.refine {
        graph.refine(refine.ef, refine.alpha, refine.degree, refine.max_links);
    } else if config.reverse_links {
        graph.add_reverse_links();
    }
    let mut seen = vec![false; n];
    for &v in &values {
        match seen.get_mut(v as usize) {
            Some(s) if !*s => *s = true,
            _ => return layout("values are not a permutation"),
        }
    }
    Ok(Built {
        graph,
        input_row: values,
    })
}
