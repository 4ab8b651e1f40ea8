//! Bodies stream both ways through the upstream stack (issue 10): nothing is stored and
//! forwarded, with the default retry policy on.
//!
//! Every upstream here is a [`StreamingUpstream`]: its handler sees the request body as it
//! arrives and answers after the first chunk, so a proxy that read the whole body first would
//! hang these tests (the hang guard turns that into a failure).
//!
//! Covered: a gRPC-style bidirectional ping-pong over h2c; a chunked HTTP/1.1 upload that the
//! upstream sees begin before the client has finished; `Expect: 100-continue` answered by the
//! upstream (a refusal before the body, and a `100` that comes from the upstream); a retryable
//! PUT under `retry.max_body_bytes` retried with the identical body, and one over it sent once;
//! an upstream that stalls its error body under `errors: normalize` answered `504` at the total
//! deadline; 1 GiB up and 1 GiB down through the real binary with peak RSS bounded.

mod support;

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request};
use http_body_util::BodyExt;
use sha2::{Digest, Sha256};
use support::streaming::{events, next_chunk, streamed_response, StreamingUpstream};
use support::*;

/// gRPC bidirectional streaming: each message is answered before the next one is sent. With
/// the default retry policy (POST gets an automatic Idempotency-Key, so it is retryable and a
/// copy is kept) the first message must still reach the upstream at once.
#[tokio::test]
async fn grpc_bidi_ping_pong_over_h2c_with_the_default_retry_policy() {
    let upstream = StreamingUpstream::start(|req| async move {
        assert_eq!(req.version(), http::Version::HTTP_2);
        let (tx, mut response) = streamed_response(200);
        response
            .headers_mut()
            .insert("content-type", "application/grpc".parse().unwrap());
        let mut body = req.into_body();
        tokio::spawn(async move {
            while let Some(ping) = next_chunk(&mut body).await {
                let mut pong = b"pong:".to_vec();
                pong.extend_from_slice(&ping);
                tx.data(pong).await;
            }
            let mut trailers = HeaderMap::new();
            trailers.insert("grpc-status", "0".parse().unwrap());
            tx.trailers(trailers).await;
        });
        response
    })
    .await;
    let proxy = Proxy::start(&one_upstream(&upstream.url(""), "http: http2")).await;
    let (ping, body) = channel_body();
    let mut request = Request::post(proxy.url("/api/echo.Echo/Chat"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(body)
        .unwrap();
    *request.version_mut() = http::Version::HTTP_2;
    let client = h2c_client();
    let sent = tokio::spawn(async move { client.request(request).await });
    ping.data("0").await;
    let response = guard("response head", sent).await.unwrap().unwrap();
    assert_eq!(response.status(), 200);
    let mut answers = response.into_body();
    for i in 0..5 {
        if i > 0 {
            ping.data(i.to_string()).await;
        }
        let frame = guard("pong", answers.frame()).await.unwrap().unwrap();
        assert_eq!(frame.into_data().unwrap(), format!("pong:{i}"));
    }
    drop(ping);
    let trailers = guard("trailers", answers.frame()).await.unwrap().unwrap();
    assert_eq!(trailers.trailers_ref().unwrap()["grpc-status"], "0");
    proxy.shutdown().await;
}

/// A chunked upload: the upstream gets the first chunk while the client has not sent the
/// second (which it sends only once the upstream said it has the first).
#[tokio::test]
async fn chunked_upload_reaches_the_upstream_before_the_client_finishes() {
    let (seen, mut seen_rx) = events::<Bytes>();
    let upstream = StreamingUpstream::start(move |req| {
        let seen = seen.clone();
        async move {
            let mut body = req.into_body();
            let mut total = 0;
            while let Some(chunk) = next_chunk(&mut body).await {
                total += chunk.len();
                let _ = seen.send(chunk);
            }
            let mut response = http::Response::new(full(total.to_string()));
            *response.status_mut() = http::StatusCode::OK;
            response
        }
    })
    .await;
    let proxy = Proxy::start(&one_upstream(&upstream.url(""), "")).await;
    let (tx, body) = channel_body();
    let request = proxy.build("PUT", "/api/upload", &[], body);
    let client = proxy.client.clone();
    let answer = tokio::spawn(async move { send(&client, request).await });
    tx.data("first chunk;").await;
    let first = guard("upstream sees the first chunk", seen_rx.recv())
        .await
        .unwrap();
    assert_eq!(first, "first chunk;");
    tx.data("second chunk").await;
    assert_eq!(
        guard("second chunk", seen_rx.recv()).await.unwrap(),
        "second chunk"
    );
    drop(tx);
    let answer = guard("answer", answer).await.unwrap();
    assert_eq!(answer.status, 200);
    assert_eq!(answer.text(), "24");
    proxy.shutdown().await;
}

/// Read the response head (up to the blank line) from a raw connection.
async fn read_head(conn: &mut RawConn) -> String {
    let mut head = Vec::new();
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let bytes = conn.read_some().await;
        assert!(
            !bytes.is_empty(),
            "connection closed after {:?}",
            String::from_utf8_lossy(&head)
        );
        head.extend_from_slice(&bytes);
    }
    String::from_utf8_lossy(&head).into_owned()
}

/// `Expect: 100-continue` reaches the upstream, and the upstream's answer decides: a refusal
/// comes back without the body ever being asked for, and the `100` the application gets is
/// sent only once the upstream sent its own.
#[tokio::test]
async fn expect_100_continue_is_answered_by_the_upstream() {
    let (seen, mut seen_rx) = events::<Option<String>>();
    let upstream = StreamingUpstream::start(move |req| {
        let seen = seen.clone();
        async move {
            let expect = req
                .headers()
                .get("expect")
                .map(|v| v.to_str().unwrap().to_string());
            let _ = seen.send(expect);
            if req.uri().path() == "/refuse" {
                // Answer without reading the body: the upstream's hyper never sends 100.
                let mut response = http::Response::new(full("no thanks"));
                *response.status_mut() = http::StatusCode::EXPECTATION_FAILED;
                return response;
            }
            let body = req.into_body().collect().await.unwrap().to_bytes();
            http::Response::new(full(body))
        }
    })
    .await;
    let proxy = Proxy::start(&one_upstream(&upstream.url(""), "")).await;

    let mut conn = RawConn::connect(proxy.addr).await;
    conn.write(
        b"PUT /api/refuse HTTP/1.1\r\nhost: x\r\ncontent-length: 5\r\nexpect: 100-continue\r\n\r\n",
    )
    .await;
    let head = guard("the upstream's refusal", read_head(&mut conn)).await;
    assert!(head.starts_with("HTTP/1.1 417"), "{head}");
    assert_eq!(
        guard("expect header", seen_rx.recv())
            .await
            .unwrap()
            .as_deref(),
        Some("100-continue")
    );

    let mut conn = RawConn::connect(proxy.addr).await;
    conn.write(
        b"PUT /api/accept HTTP/1.1\r\nhost: x\r\ncontent-length: 5\r\nexpect: 100-continue\r\n\r\n",
    )
    .await;
    let interim = guard("100 Continue", read_head(&mut conn)).await;
    assert!(interim.starts_with("HTTP/1.1 100"), "{interim}");
    assert_eq!(
        guard("expect header", seen_rx.recv())
            .await
            .unwrap()
            .as_deref(),
        Some("100-continue"),
        "the upstream had the request before the application got its 100"
    );
    conn.write(b"hello").await;
    let response = guard("final answer", conn.read_response()).await;
    assert_eq!(response.status, 200);
    assert_eq!(response.text(), "hello");
    proxy.shutdown().await;
}

/// What a hashing upstream saw: one (length, SHA-256) per request.
type Seen = Arc<Mutex<Vec<(usize, [u8; 32])>>>;

/// A retryable PUT under the cap is retried with the identical body; over the cap, the upstream
/// answers 503 before the body is complete and the request is not retried (the copy was given
/// up).
#[tokio::test]
async fn put_under_the_cap_is_retried_with_the_same_body_and_over_it_is_not() {
    let seen: Seen = Arc::default();
    let calls = Arc::new(AtomicU32::new(0));
    let (record, calls_in) = (seen.clone(), calls.clone());
    let upstream = StreamingUpstream::start(move |req| {
        let (record, calls) = (record.clone(), calls_in.clone());
        async move {
            let n = calls.fetch_add(1, Ordering::SeqCst);
            let big = req.uri().path() == "/big";
            let mut body = req.into_body();
            let mut hasher = Sha256::new();
            let mut len = 0;
            while let Some(chunk) = next_chunk(&mut body).await {
                len += chunk.len();
                hasher.update(&chunk);
                if big && len > 5000 {
                    // Answer before the body is complete (but once Outpost has certainly read
                    // past the 4 KiB cap), as a busy upstream does.
                    break;
                }
            }
            record.lock().unwrap().push((len, hasher.finalize().into()));
            let status = if n == 0 || big { 503 } else { 200 };
            let mut response = http::Response::new(full(format!("attempt {n}")));
            *response.status_mut() = http::StatusCode::from_u16(status).unwrap();
            response
        }
    })
    .await;
    let proxy = Proxy::start(&one_upstream(
        &upstream.url(""),
        "retry: { max_body_bytes: 4KiB, base_delay: 1ms }",
    ))
    .await;
    let pattern: Vec<u8> = (0..3000u32).map(|i| (i % 251) as u8).collect();
    let (tx, body) = channel_body();
    let request = proxy.build("PUT", "/api/small", &[], body);
    let client = proxy.client.clone();
    let answer = tokio::spawn(async move { send(&client, request).await });
    for chunk in pattern.chunks(1000) {
        tx.data(Bytes::copy_from_slice(chunk)).await;
    }
    drop(tx);
    let answer = guard("retried PUT", answer).await.unwrap();
    assert_eq!(answer.status, 200, "{}", answer.text());
    let expected: [u8; 32] = Sha256::digest(&pattern).into();
    assert_eq!(
        *seen.lock().unwrap(),
        vec![(3000, expected), (3000, expected)],
        "two attempts, the same bytes"
    );

    seen.lock().unwrap().clear();
    let (tx, body) = channel_body();
    let request = proxy.build("PUT", "/api/big", &[], body);
    let client = proxy.client.clone();
    let answer = tokio::spawn(async move { send(&client, request).await });
    let sender = tokio::spawn(async move {
        for _ in 0..16 {
            // The upstream stops reading after the first chunk: later sends may fail.
            if tokio::time::timeout(Duration::from_secs(2), tx.data(vec![7u8; 1024]))
                .await
                .is_err()
            {
                break;
            }
        }
    });
    let answer = guard("PUT over the cap", answer).await.unwrap();
    assert_eq!(answer.status, 503, "the upstream's answer, not retried");
    assert_eq!(answer.text(), "attempt 2");
    assert_eq!(seen.lock().unwrap().len(), 1, "one attempt only");
    sender.abort();
    proxy.shutdown().await;
}

/// An upstream sends a 502 head under `errors: normalize`, then stalls its body: the total
/// deadline still holds (the body read is inside it).
#[tokio::test]
async fn a_stalled_error_body_under_normalize_is_a_504_at_the_total_deadline() {
    let senders = Arc::new(Mutex::new(Vec::new()));
    let keep = senders.clone();
    let upstream = StreamingUpstream::start(move |_req| {
        let keep = keep.clone();
        async move {
            let (tx, mut response) = streamed_response(502);
            response
                .headers_mut()
                .insert("content-type", "application/json".parse().unwrap());
            tokio::spawn(async move {
                tx.data(r#"{"error": {"mess"#).await;
                // Never finishes: keep the sender alive until the test ends.
                keep.lock().unwrap().push(tx);
            });
            response
        }
    })
    .await;
    let proxy = Proxy::start(&one_upstream(
        &upstream.url(""),
        "errors: normalize\ntimeout: 1s\nretry: { max_attempts: 1 }",
    ))
    .await;
    let started = tokio::time::Instant::now();
    let answer = proxy.get("/api/x").await;
    answer.assert_error(504, "upstream_timeout");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "bounded by the 1 s total timeout, took {:?}",
        started.elapsed()
    );
    proxy.shutdown().await;
}

/// Peak RSS (VmHWM) of a process, in KiB.
fn peak_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// The bound on Outpost's peak RSS while 1 GiB goes each way (measured: ~14 MiB, the idle
/// process ~10 MiB).
const RSS_BOUND_KIB: u64 = 32 * 1024;
const GIB: u64 = 1024 * 1024 * 1024;

/// 1 GiB up and 1 GiB down through the real binary, with the default retry policy: the body
/// copy stops at `retry.max_body_bytes` and nothing else is buffered, so the peak RSS stays
/// under [`RSS_BOUND_KIB`].
#[tokio::test]
async fn a_gigabyte_each_way_with_bounded_memory() {
    let received = Arc::new(AtomicU64::new(0));
    let counted = received.clone();
    let upstream = StreamingUpstream::start(move |req| {
        let counted = counted.clone();
        async move {
            if req.method() == http::Method::GET {
                return http::Response::new(GeneratedBody::new(GIB, true).boxed_unsync());
            }
            let mut body = req.into_body();
            let mut hasher = Sha256::new();
            while let Some(chunk) = next_chunk(&mut body).await {
                counted.fetch_add(chunk.len() as u64, Ordering::Relaxed);
                hasher.update(&chunk);
            }
            http::Response::new(full(hex::encode(hasher.finalize())))
        }
    })
    .await;
    let mut binary = Binary::start(
        &one_upstream(&upstream.url(""), "timeout: 10m\nattempt_timeout: 10m"),
        &[],
    )
    .await;
    let client = http1_client();

    let request = Request::put(binary.url("/api/upload"))
        .body(GeneratedBody::new(GIB, true).boxed_unsync())
        .unwrap();
    let response = tokio::time::timeout(Duration::from_secs(600), client.request(request))
        .await
        .expect("upload within 10 minutes")
        .unwrap();
    assert_eq!(response.status(), 200);
    let digest = response.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(digest, hex::encode(GeneratedBody::sha256(GIB)));
    assert_eq!(received.load(Ordering::Relaxed), GIB);

    let request = Request::get(binary.url("/api/download"))
        .body(empty())
        .unwrap();
    let response = guard("download head", client.request(request))
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let mut body = response.into_body();
    let mut hasher = Sha256::new();
    let mut len = 0u64;
    let read = async {
        while let Some(frame) = body.frame().await {
            if let Ok(data) = frame.unwrap().into_data() {
                len += data.len() as u64;
                hasher.update(&data);
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(600), read)
        .await
        .expect("download within 10 minutes");
    assert_eq!(len, GIB);
    assert_eq!(
        <[u8; 32]>::from(hasher.finalize()),
        GeneratedBody::sha256(GIB)
    );

    let peak = peak_rss_kib(binary.pid());
    assert!(
        peak < RSS_BOUND_KIB,
        "peak RSS {peak} KiB while streaming 1 GiB each way (bound {RSS_BOUND_KIB} KiB)"
    );
    eprintln!("peak RSS after 1 GiB each way: {peak} KiB");
    binary.stop_and_collect_stderr().await;
}

/// The application's body is its own fault (issue 14): a malformed chunked body, a chunked
/// body over `limits.max_body_bytes`, and a body cut short are `400`, `413` and `499`, never a
/// `502`, never an upstream attempt outcome, and never a breaker failure (one would open it).
#[tokio::test]
async fn a_bad_body_from_the_application_is_a_client_fault() {
    let upstream = StreamingUpstream::start(|req| async move {
        let mut body = req.into_body();
        while next_chunk(&mut body).await.is_some() {}
        http::Response::new(full("ok"))
    })
    .await;
    let proxy = Proxy::start(&format!(
        "limits: {{ max_body_bytes: 1KiB }}\n{}",
        one_upstream(
            &upstream.url(""),
            "circuit_breaker: { consecutive_failures: 1, open_for: 1m }"
        )
    ))
    .await;
    // A chunk-size line that is not hex, after a good chunk the upstream has started reading.
    let mut conn = RawConn::connect(proxy.addr).await;
    conn.write(b"PUT /api/bad HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\nzz\r\n")
        .await;
    let response = guard("malformed chunked body", conn.read_response()).await;
    assert_eq!(response.status, 400, "{}", response.text());
    // Over the body limit, announced by no Content-Length.
    let mut conn = RawConn::connect(proxy.addr).await;
    let mut request =
        b"PUT /api/big HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n".to_vec();
    for _ in 0..4 {
        request.extend_from_slice(b"200\r\n");
        request.extend_from_slice(&[b'a'; 512]);
        request.extend_from_slice(b"\r\n");
    }
    request.extend_from_slice(b"0\r\n\r\n");
    conn.write(&request).await;
    let response = guard("chunked body over the limit", conn.read_response()).await;
    response.assert_error(413, "payload_too_large");

    let metrics = proxy.metrics();
    for outcome in ["other_error", "connect_error", "timeout"] {
        assert!(
            !metrics
                .lines()
                .any(|l| l.starts_with("outpost_upstream_attempts_total")
                    && l.contains(&format!("outcome=\"{outcome}\""))
                    && !l.ends_with(" 0")),
            "the application's body is not an upstream {outcome}:\n{metrics}"
        );
    }
    assert_eq!(
        proxy.get("/api/after").await.status,
        200,
        "the breaker stayed closed"
    );
    proxy.shutdown().await;
}
