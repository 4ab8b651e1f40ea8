#!/usr/bin/env bash
# Outpost soak test: 10 minutes of mixed traffic through the real binary to an upstream that
# injects faults (503, 429, 502, delays, dropped connections); PASS/FAIL per criterion.
# Usage (from anywhere):  bench/soak.sh            (exit 0 = PASS, 1 = FAIL, 2 = could not run)
# Env overrides (see bench/README.md, "Soak test"): SOAK_SECONDS (600), SOAK_CONCURRENCY (32),
#   OUTPOST_BIN (target/release/outpost), SOAK_REPORT (bench/SOAK.md), SOAK_SAMPLE_SECONDS (10),
#   SOAK_CLIENT_TIMEOUT (30), SOAK_RSS_TOLERANCE (10), SOAK_FAULT_CLOSE (0.02),
#   SOAK_FAULT_503 (0.03), SOAK_FAULT_429 (0.01), SOAK_FAULT_502 (0.02), SOAK_FAULT_DELAY (0.03),
#   SOAK_429_GAP_MS (5000), OUTPOST_LOG (info).
set -euo pipefail
cd "$(dirname "$0")/.."

say() { printf '[soak.sh] %s\n' "$*" >&2; }

say "building the release binary and the soak example"
cargo build --release --locked --bin outpost --example soak

export SOAK_REPORT=${SOAK_REPORT:-$PWD/bench/SOAK.md}
say "running ${SOAK_SECONDS:-600} s at concurrency ${SOAK_CONCURRENCY:-32} against ${OUTPOST_BIN:-target/release/outpost}"
status=0
cargo run --release --locked --quiet --example soak || status=$?
case $status in
    0) say "PASS; report: $SOAK_REPORT" ;;
    1) say "FAIL; report: $SOAK_REPORT" ;;
    *) say "the soak could not run (exit $status); no report written" ;;
esac
exit "$status"
