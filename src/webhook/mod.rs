//! Webhooks: verify the signatures of inbound provider deliveries, and sign outbound ones.
//!
//! ```text
//! webhook_listen → receiver (route by exact path, body limit) → Verifier (one file per scheme)
//!                → replay cache → forward to the application (`forward_to`)
//! ```
//!
//! Verification is pure: [`Verifier::verify`] takes the header map, the **raw** body bytes (never
//! re-serialized), the request's query string and the current time, and returns either the
//! delivery's replay keys or a [`Rejection`]. Every comparison of a MAC is constant time on raw
//! bytes (`subtle`), every secret of a webhook is tried (rotation: any one verifies), and no
//! header value, however malformed, can make a parser panic (property-tested below).
//! The algorithms and the published vectors are in REFERENCE.md "Webhook signature schemes".
//!
//! Signing lives beside verification in each scheme file, used by `outpost webhook sign` (what a
//! provider would send, for users' tests) and, for `standard_webhooks` and generic HMAC, by
//! `stack/sign.rs` for the outbound auth types that sign an application's own webhook deliveries.

pub mod cli;
mod github;
mod hmac_generic;
pub mod receiver;
pub mod replay;
pub mod replay_redis;
mod sendgrid;
mod shopify;
mod slack;
pub(crate) mod standard;
mod stripe;
mod twilio;

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig};
use base64::engine::{DecodePaddingMode, Engine as _};
use hmac::{Hmac, Mac};
use http::header::{HeaderMap, HeaderName};
use subtle::ConstantTimeEq;

use crate::config::{HmacAlgorithm, Secret, SignatureEncoding, Webhook, WebhookScheme};

/// Why a delivery was refused. Messages name headers and limits, never a header value, a
/// signature, a body or a secret.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    /// A signature header is absent or cannot be parsed: `400 webhook_signature_missing`.
    #[error("{0}")]
    Missing(String),
    /// No configured secret produces the signature: `401 webhook_signature_invalid`.
    #[error("{0}")]
    Invalid(String),
    /// The signed timestamp is too old or too far in the future:
    /// `401 webhook_timestamp_out_of_tolerance`.
    #[error("{0}")]
    Stale(String),
}

impl Rejection {
    fn missing(msg: impl Into<String>) -> Self {
        Rejection::Missing(msg.into())
    }

    fn invalid(msg: impl Into<String>) -> Self {
        Rejection::Invalid(msg.into())
    }

    /// The `x-outpost-error` type of DESIGN.md.
    pub fn kind(&self) -> &'static str {
        match self {
            Rejection::Missing(_) => "webhook_signature_missing",
            Rejection::Invalid(_) => "webhook_signature_invalid",
            Rejection::Stale(_) => "webhook_timestamp_out_of_tolerance",
        }
    }

    pub fn status(&self) -> http::StatusCode {
        match self {
            Rejection::Missing(_) => http::StatusCode::BAD_REQUEST,
            Rejection::Invalid(_) | Rejection::Stale(_) => http::StatusCode::UNAUTHORIZED,
        }
    }

    /// The `result` label of `outpost_webhooks_total`.
    pub fn result(&self) -> &'static str {
        match self {
            Rejection::Missing(_) => "signature_missing",
            Rejection::Invalid(_) => "signature_invalid",
            Rejection::Stale(_) => "stale",
        }
    }
}

/// What a verified delivery is remembered by, so a replay is recognised.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verified {
    /// The provider's delivery id, when it sends one (`webhook-id`, `X-GitHub-Delivery`,
    /// `X-Shopify-Webhook-Id`). Signed only for `standard_webhooks`.
    pub delivery_id: Option<String>,
    /// A value that is the same for every copy of this delivery and that an attacker cannot
    /// vary without the secret: the expected MAC for HMAC schemes, a hash of the signed bytes
    /// for SendGrid (ECDSA signatures are randomized and malleable).
    pub fingerprint: Vec<u8>,
    /// True when the scheme signs a timestamp (replay entries then live for the tolerance
    /// window on both sides of now).
    pub timestamped: bool,
}

/// Everything a verifier needs to know about one webhook; built from the config or the CLI.
#[derive(Clone, Debug)]
pub struct Spec {
    pub scheme: WebhookScheme,
    /// Any one verifies. `standard_webhooks`: `whsec_` + base64; `sendgrid`: base64 DER (or PEM)
    /// SubjectPublicKeyInfo of the P-256 verification key; others: the secret as UTF-8.
    pub secrets: Vec<Secret>,
    /// `None`: timestamps are not checked (the CLI's `--tolerance off`).
    pub tolerance: Option<Duration>,
    /// `twilio`: the URL the provider calls, without query.
    pub public_url: Option<String>,
    /// `hmac`: signature header, prefix, algorithm, encoding and optional timestamp header.
    pub header: Option<HeaderName>,
    pub prefix: String,
    pub algorithm: HmacAlgorithm,
    pub encoding: SignatureEncoding,
    pub timestamp_header: Option<HeaderName>,
}

impl Spec {
    /// A spec with the config's defaults (5 min tolerance, sha256, hex).
    pub fn new(scheme: WebhookScheme, secrets: Vec<Secret>) -> Self {
        Spec {
            scheme,
            secrets,
            tolerance: Some(crate::config::DEFAULT_WEBHOOK_TOLERANCE),
            public_url: None,
            header: None,
            prefix: String::new(),
            algorithm: HmacAlgorithm::Sha256,
            encoding: SignatureEncoding::Hex,
            timestamp_header: None,
        }
    }

    pub fn from_webhook(hook: &Webhook) -> Self {
        Spec {
            scheme: hook.scheme,
            secrets: hook.secrets.clone(),
            tolerance: Some(hook.tolerance),
            public_url: hook.public_url.clone(),
            header: hook.header.clone(),
            prefix: hook.prefix.clone(),
            algorithm: hook.algorithm,
            encoding: hook.encoding,
            timestamp_header: hook.timestamp_header.clone(),
        }
    }
}

/// Key material, decoded once per config generation. `Debug` never shows it.
#[derive(Clone)]
pub(crate) struct KeyBytes(pub(crate) Vec<u8>);

impl fmt::Debug for KeyBytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

#[derive(Clone, Debug)]
enum Keys {
    Hmac(Vec<KeyBytes>),
    Ecdsa(Vec<p256::ecdsa::VerifyingKey>),
}

/// A ready-to-use verifier for one webhook.
#[derive(Clone, Debug)]
pub struct Verifier {
    spec: Spec,
    keys: Keys,
}

impl Verifier {
    /// Decode the keys. Errors name the secret's position, never its value.
    pub fn new(spec: Spec) -> Result<Self, String> {
        if spec.secrets.is_empty() {
            return Err("at least one secret is needed".into());
        }
        let keys = match spec.scheme {
            WebhookScheme::Sendgrid => Keys::Ecdsa(
                spec.secrets
                    .iter()
                    .enumerate()
                    .map(|(i, s)| {
                        sendgrid::public_key(s.expose()).map_err(|e| format!("secrets[{i}]: {e}"))
                    })
                    .collect::<Result<_, _>>()?,
            ),
            WebhookScheme::StandardWebhooks => Keys::Hmac(
                spec.secrets
                    .iter()
                    .enumerate()
                    .map(|(i, s)| {
                        standard::secret_key(s.expose()).map_err(|e| format!("secrets[{i}]: {e}"))
                    })
                    .collect::<Result<_, _>>()?,
            ),
            _ => Keys::Hmac(
                spec.secrets
                    .iter()
                    .map(|s| KeyBytes(s.expose().as_bytes().to_vec()))
                    .collect(),
            ),
        };
        if spec.scheme == WebhookScheme::Hmac && spec.header.is_none() {
            return Err("scheme `hmac` needs a signature header".into());
        }
        if spec.scheme == WebhookScheme::Twilio && spec.public_url.is_none() {
            return Err("scheme `twilio` needs the public URL the provider calls".into());
        }
        Ok(Verifier { spec, keys })
    }

    pub fn from_webhook(hook: &Webhook) -> Result<Self, String> {
        Self::new(Spec::from_webhook(hook))
    }

    pub fn scheme(&self) -> WebhookScheme {
        self.spec.scheme
    }

    /// Verify one delivery. `query` is the request's query string (Twilio signs it), `now` the
    /// current Unix time in seconds.
    pub fn verify(
        &self,
        headers: &HeaderMap,
        body: &[u8],
        query: Option<&str>,
        now: i64,
    ) -> Result<Verified, Rejection> {
        let d = Delivery {
            headers,
            body,
            query,
            now,
            tolerance: self.spec.tolerance,
        };
        match (&self.keys, self.spec.scheme) {
            (Keys::Hmac(keys), WebhookScheme::Stripe) => stripe::verify(keys, &d),
            (Keys::Hmac(keys), WebhookScheme::Github) => github::verify(keys, &d),
            (Keys::Hmac(keys), WebhookScheme::StandardWebhooks) => standard::verify(keys, &d),
            (Keys::Hmac(keys), WebhookScheme::Slack) => slack::verify(keys, &d),
            (Keys::Hmac(keys), WebhookScheme::Shopify) => shopify::verify(keys, &d),
            (Keys::Hmac(keys), WebhookScheme::Twilio) => twilio::verify(
                keys,
                &d,
                self.spec.public_url.as_deref().unwrap_or_default(),
            ),
            (Keys::Hmac(keys), WebhookScheme::Hmac) => hmac_generic::verify(keys, &d, &self.spec),
            (Keys::Ecdsa(keys), WebhookScheme::Sendgrid) => sendgrid::verify(keys, &d),
            _ => Err(Rejection::invalid("verifier keys do not match the scheme")),
        }
    }
}

/// One delivery as the scheme files see it.
pub(crate) struct Delivery<'a> {
    pub headers: &'a HeaderMap,
    pub body: &'a [u8],
    pub query: Option<&'a str>,
    pub now: i64,
    pub tolerance: Option<Duration>,
}

impl Delivery<'_> {
    /// The first of `names` present, as text. A value that is not visible ASCII is malformed.
    fn header(&self, names: &[&'static str]) -> Result<Option<(&'static str, &str)>, Rejection> {
        for name in names {
            if let Some(value) = self.headers.get(*name) {
                return match value.to_str() {
                    Ok(text) => Ok(Some((name, text.trim()))),
                    Err(_) => Err(Rejection::missing(format!("{name} header is malformed"))),
                };
            }
        }
        Ok(None)
    }

    /// Like [`Delivery::header`], but absent is a rejection too.
    fn required(&self, names: &[&'static str]) -> Result<(&'static str, &str), Rejection> {
        match self.header(names)? {
            Some((name, value)) if !value.is_empty() => Ok((name, value)),
            Some((name, _)) => Err(Rejection::missing(format!("{name} header is empty"))),
            None => Err(Rejection::missing(format!(
                "{} header is missing",
                names[0]
            ))),
        }
    }

    /// Check a signed Unix timestamp against the tolerance, in both directions.
    fn check_time(&self, timestamp: i64) -> Result<(), Rejection> {
        let Some(tolerance) = self.tolerance else {
            return Ok(());
        };
        let skew = i128::from(self.now) - i128::from(timestamp);
        let limit = i128::from(tolerance.as_secs());
        if skew > limit {
            Err(Rejection::Stale(format!(
                "timestamp is {skew}s old, more than the {limit}s tolerance"
            )))
        } else if -skew > limit {
            Err(Rejection::Stale(format!(
                "timestamp is {}s in the future, more than the {limit}s tolerance",
                -skew
            )))
        } else {
            Ok(())
        }
    }
}

/// Check that a resolved secret has the form its scheme needs (`sendgrid`: a P-256 public key;
/// `standard_webhooks`: `whsec_` + base64), for config validation. The message never contains
/// the secret.
pub fn check_secret(scheme: WebhookScheme, secret: &Secret) -> Result<(), String> {
    crate::config::forms::check_webhook_secret(scheme, secret)
}

/// Parse a Unix timestamp in seconds (digits only, as every scheme sends it).
fn parse_timestamp(name: &str, text: &str) -> Result<i64, Rejection> {
    let text = text.trim();
    if text.is_empty() || text.len() > 18 || !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(Rejection::missing(format!(
            "{name} is not a Unix timestamp"
        )));
    }
    text.parse()
        .map_err(|_| Rejection::missing(format!("{name} is not a Unix timestamp")))
}

/// Seconds since the Unix epoch.
pub fn now_unix() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// HMAC of the concatenation of `parts`.
pub(crate) fn mac(algorithm: HmacAlgorithm, key: &[u8], parts: &[&[u8]]) -> Vec<u8> {
    fn run<M: Mac + hmac::digest::KeyInit>(key: &[u8], parts: &[&[u8]]) -> Vec<u8> {
        let mut m = <M as hmac::digest::KeyInit>::new_from_slice(key)
            .expect("HMAC takes keys of any length");
        for part in parts {
            m.update(part);
        }
        m.finalize().into_bytes().to_vec()
    }
    match algorithm {
        HmacAlgorithm::Sha1 => run::<Hmac<sha1::Sha1>>(key, parts),
        HmacAlgorithm::Sha256 => run::<Hmac<sha2::Sha256>>(key, parts),
        HmacAlgorithm::Sha512 => run::<Hmac<sha2::Sha512>>(key, parts),
    }
}

/// Constant-time equality of two byte strings (length is not secret).
pub(crate) fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && bool::from(a.ct_eq(b))
}

/// Try every key against every candidate signature; return the expected MAC that matched.
/// Every pair is compared, so the time taken does not depend on which one matched.
pub(crate) fn find_match(
    keys: &[KeyBytes],
    algorithm: HmacAlgorithm,
    parts: &[&[u8]],
    candidates: &[Vec<u8>],
) -> Option<Vec<u8>> {
    let mut found = None;
    for key in keys {
        let expected = mac(algorithm, &key.0, parts);
        let mut hit = false;
        for candidate in candidates {
            hit |= ct_eq(&expected, candidate);
        }
        if hit && found.is_none() {
            found = Some(expected);
        }
    }
    found
}

/// Standard base64 that accepts missing padding (providers and SDKs differ).
pub(crate) const B64: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// The canonical encoder (padded standard base64).
pub(crate) const B64_OUT: GeneralPurpose = base64::engine::general_purpose::STANDARD;

pub(crate) fn decode(encoding: SignatureEncoding, text: &str) -> Option<Vec<u8>> {
    match encoding {
        SignatureEncoding::Hex => hex::decode(text.trim()).ok(),
        SignatureEncoding::Base64 => B64.decode(text.trim()).ok(),
    }
}

pub(crate) fn encode(encoding: SignatureEncoding, bytes: &[u8]) -> String {
    match encoding {
        SignatureEncoding::Hex => hex::encode(bytes),
        SignatureEncoding::Base64 => B64_OUT.encode(bytes),
    }
}

/// What `outpost webhook sign` (and tests) need to produce a provider's headers.
#[derive(Clone, Debug)]
pub struct SignInput<'a> {
    pub body: &'a [u8],
    /// Unix seconds.
    pub timestamp: i64,
    /// Delivery id (`standard_webhooks`: `webhook-id`; github/shopify: delivery id header).
    pub id: Option<&'a str>,
    /// `twilio`: the full URL the provider calls, query included.
    pub url: Option<&'a str>,
}

/// The header lines a provider would send for `input`, signed with the spec's first secret
/// (`sendgrid`: a base64 DER PKCS#8 or PEM P-256 private key).
pub fn provider_headers(
    spec: &Spec,
    input: &SignInput<'_>,
) -> Result<Vec<(String, String)>, String> {
    let secret = spec.secrets.first().ok_or("a secret is needed")?;
    match spec.scheme {
        WebhookScheme::Stripe => Ok(stripe::sign(secret.expose().as_bytes(), input)),
        WebhookScheme::Github => Ok(github::sign(secret.expose().as_bytes(), input)),
        WebhookScheme::StandardWebhooks => {
            let key = standard::secret_key(secret.expose())?;
            Ok(standard::sign(&key.0, input))
        }
        WebhookScheme::Slack => Ok(slack::sign(secret.expose().as_bytes(), input)),
        WebhookScheme::Shopify => Ok(shopify::sign(secret.expose().as_bytes(), input)),
        WebhookScheme::Twilio => twilio::sign(secret.expose().as_bytes(), input),
        WebhookScheme::Sendgrid => sendgrid::sign(secret.expose(), input),
        WebhookScheme::Hmac => hmac_generic::sign(secret.expose().as_bytes(), spec, input),
    }
}

#[cfg(test)]
mod tests;
