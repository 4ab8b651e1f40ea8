//! The inspector page in a real browser: headless Debian Chromium driven by Python selenium
//! (`tests/fixtures/capture/inspector_browser.py`; `.ci/run` installs `chromium`,
//! `chromium-driver` and `selenium`). The page loads, an exchange committed to the ring after
//! that appears without a reload, the upstream/status/text filters narrow the list, the detail
//! view opens, and the Replay button of a webhook delivery reaches the test's replayer. The
//! screenshot is written under `target/`; `OUTPOST_UPDATE_SCREENSHOT=1` also copies it to the
//! committed `docs/inspector.png` (shown in the README).

use std::path::Path;
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use futures_util::future::BoxFuture;
use http::{HeaderMap, HeaderName, Method};
use outpost::capture::inspector::{self, Inspector, WebhookReplayer};
use outpost::capture::ring::Attempt;
use outpost::capture::{CaptureConfig, CaptureRing, Exchange};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;
use tokio::process::Command;
use tokio::sync::mpsc;

/// Chromium's start on a loaded CI machine is slow; this bounds every step, not readiness.
const STEP: Duration = Duration::from_secs(90);

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
    for tool in ["/usr/bin/chromium", "/usr/bin/chromedriver"] {
        assert!(
            Path::new(tool).exists(),
            "{tool} is missing: apt-get install chromium chromium-driver (.ci/run does)"
        );
    }
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
    let mut child = Command::new("python3")
        .arg(root.join("tests/fixtures/capture/inspector_browser.py"))
        .arg(&base)
        .arg(&screenshot)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("python3 is installed");
    let mut stdin = child.stdin.take().unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut stderr = child.stderr.take().unwrap();
    let stderr_task = tokio::spawn(async move {
        let mut text = String::new();
        let _ = tokio::io::AsyncReadExt::read_to_string(&mut stderr, &mut text).await;
        text
    });
    let loaded = step("page loaded", lines.next_line()).await.unwrap();
    if loaded.as_deref() != Some("LOADED") {
        let _ = child.wait().await;
        panic!(
            "browser did not load the page: {loaded:?}\n{}",
            stderr_task.await.unwrap()
        );
    }
    let added = call(
        &ring,
        "stripe",
        Method::POST,
        "/v1/live_after_load?expand[]=customer",
        "amount=500&currency=eur",
        (200, r#"{"id":"ch_live","amount":500}"#),
        &[attempt(30, 503, Some("status")), attempt(25, 200, None)],
    );
    stdin
        .write_all(format!("ADDED {added}\n").as_bytes())
        .await
        .unwrap();
    let seen = step("new row seen", lines.next_line()).await.unwrap();
    assert_eq!(
        seen.as_deref(),
        Some("SEEN"),
        "{}",
        if seen.is_none() {
            stderr_task.await.unwrap()
        } else {
            String::new()
        }
    );
    stdin
        .write_all(format!("WEBHOOK {hook}\n").as_bytes())
        .await
        .unwrap();
    let result = step("replayed", lines.next_line()).await.unwrap();
    let Some(result) = result else {
        panic!(
            "browser failed before replaying: {}",
            stderr_task.await.unwrap()
        );
    };
    assert!(result.starts_with("REPLAYED "), "{result}");
    assert!(result.contains("200"), "{result}");
    assert_eq!(step("replayer called", replayed.recv()).await, Some(hook));

    let status = step("browser exits", child.wait()).await.unwrap();
    let log = stderr_task.await.unwrap();
    assert!(status.success(), "browser script failed: {log}");
    let png = std::fs::read(&screenshot).unwrap();
    assert!(png.starts_with(b"\x89PNG"), "a PNG screenshot was written");
    assert!(replayed.try_recv().is_err(), "replayed exactly once");
    if std::env::var_os("OUTPOST_UPDATE_SCREENSHOT").is_some() {
        std::fs::create_dir_all(root.join("docs")).unwrap();
        std::fs::copy(&screenshot, root.join("docs/inspector.png")).unwrap();
    }
}
