#!/usr/bin/env python3
"""Offline validation of Outpost's deploy/ files. Run through deploy/validate.sh.

1. Every document in deploy/kubernetes/*.yaml:
   - core kinds against the Kubernetes OpenAPI JSON schemas bundled in the PyPI package
     `kubernetes-validate`, in strict mode (unknown fields are errors), for Kubernetes 1.29 (the
     first release with native sidecars on by default) and for the newest bundled release;
   - the Prometheus Operator kinds (PodMonitor, PrometheusRule) and the Kustomization, which
     those schemas do not cover, by the structural checks below. A kind that is neither is an
     error, never a silent skip.
2. Cross-resource checks that a schema cannot express: the Outpost container is a native
   sidecar (initContainers + restartPolicy: Always) with /readyz and /healthz probes, no
   container mounts a Secret or the config with subPath, the app container gets no secret,
   every ${file:...} in proxy.yaml points into the mounted Secret, ports/selectors line up, and
   drain_timeout fits in terminationGracePeriodSeconds.
3. Alert and dashboard PromQL: metric names must be Outpost's (src/metrics.rs); with promtool,
   `promtool check rules` on the PrometheusRule and on every dashboard query (wrapped as
   recording rules), and `promtool test rules deploy/prometheus/alerts.test.yaml`.
4. A few facts of deploy/Dockerfile the manifests rely on (non-root USER, entrypoint path).

Exit status 0 when everything passes, 1 with one line per problem otherwise.
"""

from __future__ import annotations

import copy
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path, PurePosixPath
from typing import Any, Iterator

import yaml

try:
    import kubernetes_validate.utils as kv
except ImportError:  # pragma: no cover - validate.sh checks this first
    sys.exit("validate.py: the Python package kubernetes-validate is missing "
             "(pip install kubernetes-validate)")

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
K8S_DIR = DEPLOY / "kubernetes"
DASHBOARD = DEPLOY / "grafana" / "outpost-dashboard.json"
ALERT_TESTS = DEPLOY / "prometheus" / "alerts.test.yaml"
DOCKERFILE = DEPLOY / "Dockerfile"
METRICS_RS = ROOT / "src" / "metrics.rs"

# 1.29: native sidecars (SidecarContainers) are on by default from this release.
MIN_K8S = "1.29.0"
CUSTOM_KINDS = {"PodMonitor", "PrometheusRule", "Kustomization"}
SIDECAR_NAME = "outpost"
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")
PROM_DURATION = re.compile(r"^(0|(\d+y)?(\d+w)?(\d+d)?(\d+h)?(\d+m)?(\d+s)?(\d+ms)?)$")
DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
METRIC_IDENT = re.compile(r"(?<![A-Za-z0-9_:])outpost_[A-Za-z0-9_:]*")

errors: list[str] = []
notes: list[str] = []


def fail(where: str, msg: str) -> None:
    errors.append(f"{where}: {msg}")


def rel(p: Path) -> str:
    try:
        return str(p.relative_to(ROOT))
    except ValueError:
        return str(p)


# --------------------------------------------------------------------------------------------
# YAML loading: kubectl rejects duplicate keys, PyYAML silently keeps the last one.


class StrictLoader(yaml.SafeLoader):
    pass


def _construct_mapping(loader: StrictLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    loader.flatten_mapping(node)
    seen: dict[Any, Any] = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r}", key_node.start_mark)
        seen[key] = True
    return loader.construct_mapping(node, deep=deep)


StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


class Doc:
    def __init__(self, path: Path, index: int, body: dict):
        self.path = path
        self.index = index
        self.body = body

    @property
    def kind(self) -> str:
        return str(self.body.get("kind", ""))

    @property
    def name(self) -> str:
        return str((self.body.get("metadata") or {}).get("name", ""))

    def where(self, field: str = "") -> str:
        loc = f"{rel(self.path)}[{self.index}] {self.kind or '?'}/{self.name or '?'}"
        return f"{loc} {field}".rstrip()


def load_docs() -> list[Doc]:
    files = sorted(list(K8S_DIR.glob("*.yaml")) + list(K8S_DIR.glob("*.yml")))
    if not files:
        fail(rel(K8S_DIR), "no *.yaml manifests found")
    docs: list[Doc] = []
    for f in files:
        try:
            bodies = list(yaml.load_all(f.read_text(), Loader=StrictLoader))
        except yaml.YAMLError as e:
            fail(rel(f), f"YAML does not parse: {e}")
            continue
        for i, body in enumerate(bodies):
            if body is None:
                continue  # empty document (a trailing ---)
            if not isinstance(body, dict):
                fail(f"{rel(f)}[{i}]", "document is not a mapping")
                continue
            docs.append(Doc(f, i, body))
    return docs


# --------------------------------------------------------------------------------------------
# 1a. Core kinds against the bundled Kubernetes schemas.


def validate_core(doc: Doc, versions: list[str]) -> None:
    for version in versions:
        try:
            kv.validate(doc.body, version, strict=True)
        except kv.ValidationError as e:
            path = ".".join(str(p) for p in e.path) or "(root)"
            fail(doc.where(), f"Kubernetes {e.version} schema: {path}: {e.message}")
            return
        except kv.SchemaNotFoundError:
            fail(doc.where(), f"no Kubernetes {version} schema for apiVersion "
                 f"{doc.body.get('apiVersion')!r} kind {doc.kind!r}: a typo, or a custom "
                 "resource that needs a structural check in deploy/validate.py")
            return
        except kv.VersionNotSupportedError:
            fail(doc.where(), f"kubernetes-validate {kv.__version__} has no schemas for "
                 f"Kubernetes {version}; install a release that bundles it")
            return


# --------------------------------------------------------------------------------------------
# 1b. Structural checks for kinds without bundled schemas.


def check_keys(where: str, obj: Any, allowed: set[str], required: set[str] = frozenset()) -> bool:
    if not isinstance(obj, dict):
        fail(where, f"must be a mapping, got {type(obj).__name__}")
        return False
    for k in sorted(set(obj) - allowed):
        fail(where, f"unknown field {k!r} (allowed: {', '.join(sorted(allowed))})")
    for k in sorted(required - set(obj)):
        fail(where, f"missing required field {k!r}")
    return True


def check_str_map(where: str, obj: Any) -> None:
    if obj is None:
        return
    if not isinstance(obj, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in obj.items()):
        fail(where, "must be a map of strings to strings (quote numbers and booleans)")


def check_metadata(doc: Doc) -> None:
    md = doc.body.get("metadata")
    if not check_keys(doc.where("metadata"), md,
                      {"name", "labels", "annotations", "namespace"}, {"name"}):
        return
    if not isinstance(md.get("name"), str) or not DNS_SUBDOMAIN.match(md["name"]) \
            or len(md["name"]) > 253:
        fail(doc.where("metadata.name"), f"{md.get('name')!r} is not a DNS-1123 subdomain")
    check_str_map(doc.where("metadata.labels"), md.get("labels"))
    check_str_map(doc.where("metadata.annotations"), md.get("annotations"))


def check_label_selector(where: str, sel: Any) -> None:
    if not check_keys(where, sel, {"matchLabels", "matchExpressions"}):
        return
    if not sel:
        fail(where, "an empty selector selects every pod in the namespace")
    check_str_map(f"{where}.matchLabels", sel.get("matchLabels"))
    for i, expr in enumerate(sel.get("matchExpressions") or []):
        w = f"{where}.matchExpressions[{i}]"
        if check_keys(w, expr, {"key", "operator", "values"}, {"key", "operator"}):
            if expr["operator"] not in ("In", "NotIn", "Exists", "DoesNotExist"):
                fail(w, f"operator {expr['operator']!r} is not In/NotIn/Exists/DoesNotExist")


def prom_duration_seconds(where: str, value: Any) -> float | None:
    if not isinstance(value, str) or not value or not PROM_DURATION.match(value):
        fail(where, f"{value!r} is not a Prometheus duration (e.g. 30s, 5m, 1h30m)")
        return None
    units = {"y": 31536000, "w": 604800, "d": 86400, "h": 3600, "m": 60, "s": 1, "ms": 0.001}
    return sum(int(n) * units[u] for n, u in re.findall(r"(\d+)(ms|y|w|d|h|m|s)", value))


POD_MONITOR_SPEC = {
    "jobLabel", "podTargetLabels", "podMetricsEndpoints", "selector", "selectorMechanism",
    "namespaceSelector", "sampleLimit", "targetLimit", "labelLimit", "labelNameLengthLimit",
    "labelValueLengthLimit", "keepDroppedTargets", "attachMetadata", "scrapeClass",
    "scrapeProtocols", "fallbackScrapeProtocol", "bodySizeLimit",
    "nativeHistogramBucketLimit", "nativeHistogramMinBucketFactor",
    "scrapeClassicHistograms", "convertClassicHistogramsToNHCB",
}
POD_METRICS_ENDPOINT = {
    "port", "portNumber", "targetPort", "path", "scheme", "params", "interval",
    "scrapeTimeout", "honorLabels", "honorTimestamps", "trackTimestampsStaleness",
    "relabelings", "metricRelabelings", "enableHttp2", "filterRunning", "followRedirects",
    "proxyUrl", "noProxy", "proxyFromEnvironment", "proxyConnectHeader", "basicAuth",
    "bearerTokenSecret", "authorization", "oauth2", "tlsConfig",
}


def check_pod_monitor(doc: Doc) -> None:
    b = doc.body
    check_keys(doc.where(), b, {"apiVersion", "kind", "metadata", "spec"},
               {"apiVersion", "kind", "metadata", "spec"})
    if b.get("apiVersion") != "monitoring.coreos.com/v1":
        fail(doc.where("apiVersion"), f"{b.get('apiVersion')!r} is not monitoring.coreos.com/v1")
    check_metadata(doc)
    spec = b.get("spec")
    if not check_keys(doc.where("spec"), spec, POD_MONITOR_SPEC,
                      {"selector", "podMetricsEndpoints"}):
        return
    check_label_selector(doc.where("spec.selector"), spec.get("selector"))
    eps = spec.get("podMetricsEndpoints")
    if not isinstance(eps, list) or not eps:
        fail(doc.where("spec.podMetricsEndpoints"), "must be a non-empty list")
        return
    for i, ep in enumerate(eps):
        w = doc.where(f"spec.podMetricsEndpoints[{i}]")
        if not check_keys(w, ep, POD_METRICS_ENDPOINT):
            continue
        if not isinstance(ep.get("port"), str) or not ep.get("port"):
            fail(w, "needs `port`: the name of a container port (here: admin)")
        path = ep.get("path", "/metrics")
        if not isinstance(path, str) or not path.startswith("/"):
            fail(w + ".path", f"{path!r} must start with /")
        if ep.get("scheme", "http") not in ("http", "https", "HTTP", "HTTPS"):
            fail(w + ".scheme", f"{ep.get('scheme')!r} is not http or https")
        interval = timeout = None
        if "interval" in ep:
            interval = prom_duration_seconds(w + ".interval", ep["interval"])
        if "scrapeTimeout" in ep:
            timeout = prom_duration_seconds(w + ".scrapeTimeout", ep["scrapeTimeout"])
        if interval and timeout and timeout > interval:
            fail(w, "scrapeTimeout must not exceed interval")


RULE_GROUP = {"name", "interval", "rules", "limit", "partial_response_strategy",
              "query_offset", "labels"}
RULE = {"alert", "record", "expr", "for", "keep_firing_for", "labels", "annotations"}
SEVERITIES = {"critical", "warning", "info"}


def check_prometheus_rule(doc: Doc, metric_names: set[str]) -> None:
    b = doc.body
    check_keys(doc.where(), b, {"apiVersion", "kind", "metadata", "spec"},
               {"apiVersion", "kind", "metadata", "spec"})
    if b.get("apiVersion") != "monitoring.coreos.com/v1":
        fail(doc.where("apiVersion"), f"{b.get('apiVersion')!r} is not monitoring.coreos.com/v1")
    check_metadata(doc)
    spec = b.get("spec")
    if not check_keys(doc.where("spec"), spec, {"groups"}, {"groups"}):
        return
    groups = spec.get("groups")
    if not isinstance(groups, list) or not groups:
        fail(doc.where("spec.groups"), "must be a non-empty list")
        return
    group_names: set[str] = set()
    for gi, g in enumerate(groups):
        gw = doc.where(f"spec.groups[{gi}]")
        if not check_keys(gw, g, RULE_GROUP, {"name", "rules"}):
            continue
        if not isinstance(g["name"], str) or not g["name"]:
            fail(gw + ".name", "must be a non-empty string")
        elif g["name"] in group_names:
            fail(gw + ".name", f"duplicate group name {g['name']!r}")
        group_names.add(g.get("name"))
        if "interval" in g:
            prom_duration_seconds(gw + ".interval", g["interval"])
        rules = g.get("rules")
        if not isinstance(rules, list) or not rules:
            fail(gw + ".rules", "must be a non-empty list")
            continue
        alert_names: set[str] = set()
        for ri, r in enumerate(rules):
            rw = f"{gw}.rules[{ri}]"
            if not check_keys(rw, r, RULE, {"expr"}):
                continue
            if ("alert" in r) == ("record" in r):
                fail(rw, "needs exactly one of `alert` and `record`")
                continue
            expr = r.get("expr")
            if not isinstance(expr, str) or not expr.strip():
                fail(rw + ".expr", "must be a non-empty PromQL string")
                continue
            check_metric_names(rw + ".expr", expr, metric_names)
            for key in ("for", "keep_firing_for"):
                if key in r:
                    prom_duration_seconds(f"{rw}.{key}", r[key])
            check_str_map(rw + ".labels", r.get("labels"))
            check_str_map(rw + ".annotations", r.get("annotations"))
            if "alert" in r:
                name = r["alert"]
                if not isinstance(name, str) or not re.match(r"^[A-Za-z_][A-Za-z0-9_]*$", name):
                    fail(rw + ".alert", f"{name!r} is not a valid alert name")
                elif name in alert_names:
                    fail(rw + ".alert", f"duplicate alert {name!r} in one group")
                alert_names.add(name)
                sev = (r.get("labels") or {}).get("severity")
                if sev not in SEVERITIES:
                    fail(rw + ".labels.severity", f"{sev!r} is not one of {sorted(SEVERITIES)}")
                ann = r.get("annotations") or {}
                for a in ("summary", "description"):
                    if not isinstance(ann.get(a), str) or not ann[a].strip():
                        fail(rw + ".annotations", f"missing {a}")


KUSTOMIZATION = {"apiVersion", "kind", "resources", "namespace", "namePrefix", "nameSuffix",
                 "labels", "commonLabels", "commonAnnotations", "images", "patches",
                 "configMapGenerator", "secretGenerator", "generatorOptions", "components",
                 "replicas"}


def check_kustomization(doc: Doc, manifest_files: set[str]) -> None:
    b = doc.body
    check_keys(doc.where(), b, KUSTOMIZATION, {"resources"})
    if b.get("apiVersion") != "kustomize.config.k8s.io/v1beta1":
        fail(doc.where("apiVersion"), f"{b.get('apiVersion')!r} is not "
             "kustomize.config.k8s.io/v1beta1")
    res = b.get("resources")
    if not isinstance(res, list) or not all(isinstance(r, str) for r in res):
        fail(doc.where("resources"), "must be a list of file names")
        return
    for r in res:
        if not (K8S_DIR / r).is_file():
            fail(doc.where("resources"), f"{r!r} does not exist in {rel(K8S_DIR)}")
    if len(set(res)) != len(res):
        fail(doc.where("resources"), "lists a file twice")
    for missing in sorted(manifest_files - set(res)):
        fail(doc.where("resources"), f"does not list {missing!r}")


# --------------------------------------------------------------------------------------------
# Metric names.


def known_metrics() -> set[str]:
    if not METRICS_RS.is_file():
        fail(rel(METRICS_RS), "missing: it is the source of truth for metric names")
        return set()
    text = METRICS_RS.read_text()
    # `pub const ALL: &[&str] = &[REQUESTS_TOTAL, ...];` names the exported metrics, by
    # constant or by literal.
    m = re.search(r"pub\s+const\s+ALL\s*:\s*&\[&(?:'static\s+)?str\]\s*=\s*&\[(.*?)\];", text, re.S)
    if not m:
        fail(rel(METRICS_RS), "has no `pub const ALL: &[&str]` list of metric names")
        return set()
    consts = dict(re.findall(r'pub\s+const\s+([A-Z0-9_]+)\s*:\s*&(?:\'static\s+)?str\s*=\s*"([^"]*)"',
                             text))
    names = set()
    for item in re.sub(r"//[^\n]*", "", m.group(1)).split(","):
        item = item.strip()
        if not item:
            continue
        if item.startswith('"') and item.endswith('"'):
            names.add(item[1:-1])
        elif item.split("::")[-1] in consts:
            names.add(consts[item.split("::")[-1]])
        else:
            fail(rel(METRICS_RS), f"cannot resolve {item!r} in ALL")
    if not names:
        fail(rel(METRICS_RS), "ALL lists no metric names")
    return names


def histogram_names(known: set[str]) -> set[str]:
    # Only histograms have _bucket/_sum/_count series; in DESIGN.md that is the one _seconds
    # metric. Counters (_total), gauges and _info/_build_info never get those suffixes.
    return {n for n in known if n.endswith("_seconds")}


def check_metric_names(where: str, expr: str, known: set[str]) -> None:
    if not known:
        return
    hist = histogram_names(known)
    for ident in METRIC_IDENT.findall(expr):
        if ident in known:
            if ident in hist:
                fail(where, f"{ident} is a histogram: query {ident}_bucket, _sum or _count")
            continue
        base = next((ident[: -len(s)] for s in HISTOGRAM_SUFFIXES if ident.endswith(s)), None)
        if base in hist:
            continue
        fail(where, f"unknown metric {ident!r} (not in src/metrics.rs)")


# --------------------------------------------------------------------------------------------
# 2. Cross-resource checks.


def containers_of(pod_spec: dict) -> Iterator[tuple[str, dict]]:
    for field in ("initContainers", "containers", "ephemeralContainers"):
        for c in pod_spec.get(field) or []:
            yield field, c


def container_port(pod_spec: dict, ref: Any) -> int | None:
    """Resolve a port name or number to a container port number of this pod."""
    if isinstance(ref, int):
        for _, c in containers_of(pod_spec):
            for p in c.get("ports") or []:
                if p.get("containerPort") == ref:
                    return ref
        return ref  # a number need not be declared; the probe/Service still works
    for _, c in containers_of(pod_spec):
        for p in c.get("ports") or []:
            if p.get("name") == ref:
                return p.get("containerPort")
    return None


def labels_match(selector: dict, labels: dict) -> bool:
    ml = selector.get("matchLabels") or {}
    if any(labels.get(k) != v for k, v in ml.items()):
        return False
    for e in selector.get("matchExpressions") or []:
        op, key, vals = e.get("operator"), e.get("key"), e.get("values") or []
        if op == "In" and labels.get(key) not in vals:
            return False
        if op == "NotIn" and labels.get(key) in vals:
            return False
        if op == "Exists" and key not in labels:
            return False
        if op == "DoesNotExist" and key in labels:
            return False
    return True


def parse_go_duration(where: str, value: Any) -> float | None:
    """Outpost durations: 250ms, 5s, 2m, 1h, combinations like 1m30s."""
    if not isinstance(value, str) or not re.fullmatch(r"(\d+(ms|s|m|h))+", value):
        fail(where, f"{value!r} is not a duration such as 20s")
        return None
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}
    return sum(int(n) * units[u] for n, u in re.findall(r"(\d+)(ms|s|m|h)", value))


def listen_port(where: str, addr: Any) -> tuple[str, int] | None:
    m = re.fullmatch(r"(\[[^\]]+\]|[^:]+):(\d+)", str(addr))
    if not m:
        fail(where, f"{addr!r} is not host:port")
        return None
    return m.group(1), int(m.group(2))


def walk_strings(obj: Any) -> Iterator[str]:
    if isinstance(obj, str):
        yield obj
    elif isinstance(obj, dict):
        for v in obj.values():
            yield from walk_strings(v)
    elif isinstance(obj, list):
        for v in obj:
            yield from walk_strings(v)


def check_workloads(docs: list[Doc]) -> None:
    by_kind: dict[str, list[Doc]] = {}
    for d in docs:
        by_kind.setdefault(d.kind, []).append(d)
    config_maps = {d.name: d for d in by_kind.get("ConfigMap", [])}
    secrets = {d.name: d for d in by_kind.get("Secret", [])}

    workloads = [d for k in ("Deployment", "StatefulSet", "DaemonSet") for d in by_kind.get(k, [])]
    sidecar_pods: list[tuple[Doc, dict, dict]] = []  # (doc, pod template labels, pod spec)

    for d in docs:
        if (d.body.get("metadata") or {}).get("namespace"):
            fail(d.where("metadata.namespace"), "manifests are namespace-less: choose the "
                 "namespace with `kubectl apply -n` or kustomization.yaml")

    for wl in workloads:
        tmpl = ((wl.body.get("spec") or {}).get("template") or {})
        pod = tmpl.get("spec") or {}
        labels = (tmpl.get("metadata") or {}).get("labels") or {}
        sel = (wl.body.get("spec") or {}).get("selector") or {}
        if not labels_match(sel, labels):
            fail(wl.where("spec.selector"), "does not match the pod template's labels")

        volumes = {v.get("name"): v for v in pod.get("volumes") or []}

        def secret_backed(vol: dict) -> bool:
            if "secret" in vol:
                return True
            return any("secret" in s for s in (vol.get("projected") or {}).get("sources") or [])

        # No subPath on Secret or ConfigMap volumes: such a mount never sees an update.
        for field, c in containers_of(pod):
            for i, m in enumerate(c.get("volumeMounts") or []):
                vol = volumes.get(m.get("name"))
                if vol is None:
                    fail(wl.where(f"{field}[{c.get('name')}].volumeMounts[{i}]"),
                         f"volume {m.get('name')!r} is not defined")
                    continue
                has_sub = "subPath" in m or "subPathExpr" in m
                if has_sub and secret_backed(vol):
                    fail(wl.where(f"{field}[{c.get('name')}].volumeMounts[{i}]"),
                         f"mounts Secret volume {m.get('name')!r} with subPath: rotated "
                         "secrets would never reach the container; mount the directory")
                elif has_sub and "configMap" in vol:
                    fail(wl.where(f"{field}[{c.get('name')}].volumeMounts[{i}]"),
                         f"mounts ConfigMap volume {m.get('name')!r} with subPath: config "
                         "edits would never reach the container; mount the directory")

        sidecars = [c for c in pod.get("initContainers") or []
                    if c.get("name") == SIDECAR_NAME or "outpost" in str(c.get("image", ""))]
        misplaced = [c for c in pod.get("containers") or []
                     if c.get("name") == SIDECAR_NAME or "outpost" in str(c.get("image", ""))]
        for c in misplaced:
            fail(wl.where(f"containers[{c.get('name')}]"), "Outpost must run as a native "
                 "sidecar: an initContainers entry with restartPolicy: Always")
        if not sidecars:
            continue
        if len(sidecars) > 1:
            fail(wl.where("spec.template.spec.initContainers"), "more than one Outpost sidecar")
        sc = sidecars[0]
        sw = wl.where(f"initContainers[{sc.get('name')}]")
        sidecar_pods.append((wl, labels, pod))

        if sc.get("restartPolicy") != "Always":
            fail(sw, "restartPolicy must be Always (native sidecar; without it the pod "
                 "waits forever for this init container to exit)")
        init_names = [c.get("name") for c in pod.get("initContainers") or []]
        for before in init_names[: init_names.index(sc.get("name"))]:
            notes.append(f"{sw}: init container {before!r} runs before the sidecar, "
                         "without the proxy")

        # Probes.
        def probe(kind: str, path: str) -> int | None:
            p = sc.get(kind)
            if not isinstance(p, dict) or not isinstance(p.get("httpGet"), dict):
                fail(sw, f"needs a {kind} with httpGet {path}")
                return None
            hg = p["httpGet"]
            if hg.get("path") != path:
                fail(sw + f".{kind}", f"path {hg.get('path')!r}, expected {path}")
            port = container_port(pod, hg.get("port"))
            if port is None:
                fail(sw + f".{kind}", f"port {hg.get('port')!r} is not a container port")
            return port

        probe_ports = {probe("startupProbe", "/readyz"), probe("readinessProbe", "/readyz"),
                       probe("livenessProbe", "/healthz")}

        # Hardening.
        psc = pod.get("securityContext") or {}
        csc = sc.get("securityContext") or {}

        def eff(key: str) -> Any:
            return csc.get(key, psc.get(key))

        if eff("runAsNonRoot") is not True:
            fail(sw, "securityContext.runAsNonRoot must be true")
        if eff("runAsUser") == 0:
            fail(sw, "securityContext.runAsUser must not be 0")
        if csc.get("readOnlyRootFilesystem") is not True:
            fail(sw, "securityContext.readOnlyRootFilesystem must be true")
        if csc.get("allowPrivilegeEscalation") is not False:
            fail(sw, "securityContext.allowPrivilegeEscalation must be false")
        if "ALL" not in ((csc.get("capabilities") or {}).get("drop") or []):
            fail(sw, "securityContext.capabilities.drop must include ALL")
        if (eff("seccompProfile") or {}).get("type") != "RuntimeDefault":
            fail(sw, "seccompProfile.type must be RuntimeDefault")
        res = sc.get("resources") or {}
        for key in ("requests.cpu", "requests.memory", "limits.memory"):
            a, b = key.split(".")
            if b not in (res.get(a) or {}):
                fail(sw, f"resources.{key} is not set")

        # Config: args point at a ConfigMap key mounted as a directory.
        args = sc.get("args") or []
        cfg_path = None
        if len(args) >= 3 and args[0] == "run" and args[1] in ("-c", "--config"):
            cfg_path = PurePosixPath(args[2])
        else:
            fail(sw + ".args", f"{args!r}: expected [run, -c, /etc/outpost/proxy.yaml]")
        mounts = {m.get("mountPath"): m for m in sc.get("volumeMounts") or []}
        proxy_cfg = None
        if cfg_path is not None:
            m = mounts.get(str(cfg_path.parent))
            vol = volumes.get(m.get("name")) if m else None
            cm_name = ((vol or {}).get("configMap") or {}).get("name")
            if not cm_name:
                fail(sw, f"{cfg_path.parent} is not a ConfigMap volume mount")
            elif cm_name not in config_maps:
                fail(sw, f"ConfigMap {cm_name!r} is not among the manifests")
            else:
                text = (config_maps[cm_name].body.get("data") or {}).get(cfg_path.name)
                if not isinstance(text, str):
                    fail(config_maps[cm_name].where("data"), f"has no key {cfg_path.name!r}")
                else:
                    try:
                        proxy_cfg = yaml.load(text, Loader=StrictLoader)
                    except yaml.YAMLError as e:
                        fail(config_maps[cm_name].where(f"data.{cfg_path.name}"),
                             f"YAML does not parse: {e}")
                    cw = config_maps[cm_name].where(f"data.{cfg_path.name}")

        if isinstance(proxy_cfg, dict):
            # Listeners.
            lp = listen_port(cw + " listen", proxy_cfg.get("listen", "127.0.0.1:8080"))
            if lp and lp[0] not in ("127.0.0.1", "localhost", "[::1]"):
                fail(cw + " listen", f"{lp[0]} is not loopback: the app-facing proxy must "
                     "only be reachable from inside the pod")
            ap = listen_port(cw + " admin_listen", proxy_cfg.get("admin_listen", "0.0.0.0:9090"))
            if ap and ap[1] not in probe_ports:
                fail(sw, f"probes do not target admin_listen port {ap[1]}")
            if ap and container_port(pod, "admin") != ap[1]:
                fail(sw, f"container port `admin` must be admin_listen's port {ap[1]} "
                     "(the PodMonitor scrapes it by that name)")
            wp = None
            if proxy_cfg.get("webhooks"):
                wp = listen_port(cw + " webhook_listen",
                                 proxy_cfg.get("webhook_listen", "0.0.0.0:8081"))
                if wp and container_port(pod, "webhooks") != wp[1]:
                    fail(sw, f"container port `webhooks` must be webhook_listen's port {wp[1]}")
            # Drain fits into the grace period.
            drain = parse_go_duration(cw + " drain_timeout", proxy_cfg.get("drain_timeout", "0s"))
            grace = pod.get("terminationGracePeriodSeconds", 30)
            if drain is not None and drain >= grace:
                fail(wl.where("terminationGracePeriodSeconds"), f"{grace}s leaves no room "
                     f"for Outpost's drain_timeout ({drain:g}s); the kubelet would SIGKILL it "
                     "mid-drain")
            # Secret references.
            env_names = {e.get("name") for e in sc.get("env") or []}
            for s in walk_strings(proxy_cfg):
                for ref in re.findall(r"\$\{env:([^}]+)\}", s):
                    if ref not in env_names:
                        fail(cw, f"${{env:{ref}}} but the sidecar has no env {ref}")
                for ref in re.findall(r"\$\{file:([^}]+)\}", s):
                    p = PurePosixPath(ref)
                    m = mounts.get(str(p.parent))
                    vol = volumes.get(m.get("name")) if m else None
                    if not vol or "secret" not in vol:
                        fail(cw, f"${{file:{ref}}}: {p.parent} is not a Secret volume "
                             "mounted (as a directory) in the sidecar")
                        continue
                    sname = vol["secret"].get("secretName")
                    items = vol["secret"].get("items")
                    if items:
                        keys = {i.get("path") for i in items}
                    elif sname in secrets:
                        sb = secrets[sname].body
                        keys = set(sb.get("data") or {}) | set(sb.get("stringData") or {})
                    else:
                        notes.append(f"{cw}: Secret {sname!r} is created outside these "
                                     f"manifests; not checking that it has key {p.name!r}")
                        continue
                    if p.name not in keys:
                        fail(cw, f"${{file:{ref}}}: Secret {sname!r} has no key {p.name!r}")
            for uname, u in (proxy_cfg.get("upstreams") or {}).items():
                auth = (u or {}).get("auth") if isinstance(u, dict) else None
                for s in walk_strings(auth):
                    if ("${" not in s and re.search(r"(sk_live|sk_test|SG\.|whsec_)", s)):
                        fail(cw, f"upstream {uname}: a literal credential in the config; "
                             "reference it with ${file:...}")

        # The application containers hold no secret.
        secret_vols = {n for n, v in volumes.items() if secret_backed(v)}
        for c in pod.get("containers") or []:
            cw2 = wl.where(f"containers[{c.get('name')}]")
            for e in c.get("env") or []:
                if ((e.get("valueFrom") or {}).get("secretKeyRef")):
                    fail(cw2, f"env {e.get('name')} comes from a Secret: the application "
                         "must not hold credentials; Outpost injects them")
            for ef in c.get("envFrom") or []:
                if ef.get("secretRef"):
                    fail(cw2, "envFrom a Secret: the application must not hold credentials")
            for m in c.get("volumeMounts") or []:
                if m.get("name") in secret_vols:
                    fail(cw2, f"mounts Secret volume {m.get('name')!r}: only the Outpost "
                         "sidecar may read the credentials")

    if not sidecar_pods:
        fail(rel(K8S_DIR), "no workload runs Outpost as a native sidecar "
             f"(an initContainers entry named {SIDECAR_NAME!r})")
        return

    # Services and PodMonitors select the sidecar pods through the right ports.
    for svc in by_kind.get("Service", []):
        spec = svc.body.get("spec") or {}
        sel = spec.get("selector") or {}
        targets = [(wl, pod) for wl, labels, pod in sidecar_pods
                   if sel and all(labels.get(k) == v for k, v in sel.items())]
        if not targets:
            fail(svc.where("spec.selector"), "selects no pod of the manifests")
            continue
        for wl, pod in targets:
            sidecar = next(c for c in pod["initContainers"] if c.get("name") == SIDECAR_NAME)
            wh = {p.get("containerPort") for p in sidecar.get("ports") or []
                  if p.get("name") == "webhooks"}
            for i, p in enumerate(spec.get("ports") or []):
                tgt = container_port(pod, p.get("targetPort", p.get("port")))
                if tgt is None:
                    fail(svc.where(f"spec.ports[{i}]"), f"targetPort {p.get('targetPort')!r} "
                         f"is not a container port of {wl.name}")
                elif tgt not in wh:
                    fail(svc.where(f"spec.ports[{i}]"), f"exposes port {tgt}: only Outpost's "
                         "webhook port may be exposed (the proxy is loopback-only, admin is "
                         "scraped by the PodMonitor)")

    for pm in by_kind.get("PodMonitor", []):
        spec = pm.body.get("spec") or {}
        sel = spec.get("selector") or {}
        hits = [(wl, pod) for wl, labels, pod in sidecar_pods if labels_match(sel, labels)]
        if not hits:
            fail(pm.where("spec.selector"), "selects no pod running the Outpost sidecar")
        for i, ep in enumerate(spec.get("podMetricsEndpoints") or []):
            for wl, pod in hits:
                if ep.get("port") and container_port(pod, ep["port"]) is None:
                    fail(pm.where(f"spec.podMetricsEndpoints[{i}].port"),
                         f"{ep['port']!r} is not a container port name in {wl.name}")


# --------------------------------------------------------------------------------------------
# 3. PromQL through promtool; dashboard checks.


def dashboard_queries() -> list[tuple[str, str]]:
    """(where, expr) for every query of the dashboard, variables included."""
    out: list[tuple[str, str]] = []
    try:
        dash = json.loads(DASHBOARD.read_text())
    except (OSError, json.JSONDecodeError) as e:
        fail(rel(DASHBOARD), f"does not parse as JSON: {e}")
        return out
    if dash.get("schemaVersion", 0) < 36:
        fail(rel(DASHBOARD), "schemaVersion < 36: export it from a current Grafana")
    tvars = {v.get("name"): v for v in (dash.get("templating") or {}).get("list") or []}
    ds = tvars.get("datasource")
    if not ds or ds.get("type") != "datasource" or ds.get("query") != "prometheus":
        fail(rel(DASHBOARD), "needs a `datasource` variable of type datasource (prometheus)")
    for v in tvars.values():
        if v.get("type") == "query":
            q = v.get("definition") or v.get("query")
            q = q.get("query") if isinstance(q, dict) else q
            out.append((f"{rel(DASHBOARD)} variable {v.get('name')}", str(q)))

    ids: set[int] = set()

    def walk(panels: list, where: str) -> None:
        for p in panels:
            pw = f"{where} panel {p.get('title')!r}"
            if p.get("id") in ids:
                fail(pw, f"duplicate panel id {p.get('id')}")
            ids.add(p.get("id"))
            if "gridPos" not in p:
                fail(pw, "has no gridPos")
            if p.get("type") != "row":
                if (p.get("datasource") or {}).get("uid") != "${datasource}":
                    fail(pw, "datasource must be the ${datasource} variable")
                if not p.get("targets"):
                    fail(pw, "has no targets")
            refs = [t.get("refId") for t in p.get("targets") or []]
            if len(refs) != len(set(refs)):
                fail(pw, "duplicate refId")
            for t in p.get("targets") or []:
                if (t.get("datasource") or {}).get("uid") not in (None, "${datasource}"):
                    fail(pw, f"target {t.get('refId')} pins a datasource")
                if not isinstance(t.get("expr"), str) or not t["expr"].strip():
                    fail(pw, f"target {t.get('refId')} has no expr")
                else:
                    out.append((f"{pw} target {t.get('refId')}", t["expr"]))
            walk(p.get("panels") or [], where)

    walk(dash.get("panels") or [], rel(DASHBOARD))
    return out


def grafana_to_promql(expr: str) -> str:
    """Replace Grafana's variables so promtool can parse the query."""
    expr = re.sub(r"\$__(rate_interval|interval|range)\b", "5m", expr)
    expr = re.sub(r"\$\{?[A-Za-z_][A-Za-z0-9_]*(:[a-z]+)?\}?", ".*", expr)
    return expr


def promtool_checks(rule_docs: list[Doc], dash_queries: list[tuple[str, str]]) -> None:
    promtool = shutil.which("promtool")
    if not promtool:
        if os.environ.get("OUTPOST_VALIDATE_NO_PROMTOOL") == "1":
            notes.append("WARNING: promtool not found and OUTPOST_VALIDATE_NO_PROMTOOL=1: "
                         "PromQL syntax and the alert unit tests were NOT checked")
            return
        fail("promtool", "not found: install it (Debian: apt-get install prometheus) or set "
             "OUTPOST_VALIDATE_NO_PROMTOOL=1 to skip the PromQL checks knowingly")
        return

    def run(args: list[str], cwd: str, what: str) -> None:
        r = subprocess.run([promtool, *args], cwd=cwd, capture_output=True, text=True)
        if r.returncode != 0:
            lines = [ln for ln in (r.stdout + r.stderr).splitlines() if ln.strip()]
            out = "\n    ".join(dict.fromkeys(lines))  # promtool repeats parse errors
            fail(what, f"`promtool {' '.join(args)}` failed:\n    {out}")

    with tempfile.TemporaryDirectory(prefix="outpost-validate-") as tmp:
        for d in rule_docs:
            groups = (d.body.get("spec") or {}).get("groups")
            (Path(tmp) / "rules.yaml").write_text(yaml.safe_dump({"groups": groups}))
            run(["check", "rules", "rules.yaml"], tmp, d.where())
            # Unit tests compare every annotation; drop the long descriptions, keep summaries.
            stripped = copy.deepcopy(groups)
            for g in stripped:
                for r in g.get("rules") or []:
                    (r.get("annotations") or {}).pop("description", None)
            (Path(tmp) / "outpost-rules.yaml").write_text(yaml.safe_dump({"groups": stripped}))
            if not ALERT_TESTS.is_file():
                fail(rel(ALERT_TESTS), "missing: the alerts need unit tests")
            else:
                shutil.copy(ALERT_TESTS, Path(tmp) / ALERT_TESTS.name)
                run(["test", "rules", ALERT_TESTS.name], tmp, rel(ALERT_TESTS))

        if dash_queries:
            rules = [{"record": f"outpost:dashboard_query:{i}", "expr": grafana_to_promql(q)}
                     for i, (_, q) in enumerate(dash_queries)
                     if not q.startswith("label_values(")]
            for where, q in dash_queries:
                if q.startswith("label_values("):
                    m = re.fullmatch(r"label_values\((.*),\s*([A-Za-z_][A-Za-z0-9_]*)\)", q)
                    if not m:
                        fail(where, f"{q!r} is not label_values(<selector>, <label>)")
                    else:
                        rules.append({"record": "outpost:dashboard_variable",
                                      "expr": grafana_to_promql(m.group(1))})
            (Path(tmp) / "dashboard.yaml").write_text(
                yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
            run(["check", "rules", "dashboard.yaml"], tmp,
                f"{rel(DASHBOARD)} (queries wrapped as recording rules)")


# --------------------------------------------------------------------------------------------
# 4. Dockerfile facts the manifests rely on.


def check_dockerfile() -> None:
    if not DOCKERFILE.is_file():
        fail(rel(DOCKERFILE), "missing")
        return
    text = DOCKERFILE.read_text()
    stages = re.split(r"(?m)^FROM\s", text)
    final = stages[-1]
    user = re.findall(r"(?m)^USER\s+(\S+)", final)
    if not user or user[-1].split(":")[0] in ("0", "root") or \
            not user[-1].split(":")[0].isdigit():
        fail(rel(DOCKERFILE), "the final stage must set a numeric non-root USER "
             "(runAsNonRoot cannot verify a user name)")
    if '"/usr/local/bin/outpost"' not in final or "COPY --from=" not in final:
        fail(rel(DOCKERFILE), "the final stage must COPY the binary to /usr/local/bin/outpost "
             "and use it as ENTRYPOINT")
    if "--locked" not in text or "x86_64-unknown-linux-musl" not in text:
        fail(rel(DOCKERFILE), "the build must be `cargo build --release --locked` for musl")


def main() -> int:
    metric_names = known_metrics()
    docs = load_docs()
    versions = sorted({MIN_K8S, kv.latest_version()}, key=lambda v: tuple(map(int, v.split("."))))
    manifest_files = {p.name for p in K8S_DIR.glob("*.y*ml") if p.name not in
                      ("kustomization.yaml", "kustomization.yml")}

    counts: dict[str, int] = {}
    for d in docs:
        counts[d.kind] = counts.get(d.kind, 0) + 1
        if not d.kind or "apiVersion" not in d.body:
            fail(d.where(), "needs apiVersion and kind")
        elif d.kind == "PodMonitor":
            check_pod_monitor(d)
        elif d.kind == "PrometheusRule":
            check_prometheus_rule(d, metric_names)
        elif d.kind == "Kustomization":
            check_kustomization(d, manifest_files)
        else:
            validate_core(d, versions)

    check_workloads(docs)

    dash_queries = dashboard_queries()
    for where, q in dash_queries:
        check_metric_names(where, q, metric_names)
    promtool_checks([d for d in docs if d.kind == "PrometheusRule"], dash_queries)
    check_dockerfile()

    for n in notes:
        print(f"note: {n}")
    summary = ", ".join(f"{v} {k}" for k, v in sorted(counts.items()))
    if errors:
        for e in errors:
            print(f"FAIL {e}", file=sys.stderr)
        print(f"deploy/validate: {len(errors)} problem(s) in {len(docs)} documents ({summary})",
              file=sys.stderr)
        return 1
    print(f"deploy/validate: OK: {len(docs)} documents ({summary}); core kinds against "
          f"Kubernetes {' and '.join(v.rsplit('.', 1)[0] for v in versions)} schemas (strict), "
          f"{len(dash_queries)} dashboard queries, alert unit tests"
          + ("" if shutil.which("promtool") else " SKIPPED (no promtool)"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
