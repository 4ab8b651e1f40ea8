//! The listeners' connection loop: accepts connections (bounded by `max_connections`),
//! enforces the header-read timeout, the keep-alive idle timeout and the header-size limit, and
//! serves HTTP/1.1 and HTTP/2 (h2c prior knowledge, for gRPC) with upgrades, until told to
//! drain. The app listener (`app::serve_app`) and the webhook listener
//! (`webhook::receiver::serve`) both run on [`serve_checked`], so both get the same head checks.
//! Generic over the handler: this module knows nothing of the proxy or the webhooks.
//!
//! hyper closes a connection silently when its header timer fires, answers an oversized header
//! section with an empty 431, and quietly drops `Content-Length` when `Transfer-Encoding` comes
//! with it. To give the application Outpost's JSON 408/431/400 instead, for every request of a
//! connection, hyper reads the socket through [`framing::Framed`], which lets a request head
//! through only once it is complete and checked, and hands a refused head's socket back here
//! (after hyper has answered the requests before it) to be answered and closed.

mod framing;

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::sync::Arc;
use std::time::Duration;

use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::body::BoxBody;
use crate::config::{Limits, WebhookLimits};
use crate::error::{ErrorBody, ProxyError};
use framing::{Answer, Exchange, First, Framed, Refusal};

/// How long a kept-alive connection may sit idle (or trickle its next request's headers).
const KEEP_ALIVE_IDLE: Duration = Duration::from_secs(75);

/// After answering a refused request: how long (and how much) to keep reading what the client
/// still sends, so that closing with unread bytes does not reset the connection before the
/// client has read the answer (nginx's lingering close).
const LINGER: Duration = Duration::from_secs(2);
const LINGER_BYTES: usize = 1 << 20;

/// What one listener enforces on each connection before a handler sees a request.
#[derive(Clone, Debug)]
pub struct ListenerLimits {
    /// Largest request head (431 above).
    pub max_header_bytes: usize,
    /// Time to send a request head once begun (408 after); a connection that sends nothing
    /// in this time is closed.
    pub header_read_timeout: Duration,
    /// How long a kept-alive HTTP/1 connection may wait for its next request's head to be
    /// complete (hyper's timer: the connection is closed without an answer).
    pub idle_timeout: Duration,
    /// Connections served at once; more wait in the kernel's backlog.
    pub max_connections: usize,
}

impl ListenerLimits {
    /// The app listener's (`limits:`).
    pub fn app(limits: &Limits) -> Self {
        ListenerLimits {
            max_header_bytes: limits.max_header_bytes,
            header_read_timeout: limits.header_read_timeout,
            idle_timeout: KEEP_ALIVE_IDLE.max(limits.header_read_timeout),
            max_connections: limits.max_connections,
        }
    }

    /// The webhook listener's (`webhook_limits:`).
    pub fn webhook(limits: &WebhookLimits) -> Self {
        ListenerLimits {
            max_header_bytes: limits.max_header_bytes,
            header_read_timeout: limits.header_read_timeout,
            idle_timeout: limits.idle_timeout,
            max_connections: limits.max_connections,
        }
    }
}

/// Who counts and logs a request head refused by the listener (before any handler saw it).
pub trait Refusals: Send + Sync + 'static {
    /// Count and log the refusal; returns the request id its answer carries.
    fn refused(&self, error: &ProxyError) -> String;
}

/// Serve HTTP/1.1 and HTTP/2 on `listener` with every HTTP/1 request head checked by
/// [`framing`] first (refusals answered with Outpost's JSON errors), until `shutdown`.
pub async fn serve_checked<R, H, Fut>(
    listener: TcpListener,
    limits: ListenerLimits,
    drain_timeout: Duration,
    what: &'static str,
    shutdown: impl Future<Output = ()>,
    refusals: Arc<R>,
    handler: H,
) where
    R: Refusals,
    H: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Result<Response<BoxBody>, Infallible>> + Send + 'static,
{
    let builder = Arc::new(builder(&limits));
    let limits = Arc::new(limits);
    let max_connections = limits.max_connections;
    crate::net::accept_loop(
        listener,
        max_connections,
        drain_timeout,
        what,
        shutdown,
        move |stream, watcher, mut draining| {
            let builder = builder.clone();
            let handler = handler.clone();
            let limits = limits.clone();
            let refusals = refusals.clone();
            async move {
                let mut io =
                    Framed::new(stream, limits.max_header_bytes, limits.header_read_timeout);
                if !first_head(&mut io, &limits, &*refusals, &mut draining).await {
                    return;
                }
                let shared = io.shared();
                let exchanges = shared.clone();
                let service = service_fn(move |req: Request<Incoming>| {
                    let exchange = Exchange::new(&exchanges);
                    let connect = req.method() == Method::CONNECT;
                    let handler = handler.clone();
                    async move {
                        let Ok(response) = handler(req).await;
                        let status = response.status();
                        if status == StatusCode::SWITCHING_PROTOCOLS
                            || (connect && status.is_success())
                        {
                            exchange.switching();
                        }
                        Ok::<_, Infallible>(response.map(|body| Answer::new(body, exchange)))
                    }
                });
                // Served until it ends, and shut down gracefully (requests in flight finish,
                // then it closes) when the listener drains or once no request has been in
                // flight for `idle_timeout`: hyper's own idle timeout covers only an HTTP/1
                // keep-alive wait, and an HTTP/2 connection with no stream open would
                // otherwise be held for ever. The watcher is held to the end, so the drain
                // waits for this connection.
                let conn = builder.serve_connection_with_upgrades(TokioIo::new(io), service);
                let _watcher = watcher;
                let idle = limits.idle_timeout;
                // A block: the connection (and the socket it owns) is dropped at its end, before
                // a refused head's socket is taken back below.
                let served = {
                    let mut conn = std::pin::pin!(conn);
                    let mut shut = false;
                    // Checked once per idle period: quiet at two checks in a row with nothing
                    // answered between them means idle for a whole period (closed after one
                    // to two periods; no clock read per request).
                    let mut seen = None;
                    let mut check = tokio::time::interval(idle);
                    check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                    check.reset();
                    loop {
                        tokio::select! {
                            served = conn.as_mut() => break served,
                            () = draining.started(), if !shut => {
                                shut = true;
                                conn.as_mut().graceful_shutdown();
                            }
                            _ = check.tick(), if !shut => {
                                let now = shared.quiet();
                                if now.is_some() && now == seen {
                                    shut = true;
                                    conn.as_mut().graceful_shutdown();
                                }
                                seen = now;
                            }
                        }
                    }
                };
                if let Err(e) = served {
                    tracing::debug!(listener = what, error = %e, "connection ended with an error");
                }
                // hyper has answered every request before a refused one and let go of the socket.
                if let Some((stream, refusal)) = shared.take_handback() {
                    answer_refusal(stream, refusal, &limits, &*refusals).await;
                }
            }
        },
    )
    .await;
}

fn builder(limits: &ListenerLimits) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.idle_timeout)
        .max_buf_size(limits.max_header_bytes + 4096)
        .max_headers(framing::MAX_HEADERS)
        .keep_alive(true);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX))
        .max_concurrent_streams(512)
        .adaptive_window(true)
        .keep_alive_interval(Some(Duration::from_secs(30)));
    builder
}

/// Read and check the first request head (within `limits.header_read_timeout`); answer
/// 408/431/400 right away when it is bad. `true`: serve the connection.
async fn first_head(
    io: &mut Framed<TcpStream>,
    limits: &ListenerLimits,
    refusals: &impl Refusals,
    draining: &mut crate::net::Draining,
) -> bool {
    enum Step {
        Read(Result<std::io::Result<First>, tokio::time::error::Elapsed>),
        Drain,
    }
    let deadline = tokio::time::Instant::now() + limits.header_read_timeout;
    let mut watching = true;
    // `first_head` keeps what it read in `io`, so it can be polled again after a drain signal.
    let read = loop {
        let step = tokio::select! {
            read = tokio::time::timeout_at(deadline, io.first_head()) => Step::Read(read),
            () = draining.started(), if watching => Step::Drain,
        };
        match step {
            Step::Read(read) => break read,
            // Nothing of a request yet: close, as for any idle connection when draining.
            Step::Drain if io.is_idle() => return false,
            // A head under way: let it arrive (within its deadline) and be answered.
            Step::Drain => watching = false,
        }
    };
    let refusal = match read {
        Ok(Ok(First::Serve)) => return true,
        Ok(Ok(First::Closed)) | Ok(Err(_)) => return false,
        Ok(Ok(First::Refuse(refusal))) => refusal,
        Err(_) if io.is_idle() => return false, // an idle pre-connection: just close
        Err(_) => Refusal::Timeout,
    };
    if let Some(stream) = io.take_io() {
        answer_refusal(stream, refusal, limits, refusals).await;
    }
    false
}

/// Write Outpost's JSON error for a refused request head, then close the connection.
async fn answer_refusal<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    refusal: Refusal,
    limits: &ListenerLimits,
    refusals: &impl Refusals,
) {
    let error = match refusal {
        Refusal::Timeout => ProxyError::HeaderTimeout,
        Refusal::TooLarge => ProxyError::HeadersTooLarge {
            limit: limits.max_header_bytes,
        },
        Refusal::Bad(reason) => ProxyError::BadRequest(reason),
    };
    let request_id = refusals.refused(&error);
    if write_raw_error(&mut stream, &error, &request_id)
        .await
        .is_ok()
    {
        linger(&mut stream).await;
    }
}

async fn write_raw_error<S: AsyncWrite + Unpin>(
    stream: &mut S,
    error: &ProxyError,
    request_id: &str,
) -> io::Result<()> {
    let status = error.status();
    let body = ErrorBody {
        kind: error.kind(),
        message: &error.to_string(),
        upstream: None,
        status,
        retryable: error.retryable(),
        retry_after: None,
        request_id,
    }
    .to_json()
    .to_string();
    let head = format!(
        "HTTP/1.1 {} {}\r\ncontent-type: application/json\r\nx-outpost-error: {}\r\nx-request-id: {}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        status.as_u16(),
        status.canonical_reason().unwrap_or(""),
        error.kind(),
        request_id,
        body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(body.as_bytes()).await?;
    stream.shutdown().await
}

/// Drop what the client still sends, until it closes (or [`LINGER`] / [`LINGER_BYTES`]).
async fn linger<S: AsyncRead + Unpin>(stream: &mut S) {
    let mut scratch = [0u8; 4096];
    let mut left = LINGER_BYTES;
    let _ = tokio::time::timeout(LINGER, async {
        while left > 0 {
            match stream.read(&mut scratch).await {
                Ok(0) | Err(_) => break,
                Ok(n) => left = left.saturating_sub(n),
            }
        }
    })
    .await;
}
