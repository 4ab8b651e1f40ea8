//! The inspector served on `127.0.0.1:0` over a populated capture ring: every API path, the
//! live event stream, webhook replay through the caller's replayer, hostile input, shutdown.

mod support;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::future::BoxFuture;
use http::{HeaderMap, HeaderName, Method, Request};
use http_body_util::BodyExt;
use outpost::capture::config::RawCapture;
use outpost::capture::inspector::{self, Inspector, WebhookReplayer};
use outpost::capture::ring::Attempt;
use outpost::capture::{CaptureRing, Exchange};
use serde_json::Value;
use support::{empty, get, guard, http1_client, poll_until, send, try_status};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot};

const SECRET: &str = "sk_test_INSPECTORSECRET";

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

fn ring() -> Arc<CaptureRing> {
    let ring = CaptureRing::new(
        RawCapture {
            max_body_bytes: Some(outpost::config::units::Size(1024)),
            redact_json_fields: vec!["email".into()],
            ..RawCapture::default()
        }
        .validate()
        .unwrap(),
    );
    ring.set_secrets(&[SECRET]);
    ring
}

fn upstream_call(ring: &CaptureRing, name: &str, path: &str, status: u16, body: &str) -> u64 {
    let mut d = ring.start_upstream(
        name,
        &Method::POST,
        &path.parse().unwrap(),
        &headers(&[
            ("content-type", "application/json"),
            ("authorization", &format!("Bearer {SECRET}")),
        ]),
    );
    d.base_url(format!("https://api.{name}.com"))
        .request_chunk(body.as_bytes())
        .attempt(Attempt {
            duration: Duration::from_millis(4),
            outcome: "response".into(),
            status: Some(status),
            retry_reason: None,
        })
        .response_head(status, &headers(&[("content-type", "application/json")]))
        .response_chunk(format!(r#"{{"ok":true,"echo":"{SECRET}"}}"#).as_bytes());
    ring.commit(d)
}

fn webhook_delivery(ring: &CaptureRing, body: &[u8]) -> u64 {
    let mut d = ring.start_webhook(
        "stripe",
        &Method::POST,
        &"/stripe".parse().unwrap(),
        &headers(&[
            ("stripe-signature", "t=1,v1=abc"),
            ("content-type", "application/json"),
        ]),
    );
    d.base_url("http://127.0.0.1:8081")
        .request_chunk(body)
        .webhook("verified", "http://127.0.0.1:3000/webhooks/stripe")
        .response_head(200, &HeaderMap::new());
    ring.commit(d)
}

/// Records which exchanges it was asked to replay; answers 204, or fails for `fail`.
struct Recorder {
    seen: mpsc::UnboundedSender<(u64, Bytes)>,
    fail: bool,
}

impl WebhookReplayer for Recorder {
    fn replay<'a>(&'a self, exchange: &'a Exchange) -> BoxFuture<'a, Result<u16, String>> {
        Box::pin(async move {
            let raw = exchange.replay_request().ok_or("not replayable")?;
            let _ = self.seen.send((exchange.id, raw.body.clone()));
            if self.fail {
                Err("connection refused".to_string())
            } else {
                Ok(204)
            }
        })
    }
}

struct Served {
    base: String,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

async fn serve(inspector: Inspector) -> Served {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(inspector::serve(listener, Arc::new(inspector), async {
        let _ = stopped.await;
    }));
    Served {
        base,
        stop: Some(stop),
        task,
    }
}

async fn post(url: &str, extra: &[(&str, &str)]) -> support::Answer {
    let mut b = Request::post(url);
    for (n, v) in extra {
        b = b.header(*n, *v);
    }
    send(&http1_client(), b.body(empty()).unwrap()).await
}

#[tokio::test]
async fn every_api_path() {
    let ring = ring();
    let a = upstream_call(
        &ring,
        "stripe",
        "/v1/charges?limit=3",
        200,
        r#"{"email":"a@b.c","amount":1}"#,
    );
    let b = upstream_call(
        &ring,
        "sendgrid",
        "/v3/mail/send",
        429,
        r#"{"subject":"Hello"}"#,
    );
    let w = webhook_delivery(&ring, br#"{"type":"charge.succeeded"}"#);
    let (seen_tx, mut seen) = mpsc::unbounded_channel();
    let s = serve(
        Inspector::new(Arc::clone(&ring)).with_replayer(Arc::new(Recorder {
            seen: seen_tx,
            fail: false,
        })),
    )
    .await;

    // The page.
    let page = get(&format!("{}/", s.base)).await;
    assert_eq!(page.status, 200);
    assert_eq!(
        page.header("content-type"),
        Some("text/html; charset=utf-8")
    );
    assert!(page
        .header("content-security-policy")
        .unwrap()
        .contains("default-src 'none'"));
    assert!(page.text().contains("Outpost inspector"));

    // The list, newest first, with filters.
    let list = get(&format!("{}/api/exchanges", s.base)).await;
    assert_eq!(list.status, 200);
    assert_eq!(list.header("content-type"), Some("application/json"));
    let v = list.json();
    let ids: Vec<u64> = v["exchanges"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["id"].as_u64().unwrap())
        .collect();
    assert_eq!(ids, vec![w, b, a]);
    assert_eq!(v["names"], serde_json::json!(["sendgrid", "stripe"]));
    assert_eq!(v["usage"]["exchanges"], 3);
    let ids_for = |q: &'static str| {
        let base = s.base.clone();
        async move {
            let v = get(&format!("{base}/api/exchanges?{q}")).await.json();
            v["exchanges"]
                .as_array()
                .unwrap()
                .iter()
                .map(|e| e["id"].as_u64().unwrap())
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(ids_for("upstream=stripe").await, vec![w, a]);
    assert_eq!(ids_for("status=4xx").await, vec![b]);
    assert_eq!(ids_for("text=hello").await, vec![b]);
    assert_eq!(
        ids_for("upstream=stripe&status=200&text=charges").await,
        vec![a]
    );
    get(&format!("{}/api/exchanges?status=teapot", s.base))
        .await
        .assert_error(400, "bad_request");

    // One exchange, redacted.
    let one = get(&format!("{}/api/exchanges/{a}", s.base)).await;
    assert_eq!(one.status, 200);
    let v = one.json();
    assert_eq!(v["url"], "https://api.stripe.com/v1/charges?limit=3");
    assert_eq!(v["attempts"][0]["outcome"], "response");
    let req_body: Value =
        serde_json::from_str(v["request"]["body"]["text"].as_str().unwrap()).unwrap();
    assert_eq!(req_body["email"], "[redacted]");
    assert_eq!(req_body["amount"], 1);
    get(&format!("{}/api/exchanges/999", s.base))
        .await
        .assert_error(404, "not_found");
    get(&format!("{}/api/exchanges/abc", s.base))
        .await
        .assert_error(404, "not_found");

    // HAR.
    let har = get(&format!("{}/api/har", s.base)).await;
    assert_eq!(har.status, 200);
    let v = har.json();
    assert_eq!(v["log"]["version"], "1.2");
    assert_eq!(v["log"]["entries"].as_array().unwrap().len(), 3);

    // Replay: the webhook is sent to the replayer with the bytes as received.
    let replayed = post(
        &format!("{}/api/webhooks/{w}/replay", s.base),
        &[("x-outpost-inspector", "1")],
    )
    .await;
    assert_eq!(replayed.status, 200, "{}", replayed.text());
    assert_eq!(
        replayed.json(),
        serde_json::json!({"replayed": w, "webhook": "stripe", "status": 204})
    );
    let (id, body) = guard("replayer called", seen.recv()).await.unwrap();
    assert_eq!(id, w);
    assert_eq!(&body[..], br#"{"type":"charge.succeeded"}"#);
    post(
        &format!("{}/api/webhooks/{a}/replay", s.base),
        &[("x-outpost-inspector", "1")],
    )
    .await
    .assert_error(409, "not_a_webhook");
    post(&format!("{}/api/webhooks/{w}/replay", s.base), &[])
        .await
        .assert_error(403, "forbidden");
    post(
        &format!("{}/api/webhooks/777/replay", s.base),
        &[("x-outpost-inspector", "1")],
    )
    .await
    .assert_error(404, "not_found");
    get(&format!("{}/api/webhooks/{w}/replay", s.base))
        .await
        .assert_error(405, "method_not_allowed");
    get(&format!("{}/nope", s.base))
        .await
        .assert_error(404, "not_found");

    // No known secret anywhere in the API.
    for path in [
        "/api/exchanges".to_string(),
        format!("/api/exchanges/{a}"),
        format!("/api/exchanges/{b}"),
        "/api/har".into(),
    ] {
        let text = get(&format!("{}{path}", s.base)).await.text();
        assert!(!text.contains(SECRET), "{path} leaks the secret: {text}");
    }
    assert!(
        seen.try_recv().is_err(),
        "the replayer is called only for accepted replays"
    );
}

#[tokio::test]
async fn replay_failures_are_reported() {
    let ring = ring();
    let w = webhook_delivery(&ring, b"{}");
    let cut = webhook_delivery(&ring, &[b'x'; 2000]);
    let (seen_tx, _seen) = mpsc::unbounded_channel();
    let failing = serve(
        Inspector::new(Arc::clone(&ring)).with_replayer(Arc::new(Recorder {
            seen: seen_tx,
            fail: true,
        })),
    )
    .await;
    let err = post(
        &format!("{}/api/webhooks/{w}/replay", failing.base),
        &[("x-outpost-inspector", "1")],
    )
    .await
    .assert_error(502, "webhook_forward_failed");
    assert_eq!(err["message"], "stripe: replay failed: connection refused");
    post(
        &format!("{}/api/webhooks/{cut}/replay", failing.base),
        &[("x-outpost-inspector", "1")],
    )
    .await
    .assert_error(409, "not_replayable");
    let without = serve(Inspector::new(ring)).await;
    post(
        &format!("{}/api/webhooks/{w}/replay", without.base),
        &[("x-outpost-inspector", "1")],
    )
    .await
    .assert_error(501, "replay_unavailable");
}

#[tokio::test]
async fn events_stream_new_exchanges() {
    let ring = ring();
    let s =
        serve(Inspector::new(Arc::clone(&ring)).events_keepalive(Duration::from_millis(50))).await;
    let resp = guard(
        "open /api/events",
        http1_client().request(
            Request::get(format!("{}/api/events", s.base))
                .body(empty())
                .unwrap(),
        ),
    )
    .await
    .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "text/event-stream");
    let mut body = resp.into_body();
    let mut seen = String::new();
    // The stream is open once its first frame arrived; only then add the exchange.
    while !seen.contains(": connected") {
        let frame = guard("first event frame", body.frame())
            .await
            .unwrap()
            .unwrap();
        seen.push_str(&String::from_utf8_lossy(frame.data_ref().unwrap()));
    }
    let id = upstream_call(&ring, "stripe", "/v1/live", 201, "{}");
    while !(seen.contains("event: exchange") && seen.contains(": keep-alive")) {
        let frame = guard("exchange event", body.frame())
            .await
            .unwrap()
            .unwrap();
        seen.push_str(&String::from_utf8_lossy(frame.data_ref().unwrap()));
    }
    let data = seen
        .lines()
        .skip_while(|l| *l != "event: exchange")
        .find_map(|l| l.strip_prefix("data: "))
        .unwrap();
    let summary: Value = serde_json::from_str(data).unwrap();
    assert_eq!(summary["id"], id);
    assert_eq!(summary["path"], "/v1/live");
    assert_eq!(summary["status"], 201);
    assert!(seen.contains(&format!("id: {id}")));
}

#[tokio::test]
async fn hostile_requests_never_break_the_server() {
    let ring = ring();
    upstream_call(&ring, "stripe", "/v1/x", 200, "{}");
    let s = serve(Inspector::new(ring)).await;
    for path in [
        "/api/exchanges/18446744073709551616",
        "/api/exchanges/%2e%2e",
        "/api/exchanges?limit=-1",
        "/api/exchanges?after=x",
        "/api/exchanges?status=%ZZ",
        "/api/exchanges?text=%FF%FE%00",
        "/api/webhooks/../replay",
        "/api/exchanges/1/../../etc",
        "/%00",
        "/api/events/x",
    ] {
        let answer = get(&format!("{}{path}", s.base)).await;
        assert!(
            [200, 400, 404, 405].contains(&answer.status.as_u16())
                && answer.text().starts_with('{'),
            "{path}: {} {}",
            answer.status,
            answer.text()
        );
    }
    // A foreign Host header (DNS rebinding) is refused.
    let req = Request::get(format!("{}/api/exchanges", s.base))
        .header("host", "evil.example")
        .body(empty())
        .unwrap();
    send(&http1_client(), req)
        .await
        .assert_error(403, "forbidden_host");
    // Still serving.
    assert_eq!(get(&format!("{}/api/exchanges", s.base)).await.status, 200);
}

#[tokio::test]
async fn shutdown_closes_the_listener_and_event_streams() {
    let ring = ring();
    let mut s = serve(Inspector::new(ring)).await;
    let resp = guard(
        "open /api/events",
        http1_client().request(
            Request::get(format!("{}/api/events", s.base))
                .body(empty())
                .unwrap(),
        ),
    )
    .await
    .unwrap();
    let mut body = resp.into_body();
    let _ = guard("first frame", body.frame()).await;
    s.stop.take().unwrap().send(()).unwrap();
    guard("serve returns", &mut s.task).await.unwrap();
    // The open event stream ends instead of hanging.
    loop {
        match guard("event stream ends", body.frame()).await {
            None | Some(Err(_)) => break,
            Some(Ok(_)) => continue,
        }
    }
    let url = format!("{}/api/exchanges", s.base);
    poll_until("listener closed", || {
        let url = url.clone();
        async move { try_status(&url).await.is_none() }
    })
    .await;
}
