//! A mock upstream that sees the request as it streams: its handler gets hyper's own
//! `Request<Incoming>` and may answer after the first chunk, echo chunk by chunk, or stall, so
//! a proxy that buffers the request body (store-and-forward) cannot hide behind it.
//!
//! Serves HTTP/1.1 and h2c (prior knowledge) on `127.0.0.1:0`.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};

use super::{BodySender, TestBody};

type Handler = Arc<
    dyn Fn(Request<Incoming>) -> std::pin::Pin<Box<dyn Future<Output = Response<TestBody>> + Send>>
        + Send
        + Sync,
>;

/// A streaming mock upstream; stops accepting when dropped.
pub struct StreamingUpstream {
    pub addr: SocketAddr,
    requests: Arc<AtomicUsize>,
    _stop: watch::Sender<bool>,
}

impl StreamingUpstream {
    /// Serve every request with `handler`.
    pub async fn start<F, Fut>(handler: F) -> Self
    where
        F: Fn(Request<Incoming>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Response<TestBody>> + Send + 'static,
    {
        let handler: Handler = Arc::new(move |req| Box::pin(handler(req)));
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let requests = Arc::new(AtomicUsize::new(0));
        let (stop, mut stopped) = watch::channel(false);
        let counted = requests.clone();
        tokio::spawn(async move {
            loop {
                let stream = tokio::select! {
                    accepted = listener.accept() => match accepted {
                        Ok((stream, _)) => stream,
                        Err(_) => continue,
                    },
                    _ = stopped.changed() => return,
                };
                let handler = handler.clone();
                let counted = counted.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |req| {
                        counted.fetch_add(1, Ordering::SeqCst);
                        let fut = handler(req);
                        async move { Ok::<_, Infallible>(fut.await) }
                    });
                    let _ = auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        StreamingUpstream {
            addr,
            requests,
            _stop: stop,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// Requests received so far (counted when the head arrives).
    pub fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }
}

/// The next data chunk of a request body (`None` at its end or on an error).
pub async fn next_chunk(body: &mut Incoming) -> Option<Bytes> {
    loop {
        match body.frame().await? {
            Ok(frame) => match frame.into_data() {
                Ok(data) if data.is_empty() => continue,
                Ok(data) => return Some(data),
                Err(_) => continue,
            },
            Err(_) => return None,
        }
    }
}

/// A response whose body the test (or the handler) feeds later, and its sender.
pub fn streamed_response(status: u16) -> (BodySender, Response<TestBody>) {
    let (tx, body) = super::channel_body();
    let mut response = Response::new(body);
    *response.status_mut() = http::StatusCode::from_u16(status).expect("status");
    (tx, response)
}

/// Events from inside a handler, for the test to wait on.
pub fn events<T>() -> (mpsc::UnboundedSender<T>, mpsc::UnboundedReceiver<T>) {
    mpsc::unbounded_channel()
}
