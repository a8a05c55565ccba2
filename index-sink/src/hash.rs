//! Which shard an item lives in: FNV-1a 64 of the item id's UTF-8 bytes, modulo the shard
//! count. The function is fixed (no per-process keys), so every process, replica and restart
//! routes an item to the same shard; snapshots record it and refuse another one.

/// Identifies the routing function in snapshot headers.
pub const ROUTING_FNV1A64: u32 = 1;

const OFFSET_BASIS: u64 = 0xcbf2_9ce4_8422_2325;
const PRIME: u64 = 0x0000_0100_0000_01b3;

/// FNV-1a, 64 bits.
pub fn fnv1a64(bytes: &[u8]) -> u64 {
    let mut h = OFFSET_BASIS;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(PRIME);
    }
    h
}

/// The shard of `item_id` among `shards`.
pub fn shard_of(item_id: &str, shards: usize) -> usize {
    (fnv1a64(item_id.as_bytes()) % shards as u64) as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_vectors() {
        // Published FNV-1a 64 test vectors.
        assert_eq!(fnv1a64(b""), 0xcbf29ce484222325);
        assert_eq!(fnv1a64(b"a"), 0xaf63dc4c8601ec8c);
        assert_eq!(fnv1a64(b"foobar"), 0x85944171f73967e8);
    }

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
