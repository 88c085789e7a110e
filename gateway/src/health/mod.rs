//! Active health checks: one prober task per replica, started by a supervisor that watches the
//! endpoint registry (so replicas added by a reload get one, removed ones stop). Probers only
//! publish (the replica's healthy flag, the end of a passive ejection); the request path never
//! waits on them. Passive outlier ejection lives with the replica (`balance/endpoint.rs`).

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio_util::sync::CancellationToken;

use crate::balance::Endpoint;
use crate::config::HealthConfig;
use crate::state::AppState;

/// Starts a prober for every replica that has none, until `stop`.
pub async fn supervise(app: Arc<AppState>, stop: CancellationToken) {
    loop {
        for ep in app.endpoints.all() {
            if !ep.probing.swap(true, Ordering::Relaxed) {
                tokio::spawn(probe_loop(app.clone(), ep, stop.clone()));
            }
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_millis(250)) => {}
        }
    }
}

async fn probe_loop(app: Arc<AppState>, ep: Arc<Endpoint>, stop: CancellationToken) {
    let mut ok_streak = 0u32;
    let mut fail_streak = 0u32;
    let mut seen_ejections = ep.ejections_total();
    loop {
        if ep.retired.load(Ordering::Relaxed) || stop.is_cancelled() {
            return;
        }
        let snapshot = app.snapshot();
        let cfg = snapshot.config.health.clone();
        let key = snapshot.config.upstream.authorization.clone();
        drop(snapshot);
        if cfg.active {
            // Successes count toward ending an ejection only once it has begun.
            if ep.ejections_total() != seen_ejections {
                seen_ejections = ep.ejections_total();
                ok_streak = 0;
            }
            match probe(&ep, &cfg, key.as_ref()).await {
                Ok(()) => {
                    ok_streak = ok_streak.saturating_add(1);
                    fail_streak = 0;
                    if ok_streak >= cfg.healthy_threshold {
                        if !ep.is_healthy() {
                            tracing::info!(replica = %ep.authority, "replica healthy");
                            ep.set_healthy(true);
                        }
                        ep.clear_ejection();
                    }
                }
                // The gateway, not the replica, ran out of descriptors or ports: no verdict.
                Err(Probe::Local(why)) => {
                    tracing::warn!(replica = %ep.authority, reason = %why, "health check skipped");
                }
                Err(Probe::Failed(why)) => {
                    fail_streak = fail_streak.saturating_add(1);
                    ok_streak = 0;
                    ep.set_last_error(format!("health check: {why}"));
                    if fail_streak >= cfg.unhealthy_threshold && ep.is_healthy() {
                        tracing::warn!(replica = %ep.authority, reason = %why, "replica unhealthy");
                        ep.set_healthy(false);
                    }
                }
            }
        } else if !ep.is_healthy() {
            // Probing switched off: its old verdict no longer holds.
            ep.set_healthy(true);
        }
        let pause = if cfg.active {
            cfg.interval
        } else {
            Duration::from_secs(1)
        };
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(pause) => {}
        }
    }
}

/// One check: `GET {path}` must answer 2xx; with `check_model`, `GET /v1/models` must list one
/// of the names the replica is configured to serve.
/// `key`: the replicas' own key (`upstream.api_key_env`): vLLM guards `/v1/models` with it.
pub async fn probe(
    ep: &Endpoint,
    cfg: &HealthConfig,
    key: Option<&http::HeaderValue>,
) -> Result<(), Probe> {
    let check = async {
        let mut conn = match ep.connect(cfg.timeout).await {
            Ok(c) => c,
            Err(e @ crate::upstream::ConnectError::Local(_)) => {
                return Err(Probe::Local(e.to_string()))
            }
            Err(e) => return Err(Probe::Failed(e.to_string())),
        };
        let status = get(&mut conn, ep, &cfg.path, key).await?.0;
        if !status.is_success() {
            return Err(format!("{} answered {status}", cfg.path).into());
        }
        if cfg.check_model {
            let (status, body) = get(&mut conn, ep, "/v1/models", key).await?;
            if !status.is_success() {
                return Err(format!("/v1/models answered {status}").into());
            }
            let expected = ep.expected_models();
            let served = served_models(&body);
            if !expected.is_empty() && !served.iter().any(|m| expected.contains(m)) {
                return Err(format!("serves {served:?}, expected one of {expected:?}").into());
            }
        }
        Ok(())
    };
    match tokio::time::timeout(cfg.timeout, check).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(why)) => Err(why),
        Err(_) => Err(Probe::Failed(format!("no answer within {:?}", cfg.timeout))),
    }
}

/// Why a probe gave no pass.
#[derive(Debug)]
pub enum Probe {
    /// The replica failed the check.
    Failed(String),
    /// The gateway had no descriptor or port to check with: says nothing of the replica.
    Local(String),
}

impl From<String> for Probe {
    fn from(why: String) -> Self {
        Self::Failed(why)
    }
}

/// Largest health or model-list answer read.
const MAX_PROBE_BODY: usize = 1024 * 1024;

/// `GET path` on the probe's connection (`health.path` was checked at config load).
async fn get(
    conn: &mut crate::upstream::Conn,
    ep: &Endpoint,
    path: &str,
    key: Option<&http::HeaderValue>,
) -> Result<(http::StatusCode, Bytes), String> {
    conn.get(&ep.host_header, path, key, MAX_PROBE_BODY)
        .await
        .map_err(|e| e.to_string())
}

/// Model ids listed by an OpenAI `/v1/models` answer.
fn served_models(body: &[u8]) -> Vec<String> {
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(body) else {
        return Vec::new();
    };
    v.get("data")
        .and_then(|d| d.as_array())
        .map(|a| {
            a.iter()
                .filter_map(|m| m.get("id").and_then(|i| i.as_str()).map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn model_ids_are_read_from_a_models_list() {
        let body = br#"{"object":"list","data":[{"id":"a","root":"/m/a"},{"id":"b"}]}"#;
        assert_eq!(served_models(body), ["a", "b"]);
        assert!(served_models(b"not json").is_empty());
        assert!(served_models(br#"{"data":5}"#).is_empty());
    }
}
