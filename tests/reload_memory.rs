//! A reload that removes upstreams gives their memory back (issue 14: "a 10 000-upstream
//! config reverted to 1: `/metrics` stays 22 MB, RSS 251 MB"). The real binary loads 10 000
//! upstreams by a reload (each used once, so each has its metric series and its connection
//! pool), then a reload back to one: `/metrics` shrinks back to the one upstream's series and
//! the resident set comes back near where it started.

mod support;

use std::time::Duration;

use support::*;

const MANY: usize = 10_000;
/// RSS after the revert may exceed the start by at most this much (allocator slack, the
/// metric registry's retired-label bookkeeping).
const SLACK_KIB: u64 = 24 * 1024;

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

fn upstreams(mock: &MockUpstream, n: usize) -> String {
    let mut yaml = String::from("upstreams:\n");
    for i in 0..n {
        yaml.push_str(&format!("  u{i}:\n    base_url: {}\n", mock.url("")));
    }
    yaml
}

/// Rewrite the binary's config (same listeners) and wait for the `n`-th successful reload.
async fn reload(binary: &Binary, yaml: &str, n: usize) {
    let text = std::fs::read_to_string(&binary.config_path).unwrap();
    let head: String = text
        .lines()
        .take_while(|l| !l.starts_with("upstreams:"))
        .map(|l| format!("{l}\n"))
        .collect();
    let tmp = binary.config_path.with_extension("tmp");
    std::fs::write(&tmp, format!("{head}{yaml}")).unwrap();
    std::fs::rename(&tmp, &binary.config_path).unwrap();
    let expected = format!(r#"outpost_config_reloads_total{{result="ok"}} {n}"#);
    let metrics = binary.admin_url("/metrics");
    poll_until("the reload is applied", || {
        let (metrics, expected) = (metrics.clone(), expected.clone());
        async move { get(&metrics).await.text().contains(&expected) }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_upstreams_reverted_to_one_give_their_memory_back() {
    let mock = MockUpstream::ok().await;
    let binary = Binary::start(&upstreams(&mock, 1), &[]).await;
    assert_eq!(get(&binary.url("/u0/x")).await.status, 200);
    let pid = binary.pid();
    let start = rss_kib(pid);
    let small_metrics = get(&binary.admin_url("/metrics")).await.text().len();

    reload(&binary, &upstreams(&mock, MANY), 1).await;
    for i in (0..MANY).step_by(5) {
        assert_eq!(get(&binary.url(&format!("/u{i}/x"))).await.status, 200);
    }
    let many = rss_kib(pid);
    let many_metrics = get(&binary.admin_url("/metrics")).await.text().len();

    reload(&binary, &upstreams(&mock, 1), 2).await;
    let text = get(&binary.admin_url("/metrics")).await.text();
    assert!(
        !text.contains("upstream=\"u9999\""),
        "a removed upstream's series is still exported"
    );
    assert!(
        text.len() < small_metrics * 2,
        "/metrics is {} bytes after the revert ({small_metrics} before, {many_metrics} with {MANY})",
        text.len()
    );
    // jemalloc's background thread returns the freed pages within seconds: poll for it.
    let _ = tokio::time::timeout(
        Duration::from_secs(30),
        poll_until("RSS is back near the start", || async move {
            rss_kib(pid) <= start + SLACK_KIB
        }),
    )
    .await;
    let after = rss_kib(pid);
    eprintln!(
        "RSS: {start} KiB with 1 upstream, {many} KiB with {MANY}, {after} KiB back at 1; /metrics {small_metrics} -> {many_metrics} -> {} bytes",
        text.len()
    );
    assert!(
        after <= start + SLACK_KIB,
        "RSS {after} KiB after reverting to one upstream (started at {start} KiB, {many} KiB with {MANY})"
    );
    assert_eq!(get(&binary.url("/u0/x")).await.status, 200, "still serving");
}
