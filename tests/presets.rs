//! The integration presets of issue 11: each is a few lines of config (the credentials, and a
//! base URL where the provider has one per account or shop), and fills in what is true of the
//! provider (REFERENCE.md "Integrations of the seed").

mod support;

use outpost::config::{Auth, ClientAuth};
use support::*;

fn load(yaml: &str) -> outpost::config::Config {
    let dir = TempDir::new("presets");
    let key = dir.write("key.pem", include_str!("fixtures/keys/rsa-test.pem"));
    let sa = dir.write(
        "sa.json",
        serde_json::json!({"client_email": "svc@p.iam.gserviceaccount.com", "private_key_id": "k1",
                           "private_key": include_str!("fixtures/keys/rsa-test.pem"),
                           "token_uri": "https://oauth2.googleapis.com/token"})
        .to_string(),
    );
    let text = format!("version: 1\n{}", dedent(yaml))
        .replace("KEY_PEM", &key.display().to_string())
        .replace("SA_JSON", &sa.display().to_string());
    outpost::config::load_str(&text, &dir.path.join("proxy.yaml"))
        .unwrap_or_else(|e| panic!("{e}\n---\n{text}"))
}

#[test]
fn every_preset_needs_only_its_credentials() {
    let config = load(
        r#"
        upstreams:
          paypal: { preset: paypal, auth: { client_id: AZ1, client_secret: s3cr3t } }
          segment: { preset: segment, auth: { username: write-key } }
          mixpanel: { preset: mixpanel, auth: { username: sa.user, password: sa-secret } }
          hubspot: { preset: hubspot, auth: { token: pat-na1-x } }
          shopify: { preset: shopify, base_url: "https://acme.myshopify.com/admin/api/2024-10", auth: { value: shpat_x } }
          r2: { preset: cloudflare_r2, base_url: "https://acct.r2.cloudflarestorage.com", auth: { access_key_id: AK, secret_access_key: SK } }
          salesforce: { preset: salesforce, base_url: "https://acme.my.salesforce.com", auth: { issuer: 3MVG9, subject: api@acme.example, private_key: "${file:KEY_PEM}" } }
          google: { preset: google, auth: { service_account: "${file:SA_JSON}", scopes: [https://www.googleapis.com/auth/drive] } }
        "#,
    );
    let up = |name: &str| {
        config
            .upstreams
            .iter()
            .find(|u| u.name == name)
            .unwrap()
            .clone()
    };
    let paypal = up("paypal");
    assert_eq!(paypal.base_url.to_string(), "https://api-m.paypal.com");
    match &paypal.auth {
        Some(Auth::OAuth2ClientCredentials(o)) => {
            assert_eq!(o.token_url, "https://api-m.paypal.com/v1/oauth2/token");
            assert_eq!(o.client_auth, ClientAuth::Basic);
        }
        other => panic!("paypal auth: {other:?}"),
    }
    assert_eq!(paypal.provider.idempotency_header, "paypal-request-id");
    assert!(
        matches!(&up("segment").auth, Some(Auth::Basic { password, .. }) if password.expose().is_empty())
    );
    assert!(matches!(&up("mixpanel").auth, Some(Auth::Basic { .. })));
    assert_eq!(up("hubspot").base_url.to_string(), "https://api.hubapi.com");
    assert!(
        matches!(&up("shopify").auth, Some(Auth::Header { name, .. }) if name == "x-shopify-access-token")
    );
    match &up("r2").auth {
        Some(Auth::AwsSigv4(a)) => {
            assert_eq!((a.region.as_str(), a.service.as_str()), ("auto", "s3"))
        }
        other => panic!("r2 auth: {other:?}"),
    }
    match &up("salesforce").auth {
        Some(Auth::OAuth2JwtBearer(j)) => {
            assert_eq!(j.audience, "https://login.salesforce.com");
            assert_eq!(
                j.token_url,
                "https://login.salesforce.com/services/oauth2/token"
            );
            assert_eq!(j.subject.as_deref(), Some("api@acme.example"));
        }
        other => panic!("salesforce auth: {other:?}"),
    }
    match &up("google").auth {
        Some(Auth::OAuth2JwtBearer(j)) => {
            assert_eq!(j.issuer, "svc@p.iam.gserviceaccount.com");
            assert_eq!(j.audience, "https://oauth2.googleapis.com/token");
        }
        other => panic!("google auth: {other:?}"),
    }
}

#[test]
fn per_account_presets_need_a_base_url() {
    let dir = TempDir::new("preset-base");
    for preset in ["shopify", "cloudflare_r2"] {
        let text = format!("version: 1\nupstreams:\n  x: {{ preset: {preset} }}\n");
        let err = outpost::config::load_str(&text, &dir.path.join("proxy.yaml"))
            .expect_err(preset)
            .to_string();
        assert!(err.contains("needs `base_url`"), "{preset}: {err}");
    }
    // Salesforce's org host is the token answer's `instance_url` (`base_url: from_token`
    // by default); a `base_url` written beside the preset still wins.
    let text = "version: 1\nupstreams:\n  x: { preset: salesforce, auth: { issuer: i, subject: s, private_key: \"${file:KEY}\" } }\n";
    let key = dir.write("key.pem", include_str!("fixtures/keys/rsa-test.pem"));
    let text = text.replace("KEY", &key.display().to_string());
    let config = outpost::config::load_str(&text, &dir.path.join("proxy.yaml")).expect("loads");
    let up = &config.upstreams[0];
    assert!(up.base_from_token);
    assert_eq!(up.base_url.to_string(), "https://login.salesforce.com");
}

/// PayPal end to end: the token comes from `{base_url}/v1/oauth2/token` with HTTP basic, and a
/// POST gets a `PayPal-Request-Id` (kept on a retry) instead of `Idempotency-Key`.
#[tokio::test]
async fn paypal_token_and_request_id() {
    let api = MockUpstream::start(|req| {
        if req.path() == "/v1/oauth2/token" {
            assert!(req.header("authorization").unwrap().starts_with("Basic "));
            return Reply::json(200, &serde_json::json!({"access_token": "A21-canary", "expires_in": 32400, "token_type": "Bearer"}));
        }
        Reply::json(201, &serde_json::json!({"id": "ORDER-1"}))
    })
    .await;
    let proxy = Proxy::start(&format!(
        "upstreams:\n  paypal:\n    preset: paypal\n    base_url: {}\n    auth: {{ client_id: AZ1, client_secret: s3cr3t }}\n",
        api.url("")
    ))
    .await;
    let answer = proxy
        .request(
            "POST",
            "/paypal/v2/checkout/orders",
            &[("content-type", "application/json")],
            "{}",
        )
        .await;
    assert_eq!(answer.status, 201, "{}", answer.text());
    let order = api
        .requests()
        .into_iter()
        .find(|r| r.path() == "/v2/checkout/orders")
        .unwrap();
    assert_eq!(order.header("authorization"), Some("Bearer A21-canary"));
    assert!(order
        .header("paypal-request-id")
        .is_some_and(|v| v.len() == 36));
    assert!(!order.has("idempotency-key"));
    proxy.shutdown().await;
}
