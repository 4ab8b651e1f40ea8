//! `oauth2_client_credentials` end to end (issue 5, item 2): the proxy in-process, an
//! in-process token server (a [`MockUpstream`] answering JSON) and a mock API upstream, all on
//! `127.0.0.1:0`.
//!
//! Covered: the token is fetched and injected (the application's own `Authorization` is
//! replaced); basic and body client authentication and the scope/audience/params form fields as
//! the token server sees them; caching; single flight (100 concurrent requests on a cold cache
//! → exactly one fetch); short-lived tokens refreshed before use and never used past expiry;
//! a failing refresh keeps the still-valid token until its expiry; a 401 from the upstream →
//! one refresh and one retry, whatever the method; token endpoint down or unreachable →
//! `503 credentials_unavailable`, then recovery; the client secret and tokens never appear in
//! logs (TRACE), `/metrics`, error bodies or `outpost check` output.
//!
//! Timing: token lifetimes are measured at the token server with `std::time::Instant`; the
//! only real-time waits are the lifetimes under test, observed by polling.

mod support;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine;
use serde_json::json;
use support::*;
use tokio::sync::oneshot;

const CLIENT_ID: &str = "outpost-client";
const CLIENT_SECRET: &str = "cs-CANARY-5e1f0b7d";
/// Every access token the token server issues contains this.
const TOKEN_CANARY: &str = "at-CANARY-93c4";

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

/// An in-process OAuth2 token server: issues `at-CANARY-…-N` tokens with `expires_in`
/// seconds, or fails while `failing` is set; records when each token was issued.
struct TokenServer {
    mock: MockUpstream,
    issued: Arc<Mutex<Vec<Instant>>>,
    failing: Arc<AtomicBool>,
}

impl TokenServer {
    async fn start(expires_in: Option<f64>) -> Self {
        let issued = Arc::new(Mutex::new(Vec::new()));
        let failing = Arc::new(AtomicBool::new(false));
        let (i, f) = (issued.clone(), failing.clone());
        let mock = MockUpstream::start(move |_| {
            if f.load(Ordering::SeqCst) {
                return Reply::json(
                    500,
                    &json!({"error": "server_error", "error_description": CLIENT_SECRET}),
                );
            }
            let mut issued = i.lock().unwrap();
            issued.push(Instant::now());
            Reply::json(200, &token_json(issued.len(), expires_in))
        })
        .await;
        TokenServer {
            mock,
            issued,
            failing,
        }
    }

    fn url(&self) -> String {
        self.mock.url("/oauth/token")
    }

    fn fetches(&self) -> usize {
        self.mock.count()
    }

    fn issued_at(&self, n: usize) -> Instant {
        self.issued.lock().unwrap()[n - 1]
    }
}

fn token_json(n: usize, expires_in: Option<f64>) -> serde_json::Value {
    let mut body = json!({"access_token": format!("{TOKEN_CANARY}-{n}"), "token_type": "Bearer"});
    if let Some(expires_in) = expires_in {
        body["expires_in"] = json!(expires_in);
    }
    body
}

/// The token number of `Authorization: Bearer at-CANARY-…-N`.
fn token_number(authorization: Option<&str>) -> Option<usize> {
    authorization?
        .strip_prefix(&format!("Bearer {TOKEN_CANARY}-"))?
        .parse()
        .ok()
}

/// One upstream `api` with oauth2 auth against `token_url`; `auth_extra` and `extra` are YAML
/// lines added to the auth block and to the upstream.
fn config(api: &str, token_url: &str, auth_extra: &str, extra: &str) -> String {
    let mut yaml = format!(
        "upstreams:\n  api:\n    base_url: {api}\n    auth:\n      type: oauth2_client_credentials\n      \
         token_url: {token_url}\n      client_id: {CLIENT_ID}\n      client_secret: \"{CLIENT_SECRET}\"\n"
    );
    for line in dedent(auth_extra).lines() {
        yaml.push_str(&format!("      {line}\n"));
    }
    for line in dedent(extra).lines() {
        yaml.push_str(&format!("    {line}\n"));
    }
    yaml
}

fn field<'a>(form: &'a [(String, String)], name: &str) -> Option<&'a str> {
    form.iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

fn refreshes(proxy: &Proxy, result: &str) -> f64 {
    metric(
        &proxy.metrics(),
        "outpost_oauth_token_refreshes_total",
        &[("upstream", "api"), ("result", result)],
    )
    .unwrap_or(0.0)
}

fn assert_no_secret(label: &str, bytes: &[u8]) {
    let text = String::from_utf8_lossy(bytes);
    for canary in [CLIENT_SECRET, TOKEN_CANARY] {
        assert!(
            !text.contains(canary),
            "{label} contains the secret or a token `{canary}`:\n{text}"
        );
    }
    // The basic client credential in its encoded form, too.
    let basic =
        base64::engine::general_purpose::STANDARD.encode(format!("{CLIENT_ID}:{CLIENT_SECRET}"));
    assert!(
        !text.contains(&basic),
        "{label} contains the basic credential"
    );
}

// ---------------------------------------------------------------------------------------------
// Fetching and injecting
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn token_is_fetched_with_basic_client_auth_and_injected() {
    let idp = TokenServer::start(Some(3600.0)).await;
    let api = MockUpstream::ok().await;
    let proxy = Proxy::start(&config(
        &api.url(""),
        &idp.url(),
        r#"
        scopes: [read:things, write]
        audience: https://api.example/
        params: { resource: "urn:api a" }
        "#,
        "",
    ))
    .await;
    let answer = proxy
        .request(
            "GET",
            "/api/v1/things?limit=1",
            &[
                ("authorization", "Bearer app-own"),
                ("proxy-authorization", "Basic app"),
            ],
            "",
        )
        .await;
    assert_eq!(answer.status, 200, "{}", answer.text());

    let seen = api.only_request();
    assert_eq!(seen.uri, "/v1/things?limit=1");
    assert_eq!(
        seen.header("authorization"),
        Some(format!("Bearer {TOKEN_CANARY}-1").as_str())
    );
    assert!(!seen.has("proxy-authorization"));

    let token_request = idp.mock.only_request();
    assert_eq!(token_request.method, "POST");
    assert_eq!(token_request.path(), "/oauth/token");
    assert_eq!(
        token_request.header("content-type"),
        Some("application/x-www-form-urlencoded")
    );
    assert_eq!(token_request.header("accept"), Some("application/json"));
    let basic =
        base64::engine::general_purpose::STANDARD.encode(format!("{CLIENT_ID}:{CLIENT_SECRET}"));
    assert_eq!(
        token_request.header("authorization"),
        Some(format!("Basic {basic}").as_str())
    );
    let fields = form_pairs(&token_request.body);
    assert_eq!(field(&fields, "grant_type"), Some("client_credentials"));
    assert_eq!(field(&fields, "scope"), Some("read:things write"));
    assert_eq!(field(&fields, "audience"), Some("https://api.example/"));
    assert_eq!(field(&fields, "resource"), Some("urn:api a"));
    assert_eq!(field(&fields, "client_id"), None, "basic: not in the body");
    assert_eq!(field(&fields, "client_secret"), None);
    assert_eq!(refreshes(&proxy, "ok"), 1.0);
    assert_eq!(refreshes(&proxy, "error"), 0.0);
    proxy.shutdown().await;
}

#[tokio::test]
async fn body_client_auth_sends_the_credentials_in_the_form() {
    let idp = TokenServer::start(None).await;
    let api = MockUpstream::ok().await;
    let proxy = Proxy::start(&config(&api.url(""), &idp.url(), "client_auth: body", "")).await;
    assert_eq!(proxy.get("/api/x").await.status, 200);
    let token_request = idp.mock.only_request();
    assert!(!token_request.has("authorization"));
    let fields = form_pairs(&token_request.body);
    assert_eq!(
        fields,
        vec![
            ("grant_type".to_string(), "client_credentials".to_string()),
            ("client_id".to_string(), CLIENT_ID.to_string()),
            ("client_secret".to_string(), CLIENT_SECRET.to_string()),
        ],
        "no scope or audience when none is configured"
    );
    // No expires_in: the default lifetime (an hour) applies, so the token is reused.
    assert_eq!(proxy.get("/api/y").await.status, 200);
    assert_eq!(idp.fetches(), 1);
    proxy.shutdown().await;
}

#[tokio::test]
async fn token_is_cached_across_requests() {
    let idp = TokenServer::start(Some(3600.0)).await;
    let api = MockUpstream::ok().await;
    let proxy = Proxy::start(&config(&api.url(""), &idp.url(), "", "")).await;
    for i in 0..25 {
        let method = if i % 2 == 0 { "GET" } else { "POST" };
        let answer = proxy.request(method, "/api/v1/x", &[], "{}").await;
        assert_eq!(answer.status, 200);
    }
    assert_eq!(idp.fetches(), 1);
    assert!(api
        .requests()
        .iter()
        .all(|r| token_number(r.header("authorization")) == Some(1)));
    assert_eq!(refreshes(&proxy, "ok"), 1.0);
    proxy.shutdown().await;
}

/// 100 requests arrive while the cache is cold and the token server holds its answer: they
/// all wait for the one fetch, then all go out with its token.
#[tokio::test]
async fn hundred_concurrent_cold_requests_fetch_one_token() {
    let held: Arc<Mutex<Vec<oneshot::Sender<http::Response<TestBody>>>>> = Arc::default();
    let h = held.clone();
    let idp = MockUpstream::start(move |_| {
        let (tx, rx) = oneshot::channel();
        h.lock().unwrap().push(tx);
        Reply::Wait(rx)
    })
    .await;
    let api = MockUpstream::ok().await;
    let proxy = Arc::new(Proxy::start(&config(&api.url(""), &idp.url("/token"), "", "")).await);
    let tasks: Vec<_> = (0..100)
        .map(|i| {
            let proxy = proxy.clone();
            tokio::spawn(async move {
                let req = proxy.build("GET", &format!("/api/v1/items/{i}"), &[], empty());
                send(&http1_client(), req).await
            })
        })
        .collect();
    // The token request arrives (and is held) …
    idp.next_request().await;
    // … while all 100 requests are in flight, waiting for it.
    poll_until("100 requests waiting for the token", || {
        let text = proxy.metrics();
        async move {
            metric(
                &text,
                "outpost_in_flight_requests",
                &[("upstream", "api")],
            ) == Some(100.0)
        }
    })
    .await;
    assert_eq!(idp.count(), 1, "one fetch while 100 requests wait");
    let tx = held.lock().unwrap().pop().unwrap();
    let body = token_json(1, Some(3600.0)).to_string();
    tx.send(response(
        200,
        &[("content-type", "application/json")],
        full(body),
    ))
    .ok()
    .unwrap();
    for task in tasks {
        let answer = task.await.unwrap();
        assert_eq!(answer.status, 200, "{}", answer.text());
    }
    assert_eq!(idp.count(), 1, "exactly one token request");
    assert_eq!(api.count(), 100);
    assert!(api
        .requests()
        .iter()
        .all(|r| token_number(r.header("authorization")) == Some(1)));
    assert_eq!(refreshes(&proxy, "ok"), 1.0);
}

// ---------------------------------------------------------------------------------------------
// Expiry
// ---------------------------------------------------------------------------------------------

/// Tokens that live one second: requests keep flowing for a few lifetimes; each uses a token
/// its server issued less than a second earlier, and the tokens are refreshed, not fetched per
/// request.
#[tokio::test]
async fn short_lived_tokens_are_refreshed_and_never_used_past_expiry() {
    let idp = Arc::new(TokenServer::start(Some(1.0)).await);
    let late = Arc::new(Mutex::new(Vec::new()));
    let (i, l) = (idp.clone(), late.clone());
    let api = MockUpstream::start(move |req| {
        let now = Instant::now();
        match token_number(req.header("authorization")) {
            Some(n) => {
                let age = now - i.issued_at(n);
                if age >= Duration::from_secs(1) {
                    l.lock().unwrap().push((n, age));
                }
                Reply::text(200, "ok")
            }
            None => Reply::status(400),
        }
    })
    .await;
    let proxy = Proxy::start(&config(&api.url(""), &idp.url(), "", "")).await;
    let started = Instant::now();
    let mut requests = 0;
    // Poll until the fourth token is in use (about three lifetimes).
    guard("four token lifetimes", async {
        loop {
            let answer = proxy.get("/api/v1/x").await;
            assert_eq!(answer.status, 200, "{}", answer.text());
            requests += 1;
            let last = api.requests().last().unwrap().clone();
            if token_number(last.header("authorization")) >= Some(4) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    let elapsed = started.elapsed();
    let late = late.lock().unwrap().clone();
    assert!(late.is_empty(), "tokens used past their expiry: {late:?}");
    let fetches = idp.fetches();
    eprintln!("expires_in 1 s: {requests} requests, {fetches} token fetches in {elapsed:?}");
    assert!(
        requests > 4 * fetches,
        "{requests} requests, {fetches} fetches: not cached"
    );
    // One fetch per lifetime (less the ~5-10 % refresh margin), not more.
    assert!(
        fetches as f64 <= elapsed.as_secs_f64() / 0.85 + 1.0,
        "{fetches} fetches in {elapsed:?}"
    );
    assert_eq!(refreshes(&proxy, "ok"), fetches as f64);
    proxy.shutdown().await;
}

/// A refresh that fails while the token is still valid does not interrupt service; once the
/// token reaches its expiry, requests get 503 rather than the stale token.
#[tokio::test]
async fn failed_refresh_serves_the_valid_token_until_expiry_then_503() {
    let idp = TokenServer::start(Some(2.0)).await;
    let api = MockUpstream::ok().await;
    let proxy = Proxy::start(&config(&api.url(""), &idp.url(), "", "")).await;
    assert_eq!(proxy.get("/api/first").await.status, 200);
    let issued = idp.issued_at(1);
    idp.failing.store(true, Ordering::SeqCst);
    let refused = guard("the token's expiry", async {
        loop {
            let answer = proxy.get("/api/v1/x").await;
            if answer.status != 200 {
                return (answer, issued.elapsed());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    let (answer, age) = refused;
    eprintln!(
        "expires_in 2 s, refresh failing: first 503 at token age {age:?}, {} fetches",
        idp.fetches()
    );
    let error = answer.assert_error(503, "credentials_unavailable");
    assert!(
        age >= Duration::from_millis(1800),
        "refused at {age:?}: the token was valid until ~1.96 s after its fetch began"
    );
    assert!(idp.fetches() >= 2, "the background refresh was tried");
    assert!(api
        .requests()
        .iter()
        .all(|r| token_number(r.header("authorization")) == Some(1)));
    let message = error["message"].as_str().unwrap();
    assert!(
        message.contains("api") && message.contains("answered 500"),
        "{message}"
    );
    assert_no_secret("the 503 body", &answer.body);
    assert!(refreshes(&proxy, "error") >= 1.0);
    proxy.shutdown().await;
}

// ---------------------------------------------------------------------------------------------
// 401 from the upstream
// ---------------------------------------------------------------------------------------------

/// The upstream rejects the first token: one refresh and one retry, even for a POST without
/// an idempotency key and with retries switched off, with the body sent again.
#[tokio::test]
async fn upstream_401_refreshes_the_token_and_retries_once() {
    let idp = TokenServer::start(Some(3600.0)).await;
    let api = MockUpstream::start(|req| match token_number(req.header("authorization")) {
        Some(1) => Reply::json(401, &json!({"error": "invalid_token"})),
        _ => Reply::text(201, "created"),
    })
    .await;
    let proxy = Proxy::start(&config(
        &api.url(""),
        &idp.url(),
        "",
        "retry: { max_attempts: 1, idempotency_key: off }",
    ))
    .await;
    let answer = proxy
        .request("POST", "/api/v1/orders", &[], r#"{"item":42}"#)
        .await;
    assert_eq!(answer.status, 201, "{}", answer.text());
    let seen = api.requests();
    assert_eq!(seen.len(), 2);
    assert!(!seen[0].has("idempotency-key"));
    for (req, n) in seen.iter().zip([1, 2]) {
        assert_eq!(token_number(req.header("authorization")), Some(n));
        assert_eq!(req.body, r#"{"item":42}"#);
    }
    assert_eq!(idp.fetches(), 2);
    let text = proxy.metrics();
    assert_eq!(
        metric(
            &text,
            "outpost_retries_total",
            &[("upstream", "api"), ("reason", "auth_refresh")]
        ),
        Some(1.0)
    );
    assert_eq!(refreshes(&proxy, "ok"), 2.0);
    // The new token is cached: no more refreshes.
    assert_eq!(proxy.get("/api/v1/orders/1").await.status, 201);
    assert_eq!(idp.fetches(), 2);
    proxy.shutdown().await;
}

#[tokio::test]
async fn a_second_401_goes_back_to_the_application() {
    let idp = TokenServer::start(Some(3600.0)).await;
    let api = MockUpstream::start(|_| Reply::json(401, &json!({"error": "invalid_token"}))).await;
    let proxy = Proxy::start(&config(&api.url(""), &idp.url(), "", "")).await;
    let answer = proxy.request("PUT", "/api/v1/x", &[], "body").await;
    assert_eq!(answer.status, 401);
    assert_eq!(
        answer.header("x-outpost-error"),
        Some("authentication_failed")
    );
    assert_eq!(
        answer.json(),
        json!({"error": "invalid_token"}),
        "passthrough"
    );
    assert_eq!(api.count(), 2, "one retry only");
    assert_eq!(idp.fetches(), 2, "one refresh only");
    proxy.shutdown().await;
}

// ---------------------------------------------------------------------------------------------
// Token endpoint failures
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn token_endpoint_down_is_503_then_recovers() {
    let idp = TokenServer::start(Some(3600.0)).await;
    idp.failing.store(true, Ordering::SeqCst);
    let api = MockUpstream::ok().await;
    let proxy = Proxy::start(&config(&api.url(""), &idp.url(), "", "")).await;
    let answer = proxy.get("/api/v1/x").await;
    let error = answer.assert_error(503, "credentials_unavailable");
    assert_eq!(error["upstream"], "api");
    assert_eq!(error["retryable"], true);
    let message = error["message"].as_str().unwrap();
    assert!(
        message.contains(&idp.url()) && message.contains("answered 500 (server_error)"),
        "names the endpoint and its status: {message}"
    );
    assert_no_secret("the 503 body", &answer.body);
    api.assert_untouched("no token");

    // Back up: requests recover (after the short hold-off that spares a failing endpoint).
    idp.failing.store(false, Ordering::SeqCst);
    poll_until("recovery", || {
        let proxy = &proxy;
        async move { proxy.get("/api/v1/x").await.status == 200 }
    })
    .await;
    assert_eq!(
        token_number(api.only_request().header("authorization")),
        Some(1)
    );
    assert!(refreshes(&proxy, "error") >= 1.0);
    assert_eq!(refreshes(&proxy, "ok"), 1.0);
    proxy.shutdown().await;
}

#[tokio::test]
async fn unreachable_token_endpoint_is_503() {
    let api = MockUpstream::ok().await;
    let dead = format!("http://127.0.0.1:{}/oauth/token", free_port());
    let proxy = Proxy::start(&config(&api.url(""), &dead, "", "")).await;
    let answer = proxy.get("/api/v1/x").await;
    let error = answer.assert_error(503, "credentials_unavailable");
    let message = error["message"].as_str().unwrap();
    assert!(
        message.contains("unreachable") && message.contains(&dead),
        "{message}"
    );
    api.assert_untouched("no token");
    assert_eq!(refreshes(&proxy, "error"), 1.0);
    proxy.shutdown().await;
}

#[tokio::test]
async fn a_non_bearer_token_is_refused() {
    let idp = MockUpstream::start(|_| {
        Reply::json(
            200,
            &json!({"access_token": TOKEN_CANARY, "token_type": "mac", "expires_in": 60}),
        )
    })
    .await;
    let api = MockUpstream::ok().await;
    let proxy = Proxy::start(&config(&api.url(""), &idp.url("/t"), "", "")).await;
    let answer = proxy.get("/api/v1/x").await;
    let error = answer.assert_error(503, "credentials_unavailable");
    assert!(error["message"]
        .as_str()
        .unwrap()
        .contains("token_type `mac`"));
    assert_no_secret("the 503 body", &answer.body);
    api.assert_untouched("not a bearer token");
    proxy.shutdown().await;
}

// ---------------------------------------------------------------------------------------------
// Secrets
// ---------------------------------------------------------------------------------------------

/// The real binary at TRACE: a success, a 401 refresh-and-retry and a token endpoint failure;
/// neither the client secret nor any token appears in a log line, a response, `/metrics` or
/// `outpost check`.
#[tokio::test]
async fn secret_and_tokens_never_leak() {
    let idp = TokenServer::start(Some(3600.0)).await;
    let api = MockUpstream::start(|req| match token_number(req.header("authorization")) {
        Some(1) => Reply::status(401),
        _ => Reply::text(200, "ok"),
    })
    .await;
    let yaml = config(
        &api.url(""),
        &idp.url(),
        "scopes: [read]",
        "retry: { max_attempts: 2 }",
    );
    let mut binary = Binary::start(&yaml, &[("OUTPOST_LOG", "trace")]).await;
    let client = http1_client();
    let mut seen = Vec::new();
    for expected in [200, 200] {
        let req = http::Request::post(binary.url("/api/v1/x"))
            .header("authorization", "Bearer app-own")
            .body(full("a=1"))
            .unwrap();
        let answer = send(&client, req).await;
        assert_eq!(answer.status, expected, "{}", answer.text());
        seen.push(answer.body);
    }
    assert_eq!(idp.fetches(), 2, "the 401 caused one refresh");
    let metrics = get(&binary.admin_url("/metrics")).await;
    assert!(metrics
        .text()
        .contains(r#"outpost_oauth_token_refreshes_total{upstream="api",result="ok"} 2"#));
    assert_no_secret("/metrics", &metrics.body);
    for body in &seen {
        assert_no_secret("a response", body);
    }
    let check = binary.check().await;
    assert_eq!(check.code, Some(0), "{}", check.stderr);
    assert!(check.stdout.contains("oauth2_client_credentials"));
    assert!(!check.stdout.contains("not active"), "{}", check.stdout);
    assert_no_secret(
        "outpost check",
        format!("{}{}", check.stdout, check.stderr).as_bytes(),
    );

    let stderr = binary.stop_and_collect_stderr().await;
    let log = String::from_utf8_lossy(&stderr);
    assert!(log.contains("TRACE"), "the capture is at TRACE");
    assert!(log.contains("oauth2"), "token activity is logged:\n{log}");
    assert_no_secret("stderr (TRACE logs)", &stderr);
    assert_no_secret("stdout", &binary.stdout.bytes());
}

/// The same for the failure path: the token endpoint's error description echoes the secret
/// (a hostile or buggy server); it never reaches the application or the log.
#[tokio::test]
async fn token_endpoint_error_text_is_never_repeated() {
    let idp = TokenServer::start(Some(3600.0)).await;
    idp.failing.store(true, Ordering::SeqCst);
    let api = MockUpstream::ok().await;
    let yaml = config(&api.url(""), &idp.url(), "", "");
    let mut binary = Binary::start(&yaml, &[("OUTPOST_LOG", "trace")]).await;
    let answer = get(&binary.url("/api/v1/x")).await;
    answer.assert_error(503, "credentials_unavailable");
    assert_no_secret("the 503 body", &answer.body);
    let stderr = binary.stop_and_collect_stderr().await;
    assert!(String::from_utf8_lossy(&stderr).contains("oauth2 token request failed"));
    assert_no_secret("stderr (TRACE logs)", &stderr);
}
