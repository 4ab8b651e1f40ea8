//! Stripe: `Stripe-Signature: t=<unix>,v1=<hex>[,v1=<hex>…]`, HMAC-SHA256 over `"{t}.{body}"`,
//! keyed with the whole `whsec_…` string as UTF-8 (stripe-python `WebhookSignature`). Any `v1`
//! may match (Stripe sends two while a secret is being rolled); `v0` and other schemes are
//! ignored, so a header with no `v1` at all is refused as missing.

use crate::config::HmacAlgorithm;

use super::{find_match, mac, parse_timestamp, Delivery, KeyBytes, Rejection, SignInput, Verified};

const HEADER: &str = "stripe-signature";

/// At most this many entries are looked at (a real header has two or three).
const MAX_ITEMS: usize = 32;

pub(super) fn verify(keys: &[KeyBytes], d: &Delivery<'_>) -> Result<Verified, Rejection> {
    let (_, value) = d.required(&[HEADER])?;
    let mut timestamp = None;
    let mut signatures = Vec::new();
    for item in value.split(',').take(MAX_ITEMS) {
        let Some((key, val)) = item.split_once('=') else {
            continue;
        };
        match key.trim() {
            "t" => timestamp = Some(val.trim()),
            // A v1 that is not hex can match nothing; it is skipped like any other scheme.
            "v1" => signatures.extend(hex::decode(val.trim()).ok()),
            _ => {}
        }
    }
    let Some(t) = timestamp else {
        return Err(Rejection::missing("Stripe-Signature has no timestamp (t=)"));
    };
    let ts = parse_timestamp("Stripe-Signature t=", t)?;
    if signatures.is_empty() {
        return Err(Rejection::missing("Stripe-Signature has no v1 signature"));
    }
    let prefix = format!("{ts}.");
    let expected = find_match(
        keys,
        HmacAlgorithm::Sha256,
        &[prefix.as_bytes(), d.body],
        &signatures,
    )
    .ok_or_else(|| Rejection::invalid("no v1 signature matches a configured secret"))?;
    d.check_time(ts)?;
    Ok(Verified {
        delivery_id: None,
        fingerprint: expected,
        timestamped: true,
    })
}

pub(super) fn sign(secret: &[u8], input: &SignInput<'_>) -> Vec<(String, String)> {
    let prefix = format!("{}.", input.timestamp);
    let sig = mac(
        HmacAlgorithm::Sha256,
        secret,
        &[prefix.as_bytes(), input.body],
    );
    vec![(
        "Stripe-Signature".into(),
        format!("t={},v1={}", input.timestamp, hex::encode(sig)),
    )]
}

#[cfg(test)]
mod tests {
    use super::super::tests::{delivery, headers, keys};
    use super::*;

    const BODY: &[u8] = br#"{"id":"evt_test_webhook","object":"event"}"#;

    /// REFERENCE.md: stripe-python 16.1 `generate_signature_header`.
    #[test]
    fn published_vector() {
        let input = SignInput {
            body: BODY,
            timestamp: 1_700_000_000,
            id: None,
            url: None,
        };
        let lines = sign(b"whsec_test_secret", &input);
        assert_eq!(
            lines[0].1,
            "t=1700000000,v1=d95c6b7477fbd7e9f90b1b0ef5f9c7ac25abca5382460e0d988c2b2a5b71b990"
        );
        let h = headers(&[("Stripe-Signature", &lines[0].1)]);
        assert!(verify(
            &keys(&["whsec_test_secret"]),
            &delivery(&h, BODY, 1_700_000_000)
        )
        .is_ok());
    }

    #[test]
    fn second_v1_and_v0_and_unknown_schemes() {
        let good = "d95c6b7477fbd7e9f90b1b0ef5f9c7ac25abca5382460e0d988c2b2a5b71b990";
        let value = format!("t=1700000000,v0=abc,v1={},v1={good},v9=zz", "00".repeat(32));
        let h = headers(&[("Stripe-Signature", &value)]);
        assert!(verify(
            &keys(&["whsec_test_secret"]),
            &delivery(&h, BODY, 1_700_000_000)
        )
        .is_ok());
        let h = headers(&[("Stripe-Signature", &format!("t=1700000000,v0={good}"))]);
        let err = verify(
            &keys(&["whsec_test_secret"]),
            &delivery(&h, BODY, 1_700_000_000),
        )
        .unwrap_err();
        assert!(matches!(err, Rejection::Missing(_)), "{err:?}");
    }
}
