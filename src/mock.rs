//! Mock upstreams behind `outpost mock` and `outpost demo`: small but real imitations of the
//! Stripe and SendGrid APIs, for demos, Outpost's own tests and users' integration tests.
//!
//! Each mock serves one [`Profile`] over HTTP/1.1 and h2c (prior knowledge) on a listener the
//! caller binds, keeps everything it stores in bounded in-memory maps (at most 10 000 objects and
//! a few MiB per kind, oldest evicted first) and never echoes an API key.
//!
//! * **Stripe** (`/v1/…`): bearer or basic auth with an `sk_test_` key; form-encoded bodies
//!   (`metadata[key]=value`); customers (create, retrieve, update, list, delete) and charges
//!   (create, retrieve, list; source `tok_chargeDeclined` gives a 402 card error); idempotent
//!   POSTs replayed with `Idempotent-Replayed: true`; `Request-Id` on every answer and
//!   `Stripe-Version` echoed; errors in Stripe's `{"error":{…}}` shape.
//! * **SendGrid** (`/v3/…`): bearer auth with an `SG.` key; `POST /v3/mail/send` validated like
//!   the real API (202, empty body, `X-Message-Id`), `GET /v3/user/profile`; errors in
//!   SendGrid's `{"errors":[…]}` shape.
//! * Both: `GET /healthz` answers `200 ok` without auth, latency or faults. Request bodies are
//!   limited to 4 MiB (413 beyond).
//!
//! # Fault injection
//!
//! Every request (except `/healthz`) is processed in this order: `--latency` sleep, the
//! `X-Mock-Fault` header, the `--fail-rate` coin toss (answering `--fail-status`), auth, the API.
//! Fault answers carry the provider's error shape and are never stored as idempotent results,
//! so a retried POST succeeds once the fault stops.
//!
//! The header holds `;`-separated `name=value` directives, in any order, spaces allowed around
//! `;` and `=`, each at most once, and at least one of `status` or `delay`:
//!
//! | directive | meaning |
//! |---|---|
//! | `status=CODE` | answer CODE (400–599) instead of serving the request |
//! | `retry_after=SECS` | with `status`: add `Retry-After: SECS` (SendGrid also gets `X-RateLimit-Reset`) |
//! | `delay=DURATION` | sleep first (`300ms`, `2s`, `1m`; at most `10m`), then fault or serve |
//! | `times=N` | only the first N requests carrying this fault's key misbehave; later ones are served |
//! | `key=K` | counter key for `times` (1–200 visible ASCII characters); without it, identical header texts share one counter |
//!
//! ```text
//! X-Mock-Fault: status=503
//! X-Mock-Fault: status=429; retry_after=2
//! X-Mock-Fault: delay=300ms
//! X-Mock-Fault: status=503; times=2; key=abc     -> 503, 503, then normal answers
//! ```
//!
//! Counters are kept for the 10 000 most recent keys. A malformed header is answered `400`
//! with a provider-shaped JSON error that says what is wrong (without repeating the header).

mod fault;
mod form;
mod sendgrid;
mod store;
mod stripe;

use std::convert::Infallible;
use std::error::Error as StdError;
use std::fmt;
use std::future::Future;
use std::io::{self, Write};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper::body::Incoming;
use hyper::header::{HeaderMap, HeaderName, HeaderValue, AUTHORIZATION, CONTENT_TYPE};
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use rand::distributions::Alphanumeric;
use rand::Rng;
use subtle::ConstantTimeEq;
use tokio::net::TcpListener;

/// Largest request body read, in bytes; larger bodies are answered 413.
const MAX_BODY_BYTES: usize = 4 * 1024 * 1024;
/// A client must send its request head within this time.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// After shutdown, how long open connections may take to finish their request.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(2);
/// Pause after a failed `accept` (e.g. out of file descriptors) before trying again.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

const REQUEST_ID: HeaderName = HeaderName::from_static("request-id");
const STRIPE_VERSION: HeaderName = HeaderName::from_static("stripe-version");
const X_RATELIMIT_RESET: HeaderName = HeaderName::from_static("x-ratelimit-reset");

/// Which provider a mock imitates.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Profile {
    /// Stripe's `/v1` API: customers, charges, idempotent POSTs.
    Stripe,
    /// SendGrid's `/v3` API: mail send, user profile.
    Sendgrid,
}

impl Profile {
    fn name(self) -> &'static str {
        match self {
            Profile::Stripe => "stripe",
            Profile::Sendgrid => "sendgrid",
        }
    }
}

impl fmt::Display for Profile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// CLI arguments of `outpost mock`.
#[derive(clap::Args, Clone)]
pub struct MockArgs {
    /// Address to listen on.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:12111")]
    pub listen: SocketAddr,
    /// Provider to imitate.
    #[arg(long, value_enum, default_value_t = Profile::Stripe)]
    pub profile: Profile,
    /// The only API key accepted [default: any key with the provider's test prefix,
    /// `sk_test_` for Stripe, `SG.` for SendGrid].
    #[arg(
        long,
        value_name = "KEY",
        env = "OUTPOST_MOCK_API_KEY",
        hide_env_values = true
    )]
    pub api_key: Option<String>,
    /// Delay added before every response, e.g. `50ms` or `2s`.
    #[arg(long, value_name = "DURATION", default_value = "0ms", value_parser = parse_duration)]
    pub latency: Duration,
    /// Share of requests, 0 to 1, answered with --fail-status instead of being served.
    #[arg(long, value_name = "FLOAT", default_value_t = 0.0, value_parser = parse_fail_rate)]
    pub fail_rate: f64,
    /// Status of the random faults (400-599).
    #[arg(
        long,
        value_name = "CODE",
        default_value_t = 503,
        value_parser = clap::value_parser!(u16).range(400..=599)
    )]
    pub fail_status: u16,
}

impl fmt::Debug for MockArgs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MockArgs")
            .field("listen", &self.listen)
            .field("profile", &self.profile)
            .field("api_key", &self.api_key.as_ref().map(|_| "[redacted]"))
            .field("latency", &self.latency)
            .field("fail_rate", &self.fail_rate)
            .field("fail_status", &self.fail_status)
            .finish()
    }
}

/// How a mock behaves; [`serve`] rejects a `fail_rate` outside 0..=1 or a `fail_status`
/// outside 400..=599.
#[derive(Clone)]
pub struct MockOptions {
    /// Provider to imitate.
    pub profile: Profile,
    /// The only key accepted; `None` accepts any key with the provider's test prefix.
    pub api_key: Option<String>,
    /// Added before every response except `/healthz`.
    pub latency: Duration,
    /// Share of requests (0 to 1) answered with `fail_status`.
    pub fail_rate: f64,
    /// Status of the random faults.
    pub fail_status: u16,
}

impl MockOptions {
    /// Any test-prefixed key, no latency, no random faults.
    pub fn new(profile: Profile) -> Self {
        Self {
            profile,
            api_key: None,
            latency: Duration::ZERO,
            fail_rate: 0.0,
            fail_status: 503,
        }
    }

    fn fail_status(&self) -> io::Result<StatusCode> {
        if !(0.0..=1.0).contains(&self.fail_rate) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "mock fail_rate must be between 0 and 1",
            ));
        }
        (400..=599)
            .contains(&self.fail_status)
            .then(|| StatusCode::from_u16(self.fail_status).ok())
            .flatten()
            .ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "mock fail_status must be an HTTP status from 400 to 599",
                )
            })
    }
}

impl fmt::Debug for MockOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MockOptions")
            .field("profile", &self.profile)
            .field("api_key", &self.api_key.as_ref().map(|_| "[redacted]"))
            .field("latency", &self.latency)
            .field("fail_rate", &self.fail_rate)
            .field("fail_status", &self.fail_status)
            .finish()
    }
}

impl From<MockArgs> for MockOptions {
    fn from(args: MockArgs) -> Self {
        Self {
            profile: args.profile,
            api_key: args.api_key,
            latency: args.latency,
            fail_rate: args.fail_rate,
            fail_status: args.fail_status,
        }
    }
}

/// Serve the mock on `listener` until `shutdown` resolves. Returns once the listener is closed
/// and open connections have finished their requests (or after a short drain timeout).
pub async fn serve(
    listener: TcpListener,
    opts: MockOptions,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    let mock = Arc::new(Mock::new(opts)?);
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT);
    let graceful = GracefulShutdown::new();
    let mut shutdown = std::pin::pin!(shutdown);

    loop {
        let stream = tokio::select! {
            biased;
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(error) => {
                    tracing::warn!(%error, "mock: accept failed");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                    continue;
                }
            },
        };
        // Best effort: only latency suffers without it.
        let _ = stream.set_nodelay(true);
        let mock = Arc::clone(&mock);
        let service = service_fn(move |req| {
            let mock = Arc::clone(&mock);
            async move { Ok::<_, Infallible>(mock.handle(req).await) }
        });
        let conn = builder
            .serve_connection(TokioIo::new(stream), service)
            .into_owned();
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            if let Err(error) = conn.await {
                tracing::debug!(%error, "mock: connection ended with an error");
            }
        });
    }

    drop(listener);
    if tokio::time::timeout(DRAIN_TIMEOUT, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::debug!("mock: connections still open after the drain timeout");
    }
    Ok(())
}

/// `outpost mock`: bind, print the listening line, serve until ctrl-c (or SIGTERM).
pub async fn run(args: MockArgs) -> Result<(), Box<dyn StdError + Send + Sync>> {
    let listen = args.listen;
    let opts = MockOptions::from(args);
    opts.fail_status()?;
    let profile = opts.profile;
    let listener = TcpListener::bind(listen).await?;
    let addr = listener.local_addr()?;
    {
        // A closed stdout (`outpost mock | head -1`) must not stop the mock.
        let mut out = io::stdout().lock();
        let _ = writeln!(out, "outpost mock ({profile}) listening on http://{addr}");
        let _ = out.flush();
    }
    serve(listener, opts, shutdown_signal()).await?;
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                term.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = term => {}
    }
}

/// Shared state of one running mock.
struct Mock {
    opts: MockOptions,
    fail_status: StatusCode,
    faults: fault::Counters,
    stripe: stripe::State,
}

impl Mock {
    fn new(opts: MockOptions) -> io::Result<Self> {
        Ok(Self {
            fail_status: opts.fail_status()?,
            opts,
            faults: fault::Counters::new(),
            stripe: stripe::State::new(),
        })
    }

    async fn handle(&self, req: Request<Incoming>) -> Response<Full<Bytes>> {
        if req.uri().path() == "/healthz" {
            return Reply::text(StatusCode::OK, "ok").into_response();
        }
        let request_id = random_id("req_", 14);
        let stripe_version = req.headers().get(STRIPE_VERSION).cloned();
        let mut reply = self.answer(req, &request_id).await;
        if self.opts.profile == Profile::Stripe {
            if let Ok(value) = HeaderValue::from_str(&request_id) {
                reply.set_header(REQUEST_ID, value);
            }
            if let Some(version) = stripe_version {
                reply.set_header(STRIPE_VERSION, version);
            }
        }
        reply.into_response()
    }

    async fn answer(&self, req: Request<Incoming>, request_id: &str) -> Reply {
        if !self.opts.latency.is_zero() {
            tokio::time::sleep(self.opts.latency).await;
        }
        let fault = match fault::from_headers(req.headers()) {
            Ok(fault) => fault,
            Err(error) => return self.error(StatusCode::BAD_REQUEST, &error.to_string()),
        };
        if let Some(fault) = fault.filter(|f| self.faults.should_fire(f)) {
            if let Some(delay) = fault.delay {
                tokio::time::sleep(delay).await;
            }
            if let Some(status) = fault.status {
                return self.fault(status, fault.retry_after);
            }
        }
        if self.opts.fail_rate > 0.0 && rand::thread_rng().gen_bool(self.opts.fail_rate) {
            return self.fault(self.fail_status, None);
        }

        let (parts, body) = req.into_parts();
        let api_key = self.opts.api_key.as_deref();
        let key = match self.opts.profile {
            Profile::Stripe => stripe::authenticate(api_key, &parts.headers),
            Profile::Sendgrid => sendgrid::authenticate(api_key, &parts.headers),
        };
        let key = match key {
            Ok(key) => key,
            Err(reply) => return reply,
        };
        let body = match Limited::new(body, MAX_BODY_BYTES).collect().await {
            Ok(collected) => collected.to_bytes(),
            Err(error) if error.is::<LengthLimitError>() => {
                return self.error(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "The request body is larger than 4 MiB.",
                )
            }
            Err(_) => {
                return self.error(
                    StatusCode::BAD_REQUEST,
                    "The request body could not be read.",
                )
            }
        };
        match self.opts.profile {
            Profile::Stripe => self.stripe.handle(&parts, &key, &body, request_id),
            Profile::Sendgrid => sendgrid::handle(&parts, &body),
        }
    }

    /// A provider-shaped error answer.
    fn error(&self, status: StatusCode, message: &str) -> Reply {
        match self.opts.profile {
            Profile::Stripe => stripe::error_for_status(status, message),
            Profile::Sendgrid => sendgrid::error(status, message),
        }
    }

    /// An injected fault: the provider's error for `status`, with `Retry-After` if asked.
    fn fault(&self, status: StatusCode, retry_after: Option<u32>) -> Reply {
        let message = match status {
            StatusCode::TOO_MANY_REQUESTS => match self.opts.profile {
                Profile::Stripe => "Too many requests hit the API too quickly. We recommend an exponential backoff of your requests.",
                Profile::Sendgrid => "too many requests",
            },
            s if s.is_server_error() => match self.opts.profile {
                Profile::Stripe => "An error occurred with our connection to Stripe. (mock fault)",
                Profile::Sendgrid => "internal error (mock fault)",
            },
            _ => "The request was rejected by an injected mock fault.",
        };
        let mut reply = self.error(status, message);
        if let Some(secs) = retry_after {
            reply.set_header(hyper::header::RETRY_AFTER, HeaderValue::from(secs));
            if self.opts.profile == Profile::Sendgrid {
                let reset = unix_now().saturating_add(i64::from(secs));
                reply.set_header(X_RATELIMIT_RESET, HeaderValue::from(reset));
            }
        }
        reply
    }
}

/// A buffered answer; the profile modules build these, [`Mock::handle`] sends them.
struct Reply {
    status: StatusCode,
    // A short list rather than a `HeaderMap` keeps `Result<_, Reply>` small.
    headers: Vec<(HeaderName, HeaderValue)>,
    body: Bytes,
}

impl Reply {
    fn empty(status: StatusCode) -> Self {
        Self {
            status,
            headers: Vec::new(),
            body: Bytes::new(),
        }
    }

    fn text(status: StatusCode, text: &'static str) -> Self {
        Self::empty(status)
            .with_body(Bytes::from_static(text.as_bytes()))
            .with_header(CONTENT_TYPE, HeaderValue::from_static("text/plain"))
    }

    /// Compact JSON (SendGrid).
    fn json(status: StatusCode, value: &serde_json::Value) -> Self {
        Self::json_bytes(status, serde_json::to_vec(value).unwrap_or_default())
    }

    /// Indented JSON, as Stripe sends it.
    fn pretty_json(status: StatusCode, value: &serde_json::Value) -> Self {
        Self::json_bytes(status, serde_json::to_vec_pretty(value).unwrap_or_default())
    }

    fn json_bytes(status: StatusCode, body: impl Into<Bytes>) -> Self {
        Self::empty(status)
            .with_body(body.into())
            .with_header(CONTENT_TYPE, HeaderValue::from_static("application/json"))
    }

    fn with_body(mut self, body: Bytes) -> Self {
        self.body = body;
        self
    }

    fn with_header(mut self, name: HeaderName, value: HeaderValue) -> Self {
        self.set_header(name, value);
        self
    }

    /// Set `name` to `value`, replacing any earlier value.
    fn set_header(&mut self, name: HeaderName, value: HeaderValue) {
        self.headers.retain(|(n, _)| *n != name);
        self.headers.push((name, value));
    }

    #[cfg(test)]
    fn header(&self, name: &HeaderName) -> Option<&HeaderValue> {
        self.headers
            .iter()
            .find_map(|(n, v)| (n == name).then_some(v))
    }

    fn into_response(self) -> Response<Full<Bytes>> {
        let mut response = Response::new(Full::new(self.body));
        *response.status_mut() = self.status;
        let headers = response.headers_mut();
        for (name, value) in self.headers {
            headers.insert(name, value);
        }
        response
    }
}

/// Parse `250ms`, `2s`, `1m` or `0` (whole numbers only).
fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    if text == "0" {
        return Ok(Duration::ZERO);
    }
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (digits, unit) = text.split_at(split);
    let invalid = || format!("invalid duration `{text}` (expected e.g. 250ms, 2s, 1m)");
    if digits.is_empty() {
        return Err(invalid());
    }
    let n: u64 = digits.parse().map_err(|_| invalid())?;
    let millis = match unit {
        "ms" => Some(n),
        "s" => n.checked_mul(1_000),
        "m" => n.checked_mul(60_000),
        _ => None,
    };
    millis.map(Duration::from_millis).ok_or_else(invalid)
}

fn parse_fail_rate(text: &str) -> Result<f64, String> {
    match text.trim().parse::<f64>() {
        Ok(rate) if (0.0..=1.0).contains(&rate) => Ok(rate),
        _ => Err(format!("invalid fail rate `{text}` (expected 0 to 1)")),
    }
}

/// `prefix` followed by `len` random letters and digits, like `cus_NffrFeUfNV2Hib`.
fn random_id(prefix: &str, len: usize) -> String {
    let mut id = String::with_capacity(prefix.len() + len);
    id.push_str(prefix);
    id.extend(
        rand::thread_rng()
            .sample_iter(&Alphanumeric)
            .take(len)
            .map(char::from),
    );
    id
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// A plausible address: one `@`, something before it, a dotted domain, no spaces.
fn looks_like_email(text: &str) -> bool {
    let Some((local, domain)) = text.split_once('@') else {
        return false;
    };
    text.len() <= 254
        && !local.is_empty()
        && !domain.contains('@')
        && domain.contains('.')
        && !domain.starts_with('.')
        && !domain.ends_with('.')
        && !text.chars().any(|c| c.is_whitespace() || c.is_control())
}

/// The token of an `Authorization: Bearer <token>` header (scheme case-insensitive).
fn bearer_token(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.trim().split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

/// Whether `presented` is accepted: exactly `expected` when configured (compared in constant
/// time), else any visible-ASCII key with `test_prefix` and something after it.
fn key_accepted(expected: Option<&str>, presented: &str, test_prefix: &str) -> bool {
    match expected {
        Some(expected) => expected.as_bytes().ct_eq(presented.as_bytes()).into(),
        None => {
            presented.len() > test_prefix.len()
                && presented.starts_with(test_prefix)
                && presented.bytes().all(|b| b.is_ascii_graphic())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(clap::Parser)]
    struct Cli {
        #[command(flatten)]
        mock: MockArgs,
    }

    #[test]
    fn cli_defaults_and_flags() {
        use clap::{CommandFactory, Parser};
        Cli::command().debug_assert();
        let defaults = Cli::try_parse_from(["mock"]).expect("defaults parse").mock;
        assert_eq!(defaults.listen, SocketAddr::from(([127, 0, 0, 1], 12111)));
        assert_eq!(defaults.profile, Profile::Stripe);
        assert_eq!(defaults.latency, Duration::ZERO);
        assert_eq!(defaults.fail_status, 503);
        let args = Cli::try_parse_from([
            "mock",
            "--listen",
            "0.0.0.0:9000",
            "--profile",
            "sendgrid",
            "--api-key",
            "SG.k",
            "--latency",
            "50ms",
            "--fail-rate",
            "0.5",
            "--fail-status",
            "429",
        ])
        .expect("flags parse")
        .mock;
        assert_eq!(args.profile, Profile::Sendgrid);
        assert_eq!(args.api_key.as_deref(), Some("SG.k"));
        assert_eq!(args.latency, Duration::from_millis(50));
        assert_eq!(args.fail_rate, 0.5);
        assert_eq!(args.fail_status, 429);
        for bad in [
            &["mock", "--fail-rate", "2"][..],
            &["mock", "--fail-status", "200"],
            &["mock", "--latency", "fast"],
            &["mock", "--profile", "twilio"],
        ] {
            assert!(Cli::try_parse_from(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("2s"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_duration("1m"), Ok(Duration::from_secs(60)));
        assert_eq!(parse_duration("0"), Ok(Duration::ZERO));
        for bad in [
            "",
            "ms",
            "2",
            "2h",
            "1.5s",
            "-1s",
            "99999999999999999999s",
            "2 s",
        ] {
            assert!(parse_duration(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn fail_rates() {
        assert_eq!(parse_fail_rate("0.25"), Ok(0.25));
        for bad in ["-0.1", "1.5", "NaN", "x"] {
            assert!(parse_fail_rate(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn options_are_validated() {
        let mut opts = MockOptions::new(Profile::Stripe);
        assert_eq!(
            opts.fail_status().ok(),
            Some(StatusCode::SERVICE_UNAVAILABLE)
        );
        opts.fail_rate = f64::NAN;
        assert!(opts.fail_status().is_err());
        opts.fail_rate = 0.5;
        opts.fail_status = 200;
        assert!(opts.fail_status().is_err());
    }

    #[test]
    fn debug_redacts_the_key() {
        let mut opts = MockOptions::new(Profile::Sendgrid);
        opts.api_key = Some("SG.very-secret".to_string());
        assert!(!format!("{opts:?}").contains("very-secret"));
    }

    #[test]
    fn emails_and_keys() {
        assert!(looks_like_email("jenny@example.com"));
        for bad in [
            "",
            "jenny",
            "@example.com",
            "a@b",
            "a@b@c.com",
            "a b@c.com",
            "a@.com",
        ] {
            assert!(!looks_like_email(bad), "{bad:?}");
        }
        assert!(key_accepted(None, "sk_test_123", "sk_test_"));
        assert!(!key_accepted(None, "sk_test_", "sk_test_"));
        assert!(!key_accepted(None, "sk_live_123", "sk_test_"));
        assert!(key_accepted(Some("exact"), "exact", "sk_test_"));
        assert!(!key_accepted(Some("exact"), "sk_test_1", "sk_test_"));
    }

    #[test]
    fn random_ids_have_prefix_and_length() {
        let id = random_id("cus_", 14);
        assert!(id.starts_with("cus_"));
        assert_eq!(id.len(), 18);
        assert!(id[4..].bytes().all(|b| b.is_ascii_alphanumeric()));
    }
}
