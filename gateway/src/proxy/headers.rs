//! Header hygiene on the way to a replica: hop-by-hop headers (RFC 9110 §7.6.1, plus any named
//! in `Connection`) never cross the gateway, nor what the gateway sets or keeps itself. (On the
//! way back, `upstream`'s parser leaves the answer's hop-by-hop headers out of its map.) And
//! the fields the gateway adds to every answer (`GatewayFields`).

use std::time::Duration;

use http::header::{HeaderMap, HeaderName, HeaderValue};

use crate::fields::Fields;

// Statics, not the `const`s they copy: a `const` `HeaderName` is built, and dropped again, at
// every use (about 70 instructions for the array).
pub(super) static REQUEST_ID: HeaderName = super::request_id::HEADER;
static REPLICA_HEADER: HeaderName = super::forward::REPLICA_HEADER;
static VERSION_HEADER: HeaderName = super::forward::VERSION_HEADER;

/// The names the `Connection` headers list: hop-by-hop too. (Usually none.)
fn connection_named(h: &Fields) -> smallvec::SmallVec<[HeaderName; 2]> {
    h.get_all("connection")
        .flat_map(crate::codec::connection_named)
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
    pub fn new(client: &Fields, gateway_keys: bool) -> Self {
        Self {
            gateway_keys,
            connection_named: connection_named(client),
        }
    }

    /// Whether the field called `n` (lowercase) goes upstream.
    pub fn keeps(&self, n: &[u8]) -> bool {
        let gateway_set = match n {
            b"host" | b"content-length" | b"expect" | b"accept-encoding" => true,
            name if name == REQUEST_ID.as_str().as_bytes() => true,
            b"authorization" | b"x-api-key" => self.gateway_keys,
            _ => false,
        };
        !(gateway_set
            || crate::codec::is_hop_by_hop(n)
            || self
                .connection_named
                .iter()
                .any(|c| c.as_str().as_bytes() == n))
    }
}

/// The same names as the starts of HTTP/1.1 lines (one copy where the name and its colon
/// were two).
static RATELIMIT_LINES: [&[u8]; 6] = [
    b"x-ratelimit-limit-requests: ",
    b"x-ratelimit-remaining-requests: ",
    b"x-ratelimit-reset-requests: ",
    b"x-ratelimit-limit-tokens: ",
    b"x-ratelimit-remaining-tokens: ",
    b"x-ratelimit-reset-tokens: ",
];

/// OpenAI's `x-ratelimit-*` names, in the order of `GatewayFields::ratelimit_bit`'s bits.
static RATELIMIT_NAMES: [HeaderName; 6] = [
    HeaderName::from_static("x-ratelimit-limit-requests"),
    HeaderName::from_static("x-ratelimit-remaining-requests"),
    HeaderName::from_static("x-ratelimit-reset-requests"),
    HeaderName::from_static("x-ratelimit-limit-tokens"),
    HeaderName::from_static("x-ratelimit-remaining-tokens"),
    HeaderName::from_static("x-ratelimit-reset-tokens"),
];

/// The fields the gateway adds to each answer of the request path: the request id, the replica
/// and model version that served it, and the caller key's `x-ratelimit-*` figures. They stay
/// out of the answer's `HeaderMap` (nine inserts, and a map grown for them, per request):
/// HTTP/1.1 writes them straight into the head (`replaces`, `ratelimit_bit`, `write_lines`), h2 puts
/// them in the map (`insert_into`). One rule for both: the request id, replica and version
/// replace an answer's fields of the same name; a rate-limit field the answer has already (a
/// 429 naming the limit it hit) stays, and the key's figure for that name is left out.
#[derive(Default)]
pub struct GatewayFields {
    pub request_id: Option<super::request_id::RequestId>,
    pub replica: Option<HeaderValue>,
    pub version: Option<HeaderValue>,
    /// The key's request limit after this request: (limit, remaining, reset).
    pub requests: Option<(u32, u32, Duration)>,
    /// The key's token budget after the reservation: (per minute, left).
    pub tokens: Option<(u64, u64)>,
}

impl GatewayFields {
    /// Whether the answer's own field `name` (lowercase) gives way to one of these (and is not
    /// written).
    pub fn replaces(&self, name: &[u8]) -> bool {
        (self.request_id.is_some() && name == REQUEST_ID.as_str().as_bytes())
            || (self.replica.is_some() && name == REPLICA_HEADER.as_str().as_bytes())
            || (self.version.is_some() && name == VERSION_HEADER.as_str().as_bytes())
    }

    /// Which rate-limit field `name` (lowercase) is, as a bit for `write_lines`'s `present`; 0
    /// for other names.
    pub fn ratelimit_bit(name: &[u8]) -> u8 {
        if !name.starts_with(b"x-ratelimit-") {
            return 0;
        }
        RATELIMIT_NAMES
            .iter()
            .position(|n| n.as_str().as_bytes() == name)
            .map_or(0, |i| 1 << i)
    }

    /// The fields as HTTP/1.1 lines, written straight into the head, but the rate-limit
    /// fields whose bit is in `present`. Numbers and durations are written in place: nothing
    /// is allocated, nor formatted on the side first.
    pub fn write_lines(&self, present: u8, out: &mut Vec<u8>) {
        let line = crate::h1::field_line;
        if let Some(id) = &self.request_id {
            line(out, REQUEST_ID.as_str().as_bytes(), id.as_bytes());
        }
        for (name, value) in [
            (&REPLICA_HEADER, &self.replica),
            (&VERSION_HEADER, &self.version),
        ] {
            if let Some(v) = value {
                line(out, name.as_str().as_bytes(), v.as_bytes());
            }
        }
        self.ratelimit(present, |i, figure| {
            out.extend_from_slice(RATELIMIT_LINES[i]);
            figure.write(out);
            out.extend_from_slice(b"\r\n");
        });
    }

    /// The rate-limit figures, by their index in `RATELIMIT_NAMES`, but those in `present`.
    fn ratelimit(&self, present: u8, mut field: impl FnMut(usize, Figure)) {
        let mut put = |i: usize, figure: Figure| {
            if present & (1 << i) == 0 {
                field(i, figure);
            }
        };
        if let Some((limit, remaining, reset)) = self.requests {
            put(0, Figure::Count(limit.into()));
            put(1, Figure::Count(remaining.into()));
            put(2, Figure::Reset(reset));
        }
        if let Some((tpm, left)) = self.tokens {
            put(3, Figure::Count(tpm));
            put(4, Figure::Count(left));
            let missing = tpm.saturating_sub(left) as f64;
            put(
                5,
                Figure::Reset(Duration::from_secs_f64(
                    missing / (tpm.max(1) as f64 / 60.0),
                )),
            );
        }
    }

    /// The same fields put in a map (h2, whose heads hyper writes), by the same rule.
    pub fn insert_into(self, h: &mut HeaderMap) {
        let present = h
            .keys()
            .fold(0, |p, n| p | Self::ratelimit_bit(n.as_str().as_bytes()));
        self.ratelimit(present, |i, figure| {
            let mut text = Vec::with_capacity(24);
            figure.write(&mut text);
            if let Ok(v) = HeaderValue::from_bytes(&text) {
                h.insert(&RATELIMIT_NAMES[i], v);
            }
        });
        for (name, value) in [
            (&REQUEST_ID, self.request_id.map(|id| id.to_header_value())),
            (&REPLICA_HEADER, self.replica),
            (&VERSION_HEADER, self.version),
        ] {
            if let Some(v) = value {
                h.insert(name, v);
            }
        }
    }
}

/// A rate-limit figure: a count, or the time until the room is back.
#[derive(Clone, Copy)]
enum Figure {
    Count(u64),
    Reset(Duration),
}

impl Figure {
    fn write(self, out: &mut Vec<u8>) {
        match self {
            Self::Count(n) => {
                let mut digits = [0u8; 20];
                out.extend_from_slice(crate::codec::decimal(n, &mut digits));
            }
            // Writing to a `Vec` does not fail.
            Self::Reset(d) => {
                let _ = crate::limits::OpenAiDuration(d).write_to(out);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::header;

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
            let h = Fields::from(h);
            let f = UpstreamFilter::new(&h, true);
            let kept: Vec<&[u8]> = h.iter().map(|(n, _)| n).filter(|n| f.keeps(n)).collect();
            assert_eq!(kept, [&b"content-type"[..], b"x-trace"], "{name}");
        }
    }

    #[test]
    fn line_starts_are_the_names() {
        for (line, name) in RATELIMIT_LINES.iter().zip(&RATELIMIT_NAMES) {
            assert_eq!(*line, [name.as_str().as_bytes(), b": "].concat());
        }
    }

    #[test]
    fn http1_lines_and_h2_fields_say_the_same() {
        let g = || GatewayFields {
            request_id: Some(super::super::request_id::generate()),
            replica: Some(HeaderValue::from_static("r1")),
            version: None,
            requests: Some((100, 99, Duration::from_millis(10))),
            tokens: Some((6000, 3000)),
        };
        let fields = g();
        let id = fields.request_id.clone().unwrap();
        // The answer had its own x-ratelimit-remaining-requests: that one stays.
        let present = GatewayFields::ratelimit_bit(b"x-ratelimit-remaining-requests");
        let mut out = Vec::new();
        fields.write_lines(present, &mut out);
        let want = format!(
            "x-request-id: {}\r\nx-gateway-replica: r1\r\n\
             x-ratelimit-limit-requests: 100\r\nx-ratelimit-reset-requests: 10ms\r\n\
             x-ratelimit-limit-tokens: 6000\r\nx-ratelimit-remaining-tokens: 3000\r\n\
             x-ratelimit-reset-tokens: 30s\r\n",
            id.as_str()
        );
        assert_eq!(String::from_utf8(out).unwrap(), want);
        let mut h = HeaderMap::new();
        h.insert(
            "x-ratelimit-remaining-requests",
            HeaderValue::from_static("7"),
        );
        g().insert_into(&mut h);
        let mut lines: Vec<String> = h
            .iter()
            .filter(|(n, _)| *n != REQUEST_ID)
            .map(|(n, v)| format!("{n}: {}", v.to_str().unwrap()))
            .collect();
        lines.sort();
        assert_eq!(
            lines,
            [
                "x-gateway-replica: r1",
                "x-ratelimit-limit-requests: 100",
                "x-ratelimit-limit-tokens: 6000",
                "x-ratelimit-remaining-requests: 7",
                "x-ratelimit-remaining-tokens: 3000",
                "x-ratelimit-reset-requests: 10ms",
                "x-ratelimit-reset-tokens: 30s",
            ]
        );
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
        let h = Fields::from(h);
        let kept = |keys: bool| {
            let f = UpstreamFilter::new(&h, keys);
            let mut names: Vec<&str> = h
                .iter()
                .map(|(n, _)| std::str::from_utf8(n).unwrap())
                .filter(|n| f.keeps(n.as_bytes()))
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
