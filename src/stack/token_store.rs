//! The Redis store of `oauth2_refresh_token` (`store: {redis_url | redis_cluster |
//! redis_sentinel, key?}`): the rotated refresh token, and the current access token with its
//! expiry, shared by every replica, which take turns refreshing.
//!
//! Keys (`K` = `store.key`, default the upstream's name; the braces are a Redis Cluster hash
//! tag, so both keys are on one shard):
//! * `outpost:rt:{K}`: a hash with `seed` (hex SHA-256 of the configured refresh token this
//!   family descends from, as in the file store), `refresh_token`, `access_token`,
//!   `expires_at` (ms on the Redis clock), `generation` (+1 per refresh) and `dead` (hex
//!   SHA-256 of a refresh token the endpoint refused with `invalid_grant`);
//! * `outpost:rt:{K}:lock`: the refresh lock, `SET NX PX` with a random token and a lease;
//!   released by a Lua script only by its holder.
//!
//! Exactly one refresh at a time across replicas: a replica whose cached token needs renewing
//! first reads the hash; a token of a newer generation than the one it holds (another replica
//! refreshed) is used as it is. Otherwise it takes the lock, reads again (someone may have
//! finished in between), refreshes with the stored refresh token (the configured seed when the
//! store holds none of its family), and writes the new refresh and access tokens before it
//! releases the lock. The others poll the hash with bounded backoff (10 ms doubling to 200 ms)
//! until a newer generation appears, or the lock is free again (its holder failed or died: the
//! lease expires), then try again themselves.
//!
//! Clocks: expiries are written as a lifetime and stored on the Redis clock, and read back as
//! the time left, so replicas' clocks never matter.

use std::time::Duration;

use redis::Script;
use sha2::{Digest, Sha256};

use crate::config::{RedisTarget, Secret};
use crate::metrics::{UpstreamMetrics, TOKEN_STORE_DEGRADED};
use crate::shared_redis::{OwnerKind, Purpose, RedisLink};

/// Prefix of the store's keys.
pub const KEY_PREFIX: &str = "outpost:rt:";

/// KEYS: state. Returns `{seed, refresh_token, access_token, ms left (-1: none), generation,
/// dead, instance_url}`, empty strings for missing fields; fields that are not numbers (someone else wrote
/// the hash) read as missing, so a damaged store is refreshed over rather than stuck.
const READ_LUA: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local v = redis.call('HMGET', KEYS[1], 'seed', 'refresh_token', 'access_token', 'expires_at', 'generation', 'dead', 'instance_url')
local left = -1
local expires = tonumber(v[4])
if v[3] and expires then left = math.floor(expires - now) end
local generation = tonumber(v[5]) or 0
if generation < 0 or generation ~= math.floor(generation) then generation = 0 end
return {v[1] or '', v[2] or '', v[3] or '', left, generation, v[6] or '', v[7] or ''}
"#;

/// KEYS: state, lock. ARGV: seed, refresh token, access token, lifetime ms, lock token,
/// instance URL (empty: none). Writes the new tokens (a new generation), forgets `dead`,
/// releases the lock if still held.
/// Returns the generation.
const SAVE_LUA: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('HSET', KEYS[1], 'seed', ARGV[1], 'refresh_token', ARGV[2], 'access_token', ARGV[3],
  'expires_at', string.format('%.0f', now + tonumber(ARGV[4])))
redis.call('HDEL', KEYS[1], 'dead')
if ARGV[6] and ARGV[6] ~= '' then
  redis.call('HSET', KEYS[1], 'instance_url', ARGV[6])
else
  redis.call('HDEL', KEYS[1], 'instance_url')
end
local g0 = tonumber(redis.call('HGET', KEYS[1], 'generation'))
if not g0 or g0 < 0 or g0 ~= math.floor(g0) or g0 > 2^52 then
  redis.call('HSET', KEYS[1], 'generation', '0')
end
local g = redis.call('HINCRBY', KEYS[1], 'generation', 1)
if redis.call('GET', KEYS[2]) == ARGV[5] then redis.call('DEL', KEYS[2]) end
return g
"#;

/// KEYS: state, lock. ARGV: seed, hex SHA-256 of the refused refresh token, lock token.
const DEAD_LUA: &str = r#"
if redis.call('HGET', KEYS[1], 'seed') ~= ARGV[1] then redis.call('DEL', KEYS[1]) end
redis.call('HSET', KEYS[1], 'seed', ARGV[1], 'dead', ARGV[2])
if redis.call('GET', KEYS[2]) == ARGV[3] then redis.call('DEL', KEYS[2]) end
return 0
"#;

/// KEYS: lock. ARGV: lock token. Deletes the lock only for its holder.
const RELEASE_LUA: &str = r#"
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"#;

/// What the store holds for this seed's family.
#[derive(Default)]
pub struct SharedState {
    pub refresh_token: Option<Secret>,
    /// The access token and the time it has left, when one is stored and not yet expired.
    pub access: Option<(Secret, Duration)>,
    /// +1 per refresh (0: no refresh stored yet).
    pub generation: u64,
    /// The endpoint refused the stored refresh token with `invalid_grant`.
    pub dead: bool,
    /// The token answer's `instance_url`, stored with its access token (`base_url: from_token`).
    pub instance_url: Option<Box<str>>,
}

impl std::fmt::Debug for SharedState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedState")
            .field("generation", &self.generation)
            .field("dead", &self.dead)
            .finish_non_exhaustive()
    }
}

/// The store of one upstream.
pub struct RedisTokenStore {
    link: RedisLink,
    seed: String,
    state_key: String,
    lock_key: String,
    read: Script,
    save: Script,
    dead: Script,
    release: Script,
}

/// Hex SHA-256, the form in which tokens are compared in the store without being kept twice.
pub fn fingerprint(token: &Secret) -> String {
    hex::encode(Sha256::digest(token.expose().as_bytes()))
}

impl RedisTokenStore {
    pub fn new(
        upstream: &str,
        target: &RedisTarget,
        key: Option<&str>,
        configured: &Secret,
        metrics: &UpstreamMetrics,
    ) -> Result<Self, String> {
        let (read, save, dead, release) = (
            Script::new(READ_LUA),
            Script::new(SAVE_LUA),
            Script::new(DEAD_LUA),
            Script::new(RELEASE_LUA),
        );
        let purpose = Purpose {
            what: "refresh token store",
            owner_kind: OwnerKind::Upstream,
            owner: upstream.to_string(),
            fallback: "no refresh (cached access tokens are used until they expire)",
            restored: "refreshes resume",
        };
        let link = RedisLink::new(
            target,
            purpose,
            vec![read.clone(), save.clone(), dead.clone(), release.clone()],
            Some(metrics.gauge(TOKEN_STORE_DEGRADED)),
        )
        .map_err(|e| format!("upstream `{upstream}`: auth.store: {e}"))?;
        let state_key = format!("{KEY_PREFIX}{{{}}}", key.unwrap_or(upstream));
        Ok(RedisTokenStore {
            link,
            seed: fingerprint(configured),
            lock_key: format!("{state_key}:lock"),
            state_key,
            read,
            save,
            dead,
            release,
        })
    }

    /// What the store holds for the configured seed (a store of another seed reads as empty);
    /// `None`: Redis did not answer.
    pub async fn read(&self) -> Option<SharedState> {
        let mut invocation = self.read.prepare_invoke();
        invocation.key(&self.state_key);
        let (seed, refresh, access, left_ms, generation, dead, instance_url) = self
            .link
            .invoke::<(String, String, String, i64, i64, String, String)>(&invocation)
            .await?;
        if seed != self.seed {
            return Some(SharedState::default());
        }
        let refresh_token = (!refresh.is_empty()).then(|| Secret::new(refresh));
        // The token in use: the stored one, else the seed itself.
        let current = refresh_token
            .as_ref()
            .map_or_else(|| self.seed.clone(), fingerprint);
        let dead = !dead.is_empty() && current == dead;
        let access = (!access.is_empty() && left_ms > 0)
            .then(|| (Secret::new(access), Duration::from_millis(left_ms as u64)));
        Some(SharedState {
            refresh_token,
            access,
            generation: u64::try_from(generation).unwrap_or(0),
            dead,
            instance_url: (!instance_url.is_empty()
                && instance_url.len() <= super::oauth::MAX_INSTANCE_URL)
                .then(|| instance_url.into()),
        })
    }

    /// Take the refresh lock for `lease`: `Some(true)` taken, `Some(false)` held by another
    /// replica, `None` Redis did not answer.
    pub async fn lock(&self, token: &str, lease: Duration) -> Option<bool> {
        let mut cmd = redis::cmd("SET");
        cmd.arg(&self.lock_key)
            .arg(token)
            .arg("NX")
            .arg("PX")
            .arg(u64::try_from(lease.as_millis()).unwrap_or(u64::MAX).max(1));
        let answer: Option<String> = self.link.query(&cmd).await?;
        Some(answer.is_some())
    }

    /// Release the lock if `token` still holds it.
    pub async fn unlock(&self, token: &str) {
        let mut invocation = self.release.prepare_invoke();
        invocation.key(&self.lock_key).arg(token);
        let _ = self.link.invoke::<i64>(&invocation).await;
    }

    /// Store a refresh's result and release the lock; `None` when Redis did not answer.
    pub async fn save(
        &self,
        refresh_token: &Secret,
        access_token: &Secret,
        lifetime: Duration,
        lock: &str,
        instance_url: Option<&str>,
    ) -> Option<u64> {
        let mut invocation = self.save.prepare_invoke();
        invocation
            .key(&self.state_key)
            .key(&self.lock_key)
            .arg(&self.seed)
            .arg(refresh_token.expose())
            .arg(access_token.expose())
            .arg(u64::try_from(lifetime.as_millis()).unwrap_or(u64::MAX / 2))
            .arg(lock)
            .arg(instance_url.unwrap_or_default());
        self.link.invoke::<u64>(&invocation).await
    }

    /// The endpoint refused `refresh_token` (`invalid_grant`): every replica stops trying it.
    pub async fn mark_dead(&self, refresh_token: &Secret, lock: &str) {
        let mut invocation = self.dead.prepare_invoke();
        invocation
            .key(&self.state_key)
            .key(&self.lock_key)
            .arg(&self.seed)
            .arg(fingerprint(refresh_token))
            .arg(lock);
        let _ = self.link.invoke::<i64>(&invocation).await;
    }

    pub fn is_degraded(&self) -> bool {
        self.link.is_degraded()
    }
}
