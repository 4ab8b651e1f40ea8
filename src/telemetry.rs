//! Logging: `tracing` with JSON lines by default (`OUTPOST_LOG_FORMAT=pretty` for humans) on
//! stderr, level from `OUTPOST_LOG` (EnvFilter syntax, default `info`). stdout stays free for
//! command output (`check`, `demo`, `webhook sign`).
//!
//! Lines are written by a background thread (tracing-appender's non-blocking writer), so the
//! access log line of every request costs a queue push on the request path, not a `write`
//! syscall under the stderr lock. The writer is not lossy: when its queue is full, logging
//! waits rather than dropping lines. Keep the returned guard alive until exit: dropping it
//! flushes what is queued.

use tracing_appender::non_blocking::{NonBlockingBuilder, WorkerGuard};
use tracing_subscriber::EnvFilter;

/// Install the global subscriber. Returns the guard that flushes queued lines when dropped.
pub fn init() -> Option<WorkerGuard> {
    let filter = EnvFilter::try_from_env("OUTPOST_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let pretty =
        std::env::var("OUTPOST_LOG_FORMAT").is_ok_and(|v| v.eq_ignore_ascii_case("pretty"));
    let (writer, guard) = NonBlockingBuilder::default()
        .lossy(false)
        .thread_name("outpost-log")
        .finish(std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer);
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
    result.ok().map(|()| guard)
}
