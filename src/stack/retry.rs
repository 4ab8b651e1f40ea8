//! Retry policy: which requests may be sent again, when, and how often.
//!
//! Safety (RFC 9110, pingora's failover rules): a failure before any byte was sent (connect
//! refused, TLS handshake failure) is always safe to retry; anything else only for idempotent
//! methods or a request carrying an `Idempotency-Key`. Delays are exponential with full jitter
//! (`random(0, min(max_delay, base * 2^n))`), or the upstream's own `Retry-After`. A budget
//! (tower's `TpsBudget`: `budget_percent` of recent requests plus `min_retries_per_second`)
//! keeps retries from amplifying an outage. Bodies are replayed from a buffer of at most
//! `max_body_bytes`; larger bodies stream once and are never retried.

use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use http::{HeaderMap, Method, StatusCode};
use http_body::{Body, Frame};
use http_body_util::{BodyExt, BodyStream, StreamBody};
use rand::Rng;
use tower::retry::budget::{Budget, TpsBudget};

use crate::body::{full, BoxBody, BoxError};
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
            && !headers.contains_key(&IDEMPOTENCY_KEY)
        {
            let key = uuid::Uuid::new_v4().to_string();
            if let Ok(value) = http::HeaderValue::from_str(&key) {
                headers.insert(IDEMPOTENCY_KEY.clone(), value);
            }
        }
    }

    /// May a request that reached the upstream be sent again?
    pub fn is_safe(&self, method: &Method, headers: &HeaderMap) -> bool {
        is_idempotent(method)
            || (self.config.idempotency_key != IdempotencyKeyMode::Off
                && headers.contains_key(&IDEMPOTENCY_KEY))
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

/// A request body that can be sent more than once when it was small enough to buffer.
///
/// The buffer keeps the chunks as they arrived (reference-counted `Bytes`): nothing is copied,
/// and each attempt replays them as a stream of cheap clones.
pub enum ReplayBody {
    Buffered(Vec<Bytes>),
    /// Too large (or with trailers): sent once, never retried.
    Once(Option<BoxBody>),
}

/// Replay what was read so far, then the rest of the stream: for bodies sent once.
fn stream_once(prefix: Vec<Bytes>, last: Frame<Bytes>, rest: BoxBody) -> ReplayBody {
    let frames = prefix
        .into_iter()
        .map(|b| Ok(Frame::data(b)))
        .chain(std::iter::once(Ok(last)));
    let stream = futures_util::stream::iter(frames).chain(BodyStream::new(rest));
    ReplayBody::Once(Some(StreamBody::new(stream).boxed_unsync()))
}

impl ReplayBody {
    /// A buffered body of one chunk.
    pub fn from_bytes(bytes: Bytes) -> Self {
        ReplayBody::Buffered(if bytes.is_empty() {
            Vec::new()
        } else {
            vec![bytes]
        })
    }

    /// Buffer `body` up to `limit` bytes; beyond that, stream what was read followed by the rest.
    pub async fn new(mut body: BoxBody, limit: u64) -> Result<Self, BoxError> {
        if body.is_end_stream() {
            return Ok(ReplayBody::Buffered(Vec::new()));
        }
        if body.size_hint().lower() > limit {
            return Ok(ReplayBody::Once(Some(body)));
        }
        let mut chunks: Vec<Bytes> = Vec::new();
        let mut len = 0u64;
        while let Some(frame) = body.frame().await {
            // A plain match, not `?`: `?` on a boxed error trips rustc's Send check for this
            // future ("implementation of `From` is not general enough").
            let frame = match frame {
                Ok(frame) => frame,
                Err(e) => return Err(e),
            };
            match frame.into_data() {
                Ok(data) => {
                    len += data.len() as u64;
                    if len > limit {
                        return Ok(stream_once(chunks, Frame::data(data), body));
                    }
                    if !data.is_empty() {
                        chunks.push(data);
                    }
                }
                // Trailers: keep them by streaming once.
                Err(frame) => return Ok(stream_once(chunks, frame, body)),
            }
        }
        Ok(ReplayBody::Buffered(chunks))
    }

    /// Wrap a body that will not be retried.
    pub fn once(body: BoxBody) -> Self {
        ReplayBody::Once(Some(body))
    }

    /// The buffered chunks, when the body is replayable.
    pub fn chunks(&self) -> Option<&[Bytes]> {
        match self {
            ReplayBody::Buffered(chunks) => Some(chunks),
            ReplayBody::Once(_) => None,
        }
    }

    /// The body for the next attempt; `None` when a streamed body was already sent.
    pub fn take(&mut self) -> Option<BoxBody> {
        match self {
            ReplayBody::Buffered(chunks) => Some(match chunks.as_slice() {
                [] => crate::body::empty(),
                [one] => full(one.clone()),
                many => {
                    let frames: Vec<Result<Frame<Bytes>, BoxError>> =
                        many.iter().map(|b| Ok(Frame::data(b.clone()))).collect();
                    StreamBody::new(futures_util::stream::iter(frames)).boxed_unsync()
                }
            }),
            ReplayBody::Once(body) => body.take(),
        }
    }

    pub fn replayable(&self) -> bool {
        matches!(self, ReplayBody::Buffered(_))
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

    #[tokio::test]
    async fn replay_body_buffers_small_and_streams_large() {
        let mut small = ReplayBody::new(full("hello"), 16).await.unwrap();
        assert!(small.replayable());
        for _ in 0..2 {
            let b = small.take().unwrap().collect().await.unwrap().to_bytes();
            assert_eq!(b, "hello");
        }
        let chunks: Vec<Result<Frame<Bytes>, BoxError>> = (0..4)
            .map(|i| Ok(Frame::data(Bytes::from(vec![b'a' + i; 8]))))
            .collect();
        let streamed = StreamBody::new(futures_util::stream::iter(chunks)).boxed_unsync();
        let mut large = ReplayBody::new(streamed, 16).await.unwrap();
        assert!(!large.replayable());
        let b = large.take().unwrap().collect().await.unwrap().to_bytes();
        assert_eq!(b.len(), 32);
        assert_eq!(&b[..8], b"aaaaaaaa");
        assert_eq!(&b[24..], b"dddddddd");
        assert!(large.take().is_none(), "a streamed body is sent once");
    }
}
