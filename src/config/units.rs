//! Duration (`250ms`, `5s`, `2m`, `1h30m`) and size (`512`, `16KiB`, `1MiB`) values of the config.

use std::fmt;
use std::time::Duration;

use serde::de::{self, Deserializer, Visitor};
use serde::Deserialize;

/// A duration written as a string of `<number><unit>` groups; units `ms`, `s`, `m`, `h`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Dur(pub Duration);

/// A size in bytes: a plain integer or a string with a `B`, `KB`, `KiB`, `MB`, `MiB`, `GB`, `GiB` suffix.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Size(pub u64);

/// The longest duration (and the longest duration text) the config accepts.
pub const MAX_DURATION: Duration = Duration::from_secs(365 * 24 * 3600);
const MAX_TEXT: usize = 64;

/// Parse a duration. Every sum is checked: any input, however long or large, is either a
/// duration of at most [`MAX_DURATION`] or an error (never a panic).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    if s.is_empty() {
        return Err("empty duration".into());
    }
    if s.len() > MAX_TEXT {
        return Err(format!(
            "duration is longer than {MAX_TEXT} characters (use a unit such as `5s` or `2m`)"
        ));
    }
    if s == "0" {
        return Ok(Duration::ZERO);
    }
    let mut total = Duration::ZERO;
    let mut rest = s;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(|| format!("duration `{s}` needs a unit (ms, s, m or h)"))?;
        if digits == 0 {
            return Err(format!("invalid duration `{s}`: expected a number"));
        }
        let number: f64 = rest[..digits]
            .parse()
            .map_err(|_| format!("invalid number in duration `{s}`"))?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let unit = &rest[..unit_len];
        rest = &rest[unit_len..];
        let seconds = match unit {
            "ms" => number / 1000.0,
            "s" => number,
            "m" => number * 60.0,
            "h" => number * 3600.0,
            _ => {
                return Err(format!(
                    "invalid unit `{unit}` in duration `{s}` (use ms, s, m or h)"
                ))
            }
        };
        let part = Duration::try_from_secs_f64(seconds)
            .map_err(|_| format!("duration `{s}` is out of range"))?;
        total = total
            .checked_add(part)
            .filter(|t| *t <= MAX_DURATION)
            .ok_or_else(|| format!("duration `{s}` is longer than a year"))?;
    }
    if total > MAX_DURATION {
        return Err(format!("duration `{s}` is longer than a year"));
    }
    Ok(total)
}

/// Parse a size in bytes (checked: too large is an error, never a wrap or a panic).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    if s.len() > MAX_TEXT {
        return Err(format!("size is longer than {MAX_TEXT} characters"));
    }
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    if split == 0 {
        return Err(format!("invalid size `{s}`: expected a number of bytes"));
    }
    let number: u64 = s[..split]
        .parse()
        .map_err(|_| format!("size `{s}` is out of range"))?;
    let multiplier: u64 = match s[split..].trim() {
        "" | "B" => 1,
        "KB" => 1000,
        "KiB" => 1024,
        "MB" => 1000 * 1000,
        "MiB" => 1024 * 1024,
        "GB" => 1000 * 1000 * 1000,
        "GiB" => 1024 * 1024 * 1024,
        unit => {
            return Err(format!(
                "invalid unit `{unit}` in size `{s}` (use B, KiB, MiB, GiB, KB, MB or GB)"
            ))
        }
    };
    number
        .checked_mul(multiplier)
        .ok_or_else(|| format!("size `{s}` is out of range"))
}

pub fn format_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms == 0 {
        "0s".into()
    } else if ms.is_multiple_of(3_600_000) {
        format!("{}h", ms / 3_600_000)
    } else if ms.is_multiple_of(60_000) {
        format!("{}m", ms / 60_000)
    } else if ms.is_multiple_of(1000) {
        format!("{}s", ms / 1000)
    } else {
        format!("{ms}ms")
    }
}

pub fn format_size(n: u64) -> String {
    const MIB: u64 = 1024 * 1024;
    if n >= MIB && n.is_multiple_of(MIB) {
        format!("{}MiB", n / MIB)
    } else if n >= 1024 && n.is_multiple_of(1024) {
        format!("{}KiB", n / 1024)
    } else {
        format!("{n}B")
    }
}

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Dur;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a duration string such as `250ms`, `5s` or `2m`")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Dur, E> {
                parse_duration(v).map(Dur).map_err(E::custom)
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Dur, E> {
                if v == 0 {
                    Ok(Dur(Duration::ZERO))
                } else {
                    Err(E::custom(format!(
                        "duration `{v}` needs a unit, e.g. `{v}s` or `{v}ms`"
                    )))
                }
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Dur, E> {
                Err(E::custom(format!("invalid duration `{v}`")))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Dur, E> {
                Err(E::custom(format!(
                    "duration `{v}` needs a unit, e.g. `{v}s`"
                )))
            }
        }
        d.deserialize_any(V)
    }
}

impl<'de> Deserialize<'de> for Size {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Size;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a size in bytes or a string such as `16KiB` or `1MiB`")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Size, E> {
                parse_size(v).map(Size).map_err(E::custom)
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Size, E> {
                Ok(Size(v))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Size, E> {
                u64::try_from(v)
                    .map(Size)
                    .map_err(|_| E::custom(format!("size `{v}` must not be negative")))
            }
        }
        d.deserialize_any(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("5s"), Ok(Duration::from_secs(5)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("0"), Ok(Duration::ZERO));
        for bad in ["", "5", "s", "5x", "-1s", "1e9s", "99999999h", "5 s"] {
            assert!(parse_duration(bad).is_err(), "{bad} should be rejected");
        }
    }

    #[test]
    fn huge_durations_are_errors_not_overflows() {
        // Each part fits a Duration, their sum does not: once a panic ("overflow when adding
        // durations") in `check` and in a running reload.
        for huge in [
            "3000000000000000h3000000000000000h",
            "5124095576030431h5124095576030431h",
            "8760h8760h",
            "1.8446744073709552e19s",
            &"9".repeat(400),
            &format!("{}s", "9".repeat(400)),
            &"1h".repeat(1000),
        ] {
            let e = parse_duration(huge).unwrap_err();
            assert!(!e.is_empty());
        }
        assert_eq!(parse_duration("8760h"), Ok(MAX_DURATION));
        assert!(parse_size(&"9".repeat(400)).is_err());
        assert!(parse_size("18446744073709551615GiB").is_err());
        assert_eq!(parse_size("18446744073709551615"), Ok(u64::MAX));
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("512"), Ok(512));
        assert_eq!(parse_size("16KiB"), Ok(16 * 1024));
        assert_eq!(parse_size("1MiB"), Ok(1024 * 1024));
        assert_eq!(parse_size("2 MB"), Ok(2_000_000));
        for bad in ["", "KiB", "1TiB", "-1", "99999999999999999999"] {
            assert!(parse_size(bad).is_err(), "{bad} should be rejected");
        }
    }

    #[test]
    fn formatting_round_trips() {
        for s in ["250ms", "5s", "2m", "1h"] {
            assert_eq!(format_duration(parse_duration(s).unwrap()), s);
        }
        assert_eq!(format_size(64 * 1024), "64KiB");
        assert_eq!(format_size(1024 * 1024), "1MiB");
        assert_eq!(format_size(100), "100B");
    }

    proptest::proptest! {
        /// Any string at all (all of Unicode, up to 4 KiB).
        #[test]
        fn parsers_never_panic(s in proptest::prelude::any::<String>(), long in "\\PC{0,4096}") {
            for s in [&s, &long] {
                if let Ok(d) = parse_duration(s) {
                    proptest::prop_assert!(d <= MAX_DURATION);
                }
                let _ = parse_size(s);
            }
        }

        /// Number-and-unit groups with numbers of any size.
        #[test]
        fn unit_groups_of_any_size_never_panic(
            groups in proptest::collection::vec(
                ("[0-9]{1,30}(\\.[0-9]{0,20})?", "ms|s|m|h|KiB|MiB|GiB|KB|MB|GB|B|"),
                1..8,
            ),
            n in proptest::prelude::any::<u64>(),
            unit in "ms|s|m|h",
        ) {
            let text: String = groups.iter().map(|(n, u)| format!("{n}{u}")).collect();
            if let Ok(d) = parse_duration(&text) {
                proptest::prop_assert!(d <= MAX_DURATION);
            }
            let _ = parse_size(&text);
            let twice = format!("{n}{unit}{n}{unit}");
            if let Ok(d) = parse_duration(&twice) {
                proptest::prop_assert!(d <= MAX_DURATION);
            }
            let _ = parse_size(&format!("{n}GiB"));
        }

        #[test]
        fn durations_round_trip(ms in 0u64..10_000_000) {
            let d = Duration::from_millis(ms);
            proptest::prop_assert_eq!(parse_duration(&format_duration(d)), Ok(d));
        }
    }
}
