//! HAR 1.2 export of the ring (`GET /api/har`), for browser dev tools and HAR viewers.
//!
//! Follows the W3C draft (Jan Odvarko): one entry per exchange, oldest first. What Outpost does
//! not know is `-1` (`headersSize`, `send`); `wait` is the time to the response headers and
//! `receive` the rest. Bodies are the ring's (redacted, possibly cut at the cap: the entry's
//! `comment` says so); a body that is not UTF-8 is `content.encoding: "base64"`, and a binary
//! request body is put in `postData.text` as base64 with `_encoding: "base64"` (custom fields
//! start with `_`). Extra fields: `_outpost` (id, kind, name, attempts, limiter wait, webhook).

use std::sync::Arc;

use serde_json::{json, Value};

use super::ring::{CapturedBody, Exchange};
use super::{base64_encode, rfc3339};

/// The HAR `log` for these exchanges (oldest first as given).
pub fn export(exchanges: &[Arc<Exchange>]) -> Value {
    json!({
        "log": {
            "version": "1.2",
            "creator": {"name": "outpost", "version": env!("CARGO_PKG_VERSION")},
            "entries": exchanges.iter().map(|e| entry(e)).collect::<Vec<_>>(),
        }
    })
}

fn ms(d: std::time::Duration) -> f64 {
    (d.as_secs_f64() * 1_000_000.0).round() / 1000.0
}

fn headers(h: &[(String, String)]) -> Value {
    h.iter()
        .map(|(n, v)| json!({"name": n, "value": v}))
        .collect()
}

fn query_string(query: Option<&str>) -> Value {
    let Some(q) = query else {
        return json!([]);
    };
    form_urlencoded::parse(q.as_bytes())
        .map(|(n, v)| json!({"name": n, "value": v}))
        .collect()
}

fn mime(body: &CapturedBody) -> String {
    body.content_type.clone().unwrap_or_default()
}

fn status_text(status: u16) -> &'static str {
    http::StatusCode::from_u16(status)
        .ok()
        .and_then(|s| s.canonical_reason())
        .unwrap_or("")
}

fn entry(e: &Exchange) -> Value {
    let mut request = json!({
        "method": e.method,
        "url": e.url(),
        "httpVersion": "HTTP/1.1",
        "cookies": [],
        "headers": headers(&e.request_headers),
        "queryString": query_string(e.query.as_deref()),
        "headersSize": -1,
        "bodySize": e.request_body.size,
    });
    if e.request_body.size > 0 {
        let mut post = json!({"mimeType": mime(&e.request_body)});
        match e.request_body.text() {
            Some(text) => post["text"] = json!(text),
            None => {
                post["text"] = json!(base64_encode(&e.request_body.bytes));
                post["_encoding"] = json!("base64");
            }
        }
        request["postData"] = post;
    }
    let status = e.status.unwrap_or(0);
    let mut content = json!({
        "size": e.response_body.size,
        "mimeType": mime(&e.response_body),
    });
    if !e.response_body.bytes.is_empty() || e.response_body.size == 0 {
        match e.response_body.text() {
            Some(text) => content["text"] = json!(text),
            None => {
                content["text"] = json!(base64_encode(&e.response_body.bytes));
                content["encoding"] = json!("base64");
            }
        }
    }
    let redirect = e
        .response_headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case("location"))
        .map(|(_, v)| v.clone())
        .unwrap_or_default();
    let wait = e.wait.unwrap_or(e.total);
    let receive = e.total.saturating_sub(wait);
    let mut comments = Vec::new();
    if e.request_body.truncated {
        comments.push("request body truncated at the capture cap");
    }
    if e.response_body.truncated {
        comments.push("response body truncated at the capture cap");
    }
    let mut entry = json!({
        "startedDateTime": rfc3339(e.started),
        "time": ms(e.total),
        "request": request,
        "response": {
            "status": status,
            "statusText": status_text(status),
            "httpVersion": "HTTP/1.1",
            "cookies": [],
            "headers": headers(&e.response_headers),
            "content": content,
            "redirectURL": redirect,
            "headersSize": -1,
            "bodySize": e.response_body.size,
        },
        "cache": {},
        "timings": {"send": 0, "wait": ms(wait), "receive": ms(receive)},
        "_outpost": {
            "id": e.id,
            "kind": e.kind.name(),
            "name": e.name,
            "error": e.error,
            "attempts": e.to_json()["attempts"].clone(),
            "limiter_wait_ms": e.limiter_wait.map(ms),
            "webhook": e.webhook.as_ref().map(|w| json!({"verification": w.verification, "forward_to": w.forward_to})),
        },
    });
    if !comments.is_empty() {
        entry["comment"] = json!(comments.join("; "));
    }
    entry
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::capture::{CaptureConfig, CaptureRing};
    use http::{HeaderMap, Method};

    #[test]
    fn entry_shape() {
        let ring = CaptureRing::new(CaptureConfig::default());
        let mut h = HeaderMap::new();
        h.insert(
            "content-type",
            "application/x-www-form-urlencoded".parse().unwrap(),
        );
        let mut d = ring.start_upstream(
            "stripe",
            &Method::POST,
            &"/v1/charges?expand[]=customer&limit=3".parse().unwrap(),
            &h,
        );
        d.base_url("https://api.stripe.com")
            .request_chunk(b"amount=100")
            .response_head(201, &HeaderMap::new())
            .response_chunk(&[0xff, 0x00]);
        ring.commit(d);
        let mut d = ring.start_upstream(
            "stripe",
            &Method::GET,
            &"/v1/x".parse().unwrap(),
            &HeaderMap::new(),
        );
        d.error("upstream_unreachable");
        ring.commit(d);

        let har = export(&ring.snapshot());
        assert_eq!(har["log"]["version"], "1.2");
        assert_eq!(har["log"]["creator"]["name"], "outpost");
        let e = &har["log"]["entries"][0];
        assert_eq!(
            e["request"]["url"],
            "https://api.stripe.com/v1/charges?expand[]=customer&limit=3"
        );
        assert_eq!(
            e["request"]["queryString"],
            json!([{"name": "expand[]", "value": "customer"}, {"name": "limit", "value": "3"}])
        );
        assert_eq!(
            e["request"]["postData"]["mimeType"],
            "application/x-www-form-urlencoded"
        );
        assert_eq!(e["request"]["postData"]["text"], "amount=100");
        assert_eq!(e["request"]["bodySize"], 10);
        assert_eq!(e["request"]["headersSize"], -1);
        assert_eq!(e["response"]["status"], 201);
        assert_eq!(e["response"]["statusText"], "Created");
        assert_eq!(e["response"]["content"]["encoding"], "base64");
        assert_eq!(e["response"]["content"]["text"], "/wA=");
        assert_eq!(e["response"]["content"]["size"], 2);
        let started = e["startedDateTime"].as_str().unwrap();
        assert!(started.ends_with('Z') && started.len() == 24, "{started}");
        for t in ["send", "wait", "receive"] {
            assert!(e["timings"][t].as_f64().unwrap() >= 0.0);
        }
        let e = &har["log"]["entries"][1];
        assert!(e["request"].get("postData").is_none());
        assert_eq!(e["response"]["status"], 0);
        assert_eq!(e["_outpost"]["error"], "upstream_unreachable");
    }
}
