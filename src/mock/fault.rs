//! The `X-Mock-Fault` request header: per-request fault injection (grammar in the `mock`
//! module docs), and the bounded per-key counters behind `times=N; key=K`.

use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use hyper::header::{HeaderMap, HeaderName};
use hyper::StatusCode;

use super::store::Bounded;

/// Request header that asks the mock to misbehave.
pub(crate) const HEADER: HeaderName = HeaderName::from_static("x-mock-fault");

/// Longest `delay=` accepted, so one header cannot pin a connection for hours.
const MAX_DELAY: Duration = Duration::from_secs(600);
/// Longest `key=` accepted, in bytes.
const MAX_KEY_LEN: usize = 200;
/// Fault keys remembered at once; the oldest is forgotten first.
const MAX_KEYS: usize = 10_000;

/// One parsed `X-Mock-Fault` header.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) struct Fault {
    /// Answer this status (400..=599) instead of serving the request.
    pub(crate) status: Option<StatusCode>,
    /// `Retry-After` seconds on the fault answer.
    pub(crate) retry_after: Option<u32>,
    /// Sleep this long before answering (fault or normal answer).
    pub(crate) delay: Option<Duration>,
    /// Only the first `times` requests with this fault's key misbehave.
    pub(crate) times: Option<u32>,
    /// Counter key for `times`; defaults to the header text itself.
    pub(crate) key: Option<String>,
}

/// Why a header was rejected. Messages never repeat the header's content.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub(crate) enum FaultError {
    #[error("X-Mock-Fault must be sent at most once")]
    Repeated,
    #[error("X-Mock-Fault is not visible ASCII text")]
    NotText,
    #[error("X-Mock-Fault directives are `name=value` pairs separated by `;`")]
    NotPair,
    #[error(
        "X-Mock-Fault directive is unknown (expected status, retry_after, delay, times or key)"
    )]
    Unknown,
    #[error("X-Mock-Fault directive `{0}` is given twice")]
    Duplicate(&'static str),
    #[error("X-Mock-Fault `status` must be an HTTP status from 400 to 599")]
    Status,
    #[error("X-Mock-Fault `retry_after` must be a whole number of seconds")]
    RetryAfter,
    #[error("X-Mock-Fault `delay` must be a duration such as 300ms or 2s, at most 10m")]
    Delay,
    #[error("X-Mock-Fault `times` must be a positive whole number")]
    Times,
    #[error("X-Mock-Fault `key` must be 1 to 200 characters without spaces")]
    Key,
    #[error("X-Mock-Fault `retry_after` needs a `status`")]
    RetryAfterWithoutStatus,
    #[error("X-Mock-Fault needs a `status` or a `delay`")]
    Nothing,
}

/// The request's fault, if it carries one.
pub(crate) fn from_headers(headers: &HeaderMap) -> Result<Option<Fault>, FaultError> {
    let mut values = headers.get_all(HEADER).iter();
    let Some(value) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(FaultError::Repeated);
    }
    let text = value.to_str().map_err(|_| FaultError::NotText)?;
    parse(text).map(Some)
}

/// Parse `status=503; retry_after=2; delay=300ms; times=2; key=abc` (any order, any subset
/// that includes `status` or `delay`; empty segments and spaces around `;` and `=` are fine).
pub(crate) fn parse(text: &str) -> Result<Fault, FaultError> {
    let mut fault = Fault::default();
    for directive in text.split(';').map(str::trim).filter(|d| !d.is_empty()) {
        let (name, value) = directive.split_once('=').ok_or(FaultError::NotPair)?;
        let value = value.trim();
        match name.trim().to_ascii_lowercase().as_str() {
            "status" => {
                let status = value
                    .parse::<u16>()
                    .ok()
                    .filter(|s| (400..=599).contains(s))
                    .and_then(|s| StatusCode::from_u16(s).ok())
                    .ok_or(FaultError::Status)?;
                set(&mut fault.status, status, "status")?;
            }
            "retry_after" => {
                let secs = parse_digits(value).ok_or(FaultError::RetryAfter)?;
                set(&mut fault.retry_after, secs, "retry_after")?;
            }
            "delay" => {
                let delay = super::parse_duration(value)
                    .ok()
                    .filter(|d| *d <= MAX_DELAY)
                    .ok_or(FaultError::Delay)?;
                set(&mut fault.delay, delay, "delay")?;
            }
            "times" => {
                let times = parse_digits(value)
                    .filter(|n| *n > 0)
                    .ok_or(FaultError::Times)?;
                set(&mut fault.times, times, "times")?;
            }
            "key" => {
                let valid = !value.is_empty()
                    && value.len() <= MAX_KEY_LEN
                    && value.bytes().all(|b| b.is_ascii_graphic());
                if !valid {
                    return Err(FaultError::Key);
                }
                set(&mut fault.key, value.to_string(), "key")?;
            }
            _ => return Err(FaultError::Unknown),
        }
    }
    if fault.retry_after.is_some() && fault.status.is_none() {
        return Err(FaultError::RetryAfterWithoutStatus);
    }
    if fault.status.is_none() && fault.delay.is_none() {
        return Err(FaultError::Nothing);
    }
    if fault.times.is_some() && fault.key.is_none() {
        // Without an explicit key, identical headers share one counter.
        fault.key = Some(text.trim().chars().take(MAX_KEY_LEN).collect());
    }
    Ok(fault)
}

fn set<T>(slot: &mut Option<T>, value: T, name: &'static str) -> Result<(), FaultError> {
    if slot.replace(value).is_some() {
        return Err(FaultError::Duplicate(name));
    }
    Ok(())
}

fn parse_digits(value: &str) -> Option<u32> {
    if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    value.parse().ok()
}

/// How many times each fault key has fired, bounded to [`MAX_KEYS`] keys.
#[derive(Debug)]
pub(crate) struct Counters {
    fired: Mutex<Bounded<String, u32>>,
}

impl Counters {
    pub(crate) fn new() -> Self {
        Self {
            fired: Mutex::new(Bounded::new(MAX_KEYS, MAX_KEYS * (MAX_KEY_LEN + 64))),
        }
    }

    /// Whether this request should get the fault: always without `times`, else only while the
    /// key has fired fewer than `times` times.
    pub(crate) fn should_fire(&self, fault: &Fault) -> bool {
        let (Some(times), Some(key)) = (fault.times, fault.key.as_deref()) else {
            return true;
        };
        let mut fired = self.fired.lock().unwrap_or_else(PoisonError::into_inner);
        match fired.get_mut(key) {
            Some(count) if *count >= times => false,
            Some(count) => {
                *count += 1;
                true
            }
            None => {
                fired.insert(key.to_string(), 1, key.len() + 64);
                true
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper::header::HeaderValue;

    #[test]
    fn full_grammar() {
        let fault = parse(" status = 429 ; retry_after=2;delay=300ms; times=3; key=abc-1;")
            .expect("valid header");
        assert_eq!(
            fault,
            Fault {
                status: Some(StatusCode::TOO_MANY_REQUESTS),
                retry_after: Some(2),
                delay: Some(Duration::from_millis(300)),
                times: Some(3),
                key: Some("abc-1".to_string()),
            }
        );
    }

    #[test]
    fn delay_alone_and_status_alone() {
        assert_eq!(
            parse("delay=2s").map(|f| f.delay),
            Ok(Some(Duration::from_secs(2)))
        );
        assert_eq!(
            parse("STATUS=503").map(|f| f.status),
            Ok(Some(StatusCode::SERVICE_UNAVAILABLE))
        );
    }

    #[test]
    fn times_without_key_uses_the_header_text() {
        let fault = parse("status=503; times=2").expect("valid header");
        assert_eq!(fault.key.as_deref(), Some("status=503; times=2"));
    }

    #[test]
    fn rejects_malformed() {
        let cases = [
            ("", FaultError::Nothing),
            (";;", FaultError::Nothing),
            ("status", FaultError::NotPair),
            ("status=abc", FaultError::Status),
            ("status=200", FaultError::Status),
            ("status=600", FaultError::Status),
            ("status=99999999999", FaultError::Status),
            ("status=503;status=500", FaultError::Duplicate("status")),
            ("status=503;retry_after=-1", FaultError::RetryAfter),
            ("status=503;retry_after=1.5", FaultError::RetryAfter),
            ("retry_after=2", FaultError::RetryAfterWithoutStatus),
            ("delay=fast", FaultError::Delay),
            ("delay=11m", FaultError::Delay),
            ("delay=99999999999999999999s", FaultError::Delay),
            ("status=503;times=0", FaultError::Times),
            ("status=503;times=+1", FaultError::Times),
            ("status=503;key=", FaultError::Key),
            ("status=503;key=a b", FaultError::Key),
            ("status=503;colour=red", FaultError::Unknown),
            ("times=2;key=a", FaultError::Nothing),
        ];
        for (input, want) in cases {
            assert_eq!(parse(input), Err(want), "input {input:?}");
        }
        let long_key = format!("status=503;key={}", "k".repeat(MAX_KEY_LEN + 1));
        assert_eq!(parse(&long_key), Err(FaultError::Key));
    }

    #[test]
    fn header_checks() {
        let mut headers = HeaderMap::new();
        assert_eq!(from_headers(&headers), Ok(None));
        headers.insert(
            HEADER,
            HeaderValue::from_bytes(b"status=503\xff").expect("opaque bytes are allowed"),
        );
        assert_eq!(from_headers(&headers), Err(FaultError::NotText));
        headers.insert(HEADER, HeaderValue::from_static("status=503"));
        headers.append(HEADER, HeaderValue::from_static("status=500"));
        assert_eq!(from_headers(&headers), Err(FaultError::Repeated));
    }

    #[test]
    fn counters_fire_times_then_stop_per_key() {
        let counters = Counters::new();
        let twice = parse("status=503;times=2;key=a").expect("valid header");
        let other = parse("status=503;times=1;key=b").expect("valid header");
        let always = parse("status=503").expect("valid header");
        let fired: Vec<bool> = (0..4).map(|_| counters.should_fire(&twice)).collect();
        assert_eq!(fired, [true, true, false, false]);
        assert!(counters.should_fire(&other));
        assert!(!counters.should_fire(&other));
        assert!((0..3).all(|_| counters.should_fire(&always)));
    }

    #[test]
    fn counters_stay_bounded() {
        let counters = Counters::new();
        for i in 0..(MAX_KEYS + 50) {
            let fault = parse(&format!("status=503;times=1;key=k{i}")).expect("valid header");
            assert!(counters.should_fire(&fault));
        }
        let len = counters
            .fired
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len();
        assert_eq!(len, MAX_KEYS);
    }
}
