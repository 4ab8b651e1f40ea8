//! Capture: see and replay every call (issue 13).
//!
//! * [`config`]: the `capture:`, `inspect_listen`, `mode:` and `cassette:` settings.
//! * [`ring`]: the bounded ring of recent exchanges, redacted, with live-update subscription.
//! * [`redact`]: the redaction rules shared by the ring and the cassettes.
//! * [`har`]: HAR 1.2 export of the ring.
//! * [`cassette`]: record/replay files, one per upstream, and request matching.
//! * [`inspector`]: the inspector page and its JSON API on `inspect_listen`.
//! * [`tap`]: body wrappers that feed a streaming request path into the ring.
//!
//! Capture sits at the application's side of the stack: requests are captured as the
//! application sent them (before credentials are injected) and responses as they returned to
//! it, so an injected credential never reaches the ring, a cassette, the HAR or the page; known
//! secret strings are scrubbed on top of that in case an upstream echoes one.
//!
//! # Wiring (what the config, the request path and the webhook receiver call)
//!
//! * **Config**: `capture: Option<RawCapture>`, `inspect_listen: Option<String>`,
//!   `cassette_dir: Option<PathBuf>` at the top level; `mode: Option<Mode>` and
//!   `cassette: Option<RawCassetteOptions>` per upstream. Validate with
//!   [`RawCapture::validate`], [`config::inspect_listen`], [`RawCassetteOptions::validate`] and
//!   [`config::validate_modes`] (with `--record`/`--replay` as every upstream's mode).
//! * **App start / reload**: `let ring = CaptureRing::new(cfg)` when `capture` is set (else no
//!   ring at all); [`CaptureRing::set_secrets`] with every resolved credential (again on
//!   reload and file-secret rotation); spawn [`inspector::serve`] on `inspect_listen` with an
//!   [`inspector::Inspector`] whose [`inspector::WebhookReplayer`] forwards
//!   [`ring::Exchange::replay_request`] to the webhook's `forward_to`. For each upstream whose
//!   mode uses a cassette: [`cassette::Cassette::open`] (errors are config errors), with
//!   `ring.redactor()` or a [`Redactor`] holding the same secrets.
//! * **Request path** (outermost, beside the access log, before auth):
//!   `ring.start_upstream(name, method, forwarded_uri, app_headers)` → a
//!   [`tap::Recording`]; wrap the request body with `tap_request` and the response body going
//!   back with `tap_response` (or [`tap::TapBody::passthrough`] when capture is off); record
//!   `attempt`, `limiter_wait`, `response_head`, `error` and `base_url` through
//!   `Recording::with`. The exchange commits itself when the response body ends.
//! * **Replay mode**: before the breaker and limiter, build a [`cassette::CassetteRequest`]
//!   (the application's request with its whole body; `generated_idempotency_key` when Outpost
//!   added the key) and call [`cassette::Cassette::lookup`]: `Ok` is the answer (never the
//!   network); `Err(miss)` is `502 replay_miss` with [`cassette::ReplayMiss::error_json`] in
//!   `replay`, or the live call in `replay_or_record`. **Record**: after the live call, once the
//!   response body is complete, [`cassette::Cassette::record_async`], or wrap the live response
//!   body in [`cassette::Cassette::record_body`], which streams it through and records it when
//!   it ends.
//! * **Webhook receiver**: `ring.start_webhook(name, method, uri, headers)`, the body chunks,
//!   `webhook(result_label, forward_to)` and the response given to the provider, then commit.

pub mod cassette;
pub use crate::config::capture as config;
pub mod har;
pub mod inspector;
pub mod redact;
pub mod ring;
pub mod tap;

pub use self::config::{CaptureConfig, CassetteOptions, Mode, RawCapture, RawCassetteOptions};
pub use self::redact::{Redactor, REDACTED};
pub use self::ring::{Attempt, CaptureRing, Exchange, ExchangeDraft, ExchangeKind, Filter};
pub use self::tap::{Recording, TapBody};

use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine;

pub(crate) fn base64_encode(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// `2026-12-04T02:10:00.123Z` (RFC 3339 / ISO 8601, UTC, milliseconds).
pub fn rfc3339(t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let date = crate::telemetry::format_second(d.as_secs());
    format!(
        "{}.{:03}Z",
        String::from_utf8_lossy(&date),
        d.subsec_millis()
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn rfc3339_dates() {
        let at = |s: u64, ms: u64| rfc3339(UNIX_EPOCH + Duration::from_millis(s * 1000 + ms));
        assert_eq!(at(0, 0), "1970-01-01T00:00:00.000Z");
        assert_eq!(at(951_782_400, 5), "2000-02-29T00:00:00.005Z");
        assert_eq!(at(1_796_342_399, 999), "2026-12-03T23:59:59.999Z");
        assert_eq!(at(4_107_542_400, 0), "2100-03-01T00:00:00.000Z");
    }
}
