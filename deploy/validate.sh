#!/usr/bin/env bash
# Validate everything under deploy/ offline: Kubernetes manifests against the bundled
# Kubernetes JSON schemas (strict), the Prometheus Operator resources and kustomization by
# structural checks, native-sidecar / secret-mount / port wiring, alert and dashboard PromQL
# (promtool check + promtool unit tests), metric names against src/metrics.rs.
#
# Usage (from anywhere; paths are resolved from this file):  deploy/validate.sh
#
# Needs:  python3 with  pip install kubernetes-validate==1.37.0   (brings PyYAML, jsonschema)
#         promtool      apt-get install -y --no-install-recommends prometheus
# Without promtool the run fails unless OUTPOST_VALIDATE_NO_PROMTOOL=1 is set, which skips the
# PromQL checks with a warning.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

if ! command -v python3 >/dev/null 2>&1; then
    echo "deploy/validate.sh: python3 not found" >&2
    exit 1
fi
if ! python3 -c 'import kubernetes_validate, yaml' >/dev/null 2>&1; then
    echo "deploy/validate.sh: the Python package kubernetes-validate is missing:" >&2
    echo "    python3 -m pip install kubernetes-validate==1.37.0" >&2
    exit 1
fi
if ! command -v promtool >/dev/null 2>&1 && [ "${OUTPOST_VALIDATE_NO_PROMTOOL:-}" != 1 ]; then
    echo "deploy/validate.sh: promtool not found:" >&2
    echo "    apt-get install -y --no-install-recommends prometheus" >&2
    echo "  (or OUTPOST_VALIDATE_NO_PROMTOOL=1 to skip the PromQL checks knowingly)" >&2
    exit 1
fi

exec python3 "$here/validate.py"
