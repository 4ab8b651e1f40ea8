//! The per-attempt chain: a minimal `Service`/`Layer` pair in tower's shape.
//!
//! Each attempt runs through `limit → auth → timeout → endpoint` (see `stack.rs`). A layer is
//! a struct that owns its inner service; [`Stack::push`] wraps the chain built so far, so the
//! expression that builds the chain reads in request order, innermost first, like linkerd's
//! `svc::stack(..).push(..)`. Unlike tower's `Service`, `call` takes `&self` (one chain serves
//! every request of an upstream concurrently, with no clone per request) and the futures are
//! unboxed (`impl Future`): the chain costs no allocation per attempt.
//!
//! Layers talk through the [`Attempt`] going in and the [`Answered`] coming out: the pool key
//! the limiter chose (for auth), the in-flight slot (held until the response body ends), and
//! what the retry decision needs to know (a refused credential, the upstream's requested wait).

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use http::{Request, Response};
use hyper::upgrade::OnUpgrade;
use tokio::time::Instant;

use super::auth::AuthScope;
use super::ratelimit::Admission;
use super::replay::BodyWatch;
use crate::body::BoxBody;
use crate::error::ProxyError;

/// One attempt on its way in.
pub struct Attempt<'a> {
    pub request: Request<BoxBody>,
    /// Index of the pooled key (0 without a pool); chosen by the limiter layer.
    pub key: usize,
    /// The server side of an `Upgrade` handshake (first attempt only).
    pub upgrade: Option<OnUpgrade>,
    /// The logical request's total deadline.
    pub deadline: Instant,
    /// Whose time is being spent, shared with the stack for its deadline.
    pub progress: &'a Progress,
    /// What the auth layer decided for the logical request (SigV4's payload line).
    pub auth: &'a AuthScope,
    /// A refused credential may still be refreshed and the request retried once.
    pub can_refresh: bool,
    /// Another origin's pool than the upstream's own, chosen by the auth layer for
    /// `base_url: from_token` (the token's `instance_url`); `None`: the upstream's.
    pub endpoint: Option<Arc<crate::client::Endpoint>>,
    /// A GraphQL query's estimated points: drawn from the key's points bucket instead of its
    /// request budget (`None` for every other request).
    pub points: Option<f64>,
}

/// The upstream's answer on its way out, with what the layers learned.
pub struct Answered {
    /// Boxed once, at the endpoint.
    pub response: Response<BoxBody>,
    /// The limiter's in-flight slot: released when the response body ends.
    pub admission: Option<Admission>,
    /// The upstream's requested wait (`Retry-After` and friends), read on error answers.
    pub wait: Option<Duration>,
    /// A refreshable credential was refused (401) and invalidated.
    pub credential_rejected: bool,
    /// A pooled key was refused (401/403) and taken out, and another key is left.
    pub key_rejected: bool,
    /// Another pooled key is not paused.
    pub other_key_free: bool,
    /// The pooled key the attempt went with.
    pub key: usize,
}

impl Answered {
    pub fn new(response: Response<BoxBody>) -> Self {
        Answered {
            response,
            admission: None,
            wait: None,
            credential_rejected: false,
            key_rejected: false,
            other_key_free: false,
            key: 0,
        }
    }
}

pub type AttemptResult = Result<Answered, ProxyError>;

/// One step of the attempt chain.
pub trait Service: Send + Sync + 'static {
    fn call<'a>(&'a self, attempt: Attempt<'a>) -> impl Future<Output = AttemptResult> + Send + 'a;
}

/// Wraps a service in another.
pub trait Layer<S> {
    type Service: Service;
    fn layer(self, inner: S) -> Self::Service;
}

/// A chain being built, innermost first.
pub struct Stack<S>(S);

impl<S: Service> Stack<S> {
    pub fn new(inner: S) -> Self {
        Stack(inner)
    }

    /// Wrap the chain so far in `layer`.
    pub fn push<L: Layer<S>>(self, layer: L) -> Stack<L::Service> {
        Stack(layer.layer(self.0))
    }

    pub fn into_inner(self) -> S {
        self.0
    }
}

/// Whose time a logical request is spending, for the deadlines and the breaker: only time
/// the upstream spends (connecting, waiting for its answer) counts against its health.
pub struct Progress {
    on_wire: AtomicBool,
    body: OnceLock<BodyWatch>,
    /// `limits.max_body_bytes`, named in the 413 when the application's body passes it.
    body_limit: Option<u64>,
    /// Capture is on for this request: the limiter reports its waits.
    timed: bool,
    /// Time spent in the limiter since last taken, nanoseconds.
    limiter_wait: std::sync::atomic::AtomicU64,
}

impl Progress {
    pub fn new(body_limit: Option<u64>) -> Self {
        Progress {
            on_wire: AtomicBool::new(false),
            body: OnceLock::new(),
            body_limit,
            timed: false,
            limiter_wait: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// Report limiter waits (capture on).
    pub fn timed(mut self, on: bool) -> Self {
        self.timed = on;
        self
    }

    pub fn is_timed(&self) -> bool {
        self.timed
    }

    pub fn add_limiter_wait(&self, wait: Duration) {
        let nanos = u64::try_from(wait.as_nanos()).unwrap_or(u64::MAX);
        self.limiter_wait.fetch_add(nanos, Ordering::Relaxed);
    }

    /// The limiter time since the last call.
    pub fn take_limiter_wait(&self) -> Duration {
        Duration::from_nanos(self.limiter_wait.swap(0, Ordering::Relaxed))
    }

    /// Watch the request body (once it is wrapped for streaming).
    pub fn watch_body(&self, watch: BodyWatch) {
        let _ = self.body.set(watch);
    }

    pub fn body_limit(&self) -> Option<u64> {
        self.body_limit
    }

    /// Mark the span of an attempt on the wire (connect, send, wait for the head).
    pub fn on_wire(&self, on: bool) {
        self.on_wire.store(on, Ordering::Relaxed);
    }

    /// Waiting for the upstream now: on the wire and not waiting for the application's body.
    pub fn upstream_time(&self) -> bool {
        self.on_wire.load(Ordering::Relaxed) && !self.client_time()
    }

    /// Waiting for the application's request body now.
    pub fn client_time(&self) -> bool {
        self.body.get().is_some_and(BodyWatch::stalled_on_client)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Leaf;
    impl Service for Leaf {
        async fn call<'a>(&'a self, attempt: Attempt<'a>) -> AttemptResult {
            let mut response = Response::new(crate::body::empty());
            response.headers_mut().insert(
                "x-path",
                http::HeaderValue::from_str(attempt.request.uri().path()).unwrap(),
            );
            Ok(Answered::new(response))
        }
    }

    /// Appends its tag to the path on the way in, so the order the layers ran is visible.
    struct Tag<S>(&'static str, S);
    struct TagLayer(&'static str);
    impl<S: Service> Layer<S> for TagLayer {
        type Service = Tag<S>;
        fn layer(self, inner: S) -> Tag<S> {
            Tag(self.0, inner)
        }
    }
    impl<S: Service> Service for Tag<S> {
        async fn call<'a>(&'a self, mut attempt: Attempt<'a>) -> AttemptResult {
            let path = format!("{}/{}", attempt.request.uri().path(), self.0);
            *attempt.request.uri_mut() = path.parse().unwrap();
            self.1.call(attempt).await
        }
    }

    #[tokio::test]
    async fn the_last_pushed_layer_runs_first() {
        let chain = Stack::new(Leaf)
            .push(TagLayer("inner"))
            .push(TagLayer("outer"))
            .into_inner();
        let progress = Progress::new(None);
        let mut request = Request::new(crate::body::empty());
        *request.uri_mut() = "/x".parse().unwrap();
        let answered = chain
            .call(Attempt {
                request,
                key: 0,
                upgrade: None,
                deadline: Instant::now(),
                progress: &progress,
                auth: &AuthScope::default(),
                can_refresh: false,
                endpoint: None,
                points: None,
            })
            .await
            .unwrap();
        assert_eq!(answered.response.headers()["x-path"], "/x/outer/inner");
        assert!(!progress.upstream_time());
    }
}
