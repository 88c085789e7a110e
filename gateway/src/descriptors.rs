//! The process's open-file budget, and the client connections it allows.
//!
//! A proxied request holds two descriptors: the client's connection and one to a replica. A
//! gateway that accepts every client until `accept` fails has, near its open-file limit,
//! clients it cannot serve: their requests find no descriptor for the replica, fail with
//! `EMFILE`, and (worse) count as that replica's failures, so a healthy replica gets ejected
//! for the gateway's own shortage. Here the data listener admits a client only while every
//! admitted client could still get its replica connection: at most half of the descriptors
//! the limit leaves (after those open at start and a reserve for the admin listener, health
//! probes, Redis and config reloads). A client past that waits in the listen queue (its
//! connect has succeeded; it is read once a connection closes) instead of being turned away.
//! `server.max_connections` lowers the cap further.
//!
//! What this does not bound: an HTTP/2 client connection carries many requests, each with its
//! own replica connection, and idle pooled replica connections hold descriptors too. A
//! connect that still finds no descriptor (or no local port) is the gateway's failure, not the
//! replica's (`is_local_exhaustion`): it answers 503 and is not counted against the replica.

use std::io;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;

/// Descriptors kept back for everything but client and replica connections, when the limit
/// is large enough to spare them (an eighth of it otherwise).
const RESERVE: usize = 64;

/// How often a listener held at its cap looks again at the cap itself (a reload may raise it).
const RECHECK: Duration = Duration::from_millis(250);

/// Least time between two warnings that the cap was reached (a gateway held at its cap reaches
/// it again at every connection that closes).
const WARN_EVERY_NS: u64 = 10_000_000_000;

/// Open client connections against the cap (see the module's comment).
#[derive(Debug)]
pub struct Descriptors {
    /// Client connections the open-file limit allows; `None` if the limit is unknown.
    fd_cap: Option<usize>,
    /// The soft open-file limit read at start, for logs and metrics.
    limit: Option<u64>,
    clients: AtomicUsize,
    freed: Notify,
    /// When the cap-reached warning was last logged (`clock::now_ns`; 0: never).
    warned_at: AtomicU64,
}

impl Descriptors {
    /// The budget of this process: its soft open-file limit, less the descriptors open now.
    pub fn from_process() -> Self {
        let limit = rlimit::getrlimit(rlimit::Resource::NOFILE)
            .ok()
            .map(|(soft, _)| soft);
        let open = open_now();
        Self::new(limit.map(|l| client_cap(l, open)), limit)
    }

    /// A budget allowing `cap` client connections (tests).
    pub fn with_cap(cap: Option<usize>) -> Self {
        Self::new(cap, None)
    }

    fn new(fd_cap: Option<usize>, limit: Option<u64>) -> Self {
        Self {
            fd_cap,
            limit,
            clients: AtomicUsize::new(0),
            freed: Notify::new(),
            warned_at: AtomicU64::new(0),
        }
    }

    /// The soft open-file limit read at start.
    pub fn limit(&self) -> Option<u64> {
        self.limit
    }

    /// The cap on client connections: the limit's and `configured`, the lower.
    pub fn cap(&self, configured: Option<usize>) -> Option<usize> {
        match (self.fd_cap, configured) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Client connections open now.
    pub fn clients(&self) -> usize {
        self.clients.load(Ordering::Relaxed)
    }

    /// Whether one more client connection fits under `cap`.
    pub fn has_room(&self, cap: Option<usize>) -> bool {
        cap.is_none_or(|c| self.clients() < c)
    }

    /// Waits until one more client connection fits under the cap `cap()` returns (read again
    /// at each look, so a reload that changes `server.max_connections` applies to a listener
    /// that is waiting). Only the listener admits, so the room is still there at `admit`.
    pub async fn room(&self, cap: impl Fn() -> Option<usize>) {
        let mut warned = false;
        loop {
            // Registered before the check: a connection closing in between is not missed.
            let freed = self.freed.notified();
            if self.has_room(cap()) {
                return;
            }
            if !warned && self.time_to_warn() {
                warned = true;
                tracing::warn!(
                    clients = self.clients(),
                    cap = cap(),
                    "client connection cap reached; new connections wait to be accepted"
                );
            }
            let _ = tokio::time::timeout(RECHECK, freed).await;
        }
    }

    /// Counts an accepted client connection until the slot drops.
    pub fn admit(self: &Arc<Self>) -> ClientSlot {
        self.clients.fetch_add(1, Ordering::AcqRel);
        ClientSlot(self.clone())
    }

    /// Whether the cap-reached warning is due (at most one per `WARN_EVERY_NS`).
    fn time_to_warn(&self) -> bool {
        let now = crate::clock::now_ns();
        let last = self.warned_at.load(Ordering::Relaxed);
        if last != 0 && now.saturating_sub(last) < WARN_EVERY_NS {
            return false;
        }
        self.warned_at.store(now, Ordering::Relaxed);
        true
    }
}

/// One admitted client connection; its place is given back when this drops.
#[derive(Debug)]
pub struct ClientSlot(Arc<Descriptors>);

impl Drop for ClientSlot {
    fn drop(&mut self) {
        self.0.clients.fetch_sub(1, Ordering::AcqRel);
        self.0.freed.notify_one();
    }
}

/// Client connections allowed by an open-file limit of `limit` with `open` descriptors open:
/// two descriptors each, out of what is left after the reserve. At least one.
fn client_cap(limit: u64, open: usize) -> usize {
    let limit = usize::try_from(limit).unwrap_or(usize::MAX);
    let reserve = RESERVE.min(limit / 8);
    (limit.saturating_sub(open).saturating_sub(reserve) / 2).max(1)
}

/// Descriptors this process has open (Linux: `/proc/self/fd`; elsewhere a guess).
fn open_now() -> usize {
    std::fs::read_dir("/proc/self/fd")
        .map(|d| d.count())
        .unwrap_or(16)
}

/// Whether an I/O error is the gateway running out of something of its own (descriptors,
/// local ports, kernel memory), not anything the peer did.
pub fn is_local_exhaustion(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
    ) || e.kind() == io::ErrorKind::AddrNotAvailable
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cap_leaves_two_descriptors_per_client_after_the_reserve() {
        // 20,000 descriptors, 13 open at start: (20,000 - 13 - 64) / 2.
        assert_eq!(client_cap(20_000, 13), 9_961);
        // A small limit keeps an eighth back, not 64.
        assert_eq!(client_cap(64, 12), (64 - 12 - 8) / 2);
        // Never zero, even with the limit already used up.
        assert_eq!(client_cap(16, 40), 1);
        assert_eq!(client_cap(u64::MAX, 10), (usize::MAX - 10 - 64) / 2);
    }

    #[test]
    fn the_lower_of_the_limits_and_the_configured_cap_applies() {
        let d = Descriptors::with_cap(Some(100));
        assert_eq!(d.cap(None), Some(100));
        assert_eq!(d.cap(Some(10)), Some(10));
        assert_eq!(d.cap(Some(1000)), Some(100));
        assert_eq!(Descriptors::with_cap(None).cap(Some(7)), Some(7));
        assert_eq!(Descriptors::with_cap(None).cap(None), None);
    }

    #[test]
    fn slots_are_counted_and_given_back_on_drop() {
        let d = Arc::new(Descriptors::with_cap(Some(2)));
        let cap = d.cap(None);
        assert!(d.has_room(cap));
        let a = d.admit();
        assert!(d.has_room(cap));
        let b = d.admit();
        assert!(!d.has_room(cap), "at the cap");
        assert_eq!(d.clients(), 2);
        drop(a);
        assert_eq!(d.clients(), 1);
        assert!(d.has_room(cap), "a place was given back");
        drop(b);
        assert!(d.has_room(None), "no cap at all");
    }

    /// In paused time: the waiting listener is woken by the closing connection itself, not by
    /// its periodic look at the cap (which would advance the clock by `RECHECK`).
    #[tokio::test(start_paused = true)]
    async fn a_listener_waiting_for_room_goes_on_when_a_connection_closes() {
        let d = Arc::new(Descriptors::with_cap(Some(1)));
        let held = d.admit();
        let waiting = tokio::spawn({
            let d = d.clone();
            async move { d.room(|| d.cap(None)).await }
        });
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished(), "room found over the cap");
        let closed_at = tokio::time::Instant::now();
        drop(held);
        waiting.await.expect("task");
        assert!(closed_at.elapsed() < RECHECK, "woken by the periodic look");
        assert_eq!(d.clients(), 0, "waiting takes no place");
    }

    #[test]
    fn running_out_of_descriptors_or_ports_is_local() {
        for errno in [libc::EMFILE, libc::ENFILE, libc::ENOBUFS] {
            assert!(is_local_exhaustion(&io::Error::from_raw_os_error(errno)));
        }
        assert!(is_local_exhaustion(&io::Error::from_raw_os_error(
            libc::EADDRNOTAVAIL
        )));
        for errno in [libc::ECONNREFUSED, libc::ECONNRESET, libc::EHOSTUNREACH] {
            assert!(!is_local_exhaustion(&io::Error::from_raw_os_error(errno)));
        }
        assert!(!is_local_exhaustion(&io::Error::new(
            io::ErrorKind::TimedOut,
            "x"
        )));
    }
}
