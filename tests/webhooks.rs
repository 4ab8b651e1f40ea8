//! Webhooks end to end: provider-style deliveries → Outpost's webhook listener → a recording
//! application; the official SDKs' fixtures; outbound signing; the `outpost webhook` CLI.
//!
//! Everything listens on `127.0.0.1:0`; readiness is `App::start` returning and a bound
//! listener; waits are channels, with `tokio::time::timeout` only as a hang guard.

use std::convert::Infallible;
use std::io::Write;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use http::header::{HeaderMap, HeaderName, HeaderValue};
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use outpost::app::App;
use outpost::config::{HmacAlgorithm, Secret, SignatureEncoding, WebhookScheme};
use outpost::webhook::{now_unix, provider_headers, Rejection, SignInput, Spec, Verifier};
use serde_json::Value;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot};

const GUARD: Duration = Duration::from_secs(20);

async fn guard<F: std::future::Future>(what: &str, fut: F) -> F::Output {
    tokio::time::timeout(GUARD, fut)
        .await
        .unwrap_or_else(|_| panic!("hang guard: {what}"))
}

// ------------------------------------------------------------------------------------------
// A recording application (the `forward_to` target) and a recording upstream
// ------------------------------------------------------------------------------------------

#[derive(Debug)]
struct Recorded {
    method: http::Method,
    uri: http::Uri,
    headers: HeaderMap,
    body: Bytes,
}

struct Recorder {
    addr: SocketAddr,
    rx: mpsc::UnboundedReceiver<Recorded>,
    /// Status the next requests are answered with.
    status: Arc<AtomicU16>,
    stop: Option<oneshot::Sender<()>>,
}

impl Recorder {
    async fn start() -> Recorder {
        Self::on(TcpListener::bind("127.0.0.1:0").await.unwrap()).await
    }

    async fn on(listener: TcpListener) -> Recorder {
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = mpsc::unbounded_channel();
        let status = Arc::new(AtomicU16::new(200));
        let (stop, mut stopped) = oneshot::channel::<()>();
        let answer = status.clone();
        tokio::spawn(async move {
            loop {
                let (stream, _) = tokio::select! {
                    a = listener.accept() => match a { Ok(a) => a, Err(_) => continue },
                    _ = &mut stopped => return,
                };
                let tx = tx.clone();
                let answer = answer.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |req: Request<Incoming>| {
                        let tx = tx.clone();
                        let answer = answer.clone();
                        async move {
                            let (parts, body) = req.into_parts();
                            let body = body
                                .collect()
                                .await
                                .map(|c| c.to_bytes())
                                .unwrap_or_default();
                            let _ = tx.send(Recorded {
                                method: parts.method,
                                uri: parts.uri,
                                headers: parts.headers,
                                body,
                            });
                            let status =
                                StatusCode::from_u16(answer.load(Ordering::SeqCst)).unwrap();
                            let mut response =
                                Response::new(Full::new(Bytes::from_static(b"app says hi")));
                            *response.status_mut() = status;
                            response
                                .headers_mut()
                                .insert("x-app", HeaderValue::from_static("yes"));
                            Ok::<_, Infallible>(response)
                        }
                    });
                    let _ = auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Recorder {
            addr,
            rx,
            status,
            stop: Some(stop),
        }
    }

    async fn next(&mut self) -> Recorded {
        guard("recorded request", self.rx.recv())
            .await
            .expect("recorder closed")
    }

    /// Everything recorded so far, without waiting (used after the responses were read).
    fn drain(&mut self) -> Vec<Recorded> {
        let mut out = Vec::new();
        while let Ok(r) = self.rx.try_recv() {
            out.push(r);
        }
        out
    }

    fn stop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        self.stop();
    }
}

// ------------------------------------------------------------------------------------------
// Client side
// ------------------------------------------------------------------------------------------

struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }

    fn error_type(&self) -> String {
        self.json()["error"]["type"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    }
}

fn client() -> Client<HttpConnector, Full<Bytes>> {
    Client::builder(TokioExecutor::new()).build(HttpConnector::new())
}

async fn post(
    addr: SocketAddr,
    path_and_query: &str,
    headers: &[(String, String)],
    body: &[u8],
) -> Answer {
    let mut req = Request::post(format!("http://{addr}{path_and_query}"))
        .body(Full::new(Bytes::copy_from_slice(body)))
        .unwrap();
    for (k, v) in headers {
        req.headers_mut().append(
            HeaderName::from_bytes(k.as_bytes()).unwrap(),
            HeaderValue::from_bytes(v.as_bytes()).unwrap(),
        );
    }
    let response = guard("post", client().request(req))
        .await
        .expect("request failed");
    let (parts, body) = response.into_parts();
    let body = guard("response body", body.collect())
        .await
        .unwrap()
        .to_bytes();
    Answer {
        status: parts.status,
        headers: parts.headers,
        body,
    }
}

/// The headers a provider sends for `body` (no delivery id, no URL).
fn signed(spec: &Spec, body: &[u8], timestamp: i64) -> Vec<(String, String)> {
    provider_headers(
        spec,
        &SignInput {
            body,
            timestamp,
            id: None,
            url: None,
        },
    )
    .unwrap()
}

fn pairs(lines: &[(String, String)]) -> Vec<(String, String)> {
    lines.to_vec()
}

// ------------------------------------------------------------------------------------------
// Outpost under test
// ------------------------------------------------------------------------------------------

fn load(yaml: &str) -> outpost::config::Config {
    logs();
    outpost::config::load_str(yaml, Path::new("/tmp/x/proxy.yaml"))
        .unwrap_or_else(|e| panic!("config: {e}\n{yaml}"))
}

fn load_file(path: &Path) -> outpost::config::Config {
    logs();
    outpost::config::load(path).unwrap_or_else(|e| panic!("config: {e}"))
}

fn base_yaml(upstreams: &str, webhooks: &str) -> String {
    format!(
        "version: 1\nlisten: 127.0.0.1:0\nadmin_listen: 127.0.0.1:0\nwebhook_listen: 127.0.0.1:0\nupstreams:\n{upstreams}\nwebhooks:\n{webhooks}\n"
    )
}

async fn start(webhooks: &str) -> App {
    App::start(load(&base_yaml("  {}", webhooks)))
        .await
        .expect("outpost starts")
}

fn whaddr(app: &App) -> SocketAddr {
    app.webhook_addr().expect("webhook listener bound")
}

/// A P-256 key pair for SendGrid: (base64 DER PKCS#8 private, base64 DER SPKI public).
fn sendgrid_keys(seed: u8) -> (String, String) {
    use p256::pkcs8::{EncodePrivateKey, EncodePublicKey};
    let key = p256::ecdsa::SigningKey::from_slice(&[seed; 32]).unwrap();
    let b64 = base64::engine::general_purpose::STANDARD;
    (
        b64.encode(key.to_pkcs8_der().unwrap().as_bytes()),
        b64.encode(key.verifying_key().to_public_key_der().unwrap().as_bytes()),
    )
}

const WHSEC: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
const WHSEC_OTHER: &str = "whsec_c2Vjb25kIHNlY3JldCBmb3IgdGVzdHM=";

/// One webhook of every scheme, as the e2e tests configure and sign them.
struct Scheme {
    name: &'static str,
    scheme: WebhookScheme,
    /// Secret the provider signs with (sendgrid: the private key).
    signing: String,
    /// Wrong secret of the same form.
    wrong: String,
    /// YAML lines of the webhook besides path/scheme/forward_to.
    yaml: String,
    timestamped: bool,
    /// The main signature header (removed for "missing", garbled for "malformed").
    header: &'static str,
    content_type: &'static str,
}

fn schemes() -> Vec<Scheme> {
    let (sg_private, sg_public) = sendgrid_keys(3);
    let (sg_wrong, _) = sendgrid_keys(4);
    let s = |name,
             scheme,
             signing: &str,
             wrong: &str,
             yaml: String,
             timestamped,
             header,
             content_type| Scheme {
        name,
        scheme,
        signing: signing.into(),
        wrong: wrong.into(),
        yaml,
        timestamped,
        header,
        content_type,
    };
    vec![
        s("stripe", WebhookScheme::Stripe, "whsec_test_secret", "whsec_other", "secrets: [\"whsec_test_secret\"]".into(), true, "Stripe-Signature", "application/json"),
        s("github", WebhookScheme::Github, "gh-secret", "gh-other", "secrets: [\"gh-secret\"]".into(), false, "X-Hub-Signature-256", "application/json"),
        s("standard", WebhookScheme::StandardWebhooks, WHSEC, WHSEC_OTHER, format!("secrets: [\"{WHSEC}\"]"), true, "webhook-signature", "application/json"),
        s("slack", WebhookScheme::Slack, "slack-secret", "slack-other", "secrets: [\"slack-secret\"]".into(), true, "X-Slack-Signature", "application/x-www-form-urlencoded"),
        s("shopify", WebhookScheme::Shopify, "shop-secret", "shop-other", "secrets: [\"shop-secret\"]".into(), false, "X-Shopify-Hmac-Sha256", "application/json"),
        s(
            "twilio",
            WebhookScheme::Twilio,
            "twilio-token",
            "twilio-other",
            "secrets: [\"twilio-token\"]\n    public_url: https://hooks.example.com/twilio".into(),
            false,
            "X-Twilio-Signature",
            "application/x-www-form-urlencoded",
        ),
        s("sendgrid", WebhookScheme::Sendgrid, &sg_private, &sg_wrong, format!("secrets: [\"{sg_public}\"]"), true, "X-Twilio-Email-Event-Webhook-Signature", "application/json"),
        s(
            "partner",
            WebhookScheme::Hmac,
            "partner-key",
            "partner-other",
            "secrets: [\"partner-key\"]\n    header: X-Partner-Signature\n    prefix: \"sha512=\"\n    algorithm: sha512\n    encoding: base64\n    timestamp_header: X-Partner-Timestamp".into(),
            true,
            "X-Partner-Signature",
            "application/json",
        ),
    ]
}

fn webhooks_yaml(schemes: &[Scheme], forward: SocketAddr) -> String {
    schemes
        .iter()
        .map(|s| format!("  {n}:\n    path: /{n}\n    scheme: {sc}\n    forward_to: http://{forward}/hooks/{n}\n    {y}\n", n = s.name, sc = s.scheme.name(), y = s.yaml))
        .collect()
}

fn body_for(s: &Scheme) -> Vec<u8> {
    match s.content_type {
        "application/x-www-form-urlencoded" => {
            b"CallSid=CA1&From=%2B14158675309&Body=Hello+Zo%C3%AB".to_vec()
        }
        _ => format!(
            "{{\"id\":\"evt_{}\",\"unicode\":\"Zo\u{eb} \u{1F680}\",\"spaces\":  [1, 2 ]}}\n",
            s.name
        )
        .into_bytes(),
    }
}

/// The headers a provider would send (plus Content-Type), signed with `secret` at `ts`.
fn sign(s: &Scheme, secret: &str, body: &[u8], ts: i64, id: Option<&str>) -> Vec<(String, String)> {
    let mut spec = Spec::new(s.scheme, vec![Secret::new(secret)]);
    if s.scheme == WebhookScheme::Hmac {
        spec.header = Some(HeaderName::from_static("x-partner-signature"));
        spec.prefix = "sha512=".into();
        spec.algorithm = HmacAlgorithm::Sha512;
        spec.encoding = SignatureEncoding::Base64;
        spec.timestamp_header = Some(HeaderName::from_static("x-partner-timestamp"));
    }
    let input = SignInput {
        body,
        timestamp: ts,
        id,
        url: Some("https://hooks.example.com/twilio"),
    };
    let mut lines = provider_headers(&spec, &input).unwrap();
    lines.push(("Content-Type".into(), s.content_type.into()));
    lines
}

fn without(lines: &[(String, String)], name: &str) -> Vec<(String, String)> {
    lines
        .iter()
        .filter(|(k, _)| !k.eq_ignore_ascii_case(name))
        .cloned()
        .collect()
}

fn replaced(lines: &[(String, String)], name: &str, value: &str) -> Vec<(String, String)> {
    let mut out = without(lines, name);
    out.push((name.to_string(), value.to_string()));
    out
}

fn assert_rejected(answer: &Answer, status: u16, kind: &str, what: &str) {
    assert_eq!(
        answer.status.as_u16(),
        status,
        "{what}: {}",
        String::from_utf8_lossy(&answer.body)
    );
    assert_eq!(answer.error_type(), kind, "{what}");
    assert_eq!(answer.headers["x-outpost-error"], kind, "{what}");
    assert_eq!(answer.headers["content-type"], "application/json", "{what}");
    let json = answer.json();
    assert_eq!(json["error"]["status"], status, "{what}");
    assert!(json["error"]["request_id"].is_string(), "{what}");
    assert!(json["error"]["retryable"].is_boolean(), "{what}");
}

fn metric(app: &App, webhook: &str, result: &str) -> u64 {
    let text = app.metrics.render();
    let needle = format!("outpost_webhooks_total{{webhook=\"{webhook}\",result=\"{result}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&needle))
        .map_or(0, |v| v.trim().parse().unwrap())
}

// ------------------------------------------------------------------------------------------
// Fixtures from the official SDKs
// ------------------------------------------------------------------------------------------

fn fixture_spec(case: &Value, secret: &str) -> (Spec, Option<String>) {
    let scheme: WebhookScheme = serde_json::from_value(case["scheme"].clone()).unwrap();
    let mut spec = Spec::new(scheme, vec![Secret::new(secret)]);
    let mut query = None;
    if let Some(url) = case["url"].as_str() {
        let (base, q) = url
            .split_once('?')
            .map_or((url, None), |(b, q)| (b, Some(q.to_string())));
        spec.public_url = Some(base.to_string());
        query = q;
    }
    if let Some(h) = case.get("hmac") {
        spec.header =
            Some(HeaderName::from_bytes(h["header"].as_str().unwrap().as_bytes()).unwrap());
        spec.prefix = h["prefix"].as_str().unwrap().to_string();
        spec.algorithm = serde_json::from_value(h["algorithm"].clone()).unwrap();
        spec.encoding = serde_json::from_value(h["encoding"].clone()).unwrap();
        spec.timestamp_header = h["timestamp_header"]
            .as_str()
            .map(|t| HeaderName::from_bytes(t.as_bytes()).unwrap());
    }
    (spec, query)
}

fn fixture_headers(case: &Value) -> HeaderMap {
    let mut h = HeaderMap::new();
    for (k, v) in case["headers"].as_object().unwrap() {
        h.insert(
            HeaderName::from_bytes(k.as_bytes()).unwrap(),
            HeaderValue::from_str(v.as_str().unwrap()).unwrap(),
        );
    }
    h
}

#[test]
fn official_sdk_fixtures_verify_and_tampering_fails() {
    let doc: Value = serde_json::from_str(include_str!("fixtures/webhooks/vectors.json")).unwrap();
    let cases = doc["cases"].as_array().unwrap();
    let mut seen = std::collections::BTreeSet::new();
    for (i, case) in cases.iter().enumerate() {
        let scheme = case["scheme"].as_str().unwrap();
        seen.insert(scheme.to_string());
        let secret = case["secret"].as_str().unwrap();
        let body = case["body"].as_str().unwrap().as_bytes();
        let ts = case["timestamp"].as_i64().unwrap();
        let (spec, query) = fixture_spec(case, secret);
        let headers = fixture_headers(case);
        let verifier = Verifier::new(spec).unwrap();
        let ok = verifier.verify(&headers, body, query.as_deref(), ts);
        assert!(ok.is_ok(), "case {i} ({scheme}): {ok:?}");

        // One byte changed (or added, for the empty body).
        let mut tampered = body.to_vec();
        match tampered.last_mut() {
            Some(b) => *b ^= 0x01,
            None => tampered.push(b'x'),
        }
        let bad = verifier.verify(&headers, &tampered, query.as_deref(), ts);
        assert!(
            matches!(bad, Err(Rejection::Invalid(_))),
            "case {i} ({scheme}) tampered: {bad:?}"
        );

        // Wrong secret of the same form.
        let wrong = match scheme {
            "sendgrid" => sendgrid_keys(11).1,
            "standard_webhooks" => WHSEC_OTHER.to_string(),
            _ => format!("{secret}x"),
        };
        let (spec, _) = fixture_spec(case, &wrong);
        let bad = Verifier::new(spec)
            .unwrap()
            .verify(&headers, body, query.as_deref(), ts);
        assert!(
            matches!(bad, Err(Rejection::Invalid(_))),
            "case {i} ({scheme}) wrong secret: {bad:?}"
        );

        // Our own signer agrees with the SDK (sendgrid signatures are randomized: verify ours).
        if let Some(private) = case["private_key"].as_str() {
            let (mut spec, _) = fixture_spec(case, private);
            spec.scheme = WebhookScheme::Sendgrid;
            let lines = signed(&spec, body, ts);
            let h: HeaderMap = lines
                .iter()
                .map(|(k, v)| {
                    (
                        HeaderName::from_bytes(k.as_bytes()).unwrap(),
                        HeaderValue::from_str(v).unwrap(),
                    )
                })
                .collect();
            assert!(
                verifier.verify(&h, body, None, ts).is_ok(),
                "case {i}: own sendgrid signature"
            );
        }
    }
    for scheme in [
        "stripe",
        "github",
        "standard_webhooks",
        "slack",
        "shopify",
        "twilio",
        "sendgrid",
        "hmac",
    ] {
        assert!(seen.contains(scheme), "fixtures lack {scheme}");
    }
}

// ------------------------------------------------------------------------------------------
// End to end, every scheme
// ------------------------------------------------------------------------------------------

#[tokio::test]
async fn every_scheme_forwards_verified_and_rejects_the_rest() {
    let mut app_server = Recorder::start().await;
    let all = schemes();
    let outpost = start(&webhooks_yaml(&all, app_server.addr)).await;
    let addr = whaddr(&outpost);
    let now = now_unix();
    // (signature_invalid, signature_missing) answers per scheme, to check the metrics.
    let mut expected = Vec::new();

    for s in &all {
        let (mut invalid, mut missing) = (2u64, 1u64);
        let body = body_for(s);
        let path = format!("/{}", s.name);
        let good = sign(s, &s.signing, &body, now, Some(&format!("id-{}", s.name)));

        // A genuine delivery reaches the application byte-identical, with the markers.
        let answer = post(addr, &path, &good, &body).await;
        assert_eq!(
            answer.status,
            200,
            "{}: {}",
            s.name,
            String::from_utf8_lossy(&answer.body)
        );
        assert_eq!(&answer.body[..], b"app says hi");
        assert_eq!(answer.headers["x-app"], "yes");
        let got = app_server.next().await;
        assert_eq!(got.method, http::Method::POST);
        assert_eq!(got.uri.path(), format!("/hooks/{}", s.name));
        assert_eq!(
            &got.body[..],
            &body[..],
            "{}: body must be byte-identical",
            s.name
        );
        assert_eq!(got.headers["x-outpost-webhook"], s.name);
        assert_eq!(got.headers["x-outpost-verified"], s.scheme.name());
        let sig_value = &good
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(s.header))
            .unwrap()
            .1;
        assert_eq!(
            got.headers[s.header],
            sig_value.as_str(),
            "{}: signature header forwarded",
            s.name
        );

        // One byte changed.
        let mut tampered = body.clone();
        let last = tampered.len() - 2;
        tampered[last] ^= 0x01;
        let a = post(addr, &path, &good, &tampered).await;
        assert_rejected(
            &a,
            401,
            "webhook_signature_invalid",
            &format!("{} one byte", s.name),
        );

        // Wrong secret.
        let a = post(addr, &path, &sign(s, &s.wrong, &body, now, None), &body).await;
        assert_rejected(
            &a,
            401,
            "webhook_signature_invalid",
            &format!("{} wrong secret", s.name),
        );

        // Missing signature header.
        let a = post(addr, &path, &without(&good, s.header), &body).await;
        assert_rejected(
            &a,
            400,
            "webhook_signature_missing",
            &format!("{} missing", s.name),
        );

        // Malformed header values, including bytes that are not text.
        for garbage in [
            "garbage",
            "t=,v1=,,==",
            "v1,",
            "sha256=zz",
            "\u{00e9}\u{00e9}",
        ] {
            let a = post(addr, &path, &replaced(&good, s.header, garbage), &body).await;
            assert!(
                a.status == 400 || a.status == 401,
                "{} malformed {garbage:?}: {}",
                s.name,
                a.status
            );
            if a.status == 400 {
                missing += 1;
            } else {
                invalid += 1;
            }
            assert!(
                a.error_type().starts_with("webhook_signature_"),
                "{} malformed {garbage:?}",
                s.name
            );
        }

        // Stale and far-future timestamps.
        if s.timestamped {
            for ts in [now - 3600, now + 3600] {
                let a = post(
                    addr,
                    &path,
                    &sign(s, &s.signing, &body, ts, Some(&format!("old-{ts}"))),
                    &body,
                )
                .await;
                assert_rejected(
                    &a,
                    401,
                    "webhook_timestamp_out_of_tolerance",
                    &format!("{} ts {ts}", s.name),
                );
            }
        }
        assert!(
            app_server.drain().is_empty(),
            "{}: a rejected delivery was forwarded",
            s.name
        );
        expected.push((invalid, missing));
    }

    for (s, (invalid, missing)) in all.iter().zip(expected) {
        assert_eq!(metric(&outpost, s.name, "verified"), 1, "{}", s.name);
        assert_eq!(
            metric(&outpost, s.name, "signature_invalid"),
            invalid,
            "{}",
            s.name
        );
        assert_eq!(
            metric(&outpost, s.name, "signature_missing"),
            missing,
            "{}",
            s.name
        );
        assert_eq!(
            metric(&outpost, s.name, "stale"),
            if s.timestamped { 2 } else { 0 },
            "{}",
            s.name
        );
    }
    outpost.shutdown().await;
}

#[tokio::test]
async fn stripe_v0_only_is_missing_and_second_v1_is_accepted() {
    let mut app_server = Recorder::start().await;
    let all: Vec<Scheme> = schemes()
        .into_iter()
        .filter(|s| s.name == "stripe")
        .collect();
    let outpost = start(&webhooks_yaml(&all, app_server.addr)).await;
    let addr = whaddr(&outpost);
    let body = br#"{"id":"evt_v1v1"}"#;
    let now = now_unix();
    let good = sign(&all[0], "whsec_test_secret", body, now, None);
    let v1 = good[0].1.split_once(",v1=").unwrap().1.to_string();

    let v0_only = format!("t={now},v0={v1}");
    let a = post(
        addr,
        "/stripe",
        &replaced(&good, "Stripe-Signature", &v0_only),
        body,
    )
    .await;
    assert_rejected(&a, 400, "webhook_signature_missing", "v0 only");

    let two = format!("t={now},v1={},v1={v1},v0=abc", "0".repeat(64));
    let a = post(
        addr,
        "/stripe",
        &replaced(&good, "Stripe-Signature", &two),
        body,
    )
    .await;
    assert_eq!(a.status, 200, "{}", String::from_utf8_lossy(&a.body));
    assert_eq!(&app_server.next().await.body[..], body);
    outpost.shutdown().await;
}

#[tokio::test]
async fn secret_file_with_trailing_newline_and_rotation() {
    let mut app_server = Recorder::start().await;
    let dir = std::env::temp_dir().join(format!("outpost-webhooks-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("partner-key");
    std::fs::write(&file, "file-secret\n").unwrap();
    let yaml = format!(
        "  partner:\n    path: /partner\n    scheme: hmac\n    header: X-Sig\n    secrets: [\"old-secret\", \"${{file:{}}}\"]\n    forward_to: http://{}/p\n",
        file.display(),
        app_server.addr
    );
    // A real config file, so `reload()` re-reads it and its secret files as SIGHUP would.
    let config_path = dir.join("proxy.yaml");
    std::fs::write(&config_path, base_yaml("  {}", &yaml)).unwrap();
    let outpost = App::start(load_file(&config_path)).await.unwrap();
    let addr = whaddr(&outpost);
    let mut spec = Spec::new(WebhookScheme::Hmac, vec![Secret::new("file-secret")]);
    spec.header = Some(HeaderName::from_static("x-sig"));
    let body = b"{\"rotated\":true}";
    let lines = signed(&spec, body, 0);
    let a = post(addr, "/partner", &pairs(&lines), body).await;
    assert_eq!(a.status, 200, "{}", String::from_utf8_lossy(&a.body));
    assert_eq!(&app_server.next().await.body[..], body);

    // A reload with a rotated file: the old value stops verifying, the new one starts.
    std::fs::write(&file, "rotated-secret\n").unwrap();
    assert!(outpost.reload(), "reload with the rotated secret file");
    let body2 = b"{\"rotated\":2}";
    let old = signed(&spec, body2, 0);
    assert_rejected(
        &post(addr, "/partner", &old, body2).await,
        401,
        "webhook_signature_invalid",
        "old file secret",
    );
    spec.secrets = vec![Secret::new("rotated-secret")];
    let new = signed(&spec, body2, 0);
    assert_eq!(post(addr, "/partner", &new, body2).await.status, 200);
    assert_eq!(&app_server.next().await.body[..], body2);
    outpost.shutdown().await;
    std::fs::remove_dir_all(&dir).ok();
}

/// A reload that adds the first webhook binds `webhook_listen` then and there; a reload that
/// cannot bind it fails (counted, logged) and the old config keeps serving.
#[tokio::test]
async fn a_reload_that_adds_the_first_webhook_starts_the_receiver() {
    let mut app_server = Recorder::start().await;
    let dir = std::env::temp_dir().join(format!("outpost-webhooks-add-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let config_path = dir.join("proxy.yaml");
    let no_hooks =
        "version: 1\nlisten: 127.0.0.1:0\nadmin_listen: 127.0.0.1:0\nwebhook_listen: 127.0.0.1:0\n";
    std::fs::write(&config_path, no_hooks).unwrap();
    let outpost = App::start(load_file(&config_path)).await.unwrap();
    assert!(outpost.webhook_addr().is_none());

    // Port taken: the reload fails and nothing changes.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let hook = format!(
        "  partner:\n    path: /partner\n    scheme: hmac\n    header: X-Sig\n    secrets: [\"added-secret\"]\n    forward_to: http://{}/p\n",
        app_server.addr
    );
    let with_hook = |listen: &str| {
        base_yaml("  {}", &hook).replace(
            "webhook_listen: 127.0.0.1:0",
            &format!("webhook_listen: {listen}"),
        )
    };
    std::fs::write(
        &config_path,
        with_hook(&taken.local_addr().unwrap().to_string()),
    )
    .unwrap();
    assert!(!outpost.reload(), "binding a taken port fails the reload");
    assert!(outpost.webhook_addr().is_none());
    assert!(
        outpost.config().webhooks.is_empty(),
        "the old config keeps serving"
    );
    drop(taken);

    std::fs::write(&config_path, with_hook("127.0.0.1:0")).unwrap();
    assert!(outpost.reload(), "reload adding a webhook");
    let addr = outpost
        .webhook_addr()
        .expect("receiver bound by the reload");
    let mut spec = Spec::new(WebhookScheme::Hmac, vec![Secret::new("added-secret")]);
    spec.header = Some(HeaderName::from_static("x-sig"));
    let body = b"{\"added\":true}";
    let lines = signed(&spec, body, 0);
    let answer = post(addr, "/partner", &pairs(&lines), body).await;
    assert_eq!(
        answer.status,
        200,
        "{}",
        String::from_utf8_lossy(&answer.body)
    );
    assert_eq!(&app_server.next().await.body[..], body);
    assert_rejected(
        &post(addr, "/partner", &[], body).await,
        400,
        "webhook_signature_missing",
        "unsigned delivery to the added webhook",
    );
    // Shutdown also stops the receiver the reload started.
    outpost.shutdown().await;
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "receiver closed on shutdown"
    );
    std::fs::remove_dir_all(&dir).ok();
}

// ------------------------------------------------------------------------------------------
// Replay, forwarding failures, limits, routing, h2
// ------------------------------------------------------------------------------------------

#[tokio::test]
async fn replay_is_answered_without_a_second_forward() {
    let mut app_server = Recorder::start().await;
    let all: Vec<Scheme> = schemes()
        .into_iter()
        .filter(|s| matches!(s.name, "standard" | "github"))
        .collect();
    let outpost = start(&webhooks_yaml(&all, app_server.addr)).await;
    let addr = whaddr(&outpost);
    for s in &all {
        let body = body_for(s);
        let path = format!("/{}", s.name);
        let lines = sign(s, &s.signing, &body, now_unix(), Some("delivery-1"));
        assert_eq!(post(addr, &path, &lines, &body).await.status, 200);
        app_server.next().await;
        let again = post(addr, &path, &lines, &body).await;
        assert_eq!(again.status, 200, "{}", s.name);
        assert_eq!(again.headers["x-outpost-replayed"], "true");
        // GitHub's delivery id is not signed: a new id on a captured delivery is still a replay.
        let renamed = replaced(&lines, "X-GitHub-Delivery", "delivery-2");
        if s.name == "github" {
            assert_eq!(
                post(addr, &path, &renamed, &body).await.headers["x-outpost-replayed"],
                "true"
            );
        }
        assert!(
            app_server.drain().is_empty(),
            "{}: replay forwarded",
            s.name
        );
        assert!(metric(&outpost, s.name, "replayed") >= 1);
    }
    outpost.shutdown().await;
}

#[tokio::test]
async fn app_down_then_back_and_app_5xx_are_retried_by_the_provider() {
    // A port with nothing listening (bound, then released), where the app starts later.
    let parked = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let app_addr = parked.local_addr().unwrap();
    drop(parked);
    let all: Vec<Scheme> = schemes()
        .into_iter()
        .filter(|s| s.name == "stripe")
        .collect();
    let outpost = start(&webhooks_yaml(&all, app_addr)).await;
    let addr = whaddr(&outpost);
    let body = br#"{"id":"evt_down"}"#;
    let lines = sign(&all[0], "whsec_test_secret", body, now_unix(), None);

    let a = post(addr, "/stripe", &lines, body).await;
    assert_rejected(&a, 503, "webhook_forward_failed", "app down");
    assert_eq!(a.json()["error"]["retryable"], true);
    assert_eq!(metric(&outpost, "stripe", "forward_failed"), 1);

    // The app comes back; the provider's retry (same delivery) is forwarded, not "replayed".
    let mut app_server = Recorder::on(TcpListener::bind(app_addr).await.unwrap()).await;
    app_server.status.store(500, Ordering::SeqCst);
    let a = post(addr, "/stripe", &lines, body).await;
    assert_eq!(a.status, 500, "the application's 5xx reaches the provider");
    app_server.next().await;
    assert_eq!(metric(&outpost, "stripe", "forward_failed"), 2);

    app_server.status.store(200, Ordering::SeqCst);
    let a = post(addr, "/stripe", &lines, body).await;
    assert_eq!(a.status, 200);
    assert!(a.headers.get("x-outpost-replayed").is_none());
    assert_eq!(&app_server.next().await.body[..], body);
    // Now it is remembered.
    assert_eq!(
        post(addr, "/stripe", &lines, body).await.headers["x-outpost-replayed"],
        "true"
    );
    assert!(app_server.drain().is_empty());
    outpost.shutdown().await;
}

#[tokio::test]
async fn app_4xx_passes_through_and_is_not_remembered() {
    let mut app_server = Recorder::start().await;
    let all: Vec<Scheme> = schemes()
        .into_iter()
        .filter(|s| s.name == "shopify")
        .collect();
    let outpost = start(&webhooks_yaml(&all, app_server.addr)).await;
    let addr = whaddr(&outpost);
    let body = body_for(&all[0]);
    let lines = sign(&all[0], "shop-secret", &body, 0, Some("w-1"));
    app_server.status.store(422, Ordering::SeqCst);
    assert_eq!(post(addr, "/shopify", &lines, &body).await.status, 422);
    app_server.next().await;
    app_server.status.store(200, Ordering::SeqCst);
    assert_eq!(post(addr, "/shopify", &lines, &body).await.status, 200);
    app_server.next().await;
    outpost.shutdown().await;
}

#[tokio::test]
async fn too_large_unknown_path_and_query_forwarding() {
    let mut app_server = Recorder::start().await;
    let yaml = format!(
        "  small:\n    path: /small\n    scheme: github\n    secrets: [\"s\"]\n    max_body_bytes: 64\n    forward_to: http://{0}/small\n  twilio:\n    path: /twilio\n    scheme: twilio\n    public_url: https://hooks.example.com/twilio\n    secrets: [\"t\"]\n    forward_to: http://{0}/tw\n",
        app_server.addr
    );
    let outpost = start(&yaml).await;
    let addr = whaddr(&outpost);
    let spec = Spec::new(WebhookScheme::Github, vec![Secret::new("s")]);
    let big = vec![b'a'; 65];
    let lines = signed(&spec, &big, 0);
    assert_rejected(
        &post(addr, "/small", &lines, &big).await,
        413,
        "payload_too_large",
        "content-length",
    );

    // Chunked, no Content-Length: the limited read catches it.
    let chunks: Vec<Result<Frame<Bytes>, Infallible>> = (0..5)
        .map(|_| Ok(Frame::data(Bytes::from_static(&[b'a'; 20]))))
        .collect();
    let mut req = Request::post(format!("http://{addr}/small"))
        .body(StreamBody::new(futures_util::stream::iter(chunks)))
        .unwrap();
    for (k, v) in &lines {
        req.headers_mut().insert(
            HeaderName::from_bytes(k.as_bytes()).unwrap(),
            HeaderValue::from_str(v).unwrap(),
        );
    }
    let streaming: Client<HttpConnector, _> =
        Client::builder(TokioExecutor::new()).build(HttpConnector::new());
    let response = guard("chunked post", streaming.request(req)).await.unwrap();
    assert_eq!(response.status(), 413);
    assert_eq!(response.headers()["x-outpost-error"], "payload_too_large");
    assert_eq!(metric(&outpost, "small", "too_large"), 2);

    let a = post(addr, "/nope", &lines, b"{}").await;
    assert_rejected(&a, 404, "unknown_webhook", "unknown path");
    let a = post(addr, "/small/", &lines, b"{}").await;
    assert_rejected(&a, 404, "unknown_webhook", "paths match exactly");

    // Twilio signs the query; it is forwarded too.
    let form = b"Body=hi&From=%2B1";
    let tspec = {
        let mut s = Spec::new(WebhookScheme::Twilio, vec![Secret::new("t")]);
        s.public_url = Some("https://hooks.example.com/twilio".into());
        s
    };
    let url = "https://hooks.example.com/twilio?tenant=a%2Fb&x=1";
    let mut lines = provider_headers(
        &tspec,
        &SignInput {
            body: form,
            timestamp: 0,
            id: None,
            url: Some(url),
        },
    )
    .unwrap();
    lines.push((
        "Content-Type".into(),
        "application/x-www-form-urlencoded".into(),
    ));
    let a = post(addr, "/twilio?tenant=a%2Fb&x=1", &lines, form).await;
    assert_eq!(a.status, 200, "{}", String::from_utf8_lossy(&a.body));
    let got = app_server.next().await;
    assert_eq!(
        got.uri.path_and_query().unwrap().as_str(),
        "/tw?tenant=a%2Fb&x=1"
    );
    // The same request on another query does not verify.
    assert_rejected(
        &post(addr, "/twilio?tenant=c&x=1", &lines, form).await,
        401,
        "webhook_signature_invalid",
        "twilio query",
    );
    outpost.shutdown().await;
}

#[tokio::test]
async fn http2_prior_knowledge_is_served() {
    let mut app_server = Recorder::start().await;
    let all: Vec<Scheme> = schemes()
        .into_iter()
        .filter(|s| s.name == "slack")
        .collect();
    let outpost = start(&webhooks_yaml(&all, app_server.addr)).await;
    let body = body_for(&all[0]);
    let lines = sign(&all[0], "slack-secret", &body, now_unix(), None);
    let h2: Client<HttpConnector, Full<Bytes>> = Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build(HttpConnector::new());
    let mut req = Request::post(format!("http://{}/slack", whaddr(&outpost)))
        .body(Full::new(Bytes::from(body.clone())))
        .unwrap();
    for (k, v) in &lines {
        req.headers_mut().insert(
            HeaderName::from_bytes(k.as_bytes()).unwrap(),
            HeaderValue::from_str(v).unwrap(),
        );
    }
    let response = guard("h2 post", h2.request(req)).await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.version(), http::Version::HTTP_2);
    assert_eq!(&app_server.next().await.body[..], &body[..]);
    outpost.shutdown().await;
}

#[tokio::test]
async fn no_webhooks_no_listener() {
    let outpost = App::start(load(
        "version: 1\nlisten: 127.0.0.1:0\nadmin_listen: 127.0.0.1:0\nwebhook_listen: 127.0.0.1:0\n",
    ))
    .await
    .unwrap();
    assert!(outpost.webhook_addr().is_none());
    outpost.shutdown().await;
}

// ------------------------------------------------------------------------------------------
// Outbound signing
// ------------------------------------------------------------------------------------------

#[tokio::test]
async fn outbound_signing_verifies_with_our_verifier() {
    let mut upstream = Recorder::start().await;
    let yaml = format!(
        "version: 1\nlisten: 127.0.0.1:0\nadmin_listen: 127.0.0.1:0\nupstreams:\n  customer-hooks:\n    base_url: http://{0}\n    auth: {{ type: standard_webhooks, secret: \"{WHSEC}\" }}\n    retry: {{ max_attempts: 1 }}\n  partner-hooks:\n    base_url: http://{0}\n    auth: {{ type: hmac_signature, header: X-Signature, prefix: \"sha256=\", algorithm: sha256, encoding: hex, secret: \"partner-key\" }}\n    retry: {{ max_attempts: 1 }}\n",
        upstream.addr
    );
    let outpost = App::start(load(&yaml)).await.unwrap();
    let app = outpost.app_addr;
    let body = br#"{"type":"invoice.paid","amount":  42}"#;

    let a = post(
        app,
        "/customer-hooks/deliver",
        &[("content-type".into(), "application/json".into())],
        body,
    )
    .await;
    assert_eq!(a.status, 200, "{}", String::from_utf8_lossy(&a.body));
    let got = upstream.next().await;
    assert_eq!(&got.body[..], body);
    assert!(got.headers["webhook-id"]
        .to_str()
        .unwrap()
        .starts_with("msg_"));
    assert!(got.headers["webhook-signature"]
        .to_str()
        .unwrap()
        .starts_with("v1,"));
    let verifier = Verifier::new(Spec::new(
        WebhookScheme::StandardWebhooks,
        vec![Secret::new(WHSEC)],
    ))
    .unwrap();
    verifier
        .verify(&got.headers, &got.body, None, now_unix())
        .expect("standard webhooks signature verifies");

    // The application's own webhook-id is kept (its retries of one message keep one id).
    let a = post(
        app,
        "/customer-hooks/deliver",
        &[
            ("webhook-id".into(), "msg_app_chosen".into()),
            ("webhook-signature".into(), "v1,forged".into()),
        ],
        body,
    )
    .await;
    assert_eq!(a.status, 200);
    let got = upstream.next().await;
    assert_eq!(got.headers["webhook-id"], "msg_app_chosen");
    assert_eq!(got.headers.get_all("webhook-signature").iter().count(), 1);
    assert!(verifier
        .verify(&got.headers, &got.body, None, now_unix())
        .is_ok());

    let a = post(app, "/partner-hooks/x", &[], body).await;
    assert_eq!(a.status, 200);
    let got = upstream.next().await;
    let mut spec = Spec::new(WebhookScheme::Hmac, vec![Secret::new("partner-key")]);
    spec.header = Some(HeaderName::from_static("x-signature"));
    spec.prefix = "sha256=".into();
    Verifier::new(spec)
        .unwrap()
        .verify(&got.headers, &got.body, None, now_unix())
        .expect("hmac signature verifies");

    // Bodies over the signing limit (1 MiB by default) are refused, not sent unsigned.
    let big = vec![b'x'; 1024 * 1024 + 1];
    let a = post(app, "/partner-hooks/x", &[], &big).await;
    assert_eq!(a.status, 413);
    assert_eq!(a.error_type(), "payload_too_large");
    assert!(upstream.drain().is_empty());
    outpost.shutdown().await;
}

// ------------------------------------------------------------------------------------------
// CLI through the real binary
// ------------------------------------------------------------------------------------------

fn outpost_cli(args: &[&str], stdin: &[u8]) -> (i32, String, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_outpost"))
        .args(args)
        .env("OUTPOST_LOG", "off")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run outpost");
    child.stdin.take().unwrap().write_all(stdin).unwrap();
    let out = child.wait_with_output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn cli_sign_matches_the_published_stripe_vector_and_verify_round_trips() {
    let body = br#"{"id":"evt_test_webhook","object":"event"}"#;
    let (code, out, err) = outpost_cli(
        &[
            "webhook",
            "sign",
            "--scheme",
            "stripe",
            "--secret",
            "whsec_test_secret",
            "--timestamp",
            "1700000000",
        ],
        body,
    );
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.trim(), "Stripe-Signature: t=1700000000,v1=d95c6b7477fbd7e9f90b1b0ef5f9c7ac25abca5382460e0d988c2b2a5b71b990");
    let header = out.trim().to_string();
    let (code, out, _) = outpost_cli(
        &[
            "webhook",
            "verify",
            "--scheme",
            "stripe",
            "--secret",
            "whsec_test_secret",
            "--tolerance",
            "off",
            "-H",
            &header,
        ],
        body,
    );
    assert_eq!((code, out.trim()), (0, "valid"));
    let (code, _, err) = outpost_cli(
        &[
            "webhook",
            "verify",
            "--scheme",
            "stripe",
            "--secret",
            "whsec_test_secret",
            "-H",
            &header,
        ],
        body,
    );
    assert_eq!(code, 1);
    assert!(err.contains("webhook_timestamp_out_of_tolerance"), "{err}");
    let (code, _, err) = outpost_cli(
        &[
            "webhook",
            "verify",
            "--scheme",
            "stripe",
            "--secret",
            "whsec_test_secret",
            "--tolerance",
            "off",
            "-H",
            &header,
        ],
        b"{}",
    );
    assert_eq!(code, 1);
    assert!(err.contains("invalid"), "{err}");
    let (code, _, err) = outpost_cli(
        &[
            "webhook",
            "verify",
            "--scheme",
            "stripe",
            "--secret",
            "whsec_test_secret",
        ],
        body,
    );
    assert_eq!(code, 1);
    assert!(err.contains("webhook_signature_missing"), "{err}");
}

#[test]
fn cli_every_scheme_round_trips() {
    let now = now_unix().to_string();
    let (sg_private, sg_public) = sendgrid_keys(5);
    let cases: Vec<(&str, String, String, Vec<&str>)> = vec![
        ("github", "gh".into(), "gh".into(), vec!["--id", "d-1"]),
        ("standard_webhooks", WHSEC.into(), WHSEC.into(), vec![]),
        ("slack", "sl".into(), "sl".into(), vec![]),
        ("shopify", "sh".into(), "sh".into(), vec![]),
        (
            "twilio",
            "tw".into(),
            "tw".into(),
            vec!["--url", "https://example.com/sms?x=1"],
        ),
        ("sendgrid", sg_private, sg_public, vec![]),
        (
            "hmac",
            "hm".into(),
            "hm".into(),
            vec![
                "--header",
                "X-Sig",
                "--prefix",
                "sha1=",
                "--algorithm",
                "sha1",
                "--encoding",
                "base64",
                "--timestamp-header",
                "X-Ts",
            ],
        ),
    ];
    for (scheme, sign_secret, verify_secret, extra) in cases {
        let body: &[u8] = if scheme == "twilio" {
            b"A=1&B=two+words"
        } else {
            b"{\"x\": 1}"
        };
        let mut args = vec![
            "webhook",
            "sign",
            "--scheme",
            scheme,
            "--secret",
            &sign_secret,
            "--timestamp",
            &now,
        ];
        args.extend(&extra);
        let (code, out, err) = outpost_cli(&args, body);
        assert_eq!(code, 0, "{scheme}: {err}");
        let mut verify = vec![
            "webhook".to_string(),
            "verify".into(),
            "--scheme".into(),
            scheme.into(),
            "--secret".into(),
            "wrong-first".into(),
            "--secret".into(),
            verify_secret.clone(),
        ];
        if scheme == "sendgrid" || scheme == "standard_webhooks" {
            verify.truncate(4);
            verify.extend(["--secret".into(), verify_secret.clone()]);
        }
        for line in out.lines() {
            verify.extend(["-H".to_string(), line.to_string()]);
        }
        let skip = |a: &&&str| !matches!(**a, "--id" | "d-1");
        verify.extend(extra.iter().filter(skip).map(|s| s.to_string()));
        let args: Vec<&str> = verify.iter().map(String::as_str).collect();
        let (code, out, err) = outpost_cli(&args, body);
        assert_eq!((code, out.trim()), (0, "valid"), "{scheme}: {err}");
        let (code, _, err) = outpost_cli(&args, b"{\"x\": 2}");
        assert_eq!(code, 1, "{scheme}: tampered body must fail: {err}");
    }
}

#[test]
fn cli_help_and_usage_errors() {
    let (code, out, _) = outpost_cli(&["webhook", "sign", "--help"], b"");
    assert_eq!(code, 0);
    for word in [
        "--scheme",
        "--secret",
        "--timestamp",
        "--id",
        "--url",
        "standard_webhooks",
        "sendgrid",
        "--header",
    ] {
        assert!(out.contains(word), "help lacks {word}:\n{out}");
    }
    let (code, out, _) = outpost_cli(&["webhook", "verify", "--help"], b"");
    assert_eq!(code, 0);
    assert!(out.contains("-H") && out.contains("--tolerance"), "{out}");
    let (code, _, err) = outpost_cli(
        &[
            "webhook",
            "verify",
            "--scheme",
            "standard_webhooks",
            "--secret",
            "whsec_***",
            "-H",
            "webhook-id: x",
        ],
        b"",
    );
    assert_eq!(code, 2, "a bad secret is a usage error: {err}");
    assert!(!err.contains("***"), "the secret is not echoed: {err}");
    std::env::set_var("OUTPOST_TEST_CLI_SECRET", "from-env");
    let (code, out, err) = outpost_cli(
        &[
            "webhook",
            "sign",
            "--scheme",
            "github",
            "--secret",
            "${env:OUTPOST_TEST_CLI_SECRET}",
        ],
        b"x",
    );
    assert_eq!(code, 0, "{err}");
    let (_, direct, _) = outpost_cli(
        &[
            "webhook", "sign", "--scheme", "github", "--secret", "from-env",
        ],
        b"x",
    );
    assert_eq!(out, direct);
}

// ------------------------------------------------------------------------------------------
// Secrets and bodies never reach logs, error bodies or metrics
// ------------------------------------------------------------------------------------------

#[derive(Clone, Default)]
struct LogBuffer(Arc<std::sync::Mutex<Vec<u8>>>);

impl Write for LogBuffer {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for LogBuffer {
    type Writer = LogBuffer;
    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

/// Every log line of this test binary, Outpost's at every level. One global subscriber,
/// installed before any Outpost in this binary starts (by [`load`]): a per-test scoped
/// subscriber (`set_default`) loses lines when another test thread registers the same
/// callsite first (tracing caches a callsite's interest process-wide).
fn logs() -> &'static LogBuffer {
    static LOGS: std::sync::OnceLock<LogBuffer> = std::sync::OnceLock::new();
    LOGS.get_or_init(|| {
        let logs = LogBuffer::default();
        let subscriber = tracing_subscriber::fmt()
            .with_env_filter("outpost=trace,warn")
            .with_writer(logs.clone())
            .json()
            .finish();
        tracing::subscriber::set_global_default(subscriber).expect("one global subscriber");
        logs
    })
}

#[tokio::test]
async fn no_secret_or_body_in_logs_errors_or_metrics() {
    let logs = logs();

    const SECRET: &str = "whsec_SUPERSECRETVALUE123";
    const BODY_MARK: &str = "BODYMARKER-4242";
    let mut app_server = Recorder::start().await;
    let yaml = format!(
        "  leak:\n    path: /leak\n    scheme: stripe\n    secrets: [\"{SECRET}\"]\n    forward_to: http://{}/leak\n",
        app_server.addr
    );
    let outpost = start(&yaml).await;
    let addr = whaddr(&outpost);
    let body = format!("{{\"id\":\"{BODY_MARK}\"}}");
    let spec = Spec::new(WebhookScheme::Stripe, vec![Secret::new(SECRET)]);
    let good = signed(&spec, body.as_bytes(), now_unix());
    let signature = good[0].1.clone();

    let mut answers = Vec::new();
    answers.push(post(addr, "/leak", &good, body.as_bytes()).await);
    app_server.next().await;
    answers.push(
        post(
            addr,
            "/leak",
            &good,
            b"{\"id\":\"BODYMARKER-4242 tampered\"}",
        )
        .await,
    );
    answers.push(
        post(
            addr,
            "/leak",
            &replaced(&good, "Stripe-Signature", "t=1,v1=zz"),
            body.as_bytes(),
        )
        .await,
    );
    app_server.status.store(503, Ordering::SeqCst);
    let spec_new = signed(&spec, b"{\"id\":\"BODYMARKER-4242 2\"}", now_unix());
    answers.push(post(addr, "/leak", &spec_new, b"{\"id\":\"BODYMARKER-4242 2\"}").await);
    let metrics_text = outpost.metrics.render();
    outpost.shutdown().await;

    let text = String::from_utf8(logs.0.lock().unwrap().clone()).unwrap();
    assert!(!text.contains(SECRET), "a secret reached the logs");
    for line in text.lines().filter(|l| l.contains("\"target\":\"outpost")) {
        assert!(!line.contains(BODY_MARK), "a body reached the logs: {line}");
        assert!(
            !line.contains(&signature),
            "a signature reached the logs: {line}"
        );
    }
    // One access line per delivery, on the `outpost::webhook` target (other tests in this
    // binary log their own webhooks' lines into the same buffer).
    let deliveries: Vec<&str> = text
        .lines()
        .filter(|l| {
            l.contains("\"target\":\"outpost::webhook\"") && l.contains("\"webhook\":\"leak\"")
        })
        .collect();
    assert_eq!(
        deliveries.len(),
        4,
        "one line per delivery:\n{}",
        deliveries.join("\n")
    );
    for line in &deliveries {
        assert!(line.contains("\"webhook\":\"leak\""), "{line}");
        assert!(
            line.contains("\"result\"")
                && line.contains("\"status\"")
                && line.contains("duration_ms"),
            "{line}"
        );
    }
    for a in &answers {
        let body = String::from_utf8_lossy(&a.body);
        assert!(
            !body.contains(SECRET) && !body.contains(&signature),
            "{body}"
        );
        if a.status != 200 {
            assert!(!body.contains(BODY_MARK), "{body}");
        }
    }
    assert!(!metrics_text.contains(SECRET) && !metrics_text.contains(BODY_MARK));
    assert!(
        metrics_text
            .contains(r#"outpost_webhooks_total{webhook="leak",result="forward_failed"} 1"#),
        "{metrics_text}"
    );
}
