//! Slow-client limits on the app listener: a thousand idle half-open connections (slowloris)
//! do not stop normal requests, and each of them is answered 408 once its header time is up.

mod support;

use std::time::Duration;

use support::{get, guard, raw_request, Binary, MockUpstream, Proxy, Reply};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[tokio::test]
async fn a_thousand_slowloris_connections_do_not_stop_normal_requests() {
    let mock = MockUpstream::start(|_| Reply::text(200, "ok")).await;
    let bin = Binary::start(
        &format!(
            "limits: {{ header_read_timeout: 2s }}\nupstreams:\n  api:\n    base_url: {}\n",
            mock.url("")
        ),
        &[("OUTPOST_LOG", "warn")],
    )
    .await;

    // Open 1000 connections that each send half a request head and then stall.
    let mut idle = Vec::with_capacity(1000);
    for _ in 0..1000 {
        let mut conn = guard("connect", TcpStream::connect(bin.app_addr))
            .await
            .expect("connect");
        conn.write_all(b"GET /api/slow HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
            .await
            .expect("write");
        idle.push(conn);
    }

    // Normal requests are still served at once.
    for _ in 0..20 {
        let answer = guard("normal request", get(&bin.url("/api/fast"))).await;
        assert_eq!(answer.status, 200);
    }
    assert!(
        mock.requests().iter().all(|r| r.uri == "/fast"),
        "no slow request reached the upstream"
    );

    // Each stalled client gets Outpost's 408 when its header time is up, and is closed.
    let mut answered = 0;
    for mut conn in idle.into_iter().take(50) {
        let mut buf = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(20), conn.read_to_end(&mut buf)).await;
        assert!(read.is_ok(), "stalled connection was never closed");
        let text = String::from_utf8_lossy(&buf);
        assert!(text.starts_with("HTTP/1.1 408"), "{text}");
        assert!(text.contains("x-outpost-error: request_timeout"), "{text}");
        answered += 1;
    }
    assert_eq!(answered, 50);
    assert_eq!(get(&bin.url("/api/after")).await.status, 200);
}

/// RFC 9112 §3.2: an HTTP/1.1 request without `Host`, or any request with two, is 400.
#[tokio::test]
async fn http11_requests_need_exactly_one_host() {
    let mock = MockUpstream::start(|_| Reply::text(200, "ok")).await;
    let proxy = Proxy::start(&format!(
        "upstreams:\n  api:\n    base_url: {}\n",
        mock.url("")
    ))
    .await;
    for (what, head) in [
        ("no Host", &b"GET /api/a HTTP/1.1\r\n\r\n"[..]),
        (
            "two Hosts",
            b"GET /api/a HTTP/1.1\r\nHost: 127.0.0.1\r\nHost: evil.example\r\n\r\n",
        ),
        (
            "two Hosts, same value",
            b"GET /api/a HTTP/1.1\r\nHost: 127.0.0.1\r\nhost: 127.0.0.1\r\n\r\n",
        ),
    ] {
        let answer = raw_request(proxy.addr, head).await;
        let body = answer.assert_error(400, "bad_request");
        assert!(
            body["message"].as_str().is_some_and(|m| m.contains("Host")),
            "{what}: {body}"
        );
    }
    mock.assert_untouched("requests refused for their Host headers");
    // HTTP/1.0 has no Host requirement; one Host on HTTP/1.1 is the normal case.
    assert_eq!(
        raw_request(proxy.addr, b"GET /api/old HTTP/1.0\r\n\r\n")
            .await
            .status,
        200
    );
    assert_eq!(
        raw_request(
            proxy.addr,
            b"GET /api/new HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
        )
        .await
        .status,
        200
    );
    assert_eq!(mock.count(), 2);
}
