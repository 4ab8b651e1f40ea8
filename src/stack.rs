//! One upstream's request path, outer to inner, on one screen:
//!
//! ```text
//! total timeout → attempt timeout → auth → client
//! ```
//!
//! (Issue #3 inserts circuit breaker → retry → rate limit between the two timeouts.) Auth is
//! innermost, so nothing outside it holds a secret. [`UpstreamStack::call`] receives a request
//! that is already routed and checked, and returns the upstream's response or a
//! [`ProxyError`]; turning errors into responses happens once, in `proxy.rs`.

pub mod auth;
pub mod headers;

use std::sync::Arc;

use http::header::HeaderValue;
use http::{Request, Response, StatusCode};
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;

use crate::body::{boxed, BoxBody, BoxError};
use crate::client::{Clients, HttpClient};
use crate::config::Upstream;
use crate::error::{classify_status, FailureKind, ProxyError, X_OUTPOST_ERROR};
use crate::metrics::{Metrics, UpstreamMetrics, UPSTREAM_ATTEMPTS_TOTAL};
use self::auth::{upstream_uri, Credentials};

/// Everything one upstream needs per request, built once per config generation.
pub struct UpstreamStack {
    pub config: Arc<Upstream>,
    client: HttpClient,
    credentials: Option<Credentials>,
    pub metrics: UpstreamMetrics,
    attempt_outcomes: AttemptCounters,
}

struct AttemptCounters {
    response: metrics::Counter,
    connect_error: metrics::Counter,
    timeout: metrics::Counter,
    tls_error: metrics::Counter,
    other_error: metrics::Counter,
}

impl AttemptCounters {
    fn new(m: &UpstreamMetrics) -> Self {
        let c = |v| m.labelled(UPSTREAM_ATTEMPTS_TOTAL, "outcome", v);
        AttemptCounters {
            response: c("response"),
            connect_error: c("connect_error"),
            timeout: c("timeout"),
            tls_error: c("tls_error"),
            other_error: c("other_error"),
        }
    }

    fn failure(&self, kind: FailureKind) {
        match kind {
            FailureKind::Connect => &self.connect_error,
            FailureKind::Tls => &self.tls_error,
            FailureKind::Timeout => &self.timeout,
            FailureKind::Other => &self.other_error,
        }
        .increment(1);
    }
}

/// The request as it leaves the application, with the routing result.
pub struct Outbound {
    pub request: Request<BoxBody>,
    /// Path after the route prefix (empty or starting with `/`), query not included.
    pub rest_path: String,
    /// The server side of an `Upgrade` handshake, when the application asked for one.
    pub upgrade: Option<OnUpgrade>,
    /// `limits.max_body_bytes`, when the body is wrapped in a limit.
    pub body_limit: Option<u64>,
}

impl UpstreamStack {
    pub fn new(config: Arc<Upstream>, clients: &Clients, metrics: &Metrics) -> Result<Self, String> {
        let client = clients.for_upstream(&config)?;
        let credentials = config.auth.as_ref().map(Credentials::new);
        let upstream_metrics = UpstreamMetrics::new(metrics, &config.name);
        let attempt_outcomes = AttemptCounters::new(&upstream_metrics);
        Ok(UpstreamStack { config, client, credentials, metrics: upstream_metrics, attempt_outcomes })
    }

    /// Forward one request. Returns the response and the number of attempts made.
    pub async fn call(&self, outbound: Outbound) -> (Result<Response<BoxBody>, ProxyError>, u32) {
        let total = self.config.timeout;
        match tokio::time::timeout(total, self.attempt(outbound)).await {
            Ok(result) => (result, 1),
            Err(_) => {
                self.attempt_outcomes.failure(FailureKind::Timeout);
                (Err(ProxyError::Timeout { upstream: self.config.name.clone(), total: true }), 1)
            }
        }
    }

    async fn attempt(&self, outbound: Outbound) -> Result<Response<BoxBody>, ProxyError> {
        let Outbound { request, rest_path, upgrade, body_limit } = outbound;
        let (mut parts, body) = request.into_parts();
        let wants_upgrade = upgrade.is_some();
        headers::sanitize_request(&mut parts.headers, wants_upgrade);

        let base = &self.config.base_url;
        let mut path_and_query = String::with_capacity(base.path.len() + rest_path.len() + 64);
        path_and_query.push_str(&base.path);
        path_and_query.push_str(&rest_path);
        if path_and_query.is_empty() {
            path_and_query.push('/');
        }
        if let Some(query) = parts.uri.query() {
            path_and_query.push('?');
            path_and_query.push_str(query);
        }
        for (name, value) in &self.config.headers {
            parts.headers.insert(name.clone(), value.clone());
        }
        if let Some(credentials) = &self.credentials {
            credentials.strip(&mut parts.headers);
            if !credentials.is_static() {
                return Err(ProxyError::CredentialsUnavailable {
                    upstream: self.config.name.clone(),
                    reason: format!("auth type `{}` is not supported by this build yet", self.config.auth.as_ref().map_or("", |a| a.kind().name())),
                });
            }
            credentials.apply(credentials.next_key(), &mut parts.headers, &mut path_and_query);
        }
        parts.uri = upstream_uri(base, &path_and_query)
            .map_err(|_| ProxyError::BadRequest("request path cannot be forwarded"))?;
        // The version is the upstream connection's business, not the application's.
        parts.version = http::Version::HTTP_11;
        let request = Request::from_parts(parts, body);

        let send = self.client.request(request);
        let mut response = match tokio::time::timeout(self.config.attempt_timeout, send).await {
            Ok(Ok(response)) => response,
            Ok(Err(err)) => {
                let err: BoxError = err.into();
                if let (Some(limit), true) = (body_limit, body_limit_hit(&*err)) {
                    return Err(ProxyError::PayloadTooLarge { limit });
                }
                let kind = classify_failure(&*err);
                self.attempt_outcomes.failure(kind);
                tracing::debug!(upstream = %self.config.name, error = %crate::error::chain(&*err), "upstream attempt failed");
                return Err(ProxyError::Unreachable { upstream: self.config.name.clone(), kind, source: Some(err) });
            }
            Err(_) => {
                self.attempt_outcomes.failure(FailureKind::Timeout);
                return Err(ProxyError::Timeout { upstream: self.config.name.clone(), total: false });
            }
        };
        self.attempt_outcomes.response.increment(1);

        let switching = response.status() == StatusCode::SWITCHING_PROTOCOLS;
        if let (true, Some(client_side)) = (switching, upgrade) {
            let upstream_side = hyper::upgrade::on(&mut response);
            let name = self.config.name.clone();
            tokio::spawn(async move {
                match tokio::try_join!(client_side, upstream_side) {
                    Ok((client_io, upstream_io)) => {
                        let mut client_io = TokioIo::new(client_io);
                        let mut upstream_io = TokioIo::new(upstream_io);
                        if let Err(e) = tokio::io::copy_bidirectional(&mut client_io, &mut upstream_io).await {
                            tracing::debug!(upstream = %name, error = %e, "upgraded connection ended");
                        }
                    }
                    Err(e) => tracing::debug!(upstream = %name, error = %e, "upgrade failed"),
                }
            });
        }
        headers::sanitize_response(response.headers_mut(), switching);
        if let Some(kind) = classify_status(response.status()) {
            response.headers_mut().insert(X_OUTPOST_ERROR.clone(), HeaderValue::from_static(kind));
        }
        Ok(response.map(boxed))
    }
}

/// Classify a client error by walking its cause chain.
fn classify_failure(err: &(dyn std::error::Error + 'static)) -> FailureKind {
    let mut connect = false;
    let mut current: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = current {
        if e.downcast_ref::<rustls::Error>().is_some() {
            return FailureKind::Tls;
        }
        if let Some(client_err) = e.downcast_ref::<hyper_util::client::legacy::Error>() {
            connect |= client_err.is_connect();
        }
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            if io.kind() == std::io::ErrorKind::TimedOut {
                return if connect { FailureKind::Connect } else { FailureKind::Timeout };
            }
            if io.get_ref().is_some_and(|inner| inner.is::<rustls::Error>()) {
                return FailureKind::Tls;
            }
        }
        current = e.source();
    }
    if connect {
        FailureKind::Connect
    } else {
        FailureKind::Other
    }
}

/// True when the error came from the request body limit (`limits.max_body_bytes`).
fn body_limit_hit(err: &(dyn std::error::Error + 'static)) -> bool {
    let mut current: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = current {
        if e.is::<http_body_util::LengthLimitError>() {
            return true;
        }
        current = e.source();
    }
    false
}
