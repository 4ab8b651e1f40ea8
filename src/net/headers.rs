//! Hop-by-hop and topology headers (RFC 9110 §7.6.1, REFERENCE.md "Proxy hardening"), for
//! every hop Outpost forwards: the upstream stack and the webhook receiver.
//!
//! (Moved here from `stack/headers.rs`, which the webhook receiver imported, closing a cycle
//! `stack → webhook → stack`; `stack/headers.rs` re-exports it.)
//!
//! Toward the upstream: every header named in `Connection`, then the hop-by-hop set (keeping
//! `TE: trailers`, which gRPC needs), `Host` (the client sets the upstream's), and `Forwarded`,
//! `X-Forwarded-*` and `Via` so the pod's internal topology does not leak to third parties.
//! Toward the application: the hop-by-hop set of the upstream's response.

use http::header::{HeaderMap, HeaderName, HeaderValue, CONNECTION, HOST, TE, UPGRADE};

static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
static PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");
static FORWARDED: HeaderName = HeaderName::from_static("forwarded");
static VIA: HeaderName = HeaderName::from_static("via");

/// Remove the headers named in `Connection` (except `upgrade` when tunnelling an upgrade).
fn remove_connection_named(headers: &mut HeaderMap, upgrade: bool) {
    // Fast path: `Connection: keep-alive` / `close` names no other header.
    let only_options = headers.get_all(CONNECTION).iter().all(|v| {
        let v = v.as_bytes();
        v.eq_ignore_ascii_case(b"keep-alive") || v.eq_ignore_ascii_case(b"close")
    });
    if only_options {
        return;
    }
    let named: Vec<HeaderName> = headers
        .get_all(CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .filter(|name| !(upgrade && name == UPGRADE))
        // `Connection: te` must not remove the `TE: trailers` gRPC depends on.
        .filter(|name| name != TE)
        .collect();
    for name in named {
        headers.remove(name);
    }
}

/// Remove every header whose name satisfies `pred`, looking each name up once: one pass over
/// the names present instead of a hash probe per name that might be (this runs twice per
/// request, and most requests carry only one or two of these names).
fn remove_matching(headers: &mut HeaderMap, pred: impl Fn(&HeaderName) -> bool) {
    let mut found: [Option<HeaderName>; 8] = Default::default();
    let mut count = 0;
    for name in headers.keys() {
        if pred(name) {
            if let Some(slot) = found.get_mut(count) {
                *slot = Some(name.clone());
            }
            count += 1;
        }
    }
    for name in found.into_iter().flatten() {
        headers.remove(name);
    }
    if count > 8 {
        let rest: Vec<HeaderName> = headers.keys().filter(|n| pred(n)).cloned().collect();
        for name in rest {
            headers.remove(name);
        }
    }
}

/// The hop-by-hop set (RFC 9110 §7.6.1 and the legacy `Keep-Alive` / `Proxy-Connection`);
/// `Upgrade` stays when an upgrade is being tunnelled.
fn is_hop_by_hop(name: &HeaderName, upgrade: bool) -> bool {
    name == CONNECTION
        || name == http::header::TRANSFER_ENCODING
        || name == http::header::TRAILER
        || name == http::header::PROXY_AUTHENTICATE
        || name == http::header::PROXY_AUTHORIZATION
        || (name == UPGRADE && !upgrade)
        || name == KEEP_ALIVE
        || name == PROXY_CONNECTION
}

fn finish_upgrade(headers: &mut HeaderMap, upgrade: bool) {
    if upgrade {
        headers.insert(CONNECTION, HeaderValue::from_static("upgrade"));
    }
}

/// Clean the application's request headers before they go to a third party.
pub fn sanitize_request(headers: &mut HeaderMap, upgrade: bool) {
    let te_trailers = headers
        .get(TE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.split(',')
                .any(|t| t.trim().eq_ignore_ascii_case("trailers"))
        });
    remove_connection_named(headers, upgrade);
    remove_matching(headers, |name| {
        is_hop_by_hop(name, upgrade)
            || name == TE
            || name == HOST
            || name == FORWARDED
            || name == VIA
            || name.as_str().starts_with("x-forwarded-")
    });
    finish_upgrade(headers, upgrade);
    if te_trailers {
        headers.insert(TE, HeaderValue::from_static("trailers"));
    }
}

/// Clean the upstream's response headers before they go to the application.
pub fn sanitize_response(headers: &mut HeaderMap, upgrade: bool) {
    remove_connection_named(headers, upgrade);
    remove_matching(headers, |name| is_hop_by_hop(name, upgrade));
    finish_upgrade(headers, upgrade);
}

/// True when the request asks for a protocol upgrade (WebSocket and friends).
pub fn wants_upgrade(headers: &HeaderMap) -> bool {
    headers.contains_key(UPGRADE)
        && headers
            .get_all(CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    #[test]
    fn strips_hop_by_hop_and_topology() {
        let mut h = map(&[
            ("connection", "close, x-secret-hop"),
            ("x-secret-hop", "1"),
            ("keep-alive", "timeout=5"),
            ("proxy-connection", "keep-alive"),
            ("proxy-authorization", "Basic abc"),
            ("te", "gzip"),
            ("trailer", "x"),
            ("upgrade", "websocket"),
            ("host", "127.0.0.1:8080"),
            ("forwarded", "for=10.0.0.1"),
            ("x-forwarded-for", "10.0.0.1"),
            ("x-forwarded-proto", "http"),
            ("via", "1.1 mesh"),
            ("accept", "application/json"),
        ]);
        sanitize_request(&mut h, false);
        let names: Vec<&str> = h.keys().map(|k| k.as_str()).collect();
        assert_eq!(names, vec!["accept"]);
    }

    #[test]
    fn keeps_te_trailers_for_grpc() {
        let mut h = map(&[("te", "trailers"), ("connection", "te")]);
        sanitize_request(&mut h, false);
        assert_eq!(h.get("te").unwrap(), "trailers");
        assert!(h.get("connection").is_none());
    }

    #[test]
    fn keeps_upgrade_when_tunnelling() {
        let mut h = map(&[
            ("connection", "Upgrade"),
            ("upgrade", "websocket"),
            ("sec-websocket-key", "k"),
        ]);
        assert!(wants_upgrade(&h));
        sanitize_request(&mut h, true);
        assert_eq!(h.get("upgrade").unwrap(), "websocket");
        assert_eq!(h.get("connection").unwrap(), "upgrade");
        assert_eq!(h.get("sec-websocket-key").unwrap(), "k");
    }

    const NAMES: &[&str] = &[
        "connection",
        "keep-alive",
        "proxy-connection",
        "transfer-encoding",
        "trailer",
        "proxy-authenticate",
        "proxy-authorization",
        "upgrade",
        "te",
        "host",
        "forwarded",
        "via",
        "x-forwarded-for",
        "x-forwarded-host",
        "x-forwarded-proto",
        "accept",
        "content-type",
        "user-agent",
        "authorization",
        "idempotency-key",
        "x-request-id",
        "stripe-version",
    ];
    const REMOVED: usize = 15; // the first 15 names never reach the upstream

    proptest::proptest! {
        /// Whatever subset (and repetition) of names a request carries, exactly the
        /// hop-by-hop and topology ones are removed, on both the few-names and the
        /// many-names path.
        #[test]
        fn request_sanitizing_removes_exactly_the_listed_names(
            picks in proptest::collection::vec((0..NAMES.len(), 0u8..3), 0..30)
        ) {
            let mut h = HeaderMap::new();
            for (i, v) in &picks {
                h.append(HeaderName::from_static(NAMES[*i]), HeaderValue::from(u16::from(*v)));
            }
            let before = h.clone();
            sanitize_request(&mut h, false);
            for (i, name) in NAMES.iter().enumerate() {
                if i < REMOVED {
                    proptest::prop_assert!(!h.contains_key(*name), "{} kept", name);
                } else {
                    let want: Vec<_> = before.get_all(*name).iter().collect();
                    let got: Vec<_> = h.get_all(*name).iter().collect();
                    proptest::prop_assert_eq!(want, got, "{} changed", name);
                }
            }
        }
    }
}
