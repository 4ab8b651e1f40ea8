//! Helpers for the scheme tests, and the property test that no header can make a parser panic.

use std::time::Duration;

use http::header::{HeaderMap, HeaderName, HeaderValue};
use proptest::prelude::*;

use super::*;
use crate::config::{Secret, WebhookScheme};

pub(super) fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
    let mut h = HeaderMap::new();
    for (k, v) in pairs {
        h.append(
            HeaderName::from_bytes(k.as_bytes()).unwrap(),
            HeaderValue::from_str(v).unwrap(),
        );
    }
    h
}

pub(super) fn keys(secrets: &[&str]) -> Vec<KeyBytes> {
    secrets
        .iter()
        .map(|s| KeyBytes(s.as_bytes().to_vec()))
        .collect()
}

pub(super) fn delivery<'a>(headers: &'a HeaderMap, body: &'a [u8], now: i64) -> Delivery<'a> {
    Delivery {
        headers,
        body,
        query: None,
        now,
        tolerance: Some(Duration::from_secs(300)),
    }
}

/// A verifier for every scheme (sendgrid with a fixed test key).
fn all_verifiers() -> Vec<Verifier> {
    use p256::pkcs8::EncodePublicKey;
    let public = p256::ecdsa::SigningKey::from_slice(&[9u8; 32])
        .unwrap()
        .verifying_key()
        .to_public_key_der()
        .unwrap();
    let sendgrid_key = B64_OUT.encode(public.as_bytes());
    [
        WebhookScheme::Stripe,
        WebhookScheme::Github,
        WebhookScheme::StandardWebhooks,
        WebhookScheme::Slack,
        WebhookScheme::Shopify,
        WebhookScheme::Twilio,
        WebhookScheme::Sendgrid,
        WebhookScheme::Hmac,
    ]
    .into_iter()
    .map(|scheme| {
        let secret = match scheme {
            WebhookScheme::Sendgrid => sendgrid_key.clone(),
            WebhookScheme::StandardWebhooks => "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw".into(),
            _ => "secret".into(),
        };
        let mut spec = Spec::new(scheme, vec![Secret::new(secret)]);
        spec.public_url = Some("https://example.com/hook".into());
        spec.header = Some(HeaderName::from_static("x-signature"));
        spec.prefix = "sha256=".into();
        spec.timestamp_header = Some(HeaderName::from_static("x-timestamp"));
        Verifier::new(spec).unwrap()
    })
    .collect()
}

const NAMES: &[&str] = &[
    "stripe-signature",
    "x-hub-signature-256",
    "x-github-delivery",
    "webhook-id",
    "webhook-timestamp",
    "webhook-signature",
    "svix-id",
    "svix-timestamp",
    "svix-signature",
    "x-slack-signature",
    "x-slack-request-timestamp",
    "x-shopify-hmac-sha256",
    "shopify-hmac-sha256",
    "x-shopify-webhook-id",
    "x-twilio-signature",
    "x-twilio-webhooks-signature-settings",
    "x-twilio-email-event-webhook-signature",
    "x-twilio-email-event-webhook-timestamp",
    "x-signature",
    "x-timestamp",
    "content-type",
];

fn header_value() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..120),
        "[ -~]{0,120}".prop_map(String::into_bytes),
        // Long values and all of Unicode (header values may carry obs-text bytes).
        proptest::collection::vec(any::<u8>(), 0..16_384),
        "\\PC{0,2048}".prop_map(String::into_bytes),
        "(v1,[A-Za-z0-9+/=]{0,64} ){0,200}".prop_map(String::into_bytes),
        "(t=-?[0-9]{0,20}|v1=[0-9a-fA-F]{0,70}|v0=[0-9a-f]{0,8}|=|,| ){0,8}"
            .prop_map(String::into_bytes),
        "(v1,[A-Za-z0-9+/=]{0,50}|v1a,|,| |v2,x){0,6}".prop_map(String::into_bytes),
        "(sha256=|v0=)?[0-9a-f]{0,130}".prop_map(String::into_bytes),
        "[A-Za-z0-9+/=]{0,100}".prop_map(String::into_bytes),
        "-?[0-9]{0,25}(\\.[0-9]{0,3})?".prop_map(String::into_bytes),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn malformed_headers_never_panic(
        pairs in proptest::collection::vec((0..NAMES.len(), header_value()), 0..8),
        body in proptest::collection::vec(any::<u8>(), 0..4096),
        query in proptest::option::of("[ -~]{0,60}|\\PC{0,1024}"),
        now in any::<i64>(),
    ) {
        let mut h = HeaderMap::new();
        for (i, value) in pairs {
            if let Ok(v) = HeaderValue::from_bytes(&value) {
                h.append(HeaderName::from_static(NAMES[i]), v);
            }
        }
        for verifier in all_verifiers() {
            let result = verifier.verify(&h, &body, query.as_deref(), now);
            // Nothing random can be a valid signature.
            prop_assert!(result.is_err());
        }
    }

    #[test]
    fn timestamps_at_the_extremes_never_panic(ts in any::<i64>(), now in any::<i64>()) {
        let h = HeaderMap::new();
        let d = Delivery { headers: &h, body: b"", query: None, now, tolerance: Some(Duration::from_secs(u64::MAX / 2)) };
        let _ = d.check_time(ts);
        let _ = parse_timestamp("t", &ts.to_string());
    }
}

#[test]
fn every_secret_is_tried() {
    let body = b"{}";
    let lines = provider_headers(
        &Spec::new(WebhookScheme::Github, vec![Secret::new("new")]),
        &SignInput {
            body,
            timestamp: 0,
            id: None,
            url: None,
        },
    )
    .unwrap();
    let h = headers(&[(&lines[0].0, &lines[0].1)]);
    let v = Verifier::new(Spec::new(
        WebhookScheme::Github,
        vec![Secret::new("old"), Secret::new("new")],
    ))
    .unwrap();
    assert!(v.verify(&h, body, None, 0).is_ok());
    let v = Verifier::new(Spec::new(WebhookScheme::Github, vec![Secret::new("old")])).unwrap();
    assert!(matches!(
        v.verify(&h, body, None, 0),
        Err(Rejection::Invalid(_))
    ));
}

#[test]
fn rejections_map_to_the_contract() {
    assert_eq!(Rejection::missing("x").kind(), "webhook_signature_missing");
    assert_eq!(Rejection::missing("x").status(), 400);
    assert_eq!(Rejection::invalid("x").status(), 401);
    assert_eq!(
        Rejection::Stale("x".into()).kind(),
        "webhook_timestamp_out_of_tolerance"
    );
    assert_eq!(Rejection::Stale("x".into()).result(), "stale");
}

#[test]
fn tolerance_off_skips_the_clock() {
    let mut spec = Spec::new(WebhookScheme::Stripe, vec![Secret::new("whsec_x")]);
    let lines = provider_headers(
        &spec,
        &SignInput {
            body: b"{}",
            timestamp: 1,
            id: None,
            url: None,
        },
    )
    .unwrap();
    let h = headers(&[(&lines[0].0, &lines[0].1)]);
    assert!(matches!(
        Verifier::new(spec.clone())
            .unwrap()
            .verify(&h, b"{}", None, 1_000_000),
        Err(Rejection::Stale(_))
    ));
    spec.tolerance = None;
    assert!(Verifier::new(spec)
        .unwrap()
        .verify(&h, b"{}", None, 1_000_000)
        .is_ok());
}

#[test]
fn secrets_are_checked_for_their_scheme() {
    assert!(check_secret(WebhookScheme::Sendgrid, &Secret::new("bm90IGEga2V5")).is_err());
    assert!(check_secret(WebhookScheme::StandardWebhooks, &Secret::new("whsec_***")).is_err());
    assert!(check_secret(
        WebhookScheme::StandardWebhooks,
        &Secret::new("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")
    )
    .is_ok());
    assert!(check_secret(WebhookScheme::Stripe, &Secret::new("anything")).is_ok());
}
