//! Hot reload through the real binary: secret file rotation, config edits, `SIGHUP`, an
//! invalid file that keeps the old config serving, and a reload under a request loop.

mod support;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use support::{get, guard, Binary, MockUpstream, Reply, TempDir};

/// Replace a file the way Kubernetes does: write a new file, then rename it over the old one.
fn rotate(dir: &TempDir, name: &str, contents: &str) {
    let tmp = dir.write(&format!("{name}.tmp"), contents);
    std::fs::rename(tmp, dir.path.join(name)).unwrap();
}

/// Poll until `check` holds (hang guard only; no fixed sleeps).
async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    guard(what, async {
        while !check().await {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
}

fn config(mock: &MockUpstream) -> String {
    format!(
        "upstreams:\n  api:\n    base_url: {}\n    auth: {{ type: bearer, token: \"${{file:key}}\" }}\n",
        mock.url("")
    )
}

#[tokio::test]
async fn secret_file_rotation_is_picked_up_without_restart() {
    let mock = MockUpstream::start(|_| Reply::text(200, "ok")).await;
    let dir = TempDir::new("reload-secret");
    dir.write("key", "key-one\n");
    let bin = Binary::start_in(dir, &config(&mock), &[]).await;

    assert_eq!(get(&bin.url("/api/x")).await.status, 200);
    assert_eq!(
        mock.requests()[0].header("authorization"),
        Some("Bearer key-one")
    );

    rotate(&bin.dir, "key", "key-two\n");
    eventually("rotated key in use", || async {
        assert_eq!(get(&bin.url("/api/x")).await.status, 200);
        mock.requests()
            .last()
            .and_then(|r| r.header("authorization").map(str::to_string))
            .as_deref()
            == Some("Bearer key-two")
    })
    .await;
    let metrics = get(&bin.admin_url("/metrics")).await.text();
    assert!(
        metrics.contains(r#"outpost_config_reloads_total{result="ok"}"#),
        "{metrics}"
    );
}

#[tokio::test]
async fn invalid_config_keeps_the_old_one_serving() {
    let mock = MockUpstream::start(|_| Reply::text(200, "ok")).await;
    let dir = TempDir::new("reload-invalid");
    dir.write("key", "key-one");
    let bin = Binary::start_in(dir, &config(&mock), &[]).await;
    let original = std::fs::read_to_string(&bin.config_path).unwrap();

    // A typo: unknown key. The file changes, the reload fails, the old config serves on.
    std::fs::write(&bin.config_path, original.replace("base_url:", "base_ur1:")).unwrap();
    eventually("reload error counted", || async {
        get(&bin.admin_url("/metrics"))
            .await
            .text()
            .contains(r#"outpost_config_reloads_total{result="error"} 1"#)
    })
    .await;
    assert_eq!(get(&bin.url("/api/still")).await.status, 200);
    assert_eq!(get(&bin.admin_url("/readyz")).await.status, 200);
    // Log lines reach stderr a few milliseconds after the event (batched writer): poll.
    eventually("reload error logged", || async {
        bin.stderr.text().contains("config reload failed")
    })
    .await;
    let log = bin.stderr.text();
    assert!(log.contains("unknown field `base_ur1`"), "{log}");
    assert!(
        log.contains("proxy.yaml:"),
        "the error names file:line:col: {log}"
    );

    // SIGHUP with a fixed file brings in the new config (a new upstream name).
    std::fs::write(&bin.config_path, original.replace("  api:", "  api2:")).unwrap();
    bin.signal("HUP");
    eventually("new route served", || async {
        get(&bin.url("/api2/x")).await.status == 200
    })
    .await;
    assert_eq!(get(&bin.url("/api/x")).await.status, 404);
}

#[tokio::test]
async fn reload_under_load_fails_no_request() {
    let mock = MockUpstream::start(|_| Reply::text(200, "ok")).await;
    let dir = TempDir::new("reload-load");
    dir.write("key", "key-one");
    let bin = Binary::start_in(dir, &config(&mock), &[]).await;
    let url = bin.url("/api/loop");

    let stop = Arc::new(AtomicBool::new(false));
    let failures = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(AtomicUsize::new(0));
    let mut workers = Vec::new();
    for _ in 0..4 {
        let (stop, failures, done, url) =
            (stop.clone(), failures.clone(), done.clone(), url.clone());
        workers.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                if get(&url).await.status != 200 {
                    failures.fetch_add(1, Ordering::Relaxed);
                }
                done.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    for (i, key) in ["key-two", "key-three", "key-four"].iter().enumerate() {
        rotate(&bin.dir, "key", key);
        let expected = format!(r#"outpost_config_reloads_total{{result="ok"}} {}"#, i + 1);
        eventually("reload applied", || async {
            get(&bin.admin_url("/metrics"))
                .await
                .text()
                .contains(&expected)
        })
        .await;
    }
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.await.unwrap();
    }
    assert!(done.load(Ordering::Relaxed) > 20, "the loop ran");
    assert_eq!(
        failures.load(Ordering::Relaxed),
        0,
        "no request failed during reloads"
    );
    let last = mock
        .requests()
        .last()
        .and_then(|r| r.header("authorization").map(str::to_string));
    assert_eq!(last.as_deref(), Some("Bearer key-four"));
}

/// A reload keeps the rate budget of an upstream whose `rate_limit` did not change, and starts
/// afresh where it changed.
#[tokio::test]
async fn limiter_state_survives_a_reload_of_an_unchanged_upstream() {
    let mock = MockUpstream::start(|_| Reply::text(200, "ok")).await;
    let yaml = |rps: u32| {
        format!(
            "version: 1\nlisten: 127.0.0.1:0\nadmin_listen: 127.0.0.1:0\nupstreams:\n  api:\n    base_url: {}\n    \
             rate_limit: {{ requests_per_minute: {rps}, burst: 1, max_wait: 0s }}\n    retry: {{ max_attempts: 1 }}\n",
            mock.url("")
        )
    };
    let proxy = support::Proxy::start(&yaml(1)).await;
    assert_eq!(proxy.get("/api/a").await.status, 200);
    assert_eq!(proxy.get("/api/b").await.status, 429, "budget spent");

    // Same rate limit (another key changed): the spent budget carries over.
    let same = outpost::config::load_str(
        &yaml(1).replace(
            "retry: { max_attempts: 1 }",
            "retry: { max_attempts: 1, base_delay: 50ms }",
        ),
        &proxy.dir.path.join("proxy.yaml"),
    )
    .unwrap();
    proxy.app().apply(same).unwrap();
    assert_eq!(
        proxy.get("/api/c").await.status,
        429,
        "a reload must not refill the bucket"
    );

    // A changed rate limit starts a new bucket.
    let changed = outpost::config::load_str(&yaml(2), &proxy.dir.path.join("proxy.yaml")).unwrap();
    proxy.app().apply(changed).unwrap();
    assert_eq!(proxy.get("/api/d").await.status, 200);
    assert_eq!(mock.count(), 2);
}

/// An open circuit breaker stays open across a reload that does not touch it.
#[tokio::test]
async fn open_breaker_survives_a_reload() {
    let mock = MockUpstream::start(|_| Reply::text(503, "down")).await;
    let yaml = format!(
        "version: 1\nlisten: 127.0.0.1:0\nadmin_listen: 127.0.0.1:0\nupstreams:\n  api:\n    base_url: {}\n    \
         retry: {{ max_attempts: 1 }}\n    circuit_breaker: {{ consecutive_failures: 2, open_for: 60s }}\n",
        mock.url("")
    );
    let proxy = support::Proxy::start(&yaml).await;
    for _ in 0..2 {
        assert_eq!(proxy.get("/api/x").await.status, 503);
    }
    assert_eq!(
        proxy.get("/api/x").await.header("x-outpost-error"),
        Some("circuit_open")
    );
    let again = outpost::config::load_str(
        &yaml.replace("max_attempts: 1", "max_attempts: 1, base_delay: 50ms"),
        &proxy.dir.path.join("proxy.yaml"),
    )
    .unwrap();
    proxy.app().apply(again).unwrap();
    assert_eq!(
        proxy.get("/api/x").await.header("x-outpost-error"),
        Some("circuit_open")
    );
    assert_eq!(mock.count(), 2, "no traffic while open, reload or not");
    assert!(
        proxy
            .metrics()
            .contains(r#"outpost_circuit_open{upstream="api"} 1"#),
        "{}",
        proxy.metrics()
    );
}
