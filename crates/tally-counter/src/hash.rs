//! The hasher for keys that come from the network.
//!
//! Keys are page ids and URL paths chosen by clients, so the maps keyed by them use a seeded
//! hash (random per process) to keep collision floods out. SipHash would do that too, but
//! one-shot xxh3 on the whole key is several times cheaper for short keys, and every
//! increment hashes its key with it (the slot in the write buffer, and the key's home
//! stripe, from one hash).

use std::hash::{BuildHasher, Hasher};

use xxhash_rust::xxh3::xxh3_64_with_seed;

/// Builds [`KeyHasher`]s sharing one random seed.
#[derive(Clone, Copy, Debug)]
pub(crate) struct KeyHash {
    seed: u64,
}

impl KeyHash {
    pub(crate) fn random() -> Self {
        Self {
            seed: rand::random(),
        }
    }

    /// Hash of a key, the same value a map using this builder computes for it.
    pub(crate) fn hash_str(&self, key: &str) -> u64 {
        self.hash_one(key)
    }
}

impl BuildHasher for KeyHash {
    type Hasher = KeyHasher;

    fn build_hasher(&self) -> KeyHasher {
        KeyHasher {
            seed: self.seed,
            state: 0,
        }
    }
}

/// Hasher that runs xxh3 once over each `write` (a `str` key is one write plus a terminator).
#[derive(Debug)]
pub(crate) struct KeyHasher {
    seed: u64,
    state: u64,
}

impl Hasher for KeyHasher {
    fn write(&mut self, bytes: &[u8]) {
        self.state = self.state.rotate_left(23) ^ xxh3_64_with_seed(bytes, self.seed);
    }

    fn write_u8(&mut self, byte: u8) {
        // `str`'s Hash impl ends with a 0xff terminator; fold it in cheaply.
        self.state = (self.state ^ u64::from(byte)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }

    fn finish(&self) -> u64 {
        self.state
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_key_same_hash_different_keys_differ() {
        let h = KeyHash::random();
        assert_eq!(h.hash_str("page1"), h.hash_str("page1"));
        assert_ne!(h.hash_str("page1"), h.hash_str("page2"));
    }

    #[test]
    fn seeds_change_the_hash() {
        let a = KeyHash { seed: 1 };
        let b = KeyHash { seed: 2 };
        assert_ne!(a.hash_str("page1"), b.hash_str("page1"));
    }
}
