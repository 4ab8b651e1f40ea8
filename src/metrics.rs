//! Metric names, their descriptions, and the per-upstream handles the request path uses.
//!
//! Every metric Outpost exports is named here and nowhere else (DESIGN.md "Metrics"). Label
//! values are bounded: upstream and webhook names come from the config, methods are folded to
//! the standard set, statuses are numbers, and outcomes/reasons are fixed enums.

pub const REQUESTS_TOTAL: &str = "outpost_requests_total";
pub const REQUEST_DURATION_SECONDS: &str = "outpost_request_duration_seconds";
pub const UPSTREAM_ATTEMPTS_TOTAL: &str = "outpost_upstream_attempts_total";
pub const RETRIES_TOTAL: &str = "outpost_retries_total";
pub const RATE_LIMITED_TOTAL: &str = "outpost_rate_limited_total";
pub const IN_FLIGHT_REQUESTS: &str = "outpost_in_flight_requests";
pub const CIRCUIT_OPEN: &str = "outpost_circuit_open";
pub const OAUTH_TOKEN_REFRESHES_TOTAL: &str = "outpost_oauth_token_refreshes_total";
pub const WEBHOOKS_TOTAL: &str = "outpost_webhooks_total";
pub const CONFIG_RELOADS_TOTAL: &str = "outpost_config_reloads_total";
pub const BUILD_INFO: &str = "outpost_build_info";
/// Extension: requests waiting in an upstream's rate-limit queue.
pub const RATE_LIMIT_QUEUED: &str = "outpost_rate_limit_queued";
/// Extension: 1 while a pooled key is in rotation, 0 once the upstream rejected it (401/403).
pub const AUTH_KEY_HEALTHY: &str = "outpost_auth_key_healthy";
/// Extension: 1 while an upstream's shared (Redis) rate limit is not reachable and each replica
/// limits itself to `rate / expected_replicas`.
pub const RATE_LIMIT_SHARED_DEGRADED: &str = "outpost_rate_limit_shared_degraded";
/// Extension: 1 while a webhook's shared (Redis) replay guard is unreachable and this replica
/// guards against replays with its local cache only.
pub const WEBHOOK_REPLAY_SHARED_DEGRADED: &str = "outpost_webhook_replay_shared_degraded";
/// Extension: 1 while an `oauth2_refresh_token` upstream's Redis token store is unreachable
/// (no refresh then; cached access tokens are used until they expire).
pub const TOKEN_STORE_DEGRADED: &str = "outpost_token_store_degraded";
/// `rate_limit.quota`: the budget the upstream last reported (requests or points).
pub const UPSTREAM_QUOTA_REMAINING: &str = "outpost_upstream_quota_remaining";
/// Extension: requests per second the quota pacing currently allows (the configured rate,
/// lowered by the learned budget; `+Inf` while nothing bounds it).
pub const UPSTREAM_PACING_RATE: &str = "outpost_upstream_pacing_rate";
/// Log lines dropped because the log sink (stderr) was slower than the proxy (DESIGN.md).
pub const LOG_LINES_DROPPED_TOTAL: &str = "outpost_log_lines_dropped_total";

/// Every metric name Outpost exports (used by tests that check dashboards and alerts).
pub const ALL: &[&str] = &[
    REQUESTS_TOTAL,
    REQUEST_DURATION_SECONDS,
    UPSTREAM_ATTEMPTS_TOTAL,
    RETRIES_TOTAL,
    RATE_LIMITED_TOTAL,
    IN_FLIGHT_REQUESTS,
    CIRCUIT_OPEN,
    OAUTH_TOKEN_REFRESHES_TOTAL,
    WEBHOOKS_TOTAL,
    CONFIG_RELOADS_TOTAL,
    BUILD_INFO,
    RATE_LIMIT_QUEUED,
    AUTH_KEY_HEALTHY,
    RATE_LIMIT_SHARED_DEGRADED,
    WEBHOOK_REPLAY_SHARED_DEGRADED,
    TOKEN_STORE_DEGRADED,
    LOG_LINES_DROPPED_TOTAL,
    UPSTREAM_QUOTA_REMAINING,
    UPSTREAM_PACING_RATE,
];

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, RwLock};

use http::Method;
use metrics::{Counter, Gauge, Histogram, Key, Label, Metadata, Recorder, Unit};
use metrics_exporter_prometheus::{
    Matcher, PrometheusBuilder, PrometheusHandle, PrometheusRecorder,
};

/// Latency buckets (seconds): sidecar overhead is sub-millisecond, third-party calls take
/// tens of milliseconds to tens of seconds.
const DURATION_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

static METADATA: Metadata<'static> = Metadata::new(module_path!(), metrics::Level::INFO, None);

/// The process's metrics registry: a Prometheus recorder owned by the app (not the global one),
/// so several proxies in one test process never share counters.
#[derive(Clone)]
pub struct Metrics {
    recorder: Arc<PrometheusRecorder>,
    handle: PrometheusHandle,
    /// Upstream and webhook names a reload removed: their series are left out of
    /// [`Metrics::render`] (the exporter cannot forget a series) until a config names them again.
    retired: Arc<RwLock<Retired>>,
    log_lines_dropped: Counter,
}

#[derive(Default)]
struct Retired {
    upstreams: HashSet<String>,
    webhooks: HashSet<String>,
    live_upstreams: HashSet<String>,
    live_webhooks: HashSet<String>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let recorder = PrometheusBuilder::new()
            .set_buckets_for_metric(
                Matcher::Full(REQUEST_DURATION_SECONDS.into()),
                DURATION_BUCKETS,
            )
            .expect("static bucket list is not empty")
            .build_recorder();
        let handle = recorder.handle();
        let recorder = Arc::new(recorder);
        let log_lines_dropped =
            recorder.register_counter(&Key::from_static_name(LOG_LINES_DROPPED_TOTAL), &METADATA);
        let metrics = Metrics {
            recorder,
            handle,
            retired: Arc::default(),
            log_lines_dropped,
        };
        metrics.describe();
        metrics
            .gauge(
                BUILD_INFO,
                vec![Label::new("version", env!("CARGO_PKG_VERSION"))],
            )
            .set(1.0);
        metrics
    }

    fn describe(&self) {
        let r = &self.recorder;
        let d = |name: &'static str| metrics::KeyName::from_const_str(name);
        r.describe_counter(
            d(REQUESTS_TOTAL),
            None,
            "Requests answered to the application, by upstream, method and status.".into(),
        );
        r.describe_histogram(
            d(REQUEST_DURATION_SECONDS),
            Some(Unit::Seconds),
            "Time from request to response headers, retries included.".into(),
        );
        r.describe_counter(
            d(UPSTREAM_ATTEMPTS_TOTAL),
            None,
            "Attempts sent to an upstream, by outcome.".into(),
        );
        r.describe_counter(d(RETRIES_TOTAL), None, "Retries, by reason.".into());
        r.describe_counter(
            d(RATE_LIMITED_TOTAL),
            None,
            "Requests held back by a rate limit, by source (local or upstream).".into(),
        );
        r.describe_gauge(
            d(IN_FLIGHT_REQUESTS),
            None,
            "Requests being handled now, by upstream.".into(),
        );
        r.describe_gauge(
            d(CIRCUIT_OPEN),
            None,
            "1 while an upstream's circuit breaker is open.".into(),
        );
        r.describe_counter(
            d(OAUTH_TOKEN_REFRESHES_TOTAL),
            None,
            "OAuth2 token fetches, by result.".into(),
        );
        r.describe_counter(
            d(WEBHOOKS_TOTAL),
            None,
            "Inbound webhook deliveries, by result.".into(),
        );
        r.describe_counter(
            d(CONFIG_RELOADS_TOTAL),
            None,
            "Config reloads, by result.".into(),
        );
        r.describe_gauge(d(BUILD_INFO), None, "Build information; always 1.".into());
        r.describe_gauge(
            d(RATE_LIMIT_QUEUED),
            None,
            "Requests waiting in an upstream's rate-limit queue.".into(),
        );
        r.describe_gauge(
            d(AUTH_KEY_HEALTHY),
            None,
            "1 while a pooled key is in rotation, 0 once the upstream rejected it.".into(),
        );
        r.describe_counter(
            d(LOG_LINES_DROPPED_TOTAL),
            None,
            "Log lines dropped because the log sink was slower than the proxy.".into(),
        );
        r.describe_gauge(
            d(RATE_LIMIT_SHARED_DEGRADED),
            None,
            "1 while the shared (Redis) rate limit is unreachable and the local fallback limits."
                .into(),
        );
        r.describe_gauge(
            d(WEBHOOK_REPLAY_SHARED_DEGRADED),
            None,
            "1 while a webhook's shared (Redis) replay guard is unreachable and the local guard alone applies."
                .into(),
        );
        r.describe_gauge(
            d(TOKEN_STORE_DEGRADED),
            None,
            "1 while a refresh token's Redis store is unreachable (no refresh until it is back)."
                .into(),
        );
        r.describe_gauge(
            d(UPSTREAM_QUOTA_REMAINING),
            None,
            "The quota the upstream last reported left (rate_limit.quota).".into(),
        );
        r.describe_gauge(
            d(UPSTREAM_PACING_RATE),
            None,
            "Requests per second quota pacing currently allows.".into(),
        );
    }

    /// Prometheus text exposition, without the series of upstreams and webhooks that a
    /// reload removed.
    pub fn render(&self) -> String {
        self.log_lines_dropped.absolute(crate::telemetry::dropped());
        let text = self.handle.render();
        let retired = self.retired.read().unwrap_or_else(|e| e.into_inner());
        if retired.upstreams.is_empty() && retired.webhooks.is_empty() {
            return text;
        }
        let mut out = String::with_capacity(text.len());
        for line in text.lines() {
            if !line.starts_with('#') && retired.hides(line) {
                continue;
            }
            out.push_str(line);
            out.push('\n');
        }
        out
    }

    /// At start and after each reload, with the names the config serving now has: the series
    /// of upstreams and webhooks no longer configured stop being exported (a later config that
    /// brings a name back brings its series back, counting on).
    pub fn retain<'a>(
        &self,
        upstreams: impl IntoIterator<Item = &'a str>,
        webhooks: impl IntoIterator<Item = &'a str>,
    ) {
        let mut retired = self.retired.write().unwrap_or_else(|e| e.into_inner());
        let r = &mut *retired;
        swap_names(&mut r.live_upstreams, &mut r.upstreams, upstreams);
        swap_names(&mut r.live_webhooks, &mut r.webhooks, webhooks);
    }

    /// Periodic housekeeping of the exporter (histogram buffers).
    pub fn run_upkeep(&self) {
        self.handle.run_upkeep();
    }

    pub fn counter(&self, name: &'static str, labels: Vec<Label>) -> Counter {
        self.recorder
            .register_counter(&Key::from_parts(name, labels), &METADATA)
    }

    pub fn gauge(&self, name: &'static str, labels: Vec<Label>) -> Gauge {
        self.recorder
            .register_gauge(&Key::from_parts(name, labels), &METADATA)
    }

    pub fn histogram(&self, name: &'static str, labels: Vec<Label>) -> Histogram {
        self.recorder
            .register_histogram(&Key::from_parts(name, labels), &METADATA)
    }

    pub fn config_reload(&self, ok: bool) {
        self.counter(
            CONFIG_RELOADS_TOTAL,
            vec![Label::new("result", if ok { "ok" } else { "error" })],
        )
        .increment(1);
    }
}

/// `live` becomes `now`; names that left it join `retired`, names in it leave `retired`.
fn swap_names<'a>(
    live: &mut HashSet<String>,
    retired: &mut HashSet<String>,
    now: impl IntoIterator<Item = &'a str>,
) {
    let now: HashSet<String> = now.into_iter().map(str::to_string).collect();
    for gone in live.difference(&now) {
        retired.insert(gone.clone());
    }
    for name in &now {
        retired.remove(name);
    }
    *live = now;
}

impl Retired {
    /// True when a sample line carries `upstream="<retired>"` or `webhook="<retired>"`.
    fn hides(&self, line: &str) -> bool {
        let value = |label: &str| {
            let start = line.find(label)? + label.len();
            let end = line[start..].find('"')?;
            Some(&line[start..start + end])
        };
        value("upstream=\"").is_some_and(|v| self.upstreams.contains(v))
            || value("webhook=\"").is_some_and(|v| self.webhooks.contains(v))
    }
}

/// Metric handles of one upstream (or of the `unknown` pseudo-upstream), made once.
pub struct UpstreamMetrics {
    metrics: Metrics,
    upstream: Arc<str>,
    pub duration: Histogram,
    pub in_flight: Gauge,
    requests: RwLock<HashMap<(&'static str, u16), Counter>>,
}

/// Label for requests that matched no upstream.
pub const NO_UPSTREAM: &str = "unknown";

impl UpstreamMetrics {
    pub fn new(metrics: &Metrics, upstream: &str) -> Self {
        let label = || vec![Label::new("upstream", upstream.to_string())];
        UpstreamMetrics {
            metrics: metrics.clone(),
            upstream: upstream.into(),
            duration: metrics.histogram(REQUEST_DURATION_SECONDS, label()),
            in_flight: metrics.gauge(IN_FLIGHT_REQUESTS, label()),
            requests: RwLock::new(HashMap::new()),
        }
    }

    /// `outpost_requests_total{upstream,method,status}`; handles are cached per (method, status).
    pub fn request(&self, method: &Method, status: u16) {
        self.request_labelled(method_label(method), status);
    }

    /// [`UpstreamMetrics::request`] with the method label given (`OTHER` when no method could
    /// be read, as for a request head refused before parsing).
    pub fn request_labelled(&self, method: &'static str, status: u16) {
        let cached = self
            .requests
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(&(method, status))
            .cloned();
        let counter = match cached {
            Some(c) => c,
            None => {
                let c = self.metrics.counter(
                    REQUESTS_TOTAL,
                    vec![
                        Label::new("upstream", self.upstream.to_string()),
                        Label::new("method", method),
                        Label::new("status", status.to_string()),
                    ],
                );
                self.requests
                    .write()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert((method, status), c.clone());
                c
            }
        };
        counter.increment(1);
    }

    /// A counter of this upstream with one more bounded label.
    pub fn labelled(&self, name: &'static str, key: &'static str, value: &'static str) -> Counter {
        self.metrics.counter(
            name,
            vec![
                Label::new("upstream", self.upstream.to_string()),
                Label::new(key, value),
            ],
        )
    }

    pub fn gauge(&self, name: &'static str) -> Gauge {
        self.metrics.gauge(
            name,
            vec![Label::new("upstream", self.upstream.to_string())],
        )
    }

    /// A gauge of this upstream with one more label (e.g. a key's pool index).
    pub fn gauge_with(&self, name: &'static str, key: &'static str, value: String) -> Gauge {
        self.metrics.gauge(
            name,
            vec![
                Label::new("upstream", self.upstream.to_string()),
                Label::new(key, value),
            ],
        )
    }
}

/// Methods outside the standard set are folded into `OTHER` (bounded labels).
pub fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::PATCH => "PATCH",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        Method::TRACE => "TRACE",
        Method::CONNECT => "CONNECT",
        _ => "OTHER",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_requests_and_build_info() {
        let metrics = Metrics::new();
        let up = UpstreamMetrics::new(&metrics, "stripe");
        up.request(&Method::GET, 200);
        up.request(&Method::GET, 200);
        up.request(&Method::from_bytes(b"BREW").unwrap(), 418);
        up.duration.record(0.02);
        let text = metrics.render();
        assert!(
            text.contains(
                r#"outpost_requests_total{upstream="stripe",method="GET",status="200"} 2"#
            ),
            "{text}"
        );
        assert!(text.contains(r#"method="OTHER",status="418""#), "{text}");
        assert!(text.contains(r#"outpost_build_info{version=""#), "{text}");
        assert!(
            text.contains("outpost_request_duration_seconds_bucket"),
            "{text}"
        );
        assert!(text.contains("# HELP outpost_requests_total"), "{text}");
        assert!(text.contains("outpost_log_lines_dropped_total "), "{text}");
    }

    #[test]
    fn removed_upstreams_and_webhooks_leave_the_exposition() {
        let metrics = Metrics::new();
        metrics.retain(["a", "b"], ["hook"]);
        UpstreamMetrics::new(&metrics, "a").request(&Method::GET, 200);
        UpstreamMetrics::new(&metrics, "b").request(&Method::GET, 200);
        metrics
            .counter(WEBHOOKS_TOTAL, vec![Label::new("webhook", "hook")])
            .increment(1);
        let text = metrics.render();
        assert!(text.contains(r#"upstream="b""#) && text.contains(r#"webhook="hook""#));

        metrics.retain(["a"], []);
        let text = metrics.render();
        assert!(!text.contains(r#"upstream="b""#), "{text}");
        assert!(!text.contains(r#"webhook="hook""#), "{text}");
        assert!(text.contains(r#"upstream="a""#), "{text}");

        // Back again: its series come back, still counting.
        metrics.retain(["a", "b"], []);
        assert!(metrics
            .render()
            .contains(r#"outpost_requests_total{upstream="b",method="GET",status="200"} 1"#));
    }
}
