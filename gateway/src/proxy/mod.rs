//! The request path of the data plane. Each stage adds one typed value that later stages read:
//!
//! 1. `request_id` — keep a sane client `x-request-id` or make a UUID      -> `HeaderValue`
//!    (before it: connection-level checks — ambiguous framing (400, close), header caps (431))
//! 2. limits, then `auth` — the client IP's rate first (so key guessing is limited too; 429),
//!    then the API key -> `Principal` (401)
//! 3. limits       — the key's request rate (429; `x-ratelimit-*` headers on every answer)
//! 4. `read`       — body once into `Bytes` (size cap 413, deadline 408), peek model/stream
//!    -> `Peek`
//! 5. `route`      — model or alias -> its versions' replica pools (404)  -> `Route`;
//!    then the key's model access (403, or 404 with `hide_unlisted_models`), the model's
//!    global limit (429) and the key's token budget: the worst case is reserved now and
//!    settled to the replica's `usage` when the response ends (429)
//! 6. `canary`     — which version serves this request                    -> `VersionChoice`
//! 7. `forward`    — pick a replica, send, retry before the first byte only, stream back
//!    -> `Forwarded`
//! 8. `record`     — metrics and one access-log line, when the answer is complete (the end of
//!    a stream, or the client leaving it)
//!
//! Paths: POST /v1/chat/completions, /v1/completions, /v1/embeddings; GET /v1/models[/{id}].
//! Admin paths are never served here: they exist only on the admin listener.

pub mod body;
pub mod canary;
pub mod forward;
pub mod headers;
pub mod read;
pub mod record;
pub mod request_id;
pub mod route;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::uri::PathAndQuery;
use http::{Method, Request, Response, StatusCode};

use self::body::ResponseBody;
use self::forward::{Failed, Forwarded, Outbound};
use self::headers::GatewayFields;
use self::read::ClientBody;
use self::record::Record;
use crate::auth::Principal;
use crate::error::GatewayError;
use crate::fields::Fields;
use crate::limits::{self, Decision, Scope};
use crate::state::{model_object, AppState};
use crate::transport::ConnFlags;

/// What the request path knows about the connection a request came on.
pub struct ConnCtx {
    pub peer: std::net::SocketAddr,
    pub flags: Arc<ConnFlags>,
    /// The API key that last passed on this connection (see `KeyTable::authenticate_on`).
    pub key: crate::auth::KeyMemo,
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

// The API's fixed paths: what `classify` routes, and what `known_path` has parsed already.
const CHAT: &str = "/v1/chat/completions";
const COMPLETIONS: &str = "/v1/completions";
const EMBEDDINGS: &str = "/v1/embeddings";
const MODELS: &str = "/v1/models";

/// The API's fixed paths, parsed once: most requests name one of them, and `PathAndQuery`
/// checks a target byte by byte (about 270 instructions for `/v1/chat/completions`). A clone
/// of a static one copies a pointer. (The HTTP/1.1 parser asks before parsing a target.)
pub fn known_path(target: &[u8]) -> Option<PathAndQuery> {
    static KNOWN: std::sync::LazyLock<[PathAndQuery; 4]> = std::sync::LazyLock::new(|| {
        [CHAT, COMPLETIONS, EMBEDDINGS, MODELS].map(PathAndQuery::from_static)
    });
    KNOWN
        .iter()
        .find(|p| p.as_str().as_bytes() == target)
        .cloned()
}

fn classify(method: &Method, path: &str) -> Result<Operation, GatewayError> {
    let (op, allow) = match path {
        CHAT => (Operation::Chat, "POST"),
        COMPLETIONS => (Operation::Completion, "POST"),
        EMBEDDINGS => (Operation::Embedding, "POST"),
        MODELS => (Operation::ListModels, "GET"),
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

/// A client's request as the request path gets it: from `h1`, with its fields where they were
/// parsed, or from hyper (h2), with its map.
pub struct ClientRequest<'a> {
    pub method: Method,
    /// The target's path and query (an absolute-form target is reduced to them).
    pub path: PathAndQuery,
    pub fields: Fields,
    pub body: ClientBody<'a>,
}

/// A target's path and query: `/` when it has none (`http://host`).
pub fn path_of(uri: http::Uri) -> PathAndQuery {
    uri.into_parts()
        .path_and_query
        .unwrap_or_else(|| PathAndQuery::from_static("/"))
}

impl<'a> From<Request<ClientBody<'a>>> for ClientRequest<'a> {
    fn from(req: Request<ClientBody<'a>>) -> Self {
        let (parts, body) = req.into_parts();
        Self {
            method: parts.method,
            path: path_of(parts.uri),
            fields: Fields::from(parts.headers),
            body,
        }
    }
}

/// An answer of the request path: the response, and the fields the gateway adds to its head
/// (kept apart: HTTP/1.1 writes them straight into the head).
pub struct Answer {
    pub response: Response<ResponseBody>,
    /// A replica's answer's own fields, as they came (its map is empty then).
    pub upstream: Option<Fields>,
    pub fields: GatewayFields,
}

impl Answer {
    /// The response with a replica's fields and the gateway's in its map (for h2, whose heads
    /// hyper writes).
    pub fn into_response(self) -> Response<ResponseBody> {
        let mut response = self.response;
        if let Some(replica) = self.upstream {
            let mut fields = replica.into_map();
            // A length the meter will not keep (see `UpstreamBody::size_hint`) is not claimed.
            if http_body::Body::size_hint(response.body())
                .exact()
                .is_none()
            {
                fields.remove(header::CONTENT_LENGTH);
            }
            response.headers_mut().extend(fields);
        }
        self.fields.insert_into(response.headers_mut());
        response
    }
}

/// Serves one data-plane request. Never fails: every error becomes an OpenAI-shaped answer.
///
/// A connection keeps room for this future for as long as it lives (an open stream
/// included), and the request path's state (several KiB) is needed only until the response
/// head: it lives in a box that is freed then. The box is made here, so the connection holds
/// only a pointer, not the request besides.
pub fn handle<'a>(
    app: Arc<AppState>,
    conn: Arc<ConnCtx>,
    req: ClientRequest<'a>,
) -> Pin<Box<impl Future<Output = Answer> + Send + 'a>> {
    // Written into the box's memory where it is made: `Box::pin(future)` built the future
    // on the stack and copied all of it (4.4 KB, the first state's unused room included).
    Box::into_pin(Box::write(Box::new_uninit(), handle_boxed(app, conn, req)))
}

async fn handle_boxed(app: Arc<AppState>, conn: Arc<ConnCtx>, req: ClientRequest<'_>) -> Answer {
    let started = crate::clock::fresh();
    let request_id = request_id::assign(&req.fields);
    let mut trace = Record::new(started, request_id.clone(), conn.peer, app.metrics.clone());
    let mut fields = GatewayFields::default();
    let mut upstream = None;
    let served = serve(
        &app,
        &conn,
        req,
        &request_id,
        &mut trace,
        &mut fields,
        &mut upstream,
    );
    let mut resp = match served.await {
        Ok(r) => r,
        Err(e) => {
            tracing::debug!(code = e.code(), "request rejected");
            e.into_response()
        }
    };
    fields.request_id = Some(request_id);
    fields.requests = trace.requests_left;
    fields.tokens = trace.tokens_left;
    if trace.retries > 0 {
        app.metrics.retries.inc_by(u64::from(trace.retries));
    }
    trace.head_sent();
    // A replica's body finishes the record when it ends; a gateway answer is complete now.
    let status = resp.status().as_u16();
    if let Some(mut trace) = resp.body_mut().attach(trace, status) {
        // A gateway answer's length is known now (a replica's is counted as it passes).
        let facts = record::BodyFacts {
            bytes_out: http_body::Body::size_hint(resp.body()).exact().unwrap_or(0),
            ..record::BodyFacts::default()
        };
        trace.finish(resp_status_str(status), facts);
    }
    Answer {
        response: resp,
        upstream,
        fields,
    }
}

async fn serve(
    app: &AppState,
    conn: &ConnCtx,
    req: ClientRequest<'_>,
    request_id: &request_id::RequestId,
    trace: &mut Record,
    added: &mut GatewayFields,
    upstream: &mut Option<Fields>,
) -> Result<Response<ResponseBody>, GatewayError> {
    if conn.flags.ambiguous_framing() {
        return Err(GatewayError::AmbiguousFraming);
    }
    let snapshot = app.snapshot();
    let config = &snapshot.config;
    let server = &config.server;
    if req.fields.len() > server.max_headers || req.fields.wire_size() > server.max_header_bytes {
        return Err(GatewayError::HeadersTooLarge);
    }
    let op = classify(&req.method, req.path.path())?;
    trace.op = op.as_str();
    let shared = app.shared.as_deref();
    // Stage 3a: per client IP, before auth.
    if let Some(ip_limiter) = &snapshot.ip_limiter {
        let ip = limits::client_ip::client_ip(
            conn.peer.ip(),
            &req.fields,
            &config.limits.trusted_proxies,
        );
        admit(app, Scope::Ip, ip_limiter.check(ip, shared).await)?;
    }
    // Stage 2: auth.
    let principal = if config.auth.enabled {
        Principal {
            key: Some(snapshot.keys.authenticate_on(&req.fields, &conn.key)?),
        }
    } else {
        Principal::default()
    };
    trace.key = principal.key.clone();
    // Stage 3b: the key's request rate.
    if let Some(limiter) = principal.key.as_ref().and_then(|k| k.requests.as_ref()) {
        if let Decision::Allowed {
            limit,
            remaining,
            reset,
        } = admit(app, Scope::Key, limiter.check(shared).await)?
        {
            trace.requests_left = Some((limit, remaining, reset));
        }
    }
    let hide = config.auth.hide_unlisted_models;
    match op {
        Operation::ListModels => {
            let body = match principal.key.as_ref().and_then(|k| k.allowed.as_ref()) {
                Some(allowed) => snapshot.models_body_for(allowed),
                None => snapshot.models_body.clone(),
            };
            return Ok(json_ok(body));
        }
        Operation::GetModel => {
            let id = &req.path.path()["/v1/models/".len()..];
            let id = percent_decode(id);
            let route = route::resolve_name(&snapshot, &id)?;
            check_access(&principal, &route.model, &id, true)?;
            return Ok(json_ok(Bytes::from(model_object(&id).to_string())));
        }
        _ => {}
    }
    let ClientRequest {
        path, fields, body, ..
    } = req;
    // Stage 4: body, then peek.
    let body = read::read_body(
        body,
        &fields,
        server.max_body_bytes,
        // From the moment the head was read: one clock reading less per request.
        trace.started + server.body_read_timeout,
    )
    .await?;
    trace.bytes_in = body.len();
    let peek = read::peek(&body)?;
    trace.stream = peek.stream;
    // Stage 5: route, then what this caller may do with the model.
    let (route, pinned) = route::resolve(&snapshot, &peek.model, &principal, config.auth.enabled)?;
    check_access(&principal, &route.model, &peek.model, hide)?;
    trace.model = Some(route.model.clone());
    if let Some(limiter) = &route.limiter {
        admit(app, Scope::Model, limiter.check(shared).await)?;
    }
    let mut forwarded_body = body.clone();
    let mut reservation = None;
    let mut strip = false;
    if let Some(budget) = principal.key.as_ref().and_then(|k| k.tokens.as_ref()) {
        let completion = if op == Operation::Embedding {
            0
        } else {
            peek.max_tokens.unwrap_or(config.limits.default_max_tokens)
        };
        // About four bytes of JSON per prompt token: an overestimate, as a reservation should be.
        let cost = (body.len() as u64).div_ceil(4) + completion;
        let (held, left) = match budget.reserve(cost, app.shared.as_ref()).await {
            Ok(r) => r,
            Err(Some(retry_after)) => {
                app.metrics
                    .ratelimited
                    .with_label_values(&[Scope::Tokens.as_str()])
                    .inc();
                return Err(GatewayError::RateLimited {
                    scope: Scope::Tokens,
                    limit: budget.tpm().min(u64::from(u32::MAX)) as u32,
                    retry_after,
                });
            }
            Err(None) => return Err(GatewayError::LimiterUnavailable),
        };
        trace.tokens_left = Some((budget.tpm(), left));
        reservation = Some(held);
        // Settling needs the real usage; in a stream it comes only when asked for. Ask for it
        // if the client did not, and take that extra event out of the client's stream.
        if peek.stream && !peek.has_stream_options {
            if let Some(b) = crate::sse::inject_include_usage(&body) {
                forwarded_body = b;
                strip = true;
            }
        }
    }
    // Held here and lent to `forward` (as is `out`): a value moved into an async call is
    // stored twice in the request's future.
    let mut meter = body::MeterSpec {
        reservation,
        strip_usage: strip,
        request_started: trace.started,
    };
    // Stage 6: version.
    let choice = canary::choose(&route, pinned, &principal, &fields);
    let pool = route.versions.get(choice.index);
    trace.version = pool.map(|p| p.version.clone());
    trace.stats = pool.map(|p| p.stats.clone());
    trace.arm = Some(choice.arm);
    // Stage 7: forward.
    let out = Outbound {
        path,
        filter: headers::UpstreamFilter::new(&fields, config.auth.enabled),
        headers: fields,
        body: forwarded_body,
        request_id: request_id.clone(),
    };
    let forwarded = forward::forward(
        &snapshot.config,
        &app.endpoints,
        &route,
        choice,
        &out,
        peek.stream,
        &mut meter,
    );
    match forwarded.await {
        Ok(Forwarded {
            response,
            fields,
            replica,
            version,
            retries,
            upstream_wait,
        }) => {
            *upstream = fields;
            added.replica = Some(replica.clone());
            added.version = Some(version);
            trace.replica = Some(replica);
            trace.retries = retries;
            trace.upstream_wait = upstream_wait;
            Ok(response)
        }
        Err(Failed { error, retries }) => {
            trace.retries = retries;
            // No replica took the request (queue full, queue timeout, none reachable or all
            // broke before answering, no descriptor for a replica connection): nothing was
            // generated, so the key's token reservation is given back. After
            // `response_head_timeout` a replica may still be generating: that reservation
            // stays spent, as a stream cut short keeps its own.
            if matches!(
                error,
                GatewayError::QueueFull { .. }
                    | GatewayError::QueueTimeout { .. }
                    | GatewayError::UpstreamUnavailable { .. }
                    | GatewayError::OutOfConnections
            ) {
                meter.refund();
            }
            Err(error)
        }
    }
}

/// A status code as a label value, without allocating per request (a table built once).
pub(crate) fn resp_status_str(status: u16) -> &'static str {
    static CODES: std::sync::OnceLock<Vec<String>> = std::sync::OnceLock::new();
    let codes = CODES.get_or_init(|| (100..600).map(|c: u16| c.to_string()).collect());
    codes
        .get(usize::from(status).wrapping_sub(100))
        .map_or("unknown", String::as_str)
}

/// Turns a limit decision into admission or the right error, counting refusals.
fn admit(app: &AppState, scope: Scope, d: Decision) -> Result<Decision, GatewayError> {
    match d {
        Decision::Allowed { .. } => Ok(d),
        Decision::Limited { limit, retry_after } => {
            app.metrics
                .ratelimited
                .with_label_values(&[scope.as_str()])
                .inc();
            Err(GatewayError::RateLimited {
                scope,
                limit,
                retry_after,
            })
        }
        Decision::Unavailable => Err(GatewayError::LimiterUnavailable),
    }
}

/// A key may use only its models: 403, or 404 as if the model did not exist when `hide`.
fn check_access(
    principal: &Principal,
    model: &str,
    asked: &str,
    hide: bool,
) -> Result<(), GatewayError> {
    if principal.may_use(model) {
        return Ok(());
    }
    Err(if hide {
        GatewayError::ModelNotFound(asked.to_owned())
    } else {
        GatewayError::ModelNotAllowed(asked.to_owned())
    })
}

fn json_ok(body: Bytes) -> Response<ResponseBody> {
    let mut resp = Response::new(ResponseBody::full(body));
    *resp.status_mut() = StatusCode::OK;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    crate::error::security_headers(resp.headers_mut());
    resp
}

/// Decodes `%XX` escapes in a path segment (model ids may contain `/` or `:` sent escaped).
pub fn percent_decode(s: &str) -> String {
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
    fn status_labels() {
        assert_eq!(resp_status_str(200), "200");
        assert_eq!(resp_status_str(599), "599");
        assert_eq!(resp_status_str(42), "unknown");
        assert_eq!(resp_status_str(600), "unknown");
    }

    #[test]
    fn percent_decoding() {
        assert_eq!(percent_decode("org%2Fmodel"), "org/model");
        assert_eq!(percent_decode("plain"), "plain");
        assert_eq!(percent_decode("bad%zz%"), "bad%zz%");
        assert_eq!(percent_decode("%41"), "A");
    }
}

#[cfg(test)]
mod size_tests {
    /// A connection keeps room for the request future for as long as it lives (an open stream
    /// included): it holds only the box the request path runs in.
    #[test]
    fn the_per_connection_request_future_is_a_pointer() {
        fn future_size<A, B, C, F: std::future::Future>(_: fn(A, B, C) -> F) -> usize {
            std::mem::size_of::<F>()
        }
        let size = future_size(super::handle);
        assert_eq!(
            size,
            std::mem::size_of::<usize>(),
            "handle's future is {size} bytes"
        );
    }

    /// A replica's body is boxed once per answer: at most 1,032 bytes, glibc serves it from its
    /// per-thread cache (larger, each allocation and free costs about 300 instructions more).
    #[test]
    fn a_replica_body_box_stays_in_the_allocators_thread_cache() {
        let size = std::mem::size_of::<super::body::UpstreamBody>();
        assert!(size <= 1032, "UpstreamBody is {size} bytes");
    }
}
