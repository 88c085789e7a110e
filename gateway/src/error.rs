//! `GatewayError`: every way a request can fail, grouped by who is at fault, with one status,
//! one OpenAI-shaped body (`{"error":{"message","type","code"}}`) and one metric label each.

use bytes::Bytes;
use http::{header, HeaderValue, Response, StatusCode};

use crate::proxy::body::ResponseBody;

/// A failure of one request. Messages never contain replica addresses or request content.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GatewayError {
    // --- the client's fault ---
    /// The body is not a JSON object, or a peeked field has the wrong type.
    InvalidBody(String),
    /// The body has no `model`.
    MissingModel,
    /// No configured model or alias has this name.
    ModelNotFound(String),
    /// Body larger than `server.max_body_bytes`.
    BodyTooLarge { limit: usize },
    /// The path exists but not for this method.
    MethodNotAllowed { allow: &'static str },
    /// No such path on the data plane.
    UnknownPath,
    /// Header section larger than the configured caps.
    HeadersTooLarge,
    /// The request line alone is longer than the head may be.
    UriTooLong,
    /// The client sent its body too slowly.
    RequestTimeout,
    /// No API key, or one the gateway does not know.
    InvalidApiKey,
    /// The key may not use this model.
    ModelNotAllowed(String),
    /// The key may not pin a version (`model@version`).
    PinNotAllowed(String),
    /// A rate limit refused the request.
    RateLimited {
        scope: crate::limits::Scope,
        limit: u32,
        retry_after: std::time::Duration,
    },
    /// Ambiguous framing (Content-Length with Transfer-Encoding, or conflicting lengths).
    AmbiguousFraming,
    /// Not a well-formed HTTP/1.1 request (request line, header syntax, framing headers).
    MalformedRequest(&'static str),
    // --- the replicas' fault ---
    /// No replica of the model could be reached (all refused, reset, or answered 502/503).
    UpstreamUnavailable { model: String },
    /// A replica did not send its response head in time.
    UpstreamTimeout { model: String },
    // --- overload ---
    /// Limits are shared through Redis, Redis is down, and the policy is to refuse.
    LimiterUnavailable,
    /// Every replica is at `max_inflight` and the model's wait queue is full.
    QueueFull { model: String },
    /// Waited in the model's queue for `queue.timeout` without getting a replica.
    QueueTimeout { model: String },
    /// The gateway had no descriptor (or local port) left for a replica connection.
    OutOfConnections,
}

impl GatewayError {
    /// The HTTP status this error answers with.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::InvalidBody(_)
            | Self::MissingModel
            | Self::AmbiguousFraming
            | Self::MalformedRequest(_) => StatusCode::BAD_REQUEST,
            Self::ModelNotFound(_) | Self::UnknownPath => StatusCode::NOT_FOUND,
            Self::BodyTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Self::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            Self::HeadersTooLarge => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            Self::UriTooLong => StatusCode::URI_TOO_LONG,
            Self::RequestTimeout => StatusCode::REQUEST_TIMEOUT,
            Self::InvalidApiKey => StatusCode::UNAUTHORIZED,
            Self::ModelNotAllowed(_) | Self::PinNotAllowed(_) => StatusCode::FORBIDDEN,
            Self::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            Self::LimiterUnavailable => StatusCode::SERVICE_UNAVAILABLE,
            Self::UpstreamUnavailable { .. } => StatusCode::BAD_GATEWAY,
            Self::UpstreamTimeout { .. } => StatusCode::GATEWAY_TIMEOUT,
            Self::QueueFull { .. } | Self::QueueTimeout { .. } | Self::OutOfConnections => {
                StatusCode::SERVICE_UNAVAILABLE
            }
        }
    }

    /// OpenAI's `error.type`.
    pub fn error_type(&self) -> &'static str {
        match self {
            Self::ModelNotAllowed(_) | Self::PinNotAllowed(_) => return "permission_error",
            Self::RateLimited { scope, .. } => {
                return if *scope == crate::limits::Scope::Tokens {
                    "tokens"
                } else {
                    "requests"
                }
            }
            _ => {}
        }
        match self.status().as_u16() {
            400..=499 => "invalid_request_error",
            503 => "overloaded_error",
            _ => "api_error",
        }
    }

    /// OpenAI's `error.code`; also the `reason` label on error metrics.
    pub fn code(&self) -> &'static str {
        match self {
            Self::InvalidBody(_) => "invalid_body",
            Self::MissingModel => "missing_model",
            Self::ModelNotFound(_) => "model_not_found",
            Self::BodyTooLarge { .. } => "request_too_large",
            Self::MethodNotAllowed { .. } => "method_not_allowed",
            Self::UnknownPath => "unknown_url",
            Self::HeadersTooLarge => "headers_too_large",
            Self::UriTooLong => "uri_too_long",
            Self::RequestTimeout => "request_timeout",
            Self::InvalidApiKey => "invalid_api_key",
            Self::ModelNotAllowed(_) => "model_not_allowed",
            Self::PinNotAllowed(_) => "version_pin_not_allowed",
            Self::RateLimited { .. } => "rate_limit_exceeded",
            Self::LimiterUnavailable => "ratelimit_unavailable",
            Self::AmbiguousFraming => "ambiguous_framing",
            Self::MalformedRequest(_) => "malformed_request",
            Self::UpstreamUnavailable { .. } => "upstream_unavailable",
            Self::UpstreamTimeout { .. } => "upstream_timeout",
            Self::QueueFull { .. } => "queue_full",
            Self::QueueTimeout { .. } => "queue_timeout",
            Self::OutOfConnections => "gateway_out_of_connections",
        }
    }

    /// A message for the caller.
    pub fn message(&self) -> String {
        match self {
            Self::InvalidBody(why) => format!("Invalid request body: {why}"),
            Self::MissingModel => "You must provide a model parameter.".into(),
            Self::ModelNotFound(m) => format!(
                "The model `{}` does not exist or you do not have access to it.",
                printable(m)
            ),
            Self::BodyTooLarge { limit } => {
                format!("Request body is larger than the limit of {limit} bytes.")
            }
            Self::MethodNotAllowed { allow } => {
                format!("Method not allowed on this path; allowed: {allow}.")
            }
            Self::UnknownPath => "Unknown request URL. Supported: POST /v1/chat/completions, \
                POST /v1/completions, POST /v1/embeddings, GET /v1/models."
                .into(),
            Self::HeadersTooLarge => "Request header section is too large.".into(),
            Self::UriTooLong => "The request target is too long.".into(),
            Self::RequestTimeout => "The request was not received in time.".into(),
            Self::InvalidApiKey => "Incorrect or missing API key. Send it as \
                `Authorization: Bearer <key>` or `x-api-key: <key>`."
                .into(),
            Self::ModelNotAllowed(m) => {
                format!("This API key may not use the model `{}`.", printable(m))
            }
            Self::PinNotAllowed(m) => format!(
                "This API key may not pin a model version (`{}`); use the model name.",
                printable(m)
            ),
            Self::RateLimited {
                scope, retry_after, ..
            } => {
                let what = match scope {
                    crate::limits::Scope::Ip => "requests from this address",
                    crate::limits::Scope::Key => "requests for this API key",
                    crate::limits::Scope::Model => "requests for this model",
                    crate::limits::Scope::Tokens => "tokens per minute for this API key",
                };
                format!(
                    "Rate limit reached for {what}. Retry in {:.1}s.",
                    retry_after.as_secs_f64()
                )
            }
            Self::LimiterUnavailable => {
                "Rate limits cannot be checked right now; retry shortly.".into()
            }
            Self::AmbiguousFraming => "Request has ambiguous framing (Content-Length together \
                with Transfer-Encoding, or conflicting Content-Length values)."
                .into(),
            Self::MalformedRequest(why) => format!("Malformed HTTP request: {why}."),
            Self::UpstreamUnavailable { model } => {
                format!("No replica of model `{model}` is available; try again later.")
            }
            Self::UpstreamTimeout { model } => {
                format!("A replica of model `{model}` did not answer in time.")
            }
            Self::QueueFull { model } => format!(
                "Every replica of model `{model}` is busy and its queue is full; retry later."
            ),
            Self::QueueTimeout { model } => format!(
                "Every replica of model `{model}` stayed busy for the queue timeout; retry later."
            ),
            Self::OutOfConnections => "The gateway has no connection left for this request \
                (its open-file limit); retry shortly."
                .into(),
        }
    }

    /// Whether the connection must be closed after this answer (its framing can't be trusted).
    pub fn closes_connection(&self) -> bool {
        matches!(
            self,
            Self::AmbiguousFraming
                | Self::RequestTimeout
                | Self::HeadersTooLarge
                | Self::UriTooLong
                | Self::MalformedRequest(_)
        )
    }

    /// The full response.
    pub fn into_response(self) -> Response<ResponseBody> {
        let mut resp = error_response(
            self.status(),
            &self.message(),
            self.error_type(),
            Some(self.code()),
        );
        let h = resp.headers_mut();
        if let Self::MethodNotAllowed { allow } = &self {
            h.insert(header::ALLOW, HeaderValue::from_static(allow));
        }
        if self.closes_connection() {
            h.insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        if matches!(
            self,
            Self::UpstreamUnavailable { .. }
                | Self::QueueFull { .. }
                | Self::QueueTimeout { .. }
                | Self::OutOfConnections
                | Self::LimiterUnavailable
        ) {
            h.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        if matches!(self, Self::InvalidApiKey) {
            h.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        if let Self::RateLimited {
            scope,
            limit,
            retry_after,
        } = &self
        {
            // Seconds, rounded up: a client that waits that long will be admitted.
            let secs = retry_after.as_secs() + u64::from(retry_after.subsec_nanos() > 0);
            h.insert(header::RETRY_AFTER, HeaderValue::from(secs.max(1)));
            let kind = if *scope == crate::limits::Scope::Tokens {
                "tokens"
            } else {
                "requests"
            };
            let reset = crate::limits::openai_duration(*retry_after);
            for (name, value) in [
                (format!("x-ratelimit-limit-{kind}"), limit.to_string()),
                (format!("x-ratelimit-remaining-{kind}"), "0".to_owned()),
                (format!("x-ratelimit-reset-{kind}"), reset),
            ] {
                if let (Ok(n), Ok(v)) = (
                    http::header::HeaderName::from_bytes(name.as_bytes()),
                    HeaderValue::from_str(&value),
                ) {
                    h.insert(n, v);
                }
            }
        }
        resp
    }
}

impl std::fmt::Display for GatewayError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message())
    }
}

impl std::error::Error for GatewayError {}

/// Echoes caller-supplied text safely: bounded length, no control characters.
fn printable(s: &str) -> String {
    let mut out: String = s.chars().take(256).filter(|c| !c.is_control()).collect();
    if s.chars().count() > 256 {
        out.push('…');
    }
    out
}

/// The OpenAI error body as bytes.
pub fn error_body(message: &str, error_type: &str, code: Option<&str>) -> Bytes {
    let v = serde_json::json!({"error": {
        "message": message, "type": error_type, "param": null, "code": code,
    }});
    Bytes::from(v.to_string())
}

/// An OpenAI-shaped error response with security headers.
pub fn error_response(
    status: StatusCode,
    message: &str,
    error_type: &str,
    code: Option<&str>,
) -> Response<ResponseBody> {
    let mut resp = Response::new(ResponseBody::full(error_body(message, error_type, code)));
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    security_headers(h);
    resp
}

/// On everything the gateway writes itself (never on a replica's answers).
pub fn security_headers(h: &mut http::HeaderMap) {
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_error_has_openai_shape_and_matching_status() {
        let all = [
            GatewayError::InvalidBody("x".into()),
            GatewayError::MissingModel,
            GatewayError::ModelNotFound("m".into()),
            GatewayError::BodyTooLarge { limit: 1 },
            GatewayError::MethodNotAllowed { allow: "POST" },
            GatewayError::UnknownPath,
            GatewayError::HeadersTooLarge,
            GatewayError::UriTooLong,
            GatewayError::RequestTimeout,
            GatewayError::AmbiguousFraming,
            GatewayError::UpstreamUnavailable { model: "m".into() },
            GatewayError::UpstreamTimeout { model: "m".into() },
            GatewayError::QueueFull { model: "m".into() },
            GatewayError::QueueTimeout { model: "m".into() },
            GatewayError::OutOfConnections,
        ];
        let expected = [
            400, 400, 404, 413, 405, 404, 431, 414, 408, 400, 502, 504, 503, 503, 503,
        ];
        for (e, want) in all.into_iter().zip(expected) {
            assert_eq!(e.status().as_u16(), want, "{e:?}");
            let body = error_body(&e.message(), e.error_type(), Some(e.code()));
            let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
            assert!(v["error"]["message"].is_string());
            assert!(v["error"]["type"].is_string());
            assert_eq!(v["error"]["code"], e.code());
        }
    }

    #[test]
    fn rate_limited_answers_carry_retry_after_rounded_up_and_openai_headers() {
        let r = GatewayError::RateLimited {
            scope: crate::limits::Scope::Key,
            limit: 10,
            retry_after: std::time::Duration::from_millis(1200),
        }
        .into_response();
        assert_eq!(r.status(), 429);
        assert_eq!(r.headers()["retry-after"], "2");
        assert_eq!(r.headers()["x-ratelimit-limit-requests"], "10");
        assert_eq!(r.headers()["x-ratelimit-remaining-requests"], "0");
        assert_eq!(r.headers()["x-ratelimit-reset-requests"], "1.2s");
        let r = GatewayError::InvalidApiKey.into_response();
        assert_eq!(r.headers()["www-authenticate"], "Bearer");
    }

    #[test]
    fn echoed_model_names_are_bounded_and_clean() {
        let long = format!("a\u{7}b{}", "x".repeat(1000));
        let msg = GatewayError::ModelNotFound(long).message();
        assert!(!msg.contains('\u{7}'));
        assert!(msg.len() < 400);
    }
}
