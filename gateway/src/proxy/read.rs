//! Stage 4: read the body once into `Bytes` under a size cap and a deadline, then peek `model`
//! and `stream` by borrowing from those bytes. The same bytes are forwarded unchanged.

use std::borrow::Cow;

use bytes::{Bytes, BytesMut};
use http_body_util::BodyExt;
use hyper::body::Incoming;

use crate::error::GatewayError;
use crate::fields::Fields;

/// A request's body: from hyper (TLS, HTTP/2), or from the gateway's own HTTP/1.1 server
/// (`crate::h1`), which reads it from the connection when asked.
pub enum ClientBody<'a> {
    Hyper(Incoming),
    H1(crate::h1::RequestBody<'a>),
}

/// Collects the request body. A declared length above `max` fails before any read (HTTP/1.1's
/// reader knows its length from the head it parsed; an h2 request's is read from `fields`).
pub async fn read_body(
    body: ClientBody<'_>,
    fields: &Fields,
    max: usize,
    deadline: tokio::time::Instant,
) -> Result<Bytes, GatewayError> {
    let mut body = match body {
        ClientBody::H1(body) => return body.read_all(max, deadline).await,
        ClientBody::Hyper(body) => body,
    };
    let content_length = fields
        .get("content-length")
        .and_then(crate::codec::content_length);
    if content_length.is_some_and(|n| n > max as u64) {
        return Err(GatewayError::BodyTooLarge { limit: max });
    }
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

/// Reads just enough of the body: `model`, `stream`, the token limits and whether
/// `stream_options` is there. The whole document is still checked for well-formedness, and a
/// repeated known key is rejected, so the gateway and the replica can never disagree about
/// which model a request is for.
///
/// A hand scanner, held to what `serde_json` accepts by a proptest (`peek_serde` is the
/// reference in the tests): serde spent about 2,000 instructions on a small chat request,
/// most of it skipping the messages, which this does with one SIMD search per string.
pub fn peek(body: &[u8]) -> Result<Peek<'_>, GatewayError> {
    // JSON is UTF-8. Outside strings the grammar allows only ASCII; inside, the scan that
    // finds a string's end also tells whether it holds bytes above 0x7F, and only such a
    // string is checked as UTF-8. (A pass over the whole body first was 40 % of the peek of a
    // long prompt.) A body with invalid UTF-8 in a string the peek only skips (a message's
    // content) is refused too: the replica's JSON parser would refuse it.
    Scanner { bytes: body, at: 0 }
        .top()
        .map_err(|(what, at)| GatewayError::InvalidBody(format!("{what} at byte {at}")))?
        .into_peek()
}

/// What the scanner found at the top level. Each known key may come once (a second one is an
/// error even after a `null`, as serde's derived structs have it).
#[derive(Default)]
struct Found<'a> {
    model: Option<Cow<'a, str>>,
    stream: Option<bool>,
    max_tokens: Option<u64>,
    max_completion_tokens: Option<u64>,
    stream_options: bool,
}

impl<'a> Found<'a> {
    /// The request's peek: a model is required, and `max_completion_tokens` wins.
    fn into_peek(self) -> Result<Peek<'a>, GatewayError> {
        let model = self.model.ok_or(GatewayError::MissingModel)?;
        if model.is_empty() {
            return Err(GatewayError::MissingModel);
        }
        Ok(Peek {
            model,
            stream: self.stream.unwrap_or(false),
            max_tokens: self.max_completion_tokens.or(self.max_tokens),
            has_stream_options: self.stream_options,
        })
    }
}

/// An error: what was wrong, and at which byte.
type ScanError = (&'static str, usize);

/// A JSON scanner over the body's bytes (RFC 8259, as `serde_json` reads it).
struct Scanner<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Scanner<'a> {
    fn peek(&self) -> Option<u8> {
        self.bytes.get(self.at).copied()
    }

    fn fail<T>(&self, what: &'static str) -> Result<T, ScanError> {
        Err((what, self.at))
    }

    fn ws(&mut self) {
        while let Some(b' ' | b'\n' | b'\t' | b'\r') = self.peek() {
            self.at += 1;
        }
    }

    /// Skips whitespace and takes `byte`, or fails with `what`.
    fn eat(&mut self, byte: u8, what: &'static str) -> Result<(), ScanError> {
        self.ws();
        if self.peek() != Some(byte) {
            return self.fail(if self.peek().is_none() {
                "EOF while parsing"
            } else {
                what
            });
        }
        self.at += 1;
        Ok(())
    }

    /// The top-level object.
    fn top(mut self) -> Result<Found<'a>, ScanError> {
        let mut found = Found::default();
        // The known keys met so far, a bit each.
        let mut seen = 0u8;
        self.ws();
        if self.peek() != Some(b'{') {
            return self.fail("expected a JSON object");
        }
        self.at += 1;
        self.ws();
        if self.peek() == Some(b'}') {
            self.at += 1;
        } else {
            loop {
                self.eat(b'"', "key must be a string")?;
                let key = self.string(true)?;
                self.eat(b':', "expected `:`")?;
                self.ws();
                let bit = match &*key {
                    b"model" => 1,
                    b"stream" => 2,
                    b"max_tokens" => 4,
                    b"max_completion_tokens" => 8,
                    b"stream_options" => 16,
                    _ => 0,
                };
                if seen & bit != 0 {
                    return self.fail("duplicate field");
                }
                seen |= bit;
                match bit {
                    1 => found.model = self.null_or(|s| s.string_value())?,
                    2 => found.stream = self.null_or(Self::boolean)?,
                    4 => found.max_tokens = self.null_or(Self::count)?,
                    8 => found.max_completion_tokens = self.null_or(Self::count)?,
                    16 => {
                        self.skip_value()?;
                        found.stream_options = true;
                    }
                    _ => self.skip_value()?,
                }
                if !self.next_member()? {
                    break;
                }
            }
        }
        self.ws();
        if self.at != self.bytes.len() {
            return self.fail("trailing characters");
        }
        Ok(found)
    }

    /// After a member of the top-level object: `true` at a comma, `false` at its end.
    fn next_member(&mut self) -> Result<bool, ScanError> {
        self.ws();
        match self.peek() {
            Some(b',') => {
                self.at += 1;
                Ok(true)
            }
            Some(b'}') => {
                self.at += 1;
                Ok(false)
            }
            None => self.fail("EOF while parsing an object"),
            Some(_) => self.fail("expected `,` or `}`"),
        }
    }

    /// `null`, or what `value` reads.
    fn null_or<T>(
        &mut self,
        value: impl FnOnce(&mut Self) -> Result<T, ScanError>,
    ) -> Result<Option<T>, ScanError> {
        if self.peek() == Some(b'n') {
            self.literal(b"null")?;
            return Ok(None);
        }
        value(self).map(Some)
    }

    fn literal(&mut self, word: &[u8]) -> Result<(), ScanError> {
        for &b in word {
            if self.peek() != Some(b) {
                return self.fail("expected ident");
            }
            self.at += 1;
        }
        Ok(())
    }

    fn boolean(&mut self) -> Result<bool, ScanError> {
        match self.peek() {
            Some(b't') => self.literal(b"true").map(|()| true),
            Some(b'f') => self.literal(b"false").map(|()| false),
            _ => self.fail("invalid type: expected a boolean"),
        }
    }

    /// A token count: an integer from 0 to `u64::MAX` (a fraction, an exponent or a sign is a
    /// type error, as for serde's `u64`).
    fn count(&mut self) -> Result<u64, ScanError> {
        let start = self.at;
        self.number()?;
        let digits = &self.bytes[start..self.at];
        if !digits.iter().all(u8::is_ascii_digit) {
            self.at = start;
            return self.fail("invalid type: expected a non-negative integer");
        }
        digits
            .iter()
            .try_fold(0u64, |n, d| {
                n.checked_mul(10)?.checked_add(u64::from(d - b'0'))
            })
            .map_or_else(|| self.fail("invalid type: integer too large"), Ok)
    }

    /// A string value read as text (escapes resolved, surrogates paired).
    fn string_value(&mut self) -> Result<Cow<'a, str>, ScanError> {
        if self.peek() != Some(b'"') {
            return self.fail("invalid type: expected a string");
        }
        self.at += 1;
        let start = self.at;
        match self.string(true)? {
            // Checked as UTF-8 where it holds bytes above 0x7F: this is for the type.
            Cow::Borrowed(raw) => std::str::from_utf8(raw)
                .map(Cow::Borrowed)
                .map_err(|_| ("invalid unicode code point", start)),
            Cow::Owned(text) => String::from_utf8(text)
                .map(Cow::Owned)
                .map_err(|_| ("invalid unicode code point", start)),
        }
    }

    /// A number, as JSON's grammar has it.
    fn number(&mut self) -> Result<(), ScanError> {
        if self.peek() == Some(b'-') {
            self.at += 1;
        }
        match self.peek() {
            Some(b'0') => {
                self.at += 1;
                if self.peek().is_some_and(|b| b.is_ascii_digit()) {
                    return self.fail("invalid number");
                }
            }
            Some(b'1'..=b'9') => self.digits(),
            _ => return self.fail("invalid number"),
        }
        if self.peek() == Some(b'.') {
            self.at += 1;
            if !self.peek().is_some_and(|b| b.is_ascii_digit()) {
                return self.fail("invalid number");
            }
            self.digits();
        }
        if let Some(b'e' | b'E') = self.peek() {
            self.at += 1;
            if let Some(b'+' | b'-') = self.peek() {
                self.at += 1;
            }
            if !self.peek().is_some_and(|b| b.is_ascii_digit()) {
                return self.fail("invalid number");
            }
            self.digits();
        }
        Ok(())
    }

    fn digits(&mut self) {
        while self.peek().is_some_and(|b| b.is_ascii_digit()) {
            self.at += 1;
        }
    }

    /// A string's contents, its opening quote already taken, as bytes (UTF-8: checked where
    /// they hold bytes above 0x7F). `text`: it is read as text (a key, the model): one with
    /// escapes is decoded by serde_json, which also refuses a `\u` escape of half a surrogate
    /// pair; a skipped string only needs well-formed escapes. (Keys stay bytes: turning each
    /// into a `str` cost 80 instructions a key.)
    #[inline(always)]
    fn string(&mut self, text: bool) -> Result<Cow<'a, [u8]>, ScanError> {
        let start = self.at;
        let mut escaped = false;
        loop {
            let i = self.quote_or_escape()?;
            self.at = i + 1;
            if self.bytes[i] == b'"' {
                if !(escaped && text) {
                    return Ok(Cow::Borrowed(&self.bytes[start..i]));
                }
                // With its quotes. Rare (an escaped key or model name): no need to be quick.
                return serde_json::from_slice::<String>(&self.bytes[start - 1..=i])
                    .map(|s| Cow::Owned(s.into_bytes()))
                    .map_err(|_| ("lone surrogate in hex escape", start));
            }
            escaped = true;
            self.escape()?;
        }
    }

    /// Where the next `"` or `\\` is; a control character before it is an error, and so are
    /// bytes above 0x7F that are not UTF-8. (A UTF-8 sequence holds no byte below 0x80, so the
    /// pieces between escapes are checked each on its own.)
    #[inline(always)]
    fn quote_or_escape(&mut self) -> Result<usize, ScanError> {
        match crate::json::quote_or_escape(self.bytes, self.at) {
            Ok((i, false)) => Ok(i),
            Ok((i, true)) => match std::str::from_utf8(&self.bytes[self.at..i]) {
                Ok(_) => Ok(i),
                Err(e) => {
                    self.at += e.valid_up_to();
                    self.fail("invalid unicode code point")
                }
            },
            Err(i) => {
                self.at = i;
                self.fail(if i == self.bytes.len() {
                    "EOF while parsing a string"
                } else {
                    "control character in a string"
                })
            }
        }
    }

    /// One escape, its backslash already taken: a known letter, or `u` and four hex digits.
    fn escape(&mut self) -> Result<(), ScanError> {
        let digits = match self.peek() {
            Some(b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't') => 0,
            Some(b'u') => 4,
            None => return self.fail("EOF while parsing a string"),
            Some(_) => return self.fail("invalid escape"),
        };
        self.at += 1;
        for _ in 0..digits {
            match self.peek() {
                Some(b) if b.is_ascii_hexdigit() => self.at += 1,
                None => return self.fail("EOF while parsing a string"),
                Some(_) => return self.fail("invalid escape"),
            }
        }
        Ok(())
    }

    /// Skips one value of any depth (without recursion: nesting is bounded only by the body).
    fn skip_value(&mut self) -> Result<(), ScanError> {
        let mut open: smallvec::SmallVec<[u8; 16]> = smallvec::SmallVec::new();
        loop {
            self.ws();
            match self.peek() {
                Some(b'"') => {
                    self.at += 1;
                    self.string(false)?;
                }
                Some(b'n') => self.literal(b"null")?,
                Some(b't') => self.literal(b"true")?,
                Some(b'f') => self.literal(b"false")?,
                Some(b'-' | b'0'..=b'9') => self.number()?,
                Some(b @ (b'[' | b'{')) => {
                    self.at += 1;
                    self.ws();
                    let close = if b == b'[' { b']' } else { b'}' };
                    if self.peek() == Some(close) {
                        self.at += 1;
                    } else {
                        open.push(b);
                        if b == b'{' {
                            self.member_key()?;
                        }
                        continue;
                    }
                }
                None => return self.fail("EOF while parsing a value"),
                Some(_) => return self.fail("expected value"),
            }
            // A value ended: close what it ends, or go on after a comma.
            loop {
                let Some(&b) = open.last() else {
                    return Ok(());
                };
                self.ws();
                match (self.peek(), b) {
                    (Some(b','), _) => {
                        self.at += 1;
                        if b == b'{' {
                            self.member_key()?;
                        }
                        break;
                    }
                    (Some(b']'), b'[') | (Some(b'}'), b'{') => {
                        self.at += 1;
                        open.pop();
                    }
                    (None, _) => return self.fail("EOF while parsing a list or object"),
                    _ => return self.fail("expected `,` or the end of a list or object"),
                }
            }
        }
    }

    /// A key and its colon inside a skipped object.
    fn member_key(&mut self) -> Result<(), ScanError> {
        self.eat(b'"', "key must be a string")?;
        self.string(false)?;
        self.eat(b':', "expected `:`")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde::Deserialize;

    /// The reference: what `peek` did with serde before the hand scanner.
    fn peek_serde(body: &[u8]) -> Result<Peek<'_>, GatewayError> {
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
        fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
            serde::de::IgnoredAny::deserialize(d).map(|_| true)
        }
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
        let first = body.iter().find(|b| !b.is_ascii_whitespace());
        if first != Some(&b'{') {
            return Err(GatewayError::InvalidBody(String::new()));
        }
        let text =
            std::str::from_utf8(body).map_err(|_| GatewayError::InvalidBody(String::new()))?;
        let raw: RawPeek<'_> =
            serde_json::from_str(text).map_err(|e| GatewayError::InvalidBody(e.to_string()))?;
        Found {
            model: raw.model.map(|m| m.0),
            stream: raw.stream,
            max_tokens: raw.max_tokens,
            max_completion_tokens: raw.max_completion_tokens,
            stream_options: raw.stream_options,
        }
        .into_peek()
    }

    /// The scanner and serde agree: the same fields, or an error with the same code.
    fn agree(body: &[u8]) -> Result<(), TestCaseError> {
        let (ours, theirs) = (peek(body), peek_serde(body));
        let text = String::from_utf8_lossy(body);
        match (&ours, &theirs) {
            (Ok(a), Ok(b)) => prop_assert_eq!(a, b, "{}", text),
            (Err(a), Err(b)) => prop_assert_eq!(a.code(), b.code(), "{} / {:?}", text, b.message()),
            _ => prop_assert!(
                false,
                "{}: scanner {:?}, serde {:?}",
                text,
                ours.as_ref().map_err(GatewayError::message),
                theirs.as_ref().map_err(GatewayError::message)
            ),
        }
        Ok(())
    }

    /// Pieces JSON is made of, valid and not, for the scanner and serde to disagree on.
    fn piece() -> impl Strategy<Value = String> {
        let scalar = prop::sample::select(vec![
            "null",
            "true",
            "false",
            "nul",
            "tru",
            "0",
            "-0",
            "1",
            "16",
            "00",
            "01",
            "-",
            "1.",
            "1.5",
            ".5",
            "1e3",
            "1E+2",
            "1e",
            "-1",
            "0.0",
            "18446744073709551615",
            "18446744073709551616",
            "\"\"",
            "\"m\"",
            "\"a\\\"b\"",
            "\"\\u0041\"",
            "\"\\ud83d\\ude00\"",
            "\"\\ud800\"",
            "\"\\udc00\"",
            "\"\\ud800\\n\"",
            "\"\\ud800\\u0041\"",
            "\"\\u00zz\"",
            "\"\\x\"",
            "\"\\/\"",
            "\"\u{1}\"",
            "\"\t\"",
            "\"é\"",
            "[]",
            "{}",
            "[1,]",
            "[,1]",
            "{\"a\":}",
            "{\"a\" 1}",
            "{1:2}",
            "[[[[]]]]",
            "{\"a\":[{\"b\":null}]}",
            "\"\\u004",
            "\"abc",
            "[1}",
            "{\"a\":1]",
            "[{]}",
            "{\"a\":[}]",
            "[[]",
            "[]]",
            "{\"a\":{}}}",
            "[\"]\"]",
            "{\"}\":1}",
            "\"lorem ipsum lorem ipsum lorem ipsum lorem ipsum lorem\"",
            "\"lorem ipsum lorem ipsum lorem ipsum\\\"lorem\\n ipsum\\u00e9 lorem\"",
            "\"lorem ipsum lorem ipsum lorem ipsum \u{1f} lorem\"",
            "\"lorem ipsum lorem ipsum lorem ipsum lorem ipsum lorem",
            "\"0123456\\\"abcdefg\\\\hijklmnopqrstuvwxyz0123456789\"",
        ]);
        let key = prop::sample::select(vec![
            "model",
            "stream",
            "max_tokens",
            "max_completion_tokens",
            "stream_options",
            "messages",
            "mod\\u0065l",
            "stream\\u005f",
            "\\ud800",
            "x",
        ]);
        (key, scalar, prop::sample::select(vec![" ", "", "\n", "\t"]))
            .prop_map(|(k, v, ws)| format!("\"{k}\"{ws}:{ws}{v}"))
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(4000))]

        /// Objects of the pieces above, with their members in any order and repeated.
        #[test]
        fn the_scanner_reads_bodies_as_serde_does(
            members in prop::collection::vec(piece(), 0..6),
            sep in prop::sample::select(vec![",", ", ", " ,", ",,", ""]),
            tail in prop::sample::select(vec!["", " ", "\n", " x", "}", ","]),
        ) {
            let body = format!("{{{}}}{tail}", members.join(sep));
            agree(body.as_bytes())?;
        }

        /// Real requests, cut or with one byte changed anywhere.
        #[test]
        fn a_damaged_request_is_refused_as_serde_refuses_it(
            which in 0usize..5,
            at in any::<prop::sample::Index>(),
            // With bytes above 0x7F: a lead, continuations, bytes UTF-8 never has.
            byte in prop::sample::select(b"{}[],:\"\\ 0-.eEtfnu\x01x\xc3\xa9\x80\xed\xf4\xff".to_vec()),
            how in 0u8..3,
        ) {
            let bodies = [
                r#"{"model":"m","messages":[{"role":"user","content":"hi \"there\" \u00e9"}],"stream":true,"max_tokens":16}"#,
                r#"{"model":"bench-model","stream":false,"max_tokens":16,"messages":[{"role":"user","content":"lorem ipsum lorem ipsum lorem ipsum lorem ipsum lorem ipsum lorem ipsum lorem ipsum lorem ipsum lorem"}]}"#,
                r#"{ "messages" : [ { "role" : "system" , "content" : [ { "type" : "text" , "text" : "x" } ] } ] , "model" : "org/m-1" , "stream_options" : { "include_usage" : true } , "temperature" : 0.7e-1 }"#,
                r#"{"model":"a\/b","max_completion_tokens":0,"stop":["\n",null,-1.5E+3],"n":1}"#,
                // Raw UTF-8 in a key, the model and a content longer than the word scan.
                r#"{"modèle":1,"model":"é-m","messages":[{"role":"user","content":"héllo wörld 日本語 lorem ipsum lorem ipsum lorem ipsum 𝄞"}]}"#,
            ];
            let mut body = bodies[which].as_bytes().to_vec();
            let i = at.index(body.len());
            match how {
                0 => body[i] = byte,
                1 => { body.remove(i); }
                _ => body.truncate(i),
            }
            agree(&body)?;
        }
    }

    #[test]
    fn utf8_is_checked_in_every_string_and_refused_outside_them() {
        let long = "lorem ipsum dolor sit amet, consectetur";
        let with = |content: &[u8]| {
            [
                &br#"{"model":"m","messages":[{"role":"user","content":""#[..],
                content,
                br#""}]}"#,
            ]
            .concat()
        };
        let cases: Vec<(Vec<u8>, bool)> = vec![
            (with("héllo 日本語 𝄞".as_bytes()), true),
            (with(format!("{long} 日本語 {long} 𝄞").as_bytes()), true),
            // Overlong, a surrogate, past U+10FFFF, cut before the quote, a lone continuation:
            // in a short string (the word scan) and past 32 bytes (the SIMD search).
            (with(b"\xc0\xaf"), false),
            (with(b"\xed\xa0\x80"), false),
            (with(b"\xf4\x90\x80\x80"), false),
            (with(b"ab\xe6\x97"), false),
            (with(b"\x80"), false),
            (
                with(&[long.as_bytes(), b"\xed\xa0\x80", long.as_bytes()].concat()),
                false,
            ),
            (with(&[long.as_bytes(), b"\xe6\x97"].concat()), false),
            // Between escapes.
            (with("a\\n é \\u00e9 ü\\t".as_bytes()), true),
            (with(b"a\\n \xc3 \\t"), false),
            // In a key and in the model.
            ("{\"modèle\":1,\"model\":\"é\"}".as_bytes().to_vec(), true),
            (b"{\"mod\xffle\":1,\"model\":\"m\"}".to_vec(), false),
            (b"{\"model\":\"m\xc3\"}".to_vec(), false),
            // Outside strings.
            (b"{\"model\":\"m\"}\xc3\xa9".to_vec(), false),
            (b"{\"model\":\"m\",\xc3\xa9:1}".to_vec(), false),
        ];
        for (body, ok) in cases {
            assert_eq!(
                peek(&body).is_ok(),
                ok,
                "{}",
                String::from_utf8_lossy(&body)
            );
            agree(&body).unwrap();
        }
    }

    #[test]
    fn deep_nesting_is_skipped_without_recursion() {
        let depth = 100_000;
        let body = format!(
            "{{\"model\":\"m\",\"x\":{}{}}}",
            "[".repeat(depth),
            "]".repeat(depth)
        );
        assert_eq!(peek(body.as_bytes()).unwrap().model, "m");
        let open = format!("{{\"model\":\"m\",\"x\":{}}}", "[{\"a\":".repeat(depth));
        assert_eq!(peek(open.as_bytes()).unwrap_err().code(), "invalid_body");
    }

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
