//! One clock read per poll of a connection's task, where about 17 were made per request.
//!
//! Reading the monotonic clock costs about 31 ns on this project's test host (a virtual
//! machine's TSC through the vDSO). A request read it at each stage that kept a time: its
//! arrival, the queue, the send, the response head, the first token, the end, the replica's
//! latency estimate, the pool's idle stamp, the token bucket. Most of those are moments of the
//! same poll, microseconds apart, so inside a poll of a task wrapped in [`PerPoll`] the first
//! [`now`] reads the clock and later ones reuse that reading until the poll returns.
//!
//! [`fresh`] always reads the clock (and later [`now`]s of the same poll then see that
//! reading): for the few moments the gateway's own overhead is measured between (a request's
//! arrival, the end of its checks, the replica's response head, the answer's head going out),
//! where the microseconds spent in one poll are the figure itself.
//!
//! A loop that re-arms a timer until the clock passes its deadline must use [`fresh`]: a
//! reading kept from earlier in the same poll never moves, and the timer would fire again at
//! once, for ever.
//!
//! Outside a wrapped poll (the health prober, the admin API, tests) both read the clock.
//! Times are `tokio::time::Instant`, so tests with a paused clock still see theirs.

use std::cell::Cell;
use std::future::Future;
use std::pin::Pin;
use std::sync::OnceLock;
use std::task::{Context, Poll};

use tokio::time::Instant;

#[derive(Clone, Copy)]
enum Cached {
    /// Not inside a wrapped poll: every read is a clock read.
    Off,
    /// Inside one, not read yet.
    Empty,
    /// The poll's reading, and the same as [`now_ns`] gives it once asked for (0 until then).
    At(Instant, u64),
}

thread_local! {
    static NOW: Cell<Cached> = const { Cell::new(Cached::Off) };
}

/// The time of this poll: the clock's reading the first time it is asked for in a poll of a
/// [`PerPoll`] task, the same reading after that; a clock read outside such a poll.
pub fn now() -> Instant {
    NOW.with(|c| match c.get() {
        Cached::At(t, _) => t,
        Cached::Empty => {
            let t = Instant::now();
            c.set(Cached::At(t, 0));
            t
        }
        Cached::Off => Instant::now(),
    })
}

/// [`now`] as nanoseconds since the first time this was asked (never 0), for times kept in
/// atomics and compared as integers (the balancer's latency estimates, ejections, the limiters'
/// back-off). The conversion is made once per poll too: a request asked for it four times.
pub fn now_ns() -> u64 {
    NOW.with(|c| match c.get() {
        Cached::At(_, ns) if ns != 0 => ns,
        Cached::Off => since_origin(Instant::now()),
        Cached::At(..) | Cached::Empty => {
            let t = now();
            let ns = since_origin(t);
            c.set(Cached::At(t, ns));
            ns
        }
    })
}

fn since_origin(t: Instant) -> u64 {
    static ORIGIN: OnceLock<Instant> = OnceLock::new();
    let origin = *ORIGIN.get_or_init(Instant::now);
    t.saturating_duration_since(origin).as_nanos() as u64 + 1
}

/// A clock read, always. Inside a wrapped poll, later [`now`]s of that poll return it.
pub fn fresh() -> Instant {
    let t = Instant::now();
    NOW.with(|c| {
        if !matches!(c.get(), Cached::Off) {
            c.set(Cached::At(t, 0));
        }
    });
    t
}

pin_project_lite::pin_project! {
    /// A future whose every poll shares one clock reading (see the module's note).
    pub struct PerPoll<F> {
        #[pin]
        inner: F,
    }
}

/// Wraps a task's future so that each of its polls reads the clock at most once for [`now`].
pub fn per_poll<F: Future>(inner: F) -> PerPoll<F> {
    PerPoll { inner }
}

/// Puts back what the thread's reading was before a poll, even if the poll panics: a reading
/// left behind would be served, stale, to whatever the thread polls next.
struct Restore(Cached);

impl Drop for Restore {
    fn drop(&mut self) {
        NOW.with(|c| c.set(self.0));
    }
}

impl<F: Future> Future for PerPoll<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let _restore = Restore(NOW.with(|c| c.replace(Cached::Empty)));
        self.project().inner.poll(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn spin(d: Duration) {
        let t = std::time::Instant::now();
        while t.elapsed() < d {}
    }

    #[tokio::test]
    async fn one_reading_per_poll_inside_fresh_outside() {
        // Outside a wrapped poll, time moves between two reads.
        let a = now();
        spin(Duration::from_millis(2));
        assert!(now() > a);

        let (first, later, refreshed, after_refresh, next_poll) = per_poll(async {
            let first = now();
            spin(Duration::from_millis(2));
            let later = now();
            let refreshed = fresh();
            let after_refresh = now();
            // A new poll: the reading is taken again.
            tokio::task::yield_now().await;
            spin(Duration::from_millis(2));
            (first, later, refreshed, after_refresh, now())
        })
        .await;
        assert_eq!(first, later, "the same poll shares one reading");
        assert!(refreshed >= first + Duration::from_millis(2));
        assert_eq!(
            after_refresh, refreshed,
            "a fresh read becomes the poll's reading"
        );
        assert!(next_poll >= refreshed + Duration::from_millis(2));

        // Back outside: no reading is left behind.
        let b = now();
        spin(Duration::from_millis(2));
        assert!(now() > b);
    }

    #[tokio::test]
    async fn nanoseconds_follow_the_polls_reading() {
        now_ns(); // the origin is set before the readings compared
        let (a, b, after_fresh, next_poll, instants) = per_poll(async {
            let t0 = now();
            let a = now_ns();
            spin(Duration::from_millis(2));
            let b = now_ns();
            let t1 = fresh();
            let after_fresh = now_ns();
            tokio::task::yield_now().await;
            spin(Duration::from_millis(2));
            (a, b, after_fresh, now_ns(), (t0, t1))
        })
        .await;
        assert_ne!(a, 0);
        assert_eq!(a, b, "one conversion per poll");
        let moved = (instants.1 - instants.0).as_nanos() as u64;
        assert_eq!(after_fresh - a, moved, "a fresh read moves it by as much");
        assert!(next_poll >= after_fresh + 2_000_000);
        // Outside a wrapped poll every call reads the clock.
        let c = now_ns();
        spin(Duration::from_millis(2));
        assert!(now_ns() >= c + 2_000_000);
    }

    #[test]
    fn a_panicking_poll_leaves_no_reading_behind() {
        let caught = std::panic::catch_unwind(|| {
            let mut fut = std::pin::pin!(per_poll(async {
                let _ = now();
                panic!("in the poll");
            }));
            let waker = std::task::Waker::noop();
            let _ = fut.as_mut().poll(&mut Context::from_waker(waker));
        });
        assert!(caught.is_err());
        assert!(matches!(NOW.with(Cell::get), Cached::Off));
    }

    #[tokio::test(start_paused = true)]
    async fn paused_time_is_seen() {
        let t = per_poll(async {
            let a = now();
            tokio::time::sleep(Duration::from_secs(5)).await;
            now() - a
        })
        .await;
        assert_eq!(t, Duration::from_secs(5));
    }
}
