//! The `outpost` binary as a user runs it: help texts, `check` (summary table, errors located
//! as `file:line:col: path: message`), config discovery (`-c`, `$OUTPOST_CONFIG`,
//! `./proxy.yaml`), SIGTERM drain, `demo` (its printed curl commands work), `mock`.

mod support;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::{Request, Response};
use support::*;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use tokio::net::TcpStream;
use tokio::sync::oneshot;

#[tokio::test]
async fn help_for_every_command_says_what_it_does() {
    let top = outpost(&["--help"], &[], None).await;
    assert_eq!(top.code, Some(0), "{top:?}");
    for needle in [
        "sidecar",
        "run",
        "check",
        "demo",
        "mock",
        "--config",
        "OUTPOST_CONFIG",
    ] {
        assert!(
            top.stdout.contains(needle),
            "`outpost --help` lacks `{needle}`:\n{}",
            top.stdout
        );
    }
    for (command, needles) in [
        ("run", &["Serve", "SIGTERM", "--config"][..]),
        ("check", &["Validate", "secret", "file:line:col"][..]),
        ("demo", &["mock", "curl", "--listen", "--admin"][..]),
        (
            "mock",
            &[
                "mock upstream",
                "--profile",
                "stripe",
                "sendgrid",
                "--listen",
            ][..],
        ),
    ] {
        let help = outpost(&[command, "--help"], &[], None).await;
        assert_eq!(help.code, Some(0), "{command} --help: {help:?}");
        for needle in needles {
            assert!(
                help.stdout.contains(needle),
                "`outpost {command} --help` lacks `{needle}`:\n{}",
                help.stdout
            );
        }
    }
    let version = outpost(&["--version"], &[], None).await;
    assert_eq!(version.code, Some(0));
    assert!(version.stdout.contains(env!("CARGO_PKG_VERSION")));
    let unknown = outpost(&["frobnicate"], &[], None).await;
    assert_eq!(
        unknown.code,
        Some(2),
        "clap usage errors exit 2: {unknown:?}"
    );
}

const GOOD: &str = r#"version: 1
listen: 127.0.0.1:8080
admin_listen: 127.0.0.1:9090
upstreams:
  stripe:
    base_url: https://api.stripe.com
    auth:
      type: bearer
      token: ${env:OUTPOST_TEST_STRIPE_KEY}
    headers:
      Stripe-Version: "2024-06-20"
  sendgrid:
    preset: sendgrid
    auth: { token: "${env:OUTPOST_TEST_SENDGRID_KEY}" }
  partner:
    base_url: https://partner.example.com/api/v2
    auth: { type: basic, username: acct, password: "${env:OUTPOST_TEST_SENDGRID_KEY}" }
  maps:
    base_url: https://maps.example.com
    auth: { type: query, name: key, value: "${env:OUTPOST_TEST_STRIPE_KEY}" }
"#;

const KEYS: [(&str, &str); 2] = [
    ("OUTPOST_TEST_STRIPE_KEY", "sk_test_check_secret_value"),
    ("OUTPOST_TEST_SENDGRID_KEY", "SG.check_secret_value"),
];

#[tokio::test]
async fn check_prints_the_summary_table_for_a_good_config() {
    let dir = TempDir::new("check-good");
    let path = dir.write("good.yaml", GOOD).display().to_string();
    let run = outpost(&["check", "-c", &path], &KEYS, None).await;
    assert_eq!(run.code, Some(0), "{run:?}");
    let out = &run.stdout;
    assert!(out.contains(&format!("{path}: valid")), "{out}");
    let header = out
        .lines()
        .find(|l| l.contains("upstream") && l.contains("route"))
        .unwrap_or_else(|| panic!("no table header:\n{out}"));
    for column in ["upstream", "route", "base url", "auth"] {
        assert!(
            header.contains(column),
            "column `{column}` missing: {header}"
        );
    }
    for (name, route, base, auth) in [
        ("stripe", "/stripe/", "https://api.stripe.com", "bearer"),
        (
            "sendgrid",
            "/sendgrid/",
            "https://api.sendgrid.com",
            "bearer",
        ),
        (
            "partner",
            "/partner/",
            "https://partner.example.com/api/v2",
            "basic",
        ),
        ("maps", "/maps/", "https://maps.example.com", "query"),
    ] {
        let row = out
            .lines()
            .find(|l| l.trim_start().starts_with(&format!("{name} ")))
            .unwrap_or_else(|| panic!("no row for {name}:\n{out}"));
        for cell in [route, base, auth] {
            assert!(row.contains(cell), "row for {name} lacks `{cell}`: {row}");
        }
    }
    for (_, secret) in KEYS {
        assert!(
            !out.contains(secret) && !run.stderr.contains(secret),
            "secret printed"
        );
    }
}

/// One broken config and where its error must point.
struct Broken {
    name: &'static str,
    yaml: &'static str,
    line: usize,
    column: usize,
    path: &'static str,
    message: &'static str,
}

const BROKEN: &[Broken] = &[
    Broken {
        name: "unknown key",
        yaml: "version: 1\nupstreams:\n  stripe:\n    base_url: https://api.stripe.com\n    headers: {}\n    timout: 5s\n",
        line: 6,
        column: 5,
        path: "upstreams.stripe",
        message: "unknown field `timout`",
    },
    Broken {
        name: "bad duration",
        yaml: "version: 1\nupstreams:\n  stripe:\n    base_url: https://api.stripe.com\n    attempt_timeout: 5 seconds\n",
        line: 5,
        column: 22,
        path: "upstreams.stripe.attempt_timeout",
        message: "duration",
    },
    Broken {
        name: "bad URL",
        yaml: "version: 1\nupstreams:\n  ok:\n    base_url: https://ok.example.com\n  bad:\n    base_url: \"ht!tp://x y\"\n",
        line: 6,
        column: 15,
        path: "upstreams.bad.base_url",
        message: "not a valid URL",
    },
    Broken {
        name: "bad header name",
        yaml: "version: 1\nupstreams:\n  hdr:\n    base_url: https://h.example.com\n    headers:\n      X-Fine: ok\n      \"Bad Header\": x\n",
        line: 7,
        column: 7,
        path: "upstreams.hdr.headers.Bad Header",
        message: "not a valid header name",
    },
    Broken {
        name: "duplicate upstream key",
        yaml: "version: 1\nupstreams:\n  first:\n    base_url: https://a.example.com\n  stripe:\n    base_url: https://b.example.com\n  stripe:\n    base_url: https://c.example.com\n",
        line: 7,
        column: 3,
        path: "upstreams",
        message: "duplicate key `stripe`",
    },
    Broken {
        name: "duplicate host",
        yaml: "version: 1\nupstreams:\n  a:\n    base_url: https://a.example.com\n    hosts: [api.local]\n  b:\n    base_url: https://b.example.com\n    hosts:\n      - other.local\n      - api.local\n",
        line: 10,
        column: 9,
        path: "upstreams.b.hosts[1]",
        message: "already routed to upstream `a`",
    },
    Broken {
        name: "unresolved env reference",
        yaml: "version: 1\nupstreams:\n  env:\n    base_url: https://e.example.com\n    auth:\n      type: bearer\n      token: \"Bearer-ish ${env:OUTPOST_TEST_SURELY_UNSET_VAR}\"\n",
        line: 7,
        column: 14,
        path: "upstreams.env.auth.token",
        message: "OUTPOST_TEST_SURELY_UNSET_VAR",
    },
    Broken {
        name: "unreadable secret file",
        yaml: "version: 1\nupstreams:\n  f:\n    base_url: https://f.example.com\n    auth: { type: bearer, token: \"${file:/nonexistent/outpost/secret}\" }\n",
        line: 5,
        column: 34,
        path: "upstreams.f.auth.token",
        message: "/nonexistent/outpost/secret",
    },
];

#[tokio::test]
async fn check_locates_each_error_at_its_line_and_column() {
    let dir = TempDir::new("check-bad");
    let mut failures = Vec::new();
    for (i, case) in BROKEN.iter().enumerate() {
        let path = dir
            .write(&format!("bad{i}.yaml"), case.yaml)
            .display()
            .to_string();
        let run = outpost(&["check", "-c", &path], &[], None).await;
        assert_eq!(run.code, Some(1), "{}: {run:?}", case.name);
        assert!(
            run.stdout.is_empty() || !run.stdout.contains("valid\n"),
            "{}",
            case.name
        );
        // Every error line has the `file:line:col: ` shape.
        let errors: Vec<&str> = run
            .stderr
            .lines()
            .filter(|l| !l.starts_with(&format!("{path}: invalid")))
            .collect();
        assert!(
            !errors.is_empty(),
            "{}: no located error in {:?}",
            case.name,
            run.stderr
        );
        for line in &errors {
            let rest = &line[path.len() + 1..];
            let mut parts = rest.splitn(3, ':');
            let l = parts.next().unwrap();
            let c = parts.next().unwrap_or("");
            assert!(
                l.parse::<usize>().is_ok() && c.parse::<usize>().is_ok(),
                "{}: `{line}` is not `file:line:col: message`",
                case.name
            );
        }
        let expected = format!("{path}:{}:{}: {}: ", case.line, case.column, case.path);
        let hit = errors
            .iter()
            .any(|l| l.starts_with(&expected) && l.contains(case.message));
        if !hit {
            failures.push(format!(
                "{}: expected a line starting `{expected}` containing `{}`, got:\n{}",
                case.name, case.message, run.stderr
            ));
        }
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n\n"));
}

#[tokio::test]
async fn config_is_found_by_flag_then_env_then_the_working_directory() {
    let dir = TempDir::new("discovery");
    let good = dir.write("good.yaml", GOOD).display().to_string();
    let bad = dir
        .write("bad.yaml", "version: 1\nupstreams:\n  x: {}\n")
        .display()
        .to_string();
    fn with(config: &str) -> Vec<(&str, &str)> {
        let mut env = KEYS.to_vec();
        env.push(("OUTPOST_CONFIG", config));
        env
    }

    let run = outpost(&["check"], &with(&good), None).await;
    assert_eq!(run.code, Some(0), "OUTPOST_CONFIG is honoured: {run:?}");
    assert!(
        run.stdout.starts_with(&format!("{good}: valid")),
        "{}",
        run.stdout
    );

    let run = outpost(&["check"], &with(&bad), None).await;
    assert_eq!(run.code, Some(1), "{run:?}");
    assert!(run.stderr.contains(&format!("{bad}:3:")), "{}", run.stderr);

    let run = outpost(&["check", "-c", &good], &with(&bad), None).await;
    assert_eq!(run.code, Some(0), "-c wins over OUTPOST_CONFIG: {run:?}");

    let cwd = TempDir::new("cwd");
    cwd.write("proxy.yaml", GOOD);
    let run = outpost(&["check"], &KEYS, Some(&cwd.path)).await;
    assert_eq!(run.code, Some(0), "./proxy.yaml is the default: {run:?}");
    assert!(
        run.stdout.starts_with("proxy.yaml: valid"),
        "{}",
        run.stdout
    );

    let empty = TempDir::new("nocfg");
    let run = outpost(&["check"], &[], Some(&empty.path)).await;
    assert_eq!(run.code, Some(1), "{run:?}");
    assert!(run.stderr.contains("proxy.yaml"), "{}", run.stderr);
}

/// `outpost` with no subcommand serves, reading `$OUTPOST_CONFIG`.
#[tokio::test]
async fn plain_outpost_serves_the_config_named_by_the_environment() {
    let mock = MockUpstream::ok().await;
    let dir = TempDir::new("env-run");
    let (text, ports) = binary_config(&format!(
        "upstreams:\n  api:\n    base_url: {}\n",
        mock.url("")
    ));
    let path = dir.write("elsewhere.yaml", text);
    let config = path.display().to_string();
    let mut binary = Binary::launch(dir, path, &[], &[("OUTPOST_CONFIG", &config)], ports).await;
    assert_eq!(get(&binary.url("/api/v1/x")).await.status, 200);
    assert_eq!(mock.only_request().uri, "/v1/x");
    binary.signal("TERM");
    assert!(binary.wait().await.success());
}

type Slot = Arc<Mutex<Option<oneshot::Sender<Response<TestBody>>>>>;

/// A mock whose answer the test releases.
async fn held_mock() -> (MockUpstream, Slot) {
    let slot: Slot = Arc::default();
    let held = slot.clone();
    let mock = MockUpstream::start(move |_| {
        let (tx, rx) = oneshot::channel();
        *held.lock().unwrap() = Some(tx);
        Reply::Wait(rx)
    })
    .await;
    (mock, slot)
}

#[tokio::test]
async fn sigterm_turns_readiness_off_refuses_new_connections_and_drains() {
    let (mock, slot) = held_mock().await;
    let mut binary = Binary::start(
        &format!(
            "drain_timeout: 15s\nupstreams:\n  api:\n    base_url: {}\n",
            mock.url("")
        ),
        &[],
    )
    .await;
    let client = http1_client();
    let req = Request::get(binary.url("/api/v1/slow"))
        .body(empty())
        .unwrap();
    let in_flight = tokio::spawn(async move { send(&client, req).await });
    mock.next_request().await;

    binary.signal("TERM");
    let readyz = binary.admin_url("/readyz");
    poll_until("/readyz turns 503", || async {
        try_status(&readyz).await == Some(503)
    })
    .await;
    let app = binary.app_addr;
    poll_until("new connections are refused", || async {
        matches!(TcpStream::connect(app).await, Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused)
    })
    .await;
    // Still draining: the admin listener answers, the request is still in flight.
    assert_eq!(try_status(&readyz).await, Some(503));
    assert_eq!(try_status(&binary.admin_url("/healthz")).await, Some(200));
    assert!(
        !in_flight.is_finished(),
        "the in-flight request must not be cut off"
    );
    assert!(
        binary.child.try_wait().unwrap().is_none(),
        "exited before the drain finished"
    );

    let tx = slot.lock().unwrap().take().expect("held request");
    let _ = tx.send(response(
        200,
        &[("content-type", "text/plain")],
        full("finished after SIGTERM"),
    ));
    let answer = guard("in-flight request", in_flight).await.unwrap();
    assert_eq!(answer.status, 200);
    assert_eq!(answer.text(), "finished after SIGTERM");
    let status = binary.wait().await;
    assert_eq!(status.code(), Some(0), "exit status after drain: {status}");
}

#[tokio::test]
async fn drain_is_bounded_by_drain_timeout() {
    let (mock, _slot) = held_mock().await;
    let mut binary = Binary::start(
        &format!(
            "drain_timeout: 300ms\nupstreams:\n  api:\n    base_url: {}\n",
            mock.url("")
        ),
        &[],
    )
    .await;
    let client = http1_client();
    let req = Request::get(binary.url("/api/v1/never"))
        .body(empty())
        .unwrap();
    let in_flight = tokio::spawn(async move { client.request(req).await });
    mock.next_request().await;
    let started = tokio::time::Instant::now();
    binary.signal("TERM");
    let status = binary.wait().await;
    assert_eq!(status.code(), Some(0), "{status}");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "exit took {:?} with drain_timeout 300ms",
        started.elapsed()
    );
    drop(in_flight);
}

/// Connections that never sent a byte do not hold the drain (found by the Redis-state work:
/// each pre-opened idle connection kept SIGTERM waiting for the header read timeout): they are
/// closed at once, while a request in flight still finishes (the test above).
#[tokio::test]
async fn idle_connections_do_not_hold_the_drain() {
    let mock = MockUpstream::ok().await;
    let mut binary = Binary::start(
        &format!(
            "drain_timeout: 60s\nlimits: {{ header_read_timeout: 60s }}\nupstreams:\n  api:\n    base_url: {}\n",
            mock.url("")
        ),
        &[],
    )
    .await;
    let mut idle = Vec::new();
    for _ in 0..20 {
        idle.push(TcpStream::connect(binary.app_addr).await.unwrap());
    }
    // Accepted before the signal: a full request on a later connection has been served.
    assert_eq!(
        try_status(&binary.url("/api/v1/ping")).await,
        Some(200),
        "serving before the signal"
    );
    let sent = tokio::time::Instant::now();
    binary.signal("TERM");
    let status = binary.wait().await;
    assert_eq!(status.code(), Some(0), "{status}");
    assert!(
        sent.elapsed() < Duration::from_secs(30),
        "exit took {:?}: idle connections held the drain (header_read_timeout 60s)",
        sent.elapsed()
    );
    for mut conn in idle {
        let mut rest = Vec::new();
        let closed = conn.read_to_end(&mut rest).await;
        assert!(
            closed.is_err() || rest.is_empty(),
            "an idle connection got {rest:?}"
        );
    }
}

/// Split a shell line the way the demo's curl commands need: single and double quotes,
/// a `#` comment or a `|` pipe ends the command.
fn shell_words(line: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut in_word = false;
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            '\'' => {
                in_word = true;
                for q in chars.by_ref() {
                    if q == '\'' {
                        break;
                    }
                    word.push(q);
                }
            }
            '"' => {
                in_word = true;
                for q in chars.by_ref() {
                    if q == '"' {
                        break;
                    }
                    word.push(q);
                }
            }
            '#' | '|' if !in_word => break,
            c if c.is_whitespace() => {
                if in_word {
                    words.push(std::mem::take(&mut word));
                    in_word = false;
                }
            }
            c => {
                in_word = true;
                word.push(c);
            }
        }
    }
    if in_word {
        words.push(word);
    }
    words
}

/// A curl command line turned into a request (`-d` makes a form POST, `-H` adds a header).
fn curl_request(words: &[String]) -> (Request<TestBody>, String) {
    assert_eq!(words[0], "curl");
    let mut url = None;
    let mut data = Vec::new();
    let mut headers = Vec::new();
    let mut i = 1;
    while i < words.len() {
        match words[i].as_str() {
            "-d" | "--data" => {
                data.push(words[i + 1].clone());
                i += 1;
            }
            "-H" | "--header" => {
                let (name, value) = words[i + 1].split_once(':').expect("header");
                headers.push((name.trim().to_string(), value.trim().to_string()));
                i += 1;
            }
            flag if flag.starts_with('-') => {}
            other => url = Some(other.to_string()),
        }
        i += 1;
    }
    let url = url.expect("curl URL");
    let mut req = Request::builder()
        .method(if data.is_empty() { "GET" } else { "POST" })
        .uri(&url);
    if !data.is_empty()
        && !headers
            .iter()
            .any(|(n, _)| n.eq_ignore_ascii_case("content-type"))
    {
        req = req.header("content-type", "application/x-www-form-urlencoded");
    }
    for (name, value) in &headers {
        req = req.header(name, value);
    }
    (req.body(full(data.join("&"))).unwrap(), url)
}

#[tokio::test]
async fn demo_prints_curl_commands_that_work() {
    let mut child = tokio::process::Command::new(BIN)
        .args(["demo", "--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0"])
        .env_remove("OUTPOST_CONFIG")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn demo");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut printed = Vec::new();
    guard("demo banner", async {
        while let Some(line) = lines.next_line().await.expect("demo stdout") {
            let done = line.contains("Ctrl-C");
            printed.push(line);
            if done {
                return;
            }
        }
        panic!("demo exited early:\n{}", printed.join("\n"));
    })
    .await;
    let text = printed.join("\n");
    let proxy = printed
        .iter()
        .find_map(|l| {
            l.trim()
                .strip_prefix("proxy")
                .map(|rest| rest.split_whitespace().next().unwrap().to_string())
        })
        .unwrap_or_else(|| panic!("no proxy URL printed:\n{text}"));
    assert!(
        proxy.starts_with("http://127.0.0.1:") && !proxy.ends_with(":0"),
        "{proxy}"
    );

    // Join `\`-continued lines, keep the curl commands.
    let mut commands = Vec::new();
    let mut pending = String::new();
    for line in &printed {
        let line = line.trim();
        if pending.is_empty() && !line.starts_with("curl ") {
            continue;
        }
        if let Some(head) = line.strip_suffix('\\') {
            pending.push_str(head);
            pending.push(' ');
            continue;
        }
        pending.push_str(line);
        commands.push(shell_words(&std::mem::take(&mut pending)));
    }
    assert!(commands.len() >= 5, "too few curl commands:\n{text}");

    let client = http1_client();
    for (i, words) in commands.iter().enumerate() {
        let (req, url) = curl_request(words);
        let fault = words.iter().any(|w| w.contains("X-Mock-Fault"));
        let answer = send(&client, req).await;
        let expected = if fault {
            503
        } else if url.ends_with("/nope/v1/x") {
            404
        } else if url.contains("/sendgrid/") {
            202
        } else {
            200
        };
        assert_eq!(
            answer.status.as_u16(),
            expected,
            "`{}`: {}",
            words.join(" "),
            answer.text()
        );
        if i == 0 {
            assert!(url.starts_with(&proxy), "{url}");
            assert_eq!(answer.json()["object"], "customer", "{}", answer.text());
        }
        if fault {
            assert_eq!(answer.header("x-outpost-error"), Some("upstream_error"));
        }
        if expected == 404 {
            answer.assert_error(404, "unknown_upstream");
        }
        if url.ends_with("/metrics") {
            assert!(answer.text().contains("outpost_requests_total"));
        }
    }

    let pid = child.id().expect("demo running");
    send_signal(pid, "INT");
    let status = guard("demo exit", child.wait()).await.unwrap();
    assert!(status.success(), "demo exit: {status}");
}

#[tokio::test]
async fn mock_command_serves_one_profile() {
    let port = free_port();
    let mut child = tokio::process::Command::new(BIN)
        .args([
            "mock",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--profile",
            "sendgrid",
        ])
        .env("OUTPOST_MOCK_API_KEY", "SG.cli_test")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn mock");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let first = guard("mock banner", lines.next_line())
        .await
        .unwrap()
        .expect("banner");
    assert!(
        first.contains(&format!("http://127.0.0.1:{port}")),
        "{first}"
    );
    assert!(first.contains("sendgrid"), "{first}");
    assert_eq!(
        get(&format!("http://127.0.0.1:{port}/healthz"))
            .await
            .status,
        200
    );
    let mail = r#"{"personalizations":[{"to":[{"email":"a@example.com"}]}],"from":{"email":"b@example.com"},"subject":"hi","content":[{"type":"text/plain","value":"hello"}]}"#;
    let send_mail = |key: &str| {
        Request::post(format!("http://127.0.0.1:{port}/v3/mail/send"))
            .header("authorization", format!("Bearer {key}"))
            .header("content-type", "application/json")
            .body(full(mail))
            .unwrap()
    };
    assert_eq!(
        send(&http1_client(), send_mail("SG.cli_test")).await.status,
        202
    );
    assert_eq!(
        send(&http1_client(), send_mail("SG.wrong")).await.status,
        401
    );
    send_signal(child.id().unwrap(), "TERM");
    let status = guard("mock exit", child.wait()).await.unwrap();
    assert!(status.success(), "{status}");
}
