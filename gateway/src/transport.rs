//! The client socket, plain TCP or TLS, as the data port's servers use it: `crate::h1` (all
//! HTTP/1.1, through [`Transport`]) and hyper (HTTP/2 only, through [`HyperTcp`] for h2c and
//! tokio-rustls's stream for h2), which parses its own framing.
//!
//! [`Transport`] works on `&self`: the connection's reader (the request body, inside the
//! request path), its writer and its watch for a client that leaves all hold the one socket
//! while the connection is served, one after another within a poll, never at once. A TCP
//! stream is used as it is; a TLS stream, whose reads and writes need `&mut`, sits behind a
//! mutex that is taken for one poll at a time and so is never contended.
//!
//! It also holds `read_noting_drain`, the read both HTTP/1.1 legs use on TCP.

use std::io::{self, IoSlice};
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::task::{ready, Context, Poll, Waker};

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;

/// Per-connection facts shared by the connection's reader and the request path.
#[derive(Default, Debug)]
pub struct ConnFlags {
    ambiguous: AtomicBool,
}

impl ConnFlags {
    /// The request's framing cannot be trusted (request smuggling): answer 400 and close.
    pub fn ambiguous_framing(&self) -> bool {
        self.ambiguous.load(Ordering::Relaxed)
    }
    /// Set by the server that parses the framing (`crate::h1`).
    pub fn set_ambiguous(&self) {
        self.ambiguous.store(true, Ordering::Relaxed);
    }
}

/// Room a read makes in its buffer when less than a quarter of this is spare.
pub const READ_SIZE: usize = 4096;

/// Makes room for a read (see [`READ_SIZE`]). An empty buffer takes a spare one first.
fn make_room(buf: &mut BytesMut) {
    if buf.capacity() == 0 {
        if let Some(spare) = spare::take() {
            *buf = spare;
        }
    }
    if buf.capacity() - buf.len() < READ_SIZE / 4 {
        buf.reserve(READ_SIZE);
    }
}

/// Read buffers given back once their request is over, for the next request this thread reads.
/// A connection holds no buffer while it waits for a request (idle keep-alive connections stay
/// small), so without these each request allocated 4 KiB and freed it again, and the frozen
/// buffer's first clone allocated its shared count (about 800 instructions with glibc).
pub mod spare {
    use std::cell::RefCell;

    use bytes::BytesMut;

    /// At most this many per thread: 128 KiB of 4 KiB buffers (512 KiB if all were grown).
    const KEEP: usize = 32;
    /// A buffer grown past this (a long head read in many pieces) is not kept.
    const LARGEST: usize = 4 * super::READ_SIZE;

    thread_local! {
        static SPARE: RefCell<Vec<BytesMut>> = const { RefCell::new(Vec::new()) };
    }

    /// A spare buffer, empty, with at least [`super::READ_SIZE`] of room.
    pub fn take() -> Option<BytesMut> {
        SPARE.with(|s| s.borrow_mut().pop())
    }

    /// Keeps `spent` (the empty handle left on a read buffer when its bytes were split off)
    /// for another request if nothing holds those bytes any more; otherwise it is dropped. It
    /// stays a shared buffer, so splitting it again costs a count, not an allocation.
    pub fn give_back(mut spent: BytesMut) {
        if !spent.is_empty() || !spent.try_reclaim(super::READ_SIZE) || spent.capacity() > LARGEST {
            return;
        }
        SPARE.with(|s| {
            let mut s = s.borrow_mut();
            if s.len() < KEEP {
                s.push(spent);
            }
        });
    }

    /// Spare buffers on this thread.
    #[cfg(test)]
    pub fn count() -> usize {
        SPARE.with(|s| s.borrow().len())
    }
}

/// A client connection as `crate::h1` reads and writes it.
pub trait Transport: Send + Sync + 'static {
    /// One read into `buf`, room made as needed; `Ok(0)` at end of stream.
    fn poll_read(&self, cx: &mut Context<'_>, buf: &mut BytesMut) -> Poll<io::Result<usize>>;
    /// One read if bytes are there now; `None` if they would have to be waited for.
    fn try_read(&self, buf: &mut BytesMut) -> Option<io::Result<usize>>;
    /// Writes some of `bufs`; `Pending` when the client accepts nothing now.
    fn poll_write_vectored(
        &self,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>>;
    /// Pushes out what a write left buffered (TLS records).
    fn poll_flush(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>>;
    /// Peeks at the socket under any TLS: `Ok(0)` when the client has closed its side.
    fn poll_peek(&self, cx: &mut Context<'_>, probe: &mut ReadBuf<'_>) -> Poll<io::Result<usize>>;
    /// Ends the connection politely (TLS `close_notify`); TCP needs nothing.
    fn poll_close(&self, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

impl Transport for TcpStream {
    fn poll_read(&self, cx: &mut Context<'_>, buf: &mut BytesMut) -> Poll<io::Result<usize>> {
        loop {
            ready!(self.poll_read_ready(cx))?;
            if let Some(r) = Transport::try_read(self, buf) {
                return Poll::Ready(r);
            }
        }
    }

    /// No system call is made when the socket is not known to be readable, and no room is
    /// made in `buf` either: an idle keep-alive connection holds no buffer (4 KiB each) while
    /// it waits for its next request.
    fn try_read(&self, buf: &mut BytesMut) -> Option<io::Result<usize>> {
        match read_noting_drain(self, || {
            make_room(buf);
            let spare = buf.capacity() - buf.len();
            Ok((self.try_read_buf(buf)?, spare))
        }) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => None,
            r => Some(r),
        }
    }

    fn poll_write_vectored(
        &self,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        // The write is tried first: the socket almost always has room.
        loop {
            match self.try_write_vectored(bufs) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    ready!(self.poll_write_ready(cx))?;
                }
                r => return Poll::Ready(r),
            }
        }
    }

    fn poll_flush(&self, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_peek(&self, cx: &mut Context<'_>, probe: &mut ReadBuf<'_>) -> Poll<io::Result<usize>> {
        TcpStream::poll_peek(self, cx, probe)
    }
}

/// A TLS connection for `crate::h1`.
pub struct Tls(Mutex<TlsStream<TcpStream>>);

impl Tls {
    pub fn new(stream: TlsStream<TcpStream>) -> Self {
        Self(Mutex::new(stream))
    }

    fn lock(&self) -> MutexGuard<'_, TlsStream<TcpStream>> {
        // Nothing panics while holding it; if something did, the stream is still usable.
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Transport for Tls {
    /// Room is made before the read: plaintext may already wait inside rustls, with nothing
    /// for the reactor to report.
    fn poll_read(&self, cx: &mut Context<'_>, buf: &mut BytesMut) -> Poll<io::Result<usize>> {
        make_room(buf);
        tokio_util::io::poll_read_buf(Pin::new(&mut *self.lock()), cx, buf)
    }

    fn try_read(&self, buf: &mut BytesMut) -> Option<io::Result<usize>> {
        // Plaintext rustls already holds, or a record already in the socket. A later
        // `poll_read` with the task's waker registers the wait.
        match self.poll_read(&mut Context::from_waker(Waker::noop()), buf) {
            Poll::Ready(r) => Some(r),
            Poll::Pending => None,
        }
    }

    fn poll_write_vectored(
        &self,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut *self.lock()).poll_write_vectored(cx, bufs)
    }

    fn poll_flush(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.lock()).poll_flush(cx)
    }

    /// The TCP socket under the TLS layer: its end of stream is the client leaving. (A TLS 1.3
    /// `close_notify` is an encrypted record like any other, so a client that sends one
    /// before closing is noticed at the next write instead.)
    fn poll_peek(&self, cx: &mut Context<'_>, probe: &mut ReadBuf<'_>) -> Poll<io::Result<usize>> {
        self.lock().get_ref().0.poll_peek(cx, probe)
    }

    fn poll_close(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.lock()).poll_shutdown(cx)
    }
}

/// Whether the client has closed its side (or reset) — `None` while that is unknown, `Some`
/// with false when it sent bytes instead (a pipelined request: they wait for their turn).
pub fn poll_closed<T: Transport + ?Sized>(io: &T, cx: &mut Context<'_>) -> Poll<bool> {
    let mut probe = [MaybeUninit::uninit(); 1];
    let mut probe = ReadBuf::uninit(&mut probe);
    match io.poll_peek(cx, &mut probe) {
        Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => Poll::Ready(true),
        Poll::Ready(Ok(_)) => Poll::Ready(false),
        Poll::Pending => Poll::Pending,
    }
}

/// Most bytes read from a client socket at once by hyper (h2c).
const READ_CHUNK: usize = 4096;

/// A plain client socket for hyper (HTTP/2 without TLS), read through `read_noting_drain`.
pub struct HyperTcp(pub TcpStream);

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

impl AsyncRead for HyperTcp {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        loop {
            ready!(self.0.poll_read_ready(cx))?;
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

impl AsyncWrite for HyperTcp {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.poll_write_vectored(cx, &[IoSlice::new(buf)])
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Transport::poll_write_vectored(&self.0, cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match socket2::SockRef::from(&self.0).shutdown(std::net::Shutdown::Write) {
            Err(e) if e.kind() != io::ErrorKind::NotConnected => Poll::Ready(Err(e)),
            _ => Poll::Ready(Ok(())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A read buffer comes back for the next request once nothing holds its bytes, with its
    /// whole room, and is not taken while any part of it is still in use.
    #[test]
    fn spent_read_buffers_are_reused_only_when_free() {
        // Each test runs on its own thread: its spare list starts empty.
        assert_eq!(spare::count(), 0);
        let mut buf = BytesMut::new();
        make_room(&mut buf);
        buf.extend_from_slice(b"POST / HTTP/1.1\r\ncontent-length: 2\r\n\r\nhi");
        let head = buf.split().freeze();
        let body = head.slice(head.len() - 2..);
        drop(head);
        // The body is still held (a request in flight): the buffer is not reused.
        spare::give_back(std::mem::take(&mut buf));
        assert_eq!(spare::count(), 0);
        let mut buf = BytesMut::new();
        make_room(&mut buf);
        buf.extend_from_slice(b"GET / HTTP/1.1\r\n\r\n");
        let head = buf.split().freeze();
        drop((head, body));
        spare::give_back(std::mem::take(&mut buf));
        assert_eq!(spare::count(), 1);
        make_room(&mut buf);
        assert_eq!(spare::count(), 0);
        assert!(buf.is_empty() && buf.capacity() >= READ_SIZE);
        // A handle with bytes still unread is not a spare.
        buf.extend_from_slice(b"x");
        spare::give_back(buf);
        assert_eq!(spare::count(), 0);
        // Nor is a buffer grown large by a long head.
        let mut big = BytesMut::with_capacity(64 * 1024);
        big.extend_from_slice(b"GET / HTTP/1.1\r\n\r\n");
        drop(big.split().freeze());
        spare::give_back(big);
        assert_eq!(spare::count(), 0);
    }
}
