//! Outpost's own connection pool: one [`Endpoint`] per upstream origin (scheme + authority),
//! held by the stack that uses it, so the request path does no pool lookup at all.
//!
//! HTTP/1.1 connections are kept in a LIFO idle list and go back to it when the response body
//! has been read to its end (hyper's `SendRequest` is ready again by then); a response body
//! dropped early closes its connection, as hyper must. An HTTP/2 connection (ALPN `h2`, or
//! prior knowledge with `http: http2`) is shared by all requests to the origin. Compared with
//! hyper-util's legacy pooled client this saves, per request, a hashed pool checkout and
//! check-in under a mutex, two `Extensions` allocations and the task spawned to wait for the
//! connection to become idle again.
//!
//! A request that a pooled connection refused before sending any of it (the upstream closed
//! the idle connection just then) is sent again on a fresh connection, as hyper-util does.

use std::error::Error as StdError;
use std::fmt;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::header::HOST;
use http::uri::{Authority, Scheme};
use http::{HeaderValue, Request, Response, StatusCode, Uri};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::{Connection, HttpConnector};
use hyper_util::rt::{TokioExecutor, TokioTimer};
use tokio::time::Instant;
use tower::Service;

use crate::body::{BoxBody, BoxError};
use crate::config::HttpMode;

/// How long an idle pooled connection is kept (below the usual 60-120 s server keep-alive).
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(55);
/// Idle HTTP/1.1 connections kept per origin; more are closed when they come back.
pub const MAX_IDLE: usize = 256;
/// hyper's default read buffer grows to ~400 KiB per connection on large responses; 64 KiB
/// keeps streaming fast and pooled connections small.
const MAX_BUF_SIZE: usize = 64 * 1024;

/// How connections are made: shared by every endpoint of one transport setting.
pub(super) struct Transport {
    pub connector: HttpsConnector<HttpConnector>,
    pub http: HttpMode,
}

/// A failed exchange.
#[derive(Debug)]
pub enum ClientError {
    /// No connection could be made (TCP, TLS or protocol handshake); nothing was sent.
    Connect(BoxError),
    /// The exchange failed on an established connection; the request may have been sent.
    Send(hyper::Error),
    /// The URI has no scheme or authority.
    InvalidUri,
}

impl ClientError {
    pub fn is_connect(&self) -> bool {
        matches!(self, ClientError::Connect(_))
    }
}

impl fmt::Display for ClientError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ClientError::Connect(_) => f.write_str("could not connect to the upstream"),
            ClientError::Send(_) => f.write_str("upstream exchange failed"),
            ClientError::InvalidUri => f.write_str("request URI has no scheme or authority"),
        }
    }
}

impl StdError for ClientError {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        match self {
            ClientError::Connect(e) => Some(&**e),
            ClientError::Send(e) => Some(e),
            ClientError::InvalidUri => None,
        }
    }
}

struct Idle {
    sender: http1::SendRequest<BoxBody>,
    since: Instant,
}

/// The connections to one origin.
pub struct Endpoint {
    transport: Arc<Transport>,
    /// `scheme://authority/`, what the connector dials.
    target: Uri,
    /// The `Host` header for HTTP/1.1 requests.
    host: HeaderValue,
    idle: Mutex<Vec<Idle>>,
    h2: Mutex<Option<http2::SendRequest<BoxBody>>>,
    /// Whether this origin speaks HTTP/2 (configured, or learnt by ALPN): new connections are
    /// then made one at a time, so a burst of requests shares one instead of opening many.
    speaks_h2: AtomicBool,
    h2_connecting: tokio::sync::Mutex<()>,
}

enum Conn {
    H1(http1::SendRequest<BoxBody>),
    H2(http2::SendRequest<BoxBody>),
}

impl Endpoint {
    pub(super) fn new(
        transport: Arc<Transport>,
        scheme: Scheme,
        authority: Authority,
    ) -> Result<Arc<Self>, ClientError> {
        let host = host_header(&scheme, &authority).ok_or(ClientError::InvalidUri)?;
        let target = Uri::builder()
            .scheme(scheme)
            .authority(authority)
            .path_and_query("/")
            .build()
            .map_err(|_| ClientError::InvalidUri)?;
        let endpoint = Arc::new(Endpoint {
            transport: transport.clone(),
            target,
            host,
            idle: Mutex::new(Vec::new()),
            h2: Mutex::new(None),
            speaks_h2: AtomicBool::new(transport.http == HttpMode::Http2),
            h2_connecting: tokio::sync::Mutex::new(()),
        });
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(reap(Arc::downgrade(&endpoint)));
        }
        Ok(endpoint)
    }

    fn idle(&self) -> MutexGuard<'_, Vec<Idle>> {
        self.idle.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn h2(&self) -> MutexGuard<'_, Option<http2::SendRequest<BoxBody>>> {
        self.h2.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// True once this origin is known to speak HTTP/2 (configured, or negotiated by ALPN).
    pub fn speaks_h2(&self) -> bool {
        self.speaks_h2.load(Ordering::Relaxed)
    }

    /// Number of idle HTTP/1.1 connections (tests, diagnostics).
    pub fn idle_connections(&self) -> usize {
        self.idle().len()
    }

    /// Send `request` (absolute URI of this endpoint's origin) on a pooled or new connection.
    pub async fn send(
        self: &Arc<Self>,
        mut request: Request<BoxBody>,
    ) -> Result<Response<PooledBody>, ClientError> {
        // A pooled connection that turns out closed is replaced by a fresh one, once.
        let mut fresh = false;
        loop {
            let conn = match self.checkout() {
                Some(conn) => conn,
                None if self.speaks_h2.load(Ordering::Relaxed) => {
                    let _one_at_a_time = self.h2_connecting.lock().await;
                    match self.checkout() {
                        Some(conn) => conn,
                        None => {
                            fresh = true;
                            Box::pin(self.connect()).await?
                        }
                    }
                }
                None => {
                    fresh = true;
                    Box::pin(self.connect()).await?
                }
            };
            let sent = match conn {
                Conn::H2(mut sender) => sender
                    .try_send_request(request)
                    .await
                    .inspect_err(|e| {
                        // A shared connection that refused a request, or is gone, is not
                        // handed out again (a reset stream alone keeps it).
                        if e.message().is_some() || sender.is_closed() {
                            self.h2().take();
                        }
                    })
                    .map(|response| {
                        response.map(|body| PooledBody {
                            inner: body,
                            reuse: None,
                        })
                    }),
                Conn::H1(mut sender) => {
                    request
                        .headers_mut()
                        .entry(HOST)
                        .or_insert(self.host.clone());
                    let origin_form = request.uri().path_and_query().cloned().map(Uri::from);
                    if let Some(uri) = origin_form {
                        *request.uri_mut() = uri;
                    }
                    sender
                        .try_send_request(request)
                        .await
                        .map(|response| self.pooled(response, sender))
                }
            };
            match sent {
                Ok(response) => return Ok(response),
                Err(mut e) => match e.take_message() {
                    Some(mut unsent) if !fresh => {
                        // The HTTP/1 attempt made the URI origin-form; the fresh connection
                        // may turn out to be HTTP/2, which needs it absolute again.
                        if unsent.uri().scheme().is_none() {
                            let mut parts = self.target.clone().into_parts();
                            parts.path_and_query = unsent.uri().path_and_query().cloned();
                            if let Ok(uri) = Uri::from_parts(parts) {
                                *unsent.uri_mut() = uri;
                            }
                        }
                        request = unsent;
                    }
                    _ => return Err(ClientError::Send(e.into_error())),
                },
            }
        }
    }

    /// Wrap an HTTP/1.1 response so its connection returns to the pool when the body ends.
    fn pooled(
        self: &Arc<Self>,
        response: Response<Incoming>,
        sender: http1::SendRequest<BoxBody>,
    ) -> Response<PooledBody> {
        // After a 101 the connection belongs to the upgraded protocol.
        let reusable = response.status() != StatusCode::SWITCHING_PROTOCOLS;
        let (parts, body) = response.into_parts();
        let mut body = PooledBody {
            inner: body,
            reuse: reusable.then(|| (self.clone(), sender)),
        };
        if body.inner.is_end_stream() {
            if let Some((endpoint, sender)) = body.reuse.take() {
                release(endpoint, sender);
            }
        }
        Response::from_parts(parts, body)
    }

    /// A ready connection: the shared HTTP/2 one, else the most recently used idle HTTP/1.1.
    fn checkout(&self) -> Option<Conn> {
        // Only an origin known to speak HTTP/2 has a shared connection: HTTP/1.1 origins skip
        // that lock.
        if self.speaks_h2.load(Ordering::Relaxed) {
            if let Some(sender) = self.h2().as_ref() {
                if !sender.is_closed() {
                    return Some(Conn::H2(sender.clone()));
                }
            }
        }
        let mut idle = self.idle();
        while let Some(entry) = idle.pop() {
            if entry.sender.is_ready() && entry.since.elapsed() < IDLE_TIMEOUT {
                return Some(Conn::H1(entry.sender));
            }
        }
        None
    }

    fn check_in(&self, sender: http1::SendRequest<BoxBody>) {
        let mut idle = self.idle();
        if idle.len() < MAX_IDLE {
            idle.push(Idle {
                sender,
                since: Instant::now(),
            });
        }
    }

    /// Dial the origin and run the protocol handshake; the connection's task is spawned.
    async fn connect(&self) -> Result<Conn, ClientError> {
        let io = self
            .transport
            .connector
            .clone()
            .call(self.target.clone())
            .await
            .map_err(ClientError::Connect)?;
        let h2 = io.connected().is_negotiated_h2()
            || (self.transport.http == HttpMode::Http2
                && self.target.scheme() == Some(&Scheme::HTTP));
        if h2 {
            let (sender, connection) = http2::Builder::new(TokioExecutor::new())
                .timer(TokioTimer::new())
                .adaptive_window(true)
                .keep_alive_interval(Some(Duration::from_secs(30)))
                .keep_alive_while_idle(false)
                .handshake(io)
                .await
                .map_err(|e| ClientError::Connect(e.into()))?;
            tokio::spawn(async move {
                if let Err(e) = connection.await {
                    tracing::debug!(error = %e, "upstream HTTP/2 connection ended");
                }
            });
            *self.h2() = Some(sender.clone());
            self.speaks_h2.store(true, Ordering::Relaxed);
            Ok(Conn::H2(sender))
        } else {
            let (sender, connection) = http1::Builder::new()
                .max_buf_size(MAX_BUF_SIZE)
                .handshake(io)
                .await
                .map_err(|e| ClientError::Connect(e.into()))?;
            tokio::spawn(async move {
                if let Err(e) = connection.with_upgrades().await {
                    tracing::debug!(error = %e, "upstream connection ended");
                }
            });
            Ok(Conn::H1(sender))
        }
    }
}

/// Close idle connections past [`IDLE_TIMEOUT`] (and closed ones) while the endpoint lives.
async fn reap(endpoint: Weak<Endpoint>) {
    let mut tick = tokio::time::interval(IDLE_TIMEOUT / 2);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tick.tick().await;
        let Some(endpoint) = endpoint.upgrade() else {
            return;
        };
        endpoint
            .idle()
            .retain(|e| !e.sender.is_closed() && e.since.elapsed() < IDLE_TIMEOUT);
    }
}

fn host_header(scheme: &Scheme, authority: &Authority) -> Option<HeaderValue> {
    let default_port = match scheme.as_str() {
        "https" => 443,
        _ => 80,
    };
    let text = match authority.port_u16() {
        Some(port) if port != default_port => authority.as_str().to_owned(),
        _ => authority.host().to_owned(),
    };
    HeaderValue::from_str(&text).ok()
}

pin_project_lite::pin_project! {
    /// An upstream response body; for HTTP/1.1, it gives its connection back to the pool once
    /// read to the end.
    pub struct PooledBody {
        #[pin]
        inner: Incoming,
        reuse: Option<(Arc<Endpoint>, http1::SendRequest<BoxBody>)>,
    }
}

fn release(endpoint: Arc<Endpoint>, mut sender: http1::SendRequest<BoxBody>) {
    if sender.is_ready() {
        endpoint.check_in(sender);
    } else if !sender.is_closed() {
        // The connection task has not yet seen the end of the message: wait for it off the
        // request path (rare: it usually has, since it produced the last frame).
        tokio::spawn(async move {
            if sender.ready().await.is_ok() {
                endpoint.check_in(sender);
            }
        });
    }
}

impl Body for PooledBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let mut this = self.project();
        let polled = this.inner.as_mut().poll_frame(cx);
        let ended = match &polled {
            Poll::Ready(None) => true,
            Poll::Ready(Some(Ok(_))) => this.inner.is_end_stream(),
            // An error: the connection is not reusable.
            Poll::Ready(Some(Err(_))) => {
                this.reuse.take();
                false
            }
            Poll::Pending => false,
        };
        if ended {
            if let Some((endpoint, sender)) = this.reuse.take() {
                release(endpoint, sender);
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_header_omits_the_default_port() {
        let host = |s: &str, a: &str| {
            host_header(&s.parse().unwrap(), &a.parse().unwrap())
                .unwrap()
                .to_str()
                .unwrap()
                .to_owned()
        };
        assert_eq!(host("https", "api.stripe.com"), "api.stripe.com");
        assert_eq!(host("https", "api.stripe.com:443"), "api.stripe.com");
        assert_eq!(host("https", "api.stripe.com:8443"), "api.stripe.com:8443");
        assert_eq!(host("http", "127.0.0.1:80"), "127.0.0.1");
        assert_eq!(host("http", "127.0.0.1:9000"), "127.0.0.1:9000");
    }
}
