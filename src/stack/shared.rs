//! The shared rate limit (`rate_limit.shared`): one budget per upstream (and per pooled key)
//! across every replica, kept in Redis.
//!
//! Sits inside the local [`Limiter`](super::ratelimit::Limiter), which asks it first and falls
//! back to its own bucket when Redis cannot answer. The in-flight cap (`max_in_flight`) stays
//! per replica: it bounds this process's concurrency, not the upstream's budget.
//!
//! # Algorithm: GCRA with reservation, one round trip
//! Each bucket is one Redis key holding its theoretical arrival time (TAT, microseconds on the
//! Redis clock, so replicas' clocks never matter). One Lua script, run atomically by `EVALSHA`
//! (`redis::Script` falls back to `EVAL` on `NOSCRIPT`), reads the clock, the TAT and the pause
//! key, and either
//! * admits at once (`wait = 0`),
//! * **reserves** the next free slot when it is no further away than the caller's budget
//!   (`max_wait`, capped by the request's deadline): the TAT moves on and the caller sleeps
//!   `wait` locally before sending, or
//! * refuses, with the wait it would have needed (the 429's `Retry-After`).
//!
//! Reservation rather than sleep-and-retry: it costs one round trip per admission whatever the
//! wait, and slots are handed out in the order requests reach Redis, so waiting requests of all
//! replicas are served first come, first served instead of racing each time a token appears.
//! The price: a request cancelled while it sleeps leaves its slot unused (the upstream sees
//! slightly less than the budget, never more).
//!
//! # Upstream 429s
//! [`SharedBucket::pause_for`] writes `…:pause` (pause-until on the Redis clock, `PX` expiry,
//! only ever extended), fire-and-forget. The admission script starts every slot at the end of
//! the pause, so every replica holds back, and after the pause the bucket serves its burst and
//! then its rate (not everything that arrived meanwhile). The caller also passes its own local
//! pause, so a replica honours the 429 it saw even before the pause key is written.
//!
//! # Degraded mode
//! Each command has a [`COMMAND_TIMEOUT`]. A connection error, timeout or server error drops the
//! connection and marks the upstream degraded: requests go straight to the local bucket (at
//! `rate / expected_replicas`, burst scaled too) without touching Redis, the gauge
//! `outpost_rate_limit_shared_degraded{upstream}` is 1, and one `warn` line is logged. A
//! background task reconnects with jittered exponential backoff; once a new connection has
//! loaded the scripts, the shared limit is back (one `info` line, gauge 0). Requests never wait
//! for a reconnect. Until the first connection is made after start (or reload) the gauge reads
//! 1, and requests wait for that first attempt, at most [`COMMAND_TIMEOUT`], so a restart or a
//! config reload does not open a window of local limits.
//!
//! Keys: `<prefix>{<upstream>:<key index>}` and `…:pause`; the braces are a Redis Cluster hash
//! tag, so both keys of a bucket live on one shard. Keys expire once they no longer matter.

use std::sync::Arc;
use std::time::Duration;

use redis::Script;

use crate::config::{RateLimit, SharedLimit, Upstream};
use crate::metrics::{UpstreamMetrics, RATE_LIMIT_SHARED_DEGRADED};
pub use crate::shared_redis::COMMAND_TIMEOUT;
use crate::shared_redis::{OwnerKind, Purpose, RedisLink};

/// Prefix of every key the shared limiter writes.
pub const DEFAULT_KEY_PREFIX: &str = "outpost:rl:";

/// KEYS: TAT, pause-until. ARGV: interval µs, burst, budget µs, local pause left µs, learned
/// interval µs (quota pacing: replaces the configured interval when longer; 0 = none).
/// Returns `{code, wait µs, pause left µs}`: 0 admitted after `wait` (slot reserved), 1 over
/// budget (wait needed), 2 paused by the upstream for longer than the budget.
const ADMIT_LUA: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[1])
local learned = tonumber(ARGV[5] or 0)
if learned > interval then interval = learned end
local burst = tonumber(ARGV[2])
local budget = tonumber(ARGV[3])
local open = now + tonumber(ARGV[4])
local paused = tonumber(redis.call('GET', KEYS[2]) or 0)
if paused > open then open = paused end
local pause_left = open - now
if pause_left > budget then return {2, pause_left, pause_left} end
local tat = tonumber(redis.call('GET', KEYS[1]) or 0)
if tat < open then tat = open end
local new_tat = tat + interval
local at = new_tat - burst * interval
if at < open then at = open end
local wait = at - now
if wait > budget then return {1, wait, pause_left} end
redis.call('SET', KEYS[1], string.format('%.0f', new_tat), 'PX', math.floor((new_tat - now) / 1000) + 1000)
return {0, wait, pause_left}
"#;

/// KEYS: pause-until. ARGV: pause µs from now. Only ever extends the pause.
const PAUSE_LUA: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local pause = tonumber(ARGV[1])
local till = now + pause
local cur = tonumber(redis.call('GET', KEYS[1]) or 0)
if till > cur then
  redis.call('SET', KEYS[1], string.format('%.0f', till), 'PX', math.floor(pause / 1000) + 1000)
end
return 0
"#;

/// What Redis decided for one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Admitted: send after `wait` (a reserved slot). `paused_for`: an upstream pause was in
    /// force (mirror it locally, so key selection sees it).
    Admit {
        wait: Duration,
        paused_for: Option<Duration>,
    },
    /// The shared budget would need a wait longer than the caller's budget.
    Limited { retry_after: Duration },
    /// An upstream 429 pause (of any replica) lasts longer than the caller's budget.
    Paused { retry_after: Duration },
}

/// The Redis side of one upstream: the connection its buckets share and its degraded state.
#[derive(Clone)]
pub struct SharedStore {
    inner: Arc<Inner>,
}

struct Inner {
    upstream: String,
    link: RedisLink,
    admit: Script,
    pause: Script,
    prefix: String,
    interval_us: u64,
    burst: u32,
}

/// One bucket (an upstream, or one key of its pool) in Redis.
pub struct SharedBucket {
    inner: Arc<Inner>,
    key: String,
    pause_key: String,
}

impl SharedStore {
    /// The shared store of an upstream whose `rate_limit.shared` is set; `Ok(None)` otherwise.
    pub fn for_upstream(
        config: &Upstream,
        metrics: &UpstreamMetrics,
    ) -> Result<Option<SharedStore>, String> {
        let Some(rl) = &config.rate_limit else {
            return Ok(None);
        };
        let Some(shared) = &rl.shared else {
            return Ok(None);
        };
        let gauge = metrics.gauge(RATE_LIMIT_SHARED_DEGRADED);
        SharedStore::new(&config.name, rl, shared, &shared.key_prefix, Some(gauge)).map(Some)
    }

    /// Connects in the background (when called inside a tokio runtime; otherwise on first use).
    /// Never logs a Redis URL: it may hold a password.
    pub fn new(
        upstream: &str,
        rate: &RateLimit,
        shared: &SharedLimit,
        prefix: &str,
        degraded_gauge: Option<metrics::Gauge>,
    ) -> Result<SharedStore, String> {
        let admit = Script::new(ADMIT_LUA);
        let pause = Script::new(PAUSE_LUA);
        let purpose = Purpose {
            what: "shared rate limit",
            owner_kind: OwnerKind::Upstream,
            owner: upstream.to_string(),
            fallback: "limiting locally at rate / expected_replicas",
            restored: "shared budget restored",
        };
        let link = RedisLink::new(
            &shared.redis,
            purpose,
            vec![admit.clone(), pause.clone()],
            degraded_gauge,
        )
        .map_err(|e| format!("upstream `{upstream}`: rate_limit.{e}"))?;
        // Without a configured rate (quota pacing alone) the interval is the learned one.
        let interval_us = if rate.has_rate() {
            (rate.per.as_secs_f64() * 1e6 / rate.requests).round() as u64
        } else {
            1
        };
        Ok(SharedStore {
            inner: Arc::new(Inner {
                upstream: upstream.to_string(),
                link,
                admit,
                pause,
                prefix: prefix.to_string(),
                interval_us: interval_us.max(1),
                burst: rate.burst.max(1),
            }),
        })
    }

    /// The bucket of pool key `key_index` (0 without a pool).
    pub fn bucket(&self, key_index: usize) -> SharedBucket {
        let key = format!(
            "{}{{{}:{}}}",
            self.inner.prefix, self.inner.upstream, key_index
        );
        SharedBucket {
            pause_key: format!("{key}:pause"),
            key,
            inner: self.inner.clone(),
        }
    }

    /// True while requests are served by the local limiter (Redis unreachable, or not yet
    /// connected).
    pub fn is_degraded(&self) -> bool {
        self.inner.link.is_degraded()
    }
}

impl SharedBucket {
    /// Ask Redis for a slot within `budget`. `local_pause`: an upstream pause this replica knows
    /// of. `None`: Redis could not answer in time; the caller uses its local bucket.
    /// `learned`: the interval quota pacing asks for (see `quota.rs`), used when longer than the
    /// configured one, so every replica's admissions follow the budget the upstream reports.
    pub async fn reserve(
        &self,
        budget: Duration,
        local_pause: Option<Duration>,
        learned: Option<Duration>,
    ) -> Option<Verdict> {
        let mut invocation = self.inner.admit.prepare_invoke();
        invocation
            .key(&self.key)
            .key(&self.pause_key)
            .arg(self.inner.interval_us)
            .arg(self.inner.burst)
            .arg(micros(budget))
            .arg(local_pause.map_or(0, micros))
            .arg(learned.map_or(0, micros));
        let (code, wait, pause_left) = self
            .inner
            .link
            .invoke::<(i64, i64, i64)>(&invocation)
            .await?;
        let us = |v: i64| Duration::from_micros(v.max(0) as u64);
        let interval =
            Duration::from_micros(self.inner.interval_us).max(learned.unwrap_or_default());
        Some(match code {
            0 => Verdict::Admit {
                wait: us(wait),
                paused_for: (pause_left > 0).then(|| us(pause_left)),
            },
            2 => Verdict::Paused {
                retry_after: us(pause_left),
            },
            _ => Verdict::Limited {
                retry_after: us(wait).max(interval),
            },
        })
    }

    /// Pause this bucket on every replica for `pause` (the upstream answered 429). Written in
    /// the background; while degraded, only the local pause applies.
    pub fn pause_for(&self, pause: Duration) {
        if self.inner.link.is_degraded() {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let inner = self.inner.clone();
        let key = self.pause_key.clone();
        runtime.spawn(async move {
            let mut invocation = inner.pause.prepare_invoke();
            invocation.key(&key).arg(micros(pause));
            let _ = inner.link.invoke_if_up::<i64>(&invocation).await;
        });
    }
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX / 4)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rate(rps: f64, burst: u32) -> RateLimit {
        RateLimit {
            requests: rps,
            per: Duration::from_secs(1),
            burst,
            max_wait: Duration::ZERO,
            max_in_flight: None,
            shared: None,
            quota: None,
        }
    }

    #[test]
    fn keys_carry_prefix_upstream_key_and_a_hash_tag() {
        let shared = SharedLimit {
            redis: crate::config::RedisTarget::Standalone(crate::config::Secret::new(
                "redis://127.0.0.1:1",
            )),
            expected_replicas: 2,
            key_prefix: "outpost:rl:".into(),
        };
        let store = SharedStore::new("stripe", &rate(10.0, 1), &shared, "p:", None).unwrap();
        let bucket = store.bucket(3);
        assert_eq!(bucket.key, "p:{stripe:3}");
        assert_eq!(bucket.pause_key, "p:{stripe:3}:pause");
        assert_eq!(store.inner.interval_us, 100_000);
        // Outside a runtime nothing connects, and the store reports itself degraded.
        assert!(store.is_degraded());
    }

    #[test]
    fn an_unusable_url_is_a_build_error_that_does_not_echo_it() {
        let shared = SharedLimit {
            redis: crate::config::RedisTarget::Standalone(crate::config::Secret::new(
                "redis://user:s3cret@[::1",
            )),
            expected_replicas: 2,
            key_prefix: "outpost:rl:".into(),
        };
        let err = SharedStore::new("api", &rate(1.0, 1), &shared, "p:", None)
            .err()
            .expect("invalid url");
        assert!(!err.contains("s3cret"), "{err}");
    }

    #[tokio::test]
    async fn unreachable_redis_answers_none_at_once() {
        // Port 1 on loopback refuses connections.
        let shared = SharedLimit {
            redis: crate::config::RedisTarget::Standalone(crate::config::Secret::new(
                "redis://127.0.0.1:1",
            )),
            expected_replicas: 2,
            key_prefix: "outpost:rl:".into(),
        };
        let gauge_store = SharedStore::new("api", &rate(10.0, 1), &shared, "p:", None).unwrap();
        let bucket = gauge_store.bucket(0);
        let started = tokio::time::Instant::now();
        assert_eq!(bucket.reserve(Duration::ZERO, None, None).await, None);
        assert!(started.elapsed() < COMMAND_TIMEOUT);
        assert!(gauge_store.is_degraded());
    }
}
