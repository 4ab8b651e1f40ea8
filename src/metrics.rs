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
];
