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
    let id = list
        .pointer("/exchanges/0/id")
        .or_else(|| list.pointer("/0/id"))
        .cloned()
        .unwrap_or_else(|| panic!("an exchange id in {text}"));
    let id = id
        .as_u64()
        .map_or_else(|| id.as_str().unwrap().to_string(), |n| n.to_string());
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
