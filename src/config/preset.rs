//! Provider presets: `preset: stripe | sendgrid | twilio | github | openai | paypal | segment |
//! mixpanel | salesforce | hubspot | shopify | google | cloudflare_r2`.
//!
//! A preset fills in what is true of the provider's API (base URL, auth style, headers it wants,
//! statuses worth retrying, whether it honours `Idempotency-Key`, which headers announce rate
//! limit resets). Every key written beside `preset:` overrides the preset's value, key by key.
//! Sources: REFERENCE.md "Retries, idempotency, rate-limit headers" and each provider's docs.

use serde::Deserialize;

use super::{AuthType, IdempotencyKeyMode, QuotaSignal};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Preset {
    Stripe,
    Sendgrid,
    Twilio,
    Github,
    Openai,
    Paypal,
    Segment,
    Mixpanel,
    Salesforce,
    Hubspot,
    Shopify,
    Google,
    CloudflareR2,
}

/// Auth keys a preset fills in when the config leaves them out (credentials never: those are
/// the user's). `{base}` stands for the upstream's base URL.
#[derive(Debug, Default)]
pub struct AuthDefaults {
    pub token_url: Option<&'static str>,
    pub audience: Option<&'static str>,
    pub password: Option<&'static str>,
    pub header_name: Option<&'static str>,
    pub region: Option<&'static str>,
    pub service: Option<&'static str>,
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
    /// The provider's idempotency header (`Idempotency-Key`, PayPal's `PayPal-Request-Id`).
    pub idempotency_header: &'static str,
    /// Auth keys filled in when left out.
    pub auth_defaults: AuthDefaults,
    /// The quota headers the provider sends (`rate_limit.quota` unless the config says).
    pub quota: Option<QuotaSignal>,
    /// The GraphQL endpoint's path after the route prefix; `graphql:` is on by default.
    pub graphql_path: Option<&'static str>,
}

impl Preset {
    pub fn name(self) -> &'static str {
        match self {
            Preset::Stripe => "stripe",
            Preset::Sendgrid => "sendgrid",
            Preset::Twilio => "twilio",
            Preset::Github => "github",
            Preset::Openai => "openai",
            Preset::Paypal => "paypal",
            Preset::Segment => "segment",
            Preset::Mixpanel => "mixpanel",
            Preset::Salesforce => "salesforce",
            Preset::Hubspot => "hubspot",
            Preset::Shopify => "shopify",
            Preset::Google => "google",
            Preset::CloudflareR2 => "cloudflare_r2",
        }
    }

    pub fn defaults(self) -> &'static PresetDefaults {
        match self {
            Preset::Stripe => &STRIPE,
            Preset::Sendgrid => &SENDGRID,
            Preset::Twilio => &TWILIO,
            Preset::Github => &GITHUB,
            Preset::Openai => &OPENAI,
            Preset::Paypal => &PAYPAL,
            Preset::Segment => &SEGMENT,
            Preset::Mixpanel => &MIXPANEL,
            Preset::Salesforce => &SALESFORCE,
            Preset::Hubspot => &HUBSPOT,
            Preset::Shopify => &SHOPIFY,
            Preset::Google => &GOOGLE,
            Preset::CloudflareR2 => &CLOUDFLARE_R2,
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
    idempotency_header: "idempotency-key",
    auth_defaults: NO_AUTH_DEFAULTS,
    quota: None,
    graphql_path: None,
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
    idempotency_header: "idempotency-key",
    auth_defaults: NO_AUTH_DEFAULTS,
    // X-RateLimit-Limit / -Remaining / -Reset (epoch seconds) on every answer.
    quota: Some(QuotaSignal::XRateLimit),
    graphql_path: None,
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
    idempotency_header: "idempotency-key",
    auth_defaults: NO_AUTH_DEFAULTS,
    quota: None,
    graphql_path: None,
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
    idempotency_header: "idempotency-key",
    auth_defaults: NO_AUTH_DEFAULTS,
    quota: Some(QuotaSignal::XRateLimit),
    graphql_path: Some("/graphql"),
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
    idempotency_header: "idempotency-key",
    auth_defaults: NO_AUTH_DEFAULTS,
    quota: None,
    graphql_path: None,
};

const NO_AUTH_DEFAULTS: AuthDefaults = AuthDefaults {
    token_url: None,
    audience: None,
    password: None,
    header_name: None,
    region: None,
    service: None,
};

/// A preset's plain defaults, for the fields it does not set itself.
const PLAIN: PresetDefaults = PresetDefaults {
    base_url: "",
    auth_type: AuthType::Bearer,
    headers: &[],
    retry_on_status: &[429, 500, 502, 503, 504],
    idempotency_key: IdempotencyKeyMode::HeaderOnly,
    never_processed_statuses: &[],
    should_retry_header: None,
    reset_headers: &[],
    default_429_wait_secs: None,
    idempotency_header: "idempotency-key",
    auth_defaults: NO_AUTH_DEFAULTS,
    quota: None,
    graphql_path: None,
};

// PayPal: client credentials at /v1/oauth2/token with HTTP basic `client_id:secret` (token
// about 9 h); `PayPal-Request-Id` makes a POST idempotent (REFERENCE.md "Integrations").
// Sandbox: `base_url: https://api-m.sandbox.paypal.com`.
static PAYPAL: PresetDefaults = PresetDefaults {
    base_url: "https://api-m.paypal.com",
    auth_type: AuthType::OAuth2ClientCredentials,
    idempotency_key: IdempotencyKeyMode::Auto,
    idempotency_header: "paypal-request-id",
    auth_defaults: AuthDefaults {
        token_url: Some("{base}/v1/oauth2/token"),
        ..NO_AUTH_DEFAULTS
    },
    ..PLAIN
};

// Segment: HTTP basic with the write key as username and an empty password; `messageId` in
// the body deduplicates.
static SEGMENT: PresetDefaults = PresetDefaults {
    base_url: "https://api.segment.io",
    auth_type: AuthType::Basic,
    auth_defaults: AuthDefaults {
        password: Some(""),
        ..NO_AUTH_DEFAULTS
    },
    ..PLAIN
};

// Mixpanel `/import`: HTTP basic with a service account (`username:secret`).
static MIXPANEL: PresetDefaults = PresetDefaults {
    base_url: "https://api.mixpanel.com",
    auth_type: AuthType::Basic,
    ..PLAIN
};

// Salesforce JWT bearer: `iss` = consumer key, `sub` = username, `aud` = the login URL; the
// org's API host is the token answer's `instance_url` (`base_url: from_token`).
static SALESFORCE: PresetDefaults = PresetDefaults {
    base_url: super::FROM_TOKEN,
    auth_type: AuthType::OAuth2JwtBearer,
    auth_defaults: AuthDefaults {
        token_url: Some("https://login.salesforce.com/services/oauth2/token"),
        audience: Some("https://login.salesforce.com"),
        ..NO_AUTH_DEFAULTS
    },
    quota: Some(QuotaSignal::Salesforce),
    ..PLAIN
};

// HubSpot: a private-app token as bearer (or `type: oauth2_refresh_token`).
static HUBSPOT: PresetDefaults = PresetDefaults {
    base_url: "https://api.hubapi.com",
    auth_type: AuthType::Bearer,
    quota: Some(QuotaSignal::Hubspot),
    ..PLAIN
};

// Shopify Admin API: `X-Shopify-Access-Token`, per-shop host
// (`base_url: https://{shop}.myshopify.com/admin/api/2024-10`).
static SHOPIFY: PresetDefaults = PresetDefaults {
    base_url: "",
    auth_type: AuthType::Header,
    auth_defaults: AuthDefaults {
        header_name: Some("x-shopify-access-token"),
        ..NO_AUTH_DEFAULTS
    },
    quota: Some(QuotaSignal::Shopify),
    graphql_path: Some("/graphql.json"),
    ..PLAIN
};

// Google APIs: a service-account key file (JWT bearer, RS256, `kid` = `private_key_id`).
static GOOGLE: PresetDefaults = PresetDefaults {
    base_url: "https://www.googleapis.com",
    auth_type: AuthType::OAuth2JwtBearer,
    ..PLAIN
};

// Cloudflare R2: SigV4, service `s3`, region `auto`, the account's host
// (`base_url: https://<account_id>.r2.cloudflarestorage.com`).
static CLOUDFLARE_R2: PresetDefaults = PresetDefaults {
    base_url: "",
    auth_type: AuthType::AwsSigv4,
    auth_defaults: AuthDefaults {
        region: Some("auto"),
        service: Some("s3"),
        ..NO_AUTH_DEFAULTS
    },
    ..PLAIN
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
    idempotency_header: "idempotency-key",
    auth_defaults: NO_AUTH_DEFAULTS,
    quota: None,
    graphql_path: None,
};
