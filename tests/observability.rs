//! The admin listener (`/healthz`, `/readyz`, `/metrics`), the metrics exposition (names,
//! bounded labels, `promtool check metrics`), the access log, and the secret-leak test: a known
//! secret, TRACE logging, traffic with failures, and the secret's bytes found nowhere.

mod support;

use std::io::Write;
use std::process::{Command, Stdio};

use http::Request;
use support::*;

async fn proxy_with_traffic() -> (MockUpstream, Proxy) {
    let mock = MockUpstream::start(|req| match req.path() {
        "/v1/missing" => Reply::json(404, &serde_json::json!({"error": "no such thing"})),
        _ => Reply::text(200, "ok"),
    })
    .await;
    let dead = free_port();
    let proxy = Proxy::start(&format!(
        r#"
        upstreams:
          api:
            base_url: {}
          dead:
            base_url: http://127.0.0.1:{dead}
            retry: {{ max_attempts: 1 }}
        "#,
        mock.url("")
    ))
    .await;
    assert_eq!(
        proxy
            .get("/api/v1/customers/cus_UNIQUE123?email=label-leak%40example.com")
            .await
            .status,
        200
    );
    assert_eq!(
        proxy
            .request("POST", "/api/v1/customers", &[], "a=1")
            .await
            .status,
        200
    );
    assert_eq!(proxy.get("/api/v1/missing").await.status, 404);
    assert_eq!(proxy.get("/zzz-unique-route/x").await.status, 404);
    assert_eq!(proxy.get("/dead/v1").await.status, 502);
    assert_eq!(
        proxy.request("BREW", "/api/v1/pot", &[], "").await.status,
        200
    );
    (mock, proxy)
}

#[tokio::test]
async fn health_and_readiness_endpoints() {
    let mock = MockUpstream::ok().await;
    let proxy = Proxy::start(&format!(
        "upstreams:\n  api:\n    base_url: {}\n",
        mock.url("")
    ))
    .await;
    let health = get(&proxy.admin_url("/healthz")).await;
    assert_eq!(health.status, 200);
    let ready = get(&proxy.admin_url("/readyz")).await;
    assert_eq!(ready.status, 200, "ready once App::start returned");
    assert_eq!(get(&proxy.admin_url("/nope")).await.status, 404);
    // The admin port does not proxy.
    assert_eq!(get(&proxy.admin_url("/api/v1")).await.status, 404);
    mock.assert_untouched("admin listener");
    // Readiness is what the admin listener reports (drain turns it off; see tests/cli.rs).
    proxy.app().ready.set(false);
    assert_eq!(get(&proxy.admin_url("/readyz")).await.status, 503);
    assert_eq!(get(&proxy.admin_url("/healthz")).await.status, 200);
    proxy.shutdown().await;
}

#[tokio::test]
async fn metrics_expose_the_contract_names() {
    let (_mock, proxy) = proxy_with_traffic().await;
    let response = get(&proxy.admin_url("/metrics")).await;
    assert_eq!(response.status, 200);
    assert!(
        response
            .header("content-type")
            .is_some_and(|ct| ct.starts_with("text/plain")),
        "{:?}",
        response.header("content-type")
    );
    let text = response.text();
    for needle in [
        "# TYPE outpost_requests_total counter",
        r#"outpost_requests_total{upstream="api",method="GET",status="200"} 1"#,
        r#"outpost_requests_total{upstream="api",method="POST",status="200"} 1"#,
        r#"outpost_requests_total{upstream="api",method="GET",status="404"} 1"#,
        r#"outpost_requests_total{upstream="dead",method="GET",status="502"} 1"#,
        "# TYPE outpost_request_duration_seconds histogram",
        r#"outpost_request_duration_seconds_bucket{upstream="api",le="+Inf"} 4"#,
        r#"outpost_request_duration_seconds_count{upstream="api"} 4"#,
        "# TYPE outpost_in_flight_requests gauge",
        r#"outpost_in_flight_requests{upstream="api"} 0"#,
        r#"outpost_upstream_attempts_total{upstream="dead",outcome="connect_error"} 1"#,
        &format!(
            "outpost_build_info{{version=\"{}\"}} 1",
            env!("CARGO_PKG_VERSION")
        ),
    ] {
        assert!(text.contains(needle), "missing `{needle}` in:\n{text}");
    }
    // Unknown routes are counted, but never under their path.
    assert!(
        text.lines()
            .any(|l| l.starts_with("outpost_requests_total{")
                && l.contains(r#"method="GET",status="404""#)
                && !l.contains(r#"upstream="api""#)),
        "{text}"
    );
    // Non-standard methods are folded into one label value.
    assert!(text.contains(r#"method="OTHER""#), "{text}");
}

#[tokio::test]
async fn metric_labels_are_bounded() {
    let (_mock, proxy) = proxy_with_traffic().await;
    let text = get(&proxy.admin_url("/metrics")).await.text();
    for leak in [
        "cus_UNIQUE123",
        "label-leak",
        "zzz-unique-route",
        "/v1",
        "BREW",
        "email",
    ] {
        assert!(
            !text.contains(leak),
            "`{leak}` must not be a label value:\n{text}"
        );
    }
}

/// `promtool check metrics` (Debian package `prometheus`) lints the exposition.
#[tokio::test]
async fn metrics_pass_promtool_check() {
    let (_mock, proxy) = proxy_with_traffic().await;
    let text = get(&proxy.admin_url("/metrics")).await.text();
    let child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn();
    let mut child = match child {
        Ok(child) => child,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => panic!(
            "promtool is not installed: install it with `apt-get install -y prometheus` \
             (CI does this in .ci/run); this test never skips"
        ),
        Err(e) => panic!("cannot run promtool: {e}"),
    };
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "promtool check metrics failed ({}):\n{}{}\n--- exposition ---\n{text}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

const CANARY_ENV: &str = "sk_live_SECRET_CANARY_9f8e7d";
const CANARY_FILE: &str = "sk_live_FILE_CANARY_3c2b1a";
const CANARY_QUERY: &str = "QUERY_CANARY_77aa55";
const CANARY_BASIC: &str = "BASIC_PASSWORD_CANARY_42";

/// The canaries in every form they could leak in: raw, base64 (basic auth), percent-encoded.
fn canaries() -> Vec<String> {
    use base64::Engine;
    let basic = base64::engine::general_purpose::STANDARD.encode(format!("AC_user:{CANARY_BASIC}"));
    vec![
        CANARY_ENV.to_string(),
        CANARY_FILE.to_string(),
        CANARY_QUERY.to_string(),
        CANARY_BASIC.to_string(),
        basic,
        // Distinctive fragments, in case a value is truncated or split.
        "SECRET_CANARY".to_string(),
        "FILE_CANARY".to_string(),
    ]
}

fn assert_no_canary(what: &str, haystack: &[u8]) {
    let text = String::from_utf8_lossy(haystack);
    for canary in canaries() {
        if let Some(at) = text.find(&canary) {
            let start = text[..at].rfind('\n').map_or(0, |i| i + 1);
            let end = text[at..].find('\n').map_or(text.len(), |i| at + i);
            panic!("secret `{canary}` leaked in {what}:\n{}", &text[start..end]);
        }
    }
}

fn answer_bytes(answer: &Answer) -> Vec<u8> {
    let mut out = format!("{} {:?}\n", answer.status, answer.headers).into_bytes();
    out.extend_from_slice(&answer.body);
    out
}

fn raw_bytes(response: &RawResponse) -> Vec<u8> {
    let mut out = format!("{} {:?}\n", response.status, response.headers).into_bytes();
    out.extend_from_slice(&response.body);
    out
}

/// The whole leak test on the real binary: TRACE logs on stderr, traffic of every kind
/// (success, upstream 401, unreachable, timeout, refused requests, unknown routes, HTTP/2),
/// then SIGTERM; the canaries must appear in no log line, no response, no metric and not in
/// `outpost check` output.
#[tokio::test]
async fn secrets_never_leak_into_json_logs_responses_metrics_or_check() {
    leak_scenario(None).await;
}

/// The same with the human log format (`OUTPOST_LOG_FORMAT=pretty`).
#[tokio::test]
async fn secrets_never_leak_into_pretty_logs() {
    leak_scenario(Some("pretty")).await;
}

async fn leak_scenario(format: Option<&str>) {
    let ok = MockUpstream::ok().await;
    let denied = MockUpstream::start(|_| {
        Reply::with(
            401,
            &[
                ("content-type", "application/json"),
                ("www-authenticate", "Bearer realm=\"api\""),
            ],
            r#"{"error":{"message":"Invalid API Key provided"}}"#,
        )
    })
    .await;
    let slow = MockUpstream::start(|_| Reply::Never).await;
    let dead = free_port();
    let dir = TempDir::new("leak");
    let key_file = dir.write("stripe-key", format!("{CANARY_FILE}\n"));
    let pass_file = dir.write("basic-pass", CANARY_BASIC);
    let yaml = format!(
        r#"
        drain_timeout: 2s
        upstreams:
          ok:
            base_url: {ok}
            auth: {{ type: bearer, token: "${{env:OUTPOST_TEST_CANARY}}" }}
          denied:
            base_url: {denied}
            auth: {{ type: bearer, token: "${{file:{key_file}}}" }}
            retry: {{ max_attempts: 1 }}
          dead:
            base_url: http://127.0.0.1:{dead}
            auth: {{ type: query, name: key, value: {CANARY_QUERY} }}
            retry: {{ max_attempts: 1 }}
          slow:
            base_url: {slow}
            auth: {{ type: header, name: X-Api-Key, value: "Token ${{env:OUTPOST_TEST_CANARY}}" }}
            attempt_timeout: 200ms
            retry: {{ max_attempts: 1 }}
          basic:
            base_url: {ok}
            auth: {{ type: basic, username: AC_user, password: "${{file:{pass_file}}}" }}
          h2:
            base_url: {ok}
            http: http2
            auth: {{ type: bearer, token: "${{file:{key_file}}}" }}
          on_cluster:
            base_url: {ok}
            rate_limit: {{ requests_per_second: 100, shared: {{ redis_cluster: ["redis://:{CANARY_BASIC}@127.0.0.1:{dead}"] }} }}
          on_sentinel:
            base_url: {ok}
            rate_limit: {{ requests_per_second: 100, shared: {{ redis_sentinel: {{ master: m, nodes: ["redis://:{CANARY_BASIC}@127.0.0.1:{dead}"], password: "${{env:OUTPOST_TEST_CANARY}}" }} }} }}
          tokens:
            base_url: {ok}
            auth: {{ type: oauth2_refresh_token, token_url: "{ok}/token", client_id: app, refresh_token: "${{env:OUTPOST_TEST_CANARY}}", store: {{ redis_url: "redis://:{CANARY_BASIC}@127.0.0.1:{dead}" }} }}
        "#,
        ok = ok.url(""),
        denied = denied.url(""),
        slow = slow.url(""),
        key_file = key_file.display(),
        pass_file = pass_file.display(),
    );
    let mut env = vec![
        ("OUTPOST_TEST_CANARY", CANARY_ENV),
        ("OUTPOST_LOG", "trace"),
    ];
    if let Some(format) = format {
        env.push(("OUTPOST_LOG_FORMAT", format));
    }
    let mut binary = Binary::start_in(dir, &yaml, &env).await;
    let mut seen: Vec<(String, Vec<u8>)> = Vec::new();
    let client = http1_client();
    let h2 = h2c_client();
    let app_auth = [
        ("authorization", "Bearer app-placeholder"),
        ("x-api-key", "app-key"),
    ];
    for (label, http2, method, path, expected) in [
        ("success", false, "GET", "/ok/v1/customers?limit=1", 200),
        ("success POST", false, "POST", "/ok/v1/customers", 200),
        ("upstream 401", false, "GET", "/denied/v1/charges", 401),
        ("unreachable", false, "GET", "/dead/v1/x?key=app", 502),
        ("timeout", false, "GET", "/slow/v1/x", 504),
        ("basic", false, "GET", "/basic/v1/x", 200),
        ("unknown", false, "GET", "/nope/v1", 404),
        ("dot segment", false, "GET", "/ok/%2e%2e/denied", 400),
        ("h2c client", true, "POST", "/ok/v1/h2", 200),
        ("h2 upstream", false, "GET", "/h2/v1/x", 200),
        ("redis cluster down", false, "GET", "/on_cluster/v1/x", 200),
        (
            "redis sentinel down",
            false,
            "GET",
            "/on_sentinel/v1/x",
            200,
        ),
        ("token store down", false, "GET", "/tokens/v1/x", 503),
    ] {
        let mut req = Request::builder().method(method).uri(binary.url(path));
        for (name, value) in app_auth {
            req = req.header(name, value);
        }
        let req = req.body(full("name=x&email=y")).unwrap();
        let answer = send(if http2 { &h2 } else { &client }, req).await;
        assert_eq!(
            answer.status.as_u16(),
            expected,
            "{label}: {}",
            answer.text()
        );
        seen.push((format!("{label} ({method} {path})"), answer_bytes(&answer)));
    }
    for (label, raw) in [
        ("absolute-form", "GET http://evil.example/ok/x HTTP/1.1\r\nHost: evil.example\r\nConnection: close\r\n\r\n".to_string()),
        ("TE + CL", "POST /ok/x HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n".to_string()),
        ("CONNECT", "CONNECT evil.example:443 HTTP/1.1\r\nHost: evil.example:443\r\n\r\n".to_string()),
        ("oversized head", format!("GET /ok/x HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n", "b".repeat(70 * 1024))),
    ] {
        let response = raw_request(binary.app_addr, raw.as_bytes()).await;
        assert!(response.status >= 400, "{label}: {response:?}");
        seen.push((label.to_string(), raw_bytes(&response)));
    }
    // The credentials did reach the upstreams (so the test is not vacuous).
    assert!(ok
        .requests()
        .iter()
        .any(|r| r.header("authorization") == Some(&format!("Bearer {CANARY_ENV}"))));
    assert!(slow
        .requests()
        .iter()
        .any(|r| r.header("x-api-key") == Some(&format!("Token {CANARY_ENV}"))));
    assert_eq!(
        denied.only_request().header("authorization"),
        Some(format!("Bearer {CANARY_FILE}").as_str())
    );

    let metrics = get(&binary.admin_url("/metrics")).await;
    assert_eq!(metrics.status, 200);
    seen.push(("/metrics".into(), answer_bytes(&metrics)));
    for path in ["/healthz", "/readyz", "/nope"] {
        seen.push((
            path.into(),
            answer_bytes(&get(&binary.admin_url(path)).await),
        ));
    }

    binary.signal("TERM");
    let status = binary.wait().await;
    assert!(status.success(), "exit: {status}");
    // Readers finish when the pipes close at exit.
    let stderr = guard("stderr drained", async {
        loop {
            let text = binary.stderr.bytes();
            if String::from_utf8_lossy(&text).contains("stopped") {
                return text;
            }
            tokio::task::yield_now().await;
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    })
    .await;
    let stdout = binary.stdout.bytes();

    // The capture is real: TRACE lines from the stack and one access line per request.
    let log = String::from_utf8_lossy(&stderr);
    assert!(
        log.contains("TRACE"),
        "OUTPOST_LOG=trace produced no TRACE lines"
    );
    assert!(
        log.lines().count() > 50,
        "suspiciously few log lines:\n{log}"
    );
    assert!(log.contains("outpost::access"), "no access log:\n{log}");
    assert!(
        log.contains("/ok/v1/customers") && log.contains("/denied/v1/charges"),
        "request paths are logged (so the capture sees request data)"
    );
    for what in ["shared rate limit", "refresh token store"] {
        assert!(
            log.contains(&format!("{what}: redis unreachable")),
            "the {what}'s unreachable Redis (URL with a password) was logged:\n{log}"
        );
    }

    for (label, bytes) in &seen {
        assert_no_canary(&format!("the response to {label}"), bytes);
    }
    assert_no_canary("stderr (TRACE logs)", &stderr);
    assert_no_canary("stdout", &stdout);

    // `outpost check` on the same config prints the summary, never a secret.
    let config = binary.config_path.display().to_string();
    let check = outpost(&["check", "-c", &config], &env, None).await;
    assert_eq!(check.code, Some(0), "{check:?}");
    assert!(check.stdout.contains("bearer"), "{}", check.stdout);
    assert_no_canary("`outpost check` stdout", check.stdout.as_bytes());
    assert_no_canary("`outpost check` stderr", check.stderr.as_bytes());
}

/// A secret that cannot go into a header is an error that names the field, not the value.
#[tokio::test]
async fn check_errors_about_secrets_never_show_the_value() {
    let dir = TempDir::new("leak-check");
    let bad = dir.write("bad-key", format!("{CANARY_FILE} with\u{7f}control"));
    let config = dir.write(
        "proxy.yaml",
        format!(
            "version: 1\nupstreams:\n  a:\n    base_url: https://a.example.com\n    auth: {{ type: bearer, token: \"${{file:{}}}\" }}\n  b:\n    base_url: https://b.example.com\n    auth: {{ type: header, name: X-Key, value: \"${{env:OUTPOST_TEST_CANARY}}\" }}\n",
            bad.display()
        ),
    );
    let env = [(
        "OUTPOST_TEST_CANARY",
        "sk_live_SECRET_CANARY_9f8e7d\r\nX-Injected: 1",
    )];
    let check = outpost(&["check", "-c", &config.display().to_string()], &env, None).await;
    assert_eq!(check.code, Some(1), "{check:?}");
    assert!(
        check.stderr.contains("upstreams.a.auth.token"),
        "{}",
        check.stderr
    );
    assert!(
        check.stderr.contains("upstreams.b.auth.value"),
        "{}",
        check.stderr
    );
    assert_no_canary("`outpost check` stderr", check.stderr.as_bytes());
    assert_no_canary("`outpost check` stdout", check.stdout.as_bytes());
}

#[tokio::test]
async fn access_log_has_one_line_per_request_with_the_contract_fields() {
    let mock = MockUpstream::start(|req| match req.path() {
        "/v1/missing" => Reply::status(404),
        _ => Reply::text(200, "ok"),
    })
    .await;
    let yaml = format!("upstreams:\n  api:\n    base_url: {}\n", mock.url(""));
    let mut binary = Binary::start(&yaml, &[]).await;
    let client = http1_client();
    for (path, id) in [
        (
            "/api/v1/customers?email=query-must-not-be-logged",
            "req-log-1",
        ),
        ("/api/v1/missing", "req-log-2"),
        ("/unknown/v1", "req-log-3"),
    ] {
        let req = Request::get(binary.url(path))
            .header("x-request-id", id)
            .body(empty())
            .unwrap();
        send(&client, req).await;
    }
    binary.signal("TERM");
    assert!(binary.wait().await.success());
    let log = guard("stderr drained", async {
        loop {
            let text = binary.stderr.text();
            if text.contains("stopped") {
                return text;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    })
    .await;
    let access: Vec<serde_json::Value> = log
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["target"] == "outpost::access")
        .collect();
    for (id, upstream, path, status) in [
        ("req-log-1", "api", "/api/v1/customers", 200),
        ("req-log-2", "api", "/api/v1/missing", 404),
        ("req-log-3", "unknown", "/unknown/v1", 404),
    ] {
        let lines: Vec<_> = access.iter().filter(|v| v["request_id"] == id).collect();
        assert_eq!(lines.len(), 1, "one access line for {id}:\n{log}");
        let line = lines[0];
        assert_eq!(line["upstream"], upstream, "{line}");
        assert_eq!(line["method"], "GET", "{line}");
        assert_eq!(line["path"], path, "{line}");
        assert_eq!(line["status"], status, "{line}");
        assert!(line["attempts"].is_number(), "{line}");
        assert!(
            line.get("duration_ms").is_some_and(|d| d.is_number()),
            "{line}"
        );
    }
    assert!(
        !log.contains("query-must-not-be-logged"),
        "the query string was logged"
    );
}
