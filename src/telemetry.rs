//! Logging: `tracing` with JSON lines by default (`OUTPOST_LOG_FORMAT=pretty` for humans) on
//! stderr, level from `OUTPOST_LOG` (EnvFilter syntax, default `info`). stdout stays free for
//! command output (`check`, `demo`, `webhook sign`).
//!
//! Lines are written by a background thread (tracing-appender's non-blocking writer), so the
//! access log line of every request costs a queue push on the request path, not a `write`
//! syscall under the stderr lock. The writer is not lossy: when its queue is full, logging
//! waits rather than dropping lines. Keep the returned guard alive until exit: dropping it
//! flushes what is queued.

use std::fmt::Write as _;
use std::io::Write as _;
use std::sync::OnceLock;
use std::time::Duration;

use tracing_appender::non_blocking::{NonBlocking, NonBlockingBuilder, WorkerGuard};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::time::{FormatTime, SystemTime};
use tracing_subscriber::EnvFilter;

/// The JSON log writer, for access lines formatted without going through `tracing`'s generic
/// JSON formatter (which costs about a fifth of a request's CPU).
static ACCESS_WRITER: OnceLock<NonBlocking> = OnceLock::new();

/// One access-log line: the fields DESIGN.md names, nothing else.
pub struct Access<'a> {
    pub request_id: &'a str,
    pub upstream: &'a str,
    pub method: &'a str,
    /// Without the query string.
    pub path: &'a str,
    pub status: u16,
    pub attempts: u32,
    pub duration: Duration,
}

/// Log an access line at INFO under target `outpost::access` (so `OUTPOST_LOG` filters it as
/// usual). JSON mode writes the same shape `tracing`'s JSON formatter writes, directly.
pub fn access(line: &Access<'_>) {
    if !tracing::enabled!(target: "outpost::access", tracing::Level::INFO) {
        return;
    }
    let duration_ms = (line.duration.as_secs_f64() * 1_000_000.0).round() / 1000.0;
    let Some(writer) = ACCESS_WRITER.get() else {
        tracing::info!(
            target: "outpost::access",
            request_id = line.request_id,
            upstream = line.upstream,
            method = line.method,
            path = line.path,
            status = line.status,
            attempts = line.attempts,
            duration_ms,
        );
        return;
    };
    let mut buf = String::with_capacity(256);
    buf.push_str("{\"timestamp\":\"");
    let _ = SystemTime.format_time(&mut Writer::new(&mut buf));
    buf.push_str("\",\"level\":\"INFO\",\"request_id\":");
    push_json_str(&mut buf, line.request_id);
    buf.push_str(",\"upstream\":");
    push_json_str(&mut buf, line.upstream);
    buf.push_str(",\"method\":");
    push_json_str(&mut buf, line.method);
    buf.push_str(",\"path\":");
    push_json_str(&mut buf, line.path);
    let _ = writeln!(
        buf,
        ",\"status\":{},\"attempts\":{},\"duration_ms\":{},\"target\":\"outpost::access\"}}",
        line.status, line.attempts, duration_ms
    );
    let _ = writer.clone().write_all(buf.as_bytes());
}

/// Append `s` as a JSON string literal.
fn push_json_str(buf: &mut String, s: &str) {
    buf.push('"');
    for c in s.chars() {
        match c {
            '"' => buf.push_str("\\\""),
            '\\' => buf.push_str("\\\\"),
            c if (c as u32) < 0x20 => {
                let _ = write!(buf, "\\u{:04x}", c as u32);
            }
            c => buf.push(c),
        }
    }
    buf.push('"');
}

/// Install the global subscriber. Returns the guard that flushes queued lines when dropped.
pub fn init() -> Option<WorkerGuard> {
    let filter = EnvFilter::try_from_env("OUTPOST_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let pretty =
        std::env::var("OUTPOST_LOG_FORMAT").is_ok_and(|v| v.eq_ignore_ascii_case("pretty"));
    let (writer, guard) = NonBlockingBuilder::default()
        .lossy(false)
        .thread_name("outpost-log")
        .finish(std::io::stderr());
    if !pretty {
        let _ = ACCESS_WRITER.set(writer.clone());
    }
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer);
    let result = if pretty {
        builder.try_init()
    } else {
        builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .try_init()
    };
    // A second init (tests) keeps the first subscriber.
    result.ok().map(|()| guard)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_strings_are_escaped() {
        let mut buf = String::new();
        push_json_str(&mut buf, "a\"b\\c\nd\u{1}é");
        assert_eq!(buf, r#""a\"b\\c\u000ad\u0001é""#);
        let parsed: String = serde_json::from_str(&buf).unwrap();
        assert_eq!(parsed, "a\"b\\c\nd\u{1}é");
    }
}
