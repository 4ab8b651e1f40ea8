//! Outpost: an outbound-API sidecar proxy.
//!
//! The application calls `http://127.0.0.1:8080/<upstream>/<path>` without any secret; Outpost
//! routes to the configured third-party API, injects credentials and applies the resilience
//! policies of `proxy.yaml`. A second listener verifies inbound webhooks. The binary in
//! `main.rs` is a thin CLI over this library; the tests in `tests/` drive the same code.

pub mod admin;
pub mod app;
pub mod body;
pub mod capture;
pub mod check;
pub mod client;
pub mod config;
pub mod demo;
pub mod error;
pub mod metrics;
pub mod mock;
pub mod net;
pub mod proxy;
pub mod reload;
pub mod route;
pub mod server;
pub mod shared_redis;
pub mod stack;
pub mod telemetry;
pub mod webhook;
