//! The auth layer: one [`Authorizer`] for every credential kind, and the layer that puts the
//! credential on each attempt.
//!
//! In the attempt chain it sits inside the limiter (which picks the pooled key) and outside
//! the attempt timeout, so a token fetch is never counted as upstream time. Nothing outside
//! this layer holds a secret: the request the retry loop keeps has the application's
//! credentials stripped and none of Outpost's.
//!
//! An authorizer acts twice:
//! * [`Authorizer::prepare`], once per logical request: strips whatever credentials the
//!   application sent and, for the kinds that sign the body (outbound webhook signing, SigV4
//!   for services that need a signed payload), reads the body first: the only cases where a
//!   body is read before the first byte goes out;
//! * [`Authorize::call`], on every attempt: injects the pooled key, the current OAuth2 token or
//!   a fresh SigV4 signature, and, when the upstream refuses a token with 401, invalidates it so
//!   the retry decision can refresh once.
//!
//! A new credential kind is one module (how to get and apply the credential) plus one arm in
//! [`Authorizer`].

use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use bytes::Bytes;
use http::header::{HeaderMap, AUTHORIZATION, CONTENT_LENGTH, PROXY_AUTHORIZATION};
use http::{Request, StatusCode, Uri};
use http_body::Body as _;
use http_body_util::BodyExt;

use super::credentials::upstream_uri;
pub use super::credentials::Credentials;
use super::layer::{Attempt, AttemptResult, Layer, Service};
use super::oauth::{Token, TokenSource};
use super::sign;
use super::sigv4::{Payload, Plan, Signer};
use crate::body::BoxBody;
use crate::client::{Endpoint, HttpClient};
use crate::config::{Auth, BaseUrl, Upstream};
use crate::error::ProxyError;

/// How an upstream's requests get their credential.
pub enum Authorizer {
    /// No `auth`: the request goes as the application sent it.
    None,
    /// `bearer`, `basic`, `header`, `query` (and key pools).
    Static(Credentials),
    /// `oauth2_client_credentials`, `oauth2_jwt_bearer`, `github_app`: a cached token,
    /// refreshed single-flight (`oauth.rs`, minted from a signed JWT in `jwt.rs`).
    OAuth(Arc<TokenSource>),
    /// `aws_sigv4`: each attempt signed afresh.
    Sigv4(Signer),
    /// `standard_webhooks`, `hmac_signature`: the body signed once per logical request.
    Sign {
        upstream: String,
        auth: Arc<Upstream>,
    },
}

impl std::fmt::Debug for Authorizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Authorizer::None => "Authorizer::None",
            Authorizer::Static(_) => "Authorizer::Static",
            Authorizer::OAuth(_) => "Authorizer::OAuth",
            Authorizer::Sigv4(_) => "Authorizer::Sigv4",
            Authorizer::Sign { .. } => "Authorizer::Sign",
        })
    }
}

/// What [`Authorizer::prepare`] decided for one logical request, kept for its attempts.
#[derive(Debug, Default)]
pub struct AuthScope {
    /// SigV4's payload line.
    payload: Option<Payload>,
}

/// The body after [`Authorizer::prepare`].
pub enum Prepared {
    /// Still the application's stream.
    Stream(BoxBody),
    /// Read into memory (to sign it).
    Read(Vec<Bytes>),
}

impl Authorizer {
    /// The authorizer for `upstream`. `oauth` is the token source (kept across reloads by the
    /// caller when the token config did not change).
    pub fn new(upstream: &Arc<Upstream>, oauth: Option<Arc<TokenSource>>) -> Self {
        let Some(auth) = &upstream.auth else {
            return Authorizer::None;
        };
        match auth {
            Auth::OAuth2ClientCredentials(_)
            | Auth::OAuth2JwtBearer(_)
            | Auth::GithubApp(_)
            | Auth::OAuth2RefreshToken(_) => match oauth {
                Some(source) => Authorizer::OAuth(source),
                None => Authorizer::None,
            },
            Auth::AwsSigv4(aws) => {
                Authorizer::Sigv4(Signer::new(&upstream.name, aws, &upstream.base_url))
            }
            Auth::StandardWebhooks { .. } | Auth::HmacSignature(_) => Authorizer::Sign {
                upstream: upstream.name.clone(),
                auth: upstream.clone(),
            },
            Auth::Bearer { .. } | Auth::Basic { .. } | Auth::Header { .. } | Auth::Query { .. } => {
                Authorizer::Static(Credentials::new(auth))
            }
        }
    }

    /// Can a refused credential be replaced by a fresh one (so a 401 may be retried)?
    pub fn can_refresh(&self) -> bool {
        matches!(self, Authorizer::OAuth(_))
    }

    /// Once per logical request: remove the application's credentials and, where the
    /// signature covers the body, read the body (at most `limit` bytes; larger: 413).
    pub async fn prepare(
        &self,
        headers: &mut HeaderMap,
        body: BoxBody,
        limit: u64,
    ) -> Result<(Prepared, AuthScope), ProxyError> {
        let mut scope = AuthScope::default();
        match self {
            Authorizer::None => return Ok((Prepared::Stream(body), scope)),
            Authorizer::Static(credentials) => credentials.strip(headers),
            Authorizer::OAuth(_) | Authorizer::Sigv4(_) | Authorizer::Sign { .. } => {
                headers.remove(AUTHORIZATION);
                headers.remove(PROXY_AUTHORIZATION);
            }
        }
        match self {
            Authorizer::Sigv4(signer) => match signer.plan(headers, body.is_end_stream())? {
                Plan::Ready(payload) => {
                    scope.payload = Some(payload);
                    Ok((Prepared::Stream(body), scope))
                }
                Plan::ReadAndHash => {
                    let chunks = read_capped(body, headers, limit)
                        .await
                        .map_err(|e| match e {
                            ProxyError::PayloadTooLarge { limit } => signer.too_large(limit),
                            other => other,
                        })?;
                    scope.payload = Some(Payload::of_chunks(&chunks));
                    Ok((Prepared::Read(chunks), scope))
                }
            },
            Authorizer::Sign { upstream, auth } => {
                let limit = sign::body_limit(auth);
                let chunks = read_capped(body, headers, limit).await?;
                let bytes: Vec<u8> = chunks.iter().flat_map(|c| c.iter().copied()).collect();
                if let Some(a) = &auth.auth {
                    sign::sign_body(upstream, a, headers, &bytes)?;
                }
                Ok((Prepared::Read(vec![Bytes::from(bytes)]), scope))
            }
            _ => Ok((Prepared::Stream(body), scope)),
        }
    }

    /// On every attempt: put the credential of pool key `key` on the request. Returns the
    /// OAuth2 token used, so a 401 can invalidate exactly that one.
    async fn authorize(
        &self,
        request: &mut Request<BoxBody>,
        key: usize,
        scope: &AuthScope,
        base: &BaseUrl,
    ) -> Result<Option<Arc<Token>>, ProxyError> {
        match self {
            Authorizer::None | Authorizer::Sign { .. } => Ok(None),
            Authorizer::Static(credentials) => {
                if credentials.edits_query() {
                    let mut path_and_query = request
                        .uri()
                        .path_and_query()
                        .map_or_else(|| "/".to_string(), |pq| pq.as_str().to_string());
                    credentials.apply(key, request.headers_mut(), &mut path_and_query);
                    *request.uri_mut() = rebuilt(base, &path_and_query)?;
                } else {
                    credentials.apply(key, request.headers_mut(), &mut String::new());
                }
                Ok(None)
            }
            Authorizer::OAuth(source) => {
                let token = source.token().await?;
                token.apply(request.headers_mut());
                Ok(Some(token))
            }
            Authorizer::Sigv4(signer) => {
                let payload = scope.payload.as_ref().unwrap_or(&Payload::Unsigned);
                signer.sign(request, payload, SystemTime::now())?;
                Ok(None)
            }
        }
    }
}

fn rebuilt(base: &BaseUrl, path_and_query: &str) -> Result<Uri, ProxyError> {
    upstream_uri(base, path_and_query)
        .map_err(|_| ProxyError::BadRequest("request path cannot be forwarded"))
}

/// Read a body into memory, at most `limit` bytes (also when its `Content-Length` says more).
pub(crate) async fn read_capped(
    mut body: BoxBody,
    headers: &HeaderMap,
    limit: u64,
) -> Result<Vec<Bytes>, ProxyError> {
    let declared = headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    if declared.is_some_and(|len| len > limit) || body.size_hint().lower() > limit {
        return Err(ProxyError::PayloadTooLarge { limit });
    }
    let mut chunks = Vec::new();
    let mut len = 0u64;
    while let Some(frame) = body.frame().await {
        // A plain match, not `?`: `?` on a boxed error trips rustc's Send check for this future.
        let frame = match frame {
            Ok(frame) => frame,
            Err(e) => return Err(super::replay::client_fault(&*e, Some(limit))),
        };
        if let Ok(data) = frame.into_data() {
            len = len.saturating_add(data.len() as u64);
            if len > limit {
                return Err(ProxyError::PayloadTooLarge { limit });
            }
            if !data.is_empty() {
                chunks.push(data);
            }
        }
    }
    Ok(chunks)
}

/// `base_url: from_token` (Salesforce): each attempt goes to the origin its token's answer
/// named (`instance_url`), through that origin's pool. The origin comes only from the token
/// endpoint, never from the application; it must be `https://host[:port]` with no path, user
/// info or query (`http://` only when the token URL itself is cleartext: local mocks).
pub struct FromToken {
    upstream: String,
    client: HttpClient,
    allow_http: bool,
    /// The last origin seen and its pool: tokens of one org keep naming the same one.
    current: Mutex<Option<Arc<Instance>>>,
}

struct Instance {
    url: Box<str>,
    base: BaseUrl,
    endpoint: Arc<Endpoint>,
}

impl FromToken {
    /// `Some` for an upstream with `base_url: from_token`.
    pub fn new(upstream: &Upstream, client: &HttpClient) -> Option<Self> {
        upstream.base_from_token.then(|| FromToken {
            upstream: upstream.name.clone(),
            client: client.clone(),
            allow_http: !upstream.base_url.is_https(),
            current: Mutex::new(None),
        })
    }

    fn unusable(&self, why: &str) -> ProxyError {
        ProxyError::CredentialsUnavailable {
            upstream: self.upstream.clone(),
            reason: format!("base_url is from_token, and the token answer {why}"),
        }
    }

    fn instance(&self, token: Option<&Token>) -> Result<Arc<Instance>, ProxyError> {
        let url = token
            .and_then(Token::instance_url)
            .ok_or_else(|| self.unusable("carries no instance_url"))?;
        let mut current = self.current.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(instance) = current.as_ref().filter(|i| &*i.url == url) {
            return Ok(instance.clone());
        }
        let base = instance_base(url, self.allow_http).map_err(|why| self.unusable(why))?;
        let endpoint = self
            .client
            .endpoint(&base.scheme, &base.authority)
            .map_err(|_| self.unusable("names an instance_url that cannot be dialled"))?;
        let instance = Arc::new(Instance {
            url: url.into(),
            base,
            endpoint,
        });
        *current = Some(instance.clone());
        Ok(instance)
    }
}

/// The origin of an `instance_url`: `https://host[:port]` (a trailing `/` allowed).
fn instance_base(url: &str, allow_http: bool) -> Result<BaseUrl, &'static str> {
    const BAD: &str = "names an instance_url that is not an https origin";
    let uri: Uri = url.parse().map_err(|_| BAD)?;
    let scheme = uri.scheme().ok_or(BAD)?.clone();
    let https = scheme == http::uri::Scheme::HTTPS;
    if !(https || (allow_http && scheme == http::uri::Scheme::HTTP)) {
        return Err(BAD);
    }
    let authority = uri.authority().ok_or(BAD)?.clone();
    let path_ok = matches!(uri.path(), "" | "/");
    if authority.as_str().contains('@') || !path_ok || uri.query().is_some() || url.contains('#') {
        return Err(BAD);
    }
    BaseUrl::new(scheme, authority, String::new()).ok_or(BAD)
}

pub struct AuthLayer {
    pub authorizer: Arc<Authorizer>,
    pub base: BaseUrl,
    pub from_token: Option<FromToken>,
}

impl<S: Service> Layer<S> for AuthLayer {
    type Service = Authorize<S>;
    fn layer(self, inner: S) -> Authorize<S> {
        Authorize {
            inner,
            authorizer: self.authorizer,
            base: self.base,
            from_token: self.from_token,
        }
    }
}

pub struct Authorize<S> {
    inner: S,
    authorizer: Arc<Authorizer>,
    base: BaseUrl,
    from_token: Option<FromToken>,
}

impl<S: Service> Service for Authorize<S> {
    async fn call<'a>(&'a self, mut attempt: Attempt<'a>) -> AttemptResult {
        let token = self
            .authorizer
            .authorize(&mut attempt.request, attempt.key, attempt.auth, &self.base)
            .await?;
        if let Some(from_token) = &self.from_token {
            let instance = from_token.instance(token.as_deref())?;
            let path_and_query = attempt
                .request
                .uri()
                .path_and_query()
                .map_or("/", |pq| pq.as_str());
            *attempt.request.uri_mut() = rebuilt(&instance.base, path_and_query)?;
            attempt.endpoint = Some(instance.endpoint.clone());
        }
        let can_refresh = attempt.can_refresh;
        let mut answered = self.inner.call(attempt).await?;
        if let (Some(token), Authorizer::OAuth(source)) = (&token, &*self.authorizer) {
            if answered.response.status() == StatusCode::UNAUTHORIZED && can_refresh {
                source.invalidate(token);
                answered.credential_rejected = true;
            }
        }
        Ok(answered)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Secret;
    use crate::stack::layer::{Answered, Progress, Stack};
    use std::sync::Mutex;
    use tokio::time::Instant;

    /// Records what reached it and answers with `status`.
    struct Seen {
        status: StatusCode,
        requests: Mutex<Vec<(String, HeaderMap)>>,
    }
    impl Service for Arc<Seen> {
        async fn call<'a>(&'a self, attempt: Attempt<'a>) -> AttemptResult {
            self.requests.lock().unwrap().push((
                attempt.request.uri().to_string(),
                attempt.request.headers().clone(),
            ));
            let mut response = http::Response::new(crate::body::empty());
            *response.status_mut() = self.status;
            Ok(Answered::new(response))
        }
    }

    fn base() -> BaseUrl {
        BaseUrl {
            scheme: http::uri::Scheme::HTTPS,
            authority: "api.example.com".parse().unwrap(),
            path: String::new(),
            host_header: http::HeaderValue::from_static("api.example.com"),
        }
    }

    async fn run(
        authorizer: Authorizer,
        key: usize,
        uri: &str,
        status: StatusCode,
    ) -> (Answered, Arc<Seen>) {
        let seen = Arc::new(Seen {
            status,
            requests: Mutex::new(Vec::new()),
        });
        let chain = Stack::new(seen.clone())
            .push(AuthLayer {
                authorizer: Arc::new(authorizer),
                base: base(),
                from_token: None,
            })
            .into_inner();
        let progress = Progress::new(None);
        let mut request = Request::new(crate::body::empty());
        *request.uri_mut() = uri.parse().unwrap();
        let answered = chain
            .call(Attempt {
                request,
                key,
                upgrade: None,
                deadline: Instant::now(),
                progress: &progress,
                auth: &AuthScope::default(),
                can_refresh: true,
                endpoint: None,
                points: None,
            })
            .await
            .unwrap();
        (answered, seen)
    }

    #[tokio::test]
    async fn pooled_bearer_key_is_the_one_the_limiter_chose() {
        let auth = Authorizer::Static(Credentials::new(&Auth::Bearer {
            tokens: vec![Secret::new("k0"), Secret::new("k1")],
        }));
        let (_, seen) = run(auth, 1, "https://api.example.com/v1", StatusCode::OK).await;
        let requests = seen.requests.lock().unwrap();
        assert_eq!(requests[0].1[AUTHORIZATION], "Bearer k1");
    }

    #[tokio::test]
    async fn query_key_rewrites_the_uri_of_the_attempt() {
        let auth = Authorizer::Static(Credentials::new(&Auth::Query {
            name: "key".into(),
            values: vec![Secret::new("s e")],
        }));
        let (_, seen) = run(
            auth,
            0,
            "https://api.example.com/v1?key=app&x=1",
            StatusCode::OK,
        )
        .await;
        assert_eq!(
            seen.requests.lock().unwrap()[0].0,
            "https://api.example.com/v1?x=1&key=s%20e"
        );
    }

    #[tokio::test]
    async fn a_refused_token_is_invalidated_and_reported() {
        use crate::metrics::{Metrics, UpstreamMetrics};
        use crate::stack::oauth::{Fetched, Fetcher};
        use std::sync::atomic::{AtomicU32, Ordering};
        let fetches = Arc::new(AtomicU32::new(0));
        let counted = fetches.clone();
        let fetcher: Fetcher = Arc::new(move || {
            let n = counted.fetch_add(1, Ordering::SeqCst);
            Box::pin(async move {
                Ok(Fetched {
                    access_token: Secret::new(format!("tok{n}")),
                    expires_in: std::time::Duration::from_secs(3600),
                    refresh_margin: None,
                    instance_url: None,
                })
            })
        });
        let metrics = Metrics::new();
        let source =
            TokenSource::with_fetcher("api", fetcher, &UpstreamMetrics::new(&metrics, "api"));
        let (answered, seen) = run(
            Authorizer::OAuth(source.clone()),
            0,
            "https://api.example.com/",
            StatusCode::UNAUTHORIZED,
        )
        .await;
        assert!(answered.credential_rejected);
        assert_eq!(
            seen.requests.lock().unwrap()[0].1[AUTHORIZATION],
            "Bearer tok0"
        );
        let next = source.token().await.unwrap();
        let mut h = HeaderMap::new();
        next.apply(&mut h);
        assert_eq!(
            h[AUTHORIZATION], "Bearer tok1",
            "the refused token was dropped"
        );
        assert_eq!(fetches.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn prepare_strips_application_credentials() {
        let auth = Authorizer::Static(Credentials::new(&Auth::Header {
            name: http::HeaderName::from_static("x-api-key"),
            values: vec![Secret::new("ours")],
        }));
        let mut headers = HeaderMap::new();
        headers.insert(AUTHORIZATION, "Bearer app".parse().unwrap());
        headers.insert(PROXY_AUTHORIZATION, "Basic app".parse().unwrap());
        headers.insert("x-api-key", "app".parse().unwrap());
        let (prepared, _) = auth
            .prepare(&mut headers, crate::body::full("body"), 1024)
            .await
            .unwrap();
        assert!(headers.is_empty(), "{headers:?}");
        assert!(
            matches!(prepared, Prepared::Stream(_)),
            "a static key never reads the body"
        );
    }

    #[tokio::test]
    async fn read_capped_refuses_what_does_not_fit() {
        let headers = HeaderMap::new();
        let err = read_capped(crate::body::full("0123456789"), &headers, 4)
            .await
            .unwrap_err();
        assert_eq!(err.kind(), "payload_too_large");
        let chunks = read_capped(crate::body::full("0123"), &headers, 4)
            .await
            .unwrap();
        assert_eq!(chunks, vec![Bytes::from_static(b"0123")]);
    }

    #[test]
    fn instance_url_must_be_a_bare_https_origin() {
        let ok = instance_base("https://acme.my.salesforce.com", false).unwrap();
        assert_eq!(ok.authority.as_str(), "acme.my.salesforce.com");
        assert_eq!(ok.host_header, "acme.my.salesforce.com");
        assert_eq!(ok.path, "");
        let port = instance_base("https://acme.my.salesforce.com:443/", false).unwrap();
        assert_eq!(port.host_header, "acme.my.salesforce.com");
        assert!(instance_base("http://127.0.0.1:8080", true).is_ok());
        for bad in [
            "http://acme.my.salesforce.com",
            "https://user:pw@acme.my.salesforce.com",
            "https://acme.my.salesforce.com/services",
            "https://acme.my.salesforce.com?x=1",
            "https://acme.my.salesforce.com#frag",
            "acme.my.salesforce.com",
            "/relative",
            "ftp://acme.example",
            "",
            "https://",
            "https://exa mple.com",
        ] {
            assert!(instance_base(bad, false).is_err(), "{bad}");
        }
    }

    proptest::proptest! {
        #[test]
        fn instance_base_never_panics_and_keeps_only_bare_origins(
            text in proptest::string::string_regex("(https?://)?\\PC{0,300}").unwrap(),
            allow_http: bool,
        ) {
            if let Ok(base) = instance_base(&text, allow_http) {
                proptest::prop_assert!(base.path.is_empty());
                proptest::prop_assert!(!base.authority.as_str().contains('@'));
                proptest::prop_assert!(base.is_https() || allow_http);
            }
        }
    }
}
