//! Slack: `X-Slack-Signature: v0=<hex>` and `X-Slack-Request-Timestamp`, HMAC-SHA256 over
//! `"v0:{timestamp}:{body}"`, keyed with the signing secret as UTF-8 (slack-sdk
//! `SignatureVerifier`). The timestamp must be within the tolerance (Slack: 5 minutes).

use crate::config::HmacAlgorithm;

use super::{find_match, mac, parse_timestamp, Delivery, KeyBytes, Rejection, SignInput, Verified};

const SIGNATURE: &str = "x-slack-signature";
const TIMESTAMP: &str = "x-slack-request-timestamp";

pub(super) fn verify(keys: &[KeyBytes], d: &Delivery<'_>) -> Result<Verified, Rejection> {
    let (_, value) = d.required(&[SIGNATURE])?;
    let (_, ts_text) = d.required(&[TIMESTAMP])?;
    let ts = parse_timestamp("X-Slack-Request-Timestamp", ts_text)?;
    let hex_sig = value
        .strip_prefix("v0=")
        .ok_or_else(|| Rejection::missing("X-Slack-Signature does not start with v0="))?;
    let sig =
        hex::decode(hex_sig).map_err(|_| Rejection::missing("X-Slack-Signature is not hex"))?;
    // Sign the timestamp exactly as sent (it is what Slack signed).
    let prefix = format!("v0:{ts_text}:");
    let expected = find_match(
        keys,
        HmacAlgorithm::Sha256,
        &[prefix.as_bytes(), d.body],
        &[sig],
    )
    .ok_or_else(|| Rejection::invalid("signature does not match a configured secret"))?;
    d.check_time(ts)?;
    Ok(Verified {
        delivery_id: None,
        fingerprint: expected,
        timestamped: true,
    })
}

pub(super) fn sign(secret: &[u8], input: &SignInput<'_>) -> Vec<(String, String)> {
    let prefix = format!("v0:{}:", input.timestamp);
    let sig = mac(
        HmacAlgorithm::Sha256,
        secret,
        &[prefix.as_bytes(), input.body],
    );
    vec![
        (
            "X-Slack-Request-Timestamp".into(),
            input.timestamp.to_string(),
        ),
        (
            "X-Slack-Signature".into(),
            format!("v0={}", hex::encode(sig)),
        ),
    ]
}

#[cfg(test)]
mod tests {
    use super::super::tests::{delivery, headers, keys};
    use super::*;

    #[test]
    fn round_trip_and_tolerance() {
        let body = b"token=x&team_id=T1";
        let lines = sign(
            b"8f742231b10e8888abcd99yyyzzz85a5",
            &SignInput {
                body,
                timestamp: 1_531_420_618,
                id: None,
                url: None,
            },
        );
        let h = headers(&[(&lines[0].0, &lines[0].1), (&lines[1].0, &lines[1].1)]);
        let k = keys(&["8f742231b10e8888abcd99yyyzzz85a5"]);
        assert!(verify(&k, &delivery(&h, body, 1_531_420_618 + 300)).is_ok());
        assert!(matches!(
            verify(&k, &delivery(&h, body, 1_531_420_618 + 301)),
            Err(Rejection::Stale(_))
        ));
        assert!(matches!(
            verify(&k, &delivery(&h, body, 1_531_420_618 - 301)),
            Err(Rejection::Stale(_))
        ));
    }
}
