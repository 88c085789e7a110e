//! Replica selection. Each algorithm is one file behind the `Balancer` trait; live per-replica
//! state (`endpoint.rs`) sits outside the config snapshot so reloads keep it.

pub mod endpoint;
mod round_robin;
mod weighted;

use std::sync::Arc;

use http::HeaderValue;

pub use endpoint::{Endpoint, EndpointRegistry, InflightGuard};
pub use round_robin::RoundRobin;
pub use weighted::SmoothWeighted;

use crate::config::{BalancerKind, VersionConfig};

/// Picks one replica of a pool, never one already tried for this request.
pub trait Balancer: Send + Sync {
    /// Index into `endpoints`, or `None` when every replica was tried.
    fn pick(&self, endpoints: &[Arc<Endpoint>], tried: &[usize]) -> Option<usize>;
}

/// The replicas of one model version and how traffic is spread across them.
pub struct Pool {
    pub version: String,
    /// `x-gateway-model-version`, built once.
    pub version_header: HeaderValue,
    pub endpoints: Vec<Arc<Endpoint>>,
    balancer: Box<dyn Balancer>,
}

impl Pool {
    pub fn new(v: &VersionConfig, kind: BalancerKind, registry: &EndpointRegistry) -> Self {
        let endpoints: Vec<_> = v
            .replicas
            .iter()
            .map(|r| registry.get_or_insert(r))
            .collect();
        let balancer: Box<dyn Balancer> = match kind {
            BalancerKind::RoundRobin => Box::new(RoundRobin::default()),
            BalancerKind::WeightedRoundRobin => Box::new(SmoothWeighted::new(
                v.replicas.iter().map(|r| r.weight).collect(),
            )),
        };
        Self {
            version: v.name.clone(),
            version_header: HeaderValue::from_str(&v.name)
                .unwrap_or_else(|_| HeaderValue::from_static("unknown")),
            endpoints,
            balancer,
        }
    }

    pub fn pick(&self, tried: &[usize]) -> Option<usize> {
        self.balancer.pick(&self.endpoints, tried)
    }
}
