//! Static credentials (`bearer`, `basic`, `header`, `query`, and their key pools): the values
//! are built once per config generation and put on each attempt by the auth layer (`auth.rs`).
//!
//! Before injecting, the application's `Authorization` and `Proxy-Authorization` headers and the
//! auth type's own header or query parameter are removed: an application's credentials never
//! reach a third party. Header values are marked sensitive (hyper and h2 keep them out of
//! HPACK tables, tracing never sees them). Several keys form a pool served round robin.

use std::sync::atomic::{AtomicUsize, Ordering};

use base64::Engine;
use http::header::{HeaderMap, HeaderName, HeaderValue, AUTHORIZATION, PROXY_AUTHORIZATION};
use http::Uri;
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};

use crate::config::{Auth, Secret};

/// RFC 3986 unreserved characters stay as they are; everything else is percent-encoded.
const QUERY_VALUE: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// What to put on each request, computed once per config generation.
#[derive(Debug)]
pub struct Credentials {
    inject: Inject,
    next: AtomicUsize,
}

#[derive(Debug)]
enum Inject {
    /// A header with one value per pooled key.
    Header {
        name: HeaderName,
        values: Vec<HeaderValue>,
    },
    /// A query parameter: the encoded name and one encoded value per pooled key.
    Query { name: String, values: Vec<Secret> },
    /// Auth types that sign or fetch tokens per request; handled by their own module.
    NotStatic,
}

fn sensitive(value: &str) -> Option<HeaderValue> {
    let mut v = HeaderValue::from_str(value).ok()?;
    v.set_sensitive(true);
    Some(v)
}

impl Credentials {
    pub fn new(auth: &Auth) -> Self {
        let inject = match auth {
            Auth::Bearer { tokens } => Inject::Header {
                name: AUTHORIZATION,
                values: tokens
                    .iter()
                    .filter_map(|t| sensitive(&format!("Bearer {}", t.expose())))
                    .collect(),
            },
            Auth::Basic { username, password } => {
                let pair = format!("{}:{}", username.expose(), password.expose());
                let encoded = base64::engine::general_purpose::STANDARD.encode(pair);
                Inject::Header {
                    name: AUTHORIZATION,
                    values: sensitive(&format!("Basic {encoded}")).into_iter().collect(),
                }
            }
            Auth::Header { name, values } => Inject::Header {
                name: name.clone(),
                values: values
                    .iter()
                    .filter_map(|v| sensitive(v.expose()))
                    .collect(),
            },
            Auth::Query { name, values } => Inject::Query {
                name: utf8_percent_encode(name, QUERY_VALUE).to_string(),
                values: values
                    .iter()
                    .map(|v| Secret::new(utf8_percent_encode(v.expose(), QUERY_VALUE).to_string()))
                    .collect(),
            },
            _ => Inject::NotStatic,
        };
        Credentials {
            inject,
            next: AtomicUsize::new(0),
        }
    }

    /// True when this layer injects the credential itself.
    pub fn is_static(&self) -> bool {
        !matches!(self.inject, Inject::NotStatic)
    }

    /// Pick the pool index for the next request (round robin).
    pub fn next_key(&self) -> usize {
        let len = match &self.inject {
            Inject::Header { values, .. } => values.len(),
            Inject::Query { values, .. } => values.len(),
            Inject::NotStatic => 1,
        };
        if len <= 1 {
            0
        } else {
            self.next.fetch_add(1, Ordering::Relaxed) % len
        }
    }

    /// Remove every credential the application sent, whatever the auth type.
    pub fn strip(&self, headers: &mut HeaderMap) {
        headers.remove(AUTHORIZATION);
        headers.remove(PROXY_AUTHORIZATION);
        if let Inject::Header { name, .. } = &self.inject {
            headers.remove(name);
        }
    }

    /// Put key `index` of the pool on the request. `path_and_query` is rewritten for query auth.
    /// True when the credential is a query parameter (it changes the request's URI).
    pub fn edits_query(&self) -> bool {
        matches!(self.inject, Inject::Query { .. })
    }

    pub fn apply(&self, index: usize, headers: &mut HeaderMap, path_and_query: &mut String) {
        match &self.inject {
            Inject::Header { name, values } => {
                if let Some(value) = values.get(index) {
                    headers.insert(name.clone(), value.clone());
                }
            }
            Inject::Query { name, values } => {
                if let Some(value) = values.get(index) {
                    set_query_param(path_and_query, name, value.expose());
                }
            }
            Inject::NotStatic => {}
        }
    }
}

/// Replace every occurrence of the (encoded) parameter `name` in the query with `name=value`.
fn set_query_param(path_and_query: &mut String, name: &str, value: &str) {
    let (path, query) = match path_and_query.split_once('?') {
        Some((p, q)) => (p.to_string(), q.to_string()),
        None => (path_and_query.clone(), String::new()),
    };
    let mut out = path;
    out.push('?');
    let mut first = true;
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let key = pair.split_once('=').map_or(pair, |(k, _)| k);
        if same_param(key, name) {
            continue;
        }
        if !first {
            out.push('&');
        }
        out.push_str(pair);
        first = false;
    }
    if !first {
        out.push('&');
    }
    out.push_str(name);
    out.push('=');
    out.push_str(value);
    *path_and_query = out;
}

/// Compare a raw query key with an encoded name, decoding the key's percent-escapes and `+`.
fn same_param(raw_key: &str, encoded_name: &str) -> bool {
    if raw_key == encoded_name {
        return true;
    }
    let decoded_key = percent_encoding::percent_decode_str(&raw_key.replace('+', " "))
        .decode_utf8_lossy()
        .into_owned();
    let decoded_name = percent_encoding::percent_decode_str(encoded_name)
        .decode_utf8_lossy()
        .into_owned();
    decoded_key.eq_ignore_ascii_case(&decoded_name)
}

/// Build the upstream URI from the base URL and the forwarded path and query.
pub fn upstream_uri(
    base: &crate::config::BaseUrl,
    path_and_query: &str,
) -> Result<Uri, http::Error> {
    Uri::builder()
        .scheme(base.scheme.clone())
        .authority(base.authority.clone())
        .path_and_query(path_and_query)
        .build()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_strips_app_credentials_and_injects() {
        let creds = Credentials::new(&Auth::Bearer {
            tokens: vec![Secret::new("sk_test_1")],
        });
        let mut h = HeaderMap::new();
        h.insert(AUTHORIZATION, HeaderValue::from_static("Bearer app-own"));
        h.insert(PROXY_AUTHORIZATION, HeaderValue::from_static("Basic x"));
        creds.strip(&mut h);
        let mut pq = "/v1".to_string();
        creds.apply(creds.next_key(), &mut h, &mut pq);
        assert_eq!(h[AUTHORIZATION], "Bearer sk_test_1");
        assert!(h[AUTHORIZATION].is_sensitive());
        assert!(h.get(PROXY_AUTHORIZATION).is_none());
        assert!(!format!("{creds:?} {h:?}").contains("sk_test_1"));
    }

    #[test]
    fn basic_is_base64() {
        let creds = Credentials::new(&Auth::Basic {
            username: Secret::new("AC1"),
            password: Secret::new("tok"),
        });
        let mut h = HeaderMap::new();
        let mut pq = "/".to_string();
        creds.apply(0, &mut h, &mut pq);
        assert_eq!(h[AUTHORIZATION], "Basic QUMxOnRvaw==");
    }

    #[test]
    fn pool_round_robins() {
        let creds = Credentials::new(&Auth::Bearer {
            tokens: vec![Secret::new("a"), Secret::new("b")],
        });
        let picks: Vec<usize> = (0..4).map(|_| creds.next_key()).collect();
        assert_eq!(picks, vec![0, 1, 0, 1]);
    }

    #[test]
    fn query_replaces_app_value_and_encodes() {
        let creds = Credentials::new(&Auth::Query {
            name: "api_key".into(),
            values: vec![Secret::new("a b&c=d")],
        });
        let mut h = HeaderMap::new();
        let mut pq = "/v1/x?api_key=mine&x=1&api%5Fkey=again&API_KEY=3".to_string();
        creds.apply(0, &mut h, &mut pq);
        assert_eq!(pq, "/v1/x?x=1&api_key=a%20b%26c%3Dd");
        let mut pq = "/v1/x".to_string();
        creds.apply(0, &mut h, &mut pq);
        assert_eq!(pq, "/v1/x?api_key=a%20b%26c%3Dd");
    }
}
