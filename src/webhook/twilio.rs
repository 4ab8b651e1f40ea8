//! Twilio: `X-Twilio-Signature`, base64 HMAC-SHA1 (twilio-python `RequestValidator`), keyed
//! with the auth token as UTF-8, over the full public URL as requested (query included)
//! followed by each POST parameter's `name + value`, names sorted, each name's distinct values
//! sorted. JSON (and other non-form) bodies are signed through the URL instead: it carries
//! `bodySHA256=<hex sha256(body)>`, the parameter list is empty, and the body hash is checked.
//! Twilio is inconsistent about default ports, so the URL is tried with and without its port.
//! Deliveries signed with a webhook SharedKey carry `X-Twilio-Webhooks-Signature-Settings:
//! key=…,algorithm=HMAC_SHA256` and use HMAC-SHA256 (twilio-python 9.13).

use base64::Engine as _;
use sha2::{Digest, Sha256};

use crate::config::HmacAlgorithm;

use super::{
    ct_eq, find_match, mac, Delivery, KeyBytes, Rejection, SignInput, Verified, B64, B64_OUT,
};

const SIGNATURE: &str = "x-twilio-signature";
const SETTINGS: &str = "x-twilio-webhooks-signature-settings";

/// At most this many form parameters are signed (a real callback has a few dozen).
const MAX_PARAMS: usize = 10_000;

pub(super) fn verify(
    keys: &[KeyBytes],
    d: &Delivery<'_>,
    public_url: &str,
) -> Result<Verified, Rejection> {
    let (_, value) = d.required(&[SIGNATURE])?;
    let sig = B64
        .decode(value)
        .map_err(|_| Rejection::missing("X-Twilio-Signature is not base64"))?;
    let algorithm = match d.header(&[SETTINGS])? {
        None => HmacAlgorithm::Sha1,
        Some((_, settings)) => algorithm(settings)?,
    };
    let url = match d.query {
        Some(q) if !q.is_empty() => format!("{public_url}?{q}"),
        _ => public_url.to_string(),
    };
    let query = d.query.unwrap_or_default();
    let params = match query_param(query, "bodySHA256") {
        Some(claimed) => {
            let actual = hex::encode(Sha256::digest(d.body));
            if !ct_eq(actual.as_bytes(), claimed.as_bytes()) {
                return Err(Rejection::invalid("bodySHA256 does not match the body"));
            }
            Vec::new()
        }
        None if is_form(d) => form_params(d.body)?,
        None if d.body.is_empty() => Vec::new(),
        // Neither form parameters nor a body hash: the body would go unsigned.
        None => {
            return Err(Rejection::invalid(
                "the body is not form data and the URL carries no bodySHA256",
            ))
        }
    };
    let signed_params = signed_params(&params);
    let mut found = None;
    for candidate in url_variants(&url) {
        if let Some(m) = find_match(
            keys,
            algorithm,
            &[candidate.as_bytes(), signed_params.as_bytes()],
            std::slice::from_ref(&sig),
        ) {
            found.get_or_insert(m);
        }
    }
    let expected = found.ok_or_else(|| {
        Rejection::invalid("signature does not match a configured secret and the public URL")
    })?;
    Ok(Verified {
        delivery_id: None,
        fingerprint: expected,
        timestamped: false,
    })
}

fn algorithm(settings: &str) -> Result<HmacAlgorithm, Rejection> {
    for part in settings.split(',') {
        if let Some((name, value)) = part.split_once('=') {
            if name.trim() == "algorithm" && !value.trim().is_empty() {
                return match value.trim().to_ascii_uppercase().as_str() {
                    "HMAC_SHA1" => Ok(HmacAlgorithm::Sha1),
                    "HMAC_SHA256" => Ok(HmacAlgorithm::Sha256),
                    _ => Err(Rejection::invalid(
                        "X-Twilio-Webhooks-Signature-Settings names an unsupported algorithm",
                    )),
                };
            }
        }
    }
    Ok(HmacAlgorithm::Sha1)
}

fn is_form(d: &Delivery<'_>) -> bool {
    match d
        .headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
    {
        None => true,
        Some(ct) => ct.split(';').next().is_some_and(|t| {
            t.trim()
                .eq_ignore_ascii_case("application/x-www-form-urlencoded")
        }),
    }
}

fn decode_component(s: &str) -> String {
    let plus = s.replace('+', " ");
    percent_encoding::percent_decode_str(&plus)
        .decode_utf8_lossy()
        .into_owned()
}

fn query_param(query: &str, name: &str) -> Option<String> {
    query
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .find(|(k, _)| decode_component(k) == name)
        .map(|(_, v)| decode_component(v))
}

fn form_params(body: &[u8]) -> Result<Vec<(String, String)>, Rejection> {
    let text =
        std::str::from_utf8(body).map_err(|_| Rejection::invalid("form body is not UTF-8"))?;
    let mut out = Vec::new();
    for pair in text.split('&').filter(|p| !p.is_empty()) {
        if out.len() == MAX_PARAMS {
            return Err(Rejection::invalid("too many form parameters"));
        }
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        out.push((decode_component(k), decode_component(v)));
    }
    Ok(out)
}

/// Names sorted, and for each name its distinct values sorted, as `name + value`.
fn signed_params(params: &[(String, String)]) -> String {
    let mut sorted: Vec<(&str, &str)> = params
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    sorted.sort_unstable();
    sorted.dedup();
    sorted.iter().fold(String::new(), |mut s, (k, v)| {
        s.push_str(k);
        s.push_str(v);
        s
    })
}

/// The URL without its port and with its port (the scheme's default when none is written).
fn url_variants(url: &str) -> Vec<String> {
    let Some((scheme, rest)) = url.split_once("://") else {
        return vec![url.to_string()];
    };
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    let (host, port) = match authority.find(']') {
        Some(close) if authority.starts_with('[') => (
            &authority[..=close],
            authority[close + 1..].strip_prefix(':'),
        ),
        _ => match authority.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (authority, None),
        },
    };
    let default = if scheme.eq_ignore_ascii_case("https") {
        "443"
    } else {
        "80"
    };
    let port = port.filter(|p| !p.is_empty()).unwrap_or(default);
    let without = format!("{scheme}://{host}{tail}");
    let with = format!("{scheme}://{host}:{port}{tail}");
    vec![without, with]
}

pub(super) fn sign(secret: &[u8], input: &SignInput<'_>) -> Result<Vec<(String, String)>, String> {
    let url = input
        .url
        .ok_or("scheme `twilio` needs --url (the full URL Twilio calls, query included)")?;
    let query = url.split_once('?').map_or("", |(_, q)| q);
    let params = if query_param(query, "bodySHA256").is_some() {
        Vec::new()
    } else {
        form_params(input.body).map_err(|e| e.to_string())?
    };
    let sig = mac(
        HmacAlgorithm::Sha1,
        secret,
        &[url.as_bytes(), signed_params(&params).as_bytes()],
    );
    Ok(vec![("X-Twilio-Signature".into(), B64_OUT.encode(sig))])
}

/// `url` with `bodySHA256` of `body` appended, as Twilio calls for JSON bodies.
pub fn url_with_body_hash(url: &str, body: &[u8]) -> String {
    let sep = if url.contains('?') { '&' } else { '?' };
    format!("{url}{sep}bodySHA256={}", hex::encode(Sha256::digest(body)))
}

#[cfg(test)]
mod tests {
    use super::super::tests::{delivery, headers, keys};
    use super::*;

    const BODY: &[u8] = b"CallSid=CA1234567890ABCDE&Caller=%2B14158675309&Digits=1234&From=%2B14158675309&To=%2B18005551212";

    /// REFERENCE.md: twilio-python tests.
    #[test]
    fn published_vector_with_and_without_port() {
        let url = "https://mycompany.com/myapp.php?foo=1&bar=2";
        let lines = sign(
            b"12345",
            &SignInput {
                body: BODY,
                timestamp: 0,
                id: None,
                url: Some(url),
            },
        )
        .unwrap();
        assert_eq!(lines[0].1, "RSOYDt4T1cUTdK1PDd93/VVr8B8=");
        let h = headers(&[
            ("X-Twilio-Signature", "RSOYDt4T1cUTdK1PDd93/VVr8B8="),
            ("content-type", "application/x-www-form-urlencoded"),
        ]);
        let mut d = delivery(&h, BODY, 0);
        d.query = Some("foo=1&bar=2");
        for public in [
            "https://mycompany.com/myapp.php",
            "https://mycompany.com:443/myapp.php",
        ] {
            assert!(verify(&keys(&["12345"]), &d, public).is_ok(), "{public}");
        }
        assert!(verify(&keys(&["12345"]), &d, "https://mycompany.com/other.php").is_err());
        d.query = Some("foo=1&bar=3");
        assert!(verify(&keys(&["12345"]), &d, "https://mycompany.com/myapp.php").is_err());
    }

    #[test]
    fn json_body_hash() {
        let body = br#"{"property": "value", "boolean": true}"#;
        let url = url_with_body_hash("https://mycompany.com/myapp.php?foo=1", body);
        let lines = sign(
            b"12345",
            &SignInput {
                body,
                timestamp: 0,
                id: None,
                url: Some(&url),
            },
        )
        .unwrap();
        let h = headers(&[
            ("X-Twilio-Signature", &lines[0].1),
            ("content-type", "application/json"),
        ]);
        let mut d = delivery(&h, body, 0);
        let query = url.split_once('?').unwrap().1.to_string();
        d.query = Some(&query);
        assert!(verify(&keys(&["12345"]), &d, "https://mycompany.com/myapp.php").is_ok());
        let tampered = br#"{"property": "value", "boolean": false}"#;
        let d2 = super::super::Delivery {
            body: tampered,
            ..d
        };
        assert!(matches!(
            verify(&keys(&["12345"]), &d2, "https://mycompany.com/myapp.php"),
            Err(Rejection::Invalid(_))
        ));
    }

    #[test]
    fn url_variants_cover_ports() {
        assert_eq!(
            url_variants("https://a.com/x?y=1"),
            vec!["https://a.com/x?y=1", "https://a.com:443/x?y=1"]
        );
        assert_eq!(
            url_variants("http://a.com:8080/x"),
            vec!["http://a.com/x", "http://a.com:8080/x"]
        );
        assert_eq!(
            url_variants("http://[::1]:81/x"),
            vec!["http://[::1]/x", "http://[::1]:81/x"]
        );
        assert_eq!(url_variants("nonsense"), vec!["nonsense"]);
    }
}
