//! Cancellation leaves nothing behind (issue 10): the application closes its connection while
//! its request is the half-open breaker's probe, waits in the limiter's queue, or is still
//! uploading its body. Each time the breaker closes again after a healthy probe (or never
//! opens: a client going away is not an upstream failure), the in-flight gauge returns to 0,
//! and the access log has the request with status `499`.
//!
//! The real binary, so the access log is its real stderr; the application side is a raw TCP
//! connection, dropped for real.

mod support;

use std::time::Duration;

use support::streaming::{events, next_chunk, StreamingUpstream};
use support::*;

async fn metrics(binary: &Binary) -> String {
    get(&binary.admin_url("/metrics")).await.text()
}

async fn wait_metric(binary: &Binary, name: &str, labels: &[(&str, &str)], want: f64) {
    poll_until(&format!("{name}{labels:?} == {want}"), || async {
        metric(&metrics(binary).await, name, labels) == Some(want)
    })
    .await;
}

/// The access lines (JSON) of a stopped binary.
fn access_lines(stderr: &[u8]) -> Vec<serde_json::Value> {
    String::from_utf8_lossy(stderr)
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["target"] == "outpost::access")
        .collect()
}

fn assert_logged_499(stderr: &[u8], path: &str) {
    let lines = access_lines(stderr);
    let line = lines
        .iter()
        .find(|l| l["path"] == path && l["status"] == 499)
        .unwrap_or_else(|| panic!("no 499 access line for {path}: {lines:#?}"));
    assert_eq!(line["upstream"], "api");
}

const UP: (&str, &str) = ("upstream", "api");

/// Send `GET path` on a fresh raw connection (the response is not read).
async fn raw_get(binary: &Binary, path: &str) -> RawConn {
    let mut conn = RawConn::connect(binary.app_addr).await;
    conn.write(format!("GET {path} HTTP/1.1\r\nhost: app\r\n\r\n").as_bytes())
        .await;
    conn
}

#[tokio::test]
async fn a_probe_abandoned_by_the_client_does_not_keep_the_breaker_open() {
    let mock = MockUpstream::queue(vec![Reply::status(503), Reply::Never]).await;
    let mut binary = Binary::start(
        &one_upstream(
            &mock.url(""),
            "retry: { max_attempts: 1 }\ncircuit_breaker: { consecutive_failures: 1, open_for: 200ms }",
        ),
        &[],
    )
    .await;
    assert_eq!(get(&binary.url("/api/fail")).await.status, 503);
    mock.next_request().await;
    wait_metric(&binary, "outpost_circuit_open", &[UP], 1.0).await;

    // Once open_for has passed, a request is let through as the probe; the upstream holds it.
    let probe = guard("the probe reaches the upstream", async {
        loop {
            let mut conn = raw_get(&binary, "/api/probe").await;
            tokio::select! {
                _ = mock.next_request() => return conn,
                response = conn.read_response() => {
                    response.assert_error(503, "circuit_open");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    })
    .await;
    drop(probe); // the application goes away mid-probe
    wait_metric(&binary, "outpost_in_flight_requests", &[UP], 0.0).await;

    // The probe's slot came back: the next probe is healthy and closes the breaker.
    poll_until("a healthy probe closes the breaker", || async {
        try_status(&binary.url("/api/after")).await == Some(200)
    })
    .await;
    wait_metric(&binary, "outpost_circuit_open", &[UP], 0.0).await;
    assert_eq!(get(&binary.url("/api/closed")).await.status, 200);
    let text = metrics(&binary).await;
    assert_eq!(
        metric(
            &text,
            "outpost_requests_total",
            &[UP, ("method", "GET"), ("status", "499")]
        ),
        Some(1.0),
        "{text}"
    );
    let stderr = binary.stop_and_collect_stderr().await;
    assert_logged_499(&stderr, "/api/probe");
}

#[tokio::test]
async fn a_request_abandoned_in_the_limiter_queue_leaves_no_slot_behind() {
    let mock = MockUpstream::ok().await;
    // One request per minute, and requests may queue for it: the second waits ~60 s.
    let mut binary = Binary::start(
        &one_upstream(
            &mock.url(""),
            "timeout: 2m\nrate_limit: { requests_per_minute: 1, burst: 1, max_wait: 2m, max_in_flight: 4 }",
        ),
        &[],
    )
    .await;
    assert_eq!(get(&binary.url("/api/first")).await.status, 200);
    let queued = raw_get(&binary, "/api/queued").await;
    wait_metric(&binary, "outpost_rate_limit_queued", &[UP], 1.0).await;
    wait_metric(&binary, "outpost_in_flight_requests", &[UP], 1.0).await;
    drop(queued); // the application goes away while its request waits
    wait_metric(&binary, "outpost_in_flight_requests", &[UP], 0.0).await;
    wait_metric(&binary, "outpost_rate_limit_queued", &[UP], 0.0).await;
    assert_eq!(
        mock.count(),
        1,
        "the abandoned request never reached the upstream"
    );
    let stderr = binary.stop_and_collect_stderr().await;
    assert_logged_499(&stderr, "/api/queued");
}

#[tokio::test]
async fn a_client_gone_mid_upload_is_499_and_not_an_upstream_failure() {
    let (seen, mut seen_rx) = events::<usize>();
    let upstream = StreamingUpstream::start(move |req| {
        let seen = seen.clone();
        async move {
            let mut body = req.into_body();
            let mut len = 0;
            while let Some(chunk) = next_chunk(&mut body).await {
                len += chunk.len();
                let _ = seen.send(len);
            }
            http::Response::new(full("ok"))
        }
    })
    .await;
    let mut binary = Binary::start(
        &one_upstream(
            &upstream.url(""),
            "circuit_breaker: { consecutive_failures: 1, open_for: 1m }",
        ),
        &[],
    )
    .await;
    let mut conn = RawConn::connect(binary.app_addr).await;
    conn.write(b"PUT /api/upload HTTP/1.1\r\nhost: app\r\ncontent-length: 100000\r\n\r\n")
        .await;
    conn.write(&[b'x'; 1000]).await;
    let got = guard("the upstream sees the first bytes", seen_rx.recv())
        .await
        .unwrap();
    assert!(got > 0);
    drop(conn); // the application goes away mid-body
    wait_metric(&binary, "outpost_in_flight_requests", &[UP], 0.0).await;
    // One failure would open this breaker: the abandoned upload was not counted as one.
    assert_eq!(get(&binary.url("/api/next")).await.status, 200);
    let text = metrics(&binary).await;
    assert_eq!(metric(&text, "outpost_circuit_open", &[UP]), Some(0.0));
    for outcome in ["other_error", "connect_error", "timeout"] {
        assert_eq!(
            metric(
                &text,
                "outpost_upstream_attempts_total",
                &[UP, ("outcome", outcome)]
            )
            .unwrap_or(0.0),
            0.0,
            "the client's abort is not an upstream {outcome}"
        );
    }
    let stderr = binary.stop_and_collect_stderr().await;
    assert_logged_499(&stderr, "/api/upload");
}

/// The same over HTTP/2: the application resets its stream (the request future is dropped,
/// hyper sends RST_STREAM) while the request waits in the limiter queue.
#[tokio::test]
async fn an_h2_stream_reset_in_the_queue_leaves_no_slot_behind() {
    let mock = MockUpstream::ok().await;
    let mut binary = Binary::start(
        &one_upstream(
            &mock.url(""),
            "timeout: 2m\nrate_limit: { requests_per_minute: 1, burst: 1, max_wait: 2m }",
        ),
        &[],
    )
    .await;
    let client = h2c_client();
    let send = |path: &str| {
        let mut request = http::Request::get(binary.url(path)).body(empty()).unwrap();
        *request.version_mut() = http::Version::HTTP_2;
        client.request(request)
    };
    assert_eq!(
        guard("first", send("/api/first")).await.unwrap().status(),
        200
    );
    let queued = tokio::spawn(send("/api/reset"));
    wait_metric(&binary, "outpost_rate_limit_queued", &[UP], 1.0).await;
    queued.abort(); // the stream is reset; the connection stays open
    wait_metric(&binary, "outpost_in_flight_requests", &[UP], 0.0).await;
    wait_metric(&binary, "outpost_rate_limit_queued", &[UP], 0.0).await;
    assert_eq!(mock.count(), 1);
    let stderr = binary.stop_and_collect_stderr().await;
    assert_logged_499(&stderr, "/api/reset");
}
