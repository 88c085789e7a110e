//! Response bodies: a gateway-made `Full` answer, or a replica's body passed through frame by
//! frame. The pass-through enforces the idle-gap timeout, holds the replica's in-flight count
//! until the body ends or is dropped, and returns the connection to the pool only after a clean
//! end — a body dropped early (client gone) drops the connection, which cancels the upstream.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use pin_project_lite::pin_project;
use tokio::time::{Instant, Sleep};

use crate::balance::endpoint::Sender;
use crate::balance::InflightGuard;
use crate::config::Config;
use crate::limits::Reservation;
use crate::sse::{json_usage, SseMeter};
use crate::state::Route;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The replica went silent for longer than `upstream.idle_chunk_timeout`.
#[derive(Debug)]
pub struct IdleChunkTimeout;

impl std::fmt::Display for IdleChunkTimeout {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("upstream idle chunk timeout")
    }
}

impl std::error::Error for IdleChunkTimeout {}

/// Reads the replica's `usage` from the body as it passes (when a token reservation must be
/// settled) and, if the gateway asked for a usage event the client did not, removes it.
pub struct Meter {
    reservation: Option<Reservation>,
    sse: Option<SseMeter>,
    json: Option<BytesMut>,
}

/// Largest JSON answer kept (as a copy) to read its `usage`.
const MAX_METERED_JSON: usize = 8 * 1024 * 1024;

impl Meter {
    pub fn new(reservation: Reservation, stream: bool, strip_usage: bool) -> Self {
        Self {
            reservation: Some(reservation),
            sse: stream.then(|| SseMeter::new(strip_usage)),
            json: (!stream).then(BytesMut::new),
        }
    }

    fn feed(&mut self, data: Bytes) -> Bytes {
        if let Some(s) = self.sse.as_mut() {
            return s.feed(data);
        }
        if let Some(j) = self.json.as_mut() {
            if j.len() + data.len() <= MAX_METERED_JSON {
                j.extend_from_slice(&data);
            } else {
                self.json = None;
            }
        }
        data
    }

    /// Bytes held back at the end of a stream (an unterminated last event).
    fn tail(&mut self) -> Bytes {
        self.sse.as_mut().map(SseMeter::finish).unwrap_or_default()
    }

    /// The response ended cleanly: settle to the reported usage (or keep it all if none).
    fn settle(&mut self) {
        let used = match (&self.sse, &self.json) {
            (Some(s), _) => s.usage,
            (None, Some(j)) => json_usage(j),
            _ => None,
        };
        if let Some(r) = self.reservation.take() {
            r.settle(used.map(|u| u.total()));
        }
    }

    /// The replica refused the request: nothing was generated, give everything back.
    pub fn refund(&mut self) {
        if let Some(r) = self.reservation.take() {
            r.settle(Some(0));
        }
    }
}

/// What the pass-through body needs to know to account for the request when it ends.
pub struct BodyCtx {
    pub idle_timeout: Duration,
    /// A stream's latency sample is its time to first chunk; a non-stream's, its full time.
    pub stream: bool,
    pub sent_at: Instant,
    pub route: Arc<Route>,
    pub config: Arc<Config>,
    pub meter: Option<Meter>,
    /// The version's outcome window (time to first token).
    pub stats: Arc<crate::canary::stats::VersionStats>,
}

pin_project! {
    pub struct UpstreamBody {
        #[pin]
        inner: Incoming,
        #[pin]
        idle: Sleep,
        ctx: BodyCtx,
        first_seen: bool,
        // The connection and the replica it belongs to; given back on a clean end.
        conn: Option<Sender>,
        guard: Option<InflightGuard>,
        // An upstream error held back for one poll (see `poll_frame`).
        deferred: Option<BoxError>,
    }
}

impl UpstreamBody {
    pub fn new(inner: Incoming, conn: Sender, guard: InflightGuard, ctx: BodyCtx) -> Self {
        Self {
            inner,
            idle: tokio::time::sleep(ctx.idle_timeout),
            ctx,
            first_seen: false,
            conn: Some(conn),
            guard: Some(guard),
            deferred: None,
        }
    }
}

/// Returns the connection to its replica's pool and releases the in-flight count.
fn finish(conn: &mut Option<Sender>, guard: &mut Option<InflightGuard>, ctx: &mut BodyCtx) {
    if let Some(m) = ctx.meter.as_mut() {
        m.settle();
    }
    if let Some(g) = guard.as_ref() {
        if !ctx.stream {
            let took = ctx.sent_at.elapsed();
            g.endpoint()
                .observe_latency(took, ctx.config.upstream.ewma_decay);
            ctx.stats.record_ttft(took);
        }
        if let Some(c) = conn.take() {
            g.endpoint().checkin(c);
        }
    }
    guard.take();
}

/// The replica broke the body (reset, or silent past the idle limit): a passive failure.
fn broken(conn: &mut Option<Sender>, guard: &mut Option<InflightGuard>, ctx: &BodyCtx, why: &str) {
    conn.take();
    if let Some(g) = guard.take() {
        let health = &ctx.config.health;
        g.endpoint().record_failure(health, why, || {
            ctx.route.may_eject_one_more(health.max_ejection_percent)
        });
    }
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let mut this = self.project();
        if let Some(e) = this.deferred.take() {
            return Poll::Ready(Some(Err(e)));
        }
        match this.inner.as_mut().poll_frame(cx) {
            Poll::Ready(Some(Ok(mut frame))) => {
                let now = Instant::now();
                this.idle.reset(now + this.ctx.idle_timeout);
                if !*this.first_seen && frame.is_data() {
                    *this.first_seen = true;
                    if this.ctx.stream {
                        let ttft = now - this.ctx.sent_at;
                        this.ctx.stats.record_ttft(ttft);
                        if let Some(g) = this.guard.as_ref() {
                            g.endpoint()
                                .observe_latency(ttft, this.ctx.config.upstream.ewma_decay);
                        }
                    }
                }
                let end = this.inner.is_end_stream();
                if let Some(m) = this.ctx.meter.as_mut() {
                    if let Some(data) = frame.data_ref() {
                        let mut out = m.feed(data.clone());
                        if end {
                            let tail = m.tail();
                            if !tail.is_empty() {
                                let mut joined = BytesMut::from(&out[..]);
                                joined.extend_from_slice(&tail);
                                out = joined.freeze();
                            }
                        }
                        frame = Frame::data(out);
                    }
                }
                // hyper stops polling once `is_end_stream` says so: finish here, not on `None`.
                if end {
                    finish(this.conn, this.guard, this.ctx);
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => {
                // Cut short by the replica: pass the break on, never paper over it. But first
                // let hyper flush what it buffered: an error returned right away makes it drop
                // the connection with the replica's last chunks still unsent.
                broken(this.conn, this.guard, this.ctx, "response body broken");
                *this.deferred = Some(e.into());
                cx.waker().wake_by_ref();
                Poll::Pending
            }
            Poll::Ready(None) => {
                let tail = this.ctx.meter.as_mut().map(Meter::tail).unwrap_or_default();
                finish(this.conn, this.guard, this.ctx);
                if tail.is_empty() {
                    Poll::Ready(None)
                } else {
                    Poll::Ready(Some(Ok(Frame::data(tail))))
                }
            }
            Poll::Pending => {
                ready!(this.idle.poll(cx));
                broken(
                    this.conn,
                    this.guard,
                    this.ctx,
                    "silent past idle_chunk_timeout",
                );
                Poll::Ready(Some(Err(Box::new(IdleChunkTimeout))))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

pin_project! {
    /// What the gateway answers with.
    #[project = ResponseBodyProj]
    pub enum ResponseBody {
        Full { data: Option<Bytes> },
        Upstream { #[pin] body: UpstreamBody },
    }
}

impl ResponseBody {
    pub fn full(data: impl Into<Bytes>) -> Self {
        let data: Bytes = data.into();
        Self::Full {
            data: (!data.is_empty()).then_some(data),
        }
    }
    pub fn empty() -> Self {
        Self::Full { data: None }
    }
    pub fn upstream(body: UpstreamBody) -> Self {
        Self::Upstream { body }
    }
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.project() {
            ResponseBodyProj::Full { data } => Poll::Ready(data.take().map(|d| Ok(Frame::data(d)))),
            ResponseBodyProj::Upstream { body } => body.poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Self::Full { data } => data.is_none(),
            Self::Upstream { body } => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Self::Full { data } => {
                SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64))
            }
            Self::Upstream { body } => body.size_hint(),
        }
    }
}
