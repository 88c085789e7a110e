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
use pin_project_lite::pin_project;
use tokio::time::{Instant, Sleep};

use super::record::{BodyFacts, Record};
use crate::balance::InflightGuard;
use crate::canary::stats::VersionStats;
use crate::config::Config;
use crate::limits::Reservation;
use crate::sse::{json_usage, SseMeter, Usage};
use crate::state::Route;
use crate::upstream::{self, Conn};

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

/// How the answer's body is to be metered, lent by the request path to `forward`: the meter is
/// made only where it is kept, in the body's box (`MeterSpec::start`). Made earlier and moved
/// in, its 520 bytes were copied four times per request.
pub struct MeterSpec {
    pub reservation: Option<Reservation>,
    pub strip_usage: bool,
    pub request_started: Instant,
}

impl MeterSpec {
    /// The meter of an answer's body; it takes the token reservation.
    fn start(&mut self, stream: bool) -> Meter {
        Meter::new(
            self.reservation.take(),
            stream,
            self.strip_usage,
            self.request_started,
        )
    }

    /// Nothing was generated (no replica took the request, or it answered with an error):
    /// the key's reserved tokens are given back.
    pub fn refund(&mut self) {
        if let Some(r) = self.reservation.take() {
            r.settle(Some(0));
        }
    }
}

/// Everything read from a replica's answer as it passes: for streams the SSE events (first
/// content token, gaps between tokens, the final `usage`), for JSON answers the `usage` at the
/// end. Settles the token reservation and finishes the request's record exactly once — when
/// the body ends, breaks, or is dropped because the client went away.
pub struct Meter {
    reservation: Option<Reservation>,
    sse: Option<SseMeter>,
    json: Option<JsonAnswer>,
    record: Option<Record>,
    request_started: Instant,
    first_token: Option<Instant>,
    last_token: Option<Instant>,
    bytes_out: u64,
    status: u16,
    /// How the body ended, once it has, and the usage read then.
    ended: Option<(End, Option<Usage>)>,
}

/// A JSON answer kept to read its `usage` at the end: usually one frame, shared, not copied.
enum JsonAnswer {
    Empty,
    One(Bytes),
    Many(BytesMut),
}

impl JsonAnswer {
    /// Adds a frame; `None` once the answer is too large to keep.
    fn push(self, data: &Bytes) -> Option<Self> {
        Some(match self {
            Self::Empty => Self::One(data.clone()),
            Self::One(first) => {
                let mut all = BytesMut::with_capacity(first.len() + data.len());
                all.extend_from_slice(&first);
                all.extend_from_slice(data);
                Self::Many(all)
            }
            Self::Many(mut all) => {
                all.extend_from_slice(data);
                Self::Many(all)
            }
        })
        .filter(|j| match j {
            Self::Many(all) => all.len() <= MAX_METERED_JSON,
            _ => true,
        })
    }
}

/// Largest JSON answer kept to read its `usage`.
const MAX_METERED_JSON: usize = 8 * 1024 * 1024;

/// How a response body ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    Clean,
    Broken,
    ClientGone,
}

impl Meter {
    /// `strip_usage`: remove the usage event the gateway asked for on the client's behalf.
    fn new(
        reservation: Option<Reservation>,
        stream: bool,
        strip_usage: bool,
        request_started: Instant,
    ) -> Self {
        Self {
            reservation,
            sse: stream.then(|| SseMeter::new(strip_usage)),
            json: (!stream).then_some(JsonAnswer::Empty),
            record: None,
            request_started,
            first_token: None,
            last_token: None,
            bytes_out: 0,
            status: 200,
            ended: None,
        }
    }

    /// Attaches the request's record (done once the response head is built). A body that
    /// has already ended (an empty one) finishes the record at once.
    pub fn attach(&mut self, record: Record, status: u16) {
        self.record = Some(record);
        self.status = status;
        self.finish_record();
    }

    /// Whether what it forwards is every byte it is fed (it may take out a usage event the
    /// gateway asked for on the client's behalf).
    fn keeps_every_byte(&self) -> bool {
        !self.sse.as_ref().is_some_and(SseMeter::strips)
    }

    fn feed(&mut self, data: Bytes, now: Instant, stats: &VersionStats) -> Bytes {
        let out = if let Some(s) = self.sse.as_mut() {
            let before = s.content_events;
            let out = s.feed(data);
            if s.content_events > before {
                match self.last_token {
                    None => {
                        let ttft = now - self.request_started;
                        self.first_token = Some(now);
                        stats.record_ttft(ttft);
                    }
                    Some(prev) => {
                        if let Some(r) = &self.record {
                            stats.metrics.observe_itl(
                                r.metrics(),
                                r.model.as_deref().unwrap_or("unknown"),
                                r.version.as_deref().unwrap_or("none"),
                                (now - prev).as_secs_f64(),
                            );
                        }
                    }
                }
                self.last_token = Some(now);
            }
            out
        } else {
            self.json = self.json.take().and_then(|j| j.push(&data));
            data
        };
        self.bytes_out += out.len() as u64;
        out
    }

    /// Bytes held back at the end of a stream (an unterminated last event).
    fn tail(&mut self) -> Bytes {
        let t = self.sse.as_mut().map(SseMeter::finish).unwrap_or_default();
        self.bytes_out += t.len() as u64;
        t
    }

    fn usage(&self) -> Option<Usage> {
        match (&self.sse, &self.json) {
            (Some(s), _) => s.usage,
            (None, Some(JsonAnswer::One(b))) => json_usage(b),
            (None, Some(JsonAnswer::Many(b))) => json_usage(b),
            _ => None,
        }
    }

    fn finish(&mut self, end: End) {
        if self.ended.is_some() {
            return;
        }
        let usage = self.usage();
        self.ended = Some((end, usage));
        if let Some(r) = self.reservation.take() {
            // Only a clean end has trustworthy usage; otherwise the reservation stays spent.
            r.settle(if end == End::Clean {
                usage.map(|u| u.total())
            } else {
                None
            });
        }
        self.finish_record();
    }

    /// Writes the record once the body has ended and the record is attached, whichever
    /// comes last.
    fn finish_record(&mut self) {
        let Some((end, usage)) = self.ended else {
            return;
        };
        // Finished where it lies, then dropped there: taken out and passed on, its 280 bytes
        // were copied twice.
        if let Some(record) = self.record.as_mut() {
            let status = match end {
                End::Clean => super::resp_status_str(self.status),
                End::Broken => "stream_error",
                End::ClientGone => "client_closed",
            };
            let facts = BodyFacts {
                ttft: self.first_token.map(|t| t - self.request_started),
                usage,
                content_events: self.sse.as_ref().map_or(0, |s| s.content_events),
                bytes_out: self.bytes_out,
            };
            record.finish(status, facts);
            self.record = None;
        }
    }
}

impl Drop for Meter {
    fn drop(&mut self) {
        // Dropped before the end: the client went away (or the gateway is shutting down).
        self.finish(End::ClientGone);
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
    /// The version's outcome window (time to first token).
    pub stats: Arc<crate::canary::stats::VersionStats>,
}

pin_project! {
    pub struct UpstreamBody {
        // Where the body stands, read from `conn` in this task (see `crate::upstream`).
        inner: upstream::Body,
        // The idle-gap timer, armed only once the replica makes the body wait: an answer that is
        // already buffered (most JSON answers) never touches the timer wheel. It is not moved
        // for every chunk: when it fires, the time since `last_data` decides.
        #[pin]
        idle: Sleep,
        idle_armed: bool,
        last_data: Instant,
        ctx: BodyCtx,
        // Made here, in the box, from the request's `MeterSpec`: made earlier and moved in,
        // its 520 bytes were copied twice more per request.
        meter: Meter,
        first_seen: bool,
        // The connection and the replica it belongs to; given back on a clean end.
        conn: Option<Conn>,
        guard: Option<InflightGuard>,
        // An upstream error held back for one poll (see `poll_frame`).
        deferred: Option<BoxError>,
    }
}

impl UpstreamBody {
    /// The body, in its box: it is written there where it is made (boxing a finished value
    /// copied its 864 bytes).
    pub fn boxed(
        inner: upstream::Body,
        conn: Conn,
        guard: InflightGuard,
        ctx: BodyCtx,
        meter: &mut MeterSpec,
    ) -> Pin<Box<Self>> {
        let idle = tokio::time::sleep_until(ctx.sent_at + ctx.idle_timeout);
        let last_data = ctx.sent_at;
        let mut body = Box::write(
            Box::new_uninit(),
            Self {
                inner,
                idle,
                idle_armed: false,
                last_data,
                meter: meter.start(ctx.stream),
                ctx,
                first_seen: false,
                conn: Some(conn),
                guard: Some(guard),
                deferred: None,
            },
        );
        // Nothing to read (a 204, Content-Length: 0): hyper never polls a body that reports
        // its end, so it ends here.
        if body.inner.is_end() {
            let now = crate::clock::now();
            finish(
                &body.inner,
                &mut body.conn,
                &mut body.guard,
                &body.ctx,
                &mut body.meter,
                now,
            );
        }
        Box::into_pin(body)
    }

    /// Hands the request's record to the body, which finishes it when the body ends.
    pub fn attach(self: Pin<&mut Self>, record: Record, status: u16) {
        self.project().meter.attach(record, status);
    }
}

/// Returns the connection to its replica's pool (if it ended at a message boundary) and
/// releases the in-flight count.
fn finish(
    inner: &upstream::Body,
    conn: &mut Option<Conn>,
    guard: &mut Option<InflightGuard>,
    ctx: &BodyCtx,
    meter: &mut Meter,
    now: Instant,
) {
    if let Some(g) = guard.as_ref() {
        if !ctx.stream {
            let took = now - ctx.sent_at;
            g.endpoint()
                .observe_latency(took, ctx.config.upstream.ewma_decay);
            ctx.stats.record_ttft(took);
        }
        if let Some(c) = conn.take().filter(|c| inner.reusable(c)) {
            g.endpoint()
                .checkin(c, ctx.config.upstream.pool_idle_timeout);
        }
    }
    guard.take();
    meter.finish(End::Clean);
}

/// The replica broke the body (reset, or silent past the idle limit): a passive failure.
fn broken(
    conn: &mut Option<Conn>,
    guard: &mut Option<InflightGuard>,
    ctx: &BodyCtx,
    meter: &mut Meter,
    why: &str,
) {
    conn.take();
    if let Some(g) = guard.take() {
        let health = &ctx.config.health;
        g.endpoint().record_failure(health, why, || {
            ctx.route.may_eject_one_more(health.max_ejection_percent)
        });
    }
    meter.finish(End::Broken);
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
        let Some(conn) = this.conn.as_mut() else {
            // Finished or broken already.
            return Poll::Ready(None);
        };
        match this.inner.poll_data(conn, cx) {
            Poll::Ready(Some(Ok(data))) => {
                let now = crate::clock::now();
                *this.last_data = now;
                if !*this.first_seen {
                    *this.first_seen = true;
                    if this.ctx.stream {
                        if let Some(g) = this.guard.as_ref() {
                            g.endpoint().observe_latency(
                                now - this.ctx.sent_at,
                                this.ctx.config.upstream.ewma_decay,
                            );
                        }
                    }
                }
                let end = this.inner.is_end();
                let mut out = this.meter.feed(data, now, &this.ctx.stats);
                if end {
                    let tail = this.meter.tail();
                    if !tail.is_empty() {
                        let mut joined = BytesMut::from(&out[..]);
                        joined.extend_from_slice(&tail);
                        out = joined.freeze();
                    }
                    // hyper stops polling once `is_end_stream` says so: finish here.
                    finish(this.inner, this.conn, this.guard, this.ctx, this.meter, now);
                }
                Poll::Ready(Some(Ok(Frame::data(out))))
            }
            Poll::Ready(Some(Err(e))) => {
                // Cut short by the replica: pass the break on, never paper over it. But first
                // let hyper flush what it buffered: an error returned right away makes it drop
                // the connection with the replica's last chunks still unsent.
                broken(
                    this.conn,
                    this.guard,
                    this.ctx,
                    this.meter,
                    "response body broken",
                );
                *this.deferred = Some(e.into());
                cx.waker().wake_by_ref();
                Poll::Pending
            }
            Poll::Ready(None) => {
                let tail = this.meter.tail();
                finish(
                    this.inner,
                    this.conn,
                    this.guard,
                    this.ctx,
                    this.meter,
                    crate::clock::now(),
                );
                if tail.is_empty() {
                    Poll::Ready(None)
                } else {
                    Poll::Ready(Some(Ok(Frame::data(tail))))
                }
            }
            Poll::Pending => {
                let idle = this.ctx.idle_timeout;
                if !*this.idle_armed {
                    *this.idle_armed = true;
                    this.idle.as_mut().reset(crate::clock::now() + idle);
                } else if !this.idle.is_elapsed() {
                    // Polled once already with this task's waker, which it keeps until it
                    // fires: polling it again for every token event (about 150 instructions)
                    // would only say so again.
                    return Poll::Pending;
                }
                loop {
                    ready!(this.idle.as_mut().poll(cx));
                    // Set at an earlier chunk's deadline: the body may have moved since.
                    let due = *this.last_data + idle;
                    // A fresh read, as in `h1::read_head`: the timer fired, and a reading
                    // kept from earlier in this poll could be older than that.
                    if due <= crate::clock::fresh() {
                        break;
                    }
                    this.idle.as_mut().reset(due);
                }
                broken(
                    this.conn,
                    this.guard,
                    this.ctx,
                    this.meter,
                    "silent past idle_chunk_timeout",
                );
                Poll::Ready(Some(Err(Box::new(IdleChunkTimeout))))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        (self.inner.is_end() || self.conn.is_none()) && self.deferred.is_none()
    }

    /// The replica's length where the meter forwards every byte: the answer's length (the
    /// HTTP/1.1 writer frames it so; the replica's `Content-Length` field is not trusted for
    /// it). A meter that takes out a usage event the gateway asked for promises only an upper
    /// bound: such an answer goes out chunked.
    fn size_hint(&self) -> SizeHint {
        match self.inner.remaining() {
            Some(n) if self.meter.keeps_every_byte() => SizeHint::with_exact(n),
            Some(upper) => {
                let mut h = SizeHint::new();
                h.set_upper(upper);
                h
            }
            None => SizeHint::new(),
        }
    }
}

/// What the gateway answers with. A replica's body is boxed: the answer is moved through
/// several layers on its way out, and each connection's future keeps a slot for it while the
/// connection lives (idle ones included); the box exists only from a replica's answer to the
/// end of its body.
pub enum ResponseBody {
    Full { data: Option<Bytes> },
    Upstream { body: Pin<Box<UpstreamBody>> },
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
    pub fn upstream(body: Pin<Box<UpstreamBody>>) -> Self {
        Self::Upstream { body }
    }

    /// Hands the record to a pass-through body (returned back if this is a gateway answer).
    pub fn attach(&mut self, record: Record, status: u16) -> Option<Record> {
        match self {
            Self::Upstream { body } => {
                body.as_mut().attach(record, status);
                None
            }
            Self::Full { .. } => Some(record),
        }
    }
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        // For HTTP/2's send timeout: a poll here means the client has room for more.
        crate::h2::body_polled();
        match self.get_mut() {
            Self::Full { data } => Poll::Ready(data.take().map(|d| Ok(Frame::data(d)))),
            Self::Upstream { body } => body.as_mut().poll_frame(cx),
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
