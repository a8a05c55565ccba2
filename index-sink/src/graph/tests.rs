use std::sync::Arc;

use instant_distance::{Builder, Heuristic};

use super::bridge::BuildPoint;
use super::layout::Built;
use super::search::Cand;
use super::*;
use crate::config::{MainConfig, RefineConfig};
use crate::vector::dot;

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
        ..MainConfig::default()
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
