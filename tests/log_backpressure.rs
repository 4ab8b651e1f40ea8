//! Logging never blocks the proxy: with stderr connected to a pipe that nobody reads, the log
//! writer drops lines (counted in `outpost_log_lines_dropped_total`) and every request is still
//! answered; once the pipe is read again, a warning says lines were dropped.

mod support;

use std::process::Stdio;
use std::time::Duration;

use http::Request;
use support::{binary_config, empty, guard, http1_client, MockUpstream, Reply, TempDir, BIN};
use tokio::io::AsyncReadExt;

const REQUESTS: usize = 20_000;
const CLIENTS: usize = 8;

async fn status(client: &support::HttpClient, url: &str) -> Option<u16> {
    let req = Request::get(url).body(empty()).unwrap();
    match tokio::time::timeout(Duration::from_secs(20), client.request(req)).await {
        Ok(Ok(response)) => {
            let status = response.status().as_u16();
            let _ = http_body_util::BodyExt::collect(response.into_body()).await;
            Some(status)
        }
        _ => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stderr_pipe_nobody_reads_does_not_stop_requests() {
    let mock = MockUpstream::start(|_| Reply::text(200, "ok")).await;
    let dir = TempDir::new("unread-stderr");
    let (yaml, ports) = binary_config(&format!(
        "upstreams:\n  api:\n    base_url: {}\n",
        mock.url("")
    ));
    let config = dir.write("proxy.yaml", yaml);
    let mut child = tokio::process::Command::new(BIN)
        .args(["run", "-c", &config.display().to_string()])
        .env_remove("OUTPOST_CONFIG")
        .env("OUTPOST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        // Piped and, until the end, never read: the pipe fills after ~64 KiB.
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn outpost");
    let mut stderr = child.stderr.take().expect("stderr");
    let app = format!("http://127.0.0.1:{}", ports.app);
    let admin = format!("http://127.0.0.1:{}", ports.admin);

    let client = http1_client();
    guard("ready", async {
        loop {
            assert!(child.try_wait().unwrap().is_none(), "outpost exited");
            if status(&client, &format!("{admin}/readyz")).await == Some(200) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;

    // 20 000 keep-alive requests over 8 connections: every one is answered.
    let started = std::time::Instant::now();
    let mut tasks = Vec::new();
    for c in 0..CLIENTS {
        let client = http1_client();
        let url = format!("{app}/api/item/{c}");
        tasks.push(tokio::spawn(async move {
            let mut ok = 0usize;
            for _ in 0..REQUESTS / CLIENTS {
                match status(&client, &url).await {
                    Some(200) => ok += 1,
                    other => panic!("request failed with {other:?} after {ok} answers"),
                }
            }
            ok
        }));
    }
    let mut answered = 0;
    for task in tasks {
        answered += tokio::time::timeout(Duration::from_secs(600), task)
            .await
            .expect("requests hang")
            .expect("client task");
    }
    eprintln!(
        "{answered} requests answered in {:?} with stderr unread",
        started.elapsed()
    );
    assert_eq!(answered, REQUESTS);
    assert_eq!(mock.count(), REQUESTS);

    let metrics = {
        let req = Request::get(format!("{admin}/metrics"))
            .body(empty())
            .unwrap();
        let response = guard("metrics", client.request(req)).await.unwrap();
        let body = guard(
            "metrics body",
            http_body_util::BodyExt::collect(response.into_body()),
        )
        .await
        .unwrap()
        .to_bytes();
        String::from_utf8_lossy(&body).into_owned()
    };
    let dropped: f64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("outpost_log_lines_dropped_total "))
        .expect("outpost_log_lines_dropped_total exported")
        .trim()
        .parse()
        .unwrap();
    assert!(dropped > 0.0, "lines were dropped and counted: {dropped}");

    // Once stderr is read again, a warning says so (at most once per 10 s interval).
    let mut seen = Vec::new();
    let warned = tokio::time::timeout(Duration::from_secs(90), async {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = stderr.read(&mut buf).await.expect("read stderr");
            assert!(n > 0, "stderr closed before the warning");
            seen.extend_from_slice(&buf[..n]);
            let text = String::from_utf8_lossy(&seen);
            if text.contains("log lines dropped") {
                break;
            }
            // Keep only a tail, so the search stays cheap.
            if seen.len() > 1 << 20 {
                seen.drain(..seen.len() - 4096);
            }
        }
    })
    .await;
    assert!(warned.is_ok(), "no dropped-lines warning within 90 s");
    let _ = child.start_kill();
}
