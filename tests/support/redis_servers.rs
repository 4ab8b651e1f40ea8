//! Real Redis for the shared-state tests (part of the shared test harness; see `mod.rs`):
//! `redis-server` child processes on free loopback ports, killed when dropped, polled until
//! they answer (never a sleep). [`RedisServer`] is one server, [`RedisCluster`] three
//! cluster-enabled ones joined with `redis-cli --cluster create`, [`Sentinel`] a
//! `redis-server --sentinel` monitoring a master.

use std::process::{Child, Command, Stdio};

use super::*;

/// A `redis-server` on 127.0.0.1:`port`, killed when dropped.
pub struct RedisServer {
    pub port: u16,
    args: Vec<String>,
    child: Option<Child>,
    pub dir: TempDir,
}

impl RedisServer {
    /// Start on a free port and wait until it answers `PING`.
    pub async fn start(extra: &[&str]) -> RedisServer {
        let mut server = RedisServer {
            port: free_port(),
            args: extra.iter().map(|s| s.to_string()).collect(),
            child: None,
            dir: TempDir::new("redis"),
        };
        server.restart().await;
        server
    }

    /// (Re)start on the same port, with no persisted data, and wait for `PING`.
    pub async fn restart(&mut self) {
        assert!(self.child.is_none(), "redis-server is already running");
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string()])
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(&self.dir.path)
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server must be installed (apt-get install redis-server)");
        self.child = Some(child);
        let port = self.port;
        let password = self.password();
        poll_until("redis-server answers PING", || async {
            ping(port, password.as_deref()).await
        })
        .await;
    }

    /// SIGKILL, as a crash or an OOM kill would.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Freeze (`STOP`) or thaw (`CONT`) the server: a hung Redis, sockets still open.
    pub fn signal(&self, signal: &str) {
        let child = self.child.as_ref().expect("redis-server is running");
        send_signal(child.id(), signal);
    }

    pub fn password(&self) -> Option<String> {
        let i = self.args.iter().position(|a| a == "--requirepass")?;
        self.args.get(i + 1).cloned()
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// `redis-cli -p PORT ARGS…` against this server: its output (multi-line replies whole).
    pub async fn cli(&self, args: &[&str]) -> String {
        redis_cli(self.port, args).await
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// `redis-cli -p PORT ARGS…` (raw output, no TTY formatting); empty when it fails.
pub async fn redis_cli(port: u16, args: &[&str]) -> String {
    let out = tokio::process::Command::new("redis-cli")
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .await
        .expect("redis-cli must be installed (apt-get install redis-tools)");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// One RESP command on a fresh connection; the raw reply's last line.
pub async fn redis_command(port: u16, password: Option<&str>, args: &[&str]) -> Option<String> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).await.ok()?;
    let mut wire = Vec::new();
    let mut push = |args: &[&str]| {
        wire.extend_from_slice(format!("*{}\r\n", args.len()).as_bytes());
        for a in args {
            wire.extend_from_slice(format!("${}\r\n{a}\r\n", a.len()).as_bytes());
        }
    };
    if let Some(p) = password {
        push(&["AUTH", p]);
    }
    push(args);
    stream.write_all(&wire).await.ok()?;
    let mut reply = Vec::new();
    let mut buf = [0u8; 512];
    let expected_lines = if password.is_some() { 2 } else { 1 };
    while reply.iter().filter(|&&b| b == b'\n').count() < expected_lines {
        let n = tokio::time::timeout(Duration::from_secs(1), stream.read(&mut buf))
            .await
            .ok()?
            .ok()?;
        if n == 0 {
            return None;
        }
        reply.extend_from_slice(&buf[..n]);
    }
    let text = String::from_utf8_lossy(&reply).into_owned();
    Some(text.lines().last().unwrap_or_default().to_string())
}

pub async fn ping(port: u16, password: Option<&str>) -> bool {
    redis_command(port, password, &["PING"]).await.as_deref() == Some("+PONG")
}

/// A 3-node Redis Cluster (3 masters, no replicas) on free ports.
pub struct RedisCluster {
    pub nodes: Vec<RedisServer>,
}

impl RedisCluster {
    pub async fn start() -> RedisCluster {
        let mut nodes = Vec::new();
        for _ in 0..3 {
            // The bus port defaults to port + 10000, which may be taken or out of range.
            let bus = free_port().to_string();
            nodes.push(
                RedisServer::start(&[
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    "nodes.conf",
                    "--cluster-port",
                    &bus,
                    "--cluster-node-timeout",
                    "2000",
                ])
                .await,
            );
        }
        let addrs: Vec<String> = nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        let out = tokio::process::Command::new("redis-cli")
            .arg("--cluster")
            .arg("create")
            .args(&addrs)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .stdin(Stdio::null())
            .output()
            .await
            .expect("redis-cli --cluster create");
        assert!(
            out.status.success(),
            "redis-cli --cluster create failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        for node in &nodes {
            poll_until("cluster_state:ok on every node", || async {
                node.cli(&["cluster", "info"])
                    .await
                    .contains("cluster_state:ok")
            })
            .await;
        }
        RedisCluster { nodes }
    }

    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(RedisServer::url).collect()
    }

    /// The node that serves `key`'s slot (the others answer `MOVED`), and whether the key
    /// exists there.
    pub async fn owner_of(&self, key: &str) -> (&RedisServer, bool) {
        for node in &self.nodes {
            match node.cli(&["exists", key]).await.trim() {
                "1" => return (node, true),
                "0" => return (node, false),
                _ => {}
            }
        }
        panic!("no node serves the slot of {key}");
    }
}

/// One `redis-server --sentinel` monitoring `master` as `mymaster` (quorum 1, down after 1 s).
pub struct Sentinel {
    pub port: u16,
    child: Option<Child>,
    pub dir: TempDir,
}

pub const SENTINEL_MASTER: &str = "mymaster";

impl Sentinel {
    pub async fn start(master_port: u16) -> Sentinel {
        Self::start_with(master_port, None).await
    }

    /// With the master's password (`sentinel auth-pass`), for a master with `requirepass`.
    pub async fn start_with(master_port: u16, master_password: Option<&str>) -> Sentinel {
        let dir = TempDir::new("sentinel");
        let port = free_port();
        let conf = dir.path.join("sentinel.conf");
        std::fs::write(
            &conf,
            format!(
                "port {port}\nbind 127.0.0.1\ndir {}\n\
                 sentinel monitor {SENTINEL_MASTER} 127.0.0.1 {master_port} 1\n\
                 sentinel down-after-milliseconds {SENTINEL_MASTER} 1000\n\
                 sentinel failover-timeout {SENTINEL_MASTER} 5000\n\
                 sentinel parallel-syncs {SENTINEL_MASTER} 1\n{}",
                dir.path.display(),
                master_password.map_or(String::new(), |pw| format!(
                    "sentinel auth-pass {SENTINEL_MASTER} {pw}\n"
                ))
            ),
        )
        .unwrap();
        let child = Command::new("redis-server")
            .arg(&conf)
            .arg("--sentinel")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server --sentinel");
        let sentinel = Sentinel {
            port,
            child: Some(child),
            dir,
        };
        let want = master_port.to_string();
        poll_until("the sentinel knows the master", || async {
            redis_cli(
                port,
                &["sentinel", "get-master-addr-by-name", SENTINEL_MASTER],
            )
            .await
            .lines()
            .any(|l| l.trim() == want)
        })
        .await;
        sentinel
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// The port the sentinel names as the master now.
    pub async fn master_port(&self) -> Option<u16> {
        redis_cli(
            self.port,
            &["sentinel", "get-master-addr-by-name", SENTINEL_MASTER],
        )
        .await
        .lines()
        .nth(1)
        .and_then(|l| l.trim().parse().ok())
    }
}

impl Drop for Sentinel {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
