//! One replica's live state — in-flight count and its own pool of idle HTTP/1.1 connections —
//! keyed by the replica's stable id (`http://host:port`) and kept across config reloads.
//!
//! Why a pool per replica rather than hyper-util's shared client: the balancer already chose
//! the replica, so the pool needs no lookup by host and no shared lock across replicas, and an
//! idle connection is never reused once older than `pool_idle_timeout` (kept below the
//! replica's keep-alive, 5 s on vLLM), so we never write into a socket the replica is closing.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::uri::Authority;
use http::HeaderValue;
use http_body_util::Full;
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use crate::config::ReplicaConfig;

/// The sending half of one upstream HTTP/1.1 connection.
pub type Sender = http1::SendRequest<Full<Bytes>>;

/// Idle connections kept per replica; more are closed when they come back.
const MAX_IDLE_PER_REPLICA: usize = 1024;

/// Why no connection to a replica could be had. Always safe to retry elsewhere: nothing was sent.
#[derive(Debug)]
pub enum ConnectError {
    Timeout,
    Io(std::io::Error),
    Handshake(hyper::Error),
}

impl std::fmt::Display for ConnectError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Timeout => f.write_str("connect timed out"),
            Self::Io(e) => write!(f, "connect failed: {e}"),
            Self::Handshake(e) => write!(f, "handshake failed: {e}"),
        }
    }
}

struct IdleConn {
    sender: Sender,
    since: Instant,
}

pub struct Endpoint {
    pub key: String,
    pub authority: Authority,
    /// `Host` for requests to this replica, and the `x-gateway-replica` value.
    pub host_header: HeaderValue,
    inflight: AtomicUsize,
    idle: Mutex<VecDeque<IdleConn>>,
}

impl Endpoint {
    pub fn new(r: &ReplicaConfig) -> Self {
        Self {
            key: r.key.clone(),
            authority: r.authority.clone(),
            host_header: HeaderValue::from_str(r.authority.as_str())
                .unwrap_or_else(|_| HeaderValue::from_static("replica")),
            inflight: AtomicUsize::new(0),
            idle: Mutex::new(VecDeque::new()),
        }
    }

    /// Requests sent to this replica whose response body has not ended yet.
    pub fn inflight(&self) -> usize {
        self.inflight.load(Ordering::Relaxed)
    }

    /// Idle connections currently pooled.
    pub fn idle_connections(&self) -> usize {
        self.idle.lock().map(|q| q.len()).unwrap_or(0)
    }

    /// A ready connection: the most recently used idle one that is young enough, or a new one.
    pub async fn checkout(
        &self,
        connect_timeout: Duration,
        pool_idle_timeout: Duration,
    ) -> Result<Sender, ConnectError> {
        loop {
            let idle = {
                let Ok(mut q) = self.idle.lock() else { break };
                q.pop_back()
            };
            let Some(mut idle) = idle else { break };
            if idle.since.elapsed() >= pool_idle_timeout || idle.sender.is_closed() {
                continue;
            }
            if idle.sender.is_ready() {
                return Ok(idle.sender);
            }
            // Returned at the end of its last body; hyper may not have marked it ready yet.
            if let Ok(Ok(())) =
                tokio::time::timeout(Duration::from_millis(50), idle.sender.ready()).await
            {
                return Ok(idle.sender);
            }
        }
        self.connect(connect_timeout).await
    }

    async fn connect(&self, connect_timeout: Duration) -> Result<Sender, ConnectError> {
        let connect = async {
            let stream = TcpStream::connect(self.authority.as_str())
                .await
                .map_err(ConnectError::Io)?;
            // Small SSE chunks must go out at once, not wait for Nagle.
            let _ = stream.set_nodelay(true);
            http1::Builder::new()
                .handshake::<_, Full<Bytes>>(TokioIo::new(stream))
                .await
                .map_err(ConnectError::Handshake)
        };
        let (sender, conn) = tokio::time::timeout(connect_timeout, connect)
            .await
            .map_err(|_| ConnectError::Timeout)??;
        tokio::spawn(async move {
            // Ends when the replica closes, on error, or once every `Sender` is dropped.
            let _ = conn.await;
        });
        Ok(sender)
    }

    /// Gives back a connection whose response body ended cleanly.
    pub fn checkin(&self, sender: Sender) {
        if sender.is_closed() {
            return;
        }
        if let Ok(mut q) = self.idle.lock() {
            if q.len() < MAX_IDLE_PER_REPLICA {
                q.push_back(IdleConn {
                    sender,
                    since: Instant::now(),
                });
            }
        }
    }
}

/// Counts a request against its replica from send until its response body ends or is dropped.
pub struct InflightGuard(Arc<Endpoint>);

impl InflightGuard {
    pub fn new(ep: Arc<Endpoint>) -> Self {
        ep.inflight.fetch_add(1, Ordering::Relaxed);
        Self(ep)
    }
    pub fn endpoint(&self) -> &Arc<Endpoint> {
        &self.0
    }
}

impl Drop for InflightGuard {
    fn drop(&mut self) {
        self.0.inflight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Every replica the gateway knows, by stable id. Snapshots take their `Arc<Endpoint>`s from
/// here, so a reload that keeps a replica keeps its counters and its warm connections.
#[derive(Default)]
pub struct EndpointRegistry {
    map: Mutex<HashMap<String, Arc<Endpoint>>>,
}

impl EndpointRegistry {
    pub fn get_or_insert(&self, r: &ReplicaConfig) -> Arc<Endpoint> {
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        map.entry(r.key.clone())
            .or_insert_with(|| Arc::new(Endpoint::new(r)))
            .clone()
    }

    /// Forgets replicas no longer in the configuration (in-flight requests keep their `Arc`).
    pub fn retain(&self, keep: &dyn Fn(&str) -> bool) {
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        map.retain(|k, _| keep(k));
    }

    pub fn len(&self) -> usize {
        self.map.lock().map(|m| m.len()).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn endpoints(n: usize) -> Vec<Arc<Endpoint>> {
        (0..n)
            .map(|i| {
                let authority: Authority = format!("127.0.0.1:{}", 1000 + i).parse().unwrap();
                Arc::new(Endpoint::new(&ReplicaConfig {
                    key: format!("http://{authority}"),
                    authority,
                    weight: 1,
                }))
            })
            .collect()
    }

    #[test]
    fn registry_keeps_identity_across_lookups() {
        let reg = EndpointRegistry::default();
        let authority: Authority = "127.0.0.1:1".parse().unwrap();
        let r = ReplicaConfig {
            key: "http://127.0.0.1:1".into(),
            authority,
            weight: 1,
        };
        let a = reg.get_or_insert(&r);
        let g = InflightGuard::new(a.clone());
        let b = reg.get_or_insert(&r);
        assert!(Arc::ptr_eq(&a, &b));
        assert_eq!(b.inflight(), 1);
        drop(g);
        assert_eq!(b.inflight(), 0);
        reg.retain(&|_| false);
        assert!(reg.is_empty());
    }

    #[tokio::test]
    async fn refused_connection_is_a_connect_error() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        let ep = Endpoint::new(&ReplicaConfig {
            key: format!("http://{addr}"),
            authority: addr.to_string().parse().unwrap(),
            weight: 1,
        });
        let err = ep
            .checkout(Duration::from_secs(1), Duration::from_secs(4))
            .await
            .unwrap_err();
        assert!(matches!(err, ConnectError::Io(_)), "{err}");
    }
}
