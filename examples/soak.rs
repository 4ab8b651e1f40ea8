//! Soak test (issue 6, not in CI): minutes of mixed traffic through the real `outpost` binary
//! to an upstream that injects faults, then a report with PASS/FAIL per criterion.
//!
//! ```text
//! cargo build --release && cargo run --release --example soak      # or: bench/soak.sh
//! SOAK_SECONDS=60 SOAK_CONCURRENCY=16 bench/soak.sh                  # shorter, lighter
//! ```
//!
//! * **Upstream** (in this process, hyper HTTP/1.1 on `127.0.0.1:0`): records every request;
//!   for POSTs the `X-Soak-Id` (unique per logical request) and the `Idempotency-Key` that
//!   arrived; checks the bearer token and the body checksum (`X-Soak-Len`, `X-Soak-Sum`).
//!   Per arrival (per attempt) it injects, at the `SOAK_FAULT_*` rates: a 503, a 429 with
//!   `Retry-After: 1` (at most one per Outpost upstream per `SOAK_429_GAP_MS`: each one pauses
//!   that upstream's limiter for a second), a 502, a 200 ms–2 s delay before answering, or an
//!   abrupt close without a response (after reading the head, or after the whole body: the
//!   request was processed, the answer lost, the case where a blind retry duplicates a POST).
//! * **Outpost**: `target/release/outpost` (`OUTPOST_BIN`) as a child process on free ports,
//!   with two upstreams to that mock: `off` (`idempotency_key: off`: a POST must never reach
//!   the upstream twice) and `auto` (`idempotency_key: auto`: repeats must carry the same key).
//!   Retries on (`max_attempts: 3`), a rate limit that does not throttle, `timeout: 5s`,
//!   `attempt_timeout: 1500ms` (so some delayed attempts time out after the upstream got them).
//! * **Load**: `SOAK_CONCURRENCY` workers for `SOAK_SECONDS`: small GETs, 256 KiB–4 MiB
//!   streamed downloads, POSTs with and without an application `Idempotency-Key`, small or
//!   56–72 KiB (either side of the 64 KiB retry buffer), 3 % with `Connection: close`. Every
//!   request has a client timeout (`SOAK_CLIENT_TIMEOUT`), so a hang is counted, not awaited.
//! * **Report** (stdout and `SOAK_REPORT`, default `bench/SOAK.md`): requests sent and
//!   responses received, status histogram, duplicated POSTs per upstream, Outpost's RSS every
//!   `SOAK_SAMPLE_SECONDS` (first, last, max, growth over the second half), CPU ms per 1000
//!   requests, PASS/FAIL per criterion. Exit code 0 when all pass, 1 on a FAIL, 2 when the
//!   soak could not run.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{ExitCode, Stdio};
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use bytes::{Bytes, BytesMut};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::header::{HeaderMap, HeaderValue, AUTHORIZATION, CONNECTION, CONTENT_TYPE};
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::TcpListener;

/// The two Outpost upstreams, both pointing at the mock (`/u/<name>/…`).
const UPSTREAMS: [&str; 2] = ["off", "auto"];
const OFF: usize = 0;
const AUTO: usize = 1;
/// The credential Outpost injects (from the environment) and the mock checks.
const TOKEN: &str = "soak-upstream-token-7f3a";
const CHUNK: usize = 64 * 1024;
const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;

// ---------------------------------------------------------------------------------------------
// Settings
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Copy, Debug)]
struct Faults {
    close: f64,
    s503: f64,
    s429: f64,
    s502: f64,
    delay: f64,
    gap_429: Duration,
}

struct Settings {
    seconds: u64,
    concurrency: usize,
    outpost_bin: PathBuf,
    report: PathBuf,
    sample_every: Duration,
    client_timeout: Duration,
    rss_tolerance_pct: f64,
    faults: Faults,
}

fn env_or<T: FromStr>(name: &str, default: T) -> Result<T, String> {
    match std::env::var(name) {
        Ok(v) if !v.trim().is_empty() => v
            .trim()
            .parse()
            .map_err(|_| format!("{name}={v:?} is not a valid value")),
        _ => Ok(default),
    }
}

fn rate(name: &str, default: f64) -> Result<f64, String> {
    let v: f64 = env_or(name, default)?;
    if !(0.0..=1.0).contains(&v) {
        return Err(format!("{name} must be between 0 and 1"));
    }
    Ok(v)
}

/// `<target>/release/outpost` next to this example's own target dir, else the repo's.
fn default_outpost_bin() -> PathBuf {
    let from_exe = std::env::current_exe().ok().and_then(|exe| {
        // <target>/<profile>/examples/soak
        let target = exe.parent()?.parent()?.parent()?;
        Some(target.join("release").join("outpost"))
    });
    from_exe
        .filter(|p| p.exists())
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target/release/outpost"))
}

impl Settings {
    fn from_env() -> Result<Self, String> {
        let faults = Faults {
            close: rate("SOAK_FAULT_CLOSE", 0.02)?,
            s503: rate("SOAK_FAULT_503", 0.03)?,
            s429: rate("SOAK_FAULT_429", 0.01)?,
            s502: rate("SOAK_FAULT_502", 0.02)?,
            delay: rate("SOAK_FAULT_DELAY", 0.03)?,
            gap_429: Duration::from_millis(env_or("SOAK_429_GAP_MS", 5000)?),
        };
        if faults.close + faults.s503 + faults.s429 + faults.s502 + faults.delay > 1.0 {
            return Err("the SOAK_FAULT_* rates add up to more than 1".into());
        }
        let settings = Settings {
            seconds: env_or("SOAK_SECONDS", 600)?,
            concurrency: env_or("SOAK_CONCURRENCY", 32)?,
            outpost_bin: std::env::var_os("OUTPOST_BIN")
                .map(PathBuf::from)
                .unwrap_or_else(default_outpost_bin),
            report: std::env::var_os("SOAK_REPORT")
                .map(PathBuf::from)
                .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("bench/SOAK.md")),
            sample_every: Duration::from_secs(env_or("SOAK_SAMPLE_SECONDS", 10)?),
            client_timeout: Duration::from_secs(env_or("SOAK_CLIENT_TIMEOUT", 30)?),
            rss_tolerance_pct: env_or("SOAK_RSS_TOLERANCE", 10.0)?,
            faults,
        };
        if settings.seconds == 0 || settings.concurrency == 0 {
            return Err("SOAK_SECONDS and SOAK_CONCURRENCY must be at least 1".into());
        }
        if settings.sample_every.is_zero() || settings.client_timeout.is_zero() {
            return Err("SOAK_SAMPLE_SECONDS and SOAK_CLIENT_TIMEOUT must be at least 1".into());
        }
        Ok(settings)
    }
}

fn fnv(mut hash: u64, data: &[u8]) -> u64 {
    for b in data {
        hash ^= u64::from(*b);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    hash
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

fn pct(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        0.0
    } else {
        part as f64 * 100.0 / whole as f64
    }
}

// ---------------------------------------------------------------------------------------------
// The upstream
// ---------------------------------------------------------------------------------------------

type MockBody = BoxBody<Bytes, io::Error>;

/// What the upstream saw of one logical POST (one `X-Soak-Id`).
struct PostRecord {
    upstream: u8,
    app_key: bool,
    arrivals: u32,
    /// FNV of the first `Idempotency-Key` seen, if any.
    first_key: Option<u64>,
    /// A repeat arrived without a key or with a different one.
    key_changed: bool,
}

#[derive(Default)]
struct UpstreamCounters {
    arrivals: [AtomicU64; 2],
    gets: AtomicU64,
    downloads: AtomicU64,
    posts: AtomicU64,
    closed_after_head: AtomicU64,
    closed_after_body: AtomicU64,
    s503: AtomicU64,
    s429: AtomicU64,
    s502: AtomicU64,
    delayed: AtomicU64,
    bad_auth: AtomicU64,
    bad_body: AtomicU64,
    body_read_errors: AtomicU64,
    missing_soak_id: AtomicU64,
    app_key_altered: AtomicU64,
    auto_post_without_key: AtomicU64,
    off_post_key_added: AtomicU64,
    unknown_path: AtomicU64,
}

fn inc(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

fn get(counter: &AtomicU64) -> u64 {
    counter.load(Ordering::Relaxed)
}

struct Upstream {
    faults: Faults,
    started: Instant,
    /// Per Outpost upstream: ms since `started` (+1) of the last 429, 0 = never.
    last_429: [AtomicU64; 2],
    posts: Mutex<HashMap<u64, PostRecord>>,
    c: UpstreamCounters,
    chunk: Bytes,
}

enum Fault {
    None,
    Close,
    Status(u16),
    Delay(Duration),
}

impl Upstream {
    fn new(faults: Faults) -> Self {
        let chunk: Vec<u8> = (0..CHUNK).map(|i| b'a' + (i % 26) as u8).collect();
        Upstream {
            faults,
            started: Instant::now(),
            last_429: Default::default(),
            posts: Mutex::new(HashMap::new()),
            c: UpstreamCounters::default(),
            chunk: Bytes::from(chunk),
        }
    }

    fn pick_fault(&self, upstream: usize) -> Fault {
        let f = &self.faults;
        let (roll, delay_ms): (f64, u64) = {
            let mut rng = rand::thread_rng();
            (rng.gen(), rng.gen_range(200..=2000))
        };
        let mut edge = f.close;
        if roll < edge {
            return Fault::Close;
        }
        edge += f.s503;
        if roll < edge {
            return Fault::Status(503);
        }
        edge += f.s429;
        if roll < edge {
            return if self.may_429(upstream) {
                Fault::Status(429)
            } else {
                Fault::None
            };
        }
        edge += f.s502;
        if roll < edge {
            return Fault::Status(502);
        }
        edge += f.delay;
        if roll < edge {
            return Fault::Delay(Duration::from_millis(delay_ms));
        }
        Fault::None
    }

    fn may_429(&self, upstream: usize) -> bool {
        let now = self.started.elapsed().as_millis() as u64 + 1;
        let last = self.last_429[upstream].load(Ordering::Relaxed);
        let gap = self.faults.gap_429.as_millis() as u64;
        if last != 0 && now - last < gap {
            return false;
        }
        self.last_429[upstream]
            .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
    }

    fn record_post(&self, upstream: usize, headers: &HeaderMap) {
        inc(&self.c.posts);
        let Some(id) = header(headers, "x-soak-id").and_then(|v| v.parse::<u64>().ok()) else {
            inc(&self.c.missing_soak_id);
            return;
        };
        let key = header(headers, "idempotency-key");
        let app_key = headers.contains_key("x-soak-app-key");
        if app_key && key != Some(format!("app-{id}").as_str()) {
            inc(&self.c.app_key_altered);
        }
        if upstream == AUTO && key.is_none() {
            inc(&self.c.auto_post_without_key);
        }
        if upstream == OFF && !app_key && key.is_some() {
            inc(&self.c.off_post_key_added);
        }
        let key = key.map(|k| fnv(FNV_OFFSET, k.as_bytes()));
        let mut posts = self.posts.lock().unwrap_or_else(|e| e.into_inner());
        let record = posts.entry(id).or_insert(PostRecord {
            upstream: upstream as u8,
            app_key,
            arrivals: 0,
            first_key: key,
            key_changed: false,
        });
        record.arrivals += 1;
        if record.arrivals > 1 && (key.is_none() || key != record.first_key) {
            record.key_changed = true;
        }
    }

    async fn handle(
        self: Arc<Self>,
        req: Request<Incoming>,
    ) -> Result<Response<MockBody>, io::Error> {
        let path = req.uri().path();
        let Some((upstream, rest)) = UPSTREAMS.iter().enumerate().find_map(|(i, name)| {
            path.strip_prefix("/u/")
                .and_then(|p| p.strip_prefix(name))
                .filter(|r| r.starts_with('/'))
                .map(|r| (i, r.to_string()))
        }) else {
            inc(&self.c.unknown_path);
            return Ok(json(404, "{\"error\":\"unknown path\"}"));
        };
        inc(&self.c.arrivals[upstream]);
        let authorized = req
            .headers()
            .get(AUTHORIZATION)
            .is_some_and(|v| v.as_bytes() == format!("Bearer {TOKEN}").as_bytes());
        if !authorized {
            inc(&self.c.bad_auth);
        }
        let post = req.method() == Method::POST;
        if post {
            self.record_post(upstream, req.headers());
        }

        let fault = self.pick_fault(upstream);
        let (parts, body) = req.into_parts();
        if let Fault::Close = fault {
            // Half after the head only, half after reading the whole body ("processed, answer
            // lost"); then the connection is dropped without a response.
            if rand::thread_rng().gen_bool(0.5) {
                inc(&self.c.closed_after_head);
            } else {
                let _ = read_body(body).await;
                inc(&self.c.closed_after_body);
            }
            return Err(io::Error::other("soak: injected connection close"));
        }
        let (len, sum) = match read_body(body).await {
            Ok(read) => read,
            Err(e) => {
                inc(&self.c.body_read_errors);
                return Err(e);
            }
        };
        if let Some(expected) = header(&parts.headers, "x-soak-len") {
            let expected_sum = header(&parts.headers, "x-soak-sum").unwrap_or("");
            if expected != len.to_string() || expected_sum != format!("{sum:016x}") {
                inc(&self.c.bad_body);
            }
        } else if len != 0 {
            inc(&self.c.bad_body);
        }

        match fault {
            Fault::Status(503) => {
                inc(&self.c.s503);
                return Ok(json(503, "{\"error\":\"soak: injected 503\"}"));
            }
            Fault::Status(429) => {
                inc(&self.c.s429);
                let mut resp = json(429, "{\"error\":\"soak: injected 429\"}");
                resp.headers_mut()
                    .insert("retry-after", HeaderValue::from_static("1"));
                return Ok(resp);
            }
            Fault::Status(status) => {
                inc(&self.c.s502);
                return Ok(json(status, "{\"error\":\"soak: injected 502\"}"));
            }
            Fault::Delay(delay) => {
                inc(&self.c.delayed);
                tokio::time::sleep(delay).await;
            }
            Fault::None | Fault::Close => {}
        }

        let id = header(&parts.headers, "x-soak-id").unwrap_or("0");
        if post {
            return Ok(json(
                201,
                &format!("{{\"id\":\"obj_{id}\",\"created\":true}}"),
            ));
        }
        if parts.method != Method::GET {
            return Ok(json(405, "{\"error\":\"method\"}"));
        }
        if rest.starts_with("/v1/download") {
            inc(&self.c.downloads);
            let query = parts.uri.query().unwrap_or("");
            let param = |name: &str| {
                query
                    .split('&')
                    .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))
                    .and_then(|v| v.parse::<u64>().ok())
            };
            let bytes = param("bytes").unwrap_or(0);
            return Ok(self.download(bytes, param("length") == Some(1)));
        }
        inc(&self.c.gets);
        Ok(json(
            200,
            &format!("{{\"id\":\"item_{id}\",\"object\":\"item\"}}"),
        ))
    }

    /// `bytes` bytes in 64 KiB frames, streamed; with or without `Content-Length`.
    fn download(&self, bytes: u64, with_length: bool) -> Response<MockBody> {
        let chunk = self.chunk.clone();
        let full = bytes / CHUNK as u64;
        let tail = (bytes % CHUNK as u64) as usize;
        let frames = (0..full)
            .map({
                let chunk = chunk.clone();
                move |_| chunk.clone()
            })
            .chain((tail > 0).then(|| chunk.slice(..tail)))
            .map(|b| Ok::<_, io::Error>(Frame::data(b)));
        let body = StreamBody::new(futures_util::stream::iter(frames)).boxed();
        let mut resp = Response::new(body);
        resp.headers_mut().insert(
            CONTENT_TYPE,
            HeaderValue::from_static("application/octet-stream"),
        );
        if with_length {
            resp.headers_mut()
                .insert(hyper::header::CONTENT_LENGTH, HeaderValue::from(bytes));
        }
        resp
    }

    fn arrived(&self, id: u64) -> bool {
        self.posts
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains_key(&id)
    }

    fn post_summary(&self) -> [[PostSummary; 2]; 2] {
        let mut out: [[PostSummary; 2]; 2] = Default::default();
        let posts = self.posts.lock().unwrap_or_else(|e| e.into_inner());
        for record in posts.values() {
            let s = &mut out[record.upstream as usize][usize::from(record.app_key)];
            s.ids += 1;
            s.arrivals += u64::from(record.arrivals);
            if record.arrivals > 1 {
                s.repeated_ids += 1;
                s.extra_arrivals += u64::from(record.arrivals - 1);
                if record.key_changed {
                    s.key_changed_ids += 1;
                }
            }
        }
        out
    }
}

#[derive(Default, Clone, Copy)]
struct PostSummary {
    ids: u64,
    arrivals: u64,
    repeated_ids: u64,
    extra_arrivals: u64,
    key_changed_ids: u64,
}

fn json(status: u16, body: &str) -> Response<MockBody> {
    let mut resp = Response::new(
        Full::new(Bytes::from(body.to_string()))
            .map_err(|never| match never {})
            .boxed(),
    );
    *resp.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp
}

/// Length and FNV-1a of a request body.
async fn read_body(mut body: Incoming) -> Result<(u64, u64), io::Error> {
    let mut len = 0u64;
    let mut sum = FNV_OFFSET;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(io::Error::other)?;
        if let Some(data) = frame.data_ref() {
            len += data.len() as u64;
            sum = fnv(sum, data);
        }
    }
    Ok((len, sum))
}

async fn serve_upstream(listener: TcpListener, upstream: Arc<Upstream>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let _ = stream.set_nodelay(true);
        let upstream = upstream.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| upstream.clone().handle(req));
            // An `Err` from the service (the injected close) ends the connection without a
            // response; that error is expected and ignored, like peers hanging up.
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

// ---------------------------------------------------------------------------------------------
// The load
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Copy, PartialEq, Eq)]
enum BodyKind {
    None,
    Download,
    Small,
    Large,
}

struct Kind {
    name: &'static str,
    weight: u32,
    upstream: usize,
    post: bool,
    app_key: bool,
    body: BodyKind,
}

const fn kind(
    name: &'static str,
    weight: u32,
    upstream: usize,
    post: bool,
    app_key: bool,
    body: BodyKind,
) -> Kind {
    Kind {
        name,
        weight,
        upstream,
        post,
        app_key,
        body,
    }
}

const KINDS: [Kind; 12] = [
    kind("GET off", 15, OFF, false, false, BodyKind::None),
    kind("GET auto", 15, AUTO, false, false, BodyKind::None),
    kind("GET download off", 1, OFF, false, false, BodyKind::Download),
    kind(
        "GET download auto",
        1,
        AUTO,
        false,
        false,
        BodyKind::Download,
    ),
    kind("POST off", 15, OFF, true, false, BodyKind::Small),
    kind("POST off + app key", 8, OFF, true, true, BodyKind::Small),
    kind("POST off ~64K", 4, OFF, true, false, BodyKind::Large),
    kind(
        "POST off ~64K + app key",
        2,
        OFF,
        true,
        true,
        BodyKind::Large,
    ),
    kind("POST auto", 15, AUTO, true, false, BodyKind::Small),
    kind("POST auto + app key", 8, AUTO, true, true, BodyKind::Small),
    kind("POST auto ~64K", 4, AUTO, true, false, BodyKind::Large),
    kind(
        "POST auto ~64K + app key",
        2,
        AUTO,
        true,
        true,
        BodyKind::Large,
    ),
];

fn pick_kind(rng: &mut StdRng) -> usize {
    let total: u32 = KINDS.iter().map(|k| k.weight).sum();
    let mut roll = rng.gen_range(0..total);
    for (i, k) in KINDS.iter().enumerate() {
        if roll < k.weight {
            return i;
        }
        roll -= k.weight;
    }
    0
}

#[derive(Default)]
struct KindStats {
    sent: AtomicU64,
    received: AtomicU64,
    s2xx: AtomicU64,
    s4xx: AtomicU64,
    s5xx: AtomicU64,
    transport_errors: AtomicU64,
    body_errors: AtomicU64,
    timeouts: AtomicU64,
}

struct Load {
    client: Client<HttpConnector, Full<Bytes>>,
    base: String,
    pad: Bytes,
    deadline: Instant,
    timeout: Duration,
    next_id: AtomicU64,
    kinds: Vec<KindStats>,
    statuses: Mutex<BTreeMap<(u16, String), u64>>,
    errors: Mutex<BTreeMap<String, u64>>,
    download_mismatch: AtomicU64,
    /// POSTs answered `upstream_unreachable` / `upstream_timeout`: id, kind, `retryable`.
    gave_up: Mutex<Vec<(u64, usize, bool)>>,
}

enum Outcome {
    Response {
        status: u16,
        error: Option<String>,
        body_ok: bool,
        /// A POST answered `upstream_unreachable` / `upstream_timeout`: its `retryable` field.
        gave_up: Option<bool>,
    },
    Transport(String),
    Body(u16, String),
}

impl Load {
    fn totals(&self) -> (u64, u64) {
        self.kinds
            .iter()
            .fold((0, 0), |(s, r), k| (s + get(&k.sent), r + get(&k.received)))
    }

    fn body(&self, id: u64, large: bool, rng: &mut StdRng) -> Bytes {
        let mut body = BytesMut::with_capacity(80 * 1024);
        write!(
            body,
            "{{\"soak_id\":{id},\"amount\":{},\"currency\":\"eur\",\"pad\":\"",
            rng.gen_range(100..100_000)
        )
        .ok();
        let (len, offset) = if large {
            (rng.gen_range(56 * 1024..=72 * 1024), rng.gen_range(0..4096))
        } else {
            (rng.gen_range(64..256), rng.gen_range(0..4096))
        };
        body.extend_from_slice(&self.pad[offset..offset + len]);
        body.extend_from_slice(b"\"}");
        body.freeze()
    }

    async fn one(&self, k: &Kind, id: u64, rng: &mut StdRng) -> Outcome {
        let up = UPSTREAMS[k.upstream];
        let mut expect_len = None;
        let (uri, body) = match k.body {
            BodyKind::None => (format!("{}/{up}/v1/items/{id}", self.base), Bytes::new()),
            BodyKind::Download => {
                let n: u64 = rng.gen_range(256 * 1024..=4 * 1024 * 1024);
                expect_len = Some(n);
                let with_length = u8::from(rng.gen_bool(0.5));
                (
                    format!(
                        "{}/{up}/v1/download?bytes={n}&length={with_length}",
                        self.base
                    ),
                    Bytes::new(),
                )
            }
            BodyKind::Small | BodyKind::Large => (
                format!("{}/{up}/v1/charges", self.base),
                self.body(id, k.body == BodyKind::Large, rng),
            ),
        };
        let mut builder = Request::builder()
            .method(if k.post { Method::POST } else { Method::GET })
            .uri(uri)
            .header("x-soak-id", id);
        if k.post {
            builder = builder
                .header(CONTENT_TYPE, "application/json")
                .header("x-soak-len", body.len())
                .header("x-soak-sum", format!("{:016x}", fnv(FNV_OFFSET, &body)));
        }
        if k.app_key {
            builder = builder
                .header("idempotency-key", format!("app-{id}"))
                .header("x-soak-app-key", "1");
        }
        if rng.gen_bool(0.03) {
            builder = builder.header(CONNECTION, "close");
        }
        let req = match builder.body(Full::new(body)) {
            Ok(req) => req,
            Err(e) => return Outcome::Transport(format!("building the request: {e}")),
        };
        let resp = match self.client.request(req).await {
            Ok(resp) => resp,
            Err(e) => return Outcome::Transport(error_chain(&e)),
        };
        let status = resp.status().as_u16();
        let error = header(resp.headers(), "x-outpost-error").map(str::to_string);
        // A POST Outpost gave up on after sending it: keep the error body to read `retryable`.
        let keep = k.post
            && matches!(
                error.as_deref(),
                Some("upstream_unreachable" | "upstream_timeout")
            );
        let mut kept = Vec::new();
        let mut body = resp.into_body();
        let mut len = 0u64;
        while let Some(frame) = body.frame().await {
            match frame {
                Ok(frame) => {
                    if let Some(data) = frame.data_ref() {
                        len += data.len() as u64;
                        if keep && kept.len() < 16 * 1024 {
                            kept.extend_from_slice(data);
                        }
                    }
                }
                Err(e) => return Outcome::Body(status, error_chain(&e)),
            }
        }
        let body_ok = match expect_len {
            Some(n) if status == 200 => len == n,
            _ => true,
        };
        let gave_up = keep.then(|| {
            serde_json::from_slice::<serde_json::Value>(&kept)
                .ok()
                .and_then(|v| v.pointer("/error/retryable").and_then(|r| r.as_bool()))
                .unwrap_or(false)
        });
        Outcome::Response {
            status,
            error,
            body_ok,
            gave_up,
        }
    }

    async fn worker(self: Arc<Self>, seed: u64) -> Vec<u32> {
        let mut rng = StdRng::seed_from_u64(seed);
        let mut latencies = Vec::new();
        while Instant::now() < self.deadline {
            let index = pick_kind(&mut rng);
            let k = &KINDS[index];
            let stats = &self.kinds[index];
            let id = self.next_id.fetch_add(1, Ordering::Relaxed);
            inc(&stats.sent);
            let started = Instant::now();
            let outcome = tokio::time::timeout(self.timeout, self.one(k, id, &mut rng)).await;
            match outcome {
                Ok(Outcome::Response {
                    status,
                    error,
                    body_ok,
                    gave_up,
                }) => {
                    if let Some(retryable) = gave_up {
                        self.gave_up
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .push((id, index, retryable));
                    }
                    inc(&stats.received);
                    latencies.push(started.elapsed().as_micros().min(u32::MAX as u128) as u32);
                    match status {
                        200..=299 => inc(&stats.s2xx),
                        400..=499 => inc(&stats.s4xx),
                        _ => inc(&stats.s5xx),
                    }
                    if !body_ok {
                        inc(&self.download_mismatch);
                    }
                    *self
                        .statuses
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .entry((status, error.unwrap_or_default()))
                        .or_default() += 1;
                }
                Ok(Outcome::Transport(e)) => {
                    inc(&stats.transport_errors);
                    self.error(format!("{}: {e}", k.name));
                }
                Ok(Outcome::Body(status, e)) => {
                    inc(&stats.body_errors);
                    self.error(format!("{}: {status} body: {e}", k.name));
                }
                Err(_) => {
                    inc(&stats.timeouts);
                    self.error(format!(
                        "{}: no complete answer within the client timeout",
                        k.name
                    ));
                }
            }
        }
        latencies
    }

    fn error(&self, text: String) {
        let mut errors = self.errors.lock().unwrap_or_else(|e| e.into_inner());
        let key = if errors.len() >= 50 && !errors.contains_key(&text) {
            "(other errors)".to_string()
        } else {
            text
        };
        *errors.entry(key).or_default() += 1;
    }
}

fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let _ = write!(text, ": {s}");
        source = s.source();
    }
    text
}

// ---------------------------------------------------------------------------------------------
// Outpost: process, samples, logs, metrics
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Copy, Debug)]
struct Sample {
    /// Seconds since the load started (0 = before it).
    t: f64,
    rss_kib: u64,
    hwm_kib: u64,
    threads: u64,
    fds: u64,
    cpu_ticks: u64,
    sent: u64,
}

fn sample(pid: u32, t: f64, sent: u64) -> Option<Sample> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    // Fields 14 and 15 of stat (utime, stime); `after` starts at field 3.
    let cpu_ticks = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count() as u64);
    Some(Sample {
        t,
        rss_kib: field("VmRSS:"),
        hwm_kib: field("VmHWM:"),
        threads: field("Threads:"),
        fds,
        cpu_ticks,
        sent,
    })
}

fn clock_ticks() -> u64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100)
}

/// What Outpost wrote on stderr: access lines counted, other lines grouped.
#[derive(Default)]
struct LogSummary {
    access_lines: u64,
    by_message: BTreeMap<String, u64>,
    last_other: Vec<String>,
}

fn summarize_log_line(summary: &mut LogSummary, line: &str) {
    if line.contains("\"target\":\"outpost::access\"") {
        summary.access_lines += 1;
        return;
    }
    let key = match serde_json::from_str::<serde_json::Value>(line) {
        Ok(v) => {
            let field = |name: &str| {
                v.get(name)
                    .or_else(|| v.get("fields").and_then(|f| f.get(name)))
                    .and_then(|x| x.as_str())
                    .unwrap_or("")
                    .to_string()
            };
            let mut key = format!("{} {}", field("level"), field("message"));
            let error = field("error");
            if !error.is_empty() {
                let _ = write!(key, " ({error})");
            }
            key
        }
        Err(_) => format!("(not JSON) {line}"),
    };
    let key: String = key.chars().take(200).collect();
    let key = if summary.by_message.len() >= 100 && !summary.by_message.contains_key(&key) {
        "(other messages)".to_string()
    } else {
        key
    };
    *summary.by_message.entry(key).or_default() += 1;
    summary.last_other.push(line.chars().take(300).collect());
    if summary.last_other.len() > 10 {
        summary.last_other.remove(0);
    }
}

/// Sum of a metric's samples grouped by one label's value (all samples when `label` is empty).
fn metric_by(text: &str, name: &str, label: &str) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix(name) else {
            continue;
        };
        let (labels, value) = match rest.strip_prefix('{') {
            Some(r) => match r.rsplit_once('}') {
                Some((labels, value)) => (labels, value),
                None => continue,
            },
            None if rest.starts_with(' ') => ("", rest),
            None => continue,
        };
        let Some(value) = value
            .split_whitespace()
            .next()
            .and_then(|v| v.parse::<f64>().ok())
        else {
            continue;
        };
        let group = labels
            .split(',')
            .find_map(|kv| {
                kv.strip_prefix(label)?
                    .strip_prefix("=\"")?
                    .strip_suffix('"')
                    .map(str::to_string)
            })
            .unwrap_or_default();
        *out.entry(group).or_insert(0.0) += value;
    }
    out
}

fn free_port() -> io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

fn config_yaml(app: u16, admin: u16, mock: SocketAddr) -> String {
    let mut yaml = format!(
        "version: 1\nlisten: 127.0.0.1:{app}\nadmin_listen: 127.0.0.1:{admin}\ndrain_timeout: 10s\nupstreams:\n"
    );
    for (name, mode) in [("off", "off"), ("auto", "auto")] {
        let _ = write!(
            yaml,
            "  {name}:\n\
             \x20   base_url: http://{mock}/u/{name}\n\
             \x20   auth: {{ type: bearer, token: \"${{env:SOAK_UPSTREAM_TOKEN}}\" }}\n\
             \x20   timeout: 5s\n\
             \x20   attempt_timeout: 1500ms\n\
             \x20   rate_limit: {{ requests_per_second: 100000, burst: 10000, max_wait: 2s }}\n\
             \x20   retry: {{ max_attempts: 3, idempotency_key: {mode} }}\n"
        );
    }
    yaml
}

async fn http_get(
    client: &Client<HttpConnector, Full<Bytes>>,
    url: &str,
    timeout: Duration,
) -> Option<(u16, String)> {
    let req = Request::get(url).body(Full::new(Bytes::new())).ok()?;
    let fut = async {
        let resp = client.request(req).await.ok()?;
        let status = resp.status().as_u16();
        let body = resp.into_body().collect().await.ok()?.to_bytes();
        Some((status, String::from_utf8_lossy(&body).into_owned()))
    };
    tokio::time::timeout(timeout, fut).await.ok().flatten()
}

// ---------------------------------------------------------------------------------------------
// The run
// ---------------------------------------------------------------------------------------------

struct Criterion {
    name: &'static str,
    pass: bool,
    value: String,
}

fn main() -> ExitCode {
    let settings = match Settings::from_env() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("[soak] {e}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("[soak] cannot start the runtime: {e}");
            return ExitCode::from(2);
        }
    };
    match runtime.block_on(run(settings)) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("[soak] error: {e}");
            ExitCode::from(2)
        }
    }
}

async fn run(settings: Settings) -> Result<bool, String> {
    if cfg!(debug_assertions) {
        eprintln!("[soak] warning: this load generator is a debug build; use --release");
    }
    if !settings.outpost_bin.exists() {
        return Err(format!(
            "{} not found: run `cargo build --release` first (or set OUTPOST_BIN)",
            settings.outpost_bin.display()
        ));
    }

    // Upstream.
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| format!("bind the upstream: {e}"))?;
    let mock_addr = listener.local_addr().map_err(|e| e.to_string())?;
    let upstream = Arc::new(Upstream::new(settings.faults));
    tokio::spawn(serve_upstream(listener, upstream.clone()));

    // Outpost.
    let dir = std::env::temp_dir().join(format!("outpost-soak-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let app_port = free_port().map_err(|e| e.to_string())?;
    let admin_port = free_port().map_err(|e| e.to_string())?;
    let config = config_yaml(app_port, admin_port, mock_addr);
    let config_path = dir.join("proxy.yaml");
    std::fs::write(&config_path, &config).map_err(|e| e.to_string())?;
    let mut child = tokio::process::Command::new(&settings.outpost_bin)
        .arg("run")
        .arg("-c")
        .arg(&config_path)
        .current_dir(&dir)
        .env_remove("OUTPOST_CONFIG")
        .env("SOAK_UPSTREAM_TOKEN", TOKEN)
        .env(
            "OUTPOST_LOG",
            std::env::var("OUTPOST_LOG").unwrap_or("info".into()),
        )
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("spawn {}: {e}", settings.outpost_bin.display()))?;
    let pid = child.id().ok_or("outpost exited at once")?;
    let log = Arc::new(Mutex::new(LogSummary::default()));
    let log_reader = {
        let log = log.clone();
        let stderr = child.stderr.take().ok_or("no stderr pipe")?;
        tokio::spawn(async move {
            let mut lines = BufReader::new(stderr).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                summarize_log_line(&mut log.lock().unwrap_or_else(|e| e.into_inner()), &line);
            }
        })
    };

    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    let client: Client<HttpConnector, Full<Bytes>> = Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(settings.concurrency)
        .build(connector);
    let admin = format!("http://127.0.0.1:{admin_port}");
    let ready_by = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Err(format!("outpost exited before it was ready: {status}"));
        }
        if let Some((200, _)) =
            http_get(&client, &format!("{admin}/readyz"), Duration::from_secs(1)).await
        {
            break;
        }
        if Instant::now() > ready_by {
            return Err("outpost did not become ready within 30 s".into());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    eprintln!(
        "[soak] outpost pid {pid} ready on 127.0.0.1:{app_port} (admin {admin_port}); upstream {mock_addr}; {} s x {} workers",
        settings.seconds, settings.concurrency
    );

    // Load.
    let pad: Bytes = {
        let mut rng = StdRng::from_entropy();
        (0..80 * 1024)
            .map(|_| rng.gen_range(b'a'..=b'z'))
            .collect::<Vec<u8>>()
            .into()
    };
    let started = Instant::now();
    let load = Arc::new(Load {
        client: client.clone(),
        base: format!("http://127.0.0.1:{app_port}"),
        pad,
        deadline: started + Duration::from_secs(settings.seconds),
        timeout: settings.client_timeout,
        next_id: AtomicU64::new(1),
        kinds: KINDS.iter().map(|_| KindStats::default()).collect(),
        statuses: Mutex::new(BTreeMap::new()),
        errors: Mutex::new(BTreeMap::new()),
        download_mismatch: AtomicU64::new(0),
        gave_up: Mutex::new(Vec::new()),
    });
    let first = sample(pid, 0.0, 0).ok_or("cannot read /proc for outpost")?;
    let samples = Arc::new(Mutex::new(vec![first]));
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = {
        let (samples, stop, load) = (samples.clone(), stop.clone(), load.clone());
        let every = settings.sample_every;
        let seconds = settings.seconds;
        tokio::spawn(async move {
            let mut next = started + every;
            let mut last_sent = 0;
            loop {
                tokio::time::sleep_until(next.into()).await;
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let t = started.elapsed().as_secs_f64();
                let (sent, received) = load.totals();
                if let Some(s) = sample(pid, t, sent) {
                    eprintln!(
                        "[soak] {t:>5.0}/{seconds} s  sent {sent}  answered {received}  {:.0} req/s  RSS {} KiB  fds {}",
                        (sent - last_sent) as f64 / every.as_secs_f64(),
                        s.rss_kib,
                        s.fds
                    );
                    samples.lock().unwrap_or_else(|e| e.into_inner()).push(s);
                }
                last_sent = sent;
                next += every;
            }
        })
    };
    let workers: Vec<_> = (0..settings.concurrency)
        .map(|i| tokio::spawn(load.clone().worker(rand::random::<u64>() ^ i as u64)))
        .collect();
    let mut latencies = Vec::new();
    for w in workers {
        latencies.extend(w.await.map_err(|e| format!("worker panicked: {e}"))?);
    }
    let load_elapsed = started.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    sampler.abort();
    let (sent, received) = load.totals();
    let alive_at_end = child.try_wait().ok().flatten().is_none();
    let last = sample(pid, load_elapsed, sent);
    if let Some(s) = last {
        samples.lock().unwrap_or_else(|e| e.into_inner()).push(s);
    }
    let metrics = http_get(&client, &format!("{admin}/metrics"), Duration::from_secs(5))
        .await
        .map(|(_, body)| body)
        .unwrap_or_default();

    // Graceful stop: SIGTERM, then Outpost must exit 0 within its drain timeout.
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status();
    let exit = tokio::time::timeout(Duration::from_secs(30), child.wait()).await;
    let exit_text = match &exit {
        Ok(Ok(status)) => status.to_string(),
        Ok(Err(e)) => format!("wait failed: {e}"),
        Err(_) => {
            let _ = child.kill().await;
            "still running 30 s after SIGTERM (killed)".to_string()
        }
    };
    let clean_exit = matches!(&exit, Ok(Ok(status)) if status.success());
    let _ = tokio::time::timeout(Duration::from_secs(5), log_reader).await;
    let _ = std::fs::remove_dir_all(&dir);

    let samples = samples.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let log = std::mem::take(&mut *log.lock().unwrap_or_else(|e| e.into_inner()));
    let report = Report {
        settings: &settings,
        upstream: &upstream,
        load: &load,
        samples: &samples,
        latencies,
        load_elapsed,
        sent,
        received,
        metrics: &metrics,
        log: &log,
        alive_at_end,
        clean_exit,
        exit_text,
        config: &config,
        clk_tck: clock_ticks(),
    };
    let (text, pass) = report.render();
    println!("{text}");
    if let Some(parent) = settings.report.parent() {
        let _ = std::fs::create_dir_all(parent);
    }
    match std::fs::write(&settings.report, &text) {
        Ok(()) => eprintln!("[soak] report written to {}", settings.report.display()),
        Err(e) => eprintln!("[soak] cannot write {}: {e}", settings.report.display()),
    }
    eprintln!("[soak] {}", if pass { "PASS" } else { "FAIL" });
    Ok(pass)
}

// ---------------------------------------------------------------------------------------------
// Report
// ---------------------------------------------------------------------------------------------

struct Report<'a> {
    settings: &'a Settings,
    upstream: &'a Upstream,
    load: &'a Load,
    samples: &'a [Sample],
    latencies: Vec<u32>,
    load_elapsed: f64,
    sent: u64,
    received: u64,
    metrics: &'a str,
    log: &'a LogSummary,
    alive_at_end: bool,
    clean_exit: bool,
    exit_text: String,
    config: &'a str,
    clk_tck: u64,
}

/// Least-squares growth of RSS over the samples from `from_t` on, as a percentage of their
/// mean across their time span; `None` with fewer than 3 samples.
fn rss_growth(samples: &[Sample], from_t: f64) -> Option<(f64, f64, usize)> {
    let pts: Vec<(f64, f64)> = samples
        .iter()
        .filter(|s| s.t >= from_t)
        .map(|s| (s.t, s.rss_kib as f64))
        .collect();
    if pts.len() < 3 {
        return None;
    }
    let n = pts.len() as f64;
    let mean_t = pts.iter().map(|p| p.0).sum::<f64>() / n;
    let mean_r = pts.iter().map(|p| p.1).sum::<f64>() / n;
    let sxy: f64 = pts.iter().map(|p| (p.0 - mean_t) * (p.1 - mean_r)).sum();
    let sxx: f64 = pts.iter().map(|p| (p.0 - mean_t).powi(2)).sum();
    if sxx == 0.0 || mean_r == 0.0 {
        return None;
    }
    let slope = sxy / sxx; // KiB per second
    let span = pts[pts.len() - 1].0 - pts[0].0;
    Some((slope * span * 100.0 / mean_r, slope * 60.0, pts.len()))
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|v| v.trim_start_matches([' ', '\t', ':']).to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        })
        .map_or("?".into(), |kib| {
            format!("{:.1} GiB", kib as f64 / 1048576.0)
        });
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map_or("?".into(), |k| k.trim().to_string());
    format!("{cpu}, {cpus} CPUs, {mem} RAM, Linux {kernel}")
}

fn git_describe() -> String {
    std::process::Command::new("git")
        .args([
            "-C",
            env!("CARGO_MANIFEST_DIR"),
            "describe",
            "--always",
            "--dirty",
        ])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map_or("?".into(), |o| {
            String::from_utf8_lossy(&o.stdout).trim().to_string()
        })
}

impl Report<'_> {
    fn render(mut self) -> (String, bool) {
        let s = self.settings;
        let f = &s.faults;
        let u = &self.upstream.c;
        let mut out = String::new();
        let w = &mut out;
        let _ = writeln!(w, "# Outpost soak test\n");
        let _ = writeln!(
            w,
            "Generated by `bench/soak.sh` (`cargo run --release --example soak`, source \
             `examples/soak.rs`); see the \"Soak test\" section of `bench/README.md`.\n"
        );
        if s.seconds < 600 {
            let _ = writeln!(
                w,
                "> **Short run: {} s.** The soak proper is 10 minutes: `bench/soak.sh` (default \
                 `SOAK_SECONDS=600`). This file shows the soak works and what it reports; RSS \
                 flatness over {} s says little about a slow leak.\n",
                s.seconds, s.seconds
            );
        }
        let _ = writeln!(w, "- Date: {}", httpdate::fmt_http_date(SystemTime::now()));
        let _ = writeln!(w, "- Machine: {}", machine());
        let _ = writeln!(
            w,
            "- Outpost: `{}` (repository at `{}`)",
            s.outpost_bin.display(),
            git_describe()
        );
        let _ = writeln!(
            w,
            "- Settings: `SOAK_SECONDS={}` `SOAK_CONCURRENCY={}` `SOAK_CLIENT_TIMEOUT={}` \
             `SOAK_SAMPLE_SECONDS={}` `SOAK_RSS_TOLERANCE={}`",
            s.seconds,
            s.concurrency,
            s.client_timeout.as_secs(),
            s.sample_every.as_secs(),
            s.rss_tolerance_pct
        );
        let _ = writeln!(
            w,
            "- Faults per upstream arrival: close {:.1} % (half after the head, half after the \
             body), 503 {:.1} %, 429 + `Retry-After: 1` {:.1} % (at most one per upstream per \
             {} ms), 502 {:.1} %, delay 200 ms–2 s {:.1} %",
            f.close * 100.0,
            f.s503 * 100.0,
            f.s429 * 100.0,
            f.gap_429.as_millis(),
            f.s502 * 100.0,
            f.delay * 100.0
        );
        let _ = writeln!(
            w,
            "- Load: {} requests in {} s ({:.0} req/s), then {:.1} s for the requests in \
             flight to finish\n",
            self.sent,
            s.seconds,
            self.sent as f64 / s.seconds as f64,
            (self.load_elapsed - s.seconds as f64).max(0.0)
        );

        // Criteria.
        let mut criteria = Vec::new();
        let lost = self.sent.saturating_sub(self.received);
        criteria.push(Criterion {
            name: "Requests sent = responses received",
            pass: lost == 0,
            value: format!(
                "{} sent, {} received, {lost} missing",
                self.sent, self.received
            ),
        });
        let posts = self.upstream.post_summary();
        let off_dups = posts[OFF][0].repeated_ids + posts[OFF][1].repeated_ids;
        let off_extra = posts[OFF][0].extra_arrivals + posts[OFF][1].extra_arrivals;
        criteria.push(Criterion {
            name: "No POST to `off` reached the upstream twice",
            pass: off_dups == 0,
            value: format!(
                "{off_dups} X-Soak-Ids arrived more than once ({off_extra} extra arrivals)"
            ),
        });
        let auto_changed = posts[AUTO][0].key_changed_ids + posts[AUTO][1].key_changed_ids;
        let auto_repeats = posts[AUTO][0].repeated_ids + posts[AUTO][1].repeated_ids;
        criteria.push(Criterion {
            name: "No `auto` POST repeated with a different (or no) key",
            pass: auto_changed == 0,
            value: format!(
                "{auto_changed} with a changed key; {auto_repeats} repeated with the same key (safe retries)"
            ),
        });
        let half = self.load_elapsed / 2.0;
        let growth = rss_growth(self.samples, half);
        criteria.push(Criterion {
            name: "Outpost RSS flat over the second half",
            pass: growth.is_some_and(|(g, _, _)| g <= s.rss_tolerance_pct),
            value: match growth {
                Some((g, per_min, n)) => format!(
                    "{g:+.1} % (limit +{} %; least squares over {n} samples, {per_min:+.0} KiB/min)",
                    s.rss_tolerance_pct
                ),
                None => "too few samples in the second half (need 3: run longer or lower \
                         SOAK_SAMPLE_SECONDS)"
                    .into(),
            },
        });
        let integrity = [
            ("upstream body checksum mismatches", get(&u.bad_body)),
            ("upstream body read errors", get(&u.body_read_errors)),
            ("wrong or missing credential", get(&u.bad_auth)),
            ("app Idempotency-Key altered", get(&u.app_key_altered)),
            ("`auto` POST without a key", get(&u.auto_post_without_key)),
            (
                "`off` POST with a key Outpost added",
                get(&u.off_post_key_added),
            ),
            ("POST without X-Soak-Id", get(&u.missing_soak_id)),
            ("unknown upstream path", get(&u.unknown_path)),
            (
                "download of the wrong length",
                get(&self.load.download_mismatch),
            ),
        ];
        let broken: Vec<String> = integrity
            .iter()
            .filter(|(_, n)| *n > 0)
            .map(|(what, n)| format!("{n} {what}"))
            .collect();
        criteria.push(Criterion {
            name: "Bodies, credentials and keys intact",
            pass: broken.is_empty(),
            value: if broken.is_empty() {
                "all checks 0".into()
            } else {
                broken.join(", ")
            },
        });
        criteria.push(Criterion {
            name: "Outpost up throughout, exits 0 on SIGTERM",
            pass: self.alive_at_end && self.clean_exit,
            value: format!(
                "{}; exit: {}",
                if self.alive_at_end {
                    "running at the end of the load"
                } else {
                    "NOT running at the end of the load"
                },
                self.exit_text
            ),
        });
        let pass = criteria.iter().all(|c| c.pass);
        let _ = writeln!(w, "## Result: {}\n", if pass { "PASS" } else { "FAIL" });
        let _ = writeln!(w, "| criterion | result | value |\n|---|---|---|");
        for c in &criteria {
            let _ = writeln!(
                w,
                "| {} | **{}** | {} |",
                c.name,
                if c.pass { "PASS" } else { "FAIL" },
                c.value
            );
        }

        // RSS and CPU.
        let first = self.samples.first().copied();
        let last = self.samples.last().copied();
        let max = self.samples.iter().map(|s| s.rss_kib).max().unwrap_or(0);
        let _ = writeln!(w, "\n## Outpost process\n");
        if let (Some(first), Some(last)) = (first, last) {
            let cpu_ms = (last.cpu_ticks - first.cpu_ticks) as f64 * 1000.0 / self.clk_tck as f64;
            let _ = writeln!(
                w,
                "- RSS (VmRSS): first {} KiB (before the load), last {} KiB, max {} KiB; peak \
                 (VmHWM) {} KiB",
                first.rss_kib, last.rss_kib, max, last.hwm_kib
            );
            let _ = writeln!(
                w,
                "- CPU: {:.0} ms user+system for {} requests = **{:.1} ms per 1000 requests** \
                 (faults, retries and 64 KiB bodies included; not comparable with \
                 `RESULTS.md`)",
                cpu_ms,
                self.sent,
                cpu_ms * 1000.0 / self.sent.max(1) as f64
            );
            let _ = writeln!(
                w,
                "- Threads {} → {}, open fds {} → {}\n",
                first.threads, last.threads, first.fds, last.fds
            );
        }
        let _ = writeln!(w, "| t (s) | requests sent | RSS KiB | VmHWM KiB | threads | fds | CPU ms |\n|---:|---:|---:|---:|---:|---:|---:|");
        for smp in self.samples {
            let base = first.map_or(0, |f| f.cpu_ticks);
            let _ = writeln!(
                w,
                "| {:.0} | {} | {} | {} | {} | {} | {:.0} |",
                smp.t,
                smp.sent,
                smp.rss_kib,
                smp.hwm_kib,
                smp.threads,
                smp.fds,
                (smp.cpu_ticks - base) as f64 * 1000.0 / self.clk_tck as f64
            );
        }

        // Client view.
        self.latencies.sort_unstable();
        let q = |p: f64| -> f64 {
            if self.latencies.is_empty() {
                0.0
            } else {
                let i = ((self.latencies.len() as f64 - 1.0) * p).round() as usize;
                f64::from(self.latencies[i]) / 1000.0
            }
        };
        let _ = writeln!(w, "\n## Requests (client view)\n");
        let _ = writeln!(
            w,
            "Latency of answered requests (incl. downloads, injected delays and retries): p50 \
             {:.1} ms, p99 {:.0} ms, p99.9 {:.0} ms, max {:.0} ms.\n",
            q(0.5),
            q(0.99),
            q(0.999),
            q(1.0)
        );
        let _ = writeln!(w, "| kind | sent | received | 2xx | 4xx | 5xx | transport errors | body errors | timeouts |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|");
        for (k, st) in KINDS.iter().zip(&self.load.kinds) {
            let _ = writeln!(
                w,
                "| {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                k.name,
                get(&st.sent),
                get(&st.received),
                get(&st.s2xx),
                get(&st.s4xx),
                get(&st.s5xx),
                get(&st.transport_errors),
                get(&st.body_errors),
                get(&st.timeouts)
            );
        }
        let _ = writeln!(w, "\nStatus histogram (status, `x-outpost-error`):\n");
        let _ = writeln!(
            w,
            "| status | x-outpost-error | count | share |\n|---:|---|---:|---:|"
        );
        for ((status, error), n) in self
            .load
            .statuses
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
        {
            let _ = writeln!(
                w,
                "| {status} | {} | {n} | {:.2} % |",
                if error.is_empty() { "–" } else { error },
                pct(*n, self.received)
            );
        }
        let errors = self.load.errors.lock().unwrap_or_else(|e| e.into_inner());
        if !errors.is_empty() {
            let _ = writeln!(w, "\nRequests without a complete answer:\n");
            for (e, n) in errors.iter() {
                let _ = writeln!(w, "- {n} × {e}");
            }
        }

        // Upstream view.
        let _ = writeln!(w, "\n## Upstream view\n");
        let arrivals = get(&u.arrivals[OFF]) + get(&u.arrivals[AUTO]);
        let _ = writeln!(
            w,
            "{arrivals} arrivals (`off` {}, `auto` {}): {} POST, {} GET answered, {} downloads \
             streamed. Injected: {} closes after the head, {} after the body, {} × 503, {} × \
             429, {} × 502, {} delays.\n",
            get(&u.arrivals[OFF]),
            get(&u.arrivals[AUTO]),
            get(&u.posts),
            get(&u.gets),
            get(&u.downloads),
            get(&u.closed_after_head),
            get(&u.closed_after_body),
            get(&u.s503),
            get(&u.s429),
            get(&u.s502),
            get(&u.delayed)
        );
        let _ = writeln!(w, "| POSTs | logical POSTs sent | reached upstream | arrivals | repeated | extra arrivals | repeated with changed key |\n|---|---:|---:|---:|---:|---:|---:|");
        for (ui, name) in UPSTREAMS.iter().enumerate() {
            for app_key in [false, true] {
                let p = posts[ui][usize::from(app_key)];
                let sent_logical: u64 = KINDS
                    .iter()
                    .zip(&self.load.kinds)
                    .filter(|(k, _)| k.post && k.upstream == ui && k.app_key == app_key)
                    .map(|(_, st)| get(&st.sent))
                    .sum();
                let _ = writeln!(
                    w,
                    "| `{name}`{} | {sent_logical} | {} | {} | {} | {} | {} |",
                    if app_key { " + app key" } else { "" },
                    p.ids,
                    p.arrivals,
                    p.repeated_ids,
                    p.extra_arrivals,
                    p.key_changed_ids
                );
            }
        }

        // POSTs Outpost gave up on after the upstream had them.
        let gave_up = self.load.gave_up.lock().unwrap_or_else(|e| e.into_inner());
        let mut ambiguous = [[0u64; 3]; 2]; // per upstream: reached, retryable, no app key
        for (id, index, retryable) in gave_up.iter() {
            let k = &KINDS[*index];
            if self.upstream.arrived(*id) {
                let a = &mut ambiguous[k.upstream];
                a[0] += 1;
                if *retryable {
                    a[1] += 1;
                    if !k.app_key {
                        a[2] += 1;
                    }
                }
            }
        }
        let _ = writeln!(
            w,
            "\nPOSTs that reached the upstream but were answered `502 upstream_unreachable` or \
             `504 upstream_timeout` (the upstream may have processed them; Outpost rightly did \
             not resend them unless safe): `off` {} ({} with `\"retryable\": true` in the \
             error body, {} of them without an app key), `auto` {} ({} retryable, {} without \
             an app key: the application never saw the key Outpost added, so its own retry \
             would carry a new one). Not a criterion: Outpost sent nothing twice; an \
             application that resends on `retryable: true` would.",
            ambiguous[OFF][0],
            ambiguous[OFF][1],
            ambiguous[OFF][2],
            ambiguous[AUTO][0],
            ambiguous[AUTO][1],
            ambiguous[AUTO][2]
        );

        // Outpost's own accounting.
        let _ = writeln!(w, "\n## Outpost's own accounting\n");
        let requests: f64 = metric_by(self.metrics, "outpost_requests_total", "")
            .values()
            .sum();
        let _ = writeln!(
            w,
            "- `outpost_requests_total`: {requests:.0}; access-log lines: {} (requests sent: {})",
            self.log.access_lines, self.sent
        );
        for (metric, label) in [
            ("outpost_upstream_attempts_total", "outcome"),
            ("outpost_retries_total", "reason"),
            ("outpost_rate_limited_total", "source"),
        ] {
            let groups = metric_by(self.metrics, metric, label);
            let text: Vec<String> = groups
                .iter()
                .filter(|(_, v)| **v > 0.0)
                .map(|(k, v)| format!("{k} {v:.0}"))
                .collect();
            let _ = writeln!(
                w,
                "- `{metric}` by {label}: {}",
                if text.is_empty() {
                    "none".into()
                } else {
                    text.join(", ")
                }
            );
        }
        if !self.log.by_message.is_empty() {
            let _ = writeln!(w, "\nOther log lines (level, message, error), by count:\n");
            let mut by_count: Vec<_> = self.log.by_message.iter().collect();
            by_count.sort_by(|a, b| b.1.cmp(a.1));
            for (m, n) in by_count.iter().take(20) {
                let _ = writeln!(w, "- {n} × {}", m.replace('|', "\\|"));
            }
        }
        let _ = writeln!(
            w,
            "\n<details><summary>Outpost config used</summary>\n\n```yaml\n{}```\n</details>",
            self.config
        );
        (out, pass)
    }
}
