//! Config tests: inline YAML for every default, rejected typo and validation error.

use std::path::Path;
use std::time::Duration;

use super::*;

fn load(yaml: &str) -> Result<Config, ConfigError> {
    load_str(yaml, Path::new("/etc/outpost/proxy.yaml"))
}

fn errors(yaml: &str) -> Vec<String> {
    match load(yaml) {
        Ok(_) => panic!("config should be invalid:\n{yaml}"),
        Err(e) => e.0.iter().map(ToString::to_string).collect(),
    }
}

fn one_error(yaml: &str) -> String {
    let errs = errors(yaml);
    assert_eq!(errs.len(), 1, "{errs:#?}");
    errs.into_iter().next().unwrap_or_default()
}

const MINIMAL: &str = "version: 1\nupstreams:\n  api:\n    base_url: https://api.example.com\n";

#[test]
fn minimal_config_gets_every_default() {
    let c = load(MINIMAL).unwrap();
    assert_eq!(c.listen, "127.0.0.1:8080".parse().unwrap());
    assert_eq!(c.admin_listen, "0.0.0.0:9090".parse().unwrap());
    assert_eq!(c.webhook_listen, "0.0.0.0:8081".parse().unwrap());
    assert_eq!(c.drain_timeout, Duration::from_secs(20));
    assert_eq!(c.limits.max_header_bytes, 64 * 1024);
    assert_eq!(c.limits.header_read_timeout, Duration::from_secs(10));
    assert_eq!(c.limits.max_connections, 10_000);
    assert_eq!(c.limits.max_body_bytes, None);
    let up = &c.upstreams[0];
    assert_eq!(up.name, "api");
    assert_eq!(up.base_url.to_string(), "https://api.example.com");
    assert_eq!(up.base_url.host_header, "api.example.com");
    assert!(up.auth.is_none());
    assert_eq!(up.timeout, DEFAULT_TIMEOUT);
    assert_eq!(up.attempt_timeout, DEFAULT_ATTEMPT_TIMEOUT);
    assert_eq!(up.connect_timeout, DEFAULT_CONNECT_TIMEOUT);
    assert!(up.rate_limit.is_none());
    assert_eq!(up.retry.max_attempts, 3);
    assert_eq!(up.retry.base_delay, Duration::from_millis(100));
    assert_eq!(up.retry.max_delay, Duration::from_secs(10));
    assert_eq!(up.retry.on_status, vec![429, 502, 503, 504]);
    assert!(up.retry.respect_retry_after);
    assert_eq!(up.retry.max_retry_after, Duration::from_secs(30));
    assert_eq!(up.retry.idempotency_key, IdempotencyKeyMode::HeaderOnly);
    assert_eq!(up.retry.budget_percent, 20);
    assert_eq!(up.retry.min_retries_per_second, 10);
    assert_eq!(up.retry.max_body_bytes, 64 * 1024);
    assert!(up.circuit_breaker.is_none());
    assert_eq!(up.errors, ErrorMode::Passthrough);
    assert_eq!(up.http, HttpMode::Auto);
    assert!(c.webhooks.is_empty());
}

#[test]
fn full_design_example_parses() {
    std::env::set_var("OUTPOST_T_STRIPE", "sk_test_x");
    std::env::set_var("OUTPOST_T_TWILIO", "tok");
    std::env::set_var("OUTPOST_T_OAI1", "a");
    std::env::set_var("OUTPOST_T_OAI2", "b");
    std::env::set_var("OUTPOST_T_WHSEC", "whsec_abc");
    let yaml = r#"
version: 1
listen: 127.0.0.1:8080
admin_listen: 0.0.0.0:9090
webhook_listen: 0.0.0.0:8081
drain_timeout: 20s
limits: { max_header_bytes: 64KiB, header_read_timeout: 10s, max_connections: 10000 }
upstreams:
  stripe:
    base_url: https://api.stripe.com
    auth: { type: bearer, token: "${env:OUTPOST_T_STRIPE}" }
    headers: { Stripe-Version: "2024-06-20" }
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
    errors: passthrough
    http: auto
    hosts: [stripe.outpost.local]
  twilio:
    preset: twilio
    auth: { username: AC123, password: "${env:OUTPOST_T_TWILIO}" }
  openai:
    preset: openai
    auth: { tokens: ["${env:OUTPOST_T_OAI1}", "${env:OUTPOST_T_OAI2}"] }
  customer-hooks:
    base_url: https://hooks.example.com
    auth: { type: standard_webhooks, secret: "${env:OUTPOST_T_WHSEC}" }
  signed:
    base_url: https://hooks.example.com
    auth: { type: hmac_signature, header: X-Signature, prefix: "sha256=", algorithm: sha256, encoding: hex, secret: x }
  s3:
    base_url: https://bucket.s3.amazonaws.com
    auth: { type: aws_sigv4, region: us-east-1, service: s3, access_key_id: AKID, secret_access_key: s }
  oauth:
    base_url: https://api.example.com
    auth: { type: oauth2_client_credentials, token_url: "https://auth.example.com/token", client_id: id, client_secret: s, scopes: [a, b], audience: x, client_auth: body, params: { resource: r } }
  shared:
    base_url: https://api.example.com
    rate_limit: { requests_per_minute: 600, shared: { redis_url: "redis://127.0.0.1:6379" } }
webhooks:
  stripe:
    path: /stripe
    scheme: stripe
    secrets: ["${env:OUTPOST_T_WHSEC}"]
    tolerance: 5m
    max_body_bytes: 1MiB
    forward_to: http://127.0.0.1:3000/webhooks/stripe
  twilio:
    path: /twilio
    scheme: twilio
    public_url: https://hooks.example.com/twilio
    secrets: ["${env:OUTPOST_T_TWILIO}"]
    forward_to: http://127.0.0.1:3000/webhooks/twilio
  partner:
    path: /partner
    scheme: hmac
    header: X-Partner-Signature
    prefix: "sha256="
    algorithm: sha256
    encoding: hex
    timestamp_header: X-Partner-Timestamp
    secrets: [k]
    forward_to: http://127.0.0.1:3000/webhooks/partner
"#;
    let c = load(yaml).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(c.upstreams.len(), 8);
    let stripe = &c.upstreams[0];
    assert_eq!(stripe.hosts, vec!["stripe.outpost.local"]);
    let rl = stripe.rate_limit.as_ref().unwrap();
    assert_eq!(
        (rl.requests, rl.burst, rl.max_wait, rl.max_in_flight),
        (25.0, 50, Duration::from_secs(2), Some(64))
    );
    assert_eq!(stripe.retry.max_body_bytes, 1024 * 1024);
    assert_eq!(stripe.retry.idempotency_key, IdempotencyKeyMode::Auto);
    assert_eq!(
        stripe
            .circuit_breaker
            .as_ref()
            .unwrap()
            .consecutive_failures,
        5
    );
    let twilio = &c.upstreams[1];
    assert_eq!(twilio.base_url.to_string(), "https://api.twilio.com");
    assert!(matches!(twilio.auth, Some(Auth::Basic { .. })));
    assert_eq!(c.upstreams[2].auth.as_ref().unwrap().pool_size(), 2);
    assert_eq!(c.webhooks.len(), 3);
    assert_eq!(
        c.webhooks[1].public_url.as_deref(),
        Some("https://hooks.example.com/twilio")
    );
    assert_eq!(
        c.webhooks[2].timestamp_header.as_ref().unwrap(),
        "x-partner-timestamp"
    );
    // Secrets never show in Debug output.
    let debug = format!("{c:?}");
    for secret in ["sk_test_x", "whsec_abc"] {
        assert!(!debug.contains(secret), "{secret} leaked in Debug");
    }
}

#[test]
fn presets_fill_in_and_keys_override() {
    let yaml = r#"
version: 1
upstreams:
  stripe:
    preset: stripe
    auth: { token: sk_test_1 }
  gh:
    preset: github
    auth: { token: ghp_x }
    headers: { User-Agent: my-app }
    retry: { on_status: [503] }
  sg:
    preset: sendgrid
    base_url: http://127.0.0.1:9999/sg
    auth: { token: SG.x }
"#;
    let c = load(yaml).unwrap();
    let stripe = &c.upstreams[0];
    assert_eq!(stripe.base_url.to_string(), "https://api.stripe.com");
    assert!(matches!(stripe.auth, Some(Auth::Bearer { .. })));
    assert_eq!(stripe.retry.on_status, vec![409, 429, 500, 502, 503, 504]);
    assert_eq!(stripe.retry.idempotency_key, IdempotencyKeyMode::Auto);
    let gh = &c.upstreams[1];
    let ua: Vec<_> = gh
        .headers
        .iter()
        .filter(|(n, _)| n == "user-agent")
        .collect();
    assert_eq!(ua.len(), 1);
    assert_eq!(ua[0].1, "my-app");
    assert!(gh
        .headers
        .iter()
        .any(|(n, v)| n == "x-github-api-version" && v == "2022-11-28"));
    assert_eq!(gh.retry.on_status, vec![503]);
    let sg = &c.upstreams[2];
    assert_eq!(sg.base_url.to_string(), "http://127.0.0.1:9999/sg");
    assert_eq!(sg.base_url.path, "/sg");
    assert_eq!(sg.retry.idempotency_key, IdempotencyKeyMode::HeaderOnly);
}

#[test]
fn unknown_keys_are_located() {
    let e = one_error(
        "version: 1\nupstreams:\n  api:\n    base_url: https://x.example\n    retyr: {}\n",
    );
    assert!(
        e.starts_with("/etc/outpost/proxy.yaml:5:5: upstreams.api: unknown field `retyr`"),
        "{e}"
    );
    let e = one_error("version: 1\nlisten: 127.0.0.1:1\nlimts: {}\n");
    assert!(e.starts_with("/etc/outpost/proxy.yaml:3:1: "), "{e}");
    assert!(e.contains("unknown field `limts`"), "{e}");
    let e = one_error("version: 1\nupstreams:\n  api:\n    base_url: https://x.example\n    auth: { type: bearer, tokn: x }\n");
    assert!(e.contains("unknown field `tokn`"), "{e}");
}

#[test]
fn bad_values_are_located_with_their_path() {
    let e = one_error(
        "version: 1\nupstreams:\n  api:\n    base_url: https://x.example\n    timeout: 5\n",
    );
    assert!(
        e.contains(":5:") && e.contains("upstreams.api.timeout") && e.contains("needs a unit"),
        "{e}"
    );
    let e = one_error(
        "version: 1\nupstreams:\n  api:\n    base_url: https://x.example\n    timeout: 5 parsecs\n",
    );
    assert!(
        e.contains("upstreams.api.timeout") && e.contains("invalid"),
        "{e}"
    );
    let e = one_error("version: 1\nupstreams:\n  api:\n    base_url: ftp://x.example\n");
    assert_eq!(e, "/etc/outpost/proxy.yaml:4:15: upstreams.api.base_url: `ftp://x.example` must start with http:// or https://");
    let e = one_error("version: 1\nupstreams:\n  api:\n    base_url: https://user:pw@x.example\n");
    assert!(e.contains("user info") && !e.contains("pw@"), "{e}");
    let e = one_error("version: 1\nupstreams:\n  api:\n    base_url: https://x.example/?a=1\n");
    assert!(e.contains("query string"), "{e}");
    let e = one_error("version: 1\nupstreams:\n  api:\n    base_url: https://x.example\n    headers:\n      \"Bad Header\": x\n");
    assert!(
        e.starts_with("/etc/outpost/proxy.yaml:6:7: upstreams.api.headers.Bad Header: "),
        "{e}"
    );
    let e = one_error("version: 1\nupstreams:\n  api:\n    base_url: https://x.example\n    headers: { Connection: close }\n");
    assert!(e.contains("managed by the proxy"), "{e}");
    let e = one_error("version: 2\n");
    assert!(
        e.starts_with("/etc/outpost/proxy.yaml:1:10: version: unsupported config version 2"),
        "{e}"
    );
    let e = one_error("version: 1\nlisten: localhost\n");
    assert!(e.contains("listen") && e.contains("socket address"), "{e}");
    let e = one_error(
        "version: 1\nupstreams:\n  api:\n    base_url: https://x.example\n    http: http3\n",
    );
    assert!(e.contains("unknown variant `http3`"), "{e}");
}

#[test]
fn duplicates_are_errors() {
    let e = one_error("version: 1\nupstreams:\n  api:\n    base_url: https://x.example\n  api:\n    base_url: https://y.example\n");
    assert!(e.contains("duplicate key `api`"), "{e}");
    let e = one_error(
        "version: 1\nupstreams:\n  a:\n    base_url: https://x.example\n    hosts: [h.local]\n  b:\n    base_url: https://y.example\n    hosts: [H.local]\n",
    );
    assert!(e.starts_with("/etc/outpost/proxy.yaml:8:13: upstreams.b.hosts[0]: host `h.local` is already routed to upstream `a`"), "{e}");
    let e = one_error(
        "version: 1\nwebhooks:\n  a: { path: /x, scheme: github, secrets: [s], forward_to: \"http://127.0.0.1:1/\" }\n  b: { path: /x, scheme: github, secrets: [s], forward_to: \"http://127.0.0.1:1/\" }\n",
    );
    assert!(
        e.contains("webhooks.b.path") && e.contains("used by another webhook"),
        "{e}"
    );
}

#[test]
fn route_names_must_be_path_segments() {
    for name in ["\"a/b\"", "\"..\"", "\"a b\"", "\"\""] {
        let yaml = format!("version: 1\nupstreams:\n  {name}:\n    base_url: https://x.example\n");
        let e = one_error(&yaml);
        assert!(e.contains("first path segment"), "{name}: {e}");
    }
}

#[test]
fn secrets_resolve_and_never_appear_in_errors() {
    std::env::remove_var("OUTPOST_T_UNSET");
    let e = one_error("version: 1\nupstreams:\n  api:\n    base_url: https://x.example\n    auth: { type: bearer, token: \"${env:OUTPOST_T_UNSET}\" }\n");
    assert_eq!(e, "/etc/outpost/proxy.yaml:5:34: upstreams.api.auth.token: environment variable OUTPOST_T_UNSET is not set");
    std::env::set_var("OUTPOST_T_NEWLINE", "sk_live_CANARY\r\nX-Evil: 1");
    let e = one_error("version: 1\nupstreams:\n  api:\n    base_url: https://x.example\n    auth: { type: bearer, token: \"${env:OUTPOST_T_NEWLINE}\" }\n");
    assert!(
        e.contains("not allowed in an HTTP header") && !e.contains("CANARY"),
        "{e}"
    );
    let e = one_error("version: 1\nupstreams:\n  api:\n    base_url: https://x.example\n    auth: { type: bearer, token: \"${vault:x}\" }\n");
    assert!(e.contains("unknown secret reference"), "{e}");
    let e = one_error("version: 1\nupstreams:\n  api:\n    base_url: https://x.example\n    auth: { type: bearer, token: \"${file:/nonexistent/outpost/key}\" }\n");
    assert!(
        e.contains("cannot read secret file /nonexistent/outpost/key"),
        "{e}"
    );
}

#[test]
fn secret_inside_longer_string_and_from_file() {
    let dir = std::env::temp_dir().join(format!("outpost-cfg-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("key"), "filekey\n").unwrap();
    std::env::set_var("OUTPOST_T_INNER", "inner");
    let yaml = "version: 1\nupstreams:\n  api:\n    base_url: https://x.example\n    auth: { type: header, name: X-Api-Key, value: \"k-${env:OUTPOST_T_INNER}-${file:key}\" }\n";
    let c = load_str(yaml, &dir.join("proxy.yaml")).unwrap();
    match &c.upstreams[0].auth {
        Some(Auth::Header { name, values }) => {
            assert_eq!(name, "x-api-key");
            assert_eq!(values[0].expose(), "k-inner-filekey");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(c.watched_files, vec![dir.join("key")]);
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn auth_fields_must_match_the_type() {
    let e = one_error("version: 1\nupstreams:\n  api:\n    base_url: https://x.example\n    auth: { type: bearer, token: a, username: u }\n");
    assert!(
        e.contains("upstreams.api.auth.username") && e.contains("not used by auth type `bearer`"),
        "{e}"
    );
    let e = one_error("version: 1\nupstreams:\n  api:\n    base_url: https://x.example\n    auth: { type: basic, username: u }\n");
    assert!(e.contains("needs `password`"), "{e}");
    let e = one_error(
        "version: 1\nupstreams:\n  api:\n    base_url: https://x.example\n    auth: { token: a }\n",
    );
    assert!(e.contains("missing `type`"), "{e}");
    let e = one_error("version: 1\nupstreams:\n  api:\n    base_url: https://x.example\n    auth: { type: bearer, token: a, tokens: [b] }\n");
    assert!(e.contains("not both"), "{e}");
    let e = one_error("version: 1\nupstreams:\n  api:\n    base_url: https://x.example\n    auth: { type: bearer, tokens: [] }\n");
    assert!(e.contains("key pool is empty"), "{e}");
    let e = one_error("version: 1\nupstreams:\n  api:\n    base_url: https://x.example\n    auth: { type: query, name: \"\", value: v }\n");
    assert!(e.contains("must not be empty"), "{e}");
}

#[test]
fn quota_and_graphql_from_presets_and_overrides() {
    let c = load(
        "version: 1
upstreams:
  gh: { preset: github, auth: { token: t } }
  shop: { preset: shopify, base_url: \"https://a.myshopify.com/admin/api/2024-10\", auth: { value: v } }
  hs: { preset: hubspot, auth: { token: t }, rate_limit: { requests_per_second: 10 } }
  sg: { preset: sendgrid, auth: { token: t }, rate_limit: { quota: off, requests_per_second: 5 } }
  own: { base_url: https://x.example, graphql: { path: /v1/graphql/ }, rate_limit: { quota: ietf, max_wait: 5s } }
  plain: { base_url: https://x.example, graphql: true }
  off: { preset: github, graphql: false, auth: { token: t } }
",
    );
    let c = c.unwrap();
    let up = |n: &str| c.upstreams.iter().find(|u| u.name == n).unwrap().clone();
    let gh = up("gh");
    let rl = gh
        .rate_limit
        .as_ref()
        .expect("the preset's quota paces alone");
    assert_eq!(rl.quota, Some(QuotaSignal::XRateLimit));
    assert!(!rl.has_rate());
    assert_eq!(rl.burst, DEFAULT_QUOTA_BURST);
    assert_eq!(
        gh.graphql.as_ref().map(|g| g.path.as_str()),
        Some("/graphql")
    );
    let shop = up("shop");
    assert_eq!(
        shop.rate_limit.as_ref().and_then(|r| r.quota),
        Some(QuotaSignal::Shopify)
    );
    assert_eq!(
        shop.graphql.as_ref().map(|g| g.path.as_str()),
        Some("/graphql.json")
    );
    let hs = up("hs").rate_limit.clone().unwrap();
    assert_eq!((hs.quota, hs.requests), (Some(QuotaSignal::Hubspot), 10.0));
    let own = up("own");
    assert_eq!(
        own.graphql.as_ref().map(|g| g.path.as_str()),
        Some("/v1/graphql")
    );
    let rl = own.rate_limit.as_ref().unwrap();
    assert_eq!(
        (rl.quota, rl.max_wait),
        (Some(QuotaSignal::Ietf), Duration::from_secs(5))
    );
    assert_eq!(
        up("plain").graphql.as_ref().map(|g| g.path.as_str()),
        Some("/graphql")
    );
    assert!(up("plain").rate_limit.is_none());
    assert!(up("off").graphql.is_none());
    assert_eq!(
        up("sg").rate_limit.as_ref().unwrap().quota,
        None,
        "quota: off"
    );
}

#[test]
fn policy_values_are_validated() {
    let cases = [
        (
            "rate_limit: { requests_per_second: 0 }",
            "must be a number above 0",
        ),
        (
            "rate_limit: { requests_per_second: 1, requests_per_minute: 60 }",
            "not both",
        ),
        ("rate_limit: { burst: 5 }", "needs `requests_per_second`"),
        ("rate_limit: { quota: github }", "unknown quota signal"),
        ("rate_limit: { quota: [x-ratelimit] }", "invalid type"),
        (
            "rate_limit: { quota: ietf, quotas: 1 }",
            "unknown field `quotas`",
        ),
        ("graphql: yes", "`true`, `false` or `{path: /graphql}`"),
        (
            "graphql: { path: graphql }",
            "must be a path starting with `/`",
        ),
        (
            "graphql: { path: /graphql, paths: [] }",
            "unknown field `paths`",
        ),
        (
            "rate_limit: { requests_per_second: 5, shared: { redis_url: \"http://x\" } }",
            "redis://",
        ),
        ("retry: { max_attempts: 0 }", "between 1"),
        (
            "retry: { base_delay: 2s, max_delay: 1s }",
            "must not be shorter",
        ),
        ("retry: { on_status: [200] }", "not a 4xx or 5xx"),
        ("retry: { budget_percent: 5000 }", "between 0 and 1000"),
        ("retry: { idempotency_key: always }", "unknown variant"),
        ("circuit_breaker: { consecutive_failures: 0 }", "at least 1"),
        ("attempt_timeout: 40s", "must not be longer than `timeout`"),
        ("timeout: 0s", "greater than zero"),
        ("hosts: [\"http://x\"]", "not a host name"),
        (
            "tls: { ca_file: /nonexistent/ca.pem }",
            "cannot read CA file",
        ),
        ("errors: loud", "unknown variant"),
    ];
    for (snippet, expected) in cases {
        let yaml = format!(
            "version: 1\nupstreams:\n  api:\n    base_url: https://x.example\n    {snippet}\n"
        );
        let errs = errors(&yaml);
        assert!(
            errs.iter()
                .any(|e| e.contains(expected) && e.contains(":5:")),
            "{snippet}: {errs:#?}"
        );
    }
}

#[test]
fn webhook_rules() {
    let base = "version: 1\nwebhooks:\n  w:\n    path: /w\n    forward_to: \"http://127.0.0.1:3000/\"\n    secrets: [s]\n";
    let e = one_error(&format!("{base}    scheme: twilio\n"));
    assert!(e.contains("needs `public_url`"), "{e}");
    let e = one_error(&format!("{base}    scheme: hmac\n"));
    assert!(e.contains("needs `header`"), "{e}");
    let e = one_error(&format!("{base}    scheme: stripe\n    header: X-Sig\n"));
    assert!(e.contains("applies only to scheme `hmac`"), "{e}");
    let e = one_error("version: 1\nwebhooks:\n  w: { path: w, scheme: github, secrets: [s], forward_to: \"http://x/\" }\n");
    assert!(e.contains("absolute path"), "{e}");
    let e = one_error("version: 1\nwebhooks:\n  w: { path: /w, scheme: github, secrets: [], forward_to: \"http://x/\" }\n");
    assert!(e.contains("at least one"), "{e}");
    let c = load(&format!("{base}    scheme: github\n")).unwrap();
    assert_eq!(c.webhooks[0].tolerance, Duration::from_secs(300));
    assert_eq!(c.webhooks[0].max_body_bytes, 1024 * 1024);
}

#[test]
fn several_errors_are_reported_at_once() {
    let yaml = "version: 1\nupstreams:\n  a:\n    base_url: ftp://x\n  b:\n    base_url: https://y.example\n    retry: { max_attempts: 0 }\n";
    let errs = errors(yaml);
    assert_eq!(errs.len(), 2, "{errs:#?}");
}

#[test]
fn the_repository_proxy_yaml_passes_with_its_env() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("proxy.yaml");
    let text = std::fs::read_to_string(&path).unwrap();
    for var in [
        "STRIPE_API_KEY",
        "STRIPE_WEBHOOK_SECRET",
        "SENDGRID_API_KEY",
        "TWILIO_ACCOUNT_SID",
        "TWILIO_AUTH_TOKEN",
        "GITHUB_WEBHOOK_SECRET",
    ] {
        std::env::set_var(var, format!("test-{var}"));
    }
    let dir = std::env::temp_dir().join(format!("outpost-rootcfg-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    // The file refers to /var/run/secrets paths; point them at a temp dir for the test.
    let text = text.replace("/var/run/secrets/outpost/", &format!("{}/", dir.display()));
    std::fs::write(dir.join("sendgrid-api-key"), "SG.test\n").unwrap();
    let c = load_str(&text, &path).unwrap_or_else(|e| panic!("{e}"));
    assert!(c.upstreams.iter().any(|u| u.name == "stripe"));
    assert!(c.upstreams.iter().any(|u| u.name == "sendgrid"));
    std::fs::remove_dir_all(&dir).ok();
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(256))]

    #[test]
    fn arbitrary_text_never_panics(text in ".{0,200}") {
        let _ = load(&text);
    }

    /// Mutations of a valid config: delete, duplicate or replace a span. Errors are fine;
    /// panics are not, and every error carries a 1-based position.
    #[test]
    fn mutated_configs_never_panic(at in 0usize..400, len in 0usize..12, insert in "[ -~\n]{0,12}") {
        let base = "version: 1\nlisten: 127.0.0.1:0\nupstreams:\n  api:\n    base_url: https://api.example.com/v1\n    auth: { type: bearer, token: abc }\n    headers: { X-A: b }\n    timeout: 5s\n    rate_limit: { requests_per_second: 5, burst: 2, max_wait: 1s }\n    retry: { max_attempts: 2, on_status: [503] }\n    hosts: [a.local]\nwebhooks:\n  gh: { path: /gh, scheme: github, secrets: [s], forward_to: \"http://127.0.0.1:3000/\" }\n";
        let mut chars: Vec<char> = base.chars().collect();
        let at = at.min(chars.len());
        let end = (at + len).min(chars.len());
        chars.splice(at..end, insert.chars());
        let text: String = chars.into_iter().collect();
        if let Err(e) = load(&text) {
            for issue in &e.0 {
                proptest::prop_assert!(issue.line >= 1 && issue.column >= 1, "{}", issue);
            }
        }
    }
}

#[test]
fn webhook_secret_shapes_are_checked() {
    let e = one_error("version: 1\nwebhooks:\n  sg: { path: /sg, scheme: sendgrid, secrets: [not-a-key], forward_to: \"http://127.0.0.1:3000/\" }\n");
    assert!(e.contains("webhooks.sg.secrets[0]"), "{e}");
    let e = one_error("version: 1\nupstreams:\n  hooks:\n    base_url: https://hooks.example.com\n    auth: { type: standard_webhooks, secret: \"whsec_!!!\" }\n");
    assert!(
        e.contains("upstreams.hooks.auth.secret") && !e.contains("!!!"),
        "{e}"
    );
}

#[test]
fn redis_url_is_a_secret() {
    std::env::set_var("OUTPOST_T_REDIS", "redis://:pw-CANARY@127.0.0.1:6379");
    let c = load("version: 1\nupstreams:\n  api:\n    base_url: https://x.example\n    rate_limit: { requests_per_second: 5, shared: { redis_url: \"${env:OUTPOST_T_REDIS}\" } }\n").unwrap();
    let shared = c.upstreams[0]
        .rate_limit
        .as_ref()
        .unwrap()
        .shared
        .as_ref()
        .unwrap();
    let RedisTarget::Standalone(url) = &shared.redis else {
        panic!("standalone expected")
    };
    assert_eq!(url.expose(), "redis://:pw-CANARY@127.0.0.1:6379");
    assert!(
        !format!("{c:?}").contains("CANARY"),
        "Debug shows the Redis password"
    );
    let e = one_error("version: 1\nupstreams:\n  api:\n    base_url: https://x.example\n    rate_limit: { requests_per_second: 5, shared: { redis_url: \"http://:pw-CANARY@x\" } }\n");
    assert!(e.contains("redis://") && !e.contains("CANARY"), "{e}");
}

#[test]
fn shared_limit_key_prefix_defaults_and_is_checked() {
    let shared = |extra: &str| {
        format!("version: 1\nupstreams:\n  api:\n    base_url: https://x.example\n    rate_limit: {{ requests_per_second: 5, shared: {{ redis_url: \"redis://127.0.0.1:6379\"{extra} }} }}\n")
    };
    let prefix = |yaml: &str| {
        load(yaml).unwrap().upstreams[0]
            .rate_limit
            .as_ref()
            .and_then(|r| r.shared.as_ref())
            .map(|s| s.key_prefix.clone())
    };
    assert_eq!(prefix(&shared("")).as_deref(), Some("outpost:rl:"));
    assert_eq!(
        prefix(&shared(", key_prefix: \"team-a:rl:\"")).as_deref(),
        Some("team-a:rl:")
    );
    for bad in ["\"\"", "\"has space\"", "\"ünïcode\""] {
        let e = one_error(&shared(&format!(", key_prefix: {bad}")));
        assert!(e.contains("key_prefix") && e.contains("5:"), "{e}");
    }
}

#[test]
fn webhook_limits_default_to_the_app_limits_and_are_validated() {
    let c = load(MINIMAL).unwrap();
    assert_eq!(
        c.webhook_limits,
        WebhookLimits {
            max_header_bytes: 64 * 1024,
            header_read_timeout: Duration::from_secs(10),
            body_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(30),
            max_connections: 10_000,
        }
    );
    let c = load(&format!(
        "{MINIMAL}limits: {{ max_header_bytes: 16KiB, header_read_timeout: 3s, max_connections: 7 }}\nwebhook_limits: {{ body_read_timeout: 2s, idle_timeout: 1m }}\n"
    ))
    .unwrap();
    assert_eq!(c.webhook_limits.max_header_bytes, 16 * 1024);
    assert_eq!(c.webhook_limits.header_read_timeout, Duration::from_secs(3));
    assert_eq!(c.webhook_limits.max_connections, 7);
    assert_eq!(c.webhook_limits.body_read_timeout, Duration::from_secs(2));
    assert_eq!(c.webhook_limits.idle_timeout, Duration::from_secs(60));
    let c = load(&format!(
        "{MINIMAL}webhook_limits: {{ max_header_bytes: 8KiB, header_read_timeout: 1s, max_connections: 3 }}\n"
    ))
    .unwrap();
    assert_eq!(
        c.limits.max_header_bytes,
        64 * 1024,
        "the app's are untouched"
    );
    assert_eq!(c.webhook_limits.max_connections, 3);
    for (yaml, expected) in [
        (
            "webhook_limits: { body_read_timeout: 0s }",
            "webhook_limits.body_read_timeout: must be greater than zero",
        ),
        (
            "webhook_limits: { idle_timeout: 0s }",
            "webhook_limits.idle_timeout: must be greater than zero",
        ),
        (
            "webhook_limits: { max_connections: 0 }",
            "webhook_limits.max_connections: must be at least 1",
        ),
        (
            "webhook_limits: { max_header_bytes: 1KiB }",
            "webhook_limits.max_header_bytes: must be between 8KiB and 16MiB",
        ),
    ] {
        let e = one_error(&format!("{MINIMAL}{yaml}\n"));
        assert!(e.ends_with(expected), "{e}");
        assert!(e.starts_with("/etc/outpost/proxy.yaml:5:"), "{e}");
    }
    assert!(one_error(&format!(
        "{MINIMAL}webhook_limits: {{ body_timeout: 1s }}\n"
    ))
    .contains("unknown field `body_timeout`"));
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig { cases: 256, ..Default::default() })]
    /// Any text at all is a config or errors with 1-based positions (never a panic).
    #[test]
    fn any_text_is_a_config_or_located_errors(
        text in "\\PC{0,512}|[a-z_:{}\\[\\],&*!|>#'\" \\n0-9-]{0,1024}",
    ) {
        if let Err(e) = load(&text) {
            for issue in &e.0 {
                proptest::prop_assert!(issue.line >= 1 && issue.column >= 1);
            }
        }
        let _ = load(&format!("{MINIMAL}{text}"));
    }
}

const SHARED_API: &str = "version: 1\nupstreams:\n  api:\n    base_url: https://x.example\n    rate_limit:\n      requests_per_second: 5\n      shared:\n";

fn shared_target(yaml: &str) -> RedisTarget {
    load(yaml).unwrap().upstreams[0]
        .rate_limit
        .as_ref()
        .and_then(|r| r.shared.as_ref())
        .map(|s| s.redis.clone())
        .expect("shared")
}

#[test]
fn shared_state_takes_one_of_three_redis_topologies() {
    let cluster = shared_target(&format!(
        "{SHARED_API}        redis_cluster: [\"redis://10.0.0.1:7000\", \"redis://:pw@10.0.0.2:7000\"]\n"
    ));
    let RedisTarget::Cluster(nodes) = &cluster else {
        panic!("{cluster:?}")
    };
    assert_eq!(nodes.len(), 2);
    assert!(!format!("{cluster:?}").contains("pw"), "Debug hides URLs");

    std::env::set_var("OUTPOST_T_SENTINEL_PW", "sentinel-CANARY");
    let sentinel = shared_target(&format!(
        "{SHARED_API}        redis_sentinel:\n          master: mymaster\n          nodes: [\"redis://10.0.0.1:26379\"]\n          password: \"${{env:OUTPOST_T_SENTINEL_PW}}\"\n"
    ));
    let RedisTarget::Sentinel(s) = &sentinel else {
        panic!("{sentinel:?}")
    };
    assert_eq!(s.master, "mymaster");
    assert_eq!(s.password.as_ref().unwrap().expose(), "sentinel-CANARY");
    assert!(!format!("{sentinel:?}").contains("CANARY"));
    assert_eq!(sentinel.kind(), "redis_sentinel");

    // Exactly one, pointing at `shared` (line 7).
    for body in [
        "        redis_url: \"redis://a\"\n        redis_cluster: [\"redis://b\"]\n",
        "        expected_replicas: 2\n",
    ] {
        let e = one_error(&format!("{SHARED_API}{body}"));
        assert!(e.contains(":7:") && e.contains("exactly one of"), "{e}");
    }
    // Every URL is checked, by index, and never shown.
    let e = one_error(&format!(
        "{SHARED_API}        redis_cluster: [\"redis://a\", \"http://:pw-CANARY@b\"]\n"
    ));
    assert!(
        e.contains("redis_cluster[1]") && e.contains(":8:") && !e.contains("CANARY"),
        "{e}"
    );
    let e = one_error(&format!("{SHARED_API}        redis_cluster: []\n"));
    assert!(e.contains("1 to 64 URLs"), "{e}");
    let e = one_error(&format!("{SHARED_API}        redis_url: \"rediss://x\"\n"));
    assert!(e.contains("not in this build"), "{e}");
    let e = one_error(&format!(
        "{SHARED_API}        redis_sentinel: {{ master: \"\", nodes: [\"redis://a\"] }}\n"
    ));
    assert!(e.contains("redis_sentinel.master"), "{e}");
    let e = one_error(&format!(
        "{SHARED_API}        redis_sentinel: {{ master: m, nodes: [\"redis://a\"], port: 1 }}\n"
    ));
    assert!(
        e.contains("unknown field `port`") && e.contains(":8:"),
        "{e}"
    );
}

#[test]
fn webhook_shared_keeps_the_replay_guard_in_redis() {
    let hook = |shared: &str| {
        format!("version: 1\nwebhooks:\n  gh:\n    path: /gh\n    scheme: github\n    secrets: [s]\n    forward_to: \"http://127.0.0.1:3000/\"\n{shared}")
    };
    let c = load(&hook("")).unwrap();
    assert_eq!(c.webhooks[0].shared, None);
    let c = load(&hook(
        "    shared: { redis_url: \"redis://127.0.0.1:6379\" }\n",
    ))
    .unwrap();
    assert_eq!(
        c.webhooks[0].shared.as_ref().map(|t| t.kind()),
        Some("redis_url")
    );
    let c = load(&hook(
        "    shared: { redis_cluster: [\"redis://127.0.0.1:7000\"] }\n",
    ))
    .unwrap();
    assert_eq!(
        c.webhooks[0].shared.as_ref().map(|t| t.kind()),
        Some("redis_cluster")
    );
    let e = one_error(&hook("    shared: {}\n"));
    assert!(e.contains("webhooks.gh.shared") && e.contains(":8:"), "{e}");
    let e = one_error(&hook(
        "    shared: { redis_url: \"redis://x\", key_prefix: a }\n",
    ));
    assert!(e.contains("unknown field `key_prefix`"), "{e}");
}

#[test]
fn refresh_token_store_takes_a_file_or_a_redis() {
    let with = |store: &str| {
        format!("version: 1\nupstreams:\n  x:\n    base_url: https://api.example.com\n    auth:\n      type: oauth2_refresh_token\n      token_url: https://t.example/token\n      client_id: a\n      refresh_token: rt-CANARY\n      store: {store}\n")
    };
    let store = |yaml: &str| match &load(yaml).unwrap().upstreams[0].auth {
        Some(Auth::OAuth2RefreshToken(r)) => r.store.clone(),
        other => panic!("{other:?}"),
    };
    assert_eq!(
        store(&with("{ file: /var/lib/outpost/x.json }")),
        TokenStore::File("/var/lib/outpost/x.json".into())
    );
    match store(&with(
        "{ redis_url: \"redis://127.0.0.1\", key: \"team-a:xero\" }",
    )) {
        TokenStore::Redis { redis, key } => {
            assert_eq!(redis.kind(), "redis_url");
            assert_eq!(key.as_deref(), Some("team-a:xero"));
        }
        other => panic!("{other:?}"),
    }
    match store(&with(
        "{ redis_sentinel: { master: m, nodes: [\"redis://127.0.0.1:26379\"] } }",
    )) {
        TokenStore::Redis { redis, key: None } => assert_eq!(redis.kind(), "redis_sentinel"),
        other => panic!("{other:?}"),
    }
    for (bad, want) in [
        (
            "{ file: /tmp/x, redis_url: \"redis://127.0.0.1\" }",
            "not both",
        ),
        ("{ }", "needs `file: PATH`"),
        ("{ file: /tmp/x, key: k }", "only to a Redis store"),
        (
            "{ redis_url: \"redis://127.0.0.1\", key: \"a}b\" }",
            "without spaces or braces",
        ),
        (
            "{ redis_url: \"redis://127.0.0.1\", redis_cluster: [\"redis://b\"] }",
            "exactly one",
        ),
    ] {
        let e = one_error(&with(bad));
        assert!(e.contains(want) && e.contains(":10:"), "{bad}: {e}");
        assert!(!e.contains("CANARY"), "{e}");
    }
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(512))]

    /// Any string as a Redis URL: accepted or refused with a message, never a panic, and the
    /// message never repeats the URL (it may hold a password).
    #[test]
    fn any_redis_url_is_checked_without_panic_or_echo(
        text in "\\PC{0,300}|redis://[ -~]{0,300}|redis://:[a-z]{8}@[0-9.]{0,20}:[0-9]{0,25}/[0-9]{0,25}",
    ) {
        if let Err(e) = forms::redis_url(&text) {
            // One of the fixed messages: nothing of the input is in it.
            let fixed = [
                forms::redis_url("rediss://x").unwrap_err(),
                forms::redis_url("http://x").unwrap_err(),
                forms::redis_url("redis://[").unwrap_err(),
            ];
            proptest::prop_assert!(fixed.contains(&e), "{}", e);
        }
    }

    /// Redis shapes written anywhere under `shared` or `store`: a config or located errors.
    #[test]
    fn arbitrary_redis_shapes_never_panic(
        body in "[a-z_:{}\\[\\],\" /0-9@.-]{0,200}",
    ) {
        for yaml in [
            format!("{SHARED_API}        {body}\n"),
            format!("version: 1\nwebhooks:\n  gh: {{ path: /gh, scheme: github, secrets: [s], forward_to: \"http://127.0.0.1:3000/\", shared: {body} }}\n"),
        ] {
            if let Err(e) = load(&yaml) {
                for issue in &e.0 {
                    proptest::prop_assert!(issue.line >= 1 && issue.column >= 1);
                }
            }
        }
    }
}
