//! `oauth2_refresh_token` with `store: {redis_url}` against a real `redis-server`: two proxy
//! replicas share one rotating refresh token (Xero, QuickBooks: every use rotates it, a spent
//! one is refused with `400 invalid_grant`). Exactly one replica refreshes at a time; the other
//! waits for the new access token and uses it. A restarted replica uses the stored state, not
//! the spent seed of its config.

mod support;

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::future::join_all;
use serde_json::json;
use support::*;

/// A rotating token endpoint that takes `delay` to answer: the valid refresh token, and every
/// refresh token it was sent.
struct Rotating {
    mock: MockUpstream,
    current: Arc<Mutex<String>>,
    sent: Arc<Mutex<Vec<String>>>,
}

async fn rotating(seed: &str, delay: Duration) -> Rotating {
    let current = Arc::new(Mutex::new(seed.to_string()));
    let sent: Arc<Mutex<Vec<String>>> = Arc::default();
    let (valid, log) = (current.clone(), sent.clone());
    let mock = MockUpstream::start(move |req| {
        let presented = form_pairs(&req.body)
            .into_iter()
            .find_map(|(k, v)| (k == "refresh_token").then_some(v))
            .unwrap_or_default();
        let mut log = log.lock().unwrap();
        log.push(presented.clone());
        let n = log.len();
        let mut valid = valid.lock().unwrap();
        let reply = if presented != *valid {
            Reply::json(400, &json!({"error": "invalid_grant"}))
        } else {
            *valid = format!("rt-canary-{n}");
            Reply::json(
                200,
                &json!({"access_token": format!("at-canary-{n}"), "refresh_token": *valid,
                        "expires_in": 3600, "token_type": "Bearer"}),
            )
        };
        let Reply::Respond(response) = reply else {
            unreachable!()
        };
        let (tx, rx) = tokio::sync::oneshot::channel();
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            let _ = tx.send(response);
        });
        Reply::Wait(rx)
    })
    .await;
    Rotating {
        mock,
        current,
        sent,
    }
}

/// The API: accepts `Bearer at-canary-N` unless that token was revoked.
fn api(revoked: Arc<Mutex<HashSet<String>>>) -> impl Fn(&RecordedRequest) -> Reply {
    move |req| match req.header("authorization") {
        Some(a)
            if a.starts_with("Bearer at-canary-")
                && !revoked.lock().unwrap().contains(&a["Bearer ".len()..]) =>
        {
            Reply::json(200, &json!({"ok": true}))
        }
        _ => Reply::json(401, &json!({"error": "unauthenticated"})),
    }
}

fn config(api: &str, token_url: &str, seed: &str, redis_url: &str) -> String {
    format!(
        "upstreams:\n  xero:\n    base_url: {api}\n    auth:\n      type: oauth2_refresh_token\n      token_url: {token_url}\n      client_id: app-id\n      client_secret: app-secret\n      refresh_token: {seed}\n      store: {{ redis_url: \"{redis_url}\" }}\n"
    )
}

fn store_degraded(proxy: &Proxy) -> Option<f64> {
    proxy.metrics().lines().find_map(|line| {
        line.strip_prefix(r#"outpost_token_store_degraded{upstream="xero"} "#)
            .and_then(|v| v.trim().parse().ok())
    })
}

async fn connected(proxy: &Proxy) {
    poll_until("the token store is connected", || async {
        store_degraded(proxy) == Some(0.0)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_refresh_once_and_a_restart_uses_the_stored_token() {
    let redis = RedisServer::start(&[]).await;
    let tokens = rotating("rt-seed", Duration::from_millis(200)).await;
    let revoked: Arc<Mutex<HashSet<String>>> = Arc::default();
    let api = MockUpstream::start(api(revoked.clone())).await;
    let yaml = config(
        &api.url(""),
        &tokens.mock.url("/token"),
        "rt-seed",
        &redis.url(),
    );
    let a = Proxy::start(&yaml).await;
    let b = Proxy::start(&yaml).await;
    connected(&a).await;
    connected(&b).await;

    // 200 concurrent cold requests, split over both replicas: one refresh in all. (Their own
    // client, dropped afterwards: a connection its pool opened but never used would hold a
    // proxy's drain until `header_read_timeout`.)
    let client = http1_client();
    let calls = (0..200).map(|i| {
        let proxy = if i % 2 == 0 { &a } else { &b };
        let req = http::Request::get(proxy.url("/xero/api.xro/2.0/Invoices"))
            .body(empty())
            .unwrap();
        send(&client, req)
    });
    let answers = join_all(calls).await;
    drop(client);
    for answer in &answers {
        assert_eq!(answer.status, 200, "{}", answer.text());
    }
    assert_eq!(
        *tokens.sent.lock().unwrap(),
        vec!["rt-seed".to_string()],
        "exactly one refresh request reached the token endpoint"
    );
    let requests = api.requests();
    assert_eq!(requests.len(), 200);
    assert!(
        requests
            .iter()
            .all(|r| r.header("authorization") == Some("Bearer at-canary-1")),
        "both replicas use the one access token"
    );
    assert_eq!(
        redis
            .cli(&["hget", "outpost:rt:{xero}", "refresh_token"])
            .await
            .trim(),
        "rt-canary-1",
        "the rotated refresh token is stored"
    );
    for p in [&a, &b] {
        assert!(!p.metrics().contains("canary"), "no token in /metrics");
    }

    // Replica A restarts (same config, whose seed is spent): it takes the stored access token,
    // without a refresh.
    a.shutdown().await;
    let a = Proxy::start(&yaml).await;
    connected(&a).await;
    assert_eq!(a.get("/xero/x").await.status, 200);
    assert_eq!(
        tokens.sent.lock().unwrap().len(),
        1,
        "no refresh on restart"
    );

    // The access token is revoked: A gets a 401, refreshes with the stored rotated token (the
    // seed would be refused), and retries; B then takes A's new token over without refreshing.
    revoked.lock().unwrap().insert("at-canary-1".into());
    let answer = a.get("/xero/x").await;
    assert_eq!(answer.status, 200, "{}", answer.text());
    let answer = b.get("/xero/x").await;
    assert_eq!(answer.status, 200, "{}", answer.text());
    assert_eq!(
        *tokens.sent.lock().unwrap(),
        vec!["rt-seed".to_string(), "rt-canary-1".to_string()],
        "one refresh, with the stored token"
    );
    assert_eq!(
        api.requests().last().unwrap().header("authorization"),
        Some("Bearer at-canary-2")
    );

    // The operator re-authorizes and configures a new seed: the stored family is ignored.
    *tokens.current.lock().unwrap() = "rt-new-seed".into();
    let c = Proxy::start(&config(
        &api.url(""),
        &tokens.mock.url("/token"),
        "rt-new-seed",
        &redis.url(),
    ))
    .await;
    connected(&c).await;
    assert_eq!(c.get("/xero/x").await.status, 200);
    assert_eq!(tokens.sent.lock().unwrap().last().unwrap(), "rt-new-seed");
    for p in [a, b, c] {
        p.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_grant_stops_every_replica_and_no_redis_means_no_refresh() {
    let mut redis = RedisServer::start(&[]).await;
    let tokens = rotating("rt-other", Duration::ZERO).await;
    let api = MockUpstream::start(api(Arc::default())).await;
    let yaml = config(
        &api.url(""),
        &tokens.mock.url("/token"),
        "rt-canary-spent",
        &redis.url(),
    );
    let a = Proxy::start(&yaml).await;
    let b = Proxy::start(&yaml).await;
    connected(&a).await;
    connected(&b).await;
    for p in [&a, &b, &a, &b] {
        let answer = p.get("/xero/x").await;
        let error = answer.assert_error(503, "credentials_unavailable");
        let message = error["message"].as_str().unwrap();
        assert!(message.contains("invalid_grant"), "{message}");
        assert!(!answer.text().contains("canary"), "{}", answer.text());
    }
    assert_eq!(
        tokens.mock.count(),
        1,
        "one refusal; the other replica reads it from the store: no refresh loop"
    );
    assert_eq!(api.count(), 0);

    // Redis down: a cold replica does not refresh (a rotated token it could not store would
    // be spent for every other replica); it answers 503 and the token endpoint is not called.
    redis.kill();
    *tokens.current.lock().unwrap() = "rt-fresh".into();
    let c = Proxy::start(&config(
        &api.url(""),
        &tokens.mock.url("/token"),
        "rt-fresh",
        &redis.url(),
    ))
    .await;
    let answer = c.get("/xero/x").await;
    let error = answer.assert_error(503, "credentials_unavailable");
    assert!(
        error["message"].as_str().unwrap().contains("unreachable"),
        "{error}"
    );
    assert_eq!(store_degraded(&c), Some(1.0));
    assert_eq!(tokens.mock.count(), 1);

    // Redis is back: the next request refreshes (once) and is served.
    redis.restart().await;
    connected(&c).await;
    poll_until("served once redis is back", || async {
        c.get("/xero/x").await.status == 200
    })
    .await;
    assert_eq!(tokens.mock.count(), 2);
    for p in [a, b, c] {
        p.shutdown().await;
    }
}

/// A damaged store (fields that are not numbers, a stored access token without an expiry) is
/// refreshed over: requests are served and the next write repairs it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_store_is_refreshed_over() {
    use sha2::Digest;
    let redis = RedisServer::start(&[]).await;
    let tokens = rotating("rt-seed-d", Duration::ZERO).await;
    let api = MockUpstream::start(api(Arc::default())).await;
    let seed = hex::encode(sha2::Sha256::digest(b"rt-seed-d"));
    let out = redis
        .cli(&[
            "hset",
            "outpost:rt:{xero}",
            "seed",
            &seed,
            "refresh_token",
            "rt-seed-d",
            "access_token",
            "at-junk",
            "expires_at",
            "soon",
            "generation",
            "1.5e400",
        ])
        .await;
    assert_eq!(out.trim(), "5", "{out}");
    let a = Proxy::start(&config(
        &api.url(""),
        &tokens.mock.url("/token"),
        "rt-seed-d",
        &redis.url(),
    ))
    .await;
    connected(&a).await;
    let answer = a.get("/xero/x").await;
    assert_eq!(answer.status, 200, "{}", answer.text());
    assert_eq!(*tokens.sent.lock().unwrap(), vec!["rt-seed-d".to_string()]);
    assert_eq!(
        redis
            .cli(&["hget", "outpost:rt:{xero}", "generation"])
            .await
            .trim(),
        "1"
    );
    assert_eq!(
        store_degraded(&a),
        Some(0.0),
        "no script failed on the damage"
    );
    a.shutdown().await;
}

/// `base_url: from_token` with the Redis store (Salesforce's refresh-token flow across
/// replicas): the replica that did not refresh takes the stored access token over together with
/// the `instance_url` it came with, so both send to the org's host.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_instance_url_is_stored_with_the_access_token() {
    let redis = RedisServer::start(&[]).await;
    let org = MockUpstream::start(|req| match req.header("authorization") {
        Some("Bearer 00D-canary") => Reply::json(200, &json!({"org": true})),
        _ => Reply::json(401, &json!([{"errorCode": "INVALID_SESSION_ID"}])),
    })
    .await;
    let instance = org.url("");
    let tokens = MockUpstream::start(move |_| {
        Reply::json(
            200,
            &json!({"access_token": "00D-canary", "instance_url": instance, "token_type": "Bearer"}),
        )
    })
    .await;
    let yaml = format!(
        "upstreams:\n  sf:\n    base_url: from_token\n    auth:\n      type: oauth2_refresh_token\n      token_url: {}\n      client_id: app-id\n      refresh_token: rt-seed\n      store: {{ redis_url: \"{}\" }}\n",
        tokens.url("/services/oauth2/token"),
        redis.url()
    );
    let a = Proxy::start(&yaml).await;
    let b = Proxy::start(&yaml).await;
    for proxy in [&a, &b] {
        poll_until("the token store is connected", || async {
            proxy
                .metrics()
                .lines()
                .any(|l| l.starts_with(r#"outpost_token_store_degraded{upstream="sf"} 0"#))
        })
        .await;
    }
    let answer = a.get("/sf/services/data/v60.0/limits").await;
    assert_eq!(answer.status, 200, "{}", answer.text());
    // b refreshes nothing: it adopts a's token and its instance_url from Redis.
    let answer = b.get("/sf/services/data/v60.0/limits").await;
    assert_eq!(answer.status, 200, "{}", answer.text());
    assert_eq!(tokens.requests().len(), 1, "one refresh for both replicas");
    assert_eq!(
        org.requests().len(),
        2,
        "both replicas sent to the org's host"
    );
    a.shutdown().await;
    b.shutdown().await;
}
