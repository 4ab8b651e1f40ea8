//! The attempt timeout layer: one attempt (connect, send, wait for the response head) gets at
//! most `attempt_timeout`.
//!
//! Inside the auth layer, so a token fetch never eats into it, and right outside the endpoint.
//! When it fires, it tells whose time ran out: while Outpost was waiting for the application's
//! next body bytes it is the application's slowness (`408`, not counted against the upstream);
//! otherwise the upstream's (`504`, an attempt `timeout`, a breaker failure).

use std::sync::Arc;
use std::time::Duration;

use super::counters::Counters;
use super::layer::{Attempt, AttemptResult, Layer, Service};
use crate::error::ProxyError;

pub struct AttemptTimeoutLayer {
    pub timeout: Duration,
    pub upstream: String,
    pub counters: Arc<Counters>,
}

impl<S: Service> Layer<S> for AttemptTimeoutLayer {
    type Service = AttemptTimeout<S>;
    fn layer(self, inner: S) -> AttemptTimeout<S> {
        AttemptTimeout {
            inner,
            timeout: self.timeout,
            upstream: self.upstream,
            counters: self.counters,
        }
    }
}

pub struct AttemptTimeout<S> {
    inner: S,
    timeout: Duration,
    upstream: String,
    counters: Arc<Counters>,
}

impl<S: Service> Service for AttemptTimeout<S> {
    async fn call<'a>(&'a self, attempt: Attempt<'a>) -> AttemptResult {
        let progress = attempt.progress;
        match tokio::time::timeout(self.timeout, self.inner.call(attempt)).await {
            Ok(result) => result,
            Err(_) if progress.client_time() => Err(ProxyError::BodyTimeout),
            Err(_) => {
                self.counters.attempt_timeout.increment(1);
                Err(ProxyError::Timeout {
                    upstream: self.upstream.clone(),
                    total: false,
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::{Metrics, UpstreamMetrics};
    use crate::stack::auth::AuthScope;
    use crate::stack::layer::{Answered, Progress, Stack};
    use crate::stack::replay::ReplayBody;
    use http_body_util::BodyExt;
    use tokio::time::Instant;

    /// Never answers; reads the request body first when `read_body`.
    struct Stall {
        read_body: bool,
    }
    impl Service for Stall {
        async fn call<'a>(&'a self, attempt: Attempt<'a>) -> AttemptResult {
            if self.read_body {
                let _ = attempt.request.into_body().collect().await;
            }
            std::future::pending::<()>().await;
            Ok(Answered::new(http::Response::new(crate::body::empty())))
        }
    }

    async fn run(read_body: bool, body: crate::body::BoxBody) -> ProxyError {
        let counters = Arc::new(Counters::new(&UpstreamMetrics::new(&Metrics::new(), "api")));
        let chain = Stack::new(Stall { read_body })
            .push(AttemptTimeoutLayer {
                timeout: Duration::from_secs(5),
                upstream: "api".into(),
                counters,
            })
            .into_inner();
        let replay = ReplayBody::new(body, 64);
        let progress = Progress::new(None);
        progress.watch_body(replay.watch());
        let mut request = http::Request::new(crate::body::boxed(replay));
        *request.uri_mut() = "/".parse().unwrap();
        chain
            .call(Attempt {
                request,
                key: 0,
                upgrade: None,
                deadline: Instant::now(),
                progress: &progress,
                auth: &AuthScope::default(),
                can_refresh: false,
                endpoint: None,
                points: None,
            })
            .await
            .err()
            .unwrap()
    }

    #[tokio::test(start_paused = true)]
    async fn an_upstream_that_does_not_answer_is_an_upstream_timeout() {
        let err = run(true, crate::body::full("done")).await;
        assert_eq!(err.kind(), "upstream_timeout");
    }

    #[tokio::test(start_paused = true)]
    async fn an_application_that_stops_sending_is_a_request_timeout() {
        // A body whose application never sends its next chunk.
        let stalled = http_body_util::StreamBody::new(futures_util::stream::pending::<
            Result<http_body::Frame<bytes::Bytes>, crate::body::BoxError>,
        >())
        .boxed_unsync();
        let err = run(true, stalled).await;
        assert_eq!(err.kind(), "request_timeout");
        assert_eq!(err.status(), 408);
    }
}
