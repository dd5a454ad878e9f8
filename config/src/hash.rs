//! The stable hash behind the sticky split. It must never change between releases or
//! processes: a user's bucket is their side, and every proxy replica must agree on it.

/// The number of buckets; weights have a granularity of one bucket (0.01 %).
pub const BUCKETS: u16 = 10_000;

/// FNV-1a over the key, then the 64-bit finalizer from MurmurHash3 so that keys which
/// differ only in their last bytes still spread over all buckets. Both are fixed,
/// published algorithms with no seed, so the result is the same everywhere.
#[inline]
pub fn stable_hash(key: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in key {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^= h >> 33;
    h
}

/// The key's bucket in `0..BUCKETS`.
#[inline]
pub fn bucket_of(key: &[u8]) -> u16 {
    // The remainder is below 10 000, so the narrowing cannot truncate.
    (stable_hash(key) % u64::from(BUCKETS)) as u16
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_is_pinned() {
        // A change here moves users between sides on upgrade: never update these
        // values without a migration story.
        assert_eq!(bucket_of(b""), bucket_of(b""));
        assert_eq!(stable_hash(b"user-1"), stable_hash(b"user-1"));
        assert_eq!(stable_hash(b"abc"), 0x33ebaf9927cbc5bd);
        assert_eq!(bucket_of(b"abc"), (0x33ebaf9927cbc5bd_u64 % 10_000) as u16);
    }

    #[test]
    fn buckets_are_spread_evenly() {
        let mut counts = [0u32; 10];
        for i in 0..100_000u32 {
            counts[usize::from(bucket_of(format!("key-{i}").as_bytes()) / 1000)] += 1;
        }
        for c in counts {
            assert!((9_500..10_500).contains(&c), "uneven spread: {counts:?}");
        }
    }
}
