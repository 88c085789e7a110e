//! Header hygiene on both legs: hop-by-hop headers (RFC 9110 §7.6.1, plus any named in
//! `Connection`) never cross the gateway.

use http::header::{self, HeaderMap, HeaderName};

const HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
];

fn is_hop_by_hop(n: &HeaderName) -> bool {
    HOP_BY_HOP.contains(n) || n == header::UPGRADE
}

/// Removes the headers `drop` picks, in place. The map is walked once and only names that are
/// there are removed: each `remove` hashes its name, and most headers a proxy strips are
/// usually absent (a replica's answer typically has none of them).
fn remove_where(h: &mut HeaderMap, drop: impl Fn(&HeaderName) -> bool) {
    let doomed: smallvec::SmallVec<[HeaderName; 8]> =
        h.keys().filter(|n| drop(n)).cloned().collect();
    for n in doomed {
        h.remove(n);
    }
}

/// Removes hop-by-hop headers in place: the fixed list and any named in `Connection`.
pub fn strip_hop_by_hop(h: &mut HeaderMap) {
    let named: Vec<HeaderName> = h
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
        .collect();
    for n in named {
        h.remove(n);
    }
    remove_where(h, is_hop_by_hop);
}

/// The client's headers made ready to go upstream, in place: hop-by-hop gone, plus what the
/// gateway sets itself (Host, Content-Length, the request id) and what must not reach a
/// replica: `Expect` (answered already) and `Accept-Encoding` (bytes on the path stay
/// uncompressed). With `gateway_keys` (auth on), the client's key is the gateway's credential
/// and is not passed on either: replicas get `upstream.api_key_env`'s key, or none. Takes the
/// map by value: the request's own headers are not needed after.
pub fn upstream_request_headers(mut h: HeaderMap, gateway_keys: bool) -> HeaderMap {
    const API_KEY: HeaderName = HeaderName::from_static("x-api-key");
    strip_hop_by_hop(&mut h);
    remove_where(&mut h, |n| {
        n == header::HOST
            || n == header::CONTENT_LENGTH
            || n == header::EXPECT
            || n == header::ACCEPT_ENCODING
            || n == super::request_id::HEADER
            || (gateway_keys && (n == header::AUTHORIZATION || n == API_KEY))
    });
    h
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    #[test]
    fn strips_hop_by_hop_and_connection_named_headers() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, x-secret"),
        );
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        );
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        h.insert(header::ACCEPT_ENCODING, HeaderValue::from_static("gzip"));
        h.insert(header::HOST, HeaderValue::from_static("gw"));
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Bearer sk-x"),
        );
        h.insert("x-api-key", HeaderValue::from_static("sk-x"));
        // Auth off: the client's credentials may be meant for the replica.
        let up = upstream_request_headers(h.clone(), false);
        assert_eq!(up.len(), 3);
        // Auth on: they are the gateway's, and stay here.
        let up = upstream_request_headers(h, true);
        assert_eq!(up.len(), 1);
        assert_eq!(up[header::CONTENT_TYPE], "application/json");
    }
}
