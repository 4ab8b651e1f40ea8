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
//!
//! One file per concern: `bodies.rs`, `mock.rs`, `tls.rs`, `files.rs` (temp dirs, YAML),
//! `client.rs` (clients and answers), `proxy.rs` (in-process), `raw.rs` (raw TCP),
//! `binary.rs` (the real binary); every helper is re-exported here under its old name.

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

// Each test file uses some of the parts: the re-exports of the others are unused there.
mod binary;
mod bodies;
mod client;
mod files;
mod mock;
mod proxy;
mod raw;
mod redis;
mod tls;

#[allow(unused_imports)]
pub use binary::*;
#[allow(unused_imports)]
pub use bodies::*;
#[allow(unused_imports)]
pub use client::*;
#[allow(unused_imports)]
pub use files::*;
#[allow(unused_imports)]
pub use mock::*;
#[allow(unused_imports)]
pub use proxy::*;
#[allow(unused_imports)]
pub use raw::*;
#[allow(unused_imports)]
pub use redis::*;
#[allow(unused_imports)]
pub use tls::*;
pub mod browser;
pub mod streaming;
