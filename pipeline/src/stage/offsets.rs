//! Which consumed offsets may be committed: per partition, everything below the oldest event
//! still in flight. An event is in flight from the moment its batch leaves the consumer until
//! every output record of it (embedding records of every active version, or its dead letter)
//! has been acknowledged by the broker.
//!
//! Guarantees: the commit point of a partition never passes an event that is not done, even
//! when later batches finish first; it only moves forward. Pure: the caller stores the offsets.

use std::collections::{BTreeMap, BTreeSet};

/// In-flight events of the partitions this process owns.
#[derive(Debug, Default)]
pub struct OffsetTracker {
    partitions: BTreeMap<(String, i32), PartitionState>,
}

#[derive(Debug, Default)]
struct PartitionState {
    in_flight: BTreeSet<i64>,
    /// One past the highest offset seen (submitted) so far.
    next: i64,
    /// The last commit point handed out.
    committed: i64,
}

impl PartitionState {
    fn commit_point(&self) -> i64 {
        self.in_flight.first().copied().unwrap_or(self.next)
    }
}

impl OffsetTracker {
    /// Marks events as in flight (in offset order within a partition).
    pub fn submit(&mut self, events: impl IntoIterator<Item = (String, i32, i64)>) {
        for (topic, partition, offset) in events {
            let p = self.partitions.entry((topic, partition)).or_default();
            if p.in_flight.is_empty() && p.next == 0 {
                p.committed = offset;
            }
            p.in_flight.insert(offset);
            p.next = p.next.max(offset + 1);
        }
    }

    /// Marks events as done and returns, per partition whose commit point moved, the new
    /// commit point (the offset of the next event to consume).
    pub fn complete(
        &mut self,
        events: impl IntoIterator<Item = (String, i32, i64)>,
    ) -> Vec<(String, i32, i64)> {
        let mut touched = BTreeSet::new();
        for (topic, partition, offset) in events {
            if let Some(p) = self.partitions.get_mut(&(topic.clone(), partition))
                && p.in_flight.remove(&offset)
            {
                touched.insert((topic, partition));
            }
        }
        let mut moved = Vec::new();
        for key in touched {
            if let Some(p) = self.partitions.get_mut(&key) {
                let point = p.commit_point();
                if point > p.committed {
                    p.committed = point;
                    moved.push((key.0.clone(), key.1, point));
                }
            }
        }
        moved
    }

    /// Events still in flight in one partition.
    pub fn in_flight(&self, topic: &str, partition: i32) -> usize {
        self.partitions
            .get(&(topic.to_owned(), partition))
            .map_or(0, |p| p.in_flight.len())
    }

    /// Events in flight in all partitions.
    pub fn total_in_flight(&self) -> usize {
        self.partitions.values().map(|p| p.in_flight.len()).sum()
    }

    /// Forgets a partition this process no longer owns (after it was drained or given up).
    pub fn forget(&mut self, topic: &str, partition: i32) {
        self.partitions.remove(&(topic.to_owned(), partition));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(p: i32, o: i64) -> (String, i32, i64) {
        ("items".to_owned(), p, o)
    }

    #[test]
    fn commit_point_waits_for_the_oldest_event() {
        let mut t = OffsetTracker::default();
        t.submit([ev(0, 10), ev(0, 11), ev(0, 12), ev(1, 5)]);
        // A later event finishing first moves nothing.
        assert!(t.complete([ev(0, 12)]).is_empty());
        assert!(t.complete([ev(0, 11)]).is_empty());
        assert_eq!(t.complete([ev(0, 10)]), vec![ev(0, 13)]);
        assert_eq!(t.complete([ev(1, 5)]), vec![ev(1, 6)]);
        assert_eq!(t.total_in_flight(), 0);
    }

    #[test]
    fn gaps_in_offsets_are_fine_and_the_point_only_moves_forward() {
        let mut t = OffsetTracker::default();
        // Compacted topics have gaps.
        t.submit([ev(0, 3), ev(0, 7)]);
        assert_eq!(t.complete([ev(0, 3)]), vec![ev(0, 7)]);
        t.submit([ev(0, 9)]);
        assert_eq!(t.complete([ev(0, 9)]), Vec::<(String, i32, i64)>::new());
        assert_eq!(t.in_flight("items", 0), 1);
        assert_eq!(t.complete([ev(0, 7)]), vec![ev(0, 10)]);
        // Completing twice or completing the unknown changes nothing.
        assert!(t.complete([ev(0, 7), ev(4, 1)]).is_empty());
    }

    #[test]
    fn forgetting_a_partition_drops_its_state() {
        let mut t = OffsetTracker::default();
        t.submit([ev(2, 1)]);
        t.forget("items", 2);
        assert_eq!(t.in_flight("items", 2), 0);
        assert!(t.complete([ev(2, 1)]).is_empty());
    }
}
