//! Connection-level pieces every listener shares, with no dependency on the request path:
//! the accept loop (connection cap, graceful drain), request ids, and hop-by-hop header
//! hygiene ([`headers`]). A leaf of the module graph, so `server`, `proxy`, `stack` and
//! `webhook` can all use it without importing each other.

pub mod headers;

use std::future::Future;
use std::io::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Request};
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;

use crate::error::X_REQUEST_ID;

/// Request ids: the application's `x-request-id` when it is sane, else a process prefix and a
/// counter (cheap, unique within the process, unguessable across restarts).
pub struct RequestIds {
    prefix: String,
    next: AtomicU64,
}

impl Default for RequestIds {
    fn default() -> Self {
        RequestIds {
            prefix: format!("{:08x}", rand::random::<u32>()),
            next: AtomicU64::new(1),
        }
    }
}

impl RequestIds {
    /// A new id, `{prefix}-{counter in hex}`.
    pub fn next(&self) -> String {
        String::from_utf8(self.next_bytes()).unwrap_or_default()
    }

    /// [`RequestIds::next`] as bytes, in a buffer of exactly its length (so `Bytes::from` and
    /// `String::from_utf8` take it without copying).
    pub fn next_bytes(&self) -> Vec<u8> {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let hex_digits = (64 - n.leading_zeros()).div_ceil(4).max(1) as usize;
        let mut id = Vec::with_capacity(self.prefix.len() + 1 + hex_digits);
        id.extend_from_slice(self.prefix.as_bytes());
        id.push(b'-');
        let _ = write!(id, "{n:x}");
        id
    }

    /// The request's id as the `x-request-id` value it is answered with: the application's own
    /// when sane (no copy), else a new one (one allocation, no re-validation).
    pub fn for_request<B>(&self, req: &Request<B>) -> HeaderValue {
        if let Some(id) = req.headers().get(&X_REQUEST_ID) {
            let bytes = id.as_bytes();
            if !bytes.is_empty()
                && bytes.len() <= 128
                && bytes
                    .iter()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(b))
            {
                return id.clone();
            }
        }
        HeaderValue::from_maybe_shared(Bytes::from(self.next_bytes()))
            .unwrap_or_else(|_| HeaderValue::from_static("invalid"))
    }
}

/// Set once the listener drains: a connection that has not sent a byte of a request yet is
/// closed instead of being waited for (its watcher would hold the drain until the header
/// read timeout).
#[derive(Clone)]
pub struct Draining(tokio::sync::watch::Receiver<bool>);

impl Draining {
    /// Resolves when the drain starts (never, if the accept loop is gone without one).
    pub async fn started(&mut self) {
        if self.0.wait_for(|d| *d).await.is_err() {
            std::future::pending::<()>().await;
        }
    }
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
    F: Fn(TcpStream, Watcher, Draining) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let permits = Arc::new(Semaphore::new(max_connections));
    let graceful = GracefulShutdown::new();
    let (drain, draining) = tokio::sync::watch::channel(false);
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
        let connection = serve(stream, graceful.watcher(), Draining(draining.clone()));
        tokio::spawn(async move {
            let _permit = permit;
            connection.await;
        });
    }
    drop(listener);
    // Connections still waiting for their first request close now (`Draining`); hyper closes
    // its idle keep-alive ones through the watchers.
    let _ = drain.send(true);
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

#[cfg(test)]
mod tests {
    use super::*;

    fn request(id: Option<&str>) -> Request<()> {
        let mut req = Request::new(());
        if let Some(id) = id {
            req.headers_mut()
                .insert(&X_REQUEST_ID, HeaderValue::from_str(id).unwrap());
        }
        req
    }

    #[test]
    fn request_ids_keep_a_sane_application_id_and_replace_the_rest() {
        let ids = RequestIds::default();
        assert_eq!(
            ids.for_request(&request(Some("app-1.2:x_y"))),
            "app-1.2:x_y"
        );
        let first = ids.for_request(&request(None));
        let second = ids.for_request(&request(Some("has space")));
        let third = ids.for_request(&request(Some(&"x".repeat(129))));
        let prefix = &ids.prefix;
        assert_eq!(first, format!("{prefix}-1").as_str());
        assert_eq!(second, format!("{prefix}-2").as_str());
        assert_eq!(third, format!("{prefix}-3").as_str());
        ids.next.store(0xabc_def0_1234, Ordering::Relaxed);
        assert_eq!(
            ids.for_request(&request(None)),
            format!("{prefix}-abcdef01234").as_str()
        );
        ids.next.store(u64::MAX, Ordering::Relaxed);
        assert_eq!(
            ids.for_request(&request(None)),
            format!("{prefix}-ffffffffffffffff").as_str()
        );
    }
}
