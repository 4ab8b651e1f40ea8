//! The shared webhook replay guard (`webhooks.*.shared`) against a real `redis-server`: two
//! Outpost replicas in front of one application; a delivery that reached replica A and is
//! retried by the provider to replica B is forwarded once. A failed forward releases the claim
//! everywhere, so the provider's retry is forwarded. Without Redis every delivery is still
//! forwarded, guarded by each replica's local cache.

mod support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use http::Request;
use outpost::config::{Secret, WebhookScheme};
use outpost::webhook::{provider_headers, SignInput, Spec};
use support::*;

fn config(app: &MockUpstream, redis_url: &str) -> String {
    format!(
        "version: 1\nlisten: 127.0.0.1:0\nadmin_listen: 127.0.0.1:0\nwebhook_listen: 127.0.0.1:0\n\
         webhooks:\n  gh:\n    path: /gh\n    scheme: github\n    secrets: [\"gh-secret\"]\n    \
         forward_to: {}\n    shared: {{ redis_url: \"{redis_url}\" }}\n",
        app.url("/hooks/github")
    )
}

/// A GitHub delivery as the provider sends it (and sends it again on a retry).
fn delivery(id: &str) -> (Vec<(String, String)>, Vec<u8>) {
    let body = format!(r#"{{"action":"opened","delivery":"{id}"}}"#).into_bytes();
    let spec = Spec::new(WebhookScheme::Github, vec![Secret::new("gh-secret")]);
    let headers = provider_headers(
        &spec,
        &SignInput {
            body: &body,
            timestamp: 0,
            id: Some(id),
            url: None,
        },
    )
    .unwrap();
    (headers, body)
}

/// `provider` is the provider's client: the test drops it before the proxies shut down (a
/// connection its pool opened but never used would hold a drain until `header_read_timeout`).
async fn deliver(provider: &HttpClient, proxy: &Proxy, id: &str) -> Answer {
    let (headers, body) = delivery(id);
    let addr = proxy.app().webhook_addr().expect("webhook listener");
    let mut req = Request::post(format!("http://{addr}/gh"));
    for (name, value) in &headers {
        req = req.header(name.as_str(), value.as_str());
    }
    send(provider, req.body(full(body)).unwrap()).await
}

fn degraded(proxy: &Proxy) -> Option<f64> {
    proxy.metrics().lines().find_map(|line| {
        line.strip_prefix(r#"outpost_webhook_replay_shared_degraded{webhook="gh"} "#)
            .and_then(|v| v.trim().parse().ok())
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delivery_retried_to_another_replica_is_forwarded_once() {
    let mut redis = RedisServer::start(&[]).await;
    // The application: 503 to the first delivery of `d-fail`, 200 to everything else.
    let fails = Arc::new(AtomicUsize::new(0));
    let seen = fails.clone();
    let app = MockUpstream::start(move |req| {
        let body = String::from_utf8_lossy(&req.body);
        if body.contains("d-fail") && seen.fetch_add(1, Ordering::SeqCst) == 0 {
            return Reply::text(503, "busy");
        }
        Reply::text(200, "thanks")
    })
    .await;
    let a = Proxy::start(&config(&app, &redis.url())).await;
    let b = Proxy::start(&config(&app, &redis.url())).await;
    let provider = http1_client();
    for p in [&a, &b] {
        poll_until("connected to redis", || async { degraded(p) == Some(0.0) }).await;
    }

    // 1. Delivered to A, retried to B: the application receives it once; B answers 200
    //    (a replay) so the provider stops retrying.
    let first = deliver(&provider, &a, "d-1").await;
    assert_eq!(first.status, 200, "{}", first.text());
    assert!(first.header("x-outpost-replayed").is_none());
    let retried = deliver(&provider, &b, "d-1").await;
    assert_eq!(retried.status, 200, "{}", retried.text());
    assert_eq!(retried.header("x-outpost-replayed"), Some("true"));
    assert_eq!(app.count(), 1, "forwarded exactly once");

    // 2. The same delivery to both replicas at once: one forward; the other copy is a replay
    //    or "in progress" (409, retryable), never a second forward.
    let (x, y) = tokio::join!(deliver(&provider, &a, "d-2"), deliver(&provider, &b, "d-2"));
    let mut statuses = [x.status.as_u16(), y.status.as_u16()];
    statuses.sort();
    assert!(
        statuses == [200, 200] || statuses == [200, 409],
        "{statuses:?}: {} / {}",
        x.text(),
        y.text()
    );
    assert_eq!(app.count(), 2, "the concurrent copies were forwarded once");

    // 3. The application fails A's forward (503): the claim is released in Redis too, so the
    //    provider's retry to B is forwarded.
    let failed = deliver(&provider, &a, "d-fail").await;
    assert_eq!(failed.status, 503);
    let retried = deliver(&provider, &b, "d-fail").await;
    assert_eq!(retried.status, 200, "{}", retried.text());
    assert!(retried.header("x-outpost-replayed").is_none());
    assert_eq!(app.count(), 4);
    assert_eq!(
        deliver(&provider, &a, "d-fail")
            .await
            .header("x-outpost-replayed"),
        Some("true")
    );

    // 4. Redis down: deliveries are still forwarded (never refused, never lost), and each
    //    replica's local guard still recognizes its own replays.
    redis.kill();
    let answer = deliver(&provider, &a, "d-3").await;
    assert_eq!(answer.status, 200, "{}", answer.text());
    assert!(answer.header("x-outpost-replayed").is_none());
    assert_eq!(app.count(), 5);
    poll_until("a reports the shared guard degraded", || async {
        degraded(&a) == Some(1.0)
    })
    .await;
    assert_eq!(
        deliver(&provider, &a, "d-3")
            .await
            .header("x-outpost-replayed"),
        Some("true")
    );
    assert_eq!(app.count(), 5);
    let answer = deliver(&provider, &b, "d-4").await;
    assert_eq!(answer.status, 200, "{}", answer.text());
    assert_eq!(app.count(), 6);

    // 5. Redis is back (empty): the guard is shared again.
    redis.restart().await;
    for p in [&a, &b] {
        poll_until("reconnected", || async {
            // A delivery makes a replica notice its dead connection.
            let _ = deliver(&provider, p, "d-poke").await;
            degraded(p) == Some(0.0)
        })
        .await;
    }
    let before = app.count();
    assert_eq!(deliver(&provider, &a, "d-5").await.status, 200);
    assert_eq!(
        deliver(&provider, &b, "d-5")
            .await
            .header("x-outpost-replayed"),
        Some("true")
    );
    assert_eq!(app.count(), before + 1);
    drop(provider);
    a.shutdown().await;
    b.shutdown().await;
}
