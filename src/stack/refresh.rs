//! `oauth2_refresh_token`: access tokens from a refresh token, for user-delegated OAuth
//! (QuickBooks, Xero, Microsoft, HubSpot …), with rotation survived.
//!
//! Providers that rotate the refresh token on every use return a new one with each access
//! token, and the old one is spent: replaying it gets `invalid_grant` (and some providers then
//! revoke the whole token family). So the new token is written to `store.file` atomically
//! (temporary file, fsync, rename, fsync of the directory) *before* the access token is used,
//! and every refresh reads the store first: a restart, or another process sharing the file,
//! never replays a spent token. The store remembers which configured refresh token (the seed)
//! its token descends from: when the operator configures a new one (after re-authorizing), the
//! old family in the store is ignored.
//!
//! Refreshes are single-flight per process ([`TokenSource`]). An `invalid_grant` answer is
//! final: requests get `503 credentials_unavailable` at once, without a refresh loop, and the
//! error is logged at most once a minute, until the config (or the store) changes.
//!
//! With several replicas, `store: {redis_url | redis_cluster | redis_sentinel, key?}` keeps the
//! rotated refresh token and the current access token in Redis ([`super::token_store`]):
//! exactly one replica refreshes at a time (a lock with a lease), the others wait for its
//! result and use the same access token. While that Redis is unreachable nothing is refreshed
//! (a rotated token that could not be stored would be spent for every other replica): cached
//! access tokens are used until they expire, then requests get `credentials_unavailable` until
//! Redis is back.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::header::{HeaderValue, ACCEPT, AUTHORIZATION, CONTENT_TYPE};
use http::{Method, Request, StatusCode};
use sha2::{Digest, Sha256};
use tokio::time::Instant;

use super::oauth::{
    display_url, exchange, form_encode, parse_token_response, Fetched, Fetcher, TokenSource,
};
use super::token_store::{RedisTokenStore, SharedState};
use crate::body::full;
use crate::client::HttpClient;
use crate::config::{ClientAuth, RefreshToken, Secret, TokenStore};
use crate::metrics::UpstreamMetrics;

/// An `invalid_grant` is logged again at most this often.
const DEAD_LOG_INTERVAL: Duration = Duration::from_secs(60);
/// Store files larger than this are not read (a refresh token is a few hundred bytes).
const MAX_STORE_BYTES: u64 = 64 * 1024;
/// The Redis refresh lock is held at most the token request's timeout plus this.
const LOCK_MARGIN: Duration = Duration::from_secs(2);
/// A replica waiting for another one's refresh polls the store this often at first …
const POLL_MIN: Duration = Duration::from_millis(10);
/// … and at most this far apart.
const POLL_MAX: Duration = Duration::from_millis(200);
/// A stored access token with less time left than this is not taken over; it is refreshed.
const MIN_ADOPT_LEFT: Duration = Duration::from_secs(2);

/// The store file: the current refresh token and the seed it descends from.
#[derive(serde::Serialize, serde::Deserialize)]
struct Stored {
    version: u32,
    /// Hex SHA-256 of the configured refresh token this one descends from.
    seed: String,
    refresh_token: String,
}

/// The file the rotated refresh token lives in.
pub struct FileStore {
    path: PathBuf,
    seed: String,
}

impl FileStore {
    pub fn new(path: PathBuf, configured: &Secret) -> Self {
        FileStore {
            path,
            seed: hex::encode(Sha256::digest(configured.expose().as_bytes())),
        }
    }

    /// The stored refresh token, when the store holds one of the configured seed's family.
    pub fn load(&self) -> Result<Option<Secret>, String> {
        let meta = match std::fs::metadata(&self.path) {
            Ok(meta) => meta,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(_) => {
                return Err(format!(
                    "the token store {} cannot be read",
                    self.path.display()
                ))
            }
        };
        if !meta.is_file() || meta.len() > MAX_STORE_BYTES {
            return Err(format!(
                "the token store {} is not a regular file of at most {MAX_STORE_BYTES} bytes",
                self.path.display()
            ));
        }
        let text = std::fs::read(&self.path)
            .map_err(|_| format!("the token store {} cannot be read", self.path.display()))?;
        match serde_json::from_slice::<Stored>(&text) {
            Ok(stored) if stored.seed == self.seed && !stored.refresh_token.is_empty() => {
                Ok(Some(Secret::new(stored.refresh_token)))
            }
            // Another seed: the operator configured a new refresh token since.
            Ok(_) => Ok(None),
            Err(_) => Err(format!(
                "the token store {} is not a token store file",
                self.path.display()
            )),
        }
    }

    /// Write `token` atomically: a temporary file beside the store, fsync, rename, fsync of
    /// the directory. Readable by the owner only.
    pub fn save(&self, token: &Secret) -> Result<(), String> {
        let fail = |what: &str| {
            format!(
                "the token store {} could not be {what}",
                self.path.display()
            )
        };
        let dir = self.path.parent().unwrap_or(Path::new("."));
        let name = self
            .path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "token".into());
        let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
        let text = serde_json::to_vec(&Stored {
            version: 1,
            seed: self.seed.clone(),
            refresh_token: token.expose().to_string(),
        })
        .map_err(|_| fail("encoded"))?;
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create(true).truncate(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let mut file = options.open(&tmp).map_err(|_| fail("written"))?;
        file.write_all(&text).map_err(|_| fail("written"))?;
        file.sync_all().map_err(|_| fail("synced"))?;
        drop(file);
        std::fs::rename(&tmp, &self.path).map_err(|_| {
            let _ = std::fs::remove_file(&tmp);
            fail("replaced")
        })?;
        if let Ok(dir) = std::fs::File::open(dir) {
            let _ = dir.sync_all();
        }
        Ok(())
    }
}

/// Where the rotated refresh token is kept.
enum Store {
    File(FileStore),
    Redis(Box<RedisTokenStore>),
}

/// The token endpoint's answer to one refresh.
enum Grant {
    Issued {
        fetched: Fetched,
        /// The new refresh token, when the endpoint rotated it.
        rotated: Option<Secret>,
    },
    /// `invalid_grant`: the refresh token is spent or revoked.
    Refused,
}

struct Refresher {
    upstream: String,
    config: RefreshToken,
    client: HttpClient,
    timeout: Duration,
    display: String,
    authorization: Option<HeaderValue>,
    store: Store,
    /// The newest refresh token, also when the store could not be written.
    latest: Mutex<Option<Secret>>,
    /// Redis store: a rotated refresh token that could not be written (the stored one is spent).
    unsaved: Mutex<Option<Secret>>,
    /// Redis store: the generation of the access token this replica holds.
    held: Mutex<Option<u64>>,
    /// Set by `invalid_grant`: when it was last logged.
    dead: Mutex<Option<Instant>>,
}

fn locked<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Refresher {
    fn current(&self, store: &FileStore) -> Result<Secret, String> {
        // The store first: another process (or a previous run) may have rotated it.
        match store.load() {
            Ok(Some(stored)) => return Ok(stored),
            Ok(None) => {}
            Err(e) => {
                tracing::warn!(upstream = %self.upstream, error = %e, "refresh token store unreadable; using the last known token")
            }
        }
        let latest = self
            .latest
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        Ok(latest.unwrap_or_else(|| self.config.refresh_token.clone()))
    }

    fn form(&self, refresh_token: &Secret) -> String {
        let mut form = String::from("grant_type=refresh_token&refresh_token=");
        form_encode(refresh_token.expose(), &mut form);
        let mut field = |name: &str, value: &str| {
            form.push('&');
            form_encode(name, &mut form);
            form.push('=');
            form_encode(value, &mut form);
        };
        if !self.config.scopes.is_empty() {
            field("scope", &self.config.scopes.join(" "));
        }
        for (name, value) in &self.config.params {
            field(name, value);
        }
        match self.config.client_auth {
            ClientAuth::Body => {
                field("client_id", self.config.client_id.expose());
                if let Some(secret) = &self.config.client_secret {
                    field("client_secret", secret.expose());
                }
            }
            // RFC 8705 §2.1: the certificate authenticates; `client_id` says who.
            ClientAuth::TlsClientAuth => field("client_id", self.config.client_id.expose()),
            ClientAuth::Basic => {}
        }
        form
    }

    fn dead_error(&self) -> String {
        format!(
            "token endpoint {} refused the refresh token (invalid_grant): re-authorize and configure the new refresh token",
            self.display
        )
    }

    async fn fetch(&self) -> Result<Fetched, String> {
        {
            let mut dead = locked(&self.dead);
            if let Some(logged) = *dead {
                // No refresh loop: a refused token stays refused until the config changes.
                let now = Instant::now();
                if now.saturating_duration_since(logged) >= DEAD_LOG_INTERVAL {
                    tracing::error!(upstream = %self.upstream, token_endpoint = %self.display,
                        "the refresh token is still refused (invalid_grant); configure a new one");
                    *dead = Some(now);
                }
                return Err(self.dead_error());
            }
        }
        match &self.store {
            Store::File(store) => self.fetch_with_file(store).await,
            Store::Redis(store) => self.fetch_shared(store).await,
        }
    }

    async fn fetch_with_file(&self, store: &FileStore) -> Result<Fetched, String> {
        let refresh_token = self.current(store)?;
        let (fetched, rotated) = match self.grant(&refresh_token).await? {
            Grant::Issued { fetched, rotated } => (fetched, rotated),
            Grant::Refused => return Err(self.refused()),
        };
        if let Some(rotated) = rotated {
            *locked(&self.latest) = Some(rotated.clone());
            // Persisted before the access token is used: the old refresh token is spent.
            if let Err(e) = store.save(&rotated) {
                tracing::error!(upstream = %self.upstream, error = %e,
                    "could not persist the rotated refresh token; it is kept in memory, and a restart would need re-authorization");
            } else {
                tracing::info!(upstream = %self.upstream, "refresh token rotated and stored");
            }
        }
        Ok(fetched)
    }

    /// Redis store: use a newer access token another replica stored, or refresh under the
    /// lock, or wait for the replica that holds it.
    async fn fetch_shared(&self, store: &RedisTokenStore) -> Result<Fetched, String> {
        let unreachable = || {
            "the refresh token store (redis) is unreachable; no refresh until it is back"
                .to_string()
        };
        let lease = self.timeout + LOCK_MARGIN;
        let give_up = Instant::now() + lease * 2;
        let lock = uuid::Uuid::new_v4().to_string();
        let mut backoff = POLL_MIN;
        loop {
            let stored = store.read().await.ok_or_else(unreachable)?;
            if let Some(fetched) = self.adopt(&stored) {
                return Ok(fetched);
            }
            if stored.dead {
                return Err(self.refused());
            }
            if store.lock(&lock, lease).await.ok_or_else(unreachable)? {
                return self.refresh_locked(store, &lock).await;
            }
            if Instant::now() >= give_up {
                return Err(format!(
                    "another replica holds the refresh lock of {} and has not stored a new token in time",
                    self.display
                ));
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(POLL_MAX);
        }
    }

    /// The stored access token, when it is not the one this replica already holds (another
    /// replica refreshed) and has time left.
    fn adopt(&self, stored: &SharedState) -> Option<Fetched> {
        let (token, left) = stored.access.as_ref()?;
        let mut held = locked(&self.held);
        if *left < MIN_ADOPT_LEFT || *held == Some(stored.generation) {
            return None;
        }
        *held = Some(stored.generation);
        Some(Fetched {
            access_token: token.clone(),
            expires_in: *left,
            refresh_margin: None,
            instance_url: stored.instance_url.clone(),
        })
    }

    /// Holding the lock: refresh with the newest refresh token, store the result, unlock.
    async fn refresh_locked(&self, store: &RedisTokenStore, lock: &str) -> Result<Fetched, String> {
        // Another replica may have stored a new token between the read and the lock.
        let Some(stored) = store.read().await else {
            // The lease ends the lock.
            return Err(
                "the refresh token store (redis) is unreachable; no refresh until it is back"
                    .into(),
            );
        };
        if let Some(fetched) = self.adopt(&stored) {
            store.unlock(lock).await;
            return Ok(fetched);
        }
        if stored.dead {
            store.unlock(lock).await;
            return Err(self.refused());
        }
        let unsaved = locked(&self.unsaved).clone();
        let refresh_token = unsaved
            .or(stored.refresh_token)
            .unwrap_or_else(|| self.config.refresh_token.clone());
        let (fetched, rotated) = match self.grant(&refresh_token).await {
            Ok(Grant::Issued { fetched, rotated }) => (fetched, rotated),
            Ok(Grant::Refused) => {
                store.mark_dead(&refresh_token, lock).await;
                return Err(self.refused());
            }
            Err(e) => {
                store.unlock(lock).await;
                return Err(e);
            }
        };
        let was_rotated = rotated.is_some();
        let next = rotated.unwrap_or(refresh_token);
        // Stored before the access token is used: the old refresh token is spent.
        match store
            .save(
                &next,
                &fetched.access_token,
                fetched.expires_in,
                lock,
                fetched.instance_url.as_deref(),
            )
            .await
        {
            Some(generation) => {
                *locked(&self.held) = Some(generation);
                *locked(&self.unsaved) = None;
                if was_rotated {
                    tracing::info!(upstream = %self.upstream, "refresh token rotated and stored in redis");
                }
            }
            None => {
                *locked(&self.held) = None;
                if was_rotated {
                    *locked(&self.unsaved) = Some(next);
                    tracing::error!(upstream = %self.upstream,
                        "could not store the rotated refresh token in redis; it is kept in memory until redis is back");
                }
            }
        }
        Ok(fetched)
    }

    /// `invalid_grant`: log (at most once per interval) and stop refreshing.
    fn refused(&self) -> String {
        let mut dead = locked(&self.dead);
        let now = Instant::now();
        if dead.is_none_or(|at| now.saturating_duration_since(at) >= DEAD_LOG_INTERVAL) {
            tracing::error!(upstream = %self.upstream, token_endpoint = %self.display,
                "the refresh token was refused (invalid_grant); requests get credentials_unavailable until a new refresh token is configured");
        }
        *dead = Some(now);
        self.dead_error()
    }

    /// One refresh-token grant at the token endpoint.
    async fn grant(&self, refresh_token: &Secret) -> Result<Grant, String> {
        let mut request = Request::new(full(Bytes::from(self.form(refresh_token))));
        *request.method_mut() = Method::POST;
        *request.uri_mut() = self.config.token_url.clone();
        let headers = request.headers_mut();
        headers.insert(
            CONTENT_TYPE,
            HeaderValue::from_static("application/x-www-form-urlencoded"),
        );
        headers.insert(ACCEPT, HeaderValue::from_static("application/json"));
        if let Some(authorization) = &self.authorization {
            headers.insert(AUTHORIZATION, authorization.clone());
        }
        let (status, body) = exchange(&self.client, request, self.timeout, &self.display).await?;
        if status == StatusCode::BAD_REQUEST || status == StatusCode::UNAUTHORIZED {
            let code = serde_json::from_slice::<serde_json::Value>(&body)
                .ok()
                .and_then(|j| j.get("error").and_then(|e| e.as_str()).map(str::to_string));
            if code.as_deref() == Some("invalid_grant") {
                return Ok(Grant::Refused);
            }
        }
        let fetched = parse_token_response(status, &body)
            .map_err(|what| format!("token endpoint {} {what}", self.display))?;
        let rotated = serde_json::from_slice::<serde_json::Value>(&body)
            .ok()
            .and_then(|j| {
                j.get("refresh_token")
                    .and_then(|t| t.as_str())
                    .map(str::to_string)
            })
            .filter(|t| !t.is_empty() && t != refresh_token.expose())
            .map(Secret::new);
        Ok(Grant::Issued { fetched, rotated })
    }
}

/// The token source of an `oauth2_refresh_token` upstream.
pub fn source(
    upstream: &str,
    config: &RefreshToken,
    client: HttpClient,
    timeout: Duration,
    metrics: &UpstreamMetrics,
) -> Result<Arc<TokenSource>, String> {
    let authorization = match (&config.client_auth, &config.client_secret) {
        (ClientAuth::Basic, Some(secret)) => Some(super::oauth::basic_authorization(
            config.client_id.expose(),
            secret.expose(),
        )),
        _ => None,
    };
    let store = match &config.store {
        TokenStore::File(path) => Store::File(FileStore::new(path.clone(), &config.refresh_token)),
        TokenStore::Redis { redis, key } => Store::Redis(Box::new(RedisTokenStore::new(
            upstream,
            redis,
            key.as_deref(),
            &config.refresh_token,
            metrics,
        )?)),
    };
    let refresher = Arc::new(Refresher {
        upstream: upstream.to_string(),
        store,
        display: display_url(&config.token_url),
        config: config.clone(),
        client,
        timeout,
        authorization,
        latest: Mutex::new(None),
        unsaved: Mutex::new(None),
        held: Mutex::new(None),
        dead: Mutex::new(None),
    });
    let fetcher: Fetcher = Arc::new(move || {
        let refresher = refresher.clone();
        Box::pin(async move { refresher.fetch().await })
    });
    Ok(TokenSource::with_fetcher(upstream, fetcher, metrics))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("outpost-refresh-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn store_round_trips_and_ignores_another_seed() {
        let d = dir("seed");
        let path = d.join("token.json");
        let store = FileStore::new(path.clone(), &Secret::new("seed-1"));
        assert!(store.load().unwrap().is_none(), "no file yet");
        store.save(&Secret::new("rt-2")).unwrap();
        assert_eq!(store.load().unwrap().unwrap().expose(), "rt-2");
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(!text.contains("seed-1"), "the seed itself is not stored");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o077, 0, "owner only");
        }
        let other = FileStore::new(path.clone(), &Secret::new("seed-new"));
        assert!(
            other.load().unwrap().is_none(),
            "a new seed replaces the old family"
        );
        let leftovers: Vec<_> = std::fs::read_dir(&d).unwrap().collect();
        assert_eq!(leftovers.len(), 1, "no temporary file left behind");
    }

    #[test]
    fn a_garbage_store_is_an_error_not_a_panic() {
        let d = dir("garbage");
        let path = d.join("token.json");
        std::fs::write(&path, b"\xff\x00 not json").unwrap();
        let store = FileStore::new(path.clone(), &Secret::new("s"));
        let err = store.load().unwrap_err();
        assert!(err.contains("not a token store file"), "{err}");
        let dir_store = FileStore::new(d.clone(), &Secret::new("s"));
        assert!(dir_store.load().is_err(), "a directory is not a store");
    }
}
