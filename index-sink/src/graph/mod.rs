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
//! back): instant-distance's heuristic leaves short, local lists that need a wide `ef`; the
//! refined lists reach the same recall at a much smaller `ef`, for about twice the build time.
//! Queries traverse the graph on 8-bit copies of the vectors (`sq8.rs`) and the caller
//! scores what they return with the f32 vectors; background work searches with f32
//! (`search_exact`).
//!
//! `keep_pruned` is off by default: `instant-distance`'s own default tops every layer-0 list
//! up to 2M with the candidates its heuristic rejected, and re-runs the O(M²) heuristic over a
//! full list for every neighbour of every insert: builds are several times slower and
//! searches touch more vectors for little recall at the same `ef`. Both trade-offs are
//! measured in `loadtest/reports/index.md`.

mod bridge;
mod layout;
mod refine;
mod search;

pub(crate) use self::bridge::build;
pub(crate) use self::layout::Graph;
pub(crate) use self::search::Scratch;
pub(crate) use crate::config::{M, M0};

#[cfg(test)]
mod tests;
