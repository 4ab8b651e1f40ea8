//! Per-upstream (and per-key) rate limiting: a governor token bucket, a FIFO queue bounded by
//! `max_wait`, an optional in-flight cap, and a pause set by the upstream's own 429s.
//!
//! Sits inside retry (the upstream counts every attempt). Time is `tokio::time`: governor runs
//! on a clock built on tokio's `Instant`, and waits are `tokio::time::sleep`, so paused-time
//! tests hold. Waiters are served in arrival order: the queue is a `tokio::sync::Mutex`, which
//! is fair, and only the request at its head waits for the bucket.
//!
//! With `rate_limit.shared`, a [`SharedBucket`] in Redis decides first (see `shared.rs`); the
//! local bucket then runs at `rate / expected_replicas` and serves only while Redis cannot
//! answer. Without it, no Redis code is on the path.
//!
//! With `rate_limit.quota`, a [`Pacer`] (see `quota.rs`) is waited for first: the budget the
//! upstream reports lowers the configured rate (or alone paces, when none is configured). With
//! `graphql:`, GraphQL queries draw their estimated points from a second pacer, the key's points
//! bucket. Without either, no pacer code runs.

use std::num::NonZeroU32;
use std::ops::Add;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use governor::clock::{Clock, Reference};
use governor::middleware::NoOpMiddleware;
use governor::nanos::Nanos;
use governor::state::{InMemoryState, NotKeyed};
use governor::{Quota, RateLimiter};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use super::quota::Pacer;
use super::shared::{SharedBucket, Verdict};
use crate::config::RateLimit;

/// tokio's clock for governor (follows `tokio::time::pause`).
#[derive(Clone, Copy, Debug, Default)]
pub struct TokioClock;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct TokioInstant(Instant);

impl Add<Nanos> for TokioInstant {
    type Output = TokioInstant;
    fn add(self, other: Nanos) -> TokioInstant {
        TokioInstant(self.0 + Duration::from(other))
    }
}

impl Reference for TokioInstant {
    fn duration_since(&self, earlier: Self) -> Nanos {
        self.0.saturating_duration_since(earlier.0).into()
    }
    fn saturating_sub(&self, duration: Nanos) -> Self {
        TokioInstant(self.0.checked_sub(duration.into()).unwrap_or(self.0))
    }
}

impl Clock for TokioClock {
    type Instant = TokioInstant;
    fn now(&self) -> TokioInstant {
        TokioInstant(Instant::now())
    }
}

type Bucket = RateLimiter<NotKeyed, InMemoryState, TokioClock, NoOpMiddleware<TokioInstant>>;

/// Counts a waiter in the queue (and its gauge) for as long as it lives, cancellation included.
struct Queued<'a>(&'a Limiter);

impl<'a> Queued<'a> {
    fn enter(limiter: &'a Limiter) -> Self {
        limiter.queued.fetch_add(1, Ordering::Relaxed);
        if let Some(g) = &limiter.queued_gauge {
            g.increment(1.0);
        }
        Queued(limiter)
    }
}

impl Drop for Queued<'_> {
    fn drop(&mut self) {
        self.0.queued.fetch_sub(1, Ordering::Relaxed);
        if let Some(g) = &self.0.queued_gauge {
            g.decrement(1.0);
        }
    }
}

/// `start + budget`, saturating far in the future.
fn far(start: Instant, budget: Duration) -> Instant {
    start
        .checked_add(budget)
        .unwrap_or_else(|| start + Duration::from_secs(86_400 * 365))
}

/// Why a request was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejected {
    /// The local budget would make it wait longer than `max_wait`.
    Local { retry_after: Duration },
    /// The upstream asked for a pause (429) longer than `max_wait`.
    Upstream { retry_after: Duration },
}

/// Holds an in-flight slot until dropped (attach it to the response body).
#[derive(Debug)]
pub struct Admission {
    _permit: Option<OwnedSemaphorePermit>,
    /// The quota pacer's sequence number of this admission (0 without `quota`).
    pub seq: u64,
}

impl Admission {
    /// True when this admission holds an in-flight slot (`max_in_flight` is set).
    pub fn holds_slot(&self) -> bool {
        self._permit.is_some()
    }
}

/// One bucket with its queue: per upstream, or per key of a key pool.
pub struct Limiter {
    bucket: Option<Bucket>,
    /// Interval between tokens, for the queue-length estimate.
    interval: Duration,
    max_wait: Duration,
    queue: tokio::sync::Mutex<()>,
    queued: AtomicUsize,
    queued_gauge: Option<metrics::Gauge>,
    in_flight: Option<Arc<Semaphore>>,
    paused_until: Mutex<Option<Instant>>,
    /// The replicas' common budget, when `rate_limit.shared` is set.
    shared: Option<SharedBucket>,
    /// The budget learned from the upstream's quota headers (`rate_limit.quota`).
    pacer: Option<Pacer>,
    /// The GraphQL points bucket (`graphql:`), drawn by GraphQL queries.
    points: Option<Pacer>,
}

impl Limiter {
    /// A limiter for `config`, or a pause-only limiter (no local budget) when `None`.
    pub fn new(config: Option<&RateLimit>) -> Self {
        Self::with_gauge(config, None)
    }

    /// A limiter that reports its queue length on `queued_gauge`.
    pub fn with_gauge(config: Option<&RateLimit>, queued_gauge: Option<metrics::Gauge>) -> Self {
        Self::with_shared(config, queued_gauge, None)
    }

    /// A limiter whose budget lives in Redis (`shared`), with a local bucket at
    /// `rate / expected_replicas` (burst scaled too) for when Redis cannot answer.
    pub fn with_shared(
        config: Option<&RateLimit>,
        queued_gauge: Option<metrics::Gauge>,
        shared: Option<SharedBucket>,
    ) -> Self {
        let (bucket, interval, max_wait, in_flight) = match config {
            Some(rl) if !rl.has_rate() => (
                None,
                Duration::ZERO,
                rl.max_wait,
                rl.max_in_flight
                    .map(|n| Arc::new(Semaphore::new(n as usize))),
            ),
            Some(rl) => {
                let (requests, burst) = match (&shared, &rl.shared) {
                    (Some(_), Some(s)) => degraded_share(rl, s.expected_replicas),
                    _ => (rl.requests, rl.burst),
                };
                let interval = Duration::from_secs_f64(rl.per.as_secs_f64() / requests)
                    .max(Duration::from_nanos(1));
                let burst = NonZeroU32::new(burst).unwrap_or(NonZeroU32::MIN);
                let quota = Quota::with_period(interval).map(|q| q.allow_burst(burst));
                let bucket = quota.map(|q| RateLimiter::direct_with_clock(q, TokioClock));
                (
                    bucket,
                    interval,
                    rl.max_wait,
                    rl.max_in_flight
                        .map(|n| Arc::new(Semaphore::new(n as usize))),
                )
            }
            // Pause-only: without a local budget, requests wait out an upstream pause for as
            // long as their own deadline allows.
            None => (None, Duration::ZERO, Duration::MAX, None),
        };
        Limiter {
            bucket,
            interval,
            max_wait,
            queue: tokio::sync::Mutex::new(()),
            queued: AtomicUsize::new(0),
            queued_gauge,
            in_flight,
            paused_until: Mutex::new(None),
            shared,
            pacer: None,
            points: None,
        }
    }

    /// This limiter, with a GraphQL points bucket as well.
    pub fn with_points(mut self, points: Option<Pacer>) -> Self {
        self.points = points;
        self
    }

    /// The GraphQL points bucket, when `graphql:` is on.
    pub fn points(&self) -> Option<&Pacer> {
        self.points.as_ref()
    }

    /// The pacer an attempt draws from: the points bucket for a GraphQL query (`points`),
    /// else the quota pacer.
    pub fn pacer_for(&self, points: Option<f64>) -> Option<&Pacer> {
        match points {
            Some(_) => self.points.as_ref().or(self.pacer.as_ref()),
            None => self.pacer.as_ref(),
        }
    }

    /// This limiter, pacing by the upstream's quota headers as well.
    pub fn with_pacer(mut self, pacer: Option<Pacer>) -> Self {
        self.pacer = pacer;
        self
    }

    /// The quota pacer, when `rate_limit.quota` is set.
    pub fn pacer(&self) -> Option<&Pacer> {
        self.pacer.as_ref()
    }

    /// Requests waiting in the queue now.
    pub fn queued(&self) -> usize {
        self.queued.load(Ordering::Relaxed)
    }

    /// Pause every request until `until` (the upstream said 429 / Retry-After); with a shared
    /// limit, every replica's.
    pub fn pause_until(&self, until: Instant) {
        if let Some(shared) = &self.shared {
            shared.pause_for(until.saturating_duration_since(Instant::now()));
        }
        self.pause_locally(until);
    }

    fn pause_locally(&self, until: Instant) {
        let mut paused = self.paused_until.lock().unwrap_or_else(|e| e.into_inner());
        if paused.is_none_or(|p| p < until) {
            *paused = Some(until);
        }
    }

    /// Time left on an upstream pause.
    pub fn paused_for(&self) -> Option<Duration> {
        let paused = *self.paused_until.lock().unwrap_or_else(|e| e.into_inner());
        paused
            .and_then(|p| p.checked_duration_since(Instant::now()))
            .filter(|d| !d.is_zero())
    }

    /// Wait for a slot: FIFO, at most `max_wait` (which is also capped by `deadline`). With a
    /// quota pacer, the learned budget is waited for first.
    pub async fn acquire(&self, deadline: Option<Instant>) -> Result<Admission, Rejected> {
        self.acquire_points(deadline, None).await
    }

    /// [`Limiter::acquire`] for an attempt that may cost `points` (a GraphQL query).
    pub async fn acquire_points(
        &self,
        deadline: Option<Instant>,
        points: Option<f64>,
    ) -> Result<Admission, Rejected> {
        let Some(pacer) = self.pacer_for(points) else {
            return self.acquire_slot(deadline).await;
        };
        let cost = match (points, self.points.is_some()) {
            (Some(points), true) => points,
            _ => 1.0,
        };
        let start = Instant::now();
        let mut budget = self.max_wait;
        if let Some(d) = deadline {
            budget = budget.min(d.saturating_duration_since(start));
        }
        if let Some(wait) = self.paused_for().filter(|w| *w > budget) {
            return Err(Rejected::Upstream { retry_after: wait });
        }
        let seq = {
            let _queued = Queued::enter(self);
            pacer.admit(cost, budget).await
        };
        let seq = match seq {
            Ok(seq) => seq,
            // The budget is spent until the upstream's reset: held back by the upstream.
            Err(e) if e.exhausted => {
                return Err(Rejected::Upstream {
                    retry_after: e.retry_after,
                })
            }
            Err(e) => {
                return Err(Rejected::Local {
                    retry_after: e.retry_after,
                })
            }
        };
        let mut admission = self.acquire_slot(deadline).await?;
        admission.seq = seq;
        Ok(admission)
    }

    async fn acquire_slot(&self, deadline: Option<Instant>) -> Result<Admission, Rejected> {
        let start = Instant::now();
        let mut budget = self.max_wait;
        if let Some(d) = deadline {
            budget = budget.min(d.saturating_duration_since(start));
        }
        // Upstream pause first: it applies whether or not a local budget is configured, and a
        // paused request joins the queue so arrival order still holds.
        let paused = self.paused_for();
        if let Some(wait) = paused {
            if wait > budget {
                return Err(Rejected::Upstream { retry_after: wait });
            }
        }
        if let Some(shared) = &self.shared {
            let learned = self.pacer.as_ref().and_then(Pacer::learned_interval);
            if let Some(verdict) = shared.reserve(budget, paused, learned).await {
                return self.admit_shared(verdict, start, budget).await;
            }
            // Redis did not answer: the local share of the budget decides, below.
        }
        if self.bucket.is_none() && self.in_flight.is_none() {
            if let Some(wait) = paused {
                tokio::time::sleep(wait).await;
            }
            return Ok(Admission {
                _permit: None,
                seq: 0,
            });
        }
        if paused.is_some() {
            self.wait_in_queue(start, budget).await?;
            return self.in_flight_slot(start, budget).await;
        }

        // Estimate before queueing so an overloaded upstream answers 429 at once. Only a
        // request with nobody ahead may take a token directly; the others join the queue, so
        // arrival order holds.
        let ahead = self.queued.load(Ordering::Relaxed) as u32;
        if let Some(bucket) = &self.bucket {
            let estimate = if ahead == 0 {
                match bucket.check() {
                    Ok(()) => return self.in_flight_slot(start, budget).await,
                    Err(not_until) => not_until.wait_time_from(TokioClock.now()),
                }
            } else {
                self.interval * (ahead + 1)
            };
            if estimate > budget {
                return Err(Rejected::Local {
                    retry_after: estimate.max(self.interval),
                });
            }
        }

        self.wait_in_queue(start, budget).await?;
        self.in_flight_slot(start, budget).await
    }

    /// Carry out Redis's decision: sleep out a reserved slot, or refuse.
    async fn admit_shared(
        &self,
        verdict: Verdict,
        start: Instant,
        budget: Duration,
    ) -> Result<Admission, Rejected> {
        match verdict {
            Verdict::Admit { wait, paused_for } => {
                if let Some(pause) = paused_for {
                    self.pause_locally(Instant::now() + pause);
                }
                if !wait.is_zero() {
                    let _queued = Queued::enter(self);
                    tokio::time::sleep(wait).await;
                }
                self.in_flight_slot(start, budget).await
            }
            Verdict::Limited { retry_after } => Err(Rejected::Local { retry_after }),
            Verdict::Paused { retry_after } => {
                self.pause_locally(Instant::now() + retry_after);
                Err(Rejected::Upstream { retry_after })
            }
        }
    }

    async fn wait_in_queue(&self, start: Instant, budget: Duration) -> Result<(), Rejected> {
        let _queued = Queued::enter(self);
        let deadline = far(start, budget);
        let reject = || Rejected::Local {
            retry_after: self.interval.max(Duration::from_millis(1)),
        };
        let _turn = tokio::time::timeout_at(deadline, self.queue.lock())
            .await
            .map_err(|_| reject())?;
        let Some(bucket) = &self.bucket else {
            return Ok(());
        };
        loop {
            if let Some(wait) = self.paused_for() {
                if Instant::now() + wait > deadline {
                    return Err(Rejected::Upstream { retry_after: wait });
                }
                tokio::time::sleep(wait).await;
                continue;
            }
            match bucket.check() {
                Ok(()) => return Ok(()),
                Err(not_until) => {
                    let wait = not_until.wait_time_from(TokioClock.now());
                    if Instant::now() + wait > deadline {
                        return Err(Rejected::Local { retry_after: wait });
                    }
                    tokio::time::sleep(wait).await;
                }
            }
        }
    }

    async fn in_flight_slot(
        &self,
        start: Instant,
        budget: Duration,
    ) -> Result<Admission, Rejected> {
        let Some(semaphore) = &self.in_flight else {
            return Ok(Admission {
                _permit: None,
                seq: 0,
            });
        };
        if let Ok(permit) = semaphore.clone().try_acquire_owned() {
            return Ok(Admission {
                _permit: Some(permit),
                seq: 0,
            });
        }
        let deadline = far(start, budget);
        match tokio::time::timeout_at(deadline, semaphore.clone().acquire_owned()).await {
            Ok(Ok(permit)) => Ok(Admission {
                _permit: Some(permit),
                seq: 0,
            }),
            _ => Err(Rejected::Local {
                retry_after: self.interval.max(Duration::from_millis(100)),
            }),
        }
    }
}

/// Each replica's share of the budget while the shared limit is unreachable: rate and burst
/// divided by `expected_replicas` (burst rounded up, at least 1).
fn degraded_share(rl: &RateLimit, replicas: u32) -> (f64, u32) {
    let replicas = replicas.max(1);
    (
        rl.requests / f64::from(replicas),
        rl.burst.div_ceil(replicas).max(1),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limit(rps: f64, burst: u32, max_wait: Duration, max_in_flight: Option<u32>) -> Limiter {
        Limiter::new(Some(&RateLimit {
            requests: rps,
            per: Duration::from_secs(1),
            burst,
            max_wait,
            max_in_flight,
            shared: None,
            quota: None,
        }))
    }

    #[tokio::test(start_paused = true)]
    async fn burst_then_queue_then_reject() {
        let l = limit(10.0, 2, Duration::from_millis(250), None);
        let start = Instant::now();
        l.acquire(None).await.unwrap();
        l.acquire(None).await.unwrap();
        assert_eq!(Instant::now(), start, "burst is immediate");
        l.acquire(None).await.unwrap();
        let waited = Instant::now() - start;
        assert!(
            waited >= Duration::from_millis(99) && waited <= Duration::from_millis(101),
            "{waited:?}"
        );
        // Bucket empty again; with max_wait 250ms one more fits, but not three ahead.
        l.acquire(None).await.unwrap();
        let now = Instant::now();
        let r = l.acquire(Some(now + Duration::from_millis(50))).await;
        assert!(matches!(r, Err(Rejected::Local { .. })), "{r:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn queue_is_fifo_and_bounded() {
        let l = Arc::new(limit(10.0, 1, Duration::from_secs(1), None));
        l.acquire(None).await.unwrap();
        let order = Arc::new(Mutex::new(Vec::new()));
        let mut tasks = Vec::new();
        for i in 0..5 {
            let l = l.clone();
            let order = order.clone();
            tasks.push(tokio::spawn(async move {
                let r = l.acquire(None).await;
                order.lock().unwrap().push((i, r.is_ok(), Instant::now()));
            }));
            tokio::task::yield_now().await;
        }
        for t in tasks {
            t.await.unwrap();
        }
        let order = order.lock().unwrap();
        let admitted: Vec<usize> = order
            .iter()
            .filter(|(_, ok, _)| *ok)
            .map(|(i, _, _)| *i)
            .collect();
        assert_eq!(admitted, vec![0, 1, 2, 3, 4], "{order:?}");
        // Each 100 ms apart.
        for w in order.windows(2) {
            assert!(w[1].2 - w[0].2 >= Duration::from_millis(99), "{order:?}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn rejects_at_once_when_the_wait_is_too_long() {
        let l = limit(1.0, 1, Duration::from_millis(500), None);
        l.acquire(None).await.unwrap();
        let start = Instant::now();
        let r = l.acquire(None).await;
        assert_eq!(Instant::now(), start, "rejection does not wait");
        match r {
            Err(Rejected::Local { retry_after }) => {
                assert!(retry_after > Duration::from_millis(900), "{retry_after:?}")
            }
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn upstream_pause_holds_everyone() {
        let l = limit(100.0, 100, Duration::from_secs(5), None);
        let start = Instant::now();
        l.pause_until(start + Duration::from_secs(2));
        l.acquire(None).await.unwrap();
        assert!(Instant::now() - start >= Duration::from_secs(2));
        // A pause longer than max_wait is rejected at once, as an upstream limit.
        l.pause_until(Instant::now() + Duration::from_secs(10));
        assert!(matches!(
            l.acquire(None).await,
            Err(Rejected::Upstream { .. })
        ));
        // Pause-only limiter (no rate_limit configured) still honours pauses.
        let p = Limiter::new(None);
        let t = Instant::now();
        p.pause_until(t + Duration::from_secs(1));
        p.acquire(None).await.unwrap();
        assert!(Instant::now() - t >= Duration::from_secs(1));
    }

    /// Real time: the shared store's connector touches a real (refusing) socket.
    #[tokio::test]
    async fn shared_limit_without_redis_uses_the_local_share() {
        use crate::config::SharedLimit;
        use crate::stack::shared::SharedStore;
        let shared = SharedLimit {
            redis: crate::config::RedisTarget::Standalone(crate::config::Secret::new(
                "redis://127.0.0.1:1",
            )),
            expected_replicas: 2,
            key_prefix: "outpost:rl:".into(),
        };
        let rl = RateLimit {
            requests: 10.0,
            per: Duration::from_secs(1),
            burst: 4,
            max_wait: Duration::ZERO,
            max_in_flight: None,
            shared: Some(shared.clone()),
            quota: None,
        };
        let store = SharedStore::new("api", &rl, &shared, "t:", None).unwrap();
        let l = Limiter::with_shared(Some(&rl), None, Some(store.bucket(0)));
        // Burst 4 over 2 replicas: 2 at once, then 5/s (200 ms apart).
        l.acquire(None).await.unwrap();
        l.acquire(None).await.unwrap();
        match l.acquire(None).await {
            Err(Rejected::Local { retry_after }) => {
                assert!(retry_after > Duration::from_millis(150), "{retry_after:?}")
            }
            other => panic!("{other:?}"),
        }
        assert!(store.is_degraded());
    }

    #[tokio::test(start_paused = true)]
    async fn in_flight_cap_queues_within_max_wait() {
        let l = limit(1000.0, 1000, Duration::from_millis(300), Some(1));
        let a = l.acquire(None).await.unwrap();
        let start = Instant::now();
        assert!(matches!(l.acquire(None).await, Err(Rejected::Local { .. })));
        assert!(Instant::now() - start >= Duration::from_millis(300));
        drop(a);
        l.acquire(None).await.unwrap();
    }
}
