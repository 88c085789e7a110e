//! Hashers for the tables the request path looks things up in: API keys by digest, routes by
//! model name. std's `HashMap` hashes with SipHash, whose keyed randomness defends a table
//! that grows from its callers' input against collision floods; these tables are built from
//! the configuration and only ever looked up per request, so a caller's input can choose what
//! is looked for but never what is stored, and a cheap hash is safe. SipHash cost about 240
//! instructions per lookup, two lookups per request.

use std::hash::{BuildHasherDefault, Hasher};

/// For keys that are already uniformly random (SHA-256 digests): their first eight bytes.
#[derive(Default)]
pub struct DigestHasher(u64);

impl Hasher for DigestHasher {
    fn write(&mut self, bytes: &[u8]) {
        let mut first = [0u8; 8];
        let n = bytes.len().min(8);
        first[..n].copy_from_slice(&bytes[..n]);
        self.0 ^= u64::from_le_bytes(first);
    }

    /// Lengths (written before a slice's bytes) carry nothing here.
    fn write_usize(&mut self, _: usize) {}

    fn finish(&self) -> u64 {
        self.0
    }
}

pub type DigestMap<V> = std::collections::HashMap<[u8; 32], V, BuildHasherDefault<DigestHasher>>;

/// FNV-1a (the `fnv` crate, already in the tree through `h2`), for short names.
pub type NameMap<V> = fnv::FnvHashMap<String, V>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_find_what_they_hold_and_nothing_else() {
        let mut keys = DigestMap::default();
        for i in 0..200u8 {
            let mut d = [0u8; 32];
            d[0] = i;
            d[31] = i.wrapping_mul(7);
            keys.insert(d, i);
        }
        for i in 0..200u8 {
            let mut d = [0u8; 32];
            d[0] = i;
            d[31] = i.wrapping_mul(7);
            assert_eq!(keys.get(&d), Some(&i));
            d[31] ^= 1;
            assert_eq!(keys.get(&d), None);
        }
        let mut names = NameMap::default();
        names.insert("llama-3-8b".to_owned(), 1);
        names.insert("llama-3-8b-instruct".to_owned(), 2);
        assert_eq!(names.get("llama-3-8b"), Some(&1));
        assert_eq!(names.get("llama-3-8b-instruct"), Some(&2));
        assert_eq!(names.get("llama-3-8"), None);
        // Different names hash differently (FNV-1a over the bytes and the 0xff str ends).
        let h = |s: &str| {
            let mut h = fnv::FnvHasher::default();
            std::hash::Hash::hash(s, &mut h);
            h.finish()
        };
        assert_ne!(h("ab"), h("ba"));
    }
}
