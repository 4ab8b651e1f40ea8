//! Clients and answers (part of the shared test harness; see `mod.rs`).

use super::*;

/// A fully read response.
#[derive(Debug)]
pub struct Answer {
    pub status: StatusCode,
    pub version: Version,
    pub headers: HeaderMap,
    pub body: Bytes,
    pub trailers: Option<HeaderMap>,
}

impl Answer {
    pub async fn read(response: Response<Incoming>) -> Answer {
        let (parts, body) = response.into_parts();
        let collected = guard("read response body", body.collect())
            .await
            .expect("response body");
        let trailers = collected.trailers().cloned();
        Answer {
            status: parts.status,
            version: parts.version,
            headers: parts.headers,
            body: collected.to_bytes(),
            trailers,
        }
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .get(name)
            .map(|v| v.to_str().expect("ascii header"))
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {}", self.text()))
    }

    /// Assert this is an Outpost error of `kind` with `status`, with every contract field;
    /// returns the `error` object.
    pub fn assert_error(&self, status: u16, kind: &str) -> serde_json::Value {
        assert_eq!(
            self.status.as_u16(),
            status,
            "status of {self:#?} / {}",
            self.text()
        );
        assert_error_shape(
            status,
            kind,
            self.header("content-type"),
            self.header("x-outpost-error"),
            self.header("x-request-id"),
            &self.body,
        )
    }
}

/// Check Outpost's normalized error JSON (DESIGN.md "Errors"); returns the `error` object.
pub fn assert_error_shape(
    status: u16,
    kind: &str,
    content_type: Option<&str>,
    x_outpost_error: Option<&str>,
    x_request_id: Option<&str>,
    body: &[u8],
) -> serde_json::Value {
    let text = String::from_utf8_lossy(body);
    assert_eq!(
        content_type,
        Some("application/json"),
        "content type: {text}"
    );
    assert_eq!(x_outpost_error, Some(kind), "x-outpost-error: {text}");
    let json: serde_json::Value = serde_json::from_slice(body)
        .unwrap_or_else(|e| panic!("error body is not JSON ({e}): {text}"));
    let error = json["error"].clone();
    assert_eq!(error["type"], kind, "{text}");
    assert_eq!(error["status"], status, "{text}");
    assert!(
        error["message"].as_str().is_some_and(|m| !m.is_empty()),
        "message: {text}"
    );
    assert!(error["retryable"].is_boolean(), "retryable: {text}");
    assert!(
        error["request_id"]
            .as_str()
            .is_some_and(|id| !id.is_empty()),
        "request_id: {text}"
    );
    if let Some(id) = x_request_id {
        assert_eq!(
            error["request_id"], id,
            "x-request-id header and body disagree: {text}"
        );
    }
    error
}

pub type HttpClient = Client<HttpConnector, TestBody>;

/// An HTTP/1.1 client (pooled).
pub fn http1_client() -> HttpClient {
    Client::builder(TokioExecutor::new()).build_http()
}

/// An HTTP/2 client with prior knowledge (h2c), as gRPC clients do.
pub fn h2c_client() -> HttpClient {
    Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http()
}

/// Send a request and read the whole answer (under the hang guard).
pub async fn send(client: &HttpClient, req: Request<TestBody>) -> Answer {
    let uri = req.uri().clone();
    let response = guard("send request", client.request(req))
        .await
        .unwrap_or_else(|e| panic!("request to {uri} failed: {e:?}"));
    Answer::read(response).await
}

/// `GET url` with a fresh HTTP/1.1 client.
pub async fn get(url: &str) -> Answer {
    let req = Request::get(url).body(empty()).unwrap();
    send(&http1_client(), req).await
}
