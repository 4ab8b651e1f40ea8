//! The typed configuration the proxy runs on: what `validate.rs` produces from the raw structs.
//! Secrets are [`Secret`]s, URLs are parsed, durations are `Duration`s, header names and values
//! are `http` types.

use super::*;

/// The validated configuration the proxy runs on.
#[derive(Debug)]
pub struct Config {
    /// The file it was read from (for messages and relative `${file:…}` paths).
    pub path: PathBuf,
    pub listen: SocketAddr,
    pub admin_listen: SocketAddr,
    pub webhook_listen: SocketAddr,
    pub drain_timeout: Duration,
    pub limits: Limits,
    /// The webhook listener's limits (`webhook_limits`).
    pub webhook_limits: WebhookLimits,
    pub upstreams: Vec<Arc<Upstream>>,
    pub webhooks: Vec<Arc<Webhook>>,
    /// Secret files and CA files referenced by the config: watched for changes.
    pub watched_files: Vec<PathBuf>,
    /// `capture:`: the ring of recent exchanges, off (`None`) by default.
    pub capture: Option<super::capture::CaptureConfig>,
    /// The inspector's listener (bound only with `capture`), loopback by default.
    pub inspect_listen: SocketAddr,
    /// `cassette_dir` (relative to the config file's directory), when set.
    pub cassette_dir: Option<PathBuf>,
}

#[derive(Clone, Debug)]
pub struct Limits {
    /// Largest request header section, bytes (431 above). Default 64 KiB.
    pub max_header_bytes: usize,
    /// Time a client may take to send a request's headers (408 after). Default 10 s.
    pub header_read_timeout: Duration,
    /// Open app connections accepted at once. Default 10 000.
    pub max_connections: usize,
    /// Largest request body (413 above). Default: no limit.
    pub max_body_bytes: Option<u64>,
}

/// Limits of the webhook listener (`webhook_limits:`). A public listener: every wait is bounded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WebhookLimits {
    /// Largest request header section, bytes (431 above). Default: `limits.max_header_bytes`.
    pub max_header_bytes: usize,
    /// Time a client may take to send a request's headers (408 after; a connection that sent
    /// nothing is closed). Default: `limits.header_read_timeout`.
    pub header_read_timeout: Duration,
    /// Time a client may take to send a whole request body once its headers are in (408
    /// after). Default 10 s.
    pub body_read_timeout: Duration,
    /// How long a kept-alive connection may wait for its next request. Default 30 s.
    pub idle_timeout: Duration,
    /// Open webhook connections accepted at once (more wait in the kernel's backlog); its own
    /// cap, apart from the app listener's. Default: `limits.max_connections`.
    pub max_connections: usize,
}

/// `base_url: from_token`.
pub const FROM_TOKEN: &str = "from_token";

#[derive(Debug)]
pub struct Upstream {
    pub name: String,
    pub preset: Option<Preset>,
    /// With `base_from_token`, the token endpoint's origin: the real one is each token's
    /// `instance_url`.
    pub base_url: BaseUrl,
    /// `base_url: from_token` (Salesforce): the API origin is the token answer's
    /// `instance_url`, never the application's choice.
    pub base_from_token: bool,
    pub auth: Option<Auth>,
    /// Static request headers, applied in order after the application's headers.
    pub headers: Vec<(HeaderName, HeaderValue)>,
    pub timeout: Duration,
    pub attempt_timeout: Duration,
    pub connect_timeout: Duration,
    pub rate_limit: Option<RateLimit>,
    pub retry: Retry,
    pub circuit_breaker: Option<CircuitBreaker>,
    pub errors: ErrorMode,
    pub http: HttpMode,
    /// Host names also routed to this upstream (lower case, without port).
    pub hosts: Vec<String>,
    pub tls_ca_file: Option<PathBuf>,
    /// Provider facts from the preset (or generic defaults).
    pub provider: &'static PresetDefaults,
    /// Record/replay (`mode:`), and how its cassette matches (`cassette:`).
    pub mode: super::capture::Mode,
    pub cassette: super::capture::CassetteOptions,
    /// `graphql:`: requests to the GraphQL endpoint are classified by operation (query,
    /// mutation, subscription) and, with Shopify-style cost data, paced by points.
    pub graphql: Option<Graphql>,
}

/// `graphql: true` (the preset's GraphQL path, else `/graphql`) or `graphql: {path: …}`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Graphql {
    /// The path after the route prefix (`/graphql`, Shopify `/graphql.json`), query excluded.
    pub path: String,
}

/// `rate_limit.quota`: the provider signal that tells the remaining budget (REFERENCE.md).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
pub enum QuotaSignal {
    /// `X-RateLimit-Limit`, `-Remaining`, `-Reset` (epoch seconds, or a delta when small).
    #[serde(rename = "x-ratelimit")]
    XRateLimit,
    /// `X-Shopify-Shop-Api-Call-Limit: 32/40` (a bucket of 40 leaking 2/s); GraphQL cost.
    #[serde(rename = "shopify")]
    Shopify,
    /// `X-HubSpot-RateLimit-Remaining` + `-Interval-Milliseconds`, `-Secondly-Remaining`.
    #[serde(rename = "hubspot")]
    Hubspot,
    /// `Sforce-Limit-Info: api-usage=25/5000` (a 24 h rolling window).
    #[serde(rename = "salesforce")]
    Salesforce,
    /// `RateLimit: "default";r=50;t=30` with `RateLimit-Policy: "default";q=100;w=60`.
    #[serde(rename = "ietf")]
    Ietf,
}

impl QuotaSignal {
    pub fn name(self) -> &'static str {
        match self {
            QuotaSignal::XRateLimit => "x-ratelimit",
            QuotaSignal::Shopify => "shopify",
            QuotaSignal::Hubspot => "hubspot",
            QuotaSignal::Salesforce => "salesforce",
            QuotaSignal::Ietf => "ietf",
        }
    }
}

/// The scheme, authority and base path of an upstream; the only source of where requests go.
#[derive(Clone, Debug)]
pub struct BaseUrl {
    pub scheme: http::uri::Scheme,
    pub authority: http::uri::Authority,
    /// Path prefix without a trailing slash (`""` for the root).
    pub path: String,
    /// Value for the `Host` header.
    pub host_header: HeaderValue,
}

impl BaseUrl {
    /// A base URL from its parts; the `Host` value leaves out the scheme's default port.
    /// `None` when the authority is not a valid header value.
    pub fn new(
        scheme: http::uri::Scheme,
        authority: http::uri::Authority,
        path: String,
    ) -> Option<Self> {
        let default_port = if scheme == http::uri::Scheme::HTTPS {
            443
        } else {
            80
        };
        let host_header = match authority.port_u16() {
            Some(p) if p == default_port => HeaderValue::from_str(authority.host()),
            _ => HeaderValue::from_str(authority.as_str()),
        }
        .ok()?;
        Some(BaseUrl {
            scheme,
            authority,
            path,
            host_header,
        })
    }

    pub fn is_https(&self) -> bool {
        self.scheme == http::uri::Scheme::HTTPS
    }
}

impl fmt::Display for BaseUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}://{}{}", self.scheme, self.authority, self.path)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AuthType {
    Bearer,
    Basic,
    Header,
    Query,
    #[serde(rename = "oauth2_client_credentials")]
    OAuth2ClientCredentials,
    AwsSigv4,
    StandardWebhooks,
    HmacSignature,
    #[serde(rename = "oauth2_jwt_bearer")]
    OAuth2JwtBearer,
    #[serde(rename = "oauth2_refresh_token")]
    OAuth2RefreshToken,
    GithubApp,
}

impl AuthType {
    pub fn name(self) -> &'static str {
        match self {
            AuthType::Bearer => "bearer",
            AuthType::Basic => "basic",
            AuthType::Header => "header",
            AuthType::Query => "query",
            AuthType::OAuth2ClientCredentials => "oauth2_client_credentials",
            AuthType::AwsSigv4 => "aws_sigv4",
            AuthType::StandardWebhooks => "standard_webhooks",
            AuthType::HmacSignature => "hmac_signature",
            AuthType::OAuth2JwtBearer => "oauth2_jwt_bearer",
            AuthType::OAuth2RefreshToken => "oauth2_refresh_token",
            AuthType::GithubApp => "github_app",
        }
    }

    /// The auth keys each type takes (besides `type`); the first list is required.
    pub(super) fn fields(self) -> (&'static [&'static str], &'static [&'static str]) {
        match self {
            AuthType::Bearer => (&[], &["token", "tokens"]),
            AuthType::Basic => (&["username", "password"], &[]),
            AuthType::Header => (&["name"], &["value", "values"]),
            AuthType::Query => (&["name"], &["value", "values"]),
            AuthType::OAuth2ClientCredentials => (
                &["token_url", "client_id"],
                &[
                    "client_secret",
                    "scopes",
                    "audience",
                    "client_auth",
                    "params",
                    "client_cert",
                    "client_key",
                ],
            ),
            AuthType::AwsSigv4 => (
                &["region", "service", "access_key_id", "secret_access_key"],
                &["session_token"],
            ),
            AuthType::StandardWebhooks => (&["secret"], &[]),
            AuthType::HmacSignature => {
                (&["header", "secret"], &["prefix", "algorithm", "encoding"])
            }
            AuthType::OAuth2JwtBearer => (
                &[],
                &[
                    "service_account",
                    "issuer",
                    "private_key",
                    "subject",
                    "audience",
                    "scopes",
                    "token_url",
                ],
            ),
            AuthType::GithubApp => (&["app_id", "private_key", "installation_id"], &[]),
            AuthType::OAuth2RefreshToken => (
                &["token_url", "client_id", "refresh_token", "store"],
                &[
                    "client_secret",
                    "scopes",
                    "client_auth",
                    "params",
                    "client_cert",
                    "client_key",
                ],
            ),
        }
    }
}

/// How an OAuth2 client authenticates to the token endpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ClientAuth {
    /// HTTP basic `client_id:client_secret` (RFC 6749 §2.3.1).
    Basic,
    /// `client_id` and `client_secret` in the form.
    Body,
    /// RFC 8705 §2.1: a client certificate in the TLS handshake, `client_id` in the form, no
    /// secret. The certificate is [`ClientCert`].
    TlsClientAuth,
}

/// `client_cert` + `client_key` of `client_auth: tls_client_auth`: PEM text (usually
/// `${file:…}` of a Kubernetes TLS Secret, so a rotated certificate is picked up by a reload).
/// Checked when the config is loaded: at least one certificate, and a key that matches it.
#[derive(Clone, Debug, PartialEq)]
pub struct ClientCert {
    pub cert_pem: Secret,
    pub key_pem: Secret,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HmacAlgorithm {
    Sha1,
    Sha256,
    Sha512,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SignatureEncoding {
    Hex,
    Base64,
}

/// Credentials injected into every request to an upstream. `Debug` never shows a secret.
#[derive(Debug)]
pub enum Auth {
    /// `Authorization: Bearer <token>`; several tokens form a key pool.
    Bearer {
        tokens: Vec<Secret>,
    },
    Basic {
        username: Secret,
        password: Secret,
    },
    /// A custom header; several values form a key pool.
    Header {
        name: HeaderName,
        values: Vec<Secret>,
    },
    /// A query parameter (percent-encoded); several values form a key pool.
    Query {
        name: String,
        values: Vec<Secret>,
    },
    OAuth2ClientCredentials(OAuth2),
    AwsSigv4(AwsSigv4),
    StandardWebhooks {
        secret: Secret,
    },
    HmacSignature(HmacSignature),
    OAuth2JwtBearer(JwtBearer),
    GithubApp(GithubApp),
    OAuth2RefreshToken(RefreshToken),
}

impl Auth {
    pub fn kind(&self) -> AuthType {
        match self {
            Auth::Bearer { .. } => AuthType::Bearer,
            Auth::Basic { .. } => AuthType::Basic,
            Auth::Header { .. } => AuthType::Header,
            Auth::Query { .. } => AuthType::Query,
            Auth::OAuth2ClientCredentials(_) => AuthType::OAuth2ClientCredentials,
            Auth::AwsSigv4(_) => AuthType::AwsSigv4,
            Auth::StandardWebhooks { .. } => AuthType::StandardWebhooks,
            Auth::HmacSignature(_) => AuthType::HmacSignature,
            Auth::OAuth2JwtBearer(_) => AuthType::OAuth2JwtBearer,
            Auth::GithubApp(_) => AuthType::GithubApp,
            Auth::OAuth2RefreshToken(_) => AuthType::OAuth2RefreshToken,
        }
    }

    /// Number of keys in the pool (1 for types without pools).
    pub fn pool_size(&self) -> usize {
        match self {
            Auth::Bearer { tokens } => tokens.len(),
            Auth::Header { values, .. } | Auth::Query { values, .. } => values.len(),
            _ => 1,
        }
    }
}

#[derive(Debug, PartialEq)]
pub struct OAuth2 {
    pub token_url: Uri,
    pub client_id: Secret,
    pub client_secret: Secret,
    pub scopes: Vec<String>,
    pub audience: Option<String>,
    pub client_auth: ClientAuth,
    pub params: Vec<(String, String)>,
    /// `Some` exactly when `client_auth` is `tls_client_auth`.
    pub client_cert: Option<ClientCert>,
}

/// `oauth2_jwt_bearer` (RFC 7523): a signed assertion exchanged for an access token.
#[derive(Clone, Debug, PartialEq)]
pub struct JwtBearer {
    pub token_url: Uri,
    /// `iss`: the service account's `client_email`, or the Salesforce consumer key.
    pub issuer: String,
    /// `sub`: the Salesforce username, or the user a Google service account acts for.
    pub subject: Option<String>,
    /// `aud`: the token URL unless set (Salesforce: the login URL).
    pub audience: String,
    pub scopes: Vec<String>,
    /// PEM private key (RSA: RS256; P-256: ES256).
    pub private_key: Secret,
    /// `kid` header: the service account's `private_key_id`.
    pub key_id: Option<String>,
}

/// `github_app`: installation tokens minted with the app's private key.
#[derive(Clone, Debug, PartialEq)]
pub struct GithubApp {
    pub app_id: String,
    pub private_key: Secret,
    pub installation_id: u64,
}

/// `oauth2_refresh_token`: an access token from a (possibly rotating) refresh token.
#[derive(Clone, Debug, PartialEq)]
pub struct RefreshToken {
    pub token_url: Uri,
    pub client_id: Secret,
    /// `None` for a public client (only `client_id` is sent).
    pub client_secret: Option<Secret>,
    /// The refresh token the operator configured: the seed of the token family. A stored
    /// token descending from this seed is preferred (it is newer); a new seed replaces it.
    pub refresh_token: Secret,
    pub scopes: Vec<String>,
    pub client_auth: ClientAuth,
    pub params: Vec<(String, String)>,
    /// `Some` exactly when `client_auth` is `tls_client_auth`.
    pub client_cert: Option<ClientCert>,
    /// Where rotated refresh tokens are persisted.
    pub store: TokenStore,
}

/// `store` of `oauth2_refresh_token`.
#[derive(Clone, Debug, PartialEq)]
pub enum TokenStore {
    /// `file: PATH`: written with write + fsync + rename; one process at a time.
    File(PathBuf),
    /// `redis_url | redis_cluster | redis_sentinel`, `key?`: shared by replicas, which take
    /// turns refreshing under a lock. `key` defaults to the upstream's name.
    Redis {
        redis: RedisTarget,
        key: Option<String>,
    },
}

/// Where a Redis is: exactly one of `redis_url`, `redis_cluster`, `redis_sentinel`. URLs may
/// carry a password: they are [`Secret`]s, so `Debug` never shows them.
#[derive(Clone, Debug, PartialEq)]
pub enum RedisTarget {
    /// `redis_url`: one server.
    Standalone(Secret),
    /// `redis_cluster: [url, …]`: seed nodes of a Redis Cluster (the others are discovered).
    Cluster(Vec<Secret>),
    /// `redis_sentinel: {master, nodes, password?}`: the master that the sentinels name.
    Sentinel(RedisSentinel),
}

#[derive(Clone, Debug, PartialEq)]
pub struct RedisSentinel {
    /// The master's name in the sentinels' configuration.
    pub master: String,
    /// Sentinel URLs (`redis://[:password@]host:26379`).
    pub nodes: Vec<Secret>,
    /// Password of the master itself, when it has one.
    pub password: Option<Secret>,
}

impl RedisTarget {
    /// The topology's config key, for `outpost check` and messages.
    pub fn kind(&self) -> &'static str {
        match self {
            RedisTarget::Standalone(_) => "redis_url",
            RedisTarget::Cluster(_) => "redis_cluster",
            RedisTarget::Sentinel(_) => "redis_sentinel",
        }
    }
}

#[derive(Debug)]
pub struct AwsSigv4 {
    pub region: String,
    pub service: String,
    pub access_key_id: Secret,
    pub secret_access_key: Secret,
    pub session_token: Option<Secret>,
}

#[derive(Debug)]
pub struct HmacSignature {
    pub header: HeaderName,
    pub prefix: String,
    pub algorithm: HmacAlgorithm,
    pub encoding: SignatureEncoding,
    pub secret: Secret,
}

#[derive(Clone, Debug, PartialEq)]
pub struct RateLimit {
    /// `requests` per `per`; `f64::INFINITY` when no rate is configured and `quota` alone
    /// paces (see [`RateLimit::has_rate`]).
    pub requests: f64,
    pub per: Duration,
    pub burst: u32,
    pub max_wait: Duration,
    pub max_in_flight: Option<u32>,
    pub shared: Option<SharedLimit>,
    /// The provider's quota headers this limit follows (the learned budget lowers the rate).
    pub quota: Option<QuotaSignal>,
}

impl RateLimit {
    pub fn per_second(&self) -> f64 {
        self.requests / self.per.as_secs_f64()
    }

    /// False for `rate_limit: {quota: …}` without `requests_per_second`/`_minute`.
    pub fn has_rate(&self) -> bool {
        self.requests.is_finite()
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct SharedLimit {
    /// Where the shared buckets live (URLs may carry a password: secrets).
    pub redis: RedisTarget,
    pub expected_replicas: u32,
    /// Redis keys are `{key_prefix}{upstream}:{key index}`.
    pub key_prefix: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IdempotencyKeyMode {
    /// Add a fresh `Idempotency-Key` to POST and PATCH that lack one.
    Auto,
    /// Retry POST and PATCH only when the application sent a key.
    HeaderOnly,
    /// Never treat POST and PATCH as retryable because of a key.
    Off,
}

impl IdempotencyKeyMode {
    pub fn name(self) -> &'static str {
        match self {
            IdempotencyKeyMode::Auto => "auto",
            IdempotencyKeyMode::HeaderOnly => "header_only",
            IdempotencyKeyMode::Off => "off",
        }
    }
}

#[derive(Clone, Debug)]
pub struct Retry {
    /// Attempts in all, the first included; 1 disables retries.
    pub max_attempts: u32,
    pub base_delay: Duration,
    pub max_delay: Duration,
    pub on_status: Vec<u16>,
    pub respect_retry_after: bool,
    pub max_retry_after: Duration,
    pub idempotency_key: IdempotencyKeyMode,
    pub budget_percent: u32,
    pub min_retries_per_second: u32,
    pub max_body_bytes: u64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CircuitBreaker {
    pub consecutive_failures: u32,
    pub open_for: Duration,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ErrorMode {
    Passthrough,
    Normalize,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HttpMode {
    /// ALPN on TLS (h2 preferred), HTTP/1.1 on cleartext.
    Auto,
    Http1,
    /// HTTP/2 only; prior knowledge (h2c) on cleartext.
    Http2,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WebhookScheme {
    Stripe,
    Github,
    StandardWebhooks,
    Slack,
    Shopify,
    Twilio,
    Sendgrid,
    Hmac,
}

impl WebhookScheme {
    pub fn name(self) -> &'static str {
        match self {
            WebhookScheme::Stripe => "stripe",
            WebhookScheme::Github => "github",
            WebhookScheme::StandardWebhooks => "standard_webhooks",
            WebhookScheme::Slack => "slack",
            WebhookScheme::Shopify => "shopify",
            WebhookScheme::Twilio => "twilio",
            WebhookScheme::Sendgrid => "sendgrid",
            WebhookScheme::Hmac => "hmac",
        }
    }
}

/// One inbound webhook route on `webhook_listen`.
#[derive(Debug)]
pub struct Webhook {
    pub name: String,
    pub path: String,
    pub scheme: WebhookScheme,
    /// Any one verifies (rotation). For `sendgrid`, base64 DER public keys.
    pub secrets: Vec<Secret>,
    pub tolerance: Duration,
    pub max_body_bytes: u64,
    pub forward_to: Uri,
    /// `twilio`: the URL the provider calls, without query.
    pub public_url: Option<String>,
    /// `hmac`: signature header, optional prefix, algorithm, encoding, timestamp header.
    pub header: Option<HeaderName>,
    pub prefix: String,
    pub algorithm: HmacAlgorithm,
    pub encoding: SignatureEncoding,
    pub timestamp_header: Option<HeaderName>,
    /// `shared`: the replay guard kept in Redis, so every replica sees every delivery.
    pub shared: Option<RedisTarget>,
}

impl Auth {
    /// The secrets this auth type holds (for scrubbing captures); never for display.
    pub fn secrets(&self) -> Vec<&Secret> {
        match self {
            Auth::Bearer { tokens } => tokens.iter().collect(),
            Auth::Basic { username, password } => vec![username, password],
            Auth::Header { values, .. } | Auth::Query { values, .. } => values.iter().collect(),
            Auth::OAuth2ClientCredentials(o) => vec![&o.client_id, &o.client_secret],
            Auth::AwsSigv4(a) => {
                let mut out = vec![&a.access_key_id, &a.secret_access_key];
                out.extend(a.session_token.as_ref());
                out
            }
            Auth::StandardWebhooks { secret } => vec![secret],
            Auth::HmacSignature(h) => vec![&h.secret],
            Auth::OAuth2JwtBearer(j) => vec![&j.private_key],
            Auth::GithubApp(g) => vec![&g.private_key],
            Auth::OAuth2RefreshToken(r) => {
                let mut out = vec![&r.client_id, &r.refresh_token];
                out.extend(r.client_secret.as_ref());
                out
            }
        }
    }
}

impl Config {
    /// Every secret value the config resolved (auth credentials, webhook secrets), for the
    /// capture ring to scrub wherever one appears. Never logged or displayed.
    pub fn secret_values(&self) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for upstream in &self.upstreams {
            if let Some(auth) = &upstream.auth {
                out.extend(auth.secrets().into_iter().map(|s| s.expose().to_string()));
            }
        }
        for webhook in &self.webhooks {
            out.extend(webhook.secrets.iter().map(|s| s.expose().to_string()));
        }
        out.retain(|s| s.len() >= 4);
        out
    }
}
