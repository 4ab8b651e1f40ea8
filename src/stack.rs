//! One upstream's request path, outer to inner, on one screen:
//!
//! ```text
//! total timeout → circuit breaker → retry (policy + budget + backoff)
//!   → rate limit (per key) → attempt timeout → auth → client
//! ```
//!
//! then `errors: normalize` on the way back. Auth is innermost, so nothing outside it holds a
//! secret; the limiter sits inside retry because the upstream counts every attempt; the breaker
//! sits outside retry, so one logical request is one success or failure. [`UpstreamStack::call`]
//! receives a request that is already routed and checked, and returns the upstream's response
//! or a [`ProxyError`]; turning errors into responses happens once, in `proxy.rs`.

pub mod auth;
pub mod breaker;
pub mod headers;
pub mod normalize;
pub mod oauth;
pub mod ratelimit;
pub mod retry;
pub mod retry_after;
pub mod shared;
pub mod sigv4;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use http::header::HeaderValue;
use http::request::Parts;
use http::{Request, Response, StatusCode, Uri};
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use metrics::{Counter, Gauge};
use tokio::time::Instant;

use self::auth::{upstream_uri, Credentials};
use self::breaker::{Breaker, Permit, Transition};
use self::ratelimit::{Admission, Limiter, Rejected};
use self::retry::{Reason, ReplayBody, RetryPolicy};
use crate::body::{boxed, BoxBody, BoxError, Guarded};
use crate::client::{ClientError, Clients, Endpoint, PooledBody};
use crate::config::{Auth, ErrorMode, Upstream};
use crate::error::{classify_status, FailureKind, ProxyError, X_OUTPOST_ERROR};
use crate::metrics::{
    Metrics, UpstreamMetrics, AUTH_KEY_HEALTHY, CIRCUIT_OPEN, RATE_LIMITED_TOTAL,
    RATE_LIMIT_QUEUED, RETRIES_TOTAL, UPSTREAM_ATTEMPTS_TOTAL,
};

/// An upstream's pause request is honoured up to this long (GitHub resets can be an hour away).
const MAX_UPSTREAM_PAUSE: Duration = Duration::from_secs(3600);

/// The request as it leaves the application, with the routing result.
pub struct Outbound<'a> {
    pub request: Request<BoxBody>,
    /// Path after the route prefix (empty or starting with `/`), query not included.
    pub rest_path: &'a str,
    /// The server side of an `Upgrade` handshake, when the application asked for one.
    pub upgrade: Option<OnUpgrade>,
    /// `limits.max_body_bytes`, when the body is wrapped in a limit.
    pub body_limit: Option<u64>,
}

/// One key of the credential pool (a single slot when there is no pool).
struct KeySlot {
    /// Shared with the previous config generation when the rate limit did not change.
    limiter: Arc<Limiter>,
    removed: AtomicBool,
    healthy: Gauge,
}

struct Counters {
    attempt_response: Counter,
    attempt_connect_error: Counter,
    attempt_timeout: Counter,
    attempt_tls_error: Counter,
    attempt_other_error: Counter,
    retry_status: Counter,
    retry_auth_refresh: Counter,
    retry_connect_error: Counter,
    retry_connection_lost: Counter,
    retry_timeout: Counter,
    limited_local: Counter,
    limited_upstream: Counter,
    circuit_open: Gauge,
}

impl Counters {
    fn new(m: &UpstreamMetrics) -> Self {
        let attempt = |v| m.labelled(UPSTREAM_ATTEMPTS_TOTAL, "outcome", v);
        let retry = |v| m.labelled(RETRIES_TOTAL, "reason", v);
        let limited = |v| m.labelled(RATE_LIMITED_TOTAL, "source", v);
        let circuit_open = m.gauge(CIRCUIT_OPEN);
        circuit_open.set(0.0);
        Counters {
            attempt_response: attempt("response"),
            attempt_connect_error: attempt("connect_error"),
            attempt_timeout: attempt("timeout"),
            attempt_tls_error: attempt("tls_error"),
            attempt_other_error: attempt("other_error"),
            retry_status: retry(Reason::Status.label()),
            retry_auth_refresh: retry(Reason::AuthRefresh.label()),
            retry_connect_error: retry(Reason::ConnectError.label()),
            retry_connection_lost: retry(Reason::ConnectionLost.label()),
            retry_timeout: retry(Reason::Timeout.label()),
            limited_local: limited("local"),
            limited_upstream: limited("upstream"),
            circuit_open,
        }
    }

    fn failure(&self, kind: FailureKind) {
        match kind {
            FailureKind::Connect => &self.attempt_connect_error,
            FailureKind::Tls => &self.attempt_tls_error,
            FailureKind::Timeout => &self.attempt_timeout,
            FailureKind::Other => &self.attempt_other_error,
        }
        .increment(1);
    }

    fn retry(&self, reason: Reason) {
        match reason {
            Reason::Status => &self.retry_status,
            Reason::AuthRefresh => &self.retry_auth_refresh,
            Reason::ConnectError => &self.retry_connect_error,
            Reason::ConnectionLost => &self.retry_connection_lost,
            Reason::Timeout => &self.retry_timeout,
        }
        .increment(1);
    }
}

/// Everything one upstream needs per request, built once per config generation.
pub struct UpstreamStack {
    pub config: Arc<Upstream>,
    /// The connection pool of `base_url`'s origin.
    endpoint: Arc<Endpoint>,
    credentials: Option<Credentials>,
    /// `oauth2_client_credentials`: the upstream's access token.
    oauth: Option<Arc<oauth::TokenSource>>,
    /// `aws_sigv4`: signs each attempt.
    sigv4: Option<sigv4::Signer>,
    keys: Vec<KeySlot>,
    next_key: AtomicUsize,
    retry: RetryPolicy,
    breaker: Option<Arc<Breaker>>,
    pub metrics: UpstreamMetrics,
    counters: Counters,
}

/// What one attempt produced.
type Attempt = Result<Response<PooledBody>, ProxyError>;

impl UpstreamStack {
    /// Build the stack for `config`. `previous` is the same upstream's stack in the config being
    /// replaced: its limiter, breaker and token state carry over where their config is unchanged,
    /// so a reload neither resets a rate budget nor closes an open breaker.
    pub fn new(
        config: Arc<Upstream>,
        clients: &Clients,
        metrics: &Metrics,
        previous: Option<&UpstreamStack>,
    ) -> Result<Self, String> {
        let client = clients.for_upstream(&config)?;
        let endpoint = client
            .endpoint(&config.base_url.scheme, &config.base_url.authority)
            .map_err(|e| format!("base_url: {e}"))?;
        let credentials = config.auth.as_ref().map(Credentials::new);
        let upstream_metrics = UpstreamMetrics::new(metrics, &config.name);
        let queued = upstream_metrics.gauge(RATE_LIMIT_QUEUED);
        let shared = shared::SharedStore::for_upstream(&config, &upstream_metrics)?;
        let pool = config.auth.as_ref().map_or(1, |a| a.pool_size()).max(1);
        let same_limits =
            previous.filter(|p| p.config.rate_limit == config.rate_limit && p.keys.len() == pool);
        let keys = (0..pool)
            .map(|i| {
                let healthy = upstream_metrics.gauge_with(AUTH_KEY_HEALTHY, "key", i.to_string());
                healthy.set(1.0);
                let limiter = match same_limits {
                    Some(p) => p.keys[i].limiter.clone(),
                    None => Arc::new(Limiter::with_shared(
                        config.rate_limit.as_ref(),
                        Some(queued.clone()),
                        shared.as_ref().map(|s| s.bucket(i)),
                    )),
                };
                KeySlot {
                    limiter,
                    removed: AtomicBool::new(false),
                    healthy,
                }
            })
            .collect();
        let counters = Counters::new(&upstream_metrics);
        let same_transport = |p: &UpstreamStack| {
            p.config.connect_timeout == config.connect_timeout
                && p.config.http == config.http
                && p.config.tls_ca_file == config.tls_ca_file
                && p.config.attempt_timeout == config.attempt_timeout
        };
        let previous_oauth = previous.filter(|p| same_transport(p)).and_then(|p| {
            match (&p.config.auth, &config.auth, &p.oauth) {
                (
                    Some(Auth::OAuth2ClientCredentials(before)),
                    Some(Auth::OAuth2ClientCredentials(now)),
                    Some(source),
                ) if before == now => Some(source.clone()),
                _ => None,
            }
        });
        let oauth = match &config.auth {
            Some(Auth::OAuth2ClientCredentials(_)) if previous_oauth.is_some() => previous_oauth,
            Some(Auth::OAuth2ClientCredentials(oauth2)) => Some(oauth::TokenSource::new(
                &config.name,
                oauth2,
                client.clone(),
                config.attempt_timeout,
                &upstream_metrics,
            )),
            _ => None,
        };
        let sigv4 = match &config.auth {
            Some(Auth::AwsSigv4(aws)) => {
                Some(sigv4::Signer::new(&config.name, aws, &config.base_url))
            }
            _ => None,
        };
        Ok(UpstreamStack {
            retry: RetryPolicy::new(config.retry.clone(), config.provider),
            breaker: match previous.and_then(|p| {
                p.breaker
                    .as_ref()
                    .filter(|_| p.config.circuit_breaker == config.circuit_breaker)
            }) {
                Some(breaker) => {
                    counters
                        .circuit_open
                        .set(if breaker.is_open() { 1.0 } else { 0.0 });
                    Some(breaker.clone())
                }
                None => config
                    .circuit_breaker
                    .clone()
                    .map(|c| Arc::new(Breaker::new(c))),
            },
            config,
            endpoint,
            credentials,
            oauth,
            sigv4,
            keys,
            next_key: AtomicUsize::new(0),
            metrics: upstream_metrics,
            counters,
        })
    }

    fn name(&self) -> String {
        self.config.name.clone()
    }

    /// Forward one request. Returns the response and the number of attempts sent upstream.
    pub async fn call(
        &self,
        outbound: Outbound<'_>,
        request_id: &str,
    ) -> (Result<Response<BoxBody>, ProxyError>, u32) {
        let deadline = Instant::now() + self.config.timeout;
        let permit = match &self.breaker {
            Some(breaker) => match breaker.allow() {
                Ok(permit) => Some(permit),
                Err(retry_after) => {
                    return (
                        Err(ProxyError::CircuitOpen {
                            upstream: self.name(),
                            retry_after,
                        }),
                        0,
                    )
                }
            },
            None => None,
        };
        let mut attempts = 0;
        // Set while an attempt is on the wire, so a total timeout during a backoff sleep or a
        // limiter wait is not counted as a timed-out attempt.
        let sending = AtomicBool::new(false);
        let result = match tokio::time::timeout_at(
            deadline,
            self.forward(outbound, deadline, &mut attempts, &sending),
        )
        .await
        {
            Ok(result) => result,
            Err(_) => {
                if sending.load(Ordering::Relaxed) {
                    self.counters.attempt_timeout.increment(1);
                }
                Err(ProxyError::Timeout {
                    upstream: self.name(),
                    total: true,
                })
            }
        };
        if let (Some(breaker), Some(permit)) = (&self.breaker, permit) {
            self.record_breaker(breaker, permit, &result);
        }
        let result = match result {
            Ok(response)
                if self.config.errors == ErrorMode::Normalize
                    && response.status().as_u16() >= 400 =>
            {
                Ok(normalize::normalize(
                    response,
                    &self.config.name,
                    request_id,
                    self.config.provider,
                )
                .await)
            }
            other => other,
        };
        (result, attempts)
    }

    fn record_breaker(
        &self,
        breaker: &Breaker,
        permit: Permit,
        result: &Result<Response<BoxBody>, ProxyError>,
    ) {
        let failed = match result {
            Ok(response) => response.status().is_server_error(),
            Err(ProxyError::Unreachable { .. } | ProxyError::Timeout { .. }) => true,
            // Refused locally: the upstream was never asked, so it says nothing about its health.
            Err(_) => {
                breaker.abandon(permit);
                return;
            }
        };
        match breaker.record(permit, !failed) {
            Transition::Opened => {
                self.counters.circuit_open.set(1.0);
                tracing::warn!(upstream = %self.config.name, open_for = ?self.config.circuit_breaker.as_ref().map(|c| c.open_for), "circuit breaker opened");
            }
            Transition::Closed => {
                self.counters.circuit_open.set(0.0);
                tracing::info!(upstream = %self.config.name, "circuit breaker closed");
            }
            Transition::None => {}
        }
    }

    /// Pick the next usable key: round robin, skipping removed keys and preferring keys that
    /// are not paused by an upstream 429.
    fn pick_key(&self) -> Result<usize, ProxyError> {
        let n = self.keys.len();
        if n == 1 {
            return Ok(0);
        }
        let start = self.next_key.fetch_add(1, Ordering::Relaxed);
        let mut fallback: Option<(usize, Duration)> = None;
        for i in 0..n {
            let index = (start + i) % n;
            let slot = &self.keys[index];
            if slot.removed.load(Ordering::Relaxed) {
                continue;
            }
            match slot.limiter.paused_for() {
                None => return Ok(index),
                Some(wait) if fallback.is_none_or(|(_, w)| wait < w) => {
                    fallback = Some((index, wait))
                }
                Some(_) => {}
            }
        }
        fallback
            .map(|(index, _)| index)
            .ok_or_else(|| ProxyError::CredentialsUnavailable {
                upstream: self.name(),
                reason: "every key of the pool was rejected by the upstream (401/403)".into(),
            })
    }

    fn live_keys(&self) -> usize {
        self.keys
            .iter()
            .filter(|k| !k.removed.load(Ordering::Relaxed))
            .count()
    }

    /// The retry loop: prepare once, then attempt until success, a final answer or no budget.
    async fn forward(
        &self,
        outbound: Outbound<'_>,
        deadline: Instant,
        attempts: &mut u32,
        sending: &AtomicBool,
    ) -> Result<Response<BoxBody>, ProxyError> {
        let Outbound {
            request,
            rest_path,
            mut upgrade,
            body_limit,
            ..
        } = outbound;
        let (mut parts, body) = request.into_parts();
        let path_and_query = self.prepare(&mut parts, rest_path, upgrade.is_some())?;
        // Outbound webhook signing (standard_webhooks, hmac_signature): once per logical request.
        let body =
            crate::webhook::sign::sign_request(&self.config, &mut parts.headers, body).await?;
        let safe = self.retry.is_safe(&parts.method, &parts.headers);

        // OAuth2 may replay the body once after a 401; SigV4 hashes it. Both buffer it (up to
        // `retry.max_body_bytes`) even when retries are off.
        let buffer = self.retry.enabled() || self.oauth.is_some() || self.sigv4.is_some();
        let mut body = if buffer && upgrade.is_none() {
            ReplayBody::new(body, self.retry.config.max_body_bytes)
                .await
                .map_err(|e| body_error(&*e, body_limit))?
        } else {
            ReplayBody::once(body)
        };
        let payload = match &self.sigv4 {
            Some(signer) => {
                Some(signer.payload(&body, &parts.headers, self.retry.config.max_body_bytes)?)
            }
            None => None,
        };
        self.retry.deposit();
        // The same URI for every attempt, unless a pooled query-parameter key changes it.
        let fixed_uri = match &self.credentials {
            Some(credentials) if credentials.edits_query() => None,
            _ => Some(self.upstream_uri(&path_and_query)?),
        };

        let mut retries = 0u32;
        let mut auth_refreshed = false;
        loop {
            let key = self.pick_key()?;
            let admission = self.admit(key, deadline).await?;
            let token = match &self.oauth {
                Some(source) => Some(source.token().await?),
                None => None,
            };
            let Some(attempt_body) = body.take() else {
                return Err(ProxyError::BadRequest("request body cannot be sent again"));
            };
            *attempts += 1;
            let mut request = self.build_request(
                &parts,
                &path_and_query,
                fixed_uri.as_ref(),
                key,
                attempt_body,
            )?;
            self.authorize(&mut request, token.as_deref(), payload.as_ref())?;
            sending.store(true, Ordering::Relaxed);
            let outcome = self.send(request, upgrade.take(), body_limit).await;
            sending.store(false, Ordering::Relaxed);

            let last = retries + 1 >= self.retry.config.max_attempts || !body.replayable();
            let decision = match (&outcome, &token) {
                // The token was rejected: the request was not processed, so whatever the method
                // it goes again once, with a fresh token.
                (Ok(response), Some(token))
                    if response.status() == StatusCode::UNAUTHORIZED
                        && !auth_refreshed
                        && body.replayable() =>
                {
                    auth_refreshed = true;
                    if let Some(source) = &self.oauth {
                        source.invalidate(token);
                    }
                    Some((Reason::AuthRefresh, Duration::ZERO))
                }
                (Ok(response), _) => self.decide_response(key, response, safe, retries, last),
                (Err(err), _) => {
                    let (retry_it, reason) = match err {
                        // Nothing was sent: always safe.
                        ProxyError::Unreachable {
                            kind: FailureKind::Connect | FailureKind::Tls,
                            ..
                        } => (true, Reason::ConnectError),
                        // The upstream may have the request: only safe requests go again.
                        ProxyError::Unreachable { .. } => (safe, Reason::ConnectionLost),
                        ProxyError::Timeout { total: false, .. } => (safe, Reason::Timeout),
                        _ => (false, Reason::Status),
                    };
                    (!last && retry_it).then(|| (reason, self.retry.backoff(retries + 1)))
                }
            };
            let Some((reason, delay)) = decision else {
                return outcome.map(|r| self.finish(r, admission));
            };
            drop(admission);
            if Instant::now() + delay >= deadline || !self.retry.withdraw() {
                tracing::debug!(upstream = %self.config.name, "not retrying: deadline or retry budget");
                return match outcome {
                    Ok(response) => Ok(self.finish(response, None)),
                    Err(e) => Err(e),
                };
            }
            drop(outcome);
            self.counters.retry(reason);
            retries += 1;
            tracing::debug!(upstream = %self.config.name, retry = retries, reason = reason.label(), delay_ms = delay.as_millis() as u64, "retrying");
            tokio::time::sleep(delay).await;
        }
    }

    /// Should this upstream answer be retried, and after how long? `None`: return it.
    fn decide_response(
        &self,
        key: usize,
        response: &Response<PooledBody>,
        safe: bool,
        retries: u32,
        last: bool,
    ) -> Option<(Reason, Duration)> {
        let status = response.status();
        let wait = self.observe_response(key, response);
        let key_rejected = self.keys.len() > 1 && matches!(status.as_u16(), 401 | 403);
        if key_rejected {
            self.remove_key(key, status);
        }
        let retry_it = (key_rejected && self.live_keys() > 0)
            || self.retry.retry_status(status, response.headers(), safe);
        if last || !retry_it {
            return None;
        }
        if key_rejected {
            return Some((Reason::AuthRefresh, Duration::ZERO));
        }
        // A key pool: the 429 paused only this key; another one serves at once.
        let other_key_free = self.keys.len() > 1
            && self
                .keys
                .iter()
                .any(|k| !k.removed.load(Ordering::Relaxed) && k.limiter.paused_for().is_none());
        let delay = match wait {
            _ if status == StatusCode::TOO_MANY_REQUESTS && other_key_free => Duration::ZERO,
            // The upstream asked for longer than we may wait: its answer goes back at once.
            Some(wait)
                if self.retry.config.respect_retry_after
                    && wait > self.retry.config.max_retry_after =>
            {
                return None
            }
            Some(wait) if self.retry.config.respect_retry_after => wait,
            _ => self.retry.backoff(retries + 1),
        };
        Some((Reason::Status, delay))
    }

    /// Header and path work done once per logical request.
    fn prepare(
        &self,
        parts: &mut Parts,
        rest_path: &str,
        upgrade: bool,
    ) -> Result<String, ProxyError> {
        headers::sanitize_request(&mut parts.headers, upgrade);
        let base = &self.config.base_url;
        let mut path_and_query = String::with_capacity(base.path.len() + rest_path.len() + 64);
        path_and_query.push_str(&base.path);
        path_and_query.push_str(rest_path);
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
            if !credentials.is_static()
                && self.oauth.is_none()
                && self.sigv4.is_none()
                && !self
                    .config
                    .auth
                    .as_ref()
                    .is_some_and(crate::webhook::sign::signs)
            {
                return Err(ProxyError::CredentialsUnavailable {
                    upstream: self.name(),
                    reason: format!(
                        "auth type `{}` is not supported by this build yet",
                        self.config.auth.as_ref().map_or("", |a| a.kind().name())
                    ),
                });
            }
        }
        self.retry
            .add_idempotency_key(&parts.method, &mut parts.headers);
        Ok(path_and_query)
    }

    /// Wait for the key's rate limit (and in-flight cap).
    async fn admit(&self, key: usize, deadline: Instant) -> Result<Option<Admission>, ProxyError> {
        match self.keys[key].limiter.acquire(Some(deadline)).await {
            Ok(admission) => Ok(Some(admission)),
            Err(Rejected::Local { retry_after }) => {
                self.counters.limited_local.increment(1);
                Err(ProxyError::RateLimited {
                    upstream: self.name(),
                    retry_after,
                })
            }
            Err(Rejected::Upstream { retry_after }) => {
                self.counters.limited_upstream.increment(1);
                Err(ProxyError::UpstreamRateLimited {
                    upstream: self.name(),
                    retry_after,
                })
            }
        }
    }

    /// The attempt's request: shared parts, the credential of pool key `key`, and the body.
    /// `uri` is the upstream URI when it is the same for every attempt (no query-parameter
    /// credential), built once by the caller.
    fn build_request(
        &self,
        parts: &Parts,
        path_and_query: &str,
        uri: Option<&Uri>,
        key: usize,
        body: BoxBody,
    ) -> Result<Request<BoxBody>, ProxyError> {
        let mut headers = parts.headers.clone();
        let uri = match uri {
            Some(uri) => {
                if let Some(credentials) = &self.credentials {
                    credentials.apply(key, &mut headers, &mut String::new());
                }
                uri.clone()
            }
            None => {
                let mut path_and_query = path_and_query.to_string();
                if let Some(credentials) = &self.credentials {
                    credentials.apply(key, &mut headers, &mut path_and_query);
                }
                self.upstream_uri(&path_and_query)?
            }
        };
        let mut request = Request::new(body);
        *request.method_mut() = parts.method.clone();
        *request.uri_mut() = uri;
        // The version is the upstream connection's business, not the application's.
        *request.version_mut() = http::Version::HTTP_11;
        *request.headers_mut() = headers;
        Ok(request)
    }

    fn upstream_uri(&self, path_and_query: &str) -> Result<Uri, ProxyError> {
        upstream_uri(&self.config.base_url, path_and_query)
            .map_err(|_| ProxyError::BadRequest("request path cannot be forwarded"))
    }

    /// Per-attempt credentials: the OAuth2 token, then the SigV4 signature, last, over the
    /// final method, URI and headers (with a fresh `x-amz-date` on every attempt).
    fn authorize(
        &self,
        request: &mut Request<BoxBody>,
        token: Option<&oauth::Token>,
        payload: Option<&sigv4::Payload>,
    ) -> Result<(), ProxyError> {
        if let Some(token) = token {
            token.apply(request.headers_mut());
        }
        if let (Some(signer), Some(payload)) = (&self.sigv4, payload) {
            signer.sign(request, payload, SystemTime::now())?;
        }
        Ok(())
    }

    /// One attempt through the client, bounded by `attempt_timeout`.
    async fn send(
        &self,
        request: Request<BoxBody>,
        upgrade: Option<OnUpgrade>,
        body_limit: Option<u64>,
    ) -> Attempt {
        let send = self.endpoint.send(request);
        let mut response = match tokio::time::timeout(self.config.attempt_timeout, send).await {
            Ok(Ok(response)) => response,
            Ok(Err(err)) => {
                let err: BoxError = err.into();
                if let (Some(limit), true) = (body_limit, crate::body::is_length_limit(&*err)) {
                    return Err(ProxyError::PayloadTooLarge { limit });
                }
                let kind = classify_failure(&*err);
                self.counters.failure(kind);
                tracing::debug!(upstream = %self.config.name, error = %crate::error::chain(&*err), "upstream attempt failed");
                return Err(ProxyError::Unreachable {
                    upstream: self.name(),
                    kind,
                    source: Some(err),
                });
            }
            Err(_) => {
                self.counters.attempt_timeout.increment(1);
                return Err(ProxyError::Timeout {
                    upstream: self.name(),
                    total: false,
                });
            }
        };
        self.counters.attempt_response.increment(1);
        if let (StatusCode::SWITCHING_PROTOCOLS, Some(client_side)) = (response.status(), upgrade) {
            let upstream_side = hyper::upgrade::on(&mut response);
            tokio::spawn(tunnel(self.name(), client_side, upstream_side));
        }
        Ok(response)
    }

    /// Upstream backpressure: a 429 (or a 503 naming a time) pauses this key's limiter.
    /// Returns the wait the upstream asked for.
    fn observe_response(&self, key: usize, response: &Response<PooledBody>) -> Option<Duration> {
        let status = response.status();
        // Only error answers name a wait; skip the header parsing on the happy path.
        if status.as_u16() < 400 {
            return None;
        }
        let wait = retry_after::requested_wait(
            response.headers(),
            self.config.provider,
            SystemTime::now(),
        );
        if status == StatusCode::TOO_MANY_REQUESTS {
            self.counters.limited_upstream.increment(1);
            let pause = wait.or(self
                .config
                .provider
                .default_429_wait_secs
                .map(Duration::from_secs));
            if let Some(pause) = pause {
                self.keys[key]
                    .limiter
                    .pause_until(Instant::now() + pause.min(MAX_UPSTREAM_PAUSE));
            }
        } else if status == StatusCode::SERVICE_UNAVAILABLE {
            if let Some(pause) = wait {
                self.keys[key]
                    .limiter
                    .pause_until(Instant::now() + pause.min(MAX_UPSTREAM_PAUSE));
            }
        }
        wait
    }

    fn remove_key(&self, key: usize, status: StatusCode) {
        if !self.keys[key].removed.swap(true, Ordering::Relaxed) {
            self.keys[key].healthy.set(0.0);
            tracing::error!(upstream = %self.config.name, key_index = key, status = status.as_u16(),
                "upstream rejected a pooled key; it is out of rotation until the config is reloaded");
        }
    }

    /// The response for the application: hop-by-hop headers removed, error class added, the
    /// in-flight slot held until the body ends.
    fn finish(
        &self,
        mut response: Response<PooledBody>,
        admission: Option<Admission>,
    ) -> Response<BoxBody> {
        let switching = response.status() == StatusCode::SWITCHING_PROTOCOLS;
        headers::sanitize_response(response.headers_mut(), switching);
        if let Some(kind) = classify_status(response.status()) {
            response
                .headers_mut()
                .insert(X_OUTPOST_ERROR.clone(), HeaderValue::from_static(kind));
        }
        match admission {
            Some(admission) => response.map(|b| boxed(Guarded::new(b, admission))),
            None => response.map(boxed),
        }
    }
}

/// Copy bytes both ways once both sides of an upgrade are ready.
async fn tunnel(upstream: String, client_side: OnUpgrade, upstream_side: OnUpgrade) {
    match tokio::try_join!(client_side, upstream_side) {
        Ok((client_io, upstream_io)) => {
            let mut client_io = TokioIo::new(client_io);
            let mut upstream_io = TokioIo::new(upstream_io);
            if let Err(e) = tokio::io::copy_bidirectional(&mut client_io, &mut upstream_io).await {
                tracing::debug!(%upstream, error = %e, "upgraded connection ended");
            }
        }
        Err(e) => tracing::debug!(%upstream, error = %e, "upgrade failed"),
    }
}

/// A request body that could not be read while buffering it for retries.
fn body_error(err: &(dyn std::error::Error + 'static), body_limit: Option<u64>) -> ProxyError {
    match (body_limit, crate::body::is_length_limit(err)) {
        (Some(limit), true) => ProxyError::PayloadTooLarge { limit },
        _ => ProxyError::BadRequest("request body could not be read"),
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
        if let Some(client_err) = e.downcast_ref::<ClientError>() {
            connect |= client_err.is_connect();
        }
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            if io.kind() == std::io::ErrorKind::TimedOut {
                return if connect {
                    FailureKind::Connect
                } else {
                    FailureKind::Timeout
                };
            }
            // `io::Error::source` skips the wrapped error itself (and hyper-rustls wraps twice),
            // so descend through `get_ref`.
            if let Some(inner) = io.get_ref() {
                current = Some(inner as &(dyn std::error::Error + 'static));
                continue;
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
