//! The validated, immutable configuration the gateway runs on: real durations, socket
//! addresses and URIs, with every default applied. Built only by `validate.rs`.

use std::net::SocketAddr;
use std::time::Duration;

use http::uri::Authority;

/// Everything the gateway needs from the file, checked.
#[derive(Debug, Clone)]
pub struct Config {
    pub server: ServerConfig,
    pub upstream: UpstreamConfig,
    pub health: HealthConfig,
    pub auth: AuthConfig,
    pub api_keys: Vec<ApiKeyConfig>,
    pub limits: LimitsConfig,
    pub models: Vec<ModelConfig>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AuthConfig {
    pub enabled: bool,
    pub hide_unlisted_models: bool,
}

/// A request rate: `per_second` sustained, `burst` at once.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rate {
    pub per_second: f64,
    pub burst: u32,
}

#[derive(Clone, PartialEq)]
pub struct ApiKeyConfig {
    pub name: String,
    /// SHA-256 of the key. The key itself is never known to the gateway.
    pub sha256: [u8; 32],
    /// Canonical model names the key may use; `None` = all.
    pub models: Option<Vec<String>>,
    pub rate: Option<Rate>,
    pub tokens_per_minute: Option<u64>,
    pub pin_versions: bool,
}

impl std::fmt::Debug for ApiKeyConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiKeyConfig")
            .field("name", &self.name)
            .field("models", &self.models)
            .field("rate", &self.rate)
            .field("tokens_per_minute", &self.tokens_per_minute)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RedisFallback {
    Local,
    Open,
    Closed,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedisConfig {
    pub host: String,
    pub port: u16,
    pub db: u32,
    pub password: Option<String>,
    pub timeout: Duration,
    pub fallback: RedisFallback,
    pub instances: u32,
}

/// An address range (`10.0.0.0/8`, `::1/128`, or a single address).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpNet {
    pub addr: std::net::IpAddr,
    pub prefix: u8,
}

impl IpNet {
    pub fn contains(&self, ip: std::net::IpAddr) -> bool {
        use std::net::IpAddr;
        match (self.addr, ip) {
            (IpAddr::V4(n), IpAddr::V4(i)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(n) & mask == u32::from(i) & mask
            }
            (IpAddr::V6(n), IpAddr::V6(i)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(n) & mask == u128::from(i) & mask
            }
            (IpAddr::V6(_), IpAddr::V4(i)) => self.contains(IpAddr::V6(i.to_ipv6_mapped())),
            _ => false,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct LimitsConfig {
    pub per_ip: Option<Rate>,
    pub trusted_proxies: Vec<IpNet>,
    pub redis: Option<RedisConfig>,
    pub default_max_tokens: u64,
    pub per_ip_max_tracked: usize,
}

#[derive(Debug, Clone, PartialEq)]
pub struct HealthConfig {
    pub active: bool,
    pub path: String,
    pub interval: Duration,
    pub timeout: Duration,
    pub unhealthy_threshold: u32,
    pub healthy_threshold: u32,
    pub check_model: bool,
    /// Passive: this many failures within `fail_timeout` eject a replica (0 = never).
    pub max_fails: u32,
    pub fail_timeout: Duration,
    pub max_ejection_percent: f64,
    pub max_ejection_time: Duration,
}

#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    pub admin_listen: SocketAddr,
    pub admin_token_env: String,
    pub max_body_bytes: usize,
    pub drain_timeout: Duration,
    pub header_read_timeout: Duration,
    pub body_read_timeout: Duration,
    pub send_timeout: Duration,
    pub max_header_bytes: usize,
    pub max_headers: usize,
    /// Most client connections held at once; `None`: as many as the open-file limit allows
    /// (`crate::descriptors`).
    pub max_connections: Option<usize>,
    pub audit_log: Option<std::path::PathBuf>,
    pub tls: Option<TlsConfig>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsConfig {
    pub cert: std::path::PathBuf,
    pub key: std::path::PathBuf,
}

#[derive(Debug, Clone)]
pub struct UpstreamConfig {
    pub connect_timeout: Duration,
    pub response_head_timeout: Duration,
    pub idle_chunk_timeout: Duration,
    pub pool_idle_timeout: Duration,
    pub retries: u32,
    pub ewma_decay: Duration,
    /// `Authorization` sent to replicas (from `upstream.api_key_env`), marked sensitive.
    pub authorization: Option<http::HeaderValue>,
}

/// How a version's replicas share its traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BalancerKind {
    P2cEwma,
    LeastInflight,
    RoundRobin,
    WeightedRoundRobin,
}

impl BalancerKind {
    pub const ALL: [Self; 4] = [
        Self::P2cEwma,
        Self::LeastInflight,
        Self::RoundRobin,
        Self::WeightedRoundRobin,
    ];
    pub fn as_str(self) -> &'static str {
        match self {
            Self::P2cEwma => "p2c_ewma",
            Self::LeastInflight => "least_inflight",
            Self::RoundRobin => "round_robin",
            Self::WeightedRoundRobin => "weighted_round_robin",
        }
    }
    /// Whether replica weights change this balancer's choice.
    pub fn uses_weights(self) -> bool {
        self != Self::RoundRobin
    }
}

/// The per-model wait for a free replica slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueConfig {
    /// Requests that may wait at once; 0 = no waiting (503 at once when every replica is full).
    pub max_size: usize,
    pub timeout: Duration,
}

#[derive(Debug, Clone)]
pub struct ModelConfig {
    pub name: String,
    pub aliases: Vec<String>,
    pub balancer: BalancerKind,
    pub queue: QueueConfig,
    /// Global request limit of the model over all callers.
    pub rate: Option<Rate>,
    /// `<deploy_dir>/current -> <version>` names the stable version.
    pub deploy_dir: Option<std::path::PathBuf>,
    pub canary: Option<CanaryConfig>,
    /// Index into `versions` of the version that takes the traffic the canary does not.
    pub stable: usize,
    pub versions: Vec<VersionConfig>,
}

#[derive(Debug, Clone)]
pub struct VersionConfig {
    pub name: String,
    pub replicas: Vec<ReplicaConfig>,
}

#[derive(Debug, Clone)]
pub struct ReplicaConfig {
    /// Stable identity across reloads: `http://host:port`. Live per-replica state is keyed by it.
    pub key: String,
    /// `host:port`, used to connect, as the Host header and as the replica's label.
    pub authority: Authority,
    pub weight: u32,
    /// Most requests in flight at once; 0 = unlimited.
    pub max_inflight: u32,
}

/// What keeps a client on the same arm of a canary split.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Sticky {
    /// Each request is drawn at random.
    None,
    /// The caller's API key (its configured name): one key, one arm.
    ApiKey,
    /// A request header's value (e.g. a user or session id).
    Header(http::header::HeaderName),
}

#[derive(Debug, Clone, PartialEq)]
pub struct CanaryConfig {
    /// Index into `ModelConfig::versions`.
    pub version: usize,
    pub weight_percent: f64,
    pub sticky: Sticky,
    pub guard: Option<GuardConfig>,
    /// Weights to step through while the guard stays green.
    pub steps: Vec<f64>,
    pub step_interval: Duration,
}

/// The canary's error and latency budget over a sliding window.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GuardConfig {
    pub max_error_rate: f64,
    pub max_ttft_p95_ms: Option<f64>,
    pub min_requests: u64,
    pub window: Duration,
}
