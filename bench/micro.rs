//! Criterion micro-benchmarks for the per-request hot path: routing, header work and the limiter.
//!
//! Run with `cargo bench --bench micro` (see `bench/README.md`, "Micro-benchmarks"). Every
//! input comes from one parsed `proxy.yaml` (five upstreams, as a real sidecar has), and every
//! benchmark calls the function the proxy calls, with the arguments it passes: `route.rs` gets
//! the `Host` header and `uri.path()` (`proxy.rs`), the header functions get the application's
//! request headers (`stack.rs`, `prepare` and `build_request`), and the limiter is the one
//! `UpstreamStack::new` builds from the upstream's `rate_limit`.

use std::hint::black_box;
use std::path::Path;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion};
use http::header::{HeaderMap, HeaderName, HeaderValue};
use http::Uri;
use outpost::config::{self, Config, Upstream};
use outpost::route::{check_path, Router};
use outpost::stack::auth::Credentials;
use outpost::stack::headers::{sanitize_request, sanitize_response};
use outpost::stack::ratelimit::Limiter;

/// Five upstreams. `stripe` has a rate limit and an in-flight cap, `github` a rate limit alone,
/// `sendgrid` none. The rate is the highest the config accepts (as in `bench/run.sh`'s
/// "outpost-full"); the burst of 10^9 is there so that no benchmark loop, however fast, empties
/// the bucket: the admission path measured must never wait.
const CONFIG: &str = r#"
version: 1
upstreams:
  stripe:
    base_url: https://api.stripe.com
    auth: { type: bearer, token: sk_test_bench_0123456789abcdefghijklmnopqrstuvwxyz }
    headers: { Stripe-Version: "2024-06-20" }
    rate_limit: { requests_per_second: 1000000, burst: 1000000000, max_wait: 2s, max_in_flight: 64 }
    hosts: [stripe.outpost.local]
  github:
    base_url: https://api.github.com
    auth: { type: bearer, token: ghp_bench0123456789abcdefghijklmnopqrstuv }
    rate_limit: { requests_per_second: 1000000, burst: 1000000000 }
  sendgrid:
    base_url: https://api.sendgrid.com
    auth: { type: bearer, token: SG.bench.0123456789abcdefghijklmnopqrstuvwxyz }
  twilio:
    base_url: https://api.twilio.com/2010-04-01
    auth: { type: basic, username: AC0123456789abcdef, password: bench_password }
  openai:
    base_url: https://api.openai.com
    auth: { type: bearer, tokens: [sk-bench-a, sk-bench-b] }
"#;

fn config() -> Config {
    match config::load_str(CONFIG, Path::new("/etc/outpost/proxy.yaml")) {
        Ok(config) => config,
        Err(e) => panic!("bench config is invalid: {e}"),
    }
}

fn upstream<'a>(config: &'a Config, name: &str) -> &'a Upstream {
    config
        .upstreams
        .iter()
        .find(|u| u.name == name)
        .unwrap_or_else(|| panic!("no upstream `{name}` in the bench config"))
}

/// A `HeaderMap` from name/value pairs, in order (repeated names are appended).
fn header_map(pairs: &[(&str, &str)]) -> HeaderMap {
    let mut map = HeaderMap::with_capacity(pairs.len());
    for (name, value) in pairs {
        map.append(
            HeaderName::from_bytes(name.as_bytes()).expect("valid header name"),
            HeaderValue::from_str(value).expect("valid header value"),
        );
    }
    map
}

/// What an application's HTTP client sends to `http://127.0.0.1:8080/stripe/v1/charges`.
fn app_request_headers() -> HeaderMap {
    header_map(&[
        ("host", "127.0.0.1:8080"),
        ("user-agent", "Stripe/v1 PythonBindings/10.12.0"),
        ("accept", "*/*"),
        ("accept-encoding", "gzip, deflate"),
        ("content-type", "application/x-www-form-urlencoded"),
        ("content-length", "52"),
        // The application's own placeholder: stripped, never forwarded.
        ("authorization", "Bearer app-placeholder"),
        ("connection", "keep-alive"),
        ("x-request-id", "6f1c2d4e-8a3b-4c5d-9e7f-0a1b2c3d4e5f"),
        (
            "traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ),
        ("idempotency-key", "charge-7f3a9c1e"),
    ])
}

/// What api.stripe.com answers (trimmed to the usual set), plus the hop-by-hop pair a
/// keep-alive upstream adds.
fn upstream_response_headers() -> HeaderMap {
    header_map(&[
        ("server", "nginx"),
        ("date", "Thu, 20 Jun 2024 12:00:00 GMT"),
        ("content-type", "application/json"),
        ("content-length", "1342"),
        ("connection", "keep-alive"),
        ("keep-alive", "timeout=5"),
        ("access-control-allow-credentials", "true"),
        (
            "access-control-allow-methods",
            "GET, HEAD, PUT, PATCH, POST, DELETE",
        ),
        ("access-control-allow-origin", "*"),
        ("access-control-max-age", "300"),
        ("cache-control", "no-cache, no-store"),
        ("idempotency-key", "charge-7f3a9c1e"),
        ("request-id", "req_8dJ3kS0aPq2mWx"),
        ("stripe-version", "2024-06-20"),
        (
            "strict-transport-security",
            "max-age=63072000; includeSubDomains; preload",
        ),
    ])
}

fn routing(c: &mut Criterion) {
    let config = config();
    // As `proxy::Generation::build` makes it.
    let router = Router::new(
        config
            .upstreams
            .iter()
            .map(|u| (u.name.as_str(), u.hosts.as_slice())),
    );
    // `proxy.rs` routes on the `Host` header and `uri.path()` (the query is not part of it).
    let hit: Uri = "/stripe/v1/charges?limit=3".parse().expect("valid uri");
    let local = Some("127.0.0.1:8080");
    assert_eq!(
        router.route(local, hit.path()).map(|r| r.rest).ok(),
        Some("/v1/charges")
    );
    assert!(router.route(local, "/nope/x").is_err());
    assert!(router
        .route(Some("stripe.outpost.local:8080"), "/v1/charges")
        .is_ok());

    // A normal path takes `check_path`'s fast path (no `.`, `%` or `\`); the long one, an S3 key
    // with dotted file names and escapes, makes it walk every segment.
    let normal = "/stripe/v1/customers/cus_Q2aB3cD4eF5gH6/sources";
    let long = format!(
        "/s3{}/report%20final.v2.csv.gz",
        "/tenant-0042/exports/2024.06.20/part%2D0001".repeat(24)
    );
    assert!(check_path(normal).is_ok() && check_path(&long).is_ok());

    let mut group = c.benchmark_group("route");
    group.bench_function("path_hit", |b| {
        b.iter(|| router.route(black_box(local), black_box(hit.path())))
    });
    group.bench_function("path_miss", |b| {
        b.iter(|| router.route(black_box(local), black_box("/nope/x")))
    });
    group.bench_function("host_hit", |b| {
        b.iter(|| {
            router.route(
                black_box(Some("stripe.outpost.local:8080")),
                black_box("/v1/charges"),
            )
        })
    });
    group.bench_function("check_path_normal", |b| {
        b.iter(|| check_path(black_box(normal)))
    });
    group.bench_function(format!("check_path_long_{}b", long.len()), |b| {
        b.iter(|| check_path(black_box(&long)))
    });
    group.finish();
}

fn headers(c: &mut Criterion) {
    let config = config();
    let stripe = upstream(&config, "stripe");
    let credentials = Credentials::new(stripe.auth.as_ref().expect("stripe has auth"));
    let request = app_request_headers();
    let mut sanitized = request.clone();
    sanitize_request(&mut sanitized, false);
    let response = upstream_response_headers();

    // Each routine gets a fresh copy of the input; the copy is made outside the timing.
    let mut group = c.benchmark_group("headers");
    group.bench_function("sanitize_request", |b| {
        b.iter_batched_ref(
            || request.clone(),
            |h| sanitize_request(black_box(h), false),
            BatchSize::SmallInput,
        )
    });
    // `Credentials::strip` then `apply` of the bearer key, on already sanitized headers.
    group.bench_function("inject_bearer", |b| {
        b.iter_batched_ref(
            || (sanitized.clone(), String::from("/v1/charges")),
            |(h, path_and_query)| {
                credentials.strip(black_box(h));
                credentials.apply(credentials.next_key(), h, path_and_query);
            },
            BatchSize::SmallInput,
        )
    });
    // All the header work of one request with one attempt, in `stack.rs` order: `prepare`
    // (sanitize, static headers, strip) then `build_request` (per-attempt copy, inject).
    group.bench_function("request_total", |b| {
        b.iter_batched_ref(
            || (request.clone(), String::from("/v1/charges")),
            |(h, path_and_query)| {
                sanitize_request(black_box(h), false);
                for (name, value) in &stripe.headers {
                    h.insert(name.clone(), value.clone());
                }
                credentials.strip(h);
                let mut attempt = h.clone();
                credentials.apply(credentials.next_key(), &mut attempt, path_and_query);
                attempt
            },
            BatchSize::SmallInput,
        )
    });
    group.bench_function("sanitize_response", |b| {
        b.iter_batched_ref(
            || response.clone(),
            |h| sanitize_response(black_box(h), false),
            BatchSize::SmallInput,
        )
    });
    group.finish();
}

fn limiter(c: &mut Criterion) {
    let config = config();
    // The limiter uses `tokio::time`; the proxy calls it from a runtime worker.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("tokio runtime");
    // `stack.rs` passes the request's deadline; this one stays in the future for the whole run.
    let deadline = Some(tokio::time::Instant::now() + Duration::from_secs(3600));

    let mut group = c.benchmark_group("limiter");
    for (name, upstream) in [
        ("acquire_bucket_in_flight", "stripe"),
        ("acquire_bucket", "github"),
        ("acquire_unlimited", "sendgrid"),
    ] {
        // As `UpstreamStack::new` builds it (without the queue gauge and Redis).
        let limiter = Limiter::new(upstream_rate_limit(&config, upstream));
        group.bench_function(name, |b| {
            b.to_async(&runtime).iter(|| async {
                // An admission that had to wait or was refused would be measuring the wrong path.
                let admission = limiter.acquire(black_box(deadline)).await;
                admission.unwrap_or_else(|e| panic!("limiter throttled the bench: {e:?}"))
            })
        });
        assert_eq!(limiter.queued(), 0);
    }
    group.finish();
}

fn upstream_rate_limit<'a>(config: &'a Config, name: &str) -> Option<&'a config::RateLimit> {
    upstream(config, name).rate_limit.as_ref()
}

criterion_group! {
    name = micro;
    // Short runs: the whole suite takes about a minute.
    config = Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    targets = routing, headers, limiter
}
criterion_main!(micro);
