//! Retry policy: which requests may be sent again, when, and how often.
//!
//! Safety (RFC 9110, pingora's failover rules): a failure before any byte was sent (connect
//! refused, TLS handshake failure) is always safe to retry; anything else only for idempotent
//! methods or a request carrying an `Idempotency-Key`. Delays are exponential with full jitter
//! (`random(0, min(max_delay, base * 2^n))`), or the upstream's own `Retry-After`. A budget
//! (tower's `TpsBudget`: `budget_percent` of recent requests plus `min_retries_per_second`)
//! keeps retries from amplifying an outage. Bodies are replayed from a copy of at most
//! `max_body_bytes` kept while the first attempt streams (`replay.rs`); larger bodies are never
//! retried.
//!
//! [`decide`] is the whole retry decision as a pure function of what the attempt came to
//! ([`Outcome`]) and where the request stands ([`State`]); the loop in `stack.rs` only carries
//! it out (budget, sleep, next attempt).

use std::time::Duration;

use http::{HeaderMap, Method, StatusCode};
use rand::Rng;
use tower::retry::budget::{Budget, TpsBudget};

use crate::config::{IdempotencyKeyMode, PresetDefaults, Retry};

pub static IDEMPOTENCY_KEY: http::HeaderName = http::HeaderName::from_static("idempotency-key");

/// Why a retry happens (the `reason` label of `outpost_retries_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    Status,
    ConnectError,
    /// Extension of DESIGN's set: the connection failed after the request was (partly) sent,
    /// e.g. the upstream closed it before answering. Retried only when the request is safe.
    ConnectionLost,
    Timeout,
    AuthRefresh,
}

impl Reason {
    pub fn label(self) -> &'static str {
        match self {
            Reason::Status => "status",
            Reason::ConnectError => "connect_error",
            Reason::ConnectionLost => "connection_lost",
            Reason::Timeout => "timeout",
            Reason::AuthRefresh => "auth_refresh",
        }
    }
}

pub struct RetryPolicy {
    pub config: Retry,
    provider: &'static PresetDefaults,
    budget: TpsBudget,
}

impl std::fmt::Debug for RetryPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RetryPolicy")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// RFC 9110 idempotent methods.
pub fn is_idempotent(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE | Method::TRACE
    )
}

impl RetryPolicy {
    pub fn new(config: Retry, provider: &'static PresetDefaults) -> Self {
        let budget = TpsBudget::new(
            Duration::from_secs(10),
            config.min_retries_per_second,
            config.budget_percent as f32 / 100.0,
        );
        RetryPolicy {
            config,
            provider,
            budget,
        }
    }

    pub fn enabled(&self) -> bool {
        self.config.max_attempts > 1
    }

    /// Add a fresh `Idempotency-Key` to POST/PATCH in `auto` mode (the same one on every attempt).
    pub fn add_idempotency_key(&self, method: &Method, headers: &mut HeaderMap) {
        if self.config.idempotency_key == IdempotencyKeyMode::Auto
            && (*method == Method::POST || *method == Method::PATCH)
            && !headers.contains_key(self.provider.idempotency_header)
        {
            let key = uuid::Uuid::new_v4().to_string();
            if let (Ok(value), Ok(name)) = (
                http::HeaderValue::from_str(&key),
                http::HeaderName::from_bytes(self.provider.idempotency_header.as_bytes()),
            ) {
                headers.insert(name, value);
            }
        }
    }

    /// May a request that reached the upstream be sent again?
    pub fn is_safe(&self, method: &Method, headers: &HeaderMap) -> bool {
        is_idempotent(method)
            || (self.config.idempotency_key != IdempotencyKeyMode::Off
                && headers.contains_key(self.provider.idempotency_header))
    }

    /// Is this upstream status worth retrying for a request of the given safety?
    pub fn retry_status(&self, status: StatusCode, headers: &HeaderMap, safe: bool) -> bool {
        if let Some(name) = self.provider.should_retry_header {
            match headers.get(name).and_then(|v| v.to_str().ok()) {
                Some(v) if v.eq_ignore_ascii_case("false") => return false,
                Some(v) if v.eq_ignore_ascii_case("true") => return safe,
                _ => {}
            }
        }
        let code = status.as_u16();
        self.config.on_status.contains(&code)
            && (safe || self.provider.never_processed_statuses.contains(&code))
    }

    /// Full-jitter backoff before retry number `retry` (1 for the first retry).
    pub fn backoff(&self, retry: u32) -> Duration {
        let exp = 2u32.saturating_pow(retry.saturating_sub(1).min(30));
        let ceiling = self
            .config
            .base_delay
            .saturating_mul(exp)
            .min(self.config.max_delay);
        let nanos = ceiling.as_nanos().min(u64::MAX as u128) as u64;
        Duration::from_nanos(rand::thread_rng().gen_range(0..=nanos))
    }

    /// Each logical request adds to the budget …
    pub fn deposit(&self) {
        self.budget.deposit();
    }

    /// … and each retry takes from it.
    pub fn withdraw(&self) -> bool {
        self.budget.withdraw()
    }
}

/// What one attempt came to, as the retry decision sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The upstream answered.
    Response {
        status: StatusCode,
        /// The policy retries this status for this request (`on_status`, the provider's own
        /// retry header, the request's safety).
        retryable: bool,
        /// The wait the upstream asked for (`Retry-After`, `X-RateLimit-Reset` …).
        wait: Option<Duration>,
        /// A refreshable credential (an OAuth2 token) was refused with 401 and invalidated.
        credential_rejected: bool,
        /// A pooled key was refused (401/403) and taken out, and another key is left.
        key_rejected: bool,
        /// Another pooled key is not paused: a 429 paused only the key that got it.
        other_key_free: bool,
    },
    /// Nothing was sent: the connection or the TLS handshake failed.
    ConnectFailed,
    /// The connection failed after (part of) the request was sent.
    ConnectionLost,
    /// No answer within `attempt_timeout`.
    TimedOut,
    /// Refused locally, or the application's own fault: never retried.
    Final,
}

impl Outcome {
    /// Could this outcome be retried at all (so a backoff is worth drawing)?
    pub fn may_retry(&self) -> bool {
        match self {
            Outcome::Response {
                retryable,
                credential_rejected,
                key_rejected,
                ..
            } => *retryable || *credential_rejected || *key_rejected,
            Outcome::Final => false,
            Outcome::ConnectFailed | Outcome::ConnectionLost | Outcome::TimedOut => true,
        }
    }
}

/// Where the logical request stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct State {
    /// Retries already made.
    pub retries: u32,
    pub max_attempts: u32,
    /// The body can be sent again (empty, or its copy is complete).
    pub replayable: bool,
    /// The method is idempotent or the request carries an `Idempotency-Key`.
    pub safe: bool,
    /// The one credential refresh-and-retry was already spent.
    pub auth_refreshed: bool,
    pub respect_retry_after: bool,
    pub max_retry_after: Duration,
    /// Time left before the total deadline.
    pub time_left: Duration,
    /// The backoff the next retry would wait (drawn by the caller: the jitter is random).
    pub backoff: Duration,
}

/// What to do next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Return this outcome to the application.
    Return,
    Retry {
        reason: Reason,
        delay: Duration,
    },
}

/// The retry decision: a pure function of the outcome and the request's state.
pub fn decide(outcome: Outcome, state: State) -> Decision {
    if !state.replayable {
        return Decision::Return;
    }
    let last = state.retries.saturating_add(1) >= state.max_attempts;
    let retry = match outcome {
        // The token was refused: the request was not processed, so whatever the method it goes
        // again once, with a fresh token (also when retries are off).
        Outcome::Response {
            credential_rejected: true,
            ..
        } if !state.auth_refreshed => Some((Reason::AuthRefresh, Duration::ZERO)),
        Outcome::Response { .. } if last => None,
        Outcome::Response {
            key_rejected: true, ..
        } => Some((Reason::AuthRefresh, Duration::ZERO)),
        Outcome::Response {
            retryable: false, ..
        } => None,
        Outcome::Response {
            status,
            wait,
            other_key_free,
            ..
        } => match wait {
            _ if status == StatusCode::TOO_MANY_REQUESTS && other_key_free => {
                Some((Reason::Status, Duration::ZERO))
            }
            // The upstream asked for longer than we may wait: its answer goes back at once.
            Some(wait) if state.respect_retry_after && wait > state.max_retry_after => None,
            Some(wait) if state.respect_retry_after => Some((Reason::Status, wait)),
            _ => Some((Reason::Status, state.backoff)),
        },
        // Nothing was sent: always safe.
        Outcome::ConnectFailed if !last => Some((Reason::ConnectError, state.backoff)),
        // The upstream may have the request: only safe requests go again.
        Outcome::ConnectionLost if !last && state.safe => {
            Some((Reason::ConnectionLost, state.backoff))
        }
        Outcome::TimedOut if !last && state.safe => Some((Reason::Timeout, state.backoff)),
        Outcome::ConnectFailed | Outcome::ConnectionLost | Outcome::TimedOut | Outcome::Final => {
            None
        }
    };
    match retry {
        // A wait that ends at or after the deadline would only turn the answer into a timeout.
        Some((reason, delay)) if delay < state.time_left => Decision::Retry { reason, delay },
        _ => Decision::Return,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::preset::GENERIC;
    use crate::config::Preset;

    fn retry(mode: IdempotencyKeyMode) -> Retry {
        Retry {
            max_attempts: 3,
            base_delay: Duration::from_millis(100),
            max_delay: Duration::from_secs(1),
            on_status: vec![429, 502, 503, 504],
            respect_retry_after: true,
            max_retry_after: Duration::from_secs(30),
            idempotency_key: mode,
            budget_percent: 20,
            min_retries_per_second: 10,
            max_body_bytes: 16,
        }
    }

    #[test]
    fn backoff_is_bounded_full_jitter() {
        let p = RetryPolicy::new(retry(IdempotencyKeyMode::Auto), &GENERIC);
        for n in 1..=12 {
            let ceiling = Duration::from_millis(100 * 2u64.pow(n - 1)).min(Duration::from_secs(1));
            let mut max_seen = Duration::ZERO;
            for _ in 0..200 {
                let d = p.backoff(n);
                assert!(d <= ceiling, "retry {n}: {d:?} > {ceiling:?}");
                max_seen = max_seen.max(d);
            }
            assert!(
                max_seen > ceiling / 2,
                "retry {n}: jitter should spread up to the ceiling"
            );
        }
        assert!(p.backoff(u32::MAX) <= Duration::from_secs(1));
    }

    #[test]
    fn safety_rules() {
        let p = RetryPolicy::new(retry(IdempotencyKeyMode::HeaderOnly), &GENERIC);
        let none = HeaderMap::new();
        let mut keyed = HeaderMap::new();
        keyed.insert(&IDEMPOTENCY_KEY, "k".parse().unwrap());
        for m in [
            Method::GET,
            Method::HEAD,
            Method::OPTIONS,
            Method::PUT,
            Method::DELETE,
        ] {
            assert!(p.is_safe(&m, &none), "{m}");
        }
        assert!(!p.is_safe(&Method::POST, &none));
        assert!(!p.is_safe(&Method::PATCH, &none));
        assert!(p.is_safe(&Method::POST, &keyed));
        let off = RetryPolicy::new(retry(IdempotencyKeyMode::Off), &GENERIC);
        assert!(!off.is_safe(&Method::POST, &keyed));
    }

    #[test]
    fn auto_key_only_for_post_and_patch_and_never_replaced() {
        let p = RetryPolicy::new(retry(IdempotencyKeyMode::Auto), &GENERIC);
        let mut h = HeaderMap::new();
        p.add_idempotency_key(&Method::GET, &mut h);
        assert!(h.is_empty());
        p.add_idempotency_key(&Method::POST, &mut h);
        let key = h[&IDEMPOTENCY_KEY].clone();
        assert_eq!(key.len(), 36);
        p.add_idempotency_key(&Method::POST, &mut h);
        assert_eq!(h[&IDEMPOTENCY_KEY], key);
        let off = RetryPolicy::new(retry(IdempotencyKeyMode::HeaderOnly), &GENERIC);
        let mut h = HeaderMap::new();
        off.add_idempotency_key(&Method::PATCH, &mut h);
        assert!(h.is_empty());
    }

    #[test]
    fn status_rules_and_provider_overrides() {
        let p = RetryPolicy::new(retry(IdempotencyKeyMode::Auto), &GENERIC);
        let h = HeaderMap::new();
        assert!(p.retry_status(StatusCode::SERVICE_UNAVAILABLE, &h, true));
        assert!(!p.retry_status(StatusCode::SERVICE_UNAVAILABLE, &h, false));
        assert!(!p.retry_status(StatusCode::INTERNAL_SERVER_ERROR, &h, true));
        let mut stripe_retry = retry(IdempotencyKeyMode::Auto);
        stripe_retry.on_status = Preset::Stripe.defaults().retry_on_status.to_vec();
        let s = RetryPolicy::new(stripe_retry, Preset::Stripe.defaults());
        let mut no = HeaderMap::new();
        no.insert("stripe-should-retry", "false".parse().unwrap());
        assert!(!s.retry_status(StatusCode::SERVICE_UNAVAILABLE, &no, true));
        let mut yes = HeaderMap::new();
        yes.insert("stripe-should-retry", "true".parse().unwrap());
        assert!(s.retry_status(StatusCode::BAD_REQUEST, &yes, true));
        assert!(s.retry_status(StatusCode::CONFLICT, &h, true));
        // Twilio's 429 was never processed: even a POST without a key may go again.
        let t = RetryPolicy::new(
            retry(IdempotencyKeyMode::HeaderOnly),
            Preset::Twilio.defaults(),
        );
        assert!(t.retry_status(StatusCode::TOO_MANY_REQUESTS, &h, false));
        assert!(!t.retry_status(StatusCode::SERVICE_UNAVAILABLE, &h, false));
    }

    #[test]
    fn budget_runs_out() {
        let mut r = retry(IdempotencyKeyMode::Auto);
        r.min_retries_per_second = 0;
        r.budget_percent = 0;
        let p = RetryPolicy::new(r, &GENERIC);
        p.deposit();
        assert!(!p.withdraw(), "a zero budget allows no retry");
        let p = RetryPolicy::new(retry(IdempotencyKeyMode::Auto), &GENERIC);
        let allowed = (0..1000).filter(|_| p.withdraw()).count();
        assert!(
            (90..=110).contains(&allowed),
            "10/s floor over a 10 s window, got {allowed}"
        );
    }

    fn state() -> State {
        State {
            retries: 0,
            max_attempts: 3,
            replayable: true,
            safe: true,
            auth_refreshed: false,
            respect_retry_after: true,
            max_retry_after: Duration::from_secs(30),
            time_left: Duration::from_secs(60),
            backoff: Duration::from_millis(70),
        }
    }

    fn answer(status: u16, retryable: bool, wait: Option<u64>) -> Outcome {
        Outcome::Response {
            status: StatusCode::from_u16(status).unwrap(),
            retryable,
            wait: wait.map(Duration::from_secs),
            credential_rejected: false,
            key_rejected: false,
            other_key_free: false,
        }
    }

    fn go(reason: Reason, delay_ms: u64) -> Decision {
        Decision::Retry {
            reason,
            delay: Duration::from_millis(delay_ms),
        }
    }

    /// Every rule of the decision, one row each: (what, outcome, state, expected).
    #[test]
    fn decision_table() {
        let s = state();
        let unsafe_ = State { safe: false, ..s };
        let last = State { retries: 2, ..s };
        let capped = State {
            replayable: false,
            ..s
        };
        let refreshed = State {
            auth_refreshed: true,
            ..s
        };
        let no_respect = State {
            respect_retry_after: false,
            ..s
        };
        let short = State {
            time_left: Duration::from_millis(50),
            ..s
        };
        let rejected_token = Outcome::Response {
            status: StatusCode::UNAUTHORIZED,
            retryable: false,
            wait: None,
            credential_rejected: true,
            key_rejected: false,
            other_key_free: false,
        };
        let rejected_key = Outcome::Response {
            status: StatusCode::FORBIDDEN,
            retryable: false,
            wait: None,
            credential_rejected: false,
            key_rejected: true,
            other_key_free: true,
        };
        let pool_429 = Outcome::Response {
            status: StatusCode::TOO_MANY_REQUESTS,
            retryable: true,
            wait: Some(Duration::from_secs(20)),
            credential_rejected: false,
            key_rejected: false,
            other_key_free: true,
        };
        let rows: Vec<(&str, Outcome, State, Decision)> = vec![
            (
                "200 is returned",
                answer(200, false, None),
                s,
                Decision::Return,
            ),
            (
                "503 retried after backoff",
                answer(503, true, None),
                s,
                go(Reason::Status, 70),
            ),
            (
                "503 not retryable by policy",
                answer(503, false, None),
                s,
                Decision::Return,
            ),
            (
                "Retry-After honoured",
                answer(503, true, Some(2)),
                s,
                go(Reason::Status, 2000),
            ),
            (
                "Retry-After beyond max_retry_after",
                answer(429, true, Some(31)),
                s,
                Decision::Return,
            ),
            (
                "Retry-After ignored when not respected",
                answer(429, true, Some(31)),
                no_respect,
                go(Reason::Status, 70),
            ),
            (
                "last attempt returns",
                answer(503, true, None),
                last,
                Decision::Return,
            ),
            (
                "capped body returns",
                answer(503, true, None),
                capped,
                Decision::Return,
            ),
            (
                "delay past the deadline returns",
                answer(503, true, None),
                short,
                Decision::Return,
            ),
            (
                "wait past the deadline returns",
                answer(503, true, Some(1)),
                short,
                Decision::Return,
            ),
            (
                "401 token refreshed once",
                rejected_token,
                s,
                go(Reason::AuthRefresh, 0),
            ),
            (
                "401 token refreshed even on the last attempt",
                rejected_token,
                last,
                go(Reason::AuthRefresh, 0),
            ),
            (
                "401 token refreshed even for a POST",
                rejected_token,
                unsafe_,
                go(Reason::AuthRefresh, 0),
            ),
            (
                "401 token not refreshed twice",
                rejected_token,
                refreshed,
                Decision::Return,
            ),
            (
                "pooled key refused: next key at once",
                rejected_key,
                s,
                go(Reason::AuthRefresh, 0),
            ),
            (
                "pooled key refused on the last attempt",
                rejected_key,
                last,
                Decision::Return,
            ),
            (
                "pooled 429: another key serves at once",
                pool_429,
                s,
                go(Reason::Status, 0),
            ),
            (
                "connect failure retried",
                Outcome::ConnectFailed,
                unsafe_,
                go(Reason::ConnectError, 70),
            ),
            (
                "connect failure on the last attempt",
                Outcome::ConnectFailed,
                last,
                Decision::Return,
            ),
            (
                "connection lost, safe",
                Outcome::ConnectionLost,
                s,
                go(Reason::ConnectionLost, 70),
            ),
            (
                "connection lost, unsafe",
                Outcome::ConnectionLost,
                unsafe_,
                Decision::Return,
            ),
            (
                "attempt timeout, safe",
                Outcome::TimedOut,
                s,
                go(Reason::Timeout, 70),
            ),
            (
                "attempt timeout, unsafe",
                Outcome::TimedOut,
                unsafe_,
                Decision::Return,
            ),
            (
                "local refusal is final",
                Outcome::Final,
                s,
                Decision::Return,
            ),
        ];
        for (what, outcome, state, expected) in rows {
            assert_eq!(decide(outcome, state), expected, "{what}");
        }
    }

    #[test]
    fn max_attempts_one_never_retries_a_status() {
        let once = State {
            max_attempts: 1,
            ..state()
        };
        assert_eq!(decide(answer(503, true, None), once), Decision::Return);
        assert_eq!(decide(Outcome::ConnectFailed, once), Decision::Return);
    }
}
