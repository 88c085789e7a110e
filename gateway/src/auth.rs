//! Stage 2: API key -> the caller's key entry. Keys arrive as `Authorization: Bearer <key>` or
//! `x-api-key: <key>`; the gateway knows only their SHA-256. The presented key is hashed once,
//! looked up in a table built at config load, and the digest compared in constant time. The
//! key itself is never stored, logged, counted or echoed.

use std::collections::HashSet;
use std::sync::Arc;

use crate::fields::Fields;
use sha2::{Digest, Sha256};

use crate::error::GatewayError;
use crate::limits::{RequestLimiter, TokenBudget};

/// One configured key, with its limiters.
pub struct KeyEntry {
    /// Appears in logs and metrics; the key never does.
    pub name: String,
    sha256: [u8; 32],
    /// Canonical model names the key may use; `None` = all.
    pub allowed: Option<HashSet<String>>,
    pub requests: Option<Arc<RequestLimiter>>,
    pub tokens: Option<Arc<TokenBudget>>,
    /// May ask for a version with `model = "name@version"`.
    pub pin_versions: bool,
}

impl std::fmt::Debug for KeyEntry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the digest: names only.
        f.debug_struct("KeyEntry")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl KeyEntry {
    pub fn new(
        name: String,
        sha256: [u8; 32],
        allowed: Option<HashSet<String>>,
        requests: Option<Arc<RequestLimiter>>,
        tokens: Option<Arc<TokenBudget>>,
    ) -> Self {
        Self {
            name,
            sha256,
            allowed,
            requests,
            tokens,
            pin_versions: false,
        }
    }

    pub fn with_pin_versions(mut self, allowed: bool) -> Self {
        self.pin_versions = allowed;
        self
    }

    pub fn may_use(&self, model: &str) -> bool {
        self.allowed.as_ref().is_none_or(|a| a.contains(model))
    }
}

/// The caller, as far as the gateway knows.
#[derive(Clone, Default)]
pub struct Principal {
    /// `None` when auth is disabled.
    pub key: Option<Arc<KeyEntry>>,
}

impl Principal {
    pub fn may_use(&self, model: &str) -> bool {
        self.key.as_ref().is_none_or(|k| k.may_use(model))
    }
    pub fn name(&self) -> Option<&str> {
        self.key.as_ref().map(|k| k.name.as_str())
    }
}

/// Keys by digest, built once per config.
#[derive(Default)]
pub struct KeyTable {
    by_digest: crate::lookup::DigestMap<Arc<KeyEntry>>,
}

impl KeyTable {
    pub fn new(entries: Vec<KeyEntry>) -> Self {
        Self {
            by_digest: entries
                .into_iter()
                .map(|e| (e.sha256, Arc::new(e)))
                .collect(),
        }
    }

    pub fn authenticate(&self, headers: &Fields) -> Result<Arc<KeyEntry>, GatewayError> {
        let presented = presented_key(headers).ok_or(GatewayError::InvalidApiKey)?;
        self.look_up(presented)
    }

    /// `authenticate`, remembering the key that passed on the connection's `memo`: a request
    /// that presents the same key on the same connection skips its hash (a client sends its
    /// key with every request, usually on a kept-alive connection). What is remembered holds
    /// only while this table does: an entry the table no longer has (a reload rebuilt it, the
    /// key revoked or changed) is looked up again.
    pub fn authenticate_on(
        &self,
        headers: &Fields,
        memo: &KeyMemo,
    ) -> Result<Arc<KeyEntry>, GatewayError> {
        let presented = presented_key(headers).ok_or(GatewayError::InvalidApiKey)?;
        if let Some(entry) = memo.recall(presented) {
            if self
                .by_digest
                .get(&entry.sha256)
                .is_some_and(|current| Arc::ptr_eq(current, &entry))
            {
                return Ok(entry);
            }
        }
        let entry = self.look_up(presented)?;
        memo.remember(presented, &entry);
        Ok(entry)
    }

    fn look_up(&self, presented: &[u8]) -> Result<Arc<KeyEntry>, GatewayError> {
        let digest: [u8; 32] = Sha256::digest(presented).into();
        let entry = self
            .by_digest
            .get(&digest)
            .ok_or(GatewayError::InvalidApiKey)?;
        if constant_time_eq(&entry.sha256, &digest) {
            Ok(entry.clone())
        } else {
            Err(GatewayError::InvalidApiKey)
        }
    }

    pub fn len(&self) -> usize {
        self.by_digest.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_digest.is_empty()
    }
}

/// The key that last passed on one connection, and its entry: see
/// [`KeyTable::authenticate_on`]. The key's bytes stay with the connection, as they already
/// did in its read buffer; they are compared in constant time and never printed.
#[derive(Default)]
pub struct KeyMemo {
    last: std::sync::Mutex<Option<Remembered>>,
}

struct Remembered {
    key: Box<[u8]>,
    entry: Arc<KeyEntry>,
}

/// Longer keys are not remembered (they are hashed every time).
const MEMO_MAX_KEY: usize = 256;

impl KeyMemo {
    fn recall(&self, presented: &[u8]) -> Option<Arc<KeyEntry>> {
        let last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        last.as_ref()
            .filter(|r| constant_time_eq(&r.key, presented))
            .map(|r| r.entry.clone())
    }

    /// A connection that carries several clients' keys (a proxy in front, h2) changes what is
    /// remembered as they alternate; keys of one length (the usual deployment) reuse the room.
    fn remember(&self, presented: &[u8], entry: &Arc<KeyEntry>) {
        if presented.len() > MEMO_MAX_KEY {
            return;
        }
        let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        match last.as_mut() {
            Some(r) if r.key.len() == presented.len() => {
                r.key.copy_from_slice(presented);
                r.entry = entry.clone();
            }
            _ => {
                *last = Some(Remembered {
                    key: presented.into(),
                    entry: entry.clone(),
                })
            }
        }
    }
}

impl std::fmt::Debug for KeyMemo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("KeyMemo")
    }
}

/// The key a client sent, if any.
pub fn presented_key(headers: &Fields) -> Option<&[u8]> {
    if let Some(b) = headers.get("authorization") {
        let key = b
            .get(..7)
            .filter(|p| p.eq_ignore_ascii_case(b"bearer "))
            .map(|_| b[7..].trim_ascii())?;
        return (!key.is_empty()).then_some(key);
    }
    let key = headers.get("x-api-key")?.trim_ascii();
    (!key.is_empty()).then_some(key)
}

/// Lowercase hex SHA-256 of a key, as `[[api_keys]] sha256` expects (`gateway hash-key`).
pub fn hash_key(key: &[u8]) -> String {
    Sha256::digest(key)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Compares secrets (or their digests) without an early exit that would leak where they differ.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::{HeaderMap, HeaderValue};

    fn table() -> KeyTable {
        let digest: [u8; 32] = Sha256::digest(b"sk-good").into();
        KeyTable::new(vec![KeyEntry::new(
            "team-a".into(),
            digest,
            Some(["m".to_owned()].into()),
            None,
            None,
        )])
    }

    #[test]
    fn bearer_and_x_api_key_are_accepted() {
        let t = table();
        let mut h = HeaderMap::new();
        h.insert("authorization", HeaderValue::from_static("Bearer sk-good"));
        assert_eq!(t.authenticate(&h.into()).unwrap().name, "team-a");
        let mut h = HeaderMap::new();
        h.insert(
            "authorization",
            HeaderValue::from_static("bearer   sk-good "),
        );
        assert!(t.authenticate(&h.into()).is_ok());
        let mut h = HeaderMap::new();
        h.insert("x-api-key", HeaderValue::from_static("sk-good"));
        assert!(t.authenticate(&h.into()).is_ok());
    }

    #[test]
    fn missing_wrong_or_malformed_keys_are_refused() {
        let t = table();
        for (name, value) in [
            ("authorization", "Bearer sk-bad"),
            ("authorization", "Basic c2stZ29vZA=="),
            ("authorization", "Bearer "),
            ("authorization", "sk-good"),
            ("x-api-key", ""),
        ] {
            let mut h = HeaderMap::new();
            h.insert(name, HeaderValue::from_static(value));
            assert_eq!(
                t.authenticate(&h.into()).unwrap_err(),
                GatewayError::InvalidApiKey,
                "{value}"
            );
        }
        assert!(t.authenticate(&Fields::default()).is_err());
    }

    fn bearer(key: &'static str) -> Fields {
        let mut h = HeaderMap::new();
        h.insert(
            "authorization",
            HeaderValue::from_str(&format!("Bearer {key}")).unwrap(),
        );
        h.into()
    }

    /// A connection's remembered key answers for the same key only, and only while the table
    /// that passed it is the one in use: a reload that revokes the key refuses it on a
    /// connection that used it before, and one that keeps it gives the new entry.
    #[test]
    fn a_remembered_key_holds_only_for_the_same_key_and_the_same_table() {
        let memo = KeyMemo::default();
        let t = table();
        let first = t.authenticate_on(&bearer("sk-good"), &memo).unwrap();
        assert_eq!(first.name, "team-a");
        // Remembered: the same entry, and a wrong key is still refused.
        let again = t.authenticate_on(&bearer("sk-good"), &memo).unwrap();
        assert!(Arc::ptr_eq(&first, &again));
        for wrong in ["sk-goo", "sk-goodd", "sk-bad", "SK-GOOD"] {
            assert_eq!(
                t.authenticate_on(&bearer(wrong), &memo).unwrap_err(),
                GatewayError::InvalidApiKey,
                "{wrong}"
            );
        }
        assert!(t.authenticate_on(&Fields::default(), &memo).is_err());
        // Two keys taking turns on one connection (same length: the room is reused).
        let two = KeyTable::new(
            ["sk-good", "sk-gold"]
                .iter()
                .enumerate()
                .map(|(i, k)| {
                    KeyEntry::new(
                        format!("key-{i}"),
                        Sha256::digest(k.as_bytes()).into(),
                        None,
                        None,
                        None,
                    )
                })
                .collect(),
        );
        for _ in 0..3 {
            for (key, name) in [("sk-good", "key-0"), ("sk-gold", "key-1")] {
                assert_eq!(two.authenticate_on(&bearer(key), &memo).unwrap().name, name);
            }
        }
        // A reloaded table with the same key: its own entry, not the remembered one.
        let reloaded = table();
        let now = reloaded.authenticate_on(&bearer("sk-good"), &memo).unwrap();
        assert!(!Arc::ptr_eq(&first, &now));
        assert!(Arc::ptr_eq(
            &now,
            &reloaded.authenticate_on(&bearer("sk-good"), &memo).unwrap()
        ));
        // A reload that revokes the key: refused on this connection too.
        let revoked = KeyTable::new(Vec::new());
        assert_eq!(
            revoked
                .authenticate_on(&bearer("sk-good"), &memo)
                .unwrap_err(),
            GatewayError::InvalidApiKey
        );
        assert_eq!(format!("{memo:?}"), "KeyMemo");
    }

    #[test]
    fn constant_time_comparison() {
        assert!(constant_time_eq(b"secret", b"secret"));
        assert!(!constant_time_eq(b"secret", b"secreT"));
        assert!(!constant_time_eq(b"secret", b"secret2"));
        assert!(!constant_time_eq(b"", b"x"));
    }

    #[test]
    fn model_access_and_hashing() {
        let e = table().by_digest.values().next().unwrap().clone();
        assert!(e.may_use("m") && !e.may_use("other"));
        assert!(Principal::default().may_use("anything"));
        assert_eq!(
            hash_key(b"test"),
            "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
        );
    }
}
