//! Replica selection. Each algorithm is one file behind the `Balancer` trait and sees only the
//! replicas `Pool::try_acquire` says are eligible: not tried yet for this request, not drained,
//! healthy and not ejected (unless none is — panic mode), and below `max_inflight`. Live
//! per-replica state (`endpoint.rs`) and the wait queues (`queue.rs`) sit outside the config
//! snapshot so reloads keep them.

pub mod endpoint;
mod least_inflight;
mod p2c;
pub mod queue;
mod round_robin;
mod weighted;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::HeaderValue;

pub use endpoint::{Endpoint, EndpointRegistry, InflightGuard};
pub use least_inflight::LeastInflight;
pub use p2c::P2cEwma;
pub use queue::{PoolQueue, Ticket};
pub use round_robin::RoundRobin;
pub use weighted::SmoothWeighted;

use crate::clock::now_ns;
use crate::config::{BalancerKind, QueueConfig, VersionConfig};

/// What a balancer may look at for one pick.
pub struct PickCtx<'a> {
    pub endpoints: &'a [Arc<Endpoint>],
    pub weights: &'a [u32],
    /// Replicas already tried for this request, or found full a moment ago.
    pub tried: &'a [usize],
    pub raced: &'a [usize],
    /// No replica is routable: ignore health (panic mode).
    pub panic: bool,
    pub now: u64,
    pub decay: Duration,
}

impl PickCtx<'_> {
    pub fn weight(&self, i: usize) -> u32 {
        self.weights.get(i).copied().unwrap_or(1).max(1)
    }

    /// Whether replica `i` may be picked. A plain method (not a closure object) so that the
    /// balancers' loops inline it.
    #[inline]
    pub fn eligible(&self, i: usize) -> bool {
        let ep = &self.endpoints[i];
        !ep.is_drained()
            && ep.has_capacity()
            && (self.panic || ep.is_routable(self.now))
            && !self.tried.contains(&i)
            && !self.raced.contains(&i)
    }
}

/// Picks one eligible replica, or `None` when none is.
pub trait Balancer: Send + Sync {
    fn pick(&self, ctx: &PickCtx<'_>) -> Option<usize>;
}

pub fn balancer(kind: BalancerKind, n: usize) -> Box<dyn Balancer> {
    match kind {
        BalancerKind::P2cEwma => Box::new(P2cEwma),
        BalancerKind::LeastInflight => Box::new(LeastInflight),
        BalancerKind::RoundRobin => Box::new(RoundRobin::default()),
        BalancerKind::WeightedRoundRobin => Box::new(SmoothWeighted::new(n)),
    }
}

/// Why no slot could be had right now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unavailable {
    /// Replicas exist but every one is at `max_inflight`: worth waiting.
    Full,
    /// No replica can take it (all tried, or all drained).
    NoReplica,
}

/// Why a request got no replica slot at all.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AcquireError {
    NoReplica,
    QueueFull,
    QueueTimeout,
}

/// The replicas of one model version and how traffic is spread across them.
pub struct Pool {
    pub version: Arc<str>,
    /// `x-gateway-model-version`, built once.
    pub version_header: HeaderValue,
    pub endpoints: Vec<Arc<Endpoint>>,
    pub weights: Vec<u32>,
    pub queue: Arc<PoolQueue>,
    pub queue_config: QueueConfig,
    /// Outcomes of this version's requests (canary guard, operator API).
    pub stats: Arc<crate::canary::stats::VersionStats>,
    decay: Duration,
    balancer: Box<dyn Balancer>,
    last_panic_log: AtomicU64,
}

impl Pool {
    pub fn new(
        v: &VersionConfig,
        kind: BalancerKind,
        queue_config: QueueConfig,
        decay: Duration,
        registry: &EndpointRegistry,
        queue: Arc<PoolQueue>,
        stats: Arc<crate::canary::stats::VersionStats>,
    ) -> Self {
        let endpoints: Vec<_> = v
            .replicas
            .iter()
            .map(|r| registry.get_or_insert(r))
            .collect();
        for ep in &endpoints {
            ep.subscribe_queue(&queue);
        }
        Self {
            version: Arc::from(v.name.as_str()),
            version_header: HeaderValue::from_str(&v.name)
                .unwrap_or_else(|_| HeaderValue::from_static("unknown")),
            weights: v.replicas.iter().map(|r| r.weight).collect(),
            balancer: balancer(kind, endpoints.len()),
            endpoints,
            queue,
            queue_config,
            stats,
            decay,
            last_panic_log: AtomicU64::new(0),
        }
    }

    pub fn decay(&self) -> Duration {
        self.decay
    }

    /// Takes a slot on an eligible replica, without waiting.
    pub fn try_acquire(&self, tried: &[usize]) -> Result<(usize, InflightGuard), Unavailable> {
        let now = now_ns();
        let eps = &self.endpoints;
        let n = eps.len();
        let open = |i: usize| !eps[i].is_drained() && !tried.contains(&i);
        // Panic mode: when health rules out every replica, use them all rather than fail
        // every request; health checks can be wrong, an empty pool is always wrong.
        let panic = !(0..n).any(|i| eps[i].is_routable(now) && open(i));
        if panic && (0..n).any(open) {
            self.log_panic(now);
        }
        let mut raced: Vec<usize> = Vec::new();
        loop {
            let ctx = PickCtx {
                endpoints: eps,
                weights: &self.weights,
                tried,
                raced: &raced,
                panic,
                now,
                decay: self.decay,
            };
            let Some(i) = self.balancer.pick(&ctx) else {
                break;
            };
            match eps[i].try_acquire() {
                Some(guard) => return Ok((i, guard)),
                // Another request took its last slot between the check and the take.
                None => raced.push(i),
            }
        }
        if (0..n).any(|i| open(i) && (panic || eps[i].is_routable(now))) {
            Err(Unavailable::Full)
        } else {
            Err(Unavailable::NoReplica)
        }
    }

    /// Takes a slot, waiting in this pool's FIFO queue while every replica is full.
    pub async fn acquire(&self, tried: &[usize]) -> Result<(usize, InflightGuard), AcquireError> {
        if self.queue.is_empty() {
            match self.try_acquire(tried) {
                Ok(x) => return Ok(x),
                Err(Unavailable::NoReplica) => return Err(AcquireError::NoReplica),
                Err(Unavailable::Full) => {}
            }
        }
        // Waiting is the rare path: boxed, so the request future stays small without it.
        Box::pin(self.wait_in_queue(tried)).await
    }

    async fn wait_in_queue(&self, tried: &[usize]) -> Result<(usize, InflightGuard), AcquireError> {
        let Some(ticket) = self.queue.enqueue(self.queue_config.max_size) else {
            return Err(AcquireError::QueueFull);
        };
        self.queue.wake_head();
        let deadline = crate::clock::now() + self.queue_config.timeout;
        loop {
            if ticket.is_head() {
                match self.try_acquire(tried) {
                    // Dropping the ticket hands the head of the line to the next waiter.
                    Ok(x) => return Ok(x),
                    Err(Unavailable::NoReplica) => return Err(AcquireError::NoReplica),
                    Err(Unavailable::Full) => {}
                }
            }
            if tokio::time::timeout_at(deadline, ticket.woken())
                .await
                .is_err()
            {
                return Err(AcquireError::QueueTimeout);
            }
        }
    }

    fn log_panic(&self, now: u64) {
        let last = self.last_panic_log.load(Ordering::Relaxed);
        if last == 0 || now.saturating_sub(last) > 10_000_000_000 {
            self.last_panic_log.store(now, Ordering::Relaxed);
            tracing::warn!(
                version = %self.version,
                "every replica is unhealthy or ejected: panic mode, routing to all of them"
            );
        }
    }
}

/// Wait queues by `model/version`, outside the snapshot: a reload keeps the line.
#[derive(Default)]
pub struct QueueRegistry {
    map: Mutex<HashMap<String, Arc<PoolQueue>>>,
}

impl QueueRegistry {
    pub fn get_or_insert(&self, model: &str, version: &str) -> Arc<PoolQueue> {
        let mut m = self.map.lock().unwrap_or_else(|p| p.into_inner());
        m.entry(format!("{model}/{version}")).or_default().clone()
    }

    pub fn retain(&self, keep: &dyn Fn(&str) -> bool) {
        let mut m = self.map.lock().unwrap_or_else(|p| p.into_inner());
        m.retain(|k, q| keep(k) || !q.is_empty());
    }
}

#[cfg(test)]
mod tests {
    use super::endpoint::tests::{endpoints, health, replica};
    use super::*;
    use proptest::prelude::*;

    fn pool(kind: BalancerKind, n: usize, max_inflight: u32, weights: &[u32]) -> Pool {
        let reg = EndpointRegistry::default();
        let v = VersionConfig {
            name: "v".into(),
            replicas: (0..n)
                .map(|i| {
                    let mut r = replica(i, max_inflight);
                    r.weight = weights.get(i).copied().unwrap_or(1);
                    r
                })
                .collect(),
        };
        let q = QueueConfig {
            max_size: 2,
            timeout: Duration::from_millis(200),
        };
        Pool::new(
            &v,
            kind,
            q,
            Duration::from_secs(10),
            &reg,
            Arc::default(),
            Arc::default(),
        )
    }

    fn counts(p: &Pool, picks: usize) -> Vec<usize> {
        let mut c = vec![0; p.endpoints.len()];
        for _ in 0..picks {
            let (i, _g) = p.try_acquire(&[]).unwrap();
            c[i] += 1;
        }
        c
    }

    #[test]
    fn round_robin_cycles_evenly() {
        assert_eq!(
            counts(&pool(BalancerKind::RoundRobin, 3, 0, &[]), 300),
            [100, 100, 100]
        );
    }

    #[test]
    fn smooth_weighted_follows_weights_and_interleaves() {
        let p = pool(BalancerKind::WeightedRoundRobin, 3, 0, &[5, 1, 1]);
        let seq: Vec<usize> = (0..7).map(|_| p.try_acquire(&[]).unwrap().0).collect();
        assert_eq!(seq, vec![0, 0, 1, 0, 2, 0, 0]);
        let p = pool(BalancerKind::WeightedRoundRobin, 3, 0, &[1, 2, 3]);
        assert_eq!(counts(&p, 6000), [1000, 2000, 3000]);
    }

    #[test]
    fn least_inflight_balances_held_requests_and_respects_weights() {
        let p = pool(BalancerKind::LeastInflight, 3, 0, &[]);
        let held: Vec<_> = (0..30).map(|_| p.try_acquire(&[]).unwrap()).collect();
        let per: Vec<usize> = p.endpoints.iter().map(|e| e.inflight()).collect();
        assert_eq!(per, [10, 10, 10]);
        drop(held);
        let p = pool(BalancerKind::LeastInflight, 2, 0, &[1, 3]);
        let _held: Vec<_> = (0..40).map(|_| p.try_acquire(&[]).unwrap()).collect();
        assert_eq!(p.endpoints[0].inflight(), 10);
        assert_eq!(p.endpoints[1].inflight(), 30);
    }

    #[test]
    fn least_inflight_breaks_ties_at_random() {
        let p = pool(BalancerKind::LeastInflight, 4, 0, &[]);
        let c = counts(&p, 4000);
        assert!(c.iter().all(|&n| n > 800), "{c:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn p2c_avoids_the_slow_replica_and_takes_it_back_after_recovery() {
        let p = pool(BalancerKind::P2cEwma, 3, 0, &[]);
        let decay = p.decay();
        let send = |i: usize, p: &Pool| {
            let ms = if i == 0 { 50 } else { 10 };
            p.endpoints[i].observe_latency(Duration::from_millis(ms), decay);
        };
        let mut slow = 0;
        for _ in 0..2000 {
            let (i, _g) = p.try_acquire(&[]).unwrap();
            slow += usize::from(i == 0);
            send(i, &p);
            tokio::time::advance(Duration::from_millis(5)).await;
        }
        assert!(slow * 100 <= 2000 * 15, "slow replica got {slow} of 2000");
        // Recovered: replica 0 is as fast as the others now; within 30 s of traffic it is back.
        let mut recent = std::collections::VecDeque::new();
        let mut back_at = None;
        for step in 0..6000 {
            let (i, _g) = p.try_acquire(&[]).unwrap();
            p.endpoints[i].observe_latency(Duration::from_millis(10), decay);
            recent.push_back(i == 0);
            if recent.len() > 400 {
                recent.pop_front();
            }
            tokio::time::advance(Duration::from_millis(5)).await;
            let share = recent.iter().filter(|&&s| s).count() as f64 / recent.len() as f64;
            if recent.len() == 400 && share >= 0.25 {
                back_at = Some(step);
                break;
            }
        }
        let step = back_at.expect("slow replica never earned its traffic back");
        assert!(step * 5 <= 30_000, "took {} ms of traffic", step * 5);
    }

    #[test]
    fn unroutable_replicas_are_skipped_and_panic_mode_uses_them_all() {
        let p = pool(BalancerKind::RoundRobin, 3, 0, &[]);
        p.endpoints[0].set_healthy(false);
        p.endpoints[1].set_drained(true);
        assert_eq!(counts(&p, 10), [0, 0, 10]);
        p.endpoints[2].set_healthy(false);
        // All unhealthy: panic mode routes to the unhealthy ones, never the drained one.
        let c = counts(&p, 10);
        assert_eq!(c[1], 0);
        assert_eq!(c[0] + c[2], 10);
        p.endpoints[0].set_drained(true);
        p.endpoints[2].set_drained(true);
        assert_eq!(p.try_acquire(&[]).unwrap_err(), Unavailable::NoReplica);
    }

    #[test]
    fn tried_replicas_are_never_picked_again() {
        for kind in BalancerKind::ALL {
            let p = pool(kind, 3, 0, &[]);
            let (a, _ga) = p.try_acquire(&[]).unwrap();
            let (b, _gb) = p.try_acquire(&[a]).unwrap();
            let (c, _gc) = p.try_acquire(&[a, b]).unwrap();
            assert!(a != b && b != c && a != c, "{kind:?}");
            assert_eq!(
                p.try_acquire(&[a, b, c]).unwrap_err(),
                Unavailable::NoReplica
            );
        }
    }

    #[tokio::test]
    async fn full_pool_queues_fifo_and_sheds_when_the_queue_is_full() {
        let p = Arc::new(pool(BalancerKind::LeastInflight, 1, 1, &[]));
        let (_, held) = p.try_acquire(&[]).unwrap();
        assert_eq!(p.try_acquire(&[]).unwrap_err(), Unavailable::Full);
        let order = Arc::new(Mutex::new(Vec::new()));
        let mut waiters = Vec::new();
        for id in 0..2 {
            let (p2, order) = (p.clone(), order.clone());
            waiters.push(tokio::spawn(async move {
                let (_, g) = p2.acquire(&[]).await.unwrap();
                order.lock().unwrap().push(id);
                tokio::time::sleep(Duration::from_millis(5)).await;
                drop(g);
            }));
            tokio::task::yield_now().await;
            while p.queue.len() < id + 1 {
                tokio::task::yield_now().await;
            }
        }
        // Queue (max 2) is full: shed at once.
        let started = std::time::Instant::now();
        assert_eq!(p.acquire(&[]).await.unwrap_err(), AcquireError::QueueFull);
        assert!(started.elapsed() < Duration::from_millis(10));
        drop(held);
        for w in waiters {
            w.await.unwrap();
        }
        assert_eq!(*order.lock().unwrap(), vec![0, 1]);
        assert!(p.queue.is_empty());
    }

    #[tokio::test]
    async fn a_queued_request_times_out() {
        let p = pool(BalancerKind::P2cEwma, 1, 1, &[]);
        let (_, _held) = p.try_acquire(&[]).unwrap();
        assert_eq!(
            p.acquire(&[]).await.unwrap_err(),
            AcquireError::QueueTimeout
        );
        assert!(p.queue.is_empty());
    }

    #[test]
    fn ejected_replicas_are_skipped() {
        let p = pool(BalancerKind::P2cEwma, 2, 0, &[]);
        let mut cfg = health();
        cfg.max_fails = 1;
        assert!(p.endpoints[0].record_failure(&cfg, "boom", || true));
        assert_eq!(counts(&p, 50), [0, 50]);
        let _ = endpoints(1);
    }

    /// A replica's state for the property test.
    #[derive(Debug, Clone, Copy)]
    struct State {
        unhealthy: bool,
        drained: bool,
        ejected: bool,
        full: bool,
        tried: bool,
    }

    fn state() -> impl Strategy<Value = State> {
        (
            any::<bool>(),
            any::<bool>(),
            any::<bool>(),
            any::<bool>(),
            any::<bool>(),
        )
            .prop_map(|(unhealthy, drained, ejected, full, tried)| State {
                unhealthy,
                drained,
                ejected,
                full,
                tried,
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(400))]
        #[test]
        fn no_balancer_picks_an_ineligible_replica_while_an_eligible_one_exists(
            states in proptest::collection::vec(state(), 1..12),
            kind in proptest::sample::select(BalancerKind::ALL.to_vec()),
            weights in proptest::collection::vec(1u32..5, 12),
        ) {
            let p = pool(kind, states.len(), 1, &weights);
            let mut cfg = health();
            cfg.max_fails = 1;
            cfg.max_ejection_percent = 100.0;
            let mut holds = Vec::new();
            let mut tried = Vec::new();
            for (i, s) in states.iter().enumerate() {
                let ep = &p.endpoints[i];
                ep.set_healthy(!s.unhealthy);
                ep.set_drained(s.drained);
                if s.ejected {
                    ep.record_failure(&cfg, "x", || true);
                }
                if s.full {
                    holds.push(ep.try_acquire().unwrap());
                }
                if s.tried {
                    tried.push(i);
                }
            }
            let usable = |s: &State| !s.drained && !s.full && !s.tried;
            let healthy = |s: &State| !s.unhealthy && !s.ejected;
            let any_routable = states.iter().any(|s| !s.drained && !s.tried && healthy(s));
            let eligible: Vec<bool> = states
                .iter()
                .map(|s| usable(s) && (healthy(s) || !any_routable))
                .collect();
            for _ in 0..4 {
                match p.try_acquire(&tried) {
                    Ok((i, g)) => {
                        prop_assert!(eligible[i], "{kind:?} picked {i} in {states:?}");
                        drop(g);
                    }
                    Err(_) => prop_assert!(!eligible.iter().any(|&e| e),
                        "{kind:?} picked nothing in {states:?}"),
                }
            }
        }
    }
}
