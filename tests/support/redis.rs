//! A real `redis-server` as a child process on a free loopback port (part of the shared test
//! harness; see `mod.rs`): started with no persistence, polled with `PING` until it answers,
//! killed when dropped. CI installs `redis-server`; a test never skips without it.

use super::*;
use std::process::{Child, Command};

/// A `redis-server` on 127.0.0.1:`port`, killed when dropped.
pub struct RedisServer {
    pub port: u16,
    args: Vec<String>,
    child: Option<Child>,
    dir: TempDir,
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
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// One RESP command on a fresh connection; the raw reply.
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
