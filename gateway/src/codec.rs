//! HTTP/1.1 wire format shared by both legs: the body-framing decoder (RFC 9112 §6–7:
//! Content-Length, chunked with extensions and trailers, close-delimited) and the small field
//! rules (token lists, lengths, the final transfer coding, decimal numbers). The upstream
//! client (`upstream.rs`) and the data port's server (`h1.rs`) each own their sockets and
//! heads; neither owns these.

use bytes::{Bytes, BytesMut};

/// Longest chunk-size or trailer line.
const MAX_LINE: usize = 4096;

/// Bytes that are not valid HTTP/1.1 framing; says what was wrong.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Malformed(pub &'static str);

/// Where a message body stands: how much is left, and how its end is recognised.
#[derive(Debug)]
pub struct Decoder {
    state: State,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Length(u64),
    UntilClose,
    ChunkSize,
    ChunkData(u64),
    ChunkEnd,
    Trailers,
    Done,
    /// The framing after the last piece handed out is broken: the next call says so.
    Broken(&'static str),
}

impl Decoder {
    /// A body of `n` bytes (`Content-Length`); `0` is an empty body, already complete.
    pub fn length(n: u64) -> Self {
        let state = if n == 0 {
            State::Done
        } else {
            State::Length(n)
        };
        Self { state }
    }

    /// A chunked body (`Transfer-Encoding: ..., chunked`).
    pub fn chunked() -> Self {
        Self {
            state: State::ChunkSize,
        }
    }

    /// A body that ends when the connection does (a response without a length).
    pub fn until_close() -> Self {
        Self {
            state: State::UntilClose,
        }
    }

    pub fn is_end(&self) -> bool {
        self.state == State::Done
    }

    /// Whether only the end of the connection can end this body.
    pub fn ends_at_close(&self) -> bool {
        self.state == State::UntilClose
    }

    /// The connection ended: true (and the body complete) if that is how this body ends.
    pub fn end_at_close(&mut self) -> bool {
        if self.ends_at_close() {
            self.state = State::Done;
            return true;
        }
        false
    }

    /// Bytes still expected, when the framing says.
    pub fn remaining(&self) -> Option<u64> {
        match self.state {
            State::Length(n) => Some(n),
            State::Done => Some(0),
            _ => None,
        }
    }

    /// The next piece of body already in `buf` (consumed from it), or `None` when more bytes
    /// are needed or the body is complete. Framing that follows the piece (a chunk's end, the
    /// final empty chunk and trailers) is consumed too when it is there, so the last piece
    /// already reports the end of the body.
    ///
    /// Broken framing after a piece is reported by the next call: the piece itself is good
    /// (a replica's last event before a bad chunk line is still passed on).
    pub fn next_buffered(&mut self, buf: &mut BytesMut) -> Result<Option<Bytes>, Malformed> {
        if let State::Broken(why) = self.state {
            return Err(Malformed(why));
        }
        let data = self.step(buf)?;
        if data.is_some() {
            if let Err(Malformed(why)) = self.step_framing(buf) {
                self.state = State::Broken(why);
            }
        }
        Ok(data)
    }

    /// Advances with what is buffered: `Some(data)` when there is body to hand out, `None`
    /// when more bytes are needed (or the body is done).
    fn step(&mut self, buf: &mut BytesMut) -> Result<Option<Bytes>, Malformed> {
        self.step_framing(buf)?;
        if buf.is_empty() {
            return Ok(None);
        }
        Ok(match self.state {
            State::Length(n) | State::ChunkData(n) => {
                let take = buf.len().min(usize::try_from(n).unwrap_or(usize::MAX));
                let left = n - take as u64;
                self.state = match (self.state, left) {
                    (State::Length(_), 0) => State::Done,
                    (State::Length(_), l) => State::Length(l),
                    (_, 0) => State::ChunkEnd,
                    (_, l) => State::ChunkData(l),
                };
                Some(buf.split_to(take).freeze())
            }
            State::UntilClose => Some(buf.split().freeze()),
            _ => None,
        })
    }

    /// Consumes chunk-size lines, chunk ends and trailers that are fully buffered.
    fn step_framing(&mut self, buf: &mut BytesMut) -> Result<(), Malformed> {
        loop {
            // Every framing state needs a byte to move: a stream's token event empties the
            // buffer, and the size-line and line searches on nothing cost about 70
            // instructions a call, two or three calls an event.
            if buf.is_empty() {
                return Ok(());
            }
            match self.state {
                State::ChunkSize => {
                    let size = match plain_chunk_size(buf) {
                        Some(size) => size,
                        None => match take_line(buf, parse_chunk_size)? {
                            Some(size) => size?,
                            None => return Ok(()),
                        },
                    };
                    self.state = if size == 0 {
                        State::Trailers
                    } else {
                        State::ChunkData(size)
                    };
                }
                State::ChunkEnd => {
                    // Almost always exactly CRLF, taken as such; the long way finds out what else.
                    if buf.starts_with(b"\r\n") {
                        bytes::Buf::advance(buf, 2);
                        self.state = State::ChunkSize;
                        continue;
                    }
                    let Some(empty) = take_line(buf, <[u8]>::is_empty)? else {
                        return Ok(());
                    };
                    if !empty {
                        return Err(Malformed("chunk longer than its size"));
                    }
                    self.state = State::ChunkSize;
                }
                State::Trailers => {
                    let Some(empty) = take_line(buf, <[u8]>::is_empty)? else {
                        return Ok(());
                    };
                    // Trailer fields are dropped: nothing downstream reads them.
                    if empty {
                        self.state = State::Done;
                    }
                }
                _ => return Ok(()),
            }
        }
    }
}

/// One line off the front of the buffer, if a whole one is there: `read` gets it (without CRLF
/// or LF) where it lies, then the buffer moves past it. (Splitting each line off as a
/// `BytesMut` of its own cost two handles per chunk, about 100 instructions.)
fn take_line<T>(buf: &mut BytesMut, read: impl FnOnce(&[u8]) -> T) -> Result<Option<T>, Malformed> {
    match memchr::memchr(b'\n', buf) {
        Some(i) => {
            let line = &buf[..i];
            let got = read(line.strip_suffix(b"\r").unwrap_or(line));
            bytes::Buf::advance(buf, i + 1);
            Ok(Some(got))
        }
        None if buf.len() > MAX_LINE => Err(Malformed("chunk line too long")),
        None => Ok(None),
    }
}

/// The usual chunk-size line, hex digits and CRLF (`1a3f\r\n`), read and consumed in place,
/// without a line search (a stream has a chunk per token). `None` for anything else
/// (extensions, spaces, a bare LF, a line not all there yet), which `take_line` reads.
///
/// One pass adds the digits up as it counts them (counting first and then parsing the digits
/// with `parse_chunk_size` cost about 70 instructions more per event); the limits are
/// `parse_chunk_size`'s: one to 15 digits.
fn plain_chunk_size(buf: &mut BytesMut) -> Option<u64> {
    let mut size = 0u64;
    let mut digits = 0;
    for &b in buf.iter().take(16) {
        let Some(d) = hex_value(b) else { break };
        size = size << 4 | d;
        digits += 1;
    }
    if digits == 0 || digits > 15 || buf.get(digits..digits + 2) != Some(b"\r\n") {
        return None;
    }
    bytes::Buf::advance(buf, digits + 2);
    Some(size)
}

/// `1a3f;ext=1` → 0x1a3f.
fn parse_chunk_size(line: &[u8]) -> Result<u64, Malformed> {
    let digits = line
        .split(|&b| b == b';')
        .next()
        .unwrap_or_default()
        .trim_ascii();
    if digits.is_empty() || digits.len() > 15 {
        return Err(Malformed("bad chunk size"));
    }
    digits.iter().try_fold(0u64, |n, &b| {
        let d = hex_value(b).ok_or(Malformed("bad chunk size"))?;
        Ok(n * 16 + d)
    })
}

/// One hexadecimal digit's value, either case.
fn hex_value(b: u8) -> Option<u64> {
    let d = match b {
        b'0'..=b'9' => b - b'0',
        b'a'..=b'f' => b - b'a' + 10,
        b'A'..=b'F' => b - b'A' + 10,
        _ => return None,
    };
    Some(u64::from(d))
}

/// Whether a comma-separated field value (`Connection`) holds `token`, case-insensitively.
pub fn has_token(v: &[u8], token: &[u8]) -> bool {
    v.split(|&b| b == b',')
        .any(|t| t.trim_ascii().eq_ignore_ascii_case(token))
}

/// A `Content-Length` value: decimal digits only (no sign, nothing inside), at most 15 of them;
/// surrounding whitespace is allowed.
pub fn content_length(v: &[u8]) -> Option<u64> {
    let v = v.trim_ascii();
    if v.is_empty() || v.len() > 15 {
        return None;
    }
    // One pass: check and add up each digit.
    v.iter().try_fold(0u64, |n, &d| {
        d.is_ascii_digit().then(|| n * 10 + u64::from(d - b'0'))
    })
}

/// Whether a `Transfer-Encoding` value ends with `chunked`: only the final coding decides the
/// framing.
pub fn last_coding_is_chunked(v: &[u8]) -> bool {
    v.rsplit(|&b| b == b',')
        .next()
        .is_some_and(|last| last.trim_ascii().eq_ignore_ascii_case(b"chunked"))
}

/// RFC 9110 §7.6.1's hop-by-hop fields (and the old `proxy-connection` and `keep-alive`):
/// never passed across the gateway, either way. `name` in lower case, as `HeaderName`s are.
pub fn is_hop_by_hop(name: &[u8]) -> bool {
    matches!(
        name,
        b"connection"
            | b"keep-alive"
            | b"proxy-connection"
            | b"proxy-authenticate"
            | b"proxy-authorization"
            | b"te"
            | b"trailer"
            | b"transfer-encoding"
            | b"upgrade"
    )
}

/// The field names a `Connection` value lists beyond `close` and `keep-alive`: hop-by-hop
/// too (usually there are none).
pub fn connection_named(v: &[u8]) -> impl Iterator<Item = &[u8]> {
    v.split(|&b| b == b',').map(<[u8]>::trim_ascii).filter(|t| {
        !t.is_empty() && !t.eq_ignore_ascii_case(b"close") && !t.eq_ignore_ascii_case(b"keep-alive")
    })
}

/// `n` in decimal, written at the end of `buf`, two digits a step (a request writes four
/// numbers: two lengths and the rate-limit fields; a digit a step cost 70 instructions each).
pub fn decimal(mut n: u64, buf: &mut [u8; 20]) -> &[u8] {
    const PAIRS: [u8; 200] = {
        let mut t = [0; 200];
        let mut i = 0;
        while i < 100 {
            t[2 * i] = b'0' + (i / 10) as u8;
            t[2 * i + 1] = b'0' + (i % 10) as u8;
            i += 1;
        }
        t
    };
    let mut i = buf.len();
    while n >= 100 {
        let pair = (n % 100) as usize * 2;
        n /= 100;
        i -= 2;
        buf[i..i + 2].copy_from_slice(&PAIRS[pair..pair + 2]);
    }
    if n >= 10 {
        let pair = n as usize * 2;
        i -= 2;
        buf[i..i + 2].copy_from_slice(&PAIRS[pair..pair + 2]);
    } else {
        i -= 1;
        buf[i] = b'0' + n as u8;
    }
    &buf[i..]
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `wire` to a decoder in the given pieces; returns the body bytes, or the error.
    fn decode(
        mut dec: Decoder,
        wire: &[u8],
        cuts: &[usize],
    ) -> Result<(Vec<u8>, Decoder, BytesMut), Malformed> {
        let mut points: Vec<usize> = cuts.iter().map(|c| c % (wire.len() + 1)).collect();
        points.push(wire.len());
        points.sort_unstable();
        let (mut buf, mut out, mut at) = (BytesMut::new(), Vec::new(), 0);
        for p in points {
            buf.extend_from_slice(&wire[at..p]);
            at = p;
            while let Some(data) = dec.next_buffered(&mut buf)? {
                out.extend_from_slice(&data);
            }
        }
        Ok((out, dec, buf))
    }

    /// A bad chunk line right behind a good chunk, read together: the good chunk's data is
    /// handed out, and the next call reports the break (it did once drop the data).
    #[test]
    fn a_piece_before_broken_framing_is_handed_out_first() {
        let mut dec = Decoder::chunked();
        let mut buf = BytesMut::from(&b"3\r\nabc\r\nzz\r\nxx\r\n"[..]);
        assert_eq!(
            dec.next_buffered(&mut buf).unwrap().as_deref(),
            Some(&b"abc"[..])
        );
        assert!(!dec.is_end());
        assert!(dec.next_buffered(&mut buf).is_err());
        assert!(dec.next_buffered(&mut BytesMut::new()).is_err());
    }

    proptest::proptest! {
        /// However the bytes are split across reads, the body is the same, it ends exactly at
        /// the message boundary, and what follows is left for the next message.
        #[test]
        fn any_split_of_a_body_decodes_the_same(cuts in proptest::collection::vec(0usize..200, 0..12)) {
            let chunked = b"5\r\nhello\r\n3;x=y\r\n, w\r\nA\r\norld!!!!!!\r\n0\r\nt: 1\r\n\r\nNEXT";
            let (out, body, rest) = decode(Decoder::chunked(), chunked, &cuts).unwrap();
            proptest::prop_assert_eq!(&out[..], b"hello, world!!!!!!");
            proptest::prop_assert!(body.is_end());
            proptest::prop_assert_eq!(&rest[..], b"NEXT");
            let (out, body, rest) = decode(Decoder::length(11), b"hello worldNEXT", &cuts).unwrap();
            proptest::prop_assert_eq!(&out[..], b"hello world");
            proptest::prop_assert!(body.is_end());
            proptest::prop_assert_eq!(&rest[..], b"NEXT");
            // A chunk longer than its size is an error wherever the reads fall.
            proptest::prop_assert!(decode(Decoder::chunked(), b"2\r\nabc\r\n0\r\n\r\n", &cuts).is_err());
        }
    }

    /// The in-place read of a plain size line agrees with the general one, and leaves every
    /// other line to it untouched.
    #[test]
    fn plain_chunk_size_lines_take_the_short_way() {
        for (line, plain) in [
            (&b"1a3f\r\nx"[..], Some(0x1a3f)),
            (b"FF\r\n", Some(255)),
            (b"aB9\r\n", Some(0xab9)),
            (b"0\r\n\r\n", Some(0)),
            (b"fffffffffffffff\r\n", Some(0xfff_ffff_ffff_ffff)),
            (b"ffffffffffffffff\r\n", None),
            (b"10 \r\n", None),
            (b"10;ext\r\n", None),
            (b"5\n", None),
            (b"5\r", None),
            (b"\r\n", None),
            (b"g\r\n", None),
        ] {
            let mut buf = BytesMut::from(line);
            let got = plain_chunk_size(&mut buf);
            assert_eq!(got, plain, "{:?}", String::from_utf8_lossy(line));
            match got {
                Some(n) => {
                    let end = memchr::memchr(b'\n', line).unwrap_or(0);
                    assert_eq!(parse_chunk_size(&line[..end - 1]).ok(), Some(n));
                    assert_eq!(&buf[..], &line[end + 1..]);
                }
                None => assert_eq!(&buf[..], line),
            }
        }
    }

    #[test]
    fn chunk_sizes_and_numbers() {
        assert_eq!(parse_chunk_size(b"ff").unwrap(), 255);
        assert_eq!(parse_chunk_size(b"A ; name=v").unwrap(), 10);
        assert!(parse_chunk_size(b"").is_err());
        assert!(parse_chunk_size(b"fffffffffffffffff").is_err());
        let mut b = [0; 20];
        assert_eq!(decimal(0, &mut b), b"0");
        assert_eq!(decimal(1234567890, &mut b), b"1234567890");
        assert_eq!(decimal(u64::MAX, &mut b), b"18446744073709551615");
        let tens = (1..20).flat_map(|k| [10u64.pow(k) - 1, 10u64.pow(k), 10u64.pow(k) + 1]);
        for n in (0..=100_000).chain(tens).chain([u64::MAX - 1, 1 << 63]) {
            assert_eq!(decimal(n, &mut b), n.to_string().as_bytes());
        }
    }

    #[test]
    fn field_rules() {
        assert_eq!(content_length(b"0"), Some(0));
        assert_eq!(content_length(b" 123 "), Some(123));
        for bad in [&b""[..], b"+1", b"-1", b"1 2", b"0x10", b"1234567890123456"] {
            assert_eq!(
                content_length(bad),
                None,
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        assert!(last_coding_is_chunked(b"gzip, Chunked"));
        assert!(!last_coding_is_chunked(b"chunked, gzip"));
        assert!(has_token(b"foo, Close", b"close"));
        assert!(!has_token(b"closed", b"close"));
    }
}
