//! The admin listener (its own port, never the data port): liveness and readiness without a
//! token, and the operator API under `/admin/` behind a bearer token read from the environment
//! variable named by `server.admin_token_env`.
//!
//! - `GET  /ui/`                          the operator's status page (static; data via the API)
//! - `GET  /healthz`                      process alive
//! - `GET  /metrics`                      Prometheus text format
//! - `GET  /readyz`                       not draining and every model has a routable replica
//! - `GET  /admin/replicas`               per replica: models, health, load, ejections, drain
//! - `POST /admin/replicas/{id}/drain`    no new requests; in-flight ones finish
//! - `POST /admin/replicas/{id}/enable`   back in rotation
//! - `GET  /admin/models`                 versions, stable, canary and weight, per-version figures
//! - `PUT  /admin/models/{model}/canary`  `{"version", "weight_percent"[, "sticky"]}`
//! - `POST /admin/models/{model}/promote` the canary becomes stable (switches `current`)
//! - `POST /admin/models/{model}/rollback` canary weight 0 at once
//! - `POST /admin/reload`                 re-read the config file (400 with every error)
//! - `GET  /admin/status`                 uptime, config source, last reload, connections and
//!   their cap
//!
//! Every change goes through `control`: validated, written back to the config file, published
//! like a reload, and audited with the token's name (the env var holds `token` or
//! `name:token`).

use std::collections::BTreeMap;

use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use hyper::body::Incoming;

use crate::balance::Endpoint;
use crate::clock::now_ns;
use crate::control::{self, Change, ChangeError};
use crate::error::error_response;
use crate::proxy::body::ResponseBody;
use crate::state::AppState;

pub async fn handle(app: &AppState, req: Request<Incoming>) -> Response<ResponseBody> {
    let path = req.uri().path().to_owned();
    let method = req.method().clone();
    match (&method, path.as_str()) {
        (&Method::GET, "/healthz") => json(StatusCode::OK, serde_json::json!({"status": "ok"})),
        (&Method::GET, "/") => {
            let mut r = Response::new(ResponseBody::empty());
            *r.status_mut() = StatusCode::FOUND;
            r.headers_mut()
                .insert(header::LOCATION, HeaderValue::from_static("/ui/"));
            r
        }
        (&Method::GET, "/ui" | "/ui/") => asset(UI_HTML, "text/html; charset=utf-8"),
        (&Method::GET, "/ui/app.js") => asset(UI_JS, "text/javascript; charset=utf-8"),
        (&Method::GET, "/ui/app.css") => asset(UI_CSS, "text/css; charset=utf-8"),
        (&Method::GET, "/metrics") => {
            crate::metrics::refresh(app);
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
            let who = match authorize(app, &req) {
                Ok(who) => who,
                Err(denied) => return *denied,
            };
            let limited = http_body_util::Limited::new(req.into_body(), 64 * 1024);
            let body = match http_body_util::BodyExt::collect(limited).await {
                Ok(b) => b.to_bytes(),
                Err(_) => {
                    return error_response(
                        StatusCode::BAD_REQUEST,
                        "Admin request body unreadable or larger than 64 KiB.",
                        "invalid_request_error",
                        Some("invalid_body"),
                    )
                }
            };
            admin_api(app, &method, p, &body, &who).await
        }
        _ => not_found(
            "Unknown admin path. See /healthz, /readyz, /metrics, /admin/replicas, /admin/models.",
        ),
    }
}

async fn admin_api(
    app: &AppState,
    method: &Method,
    path: &str,
    body: &[u8],
    who: &str,
) -> Response<ResponseBody> {
    // Segments arrive percent-encoded (a replica id's ':' as %3A, from the status page).
    let decoded: Vec<String> = path
        .trim_start_matches("/admin/")
        .split('/')
        .map(crate::proxy::percent_decode)
        .collect();
    let parts: Vec<&str> = decoded.iter().map(String::as_str).collect();
    match (method, parts.as_slice()) {
        (&Method::GET, ["models"]) => json(StatusCode::OK, models_json(app)),
        (&Method::GET, ["status"]) => json(StatusCode::OK, status_json(app)),
        (&Method::POST, ["reload"]) => match control::reload(app, "admin") {
            Ok(r) => json(
                StatusCode::OK,
                serde_json::json!({"result": "ok", "changed": r.changed,
                    "restart_required": r.restart_required}),
            ),
            Err(errors) => json(
                StatusCode::BAD_REQUEST,
                serde_json::json!({"error": {"message": "The configuration is invalid; nothing changed.",
                    "type": "invalid_request_error", "code": "invalid_config", "errors": errors}}),
            ),
        },
        (&Method::PUT, ["models", model, "canary"]) => {
            #[derive(serde::Deserialize)]
            #[serde(deny_unknown_fields)]
            struct Body {
                version: String,
                weight_percent: f64,
                sticky: Option<String>,
            }
            let parsed: Body = match serde_json::from_slice(body) {
                Ok(b) => b,
                Err(e) => {
                    return error_response(
                        StatusCode::BAD_REQUEST,
                        &format!(
                            "Expected {{\"version\": \"...\", \"weight_percent\": 0..100}}: {e}"
                        ),
                        "invalid_request_error",
                        Some("invalid_body"),
                    )
                }
            };
            let change = Change::Set {
                version: parsed.version,
                weight_percent: parsed.weight_percent,
                sticky: parsed.sticky,
            };
            change_answer(control::change_canary(app, model, change, who, None).await)
        }
        (&Method::POST, ["models", model, action @ ("promote" | "rollback")]) => {
            let change = if *action == "promote" {
                Change::Promote
            } else {
                Change::Rollback
            };
            change_answer(control::change_canary(app, model, change, who, None).await)
        }
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
        (_, ["replicas" | "models" | "status" | "reload"])
        | (_, ["replicas", _, "drain" | "enable"])
        | (_, ["models", _, "canary" | "promote" | "rollback"]) => {
            let mut r = error_response(
                StatusCode::METHOD_NOT_ALLOWED,
                "Method not allowed on this admin path.",
                "invalid_request_error",
                Some("method_not_allowed"),
            );
            let allow = match parts.as_slice() {
                ["replicas" | "models" | "status"] => "GET",
                [_, _, "canary"] => "PUT",
                _ => "POST",
            };
            r.headers_mut()
                .insert(header::ALLOW, HeaderValue::from_static(allow));
            r
        }
        _ => not_found("Unknown admin path."),
    }
}

fn change_answer(r: Result<serde_json::Value, ChangeError>) -> Response<ResponseBody> {
    match r {
        Ok(after) => json(StatusCode::OK, after),
        Err(ChangeError::NotFound(m)) => not_found(&format!("No model `{m}`.")),
        Err(ChangeError::Invalid(errors)) => json(
            StatusCode::BAD_REQUEST,
            serde_json::json!({"error": {"message": errors.join("; "),
                "type": "invalid_request_error", "code": "invalid_change", "errors": errors}}),
        ),
        Err(ChangeError::Failed(why)) => error_response(
            StatusCode::INTERNAL_SERVER_ERROR,
            &why,
            "api_error",
            Some("change_failed"),
        ),
    }
}

/// Every model: versions, stable, canary, and each version's figures over the last minute.
pub fn models_json(app: &AppState) -> serde_json::Value {
    let snap = app.snapshot();
    let models: Vec<_> = snap
        .config
        .models
        .iter()
        .map(|m| {
            let route = snap.routes.get(&m.name);
            let versions: Vec<_> = m
                .versions
                .iter()
                .enumerate()
                .map(|(i, v)| {
                    let stats = route
                        .and_then(|r| r.versions.get(i))
                        .map(|p| p.stats.summary(std::time::Duration::from_secs(60)))
                        .unwrap_or_default();
                    serde_json::json!({
                        "name": v.name,
                        "replicas": v.replicas.iter().map(|r| r.authority.as_str()).collect::<Vec<_>>(),
                        "last_minute": {
                            "requests": stats.requests,
                            "errors": stats.errors,
                            "error_rate": stats.error_rate,
                            "ttft_p50_ms": stats.ttft_p50_ms,
                            "ttft_p95_ms": stats.ttft_p95_ms,
                        },
                    })
                })
                .collect();
            let canary = m.canary.as_ref().map(|c| {
                serde_json::json!({
                    "version": m.versions.get(c.version).map(|v| v.name.clone()),
                    "weight_percent": if c.version == m.stable { 0.0 } else { c.weight_percent },
                    "sticky": match &c.sticky {
                        crate::config::Sticky::None => "none".to_owned(),
                        crate::config::Sticky::ApiKey => "api_key".to_owned(),
                        crate::config::Sticky::Header(h) => format!("header:{h}"),
                    },
                    "guard": c.guard.map(|g| serde_json::json!({
                        "max_error_rate": g.max_error_rate, "max_ttft_p95_ms": g.max_ttft_p95_ms,
                        "min_requests": g.min_requests, "window_seconds": g.window.as_secs(),
                    })),
                    "steps": c.steps,
                })
            });
            serde_json::json!({
                "name": m.name,
                "aliases": m.aliases,
                "stable": m.versions.get(m.stable).map(|v| v.name.clone()),
                "deploy_dir": m.deploy_dir.as_ref().map(|d| d.display().to_string()),
                "canary": canary,
                "versions": versions,
                "queue": route.map(|r| r.versions.iter().map(|p| p.queue.len()).sum::<usize>()),
            })
        })
        .collect();
    serde_json::json!({"models": models})
}

fn status_json(app: &AppState) -> serde_json::Value {
    let source = app
        .control
        .source
        .lock()
        .map(|s| s.path.as_ref().map(|p| p.display().to_string()))
        .unwrap_or(None);
    let last = app
        .control
        .last_reload
        .lock()
        .map(|r| r.clone())
        .unwrap_or_default();
    serde_json::json!({
        "uptime_seconds": app.started.elapsed().as_secs(),
        "config_file": source,
        "draining": app.is_draining(),
        "ready": app.is_ready(),
        "last_reload": last,
        "client_connections": app.descriptors.clients(),
        "client_connections_limit": app.client_cap(),
        "open_file_limit": app.descriptors.limit(),
    })
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
            serde_json::json!({"model": &*model, "version": &*version, "weight": weight})
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

/// Checks `Authorization: Bearer <token>` against the env var, in constant time. The var
/// holds `token` or `name:token`; the name (default "admin") is who the audit log records.
fn authorize(
    app: &AppState,
    req: &Request<Incoming>,
) -> Result<String, Box<Response<ResponseBody>>> {
    let var = &app.snapshot().config.server.admin_token_env;
    let configured = std::env::var(var).unwrap_or_default();
    let (who, expected) = match configured.split_once(':') {
        Some((name, token)) if !name.is_empty() => (name.to_owned(), token.to_owned()),
        _ => ("admin".to_owned(), configured),
    };
    if expected.is_empty() {
        return Err(Box::new(error_response(
            StatusCode::FORBIDDEN,
            &format!("The admin API is disabled: set the environment variable {var}."),
            "permission_error",
            Some("admin_disabled"),
        )));
    }
    let given = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    if crate::auth::constant_time_eq(given.as_bytes(), expected.as_bytes()) {
        return Ok(who);
    }
    let mut r = error_response(
        StatusCode::UNAUTHORIZED,
        "Missing or wrong admin token (Authorization: Bearer <token>).",
        "authentication_error",
        Some("invalid_admin_token"),
    );
    r.headers_mut()
        .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    Err(Box::new(r))
}

// The status page, embedded: no CDN, nothing fetched at run time. It holds no data; everything
// it shows comes from the admin API with the operator's token.
const UI_HTML: &str = include_str!("ui/index.html");
const UI_JS: &str = include_str!("ui/app.js");
const UI_CSS: &str = include_str!("ui/app.css");

fn asset(body: &'static str, content_type: &'static str) -> Response<ResponseBody> {
    let mut r = Response::new(ResponseBody::full(Bytes::from_static(body.as_bytes())));
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; \
             img-src 'self' data:; base-uri 'none'; form-action 'self'; frame-ancestors 'none'",
        ),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    crate::error::security_headers(h);
    r
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
    crate::error::security_headers(r.headers_mut());
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
