//! `Snapshot`: everything derived from one validated config, immutable, behind one `ArcSwap`.
//! A request loads it once and keeps that `Arc` to its end; a reload builds a new one and swaps
//! it in one step. This module is the only owner of the swap.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwap;
use bytes::Bytes;

use crate::auth::{KeyEntry, KeyTable};
use crate::balance::{EndpointRegistry, Pool, QueueRegistry};
use crate::config::Config;
use crate::limits::{IpLimiter, LimitsRegistry, RequestLimiter, Scope, Shared};
use crate::metrics::Metrics;

/// A model as the request path sees it: its versions' replica pools.
pub struct Route {
    /// The model's configured name (an alias resolves to it); shared, so a request's record
    /// takes it without copying.
    pub model: Arc<str>,
    pub versions: Vec<Pool>,
    /// Index of the stable version in `versions`.
    pub stable: usize,
    /// The model's global request limit.
    pub limiter: Option<Arc<RequestLimiter>>,
    /// The canary split, when a canary takes traffic.
    pub canary: Option<RouteCanary>,
}

/// A model's active canary: which version, how much traffic, what keeps a client on its arm.
#[derive(Debug, Clone)]
pub struct RouteCanary {
    pub index: usize,
    pub weight_percent: f64,
    pub sticky: crate::config::Sticky,
}

pub struct Snapshot {
    pub config: Arc<Config>,
    /// Model names and aliases to their route.
    pub routes: crate::lookup::NameMap<Arc<Route>>,
    /// The `GET /v1/models` answer for callers who may use every model, rendered once.
    pub models_body: Bytes,
    pub keys: KeyTable,
    pub ip_limiter: Option<Arc<IpLimiter>>,
}

impl Snapshot {
    pub fn build(
        config: Config,
        registry: &EndpointRegistry,
        queues: &QueueRegistry,
        limits: &LimitsRegistry,
        stats: &crate::canary::stats::StatsRegistry,
    ) -> Self {
        let instances = config.limits.redis.as_ref().map_or(1, |r| r.instances);
        let mut routes = crate::lookup::NameMap::default();
        let mut listed = Vec::new();
        let mut expected: HashMap<String, Vec<String>> = HashMap::new();
        for m in &config.models {
            let route = Arc::new(Route {
                model: Arc::from(m.name.as_str()),
                versions: m
                    .versions
                    .iter()
                    .map(|v| {
                        Pool::new(
                            v,
                            m.balancer,
                            m.queue,
                            config.upstream.ewma_decay,
                            registry,
                            queues.get_or_insert(&m.name, &v.name),
                            stats.get(&m.name, &v.name),
                        )
                    })
                    .collect(),
                stable: m.stable,
                limiter: m
                    .rate
                    .map(|r| limits.request_limiter(Scope::Model, &m.name, r, instances)),
                canary: m
                    .canary
                    .as_ref()
                    .filter(|c| c.weight_percent > 0.0 && c.version != m.stable)
                    .map(|c| RouteCanary {
                        index: c.version,
                        weight_percent: c.weight_percent,
                        sticky: c.sticky.clone(),
                    }),
            });
            for ep in route.versions.iter().flat_map(|p| &p.endpoints) {
                let names = expected.entry(ep.key.clone()).or_default();
                names.push(m.name.clone());
                names.extend(m.aliases.iter().cloned());
            }
            for name in std::iter::once(&m.name).chain(&m.aliases) {
                routes.insert(name.clone(), route.clone());
                listed.push(model_object(name));
            }
        }
        for (key, names) in expected {
            if let Some(ep) = registry.find(&key) {
                ep.set_expected_models(names);
            }
        }
        let models_body =
            Bytes::from(serde_json::json!({"object": "list", "data": listed}).to_string());
        let keys = KeyTable::new(
            config
                .api_keys
                .iter()
                .map(|k| {
                    KeyEntry::new(
                        k.name.clone(),
                        k.sha256,
                        k.models.as_ref().map(|m| m.iter().cloned().collect()),
                        k.rate
                            .map(|r| limits.request_limiter(Scope::Key, &k.name, r, instances)),
                        k.tokens_per_minute
                            .map(|t| limits.token_budget(&k.name, t, instances)),
                    )
                    .with_pin_versions(k.pin_versions)
                })
                .collect(),
        );
        let ip_limiter = limits.ip_limiter(&config.limits);
        Self {
            config: Arc::new(config),
            routes,
            models_body,
            keys,
            ip_limiter,
        }
    }
}

impl Snapshot {
    /// The `GET /v1/models` answer for a key that may use only some models.
    pub fn models_body_for(&self, allowed: &std::collections::HashSet<String>) -> Bytes {
        let listed: Vec<_> = self
            .config
            .models
            .iter()
            .filter(|m| allowed.contains(&m.name))
            .flat_map(|m| std::iter::once(&m.name).chain(&m.aliases))
            .map(|n| model_object(n))
            .collect();
        Bytes::from(serde_json::json!({"object": "list", "data": listed}).to_string())
    }
}

/// The OpenAI `model` object for a name the gateway serves.
pub fn model_object(name: &str) -> serde_json::Value {
    serde_json::json!({"id": name, "object": "model", "created": 0, "owned_by": "gateway"})
}

/// Shared state of a running gateway.
pub struct AppState {
    snapshot: ArcSwap<Snapshot>,
    pub endpoints: EndpointRegistry,
    pub queues: QueueRegistry,
    pub limits: LimitsRegistry,
    pub stats: crate::canary::stats::StatsRegistry,
    pub control: crate::control::Control,
    pub metrics: Arc<Metrics>,
    /// Redis, when limits are shared.
    pub shared: Option<Arc<Shared>>,
    /// TLS termination, when `[server.tls]` is set at start.
    pub tls: Option<crate::tls::Tls>,
    draining: AtomicBool,
    pub started: std::time::Instant,
    /// Open client connections against the open-file limit's cap.
    pub descriptors: Arc<crate::descriptors::Descriptors>,
}

impl AppState {
    pub fn new(config: Config) -> Self {
        let endpoints = EndpointRegistry::default();
        let queues = QueueRegistry::default();
        let limits = LimitsRegistry::default();
        let metrics = Arc::new(Metrics::new());
        let shared = config.limits.redis.clone().map(|r| {
            Arc::new(Shared::new(
                crate::limits::redis::RedisClient::new(r),
                metrics.clone(),
            ))
        });
        let stats = crate::canary::stats::StatsRegistry::default();
        // Validation already loaded these files once; a failure here means they changed since.
        let tls = config
            .server
            .tls
            .as_ref()
            .and_then(|t| match crate::tls::Tls::load(t) {
                Ok(t) => Some(t),
                Err(e) => {
                    tracing::error!(error = %e, "TLS disabled: the certificate could not be loaded");
                    None
                }
            });
        let first = Snapshot::build(config, &endpoints, &queues, &limits, &stats);
        metrics.set_canary_weights(&first.config);
        let snapshot = ArcSwap::from_pointee(first);
        Self {
            snapshot,
            endpoints,
            queues,
            limits,
            stats,
            tls,
            control: crate::control::Control::default(),
            metrics,
            shared,
            draining: AtomicBool::new(false),
            started: std::time::Instant::now(),
            descriptors: Arc::new(crate::descriptors::Descriptors::from_process()),
        }
    }

    /// The current snapshot; hold the `Arc` for the whole request.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.snapshot.load_full()
    }

    /// The current snapshot for a short read that is not held across an `.await` (a
    /// connection's caps before each request): no reference count is taken.
    pub fn peek_snapshot(&self) -> arc_swap::Guard<Arc<Snapshot>> {
        self.snapshot.load()
    }

    /// Replaces the snapshot in one step and forgets replicas that left the configuration.
    pub fn publish(&self, config: Config) {
        let next = Snapshot::build(
            config,
            &self.endpoints,
            &self.queues,
            &self.limits,
            &self.stats,
        );
        self.metrics.set_canary_weights(&next.config);
        let keys: std::collections::HashSet<String> = next
            .routes
            .values()
            .flat_map(|r| r.versions.iter().flat_map(|p| p.endpoints.iter()))
            .map(|e| e.key.clone())
            .collect();
        let pools: std::collections::HashSet<String> = next
            .routes
            .values()
            .flat_map(|r| {
                r.versions
                    .iter()
                    .map(move |p| format!("{}/{}", r.model, p.version))
            })
            .collect();
        self.snapshot.store(Arc::new(next));
        self.endpoints.retain(&|k| keys.contains(k));
        self.queues.retain(&|k| pools.contains(k));
        self.limits.prune();
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::Relaxed);
    }

    /// The cap on client connections now: the open-file limit's, or `server.max_connections`
    /// if lower (`crate::descriptors`).
    pub fn client_cap(&self) -> Option<usize> {
        self.descriptors
            .cap(self.snapshot().config.server.max_connections)
    }

    /// Ready: not draining, and every model has at least one replica that can take traffic.
    pub fn is_ready(&self) -> bool {
        if self.is_draining() {
            return false;
        }
        let now = crate::clock::now_ns();
        self.snapshot().routes.values().all(|r| {
            r.versions
                .get(r.stable)
                .is_some_and(|p| p.endpoints.iter().any(|e| e.is_routable(now)))
        })
    }
}

impl Route {
    /// Whether one more replica of this model may be ejected within `max_percent`.
    pub fn may_eject_one_more(&self, max_percent: f64) -> bool {
        let now = crate::clock::now_ns();
        let eps = self.versions.iter().flat_map(|p| &p.endpoints);
        let (total, ejected) = eps.fold((0usize, 0usize), |(t, e), ep| {
            (t + 1, e + usize::from(ep.is_ejected(now)))
        });
        total > 0 && ((ejected + 1) as f64) * 100.0 <= max_percent * total as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CFG: &str = r#"
        [auth]
        enabled = false
        [[models]]
        name = "m"
        aliases = ["alias"]
        [[models.versions]]
        name = "v1"
        replicas = [{ url = "http://127.0.0.1:1" }, { url = "http://127.0.0.1:2" }]
    "#;

    #[test]
    fn aliases_share_the_route_and_are_listed() {
        let s = AppState::new(crate::config::parse(CFG).unwrap());
        let snap = s.snapshot();
        assert!(Arc::ptr_eq(&snap.routes["m"], &snap.routes["alias"]));
        let v: serde_json::Value = serde_json::from_slice(&snap.models_body).unwrap();
        let ids: Vec<_> = v["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["id"].clone())
            .collect();
        assert_eq!(ids, vec!["m", "alias"]);
    }

    #[test]
    fn publish_keeps_live_endpoint_state_of_kept_replicas() {
        let s = AppState::new(crate::config::parse(CFG).unwrap());
        let before = s.snapshot().routes["m"].versions[0].endpoints[0].clone();
        let _g = before.try_acquire().unwrap();
        let next = CFG.replace(", { url = \"http://127.0.0.1:2\" }", "");
        s.publish(crate::config::parse(&next).unwrap());
        let after = s.snapshot().routes["m"].versions[0].endpoints[0].clone();
        assert!(Arc::ptr_eq(&before, &after));
        assert_eq!(after.inflight(), 1);
        assert_eq!(s.endpoints.len(), 1);
    }
}
