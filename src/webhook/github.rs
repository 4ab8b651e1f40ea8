//! GitHub: `X-Hub-Signature-256: sha256=<hex>`, HMAC-SHA256 over the raw body, keyed with the
//! secret as UTF-8. Nothing time-dependent is signed; deliveries are deduplicated on
//! `X-GitHub-Delivery` and on the signature. The legacy SHA-1 `X-Hub-Signature` is not
//! accepted.

use crate::config::HmacAlgorithm;

use super::{find_match, mac, Delivery, KeyBytes, Rejection, SignInput, Verified};

const HEADER: &str = "x-hub-signature-256";
const DELIVERY: &str = "x-github-delivery";

pub(super) fn verify(keys: &[KeyBytes], d: &Delivery<'_>) -> Result<Verified, Rejection> {
    let (_, value) = d.required(&[HEADER])?;
    let hex_sig = value
        .strip_prefix("sha256=")
        .ok_or_else(|| Rejection::missing("X-Hub-Signature-256 does not start with sha256="))?;
    let sig =
        hex::decode(hex_sig).map_err(|_| Rejection::missing("X-Hub-Signature-256 is not hex"))?;
    let expected = find_match(keys, HmacAlgorithm::Sha256, &[d.body], &[sig])
        .ok_or_else(|| Rejection::invalid("signature does not match a configured secret"))?;
    let delivery_id = d
        .header(&[DELIVERY])
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
    let mut out = vec![(
        "X-Hub-Signature-256".into(),
        format!("sha256={}", hex::encode(sig)),
    )];
    if let Some(id) = input.id {
        out.push(("X-GitHub-Delivery".into(), id.to_string()));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::super::tests::{delivery, headers, keys};
    use super::*;

    /// REFERENCE.md: GitHub docs, "Validating webhook deliveries".
    #[test]
    fn published_vector() {
        let expected = "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17";
        let input = SignInput {
            body: b"Hello, World!",
            timestamp: 0,
            id: None,
            url: None,
        };
        assert_eq!(sign(b"It's a Secret to Everybody", &input)[0].1, expected);
        let h = headers(&[
            ("X-Hub-Signature-256", expected),
            ("X-GitHub-Delivery", "d-1"),
        ]);
        let v = verify(
            &keys(&["It's a Secret to Everybody"]),
            &delivery(&h, b"Hello, World!", 0),
        )
        .unwrap();
        assert_eq!(v.delivery_id.as_deref(), Some("d-1"));
        assert!(verify(
            &keys(&["It's a Secret to Everybody"]),
            &delivery(&h, b"Hello, World?", 0)
        )
        .is_err());
    }
}
