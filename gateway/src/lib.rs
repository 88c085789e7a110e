//! An OpenAI-compatible inference gateway: routes `/v1/*` requests by their `model` to replica
//! pools, streams answers back untouched, and survives bad input, bad replicas and shutdown.
//!
//! Module map: `config` (file -> validated runtime types), `state` (the swappable snapshot),
//! `server` (listeners, drain), `h1` (the HTTP/1.1 server), `transport` (the client socket,
//! TCP or TLS), `codec` (HTTP/1.1 wire rules), `proxy` (the request path, one file per
//! stage), `balance` (replica choice, live per-replica state, wait queues), `health` (active
//! probes), `auth` (API keys), `limits` (rate limits and token budgets, local or in Redis),
//! `sse` (reading usage from responses), `json` (finding a JSON string's end), `clock` (one clock read per poll), `descriptors` (the open-file budget and the client
//! connection cap), `metrics`, `admin` (the admin listener's API),
//! `error`, `demo`.

pub mod admin;
pub mod auth;
pub mod balance;
pub mod canary;
pub mod clock;
pub mod codec;
pub mod config;
pub mod control;
pub mod demo;
pub mod descriptors;
pub mod error;
pub mod fields;
pub mod h1;
pub mod h2;
pub mod health;
pub mod json;
pub mod limits;
pub mod logs;
pub mod lookup;
pub mod metrics;
pub mod proxy;
pub mod server;
pub mod sse;
pub mod state;
pub mod tls;
pub mod transport;
pub mod upstream;

pub use server::{BoundAddrs, Gateway};

use tokio_util::sync::CancellationToken;

/// Serves `config` until `shutdown` is cancelled, then drains and returns.
pub async fn run(config: config::Config, shutdown: CancellationToken) -> anyhow::Result<()> {
    Gateway::bind(config)?.serve(shutdown).await
}
