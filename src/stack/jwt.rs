//! JWT-minted credentials: the `oauth2_jwt_bearer` grant (RFC 7523: Google service accounts,
//! the Salesforce JWT bearer flow) and `github_app` installation tokens. Both sign a short-lived
//! assertion with a private key (RS256, or ES256 for a P-256 key: the key decides) and exchange
//! it for an access token, which the [`TokenSource`](super::oauth::TokenSource) caches and
//! refreshes single-flight like any OAuth2 token. The application never sees the key, the
//! assertion or the token.
//!
//! Signing is `jsonwebtoken`'s (on `ring`, which rustls already brings); claims follow
//! REFERENCE.md: Google `iss` = `client_email`, `scope`, `aud` = `token_uri`, `kid` =
//! `private_key_id`; Salesforce `iss` = consumer key, `sub` = username, `aud` = login URL, `exp`
//! within 3 minutes; GitHub `iss` = app id, `iat` 60 s in the past, `exp` ≤ 10 minutes, the
//! installation token cached until 5 minutes before its `expires_at`.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::header::{HeaderValue, ACCEPT, AUTHORIZATION, CONTENT_TYPE, USER_AGENT};
use http::{Method, Request, StatusCode};
use jsonwebtoken::{Algorithm, EncodingKey, Header};

use super::oauth::{
    display_url, exchange, form_encode, parse_token_response, Fetched, Fetcher, TokenSource,
};
use crate::body::full;
use crate::client::HttpClient;
use crate::config::{GithubApp, JwtBearer, Secret};
use crate::metrics::UpstreamMetrics;

/// Lifetime of a JWT bearer assertion: Salesforce wants `exp` within 3 minutes, Google within
/// an hour.
const ASSERTION_LIFETIME: u64 = 180;
/// GitHub App JWTs: `iat` back-dated for clock drift, `exp` under GitHub's 10-minute limit.
const GITHUB_IAT_SKEW: u64 = 60;
const GITHUB_JWT_LIFETIME: u64 = 540;
/// GitHub installation tokens are refreshed this long before their `expires_at`.
pub const GITHUB_REFRESH_MARGIN: Duration = Duration::from_secs(300);

/// A private key that signs assertions. `Debug` shows only the algorithm.
pub struct Signer {
    key: EncodingKey,
    algorithm: Algorithm,
    key_id: Option<String>,
}

impl fmt::Debug for Signer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Signer")
            .field("algorithm", &self.algorithm)
            .finish_non_exhaustive()
    }
}

impl Signer {
    /// A signer for a PEM private key (`config::forms::jwt_signing_key` decides the
    /// algorithm). The error never contains the key.
    pub fn from_pem(pem: &str, key_id: Option<String>) -> Result<Self, String> {
        let (key, algorithm) = crate::config::forms::jwt_signing_key(pem)?;
        Ok(Signer {
            key,
            algorithm,
            key_id,
        })
    }

    pub fn algorithm(&self) -> Algorithm {
        self.algorithm
    }

    /// The signed JWT for `claims`.
    pub fn sign(&self, claims: &serde_json::Value) -> Result<Secret, String> {
        let mut header = Header::new(self.algorithm);
        header.kid = self.key_id.clone();
        jsonwebtoken::encode(&header, claims, &self.key)
            .map(Secret::new)
            .map_err(|_| "the assertion could not be signed".to_string())
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// RFC 7523 claims of a JWT bearer assertion issued at `now`.
pub fn bearer_claims(config: &JwtBearer, now: u64) -> serde_json::Value {
    let mut claims = serde_json::json!({
        "iss": config.issuer,
        "aud": config.audience,
        "iat": now,
        "exp": now.saturating_add(ASSERTION_LIFETIME),
    });
    if let Some(subject) = &config.subject {
        claims["sub"] = subject.clone().into();
    }
    if !config.scopes.is_empty() {
        claims["scope"] = config.scopes.join(" ").into();
    }
    claims
}

/// The token source of an `oauth2_jwt_bearer` upstream.
pub fn bearer_source(
    upstream: &str,
    config: &JwtBearer,
    client: HttpClient,
    timeout: Duration,
    metrics: &UpstreamMetrics,
) -> Result<Arc<TokenSource>, String> {
    let signer = Arc::new(Signer::from_pem(
        config.private_key.expose(),
        config.key_id.clone(),
    )?);
    let config = Arc::new(config.clone());
    let display = Arc::<str>::from(display_url(&config.token_url));
    let fetcher: Fetcher = Arc::new(move || {
        let (signer, config, client, display) = (
            signer.clone(),
            config.clone(),
            client.clone(),
            display.clone(),
        );
        Box::pin(async move {
            let assertion = signer.sign(&bearer_claims(&config, unix_now()))?;
            let mut form = String::from(
                "grant_type=urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Ajwt-bearer&assertion=",
            );
            form_encode(assertion.expose(), &mut form);
            let mut request = Request::new(full(Bytes::from(form)));
            *request.method_mut() = Method::POST;
            *request.uri_mut() = config.token_url.clone();
            let headers = request.headers_mut();
            headers.insert(
                CONTENT_TYPE,
                HeaderValue::from_static("application/x-www-form-urlencoded"),
            );
            headers.insert(ACCEPT, HeaderValue::from_static("application/json"));
            let (status, body) = exchange(&client, request, timeout, &display).await?;
            parse_token_response(status, &body)
                .map_err(|what| format!("token endpoint {display} {what}"))
        })
    });
    Ok(TokenSource::with_fetcher(upstream, fetcher, metrics))
}

/// Claims of a GitHub App JWT issued at `now`.
pub fn github_claims(app_id: &str, now: u64) -> serde_json::Value {
    let iat = now.saturating_sub(GITHUB_IAT_SKEW);
    serde_json::json!({
        "iss": app_id,
        "iat": iat,
        "exp": iat.saturating_add(GITHUB_JWT_LIFETIME),
    })
}

/// The token source of a `github_app` upstream: installation tokens from
/// `POST {api}/app/installations/{id}/access_tokens`, where `api` is the upstream's base URL.
pub fn github_source(
    upstream: &str,
    config: &GithubApp,
    api: &crate::config::BaseUrl,
    client: HttpClient,
    timeout: Duration,
    metrics: &UpstreamMetrics,
) -> Result<Arc<TokenSource>, String> {
    let signer = Arc::new(Signer::from_pem(config.private_key.expose(), None)?);
    let path = format!(
        "{}/app/installations/{}/access_tokens",
        api.path, config.installation_id
    );
    let uri = super::credentials::upstream_uri(api, &path)
        .map_err(|_| "github_app: the installation token URL is not valid".to_string())?;
    let display = Arc::<str>::from(display_url(&uri));
    let app_id = Arc::<str>::from(config.app_id.as_str());
    let fetcher: Fetcher = Arc::new(move || {
        let (signer, uri, client, display, app_id) = (
            signer.clone(),
            uri.clone(),
            client.clone(),
            display.clone(),
            app_id.clone(),
        );
        Box::pin(async move {
            let jwt = signer.sign(&github_claims(&app_id, unix_now()))?;
            let mut request = Request::new(crate::body::empty());
            *request.method_mut() = Method::POST;
            *request.uri_mut() = uri;
            let headers = request.headers_mut();
            let mut authorization = HeaderValue::from_str(&format!("Bearer {}", jwt.expose()))
                .map_err(|_| "github_app: the app JWT is not a valid header value".to_string())?;
            authorization.set_sensitive(true);
            headers.insert(AUTHORIZATION, authorization);
            headers.insert(
                ACCEPT,
                HeaderValue::from_static("application/vnd.github+json"),
            );
            headers.insert(
                "x-github-api-version",
                HeaderValue::from_static("2022-11-28"),
            );
            headers.insert(USER_AGENT, HeaderValue::from_static("outpost"));
            let (status, body) = exchange(&client, request, timeout, &display).await?;
            parse_installation_token(status, &body, unix_now())
                .map_err(|what| format!("token endpoint {display} {what}"))
        })
    });
    Ok(TokenSource::with_fetcher(upstream, fetcher, metrics))
}

/// Read GitHub's `201 {"token": "ghs_…", "expires_at": "2026-12-03T17:00:00Z"}` at `now`.
/// The `Err` text completes "token endpoint URL …" and never holds the token.
pub fn parse_installation_token(
    status: StatusCode,
    body: &[u8],
    now: u64,
) -> Result<Fetched, String> {
    if !status.is_success() {
        return Err(format!("answered {}", status.as_u16()));
    }
    let json: serde_json::Value = serde_json::from_slice(body)
        .map_err(|_| format!("answered {} with a body that is not JSON", status.as_u16()))?;
    let token = json
        .get("token")
        .and_then(|t| t.as_str())
        .filter(|t| !t.is_empty())
        .ok_or_else(|| format!("answered {} without a token", status.as_u16()))?;
    let expires_at = json
        .get("expires_at")
        .and_then(|t| t.as_str())
        .and_then(parse_rfc3339_utc)
        .ok_or_else(|| format!("answered {} without a valid expires_at", status.as_u16()))?;
    let lifetime = expires_at
        .checked_sub(now)
        .filter(|l| *l > 0)
        .ok_or_else(|| "answered with a token that has already expired".to_string())?;
    Ok(Fetched {
        access_token: Secret::new(token),
        expires_in: Duration::from_secs(lifetime),
        refresh_margin: Some(GITHUB_REFRESH_MARGIN),
        instance_url: None,
    })
}

/// Seconds since the epoch of an RFC 3339 UTC timestamp (`2026-12-03T17:00:00Z`, fractional
/// seconds allowed and dropped). `None` for anything else, never a panic.
pub fn parse_rfc3339_utc(text: &str) -> Option<u64> {
    let bytes = text.as_bytes();
    if bytes.len() < 20 || !text.is_ascii() {
        return None;
    }
    let num = |range: std::ops::Range<usize>| -> Option<u64> {
        let part = text.get(range)?;
        if part.bytes().all(|b| b.is_ascii_digit()) {
            part.parse().ok()
        } else {
            None
        }
    };
    let sep = |i: usize, c: u8| bytes.get(i).is_some_and(|b| b.eq_ignore_ascii_case(&c));
    if !(sep(4, b'-') && sep(7, b'-') && sep(10, b'T') && sep(13, b':') && sep(16, b':')) {
        return None;
    }
    let (year, month, day) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (hour, minute, second) = (num(11..13)?, num(14..16)?, num(17..19)?);
    let rest = &text[19..];
    let rest = match rest.strip_prefix('.') {
        Some(fraction) => fraction.trim_start_matches(|c: char| c.is_ascii_digit()),
        None => rest,
    };
    if !rest.eq_ignore_ascii_case("z") && rest != "+00:00" {
        return None;
    }
    let leap = (year % 4 == 0 && year % 100 != 0) || year % 400 == 0;
    let days_in_month = match month {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if leap => 29,
        2 => 28,
        _ => return None,
    };
    if year < 1970 || day == 0 || day > days_in_month || hour > 23 || minute > 59 || second > 60 {
        return None;
    }
    // Days from the civil date (Howard Hinnant's algorithm), all in range for years 1970-9999.
    let (y, m) = if month <= 2 {
        (year - 1, month + 9)
    } else {
        (year, month - 3)
    };
    let era = y / 400;
    let yoe = y - era * 400;
    let doy = (153 * m + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = (era * 146_097 + doe).checked_sub(719_468)?;
    days.checked_mul(86_400)?
        .checked_add(hour * 3600 + minute * 60 + second)
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{DecodingKey, Validation};

    const RSA: &str = include_str!("../../tests/fixtures/keys/rsa-test.pem");
    const RSA_PUB: &str = include_str!("../../tests/fixtures/keys/rsa-test.pub.pem");
    const EC: &str = include_str!("../../tests/fixtures/keys/ec-test.pem");
    const EC_PUB: &str = include_str!("../../tests/fixtures/keys/ec-test.pub.pem");

    fn bearer() -> JwtBearer {
        JwtBearer {
            token_url: "https://oauth2.googleapis.com/token".parse().unwrap(),
            issuer: "svc@project.iam.gserviceaccount.com".into(),
            subject: None,
            audience: "https://oauth2.googleapis.com/token".into(),
            scopes: vec![
                "https://www.googleapis.com/auth/cloud-platform".into(),
                "email".into(),
            ],
            private_key: Secret::new(RSA),
            key_id: Some("kid-1".into()),
        }
    }

    #[test]
    fn the_key_decides_the_algorithm() {
        assert_eq!(
            Signer::from_pem(RSA, None).unwrap().algorithm(),
            Algorithm::RS256
        );
        assert_eq!(
            Signer::from_pem(EC, None).unwrap().algorithm(),
            Algorithm::ES256
        );
        let err = Signer::from_pem(
            "-----BEGIN PRIVATE KEY-----\nnot a key\n-----END PRIVATE KEY-----",
            None,
        )
        .unwrap_err();
        assert!(!err.contains("not a key"), "{err}");
        assert!(Signer::from_pem("", None).is_err());
    }

    #[test]
    fn google_assertion_verifies_with_the_public_key() {
        let config = bearer();
        let signer = Signer::from_pem(RSA, config.key_id.clone()).unwrap();
        let jwt = signer.sign(&bearer_claims(&config, unix_now())).unwrap();
        let mut validation = Validation::new(Algorithm::RS256);
        validation.set_audience(&["https://oauth2.googleapis.com/token"]);
        validation.set_issuer(&["svc@project.iam.gserviceaccount.com"]);
        let decoded = jsonwebtoken::decode::<serde_json::Value>(
            jwt.expose(),
            &DecodingKey::from_rsa_pem(RSA_PUB.as_bytes()).unwrap(),
            &validation,
        )
        .unwrap();
        assert_eq!(decoded.header.kid.as_deref(), Some("kid-1"));
        assert_eq!(
            decoded.claims["scope"],
            "https://www.googleapis.com/auth/cloud-platform email"
        );
        let (iat, exp) = (
            decoded.claims["iat"].as_u64().unwrap(),
            decoded.claims["exp"].as_u64().unwrap(),
        );
        assert!(exp - iat <= 180, "Salesforce wants exp within 3 minutes");
        assert!(format!("{signer:?}").len() < 80, "Debug shows no key");
    }

    #[test]
    fn es256_and_github_claims() {
        let signer = Signer::from_pem(EC, None).unwrap();
        let now = 1_800_000_000;
        let jwt = signer.sign(&github_claims("12345", now)).unwrap();
        let mut validation = Validation::new(Algorithm::ES256);
        validation.validate_exp = false;
        validation.set_required_spec_claims(&["iss"]);
        let decoded = jsonwebtoken::decode::<serde_json::Value>(
            jwt.expose(),
            &DecodingKey::from_ec_pem(EC_PUB.as_bytes()).unwrap(),
            &validation,
        )
        .unwrap();
        assert_eq!(decoded.claims["iss"], "12345");
        assert_eq!(decoded.claims["iat"], now - 60);
        let exp = decoded.claims["exp"].as_u64().unwrap();
        assert!(
            exp > now && exp - (now - 60) <= 600,
            "GitHub: exp at most 10 minutes"
        );
    }

    #[test]
    fn installation_token_answers() {
        let now = parse_rfc3339_utc("2026-12-03T16:00:00Z").unwrap();
        let ok = parse_installation_token(
            StatusCode::CREATED,
            br#"{"token": "ghs_abc", "expires_at": "2026-12-03T17:00:00Z", "permissions": {}}"#,
            now,
        )
        .unwrap();
        assert_eq!(ok.access_token.expose(), "ghs_abc");
        assert_eq!(ok.expires_in, Duration::from_secs(3600));
        assert_eq!(ok.refresh_margin, Some(GITHUB_REFRESH_MARGIN));
        for (status, body) in [
            (
                StatusCode::UNAUTHORIZED,
                &br#"{"message": "Bad credentials ghs_x"}"#[..],
            ),
            (
                StatusCode::CREATED,
                br#"{"expires_at": "2026-12-03T17:00:00Z"}"#,
            ),
            (StatusCode::CREATED, br#"{"token": "ghs_abc"}"#),
            (
                StatusCode::CREATED,
                br#"{"token": "ghs_abc", "expires_at": "2026-12-03T15:00:00Z"}"#,
            ),
            (StatusCode::CREATED, b"not json"),
        ] {
            let Err(err) = parse_installation_token(status, body, now) else {
                panic!("accepted {status} {}", String::from_utf8_lossy(body));
            };
            assert!(!err.contains("ghs_"), "{err}");
        }
    }

    #[test]
    fn rfc3339_dates() {
        assert_eq!(parse_rfc3339_utc("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(parse_rfc3339_utc("2000-03-01T00:00:00Z"), Some(951_868_800));
        assert_eq!(
            parse_rfc3339_utc("2026-12-03T17:00:00.123Z"),
            Some(1_796_317_200)
        );
        assert_eq!(
            parse_rfc3339_utc("2024-02-29T12:00:00+00:00"),
            Some(1_709_208_000)
        );
        for bad in [
            "",
            "2026-12-03",
            "2023-02-29T00:00:00Z",
            "2026-13-01T00:00:00Z",
            "2026-12-03T25:00:00Z",
            "2026-12-03T17:00:00+02:00",
            "１９７０-01-01T00:00:00Z",
            "2026-12-03T17:00:00Zjunk",
            "+026-12-03T17:00:00Z",
        ] {
            assert_eq!(parse_rfc3339_utc(bad), None, "{bad}");
        }
    }

    proptest::proptest! {
        #[test]
        fn rfc3339_never_panics(text in "\\PC{0,40}") {
            let _ = parse_rfc3339_utc(&text);
        }

        #[test]
        fn rfc3339_round_trips_every_second(secs in 0u64..253_402_300_799) {
            // Written by the capture module's formatter, independent of this parser.
            let text = crate::capture::rfc3339(UNIX_EPOCH + Duration::from_secs(secs));
            proptest::prop_assert_eq!(parse_rfc3339_utc(&text), Some(secs));
        }
    }
}
