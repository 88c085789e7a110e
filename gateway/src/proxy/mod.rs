//! The request path of the data plane. Each stage adds one typed value that later stages read:
//!
//! 1. `request_id` — keep a sane client `x-request-id` or make a UUID      -> `HeaderValue`
//!    (before it: connection-level checks — ambiguous framing (400, close), header caps (431))
//! 2. auth         — API key -> principal (not in this version: `[auth] enabled` is rejected)
//! 3. limits       — per key / IP / tokens (not in this version)
//! 4. `read`       — body once into `Bytes` (size cap 413, deadline 408), peek model/stream
//!    -> `Peek`
//! 5. `route`      — model or alias -> its versions' replica pools (404)  -> `Route`
//! 6. `canary`     — which version serves this request                    -> `VersionChoice`
//! 7. `forward`    — pick a replica, send, retry before the first byte only, stream back
//!    -> `Forwarded`
//! 8. access log, from what the stages left behind.
//!
//! Paths: POST /v1/chat/completions, /v1/completions, /v1/embeddings; GET /v1/models[/{id}].
//! Admin paths are never served here: they exist only on the admin listener.

pub mod body;
pub mod canary;
pub mod forward;
pub mod headers;
pub mod read;
pub mod request_id;
pub mod route;

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http::header::{self, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode, Uri};
use hyper::body::Incoming;

use self::body::ResponseBody;
use self::forward::{Failed, Forwarded, Outbound};
use crate::error::GatewayError;
use crate::framing::ConnFlags;
use crate::state::{model_object, AppState};

/// What the request path knows about the connection a request came on.
pub struct ConnCtx {
    pub peer: std::net::SocketAddr,
    pub flags: Arc<ConnFlags>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Operation {
    Chat,
    Completion,
    Embedding,
    ListModels,
    GetModel,
}

impl Operation {
    fn as_str(self) -> &'static str {
        match self {
            Self::Chat => "chat",
            Self::Completion => "completion",
            Self::Embedding => "embedding",
            Self::ListModels | Self::GetModel => "models",
        }
    }
}

fn classify(method: &Method, path: &str) -> Result<Operation, GatewayError> {
    let (op, allow) = match path {
        "/v1/chat/completions" => (Operation::Chat, "POST"),
        "/v1/completions" => (Operation::Completion, "POST"),
        "/v1/embeddings" => (Operation::Embedding, "POST"),
        "/v1/models" => (Operation::ListModels, "GET"),
        p if p.starts_with("/v1/models/") && p.len() > "/v1/models/".len() => {
            (Operation::GetModel, "GET")
        }
        _ => return Err(GatewayError::UnknownPath),
    };
    let ok = match allow {
        "POST" => method == Method::POST,
        _ => method == Method::GET || method == Method::HEAD,
    };
    if !ok {
        return Err(GatewayError::MethodNotAllowed { allow });
    }
    Ok(op)
}

/// Header section size as a client sent it (name, value, ": " and CRLF per line).
fn header_bytes(h: &http::HeaderMap) -> usize {
    h.iter().map(|(n, v)| n.as_str().len() + v.len() + 4).sum()
}

/// Facts for the access log, filled in by the stages as they run.
#[derive(Default)]
struct Trace {
    op: &'static str,
    model: Option<String>,
    version: Option<String>,
    replica: Option<HeaderValue>,
    stream: bool,
    retries: u32,
    bytes_in: usize,
}

/// Serves one data-plane request. Never fails: every error becomes an OpenAI-shaped answer.
pub async fn handle(
    app: Arc<AppState>,
    conn: Arc<ConnCtx>,
    req: Request<Incoming>,
) -> Response<ResponseBody> {
    let started = Instant::now();
    let request_id = request_id::assign(req.headers());
    let mut trace = Trace::default();
    let mut resp = match serve(&app, &conn, req, &request_id, &mut trace).await {
        Ok(r) => r,
        Err(e) => {
            tracing::debug!(code = e.code(), "request rejected");
            e.into_response()
        }
    };
    resp.headers_mut().insert(
        HeaderName::from_static(request_id::HEADER),
        request_id.clone(),
    );
    tracing::info!(
        target: "access",
        request_id = request_id.to_str().unwrap_or(""),
        peer = %conn.peer,
        op = trace.op,
        model = trace.model.as_deref().unwrap_or("-"),
        version = trace.version.as_deref().unwrap_or("-"),
        replica = trace.replica.as_ref().and_then(|r| r.to_str().ok()).unwrap_or("-"),
        status = resp.status().as_u16(),
        stream = trace.stream,
        retries = trace.retries,
        bytes_in = trace.bytes_in,
        head_ms = started.elapsed().as_secs_f64() * 1000.0,
    );
    resp
}

async fn serve(
    app: &AppState,
    conn: &ConnCtx,
    req: Request<Incoming>,
    request_id: &HeaderValue,
    trace: &mut Trace,
) -> Result<Response<ResponseBody>, GatewayError> {
    if conn.flags.ambiguous_framing() {
        return Err(GatewayError::AmbiguousFraming);
    }
    let snapshot = app.snapshot();
    let server = &snapshot.config.server;
    if req.headers().len() > server.max_headers
        || header_bytes(req.headers()) > server.max_header_bytes
    {
        return Err(GatewayError::HeadersTooLarge);
    }
    let op = classify(req.method(), req.uri().path())?;
    trace.op = op.as_str();
    match op {
        Operation::ListModels => return Ok(json_ok(snapshot.models_body.clone())),
        Operation::GetModel => {
            let id = &req.uri().path()["/v1/models/".len()..];
            let id = percent_decode(id);
            route::resolve(&snapshot, &id)?;
            return Ok(json_ok(Bytes::from(model_object(&id).to_string())));
        }
        _ => {}
    }
    let (parts, incoming) = req.into_parts();
    let content_length = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    // Stage 4: body, then peek.
    let body = read::read_body(
        incoming,
        content_length,
        server.max_body_bytes,
        server.body_read_timeout,
    )
    .await?;
    trace.bytes_in = body.len();
    let peek = read::peek(&body)?;
    trace.stream = peek.stream;
    // Stage 5: route.
    let route = route::resolve(&snapshot, &peek.model)?;
    trace.model = Some(route.model.clone());
    // Stage 6: version.
    let choice = canary::choose(&route);
    trace.version = route.versions.get(choice.index).map(|p| p.version.clone());
    // Stage 7: forward.
    let uri = parts
        .uri
        .path_and_query()
        .map(|pq| Uri::from(pq.clone()))
        .unwrap_or_else(|| Uri::from_static("/"));
    let out = Outbound {
        uri,
        headers: headers::upstream_request_headers(&parts.headers),
        body: body.clone(),
        request_id: request_id.clone(),
    };
    match forward::forward(&snapshot.config, &route, choice, out, peek.stream).await {
        Ok(Forwarded {
            response,
            replica,
            retries,
        }) => {
            trace.replica = Some(replica);
            trace.retries = retries;
            Ok(response)
        }
        Err(Failed { error, retries }) => {
            trace.retries = retries;
            Err(error)
        }
    }
}

fn json_ok(body: Bytes) -> Response<ResponseBody> {
    let mut resp = Response::new(ResponseBody::full(body));
    *resp.status_mut() = StatusCode::OK;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}

/// Decodes `%XX` escapes in a path segment (model ids may contain `/` or `:` sent escaped).
fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            if let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2])) {
                out.push(h * 16 + l);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn hex(b: u8) -> Option<u8> {
    (b as char).to_digit(16).map(|d| d as u8)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_and_methods() {
        assert_eq!(
            classify(&Method::POST, "/v1/chat/completions").unwrap(),
            Operation::Chat
        );
        assert_eq!(
            classify(&Method::GET, "/v1/models").unwrap(),
            Operation::ListModels
        );
        assert_eq!(
            classify(&Method::GET, "/v1/models/x").unwrap(),
            Operation::GetModel
        );
        assert_eq!(
            classify(&Method::GET, "/v1/chat/completions").unwrap_err(),
            GatewayError::MethodNotAllowed { allow: "POST" }
        );
        assert_eq!(
            classify(&Method::POST, "/v1/models").unwrap_err(),
            GatewayError::MethodNotAllowed { allow: "GET" }
        );
        for p in [
            "/",
            "/metrics",
            "/admin/reload",
            "/healthz",
            "/v1/models/",
            "/v2/chat",
        ] {
            assert_eq!(
                classify(&Method::GET, p).unwrap_err(),
                GatewayError::UnknownPath,
                "{p}"
            );
        }
    }

    #[test]
    fn percent_decoding() {
        assert_eq!(percent_decode("org%2Fmodel"), "org/model");
        assert_eq!(percent_decode("plain"), "plain");
        assert_eq!(percent_decode("bad%zz%"), "bad%zz%");
        assert_eq!(percent_decode("%41"), "A");
    }
}
