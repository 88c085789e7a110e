//! Stage 1: the request id. A sane `x-request-id` from the client is kept (and forwarded);
//! otherwise a UUID is made — some replicas (llama.cpp's server) reject ids that are not UUIDs.

use http::{HeaderName, HeaderValue};

use crate::fields::Fields;

pub const HEADER: HeaderName = HeaderName::from_static("x-request-id");

/// The id for this request, as a header value ready to forward and echo.
pub fn assign(fields: &Fields) -> HeaderValue {
    if let Some(v) = fields.get_shared(HEADER.as_str()) {
        if is_acceptable(&v) {
            if let Ok(v) = HeaderValue::from_maybe_shared(v) {
                return v;
            }
        }
    }
    generate()
}

fn is_acceptable(v: &[u8]) -> bool {
    (1..=128).contains(&v.len())
        && v.iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'))
}

/// A random (v4) UUID. Request ids need uniqueness, not secrecy: a fast PRNG is enough.
pub fn generate() -> HeaderValue {
    let bytes = fastrand::u128(..).to_le_bytes();
    let id = uuid::Builder::from_random_bytes(bytes).into_uuid();
    let mut buf = [0u8; uuid::fmt::Hyphenated::LENGTH];
    let s = id.hyphenated().encode_lower(&mut buf);
    // A shared (not vector-backed) buffer: the id is cloned into the record and the upstream
    // request, and clones of a shared buffer are only a count.
    let shared = bytes::BytesMut::from(s.as_bytes()).freeze();
    HeaderValue::from_maybe_shared(shared).unwrap_or_else(|_| HeaderValue::from_static("invalid"))
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
        assert_eq!(id.len(), 36);
        assert!(uuid::Uuid::parse_str(id.to_str().unwrap()).is_ok());
        assert_ne!(generate(), generate());
    }
}
