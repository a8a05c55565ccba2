//! Snapshot round trip, corrupt and partial snapshots, layout mismatch, and recovery by
//! replay from the offsets the snapshots cover.

use std::fs;
use std::path::{Path, PathBuf};

use embedstream_index_sink::{CompactionReason, Error, ShardedIndex};

use crate::common::*;

const DIM: usize = 16;

fn compact_all(index: &ShardedIndex) {
    for s in 0..index.config().shards {
        index.compact(s, CompactionReason::Manual).unwrap().unwrap();
    }
}

fn snaps(dir: &Path, ext: &str) -> Vec<PathBuf> {
    let mut v: Vec<_> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_str().unwrap().ends_with(ext))
        .collect();
    v.sort();
    v
}

fn ids() -> impl Iterator<Item = String> + Clone {
    (0..300).map(|i| format!("item-{i:05}"))
}

#[test]
fn round_trip_restores_main_hot_deletes_and_offsets() {
    let dir = TempDir::new("roundtrip");
    let c = config(DIM, 3);
    let mut rng = Rng::new(21);
    let log = random_log(&mut rng, DIM, 300, 3000, 4);
    let mut oracle = Oracle::default();
    {
        let index = ShardedIndex::open(&dir.0, c.clone()).unwrap();
        assert!(
            index.resume_offsets().is_empty(),
            "a fresh index replays from the start"
        );
        for w in &log[..2000] {
            oracle.apply(w);
            index.apply(w.clone()).unwrap();
        }
        compact_all(&index);
        // Leave work in hot and pending deletes, then a clean-shutdown snapshot.
        for w in &log[2000..] {
            oracle.apply(w);
            index.apply(w.clone()).unwrap();
        }
        let before = index.stats();
        assert!(
            before
                .iter()
                .all(|s| s.hot_vectors > 0 && s.pending_deletes > 0 && s.main_vectors > 0)
        );
        index.persist().unwrap();
        let reopened = ShardedIndex::open(&dir.0, c.clone()).unwrap();
        assert_eq!(reopened.resume_offsets(), index.applied_offsets());
        let after = reopened.stats();
        for (a, b) in before.iter().zip(&after) {
            assert_eq!(
                (
                    a.hot_vectors,
                    a.main_vectors,
                    a.main_tombstones,
                    a.pending_deletes,
                    &a.last_compaction
                ),
                (
                    b.hot_vectors,
                    b.main_vectors,
                    b.main_tombstones,
                    b.pending_deletes,
                    &b.last_compaction
                )
            );
        }
        assert_same_state(&reopened, &oracle, ids());
        let mut rng = Rng::new(1);
        for _ in 0..20 {
            let q = rng.unit(DIM);
            assert_eq!(search(&index, &q, 10), search(&reopened, &q, 10));
            // Attributes come back too: the same items match a filter.
            let even = search_even(&reopened, &q, 10);
            assert_eq!(search_even(&index, &q, 10), even);
            assert_eq!(even.len(), 10);
            for h in &even {
                let (version, _) = &oracle.items[&h.item_id];
                assert_eq!(version.offset % 2, 0, "{h:?}");
            }
        }
        // Replaying the whole log into the reopened index changes nothing.
        for w in &log {
            reopened.apply(w.clone()).unwrap();
        }
        assert_same_state(&reopened, &oracle, ids());
    }
    // Only `keep` (2) snapshots per shard remain; no temp files.
    assert_eq!(snaps(&dir.0, ".snap").len(), 3 * 2);
    assert!(snaps(&dir.0, ".tmp").is_empty());
}

/// Two generations of snapshots: after the first 1500 records, and after all 3000.
fn two_generations(dir: &Path) -> (Vec<embedstream_index_sink::Write>, Oracle, usize) {
    let mut rng = Rng::new(22);
    let log = random_log(&mut rng, DIM, 300, 3000, 2);
    let mut oracle = Oracle::default();
    let index = ShardedIndex::open(dir, config(DIM, 2)).unwrap();
    for w in &log[..1500] {
        index.apply(w.clone()).unwrap();
    }
    compact_all(&index);
    let main_after_first = index.stats()[0].main_vectors;
    for w in &log[1500..] {
        index.apply(w.clone()).unwrap();
    }
    compact_all(&index);
    for w in &log {
        oracle.apply(w);
    }
    (log, oracle, main_after_first)
}

#[test]
fn corrupt_or_partial_newest_snapshot_falls_back_to_the_previous_one() {
    type Damage = fn(&Path);
    let damages: [(&str, Damage); 4] = [
        ("flipped byte", |p| {
            let mut b = fs::read(p).unwrap();
            let i = b.len() / 2;
            b[i] ^= 0x40;
            fs::write(p, b).unwrap();
        }),
        ("truncated", |p| {
            let b = fs::read(p).unwrap();
            fs::write(p, &b[..b.len() * 2 / 3]).unwrap();
        }),
        ("last byte cut", |p| {
            let b = fs::read(p).unwrap();
            fs::write(p, &b[..b.len() - 1]).unwrap();
        }),
        ("header byte flipped", |p| {
            let mut b = fs::read(p).unwrap();
            b[13] ^= 1;
            fs::write(p, b).unwrap();
        }),
    ];
    for (what, damage) in damages {
        let dir = TempDir::new("corrupt");
        let (log, oracle, main_after_first) = two_generations(&dir.0);
        let shard0 = snaps(&dir.0, ".snap")
            .into_iter()
            .filter(|p| {
                p.file_name()
                    .unwrap()
                    .to_str()
                    .unwrap()
                    .starts_with("shard-00000-")
            })
            .collect::<Vec<_>>();
        assert_eq!(shard0.len(), 2);
        damage(shard0.last().unwrap());
        let index = ShardedIndex::open(&dir.0, config(DIM, 2)).unwrap();
        let s0 = &index.stats()[0];
        assert_eq!(
            s0.main_vectors, main_after_first,
            "{what}: shard 0 is back at generation 1"
        );
        assert_eq!(s0.last_compaction.as_ref().unwrap().count, 1, "{what}");
        assert_eq!(
            index.stats()[1].last_compaction.as_ref().unwrap().count,
            2,
            "{what}"
        );
        assert_eq!(snaps(&dir.0, ".corrupt").len(), 1, "{what}: moved aside");
        // The consumer resumes at generation 1's offsets; replay restores everything.
        let resume = index.resume_offsets();
        assert!(
            !resume.is_empty() && resume.values().all(|&o| o > 0),
            "{what}: {resume:?}"
        );
        replay(&index, &log);
        assert_same_state(&index, &oracle, ids());
    }
}

#[test]
fn no_valid_snapshot_means_empty_shard_and_full_replay() {
    let dir = TempDir::new("allcorrupt");
    let (log, oracle, _) = two_generations(&dir.0);
    for p in snaps(&dir.0, ".snap") {
        if p.file_name()
            .unwrap()
            .to_str()
            .unwrap()
            .starts_with("shard-00001-")
        {
            let b = fs::read(&p).unwrap();
            fs::write(&p, &b[..100]).unwrap();
        }
    }
    let index = ShardedIndex::open(&dir.0, config(DIM, 2)).unwrap();
    let s1 = &index.stats()[1];
    assert_eq!((s1.main_vectors, s1.hot_vectors), (0, 0));
    assert!(
        index.resume_offsets().is_empty(),
        "shard 1 needs every partition from the start"
    );
    replay(&index, &log);
    assert_same_state(&index, &oracle, ids());
}

#[test]
fn snapshot_of_another_layout_is_refused() {
    let dir = TempDir::new("layout");
    two_generations(&dir.0);
    let err = ShardedIndex::open(&dir.0, config(DIM, 3)).unwrap_err();
    assert!(matches!(err, Error::SnapshotIncompatible { .. }), "{err}");
    let err = ShardedIndex::open(&dir.0, config(DIM + 1, 2)).unwrap_err();
    assert!(matches!(err, Error::SnapshotIncompatible { .. }), "{err}");
}

#[test]
fn a_snapshot_without_attributes_is_set_aside_and_the_topic_replayed() {
    let dir = TempDir::new("format2");
    let c = config(DIM, 1);
    {
        let index = ShardedIndex::open(&dir.0, c.clone()).unwrap();
        index
            .apply(upsert("a", Rng::new(3).unit(DIM), 0, 0))
            .unwrap();
        index.apply(delete("a", 0, 1)).unwrap();
        index.persist().unwrap();
    }
    assert!(
        !ShardedIndex::open(&dir.0, c.clone())
            .unwrap()
            .resume_offsets()
            .is_empty(),
        "a current snapshot resumes where it stopped"
    );
    // The same state in format 2: with no rows in main or hot (one pending delete), its
    // bytes differ from format 3's only in the version, then the checksum.
    let path = snaps(&dir.0, ".snap").pop().unwrap();
    let mut bytes = fs::read(&path).unwrap();
    bytes[8..12].copy_from_slice(&2u32.to_le_bytes());
    let body = bytes.len() - 20;
    let crc = crc32fast::hash(&bytes[..body]);
    bytes[body + 8..body + 12].copy_from_slice(&crc.to_le_bytes());
    fs::write(&path, &bytes).unwrap();
    let reopened = ShardedIndex::open(&dir.0, c).unwrap();
    assert!(
        reopened.resume_offsets().is_empty(),
        "a snapshot without attributes must be replayed from the start"
    );
    assert_eq!(reopened.len(), 0);
}
