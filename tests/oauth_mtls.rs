//! Mutual-TLS client authentication to the token endpoint (issue 11; RFC 8705 §2.1
//! `tls_client_auth`, as REFERENCE.md puts it: "the client presents a certificate in the TLS
//! handshake to the token endpoint and sends `client_id` in the body, no secret").
//!
//! The token server is HTTPS and *requires* a client certificate issued by a client CA (the
//! handshake fails without one); it records the certificate each connection presented. The API
//! is HTTPS too and *accepts* a client certificate without requiring one, so the test sees that
//! Outpost never offers the token-endpoint certificate to the API. Config mistakes are
//! `outpost check` errors with `file:line:col`, and the key never appears in any output.

mod support;

use serde_json::json;
use support::*;

const CLIENT_ID: &str = "mtls-client";
const TOKEN: &str = "at-MTLS-CANARY-1";

struct Setup {
    dir: TempDir,
    client_cert: Issued,
    api: MockUpstream,
    api_peers: std::sync::Arc<std::sync::Mutex<Vec<Option<Vec<u8>>>>>,
    token: MockUpstream,
    token_peers: std::sync::Arc<std::sync::Mutex<Vec<Option<Vec<u8>>>>>,
}

/// A server CA (for both servers), a client CA the token server trusts, a client certificate
/// it issued, the token server and the API.
async fn setup() -> Setup {
    let servers = Pki::new("outpost test server CA");
    let clients = Pki::new("outpost test client CA");
    let client_cert = clients.issue("mtls-client", &[]);
    let dir = TempDir::new("mtls");
    dir.write("ca.pem", servers.ca_pem());
    dir.write("client.crt", &client_cert.cert_pem);
    dir.write("client.key", &client_cert.key_pem);

    let (token, token_peers) = MockUpstream::start_tls_seeing_clients(
        |req| {
            let form = form_pairs(&req.body);
            let get = |name: &str| {
                form.iter()
                    .find(|(k, _)| k == name)
                    .map(|(_, v)| v.as_str())
            };
            // What an RFC 8705 server checks besides the certificate: the client says who it
            // is and sends no secret, neither in the form nor as HTTP basic.
            let ok = get("client_id") == Some(CLIENT_ID)
                && get("client_secret").is_none()
                && req.header("authorization").is_none()
                && matches!(
                    get("grant_type"),
                    Some("client_credentials" | "refresh_token")
                );
            if !ok {
                return Reply::json(400, &json!({"error": "invalid_client"}));
            }
            Reply::json(
                200,
                &json!({"access_token": TOKEN, "token_type": "Bearer", "expires_in": 3600}),
            )
        },
        servers.server(Some((&clients, true))),
    )
    .await;
    let (api, api_peers) = MockUpstream::start_tls_seeing_clients(
        |req| match req.header("authorization") {
            Some(a) if a == format!("Bearer {TOKEN}") => Reply::json(200, &json!({"ok": true})),
            _ => Reply::json(401, &json!({"error": "no token"})),
        },
        servers.server(Some((&clients, false))),
    )
    .await;
    Setup {
        dir,
        client_cert,
        api,
        api_peers,
        token,
        token_peers,
    }
}

fn yaml(s: &Setup, auth: &str) -> String {
    let d = s.dir.path.display();
    format!(
        "upstreams:\n  api:\n    base_url: {api}\n    tls: {{ ca_file: {d}/ca.pem }}\n    retry: {{ max_attempts: 1 }}\n    auth:\n{auth}",
        api = s.api.url("/v1"),
        auth = auth
            .replace("TOKEN_URL", &s.token.url("/oauth/token"))
            .replace("DIR", &d.to_string()),
    )
}

const CLIENT_CREDENTIALS: &str = "      type: oauth2_client_credentials\n      token_url: TOKEN_URL\n      client_id: mtls-client\n      client_auth: tls_client_auth\n      client_cert: \"${file:DIR/client.crt}\"\n      client_key: \"${file:DIR/client.key}\"\n";

#[tokio::test]
async fn client_credentials_present_the_certificate_to_the_token_endpoint_only() {
    let s = setup().await;
    let proxy = Proxy::start(&yaml(&s, CLIENT_CREDENTIALS)).await;
    let answer = proxy.get("/api/things").await;
    assert_eq!(answer.status, 200, "{}", answer.text());
    assert_eq!(answer.json(), json!({"ok": true}));

    let token_peers = s.token_peers.lock().unwrap().clone();
    assert!(!token_peers.is_empty(), "the token endpoint was asked");
    for peer in &token_peers {
        assert_eq!(
            peer.as_deref(),
            Some(s.client_cert.cert_der.as_slice()),
            "every token connection presents the configured client certificate"
        );
    }
    let api_peers = s.api_peers.lock().unwrap().clone();
    assert!(!api_peers.is_empty());
    assert!(
        api_peers.iter().all(Option::is_none),
        "the API is never offered the token endpoint's client certificate"
    );
}

#[tokio::test]
async fn refresh_tokens_use_the_certificate_too() {
    let s = setup().await;
    let store = s.dir.path.join("rt.json");
    let auth = format!(
        "      type: oauth2_refresh_token\n      token_url: TOKEN_URL\n      client_id: mtls-client\n      refresh_token: rt-seed\n      store: {{ file: {} }}\n      client_auth: tls_client_auth\n      client_cert: \"${{file:DIR/client.crt}}\"\n      client_key: \"${{file:DIR/client.key}}\"\n",
        store.display()
    );
    let proxy = Proxy::start(&yaml(&s, &auth)).await;
    let answer = proxy.get("/api/things").await;
    assert_eq!(answer.status, 200, "{}", answer.text());
    let form = form_pairs(&s.token.only_request().body);
    assert!(form.contains(&("refresh_token".to_string(), "rt-seed".to_string())));
    assert!(form.contains(&("client_id".to_string(), CLIENT_ID.to_string())));
    let token_peers = s.token_peers.lock().unwrap().clone();
    assert_eq!(
        token_peers.first().cloned().flatten().as_deref(),
        Some(s.client_cert.cert_der.as_slice())
    );
}

#[tokio::test]
async fn a_certificate_the_token_endpoint_does_not_trust_is_503() {
    let s = setup().await;
    // Issued by a CA the token server does not know: the handshake is refused.
    let stranger = Pki::new("someone else").issue("mtls-client", &[]);
    s.dir.write("client.crt", &stranger.cert_pem);
    s.dir.write("client.key", &stranger.key_pem);
    let proxy = Proxy::start(&yaml(&s, CLIENT_CREDENTIALS)).await;
    let answer = proxy.get("/api/things").await;
    assert_eq!(answer.status, 503, "{}", answer.text());
    assert_eq!(answer.json()["error"]["type"], "credentials_unavailable");
    assert!(!answer.text().contains("PRIVATE KEY"));
    assert!(s.api.requests().is_empty(), "nothing reaches the API");
    // Still serving: the same proxy answers the next request the same way.
    assert_eq!(proxy.get("/api/things").await.status, 503);
}

/// Each careless config is a `file:line:col` error from `outpost check` (exit 1) that never
/// shows the key.
#[tokio::test]
async fn config_mistakes_are_check_errors_without_the_key() {
    let s = setup().await;
    let other = Pki::new("other").issue("other", &[]);
    s.dir.write("other.key", &other.key_pem);
    s.dir
        .write("garbage.pem", "-----BEGIN CERTIFICATE-----\nnot base64\n");
    let cases: [(&str, String, &str); 6] = [
        (
            "no certificate",
            CLIENT_CREDENTIALS
                .replace("      client_cert: \"${file:DIR/client.crt}\"\n", "")
                .replace("      client_key: \"${file:DIR/client.key}\"\n", ""),
            "needs `client_cert` and `client_key`",
        ),
        (
            "a secret beside the certificate",
            format!("{CLIENT_CREDENTIALS}      client_secret: cs-canary\n"),
            "remove `client_secret`",
        ),
        (
            "a certificate without tls_client_auth",
            CLIENT_CREDENTIALS.replace(
                "client_auth: tls_client_auth",
                "client_auth: basic\n      client_secret: cs-canary",
            ),
            "only used with `client_auth: tls_client_auth`",
        ),
        (
            "a key of another certificate",
            CLIENT_CREDENTIALS.replace("DIR/client.key", "DIR/other.key"),
            "does not belong",
        ),
        (
            "garbage PEM",
            CLIENT_CREDENTIALS.replace("DIR/client.crt", "DIR/garbage.pem"),
            "client_cert",
        ),
        (
            "no client_secret and no certificate",
            CLIENT_CREDENTIALS
                .replace("      client_auth: tls_client_auth\n", "")
                .replace("      client_cert: \"${file:DIR/client.crt}\"\n", "")
                .replace("      client_key: \"${file:DIR/client.key}\"\n", ""),
            "needs `client_secret`",
        ),
    ];
    let key_line = s.client_cert.key_pem.lines().nth(1).unwrap().to_string();
    let other_key_line = other.key_pem.lines().nth(1).unwrap().to_string();
    for (what, auth, expected) in cases {
        let path = s
            .dir
            .write("proxy.yaml", format!("version: 1\n{}", yaml(&s, &auth)));
        let run = outpost(&["check", "-c", &path.display().to_string()], &[], None).await;
        let out = format!("{}{}", run.stdout, run.stderr);
        assert_eq!(run.code, Some(1), "{what}: {out}");
        assert!(out.contains("proxy.yaml:"), "{what}: file:line:col: {out}");
        assert!(out.contains(expected), "{what}: {out}");
        for secret in [key_line.as_str(), other_key_line.as_str(), "cs-canary"] {
            assert!(!out.contains(secret), "{what}: a secret leaked: {out}");
        }
    }
    // And the valid one passes, showing the auth type but not the key.
    let path = s.dir.write(
        "proxy.yaml",
        format!("version: 1\n{}", yaml(&s, CLIENT_CREDENTIALS)),
    );
    let run = outpost(&["check", "-c", &path.display().to_string()], &[], None).await;
    assert_eq!(run.code, Some(0), "{}{}", run.stdout, run.stderr);
    assert!(!run.stdout.contains(&key_line));
}
