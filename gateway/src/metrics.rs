//! The Prometheus registry and the gateway's metrics, served by the admin listener at
//! `/metrics`. Label values come only from configured names (never from requests).

use prometheus::{
    Encoder, GaugeVec, IntCounter, IntCounterVec, IntGauge, Opts, Registry, TextEncoder,
};

pub struct Metrics {
    pub registry: Registry,
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
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    #[expect(
        clippy::expect_used,
        reason = "metric names and labels are constants: construction cannot fail at run time"
    )]
    pub fn new() -> Self {
        let registry = Registry::new();
        let ratelimited = IntCounterVec::new(
            Opts::new(
                "gateway_ratelimited_total",
                "Requests refused by a rate limit, by scope.",
            ),
            &["scope"],
        )
        .expect("valid metric");
        let ratelimit_degraded = IntGauge::new(
            "gateway_ratelimit_degraded",
            "1 while the shared (Redis) rate limits are unreachable and the fallback applies.",
        )
        .expect("valid metric");
        let ratelimit_redis_errors = IntCounter::new(
            "gateway_ratelimit_redis_errors_total",
            "Failed Redis rate-limit calls.",
        )
        .expect("valid metric");
        for scope in ["ip", "key", "model", "tokens"] {
            ratelimited.with_label_values(&[scope]);
        }
        let config_reloads = IntCounterVec::new(
            Opts::new(
                "gateway_config_reload_total",
                "Configuration reloads by result (an error leaves the old configuration serving).",
            ),
            &["result"],
        )
        .expect("valid metric");
        for r in ["ok", "error"] {
            config_reloads.with_label_values(&[r]);
        }
        let canary_weight = GaugeVec::new(
            Opts::new(
                "gateway_canary_weight",
                "Percent of a model's traffic each version takes (stable: 100 - canary).",
            ),
            &["model", "version"],
        )
        .expect("valid metric");
        let canary_rollbacks = IntCounterVec::new(
            Opts::new(
                "gateway_canary_rollbacks_total",
                "Canaries the guard set to weight 0 for breaking their budget.",
            ),
            &["model"],
        )
        .expect("valid metric");
        for m in [
            Box::new(ratelimited.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(ratelimit_degraded.clone()),
            Box::new(ratelimit_redis_errors.clone()),
            Box::new(config_reloads.clone()),
            Box::new(canary_weight.clone()),
            Box::new(canary_rollbacks.clone()),
        ] {
            registry.register(m).expect("unique metric");
        }
        Self {
            registry,
            ratelimited,
            ratelimit_degraded,
            ratelimit_redis_errors,
            config_reloads,
            canary_weight,
            canary_rollbacks,
        }
    }

    /// The text exposition format.
    pub fn render(&self) -> Vec<u8> {
        let mut out = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_the_rate_limit_metrics() {
        let m = Metrics::new();
        m.ratelimited.with_label_values(&["key"]).inc();
        m.ratelimit_degraded.set(1);
        let text = String::from_utf8(m.render()).unwrap();
        assert!(text.contains("gateway_ratelimited_total{scope=\"key\"} 1"));
        assert!(text.contains("gateway_ratelimited_total{scope=\"ip\"} 0"));
        assert!(text.contains("gateway_ratelimit_degraded 1"));
    }
}
