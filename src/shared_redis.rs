//! The Redis connection behind every piece of state Outpost shares between replicas: the shared
//! rate limit (`stack/shared.rs`), the webhook replay guard (`webhook/replay_redis.rs`) and the
//! `oauth2_refresh_token` Redis store (`stack/token_store.rs`).
//!
//! One [`RedisLink`] per user (an upstream's limiter, a webhook, a token store) holds one
//! connection to one of three topologies ([`RedisTarget`]):
//! * `redis_url`: one server, one multiplexed connection;
//! * `redis_cluster: [url, …]`: a Redis Cluster from its seed nodes (the redis crate's
//!   `cluster-async` client: it learns the slot map, follows `MOVED`/`ASK`, and routes each
//!   command by its key's slot). Every key Outpost writes has a `{…}` hash tag, so the keys one
//!   script touches are always on one shard;
//! * `redis_sentinel: {master, nodes, password?}`: the sentinels are asked which server is the
//!   master (`SENTINEL get-master-addr-by-name`), and the answer is checked with `ROLE` before
//!   use (the redis crate's `SentinelClient`). After a failover the old master's connection
//!   fails (closed, or `READONLY` once it is demoted to a replica): that counts as lost like any
//!   other error, and the reconnect asks the sentinels again, so the link follows the new master
//!   as soon as the sentinels have promoted one. Writes acknowledged by the old master but not
//!   yet replicated are lost in a failover (Redis replication is asynchronous): for the limiter
//!   a few slots, for the replay guard a few remembered deliveries, for the token store (rarely)
//!   a just-rotated refresh token.
//!
//! # Degraded mode (the same for all three topologies)
//! Each command has [`COMMAND_TIMEOUT`]. A connection error, a timeout or a server error drops
//! the connection and marks the link degraded: callers get `None` at once and use their local
//! fallback, the link's gauge is 1, and one `warn` line is logged. A background task reconnects
//! with jittered exponential backoff; once a new connection has loaded the link's scripts, the
//! link is back (one `info` line, gauge 0). Callers never wait for a reconnect. Until the first
//! connection after start (or reload) is made the gauge reads 1, and callers wait for that first
//! attempt at most [`COMMAND_TIMEOUT`], so a restart does not open a window of local state.
//!
//! URLs may hold passwords: they are never logged, and errors of the redis crate (which can
//! name an address, never a password) are logged only at `warn` on the transition.

use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use redis::aio::{ConnectionLike, MultiplexedConnection};
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::sentinel::{SentinelClient, SentinelNodeConnectionInfo, SentinelServerType};
use redis::{
    AsyncConnectionConfig, Cmd, FromRedisValue, Pipeline, RedisConnectionInfo, RedisFuture, Script,
    ScriptInvocation, Value,
};

use crate::config::RedisTarget;

/// Longest a caller waits for Redis before it falls back to its local state.
pub const COMMAND_TIMEOUT: Duration = Duration::from_millis(100);
/// Connecting happens in the background only, so it may take longer than a command.
const CONNECT_TIMEOUT: Duration = Duration::from_millis(500);
const RECONNECT_MIN: Duration = Duration::from_millis(50);
const RECONNECT_MAX: Duration = Duration::from_secs(1);

/// A connection of any topology; cheap to clone (both kinds are multiplexed handles).
#[derive(Clone)]
pub enum Conn {
    Single(MultiplexedConnection),
    Cluster(ClusterConnection),
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Single(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Single(c) => c.req_packed_commands(pipeline, offset, count),
            Conn::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Single(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
        }
    }
}

/// How to (re)connect.
enum Target {
    Single(redis::Client),
    Cluster(ClusterClient),
    /// `SentinelClient` asks the sentinels with `&mut self`.
    Sentinel(tokio::sync::Mutex<SentinelClient>),
}

impl Target {
    fn build(target: &RedisTarget) -> redis::RedisResult<Target> {
        Ok(match target {
            RedisTarget::Standalone(url) => Target::Single(redis::Client::open(url.expose())?),
            RedisTarget::Cluster(urls) => Target::Cluster(
                ClusterClient::builder(urls.iter().map(|u| u.expose().to_string()))
                    .connection_timeout(CONNECT_TIMEOUT)
                    .response_timeout(CONNECT_TIMEOUT)
                    // A command gets COMMAND_TIMEOUT in all; the client's own retries (for
                    // MOVED, ASK and TRYAGAIN) must fit in it.
                    .retries(2)
                    .min_retry_wait(5)
                    .max_retry_wait(20)
                    .build()?,
            ),
            RedisTarget::Sentinel(s) => {
                let mut redis = RedisConnectionInfo::default();
                if let Some(password) = &s.password {
                    redis = redis.set_password(password.expose());
                }
                let node = SentinelNodeConnectionInfo::default().set_redis_connection_info(redis);
                let client = SentinelClient::build(
                    s.nodes.iter().map(|u| u.expose().to_string()).collect(),
                    s.master.clone(),
                    Some(node),
                    SentinelServerType::Master,
                )?;
                Target::Sentinel(tokio::sync::Mutex::new(client))
            }
        })
    }

    async fn connect(&self) -> redis::RedisResult<Conn> {
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(CONNECT_TIMEOUT))
            .set_response_timeout(Some(CONNECT_TIMEOUT));
        Ok(match self {
            Target::Single(client) => Conn::Single(
                client
                    .get_multiplexed_async_connection_with_config(&config)
                    .await?,
            ),
            Target::Cluster(client) => Conn::Cluster(client.get_async_connection().await?),
            Target::Sentinel(client) => Conn::Single(
                client
                    .lock()
                    .await
                    .get_async_connection_with_config(&config)
                    .await?,
            ),
        })
    }
}

/// Who uses a link, for its log lines.
#[derive(Clone, Debug)]
pub struct Purpose {
    /// What the state is: "shared rate limit", "webhook replay guard", …
    pub what: &'static str,
    /// `upstream` or `webhook`: the log field naming the owner.
    pub owner_kind: OwnerKind,
    pub owner: String,
    /// What happens while Redis is away, for the `warn` line.
    pub fallback: &'static str,
    /// What comes back with Redis, for the `info` line.
    pub restored: &'static str,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OwnerKind {
    Upstream,
    Webhook,
}

const CONNECTING: u8 = 0;
const UP: u8 = 1;
const DOWN: u8 = 2;

/// One connection to one Redis topology, with its degraded state and background reconnect.
#[derive(Clone)]
pub struct RedisLink {
    inner: Arc<Inner>,
}

struct Inner {
    purpose: Purpose,
    target: Target,
    conn: ArcSwapOption<Conn>,
    /// Loaded on every new connection, so a restarted server's empty script cache, or a script
    /// it refuses, shows at connect time rather than on requests.
    scripts: Vec<Script>,
    state: AtomicU8,
    connector_running: AtomicBool,
    /// Woken when the first connection attempt has ended, either way.
    first_attempt: tokio::sync::Notify,
    degraded_gauge: Option<metrics::Gauge>,
}

impl RedisLink {
    /// Connects in the background (when called inside a tokio runtime; otherwise on first use).
    /// The error never shows a URL (it may hold a password).
    pub fn new(
        target: &RedisTarget,
        purpose: Purpose,
        scripts: Vec<Script>,
        degraded_gauge: Option<metrics::Gauge>,
    ) -> Result<RedisLink, String> {
        let target = Target::build(target)
            .map_err(|e| format!("{}: {} is not usable: {e}", purpose.what, target.kind()))?;
        if let Some(g) = &degraded_gauge {
            g.set(1.0);
        }
        let link = RedisLink {
            inner: Arc::new(Inner {
                purpose,
                target,
                conn: ArcSwapOption::empty(),
                scripts,
                state: AtomicU8::new(CONNECTING),
                connector_running: AtomicBool::new(false),
                first_attempt: tokio::sync::Notify::new(),
                degraded_gauge,
            }),
        };
        link.inner.ensure_connector();
        Ok(link)
    }

    /// True while callers use their local fallback (Redis unreachable, or not yet connected).
    pub fn is_degraded(&self) -> bool {
        self.inner.conn.load().is_none()
    }

    /// Run a script within [`COMMAND_TIMEOUT`]; `None` when Redis could not answer (the link
    /// is then degraded and reconnecting).
    pub async fn invoke<T: FromRedisValue>(&self, invocation: &ScriptInvocation<'_>) -> Option<T> {
        let conn = self.connection().await?;
        let mut c = Conn::clone(&conn);
        self.settle(
            &conn,
            tokio::time::timeout(COMMAND_TIMEOUT, invocation.invoke_async::<T>(&mut c)).await,
        )
    }

    /// Run one command within [`COMMAND_TIMEOUT`]; `None` as for [`RedisLink::invoke`].
    pub async fn query<T: FromRedisValue>(&self, cmd: &Cmd) -> Option<T> {
        let conn = self.connection().await?;
        let mut c = Conn::clone(&conn);
        self.settle(
            &conn,
            tokio::time::timeout(COMMAND_TIMEOUT, cmd.query_async::<T>(&mut c)).await,
        )
    }

    /// Like [`RedisLink::invoke`], but `None` at once while no connection is up (never waits
    /// for the first one): for fire-and-forget writes.
    pub async fn invoke_if_up<T: FromRedisValue>(
        &self,
        invocation: &ScriptInvocation<'_>,
    ) -> Option<T> {
        if self.is_degraded() {
            return None;
        }
        self.invoke(invocation).await
    }

    fn settle<T>(
        &self,
        conn: &Arc<Conn>,
        answer: Result<redis::RedisResult<T>, tokio::time::error::Elapsed>,
    ) -> Option<T> {
        match answer {
            Ok(Ok(v)) => Some(v),
            Ok(Err(e)) => {
                self.inner.lost(conn, &e);
                None
            }
            Err(_) => {
                self.inner
                    .lost(conn, &"no answer within the command timeout");
                None
            }
        }
    }

    /// The current connection; while the very first attempt is under way, wait for it (at most
    /// [`COMMAND_TIMEOUT`]); `None` at once when Redis is known to be down.
    async fn connection(&self) -> Option<Arc<Conn>> {
        match self.inner.conn.load_full() {
            Some(conn) => Some(conn),
            None => self.inner.first_connection().await,
        }
    }
}

impl Inner {
    /// A command on `failed` did not succeed: drop that connection (unless a newer one already
    /// replaced it), go degraded and reconnect in the background.
    fn lost(self: &Arc<Self>, failed: &Arc<Conn>, error: &dyn std::fmt::Display) {
        let previous = self
            .conn
            .compare_and_swap(&Some(failed.clone()), None::<Arc<Conn>>);
        let was_current = previous.as_ref().is_some_and(|p| Arc::ptr_eq(p, failed));
        if was_current {
            self.went_down(error);
            self.ensure_connector();
        }
    }

    fn went_down(&self, error: &dyn std::fmt::Display) {
        if self.state.swap(DOWN, Ordering::AcqRel) != DOWN {
            if let Some(g) = &self.degraded_gauge {
                g.set(1.0);
            }
            let p = &self.purpose;
            match p.owner_kind {
                OwnerKind::Upstream => tracing::warn!(upstream = %p.owner, error = %error,
                    "{}: redis unreachable; {} until it is back", p.what, p.fallback),
                OwnerKind::Webhook => tracing::warn!(webhook = %p.owner, error = %error,
                    "{}: redis unreachable; {} until it is back", p.what, p.fallback),
            }
        }
    }

    fn came_up(&self) {
        let before = self.state.swap(UP, Ordering::AcqRel);
        if let Some(g) = &self.degraded_gauge {
            g.set(0.0);
        }
        let p = &self.purpose;
        match (before, p.owner_kind) {
            (DOWN, OwnerKind::Upstream) => tracing::info!(upstream = %p.owner,
                "{}: redis reachable again; {}", p.what, p.restored),
            (DOWN, OwnerKind::Webhook) => tracing::info!(webhook = %p.owner,
                "{}: redis reachable again; {}", p.what, p.restored),
            (CONNECTING, _) => tracing::debug!(owner = %p.owner, "{}: connected to redis", p.what),
            _ => {}
        }
    }

    async fn first_connection(self: &Arc<Self>) -> Option<Arc<Conn>> {
        let attempted = self.first_attempt.notified();
        tokio::pin!(attempted);
        attempted.as_mut().enable();
        self.ensure_connector();
        if self.state.load(Ordering::Acquire) != CONNECTING {
            return self.conn.load_full();
        }
        let _ = tokio::time::timeout(COMMAND_TIMEOUT, attempted).await;
        self.conn.load_full()
    }

    /// Start the background connector unless it runs already (or there is no runtime yet).
    fn ensure_connector(self: &Arc<Self>) {
        if self.connector_running.swap(true, Ordering::AcqRel) {
            return;
        }
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                runtime.spawn(connect_loop(Arc::downgrade(self)));
            }
            Err(_) => self.connector_running.store(false, Ordering::Release),
        }
    }

    /// A fresh connection with the scripts loaded.
    async fn connect(&self) -> redis::RedisResult<Conn> {
        let mut conn = self.target.connect().await?;
        for script in &self.scripts {
            script.load_async(&mut conn).await?;
        }
        Ok(conn)
    }
}

/// Connect with jittered exponential backoff until connected or the link is dropped (reload).
async fn connect_loop(link: Weak<Inner>) {
    let mut backoff = RECONNECT_MIN;
    loop {
        let Some(inner) = link.upgrade() else {
            return;
        };
        if inner.conn.load().is_none() {
            match tokio::time::timeout(CONNECT_TIMEOUT * 2, inner.connect()).await {
                Ok(Ok(conn)) => {
                    inner.conn.store(Some(Arc::new(conn)));
                    inner.came_up();
                    backoff = RECONNECT_MIN;
                }
                Ok(Err(e)) => inner.went_down(&e),
                Err(_) => inner.went_down(&"connect timed out"),
            }
            inner.first_attempt.notify_waiters();
        }
        if inner.conn.load().is_some() {
            inner.connector_running.store(false, Ordering::Release);
            // A caller may have dropped the new connection before the flag was cleared, and
            // seen the connector still running: look once more.
            if inner.conn.load().is_some() || inner.connector_running.swap(true, Ordering::AcqRel) {
                return;
            }
            continue;
        }
        drop(inner);
        let jitter = rand::random::<f64>() * 0.5 + 0.75;
        tokio::time::sleep(backoff.mul_f64(jitter)).await;
        backoff = (backoff * 2).min(RECONNECT_MAX);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{RedisSentinel, Secret};

    fn purpose() -> Purpose {
        Purpose {
            what: "test state",
            owner_kind: OwnerKind::Upstream,
            owner: "api".into(),
            fallback: "using local state",
            restored: "shared again",
        }
    }

    #[test]
    fn every_topology_builds_without_a_runtime_and_reports_degraded() {
        let targets = [
            RedisTarget::Standalone(Secret::new("redis://127.0.0.1:1")),
            RedisTarget::Cluster(vec![
                Secret::new("redis://127.0.0.1:1"),
                Secret::new("redis://127.0.0.1:2"),
            ]),
            RedisTarget::Sentinel(RedisSentinel {
                master: "mymaster".into(),
                nodes: vec![Secret::new("redis://127.0.0.1:1")],
                password: Some(Secret::new("pw")),
            }),
        ];
        for target in &targets {
            let link = RedisLink::new(target, purpose(), vec![], None).unwrap();
            assert!(link.is_degraded(), "{}", target.kind());
        }
    }

    #[test]
    fn an_unusable_url_is_an_error_that_does_not_echo_it() {
        for target in [
            RedisTarget::Standalone(Secret::new("redis://user:s3cret@[::1")),
            RedisTarget::Cluster(vec![Secret::new("redis://user:s3cret@[::1")]),
        ] {
            let err = RedisLink::new(&target, purpose(), vec![], None)
                .err()
                .expect("invalid url");
            assert!(!err.contains("s3cret"), "{err}");
        }
    }

    #[tokio::test]
    async fn unreachable_redis_answers_none_within_the_command_timeout() {
        for target in [
            RedisTarget::Standalone(Secret::new("redis://127.0.0.1:1")),
            RedisTarget::Cluster(vec![Secret::new("redis://127.0.0.1:1")]),
            RedisTarget::Sentinel(RedisSentinel {
                master: "m".into(),
                nodes: vec![Secret::new("redis://127.0.0.1:1")],
                password: None,
            }),
        ] {
            let link = RedisLink::new(&target, purpose(), vec![], None).unwrap();
            let started = tokio::time::Instant::now();
            assert_eq!(link.query::<String>(&redis::cmd("PING")).await, None);
            assert!(started.elapsed() < COMMAND_TIMEOUT * 2, "{}", target.kind());
            assert!(link.is_degraded());
        }
    }
}
