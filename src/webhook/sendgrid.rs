//! SendGrid Event Webhook: `X-Twilio-Email-Event-Webhook-Signature` (base64 DER ECDSA
//! signature) and `X-Twilio-Email-Event-Webhook-Timestamp`, ECDSA P-256 with SHA-256 over
//! `timestamp + body` (sendgrid-python `EventWebhook`). The configured secret is the
//! verification key SendGrid shows: base64 DER SubjectPublicKeyInfo (a PEM `PUBLIC KEY` block
//! is accepted too). SendGrid's SDK has no replay window; Outpost applies `tolerance` to the
//! signed timestamp like every other timestamped scheme.

use base64::Engine as _;
use p256::ecdsa::signature::{Signer as _, Verifier as _};
use p256::ecdsa::{Signature, SigningKey, VerifyingKey};
use p256::pkcs8::DecodePrivateKey;
use sha2::{Digest, Sha256};

use crate::config::forms::der;

use super::{parse_timestamp, Delivery, Rejection, SignInput, Verified, B64, B64_OUT};

const SIGNATURE: &str = "x-twilio-email-event-webhook-signature";
const TIMESTAMP: &str = "x-twilio-email-event-webhook-timestamp";

/// A SendGrid verification key: base64 DER SubjectPublicKeyInfo or PEM, P-256.
pub(super) fn public_key(text: &str) -> Result<VerifyingKey, String> {
    crate::config::forms::sendgrid_public_key(text)
}

pub(super) fn verify(keys: &[VerifyingKey], d: &Delivery<'_>) -> Result<Verified, Rejection> {
    let (_, value) = d.required(&[SIGNATURE])?;
    let (_, ts_text) = d.required(&[TIMESTAMP])?;
    let ts = parse_timestamp("X-Twilio-Email-Event-Webhook-Timestamp", ts_text)?;
    let der = B64
        .decode(value)
        .map_err(|_| Rejection::missing("X-Twilio-Email-Event-Webhook-Signature is not base64"))?;
    let sig = Signature::from_der(&der).map_err(|_| {
        Rejection::missing("X-Twilio-Email-Event-Webhook-Signature is not a DER ECDSA signature")
    })?;
    let mut payload = Vec::with_capacity(ts_text.len() + d.body.len());
    payload.extend_from_slice(ts_text.as_bytes());
    payload.extend_from_slice(d.body);
    let mut ok = false;
    for key in keys {
        ok |= key.verify(&payload, &sig).is_ok();
    }
    if !ok {
        return Err(Rejection::invalid(
            "signature does not verify with a configured public key",
        ));
    }
    d.check_time(ts)?;
    // ECDSA signatures are randomized and malleable: remember what was signed instead.
    Ok(Verified {
        delivery_id: None,
        fingerprint: Sha256::digest(&payload).to_vec(),
        timestamped: true,
    })
}

/// Sign as SendGrid would, with a P-256 private key (base64 DER PKCS#8, or PEM `PRIVATE KEY`).
pub(super) fn sign(
    private_key: &str,
    input: &SignInput<'_>,
) -> Result<Vec<(String, String)>, String> {
    let key = SigningKey::from_pkcs8_der(&der(private_key, "PRIVATE KEY")?).map_err(|_| {
        "sendgrid signing needs a P-256 private key as base64 DER PKCS#8 (or PEM)".to_string()
    })?;
    let ts = input.timestamp.to_string();
    let mut payload = ts.clone().into_bytes();
    payload.extend_from_slice(input.body);
    let sig: Signature = key.sign(&payload);
    Ok(vec![
        (
            "X-Twilio-Email-Event-Webhook-Signature".into(),
            B64_OUT.encode(sig.to_der().as_bytes()),
        ),
        ("X-Twilio-Email-Event-Webhook-Timestamp".into(), ts),
    ])
}

/// The base64 DER SubjectPublicKeyInfo of a private key (for `outpost webhook sign` users who
/// need the matching verification key).
pub fn public_key_of(private_key: &str) -> Result<String, String> {
    use p256::pkcs8::EncodePublicKey;
    let key = SigningKey::from_pkcs8_der(&der(private_key, "PRIVATE KEY")?)
        .map_err(|_| "not a P-256 PKCS#8 private key".to_string())?;
    let doc = key
        .verifying_key()
        .to_public_key_der()
        .map_err(|e| e.to_string())?;
    Ok(B64_OUT.encode(doc.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::super::tests::{delivery, headers};
    use super::*;
    use p256::pkcs8::EncodePrivateKey;

    #[test]
    fn round_trip_with_generated_key() {
        let signing = SigningKey::from_slice(&[7u8; 32]).unwrap();
        let private = B64_OUT.encode(signing.to_pkcs8_der().unwrap().as_bytes());
        let public = public_key_of(&private).unwrap();
        let key = public_key(&public).unwrap();
        let body = br#"[{"event":"delivered"}]"#;
        let lines = sign(
            &private,
            &SignInput {
                body,
                timestamp: 1_600_000_000,
                id: None,
                url: None,
            },
        )
        .unwrap();
        let h = headers(&[(&lines[0].0, &lines[0].1), (&lines[1].0, &lines[1].1)]);
        assert!(verify(
            std::slice::from_ref(&key),
            &delivery(&h, body, 1_600_000_000)
        )
        .is_ok());
        assert!(matches!(
            verify(
                std::slice::from_ref(&key),
                &delivery(&h, b"[]", 1_600_000_000)
            ),
            Err(Rejection::Invalid(_))
        ));
        let pem = format!("-----BEGIN PUBLIC KEY-----\n{public}\n-----END PUBLIC KEY-----\n");
        assert!(public_key(&pem).is_ok());
        assert!(public_key("bm90IGEga2V5").is_err());
    }
}
