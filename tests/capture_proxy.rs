//! Capture through the real request path (issue 13): with `capture:` on, a call through the
//! proxy appears in the inspector's API and HAR export as the application sent it and as it
//! came back, never with the credential Outpost injected; with capture off the inspector is not
//! even bound.

mod support;

use serde_json::Value;
use support::*;

const KEY: &str = "sk_test_capture_canary_51H";

fn yaml(mock: &MockUpstream, capture: bool) -> String {
    let capture = if capture {
        "capture: { redact_json_fields: [email] }\ninspect_listen: 127.0.0.1:0\n"
    } else {
        ""
    };
    format!(
        "{capture}upstreams:\n  api:\n    base_url: {}\n    auth: {{ type: bearer, token: {KEY} }}\n",
        mock.url("")
    )
}

/// The id of the newest exchange in an `/api/exchanges` answer.
fn newest_id(list: &Value) -> String {
    let id = list
        .pointer("/exchanges/0/id")
        .or_else(|| list.pointer("/0/id"))
        .unwrap_or_else(|| panic!("an exchange id in {list}"));
    id.as_u64().map_or_else(
        || id.as_str().unwrap_or_default().to_string(),
        |n| n.to_string(),
    )
}

async fn json(url: &str) -> Value {
    let answer = get(url).await;
    assert_eq!(answer.status, 200, "{url}: {}", answer.text());
    answer.json()
}

#[tokio::test]
async fn a_call_through_the_proxy_is_captured_without_its_credential() {
    let mock = MockUpstream::start(|req| {
        assert_eq!(
            req.header("authorization"),
            Some(format!("Bearer {KEY}").as_str())
        );
        Reply::json(
            201,
            &serde_json::json!({"id": "ch_1", "echo_key_prefix": &KEY[..8]}),
        )
    })
    .await;
    let proxy = Proxy::start(&yaml(&mock, true)).await;
    let inspect = proxy.app().inspect_addr.expect("the inspector is bound");
    let answer = proxy
        .request(
            "POST",
            "/api/v1/charges?expand=customer",
            &[
                ("content-type", "application/json"),
                ("authorization", "Bearer app-own-token"),
            ],
            r#"{"amount": 100, "email": "jane@example.com"}"#,
        )
        .await;
    assert_eq!(answer.status, 201);

    let base = format!("http://{inspect}");
    let list = json(&format!("{base}/api/exchanges")).await;
    let text = list.to_string();
    assert!(text.contains("/v1/charges"), "{text}");
    let id = newest_id(&list);
    let detail = json(&format!("{base}/api/exchanges/{id}")).await;
    assert_eq!(detail["status"], 201);
    assert!(detail["error"].is_null(), "a complete exchange: {detail}");
    let detail = detail.to_string();
    assert!(
        detail.contains("amount"),
        "the request body is captured: {detail}"
    );
    assert!(
        detail.contains("ch_1"),
        "the response body is captured: {detail}"
    );
    assert!(
        !detail.contains("jane@example.com"),
        "redact_json_fields applies"
    );
    assert!(
        !detail.contains("app-own-token"),
        "the app's Authorization is redacted"
    );
    let har = json(&format!("{base}/api/har")).await;
    assert_eq!(har["log"]["version"], "1.2");
    assert_eq!(har["log"]["entries"].as_array().unwrap().len(), 1);
    let page = get(&format!("{base}/")).await.text();
    for (what, body) in [
        ("list", text),
        ("detail", detail),
        ("har", har.to_string()),
        ("page", page),
    ] {
        assert!(!body.contains(KEY), "the injected key is in the {what}");
    }
    proxy.shutdown().await;
}

#[tokio::test]
async fn capture_is_off_by_default() {
    let mock = MockUpstream::ok().await;
    let proxy = Proxy::start(&yaml(&mock, false)).await;
    assert!(proxy.app().inspect_addr.is_none());
    assert_eq!(proxy.get("/api/x").await.status, 200);
    proxy.shutdown().await;
}

fn cassette_yaml(base_url: &str, dir: &std::path::Path, mode: &str) -> String {
    format!(
        "cassette_dir: {}\nupstreams:\n  api:\n    base_url: {base_url}\n    mode: {mode}\n    auth: {{ type: bearer, token: {KEY} }}\n",
        dir.display()
    )
}

/// Record against a Stripe-like mock, stop it, replay: the same SDK-shaped calls get the same
/// bytes back, a JSON body with its keys in another order still matches, a request with no
/// recording is `502 replay_miss` naming the nearest one, and nothing reaches the network.
#[tokio::test]
async fn record_then_replay_without_the_network() {
    let dir = TempDir::new("cassettes");
    let mock = MockUpstream::start(|req| match req.path() {
        "/v1/charges" => Reply::json(
            200,
            &serde_json::json!({"id": "ch_1", "amount": 100, "object": "charge"}),
        ),
        _ => Reply::json(
            200,
            &serde_json::json!({"id": "cus_9", "object": "customer"}),
        ),
    })
    .await;
    let proxy = Proxy::start(&cassette_yaml(&mock.url(""), &dir.path, "record")).await;
    let form = [("content-type", "application/json")];
    let charge = proxy
        .request(
            "POST",
            "/api/v1/charges",
            &form,
            r#"{"amount": 100, "currency": "usd"}"#,
        )
        .await;
    assert_eq!(charge.status, 200);
    let customer = proxy.get("/api/v1/customers/cus_9?expand=sources").await;
    assert_eq!(customer.status, 200);
    let file = dir.path.join("api.yaml");
    poll_until("both interactions are written", || {
        let file = file.clone();
        async move {
            std::fs::read_to_string(&file)
                .map(|t| t.matches("status: 200").count() >= 2 || t.matches("status:").count() >= 2)
                .unwrap_or(false)
        }
    })
    .await;
    let recorded = std::fs::read_to_string(&file).unwrap();
    assert!(
        !recorded.contains(KEY),
        "no secret in the cassette:\n{recorded}"
    );
    assert!(recorded.contains("/v1/charges"), "{recorded}");
    proxy.shutdown().await;
    drop(mock);

    // Replay in front of an upstream that must not be reached.
    let untouched = MockUpstream::ok().await;
    let proxy = Proxy::start(&cassette_yaml(&untouched.url(""), &dir.path, "replay")).await;
    let again = proxy
        .request(
            "POST",
            "/api/v1/charges",
            &form,
            r#"{"currency": "usd", "amount": 100}"#,
        )
        .await;
    assert_eq!(again.status, 200);
    assert_eq!(again.body, charge.body, "the same bytes back");
    assert_eq!(again.header("x-outpost-cassette"), Some("replayed"));
    let again = proxy.get("/api/v1/customers/cus_9?expand=sources").await;
    assert_eq!(again.body, customer.body);
    let miss = proxy.get("/api/v1/customers/cus_404").await;
    let error = miss.assert_error(502, "replay_miss");
    let text = error.to_string();
    assert!(
        text.contains("/v1/customers/cus_404"),
        "names what was asked: {text}"
    );
    assert!(
        text.contains("/v1/customers/cus_9"),
        "and the nearest recording: {text}"
    );
    untouched.assert_untouched("replay mode");
    proxy.shutdown().await;
}

#[tokio::test]
async fn a_non_live_mode_needs_cassette_dir() {
    let dir = TempDir::new("nocassette");
    let path = dir.write(
        "proxy.yaml",
        "version: 1\nupstreams:\n  api:\n    base_url: https://api.example.com\n    mode: replay\n",
    );
    let run = outpost(&["check", "-c", &path.display().to_string()], &[], None).await;
    assert_eq!(run.code, Some(1), "{}", run.stderr);
    assert!(format!("{}{}", run.stdout, run.stderr).contains("cassette_dir"));
}

/// `outpost run --replay DIR` replays every upstream from the cassettes in DIR, whatever the
/// config's `mode` says.
#[tokio::test]
async fn run_replay_flag_replays_every_upstream() {
    let cassettes = TempDir::new("flag-cassettes");
    let mock =
        MockUpstream::start(|_| Reply::json(200, &serde_json::json!({"recorded": true}))).await;
    let proxy = Proxy::start(&cassette_yaml(&mock.url(""), &cassettes.path, "record")).await;
    let recorded = proxy.get("/api/v1/balance").await;
    assert_eq!(recorded.status, 200);
    let file = cassettes.path.join("api.yaml");
    poll_until("the interaction is written", || {
        let file = file.clone();
        async move { std::fs::read_to_string(&file).is_ok_and(|t| t.contains("/v1/balance")) }
    })
    .await;
    proxy.shutdown().await;

    let untouched = MockUpstream::ok().await;
    let dir = TempDir::new("flag-bin");
    let (text, ports) = binary_config(&format!(
        "upstreams:\n  api:\n    base_url: {}\n    auth: {{ type: bearer, token: {KEY} }}\n",
        untouched.url("")
    ));
    let config_path = dir.write("proxy.yaml", text);
    let args = [
        "run".to_string(),
        "-c".to_string(),
        config_path.display().to_string(),
        "--replay".to_string(),
        cassettes.path.display().to_string(),
    ];
    let mut binary = Binary::launch(dir, config_path, &args, &[], ports).await;
    let replayed = get(&binary.url("/api/v1/balance")).await;
    assert_eq!(replayed.status, 200);
    assert_eq!(replayed.body, recorded.body);
    get(&binary.url("/api/v1/other"))
        .await
        .assert_error(502, "replay_miss");
    untouched.assert_untouched("--replay");
    binary.stop_and_collect_stderr().await;
}

/// A webhook delivery is captured with its verification result, and the inspector's replay
/// sends the stored delivery to the application a second time.
#[tokio::test]
async fn a_webhook_delivery_is_captured_and_replayed_to_the_app() {
    use hmac::{Hmac, Mac};
    let app = MockUpstream::start(|_| Reply::text(200, "thanks")).await;
    let secret = "partner-canary-secret";
    let proxy = Proxy::start(&format!(
        "capture: {{}}\ninspect_listen: 127.0.0.1:0\nwebhook_listen: 127.0.0.1:0\nwebhooks:\n  partner:\n    path: /partner\n    scheme: hmac\n    header: X-Sig\n    algorithm: sha256\n    encoding: hex\n    secrets: [\"{secret}\"]\n    forward_to: {}\n",
        app.url("/hooks/partner")
    ))
    .await;
    let body = r#"{"event": "paid", "id": "evt_1"}"#;
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(body.as_bytes());
    let signature = hex::encode(mac.finalize().into_bytes());
    let webhook = proxy.app().webhook_addr().expect("webhook listener");
    let request = http::Request::post(format!("http://{webhook}/partner"))
        .header("x-sig", &signature)
        .header("content-type", "application/json")
        .body(full(body))
        .unwrap();
    let answer = send(&http1_client(), request).await;
    assert_eq!(answer.status, 200, "{}", answer.text());
    assert_eq!(app.count(), 1);

    let base = format!("http://{}", proxy.app().inspect_addr.unwrap());
    let list = json(&format!("{base}/api/exchanges")).await;
    let text = list.to_string();
    assert!(
        text.contains("partner") && text.contains("verified"),
        "{text}"
    );
    assert!(!text.contains(secret));
    let id = newest_id(&list);
    let replay = http::Request::post(format!("{base}/api/webhooks/{id}/replay"))
        .header("x-outpost-inspector", "1")
        .body(empty())
        .unwrap();
    let replayed = send(&http1_client(), replay).await;
    assert_eq!(replayed.status, 200, "{}", replayed.text());
    let seen = app.requests();
    assert_eq!(
        seen.len(),
        2,
        "the application received the delivery a second time"
    );
    assert_eq!(seen[1].body, body);
    assert_eq!(seen[1].header("x-sig"), Some(signature.as_str()));
    proxy.shutdown().await;
}

/// Each attempt of a retried call is in the capture: its outcome, status and why another
/// followed; and the time the limiter held the request.
#[tokio::test]
async fn attempts_and_limiter_wait_are_captured() {
    let mock = MockUpstream::queue(vec![Reply::status(503)]).await;
    let proxy = Proxy::start(&format!(
        "capture: {{}}\ninspect_listen: 127.0.0.1:0\nupstreams:\n  api:\n    base_url: {}\n    retry: {{ base_delay: 1ms }}\n    rate_limit: {{ requests_per_second: 20, burst: 1, max_wait: 5s }}\n",
        mock.url("")
    ))
    .await;
    assert_eq!(proxy.get("/api/v1/items").await.status, 200);
    let base = format!("http://{}", proxy.app().inspect_addr.unwrap());
    let list = json(&format!("{base}/api/exchanges")).await;
    let detail = json(&format!("{base}/api/exchanges/{}", newest_id(&list))).await;
    let attempts = detail["attempts"]
        .as_array()
        .unwrap_or_else(|| panic!("{detail}"));
    assert_eq!(attempts.len(), 2, "{detail}");
    assert_eq!(attempts[0]["status"], 503);
    assert_eq!(attempts[0]["retry_reason"], "status");
    assert_eq!(attempts[1]["status"], 200);
    assert!(attempts[1]["retry_reason"].is_null());
    let waited = detail["timings"]["limiter_wait_ms"].as_f64();
    assert!(
        waited.is_some_and(|ms| ms > 1.0),
        "the second attempt waited ~50 ms for a token: {detail}"
    );
    proxy.shutdown().await;
}
