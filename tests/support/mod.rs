//! Shared harness of the end-to-end tests (`mod support;` in each test file).
//!
//! * [`MockUpstream`]: a hyper server (HTTP/1.1 and h2c, optionally TLS) on `127.0.0.1:0` that
//!   records every request (method, path and query, headers, body, version, trailers) and
//!   answers from a script ([`Reply`]): canned responses, "never answer", an answer the test
//!   releases later, a body streamed from a channel, a large body generated on the fly, trailers,
//!   or a `101` upgrade that echoes bytes.
//! * [`Proxy`]: Outpost in-process (`App::start`) from inline YAML on `127.0.0.1:0`.
//! * [`Binary`]: the real `outpost` binary with a config in a temp dir, its stderr and stdout
//!   captured (log capture), readiness polled on `/readyz`.
//! * [`RawConn`]: a raw TCP client for requests a well-behaved client library cannot send.
//!
//! Synchronisation is by channels and polling; `tokio::time::timeout` is only a hang guard.

#![allow(dead_code)]

use std::collections::VecDeque;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::process::Stdio;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::header::{HeaderName, HeaderValue, CONTENT_TYPE, UPGRADE};
use http::{HeaderMap, Method, Request, Response, StatusCode, Version};
use http_body::{Body, Frame, SizeHint};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use outpost::app::App;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot, watch};

/// Hang guard for any single wait in a test. Never used to wait for readiness.
pub const GUARD: Duration = Duration::from_secs(20);

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// The body type of the mock's responses and of the test clients' requests.
pub type TestBody = UnsyncBoxBody<Bytes, BoxError>;

/// Await `fut`, failing the test (instead of hanging) after [`GUARD`].
pub async fn guard<F: Future>(what: &str, fut: F) -> F::Output {
    match tokio::time::timeout(GUARD, fut).await {
        Ok(out) => out,
        Err(_) => panic!("hang guard: `{what}` did not finish within {GUARD:?}"),
    }
}

// ---------------------------------------------------------------------------------------------
// Bodies
// ---------------------------------------------------------------------------------------------

pub fn full(bytes: impl Into<Bytes>) -> TestBody {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed_unsync()
}

pub fn empty() -> TestBody {
    Empty::new().map_err(|never| match never {}).boxed_unsync()
}

/// A body fed by the test through a [`BodySender`], frame by frame.
pub struct ChannelBody {
    rx: mpsc::Receiver<Frame<Bytes>>,
}

impl Body for ChannelBody {
    type Data = Bytes;
    type Error = BoxError;
    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.rx.poll_recv(cx).map(|frame| frame.map(Ok))
    }
}

/// The sending half of a [`ChannelBody`]. Dropping it ends the body.
pub struct BodySender {
    tx: mpsc::Sender<Frame<Bytes>>,
}

impl BodySender {
    pub async fn data(&self, bytes: impl Into<Bytes>) {
        self.tx
            .send(Frame::data(bytes.into()))
            .await
            .expect("body receiver dropped");
    }
    pub async fn trailers(self, trailers: HeaderMap) {
        self.tx
            .send(Frame::trailers(trailers))
            .await
            .expect("body receiver dropped");
    }
}

/// A streaming body whose frames the test sends one by one.
pub fn channel_body() -> (BodySender, TestBody) {
    let (tx, rx) = mpsc::channel(1);
    (BodySender { tx }, ChannelBody { rx }.boxed_unsync())
}

/// A body of one data frame followed by trailers (gRPC-style responses).
pub fn body_with_trailers(data: impl Into<Bytes>, trailers: HeaderMap) -> TestBody {
    let frames: Vec<Result<Frame<Bytes>, BoxError>> =
        vec![Ok(Frame::data(data.into())), Ok(Frame::trailers(trailers))];
    http_body_util::StreamBody::new(futures_util::stream::iter(frames)).boxed_unsync()
}

/// A deterministic body of `total` bytes generated chunk by chunk, never held in memory.
/// Each 64 KiB chunk starts with its index (so a dropped or reordered chunk changes the hash).
pub struct GeneratedBody {
    remaining: u64,
    index: u64,
    exact: bool,
    produced: Option<Arc<std::sync::atomic::AtomicU64>>,
}

pub const GENERATED_CHUNK: usize = 64 * 1024;

impl GeneratedBody {
    /// `exact`: advertise the length (Content-Length) or not (chunked transfer).
    pub fn new(total: u64, exact: bool) -> Self {
        GeneratedBody {
            remaining: total,
            index: 0,
            exact,
            produced: None,
        }
    }

    /// Count the bytes produced so far in `produced` (to show the receiver is not waiting for
    /// the whole body).
    pub fn counting(mut self, produced: Arc<std::sync::atomic::AtomicU64>) -> Self {
        self.produced = Some(produced);
        self
    }

    fn chunk(index: u64, len: usize) -> Bytes {
        static PATTERN: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
        let pattern = PATTERN.get_or_init(|| {
            (0..GENERATED_CHUNK)
                .map(|i| (i as u8).wrapping_mul(31).wrapping_add(7))
                .collect()
        });
        let mut chunk = BytesMut::from(&pattern[..len]);
        let prefix = index.to_be_bytes();
        let n = prefix.len().min(len);
        chunk[..n].copy_from_slice(&prefix[..n]);
        chunk.freeze()
    }

    /// SHA-256 of the body `GeneratedBody::new(total, _)` produces.
    pub fn sha256(total: u64) -> [u8; 32] {
        let mut hasher = Sha256::new();
        let mut body = GeneratedBody::new(total, true);
        while let Some(chunk) = body.next_chunk() {
            hasher.update(&chunk);
        }
        hasher.finalize().into()
    }

    fn next_chunk(&mut self) -> Option<Bytes> {
        if self.remaining == 0 {
            return None;
        }
        let len = (GENERATED_CHUNK as u64).min(self.remaining) as usize;
        let chunk = Self::chunk(self.index, len);
        self.index += 1;
        self.remaining -= len as u64;
        if let Some(produced) = &self.produced {
            produced.fetch_add(len as u64, Ordering::SeqCst);
        }
        Some(chunk)
    }
}

impl Body for GeneratedBody {
    type Data = Bytes;
    type Error = BoxError;
    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        Poll::Ready(self.next_chunk().map(|c| Ok(Frame::data(c))))
    }
    fn is_end_stream(&self) -> bool {
        self.remaining == 0
    }
    fn size_hint(&self) -> SizeHint {
        if self.exact {
            SizeHint::with_exact(self.remaining)
        } else {
            SizeHint::default()
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The mock upstream
// ---------------------------------------------------------------------------------------------

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

// ---------------------------------------------------------------------------------------------
// TLS for HTTPS mocks
// ---------------------------------------------------------------------------------------------

/// A CA certificate (PEM, for `tls.ca_file`) and a server config for `localhost` and
/// `127.0.0.1` signed by it, offering these ALPN protocols.
pub fn tls_server(alpn: &[&[u8]]) -> (String, Arc<rustls::ServerConfig>) {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
    let ca_key = KeyPair::generate().expect("ca key");
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("ca params");
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "outpost test CA");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).expect("ca cert");

    let leaf_key = KeyPair::generate().expect("leaf key");
    let leaf_params =
        CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])
            .expect("leaf params");
    let leaf = leaf_params
        .signed_by(&leaf_key, &ca, &ca_key)
        .expect("leaf cert");

    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("tls versions")
        .with_no_client_auth()
        .with_single_cert(
            vec![leaf.der().clone()],
            rustls::pki_types::PrivateKeyDer::Pkcs8(leaf_key.serialize_der().into()),
        )
        .expect("server cert");
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    (ca.pem(), Arc::new(config))
}

// ---------------------------------------------------------------------------------------------
// Temp dirs and YAML
// ---------------------------------------------------------------------------------------------

/// A unique directory under the system temp dir, removed on drop.
pub struct TempDir {
    pub path: PathBuf,
}

impl TempDir {
    pub fn new(tag: &str) -> Self {
        let path = std::env::temp_dir().join(format!(
            "outpost-test-{tag}-{}-{}",
            std::process::id(),
            uuid::Uuid::new_v4().simple()
        ));
        std::fs::create_dir_all(&path).expect("create temp dir");
        TempDir { path }
    }

    /// Write `contents` to `name` inside the dir; returns the full path.
    pub fn write(&self, name: &str, contents: impl AsRef<[u8]>) -> PathBuf {
        let path = self.path.join(name);
        std::fs::write(&path, contents).expect("write temp file");
        path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// Remove the common indentation of `text`, so YAML can be written indented in Rust code.
pub fn dedent(text: &str) -> String {
    let indent = text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| l.len() - l.trim_start().len())
        .min()
        .unwrap_or(0);
    let mut out = String::new();
    for line in text.lines() {
        out.push_str(line.get(indent..).unwrap_or("").trim_end());
        out.push('\n');
    }
    out.trim_start_matches('\n').to_string()
}

// ---------------------------------------------------------------------------------------------
// Clients and answers
// ---------------------------------------------------------------------------------------------

/// A fully read response.
#[derive(Debug)]
pub struct Answer {
    pub status: StatusCode,
    pub version: Version,
    pub headers: HeaderMap,
    pub body: Bytes,
    pub trailers: Option<HeaderMap>,
}

impl Answer {
    pub async fn read(response: Response<Incoming>) -> Answer {
        let (parts, body) = response.into_parts();
        let collected = guard("read response body", body.collect())
            .await
            .expect("response body");
        let trailers = collected.trailers().cloned();
        Answer {
            status: parts.status,
            version: parts.version,
            headers: parts.headers,
            body: collected.to_bytes(),
            trailers,
        }
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .get(name)
            .map(|v| v.to_str().expect("ascii header"))
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {}", self.text()))
    }

    /// Assert this is an Outpost error of `kind` with `status`, with every contract field;
    /// returns the `error` object.
    pub fn assert_error(&self, status: u16, kind: &str) -> serde_json::Value {
        assert_eq!(
            self.status.as_u16(),
            status,
            "status of {self:#?} / {}",
            self.text()
        );
        assert_error_shape(
            status,
            kind,
            self.header("content-type"),
            self.header("x-outpost-error"),
            self.header("x-request-id"),
            &self.body,
        )
    }
}

/// Check Outpost's normalized error JSON (DESIGN.md "Errors"); returns the `error` object.
pub fn assert_error_shape(
    status: u16,
    kind: &str,
    content_type: Option<&str>,
    x_outpost_error: Option<&str>,
    x_request_id: Option<&str>,
    body: &[u8],
) -> serde_json::Value {
    let text = String::from_utf8_lossy(body);
    assert_eq!(
        content_type,
        Some("application/json"),
        "content type: {text}"
    );
    assert_eq!(x_outpost_error, Some(kind), "x-outpost-error: {text}");
    let json: serde_json::Value = serde_json::from_slice(body)
        .unwrap_or_else(|e| panic!("error body is not JSON ({e}): {text}"));
    let error = json["error"].clone();
    assert_eq!(error["type"], kind, "{text}");
    assert_eq!(error["status"], status, "{text}");
    assert!(
        error["message"].as_str().is_some_and(|m| !m.is_empty()),
        "message: {text}"
    );
    assert!(error["retryable"].is_boolean(), "retryable: {text}");
    assert!(
        error["request_id"]
            .as_str()
            .is_some_and(|id| !id.is_empty()),
        "request_id: {text}"
    );
    if let Some(id) = x_request_id {
        assert_eq!(
            error["request_id"], id,
            "x-request-id header and body disagree: {text}"
        );
    }
    error
}

pub type HttpClient = Client<HttpConnector, TestBody>;

/// An HTTP/1.1 client (pooled).
pub fn http1_client() -> HttpClient {
    Client::builder(TokioExecutor::new()).build_http()
}

/// An HTTP/2 client with prior knowledge (h2c), as gRPC clients do.
pub fn h2c_client() -> HttpClient {
    Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http()
}

/// Send a request and read the whole answer (under the hang guard).
pub async fn send(client: &HttpClient, req: Request<TestBody>) -> Answer {
    let uri = req.uri().clone();
    let response = guard("send request", client.request(req))
        .await
        .unwrap_or_else(|e| panic!("request to {uri} failed: {e:?}"));
    Answer::read(response).await
}

/// `GET url` with a fresh HTTP/1.1 client.
pub async fn get(url: &str) -> Answer {
    let req = Request::get(url).body(empty()).unwrap();
    send(&http1_client(), req).await
}

// ---------------------------------------------------------------------------------------------
// The proxy in-process
// ---------------------------------------------------------------------------------------------

/// Outpost started in this process from inline YAML, on `127.0.0.1:0`.
pub struct Proxy {
    app: Option<App>,
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    pub client: HttpClient,
    pub dir: TempDir,
}

impl Proxy {
    /// Start from YAML (indentation removed). Unless the text sets `version:`, the harness
    /// prepends `version: 1`, `listen: 127.0.0.1:0` and `admin_listen: 127.0.0.1:0`.
    pub async fn start(yaml: &str) -> Proxy {
        let dir = TempDir::new("proxy");
        let mut text = dedent(yaml);
        if !text.lines().any(|l| l.starts_with("version:")) {
            text = format!("version: 1\nlisten: 127.0.0.1:0\nadmin_listen: 127.0.0.1:0\n{text}");
        }
        let path = dir.path.join("proxy.yaml");
        let config = outpost::config::load_str(&text, &path)
            .unwrap_or_else(|e| panic!("test config is invalid:\n{e}\n---\n{text}"));
        let app = App::start(config).await.expect("App::start");
        Proxy {
            addr: app.app_addr,
            admin: app.admin_addr,
            app: Some(app),
            client: http1_client(),
            dir,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{}", self.admin, path)
    }

    pub fn app(&self) -> &App {
        self.app.as_ref().expect("running")
    }

    /// `GET path` through the proxy.
    pub async fn get(&self, path: &str) -> Answer {
        let req = Request::get(self.url(path)).body(empty()).unwrap();
        send(&self.client, req).await
    }

    /// A request through the proxy: method, path, headers, body.
    pub async fn request(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: impl Into<Bytes>,
    ) -> Answer {
        send(&self.client, self.build(method, path, headers, full(body))).await
    }

    /// Build (but do not send) a request to the proxy.
    pub fn build(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: TestBody,
    ) -> Request<TestBody> {
        let mut req = Request::builder()
            .method(Method::from_bytes(method.as_bytes()).unwrap())
            .uri(self.url(path));
        for (name, value) in headers {
            req = req.header(*name, *value);
        }
        req.body(body).unwrap()
    }

    /// The metrics exposition as `/metrics` renders it.
    pub fn metrics(&self) -> String {
        self.app().metrics.render()
    }

    pub async fn shutdown(mut self) {
        if let Some(app) = self.app.take() {
            guard("proxy shutdown", app.shutdown()).await;
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Raw TCP
// ---------------------------------------------------------------------------------------------

/// A response parsed from raw bytes.
#[derive(Debug)]
pub struct RawResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl RawResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// Assert an Outpost error of `kind` with `status`; returns the `error` object.
    pub fn assert_error(&self, status: u16, kind: &str) -> serde_json::Value {
        assert_eq!(self.status, status, "{self:#?} / {}", self.text());
        assert_error_shape(
            status,
            kind,
            self.header("content-type"),
            self.header("x-outpost-error"),
            self.header("x-request-id"),
            &self.body,
        )
    }
}

/// A raw TCP connection for requests an HTTP library would not send.
pub struct RawConn {
    pub stream: TcpStream,
    buf: BytesMut,
}

impl RawConn {
    /// Wrap a connection opened elsewhere.
    pub fn from_stream(stream: TcpStream) -> RawConn {
        RawConn {
            stream,
            buf: BytesMut::new(),
        }
    }

    pub async fn connect(addr: SocketAddr) -> RawConn {
        let stream = guard("raw connect", TcpStream::connect(addr))
            .await
            .expect("raw connect");
        RawConn {
            stream,
            buf: BytesMut::new(),
        }
    }

    pub async fn write(&mut self, bytes: &[u8]) {
        guard("raw write", self.stream.write_all(bytes))
            .await
            .expect("raw write");
    }

    /// Read more bytes; `false` at end of stream (a reset counts as the end, too).
    async fn fill(&mut self) -> bool {
        self.buf.reserve(16 * 1024);
        match guard("raw read", self.stream.read_buf(&mut self.buf)).await {
            Ok(0) | Err(_) => false,
            Ok(_) => true,
        }
    }

    /// Read one response (status line, headers, body by Content-Length, chunked or close).
    pub async fn read_response(&mut self) -> RawResponse {
        let (status, headers, head_len) = loop {
            let mut slots = [httparse::EMPTY_HEADER; 64];
            let mut parsed = httparse::Response::new(&mut slots);
            match parsed.parse(&self.buf).expect("parse response head") {
                httparse::Status::Complete(len) => {
                    let headers = parsed
                        .headers
                        .iter()
                        .map(|h| {
                            (
                                h.name.to_string(),
                                String::from_utf8_lossy(h.value).into_owned(),
                            )
                        })
                        .collect::<Vec<_>>();
                    break (parsed.code.unwrap(), headers, len);
                }
                httparse::Status::Partial => {
                    if !self.fill().await {
                        panic!(
                            "connection closed before a full response head: {:?}",
                            String::from_utf8_lossy(&self.buf)
                        );
                    }
                }
            }
        };
        let _ = self.buf.split_to(head_len);
        let mut response = RawResponse {
            status,
            headers,
            body: Vec::new(),
        };
        if status == 101 || status == 304 || status == 204 || (100..200).contains(&status) {
            return response;
        }
        if let Some(len) = response.header("content-length") {
            let len: usize = len.trim().parse().expect("content-length");
            while self.buf.len() < len {
                assert!(self.fill().await, "connection closed inside the body");
            }
            response.body = self.buf.split_to(len).to_vec();
        } else if response
            .header("transfer-encoding")
            .is_some_and(|te| te.eq_ignore_ascii_case("chunked"))
        {
            loop {
                let line_end = loop {
                    if let Some(pos) = self.buf.windows(2).position(|w| w == b"\r\n") {
                        break pos;
                    }
                    assert!(self.fill().await, "connection closed inside a chunk size");
                };
                let size_text = String::from_utf8_lossy(&self.buf[..line_end]).to_string();
                let size = usize::from_str_radix(size_text.split(';').next().unwrap().trim(), 16)
                    .expect("chunk size");
                let _ = self.buf.split_to(line_end + 2);
                while self.buf.len() < size + 2 {
                    assert!(self.fill().await, "connection closed inside a chunk");
                }
                let chunk = self.buf.split_to(size + 2);
                if size == 0 {
                    break;
                }
                response.body.extend_from_slice(&chunk[..size]);
            }
        } else {
            while self.fill().await {}
            response.body = self.buf.split().to_vec();
        }
        response
    }

    /// Read whatever bytes are available (at least one), for upgraded connections.
    pub async fn read_some(&mut self) -> Bytes {
        if self.buf.is_empty() {
            assert!(self.fill().await, "connection closed");
        }
        self.buf.split().freeze()
    }

    /// Read exactly `n` bytes.
    pub async fn read_exact(&mut self, n: usize) -> Bytes {
        while self.buf.len() < n {
            assert!(
                self.fill().await,
                "connection closed after {} of {n} bytes",
                self.buf.len()
            );
        }
        self.buf.split_to(n).freeze()
    }

    /// True when the peer closes the connection (EOF or reset) with no more bytes.
    pub async fn is_closed(&mut self) -> bool {
        !self.fill().await && self.buf.is_empty()
    }
}

/// Send raw request bytes on a fresh connection and read one response.
pub async fn raw_request(addr: SocketAddr, bytes: &[u8]) -> RawResponse {
    let mut conn = RawConn::connect(addr).await;
    conn.write(bytes).await;
    conn.read_response().await
}

// ---------------------------------------------------------------------------------------------
// The real binary
// ---------------------------------------------------------------------------------------------

pub const BIN: &str = env!("CARGO_BIN_EXE_outpost");

/// A free port on 127.0.0.1: bind port 0, read the port, drop the listener. Another process
/// could take the port before the binary binds it; the window is a few milliseconds, and the
/// binary then fails to start with a clear "cannot listen" error rather than a wrong result.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind free port")
        .local_addr()
        .unwrap()
        .port()
}

/// Captured output of a process, filled by background readers.
#[derive(Clone, Default)]
pub struct Captured(Arc<Mutex<Vec<u8>>>);

impl Captured {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
    pub fn bytes(&self) -> Vec<u8> {
        self.0.lock().unwrap().clone()
    }
    fn spawn_reader(&self, mut reader: impl AsyncRead + Unpin + Send + 'static) {
        let sink = self.0.clone();
        tokio::spawn(async move {
            let mut buf = [0u8; 8192];
            while let Ok(n) = reader.read(&mut buf).await {
                if n == 0 {
                    break;
                }
                sink.lock().unwrap().extend_from_slice(&buf[..n]);
            }
        });
    }
}

/// The ports a binary's config listens on.
#[derive(Clone, Copy, Debug)]
pub struct Ports {
    pub app: u16,
    pub admin: u16,
}

/// `version: 1`, `listen` and `admin_listen` on free ports, then `yaml` (dedented).
pub fn binary_config(yaml: &str) -> (String, Ports) {
    let ports = Ports {
        app: free_port(),
        admin: free_port(),
    };
    let text = format!(
        "version: 1\nlisten: 127.0.0.1:{}\nadmin_listen: 127.0.0.1:{}\n{}",
        ports.app,
        ports.admin,
        dedent(yaml)
    );
    (text, ports)
}

/// Poll until `check` returns true (every 20 ms, under the hang guard).
pub async fn poll_until<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    guard(what, async {
        while !check().await {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
}

/// The status of `GET url`, or `None` when the request fails (connection refused, reset).
pub async fn try_status(url: &str) -> Option<u16> {
    let req = Request::get(url).body(empty()).unwrap();
    match tokio::time::timeout(Duration::from_secs(2), http1_client().request(req)).await {
        Ok(Ok(response)) => Some(response.status().as_u16()),
        _ => None,
    }
}

/// The `outpost` binary serving a config from a temp dir, with its stdout and stderr captured.
pub struct Binary {
    pub child: tokio::process::Child,
    pub app_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    pub stdout: Captured,
    pub stderr: Captured,
    pub dir: TempDir,
    pub config_path: PathBuf,
}

impl Binary {
    /// Write `version: 1`, `listen` and `admin_listen` on free ports and then `yaml` (dedented)
    /// to `proxy.yaml` in a fresh temp dir, and run `outpost run -c proxy.yaml` with `env`.
    /// Returns once `/readyz` answers 200.
    pub async fn start(yaml: &str, env: &[(&str, &str)]) -> Binary {
        Self::start_in(TempDir::new("bin"), yaml, env).await
    }

    /// As [`Binary::start`], in a dir the caller prepared (e.g. with secret files).
    /// The free ports are found by binding and releasing them, so another process can take
    /// one before Outpost binds it: then Outpost exits with "address in use" and this retries
    /// on new ports.
    pub async fn start_in(dir: TempDir, yaml: &str, env: &[(&str, &str)]) -> Binary {
        let mut dir = Some(dir);
        for attempt in 1.. {
            let (text, ports) = binary_config(yaml);
            let here = dir.take().expect("dir");
            let config_path = here.write("proxy.yaml", text);
            let args = [
                "run".to_string(),
                "-c".to_string(),
                config_path.display().to_string(),
            ];
            let mut binary = Self::spawn(here, config_path, &args, env, ports);
            match binary.wait_ready_or_exit().await {
                Ok(()) => return binary,
                Err(stderr) if attempt < 5 && stderr.contains("in use") => {
                    dir = Some(std::mem::replace(
                        &mut binary.dir,
                        TempDir::new("bin-retry"),
                    ));
                }
                Err(stderr) => panic!("outpost exited early; stderr:\n{stderr}"),
            }
        }
        unreachable!()
    }

    /// Spawn `outpost ARGS` (the config already written) and wait until it is ready.
    /// `OUTPOST_CONFIG` is removed from the environment unless `env` sets it.
    pub async fn launch(
        dir: TempDir,
        config_path: PathBuf,
        args: &[String],
        env: &[(&str, &str)],
        ports: Ports,
    ) -> Binary {
        let mut binary = Self::spawn(dir, config_path, args, env, ports);
        binary.wait_ready().await;
        binary
    }

    fn spawn(
        dir: TempDir,
        config_path: PathBuf,
        args: &[String],
        env: &[(&str, &str)],
        ports: Ports,
    ) -> Binary {
        let mut command = tokio::process::Command::new(BIN);
        command
            .args(args)
            .current_dir(&dir.path)
            .env_remove("OUTPOST_CONFIG")
            .env("OUTPOST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        for (name, value) in env {
            command.env(name, value);
        }
        let mut child = command.spawn().expect("spawn outpost");
        let stdout = Captured::default();
        let stderr = Captured::default();
        stdout.spawn_reader(child.stdout.take().unwrap());
        stderr.spawn_reader(child.stderr.take().unwrap());
        Binary {
            child,
            app_addr: SocketAddr::from(([127, 0, 0, 1], ports.app)),
            admin_addr: SocketAddr::from(([127, 0, 0, 1], ports.admin)),
            stdout,
            stderr,
            dir,
            config_path,
        }
    }

    /// Poll `/readyz` every 20 ms until it answers 200 (hang guard: [`GUARD`]).
    pub async fn wait_ready(&mut self) {
        if let Err(stderr) = self.wait_ready_or_exit().await {
            panic!("outpost exited early; stderr:\n{stderr}");
        }
    }

    /// As [`Binary::wait_ready`]; `Err(stderr)` when the process exits first.
    async fn wait_ready_or_exit(&mut self) -> Result<(), String> {
        let client = http1_client();
        let url = format!("http://{}/readyz", self.admin_addr);
        let poll = async {
            loop {
                if let Ok(Some(status)) = self.child.try_wait() {
                    // Let the reader drain what the process wrote before it exited.
                    let stderr = guard("stderr of an exited outpost", async {
                        loop {
                            let text = self.stderr.text();
                            if !text.is_empty() {
                                return text;
                            }
                            tokio::time::sleep(Duration::from_millis(10)).await;
                        }
                    })
                    .await;
                    return Err(format!("exit status {status}\n{stderr}"));
                }
                let req = Request::get(&url).body(empty()).unwrap();
                if let Ok(Ok(response)) =
                    tokio::time::timeout(Duration::from_secs(1), client.request(req)).await
                {
                    if response.status() == StatusCode::OK {
                        return Ok(());
                    }
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        };
        match tokio::time::timeout(GUARD, poll).await {
            Ok(result) => result,
            Err(_) => panic!(
                "outpost did not become ready within {GUARD:?}; stderr:\n{}",
                self.stderr.text()
            ),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.app_addr, path)
    }

    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{}", self.admin_addr, path)
    }

    pub fn pid(&self) -> u32 {
        self.child.id().expect("outpost still running")
    }

    /// Send a signal (`TERM`, `INT`, `HUP`) with `kill`.
    pub fn signal(&self, signal: &str) {
        send_signal(self.pid(), signal);
    }

    /// Wait for the process to exit (under the hang guard).
    pub async fn wait(&mut self) -> std::process::ExitStatus {
        guard("outpost exit", self.child.wait())
            .await
            .expect("wait for outpost")
    }

    /// SIGTERM, assert a clean exit, and return everything it wrote to stderr (polled until
    /// the final "stopped" line arrived, so no log line is missed).
    pub async fn stop_and_collect_stderr(&mut self) -> Vec<u8> {
        self.signal("TERM");
        assert!(self.wait().await.success(), "outpost did not exit cleanly");
        guard("stderr drained", async {
            loop {
                let text = self.stderr.bytes();
                if String::from_utf8_lossy(&text).contains("stopped") {
                    return text;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await
    }

    /// `outpost check` on this binary's config file.
    pub async fn check(&self) -> Run {
        outpost(
            &["check", "-c", &self.config_path.display().to_string()],
            &[],
            None,
        )
        .await
    }
}

pub fn send_signal(pid: u32, signal: &str) {
    let status = std::process::Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(pid.to_string())
        .status()
        .expect("run kill");
    assert!(status.success(), "kill -{signal} {pid} failed");
}

/// The result of running `outpost` to completion.
#[derive(Debug)]
pub struct Run {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

/// Run `outpost ARGS` to completion with `env` (and `OUTPOST_CONFIG` removed unless given).
pub async fn outpost(args: &[&str], env: &[(&str, &str)], cwd: Option<&Path>) -> Run {
    let mut command = tokio::process::Command::new(BIN);
    command
        .args(args)
        .env_remove("OUTPOST_CONFIG")
        .stdin(Stdio::null())
        .kill_on_drop(true);
    if let Some(cwd) = cwd {
        command.current_dir(cwd);
    }
    for (name, value) in env {
        command.env(name, value);
    }
    let output = guard("outpost run to completion", command.output())
        .await
        .expect("run outpost");
    Run {
        code: output.status.code(),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

/// Header value helper for tests that build `HeaderMap`s.
pub fn header_map(pairs: &[(&str, &str)]) -> HeaderMap {
    let mut map = HeaderMap::new();
    for (name, value) in pairs {
        map.append(
            HeaderName::from_bytes(name.as_bytes()).unwrap(),
            HeaderValue::from_str(value).unwrap(),
        );
    }
    map
}

/// `content-type` of a recorded request or answer, for brevity in assertions.
pub fn content_type(headers: &HeaderMap) -> Option<&str> {
    headers.get(CONTENT_TYPE).and_then(|v| v.to_str().ok())
}
