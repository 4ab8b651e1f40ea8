//! The upstream connection pool (`src/client/pool.rs`): HTTP/1.1 connections are reused once a
//! response has been read to its end, never while a body is still streaming, a response body
//! dropped early costs its connection and nothing else, and an HTTP/2 upstream is served over
//! one shared connection.

mod support;

use bytes::Bytes;
use http::Request;
use http_body_util::BodyExt;
use support::*;

fn config(mock: &MockUpstream, extra: &str) -> String {
    format!(
        "upstreams:\n  api:\n    base_url: {}\n    auth: {{ type: bearer, token: sk_pool }}\n{extra}",
        mock.url("")
    )
}

#[tokio::test]
async fn sequential_requests_reuse_one_upstream_connection() {
    let mock = MockUpstream::start(|r| Reply::text(200, &r.uri)).await;
    let proxy = Proxy::start(&config(&mock, "")).await;
    for i in 0..20 {
        let answer = proxy.get(&format!("/api/n/{i}")).await;
        assert_eq!(answer.status, 200);
        assert_eq!(answer.text(), format!("/n/{i}"));
    }
    // Empty bodies and HEAD answers give the connection back at once, too.
    for _ in 0..5 {
        let answer = proxy.request("HEAD", "/api/head", &[], Bytes::new()).await;
        assert_eq!(answer.status, 200);
        assert_eq!(proxy.get("/api/after-head").await.status, 200);
    }
    assert_eq!(
        mock.connections(),
        1,
        "every request used the pooled connection"
    );
    let request = mock.requests().pop().unwrap();
    assert_eq!(
        request.header("host"),
        Some(mock.addr.to_string().as_str()),
        "Host is the upstream's, with its non-default port"
    );
    assert_eq!(request.header("authorization"), Some("Bearer sk_pool"));
}

#[tokio::test]
async fn concurrent_requests_open_connections_as_needed_and_reuse_them_afterwards() {
    let mock = MockUpstream::start(|_| Reply::text(200, "ok")).await;
    let proxy = Proxy::start(&config(&mock, "")).await;
    let rounds = 5;
    for _ in 0..rounds {
        let answers = futures_util::future::join_all((0..8).map(|i| {
            let proxy = &proxy;
            async move { proxy.get(&format!("/api/c/{i}")).await }
        }))
        .await;
        assert!(answers.iter().all(|a| a.status == 200));
    }
    // At most 8 at a time: never more than 8 connections for 40 requests.
    assert!(
        mock.connections() <= 8,
        "{} connections for 8 concurrent requests",
        mock.connections()
    );
    assert_eq!(mock.count(), 8 * rounds);
}

#[tokio::test]
async fn a_streaming_body_keeps_its_connection_and_an_abandoned_one_loses_it() {
    // The first request's response streams a body the application stops reading; a request
    // sent meanwhile must not be queued behind it on the same connection.
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(4);
    let rx = std::sync::Mutex::new(Some(rx));
    let mock = MockUpstream::start(move |r| {
        if r.uri == "/stream" {
            let rx = rx.lock().unwrap().take().expect("one stream");
            let body = http_body_util::StreamBody::new(futures_util::stream::unfold(
                rx,
                |mut rx| async move {
                    rx.recv()
                        .await
                        .map(|chunk| (Ok::<_, BoxError>(http_body::Frame::data(chunk)), rx))
                },
            ));
            Reply::Respond(response(200, &[], BodyExt::boxed_unsync(body)))
        } else {
            Reply::text(200, "quick")
        }
    })
    .await;
    let proxy = Proxy::start(&config(&mock, "")).await;
    let req = Request::get(proxy.url("/api/stream"))
        .body(empty())
        .unwrap();
    let mut streaming = guard("stream head", proxy.client.request(req))
        .await
        .unwrap();
    assert_eq!(streaming.status(), 200);
    tx.send(Bytes::from_static(b"first")).await.unwrap();
    let frame = guard("first chunk", streaming.body_mut().frame())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(frame.into_data().unwrap(), "first");

    // The stream holds connection 1; this request needs connection 2.
    assert_eq!(proxy.get("/api/quick").await.text(), "quick");
    assert_eq!(mock.connections(), 2);

    // Abandon the stream mid-body: its connection is closed, not pooled; the next requests
    // reuse connection 2.
    drop(streaming);
    drop(tx);
    for _ in 0..3 {
        assert_eq!(proxy.get("/api/quick").await.text(), "quick");
    }
    assert_eq!(mock.connections(), 2);
}

#[tokio::test]
async fn an_http2_upstream_is_served_over_one_shared_connection() {
    let mock = MockUpstream::start(|r| {
        Reply::text(
            200,
            if r.version == http::Version::HTTP_2 {
                "h2"
            } else {
                "h1"
            },
        )
    })
    .await;
    let proxy = Proxy::start(&config(&mock, "    http: http2\n")).await;
    for _ in 0..3 {
        let answers = futures_util::future::join_all((0..10).map(|i| {
            let proxy = &proxy;
            async move { proxy.get(&format!("/api/h2/{i}")).await }
        }))
        .await;
        assert!(answers.iter().all(|a| a.status == 200 && a.text() == "h2"));
    }
    assert_eq!(
        mock.connections(),
        1,
        "30 requests multiplexed on one connection"
    );
}
