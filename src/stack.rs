//! One upstream's request path, in the order the code runs:
//!
//! ```text
//! UpstreamStack::call
//!   total deadline        starts first; everything below runs inside it, normalize included
//!   circuit breaker       a permit guard, judged on upstream time only (breaker.rs)
//!   prepare               hop-by-hop headers, configured headers, Idempotency-Key, URI: once
//!   auth: prepare         strip the application's credentials; read and sign the body where
//!                         the signature covers it (auth.rs)
//!   graphql operation     on the GraphQL path only: query / mutation / subscription decides
//!                         retry safety; the body is read within max_body_bytes (graphql.rs)
//!   replay body           streams to the first attempt, keeping a copy for a retry (replay.rs)
//!   retry loop            one decision per attempt: retry::decide(outcome, state); budget,
//!                         backoff (retry.rs)
//!     attempt chain       built once per config generation, outermost first:
//!       limit             pick the pooled key, its rate limit and in-flight cap, the
//!                         upstream's backpressure and quota pacing (limit.rs, ratelimit.rs,
//!                         quota.rs)
//!       auth              that key's credential, the OAuth2 token, the SigV4 signature
//!       attempt timeout   attempt_timeout; tells the application's slowness from the
//!                         upstream's (timeout.rs)
//!       endpoint          the connection pool, Expect: 100-continue, upgrades (endpoint.rs)
//!     graphql answer      a throttling answer is a rate-limit answer; cost data feeds the
//!                         key's points bucket (graphql.rs)
//!   errors: normalize     the upstream's error body rewritten (normalize.rs)
//! ```
//!
//! The limiter sits inside retry because the upstream counts every attempt; auth sits inside
//! the limiter (which chooses the key) and outside the attempt timeout (a token fetch is not
//! upstream time); the breaker sits outside retry, so one logical request is one success or
//! failure. [`UpstreamStack::call`] receives a request that is already routed and checked and
//! returns the upstream's response or a [`ProxyError`]; turning errors into responses happens
//! once, in `proxy.rs`.
//!
//! Everything taken for a request is a guard released on drop, so a request the application
//! abandons at any point leaves nothing behind: the breaker permit ([`breaker::Held`]), the
//! limiter's queue place and in-flight slot, the body copy.

pub mod auth;
pub mod breaker;
pub mod counters;
pub mod credentials;
pub mod endpoint;
pub mod graphql;
pub mod headers;
pub mod jwt;
pub mod layer;
pub mod limit;
pub mod normalize;
pub mod oauth;
pub mod quota;
pub mod ratelimit;
pub mod refresh;
pub mod replay;
pub mod retry;
pub mod retry_after;
pub mod shared;
pub mod sign;
pub mod sigv4;
pub mod timeout;
pub mod token_store;

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use http::header::HeaderValue;
use http::request::Parts;
use http::{Request, Response, StatusCode, Uri};
use http_body::Body as _;
use hyper::upgrade::OnUpgrade;
use tokio::time::Instant;

use self::auth::{AuthLayer, Authorize, Authorizer, Prepared};
use self::breaker::{Breaker, Held, Transition, Verdict};
use self::counters::Counters;
use self::credentials::upstream_uri;
use self::layer::{Answered, Attempt, Progress, Service, Stack};
use self::limit::{KeyLimit, KeyLimitLayer, KeySlot, Keys};
use self::ratelimit::Limiter;
use self::replay::ReplayBody;
use self::retry::{decide, Decision, Outcome, RetryPolicy};
use self::timeout::{AttemptTimeout, AttemptTimeoutLayer};
use crate::body::{boxed, BoxBody, Guarded};
use crate::client::{Clients, HttpClient};
use crate::config::{Auth, ClientCert, ErrorMode, HttpMode, QuotaSignal, Upstream};
use crate::error::{classify_status, FailureKind, ProxyError, X_OUTPOST_ERROR};
use crate::metrics::{
    Metrics, UpstreamMetrics, AUTH_KEY_HEALTHY, RATE_LIMIT_QUEUED, UPSTREAM_PACING_RATE,
    UPSTREAM_QUOTA_REMAINING,
};

/// The request as it leaves the application, with the routing result.
pub struct Outbound<'a> {
    pub request: Request<BoxBody>,
    /// Path after the route prefix (empty or starting with `/`), query not included.
    pub rest_path: &'a str,
    /// The server side of an `Upgrade` handshake, when the application asked for one.
    pub upgrade: Option<OnUpgrade>,
    /// `limits.max_body_bytes`, when the body is wrapped in a limit.
    pub body_limit: Option<u64>,
    /// The capture of this exchange (`capture:` on): attempts and limiter waits go there.
    pub recording: Option<&'a crate::capture::Recording>,
}

/// The attempt chain: limit → auth → attempt timeout → endpoint.
type Chain = KeyLimit<Authorize<AttemptTimeout<endpoint::Send>>>;

/// Everything one upstream needs per request, built once per config generation.
pub struct UpstreamStack {
    pub config: Arc<Upstream>,
    chain: Chain,
    keys: Arc<Keys>,
    authorizer: Arc<Authorizer>,
    retry: RetryPolicy,
    breaker: Option<Arc<Breaker>>,
    pub metrics: UpstreamMetrics,
    counters: Arc<Counters>,
    /// GraphQL queries' last costs (used only with `graphql:`).
    costs: Arc<graphql::Costs>,
}

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
        let upstream_metrics = UpstreamMetrics::new(metrics, &config.name);
        let counters = Arc::new(Counters::new(&upstream_metrics));

        // Limit: one limiter per pooled key, kept across a reload that leaves them unchanged.
        let queued = upstream_metrics.gauge(RATE_LIMIT_QUEUED);
        let shared = shared::SharedStore::for_upstream(&config, &upstream_metrics)?;
        let pool = config.auth.as_ref().map_or(1, |a| a.pool_size()).max(1);
        let same_limits = previous.filter(|p| {
            p.config.rate_limit == config.rate_limit
                && p.config.graphql == config.graphql
                && p.keys.len() == pool
        });
        let slots = (0..pool)
            .map(|i| {
                let limiter = match same_limits.and_then(|p| p.keys.limiter(i)) {
                    Some(limiter) => limiter.clone(),
                    None => Arc::new(
                        Limiter::with_shared(
                            config.rate_limit.as_ref(),
                            Some(queued.clone()),
                            shared.as_ref().map(|s| s.bucket(i)),
                        )
                        .with_pacer(pacer(&config, &upstream_metrics))
                        .with_points(points(&config)),
                    ),
                };
                let healthy = upstream_metrics.gauge_with(AUTH_KEY_HEALTHY, "key", i.to_string());
                KeySlot::new(limiter, healthy)
            })
            .collect();
        let keys = Arc::new(Keys::new(&config.name, slots, config.provider));

        // Auth: the OAuth2 token source is kept when neither it nor the transport changed.
        let same_transport = |p: &UpstreamStack| {
            p.config.connect_timeout == config.connect_timeout
                && p.config.http == config.http
                && p.config.tls_ca_file == config.tls_ca_file
                && p.config.attempt_timeout == config.attempt_timeout
        };
        // The token source is kept when neither its auth config nor the transport changed.
        let kept = previous
            .filter(|p| same_transport(p) && same_token_config(&p.config.auth, &config.auth))
            .and_then(|p| match &*p.authorizer {
                Authorizer::OAuth(source) => Some(source.clone()),
                _ => None,
            });
        let timeout = config.attempt_timeout;
        let oauth = match (&config.auth, kept) {
            (_, Some(source)) => Some(source),
            (Some(Auth::OAuth2ClientCredentials(oauth2)), None) => Some(oauth::TokenSource::new(
                &config.name,
                oauth2,
                token_client(&config, &client, oauth2.client_cert.as_ref())?,
                timeout,
                &upstream_metrics,
            )),
            (Some(Auth::OAuth2JwtBearer(bearer)), None) => Some(jwt::bearer_source(
                &config.name,
                bearer,
                client.clone(),
                timeout,
                &upstream_metrics,
            )?),
            (Some(Auth::OAuth2RefreshToken(refresh_token)), None) => Some(refresh::source(
                &config.name,
                refresh_token,
                token_client(&config, &client, refresh_token.client_cert.as_ref())?,
                timeout,
                &upstream_metrics,
            )?),
            (Some(Auth::GithubApp(app)), None) => Some(jwt::github_source(
                &config.name,
                app,
                &config.base_url,
                client.clone(),
                timeout,
                &upstream_metrics,
            )?),
            _ => None,
        };
        let authorizer = Arc::new(Authorizer::new(&config, oauth));

        let breaker = match previous.and_then(|p| {
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
        };

        // The attempt chain, innermost first: the last `push` runs first.
        let chain = Stack::new(endpoint::Send::new(
            endpoint,
            &config.name,
            counters.clone(),
        ))
        .push(AttemptTimeoutLayer {
            timeout: config.attempt_timeout,
            upstream: config.name.clone(),
            counters: counters.clone(),
        })
        .push(AuthLayer {
            authorizer: authorizer.clone(),
            base: config.base_url.clone(),
            from_token: auth::FromToken::new(&config, &client),
        })
        .push(KeyLimitLayer {
            keys: keys.clone(),
            counters: counters.clone(),
        })
        .into_inner();

        Ok(UpstreamStack {
            retry: RetryPolicy::new(config.retry.clone(), config.provider),
            breaker,
            config,
            chain,
            keys,
            authorizer,
            metrics: upstream_metrics,
            counters,
            costs: Arc::new(graphql::Costs::default()),
        })
    }

    fn name(&self) -> String {
        self.config.name.clone()
    }

    /// Forward one request. `attempts` counts the attempts sent upstream (read by the caller
    /// also when this future is dropped).
    pub async fn call(
        &self,
        outbound: Outbound<'_>,
        request_id: &str,
        attempts: &AtomicU32,
    ) -> Result<Response<BoxBody>, ProxyError> {
        // Total deadline: first, so the breaker and everything after it run inside it.
        let deadline = Instant::now() + self.config.timeout;
        // Circuit breaker: a guard, returned unjudged if this future is dropped.
        let permit = match &self.breaker {
            Some(breaker) => match breaker.hold() {
                Ok(held) => Some(held),
                Err(retry_after) => {
                    return Err(ProxyError::CircuitOpen {
                        upstream: self.name(),
                        retry_after,
                    })
                }
            },
            None => None,
        };
        let progress = Progress::new(outbound.body_limit).timed(outbound.recording.is_some());
        let result = match tokio::time::timeout_at(
            deadline,
            self.forward(outbound, deadline, &progress, attempts),
        )
        .await
        {
            Ok(result) => result,
            Err(_) => {
                if progress.upstream_time() {
                    self.counters.attempt_timeout.increment(1);
                }
                Err(ProxyError::Timeout {
                    upstream: self.name(),
                    total: true,
                })
            }
        };
        if let Some(permit) = permit {
            self.record_breaker(permit, verdict(&result, &progress));
        }
        match result {
            Ok(response)
                if self.config.errors == ErrorMode::Normalize
                    && response.status().as_u16() >= 400 =>
            {
                let normalized = normalize::normalize(
                    response,
                    &self.config.name,
                    request_id,
                    self.config.provider,
                );
                // The error body is read within the same total deadline.
                tokio::time::timeout_at(deadline, normalized)
                    .await
                    .map_err(|_| ProxyError::Timeout {
                        upstream: self.name(),
                        total: true,
                    })
            }
            other => other,
        }
    }

    fn record_breaker(&self, permit: Held, verdict: Verdict) {
        match permit.record(verdict) {
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

    /// Prepare once, then run the attempt chain until the retry decision returns.
    async fn forward(
        &self,
        outbound: Outbound<'_>,
        deadline: Instant,
        progress: &Progress,
        attempts: &AtomicU32,
    ) -> Result<Response<BoxBody>, ProxyError> {
        let Outbound {
            request,
            rest_path,
            mut upgrade,
            recording,
            body_limit,
            ..
        } = outbound;
        let (mut parts, body) = request.into_parts();
        let graphql = upgrade.is_none()
            && self
                .config
                .graphql
                .as_ref()
                .is_some_and(|g| g.path == rest_path);
        let uri = self.prepare(&mut parts, rest_path, upgrade.is_some(), graphql)?;
        let (prepared, scope) = self
            .authorizer
            .prepare(&mut parts.headers, body, self.retry.config.max_body_bytes)
            .await?;
        // GraphQL: the operation decides what is safe to send again (graphql.rs).
        let (prepared, operation) = if graphql {
            let (prepared, operation) = self.read_operation(&parts, prepared, body_limit).await?;
            (prepared, Some(operation))
        } else {
            (prepared, None)
        };
        let safe = match operation.as_ref().map(|o| o.kind) {
            Some(graphql::Kind::Query) => true,
            Some(graphql::Kind::Subscription) => false,
            // A mutation (or what could not be read) only with the application's key.
            Some(graphql::Kind::Mutation | graphql::Kind::Unknown) => {
                self.retry.is_safe(&http::Method::POST, &parts.headers)
            }
            None => self.retry.is_safe(&parts.method, &parts.headers),
        };
        let points = operation
            .as_ref()
            .filter(|o| o.kind != graphql::Kind::Subscription)
            .map(|o| self.costs.estimate(o.name.as_deref()));

        // A copy is kept only when some retry is possible at all; with a cap of 0 the body can
        // still go again while none of it was read (a refused connection).
        let one_attempt =
            !(self.retry.enabled() || self.authorizer.can_refresh() || self.keys.len() > 1);
        let retry_possible = upgrade.is_none() && !one_attempt;
        let cap = if retry_possible {
            self.retry.config.max_body_bytes
        } else {
            0
        };
        let mut body = match prepared {
            Prepared::Read(chunks) => Some(ReplayBody::buffered(chunks)),
            Prepared::Stream(body) if body.is_end_stream() => None,
            Prepared::Stream(body) => Some(ReplayBody::new(body, cap)),
        };
        if let Some(body) = &body {
            progress.watch_body(body.watch());
        }
        self.retry.deposit();

        let mut retries = 0u32;
        let mut auth_refreshed = false;
        loop {
            let (attempt_body, next) = match body.take() {
                Some(this) => {
                    let next = this.replay();
                    (boxed(this), Some(next))
                }
                None => (crate::body::empty(), None),
            };
            body = next;
            attempts.fetch_add(1, Ordering::Relaxed);
            let attempt_started = recording.map(|_| Instant::now());
            let result = self
                .chain
                .call(Attempt {
                    // With a single attempt possible, it takes the prepared headers: no copy.
                    request: if one_attempt {
                        let headers = std::mem::take(&mut parts.headers);
                        build_request_with(&parts, headers, &uri, attempt_body)
                    } else {
                        build_request(&parts, &uri, attempt_body)
                    },
                    key: 0,
                    upgrade: upgrade.take(),
                    deadline,
                    progress,
                    auth: &scope,
                    can_refresh: !auth_refreshed,
                    endpoint: None,
                    points,
                })
                .await;
            let mut throttled = None;
            let result = match (&operation, result) {
                (Some(op), Ok(answered)) if op.kind != graphql::Kind::Subscription => {
                    let (answered, wait) = self.graphql_answer(op, points, answered).await;
                    throttled = wait;
                    Ok(answered)
                }
                (_, result) => result,
            };
            let mut outcome = self.outcome(&result, safe);
            if let (Some(wait), Ok(answered)) = (throttled, &result) {
                // A GraphQL throttling answer is a rate-limit answer whatever its status.
                outcome = Outcome::Response {
                    status: StatusCode::TOO_MANY_REQUESTS,
                    retryable: self.retry.retry_status(
                        StatusCode::TOO_MANY_REQUESTS,
                        answered.response.headers(),
                        safe,
                    ),
                    wait: Some(wait),
                    credential_rejected: false,
                    key_rejected: false,
                    other_key_free: false,
                };
            }
            let state = retry::State {
                retries,
                max_attempts: self.retry.config.max_attempts,
                replayable: body.as_ref().is_none_or(|b| !b.is_capped()),
                safe,
                auth_refreshed,
                respect_retry_after: self.retry.config.respect_retry_after,
                max_retry_after: self.retry.config.max_retry_after,
                time_left: deadline.saturating_duration_since(Instant::now()),
                backoff: if outcome.may_retry() {
                    self.retry.backoff(retries.saturating_add(1))
                } else {
                    Default::default()
                },
            };
            let decision = decide(outcome, state);
            if let (Some(recording), Some(started)) = (recording, attempt_started) {
                record_attempt(recording, &result, started, decision, progress);
            }
            let Decision::Retry { reason, delay } = decision else {
                return result.map(|answered| self.finish(answered));
            };
            if one_attempt {
                // Unreachable by `decide`'s rules (one attempt, no refresh, no pool); the
                // headers went with the attempt, so never send a second one without them.
                return result.map(|answered| self.finish(answered));
            }
            if !self.retry.withdraw() {
                tracing::debug!(upstream = %self.config.name, "not retrying: retry budget spent");
                return result.map(|answered| self.finish(answered));
            }
            if matches!(
                outcome,
                Outcome::Response {
                    credential_rejected: true,
                    ..
                }
            ) {
                auth_refreshed = true;
            }
            drop(result);
            self.counters.retry(reason);
            retries += 1;
            tracing::debug!(upstream = %self.config.name, retry = retries, reason = reason.label(), delay_ms = delay.as_millis() as u64, "retrying");
            tokio::time::sleep(delay).await;
        }
    }

    /// What an attempt came to, for the retry decision.
    fn outcome(&self, result: &Result<Answered, ProxyError>, safe: bool) -> Outcome {
        match result {
            Ok(answered) => {
                let response = &answered.response;
                Outcome::Response {
                    status: response.status(),
                    retryable: self
                        .retry
                        .retry_status(response.status(), response.headers(), safe),
                    wait: answered.wait,
                    credential_rejected: answered.credential_rejected,
                    key_rejected: answered.key_rejected,
                    other_key_free: answered.other_key_free,
                }
            }
            Err(ProxyError::Unreachable {
                kind: FailureKind::Connect | FailureKind::Tls,
                ..
            }) => Outcome::ConnectFailed,
            Err(ProxyError::Unreachable { .. }) => Outcome::ConnectionLost,
            Err(ProxyError::Timeout { total: false, .. }) => Outcome::TimedOut,
            Err(_) => Outcome::Final,
        }
    }

    /// The GraphQL operation of a request to the GraphQL path: from the query string (GET) or
    /// the body, read within `retry.max_body_bytes`; a larger body streams on unread.
    async fn read_operation(
        &self,
        parts: &Parts,
        prepared: Prepared,
        body_limit: Option<u64>,
    ) -> Result<(Prepared, graphql::Operation), ProxyError> {
        if parts.method == http::Method::GET {
            let operation = graphql::classify_query_string(parts.uri.query().unwrap_or(""));
            return Ok((prepared, operation));
        }
        let cap = usize::try_from(self.retry.config.max_body_bytes).unwrap_or(usize::MAX);
        match prepared {
            Prepared::Read(chunks) => {
                let operation = graphql::classify_body(&chunks.concat());
                Ok((Prepared::Read(chunks), operation))
            }
            Prepared::Stream(body) => match graphql::read_prefix(body, cap).await {
                Ok((chunks, None)) => {
                    let operation = graphql::classify_body(&chunks.concat());
                    Ok((Prepared::Read(chunks), operation))
                }
                Ok((_, Some(rest))) => {
                    Ok((Prepared::Stream(boxed(rest)), graphql::Operation::unknown()))
                }
                Err(e) => Err(replay::client_fault(&*e, body_limit)),
            },
        }
    }

    /// A GraphQL answer: its first bytes read for a throttling error, its cost data learned
    /// (at once when it is small, else as it streams). Returns the wait a throttling answer
    /// asks for (the key's limiter is paused for it).
    async fn graphql_answer(
        &self,
        operation: &graphql::Operation,
        points: Option<f64>,
        mut answered: Answered,
    ) -> (Answered, Option<Duration>) {
        let status = answered.response.status().as_u16();
        let json = answered
            .response
            .headers()
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_none_or(|v| v.contains("json"));
        if !(status == 200 || status == 403) || !json {
            return (answered, None);
        }
        let key = answered.key;
        let seq = answered.admission.as_ref().map_or(0, |a| a.seq);
        let estimate = points.unwrap_or(1.0);
        let (parts, body) =
            std::mem::replace(&mut answered.response, Response::new(crate::body::empty()))
                .into_parts();
        let learn = {
            let keys = self.keys.clone();
            let costs = self.costs.clone();
            let name = operation.name.clone();
            move |facts: &graphql::Facts| {
                if let Some(cost) = &facts.cost {
                    costs.learn(name.as_deref(), cost);
                    let points = keys.limiter(key).and_then(|l| l.points());
                    if let (Some(budget), Some(pacer)) = (cost.budget(), points) {
                        pacer.learn(budget, seq, estimate);
                    }
                }
            }
        };
        match graphql::read_prefix(body, graphql::PEEK_BYTES).await {
            Ok((chunks, None)) => {
                let bytes = chunks.concat();
                let facts = graphql::read_answer(&bytes);
                learn(&facts);
                answered.response = Response::from_parts(parts, crate::body::full(bytes));
                if !facts.throttled {
                    return (answered, None);
                }
                let wait = facts
                    .cost
                    .and_then(|c| c.wait_for(c.requested.unwrap_or(estimate)))
                    .or_else(|| {
                        retry_after::requested_wait(
                            answered.response.headers(),
                            self.config.provider,
                            std::time::SystemTime::now(),
                        )
                    })
                    .or(self
                        .config
                        .provider
                        .default_429_wait_secs
                        .map(Duration::from_secs))
                    .unwrap_or(Duration::from_secs(1))
                    .min(Duration::from_secs(3600));
                self.counters.limited_upstream.increment(1);
                if let Some(limiter) = self.keys.limiter(key) {
                    limiter.pause_until(Instant::now() + wait);
                }
                tracing::debug!(upstream = %self.config.name, wait_ms = wait.as_millis() as u64, "graphql answer throttled");
                (answered, Some(wait))
            }
            Ok((_, Some(rest))) => {
                let tapped = graphql::Tap::new(boxed(rest), move |bytes: &[u8]| {
                    learn(&graphql::read_answer(bytes))
                });
                answered.response = Response::from_parts(parts, boxed(tapped));
                (answered, None)
            }
            Err(e) => {
                let failed = futures_util::stream::once(async move {
                    Err::<http_body::Frame<bytes::Bytes>, crate::body::BoxError>(e)
                });
                answered.response =
                    Response::from_parts(parts, boxed(http_body_util::StreamBody::new(failed)));
                (answered, None)
            }
        }
    }

    /// Header and path work done once per logical request; returns the upstream URI.
    fn prepare(
        &self,
        parts: &mut Parts,
        rest_path: &str,
        upgrade: bool,
        graphql: bool,
    ) -> Result<Uri, ProxyError> {
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
        // Never an automatic key on a GraphQL request: servers ignore it, so a retry it
        // allowed would not be safe (graphql.rs).
        if !graphql {
            self.retry
                .add_idempotency_key(&parts.method, &mut parts.headers);
        }
        upstream_uri(base, &path_and_query)
            .map_err(|_| ProxyError::BadRequest("request path cannot be forwarded"))
    }

    /// The response for the application: hop-by-hop headers removed, error class added, the
    /// in-flight slot held until the body ends.
    fn finish(&self, answered: Answered) -> Response<BoxBody> {
        let Answered {
            mut response,
            admission,
            ..
        } = answered;
        let switching = response.status() == StatusCode::SWITCHING_PROTOCOLS;
        headers::sanitize_response(response.headers_mut(), switching);
        if let Some(kind) = classify_status(response.status()) {
            response
                .headers_mut()
                .insert(X_OUTPOST_ERROR.clone(), HeaderValue::from_static(kind));
        }
        match admission.filter(|a| a.holds_slot()) {
            Some(admission) => response.map(|b| boxed(Guarded::new(b, admission))),
            None => response,
        }
    }
}

/// The client for an upstream's token endpoint: the upstream's own (its CA file and connect
/// timeout apply), or, with `client_auth: tls_client_auth`, one of its own that presents the
/// client certificate (RFC 8705), so the certificate is never offered to the API itself.
fn token_client(
    upstream: &Upstream,
    client: &HttpClient,
    cert: Option<&ClientCert>,
) -> Result<HttpClient, String> {
    let Some(cert) = cert else {
        return Ok(client.clone());
    };
    let identity =
        crate::config::forms::client_identity(cert.cert_pem.expose(), cert.key_pem.expose())
            .map_err(|e| format!("auth: {e}"))?;
    crate::client::build_with_identity(
        upstream.connect_timeout,
        HttpMode::Auto,
        upstream.tls_ca_file.as_deref(),
        Some(identity),
    )
    .map_err(|e| format!("auth: {e}"))
}

/// One attempt into the capture: its time, how it ended, and why another followed.
fn record_attempt(
    recording: &crate::capture::Recording,
    result: &Result<Answered, ProxyError>,
    started: Instant,
    decision: Decision,
    progress: &Progress,
) {
    let (outcome, status) = match result {
        Ok(answered) => ("response", Some(answered.response.status().as_u16())),
        Err(ProxyError::Unreachable { kind, .. }) => (kind.outcome(), None),
        Err(ProxyError::Timeout { .. }) => ("timeout", None),
        Err(other) => (other.kind(), None),
    };
    let retry_reason = match decision {
        Decision::Retry { reason, .. } => Some(reason.label().to_string()),
        Decision::Return => None,
    };
    let wait = progress.take_limiter_wait();
    recording.with(|draft| {
        draft.attempt(crate::capture::Attempt {
            duration: started.elapsed(),
            outcome: outcome.to_string(),
            status,
            retry_reason,
        });
        if !wait.is_zero() {
            draft.limiter_wait(wait);
        }
    });
}

/// The quota pacer of one key, when `rate_limit.quota` is set.
fn pacer(config: &Upstream, metrics: &UpstreamMetrics) -> Option<quota::Pacer> {
    let rl = config.rate_limit.as_ref()?;
    let signal = rl.quota?;
    let shared = rl.shared.as_ref();
    Some(quota::Pacer::new(
        Some(signal),
        rl.per_second(),
        shared.map_or(0, |s| s.expected_replicas.saturating_sub(1)),
        shared.is_none(),
        Some(metrics.gauge(UPSTREAM_QUOTA_REMAINING)),
        Some(metrics.gauge(UPSTREAM_PACING_RATE)),
    ))
}

/// The GraphQL points bucket of one key, when `graphql:` is on. It reads the quota headers of
/// GraphQL answers when they count points (`x-ratelimit`: GitHub's `graphql` resource, `ietf`),
/// and Shopify's `extensions.cost` from their bodies.
fn points(config: &Upstream) -> Option<quota::Pacer> {
    config.graphql.as_ref()?;
    let rl = config.rate_limit.as_ref();
    let signal = rl
        .and_then(|r| r.quota)
        .filter(|q| matches!(q, QuotaSignal::XRateLimit | QuotaSignal::Ietf));
    Some(quota::Pacer::new(
        signal,
        rl.map_or(f64::INFINITY, |r| r.per_second()),
        0,
        true,
        None,
        None,
    ))
}

/// Is the token-minting part of two auth configs the same (so a reload keeps the token)?
fn same_token_config(before: &Option<Auth>, now: &Option<Auth>) -> bool {
    match (before, now) {
        (Some(Auth::OAuth2ClientCredentials(a)), Some(Auth::OAuth2ClientCredentials(b))) => a == b,
        (Some(Auth::OAuth2JwtBearer(a)), Some(Auth::OAuth2JwtBearer(b))) => a == b,
        (Some(Auth::GithubApp(a)), Some(Auth::GithubApp(b))) => a == b,
        (Some(Auth::OAuth2RefreshToken(a)), Some(Auth::OAuth2RefreshToken(b))) => a == b,
        _ => false,
    }
}

/// How a finished request counts for the breaker: only the upstream's own failures, in the
/// upstream's own time, count against it.
fn verdict(result: &Result<Response<BoxBody>, ProxyError>, progress: &Progress) -> Verdict {
    match result {
        Ok(response) if response.status().is_server_error() => Verdict::Failure,
        Ok(_) => Verdict::Success,
        Err(ProxyError::Unreachable { .. } | ProxyError::Timeout { total: false, .. }) => {
            Verdict::Failure
        }
        // The total deadline: the upstream's fault only if it fired while the upstream had
        // the request (not in a limiter queue, a backoff, a token fetch or a slow upload).
        Err(ProxyError::Timeout { total: true, .. }) if progress.upstream_time() => {
            Verdict::Failure
        }
        // Refused locally, or the application's fault: says nothing about the upstream.
        Err(_) => Verdict::NotJudged,
    }
}

/// The attempt's request: the prepared parts (cloned: a retry needs them again) and the body.
fn build_request(parts: &Parts, uri: &Uri, body: BoxBody) -> Request<BoxBody> {
    build_request_with(parts, parts.headers.clone(), uri, body)
}

/// The attempt's request with these headers.
fn build_request_with(
    parts: &Parts,
    headers: http::HeaderMap,
    uri: &Uri,
    body: BoxBody,
) -> Request<BoxBody> {
    let mut request = Request::new(body);
    *request.method_mut() = parts.method.clone();
    *request.uri_mut() = uri.clone();
    // The version is the upstream connection's business, not the application's.
    *request.version_mut() = http::Version::HTTP_11;
    *request.headers_mut() = headers;
    request
}

#[cfg(test)]
mod tests {
    use super::*;

    fn progress_on_wire() -> Progress {
        let p = Progress::new(None);
        p.on_wire(true);
        p
    }

    fn response(status: u16) -> Result<Response<BoxBody>, ProxyError> {
        let mut r = Response::new(crate::body::empty());
        *r.status_mut() = StatusCode::from_u16(status).unwrap();
        Ok(r)
    }

    #[test]
    fn breaker_verdicts_count_only_upstream_time() {
        let idle = Progress::new(None);
        let wire = progress_on_wire();
        let total = || {
            Err(ProxyError::Timeout {
                upstream: "api".into(),
                total: true,
            })
        };
        assert_eq!(verdict(&response(200), &idle), Verdict::Success);
        assert_eq!(verdict(&response(404), &idle), Verdict::Success);
        assert_eq!(verdict(&response(503), &idle), Verdict::Failure);
        assert_eq!(verdict(&total(), &wire), Verdict::Failure);
        assert_eq!(
            verdict(&total(), &idle),
            Verdict::NotJudged,
            "the deadline fired in a queue, a backoff or a token fetch"
        );
        let rate_limited = Err(ProxyError::RateLimited {
            upstream: "api".into(),
            retry_after: Default::default(),
        });
        assert_eq!(verdict(&rate_limited, &wire), Verdict::NotJudged);
        assert_eq!(
            verdict(&Err(ProxyError::BodyTimeout), &wire),
            Verdict::NotJudged
        );
        assert_eq!(
            verdict(&Err(ProxyError::ClientClosed), &wire),
            Verdict::NotJudged
        );
        let lost = Err(ProxyError::Unreachable {
            upstream: "api".into(),
            kind: FailureKind::Other,
            source: None,
        });
        assert_eq!(verdict(&lost, &idle), Verdict::Failure);
    }
}
