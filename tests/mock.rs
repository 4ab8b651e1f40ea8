//! End-to-end tests of the mock upstreams (`outpost::mock::serve`) over real sockets, with a
//! hyper-util client, on `127.0.0.1:0`.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::header::HeaderMap;
use hyper::{Method, Request, StatusCode};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use outpost::mock::{serve, MockOptions, Profile};
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// Hang guard for every request; never a way to wait for readiness.
const GUARD: Duration = Duration::from_secs(10);
const STRIPE_KEY: &str = "sk_test_4eC39HqLyjWDarjtT1zdp7dc";
const SENDGRID_KEY: &str = "SG.test-key.abcdef";

struct Mock {
    addr: SocketAddr,
    client: Client<HttpConnector, Full<Bytes>>,
    key: &'static str,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<std::io::Result<()>>,
}

struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "body is not JSON ({e}): {}",
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

impl Mock {
    async fn start(opts: MockOptions) -> Self {
        Self::start_with(opts, Client::builder(TokioExecutor::new()).build_http()).await
    }

    async fn start_with(opts: MockOptions, client: Client<HttpConnector, Full<Bytes>>) -> Self {
        let key = match opts.profile {
            Profile::Stripe => STRIPE_KEY,
            Profile::Sendgrid => SENDGRID_KEY,
        };
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("local addr");
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(serve(listener, opts, async {
            let _ = stopped.await;
        }));
        Self {
            addr,
            client,
            key,
            stop: Some(stop),
            task,
        }
    }

    async fn stripe() -> Self {
        Self::start(MockOptions::new(Profile::Stripe)).await
    }

    async fn sendgrid() -> Self {
        Self::start(MockOptions::new(Profile::Sendgrid)).await
    }

    /// A request with the profile's test key.
    async fn call(
        &self,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        body: &str,
    ) -> Answer {
        let auth = format!("Bearer {}", self.key);
        let mut all = vec![("authorization", auth.as_str())];
        all.extend_from_slice(headers);
        self.raw(method, path, &all, body).await
    }

    async fn raw(
        &self,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        body: &str,
    ) -> Answer {
        let mut request = Request::builder()
            .method(method)
            .uri(format!("http://{}{path}", self.addr));
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let request = request
            .body(Full::new(Bytes::from(body.to_string())))
            .expect("valid request");
        let response = tokio::time::timeout(GUARD, self.client.request(request))
            .await
            .expect("mock answered in time")
            .expect("request succeeded");
        let (parts, body) = response.into_parts();
        let body = tokio::time::timeout(GUARD, body.collect())
            .await
            .expect("body in time")
            .expect("body read")
            .to_bytes();
        Answer {
            status: parts.status,
            headers: parts.headers,
            body,
        }
    }

    async fn form(&self, path: &str, body: &str) -> Answer {
        self.call(Method::POST, path, &[FORM], body).await
    }

    async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let result = tokio::time::timeout(GUARD, &mut self.task)
            .await
            .expect("serve returned after shutdown")
            .expect("serve task did not panic");
        result.expect("serve returned Ok");
    }
}

const FORM: (&str, &str) = ("content-type", "application/x-www-form-urlencoded");

fn valid_mail() -> Value {
    json!({
        "personalizations": [{"to": [{"email": "jenny@example.com", "name": "Jenny"}]}],
        "from": {"email": "shop@example.com"},
        "subject": "Your order",
        "content": [{"type": "text/plain", "value": "Thanks!"}],
    })
}

#[tokio::test]
async fn healthz_needs_no_auth() {
    let mock = Mock::stripe().await;
    let answer = mock.raw(Method::GET, "/healthz", &[], "").await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(&answer.body[..], b"ok");
    mock.stop().await;
}

#[tokio::test]
async fn customer_create_get_list_delete() {
    let mock = Mock::stripe().await;
    let created = mock
        .call(
            Method::POST,
            "/v1/customers",
            &[FORM, ("stripe-version", "2024-06-20")],
            "email=jenny%40example.com&name=Jenny+Rosen&description=first&metadata[order_id]=6735",
        )
        .await;
    assert_eq!(created.status, StatusCode::OK);
    assert_eq!(created.header("content-type"), Some("application/json"));
    assert_eq!(created.header("stripe-version"), Some("2024-06-20"));
    assert!(created
        .header("request-id")
        .is_some_and(|id| id.starts_with("req_")));
    let customer = created.json();
    let id = customer["id"].as_str().expect("id").to_string();
    assert!(id.starts_with("cus_"), "{id}");
    assert_eq!(customer["object"], "customer");
    assert_eq!(customer["livemode"], false);
    assert_eq!(customer["email"], "jenny@example.com");
    assert_eq!(customer["name"], "Jenny Rosen");
    assert_eq!(customer["description"], "first");
    assert_eq!(customer["metadata"], json!({"order_id": "6735"}));
    assert!(customer["created"]
        .as_i64()
        .is_some_and(|t| t > 1_600_000_000));

    let fetched = mock
        .call(Method::GET, &format!("/v1/customers/{id}"), &[], "")
        .await;
    assert_eq!(fetched.status, StatusCode::OK);
    assert_eq!(fetched.json(), customer);

    mock.form("/v1/customers", "email=second%40example.com")
        .await;
    let list = mock
        .call(Method::GET, "/v1/customers?limit=1", &[], "")
        .await;
    assert_eq!(list.status, StatusCode::OK);
    let list = list.json();
    assert_eq!(list["object"], "list");
    assert_eq!(list["url"], "/v1/customers");
    assert_eq!(list["data"].as_array().map(Vec::len), Some(1));
    assert_eq!(list["data"][0]["email"], "second@example.com");
    assert_eq!(list["has_more"], true);
    let all = mock
        .call(Method::GET, "/v1/customers", &[], "")
        .await
        .json();
    assert_eq!(all["data"].as_array().map(Vec::len), Some(2));
    assert_eq!(all["has_more"], false);

    let deleted = mock
        .call(Method::DELETE, &format!("/v1/customers/{id}"), &[], "")
        .await;
    assert_eq!(deleted.status, StatusCode::OK);
    assert_eq!(
        deleted.json(),
        json!({"id": id, "object": "customer", "deleted": true})
    );
    let gone = mock
        .call(Method::GET, &format!("/v1/customers/{id}"), &[], "")
        .await;
    assert_eq!(gone.status, StatusCode::NOT_FOUND);
    assert_eq!(
        gone.json(),
        json!({"error": {
            "type": "invalid_request_error",
            "code": "resource_missing",
            "message": format!("No such customer: '{id}'"),
            "param": "id",
        }})
    );
    mock.stop().await;
}

#[tokio::test]
async fn charges_validate_and_succeed() {
    let mock = Mock::stripe().await;
    let missing = mock
        .form("/v1/charges", "currency=usd&source=tok_visa")
        .await;
    assert_eq!(missing.status, StatusCode::BAD_REQUEST);
    let error = &missing.json()["error"];
    assert_eq!(error["param"], "amount");
    assert_eq!(error["type"], "invalid_request_error");

    let negative = mock
        .form("/v1/charges", "amount=-5&currency=usd&source=tok_visa")
        .await;
    assert_eq!(negative.status, StatusCode::BAD_REQUEST);
    assert_eq!(negative.json()["error"]["param"], "amount");

    let no_source = mock.form("/v1/charges", "amount=2000&currency=usd").await;
    assert_eq!(no_source.status, StatusCode::BAD_REQUEST);

    let customer = mock.form("/v1/customers", "name=Payer").await.json();
    let customer_id = customer["id"].as_str().expect("id");
    let charged = mock
        .form(
            "/v1/charges",
            &format!("amount=2000&currency=usd&customer={customer_id}"),
        )
        .await;
    assert_eq!(charged.status, StatusCode::OK);
    let charge = charged.json();
    let charge_id = charge["id"].as_str().expect("id");
    assert!(charge_id.starts_with("ch_"));
    assert_eq!(charge["object"], "charge");
    assert_eq!(charge["amount"], 2000);
    assert_eq!(charge["currency"], "usd");
    assert_eq!(charge["status"], "succeeded");
    assert_eq!(charge["paid"], true);
    assert_eq!(charge["customer"], customer_id);

    let fetched = mock
        .call(Method::GET, &format!("/v1/charges/{charge_id}"), &[], "")
        .await;
    assert_eq!(fetched.json(), charge);
    let list = mock
        .call(
            Method::GET,
            &format!("/v1/charges?customer={customer_id}"),
            &[],
            "",
        )
        .await
        .json();
    assert_eq!(list["data"][0]["id"], charge_id);
    assert_eq!(list["url"], "/v1/charges");
    mock.stop().await;
}

#[tokio::test]
async fn bad_or_missing_key_is_401_without_echo() {
    let mock = Mock::stripe().await;
    let secret = "sk_live_do_not_echo_me_123";
    for auth in [format!("Bearer {secret}"), "Bearer sk_test_".to_string()] {
        let answer = mock
            .raw(
                Method::GET,
                "/v1/customers",
                &[("authorization", &auth)],
                "",
            )
            .await;
        assert_eq!(answer.status, StatusCode::UNAUTHORIZED);
        assert_eq!(
            answer.json(),
            json!({"error": {"type": "invalid_request_error", "message": "Invalid API Key provided"}})
        );
        let text = String::from_utf8_lossy(&answer.body);
        assert!(!text.contains("do_not_echo"));
        for value in answer.headers.values() {
            assert!(!String::from_utf8_lossy(value.as_bytes()).contains("do_not_echo"));
        }
    }
    let none = mock.raw(Method::GET, "/v1/customers", &[], "").await;
    assert_eq!(none.status, StatusCode::UNAUTHORIZED);
    mock.stop().await;
}

#[tokio::test]
async fn basic_auth_and_exact_key() {
    let mut opts = MockOptions::new(Profile::Stripe);
    opts.api_key = Some("sk_test_exact".to_string());
    let mock = Mock::start(opts).await;
    // base64("sk_test_exact:")
    let basic = "Basic c2tfdGVzdF9leGFjdDo=";
    let answer = mock
        .raw(
            Method::GET,
            "/v1/customers",
            &[("authorization", basic)],
            "",
        )
        .await;
    assert_eq!(answer.status, StatusCode::OK);
    let other = mock
        .raw(
            Method::GET,
            "/v1/customers",
            &[("authorization", "Bearer sk_test_other")],
            "",
        )
        .await;
    assert_eq!(other.status, StatusCode::UNAUTHORIZED);
    mock.stop().await;
}

#[tokio::test]
async fn idempotent_post_is_replayed() {
    let mock = Mock::stripe().await;
    let key = ("idempotency-key", "order-6735");
    let first = mock
        .call(Method::POST, "/v1/customers", &[FORM, key], "name=Once")
        .await;
    assert_eq!(first.status, StatusCode::OK);
    assert_eq!(first.header("idempotent-replayed"), None);
    let second = mock
        .call(Method::POST, "/v1/customers", &[FORM, key], "name=Once")
        .await;
    assert_eq!(second.status, StatusCode::OK);
    assert_eq!(second.header("idempotent-replayed"), Some("true"));
    assert_eq!(second.json()["id"], first.json()["id"]);
    assert_eq!(
        second.header("original-request"),
        first.header("request-id")
    );
    assert_ne!(second.header("request-id"), first.header("request-id"));
    let list = mock
        .call(Method::GET, "/v1/customers", &[], "")
        .await
        .json();
    assert_eq!(list["data"].as_array().map(Vec::len), Some(1));

    let reused = mock
        .call(
            Method::POST,
            "/v1/customers",
            &[FORM, key],
            "name=Different",
        )
        .await;
    assert_eq!(reused.status, StatusCode::BAD_REQUEST);
    assert_eq!(reused.json()["error"]["type"], "idempotency_error");
    mock.stop().await;
}

#[tokio::test]
async fn faulted_post_is_not_stored_as_the_idempotent_result() {
    let mock = Mock::stripe().await;
    let headers = [
        FORM,
        ("idempotency-key", "retry-me"),
        ("x-mock-fault", "status=503; times=1; key=post"),
    ];
    let first = mock
        .call(Method::POST, "/v1/customers", &headers, "name=R")
        .await;
    assert_eq!(first.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(first.json()["error"]["type"], "api_error");
    let second = mock
        .call(Method::POST, "/v1/customers", &headers, "name=R")
        .await;
    assert_eq!(second.status, StatusCode::OK);
    assert_eq!(second.header("idempotent-replayed"), None);
    mock.stop().await;
}

#[tokio::test]
async fn sendgrid_accepts_valid_mail() {
    let mock = Mock::sendgrid().await;
    let answer = mock
        .call(
            Method::POST,
            "/v3/mail/send",
            &[("content-type", "application/json")],
            &valid_mail().to_string(),
        )
        .await;
    assert_eq!(answer.status, StatusCode::ACCEPTED);
    assert!(answer.body.is_empty());
    assert!(answer
        .header("x-message-id")
        .is_some_and(|id| !id.is_empty()));

    let profile = mock.call(Method::GET, "/v3/user/profile", &[], "").await;
    assert_eq!(profile.status, StatusCode::OK);
    assert!(profile.json().is_object());
    mock.stop().await;
}

#[tokio::test]
async fn sendgrid_rejects_invalid_mail_and_bad_keys() {
    let mock = Mock::sendgrid().await;
    let mut mail = valid_mail();
    mail["personalizations"] = json!([]);
    let answer = mock
        .call(Method::POST, "/v3/mail/send", &[], &mail.to_string())
        .await;
    assert_eq!(answer.status, StatusCode::BAD_REQUEST);
    let errors = answer.json()["errors"].clone();
    assert_eq!(errors[0]["field"], "personalizations");
    assert_eq!(errors[0]["help"], Value::Null);

    let broken = mock
        .call(Method::POST, "/v3/mail/send", &[], "{not json")
        .await;
    assert_eq!(broken.status, StatusCode::BAD_REQUEST);
    assert!(broken.json()["errors"][0]["message"].is_string());

    let bad_key = mock
        .raw(
            Method::POST,
            "/v3/mail/send",
            &[("authorization", "Bearer sk_test_wrong_provider")],
            &valid_mail().to_string(),
        )
        .await;
    assert_eq!(bad_key.status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        bad_key.json(),
        json!({"errors": [{"field": null, "message": "The provided authorization grant is invalid, expired, or revoked", "help": null}]})
    );
    assert!(!String::from_utf8_lossy(&bad_key.body).contains("wrong_provider"));
    mock.stop().await;
}

#[tokio::test]
async fn fault_times_then_served() {
    let mock = Mock::stripe().await;
    let fault = [("x-mock-fault", "status=503;times=2;key=abc")];
    let mut statuses = Vec::new();
    for _ in 0..3 {
        statuses.push(
            mock.call(Method::GET, "/v1/customers", &fault, "")
                .await
                .status,
        );
    }
    assert_eq!(
        statuses,
        [
            StatusCode::SERVICE_UNAVAILABLE,
            StatusCode::SERVICE_UNAVAILABLE,
            StatusCode::OK
        ]
    );
    // Another key has its own counter.
    let other = [("x-mock-fault", "status=503;times=1;key=other")];
    let answer = mock.call(Method::GET, "/v1/customers", &other, "").await;
    assert_eq!(answer.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(answer.header("request-id").is_some());
    mock.stop().await;
}

#[tokio::test]
async fn fault_429_carries_retry_after() {
    let mock = Mock::stripe().await;
    let answer = mock
        .call(
            Method::GET,
            "/v1/customers",
            &[("x-mock-fault", "status=429; retry_after=2")],
            "",
        )
        .await;
    assert_eq!(answer.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(answer.header("retry-after"), Some("2"));
    assert_eq!(answer.json()["error"]["code"], "rate_limit");

    let sendgrid = Mock::sendgrid().await;
    let answer = sendgrid
        .call(
            Method::GET,
            "/v3/user/profile",
            &[("x-mock-fault", "status=429; retry_after=3")],
            "",
        )
        .await;
    assert_eq!(answer.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(answer.header("retry-after"), Some("3"));
    assert!(answer.header("x-ratelimit-reset").is_some());
    assert!(answer.json()["errors"].is_array());
    mock.stop().await;
    sendgrid.stop().await;
}

#[tokio::test]
async fn fault_delay_slows_the_answer() {
    let mock = Mock::stripe().await;
    let started = tokio::time::Instant::now();
    let answer = mock
        .call(
            Method::GET,
            "/v1/customers",
            &[("x-mock-fault", "delay=200ms")],
            "",
        )
        .await;
    assert_eq!(answer.status, StatusCode::OK);
    assert!(started.elapsed() >= Duration::from_millis(200));
    mock.stop().await;
}

#[tokio::test]
async fn malformed_fault_header_is_400() {
    let mock = Mock::stripe().await;
    for value in [
        "status=abc",
        "status=503;bogus=1",
        "times=2",
        "delay=forever",
        "status",
    ] {
        let answer = mock
            .call(Method::GET, "/v1/customers", &[("x-mock-fault", value)], "")
            .await;
        assert_eq!(answer.status, StatusCode::BAD_REQUEST, "{value}");
        let message = answer.json()["error"]["message"]
            .as_str()
            .map(str::to_owned);
        assert!(
            message.is_some_and(|m| m.contains("X-Mock-Fault")),
            "{value}"
        );
    }
    mock.stop().await;
}

#[tokio::test]
async fn unknown_paths_are_404_in_provider_shape() {
    let stripe = Mock::stripe().await;
    let answer = stripe.call(Method::GET, "/v1/foo?x=1", &[], "").await;
    assert_eq!(answer.status, StatusCode::NOT_FOUND);
    assert_eq!(
        answer.json(),
        json!({"error": {"type": "invalid_request_error", "message": "Unrecognized request URL (GET: /v1/foo)."}})
    );
    let sendgrid = Mock::sendgrid().await;
    let answer = sendgrid.call(Method::GET, "/v3/nope", &[], "").await;
    assert_eq!(answer.status, StatusCode::NOT_FOUND);
    assert_eq!(
        answer.json(),
        json!({"errors": [{"field": null, "message": "not found"}]})
    );
    stripe.stop().await;
    sendgrid.stop().await;
}

#[tokio::test]
async fn fail_rate_one_fails_everything_but_healthz() {
    let mut opts = MockOptions::new(Profile::Sendgrid);
    opts.fail_rate = 1.0;
    opts.fail_status = 502;
    let mock = Mock::start(opts).await;
    let answer = mock.call(Method::GET, "/v3/user/profile", &[], "").await;
    assert_eq!(answer.status, StatusCode::BAD_GATEWAY);
    assert!(answer.json()["errors"].is_array());
    let health = mock.raw(Method::GET, "/healthz", &[], "").await;
    assert_eq!(health.status, StatusCode::OK);
    mock.stop().await;
}

#[tokio::test]
async fn invalid_options_are_rejected() {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let mut opts = MockOptions::new(Profile::Stripe);
    opts.fail_rate = 2.0;
    let error = serve(listener, opts, std::future::pending())
        .await
        .expect_err("fail_rate 2.0 is invalid");
    assert_eq!(error.kind(), std::io::ErrorKind::InvalidInput);
}

#[tokio::test]
async fn serves_h2c_prior_knowledge() {
    let client = Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http();
    let mock = Mock::start_with(MockOptions::new(Profile::Stripe), client).await;
    let answer = mock.form("/v1/customers", "name=H2").await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(answer.json()["name"], "H2");
    mock.stop().await;
}

#[tokio::test]
async fn oversized_body_is_413() {
    let mock = Mock::stripe().await;
    let body = "a".repeat(4 * 1024 * 1024 + 1);
    let answer = mock.form("/v1/customers", &body).await;
    assert_eq!(answer.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert!(answer.json()["error"].is_object());
    mock.stop().await;
}
