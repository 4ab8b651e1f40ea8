//! Capture settings, in the two stages of `config.rs`: raw serde structs
//! (`deny_unknown_fields`, sizes as `16KiB`-style strings) and a `validate()` that yields the
//! typed values the ring, the cassettes and the inspector use.
//!
//! Where they sit in `proxy.yaml` (hooked in by `config.rs`):
//!
//! ```yaml
//! capture:                      # top level; absent = off, `capture: {}` = the defaults
//!   max_exchanges: 500
//!   max_body_bytes: 64KiB       # per body (request and response each)
//!   max_total_bytes: 32MiB      # whole ring: bodies + headers + per-exchange overhead
//!   redact_headers: [set-cookie, cookie]
//!   redact_json_fields: [email, password]
//! inspect_listen: 127.0.0.1:9091
//! cassette_dir: ./cassettes     # needed when any upstream's mode is not `live`
//! upstreams:
//!   stripe:
//!     mode: replay_or_record     # live | record | replay | replay_or_record
//!     cassette:
//!       match_headers: [stripe-version]
//!       ignore_fields: [client_reference_id]
//! ```

use std::net::SocketAddr;
use std::path::Path;

use http::HeaderName;
use serde::Deserialize;

use super::units::Size;

/// Exchanges kept in the ring at most (oldest evicted first).
pub const DEFAULT_MAX_EXCHANGES: usize = 500;
/// Bytes of one request or response body kept at most; the rest is counted, not stored.
pub const DEFAULT_MAX_BODY_BYTES: u64 = 64 * 1024;
/// Bytes the whole ring holds at most (see `capture/ring.rs` for what counts).
pub const DEFAULT_MAX_TOTAL_BYTES: u64 = 32 * 1024 * 1024;
/// Headers whose values are replaced by `[redacted]` when `redact_headers` is not written.
/// `authorization` and `proxy-authorization` are always redacted on top of this list.
pub const DEFAULT_REDACT_HEADERS: &[&str] = &["cookie", "set-cookie"];
/// Where the inspector listens: loopback, so captured bodies stay inside the pod.
pub const DEFAULT_INSPECT_LISTEN: &str = "127.0.0.1:9091";
/// Upper bound of `max_exchanges`, so a typo cannot reserve gigabytes of bookkeeping.
pub const MAX_MAX_EXCHANGES: usize = 1_000_000;

/// `capture:` as written.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCapture {
    /// Exchanges kept at most. Default [`DEFAULT_MAX_EXCHANGES`].
    pub max_exchanges: Option<usize>,
    /// Per-body cap in bytes. Default [`DEFAULT_MAX_BODY_BYTES`].
    pub max_body_bytes: Option<Size>,
    /// Whole-ring cap in bytes. Default [`DEFAULT_MAX_TOTAL_BYTES`].
    pub max_total_bytes: Option<Size>,
    /// Header names (case-insensitive) whose values are stored as `[redacted]`.
    /// Default [`DEFAULT_REDACT_HEADERS`]; writing the list replaces the default.
    pub redact_headers: Option<Vec<String>>,
    /// JSON object keys (exact, at any depth) whose values are stored as `"[redacted]"`.
    #[serde(default)]
    pub redact_json_fields: Vec<String>,
}

/// The validated `capture:` section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaptureConfig {
    pub max_exchanges: usize,
    pub max_body_bytes: u64,
    pub max_total_bytes: u64,
    /// Lower-case header names; never empty of `authorization`/`proxy-authorization` in effect
    /// (the ring adds them itself).
    pub redact_headers: Vec<HeaderName>,
    pub redact_json_fields: Vec<String>,
}

impl Default for CaptureConfig {
    fn default() -> Self {
        RawCapture::default()
            .validate()
            .expect("the defaults are valid")
    }
}

impl RawCapture {
    /// Check the section; errors name the field (`capture.max_body_bytes: …`), never a value
    /// that could be sensitive.
    pub fn validate(&self) -> Result<CaptureConfig, String> {
        let max_exchanges = self.max_exchanges.unwrap_or(DEFAULT_MAX_EXCHANGES);
        if max_exchanges == 0 || max_exchanges > MAX_MAX_EXCHANGES {
            return Err(format!(
                "capture.max_exchanges: must be between 1 and {MAX_MAX_EXCHANGES}"
            ));
        }
        let max_body_bytes = self.max_body_bytes.map_or(DEFAULT_MAX_BODY_BYTES, |s| s.0);
        let max_total_bytes = self
            .max_total_bytes
            .map_or(DEFAULT_MAX_TOTAL_BYTES, |s| s.0);
        if max_total_bytes == 0 {
            return Err("capture.max_total_bytes: must be more than 0".into());
        }
        // One exchange holds two bodies; a ring that cannot hold one full exchange is a typo.
        if max_body_bytes.saturating_mul(2) > max_total_bytes {
            return Err(
                "capture.max_total_bytes: must be at least twice capture.max_body_bytes".into(),
            );
        }
        let names: Vec<String> = match &self.redact_headers {
            Some(list) => list.clone(),
            None => DEFAULT_REDACT_HEADERS
                .iter()
                .map(|s| s.to_string())
                .collect(),
        };
        let mut redact_headers = Vec::with_capacity(names.len());
        for (i, name) in names.iter().enumerate() {
            let parsed = HeaderName::from_bytes(name.trim().as_bytes())
                .map_err(|_| format!("capture.redact_headers[{i}]: not a valid header name"))?;
            if !redact_headers.contains(&parsed) {
                redact_headers.push(parsed);
            }
        }
        for (i, field) in self.redact_json_fields.iter().enumerate() {
            if field.is_empty() {
                return Err(format!(
                    "capture.redact_json_fields[{i}]: must not be empty"
                ));
            }
        }
        Ok(CaptureConfig {
            max_exchanges,
            max_body_bytes,
            max_total_bytes,
            redact_headers,
            redact_json_fields: self.redact_json_fields.clone(),
        })
    }
}

/// `inspect_listen`: absent = [`DEFAULT_INSPECT_LISTEN`].
pub fn inspect_listen(raw: Option<&str>) -> Result<SocketAddr, String> {
    raw.unwrap_or(DEFAULT_INSPECT_LISTEN)
        .trim()
        .parse()
        .map_err(|_| "inspect_listen: expected an address such as 127.0.0.1:9091".to_string())
}

/// Upstream `mode:`. Default [`Mode::Live`].
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// Every call goes to the network; nothing is written.
    #[default]
    Live,
    /// Every call goes to the network and is appended to the cassette.
    Record,
    /// Calls are answered from the cassette; a miss is `502 replay_miss`, never the network.
    Replay,
    /// Answered from the cassette when recorded, else live and appended (capture-on-miss).
    ReplayOrRecord,
}

impl Mode {
    pub fn name(self) -> &'static str {
        match self {
            Mode::Live => "live",
            Mode::Record => "record",
            Mode::Replay => "replay",
            Mode::ReplayOrRecord => "replay_or_record",
        }
    }
    /// Whether this mode reads or writes a cassette.
    pub fn uses_cassette(self) -> bool {
        self != Mode::Live
    }
}

/// Upstream `cassette:` as written.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCassetteOptions {
    /// Request headers (case-insensitive) that must be equal for a recording to match.
    /// Default: none (headers never break a match unless named here).
    #[serde(default)]
    pub match_headers: Vec<String>,
    /// Query parameters, form fields and JSON keys (any depth) ignored when matching, on top of
    /// the built-in rule for timestamp-looking values (see `capture/cassette.rs`).
    #[serde(default)]
    pub ignore_fields: Vec<String>,
}

/// The validated `cassette:` options of one upstream.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct CassetteOptions {
    pub match_headers: Vec<HeaderName>,
    pub ignore_fields: Vec<String>,
}

impl RawCassetteOptions {
    /// `upstream` names the field path in errors: `upstreams.stripe.cassette.match_headers[0]`.
    pub fn validate(&self, upstream: &str) -> Result<CassetteOptions, String> {
        let mut match_headers = Vec::new();
        for (i, name) in self.match_headers.iter().enumerate() {
            let parsed = HeaderName::from_bytes(name.trim().as_bytes()).map_err(|_| {
                format!("upstreams.{upstream}.cassette.match_headers[{i}]: not a valid header name")
            })?;
            if is_never_stored(&parsed) {
                return Err(format!(
                    "upstreams.{upstream}.cassette.match_headers[{i}]: credentials are never \
                     recorded, so they cannot be matched"
                ));
            }
            match_headers.push(parsed);
        }
        for (i, field) in self.ignore_fields.iter().enumerate() {
            if field.is_empty() {
                return Err(format!(
                    "upstreams.{upstream}.cassette.ignore_fields[{i}]: must not be empty"
                ));
            }
        }
        Ok(CassetteOptions {
            match_headers,
            ignore_fields: self.ignore_fields.clone(),
        })
    }
}

/// Headers whose values are never kept anywhere (ring, cassette, HAR, page).
pub fn is_never_stored(name: &HeaderName) -> bool {
    name == http::header::AUTHORIZATION || name == http::header::PROXY_AUTHORIZATION
}

/// Cross-field check: an upstream whose mode uses a cassette needs `cassette_dir`.
/// `modes` is `(upstream name, mode)`; `record_all`/`replay_all` of the CLI count as modes.
pub fn validate_modes(cassette_dir: Option<&Path>, modes: &[(&str, Mode)]) -> Result<(), String> {
    if cassette_dir.is_some() {
        return Ok(());
    }
    match modes.iter().find(|(_, mode)| mode.uses_cassette()) {
        Some((name, mode)) => Err(format!(
            "upstreams.{name}.mode: `{}` needs a top-level `cassette_dir`",
            mode.name()
        )),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(yaml: &str) -> Result<RawCapture, String> {
        serde_yaml::from_str(yaml).map_err(|e| e.to_string())
    }

    #[test]
    fn empty_section_is_the_defaults() {
        let cfg = raw("{}").unwrap().validate().unwrap();
        assert_eq!(cfg.max_exchanges, DEFAULT_MAX_EXCHANGES);
        assert_eq!(cfg.max_body_bytes, 64 * 1024);
        assert_eq!(cfg.max_total_bytes, 32 * 1024 * 1024);
        assert_eq!(cfg.redact_headers, vec!["cookie", "set-cookie"]);
        assert!(cfg.redact_json_fields.is_empty());
        assert_eq!(cfg, CaptureConfig::default());
    }

    #[test]
    fn sizes_and_lists_parse() {
        let cfg = raw(
            "max_exchanges: 10\nmax_body_bytes: 1KiB\nmax_total_bytes: 1MiB\n\
             redact_headers: [Set-Cookie, X-Api-Token]\nredact_json_fields: [email]\n",
        )
        .unwrap()
        .validate()
        .unwrap();
        assert_eq!(cfg.max_exchanges, 10);
        assert_eq!(cfg.max_body_bytes, 1024);
        assert_eq!(cfg.max_total_bytes, 1024 * 1024);
        assert_eq!(cfg.redact_headers, vec!["set-cookie", "x-api-token"]);
        assert_eq!(cfg.redact_json_fields, vec!["email"]);
    }

    #[test]
    fn rejects_typos_and_bad_values() {
        assert!(raw("max_exchange: 5")
            .unwrap_err()
            .contains("unknown field"));
        assert!(raw("max_body_bytes: 1TiB").is_err());
        let errs = [
            ("max_exchanges: 0", "capture.max_exchanges"),
            ("max_total_bytes: 0", "capture.max_total_bytes"),
            ("max_body_bytes: 1MiB\nmax_total_bytes: 1MiB", "twice"),
            (
                "redact_headers: ['bad header']",
                "capture.redact_headers[0]",
            ),
            ("redact_json_fields: ['']", "capture.redact_json_fields[0]"),
        ];
        for (yaml, want) in errs {
            let err = raw(yaml).unwrap().validate().unwrap_err();
            assert!(err.contains(want), "{yaml}: {err}");
        }
    }

    #[test]
    fn inspect_listen_default_and_errors() {
        assert_eq!(
            inspect_listen(None).unwrap(),
            "127.0.0.1:9091".parse().unwrap()
        );
        assert_eq!(
            inspect_listen(Some("0.0.0.0:1")).unwrap(),
            "0.0.0.0:1".parse().unwrap()
        );
        assert!(inspect_listen(Some("localhost")).is_err());
    }

    #[test]
    fn modes_and_cassette_options() {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct U {
            mode: Mode,
            cassette: RawCassetteOptions,
        }
        let u: U = serde_yaml::from_str(
            "mode: replay_or_record\ncassette: {match_headers: [Stripe-Version], ignore_fields: [nonce]}",
        )
        .unwrap();
        assert_eq!(u.mode, Mode::ReplayOrRecord);
        let opts = u.cassette.validate("stripe").unwrap();
        assert_eq!(opts.match_headers, vec!["stripe-version"]);
        assert_eq!(opts.ignore_fields, vec!["nonce"]);
        assert!(serde_yaml::from_str::<Mode>("recrd").is_err());
        assert!(serde_yaml::from_str::<RawCassetteOptions>("match_header: []").is_err());
        let err = RawCassetteOptions {
            match_headers: vec!["Authorization".into()],
            ignore_fields: vec![],
        }
        .validate("stripe")
        .unwrap_err();
        assert!(
            err.starts_with("upstreams.stripe.cassette.match_headers[0]"),
            "{err}"
        );
        assert_eq!(Mode::default(), Mode::Live);
    }

    #[test]
    fn cassette_dir_required_by_non_live_modes() {
        assert!(validate_modes(None, &[("a", Mode::Live)]).is_ok());
        let err = validate_modes(None, &[("a", Mode::Live), ("b", Mode::Replay)]).unwrap_err();
        assert_eq!(
            err,
            "upstreams.b.mode: `replay` needs a top-level `cassette_dir`"
        );
        assert!(validate_modes(Some(Path::new("c")), &[("b", Mode::Record)]).is_ok());
    }
}
