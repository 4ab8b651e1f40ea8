//! `outpost check`: the integration summary table of a validated config. Shows effective values
//! (presets merged) and never a secret: credentials are shown by auth type and key count only.

use std::fmt::Write;

use crate::config::units::{format_duration, format_size};
use crate::config::{Auth, Config, HttpMode, TokenStore, Upstream};

/// Config features parsed and validated, whose behaviour is not active in this build.
/// Each is named in `check` output when a config uses it, instead of being silently ignored.
/// (None at the moment: every config feature is active.)
fn inactive_features(_up: &Upstream) -> Vec<&'static str> {
    Vec::new()
}

fn auth_summary(up: &Upstream) -> String {
    match &up.auth {
        None => "none".into(),
        Some(auth) if auth.pool_size() > 1 => {
            format!("{} ({} keys)", auth.kind().name(), auth.pool_size())
        }
        Some(Auth::Header { name, .. }) => format!("header {name}"),
        Some(Auth::Query { name, .. }) => format!("query {name}"),
        Some(Auth::OAuth2RefreshToken(r)) => match &r.store {
            TokenStore::File(_) => "oauth2_refresh_token (store file)".into(),
            TokenStore::Redis { redis, .. } => {
                format!("oauth2_refresh_token (store {})", redis.kind())
            }
        },
        Some(auth) => auth.kind().name().to_string(),
    }
}

fn rate_summary(up: &Upstream) -> String {
    let Some(rl) = &up.rate_limit else {
        return "-".into();
    };
    let unit = if rl.per.as_secs() == 60 { "min" } else { "s" };
    let mut s = if rl.has_rate() {
        format!(
            "{}/{unit} burst {} wait {}",
            rl.requests,
            rl.burst,
            format_duration(rl.max_wait)
        )
    } else {
        format!(
            "paced burst {} wait {}",
            rl.burst,
            format_duration(rl.max_wait)
        )
    };
    if let Some(quota) = rl.quota {
        let _ = write!(s, " quota {}", quota.name());
    }
    if let Some(n) = rl.max_in_flight {
        let _ = write!(s, " in-flight {n}");
    }
    if let Some(shared) = &rl.shared {
        let _ = write!(s, " shared ({})", shared.redis.kind());
    }
    s
}

fn retry_summary(up: &Upstream) -> String {
    let r = &up.retry;
    if r.max_attempts <= 1 {
        return "off".into();
    }
    let statuses: Vec<String> = r.on_status.iter().map(u16::to_string).collect();
    format!(
        "{}x {}..{} on [{}] key {}",
        r.max_attempts,
        format_duration(r.base_delay),
        format_duration(r.max_delay),
        statuses.join(","),
        r.idempotency_key.name()
    )
}

fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            widths[i] = widths[i].max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let line = |out: &mut String, cells: Vec<&str>| {
        let padded: Vec<String> = cells
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{c:<w$}", w = widths[i]))
            .collect();
        let _ = writeln!(out, "  {}", padded.join("  ").trim_end());
    };
    line(&mut out, header.to_vec());
    line(
        &mut out,
        widths
            .iter()
            .map(|w| "-".repeat(*w))
            .collect::<Vec<_>>()
            .iter()
            .map(String::as_str)
            .collect(),
    );
    for row in rows {
        line(&mut out, row.iter().map(String::as_str).collect());
    }
    out
}

/// The summary printed by `outpost check` for a valid config.
pub fn summary(config: &Config) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "{}: valid", config.path.display());
    let _ = writeln!(
        out,
        "listen {}  admin {}  drain {}  max header {}",
        config.listen,
        config.admin_listen,
        format_duration(config.drain_timeout),
        format_size(config.limits.max_header_bytes as u64)
    );
    let _ = writeln!(out, "\nupstreams:");
    let rows: Vec<Vec<String>> = config
        .upstreams
        .iter()
        .map(|up| {
            let mut route = format!("/{}/", up.name);
            if !up.hosts.is_empty() {
                let _ = write!(route, " + host {}", up.hosts.join(","));
            }
            if let Some(graphql) = &up.graphql {
                let _ = write!(route, " (graphql {})", graphql.path);
            }
            let preset = up
                .preset
                .map_or(String::new(), |p| format!(" (preset {})", p.name()));
            let timeouts = format!(
                "{}/{}/{}",
                format_duration(up.connect_timeout),
                format_duration(up.attempt_timeout),
                format_duration(up.timeout)
            );
            let http = match up.http {
                HttpMode::Auto => "auto",
                HttpMode::Http1 => "http1",
                HttpMode::Http2 => "http2",
            };
            vec![
                format!("{}{preset}", up.name),
                route,
                if up.base_from_token {
                    "from_token (instance_url)".to_string()
                } else {
                    up.base_url.to_string()
                },
                auth_summary(up),
                rate_summary(up),
                retry_summary(up),
                timeouts,
                http.to_string(),
            ]
        })
        .collect();
    out.push_str(&table(
        &[
            "upstream",
            "route",
            "base url",
            "auth",
            "rate limit",
            "retry",
            "timeouts c/a/t",
            "http",
        ],
        &rows,
    ));
    if !config.webhooks.is_empty() {
        let _ = writeln!(out, "\nwebhooks (on {}):", config.webhook_listen);
        let l = &config.webhook_limits;
        let _ = writeln!(
            out,
            "limits: max header {}  header {}  body {}  idle {}  max connections {}",
            format_size(l.max_header_bytes as u64),
            format_duration(l.header_read_timeout),
            format_duration(l.body_read_timeout),
            format_duration(l.idle_timeout),
            l.max_connections
        );
        let rows: Vec<Vec<String>> = config
            .webhooks
            .iter()
            .map(|w| {
                vec![
                    w.name.clone(),
                    w.path.clone(),
                    w.scheme.name().to_string(),
                    format!("{} secret(s)", w.secrets.len()),
                    format_duration(w.tolerance),
                    w.forward_to.to_string(),
                    w.shared
                        .as_ref()
                        .map_or("local".into(), |t| format!("local + {}", t.kind())),
                ]
            })
            .collect();
        out.push_str(&table(
            &[
                "webhook",
                "path",
                "scheme",
                "secrets",
                "tolerance",
                "forward to",
                "replay guard",
            ],
            &rows,
        ));
    }
    let mut notes = Vec::new();
    for up in &config.upstreams {
        let inactive = inactive_features(up);
        if !inactive.is_empty() {
            notes.push(format!(
                "upstream {}: {} parsed but not active in this build",
                up.name,
                inactive.join(", ")
            ));
        }
    }
    if !config.webhooks.is_empty() && !WEBHOOKS_ACTIVE {
        notes.push("webhooks: parsed but the receiver is not active in this build".into());
    }
    if !notes.is_empty() {
        let _ = writeln!(out, "\nnot active yet:");
        for note in notes {
            let _ = writeln!(out, "  - {note}");
        }
    }
    out
}

const WEBHOOKS_ACTIVE: bool = true;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_summary_names_each_redis_topology_and_never_a_url() {
        let yaml = "version: 1\nupstreams:\n  api:\n    base_url: https://x.example\n    rate_limit: { requests_per_second: 5, shared: { redis_cluster: [\"redis://:pw-CANARY@10.0.0.1:7000\"] } }\n  xero:\n    base_url: https://api.xero.com\n    auth: { type: oauth2_refresh_token, token_url: https://t.example/token, client_id: a, refresh_token: rt-CANARY, store: { redis_sentinel: { master: m, nodes: [\"redis://:pw-CANARY@10.0.0.2:26379\"] } } }\nwebhooks:\n  gh: { path: /gh, scheme: github, secrets: [s-CANARY], forward_to: \"http://127.0.0.1:3000/\", shared: { redis_url: \"redis://:pw-CANARY@10.0.0.3\" } }\n";
        let config =
            crate::config::load_str(yaml, std::path::Path::new("/etc/outpost/proxy.yaml")).unwrap();
        let out = summary(&config);
        assert!(out.contains("shared (redis_cluster)"), "{out}");
        assert!(
            out.contains("oauth2_refresh_token (store redis_sentinel)"),
            "{out}"
        );
        assert!(out.contains("local + redis_url"), "{out}");
        assert!(!out.contains("CANARY"), "{out}");
    }

    #[test]
    fn the_summary_shows_quota_pacing_graphql_and_from_token() {
        let key = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/keys/rsa-test.pem"
        );
        let yaml = format!(
            "version: 1\nupstreams:\n  gh:\n    preset: github\n    auth: {{ token: ghp-CANARY }}\n  shop:\n    preset: shopify\n    base_url: https://acme.myshopify.com/admin/api/2024-10\n    auth: {{ value: shpat-CANARY }}\n  own:\n    base_url: https://api.example.com\n    rate_limit: {{ quota: ietf }}\n  sf:\n    preset: salesforce\n    auth: {{ issuer: i, subject: s, private_key: \"${{file:{key}}}\" }}\n"
        );
        let config =
            crate::config::load_str(&yaml, std::path::Path::new("/etc/outpost/proxy.yaml"))
                .unwrap();
        let out = summary(&config);
        let row = |name: &str| {
            out.lines()
                .find(|l| l.trim_start().starts_with(name))
                .unwrap_or_else(|| panic!("no row for {name}: {out}"))
                .to_string()
        };
        assert!(row("gh").contains("quota x-ratelimit"), "{out}");
        assert!(row("gh").contains("(graphql /graphql)"), "{out}");
        assert!(row("shop").contains("quota shopify"), "{out}");
        assert!(row("shop").contains("(graphql /graphql.json)"), "{out}");
        assert!(row("own").contains("quota ietf"), "{out}");
        assert!(row("sf").contains("from_token"), "{out}");
        assert!(row("sf").contains("quota salesforce"), "{out}");
        assert!(
            !out.contains("CANARY") && !out.contains("PRIVATE KEY"),
            "{out}"
        );
    }
}
