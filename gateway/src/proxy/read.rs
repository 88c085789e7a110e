//! Stage 4: read the body once into `Bytes` under a size cap and a deadline, then peek `model`
//! and `stream` by borrowing from those bytes. The same bytes are forwarded unchanged.

use std::borrow::Cow;

use bytes::{Bytes, BytesMut};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use serde::Deserialize;

use crate::error::GatewayError;

/// A request's body: from hyper (TLS, HTTP/2), or from the gateway's own HTTP/1.1 server
/// (`crate::h1`), which reads it from the connection when asked.
pub enum ClientBody<'a> {
    Hyper(Incoming),
    H1(crate::h1::RequestBody<'a>),
}

/// Collects the request body. `content_length` lets an oversized body fail before any read.
pub async fn read_body(
    body: ClientBody<'_>,
    content_length: Option<u64>,
    max: usize,
    deadline: tokio::time::Instant,
) -> Result<Bytes, GatewayError> {
    if content_length.is_some_and(|n| n > max as u64) {
        return Err(GatewayError::BodyTooLarge { limit: max });
    }
    let mut body = match body {
        ClientBody::H1(body) => return body.read_all(max, deadline).await,
        ClientBody::Hyper(body) => body,
    };
    let mut first: Option<Bytes> = None;
    let mut rest: Option<BytesMut> = None;
    let mut total = 0usize;
    loop {
        let frame = match tokio::time::timeout_at(deadline, body.frame()).await {
            Err(_) => return Err(GatewayError::RequestTimeout),
            Ok(None) => break,
            Ok(Some(Err(e))) => {
                return Err(GatewayError::InvalidBody(format!(
                    "could not read body: {e}"
                )))
            }
            Ok(Some(Ok(f))) => f,
        };
        let Ok(data) = frame.into_data() else {
            continue;
        };
        total += data.len();
        if total > max {
            return Err(GatewayError::BodyTooLarge { limit: max });
        }
        // One frame (the common case) is kept as is: no copy.
        match (&mut first, &mut rest) {
            (None, _) => first = Some(data),
            (Some(f), None) => {
                let cap = content_length.map_or(total, |n| n as usize).max(total);
                let mut buf = BytesMut::with_capacity(cap);
                buf.extend_from_slice(f);
                buf.extend_from_slice(&data);
                rest = Some(buf);
            }
            (Some(_), Some(buf)) => buf.extend_from_slice(&data),
        }
    }
    Ok(match rest {
        Some(buf) => buf.freeze(),
        None => first.unwrap_or_default(),
    })
}

/// The two fields the gateway needs, borrowed from the body.
#[derive(Debug, PartialEq, Eq)]
pub struct Peek<'a> {
    pub model: Cow<'a, str>,
    pub stream: bool,
    /// `max_completion_tokens`, else `max_tokens`.
    pub max_tokens: Option<u64>,
    /// The client sent `stream_options` (so the gateway must not add its own).
    pub has_stream_options: bool,
}

#[derive(Deserialize)]
struct RawPeek<'a> {
    #[serde(borrow, default)]
    model: Option<BorrowedStr<'a>>,
    #[serde(default)]
    stream: Option<bool>,
    #[serde(default)]
    max_tokens: Option<u64>,
    #[serde(default)]
    max_completion_tokens: Option<u64>,
    #[serde(default, deserialize_with = "present")]
    stream_options: bool,
}

/// True for any value, `null` included: a present key must not be added a second time.
fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
    serde::de::IgnoredAny::deserialize(d).map(|_| true)
}

/// A string that borrows from the body unless it has escapes. (serde's own `Cow<str>` always
/// copies when nested in an `Option`.)
struct BorrowedStr<'a>(Cow<'a, str>);

impl<'de: 'a, 'a> Deserialize<'de> for BorrowedStr<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> serde::de::Visitor<'de> for V<'a> {
            type Value = BorrowedStr<'a>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E: serde::de::Error>(
                self,
                v: &'de str,
            ) -> Result<Self::Value, E> {
                Ok(BorrowedStr(Cow::Borrowed(v)))
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(BorrowedStr(Cow::Owned(v.to_owned())))
            }
        }
        d.deserialize_str(V(std::marker::PhantomData))
    }
}

/// Parses just enough of the body. The whole document is still checked for well-formedness,
/// and a repeated `model` key is rejected, so the gateway and the replica can never disagree
/// about which model a request is for.
pub fn peek(body: &[u8]) -> Result<Peek<'_>, GatewayError> {
    let first = body.iter().find(|b| !b.is_ascii_whitespace());
    if first != Some(&b'{') {
        return Err(GatewayError::InvalidBody(
            "expected a JSON object".to_owned(),
        ));
    }
    // JSON is UTF-8. Checked once for the whole body (word at a time over ASCII): serde then
    // reads a `str` and skips its own check of each string it parses, about 100 instructions
    // each. A body with invalid UTF-8 in a string serde only skips (a message's content) was
    // forwarded before; the replica's JSON parser would refuse it, so now the gateway does.
    let text = std::str::from_utf8(body).map_err(|e| {
        GatewayError::InvalidBody(format!(
            "not valid UTF-8 at byte {} (JSON text must be UTF-8)",
            e.valid_up_to()
        ))
    })?;
    let raw: RawPeek<'_> = serde_json::from_str(text).map_err(|e| {
        let msg = e.to_string();
        GatewayError::InvalidBody(msg.replace("struct RawPeek", "a JSON object"))
    })?;
    let model = raw.model.ok_or(GatewayError::MissingModel)?.0;
    if model.is_empty() {
        return Err(GatewayError::MissingModel);
    }
    Ok(Peek {
        model,
        stream: raw.stream.unwrap_or(false),
        max_tokens: raw.max_completion_tokens.or(raw.max_tokens),
        has_stream_options: raw.stream_options,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peeks_model_and_stream_borrowing() {
        let p = peek(br#"{"messages":[{"role":"user","content":"hi"}],"model":"m","stream":true}"#)
            .unwrap();
        assert_eq!(p.model, "m");
        assert!(matches!(p.model, Cow::Borrowed(_)));
        assert!(p.stream);
        let p = peek(br#" {"model":"m\u0031","stream":null}"#).unwrap();
        assert_eq!(p.model, "m1");
        assert!(!p.stream);
        assert!(!p.has_stream_options && p.max_tokens.is_none());
        let p = peek(
            br#"{"model":"m","max_tokens":5,"max_completion_tokens":7,"stream_options":null}"#,
        )
        .unwrap();
        assert_eq!(p.max_tokens, Some(7));
        assert!(p.has_stream_options);
    }

    #[test]
    fn bad_bodies_are_client_errors() {
        let cases: &[(&[u8], &str)] = &[
            (b"", "invalid_body"),
            (b"[1,2]", "invalid_body"),
            (b"{\"model\":\"m\"", "invalid_body"),
            (b"{\"model\":\"m\"} trailing", "invalid_body"),
            (b"{\"model\":5}", "invalid_body"),
            (b"{\"model\":\"m\",\"stream\":\"yes\"}", "invalid_body"),
            (b"{\"model\":\"a\",\"model\":\"b\"}", "invalid_body"),
            (b"{\"model\":\"\xff\xfe\"}", "invalid_body"),
            (
                b"{\"model\":\"m\",\"messages\":[{\"content\":\"\xc3\"}]}",
                "invalid_body",
            ),
            (b"{\"messages\":[]}", "missing_model"),
            (b"{\"model\":\"\"}", "missing_model"),
            (b"{\"model\":null}", "missing_model"),
        ];
        for (body, code) in cases {
            let err = peek(body).unwrap_err();
            assert_eq!(err.code(), *code, "{:?}", String::from_utf8_lossy(body));
            assert_eq!(err.status(), 400);
            assert!(!err.message().contains("RawPeek"), "{}", err.message());
        }
    }
}
