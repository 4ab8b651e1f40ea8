//! The capture ring: the most recent exchanges, bounded by count and by bytes.
//!
//! **Bounds.** The ring keeps at most `max_exchanges` exchanges and at most `max_total_bytes`
//! of accounted bytes; on insert the oldest exchanges are evicted until both hold. An exchange
//! accounts for its stored request and response bodies (each at most `max_body_bytes`; the rest
//! is counted in `size` and flagged `truncated`, never stored), its header names and values, its
//! path and query, the raw copy a webhook delivery keeps for replay, and a fixed
//! [`EXCHANGE_OVERHEAD`] for the struct, attempts and allocations. So the ring's memory stays
//! within `max_total_bytes` plus allocator slack, whatever the traffic; with the defaults
//! (500 exchanges, 64 KiB bodies, 32 MiB) that is about 32 MiB.
//!
//! An exchange still in flight is outside the ring: it holds up to `2 × max_body_bytes` of
//! body copies until it is committed (so the peak is `max_total_bytes` plus that much per
//! concurrent request; the app listener's `max_connections` bounds the number).
//!
//! **Off is free.** Capture off means the request path holds no ring (`Option<Arc<CaptureRing>>`
//! is `None`) and does no work at all; the ring exists only when `capture:` is configured.
//!
//! **Wiring.** Call [`CaptureRing::start_upstream`] with the request as the application sent it
//! (before credentials are injected, before Outpost adds an `Idempotency-Key`), feed the body
//! chunks that stream through ([`ExchangeDraft::request_chunk`], [`ExchangeDraft::response_chunk`]),
//! record attempts, the limiter wait and the response head, then [`CaptureRing::commit`] once
//! the response body has ended (or failed). Redaction happens in `commit`, so nothing
//! unredacted is ever visible through the ring. Subscribers ([`CaptureRing::subscribe`]) get
//! the id of each committed exchange.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::{HeaderMap, HeaderName, Method, Uri};
use serde_json::{json, Value};
use tokio::sync::broadcast;
use tokio::time::Instant;

use super::config::CaptureConfig;
use super::redact::Redactor;
use super::{base64_encode, rfc3339};

/// Bytes accounted per exchange on top of its headers and bodies.
pub const EXCHANGE_OVERHEAD: u64 = 1024;
/// Live-update events buffered per subscriber; a slower one gets `Lagged` and should reload.
pub const EVENT_BUFFER: usize = 256;

/// An upstream call (app → Outpost → provider) or a webhook delivery (provider → Outpost → app).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExchangeKind {
    Upstream,
    Webhook,
}

impl ExchangeKind {
    pub fn name(self) -> &'static str {
        match self {
            ExchangeKind::Upstream => "upstream",
            ExchangeKind::Webhook => "webhook",
        }
    }
}

/// A body as stored: at most the cap, redacted.
#[derive(Debug, Clone, Default)]
pub struct CapturedBody {
    /// The stored (redacted, possibly cut) bytes.
    pub bytes: Bytes,
    /// How many bytes went through in all.
    pub size: u64,
    /// `size` exceeded the cap: `bytes` is only the beginning.
    pub truncated: bool,
    /// The `Content-Type` of the message, when it had one.
    pub content_type: Option<String>,
}

impl CapturedBody {
    /// The body as UTF-8 text, when it is.
    pub fn text(&self) -> Option<&str> {
        std::str::from_utf8(&self.bytes).ok()
    }

    /// `{"size", "truncated", "content_type", "text" | "base64"}`.
    pub fn to_json(&self) -> Value {
        let mut v = json!({
            "size": self.size,
            "truncated": self.truncated,
            "content_type": self.content_type,
        });
        match self.text() {
            Some(text) => v["text"] = json!(text),
            None => v["base64"] = json!(base64_encode(&self.bytes)),
        }
        v
    }
}

/// One try at the upstream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attempt {
    pub duration: Duration,
    /// `response` | `connect_error` | `timeout` | `tls_error` | `other_error` (the metric's labels).
    pub outcome: String,
    /// The upstream's status, when it answered.
    pub status: Option<u16>,
    /// Why this attempt was followed by another one: `status` | `connect_error` | `timeout` |
    /// `auth_refresh`; `None` for the last attempt.
    pub retry_reason: Option<String>,
}

/// What the webhook receiver did with a delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookInfo {
    /// The receiver's result label: `verified` | `signature_missing` | `signature_invalid` | …
    pub verification: String,
    /// The webhook's `forward_to`.
    pub forward_to: String,
}

/// A stored delivery exactly as received, for [`crate::capture::inspector::WebhookReplayer`].
/// Not part of any API output (it is unredacted, because the signature covers these bytes).
#[derive(Debug, Clone)]
pub struct ReplayRequest {
    pub method: String,
    pub path_and_query: String,
    pub headers: Vec<(HeaderName, http::HeaderValue)>,
    pub body: Bytes,
}

/// One captured exchange, redacted.
#[derive(Debug, Clone)]
pub struct Exchange {
    /// Increasing from 1, unique for the ring's life.
    pub id: u64,
    pub kind: ExchangeKind,
    /// The upstream or webhook name.
    pub name: String,
    /// Where the request went: the upstream's `base_url`, or the webhook listener's URL.
    pub base_url: String,
    pub method: String,
    /// The path as forwarded (upstream prefix removed), secrets scrubbed.
    pub path: String,
    /// The raw query string (no `?`), secrets scrubbed, redacted fields hidden.
    pub query: Option<String>,
    pub request_headers: Vec<(String, String)>,
    pub request_body: CapturedBody,
    /// The status the application (or provider, for webhooks) got; `None` if none was sent.
    pub status: Option<u16>,
    pub response_headers: Vec<(String, String)>,
    pub response_body: CapturedBody,
    /// Wall-clock start.
    pub started: SystemTime,
    /// Start to response headers.
    pub wait: Option<Duration>,
    /// Start to the end of the response body (or the failure).
    pub total: Duration,
    pub attempts: Vec<Attempt>,
    /// Time spent queued in the rate limiter.
    pub limiter_wait: Option<Duration>,
    pub webhook: Option<WebhookInfo>,
    /// Outpost's error type (`upstream_timeout`, `replay_miss` …) when Outpost answered itself.
    pub error: Option<String>,
    /// Answered from a cassette (`replay`) / written to one (`record`).
    pub cassette: Option<String>,
    replay: Option<ReplayRequest>,
    accounted: u64,
}

fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1_000_000.0).round() / 1000.0
}

impl Exchange {
    /// The raw delivery to replay, for webhook deliveries whose body fitted the cap.
    pub fn replay_request(&self) -> Option<&ReplayRequest> {
        self.replay.as_ref()
    }

    /// Bytes this exchange accounts for in the ring.
    pub fn accounted_bytes(&self) -> u64 {
        self.accounted
    }

    /// The full URL: `base_url` + path + `?query`; without a base URL,
    /// `http://outpost.invalid/<name>` stands in for it (HAR needs an absolute URL).
    pub fn url(&self) -> String {
        let fallback;
        let base = if self.base_url.is_empty() {
            fallback = format!("http://outpost.invalid/{}", self.name);
            fallback.as_str()
        } else {
            self.base_url.trim_end_matches('/')
        };
        match &self.query {
            Some(q) => format!("{base}{}?{q}", self.path),
            None => format!("{base}{}", self.path),
        }
    }

    /// The list entry of `GET /api/exchanges` and of live events.
    pub fn summary_json(&self) -> Value {
        json!({
            "id": self.id,
            "kind": self.kind.name(),
            "name": self.name,
            "method": self.method,
            "path": self.path,
            "query": self.query,
            "status": self.status,
            "error": self.error,
            "started": rfc3339(self.started),
            "total_ms": ms(self.total),
            "attempts": self.attempts.len(),
            "request_size": self.request_body.size,
            "response_size": self.response_body.size,
            "replayable": self.replay.is_some(),
            "verification": self.webhook.as_ref().map(|w| w.verification.clone()),
        })
    }

    /// `GET /api/exchanges/{id}`.
    pub fn to_json(&self) -> Value {
        let pairs = |h: &[(String, String)]| -> Value {
            h.iter()
                .map(|(n, v)| json!({"name": n, "value": v}))
                .collect()
        };
        let mut v = self.summary_json();
        v["url"] = json!(self.url());
        v["request"] = json!({
            "headers": pairs(&self.request_headers),
            "body": self.request_body.to_json(),
        });
        v["response"] = json!({
            "status": self.status,
            "headers": pairs(&self.response_headers),
            "body": self.response_body.to_json(),
        });
        v["timings"] = json!({
            "wait_ms": self.wait.map(ms),
            "total_ms": ms(self.total),
            "limiter_wait_ms": self.limiter_wait.map(ms),
        });
        v["attempts"] = self
            .attempts
            .iter()
            .map(|a| {
                json!({"duration_ms": ms(a.duration), "outcome": a.outcome,
                       "status": a.status, "retry_reason": a.retry_reason})
            })
            .collect();
        v["webhook"] = match &self.webhook {
            Some(w) => json!({"verification": w.verification, "forward_to": w.forward_to}),
            None => Value::Null,
        };
        v["cassette"] = json!(self.cassette);
        v
    }
}

/// A body being captured: keeps the first `cap` bytes and counts the rest.
#[derive(Debug)]
struct BodyTap {
    buf: Vec<u8>,
    size: u64,
    cap: usize,
    /// Webhook replay needs the whole body; it is kept only when within the cap.
    content_type: Option<String>,
}

impl BodyTap {
    fn new(cap: u64) -> Self {
        BodyTap {
            buf: Vec::new(),
            size: 0,
            cap: usize::try_from(cap).unwrap_or(usize::MAX),
            content_type: None,
        }
    }
    fn push(&mut self, chunk: &[u8]) {
        self.size = self.size.saturating_add(chunk.len() as u64);
        let room = self.cap.saturating_sub(self.buf.len());
        self.buf.extend_from_slice(&chunk[..chunk.len().min(room)]);
    }
    fn truncated(&self) -> bool {
        self.size > self.buf.len() as u64
    }
}

fn content_type(headers: &HeaderMap) -> Option<String> {
    headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

/// An exchange being recorded. Made by [`CaptureRing::start_upstream`] or
/// [`CaptureRing::start_webhook`], stored by [`CaptureRing::commit`].
#[derive(Debug)]
pub struct ExchangeDraft {
    kind: ExchangeKind,
    name: String,
    base_url: String,
    method: Method,
    path: String,
    query: Option<String>,
    request_headers: HeaderMap,
    request: BodyTap,
    status: Option<u16>,
    response_headers: HeaderMap,
    response: BodyTap,
    started: SystemTime,
    clock: Instant,
    wait: Option<Duration>,
    total: Option<Duration>,
    attempts: Vec<Attempt>,
    limiter_wait: Option<Duration>,
    webhook: Option<WebhookInfo>,
    error: Option<String>,
    cassette: Option<String>,
}

impl ExchangeDraft {
    /// The base URL shown in the page and the HAR (`https://api.stripe.com`).
    pub fn base_url(&mut self, url: impl Into<String>) -> &mut Self {
        self.base_url = url.into();
        self
    }
    /// A chunk of the request body as it streams through (call for each chunk).
    pub fn request_chunk(&mut self, chunk: &[u8]) -> &mut Self {
        self.request.push(chunk);
        self
    }
    /// The response head the application (or the provider) got.
    pub fn response_head(&mut self, status: u16, headers: &HeaderMap) -> &mut Self {
        self.status = Some(status);
        self.response_headers = headers.clone();
        self.response.content_type = content_type(headers);
        self.wait.get_or_insert(self.clock.elapsed());
        self
    }
    /// A chunk of the response body as it streams through.
    pub fn response_chunk(&mut self, chunk: &[u8]) -> &mut Self {
        self.response.push(chunk);
        self
    }
    /// One try at the upstream, in order.
    pub fn attempt(&mut self, attempt: Attempt) -> &mut Self {
        self.attempts.push(attempt);
        self
    }
    /// Time queued in the limiter (added up over attempts).
    pub fn limiter_wait(&mut self, wait: Duration) -> &mut Self {
        self.limiter_wait = Some(self.limiter_wait.unwrap_or_default() + wait);
        self
    }
    /// The webhook receiver's verdict and forward target.
    pub fn webhook(
        &mut self,
        verification: impl Into<String>,
        forward_to: impl Into<String>,
    ) -> &mut Self {
        self.webhook = Some(WebhookInfo {
            verification: verification.into(),
            forward_to: forward_to.into(),
        });
        self
    }
    /// Outpost answered itself with this error type.
    pub fn error(&mut self, error_type: impl Into<String>) -> &mut Self {
        self.error = Some(error_type.into());
        self
    }
    /// Set the error type unless one is set already (the first cause wins).
    pub fn error_if_none(&mut self, error_type: &str) -> &mut Self {
        if self.error.is_none() {
            self.error = Some(error_type.to_string());
        }
        self
    }
    /// The exchange was answered from (`"replay"`) or written to (`"record"`) a cassette.
    pub fn cassette(&mut self, what: impl Into<String>) -> &mut Self {
        self.cassette = Some(what.into());
        self
    }
    /// Set timings explicitly (tests, or a caller that measured them itself).
    pub fn timings(
        &mut self,
        started: SystemTime,
        wait: Option<Duration>,
        total: Duration,
    ) -> &mut Self {
        self.started = started;
        self.wait = wait;
        self.total = Some(total);
        self
    }
}

/// What `GET /api/exchanges` filters on. All given filters must hold.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filter {
    /// Upstream or webhook name, exact.
    pub name: Option<String>,
    /// `200`, `4xx`, `5xx`, or `error` (Outpost answered itself or nothing was answered).
    pub status: Option<StatusFilter>,
    /// Case-insensitive substring of method, path, query, name, header values or text bodies.
    pub text: Option<String>,
    /// Only exchanges with an id greater than this (for polling).
    pub after: Option<u64>,
    /// At most this many, newest first. Default and maximum: the ring's size.
    pub limit: Option<usize>,
}

/// The `status` filter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatusFilter {
    Exact(u16),
    /// `2xx` … `5xx`: the hundreds digit.
    Class(u16),
    /// Outpost's own error or no status at all.
    Error,
}

impl Filter {
    /// Parse `upstream=stripe&status=4xx&text=charge&after=10&limit=50` (`name` is an alias of
    /// `upstream`; empty values mean no filter; unknown parameters are ignored).
    pub fn from_query(query: &str) -> Result<Filter, String> {
        let mut f = Filter::default();
        for (k, v) in form_urlencoded::parse(query.as_bytes()) {
            let v = v.trim();
            if v.is_empty() {
                continue;
            }
            match &*k {
                "upstream" | "name" | "webhook" => f.name = Some(v.to_string()),
                "status" => f.status = Some(StatusFilter::parse(v)?),
                "text" | "q" => f.text = Some(v.to_lowercase()),
                "after" => {
                    f.after = Some(
                        v.parse()
                            .map_err(|_| "after: expected an exchange id".to_string())?,
                    )
                }
                "limit" => {
                    f.limit = Some(
                        v.parse()
                            .map_err(|_| "limit: expected a number".to_string())?,
                    )
                }
                _ => {}
            }
        }
        Ok(f)
    }

    /// Whether `ex` passes the filter (`limit` aside).
    pub fn matches(&self, ex: &Exchange) -> bool {
        if self.after.is_some_and(|after| ex.id <= after) {
            return false;
        }
        if self.name.as_ref().is_some_and(|n| *n != ex.name) {
            return false;
        }
        if let Some(status) = self.status {
            let ok = match (status, ex.status) {
                (StatusFilter::Exact(want), Some(got)) => want == got,
                (StatusFilter::Class(c), Some(got)) => got / 100 == c,
                (StatusFilter::Error, got) => ex.error.is_some() || got.is_none(),
                _ => false,
            };
            if !ok {
                return false;
            }
        }
        if let Some(text) = &self.text {
            let hit = |s: &str| s.to_lowercase().contains(text.as_str());
            let found = hit(&ex.method)
                || hit(&ex.path)
                || hit(&ex.name)
                || ex.query.as_deref().is_some_and(hit)
                || ex.error.as_deref().is_some_and(hit)
                || ex
                    .request_headers
                    .iter()
                    .chain(&ex.response_headers)
                    .any(|(n, v)| hit(n) || hit(v))
                || ex.request_body.text().is_some_and(hit)
                || ex.response_body.text().is_some_and(hit);
            if !found {
                return false;
            }
        }
        true
    }
}

impl StatusFilter {
    pub fn parse(s: &str) -> Result<StatusFilter, String> {
        let lower = s.to_ascii_lowercase();
        if lower == "error" {
            return Ok(StatusFilter::Error);
        }
        if let Some(d) = lower.strip_suffix("xx") {
            if let Ok(c @ 1..=5) = d.parse::<u16>() {
                return Ok(StatusFilter::Class(c));
            }
        }
        match lower.parse::<u16>() {
            Ok(code @ 100..=999) => Ok(StatusFilter::Exact(code)),
            _ => Err("status: expected a code such as 404, a class such as 4xx, or error".into()),
        }
    }
}

#[derive(Debug, Default)]
struct State {
    exchanges: VecDeque<Arc<Exchange>>,
    bytes: u64,
    next_id: u64,
}

/// The bounded, thread-safe ring of recent exchanges. Share it as `Arc<CaptureRing>`.
#[derive(Debug)]
pub struct CaptureRing {
    config: CaptureConfig,
    redactor: RwLock<Arc<Redactor>>,
    state: Mutex<State>,
    events: broadcast::Sender<u64>,
}

impl CaptureRing {
    pub fn new(config: CaptureConfig) -> Arc<CaptureRing> {
        let redactor = Redactor::new(
            config.redact_headers.clone(),
            config.redact_json_fields.clone(),
        );
        let (events, _) = broadcast::channel(EVENT_BUFFER);
        Arc::new(CaptureRing {
            config,
            redactor: RwLock::new(Arc::new(redactor)),
            state: Mutex::new(State {
                next_id: 1,
                ..State::default()
            }),
            events,
        })
    }

    pub fn config(&self) -> &CaptureConfig {
        &self.config
    }

    /// Every secret Outpost may inject (all upstreams' resolved credentials): scrubbed from
    /// everything stored from now on. Call again whenever secrets are reloaded or rotated.
    pub fn set_secrets(&self, secrets: &[&str]) {
        let mut r = Redactor::clone(&self.redactor());
        r.set_secrets(secrets);
        if let Ok(mut guard) = self.redactor.write() {
            *guard = Arc::new(r);
        }
    }

    /// The current redaction rules (also used for cassettes: [`Redactor::scrub`]).
    pub fn redactor(&self) -> Arc<Redactor> {
        match self.redactor.read() {
            Ok(r) => Arc::clone(&r),
            Err(poisoned) => Arc::clone(&poisoned.into_inner()),
        }
    }

    /// Begin an upstream call. `uri` is the forwarded path and query (upstream prefix removed);
    /// `headers` are the application's, before credentials are injected.
    pub fn start_upstream(
        &self,
        upstream: &str,
        method: &Method,
        uri: &Uri,
        headers: &HeaderMap,
    ) -> ExchangeDraft {
        self.start(ExchangeKind::Upstream, upstream, method, uri, headers)
    }

    /// Begin a webhook delivery as the provider sent it (path on the webhook listener).
    pub fn start_webhook(
        &self,
        webhook: &str,
        method: &Method,
        uri: &Uri,
        headers: &HeaderMap,
    ) -> ExchangeDraft {
        self.start(ExchangeKind::Webhook, webhook, method, uri, headers)
    }

    fn start(
        &self,
        kind: ExchangeKind,
        name: &str,
        method: &Method,
        uri: &Uri,
        headers: &HeaderMap,
    ) -> ExchangeDraft {
        let mut request = BodyTap::new(self.config.max_body_bytes);
        request.content_type = content_type(headers);
        ExchangeDraft {
            kind,
            name: name.to_string(),
            base_url: String::new(),
            method: method.clone(),
            path: uri.path().to_string(),
            query: uri.query().map(str::to_string),
            request_headers: headers.clone(),
            request,
            status: None,
            response_headers: HeaderMap::new(),
            response: BodyTap::new(self.config.max_body_bytes),
            started: SystemTime::now(),
            clock: Instant::now(),
            wait: None,
            total: None,
            attempts: Vec::new(),
            limiter_wait: None,
            webhook: None,
            error: None,
            cassette: None,
        }
    }

    /// Redact and store a finished exchange, evicting the oldest as the bounds require;
    /// returns its id and notifies subscribers.
    pub fn commit(&self, draft: ExchangeDraft) -> u64 {
        let r = self.redactor();
        let replay =
            (draft.kind == ExchangeKind::Webhook && !draft.request.truncated()).then(|| {
                ReplayRequest {
                    method: draft.method.to_string(),
                    path_and_query: match &draft.query {
                        Some(q) => format!("{}?{q}", draft.path),
                        None => draft.path.clone(),
                    },
                    headers: draft
                        .request_headers
                        .iter()
                        .map(|(n, v)| (n.clone(), v.clone()))
                        .collect(),
                    body: Bytes::from(draft.request.buf.clone()),
                }
            });
        let body = |tap: BodyTap| {
            let truncated = tap.truncated();
            CapturedBody {
                bytes: Bytes::from(r.body_owned(tap.buf, tap.content_type.as_deref(), truncated)),
                size: tap.size,
                truncated,
                content_type: tap.content_type,
            }
        };
        let mut ex = Exchange {
            id: 0,
            kind: draft.kind,
            name: draft.name.clone(),
            base_url: r.text(&draft.base_url),
            method: draft.method.to_string(),
            path: r.text(&draft.path),
            query: draft.query.as_deref().map(|q| r.query(q)),
            request_headers: r.headers(&draft.request_headers),
            request_body: body(draft.request),
            status: draft.status,
            response_headers: r.headers(&draft.response_headers),
            response_body: body(draft.response),
            started: draft.started,
            wait: draft.wait,
            total: draft.total.unwrap_or_else(|| draft.clock.elapsed()),
            attempts: draft.attempts,
            limiter_wait: draft.limiter_wait,
            webhook: draft.webhook,
            error: draft.error,
            cassette: draft.cassette,
            replay,
            accounted: 0,
        };
        ex.accounted = account(&ex);
        let id = {
            let mut state = match self.state.lock() {
                Ok(s) => s,
                Err(poisoned) => poisoned.into_inner(),
            };
            ex.id = state.next_id;
            state.next_id += 1;
            let id = ex.id;
            let size = ex.accounted;
            while !state.exchanges.is_empty()
                && (state.exchanges.len() >= self.config.max_exchanges
                    || state.bytes + size > self.config.max_total_bytes)
            {
                if let Some(old) = state.exchanges.pop_front() {
                    state.bytes -= old.accounted;
                }
            }
            state.bytes += size;
            state.exchanges.push_back(Arc::new(ex));
            id
        };
        // No subscriber is fine.
        let _ = self.events.send(id);
        id
    }

    /// One exchange by id, while it is still in the ring.
    pub fn get(&self, id: u64) -> Option<Arc<Exchange>> {
        let state = self.lock();
        // Ids increase along the deque: binary search.
        let idx = state.exchanges.binary_search_by_key(&id, |e| e.id).ok()?;
        state.exchanges.get(idx).cloned()
    }

    /// Exchanges passing `filter`, newest first.
    pub fn list(&self, filter: &Filter) -> Vec<Arc<Exchange>> {
        let all = self.snapshot();
        let limit = filter.limit.unwrap_or(usize::MAX);
        all.into_iter()
            .rev()
            .filter(|e| filter.matches(e))
            .take(limit)
            .collect()
    }

    /// Every exchange, oldest first (the HAR order).
    pub fn snapshot(&self) -> Vec<Arc<Exchange>> {
        self.lock().exchanges.iter().cloned().collect()
    }

    /// `(exchanges, accounted bytes)` now.
    pub fn usage(&self) -> (usize, u64) {
        let s = self.lock();
        (s.exchanges.len(), s.bytes)
    }

    /// Ids of exchanges as they are committed.
    pub fn subscribe(&self) -> broadcast::Receiver<u64> {
        self.events.subscribe()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        match self.state.lock() {
            Ok(s) => s,
            Err(poisoned) => poisoned.into_inner(),
        }
    }
}

fn account(ex: &Exchange) -> u64 {
    let headers =
        |h: &[(String, String)]| -> u64 { h.iter().map(|(n, v)| (n.len() + v.len()) as u64).sum() };
    let replay = ex.replay.as_ref().map_or(0, |r| {
        r.body.len() as u64
            + r.path_and_query.len() as u64
            + r.headers
                .iter()
                .map(|(n, v)| (n.as_str().len() + v.len()) as u64)
                .sum::<u64>()
    });
    EXCHANGE_OVERHEAD
        + (ex.name.len() + ex.base_url.len() + ex.path.len()) as u64
        + ex.query.as_ref().map_or(0, |q| q.len() as u64)
        + headers(&ex.request_headers)
        + headers(&ex.response_headers)
        + ex.request_body.bytes.len() as u64
        + ex.response_body.bytes.len() as u64
        + replay
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::capture::config::RawCapture;
    use crate::config::units::Size;

    fn ring(max_exchanges: usize, body: u64, total: u64) -> Arc<CaptureRing> {
        CaptureRing::new(
            RawCapture {
                max_exchanges: Some(max_exchanges),
                max_body_bytes: Some(Size(body)),
                max_total_bytes: Some(Size(total)),
                redact_headers: Some(vec!["set-cookie".into()]),
                redact_json_fields: vec!["email".into()],
            }
            .validate()
            .unwrap(),
        )
    }

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (n, v) in pairs {
            h.append(
                HeaderName::from_bytes(n.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        h
    }

    fn push(ring: &CaptureRing, path: &str, body: &[u8]) -> u64 {
        let uri: Uri = path.parse().unwrap();
        let mut d = ring.start_upstream("stripe", &Method::POST, &uri, &HeaderMap::new());
        d.request_chunk(body).response_head(200, &HeaderMap::new());
        ring.commit(d)
    }

    #[test]
    fn bounded_by_count() {
        let r = ring(3, 1024, 1 << 20);
        for i in 0..5 {
            push(&r, &format!("/v1/{i}"), b"x");
        }
        let ids: Vec<u64> = r.snapshot().iter().map(|e| e.id).collect();
        assert_eq!(ids, vec![3, 4, 5]);
        assert!(r.get(1).is_none());
        assert_eq!(r.get(4).unwrap().path, "/v1/3");
        assert_eq!(r.usage().0, 3);
    }

    #[test]
    fn bounded_by_bytes() {
        let total = 3 * (EXCHANGE_OVERHEAD + 1100);
        let r = ring(100, 1000, total);
        for _ in 0..10 {
            push(&r, "/v1/x", &[b'a'; 5000]);
        }
        let (count, bytes) = r.usage();
        assert!(bytes <= total, "{bytes} > {total}");
        assert_eq!(count, 3);
        let last = r.get(10).unwrap();
        assert_eq!(last.request_body.bytes.len(), 1000);
        assert_eq!(last.request_body.size, 5000);
        assert!(last.request_body.truncated);
        assert_eq!(
            bytes,
            r.snapshot()
                .iter()
                .map(|e| e.accounted_bytes())
                .sum::<u64>()
        );
    }

    #[test]
    fn chunks_are_capped_across_calls() {
        let r = ring(10, 4, 1024);
        let mut d = r.start_upstream("s", &Method::GET, &"/".parse().unwrap(), &HeaderMap::new());
        d.response_head(200, &headers(&[("content-type", "text/plain")]));
        for chunk in [&b"ab"[..], b"cd", b"ef", b""] {
            d.response_chunk(chunk);
        }
        let ex = r.get(r.commit(d)).unwrap();
        assert_eq!(&ex.response_body.bytes[..], b"abcd");
        assert_eq!(ex.response_body.size, 6);
        assert!(ex.response_body.truncated);
        assert!(!ex.request_body.truncated);
        assert_eq!(ex.response_body.content_type.as_deref(), Some("text/plain"));
    }

    #[test]
    fn redaction_of_headers_fields_and_secrets() {
        let r = ring(10, 4096, 1 << 20);
        r.set_secrets(&["sk_test_123456", "whsec_abcdef"]);
        let uri: Uri = "/v1/charges?api_key=sk_test_123456&email=a%40b.c&x=1"
            .parse()
            .unwrap();
        let req_h = headers(&[
            ("authorization", "Bearer app-token"),
            ("proxy-authorization", "Basic abc"),
            ("content-type", "application/json"),
            ("x-echo", "sk_test_123456"),
        ]);
        let mut d = r.start_upstream("stripe", &Method::POST, &uri, &req_h);
        d.request_chunk(br#"{"email":"a@b.c","nested":{"email":"d@e.f"},"k":"sk_test_123456"}"#);
        d.response_head(
            200,
            &headers(&[
                ("set-cookie", "sid=1"),
                ("Content-Type", "application/json"),
            ]),
        );
        d.response_chunk(br#"{"id":"ch_1","email":"a@b.c","secret":"whsec_abcdef"}"#);
        let ex = r.get(r.commit(d)).unwrap();
        let all = ex.to_json().to_string();
        for leaked in [
            "sk_test_123456",
            "whsec_abcdef",
            "a@b.c",
            "d@e.f",
            "app-token",
            "sid=1",
        ] {
            assert!(!all.contains(leaked), "{leaked} leaked: {all}");
        }
        let h: std::collections::HashMap<_, _> = ex.request_headers.iter().cloned().collect();
        assert_eq!(h["authorization"], "[redacted]");
        assert_eq!(h["proxy-authorization"], "[redacted]");
        assert_eq!(h["x-echo"], "[redacted]");
        assert_eq!(h["content-type"], "application/json");
        assert_eq!(
            ex.query.as_deref(),
            Some("api_key=[redacted]&email=%5Bredacted%5D&x=1")
        );
        let body: Value = serde_json::from_slice(&ex.response_body.bytes).unwrap();
        assert_eq!(body["id"], "ch_1");
        assert_eq!(body["email"], "[redacted]");
    }

    #[test]
    fn webhook_keeps_raw_delivery_for_replay_only_within_cap() {
        let r = ring(10, 16, 1 << 20);
        let h = headers(&[
            ("stripe-signature", "t=1,v1=abc"),
            ("content-type", "application/json"),
        ]);
        let mut d = r.start_webhook("stripe", &Method::POST, &"/stripe?x=1".parse().unwrap(), &h);
        d.request_chunk(br#"{"email":"e"}"#)
            .webhook("verified", "http://127.0.0.1:3000/hooks")
            .response_head(204, &HeaderMap::new());
        let ex = r.get(r.commit(d)).unwrap();
        let replay = ex.replay_request().unwrap();
        assert_eq!(
            &replay.body[..],
            br#"{"email":"e"}"#,
            "signed bytes are kept as sent"
        );
        assert_eq!(replay.path_and_query, "/stripe?x=1");
        assert!(ex.to_json().to_string().contains("[redacted]"));
        assert_eq!(ex.summary_json()["replayable"], true);
        assert_eq!(ex.to_json()["webhook"]["verification"], "verified");

        let mut d = r.start_webhook("stripe", &Method::POST, &"/stripe".parse().unwrap(), &h);
        d.request_chunk(&[b'x'; 17]);
        let ex = r.get(r.commit(d)).unwrap();
        assert!(
            ex.replay_request().is_none(),
            "a cut body cannot be replayed"
        );
        assert_eq!(ex.summary_json()["replayable"], false);
    }

    #[test]
    fn filters() {
        let r = ring(10, 1024, 1 << 20);
        let mut d = r.start_upstream(
            "stripe",
            &Method::GET,
            &"/v1/charges".parse().unwrap(),
            &HeaderMap::new(),
        );
        d.response_head(200, &HeaderMap::new());
        r.commit(d);
        let mut d = r.start_upstream(
            "sendgrid",
            &Method::POST,
            &"/v3/mail/send".parse().unwrap(),
            &HeaderMap::new(),
        );
        d.request_chunk(b"Hello World")
            .response_head(429, &HeaderMap::new());
        r.commit(d);
        let mut d = r.start_upstream(
            "stripe",
            &Method::GET,
            &"/v1/x".parse().unwrap(),
            &HeaderMap::new(),
        );
        d.error("upstream_timeout")
            .response_head(504, &HeaderMap::new());
        r.commit(d);
        let ids = |q: &str| -> Vec<u64> {
            r.list(&Filter::from_query(q).unwrap())
                .iter()
                .map(|e| e.id)
                .collect()
        };
        assert_eq!(ids(""), vec![3, 2, 1]);
        assert_eq!(ids("upstream=stripe"), vec![3, 1]);
        assert_eq!(ids("status=4xx"), vec![2]);
        assert_eq!(ids("status=200"), vec![1]);
        assert_eq!(ids("status=error"), vec![3]);
        assert_eq!(ids("text=hello+world"), vec![2]);
        assert_eq!(ids("text=CHARGES&upstream=stripe"), vec![1]);
        assert_eq!(ids("after=1&limit=1"), vec![3]);
        assert_eq!(ids("upstream=&status="), vec![3, 2, 1]);
        for bad in [
            "status=abc",
            "status=9xx",
            "status=42",
            "after=-1",
            "limit=x",
            "after=99999999999999999999999",
        ] {
            assert!(Filter::from_query(bad).is_err(), "{bad}");
        }
        // Hostile input never panics.
        for q in ["%", "&&&", "=", "status=%FF", "text=%00", "upstream=%E2%82"] {
            let _ = Filter::from_query(q).map(|f| r.list(&f));
        }
    }

    #[tokio::test]
    async fn subscribers_see_new_ids() {
        let r = ring(10, 1024, 1 << 20);
        let mut rx = r.subscribe();
        let id = push(&r, "/a", b"");
        assert_eq!(rx.recv().await.unwrap(), id);
    }

    #[tokio::test(start_paused = true)]
    async fn timings_and_attempts() {
        let r = ring(10, 1024, 1 << 20);
        let mut d = r.start_upstream("s", &Method::GET, &"/".parse().unwrap(), &HeaderMap::new());
        d.limiter_wait(Duration::from_millis(5));
        tokio::time::advance(Duration::from_millis(100)).await;
        d.attempt(Attempt {
            duration: Duration::from_millis(90),
            outcome: "response".into(),
            status: Some(503),
            retry_reason: Some("status".into()),
        });
        d.attempt(Attempt {
            duration: Duration::from_millis(10),
            outcome: "response".into(),
            status: Some(200),
            retry_reason: None,
        });
        d.response_head(200, &HeaderMap::new());
        tokio::time::advance(Duration::from_millis(50)).await;
        let ex = r.get(r.commit(d)).unwrap();
        assert_eq!(ex.wait, Some(Duration::from_millis(100)));
        assert_eq!(ex.total, Duration::from_millis(150));
        let v = ex.to_json();
        assert_eq!(v["timings"]["limiter_wait_ms"], 5.0);
        assert_eq!(v["attempts"][0]["retry_reason"], "status");
        assert_eq!(v["attempts"][1]["status"], 200);
        assert_eq!(v["attempts"].as_array().unwrap().len(), 2);
    }
}

#[cfg(test)]
mod prop {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Hostile filter strings never panic, and a parsed filter can always be applied.
        #[test]
        fn filters_never_panic(q in "[ -~]{0,60}") {
            let ring = CaptureRing::new(CaptureConfig::default());
            let mut d = ring.start_upstream("s", &Method::GET, &"/".parse().unwrap(), &HeaderMap::new());
            d.request_chunk(&[0xff, 0xfe]);
            ring.commit(d);
            if let Ok(f) = Filter::from_query(&q) {
                let _ = ring.list(&f);
            }
        }
    }
}
