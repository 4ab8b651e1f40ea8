//! The deploy/ files must agree with the code and with DESIGN.md:
//!
//! - every metric the Grafana dashboard and the alerts query is one Outpost exports
//!   (`outpost::metrics::ALL`), histograms only through their `_bucket`/`_sum`/`_count` series,
//!   and the dashboard shows every exported metric;
//! - the Kubernetes example runs Outpost as a native sidecar (an init container with
//!   `restartPolicy: Always`) probed on `/readyz` and `/healthz`, with secrets mounted as a
//!   directory (rotation), the proxy on loopback and a drain that fits the grace period.
//!
//! `deploy/validate.sh` checks the same manifests against the Kubernetes schemas and runs the
//! alert unit tests with promtool; this test needs nothing but cargo.

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_json::Value as Json;
use serde_yaml::Value as Yaml;

const HISTOGRAM_SUFFIXES: [&str; 3] = ["_bucket", "_sum", "_count"];

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(path: &Path) -> String {
    fs::read_to_string(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

// ---------------------------------------------------------------------------------------------
// PromQL metric-name extraction

fn is_ident_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || c == ':'
}

/// Every identifier in `expr` that starts with `outpost_` at a word boundary, in order.
/// (`my_outpost_x` is not one; `container="outpost"` has no `outpost_` identifier.)
fn metric_identifiers(expr: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut prev: Option<char> = None;
    let mut iter = expr.char_indices().peekable();
    while let Some((i, c)) = iter.next() {
        let at_boundary = !matches!(prev, Some(p) if is_ident_char(p));
        if at_boundary && expr[i..].starts_with("outpost_") {
            let len = expr[i..]
                .find(|ch: char| !is_ident_char(ch))
                .unwrap_or(expr.len() - i);
            out.push(&expr[i..i + len]);
            // Skip the rest of the identifier.
            let end = i + len;
            while iter.peek().is_some_and(|&(j, _)| j < end) {
                iter.next();
            }
            prev = expr[..end].chars().next_back();
            continue;
        }
        prev = Some(c);
    }
    out
}

/// DESIGN.md's only histogram is the `_seconds` metric; counters (`_total`), gauges and
/// `_build_info` have no `_bucket`/`_sum`/`_count` series.
fn is_histogram(name: &str) -> bool {
    name.ends_with("_seconds")
}

/// The exported metric each `outpost_*` identifier of `expr` refers to, or what is wrong.
fn check_expr(expr: &str) -> Result<BTreeSet<&'static str>, Vec<String>> {
    let mut used = BTreeSet::new();
    let mut problems = Vec::new();
    for ident in metric_identifiers(expr) {
        if let Some(&known) = outpost::metrics::ALL.iter().find(|&&m| m == ident) {
            if is_histogram(known) {
                problems.push(format!(
                    "{ident} is a histogram: query {ident}_bucket, _sum or _count"
                ));
            } else {
                used.insert(known);
            }
            continue;
        }
        let base = HISTOGRAM_SUFFIXES
            .iter()
            .find_map(|s| ident.strip_suffix(s))
            .and_then(|b| outpost::metrics::ALL.iter().find(|&&m| m == b))
            .filter(|m| is_histogram(m));
        match base {
            Some(&known) => {
                used.insert(known);
            }
            None => problems.push(format!(
                "unknown metric {ident} (not in outpost::metrics::ALL)"
            )),
        }
    }
    if problems.is_empty() {
        Ok(used)
    } else {
        Err(problems)
    }
}

// ---------------------------------------------------------------------------------------------
// Grafana dashboard

/// (location, expression) for every panel target (rows' nested panels included) and every
/// query variable of a dashboard.
fn dashboard_exprs(dash: &Json) -> Vec<(String, String)> {
    fn walk(panels: &[Json], out: &mut Vec<(String, String)>) {
        for p in panels {
            let title = p["title"].as_str().unwrap_or("?");
            for t in p["targets"].as_array().map(Vec::as_slice).unwrap_or(&[]) {
                let r = t["refId"].as_str().unwrap_or("?");
                match t["expr"].as_str() {
                    Some(e) => out.push((format!("panel {title:?} target {r}"), e.to_string())),
                    None => out.push((format!("panel {title:?} target {r}"), String::new())),
                }
            }
            if let Some(nested) = p["panels"].as_array() {
                walk(nested, out);
            }
        }
    }
    let mut out = Vec::new();
    walk(
        dash["panels"].as_array().map(Vec::as_slice).unwrap_or(&[]),
        &mut out,
    );
    for v in dash["templating"]["list"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or(&[])
    {
        if v["type"] == "query" {
            let q = v["definition"]
                .as_str()
                .or_else(|| v["query"]["query"].as_str())
                .or_else(|| v["query"].as_str())
                .unwrap_or("");
            out.push((format!("variable {}", v["name"]), q.to_string()));
        }
    }
    out
}

/// Metric names a dashboard uses, or every problem found in it.
fn check_dashboard(dash: &Json) -> Result<BTreeSet<&'static str>, Vec<String>> {
    let mut used = BTreeSet::new();
    let mut problems = Vec::new();
    let exprs = dashboard_exprs(dash);
    if exprs.is_empty() {
        problems.push("the dashboard has no queries".to_string());
    }
    for (at, expr) in &exprs {
        if expr.trim().is_empty() {
            problems.push(format!("{at}: empty expression"));
            continue;
        }
        match check_expr(expr) {
            Ok(names) => used.extend(names),
            Err(errs) => problems.extend(errs.into_iter().map(|e| format!("{at}: {e}"))),
        }
    }
    if problems.is_empty() {
        Ok(used)
    } else {
        Err(problems)
    }
}

fn load_dashboard() -> Json {
    let path = repo().join("deploy/grafana/outpost-dashboard.json");
    serde_json::from_str(&read(&path)).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn dashboard_queries_only_exported_metrics_and_all_of_them() {
    let dash = load_dashboard();
    let used = check_dashboard(&dash)
        .unwrap_or_else(|p| panic!("dashboard problems:\n  {}", p.join("\n  ")));
    let missing: Vec<_> = outpost::metrics::ALL
        .iter()
        .filter(|m| !used.contains(*m))
        .collect();
    assert!(
        missing.is_empty(),
        "the dashboard shows no panel for {missing:?}"
    );
}

#[test]
fn dashboard_is_importable_with_a_datasource_variable() {
    let dash = load_dashboard();
    assert!(
        dash["schemaVersion"].as_u64().unwrap_or(0) >= 36,
        "schemaVersion"
    );
    assert!(dash["uid"].is_string() && dash["title"].is_string());
    let vars = dash["templating"]["list"].as_array().expect("templating");
    let var = |name: &str| {
        vars.iter()
            .find(|v| v["name"] == name)
            .unwrap_or_else(|| panic!("no `{name}` variable"))
    };
    let ds = var("datasource");
    assert_eq!(ds["type"], "datasource");
    assert_eq!(ds["query"], "prometheus");
    let up = var("upstream");
    let def = up["definition"].as_str().unwrap_or_default();
    assert!(
        def.starts_with("label_values(outpost_requests_total") && def.ends_with(", upstream)"),
        "upstream variable: {def}"
    );

    let mut ids = BTreeSet::new();
    let mut stack: Vec<&Json> = dash["panels"].as_array().expect("panels").iter().collect();
    let mut panels = 0;
    while let Some(p) = stack.pop() {
        let title = p["title"].as_str().unwrap_or("?");
        assert!(
            ids.insert(p["id"].as_u64()),
            "duplicate panel id in {title}"
        );
        assert!(p["gridPos"].is_object(), "{title}: no gridPos");
        if p["type"] != "row" {
            panels += 1;
            assert_eq!(
                p["datasource"]["uid"], "${datasource}",
                "{title}: datasource must be the variable"
            );
            let targets = p["targets"].as_array().expect("targets");
            assert!(!targets.is_empty(), "{title}: no targets");
            let refs: BTreeSet<_> = targets.iter().map(|t| t["refId"].as_str()).collect();
            assert_eq!(refs.len(), targets.len(), "{title}: duplicate refId");
        }
        if let Some(nested) = p["panels"].as_array() {
            stack.extend(nested);
        }
    }
    assert!(panels >= 12, "only {panels} panels");
}

// ---------------------------------------------------------------------------------------------
// Kubernetes manifests

struct Doc {
    file: String,
    body: Yaml,
}

/// Every YAML document of every deploy/kubernetes/*.yaml file.
fn manifests() -> Vec<Doc> {
    let dir = repo().join("deploy/kubernetes");
    let mut files: Vec<_> = fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml" || x == "yml"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no manifests in {}", dir.display());
    let mut docs = Vec::new();
    for f in files {
        let text = read(&f);
        let name = f.file_name().unwrap().to_string_lossy().into_owned();
        for de in serde_yaml::Deserializer::from_str(&text) {
            let body = Yaml::deserialize(de).unwrap_or_else(|e| panic!("{name}: {e}"));
            if !body.is_null() {
                docs.push(Doc {
                    file: name.clone(),
                    body,
                });
            }
        }
    }
    docs
}

fn kind(d: &Doc) -> &str {
    d.body["kind"].as_str().unwrap_or("")
}

fn seq(v: &Yaml) -> &[Yaml] {
    v.as_sequence().map(Vec::as_slice).unwrap_or(&[])
}

fn one<'a>(docs: &'a [Doc], k: &str) -> &'a Doc {
    let found: Vec<_> = docs.iter().filter(|d| kind(d) == k).collect();
    assert_eq!(found.len(), 1, "expected one {k}, found {}", found.len());
    found[0]
}

/// Seconds of a duration string such as `20s`, `250ms`, `1m30s`.
fn seconds(s: &str) -> f64 {
    let mut total = 0.0;
    let mut num = String::new();
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c.is_ascii_digit() {
            num.push(c);
            continue;
        }
        let n: f64 = num.parse().unwrap_or_else(|_| panic!("bad duration {s}"));
        num.clear();
        total += match c {
            'm' if chars.peek() == Some(&'s') => {
                chars.next();
                n / 1000.0
            }
            'h' => n * 3600.0,
            'm' => n * 60.0,
            's' => n,
            _ => panic!("bad duration {s}"),
        };
    }
    assert!(num.is_empty(), "bad duration {s}");
    total
}

#[test]
fn alerts_query_only_exported_metrics() {
    let docs = manifests();
    let rule = one(&docs, "PrometheusRule");
    let mut used = BTreeSet::new();
    let mut alerts = BTreeSet::new();
    let mut problems = Vec::new();
    for g in seq(&rule.body["spec"]["groups"]) {
        for r in seq(&g["rules"]) {
            let name = r["alert"].as_str().or(r["record"].as_str()).unwrap_or("?");
            let expr = r["expr"].as_str().unwrap_or("");
            assert!(!expr.trim().is_empty(), "{name}: empty expr");
            match check_expr(expr) {
                Ok(names) => used.extend(names),
                Err(e) => problems.extend(e.into_iter().map(|p| format!("{name}: {p}"))),
            }
            if r["alert"].is_string() {
                alerts.insert(name.to_string());
                let sev = r["labels"]["severity"].as_str().unwrap_or("");
                assert!(
                    ["critical", "warning", "info"].contains(&sev),
                    "{name}: severity {sev:?}"
                );
                assert!(r["annotations"]["summary"].is_string(), "{name}: summary");
            }
        }
    }
    assert!(
        problems.is_empty(),
        "{}: {}",
        rule.file,
        problems.join("; ")
    );
    // The alerts the brief asks for, each on the metric it is about.
    for m in [
        outpost::metrics::REQUESTS_TOTAL,
        outpost::metrics::CIRCUIT_OPEN,
        outpost::metrics::RATE_LIMITED_TOTAL,
        outpost::metrics::WEBHOOKS_TOTAL,
        outpost::metrics::CONFIG_RELOADS_TOTAL,
    ] {
        assert!(used.contains(m), "no alert on {m}");
    }
    assert!(alerts.contains("OutpostDown"), "alerts: {alerts:?}");
}

#[test]
fn outpost_runs_as_a_native_sidecar_with_probes() {
    let docs = manifests();
    let deploy = one(&docs, "Deployment");
    let pod = &deploy.body["spec"]["template"]["spec"];

    let sidecar = seq(&pod["initContainers"])
        .iter()
        .find(|c| c["name"] == "outpost")
        .expect("an initContainers entry named outpost");
    assert_eq!(
        sidecar["restartPolicy"], "Always",
        "native sidecar needs restartPolicy: Always"
    );
    assert!(
        seq(&pod["containers"])
            .iter()
            .all(|c| c["name"] != "outpost"),
        "outpost must not also be a regular container"
    );
    assert!(
        sidecar["image"]
            .as_str()
            .unwrap_or_default()
            .starts_with("ghcr.io/outpost-proxy/outpost:"),
        "image"
    );
    let args: Vec<_> = seq(&sidecar["args"])
        .iter()
        .filter_map(Yaml::as_str)
        .collect();
    assert_eq!(args, ["run", "-c", "/etc/outpost/proxy.yaml"]);

    for (probe, path) in [
        ("startupProbe", "/readyz"),
        ("readinessProbe", "/readyz"),
        ("livenessProbe", "/healthz"),
    ] {
        let get = &sidecar[probe]["httpGet"];
        assert_eq!(get["path"], path, "{probe} path");
        assert!(
            get["port"] == 9090 || get["port"] == "admin",
            "{probe} port: {:?}",
            get["port"]
        );
    }
    let ports: Vec<_> = seq(&sidecar["ports"])
        .iter()
        .map(|p| (p["name"].as_str(), p["containerPort"].as_u64()))
        .collect();
    for want in [(Some("webhooks"), Some(8081)), (Some("admin"), Some(9090))] {
        assert!(ports.contains(&want), "port {want:?} in {ports:?}");
    }

    let sc = &sidecar["securityContext"];
    assert_eq!(sc["readOnlyRootFilesystem"], true);
    assert_eq!(sc["allowPrivilegeEscalation"], false);
    assert!(seq(&sc["capabilities"]["drop"]).iter().any(|c| c == "ALL"));
    assert!(sc["runAsNonRoot"] == true || pod["securityContext"]["runAsNonRoot"] == true);
}

#[test]
fn secrets_reach_only_outpost_and_can_rotate() {
    let docs = manifests();
    let deploy = one(&docs, "Deployment");
    let pod = &deploy.body["spec"]["template"]["spec"];
    let secret_volumes: BTreeSet<&str> = seq(&pod["volumes"])
        .iter()
        .filter(|v| v["secret"].is_mapping())
        .filter_map(|v| v["name"].as_str())
        .collect();
    assert!(!secret_volumes.is_empty(), "no Secret volume");

    for field in ["initContainers", "containers"] {
        for c in seq(&pod[field]) {
            let name = c["name"].as_str().unwrap_or("?");
            for m in seq(&c["volumeMounts"]) {
                let vol = m["name"].as_str().unwrap_or("");
                if secret_volumes.contains(vol) {
                    assert!(
                        m.get("subPath").is_none() && m.get("subPathExpr").is_none(),
                        "{name} mounts Secret volume {vol} with subPath: it would never rotate"
                    );
                    assert_eq!(name, "outpost", "only the sidecar may mount {vol}");
                }
            }
            if field == "containers" {
                for e in seq(&c["env"]) {
                    assert!(
                        e["valueFrom"]["secretKeyRef"].is_null(),
                        "{name} gets a secret in env {:?}",
                        e["name"]
                    );
                }
                assert!(
                    seq(&c["envFrom"]).iter().all(|e| e["secretRef"].is_null()),
                    "{name} gets a Secret via envFrom"
                );
            }
        }
    }
    let app = seq(&pod["containers"])
        .iter()
        .find(|c| c["name"] == "app")
        .expect("app container");
    let env: Vec<_> = seq(&app["env"])
        .iter()
        .map(|e| (e["name"].as_str(), e["value"].as_str()))
        .collect();
    assert!(
        env.contains(&(
            Some("STRIPE_API_BASE"),
            Some("http://127.0.0.1:8080/stripe")
        )),
        "{env:?}"
    );
}

#[test]
fn proxy_config_fits_the_pod() {
    let docs = manifests();
    let deploy = one(&docs, "Deployment");
    let pod = &deploy.body["spec"]["template"]["spec"];
    let cm = one(&docs, "ConfigMap");
    let text = cm.body["data"]["proxy.yaml"]
        .as_str()
        .expect("ConfigMap data.proxy.yaml");
    let cfg: Yaml = serde_yaml::from_str(text).expect("proxy.yaml parses");

    assert_eq!(cfg["version"], 1);
    assert_eq!(
        cfg["listen"], "127.0.0.1:8080",
        "the proxy must be loopback-only"
    );
    assert_eq!(cfg["admin_listen"], "0.0.0.0:9090");
    assert_eq!(cfg["webhook_listen"], "0.0.0.0:8081");
    let drain = seconds(cfg["drain_timeout"].as_str().expect("drain_timeout"));
    let grace = pod["terminationGracePeriodSeconds"]
        .as_f64()
        .expect("terminationGracePeriodSeconds");
    assert!(
        drain < grace,
        "drain_timeout {drain}s must fit in the {grace}s grace period"
    );

    for up in ["stripe", "sendgrid"] {
        assert_eq!(
            cfg["upstreams"][up]["preset"], up,
            "upstream {up} uses its preset"
        );
    }
    let hook = &cfg["webhooks"]["stripe"];
    assert_eq!(hook["scheme"], "stripe");
    assert_eq!(hook["forward_to"], "http://127.0.0.1:3000/webhooks/stripe");

    // Every credential is a ${file:...} reference into the Secret mounted in the sidecar.
    let secret = one(&docs, "Secret");
    let keys: BTreeSet<&str> = secret.body["stringData"]
        .as_mapping()
        .into_iter()
        .chain(secret.body["data"].as_mapping())
        .flat_map(|m| m.keys().filter_map(Yaml::as_str))
        .collect();
    let refs: Vec<&str> = text
        .split("${file:")
        .skip(1)
        .map(|rest| &rest[..rest.find('}').expect("closing brace")])
        .collect();
    assert!(refs.len() >= 3, "secret references: {refs:?}");
    for r in refs {
        let (dir, key) = r.rsplit_once('/').expect("absolute path");
        assert_eq!(dir, "/var/run/secrets/outpost", "{r}");
        assert!(keys.contains(key), "Secret has no key {key} for {r}");
    }
}

#[test]
fn only_the_webhook_port_is_exposed_and_admin_is_scraped() {
    let docs = manifests();
    let svc = one(&docs, "Service");
    let ports = seq(&svc.body["spec"]["ports"]);
    assert_eq!(ports.len(), 1, "the Service exposes only the webhook port");
    assert_eq!(ports[0]["name"], "webhooks");
    assert_eq!(ports[0]["port"], 8081);

    let pm = one(&docs, "PodMonitor");
    assert_eq!(pm.body["apiVersion"], "monitoring.coreos.com/v1");
    let ep = &seq(&pm.body["spec"]["podMetricsEndpoints"])[0];
    assert_eq!(ep["port"], "admin");
    assert_eq!(ep["path"], "/metrics");

    let deploy = one(&docs, "Deployment");
    let labels = &deploy.body["spec"]["template"]["metadata"]["labels"];
    for (what, sel) in [
        ("Service", &svc.body["spec"]["selector"]),
        ("PodMonitor", &pm.body["spec"]["selector"]["matchLabels"]),
    ] {
        let sel = sel.as_mapping().expect("selector");
        assert!(!sel.is_empty());
        for (k, v) in sel {
            assert_eq!(&labels[k.as_str().unwrap()], v, "{what} selector {k:?}");
        }
    }
}

#[test]
fn kustomization_lists_every_manifest() {
    let docs = manifests();
    let k = one(&docs, "Kustomization");
    let listed: BTreeSet<&str> = seq(&k.body["resources"])
        .iter()
        .filter_map(Yaml::as_str)
        .collect();
    let files: BTreeSet<&str> = docs
        .iter()
        .map(|d| d.file.as_str())
        .filter(|f| *f != "kustomization.yaml")
        .collect();
    assert_eq!(listed, files);
}

// ---------------------------------------------------------------------------------------------
// The checks above must be able to fail.

#[test]
fn extractor_finds_outpost_identifiers_at_word_boundaries() {
    let expr = r#"sum by (upstream) (rate(outpost_requests_total{container="outpost",upstream=~"$upstream"}[5m]))
        / on() group_left my_outpost_thing + outpost:recorded_rule + outpost_build_info"#;
    assert_eq!(
        metric_identifiers(expr),
        ["outpost_requests_total", "outpost_build_info"]
    );
    assert_eq!(
        metric_identifiers("outpost_a+outpost_b"),
        ["outpost_a", "outpost_b"]
    );
    assert!(metric_identifiers("up{job=\"outpost\"} == 0").is_empty());
}

#[test]
fn extractor_rejects_unknown_and_misused_metrics() {
    assert!(check_expr(
        "histogram_quantile(0.99, sum by (le) (rate(outpost_request_duration_seconds_bucket[5m])))"
    )
    .is_ok());
    assert!(check_expr("rate(outpost_request_duration_seconds_sum[5m]) / rate(outpost_request_duration_seconds_count[5m])").is_ok());

    let typo = check_expr("sum(rate(outpost_request_total[5m]))").unwrap_err();
    assert!(typo[0].contains("outpost_request_total"), "{typo:?}");
    // A suffix only makes sense on the histogram.
    assert!(check_expr("rate(outpost_requests_total_count[5m])").is_err());
    assert!(check_expr("outpost_circuit_open_bucket").is_err());
    // A bare histogram name selects nothing in Prometheus.
    assert!(check_expr("rate(outpost_request_duration_seconds[5m])").is_err());
}

#[test]
fn dashboard_check_catches_a_bad_panel() {
    let mut dash = load_dashboard();
    check_dashboard(&dash).expect("the real dashboard passes");
    let panels = dash["panels"].as_array_mut().unwrap();
    panels.push(serde_json::json!({
        "type": "row", "title": "bad", "id": 9999, "gridPos": {},
        "panels": [{
            "type": "timeseries", "title": "typo", "id": 10000,
            "targets": [{"refId": "A", "expr": "rate(outpost_upstream_attempt_total[5m])"}]
        }]
    }));
    let problems = check_dashboard(&dash).unwrap_err();
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert!(
        problems[0].contains("typo") && problems[0].contains("outpost_upstream_attempt_total"),
        "{problems:?}"
    );
}

#[test]
fn duration_parser() {
    assert_eq!(seconds("20s"), 20.0);
    assert_eq!(seconds("250ms"), 0.25);
    assert_eq!(seconds("1m30s"), 90.0);
    assert_eq!(seconds("2h"), 7200.0);
}
