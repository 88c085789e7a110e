//! What the gateway adds to hyper's HTTP/2 server (the data port's h2c and h2 over TLS), which
//! has neither of HTTP/1.1's two limits on a client (`crate::h1`):
//!
//! * **`server.send_timeout`, per stream.** A client that stops taking a stream's answer
//!   (grants it no flow-control window) for that long has the stream reset, which cancels the
//!   upstream request, as a stalled HTTP/1.1 reader has its connection closed. Left alone, a
//!   stream whose window is spent waits for room for as long as the connection lives, holding
//!   its replica connection, its in-flight slot and the replica's own work on it. While it
//!   waits, hyper does not poll the answer's body. So each stream's task (hyper hands it to
//!   the executor) runs inside [`Watched`], which notes whether a poll of the task reached the
//!   body ([`body_polled`], called by the body). Once the body has been reached, a poll that
//!   does not reach it is a wait for room; when the body has not been reached for
//!   `send_timeout`, the stream's task is dropped. hyper's stream goes with it: h2 resets the
//!   stream (`CANCEL`) and the body's drop releases the replica and records the request as
//!   `client_closed`. A body waiting for its replica (a long pause between tokens) is not a
//!   stall: it was polled and returned `Pending`. When the timer fires, the task is polled
//!   again, hyper finds room and polls the body, and the timer is moved on.
//! * **An idle limit.** A connection with no stream open for `server.header_read_timeout` (the
//!   HTTP/1.1 keep-alive limit) is closed with a `GOAWAY`, so idle clients do not keep
//!   descriptors and places under the connection cap for ever ([`Streams`]).
//!
//! Draining is as before: `GOAWAY`, then the connection ends once its streams have.

use std::cell::Cell;
use std::future::Future;
use std::pin::{pin, Pin};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use hyper_util::rt::TokioTimer;
use tokio::sync::Notify;
use tokio::time::{Instant, Sleep};
use tokio_util::sync::CancellationToken;

use crate::config::validate::MAX_HEADER_BYTES_CEILING;
use crate::proxy::ConnCtx;
use crate::state::AppState;

/// Serves one HTTP/2 connection until it ends: reset streams whose client stopped reading,
/// a `GOAWAY` once it has been idle for `server.header_read_timeout`, and one when `stop` is
/// cancelled (draining).
pub async fn serve<I>(io: I, app: Arc<AppState>, ctx: Arc<ConnCtx>, stop: CancellationToken)
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let streams = Arc::new(Streams::default());
    let idle = app.snapshot().config.server.header_read_timeout;
    let executor = StreamExecutor {
        app: app.clone(),
        streams: streams.clone(),
    };
    let mut builder = hyper::server::conn::http2::Builder::new(executor);
    builder
        .timer(TokioTimer::new())
        .max_concurrent_streams(1024)
        .max_header_list_size((MAX_HEADER_BYTES_CEILING + 16 * 1024) as u32);
    let mut conn = pin!(builder.serve_connection(io, crate::server::hyper_service(app, ctx)));
    let mut closing = false;
    loop {
        tokio::select! {
            _ = conn.as_mut() => return,
            () = stop.cancelled(), if !closing => {}
            () = streams.idle_for(idle), if !closing => {
                tracing::debug!(?idle, "HTTP/2 connection idle; closing it");
            }
        }
        // hyper's graceful close: `GOAWAY`, and the end once the open streams have ended.
        conn.as_mut().graceful_shutdown();
        closing = true;
    }
}

/// Runs hyper's tasks (each HTTP/2 stream's request) as `tokio::spawn` does, each poll
/// sharing one clock reading (`crate::clock`), as a connection's own task does, each reset
/// once its client has taken nothing for `server.send_timeout`, and each counted in its
/// connection's [`Streams`].
#[derive(Clone)]
struct StreamExecutor {
    app: Arc<AppState>,
    streams: Arc<Streams>,
}

impl<F> hyper::rt::Executor<F> for StreamExecutor
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    fn execute(&self, fut: F) {
        let send_timeout = self.app.snapshot().config.server.send_timeout;
        let mut task = watched(fut, send_timeout);
        task.open = Some(self.streams.open());
        tokio::spawn(crate::clock::per_poll(task));
    }
}

/// A connection's open streams, for its idle limit.
#[derive(Default)]
pub struct Streams {
    open: AtomicUsize,
    /// Streams ever opened: a wait for idleness that saw this move started over.
    opened: AtomicU64,
    /// Told when the last open stream ends.
    none_open: Notify,
}

/// An open stream's place in [`Streams`], given back when its task ends.
pub struct Open(Arc<Streams>);

impl Drop for Open {
    fn drop(&mut self) {
        if self.0.open.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.none_open.notify_waiters();
        }
    }
}

impl Streams {
    /// A stream opens: counted until the returned guard is dropped.
    pub fn open(self: &Arc<Self>) -> Open {
        self.opened.fetch_add(1, Ordering::AcqRel);
        self.open.fetch_add(1, Ordering::AcqRel);
        Open(self.clone())
    }

    /// Returns once no stream has been open for `idle` (the wait starts over whenever a
    /// stream opens, so it may take up to twice that after the last one ends).
    pub async fn idle_for(&self, idle: Duration) {
        loop {
            let mut ended = pin!(self.none_open.notified());
            ended.as_mut().enable();
            if self.open.load(Ordering::Acquire) > 0 {
                ended.await;
                continue;
            }
            let seen = self.opened.load(Ordering::Acquire);
            tokio::time::sleep(idle).await;
            if self.open.load(Ordering::Acquire) == 0 && self.opened.load(Ordering::Acquire) == seen
            {
                return;
            }
        }
    }
}

thread_local! {
    /// Set when an answer's body is polled; read and cleared around each poll of a watched task.
    static BODY_POLLED: Cell<bool> = const { Cell::new(false) };
}

/// Called by the answer's body on every poll: the client is taking what it is sent (or the
/// body was polled to find there is nothing yet).
pub fn body_polled() {
    BODY_POLLED.with(|b| b.set(true));
}

pin_project_lite::pin_project! {
    /// One HTTP/2 stream's task, dropped when its client has taken nothing for `timeout`.
    pub struct Watched<F> {
        #[pin]
        inner: Option<F>,
        #[pin]
        timer: Option<Sleep>,
        timeout: Duration,
        // The last poll that reached the body; `None` until one has (the request is still
        // being served before that, under its own deadlines).
        last: Option<Instant>,
        // Its place among its connection's open streams.
        open: Option<Open>,
    }
}

/// Watches `task` (a stream's task from hyper) for a client that stops reading.
pub fn watched<F: Future>(task: F, timeout: Duration) -> Watched<F> {
    Watched {
        inner: Some(task),
        timer: None,
        timeout,
        last: None,
        open: None,
    }
}

impl<F: Future> Future for Watched<F> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let mut this = self.project();
        let Some(task) = this.inner.as_mut().as_pin_mut() else {
            return Poll::Ready(());
        };
        BODY_POLLED.with(|b| b.set(false));
        let done = task.poll(cx).is_ready();
        let reached = BODY_POLLED.with(|b| b.replace(false));
        if done {
            this.inner.set(None);
            this.timer.set(None);
            return Poll::Ready(());
        }
        if reached {
            *this.last = Some(crate::clock::now());
        }
        let Some(last) = *this.last else {
            return Poll::Pending;
        };
        let timeout = *this.timeout;
        let due = last + timeout;
        match this.timer.as_ref().as_pin_ref() {
            None => this.timer.set(Some(tokio::time::sleep_until(due))),
            // Armed and polled with this task's waker, which it keeps until it fires: moved
            // only then (polling it on every token event would only say so again).
            Some(t) if !t.is_elapsed() => return Poll::Pending,
            Some(_) => {}
        }
        let Some(mut timer) = this.timer.as_mut().as_pin_mut() else {
            return Poll::Pending;
        };
        loop {
            ready!(timer.as_mut().poll(cx));
            // Fired: the body may have been reached since it was set. A fresh read, as in
            // `proxy::body`: a reading kept from earlier in this poll never moves.
            if due <= crate::clock::fresh() {
                break;
            }
            timer.as_mut().reset(due);
        }
        tracing::debug!(
            ?timeout,
            "HTTP/2 client took nothing for send_timeout; stream reset"
        );
        // Dropping hyper's stream resets it; dropping the body releases the replica.
        this.inner.set(None);
        this.timer.set(None);
        Poll::Ready(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::sync::Arc;

    /// Set when dropped: whether the watched task was let go.
    struct Dropped(Arc<AtomicBool>);

    impl Drop for Dropped {
        fn drop(&mut self) {
            self.0.store(true, Ordering::SeqCst);
        }
    }

    const TIMEOUT: Duration = Duration::from_secs(60);

    /// A stream's task: the body is reached in the polls `reach` says (by poll number), and
    /// the task wakes itself every `every` (as replica data would), never finishing.
    fn task(
        dropped: Arc<AtomicBool>,
        polls: Arc<AtomicUsize>,
        every: Option<Duration>,
        reach: fn(usize) -> bool,
    ) -> impl Future<Output = ()> {
        let guard = Dropped(dropped);
        let mut tick = every.map(|d| Box::pin(tokio::time::sleep(d)));
        std::future::poll_fn(move |cx| {
            let _ = &guard;
            let n = polls.fetch_add(1, Ordering::SeqCst);
            if reach(n) {
                body_polled();
            }
            if let (Some(t), Some(d)) = (tick.as_mut(), every) {
                if t.as_mut().poll(cx).is_ready() {
                    t.as_mut().reset(Instant::now() + d);
                    cx.waker().wake_by_ref();
                }
            }
            Poll::Pending
        })
    }

    /// Runs a watched `task` for at most `for_`: whether it was cut (finished: the task never
    /// does by itself), whether the task was dropped by then, and how often it was polled.
    async fn run(
        every: Option<Duration>,
        reach: fn(usize) -> bool,
        for_: Duration,
    ) -> (bool, bool, usize) {
        let (dropped, polls) = (
            Arc::new(AtomicBool::new(false)),
            Arc::new(AtomicUsize::new(0)),
        );
        let mut watched = std::pin::pin!(watched(
            task(dropped.clone(), polls.clone(), every, reach),
            TIMEOUT
        ));
        let cut = tokio::time::timeout(for_, watched.as_mut()).await.is_ok();
        (
            cut,
            dropped.load(Ordering::SeqCst),
            polls.load(Ordering::SeqCst),
        )
    }

    #[tokio::test(start_paused = true)]
    async fn a_stream_whose_body_is_no_longer_reached_is_dropped_after_the_timeout() {
        // Reached once (the head went out, the first frame taken), then the client's window is
        // spent: polls (replica data arriving) no longer reach the body.
        for every in [Some(Duration::from_secs(1)), None] {
            let started = Instant::now();
            let (cut, dropped, polls) = run(every, |n| n == 0, TIMEOUT * 3).await;
            let took = started.elapsed();
            assert!(cut && dropped, "a stalled stream is let go");
            // Once the timeout has passed since the body was last reached: not before, and
            // not much later.
            assert!(
                took >= TIMEOUT && took < TIMEOUT + Duration::from_secs(1),
                "{took:?}"
            );
            if every.is_none() {
                // Nothing else wakes it: the first poll, then the timer's (and one more if the
                // timer fired a moment before its deadline's nanosecond).
                assert!((2..=3).contains(&polls), "{polls}");
            }
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_stream_that_keeps_reaching_its_body_is_never_dropped() {
        // Every poll reaches the body: the client takes what it is sent.
        let (cut, dropped, polls) = run(Some(Duration::from_secs(1)), |_| true, TIMEOUT * 5).await;
        assert!(!cut && !dropped);
        assert!(polls > 250, "{polls}");
        // Reached only when woken by the timer: a replica silent for longer than the timeout
        // (the body is polled and has nothing yet) is not a stalled client.
        let (cut, dropped, polls) = run(None, |_| true, TIMEOUT * 5).await;
        assert!(!cut && !dropped);
        assert!((5..=7).contains(&polls), "{polls}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_request_still_being_served_is_left_to_its_own_deadlines() {
        // The body never reached: the answer's head is not ready yet (a queue, a long time to
        // first token). That has its own limits; the send timeout does not apply.
        let (cut, dropped, _) = run(Some(Duration::from_secs(1)), |_| false, TIMEOUT * 5).await;
        assert!(!cut && !dropped);
    }

    /// How long `idle_for` takes, from now, in a task of its own.
    fn wait_idle(streams: &Arc<Streams>, idle: Duration) -> tokio::task::JoinHandle<Duration> {
        let streams = streams.clone();
        tokio::spawn(async move {
            let t = Instant::now();
            streams.idle_for(idle).await;
            t.elapsed()
        })
    }

    #[tokio::test(start_paused = true)]
    async fn a_connection_is_idle_once_no_stream_has_been_open_for_the_limit() {
        let streams = Arc::new(Streams::default());
        let idle = Duration::from_secs(30);
        // None open from the start: idle after the limit, not before.
        let t0 = Instant::now();
        streams.idle_for(idle).await;
        assert_eq!(t0.elapsed(), idle);

        // A stream open for 100 s: not idle while it is, then idle the limit after it ends.
        let open = streams.open();
        let waiting = wait_idle(&streams, idle);
        tokio::time::sleep(Duration::from_secs(100)).await;
        assert!(!waiting.is_finished());
        drop(open);
        assert_eq!(waiting.await.unwrap(), Duration::from_secs(100) + idle);

        // A stream that opens and ends during the wait starts it over.
        let waiting = wait_idle(&streams, idle);
        tokio::time::sleep(Duration::from_secs(10)).await;
        drop(streams.open());
        let took = waiting.await.unwrap();
        assert!(took > idle && took <= idle * 2, "{took:?}");
    }

    /// The watch rides along with every HTTP/2 stream's task: its timer and stamps stay small
    /// beside the stream's own state (several KiB).
    #[test]
    fn the_watch_adds_little_to_a_stream() {
        let task = std::future::ready(());
        let added = std::mem::size_of_val(&watched(task, TIMEOUT))
            - std::mem::size_of::<std::future::Ready<()>>();
        // 159 bytes with tokio 1.54, most of them the timer.
        assert!(added <= 192, "{added} bytes");
    }
}
