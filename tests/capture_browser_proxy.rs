//! The inspector page over real traffic (issue 13's browser test): Outpost runs with `capture:`
//! in front of Stripe- and SendGrid-like mocks and receives a signed webhook; headless Chromium
//! (the same script as `capture_browser.rs`) sees a call made through the proxy after the page
//! loaded appear without a reload, filters, opens its detail (two attempts: a 503, then the
//! answer), and replays the webhook delivery, which the application then receives a second time.

mod support;

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use hmac::{Hmac, Mac};
use serde_json::{json, Value};
use support::browser::InspectorBrowser;
use support::*;

const SECRET: &str = "partner-browser-secret";

async fn exchanges(base: &str) -> Vec<Value> {
    let list = get(&format!("{base}/api/exchanges")).await.json();
    list.get("exchanges")
        .unwrap_or(&list)
        .as_array()
        .cloned()
        .unwrap_or_default()
}

fn id_of(list: &[Value], pred: impl Fn(&Value) -> bool) -> String {
    let found = list
        .iter()
        .find(|e| pred(e))
        .expect("the exchange is listed");
    found["id"].as_u64().map_or_else(
        || found["id"].as_str().unwrap().to_string(),
        |n| n.to_string(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inspector_over_real_traffic_in_headless_chromium() {
    let failed_once = Arc::new(AtomicBool::new(false));
    let flag = failed_once.clone();
    let stripe = MockUpstream::start(move |req| match req.path() {
        "/v1/customers" => Reply::json(200, &json!({"object": "list", "data": [{"id": "cus_Q1"}]})),
        "/v1/payment_intents" => Reply::json(
            402,
            &json!({"error": {"type": "card_error", "message": "Your card was declined."}}),
        ),
        _ if !flag.swap(true, Ordering::SeqCst) => Reply::status(503),
        _ => Reply::json(200, &json!({"id": "ch_live", "amount": 500})),
    })
    .await;
    let sendgrid = MockUpstream::start(|_| Reply::status(202)).await;
    let app = MockUpstream::start(|_| Reply::text(200, "ok")).await;
    let proxy = Proxy::start(&format!(
        "capture: {{}}\ninspect_listen: 127.0.0.1:0\nwebhook_listen: 127.0.0.1:0\nupstreams:\n  stripe:\n    base_url: {}\n    retry: {{ base_delay: 1ms }}\n    auth: {{ type: bearer, token: sk_test_browser_canary }}\n  sendgrid:\n    base_url: {}\n    auth: {{ type: bearer, token: SG.browser_canary }}\nwebhooks:\n  partner:\n    path: /partner\n    scheme: hmac\n    header: X-Sig\n    secrets: [\"{SECRET}\"]\n    forward_to: {}\n",
        stripe.url(""),
        sendgrid.url(""),
        app.url("/hooks")
    ))
    .await;
    assert_eq!(proxy.get("/stripe/v1/customers?limit=3").await.status, 200);
    let mail = proxy
        .request(
            "POST",
            "/sendgrid/v3/mail/send",
            &[("content-type", "application/json")],
            r#"{"subject":"Your receipt"}"#,
        )
        .await;
    assert_eq!(mail.status, 202);
    let declined = proxy
        .request(
            "POST",
            "/stripe/v1/payment_intents",
            &[("content-type", "application/x-www-form-urlencoded")],
            "amount=2000&currency=usd",
        )
        .await;
    assert_eq!(declined.status, 402);
    let body = r#"{"event":"paid","id":"evt_1"}"#;
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(SECRET.as_bytes()).unwrap();
    mac.update(body.as_bytes());
    let delivery = http::Request::post(format!(
        "http://{}/partner",
        proxy.app().webhook_addr().unwrap()
    ))
    .header("x-sig", hex::encode(mac.finalize().into_bytes()))
    .header("content-type", "application/json")
    .body(full(body))
    .unwrap();
    assert_eq!(send(&http1_client(), delivery).await.status, 200);
    assert_eq!(app.count(), 1);

    let base = format!("http://{}", proxy.app().inspect_addr.unwrap());
    let screenshot = Path::new(env!("CARGO_TARGET_TMPDIR")).join("inspector-proxy.png");
    let mut browser = InspectorBrowser::start(&base, &screenshot);
    browser.expect("page loaded", "LOADED").await;

    // A call made through the proxy after the page loaded (a 503, then the answer).
    let live = proxy
        .request(
            "POST",
            "/stripe/v1/live_after_load?expand[]=customer",
            &[
                ("content-type", "application/x-www-form-urlencoded"),
                ("idempotency-key", "live-1"),
            ],
            "amount=500&currency=eur",
        )
        .await;
    assert_eq!(live.status, 200);
    let list = exchanges(&base).await;
    assert!(
        list.iter()
            .all(|e| e["error"].is_null() || e["status"].as_u64() >= Some(400)),
        "every exchange completed (an empty 202 too): {list:?}"
    );
    let added = id_of(&list, |e| e["path"] == "/v1/live_after_load");
    browser.say(&format!("ADDED {added}")).await;
    browser.expect("new row seen", "SEEN").await;
    let hook = id_of(&list, |e| e["kind"] == "webhook");
    browser.say(&format!("WEBHOOK {hook}")).await;
    let result = browser.expect("replayed", "REPLAYED ").await;
    assert!(result.contains("200"), "{result}");
    poll_until("the application receives the delivery again", || async {
        app.count() == 2
    })
    .await;
    assert_eq!(app.requests()[1].body, body);

    let (status, log) = browser.finish().await;
    assert!(status.success(), "browser script failed: {log}");
    assert!(std::fs::read(&screenshot).unwrap().starts_with(b"\x89PNG"));
    proxy.shutdown().await;
}
