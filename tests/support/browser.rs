//! The inspector page driven in headless Chromium by `tests/fixtures/capture/inspector_browser.py`
//! (selenium), speaking a line protocol on stdin/stdout (see the script's docstring).

use std::path::Path;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};
use tokio::task::JoinHandle;

/// Chromium's start on a loaded CI machine is slow; this bounds every step, not readiness.
pub const STEP: Duration = Duration::from_secs(90);

pub struct InspectorBrowser {
    child: Child,
    stdin: ChildStdin,
    lines: Lines<BufReader<ChildStdout>>,
    stderr: Option<JoinHandle<String>>,
}

impl InspectorBrowser {
    /// Open the inspector at `base`; the script saves a screenshot to `screenshot` at the end.
    pub fn start(base: &str, screenshot: &Path) -> Self {
        for tool in ["/usr/bin/chromium", "/usr/bin/chromedriver"] {
            assert!(
                Path::new(tool).exists(),
                "{tool} is missing: apt-get install chromium chromium-driver (.ci/run does)"
            );
        }
        let script = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/capture/inspector_browser.py"
        );
        let mut child = Command::new("python3")
            .arg(script)
            .arg(base)
            .arg(screenshot)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("python3 is installed");
        let stdin = child.stdin.take().expect("stdin");
        let lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
        let mut stderr = child.stderr.take().expect("stderr");
        let stderr = tokio::spawn(async move {
            let mut text = String::new();
            let _ = tokio::io::AsyncReadExt::read_to_string(&mut stderr, &mut text).await;
            text
        });
        InspectorBrowser {
            child,
            stdin,
            lines,
            stderr: Some(stderr),
        }
    }

    async fn script_log(&mut self) -> String {
        let _ = tokio::time::timeout(STEP, self.child.wait()).await;
        match self.stderr.take() {
            Some(task) => task.await.unwrap_or_default(),
            None => String::new(),
        }
    }

    /// The script's next line, which must start with `prefix` (its reason on stderr otherwise).
    pub async fn expect(&mut self, what: &str, prefix: &str) -> String {
        let line = tokio::time::timeout(STEP, self.lines.next_line())
            .await
            .unwrap_or_else(|_| panic!("browser step `{what}` did not finish within {STEP:?}"))
            .ok()
            .flatten();
        match line {
            Some(line) if line.starts_with(prefix) => line,
            other => panic!(
                "browser step `{what}`: got {other:?}\n{}",
                self.script_log().await
            ),
        }
    }

    /// Tell the script something (`ADDED <id>`, `WEBHOOK <id>`).
    pub async fn say(&mut self, line: &str) {
        self.stdin
            .write_all(format!("{line}\n").as_bytes())
            .await
            .expect("the browser script reads its stdin");
    }

    /// Wait for the script to end: its exit status and everything it wrote to stderr.
    pub async fn finish(mut self) -> (ExitStatus, String) {
        let status = tokio::time::timeout(STEP, self.child.wait())
            .await
            .expect("the browser script exits")
            .expect("wait for the browser script");
        (status, self.script_log().await)
    }
}
