//! Stage 3 (and the token budget after the body is read): request rate limits per client IP,
//! per API key and per model, and tokens per minute per key.
//!
//! Request limits are GCRA: `governor` locally, an atomic Lua script in Redis when
//! `limits.redis_url` is set so that every instance shares one budget. Tokens per minute are a
//! token bucket of our own, because admission must *reserve* a request's worst case and later
//! *refund* what it did not use — GCRA cannot give back. If Redis fails, each limit falls back
//! to `limits.redis_fallback`: local limiters holding 1/`instances` of the rate (default), no
//! limit, or refusal; the gateway probes Redis in the background and returns to it.
//!
//! Limiter state lives in a registry outside the config snapshot (keyed by scope, name and
//! parameters), so a reload that keeps a limit keeps its state.

pub mod client_ip;
pub mod redis;

use std::collections::HashMap;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::middleware::StateInformationMiddleware;
use governor::{Quota, RateLimiter};
use tokio::time::Instant;

use self::redis::RedisClient;
use crate::config::{LimitsConfig, Rate, RedisFallback};
use crate::metrics::Metrics;

type Direct = RateLimiter<
    governor::state::NotKeyed,
    governor::state::InMemoryState,
    DefaultClock,
    StateInformationMiddleware,
>;
type Keyed = RateLimiter<
    IpAddr,
    governor::state::keyed::DefaultKeyedStateStore<IpAddr>,
    DefaultClock,
    StateInformationMiddleware,
>;

/// Which limit refused a request (the `scope` label and the error's wording).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    Ip,
    Key,
    Model,
    Tokens,
}

impl Scope {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ip => "ip",
            Self::Key => "key",
            Self::Model => "model",
            Self::Tokens => "tokens",
        }
    }
}

/// The answer of one request-limit check.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Decision {
    /// Admitted; for the `x-ratelimit-*` headers: bucket size, what is left, time to full.
    Allowed {
        limit: u32,
        remaining: u32,
        reset: Duration,
    },
    Limited {
        limit: u32,
        retry_after: Duration,
    },
    /// Redis is down and the policy is to refuse.
    Unavailable,
}

fn quota(rate: Rate, share: u32) -> Quota {
    let per_second = (rate.per_second / f64::from(share.max(1))).max(1e-6);
    let burst = (rate.burst / share.max(1)).max(1);
    Quota::with_period(Duration::from_secs_f64(1.0 / per_second))
        .unwrap_or_else(|| Quota::per_second(NonZeroU32::MIN))
        .allow_burst(NonZeroU32::new(burst).unwrap_or(NonZeroU32::MIN))
}

/// The time one request's room takes to come back, for `x-ratelimit-reset-*` (made once per
/// limiter: converting the rate per request cost 50 instructions a limiter).
fn period(rate: Rate) -> Duration {
    Duration::from_secs_f64(1.0 / rate.per_second.max(1e-6))
}

fn direct(rate: Rate, share: u32) -> Direct {
    RateLimiter::direct(quota(rate, share)).with_middleware::<StateInformationMiddleware>()
}

fn governor_decision(
    r: Result<
        governor::middleware::StateSnapshot,
        governor::NotUntil<<DefaultClock as Clock>::Instant>,
    >,
    rate: Rate,
    per: Duration,
    clock: &DefaultClock,
) -> Decision {
    match r {
        Ok(s) => {
            let remaining = s.remaining_burst_capacity();
            Decision::Allowed {
                limit: rate.burst,
                remaining,
                reset: per.saturating_mul(rate.burst.saturating_sub(remaining)),
            }
        }
        Err(not_until) => Decision::Limited {
            limit: rate.burst,
            retry_after: not_until.wait_time_from(clock.now()),
        },
    }
}

/// Redis plus its health: after a failure, calls skip Redis for a second (the fallback
/// applies) while a background probe waits for it to come back.
pub struct Shared {
    pub client: RedisClient,
    degraded: AtomicBool,
    retry_after_ns: AtomicU64,
    metrics: Arc<Metrics>,
}

impl Shared {
    pub fn new(client: RedisClient, metrics: Arc<Metrics>) -> Self {
        Self {
            client,
            degraded: AtomicBool::new(false),
            retry_after_ns: AtomicU64::new(0),
            metrics,
        }
    }

    pub fn is_degraded(&self) -> bool {
        self.degraded.load(Ordering::Relaxed)
    }

    fn usable(&self) -> bool {
        !self.is_degraded() || crate::clock::now_ns() >= self.retry_after_ns.load(Ordering::Relaxed)
    }

    fn failed(&self, why: &redis::RedisError) {
        self.metrics.ratelimit_redis_errors.inc();
        self.retry_after_ns
            .store(crate::clock::now_ns() + 1_000_000_000, Ordering::Relaxed);
        if !self.degraded.swap(true, Ordering::Relaxed) {
            self.metrics.ratelimit_degraded.set(1);
            tracing::error!(error = %why, fallback = ?self.client.config().fallback,
                "Redis unreachable: rate limits fall back");
        }
    }

    fn recovered(&self) {
        if self.degraded.swap(false, Ordering::Relaxed) {
            self.metrics.ratelimit_degraded.set(0);
            tracing::info!("Redis reachable again: shared rate limits restored");
        }
    }

    /// Pings Redis while degraded, until `stop`.
    pub async fn watch(self: Arc<Self>, stop: tokio_util::sync::CancellationToken) {
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(Duration::from_millis(500)) => {}
            }
            if self.is_degraded() && self.client.ping().await.is_ok() {
                self.recovered();
            }
        }
    }
}

/// A request-rate limit (one key's, one model's).
pub struct RequestLimiter {
    rate: Rate,
    period: Duration,
    local: Direct,
    /// This instance's share while Redis is down.
    fallback: Direct,
    redis_key: String,
}

impl RequestLimiter {
    pub fn new(rate: Rate, redis_key: String, instances: u32) -> Self {
        Self {
            rate,
            period: period(rate),
            local: direct(rate, 1),
            fallback: direct(rate, instances),
            redis_key,
        }
    }

    pub fn rate(&self) -> Rate {
        self.rate
    }

    /// The check when limits are not shared (no Redis): synchronous, no allocation.
    pub fn check_local(&self) -> Decision {
        governor_decision(
            self.local.check(),
            self.rate,
            self.period,
            self.local.clock(),
        )
    }

    pub async fn check(&self, shared: Option<&Shared>) -> Decision {
        let Some(shared) = shared else {
            return self.check_local();
        };
        shared_check(shared, &self.redis_key, self.rate, || {
            governor_decision(
                self.fallback.check(),
                self.rate,
                self.period,
                self.fallback.clock(),
            )
        })
        .await
    }
}

/// One request-limit check in Redis, or — Redis failing — the fallback policy (`local` runs
/// `fallback`, this instance's share).
async fn shared_check(
    shared: &Shared,
    key: &str,
    rate: Rate,
    fallback: impl FnOnce() -> Decision,
) -> Decision {
    if shared.usable() {
        let interval_us = (1e6 / rate.per_second.max(1e-6)).round().max(1.0) as u64;
        // Boxed: the Redis round trip's state is large and every request's future would
        // otherwise carry room for it, Redis or not.
        match Box::pin(shared.client.gcra(key, interval_us, rate.burst)).await {
            Ok((allowed, n, us)) => {
                shared.recovered();
                let us = Duration::from_micros(us.max(0) as u64);
                return if allowed {
                    Decision::Allowed {
                        limit: rate.burst,
                        remaining: n.clamp(0, i64::from(u32::MAX)) as u32,
                        reset: us,
                    }
                } else {
                    Decision::Limited {
                        limit: rate.burst,
                        retry_after: us,
                    }
                };
            }
            Err(e) => shared.failed(&e),
        }
    }
    match shared.client.config().fallback {
        RedisFallback::Local => fallback(),
        RedisFallback::Open => Decision::Allowed {
            limit: rate.burst,
            remaining: rate.burst,
            reset: Duration::ZERO,
        },
        RedisFallback::Closed => Decision::Unavailable,
    }
}

/// Per-client-IP request limit. IPv6 clients are limited per /64: one host usually owns a
/// whole /64, and limiting single addresses would let it rotate through them.
pub struct IpLimiter {
    rate: Rate,
    period: Duration,
    local: Keyed,
    fallback: Keyed,
    max_tracked: usize,
    last_sweep_ns: AtomicU64,
}

impl IpLimiter {
    pub fn new(rate: Rate, instances: u32, max_tracked: usize) -> Self {
        let keyed = |share| {
            RateLimiter::dashmap(quota(rate, share)).with_middleware::<StateInformationMiddleware>()
        };
        Self {
            rate,
            period: period(rate),
            local: keyed(1),
            fallback: keyed(instances),
            max_tracked,
            last_sweep_ns: AtomicU64::new(0),
        }
    }

    pub fn key(ip: IpAddr) -> IpAddr {
        match ip {
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => IpAddr::V4(v4),
                None => IpAddr::V6((u128::from(v6) & !((1u128 << 64) - 1)).into()),
            },
            v4 => v4,
        }
    }

    pub async fn check(&self, ip: IpAddr, shared: Option<&Shared>) -> Decision {
        let key = Self::key(ip);
        // A flood of distinct addresses must not grow memory without bound: sweep early.
        if self.local.len() > self.max_tracked {
            self.sweep(true);
        }
        let Some(shared) = shared else {
            return governor_decision(
                self.local.check_key(&key),
                self.rate,
                self.period,
                self.local.clock(),
            );
        };
        shared_check(shared, &format!("gw:rl:ip:{key}"), self.rate, || {
            governor_decision(
                self.fallback.check_key(&key),
                self.rate,
                self.period,
                self.fallback.clock(),
            )
        })
        .await
    }

    /// Drops the state of addresses that are back to a full bucket (indistinguishable from
    /// never seen). Runs on a timer, and early (at most once a second) when over the cap.
    pub fn sweep(&self, early: bool) {
        let now = crate::clock::now_ns();
        let last = self.last_sweep_ns.load(Ordering::Relaxed);
        if early && now.saturating_sub(last) < 1_000_000_000 {
            return;
        }
        self.last_sweep_ns.store(now, Ordering::Relaxed);
        self.local.retain_recent();
        self.local.shrink_to_fit();
        self.fallback.retain_recent();
        self.fallback.shrink_to_fit();
    }

    /// Addresses with live state.
    pub fn tracked(&self) -> usize {
        self.local.len() + self.fallback.len()
    }
}

/// A token bucket: `capacity` tokens, refilled at capacity per minute.
struct Bucket {
    tokens: f64,
    at: Instant,
}

impl Bucket {
    fn refill(&mut self, capacity: f64) {
        let now = crate::clock::now();
        let per_s = capacity / 60.0;
        self.tokens =
            (self.tokens + now.duration_since(self.at).as_secs_f64() * per_s).min(capacity);
        self.at = now;
    }
}

/// Tokens per minute of one key: reserve the worst case, settle to the real usage.
pub struct TokenBudget {
    tpm: u64,
    local: Mutex<Bucket>,
    fallback: Mutex<Bucket>,
    instances: u32,
    redis_key: String,
}

/// Where a reservation was made, so it is settled in the same place.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ledger {
    Local,
    Fallback,
    Redis,
    None,
}

/// Tokens held for one request until it settles (on drop, the reservation is kept as spent).
pub struct Reservation {
    budget: Arc<TokenBudget>,
    shared: Option<Arc<Shared>>,
    reserved: u64,
    ledger: Ledger,
}

impl TokenBudget {
    pub fn new(tpm: u64, redis_key: String, instances: u32) -> Self {
        let full = |share: u32| {
            Mutex::new(Bucket {
                tokens: tpm as f64 / f64::from(share.max(1)),
                at: Instant::now(),
            })
        };
        Self {
            tpm,
            local: full(1),
            fallback: full(instances),
            instances,
            redis_key,
        }
    }

    pub fn tpm(&self) -> u64 {
        self.tpm
    }

    /// This instance's bucket: the whole budget, or its share while Redis is down.
    fn bucket(&self, fallback: bool) -> (&Mutex<Bucket>, f64) {
        if fallback {
            let share = self.tpm as f64 / f64::from(self.instances.max(1));
            (&self.fallback, share)
        } else {
            (&self.local, self.tpm as f64)
        }
    }

    fn take_local(&self, fallback: bool, cost: u64) -> Result<f64, Duration> {
        let (bucket, cap) = self.bucket(fallback);
        let mut b = bucket.lock().unwrap_or_else(|p| p.into_inner());
        b.refill(cap);
        let need = (cost as f64).min(cap);
        if b.tokens >= need {
            b.tokens -= cost as f64;
            Ok(b.tokens)
        } else {
            Err(Duration::from_secs_f64((need - b.tokens) / (cap / 60.0)))
        }
    }

    fn give_back(&self, fallback: bool, tokens: u64) {
        let (bucket, cap) = self.bucket(fallback);
        let mut b = bucket.lock().unwrap_or_else(|p| p.into_inner());
        b.refill(cap);
        b.tokens = (b.tokens + tokens as f64).min(cap);
    }

    /// Reserves `cost` tokens. `Err` carries how long until they would be there, or `None`
    /// when Redis is down and the policy refuses.
    pub async fn reserve(
        self: &Arc<Self>,
        cost: u64,
        shared: Option<&Arc<Shared>>,
    ) -> Result<(Reservation, u64), Option<Duration>> {
        let reservation = |ledger, shared: Option<&Arc<Shared>>| Reservation {
            budget: self.clone(),
            shared: shared.cloned(),
            reserved: cost,
            ledger,
        };
        let Some(sh) = shared else {
            return match self.take_local(false, cost) {
                Ok(left) => Ok((reservation(Ledger::Local, None), left.max(0.0) as u64)),
                Err(wait) => Err(Some(wait)),
            };
        };
        if sh.usable() {
            let per_us = self.tpm as f64 / 60e6;
            // Boxed, as in `shared_check`.
            match Box::pin(
                sh.client
                    .bucket(&self.redis_key, self.tpm, per_us, cost as i64),
            )
            .await
            {
                Ok((true, left, _)) => {
                    sh.recovered();
                    return Ok((reservation(Ledger::Redis, shared), left.max(0) as u64));
                }
                Ok((false, _, us)) => {
                    sh.recovered();
                    return Err(Some(Duration::from_micros(us.max(0) as u64)));
                }
                Err(e) => sh.failed(&e),
            }
        }
        match sh.client.config().fallback {
            RedisFallback::Local => match self.take_local(true, cost) {
                Ok(left) => Ok((reservation(Ledger::Fallback, shared), left.max(0.0) as u64)),
                Err(wait) => Err(Some(wait)),
            },
            RedisFallback::Open => Ok((reservation(Ledger::None, shared), self.tpm)),
            RedisFallback::Closed => Err(None),
        }
    }
}

impl Reservation {
    pub fn reserved(&self) -> u64 {
        self.reserved
    }

    /// Settles to what the request really used: the difference goes back to the budget.
    /// `None` (usage unknown: a cut stream) keeps the whole reservation as spent.
    pub fn settle(self, used: Option<u64>) {
        let Some(used) = used else { return };
        let refund = self.reserved.saturating_sub(used);
        let extra = used.saturating_sub(self.reserved);
        if refund == 0 && extra == 0 {
            return;
        }
        match self.ledger {
            Ledger::Local | Ledger::Fallback => {
                let fallback = self.ledger == Ledger::Fallback;
                self.budget.give_back(fallback, refund);
                if extra > 0 {
                    let _ = self.budget.take_local(fallback, extra);
                }
            }
            Ledger::Redis => {
                let (budget, shared) = (self.budget.clone(), self.shared.clone());
                let delta = extra as i64 - refund as i64;
                tokio::spawn(async move {
                    if let Some(sh) = shared {
                        let per_us = budget.tpm as f64 / 60e6;
                        if let Err(e) = sh
                            .client
                            .bucket(&budget.redis_key, budget.tpm, per_us, delta)
                            .await
                        {
                            sh.failed(&e);
                        }
                    }
                });
            }
            Ledger::None => {}
        }
    }
}

/// Limiter state by scope, name and parameters, outside the snapshot.
#[derive(Default)]
pub struct LimitsRegistry {
    requests: Mutex<HashMap<String, Arc<RequestLimiter>>>,
    tokens: Mutex<HashMap<String, Arc<TokenBudget>>>,
    ip: Mutex<Option<(Rate, u32, Arc<IpLimiter>)>>,
}

impl LimitsRegistry {
    pub fn request_limiter(
        &self,
        scope: Scope,
        name: &str,
        rate: Rate,
        instances: u32,
    ) -> Arc<RequestLimiter> {
        let id = format!(
            "{}:{name}:{}:{}:{instances}",
            scope.as_str(),
            rate.per_second,
            rate.burst
        );
        let mut m = self.requests.lock().unwrap_or_else(|p| p.into_inner());
        m.entry(id)
            .or_insert_with(|| {
                Arc::new(RequestLimiter::new(
                    rate,
                    format!("gw:rl:{}:{name}", scope.as_str()),
                    instances,
                ))
            })
            .clone()
    }

    pub fn token_budget(&self, name: &str, tpm: u64, instances: u32) -> Arc<TokenBudget> {
        let id = format!("{name}:{tpm}:{instances}");
        let mut m = self.tokens.lock().unwrap_or_else(|p| p.into_inner());
        m.entry(id)
            .or_insert_with(|| {
                Arc::new(TokenBudget::new(
                    tpm,
                    format!("gw:tpm:key:{name}"),
                    instances,
                ))
            })
            .clone()
    }

    pub fn ip_limiter(&self, cfg: &LimitsConfig) -> Option<Arc<IpLimiter>> {
        let rate = cfg.per_ip?;
        let instances = cfg.redis.as_ref().map_or(1, |r| r.instances);
        let mut slot = self.ip.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((r, n, l)) = slot.as_ref() {
            if *r == rate && *n == instances {
                return Some(l.clone());
            }
        }
        let l = Arc::new(IpLimiter::new(rate, instances, cfg.per_ip_max_tracked));
        *slot = Some((rate, instances, l.clone()));
        Some(l)
    }

    /// After a reload: forgets limiters that no snapshot uses any more (a removed key, a
    /// changed rate). The registry holds one reference; the current snapshot holds another.
    pub fn prune(&self) {
        let mut r = self.requests.lock().unwrap_or_else(|p| p.into_inner());
        r.retain(|_, l| Arc::strong_count(l) > 1);
        drop(r);
        let mut t = self.tokens.lock().unwrap_or_else(|p| p.into_inner());
        t.retain(|_, b| Arc::strong_count(b) > 1);
    }

    /// Sweeps idle per-IP state; call on a timer.
    pub fn sweep(&self) {
        if let Some((_, _, l)) = self.ip.lock().unwrap_or_else(|p| p.into_inner()).as_ref() {
            l.sweep(false);
        }
    }
}

/// Formats a reset time the way OpenAI's `x-ratelimit-reset-*` headers do ("1s", "6m0s", "20ms").
pub fn openai_duration(d: Duration) -> String {
    OpenAiDuration(d).to_string()
}

/// A reset time in OpenAI's format, written without allocating.
pub struct OpenAiDuration(pub Duration);

impl OpenAiDuration {
    /// Writes the text to `out`; under a second (the usual case) without `fmt`.
    pub fn write_to(&self, out: &mut impl std::io::Write) -> std::io::Result<()> {
        match self.under_a_second() {
            Some(ms) => {
                let mut digits = [0u8; 20];
                out.write_all(crate::codec::decimal(ms, &mut digits))?;
                out.write_all(b"ms")
            }
            None => write!(out, "{self}"),
        }
    }

    /// The milliseconds of a duration under a second, which is written as `{ms}ms`. (A u64,
    /// not the u128 `as_millis` gives: its formatting is several times slower.)
    fn under_a_second(&self) -> Option<u64> {
        u64::try_from(self.0.as_millis())
            .ok()
            .filter(|&ms| ms < 1000)
    }
}

impl std::fmt::Display for OpenAiDuration {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let d = self.0;
        if let Some(ms) = self.under_a_second() {
            return write!(f, "{ms}ms");
        }
        if d < Duration::from_secs(60) {
            // Seconds to the nearest millisecond, without trailing zeros: "1.05s", "2s".
            let ms = (d.as_micros() as u64 + 500) / 1000;
            let (whole, mut frac, mut width) = (ms / 1000, ms % 1000, 3);
            if frac == 0 {
                return write!(f, "{whole}s");
            }
            while frac % 10 == 0 {
                frac /= 10;
                width -= 1;
            }
            return write!(f, "{whole}.{frac:0width$}s");
        }
        let total = d.as_secs();
        let (h, m, sec) = (total / 3600, (total % 3600) / 60, total % 60);
        if h > 0 {
            write!(f, "{h}h{m}m{sec}s")
        } else {
            write!(f, "{m}m{sec}s")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rate(per_second: f64, burst: u32) -> Rate {
        Rate { per_second, burst }
    }

    #[tokio::test]
    async fn request_limiter_allows_the_burst_then_limits() {
        let l = RequestLimiter::new(rate(1.0, 3), "k".into(), 1);
        for left in [2, 1, 0] {
            match l.check(None).await {
                Decision::Allowed {
                    limit, remaining, ..
                } => {
                    assert_eq!(limit, 3);
                    assert_eq!(remaining, left);
                }
                other => panic!("{other:?}"),
            }
        }
        match l.check(None).await {
            Decision::Limited { retry_after, .. } => {
                assert!(
                    retry_after > Duration::from_millis(500)
                        && retry_after <= Duration::from_secs(1)
                );
            }
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn token_budget_reserves_worst_case_and_settles_to_usage() {
        let b = Arc::new(TokenBudget::new(10_000, "k".into(), 1));
        let mut held = Vec::new();
        while let Ok((r, _)) = b.reserve(1000, None).await {
            held.push(r);
        }
        assert_eq!(held.len(), 10);
        assert!(b.reserve(1000, None).await.is_err());
        for r in held {
            r.settle(Some(100));
        }
        // 9,000 tokens came back.
        for _ in 0..9 {
            assert!(b.reserve(1000, None).await.is_ok());
        }
    }

    #[tokio::test(start_paused = true)]
    async fn token_budget_refills_per_minute_and_admits_oversized_requests_when_full() {
        let b = Arc::new(TokenBudget::new(600, "k".into(), 1));
        let (r, left) = b.reserve(600, None).await.unwrap();
        assert_eq!(left, 0);
        r.settle(None);
        let wait = b.reserve(10, None).await.err().flatten().unwrap();
        assert!((wait.as_secs_f64() - 1.0).abs() < 0.01, "{wait:?}");
        tokio::time::advance(Duration::from_secs(60)).await;
        // Bigger than the whole budget: admitted once the bucket is full.
        assert!(b.reserve(5000, None).await.is_ok());
        assert!(b.reserve(1, None).await.is_err());
    }

    #[test]
    fn ipv6_clients_share_a_limit_per_64() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:bbbb::9".parse().unwrap();
        let c: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(IpLimiter::key(a), IpLimiter::key(b));
        assert_ne!(IpLimiter::key(a), IpLimiter::key(c));
        let v4: IpAddr = "::ffff:10.1.2.3".parse().unwrap();
        assert_eq!(IpLimiter::key(v4), "10.1.2.3".parse::<IpAddr>().unwrap());
    }

    #[tokio::test]
    async fn a_flood_of_distinct_addresses_is_swept() {
        let l = IpLimiter::new(rate(1000.0, 1), 1, 1000);
        for i in 0..5000u32 {
            let ip = IpAddr::V4(std::net::Ipv4Addr::from(0x0a00_0000 + i));
            l.check(ip, None).await;
        }
        // Each address took 1 of a 1-request bucket refilled every 1 ms: after a few ms all are
        // back to full and the sweep forgets them.
        tokio::time::sleep(Duration::from_millis(20)).await;
        l.sweep(false);
        assert_eq!(l.tracked(), 0);
    }

    #[test]
    fn unused_limiters_are_pruned() {
        let reg = LimitsRegistry::default();
        let kept = reg.request_limiter(Scope::Key, "a", rate(1.0, 1), 1);
        let _gone = reg.request_limiter(Scope::Key, "b", rate(1.0, 1), 1);
        drop(_gone);
        let budget = reg.token_budget("a", 100, 1);
        reg.prune();
        assert!(Arc::ptr_eq(
            &kept,
            &reg.request_limiter(Scope::Key, "a", rate(1.0, 1), 1)
        ));
        assert!(Arc::ptr_eq(&budget, &reg.token_budget("a", 100, 1)));
        assert_eq!(reg.requests.lock().unwrap().len(), 1);
    }

    #[test]
    fn reset_durations_read_like_openais() {
        assert_eq!(openai_duration(Duration::from_millis(20)), "20ms");
        assert_eq!(openai_duration(Duration::from_millis(1500)), "1.5s");
        assert_eq!(openai_duration(Duration::from_secs(1)), "1s");
        assert_eq!(openai_duration(Duration::from_millis(1050)), "1.05s");
        assert_eq!(openai_duration(Duration::from_millis(1005)), "1.005s");
        assert_eq!(openai_duration(Duration::from_micros(1_999_600)), "2s");
        assert_eq!(openai_duration(Duration::from_secs(360)), "6m0s");
        assert_eq!(openai_duration(Duration::from_secs(3725)), "1h2m5s");
        // The header writer's own path for short durations says the same.
        for d in [0, 1, 20, 999, 1000, 1050, 59_999, 60_000, 3_725_000].map(Duration::from_millis) {
            let mut out = Vec::new();
            OpenAiDuration(d).write_to(&mut out).unwrap();
            assert_eq!(&out[..], openai_duration(d).as_bytes(), "{d:?}");
        }
    }
}
