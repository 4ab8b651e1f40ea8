//! Quota pacing (`rate_limit.quota`): read the provider's own quota signal off each answer and
//! pace requests so that the remaining budget lasts until it resets.
//!
//! Sits in the limiter ([`Limiter`](super::ratelimit::Limiter), one per pooled key, so a
//! per-key signal paces per key): [`Pacer::admit`] runs before the configured bucket, and
//! [`Pacer::observe`] reads the headers of every answer. Upstreams without `quota` have no
//! `Pacer`, and nothing here runs for them (no header scan).
//!
//! # Signals ([`Budget`] parsers, pure; REFERENCE.md "Retries, idempotency, rate-limit headers"
//! and "Integrations of the seed")
//! * `x-ratelimit`: `X-RateLimit-Remaining`, `-Limit`, `-Reset`. The reset is epoch seconds
//!   when the number is at least 1 000 000 000 (2001-09-09) and a delta in seconds below it:
//!   no real window is 31 years long, and no epoch reset is before 2001 (GitHub, SendGrid send
//!   epoch seconds; others send deltas).
//! * `shopify`: `X-Shopify-Shop-Api-Call-Limit: 32/40` — a leaky bucket of 40 that leaks
//!   `limit / 20` per second (2/s for 40, 4/s for Plus's 80); GraphQL answers report the points
//!   bucket in `extensions.cost.throttleStatus` (see `graphql.rs`).
//! * `hubspot`: `X-HubSpot-RateLimit-Remaining` over `-Interval-Milliseconds` (and `-Max`), and
//!   `X-HubSpot-RateLimit-Secondly-Remaining` over one second (`-Secondly`): the tighter wins.
//! * `salesforce`: `Sforce-Limit-Info: api-usage=25/5000`, a rolling 24 h window.
//! * `ietf`: `RateLimit: "default";r=50;t=30` (remaining `r`, seconds `t` until it resets),
//!   `RateLimit-Policy: "default";q=100;w=60` for the limit; the older split fields
//!   `RateLimit-Remaining` / `-Reset` / `-Limit` too. Several policies: the tightest wins.
//!
//! Malformed values are ignored (never an error, never a panic: property-tested).
//!
//! # Pacing
//! The pacer keeps an estimate of the budget left (`tokens`): each admission takes one
//! request (or a GraphQL query's estimated points) from it, and each answer replaces it with
//! what the upstream reported, less the requests admitted after the answered one (they are on
//! their way and not yet counted). Answers that arrive out of order are ignored when a newer
//! one was applied already; within one window the estimate only goes down.
//! * Windowed signals: requests are spaced at `resets_in / (remaining − reserve)` (a GCRA
//!   whose tolerance lets half of the remaining budget go at once: bursts are held back as the
//!   budget runs low). `reserve` is the safety margin, 2 % of the limit (at least 1, plus one
//!   per further expected replica when shared). With no budget left, requests wait until the
//!   reset plus [`RESET_GRACE`] (the upstream's clock and ours may differ by a second), and the
//!   key's limiter is paused until then (with `rate_limit.shared`, every replica's).
//! * Leaky buckets (Shopify): requests go while the bucket has room for them, then at the
//!   rate it refills.
//!
//! The configured rate stays an upper bound (its bucket runs after the pacer); without one the
//! quota alone paces. A wait longer than the request's budget (`max_wait`, capped by the
//! deadline) is refused at once with the wait as `Retry-After`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use http::HeaderMap;
use tokio::time::Instant;

use super::retry_after::parse_epoch_or_delta;
use crate::config::QuotaSignal;

/// Time added to a reset before the budget is taken to be back.
pub const RESET_GRACE: Duration = Duration::from_secs(1);
/// Nothing an upstream reports makes a window longer than this (Salesforce: 24 h).
const MAX_RESET: Duration = Duration::from_secs(86_400);
/// Largest budget number taken as it is (points or requests).
const MAX_BUDGET: f64 = 1e12;
/// Share of the limit kept back as a safety margin.
const RESERVE_SHARE: f64 = 0.02;

/// What an answer says of the budget left.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Budget {
    /// Requests (or points) left now.
    pub remaining: f64,
    /// The whole budget (window size or bucket capacity).
    pub limit: f64,
    /// Until the budget is whole again (a window's reset; a bucket's time to refill).
    pub resets_in: Duration,
    /// A leaky bucket's refill per second; `None` for a window that resets at once.
    pub refill: Option<f64>,
}

impl Budget {
    /// The rate at which this budget lasts until it resets (per second).
    fn rate(&self) -> f64 {
        match self.refill {
            Some(r) if self.remaining < 1.0 => r,
            Some(_) => f64::INFINITY,
            None if self.resets_in.is_zero() => f64::INFINITY,
            None => self.remaining / self.resets_in.as_secs_f64(),
        }
    }

    /// The tighter of two budgets (the lower sustainable rate).
    fn tighter(self, other: Budget) -> Budget {
        if other.rate() < self.rate() {
            other
        } else {
            self
        }
    }
}

fn number(text: &str) -> Option<f64> {
    let text = text.trim();
    if text.is_empty() || text.len() > 32 {
        return None;
    }
    text.parse::<f64>()
        .ok()
        .filter(|n| n.is_finite() && *n >= 0.0)
        .map(|n| n.min(MAX_BUDGET))
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// The budget one answer reports under `signal`.
pub fn parse(signal: QuotaSignal, headers: &HeaderMap, now: SystemTime) -> Option<Budget> {
    match signal {
        QuotaSignal::XRateLimit => parse_x_ratelimit(
            header(headers, "x-ratelimit-remaining")?,
            header(headers, "x-ratelimit-limit"),
            header(headers, "x-ratelimit-reset")?,
            now,
        ),
        QuotaSignal::Shopify => {
            parse_shopify_call_limit(header(headers, "x-shopify-shop-api-call-limit")?)
        }
        QuotaSignal::Hubspot => parse_hubspot(|name| header(headers, name)),
        QuotaSignal::Salesforce => parse_salesforce(header(headers, "sforce-limit-info")?),
        QuotaSignal::Ietf => match header(headers, "ratelimit") {
            Some(field) => parse_ietf(field, header(headers, "ratelimit-policy")),
            None => parse_x_ratelimit(
                header(headers, "ratelimit-remaining")?,
                header(headers, "ratelimit-limit"),
                header(headers, "ratelimit-reset")?,
                now,
            ),
        },
    }
}

/// `X-RateLimit-Remaining: 4999`, `-Limit: 5000`, `-Reset: 1372700873` (GitHub: epoch
/// seconds) or `-Reset: 30` (a delta).
pub fn parse_x_ratelimit(
    remaining: &str,
    limit: Option<&str>,
    reset: &str,
    now: SystemTime,
) -> Option<Budget> {
    let remaining = number(remaining)?;
    let limit = limit.and_then(number).unwrap_or(remaining).max(remaining);
    let resets_in = parse_epoch_or_delta(reset, now)?.min(MAX_RESET);
    Some(Budget {
        remaining,
        limit,
        resets_in,
        refill: None,
    })
}

/// `X-Shopify-Shop-Api-Call-Limit: 32/40`: 32 used of a bucket of 40 that leaks `40 / 20` = 2
/// per second.
pub fn parse_shopify_call_limit(value: &str) -> Option<Budget> {
    let (used, limit) = value.split_once('/')?;
    let used = number(used)?;
    let limit = number(limit).filter(|l| *l >= 1.0)?;
    let used = used.min(limit);
    let refill = limit / 20.0;
    Some(Budget {
        remaining: limit - used,
        limit,
        resets_in: Duration::from_secs_f64(used / refill).min(MAX_RESET),
        refill: Some(refill),
    })
}

/// HubSpot: `X-HubSpot-RateLimit-Remaining: 99` of `-Max: 100` per
/// `-Interval-Milliseconds: 10000`, and `-Secondly-Remaining: 9` of `-Secondly: 10` per second.
/// HubSpot does not say when its interval resets: the whole interval is assumed.
pub fn parse_hubspot<'a>(header: impl Fn(&str) -> Option<&'a str>) -> Option<Budget> {
    let interval = header("x-hubspot-ratelimit-remaining")
        .and_then(number)
        .and_then(|remaining| {
            let ms = header("x-hubspot-ratelimit-interval-milliseconds").and_then(number)?;
            let limit = header("x-hubspot-ratelimit-max")
                .and_then(number)
                .unwrap_or(remaining)
                .max(remaining);
            Some(Budget {
                remaining,
                limit,
                resets_in: Duration::from_secs_f64(ms / 1000.0).min(MAX_RESET),
                refill: None,
            })
        });
    let secondly = header("x-hubspot-ratelimit-secondly-remaining")
        .and_then(number)
        .map(|remaining| Budget {
            remaining,
            limit: header("x-hubspot-ratelimit-secondly")
                .and_then(number)
                .unwrap_or(remaining)
                .max(remaining),
            resets_in: Duration::from_secs(1),
            refill: None,
        });
    match (interval, secondly) {
        (Some(a), Some(b)) => Some(a.tighter(b)),
        (a, b) => a.or(b),
    }
}

/// `Sforce-Limit-Info: api-usage=25/5000`: 25 of 5000 calls used in the last 24 hours.
pub fn parse_salesforce(value: &str) -> Option<Budget> {
    let usage = value.split(',').find_map(|part| {
        let (key, value) = part.split_once('=')?;
        (key.trim().eq_ignore_ascii_case("api-usage")).then_some(value)
    })?;
    let (used, limit) = usage.split_once('/')?;
    let used = number(used)?;
    let limit = number(limit).filter(|l| *l >= 1.0)?;
    Some(Budget {
        remaining: (limit - used).max(0.0),
        limit,
        resets_in: MAX_RESET,
        refill: None,
    })
}

/// IETF draft: `RateLimit: "default";r=50;t=30` with `RateLimit-Policy: "default";q=100;w=60`.
pub fn parse_ietf(field: &str, policy: Option<&str>) -> Option<Budget> {
    let limits: Vec<(&str, f64)> = policy
        .map(|p| {
            items(p)
                .filter_map(|(name, params)| Some((name, param(params, "q")?)))
                .collect()
        })
        .unwrap_or_default();
    let mut tightest: Option<Budget> = None;
    for (name, params) in items(field) {
        let (Some(remaining), Some(t)) = (param(params, "r"), param(params, "t")) else {
            continue;
        };
        let limit = limits
            .iter()
            .find(|(n, _)| *n == name)
            .map_or(remaining, |(_, q)| *q)
            .max(remaining);
        let budget = Budget {
            remaining,
            limit,
            resets_in: Duration::from_secs_f64(t).min(MAX_RESET),
            refill: None,
        };
        tightest = Some(tightest.map_or(budget, |b| b.tighter(budget)));
    }
    tightest
}

/// Items of a structured-field list: `name;k=v;k=v, name;…` (the name without its quotes).
fn items(value: &str) -> impl Iterator<Item = (&str, &str)> {
    value.split(',').map(|item| {
        let item = item.trim();
        let (name, params) = item.split_once(';').unwrap_or((item, ""));
        (name.trim().trim_matches('"'), params)
    })
}

fn param(params: &str, key: &str) -> Option<f64> {
    params.split(';').find_map(|p| {
        let (k, v) = p.split_once('=')?;
        (k.trim() == key).then(|| number(v)).flatten()
    })
}

/// The learned budget of one key, and the queue of requests waiting for it.
pub struct Pacer {
    /// The headers read (`None`: only budgets handed to [`Pacer::learn`], GraphQL cost data).
    signal: Option<QuotaSignal>,
    state: Mutex<State>,
    /// Waiters in arrival order; only the head waits for the budget.
    turn: tokio::sync::Mutex<()>,
    /// Admissions so far: an answer's sequence number tells how many followed it.
    admitted: AtomicU64,
    /// Requests kept back besides the share of the limit (further replicas, when shared).
    extra_reserve: f64,
    /// Space requests locally (off when the shared limiter spaces them in Redis).
    space: bool,
    remaining_gauge: Option<metrics::Gauge>,
    rate_gauge: Option<metrics::Gauge>,
    /// The configured rate (per second), for the effective-rate gauge.
    configured_rate: f64,
}

#[derive(Debug)]
struct State {
    known: bool,
    tokens: f64,
    limit: f64,
    refill: f64,
    reset_at: Option<Instant>,
    updated: Instant,
    /// The pacing bucket (windowed signals): requests that may go now, and when it was filled.
    pace: f64,
    paced_at: Instant,
    applied: u64,
}

/// What the pacer decided for the request at the head of the queue.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Plan {
    /// Admitted (the budget is taken).
    Go { seq: u64 },
    /// No budget until `until`.
    Blocked { until: Instant },
}

/// The pacer's answer when a request cannot wait long enough.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TooLong {
    pub retry_after: Duration,
    /// The budget is spent until a reset (rather than spaced out).
    pub exhausted: bool,
}

impl Pacer {
    pub fn new(
        signal: Option<QuotaSignal>,
        configured_rate: f64,
        extra_reserve: u32,
        space: bool,
        remaining_gauge: Option<metrics::Gauge>,
        rate_gauge: Option<metrics::Gauge>,
    ) -> Self {
        let now = Instant::now();
        if let Some(g) = &rate_gauge {
            g.set(configured_rate);
        }
        Pacer {
            signal,
            state: Mutex::new(State {
                known: false,
                tokens: 0.0,
                limit: 0.0,
                refill: 0.0,
                reset_at: None,
                updated: now,
                pace: 0.0,
                paced_at: now,
                applied: 0,
            }),
            turn: tokio::sync::Mutex::new(()),
            admitted: AtomicU64::new(0),
            extra_reserve: f64::from(extra_reserve),
            space,
            remaining_gauge,
            rate_gauge,
            configured_rate,
        }
    }

    /// Wait for `cost` of the budget, at most `budget` long. Returns the admission's sequence
    /// number (hand it back to [`Pacer::observe`] with the answer).
    pub async fn admit(&self, cost: f64, budget: Duration) -> Result<u64, TooLong> {
        let start = Instant::now();
        let deadline = start.checked_add(budget);
        let too_long = |retry_after: Duration, exhausted| TooLong {
            retry_after: retry_after.max(Duration::from_millis(1)),
            exhausted,
        };
        let _turn = match deadline {
            Some(d) => tokio::time::timeout_at(d, self.turn.lock())
                .await
                .map_err(|_| too_long(Duration::from_millis(100), false))?,
            None => self.turn.lock().await,
        };
        loop {
            let now = Instant::now();
            let left = deadline.map_or(Duration::MAX, |d| d.saturating_duration_since(now));
            match self.plan(now, cost, left) {
                Ok(Plan::Go { seq }) => return Ok(seq),
                Ok(Plan::Blocked { until }) => tokio::time::sleep_until(until).await,
                Err(e) => return Err(e),
            }
        }
    }

    fn plan(&self, now: Instant, cost: f64, left: Duration) -> Result<Plan, TooLong> {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        s.refresh(now);
        let go = |s: &mut State| {
            s.tokens -= cost;
            Plan::Go {
                seq: self.admitted.fetch_add(1, Ordering::Relaxed) + 1,
            }
        };
        if !s.known {
            return Ok(go(&mut s));
        }
        let available = s.tokens - self.reserve(s.limit);
        if available < cost {
            let until = if s.refill > 0.0 {
                now + Duration::from_secs_f64(((cost - available) / s.refill).min(1e6))
            } else {
                match s.reset_at {
                    Some(reset) => reset + RESET_GRACE,
                    // The window's end is unknown and the limit is below the reserve: the
                    // budget is too small to pace; the upstream's 429s decide.
                    None => return Ok(go(&mut s)),
                }
            };
            let wait = until.saturating_duration_since(now);
            if wait > left {
                return Err(TooLong {
                    retry_after: wait,
                    exhausted: s.refill == 0.0,
                });
            }
            return Ok(Plan::Blocked { until });
        }
        let window = match (self.space, s.refill > 0.0, s.reset_at) {
            (true, false, Some(reset)) => reset.saturating_duration_since(now).as_secs_f64(),
            _ => return Ok(go(&mut s)),
        };
        if window <= 0.0 {
            return Ok(go(&mut s));
        }
        // A pacing bucket: refills at the rate that makes the budget last until the reset, and
        // holds at most half of what is left (bursts shrink as the budget runs low).
        let rate = available / window;
        let burst = (available * 0.5).floor().max(cost);
        let elapsed = now.saturating_duration_since(s.paced_at).as_secs_f64();
        s.pace = (s.pace + elapsed * rate).min(burst);
        s.paced_at = now;
        if s.pace >= cost {
            s.pace -= cost;
            return Ok(go(&mut s));
        }
        let wait = Duration::from_secs_f64(((cost - s.pace) / rate).min(1e6));
        if wait > left {
            return Err(TooLong {
                retry_after: wait,
                exhausted: false,
            });
        }
        Ok(Plan::Blocked { until: now + wait })
    }

    fn reserve(&self, limit: f64) -> f64 {
        (limit * RESERVE_SHARE).ceil().max(1.0) + self.extra_reserve
    }

    /// Learn from one answer's headers (admission `seq`). Returns the instant until which the
    /// budget is spent (the caller pauses the key's limiter until then), if it is.
    pub fn observe(&self, headers: &HeaderMap, seq: u64) -> Option<Instant> {
        let budget = parse(self.signal?, headers, SystemTime::now())?;
        self.learn(budget, seq, 1.0)
    }

    /// Learn a budget read elsewhere (a GraphQL answer's cost data). `unit`: the cost of one
    /// admission that followed this one (for the in-flight correction).
    pub fn learn(&self, budget: Budget, seq: u64, unit: f64) -> Option<Instant> {
        if let Some(g) = &self.remaining_gauge {
            g.set(budget.remaining);
        }
        let now = Instant::now();
        let after = self.admitted.load(Ordering::Relaxed).saturating_sub(seq) as f64;
        let estimate = budget.remaining - after * unit;
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if seq < s.applied {
            return None;
        }
        s.applied = seq;
        s.refresh(now);
        s.limit = budget.limit;
        match budget.refill {
            Some(refill) => {
                s.refill = refill;
                s.reset_at = None;
                s.tokens = estimate;
            }
            None => {
                s.refill = 0.0;
                let reset = now + budget.resets_in;
                let same_window = s.known
                    && s.reset_at.is_some_and(|r| {
                        let (a, b) = if r > reset { (r, reset) } else { (reset, r) };
                        a - b <= RESET_GRACE
                    });
                s.tokens = if same_window {
                    s.tokens.min(estimate)
                } else {
                    estimate
                };
                if !same_window {
                    // A new window: half of it may go at once.
                    s.pace = ((estimate - self.reserve(budget.limit)) * 0.5)
                        .floor()
                        .max(0.0);
                    s.paced_at = now;
                }
                if !same_window || s.reset_at.is_none_or(|r| reset > r) {
                    s.reset_at = Some(reset);
                }
            }
        }
        s.updated = now;
        s.known = true;
        let reserve = self.reserve(s.limit);
        if let Some(g) = &self.rate_gauge {
            g.set(self.effective_rate(&s, now, reserve));
        }
        (s.refill == 0.0 && s.tokens - reserve < 1.0)
            .then(|| s.reset_at.map(|r| r + RESET_GRACE))
            .flatten()
    }

    /// Requests per second currently allowed: the configured rate, lowered by the budget.
    fn effective_rate(&self, s: &State, now: Instant, reserve: f64) -> f64 {
        let available = (s.tokens - reserve).max(0.0);
        let learned = if s.refill > 0.0 {
            if available >= 1.0 {
                f64::INFINITY
            } else {
                s.refill
            }
        } else {
            match s.reset_at {
                Some(r) => {
                    let window = r.saturating_duration_since(now).as_secs_f64();
                    if window > 0.0 {
                        available / window
                    } else {
                        f64::INFINITY
                    }
                }
                None => f64::INFINITY,
            }
        };
        learned.min(self.configured_rate)
    }

    /// The interval the learned budget asks for, for the shared limiter (`None`: no pacing
    /// beyond the configured rate).
    pub fn learned_interval(&self) -> Option<Duration> {
        let now = Instant::now();
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        s.refresh(now);
        if !s.known {
            return None;
        }
        let reserve = self.reserve(s.limit);
        let rate = self.effective_rate(&s, now, reserve);
        (rate.is_finite() && rate > 0.0 && rate < self.configured_rate)
            .then(|| Duration::from_secs_f64((1.0 / rate).min(86_400.0)))
    }
}

impl State {
    /// Bring the estimate up to `now`: a bucket refills; a window past its reset is whole.
    fn refresh(&mut self, now: Instant) {
        if !self.known {
            return;
        }
        if self.refill > 0.0 {
            let elapsed = now.saturating_duration_since(self.updated).as_secs_f64();
            self.tokens = (self.tokens + elapsed * self.refill).min(self.limit);
            self.updated = now;
        } else if let Some(reset) = self.reset_at {
            if now >= reset + RESET_GRACE {
                self.tokens = self.limit;
                self.reset_at = None;
                self.updated = now;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;
    use proptest::prelude::*;
    use std::time::UNIX_EPOCH;

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs)
    }

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn x_ratelimit_epoch_and_delta() {
        // GitHub (REFERENCE.md): x-ratelimit-reset is UTC epoch seconds.
        let h = headers(&[
            ("x-ratelimit-limit", "5000"),
            ("x-ratelimit-remaining", "4999"),
            ("x-ratelimit-reset", "1700003600"),
        ]);
        let b = parse(QuotaSignal::XRateLimit, &h, at(1_700_000_000)).unwrap();
        assert_eq!(
            b,
            Budget {
                remaining: 4999.0,
                limit: 5000.0,
                resets_in: Duration::from_secs(3600),
                refill: None
            }
        );
        // A small number is a delta in seconds.
        let b = parse_x_ratelimit("7", Some("10"), "30", at(1_700_000_000)).unwrap();
        assert_eq!(b.resets_in, Duration::from_secs(30));
        // A reset in the past is now; the limit defaults to the remaining.
        let b = parse_x_ratelimit("3", None, "1600000000", at(1_700_000_000)).unwrap();
        assert_eq!((b.resets_in, b.limit), (Duration::ZERO, 3.0));
        // Malformed: ignored.
        assert_eq!(parse_x_ratelimit("-1", None, "30", at(0)), None);
        assert_eq!(parse_x_ratelimit("x", None, "30", at(0)), None);
        assert_eq!(parse_x_ratelimit("1", None, "soon", at(0)), None);
        assert_eq!(
            parse(QuotaSignal::XRateLimit, &HeaderMap::new(), at(0)),
            None
        );
    }

    #[test]
    fn shopify_call_limit_is_a_leaky_bucket() {
        // REFERENCE.md: `X-Shopify-Shop-Api-Call-Limit: 32/40` (bucket 40, leaks 2/s).
        let b = parse_shopify_call_limit("32/40").unwrap();
        assert_eq!(
            b,
            Budget {
                remaining: 8.0,
                limit: 40.0,
                resets_in: Duration::from_secs(16),
                refill: Some(2.0)
            }
        );
        assert_eq!(parse_shopify_call_limit("80/80").unwrap().refill, Some(4.0));
        assert_eq!(parse_shopify_call_limit("50/40").unwrap().remaining, 0.0);
        for bad in ["", "32", "32/", "/40", "a/b", "1/0", "-1/40"] {
            assert_eq!(parse_shopify_call_limit(bad), None, "{bad}");
        }
    }

    #[test]
    fn hubspot_interval_and_secondly_the_tighter_wins() {
        // REFERENCE.md: X-HubSpot-RateLimit-Max, -Remaining, -Interval-Milliseconds,
        // -Secondly, -Secondly-Remaining.
        let h = headers(&[
            ("x-hubspot-ratelimit-max", "100"),
            ("x-hubspot-ratelimit-remaining", "90"),
            ("x-hubspot-ratelimit-interval-milliseconds", "10000"),
            ("x-hubspot-ratelimit-secondly", "10"),
            ("x-hubspot-ratelimit-secondly-remaining", "5"),
        ]);
        let b = parse(QuotaSignal::Hubspot, &h, at(0)).unwrap();
        assert_eq!(
            (b.remaining, b.limit),
            (5.0, 10.0),
            "5/s is tighter than 90 per 10 s"
        );
        let h = headers(&[
            ("x-hubspot-ratelimit-remaining", "5"),
            ("x-hubspot-ratelimit-interval-milliseconds", "10000"),
            ("x-hubspot-ratelimit-secondly-remaining", "9"),
        ]);
        let b = parse(QuotaSignal::Hubspot, &h, at(0)).unwrap();
        assert_eq!((b.remaining, b.resets_in), (5.0, Duration::from_secs(10)));
        let h = headers(&[("x-hubspot-ratelimit-secondly-remaining", "0")]);
        let b = parse(QuotaSignal::Hubspot, &h, at(0)).unwrap();
        assert_eq!((b.remaining, b.resets_in), (0.0, Duration::from_secs(1)));
        // Remaining without its interval: no window to pace over.
        let h = headers(&[("x-hubspot-ratelimit-remaining", "5")]);
        assert_eq!(parse(QuotaSignal::Hubspot, &h, at(0)), None);
    }

    #[test]
    fn salesforce_api_usage_over_a_day() {
        // REFERENCE.md: `Sforce-Limit-Info: api-usage=25/5000`.
        let b = parse_salesforce("api-usage=25/5000").unwrap();
        assert_eq!(
            b,
            Budget {
                remaining: 4975.0,
                limit: 5000.0,
                resets_in: Duration::from_secs(86_400),
                refill: None
            }
        );
        let b = parse_salesforce("per-app-api-usage=1/10(appName=x), api-usage=6000/5000").unwrap();
        assert_eq!(b.remaining, 0.0);
        for bad in [
            "",
            "api-usage",
            "api-usage=",
            "api-usage=1",
            "usage=1/2",
            "api-usage=1/0",
        ] {
            assert_eq!(parse_salesforce(bad), None, "{bad}");
        }
    }

    #[test]
    fn ietf_fields_with_policy() {
        // REFERENCE.md: `RateLimit-Policy: "burst";q=100;w=60`, `RateLimit: "default";r=50;t=30`.
        let b = parse_ietf(r#""default";r=50;t=30"#, Some(r#""default";q=100;w=60"#)).unwrap();
        assert_eq!(
            b,
            Budget {
                remaining: 50.0,
                limit: 100.0,
                resets_in: Duration::from_secs(30),
                refill: None
            }
        );
        // Two policies: the tighter one (1/s beats 50/30 s).
        let b = parse_ietf(r#""default";r=50;t=30, "burst";r=1;t=1"#, None).unwrap();
        assert_eq!((b.remaining, b.resets_in), (1.0, Duration::from_secs(1)));
        assert_eq!(parse_ietf(r#""default";r=x;t=30"#, None), None);
        assert_eq!(parse_ietf("garbage", Some("more garbage")), None);
        // The older split fields.
        let h = headers(&[("ratelimit-remaining", "4"), ("ratelimit-reset", "2")]);
        let b = parse(QuotaSignal::Ietf, &h, at(1_700_000_000)).unwrap();
        assert_eq!((b.remaining, b.resets_in), (4.0, Duration::from_secs(2)));
    }

    proptest! {
        #[test]
        fn parsers_never_panic(a in "\\PC{0,80}", b in "\\PC{0,80}", c in "\\PC{0,80}", now in any::<u64>()) {
            let now = UNIX_EPOCH.checked_add(Duration::from_secs(now % (1 << 40))).unwrap_or(UNIX_EPOCH);
            for budget in [
                parse_x_ratelimit(&a, Some(&b), &c, now),
                parse_shopify_call_limit(&a),
                parse_salesforce(&a),
                parse_ietf(&a, Some(&b)),
                parse_hubspot(|name| match name {
                    "x-hubspot-ratelimit-remaining" => Some(a.as_str()),
                    "x-hubspot-ratelimit-interval-milliseconds" => Some(b.as_str()),
                    _ => Some(c.as_str()),
                }),
            ].into_iter().flatten() {
                prop_assert!(budget.remaining.is_finite() && budget.remaining >= 0.0);
                prop_assert!(budget.limit >= budget.remaining);
                prop_assert!(budget.resets_in <= MAX_RESET);
            }
        }

        #[test]
        fn numeric_shapes_never_panic(used in any::<u64>(), limit in any::<u64>(), f in any::<f64>()) {
            let _ = parse_shopify_call_limit(&format!("{used}/{limit}"));
            let _ = parse_salesforce(&format!("api-usage={used}/{limit}"));
            let _ = parse_ietf(&format!("\"d\";r={f};t={used}"), Some(&format!("\"d\";q={limit}")));
            let _ = parse_x_ratelimit(&f.to_string(), Some(&limit.to_string()), &used.to_string(), SystemTime::now());
            let _ = parse_x_ratelimit("1", None, &format!("{used}{limit}"), SystemTime::now());
            let _ = parse_x_ratelimit("1", None, &f.to_string(), SystemTime::now());
            let _ = parse_ietf(&format!("\"d\";r=1;t={f}"), None);
            let _ = parse_hubspot(|name| (name == "x-hubspot-ratelimit-interval-milliseconds").then_some("1e300").or(Some("1")));
        }
    }

    fn window(remaining: &str, reset_delta: &str) -> HeaderMap {
        headers(&[
            ("x-ratelimit-limit", "100"),
            ("x-ratelimit-remaining", remaining),
            ("x-ratelimit-reset", reset_delta),
        ])
    }

    #[tokio::test(start_paused = true)]
    async fn paces_the_remaining_budget_over_the_window() {
        let p = Pacer::new(
            Some(QuotaSignal::XRateLimit),
            f64::INFINITY,
            0,
            true,
            None,
            None,
        );
        let seq = p.admit(1.0, Duration::MAX).await.unwrap();
        // 21 left for 10 s, reserve 2: 19 spread over 10 s; half of them may go at once.
        assert_eq!(p.observe(&window("21", "10"), seq), None);
        let start = Instant::now();
        let mut times = Vec::new();
        for _ in 0..19 {
            p.admit(1.0, Duration::MAX).await.unwrap();
            times.push(Instant::now() - start);
        }
        assert_eq!(times[8], Duration::ZERO, "a burst of half: {times:?}");
        assert!(times[18] <= Duration::from_millis(10_010), "{times:?}");
        assert!(
            times[18] >= Duration::from_secs(4),
            "the rest is spaced: {times:?}"
        );
        // The budget is spent: the next one waits for the reset (+ grace).
        let waited = Instant::now();
        p.admit(1.0, Duration::MAX).await.unwrap();
        assert!(Instant::now() >= start + Duration::from_secs(10) + RESET_GRACE);
        assert!(Instant::now() - waited > Duration::ZERO);
        // And one that cannot wait that long is refused with the wait.
        let p2 = Pacer::new(
            Some(QuotaSignal::XRateLimit),
            f64::INFINITY,
            0,
            true,
            None,
            None,
        );
        let seq = p2.admit(1.0, Duration::MAX).await.unwrap();
        let until = p2.observe(&window("0", "5"), seq).expect("spent");
        assert_eq!(until, Instant::now() + Duration::from_secs(5) + RESET_GRACE);
        let e = p2.admit(1.0, Duration::from_secs(1)).await.unwrap_err();
        assert!(
            e.exhausted && e.retry_after >= Duration::from_secs(5),
            "{e:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn stale_and_in_flight_answers_do_not_overstate_the_budget() {
        let p = Pacer::new(
            Some(QuotaSignal::XRateLimit),
            f64::INFINITY,
            0,
            false,
            None,
            None,
        );
        let first = p.admit(1.0, Duration::MAX).await.unwrap();
        let second = p.admit(1.0, Duration::MAX).await.unwrap();
        // The second's answer arrives first: 50 left, nothing admitted after it.
        p.observe(&window("50", "10"), second);
        // The first's (older) answer says more: ignored.
        p.observe(&window("60", "10"), first);
        assert_eq!(p.state.lock().unwrap().tokens, 50.0);
        // Three more go out; an answer to the third of them (2 admitted after it) says 40:
        // the estimate is 40 - 2 = 38... but the local count (47) is higher, so 38 it is.
        let mut seqs = Vec::new();
        for _ in 0..5 {
            seqs.push(p.admit(1.0, Duration::MAX).await.unwrap());
        }
        p.observe(&window("40", "10"), seqs[2]);
        assert_eq!(p.state.lock().unwrap().tokens, 38.0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_leaky_bucket_serves_its_room_then_its_refill() {
        let p = Pacer::new(
            Some(QuotaSignal::Shopify),
            f64::INFINITY,
            0,
            true,
            None,
            None,
        );
        let seq = p.admit(1.0, Duration::MAX).await.unwrap();
        // 36/40: 4 left, reserve 1 → 3 at once, then 2/s.
        p.observe(&headers(&[("x-shopify-shop-api-call-limit", "36/40")]), seq);
        let start = Instant::now();
        for _ in 0..3 {
            p.admit(1.0, Duration::MAX).await.unwrap();
        }
        assert_eq!(Instant::now(), start);
        for _ in 0..4 {
            p.admit(1.0, Duration::MAX).await.unwrap();
        }
        let took = Instant::now() - start;
        assert!(
            took >= Duration::from_millis(1900) && took <= Duration::from_millis(2100),
            "{took:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn unknown_budget_admits_and_gauges_report() {
        let metrics = crate::metrics::Metrics::new();
        let m = crate::metrics::UpstreamMetrics::new(&metrics, "api");
        let p = Pacer::new(
            Some(QuotaSignal::XRateLimit),
            50.0,
            0,
            true,
            Some(m.gauge(crate::metrics::UPSTREAM_QUOTA_REMAINING)),
            Some(m.gauge(crate::metrics::UPSTREAM_PACING_RATE)),
        );
        let seq = p.admit(1.0, Duration::ZERO).await.unwrap();
        p.observe(&window("12", "10"), seq);
        let text = metrics.render();
        assert!(
            text.contains(r#"outpost_upstream_quota_remaining{upstream="api"} 12"#),
            "{text}"
        );
        assert!(
            text.contains(r#"outpost_upstream_pacing_rate{upstream="api"} 1"#),
            "{text}"
        );
        assert!(p.learned_interval().is_some());
    }
}
