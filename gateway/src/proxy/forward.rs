//! Stage 7: send the request to a replica of the chosen version and pass its answer back.
//!
//! Retry rule: another replica is tried only while nothing of a response has been received —
//! the connection could not be made, broke before the response head, or the replica answered
//! 502/503 (it did not take the request). A 4xx is never retried, and nothing is retried once
//! a response head is being forwarded: a stream cut mid-way reaches the client cut.

use bytes::{Bytes, BytesMut};
use http::header::{self, HeaderName, HeaderValue};
use http::uri::PathAndQuery;
use http::{Response, StatusCode};

use std::future::Future;
use std::sync::Arc;
use std::task::Poll;

use tokio::time::Instant;

use super::body::{BodyCtx, MeterSpec, ResponseBody, UpstreamBody};
use super::canary::VersionChoice;
use crate::balance::{AcquireError, Endpoint, EndpointRegistry, InflightGuard};
use crate::config::{Config, UpstreamConfig};
use crate::error::{error_body, GatewayError};
use crate::state::Route;
use crate::upstream::{self, Conn, ResponseHead};

pub const REPLICA_HEADER: HeaderName = HeaderName::from_static("x-gateway-replica");
pub const VERSION_HEADER: HeaderName = HeaderName::from_static("x-gateway-model-version");
use super::headers::REQUEST_ID;

/// Largest replica error body the gateway reads to check (and fix) its shape.
const MAX_ERROR_BODY: usize = 64 * 1024;

/// The request as it goes upstream, prepared once for every attempt.
pub struct Outbound {
    pub path: PathAndQuery,
    /// The client's header fields as they came; `filter` says which go upstream.
    pub headers: crate::fields::Fields,
    pub filter: super::headers::UpstreamFilter,
    pub body: Bytes,
    pub request_id: super::request_id::RequestId,
}

/// A replica's answer on its way to the client.
pub struct Forwarded {
    /// The replica's answer; the gateway's own fields are added as it is written.
    pub response: Response<ResponseBody>,
    /// The answer's own fields when they are not in its map (see `respond`).
    pub fields: Option<crate::fields::Fields>,
    pub replica: HeaderValue,
    /// The model version's `x-gateway-model-version` value.
    pub version: HeaderValue,
    pub retries: u32,
    /// Time spent waiting on replicas (queue included) before the response head.
    pub upstream_wait: std::time::Duration,
}

/// A failure with how many retries were spent on it.
pub struct Failed {
    pub error: GatewayError,
    pub retries: u32,
}

// `Done` is the common path: boxing it to even the variants out would allocate per request.
#[allow(clippy::large_enum_variant)]
enum Attempt {
    /// Nothing reached the replica or it broke before answering: try another.
    Retry(String),
    /// The gateway had no descriptor or local port for the connection: not the replica's
    /// failure, and no other replica would fare better.
    Local,
    Done(ResponseHead, Conn),
}

pub async fn forward(
    config: &Arc<Config>,
    endpoints: &EndpointRegistry,
    route: &Arc<Route>,
    choice: VersionChoice,
    out: &Outbound,
    stream: bool,
    meter: &mut MeterSpec,
) -> Result<Forwarded, Failed> {
    let unavailable = |retries| Failed {
        error: GatewayError::UpstreamUnavailable {
            model: route.model.to_string(),
        },
        retries,
    };
    let Some(pool) = route.versions.get(choice.index) else {
        return Err(unavailable(0));
    };
    let cfg = &config.upstream;
    let health = &config.health;
    let fail = |ep: &Endpoint, why: &str| {
        ep.record_failure(health, why, || {
            route.may_eject_one_more(health.max_ejection_percent)
        });
    };
    // Fresh clock reads here and at the response head: the time between is the replica's, the
    // rest the gateway's own (`gateway_overhead_seconds`).
    let waiting_since = crate::clock::fresh();
    let mut tried: smallvec::SmallVec<[usize; 4]> = smallvec::SmallVec::new();
    // A replica that refused (502/503) while retries were left: its answer is what the client
    // gets if no other replica answers.
    let mut refused_answer: Option<(ResponseHead, Conn, InflightGuard, Instant)> = None;
    let mut attempt = 0;
    let (resp, conn, guard, sent_at) = loop {
        if attempt > cfg.retries {
            break refused_answer.ok_or_else(|| unavailable(attempt.saturating_sub(1)))?;
        }
        let (i, guard) = match pool.acquire(&tried).await {
            Ok(x) => x,
            Err(AcquireError::NoReplica) => {
                break refused_answer.ok_or_else(|| unavailable(attempt.saturating_sub(1)))?
            }
            Err(AcquireError::QueueFull) => {
                return Err(Failed {
                    error: GatewayError::QueueFull {
                        model: route.model.to_string(),
                    },
                    retries: attempt,
                })
            }
            Err(AcquireError::QueueTimeout) => {
                return Err(Failed {
                    error: GatewayError::QueueTimeout {
                        model: route.model.to_string(),
                    },
                    retries: attempt,
                })
            }
        };
        tried.push(i);
        attempt += 1;
        let endpoint = guard.endpoint().clone();
        let sent_at = crate::clock::now();
        let (resp, conn) = match attempt_once(cfg, endpoints, &endpoint, out, sent_at).await {
            Err(Timeout) => {
                fail(&endpoint, "no response head within response_head_timeout");
                return Err(Failed {
                    error: GatewayError::UpstreamTimeout {
                        model: route.model.to_string(),
                    },
                    retries: attempt - 1,
                });
            }
            Ok(Attempt::Retry(why)) => {
                fail(&endpoint, &why);
                continue;
            }
            Ok(Attempt::Local) => {
                return Err(Failed {
                    error: GatewayError::OutOfConnections,
                    retries: attempt - 1,
                })
            }
            Ok(Attempt::Done(resp, conn)) => (resp, conn),
        };
        let status = resp.status;
        if status.is_server_error() {
            fail(&endpoint, &format!("answered {status}"));
        }
        let refused = matches!(
            status,
            StatusCode::BAD_GATEWAY | StatusCode::SERVICE_UNAVAILABLE
        );
        if refused && attempt <= cfg.retries {
            refused_answer = Some((resp, conn, guard, sent_at));
            continue;
        }
        break (resp, conn, guard, sent_at);
    };
    let retries = (tried.len() as u32).saturating_sub(1);
    let upstream_wait = crate::clock::fresh() - waiting_since;
    let replica = guard.endpoint().host_header.clone();
    let ctx = BodyCtx {
        idle_timeout: cfg.idle_chunk_timeout,
        stream,
        sent_at,
        route: route.clone(),
        config: config.clone(),
        stats: pool.stats.clone(),
    };
    let (response, fields) = if resp.status.as_u16() >= 400 {
        // An error answer: the replica generated nothing the key should pay for.
        meter.refund();
        (Box::pin(respond_error(ctx, resp, conn, guard)).await, None)
    } else {
        let (response, fields) = respond(ctx, resp, conn, guard, meter);
        (response, Some(fields))
    };
    Ok(Forwarded {
        response,
        fields,
        replica,
        version: pool.version_header.clone(),
        retries,
        upstream_wait,
    })
}

/// The replica kept the request past `response_head_timeout`.
struct Timeout;

async fn attempt_once(
    cfg: &UpstreamConfig,
    endpoints: &EndpointRegistry,
    endpoint: &Endpoint,
    out: &Outbound,
    sent_at: Instant,
) -> Result<Attempt, Timeout> {
    let mut connected = endpoint
        .checkout(cfg.connect_timeout, cfg.pool_idle_timeout)
        .await;
    if matches!(connected, Err(upstream::ConnectError::Local(_))) {
        // Out of descriptors: idle pooled connections to any replica hold some. Closed, one
        // more try; also when none were left to close, as another request may just have
        // closed them (boxed: a rare path that should not widen every request's future).
        endpoints.close_idle(None);
        connected = Box::pin(endpoint.connect(cfg.connect_timeout)).await;
    }
    let mut conn = match connected {
        Ok(c) => c,
        Err(e @ upstream::ConnectError::Local(_)) => {
            tracing::warn!(replica = %endpoint.authority, error = %e, "no descriptor for a replica connection");
            return Ok(Attempt::Local);
        }
        Err(e) => {
            tracing::warn!(replica = %endpoint.authority, error = %e, "replica unreachable");
            return Ok(Attempt::Retry(e.to_string()));
        }
    };
    let mut timer = conn.head_timer(sent_at + cfg.response_head_timeout);
    let ended = {
        let exchange = async {
            conn.send(&upstream::Request {
                method: "POST",
                path: out.path.as_str(),
                host: &endpoint.host_header,
                headers: &out.headers,
                keep: &|n| out.filter.keeps(n),
                extra: &[(&REQUEST_ID, out.request_id.as_bytes())],
                authorization: cfg.authorization.as_ref(),
                body: &out.body,
            })
            .await?;
            conn.read_head().await
        };
        // The exchange first, then the deadline, as `tokio::time::timeout` polls them.
        let mut exchange = std::pin::pin!(exchange);
        std::future::poll_fn(|cx| match exchange.as_mut().poll(cx) {
            Poll::Ready(r) => Poll::Ready(Some(r)),
            Poll::Pending => timer.as_mut().poll(cx).map(|()| None),
        })
        .await
    };
    match ended {
        // The replica has the request and may be working on it: not safe to send it again.
        None => Err(Timeout),
        Some(Err(e)) => {
            tracing::warn!(replica = %endpoint.authority, error = %e, "replica failed before response head");
            Ok(Attempt::Retry(format!("failed before response head: {e}")))
        }
        Some(Ok(head)) => {
            conn.keep_head_timer(timer);
            Ok(Attempt::Done(head, conn))
        }
    }
}

/// The replica's answer as the client gets it: a success passes through as it arrives. Its
/// fields are returned beside it, not put in its map: HTTP/1.1 writes them as they came, h2
/// puts them in the map (`Answer::into_response`).
fn respond(
    ctx: BodyCtx,
    head: ResponseHead,
    conn: Conn,
    guard: InflightGuard,
    meter: &mut MeterSpec,
) -> (Response<ResponseBody>, crate::fields::Fields) {
    let ResponseHead {
        status,
        fields,
        body,
    } = head;
    let body = UpstreamBody::boxed(body, conn, guard, ctx, meter);
    let mut response = Response::new(ResponseBody::upstream(body));
    *response.status_mut() = status;
    (response, fields)
}

/// An error answer (4xx, 5xx): its body is read first and put in OpenAI's shape. Called
/// boxed: it is rare, and its state would otherwise widen every request's future.
async fn respond_error(
    ctx: BodyCtx,
    head: ResponseHead,
    mut conn: Conn,
    guard: InflightGuard,
) -> Response<ResponseBody> {
    let ResponseHead {
        status,
        fields,
        body,
    } = head;
    let pool_idle = ctx.config.upstream.pool_idle_timeout;
    let (bytes, read) = openai_error_body(ctx.idle_timeout, status, body, &mut conn).await;
    if read.reusable {
        guard.endpoint().checkin(conn, pool_idle);
    }
    drop(guard);
    let mut headers = fields.into_map();
    if read.replaced {
        headers.remove(header::CONTENT_ENCODING);
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
    }
    headers.remove(header::CONTENT_LENGTH);
    let mut response = Response::new(ResponseBody::full(bytes));
    *response.status_mut() = status;
    *response.headers_mut() = headers;
    response
}

/// What reading a replica's error body found.
struct ErrorBodyRead {
    /// The body was not OpenAI-shaped and the gateway wrote its own.
    replaced: bool,
    /// It ended cleanly and the connection can go back to the pool.
    reusable: bool,
}

/// A replica's error body in OpenAI's shape: passed through if it already is, otherwise wrapped
/// (vLLM's `{"object":"error","message":..}`, FastAPI's `{"detail":..}`, a plain-text 500).
/// Returns the body and whether it was replaced.
async fn openai_error_body(
    idle_timeout: std::time::Duration,
    status: StatusCode,
    mut body: upstream::Body,
    conn: &mut Conn,
) -> (Bytes, ErrorBodyRead) {
    let mut buf = BytesMut::new();
    let mut complete = false;
    let deadline = crate::clock::now() + idle_timeout;
    while buf.len() <= MAX_ERROR_BODY {
        let next = std::future::poll_fn(|cx| body.poll_data(conn, cx));
        match tokio::time::timeout_at(deadline, next).await {
            Ok(Some(Ok(d))) => buf.extend_from_slice(&d),
            Ok(None) => {
                complete = true;
                break;
            }
            _ => break,
        }
    }
    let reusable = complete && body.reusable(conn);
    let bytes = buf.freeze();
    if complete && is_openai_error(&bytes) {
        return (
            bytes,
            ErrorBodyRead {
                replaced: false,
                reusable,
            },
        );
    }
    let message = replica_message(&bytes)
        .unwrap_or_else(|| format!("The model replica answered {status} without details."));
    let error_type = if status.is_client_error() {
        "invalid_request_error"
    } else {
        "api_error"
    };
    (
        error_body(&message, error_type, Some("upstream_error")),
        ErrorBodyRead {
            replaced: true,
            reusable,
        },
    )
}

fn is_openai_error(b: &[u8]) -> bool {
    serde_json::from_slice::<serde_json::Value>(b)
        .ok()
        .and_then(|v| {
            v.get("error")
                .map(|e| e.is_object() && e.get("message").is_some())
        })
        .unwrap_or(false)
}

/// A readable message from a non-OpenAI error body, bounded.
fn replica_message(b: &[u8]) -> Option<String> {
    let text = match serde_json::from_slice::<serde_json::Value>(b) {
        Ok(v) => {
            let m = v
                .get("message")
                .or_else(|| v.get("detail"))
                .or_else(|| v.get("error"))?;
            match m {
                serde_json::Value::String(s) => s.clone(),
                other => other.to_string(),
            }
        }
        Err(_) => String::from_utf8_lossy(b).trim().to_owned(),
    };
    if text.is_empty() {
        return None;
    }
    let mut t: String = text
        .chars()
        .filter(|c| !c.is_control())
        .take(1000)
        .collect();
    if text.chars().count() > 1000 {
        t.push('…');
    }
    Some(t)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recognises_openai_errors_and_extracts_others() {
        assert!(is_openai_error(
            br#"{"error":{"message":"x","type":"t","code":null}}"#
        ));
        assert!(!is_openai_error(br#"{"detail":"Not Found"}"#));
        assert!(!is_openai_error(b"Internal Server Error"));
        assert_eq!(
            replica_message(br#"{"detail":"Not Found"}"#).unwrap(),
            "Not Found"
        );
        assert_eq!(
            replica_message(br#"{"object":"error","message":"too long","code":400}"#).unwrap(),
            "too long"
        );
        assert_eq!(
            replica_message(b"Internal Server Error\n").unwrap(),
            "Internal Server Error"
        );
        assert_eq!(replica_message(b""), None);
        assert_eq!(
            replica_message(&vec![b'x'; 5000]).unwrap().chars().count(),
            1001
        );
    }
}
