//! The shared replay guard of a webhook with `shared: {redis_url | redis_cluster |
//! redis_sentinel}`: the same pending/done claims as the local [`super::replay::ReplayCache`],
//! kept in Redis, so a delivery forwarded by one replica and retried by the provider to another
//! is answered as a replay there instead of being forwarded again.
//!
//! Keys: `outpost:wh:{<webhook>}:<hex of the replay key>`, one per replay key of a delivery
//! (its signature fingerprint and, when the scheme has one, its delivery id). The hash tag is
//! the webhook's name, so all keys of a delivery are on one Redis Cluster shard and one script
//! can look at them together. A claim writes `p:<claim id>` with `PX` = the pending time; a
//! delivery the application accepted is rewritten `done` with `PX` = the webhook's replay
//! window; a failed forward deletes the keys that still hold its own claim id (Lua, so another
//! replica's later claim is never released by mistake).
//!
//! The local cache is always consulted too (first, and at no cost): when Redis is unreachable
//! the receiver goes on with the local guard alone (gauge
//! `outpost_webhook_replay_shared_degraded{webhook}` 1, one `warn` line), and never refuses or
//! loses a delivery because of Redis.

use std::time::Duration;

use redis::Script;

use super::replay::{Claim, Key};
use crate::config::RedisTarget;
use crate::shared_redis::{OwnerKind, Purpose, RedisLink};

/// Prefix of the guard's keys.
pub const KEY_PREFIX: &str = "outpost:wh:";

/// KEYS: the delivery's replay keys. ARGV: claim id, pending ms. Returns 0 fresh (now pending
/// under this claim id), 1 replayed (a key is done), 2 in progress (a key is pending).
const CLAIM_LUA: &str = r#"
local verdict = 0
for _, k in ipairs(KEYS) do
  local v = redis.call('GET', k)
  if v == 'done' then return 1 end
  if v then verdict = 2 end
end
if verdict == 0 then
  for _, k in ipairs(KEYS) do
    redis.call('SET', k, 'p:' .. ARGV[1], 'NX', 'PX', ARGV[2])
  end
end
return verdict
"#;

/// KEYS: replay keys. ARGV: window ms. The application accepted the delivery.
const COMPLETE_LUA: &str = r#"
for _, k in ipairs(KEYS) do redis.call('SET', k, 'done', 'PX', ARGV[1]) end
return 0
"#;

/// KEYS: replay keys. ARGV: claim id. The forward failed: forget this claim's keys.
const RELEASE_LUA: &str = r#"
local n = 0
for _, k in ipairs(KEYS) do
  if redis.call('GET', k) == 'p:' .. ARGV[1] then n = n + redis.call('DEL', k) end
end
return n
"#;

/// The Redis side of one webhook's replay guard.
pub struct SharedReplay {
    link: RedisLink,
    prefix: String,
    claim: Script,
    complete: Script,
    release: Script,
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX / 2).max(1)
}

impl SharedReplay {
    pub fn new(
        webhook: &str,
        target: &RedisTarget,
        degraded_gauge: Option<metrics::Gauge>,
    ) -> Result<Self, String> {
        let (claim, complete, release) = (
            Script::new(CLAIM_LUA),
            Script::new(COMPLETE_LUA),
            Script::new(RELEASE_LUA),
        );
        let purpose = Purpose {
            what: "webhook replay guard",
            owner_kind: OwnerKind::Webhook,
            owner: webhook.to_string(),
            fallback: "guarding against replays with this replica's local cache only",
            restored: "replays are recognized across replicas again",
        };
        let link = RedisLink::new(
            target,
            purpose,
            vec![claim.clone(), complete.clone(), release.clone()],
            degraded_gauge,
        )
        .map_err(|e| format!("shared: {e}"))?;
        Ok(SharedReplay {
            link,
            prefix: format!("{KEY_PREFIX}{{{webhook}}}:"),
            claim,
            complete,
            release,
        })
    }

    fn keys(&self, keys: &[Key]) -> Vec<String> {
        keys.iter()
            .map(|k| format!("{}{}", self.prefix, hex::encode(k)))
            .collect()
    }

    /// Claim the delivery's keys for `pending_for` under `claim_id`; `None`: Redis did not
    /// answer (use the local guard alone).
    pub async fn claim(
        &self,
        keys: &[Key],
        pending_for: Duration,
        claim_id: &str,
    ) -> Option<Claim> {
        let mut invocation = self.claim.prepare_invoke();
        for k in self.keys(keys) {
            invocation.key(k);
        }
        invocation.arg(claim_id).arg(millis(pending_for));
        Some(match self.link.invoke::<i64>(&invocation).await? {
            0 => Claim::Fresh,
            1 => Claim::Replayed,
            _ => Claim::InProgress,
        })
    }

    /// The application accepted the delivery: remember it for `window`.
    pub async fn complete(&self, keys: &[Key], window: Duration) {
        let mut invocation = self.complete.prepare_invoke();
        for k in self.keys(keys) {
            invocation.key(k);
        }
        invocation.arg(millis(window));
        let _ = self.link.invoke::<i64>(&invocation).await;
    }

    /// The forward failed: release this claim, so the provider's retry is forwarded.
    pub async fn release(&self, keys: &[Key], claim_id: &str) {
        let mut invocation = self.release.prepare_invoke();
        for k in self.keys(keys) {
            invocation.key(k);
        }
        invocation.arg(claim_id);
        let _ = self.link.invoke::<i64>(&invocation).await;
    }

    pub fn is_degraded(&self) -> bool {
        self.link.is_degraded()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Secret;

    #[test]
    fn keys_share_the_webhook_hash_tag() {
        let guard = SharedReplay::new(
            "stripe",
            &RedisTarget::Standalone(Secret::new("redis://127.0.0.1:1")),
            None,
        )
        .unwrap();
        let a = super::super::replay::key("stripe", "id", b"evt_1");
        let keys = guard.keys(&[a, a]);
        assert!(keys[0].starts_with("outpost:wh:{stripe}:"), "{}", keys[0]);
        assert_eq!(keys[0].len(), "outpost:wh:{stripe}:".len() + 64);
        assert!(guard.is_degraded(), "no runtime: not connected");
    }
}
