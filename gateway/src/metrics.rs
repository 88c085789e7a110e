//! The Prometheus registry and every metric the gateway exports, served by the admin listener
//! at `/metrics`. Label values come only from configured names (models, versions, replicas) and
//! fixed sets (operation, status, scope); a request for an unknown model counts under
//! `model="unknown"`, so no client can grow the series count.

use std::sync::OnceLock;

use prometheus::core::Collector;
use prometheus::{
    Encoder, GaugeVec, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

use crate::state::AppState;

/// Buckets for time to first token and request durations: 10 ms to 60 s and beyond.
pub const LATENCY_BUCKETS: [f64; 19] = [
    0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.5, 5.0, 10.0, 20.0, 30.0,
    60.0, 300.0,
];
/// Buckets for the gap between tokens: 5 ms to 10 s.
pub const ITL_BUCKETS: [f64; 13] = [
    0.005, 0.01, 0.015, 0.02, 0.03, 0.05, 0.075, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0,
];
/// Buckets for the time spent in the gateway itself: 50 µs to 100 ms.
pub const OVERHEAD_BUCKETS: [f64; 11] = [
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
];
/// Buckets for how late a timer fired: 1 ms (the timer's resolution) to 2.5 s.
pub const LAG_BUCKETS: [f64; 11] = [
    0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
];

pub struct Metrics {
    pub registry: Registry,
    /// `ai_requests_total{model,version,status}`: status is the HTTP code, or `client_closed`
    /// / `stream_error` for a stream that did not end cleanly.
    pub requests: IntCounterVec,
    /// `ai_request_duration_seconds{model,operation}`: to the end of the response body.
    pub duration: HistogramVec,
    pub ttft: HistogramVec,
    pub itl: HistogramVec,
    /// `ai_tokens_total{model,type}`: prompt and completion tokens from `usage`.
    pub tokens: IntCounterVec,
    pub queue_size: IntGaugeVec,
    pub upstream_inflight: IntGaugeVec,
    pub upstream_healthy: IntGaugeVec,
    pub upstream_ejections: IntGaugeVec,
    pub retries: IntCounter,
    /// Time to response head minus time waiting for replicas.
    pub overhead: prometheus::Histogram,
    /// Requests refused by a rate limit, by `scope` (ip, key, model, tokens).
    pub ratelimited: IntCounterVec,
    /// 1 while Redis is unreachable and limits run on the fallback policy.
    pub ratelimit_degraded: IntGauge,
    pub ratelimit_redis_errors: IntCounter,
    /// Reload attempts by `result` (ok, error).
    pub config_reloads: IntCounterVec,
    /// Traffic share (percent) of each model version.
    pub canary_weight: GaugeVec,
    /// Canaries the guard rolled back, by model.
    pub canary_rollbacks: IntCounterVec,
    /// Client connections open on the data listener, and the most it accepts at once.
    pub client_connections: IntGauge,
    pub client_connections_limit: IntGauge,
    /// Log lines dropped because stdout was not taking them (`crate::logs`).
    pub log_lines_dropped: IntCounter,
    /// How late the config watch's 250 ms timer fired (`crate::control::watch`): the time the
    /// gateway's thread could not get to work that was due, from its own long polls or, on a
    /// virtual machine, a halted core waiting for the host.
    pub event_loop_lag: prometheus::Histogram,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    #[expect(
        clippy::expect_used,
        reason = "metric names, labels and buckets are constants: construction cannot fail at run time"
    )]
    pub fn new() -> Self {
        let counter = |name: &str, help: &str, labels: &[&str]| {
            IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric")
        };
        let gauge = |name: &str, help: &str, labels: &[&str]| {
            IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric")
        };
        let histogram = |name: &str, help: &str, labels: &[&str], buckets: &[f64]| {
            HistogramVec::new(
                HistogramOpts::new(name, help).buckets(buckets.to_vec()),
                labels,
            )
            .expect("valid metric")
        };
        // One series, no labels.
        let single_histogram = |name: &str, help: &str, buckets: &[f64]| {
            prometheus::Histogram::with_opts(
                HistogramOpts::new(name, help).buckets(buckets.to_vec()),
            )
            .expect("valid metric")
        };
        let m = Self {
            registry: Registry::new(),
            requests: counter(
                "ai_requests_total",
                "Requests by model, version and final status (HTTP code, client_closed, stream_error).",
                &["model", "version", "status"],
            ),
            duration: histogram(
                "ai_request_duration_seconds",
                "Request duration to the end of the response body, by operation.",
                &["model", "operation"],
                &LATENCY_BUCKETS,
            ),
            ttft: histogram(
                "ai_time_to_first_token_seconds",
                "Time from receiving a streaming request to its first content token.",
                &["model", "version"],
                &LATENCY_BUCKETS,
            ),
            itl: histogram(
                "ai_inter_token_latency_seconds",
                "Gaps between content tokens of streams.",
                &["model", "version"],
                &ITL_BUCKETS,
            ),
            tokens: counter(
                "ai_tokens_total",
                "Tokens by model and type (prompt, completion), from the replicas' usage.",
                &["model", "type"],
            ),
            queue_size: gauge(
                "ai_queue_size",
                "Requests waiting for a free replica, by model.",
                &["model"],
            ),
            upstream_inflight: gauge(
                "gateway_upstream_inflight",
                "Requests in flight per replica.",
                &["replica"],
            ),
            upstream_healthy: gauge(
                "gateway_upstream_healthy",
                "1 when the replica takes traffic (healthy, not ejected, not drained).",
                &["replica"],
            ),
            upstream_ejections: gauge(
                "gateway_upstream_ejections",
                "Times the replica was ejected by passive health checks (since start).",
                &["replica"],
            ),
            retries: IntCounter::new(
                "gateway_retries_total",
                "Requests sent again to another replica before any response byte.",
            )
            .expect("valid metric"),
            overhead: single_histogram(
                "gateway_overhead_seconds",
                "Time spent in the gateway itself per request (excluding replicas).",
                &OVERHEAD_BUCKETS,
            ),
            event_loop_lag: single_histogram(
                "gateway_event_loop_lag_seconds",
                "How late a timer of the gateway fired (sampled 4 times a second; includes up to 1 ms of the timer's resolution).",
                &LAG_BUCKETS,
            ),
            ratelimited: counter(
                "gateway_ratelimited_total",
                "Requests refused by a rate limit, by scope.",
                &["scope"],
            ),
            ratelimit_degraded: IntGauge::new(
                "gateway_ratelimit_degraded",
                "1 while the shared (Redis) rate limits are unreachable and the fallback applies.",
            )
            .expect("valid metric"),
            ratelimit_redis_errors: IntCounter::new(
                "gateway_ratelimit_redis_errors_total",
                "Failed Redis rate-limit calls.",
            )
            .expect("valid metric"),
            config_reloads: counter(
                "gateway_config_reload_total",
                "Configuration reloads by result (an error leaves the old configuration serving).",
                &["result"],
            ),
            canary_weight: GaugeVec::new(
                Opts::new(
                    "gateway_canary_weight",
                    "Percent of a model's traffic each version takes (stable: 100 - canary).",
                ),
                &["model", "version"],
            )
            .expect("valid metric"),
            canary_rollbacks: counter(
                "gateway_canary_rollbacks_total",
                "Canaries the guard set to weight 0 for breaking their budget.",
                &["model"],
            ),
            client_connections: IntGauge::new(
                "gateway_client_connections",
                "Client connections open on the data listener.",
            )
            .expect("valid metric"),
            client_connections_limit: IntGauge::new(
                "gateway_client_connections_limit",
                "Most client connections accepted at once: half the descriptors the open-file \
                 limit leaves, or server.max_connections if lower (-1: no cap known).",
            )
            .expect("valid metric"),
            log_lines_dropped: IntCounter::new(
                "gateway_log_lines_dropped_total",
                "Log lines (access log included) dropped because stdout was not taking them \
                 and 4 MiB were already waiting.",
            )
            .expect("valid metric"),
        };
        for scope in ["ip", "key", "model", "tokens"] {
            m.ratelimited.with_label_values(&[scope]);
        }
        for r in ["ok", "error"] {
            m.config_reloads.with_label_values(&[r]);
        }
        let all: Vec<Box<dyn Collector>> = vec![
            Box::new(m.requests.clone()),
            Box::new(m.duration.clone()),
            Box::new(m.ttft.clone()),
            Box::new(m.itl.clone()),
            Box::new(m.tokens.clone()),
            Box::new(m.queue_size.clone()),
            Box::new(m.upstream_inflight.clone()),
            Box::new(m.upstream_healthy.clone()),
            Box::new(m.upstream_ejections.clone()),
            Box::new(m.retries.clone()),
            Box::new(m.overhead.clone()),
            Box::new(m.ratelimited.clone()),
            Box::new(m.ratelimit_degraded.clone()),
            Box::new(m.ratelimit_redis_errors.clone()),
            Box::new(m.config_reloads.clone()),
            Box::new(m.canary_weight.clone()),
            Box::new(m.canary_rollbacks.clone()),
            Box::new(m.client_connections.clone()),
            Box::new(m.client_connections_limit.clone()),
            Box::new(m.log_lines_dropped.clone()),
            Box::new(m.event_loop_lag.clone()),
        ];
        for c in all {
            m.registry.register(c).expect("unique metric");
        }
        m
    }

    /// `gateway_canary_weight{model,version}` from a new configuration: the canary's weight,
    /// the stable's remainder; and a zero rollback counter per model, so alerts on increase()
    /// see the first rollback.
    pub fn set_canary_weights(&self, config: &crate::config::Config) {
        self.canary_weight.reset();
        for m in &config.models {
            self.canary_rollbacks.with_label_values(&[&m.name]);
            let canary = m.canary.as_ref().filter(|c| c.version != m.stable);
            let w = canary.map_or(0.0, |c| c.weight_percent);
            if let Some(v) = m.versions.get(m.stable) {
                self.canary_weight
                    .with_label_values(&[&m.name, &v.name])
                    .set(100.0 - w);
            }
            if let Some(v) = canary.and_then(|c| m.versions.get(c.version)) {
                self.canary_weight
                    .with_label_values(&[&m.name, &v.name])
                    .set(w);
            }
        }
    }

    /// The text exposition format.
    pub fn render(&self) -> Vec<u8> {
        let mut out = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        out
    }
}

/// The request metrics of one model version, each resolved on first use and kept: label
/// values are hashed and looked up once per version instead of on every request (and every
/// token). A series appears only once used, as with `with_label_values`.
#[derive(Default)]
pub struct VersionHandles {
    ok: OnceLock<IntCounter>,
    duration: [OnceLock<Histogram>; 3],
    ttft: OnceLock<Histogram>,
    itl: OnceLock<Histogram>,
    prompt: OnceLock<IntCounter>,
    completion: OnceLock<IntCounter>,
}

/// A finished request's figures, for `VersionHandles::observe`.
pub struct Observed<'a> {
    pub status: &'a str,
    pub op: &'a str,
    pub duration: f64,
    pub ttft: Option<f64>,
    pub prompt: Option<u64>,
    pub completion: Option<u64>,
}

impl VersionHandles {
    /// Counts one finished request of `model`/`version`.
    pub fn observe(&self, m: &Metrics, model: &str, version: &str, o: &Observed<'_>) {
        if o.status == "200" {
            self.ok
                .get_or_init(|| m.requests.with_label_values(&[model, version, "200"]))
                .inc();
        } else {
            m.requests
                .with_label_values(&[model, version, o.status])
                .inc();
        }
        let slot = match o.op {
            "chat" => self.duration.first(),
            "completion" => self.duration.get(1),
            "embedding" => self.duration.get(2),
            _ => None,
        };
        match slot {
            Some(h) => h
                .get_or_init(|| m.duration.with_label_values(&[model, o.op]))
                .observe(o.duration),
            None => m
                .duration
                .with_label_values(&[model, o.op])
                .observe(o.duration),
        }
        if let Some(t) = o.ttft {
            self.ttft
                .get_or_init(|| m.ttft.with_label_values(&[model, version]))
                .observe(t);
        }
        if let Some(p) = o.prompt {
            self.prompt
                .get_or_init(|| m.tokens.with_label_values(&[model, "prompt"]))
                .inc_by(p);
        }
        if let Some(c) = o.completion {
            self.completion
                .get_or_init(|| m.tokens.with_label_values(&[model, "completion"]))
                .inc_by(c);
        }
    }

    /// One gap between tokens of a stream.
    pub fn observe_itl(&self, m: &Metrics, model: &str, version: &str, seconds: f64) {
        self.itl
            .get_or_init(|| m.itl.with_label_values(&[model, version]))
            .observe(seconds);
    }
}

/// Sets the gauges that describe live state (queues, replicas) just before a scrape, so they
/// follow reloads: replicas that left the configuration disappear.
pub fn refresh(app: &AppState) {
    let m = &app.metrics;
    let snap = app.snapshot();
    let now = crate::clock::now_ns();
    m.queue_size.reset();
    for model in &snap.config.models {
        let queued = snap.routes.get(&model.name).map_or(0, |r| {
            r.versions.iter().map(|p| p.queue.len()).sum::<usize>()
        });
        m.queue_size
            .with_label_values(&[&model.name])
            .set(queued as i64);
    }
    m.client_connections
        .set(i64::try_from(app.descriptors.clients()).unwrap_or(i64::MAX));
    m.client_connections_limit.set(
        app.client_cap()
            .map_or(-1, |c| i64::try_from(c).unwrap_or(i64::MAX)),
    );
    let dropped = crate::logs::dropped();
    m.log_lines_dropped
        .inc_by(dropped.saturating_sub(m.log_lines_dropped.get()));
    m.upstream_inflight.reset();
    m.upstream_healthy.reset();
    m.upstream_ejections.reset();
    for ep in app.endpoints.all() {
        let label = [ep.authority.as_str()];
        m.upstream_inflight
            .with_label_values(&label)
            .set(ep.inflight() as i64);
        m.upstream_healthy
            .with_label_values(&label)
            .set(i64::from(ep.is_routable(now)));
        m.upstream_ejections
            .with_label_values(&label)
            .set(ep.ejections_total() as i64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_the_metrics_with_their_names() {
        let m = Metrics::new();
        m.ratelimited.with_label_values(&["key"]).inc();
        m.ratelimit_degraded.set(1);
        m.requests.with_label_values(&["m", "1", "200"]).inc();
        m.ttft.with_label_values(&["m", "1"]).observe(0.02);
        let text = String::from_utf8(m.render()).unwrap();
        assert!(text.contains("gateway_ratelimited_total{scope=\"key\"} 1"));
        assert!(text.contains("gateway_ratelimited_total{scope=\"ip\"} 0"));
        assert!(text.contains("gateway_ratelimit_degraded 1"));
        assert!(text.contains("ai_requests_total{model=\"m\",status=\"200\",version=\"1\"} 1"));
        assert!(text.contains(
            "ai_time_to_first_token_seconds_bucket{model=\"m\",version=\"1\",le=\"0.025\"} 1"
        ));
    }
}
