//! The main part of a shard: an immutable HNSW graph over the items merged at the last
//! compaction, with each item's row (id, version, event time).
//!
//! Immutable once built: the shard never changes a main, it swaps in a new one. Items
//! written after the build are shadowed rather than removed: the shard passes a `hidden`
//! predicate (true for items deleted or replaced in hot since the build), and the search
//! widens `ef` until it has `k` visible results or has seen the whole reachable graph, so
//! tombstones cost latency, not results. Recall is HNSW's (approximate); scores are exact
//! dot products recomputed with the same function hot uses.

use std::cell::RefCell;
use std::collections::HashMap;

use embedstream_schemas::filter::Filter;

use crate::config::MainConfig;
use crate::error::Result;
use crate::filtered::{AttributeIndex, FilterPlan, Strategy};
use crate::graph::{self, Graph, Scratch};
use crate::hot::Row;
use crate::topk::TopK;
use crate::types::{Hit, ItemId};
use crate::vector::dot;

thread_local! {
    static SCRATCH: RefCell<Scratch> = RefCell::new(Scratch::default());
}

#[derive(Debug)]
pub(crate) struct MainIndex {
    graph: Graph,
    /// By pid.
    rows: Vec<Row>,
    by_id: HashMap<ItemId, u32>,
    attributes: AttributeIndex,
    /// The rows' event times, ascending.
    event_times: Vec<i64>,
}

impl MainIndex {
    pub(crate) fn empty(dim: usize) -> Self {
        Self {
            graph: Graph::new(dim, Vec::new(), Vec::new(), Vec::new()),
            rows: Vec::new(),
            by_id: HashMap::new(),
            attributes: AttributeIndex::default(),
            event_times: Vec::new(),
        }
    }

    /// Builds on the current rayon pool. `vectors` holds `rows.len() * dim` normalized values;
    /// ids must be unique.
    pub(crate) fn build(
        rows: Vec<Row>,
        vectors: &[f32],
        dim: usize,
        config: &MainConfig,
    ) -> Result<Self> {
        let built = graph::build(vectors, dim, config)?;
        let mut slots: Vec<Option<Row>> = rows.into_iter().map(Some).collect();
        let rows: Vec<Row> = built
            .input_row
            .iter()
            .map(|&r| {
                slots[r as usize]
                    .take()
                    .expect("input_row is a permutation")
            })
            .collect();
        Ok(Self::from_parts(built.graph, rows))
    }

    /// Assembles a main from a graph and its rows in pid order (a snapshot's content).
    pub(crate) fn from_parts(graph: Graph, rows: Vec<Row>) -> Self {
        let by_id = rows
            .iter()
            .enumerate()
            .map(|(pid, r)| (r.id.clone(), pid as u32))
            .collect();
        let attributes = AttributeIndex::build(&rows);
        let mut event_times: Vec<i64> = rows.iter().map(|r| r.event_time_ms).collect();
        event_times.sort_unstable();
        Self {
            graph,
            rows,
            by_id,
            attributes,
            event_times,
        }
    }

    /// How many items have an event time before `cutoff_ms`.
    pub(crate) fn older_than(&self, cutoff_ms: i64) -> usize {
        self.event_times.partition_point(|&t| t < cutoff_ms)
    }

    pub(crate) fn len(&self) -> usize {
        self.rows.len()
    }

    pub(crate) fn distinct_ids(&self) -> usize {
        self.by_id.len()
    }

    pub(crate) fn get(&self, id: &str) -> Option<&Row> {
        self.by_id.get(id).map(|&pid| &self.rows[pid as usize])
    }

    pub(crate) fn contains(&self, id: &str) -> bool {
        self.by_id.contains_key(id)
    }

    /// Rows by pid.
    pub(crate) fn rows(&self) -> &[Row] {
        &self.rows
    }

    pub(crate) fn graph(&self) -> &Graph {
        &self.graph
    }

    /// The top `k` items not `hidden`, searching with width `ef` (at least `k`) and widening
    /// it while hidden items crowd the results out.
    pub(crate) fn search(
        &self,
        query: &[f32],
        k: usize,
        ef: usize,
        hidden: impl Fn(&str) -> bool,
    ) -> Vec<Hit> {
        let n = self.len();
        if n == 0 || k == 0 {
            return Vec::new();
        }
        self.walk(query, k, ef.max(k).min(n), None, &hidden)
    }

    /// The top `k` not `hidden` of a graph walk of width `ef` (among `allowed` when given),
    /// widening the walk while hidden items crowd the results out, up to every candidate.
    fn walk(
        &self,
        query: &[f32],
        k: usize,
        mut ef: usize,
        allowed: Option<&crate::filtered::Bits>,
        hidden: &impl Fn(&str) -> bool,
    ) -> Vec<Hit> {
        let limit = allowed.map_or(self.len(), crate::filtered::Bits::count);
        SCRATCH.with_borrow_mut(|scratch| {
            loop {
                let found = match allowed {
                    None => self.graph.search(query, ef, scratch),
                    Some(a) => self.graph.search_filtered(query, ef, a, scratch),
                };
                let mut top = TopK::new(k);
                let mut visible = 0;
                for c in found {
                    let row = &self.rows[c.pid as usize];
                    if !hidden(&row.id) {
                        visible += 1;
                        top.offer(dot(query, self.graph.vector(c.pid)), &row.id);
                    }
                }
                // Fewer than `ef` found: the search saw everything it can reach.
                if visible >= k || found.len() < ef || ef >= limit {
                    return top.into_hits();
                }
                ef = (ef * 2).min(limit);
            }
        })
    }
}

impl MainIndex {
    /// `search` among the items `filter` matches, by the strategy `plan` picks for how many
    /// match (see `filtered.rs`); also says which strategy answered (none when nothing
    /// matches).
    pub(crate) fn search_filtered(
        &self,
        query: &[f32],
        k: usize,
        ef: usize,
        filter: &Filter,
        plan: FilterPlan,
        hidden: impl Fn(&str) -> bool,
    ) -> (Vec<Hit>, Option<Strategy>) {
        let n = self.len();
        if n == 0 || k == 0 {
            return (Vec::new(), None);
        }
        let allowed = self.attributes.select(filter, n);
        let matching = allowed.count();
        if matching == 0 {
            return (Vec::new(), None);
        }
        if matching <= plan.exact_max {
            return (
                self.scan(query, k, &allowed, &hidden),
                Some(Strategy::Exact),
            );
        }
        // The walk keeps matching nodes only and meets them at the rate they occur, so a
        // width of `ef` would cost 1 / share times an unfiltered walk's work, and a width of
        // `ef` × share the same work but less recall on data without structure. The width
        // is `ef` × √share (never below `k`): between the two.
        let share = matching as f64 / n as f64;
        let ef = ((ef as f64 * share.sqrt()).ceil() as usize)
            .max(k)
            .min(matching);
        let hits = self.walk(query, k, ef, Some(&allowed), &hidden);
        (hits, Some(Strategy::Graph))
    }

    /// The exact top `k` of the `allowed` items not `hidden`. Every allowed item is scored
    /// (one batched pass over their f32 vectors); `hidden` (hash lookups) is asked only of
    /// the best-scored ones, widening until `k` visible ones are found: any visible item
    /// past them scores no higher than the `k` found, and those that tie with the worst of
    /// them are offered too (ties rank by id).
    fn scan(
        &self,
        query: &[f32],
        k: usize,
        allowed: &crate::filtered::Bits,
        hidden: &impl Fn(&str) -> bool,
    ) -> Vec<Hit> {
        let pids: Vec<u32> = allowed.iter().collect();
        let mut scores = Vec::with_capacity(pids.len());
        crate::vector::dots(
            query,
            &self.graph.vectors,
            self.graph.dim,
            &pids,
            &mut scores,
        );
        let mut order: Vec<(f32, u32)> = scores.into_iter().zip(pids).collect();
        let better = |a: &(f32, u32), b: &(f32, u32)| b.0.total_cmp(&a.0);
        let mut want = k.saturating_mul(2);
        loop {
            let m = want.min(order.len());
            if m < order.len() {
                order.select_nth_unstable_by(m, better);
            }
            let mut top = TopK::new(k);
            let mut visible = 0;
            for &(score, pid) in &order[..m] {
                let row = &self.rows[pid as usize];
                if !hidden(&row.id) {
                    visible += 1;
                    top.offer(score, &row.id);
                }
            }
            if visible >= k || m == order.len() {
                if let Some(worst) = top.worst_when_full() {
                    for &(score, pid) in &order[m..] {
                        let row = &self.rows[pid as usize];
                        if score >= worst && !hidden(&row.id) {
                            top.offer(score, &row.id);
                        }
                    }
                }
                return top.into_hits();
            }
            want = want.saturating_mul(4);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::Version;

    #[test]
    fn hidden_items_are_skipped_and_search_widens() {
        let dim = 4;
        let n = 200;
        let mut vectors = Vec::new();
        let mut rows = Vec::new();
        for i in 0..n {
            let a = i as f32 * 0.01;
            vectors.extend(crate::vector::normalized(&[a.cos(), a.sin(), 0.1, 0.0], dim).unwrap());
            rows.push(Row {
                id: format!("i{i:03}"),
                version: Version {
                    source: None,
                    partition: 0,
                    offset: i as i64,
                },
                event_time_ms: 0,
                attributes: Default::default(),
            });
        }
        let main = MainIndex::build(rows, &vectors, dim, &MainConfig::default()).unwrap();
        assert_eq!(main.len(), n);
        assert_eq!(main.get("i007").unwrap().version.offset, 7);
        let q = &vectors[..dim];
        let plain = main.search(q, 5, 5, |_| false);
        assert_eq!(plain[0].item_id, "i000");
        // Hide the 150 nearest: the search has to widen far past ef = 5 to find 5 more.
        let hits = main.search(q, 5, 5, |id| id < "i150");
        let ids: Vec<_> = hits.iter().map(|h| h.item_id.as_str()).collect();
        assert_eq!(ids, ["i150", "i151", "i152", "i153", "i154"]);
        assert!(main.search(q, 5, 5, |_| true).is_empty());
    }
}
