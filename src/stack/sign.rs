//! Outbound signing: the `standard_webhooks` and `hmac_signature` upstream auth types, which
//! sign the webhook deliveries an application sends to its own customers, so the application
//! never holds the signing key.
//!
//! One of the credential kinds of the auth layer (`auth.rs`). Signing needs the whole body, so
//! the auth layer reads it first, up to [`body_limit`] (larger: `413 payload_too_large`), and
//! every attempt sends that copy. `standard_webhooks` adds `webhook-id` (the application's own, when it
//! sent one, so its retries of one message keep one id as the spec asks; else `msg_<uuid>`),
//! `webhook-timestamp` (now) and `webhook-signature: v1,<base64>`; `hmac_signature` sets the
//! configured header to `prefix` + the encoded MAC of the body.

use http::header::{HeaderMap, HeaderName, HeaderValue};

use crate::config::{Auth, Upstream};
use crate::error::ProxyError;
use crate::webhook::{encode, mac, now_unix, standard};

/// Bodies up to at least this size are signed, whatever `retry.max_body_bytes` says.
pub const MIN_BODY_LIMIT: u64 = 1024 * 1024;

static WEBHOOK_ID: HeaderName = HeaderName::from_static("webhook-id");
static WEBHOOK_TIMESTAMP: HeaderName = HeaderName::from_static("webhook-timestamp");
static WEBHOOK_SIGNATURE: HeaderName = HeaderName::from_static("webhook-signature");

/// True for the auth types this module handles.
pub fn signs(auth: &Auth) -> bool {
    matches!(auth, Auth::StandardWebhooks { .. } | Auth::HmacSignature(_))
}

/// The largest body signed for an upstream: `retry.max_body_bytes`, at least 1 MiB.
pub fn body_limit(upstream: &Upstream) -> u64 {
    upstream.retry.max_body_bytes.max(MIN_BODY_LIMIT)
}

/// Put the signature headers for `body` on `headers` (an application-chosen `webhook-id` is
/// kept). Errors never contain the secret.
pub fn sign_body(
    upstream: &str,
    auth: &Auth,
    headers: &mut HeaderMap,
    body: &[u8],
) -> Result<(), ProxyError> {
    let lines = signature_headers(auth, headers, body, now_unix()).map_err(|reason| {
        ProxyError::CredentialsUnavailable {
            upstream: upstream.to_string(),
            reason,
        }
    })?;
    for (name, value) in lines {
        headers.insert(name, value);
    }
    Ok(())
}

/// Check an outbound signing secret's form (`standard_webhooks`: `whsec_` + base64), for
/// config validation. The message never contains the secret.
pub fn check_auth(auth: &Auth) -> Result<(), String> {
    match auth {
        Auth::StandardWebhooks { secret } => standard::secret_key(secret.expose()).map(drop),
        _ => Ok(()),
    }
}

/// The headers that sign `body` at `timestamp`. `headers` are the request's (for an
/// application-chosen `webhook-id`). Errors never contain the secret.
pub fn signature_headers(
    auth: &Auth,
    headers: &HeaderMap,
    body: &[u8],
    timestamp: i64,
) -> Result<Vec<(HeaderName, HeaderValue)>, String> {
    match auth {
        Auth::StandardWebhooks { secret } => {
            let key = standard::secret_key(secret.expose())?;
            let id = headers
                .get(&WEBHOOK_ID)
                .and_then(|v| v.to_str().ok())
                .filter(|id| !id.is_empty() && id.len() <= 256 && !id.contains('.'))
                .map_or_else(standard::new_id, str::to_string);
            let signature = standard::signature(&key.0, &id, timestamp, body);
            Ok(vec![
                (WEBHOOK_ID.clone(), header_value(&id)?),
                (WEBHOOK_TIMESTAMP.clone(), HeaderValue::from(timestamp)),
                (WEBHOOK_SIGNATURE.clone(), header_value(&signature)?),
            ])
        }
        Auth::HmacSignature(h) => {
            let sig = mac(h.algorithm, h.secret.expose().as_bytes(), &[body]);
            let value = format!("{}{}", h.prefix, encode(h.encoding, &sig));
            Ok(vec![(h.header.clone(), header_value(&value)?)])
        }
        other => Err(format!(
            "auth type `{}` does not sign requests",
            other.kind().name()
        )),
    }
}

fn header_value(text: &str) -> Result<HeaderValue, String> {
    HeaderValue::from_str(text)
        .map_err(|_| "signature header value is not valid in a header".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{HmacAlgorithm, HmacSignature, Secret, SignatureEncoding, WebhookScheme};
    use crate::webhook::{Spec, Verifier};

    #[test]
    fn standard_webhooks_signature_verifies_and_keeps_app_id() {
        let secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
        let auth = Auth::StandardWebhooks {
            secret: Secret::new(secret),
        };
        let mut app = HeaderMap::new();
        app.insert(
            "webhook-id",
            HeaderValue::from_static("msg_p5jXN8AQM9LWM0D4loKWxJek"),
        );
        let lines =
            signature_headers(&auth, &app, br#"{"test": 2432232314}"#, 1_614_265_330).unwrap();
        let h: HeaderMap = lines.into_iter().collect();
        assert_eq!(
            h["webhook-signature"],
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
        );
        let v = Verifier::new(Spec::new(
            WebhookScheme::StandardWebhooks,
            vec![Secret::new(secret)],
        ))
        .unwrap();
        assert!(v
            .verify(&h, br#"{"test": 2432232314}"#, None, 1_614_265_330)
            .is_ok());
        let fresh: HeaderMap = signature_headers(&auth, &HeaderMap::new(), b"x", 1)
            .unwrap()
            .into_iter()
            .collect();
        assert!(fresh["webhook-id"].to_str().unwrap().starts_with("msg_"));
    }

    #[test]
    fn hmac_signature_uses_prefix_and_encoding() {
        let auth = Auth::HmacSignature(HmacSignature {
            header: HeaderName::from_static("x-signature"),
            prefix: "sha1=".into(),
            algorithm: HmacAlgorithm::Sha1,
            encoding: SignatureEncoding::Hex,
            secret: Secret::new("key"),
        });
        let lines = signature_headers(&auth, &HeaderMap::new(), b"hello", 0).unwrap();
        assert_eq!(lines[0].1, "sha1=b34ceac4516ff23a143e61d79d0fa7a4fbe5f266");
    }

    #[test]
    fn bad_standard_secret_is_reported_without_its_value() {
        let auth = Auth::StandardWebhooks {
            secret: Secret::new("whsec_!!notbase64!!"),
        };
        assert!(check_auth(&auth).is_err());
        let err = signature_headers(&auth, &HeaderMap::new(), b"x", 0).unwrap_err();
        assert!(!err.contains("notbase64"), "{err}");
    }
}
