//! The admin listener (its own port, never the data port): liveness and readiness without a
//! token, and the operator API under `/admin/` behind a bearer token read from the environment
//! variable named by `server.admin_token_env`.
//!
//! - `GET  /healthz`                      process alive
//! - `GET  /metrics`                      Prometheus text format
//! - `GET  /readyz`                       not draining and every model has a routable replica
//! - `GET  /admin/replicas`               per replica: models, health, load, ejections, drain
//! - `POST /admin/replicas/{id}/drain`    no new requests; in-flight ones finish
//! - `POST /admin/replicas/{id}/enable`   back in rotation

use std::collections::BTreeMap;

use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use hyper::body::Incoming;

use crate::balance::{now_ns, Endpoint};
use crate::error::error_response;
use crate::proxy::body::ResponseBody;
use crate::state::AppState;

pub fn handle(app: &AppState, req: Request<Incoming>) -> Response<ResponseBody> {
    let path = req.uri().path().to_owned();
    let method = req.method().clone();
    match (&method, path.as_str()) {
        (&Method::GET, "/healthz") => json(StatusCode::OK, serde_json::json!({"status": "ok"})),
        (&Method::GET, "/metrics") => {
            let mut r = Response::new(ResponseBody::full(Bytes::from(app.metrics.render())));
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
            );
            r
        }
        (&Method::GET, "/readyz") => {
            if app.is_draining() {
                json(
                    StatusCode::SERVICE_UNAVAILABLE,
                    serde_json::json!({"status": "draining"}),
                )
            } else if !app.is_ready() {
                json(
                    StatusCode::SERVICE_UNAVAILABLE,
                    serde_json::json!({"status": "no_routable_replica"}),
                )
            } else {
                json(StatusCode::OK, serde_json::json!({"status": "ready"}))
            }
        }
        (_, p) if p.starts_with("/admin/") => {
            if let Some(denied) = authorize(app, &req) {
                return denied;
            }
            admin_api(app, &method, p)
        }
        _ => not_found("Unknown admin path. See /healthz, /readyz, /metrics, /admin/replicas."),
    }
}

fn admin_api(app: &AppState, method: &Method, path: &str) -> Response<ResponseBody> {
    let parts: Vec<&str> = path.trim_start_matches("/admin/").split('/').collect();
    match (method, parts.as_slice()) {
        (&Method::GET, ["replicas"]) => {
            let list: Vec<_> = app
                .endpoints
                .all()
                .iter()
                .map(|ep| replica_json(app, ep))
                .collect();
            json(StatusCode::OK, serde_json::json!({"replicas": list}))
        }
        (&Method::POST, ["replicas", id, action @ ("drain" | "enable")]) => {
            let Some(ep) = app.endpoints.find(id) else {
                return not_found(&format!(
                    "No replica `{id}`; ids are host:port as listed by GET /admin/replicas."
                ));
            };
            let drain = *action == "drain";
            ep.set_drained(drain);
            tracing::info!(replica = %ep.authority, drained = drain, "operator changed replica");
            json(StatusCode::OK, replica_json(app, &ep))
        }
        (_, ["replicas"]) | (_, ["replicas", _, "drain" | "enable"]) => {
            let mut r = error_response(
                StatusCode::METHOD_NOT_ALLOWED,
                "Method not allowed on this admin path.",
                "invalid_request_error",
                Some("method_not_allowed"),
            );
            let allow = if parts.len() == 1 { "GET" } else { "POST" };
            r.headers_mut()
                .insert(header::ALLOW, HeaderValue::from_static(allow));
            r
        }
        _ => not_found("Unknown admin path."),
    }
}

fn replica_json(app: &AppState, ep: &Endpoint) -> serde_json::Value {
    let snap = app.snapshot();
    let now = now_ns();
    let decay = snap.config.upstream.ewma_decay;
    // Which model versions this replica serves (a replica may serve several).
    let mut models = BTreeMap::new();
    for route in snap.routes.values() {
        for pool in &route.versions {
            for (i, e) in pool.endpoints.iter().enumerate() {
                if e.key == ep.key {
                    models.insert(
                        (route.model.clone(), pool.version.clone()),
                        pool.weights.get(i).copied().unwrap_or(1),
                    );
                }
            }
        }
    }
    let models: Vec<_> = models
        .into_iter()
        .map(|((model, version), weight)| {
            serde_json::json!({"model": model, "version": version, "weight": weight})
        })
        .collect();
    serde_json::json!({
        "id": ep.authority.as_str(),
        "url": ep.key,
        "models": models,
        "healthy": ep.is_healthy(),
        "ejected": ep.is_ejected(now),
        "ejected_for_seconds": ep.ejected_for(now).map(|d| d.as_secs_f64()),
        "ejections": ep.ejections_total(),
        "drained": ep.is_drained(),
        "routable": ep.is_routable(now),
        "inflight": ep.inflight(),
        "max_inflight": ep.max_inflight(),
        "ewma_ms": ep.ewma_ns(now, decay) / 1e6,
        "idle_connections": ep.idle_connections(),
        "last_error": ep.last_error(),
    })
}

/// Checks `Authorization: Bearer <token>` against the env var, in constant time; returns the
/// refusal, if any.
fn authorize(app: &AppState, req: &Request<Incoming>) -> Option<Response<ResponseBody>> {
    let var = &app.snapshot().config.server.admin_token_env;
    let expected = std::env::var(var).unwrap_or_default();
    if expected.is_empty() {
        return Some(error_response(
            StatusCode::FORBIDDEN,
            &format!("The admin API is disabled: set the environment variable {var}."),
            "permission_error",
            Some("admin_disabled"),
        ));
    }
    let given = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    if constant_time_eq(given.as_bytes(), expected.as_bytes()) {
        return None;
    }
    let mut r = error_response(
        StatusCode::UNAUTHORIZED,
        "Missing or wrong admin token (Authorization: Bearer <token>).",
        "authentication_error",
        Some("invalid_admin_token"),
    );
    r.headers_mut()
        .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    Some(r)
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn json(status: StatusCode, v: serde_json::Value) -> Response<ResponseBody> {
    let mut r = Response::new(ResponseBody::full(Bytes::from(v.to_string())));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

fn not_found(msg: &str) -> Response<ResponseBody> {
    error_response(
        StatusCode::NOT_FOUND,
        msg,
        "invalid_request_error",
        Some("unknown_url"),
    )
}

#[cfg(test)]
mod tests {
    use super::constant_time_eq;

    #[test]
    fn token_comparison() {
        assert!(constant_time_eq(b"secret", b"secret"));
        assert!(!constant_time_eq(b"secret", b"secreT"));
        assert!(!constant_time_eq(b"secret", b"secret2"));
        assert!(!constant_time_eq(b"", b"x"));
    }
}
