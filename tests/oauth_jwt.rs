//! JWT-minted credentials end to end (issue 11): `oauth2_jwt_bearer` from a Google
//! service-account key file and from `issuer` + `private_key` (the Salesforce JWT bearer flow),
//! and `github_app` installation tokens. The token servers here verify every assertion with the
//! public key, as Google, Salesforce and GitHub do (REFERENCE.md "JWT bearer grant", "GitHub
//! App"), so a wrong claim or signature fails the test. The private key and the tokens never
//! appear in `outpost check` output, error bodies or metrics.

mod support;

use std::sync::{Arc, Mutex};

use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::json;
use support::*;

const RSA: &str = include_str!("fixtures/keys/rsa-test.pem");
const RSA_PUB: &str = include_str!("fixtures/keys/rsa-test.pub.pem");
const EC: &str = include_str!("fixtures/keys/ec-test.pem");
const EC_PUB: &str = include_str!("fixtures/keys/ec-test.pub.pem");

fn field(form: &[(String, String)], name: &str) -> Option<String> {
    form.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone())
}

/// Verify a JWT with `public_pem`; returns (header kid, claims).
fn verify(
    jwt: &str,
    public_pem: &str,
    alg: Algorithm,
    aud: Option<&str>,
) -> Result<(Option<String>, serde_json::Value), String> {
    let key = match alg {
        Algorithm::ES256 => DecodingKey::from_ec_pem(public_pem.as_bytes()),
        _ => DecodingKey::from_rsa_pem(public_pem.as_bytes()),
    }
    .unwrap();
    let mut validation = Validation::new(alg);
    match aud {
        Some(aud) => validation.set_audience(&[aud]),
        None => validation.validate_aud = false,
    }
    jsonwebtoken::decode::<serde_json::Value>(jwt, &key, &validation)
        .map(|d| (d.header.kid, d.claims))
        .map_err(|e| e.to_string())
}

/// The assertions a token server verified: (header kid, claims).
type Verified = Arc<Mutex<Vec<(Option<String>, serde_json::Value)>>>;

/// A token server for the JWT bearer grant that checks each assertion and answers a token.
async fn bearer_token_server(
    public_pem: &'static str,
    alg: Algorithm,
    seen: Verified,
    answer: serde_json::Value,
) -> MockUpstream {
    MockUpstream::start(move |req| {
        let fields = form_pairs(&req.body);
        if field(&fields, "grant_type").as_deref()
            != Some("urn:ietf:params:oauth:grant-type:jwt-bearer")
        {
            return Reply::json(400, &json!({"error": "unsupported_grant_type"}));
        }
        let assertion = field(&fields, "assertion").unwrap_or_default();
        let aud = format!("http://{}{}", req.header("host").unwrap(), req.path());
        match verify(&assertion, public_pem, alg, Some(&aud)) {
            Ok(verified) => {
                seen.lock().unwrap().push(verified);
                Reply::json(200, &answer)
            }
            Err(_) => Reply::json(400, &json!({"error": "invalid_grant"})),
        }
    })
    .await
}

fn api_expecting(token: &'static str) -> impl Fn(&RecordedRequest) -> Reply {
    move |req| {
        if req.header("authorization") == Some(&format!("Bearer {token}")) {
            Reply::json(200, &json!({"ok": true}))
        } else {
            Reply::json(401, &json!({"error": "unauthenticated"}))
        }
    }
}

#[tokio::test]
async fn google_service_account_key_file() {
    let seen: Verified = Arc::default();
    let tokens = bearer_token_server(
        RSA_PUB,
        Algorithm::RS256,
        Arc::clone(&seen),
        json!({"access_token": "ya29.canary-token", "expires_in": 3599, "token_type": "Bearer"}),
    )
    .await;
    let api = MockUpstream::start(api_expecting("ya29.canary-token")).await;
    let dir = TempDir::new("gcp");
    let key = json!({
        "type": "service_account",
        "project_id": "demo",
        "private_key_id": "key-id-1",
        "private_key": RSA,
        "client_email": "outpost@demo.iam.gserviceaccount.com",
        "client_id": "1234",
        "token_uri": tokens.url("/token"),
    });
    let key_path = dir.write("key.json", key.to_string());
    let proxy = Proxy::start(&format!(
        "upstreams:\n  google:\n    base_url: {}\n    auth:\n      type: oauth2_jwt_bearer\n      service_account: \"${{file:{}}}\"\n      scopes: [https://www.googleapis.com/auth/cloud-platform, email]\n",
        api.url(""),
        key_path.display()
    ))
    .await;
    for _ in 0..3 {
        let answer = proxy.get("/google/v1/projects").await;
        assert_eq!(answer.status, 200, "{}", answer.text());
    }
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 1, "one token for three requests");
    let (kid, claims) = &seen[0];
    assert_eq!(kid.as_deref(), Some("key-id-1"));
    assert_eq!(claims["iss"], "outpost@demo.iam.gserviceaccount.com");
    assert_eq!(
        claims["scope"],
        "https://www.googleapis.com/auth/cloud-platform email"
    );
    assert!(claims.get("sub").is_none());
    let metrics = proxy.metrics();
    assert!(!metrics.contains("canary-token") && !metrics.contains("PRIVATE KEY"));
    proxy.shutdown().await;
}

#[tokio::test]
async fn salesforce_style_issuer_subject_and_login_audience() {
    let seen: Verified = Arc::default();
    // Salesforce answers no `expires_in`: the token is cached (for the default hour).
    let tokens = bearer_token_server(
        EC_PUB,
        Algorithm::ES256,
        Arc::clone(&seen),
        json!({"access_token": "00D-canary", "instance_url": "https://acme.my.salesforce.com", "token_type": "Bearer"}),
    )
    .await;
    let api = MockUpstream::start(api_expecting("00D-canary")).await;
    let dir = TempDir::new("sf");
    let key_path = dir.write("key.pem", EC);
    let token_url = tokens.url("/services/oauth2/token");
    let proxy = Proxy::start(&format!(
        "upstreams:\n  salesforce:\n    base_url: {}\n    auth:\n      type: oauth2_jwt_bearer\n      issuer: 3MVG9consumer\n      subject: api@acme.example\n      audience: {token_url}\n      token_url: {token_url}\n      private_key: \"${{file:{}}}\"\n",
        api.url(""),
        key_path.display()
    ))
    .await;
    let answer = proxy.get("/salesforce/services/data/v60.0/limits").await;
    assert_eq!(answer.status, 200, "{}", answer.text());
    let seen = seen.lock().unwrap().clone();
    let (_, claims) = &seen[0];
    assert_eq!(claims["iss"], "3MVG9consumer");
    assert_eq!(claims["sub"], "api@acme.example");
    let (iat, exp) = (
        claims["iat"].as_u64().unwrap(),
        claims["exp"].as_u64().unwrap(),
    );
    assert!(exp > iat && exp - iat <= 180, "exp within 3 minutes");
    proxy.shutdown().await;
}

#[tokio::test]
async fn github_app_installation_token_is_minted_cached_and_injected() {
    let seen: Arc<Mutex<Vec<serde_json::Value>>> = Arc::default();
    let record = seen.clone();
    let api = MockUpstream::start(move |req| {
        if req.path() == "/app/installations/4242/access_tokens" {
            assert_eq!(req.method, http::Method::POST);
            let jwt = req
                .header("authorization")
                .and_then(|a| a.strip_prefix("Bearer "))
                .unwrap_or_default();
            return match verify(jwt, RSA_PUB, Algorithm::RS256, None) {
                Ok((_, claims)) if req.header("user-agent").is_some() => {
                    record.lock().unwrap().push(claims);
                    let expires =
                        std::time::SystemTime::now() + std::time::Duration::from_secs(3600);
                    Reply::json(
                        201,
                        &json!({"token": "ghs_canary", "expires_at": outpost::capture::rfc3339(expires)}),
                    )
                }
                _ => Reply::json(
                    401,
                    &json!({"message": "A JSON web token could not be decoded"}),
                ),
            };
        }
        api_expecting("ghs_canary")(req)
    })
    .await;
    let dir = TempDir::new("gh");
    let key_path = dir.write("app.pem", RSA);
    let yaml = format!(
        "upstreams:\n  github:\n    base_url: {}\n    auth: {{ type: github_app, app_id: 12345, installation_id: 4242, private_key: \"${{file:{}}}\" }}\n",
        api.url(""),
        key_path.display()
    );
    let proxy = Proxy::start(&yaml).await;
    for _ in 0..3 {
        let answer = proxy.get("/github/repos/acme/widgets").await;
        assert_eq!(answer.status, 200, "{}", answer.text());
    }
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 1, "one installation token for three calls");
    let claims = &seen[0];
    assert_eq!(claims["iss"], "12345");
    let (iat, exp) = (
        claims["iat"].as_u64().unwrap(),
        claims["exp"].as_u64().unwrap(),
    );
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    assert!(iat <= now.saturating_sub(59), "iat 60 s in the past");
    assert!(exp - iat <= 600, "exp at most 10 minutes after iat");
    proxy.shutdown().await;
}

#[tokio::test]
async fn bad_keys_are_config_errors_that_never_show_the_key() {
    let dir = TempDir::new("badkey");
    let not_a_key =
        "-----BEGIN PRIVATE KEY-----\nc2VjcmV0LWNhbmFyeQ==\n-----END PRIVATE KEY-----\n";
    let key_path = dir.write("app.pem", not_a_key);
    let sa_path = dir.write(
        "sa.json",
        "{\"client_email\": \"x@y\", \"private_key\": \"secret-canary\"}",
    );
    let config = dir.write(
        "proxy.yaml",
        format!(
            "version: 1\nupstreams:\n  github:\n    base_url: https://api.github.com\n    auth: {{ type: github_app, app_id: 1, installation_id: 2, private_key: \"${{file:{}}}\" }}\n  google:\n    base_url: https://www.googleapis.com\n    auth: {{ type: oauth2_jwt_bearer, service_account: \"${{file:{}}}\" }}\n  both:\n    base_url: https://www.googleapis.com\n    auth: {{ type: oauth2_jwt_bearer, issuer: a, private_key: x, service_account: y, token_url: https://t.example/token }}\n",
            key_path.display(),
            sa_path.display()
        ),
    );
    let run = outpost(&["check", "-c", &config.display().to_string()], &[], None).await;
    assert_eq!(run.code, Some(1), "{}", run.stderr);
    let out = format!("{}{}", run.stdout, run.stderr);
    assert!(out.contains("proxy.yaml:5:"), "{out}");
    assert!(out.contains("not an RSA or P-256 EC private key"), "{out}");
    assert!(
        out.contains("either `service_account` or `private_key`"),
        "{out}"
    );
    assert!(
        !out.contains("c2VjcmV0LWNhbmFyeQ") && !out.contains("secret-canary"),
        "{out}"
    );
}

/// `base_url: from_token` (the `salesforce` preset's default): the API origin is the token
/// answer's `instance_url` (REFERENCE.md: Salesforce's answer carries `instance_url`, the org's
/// API host, and no `expires_in`: "cache until a 401, then mint a new one"). A new token that
/// names another origin moves the traffic there; an answer without a usable `instance_url` is
/// `503 credentials_unavailable` and nothing is sent.
#[tokio::test]
async fn salesforce_preset_takes_the_api_origin_from_the_token_answer() {
    let seen: Verified = Arc::default();
    let first = MockUpstream::start(|req| {
        // The first org host refuses its token after one call: Outpost mints a new one.
        if req.path().ends_with("/limits") {
            Reply::json(200, &json!({"org": 1}))
        } else {
            Reply::json(401, &json!([{"errorCode": "INVALID_SESSION_ID"}]))
        }
    })
    .await;
    let second = MockUpstream::start(api_expecting("00D-second")).await;
    let answers = Arc::new(Mutex::new(vec![
        json!({"access_token": "00D-second", "instance_url": second.url(""), "token_type": "Bearer"}),
        json!({"access_token": "00D-first", "instance_url": format!("{}/", first.url("")), "id": "https://login.salesforce.com/id/00D/005", "scope": "api"}),
    ]));
    let pending = answers.clone();
    let tokens = MockUpstream::start(move |req| {
        let fields = form_pairs(&req.body);
        let assertion = field(&fields, "assertion").unwrap_or_default();
        let aud = format!("http://{}{}", req.header("host").unwrap(), req.path());
        match verify(&assertion, EC_PUB, Algorithm::ES256, Some(&aud)) {
            Ok(verified) => {
                seen.lock().unwrap().push(verified);
                match pending.lock().unwrap().pop() {
                    Some(answer) => Reply::json(200, &answer),
                    None => Reply::json(200, &json!({"access_token": "00D-none"})),
                }
            }
            Err(_) => Reply::json(400, &json!({"error": "invalid_grant"})),
        }
    })
    .await;
    let dir = TempDir::new("sf-from-token");
    let key_path = dir.write("key.pem", EC);
    let token_url = tokens.url("/services/oauth2/token");
    let yaml = format!(
        "upstreams:\n  salesforce:\n    preset: salesforce\n    auth:\n      issuer: 3MVG9consumer\n      subject: api@acme.example\n      audience: {token_url}\n      token_url: {token_url}\n      private_key: \"${{file:{}}}\"\n",
        key_path.display()
    );
    let proxy = Proxy::start(&yaml).await;
    let answer = proxy
        .request(
            "GET",
            "/salesforce/services/data/v60.0/limits",
            &[
                ("host", "evil.example"),
                ("authorization", "Bearer app-own"),
            ],
            Vec::new(),
        )
        .await;
    assert_eq!(answer.status, 200, "{}", answer.text());
    assert_eq!(answer.json(), json!({"org": 1}));
    let got = first.only_request();
    assert_eq!(got.uri, "/services/data/v60.0/limits");
    assert_eq!(got.header("host"), Some(first.addr.to_string().as_str()));
    assert_eq!(got.header("authorization"), Some("Bearer 00D-first"));

    // The first org host answers 401: one new token, and its instance_url is another host.
    let answer = proxy.get("/salesforce/services/data/v60.0/sobjects").await;
    assert_eq!(answer.status, 200, "{}", answer.text());
    let moved = second.only_request();
    assert_eq!(moved.uri, "/services/data/v60.0/sobjects");
    assert_eq!(moved.header("authorization"), Some("Bearer 00D-second"));
    assert_eq!(
        first.requests().len(),
        2,
        "the 401 came from the first host"
    );
    proxy.shutdown().await;

    // `check` shows where the base URL comes from.
    let path = dir.write("proxy.yaml", format!("version: 1\n{yaml}"));
    let run = outpost(&["check", "-c", &path.display().to_string()], &[], None).await;
    assert_eq!(run.code, Some(0), "{}{}", run.stdout, run.stderr);
    assert!(run.stdout.contains("from_token"), "{}", run.stdout);
}

#[tokio::test]
async fn from_token_without_a_usable_instance_url_is_503_and_sends_nothing() {
    let api = MockUpstream::ok().await;
    for (what, instance) in [
        ("no instance_url", None),
        ("a path", Some(format!("{}/services", api.url("")))),
        ("user info", Some(format!("http://user:pw@{}", api.addr))),
        ("another scheme", Some(format!("ftp://{}", api.addr))),
        ("not a URL", Some("acme.my.salesforce.com".to_string())),
    ] {
        let mut answer = json!({"access_token": "00D-canary"});
        if let Some(instance) = &instance {
            answer["instance_url"] = json!(instance);
        }
        let tokens = MockUpstream::start(move |_| Reply::json(200, &answer)).await;
        let dir = TempDir::new("sf-bad-instance");
        let key_path = dir.write("key.pem", EC);
        let token_url = tokens.url("/token");
        let proxy = Proxy::start(&format!(
            "upstreams:\n  sf:\n    base_url: from_token\n    auth:\n      type: oauth2_jwt_bearer\n      issuer: i\n      token_url: {token_url}\n      private_key: \"${{file:{}}}\"\n",
            key_path.display()
        ))
        .await;
        let answer = proxy.get("/sf/services/data").await;
        assert_eq!(answer.status, 503, "{what}: {}", answer.text());
        assert_eq!(
            answer.json()["error"]["type"],
            "credentials_unavailable",
            "{what}"
        );
        assert!(
            answer.text().contains("instance_url"),
            "{what}: {}",
            answer.text()
        );
        assert!(!answer.text().contains("00D-canary"), "{what}");
        proxy.shutdown().await;
    }
    assert!(api.requests().is_empty(), "nothing reached any API host");

    // A type whose token answer cannot name an origin is a config error.
    let dir = TempDir::new("sf-bad-config");
    let path = dir.write(
        "proxy.yaml",
        "version: 1\nupstreams:\n  sf:\n    base_url: from_token\n    auth: { type: bearer, token: t }\n",
    );
    let run = outpost(&["check", "-c", &path.display().to_string()], &[], None).await;
    assert_eq!(run.code, Some(1), "{}{}", run.stdout, run.stderr);
    assert!(run.stderr.contains("proxy.yaml:4:"), "{}", run.stderr);
    assert!(run.stderr.contains("from_token"), "{}", run.stderr);
}
