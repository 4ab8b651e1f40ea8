#!/usr/bin/env bash
# Deterministic companion to bench/run.sh: user-space instructions and heap allocations per
# request of outpost-plain and outpost-full, counted by valgrind's callgrind (not timed, so
# the background load of a shared machine does not move it). Kernel work is not counted;
# both variants make the same syscalls per request (checked with strace -c).
# Usage (from the repo root): bench/instructions.sh     env: SECONDS_PER_RUN (15), OUTPOST_BIN,
#   OUT (bench/INSTRUCTIONS.md), KEEP_TMP=1
set -euo pipefail

SECONDS_PER_RUN=${SECONDS_PER_RUN:-15}
OUTPOST_BIN=${OUTPOST_BIN:-target/release/outpost}
OUT=${OUT:-bench/INSTRUCTIONS.md}
export PATH="$PATH:/usr/sbin:/sbin"

missing=()
for t in nginx:nginx wrk:wrk valgrind:valgrind callgrind_control:valgrind python3:python3 taskset:util-linux curl:curl; do
    command -v "${t%%:*}" >/dev/null 2>&1 || missing+=("${t#*:}")
done
if ((${#missing[@]})); then
    echo "bench/instructions.sh: missing tools. Install them with:" >&2
    echo "    apt-get install -y $(printf '%s\n' "${missing[@]}" | sort -u | tr '\n' ' ')" >&2
    exit 2
fi
[[ -x $OUTPOST_BIN ]] || { echo "$OUTPOST_BIN not found: cargo build --release" >&2; exit 1; }
BIN=$(readlink -f "$OUTPOST_BIN")

T=$(mktemp -d /tmp/outpost-instr.XXXXXX)
chmod 755 "$T"
PIDS=()
cleanup() {
    local p
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
    if [[ ${KEEP_TMP:-0} == 1 ]]; then echo "kept $T" >&2; else rm -rf "$T"; fi
}
trap cleanup EXIT

read -r EPH_LO _ </proc/sys/net/ipv4/ip_local_port_range
USED=" "
free_port() {
    local p
    while :; do
        p=$((EPH_LO - 10000 + RANDOM % 9000))
        [[ $USED == *" $p "* ]] && continue
        (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null && continue
        USED+="$p "; echo "$p"; return
    done
}
P_UP=$(free_port)
declare -A PORT ADM PID
for v in plain full; do PORT[$v]=$(free_port); ADM[$v]=$(free_port); done
CPU_A=0; CPU_B=$(($(nproc) > 1 ? 1 : 0))

cat >"$T/up.conf" <<EOF
worker_processes 1; daemon off; pid $T/up.pid; error_log $T/up.err warn;
events { worker_connections 4096; }
http { access_log off; keepalive_requests 10000000; keepalive_timeout 300s;
  client_body_temp_path $T/b; proxy_temp_path $T/p; fastcgi_temp_path $T/f; uwsgi_temp_path $T/u; scgi_temp_path $T/s;
  server { listen 127.0.0.1:$P_UP;
    location = /v1/charges { default_type application/json; return 200 '{"id":"ch_bench","object":"charge","amount":1000,"currency":"usd","status":"succeeded"}'; } } }
EOF
taskset -c "$CPU_B" nginx -e "$T/up.err" -p "$T" -c "$T/up.conf" >"$T/up.out" 2>&1 &
PIDS+=($!)

for v in plain full; do
    extra="    retry: { max_attempts: 1 }"
    [[ $v == full ]] && extra="    rate_limit: { requests_per_second: 1000000, burst: 1000000 }
    retry: { max_attempts: 3 }"
    cat >"$T/$v.yaml" <<EOF
version: 1
listen: 127.0.0.1:${PORT[$v]}
admin_listen: 127.0.0.1:${ADM[$v]}
upstreams:
  stripe:
    base_url: http://127.0.0.1:$P_UP
    auth: { type: bearer, token: "\${env:BENCH_KEY}" }
$extra
EOF
    # Access log on (level info) to /dev/null, as in bench/run.sh.
    taskset -c "$CPU_A" env BENCH_KEY=sk_bench TOKIO_WORKER_THREADS=1 \
        valgrind --tool=callgrind --callgrind-out-file="$T/cg_$v.out" "$BIN" run -c "$T/$v.yaml" \
        >/dev/null 2>"$T/vg_$v.log" &
    PID[$v]=$!
    PIDS+=("${PID[$v]}")
done
for v in plain full; do
    for _ in $(seq 1 120); do
        curl -fs -o /dev/null "http://127.0.0.1:${PORT[$v]}/stripe/v1/charges" && break
        sleep 0.5
    done
done

# The 16 KiB POST body (same shape as bench/run.sh's).
body='{"items":['
i=0
while ((${#body} < 16000)); do
    ((i > 0)) && body+=','
    body+="{\"id\":$i,\"name\":\"item-$i\",\"qty\":1}"
    i=$((i + 1))
done
body+='],"pad":"'"$(head -c $((16384 - ${#body} - 10)) /dev/zero | tr '\0' 'p')"'"}'
printf 'wrk.method = "POST"\nwrk.headers["Content-Type"] = "application/json"\nwrk.body = [[%s]]\n' "$body" >"$T/post.lua"
: >"$T/get.lua"

declare -A NREQ FILE
for sc in get post16k; do
    lua=$T/get.lua; [[ $sc == post16k ]] && lua=$T/post.lua
    for v in plain full; do
        url="http://127.0.0.1:${PORT[$v]}/stripe/v1/charges"
        taskset -c "$CPU_B" wrk -t1 -c8 -d3s -s "$lua" "$url" >/dev/null          # warm the pools
        callgrind_control -z "${PID[$v]}" >/dev/null 2>&1
        NREQ[$sc.$v]=$(taskset -c "$CPU_B" wrk -t1 -c8 -d"${SECONDS_PER_RUN}s" -s "$lua" "$url" | awk '/requests in/ {print $1}')
        before=$(compgen -G "$T/cg_$v.out.*" | wc -l || true)
        callgrind_control -d "$sc" "${PID[$v]}" >/dev/null 2>&1
        FILE[$sc.$v]=$T/cg_$v.out.$((before + 1))
    done
done

report() { # file requests -> "Ir_per_req mallocs_per_req reallocs_per_req"
    python3 - "$1" "$2" <<'PYEOF'
import re, sys
path, n = sys.argv[1], int(sys.argv[2])
# Allocation entry points of glibc and of jemalloc (tikv-jemallocator's `_rjem_` symbols).
ALLOCS = {"malloc", "calloc", "_rjem_malloc", "_rjem_mallocx", "_rjem_calloc"}
REALLOCS = {"realloc", "_rjem_realloc", "_rjem_rallocx"}
names, cfn, calls, total = {}, None, {"alloc": 0, "realloc": 0}, None
for line in open(path, errors="replace"):
    m = re.match(r"^cfn=\((\d+)\)(?: (.*))?$", line.rstrip("\n"))
    if m:
        if m.group(2): names[m.group(1)] = m.group(2)
        cfn = names.get(m.group(1), "")
        continue
    m = re.match(r"^fn=\((\d+)\)(?: (.*))?$", line.rstrip("\n"))
    if m:
        # A function's name is given once, at its first mention, as fn= or as cfn=.
        if m.group(2): names[m.group(1)] = m.group(2)
        cfn = None
        continue
    m = re.match(r"^calls=(\d+)", line)
    if m and cfn in ALLOCS:
        calls["alloc"] += int(m.group(1))
    elif m and cfn in REALLOCS:
        calls["realloc"] += int(m.group(1))
    if line.startswith("totals:"):
        total = int(line.split()[1])
print(f"{total / n:.0f} {calls['alloc'] / n:.1f} {calls['realloc'] / n:.1f}")
PYEOF
}
declare -A IR MAL REA
for k in "${!FILE[@]}"; do
    read -r IR[$k] MAL[$k] REA[$k] <<<"$(report "${FILE[$k]}" "${NREQ[$k]}")"
done

{
    echo "# Outpost: instructions and allocations per request (callgrind)"
    echo
    echo "Generated by \`bench/instructions.sh\`: $(date -u); outpost binary built $(date -u -r "$BIN" '+%F %T UTC'), sha256 $(sha256sum "$BIN" | cut -c1-12)."
    echo "Small GET and 16 KiB JSON POST through each variant under valgrind (one tokio worker, access log on to /dev/null),"
    echo "8 keep-alive connections, counters zeroed after a 3 s warm-up, then ${SECONDS_PER_RUN} s of load per scenario and variant."
    echo "User-space only: kernel work (the same 2 recvfrom + 2 writev per request for both, plus one batched access-log write per few ms) is not counted."
    echo
    echo "| scenario | variant | requests | instructions / request | malloc / request | realloc / request |"
    echo "|---|---|---:|---:|---:|---:|"
    for sc in get post16k; do
        for v in plain full; do
            echo "| $sc | outpost-$v | ${NREQ[$sc.$v]} | ${IR[$sc.$v]} | ${MAL[$sc.$v]} | ${REA[$sc.$v]} |"
        done
    done
    echo
    echo "Issue 3: limiter + retry layers, outpost-full / outpost-plain instructions per request:"
    echo "small GET **$(awk -v a="${IR[get.full]}" -v b="${IR[get.plain]}" 'BEGIN { printf "%.3f", a / b }')**,"
    echo "POST 16 KiB **$(awk -v a="${IR[post16k.full]}" -v b="${IR[post16k.plain]}" 'BEGIN { printf "%.3f", a / b }')**"
    echo "(target < 1.05). With retries on, a body up to \`retry.max_body_bytes\` is held for replay as"
    echo "the chunks it arrived in (reference-counted, not copied); valgrind counts any byte copy as"
    echo "one instruction per byte, so a copy would show here at once."
} >"$OUT"
cat "$OUT"
