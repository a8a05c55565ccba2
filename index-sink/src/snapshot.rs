//! Snapshot files: one shard's whole state (main's graph, rows and vectors; hot; pending
//! deletes; merged deletes still remembered; the per-partition offsets the state covers; the last compaction) in one file.
//!
//! Layout (little-endian): magic `ESSNAP\r\n`, format version (u32; this build writes 4 and
//! reads 1 to 4 — format 2 adds each write's source position, format 3 each item's
//! attributes, format 4 the cold segments), shard, shard count,
//! dimension, routing function (u32 each), sequence number (u64), creation time (i64 ms);
//! the cold segments the state uses (each: file name, item count, the ids hidden since it was
//! written), first so that pruning can read them without the rest; the body; then a footer: the byte length of everything before it (u64), CRC-32 of
//! everything before it (u32), and `ESSNAPOK`. The main graph is stored as built — reading it
//! back costs I/O, not a rebuild.
//!
//! Guarantees: a file is written to a temporary name, fsynced, renamed into place and the
//! directory fsynced, so a crash leaves either the old set of files or the new one, never a
//! half-written `.snap`. A truncated file, a flipped byte or a wrong length is rejected by
//! the footer and checksum before any of its content is used; length fields are bounded by
//! the file size, so a corrupt one cannot make the reader allocate wildly. A corrupt file is
//! renamed to `*.corrupt` (kept for inspection, never loaded again) and the next older one
//! is tried, and so is a snapshot naming a cold segment that is missing or fails its own
//! checks. The newest `keep` valid files are kept, older ones deleted, and then every segment
//! file none of the kept ones names.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::{self, File};
use std::io::{self, BufReader, BufWriter, Read, Seek, SeekFrom, Write as _};
use std::path::{Path, PathBuf};

use crate::cold::{self, Segment};
use crate::compaction::CompactionReason;
use crate::error::{Error, Result};
use crate::graph::{Graph, M, M0};
use crate::hot::{Hot, Row};
use crate::main_index::MainIndex;
use crate::shard::Graveyard;
use crate::stats::CompactionRecord;
use crate::types::{Attributes, ItemId, Source, Version};

const MAGIC: &[u8; 8] = b"ESSNAP\r\n";
const MAGIC_END: &[u8; 8] = b"ESSNAPOK";
/// Version of the layout above; bump on any change.
pub(crate) const FORMAT_VERSION: u32 = 4;
/// The oldest format this build reads: format 1 has no source positions (its writes then
/// order by the embedding topic alone until they are replaced); formats 1 and 2 have no
/// attributes, so the index sets them aside at open and replays the topic instead.
const OLDEST_READABLE: u32 = 1;
const FOOTER_LEN: u64 = 8 + 4 + 8;
/// The first format that keeps items' attributes.
pub(crate) const ATTRIBUTES_FORMAT: u32 = 3;

/// Who a snapshot belongs to; a valid file with other values is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Header {
    pub(crate) shard: u32,
    pub(crate) shards: u32,
    pub(crate) dim: u32,
    pub(crate) routing: u32,
}

/// What a snapshot holds, borrowed for writing.
#[derive(Debug)]
pub(crate) struct Content<'a> {
    pub(crate) main: &'a MainIndex,
    pub(crate) hot: &'a Hot,
    pub(crate) deletes: &'a HashMap<ItemId, Version>,
    pub(crate) graveyard: &'a Graveyard,
    pub(crate) covered: &'a BTreeMap<i32, i64>,
    pub(crate) last: Option<&'a CompactionRecord>,
    pub(crate) cold: &'a [Segment],
}

/// What a snapshot held, read back.
#[derive(Debug)]
pub(crate) struct Loaded {
    pub(crate) path: PathBuf,
    /// The file's format version.
    pub(crate) format: u32,
    pub(crate) seq: u64,
    pub(crate) created_ms: i64,
    pub(crate) main: MainIndex,
    pub(crate) hot: Hot,
    pub(crate) deletes: HashMap<ItemId, Version>,
    pub(crate) graveyard: Graveyard,
    pub(crate) covered: BTreeMap<i32, i64>,
    pub(crate) last: Option<CompactionRecord>,
    pub(crate) cold: Vec<Segment>,
}

/// A cold segment as a snapshot names it.
#[derive(Debug)]
struct SegmentRef {
    name: String,
    items: u64,
    dead: HashSet<ItemId>,
}

fn file_name(shard: u32, seq: u64) -> String {
    format!("shard-{shard:05}-{seq:016}.snap")
}

/// `(seq, path)` of this shard's `.snap` files, newest first.
pub(crate) fn list(dir: &Path, shard: u32) -> Result<Vec<(u64, PathBuf)>> {
    let prefix = format!("shard-{shard:05}-");
    let mut out = Vec::new();
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(Error::io("list snapshot directory", dir, e)),
    };
    for entry in entries {
        let entry = entry.map_err(|e| Error::io("list snapshot directory", dir, e))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if let Some(seq) = name
            .strip_prefix(&prefix)
            .and_then(|r| r.strip_suffix(".snap"))
            .and_then(|s| s.parse::<u64>().ok())
        {
            out.push((seq, entry.path()));
        }
    }
    out.sort_by_key(|b| std::cmp::Reverse(b.0));
    Ok(out)
}

/// Highest sequence number ever used by this shard, including corrupt and temporary files.
pub(crate) fn max_seq(dir: &Path, shard: u32) -> Result<u64> {
    let prefix = format!("shard-{shard:05}-");
    let mut max = 0;
    let Ok(entries) = fs::read_dir(dir) else {
        return Ok(0);
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        let name = name.trim_start_matches('.');
        if let Some(seq) = name
            .strip_prefix(&prefix)
            .and_then(|r| r.get(..16))
            .and_then(|s| s.parse::<u64>().ok())
        {
            max = max.max(seq);
        }
    }
    Ok(max)
}

/// Writes snapshot `seq` of a shard atomically; returns its path and size.
pub(crate) fn write(
    dir: &Path,
    header: Header,
    seq: u64,
    created_ms: i64,
    content: &Content<'_>,
) -> Result<(PathBuf, u64)> {
    fs::create_dir_all(dir).map_err(|e| Error::io("create snapshot directory", dir, e))?;
    let name = file_name(header.shard, seq);
    let ops = ["write snapshot", "rename snapshot into place"];
    let bytes = write_checksummed(dir, &name, ops, MAGIC_END, |w| {
        write_all(w, header, seq, created_ms, content)
    })?;
    Ok((dir.join(name), bytes))
}

/// Writes file `name` of `dir` atomically: `body` to a temporary name, then the footer (the
/// body's length, its CRC-32 and `magic_end`), fsynced, renamed into place, the directory
/// fsynced. Returns the file's size. `ops` name the write and the rename in errors.
pub(crate) fn write_checksummed(
    dir: &Path,
    name: &str,
    ops: [&'static str; 2],
    magic_end: &[u8; 8],
    body: impl FnOnce(&mut CrcWriter<BufWriter<File>>) -> io::Result<()>,
) -> Result<u64> {
    let path = dir.join(name);
    let tmp = dir.join(format!(".{name}.tmp"));
    let written = (|| -> io::Result<u64> {
        let file = File::create(&tmp)?;
        let mut w = CrcWriter::new(BufWriter::with_capacity(1 << 20, file));
        body(&mut w)?;
        let (len, crc) = (w.len, w.hasher.clone().finalize());
        let mut inner = w.inner;
        inner.write_all(&len.to_le_bytes())?;
        inner.write_all(&crc.to_le_bytes())?;
        inner.write_all(magic_end)?;
        let file = inner.into_inner().map_err(io::IntoInnerError::into_error)?;
        file.sync_all()?;
        Ok(len)
    })();
    let len = match written {
        Ok(len) => len,
        Err(e) => {
            let _ = fs::remove_file(&tmp);
            return Err(Error::io(ops[0], &tmp, e));
        }
    };
    fs::rename(&tmp, &path).map_err(|e| Error::io(ops[1], &path, e))?;
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| Error::io("fsync snapshot directory", dir, e))?;
    Ok(len + FOOTER_LEN)
}

/// Deletes all but the newest `keep` snapshots of the shard, the cold segment files none of
/// those names (all are kept when one cannot be read), and its leftover temp files.
pub(crate) fn prune(dir: &Path, shard: u32, keep: usize) -> Result<()> {
    let snapshots = list(dir, shard)?;
    for (_, path) in snapshots.iter().skip(keep) {
        fs::remove_file(path).map_err(|e| Error::io("delete old snapshot", path, e))?;
    }
    let named: Option<HashSet<String>> = snapshots
        .iter()
        .take(keep)
        .map(|(_, path)| segment_names(path))
        .try_fold(HashSet::new(), |mut all, names| {
            all.extend(names?);
            Some(all)
        });
    if let Some(named) = named {
        for name in cold::list(dir, shard) {
            if !named.contains(&name) {
                let path = dir.join(&name);
                fs::remove_file(&path)
                    .map_err(|e| Error::io("delete unused cold segment", &path, e))?;
            }
        }
    }
    let prefix = format!(".shard-{shard:05}-");
    if let Ok(entries) = fs::read_dir(dir) {
        for entry in entries.flatten() {
            let name = entry.file_name();
            if name
                .to_str()
                .is_some_and(|n| n.starts_with(&prefix) && n.ends_with(".tmp"))
            {
                let _ = fs::remove_file(entry.path());
            }
        }
    }
    Ok(())
}

/// Loads the newest valid snapshot of the shard. Corrupt files are reported through
/// `on_corrupt`, renamed to `*.corrupt` and skipped; a valid file of another layout is an
/// error.
pub(crate) fn load_newest(
    dir: &Path,
    expect: Header,
    mut on_corrupt: impl FnMut(&Path, &Error),
) -> Result<Option<Loaded>> {
    for (seq, path) in list(dir, expect.shard)? {
        match read(&path, expect) {
            Ok(loaded) => return Ok(Some(Loaded { seq, ..loaded })),
            Err(e @ Error::SnapshotCorrupt { .. }) => {
                on_corrupt(&path, &e);
                let aside = path.with_extension("snap.corrupt");
                fs::rename(&path, &aside)
                    .map_err(|e| Error::io("move corrupt snapshot aside", &path, e))?;
            }
            Err(e) => return Err(e),
        }
    }
    Ok(None)
}

/// The cold segments a snapshot names, read from its head only (no checksum); `None` when
/// the head cannot be read.
fn segment_names(path: &Path) -> Option<Vec<String>> {
    let file = File::open(path).ok()?;
    let size = file.metadata().ok()?.len();
    let mut r = CrcReader {
        inner: BufReader::new(file),
        hasher: crc32fast::Hasher::new(),
        left: size.checked_sub(FOOTER_LEN)?,
        format: FORMAT_VERSION,
    };
    let mut magic = [0u8; 8];
    r.exact(&mut magic).ok()?;
    if &magic != MAGIC {
        return None;
    }
    r.format = r.u32().ok()?;
    r.skip(4 * 4 + 8 + 8).ok()?;
    if r.format < 4 {
        return Some(Vec::new());
    }
    read_segment_refs(&mut r)
        .ok()
        .map(|refs| refs.into_iter().map(|s| s.name).collect())
}

fn read_segment_refs<R: Read>(r: &mut CrcReader<R>) -> io::Result<Vec<SegmentRef>> {
    (0..r.count(20)?)
        .map(|_| {
            let (name, items) = (r.str()?, r.u64()?);
            let dead = (0..r.count(4)?)
                .map(|_| r.str())
                .collect::<io::Result<HashSet<_>>>()?;
            Ok(SegmentRef { name, items, dead })
        })
        .collect()
}

fn write_all<W: io::Write>(
    w: &mut CrcWriter<W>,
    h: Header,
    seq: u64,
    created_ms: i64,
    c: &Content<'_>,
) -> io::Result<()> {
    w.bytes(MAGIC)?;
    for v in [FORMAT_VERSION, h.shard, h.shards, h.dim, h.routing] {
        w.u32(v)?;
    }
    w.u64(seq)?;
    w.i64(created_ms)?;

    w.u64(c.cold.len() as u64)?;
    for segment in c.cold {
        w.str(&segment.name)?;
        w.u64(segment.main.len() as u64)?;
        let mut dead: Vec<_> = segment.dead.iter().collect();
        dead.sort();
        w.u64(dead.len() as u64)?;
        for id in dead {
            w.str(id)?;
        }
    }

    w.u64(c.covered.len() as u64)?;
    for (&p, &o) in c.covered {
        w.i32(p)?;
        w.i64(o)?;
    }
    match c.last {
        None => w.bytes(&[0])?,
        Some(r) => {
            w.bytes(&[1])?;
            w.u64(r.count)?;
            w.i64(r.finished_at_ms)?;
            w.u64(r.duration_ms)?;
            w.bytes(&[reason_code(r.reason)])?;
        }
    }

    let graph = c.main.graph();
    w.u64(c.main.len() as u64)?;
    for row in c.main.rows() {
        w.row(row)?;
    }
    w.f32s(&graph.vectors)?;
    w.u32s(&graph.zero)?;
    w.u64(graph.layers.len() as u64)?;
    for layer in &graph.layers {
        w.u64((layer.len() / M) as u64)?;
        w.u32s(layer)?;
    }

    w.u64(c.hot.len() as u64)?;
    for (i, row) in c.hot.rows().iter().enumerate() {
        w.row(row)?;
        w.f32s(c.hot.vector(i))?;
    }

    // Sorted, so that the same state always gives the same bytes.
    let mut deletes: Vec<_> = c.deletes.iter().collect();
    deletes.sort();
    w.u64(deletes.len() as u64)?;
    for (id, v) in deletes {
        w.str(id)?;
        w.version(*v)?;
    }
    let mut graveyard: Vec<_> = c.graveyard.iter().collect();
    graveyard.sort();
    w.u64(graveyard.len() as u64)?;
    for (id, (v, at)) in graveyard {
        w.str(id)?;
        w.version(*v)?;
        w.i64(*at)?;
    }
    Ok(())
}

fn reason_code(r: CompactionReason) -> u8 {
    match r {
        CompactionReason::HotShare => 1,
        CompactionReason::Tombstones => 2,
        CompactionReason::Interval => 3,
        CompactionReason::Manual => 4,
        CompactionReason::Recall => 5,
        CompactionReason::Age => 6,
    }
}

fn reason_from(code: u8) -> Option<CompactionReason> {
    Some(match code {
        1 => CompactionReason::HotShare,
        2 => CompactionReason::Tombstones,
        3 => CompactionReason::Interval,
        4 => CompactionReason::Manual,
        5 => CompactionReason::Recall,
        6 => CompactionReason::Age,
        _ => return None,
    })
}

/// Reads a file [`write_checksummed`] wrote: checks the footer (`magic_end`, the length),
/// runs `parse` over the body, hashes whatever it left unread, and checks the checksum before
/// handing back what it parsed, with the file's size. Checksum first: a parse error in a file
/// whose checksum fails is corruption, whatever the parser said. The inner error is the
/// reason the file is corrupt; `io_op` names reading it in I/O errors.
pub(crate) fn read_checksummed<T>(
    path: &Path,
    magic_end: &[u8; 8],
    io_op: &'static str,
    parse: impl FnOnce(&mut CrcReader<BufReader<File>>) -> T,
) -> Result<std::result::Result<(T, u64), &'static str>> {
    let io = |e| Error::io(io_op, path, e);
    let mut file = File::open(path).map_err(io)?;
    let size = file.metadata().map_err(io)?.len();
    if size < FOOTER_LEN + 8 {
        return Ok(Err("shorter than header and footer"));
    }
    file.seek(SeekFrom::Start(size - FOOTER_LEN)).map_err(io)?;
    let mut footer = [0u8; FOOTER_LEN as usize];
    file.read_exact(&mut footer).map_err(io)?;
    if &footer[12..] != magic_end {
        return Ok(Err("footer missing (truncated or partial write)"));
    }
    let body_len = u64::from_le_bytes(footer[..8].try_into().expect("8 bytes"));
    let want_crc = u32::from_le_bytes(footer[8..12].try_into().expect("4 bytes"));
    if body_len != size - FOOTER_LEN {
        return Ok(Err("length in footer does not match file size"));
    }
    file.seek(SeekFrom::Start(0)).map_err(io)?;
    let mut r = CrcReader {
        inner: BufReader::with_capacity(1 << 20, file),
        hasher: crc32fast::Hasher::new(),
        left: body_len,
        format: FORMAT_VERSION,
    };
    let parsed = parse(&mut r);
    let mut rest = Vec::new();
    let tail = r.by_ref_take_rest(&mut rest);
    if tail.is_err() || r.hasher.clone().finalize() != want_crc {
        return Ok(Err("checksum mismatch"));
    }
    Ok(Ok((parsed, size)))
}

fn read(path: &Path, expect: Header) -> Result<Loaded> {
    let corrupt = |reason| Error::SnapshotCorrupt {
        path: path.to_owned(),
        reason,
    };
    let (parsed, _) =
        read_checksummed(path, MAGIC_END, "read snapshot", |r| parse(r, path))?.map_err(corrupt)?;
    let (header, mut loaded, refs) = parsed?;
    if header != expect {
        return Err(Error::SnapshotIncompatible {
            path: path.to_owned(),
            reason: format!("snapshot has {header:?}, the index is {expect:?}"),
        });
    }
    let dir = path.parent().unwrap_or(Path::new("."));
    for r in refs {
        let opened = cold::open(dir, &r.name, header.shard, header.dim as usize);
        let (main, bytes) = match opened {
            Ok(o) if o.0.len() as u64 == r.items && r.dead.iter().all(|id| o.0.contains(id)) => o,
            Ok(_) => return Err(corrupt("a cold segment it names holds other items")),
            Err(e) => {
                tracing::warn!(snapshot = %path.display(), segment = %r.name, error = %e, "Cold segment of a snapshot cannot be used.");
                return Err(corrupt("a cold segment it names is missing or corrupt"));
            }
        };
        loaded.cold.push(Segment {
            name: r.name,
            main: std::sync::Arc::new(main),
            dead: std::sync::Arc::new(r.dead),
            bytes,
        });
    }
    Ok(loaded)
}

/// The snapshot's content, and the cold segments it names (opened by [`read`] once the
/// checksum has passed).
fn parse<R: Read>(r: &mut CrcReader<R>, path: &Path) -> Result<(Header, Loaded, Vec<SegmentRef>)> {
    let corrupt = |reason| Error::SnapshotCorrupt {
        path: path.to_owned(),
        reason,
    };
    let short = |_| corrupt("content ends early or a length is out of range");
    let mut magic = [0u8; 8];
    r.exact(&mut magic).map_err(short)?;
    if &magic != MAGIC {
        return Err(corrupt("not a snapshot (magic)"));
    }
    let version = r.u32().map_err(short)?;
    r.format = version;
    if !(OLDEST_READABLE..=FORMAT_VERSION).contains(&version) {
        return Err(Error::SnapshotIncompatible {
            path: path.to_owned(),
            reason: format!("format version {version}, this build reads {FORMAT_VERSION}"),
        });
    }
    let header = Header {
        shard: r.u32().map_err(short)?,
        shards: r.u32().map_err(short)?,
        dim: r.u32().map_err(short)?,
        routing: r.u32().map_err(short)?,
    };
    let seq = r.u64().map_err(short)?;
    let created_ms = r.i64().map_err(short)?;
    let dim = header.dim as usize;
    let body = (|| -> io::Result<_> {
        let cold = if r.format >= 4 {
            read_segment_refs(r)?
        } else {
            Vec::new()
        };
        let mut covered = BTreeMap::new();
        for _ in 0..r.count(12)? {
            covered.insert(r.i32()?, r.i64()?);
        }
        let mut flag = [0u8];
        r.exact(&mut flag)?;
        let last = match flag[0] {
            0 => None,
            _ => {
                let (count, finished_at_ms, duration_ms) = (r.u64()?, r.i64()?, r.u64()?);
                r.exact(&mut flag)?;
                Some((count, finished_at_ms, duration_ms, flag[0]))
            }
        };
        let n = r.count(24 + 4 * dim + 4 * M0)?;
        let rows = (0..n).map(|_| r.row()).collect::<io::Result<Vec<_>>>()?;
        let vectors = r.f32s(n * dim)?;
        let zero = r.u32s(n * M0)?;
        let mut layers = Vec::new();
        for _ in 0..r.count(8)? {
            let len = r.count(4 * M)?;
            layers.push(r.u32s(len * M)?);
        }
        let mut hot = Hot::new(dim);
        for _ in 0..r.count(24 + 4 * dim)? {
            let row = r.row()?;
            let v = r.f32s(dim)?;
            hot.upsert(row, &v);
        }
        let mut deletes = HashMap::new();
        for _ in 0..r.count(16)? {
            let id = r.str()?;
            deletes.insert(id, r.version()?);
        }
        let mut graveyard = HashMap::new();
        if r.format >= 2 {
            for _ in 0..r.count(36)? {
                let id = r.str()?;
                let v = r.version()?;
                graveyard.insert(id, (v, r.i64()?));
            }
        }
        Ok((
            cold, covered, last, rows, vectors, zero, layers, hot, deletes, graveyard,
        ))
    })();
    let (cold, covered, last, rows, vectors, zero, layers, hot, deletes, graveyard) =
        body.map_err(short)?;
    if r.left != 0 {
        return Err(corrupt("bytes after the content"));
    }
    let last = match last {
        None => None,
        Some((count, finished_at_ms, duration_ms, code)) => Some(CompactionRecord {
            count,
            finished_at_ms,
            duration_ms,
            reason: reason_from(code).ok_or_else(|| corrupt("unknown compaction reason"))?,
        }),
    };
    let graph = Graph::new(dim, vectors, zero, layers);
    graph.check().map_err(corrupt)?;
    let n = rows.len();
    let main = MainIndex::from_parts(graph, rows);
    if main.distinct_ids() != n {
        return Err(corrupt("duplicate item ids in main"));
    }
    Ok((
        header,
        Loaded {
            path: path.to_owned(),
            format: r.format,
            seq,
            created_ms,
            main,
            hot,
            deletes,
            graveyard,
            covered,
            last,
            cold: Vec::new(),
        },
        cold,
    ))
}

pub(crate) struct CrcWriter<W> {
    pub(crate) inner: W,
    pub(crate) hasher: crc32fast::Hasher,
    pub(crate) len: u64,
    buf: Vec<u8>,
}

impl<W: io::Write> CrcWriter<W> {
    pub(crate) fn new(inner: W) -> Self {
        Self {
            inner,
            hasher: crc32fast::Hasher::new(),
            len: 0,
            buf: Vec::with_capacity(1 << 16),
        }
    }
    pub(crate) fn bytes(&mut self, b: &[u8]) -> io::Result<()> {
        self.hasher.update(b);
        self.len += b.len() as u64;
        self.inner.write_all(b)
    }
    pub(crate) fn u32(&mut self, v: u32) -> io::Result<()> {
        self.bytes(&v.to_le_bytes())
    }
    pub(crate) fn i32(&mut self, v: i32) -> io::Result<()> {
        self.bytes(&v.to_le_bytes())
    }
    pub(crate) fn u64(&mut self, v: u64) -> io::Result<()> {
        self.bytes(&v.to_le_bytes())
    }
    pub(crate) fn i64(&mut self, v: i64) -> io::Result<()> {
        self.bytes(&v.to_le_bytes())
    }
    pub(crate) fn str(&mut self, s: &str) -> io::Result<()> {
        self.u32(s.len() as u32)?;
        self.bytes(s.as_bytes())
    }
    /// Id, version, event time, then the attributes: their count and each name and value.
    pub(crate) fn row(&mut self, r: &Row) -> io::Result<()> {
        self.str(&r.id)?;
        self.version(r.version)?;
        self.i64(r.event_time_ms)?;
        self.u64(r.attributes.len() as u64)?;
        for (name, value) in r.attributes.iter() {
            self.str(name)?;
            self.str(value)?;
        }
        Ok(())
    }
    /// Partition, offset, then the source's (partition −1 when there is none).
    pub(crate) fn version(&mut self, v: Version) -> io::Result<()> {
        self.i32(v.partition)?;
        self.i64(v.offset)?;
        let s = v.source.unwrap_or(Source {
            partition: -1,
            offset: -1,
        });
        self.i32(s.partition)?;
        self.i64(s.offset)
    }
    pub(crate) fn f32s(&mut self, v: &[f32]) -> io::Result<()> {
        self.words(v, f32::to_le_bytes)
    }
    pub(crate) fn u32s(&mut self, v: &[u32]) -> io::Result<()> {
        self.words(v, u32::to_le_bytes)
    }
    pub(crate) fn words<T: Copy>(&mut self, v: &[T], f: fn(T) -> [u8; 4]) -> io::Result<()> {
        for chunk in v.chunks(1 << 14) {
            let mut buf = std::mem::take(&mut self.buf);
            buf.clear();
            buf.extend(chunk.iter().flat_map(|&x| f(x)));
            let res = self.bytes(&buf);
            self.buf = buf;
            res?;
        }
        Ok(())
    }
}

pub(crate) struct CrcReader<R> {
    pub(crate) inner: R,
    pub(crate) hasher: crc32fast::Hasher,
    /// Bytes of content not read yet.
    pub(crate) left: u64,
    /// Format version of the file (what its rows hold).
    pub(crate) format: u32,
}

fn out_of_range() -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, "length out of range")
}

impl<R: Read> CrcReader<R> {
    pub(crate) fn exact(&mut self, buf: &mut [u8]) -> io::Result<()> {
        if buf.len() as u64 > self.left {
            return Err(out_of_range());
        }
        self.inner.read_exact(buf)?;
        self.hasher.update(buf);
        self.left -= buf.len() as u64;
        Ok(())
    }
    pub(crate) fn arr<const N: usize>(&mut self) -> io::Result<[u8; N]> {
        let mut b = [0u8; N];
        self.exact(&mut b)?;
        Ok(b)
    }
    pub(crate) fn u32(&mut self) -> io::Result<u32> {
        self.arr().map(u32::from_le_bytes)
    }
    pub(crate) fn i32(&mut self) -> io::Result<i32> {
        self.arr().map(i32::from_le_bytes)
    }
    pub(crate) fn u64(&mut self) -> io::Result<u64> {
        self.arr().map(u64::from_le_bytes)
    }
    pub(crate) fn i64(&mut self) -> io::Result<i64> {
        self.arr().map(i64::from_le_bytes)
    }
    /// A count of items of at least `min_size` bytes each, bounded by what is left.
    pub(crate) fn count(&mut self, min_size: usize) -> io::Result<usize> {
        let n = self.u64()?;
        if n.saturating_mul(min_size.max(1) as u64) > self.left {
            return Err(out_of_range());
        }
        Ok(n as usize)
    }
    pub(crate) fn str(&mut self) -> io::Result<String> {
        let len = self.u32()? as usize;
        if len as u64 > self.left {
            return Err(out_of_range());
        }
        let mut b = vec![0u8; len];
        self.exact(&mut b)?;
        String::from_utf8(b).map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "not UTF-8"))
    }
    pub(crate) fn row(&mut self) -> io::Result<Row> {
        let (id, version, event_time_ms) = (self.str()?, self.version()?, self.i64()?);
        let attributes = if self.format >= 3 {
            let pairs = (0..self.count(8)?)
                .map(|_| Ok((self.str()?, self.str()?)))
                .collect::<io::Result<Vec<_>>>()?;
            Attributes::new(pairs)
        } else {
            Attributes::default()
        };
        Ok(Row {
            id,
            version,
            event_time_ms,
            attributes,
        })
    }
    pub(crate) fn version(&mut self) -> io::Result<Version> {
        let (partition, offset) = (self.i32()?, self.i64()?);
        if self.format < 2 {
            return Ok(Version {
                partition,
                offset,
                source: None,
            });
        }
        let (sp, so) = (self.i32()?, self.i64()?);
        Ok(Version {
            partition,
            offset,
            source: (sp >= 0).then_some(Source {
                partition: sp,
                offset: so,
            }),
        })
    }
    pub(crate) fn f32s(&mut self, n: usize) -> io::Result<Vec<f32>> {
        self.words(n, f32::from_le_bytes)
    }
    pub(crate) fn u32s(&mut self, n: usize) -> io::Result<Vec<u32>> {
        self.words(n, u32::from_le_bytes)
    }
    pub(crate) fn words<T>(&mut self, n: usize, f: fn([u8; 4]) -> T) -> io::Result<Vec<T>> {
        if (n as u64).saturating_mul(4) > self.left {
            return Err(out_of_range());
        }
        let mut out = Vec::with_capacity(n);
        let mut buf = vec![0u8; 4 * n.min(1 << 14)];
        let mut todo = n;
        while todo > 0 {
            let take = todo.min(1 << 14);
            let b = &mut buf[..4 * take];
            self.exact(b)?;
            out.extend(b.chunks_exact(4).map(|c| f(c.try_into().expect("4 bytes"))));
            todo -= take;
        }
        Ok(out)
    }
    /// Hashes the next `n` bytes without keeping them.
    pub(crate) fn skip(&mut self, n: u64) -> io::Result<()> {
        if n > self.left {
            return Err(out_of_range());
        }
        let mut buf = vec![0u8; (n as usize).min(1 << 16)];
        let mut todo = n;
        while todo > 0 {
            let b = &mut buf[..(todo as usize).min(1 << 16)];
            self.exact(b)?;
            todo -= b.len() as u64;
        }
        Ok(())
    }
    /// Hashes whatever content the parser left unread (after a parse error).
    pub(crate) fn by_ref_take_rest(&mut self, scratch: &mut Vec<u8>) -> io::Result<()> {
        scratch.resize(1 << 16, 0);
        while self.left > 0 {
            let take = (self.left as usize).min(scratch.len());
            let b = &mut scratch[..take];
            self.inner.read_exact(b)?;
            self.hasher.update(b);
            self.left -= take as u64;
        }
        Ok(())
    }
}
