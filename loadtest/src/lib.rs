//! What the benchmark drivers share: reading the vector sets and little-endian arrays
//! `index_data.py` writes,
//! the nearest-rank quantile of sorted samples, and the MiniLM embedding record they write.

use std::path::Path;

use anyhow::{Context, Result};
use embedstream_schemas::records::{EmbeddingRecord, SourceCoordinates};
use embedstream_topics::time::now_ms;

/// A MiniLM v1 embedding record of `item_id`, as the stage writes it, naming the source event
/// at `source_offset` of `items` partition 0 (a later offset is a newer event).
pub fn embedding_record(item_id: String, vector: Vec<f32>, source_offset: i64) -> EmbeddingRecord {
    let now = now_ms();
    EmbeddingRecord {
        item_id,
        model_id: "minilm-l6-v2".into(),
        model_version: 1,
        dimension: vector.len() as i32,
        vector,
        normalized: true,
        source: SourceCoordinates {
            topic: "items".into(),
            partition: 0,
            offset: source_offset,
        },
        event_time: now,
        embed_time: now,
        attributes: Default::default(),
        request_id: None,
    }
}

/// A vector set written by `index_data.py`: base rows, held-out queries and each query's
/// exact top 100 rows.
#[derive(Debug)]
pub struct VectorSet {
    pub dim: usize,
    /// `n * dim`, by row.
    pub base: Vec<f32>,
    pub queries: Vec<f32>,
    /// Exact top-100 rows per query.
    pub truth: Vec<u32>,
}

impl VectorSet {
    /// Reads `dir` (meta.json, queries.f32, truth.u32, and base.f32 when `with_base`).
    pub fn load(dir: &Path, with_base: bool) -> Result<Self> {
        let meta: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dir.join("meta.json")).context("meta.json")?)?;
        let dim = meta["dim"].as_u64().context("meta.dim")? as usize;
        let base = if with_base {
            read_le_words(&dir.join("base.f32"), f32::from_le_bytes)?
        } else {
            Vec::new()
        };
        let queries = read_le_words(&dir.join("queries.f32"), f32::from_le_bytes)?;
        let truth = read_le_words(&dir.join("truth.u32"), u32::from_le_bytes)?;
        if base.len() % dim != 0 || truth.len() != queries.len() / dim * 100 {
            anyhow::bail!("data files do not match meta.json");
        }
        Ok(Self {
            dim,
            base,
            queries,
            truth,
        })
    }

    /// Base rows.
    pub fn n(&self) -> usize {
        self.base.len() / self.dim
    }

    pub fn row(&self, i: usize) -> &[f32] {
        &self.base[i * self.dim..(i + 1) * self.dim]
    }

    /// Queries.
    pub fn nq(&self) -> usize {
        self.queries.len() / self.dim
    }

    pub fn query(&self, q: usize) -> &[f32] {
        &self.queries[q * self.dim..(q + 1) * self.dim]
    }

    /// How many of `item_ids` (`<one-letter prefix><row>`) are among query `q`'s exact top 10.
    pub fn hits_in_top10<'a>(
        &self,
        q: usize,
        item_ids: impl IntoIterator<Item = &'a str>,
    ) -> usize {
        let want = &self.truth[q * 100..q * 100 + 10];
        item_ids
            .into_iter()
            .filter_map(|id| id.get(1..)?.parse::<u32>().ok())
            .filter(|row| want.contains(row))
            .count()
    }
}

/// A file of little-endian 4-byte words (`base.f32`, `truth.u32`, ...), decoded by `from`
/// (`f32::from_le_bytes`, `u32::from_le_bytes`).
pub fn read_le_words<T>(path: &Path, from: fn([u8; 4]) -> T) -> Result<Vec<T>> {
    let bytes = std::fs::read(path).with_context(|| path.display().to_string())?;
    Ok(bytes
        .chunks_exact(4)
        .map(|b| from([b[0], b[1], b[2], b[3]]))
        .collect())
}

/// The sample at quantile `q` (0..=1) of `sorted` (nearest rank, rounded). Panics if empty.
pub fn at_quantile<T: Copy>(sorted: &[T], q: f64) -> T {
    sorted[((sorted.len() - 1) as f64 * q).round() as usize]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_pick_the_nearest_rank() {
        let v: Vec<u32> = (0..=100).collect();
        assert_eq!(at_quantile(&v, 0.5), 50);
        assert_eq!(at_quantile(&v, 0.99), 99);
        assert_eq!(at_quantile(&v, 1.0), 100);
        assert_eq!(at_quantile(&[7], 0.99), 7);
    }
}
