//! Quota pacing (`rate_limit.quota`) through the real proxy: a mock API enforces a quota the
//! config does not know, reports it in `X-RateLimit-*` headers and answers 429 beyond it.
//!
//! The quota is the issue's own: 100 requests per 10 s window, 4 concurrent clients for 60 s
//! (the windows are aligned to epoch seconds, as GitHub's are, so `X-RateLimit-Reset` is exact).
//! Each window that lies wholly inside the run must see ≥ 90 of its 100 requests used, and
//! the upstream must never answer 429. The two tests run in parallel (about 60 s of wall time).

mod support;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use http::Request;
use support::*;

const LIMIT: u64 = 100;
const WINDOW_SECS: u64 = 10;
const RUN: Duration = Duration::from_secs(60);
const CLIENTS: usize = 4;

/// Per window (its start, epoch seconds): answers 200 and 429.
#[derive(Default)]
struct Quota {
    windows: BTreeMap<u64, (u64, u64)>,
}

/// A mock API with a fixed-window quota of [`LIMIT`] per [`WINDOW_SECS`].
async fn quota_api() -> (MockUpstream, Arc<Mutex<Quota>>) {
    let quota = Arc::new(Mutex::new(Quota::default()));
    let state = quota.clone();
    let mock = MockUpstream::start(move |_| {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let window = now - now % WINDOW_SECS;
        let reset = (window + WINDOW_SECS).to_string();
        let mut q = state.lock().unwrap();
        let counts = q.windows.entry(window).or_default();
        let used = counts.0;
        let limit = LIMIT.to_string();
        if used >= LIMIT {
            counts.1 += 1;
            return Reply::with(
                429,
                &[
                    ("x-ratelimit-limit", &limit),
                    ("x-ratelimit-remaining", "0"),
                    ("x-ratelimit-reset", &reset),
                ],
                "{\"message\":\"API rate limit exceeded\"}",
            );
        }
        counts.0 += 1;
        let remaining = (LIMIT - used - 1).to_string();
        Reply::with(
            200,
            &[
                ("x-ratelimit-limit", &limit),
                ("x-ratelimit-remaining", &remaining),
                ("x-ratelimit-reset", &reset),
            ],
            "{}",
        )
    })
    .await;
    (mock, quota)
}

/// `clients` loops, each sending requests back to back until `end`; counts answers by status.
async fn load(proxy: &Proxy, clients: usize, end: Instant) -> BTreeMap<u16, usize> {
    let tasks: Vec<_> = (0..clients)
        .map(|_| {
            let client = proxy.client.clone();
            let url = proxy.url("/api/items");
            tokio::spawn(async move {
                let mut seen = BTreeMap::new();
                while Instant::now() < end {
                    let answer = send(&client, Request::get(&url).body(empty()).unwrap()).await;
                    *seen.entry(answer.status.as_u16()).or_insert(0) += 1;
                }
                seen
            })
        })
        .collect();
    let mut total = BTreeMap::new();
    for t in tasks {
        for (status, n) in t.await.expect("client") {
            *total.entry(status).or_insert(0) += n;
        }
    }
    total
}

/// The checks both tests make: no upstream 429, ≥ 90 % of each whole window used.
fn assert_quota_followed(quota: &Mutex<Quota>, started: SystemTime, seen: &BTreeMap<u16, usize>) {
    let q = quota.lock().unwrap();
    let start = started.duration_since(UNIX_EPOCH).unwrap().as_secs();
    let end = start + RUN.as_secs();
    eprintln!(
        "answers to the app: {seen:?}; per window (200s, 429s): {:?}",
        q.windows
    );
    let rejected: u64 = q.windows.values().map(|(_, r)| r).sum();
    assert_eq!(rejected, 0, "the upstream answered 429: {:?}", q.windows);
    let whole: Vec<_> = q
        .windows
        .iter()
        .filter(|(w, _)| **w > start && **w + WINDOW_SECS <= end)
        .collect();
    assert!(whole.len() >= 4, "{whole:?}");
    for (window, (ok, _)) in whole {
        assert!(
            *ok * 100 >= LIMIT * 90,
            "window {window}: only {ok} of {LIMIT} used: {:?}",
            q.windows
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pacing_follows_an_unknown_quota_without_a_429() {
    let (mock, quota) = quota_api().await;
    let proxy = Proxy::start(&format!(
        "upstreams:
           api:
             base_url: {}
             rate_limit: {{ quota: x-ratelimit, max_wait: 15s }}
        ",
        mock.url("")
    ))
    .await;
    let started = SystemTime::now();
    let seen = load(&proxy, CLIENTS, Instant::now() + RUN).await;
    assert_quota_followed(&quota, started, &seen);
    let metrics = proxy.metrics();
    assert!(
        metrics.contains(r#"outpost_upstream_quota_remaining{upstream="api"}"#),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"outpost_upstream_pacing_rate{upstream="api"}"#),
        "{metrics}"
    );
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_sharing_redis_follow_the_quota_without_a_429() {
    let redis = RedisServer::start(&[]).await;
    let (mock, quota) = quota_api().await;
    let config = format!(
        "upstreams:
           api:
             base_url: {}
             rate_limit: {{ quota: x-ratelimit, max_wait: 15s,
                            shared: {{ redis_url: \"{}\", expected_replicas: 2 }} }}
        ",
        mock.url(""),
        redis.url()
    );
    let a = Proxy::start(&config).await;
    let b = Proxy::start(&config).await;
    let started = SystemTime::now();
    let end = Instant::now() + RUN;
    let (seen_a, seen_b) = tokio::join!(load(&a, CLIENTS / 2, end), load(&b, CLIENTS / 2, end));
    let mut seen = seen_a;
    for (status, n) in seen_b {
        *seen.entry(status).or_insert(0) += n;
    }
    assert_quota_followed(&quota, started, &seen);
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test]
async fn malformed_quota_headers_are_ignored_and_a_spent_budget_answers_429_at_once() {
    // Hostile or broken headers: never an error, the answer passes, the proxy keeps serving.
    let garbage = MockUpstream::start(|r| {
        let remaining = match r.path() {
            "/a" => "-5",
            "/b" => "99999999999999999999999999999999",
            "/c" => "NaN",
            _ => "1e400",
        };
        Reply::with(
            200,
            &[
                ("x-ratelimit-limit", "abc"),
                ("x-ratelimit-remaining", remaining),
                ("x-ratelimit-reset", "99999999999999999999"),
            ],
            "ok",
        )
    })
    .await;
    // The budget is spent for an hour.
    let spent = MockUpstream::start(|_| {
        let reset = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs()
            + 3600;
        Reply::with(
            200,
            &[
                ("x-ratelimit-limit", "5000"),
                ("x-ratelimit-remaining", "0"),
                ("x-ratelimit-reset", &reset.to_string()),
            ],
            "ok",
        )
    })
    .await;
    let proxy = Proxy::start(&format!(
        "upstreams:
           garbage: {{ base_url: {}, rate_limit: {{ quota: x-ratelimit }} }}
           spent: {{ base_url: {}, rate_limit: {{ quota: x-ratelimit, max_wait: 2s }} }}
        ",
        garbage.url(""),
        spent.url("")
    ))
    .await;
    for _ in 0..3 {
        for path in ["/garbage/a", "/garbage/b", "/garbage/c", "/garbage/d"] {
            assert_eq!(proxy.get(path).await.status, 200, "{path}");
        }
    }
    assert_eq!(garbage.count(), 12);

    assert_eq!(proxy.get("/spent/x").await.status, 200);
    let started = Instant::now();
    let answer = proxy.get("/spent/x").await;
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "refused at once"
    );
    let error = answer.assert_error(429, "rate_limited");
    let retry_after: u64 = answer.header("retry-after").unwrap().parse().unwrap();
    assert!((3590..=3602).contains(&retry_after), "{retry_after}");
    assert!(
        error["retry_after_seconds"].as_f64().unwrap() > 3500.0,
        "{error}"
    );
    assert_eq!(spent.count(), 1, "the spent budget is not asked again");
    let metrics = proxy.metrics();
    assert_eq!(
        metric(
            &metrics,
            "outpost_rate_limited_total",
            &[("upstream", "spent"), ("source", "upstream")]
        ),
        Some(1.0),
        "{metrics}"
    );
    assert_eq!(
        metric(
            &metrics,
            "outpost_upstream_quota_remaining",
            &[("upstream", "spent")]
        ),
        Some(0.0)
    );
    assert_eq!(
        metric(
            &metrics,
            "outpost_upstream_pacing_rate",
            &[("upstream", "spent")]
        ),
        Some(0.0)
    );
    proxy.shutdown().await;
}
