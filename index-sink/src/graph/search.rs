//! The search: instant-distance's algorithm step for step over the crate's layout, on 8-bit
//! vectors for queries or f32 for background work.

use std::cmp::{Ordering, Reverse};
use std::collections::BinaryHeap;

use super::layout::{Graph, INVALID};
use crate::config::{M, M0};
use crate::filtered::Bits;
use crate::sq8::{Codes, QueryCodes};
use crate::vector::dots;

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
        self.push_links(&[pid], query, graph, exact, None);
    }

    /// `push` for every link of a node at once: the unvisited ones are marked, their
    /// distances computed in one batch, then offered in link order (what pushing them one
    /// by one does). `allowed`: see `offer_filtered`.
    fn push_links(
        &mut self,
        links: &[u32],
        query: &[f32],
        graph: &Graph,
        exact: bool,
        allowed: Option<&Bits>,
    ) {
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
            match allowed {
                None => self.offer(Cand { dist, pid }),
                Some(allowed) => self.offer_filtered(Cand { dist, pid }, allowed),
            }
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

    /// With a filter, `nearest` holds allowed nodes only, while every node closer than the
    /// farthest of them (or any node while there are fewer than `ef`) is still walked
    /// through: nodes that do not match lead to nodes that do.
    fn offer_filtered(&mut self, c: Cand, allowed: &Bits) {
        let full = self.nearest.len() >= self.ef;
        if full && self.nearest.last().is_some_and(|far| c >= *far) {
            return;
        }
        self.candidates.push(Reverse(c));
        if allowed.contains(c.pid) {
            let idx = self.nearest.binary_search(&c).unwrap_or_else(|i| i);
            self.nearest.insert(idx, c);
        }
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
    pub(super) fn links(&self, layer: usize, pid: u32) -> &[u32] {
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

    /// `search`, returning only pids in `allowed`: the upper layers are walked as without a
    /// filter, layer 0 keeps the `ef` nearest allowed nodes found while walking through any.
    pub(crate) fn search_filtered<'s>(
        &self,
        query: &[f32],
        ef: usize,
        allowed: &Bits,
        s: &'s mut Scratch,
    ) -> &'s [Cand] {
        Codes::prepare(query, &mut s.query);
        self.search_inner(query, ef, s, false, Some(allowed))
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
        self.search_inner(query, ef, s, exact, None)
    }

    fn search_inner<'s>(
        &self,
        query: &[f32],
        ef: usize,
        s: &'s mut Scratch,
        exact: bool,
        allowed: Option<&Bits>,
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
            // Filtered, from layer 0 on: results are allowed nodes only; the entry points
            // found on the layers above stay in the walk whether or not they are.
            let allowed = allowed.filter(|_| layer == 0);
            if let Some(allowed) = allowed {
                s.nearest.retain(|c| allowed.contains(c.pid));
            }
            while let Some(Reverse(c)) = s.candidates.pop() {
                if let Some(far) = s.nearest.last()
                    && c.dist > far.dist
                    && (allowed.is_none() || s.nearest.len() >= s.ef)
                {
                    break;
                }
                s.push_links(self.links(layer, c.pid), query, self, exact, allowed);
                s.nearest.truncate(s.ef);
            }
            if layer != 0 {
                s.cull();
            }
        }
        &s.nearest
    }
}
