//! Which shard an item lives in: the platform's item hash
//! ([`embedstream_topics::hash::fnv1a64`]) modulo the shard count. The function is fixed (no
//! per-process keys), so every process, replica and restart routes an item to the same shard;
//! snapshots record it and refuse another one.

/// Identifies the routing function in snapshot headers.
pub const ROUTING_FNV1A64: u32 = 1;

use embedstream_topics::hash::fnv1a64;

/// The shard of `item_id` among `shards`.
pub fn shard_of(item_id: &str, shards: usize) -> usize {
    (fnv1a64(item_id.as_bytes()) % shards as u64) as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spreads_over_shards() {
        let mut counts = [0usize; 8];
        for i in 0..8000 {
            counts[shard_of(&format!("item-{i}"), 8)] += 1;
        }
        assert!(
            counts.iter().all(|&c| (800..1200).contains(&c)),
            "{counts:?}"
        );
    }
}
