//! Resilience end to end over real sockets (issue 3): safe retries and idempotency keys,
//! `Retry-After` and upstream pauses, connect and attempt failures, total timeouts, replayed
//! bodies, the local rate limit and its fairness under load, the circuit breaker, the retry
//! budget, `errors: normalize`, provider presets and key pools.
//!
//! Every upstream is a scripted [`MockUpstream`] on `127.0.0.1:0`; every proxy runs in-process
//! on port 0. Arrival times are taken inside the mock's handler with `std::time::Instant`
//! (and `SystemTime` for HTTP-date waits). Real-time waits appear only where the behaviour
//! under test *is* a wait (`Retry-After`, the breaker's `open_for`, the limiter's rate);
//! everything else is synchronised by channels, counters and polling under a hang guard.

mod support;

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use http_body::Frame;
use http_body_util::BodyExt;
use serde_json::json;
use support::*;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

// ---------------------------------------------------------------------------------------------
// Helpers (local to this file: tests/support/mod.rs is shared and left as it is)
// ---------------------------------------------------------------------------------------------

/// `upstreams: {NAME: {base_url: URL, …extra}}`; `extra` is YAML written at any indentation.
fn config_for(name: &str, base_url: &str, extra: &str) -> String {
    let mut yaml = format!("upstreams:\n  {name}:\n    base_url: {base_url}\n");
    for line in dedent(extra).lines() {
        yaml.push_str("    ");
        yaml.push_str(line);
        yaml.push('\n');
    }
    yaml
}

/// A proxy with one upstream `api` in front of `mock`.
async fn proxy_for(mock: &MockUpstream, extra: &str) -> Proxy {
    Proxy::start(&config_for("api", &mock.url(""), extra)).await
}

/// One request as it reached the mock, with when it arrived.
#[derive(Clone, Debug)]
struct Arrival {
    path: String,
    at: Instant,
    wall: SystemTime,
}

/// The arrival log of a stamped mock.
#[derive(Clone, Default)]
struct Arrivals(Arc<Mutex<Vec<Arrival>>>);

impl Arrivals {
    fn stamp(&self, req: &RecordedRequest) {
        let arrival = Arrival {
            path: req.path().to_string(),
            at: Instant::now(),
            wall: SystemTime::now(),
        };
        self.0.lock().unwrap().push(arrival);
    }

    fn all(&self) -> Vec<Arrival> {
        self.0.lock().unwrap().clone()
    }

    fn for_path(&self, path: &str) -> Vec<Arrival> {
        self.all().into_iter().filter(|a| a.path == path).collect()
    }
}

/// A mock that stamps each arrival and answers with `handler`.
async fn stamped(
    handler: impl Fn(&RecordedRequest) -> Reply + Send + Sync + 'static,
) -> (MockUpstream, Arrivals) {
    let arrivals = Arrivals::default();
    let log = arrivals.clone();
    let mock = MockUpstream::start(move |req| {
        log.stamp(req);
        handler(req)
    })
    .await;
    (mock, arrivals)
}

/// A stamped mock answering `replies` in order, then `200 ok`.
async fn stamped_queue(replies: Vec<Reply>) -> (MockUpstream, Arrivals) {
    let queue = Mutex::new(std::collections::VecDeque::from(replies));
    stamped(move |_| {
        queue
            .lock()
            .unwrap()
            .pop_front()
            .unwrap_or_else(|| Reply::text(200, "ok"))
    })
    .await
}

/// As [`metric`], with an absent series read as 0.
fn value(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    metric(text, name, labels).unwrap_or(0.0)
}

/// Await `fut`, failing after `limit` (a tighter hang guard than [`GUARD`]).
async fn within<F: Future>(limit: Duration, what: &str, fut: F) -> F::Output {
    match tokio::time::timeout(limit, fut).await {
        Ok(out) => out,
        Err(_) => panic!("hang guard: `{what}` did not finish within {limit:?}"),
    }
}

/// Poll the proxy's metrics until `name{labels}` reaches `at_least`.
async fn wait_metric(proxy: &Proxy, name: &str, labels: &[(&str, &str)], at_least: f64) {
    guard(&format!("metric {name}{labels:?} >= {at_least}"), async {
        while value(&proxy.metrics(), name, labels) < at_least {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    })
    .await
}

/// Poll until the mock has received `n` requests.
async fn wait_count(mock: &MockUpstream, n: usize) {
    guard(&format!("mock to see {n} requests"), async {
        while mock.count() < n {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    })
    .await
}

/// Send a request through the proxy on a task of its own.
fn spawn_request(
    proxy: &Proxy,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: TestBody,
) -> JoinHandle<Answer> {
    let client = proxy.client.clone();
    let req = proxy.build(method, path, headers, body);
    tokio::spawn(async move { send(&client, req).await })
}

/// The `/metrics` exposition fetched over HTTP from the admin listener.
async fn admin_metrics(proxy: &Proxy) -> String {
    let answer = get(&proxy.admin_url("/metrics")).await;
    assert_eq!(answer.status, 200, "{}", answer.text());
    answer.text()
}

const ATTEMPTS: &str = "outpost_upstream_attempts_total";
const RETRIES: &str = "outpost_retries_total";
const LIMITED: &str = "outpost_rate_limited_total";

// ---------------------------------------------------------------------------------------------
// 1-3. Safe retries and idempotency keys
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn get_retried_on_503_until_200_with_attempt_and_retry_metrics() {
    let mock = MockUpstream::queue(vec![Reply::status(503), Reply::status(503)]).await;
    let proxy = proxy_for(&mock, "").await;

    let answer = proxy.get("/api/v1/things").await;
    assert_eq!(answer.status, 200, "{}", answer.text());
    assert_eq!(answer.text(), "ok");
    assert_eq!(mock.count(), 3, "503, 503, 200: exactly three attempts");
    assert!(mock.requests().iter().all(|r| r.uri == "/v1/things"));

    let text = admin_metrics(&proxy).await;
    let up = ("upstream", "api");
    assert_eq!(
        value(&text, ATTEMPTS, &[up, ("outcome", "response")]),
        3.0,
        "{text}"
    );
    assert_eq!(
        value(&text, RETRIES, &[up, ("reason", "status")]),
        2.0,
        "{text}"
    );
    assert_eq!(
        value(&text, ATTEMPTS, &[up, ("outcome", "connect_error")]),
        0.0
    );
    assert_eq!(
        value(
            &text,
            "outpost_requests_total",
            &[up, ("method", "GET"), ("status", "200")]
        ),
        1.0,
        "one logical request: {text}"
    );
}

#[tokio::test]
async fn idempotent_methods_are_retried() {
    for method in ["PUT", "DELETE", "HEAD", "OPTIONS"] {
        let mock = MockUpstream::queue(vec![Reply::status(502)]).await;
        let proxy = proxy_for(&mock, "retry: {base_delay: 10ms}").await;
        let answer = proxy.request(method, "/api/v1/things/1", &[], "").await;
        assert_eq!(answer.status, 200, "{method}");
        assert_eq!(mock.count(), 2, "{method}: 502 then 200");
    }
}

#[tokio::test]
async fn post_without_key_is_sent_once_with_off_and_header_only() {
    for mode in ["off", "header_only"] {
        let mock = MockUpstream::queue(vec![Reply::text(503, "busy")]).await;
        let proxy = proxy_for(&mock, &format!("retry: {{idempotency_key: {mode}}}")).await;
        let answer = proxy
            .request(
                "POST",
                "/api/v1/charges",
                &[("content-type", "application/json")],
                "{\"amount\":1}",
            )
            .await;
        assert_eq!(answer.status, 503, "{mode}");
        assert_eq!(
            answer.header("x-outpost-error"),
            Some("upstream_error"),
            "{mode}"
        );
        assert_eq!(
            answer.text(),
            "busy",
            "{mode}: the upstream's own body passes through"
        );
        let seen = mock.only_request();
        assert!(!seen.has("idempotency-key"), "{mode}: no key is invented");
        assert_eq!(
            value(&proxy.metrics(), RETRIES, &[("reason", "status")]),
            0.0
        );
    }

    // `off`: even an application's key does not make a POST retryable.
    let mock = MockUpstream::queue(vec![Reply::status(503)]).await;
    let proxy = proxy_for(&mock, "retry: {idempotency_key: off}").await;
    let answer = proxy
        .request(
            "POST",
            "/api/v1/charges",
            &[("idempotency-key", "app-key-off")],
            "x",
        )
        .await;
    assert_eq!(answer.status, 503);
    assert_eq!(
        mock.only_request().header("idempotency-key"),
        Some("app-key-off")
    );

    // `header_only`: the application's key does make it retryable.
    let mock = MockUpstream::queue(vec![Reply::status(503)]).await;
    let proxy = proxy_for(&mock, "retry: {idempotency_key: header_only}").await;
    let answer = proxy
        .request(
            "POST",
            "/api/v1/charges",
            &[("idempotency-key", "app-key-ho")],
            "x",
        )
        .await;
    assert_eq!(answer.status, 200);
    assert_eq!(mock.count(), 2);
}

#[tokio::test]
async fn auto_idempotency_key_is_one_uuid_v4_on_every_attempt() {
    let mock = MockUpstream::queue(vec![Reply::status(503), Reply::status(503)]).await;
    let proxy = proxy_for(&mock, "retry: {idempotency_key: auto}").await;

    let answer = proxy
        .request(
            "POST",
            "/api/v1/charges",
            &[("content-type", "application/x-www-form-urlencoded")],
            "amount=100",
        )
        .await;
    assert_eq!(answer.status, 200, "{}", answer.text());
    let seen = mock.requests();
    assert_eq!(seen.len(), 3, "503, 503, 200");
    let key = seen[0]
        .header("idempotency-key")
        .expect("auto adds a key")
        .to_string();
    let uuid = uuid::Uuid::parse_str(&key).unwrap_or_else(|e| panic!("{key:?} is not a UUID: {e}"));
    assert_eq!(uuid.get_version_num(), 4, "{key}");
    for (i, r) in seen.iter().enumerate() {
        assert_eq!(
            r.header("idempotency-key"),
            Some(key.as_str()),
            "attempt {i} carries the same key"
        );
        assert_eq!(&r.body[..], b"amount=100");
    }

    // An application's own key is kept unchanged.
    let answer = proxy
        .request(
            "POST",
            "/api/v1/charges",
            &[("idempotency-key", "app-chosen-key-1")],
            "amount=5",
        )
        .await;
    assert_eq!(answer.status, 200);
    assert_eq!(
        mock.requests()[3].header("idempotency-key"),
        Some("app-chosen-key-1")
    );

    // PATCH gets a fresh key too; GET gets none.
    proxy
        .request("PATCH", "/api/v1/charges/ch_1", &[], "x=1")
        .await;
    let patch_key = mock.requests()[4]
        .header("idempotency-key")
        .map(str::to_string);
    let patch_key = patch_key.expect("PATCH gets a key");
    assert_ne!(patch_key, key, "a fresh key per logical request");
    assert_eq!(proxy.get("/api/v1/charges").await.status, 200);
    assert!(
        !mock.requests()[5].has("idempotency-key"),
        "GET gets no key"
    );
}

// ---------------------------------------------------------------------------------------------
// 4-5, 17. Retry-After and upstream pauses
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn retry_after_seconds_delays_the_retry_and_holds_other_requests() {
    let (mock, arrivals) =
        stamped_queue(vec![Reply::with(429, &[("retry-after", "2")], "slow down")]).await;
    let proxy = proxy_for(&mock, "").await;

    let first = spawn_request(&proxy, "GET", "/api/first", &[], empty());
    // The pause is in force once the proxy has decided to retry (it pauses before retrying).
    wait_metric(&proxy, RETRIES, &[("reason", "status")], 1.0).await;
    let second = spawn_request(&proxy, "GET", "/api/second", &[], empty());

    let first = within(Duration::from_secs(6), "first request", first)
        .await
        .unwrap();
    let second = within(Duration::from_secs(6), "second request", second)
        .await
        .unwrap();
    assert_eq!(first.status, 200, "{}", first.text());
    assert_eq!(second.status, 200, "{}", second.text());

    let firsts = arrivals.for_path("/first");
    assert_eq!(firsts.len(), 2, "429 then 200: {firsts:?}");
    let t0 = firsts[0].at;
    let retry_gap = firsts[1].at - t0;
    assert!(
        retry_gap >= Duration::from_secs(2),
        "retry came after {retry_gap:?}"
    );
    assert!(
        retry_gap < Duration::from_secs(4),
        "retry came after {retry_gap:?}"
    );
    let seconds = arrivals.for_path("/second");
    assert_eq!(seconds.len(), 1);
    let held = seconds[0].at - t0;
    assert!(
        held >= Duration::from_secs(2),
        "a request sent during the pause reached the upstream after {held:?}, before the pause ended"
    );
    assert_eq!(
        value(&proxy.metrics(), LIMITED, &[("source", "local")]),
        0.0
    );
}

#[tokio::test]
async fn retry_after_http_date_is_honoured() {
    let named: Arc<Mutex<Option<SystemTime>>> = Arc::default();
    let remember = named.clone();
    let answered = AtomicBool::new(false);
    let (mock, arrivals) = stamped(move |_| {
        if answered.swap(true, Ordering::SeqCst) {
            return Reply::text(200, "ok");
        }
        let date = httpdate::fmt_http_date(SystemTime::now() + Duration::from_secs(2));
        *remember.lock().unwrap() = Some(httpdate::parse_http_date(&date).unwrap());
        Reply::with(429, &[("retry-after", date.as_str())], "")
    })
    .await;
    let proxy = proxy_for(&mock, "").await;

    let answer = within(Duration::from_secs(6), "request", proxy.get("/api/x")).await;
    assert_eq!(answer.status, 200, "{}", answer.text());
    let seen = arrivals.all();
    assert_eq!(seen.len(), 2);
    let date = named.lock().unwrap().expect("date was sent");
    // The date has whole seconds, so the wait is between 1 and 2 s; the retry must not come
    // before the named instant.
    assert!(
        seen[1].wall >= date,
        "retry at {:?}, before the Retry-After date {:?}",
        seen[1].wall,
        date
    );
    let gap = seen[1].at - seen[0].at;
    assert!(
        gap >= Duration::from_secs(1) && gap < Duration::from_secs(4),
        "{gap:?}"
    );
}

#[tokio::test]
async fn retry_after_longer_than_max_retry_after_returns_the_429_at_once() {
    let mock = MockUpstream::queue(vec![Reply::with(
        429,
        &[("retry-after", "120"), ("content-type", "application/json")],
        r#"{"error":"quota"}"#,
    )])
    .await;
    let proxy = proxy_for(&mock, "retry: {max_retry_after: 30s}").await;

    let start = Instant::now();
    let answer = within(Duration::from_secs(5), "request", proxy.get("/api/x")).await;
    assert!(
        start.elapsed() < Duration::from_secs(2),
        "answered after {:?}",
        start.elapsed()
    );
    assert_eq!(answer.status, 429);
    assert_eq!(
        answer.text(),
        r#"{"error":"quota"}"#,
        "the upstream's answer passes through"
    );
    assert_eq!(answer.header("retry-after"), Some("120"));
    assert_eq!(answer.header("x-outpost-error"), Some("rate_limited"));
    assert_eq!(mock.count(), 1, "no retry");

    // The upstream's 429 paused the upstream: the next request is refused locally, at once,
    // without reaching the upstream (the pause is longer than the request's own timeout).
    let start = Instant::now();
    let answer = within(
        Duration::from_secs(5),
        "paused request",
        proxy.get("/api/y"),
    )
    .await;
    assert!(start.elapsed() < Duration::from_secs(2));
    let error = answer.assert_error(429, "rate_limited");
    let retry_after: u64 = answer
        .header("retry-after")
        .expect("Retry-After")
        .parse()
        .unwrap();
    assert!((100..=120).contains(&retry_after), "{retry_after}");
    assert!(
        error["retry_after_seconds"].as_f64().unwrap() > 100.0,
        "{error}"
    );
    assert_eq!(error["upstream"], "api");
    assert_eq!(mock.count(), 1);
    // Two requests held back by the upstream's limit: its own 429 answer, then the request
    // refused locally while the pause it named is in effect.
    assert_eq!(
        value(&proxy.metrics(), LIMITED, &[("source", "upstream")]),
        2.0
    );
}

#[tokio::test]
async fn retry_after_beyond_the_time_left_returns_the_answer_at_once() {
    let mock = MockUpstream::queue(vec![Reply::with(503, &[("retry-after", "5")], "later")]).await;
    let proxy = proxy_for(&mock, "timeout: 1s").await;
    let start = Instant::now();
    let answer = within(Duration::from_secs(5), "request", proxy.get("/api/x")).await;
    let elapsed = start.elapsed();
    assert_eq!(answer.status, 503);
    assert_eq!(answer.text(), "later");
    assert!(
        elapsed < Duration::from_millis(800),
        "answered after {elapsed:?}"
    );
    assert_eq!(mock.count(), 1, "a 5 s wait does not fit in a 1 s timeout");
}

#[tokio::test]
async fn rate_limit_reset_headers_delay_the_retry() {
    let reset_epoch = |wait: u64| {
        let now = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap();
        (now.as_secs() + wait).to_string()
    };
    let cases = [
        (
            "x-ratelimit-reset (delta)",
            "x-ratelimit-reset",
            "1".to_string(),
        ),
        // Epoch seconds have whole-second precision: now + 3 s is more than 1 s away.
        (
            "x-ratelimit-reset (epoch)",
            "x-ratelimit-reset",
            reset_epoch(3),
        ),
        (
            "IETF RateLimit",
            "ratelimit",
            r#""default";r=0;t=1"#.to_string(),
        ),
    ];
    let runs = cases.into_iter().map(|(what, name, val)| async move {
        let (mock, arrivals) =
            stamped_queue(vec![Reply::with(429, &[(name, val.as_str())], "")]).await;
        let proxy = proxy_for(&mock, "").await;
        let answer = within(Duration::from_secs(6), what, proxy.get("/api/x")).await;
        assert_eq!(answer.status, 200, "{what}");
        let seen = arrivals.all();
        assert_eq!(seen.len(), 2, "{what}");
        let gap = seen[1].at - seen[0].at;
        assert!(
            gap >= Duration::from_secs(1),
            "{what}: retried after {gap:?}"
        );
        assert!(
            gap < Duration::from_secs(4),
            "{what}: retried after {gap:?}"
        );
    });
    futures_util::future::join_all(runs).await;
}

#[tokio::test]
async fn upstream_429_pauses_the_next_request_even_without_retries() {
    let (mock, arrivals) = stamped_queue(vec![Reply::with(429, &[("retry-after", "1")], "")]).await;
    // No rate_limit configured: the pause-only limiter still holds requests.
    let proxy = proxy_for(&mock, "retry: {max_attempts: 1}").await;

    let first = proxy.get("/api/a").await;
    assert_eq!(first.status, 429);
    assert_eq!(first.header("x-outpost-error"), Some("rate_limited"));
    assert_eq!(mock.count(), 1, "max_attempts 1: no retry");
    let second = within(
        Duration::from_secs(5),
        "second request",
        proxy.get("/api/b"),
    )
    .await;
    assert_eq!(second.status, 200);
    let seen = arrivals.all();
    assert_eq!(seen.len(), 2);
    let gap = seen[1].at - seen[0].at;
    assert!(
        gap >= Duration::from_secs(1),
        "next request reached the upstream after {gap:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// 6-8. Connect failures, attempt and total timeouts
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn connect_refused_post_is_retried_then_502() {
    // A port with nothing listening: bind, read the port, close.
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let proxy = Proxy::start(&config_for(
        "api",
        &format!("http://127.0.0.1:{port}"),
        "retry: {max_attempts: 3, base_delay: 10ms}",
    ))
    .await;

    let answer = within(
        Duration::from_secs(5),
        "request",
        proxy.request("POST", "/api/v1/send", &[], "payload"),
    )
    .await;
    let error = answer.assert_error(502, "upstream_unreachable");
    assert_eq!(error["upstream"], "api");
    assert_eq!(error["retryable"], true);

    let text = proxy.metrics();
    assert_eq!(
        value(
            &text,
            ATTEMPTS,
            &[("upstream", "api"), ("outcome", "connect_error")]
        ),
        3.0,
        "nothing was sent, so even a POST without a key is tried max_attempts times: {text}"
    );
    assert_eq!(
        value(&text, RETRIES, &[("reason", "connect_error")]),
        2.0,
        "{text}"
    );
    assert_eq!(value(&text, ATTEMPTS, &[("outcome", "response")]), 0.0);
}

#[tokio::test]
async fn attempt_timeout_retries_get_but_not_post_without_key() {
    let mock = MockUpstream::start(|_| Reply::Never).await;
    let proxy = proxy_for(
        &mock,
        "
        timeout: 2s
        attempt_timeout: 200ms
        retry: {max_attempts: 3, base_delay: 10ms}
        ",
    )
    .await;

    let start = Instant::now();
    let answer = within(Duration::from_secs(5), "GET", proxy.get("/api/slow")).await;
    let elapsed = start.elapsed();
    let error = answer.assert_error(504, "upstream_timeout");
    assert_eq!(error["upstream"], "api");
    assert_eq!(error["retryable"], true, "a GET may be sent again");
    assert_eq!(mock.count(), 3, "three attempts of 200 ms each");
    assert!(
        elapsed >= Duration::from_millis(600) && elapsed < Duration::from_millis(1900),
        "{elapsed:?}"
    );
    let text = proxy.metrics();
    assert_eq!(
        value(&text, ATTEMPTS, &[("outcome", "timeout")]),
        3.0,
        "{text}"
    );
    assert_eq!(
        value(&text, RETRIES, &[("reason", "timeout")]),
        2.0,
        "{text}"
    );

    // The request reached the upstream: a POST without a key may have been processed.
    let answer = within(
        Duration::from_secs(5),
        "POST",
        proxy.request("POST", "/api/slow", &[], "x"),
    )
    .await;
    let error = answer.assert_error(504, "upstream_timeout");
    assert_eq!(
        error["retryable"], false,
        "the upstream may have processed this POST: the app must not blindly send it again"
    );
    assert_eq!(mock.count(), 4, "one attempt for the POST");

    // With the application's own Idempotency-Key, sending it again is safe.
    let answer = within(
        Duration::from_secs(5),
        "POST with key",
        proxy.request(
            "POST",
            "/api/slow",
            &[("idempotency-key", "app-key-1")],
            "x",
        ),
    )
    .await;
    let error = answer.assert_error(504, "upstream_timeout");
    assert_eq!(error["retryable"], true);
}

#[tokio::test]
async fn total_timeout_bounds_the_backoff() {
    let mock = MockUpstream::start(|_| Reply::status(503)).await;
    let proxy = proxy_for(
        &mock,
        "
        timeout: 500ms
        retry: {max_attempts: 10, base_delay: 2s}
        ",
    )
    .await;

    let start = Instant::now();
    let answer = within(Duration::from_secs(5), "request", proxy.get("/api/x")).await;
    let elapsed = start.elapsed();
    assert!(
        elapsed < Duration::from_millis(1000),
        "answered after {elapsed:?}"
    );
    assert!(
        answer.status == 503 || answer.status == 504,
        "the last upstream answer or upstream_timeout: {answer:?}"
    );
    assert!(
        mock.count() >= 1 && mock.count() < 10,
        "{} attempts",
        mock.count()
    );
}

// ---------------------------------------------------------------------------------------------
// 9. Bodies
// ---------------------------------------------------------------------------------------------

fn pattern(len: usize) -> Bytes {
    (0..len)
        .map(|i| (i * 7 % 251) as u8)
        .collect::<Vec<u8>>()
        .into()
}

#[tokio::test]
async fn buffered_body_is_replayed_identically_and_large_bodies_are_sent_once() {
    let payload = pattern(10 * 1024);
    let mock = MockUpstream::queue(vec![Reply::status(503), Reply::status(503)]).await;
    let proxy = proxy_for(&mock, "").await;
    let answer = proxy
        .request(
            "POST",
            "/api/upload",
            &[("idempotency-key", "body-key-1")],
            payload.clone(),
        )
        .await;
    assert_eq!(answer.status, 200);
    let seen = mock.requests();
    assert_eq!(seen.len(), 3);
    for (i, r) in seen.iter().enumerate() {
        assert_eq!(r.body_len, payload.len() as u64, "attempt {i}");
        assert!(r.body == payload, "attempt {i}: body differs");
    }

    // Over `retry.max_body_bytes`: streamed once, never retried, delivered intact.
    let mock = MockUpstream::start(|_| Reply::status(503)).await;
    let proxy = proxy_for(&mock, "retry: {max_body_bytes: 1KiB}").await;
    let large = pattern(8 * 1024);
    let answer = proxy
        .request(
            "POST",
            "/api/upload",
            &[("idempotency-key", "body-key-2")],
            large.clone(),
        )
        .await;
    assert_eq!(answer.status, 503, "the upstream's answer, not retried");
    let seen = mock.only_request();
    assert_eq!(seen.body_len, 8192);
    assert!(seen.body == large, "Content-Length body intact");

    // The same without Content-Length (chunked, 1 KiB frames): the buffer overflows mid-stream.
    let frames: Vec<Result<Frame<Bytes>, BoxError>> = large
        .chunks(1024)
        .map(|c| Ok(Frame::data(Bytes::copy_from_slice(c))))
        .collect();
    let body = http_body_util::StreamBody::new(futures_util::stream::iter(frames)).boxed_unsync();
    let answer = send(&proxy.client, proxy.build("PUT", "/api/upload", &[], body)).await;
    assert_eq!(answer.status, 503);
    let seen = mock.requests();
    assert_eq!(seen.len(), 2, "one attempt for the streamed PUT as well");
    assert_eq!(seen[1].method, "PUT");
    assert!(
        seen[1].body == large,
        "streamed body intact: {} bytes",
        seen[1].body_len
    );
    assert_eq!(
        value(&proxy.metrics(), RETRIES, &[("reason", "status")]),
        0.0
    );
}

// ---------------------------------------------------------------------------------------------
// 10-11. Local rate limit
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn local_rate_limit_rejects_at_once_with_retry_after() {
    let mock = MockUpstream::ok().await;
    let proxy = proxy_for(
        &mock,
        "rate_limit: {requests_per_second: 5, burst: 1, max_wait: 0s}",
    )
    .await;

    let tasks: Vec<_> = (0..10)
        .map(|i| spawn_request(&proxy, "GET", &format!("/api/r{i}"), &[], empty()))
        .collect();
    let mut admitted = 0;
    let mut limited = 0;
    for task in tasks {
        let answer = task.await.unwrap();
        match answer.status.as_u16() {
            200 => admitted += 1,
            429 => {
                limited += 1;
                let error = answer.assert_error(429, "rate_limited");
                let header: u64 = answer
                    .header("retry-after")
                    .expect("Outpost's 429 carries Retry-After")
                    .parse()
                    .unwrap();
                assert!(header >= 1, "{header}");
                let seconds = error["retry_after_seconds"]
                    .as_f64()
                    .expect("retry_after_seconds");
                assert!(seconds > 0.0 && seconds <= 1.0, "{error}");
                assert_eq!(error["upstream"], "api");
            }
            other => panic!("unexpected {other}: {}", answer.text()),
        }
    }
    assert!(admitted >= 1, "the burst token admits one");
    assert!(
        limited >= 5,
        "ten at once through 5/s, burst 1, no waiting: {admitted} admitted"
    );
    assert_eq!(admitted + limited, 10);
    assert_eq!(
        mock.count(),
        admitted,
        "only admitted requests reach the upstream"
    );
    let text = proxy.metrics();
    assert_eq!(
        value(&text, LIMITED, &[("upstream", "api"), ("source", "local")]),
        limited as f64,
        "{text}"
    );
    assert_eq!(
        value(&text, "outpost_requests_total", &[("status", "429")]),
        limited as f64,
        "local 429s are counted as answered requests"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_hundred_concurrent_requests_never_exceed_the_rate_and_none_is_lost() {
    let (mock, arrivals) = stamped(|_| Reply::text(200, "ok")).await;
    let proxy = proxy_for(
        &mock,
        "
        timeout: 15s
        attempt_timeout: 5s
        rate_limit: {requests_per_second: 50, burst: 1, max_wait: 10s}
        ",
    )
    .await;

    let start = Instant::now();
    let tasks: Vec<_> = (0..200)
        .map(|i| spawn_request(&proxy, "GET", &format!("/api/n/{i}"), &[], empty()))
        .collect();
    let mut ok = 0;
    for task in tasks {
        let answer = within(Duration::from_secs(15), "limited request", task)
            .await
            .unwrap();
        assert_eq!(answer.status, 200, "{}", answer.text());
        ok += 1;
    }
    let elapsed = start.elapsed();
    assert_eq!(ok, 200, "every request answered");
    assert_eq!(mock.count(), 200, "every request reached the upstream once");
    // 200 at 50/s with one token of burst: about 4 s.
    assert!(elapsed >= Duration::from_millis(3900), "{elapsed:?}");

    let mut times: Vec<Instant> = arrivals.all().into_iter().map(|a| a.at).collect();
    times.sort();
    let mut worst = 0;
    for (i, t) in times.iter().enumerate() {
        let in_window = times[i..]
            .iter()
            .take_while(|u| **u - *t < Duration::from_secs(1))
            .count();
        worst = worst.max(in_window);
    }
    // With burst 1 the limiter admits at most one request per 20 ms, so any half-open second
    // [t, t+1s) holds at most 50 admissions. The mock stamps arrivals a hop later than the
    // limiter admits them; that hop's jitter can pull one more arrival into a window, hence 51
    // (the rate plus the one burst token the contract allows).
    assert!(
        worst <= 51,
        "a one-second window at the upstream held {worst} requests"
    );
    assert!(
        worst >= 40,
        "the limiter should run near its rate, not far below: {worst}"
    );
    let text = proxy.metrics();
    assert_eq!(
        value(&text, "outpost_rate_limit_queued", &[("upstream", "api")]),
        0.0,
        "the queue gauge returns to zero: {text}"
    );
    assert_eq!(value(&text, LIMITED, &[("source", "local")]), 0.0);
}

#[tokio::test]
async fn max_in_flight_caps_concurrency_and_queues_within_max_wait() {
    let held: Arc<Mutex<Option<oneshot::Receiver<http::Response<TestBody>>>>> = Arc::default();
    let (release, rx) = oneshot::channel();
    *held.lock().unwrap() = Some(rx);
    let mock = {
        let held = held.clone();
        MockUpstream::start(move |_| match held.lock().unwrap().take() {
            Some(rx) => Reply::Wait(rx),
            None => Reply::text(200, "ok"),
        })
        .await
    };
    let proxy = proxy_for(
        &mock,
        "rate_limit: {requests_per_second: 1000, max_in_flight: 1, max_wait: 300ms}",
    )
    .await;

    let first = spawn_request(&proxy, "GET", "/api/slow", &[], empty());
    wait_count(&mock, 1).await;
    // The one slot is taken: a second request waits max_wait, then gets a local 429.
    let start = Instant::now();
    let answer = within(
        Duration::from_secs(5),
        "capped request",
        proxy.get("/api/b"),
    )
    .await;
    let waited = start.elapsed();
    let error = answer.assert_error(429, "rate_limited");
    assert!(answer.header("retry-after").is_some());
    assert!(error["retry_after_seconds"].as_f64().unwrap() > 0.0);
    assert!(
        waited >= Duration::from_millis(250),
        "queued for {waited:?}, not max_wait"
    );
    assert_eq!(mock.count(), 1);

    // A request that queues while the slot is busy goes through once it is freed.
    let mut third = spawn_request(&proxy, "GET", "/api/c", &[], empty());
    assert!(
        tokio::time::timeout(Duration::from_millis(100), &mut third)
            .await
            .is_err(),
        "the third request must wait for the slot"
    );
    assert_eq!(mock.count(), 1);
    assert!(release.send(response(200, &[], full("slow ok"))).is_ok());
    let first = within(Duration::from_secs(5), "first", first)
        .await
        .unwrap();
    assert_eq!(first.text(), "slow ok");
    let third = within(Duration::from_secs(5), "third", third)
        .await
        .unwrap();
    assert_eq!(third.status, 200, "{}", third.text());
    assert_eq!(mock.count(), 2);
}

// ---------------------------------------------------------------------------------------------
// 12-13. Circuit breaker and retry budget
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn circuit_breaker_opens_then_one_probe_closes_it() {
    let healthy = Arc::new(AtomicBool::new(false));
    let held: Arc<Mutex<Option<oneshot::Receiver<http::Response<TestBody>>>>> = Arc::default();
    let mock = {
        let healthy = healthy.clone();
        let held = held.clone();
        MockUpstream::start(move |_| {
            if !healthy.load(Ordering::SeqCst) {
                return Reply::status(503);
            }
            match held.lock().unwrap().take() {
                Some(rx) => Reply::Wait(rx),
                None => Reply::text(200, "ok"),
            }
        })
        .await
    };
    let proxy = proxy_for(
        &mock,
        "
        retry: {max_attempts: 1}
        circuit_breaker: {consecutive_failures: 3, open_for: 1s}
        ",
    )
    .await;
    let gauge = |p: &Proxy| value(&p.metrics(), "outpost_circuit_open", &[("upstream", "api")]);
    assert_eq!(gauge(&proxy), 0.0);

    let mut before_third = Instant::now();
    for i in 0..3 {
        before_third = Instant::now();
        let answer = proxy.get("/api/x").await;
        assert_eq!(answer.status, 503, "failure {i}");
        assert_eq!(answer.header("x-outpost-error"), Some("upstream_error"));
    }
    assert_eq!(mock.count(), 3);
    assert_eq!(
        gauge(&proxy),
        1.0,
        "three consecutive failures open the breaker"
    );

    let answer = proxy.get("/api/x").await;
    let error = answer.assert_error(503, "circuit_open");
    assert!(
        answer.header("retry-after").is_some(),
        "circuit_open carries Retry-After"
    );
    assert!(
        error["retry_after_seconds"].as_f64().unwrap() <= 1.0,
        "{error}"
    );
    assert_eq!(mock.count(), 3, "nothing reaches the upstream while open");

    // The upstream recovers; the first request after `open_for` is the (held) probe.
    healthy.store(true, Ordering::SeqCst);
    let (release, rx) = oneshot::channel();
    *held.lock().unwrap() = Some(rx);
    let poll_until = Instant::now() + GUARD;
    let probe = loop {
        assert!(
            Instant::now() < poll_until,
            "hang guard: the breaker never let a probe through"
        );
        let mut request = spawn_request(&proxy, "GET", "/api/x", &[], empty());
        tokio::select! {
            answer = &mut request => {
                answer.unwrap().assert_error(503, "circuit_open");
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
            () = wait_count(&mock, 4) => break request,
        }
    };
    let probe_sent = mock.requests()[3].clone();
    assert_eq!(probe_sent.path(), "/x");
    let open_time = before_third.elapsed();
    assert!(
        open_time >= Duration::from_secs(1),
        "probe after {open_time:?}, before open_for"
    );

    // While the probe is out, everyone else is still refused.
    let answer = proxy.get("/api/x").await;
    answer.assert_error(503, "circuit_open");
    assert!(answer.header("retry-after").is_some());
    assert_eq!(mock.count(), 4, "only one probe");

    release
        .send(response(200, &[], full("probe ok")))
        .ok()
        .unwrap();
    let probe = within(Duration::from_secs(5), "probe answer", probe)
        .await
        .unwrap();
    assert_eq!(probe.status, 200);
    assert_eq!(probe.text(), "probe ok");
    assert_eq!(gauge(&proxy), 0.0, "a successful probe closes the breaker");
    assert_eq!(proxy.get("/api/x").await.status, 200);
    assert_eq!(mock.count(), 5);
}

#[tokio::test]
async fn empty_retry_budget_allows_no_retry() {
    let mock = MockUpstream::start(|_| Reply::status(503)).await;
    let proxy = proxy_for(
        &mock,
        "retry: {budget_percent: 0, min_retries_per_second: 0}",
    )
    .await;
    let answer = proxy.get("/api/x").await;
    assert_eq!(answer.status, 503);
    assert_eq!(mock.count(), 1, "no budget: one attempt");
    assert_eq!(
        value(&proxy.metrics(), RETRIES, &[("reason", "status")]),
        0.0
    );
}

// ---------------------------------------------------------------------------------------------
// 14. errors: normalize
// ---------------------------------------------------------------------------------------------

async fn provider_errors_mock() -> MockUpstream {
    MockUpstream::start(|req| match req.path() {
        "/v1/customers/cus_x" => Reply::with(
            404,
            &[
                ("content-type", "application/json"),
                ("request-id", "req_1"),
            ],
            r#"{"error":{"message":"No such customer: 'cus_x'","type":"invalid_request_error"}}"#,
        ),
        "/v3/mail/send" => Reply::json(
            400,
            &json!({"errors": [{"message": "bad from", "field": "from"}]}),
        ),
        "/v1/me" => Reply::json(401, &json!({"message": "Bad credentials"})),
        "/v1/boom" => Reply::text(502, "<html>bad gateway</html>"),
        "/v1/limited" => Reply::with(
            429,
            &[("retry-after", "1"), ("content-type", "application/json")],
            r#"{"error":{"message":"Too many requests"}}"#,
        ),
        _ => Reply::text(200, "ok"),
    })
    .await
}

#[tokio::test]
async fn normalize_rewrites_provider_errors_and_passthrough_keeps_them() {
    let mock = provider_errors_mock().await;
    let proxy = proxy_for(&mock, "errors: normalize\nretry: {max_attempts: 1}").await;

    let answer = proxy
        .request(
            "GET",
            "/api/v1/customers/cus_x",
            &[("x-request-id", "app-req-14")],
            "",
        )
        .await;
    let error = answer.assert_error(404, "not_found");
    assert_eq!(
        answer.json(),
        json!({"error": {
            "type": "not_found",
            "message": "api: No such customer: 'cus_x'",
            "upstream": "api",
            "status": 404,
            "retryable": false,
            "request_id": "app-req-14",
            "upstream_request_id": "req_1",
        }}),
        "{error}"
    );

    let answer = proxy.request("POST", "/api/v3/mail/send", &[], "{}").await;
    let error = answer.assert_error(400, "client_error");
    assert_eq!(error["message"], "api: bad from");
    assert_eq!(error["upstream"], "api");
    assert_eq!(error["retryable"], false);

    let answer = proxy.get("/api/v1/me").await;
    let error = answer.assert_error(401, "authentication_failed");
    assert_eq!(error["message"], "api: Bad credentials");

    let answer = proxy.get("/api/v1/boom").await;
    let error = answer.assert_error(502, "upstream_error");
    assert_eq!(error["retryable"], true);
    assert!(
        !answer.text().contains("<html>"),
        "no message found: a generic one: {error}"
    );

    // An upstream 429 (no retries left) becomes `rate_limited` with the wait it named.
    let answer = proxy.get("/api/v1/limited").await;
    let error = answer.assert_error(429, "rate_limited");
    assert_eq!(error["message"], "api: Too many requests");
    assert_eq!(error["retryable"], true);
    assert_eq!(error["retry_after_seconds"], 1.0, "{error}");
    assert_eq!(answer.header("retry-after"), Some("1"));

    // Passthrough: the provider's body byte for byte, plus the classification header.
    let proxy = proxy_for(&mock, "errors: passthrough\nretry: {max_attempts: 1}").await;
    let answer = proxy.get("/api/v1/customers/cus_x").await;
    assert_eq!(answer.status, 404);
    assert_eq!(
        answer.body,
        Bytes::from_static(
            br#"{"error":{"message":"No such customer: 'cus_x'","type":"invalid_request_error"}}"#
        )
    );
    assert_eq!(answer.header("x-outpost-error"), Some("not_found"));
    assert_eq!(answer.header("request-id"), Some("req_1"));
    let answer = proxy.request("POST", "/api/v3/mail/send", &[], "{}").await;
    assert_eq!(answer.header("x-outpost-error"), Some("client_error"));
    assert_eq!(
        answer.json(),
        json!({"errors": [{"message": "bad from", "field": "from"}]})
    );
    let answer = proxy.get("/api/v1/me").await;
    assert_eq!(
        answer.header("x-outpost-error"),
        Some("authentication_failed")
    );
    let answer = proxy.get("/api/v1/ok").await;
    assert_eq!(answer.status, 200);
    assert_eq!(
        answer.header("x-outpost-error"),
        None,
        "2xx carries no error class"
    );
}

// ---------------------------------------------------------------------------------------------
// 15. Presets
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn stripe_preset_retries_409_and_obeys_stripe_should_retry() {
    let mock = MockUpstream::queue(vec![
        Reply::json(409, &json!({"error": {"message": "lock timeout"}})),
        Reply::text(200, "charged"),
        Reply::with(503, &[("stripe-should-retry", "false")], ""),
        Reply::with(400, &[("stripe-should-retry", "true")], ""),
        Reply::text(200, "second try"),
    ])
    .await;
    let proxy = Proxy::start(&config_for(
        "stripe",
        &mock.url(""),
        "
        preset: stripe
        auth: {token: sk_test_preset}
        retry: {base_delay: 10ms}
        ",
    ))
    .await;

    let answer = proxy
        .request("POST", "/stripe/v1/charges", &[], "amount=100")
        .await;
    assert_eq!(answer.status, 200, "{}", answer.text());
    assert_eq!(answer.text(), "charged");
    let seen = mock.requests();
    assert_eq!(seen.len(), 2, "Stripe's 409 is retried");
    let key = seen[0]
        .header("idempotency-key")
        .expect("stripe preset: auto keys");
    assert_eq!(seen[1].header("idempotency-key"), Some(key));
    assert_eq!(
        seen[0].header("authorization"),
        Some("Bearer sk_test_preset")
    );

    let answer = proxy
        .request("POST", "/stripe/v1/charges", &[], "amount=200")
        .await;
    assert_eq!(answer.status, 503);
    assert_eq!(mock.count(), 3, "Stripe-Should-Retry: false stops retries");

    // `Stripe-Should-Retry: true` makes even a 400 worth another try.
    let answer = proxy
        .request("POST", "/stripe/v1/charges", &[], "amount=300")
        .await;
    assert_eq!(answer.text(), "second try");
    assert_eq!(mock.count(), 5, "Stripe-Should-Retry: true retries");
}

#[tokio::test]
async fn twilio_preset_retries_a_keyless_post_on_429_only() {
    let mock = MockUpstream::queue(vec![
        Reply::with(429, &[("retry-after", "0")], r#"{"code":20429}"#),
        Reply::text(201, "queued"),
        Reply::text(503, "down"),
    ])
    .await;
    let proxy = Proxy::start(&config_for(
        "twilio",
        &mock.url(""),
        "
        preset: twilio
        auth: {username: AC123, password: twilio_token}
        retry: {base_delay: 10ms}
        ",
    ))
    .await;

    let path = "/twilio/2010-04-01/Accounts/AC123/Messages.json";
    let answer = proxy
        .request(
            "POST",
            path,
            &[("content-type", "application/x-www-form-urlencoded")],
            "To=%2B1555&Body=hi",
        )
        .await;
    assert_eq!(answer.status, 201, "{}", answer.text());
    let seen = mock.requests();
    assert_eq!(seen.len(), 2, "Twilio's 429 was never processed: retried");
    for r in &seen {
        assert!(!r.has("idempotency-key"));
        assert!(r
            .header("authorization")
            .is_some_and(|a| a.starts_with("Basic ")));
        assert_eq!(&r.body[..], b"To=%2B1555&Body=hi");
    }

    // A 503 may have been processed: the keyless POST is not retried.
    let answer = proxy
        .request("POST", path, &[], "To=%2B1555&Body=again")
        .await;
    assert_eq!(answer.status, 503);
    assert_eq!(mock.count(), 3);
}

// ---------------------------------------------------------------------------------------------
// 16. Key pools
// ---------------------------------------------------------------------------------------------

const KEY_A: &str = "tok-alpha-7f3e91";
const KEY_B: &str = "tok-bravo-9c1d42";

fn which_key(req: &RecordedRequest) -> &'static str {
    match req.header("authorization") {
        Some(v) if v == format!("Bearer {KEY_A}") => "A",
        Some(v) if v == format!("Bearer {KEY_B}") => "B",
        other => panic!("unexpected authorization {other:?}"),
    }
}

fn pool_config(mock: &MockUpstream) -> String {
    config_for(
        "pool",
        &mock.url(""),
        &format!("auth: {{type: bearer, tokens: [{KEY_A}, {KEY_B}]}}"),
    )
}

#[tokio::test]
async fn key_pool_rotates_and_a_429_cools_only_that_key() {
    // The third request on key A is answered 429 with a long Retry-After.
    let a_seen = AtomicUsize::new(0);
    let mock = MockUpstream::start(move |req| {
        if which_key(req) == "A" && a_seen.fetch_add(1, Ordering::SeqCst) == 2 {
            return Reply::with(429, &[("retry-after", "30")], "");
        }
        Reply::text(200, "ok")
    })
    .await;
    let proxy = Proxy::start(&pool_config(&mock)).await;

    for _ in 0..4 {
        assert_eq!(proxy.get("/pool/x").await.status, 200);
    }
    let order: Vec<_> = mock.requests().iter().map(which_key).collect();
    assert_eq!(order, ["A", "B", "A", "B"], "round robin");

    // Key A gets its 429: the retry goes at once on key B, not 30 s later.
    let start = Instant::now();
    let answer = within(
        Duration::from_secs(5),
        "retry on the other key",
        proxy.get("/pool/x"),
    )
    .await;
    assert_eq!(answer.status, 200);
    assert!(
        start.elapsed() < Duration::from_secs(2),
        "{:?}",
        start.elapsed()
    );
    let order: Vec<_> = mock.requests().iter().map(which_key).collect();
    assert_eq!(order[4..], ["A", "B"]);

    // While A cools down, B serves everything.
    for _ in 0..4 {
        let answer = within(
            Duration::from_secs(5),
            "request while A cools",
            proxy.get("/pool/y"),
        )
        .await;
        assert_eq!(answer.status, 200);
    }
    let order: Vec<_> = mock.requests().iter().map(which_key).collect();
    assert_eq!(order[6..], ["B", "B", "B", "B"]);
}

#[tokio::test]
async fn key_pool_removes_a_rejected_key_and_never_exposes_key_values() {
    let mock = MockUpstream::start(|req| match which_key(req) {
        "B" => Reply::json(401, &json!({"error": {"message": "Invalid API Key"}})),
        _ => Reply::text(200, "ok"),
    })
    .await;
    let proxy = Proxy::start(&pool_config(&mock)).await;
    let healthy = |text: &str, key: &str| {
        value(
            text,
            "outpost_auth_key_healthy",
            &[("upstream", "pool"), ("key", key)],
        )
    };
    let text = admin_metrics(&proxy).await;
    assert_eq!(healthy(&text, "0"), 1.0, "{text}");
    assert_eq!(healthy(&text, "1"), 1.0, "{text}");

    assert_eq!(proxy.get("/pool/a").await.status, 200, "first on key A");
    // Key B is rejected: taken out of rotation, the GET is sent again on key A.
    let answer = proxy.get("/pool/b").await;
    assert_eq!(answer.status, 200, "{}", answer.text());
    let order: Vec<_> = mock.requests().iter().map(which_key).collect();
    assert_eq!(order, ["A", "B", "A"]);

    for _ in 0..4 {
        assert_eq!(proxy.get("/pool/c").await.status, 200);
    }
    let order: Vec<_> = mock.requests().iter().map(which_key).collect();
    assert_eq!(
        order[3..],
        ["A", "A", "A", "A"],
        "only key A after B was rejected"
    );

    let text = admin_metrics(&proxy).await;
    assert_eq!(healthy(&text, "0"), 1.0, "{text}");
    assert_eq!(healthy(&text, "1"), 0.0, "{text}");
    // The re-send on key A is one retry (whatever its reason label).
    let retries: f64 = ["status", "connect_error", "timeout", "auth_refresh"]
        .iter()
        .map(|reason| value(&text, RETRIES, &[("upstream", "pool"), ("reason", reason)]))
        .sum();
    assert_eq!(retries, 1.0, "{text}");
    for secret in [KEY_A, KEY_B, "tok-alpha", "tok-bravo"] {
        assert!(
            !text.contains(secret),
            "/metrics exposes a key value: {text}"
        );
    }
}

#[tokio::test]
async fn each_pooled_key_has_its_own_limiter() {
    let mock = MockUpstream::ok().await;
    let proxy = Proxy::start(&config_for(
        "pool",
        &mock.url(""),
        &format!(
            "auth: {{type: bearer, tokens: [{KEY_A}, {KEY_B}]}}\n\
             rate_limit: {{requests_per_second: 1, burst: 1, max_wait: 0s}}"
        ),
    ))
    .await;
    // One token per key: two requests pass at once, the third finds key A's bucket empty.
    assert_eq!(proxy.get("/pool/1").await.status, 200);
    assert_eq!(proxy.get("/pool/2").await.status, 200);
    proxy.get("/pool/3").await.assert_error(429, "rate_limited");
    let order: Vec<_> = mock.requests().iter().map(which_key).collect();
    assert_eq!(order, ["A", "B"]);
}

#[tokio::test]
async fn a_pool_whose_keys_are_all_rejected_reports_credentials_unavailable() {
    let mock = MockUpstream::start(|_| Reply::json(401, &json!({"message": "bad key"}))).await;
    let proxy = Proxy::start(&pool_config(&mock)).await;
    // Key A is rejected, the GET goes again on key B, which is rejected too: the last
    // upstream answer passes through.
    let answer = proxy.get("/pool/x").await;
    assert_eq!(answer.status, 401);
    assert_eq!(
        answer.header("x-outpost-error"),
        Some("authentication_failed")
    );
    assert_eq!(mock.count(), 2);
    // No key left: Outpost answers itself, and the upstream sees nothing more.
    let answer = proxy.get("/pool/y").await;
    answer.assert_error(503, "credentials_unavailable");
    assert_eq!(mock.count(), 2);
    for secret in [KEY_A, KEY_B] {
        assert!(!answer.text().contains(secret), "{}", answer.text());
    }
    let text = proxy.metrics();
    for key in ["0", "1"] {
        assert_eq!(
            value(
                &text,
                "outpost_auth_key_healthy",
                &[("upstream", "pool"), ("key", key)]
            ),
            0.0,
            "{text}"
        );
    }
}
