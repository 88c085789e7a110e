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

/// Removes hop-by-hop headers in place.
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
    for n in &HOP_BY_HOP {
        h.remove(n);
    }
    h.remove(header::UPGRADE);
}

/// The client's headers made ready to go upstream, in place: hop-by-hop gone, plus what the
/// gateway sets itself (Host, Content-Length, the request id) and what must not reach a
/// replica: `Expect` (hyper answered it already) and `Accept-Encoding` (bytes on the path stay
/// uncompressed). With `gateway_keys` (auth on), the client's key is the gateway's credential
/// and is not passed on either: replicas get `upstream.api_key_env`'s key, or none. Takes the
/// map by value: the request's own headers are not needed after.
pub fn upstream_request_headers(mut h: HeaderMap, gateway_keys: bool) -> HeaderMap {
    strip_hop_by_hop(&mut h);
    if gateway_keys {
        h.remove(header::AUTHORIZATION);
        h.remove("x-api-key");
    }
    for n in [
        header::HOST,
        header::CONTENT_LENGTH,
        header::EXPECT,
        header::ACCEPT_ENCODING,
        HeaderName::from_static(super::request_id::HEADER),
    ] {
        h.remove(n);
    }
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
