//! Hop-by-hop and topology headers (RFC 9110 §7.6.1, REFERENCE.md "Proxy hardening").
//!
//! Toward the upstream: every header named in `Connection`, then the hop-by-hop set (keeping
//! `TE: trailers`, which gRPC needs), `Host` (the client sets the upstream's), and `Forwarded`,
//! `X-Forwarded-*` and `Via` so the pod's internal topology does not leak to third parties.
//! Toward the application: the hop-by-hop set of the upstream's response.

pub use crate::net::headers::*;
