//! The client socket as hyper sees it (TLS connections, and HTTP/2 without TLS; plain HTTP/1.1
//! is served by `crate::h1`, which parses framing itself), with an addition hyper does not
//! offer:
//!
//! * Request-smuggling guard. hyper accepts `Content-Length` together with
//!   `Transfer-Encoding` (it drops the length), and rejects conflicting lengths with a bare 400.
//!   We want an OpenAI-shaped 400 and a closed connection in both cases, so the bytes read are
//!   scanned for header blocks that carry both, or two different lengths. A conflicting second
//!   `Content-Length` line is renamed in place (same length) so hyper parses the request and the
//!   request path answers it. JSON bodies cannot contain a raw line break inside a string, so a
//!   body line never looks like a header line.
//!
//! It also holds `read_noting_drain`, the read both HTTP/1.1 legs use.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// Per-connection facts shared by the connection's reader and the request path.
#[derive(Default, Debug)]
pub struct ConnFlags {
    ambiguous: AtomicBool,
}

impl ConnFlags {
    pub fn ambiguous_framing(&self) -> bool {
        self.ambiguous.load(Ordering::Relaxed)
    }
    /// Set by a server that parses framing itself (`crate::h1`).
    pub fn set_ambiguous(&self) {
        self.ambiguous.store(true, Ordering::Relaxed);
    }
}

/// Most bytes read from a client socket at once.
const READ_CHUNK: usize = 4096;

/// Longest prefix of a line we look at; header names of interest are shorter.
const LINE_PREFIX: usize = 64;

/// Incremental scanner over a connection's inbound bytes.
#[derive(Default)]
pub struct FramingScanner {
    started: bool,
    disabled: bool,
    line: Vec<u8>,
    /// Where the current line started in the buffer being scanned, if it started there.
    line_start: Option<usize>,
    block_len: Option<u64>,
    block_te: bool,
}

impl FramingScanner {
    /// Scans `buf` (freshly read, not yet given to the parser); may rename a duplicate
    /// `Content-Length` in it. Returns true when the framing is ambiguous.
    pub fn scan(&mut self, buf: &mut [u8]) -> bool {
        if !self.started && !buf.is_empty() {
            self.started = true;
            // HTTP/2 (prior knowledge) has binary framing and its own length rules.
            self.disabled = buf.starts_with(b"PRI ");
        }
        if self.disabled {
            return false;
        }
        let mut ambiguous = false;
        let mut pos = 0;
        if self.line.is_empty() {
            self.line_start = Some(0);
        } else {
            self.line_start = None;
        }
        while pos < buf.len() {
            match memchr::memchr(b'\n', &buf[pos..]) {
                None => {
                    self.take_prefix(&buf[pos..]);
                    break;
                }
                Some(off) => {
                    self.take_prefix(&buf[pos..pos + off]);
                    ambiguous |= self.end_line(buf);
                    pos += off + 1;
                    self.line_start = Some(pos);
                }
            }
        }
        ambiguous
    }

    fn take_prefix(&mut self, part: &[u8]) {
        let room = LINE_PREFIX.saturating_sub(self.line.len());
        self.line.extend_from_slice(&part[..part.len().min(room)]);
    }

    fn end_line(&mut self, buf: &mut [u8]) -> bool {
        let line = std::mem::take(&mut self.line);
        let l = line.strip_suffix(b"\r").unwrap_or(&line);
        let mut ambiguous = false;
        if l.is_empty() {
            self.block_len = None;
            self.block_te = false;
        } else if let Some(v) = header_value(l, b"content-length:") {
            let len = std::str::from_utf8(v)
                .ok()
                .and_then(|v| v.trim().parse::<u64>().ok());
            match (self.block_len, len) {
                (Some(prev), Some(now)) if prev == now => {}
                (Some(_), _) => {
                    ambiguous = true;
                    // Rename this duplicate so the parser accepts the head and we can answer.
                    if let Some(start) = self.line_start {
                        if let Some(name) = buf.get_mut(start..start + 14) {
                            name.copy_from_slice(b"x-conflict-len");
                        }
                    }
                }
                (None, Some(now)) => self.block_len = Some(now),
                (None, None) => {}
            }
            if self.block_te {
                ambiguous = true;
            }
        } else if header_value(l, b"transfer-encoding:").is_some() {
            self.block_te = true;
            if self.block_len.is_some() {
                ambiguous = true;
            }
        }
        self.line = line;
        self.line.clear();
        ambiguous
    }
}

fn header_value<'a>(line: &'a [u8], name: &[u8]) -> Option<&'a [u8]> {
    (line.len() >= name.len() && line[..name.len()].eq_ignore_ascii_case(name))
        .then(|| &line[name.len()..])
}

/// A plain client socket for hyper (HTTP/2 without TLS), read through `read_noting_drain`.
pub struct SharedTcp(pub Arc<TcpStream>);

/// One read from a socket, through `read` (which returns what it read and what it asked
/// for). A short read means the socket was empty at that moment, so the reactor's read
/// readiness is cleared as well, as nginx does: the next read waits for epoll instead of
/// paying a system call to learn the socket is empty — one `EAGAIN` fewer per request and
/// per streamed event. Race-free: tokio clears readiness only if no readiness event has
/// arrived since the one this read was based on.
pub fn read_noting_drain(
    io: &TcpStream,
    read: impl FnOnce() -> io::Result<(usize, usize)>,
) -> io::Result<usize> {
    let mut got = None;
    let r = io.try_io(tokio::io::Interest::READABLE, || {
        let (n, asked) = read()?;
        got = Some(n);
        if n > 0 && n < asked {
            Err(io::ErrorKind::WouldBlock.into())
        } else {
            Ok(n)
        }
    });
    match got {
        Some(n) => Ok(n),
        None => r,
    }
}

impl AsyncRead for SharedTcp {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        loop {
            ready!(self.0.poll_read_ready(cx))?;
            // Zero (and so make resident) only what one read can use: hyper hands over its
            // whole read buffer each time, and zeroing all of it cost memory per connection.
            let room = buf.remaining().min(READ_CHUNK);
            let dst = buf.initialize_unfilled_to(room);
            match read_noting_drain(&self.0, || Ok((self.0.try_read(dst)?, room))) {
                Ok(n) => {
                    buf.advance(n);
                    return Poll::Ready(Ok(()));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }
}

impl AsyncWrite for SharedTcp {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        loop {
            ready!(self.0.poll_write_ready(cx))?;
            match self.0.try_write(buf) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                r => return Poll::Ready(r),
            }
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        loop {
            ready!(self.0.poll_write_ready(cx))?;
            match self.0.try_write_vectored(bufs) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                r => return Poll::Ready(r),
            }
        }
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match socket2::SockRef::from(self.0.as_ref()).shutdown(std::net::Shutdown::Write) {
            Err(e) if e.kind() != io::ErrorKind::NotConnected => Poll::Ready(Err(e)),
            _ => Poll::Ready(Ok(())),
        }
    }
}

/// The client stream as hyper sees it (plain `SharedTcp`, or decrypted TLS): every byte read
/// goes through the smuggling scanner.
pub struct ScanIo<T> {
    inner: T,
    flags: Arc<ConnFlags>,
    scanner: FramingScanner,
}

impl<T> ScanIo<T> {
    pub fn new(inner: T, flags: Arc<ConnFlags>) -> Self {
        Self {
            inner,
            flags,
            scanner: FramingScanner::default(),
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for ScanIo<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        ready!(Pin::new(&mut this.inner).poll_read(cx, buf))?;
        let fresh = &mut buf.filled_mut()[before..];
        if !fresh.is_empty() && this.scanner.scan(fresh) {
            this.flags.set_ambiguous();
        }
        Poll::Ready(Ok(()))
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for ScanIo<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scan_all(parts: &[&[u8]]) -> (bool, Vec<u8>) {
        let mut s = FramingScanner::default();
        let mut amb = false;
        let mut out = Vec::new();
        for p in parts {
            let mut b = p.to_vec();
            amb |= s.scan(&mut b);
            out.extend_from_slice(&b);
        }
        (amb, out)
    }

    #[test]
    fn clean_requests_pass() {
        let req: &[u8] = b"POST /v1/x HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\n\r\n{}";
        let (amb, out) = scan_all(&[req, req]);
        assert!(!amb);
        assert_eq!(out, [req, req].concat());
        let chunked: &[u8] =
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n";
        assert!(!scan_all(&[chunked, req]).0);
        let same = b"POST / HTTP/1.1\r\nContent-Length: 2\r\ncontent-length: 2\r\n\r\n{}";
        assert!(!scan_all(&[same]).0);
        let pretty =
            b"POST / HTTP/1.1\r\nContent-Length: 30\r\n\r\n{\n \"model\": \"m\",\n \"x\": 1\n}";
        assert!(!scan_all(&[pretty]).0);
    }

    #[test]
    fn content_length_with_transfer_encoding_is_flagged_in_any_order_and_split() {
        let a = b"POST / HTTP/1.1\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n";
        let b = b"POST / HTTP/1.1\r\ntransfer-encoding: chunked\r\ncontent-length: 5\r\n\r\n";
        assert!(scan_all(&[a]).0);
        assert!(scan_all(&[b]).0);
        for cut in 1..a.len() {
            assert!(scan_all(&[&a[..cut], &a[cut..]]).0, "cut at {cut}");
        }
    }

    #[test]
    fn conflicting_lengths_are_flagged_and_the_second_renamed() {
        let a = b"POST / HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello";
        let (amb, out) = scan_all(&[a]);
        assert!(amb);
        let text = String::from_utf8(out).unwrap();
        assert!(
            text.contains("Content-Length: 5\r\nx-conflict-len: 6\r\n"),
            "{text}"
        );
    }

    #[test]
    fn http2_preface_disables_scanning() {
        let mut s = FramingScanner::default();
        let mut b =
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\ncontent-length: 1\ntransfer-encoding: x\n".to_vec();
        assert!(!s.scan(&mut b));
    }
}
