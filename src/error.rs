//! Errors Outpost produces itself, and the one place they become responses.
//!
//! Every response Outpost writes on its own account is JSON with `content-type:
//! application/json` and an `x-outpost-error: <type>` header (DESIGN.md "Errors"). Messages are
//! lower case and never contain header values, bodies or secrets; the full cause chain goes to
//! the log only.

use std::time::Duration;

use http::header::{HeaderName, HeaderValue, CONTENT_TYPE, RETRY_AFTER};
use http::{Response, StatusCode};

use crate::body::{full, BoxBody, BoxError};

pub static X_OUTPOST_ERROR: HeaderName = HeaderName::from_static("x-outpost-error");
pub static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// nginx's "client closed request": the status logged and counted for a request the
/// application abandoned (it never receives it).
pub fn client_closed_request() -> StatusCode {
    StatusCode::from_u16(499).unwrap_or(StatusCode::BAD_REQUEST)
}

/// How an attempt to reach the upstream failed (the `outcome` label of attempt metrics).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FailureKind {
    Connect,
    Tls,
    Timeout,
    Other,
}

impl FailureKind {
    pub fn outcome(self) -> &'static str {
        match self {
            FailureKind::Connect => "connect_error",
            FailureKind::Tls => "tls_error",
            FailureKind::Timeout => "timeout",
            FailureKind::Other => "other_error",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("no upstream is configured for this path")]
    UnknownUpstream,
    #[error("{0}")]
    BadRequest(&'static str),
    #[error("request body is larger than the {limit} byte limit")]
    PayloadTooLarge { limit: u64 },
    #[error("client did not send the request headers in time")]
    HeaderTimeout,
    /// The application stopped sending its request body (an attempt timed out waiting for it).
    #[error("client did not send the request body in time")]
    BodyTimeout,
    /// The application went away before its request was complete (nginx's 499): logged and
    /// counted, never seen by anyone.
    #[error("client closed the connection before the request was complete")]
    ClientClosed,
    #[error("request header section is larger than the {limit} byte limit")]
    HeadersTooLarge { limit: usize },
    #[error("{upstream}: local rate limit exceeded")]
    RateLimited {
        upstream: String,
        retry_after: Duration,
    },
    #[error("{upstream}: upstream rate limit in effect")]
    UpstreamRateLimited {
        upstream: String,
        retry_after: Duration,
    },
    #[error("{upstream}: circuit breaker is open")]
    CircuitOpen {
        upstream: String,
        retry_after: Duration,
    },
    #[error("{upstream}: credentials unavailable: {reason}")]
    CredentialsUnavailable { upstream: String, reason: String },
    #[error("{upstream}: {}", unreachable_message(*.kind))]
    Unreachable {
        upstream: String,
        kind: FailureKind,
        #[source]
        source: Option<BoxError>,
    },
    #[error("{upstream}: {}", if *.total { "no response within the total timeout" } else { "no response within the attempt timeout" })]
    Timeout { upstream: String, total: bool },
    /// `mode: replay` and no recording matches: answered without reaching the network.
    #[error("{}", .0.message())]
    ReplayMiss(Box<crate::capture::cassette::ReplayMiss>),
}

fn unreachable_message(kind: FailureKind) -> &'static str {
    match kind {
        FailureKind::Connect => "could not connect to the upstream",
        FailureKind::Tls => "TLS handshake with the upstream failed",
        FailureKind::Timeout => "upstream timed out",
        FailureKind::Other => "upstream connection failed after the request was sent",
    }
}

impl ProxyError {
    pub fn kind(&self) -> &'static str {
        match self {
            ProxyError::UnknownUpstream => "unknown_upstream",
            ProxyError::BadRequest(_) => "bad_request",
            ProxyError::PayloadTooLarge { .. } => "payload_too_large",
            ProxyError::HeaderTimeout | ProxyError::BodyTimeout => "request_timeout",
            ProxyError::ClientClosed => "client_closed_request",
            ProxyError::HeadersTooLarge { .. } => "request_header_fields_too_large",
            ProxyError::RateLimited { .. } | ProxyError::UpstreamRateLimited { .. } => {
                "rate_limited"
            }
            ProxyError::CircuitOpen { .. } => "circuit_open",
            ProxyError::CredentialsUnavailable { .. } => "credentials_unavailable",
            ProxyError::Unreachable { .. } => "upstream_unreachable",
            ProxyError::Timeout { .. } => "upstream_timeout",
            ProxyError::ReplayMiss(_) => "replay_miss",
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            ProxyError::UnknownUpstream => StatusCode::NOT_FOUND,
            ProxyError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ProxyError::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ProxyError::HeaderTimeout | ProxyError::BodyTimeout => StatusCode::REQUEST_TIMEOUT,
            ProxyError::ClientClosed => client_closed_request(),
            ProxyError::HeadersTooLarge { .. } => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            ProxyError::RateLimited { .. } | ProxyError::UpstreamRateLimited { .. } => {
                StatusCode::TOO_MANY_REQUESTS
            }
            ProxyError::CircuitOpen { .. } | ProxyError::CredentialsUnavailable { .. } => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            ProxyError::Unreachable { .. } => StatusCode::BAD_GATEWAY,
            ProxyError::Timeout { .. } => StatusCode::GATEWAY_TIMEOUT,
            ProxyError::ReplayMiss(_) => StatusCode::BAD_GATEWAY,
        }
    }

    pub fn retryable(&self) -> bool {
        !matches!(
            self,
            ProxyError::UnknownUpstream
                | ProxyError::BadRequest(_)
                | ProxyError::PayloadTooLarge { .. }
                | ProxyError::HeadersTooLarge { .. }
                | ProxyError::ReplayMiss(_)
        )
    }

    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            ProxyError::RateLimited { retry_after, .. }
            | ProxyError::UpstreamRateLimited { retry_after, .. }
            | ProxyError::CircuitOpen { retry_after, .. } => Some(*retry_after),
            _ => None,
        }
    }

    pub fn upstream(&self) -> Option<&str> {
        match self {
            ProxyError::RateLimited { upstream, .. }
            | ProxyError::UpstreamRateLimited { upstream, .. }
            | ProxyError::CircuitOpen { upstream, .. }
            | ProxyError::CredentialsUnavailable { upstream, .. }
            | ProxyError::Unreachable { upstream, .. }
            | ProxyError::Timeout { upstream, .. } => Some(upstream),
            _ => None,
        }
    }

    /// True when the upstream may have received (and acted on) the request before the failure:
    /// a timeout or a connection lost mid-request. Connect and TLS failures sent nothing.
    pub fn maybe_processed(&self) -> bool {
        matches!(
            self,
            ProxyError::Timeout { .. }
                | ProxyError::Unreachable {
                    kind: FailureKind::Other | FailureKind::Timeout,
                    ..
                }
        )
    }

    /// The normalized JSON response for this error. `request_safe`: the application may send
    /// the request again (idempotent method or its own `Idempotency-Key`); when it is not and
    /// the upstream may have processed it, the error is not `retryable`, so an application that
    /// trusts the flag never sends a payment twice.
    pub fn to_response(
        &self,
        upstream: Option<&str>,
        request_id: &str,
        request_safe: bool,
    ) -> Response<BoxBody> {
        if let ProxyError::ReplayMiss(miss) = self {
            // The miss names what was asked and the nearest recording (never a secret: the
            // cassette holds none).
            let mut response = Response::new(full(miss.error_json(request_id).to_string()));
            *response.status_mut() = StatusCode::BAD_GATEWAY;
            let headers = response.headers_mut();
            headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
            headers.insert(
                X_OUTPOST_ERROR.clone(),
                HeaderValue::from_static("replay_miss"),
            );
            if let Ok(id) = HeaderValue::from_str(request_id) {
                headers.insert(X_REQUEST_ID.clone(), id);
            }
            return response;
        }
        ErrorBody {
            kind: self.kind(),
            message: &self.to_string(),
            upstream: upstream.or(self.upstream()),
            status: self.status(),
            retryable: self.retryable() && (request_safe || !self.maybe_processed()),
            retry_after: self.retry_after(),
            request_id,
        }
        .into_response()
    }
}

/// The fields of the normalized error JSON; also used by `errors: normalize` and webhooks.
pub struct ErrorBody<'a> {
    pub kind: &'a str,
    pub message: &'a str,
    pub upstream: Option<&'a str>,
    pub status: StatusCode,
    pub retryable: bool,
    pub retry_after: Option<Duration>,
    pub request_id: &'a str,
}

impl ErrorBody<'_> {
    pub fn to_json(&self) -> serde_json::Value {
        let mut error = serde_json::Map::new();
        error.insert("type".into(), self.kind.into());
        error.insert("message".into(), self.message.into());
        if let Some(upstream) = self.upstream {
            error.insert("upstream".into(), upstream.into());
        }
        error.insert("status".into(), self.status.as_u16().into());
        error.insert("retryable".into(), self.retryable.into());
        if let Some(wait) = self.retry_after {
            let seconds = (wait.as_secs_f64() * 1000.0).round() / 1000.0;
            error.insert("retry_after_seconds".into(), seconds.into());
        }
        error.insert("request_id".into(), self.request_id.into());
        serde_json::json!({ "error": error })
    }

    pub fn into_response(self) -> Response<BoxBody> {
        let body = self.to_json().to_string();
        let mut response = Response::new(full(body));
        *response.status_mut() = self.status;
        let headers = response.headers_mut();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        if let Ok(kind) = HeaderValue::from_str(self.kind) {
            headers.insert(X_OUTPOST_ERROR.clone(), kind);
        }
        if let Ok(id) = HeaderValue::from_str(self.request_id) {
            headers.insert(X_REQUEST_ID.clone(), id);
        }
        if let Some(wait) = self.retry_after {
            // Retry-After takes whole seconds; round up so a client never comes back too early.
            let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
            headers.insert(RETRY_AFTER, HeaderValue::from(secs));
        }
        response
    }
}

/// The whole cause chain of an error on one line, for logs only (never for responses).
pub fn chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut out = err.to_string();
    let mut current = err.source();
    while let Some(e) = current {
        out.push_str(": ");
        out.push_str(&e.to_string());
        current = e.source();
    }
    out
}

/// The `x-outpost-error` type for an upstream's own error status (passthrough and normalize).
pub fn classify_status(status: StatusCode) -> Option<&'static str> {
    match status.as_u16() {
        401..=403 => Some("authentication_failed"),
        404 => Some("not_found"),
        429 => Some("rate_limited"),
        400..=499 => Some("client_error"),
        500..=599 => Some("upstream_error"),
        _ => None,
    }
}

/// Why Outpost could not start serving (or a reload could not bind a listener it needs).
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot listen on {addr} ({what}): {source}")]
    Bind {
        what: &'static str,
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
    #[error("{0}")]
    Build(String),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_json_has_the_contract_fields() {
        let err = ProxyError::RateLimited {
            upstream: "stripe".into(),
            retry_after: Duration::from_millis(1200),
        };
        let response = err.to_response(None, "req-1", true);
        assert_eq!(response.status(), 429);
        assert_eq!(response.headers()["x-outpost-error"], "rate_limited");
        assert_eq!(response.headers()["retry-after"], "2");
        assert_eq!(response.headers()["content-type"], "application/json");
        let body = ErrorBody {
            kind: err.kind(),
            message: &err.to_string(),
            upstream: err.upstream(),
            status: err.status(),
            retryable: err.retryable(),
            retry_after: err.retry_after(),
            request_id: "req-1",
        }
        .to_json();
        assert_eq!(
            body,
            serde_json::json!({"error": {"type": "rate_limited", "message": "stripe: local rate limit exceeded",
                "upstream": "stripe", "status": 429, "retryable": true, "retry_after_seconds": 1.2, "request_id": "req-1"}})
        );
    }

    #[test]
    fn a_possibly_processed_unsafe_request_is_not_retryable() {
        let lost = ProxyError::Unreachable {
            upstream: "stripe".into(),
            kind: FailureKind::Other,
            source: None,
        };
        let json = |r: Response<BoxBody>| r.headers().get("x-outpost-error").cloned();
        assert!(lost.maybe_processed());
        assert!(json(lost.to_response(None, "r", false)).is_some());
        let refused = ProxyError::Unreachable {
            upstream: "stripe".into(),
            kind: FailureKind::Connect,
            source: None,
        };
        assert!(!refused.maybe_processed());
        let timeout = ProxyError::Timeout {
            upstream: "s".into(),
            total: false,
        };
        assert!(timeout.maybe_processed());
    }

    #[test]
    fn statuses_classify() {
        assert_eq!(
            classify_status(StatusCode::UNAUTHORIZED),
            Some("authentication_failed")
        );
        assert_eq!(
            classify_status(StatusCode::FORBIDDEN),
            Some("authentication_failed")
        );
        assert_eq!(classify_status(StatusCode::NOT_FOUND), Some("not_found"));
        assert_eq!(
            classify_status(StatusCode::TOO_MANY_REQUESTS),
            Some("rate_limited")
        );
        assert_eq!(classify_status(StatusCode::CONFLICT), Some("client_error"));
        assert_eq!(
            classify_status(StatusCode::BAD_GATEWAY),
            Some("upstream_error")
        );
        assert_eq!(classify_status(StatusCode::OK), None);
        assert_eq!(classify_status(StatusCode::FOUND), None);
    }
}
