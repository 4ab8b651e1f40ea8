//! OAuth2 client credentials (RFC 6749 §4.4): the access token of an
//! `oauth2_client_credentials` upstream, fetched, cached and refreshed here and put on each
//! attempt by the retry loop in `stack.rs` (auth is innermost, so no outer layer holds it).
//!
//! Rules (DESIGN.md "Auth types"):
//! * the token is refreshed in the background once 10 % of its lifetime is left (at most 60 s
//!   before expiry), jittered so replicas do not refresh in step; requests keep using the
//!   cached token meanwhile, even when that refresh fails;
//! * one fetch at a time however many requests wait (single flight): the fetch runs in its own
//!   task and every waiter subscribes to its result, so a waiter that gives up (client gone,
//!   total timeout) does not abort it;
//! * a token is never used past its expiry, counted from when the fetch *started*, less a
//!   small skew for the time the request spends on the wire; without a usable token the
//!   request fails with `credentials_unavailable` naming the upstream and the token endpoint's
//!   answer, never a secret;
//! * after a failed fetch, requests without a usable token fail at once for
//!   [`FAILURE_HOLDOFF`] instead of each hammering a struggling token endpoint.
//!
//! `outpost_oauth_token_refreshes_total{upstream,result}` counts fetches (`ok` | `error`).

use std::fmt;
use std::fmt::Write as _;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use base64::Engine;
use bytes::Bytes;
use http::header::{HeaderMap, HeaderValue, ACCEPT, AUTHORIZATION, CONTENT_TYPE};
use http::{Method, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Limited};
use metrics::Counter;
use rand::Rng;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::body::full;
use crate::client::HttpClient;
use crate::config::{ClientAuth, OAuth2, Secret};
use crate::error::ProxyError;
use crate::metrics::{UpstreamMetrics, OAUTH_TOKEN_REFRESHES_TOTAL};

/// Lifetime assumed when the token endpoint omits `expires_in` (RFC 6749 makes it optional).
pub const DEFAULT_EXPIRES_IN: Duration = Duration::from_secs(3600);
/// Refresh when this share of the lifetime is left …
const REFRESH_SHARE: u32 = 10;
/// … but never earlier than this before expiry.
const MAX_REFRESH_MARGIN: Duration = Duration::from_secs(60);
/// A token counts as expired this long (2 % of its lifetime, at most 5 s) before its nominal
/// expiry, so it does not expire while the request is on the wire.
const MAX_EXPIRY_SKEW: Duration = Duration::from_secs(5);
/// After a failed fetch, requests without a usable token get the failure at once for this long.
pub const FAILURE_HOLDOFF: Duration = Duration::from_secs(1);
/// Larger token responses are refused (a token response is a few hundred bytes).
const MAX_TOKEN_RESPONSE: usize = 64 * 1024;

/// An access token ready to put on a request. `Debug` never shows it.
pub struct Token {
    /// `Bearer …`, marked sensitive.
    header: HeaderValue,
    /// Distinguishes tokens, so a 401 invalidates only the token it was answered to.
    generation: u64,
    refresh_at: Instant,
    usable_until: Instant,
    /// The token answer's `instance_url` (Salesforce: the org's API origin), as sent; used
    /// only by an upstream with `base_url: from_token`.
    instance_url: Option<Box<str>>,
}

impl Token {
    /// Put the token on a request (replacing any `Authorization`).
    pub fn apply(&self, headers: &mut HeaderMap) {
        headers.insert(AUTHORIZATION, self.header.clone());
    }

    pub fn usable_until(&self) -> Instant {
        self.usable_until
    }

    pub fn instance_url(&self) -> Option<&str> {
        self.instance_url.as_deref()
    }
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Token")
            .field("generation", &self.generation)
            .field("refresh_at", &self.refresh_at)
            .field("usable_until", &self.usable_until)
            .finish_non_exhaustive()
    }
}

/// What a successful token request returned.
pub struct Fetched {
    pub access_token: Secret,
    pub expires_in: Duration,
    /// Refresh this long before expiry instead of the 10 % / 60 s rule (GitHub App tokens:
    /// 5 minutes before `expires_at`).
    pub refresh_margin: Option<Duration>,
    /// `instance_url` of the answer, when it has one (at most [`MAX_INSTANCE_URL`] bytes).
    pub instance_url: Option<Box<str>>,
}

/// Longest `instance_url` kept from a token answer.
pub const MAX_INSTANCE_URL: usize = 2048;

/// Why a fetch failed: a message naming the token endpoint and its answer, never a secret.
type Failure = Arc<str>;
type FetchFuture = Pin<Box<dyn Future<Output = Result<Fetched, String>> + Send>>;
/// Performs one token request. Pluggable so the cache logic is tested with paused time.
pub type Fetcher = Arc<dyn Fn() -> FetchFuture + Send + Sync>;
type Outcome = Result<Arc<Token>, Failure>;

#[derive(Default)]
struct State {
    token: Option<Arc<Token>>,
    /// The fetch in flight; waiters clone the receiver.
    fetching: Option<watch::Receiver<Option<Outcome>>>,
    last_failure: Option<(Instant, Failure)>,
    generation: u64,
}

impl State {
    fn recent_failure(&self, now: Instant) -> Option<Failure> {
        self.last_failure
            .as_ref()
            .filter(|(at, _)| now.saturating_duration_since(*at) < FAILURE_HOLDOFF)
            .map(|(_, failure)| failure.clone())
    }
}

/// The token of one upstream, for one config generation.
pub struct TokenSource {
    upstream: String,
    fetcher: Fetcher,
    state: Mutex<State>,
    refreshed: Counter,
    failed: Counter,
}

impl fmt::Debug for TokenSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenSource")
            .field("upstream", &self.upstream)
            .finish_non_exhaustive()
    }
}

impl TokenSource {
    /// A source that asks `config.token_url` through `client` (the upstream's own client, so
    /// its CA file and connect timeout apply), each request bounded by `timeout`.
    pub fn new(
        upstream: &str,
        config: &OAuth2,
        client: HttpClient,
        timeout: Duration,
        metrics: &UpstreamMetrics,
    ) -> Arc<Self> {
        let endpoint = Arc::new(Endpoint::new(config));
        let fetcher: Fetcher = Arc::new(move || {
            let endpoint = endpoint.clone();
            let client = client.clone();
            Box::pin(async move { endpoint.fetch(&client, timeout).await })
        });
        Self::with_fetcher(upstream, fetcher, metrics)
    }

    pub fn with_fetcher(upstream: &str, fetcher: Fetcher, metrics: &UpstreamMetrics) -> Arc<Self> {
        Arc::new(TokenSource {
            upstream: upstream.to_string(),
            fetcher,
            state: Mutex::new(State::default()),
            refreshed: metrics.labelled(OAUTH_TOKEN_REFRESHES_TOTAL, "result", "ok"),
            failed: metrics.labelled(OAUTH_TOKEN_REFRESHES_TOTAL, "result", "error"),
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A token usable now: the cached one, or the result of the (single) fetch in flight.
    pub async fn token(self: &Arc<Self>) -> Result<Arc<Token>, ProxyError> {
        let mut waiting = {
            let mut state = self.lock();
            let now = Instant::now();
            if let Some(token) = state.token.clone().filter(|t| now < t.usable_until) {
                if now >= token.refresh_at
                    && state.fetching.is_none()
                    && state.recent_failure(now).is_none()
                {
                    // Refresh ahead of expiry, without making this request wait for it.
                    self.start_fetch(&mut state);
                }
                return Ok(token);
            }
            match &state.fetching {
                Some(waiting) => waiting.clone(),
                None => match state.recent_failure(now) {
                    Some(failure) => return Err(self.unavailable(&failure)),
                    None => self.start_fetch(&mut state),
                },
            }
        };
        let outcome = match waiting.wait_for(Option::is_some).await {
            Ok(outcome) => outcome.clone(),
            Err(_) => None,
        };
        match outcome {
            Some(Ok(token)) if Instant::now() < token.usable_until => Ok(token),
            Some(Ok(_)) => Err(self.unavailable("the token expired before it could be used")),
            Some(Err(failure)) => Err(self.unavailable(&failure)),
            None => Err(self.unavailable("the token request was abandoned")),
        }
    }

    /// The upstream answered 401 to `used`: forget it (unless a newer token already replaced it),
    /// so the next [`TokenSource::token`] fetches a fresh one.
    pub fn invalidate(&self, used: &Token) {
        let mut state = self.lock();
        if state
            .token
            .as_ref()
            .is_some_and(|t| t.generation == used.generation)
        {
            state.token = None;
            tracing::info!(upstream = %self.upstream, "upstream rejected the oauth2 token (401); fetching a new one");
        }
    }

    fn unavailable(&self, reason: &str) -> ProxyError {
        ProxyError::CredentialsUnavailable {
            upstream: self.upstream.clone(),
            reason: format!("no valid oauth2 token: {reason}"),
        }
    }

    /// Spawn the fetch; its result lands in the cache and on the returned channel.
    fn start_fetch(self: &Arc<Self>, state: &mut State) -> watch::Receiver<Option<Outcome>> {
        let (tx, rx) = watch::channel(None);
        state.fetching = Some(rx.clone());
        let source = self.clone();
        tokio::spawn(async move {
            let started = Instant::now();
            let result = (source.fetcher)().await;
            let outcome = source.complete(started, result);
            tx.send_replace(Some(outcome));
        });
        rx
    }

    fn complete(&self, started: Instant, result: Result<Fetched, String>) -> Outcome {
        let token = result.and_then(|fetched| {
            let mut header =
                HeaderValue::from_str(&format!("Bearer {}", fetched.access_token.expose()))
                    .map_err(|_| "the access token is not a valid header value".to_string())?;
            header.set_sensitive(true);
            Ok((
                header,
                fetched.expires_in,
                fetched.refresh_margin,
                fetched.instance_url,
            ))
        });
        let mut state = self.lock();
        state.fetching = None;
        match token {
            Ok((header, lifetime, fetched_margin, instance_url)) => {
                state.generation += 1;
                let expires_at = started + lifetime;
                let skew = (lifetime / 50).min(MAX_EXPIRY_SKEW);
                let margin = match fetched_margin {
                    Some(margin) => margin.min(lifetime / 2),
                    None => (lifetime / REFRESH_SHARE).min(MAX_REFRESH_MARGIN),
                };
                // Jitter within the window: refresh when between half of and all of the margin
                // is left, never before the 10 % (at most 60 s) point.
                let margin = margin.mul_f64(rand::thread_rng().gen_range(0.5..=1.0));
                let token = Arc::new(Token {
                    header,
                    generation: state.generation,
                    refresh_at: expires_at - margin,
                    usable_until: expires_at - skew,
                    instance_url,
                });
                state.token = Some(token.clone());
                state.last_failure = None;
                drop(state);
                self.refreshed.increment(1);
                tracing::debug!(upstream = %self.upstream, expires_in_secs = lifetime.as_secs_f64(), "oauth2 token fetched");
                Ok(token)
            }
            Err(reason) => {
                let reason: Failure = reason.into();
                state.last_failure = Some((Instant::now(), reason.clone()));
                let still_valid = state
                    .token
                    .as_ref()
                    .is_some_and(|t| Instant::now() < t.usable_until);
                drop(state);
                self.failed.increment(1);
                tracing::warn!(upstream = %self.upstream, reason = %reason, cached_token_still_valid = still_valid, "oauth2 token request failed");
                Err(reason)
            }
        }
    }
}

/// The token request, built once per config generation.
struct Endpoint {
    uri: Uri,
    /// The token URL without user info or query, for messages.
    display: String,
    form: Bytes,
    /// `Basic …` for `client_auth: basic`.
    authorization: Option<HeaderValue>,
}

impl Endpoint {
    fn new(config: &OAuth2) -> Self {
        let uri = config.token_url.clone();
        let display = display_url(&uri);
        let mut form = String::from("grant_type=client_credentials");
        let mut field = |name: &str, value: &str| {
            form.push('&');
            form_encode(name, &mut form);
            form.push('=');
            form_encode(value, &mut form);
        };
        if !config.scopes.is_empty() {
            field("scope", &config.scopes.join(" "));
        }
        if let Some(audience) = &config.audience {
            field("audience", audience);
        }
        for (name, value) in &config.params {
            field(name, value);
        }
        let authorization = match config.client_auth {
            ClientAuth::Body => {
                field("client_id", config.client_id.expose());
                field("client_secret", config.client_secret.expose());
                None
            }
            // RFC 8705 §2.1: the certificate in the handshake authenticates; no secret.
            ClientAuth::TlsClientAuth => {
                field("client_id", config.client_id.expose());
                None
            }
            ClientAuth::Basic => Some(basic_authorization(
                config.client_id.expose(),
                config.client_secret.expose(),
            )),
        };
        Endpoint {
            uri,
            display,
            form: Bytes::from(form),
            authorization,
        }
    }

    async fn fetch(&self, client: &HttpClient, timeout: Duration) -> Result<Fetched, String> {
        let mut request = Request::new(full(self.form.clone()));
        *request.method_mut() = Method::POST;
        *request.uri_mut() = self.uri.clone();
        *request.version_mut() = http::Version::HTTP_11;
        let headers = request.headers_mut();
        headers.insert(
            CONTENT_TYPE,
            HeaderValue::from_static("application/x-www-form-urlencoded"),
        );
        headers.insert(ACCEPT, HeaderValue::from_static("application/json"));
        if let Some(authorization) = &self.authorization {
            headers.insert(AUTHORIZATION, authorization.clone());
        }
        let (status, body) = exchange(client, request, timeout, &self.display).await?;
        parse_token_response(status, &body)
            .map_err(|what| format!("token endpoint {} {what}", self.display))
    }
}

/// Send a token request and read its answer (at most [`MAX_TOKEN_RESPONSE`] bytes), all within
/// `timeout`. Errors name the endpoint (`display`: no user info, no query) and never a secret.
pub(crate) async fn exchange(
    client: &HttpClient,
    request: Request<crate::body::BoxBody>,
    timeout: Duration,
    display: &str,
) -> Result<(StatusCode, Bytes), String> {
    let display_name = display;
    let exchange = async {
        let response = client.request(request).await.map_err(|e| {
            tracing::debug!(token_endpoint = %display_name, error = %crate::error::chain(&e), "token request failed");
            format!("token endpoint {display} is unreachable")
        })?;
        let status = response.status();
        let body = Limited::new(response.into_body(), MAX_TOKEN_RESPONSE)
            .collect()
            .await
            .map_err(|_| {
                format!(
                    "token endpoint {display} answered {} with an unreadable or oversized body",
                    status.as_u16()
                )
            })?
            .to_bytes();
        Ok::<_, String>((status, body))
    };
    tokio::time::timeout(timeout, exchange)
        .await
        .map_err(|_| format!("token endpoint {display} did not answer within {timeout:?}"))?
}

/// `scheme://host[:port]/path` of a token URL, for messages: no user info, no query (either
/// may hold a credential).
pub(crate) fn display_url(uri: &Uri) -> String {
    format!(
        "{}://{}{}{}",
        uri.scheme_str().unwrap_or("https"),
        uri.host().unwrap_or_default(),
        uri.port_u16().map(|p| format!(":{p}")).unwrap_or_default(),
        uri.path()
    )
}

/// `Basic base64(urlencode(id) ":" urlencode(secret))` (RFC 6749 §2.3.1), marked sensitive.
pub(crate) fn basic_authorization(client_id: &str, client_secret: &str) -> HeaderValue {
    let mut pair = String::new();
    form_encode(client_id, &mut pair);
    pair.push(':');
    form_encode(client_secret, &mut pair);
    let encoded = base64::engine::general_purpose::STANDARD.encode(pair);
    let mut value =
        HeaderValue::from_str(&format!("Basic {encoded}")).expect("base64 is a valid header value");
    value.set_sensitive(true);
    value
}

/// `application/x-www-form-urlencoded` encoding (WHATWG URL §5.2): `*-._` and alphanumerics
/// stay, space becomes `+`, every other byte is percent-encoded.
pub(crate) fn form_encode(value: &str, out: &mut String) {
    for byte in value.bytes() {
        match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'*' | b'-' | b'.' | b'_' => {
                out.push(byte as char)
            }
            b' ' => out.push('+'),
            _ => {
                let _ = write!(out, "%{byte:02X}");
            }
        }
    }
}

/// A short, fixed-vocabulary string from the token endpoint (an RFC 6749 error code or a
/// token type) that is safe to repeat in a message; anything else is left out.
fn safe_word(value: Option<&serde_json::Value>) -> Option<&str> {
    value.and_then(|v| v.as_str()).filter(|s| {
        !s.is_empty()
            && s.len() <= 40
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    })
}

/// Read a token response (RFC 6749 §5.1, errors §5.2). The `Err` text completes the sentence
/// "token endpoint URL …" and never holds a token or any free text of the response.
pub(crate) fn parse_token_response(status: StatusCode, body: &[u8]) -> Result<Fetched, String> {
    let json: Option<serde_json::Value> = serde_json::from_slice(body).ok();
    if !status.is_success() {
        let code = json
            .as_ref()
            .and_then(|j| safe_word(j.get("error")))
            .map(|code| format!(" ({code})"))
            .unwrap_or_default();
        return Err(format!("answered {}{code}", status.as_u16()));
    }
    let Some(json) = json else {
        return Err(format!(
            "answered {} with a body that is not JSON",
            status.as_u16()
        ));
    };
    let access_token = json
        .get("access_token")
        .and_then(|v| v.as_str())
        .filter(|t| !t.is_empty())
        .ok_or_else(|| format!("answered {} without an access_token", status.as_u16()))?;
    // RFC 6749 requires token_type; a few servers omit it, and then it can only be bearer.
    if let Some(kind) = json.get("token_type") {
        let bearer = kind
            .as_str()
            .is_some_and(|k| k.eq_ignore_ascii_case("bearer"));
        if !bearer {
            let named = safe_word(Some(kind))
                .map(|k| format!(" `{k}`"))
                .unwrap_or_default();
            return Err(format!(
                "answered token_type{named}; only bearer tokens are supported"
            ));
        }
    }
    let expires_in = match json.get("expires_in") {
        None | Some(serde_json::Value::Null) => DEFAULT_EXPIRES_IN,
        Some(value) => {
            // A number, or (Azure AD v1 and others) a number in a string.
            let seconds = value
                .as_f64()
                .or_else(|| value.as_str().and_then(|s| s.trim().parse::<f64>().ok()));
            match seconds {
                Some(s) if s.is_finite() && s > 0.0 => Duration::from_secs_f64(s.min(1e9)),
                _ => return Err("answered an invalid expires_in".to_string()),
            }
        }
    };
    let instance_url = json
        .get("instance_url")
        .and_then(|v| v.as_str())
        .filter(|u| !u.is_empty() && u.len() <= MAX_INSTANCE_URL)
        .map(Box::from);
    Ok(Fetched {
        access_token: Secret::new(access_token),
        expires_in,
        refresh_margin: None,
        instance_url,
    })
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

    use super::*;
    use crate::metrics::Metrics;

    struct Fake {
        fetches: AtomicUsize,
        fail: AtomicBool,
        lifetime: Duration,
        delay: Duration,
    }

    fn source(lifetime: Duration, delay: Duration) -> (Arc<TokenSource>, Arc<Fake>, Metrics) {
        let fake = Arc::new(Fake {
            fetches: AtomicUsize::new(0),
            fail: AtomicBool::new(false),
            lifetime,
            delay,
        });
        let f = fake.clone();
        let fetcher: Fetcher = Arc::new(move || {
            let f = f.clone();
            Box::pin(async move {
                let n = f.fetches.fetch_add(1, Ordering::SeqCst) + 1;
                tokio::time::sleep(f.delay).await;
                if f.fail.load(Ordering::SeqCst) {
                    return Err("token endpoint http://idp/token answered 500".to_string());
                }
                Ok(Fetched {
                    access_token: Secret::new(format!("tok-{n}")),
                    expires_in: f.lifetime,
                    refresh_margin: None,
                    instance_url: None,
                })
            })
        });
        let metrics = Metrics::new();
        let upstream = UpstreamMetrics::new(&metrics, "api");
        (
            TokenSource::with_fetcher("api", fetcher, &upstream),
            fake,
            metrics,
        )
    }

    fn bearer(token: &Token) -> String {
        let mut h = HeaderMap::new();
        token.apply(&mut h);
        assert!(h[AUTHORIZATION].is_sensitive());
        h[AUTHORIZATION].to_str().unwrap().to_string()
    }

    /// Let spawned fetches run (paused time auto-advances only when every task is idle).
    async fn settle() {
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
    }

    #[tokio::test(start_paused = true)]
    async fn concurrent_cold_requests_share_one_fetch() {
        let (source, fake, metrics) = source(Duration::from_secs(3600), Duration::from_millis(50));
        let tasks: Vec<_> = (0..100)
            .map(|_| {
                let s = source.clone();
                tokio::spawn(async move { s.token().await.map(|t| bearer(&t)) })
            })
            .collect();
        for task in tasks {
            assert_eq!(task.await.unwrap().unwrap(), "Bearer tok-1");
        }
        assert_eq!(fake.fetches.load(Ordering::SeqCst), 1);
        assert!(metrics
            .render()
            .contains(r#"outpost_oauth_token_refreshes_total{upstream="api",result="ok"} 1"#));
        // Cached afterwards.
        source.token().await.unwrap();
        assert_eq!(fake.fetches.load(Ordering::SeqCst), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn refreshes_in_the_jittered_window_and_keeps_serving_meanwhile() {
        let (source, fake, _m) = source(Duration::from_secs(100), Duration::from_millis(10));
        let t0 = Instant::now();
        let first = source.token().await.unwrap();
        // 10 % of 100 s: the refresh point lies 5..10 s before expiry; 2 % skew = 2 s.
        assert!(first.refresh_at >= t0 + Duration::from_secs(90));
        assert!(first.refresh_at <= t0 + Duration::from_secs(95));
        assert_eq!(first.usable_until, t0 + Duration::from_secs(98));
        tokio::time::advance(Duration::from_secs(89)).await;
        assert_eq!(bearer(&source.token().await.unwrap()), "Bearer tok-1");
        assert_eq!(fake.fetches.load(Ordering::SeqCst), 1, "not yet");
        tokio::time::advance(Duration::from_millis(6_500)).await; // t0 + 95.5 s
                                                                  // In the window: the old token is served and the refresh runs in the background.
        assert_eq!(bearer(&source.token().await.unwrap()), "Bearer tok-1");
        settle().await;
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert_eq!(fake.fetches.load(Ordering::SeqCst), 2);
        assert_eq!(bearer(&source.token().await.unwrap()), "Bearer tok-2");
    }

    #[tokio::test(start_paused = true)]
    async fn refresh_margin_is_capped_at_sixty_seconds() {
        let (source, _fake, _m) = source(Duration::from_secs(3600), Duration::ZERO);
        let t0 = Instant::now();
        let token = source.token().await.unwrap();
        assert!(token.refresh_at >= t0 + Duration::from_secs(3600 - 60));
        assert!(token.refresh_at <= t0 + Duration::from_secs(3600 - 30));
        assert_eq!(token.usable_until, t0 + Duration::from_secs(3595));
    }

    #[tokio::test(start_paused = true)]
    async fn failed_refresh_keeps_the_valid_token_but_never_past_expiry() {
        let (source, fake, metrics) = source(Duration::from_secs(100), Duration::ZERO);
        source.token().await.unwrap();
        fake.fail.store(true, Ordering::SeqCst);
        tokio::time::advance(Duration::from_millis(95_500)).await;
        assert_eq!(bearer(&source.token().await.unwrap()), "Bearer tok-1");
        settle().await;
        assert_eq!(
            fake.fetches.load(Ordering::SeqCst),
            2,
            "background refresh ran"
        );
        // Still valid: served despite the failure, and the failure is not retried at once.
        assert_eq!(bearer(&source.token().await.unwrap()), "Bearer tok-1");
        settle().await;
        assert_eq!(
            fake.fetches.load(Ordering::SeqCst),
            2,
            "hold-off after a failure"
        );
        // Past the usable time (98 s): a fresh fetch, which fails, so no token at all.
        tokio::time::advance(Duration::from_millis(2_600)).await;
        let err = source.token().await.unwrap_err();
        assert_eq!(err.kind(), "credentials_unavailable");
        let message = err.to_string();
        assert!(
            message.contains("api") && message.contains("answered 500"),
            "{message}"
        );
        assert!(!message.contains("tok-"), "{message}");
        // Within the hold-off the failure is answered without another fetch.
        let fetches = fake.fetches.load(Ordering::SeqCst);
        assert!(source.token().await.is_err());
        assert_eq!(fake.fetches.load(Ordering::SeqCst), fetches);
        // Recovery once the endpoint is back and the hold-off has passed.
        fake.fail.store(false, Ordering::SeqCst);
        tokio::time::advance(FAILURE_HOLDOFF).await;
        assert!(bearer(&source.token().await.unwrap()).starts_with("Bearer tok-"));
        let text = metrics.render();
        assert!(text.contains(r#"result="error"} 2"#), "{text}");
    }

    #[tokio::test(start_paused = true)]
    async fn invalidate_forgets_only_the_rejected_token() {
        let (source, fake, _m) = source(Duration::from_secs(3600), Duration::ZERO);
        let first = source.token().await.unwrap();
        source.invalidate(&first);
        let second = source.token().await.unwrap();
        assert_eq!(bearer(&second), "Bearer tok-2");
        // A late 401 for the old token does not throw away the new one.
        source.invalidate(&first);
        assert_eq!(bearer(&source.token().await.unwrap()), "Bearer tok-2");
        assert_eq!(fake.fetches.load(Ordering::SeqCst), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn a_waiter_giving_up_does_not_abort_the_fetch() {
        let (source, fake, _m) = source(Duration::from_secs(3600), Duration::from_secs(1));
        let s = source.clone();
        let impatient =
            tokio::time::timeout(Duration::from_millis(100), async move { s.token().await });
        assert!(impatient.await.is_err());
        assert_eq!(bearer(&source.token().await.unwrap()), "Bearer tok-1");
        assert_eq!(fake.fetches.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn token_debug_shows_no_token() {
        let mut header = HeaderValue::from_static("Bearer sekrit");
        header.set_sensitive(true);
        let token = Token {
            header,
            generation: 1,
            refresh_at: Instant::now(),
            usable_until: Instant::now(),
            instance_url: None,
        };
        assert!(!format!("{token:?}").contains("sekrit"));
    }

    #[test]
    fn form_encoding_and_basic_client_auth() {
        let mut out = String::new();
        form_encode("a b+c/d*e~é", &mut out);
        assert_eq!(out, "a+b%2Bc%2Fd*e%7E%C3%A9");
        // RFC 6749 §2.3.1: both parts form-encoded before base64.
        let value = basic_authorization("id:1", "s3cr et/+");
        assert!(value.is_sensitive());
        let encoded = value.to_str().unwrap().strip_prefix("Basic ").unwrap();
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(encoded)
            .unwrap();
        assert_eq!(decoded, b"id%3A1:s3cr+et%2F%2B");
    }

    #[test]
    fn token_request_body_has_every_field() {
        let config = OAuth2 {
            token_url: "https://user:pw@idp.example:8443/oauth/token?tenant=x"
                .parse()
                .unwrap(),
            client_id: Secret::new("my client"),
            client_secret: Secret::new("p&ss"),
            scopes: vec!["read:a".into(), "write:b".into()],
            audience: Some("https://api.example/".into()),
            client_auth: ClientAuth::Body,
            params: vec![("resource".into(), "r 1".into())],
            client_cert: None,
        };
        let endpoint = Endpoint::new(&config);
        assert_eq!(
            endpoint.form,
            "grant_type=client_credentials&scope=read%3Aa+write%3Ab\
             &audience=https%3A%2F%2Fapi.example%2F&resource=r+1\
             &client_id=my+client&client_secret=p%26ss"
        );
        assert!(endpoint.authorization.is_none());
        assert_eq!(endpoint.display, "https://idp.example:8443/oauth/token");
        let basic = Endpoint::new(&OAuth2 {
            client_auth: ClientAuth::Basic,
            scopes: vec![],
            audience: None,
            params: vec![],
            ..config
        });
        assert_eq!(basic.form, "grant_type=client_credentials");
        // RFC 8705 §2.1: `client_id` in the form, no secret anywhere.
        let mtls = Endpoint::new(&OAuth2 {
            client_auth: ClientAuth::TlsClientAuth,
            scopes: vec![],
            audience: None,
            params: vec![],
            client_id: Secret::new("my client"),
            client_secret: Secret::new(""),
            token_url: "https://idp.example/token".parse().unwrap(),
            client_cert: None,
        });
        assert_eq!(
            mtls.form,
            "grant_type=client_credentials&client_id=my+client"
        );
        assert!(mtls.authorization.is_none());
        assert!(basic.authorization.is_some());
    }

    #[test]
    fn token_responses() {
        let ok = |body: &str| parse_token_response(StatusCode::OK, body.as_bytes());
        let t = ok(r#"{"access_token":"abc","token_type":"Bearer","expires_in":120}"#).unwrap();
        assert_eq!(t.access_token.expose(), "abc");
        assert_eq!(t.expires_in, Duration::from_secs(120));
        let t = ok(r#"{"access_token":"abc","token_type":"bearer"}"#).unwrap();
        assert_eq!(t.expires_in, DEFAULT_EXPIRES_IN);
        let t = ok(r#"{"access_token":"abc","expires_in":"3599"}"#).unwrap();
        assert_eq!(t.expires_in, Duration::from_secs(3599));
        let err = ok(r#"{"access_token":"abc","token_type":"mac"}"#)
            .err()
            .unwrap();
        assert!(err.contains("`mac`"), "{err}");
        assert!(ok(r#"{"token_type":"bearer"}"#).is_err());
        assert!(ok(r#"{"access_token":"abc","expires_in":0}"#).is_err());
        assert!(ok("not json").is_err());
        let err = parse_token_response(
            StatusCode::UNAUTHORIZED,
            br#"{"error":"invalid_client","error_description":"secret hunter2 is wrong"}"#,
        )
        .err()
        .unwrap();
        assert_eq!(err, "answered 401 (invalid_client)");
        let err = parse_token_response(StatusCode::BAD_GATEWAY, b"<html>")
            .err()
            .unwrap();
        assert_eq!(err, "answered 502");
    }
}
