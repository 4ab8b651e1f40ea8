//! Mock upstreams (placeholder until the mock lands).
