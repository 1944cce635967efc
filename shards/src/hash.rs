//! Key -> shard routing: a pure, stable function.
//!
//! Every room id is owned by exactly one shard, and every shard must compute the
//! same owner for the same key, in this process and in the next release (a rolling
//! restart, a log line, a test, an external tool all rely on it). So the hash is
//! spelled out here instead of borrowed from `std` (`RandomState` is seeded per
//! process and `DefaultHasher` is explicitly unspecified across Rust versions).
//!
//! # The function
//!
//! 1. **FNV-1a, 64 bits** over the key bytes (offset basis `0xcbf29ce484222325`,
//!    prime `0x100000001b3`). Simple, byte-at-a-time, no key, trivially reproduced
//!    in any language.
//! 2. **murmur3 `fmix64`** over that value. FNV-1a alone is a poor source for
//!    `% n` with small `n`: bit 0 of its output is just the XOR of bit 0 of every
//!    input byte (the prime is odd), so `% 2` would split `arena-1`/`arena-3`
//!    by the parity of their digits, not by anything resembling chance. The
//!    finalizer makes every output bit depend on every input bit.
//! 3. **`% shards`**. After the finalizer the low bits are as good as the high
//!    ones, so the plain modulo is unbiased enough (the bias of `2^64 mod n` is
//!    negligible for any shard count) and it is what `DESIGN.md` and any
//!    external tool expect. Lemire's multiply-shift would save a division, but
//!    this runs once per room lookup, not per byte, and a 128-bit multiply is
//!    one more thing to get right when reproducing it elsewhere.
//!
//! The values are pinned by tests: changing any step moves rooms between shards
//! and must be a deliberate, visible decision.
//!
//! # Invariants
//!
//! - `shard_of(key, n) < max(n, 1)` for every key.
//! - Never panics. `shards == 0` is treated as 1 (everything on shard 0): the
//!   runtime refuses to start with zero shards, so this case only arises from a
//!   caller bug, and a panic in a routing function would take a shard down.

/// Index of a shard, `0..shards`. It is the shard's position in the channel
/// mesh, not a CPU number.
pub type ShardId = usize;

const FNV_OFFSET_BASIS: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

/// The stable 64-bit hash of `key`: FNV-1a 64 followed by murmur3's `fmix64`.
///
/// Exposed so logs, metrics and tests can show it; routing uses [`shard_of`].
pub fn key_hash(key: &[u8]) -> u64 {
    let mut hash = FNV_OFFSET_BASIS;
    for &byte in key {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(FNV_PRIME);
    }
    fmix64(hash)
}

/// The shard that owns `key` among `shards` shards.
///
/// `shards == 0` is treated as 1 and returns 0 (see the module doc).
pub fn shard_of(key: &[u8], shards: usize) -> ShardId {
    let shards = shards.max(1) as u64;
    // The remainder is < shards, which came from a usize: the cast back is lossless.
    (key_hash(key) % shards) as ShardId
}

/// murmur3's 64-bit finalizer: full avalanche, so low bits are usable for `%`.
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

    /// Plain FNV-1a, to check step 1 against the published test vectors.
    fn fnv1a(key: &[u8]) -> u64 {
        key.iter().fold(FNV_OFFSET_BASIS, |hash, &byte| {
            (hash ^ u64::from(byte)).wrapping_mul(FNV_PRIME)
        })
    }

    #[test]
    fn fnv1a_matches_the_reference_vectors() {
        // From the FNV reference test suite (fnv-1a, 64 bit).
        assert_eq!(fnv1a(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a(b"foobar"), 0x8594_4171_f739_67e8);
    }

    #[test]
    fn fmix64_of_zero_is_zero() {
        assert_eq!(fmix64(0), 0);
    }

    // These values are the contract: if this test fails, rooms move between
    // shards. Change them only on purpose.
    #[test]
    fn pinned_hash_values() {
        assert_eq!(key_hash(b""), PINNED_EMPTY);
        assert_eq!(key_hash(b"arena-7"), PINNED_ARENA_7);
        assert_eq!(key_hash(b"lobby"), PINNED_LOBBY);
        assert_eq!(key_hash(b"room:42"), PINNED_ROOM_42);
    }

    #[test]
    fn pinned_shard_values() {
        assert_eq!(shard_of(b"arena-7", 2), PINNED_ARENA_7_OF_2);
        assert_eq!(shard_of(b"lobby", 4), PINNED_LOBBY_OF_4);
        assert_eq!(shard_of(b"room:42", 3), PINNED_ROOM_42_OF_3);
        assert_eq!(shard_of(b"room:42", 8), PINNED_ROOM_42_OF_8);
    }

    const PINNED_EMPTY: u64 = 0xefd0_1f60_ba99_2926;
    const PINNED_ARENA_7: u64 = 0x8d39_a86a_772d_20a8;
    const PINNED_LOBBY: u64 = 0xb4ea_f00b_b6c1_c767;
    const PINNED_ROOM_42: u64 = 0x6017_3117_2947_d59f;
    const PINNED_ARENA_7_OF_2: ShardId = 0;
    const PINNED_LOBBY_OF_4: ShardId = 3;
    const PINNED_ROOM_42_OF_3: ShardId = 0;
    const PINNED_ROOM_42_OF_8: ShardId = 7;

    #[test]
    fn zero_shards_is_treated_as_one() {
        assert_eq!(shard_of(b"lobby", 0), 0);
        assert_eq!(shard_of(b"", 0), 0);
    }

    #[test]
    fn one_shard_owns_everything() {
        for i in 0..100 {
            assert_eq!(shard_of(format!("room-{i}").as_bytes(), 1), 0);
        }
    }

    #[test]
    fn keys_spread_evenly() {
        const KEYS: usize = 10_000;
        for shards in [2usize, 3, 4, 8] {
            let mut counts = vec![0usize; shards];
            for i in 0..KEYS {
                counts[shard_of(format!("room-{i}").as_bytes(), shards)] += 1;
            }
            let expected = KEYS / shards;
            // 10% either way is > 5 standard deviations for every n here
            // (sd = sqrt(K p (1-p)) <= 50), so a fair hash never trips it.
            let tolerance = expected / 10;
            for (shard, &count) in counts.iter().enumerate() {
                assert!(
                    count.abs_diff(expected) <= tolerance,
                    "{shards} shards: shard {shard} got {count} keys, expected {expected} +- {tolerance} ({counts:?})"
                );
            }
        }
    }

    #[test]
    fn even_numbered_keys_still_use_both_of_two_shards() {
        // The failure fmix64 exists to prevent: with FNV-1a alone, bit 0 is the
        // parity of the bytes, so ids that step by 2 all land on one shard.
        let keys: Vec<String> = (0..5).map(|i| format!("arena-{}", 2 * i)).collect();
        let raw_owners: Vec<u64> = keys.iter().map(|k| fnv1a(k.as_bytes()) % 2).collect();
        assert!(
            raw_owners.windows(2).all(|w| w[0] == w[1]),
            "{raw_owners:?}"
        );
        let owners: Vec<ShardId> = keys.iter().map(|k| shard_of(k.as_bytes(), 2)).collect();
        assert!(owners.contains(&0) && owners.contains(&1), "{owners:?}");
    }
}
