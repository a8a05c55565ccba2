//! The refinement pass over a built graph: reverse links where there is room, then DiskANN's
//! robust prune over each node's own search results.

use super::layout::{Graph, INVALID};
use super::search::{Cand, Scratch};
use crate::config::M0;
use crate::vector::dots;

impl Graph {
    /// Makes layer-0 links two-way where there is room: for each link u → v, u is appended
    /// to v's list unless it is there or the list is full (2M). The heuristic leaves most
    /// lists far from full, and a node that many others point to but that points to few
    /// is hard to leave; hnswlib gets the same effect by appending to a neighbour's list
    /// until it is full and pruning only then. Appended links come after the heuristic's
    /// own, in pid order; no distance is computed.
    pub(super) fn add_reverse_links(&mut self) {
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
    pub(super) fn refine(&mut self, ef: usize, alpha: f32, degree: usize, max_links: usize) {
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
}
