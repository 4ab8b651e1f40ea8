//! The endpoint: the innermost step of an attempt, one request through the upstream's
//! connection pool.
//!
//! It marks the time on the wire (for the breaker and the total deadline), holds back the body
//! of an `Expect: 100-continue` request until the upstream says `100 Continue` (so the
//! application's `100` comes from the upstream, end to end), classifies failures (connect,
//! TLS, lost connection, or the application's own body failing: a client fault, never an
//! upstream one), counts attempt outcomes, and starts the tunnel of an upgraded connection.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::Bytes;
use http::header::EXPECT;
use http::{Request, StatusCode};
use http_body::{Body, Frame, SizeHint};
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;

use super::counters::Counters;
use super::layer::{Answered, Attempt, AttemptResult, Service};
use super::replay::{client_fault, ClientBodyError};
use crate::body::{boxed, BoxBody, BoxError};
use crate::client::{ClientError, Endpoint};
use crate::error::{FailureKind, ProxyError};

/// How long a `100-continue` body waits for the upstream's `100` before it is sent anyway
/// (RFC 9110 §10.1.1 lets a client stop waiting; curl waits one second too): for HTTP/1.1
/// upstreams that ignore `Expect`. Upstreams known to speak HTTP/2 get the body at once.
pub const EXPECT_WAIT: Duration = Duration::from_secs(1);

pub struct Send {
    endpoint: Arc<Endpoint>,
    upstream: String,
    counters: Arc<Counters>,
}

impl Send {
    pub fn new(endpoint: Arc<Endpoint>, upstream: &str, counters: Arc<Counters>) -> Self {
        Send {
            endpoint,
            upstream: upstream.to_string(),
            counters,
        }
    }
}

/// Clears the on-the-wire mark however the attempt ends (answered, failed, timed out, dropped).
struct OnWire<'a>(&'a super::layer::Progress);

impl Drop for OnWire<'_> {
    fn drop(&mut self) {
        self.0.on_wire(false);
    }
}

impl Service for Send {
    async fn call<'a>(&'a self, attempt: Attempt<'a>) -> AttemptResult {
        let Attempt {
            mut request,
            upgrade,
            progress,
            endpoint,
            ..
        } = attempt;
        let endpoint = endpoint.as_ref().unwrap_or(&self.endpoint);
        // HTTP/2 interim answers are not reported by hyper: there the body goes at once.
        if expects_continue(&request) && !endpoint.speaks_h2() {
            gate_body(&mut request);
        }
        progress.on_wire(true);
        let _on_wire = OnWire(progress);
        let mut response = match endpoint.send(request).await {
            Ok(response) => response,
            Err(err) => return Err(self.failure(err, progress.body_limit())),
        };
        self.counters.attempt_response.increment(1);
        if let (StatusCode::SWITCHING_PROTOCOLS, Some(client_side)) = (response.status(), upgrade) {
            let upstream_side = hyper::upgrade::on(&mut response);
            tokio::spawn(tunnel(self.upstream.clone(), client_side, upstream_side));
        }
        Ok(Answered::new(response.map(boxed)))
    }
}

impl Send {
    fn failure(&self, err: ClientError, body_limit: Option<u64>) -> ProxyError {
        let err: BoxError = err.into();
        // The application's body broke off or went over a limit: its fault, not the upstream's.
        if ClientBodyError::find(&*err).is_some() || crate::body::is_length_limit(&*err) {
            tracing::debug!(upstream = %self.upstream, error = %crate::error::chain(&*err), "request body from the application failed");
            return client_fault(&*err, body_limit);
        }
        let kind = classify_failure(&*err);
        self.counters.failure(kind);
        tracing::debug!(upstream = %self.upstream, error = %crate::error::chain(&*err), "upstream attempt failed");
        ProxyError::Unreachable {
            upstream: self.upstream.clone(),
            kind,
            source: Some(err),
        }
    }
}

fn expects_continue<B: Body>(request: &Request<B>) -> bool {
    !request.body().is_end_stream()
        && request
            .headers()
            .get(EXPECT)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"))
}

/// Hold the body back until the upstream answers `100 Continue` (or [`EXPECT_WAIT`] passes).
/// A final answer instead means the body is never read, so the application never gets a `100`.
fn gate_body(request: &mut Request<BoxBody>) {
    let gate = Arc::new(Gate::default());
    let opener = gate.clone();
    hyper::ext::on_informational(request, move |response| {
        if response.status() == StatusCode::CONTINUE {
            opener.open();
        }
    });
    let body = std::mem::replace(request.body_mut(), crate::body::empty());
    *request.body_mut() = boxed(Gated {
        inner: body,
        gate,
        timer: Box::pin(tokio::time::sleep(EXPECT_WAIT)),
    });
}

#[derive(Default)]
struct Gate {
    open: AtomicBool,
    waker: Mutex<Option<Waker>>,
}

impl Gate {
    fn open(&self) {
        self.open.store(true, Ordering::Release);
        if let Some(waker) = self.waker.lock().unwrap_or_else(|e| e.into_inner()).take() {
            waker.wake();
        }
    }

    fn is_open(&self) -> bool {
        self.open.load(Ordering::Acquire)
    }
}

struct Gated {
    inner: BoxBody,
    gate: Arc<Gate>,
    timer: Pin<Box<tokio::time::Sleep>>,
}

impl Body for Gated {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if !self.gate.is_open() {
            *self.gate.waker.lock().unwrap_or_else(|e| e.into_inner()) = Some(cx.waker().clone());
            // Checked again after registering, so an `open` in between is not missed.
            if !self.gate.is_open() && self.timer.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            self.gate.open.store(true, Ordering::Release);
        }
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
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

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::FutureExt;
    use http_body_util::BodyExt;

    #[tokio::test(start_paused = true)]
    async fn a_gated_body_waits_for_the_continue_or_the_timer() {
        let mut request = Request::new(crate::body::full("payload"));
        request
            .headers_mut()
            .insert(EXPECT, "100-continue".parse().unwrap());
        assert!(expects_continue(&request));
        gate_body(&mut request);
        let mut body = request.into_body();
        assert!(body.frame().now_or_never().is_none(), "held back");
        // Nothing from the upstream: after EXPECT_WAIT the body goes anyway.
        tokio::time::advance(EXPECT_WAIT).await;
        let bytes = body.collect().await.unwrap().to_bytes();
        assert_eq!(bytes, "payload");
    }

    #[tokio::test(start_paused = true)]
    async fn opening_the_gate_releases_the_body_at_once() {
        let gate = Arc::new(Gate::default());
        let mut body = Gated {
            inner: crate::body::full("x"),
            gate: gate.clone(),
            timer: Box::pin(tokio::time::sleep(Duration::from_secs(3600))),
        };
        assert!(body.frame().now_or_never().is_none());
        gate.open();
        assert_eq!(
            body.frame().await.unwrap().unwrap().into_data().unwrap(),
            "x"
        );
    }

    #[test]
    fn no_gate_without_a_body_or_the_header() {
        let mut request = Request::new(crate::body::empty());
        request
            .headers_mut()
            .insert(EXPECT, "100-continue".parse().unwrap());
        assert!(
            !expects_continue(&request),
            "an empty body has nothing to hold back"
        );
        let plain = Request::new(crate::body::full("x"));
        assert!(!expects_continue(&plain));
    }
}
