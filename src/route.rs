//! Path → upstream. The only place a request picks its upstream.
//!
//! `/<upstream>/<rest>` goes to the upstream named by the first segment; an upstream listing
//! `hosts:` is also chosen by the request's `Host` / `:authority`, path unchanged. Before any
//! routing, [`check_path`] refuses paths that could escape the upstream's prefix: dot segments,
//! raw or percent-encoded (also joined by an encoded slash). Everything else is forwarded as
//! written: Outpost never decodes and re-encodes a path.

use std::collections::HashMap;

use crate::error::ProxyError;

/// Maps route names and host names to an index into the generation's upstream list.
#[derive(Debug, Default)]
pub struct Router {
    names: HashMap<Box<str>, usize>,
    hosts: HashMap<Box<str>, usize>,
}

/// The chosen upstream and the path to append to its base path (empty or starting with `/`).
#[derive(Debug, PartialEq, Eq)]
pub struct Routed<'a> {
    pub index: usize,
    pub rest: &'a str,
}

impl Router {
    pub fn new<'a>(upstreams: impl IntoIterator<Item = (&'a str, &'a [String])>) -> Self {
        let mut router = Router::default();
        for (index, (name, hosts)) in upstreams.into_iter().enumerate() {
            router.names.insert(name.into(), index);
            for host in hosts {
                router.hosts.insert(host.as_str().into(), index);
            }
        }
        router
    }

    /// Route a request by its `Host` (or `:authority`) and raw path.
    pub fn route<'a>(&self, host: Option<&str>, path: &'a str) -> Result<Routed<'a>, ProxyError> {
        check_path(path)?;
        if !self.hosts.is_empty() {
            if let Some(index) = host.and_then(|h| self.by_host(h)) {
                return Ok(Routed { index, rest: path });
            }
        }
        let trimmed = &path[1..];
        let (name, rest) = match trimmed.find('/') {
            Some(slash) => (&trimmed[..slash], &trimmed[slash..]),
            None => (trimmed, ""),
        };
        match self.names.get(name) {
            Some(&index) => Ok(Routed { index, rest }),
            None => Err(ProxyError::UnknownUpstream),
        }
    }

    fn by_host(&self, host: &str) -> Option<usize> {
        // Strip a port; IPv6 literals are never configured as route hosts.
        let name = match host.rsplit_once(':') {
            Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name,
            _ => host,
        };
        if name.bytes().any(|b| b.is_ascii_uppercase()) {
            self.hosts.get(name.to_ascii_lowercase().as_str()).copied()
        } else {
            self.hosts.get(name).copied()
        }
    }
}

/// Refuse a path that is not origin-form or holds a dot segment (`.`/`..`), raw or encoded.
pub fn check_path(path: &str) -> Result<(), ProxyError> {
    if !path.starts_with('/') {
        return Err(ProxyError::BadRequest(
            "request target must be an absolute path",
        ));
    }
    if path.starts_with("//") {
        return Err(ProxyError::BadRequest("empty upstream segment in path"));
    }
    // Fast path: no dot and no percent-encoding means no dot segment.
    if !path.bytes().any(|b| b == b'.' || b == b'%' || b == b'\\') {
        return Ok(());
    }
    let bytes = path.as_bytes();
    let mut i = 0;
    // Dots in the current segment, and whether it holds anything else.
    let mut dots = 0usize;
    let mut other = false;
    loop {
        let (separator, dot, step) = match bytes.get(i) {
            None => (true, false, 1),
            Some(b'/') | Some(b'\\') => (true, false, 1),
            Some(b'.') => (false, true, 1),
            Some(b'%') if i + 2 < bytes.len() => {
                match (
                    bytes[i + 1].to_ascii_lowercase(),
                    bytes[i + 2].to_ascii_lowercase(),
                ) {
                    (b'2', b'e') => (false, true, 3),
                    (b'2', b'f') | (b'5', b'c') => (true, false, 3),
                    // Another escape (`%41`): one ordinary character. A lone `%` is just a character,
                    // so what follows it is still examined (`/%/..` is a dot segment).
                    (a, b) if a.is_ascii_hexdigit() && b.is_ascii_hexdigit() => (false, false, 3),
                    _ => (false, false, 1),
                }
            }
            Some(_) => (false, false, 1),
        };
        if separator {
            if !other && (dots == 1 || dots == 2) {
                return Err(ProxyError::BadRequest(
                    "path must not contain `.` or `..` segments",
                ));
            }
            if i >= bytes.len() {
                return Ok(());
            }
            dots = 0;
            other = false;
        } else if dot {
            dots += 1;
        } else {
            other = true;
        }
        i += step;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn router() -> Router {
        let hosts = vec!["stripe.outpost.local".to_string()];
        let none: Vec<String> = Vec::new();
        Router::new([("stripe", hosts.as_slice()), ("sendgrid", none.as_slice())])
    }

    #[test]
    fn routes_by_first_segment() {
        let r = router();
        assert_eq!(
            r.route(None, "/stripe/v1/customers").unwrap(),
            Routed {
                index: 0,
                rest: "/v1/customers"
            }
        );
        assert_eq!(
            r.route(None, "/stripe").unwrap(),
            Routed { index: 0, rest: "" }
        );
        assert_eq!(
            r.route(None, "/stripe/").unwrap(),
            Routed {
                index: 0,
                rest: "/"
            }
        );
        assert_eq!(r.route(None, "/sendgrid/v3/mail/send").unwrap().index, 1);
    }

    #[test]
    fn prefix_confusion_is_not_a_match() {
        let r = router();
        for path in [
            "/stripex/v1",
            "/strip/v1",
            "/Stripe/v1",
            "/%73tripe/v1",
            "/",
            "/stripe.evil/v1",
        ] {
            assert!(
                matches!(r.route(None, path), Err(ProxyError::UnknownUpstream)),
                "{path}"
            );
        }
    }

    #[test]
    fn routes_by_host() {
        let r = router();
        assert_eq!(
            r.route(Some("stripe.outpost.local"), "/v1/x").unwrap(),
            Routed {
                index: 0,
                rest: "/v1/x"
            }
        );
        assert_eq!(
            r.route(Some("STRIPE.outpost.local:8080"), "/v1/x")
                .unwrap()
                .index,
            0
        );
        assert!(matches!(
            r.route(Some("other.local"), "/v1/x"),
            Err(ProxyError::UnknownUpstream)
        ));
    }

    #[test]
    fn dot_segments_are_refused() {
        for path in [
            "/stripe/../sendgrid",
            "/stripe/..",
            "/stripe/./v1",
            "/..",
            "/stripe/%2e%2e/x",
            "/stripe/%2E%2e",
            "/stripe/.%2e/x",
            "/stripe/v1%2f..%2fx",
            "/stripe/v1%2F%2e%2e",
            "/stripe/%2e",
            "/stripe/..\\x",
            "/stripe/v1%5c..",
            "//evil.example/x",
            "/stripe/%/..",
        ] {
            assert!(
                matches!(check_path(path), Err(ProxyError::BadRequest(_))),
                "{path}"
            );
        }
    }

    #[test]
    fn ordinary_paths_pass() {
        for path in [
            "/stripe/v1/customers",
            "/stripe/v1/files/a.b.c",
            "/stripe/...",
            "/stripe/.well-known/x",
            "/stripe/a%20b",
            "/stripe/%2e%2e%2e",
            "/stripe/x%2",
            "/stripe/x%",
            "/stripe/%252e%25e2",
            "/stripe//v1",
        ] {
            assert!(check_path(path).is_ok(), "{path}");
        }
    }

    /// Decode only what can form a dot segment or a separator, as an upstream might.
    fn decode_dots(path: &str) -> String {
        let mut out = String::new();
        let bytes = path.as_bytes();
        let mut i = 0;
        while i < bytes.len() {
            if bytes[i] == b'%' && i + 2 < bytes.len() {
                match (
                    bytes[i + 1].to_ascii_lowercase(),
                    bytes[i + 2].to_ascii_lowercase(),
                ) {
                    (b'2', b'e') => {
                        out.push('.');
                        i += 3;
                        continue;
                    }
                    (b'2', b'f') | (b'5', b'c') => {
                        out.push('/');
                        i += 3;
                        continue;
                    }
                    _ => {}
                }
            }
            out.push(if bytes[i] == b'\\' {
                '/'
            } else {
                bytes[i] as char
            });
            i += 1;
        }
        out
    }

    proptest::proptest! {
        #[test]
        fn accepted_paths_never_hold_a_dot_segment(path in "/[a-z./%25EeFfCc\\\\]{0,24}") {
            if check_path(&path).is_ok() {
                let decoded = decode_dots(&path);
                proptest::prop_assert!(
                    !decoded.split('/').any(|s| s == "." || s == ".."),
                    "{} decodes to {}", path, decoded
                );
            }
        }

        #[test]
        fn routing_never_panics(host in proptest::option::of(".{0,40}"), path in ".{0,80}") {
            let r = router();
            let _ = r.route(host.as_deref(), &path);
        }
    }
}
