//! Standard Webhooks (Svix): `webhook-id`, `webhook-timestamp` and `webhook-signature:
//! v1,<base64> [v1,<base64> …]` (or the same with `svix-` names), HMAC-SHA256 over
//! `"{id}.{timestamp}.{body}"`, keyed with the base64-decoded secret after its `whsec_` prefix
//! (standardwebhooks `Webhook`). Signatures of other versions are skipped, malformed entries
//! too; the id is signed, so it is the replay key.

use base64::Engine as _;

use crate::config::HmacAlgorithm;

use super::{
    find_match, mac, parse_timestamp, Delivery, KeyBytes, Rejection, SignInput, Verified, B64,
    B64_OUT,
};

const IDS: &[&str] = &["webhook-id", "svix-id"];
const TIMESTAMPS: &[&str] = &["webhook-timestamp", "svix-timestamp"];
const SIGNATURES: &[&str] = &["webhook-signature", "svix-signature"];

/// At most this many signatures are looked at.
const MAX_SIGNATURES: usize = 32;

/// `whsec_<base64>` (the prefix is optional) to key bytes (the shape is config's to check:
/// `config::forms`).
pub(crate) fn secret_key(secret: &str) -> Result<KeyBytes, String> {
    crate::config::forms::standard_webhooks_key(secret).map(KeyBytes)
}

pub(super) fn verify(keys: &[KeyBytes], d: &Delivery<'_>) -> Result<Verified, Rejection> {
    // One family of names throughout: a delivery mixing webhook-* and svix-* is not Svix's.
    let family = if d.headers.contains_key(SIGNATURES[0]) {
        0
    } else if d.headers.contains_key(SIGNATURES[1]) {
        1
    } else {
        return Err(Rejection::missing(
            "webhook-signature (or svix-signature) header is missing",
        ));
    };
    let (_, id) = d.required(&IDS[family..=family])?;
    let (ts_name, ts_text) = d.required(&TIMESTAMPS[family..=family])?;
    let (_, value) = d.required(&SIGNATURES[family..=family])?;
    let ts = parse_timestamp(ts_name, ts_text)?;
    let signatures: Vec<Vec<u8>> = value
        .split(' ')
        .filter(|s| !s.is_empty())
        .take(MAX_SIGNATURES)
        .filter_map(|entry| entry.split_once(','))
        .filter(|(version, _)| *version == "v1")
        .filter_map(|(_, sig)| B64.decode(sig).ok())
        .collect();
    if signatures.is_empty() {
        return Err(Rejection::missing(
            "webhook-signature has no well-formed v1 signature",
        ));
    }
    let signed_prefix = format!("{id}.{ts}.");
    let expected = find_match(
        keys,
        HmacAlgorithm::Sha256,
        &[signed_prefix.as_bytes(), d.body],
        &signatures,
    )
    .ok_or_else(|| Rejection::invalid("no v1 signature matches a configured secret"))?;
    d.check_time(ts)?;
    Ok(Verified {
        delivery_id: Some(id.to_string()),
        fingerprint: expected,
        timestamped: true,
    })
}

/// The `v1,<base64>` signature of one message.
pub(crate) fn signature(key: &[u8], id: &str, timestamp: i64, body: &[u8]) -> String {
    let prefix = format!("{id}.{timestamp}.");
    format!(
        "v1,{}",
        B64_OUT.encode(mac(HmacAlgorithm::Sha256, key, &[prefix.as_bytes(), body]))
    )
}

/// A fresh message id in the Svix style.
pub(crate) fn new_id() -> String {
    format!("msg_{}", uuid::Uuid::new_v4().simple())
}

pub(super) fn sign(key: &[u8], input: &SignInput<'_>) -> Vec<(String, String)> {
    let id = input.id.map_or_else(new_id, str::to_string);
    let sig = signature(key, &id, input.timestamp, input.body);
    vec![
        ("webhook-id".into(), id),
        ("webhook-timestamp".into(), input.timestamp.to_string()),
        ("webhook-signature".into(), sig),
    ]
}

#[cfg(test)]
mod tests {
    use super::super::tests::{delivery, headers};
    use super::*;

    const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    const ID: &str = "msg_p5jXN8AQM9LWM0D4loKWxJek";
    const BODY: &[u8] = br#"{"test": 2432232314}"#;
    const SIG: &str = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=";

    /// REFERENCE.md: the svix golden vector.
    #[test]
    fn published_vector_both_header_families() {
        let key = secret_key(SECRET).unwrap();
        assert_eq!(signature(&key.0, ID, 1_614_265_330, BODY), SIG);
        for prefix in ["webhook", "svix"] {
            let h = headers(&[
                (&format!("{prefix}-id"), ID),
                (&format!("{prefix}-timestamp"), "1614265330"),
                (
                    &format!("{prefix}-signature"),
                    &format!("v2,abc bogus v1,AAAA {SIG}"),
                ),
            ]);
            let v = verify(
                std::slice::from_ref(&key),
                &delivery(&h, BODY, 1_614_265_330),
            )
            .unwrap();
            assert_eq!(v.delivery_id.as_deref(), Some(ID));
        }
    }

    #[test]
    fn only_other_versions_is_missing() {
        let key = secret_key(SECRET).unwrap();
        let h = headers(&[
            ("webhook-id", ID),
            ("webhook-timestamp", "1614265330"),
            (
                "webhook-signature",
                "v1a,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=",
            ),
        ]);
        assert!(matches!(
            verify(&[key], &delivery(&h, BODY, 1_614_265_330)),
            Err(Rejection::Missing(_))
        ));
    }

    #[test]
    fn secret_must_be_base64() {
        assert!(secret_key("whsec_***").is_err());
        assert!(secret_key("whsec_").is_err());
        assert!(secret_key("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").is_ok());
    }
}
