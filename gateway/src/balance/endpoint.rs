//! One replica's live state, keyed by its stable id (`http://host:port`) and kept across config
//! reloads: in-flight count and limit, latency EWMA, active-health verdict, passive ejection,
//! operator drain, and its own pool of idle HTTP/1.1 connections.
//!
//! Why a pool per replica rather than hyper-util's shared client: the balancer already chose
//! the replica, so the pool needs no lookup by host and no shared lock across replicas, and an
//! idle connection is never reused once older than `pool_idle_timeout` (kept below the
//! replica's keep-alive, 5 s on vLLM), so we never write into a socket the replica is closing.
//!
//! Everything the balancers read on the hot path is an atomic; locks are taken only on
//! failures, ejections and connection check-in/out.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use http::uri::Authority;
use http::HeaderValue;
use tokio::time::Instant;

use super::queue::PoolQueue;
use crate::clock::now_ns;
use crate::config::{HealthConfig, ReplicaConfig};

pub use crate::upstream::{Conn, ConnectError};

/// Idle connections kept per replica; more are closed when they come back.
const MAX_IDLE_PER_REPLICA: usize = 1024;

/// Floor of the latency estimate in the p2c cost, so that in-flight counts still separate
/// replicas whose measured latency is near zero (or not measured yet).
const EWMA_FLOOR_NS: f64 = 100_000.0;

struct IdleConn {
    conn: Conn,
    since: Instant,
}

/// Passive health: recent failures and the ejection they caused.
#[derive(Default)]
struct Ejection {
    fails: VecDeque<u64>,
    /// Consecutive ejections, for the doubling; reset after a quiet `fail_timeout`.
    streak: u32,
    last_end_ns: u64,
}

pub struct Endpoint {
    pub key: String,
    /// `host:port`: the replica's name in the admin API, logs and `x-gateway-replica`.
    pub authority: Authority,
    /// `Host` for requests to this replica, and the `x-gateway-replica` value.
    pub host_header: HeaderValue,
    inflight: AtomicUsize,
    max_inflight: AtomicU32,
    idle: Mutex<VecDeque<IdleConn>>,
    /// Latency EWMA in ns (f64 bits) and when it was last updated (`now_ns`).
    ewma_bits: AtomicU64,
    ewma_at: AtomicU64,
    healthy: AtomicBool,
    drained: AtomicBool,
    /// `now_ns` until which the replica is ejected; 0 = not ejected.
    ejected_until: AtomicU64,
    ejection: Mutex<Ejection>,
    ejections_total: AtomicU64,
    last_error: Mutex<Option<String>>,
    /// A prober task runs for this replica.
    pub(crate) probing: AtomicBool,
    /// Left the configuration: its prober stops.
    pub(crate) retired: AtomicBool,
    /// Model names (and aliases) this replica is expected to serve, for `check_model`.
    expected_models: Mutex<Vec<String>>,
    /// Queues of the pools this replica belongs to: woken when a slot frees.
    queues: Mutex<Vec<Weak<PoolQueue>>>,
}

impl Endpoint {
    pub fn new(r: &ReplicaConfig) -> Self {
        Self {
            key: r.key.clone(),
            authority: r.authority.clone(),
            host_header: HeaderValue::from_str(r.authority.as_str())
                .unwrap_or_else(|_| HeaderValue::from_static("replica")),
            inflight: AtomicUsize::new(0),
            max_inflight: AtomicU32::new(r.max_inflight),
            idle: Mutex::new(VecDeque::new()),
            ewma_bits: AtomicU64::new(0f64.to_bits()),
            ewma_at: AtomicU64::new(0),
            healthy: AtomicBool::new(true),
            drained: AtomicBool::new(false),
            ejected_until: AtomicU64::new(0),
            ejection: Mutex::new(Ejection::default()),
            ejections_total: AtomicU64::new(0),
            last_error: Mutex::new(None),
            probing: AtomicBool::new(false),
            retired: AtomicBool::new(false),
            expected_models: Mutex::new(Vec::new()),
            queues: Mutex::new(Vec::new()),
        }
    }

    // ---- capacity -------------------------------------------------------------------------

    /// Requests sent to this replica whose response body has not ended yet.
    pub fn inflight(&self) -> usize {
        self.inflight.load(Ordering::Relaxed)
    }

    /// The concurrency limit; 0 = unlimited.
    pub fn max_inflight(&self) -> u32 {
        self.max_inflight.load(Ordering::Relaxed)
    }

    pub fn set_max_inflight(&self, max: u32) {
        self.max_inflight.store(max, Ordering::Relaxed);
    }

    pub fn has_capacity(&self) -> bool {
        let max = self.max_inflight();
        max == 0 || self.inflight() < max as usize
    }

    /// Takes an in-flight slot, unless the replica is at `max_inflight`.
    pub fn try_acquire(self: &Arc<Self>) -> Option<InflightGuard> {
        let max = self.max_inflight() as usize;
        if max == 0 {
            self.inflight.fetch_add(1, Ordering::Relaxed);
        } else {
            self.inflight
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                    (n < max).then_some(n + 1)
                })
                .ok()?;
        }
        Some(InflightGuard(self.clone()))
    }

    pub(crate) fn subscribe_queue(&self, q: &Arc<PoolQueue>) {
        let mut qs = self.queues.lock().unwrap_or_else(|p| p.into_inner());
        qs.retain(|w| w.strong_count() > 0);
        if !qs.iter().any(|w| std::ptr::eq(w.as_ptr(), Arc::as_ptr(q))) {
            qs.push(Arc::downgrade(q));
        }
    }

    fn slot_freed(&self) {
        // Only a limited replica can be full, so only then can anyone be waiting for it.
        if self.max_inflight() == 0 {
            return;
        }
        let qs = self.queues.lock().unwrap_or_else(|p| p.into_inner());
        for q in qs.iter().filter_map(Weak::upgrade) {
            q.wake_head();
        }
    }

    // ---- latency --------------------------------------------------------------------------

    /// Feeds one latency sample (time to first token for streams, response time otherwise)
    /// into a time-weighted, peak-sensitive EWMA: a sample after a long quiet counts fully, and
    /// a sample above the estimate replaces it at once so a slowdown is seen immediately.
    pub fn observe_latency(&self, sample: Duration, decay: Duration) {
        let now = now_ns();
        let rtt = nanos(sample);
        let at = self.ewma_at.load(Ordering::Relaxed);
        // Start from the estimate as the balancers see it now (faded while idle, as `ewma_ns`
        // fades it: by the same weight, computed once), so a replica that recovered is judged
        // by its new samples, not by a stale peak.
        let w = fade(now.saturating_sub(at), decay);
        let prev = f64::from_bits(self.ewma_bits.load(Ordering::Relaxed)) * w;
        let next = if at == 0 || rtt > prev {
            rtt
        } else {
            prev * w + rtt * (1.0 - w)
        };
        self.ewma_bits.store(next.to_bits(), Ordering::Relaxed);
        self.ewma_at.store(now, Ordering::Relaxed);
    }

    /// The latency estimate as of `now`: it fades toward zero while no samples arrive, so a
    /// replica that was slow is tried again after a while and can earn its traffic back.
    pub fn ewma_ns(&self, now: u64, decay: Duration) -> f64 {
        let est = f64::from_bits(self.ewma_bits.load(Ordering::Relaxed));
        let at = self.ewma_at.load(Ordering::Relaxed);
        if at == 0 {
            return 0.0;
        }
        est * fade(now.saturating_sub(at), decay)
    }

    /// p2c cost: (in-flight + 1) × latency estimate ÷ weight.
    pub fn cost(&self, now: u64, decay: Duration, weight: u32) -> f64 {
        let est = self.ewma_ns(now, decay).max(EWMA_FLOOR_NS);
        (self.inflight() as f64 + 1.0) * est / f64::from(weight.max(1))
    }

    // ---- health ---------------------------------------------------------------------------

    /// Whether the balancers may send new requests here (health permitting).
    pub fn is_routable(&self, now: u64) -> bool {
        self.is_healthy() && !self.is_drained() && !self.is_ejected(now)
    }

    pub fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }

    pub fn set_healthy(&self, healthy: bool) {
        self.healthy.store(healthy, Ordering::Relaxed);
    }

    pub fn is_drained(&self) -> bool {
        self.drained.load(Ordering::Relaxed)
    }

    pub fn set_drained(&self, drained: bool) {
        self.drained.store(drained, Ordering::Relaxed);
    }

    pub fn is_ejected(&self, now: u64) -> bool {
        let until = self.ejected_until.load(Ordering::Relaxed);
        until != 0 && now < until
    }

    /// Seconds of ejection left, if ejected.
    pub fn ejected_for(&self, now: u64) -> Option<Duration> {
        let until = self.ejected_until.load(Ordering::Relaxed);
        (until > now).then(|| Duration::from_nanos(until - now))
    }

    pub fn ejections_total(&self) -> u64 {
        self.ejections_total.load(Ordering::Relaxed)
    }

    /// Ends a passive ejection early (active probes found the replica healthy again).
    pub fn clear_ejection(&self) {
        if self.ejected_until.swap(0, Ordering::Relaxed) != 0 {
            let mut ej = self.ejection.lock().unwrap_or_else(|p| p.into_inner());
            ej.fails.clear();
            ej.last_end_ns = now_ns();
            tracing::info!(replica = %self.authority, "replica back in rotation");
        }
    }

    pub fn last_error(&self) -> Option<String> {
        self.last_error.lock().ok().and_then(|e| e.clone())
    }

    pub fn set_last_error(&self, e: impl Into<String>) {
        if let Ok(mut l) = self.last_error.lock() {
            *l = Some(e.into());
        }
    }

    /// Records a connection failure or 5xx. Ejects the replica when `max_fails` failures fall
    /// within `fail_timeout` and `may_eject` agrees (the model's ejection budget). Returns true
    /// when this call ejected it.
    pub fn record_failure(
        &self,
        cfg: &HealthConfig,
        why: &str,
        may_eject: impl FnOnce() -> bool,
    ) -> bool {
        self.set_last_error(why);
        if cfg.max_fails == 0 {
            return false;
        }
        let now = now_ns();
        if self.is_ejected(now) {
            return false;
        }
        let window = cfg.fail_timeout.as_nanos() as u64;
        let mut ej = self.ejection.lock().unwrap_or_else(|p| p.into_inner());
        ej.fails.push_back(now);
        while ej
            .fails
            .front()
            .is_some_and(|&t| now.saturating_sub(t) > window)
        {
            ej.fails.pop_front();
        }
        if ej.fails.len() < cfg.max_fails as usize || !may_eject() {
            return false;
        }
        // A replica ejected again soon after coming back stays out twice as long each time.
        if ej.last_end_ns != 0 && now.saturating_sub(ej.last_end_ns) > window {
            ej.streak = 0;
        }
        ej.streak = ej.streak.saturating_add(1);
        let factor = 1u32 << (ej.streak - 1).min(16);
        let time = cfg
            .fail_timeout
            .saturating_mul(factor)
            .min(cfg.max_ejection_time.max(cfg.fail_timeout));
        let until = now + time.as_nanos() as u64;
        ej.fails.clear();
        ej.last_end_ns = until;
        self.ejected_until.store(until, Ordering::Relaxed);
        self.ejections_total.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(replica = %self.authority, reason = why, ejected_for = ?time, "replica ejected");
        true
    }

    pub(crate) fn set_expected_models(&self, names: Vec<String>) {
        if let Ok(mut m) = self.expected_models.lock() {
            *m = names;
        }
    }

    pub fn expected_models(&self) -> Vec<String> {
        self.expected_models
            .lock()
            .map(|m| m.clone())
            .unwrap_or_default()
    }

    // ---- connections ----------------------------------------------------------------------

    /// Idle connections currently pooled.
    pub fn idle_connections(&self) -> usize {
        self.idle.lock().map(|q| q.len()).unwrap_or(0)
    }

    /// A connection: the most recently used idle one that is young enough and still open,
    /// or a new one. Idle connections older than `pool_idle_timeout` (kept below the replica's
    /// keep-alive) are closed rather than risk a write into a socket the replica is closing.
    pub async fn checkout(
        &self,
        connect_timeout: Duration,
        pool_idle_timeout: Duration,
    ) -> Result<Conn, ConnectError> {
        if let Ok(mut q) = self.idle.lock() {
            while let Some(idle) = q.pop_back() {
                if crate::clock::now() - idle.since < pool_idle_timeout
                    && idle.conn.is_idle_usable()
                {
                    return Ok(idle.conn);
                }
            }
        }
        // A new connection is the rare path once the pool is warm: boxed, so the request
        // future does not carry the connect future's room.
        Box::pin(self.connect(connect_timeout)).await
    }

    /// A new connection, not pooled (also used by the health prober).
    pub async fn connect(&self, connect_timeout: Duration) -> Result<Conn, ConnectError> {
        Conn::connect(self.authority.as_str(), connect_timeout).await
    }

    /// Closes this replica's idle pooled connections: every one, or (`older_than`) those idle
    /// that long. Returns how many were closed.
    pub fn close_idle(&self, older_than: Option<Duration>) -> usize {
        let now = crate::clock::now();
        let Ok(mut q) = self.idle.lock() else {
            return 0;
        };
        match older_than {
            None => {
                let all = q.len();
                q.clear();
                all
            }
            Some(age) => close_aged(&mut q, now, age),
        }
    }

    /// Gives back a connection whose response body ended cleanly at a message boundary.
    /// Connections idle past `pool_idle_timeout` at the cold end of the pool are closed here.
    pub fn checkin(&self, conn: Conn, pool_idle_timeout: Duration) {
        let now = crate::clock::now();
        if let Ok(mut q) = self.idle.lock() {
            close_aged(&mut q, now, pool_idle_timeout);
            if q.len() < MAX_IDLE_PER_REPLICA {
                q.push_back(IdleConn { conn, since: now });
            }
        }
    }
}

/// Closes the pooled connections idle for `age` or longer; returns how many. The pool is in
/// the order connections came back, so they are the ones at its cold end.
fn close_aged(q: &mut VecDeque<IdleConn>, now: Instant, age: Duration) -> usize {
    let before = q.len();
    while q
        .front()
        .is_some_and(|c| now.saturating_duration_since(c.since) >= age)
    {
        q.pop_front();
    }
    before - q.len()
}

/// The weight left to an estimate `elapsed_ns` old: `e^(-elapsed / decay)`.
fn fade(elapsed_ns: u64, decay: Duration) -> f64 {
    (-(elapsed_ns as f64) / nanos(decay).max(1.0)).exp()
}

/// A duration in nanoseconds as a float, through `u64`: `as_nanos() as f64` converts a `u128`
/// in software (about 45 instructions, twice per answer).
fn nanos(d: Duration) -> f64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX) as f64
}

/// Counts a request against its replica from send until its response body ends or is dropped.
pub struct InflightGuard(Arc<Endpoint>);

impl std::fmt::Debug for InflightGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "InflightGuard({})", self.0.authority)
    }
}

impl InflightGuard {
    pub fn endpoint(&self) -> &Arc<Endpoint> {
        &self.0
    }
}

impl Drop for InflightGuard {
    fn drop(&mut self) {
        self.0.inflight.fetch_sub(1, Ordering::AcqRel);
        self.0.slot_freed();
    }
}

/// Every replica the gateway knows, by stable id. Snapshots take their `Arc<Endpoint>`s from
/// here, so a reload that keeps a replica keeps its counters, health and warm connections.
#[derive(Default)]
pub struct EndpointRegistry {
    map: Mutex<HashMap<String, Arc<Endpoint>>>,
}

impl EndpointRegistry {
    /// The live endpoint for a replica, created on first sight; its limit follows the config.
    pub fn get_or_insert(&self, r: &ReplicaConfig) -> Arc<Endpoint> {
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        let ep = map
            .entry(r.key.clone())
            .or_insert_with(|| Arc::new(Endpoint::new(r)))
            .clone();
        ep.set_max_inflight(r.max_inflight);
        ep
    }

    /// Forgets replicas no longer in the configuration (in-flight requests keep their `Arc`).
    pub fn retain(&self, keep: &dyn Fn(&str) -> bool) {
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        map.retain(|k, ep| {
            let kept = keep(k);
            if !kept {
                ep.retired.store(true, Ordering::Relaxed);
            }
            kept
        });
    }

    /// All endpoints, in a stable order (by id).
    pub fn all(&self) -> Vec<Arc<Endpoint>> {
        let map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        let mut v: Vec<_> = map.values().cloned().collect();
        v.sort_by(|a, b| a.key.cmp(&b.key));
        v
    }

    /// Closes idle pooled connections of every replica: all of them (`None`: the gateway is
    /// out of descriptors, and they hold some), or those idle past `older_than` (a sweep, so
    /// the pool of a replica that gets no more traffic does not keep its descriptors).
    /// Returns how many were closed.
    pub fn close_idle(&self, older_than: Option<Duration>) -> usize {
        self.all().iter().map(|ep| ep.close_idle(older_than)).sum()
    }

    /// Finds an endpoint by `host:port` (the admin API's replica id) or full key.
    pub fn find(&self, id: &str) -> Option<Arc<Endpoint>> {
        let map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        map.get(id)
            .or_else(|| map.get(&format!("http://{id}")))
            .cloned()
    }

    pub fn len(&self) -> usize {
        self.map.lock().map(|m| m.len()).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn replica(i: usize, max_inflight: u32) -> ReplicaConfig {
        let authority: Authority = format!("127.0.0.1:{}", 1000 + i).parse().unwrap();
        ReplicaConfig {
            key: format!("http://{authority}"),
            authority,
            weight: 1,
            max_inflight,
        }
    }

    pub(crate) fn endpoints(n: usize) -> Vec<Arc<Endpoint>> {
        (0..n)
            .map(|i| Arc::new(Endpoint::new(&replica(i, 0))))
            .collect()
    }

    pub(crate) fn health() -> HealthConfig {
        crate::config::parse(
            "[auth]\nenabled = false\n[[models]]\nname = \"m\"\n[[models.versions]]\nname = \"v\"\n\
             replicas = [{ url = \"http://127.0.0.1:1\" }]\n",
        )
        .unwrap()
        .health
    }

    #[test]
    fn registry_keeps_identity_across_lookups_and_retires_removed() {
        let reg = EndpointRegistry::default();
        let r = replica(1, 0);
        let a = reg.get_or_insert(&r);
        let g = a.try_acquire().unwrap();
        let b = reg.get_or_insert(&r);
        assert!(Arc::ptr_eq(&a, &b));
        assert_eq!(b.inflight(), 1);
        drop(g);
        assert_eq!(b.inflight(), 0);
        assert!(reg.find("127.0.0.1:1001").is_some());
        reg.retain(&|_| false);
        assert!(reg.is_empty());
        assert!(a.retired.load(Ordering::Relaxed));
    }

    #[test]
    fn max_inflight_is_a_hard_limit() {
        let ep = Arc::new(Endpoint::new(&replica(0, 2)));
        let a = ep.try_acquire().unwrap();
        let _b = ep.try_acquire().unwrap();
        assert!(ep.try_acquire().is_none());
        assert!(!ep.has_capacity());
        drop(a);
        assert!(ep.try_acquire().is_some());
    }

    #[tokio::test(start_paused = true)]
    async fn ewma_follows_peaks_at_once_and_fades_when_idle() {
        let ep = Endpoint::new(&replica(0, 0));
        let decay = Duration::from_secs(10);
        ep.observe_latency(Duration::from_millis(10), decay);
        assert_eq!(ep.ewma_ns(now_ns(), decay).round(), 10_000_000.0);
        ep.observe_latency(Duration::from_millis(50), decay);
        assert!(
            (ep.ewma_ns(now_ns(), decay) - 50e6).abs() < 1e3,
            "peak taken at once"
        );
        tokio::time::advance(Duration::from_secs(10)).await;
        let faded = ep.ewma_ns(now_ns(), decay);
        assert!((faded - 50e6 / std::f64::consts::E).abs() < 1e5, "{faded}");
        // A fast sample after a long quiet counts (nearly) fully.
        tokio::time::advance(Duration::from_secs(60)).await;
        ep.observe_latency(Duration::from_millis(10), decay);
        assert!(ep.ewma_ns(now_ns(), decay) < 10.1e6);
    }

    #[tokio::test(start_paused = true)]
    async fn failures_within_the_window_eject_with_doubling_up_to_the_cap() {
        let ep = Endpoint::new(&replica(0, 0));
        let mut cfg = health();
        cfg.max_fails = 3;
        cfg.fail_timeout = Duration::from_secs(10);
        cfg.max_ejection_time = Duration::from_secs(25);
        assert!(!ep.record_failure(&cfg, "x", || true));
        assert!(!ep.record_failure(&cfg, "x", || true));
        assert!(ep.record_failure(&cfg, "x", || true));
        assert!(!ep.is_routable(now_ns()));
        assert_eq!(ep.ejected_for(now_ns()), Some(Duration::from_secs(10)));
        tokio::time::advance(Duration::from_secs(11)).await;
        assert!(ep.is_routable(now_ns()));
        for _ in 0..3 {
            ep.record_failure(&cfg, "x", || true);
        }
        assert_eq!(ep.ejected_for(now_ns()), Some(Duration::from_secs(20)));
        tokio::time::advance(Duration::from_secs(21)).await;
        for _ in 0..3 {
            ep.record_failure(&cfg, "x", || true);
        }
        assert_eq!(
            ep.ejected_for(now_ns()),
            Some(Duration::from_secs(25)),
            "capped"
        );
        assert_eq!(ep.ejections_total(), 3);
        ep.clear_ejection();
        assert!(ep.is_routable(now_ns()));
    }

    #[tokio::test(start_paused = true)]
    async fn old_failures_fall_out_of_the_window_and_the_budget_can_refuse() {
        let ep = Endpoint::new(&replica(0, 0));
        let mut cfg = health();
        cfg.fail_timeout = Duration::from_secs(10);
        ep.record_failure(&cfg, "x", || true);
        ep.record_failure(&cfg, "x", || true);
        tokio::time::advance(Duration::from_secs(11)).await;
        assert!(!ep.record_failure(&cfg, "x", || true));
        assert!(!ep.record_failure(&cfg, "x", || true));
        assert!(!ep.record_failure(&cfg, "x", || false), "budget refused");
        assert!(ep.is_routable(now_ns()));
        assert_eq!(ep.last_error().as_deref(), Some("x"));
    }

    #[tokio::test]
    async fn idle_connections_close_by_age_or_all_at_once_across_the_registry() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        // The replica keeps every connection open.
        let _replica = tokio::spawn(async move {
            let mut open = Vec::new();
            while let Ok((s, _)) = listener.accept().await {
                open.push(s);
            }
        });
        let reg = EndpointRegistry::default();
        let ep = reg.get_or_insert(&ReplicaConfig {
            key: format!("http://{addr}"),
            authority: addr.to_string().parse().unwrap(),
            weight: 1,
            max_inflight: 0,
        });
        let keep = Duration::from_secs(60);
        let pooled = async |n| {
            for _ in 0..n {
                let c = ep.connect(Duration::from_secs(5)).await.unwrap();
                ep.checkin(c, keep);
            }
        };
        pooled(2).await;
        // Ages a second apart: a stall of half of it between two lines could not blur them.
        tokio::time::sleep(Duration::from_secs(1)).await;
        pooled(1).await;
        assert_eq!(ep.idle_connections(), 3);
        assert_eq!(reg.close_idle(Some(Duration::from_secs(30))), 0);
        assert_eq!(
            reg.close_idle(Some(Duration::from_millis(500))),
            2,
            "the two older ones"
        );
        assert_eq!(ep.idle_connections(), 1);
        assert_eq!(reg.close_idle(None), 1);
        assert_eq!(ep.idle_connections(), 0);
    }

    #[tokio::test]
    async fn refused_connection_is_a_connect_error() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        let ep = Endpoint::new(&ReplicaConfig {
            key: format!("http://{addr}"),
            authority: addr.to_string().parse().unwrap(),
            weight: 1,
            max_inflight: 0,
        });
        let err = ep
            .checkout(Duration::from_secs(1), Duration::from_secs(4))
            .await
            .unwrap_err();
        assert!(matches!(err, ConnectError::Io(_)), "{err}");
    }
}
