//! Logging: `tracing` with JSON lines by default (`OUTPOST_LOG_FORMAT=pretty` for humans) on
//! stderr, level from `OUTPOST_LOG` (EnvFilter syntax, default `info`). stdout stays free for
//! command output (`check`, `demo`, `webhook sign`).

use tracing_subscriber::EnvFilter;

pub fn init() {
    let filter = EnvFilter::try_from_env("OUTPOST_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let pretty =
        std::env::var("OUTPOST_LOG_FORMAT").is_ok_and(|v| v.eq_ignore_ascii_case("pretty"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let result = if pretty {
        builder.try_init()
    } else {
        builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .try_init()
    };
    // A second init (tests) keeps the first subscriber.
    let _ = result;
}
