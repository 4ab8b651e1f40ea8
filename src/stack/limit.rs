//! The limiter layer: picks the pooled key, waits for that key's rate limit and in-flight cap,
//! and reads the upstream's backpressure off the answer.
//!
//! Outermost in the attempt chain (inside retry: the upstream counts every attempt). The key
//! is chosen here because each key has its own limiter: round robin over the keys still in
//! rotation, preferring keys not paused by an upstream 429. On the way out a 429 (or a 503
//! naming a time) pauses this key's limiter for the time the upstream named, and a pooled key
//! answered 401/403 is taken out of rotation and reported.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use http::{HeaderMap, StatusCode};
use metrics::Gauge;
use tokio::time::Instant;

use super::counters::Counters;
use super::layer::{Answered, Attempt, AttemptResult, Layer, Service};
use super::ratelimit::{Admission, Limiter, Rejected};
use super::retry_after;
use crate::config::PresetDefaults;
use crate::error::ProxyError;

/// An upstream's pause request is honoured up to this long (GitHub resets can be an hour away).
const MAX_UPSTREAM_PAUSE: Duration = Duration::from_secs(3600);

/// One key of the credential pool (a single slot when there is no pool).
pub struct KeySlot {
    /// Shared with the previous config generation when the rate limit did not change.
    pub limiter: Arc<Limiter>,
    removed: AtomicBool,
    healthy: Gauge,
}

impl KeySlot {
    pub fn new(limiter: Arc<Limiter>, healthy: Gauge) -> Self {
        healthy.set(1.0);
        KeySlot {
            limiter,
            removed: AtomicBool::new(false),
            healthy,
        }
    }
}

/// The keys of one upstream and how to read its backpressure.
pub struct Keys {
    upstream: String,
    slots: Vec<KeySlot>,
    next: AtomicUsize,
    provider: &'static PresetDefaults,
}

impl Keys {
    pub fn new(upstream: &str, slots: Vec<KeySlot>, provider: &'static PresetDefaults) -> Self {
        Keys {
            upstream: upstream.to_string(),
            slots,
            next: AtomicUsize::new(0),
            provider,
        }
    }

    pub fn len(&self) -> usize {
        self.slots.len()
    }

    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    pub fn limiter(&self, key: usize) -> Option<&Arc<Limiter>> {
        self.slots.get(key).map(|s| &s.limiter)
    }

    /// The next usable key: round robin, skipping removed keys and preferring keys that are not
    /// paused by an upstream 429.
    fn pick(&self) -> Result<usize, ProxyError> {
        let n = self.slots.len();
        if n <= 1 {
            return Ok(0);
        }
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let mut fallback: Option<(usize, Duration)> = None;
        for i in 0..n {
            let index = (start.wrapping_add(i)) % n;
            let slot = &self.slots[index];
            if slot.removed.load(Ordering::Relaxed) {
                continue;
            }
            match slot.limiter.paused_for() {
                None => return Ok(index),
                Some(wait) if fallback.is_none_or(|(_, w)| wait < w) => {
                    fallback = Some((index, wait))
                }
                Some(_) => {}
            }
        }
        fallback
            .map(|(index, _)| index)
            .ok_or_else(|| ProxyError::CredentialsUnavailable {
                upstream: self.upstream.clone(),
                reason: "every key of the pool was rejected by the upstream (401/403)".into(),
            })
    }

    fn live(&self) -> usize {
        self.slots
            .iter()
            .filter(|k| !k.removed.load(Ordering::Relaxed))
            .count()
    }

    fn remove(&self, key: usize, status: StatusCode) {
        if let Some(slot) = self.slots.get(key) {
            if !slot.removed.swap(true, Ordering::Relaxed) {
                slot.healthy.set(0.0);
                tracing::error!(upstream = %self.upstream, key_index = key, status = status.as_u16(),
                    "upstream rejected a pooled key; it is out of rotation until the config is reloaded");
            }
        }
    }

    /// Upstream backpressure: a 429 (or a 503 naming a time) pauses this key's limiter.
    /// Returns the wait the upstream asked for; `upstream_429` counts a 429.
    fn observe(
        &self,
        key: usize,
        status: StatusCode,
        headers: &HeaderMap,
        counters: &Counters,
    ) -> Option<Duration> {
        // Only error answers name a wait; skip the header parsing on the happy path.
        if status.as_u16() < 400 {
            return None;
        }
        let wait = retry_after::requested_wait(headers, self.provider, SystemTime::now());
        let pause = if status == StatusCode::TOO_MANY_REQUESTS {
            counters.limited_upstream.increment(1);
            wait.or(self.provider.default_429_wait_secs.map(Duration::from_secs))
        } else if status == StatusCode::SERVICE_UNAVAILABLE {
            wait
        } else {
            None
        };
        if let (Some(pause), Some(slot)) = (pause, self.slots.get(key)) {
            slot.limiter
                .pause_until(Instant::now() + pause.min(MAX_UPSTREAM_PAUSE));
        }
        wait
    }
}

pub struct KeyLimitLayer {
    pub keys: Arc<Keys>,
    pub counters: Arc<Counters>,
}

impl<S: Service> Layer<S> for KeyLimitLayer {
    type Service = KeyLimit<S>;
    fn layer(self, inner: S) -> KeyLimit<S> {
        KeyLimit {
            inner,
            keys: self.keys,
            counters: self.counters,
        }
    }
}

pub struct KeyLimit<S> {
    inner: S,
    keys: Arc<Keys>,
    counters: Arc<Counters>,
}

impl<S> KeyLimit<S> {
    /// Wait for the key's rate limit (and in-flight cap), within the total deadline.
    async fn admit(
        &self,
        key: usize,
        deadline: Instant,
        points: Option<f64>,
    ) -> Result<Admission, ProxyError> {
        let Some(limiter) = self.keys.limiter(key) else {
            return Err(ProxyError::CredentialsUnavailable {
                upstream: self.keys.upstream.clone(),
                reason: "no key is configured".into(),
            });
        };
        match limiter.acquire_points(Some(deadline), points).await {
            Ok(admission) => Ok(admission),
            Err(Rejected::Local { retry_after }) => {
                self.counters.limited_local.increment(1);
                Err(ProxyError::RateLimited {
                    upstream: self.keys.upstream.clone(),
                    retry_after,
                })
            }
            Err(Rejected::Upstream { retry_after }) => {
                self.counters.limited_upstream.increment(1);
                Err(ProxyError::UpstreamRateLimited {
                    upstream: self.keys.upstream.clone(),
                    retry_after,
                })
            }
        }
    }
}

impl<S: Service> Service for KeyLimit<S> {
    async fn call<'a>(&'a self, mut attempt: Attempt<'a>) -> AttemptResult {
        let key = self.keys.pick()?;
        attempt.key = key;
        let points = attempt.points;
        let admission = if attempt.progress.is_timed() {
            let waited = Instant::now();
            let admission = self.admit(key, attempt.deadline, points).await;
            attempt.progress.add_limiter_wait(waited.elapsed());
            admission?
        } else {
            self.admit(key, attempt.deadline, points).await?
        };
        let mut answered: Answered = self.inner.call(attempt).await?;
        let status = answered.response.status();
        if let Some(limiter) = self.keys.limiter(key) {
            if let Some(pacer) = limiter.pacer_for(points) {
                // The budget is spent: hold this key (and, shared, every replica) until the
                // reset, which also steers key selection away from it. A spent GraphQL points
                // bucket holds only GraphQL queries (its own wait): the REST budget is another.
                let spent = pacer.observe(answered.response.headers(), admission.seq);
                if let (Some(until), None) = (spent, points) {
                    limiter.pause_until(until);
                }
            }
        }
        answered.wait = self
            .keys
            .observe(key, status, answered.response.headers(), &self.counters);
        if self.keys.len() > 1 && status.as_u16() >= 400 {
            if matches!(status.as_u16(), 401 | 403) {
                self.keys.remove(key, status);
                answered.key_rejected = self.keys.live() > 0;
            }
            answered.other_key_free =
                self.keys.slots.iter().any(|k| {
                    !k.removed.load(Ordering::Relaxed) && k.limiter.paused_for().is_none()
                });
        }
        answered.admission = Some(admission);
        answered.key = key;
        Ok(answered)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::preset::GENERIC;
    use crate::config::RateLimit;
    use crate::metrics::{Metrics, UpstreamMetrics};
    use crate::stack::layer::{Progress, Stack};
    use std::sync::Mutex;

    /// Answers each attempt with the next scripted status and records the key it carried.
    struct Script {
        statuses: Mutex<Vec<(u16, Option<&'static str>)>>,
        keys: Mutex<Vec<usize>>,
    }
    impl Service for Arc<Script> {
        async fn call<'a>(&'a self, attempt: Attempt<'a>) -> AttemptResult {
            self.keys.lock().unwrap().push(attempt.key);
            let (status, retry_after) = self.statuses.lock().unwrap().remove(0);
            let mut response = http::Response::new(crate::body::empty());
            *response.status_mut() = StatusCode::from_u16(status).unwrap();
            if let Some(v) = retry_after {
                response
                    .headers_mut()
                    .insert("retry-after", v.parse().unwrap());
            }
            Ok(Answered::new(response))
        }
    }

    fn chain(
        pool: usize,
        rate: Option<&RateLimit>,
        statuses: Vec<(u16, Option<&'static str>)>,
    ) -> (KeyLimit<Arc<Script>>, Arc<Script>, Arc<Keys>) {
        let metrics = Metrics::new();
        let m = UpstreamMetrics::new(&metrics, "api");
        let slots = (0..pool)
            .map(|i| {
                KeySlot::new(
                    Arc::new(Limiter::new(rate)),
                    m.gauge_with("g", "key", i.to_string()),
                )
            })
            .collect();
        let keys = Arc::new(Keys::new("api", slots, &GENERIC));
        let script = Arc::new(Script {
            statuses: Mutex::new(statuses),
            keys: Mutex::new(Vec::new()),
        });
        let chain = Stack::new(script.clone())
            .push(KeyLimitLayer {
                keys: keys.clone(),
                counters: Arc::new(Counters::new(&m)),
            })
            .into_inner();
        (chain, script, keys)
    }

    async fn call(chain: &KeyLimit<Arc<Script>>) -> AttemptResult {
        let progress = Progress::new(None);
        chain
            .call(Attempt {
                request: http::Request::new(crate::body::empty()),
                key: usize::MAX,
                upgrade: None,
                deadline: Instant::now() + Duration::from_secs(60),
                progress: &progress,
                auth: &Default::default(),
                can_refresh: true,
                endpoint: None,
                points: None,
            })
            .await
    }

    #[tokio::test(start_paused = true)]
    async fn a_429_pauses_only_its_key_and_another_key_serves() {
        let (chain, script, keys) =
            chain(2, None, vec![(429, Some("20")), (200, None), (200, None)]);
        let first = call(&chain).await.unwrap();
        assert_eq!(first.wait, Some(Duration::from_secs(20)));
        assert!(first.other_key_free, "the other key is not paused");
        assert!(keys.limiter(0).unwrap().paused_for().is_some());
        assert!(keys.limiter(1).unwrap().paused_for().is_none());
        call(&chain).await.unwrap();
        call(&chain).await.unwrap();
        // Round robin would give key 0 again on the third call; it is paused, key 1 serves.
        assert_eq!(*script.keys.lock().unwrap(), vec![0, 1, 1]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_refused_pooled_key_leaves_the_rotation() {
        let (chain, script, _) = chain(
            2,
            None,
            vec![(401, None), (200, None), (200, None), (401, None)],
        );
        let refused = call(&chain).await.unwrap();
        assert!(refused.key_rejected, "key 1 is left");
        call(&chain).await.unwrap();
        call(&chain).await.unwrap();
        assert_eq!(*script.keys.lock().unwrap(), vec![0, 1, 1]);
        let last = call(&chain).await.unwrap();
        assert!(!last.key_rejected, "no key is left to retry with");
        let err = call(&chain).await.err().unwrap();
        assert_eq!(err.kind(), "credentials_unavailable");
    }

    /// Answers with X-RateLimit-* headers: key 0's budget is spent, key 1's is not.
    struct PerKeyQuota(Mutex<Vec<usize>>);
    impl Service for Arc<PerKeyQuota> {
        async fn call<'a>(&'a self, attempt: Attempt<'a>) -> AttemptResult {
            self.0.lock().unwrap().push(attempt.key);
            let remaining = if attempt.key == 0 { "0" } else { "50" };
            let response = http::Response::builder()
                .header("x-ratelimit-limit", "60")
                .header("x-ratelimit-remaining", remaining)
                .header("x-ratelimit-reset", "30")
                .body(crate::body::empty())
                .unwrap();
            Ok(Answered::new(response))
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_spent_quota_pauses_only_its_key() {
        let metrics = Metrics::new();
        let m = UpstreamMetrics::new(&metrics, "api");
        let quota = RateLimit {
            requests: f64::INFINITY,
            per: Duration::from_secs(1),
            burst: 10,
            max_wait: Duration::from_secs(1),
            max_in_flight: None,
            shared: None,
            quota: Some(crate::config::QuotaSignal::XRateLimit),
        };
        let slots = (0..2)
            .map(|i| {
                let pacer = crate::stack::quota::Pacer::new(
                    quota.quota,
                    f64::INFINITY,
                    0,
                    true,
                    None,
                    None,
                );
                KeySlot::new(
                    Arc::new(Limiter::new(Some(&quota)).with_pacer(Some(pacer))),
                    m.gauge_with("g", "key", i.to_string()),
                )
            })
            .collect();
        let keys = Arc::new(Keys::new("api", slots, &GENERIC));
        let upstream = Arc::new(PerKeyQuota(Mutex::new(Vec::new())));
        let chain = Stack::new(upstream.clone())
            .push(KeyLimitLayer {
                keys: keys.clone(),
                counters: Arc::new(Counters::new(&m)),
            })
            .into_inner();
        let progress = Progress::new(None);
        for _ in 0..3 {
            chain
                .call(Attempt {
                    request: http::Request::new(crate::body::empty()),
                    key: usize::MAX,
                    upgrade: None,
                    deadline: Instant::now() + Duration::from_secs(60),
                    progress: &progress,
                    auth: &Default::default(),
                    can_refresh: true,
                    endpoint: None,
                    points: None,
                })
                .await
                .unwrap();
        }
        let paused = keys
            .limiter(0)
            .unwrap()
            .paused_for()
            .expect("key 0 is spent");
        assert!(paused >= Duration::from_secs(30), "{paused:?}");
        assert!(keys.limiter(1).unwrap().paused_for().is_none());
        assert_eq!(
            *upstream.0.lock().unwrap(),
            vec![0, 1, 1],
            "key 1 serves meanwhile"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn over_the_local_budget_is_refused_before_the_upstream() {
        let rate = RateLimit {
            requests: 1.0,
            per: Duration::from_secs(1),
            burst: 1,
            max_wait: Duration::ZERO,
            max_in_flight: None,
            shared: None,
            quota: None,
        };
        let (chain, script, _) = chain(1, Some(&rate), vec![(200, None), (200, None)]);
        call(&chain).await.unwrap();
        let err = call(&chain).await.err().unwrap();
        assert_eq!(err.kind(), "rate_limited");
        assert_eq!(
            script.keys.lock().unwrap().len(),
            1,
            "the upstream saw one attempt"
        );
    }
}
