//! The per-upstream metric handles the layers increment, made once per config generation
//! (label lookups never happen per request).

use metrics::{Counter, Gauge};

use super::retry::Reason;
use crate::error::FailureKind;
use crate::metrics::{
    UpstreamMetrics, CIRCUIT_OPEN, RATE_LIMITED_TOTAL, RETRIES_TOTAL, UPSTREAM_ATTEMPTS_TOTAL,
};

pub struct Counters {
    pub attempt_response: Counter,
    attempt_connect_error: Counter,
    pub attempt_timeout: Counter,
    attempt_tls_error: Counter,
    attempt_other_error: Counter,
    retry_status: Counter,
    retry_auth_refresh: Counter,
    retry_connect_error: Counter,
    retry_connection_lost: Counter,
    retry_timeout: Counter,
    pub limited_local: Counter,
    pub limited_upstream: Counter,
    pub circuit_open: Gauge,
}

impl Counters {
    pub fn new(m: &UpstreamMetrics) -> Self {
        let attempt = |v| m.labelled(UPSTREAM_ATTEMPTS_TOTAL, "outcome", v);
        let retry = |v| m.labelled(RETRIES_TOTAL, "reason", v);
        let limited = |v| m.labelled(RATE_LIMITED_TOTAL, "source", v);
        let circuit_open = m.gauge(CIRCUIT_OPEN);
        circuit_open.set(0.0);
        Counters {
            attempt_response: attempt("response"),
            attempt_connect_error: attempt("connect_error"),
            attempt_timeout: attempt("timeout"),
            attempt_tls_error: attempt("tls_error"),
            attempt_other_error: attempt("other_error"),
            retry_status: retry(Reason::Status.label()),
            retry_auth_refresh: retry(Reason::AuthRefresh.label()),
            retry_connect_error: retry(Reason::ConnectError.label()),
            retry_connection_lost: retry(Reason::ConnectionLost.label()),
            retry_timeout: retry(Reason::Timeout.label()),
            limited_local: limited("local"),
            limited_upstream: limited("upstream"),
            circuit_open,
        }
    }

    pub fn failure(&self, kind: FailureKind) {
        match kind {
            FailureKind::Connect => &self.attempt_connect_error,
            FailureKind::Tls => &self.attempt_tls_error,
            FailureKind::Timeout => &self.attempt_timeout,
            FailureKind::Other => &self.attempt_other_error,
        }
        .increment(1);
    }

    pub fn retry(&self, reason: Reason) {
        match reason {
            Reason::Status => &self.retry_status,
            Reason::AuthRefresh => &self.retry_auth_refresh,
            Reason::ConnectError => &self.retry_connect_error,
            Reason::ConnectionLost => &self.retry_connection_lost,
            Reason::Timeout => &self.retry_timeout,
        }
        .increment(1);
    }
}
