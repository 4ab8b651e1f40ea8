//! The shapes secrets and files must have, checked at load (so `outpost check` finds them, not
//! the first request): the key of a `standard_webhooks` secret, a SendGrid verification key, a
//! CA file. Pure functions with no dependency on the modules that use the values (`webhook`,
//! `client`, `stack` call these), which keeps `config` a leaf of the module graph.
//! Messages never contain the secret.

use std::path::Path;

use base64::Engine as _;
use p256::ecdsa::VerifyingKey;
use p256::pkcs8::DecodePublicKey;

use super::secret::read_regular_file;
use super::{Auth, Secret, WebhookScheme};

/// Default `rate_limit.shared.key_prefix`.
pub const DEFAULT_KEY_PREFIX: &str = "outpost:rl:";

/// A Redis URL as the `redis` crate reads it: `redis://[user][:password@]host[:port][/db]` or
/// `redis+unix:///path`. The message never shows the URL (it may hold a password).
pub fn redis_url(url: &str) -> Result<(), String> {
    if url.starts_with("rediss://") {
        return Err("TLS to Redis (rediss://) is not in this build; use redis:// (a sidecar such as stunnel can add TLS)".into());
    }
    if !(url.starts_with("redis://") || url.starts_with("redis+unix://")) {
        return Err("must start with redis:// or redis+unix://".into());
    }
    match redis::IntoConnectionInfo::into_connection_info(url) {
        Ok(_) => Ok(()),
        Err(_) => Err("is not a usable Redis URL (redis://[:password@]host[:port][/db])".into()),
    }
}

/// Largest CA file read (a bundle of a few hundred certificates is far smaller).
pub const MAX_CA_FILE_BYTES: u64 = 4 * 1024 * 1024;

/// Base64 as providers write it: standard alphabet, padding optional on input.
const B64: base64::engine::GeneralPurpose = base64::engine::GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    base64::engine::GeneralPurposeConfig::new()
        .with_decode_padding_mode(base64::engine::DecodePaddingMode::Indifferent),
);

/// `whsec_<base64>` (the prefix is optional) to the HMAC key bytes of Standard Webhooks.
pub fn standard_webhooks_key(secret: &str) -> Result<Vec<u8>, String> {
    let encoded = secret.strip_prefix("whsec_").unwrap_or(secret);
    let key = B64
        .decode(encoded.trim())
        .map_err(|_| "a standard_webhooks secret is `whsec_` followed by base64".to_string())?;
    if key.is_empty() {
        return Err("the standard_webhooks secret is empty".into());
    }
    Ok(key)
}

/// The DER inside base64 text or a PEM block of the given label.
pub fn der(text: &str, label: &str) -> Result<Vec<u8>, String> {
    let text = text.trim();
    let inner = match text.strip_prefix(&format!("-----BEGIN {label}-----")) {
        Some(rest) => rest
            .split_once(&format!("-----END {label}-----"))
            .map(|(body, _)| body)
            .ok_or_else(|| format!("PEM block has no END {label} line"))?,
        None => text,
    };
    let compact: String = inner.chars().filter(|c| !c.is_whitespace()).collect();
    B64.decode(compact)
        .map_err(|_| format!("expected base64 DER ({label})"))
}

/// A SendGrid verification key: base64 DER SubjectPublicKeyInfo or PEM, P-256.
pub fn sendgrid_public_key(text: &str) -> Result<VerifyingKey, String> {
    VerifyingKey::from_public_key_der(&der(text, "PUBLIC KEY")?)
        .map_err(|_| "not a P-256 public key (base64 DER SubjectPublicKeyInfo)".to_string())
}

/// The scheme-specific shape of a webhook secret.
pub fn check_webhook_secret(scheme: WebhookScheme, secret: &Secret) -> Result<(), String> {
    match scheme {
        WebhookScheme::Sendgrid => sendgrid_public_key(secret.expose()).map(drop),
        WebhookScheme::StandardWebhooks => standard_webhooks_key(secret.expose()).map(drop),
        _ => Ok(()),
    }
}

/// The shape of an outbound-signing auth secret (`standard_webhooks`).
pub fn check_auth_secret(auth: &Auth) -> Result<(), String> {
    match auth {
        Auth::StandardWebhooks { secret } => standard_webhooks_key(secret.expose()).map(drop),
        _ => Ok(()),
    }
}

/// A CA file holds at least one PEM certificate (read bounded, as secret files are).
pub fn check_ca_file(path: &Path) -> Result<(), String> {
    let data = read_regular_file(path, MAX_CA_FILE_BYTES)
        .map_err(|reason| format!("cannot read CA file {}: {reason}", path.display()))?;
    let mut certs = 0;
    for cert in rustls_pemfile::certs(&mut data.as_slice()) {
        cert.map_err(|_| format!("CA file {} is not valid PEM", path.display()))?;
        certs += 1;
    }
    if certs == 0 {
        return Err(format!("CA file {} holds no certificate", path.display()));
    }
    Ok(())
}

/// The signing key of a PEM private key for JWTs, and its algorithm: RSA (PKCS#1 or PKCS#8)
/// signs RS256, an EC P-256 key ES256. A probe is signed, so a key of another curve is refused
/// here (at config time) rather than at the first request. The error never contains the key.
pub fn jwt_signing_key(
    pem: &str,
) -> Result<(jsonwebtoken::EncodingKey, jsonwebtoken::Algorithm), String> {
    use jsonwebtoken::{Algorithm, EncodingKey, Header};
    let probe = serde_json::json!({"probe": true});
    [
        (EncodingKey::from_rsa_pem(pem.as_bytes()), Algorithm::RS256),
        (EncodingKey::from_ec_pem(pem.as_bytes()), Algorithm::ES256),
    ]
    .into_iter()
    .find_map(|(key, alg)| {
        key.ok()
            .filter(|k| jsonwebtoken::encode(&Header::new(alg), &probe, k).is_ok())
            .map(|k| (k, alg))
    })
    .ok_or_else(|| "the private key is not an RSA or P-256 EC private key in PEM form".into())
}

/// A TLS client certificate chain and its private key (PEM), for RFC 8705
/// `tls_client_auth`.
pub type ClientIdentity = (
    Vec<rustls::pki_types::CertificateDer<'static>>,
    rustls::pki_types::PrivateKeyDer<'static>,
);

/// Parse `client_cert` (one or more PEM certificates, the leaf first) and `client_key` (a PEM
/// private key: PKCS#8, PKCS#1 or SEC1) and check that the key belongs to the leaf. Used by
/// config validation and by the token client, so both agree.
pub fn client_identity(cert_pem: &str, key_pem: &str) -> Result<ClientIdentity, String> {
    let certs: Vec<_> = rustls_pemfile::certs(&mut cert_pem.as_bytes())
        .collect::<Result<_, _>>()
        .map_err(|_| "`client_cert` is not valid PEM".to_string())?;
    if certs.is_empty() {
        return Err("`client_cert` holds no PEM certificate".into());
    }
    let key = rustls_pemfile::private_key(&mut key_pem.as_bytes())
        .map_err(|_| "`client_key` is not valid PEM".to_string())?
        .ok_or_else(|| "`client_key` holds no PEM private key".to_string())?;
    let provider = rustls::crypto::ring::default_provider();
    rustls::sign::CertifiedKey::from_der(certs.clone(), key.clone_key(), &provider).map_err(
        |e| match e {
            rustls::Error::InconsistentKeys(_) => {
                "`client_key` does not belong to the first certificate of `client_cert`".to_string()
            }
            _ => "`client_key` is not a usable RSA, ECDSA or Ed25519 key for `client_cert`"
                .to_string(),
        },
    )?;
    Ok((certs, key))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_forms() {
        assert!(standard_webhooks_key("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").is_ok());
        assert!(standard_webhooks_key("whsec_").is_err());
        let e = standard_webhooks_key("whsec_not base64!").unwrap_err();
        assert!(!e.contains("not base64!"), "{e}");
        assert!(sendgrid_public_key("AAAA").is_err());
        assert!(der("-----BEGIN PUBLIC KEY-----\nAAAA", "PUBLIC KEY").is_err());
    }
}
