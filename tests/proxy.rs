//! The request path end to end over real sockets: routing, header and credential injection,
//! the official SDKs' request shapes against Outpost's own mocks, streaming both ways,
//! HTTP/2 and gRPC trailers, upgrades, plain-HTTP API styles, error passthrough, timeouts and
//! TLS upstreams.

mod support;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine;
use bytes::Bytes;
use http::{Request, Version};
use http_body_util::BodyExt;
use outpost::mock::{MockOptions, Profile};
use serde_json::json;
use support::*;
use tokio::net::TcpListener;

/// Start one of Outpost's own provider mocks (`outpost::mock::serve`) on `127.0.0.1:0`.
async fn provider_mock(
    profile: Profile,
    api_key: &str,
) -> (SocketAddr, tokio::sync::watch::Sender<bool>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let mut opts = MockOptions::new(profile);
    opts.api_key = Some(api_key.to_string());
    let (stop, mut stopped) = tokio::sync::watch::channel(false);
    tokio::spawn(outpost::mock::serve(listener, opts, async move {
        let _ = stopped.wait_for(|s| *s).await;
    }));
    (addr, stop)
}

async fn one_upstream(extra: &str, mock: &MockUpstream) -> Proxy {
    Proxy::start(&format!(
        "upstreams:\n  api:\n    base_url: {}\n{}",
        mock.url(""),
        extra
    ))
    .await
}

#[tokio::test]
async fn path_after_the_prefix_is_appended_to_the_base_path_with_the_query() {
    let mock = MockUpstream::ok().await;
    let proxy = Proxy::start(&format!(
        r#"
        upstreams:
          api:
            base_url: {}
        "#,
        mock.url("/base/v2/")
    ))
    .await;
    for (method, target, expected) in [
        (
            "GET",
            "/api/things/1?expand%5B%5D=owner&q=a%20b",
            "/base/v2/things/1?expand%5B%5D=owner&q=a%20b",
        ),
        ("GET", "/api", "/base/v2"),
        ("GET", "/api/", "/base/v2/"),
        ("GET", "/api?x=1", "/base/v2?x=1"),
        ("DELETE", "/api/things/1", "/base/v2/things/1"),
        ("PUT", "/api/things/1", "/base/v2/things/1"),
        (
            "PATCH",
            "/api/things/1?dry_run=true",
            "/base/v2/things/1?dry_run=true",
        ),
    ] {
        let response = proxy
            .request(
                method,
                target,
                &[("content-type", "application/json")],
                "{\"a\":1}",
            )
            .await;
        assert_eq!(response.status, 200, "{method} {target}");
        let seen = mock.next_request().await;
        assert_eq!(seen.method.as_str(), method);
        assert_eq!(seen.uri, expected, "{method} {target}");
        assert_eq!(&seen.body[..], b"{\"a\":1}");
        assert_eq!(seen.header("content-type"), Some("application/json"));
    }
    // The app gets the request id Outpost assigned (or its own).
    let response = proxy
        .request("GET", "/api/x", &[("x-request-id", "app-123")], "")
        .await;
    assert_eq!(response.header("x-request-id"), Some("app-123"));
}

#[tokio::test]
async fn static_headers_are_applied_to_every_call() {
    let mock = MockUpstream::ok().await;
    let proxy = one_upstream(
        "    headers:\n      Stripe-Version: \"2024-06-20\"\n      X-Static: fixed\n",
        &mock,
    )
    .await;
    for _ in 0..2 {
        let response = proxy
            .request(
                "GET",
                "/api/v1",
                &[("stripe-version", "2019-01-01"), ("x-app", "mine")],
                "",
            )
            .await;
        assert_eq!(response.status, 200);
        let seen = mock.next_request().await;
        let versions: Vec<_> = seen.headers.get_all("stripe-version").iter().collect();
        assert_eq!(
            versions,
            ["2024-06-20"],
            "configured headers replace the app's"
        );
        assert_eq!(seen.header("x-static"), Some("fixed"));
        assert_eq!(seen.header("x-app"), Some("mine"));
    }
}

#[tokio::test]
async fn credentials_are_injected_from_literals_and_secret_files() {
    let dir = TempDir::new("secrets");
    let token = dir.write("token", "sk_test_from_file\n");
    let password = dir.write("password", "pw-from-file");
    let key = dir.write("key", "hdr-from-file\n");
    let bearer = MockUpstream::ok().await;
    let basic = MockUpstream::ok().await;
    let header = MockUpstream::ok().await;
    let query = MockUpstream::ok().await;
    let proxy = Proxy::start(&format!(
        r#"
        upstreams:
          bearer:
            base_url: {}
            auth: {{ type: bearer, token: "${{file:{}}}" }}
          basic:
            base_url: {}
            auth: {{ type: basic, username: AC123, password: "${{file:{}}}" }}
          header:
            base_url: {}
            auth: {{ type: header, name: X-Api-Key, value: "Token ${{file:{}}}" }}
          query:
            base_url: {}
            auth: {{ type: query, name: key, value: plain-query-key }}
        "#,
        bearer.url(""),
        token.display(),
        basic.url(""),
        password.display(),
        header.url(""),
        key.display(),
        query.url(""),
    ))
    .await;
    assert_eq!(proxy.get("/bearer/v1").await.status, 200);
    assert_eq!(
        bearer.only_request().header("authorization"),
        Some("Bearer sk_test_from_file")
    );
    assert_eq!(proxy.get("/basic/v1").await.status, 200);
    let expected = base64::engine::general_purpose::STANDARD.encode("AC123:pw-from-file");
    assert_eq!(
        basic.only_request().header("authorization"),
        Some(format!("Basic {expected}").as_str())
    );
    assert_eq!(proxy.get("/header/v1").await.status, 200);
    assert_eq!(
        header.only_request().header("x-api-key"),
        Some("Token hdr-from-file")
    );
    assert_eq!(proxy.get("/query/v1?page=2").await.status, 200);
    assert_eq!(query.only_request().uri, "/v1?page=2&key=plain-query-key");
}

/// The Stripe Python SDK's `stripe.Customer.create(...)`, replayed byte for byte in shape,
/// against `outpost mock --profile stripe` that only accepts the proxy's key.
#[tokio::test]
async fn stripe_sdk_request_shapes_create_a_customer_through_the_mock() {
    const KEY: &str = "sk_test_outpost_real_key_51H";
    let (stripe, _stop) = provider_mock(Profile::Stripe, KEY).await;
    let proxy = Proxy::start(&format!(
        r#"
        upstreams:
          stripe:
            preset: stripe
            base_url: http://{stripe}
            auth: {{ token: {KEY} }}
        "#
    ))
    .await;
    let idempotency_key = uuid::Uuid::new_v4().to_string();
    let client_ua = r#"{"bindings_version": "10.12.0", "lang": "python", "publisher": "stripe", "httplib": "requests", "lang_version": "3.12.3", "platform": "Linux-6.8.0-x86_64-with-glibc2.39", "uname": "Linux 6.8.0 x86_64"}"#;
    let sdk_headers = [
        ("authorization", "Bearer sk_test_placeholder"),
        ("content-type", "application/x-www-form-urlencoded"),
        ("stripe-version", "2024-06-20"),
        ("idempotency-key", idempotency_key.as_str()),
        ("user-agent", "Stripe/v1 PythonBindings/10.12.0"),
        ("x-stripe-client-user-agent", client_ua),
        ("accept", "*/*"),
        ("accept-encoding", "gzip, deflate"),
    ];
    let form = "email=jenny.rosen%40example.com&name=Jenny+Rosen&metadata[order_id]=6735&description=Created+via+Outpost";

    // Without the proxy the placeholder is refused: the injection is what makes it work.
    let direct = send(
        &http1_client(),
        Request::post(format!("http://{stripe}/v1/customers"))
            .header("authorization", "Bearer sk_test_placeholder")
            .header("content-type", "application/x-www-form-urlencoded")
            .body(full(form))
            .unwrap(),
    )
    .await;
    assert_eq!(direct.status, 401);

    let created = proxy
        .request("POST", "/stripe/v1/customers", &sdk_headers, form)
        .await;
    assert_eq!(created.status, 200, "{}", created.text());
    assert_eq!(created.header("content-type"), Some("application/json"));
    assert_eq!(created.header("stripe-version"), Some("2024-06-20"));
    assert!(created
        .header("request-id")
        .is_some_and(|id| id.starts_with("req_")));
    assert!(created.header("x-outpost-error").is_none());
    let customer = created.json();
    assert_eq!(customer["object"], "customer");
    assert_eq!(customer["email"], "jenny.rosen@example.com");
    assert_eq!(customer["name"], "Jenny Rosen");
    assert_eq!(customer["metadata"]["order_id"], "6735");
    let id = customer["id"].as_str().expect("customer id").to_string();
    assert!(id.starts_with("cus_"), "{id}");

    // The SDK's retry of the same call (same Idempotency-Key) is replayed, not duplicated.
    let replayed = proxy
        .request("POST", "/stripe/v1/customers", &sdk_headers, form)
        .await;
    assert_eq!(replayed.status, 200);
    assert_eq!(replayed.header("idempotent-replayed"), Some("true"));
    assert_eq!(replayed.json()["id"], id.as_str());

    let fetched = proxy
        .request(
            "GET",
            &format!("/stripe/v1/customers/{id}"),
            &sdk_headers[..1],
            "",
        )
        .await;
    assert_eq!(fetched.status, 200);
    assert_eq!(fetched.json()["email"], "jenny.rosen@example.com");

    // A Stripe error body passes through untouched, classified in x-outpost-error.
    let missing = proxy
        .request(
            "GET",
            "/stripe/v1/customers/cus_missing",
            &sdk_headers[..1],
            "",
        )
        .await;
    assert_eq!(missing.status, 404);
    assert_eq!(missing.header("x-outpost-error"), Some("not_found"));
    assert_eq!(missing.json()["error"]["type"], "invalid_request_error");
}

#[tokio::test]
async fn sendgrid_sdk_request_shape_is_accepted_by_the_mock() {
    const KEY: &str = "SG.outpost-real.key";
    let (sendgrid, _stop) = provider_mock(Profile::Sendgrid, KEY).await;
    let proxy = Proxy::start(&format!(
        r#"
        upstreams:
          sendgrid:
            preset: sendgrid
            base_url: http://{sendgrid}
            auth: {{ token: {KEY} }}
        "#
    ))
    .await;
    let mail = json!({
        "personalizations": [{"to": [{"email": "jenny@example.com", "name": "Jenny"}]}],
        "from": {"email": "billing@example.com"},
        "subject": "Your receipt",
        "content": [{"type": "text/plain", "value": "Thanks!"}, {"type": "text/html", "value": "<p>Thanks!</p>"}]
    });
    let response = proxy
        .request(
            "POST",
            "/sendgrid/v3/mail/send",
            &[
                ("authorization", "Bearer SG.placeholder"),
                ("content-type", "application/json"),
                ("user-agent", "sendgrid/6.11.0;python"),
                ("accept", "application/json"),
            ],
            mail.to_string(),
        )
        .await;
    assert_eq!(response.status, 202, "{}", response.text());
    assert!(response.body.is_empty());
    assert!(response.header("x-message-id").is_some());
}

#[tokio::test]
async fn server_sent_events_arrive_chunk_by_chunk() {
    let (events, body) = channel_body();
    let body = Mutex::new(Some(body));
    let mock = MockUpstream::start(move |_| {
        let body = body.lock().unwrap().take().expect("one stream");
        Reply::Respond(response(
            200,
            &[
                ("content-type", "text/event-stream"),
                ("cache-control", "no-cache"),
            ],
            body,
        ))
    })
    .await;
    let proxy = one_upstream("", &mock).await;
    let req = proxy.build(
        "GET",
        "/api/v1/stream",
        &[("accept", "text/event-stream")],
        empty(),
    );
    let response = guard("SSE response head", proxy.client.request(req))
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    let mut body = response.into_body();

    // Each event is read by the client before the mock sends the next one: nothing buffers.
    for i in 0..3 {
        let event = format!("id: {i}\nevent: delta\ndata: {{\"n\":{i}}}\n\n");
        events.data(event.clone()).await;
        let mut got = Vec::new();
        while got.len() < event.len() {
            let frame = guard("next SSE chunk", body.frame())
                .await
                .expect("stream ended early")
                .expect("body error");
            if let Ok(data) = frame.into_data() {
                got.extend_from_slice(&data);
            }
        }
        assert_eq!(String::from_utf8(got).unwrap(), event);
    }
    drop(events);
    assert!(guard("SSE end", body.frame()).await.is_none());
}

#[tokio::test]
async fn a_100_mib_download_streams_through() {
    const TOTAL: u64 = 100 * 1024 * 1024;
    const MIB: u64 = 1024 * 1024;
    let produced = Arc::new(AtomicU64::new(0));
    let counter = produced.clone();
    let mock = MockUpstream::start(move |_| {
        Reply::Respond(response(
            200,
            &[("content-type", "application/octet-stream")],
            GeneratedBody::new(TOTAL, true)
                .counting(counter.clone())
                .boxed_unsync(),
        ))
    })
    .await;
    let proxy = one_upstream("", &mock).await;
    let req = proxy.build("GET", "/api/big.bin", &[], empty());
    let response = guard("download head", proxy.client.request(req))
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.headers()["content-length"],
        TOTAL.to_string().as_str()
    );
    // The mock generates the body only as fast as it is read, and the client counts it as it
    // arrives, so neither end holds it. The proxy does not either: at every point the mock has
    // produced at most a few socket buffers more than the client has received (a buffering
    // proxy would have pulled all 100 MiB before the client saw its first byte).
    let mut body = response.into_body();
    let mut received = 0u64;
    let mut max_ahead = 0u64;
    while let Some(frame) = guard("download frame", body.frame()).await {
        if let Ok(data) = frame.expect("body error").into_data() {
            received += data.len() as u64;
            let ahead = produced.load(Ordering::SeqCst).saturating_sub(received);
            max_ahead = max_ahead.max(ahead);
        }
    }
    assert_eq!(received, TOTAL);
    assert_eq!(produced.load(Ordering::SeqCst), TOTAL);
    assert!(
        max_ahead < 40 * MIB,
        "the upstream ran {} MiB ahead of the client: the body is being buffered",
        max_ahead / MIB
    );
}

#[tokio::test]
async fn a_20_mib_streaming_upload_arrives_intact() {
    const TOTAL: u64 = 20 * 1024 * 1024;
    let mock = MockUpstream::ok().await;
    let proxy = one_upstream("", &mock).await;
    // Chunked (no length known up front), generated on the fly.
    let req = proxy.build(
        "PUT",
        "/api/upload",
        &[("content-type", "application/octet-stream")],
        GeneratedBody::new(TOTAL, false).boxed_unsync(),
    );
    let response = send(&proxy.client, req).await;
    assert_eq!(response.status, 200);
    let seen = mock.only_request();
    assert_eq!(seen.body_error, None);
    assert_eq!(seen.body_len, TOTAL);
    assert_eq!(seen.body_sha256, GeneratedBody::sha256(TOTAL));

    // With a Content-Length, too.
    let req = proxy.build(
        "POST",
        "/api/upload",
        &[],
        GeneratedBody::new(TOTAL / 4, true).boxed_unsync(),
    );
    assert_eq!(send(&proxy.client, req).await.status, 200);
    let seen = mock.requests().pop().unwrap();
    assert_eq!(
        seen.header("content-length"),
        Some((TOTAL / 4).to_string().as_str())
    );
    assert_eq!(seen.body_sha256, GeneratedBody::sha256(TOTAL / 4));
}

/// gRPC's wire shape: a length-prefixed message, `te: trailers`, status in trailers.
fn grpc_frame(message: &[u8]) -> Bytes {
    let mut frame = vec![0u8];
    frame.extend_from_slice(&(message.len() as u32).to_be_bytes());
    frame.extend_from_slice(message);
    Bytes::from(frame)
}

#[tokio::test]
async fn h2c_client_to_http2_upstream_with_grpc_trailers() {
    let mock = MockUpstream::start(|req| {
        if req.header("content-type") != Some("application/grpc")
            || req.header("te") != Some("trailers")
        {
            return Reply::with(415, &[], "not grpc");
        }
        Reply::Respond(response(
            200,
            &[("content-type", "application/grpc")],
            body_with_trailers(
                grpc_frame(b"\x0a\x0bHello world"),
                header_map(&[("grpc-status", "0"), ("grpc-message", "OK")]),
            ),
        ))
    })
    .await;
    let proxy = Proxy::start(&format!(
        r#"
        upstreams:
          grpc:
            base_url: {}
            http: http2
            auth: {{ type: bearer, token: grpc-token }}
        "#,
        mock.url("")
    ))
    .await;
    let client = h2c_client();
    let request = grpc_frame(b"\x0a\x05world");
    let req = Request::post(proxy.url("/grpc/helloworld.Greeter/SayHello"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .header("grpc-timeout", "5S")
        .header("user-agent", "grpc-go/1.64.0")
        .body(full(request.clone()))
        .unwrap();
    let answer = send(&client, req).await;
    assert_eq!(answer.version, Version::HTTP_2);
    assert_eq!(answer.status, 200, "{}", answer.text());
    assert_eq!(answer.header("content-type"), Some("application/grpc"));
    assert_eq!(answer.body, grpc_frame(b"\x0a\x0bHello world"));
    let trailers = answer.trailers.expect("trailers reach the client");
    assert_eq!(trailers["grpc-status"], "0");
    assert_eq!(trailers["grpc-message"], "OK");

    let seen = mock.only_request();
    assert_eq!(
        seen.version,
        Version::HTTP_2,
        "http: http2 speaks h2c to the upstream"
    );
    assert_eq!(seen.uri, "/helloworld.Greeter/SayHello");
    assert_eq!(seen.header("te"), Some("trailers"));
    assert_eq!(seen.header("grpc-timeout"), Some("5S"));
    assert_eq!(seen.header("authorization"), Some("Bearer grpc-token"));
    assert_eq!(seen.body, request);
}

#[tokio::test]
async fn h2c_client_reaches_an_http1_upstream() {
    // An h2c client in front of a plain HTTP/1.1 upstream (the common case: auto on cleartext).
    let mock = MockUpstream::start(|_| Reply::json(200, &json!({"ok": true}))).await;
    let proxy = one_upstream("", &mock).await;
    let req = Request::get(proxy.url("/api/v1/ping"))
        .body(empty())
        .unwrap();
    let answer = send(&h2c_client(), req).await;
    assert_eq!(answer.version, Version::HTTP_2);
    assert_eq!(answer.status, 200);
    assert_eq!(answer.json(), json!({"ok": true}));
    assert_eq!(mock.only_request().version, Version::HTTP_11);
}

#[tokio::test]
async fn websocket_upgrade_is_tunnelled_with_the_credential_on_the_handshake() {
    let mock = MockUpstream::start(|req| {
        if req.header("upgrade") != Some("websocket") {
            return Reply::with(426, &[], "upgrade required");
        }
        Reply::Upgrade(response(
            101,
            &[
                ("upgrade", "websocket"),
                ("connection", "Upgrade"),
                ("sec-websocket-accept", "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="),
            ],
            empty(),
        ))
    })
    .await;
    let proxy = one_upstream("    auth: { type: bearer, token: ws-secret }\n", &mock).await;
    let mut conn = RawConn::connect(proxy.addr).await;
    conn.write(
        b"GET /api/v1/realtime?model=x HTTP/1.1\r\n\
          Host: 127.0.0.1\r\n\
          Connection: Upgrade\r\n\
          Upgrade: websocket\r\n\
          Authorization: Bearer app-placeholder\r\n\
          Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
          Sec-WebSocket-Version: 13\r\n\r\n",
    )
    .await;
    let handshake = conn.read_response().await;
    assert_eq!(handshake.status, 101, "{handshake:#?}");
    assert_eq!(handshake.header("upgrade"), Some("websocket"));
    assert_eq!(
        handshake.header("sec-websocket-accept"),
        Some("s3pPLMBiTxaQ9kYGzzhZRbK+xOo=")
    );

    // A masked text frame "hello" and then raw bytes: both come back verbatim.
    let frame = [
        0x81, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58,
    ];
    conn.write(&frame).await;
    assert_eq!(&conn.read_exact(frame.len()).await[..], &frame);
    conn.write(b"second message, client to server").await;
    assert_eq!(
        &conn.read_exact(32).await[..],
        b"second message, client to server"
    );

    let seen = mock.only_request();
    assert_eq!(seen.uri, "/v1/realtime?model=x");
    assert_eq!(seen.header("authorization"), Some("Bearer ws-secret"));
    assert_eq!(
        seen.header("sec-websocket-key"),
        Some("dGhlIHNhbXBsZSBub25jZQ==")
    );
    assert!(seen
        .header("connection")
        .is_some_and(|c| c.to_ascii_lowercase().contains("upgrade")));
}

#[tokio::test]
async fn graphql_and_soap_pass_through_byte_identical() {
    let graphql_answer =
        r#"{"data":{"viewer":{"login":"octocat","repositories":{"totalCount":8}}}}"#;
    let soap_answer = "<?xml version=\"1.0\" encoding=\"utf-8\"?>\n<soap:Envelope xmlns:soap=\"http://schemas.xmlsoap.org/soap/envelope/\"><soap:Body><AddResponse xmlns=\"http://tempuri.org/\"><AddResult>5</AddResult></AddResponse></soap:Body></soap:Envelope>";
    let mock = MockUpstream::start(move |req| match req.path() {
        "/graphql" => Reply::with(
            200,
            &[("content-type", "application/json; charset=utf-8")],
            graphql_answer,
        ),
        _ => Reply::with(
            200,
            &[("content-type", "text/xml; charset=utf-8")],
            soap_answer,
        ),
    })
    .await;
    let proxy = one_upstream("", &mock).await;

    let query = r#"{"query":"query { viewer { login repositories(first: 1) { totalCount } } }","variables":{"n":1},"operationName":null}"#;
    let response = proxy
        .request(
            "POST",
            "/api/graphql",
            &[("content-type", "application/json")],
            query,
        )
        .await;
    assert_eq!(response.status, 200);
    assert_eq!(response.body, graphql_answer.as_bytes());
    assert_eq!(
        response.header("content-type"),
        Some("application/json; charset=utf-8")
    );
    let seen = mock.next_request().await;
    assert_eq!(seen.body, query.as_bytes());
    assert_eq!(seen.header("content-type"), Some("application/json"));

    let envelope = "<?xml version=\"1.0\" encoding=\"utf-8\"?>\r\n<soap:Envelope xmlns:soap=\"http://schemas.xmlsoap.org/soap/envelope/\">\r\n  <soap:Body><Add xmlns=\"http://tempuri.org/\"><intA>2</intA><intB>3</intB></Add></soap:Body>\r\n</soap:Envelope>";
    let response = proxy
        .request(
            "POST",
            "/api/calculator.asmx",
            &[
                ("content-type", "text/xml; charset=utf-8"),
                ("soapaction", "\"http://tempuri.org/Add\""),
            ],
            envelope,
        )
        .await;
    assert_eq!(response.status, 200);
    assert_eq!(response.body, soap_answer.as_bytes());
    let seen = mock.next_request().await;
    assert_eq!(seen.body, envelope.as_bytes());
    assert_eq!(
        seen.header("soapaction"),
        Some("\"http://tempuri.org/Add\"")
    );
    assert_eq!(seen.header("content-type"), Some("text/xml; charset=utf-8"));
}

#[tokio::test]
async fn upstream_errors_pass_through_untouched_with_their_classification() {
    let mock = MockUpstream::start(|req| {
        let status: u16 = req.path().trim_start_matches('/').parse().unwrap();
        Reply::with(
            status,
            &[
                ("content-type", "application/vnd.provider+json"),
                ("x-provider-trace", "abc"),
                // 0: a longer wait would (rightly) pause the upstream's limiter for the next
                // requests of this test.
                ("retry-after", "0"),
            ],
            format!("{{\"error\":{{\"code\":{status},\"message\":\"provider says so\"}}}}"),
        )
    })
    .await;
    let proxy = one_upstream("    retry: { max_attempts: 1 }\n", &mock).await;
    for (status, kind) in [
        (400, Some("client_error")),
        (401, Some("authentication_failed")),
        (403, Some("authentication_failed")),
        (404, Some("not_found")),
        (409, Some("client_error")),
        (422, Some("client_error")),
        (429, Some("rate_limited")),
        (500, Some("upstream_error")),
        (503, Some("upstream_error")),
        (200, None),
        (201, None),
    ] {
        let response = proxy
            .request("POST", &format!("/api/{status}"), &[], "{}")
            .await;
        assert_eq!(response.status.as_u16(), status);
        assert_eq!(response.header("x-outpost-error"), kind, "{status}");
        assert_eq!(
            response.header("content-type"),
            Some("application/vnd.provider+json")
        );
        assert_eq!(response.header("x-provider-trace"), Some("abc"));
        assert_eq!(response.header("retry-after"), Some("0"));
        assert_eq!(
            response.text(),
            format!("{{\"error\":{{\"code\":{status},\"message\":\"provider says so\"}}}}"),
            "the body is the provider's, untouched"
        );
    }
    assert_eq!(mock.count(), 11, "one attempt each");
}

#[tokio::test]
async fn unreachable_upstream_is_502_with_every_contract_field() {
    let dead = free_port();
    let proxy = Proxy::start(&format!(
        r#"
        upstreams:
          dead:
            base_url: http://127.0.0.1:{dead}
            retry: {{ max_attempts: 1 }}
        "#
    ))
    .await;
    let response = proxy
        .request("GET", "/dead/v1/x", &[("x-request-id", "trace-502")], "")
        .await;
    let error = response.assert_error(502, "upstream_unreachable");
    assert_eq!(error["upstream"], "dead");
    assert_eq!(error["request_id"], "trace-502");
    assert_eq!(response.header("x-request-id"), Some("trace-502"));
    assert_eq!(error["retryable"], true);
    let keys: Vec<&str> = error
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    for key in [
        "type",
        "message",
        "status",
        "retryable",
        "request_id",
        "upstream",
    ] {
        assert!(keys.contains(&key), "missing `{key}` in {error}");
    }
    let metrics = proxy.metrics();
    assert!(
        metrics.contains(
            r#"outpost_upstream_attempts_total{upstream="dead",outcome="connect_error"} 1"#
        ),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"outpost_requests_total{upstream="dead",method="GET",status="502"} 1"#)
    );
}

#[tokio::test]
async fn attempt_timeout_is_504() {
    let mock = MockUpstream::start(|_| Reply::Never).await;
    let proxy = one_upstream(
        "    attempt_timeout: 200ms\n    timeout: 10s\n    retry: { max_attempts: 1 }\n",
        &mock,
    )
    .await;
    let started = tokio::time::Instant::now();
    let response = proxy.get("/api/v1/slow").await;
    let error = response.assert_error(504, "upstream_timeout");
    assert_eq!(error["upstream"], "api");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "attempt_timeout (200ms) must apply, not timeout (10s)"
    );
    assert_eq!(mock.count(), 1);
}

#[tokio::test]
async fn total_timeout_is_504() {
    let mock = MockUpstream::start(|_| Reply::Never).await;
    let proxy = one_upstream(
        "    timeout: 250ms\n    retry: { max_attempts: 1 }\n",
        &mock,
    )
    .await;
    let response = proxy.get("/api/v1/slow").await;
    response.assert_error(504, "upstream_timeout");
}

/// `connect_timeout`: a listener whose accept queue is full drops new SYNs (Linux), so a
/// connect to it hangs, which is a portable-enough local blackhole. With `connect_timeout:
/// 300ms` and `attempt_timeout: 10s`, a 502 `upstream_unreachable` within a few seconds shows
/// the value reached the connector (without it, the attempt timeout would give 504 after 10s).
/// Where the kernel accepts everything anyway (no blackhole can be made), the test says so and
/// checks nothing.
#[tokio::test]
async fn connect_timeout_reaches_the_connector() {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let listener = socket.listen(0).unwrap();
    let addr = listener.local_addr().unwrap();
    let mut fillers = Vec::new();
    let mut blackholed = false;
    for _ in 0..64 {
        match tokio::time::timeout(
            Duration::from_millis(200),
            tokio::net::TcpStream::connect(addr),
        )
        .await
        {
            Ok(Ok(stream)) => fillers.push(stream),
            Ok(Err(e)) => panic!("connect to the full listener failed outright: {e}"),
            Err(_) => {
                blackholed = true;
                break;
            }
        }
    }
    if !blackholed {
        eprintln!("connect_timeout_reaches_the_connector: this kernel accepted 64 connections on a backlog-0 listener; no local blackhole, nothing checked");
        return;
    }
    let proxy = Proxy::start(&format!(
        r#"
        upstreams:
          hole:
            base_url: http://{addr}
            connect_timeout: 300ms
            attempt_timeout: 10s
            timeout: 20s
            retry: {{ max_attempts: 1 }}
        "#
    ))
    .await;
    let started = tokio::time::Instant::now();
    let response = proxy.get("/hole/v1").await;
    let elapsed = started.elapsed();
    response.assert_error(502, "upstream_unreachable");
    assert!(elapsed < Duration::from_secs(5), "took {elapsed:?}");
    drop(listener);
    drop(fillers);
}

async fn tls_proxy(ca_file: Option<&std::path::Path>, mock: &MockUpstream) -> Proxy {
    let tls = ca_file.map_or(String::new(), |p| {
        format!("    tls: {{ ca_file: {} }}\n", p.display())
    });
    Proxy::start(&format!(
        "upstreams:\n  secure:\n    base_url: {}\n    retry: {{ max_attempts: 1 }}\n    auth: {{ type: bearer, token: tls-secret }}\n{tls}",
        mock.url("/api")
    ))
    .await
}

#[tokio::test]
async fn https_upstream_with_ca_file_negotiates_h2_or_http1_by_alpn() {
    let dir = TempDir::new("tls");
    for (alpn, expected) in [
        (&[&b"h2"[..], &b"http/1.1"[..]][..], Version::HTTP_2),
        (&[&b"http/1.1"[..]][..], Version::HTTP_11),
        (&[&b"h2"[..]][..], Version::HTTP_2),
    ] {
        let (ca_pem, server) = tls_server(alpn);
        let ca = dir.write(&format!("ca-{}.pem", uuid::Uuid::new_v4().simple()), ca_pem);
        let mock =
            MockUpstream::start_tls(|_| Reply::json(200, &json!({"secure": true})), server).await;
        let proxy = tls_proxy(Some(&ca), &mock).await;
        let response = proxy.get("/secure/v1/charges?limit=1").await;
        assert_eq!(response.status, 200, "{alpn:?}: {}", response.text());
        assert_eq!(response.json(), json!({"secure": true}));
        let seen = mock.only_request();
        assert_eq!(seen.version, expected, "ALPN {alpn:?}");
        assert_eq!(seen.uri, "/api/v1/charges?limit=1");
        assert_eq!(seen.header("authorization"), Some("Bearer tls-secret"));
        if expected == Version::HTTP_11 {
            assert_eq!(seen.header("host"), Some(mock.addr.to_string().as_str()));
        }
    }
}

#[tokio::test]
async fn https_upstream_without_its_ca_is_502() {
    let (_ca_pem, server) = tls_server(&[b"h2", b"http/1.1"]);
    let mock = MockUpstream::start_tls(|_| Reply::text(200, "must not be reached"), server).await;
    let proxy = tls_proxy(None, &mock).await;
    let response = proxy.get("/secure/v1/charges").await;
    let error = response.assert_error(502, "upstream_unreachable");
    assert_eq!(error["upstream"], "secure");
    assert_eq!(mock.count(), 0, "no request over an untrusted connection");
    let metrics = proxy.metrics();
    assert!(
        metrics.contains(
            r#"outpost_upstream_attempts_total{upstream="secure",outcome="tls_error"} 1"#
        ),
        "{metrics}"
    );
}

#[tokio::test]
async fn in_flight_gauge_counts_requests_being_served() {
    let gate: Arc<Mutex<Vec<tokio::sync::oneshot::Sender<http::Response<TestBody>>>>> =
        Arc::default();
    let senders = gate.clone();
    let mock = MockUpstream::start(move |_| {
        let (tx, rx) = tokio::sync::oneshot::channel();
        senders.lock().unwrap().push(tx);
        Reply::Wait(rx)
    })
    .await;
    let proxy = one_upstream("", &mock).await;
    let mut pending = Vec::new();
    for i in 0..3 {
        let client = proxy.client.clone();
        let req = proxy.build("GET", &format!("/api/v1/{i}"), &[], empty());
        pending.push(tokio::spawn(async move { send(&client, req).await }));
    }
    for _ in 0..3 {
        mock.next_request().await;
    }
    let metrics = proxy.metrics();
    assert!(
        metrics.contains(r#"outpost_in_flight_requests{upstream="api"} 3"#),
        "{metrics}"
    );
    for tx in gate.lock().unwrap().drain(..) {
        let _ = tx.send(response(200, &[], full("done")));
    }
    for task in pending {
        assert_eq!(guard("in-flight request", task).await.unwrap().status, 200);
    }
    let metrics = proxy.metrics();
    assert!(
        metrics.contains(r#"outpost_in_flight_requests{upstream="api"} 0"#),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"outpost_requests_total{upstream="api",method="GET",status="200"} 3"#)
    );
}

#[tokio::test]
async fn expect_100_continue_uploads_work() {
    let mock = MockUpstream::ok().await;
    let proxy = one_upstream("", &mock).await;
    let mut conn = RawConn::connect(proxy.addr).await;
    conn.write(
        b"POST /api/v1/files HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 11\r\n\
          Content-Type: text/plain\r\nExpect: 100-continue\r\nConnection: close\r\n\r\n",
    )
    .await;
    let interim = conn.read_response().await;
    assert_eq!(
        interim.status, 100,
        "curl waits for 100 Continue: {interim:#?}"
    );
    conn.write(b"hello world").await;
    let done = conn.read_response().await;
    assert_eq!(done.status, 200, "{}", done.text());
    assert_eq!(&mock.only_request().body[..], b"hello world");
}

/// `hosts:` routes by Host / :authority with the path unchanged: gRPC clients that cannot add
/// a path prefix. The h2 client here sets :authority to the route host while connecting to the
/// proxy's address.
#[tokio::test]
async fn hosts_route_by_authority_for_grpc_clients() {
    let mock = MockUpstream::start(|_| {
        Reply::Respond(response(
            200,
            &[("content-type", "application/grpc")],
            body_with_trailers(grpc_frame(b"pong"), header_map(&[("grpc-status", "0")])),
        ))
    })
    .await;
    let other = MockUpstream::ok().await;
    let proxy = Proxy::start(&format!(
        r#"
        upstreams:
          grpc:
            base_url: {}
            http: http2
            hosts: [grpc.outpost.local]
            auth: {{ type: bearer, token: grpc-host-token }}
          other:
            base_url: {}
        "#,
        mock.url(""),
        other.url(""),
    ))
    .await;

    let tcp = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    let (mut h2, connection) = guard("h2 handshake", h2::client::handshake(tcp))
        .await
        .unwrap();
    tokio::spawn(connection);
    let req = Request::post("http://grpc.outpost.local:8080/ping.Pinger/Ping")
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(())
        .unwrap();
    let (response, mut stream) = h2.send_request(req, false).unwrap();
    stream.send_data(grpc_frame(b"ping"), true).unwrap();
    let response = guard("h2 response", response).await.unwrap();
    assert_eq!(response.status(), 200);
    let mut body = response.into_body();
    let mut data = Vec::new();
    while let Some(chunk) = guard("h2 data", body.data()).await {
        let chunk = chunk.unwrap();
        let _ = body.flow_control().release_capacity(chunk.len());
        data.extend_from_slice(&chunk);
    }
    assert_eq!(data, grpc_frame(b"pong"));
    let trailers = guard("h2 trailers", body.trailers())
        .await
        .unwrap()
        .expect("trailers");
    assert_eq!(trailers["grpc-status"], "0");
    let seen = mock.only_request();
    assert_eq!(seen.uri, "/ping.Pinger/Ping", "path unchanged");
    assert_eq!(seen.header("authorization"), Some("Bearer grpc-host-token"));

    // HTTP/1.1 with a Host header works the same way; other hosts route by path.
    let mut conn = RawConn::connect(proxy.addr).await;
    conn.write(
        b"GET /v1/by-host HTTP/1.1\r\nHost: GRPC.outpost.local:8080\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(conn.read_response().await.status, 200);
    assert_eq!(mock.requests().last().unwrap().uri, "/v1/by-host");
    let answer = proxy.get("/other/v1").await;
    assert_eq!(answer.status, 200);
    assert_eq!(other.only_request().uri, "/v1");
}
