//! Record against Outpost's Stripe mock, stop the mock, replay: the same SDK-shaped calls get
//! the same bytes back, a generated `Idempotency-Key` does not break the match, and the API key
//! (injected on the way out, as the request path does) appears in no cassette, capture, HAR or
//! inspector answer.

mod support;

use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use outpost::capture::cassette::{Cassette, CassetteRequest};
use outpost::capture::har;
use outpost::capture::inspector::{self, Inspector};
use outpost::capture::{CaptureConfig, CaptureRing, CassetteOptions, Redactor};
use outpost::mock::{self, MockOptions, Profile};
use serde_json::Value;
use support::{get, guard, poll_until, try_status, TempDir};
use tokio::net::TcpListener;
use tokio::sync::oneshot;

const KEY: &str = "sk_test_CASSETTEkey4242";

enum Mode {
    Record { base: String },
    Replay,
}

struct Harness {
    mode: Mode,
    cassette: Arc<Cassette>,
    ring: Arc<CaptureRing>,
    client: Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>,
}

impl Harness {
    /// One call as the request path would make it: captured as the app sent it, the key
    /// injected only on the way to the network, an Idempotency-Key generated for POSTs.
    async fn call(&self, method: Method, target: &str, form: Option<&str>) -> (u16, Bytes) {
        let mut headers = HeaderMap::new();
        headers.insert("stripe-version", HeaderValue::from_static("2024-06-20"));
        headers.insert(
            "user-agent",
            HeaderValue::from_static("Stripe/v1 PythonBindings/10.0.0"),
        );
        if form.is_some() {
            headers.insert(
                "content-type",
                HeaderValue::from_static("application/x-www-form-urlencoded"),
            );
        }
        let body = Bytes::from(form.unwrap_or("").to_string());
        let uri: http::Uri = target.parse().unwrap();
        let mut draft = self.ring.start_upstream("stripe", &method, &uri, &headers);
        draft
            .base_url("https://api.stripe.com")
            .request_chunk(&body);

        let mut creq = CassetteRequest::new(method.clone(), &uri, headers.clone(), body.clone());
        if method == Method::POST {
            let key = uuid::Uuid::new_v4().to_string();
            creq.headers.insert("idempotency-key", key.parse().unwrap());
            creq.generated_idempotency_key = true;
        }
        let (status, resp_headers, resp_body) = match &self.mode {
            Mode::Replay => {
                let answer = self
                    .cassette
                    .lookup(&creq)
                    .unwrap_or_else(|miss| panic!("replay miss: {}", miss.details()));
                draft.cassette("replay");
                (answer.status.as_u16(), answer.headers, answer.body)
            }
            Mode::Record { base } => {
                let mut req = Request::builder()
                    .method(method.clone())
                    .uri(format!("{base}{target}"));
                for (n, v) in &creq.headers {
                    req = req.header(n, v);
                }
                req = req.header("authorization", format!("Bearer {KEY}"));
                let resp = guard(
                    "mock answers",
                    self.client
                        .request(req.body(Full::new(body.clone())).unwrap()),
                )
                .await
                .unwrap();
                let status = resp.status().as_u16();
                let resp_headers = resp.headers().clone();
                let resp_body = resp.into_body().collect().await.unwrap().to_bytes();
                self.cassette
                    .record_async(creq, status, resp_headers.clone(), resp_body.clone())
                    .await
                    .unwrap();
                draft.cassette("record");
                (status, resp_headers, resp_body)
            }
        };
        draft
            .response_head(status, &resp_headers)
            .response_chunk(&resp_body);
        self.ring.commit(draft);
        (status, resp_body)
    }
}

/// An SDK-shaped session: create a customer, read it back twice, charge it, list charges,
/// a declined card and a 404. Later calls use ids from earlier answers, as a client does.
async fn session(h: &Harness) -> Vec<(u16, Bytes)> {
    let mut out = Vec::new();
    let created = h
        .call(
            Method::POST,
            "/v1/customers",
            Some("email=jo%40example.com&name=Jo&metadata[order]=42"),
        )
        .await;
    let id = serde_json::from_slice::<Value>(&created.1).unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    out.push(created);
    out.push(
        h.call(Method::GET, &format!("/v1/customers/{id}"), None)
            .await,
    );
    out.push(
        h.call(Method::GET, &format!("/v1/customers/{id}"), None)
            .await,
    );
    out.push(
        h.call(
            Method::POST,
            "/v1/charges",
            Some(&format!(
                "amount=2000&currency=usd&customer={id}&source=tok_visa"
            )),
        )
        .await,
    );
    out.push(
        h.call(
            Method::GET,
            &format!("/v1/charges?customer={id}&limit=3"),
            None,
        )
        .await,
    );
    out.push(
        h.call(
            Method::POST,
            "/v1/charges",
            Some("amount=500&currency=usd&source=tok_chargeDeclined"),
        )
        .await,
    );
    out.push(
        h.call(Method::GET, "/v1/customers/cus_doesnotexist", None)
            .await,
    );
    out
}

fn redactor() -> Arc<Redactor> {
    let mut r = Redactor::new(vec![HeaderName::from_static("set-cookie")], vec![]);
    r.set_secrets(&[KEY]);
    Arc::new(r)
}

#[tokio::test]
async fn record_against_the_stripe_mock_then_replay_without_it() {
    let dir = TempDir::new("cassette-e2e");
    let options = CassetteOptions {
        match_headers: vec![
            HeaderName::from_static("stripe-version"),
            HeaderName::from_static("idempotency-key"),
        ],
        ignore_fields: vec![],
    };

    // Record.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let (stop, stopped) = oneshot::channel::<()>();
    let mut opts = MockOptions::new(Profile::Stripe);
    opts.api_key = Some(KEY.to_string());
    let mock_task = tokio::spawn(mock::serve(listener, opts, async {
        let _ = stopped.await;
    }));
    let ring = CaptureRing::new(CaptureConfig::default());
    ring.set_secrets(&[KEY]);
    let recorder = Harness {
        mode: Mode::Record { base: base.clone() },
        cassette: Arc::new(
            Cassette::open(&dir.path, "stripe", options.clone(), redactor()).unwrap(),
        ),
        ring: Arc::clone(&ring),
        client: Client::builder(TokioExecutor::new()).build_http(),
    };
    let recorded = session(&recorder).await;
    let statuses: Vec<u16> = recorded.iter().map(|(s, _)| *s).collect();
    assert_eq!(
        statuses,
        vec![200, 200, 200, 200, 200, 402, 404],
        "the mock served the session"
    );

    // Stop the mock: nothing answers on its port any more.
    stop.send(()).unwrap();
    guard("mock stops", mock_task).await.unwrap().unwrap();
    let health = format!("{base}/healthz");
    poll_until("mock gone", || {
        let url = health.clone();
        async move { try_status(&url).await.is_none() }
    })
    .await;

    // Replay from the file alone: the same bytes, call for call.
    let text = std::fs::read_to_string(dir.path.join("stripe.yaml")).unwrap();
    let replayer = Harness {
        mode: Mode::Replay,
        cassette: Arc::new(Cassette::open(&dir.path, "stripe", options, redactor()).unwrap()),
        ring: Arc::clone(&ring),
        client: Client::builder(TokioExecutor::new()).build_http(),
    };
    assert_eq!(replayer.cassette.len(), 7);
    let replayed = session(&replayer).await;
    assert_eq!(
        replayed, recorded,
        "replay returns the recorded statuses and bytes"
    );
    // A call that was never recorded is a miss that names the nearest recording.
    let miss = replayer
        .cassette
        .lookup(&CassetteRequest::new(
            Method::GET,
            &"/v1/charges?limit=4".parse().unwrap(),
            HeaderMap::new(),
            Bytes::new(),
        ))
        .unwrap_err();
    assert!(miss.nearest.is_some());

    // The key is nowhere: cassette, ring, HAR, inspector answers.
    assert!(!text.contains(KEY), "cassette holds the key:\n{text}");
    assert!(!text.contains("authorization"), "{text}");
    assert!(
        !text.to_lowercase().contains("idempotency-key"),
        "generated keys are not recorded"
    );
    let capture: String = ring
        .snapshot()
        .iter()
        .map(|e| e.to_json().to_string())
        .collect();
    assert!(!capture.contains(KEY));
    assert!(!har::export(&ring.snapshot()).to_string().contains(KEY));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let inspect = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(inspector::serve(
        listener,
        Arc::new(Inspector::new(Arc::clone(&ring))),
        std::future::pending(),
    ));
    let mut paths = vec!["/".to_string(), "/api/exchanges".into(), "/api/har".into()];
    paths.extend(
        ring.snapshot()
            .iter()
            .map(|e| format!("/api/exchanges/{}", e.id)),
    );
    for path in paths {
        let answer = get(&format!("{inspect}{path}")).await;
        assert_eq!(answer.status, 200, "{path}");
        assert!(!answer.text().contains(KEY), "{path} shows the key");
    }
    assert_eq!(ring.usage().0, 14, "both sessions were captured");
}
