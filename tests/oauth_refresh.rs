//! `oauth2_refresh_token` end to end (issue 11): a token server that rotates the refresh token
//! on every use and refuses a spent one with `invalid_grant` (Xero, QuickBooks, Microsoft:
//! REFERENCE.md "Refresh tokens"). Outpost stores each rotated token before using the access
//! token, so a restart never replays a spent token; `invalid_grant` is a `503
//! credentials_unavailable` without a refresh loop; a new configured seed replaces the stored
//! family; no refresh or access token appears in an error body or in `/metrics`.

mod support;

use std::sync::{Arc, Mutex};

use serde_json::json;
use support::*;

fn form_field(body: &[u8], name: &str) -> Option<String> {
    std::str::from_utf8(body).ok()?.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=')?;
        (k == name).then(|| {
            percent_encoding::percent_decode_str(&v.replace('+', " "))
                .decode_utf8_lossy()
                .into_owned()
        })
    })
}

/// A rotating token server: the valid refresh token, and every refresh token it was sent.
struct Rotating {
    mock: MockUpstream,
    current: Arc<Mutex<String>>,
    sent: Arc<Mutex<Vec<String>>>,
}

async fn rotating(seed: &str) -> Rotating {
    let current = Arc::new(Mutex::new(seed.to_string()));
    let sent: Arc<Mutex<Vec<String>>> = Arc::default();
    let (valid, log) = (current.clone(), sent.clone());
    let mock = MockUpstream::start(move |req| {
        let presented = form_field(&req.body, "refresh_token").unwrap_or_default();
        let mut log = log.lock().unwrap();
        log.push(presented.clone());
        let n = log.len();
        if form_field(&req.body, "grant_type").as_deref() != Some("refresh_token") {
            return Reply::json(400, &json!({"error": "unsupported_grant_type"}));
        }
        let mut valid = valid.lock().unwrap();
        if presented != *valid {
            return Reply::json(400, &json!({"error": "invalid_grant"}));
        }
        *valid = format!("rt-canary-{n}");
        Reply::json(
            200,
            &json!({"access_token": format!("at-canary-{n}"), "refresh_token": *valid,
                    "expires_in": 3600, "token_type": "Bearer"}),
        )
    })
    .await;
    Rotating {
        mock,
        current,
        sent,
    }
}

fn api() -> impl Fn(&RecordedRequest) -> Reply {
    |req| match req.header("authorization") {
        Some(a) if a.starts_with("Bearer at-canary-") => Reply::json(200, &json!({"ok": a})),
        _ => Reply::json(401, &json!({"error": "unauthenticated"})),
    }
}

fn config(api: &str, token_url: &str, seed: &str, store: &std::path::Path) -> String {
    format!(
        "upstreams:\n  xero:\n    base_url: {api}\n    auth:\n      type: oauth2_refresh_token\n      token_url: {token_url}\n      client_id: app-id\n      client_secret: app-secret\n      refresh_token: {seed}\n      store: {{ file: {} }}\n",
        store.display()
    )
}

#[tokio::test]
async fn rotated_tokens_are_stored_and_a_restart_never_replays_a_spent_one() {
    let tokens = rotating("rt-seed").await;
    let api = MockUpstream::start(api()).await;
    let dir = TempDir::new("refresh");
    let store = dir.path.join("xero-token.json");
    let yaml = config(&api.url(""), &tokens.mock.url("/token"), "rt-seed", &store);

    let proxy = Proxy::start(&yaml).await;
    let answer = proxy.get("/xero/api.xro/2.0/Invoices").await;
    assert_eq!(answer.status, 200, "{}", answer.text());
    let stored = std::fs::read_to_string(&store).expect("the rotated token is stored");
    assert!(stored.contains("rt-canary-1"), "{stored}");
    assert!(!proxy.metrics().contains("canary"));
    proxy.shutdown().await;

    // A restart with the same config: the seed in it is spent; the stored token is used.
    let proxy = Proxy::start(&yaml).await;
    let answer = proxy.get("/xero/api.xro/2.0/Invoices").await;
    assert_eq!(answer.status, 200, "{}", answer.text());
    assert_eq!(
        *tokens.sent.lock().unwrap(),
        vec!["rt-seed".to_string(), "rt-canary-1".to_string()]
    );
    assert!(std::fs::read_to_string(&store)
        .unwrap()
        .contains("rt-canary-2"));
    proxy.shutdown().await;

    // The operator re-authorizes and configures a new seed: the old family is ignored.
    *tokens.current.lock().unwrap() = "rt-new-seed".into();
    let yaml = config(
        &api.url(""),
        &tokens.mock.url("/token"),
        "rt-new-seed",
        &store,
    );
    let proxy = Proxy::start(&yaml).await;
    assert_eq!(proxy.get("/xero/x").await.status, 200);
    assert_eq!(tokens.sent.lock().unwrap().last().unwrap(), "rt-new-seed");
    proxy.shutdown().await;
}

#[tokio::test]
async fn invalid_grant_is_503_without_a_refresh_loop() {
    let tokens = rotating("rt-other").await;
    let api = MockUpstream::start(api()).await;
    let dir = TempDir::new("refresh-dead");
    let store = dir.path.join("token.json");
    let proxy = Proxy::start(&config(
        &api.url(""),
        &tokens.mock.url("/token"),
        "rt-canary-spent",
        &store,
    ))
    .await;
    for _ in 0..5 {
        let answer = proxy.get("/xero/x").await;
        let error = answer.assert_error(503, "credentials_unavailable");
        let message = error["message"].as_str().unwrap();
        assert!(message.contains("invalid_grant"), "{message}");
        assert!(!answer.text().contains("canary"), "{}", answer.text());
    }
    assert_eq!(
        tokens.mock.count(),
        1,
        "one refusal, then no more refreshes"
    );
    assert_eq!(api.count(), 0);
    proxy.shutdown().await;
}

#[tokio::test]
async fn a_store_with_both_a_file_and_a_redis_is_a_config_error() {
    let dir = TempDir::new("refresh-cfg");
    let path = dir.write(
        "proxy.yaml",
        "version: 1\nupstreams:\n  x:\n    base_url: https://api.example.com\n    auth: { type: oauth2_refresh_token, token_url: https://t.example/token, client_id: a, refresh_token: rt-canary, store: { file: /tmp/t.json, redis_url: \"redis://127.0.0.1\" } }\n",
    );
    let run = outpost(&["check", "-c", &path.display().to_string()], &[], None).await;
    assert_eq!(run.code, Some(1), "{}", run.stderr);
    let out = format!("{}{}", run.stdout, run.stderr);
    assert!(out.contains("proxy.yaml:5:"), "{out}");
    assert!(out.contains("store"), "{out}");
    assert!(!out.contains("rt-canary"), "{out}");
}

/// Refresh, `kill -9`, start again: the rotated token was on disk before it was used, so the
/// new process refreshes with it and never replays the spent seed.
#[tokio::test]
async fn a_killed_process_restarts_with_the_stored_token() {
    let tokens = rotating("rt-seed-k").await;
    let api = MockUpstream::start(api()).await;
    let dir = TempDir::new("refresh-kill");
    let store = dir.path.join("token.json");
    let yaml = config(
        &api.url(""),
        &tokens.mock.url("/token"),
        "rt-seed-k",
        &store,
    );
    let mut first = Binary::start(&yaml, &[]).await;
    assert_eq!(get(&first.url("/xero/x")).await.status, 200);
    first.signal("KILL");
    first.wait().await;
    let mut second = Binary::start(&yaml, &[]).await;
    assert_eq!(get(&second.url("/xero/x")).await.status, 200);
    assert_eq!(
        *tokens.sent.lock().unwrap(),
        vec!["rt-seed-k".to_string(), "rt-canary-1".to_string()],
        "the second process used the stored token, not the spent seed"
    );
    let stderr = second.stop_and_collect_stderr().await;
    let text = String::from_utf8_lossy(&stderr);
    assert!(
        !text.contains("rt-canary") && !text.contains("at-canary"),
        "{text}"
    );
}
