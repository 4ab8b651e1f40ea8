//! The app listener: accepts connections (bounded by `limits.max_connections`), enforces the
//! header-read timeout and header-size limit, and serves HTTP/1.1 and HTTP/2 (h2c prior
//! knowledge, for gRPC) with upgrades, until told to drain.
//!
//! hyper closes a connection silently when its header timer fires, and answers an oversized
//! header section with an empty 431. To give the application Outpost's JSON 408/431 (and to
//! refuse `Transfer-Encoding` + `Content-Length` with a 400 instead of quietly dropping the
//! length), the first request head of each connection is read here, checked, and handed to
//! hyper with the bytes put back in front ([`Prefixed`]). Later requests on a kept-alive
//! connection are bounded by hyper's own timer and buffer limit.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;

use crate::config::Limits;
use crate::error::{ErrorBody, ProxyError};
use crate::proxy::{Proxy, RequestIds};

/// How long a kept-alive connection may sit idle (or trickle its next request's headers).
const KEEP_ALIVE_IDLE: Duration = Duration::from_secs(75);

/// Serve the app listener until `shutdown` resolves, then let in-flight requests finish for
/// up to `drain_timeout`.
pub async fn serve_app(
    listener: TcpListener,
    proxy: Proxy,
    ids: Arc<RequestIds>,
    limits: Limits,
    drain_timeout: Duration,
    shutdown: impl Future<Output = ()>,
) {
    let builder = Arc::new(builder(&limits));
    let limits = Arc::new(limits);
    let max_connections = limits.max_connections;
    accept_loop(
        listener,
        max_connections,
        drain_timeout,
        "app",
        shutdown,
        move |stream, watcher| {
            let builder = builder.clone();
            let proxy = proxy.clone();
            let ids = ids.clone();
            let limits = limits.clone();
            async move {
                let Some(io) = first_head(stream, &limits, &ids).await else {
                    return;
                };
                let service = service_fn(move |req| proxy.clone().serve(req));
                let conn = builder.serve_connection_with_upgrades(TokioIo::new(io), service);
                if let Err(e) = watcher.watch(conn.into_owned()).await {
                    tracing::debug!(error = %e, "app connection ended with an error");
                }
            }
        },
    )
    .await;
}

/// Accept connections until `shutdown` (at most `max_connections` open at once: more wait in
/// the kernel's backlog), run `serve` for each on its own task, then give open connections up
/// to `drain_timeout` to finish. `serve` gets a graceful-shutdown watcher for its connection.
pub async fn accept_loop<F, Fut>(
    listener: TcpListener,
    max_connections: usize,
    drain_timeout: Duration,
    what: &'static str,
    shutdown: impl Future<Output = ()>,
    serve: F,
) where
    F: Fn(TcpStream, Watcher) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let permits = Arc::new(Semaphore::new(max_connections));
    let graceful = GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        let permit = tokio::select! {
            permit = permits.clone().acquire_owned() => match permit { Ok(p) => p, Err(_) => break },
            () = &mut shutdown => break,
        };
        let (stream, _peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // EMFILE and friends: back off briefly instead of spinning.
                    tracing::warn!(listener = what, error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let connection = serve(stream, graceful.watcher());
        tokio::spawn(async move {
            let _permit = permit;
            connection.await;
        });
    }
    drop(listener);
    if tokio::time::timeout(drain_timeout, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(
            listener = what,
            ?drain_timeout,
            "drain timeout reached with requests still in flight"
        );
    }
}

fn builder(limits: &Limits) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(KEEP_ALIVE_IDLE.max(limits.header_read_timeout))
        .max_buf_size(limits.max_header_bytes + 4096)
        .max_headers(1000)
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

enum Head {
    Ready,
    Timeout,
    TooLarge,
    Bad(&'static str),
}

const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Read and check the first request head; answer 408/431/400 ourselves when it is bad.
async fn first_head(
    mut stream: TcpStream,
    limits: &Limits,
    ids: &RequestIds,
) -> Option<Prefixed<TcpStream>> {
    let mut buf = BytesMut::with_capacity(4096);
    let verdict = match tokio::time::timeout(
        limits.header_read_timeout,
        read_head(&mut stream, &mut buf, limits.max_header_bytes),
    )
    .await
    {
        Ok(Ok(Some(head))) => head,
        Ok(Ok(None)) | Ok(Err(_)) => return None,
        Err(_) => Head::Timeout,
    };
    let error = match verdict {
        Head::Ready => {
            return Some(Prefixed {
                prefix: buf.freeze(),
                inner: stream,
            })
        }
        Head::Timeout if buf.is_empty() => return None, // an idle pre-connection: just close
        Head::Timeout => ProxyError::HeaderTimeout,
        Head::TooLarge => ProxyError::HeadersTooLarge {
            limit: limits.max_header_bytes,
        },
        Head::Bad(reason) => ProxyError::BadRequest(reason),
    };
    let request_id = ids.next();
    tracing::info!(target: "outpost::access", request_id, upstream = crate::metrics::NO_UPSTREAM, status = error.status().as_u16(), error = %error, "connection refused before routing");
    let _ = write_raw_error(&mut stream, &error, &request_id).await;
    None
}

/// Read until the end of the first head. `None`: the peer closed before sending anything.
async fn read_head(
    stream: &mut TcpStream,
    buf: &mut BytesMut,
    max: usize,
) -> io::Result<Option<Head>> {
    let mut searched = 0;
    loop {
        if buf.starts_with(H2_PREFACE) {
            return Ok(Some(Head::Ready));
        }
        if let Some(end) = find_head_end(buf, searched) {
            return Ok(Some(check_framing(&buf[..end])));
        }
        searched = buf.len().saturating_sub(3);
        if buf.len() >= max {
            return Ok(Some(Head::TooLarge));
        }
        buf.reserve(4096.min(max + 1 - buf.len()).max(1));
        if stream.read_buf(buf).await? == 0 {
            return if buf.is_empty() {
                Ok(None)
            } else {
                Err(io::ErrorKind::UnexpectedEof.into())
            };
        }
    }
}

fn find_head_end(buf: &[u8], from: usize) -> Option<usize> {
    let from = from.min(buf.len());
    let window = &buf[from..];
    let crlf = window
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|p| from + p + 4);
    let lf = window
        .windows(2)
        .position(|w| w == b"\n\n")
        .map(|p| from + p + 2);
    match (crlf, lf) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// Request smuggling guards (RFC 9112 §6.3): TE with CL, or CL values that disagree.
fn check_framing(head: &[u8]) -> Head {
    let mut headers = [httparse::EMPTY_HEADER; 128];
    let mut req = httparse::Request::new(&mut headers);
    match req.parse(head) {
        Ok(httparse::Status::Complete(_)) => {}
        // More headers than we look at: hyper applies its own (larger) limit.
        Err(httparse::Error::TooManyHeaders) => return Head::Ready,
        // Malformed heads (obs-fold, bad names, HTTP/0.9 …) get Outpost's JSON 400.
        _ => return Head::Bad("malformed request head"),
    }
    let http10 = req.version == Some(0);
    let mut content_length: Option<&[u8]> = None;
    let mut last_coding: Option<&[u8]> = None;
    for h in req.headers.iter() {
        if h.name.eq_ignore_ascii_case("transfer-encoding") {
            last_coding = h
                .value
                .split(|b| *b == b',')
                .map(|v| v.trim_ascii())
                .next_back();
        } else if h.name.eq_ignore_ascii_case("content-length") {
            for value in h.value.split(|b| *b == b',').map(|v| v.trim_ascii()) {
                match content_length {
                    Some(prev) if prev != value => {
                        return Head::Bad("conflicting Content-Length headers")
                    }
                    _ => content_length = Some(value),
                }
            }
        }
    }
    let Some(last) = last_coding else {
        return Head::Ready;
    };
    if content_length.is_some() {
        return Head::Bad("request has both Transfer-Encoding and Content-Length");
    }
    if http10 {
        return Head::Bad("HTTP/1.0 requests cannot use Transfer-Encoding");
    }
    if !last.eq_ignore_ascii_case(b"chunked") {
        return Head::Bad("Transfer-Encoding must end with chunked");
    }
    Head::Ready
}

async fn write_raw_error(
    stream: &mut TcpStream,
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

pin_project_lite::pin_project! {
    /// A stream with bytes already read put back in front of it.
    pub struct Prefixed<S> {
        prefix: Bytes,
        #[pin]
        inner: S,
    }
}

impl<S: AsyncRead> AsyncRead for Prefixed<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.project();
        if !this.prefix.is_empty() {
            let n = this.prefix.len().min(buf.remaining());
            buf.put_slice(&this.prefix[..n]);
            this.prefix.advance(n);
            return Poll::Ready(Ok(()));
        }
        this.inner.poll_read(cx, buf)
    }
}

impl<S: AsyncWrite> AsyncWrite for Prefixed<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.project().inner.poll_write(cx, buf)
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().inner.poll_flush(cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().inner.poll_shutdown(cx)
    }
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.project().inner.poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn framing_checks() {
        assert!(matches!(
            check_framing(b"POST / HTTP/1.1\r\nContent-Length: 3\r\n\r\n"),
            Head::Ready
        ));
        assert!(matches!(
            check_framing(b"POST / HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\n"),
            Head::Ready
        ));
        assert!(matches!(
            check_framing(b"POST / HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n"),
            Head::Bad(_)
        ));
        assert!(matches!(
            check_framing(b"POST / HTTP/1.1\r\nContent-Length: 3, 4\r\n\r\n"),
            Head::Bad(_)
        ));
        assert!(matches!(
            check_framing(
                b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n"
            ),
            Head::Bad(_)
        ));
        assert!(matches!(check_framing(b"garbage\r\n\r\n"), Head::Bad(_)));
        assert!(matches!(
            check_framing(b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked, gzip\r\n\r\n"),
            Head::Bad(_)
        ));
        assert!(matches!(
            check_framing(b"POST / HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n"),
            Head::Ready
        ));
        assert!(matches!(
            check_framing(b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n"),
            Head::Bad(_)
        ));
    }

    #[test]
    fn head_end() {
        assert_eq!(find_head_end(b"GET / HTTP/1.1\r\n\r\nbody", 0), Some(18));
        assert_eq!(find_head_end(b"GET / HTTP/1.1\n\n", 0), Some(16));
        assert_eq!(find_head_end(b"GET / HTTP/1.1\r\nHost: x\r\n", 0), None);
    }

    proptest::proptest! {
        #[test]
        fn head_checks_never_panic(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..512), from in 0usize..600) {
            let _ = find_head_end(&bytes, from);
            let _ = check_framing(&bytes);
        }

        #[test]
        fn header_like_input_never_panics(head in "[A-Za-z]{1,6} /[a-z]{0,8} HTTP/1\\.[01]\r\n([A-Za-z-]{1,12}: [ -~]{0,16}\r\n){0,8}\r\n") {
            let _ = check_framing(head.as_bytes());
        }
    }
}
