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

/// The process's metrics registry: Prometheus recorders owned by the app (not the global one),
/// so several proxies in one test process never share counters.
///
/// One recorder holds the process-wide series; each upstream and each webhook has a recorder
/// of its own (the exporter cannot forget a series), so a reload that removes one drops its
/// recorder and with it every series and the memory they held. [`Metrics::render`] merges
/// the recorders' expositions family by family.
#[derive(Clone)]
pub struct Metrics {
    recorder: Arc<PrometheusRecorder>,
    handle: PrometheusHandle,
    owners: Arc<RwLock<Owners>>,
    log_lines_dropped: Counter,
}

/// Whose series a recorder holds.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum Owner {
    Upstream(String),
    Webhook(String),
}

#[derive(Default)]
struct Owners {
    recorders: HashMap<Owner, (Arc<PrometheusRecorder>, PrometheusHandle)>,
    /// Names the serving config has: only these (and names never configured, such as the
    /// `unknown` pseudo-upstream) keep their recorder across [`Metrics::retain`].
    live_upstreams: HashSet<String>,
    live_webhooks: HashSet<String>,
}

/// A recorder with Outpost's buckets and every family's description (each recorder writes
/// the `HELP` of the families it has samples of).
fn recorder() -> PrometheusRecorder {
    let r = PrometheusBuilder::new()
        .set_buckets_for_metric(
            Matcher::Full(REQUEST_DURATION_SECONDS.into()),
            DURATION_BUCKETS,
        )
        .expect("static bucket list is not empty")
        .build_recorder();
    Metrics::describe(&r);
    r
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let recorder = recorder();
        let handle = recorder.handle();
        let recorder = Arc::new(recorder);
        let log_lines_dropped =
            recorder.register_counter(&Key::from_static_name(LOG_LINES_DROPPED_TOTAL), &METADATA);
        let metrics = Metrics {
            recorder,
            handle,
            owners: Arc::default(),
            log_lines_dropped,
        };
        metrics
            .gauge(
                BUILD_INFO,
                vec![Label::new("version", env!("CARGO_PKG_VERSION"))],
            )
            .set(1.0);
        metrics
    }

    fn describe(r: &PrometheusRecorder) {
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

    /// Prometheus text exposition of every recorder, one block per metric family (its `HELP`
    /// and `TYPE` once, then the samples of all owners), families in name order.
    pub fn render(&self) -> String {
        self.log_lines_dropped.absolute(crate::telemetry::dropped());
        let mut texts = vec![self.handle.render()];
        {
            let owners = self.owners.read().unwrap_or_else(|e| e.into_inner());
            let mut owned: Vec<_> = owners.recorders.iter().collect();
            owned.sort_by(|a, b| a.0.cmp(b.0));
            texts.extend(owned.into_iter().map(|(_, (_, handle))| handle.render()));
        }
        merge_expositions(&texts)
    }

    /// At start and after each reload, with the names the config serving now has: upstreams
    /// and webhooks no longer configured lose their recorder, so their series are no longer
    /// exported and their memory is freed (once the old generation's handles are gone); a
    /// later config that names one again starts its series afresh (a counter reset).
    pub fn retain<'a>(
        &self,
        upstreams: impl IntoIterator<Item = &'a str>,
        webhooks: impl IntoIterator<Item = &'a str>,
    ) {
        let upstreams: HashSet<String> = upstreams.into_iter().map(str::to_string).collect();
        let webhooks: HashSet<String> = webhooks.into_iter().map(str::to_string).collect();
        let mut owners = self.owners.write().unwrap_or_else(|e| e.into_inner());
        let gone_upstreams: Vec<String> = owners
            .live_upstreams
            .difference(&upstreams)
            .cloned()
            .collect();
        let gone_webhooks: Vec<String> = owners
            .live_webhooks
            .difference(&webhooks)
            .cloned()
            .collect();
        for name in gone_upstreams {
            owners.recorders.remove(&Owner::Upstream(name));
        }
        for name in gone_webhooks {
            owners.recorders.remove(&Owner::Webhook(name));
        }
        owners.live_upstreams = upstreams;
        owners.live_webhooks = webhooks;
    }

    /// The recorder a series with these labels belongs to: its upstream's or webhook's, else
    /// the process-wide one.
    fn recorder_for(&self, labels: &[Label]) -> Arc<PrometheusRecorder> {
        let owner = labels.iter().find_map(|l| match l.key() {
            "upstream" => Some(Owner::Upstream(l.value().to_string())),
            "webhook" => Some(Owner::Webhook(l.value().to_string())),
            _ => None,
        });
        let Some(owner) = owner else {
            return self.recorder.clone();
        };
        if let Some((r, _)) = self
            .owners
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .recorders
            .get(&owner)
        {
            return r.clone();
        }
        let mut owners = self.owners.write().unwrap_or_else(|e| e.into_inner());
        owners
            .recorders
            .entry(owner)
            .or_insert_with(|| {
                let r = recorder();
                let handle = r.handle();
                (Arc::new(r), handle)
            })
            .0
            .clone()
    }

    pub fn run_upkeep(&self) {
        self.handle.run_upkeep();
        let owners = self.owners.read().unwrap_or_else(|e| e.into_inner());
        for (_, handle) in owners.recorders.values() {
            handle.run_upkeep();
        }
    }

    pub fn counter(&self, name: &'static str, labels: Vec<Label>) -> Counter {
        self.recorder_for(&labels)
            .register_counter(&Key::from_parts(name, labels), &METADATA)
    }

    pub fn gauge(&self, name: &'static str, labels: Vec<Label>) -> Gauge {
        self.recorder_for(&labels)
            .register_gauge(&Key::from_parts(name, labels), &METADATA)
    }

    pub fn histogram(&self, name: &'static str, labels: Vec<Label>) -> Histogram {
        self.recorder_for(&labels)
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

/// Merge Prometheus text expositions: each family (a `# TYPE` line and the samples after it,
/// with its `# HELP` line when one has it) once, with the samples of every input, in name
/// order. The exporter writes a family as one block, so blocks are read whole.
fn merge_expositions(texts: &[String]) -> String {
    #[derive(Default)]
    struct Family {
        help: Option<String>,
        kind: Option<String>,
        samples: String,
    }
    let mut families: std::collections::BTreeMap<String, Family> = Default::default();
    for text in texts {
        let mut current: Option<String> = None;
        for line in text.lines() {
            if line.is_empty() {
                continue;
            }
            let meta = line
                .strip_prefix("# HELP ")
                .map(|rest| (true, rest))
                .or_else(|| line.strip_prefix("# TYPE ").map(|rest| (false, rest)));
            if let Some((help, rest)) = meta {
                let name = rest.split(' ').next().unwrap_or_default().to_string();
                let family = families.entry(name.clone()).or_default();
                let slot = if help {
                    &mut family.help
                } else {
                    &mut family.kind
                };
                slot.get_or_insert_with(|| line.to_string());
                current = Some(name);
                continue;
            }
            if line.starts_with('#') {
                continue;
            }
            let name = match &current {
                Some(name) => name.clone(),
                None => line
                    .split(['{', ' '])
                    .next()
                    .unwrap_or_default()
                    .to_string(),
            };
            let family = families.entry(name).or_default();
            family.samples.push_str(line);
            family.samples.push('\n');
        }
    }
    let mut out = String::new();
    for family in families.values() {
        if family.samples.is_empty() {
            continue;
        }
        for meta in [&family.help, &family.kind].into_iter().flatten() {
            out.push_str(meta);
            out.push('\n');
        }
        out.push_str(&family.samples);
        out.push('\n');
    }
    out
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

        // Back again: its series start afresh (the old ones and their memory are gone), and
        // the families stay one block each.
        metrics.retain(["a", "b"], []);
        assert!(!metrics.render().contains(r#"upstream="b""#));
        UpstreamMetrics::new(&metrics, "b").request(&Method::GET, 200);
        let text = metrics.render();
        assert!(
            text.contains(r#"outpost_requests_total{upstream="b",method="GET",status="200"} 1"#),
            "{text}"
        );
        assert_eq!(
            text.matches("# TYPE outpost_requests_total counter")
                .count(),
            1,
            "{text}"
        );
        assert_eq!(
            text.matches("# HELP outpost_requests_total ").count(),
            1,
            "{text}"
        );
    }

    #[test]
    fn expositions_merge_family_by_family() {
        let a = "# HELP x_total X.\n# TYPE x_total counter\nx_total{upstream=\"a\"} 1\n\n# TYPE g gauge\ng 2\n\n".to_string();
        let b = "# TYPE x_total counter\nx_total{upstream=\"b\"} 3\n\n# TYPE h histogram\nh_bucket{le=\"1\"} 1\nh_sum 0.5\nh_count 1\n\n".to_string();
        assert_eq!(
            merge_expositions(&[a, b]),
            "# TYPE g gauge\ng 2\n\n# TYPE h histogram\nh_bucket{le=\"1\"} 1\nh_sum 0.5\nh_count 1\n\n# HELP x_total X.\n# TYPE x_total counter\nx_total{upstream=\"a\"} 1\nx_total{upstream=\"b\"} 3\n\n"
        );
    }
}
