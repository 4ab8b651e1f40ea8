//! Cassettes: recorded request/response pairs, one human-readable YAML file per upstream
//! (`<cassette_dir>/<upstream>.yaml`), for `mode: record | replay | replay_or_record`.
//!
//! ```yaml
//! version: 1
//! upstream: stripe
//! interactions:
//! - request:
//!     method: POST
//!     path: /v1/charges
//!     query: expand[]=customer
//!     headers:
//!     - 'content-type: application/x-www-form-urlencoded'
//!     body: amount=100&currency=usd
//!   response:
//!     status: 200
//!     headers:
//!     - 'content-type: application/json'
//!     body: |
//!       {"id": "ch_1", "amount": 100}
//! ```
//!
//! Headers are `name: value` lines, in order. A body is `body:` (UTF-8 text, byte-exact) or
//! `body_base64:` (anything else).
//!
//! **Matching.** A request matches a recording when method, path, query (parameters compared
//! as a multiset: order does not matter), body and the upstream's `cassette.match_headers` are
//! equal. Bodies are compared structurally when JSON (key order and whitespace do not matter)
//! or form-encoded (field order does not matter), byte-wise otherwise. Values the application
//! cannot control do not break a match:
//! * headers are compared only when named in `match_headers`, so `Idempotency-Key`, `Date`,
//!   `User-Agent`, request ids … never matter unless chosen; an `Idempotency-Key` Outpost
//!   generated ([`CassetteRequest::generated_idempotency_key`]) is ignored even when chosen;
//! * in the query, form and JSON bodies (any depth): fields named in `cassette.ignore_fields`;
//!   any string value that is an ISO 8601 date-time (`2026-12-04T02:10:00Z`, `2026-12-04 02:10`);
//!   and a number (or string of digits) in Unix-time range (seconds 10⁹–10¹⁰, or milliseconds
//!   10¹²–10¹³) under a key named like a time: `timestamp`, `ts`, `time`, `date`, `nonce`, or
//!   ending in `_at`, `_time`, `_ts`, `At`.
//!
//! **Sequences.** Identical requests (same match key) replay their recordings in file order:
//! the 1st call gets the 1st recording, the 2nd the 2nd …, and calls past the end get the last.
//!
//! **Misses.** [`Cassette::lookup`] returns a [`ReplayMiss`] naming what was asked and the
//! nearest recording with the differences, for the `502 replay_miss` error body.
//!
//! **Recording** appends and rewrites the file atomically (temporary file in the same
//! directory, fsync, rename, fsync of the directory). Credentials never reach a cassette:
//! requests are recorded as the application sent them, `authorization`/`proxy-authorization`
//! are not written, the configured `capture.redact_headers` are `[redacted]`, and every known
//! secret string is scrubbed ([`Redactor::scrub`]). Bodies are otherwise byte-exact, so a
//! replay returns the bytes that were recorded.

use std::collections::HashMap;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use base64::Engine;
use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Method};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::config::{is_never_stored, CassetteOptions};
use super::redact::Redactor;

/// The cassette file format version.
pub const CASSETTE_VERSION: u32 = 1;
/// How much of a body a miss description quotes.
const EXCERPT: usize = 200;

/// A cassette could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum CassetteError {
    #[error("{path}: {message}")]
    Io { path: String, message: String },
    #[error("{path}:{line}:{column}: {message}")]
    Parse {
        path: String,
        line: usize,
        column: usize,
        message: String,
    },
    #[error("{path}: {message}")]
    Invalid { path: String, message: String },
}

/// The file as written.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct CassetteFile {
    pub version: u32,
    pub upstream: String,
    #[serde(default)]
    pub interactions: Vec<Interaction>,
}

/// One recorded request and its response.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Interaction {
    pub request: RecordedRequest,
    pub response: RecordedResponse,
}

/// A request as recorded.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RecordedRequest {
    pub method: String,
    pub path: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub query: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub headers: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body_base64: Option<String>,
}

/// A response as recorded.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RecordedResponse {
    pub status: u16,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub headers: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body_base64: Option<String>,
}

/// A request to look up or record: as the application sent it (upstream prefix removed).
#[derive(Debug, Clone)]
pub struct CassetteRequest {
    pub method: Method,
    pub path: String,
    pub query: Option<String>,
    pub headers: HeaderMap,
    pub body: Bytes,
    /// Outpost added the `Idempotency-Key` itself (`idempotency_key: auto`): never match on it.
    pub generated_idempotency_key: bool,
}

impl CassetteRequest {
    /// From a request head and its whole body.
    pub fn new(method: Method, uri: &http::Uri, headers: HeaderMap, body: Bytes) -> Self {
        CassetteRequest {
            method,
            path: uri.path().to_string(),
            query: uri.query().map(str::to_string),
            headers,
            body,
            generated_idempotency_key: false,
        }
    }
}

/// The recorded answer to replay.
#[derive(Debug, Clone)]
pub struct ReplayResponse {
    pub status: http::StatusCode,
    /// As recorded, without `content-length` and hop-by-hop headers (the server sets them).
    pub headers: HeaderMap,
    pub body: Bytes,
}

/// The `502 replay_miss` description: what was asked, and the nearest recording.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ReplayMiss {
    pub upstream: String,
    pub asked: RequestSummary,
    /// Recordings in the cassette.
    pub recorded: usize,
    pub nearest: Option<Nearest>,
}

/// A short, scrubbed description of a request.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct RequestSummary {
    pub method: String,
    pub path: String,
    pub query: Option<String>,
    /// The first bytes of a text body.
    pub body: Option<String>,
}

/// The recording closest to a missed request.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Nearest {
    /// Position in the file's `interactions` (0-based).
    pub index: usize,
    pub request: RequestSummary,
    /// What differs, e.g. ``query `limit`: asked "3", recorded "10"``.
    pub differences: Vec<String>,
}

impl ReplayMiss {
    /// The error's `message`: names the request, never a header value or body.
    pub fn message(&self) -> String {
        format!(
            "{}: no recording matches {} {}",
            self.upstream, self.asked.method, self.asked.path
        )
    }

    /// Extra field of the error body: `{"asked": …, "recorded": n, "nearest": …}`.
    pub fn details(&self) -> Value {
        json!({"asked": self.asked, "recorded": self.recorded, "nearest": self.nearest})
    }

    /// The whole `502 replay_miss` body in Outpost's error shape, for `error.rs` to send
    /// (with `x-outpost-error: replay_miss`): `{"error": {"type": "replay_miss", "message",
    /// "upstream", "status": 502, "retryable": false, "request_id", "replay_miss": details}}`.
    pub fn error_json(&self, request_id: &str) -> Value {
        json!({"error": {
            "type": "replay_miss",
            "message": self.message(),
            "upstream": self.upstream,
            "status": 502,
            "retryable": false,
            "request_id": request_id,
            "replay_miss": self.details(),
        }})
    }
}

/// The comparable form of a request.
#[derive(Debug, Clone, PartialEq)]
struct Key {
    method: String,
    path: String,
    query: Vec<(String, String)>,
    headers: Vec<(String, String)>,
    body: NormBody,
}

#[derive(Debug, Clone, PartialEq)]
enum NormBody {
    Empty,
    Json(Value),
    Form(Vec<(String, String)>),
    Bytes(Vec<u8>),
}

impl Key {
    fn fingerprint(&self) -> String {
        let body = match &self.body {
            NormBody::Empty => json!(null),
            NormBody::Json(v) => json!({"json": v}),
            NormBody::Form(f) => json!({"form": f}),
            NormBody::Bytes(b) => json!({"bytes": super::base64_encode(b)}),
        };
        json!([self.method, self.path, self.query, self.headers, body]).to_string()
    }
}

struct Entry {
    key: Key,
    fingerprint: String,
    summary: RequestSummary,
    response: ReplayResponse,
}

struct State {
    file: CassetteFile,
    entries: Vec<Entry>,
    /// Calls seen per fingerprint, for sequences.
    calls: HashMap<String, usize>,
}

/// One upstream's cassette, loaded; share as `Arc<Cassette>`.
pub struct Cassette {
    path: PathBuf,
    upstream: String,
    options: CassetteOptions,
    redactor: RwLock<Arc<Redactor>>,
    state: Mutex<State>,
    /// Held while a recording is written, so concurrent writers never lose one another's.
    writer: Mutex<()>,
}

impl std::fmt::Debug for Cassette {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cassette")
            .field("path", &self.path)
            .field("upstream", &self.upstream)
            .finish_non_exhaustive()
    }
}

/// `<dir>/<upstream>.yaml`; upstream names with other characters than `[A-Za-z0-9._-]` (or
/// starting with `.`) are refused so a name can never point outside the directory.
pub fn cassette_path(dir: &Path, upstream: &str) -> Result<PathBuf, String> {
    let ok = !upstream.is_empty()
        && !upstream.starts_with('.')
        && upstream
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if !ok {
        return Err(format!(
            "upstream name `{upstream}` cannot be used as a cassette file name"
        ));
    }
    Ok(dir.join(format!("{upstream}.yaml")))
}

impl Cassette {
    /// Load `<dir>/<upstream>.yaml`; a missing file is an empty cassette (written on the first
    /// recording). Hand-edited garbage is a clear error with line and column.
    pub fn open(
        dir: &Path,
        upstream: &str,
        options: CassetteOptions,
        redactor: Arc<Redactor>,
    ) -> Result<Cassette, CassetteError> {
        let path = cassette_path(dir, upstream).map_err(|message| CassetteError::Invalid {
            path: dir.display().to_string(),
            message,
        })?;
        let shown = path.display().to_string();
        let file = match fs::read_to_string(&path) {
            Ok(text) => parse(&text, &shown)?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => CassetteFile {
                version: CASSETTE_VERSION,
                upstream: upstream.to_string(),
                interactions: Vec::new(),
            },
            Err(e) => {
                return Err(CassetteError::Io {
                    path: shown,
                    message: e.to_string(),
                })
            }
        };
        if file.upstream != upstream {
            return Err(CassetteError::Invalid {
                path: shown,
                message: format!(
                    "upstream: this cassette is for `{}`, not `{upstream}`",
                    file.upstream
                ),
            });
        }
        let cassette = Cassette {
            path,
            upstream: upstream.to_string(),
            options,
            redactor: RwLock::new(redactor),
            state: Mutex::new(State {
                file: CassetteFile::default(),
                entries: Vec::new(),
                calls: HashMap::new(),
            }),
            writer: Mutex::new(()),
        };
        let mut entries = Vec::with_capacity(file.interactions.len());
        for (i, interaction) in file.interactions.iter().enumerate() {
            let entry = cassette
                .entry(interaction)
                .map_err(|message| CassetteError::Invalid {
                    path: shown.clone(),
                    message: format!("interactions[{i}].{message}"),
                })?;
            entries.push(entry);
        }
        {
            let mut state = cassette.lock();
            state.file = file;
            state.entries = entries;
        }
        Ok(cassette)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn upstream(&self) -> &str {
        &self.upstream
    }

    /// Recordings held.
    pub fn len(&self) -> usize {
        self.lock().entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Swap the redaction rules (after secrets were reloaded).
    pub fn set_redactor(&self, redactor: Arc<Redactor>) {
        if let Ok(mut r) = self.redactor.write() {
            *r = redactor;
        }
    }

    fn redactor(&self) -> Arc<Redactor> {
        match self.redactor.read() {
            Ok(r) => Arc::clone(&r),
            Err(p) => Arc::clone(&p.into_inner()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        match self.state.lock() {
            Ok(s) => s,
            Err(p) => p.into_inner(),
        }
    }

    /// The recorded answer for `req` (the next one of its sequence), or what was missed.
    pub fn lookup(&self, req: &CassetteRequest) -> Result<ReplayResponse, Box<ReplayMiss>> {
        let key = self.key_of(req);
        let fingerprint = key.fingerprint();
        let mut state = self.lock();
        let matching: Vec<usize> = state
            .entries
            .iter()
            .enumerate()
            .filter(|(_, e)| e.fingerprint == fingerprint)
            .map(|(i, _)| i)
            .collect();
        if let Some(&last) = matching.last() {
            let n = state.calls.entry(fingerprint).or_insert(0);
            let idx = matching.get(*n).copied().unwrap_or(last);
            *n += 1;
            return Ok(state.entries[idx].response.clone());
        }
        let asked = self.summary_of(req);
        let nearest = state
            .entries
            .iter()
            .enumerate()
            .map(|(i, e)| (i, difference(&key, &e.key)))
            .min_by_key(|(_, (score, _))| *score)
            .map(|(index, (_, differences))| Nearest {
                index,
                request: state.entries[index].summary.clone(),
                differences,
            });
        Err(Box::new(ReplayMiss {
            upstream: self.upstream.clone(),
            asked,
            recorded: state.entries.len(),
            nearest,
        }))
    }

    /// Append a recording and rewrite the file atomically. Blocking file I/O: call it from
    /// `tokio::task::spawn_blocking`, or use [`Cassette::record_async`].
    pub fn record(
        &self,
        req: &CassetteRequest,
        status: u16,
        headers: &HeaderMap,
        body: &[u8],
    ) -> Result<(), CassetteError> {
        let r = self.redactor();
        let stored_headers = |h: &HeaderMap, response: bool| -> Vec<String> {
            h.iter()
                .filter(|(n, _)| !is_never_stored(n) && (!response || !is_framing(n)))
                .filter(|(n, _)| {
                    !(req.generated_idempotency_key && n.as_str() == "idempotency-key")
                })
                .map(|(n, v)| format!("{}: {}", n.as_str(), r.header_value(n, v.as_bytes())))
                .collect()
        };
        let (req_body, req_b64) = store_body(&r.scrub(&req.body));
        let (resp_body, resp_b64) = store_body(&r.scrub(body));
        let interaction = Interaction {
            request: RecordedRequest {
                method: req.method.to_string(),
                path: r.text(&req.path),
                query: req.query.as_deref().map(|q| r.text(q)),
                headers: stored_headers(&req.headers, false),
                body: req_body,
                body_base64: req_b64,
            },
            response: RecordedResponse {
                status,
                headers: stored_headers(headers, true),
                body: resp_body,
                body_base64: resp_b64,
            },
        };
        let shown = self.path.display().to_string();
        let entry = self
            .entry(&interaction)
            .map_err(|message| CassetteError::Invalid {
                path: shown.clone(),
                message,
            })?;
        // Writers take turns; lookups only wait for the in-memory update, never for the disk.
        let _writer = match self.writer.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        let mut file = self.lock().file.clone();
        file.interactions.push(interaction);
        let text = serde_yaml::to_string(&file).map_err(|e| CassetteError::Invalid {
            path: shown.clone(),
            message: e.to_string(),
        })?;
        write_atomic(&self.path, text.as_bytes()).map_err(|e| CassetteError::Io {
            path: shown,
            message: e.to_string(),
        })?;
        let mut state = self.lock();
        state.file = file;
        state.entries.push(entry);
        Ok(())
    }

    /// [`Cassette::record`] on the blocking pool.
    pub async fn record_async(
        self: &Arc<Self>,
        req: CassetteRequest,
        status: u16,
        headers: HeaderMap,
        body: Bytes,
    ) -> Result<(), CassetteError> {
        let this = Arc::clone(self);
        tokio::task::spawn_blocking(move || this.record(&req, status, &headers, &body))
            .await
            .map_err(|e| CassetteError::Io {
                path: self.path.display().to_string(),
                message: format!("recording task failed: {e}"),
            })?
    }

    fn entry(&self, i: &Interaction) -> Result<Entry, String> {
        let method = Method::from_bytes(i.request.method.as_bytes())
            .map_err(|_| "request.method: not an HTTP method".to_string())?;
        if !i.request.path.starts_with('/') {
            return Err("request.path: must start with `/`".into());
        }
        let req_headers = header_map(&i.request.headers).map_err(|m| format!("request.{m}"))?;
        let body = load_body(&i.request.body, &i.request.body_base64)
            .map_err(|m| format!("request.{m}"))?;
        let status = http::StatusCode::from_u16(i.response.status)
            .map_err(|_| "response.status: not an HTTP status (100-999)".to_string())?;
        let mut headers = header_map(&i.response.headers).map_err(|m| format!("response.{m}"))?;
        let framing: Vec<HeaderName> = headers.keys().filter(|n| is_framing(n)).cloned().collect();
        for name in framing {
            headers.remove(name);
        }
        let resp_body = load_body(&i.response.body, &i.response.body_base64)
            .map_err(|m| format!("response.{m}"))?;
        let req = CassetteRequest {
            method,
            path: i.request.path.clone(),
            query: i.request.query.clone(),
            headers: req_headers,
            body,
            generated_idempotency_key: false,
        };
        let key = self.key_of(&req);
        Ok(Entry {
            fingerprint: key.fingerprint(),
            key,
            summary: self.summary_of(&req),
            response: ReplayResponse {
                status,
                headers,
                body: resp_body,
            },
        })
    }

    fn summary_of(&self, req: &CassetteRequest) -> RequestSummary {
        let r = self.redactor();
        let body = (!req.body.is_empty()).then(|| {
            let scrubbed = r.scrub(&req.body);
            match std::str::from_utf8(&scrubbed) {
                Ok(text) => excerpt(text),
                Err(_) => format!("({} bytes of binary data)", req.body.len()),
            }
        });
        RequestSummary {
            method: req.method.to_string(),
            path: r.text(&req.path),
            query: req.query.as_deref().map(|q| r.text(q)),
            body,
        }
    }

    fn key_of(&self, req: &CassetteRequest) -> Key {
        let r = self.redactor();
        let ignore = &self.options.ignore_fields;
        let mut query: Vec<(String, String)> = req
            .query
            .as_deref()
            .map(|q| form_pairs(r.text(q).as_bytes(), ignore))
            .unwrap_or_default();
        query.sort();
        let mut headers: Vec<(String, String)> = Vec::new();
        for name in &self.options.match_headers {
            if req.generated_idempotency_key && name.as_str() == "idempotency-key" {
                continue;
            }
            for value in req.headers.get_all(name) {
                headers.push((
                    name.as_str().to_string(),
                    r.header_value(name, value.as_bytes()),
                ));
            }
        }
        headers.sort();
        let body = r.scrub(&req.body);
        let ct = req
            .headers
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_ascii_lowercase();
        let body = if body.is_empty() {
            NormBody::Empty
        } else if let Some(v) = serde_json::from_slice::<Value>(&body)
            .ok()
            .filter(|_| ct.contains("json") || looks_like_json(&body))
        {
            NormBody::Json(normalize_json(v, None, ignore))
        } else if ct.starts_with("application/x-www-form-urlencoded") {
            let mut pairs = form_pairs(&body, ignore);
            pairs.sort();
            NormBody::Form(pairs)
        } else {
            NormBody::Bytes(body)
        };
        Key {
            method: req.method.to_string(),
            path: r.text(&req.path),
            query,
            headers,
            body,
        }
    }
}

/// Default cap of a response body recorded through [`Cassette::record_body`].
pub const DEFAULT_MAX_RECORD_BODY_BYTES: usize = 16 * 1024 * 1024;

impl Cassette {
    /// Wrap the live response body going back to the application: its bytes stream through
    /// unchanged while a copy is kept, and when it ends the interaction is recorded on the
    /// blocking pool. A body larger than `limit`, or one that fails, is not recorded (a
    /// warning is logged, without any value).
    pub fn record_body<B>(
        self: &Arc<Self>,
        request: CassetteRequest,
        status: u16,
        headers: HeaderMap,
        body: B,
        limit: usize,
    ) -> RecordBody<B> {
        RecordBody {
            inner: body,
            state: Some(RecordState {
                cassette: Arc::clone(self),
                request,
                status,
                headers,
                buf: Vec::new(),
                limit,
            }),
        }
    }
}

struct RecordState {
    cassette: Arc<Cassette>,
    request: CassetteRequest,
    status: u16,
    headers: HeaderMap,
    buf: Vec<u8>,
    limit: usize,
}

impl RecordState {
    fn finish(self) {
        let RecordState {
            cassette,
            request,
            status,
            headers,
            buf,
            ..
        } = self;
        let upstream = cassette.upstream.clone();
        let write = move || {
            if let Err(e) = cassette.record(&request, status, &headers, &buf) {
                tracing::warn!(upstream = %upstream, error = %e, "cassette: recording failed");
            }
        };
        match tokio::runtime::Handle::try_current() {
            Ok(handle) => {
                handle.spawn_blocking(write);
            }
            Err(_) => write(),
        }
    }
}

pin_project_lite::pin_project! {
    /// A response body that is recorded into a cassette when it ends
    /// ([`Cassette::record_body`]).
    pub struct RecordBody<B> {
        #[pin]
        inner: B,
        state: Option<RecordState>,
    }
}

impl<B> http_body::Body for RecordBody<B>
where
    B: http_body::Body,
    B::Data: AsRef<[u8]>,
{
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<B::Data>, B::Error>>> {
        use std::task::Poll;
        let mut this = self.project();
        let polled = this.inner.as_mut().poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let (Some(data), Some(state)) = (frame.data_ref(), this.state.as_mut()) {
                    let chunk = data.as_ref();
                    if state.buf.len() + chunk.len() > state.limit {
                        tracing::warn!(
                            upstream = %state.cassette.upstream,
                            limit = state.limit,
                            "cassette: response body too large to record"
                        );
                        *this.state = None;
                    } else {
                        state.buf.extend_from_slice(chunk);
                    }
                }
            }
            Poll::Ready(Some(Err(_))) => {
                if this.state.take().is_some() {
                    tracing::warn!("cassette: response body failed; not recorded");
                }
            }
            Poll::Ready(None) => {
                if let Some(state) = this.state.take() {
                    state.finish();
                }
            }
            Poll::Pending => {}
        }
        // hyper stops polling a body that says it has ended: record it then.
        if matches!(&polled, Poll::Ready(Some(Ok(_)))) && this.inner.is_end_stream() {
            if let Some(state) = this.state.take() {
                state.finish();
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

fn parse(text: &str, shown: &str) -> Result<CassetteFile, CassetteError> {
    let file: CassetteFile = serde_yaml::from_str(text).map_err(|e| {
        let (line, column) = e.location().map_or((0, 0), |l| (l.line(), l.column()));
        CassetteError::Parse {
            path: shown.to_string(),
            line,
            column,
            message: e.to_string(),
        }
    })?;
    if file.version != CASSETTE_VERSION {
        return Err(CassetteError::Invalid {
            path: shown.to_string(),
            message: format!(
                "version: {} is not supported (expected {CASSETTE_VERSION})",
                file.version
            ),
        });
    }
    Ok(file)
}

/// Write `bytes` to `path` so that a reader sees the old file or the new one, never a part.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    fs::create_dir_all(&dir)?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "cassette".into());
    let tmp = dir.join(format!(
        ".{name}.tmp-{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    let result = (|| {
        let mut f = fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        drop(f);
        fs::rename(&tmp, path)?;
        // Make the rename durable; not every platform can open a directory.
        if let Ok(d) = fs::File::open(&dir) {
            let _ = d.sync_all();
        }
        Ok(())
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// Headers that describe the framing of one transfer, not the message.
fn is_framing(name: &HeaderName) -> bool {
    matches!(
        name.as_str(),
        "content-length"
            | "transfer-encoding"
            | "connection"
            | "keep-alive"
            | "proxy-connection"
            | "upgrade"
            | "trailer"
    )
}

fn header_map(lines: &[String]) -> Result<HeaderMap, String> {
    let mut map = HeaderMap::new();
    for (i, line) in lines.iter().enumerate() {
        let (name, value) = line
            .split_once(':')
            .ok_or_else(|| format!("headers[{i}]: expected `name: value`"))?;
        let n = HeaderName::from_bytes(name.trim().as_bytes())
            .map_err(|_| format!("headers[{i}]: not a valid header name"))?;
        let v = HeaderValue::from_str(value.trim())
            .map_err(|_| format!("headers[{i}]: the value is not a valid header value"))?;
        map.append(n, v);
    }
    Ok(map)
}

fn store_body(bytes: &[u8]) -> (Option<String>, Option<String>) {
    if bytes.is_empty() {
        return (None, None);
    }
    match std::str::from_utf8(bytes) {
        Ok(text) => (Some(text.to_string()), None),
        Err(_) => (None, Some(super::base64_encode(bytes))),
    }
}

fn load_body(text: &Option<String>, b64: &Option<String>) -> Result<Bytes, String> {
    match (text, b64) {
        (Some(_), Some(_)) => Err("body: write `body` or `body_base64`, not both".into()),
        (Some(t), None) => Ok(Bytes::from(t.clone().into_bytes())),
        (None, Some(b)) => base64::engine::general_purpose::STANDARD
            .decode(b.trim())
            .map(Bytes::from)
            .map_err(|_| "body_base64: not valid base64".to_string()),
        (None, None) => Ok(Bytes::new()),
    }
}

fn excerpt(text: &str) -> String {
    if text.len() <= EXCERPT {
        return text.to_string();
    }
    let mut end = EXCERPT;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
}

fn looks_like_json(body: &[u8]) -> bool {
    matches!(
        body.iter().find(|b| !b.is_ascii_whitespace()),
        Some(b'{') | Some(b'[')
    )
}

const IGNORED: &str = "<ignored>";
const TIMESTAMP: &str = "<timestamp>";

/// `2026-12-04T02:10`, `2026-12-04 02:10:00Z` …: a date, a `T` or space, hours and minutes.
pub fn looks_like_datetime(s: &str) -> bool {
    let b = s.as_bytes();
    if b.len() < 16 {
        return false;
    }
    let digits = |r: std::ops::Range<usize>| b[r].iter().all(u8::is_ascii_digit);
    digits(0..4)
        && b[4] == b'-'
        && digits(5..7)
        && b[7] == b'-'
        && digits(8..10)
        && matches!(b[10], b'T' | b't' | b' ')
        && digits(11..13)
        && b[13] == b':'
        && digits(14..16)
}

/// A key under which a Unix-time number is a timestamp.
fn time_key(key: &str) -> bool {
    let lower = key.to_ascii_lowercase();
    matches!(
        lower.as_str(),
        "timestamp" | "ts" | "time" | "date" | "nonce" | "created" | "updated"
    ) || lower.ends_with("_at")
        || lower.ends_with("_time")
        || lower.ends_with("_ts")
        || lower.ends_with("timestamp")
        || key.ends_with("At")
}

fn unix_range(n: f64) -> bool {
    (1e9..1e10).contains(&n) || (1e12..1e13).contains(&n)
}

/// The comparable form of one scalar under `key`.
fn normalize_scalar(key: Option<&str>, value: &str, ignore: &[String]) -> Option<&'static str> {
    let key = key.map(|k| k.rsplit('[').next().unwrap_or(k).trim_end_matches(']'));
    if key.is_some_and(|k| ignore.iter().any(|f| f == k)) {
        return Some(IGNORED);
    }
    if looks_like_datetime(value) {
        return Some(TIMESTAMP);
    }
    if key.is_some_and(time_key)
        && !value.is_empty()
        && value.bytes().all(|b| b.is_ascii_digit() || b == b'.')
        && value.parse::<f64>().is_ok_and(unix_range)
    {
        return Some(TIMESTAMP);
    }
    None
}

fn form_pairs(input: &[u8], ignore: &[String]) -> Vec<(String, String)> {
    form_urlencoded::parse(input)
        .map(|(k, v)| {
            let v = match normalize_scalar(Some(&k), &v, ignore) {
                Some(p) => p.to_string(),
                None => v.into_owned(),
            };
            (k.into_owned(), v)
        })
        .collect()
}

/// Sort object keys (for a stable fingerprint) and replace dynamic values.
fn normalize_json(v: Value, key: Option<&str>, ignore: &[String]) -> Value {
    match v {
        Value::Object(map) => {
            let mut entries: Vec<(String, Value)> = map.into_iter().collect();
            entries.sort_by(|a, b| a.0.cmp(&b.0));
            Value::Object(
                entries
                    .into_iter()
                    .map(|(k, v)| {
                        let nv = normalize_json(v, Some(&k), ignore);
                        (k, nv)
                    })
                    .collect(),
            )
        }
        Value::Array(items) => Value::Array(
            items
                .into_iter()
                .map(|v| normalize_json(v, key, ignore))
                .collect(),
        ),
        Value::String(s) => match normalize_scalar(key, &s, ignore) {
            Some(p) => Value::String(p.into()),
            None => Value::String(s),
        },
        Value::Number(n) => match normalize_scalar(key, &n.to_string(), ignore) {
            Some(p) => Value::String(p.into()),
            None => Value::Number(n),
        },
        other => match key.filter(|k| ignore.iter().any(|f| f == k)) {
            Some(_) => Value::String(IGNORED.into()),
            None => other,
        },
    }
}

fn short(v: &str) -> String {
    let mut s: String = v.chars().take(60).collect();
    if v.chars().count() > 60 {
        s.push('…');
    }
    s
}

/// `(score, differences)` between a request and a recording; lower is nearer.
fn difference(asked: &Key, rec: &Key) -> (u64, Vec<String>) {
    let mut score = 0;
    let mut out = Vec::new();
    if asked.method != rec.method {
        score += 1000;
        out.push(format!(
            "method: asked {}, recorded {}",
            asked.method, rec.method
        ));
    }
    if asked.path != rec.path {
        let common = asked
            .path
            .split('/')
            .zip(rec.path.split('/'))
            .take_while(|(a, b)| a == b)
            .count();
        let segments = asked
            .path
            .split('/')
            .count()
            .max(rec.path.split('/').count());
        score += 100 + 10 * (segments - common.min(segments)) as u64;
        out.push(format!(
            "path: asked {}, recorded {}",
            short(&asked.path),
            short(&rec.path)
        ));
    }
    pairs_diff("query", &asked.query, &rec.query, &mut score, &mut out);
    pairs_diff("header", &asked.headers, &rec.headers, &mut score, &mut out);
    match (&asked.body, &rec.body) {
        (a, b) if a == b => {}
        (NormBody::Json(a), NormBody::Json(b)) => {
            let before = out.len();
            json_diff("$", a, b, &mut out);
            score += 5 * (out.len() - before) as u64;
        }
        (NormBody::Form(a), NormBody::Form(b)) => {
            pairs_diff("form field", a, b, &mut score, &mut out)
        }
        (NormBody::Empty, _) => {
            score += 20;
            out.push("body: asked none, recorded one".into());
        }
        (_, NormBody::Empty) => {
            score += 20;
            out.push("body: asked one, recorded none".into());
        }
        _ => {
            score += 20;
            out.push("body: differs".into());
        }
    }
    out.truncate(10);
    (score, out)
}

fn pairs_diff(
    what: &str,
    asked: &[(String, String)],
    rec: &[(String, String)],
    score: &mut u64,
    out: &mut Vec<String>,
) {
    let get = |list: &[(String, String)], k: &str| -> Vec<String> {
        list.iter()
            .filter(|(n, _)| n == k)
            .map(|(_, v)| v.clone())
            .collect()
    };
    let mut names: Vec<&String> = asked.iter().chain(rec).map(|(n, _)| n).collect();
    names.sort();
    names.dedup();
    for name in names {
        let (a, b) = (get(asked, name), get(rec, name));
        if a == b {
            continue;
        }
        *score += 5;
        let show = |v: &[String]| -> String {
            if v.is_empty() {
                "none".into()
            } else {
                v.iter()
                    .map(|s| format!("{:?}", short(s)))
                    .collect::<Vec<_>>()
                    .join(", ")
            }
        };
        out.push(format!(
            "{what} `{name}`: asked {}, recorded {}",
            show(&a),
            show(&b)
        ));
    }
}

fn json_diff(path: &str, a: &Value, b: &Value, out: &mut Vec<String>) {
    if out.len() >= 10 || a == b {
        return;
    }
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            for (k, va) in x {
                let p = format!("{path}.{k}");
                match y.get(k) {
                    Some(vb) => json_diff(&p, va, vb, out),
                    None => out.push(format!(
                        "body {p}: asked {}, recorded none",
                        short(&va.to_string())
                    )),
                }
            }
            for (k, vb) in y {
                if !x.contains_key(k) {
                    out.push(format!(
                        "body {path}.{k}: asked none, recorded {}",
                        short(&vb.to_string())
                    ));
                }
            }
        }
        (Value::Array(x), Value::Array(y)) if x.len() == y.len() => {
            for (i, (va, vb)) in x.iter().zip(y).enumerate() {
                json_diff(&format!("{path}[{i}]"), va, vb, out);
            }
        }
        _ => out.push(format!(
            "body {path}: asked {}, recorded {}",
            short(&a.to_string()),
            short(&b.to_string())
        )),
    }
}

#[cfg(test)]
mod tests;
