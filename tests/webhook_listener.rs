//! The webhook listener is public (`0.0.0.0:8081` in a pod): it gets the app listener's head
//! checks (smuggling guards, header size and time limits, Host rules) with Outpost's JSON
//! errors, a body-read timeout, a keep-alive idle timeout and its own connection cap, so
//! stalled or malicious clients cannot hold it and real deliveries keep flowing.

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use hmac::{Hmac, Mac};
use support::{guard, MockUpstream, Proxy, RawConn, RawResponse, Reply};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::time::Instant;

const SECRET: &str = "gh-hook-secret";

/// A proxy with one `github` webhook at `/gh` forwarding to `app`, plus `extra` YAML.
async fn start(app: &MockUpstream, extra: &str) -> (Proxy, SocketAddr) {
    let proxy = Proxy::start(&format!(
        "webhook_listen: 127.0.0.1:0\n{extra}\nwebhooks:\n  gh:\n    path: /gh\n    scheme: github\n    secrets: [\"{SECRET}\"]\n    forward_to: {}\n",
        app.url("/hooks/gh")
    ))
    .await;
    let addr = proxy.app().webhook_addr().expect("webhook listener bound");
    (proxy, addr)
}

fn signature(body: &[u8]) -> String {
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(SECRET.as_bytes()).unwrap();
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// A correctly signed delivery, as raw bytes, with `extra` header lines before the blank line.
fn delivery(body: &str, extra: &str) -> Vec<u8> {
    format!(
        "POST /gh HTTP/1.1\r\nHost: hooks.example.com\r\nContent-Type: application/json\r\nX-Hub-Signature-256: {}\r\nContent-Length: {}\r\n{extra}\r\n{body}",
        signature(body.as_bytes()),
        body.len()
    )
    .into_bytes()
}

async fn raw(addr: SocketAddr, bytes: &[u8]) -> RawResponse {
    let mut conn = RawConn::connect(addr).await;
    conn.write(bytes).await;
    conn.read_response().await
}

#[tokio::test]
async fn bad_heads_on_the_webhook_listener_get_json_errors_and_are_never_forwarded() {
    let app = MockUpstream::start(|_| Reply::text(200, "thanks")).await;
    // `limits.max_header_bytes` applies to the webhook listener too (its default there).
    let (_proxy, addr) = start(&app, "limits: { max_header_bytes: 16KiB }").await;
    let body = r#"{"action":"opened"}"#;

    // A valid delivery goes through, so the refusals below are about the head alone.
    let ok = raw(addr, &delivery(body, "")).await;
    assert_eq!(ok.status, 200, "{}", ok.text());
    assert_eq!(app.count(), 1);

    let sig = signature(body.as_bytes());
    let big = format!("X-Big: {}\r\n", "a".repeat(100 * 1024));
    let cases: Vec<(String, Vec<u8>, u16, &str)> = vec![
        (
            "Transfer-Encoding with Content-Length".into(),
            delivery(body, "Transfer-Encoding: chunked\r\n"),
            400,
            "bad_request",
        ),
        (
            "two different Content-Lengths".into(),
            delivery(body, "Content-Length: 3\r\n"),
            400,
            "bad_request",
        ),
        (
            "obs-fold".into(),
            delivery(body, "X-Folded: a\r\n b\r\n"),
            400,
            "bad_request",
        ),
        (
            "space before a colon".into(),
            delivery(body, "X-Space : a\r\n"),
            400,
            "bad_request",
        ),
        (
            "NUL in a value".into(),
            delivery(body, "X-Nul: a\0b\r\n"),
            400,
            "bad_request",
        ),
        (
            "no Host".into(),
            format!(
                "POST /gh HTTP/1.1\r\nX-Hub-Signature-256: {sig}\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            )
            .into_bytes(),
            400,
            "bad_request",
        ),
        (
            "two Hosts".into(),
            delivery(body, "Host: other.example.com\r\n"),
            400,
            "bad_request",
        ),
        (
            "a 100 KiB header section".into(),
            delivery(body, &big),
            431,
            "request_header_fields_too_large",
        ),
    ];
    for (what, bytes, status, kind) in cases {
        let answer = raw(addr, &bytes).await;
        assert_eq!(answer.status, status, "{what}: {}", answer.text());
        answer.assert_error(status, kind);
        assert_eq!(
            answer.header("connection"),
            Some("close"),
            "{what}: the connection is closed"
        );
    }
    assert_eq!(
        app.count(),
        1,
        "no refused delivery reached the application"
    );
}

#[tokio::test]
async fn a_slow_head_gets_408_and_a_silent_connection_is_closed() {
    let app = MockUpstream::start(|_| Reply::text(200, "thanks")).await;
    let (_proxy, addr) = start(&app, "webhook_limits: { header_read_timeout: 1s }").await;

    let mut slow = RawConn::connect(addr).await;
    slow.write(b"POST /gh HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        .await;
    slow.read_response()
        .await
        .assert_error(408, "request_timeout");
    assert!(slow.is_closed().await);

    // Connected, never a byte: closed without an answer (an idle pre-connection).
    let mut silent = RawConn::connect(addr).await;
    assert!(silent.is_closed().await, "a silent connection is closed");
    assert_eq!(app.count(), 0);
}

#[tokio::test]
async fn a_stalled_or_trickling_body_gets_408_and_an_idle_connection_is_closed() {
    let app = MockUpstream::start(|_| Reply::text(200, "thanks")).await;
    let (_proxy, addr) = start(
        &app,
        "webhook_limits: { body_read_timeout: 1500ms, idle_timeout: 1s }",
    )
    .await;
    let body = r#"{"action":"opened","padding":"0123456789"}"#;
    let bytes = delivery(body, "");
    let head_len = bytes.len() - body.len();

    // Stalled mid-body.
    let mut stalled = RawConn::connect(addr).await;
    stalled.write(&bytes[..head_len + 5]).await;
    stalled
        .read_response()
        .await
        .assert_error(408, "request_timeout");
    assert!(stalled.is_closed().await);

    // Trickling one byte at a time, slower than the whole-body timeout allows.
    let mut trickle = RawConn::connect(addr).await;
    trickle.write(&bytes[..head_len]).await;
    let started = Instant::now();
    let feeder = async {
        for b in &bytes[head_len..] {
            tokio::time::sleep(Duration::from_millis(200)).await;
            if trickle.stream.write_all(&[*b]).await.is_err() {
                break;
            }
        }
    };
    let _ = guard("trickle", feeder).await;
    let answer = trickle.read_response().await;
    answer.assert_error(408, "request_timeout");
    assert!(started.elapsed() >= Duration::from_millis(1400));
    assert_eq!(app.count(), 0, "no partial delivery was forwarded");

    // Kept alive after a delivery, then idle: closed by the idle timeout.
    let mut idle = RawConn::connect(addr).await;
    idle.write(&bytes).await;
    assert_eq!(idle.read_response().await.status, 200);
    assert!(idle.is_closed().await, "idle keep-alive connection closed");
    assert_eq!(app.count(), 1);
}

#[tokio::test]
async fn two_thousand_stalled_bodies_do_not_delay_a_real_delivery() {
    let app = MockUpstream::start(|_| Reply::text(200, "thanks")).await;
    // Default limits: body_read_timeout 10s.
    let (proxy, addr) = start(&app, "").await;
    let body = r#"{"action":"opened","n":1}"#;
    let bytes = delivery(body, "");
    let head_len = bytes.len() - body.len();

    let mut stalled = Vec::with_capacity(2000);
    for _ in 0..2000 {
        let mut conn = guard("connect", TcpStream::connect(addr))
            .await
            .expect("connect");
        conn.write_all(&bytes[..head_len + 3]).await.expect("write");
        stalled.push(conn);
    }

    // A real delivery is verified and forwarded while all of them are still held.
    let started = Instant::now();
    let answer = guard("real delivery", raw(addr, &bytes)).await;
    eprintln!(
        "delivery answered in {:?} with 2000 stalled bodies",
        started.elapsed()
    );
    assert_eq!(answer.status, 200, "{}", answer.text());
    let forwarded = app.only_request();
    assert_eq!(forwarded.path(), "/hooks/gh");
    assert_eq!(&forwarded.body[..], body.as_bytes());
    let mut probe = [0u8; 1];
    let youngest = stalled.last().expect("stalled connections");
    assert!(
        matches!(youngest.try_read(&mut probe), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock),
        "the stalled connections were still held when the delivery was answered"
    );

    // Each stalled connection then gets its 408 from the body timeout and is closed.
    for conn in stalled {
        let mut conn = RawConn::from_stream(conn);
        let answer = tokio::time::timeout(Duration::from_secs(60), conn.read_response())
            .await
            .expect("a stalled connection was never answered");
        answer.assert_error(408, "request_timeout");
        assert!(conn.is_closed().await);
    }
    assert_eq!(app.count(), 1);
    proxy.shutdown().await;
}

#[tokio::test]
async fn the_webhook_listener_has_its_own_connection_cap() {
    let app = MockUpstream::start(|_| Reply::text(200, "thanks")).await;
    let upstream = MockUpstream::start(|_| Reply::text(200, "up")).await;
    let (proxy, addr) = start(
        &app,
        &format!(
            "webhook_limits: {{ max_connections: 1, header_read_timeout: 8s }}\nupstreams:\n  api:\n    base_url: {}\n",
            upstream.url("")
        ),
    )
    .await;
    let body = r#"{"cap":1}"#;

    // One slow client holds the only webhook connection slot …
    let mut holder = RawConn::connect(addr).await;
    holder
        .write(b"POST /gh HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        .await;
    // … so a second connection waits in the backlog until the holder is timed out;
    let waiting = tokio::spawn(async move { raw(addr, &delivery(body, "")).await.status });
    // … while the app listener, with its own cap, is not affected.
    assert_eq!(proxy.get("/api/x").await.status, 200);
    assert!(!waiting.is_finished(), "not served while the slot is held");
    holder
        .read_response()
        .await
        .assert_error(408, "request_timeout");
    assert_eq!(guard("queued delivery", waiting).await.expect("task"), 200);
    assert_eq!(app.count(), 1);
}

/// HTTP/2 (prior knowledge) on the webhook listener: a delivery is served, and a connection
/// that then keeps no stream open is closed after `webhook_limits.idle_timeout` (hyper's own
/// idle timeout covers only HTTP/1 keep-alive; before, such a connection was held for ever).
#[tokio::test]
async fn an_idle_http2_connection_is_closed_by_the_idle_timeout() {
    use http_body_util::{BodyExt, Full};
    use hyper_util::rt::{TokioExecutor, TokioIo};

    let app = MockUpstream::start(|_| Reply::text(200, "thanks")).await;
    let (_proxy, addr) = start(&app, "webhook_limits: { idle_timeout: 1s }").await;
    let stream = TcpStream::connect(addr).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http2::handshake::<_, _, Full<bytes::Bytes>>(
        TokioExecutor::new(),
        TokioIo::new(stream),
    )
    .await
    .unwrap();
    let closed = tokio::spawn(async move {
        let _ = conn.await;
        Instant::now()
    });
    let body = r#"{"action":"opened"}"#;
    let request = http::Request::post(format!("http://{addr}/gh"))
        .header("content-type", "application/json")
        .header("x-hub-signature-256", signature(body.as_bytes()))
        .body(Full::new(bytes::Bytes::from(body)))
        .unwrap();
    let response = guard("h2 delivery", sender.send_request(request))
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let _ = response.into_body().collect().await;
    let answered = Instant::now();
    assert_eq!(app.count(), 1);
    // Kept open without a stream: the server ends the connection (GOAWAY, then close).
    let closed_at = tokio::time::timeout(Duration::from_secs(20), closed)
        .await
        .expect("the idle HTTP/2 connection was closed")
        .unwrap();
    let idle_for = closed_at.duration_since(answered);
    assert!(
        idle_for >= Duration::from_millis(900),
        "closed after {idle_for:?}, before the 1 s idle timeout"
    );
}
