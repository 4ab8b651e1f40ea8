//! `errors: normalize`: an upstream 4xx/5xx rewritten into Outpost's JSON error, keeping the
//! upstream's status, its own message when one can be found (Stripe `error.message`, SendGrid
//! `errors[0].message`, generic `message` / `error` / `error_description`), and its request id.

use std::time::{Duration, SystemTime};

use http::{HeaderMap, Response, StatusCode};
use http_body_util::BodyExt;

use crate::body::{full, BoxBody};
use crate::config::PresetDefaults;
use crate::error::{classify_status, ErrorBody};

/// Bodies larger than this are not parsed for a message.
const MAX_ERROR_BODY: usize = 64 * 1024;
/// Messages are cut to this many characters.
const MAX_MESSAGE: usize = 500;

/// Extract a human message from a provider's JSON error body.
pub fn upstream_message(body: &[u8]) -> Option<String> {
    let json: serde_json::Value = serde_json::from_slice(body).ok()?;
    let candidates = [
        json.pointer("/error/message"),
        json.pointer("/errors/0/message"),
        json.pointer("/message"),
        json.pointer("/error_description"),
        json.pointer("/error").filter(|v| v.is_string()),
        json.pointer("/detail"),
    ];
    let text = candidates.into_iter().flatten().find_map(|v| v.as_str())?;
    let text: String = text
        .chars()
        .filter(|c| !c.is_control())
        .take(MAX_MESSAGE)
        .collect();
    (!text.is_empty()).then_some(text)
}

fn upstream_request_id(headers: &HeaderMap) -> Option<String> {
    [
        "request-id",
        "x-request-id",
        "x-amzn-requestid",
        "x-github-request-id",
        "x-twilio-request-id",
    ]
    .iter()
    .find_map(|name| headers.get(*name))
    .and_then(|v| v.to_str().ok())
    .filter(|v| v.len() <= 128)
    .map(str::to_string)
}

/// The body when it ends within `cap` bytes. (Not `http_body_util::Limited`: its error
/// conversion makes this future fail rustc's `Send` check.)
async fn read_capped(mut body: BoxBody, cap: usize) -> Option<bytes::Bytes> {
    let mut buf = bytes::BytesMut::new();
    while let Some(frame) = body.frame().await {
        let Ok(frame) = frame else { return None };
        if let Ok(data) = frame.into_data() {
            if buf.len() + data.len() > cap {
                return None;
            }
            buf.extend_from_slice(&data);
        }
    }
    Some(buf.freeze())
}

/// Rewrite an upstream error response. Non-error responses pass through unchanged.
pub async fn normalize(
    response: Response<BoxBody>,
    upstream: &str,
    request_id: &str,
    provider: &PresetDefaults,
) -> Response<BoxBody> {
    let status = response.status();
    let Some(kind) = classify_status(status) else {
        return response;
    };
    let (parts, body) = response.into_parts();
    let bytes = read_capped(body, MAX_ERROR_BODY).await;
    let message = bytes.as_deref().and_then(upstream_message);
    let message = match message {
        Some(m) => format!("{upstream}: {m}"),
        None => format!("{upstream}: upstream answered {status}"),
    };
    let retry_after: Option<Duration> =
        crate::stack::retry_after::requested_wait(&parts.headers, provider, SystemTime::now());
    let retryable = status == StatusCode::TOO_MANY_REQUESTS || status.is_server_error();
    let error = ErrorBody {
        kind,
        message: &message,
        upstream: Some(upstream),
        status,
        retryable,
        retry_after,
        request_id,
    };
    let mut json = error.to_json();
    if let (Some(id), Some(obj)) = (
        upstream_request_id(&parts.headers),
        json.get_mut("error").and_then(|e| e.as_object_mut()),
    ) {
        obj.insert("upstream_request_id".into(), id.into());
    }
    let mut normalized = error.into_response();
    *normalized.body_mut() = full(json.to_string());
    normalized
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_provider_messages() {
        let stripe =
            br#"{"error":{"type":"invalid_request_error","message":"No such customer: 'cus_1'"}}"#;
        assert_eq!(
            upstream_message(stripe).as_deref(),
            Some("No such customer: 'cus_1'")
        );
        let sendgrid =
            br#"{"errors":[{"message":"The from address does not match","field":"from"}]}"#;
        assert_eq!(
            upstream_message(sendgrid).as_deref(),
            Some("The from address does not match")
        );
        assert_eq!(
            upstream_message(br#"{"message":"Bad credentials"}"#).as_deref(),
            Some("Bad credentials")
        );
        assert_eq!(
            upstream_message(br#"{"error":"invalid_client"}"#).as_deref(),
            Some("invalid_client")
        );
        assert_eq!(upstream_message(b"<html>502</html>"), None);
        assert_eq!(upstream_message(br#"{"error":{"code":1}}"#), None);
        let long = format!(r#"{{"message":"{}\u0007"}}"#, "x".repeat(2000));
        assert_eq!(
            upstream_message(long.as_bytes()).unwrap().len(),
            MAX_MESSAGE
        );
    }

    #[tokio::test]
    async fn rewrites_into_the_contract_shape() {
        let mut upstream =
            Response::new(full(r#"{"error":{"message":"Invalid API Key provided"}}"#));
        *upstream.status_mut() = StatusCode::UNAUTHORIZED;
        upstream
            .headers_mut()
            .insert("request-id", "req_123".parse().unwrap());
        let out = normalize(upstream, "stripe", "rid-1", &crate::config::preset::GENERIC).await;
        assert_eq!(out.status(), 401);
        assert_eq!(out.headers()["x-outpost-error"], "authentication_failed");
        let body = out.into_body().collect().await.unwrap().to_bytes();
        let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(json["error"]["type"], "authentication_failed");
        assert_eq!(json["error"]["message"], "stripe: Invalid API Key provided");
        assert_eq!(json["error"]["status"], 401);
        assert_eq!(json["error"]["retryable"], false);
        assert_eq!(json["error"]["request_id"], "rid-1");
        assert_eq!(json["error"]["upstream_request_id"], "req_123");
    }
}
