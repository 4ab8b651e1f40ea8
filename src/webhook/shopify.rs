//! Shopify: `X-Shopify-Hmac-Sha256` (newer deliveries: `shopify-hmac-sha256`), base64
//! HMAC-SHA256 over the raw body, keyed with the app's client secret as UTF-8. Nothing
//! time-dependent is signed; deliveries are deduplicated on `X-Shopify-Webhook-Id` (or
//! `shopify-webhook-id`) and on the signature.

use crate::config::HmacAlgorithm;

use super::{find_match, mac, Delivery, KeyBytes, Rejection, SignInput, Verified, B64, B64_OUT};
use base64::Engine as _;

const HEADERS: &[&str] = &["x-shopify-hmac-sha256", "shopify-hmac-sha256"];
const IDS: &[&str] = &["x-shopify-webhook-id", "shopify-webhook-id"];

pub(super) fn verify(keys: &[KeyBytes], d: &Delivery<'_>) -> Result<Verified, Rejection> {
    let (_, value) = d.required(HEADERS)?;
    let sig = B64
        .decode(value)
        .map_err(|_| Rejection::missing("X-Shopify-Hmac-Sha256 is not base64"))?;
    let expected = find_match(keys, HmacAlgorithm::Sha256, &[d.body], &[sig])
        .ok_or_else(|| Rejection::invalid("signature does not match a configured secret"))?;
    let delivery_id = d
        .header(IDS)
        .ok()
        .flatten()
        .map(|(_, v)| v.to_string())
        .filter(|v| !v.is_empty());
    Ok(Verified {
        delivery_id,
        fingerprint: expected,
        timestamped: false,
    })
}

pub(super) fn sign(secret: &[u8], input: &SignInput<'_>) -> Vec<(String, String)> {
    let sig = mac(HmacAlgorithm::Sha256, secret, &[input.body]);
    let mut out = vec![("X-Shopify-Hmac-Sha256".into(), B64_OUT.encode(sig))];
    if let Some(id) = input.id {
        out.push(("X-Shopify-Webhook-Id".into(), id.to_string()));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::super::tests::{delivery, headers, keys};
    use super::*;

    /// REFERENCE.md: shopify vector.
    #[test]
    fn published_vector_and_new_header_name() {
        let expected = "plW8VGqq0nDMIEhDqaNNW99asdUCy7EIqLZVcQwtAZ0=";
        let input = SignInput {
            body: br#"{"id":1}"#,
            timestamp: 0,
            id: None,
            url: None,
        };
        assert_eq!(sign(b"shop-secret", &input)[0].1, expected);
        for name in ["X-Shopify-Hmac-Sha256", "shopify-hmac-sha256"] {
            let h = headers(&[(name, expected), ("shopify-webhook-id", "w1")]);
            let v = verify(&keys(&["shop-secret"]), &delivery(&h, br#"{"id":1}"#, 0)).unwrap();
            assert_eq!(v.delivery_id.as_deref(), Some("w1"));
        }
    }
}
