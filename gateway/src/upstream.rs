//! The upstream HTTP/1.1 client: one connection to a replica, driven inside the request's own
//! task.
//!
//! Why not hyper's client here: hyper runs each client connection as a task of its own and
//! talks to it through a channel, so every request paid for two extra task wake-ups, a
//! oneshot, a per-attempt `HeaderMap` clone, and each connection held an 8 KiB write buffer,
//! an 8 KiB read buffer and a 9 KiB channel block for its whole life — on a pass-through that
//! only ever sends `POST` with a known length and reads one answer, that was most of the
//! gateway's CPU above nginx and most of its memory per open stream. This client writes the
//! request head and body with one `writev`, parses the answer's head with `httparse` (the
//! parser hyper uses), hands the head's bytes to the header values without copying, and reads
//! the body (`Content-Length`, chunked, or until close, RFC 9112 §6.3) straight from the
//! socket into one small buffer that is reused from frame to frame.
//!
//! A connection is reusable only after its body ended exactly at a message boundary on a
//! keep-alive HTTP/1.1 answer; anything else (close-delimited, `Connection: close`, bytes past
//! the end, an error, a body dropped early) closes it.

use std::io;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use http::header::{self, HeaderName, HeaderValue};

use crate::fields::{Fields, Span};
use http::StatusCode;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::time::{Instant, Sleep};

use crate::codec::{
    content_length, decimal, has_token, last_coding_is_chunked, Decoder, Malformed,
};

/// Largest response head accepted from a replica.
const MAX_HEAD: usize = 64 * 1024;
/// Most header fields read from a replica's response head.
const MAX_HEADERS: usize = 96;
/// Read size while a body streams; grows (to `MAX_READ`) while reads keep filling it.
const MIN_READ: usize = 1024;
const MAX_READ: usize = 64 * 1024;

/// Why a connection could not be made. Always safe to retry elsewhere: nothing was sent.
#[derive(Debug)]
pub enum ConnectError {
    Timeout,
    Io(io::Error),
    /// The gateway itself ran out of descriptors or local ports: nothing the replica did
    /// (`crate::descriptors::is_local_exhaustion`).
    Local(io::Error),
}

impl std::fmt::Display for ConnectError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Timeout => f.write_str("connect timed out"),
            Self::Io(e) => write!(f, "connect failed: {e}"),
            Self::Local(e) => write!(f, "connect failed on the gateway's side: {e}"),
        }
    }
}

/// What went wrong on an established connection.
#[derive(Debug)]
pub enum UpstreamError {
    Io(io::Error),
    /// The replica closed the connection before the message was complete.
    Closed,
    /// The replica's bytes are not valid HTTP/1.1.
    Malformed(&'static str),
}

impl std::fmt::Display for UpstreamError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Io(e) => write!(f, "connection error: {e}"),
            Self::Closed => f.write_str("connection closed before message completed"),
            Self::Malformed(why) => write!(f, "invalid HTTP from replica: {why}"),
        }
    }
}

impl std::error::Error for UpstreamError {}

impl From<io::Error> for UpstreamError {
    fn from(e: io::Error) -> Self {
        Self::Io(e)
    }
}

impl From<Malformed> for UpstreamError {
    fn from(Malformed(why): Malformed) -> Self {
        Self::Malformed(why)
    }
}

/// One HTTP/1.1 connection to a replica.
#[derive(Debug)]
pub struct Conn {
    io: TcpStream,
    /// Bytes read and not consumed yet.
    buf: BytesMut,
    /// The request head being written (kept: its capacity is reused).
    head: Vec<u8>,
    /// Next read size.
    read_size: usize,
    /// The response-head deadline of the requests this connection carries, kept with it (see
    /// `head_timer`).
    head_timer: Option<Pin<Box<Sleep>>>,
}

/// A request for `Conn::send`: `method path HTTP/1.1`, `Host`, `headers` (the caller has removed
/// hop-by-hop ones), `extra` (already-validated pairs), the replicas' own key as `Authorization`
/// if there is one, and a body sent with `Content-Length`. What the gateway sets itself
/// replaces the same name in `headers`.
#[derive(Clone, Copy)]
pub struct Request<'a> {
    pub method: &'a str,
    pub path: &'a str,
    pub host: &'a HeaderValue,
    pub headers: &'a Fields,
    /// Which of `headers` are written, by lowercase name (the rest are skipped).
    pub keep: &'a (dyn Fn(&[u8]) -> bool + Sync),
    pub extra: &'a [(&'a HeaderName, &'a [u8])],
    pub authorization: Option<&'a HeaderValue>,
    pub body: &'a Bytes,
}

/// A response head, and where its body stands; the body follows on the connection.
pub struct ResponseHead {
    pub status: StatusCode,
    /// The answer's end-to-end fields, as spans into its head (names lowercased): hop-by-hop
    /// ones, and those its `Connection` names, are not kept.
    pub fields: Fields,
    pub body: Body,
}

impl Conn {
    /// Opens a connection (`TCP_NODELAY`: small SSE chunks must go out at once).
    pub async fn connect(authority: &str, timeout: Duration) -> Result<Self, ConnectError> {
        let io = tokio::time::timeout(timeout, TcpStream::connect(authority))
            .await
            .map_err(|_| ConnectError::Timeout)?
            .map_err(|e| {
                if crate::descriptors::is_local_exhaustion(&e) {
                    ConnectError::Local(e)
                } else {
                    ConnectError::Io(e)
                }
            })?;
        let _ = io.set_nodelay(true);
        Ok(Self {
            io,
            buf: BytesMut::new(),
            head: Vec::new(),
            read_size: MIN_READ,
            head_timer: None,
        })
    }

    /// A timer set to `deadline`, for the response head of the request about to be sent; give
    /// it back with `keep_head_timer` once the head is in. Kept with the connection, a later
    /// deadline than the last one moves it with one atomic operation; a timer made and dropped
    /// per request put an entry in tokio's timer wheel and took it out again each time (about
    /// 450 instructions a request). While the connection waits in the pool the timer may still
    /// fire once, at the last request's deadline, and wake the task that last waited on it:
    /// a spurious wake-up, which futures allow.
    pub fn head_timer(&mut self, deadline: Instant) -> Pin<Box<Sleep>> {
        match self.head_timer.take() {
            Some(mut timer) => {
                timer.as_mut().reset(deadline);
                timer
            }
            None => Box::pin(tokio::time::sleep_until(deadline)),
        }
    }

    pub fn keep_head_timer(&mut self, timer: Pin<Box<Sleep>>) {
        self.head_timer = Some(timer);
    }

    /// Whether an idle pooled connection still looks usable: the replica has neither closed
    /// it nor sent anything unasked. Never blocks; usually answered from the reactor's cached
    /// readiness without a system call.
    pub fn is_idle_usable(&self) -> bool {
        let mut probe = [0u8; 1];
        self.buf.is_empty()
            && matches!(self.io.try_read(&mut probe), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
    }

    /// Writes a request — head and body in one `writev`.
    pub async fn send(&mut self, req: &Request<'_>) -> io::Result<()> {
        let Request {
            method,
            path,
            host,
            headers,
            keep,
            extra,
            authorization,
            body,
        } = *req;
        let h = &mut self.head;
        h.clear();
        h.extend_from_slice(method.as_bytes());
        h.push(b' ');
        h.extend_from_slice(path.as_bytes());
        h.extend_from_slice(b" HTTP/1.1\r\nhost: ");
        h.extend_from_slice(host.as_bytes());
        h.extend_from_slice(b"\r\n");
        // A field the client's head holds as this writes it goes in whole, in one copy.
        let mut put = |name: &[u8], value: &[u8], whole: Option<&[u8]>| match whole {
            Some(line) => h.extend_from_slice(line),
            None => crate::h1::field_line(h, name, value),
        };
        headers.each(|name, value, whole| {
            // Framing and routing are the gateway's to set, whatever the client sent.
            if matches!(
                name,
                b"host" | b"content-length" | b"transfer-encoding" | b"connection"
            ) || (authorization.is_some() && name == b"authorization")
                || extra.iter().any(|(n, _)| n.as_str().as_bytes() == name)
                || !keep(name)
            {
                return;
            }
            put(name, value, whole);
        });
        for (name, value) in extra {
            put(name.as_str().as_bytes(), value, None);
        }
        if let Some(key) = authorization {
            put(b"authorization", key.as_bytes(), None);
        }
        if !body.is_empty() || method == "POST" {
            h.extend_from_slice(b"content-length: ");
            let mut n = [0; 20];
            h.extend_from_slice(decimal(body.len() as u64, &mut n));
            h.extend_from_slice(b"\r\n");
        }
        h.extend_from_slice(b"\r\n");
        let mut out = (&h[..]).chain(&body[..]);
        self.io.write_all_buf(&mut out).await
    }

    /// Reads the response head (1xx interim answers are skipped).
    pub async fn read_head(&mut self) -> Result<ResponseHead, UpstreamError> {
        loop {
            if let Some(head) = self.parse_head()? {
                if head.status.is_informational() {
                    continue;
                }
                return Ok(head);
            }
            if self.buf.len() >= MAX_HEAD {
                return Err(UpstreamError::Malformed("response head too large"));
            }
            if std::future::poll_fn(|cx| self.poll_fill(cx)).await? == 0 {
                return Err(UpstreamError::Closed);
            }
        }
    }

    fn parse_head(&mut self) -> Result<Option<ResponseHead>, UpstreamError> {
        if self.buf.is_empty() {
            return Ok(None);
        }
        let mut slots = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
        let mut resp = httparse::Response::new(&mut []);
        // Where each name and value lies in the buffer, so the fields can share its bytes.
        // A `SmallVec`, not an array: a zeroed array of `MAX_HEADERS` spans cost a 3 KiB
        // memset per response.
        let mut spans: smallvec::SmallVec<[Span; 8]> = smallvec::SmallVec::new();
        let (len, code, minor) = match httparse::ParserConfig::default()
            .parse_response_with_uninit_headers(&mut resp, &self.buf, &mut slots)
        {
            Ok(httparse::Status::Complete(len)) => {
                let buf = &self.buf[..];
                spans.extend(
                    resp.headers
                        .iter()
                        .map(|h| Span::within(buf, h.name.as_bytes(), h.value)),
                );
                (len, resp.code.unwrap_or(0), resp.version.unwrap_or(1))
            }
            Ok(httparse::Status::Partial) => return Ok(None),
            Err(httparse::Error::TooManyHeaders) => {
                return Err(UpstreamError::Malformed("too many header fields"))
            }
            Err(_) => return Err(UpstreamError::Malformed("bad response head")),
        };
        // Names in lowercase where they lie (httparse has checked names and values), then the
        // head is frozen: the kept fields are spans into it, and no map is built.
        crate::fields::lowercase_names(&mut self.buf, &spans);
        let raw = self.buf.split_to(len).freeze();
        let status =
            StatusCode::from_u16(code).map_err(|_| UpstreamError::Malformed("bad status code"))?;
        let mut length: Option<u64> = None;
        let mut chunked = false;
        let mut has_te = false;
        let mut close = minor == 0;
        let mut named = false;
        for s in &spans {
            let (name, value) = (s.name_in(&raw), s.value_in(&raw));
            match name {
                b"content-length" => {
                    let n = content_length(value)
                        .ok_or(UpstreamError::Malformed("bad content-length"))?;
                    if length.is_some_and(|l| l != n) {
                        return Err(UpstreamError::Malformed("conflicting content-length"));
                    }
                    length = Some(n);
                }
                b"transfer-encoding" => {
                    has_te = true;
                    chunked = last_coding_is_chunked(value);
                }
                b"connection" => {
                    if has_token(value, b"close") {
                        close = true;
                    } else if minor == 0 && has_token(value, b"keep-alive") {
                        close = false;
                    }
                    named |= crate::codec::connection_named(value).next().is_some();
                }
                _ => {}
            }
        }
        // Hop-by-hop fields are the replica's and the gateway's business only: they are read
        // above and not kept; nor is what `Connection` names (rare: usually it says only
        // `close` or `keep-alive`).
        let connection: Vec<&[u8]> = if named {
            spans
                .iter()
                .filter(|s| s.name_in(&raw) == b"connection")
                .flat_map(|s| crate::codec::connection_named(s.value_in(&raw)))
                .collect()
        } else {
            Vec::new()
        };
        spans.retain(|s| {
            let name = s.name_in(&raw);
            !crate::codec::is_hop_by_hop(name)
                && !connection.iter().any(|c| c.eq_ignore_ascii_case(name))
        });
        let no_body = status.is_informational()
            || status == StatusCode::NO_CONTENT
            || status == StatusCode::NOT_MODIFIED;
        let dec = if no_body {
            Decoder::length(0)
        } else if has_te {
            // Transfer-Encoding overrides Content-Length; a message that carries both is
            // suspect, so its connection is not reused.
            if length.is_some() {
                close = true;
            }
            if chunked {
                Decoder::chunked()
            } else {
                Decoder::until_close()
            }
        } else {
            length.map_or_else(Decoder::until_close, Decoder::length)
        };
        let keep_alive = !close && !dec.ends_at_close();
        Ok(Some(ResponseHead {
            status,
            fields: Fields::spans(raw, spans),
            body: Body { dec, keep_alive },
        }))
    }

    /// Reads more bytes into the buffer; `Ok(0)` at end of stream.
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        if self.buf.capacity() - self.buf.len() < self.read_size / 2 {
            self.buf.reserve(self.read_size);
        }
        let spare = self.buf.capacity() - self.buf.len();
        loop {
            ready!(self.io.poll_read_ready(cx))?;
            let (io, buf) = (&self.io, &mut self.buf);
            match crate::transport::read_noting_drain(io, || Ok((io.try_read_buf(buf)?, spare))) {
                Ok(n) => {
                    // A read that filled the space asks for a larger one next time.
                    self.read_size = if n == spare {
                        (self.read_size * 2).min(MAX_READ)
                    } else {
                        MIN_READ
                    };
                    return Poll::Ready(Ok(n));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }

    /// Sends `GET path` and reads the whole answer, at most `limit` body bytes (health checks);
    /// `authorization`: the replicas' own key, if any.
    pub async fn get(
        &mut self,
        host: &HeaderValue,
        path: &str,
        authorization: Option<&HeaderValue>,
        limit: usize,
    ) -> Result<(StatusCode, Bytes), UpstreamError> {
        self.send(&Request {
            method: "GET",
            path,
            host,
            headers: &Fields::default(),
            keep: &|_| true,
            extra: &[(&header::USER_AGENT, b"inference-gateway-health")],
            authorization,
            body: &Bytes::new(),
        })
        .await?;
        let ResponseHead {
            status, mut body, ..
        } = self.read_head().await?;
        let mut out = BytesMut::new();
        while let Some(chunk) = std::future::poll_fn(|cx| body.poll_data(self, cx)).await {
            let chunk = chunk?;
            if out.len() + chunk.len() > limit {
                return Err(UpstreamError::Malformed("answer too large"));
            }
            out.extend_from_slice(&chunk);
        }
        Ok((status, out.freeze()))
    }
}

/// How much of a response body is left (the shared decoder, `crate::codec`), and whether the
/// connection stays open after it.
pub struct Body {
    dec: Decoder,
    keep_alive: bool,
}

impl Body {
    pub fn is_end(&self) -> bool {
        self.dec.is_end()
    }

    /// Bytes still expected, when the framing says.
    pub fn remaining(&self) -> Option<u64> {
        self.dec.remaining()
    }

    /// Whether the connection may carry another request: the body ended exactly at the end of
    /// what the replica sent, on a keep-alive answer.
    pub fn reusable(&self, conn: &Conn) -> bool {
        self.keep_alive && self.dec.is_end() && conn.buf.is_empty()
    }

    /// The next piece of body. Data is handed out as it arrives (one chunk of a chunked body
    /// at most per call); `None` once the body is complete.
    pub fn poll_data(
        &mut self,
        conn: &mut Conn,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Bytes, UpstreamError>>> {
        loop {
            // Past a chunk's end (and a final empty chunk) already in the buffer too, so the
            // last frame already reports the end of the body.
            if let Some(data) = self.dec.next_buffered(&mut conn.buf)? {
                return Poll::Ready(Some(Ok(data)));
            }
            if self.dec.is_end() {
                return Poll::Ready(None);
            }
            match ready!(conn.poll_fill(cx)) {
                Ok(0) if self.dec.end_at_close() => {
                    self.keep_alive = false;
                    return Poll::Ready(None);
                }
                Ok(0) => return Poll::Ready(Some(Err(UpstreamError::Closed))),
                Ok(_) => {}
                Err(e) => return Poll::Ready(Some(Err(e.into()))),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    /// A replica that answers every request with `answer` (written in `pieces`), and reports
    /// the request bytes it saw.
    async fn replica(
        answers: Vec<Vec<&'static [u8]>>,
    ) -> (String, tokio::task::JoinHandle<Vec<Vec<u8>>>) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap().to_string();
        let task = tokio::spawn(async move {
            let (mut s, _) = l.accept().await.unwrap();
            let mut seen = Vec::new();
            for pieces in answers {
                let mut req = Vec::new();
                let mut b = [0u8; 4096];
                while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                    let n = s.read(&mut b).await.unwrap();
                    if n == 0 {
                        return seen;
                    }
                    req.extend_from_slice(&b[..n]);
                }
                seen.push(req);
                for p in pieces {
                    s.write_all(p).await.unwrap();
                    s.flush().await.unwrap();
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }
            seen
        });
        (addr, task)
    }

    /// `POST path` with `body` and no headers of the caller's.
    async fn post(conn: &mut Conn, path: &str, body: &'static [u8]) -> io::Result<()> {
        let host = HeaderValue::from_static("r");
        let body = Bytes::from_static(body);
        conn.send(&Request {
            method: "POST",
            path,
            host: &host,
            headers: &Fields::default(),
            keep: &|_| true,
            extra: &[],
            authorization: None,
            body: &body,
        })
        .await
    }

    async fn exchange(conn: &mut Conn) -> Result<(ResponseHead, Vec<Bytes>, bool), UpstreamError> {
        post(conn, "/v1/x", b"{}").await?;
        let mut head = conn.read_head().await?;
        let body = &mut head.body;
        let mut frames = Vec::new();
        while let Some(f) = std::future::poll_fn(|cx| body.poll_data(conn, cx)).await {
            frames.push(f?);
        }
        let reusable = body.reusable(conn);
        Ok((head, frames, reusable))
    }

    fn joined(frames: &[Bytes]) -> Vec<u8> {
        frames.iter().flat_map(|f| f.iter().copied()).collect()
    }

    #[tokio::test]
    async fn reads_length_and_chunked_bodies_and_reuses_the_connection() {
        let (addr, task) = replica(vec![
            vec![b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\nx-a: 1\r\n\r\nhe", b"llo"],
            vec![
                b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n",
                b"3;ext=1\r\nabc\r\n",
                b"2\r\nde\r\n0\r\ntrailer: x\r\n\r\n",
            ],
            vec![b"HTTP/1.1 204 No Content\r\n\r\n"],
        ])
        .await;
        let mut conn = Conn::connect(&addr, Duration::from_secs(1)).await.unwrap();
        let (head, frames, reusable) = exchange(&mut conn).await.unwrap();
        assert_eq!(head.status, 200);
        assert_eq!(head.fields.get("x-a"), Some(&b"1"[..]));
        assert_eq!(joined(&frames), b"hello");
        assert!(reusable);
        let (_, frames, reusable) = exchange(&mut conn).await.unwrap();
        assert_eq!(joined(&frames), b"abcde");
        assert!(reusable);
        let (head, frames, reusable) = exchange(&mut conn).await.unwrap();
        assert_eq!(head.status, 204);
        assert!(frames.is_empty() && reusable);
        drop(conn);
        let seen = task.await.unwrap();
        let first = String::from_utf8(seen[0].clone()).unwrap();
        assert!(
            first.starts_with("POST /v1/x HTTP/1.1\r\nhost: r\r\n"),
            "{first}"
        );
        assert!(first.contains("content-length: 2\r\n"));
    }

    #[tokio::test]
    async fn hop_by_hop_fields_of_an_answer_are_not_kept() {
        let (addr, task) = replica(vec![vec![
            b"HTTP/1.1 200 OK\r\nConnection: keep-alive, X-Secret\r\nx-secret: 1\r\n\
              keep-alive: timeout=5\r\nupgrade: h2c\r\ntrailer: x-t\r\n\
              proxy-authenticate: Basic\r\ncontent-type: text/plain\r\nx-kept: 2\r\n\
              transfer-encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n",
        ]])
        .await;
        let mut conn = Conn::connect(&addr, Duration::from_secs(1)).await.unwrap();
        let (head, frames, reusable) = exchange(&mut conn).await.unwrap();
        let mut names: Vec<&[u8]> = head.fields.iter().map(|(n, _)| n).collect();
        names.sort_unstable();
        assert_eq!(names, [&b"content-type"[..], b"x-kept"]);
        // Read for framing all the same.
        assert_eq!(joined(&frames), b"ok");
        assert!(reusable);
        drop(conn);
        task.await.unwrap();
    }

    #[tokio::test]
    async fn a_chunk_event_is_one_frame_and_the_last_frame_reports_the_end() {
        let (addr, _task) = replica(vec![vec![
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n6\r\ndata:1\r\n",
            b"6\r\ndata:2\r\n0\r\n\r\n",
        ]])
        .await;
        let mut conn = Conn::connect(&addr, Duration::from_secs(1)).await.unwrap();
        post(&mut conn, "/", b"").await.unwrap();
        let mut body = conn.read_head().await.unwrap().body;
        let first = std::future::poll_fn(|cx| body.poll_data(&mut conn, cx))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(&first[..], b"data:1");
        assert!(!body.is_end());
        let second = std::future::poll_fn(|cx| body.poll_data(&mut conn, cx))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(&second[..], b"data:2");
        assert!(body.is_end(), "the final chunk was buffered with the data");
    }

    #[tokio::test]
    async fn close_delimited_and_connection_close_answers_are_not_reused() {
        let (addr, _t) = replica(vec![vec![b"HTTP/1.1 200 OK\r\n\r\nall of it"]]).await;
        let mut conn = Conn::connect(&addr, Duration::from_secs(1)).await.unwrap();
        post(&mut conn, "/", b"").await.unwrap();
        let mut body = conn.read_head().await.unwrap().body;
        // The replica's task ends after answering, which closes the socket: end of body.
        let mut got = Vec::new();
        while let Some(f) = std::future::poll_fn(|cx| body.poll_data(&mut conn, cx)).await {
            got.extend_from_slice(&f.unwrap());
        }
        assert_eq!(got, b"all of it");
        assert!(!body.reusable(&conn));

        let (addr, _t) = replica(vec![vec![
            b"HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 2\r\n\r\nok",
        ]])
        .await;
        let mut conn = Conn::connect(&addr, Duration::from_secs(1)).await.unwrap();
        let (_, frames, reusable) = exchange(&mut conn).await.unwrap();
        assert_eq!(joined(&frames), b"ok");
        assert!(!reusable);
    }

    #[tokio::test]
    async fn malformed_answers_are_errors() {
        for (answer, why) in [
            (
                &b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\ncontent-length: 3\r\n\r\nok"[..],
                "conflicting",
            ),
            (
                b"HTTP/1.1 200 OK\r\ncontent-length: x\r\n\r\n",
                "content-length",
            ),
            (
                b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n",
                "chunk size",
            ),
            (
                b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\r\nabc\r\n",
                "longer",
            ),
            (b"NOT HTTP\r\n\r\n", "bad response head"),
        ] {
            let (addr, _t) = replica(vec![vec![answer]]).await;
            let mut conn = Conn::connect(&addr, Duration::from_secs(1)).await.unwrap();
            let err = exchange(&mut conn).await.err().expect(why);
            assert!(err.to_string().contains(why), "{err} / {why}");
        }
        // Cut short: closed in the middle of a length-delimited body.
        let (addr, _t) = replica(vec![vec![
            b"HTTP/1.1 200 OK\r\ncontent-length: 9\r\n\r\nabc",
        ]])
        .await;
        let mut conn = Conn::connect(&addr, Duration::from_secs(1)).await.unwrap();
        assert!(matches!(
            exchange(&mut conn).await,
            Err(UpstreamError::Closed)
        ));
    }

    #[tokio::test]
    async fn an_idle_connection_closed_by_the_replica_is_not_usable() {
        let (addr, task) = replica(vec![]).await;
        let conn = Conn::connect(&addr, Duration::from_secs(1)).await.unwrap();
        assert!(conn.is_idle_usable());
        task.await.unwrap();
        let mut usable = true;
        for _ in 0..100 {
            usable = conn.is_idle_usable();
            if !usable {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert!(!usable);
    }
}
