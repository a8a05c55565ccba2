//! The HNSW graph of a main part.
//!
//! Built by `instant-distance` (M = 32, its fixed value; `efConstruction`, the layer seed and
//! whether pruned candidates top up the lists from config), then copied into this crate's own
//! flat layout: vectors in one `Vec<f32>`, neighbour lists in `Vec<u32>`. The copy is needed
//! because `instant-distance` 0.6.1 fixes `ef` at build time and keeps the graph private;
//! owning the layout gives us a per-query `ef` (each consumer's profile), a search that can
//! widen itself when tombstones hide results, and a graph we can write to and read from a
//! snapshot without rebuilding (a rebuild of 5k × 384 takes seconds; reading it back,
//! milliseconds). The bridge goes through the crate's `with-serde` derive and bincode, and is
//! checked on every build: a layout that does not decode or does not add up is an error, never
//! a silently wrong graph. The search follows the crate's algorithm step for step (same entry
//! point, layers, link counts and candidate order), so for the same `ef` on the same graph it
//! returns what the crate would (a test checks it with `reverse_links` off, see
//! `add_reverse_links`); it computes the distances to one node's unvisited links as one batch
//! (one SIMD dispatch).
//!
//! `keep_pruned` is off by default: `instant-distance`'s own default tops every layer-0 list
//! up to 2M with the candidates its heuristic rejected, and re-runs the O(M²) heuristic over a
//! full list for every neighbour of every insert. On 30k real MiniLM vectors that build took
//! 5x longer and searches touched ~3x more vectors for +0.02 recall@10 at the same `ef`
//! (loadtest/reports/index.md).

use std::cmp::{Ordering, Reverse};
use std::collections::BinaryHeap;
use std::sync::Arc;

use instant_distance::{Builder, Heuristic, Point};
use serde::de::{self, Deserializer, SeqAccess, Visitor};
use serde::{Deserialize, Serialize, Serializer};

use crate::config::MainConfig;
use crate::error::{Error, GraphBridgeError, Result};
use crate::vector::{dot, dots};

/// Links per node in upper layers (`M` of instant-distance 0.6.1).
pub(crate) const M: usize = 32;
/// Links per node in layer 0 (`2 M`).
pub(crate) const M0: usize = 2 * M;
const INVALID: u32 = u32::MAX;

/// A graph over `n` points; point ids (`pid`) are 0..n in the builder's order.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Graph {
    pub(crate) dim: usize,
    /// `n * dim`, by pid.
    pub(crate) vectors: Vec<f32>,
    /// `n * M0` neighbour ids, `u32::MAX`-terminated.
    pub(crate) zero: Vec<u32>,
    /// Upper layers, lowest first; layer `i` holds nodes `0..len/M` with `M` links each.
    pub(crate) layers: Vec<Vec<u32>>,
}

/// The build's result: the graph and, for each pid, the input row it came from.
#[derive(Debug)]
pub(crate) struct Built {
    pub(crate) graph: Graph,
    pub(crate) input_row: Vec<u32>,
}

#[derive(Clone)]
struct BuildPoint(Arc<[f32]>);

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
    let mut graph = Graph {
        dim,
        vectors: graph_vectors,
        zero,
        layers,
    };
    if let Err(what) = graph.check() {
        return layout(what);
    }
    if config.reverse_links {
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

/// A candidate: distance (1 - dot) and pid, ordered by distance then pid.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Cand {
    pub(crate) dist: f32,
    pub(crate) pid: u32,
}

impl PartialEq for Cand {
    fn eq(&self, o: &Self) -> bool {
        self.cmp(o) == Ordering::Equal
    }
}
impl Eq for Cand {}
impl PartialOrd for Cand {
    fn partial_cmp(&self, o: &Self) -> Option<Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Cand {
    fn cmp(&self, o: &Self) -> Ordering {
        self.dist.total_cmp(&o.dist).then(self.pid.cmp(&o.pid))
    }
}

/// Reusable per-thread search state.
#[derive(Debug, Default)]
pub(crate) struct Scratch {
    visited: Vec<u32>,
    generation: u32,
    candidates: BinaryHeap<Reverse<Cand>>,
    nearest: Vec<Cand>,
    ef: usize,
    batch: Vec<u32>,
    dists: Vec<f32>,
}

impl Scratch {
    fn reset(&mut self, n: usize) {
        // A search bumps the generation once per layer; leave room for any layer count.
        // One scratch serves every graph its thread searches (a query visits all shards):
        // grow only, so alternating between graphs of different sizes never reallocates
        // and re-zeroes the array. Marks left by other searches are older generations.
        if self.visited.len() < n {
            self.visited.resize(n, 0);
        }
        if self.generation > u32::MAX - 1024 {
            self.visited.fill(0);
            self.generation = 0;
        }
        self.generation += 1;
        self.candidates.clear();
        self.nearest.clear();
    }

    fn visit(&mut self, pid: u32) -> bool {
        let slot = &mut self.visited[pid as usize];
        if *slot == self.generation {
            false
        } else {
            *slot = self.generation;
            true
        }
    }

    fn push(&mut self, pid: u32, query: &[f32], graph: &Graph) {
        if !self.visit(pid) {
            return;
        }
        self.offer(Cand {
            dist: 1.0 - dot(query, graph.vector(pid)),
            pid,
        });
    }

    /// `push` for every link of a node at once: the unvisited ones are marked, their
    /// distances computed in one batch, then offered in link order (what pushing them one
    /// by one does).
    fn push_links(&mut self, links: &[u32], query: &[f32], graph: &Graph) {
        let (mut batch, mut dists) = (
            std::mem::take(&mut self.batch),
            std::mem::take(&mut self.dists),
        );
        batch.clear();
        batch.extend(links.iter().copied().filter(|&pid| self.visit(pid)));
        dots(query, &graph.vectors, graph.dim, &batch, &mut dists);
        for (&pid, &d) in batch.iter().zip(&dists) {
            self.offer(Cand { dist: 1.0 - d, pid });
        }
        (self.batch, self.dists) = (batch, dists);
    }

    fn offer(&mut self, c: Cand) {
        let idx = match self.nearest.binary_search(&c) {
            Err(idx) if idx < self.ef => idx,
            _ => return,
        };
        self.nearest.insert(idx, c);
        self.candidates.push(Reverse(c));
    }

    fn cull(&mut self) {
        self.candidates.clear();
        self.generation += 1;
        for i in 0..self.nearest.len() {
            let c = self.nearest[i];
            self.candidates.push(Reverse(c));
            self.visited[c.pid as usize] = self.generation;
        }
    }
}

impl Graph {
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

    /// Makes layer-0 links two-way where there is room: for each link u → v, u is appended
    /// to v's list unless it is there or the list is full (2M). The heuristic leaves most
    /// lists far from full, and a node that many others point to but that points to few
    /// is hard to leave; hnswlib gets the same effect by appending to a neighbour's list
    /// until it is full and pruning only then. Appended links come after the heuristic's
    /// own, in pid order; no distance is computed.
    fn add_reverse_links(&mut self) {
        let n = self.len();
        let original = self.zero.clone();
        let mut len: Vec<usize> = original
            .chunks_exact(M0)
            .map(|l| l.iter().position(|&p| p == INVALID).unwrap_or(M0))
            .collect();
        for (u, list) in original.chunks_exact(M0).enumerate() {
            for &v in list.iter().take_while(|&&p| p != INVALID) {
                let (v, u) = (v as usize, u as u32);
                if len[v] == M0 || self.zero[v * M0..v * M0 + len[v]].contains(&u) {
                    continue;
                }
                self.zero[v * M0 + len[v]] = u;
                len[v] += 1;
            }
        }
        debug_assert!(len.len() == n && self.check().is_ok());
    }

    fn links(&self, layer: usize, pid: u32) -> &[u32] {
        let (nodes, width) = match layer {
            0 => (&self.zero[..], M0),
            l => (&self.layers[l - 1][..], M),
        };
        let i = pid as usize * width;
        let all = &nodes[i..i + width];
        let end = all.iter().position(|&p| p == INVALID).unwrap_or(width);
        &all[..end]
    }

    /// The `ef` nearest points found, nearest first. `query` must be normalized.
    pub(crate) fn search<'s>(&self, query: &[f32], ef: usize, s: &'s mut Scratch) -> &'s [Cand] {
        let n = self.len();
        s.reset(n);
        if n == 0 {
            return &s.nearest;
        }
        s.ef = 1;
        s.push(0, query, self);
        for layer in (0..=self.layers.len()).rev() {
            s.ef = if layer == 0 { ef.max(1) } else { 1 };
            while let Some(Reverse(c)) = s.candidates.pop() {
                if let Some(far) = s.nearest.last()
                    && c.dist > far.dist
                {
                    break;
                }
                s.push_links(self.links(layer, c.pid), query, self);
                s.nearest.truncate(s.ef);
            }
            if layer != 0 {
                s.cull();
            }
        }
        &s.nearest
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn random_unit(n: usize, dim: usize, seed: u64) -> Vec<f32> {
        let mut s = seed | 1;
        let mut out = Vec::with_capacity(n * dim);
        for _ in 0..n {
            let v: Vec<f32> = (0..dim)
                .map(|_| {
                    s ^= s << 13;
                    s ^= s >> 7;
                    s ^= s << 17;
                    (s >> 40) as f32 / (1u64 << 24) as f32 - 0.5
                })
                .collect();
            out.extend(crate::vector::normalized(&v, dim).unwrap());
        }
        out
    }

    #[test]
    fn own_search_returns_what_instant_distance_returns() {
        let (n, dim) = (600, 24);
        let data = random_unit(n, dim, 7);
        let config = MainConfig {
            ef_construction: 40,
            ef_search: 30,
            seed: 3,
            keep_pruned: false,
            // The crate's graph exactly, to compare searches.
            reverse_links: false,
        };
        // One thread: the build is deterministic, so both copies are the same graph.
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(1)
            .build()
            .unwrap();
        let built = pool.install(|| build(&data, dim, &config)).unwrap();
        let points: Vec<BuildPoint> = data
            .chunks_exact(dim)
            .map(|v| BuildPoint(Arc::from(v)))
            .collect();
        let theirs = pool.install(|| {
            Builder::default()
                .seed(config.seed)
                .ef_construction(config.ef_construction)
                .ef_search(config.ef_search)
                .select_heuristic(Some(Heuristic {
                    extend_candidates: false,
                    keep_pruned: config.keep_pruned,
                }))
                .build(points, (0..n as u32).collect::<Vec<_>>())
        });
        let mut scratch = Scratch::default();
        let mut their_search = instant_distance::Search::default();
        for q in random_unit(50, dim, 99).chunks_exact(dim) {
            let ours: Vec<u32> = built
                .graph
                .search(q, config.ef_search, &mut scratch)
                .iter()
                .map(|c| built.input_row[c.pid as usize])
                .collect();
            let want: Vec<u32> = theirs
                .search(&BuildPoint(Arc::from(q)), &mut their_search)
                .map(|item| *item.value)
                .collect();
            assert_eq!(ours, want);
        }
    }

    #[test]
    fn reverse_links_make_layer_zero_two_way_where_there_is_room() {
        let dim = 16;
        let data = random_unit(800, dim, 11);
        let one_way = MainConfig {
            reverse_links: false,
            ..MainConfig::default()
        };
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(1)
            .build()
            .unwrap();
        let plain = pool.install(|| build(&data, dim, &one_way)).unwrap().graph;
        let two_way = pool
            .install(|| build(&data, dim, &MainConfig::default()))
            .unwrap()
            .graph;
        two_way.check().unwrap();
        let n = plain.len() as u32;
        let mut missing_before = 0;
        for u in 0..n {
            // The heuristic's own links stay first and unchanged.
            let before = plain.links(0, u);
            assert_eq!(&two_way.links(0, u)[..before.len()], before);
            for &v in before {
                let back = two_way.links(0, v);
                assert!(
                    back.contains(&u) || back.len() == M0,
                    "{u} -> {v} has no way back"
                );
                missing_before += usize::from(!plain.links(0, v).contains(&u));
            }
        }
        assert!(
            missing_before > 0,
            "the heuristic alone left every link two-way"
        );
    }

    #[test]
    fn wider_ef_finds_more_and_empty_graph_is_fine() {
        let dim = 8;
        let data = random_unit(300, dim, 5);
        let built = build(&data, dim, &MainConfig::default()).unwrap();
        built.graph.check().unwrap();
        let mut s = Scratch::default();
        let q = &data[..dim];
        assert_eq!(built.graph.search(q, 10, &mut s).len(), 10);
        assert_eq!(built.graph.search(q, 300, &mut s).len(), 300);
        let top = built.graph.search(q, 1, &mut s)[0];
        assert_eq!(
            built.input_row[top.pid as usize], 0,
            "a point is its own nearest"
        );
        let empty = build(&[], dim, &MainConfig::default()).unwrap();
        assert!(empty.graph.search(q, 10, &mut s).is_empty());
    }
}
