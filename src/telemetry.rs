//! Logging: `tracing` with JSON lines by default (`OUTPOST_LOG_FORMAT=pretty` for humans) on
//! stderr, level from `OUTPOST_LOG` (EnvFilter syntax, default `info`). stdout stays free for
//! command output (`check`, `demo`, `webhook sign`).
//!
//! Lines are written by a background thread in batches ([`batch`]), so the access line of
//! every request costs an append to a buffer on the request path, not a `write` syscall and a
//! thread wake-up. Logging never blocks a worker thread: when the sink falls behind (a stderr
//! pipe nobody reads), new lines are dropped and counted (`outpost_log_lines_dropped_total`)
//! and [`warn_if_dropped`] logs one warning per [`DROP_WARNING_INTERVAL`]. Keep the returned
//! guard alive until exit: dropping it flushes what is pending (waiting a bounded time).

mod batch;

use std::cell::Cell;
use std::sync::OnceLock;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tracing_subscriber::EnvFilter;

pub use batch::{dropped, BatchWriter, Guard};

/// At most one "log lines dropped" warning per this interval.
pub const DROP_WARNING_INTERVAL: Duration = Duration::from_secs(10);

/// Warn (once per [`DROP_WARNING_INTERVAL`]) when log lines were dropped since the last
/// warning. Called periodically by the app's housekeeping task.
pub fn warn_if_dropped() {
    static LAST: std::sync::Mutex<Option<(tokio::time::Instant, u64)>> =
        std::sync::Mutex::new(None);
    let now = tokio::time::Instant::now();
    let total = dropped();
    let mut last = LAST.lock().unwrap_or_else(|e| e.into_inner());
    let (due, reported) = match *last {
        None => (true, 0),
        Some((at, reported)) => (now.duration_since(at) >= DROP_WARNING_INTERVAL, reported),
    };
    if total > reported && due {
        *last = Some((now, total));
        drop(last);
        tracing::warn!(
            dropped = total - reported,
            dropped_total = total,
            "log lines dropped: the log sink (stderr) is slower than the proxy writes; see outpost_log_lines_dropped_total"
        );
    }
}

/// The JSON log writer, for access lines formatted without going through `tracing`'s generic
/// JSON formatter (which costs about a fifth of a request's CPU).
static ACCESS_WRITER: OnceLock<BatchWriter> = OnceLock::new();

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
/// usual). JSON mode writes the same shape `tracing`'s JSON formatter writes, directly into the
/// log buffer.
pub fn access(line: &Access<'_>) {
    if !tracing::enabled!(target: "outpost::access", tracing::Level::INFO) {
        return;
    }
    let Some(writer) = ACCESS_WRITER.get() else {
        let duration_ms = (line.duration.as_secs_f64() * 1_000_000.0).round() / 1000.0;
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
    let now = SystemTime::now();
    writer.append(|buf| {
        buf.extend_from_slice(b"{\"timestamp\":\"");
        push_timestamp(buf, now);
        buf.extend_from_slice(b"\",\"level\":\"INFO\",\"request_id\":");
        push_json_str(buf, line.request_id);
        buf.extend_from_slice(b",\"upstream\":");
        push_json_str(buf, line.upstream);
        buf.extend_from_slice(b",\"method\":");
        push_json_str(buf, line.method);
        buf.extend_from_slice(b",\"path\":");
        push_json_str(buf, line.path);
        let micros = line.duration.as_micros();
        buf.extend_from_slice(b",\"status\":");
        push_decimal(buf, u64::from(line.status));
        buf.extend_from_slice(b",\"attempts\":");
        push_decimal(buf, u64::from(line.attempts));
        buf.extend_from_slice(b",\"duration_ms\":");
        push_decimal(buf, u64::try_from(micros / 1000).unwrap_or(u64::MAX));
        let frac = (micros % 1000) as u16;
        buf.extend_from_slice(&[
            b'.',
            b'0' + (frac / 100) as u8,
            b'0' + (frac / 10 % 10) as u8,
            b'0' + (frac % 10) as u8,
        ]);
        buf.extend_from_slice(b",\"target\":\"outpost::access\"}\n");
    });
}

/// Append `n` in decimal (the access line's numbers, without `fmt`'s machinery).
fn push_decimal(buf: &mut Vec<u8>, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    loop {
        at -= 1;
        digits[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    buf.extend_from_slice(&digits[at..]);
}

thread_local! {
    /// The last second formatted on this thread and its `YYYY-MM-DDTHH:MM:SS` text.
    static SECOND: Cell<(u64, [u8; 19])> = const { Cell::new((u64::MAX, [0; 19])) };
}

/// Append `now` as RFC 3339 UTC with microseconds (`2026-11-29T20:41:07.123456Z`), the format
/// `tracing-subscriber` uses; the date part is formatted once per second per thread.
fn push_timestamp(buf: &mut Vec<u8>, now: SystemTime) {
    let since = now.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs();
    let (cached, mut text) = SECOND.get();
    if cached != secs {
        text = format_second(secs);
        SECOND.set((secs, text));
    }
    buf.extend_from_slice(&text);
    let micros = since.subsec_micros();
    let mut frac = *b".000000Z";
    let mut n = micros;
    for digit in frac[1..7].iter_mut().rev() {
        *digit = b'0' + (n % 10) as u8;
        n /= 10;
    }
    buf.extend_from_slice(&frac);
}

/// `YYYY-MM-DDTHH:MM:SS` for a Unix time (proleptic Gregorian, H. Hinnant's `civil_from_days`).
/// Also the date part of `capture::rfc3339`.
pub fn format_second(secs: u64) -> [u8; 19] {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let mut out = [0u8; 19];
    let text = format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}",
        year.clamp(0, 9999),
        month,
        day,
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    );
    out.copy_from_slice(&text.as_bytes()[..19]);
    out
}

/// Append `s` as a JSON string literal.
fn push_json_str(buf: &mut Vec<u8>, s: &str) {
    buf.push(b'"');
    let bytes = s.as_bytes();
    // Ids, names, methods and paths almost never need escaping: check all bytes at once.
    if !bytes.iter().any(|&b| b < 0x20 || b == b'"' || b == b'\\') {
        buf.extend_from_slice(bytes);
        buf.push(b'"');
        return;
    }
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let escape: &[u8] = match b {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            0..=0x1f => b"",
            _ => continue,
        };
        buf.extend_from_slice(&bytes[start..i]);
        if escape.is_empty() {
            let _ = std::io::Write::write_fmt(buf, format_args!("\\u{:04x}", b));
        } else {
            buf.extend_from_slice(escape);
        }
        start = i + 1;
    }
    buf.extend_from_slice(&bytes[start..]);
    buf.push(b'"');
}

/// Install the global subscriber. Returns the guard that flushes pending lines when dropped.
pub fn init() -> Option<Guard> {
    let filter = EnvFilter::try_from_env("OUTPOST_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let pretty =
        std::env::var("OUTPOST_LOG_FORMAT").is_ok_and(|v| v.eq_ignore_ascii_case("pretty"));
    let (writer, guard) = match batch::spawn(std::io::stderr()) {
        Ok(pair) => pair,
        Err(e) => {
            eprintln!("outpost: cannot start the log writer thread: {e}");
            let _ = tracing_subscriber::fmt()
                .with_env_filter(filter)
                .with_writer(std::io::stderr)
                .json()
                .try_init();
            return None;
        }
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer.clone());
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
    result.ok()?;
    if !pretty {
        let _ = ACCESS_WRITER.set(writer);
    }
    Some(guard)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decimals_are_written_like_fmt() {
        for n in [0, 7, 10, 99, 200, 499, 65_535, 4_294_967_295, u64::MAX] {
            let mut buf = Vec::new();
            push_decimal(&mut buf, n);
            assert_eq!(String::from_utf8(buf).unwrap(), n.to_string());
        }
    }

    proptest::proptest! {
        #[test]
        fn every_decimal_matches_fmt(n: u64) {
            let mut buf = Vec::new();
            push_decimal(&mut buf, n);
            proptest::prop_assert_eq!(String::from_utf8(buf).unwrap(), n.to_string());
        }
    }

    #[test]
    fn json_strings_are_escaped() {
        let mut buf = Vec::new();
        push_json_str(&mut buf, "a\"b\\c\nd\u{1}é");
        assert_eq!(buf, r#""a\"b\\c\u000ad\u0001é""#.as_bytes());
        let parsed: String = serde_json::from_slice(&buf).unwrap();
        assert_eq!(parsed, "a\"b\\c\nd\u{1}é");
    }

    #[test]
    fn timestamps_match_rfc3339_utc() {
        let at = |secs: u64, micros: u32| {
            let mut buf = Vec::new();
            push_timestamp(&mut buf, UNIX_EPOCH + Duration::new(secs, micros * 1000));
            String::from_utf8(buf).unwrap()
        };
        assert_eq!(at(0, 0), "1970-01-01T00:00:00.000000Z");
        assert_eq!(at(951_782_400, 7), "2000-02-29T00:00:00.000007Z");
        assert_eq!(at(1_795_983_667, 123_456), "2026-11-29T20:21:07.123456Z");
        assert_eq!(at(4_102_444_799, 999_999), "2099-12-31T23:59:59.999999Z");
        // The per-second cache is refreshed when the second changes.
        assert_eq!(at(1_795_983_668, 1), "2026-11-29T20:21:08.000001Z");
    }

    proptest::proptest! {
        #[test]
        fn timestamps_agree_with_httpdate(secs in 0u64..4_000_000_000) {
            let mut buf = Vec::new();
            push_timestamp(&mut buf, UNIX_EPOCH + Duration::from_secs(secs));
            let text = String::from_utf8(buf).unwrap();
            let http = httpdate::fmt_http_date(UNIX_EPOCH + Duration::from_secs(secs));
            // httpdate: "Sun, 29 Nov 2026 20:21:07 GMT"; compare day, year and time.
            let parts: Vec<&str> = http.split(' ').collect();
            proptest::prop_assert_eq!(&text[8..10], parts[1]);
            proptest::prop_assert_eq!(&text[0..4], parts[3]);
            proptest::prop_assert_eq!(&text[11..19], parts[4]);
        }
    }
}
