//! Properties of the snapshot reader over damaged files: whatever bytes a snapshot holds (with
//! a footer that matches them, so the parser itself is reached), opening the index gives an
//! index that answers or an error, never a panic or a wild allocation.

use std::sync::LazyLock;

use embedstream_index_sink::{CompactionReason, Query, ShardedIndex};
use proptest::prelude::{ProptestConfig, any, prop, proptest};

use crate::common::*;

const DIM: usize = 8;

/// A valid snapshot of one shard with a main graph, hot rows and pending deletes: its file
/// name and bytes.
static SNAPSHOT: LazyLock<(String, Vec<u8>)> = LazyLock::new(|| {
    let dir = TempDir::new("prop-snapshot");
    let index = ShardedIndex::open(&dir.0, config(DIM, 1)).unwrap();
    let mut rng = Rng::new(7);
    for w in random_log(&mut rng, DIM, 60, 200, 2) {
        index.apply(w).unwrap();
    }
    index.compact(0, CompactionReason::Manual).unwrap();
    for w in random_log(&mut rng, DIM, 60, 40, 2) {
        let _ = index.apply(w);
    }
    index.persist().unwrap();
    let mut snaps: Vec<_> = std::fs::read_dir(&dir.0)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "snap"))
        .collect();
    snaps.sort();
    let newest = snaps.pop().unwrap();
    (
        newest.file_name().unwrap().to_str().unwrap().to_owned(),
        std::fs::read(&newest).unwrap(),
    )
});

const FOOTER: usize = 20;

/// `body` with a footer that matches it (length, CRC-32, end magic).
fn with_footer(body: &[u8]) -> Vec<u8> {
    let mut out = body.to_vec();
    out.extend_from_slice(&(body.len() as u64).to_le_bytes());
    out.extend_from_slice(&crc32fast::hash(body).to_le_bytes());
    out.extend_from_slice(b"ESSNAPOK");
    out
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(
        std::env::var("PROPTEST_CASES").ok().and_then(|c| c.parse().ok()).unwrap_or(64)
    ))]

    #[test]
    fn a_damaged_snapshot_opens_or_is_refused(
        edits in prop::collection::vec((any::<usize>(), any::<u8>()), 1..6),
        cut in prop::option::of(any::<usize>()),
        refooter in any::<bool>(),
    ) {
        let (name, bytes) = &*SNAPSHOT;
        let mut body = bytes[..bytes.len() - FOOTER].to_vec();
        for &(at, byte) in &edits {
            let at = at % body.len();
            body[at] = byte;
        }
        if let Some(cut) = cut {
            body.truncate(cut % (body.len() + 1));
        }
        let file = if refooter {
            with_footer(&body)
        } else {
            let mut f = body.clone();
            f.extend_from_slice(&bytes[bytes.len() - FOOTER..]);
            f
        };
        let dir = TempDir::new("prop-damaged");
        std::fs::create_dir_all(&dir.0).unwrap();
        std::fs::write(dir.0.join(name), &file).unwrap();
        if let Ok(index) = ShardedIndex::open(&dir.0, config(DIM, 1)) {
            let q = vec![0.5; DIM];
            let _ = index.search(Query { vector: &q, k: 5, ef_search: None, filter: None, hot_only: false });
            let _ = index.len();
        }
    }
}
