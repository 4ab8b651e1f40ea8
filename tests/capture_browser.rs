//! The inspector page in a real browser: headless Debian Chromium driven by Python selenium
//! (`tests/fixtures/capture/inspector_browser.py`; `.ci/run` installs `chromium`,
//! `chromium-driver` and `selenium`). The page loads, an exchange committed to the ring after
//! that appears without a reload, the upstream/status/text filters narrow the list, the detail
//! view opens, and the Replay button of a webhook delivery reaches the test's replayer. The
//! screenshot is written under `target/`; `OUTPOST_UPDATE_SCREENSHOT=1` also copies it to the
//! committed `docs/inspector.png` (shown in the README).

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

mod support;

use futures_util::future::BoxFuture;
use http::{HeaderMap, HeaderName, Method};
use outpost::capture::inspector::{self, Inspector, WebhookReplayer};
use outpost::capture::ring::Attempt;
use outpost::capture::{CaptureConfig, CaptureRing, Exchange};
use support::browser::{InspectorBrowser, STEP};
use tokio::net::TcpListener;
use tokio::sync::mpsc;

fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
    let mut h = HeaderMap::new();
    for (n, v) in pairs {
        h.append(
            HeaderName::from_bytes(n.as_bytes()).unwrap(),
            v.parse().unwrap(),
        );
    }
    h
}

fn attempt(ms: u64, status: u16, retry: Option<&str>) -> Attempt {
    Attempt {
        duration: Duration::from_millis(ms),
        outcome: "response".into(),
        status: Some(status),
        retry_reason: retry.map(str::to_string),
    }
}

fn call(
    ring: &CaptureRing,
    name: &str,
    method: Method,
    uri: &str,
    body: &str,
    (status, answer): (u16, &str),
    attempts: &[Attempt],
) -> u64 {
    let ct = if body.starts_with('{') {
        "application/json"
    } else {
        "application/x-www-form-urlencoded"
    };
    let mut d = ring.start_upstream(
        name,
        &method,
        &uri.parse().unwrap(),
        &headers(&[
            ("content-type", ct),
            ("user-agent", "Stripe/v1 RubyBindings/12.0.0"),
        ]),
    );
    d.base_url(format!("https://api.{name}.com"))
        .request_chunk(body.as_bytes());
    for a in attempts {
        d.attempt(a.clone());
    }
    let upstream: Duration = attempts.iter().map(|a| a.duration).sum();
    d.timings(
        SystemTime::now(),
        Some(upstream + Duration::from_millis(3)),
        upstream + Duration::from_millis(5),
    )
    .limiter_wait(Duration::from_millis(2))
    .response_head(
        status,
        &headers(&[
            ("content-type", "application/json"),
            ("request-id", "req_8Hq2"),
        ]),
    )
    .response_chunk(answer.as_bytes());
    ring.commit(d)
}

struct Recorder(mpsc::UnboundedSender<u64>);

impl WebhookReplayer for Recorder {
    fn replay<'a>(&'a self, exchange: &'a Exchange) -> BoxFuture<'a, Result<u16, String>> {
        Box::pin(async move {
            let _ = self.0.send(exchange.id);
            Ok(200)
        })
    }
}

async fn step<F: std::future::Future>(what: &str, fut: F) -> F::Output {
    tokio::time::timeout(STEP, fut)
        .await
        .unwrap_or_else(|_| panic!("browser step `{what}` did not finish within {STEP:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inspector_page_in_headless_chromium() {
    let ring = CaptureRing::new(CaptureConfig::default());
    call(
        &ring,
        "stripe",
        Method::GET,
        "/v1/customers?limit=3",
        "",
        (
            200,
            r#"{"object":"list","data":[{"id":"cus_Q1","object":"customer"}],"has_more":false}"#,
        ),
        &[attempt(84, 200, None)],
    );
    call(
        &ring,
        "sendgrid",
        Method::POST,
        "/v3/mail/send",
        r#"{"personalizations":[{"to":[{"email":"[redacted]"}]}],"subject":"Your receipt"}"#,
        (202, ""),
        &[attempt(120, 202, None)],
    );
    call(
        &ring,
        "stripe",
        Method::POST,
        "/v1/payment_intents",
        "amount=2000&currency=usd",
        (
            429,
            r#"{"error":{"type":"rate_limit_error","message":"Too many requests"}}"#,
        ),
        &[attempt(40, 429, Some("status")), attempt(35, 429, None)],
    );
    let mut d = ring.start_webhook(
        "stripe",
        &Method::POST,
        &"/stripe".parse().unwrap(),
        &headers(&[
            (
                "stripe-signature",
                "t=1764814200,v1=5257a869e7ecebeda32affa62cdca3fa51cad7e77a0e56ff536d0ce8e108d8bd",
            ),
            ("content-type", "application/json"),
        ]),
    );
    d.base_url("http://0.0.0.0:8081")
        .request_chunk(br#"{"id":"evt_1","type":"payment_intent.succeeded","data":{"object":{"id":"pi_3","amount":2000}}}"#)
        .webhook("verified", "http://127.0.0.1:3000/webhooks/stripe")
        .timings(SystemTime::now(), Some(Duration::from_millis(14)), Duration::from_millis(15))
        .response_head(200, &headers(&[("content-type", "text/plain")]))
        .response_chunk(b"ok");
    let hook = ring.commit(d);

    let (replayed_tx, mut replayed) = mpsc::unbounded_channel();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let inspector =
        Inspector::new(Arc::clone(&ring)).with_replayer(Arc::new(Recorder(replayed_tx)));
    tokio::spawn(inspector::serve(
        listener,
        Arc::new(inspector),
        std::future::pending(),
    ));

    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    // Written under target/ on every run; copied to the committed docs/inspector.png only when
    // asked, so running the tests does not dirty the work tree.
    let screenshot = Path::new(env!("CARGO_TARGET_TMPDIR")).join("inspector.png");
    let mut browser = InspectorBrowser::start(&base, &screenshot);
    browser.expect("page loaded", "LOADED").await;
    let added = call(
        &ring,
        "stripe",
        Method::POST,
        "/v1/live_after_load?expand[]=customer",
        "amount=500&currency=eur",
        (200, r#"{"id":"ch_live","amount":500}"#),
        &[attempt(30, 503, Some("status")), attempt(25, 200, None)],
    );
    browser.say(&format!("ADDED {added}")).await;
    browser.expect("new row seen", "SEEN").await;
    browser.say(&format!("WEBHOOK {hook}")).await;
    let result = browser.expect("replayed", "REPLAYED ").await;
    assert!(result.contains("200"), "{result}");
    assert_eq!(step("replayer called", replayed.recv()).await, Some(hook));

    let (status, log) = browser.finish().await;
    assert!(status.success(), "browser script failed: {log}");
    let png = std::fs::read(&screenshot).unwrap();
    assert!(png.starts_with(b"\x89PNG"), "a PNG screenshot was written");
    assert!(replayed.try_recv().is_err(), "replayed exactly once");
    if std::env::var_os("OUTPOST_UPDATE_SCREENSHOT").is_some() {
        std::fs::create_dir_all(root.join("docs")).unwrap();
        std::fs::copy(&screenshot, root.join("docs/inspector.png")).unwrap();
    }
}
