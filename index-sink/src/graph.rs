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
//! After the copy, a refinement pass re-selects every layer-0 list (`Graph::refine`,
//! DiskANN's robust prune with `alpha` 1.2 over each node's own search results, then links
//! back): instant-distance's heuristic leaves short, local lists that need a wide `ef`. On 60k
//! real MiniLM vectors recall@10 at `ef` 10 went 0.89 → 0.95 for about twice the build time.
//! Queries traverse the graph on 8-bit copies of the vectors (`sq8.rs`) and the caller
//! scores what they return with the f32 vectors; background work searches with f32
//! (`search_exact`).
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
pub(crate) use crate::config::{M, M0};
use crate::error::{Error, GraphBridgeError, Result};
use crate::sq8::{Codes, QueryCodes};
use crate::vector::{dot, dots};

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
    /// `vectors` in 8 bits, for the traversal (see `sq8.rs`).
    codes: Codes,
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
    /// The query in 16 bits, for a quantized traversal.
    query: QueryCodes,
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

    fn push(&mut self, pid: u32, query: &[f32], graph: &Graph, exact: bool) {
        self.push_links(&[pid], query, graph, exact);
    }

    /// `push` for every link of a node at once: the unvisited ones are marked, their
    /// distances computed in one batch, then offered in link order (what pushing them one
    /// by one does).
    fn push_links(&mut self, links: &[u32], query: &[f32], graph: &Graph, exact: bool) {
        let (mut batch, mut dists) = (
            std::mem::take(&mut self.batch),
            std::mem::take(&mut self.dists),
        );
        batch.clear();
        batch.extend(links.iter().copied().filter(|&pid| self.visit(pid)));
        if exact {
            crate::yielding::yield_units(batch.len() as u32);
            dots(query, &graph.vectors, graph.dim, &batch, &mut dists);
            for d in &mut dists {
                *d = 1.0 - *d;
            }
        } else {
            graph.codes.distances(&self.query, &batch, &mut dists);
        }
        for (&pid, &dist) in batch.iter().zip(&dists) {
            self.offer(Cand { dist, pid });
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
    pub(crate) fn new(
        dim: usize,
        vectors: Vec<f32>,
        zero: Vec<u32>,
        layers: Vec<Vec<u32>>,
    ) -> Self {
        let codes = Codes::new(&vectors, dim);
        Self {
            dim,
            vectors,
            zero,
            layers,
            codes,
        }
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

    /// Re-selects every layer-0 list from a wider pool with a relaxed pruning rule
    /// (DiskANN's "robust prune"), then links back. instant-distance's heuristic keeps a
    /// candidate only if it is nearer to the node than to every neighbour already kept
    /// (`alpha` = 1); lists end up short and mostly local, and a search needs a wide `ef`
    /// to get around. Here each node searches the built graph for its own `ef` nearest,
    /// keeps up to `degree` of them (its old links among the pool) with the rule
    /// `alpha · d(kept, c) > d(node, c)` — `alpha` > 1 also keeps some longer links — and
    /// every kept link u → v is then offered back as v → u: appended while v's list has
    /// room, otherwise v's list (its own picks and everything offered) is pruned again with
    /// the same rule down to 2M. Nodes are processed in parallel against the graph as
    /// built, so the result does not depend on thread scheduling.
    fn refine(&mut self, ef: usize, alpha: f32, degree: usize, max_links: usize) {
        use rayon::prelude::*;
        let n = self.len();
        let max_links = max_links.clamp(1, M0);
        let degree = degree.clamp(1, max_links);
        let this = &*self;
        let out: Vec<Vec<u32>> = (0..n as u32)
            .into_par_iter()
            .map_init(
                || (Scratch::default(), Vec::<Cand>::new(), Vec::<f32>::new()),
                |(scratch, pool, dists), p| {
                    let q = this.vector(p);
                    pool.clear();
                    pool.extend(
                        this.search_exact(q, ef.max(degree), scratch)
                            .iter()
                            .filter(|c| c.pid != p),
                    );
                    let old = this.links(0, p);
                    let missing: Vec<u32> = old
                        .iter()
                        .copied()
                        .filter(|&l| !pool.iter().any(|c| c.pid == l))
                        .collect();
                    dots(q, &this.vectors, this.dim, &missing, dists);
                    pool.extend(
                        missing
                            .iter()
                            .zip(dists.iter())
                            .map(|(&pid, &d)| Cand { dist: 1.0 - d, pid }),
                    );
                    pool.sort_unstable();
                    this.robust_prune(pool, alpha, degree, dists)
                },
            )
            .collect();
        let mut incoming: Vec<Vec<u32>> = vec![Vec::new(); n];
        for (u, list) in out.iter().enumerate() {
            for &v in list {
                incoming[v as usize].push(u as u32);
            }
        }
        let lists: Vec<Vec<u32>> = out
            .into_par_iter()
            .zip(incoming.into_par_iter())
            .enumerate()
            .map_init(
                || (Vec::<Cand>::new(), Vec::<f32>::new()),
                |(pool, dists), (p, (mut own, back))| {
                    let extra: Vec<u32> = back.into_iter().filter(|b| !own.contains(b)).collect();
                    if own.len() + extra.len() <= max_links {
                        own.extend(extra);
                        return own;
                    }
                    let q = this.vector(p as u32);
                    own.extend(extra);
                    dots(q, &this.vectors, this.dim, &own, dists);
                    pool.clear();
                    pool.extend(
                        own.iter()
                            .zip(dists.iter())
                            .map(|(&pid, &d)| Cand { dist: 1.0 - d, pid }),
                    );
                    pool.sort_unstable();
                    crate::yielding::yield_units(pool.len() as u32);
                    this.robust_prune(pool, alpha, max_links, dists)
                },
            )
            .collect();
        for (p, list) in lists.iter().enumerate() {
            let slot = &mut self.zero[p * M0..(p + 1) * M0];
            slot.fill(INVALID);
            slot[..list.len()].copy_from_slice(list);
        }
        debug_assert!(self.check().is_ok());
    }

    /// Up to `cap` of `pool` (sorted nearest first): a candidate is kept unless one already
    /// kept is nearer to it, by a factor `alpha`, than the node is.
    fn robust_prune(
        &self,
        pool: &[Cand],
        alpha: f32,
        cap: usize,
        dists: &mut Vec<f32>,
    ) -> Vec<u32> {
        let mut kept: Vec<u32> = Vec::with_capacity(cap);
        for c in pool {
            if kept.len() == cap {
                break;
            }
            dots(self.vector(c.pid), &self.vectors, self.dim, &kept, dists);
            crate::yielding::yield_units(kept.len() as u32);
            if dists.iter().all(|&d| alpha * (1.0 - d) > c.dist) {
                kept.push(c.pid);
            }
        }
        kept
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

    /// The `ef` nearest points found, nearest first, by the 8-bit vectors: their distances
    /// are approximate (the caller scores them with `vector`). `query` must be normalized.
    pub(crate) fn search<'s>(&self, query: &[f32], ef: usize, s: &'s mut Scratch) -> &'s [Cand] {
        Codes::prepare(query, &mut s.query);
        self.search_with(query, ef, s, false)
    }

    /// `search` with f32 distances throughout, pausing while queries run (`yielding.rs`):
    /// for background work (the refinement pass), never for a query.
    pub(crate) fn search_exact<'s>(
        &self,
        query: &[f32],
        ef: usize,
        s: &'s mut Scratch,
    ) -> &'s [Cand] {
        self.search_with(query, ef, s, true)
    }

    fn search_with<'s>(
        &self,
        query: &[f32],
        ef: usize,
        s: &'s mut Scratch,
        exact: bool,
    ) -> &'s [Cand] {
        let n = self.len();
        s.reset(n);
        if n == 0 {
            return &s.nearest;
        }
        s.ef = 1;
        s.push(0, query, self, exact);
        for layer in (0..=self.layers.len()).rev() {
            s.ef = if layer == 0 { ef.max(1) } else { 1 };
            while let Some(Reverse(c)) = s.candidates.pop() {
                if let Some(far) = s.nearest.last()
                    && c.dist > far.dist
                {
                    break;
                }
                s.push_links(self.links(layer, c.pid), query, self, exact);
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
    use crate::config::RefineConfig;

    fn random_unit(n: usize, dim: usize, seed: u64) -> Vec<f32> {
        let mut rng = embedstream_topics::testing::XorShift::new(seed | 1);
        let mut out = Vec::with_capacity(n * dim);
        for _ in 0..n {
            let v = rng.centered_vec(dim);
            out.extend(crate::vector::normalized(&v, dim).unwrap());
        }
        out
    }

    fn one_thread() -> rayon::ThreadPool {
        rayon::ThreadPoolBuilder::new()
            .num_threads(1)
            .build()
            .unwrap()
    }

    fn unrefined() -> MainConfig {
        MainConfig {
            refine: None,
            ..MainConfig::default()
        }
    }

    /// The input vectors in pid order (what recall against `data`'s rows needs).
    fn by_pid(built: &Built, data: &[f32], dim: usize) -> Vec<f32> {
        built
            .input_row
            .iter()
            .flat_map(|&r| data[r as usize * dim..(r as usize + 1) * dim].to_vec())
            .collect()
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
            refine: None,
        };
        // One thread: the build is deterministic, so both copies are the same graph.
        let pool = one_thread();
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
                .search_exact(q, config.ef_search, &mut scratch)
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
            ..unrefined()
        };
        let pool = one_thread();
        let plain = pool.install(|| build(&data, dim, &one_way)).unwrap().graph;
        let two_way = pool
            .install(|| build(&data, dim, &unrefined()))
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

    fn recall_at(graph: &Graph, data: &[f32], queries: &[f32], ef: usize, exact: bool) -> f64 {
        let dim = graph.dim;
        let mut s = Scratch::default();
        let mut found = 0;
        for q in queries.chunks_exact(dim) {
            let mut truth: Vec<Cand> = data
                .chunks_exact(dim)
                .enumerate()
                .map(|(i, v)| Cand {
                    dist: 1.0 - dot(q, v),
                    pid: i as u32,
                })
                .collect();
            truth.sort_unstable();
            let want: Vec<u32> = truth[..10].iter().map(|c| c.pid).collect();
            let got = if exact {
                graph.search_exact(q, ef, &mut s)
            } else {
                graph.search(q, ef, &mut s)
            };
            found += got[..10].iter().filter(|c| want.contains(&c.pid)).count();
        }
        found as f64 / (queries.len() / dim * 10) as f64
    }

    #[test]
    fn refinement_finds_more_at_a_small_ef_and_keeps_lists_valid() {
        let dim = 24;
        let data = random_unit(3000, dim, 21);
        let queries = random_unit(100, dim, 22);
        let one = one_thread();
        let plain = one.install(|| build(&data, dim, &unrefined())).unwrap();
        let by_pid = by_pid(&plain, &data, dim);
        let refine = RefineConfig::default();
        let mut refined = plain.graph.clone();
        one.install(|| refined.refine(refine.ef, refine.alpha, refine.degree, refine.max_links));
        refined.check().unwrap();
        for p in 0..refined.len() as u32 {
            let links = refined.links(0, p);
            assert!(!links.is_empty() && links.len() <= refine.max_links);
            assert!(!links.contains(&p), "{p} links to itself");
            let mut sorted = links.to_vec();
            sorted.sort_unstable();
            sorted.dedup();
            assert_eq!(sorted.len(), links.len(), "{p} has a link twice");
        }
        let before = recall_at(&plain.graph, &by_pid, &queries, 10, true);
        let after = recall_at(&refined, &by_pid, &queries, 10, true);
        assert!(
            after > before + 0.02,
            "recall@10 at ef 10: {before:.3} as built, {after:.3} refined"
        );
        // The result does not depend on how many threads did it.
        let two = rayon::ThreadPoolBuilder::new()
            .num_threads(2)
            .build()
            .unwrap();
        let mut again = plain.graph.clone();
        two.install(|| again.refine(refine.ef, refine.alpha, refine.degree, refine.max_links));
        assert_eq!(again, refined);
    }

    #[test]
    fn the_8_bit_traversal_finds_about_what_the_f32_one_does() {
        let dim = 32; // a multiple of 16: the SIMD path where the CPU has one
        let data = random_unit(3000, dim, 31);
        let queries = random_unit(200, dim, 32);
        let built = one_thread()
            .install(|| build(&data, dim, &MainConfig::default()))
            .unwrap();
        let by_pid = by_pid(&built, &data, dim);
        for ef in [10, 40] {
            let exact = recall_at(&built.graph, &by_pid, &queries, ef, true);
            let quantized = recall_at(&built.graph, &by_pid, &queries, ef, false);
            assert!(
                quantized > exact - 0.02 && quantized > 0.5,
                "recall@10 at ef {ef}: {exact:.3} with f32, {quantized:.3} with 8 bits"
            );
        }
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
