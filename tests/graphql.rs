//! GraphQL awareness (`graphql:`) through the real proxy: operations decide retries, a
//! throttling `200` is a rate-limit answer, and Shopify-style cost data paces queries by points.

mod support;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http::Request;
use serde_json::json;
use support::*;

const QUERY: &str = r#"{"query":"query Products { products(first: 10) { id } }"}"#;
const MUTATION: &str = r#"{"query":"mutation Create { productCreate(input: {}) { id } }"}"#;

fn throttled(available: f64) -> Reply {
    Reply::json(
        200,
        &json!({
            "errors": [{"message": "Throttled", "extensions": {"code": "THROTTLED"}}],
            "extensions": {"cost": {"requestedQueryCost": 100, "actualQueryCost": null,
                "throttleStatus": {"maximumAvailable": 1000.0, "currentlyAvailable": available,
                                   "restoreRate": 50.0}}}
        }),
    )
}

async fn graphql_proxy(mock: &MockUpstream, extra: &str) -> Proxy {
    Proxy::start(&format!(
        "upstreams:
           api:
             base_url: {}
             graphql: true
             {extra}
        ",
        mock.url("")
    ))
    .await
}

#[tokio::test]
async fn a_query_is_retried_after_a_503_a_mutation_only_with_a_key() {
    let mock = MockUpstream::queue(vec![
        Reply::status(503),
        Reply::json(200, &json!({"data": {}})),
        Reply::status(503),
        Reply::status(503),
        Reply::json(200, &json!({"data": {}})),
    ])
    .await;
    let proxy = graphql_proxy(&mock, "retry: { base_delay: 1ms, max_delay: 2ms }").await;
    let json = [("content-type", "application/json")];

    // A query, although POST, goes again.
    let answer = proxy.request("POST", "/api/graphql", &json, QUERY).await;
    assert_eq!(answer.status, 200, "{}", answer.text());
    assert_eq!(mock.count(), 2);

    // A mutation without a key does not, and gets no automatic key.
    let answer = proxy.request("POST", "/api/graphql", &json, MUTATION).await;
    assert_eq!(answer.status, 503);
    assert_eq!(mock.count(), 3);
    assert!(!mock.requests()[2].has("idempotency-key"));

    // With the application's key it does.
    let keyed = [
        ("content-type", "application/json"),
        ("idempotency-key", "k-1"),
    ];
    let answer = proxy
        .request("POST", "/api/graphql", &keyed, MUTATION)
        .await;
    assert_eq!(answer.status, 200);
    assert_eq!(mock.count(), 5);
    assert_eq!(mock.requests()[4].header("idempotency-key"), Some("k-1"));
    // The body reached the upstream unchanged, on every attempt.
    assert_eq!(mock.requests()[0].body, QUERY.as_bytes());
    assert_eq!(mock.requests()[1].body, QUERY.as_bytes());
    proxy.shutdown().await;
}

#[tokio::test]
async fn unparsable_or_oversized_bodies_pass_unchanged_and_are_not_retried() {
    let mock = MockUpstream::start(|_| Reply::status(503)).await;
    let proxy = graphql_proxy(
        &mock,
        "retry: { base_delay: 1ms, max_delay: 2ms, max_body_bytes: 64 }",
    )
    .await;
    let json = [("content-type", "application/json")];
    let answer = proxy
        .request("POST", "/api/graphql", &json, "{not json")
        .await;
    assert_eq!(answer.status, 503);
    assert_eq!(mock.count(), 1, "treated as a mutation");
    let big = format!(r#"{{"query":"{{ a }}", "pad": "{}"}}"#, "x".repeat(10_000));
    let answer = proxy
        .request("POST", "/api/graphql", &json, big.clone())
        .await;
    assert_eq!(answer.status, 503);
    assert_eq!(mock.count(), 2, "over the cap: a mutation");
    assert_eq!(mock.requests()[1].body, big.as_bytes());
    // A GET query is a query; REST paths beside it keep their own rules.
    let answer = proxy.get("/api/graphql?query=%7B%20a%20%7D").await;
    assert_eq!(answer.status, 503);
    assert_eq!(mock.count(), 5, "three attempts");
    proxy.shutdown().await;
}

#[tokio::test]
async fn a_throttled_200_pauses_the_upstream_is_counted_and_a_query_is_retried() {
    // Retries on: the throttled query waits out the refill (80 points at 50/s = 1.6 s) and
    // goes again; the application sees only the good answer.
    let mock = MockUpstream::queue(vec![
        throttled(20.0),
        Reply::json(200, &json!({"data": {}})),
    ])
    .await;
    let proxy = graphql_proxy(&mock, "").await;
    let json = [("content-type", "application/json")];
    let answer = proxy.request("POST", "/api/graphql", &json, QUERY).await;
    assert_eq!(answer.status, 200);
    assert_eq!(answer.json(), json!({"data": {}}));
    assert_eq!(mock.count(), 2);
    let metrics = proxy.metrics();
    assert_eq!(
        metric(
            &metrics,
            "outpost_rate_limited_total",
            &[("upstream", "api"), ("source", "upstream")]
        ),
        Some(1.0),
        "{metrics}"
    );
    proxy.shutdown().await;

    // Retries off: the throttled answer goes back, and the next request waits for the pause.
    let mock = MockUpstream::queue(vec![throttled(20.0)]).await;
    let proxy = graphql_proxy(&mock, "retry: { max_attempts: 1 }").await;
    let answer = proxy.request("POST", "/api/graphql", &json, QUERY).await;
    assert_eq!(answer.status, 200);
    assert!(answer.text().contains("THROTTLED"));
    let started = Instant::now();
    let answer = proxy.request("POST", "/api/graphql", &json, QUERY).await;
    assert_eq!(answer.status, 200);
    let waited = started.elapsed();
    assert!(waited >= Duration::from_millis(1400), "{waited:?}");
    let metrics = proxy.metrics();
    assert_eq!(
        metric(
            &metrics,
            "outpost_rate_limited_total",
            &[("upstream", "api"), ("source", "upstream")]
        ),
        Some(1.0),
        "{metrics}"
    );
    proxy.shutdown().await;
}

/// Shopify's GraphQL points bucket: 1000 points, restoring 50 per second.
struct Bucket {
    available: f64,
    at: Instant,
    served: Vec<Instant>,
    throttled: usize,
}

const COST: f64 = 100.0;
const MAX: f64 = 1000.0;
const RESTORE: f64 = 50.0;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn points_pacing_keeps_a_shopify_bucket_from_throttling() {
    let bucket = Arc::new(Mutex::new(Bucket {
        available: MAX,
        at: Instant::now(),
        served: Vec::new(),
        throttled: 0,
    }));
    let state = bucket.clone();
    let mock = MockUpstream::start(move |_| {
        let mut b = state.lock().unwrap();
        let now = Instant::now();
        b.available = (b.available + RESTORE * (now - b.at).as_secs_f64()).min(MAX);
        b.at = now;
        let over = b.available < COST;
        if over {
            b.throttled += 1;
        } else {
            b.available -= COST;
            b.served.push(now);
        }
        let status = json!({"maximumAvailable": MAX, "currentlyAvailable": b.available.floor(),
                            "restoreRate": RESTORE});
        let mut answer = json!({"extensions": {"cost": {"requestedQueryCost": COST,
            "actualQueryCost": if over { serde_json::Value::Null } else { json!(COST) },
            "throttleStatus": status}}});
        if over {
            answer["errors"] =
                json!([{"message": "Throttled", "extensions": {"code": "THROTTLED"}}]);
        } else {
            answer["data"] = json!({"products": []});
        }
        Reply::json(200, &answer)
    })
    .await;
    let proxy = Proxy::start(&format!(
        "upstreams:
           shop:
             preset: shopify
             base_url: {}
             auth: {{ value: shpat_test }}
             rate_limit: {{ quota: shopify, max_wait: 20s }}
        ",
        mock.url("/admin/api/2024-10")
    ))
    .await;
    const RUN: Duration = Duration::from_secs(30);
    const STEADY_FROM: Duration = Duration::from_secs(10);
    let started = Instant::now();
    let end = started + RUN;
    let clients: Vec<_> = (0..4)
        .map(|_| {
            let client = proxy.client.clone();
            let url = proxy.url("/shop/graphql.json");
            tokio::spawn(async move {
                let (mut ok, mut throttled, mut other) = (0, 0, 0);
                while Instant::now() < end {
                    let request = Request::post(&url)
                        .header("content-type", "application/json")
                        .body(full(QUERY))
                        .unwrap();
                    let answer = send(&client, request).await;
                    match answer.status.as_u16() {
                        200 if answer.text().contains("THROTTLED") => throttled += 1,
                        200 => ok += 1,
                        _ => other += 1,
                    }
                }
                (ok, throttled, other)
            })
        })
        .collect();
    let mut totals = (0, 0, 0);
    for c in clients {
        let (ok, throttled, other) = c.await.unwrap();
        totals = (totals.0 + ok, totals.1 + throttled, totals.2 + other);
    }
    let (steady, upstream_throttled) = {
        let b = bucket.lock().unwrap();
        let steady = b
            .served
            .iter()
            .filter(|t| **t >= started + STEADY_FROM && **t < end)
            .count() as f64;
        (steady, b.throttled)
    };
    let rate = steady * COST / (RUN - STEADY_FROM).as_secs_f64();
    eprintln!(
        "app saw (ok, throttled, other) = {totals:?}; upstream throttled {upstream_throttled}; steady {rate:.1} points/s"
    );
    assert_eq!(totals.1, 0, "a THROTTLED answer reached the application");
    assert_eq!(totals.2, 0, "other answers");
    assert!(rate >= 0.9 * RESTORE, "{rate} points/s of {RESTORE}");
    proxy.shutdown().await;
}

#[tokio::test]
async fn a_hostile_document_is_forwarded_as_a_mutation_and_the_proxy_keeps_serving() {
    let mock = MockUpstream::start(|_| Reply::status(503)).await;
    let proxy = graphql_proxy(
        &mock,
        "retry: { base_delay: 1ms, max_delay: 2ms, max_body_bytes: 1MiB }",
    )
    .await;
    let json = [("content-type", "application/json")];
    // 300 000 levels of nesting: the parser's recursion limit stops it, not the stack's end.
    let deep = format!("{}{}", "{a".repeat(300_000), "}".repeat(300_000));
    let body = serde_json::json!({ "query": deep }).to_string();
    assert!(body.len() < 1024 * 1024);
    let answer = proxy
        .request("POST", "/api/graphql", &json, body.clone())
        .await;
    assert_eq!(answer.status, 503);
    assert_eq!(mock.count(), 1, "not a query: sent once");
    assert_eq!(mock.requests()[0].body.len(), body.len());
    let answer = proxy.request("POST", "/api/graphql", &json, QUERY).await;
    assert_eq!(answer.status, 503);
    assert_eq!(
        mock.count(),
        4,
        "still serving; a query gets its three attempts"
    );
    proxy.shutdown().await;
}

#[tokio::test]
async fn github_graphql_points_are_their_own_budget() {
    // GraphQL answers carry the `graphql` resource's X-RateLimit-* (points); REST answers the
    // `core` one. Spent GraphQL points hold the next query until the reset, not REST calls.
    let mock = MockUpstream::start(|r| {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let (resource, remaining) = if r.path() == "/graphql" {
            ("graphql", "0")
        } else {
            ("core", "4999")
        };
        Reply::with(
            200,
            &[
                ("content-type", "application/json"),
                ("x-ratelimit-limit", "5000"),
                ("x-ratelimit-remaining", remaining),
                ("x-ratelimit-reset", &(now + 2).to_string()),
                ("x-ratelimit-resource", resource),
            ],
            "{\"data\":{}}",
        )
    })
    .await;
    let proxy = Proxy::start(&format!(
        "upstreams:
           gh:
             preset: github
             base_url: {}
             auth: {{ token: ghp_test }}
             rate_limit: {{ max_wait: 10s }}
        ",
        mock.url("")
    ))
    .await;
    let json = [("content-type", "application/json")];
    assert_eq!(
        proxy
            .request("POST", "/gh/graphql", &json, QUERY)
            .await
            .status,
        200
    );
    // REST goes at once.
    let started = Instant::now();
    assert_eq!(proxy.get("/gh/repos/o/r").await.status, 200);
    assert!(
        started.elapsed() < Duration::from_millis(500),
        "{:?}",
        started.elapsed()
    );
    // The next query waits for the points' reset (within 2 s, plus the 1 s grace).
    let answer = proxy.request("POST", "/gh/graphql", &json, QUERY).await;
    assert_eq!(answer.status, 200);
    let waited = started.elapsed();
    assert!(waited >= Duration::from_millis(1000), "{waited:?}");
    assert!(waited <= Duration::from_secs(4), "{waited:?}");
    proxy.shutdown().await;
}
