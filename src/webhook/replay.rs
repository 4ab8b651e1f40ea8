//! Replay protection: the deliveries already forwarded, so a copy is answered without
//! forwarding again.
//!
//! A delivery is known by its keys (its provider delivery id, when there is one, and its
//! signature fingerprint; see [`super::Verified`]), each hashed with the webhook's name so
//! memory per entry is fixed. A key is *pending* while its forward is in flight (a concurrent
//! copy is told to come back later) and *done* once the application accepted it; a forward
//! that failed releases its keys, so the provider's retry is forwarded. Entries live for the
//! replay window; at most [`DEFAULT_CAPACITY`] are kept, the oldest evicted first.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::Duration;

use sha2::{Digest, Sha256};
use tokio::time::Instant;

/// Entries kept at most (about 100 bytes each).
pub const DEFAULT_CAPACITY: usize = 100_000;

pub type Key = [u8; 32];

/// Hash one replay key of a webhook.
pub fn key(webhook: &str, kind: &str, value: &[u8]) -> Key {
    let mut h = Sha256::new();
    h.update(webhook.as_bytes());
    h.update([0]);
    h.update(kind.as_bytes());
    h.update([0]);
    h.update(value);
    h.finalize().into()
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Claim {
    /// Not seen: the keys are now pending; call [`ReplayCache::complete`] or
    /// [`ReplayCache::release`].
    Fresh,
    /// Forwarded and accepted before, within the window.
    Replayed,
    /// A copy is being forwarded right now.
    InProgress,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    Pending,
    Done,
}

struct Entry {
    seq: u64,
    state: State,
    expires: Instant,
}

#[derive(Default)]
struct Inner {
    map: HashMap<Key, Entry>,
    /// Insertion order (key, seq); records whose seq no longer matches the map are stale.
    order: VecDeque<(Key, u64)>,
    seq: u64,
}

pub struct ReplayCache {
    inner: Mutex<Inner>,
    capacity: usize,
}

impl Default for ReplayCache {
    fn default() -> Self {
        Self::new(DEFAULT_CAPACITY)
    }
}

impl ReplayCache {
    pub fn new(capacity: usize) -> Self {
        ReplayCache {
            inner: Mutex::new(Inner::default()),
            capacity: capacity.max(1),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Look the keys up; when none is known, mark them all pending for `pending_for`.
    pub fn claim(&self, keys: &[Key], pending_for: Duration) -> Claim {
        let now = Instant::now();
        let mut inner = self.lock();
        let mut verdict = Claim::Fresh;
        for k in keys {
            match inner.map.get(k) {
                Some(e) if e.expires > now && e.state == State::Done => return Claim::Replayed,
                Some(e) if e.expires > now => verdict = Claim::InProgress,
                _ => {}
            }
        }
        if verdict == Claim::Fresh {
            for k in keys {
                inner.seq += 1;
                let seq = inner.seq;
                inner.map.insert(
                    *k,
                    Entry {
                        seq,
                        state: State::Pending,
                        expires: now + pending_for,
                    },
                );
                inner.order.push_back((*k, seq));
            }
            self.evict(&mut inner, now);
        }
        verdict
    }

    /// The application accepted the delivery: remember it for `window`.
    pub fn complete(&self, keys: &[Key], window: Duration) {
        let now = Instant::now();
        let mut inner = self.lock();
        for k in keys {
            if let Some(e) = inner.map.get_mut(k) {
                e.state = State::Done;
                e.expires = now + window;
            }
        }
    }

    /// The forward failed: forget the keys so the provider's retry is forwarded.
    pub fn release(&self, keys: &[Key]) {
        let mut inner = self.lock();
        for k in keys {
            if inner.map.get(k).is_some_and(|e| e.state == State::Pending) {
                inner.map.remove(k);
            }
        }
    }

    pub fn len(&self) -> usize {
        self.lock().map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn evict(&self, inner: &mut Inner, now: Instant) {
        // Drop stale and expired records at the front, then the oldest while over capacity.
        while let Some((k, seq)) = inner.order.front().copied() {
            let live = inner.map.get(&k).filter(|e| e.seq == seq);
            let over = inner.map.len() > self.capacity || inner.order.len() > 2 * self.capacity;
            match live {
                None => {}
                Some(e) if e.expires <= now || over => {
                    inner.map.remove(&k);
                }
                Some(_) => break,
            }
            inner.order.pop_front();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: Duration = Duration::from_secs(60);

    #[tokio::test(start_paused = true)]
    async fn fresh_pending_done_expired() {
        let cache = ReplayCache::new(10);
        let k = [key("w", "id", b"1")];
        assert_eq!(cache.claim(&k, MIN), Claim::Fresh);
        assert_eq!(cache.claim(&k, MIN), Claim::InProgress);
        cache.complete(&k, 5 * MIN);
        assert_eq!(cache.claim(&k, MIN), Claim::Replayed);
        tokio::time::advance(5 * MIN + Duration::from_secs(1)).await;
        assert_eq!(cache.claim(&k, MIN), Claim::Fresh);
    }

    #[tokio::test(start_paused = true)]
    async fn release_forgets_and_any_key_matches() {
        let cache = ReplayCache::new(10);
        let a = key("w", "id", b"1");
        let b = key("w", "sig", b"x");
        assert_eq!(cache.claim(&[a, b], MIN), Claim::Fresh);
        cache.release(&[a, b]);
        assert!(cache.is_empty());
        assert_eq!(cache.claim(&[a, b], MIN), Claim::Fresh);
        cache.complete(&[a, b], MIN);
        // Same signature under a new (unsigned) delivery id is still a replay.
        assert_eq!(
            cache.claim(&[key("w", "id", b"2"), b], MIN),
            Claim::Replayed
        );
        // Other webhooks are separate.
        assert_ne!(key("w", "id", b"1"), key("v", "id", b"1"));
    }

    #[tokio::test(start_paused = true)]
    async fn bounded_evicting_oldest() {
        let cache = ReplayCache::new(100);
        for i in 0..1000u32 {
            let k = [key("w", "id", &i.to_be_bytes())];
            assert_eq!(cache.claim(&k, MIN), Claim::Fresh);
            if i % 2 == 0 {
                cache.release(&k);
            } else {
                cache.complete(&k, MIN);
            }
        }
        assert!(cache.len() <= 100);
        assert!(cache.lock().order.len() <= 200);
        assert_eq!(
            cache.claim(&[key("w", "id", &999u32.to_be_bytes())], MIN),
            Claim::Replayed
        );
        assert_eq!(
            cache.claim(&[key("w", "id", &1u32.to_be_bytes())], MIN),
            Claim::Fresh
        );
    }
}
