//! The application-facing service: request id → checks → route → upstream stack, then the one
//! place errors become responses, metrics, and the access log line.
//!
//! The config generation is read once per request from an `ArcSwap`, so a reload never
//! changes the upstream under a request in flight.

use std::convert::Infallible;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::header::{HeaderValue, CONTENT_LENGTH, HOST};
use http::{Method, Request, Response, Uri, Version};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use tokio::time::Instant;

use crate::body::{boxed, BoxBody};
use crate::capture::cassette::{Cassette, CassetteRequest, DEFAULT_MAX_RECORD_BODY_BYTES};
use crate::capture::{CaptureRing, Mode, Recording};
use crate::client::Clients;
use crate::config::{Config, Limits};
use crate::error::{ProxyError, X_REQUEST_ID};
use crate::metrics::{Metrics, UpstreamMetrics, NO_UPSTREAM};
use crate::route::Router;
use crate::stack::{headers::wants_upgrade, Outbound, UpstreamStack};

/// Everything built from one config: the router and one stack per upstream.
pub struct Generation {
    pub config: Arc<Config>,
    router: Router,
    upstreams: Vec<Arc<UpstreamStack>>,
    /// The cassette of each upstream whose `mode` is not `live` (same order as `upstreams`).
    cassettes: Vec<Option<Arc<Cassette>>>,
    unknown: UpstreamMetrics,
}

impl Generation {
    /// Build from `config`. Upstreams that were in `previous` keep their rate-limit, breaker
    /// and token state where that part of their config did not change.
    pub fn build(
        config: Arc<Config>,
        clients: &Clients,
        metrics: &Metrics,
        previous: Option<&Generation>,
    ) -> Result<Self, String> {
        let router = Router::new(
            config
                .upstreams
                .iter()
                .map(|u| (u.name.as_str(), u.hosts.as_slice())),
        );
        let upstreams = config
            .upstreams
            .iter()
            .map(|u| {
                let before =
                    previous.and_then(|p| p.upstreams.iter().find(|s| s.config.name == u.name));
                UpstreamStack::new(u.clone(), clients, metrics, before.map(|s| &**s)).map(Arc::new)
            })
            .collect::<Result<_, _>>()?;
        let cassettes = open_cassettes(&config)?;
        Ok(Generation {
            config,
            router,
            upstreams,
            cassettes,
            unknown: UpstreamMetrics::new(metrics, NO_UPSTREAM),
        })
    }

    fn limits(&self) -> &Limits {
        &self.config.limits
    }
}

pub use crate::net::RequestIds;

/// The app listener's service. Cheap to clone (one per connection).
#[derive(Clone)]
pub struct Proxy {
    state: Arc<ArcSwap<Generation>>,
    ids: Arc<RequestIds>,
    /// The capture ring (`capture:`), outermost: requests as the application sent them,
    /// responses as they went back to it. `None`: capture off, nothing recorded.
    capture: Option<Arc<CaptureRing>>,
}

impl Proxy {
    pub fn new(state: Arc<ArcSwap<Generation>>, ids: Arc<RequestIds>) -> Self {
        Proxy {
            state,
            ids,
            capture: None,
        }
    }

    /// Record every routed exchange in `ring`.
    pub fn with_capture(mut self, ring: Option<Arc<CaptureRing>>) -> Self {
        self.capture = ring;
        self
    }

    /// Account for a request head the listener refused before hyper saw it (400/408/431
    /// written by `server.rs`): counted under the `unknown` upstream, method `OTHER`. Returns
    /// the request id to answer with.
    pub fn refused(&self, status: u16) -> String {
        self.state.load().unknown.request_labelled("OTHER", status);
        self.ids.next()
    }

    pub async fn serve(self, req: Request<Incoming>) -> Result<Response<BoxBody>, Infallible> {
        Ok(self.handle(req).await)
    }

    pub async fn handle(&self, mut req: Request<Incoming>) -> Response<BoxBody> {
        let start = Instant::now();
        let generation = self.state.load_full();
        let request_id_value = self.ids.for_request(&req);
        // Only ASCII letters, digits and `-_.:` get here (see `for_request`).
        let request_id = request_id_value.to_str().unwrap_or_default();
        let method = req.method().clone();
        let uri = req.uri().clone();
        // May the application send this again? (Outpost's own auto key is invisible to it.)
        let request_safe = crate::stack::retry::is_idempotent(&method)
            || req
                .headers()
                .contains_key(&crate::stack::retry::IDEMPOTENCY_KEY);

        let routed = check_target(&req).and_then(|()| {
            let host = match req.version() {
                Version::HTTP_2 | Version::HTTP_3 => uri.authority().map(|a| a.as_str()),
                _ => req.headers().get(HOST).and_then(|h| h.to_str().ok()),
            };
            generation
                .router
                .route(host, uri.path())
                .map(|r| (r.index, r.rest))
        });
        let (stack, cassette, rest_path) = match routed {
            Ok((index, rest)) => (
                generation.upstreams[index].clone(),
                generation.cassettes.get(index).cloned().flatten(),
                rest,
            ),
            Err(e) => {
                return self.finish(
                    &generation,
                    None,
                    &method,
                    uri.path(),
                    request_id_value,
                    start,
                    0,
                    request_safe,
                    Err(e),
                );
            }
        };
        // From here on the request is accounted for however it ends, the application going
        // away (hyper dropping this future) included.
        let pending = Pending::new(&stack, &method, uri.path(), &request_id_value, start);
        // The forwarded path and query, for capture and cassettes (built only when used).
        let forwarded = (self.capture.is_some() || cassette.is_some()).then(|| {
            let text = match uri.query() {
                Some(query) => format!("{rest_path}?{query}"),
                None => rest_path.to_string(),
            };
            text.parse::<Uri>()
                .unwrap_or_else(|_| Uri::from_static("/"))
        });
        // Capture (when on): the request as the application sent it, before any credential.
        let recording = self.capture.as_ref().map(|ring| {
            let forwarded = forwarded.clone().unwrap_or_else(|| Uri::from_static("/"));
            let mut draft =
                ring.start_upstream(&stack.config.name, &method, &forwarded, req.headers());
            draft.base_url(stack.config.base_url.to_string());
            Recording::new(ring, draft)
        });

        let limit = generation.limits().max_body_bytes;
        let declared = req
            .headers()
            .get(CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        let result = match (limit, declared) {
            (Some(limit), Some(len)) if len > limit => Err(ProxyError::PayloadTooLarge { limit }),
            _ => {
                let upgrade = (req.version() == Version::HTTP_11 && wants_upgrade(req.headers()))
                    .then(|| hyper::upgrade::on(&mut req));
                let request = match limit {
                    Some(limit) => req.map(|b| boxed(Limited::new(b, limit as usize))),
                    None => req.map(|b| b.map_err(Into::into).boxed_unsync()),
                };
                let request = match &recording {
                    Some(recording) => request.map(|b| boxed(recording.tap_request(b))),
                    None => request,
                };
                match (&cassette, &forwarded) {
                    (Some(cassette), Some(forwarded)) => {
                        self.with_cassette(
                            &stack,
                            cassette,
                            forwarded,
                            request,
                            rest_path,
                            limit,
                            request_id,
                            &pending.attempts,
                            recording.as_ref(),
                        )
                        .await
                    }
                    _ => {
                        stack
                            .call(
                                Outbound {
                                    request,
                                    rest_path,
                                    upgrade,
                                    body_limit: limit,
                                    recording: recording.as_ref(),
                                },
                                request_id,
                                &pending.attempts,
                            )
                            .await
                    }
                }
            }
        };
        let attempts = pending.answered();
        let response = self.finish(
            &generation,
            Some(&stack),
            &method,
            uri.path(),
            request_id_value,
            start,
            attempts,
            request_safe,
            result,
        );
        match recording {
            Some(recording) => {
                recording.with(|draft| {
                    draft.response_head(response.status().as_u16(), response.headers());
                    if let Some(kind) = response
                        .headers()
                        .get(&crate::error::X_OUTPOST_ERROR)
                        .and_then(|v| v.to_str().ok())
                    {
                        draft.error_if_none(kind);
                    }
                });
                response.map(|b| boxed(recording.tap_response(b)))
            }
            None => response,
        }
    }

    /// Record/replay (`mode:`): replay a matching recording without touching the network, or
    /// answer `502 replay_miss` (`replay`), or go live and record the answer as it streams back
    /// (`record`, and a miss in `replay_or_record`). The body is read whole (it is matched or
    /// stored as one), at most `limits.max_body_bytes` or 16 MiB.
    #[allow(clippy::too_many_arguments)]
    async fn with_cassette(
        &self,
        stack: &UpstreamStack,
        cassette: &Arc<Cassette>,
        forwarded: &Uri,
        request: Request<BoxBody>,
        rest_path: &str,
        limit: Option<u64>,
        request_id: &str,
        attempts: &AtomicU32,
        recording: Option<&Recording>,
    ) -> Result<Response<BoxBody>, ProxyError> {
        let (parts, body) = request.into_parts();
        let read_limit = limit.unwrap_or(DEFAULT_MAX_RECORD_BODY_BYTES as u64);
        let chunks = crate::stack::auth::read_capped(body, &parts.headers, read_limit).await?;
        let bytes: Bytes = match chunks.as_slice() {
            [one] => one.clone(),
            many => many.concat().into(),
        };
        let asked = CassetteRequest::new(
            parts.method.clone(),
            forwarded,
            parts.headers.clone(),
            bytes.clone(),
        );
        let mode = stack.config.mode;
        if matches!(mode, Mode::Replay | Mode::ReplayOrRecord) {
            match cassette.lookup(&asked) {
                Ok(answer) => return Ok(replayed(answer)),
                Err(miss) if mode == Mode::Replay => return Err(ProxyError::ReplayMiss(miss)),
                Err(_) => {}
            }
        }
        let request = Request::from_parts(parts, crate::body::full(bytes));
        let response = stack
            .call(
                Outbound {
                    request,
                    rest_path,
                    upgrade: None,
                    body_limit: limit,
                    recording,
                },
                request_id,
                attempts,
            )
            .await?;
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        Ok(response.map(|body| {
            boxed(cassette.record_body(asked, status, headers, body, DEFAULT_MAX_RECORD_BODY_BYTES))
        }))
    }

    #[allow(clippy::too_many_arguments)]
    fn finish(
        &self,
        generation: &Generation,
        stack: Option<&UpstreamStack>,
        method: &Method,
        path: &str,
        request_id_value: HeaderValue,
        start: Instant,
        attempts: u32,
        request_safe: bool,
        result: Result<Response<BoxBody>, ProxyError>,
    ) -> Response<BoxBody> {
        let request_id = request_id_value.to_str().unwrap_or_default();
        let upstream = stack.map(|s| s.config.name.as_str());
        let mut response = match result {
            Ok(response) => response,
            Err(err) => {
                let level_error = err.status().is_server_error();
                let cause = crate::error::chain(&err);
                if level_error {
                    tracing::warn!(request_id, upstream = upstream.unwrap_or(NO_UPSTREAM), error = %cause, "request failed");
                } else {
                    tracing::debug!(request_id, upstream = upstream.unwrap_or(NO_UPSTREAM), error = %cause, "request refused");
                }
                err.to_response(upstream, request_id, request_safe)
            }
        };
        let status = response.status().as_u16();
        let elapsed = start.elapsed();
        let metrics = stack.map_or(&generation.unknown, |s| &s.metrics);
        metrics.request(method, status);
        metrics.duration.record(elapsed.as_secs_f64());
        crate::telemetry::access(&crate::telemetry::Access {
            request_id,
            upstream: upstream.unwrap_or(NO_UPSTREAM),
            method: method.as_str(),
            path,
            status,
            attempts,
            duration: elapsed,
        });
        response
            .headers_mut()
            .entry(&X_REQUEST_ID)
            .or_insert(request_id_value);
        response
    }
}

/// Open the cassette of every upstream that records or replays (a garbage file fails the
/// config). Their scrubber knows every secret of the config.
fn open_cassettes(config: &Config) -> Result<Vec<Option<Arc<Cassette>>>, String> {
    let secrets = config.secret_values();
    let mut redactor = crate::capture::Redactor::new(Vec::new(), Vec::new());
    redactor.set_secrets(&secrets.iter().map(String::as_str).collect::<Vec<_>>());
    let redactor = Arc::new(redactor);
    config
        .upstreams
        .iter()
        .map(|u| match (&config.cassette_dir, u.mode.uses_cassette()) {
            (Some(dir), true) => Cassette::open(dir, &u.name, u.cassette.clone(), redactor.clone())
                .map(|c| Some(Arc::new(c)))
                .map_err(|e| format!("upstreams.{}: {e}", u.name)),
            _ => Ok(None),
        })
        .collect()
}

/// A recorded answer as the response for the application.
fn replayed(answer: crate::capture::cassette::ReplayResponse) -> Response<BoxBody> {
    let mut response = Response::new(crate::body::full(answer.body));
    *response.status_mut() = answer.status;
    *response.headers_mut() = answer.headers;
    response.headers_mut().insert(
        http::HeaderName::from_static("x-outpost-cassette"),
        HeaderValue::from_static("replayed"),
    );
    response
}

/// A routed request in flight: holds the in-flight gauge, counts attempts, and when dropped
/// before [`Pending::answered`] (the application closed the connection or reset the stream)
/// writes the access line and counts the request with status `499`, nginx's "client closed
/// request".
struct Pending<'a> {
    stack: &'a UpstreamStack,
    method: &'a Method,
    path: &'a str,
    request_id: &'a HeaderValue,
    start: Instant,
    attempts: AtomicU32,
    answered: bool,
}

impl<'a> Pending<'a> {
    fn new(
        stack: &'a UpstreamStack,
        method: &'a Method,
        path: &'a str,
        request_id: &'a HeaderValue,
        start: Instant,
    ) -> Self {
        stack.metrics.in_flight.increment(1.0);
        Pending {
            stack,
            method,
            path,
            request_id,
            start,
            attempts: AtomicU32::new(0),
            answered: false,
        }
    }

    /// The stack answered: the caller accounts for it. Returns the attempts made.
    fn answered(mut self) -> u32 {
        self.answered = true;
        self.attempts.load(Ordering::Relaxed)
    }
}

impl Drop for Pending<'_> {
    fn drop(&mut self) {
        self.stack.metrics.in_flight.decrement(1.0);
        if self.answered {
            return;
        }
        let status = crate::error::client_closed_request().as_u16();
        let elapsed = self.start.elapsed();
        let metrics = &self.stack.metrics;
        metrics.request(self.method, status);
        metrics.duration.record(elapsed.as_secs_f64());
        let request_id = self.request_id.to_str().unwrap_or_default();
        tracing::debug!(request_id, upstream = %self.stack.config.name, "client closed the request before it was answered");
        crate::telemetry::access(&crate::telemetry::Access {
            request_id,
            upstream: &self.stack.config.name,
            method: self.method.as_str(),
            path: self.path,
            status,
            attempts: self.attempts.load(Ordering::Relaxed),
            duration: elapsed,
        });
    }
}

/// Outpost is not a forward proxy: only origin-form targets (and HTTP/2's own pseudo-headers).
fn check_target<B>(req: &Request<B>) -> Result<(), ProxyError> {
    if req.method() == Method::CONNECT {
        return Err(ProxyError::BadRequest(
            "CONNECT is not supported: Outpost is not a forward proxy",
        ));
    }
    let http2 = matches!(req.version(), Version::HTTP_2 | Version::HTTP_3);
    if !http2 && (req.uri().scheme().is_some() || req.uri().authority().is_some()) {
        return Err(ProxyError::BadRequest(
            "absolute-form request targets are not supported: send /<upstream>/<path>",
        ));
    }
    Ok(())
}
