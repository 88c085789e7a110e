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
    pub models: Vec<ModelConfig>,
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
    pub max_header_bytes: usize,
    pub max_headers: usize,
}

#[derive(Debug, Clone)]
pub struct UpstreamConfig {
    pub connect_timeout: Duration,
    pub response_head_timeout: Duration,
    pub idle_chunk_timeout: Duration,
    pub pool_idle_timeout: Duration,
    pub retries: u32,
}

/// How a version's replicas share its traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BalancerKind {
    RoundRobin,
    WeightedRoundRobin,
}

impl BalancerKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::RoundRobin => "round_robin",
            Self::WeightedRoundRobin => "weighted_round_robin",
        }
    }
}

#[derive(Debug, Clone)]
pub struct ModelConfig {
    pub name: String,
    pub aliases: Vec<String>,
    pub balancer: BalancerKind,
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
}
