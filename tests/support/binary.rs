//! The real binary (part of the shared test harness; see `mod.rs`).

use super::*;

pub const BIN: &str = env!("CARGO_BIN_EXE_outpost");

/// A free port on 127.0.0.1: bind port 0, read the port, drop the listener. Another process
/// could take the port before the binary binds it; the window is a few milliseconds, and the
/// binary then fails to start with a clear "cannot listen" error rather than a wrong result.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind free port")
        .local_addr()
        .unwrap()
        .port()
}

/// Captured output of a process, filled by background readers.
#[derive(Clone, Default)]
pub struct Captured(Arc<Mutex<Vec<u8>>>);

impl Captured {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
    pub fn bytes(&self) -> Vec<u8> {
        self.0.lock().unwrap().clone()
    }
    fn spawn_reader(&self, mut reader: impl AsyncRead + Unpin + Send + 'static) {
        let sink = self.0.clone();
        tokio::spawn(async move {
            let mut buf = [0u8; 8192];
            while let Ok(n) = reader.read(&mut buf).await {
                if n == 0 {
                    break;
                }
                sink.lock().unwrap().extend_from_slice(&buf[..n]);
            }
        });
    }
}

/// The ports a binary's config listens on.
#[derive(Clone, Copy, Debug)]
pub struct Ports {
    pub app: u16,
    pub admin: u16,
}

/// `version: 1`, `listen` and `admin_listen` on free ports, then `yaml` (dedented).
pub fn binary_config(yaml: &str) -> (String, Ports) {
    let app = free_port();
    // Two free ports found one after the other may be the same one.
    let admin = std::iter::repeat_with(free_port)
        .find(|p| *p != app)
        .expect("a second free port");
    let ports = Ports { app, admin };
    let text = format!(
        "version: 1\nlisten: 127.0.0.1:{}\nadmin_listen: 127.0.0.1:{}\n{}",
        ports.app,
        ports.admin,
        dedent(yaml)
    );
    (text, ports)
}

/// Poll until `check` returns true (every 20 ms, under the hang guard).
pub async fn poll_until<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    guard(what, async {
        while !check().await {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
}

/// The status of `GET url`, or `None` when the request fails (connection refused, reset).
pub async fn try_status(url: &str) -> Option<u16> {
    let req = Request::get(url).body(empty()).unwrap();
    match tokio::time::timeout(Duration::from_secs(2), http1_client().request(req)).await {
        Ok(Ok(response)) => Some(response.status().as_u16()),
        _ => None,
    }
}

/// The `outpost` binary serving a config from a temp dir, with its stdout and stderr captured.
pub struct Binary {
    pub child: tokio::process::Child,
    pub app_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    pub stdout: Captured,
    pub stderr: Captured,
    pub dir: TempDir,
    pub config_path: PathBuf,
}

impl Binary {
    /// Write `version: 1`, `listen` and `admin_listen` on free ports and then `yaml` (dedented)
    /// to `proxy.yaml` in a fresh temp dir, and run `outpost run -c proxy.yaml` with `env`.
    /// Returns once `/readyz` answers 200.
    pub async fn start(yaml: &str, env: &[(&str, &str)]) -> Binary {
        Self::start_in(TempDir::new("bin"), yaml, env).await
    }

    /// As [`Binary::start`], in a dir the caller prepared (e.g. with secret files).
    /// The free ports are found by binding and releasing them, so another process can take
    /// one before Outpost binds it: then Outpost exits with "address in use" and this retries
    /// on new ports.
    pub async fn start_in(dir: TempDir, yaml: &str, env: &[(&str, &str)]) -> Binary {
        let mut dir = Some(dir);
        for attempt in 1.. {
            let (text, ports) = binary_config(yaml);
            let here = dir.take().expect("dir");
            let config_path = here.write("proxy.yaml", text);
            let args = [
                "run".to_string(),
                "-c".to_string(),
                config_path.display().to_string(),
            ];
            let mut binary = Self::spawn(here, config_path, &args, env, ports);
            match binary.wait_ready_or_exit().await {
                Ok(()) => return binary,
                Err(stderr) if attempt < 5 && stderr.contains("in use") => {
                    dir = Some(std::mem::replace(
                        &mut binary.dir,
                        TempDir::new("bin-retry"),
                    ));
                }
                Err(stderr) => panic!("outpost exited early; stderr:\n{stderr}"),
            }
        }
        unreachable!()
    }

    /// Spawn `outpost ARGS` (the config already written) and wait until it is ready.
    /// `OUTPOST_CONFIG` is removed from the environment unless `env` sets it.
    pub async fn launch(
        dir: TempDir,
        config_path: PathBuf,
        args: &[String],
        env: &[(&str, &str)],
        ports: Ports,
    ) -> Binary {
        let mut binary = Self::spawn(dir, config_path, args, env, ports);
        binary.wait_ready().await;
        binary
    }

    fn spawn(
        dir: TempDir,
        config_path: PathBuf,
        args: &[String],
        env: &[(&str, &str)],
        ports: Ports,
    ) -> Binary {
        let mut command = tokio::process::Command::new(BIN);
        command
            .args(args)
            .current_dir(&dir.path)
            .env_remove("OUTPOST_CONFIG")
            .env("OUTPOST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        for (name, value) in env {
            command.env(name, value);
        }
        let mut child = command.spawn().expect("spawn outpost");
        let stdout = Captured::default();
        let stderr = Captured::default();
        stdout.spawn_reader(child.stdout.take().unwrap());
        stderr.spawn_reader(child.stderr.take().unwrap());
        Binary {
            child,
            app_addr: SocketAddr::from(([127, 0, 0, 1], ports.app)),
            admin_addr: SocketAddr::from(([127, 0, 0, 1], ports.admin)),
            stdout,
            stderr,
            dir,
            config_path,
        }
    }

    /// Poll `/readyz` every 20 ms until it answers 200 (hang guard: [`GUARD`]).
    pub async fn wait_ready(&mut self) {
        if let Err(stderr) = self.wait_ready_or_exit().await {
            panic!("outpost exited early; stderr:\n{stderr}");
        }
    }

    /// As [`Binary::wait_ready`]; `Err(stderr)` when the process exits first.
    async fn wait_ready_or_exit(&mut self) -> Result<(), String> {
        let client = http1_client();
        let url = format!("http://{}/readyz", self.admin_addr);
        let poll = async {
            loop {
                if let Ok(Some(status)) = self.child.try_wait() {
                    // Let the reader drain what the process wrote before it exited.
                    let stderr = guard("stderr of an exited outpost", async {
                        loop {
                            let text = self.stderr.text();
                            if !text.is_empty() {
                                return text;
                            }
                            tokio::time::sleep(Duration::from_millis(10)).await;
                        }
                    })
                    .await;
                    return Err(format!("exit status {status}\n{stderr}"));
                }
                let req = Request::get(&url).body(empty()).unwrap();
                if let Ok(Ok(response)) =
                    tokio::time::timeout(Duration::from_secs(1), client.request(req)).await
                {
                    if response.status() == StatusCode::OK {
                        return Ok(());
                    }
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        };
        match tokio::time::timeout(GUARD, poll).await {
            Ok(result) => result,
            Err(_) => panic!(
                "outpost did not become ready within {GUARD:?}; stderr:\n{}",
                self.stderr.text()
            ),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.app_addr, path)
    }

    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{}", self.admin_addr, path)
    }

    pub fn pid(&self) -> u32 {
        self.child.id().expect("outpost still running")
    }

    /// Send a signal (`TERM`, `INT`, `HUP`) with `kill`.
    pub fn signal(&self, signal: &str) {
        send_signal(self.pid(), signal);
    }

    /// Wait for the process to exit (under the hang guard).
    pub async fn wait(&mut self) -> std::process::ExitStatus {
        guard("outpost exit", self.child.wait())
            .await
            .expect("wait for outpost")
    }

    /// SIGTERM, assert a clean exit, and return everything it wrote to stderr (polled until
    /// the final "stopped" line arrived, so no log line is missed).
    pub async fn stop_and_collect_stderr(&mut self) -> Vec<u8> {
        self.signal("TERM");
        assert!(self.wait().await.success(), "outpost did not exit cleanly");
        guard("stderr drained", async {
            loop {
                let text = self.stderr.bytes();
                if String::from_utf8_lossy(&text).contains("stopped") {
                    return text;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await
    }

    /// `outpost check` on this binary's config file.
    pub async fn check(&self) -> Run {
        outpost(
            &["check", "-c", &self.config_path.display().to_string()],
            &[],
            None,
        )
        .await
    }
}

pub fn send_signal(pid: u32, signal: &str) {
    let status = std::process::Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(pid.to_string())
        .status()
        .expect("run kill");
    assert!(status.success(), "kill -{signal} {pid} failed");
}

/// The result of running `outpost` to completion.
#[derive(Debug)]
pub struct Run {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

/// Run `outpost ARGS` to completion with `env` (and `OUTPOST_CONFIG` removed unless given).
pub async fn outpost(args: &[&str], env: &[(&str, &str)], cwd: Option<&Path>) -> Run {
    let mut command = tokio::process::Command::new(BIN);
    command
        .args(args)
        .env_remove("OUTPOST_CONFIG")
        .stdin(Stdio::null())
        .kill_on_drop(true);
    if let Some(cwd) = cwd {
        command.current_dir(cwd);
    }
    for (name, value) in env {
        command.env(name, value);
    }
    let output = guard("outpost run to completion", command.output())
        .await
        .expect("run outpost");
    Run {
        code: output.status.code(),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

/// Header value helper for tests that build `HeaderMap`s.
pub fn header_map(pairs: &[(&str, &str)]) -> HeaderMap {
    let mut map = HeaderMap::new();
    for (name, value) in pairs {
        map.append(
            HeaderName::from_bytes(name.as_bytes()).unwrap(),
            HeaderValue::from_str(value).unwrap(),
        );
    }
    map
}

/// `content-type` of a recorded request or answer, for brevity in assertions.
pub fn content_type(headers: &HeaderMap) -> Option<&str> {
    headers.get(CONTENT_TYPE).and_then(|v| v.to_str().ok())
}
