//! Stage 1: the request id. A sane `x-request-id` from the client is kept (and forwarded);
//! otherwise a UUID is made — some replicas (llama.cpp's server) reject ids that are not UUIDs.

use bytes::Bytes;
use http::{HeaderName, HeaderValue};

use crate::fields::Fields;

pub const HEADER: HeaderName = HeaderName::from_static("x-request-id");

/// A request's id. One the gateway makes is kept as its 36 characters, inline: it is cloned
/// into the record, the replica's request and the answer, and a shared buffer for it cost two
/// allocations and two frees per request. A client's own id shares the bytes of its head.
#[derive(Clone, Debug)]
pub enum RequestId {
    Made([u8; uuid::fmt::Hyphenated::LENGTH]),
    Given(Bytes),
}

impl RequestId {
    /// The id's text (ASCII: a UUID, or a client id `is_acceptable` let through).
    pub fn as_bytes(&self) -> &[u8] {
        match self {
            Self::Made(b) => b,
            Self::Given(b) => b,
        }
    }

    pub fn as_str(&self) -> &str {
        std::str::from_utf8(self.as_bytes()).unwrap_or("")
    }

    /// As a header value, for maps (h2 answers).
    pub fn to_header_value(&self) -> HeaderValue {
        match self {
            Self::Made(b) => HeaderValue::from_bytes(b),
            Self::Given(b) => HeaderValue::from_maybe_shared(b.clone()),
        }
        .unwrap_or_else(|_| HeaderValue::from_static("invalid"))
    }
}

/// For tests that compare an id with its text.
#[cfg(test)]
impl PartialEq<&str> for RequestId {
    fn eq(&self, other: &&str) -> bool {
        self.as_bytes() == other.as_bytes()
    }
}

/// The id for this request.
pub fn assign(fields: &Fields) -> RequestId {
    match fields.get_shared(HEADER.as_str()) {
        Some(v) if is_acceptable(&v) => RequestId::Given(v),
        _ => generate(),
    }
}

fn is_acceptable(v: &[u8]) -> bool {
    (1..=128).contains(&v.len())
        && v.iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'))
}

/// A random (v4) UUID. Request ids need uniqueness, not secrecy: a fast PRNG is enough.
pub fn generate() -> RequestId {
    let bytes = fastrand::u128(..).to_le_bytes();
    RequestId::Made(hyphenated(
        uuid::Builder::from_random_bytes(bytes)
            .into_uuid()
            .as_bytes(),
    ))
}

/// A UUID's text, as `uuid`'s `encode_lower` writes it, eight digits a step: 60 instructions
/// where `uuid` spent 180 on every request the gateway names.
fn hyphenated(bytes: &[u8; 16]) -> [u8; uuid::fmt::Hyphenated::LENGTH] {
    let mut hex = [0u8; 32];
    for (four, out) in bytes.chunks_exact(4).zip(hex.chunks_exact_mut(8)) {
        let x = u64::from(u32::from_be_bytes([four[0], four[1], four[2], four[3]]));
        // One nibble a byte, most significant first.
        let x = (x | x << 16) & 0x0000_ffff_0000_ffff;
        let x = (x | x << 8) & 0x00ff_00ff_00ff_00ff;
        let x = (x | x << 4) & 0x0f0f_0f0f_0f0f_0f0f;
        // '0' + n, and 39 more ('a' - '0' - 10) where n > 9.
        let letters = ((x + 0x0606_0606_0606_0606) >> 4) & 0x0101_0101_0101_0101;
        out.copy_from_slice(&(x + 0x3030_3030_3030_3030 + letters * 0x27).to_be_bytes());
    }
    let mut text = [b'-'; uuid::fmt::Hyphenated::LENGTH];
    text[..8].copy_from_slice(&hex[..8]);
    text[9..13].copy_from_slice(&hex[8..12]);
    text[14..18].copy_from_slice(&hex[12..16]);
    text[19..23].copy_from_slice(&hex[16..20]);
    text[24..].copy_from_slice(&hex[20..]);
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_sane_ids_and_replaces_others() {
        let mut h = http::HeaderMap::new();
        h.insert(HEADER, HeaderValue::from_static("abc-123"));
        assert_eq!(assign(&h.clone().into()), "abc-123");
        h.insert(HEADER, HeaderValue::from_static("has space"));
        let id = assign(&h.into());
        assert!(matches!(id, RequestId::Made(_)));
        assert!(uuid::Uuid::parse_str(id.as_str()).is_ok());
        assert_eq!(id.to_header_value(), id.as_str());
        assert_ne!(generate().as_bytes(), generate().as_bytes());
    }

    #[test]
    fn the_text_is_uuids_own() {
        let mut rng = fastrand::Rng::with_seed(7);
        let edges = [0, u128::MAX, 0x0123_4567_89ab_cdef_fedc_ba98_7654_3210];
        for n in edges.into_iter().chain((0..10_000).map(|_| rng.u128(..))) {
            let id = uuid::Uuid::from_u128(n);
            let mut want = [0u8; uuid::fmt::Hyphenated::LENGTH];
            id.hyphenated().encode_lower(&mut want);
            assert_eq!(hyphenated(id.as_bytes()), want, "{id}");
        }
    }
}
