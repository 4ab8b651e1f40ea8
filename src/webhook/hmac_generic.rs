//! Generic HMAC (`scheme: hmac`): a configured header carrying `prefix` + the MAC of the raw
//! body (sha1, sha256 or sha512; hex or base64), keyed with the secret as UTF-8. With
//! `timestamp_header`, the signed bytes are `"{timestamp}.{body}"` and the timestamp (Unix
//! seconds) must be within the tolerance.

use super::{
    decode, encode, find_match, mac, parse_timestamp, Delivery, KeyBytes, Rejection, SignInput,
    Spec, Verified,
};

pub(super) fn verify(
    keys: &[KeyBytes],
    d: &Delivery<'_>,
    spec: &Spec,
) -> Result<Verified, Rejection> {
    let header = spec
        .header
        .as_ref()
        .ok_or_else(|| Rejection::missing("no signature header configured"))?;
    let value = header_text(d, header)?
        .ok_or_else(|| Rejection::missing(format!("{header} header is missing")))?;
    let encoded = value.strip_prefix(spec.prefix.as_str()).ok_or_else(|| {
        Rejection::missing(format!(
            "{header} does not start with the configured prefix"
        ))
    })?;
    let sig = decode(spec.encoding, encoded)
        .ok_or_else(|| Rejection::missing(format!("{header} is not {}", encoding_name(spec))))?;
    let mut timestamp = None;
    if let Some(ts_header) = &spec.timestamp_header {
        let text = header_text(d, ts_header)?
            .ok_or_else(|| Rejection::missing(format!("{ts_header} header is missing")))?;
        timestamp = Some((parse_timestamp(ts_header.as_str(), text)?, text));
    }
    let ts_prefix = timestamp
        .map(|(_, text)| format!("{text}."))
        .unwrap_or_default();
    let expected = find_match(
        keys,
        spec.algorithm,
        &[ts_prefix.as_bytes(), d.body],
        &[sig],
    )
    .ok_or_else(|| Rejection::invalid("signature does not match a configured secret"))?;
    if let Some((ts, _)) = timestamp {
        d.check_time(ts)?;
    }
    Ok(Verified {
        delivery_id: None,
        fingerprint: expected,
        timestamped: timestamp.is_some(),
    })
}

fn encoding_name(spec: &Spec) -> &'static str {
    match spec.encoding {
        crate::config::SignatureEncoding::Hex => "hex",
        crate::config::SignatureEncoding::Base64 => "base64",
    }
}

fn header_text<'a>(
    d: &Delivery<'a>,
    name: &http::header::HeaderName,
) -> Result<Option<&'a str>, Rejection> {
    match d.headers.get(name) {
        None => Ok(None),
        Some(v) => match v.to_str() {
            Ok(text) if !text.trim().is_empty() => Ok(Some(text.trim())),
            _ => Err(Rejection::missing(format!("{name} header is malformed"))),
        },
    }
}

pub(super) fn sign(
    secret: &[u8],
    spec: &Spec,
    input: &SignInput<'_>,
) -> Result<Vec<(String, String)>, String> {
    let header = spec.header.as_ref().ok_or("scheme `hmac` needs --header")?;
    let mut out = Vec::new();
    let ts_prefix = match &spec.timestamp_header {
        Some(ts_header) => {
            out.push((ts_header.to_string(), input.timestamp.to_string()));
            format!("{}.", input.timestamp)
        }
        None => String::new(),
    };
    let sig = mac(spec.algorithm, secret, &[ts_prefix.as_bytes(), input.body]);
    out.insert(
        0,
        (
            header.to_string(),
            format!("{}{}", spec.prefix, encode(spec.encoding, &sig)),
        ),
    );
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::super::tests::{delivery, headers, keys};
    use super::*;
    use crate::config::{HmacAlgorithm, Secret, SignatureEncoding, WebhookScheme};
    use http::header::HeaderName;

    fn spec(algorithm: HmacAlgorithm, encoding: SignatureEncoding, ts: bool) -> Spec {
        let mut s = Spec::new(WebhookScheme::Hmac, vec![Secret::new("k")]);
        s.header = Some(HeaderName::from_static("x-partner-signature"));
        s.prefix = "sha=".into();
        s.algorithm = algorithm;
        s.encoding = encoding;
        s.timestamp_header = ts.then(|| HeaderName::from_static("x-partner-timestamp"));
        s
    }

    #[test]
    fn every_algorithm_and_encoding_round_trips() {
        for algorithm in [
            HmacAlgorithm::Sha1,
            HmacAlgorithm::Sha256,
            HmacAlgorithm::Sha512,
        ] {
            for encoding in [SignatureEncoding::Hex, SignatureEncoding::Base64] {
                for ts in [false, true] {
                    let s = spec(algorithm, encoding, ts);
                    let lines = sign(
                        b"k",
                        &s,
                        &SignInput {
                            body: b"{}",
                            timestamp: 1000,
                            id: None,
                            url: None,
                        },
                    )
                    .unwrap();
                    let pairs: Vec<(&str, &str)> = lines
                        .iter()
                        .map(|(a, b)| (a.as_str(), b.as_str()))
                        .collect();
                    let h = headers(&pairs);
                    assert!(
                        verify(&keys(&["k"]), &delivery(&h, b"{}", 1000), &s).is_ok(),
                        "{algorithm:?} {encoding:?} {ts}"
                    );
                    assert!(verify(&keys(&["k"]), &delivery(&h, b"{ }", 1000), &s).is_err());
                }
            }
        }
    }

    #[test]
    fn known_sha1_hex() {
        // printf 'hello' | openssl dgst -sha1 -hmac key
        let s = spec(HmacAlgorithm::Sha1, SignatureEncoding::Hex, false);
        let h = headers(&[(
            "x-partner-signature",
            "sha=b34ceac4516ff23a143e61d79d0fa7a4fbe5f266",
        )]);
        assert!(verify(&keys(&["key"]), &delivery(&h, b"hello", 0), &s).is_ok());
    }
}
