//! The configuration file as written by operators: serde types that reject unknown keys.
//! Durations stay strings here so that validation can name the field of a bad one; every
//! default lives in `validate.rs`, next to the check of the value.

use serde::Deserialize;

/// The whole file. See `config/gateway.example.toml` for every key and its default.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    #[serde(default)]
    pub server: ServerFile,
    #[serde(default)]
    pub upstream: UpstreamFile,
    #[serde(default)]
    pub health: HealthFile,
    pub auth: Option<AuthFile>,
    #[serde(default)]
    pub api_keys: Vec<ApiKeyFile>,
    pub limits: Option<LimitsFile>,
    #[serde(default)]
    pub models: Vec<ModelFile>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerFile {
    pub listen: Option<String>,
    pub admin_listen: Option<String>,
    pub admin_token_env: Option<String>,
    pub max_body_bytes: Option<u64>,
    pub drain_timeout: Option<String>,
    pub tls: Option<TlsFile>,
    /// Longest time to receive a request's header section (and longest keep-alive idle).
    pub header_read_timeout: Option<String>,
    /// Longest silence while receiving a request body.
    pub body_read_timeout: Option<String>,
    /// Longest time a client may leave an answer's bytes unaccepted (a stalled reader).
    pub send_timeout: Option<String>,
    /// Cap on the total size of a request's header section.
    pub max_header_bytes: Option<u64>,
    /// Cap on the number of request headers.
    pub max_headers: Option<u64>,
    /// Most client connections held at once (below what the open-file limit allows).
    pub max_connections: Option<u64>,
    /// File that operator changes (canary weights, promotions, rollbacks, reloads) are
    /// appended to as JSON lines; they are always logged with target "audit" too.
    pub audit_log: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsFile {
    pub cert: Option<String>,
    pub key: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamFile {
    pub connect_timeout: Option<String>,
    pub response_head_timeout: Option<String>,
    pub idle_chunk_timeout: Option<String>,
    pub pool_idle_timeout: Option<String>,
    pub retries: Option<u64>,
    /// Time constant of the latency EWMA used by `p2c_ewma` (also how fast an idle estimate fades).
    pub ewma_decay: Option<String>,
    /// Environment variable holding the key replicas expect (`Authorization: Bearer`), e.g.
    /// vLLM's or SGLang's `--api-key`.
    pub api_key_env: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthFile {
    /// Active probing on/off (passive outlier ejection is governed by `max_fails`).
    pub active: Option<bool>,
    pub path: Option<String>,
    pub interval: Option<String>,
    pub timeout: Option<String>,
    pub unhealthy_threshold: Option<u64>,
    pub healthy_threshold: Option<u64>,
    pub check_model: Option<bool>,
    pub max_fails: Option<u64>,
    pub fail_timeout: Option<String>,
    pub max_ejection_percent: Option<f64>,
    /// Cap of the doubling ejection time.
    pub max_ejection_time: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthFile {
    pub enabled: Option<bool>,
    /// A key that may not use a model gets 404 (as if the model did not exist) instead of 403.
    pub hide_unlisted_models: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiKeyFile {
    pub name: Option<String>,
    pub sha256: Option<String>,
    pub models: Option<Vec<String>>,
    pub requests_per_second: Option<f64>,
    pub burst: Option<u64>,
    pub tokens_per_minute: Option<u64>,
    /// The key may ask for a specific version with `model = "name@version"`.
    pub pin_versions: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsFile {
    pub per_ip_requests_per_second: Option<f64>,
    pub per_ip_burst: Option<u64>,
    pub trusted_proxies: Option<Vec<String>>,
    pub redis_url: Option<String>,
    /// When Redis is unreachable: "local" (each instance enforces 1/`instances` of every
    /// limit), "open" (no limits) or "closed" (refuse with 503).
    pub redis_fallback: Option<String>,
    /// How many gateway instances share the Redis limits (for the local fallback share).
    pub instances: Option<u64>,
    /// Longest wait for one Redis round trip before falling back.
    pub redis_timeout: Option<String>,
    /// Worst-case completion tokens reserved for a request that sets no max_tokens.
    pub default_max_tokens: Option<u64>,
    /// Per-IP limiter entries kept before idle ones are evicted early.
    pub per_ip_max_tracked: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelFile {
    pub name: Option<String>,
    #[serde(default)]
    pub aliases: Vec<String>,
    pub balancer: Option<String>,
    pub deploy_dir: Option<String>,
    pub stable: Option<String>,
    /// Global request rate limit of the model, over all callers (0 or absent = none).
    pub requests_per_second: Option<f64>,
    pub burst: Option<u64>,
    pub queue: Option<QueueFile>,
    pub canary: Option<CanaryFile>,
    #[serde(default)]
    pub versions: Vec<VersionFile>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QueueFile {
    pub max_size: Option<u64>,
    pub timeout: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CanaryFile {
    pub version: Option<String>,
    pub weight_percent: Option<f64>,
    pub sticky: Option<String>,
    pub guard: Option<GuardFile>,
    /// Weights to promote through while the guard stays green, e.g. [5, 25, 50, 100].
    pub steps: Option<Vec<f64>>,
    pub step_interval: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GuardFile {
    pub max_error_rate: Option<f64>,
    pub max_ttft_p95_ms: Option<f64>,
    pub min_requests: Option<u64>,
    pub window: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VersionFile {
    pub name: Option<String>,
    #[serde(default)]
    pub replicas: Vec<ReplicaFile>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReplicaFile {
    pub url: Option<String>,
    pub weight: Option<u64>,
    pub max_inflight: Option<u64>,
}
