//! The hot part of a shard: every write since the last rebuild, searched exactly.
//!
//! Vectors live in one contiguous `Vec<f32>` (row-major, one row per item) so a query is a
//! linear scan the CPU prefetches well; an upsert of a present item overwrites its row in
//! place, a delete swap-removes the row (O(1), order is not kept). Changes are visible to the
//! next search: there is no buffering. Not thread-safe by itself; the shard's lock guards it.

use std::collections::HashMap;

use embedstream_schemas::filter::Filter;

use crate::topk::TopK;
use crate::types::{Attributes, Hit, ItemId, Version};
use crate::vector::dot;

/// What the index keeps about an item besides its vector.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Row {
    pub(crate) id: ItemId,
    pub(crate) version: Version,
    pub(crate) event_time_ms: i64,
    pub(crate) attributes: Attributes,
}

#[derive(Debug, Clone)]
pub(crate) struct Hot {
    dim: usize,
    vectors: Vec<f32>,
    rows: Vec<Row>,
    by_id: HashMap<ItemId, usize>,
}

impl Hot {
    pub(crate) fn new(dim: usize) -> Self {
        Self {
            dim,
            vectors: Vec::new(),
            rows: Vec::new(),
            by_id: HashMap::new(),
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.rows.len()
    }

    pub(crate) fn get(&self, id: &str) -> Option<&Row> {
        self.by_id.get(id).map(|&i| &self.rows[i])
    }

    pub(crate) fn contains(&self, id: &str) -> bool {
        self.by_id.contains_key(id)
    }

    /// Inserts or overwrites; `vector` must be normalized and of the shard's dimension.
    pub(crate) fn upsert(&mut self, row: Row, vector: &[f32]) {
        debug_assert_eq!(vector.len(), self.dim);
        match self.by_id.get(&row.id) {
            Some(&i) => {
                self.vectors[i * self.dim..(i + 1) * self.dim].copy_from_slice(vector);
                self.rows[i] = row;
            }
            None => {
                self.by_id.insert(row.id.clone(), self.rows.len());
                self.rows.push(row);
                self.vectors.extend_from_slice(vector);
            }
        }
    }

    pub(crate) fn remove(&mut self, id: &str) -> Option<Row> {
        let i = self.by_id.remove(id)?;
        let last = self.rows.len() - 1;
        if i != last {
            let (head, tail) = self.vectors.split_at_mut(last * self.dim);
            head[i * self.dim..(i + 1) * self.dim].copy_from_slice(&tail[..self.dim]);
            self.by_id.insert(self.rows[last].id.clone(), i);
        }
        self.vectors.truncate(last * self.dim);
        let row = self.rows.swap_remove(i);
        if self.rows.capacity() > 64 && self.rows.len() < self.rows.capacity() / 4 {
            self.rows.shrink_to(self.rows.len() * 2);
            self.vectors.shrink_to(self.vectors.len() * 2);
        }
        Some(row)
    }

    pub(crate) fn rows(&self) -> &[Row] {
        &self.rows
    }

    pub(crate) fn vector(&self, i: usize) -> &[f32] {
        &self.vectors[i * self.dim..(i + 1) * self.dim]
    }

    /// Exact top-`k` by dot product among the rows `filter` matches; `query` must be
    /// normalized.
    pub(crate) fn search(&self, query: &[f32], k: usize, filter: Option<&Filter>) -> Vec<Hit> {
        let mut top = TopK::new(k);
        for (row, v) in self.rows.iter().zip(self.vectors.chunks_exact(self.dim)) {
            if filter.is_none_or(|f| f.matches(&|name| row.attributes.get(name))) {
                top.offer(dot(query, v), &row.id);
            }
        }
        top.into_hits()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(id: &str, offset: i64) -> Row {
        Row {
            id: id.into(),
            version: Version {
                partition: 0,
                offset,
                source: None,
            },
            event_time_ms: 0,
            attributes: Attributes::default(),
        }
    }

    #[test]
    fn upsert_overwrite_and_swap_remove_keep_rows_and_vectors_aligned() {
        let mut h = Hot::new(2);
        h.upsert(row("a", 1), &[1.0, 0.0]);
        h.upsert(row("b", 2), &[0.0, 1.0]);
        h.upsert(row("c", 3), &[0.6, 0.8]);
        h.upsert(row("a", 4), &[-1.0, 0.0]);
        assert_eq!(h.len(), 3);
        assert_eq!(h.get("a").unwrap().version.offset, 4);
        assert_eq!(h.remove("a").unwrap().version.offset, 4);
        assert!(h.remove("a").is_none());
        // "c" moved into a's slot; its vector must have moved with it.
        for (i, r) in h.rows().iter().enumerate() {
            let want: &[f32] = if r.id == "b" {
                &[0.0, 1.0]
            } else {
                &[0.6, 0.8]
            };
            assert_eq!(h.vector(i), want, "{}", r.id);
            assert_eq!(h.get(&r.id), Some(r));
        }
        let hits = h.search(&[1.0, 0.0], 5, None);
        assert_eq!(hits.len(), 2);
        assert_eq!(hits[0].item_id, "c");
        assert!((hits[0].score - 0.6).abs() < 1e-6);
    }
}
