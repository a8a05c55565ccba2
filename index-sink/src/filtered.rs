//! Filtered search in a main part: the attribute postings of its items, the set of items a
//! filter selects, and the choice between the two strategies.
//!
//! A main part is immutable, so its postings are built once with it (at compaction or when a
//! snapshot is read): per attribute name, the items of each value, and the items whose value
//! is a finite number sorted by it. A filter then selects its items exactly — a bitset over
//! the part's items, from postings and binary searches, in time linear in the matches plus
//! one word per 64 items and condition — so the strategy is chosen on the true count, not an
//! estimate:
//! - **narrow** (at most [`FilterPlan::exact_max`] items match): an exact scan of the matching
//!   items' vectors. Exact results, and cheaper than a graph walk that would have to cross
//!   many non-matching nodes to find enough matching ones;
//! - **broad**: the HNSW walk over every node, keeping the nearest matching ones as results
//!   (the nodes that do not match still lead the walk). The walk meets matching nodes at the
//!   rate they occur, so its width is the query's `ef` times the square root of the matching
//!   share (at least `k`): `ef` itself would cost 1 / share times an unfiltered walk,
//!   `ef` × share the same work as one but less recall on data without structure.

use std::collections::HashMap;
use std::ops::Bound;

use embedstream_schemas::filter::{Filter, number_value};

use crate::hot::Row;

/// Items of a main part by pid, as bits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Bits {
    words: Vec<u64>,
}

impl Bits {
    fn none(n: usize) -> Self {
        Self {
            words: vec![0; n.div_ceil(64)],
        }
    }

    fn set(&mut self, pid: u32) {
        self.words[pid as usize / 64] |= 1 << (pid % 64);
    }

    /// Whether `pid` is in the set.
    #[inline]
    pub(crate) fn contains(&self, pid: u32) -> bool {
        self.words[pid as usize / 64] & (1 << (pid % 64)) != 0
    }

    /// How many are in the set.
    pub(crate) fn count(&self) -> usize {
        self.words.iter().map(|w| w.count_ones() as usize).sum()
    }

    /// The pids in the set, ascending.
    pub(crate) fn iter(&self) -> impl Iterator<Item = u32> + '_ {
        self.words.iter().enumerate().flat_map(|(i, &w)| {
            let mut w = w;
            std::iter::from_fn(move || {
                (w != 0).then(|| {
                    let bit = w.trailing_zeros();
                    w &= w - 1;
                    (i * 64) as u32 + bit
                })
            })
        })
    }
}

/// The attribute postings of a main part.
#[derive(Debug, Default)]
pub(crate) struct AttributeIndex {
    /// Name → value → pids, ascending.
    values: HashMap<Box<str>, HashMap<Box<str>, Vec<u32>>>,
    /// Name → (number, pid) for the values that are finite numbers, by number.
    numbers: HashMap<Box<str>, Vec<(f64, u32)>>,
}

impl AttributeIndex {
    /// The postings of `rows` (by pid).
    pub(crate) fn build(rows: &[Row]) -> Self {
        let mut index = Self::default();
        for (pid, row) in rows.iter().enumerate() {
            let pid = pid as u32;
            for (name, value) in row.attributes.iter() {
                index
                    .values
                    .entry(name.into())
                    .or_default()
                    .entry(value.into())
                    .or_default()
                    .push(pid);
                if let Some(x) = number_value(value) {
                    index.numbers.entry(name.into()).or_default().push((x, pid));
                }
            }
        }
        for sorted in index.numbers.values_mut() {
            sorted.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
        }
        index
    }

    /// The items of a part of `n` items that `filter` selects.
    pub(crate) fn select(&self, filter: &Filter, n: usize) -> Bits {
        match filter {
            Filter::And(parts) => {
                let mut parts = parts.iter();
                let mut bits = match parts.next() {
                    Some(first) => self.select(first, n),
                    None => return Bits::none(n),
                };
                for part in parts {
                    let other = self.select(part, n);
                    for (a, b) in bits.words.iter_mut().zip(&other.words) {
                        *a &= b;
                    }
                }
                bits
            }
            Filter::Or(parts) => {
                let mut bits = Bits::none(n);
                for part in parts {
                    let other = self.select(part, n);
                    for (a, b) in bits.words.iter_mut().zip(&other.words) {
                        *a |= b;
                    }
                }
                bits
            }
            Filter::Keyword { attribute, values } => {
                let mut bits = Bits::none(n);
                if let Some(by_value) = self.values.get(attribute.as_str()) {
                    for value in values {
                        for &pid in by_value.get(value.as_str()).into_iter().flatten() {
                            bits.set(pid);
                        }
                    }
                }
                bits
            }
            Filter::Number { attribute, values } => {
                let mut bits = Bits::none(n);
                for &v in values {
                    self.set_range(&mut bits, attribute, Bound::Included(v), Bound::Included(v));
                }
                bits
            }
            Filter::Range {
                attribute,
                min,
                max,
            } => {
                let mut bits = Bits::none(n);
                self.set_range(&mut bits, attribute, *min, *max);
                bits
            }
        }
    }

    fn set_range(&self, bits: &mut Bits, attribute: &str, min: Bound<f64>, max: Bound<f64>) {
        let Some(sorted) = self.numbers.get(attribute) else {
            return;
        };
        let start = match min {
            Bound::Included(m) => sorted.partition_point(|(x, _)| *x < m),
            Bound::Excluded(m) => sorted.partition_point(|(x, _)| *x <= m),
            Bound::Unbounded => 0,
        };
        let end = match max {
            Bound::Included(m) => sorted.partition_point(|(x, _)| *x <= m),
            Bound::Excluded(m) => sorted.partition_point(|(x, _)| *x < m),
            Bound::Unbounded => sorted.len(),
        };
        for &(_, pid) in sorted.get(start..end).unwrap_or_default() {
            bits.set(pid);
        }
    }
}

/// How a part answers a filtered query: see the module docs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct FilterPlan {
    /// The most matching items scanned exactly; more take the graph walk.
    pub(crate) exact_max: usize,
}

/// Which strategy answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Strategy {
    /// An exact scan of the matching items.
    Exact,
    /// The HNSW walk keeping matching items.
    Graph,
}

impl Strategy {
    pub(crate) fn label(self) -> &'static str {
        match self {
            Self::Exact => "exact",
            Self::Graph => "graph",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::{Attributes, Version};
    use embedstream_schemas::filter::{AttributeKind, Declared, parse};
    use serde_json::json;

    fn rows() -> Vec<Row> {
        (0..200)
            .map(|i| Row {
                id: format!("i{i}"),
                version: Version {
                    partition: 0,
                    offset: i,
                    source: None,
                },
                event_time_ms: 0,
                attributes: Attributes::new([
                    ("bucket".to_owned(), (i % 10).to_string()),
                    (
                        "parity".to_owned(),
                        if i % 2 == 0 { "even" } else { "odd" }.to_owned(),
                    ),
                ]),
            })
            .collect()
    }

    #[test]
    fn postings_select_what_the_filter_matches_item_by_item() {
        let rows = rows();
        let index = AttributeIndex::build(&rows);
        let declared = Declared::from([
            ("bucket".to_owned(), AttributeKind::Number),
            ("parity".to_owned(), AttributeKind::Keyword),
            ("absent".to_owned(), AttributeKind::Number),
        ]);
        for json in [
            json!({"attribute": "bucket", "eq": 3}),
            json!({"attribute": "bucket", "in": [1, 2, 9]}),
            json!({"attribute": "bucket", "gt": 2, "lte": 5}),
            json!({"attribute": "bucket", "gte": 8}),
            json!({"attribute": "parity", "eq": "odd"}),
            json!({"and": [{"attribute": "parity", "eq": "odd"}, {"attribute": "bucket", "lt": 4}]}),
            json!({"or": [{"attribute": "parity", "eq": "even"}, {"attribute": "bucket", "eq": 3}]}),
            json!({"attribute": "absent", "gte": 0}),
        ] {
            let filter = parse(&json, &declared).unwrap();
            let bits = index.select(&filter, rows.len());
            let want: Vec<u32> = (0..rows.len() as u32)
                .filter(|&p| filter.matches(&|name| rows[p as usize].attributes.get(name)))
                .collect();
            assert_eq!(bits.iter().collect::<Vec<_>>(), want, "{json}");
            assert_eq!(bits.count(), want.len());
        }
    }
}
