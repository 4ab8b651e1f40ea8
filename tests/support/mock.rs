//! The mock upstream (part of the shared test harness; see `mod.rs`).

use super::*;

/// The request bytes kept verbatim; longer bodies are only counted and hashed.
pub const BODY_KEEP: usize = 1024 * 1024;

/// One request as the mock upstream received it.
#[derive(Clone, Debug)]
pub struct RecordedRequest {
    pub method: Method,
    /// Path and query exactly as received (`/a%20b?x=1`).
    pub uri: String,
    pub headers: HeaderMap,
    pub version: Version,
    /// The first [`BODY_KEEP`] bytes of the body.
    pub body: Bytes,
    pub body_len: u64,
    pub body_sha256: [u8; 32],
    pub body_error: Option<String>,
    pub trailers: Option<HeaderMap>,
}

impl RecordedRequest {
    pub fn path(&self) -> &str {
        self.uri.split_once('?').map_or(&self.uri, |(p, _)| p)
    }
    pub fn query(&self) -> Option<&str> {
        self.uri.split_once('?').map(|(_, q)| q)
    }
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .get(name)
            .map(|v| v.to_str().expect("ascii header"))
    }
    pub fn has(&self, name: &str) -> bool {
        self.headers.contains_key(name)
    }
}

/// How the mock answers one request.
pub enum Reply {
    Respond(Response<TestBody>),
    /// Never answer (the connection stays open): attempt timeouts.
    Never,
    /// Answer when the test sends the response (or never, if the sender is dropped).
    Wait(oneshot::Receiver<Response<TestBody>>),
    /// A `101 Switching Protocols` response; afterwards every byte received is echoed back.
    Upgrade(Response<TestBody>),
}

impl Reply {
    pub fn status(status: u16) -> Reply {
        Reply::text(status, "")
    }
    pub fn text(status: u16, body: &str) -> Reply {
        Reply::with(status, &[("content-type", "text/plain")], body.to_string())
    }
    pub fn json(status: u16, value: &serde_json::Value) -> Reply {
        Reply::with(
            status,
            &[("content-type", "application/json")],
            value.to_string(),
        )
    }
    /// A response with these headers and body.
    pub fn with(status: u16, headers: &[(&str, &str)], body: impl Into<Bytes>) -> Reply {
        Reply::Respond(response(status, headers, full(body)))
    }
}

/// Build a response from parts.
pub fn response(status: u16, headers: &[(&str, &str)], body: TestBody) -> Response<TestBody> {
    let mut response = Response::new(body);
    *response.status_mut() = StatusCode::from_u16(status).expect("status");
    for (name, value) in headers {
        response.headers_mut().append(
            HeaderName::from_bytes(name.as_bytes()).expect("header name"),
            HeaderValue::from_str(value).expect("header value"),
        );
    }
    response
}

type Handler = Arc<dyn Fn(&RecordedRequest) -> Reply + Send + Sync>;

struct MockState {
    handler: Handler,
    log: Mutex<Vec<RecordedRequest>>,
    tx: mpsc::UnboundedSender<RecordedRequest>,
    connections: AtomicUsize,
}

/// A scripted upstream on `127.0.0.1:0`; stops accepting when dropped.
pub struct MockUpstream {
    pub addr: SocketAddr,
    scheme: &'static str,
    state: Arc<MockState>,
    rx: tokio::sync::Mutex<mpsc::UnboundedReceiver<RecordedRequest>>,
    _stop: watch::Sender<bool>,
}

pub type Acceptor = Arc<
    dyn Fn(TcpStream) -> Pin<Box<dyn Future<Output = Option<Box<dyn Io>>> + Send>> + Send + Sync,
>;

/// Any stream the mock can serve HTTP on.
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send + 'static {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send + 'static> Io for T {}

impl MockUpstream {
    /// Answer every request with `handler`.
    pub async fn start(
        handler: impl Fn(&RecordedRequest) -> Reply + Send + Sync + 'static,
    ) -> Self {
        Self::start_with(Arc::new(handler), None).await
    }

    /// `200 ok` (text) to everything.
    pub async fn ok() -> Self {
        Self::start(|_| Reply::text(200, "ok")).await
    }

    /// Answer requests with `replies` in order; once they run out, `200 ok`.
    pub async fn queue(replies: Vec<Reply>) -> Self {
        let queue = Mutex::new(VecDeque::from(replies));
        Self::start(move |_| {
            queue
                .lock()
                .unwrap()
                .pop_front()
                .unwrap_or_else(|| Reply::text(200, "ok"))
        })
        .await
    }

    /// Serve HTTPS with this rustls server config (its ALPN list decides h2 or http/1.1).
    pub async fn start_tls(
        handler: impl Fn(&RecordedRequest) -> Reply + Send + Sync + 'static,
        tls: Arc<rustls::ServerConfig>,
    ) -> Self {
        let acceptor = tokio_rustls::TlsAcceptor::from(tls);
        let accept: Acceptor = Arc::new(move |stream| {
            let acceptor = acceptor.clone();
            Box::pin(async move {
                match acceptor.accept(stream).await {
                    Ok(tls) => Some(Box::new(tls) as Box<dyn Io>),
                    Err(_) => None,
                }
            })
        });
        Self::start_with(Arc::new(handler), Some(accept)).await
    }

    /// Like [`MockUpstream::start_tls`], and records, per TLS connection, the leaf
    /// certificate the client presented (`None`: no client certificate).
    pub async fn start_tls_seeing_clients(
        handler: impl Fn(&RecordedRequest) -> Reply + Send + Sync + 'static,
        tls: Arc<rustls::ServerConfig>,
    ) -> (Self, Arc<Mutex<Vec<Option<Vec<u8>>>>>) {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let record = seen.clone();
        let acceptor = tokio_rustls::TlsAcceptor::from(tls);
        let accept: Acceptor = Arc::new(move |stream| {
            let acceptor = acceptor.clone();
            let record = record.clone();
            Box::pin(async move {
                match acceptor.accept(stream).await {
                    Ok(tls) => {
                        let leaf = tls
                            .get_ref()
                            .1
                            .peer_certificates()
                            .and_then(|c| c.first())
                            .map(|c| c.to_vec());
                        record.lock().unwrap().push(leaf);
                        Some(Box::new(tls) as Box<dyn Io>)
                    }
                    Err(_) => None,
                }
            })
        });
        (
            Self::start_with(Arc::new(handler), Some(accept)).await,
            seen,
        )
    }

    async fn start_with(handler: Handler, accept: Option<Acceptor>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind mock");
        let addr = listener.local_addr().expect("mock addr");
        let (tx, rx) = mpsc::unbounded_channel();
        let state = Arc::new(MockState {
            handler,
            log: Mutex::new(Vec::new()),
            tx,
            connections: AtomicUsize::new(0),
        });
        let (stop, mut stopped) = watch::channel(false);
        let scheme = if accept.is_some() { "https" } else { "http" };
        let serving = state.clone();
        tokio::spawn(async move {
            loop {
                let stream = tokio::select! {
                    accepted = listener.accept() => match accepted {
                        Ok((stream, _)) => stream,
                        Err(_) => continue,
                    },
                    _ = stopped.changed() => return,
                };
                serving.connections.fetch_add(1, Ordering::SeqCst);
                let state = serving.clone();
                let accept = accept.clone();
                tokio::spawn(async move {
                    let io: Box<dyn Io> = match accept {
                        Some(accept) => match accept(stream).await {
                            Some(io) => io,
                            None => return,
                        },
                        None => Box::new(stream),
                    };
                    let service = service_fn(move |req| {
                        let state = state.clone();
                        async move { Ok::<_, Infallible>(state.handle(req).await) }
                    });
                    let builder = auto::Builder::new(TokioExecutor::new());
                    let _ = builder
                        .serve_connection_with_upgrades(TokioIo::new(io), service)
                        .await;
                });
            }
        });
        MockUpstream {
            addr,
            scheme,
            state,
            rx: tokio::sync::Mutex::new(rx),
            _stop: stop,
        }
    }

    /// `http://127.0.0.1:PORT{path}` (or https for a TLS mock).
    pub fn url(&self, path: &str) -> String {
        format!("{}://{}{}", self.scheme, self.addr, path)
    }

    /// `https://localhost:PORT{path}`: the name the test certificate is issued for.
    pub fn localhost_url(&self, path: &str) -> String {
        format!("{}://localhost:{}{}", self.scheme, self.addr.port(), path)
    }

    /// Every request received so far.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.state.log.lock().unwrap().clone()
    }

    pub fn count(&self) -> usize {
        self.state.log.lock().unwrap().len()
    }

    /// TCP connections accepted so far.
    pub fn connections(&self) -> usize {
        self.state.connections.load(Ordering::SeqCst)
    }

    /// The next request not yet taken by this method (waits for it, under the hang guard).
    pub async fn next_request(&self) -> RecordedRequest {
        let mut rx = self.rx.lock().await;
        guard("mock upstream: next request", rx.recv())
            .await
            .expect("mock stopped")
    }

    /// The single request received so far (panics on zero or several).
    pub fn only_request(&self) -> RecordedRequest {
        let requests = self.requests();
        assert_eq!(
            requests.len(),
            1,
            "expected exactly one upstream request, got {requests:#?}"
        );
        requests.into_iter().next().unwrap()
    }

    /// Assert that the upstream saw no request and not even a connection.
    pub fn assert_untouched(&self, context: &str) {
        assert_eq!(
            self.count(),
            0,
            "{context}: the upstream must see nothing, got {:#?}",
            self.requests()
        );
        assert_eq!(
            self.connections(),
            0,
            "{context}: the upstream must not even be connected to"
        );
    }
}

impl MockState {
    async fn handle(&self, mut req: Request<Incoming>) -> Response<TestBody> {
        let on_upgrade = req
            .headers()
            .contains_key(UPGRADE)
            .then(|| hyper::upgrade::on(&mut req));
        let (parts, mut body) = req.into_parts();
        let mut kept = BytesMut::new();
        let mut hasher = Sha256::new();
        let mut body_len = 0u64;
        let mut trailers = None;
        let mut body_error = None;
        while let Some(frame) = body.frame().await {
            match frame {
                Ok(frame) => match frame.into_data() {
                    Ok(data) => {
                        body_len += data.len() as u64;
                        hasher.update(&data);
                        let room = BODY_KEEP.saturating_sub(kept.len());
                        kept.extend_from_slice(&data[..room.min(data.len())]);
                    }
                    Err(frame) => trailers = frame.into_trailers().ok(),
                },
                Err(e) => {
                    body_error = Some(e.to_string());
                    break;
                }
            }
        }
        let recorded = RecordedRequest {
            method: parts.method.clone(),
            uri: parts
                .uri
                .path_and_query()
                .map_or_else(|| parts.uri.to_string(), |pq| pq.as_str().to_string()),
            headers: parts.headers.clone(),
            version: parts.version,
            body: kept.freeze(),
            body_len,
            body_sha256: hasher.finalize().into(),
            body_error,
            trailers,
        };
        let reply = (self.handler)(&recorded);
        self.log.lock().unwrap().push(recorded.clone());
        let _ = self.tx.send(recorded);
        match reply {
            Reply::Respond(response) => response,
            Reply::Never => std::future::pending().await,
            Reply::Wait(rx) => match rx.await {
                Ok(response) => response,
                Err(_) => std::future::pending().await,
            },
            Reply::Upgrade(response) => {
                let on_upgrade = on_upgrade.expect("Reply::Upgrade for a request without Upgrade");
                tokio::spawn(async move {
                    if let Ok(upgraded) = on_upgrade.await {
                        let (mut r, mut w) = tokio::io::split(TokioIo::new(upgraded));
                        let _ = tokio::io::copy(&mut r, &mut w).await;
                        let _ = w.shutdown().await;
                    }
                });
                response
            }
        }
    }
}
