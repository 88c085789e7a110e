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
    let id = uuid::Builder::from_random_bytes(bytes).into_uuid();
    let mut buf = [0u8; uuid::fmt::Hyphenated::LENGTH];
    id.hyphenated().encode_lower(&mut buf);
    RequestId::Made(buf)
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
}
