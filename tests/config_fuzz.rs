//! No panic and no unbounded work on any config input.
//!
//! * A mutation fuzzer takes `proxy.yaml` and two richer test configs, mutates them (numbers,
//!   units, types, keys, aliases, indentation, truncation, bytes that are not UTF-8, huge
//!   scalars) and runs the real `check` path (`config::load` of the file, then the summary)
//!   on each mutant; every mutant must give a config or `file:line:col` errors, never a panic.
//!   A share of the mutants is also written over a running Outpost's config and reloaded: the
//!   old config keeps serving whenever the mutant is invalid.
//! * The real binary: `check` and a running reload of the inputs the fuzzer once found
//!   (`timeout: 3000000000000000h3000000000000000h`), FIFOs and devices as secret files, deep
//!   nesting, non-UTF-8 text, huge header values.

mod support;

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use support::{get, outpost, poll_until, try_status, Binary, MockUpstream, Reply, TempDir};

/// Environment the corpus configs resolve their `${env:…}` references from.
const ENV: &[(&str, &str)] = &[
    ("STRIPE_API_KEY", "sk_test_fuzz"),
    ("SENDGRID_API_KEY", "SG.fuzz"),
    ("TWILIO_ACCOUNT_SID", "ACfuzz"),
    ("TWILIO_AUTH_TOKEN", "twilio-fuzz"),
    ("STRIPE_WEBHOOK_SECRET", "whsec_fuzz"),
    ("GITHUB_WEBHOOK_SECRET", "gh-fuzz"),
    ("FUZZ_TOKEN", "tok-fuzz"),
];

/// A config with most of the schema: every limit block, pools, OAuth, SigV4, signing,
/// breakers, shared limits, hosts, and one webhook of each scheme.
const RICH: &str = r#"version: 1
listen: 127.0.0.1:0
admin_listen: 127.0.0.1:0
webhook_listen: 127.0.0.1:0
drain_timeout: 2s
limits: { max_header_bytes: 32KiB, header_read_timeout: 5s, max_connections: 100, max_body_bytes: 2MiB }
webhook_limits: { body_read_timeout: 3s, idle_timeout: 20s, max_connections: 50 }
upstreams:
  stripe:
    preset: stripe
    auth: { token: "${env:STRIPE_API_KEY}" }
    headers: { Stripe-Version: "2024-06-20", X-Note: "Token ${env:FUZZ_TOKEN}" }
    timeout: 30s
    attempt_timeout: 10s
    connect_timeout: 3s
    rate_limit: { requests_per_second: 25, burst: 50, max_wait: 2s, max_in_flight: 64 }
    retry:
      max_attempts: 3
      base_delay: 100ms
      max_delay: 10s
      on_status: [429, 502, 503, 504]
      respect_retry_after: true
      max_retry_after: 30s
      idempotency_key: auto
      budget_percent: 20
      min_retries_per_second: 10
      max_body_bytes: 1MiB
    circuit_breaker: { consecutive_failures: 5, open_for: 30s }
    errors: normalize
    http: auto
    hosts: [stripe.outpost.local]
  pool:
    base_url: http://127.0.0.1:9/v1
    auth: { type: header, name: X-Api-Key, values: ["a-${env:FUZZ_TOKEN}", "b"] }
    rate_limit: { requests_per_minute: 600, shared: { redis_url: "redis://127.0.0.1:9", expected_replicas: 3, key_prefix: "fuzz:" } }
  oauth:
    base_url: https://api.example.com
    auth:
      type: oauth2_client_credentials
      token_url: https://auth.example.com/token
      client_id: cid
      client_secret: "${env:FUZZ_TOKEN}"
      scopes: [read, write]
      audience: api
      client_auth: body
      params: { resource: x }
  s3:
    base_url: https://s3.eu-west-1.amazonaws.com
    auth: { type: aws_sigv4, region: eu-west-1, service: s3, access_key_id: AKIA, secret_access_key: "${env:FUZZ_TOKEN}" }
  q:
    base_url: http://127.0.0.1:9
    auth: { type: query, name: key, value: v }
  basic:
    preset: twilio
    auth: { username: AC1, password: "${env:TWILIO_AUTH_TOKEN}" }
  signed:
    base_url: https://hooks.example.com
    auth: { type: hmac_signature, header: X-Signature, prefix: "sha256=", algorithm: sha512, encoding: base64, secret: s }
  std:
    base_url: https://hooks.example.com
    auth: { type: standard_webhooks, secret: "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw" }
webhooks:
  stripe: { path: /stripe, scheme: stripe, secrets: ["${env:STRIPE_WEBHOOK_SECRET}"], tolerance: 5m, max_body_bytes: 1MiB, forward_to: "http://127.0.0.1:9/s" }
  github: { path: /github, scheme: github, secrets: [gh], forward_to: "http://127.0.0.1:9/g" }
  svix: { path: /svix, scheme: standard_webhooks, secrets: ["whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"], forward_to: "http://127.0.0.1:9/x" }
  slack: { path: /slack, scheme: slack, secrets: [s], forward_to: "http://127.0.0.1:9/sl" }
  shopify: { path: /shopify, scheme: shopify, secrets: [s], forward_to: "http://127.0.0.1:9/sh" }
  twilio: { path: /twilio, scheme: twilio, public_url: "https://hooks.example.com/twilio", secrets: [t], forward_to: "http://127.0.0.1:9/t" }
  partner:
    path: /partner
    scheme: hmac
    header: X-Partner-Signature
    prefix: "sha256="
    algorithm: sha256
    encoding: hex
    timestamp_header: X-Partner-Timestamp
    secrets: [p]
    forward_to: http://127.0.0.1:9/p
"#;

/// Small, block style, with anchors and aliases already in use.
const ANCHORED: &str = r#"version: 1
listen: 127.0.0.1:0
admin_listen: 127.0.0.1:0
webhook_listen: 127.0.0.1:0
upstreams:
  a:
    base_url: http://127.0.0.1:9/a
    retry: &retry
      max_attempts: 2
      base_delay: 50ms
      max_delay: 1s
    timeout: 1h30m
  b:
    base_url: http://127.0.0.1:9/b
    retry: *retry
    rate_limit:
      requests_per_second: 0.5
      max_wait: 250ms
webhooks:
  g:
    path: /g
    scheme: github
    secrets:
      - one
      - two
    forward_to: http://127.0.0.1:9/g
"#;

/// xorshift64*: deterministic, so a failure names a reproducible case.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
    fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.below(items.len())]
    }
}

const NUMBERS: &[&str] = &[
    "0",
    "-1",
    "1",
    "65536",
    "4294967296",
    "18446744073709551615",
    "18446744073709551616",
    "99999999999999999999999999999999",
    "3000000000000000",
    "1e308",
    "-1e308",
    "0.0000001",
    ".nan",
    ".inf",
    "-.inf",
    "0x7fffffff",
    "1_000",
];
const UNITS: &[&str] = &[
    "ms", "s", "m", "h", "d", "", "KiB", "MiB", "GiB", "TiB", "KB", "B", "µs", "x",
];
const VALUES: &[&str] = &[
    "[]",
    "{}",
    "~",
    "null",
    "true",
    "\"\"",
    "[a, b]",
    "{a: 1}",
    "!!binary aGVsbG8=",
    "\"${env:UNSET_FUZZ_VAR}\"",
    "\"${file:/dev/zero}\"",
    "\"${file:/nonexistent/secret}\"",
    "\"${file:}\"",
    "\"${env:\"",
    "3000000000000000h3000000000000000h",
    "5124095576030431h5124095576030431h",
    "8760h1ms",
    "\"\\u0000\"",
    "\"line\\r\\nInjected: yes\"",
    "'🦀🦀🦀'",
    "http://user:pw@host",
    "ftp://x",
    "http://[::1",
    "/",
    "0.0.0.0:0",
    "[::]:99999",
];
const KEYS: &[&str] = &[
    "version",
    "listen",
    "limits",
    "webhook_limits",
    "upstreams",
    "webhooks",
    "base_url",
    "preset",
    "auth",
    "type",
    "token",
    "tokens",
    "headers",
    "timeout",
    "retry",
    "max_attempts",
    "rate_limit",
    "burst",
    "shared",
    "path",
    "scheme",
    "secrets",
    "tolerance",
    "max_body_bytes",
    "body_read_timeout",
    "unknown_key",
    "<<",
    "? complex",
    "\"quoted key\"",
];

/// Byte offsets where `pred` holds at a char boundary.
fn positions(text: &str, pred: impl Fn(&str) -> bool) -> Vec<usize> {
    text.char_indices()
        .map(|(i, _)| i)
        .filter(|&i| pred(&text[i..]))
        .collect()
}

/// One mutation of `text` (valid UTF-8 in, bytes out).
fn mutate(rng: &mut Rng, text: &str) -> Vec<u8> {
    let mut s = text.to_string();
    let lines: Vec<&str> = text.lines().collect();
    match rng.below(12) {
        // A number replaced.
        0 => {
            let at = positions(&s, |t| t.starts_with(|c: char| c.is_ascii_digit()));
            if let Some(&i) = at.get(rng.below(at.len())) {
                let end = s[i..]
                    .find(|c: char| !c.is_ascii_digit() && c != '.')
                    .map_or(s.len(), |e| i + e);
                s.replace_range(i..end, rng.pick(NUMBERS));
            }
        }
        // A unit replaced, or a duration made huge.
        1 => {
            let at = positions(&s, |t| {
                t.starts_with(|c: char| c.is_ascii_digit())
                    && t[1..].starts_with(|c: char| c.is_ascii_alphabetic())
            });
            if let Some(&i) = at.get(rng.below(at.len())) {
                let start = i + 1;
                let end = s[start..]
                    .find(|c: char| !c.is_ascii_alphabetic())
                    .map_or(s.len(), |e| start + e);
                let unit = rng.pick(UNITS).to_string();
                let repeat = if rng.below(3) == 0 {
                    format!("{unit}3000000000000000h3000000000000000h")
                } else {
                    unit
                };
                s.replace_range(start..end, &repeat);
            }
        }
        // A value's type changed.
        2 => {
            let at = positions(&s, |t| t.starts_with(": "));
            if let Some(&i) = at.get(rng.below(at.len())) {
                let start = i + 2;
                let end = s[start..]
                    .find(['\n', ',', '}'])
                    .map_or(s.len(), |e| start + e);
                s.replace_range(start..end, rng.pick(VALUES));
            }
        }
        // A key renamed.
        3 => {
            let at = positions(&s, |t| t.starts_with(':'));
            if let Some(&i) = at.get(rng.below(at.len())) {
                let start = s[..i]
                    .char_indices()
                    .rev()
                    .find(|(_, c)| !(c.is_alphanumeric() || *c == '_' || *c == '-'))
                    .map_or(0, |(p, c)| p + c.len_utf8());
                s.replace_range(start..i, rng.pick(KEYS));
            }
        }
        // A line deleted or duplicated.
        4 => {
            let n = rng.below(lines.len());
            let mut out: Vec<&str> = lines.clone();
            if rng.below(2) == 0 {
                out.remove(n);
            } else {
                out.insert(n, lines[n]);
            }
            s = out.join("\n");
        }
        // Aliases: a self-reference, an alias to a missing anchor, or a billion laughs.
        5 => match rng.below(3) {
            0 => {
                let at = positions(&s, |t| t.starts_with(": ") && !t.starts_with(": \n"));
                if let Some(&i) = at.get(rng.below(at.len())) {
                    s.insert_str(i + 2, "&fz ");
                    let at = positions(&s, |t| t.starts_with(": "));
                    if let Some(&j) = at.get(rng.below(at.len())) {
                        let start = j + 2;
                        let end = s[start..].find('\n').map_or(s.len(), |e| start + e);
                        s.replace_range(start..end, "*fz");
                    }
                }
            }
            1 => {
                let at = positions(&s, |t| t.starts_with(": "));
                if let Some(&i) = at.get(rng.below(at.len())) {
                    s.insert_str(i + 2, "*missing ");
                }
            }
            _ => {
                let mut bomb =
                    String::from("x0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n");
                for k in 1..12 {
                    bomb.push_str(&format!(
                        "x{k}: &a{k} [{}]\n",
                        vec![format!("*a{}", k - 1); 9].join(", ")
                    ));
                }
                s = format!("{bomb}{s}");
            }
        },
        // Indentation shifted on one line.
        6 => {
            let n = rng.below(lines.len());
            let mut out: Vec<String> = lines.iter().map(|l| l.to_string()).collect();
            if rng.below(2) == 0 {
                out[n] = format!("{}{}", " ".repeat(1 + rng.below(5)), out[n]);
            } else {
                out[n] = out[n].trim_start().to_string();
            }
            s = out.join("\n");
        }
        // Truncated anywhere.
        7 => {
            let at = positions(&s, |_| true);
            if let Some(&i) = at.get(rng.below(at.len())) {
                s.truncate(i);
            }
        }
        // Huge scalars and deep nesting.
        8 => {
            let at = positions(&s, |t| t.starts_with(": "));
            if let Some(&i) = at.get(rng.below(at.len())) {
                let big = match rng.below(4) {
                    0 => "a".repeat(100_000 + rng.below(1_000_000)),
                    1 => format!("{}{}", "[".repeat(10_000), "]".repeat(10_000)),
                    2 => format!("{}x", "- ".repeat(5_000)),
                    _ => format!("\"{}\"", "\\u00e9".repeat(20_000)),
                };
                s.insert_str(i + 2, &big);
            }
        }
        // Arbitrary Unicode and control characters.
        9 => {
            const ODD: &[&str] = &[
                "\0",
                "\u{FEFF}",
                "\t",
                "\r",
                "\u{7}",
                "🦀",
                "\u{10FFFF}",
                "ß",
                "\u{202E}",
                "{",
                "[",
                "'",
                "\"",
                "%",
                "&",
                "*",
                "!",
                "|",
                ">",
                "#",
                "---\n",
                "...\n",
            ];
            for _ in 0..1 + rng.below(4) {
                let at = positions(&s, |_| true);
                let i = at.get(rng.below(at.len())).copied().unwrap_or(0);
                s.insert_str(i, rng.pick(ODD));
            }
        }
        // A duration anywhere it fits as text.
        10 => {
            let at = positions(&s, |t| t.starts_with(": "));
            if let Some(&i) = at.get(rng.below(at.len())) {
                let start = i + 2;
                let end = s[start..].find('\n').map_or(s.len(), |e| start + e);
                let d = format!(
                    "{}{}{}{}",
                    rng.pick(NUMBERS),
                    rng.pick(UNITS),
                    rng.pick(NUMBERS),
                    rng.pick(UNITS)
                );
                s.replace_range(start..end, &d);
            }
        }
        // Bytes that are not UTF-8.
        _ => {
            let mut bytes = s.into_bytes();
            let i = rng.below(bytes.len() + 1);
            let bad: &[u8] = rng.pick(&[
                &b"\xff"[..],
                &b"\xc3"[..],
                &b"\xed\xa0\x80"[..],
                &b"\xf8\x88\x80\x80\x80"[..],
            ]);
            bytes.splice(i..i, bad.iter().copied());
            return bytes;
        }
    }
    s.into_bytes()
}

/// `config::load` and, when valid, the `check` summary: what `outpost check` runs.
fn check_path(path: &Path) -> Result<String, String> {
    match outpost::config::load(path) {
        Ok(config) => Ok(outpost::check::summary(&config)),
        Err(errors) => {
            for issue in &errors.0 {
                assert!(
                    issue.line >= 1 && issue.column >= 1,
                    "1-based positions: {issue}"
                );
            }
            let text = errors.to_string();
            for (_, secret) in ENV {
                assert!(!text.contains(secret), "an error shows a secret: {text}");
            }
            Err(text)
        }
    }
}

#[test]
fn mutated_configs_never_panic_the_check_path() {
    for (name, value) in ENV {
        std::env::set_var(name, value);
    }
    let dir = TempDir::new("fuzz");
    let proxy_yaml = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/proxy.yaml"))
        .expect("proxy.yaml");
    let corpus = [
        ("proxy.yaml", proxy_yaml.as_str()),
        ("rich", RICH),
        ("anchored", ANCHORED),
    ];
    for (name, text) in corpus {
        let path = dir.write(&format!("{name}.yaml"), text);
        check_path(&path).unwrap_or_else(|e| panic!("corpus config {name} is invalid:\n{e}"));
    }

    const PER_CONFIG: usize = 1000;
    let started = Instant::now();
    let mut cases = 0;
    let mut valid = 0;
    let mut panics = Vec::new();
    let mut slowest = (Duration::ZERO, String::new());
    for (c, (name, text)) in corpus.iter().enumerate() {
        let mut rng = Rng(0x9E37_79B9_7F4A_7C15 ^ (c as u64 + 1));
        let path = dir.path.join(format!("mutant-{name}.yaml"));
        for case in 0..PER_CONFIG {
            let mut bytes = mutate(&mut rng, text);
            for _ in 0..rng.below(3) {
                let again = String::from_utf8_lossy(&bytes).into_owned();
                bytes = mutate(&mut rng, &again);
            }
            std::fs::write(&path, &bytes).unwrap();
            let one = Instant::now();
            let result = catch_unwind(AssertUnwindSafe(|| check_path(&path)));
            let took = one.elapsed();
            if took > slowest.0 {
                slowest = (took, format!("{name} case {case}"));
            }
            cases += 1;
            match result {
                Ok(Ok(_)) => valid += 1,
                Ok(Err(_)) => {}
                Err(_) => panics.push((name, case, String::from_utf8_lossy(&bytes).into_owned())),
            }
        }
    }
    let elapsed = started.elapsed();
    eprintln!(
        "config fuzzer: {cases} mutants ({valid} valid) in {elapsed:?} = {:.0} cases/s; slowest {:?} ({})",
        cases as f64 / elapsed.as_secs_f64(),
        slowest.0,
        slowest.1
    );
    assert!(
        panics.is_empty(),
        "{} mutants panicked; first ({} case {}):\n{}",
        panics.len(),
        panics[0].0,
        panics[0].1,
        panics[0].2.chars().take(2000).collect::<String>()
    );
    assert!(
        valid > 0 && valid < cases,
        "the mutants cover both outcomes"
    );
    assert!(
        slowest.0 < Duration::from_secs(10),
        "every mutant is checked in bounded time: {slowest:?}"
    );
}

#[tokio::test]
async fn a_reload_of_mutated_files_keeps_the_old_config_serving() {
    for (name, value) in ENV {
        std::env::set_var(name, value);
    }
    let dir = TempDir::new("fuzz-reload");
    let path = dir.write("proxy.yaml", ANCHORED);
    let config = outpost::config::load(&path).expect("base config");
    let app = outpost::app::App::start(config).await.expect("start");
    let base_url = format!("http://{}/nowhere", app.app_addr);
    let mut rng = Rng(0xD1B5_4A32_D192_ED03);
    let (mut rejected, mut accepted) = (0, 0);
    for case in 0..300 {
        let before = app.config();
        let bytes = mutate(&mut rng, if case % 2 == 0 { ANCHORED } else { RICH });
        std::fs::write(&path, &bytes).unwrap();
        let reloaded = catch_unwind(AssertUnwindSafe(|| app.reload()))
            .unwrap_or_else(|_| panic!("reload panicked on:\n{}", String::from_utf8_lossy(&bytes)));
        if reloaded {
            accepted += 1;
            std::fs::write(&path, ANCHORED).unwrap();
            assert!(app.reload(), "back to the base config");
        } else {
            rejected += 1;
            assert!(
                Arc::ptr_eq(&before, &app.config()),
                "a rejected reload keeps the old config"
            );
        }
        if case % 25 == 0 {
            assert_eq!(get(&base_url).await.status, 404, "still serving");
        }
    }
    eprintln!("reload fuzzer: {rejected} rejected, {accepted} applied");
    assert!(rejected > 0);
    assert_eq!(get(&base_url).await.status, 404);
    app.shutdown().await;
}

/// `outpost check` on a config file written with `text` into `dir`.
async fn check_file(dir: &TempDir, text: &str) -> support::Run {
    let path = dir.write("check.yaml", text);
    outpost(&["check", "-c", &path.display().to_string()], &[], None).await
}

#[tokio::test]
async fn check_reports_bad_inputs_with_positions_never_a_panic() {
    let dir = TempDir::new("check-bounds");
    let base = "version: 1\nupstreams:\n  api:\n    base_url: http://127.0.0.1:9\n";

    let run = check_file(
        &dir,
        &format!("{base}    timeout: 3000000000000000h3000000000000000h\n"),
    )
    .await;
    assert_eq!(run.code, Some(1), "{run:?}");
    assert!(run.stderr.contains("check.yaml:5:14: "), "{}", run.stderr);
    assert!(run.stderr.contains("longer than a year"), "{}", run.stderr);

    let deep = format!(
        "version: 1\nupstreams: {}{}\n",
        "[".repeat(100_000),
        "]".repeat(100_000)
    );
    let started = Instant::now();
    let run = check_file(&dir, &deep).await;
    assert_eq!(run.code, Some(1));
    assert!(run.stderr.contains("check.yaml:2:"), "{}", run.stderr);
    assert!(
        run.stderr.contains("nesting deeper than 64 levels"),
        "{}",
        run.stderr
    );
    assert!(started.elapsed() < Duration::from_secs(10), "bounded time");

    let mut laughs =
        String::from("version: 1\na0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n");
    for k in 1..40 {
        laughs.push_str(&format!(
            "a{k}: &a{k} [{}]\n",
            vec![format!("*a{}", k - 1); 9].join(", ")
        ));
    }
    let run = check_file(&dir, &laughs).await;
    assert_eq!(run.code, Some(1));
    assert!(run.stderr.contains("aliases"), "{}", run.stderr);

    let path = dir.path.join("latin1.yaml");
    std::fs::write(
        &path,
        b"version: 1\nupstreams:\n  caf\xe9:\n    base_url: http://x\n",
    )
    .unwrap();
    let run = outpost(&["check", "-c", &path.display().to_string()], &[], None).await;
    assert_eq!(run.code, Some(1));
    assert!(
        run.stderr
            .contains("latin1.yaml:3:6: the config file is not valid UTF-8"),
        "{}",
        run.stderr
    );

    let run = check_file(
        &dir,
        &format!(
            "{base}    headers: {{ X-Big: \"{}\" }}\n",
            "a".repeat(100 * 1024)
        ),
    )
    .await;
    assert_eq!(run.code, Some(1));
    assert!(
        run.stderr
            .contains("upstreams.api.headers.X-Big: value is longer than 16KiB"),
        "{}",
        run.stderr
    );

    let run = check_file(
        &dir,
        &format!("{base}    auth: {{ type: bearer, token: \"${{file:/dev/zero}}\" }}\n"),
    )
    .await;
    assert_eq!(run.code, Some(1));
    assert!(
        run.stderr.contains("/dev/zero: not a regular file"),
        "{}",
        run.stderr
    );

    #[cfg(unix)]
    {
        let fifo = dir.path.join("token.fifo");
        assert!(std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap()
            .success());
        let started = Instant::now();
        let run = check_file(
            &dir,
            &format!(
                "{base}    auth: {{ type: bearer, token: \"${{file:{}}}\" }}\n",
                fifo.display()
            ),
        )
        .await;
        assert_eq!(run.code, Some(1));
        assert!(
            run.stderr.contains("token.fifo: not a regular file"),
            "{}",
            run.stderr
        );
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "a FIFO does not hang check"
        );
    }
    assert!(!run.stderr.contains("panicked"));
}

#[tokio::test]
async fn a_running_outpost_survives_bad_reloads_and_then_applies_a_good_one() {
    let mock = MockUpstream::start(|_| Reply::text(200, "ok")).await;
    let good = format!("upstreams:\n  api:\n    base_url: {}\n", mock.url(""));
    let mut bin = Binary::start(&good, &[]).await;
    assert_eq!(get(&bin.url("/api/x")).await.status, 200);
    let header = std::fs::read_to_string(&bin.config_path).unwrap();
    let header: String = header.lines().take(3).map(|l| format!("{l}\n")).collect();
    let metrics_url = bin.admin_url("/metrics");
    let reloads = |result: &'static str| {
        let url = metrics_url.clone();
        async move {
            let text = get(&url).await.text();
            text.lines()
                .find_map(|l| {
                    l.strip_prefix(&format!(
                        "outpost_config_reloads_total{{result=\"{result}\"}} "
                    ))
                })
                .and_then(|v| v.trim().parse::<u64>().ok())
                .unwrap_or(0)
        }
    };

    // The overflow that once killed the process; a FIFO secret that once wedged the reloader.
    let fifo = bin.dir.path.join("token.fifo");
    assert!(std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap()
        .success());
    let bad = [
        format!("{header}{good}    timeout: 3000000000000000h3000000000000000h\n"),
        format!(
            "{header}{good}    auth: {{ type: bearer, token: \"${{file:{}}}\" }}\n",
            fifo.display()
        ),
    ];
    for (n, text) in bad.iter().enumerate() {
        std::fs::write(&bin.config_path, text).unwrap();
        bin.signal("HUP");
        let want = n as u64 + 1;
        poll_until("reload error counted", || async {
            reloads("error").await >= want
        })
        .await;
        assert!(bin.child.try_wait().unwrap().is_none(), "still running");
        assert_eq!(
            try_status(&bin.url("/api/x")).await,
            Some(200),
            "old config serving"
        );
    }

    // A corrected config written afterwards is applied.
    let renamed = format!(
        "{header}upstreams:\n  renamed:\n    base_url: {}\n",
        mock.url("")
    );
    std::fs::write(&bin.config_path, renamed).unwrap();
    bin.signal("HUP");
    poll_until("good reload applied", || async {
        try_status(&bin.url("/renamed/x")).await == Some(200)
    })
    .await;
    assert_eq!(try_status(&bin.url("/api/x")).await, Some(404));
    let stderr = String::from_utf8_lossy(&bin.stop_and_collect_stderr().await).into_owned();
    assert!(!stderr.contains("panicked"), "{stderr}");
}
