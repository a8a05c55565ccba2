//! The cold tier: segments, each an immutable HNSW graph over aged items whose vectors,
//! links and 8-bit codes live in a file of the snapshot directory, memory-mapped.
//!
//! A segment file is written once (to a temporary name, fsynced, renamed into place, the
//! directory fsynced) and never changed; snapshots name the segments their state uses, and a
//! segment file is deleted only when no kept snapshot names it. Items of a segment that were
//! replaced or deleted later are its `dead` set, kept in the snapshot, not in the file.
//!
//! Layout (little-endian): magic `ESCOLD\r\n`, format version, shard, dimension and upper
//! layer count (u32 each), item count and each upper layer's node count (u64 each), the
//! rows (as in snapshots); then, each starting at a multiple of 64 bytes, the vectors
//! (`n * dim` f32), layer 0 (`n * M0` u32), each upper layer (`nodes * M` u32), the codes
//! (`n * dim` i8) and their scales (`n` f32); then the footer: the byte length of everything
//! before it (u64), its CRC-32 (u32) and `ESCOLDOK`. Opening a segment reads the whole file
//! once to check the checksum (sequential I/O), keeps the rows in memory and maps the rest.

use std::collections::HashSet;
use std::fs::{self, File};
use std::io::{self, Read};
use std::path::Path;
use std::sync::Arc;

use memmap2::Mmap;

use crate::error::{Error, Result};
use crate::graph::{Graph, M, M0};
use crate::main_index::MainIndex;
use crate::snapshot::{CrcReader, CrcWriter, read_checksummed};
use crate::sq8::Codes;
use crate::store::{Mapped, Store};
use crate::types::ItemId;

const MAGIC: &[u8; 8] = b"ESCOLD\r\n";
const MAGIC_END: &[u8; 8] = b"ESCOLDOK";
const FORMAT_VERSION: u32 = 1;
/// Every array starts at a multiple of this (a cache line; more than any type's alignment).
const ALIGN: u64 = 64;

/// One segment of a shard's cold tier.
#[derive(Debug, Clone)]
pub(crate) struct Segment {
    /// Its file's name in the snapshot directory.
    pub(crate) name: String,
    pub(crate) main: Arc<MainIndex>,
    /// Its items replaced or deleted since it was written.
    pub(crate) dead: Arc<HashSet<ItemId>>,
    /// Its file's size.
    pub(crate) bytes: u64,
}

impl Segment {
    /// Items queries can find in it.
    pub(crate) fn live(&self) -> usize {
        self.main.len() - self.dead.len()
    }

    /// Whether `id` is a live item of this segment.
    pub(crate) fn holds(&self, id: &str) -> bool {
        self.main.contains(id) && !self.dead.contains(id)
    }
}

/// The name of segment `k` written by a shard's compaction `seq` (sorts with its snapshots).
pub(crate) fn file_name(shard: u32, seq: u64, k: usize) -> String {
    format!("shard-{shard:05}-{seq:016}-{k}.seg")
}

/// The names of the shard's segment files in `dir`.
pub(crate) fn list(dir: &Path, shard: u32) -> Vec<String> {
    let prefix = format!("shard-{shard:05}-");
    let Ok(entries) = fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut out: Vec<String> = entries
        .flatten()
        .filter_map(|e| e.file_name().to_str().map(str::to_owned))
        .filter(|n| n.starts_with(&prefix) && n.ends_with(".seg"))
        .collect();
    out.sort();
    out
}

/// Maps a file read-only, for random access: a graph search touches scattered nodes, and the
/// kernel's default read-around (a run of pages per fault) would fill memory with pages no
/// query asked for and evict the ones queries use.
pub(crate) fn map_file(path: &Path) -> io::Result<Mmap> {
    let file = File::open(path)?;
    // SAFETY: segment files are immutable: written under a temporary name, renamed into place
    // and never opened for writing again; one is deleted only when no snapshot names it, and
    // deleting a mapped file keeps its pages until the map is dropped. Nothing else writes to
    // the snapshot directory.
    #[allow(unsafe_code)]
    let map = unsafe { Mmap::map(&file)? };
    #[cfg(unix)]
    map.advise(memmap2::Advice::Random)?;
    Ok(map)
}

/// Writes `main`'s graph and rows as segment `name` in `dir`; returns the file's size.
pub(crate) fn write(dir: &Path, name: &str, shard: u32, main: &MainIndex) -> Result<u64> {
    let ops = ["write cold segment", "rename cold segment into place"];
    crate::snapshot::write_checksummed(dir, name, ops, MAGIC_END, |w| write_body(w, shard, main))
}

fn pad<W: io::Write>(w: &mut CrcWriter<W>) -> io::Result<()> {
    let fill = (ALIGN - w.len % ALIGN) % ALIGN;
    w.bytes(&[0u8; ALIGN as usize][..fill as usize])
}

fn write_body<W: io::Write>(w: &mut CrcWriter<W>, shard: u32, main: &MainIndex) -> io::Result<()> {
    let graph = main.graph();
    w.bytes(MAGIC)?;
    for v in [
        FORMAT_VERSION,
        shard,
        graph.dim as u32,
        graph.layers.len() as u32,
    ] {
        w.u32(v)?;
    }
    w.u64(main.len() as u64)?;
    for layer in &graph.layers {
        w.u64((layer.len() / M) as u64)?;
    }
    for row in main.rows() {
        w.row(row)?;
    }
    pad(w)?;
    w.f32s(&graph.vectors)?;
    pad(w)?;
    w.u32s(&graph.zero)?;
    for layer in &graph.layers {
        pad(w)?;
        w.u32s(layer)?;
    }
    let (codes, scales) = graph.codes().parts();
    pad(w)?;
    w.bytes(bytemuck::cast_slice(codes))?;
    pad(w)?;
    w.f32s(scales)
}

/// Opens segment `name` of `dir`: checks it whole, then maps it. Any defect (a wrong
/// checksum, another shard's or dimension's file, links out of range) is
/// [`Error::SegmentCorrupt`] naming the file.
pub(crate) fn open(dir: &Path, name: &str, shard: u32, dim: usize) -> Result<(MainIndex, u64)> {
    let path = dir.join(name);
    let corrupt = |reason: String| Error::SegmentCorrupt {
        path: path.clone(),
        reason,
    };
    if cfg!(target_endian = "big") {
        return Err(corrupt("segments are mapped as little-endian".into()));
    }
    let read = read_checksummed(&path, MAGIC_END, "read cold segment", |r| {
        let body_len = r.left;
        parse(r, body_len, shard, dim)
    })?;
    let (parsed, size) = read.map_err(|reason| corrupt(reason.into()))?;
    let (rows, layout) = parsed.map_err(|e| corrupt(e.to_string()))?;
    let map = Arc::new(map_file(&path).map_err(|e| Error::io("read cold segment", &path, e))?);
    let graph = layout
        .graph(&map, dim)
        .ok_or_else(|| corrupt("an array is out of range or misaligned".into()))?;
    graph.check().map_err(|e| corrupt(e.into()))?;
    let n = rows.len();
    let main = MainIndex::from_parts(graph, rows);
    if main.distinct_ids() != n {
        return Err(corrupt("duplicate item ids".into()));
    }
    Ok((main, size))
}

/// Where each array of a segment file starts.
struct Layout {
    n: usize,
    vectors: usize,
    zero: usize,
    layers: Vec<(usize, usize)>,
    codes: usize,
    scales: usize,
}

impl Layout {
    fn graph(&self, map: &Arc<Mmap>, dim: usize) -> Option<Graph> {
        let n = self.n;
        let vectors = Store::Mapped(Mapped::new(map.clone(), self.vectors, n * dim)?);
        let zero = Store::Mapped(Mapped::new(map.clone(), self.zero, n * M0)?);
        let layers = self
            .layers
            .iter()
            .map(|&(at, nodes)| Mapped::new(map.clone(), at, nodes * M).map(Store::Mapped))
            .collect::<Option<Vec<_>>>()?;
        let codes = Store::Mapped(Mapped::new(map.clone(), self.codes, n * dim)?);
        let scales = Store::Mapped(Mapped::new(map.clone(), self.scales, n)?);
        Some(Graph::from_parts(
            dim,
            vectors,
            zero,
            layers,
            Codes::from_parts(dim, codes, scales),
        ))
    }
}

fn parse<R: Read>(
    r: &mut CrcReader<R>,
    body_len: u64,
    shard: u32,
    dim: usize,
) -> io::Result<(Vec<crate::hot::Row>, Layout)> {
    let bad = |what: &str| io::Error::new(io::ErrorKind::InvalidData, what.to_owned());
    let mut magic = [0u8; 8];
    r.exact(&mut magic)?;
    if &magic != MAGIC {
        return Err(bad("not a segment (magic)"));
    }
    let (format, file_shard, file_dim, layers) = (r.u32()?, r.u32()?, r.u32()?, r.u32()?);
    if format != FORMAT_VERSION {
        return Err(bad("unknown segment format"));
    }
    if file_shard != shard || file_dim as usize != dim {
        return Err(bad("the segment belongs to another shard or dimension"));
    }
    let n = r.count(24 + 4 * dim + 4 * M0)?;
    let nodes = (0..layers)
        .map(|_| r.count(4 * M))
        .collect::<io::Result<Vec<_>>>()?;
    let rows = (0..n).map(|_| r.row()).collect::<io::Result<Vec<_>>>()?;
    // Each array: skip to the next multiple of ALIGN, note where it starts, hash past it.
    let section = |r: &mut CrcReader<R>, bytes: usize| -> io::Result<usize> {
        let at = body_len - r.left;
        r.skip((ALIGN - at % ALIGN) % ALIGN)?;
        let start = (body_len - r.left) as usize;
        r.skip(bytes as u64)?;
        Ok(start)
    };
    let vectors = section(r, 4 * n * dim)?;
    let zero = section(r, 4 * n * M0)?;
    let mut upper = Vec::with_capacity(nodes.len());
    for &k in &nodes {
        upper.push((section(r, 4 * k * M)?, k));
    }
    let codes = section(r, n * dim)?;
    let scales = section(r, 4 * n)?;
    if r.left != 0 {
        return Err(bad("bytes after the content"));
    }
    Ok((
        rows,
        Layout {
            n,
            vectors,
            zero,
            layers: upper,
            codes,
            scales,
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::MainConfig;
    use crate::hot::Row;
    use crate::types::Version;

    fn sample(n: usize, dim: usize) -> (Vec<Row>, Vec<f32>) {
        let mut rows = Vec::new();
        let mut vectors = Vec::new();
        for i in 0..n {
            let v: Vec<f32> = (0..dim)
                .map(|d| ((i * 31 + d * 7) % 17) as f32 - 8.0)
                .collect();
            vectors.extend(crate::vector::normalized(&v, dim).unwrap());
            rows.push(Row {
                id: format!("c{i:04}"),
                version: Version {
                    source: None,
                    partition: 0,
                    offset: i as i64,
                },
                event_time_ms: i as i64,
                attributes: crate::types::Attributes::new(vec![("k".into(), "v".into())]),
            });
        }
        (rows, vectors)
    }

    #[test]
    fn a_segment_reads_back_mapped_and_answers_as_built() {
        let dir = std::env::temp_dir().join(format!("cold-seg-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        let dim = 16;
        let (rows, vectors) = sample(600, dim);
        let main = MainIndex::build(rows, &vectors, dim, &MainConfig::default()).unwrap();
        let name = file_name(3, 7, 0);
        let bytes = write(&dir, &name, 3, &main).unwrap();
        assert_eq!(list(&dir, 3), std::slice::from_ref(&name));
        let (back, size) = open(&dir, &name, 3, dim).unwrap();
        assert_eq!(size, bytes);
        assert!(back.graph().is_mapped());
        assert_eq!(back.graph(), main.graph());
        assert_eq!(back.rows(), main.rows());
        for q in vectors.chunks(dim).take(20) {
            assert_eq!(
                back.search(q, 10, 40, |_| false),
                main.search(q, 10, 40, |_| false)
            );
        }
        // Another shard's or dimension's: refused.
        assert!(matches!(
            open(&dir, &name, 2, dim),
            Err(Error::SegmentCorrupt { .. })
        ));
        assert!(open(&dir, &name, 3, 8).is_err());
        // One flipped byte anywhere: refused by the checksum.
        let path = dir.join(&name);
        let mut raw = fs::read(&path).unwrap();
        let at = raw.len() / 2;
        raw[at] ^= 0x40;
        fs::write(&path, &raw).unwrap();
        let err = open(&dir, &name, 3, dim).unwrap_err();
        assert!(err.to_string().contains("checksum"), "{err}");
        fs::remove_dir_all(&dir).unwrap();
    }
}
