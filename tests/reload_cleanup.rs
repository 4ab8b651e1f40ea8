//! A reload that removes upstreams and webhooks drops their metric series from `/metrics`
//! (and the proxy lets go of their state with the old config generation).

mod support;

use support::{get, MockUpstream, Reply, TempDir};

fn config(mock: &MockUpstream, upstreams: std::ops::Range<usize>, hook: bool) -> String {
    let mut yaml = String::from(
        "version: 1\nlisten: 127.0.0.1:0\nadmin_listen: 127.0.0.1:0\nwebhook_listen: 127.0.0.1:0\nupstreams:\n",
    );
    for i in upstreams {
        yaml.push_str(&format!("  u{i}:\n    base_url: {}\n", mock.url("")));
    }
    yaml.push_str("webhooks:\n  keep:\n    path: /keep\n    scheme: github\n    secrets: [k]\n    forward_to: http://127.0.0.1:9/k\n");
    if hook {
        yaml.push_str("  gone:\n    path: /gone\n    scheme: github\n    secrets: [g]\n    forward_to: http://127.0.0.1:9/g\n");
    }
    yaml
}

#[tokio::test]
async fn removed_upstreams_and_webhooks_leave_metrics() {
    let mock = MockUpstream::start(|_| Reply::text(200, "ok")).await;
    let dir = TempDir::new("reload-cleanup");
    let path = dir.write("proxy.yaml", config(&mock, 0..50, true));
    let app = outpost::app::App::start(outpost::config::load(&path).unwrap())
        .await
        .unwrap();
    for i in 0..50 {
        let answer = get(&format!("http://{}/u{i}/x", app.app_addr)).await;
        assert_eq!(answer.status, 200);
    }
    // A delivery to the webhook that will go (unsigned: counted as signature_missing).
    let hooks = app.webhook_addr().unwrap();
    let answer = support::raw_request(
        hooks,
        b"POST /gone HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}",
    )
    .await;
    assert_eq!(answer.status, 400);
    let before = app.metrics.render();
    assert!(before.contains(r#"upstream="u49""#), "{before}");
    assert!(before.contains(r#"webhook="gone""#), "{before}");

    std::fs::write(&path, config(&mock, 0..1, false)).unwrap();
    assert!(app.reload());
    let after = app.metrics.render();
    for i in 1..50 {
        assert!(
            !after.contains(&format!("upstream=\"u{i}\"")),
            "u{i} still exported:\n{after}"
        );
    }
    assert!(!after.contains(r#"webhook="gone""#), "{after}");
    assert!(after.contains(r#"upstream="u0""#) && after.contains(r#"webhook="keep""#));
    assert!(
        after.len() * 5 < before.len(),
        "exposition shrank: {} -> {} bytes",
        before.len(),
        after.len()
    );
    assert_eq!(
        get(&format!("http://{}/u7/x", app.app_addr)).await.status,
        404
    );

    // Brought back: served again and exported again.
    std::fs::write(&path, config(&mock, 0..8, false)).unwrap();
    assert!(app.reload());
    assert_eq!(
        get(&format!("http://{}/u7/x", app.app_addr)).await.status,
        200
    );
    assert!(app.metrics.render().contains(r#"upstream="u7""#));
    app.shutdown().await;
}
