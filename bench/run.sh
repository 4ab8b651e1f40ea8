#!/usr/bin/env bash
# Outpost side-by-side benchmark: direct vs nginx vs HAProxy vs Outpost, interleaved.
# Usage (from the repo root):  bench/run.sh
# Env overrides: ROUNDS (3), DURATION (seconds per run, 4), WARMUP (seconds, 1), RATE (2000),
#   RATE_CONNS (20), OUTPOST_BIN (target/release/outpost), RESULTS (bench/RESULTS.md),
#   TARGETS (space list, default: direct nginx haproxy outpost-plain outpost-full),
#   SCENARIOS (space list, default: get rate post16k stream1m), KEEP_TMP=1 keeps the temp dir.
# See bench/README.md for what the numbers mean.
set -euo pipefail

ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-4}
WARMUP=${WARMUP:-1}
RATE=${RATE:-2000}
RATE_CONNS=${RATE_CONNS:-20}
OUTPOST_BIN=${OUTPOST_BIN:-target/release/outpost}
RESULTS=${RESULTS:-bench/RESULTS.md}
TARGETS=${TARGETS:-"direct nginx haproxy outpost-plain outpost-full"}
SCENARIOS=${SCENARIOS:-"get rate post16k stream1m"}
BENCH_KEY=sk_bench_0123456789abcdef

say() { printf '[bench] %s\n' "$*" >&2; }
die() { printf '[bench] error: %s\n' "$*" >&2; exit 1; }

# ---------------------------------------------------------------- tools (install nothing)
missing_pkgs=()
for t in nginx:nginx haproxy:haproxy wrk:wrk taskset:util-linux curl:curl awk:gawk; do
    cmd=${t%%:*}; pkg=${t#*:}
    command -v "$cmd" >/dev/null 2>&1 || PATH="$PATH:/usr/sbin:/sbin" command -v "$cmd" >/dev/null 2>&1 \
        || missing_pkgs+=("$pkg")
done
export PATH="$PATH:/usr/sbin:/sbin"
if ((${#missing_pkgs[@]})); then
    echo "bench/run.sh: missing tools. Install them with:" >&2
    echo "    apt-get install -y ${missing_pkgs[*]}" >&2
    echo "(the Debian nginx/haproxy packages may start system services on :80; the bench does" >&2
    echo " not use them: 'systemctl disable --now nginx haproxy' if you do not want them)" >&2
    exit 2
fi
[[ -x $OUTPOST_BIN ]] || die "$OUTPOST_BIN not found: run 'cargo build --release' first (or set OUTPOST_BIN)"
[[ -f Cargo.toml && -d bench ]] || die "run from the repository root: bench/run.sh"

NCPU=$(nproc)
if ((NCPU >= 2)); then
    PROXY_CPU=0; LOAD_CPU=1
else
    say "warning: only $NCPU CPU: cannot pin proxy and load generator apart; running unpinned"
    PROXY_CPU=0; LOAD_CPU=0
fi
pin_load() { taskset -c "$LOAD_CPU" "$@"; }
CLK_TCK=$(getconf CLK_TCK)

# ---------------------------------------------------------------- temp dir, cleanup
T=$(mktemp -d /tmp/outpost-bench.XXXXXX)
chmod 755 "$T"   # nginx workers drop to 'nobody' when started as root
PIDS=()
cleanup() {
    local p
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
    if [[ ${KEEP_TMP:-0} == 1 ]]; then say "kept $T"; else rm -rf "$T"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Free loopback ports: random ports below the kernel's ephemeral range (so no client socket
# holds one), checked by a connect attempt.
read -r EPH_LO _ </proc/sys/net/ipv4/ip_local_port_range
PORT_LO=$((EPH_LO > 12000 ? EPH_LO - 10000 : 2000))
USED_PORTS=" "
free_port() {
    local p
    while :; do
        p=$((PORT_LO + RANDOM % 9000))
        [[ $USED_PORTS == *" $p "* ]] && continue
        if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
            USED_PORTS+="$p "; echo "$p"; return
        fi
    done
}
P_UP=$(free_port); P_NGINX=$(free_port); P_HAPROXY=$(free_port)
P_PLAIN=$(free_port); P_PLAIN_ADM=$(free_port); P_FULL=$(free_port); P_FULL_ADM=$(free_port)

wait_port() { # port [pid]
    local i
    for i in $(seq 1 100); do
        if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then return 0; fi
        if [[ -n ${2:-} ]] && ! kill -0 "$2" 2>/dev/null; then return 1; fi
        sleep 0.1
    done
    return 1
}

# ---------------------------------------------------------------- upstream: nginx, core LOAD_CPU
# A second nginx instance as the upstream: `return 200` with a small JSON body is about the
# cheapest HTTP/1.1 responder available from Debian, single worker, keep-alive without limit,
# and it serves the 1 MiB streaming body with sendfile. It shares its core with wrk.
head -c $((1024 * 1024)) /dev/zero | tr '\0' 'x' >"$T/stream.bin"
chmod 644 "$T/stream.bin"
SMALL_JSON='{"id":"ch_bench","object":"charge","amount":1000,"currency":"usd","status":"succeeded"}'
nginx_common() { # prefix name
    cat <<EOF
worker_processes 1;
daemon off;
pid $T/$1.pid;
error_log $T/$1.error.log warn;
events { worker_connections 8192; multi_accept on; }
http {
    client_body_temp_path $T/$1.body;
    proxy_temp_path $T/$1.proxy;
    fastcgi_temp_path $T/$1.fcgi;
    uwsgi_temp_path $T/$1.uwsgi;
    scgi_temp_path $T/$1.scgi;
    keepalive_requests 10000000;
    keepalive_timeout 300s;
    server_tokens off;
EOF
}
{
    nginx_common up
    cat <<EOF
    access_log off;
    sendfile on;
    server {
        listen 127.0.0.1:$P_UP backlog=4096;
        location = /v1/charges { default_type application/json; return 200 '$SMALL_JSON'; }
        location = /v1/stream  { default_type application/octet-stream; alias $T/stream.bin; }
        location = /v1/echo    { default_type text/plain; return 200 "\$request_uri \$http_authorization"; }
        location = /_status    { stub_status; }
        location / { return 404; }
    }
}
EOF
} >"$T/up.conf"

# ---------------------------------------------------------------- nginx proxy, core PROXY_CPU
{
    nginx_common ngx
    cat <<EOF
    access_log /dev/null;              # an access line per request, as Outpost writes one
    client_body_buffer_size 64k;       # the 16 KiB POST stays in memory
    proxy_max_temp_file_size 0;        # never spool a response to disk: stream when buffers fill
    upstream up {
        server 127.0.0.1:$P_UP;
        keepalive 64;
        keepalive_requests 10000000;
        keepalive_timeout 300s;
    }
    server {
        listen 127.0.0.1:$P_NGINX backlog=4096;
        location /stripe/ {
            proxy_pass http://up/;      # strips /stripe
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Authorization "Bearer $BENCH_KEY";
        }
        location / { return 404; }
    }
}
EOF
} >"$T/ngx.conf"

# ---------------------------------------------------------------- HAProxy, core PROXY_CPU
cat >"$T/haproxy.cfg" <<EOF
global
    nbthread 1
    maxconn 4096
    log stdout format raw local0
defaults
    mode http
    log global
    option httplog
    option http-keep-alive
    http-reuse always
    timeout connect 3s
    timeout client 60s
    timeout server 60s
    timeout http-keep-alive 300s
frontend app
    bind 127.0.0.1:$P_HAPROXY
    http-request deny deny_status 404 unless { path_beg /stripe/ }
    http-request replace-path ^/stripe(/.*) \1
    http-request set-header Authorization "Bearer $BENCH_KEY"
    default_backend up
backend up
    server up1 127.0.0.1:$P_UP maxconn 1000
EOF

# ---------------------------------------------------------------- Outpost configs
outpost_conf() { # listen admin extra-yaml
    cat <<EOF
version: 1
listen: 127.0.0.1:$1
admin_listen: 127.0.0.1:$2
upstreams:
  stripe:
    base_url: http://127.0.0.1:$P_UP
    auth: { type: bearer, token: "\${env:BENCH_KEY}" }
$3
EOF
}
outpost_conf "$P_PLAIN" "$P_PLAIN_ADM" "    retry: { max_attempts: 1 }" >"$T/outpost-plain.yaml"
outpost_conf "$P_FULL" "$P_FULL_ADM" "    rate_limit: { requests_per_second: 1000000, burst: 1000000 }
    retry: { max_attempts: 3 }" >"$T/outpost-full.yaml"

# ---------------------------------------------------------------- start everything
start() { # name stdout stderr cmd...   (sets LAST_PID)
    local name=$1 out=$2 err=$3; shift 3
    "$@" >"$out" 2>"$err" &     # taskset and env exec: $! is the server's own pid
    LAST_PID=$!
    PIDS+=("$LAST_PID")
}
start up "$T/up.out" "$T/up.out" taskset -c "$LOAD_CPU" nginx -e "$T/up.error.log" -p "$T" -c "$T/up.conf"
PID_UP=$LAST_PID
wait_port "$P_UP" "$PID_UP" || { cat "$T/up.out" "$T/up.error.log" >&2; die "upstream nginx did not start"; }

declare -A PID PORT
PORT[direct]=$P_UP
PORT[nginx]=$P_NGINX
PORT[haproxy]=$P_HAPROXY
PORT[outpost-plain]=$P_PLAIN
PORT[outpost-full]=$P_FULL

for tgt in $TARGETS; do
    case $tgt in
    direct) PID[direct]="" ;;
    nginx)
        start nginx "$T/ngx.out" "$T/ngx.out" taskset -c "$PROXY_CPU" nginx -e "$T/ngx.error.log" -p "$T" -c "$T/ngx.conf"
        PID[nginx]=$LAST_PID ;;
    haproxy)
        start haproxy /dev/null "$T/haproxy.err" taskset -c "$PROXY_CPU" haproxy -db -f "$T/haproxy.cfg"
        PID[haproxy]=$LAST_PID ;;
    outpost-plain | outpost-full)
        # Outpost has no worker-count flag; tokio's runtime builder honours TOKIO_WORKER_THREADS.
        # Its access log (JSON on stderr) goes to /dev/null, as nginx's and HAProxy's do.
        start "$tgt" /dev/null /dev/null taskset -c "$PROXY_CPU" \
            env BENCH_KEY="$BENCH_KEY" TOKIO_WORKER_THREADS=1 "$OUTPOST_BIN" run -c "$T/$tgt.yaml"
        PID[$tgt]=$LAST_PID ;;
    *) die "unknown target $tgt" ;;
    esac
    if [[ $tgt != direct ]]; then
        if ! wait_port "${PORT[$tgt]}" "${PID[$tgt]}"; then
            cat "$T"/ngx.out "$T"/ngx.error.log "$T"/haproxy.err 2>/dev/null >&2 || true
            [[ $tgt == outpost-* ]] && BENCH_KEY=$BENCH_KEY "$OUTPOST_BIN" check -c "$T/$tgt.yaml" >&2 || true
            die "$tgt did not start (port ${PORT[$tgt]})"
        fi
    fi
done

# Sanity: every proxy strips the prefix and injects the key (the upstream echoes both).
for tgt in $TARGETS; do
    [[ $tgt == direct ]] && continue
    got=$(curl -fsS "http://127.0.0.1:${PORT[$tgt]}/stripe/v1/echo?x=1") || die "$tgt: request failed"
    [[ $got == "/v1/echo?x=1 Bearer $BENCH_KEY" ]] || die "$tgt does not do the job: upstream saw '$got'"
done
say "all targets do the same job (prefix stripped, Authorization injected)"

# Threads of each proxy (the one-worker rule): report them.
proc_pids() { # pid -> the pid and its children (nginx master + worker)
    local p=$1
    echo "$p"
    cat /proc/"$p"/task/*/children 2>/dev/null | tr ' ' '\n' | sed '/^$/d' || true
}
THREADS_NOTE=""
for tgt in $TARGETS; do
    [[ $tgt == direct ]] && continue
    desc=""
    for p in $(proc_pids "${PID[$tgt]}"); do
        n=$(ls /proc/"$p"/task | wc -l)
        names=$(cat /proc/"$p"/task/*/comm 2>/dev/null | sort | uniq -c | awk '{printf "%s%s×%s", sep, $2, $1; sep=", "}')
        desc+="pid $p: $n threads ($names); "
    done
    THREADS_NOTE+="- $tgt: ${desc%; }"$'\n'
done
say "threads:"$'\n'"$THREADS_NOTE"

# ---------------------------------------------------------------- wrk scripts
REPORT_LUA='
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format("BENCH %d %d %d %d %d %d %d\n", summary.requests, summary.duration,
    latency:percentile(50), latency:percentile(99), latency:percentile(99.9),
    e.connect + e.read + e.write + e.timeout, e.status))
end
'
printf '%s\n' "$REPORT_LUA" >"$T/get.lua"
{
    printf 'wrk.method = "POST"\nwrk.headers["Content-Type"] = "application/json"\n'
    # 16 KiB of JSON: {"items":[{"id":N,"name":"item-N","qty":1},...],"pad":"xxx"}
    body='{"items":['
    i=0
    while ((${#body} < 16000)); do
        ((i > 0)) && body+=','
        body+="{\"id\":$i,\"name\":\"item-$i\",\"qty\":1}"
        i=$((i + 1))
    done
    pad=$((16384 - ${#body} - 10))
    body+='],"pad":"'"$(head -c "$pad" /dev/zero | tr '\0' 'p')"'"}'
    printf 'wrk.body = [[%s]]\n' "$body"
    printf '%s\n' "$REPORT_LUA"
} >"$T/post16k.lua"
DELAY_MS=$((RATE_CONNS * 1000 / RATE))
{
    printf 'delay = function() return %d end\n' "$DELAY_MS"
    printf '%s\n' "$REPORT_LUA"
} >"$T/rate.lua"

scenario_args() { # scenario -> wrk args
    case $1 in
    get) echo "-c64 -s $T/get.lua" ;;
    rate) echo "-c$RATE_CONNS -s $T/rate.lua" ;;
    post16k) echo "-c64 -s $T/post16k.lua" ;;
    stream1m) echo "-c16 -s $T/get.lua" ;;
    esac
}
scenario_path() {
    case $1 in
    get | rate | post16k) echo /v1/charges ;;
    stream1m) echo /v1/stream ;;
    esac
}
url_for() { # target scenario
    local prefix=/stripe
    [[ $1 == direct ]] && prefix=""
    echo "http://127.0.0.1:${PORT[$1]}$prefix$(scenario_path "$2")"
}

cpu_ticks() { # pid -> "utime stime" of the pid and its children (nginx master + worker)
    local p u=0 s=0 pu ps
    for p in $(proc_pids "$1"); do
        # fields after the ")" of comm: state is $1, utime $12, stime $13
        read -r pu ps < <(sed 's/^.*) //' /proc/"$p"/stat | awk '{print $12, $13}')
        u=$((u + pu)); s=$((s + ps))
    done
    echo "$u $s"
}
upstream_accepts() { # connections the upstream nginx has accepted so far (stub_status)
    curl -s "http://127.0.0.1:$P_UP/_status" | awk 'NR == 3 { print $1 }'
}
rss_peak_kib() { # pid -> sum of VmHWM over the pid and its children
    local p s=0
    for p in $(proc_pids "$1"); do
        s=$((s + $(awk '/^VmHWM/ {print $2}' /proc/"$p"/status)))
    done
    echo "$s"
}

run_one() { # target scenario duration -> "requests duration_us p50 p99 p999 sockerr statuserr cpu_ticks user_ticks sys_ticks new_upstream_conns"
    local tgt=$1 sc=$2 dur=$3 pid=${PID[$1]} u0=0 s0=0 u1=0 s1=0 a0 a1 out
    [[ -n $pid ]] && read -r u0 s0 <<<"$(cpu_ticks "$pid")"
    a0=$(upstream_accepts)
    # shellcheck disable=SC2046
    out=$(pin_load wrk -t1 $(scenario_args "$sc") -d"${dur}s" --timeout 5s "$(url_for "$tgt" "$sc")" 2>&1) \
        || { echo "$out" >&2; die "wrk failed for $tgt/$sc"; }
    [[ -n $pid ]] && read -r u1 s1 <<<"$(cpu_ticks "$pid")"
    a1=$(upstream_accepts)
    local line
    line=$(grep '^BENCH ' <<<"$out") || { echo "$out" >&2; die "no result from wrk for $tgt/$sc"; }
    # The status poll's own connection is the one the first poll opened.
    echo "${line#BENCH } $((u1 - u0 + s1 - s0)) $((u1 - u0)) $((s1 - s0)) $((a1 - a0 - 1))"
}

# ---------------------------------------------------------------- the interleaved run
n_runs=$(( ROUNDS * $(wc -w <<<"$SCENARIOS") * $(wc -w <<<"$TARGETS") ))
say "warm-up ${WARMUP}s per target and scenario, then $ROUNDS rounds × $(wc -w <<<"$SCENARIOS") scenarios × $(wc -w <<<"$TARGETS") targets × ${DURATION}s (~$(( n_runs * (DURATION + 1) / 60 + 1 )) min)"
for sc in $SCENARIOS; do
    for tgt in $TARGETS; do run_one "$tgt" "$sc" "$WARMUP" >/dev/null; done
done

RAW=$T/raw.tsv
read -r -a TARR <<<"$TARGETS"
NT=${#TARR[@]}
for r in $(seq 1 "$ROUNDS"); do
    for sc in $SCENARIOS; do
        # Rotate the target order each round so no target always runs first or after another.
        for k in $(seq 0 $((NT - 1))); do
            tgt=${TARR[$(((k + r - 1) % NT))]}
            res=$(run_one "$tgt" "$sc" "$DURATION")
            printf '%s\t%s\t%s\t%s\n' "$r" "$sc" "$tgt" "$res" >>"$RAW"
            read -r nreq dus p50 p99 p999 serr sterr ticks _ _ newc <<<"$res"
            say "round $r/$ROUNDS $sc $tgt: $((nreq * 1000000 / dus)) req/s p99 ${p99}us cpu ${ticks} ticks errors ${serr}/${sterr} new upstream conns ${newc}"
        done
    done
done

declare -A RSS
for tgt in $TARGETS; do
    [[ $tgt == direct ]] && { RSS[direct]=""; continue; }
    RSS[$tgt]=$(rss_peak_kib "${PID[$tgt]}")
done

# ---------------------------------------------------------------- aggregate (medians)
# per-run metrics: rps, p50, p99, p999 (us), cpu ms per 1000 requests
AGG=$T/agg.tsv
awk -F'\t' -v clk="$CLK_TCK" '
{
    split($4, f, " ")
    nreq = f[1]; dus = f[2]
    rps = nreq * 1e6 / dus
    cpu = (nreq > 0) ? f[8] * 1000 / clk / nreq * 1000 : 0
    key = $2 "\t" $3
    n[key]++
    v[key, "rps", n[key]] = rps
    v[key, "p50", n[key]] = f[3]; v[key, "p99", n[key]] = f[4]; v[key, "p999", n[key]] = f[5]
    v[key, "cpu", n[key]] = cpu
    v[key, "usr", n[key]] = (nreq > 0) ? f[9] * 1000 / clk / nreq * 1000 : 0
    v[key, "sys", n[key]] = (nreq > 0) ? f[10] * 1000 / clk / nreq * 1000 : 0
    newc[key] += f[11]
    err[key] += f[6] + f[7]
    if (!(key in seen)) { seen[key] = 1; order[++no] = key }
}
function median(key, m,    i, j, t, a, c) {
    c = n[key]
    for (i = 1; i <= c; i++) a[i] = v[key, m, i]
    for (i = 2; i <= c; i++) { t = a[i]; for (j = i - 1; j >= 1 && a[j] > t; j--) a[j + 1] = a[j]; a[j + 1] = t }
    return (c % 2) ? a[(c + 1) / 2] : (a[c / 2] + a[c / 2 + 1]) / 2
}
END {
    for (i = 1; i <= no; i++) {
        k = order[i]
        printf "%s\t%.0f\t%.0f\t%.0f\t%.0f\t%.3f\t%d\t%d\t%.3f\t%.3f\t%d\n", k, median(k, "rps"), median(k, "p50"),
            median(k, "p99"), median(k, "p999"), median(k, "cpu"), err[k], n[k], median(k, "usr"),
            median(k, "sys"), newc[k]
    }
}' "$RAW" >"$AGG"

# Paired per-round ratio outpost-full / outpost-plain of CPU per request (issue 3 overhead).
PAIRED=$T/paired.tsv
awk -F'\t' -v clk="$CLK_TCK" '
{ split($4, f, " "); c[$1, $2, $3] = f[8] / f[1]; sc[$2] = 1; r[$1] = 1 }
END {
    for (s in sc) { m = 0
        for (k in r) if (((k, s, "outpost-full") in c) && ((k, s, "outpost-plain") in c) && c[k, s, "outpost-plain"] > 0)
            a[s, ++m] = c[k, s, "outpost-full"] / c[k, s, "outpost-plain"]
        if (m == 0) continue
        for (i = 2; i <= m; i++) { t = a[s, i]; for (j = i - 1; j >= 1 && a[s, j] > t; j--) a[s, j + 1] = a[s, j]; a[s, j + 1] = t }
        med = (m % 2) ? a[s, (m + 1) / 2] : (a[s, m / 2] + a[s, m / 2 + 1]) / 2
        lst = ""; for (i = 1; i <= m; i++) lst = lst sprintf("%s%.3f", (i > 1 ? ", " : ""), a[s, i])
        printf "%s\t%.3f\t%s\n", s, med, lst
    }
}' "$RAW" >"$PAIRED"

# ---------------------------------------------------------------- RESULTS.md
get() { # scenario target column(1-based after key: rps=3 p50=4 p99=5 p999=6 cpu=7 err=8 n=9 user=10 sys=11 new upstream conns=12)
    awk -F'\t' -v s="$1" -v t="$2" -v c="$3" '$1 == s && $2 == t { print $c }' "$AGG"
}
ratio() { # a b -> a/b with 2 decimals, or —
    awk -v a="$1" -v b="$2" 'BEGIN { if (a == "" || b == "" || b + 0 == 0) print "—"; else printf "%.2f", a / b }'
}
ms() { awk -v u="$1" 'BEGIN { if (u == "") print "—"; else printf "%.2f", u / 1000 }'; }
mib() { awk -v k="$1" 'BEGIN { if (k == "") print "—"; else printf "%.1f", k / 1024 }'; }

scenario_title() {
    case $1 in
    get) echo "Max throughput: small GET, 64 keep-alive connections" ;;
    rate) echo "Latency at a paced moderate rate: $RATE_CONNS connections × one request per ${DELAY_MS} ms after each response (~$RATE req/s target)" ;;
    post16k) echo "POST with a 16 KiB JSON body, 64 connections" ;;
    stream1m) echo "Streaming response: 1 MiB body, 16 connections" ;;
    esac
}

CPU_MODEL=$(awk -F': ' '/^model name/ {print $2; exit}' /proc/cpuinfo)
{
    echo "# Outpost benchmark results"
    echo
    echo "Generated by \`bench/run.sh\` (see \`bench/README.md\` for method and caveats)."
    echo
    echo "- date: $(date -u)"
    echo "- machine: $(nproc) CPUs, $CPU_MODEL, kernel $(uname -r); load average at the end: $(cut -d' ' -f1-3 /proc/loadavg)"
    echo "- tools: $(nginx -v 2>&1 | sed 's/^nginx version: //'), $(haproxy -v 2>/dev/null | head -1 | awk '{print "HAProxy " $3}'), $(wrk -v 2>&1 | head -1 | awk '{print $1, $2}'), outpost $("$OUTPOST_BIN" --version | awk '{print $2}') (binary built $(date -u -r "$OUTPOST_BIN" '+%F %T UTC'), sha256 $(sha256sum "$OUTPOST_BIN" | cut -c1-12); work tree at git $(git rev-parse --short HEAD 2>/dev/null || echo '?')$(git diff --quiet -- src Cargo.toml 2>/dev/null || echo ' with uncommitted changes in src/'))"
    echo "- run: ROUNDS=$ROUNDS DURATION=${DURATION}s WARMUP=${WARMUP}s, targets interleaved (order rotated each round), medians over rounds"
    echo "- pinning: proxy under test on CPU $PROXY_CPU; wrk (1 thread) and the upstream (nginx, 1 worker, \`return 200\` / static file) on CPU $LOAD_CPU"
    echo "- one worker per proxy; threads seen at start:"
    echo
    printf '%s' "$THREADS_NOTE"
    echo
    echo "Columns: req/s (wrk); latency percentiles (wrk, per request, ms); **CPU ms / 1000 req** of"
    echo "the proxy process (utime+stime from /proc/PID/stat over the run / requests × 1000; nginx:"
    echo "master + worker); peak RSS = VmHWM over the whole session (nginx: master + worker summed);"
    echo "×nginx / ×direct = ratio of this row to the nginx row / the direct row (CPU: lower is"
    echo "better; req/s: higher is better; p99: lower is better). errors = socket errors + non-2xx."
    for sc in $SCENARIOS; do
        echo
        echo "## $(scenario_title "$sc")"
        echo
        echo "| target | req/s | p50 ms | p99 ms | p99.9 ms | CPU ms/1000 req | user + sys | CPU ×nginx | req/s ×nginx | req/s ×direct | p99 ×nginx | p99 ×direct | peak RSS MiB | RSS ×nginx | new upstream conns | errors |"
        echo "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
        n_rps=$(get "$sc" nginx 3); d_rps=$(get "$sc" direct 3)
        n_p99=$(get "$sc" nginx 5); d_p99=$(get "$sc" direct 5)
        n_cpu=$(get "$sc" nginx 7)
        for tgt in $TARGETS; do
            rps=$(get "$sc" "$tgt" 3); [[ -z $rps ]] && continue
            p50=$(get "$sc" "$tgt" 4); p99=$(get "$sc" "$tgt" 5); p999=$(get "$sc" "$tgt" 6)
            cpu=$(get "$sc" "$tgt" 7); errs=$(get "$sc" "$tgt" 8)
            usr=$(get "$sc" "$tgt" 10); sys=$(get "$sc" "$tgt" 11); newc=$(get "$sc" "$tgt" 12)
            if [[ $tgt == direct ]]; then cpu_s="—"; cpu_r="—"; split="—"; else cpu_s=$cpu; cpu_r=$(ratio "$cpu" "$n_cpu"); split="$usr + $sys"; fi
            echo "| $tgt | $rps | $(ms "$p50") | $(ms "$p99") | $(ms "$p999") | $cpu_s | $split | $cpu_r | $(ratio "$rps" "$n_rps") | $(ratio "$rps" "$d_rps") | $(ratio "$p99" "$n_p99") | $(ratio "$p99" "$d_p99") | $(mib "${RSS[$tgt]}") | $(ratio "${RSS[$tgt]}" "${RSS[nginx]:-}") | $newc | $errs |"
        done
    done

    if [[ " $TARGETS " == *" outpost-full "* && " $TARGETS " == *" nginx "* ]]; then
        echo
        echo "## Issue 15 targets (Outpost = outpost-full: auth + rate limit + retry + metrics)"
        echo
        tcpu=$(ratio "$(get get outpost-full 7)" "$(get get nginx 7)")
        hcpu=$(ratio "$(get get haproxy 7)" "$(get get nginx 7)")
        trps=$(ratio "$(get get outpost-full 3)" "$(get get nginx 3)")
        # Added latency at the paced rate: p50 through the proxy minus p50 direct.
        d50=$(get rate direct 4)
        o_add=$(awk -v a="$(get rate outpost-full 4)" -v d="$d50" 'BEGIN { if (a == "" || d == "") print ""; else print a - d }')
        n_add=$(awk -v a="$(get rate nginx 4)" -v d="$d50" 'BEGIN { if (a == "" || d == "") print ""; else print a - d }')
        tnew=$(get rate outpost-full 12)
        trss=$(mib "${RSS[outpost-full]}")
        verdict() { awk -v v="$1" -v lim="$2" -v dir="$3" 'BEGIN { if (v == "—" || v == "") print "not measured"; else if ((dir == "le" && v + 0 <= lim + 0) || (dir == "ge" && v + 0 >= lim + 0)) print "**met**"; else print "**not met**" }'; }
        echo "| target | measured | verdict |"
        echo "|---|---:|---|"
        echo "| CPU per request ≤ HAProxy's (first milestone; small GET, 64 conns) | ${tcpu} × nginx (HAProxy ${hcpu} ×) | $(verdict "$tcpu" "$hcpu" le) |"
        echo "| CPU per request ≤ 1.0 × nginx (small GET, 64 conns) | ${tcpu} × | $(verdict "$tcpu" 1.0 le) |"
        echo "| throughput ≥ 1.0 × nginx (small GET, 64 conns) | ${trps} × | $(verdict "$trps" 1.0 ge) |"
        # Compared directly (nginx's added p50 can be 0 or below the direct run's noise).
        echo "| p50 added latency at the paced rate ≤ nginx's | $(ms "$o_add") ms vs $(ms "$n_add") ms | $(verdict "$o_add" "$n_add" le) |"
        echo "| 0 new upstream connections in the paced-rate windows | ${tnew} | $(verdict "$tnew" 0 le) |"
        echo "| peak RSS ≤ 20 MiB | ${trss} MiB | $(verdict "$trss" 20 le) |"
    fi
    if [[ -s $PAIRED ]]; then
        echo
        echo "## Issue 3: cost of the limiter and retry layers"
        echo
        echo "CPU per request of outpost-full (rate limit 1e6/s + retry max_attempts 3) divided by"
        echo "outpost-plain (retry max_attempts 1, no rate limit), paired within each round, median"
        echo "over rounds (target: < 1.05)."
        echo
        echo "| scenario | full / plain CPU per request (median) | per round |"
        echo "|---|---:|---|"
        for sc in $SCENARIOS; do
            awk -F'\t' -v s="$sc" '$1 == s { printf "| %s | %s | %s |\n", $1, $2, $3 }' "$PAIRED"
        done
    fi
    if [[ -f bench/NOTES.md ]]; then
        echo
        echo "## Closing note (bench/NOTES.md: written by hand from the profile; check its date against this run's)"
        echo
        cat bench/NOTES.md
    fi
    echo
    echo "## Raw runs"
    echo
    echo "round, scenario, target, requests, duration µs, p50 µs, p99 µs, p99.9 µs, socket errors, non-2xx, CPU ticks (1/$CLK_TCK s), user ticks, system ticks, new upstream connections"
    echo
    echo '```'
    tr '\t' ' ' <"$RAW"
    echo '```'
} >"$RESULTS.tmp"
mv "$RESULTS.tmp" "$RESULTS"
say "wrote $RESULTS"
cat "$RESULTS"
