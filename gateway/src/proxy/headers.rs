//! Header hygiene on the way to a replica: hop-by-hop headers (RFC 9110 §7.6.1, plus any named
//! in `Connection`) never cross the gateway, nor what the gateway sets or keeps itself. (On the
//! way back, `upstream`'s parser leaves the answer's hop-by-hop headers out of its map.)

use http::header::{self, HeaderMap, HeaderName};

/// The names the `Connection` headers list: hop-by-hop too. (Usually none.)
fn connection_named(h: &HeaderMap) -> smallvec::SmallVec<[HeaderName; 2]> {
    h.get_all(header::CONNECTION)
        .iter()
        .flat_map(|v| crate::codec::connection_named(v.as_bytes()))
        .filter_map(|n| HeaderName::from_bytes(n).ok())
        .collect()
}

/// Which of the client's headers go to a replica. Decided once per request and applied while
/// the upstream head is written (removing them from the map costs more than skipping them).
/// Hop-by-hop headers never go, nor what the gateway sets itself (Host, Content-Length, the
/// request id), nor what must not reach a replica: `Expect` (answered already) and
/// `Accept-Encoding` (bytes on the path stay uncompressed). With `gateway_keys` (auth on), the
/// client's key is the gateway's credential and is not passed on either: replicas get
/// `upstream.api_key_env`'s key, or none.
pub struct UpstreamFilter {
    gateway_keys: bool,
    connection_named: smallvec::SmallVec<[HeaderName; 2]>,
}

impl UpstreamFilter {
    pub fn new(client: &HeaderMap, gateway_keys: bool) -> Self {
        Self {
            gateway_keys,
            connection_named: connection_named(client),
        }
    }

    pub fn keeps(&self, n: &HeaderName) -> bool {
        let gateway_set = match n.as_str() {
            "host" | "content-length" | "expect" | "accept-encoding" => true,
            name if name == super::request_id::HEADER.as_str() => true,
            "authorization" | "x-api-key" => self.gateway_keys,
            _ => false,
        };
        !(gateway_set
            || crate::codec::is_hop_by_hop(n.as_str())
            || self.connection_named.contains(n))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    #[test]
    fn every_hop_by_hop_field_stays_here_and_nothing_else() {
        for name in [
            "connection",
            "keep-alive",
            "proxy-connection",
            "proxy-authenticate",
            "proxy-authorization",
            "te",
            "trailer",
            "transfer-encoding",
            "upgrade",
            "Upgrade",
        ] {
            let mut h = HeaderMap::new();
            h.insert(
                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_static("x"),
            );
            h.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            h.insert("x-trace", HeaderValue::from_static("1"));
            let f = UpstreamFilter::new(&h, true);
            let kept: Vec<&str> = h
                .keys()
                .filter(|n| f.keeps(n))
                .map(|n| n.as_str())
                .collect();
            assert_eq!(kept, ["content-type", "x-trace"], "{name}");
        }
    }

    #[test]
    fn only_what_a_replica_should_see_goes_upstream() {
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
        h.insert(
            super::super::request_id::HEADER,
            HeaderValue::from_static("id-1"),
        );
        h.insert(header::EXPECT, HeaderValue::from_static("100-continue"));
        h.insert(header::CONTENT_LENGTH, HeaderValue::from_static("2"));
        let kept = |keys: bool| {
            let f = UpstreamFilter::new(&h, keys);
            let mut names: Vec<&str> = h
                .keys()
                .filter(|n| f.keeps(n))
                .map(|n| n.as_str())
                .collect();
            names.sort_unstable();
            names
        };
        // Auth off: the client's credentials may be meant for the replica.
        assert_eq!(kept(false), ["authorization", "content-type", "x-api-key"]);
        // Auth on: they are the gateway's, and stay here.
        assert_eq!(kept(true), ["content-type"]);
    }
}
