//! Circuit breaker per upstream: `consecutive_failures` failed calls open it for `open_for`;
//! then one probe is let through (half-open): success closes it, failure opens it again.
//! While open, requests get `503 circuit_open` with `Retry-After` and never reach the upstream.
//!
//! Sits outside retry: one logical request (all its attempts) is one success or failure. A
//! failure is a 5xx or a transport error; 4xx answers prove the upstream is up. Only time the
//! upstream spent is judged: a request refused locally, cancelled by the application, or
//! timed out while Outpost waited for the application's body or its own limiter says nothing
//! about the upstream's health ([`Verdict::NotJudged`]).
//!
//! A permit is a guard ([`Held`]): a request dropped before it reports (the application went
//! away mid-probe) returns its permit, so a half-open breaker never waits for a probe that
//! will not come back.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use crate::config::CircuitBreaker;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Closed { failures: u32 },
    Open { until: Instant },
    HalfOpen { probing: bool },
}

#[derive(Debug)]
pub struct Breaker {
    config: CircuitBreaker,
    state: Mutex<State>,
}

/// Permission to call the upstream; report the outcome with [`Breaker::record`].
#[derive(Debug, PartialEq, Eq)]
pub enum Permit {
    Call,
    Probe,
}

/// What changed, for the `outpost_circuit_open` gauge and the log.
#[derive(Debug, PartialEq, Eq)]
pub enum Transition {
    None,
    Opened,
    Closed,
}

/// How a finished request counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Success,
    Failure,
    /// The upstream was not (or not alone) to blame: the permit is returned unjudged.
    NotJudged,
}

/// A permit that is returned unjudged when dropped before [`Held::record`].
#[derive(Debug)]
pub struct Held {
    breaker: Arc<Breaker>,
    permit: Option<Permit>,
}

impl Held {
    pub fn record(mut self, verdict: Verdict) -> Transition {
        let Some(permit) = self.permit.take() else {
            return Transition::None;
        };
        match verdict {
            Verdict::Success => self.breaker.record(permit, true),
            Verdict::Failure => self.breaker.record(permit, false),
            Verdict::NotJudged => {
                self.breaker.abandon(permit);
                Transition::None
            }
        }
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        if let Some(permit) = self.permit.take() {
            self.breaker.abandon(permit);
        }
    }
}

impl Breaker {
    /// [`Breaker::allow`] as a guard.
    pub fn hold(self: &Arc<Self>) -> Result<Held, Duration> {
        self.allow().map(|permit| Held {
            breaker: self.clone(),
            permit: Some(permit),
        })
    }

    pub fn new(config: CircuitBreaker) -> Self {
        Breaker {
            config,
            state: Mutex::new(State::Closed { failures: 0 }),
        }
    }

    /// True while open or half-open (what the `outpost_circuit_open` gauge shows).
    pub fn is_open(&self) -> bool {
        !matches!(
            *self.state.lock().unwrap_or_else(|e| e.into_inner()),
            State::Closed { .. }
        )
    }

    /// May a request go? `Err(retry_after)` while open (or while the probe is out).
    pub fn allow(&self) -> Result<Permit, Duration> {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        match *state {
            State::Closed { .. } => Ok(Permit::Call),
            State::Open { until } if now < until => Err(until - now),
            State::Open { .. } | State::HalfOpen { probing: false } => {
                *state = State::HalfOpen { probing: true };
                Ok(Permit::Probe)
            }
            // Another request is probing: come back after about a second.
            State::HalfOpen { probing: true } => {
                Err(Duration::from_secs(1).min(self.config.open_for))
            }
        }
    }

    pub fn record(&self, permit: Permit, success: bool) -> Transition {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        match (*state, permit, success) {
            (State::Closed { .. }, Permit::Call, true) => {
                *state = State::Closed { failures: 0 };
                Transition::None
            }
            (State::Closed { failures }, Permit::Call, false) => {
                let failures = failures + 1;
                if failures >= self.config.consecutive_failures {
                    *state = State::Open {
                        until: Instant::now() + self.config.open_for,
                    };
                    Transition::Opened
                } else {
                    *state = State::Closed { failures };
                    Transition::None
                }
            }
            (State::HalfOpen { .. }, Permit::Probe, true) => {
                *state = State::Closed { failures: 0 };
                Transition::Closed
            }
            (State::HalfOpen { .. }, Permit::Probe, false) => {
                *state = State::Open {
                    until: Instant::now() + self.config.open_for,
                };
                Transition::Opened
            }
            // Outcomes of calls admitted before the state changed do not move it.
            _ => Transition::None,
        }
    }

    /// A probe that never reported (the request was cancelled) frees the half-open slot.
    pub fn abandon(&self, permit: Permit) {
        if permit == Permit::Probe {
            let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
            if *state == (State::HalfOpen { probing: true }) {
                *state = State::HalfOpen { probing: false };
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn breaker() -> Breaker {
        Breaker::new(CircuitBreaker {
            consecutive_failures: 3,
            open_for: Duration::from_secs(30),
        })
    }

    #[tokio::test(start_paused = true)]
    async fn opens_after_consecutive_failures_then_probes() {
        let b = breaker();
        for _ in 0..2 {
            let p = b.allow().unwrap();
            assert_eq!(b.record(p, false), Transition::None);
        }
        // A success resets the count.
        let p = b.allow().unwrap();
        b.record(p, true);
        for i in 0..3 {
            let p = b.allow().unwrap();
            let t = b.record(p, false);
            assert_eq!(
                t,
                if i == 2 {
                    Transition::Opened
                } else {
                    Transition::None
                }
            );
        }
        let wait = b.allow().unwrap_err();
        assert_eq!(wait, Duration::from_secs(30));
        tokio::time::advance(Duration::from_secs(10)).await;
        assert_eq!(b.allow().unwrap_err(), Duration::from_secs(20));
        tokio::time::advance(Duration::from_secs(20)).await;
        // Half-open: one probe, the others wait.
        let probe = b.allow().unwrap();
        assert_eq!(probe, Permit::Probe);
        assert!(b.allow().is_err());
        assert_eq!(b.record(probe, false), Transition::Opened);
        assert!(b.allow().is_err());
        tokio::time::advance(Duration::from_secs(30)).await;
        let probe = b.allow().unwrap();
        assert_eq!(b.record(probe, true), Transition::Closed);
        assert_eq!(b.allow().unwrap(), Permit::Call);
    }

    #[tokio::test(start_paused = true)]
    async fn abandoned_probe_frees_the_slot() {
        let b = Breaker::new(CircuitBreaker {
            consecutive_failures: 1,
            open_for: Duration::from_secs(1),
        });
        let p = b.allow().unwrap();
        b.record(p, false);
        tokio::time::advance(Duration::from_secs(1)).await;
        let probe = b.allow().unwrap();
        b.abandon(probe);
        assert_eq!(b.allow().unwrap(), Permit::Probe);
    }

    #[tokio::test(start_paused = true)]
    async fn a_dropped_probe_is_returned_and_a_healthy_probe_closes() {
        let b = Arc::new(Breaker::new(CircuitBreaker {
            consecutive_failures: 1,
            open_for: Duration::from_secs(1),
        }));
        assert_eq!(
            b.hold().unwrap().record(Verdict::Failure),
            Transition::Opened
        );
        tokio::time::advance(Duration::from_secs(1)).await;
        let probe = b.hold().unwrap();
        assert!(b.hold().is_err(), "one probe at a time");
        drop(probe); // the application went away mid-probe
        let probe = b.hold().expect("the slot came back");
        assert_eq!(probe.record(Verdict::Success), Transition::Closed);
        assert!(!b.is_open());
    }

    #[tokio::test(start_paused = true)]
    async fn unjudged_outcomes_do_not_move_the_breaker() {
        let b = Arc::new(Breaker::new(CircuitBreaker {
            consecutive_failures: 2,
            open_for: Duration::from_secs(1),
        }));
        b.hold().unwrap().record(Verdict::Failure);
        for _ in 0..5 {
            b.hold().unwrap().record(Verdict::NotJudged);
        }
        assert!(!b.is_open(), "local refusals and timeouts are not failures");
        b.hold().unwrap().record(Verdict::Failure);
        assert!(b.is_open());
    }
}
