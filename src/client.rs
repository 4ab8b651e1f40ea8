//! The upstream HTTP client: one [`HttpClient`] per distinct transport setting (connect
//! timeout, HTTP mode, extra CA file), shared by every upstream that uses it and kept across
//! config reloads so warm connections survive. rustls with the webpki roots, plus an optional
//! per-upstream `tls.ca_file`; HTTP/1.1 and HTTP/2 chosen by ALPN on TLS. Connections are
//! pooled per origin by [`pool::Endpoint`].

mod pool;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use http::uri::{Authority, Scheme};
use http::{Request, Response};
use hyper_rustls::HttpsConnectorBuilder;
use hyper_util::client::legacy::connect::HttpConnector;

use crate::body::BoxBody;
use crate::config::forms::ClientIdentity;
use crate::config::{HttpMode, Upstream};

pub use pool::{ClientError, Endpoint, PooledBody};

/// Weak: an origin's pool lives as long as a stack (or a token source) holds it, so a reload
/// that removes an upstream frees its connections and its reaper task.
type Endpoints = HashMap<(Scheme, Authority), Weak<Endpoint>>;
/// Pools held for [`HttpClient::request`].
type Held = HashMap<(Scheme, Authority), Arc<Endpoint>>;

/// A client for one transport setting: an [`Endpoint`] (connection pool) per origin.
#[derive(Clone)]
pub struct HttpClient {
    transport: Arc<pool::Transport>,
    endpoints: Arc<Mutex<Endpoints>>,
    /// Pools used through [`HttpClient::request`] (token endpoints, webhook forward targets),
    /// held here so their connections are reused; at most [`MAX_ADHOC`] origins.
    adhoc: Arc<Mutex<Held>>,
}

/// Origins [`HttpClient::request`] keeps pools for; past this, the oldest set is dropped.
const MAX_ADHOC: usize = 256;

impl HttpClient {
    /// The connection pool for `scheme://authority`, created on first use. Hot paths keep
    /// the returned handle instead of looking it up per request.
    pub fn endpoint(
        &self,
        scheme: &Scheme,
        authority: &Authority,
    ) -> Result<Arc<Endpoint>, ClientError> {
        let mut endpoints = self.endpoints.lock().unwrap_or_else(|e| e.into_inner());
        let key = (scheme.clone(), authority.clone());
        if let Some(endpoint) = endpoints.get(&key).and_then(Weak::upgrade) {
            return Ok(endpoint);
        }
        let endpoint = Endpoint::new(self.transport.clone(), key.0.clone(), key.1.clone())?;
        // Forget the pools nobody holds any more (upstreams a reload removed).
        endpoints.retain(|_, weak| weak.strong_count() > 0);
        endpoints.insert(key, Arc::downgrade(&endpoint));
        Ok(endpoint)
    }

    /// Send a request with an absolute URI.
    pub async fn request(
        &self,
        request: Request<BoxBody>,
    ) -> Result<Response<PooledBody>, ClientError> {
        let (Some(scheme), Some(authority)) = (request.uri().scheme(), request.uri().authority())
        else {
            return Err(ClientError::InvalidUri);
        };
        let key = (scheme.clone(), authority.clone());
        let held = self
            .adhoc
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&key)
            .cloned();
        let endpoint = match held {
            Some(endpoint) => endpoint,
            None => {
                let endpoint = self.endpoint(scheme, authority)?;
                let mut adhoc = self.adhoc.lock().unwrap_or_else(|e| e.into_inner());
                if adhoc.len() >= MAX_ADHOC {
                    adhoc.clear();
                }
                adhoc.insert(key, endpoint.clone());
                endpoint
            }
        };
        endpoint.send(request).await
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct ClientKey {
    connect_timeout: Duration,
    http: HttpMode,
    ca_file: Option<PathBuf>,
    /// Content of the CA file when it was read, so a rotated CA builds a new client.
    ca_fingerprint: u64,
}

/// Clients shared across upstreams and config generations.
#[derive(Default)]
pub struct Clients {
    cache: Mutex<HashMap<ClientKey, HttpClient>>,
}

impl Clients {
    /// The client for an upstream's transport settings, built on first use.
    pub fn for_upstream(&self, upstream: &Upstream) -> Result<HttpClient, String> {
        let ca = match &upstream.tls_ca_file {
            Some(path) => Some((
                path.clone(),
                std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?,
            )),
            None => None,
        };
        let key = ClientKey {
            connect_timeout: upstream.connect_timeout,
            http: upstream.http,
            ca_file: ca.as_ref().map(|(p, _)| p.clone()),
            ca_fingerprint: ca.as_ref().map_or(0, |(_, bytes)| fingerprint(bytes)),
        };
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(client) = cache.get(&key) {
            return Ok(client.clone());
        }
        let client = build(
            upstream.connect_timeout,
            upstream.http,
            ca.as_ref().map(|(p, _)| p.as_path()),
        )?;
        cache.insert(key, client.clone());
        Ok(client)
    }
}

fn fingerprint(bytes: &[u8]) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    bytes.hash(&mut h);
    h.finish()
}

/// Read PEM certificates from a CA file (at least one).
pub fn load_ca_file(
    path: &Path,
) -> Result<Vec<rustls::pki_types::CertificateDer<'static>>, String> {
    let data = std::fs::read(path)
        .map_err(|e| format!("cannot read CA file {}: {}", path.display(), e.kind()))?;
    let certs: Vec<_> = rustls_pemfile::certs(&mut data.as_slice())
        .collect::<Result<_, _>>()
        .map_err(|_| format!("CA file {} is not valid PEM", path.display()))?;
    if certs.is_empty() {
        return Err(format!("CA file {} holds no certificate", path.display()));
    }
    Ok(certs)
}

fn tls_config(
    ca_file: Option<&Path>,
    identity: Option<ClientIdentity>,
) -> Result<rustls::ClientConfig, String> {
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Some(path) = ca_file {
        for cert in load_ca_file(path)? {
            roots
                .add(cert)
                .map_err(|e| format!("CA file {}: {e}", path.display()))?;
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots);
    match identity {
        None => Ok(builder.with_no_client_auth()),
        // The message never carries key material (rustls' errors name the problem only).
        Some((certs, key)) => builder
            .with_client_auth_cert(certs, key)
            .map_err(|e| format!("client certificate: {e}")),
    }
}

/// A client with Outpost's transport settings (also used to forward webhooks).
pub fn build(
    connect_timeout: Duration,
    http: HttpMode,
    ca_file: Option<&Path>,
) -> Result<HttpClient, String> {
    build_with_identity(connect_timeout, http, ca_file, None)
}

/// A client that presents `identity` (a certificate chain and its key) to servers that ask
/// for one: the token endpoint of an `oauth2_*` upstream with `client_auth:
/// tls_client_auth` (RFC 8705). Never shared with other upstreams or the upstream itself.
pub fn build_with_identity(
    connect_timeout: Duration,
    http: HttpMode,
    ca_file: Option<&Path>,
    identity: Option<ClientIdentity>,
) -> Result<HttpClient, String> {
    let mut connector = HttpConnector::new();
    connector.enforce_http(false);
    connector.set_nodelay(true);
    connector.set_connect_timeout(Some(connect_timeout));
    connector.set_keepalive(Some(Duration::from_secs(30)));

    let builder = HttpsConnectorBuilder::new()
        .with_tls_config(tls_config(ca_file, identity)?)
        .https_or_http();
    let connector = match http {
        HttpMode::Auto => builder
            .enable_http1()
            .enable_http2()
            .wrap_connector(connector),
        HttpMode::Http1 => builder.enable_http1().wrap_connector(connector),
        HttpMode::Http2 => builder.enable_http2().wrap_connector(connector),
    };
    Ok(HttpClient {
        transport: Arc::new(pool::Transport { connector, http }),
        endpoints: Arc::default(),
        adhoc: Arc::default(),
    })
}

#[cfg(test)]
mod endpoint_tests {
    use super::*;

    #[tokio::test]
    async fn a_pool_lives_as_long_as_someone_holds_it() {
        let client = build(Duration::from_secs(1), HttpMode::Auto, None).unwrap();
        let scheme = Scheme::HTTP;
        let authority: Authority = "127.0.0.1:9".parse().unwrap();
        let first = client.endpoint(&scheme, &authority).unwrap();
        let again = client.endpoint(&scheme, &authority).unwrap();
        assert!(
            Arc::ptr_eq(&first, &again),
            "one pool per origin while it is held"
        );
        let weak = Arc::downgrade(&first);
        drop((first, again));
        assert!(
            weak.upgrade().is_none(),
            "a removed upstream's pool is freed"
        );
        let other: Authority = "127.0.0.1:10".parse().unwrap();
        let _held = client.endpoint(&scheme, &other).unwrap();
        let map = client.endpoints.lock().unwrap();
        assert_eq!(map.len(), 1, "dead entries are pruned");
    }
}
