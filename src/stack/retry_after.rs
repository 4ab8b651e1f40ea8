//! How long an upstream asks us to wait: `Retry-After` (delay-seconds or HTTP-date, RFC 9110
//! §10.2.3), `X-RateLimit-Reset`-style headers (epoch seconds or a delta), OpenAI's Go-style
//! durations, and the IETF RateLimit fields (`RateLimit: "default";r=0;t=30`). `Retry-After`
//! takes precedence; malformed values are ignored; past dates clamp to zero.
//! Parsers here see hostile bytes: they never panic (property-tested below).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::header::{HeaderMap, RETRY_AFTER};

use crate::config::{PresetDefaults, ResetHeader};

/// Values above this are epoch seconds, below it deltas (2001-09-09 in epoch seconds).
const EPOCH_THRESHOLD: u64 = 1_000_000_000;
/// Nothing an upstream says makes us wait longer than a day.
const SANE_MAX: Duration = Duration::from_secs(86_400);

/// Parse a `Retry-After` value.
pub fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) {
        return value
            .parse::<u64>()
            .ok()
            .map(|s| Duration::from_secs(s).min(SANE_MAX));
    }
    let date = httpdate::parse_http_date(value).ok()?;
    Some(
        date.duration_since(now)
            .unwrap_or(Duration::ZERO)
            .min(SANE_MAX),
    )
}

/// Parse `X-RateLimit-Reset`-style values: epoch seconds when large, else a delta in seconds.
pub fn parse_epoch_or_delta(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    let number: f64 = value
        .parse()
        .ok()
        .filter(|n: &f64| n.is_finite() && *n >= 0.0)?;
    // Clamped before the conversion: `from_secs_f64` panics past u64::MAX seconds.
    let sane = SANE_MAX.as_secs_f64();
    if number >= EPOCH_THRESHOLD as f64 {
        let now_secs = now.duration_since(UNIX_EPOCH).ok()?.as_secs_f64();
        Some(Duration::from_secs_f64(
            (number - now_secs).clamp(0.0, sane),
        ))
    } else {
        Some(Duration::from_secs_f64(number.min(sane)))
    }
}

/// Parse a Go duration such as `6m0s`, `1.5s`, `120ms` (OpenAI's reset headers).
pub fn parse_go_duration(value: &str) -> Option<Duration> {
    crate::config::units::parse_duration(value.trim())
        .ok()
        .map(|d| d.min(SANE_MAX))
}

/// Parse the IETF RateLimit field: the wait `t` of a policy whose remaining `r` is 0.
pub fn parse_ratelimit_field(value: &str) -> Option<Duration> {
    let mut longest: Option<Duration> = None;
    for item in value.split(',') {
        let mut remaining = None;
        let mut reset = None;
        for param in item.split(';').skip(1) {
            let Some((key, val)) = param.split_once('=') else {
                continue;
            };
            let Ok(n) = val.trim().parse::<u64>() else {
                continue;
            };
            match key.trim() {
                "r" => remaining = Some(n),
                "t" => reset = Some(n),
                _ => {}
            }
        }
        if let (Some(0), Some(t)) = (remaining, reset) {
            let t = Duration::from_secs(t).min(SANE_MAX);
            longest = Some(longest.map_or(t, |l| l.max(t)));
        }
    }
    longest
}

/// The wait an upstream response asks for, if any.
pub fn requested_wait(
    headers: &HeaderMap,
    provider: &PresetDefaults,
    now: SystemTime,
) -> Option<Duration> {
    let text = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    if let Some(wait) = headers
        .get(RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| parse_retry_after(v, now))
    {
        return Some(wait);
    }
    let mut found: Option<Duration> = None;
    for reset in provider.reset_headers {
        match reset {
            ResetHeader::EpochOrDelta(name) => {
                if let Some(d) = text(name).and_then(|v| parse_epoch_or_delta(v, now)) {
                    found = Some(found.map_or(d, |f| f.max(d)));
                }
            }
            ResetHeader::GoDuration(name) => {
                if let Some(d) = text(name).and_then(parse_go_duration) {
                    found = Some(found.map_or(d, |f| f.max(d)));
                }
            }
        }
    }
    if let Some(d) = text("ratelimit").and_then(parse_ratelimit_field) {
        found = Some(found.map_or(d, |f| f.max(d)));
    }
    if found.is_none() && text("ratelimit-remaining").map(str::trim) == Some("0") {
        if let Some(d) = text("ratelimit-reset").and_then(|v| parse_epoch_or_delta(v, now)) {
            found = Some(found.map_or(d, |f| f.max(d)));
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;
    use proptest::prelude::*;

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs)
    }

    #[test]
    fn retry_after_both_formats() {
        let now = at(946_684_799 - 60); // 60 s before 1999-12-31 23:59:59
        assert_eq!(
            parse_retry_after("120", now),
            Some(Duration::from_secs(120))
        );
        assert_eq!(parse_retry_after(" 0 ", now), Some(Duration::ZERO));
        assert_eq!(
            parse_retry_after("Fri, 31 Dec 1999 23:59:59 GMT", now),
            Some(Duration::from_secs(60))
        );
        // Past dates clamp to zero; huge values are capped.
        assert_eq!(
            parse_retry_after("Fri, 31 Dec 1999 23:59:59 GMT", at(946_684_799 + 10)),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after("99999999999", now), Some(SANE_MAX));
        for bad in ["", "-1", "1.5", "soon", "Fri, 31 Dec 1999", "12abc"] {
            assert_eq!(parse_retry_after(bad, now), None, "{bad}");
        }
    }

    #[test]
    fn reset_headers() {
        let now = at(1_700_000_000);
        assert_eq!(
            parse_epoch_or_delta("1700000030", now),
            Some(Duration::from_secs(30))
        );
        assert_eq!(
            parse_epoch_or_delta("1699999990", now),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_epoch_or_delta("7", now), Some(Duration::from_secs(7)));
        assert_eq!(parse_epoch_or_delta("x", now), None);
        // Past u64::MAX seconds (an answer seen through tests/quota.rs): capped, no panic.
        let day = Some(Duration::from_secs(86_400));
        assert_eq!(parse_epoch_or_delta("99999999999999999999", now), day);
        assert_eq!(parse_epoch_or_delta("1e300", now), day);
        assert_eq!(parse_epoch_or_delta("999999999.5", now), day);
        assert_eq!(parse_go_duration("6m0s"), Some(Duration::from_secs(360)));
        assert_eq!(parse_go_duration("120ms"), Some(Duration::from_millis(120)));
        assert_eq!(
            parse_ratelimit_field(r#""default";r=0;t=30"#),
            Some(Duration::from_secs(30))
        );
        assert_eq!(parse_ratelimit_field(r#""default";r=5;t=30"#), None);
        assert_eq!(
            parse_ratelimit_field(r#""a";r=0;t=3, "b";r=0;t=9"#),
            Some(Duration::from_secs(9))
        );
        assert_eq!(parse_ratelimit_field("garbage;;;=;r=x"), None);
    }

    #[test]
    fn precedence_and_presets() {
        let now = at(1_700_000_000);
        let mut h = HeaderMap::new();
        h.insert("x-ratelimit-reset", HeaderValue::from_static("1700000020"));
        assert_eq!(
            requested_wait(&h, &crate::config::preset::GENERIC, now),
            Some(Duration::from_secs(20))
        );
        h.insert(RETRY_AFTER, HeaderValue::from_static("3"));
        assert_eq!(
            requested_wait(&h, &crate::config::preset::GENERIC, now),
            Some(Duration::from_secs(3))
        );
        let mut o = HeaderMap::new();
        o.insert("x-ratelimit-reset-requests", HeaderValue::from_static("1s"));
        o.insert("x-ratelimit-reset-tokens", HeaderValue::from_static("6m0s"));
        let openai = crate::config::Preset::Openai.defaults();
        assert_eq!(
            requested_wait(&o, openai, now),
            Some(Duration::from_secs(360))
        );
        let mut r = HeaderMap::new();
        r.insert(
            "ratelimit",
            HeaderValue::from_static(r#""default";r=0;t=4"#),
        );
        assert_eq!(
            requested_wait(&r, openai, now),
            Some(Duration::from_secs(4))
        );
        assert_eq!(requested_wait(&HeaderMap::new(), openai, now), None);
    }

    proptest! {
        #[test]
        fn parsers_never_panic(s in ".{0,64}", n in any::<u64>()) {
            let now = at(n % 4_000_000_000);
            let _ = parse_retry_after(&s, now);
            let _ = parse_epoch_or_delta(&s, now);
            let _ = parse_go_duration(&s);
            let _ = parse_ratelimit_field(&s);
        }

        #[test]
        fn numbers_of_any_size_never_panic(n in any::<u64>(), f in any::<f64>(), e in 0u32..400) {
            let now = at(1_700_000_000);
            let _ = parse_epoch_or_delta(&format!("{n}{n}"), now);
            let _ = parse_epoch_or_delta(&f.to_string(), now);
            let _ = parse_epoch_or_delta(&format!("1e{e}"), now);
        }
    }
}
