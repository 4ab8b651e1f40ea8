//! Provider presets: `preset: stripe | sendgrid | twilio | github | openai`.
//!
//! A preset fills in what is true of the provider's API (base URL, auth style, headers it wants,
//! statuses worth retrying, whether it honours `Idempotency-Key`, which headers announce rate
//! limit resets). Every key written beside `preset:` overrides the preset's value, key by key.
//! Sources: REFERENCE.md "Retries, idempotency, rate-limit headers" and each provider's docs.

use serde::Deserialize;

use super::{AuthType, IdempotencyKeyMode};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Preset {
    Stripe,
    Sendgrid,
    Twilio,
    Github,
    Openai,
}

/// How a provider announces when a rate limit resets, besides `Retry-After`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ResetHeader {
    /// `X-RateLimit-Reset`-style: epoch seconds when large, else a delta in seconds.
    EpochOrDelta(&'static str),
    /// OpenAI-style `x-ratelimit-reset-requests: 6m0s` (a Go duration).
    GoDuration(&'static str),
}

/// What a preset provides. Static data: nothing here is a secret.
#[derive(Debug)]
pub struct PresetDefaults {
    pub base_url: &'static str,
    pub auth_type: AuthType,
    pub headers: &'static [(&'static str, &'static str)],
    pub retry_on_status: &'static [u16],
    pub idempotency_key: IdempotencyKeyMode,
    /// Statuses at which the provider guarantees it did not process the request, so even a POST
    /// without a key may be retried (Twilio's 429 is never processed).
    pub never_processed_statuses: &'static [u16],
    /// A response header that overrides the retry decision (`Stripe-Should-Retry: true|false`).
    pub should_retry_header: Option<&'static str>,
    pub reset_headers: &'static [ResetHeader],
    /// Wait to assume after a 429 that names no time (GitHub secondary limits: 60 s).
    pub default_429_wait_secs: Option<u64>,
}

impl Preset {
    pub fn name(self) -> &'static str {
        match self {
            Preset::Stripe => "stripe",
            Preset::Sendgrid => "sendgrid",
            Preset::Twilio => "twilio",
            Preset::Github => "github",
            Preset::Openai => "openai",
        }
    }

    pub fn defaults(self) -> &'static PresetDefaults {
        match self {
            Preset::Stripe => &STRIPE,
            Preset::Sendgrid => &SENDGRID,
            Preset::Twilio => &TWILIO,
            Preset::Github => &GITHUB,
            Preset::Openai => &OPENAI,
        }
    }
}

// Stripe: every POST accepts Idempotency-Key; the SDK retries 409 and >= 500 and obeys
// Stripe-Should-Retry.
static STRIPE: PresetDefaults = PresetDefaults {
    base_url: "https://api.stripe.com",
    auth_type: AuthType::Bearer,
    headers: &[],
    retry_on_status: &[409, 429, 500, 502, 503, 504],
    idempotency_key: IdempotencyKeyMode::Auto,
    never_processed_statuses: &[],
    should_retry_header: Some("stripe-should-retry"),
    reset_headers: &[],
    default_429_wait_secs: None,
};

// SendGrid: no idempotency keys, so a POST /v3/mail/send is sent once unless nothing was sent.
static SENDGRID: PresetDefaults = PresetDefaults {
    base_url: "https://api.sendgrid.com",
    auth_type: AuthType::Bearer,
    headers: &[],
    retry_on_status: &[429, 500, 502, 503, 504],
    idempotency_key: IdempotencyKeyMode::HeaderOnly,
    never_processed_statuses: &[],
    should_retry_header: None,
    reset_headers: &[ResetHeader::EpochOrDelta("x-ratelimit-reset")],
    default_429_wait_secs: None,
};

// Twilio: HTTP basic with the account SID and auth token; a 429 (error 20429) is never processed.
static TWILIO: PresetDefaults = PresetDefaults {
    base_url: "https://api.twilio.com",
    auth_type: AuthType::Basic,
    headers: &[],
    retry_on_status: &[429, 500, 502, 503, 504],
    idempotency_key: IdempotencyKeyMode::HeaderOnly,
    never_processed_statuses: &[429],
    should_retry_header: None,
    reset_headers: &[],
    default_429_wait_secs: None,
};

// GitHub: primary limits announce x-ratelimit-reset (epoch seconds); secondary limits send
// retry-after, else wait at least 60 s. GitHub rejects requests without a User-Agent.
static GITHUB: PresetDefaults = PresetDefaults {
    base_url: "https://api.github.com",
    auth_type: AuthType::Bearer,
    headers: &[
        ("accept", "application/vnd.github+json"),
        ("x-github-api-version", "2022-11-28"),
        ("user-agent", "outpost"),
    ],
    retry_on_status: &[429, 500, 502, 503, 504],
    idempotency_key: IdempotencyKeyMode::HeaderOnly,
    never_processed_statuses: &[],
    should_retry_header: None,
    reset_headers: &[ResetHeader::EpochOrDelta("x-ratelimit-reset")],
    default_429_wait_secs: Some(60),
};

// OpenAI: x-ratelimit-reset-requests / -tokens are Go-style durations ("6m0s", "120ms").
static OPENAI: PresetDefaults = PresetDefaults {
    base_url: "https://api.openai.com",
    auth_type: AuthType::Bearer,
    headers: &[],
    retry_on_status: &[429, 500, 502, 503, 504],
    idempotency_key: IdempotencyKeyMode::HeaderOnly,
    never_processed_statuses: &[],
    should_retry_header: None,
    reset_headers: &[
        ResetHeader::GoDuration("x-ratelimit-reset-requests"),
        ResetHeader::GoDuration("x-ratelimit-reset-tokens"),
    ],
    default_429_wait_secs: None,
};

/// Defaults for an upstream without a preset.
pub static GENERIC: PresetDefaults = PresetDefaults {
    base_url: "",
    auth_type: AuthType::Bearer,
    headers: &[],
    retry_on_status: &[429, 502, 503, 504],
    idempotency_key: IdempotencyKeyMode::HeaderOnly,
    never_processed_statuses: &[],
    should_retry_header: None,
    reset_headers: &[ResetHeader::EpochOrDelta("x-ratelimit-reset")],
    default_429_wait_secs: None,
};
