//! The inspector: a single static page and its JSON API, served on `inspect_listen`
//! (default `127.0.0.1:9091`, loopback: captured bodies stay in the pod unless the operator
//! binds it elsewhere).
//!
//! | request | answer |
//! |---|---|
//! | `GET /` | the page (`inspector.html`, no CDN, no build step) |
//! | `GET /api/exchanges?upstream=&status=&text=&after=&limit=` | `{"exchanges": [summary…], "usage": {…}}`, newest first |
//! | `GET /api/exchanges/{id}` | one exchange with headers, bodies, attempts and timings |
//! | `GET /api/har` | the ring as HAR 1.2 |
//! | `GET /api/events` | server-sent events: `event: exchange` with the summary of each new exchange; `event: reset` when the client fell behind (reload the list); a comment every 15 s keeps proxies from closing it |
//! | `POST /api/webhooks/{id}/replay` | sends the stored delivery to its `forward_to` again through the [`WebhookReplayer`]: `{"replayed": id, "status": 200}` |
//!
//! Errors use Outpost's error JSON (`{"error": {"type", "message", "status", "retryable",
//! "request_id"}}` and `x-outpost-error`). Two defences because the page shows captured data:
//! requests whose `Host` is a name other than `localhost` (or one of
//! [`Inspector::allow_host`]) are refused (`403 forbidden_host`: DNS rebinding), and the replay
//! `POST` needs the header `x-outpost-inspector: 1` and, if the browser sent an `Origin`, one
//! that matches `Host` (so another site cannot trigger it). The page escapes everything it
//! shows (`textContent` only) and is served with a strict `Content-Security-Policy`.

use std::convert::Infallible;
use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures_util::future::BoxFuture;
use http::header::{HeaderValue, CACHE_CONTROL, CONTENT_TYPE};
use http::{Method, Request, Response, StatusCode};
use http_body::{Body, Frame};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::sync::{broadcast, mpsc};
use tokio::task::JoinSet;

use super::har;
use super::ring::{CaptureRing, Exchange, ExchangeKind, Filter};

/// The page, compiled into the binary.
pub const PAGE: &str = include_str!("inspector.html");
/// Comment sent on an idle event stream.
pub const EVENTS_KEEPALIVE: Duration = Duration::from_secs(15);
/// Connections served at once; more wait in the accept queue.
pub const MAX_CONNECTIONS: usize = 256;
/// Header sent by the page on `POST`s.
pub const CSRF_HEADER: &str = "x-outpost-inspector";

const CSP: &str = "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; \
                   connect-src 'self'; img-src data:; base-uri 'none'; form-action 'none'; \
                   frame-ancestors 'none'";

/// The body of every inspector response.
pub type InspectorBody = UnsyncBoxBody<Bytes, Infallible>;

/// Sends a stored webhook delivery to its `forward_to` again. `Ok(status)` is the
/// application's answer; `Err(reason)` a failure to reach it (never containing a secret).
pub trait WebhookReplayer: Send + Sync {
    fn replay<'a>(&'a self, exchange: &'a Exchange) -> BoxFuture<'a, Result<u16, String>>;
}

/// The inspector service over one ring.
#[derive(Clone)]
pub struct Inspector {
    ring: Arc<CaptureRing>,
    replayer: Option<Arc<dyn WebhookReplayer>>,
    allowed_hosts: Vec<String>,
    keepalive: Duration,
}

impl std::fmt::Debug for Inspector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Inspector")
            .field("replayer", &self.replayer.is_some())
            .field("allowed_hosts", &self.allowed_hosts)
            .finish_non_exhaustive()
    }
}

impl Inspector {
    pub fn new(ring: Arc<CaptureRing>) -> Self {
        Inspector {
            ring,
            replayer: None,
            allowed_hosts: Vec::new(),
            keepalive: EVENTS_KEEPALIVE,
        }
    }

    /// Enable `POST /api/webhooks/{id}/replay`.
    pub fn with_replayer(mut self, replayer: Arc<dyn WebhookReplayer>) -> Self {
        self.replayer = Some(replayer);
        self
    }

    /// Also accept this host name (without port) in `Host`, e.g. a pod's DNS name.
    pub fn allow_host(mut self, host: impl Into<String>) -> Self {
        self.allowed_hosts.push(host.into().to_ascii_lowercase());
        self
    }

    /// Interval of keep-alive comments on `/api/events` (tests shorten it).
    pub fn events_keepalive(mut self, every: Duration) -> Self {
        self.keepalive = every;
        self
    }

    pub fn ring(&self) -> &Arc<CaptureRing> {
        &self.ring
    }

    /// Answer one request. Request bodies are never read.
    pub async fn handle<B>(&self, req: Request<B>) -> Response<InspectorBody> {
        if !self.host_allowed(&req) {
            return error(
                StatusCode::FORBIDDEN,
                "forbidden_host",
                "the inspector answers only to IP addresses, localhost and allowed hosts",
            );
        }
        let path = req.uri().path().to_string();
        let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
        let get = req.method() == Method::GET || req.method() == Method::HEAD;
        match (segments.as_slice(), get) {
            ([""], true) | (["index.html"], true) => page(),
            (["api", "exchanges"], true) => self.list(req.uri().query().unwrap_or("")),
            (["api", "exchanges", id], true) => self.one(id),
            (["api", "har"], true) => har_response(&self.ring),
            (["api", "events"], true) => self.events(),
            (["api", "webhooks", id, "replay"], _) if req.method() == Method::POST => {
                self.replay(&req, id).await
            }
            ([""], false)
            | (["index.html"], false)
            | (["api", "exchanges"], false)
            | (["api", "exchanges", _], false)
            | (["api", "har"], false)
            | (["api", "events"], false) => method_not_allowed("GET"),
            (["api", "webhooks", _, "replay"], _) => method_not_allowed("POST"),
            _ => error(StatusCode::NOT_FOUND, "not_found", "no such inspector path"),
        }
    }

    /// DNS-rebinding defence: `Host` must be an IP literal, `localhost` or an allowed name.
    fn host_allowed<B>(&self, req: &Request<B>) -> bool {
        let host = req
            .headers()
            .get(http::header::HOST)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
            .or_else(|| req.uri().authority().map(|a| a.to_string()));
        let Some(host) = host else {
            return true; // HTTP/1.0 without Host: not a browser.
        };
        let name = host_name(&host);
        name.parse::<IpAddr>().is_ok() || name == "localhost" || self.allowed_hosts.contains(&name)
    }

    fn list(&self, query: &str) -> Response<InspectorBody> {
        let filter = match Filter::from_query(query) {
            Ok(f) => f,
            Err(message) => return error(StatusCode::BAD_REQUEST, "bad_request", &message),
        };
        let exchanges: Vec<Value> = self
            .ring
            .list(&filter)
            .iter()
            .map(|e| e.summary_json())
            .collect();
        let (count, bytes) = self.ring.usage();
        let cfg = self.ring.config();
        let mut names: Vec<String> = self
            .ring
            .snapshot()
            .iter()
            .map(|e| e.name.clone())
            .collect();
        names.sort();
        names.dedup();
        json_response(
            StatusCode::OK,
            &json!({
                "exchanges": exchanges,
                "names": names,
                "usage": {"exchanges": count, "bytes": bytes,
                          "max_exchanges": cfg.max_exchanges, "max_total_bytes": cfg.max_total_bytes},
            }),
        )
    }

    fn one(&self, id: &str) -> Response<InspectorBody> {
        match parse_id(id).and_then(|id| self.ring.get(id).ok_or(())) {
            Ok(ex) => json_response(StatusCode::OK, &ex.to_json()),
            Err(()) => error(
                StatusCode::NOT_FOUND,
                "not_found",
                "no exchange with this id (it may have been evicted)",
            ),
        }
    }

    fn events(&self) -> Response<InspectorBody> {
        let (tx, rx) = mpsc::channel::<Bytes>(16);
        let mut sub = self.ring.subscribe();
        let ring = Arc::clone(&self.ring);
        let keepalive = self.keepalive;
        tokio::spawn(async move {
            if tx
                .send(Bytes::from_static(b"retry: 2000\n: connected\n\n"))
                .await
                .is_err()
            {
                return;
            }
            let mut tick = tokio::time::interval(keepalive);
            tick.tick().await;
            loop {
                let frame = tokio::select! {
                    got = sub.recv() => match got {
                        Ok(id) => match ring.get(id) {
                            Some(ex) => format!("event: exchange\nid: {id}\ndata: {}\n\n", ex.summary_json()),
                            None => continue,
                        },
                        Err(broadcast::error::RecvError::Lagged(_)) => "event: reset\ndata: {}\n\n".to_string(),
                        Err(broadcast::error::RecvError::Closed) => return,
                    },
                    _ = tick.tick() => ": keep-alive\n\n".to_string(),
                    () = tx.closed() => return,
                };
                if tx.send(Bytes::from(frame)).await.is_err() {
                    return;
                }
            }
        });
        let mut resp = Response::new(ChannelBody { rx }.boxed_unsync());
        let h = resp.headers_mut();
        h.insert(CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
        h.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
        resp
    }

    async fn replay<B>(&self, req: &Request<B>, id: &str) -> Response<InspectorBody> {
        if req.headers().get(CSRF_HEADER).and_then(|v| v.to_str().ok()) != Some("1") {
            return error(
                StatusCode::FORBIDDEN,
                "forbidden",
                "replay needs the header x-outpost-inspector: 1",
            );
        }
        if let Some(origin) = req.headers().get(http::header::ORIGIN) {
            let host = req
                .headers()
                .get(http::header::HOST)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("");
            let origin = origin.to_str().unwrap_or("");
            let same = origin
                .strip_prefix("http://")
                .or_else(|| origin.strip_prefix("https://"))
                .is_some_and(|o| o.eq_ignore_ascii_case(host));
            if !same {
                return error(
                    StatusCode::FORBIDDEN,
                    "forbidden",
                    "cross-origin replay refused",
                );
            }
        }
        let Ok(ex) = parse_id(id).and_then(|id| self.ring.get(id).ok_or(())) else {
            return error(
                StatusCode::NOT_FOUND,
                "not_found",
                "no exchange with this id (it may have been evicted)",
            );
        };
        if ex.kind != ExchangeKind::Webhook {
            return error(
                StatusCode::CONFLICT,
                "not_a_webhook",
                "only webhook deliveries can be replayed",
            );
        }
        if ex.replay_request().is_none() {
            return error(
                StatusCode::CONFLICT,
                "not_replayable",
                "the delivery's body was larger than capture.max_body_bytes, so it was not kept whole",
            );
        }
        let Some(replayer) = &self.replayer else {
            return error(
                StatusCode::NOT_IMPLEMENTED,
                "replay_unavailable",
                "webhook replay is not configured",
            );
        };
        match replayer.replay(&ex).await {
            Ok(status) => json_response(
                StatusCode::OK,
                &json!({"replayed": ex.id, "webhook": ex.name, "status": status}),
            ),
            Err(reason) => error(
                StatusCode::BAD_GATEWAY,
                "webhook_forward_failed",
                &format!("{}: replay failed: {reason}", ex.name),
            ),
        }
    }
}

/// `host:port`, `[v6]:port`, `host` → the lower-case name.
fn host_name(host: &str) -> String {
    let host = host.trim();
    let name = if let Some(rest) = host.strip_prefix('[') {
        rest.split(']').next().unwrap_or("")
    } else {
        host.rsplit_once(':')
            .filter(|(_, port)| port.bytes().all(|b| b.is_ascii_digit()))
            .map_or(host, |(name, _)| name)
    };
    name.trim_end_matches('.').to_ascii_lowercase()
}

fn parse_id(id: &str) -> Result<u64, ()> {
    if id.is_empty() || id.len() > 20 || !id.bytes().all(|b| b.is_ascii_digit()) {
        return Err(());
    }
    id.parse().map_err(|_| ())
}

fn full(bytes: impl Into<Bytes>) -> InspectorBody {
    Full::new(bytes.into()).boxed_unsync()
}

fn page() -> Response<InspectorBody> {
    let mut resp = Response::new(full(PAGE));
    let h = resp.headers_mut();
    h.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    h.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert("content-security-policy", HeaderValue::from_static(CSP));
    h.insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
    h.insert("referrer-policy", HeaderValue::from_static("no-referrer"));
    resp
}

fn json_response(status: StatusCode, value: &Value) -> Response<InspectorBody> {
    let mut resp = Response::new(full(value.to_string()));
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    h.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
    resp
}

fn har_response(ring: &CaptureRing) -> Response<InspectorBody> {
    let mut resp = json_response(StatusCode::OK, &har::export(&ring.snapshot()));
    resp.headers_mut().insert(
        http::header::CONTENT_DISPOSITION,
        HeaderValue::from_static("inline; filename=\"outpost.har\""),
    );
    resp
}

/// Outpost's error JSON.
fn error(status: StatusCode, kind: &'static str, message: &str) -> Response<InspectorBody> {
    let request_id = uuid::Uuid::new_v4().to_string();
    let mut resp = json_response(
        status,
        &json!({"error": {"type": kind, "message": message, "status": status.as_u16(),
                          "retryable": false, "request_id": request_id}}),
    );
    let h = resp.headers_mut();
    h.insert("x-outpost-error", HeaderValue::from_static(kind));
    if let Ok(v) = HeaderValue::from_str(&request_id) {
        h.insert("x-request-id", v);
    }
    resp
}

fn method_not_allowed(allow: &'static str) -> Response<InspectorBody> {
    let mut resp = error(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "method not allowed on this path",
    );
    resp.headers_mut()
        .insert(http::header::ALLOW, HeaderValue::from_static(allow));
    resp
}

/// The event stream's body: frames from the task that follows the ring.
struct ChannelBody {
    rx: mpsc::Receiver<Bytes>,
}

impl Body for ChannelBody {
    type Data = Bytes;
    type Error = Infallible;
    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.rx.poll_recv(cx).map(|o| o.map(|b| Ok(Frame::data(b))))
    }
}

/// Serve the inspector on `listener` until `shutdown` completes; then open connections
/// (including event streams) are closed.
pub async fn serve(
    listener: TcpListener,
    inspector: Arc<Inspector>,
    shutdown: impl Future<Output = ()>,
) {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(Duration::from_secs(10));
    let limit = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    let mut connections = JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        while connections.try_join_next().is_some() {}
        let permit = tokio::select! {
            p = Arc::clone(&limit).acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => return,
            },
            () = &mut shutdown => break,
        };
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    tracing::warn!(error = %e, "inspector accept failed");
                    // Out of file descriptors and the like: do not spin.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let inspector = Arc::clone(&inspector);
        let builder = builder.clone();
        connections.spawn(async move {
            let _permit = permit;
            let service = service_fn(move |req| {
                let inspector = Arc::clone(&inspector);
                async move { Ok::<_, Infallible>(inspector.handle(req).await) }
            });
            let _ = builder
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
    connections.abort_all();
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::capture::CaptureConfig;
    use http::HeaderMap;

    fn inspector() -> Inspector {
        let ring = CaptureRing::new(CaptureConfig::default());
        let mut d = ring.start_upstream(
            "stripe",
            &Method::GET,
            &"/v1/x".parse().unwrap(),
            &HeaderMap::new(),
        );
        d.response_head(200, &HeaderMap::new());
        ring.commit(d);
        Inspector::new(ring)
    }

    async fn call(
        i: &Inspector,
        method: &str,
        uri: &str,
        headers: &[(&str, &str)],
    ) -> (u16, String) {
        let mut b = Request::builder().method(method).uri(uri);
        for (n, v) in headers {
            b = b.header(*n, *v);
        }
        let resp = i.handle(b.body(()).unwrap()).await;
        let status = resp.status().as_u16();
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        (status, String::from_utf8_lossy(&body).into_owned())
    }

    #[test]
    fn host_names() {
        assert_eq!(host_name("127.0.0.1:9091"), "127.0.0.1");
        assert_eq!(host_name("[::1]:9091"), "::1");
        assert_eq!(host_name("LocalHost."), "localhost");
        assert_eq!(host_name("evil.example:80"), "evil.example");
        assert_eq!(host_name("[::1"), "::1");
        assert_eq!(host_name(":"), "");
    }

    #[test]
    fn ids() {
        assert_eq!(parse_id("1"), Ok(1));
        for bad in [
            "",
            "-1",
            "+1",
            "1.0",
            "99999999999999999999999",
            "18446744073709551616",
            "１",
        ] {
            assert!(parse_id(bad).is_err(), "{bad}");
        }
    }

    #[tokio::test]
    async fn hostile_paths_and_hosts() {
        let i = inspector();
        assert_eq!(call(&i, "GET", "/api/exchanges/1", &[]).await.0, 200);
        for path in [
            "/api/exchanges/0",
            "/api/exchanges/-1",
            "/api/exchanges/%00",
            "/api/exchanges/1/x",
            "/api/exchanges/99999999999999999999999999",
            "/api/webhooks",
            "/../etc/passwd",
            "/api//exchanges",
            "/api/exchanges/%F0%9F%92%A9",
        ] {
            let (status, body) = call(&i, "GET", path, &[]).await;
            assert!(status == 404 || status == 405, "{path}: {status}");
            assert!(body.contains("\"error\""), "{path}");
        }
        let (status, body) = call(&i, "GET", "/api/exchanges?status=%FF%FE", &[]).await;
        assert_eq!(status, 400, "{body}");
        assert_eq!(call(&i, "DELETE", "/api/har", &[]).await.0, 405);
        assert_eq!(call(&i, "GET", "/api/webhooks/1/replay", &[]).await.0, 405);
        let (status, body) = call(&i, "GET", "/", &[("host", "attacker.example")]).await;
        assert_eq!(status, 403);
        assert!(body.contains("forbidden_host"));
        assert_eq!(
            call(&i, "GET", "/", &[("host", "localhost:9091")]).await.0,
            200
        );
        let i = i.allow_host("outpost.pod");
        assert_eq!(
            call(&i, "GET", "/", &[("host", "Outpost.Pod:9091")])
                .await
                .0,
            200
        );
    }

    #[tokio::test]
    async fn replay_needs_the_page_header_and_same_origin() {
        let i = inspector();
        let (status, _) = call(&i, "POST", "/api/webhooks/1/replay", &[]).await;
        assert_eq!(status, 403);
        let (status, body) = call(
            &i,
            "POST",
            "/api/webhooks/1/replay",
            &[
                (CSRF_HEADER, "1"),
                ("host", "127.0.0.1:1"),
                ("origin", "http://evil.example"),
            ],
        )
        .await;
        assert_eq!(status, 403, "{body}");
        let (status, body) = call(
            &i,
            "POST",
            "/api/webhooks/1/replay",
            &[
                (CSRF_HEADER, "1"),
                ("host", "127.0.0.1:1"),
                ("origin", "http://127.0.0.1:1"),
            ],
        )
        .await;
        assert_eq!(status, 409, "an upstream call is not a webhook: {body}");
        assert!(body.contains("not_a_webhook"));
    }

    #[test]
    fn page_is_self_contained() {
        for forbidden in ["http://", "https://", "innerHTML", "src=\"//", "@import"] {
            assert!(
                !PAGE.contains(forbidden),
                "the page must not contain {forbidden}"
            );
        }
        for id in [
            "id=\"list\"",
            "id=\"f-upstream\"",
            "id=\"f-status\"",
            "id=\"f-text\"",
            "id=\"detail\"",
            "id: \"replay\"",
            "/api/events",
            "/api/har",
        ] {
            assert!(PAGE.contains(id), "{id}");
        }
    }
}

#[cfg(test)]
mod prop {
    use super::*;
    use crate::capture::CaptureConfig;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(128))]

        /// Any request target the HTTP parser accepts gets an answer, never a panic.
        #[test]
        fn any_target_is_answered(target in "/[ -~]{0,40}", method in prop_oneof![Just("GET"), Just("POST"), Just("PUT"), Just("HEAD")]) {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            let Ok(uri) = target.parse::<http::Uri>() else { return Ok(()) };
            let inspector = Inspector::new(CaptureRing::new(CaptureConfig::default()));
            let req = Request::builder().method(method).uri(uri).header(CSRF_HEADER, "1").body(()).unwrap();
            let status = rt.block_on(async {
                // Event streams are endless; only the head matters here.
                inspector.handle(req).await.status()
            });
            prop_assert!(status.as_u16() >= 200);
        }
    }
}
