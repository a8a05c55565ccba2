//! MPNet's relative position buckets (as `transformers`' `MPNetEncoder.relative_position_bucket`,
//! computed in f32 like PyTorch so bucket edges agree).

/// The bucket of `relative = memory - context`, for `num_buckets` buckets (both directions)
/// and `max_distance`.
pub fn relative_position_bucket(relative: i64, num_buckets: i64, max_distance: i64) -> i64 {
    let mut ret = 0;
    let mut n = -relative;
    let num_buckets = num_buckets / 2;
    if n < 0 {
        ret += num_buckets;
    }
    n = n.abs();
    let max_exact = num_buckets / 2;
    if n < max_exact {
        return ret + n;
    }
    let scale = ((max_distance as f64 / max_exact as f64).ln()) as f32;
    let large = max_exact
        + ((n as f32 / max_exact as f32).ln() / scale * (num_buckets - max_exact) as f32) as i64;
    ret + large.min(num_buckets - 1)
}

/// Buckets for a `len × len` attention map, row-major `[context][memory]`.
pub fn bucket_matrix(len: usize, num_buckets: usize) -> Vec<i64> {
    let mut out = Vec::with_capacity(len * len);
    for context in 0..len as i64 {
        for memory in 0..len as i64 {
            out.push(relative_position_bucket(
                memory - context,
                num_buckets as i64,
                128,
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_match_transformers() {
        // Printed by transformers 5.23 MPNetEncoder.relative_position_bucket(num_buckets=32, max_distance=128).
        let cases = [
            (0, 0),
            (1, 17),
            (-1, 1),
            (7, 23),
            (-7, 7),
            (8, 24),
            (-8, 8),
            (15, 25),
            (16, 26),
            (-16, 10),
            (32, 28),
            (64, 30),
            (127, 31),
            (128, 31),
            (-500, 15),
            (500, 31),
        ];
        for (relative, bucket) in cases {
            assert_eq!(
                relative_position_bucket(relative, 32, 128),
                bucket,
                "{relative}"
            );
        }
    }
}
