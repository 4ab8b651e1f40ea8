//! The webhook listener (`webhook_listen`, bound only when `webhooks:` is non-empty).
//!
//! ```text
//! route by exact path (404 unknown_webhook) → body limit (413) → verify (400/401)
//!   → replay cache (200 without forwarding) → forward to `forward_to` → application's answer
//! ```
//!
//! Verified deliveries reach the application byte-identical, with the provider's headers (minus
//! hop-by-hop ones) plus `x-outpost-webhook: <name>` and `x-outpost-verified: <scheme>`. When
//! the application cannot be reached, or answers 5xx, the provider gets a 5xx and retries later;
//! such a delivery is not remembered, so the retry is forwarded. The routes follow config
//! reloads ([`WebhookServer::apply`]); the replay cache and the client outlive them.

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::header::{HeaderName, HeaderValue, CONTENT_LENGTH, CONTENT_TYPE, RETRY_AFTER};
use http::{Request, Response, StatusCode, Uri};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use metrics::{Counter, Label};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::replay::{self, Claim, ReplayCache};
use super::replay_redis::SharedReplay;
use super::{now_unix, Rejection, Verified, Verifier};
use crate::body::{boxed, full, BoxBody};
use crate::capture::inspector::WebhookReplayer;
use crate::capture::{CaptureRing, Exchange, Recording};
use crate::config::{Config, Webhook, WebhookLimits};
use crate::error::StartError;
use crate::error::{ErrorBody, ProxyError, X_REQUEST_ID};
use crate::metrics::{Metrics, WEBHOOKS_TOTAL, WEBHOOK_REPLAY_SHARED_DEGRADED};
use crate::net::headers::{sanitize_request, sanitize_response};
use crate::net::RequestIds;
use crate::server::{ListenerLimits, Refusals};
use futures_util::future::BoxFuture;

pub static X_OUTPOST_WEBHOOK: HeaderName = HeaderName::from_static("x-outpost-webhook");
pub static X_OUTPOST_VERIFIED: HeaderName = HeaderName::from_static("x-outpost-verified");
pub static X_OUTPOST_REPLAYED: HeaderName = HeaderName::from_static("x-outpost-replayed");

/// Longest wait for the application's response headers (providers give up after 10-30 s).
pub const FORWARD_TIMEOUT: Duration = Duration::from_secs(30);
/// Replay window of schemes that sign no timestamp when `tolerance` is not set lower.
const UNTIMESTAMPED_WINDOW: Duration = Duration::from_secs(300);

type ForwardClient = crate::client::HttpClient;

/// The `result` label values of `outpost_webhooks_total` (DESIGN.md).
const RESULTS: [&str; 7] = [
    "verified",
    "signature_missing",
    "signature_invalid",
    "stale",
    "replayed",
    "too_large",
    "forward_failed",
];

/// One configured webhook, ready to serve.
pub struct Route {
    pub hook: Arc<Webhook>,
    verifier: Verifier,
    counters: HashMap<&'static str, Counter>,
    /// `shared:`: the replay guard in Redis, consulted after the local one.
    shared: Option<SharedReplay>,
}

impl Route {
    fn count(&self, result: &'static str) {
        if let Some(c) = self.counters.get(result) {
            c.increment(1);
        }
    }

    /// How long an accepted delivery is remembered: the whole span its timestamp is accepted
    /// (tolerance on both sides of now), or the tolerance (5 min by default) without one.
    fn window(&self, verified: &Verified) -> Duration {
        if verified.timestamped {
            self.hook.tolerance.saturating_mul(2)
        } else if self.hook.tolerance.is_zero() {
            UNTIMESTAMPED_WINDOW
        } else {
            self.hook.tolerance
        }
    }
}

/// The webhooks of one config generation, by exact path.
pub struct Routes {
    by_path: HashMap<String, Arc<Route>>,
    /// `webhook_limits.body_read_timeout` of this generation.
    body_read_timeout: Duration,
}

impl Routes {
    pub fn build(config: &Config, metrics: &Metrics) -> Result<Routes, String> {
        let mut by_path = HashMap::new();
        for hook in &config.webhooks {
            let verifier =
                Verifier::from_webhook(hook).map_err(|e| format!("webhooks.{}: {e}", hook.name))?;
            let counters = RESULTS
                .iter()
                .map(|r| {
                    (
                        *r,
                        metrics.counter(
                            WEBHOOKS_TOTAL,
                            vec![
                                Label::new("webhook", hook.name.clone()),
                                Label::new("result", *r),
                            ],
                        ),
                    )
                })
                .collect();
            let shared = match &hook.shared {
                Some(target) => Some(
                    SharedReplay::new(
                        &hook.name,
                        target,
                        Some(metrics.gauge(
                            WEBHOOK_REPLAY_SHARED_DEGRADED,
                            vec![Label::new("webhook", hook.name.clone())],
                        )),
                    )
                    .map_err(|e| format!("webhooks.{}.{e}", hook.name))?,
                ),
                None => None,
            };
            by_path.insert(
                hook.path.clone(),
                Arc::new(Route {
                    hook: hook.clone(),
                    verifier,
                    counters,
                    shared,
                }),
            );
        }
        Ok(Routes {
            by_path,
            body_read_timeout: config.webhook_limits.body_read_timeout,
        })
    }
}

/// The running listener, as `App` holds it.
pub struct WebhookServer {
    /// The bound address.
    pub addr: SocketAddr,
    /// `webhook_listen` as configured when bound (a reload cannot move the listener).
    listen: SocketAddr,
    routes: Arc<ArcSwap<Routes>>,
    metrics: Metrics,
    pub task: JoinHandle<()>,
    /// The handler, also the inspector's webhook replayer.
    pub receiver: Arc<Receiver>,
}

impl WebhookServer {
    /// Bind `webhook_listen` and serve until `shutdown`, when the config has webhooks.
    pub async fn start(
        config: &Config,
        metrics: &Metrics,
        capture: Option<Arc<CaptureRing>>,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<Option<WebhookServer>, StartError> {
        if config.webhooks.is_empty() {
            return Ok(None);
        }
        let addr = config.webhook_listen;
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| StartError::Bind {
                what: "webhook_listen",
                addr,
                source,
            })?;
        Self::serve_on(listener, config, metrics, capture, shutdown).map(Some)
    }

    /// Start serving on `webhook_listen` from a config reload that adds the first webhook
    /// (bound synchronously: a reload is applied in one step, and a bind error fails it).
    pub fn start_now(
        config: &Config,
        metrics: &Metrics,
        capture: Option<Arc<CaptureRing>>,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<WebhookServer, StartError> {
        let addr = config.webhook_listen;
        let bind_err = |source| StartError::Bind {
            what: "webhook_listen",
            addr,
            source,
        };
        let listener = std::net::TcpListener::bind(addr).map_err(bind_err)?;
        listener.set_nonblocking(true).map_err(bind_err)?;
        let listener = TcpListener::from_std(listener).map_err(bind_err)?;
        Self::serve_on(listener, config, metrics, capture, shutdown)
    }

    fn serve_on(
        listener: TcpListener,
        config: &Config,
        metrics: &Metrics,
        capture: Option<Arc<CaptureRing>>,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<WebhookServer, StartError> {
        let addr = config.webhook_listen;
        let local = listener.local_addr().map_err(|source| StartError::Bind {
            what: "webhook_listen",
            addr,
            source,
        })?;
        let routes = Arc::new(ArcSwap::from_pointee(
            Routes::build(config, metrics).map_err(StartError::Build)?,
        ));
        let mut receiver = Receiver::new(routes.clone())?;
        receiver.capture = capture;
        let receiver = Arc::new(receiver);
        let task = tokio::spawn(serve(
            listener,
            receiver.clone(),
            config.webhook_limits.clone(),
            config.drain_timeout,
            shutdown,
        ));
        tracing::info!(webhook_listen = %local, webhooks = config.webhooks.len(), "webhook receiver ready");
        Ok(WebhookServer {
            addr: local,
            listen: addr,
            routes,
            metrics: metrics.clone(),
            task,
            receiver,
        })
    }

    /// Follow a config reload: build the new routes, then swap them in.
    pub fn apply(&self, config: &Config) -> Result<(), String> {
        if config.webhook_listen != self.listen {
            tracing::warn!(bound = %self.listen, configured = %config.webhook_listen,
                "webhook_listen changed: the receiver keeps its address until a restart");
        }
        let routes = Routes::build(config, &self.metrics)?;
        self.routes.store(Arc::new(routes));
        Ok(())
    }
}

/// The request handler shared by every connection.
pub struct Receiver {
    routes: Arc<ArcSwap<Routes>>,
    replay: ReplayCache,
    client: ForwardClient,
    ids: RequestIds,
    /// The capture ring (`capture:`): each delivery as the provider sent it, with its result.
    capture: Option<Arc<CaptureRing>>,
}

impl Receiver {
    pub fn new(routes: Arc<ArcSwap<Routes>>) -> Result<Self, StartError> {
        Ok(Receiver {
            routes,
            replay: ReplayCache::default(),
            client: forward_client()?,
            ids: RequestIds::default(),
            capture: None,
        })
    }

    pub async fn handle(&self, req: Request<Incoming>) -> Response<BoxBody> {
        let start = Instant::now();
        let request_id = self.ids.next();
        let routes = self.routes.load_full();
        let Some(route) = routes.by_path.get(req.uri().path()).cloned() else {
            tracing::info!(target: "outpost::webhook", request_id, webhook = "unknown", result = "unknown_webhook", status = 404u16);
            return reject(
                "unknown_webhook",
                StatusCode::NOT_FOUND,
                "no webhook is configured for this path",
                &request_id,
            );
        };
        let recording = self.capture.as_ref().map(|ring| {
            let mut draft =
                ring.start_webhook(&route.hook.name, req.method(), req.uri(), req.headers());
            // The URL the provider called, as far as this hop knows it.
            if let Some(host) = req
                .headers()
                .get(http::header::HOST)
                .and_then(|h| h.to_str().ok())
            {
                draft.base_url(format!("http://{host}"));
            }
            Recording::new(ring, draft)
        });
        let (result, reason, response) = match &recording {
            Some(recording) => {
                let req = req.map(|b| recording.tap_request(b));
                self.deliver(&route, req, &request_id, routes.body_read_timeout)
                    .await
            }
            None => {
                self.deliver(&route, req, &request_id, routes.body_read_timeout)
                    .await
            }
        };
        let response = match recording {
            Some(recording) => {
                recording.with(|draft| {
                    draft.webhook(
                        result.unwrap_or("bad_request"),
                        route.hook.forward_to.to_string(),
                    );
                    draft.response_head(response.status().as_u16(), response.headers());
                });
                response.map(|b| boxed(recording.tap_response(b)))
            }
            None => response,
        };
        if let Some(result) = result {
            route.count(result);
        }
        let status = response.status().as_u16();
        let elapsed_ms = (start.elapsed().as_secs_f64() * 1_000_000.0).round() / 1000.0;
        let webhook = route.hook.name.as_str();
        let scheme = route.hook.scheme.name();
        let result = result.unwrap_or("bad_request");
        if status >= 500 {
            tracing::warn!(target: "outpost::webhook", request_id, webhook, scheme, result, status, duration_ms = elapsed_ms, reason);
        } else {
            tracing::info!(target: "outpost::webhook", request_id, webhook, scheme, result, status, duration_ms = elapsed_ms, reason);
        }
        response
    }

    /// Returns the metric result (none for requests that are not deliveries at all), a reason
    /// for the log (never a value from the request), and the answer.
    async fn deliver<B>(
        &self,
        route: &Route,
        req: Request<B>,
        request_id: &str,
        body_read_timeout: Duration,
    ) -> (Option<&'static str>, &'static str, Response<BoxBody>)
    where
        B: http_body::Body<Data = Bytes> + Send,
        B::Error: Into<crate::body::BoxError>,
    {
        let hook = &route.hook;
        let limit = hook.max_body_bytes;
        let too_large = || {
            reject(
                "payload_too_large",
                StatusCode::PAYLOAD_TOO_LARGE,
                &format!("webhook body is larger than the {limit} byte limit"),
                request_id,
            )
        };
        let declared = req
            .headers()
            .get(CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok());
        if declared.is_some_and(|len| len > limit) {
            return (
                Some("too_large"),
                "content-length over the limit",
                too_large(),
            );
        }
        let (parts, body) = req.into_parts();
        let collect = Limited::new(body, usize::try_from(limit).unwrap_or(usize::MAX)).collect();
        // A public listener: a body that trickles (or stalls) must not hold the connection.
        let Ok(collected) = tokio::time::timeout(body_read_timeout, collect).await else {
            return (
                None,
                "body not received in time",
                reject(
                    "request_timeout",
                    StatusCode::REQUEST_TIMEOUT,
                    &format!(
                        "webhook body was not received within {}",
                        crate::config::units::format_duration(body_read_timeout)
                    ),
                    request_id,
                ),
            );
        };
        let body = match collected {
            Ok(collected) => collected.to_bytes(),
            Err(e) if e.is::<http_body_util::LengthLimitError>() => {
                return (Some("too_large"), "body over the limit", too_large())
            }
            Err(_) => {
                return (
                    None,
                    "body could not be read",
                    reject(
                        "bad_request",
                        StatusCode::BAD_REQUEST,
                        "webhook body could not be read",
                        request_id,
                    ),
                );
            }
        };

        let verified =
            match route
                .verifier
                .verify(&parts.headers, &body, parts.uri.query(), now_unix())
            {
                Ok(v) => v,
                Err(rejection) => {
                    let message = format!("{}: {rejection}", hook.name);
                    return (
                        Some(rejection.result()),
                        rejection_reason(&rejection),
                        reject(rejection.kind(), rejection.status(), &message, request_id),
                    );
                }
            };

        let mut keys = vec![replay::key(&hook.name, "signature", &verified.fingerprint)];
        if let Some(id) = &verified.delivery_id {
            keys.push(replay::key(&hook.name, "id", id.as_bytes()));
        }
        let pending_for = FORWARD_TIMEOUT + Duration::from_secs(5);
        if let Some(answer) = claim_answer(self.replay.claim(&keys, pending_for), request_id) {
            return answer;
        }
        // The shared guard: another replica may have forwarded (or be forwarding) this
        // delivery. Without an answer from Redis the local guard alone decides.
        let shared = route.shared.as_ref();
        let claim_id = match shared {
            Some(_) => uuid::Uuid::new_v4().simple().to_string(),
            None => String::new(),
        };
        if let Some(shared) = shared {
            if let Some(claim) = shared.claim(&keys, pending_for, &claim_id).await {
                if let Some(answer) = claim_answer(claim, request_id) {
                    self.replay.release(&keys);
                    return answer;
                }
            }
        }
        let release = || async {
            self.replay.release(&keys);
            if let Some(shared) = shared {
                shared.release(&keys, &claim_id).await;
            }
        };

        match self.forward(route, parts, body).await {
            Ok(response) if response.status().is_server_error() => {
                release().await;
                (Some("forward_failed"), "application answered 5xx", response)
            }
            Ok(response) => {
                if response.status().is_success() {
                    let window = route.window(&verified);
                    self.replay.complete(&keys, window);
                    if let Some(shared) = shared {
                        shared.complete(&keys, window).await;
                    }
                } else {
                    // The application refused it: let the provider's retry through again.
                    release().await;
                }
                (Some("verified"), "forwarded", response)
            }
            Err(reason) => {
                release().await;
                let message = format!(
                    "{}: the application could not be reached ({reason})",
                    hook.name
                );
                let mut response = reject(
                    "webhook_forward_failed",
                    StatusCode::SERVICE_UNAVAILABLE,
                    &message,
                    request_id,
                );
                if let Ok(v) = HeaderValue::from_str(request_id) {
                    response.headers_mut().insert(X_REQUEST_ID.clone(), v);
                }
                (Some("forward_failed"), reason, response)
            }
        }
    }

    async fn forward(
        &self,
        route: &Route,
        mut parts: http::request::Parts,
        body: Bytes,
    ) -> Result<Response<BoxBody>, &'static str> {
        let hook = &route.hook;
        parts.uri = forward_uri(&hook.forward_to, parts.uri.query())
            .map_err(|_| "forward_to cannot take the request's query")?;
        parts.version = http::Version::HTTP_11;
        sanitize_request(&mut parts.headers, false);
        match HeaderValue::from_str(&hook.name) {
            Ok(v) => parts.headers.insert(X_OUTPOST_WEBHOOK.clone(), v),
            Err(_) => parts.headers.remove(&X_OUTPOST_WEBHOOK),
        };
        parts.headers.insert(
            X_OUTPOST_VERIFIED.clone(),
            HeaderValue::from_static(hook.scheme.name()),
        );
        let request = Request::from_parts(parts, full(body));
        match tokio::time::timeout(FORWARD_TIMEOUT, self.client.request(request)).await {
            Ok(Ok(mut response)) => {
                sanitize_response(response.headers_mut(), false);
                Ok(response.map(boxed))
            }
            Ok(Err(e)) if e.is_connect() => Err("connection refused or failed"),
            Ok(Err(_)) => Err("connection failed"),
            Err(_) => Err("no response in time"),
        }
    }
}

/// The inspector's Replay button: a stored delivery goes to its webhook's `forward_to` again,
/// exactly as first forwarded (it was verified then), outside the replay guard.
impl WebhookReplayer for Receiver {
    fn replay<'a>(&'a self, exchange: &'a Exchange) -> BoxFuture<'a, Result<u16, String>> {
        Box::pin(async move {
            let stored = exchange
                .replay_request()
                .ok_or("this delivery was not kept for replay (body over the capture cap)")?;
            let routes = self.routes.load_full();
            let route = routes
                .by_path
                .values()
                .find(|r| r.hook.name == exchange.name)
                .cloned()
                .ok_or("this webhook is no longer configured")?;
            let mut request = Request::new(());
            *request.method_mut() = stored
                .method
                .parse()
                .map_err(|_| "the stored method is not valid".to_string())?;
            *request.uri_mut() = stored
                .path_and_query
                .parse()
                .map_err(|_| "the stored path is not valid".to_string())?;
            for (name, value) in &stored.headers {
                request.headers_mut().append(name.clone(), value.clone());
            }
            let (parts, ()) = request.into_parts();
            match self.forward(&route, parts, stored.body.clone()).await {
                Ok(response) => Ok(response.status().as_u16()),
                Err(reason) => Err(format!("the application could not be reached ({reason})")),
            }
        })
    }
}

type Answer = (Option<&'static str>, &'static str, Response<BoxBody>);

/// The answer to a delivery the replay guard does not let through; `None` for a fresh one.
fn claim_answer(claim: Claim, request_id: &str) -> Option<Answer> {
    match claim {
        Claim::Fresh => None,
        Claim::Replayed => Some((Some("replayed"), "already delivered", replayed(request_id))),
        Claim::InProgress => {
            let mut response = reject(
                "webhook_delivery_in_progress",
                StatusCode::CONFLICT,
                "a copy of this delivery is being forwarded; retry later",
                request_id,
            );
            response
                .headers_mut()
                .insert(RETRY_AFTER, HeaderValue::from_static("5"));
            Some((Some("replayed"), "copy in flight", response))
        }
    }
}

fn rejection_reason(r: &Rejection) -> &'static str {
    match r {
        Rejection::Missing(_) => "signature header missing or malformed",
        Rejection::Invalid(_) => "signature does not match",
        Rejection::Stale(_) => "timestamp out of tolerance",
    }
}

/// `forward_to` with the delivery's query string appended (Twilio and others put data there).
fn forward_uri(forward_to: &Uri, query: Option<&str>) -> Result<Uri, http::Error> {
    let mut path_and_query = forward_to.path().to_string();
    let parts: Vec<&str> = [forward_to.query(), query]
        .into_iter()
        .flatten()
        .filter(|q| !q.is_empty())
        .collect();
    if !parts.is_empty() {
        path_and_query.push('?');
        path_and_query.push_str(&parts.join("&"));
    }
    let mut builder = Uri::builder().path_and_query(path_and_query);
    if let Some(scheme) = forward_to.scheme() {
        builder = builder.scheme(scheme.clone());
    }
    if let Some(authority) = forward_to.authority() {
        builder = builder.authority(authority.clone());
    }
    builder.build()
}

fn reject(kind: &str, status: StatusCode, message: &str, request_id: &str) -> Response<BoxBody> {
    ErrorBody {
        kind,
        message,
        upstream: None,
        status,
        retryable: status.is_server_error() || status == StatusCode::CONFLICT,
        retry_after: None,
        request_id,
    }
    .into_response()
}

fn replayed(request_id: &str) -> Response<BoxBody> {
    let mut response = Response::new(full(r#"{"replayed":true}"#));
    let h = response.headers_mut();
    h.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    h.insert(X_OUTPOST_REPLAYED.clone(), HeaderValue::from_static("true"));
    if let Ok(v) = HeaderValue::from_str(request_id) {
        h.insert(X_REQUEST_ID.clone(), v);
    }
    response
}

/// The client that forwards verified deliveries to the application: Outpost's usual pooled
/// client (webpki roots, HTTP/1.1 to a cleartext `forward_to`, 3 s connect timeout).
fn forward_client() -> Result<ForwardClient, StartError> {
    crate::client::build(Duration::from_secs(3), crate::config::HttpMode::Http1, None)
        .map_err(|e| StartError::Build(format!("webhook forward client: {e}")))
}

/// Accept connections (HTTP/1.1 and h2) until `shutdown`, then drain for `drain_timeout`.
/// The listener is public, so every wait is bounded by `limits` (see [`WebhookLimits`]):
/// request heads are checked exactly as on the app listener (`server::framing`), a body
/// must arrive within `body_read_timeout` (408), an idle kept-alive connection is closed after
/// `idle_timeout`, and at most `max_connections` are served at once.
pub async fn serve(
    listener: TcpListener,
    receiver: Arc<Receiver>,
    limits: WebhookLimits,
    drain_timeout: Duration,
    shutdown: impl Future<Output = ()>,
) {
    let handler = receiver.clone();
    crate::server::serve_checked(
        listener,
        ListenerLimits::webhook(&limits),
        drain_timeout,
        "webhook",
        shutdown,
        receiver,
        move |req| {
            let receiver = handler.clone();
            async move { Ok::<_, Infallible>(receiver.handle(req).await) }
        },
    )
    .await;
}

impl Refusals for Receiver {
    fn refused(&self, error: &ProxyError) -> String {
        let request_id = self.ids.next();
        let status = error.status().as_u16();
        tracing::info!(target: "outpost::webhook", request_id, webhook = "unknown", result = error.kind(), status, error = %error, "request refused before routing");
        request_id
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forward_uri_appends_query() {
        let base: Uri = "http://127.0.0.1:3000/hooks/twilio".parse().unwrap();
        assert_eq!(
            forward_uri(&base, None).unwrap().to_string(),
            "http://127.0.0.1:3000/hooks/twilio"
        );
        assert_eq!(
            forward_uri(&base, Some("a=1")).unwrap().to_string(),
            "http://127.0.0.1:3000/hooks/twilio?a=1"
        );
        let base: Uri = "http://127.0.0.1:3000/h?x=2".parse().unwrap();
        assert_eq!(
            forward_uri(&base, Some("a=1")).unwrap().to_string(),
            "http://127.0.0.1:3000/h?x=2&a=1"
        );
    }
}
