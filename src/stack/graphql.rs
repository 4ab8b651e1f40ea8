//! GraphQL awareness (`graphql:` on an upstream): what operation a request carries, and what
//! the answer says of the points budget.
//!
//! Runs in `stack.rs` around the retry loop, only for requests to the upstream's GraphQL path
//! (`graphql.path`); every other request skips it.
//! * **Operation**: `POST` with a JSON body `{"query", "operationName"}` (or a JSON array: a
//!   batch, which is a query only if every member is), or `GET ?query=…&operationName=…`.
//!   The document is parsed with `apollo-parser` (recursion and token limits: a hostile body
//!   cannot exhaust the stack). The body is read before the first attempt, within
//!   `retry.max_body_bytes`; one over the cap, or one that does not parse, is forwarded
//!   unchanged and treated as a mutation. A `query` is retried like an idempotent request (even
//!   though POST); a `mutation` only when the application sent an `Idempotency-Key` (no key is
//!   ever added to a GraphQL request: GraphQL servers generally ignore the header, and an
//!   automatic key would make an unsafe retry look safe); a `subscription` passes through and
//!   is never retried.
//! * **Answer**: the first [`PEEK_BYTES`] of a `200`/`403` JSON answer are read before it is
//!   passed on (a throttling answer fits in them): Shopify's `errors[].extensions.code ==
//!   "THROTTLED"` or GitHub's `errors[].type == "RATE_LIMITED"` make it a rate-limit answer
//!   (the upstream's limiter is paused, a query is retried when the wait allows, counted in
//!   `outpost_rate_limited_total{source="upstream"}`). The rest streams through, tapped (up to
//!   [`TAP_BYTES`]) for `extensions.cost` (Shopify: `requestedQueryCost`, `actualQueryCost`,
//!   `throttleStatus`), which feeds the key's points bucket: the next query waits until its
//!   requested cost (the last one of that operation, else of the previous answer) is there.

use std::collections::{HashMap, VecDeque};
use std::pin::Pin;
use std::sync::Mutex;
use std::task::{Context, Poll};
use std::time::Duration;

use apollo_parser::cst;
use bytes::{Bytes, BytesMut};
use http_body::{Body, Frame, SizeHint};
use serde_json::Value;

use super::quota::Budget;
use crate::body::{BoxBody, BoxError};

/// An answer's first bytes read before it is passed on.
pub const PEEK_BYTES: usize = 8 * 1024;
/// An answer is tapped for its cost data up to this size; a larger one is not parsed.
pub const TAP_BYTES: usize = 1024 * 1024;
/// Parser limits for a document (a query is rarely deeper than 20, or longer than 10 000 tokens).
const RECURSION_LIMIT: usize = 128;
const TOKEN_LIMIT: usize = 200_000;
/// Operation names remembered for their cost.
const MAX_NAMES: usize = 512;
/// A throttled answer's wait is honoured up to this long.
const MAX_THROTTLE_WAIT: Duration = Duration::from_secs(60);

/// The operation a request carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Query,
    Mutation,
    Subscription,
    /// Over the cap, or not a GraphQL request that parses: treated as a mutation.
    Unknown,
}

impl Kind {
    /// May the request go again once the upstream has it? (A mutation: with a key only.)
    pub fn is_query(self) -> bool {
        self == Kind::Query
    }
}

/// What a request was found to be.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Operation {
    pub kind: Kind,
    /// `operationName`, or the selected operation's own name (for its cost).
    pub name: Option<String>,
}

impl Operation {
    pub fn unknown() -> Self {
        Operation {
            kind: Kind::Unknown,
            name: None,
        }
    }
}

/// The kind of the operation `operation_name` selects in `document` (the only one when no
/// name is given); `None` when the document does not parse or selects nothing.
pub fn operation_kind(
    document: &str,
    operation_name: Option<&str>,
) -> Option<(Kind, Option<String>)> {
    let tree = apollo_parser::Parser::new(document)
        .recursion_limit(RECURSION_LIMIT)
        .token_limit(TOKEN_LIMIT)
        .parse();
    if tree.errors().next().is_some() {
        return None;
    }
    let mut operations = tree.document().definitions().filter_map(|d| match d {
        cst::Definition::OperationDefinition(op) => Some(op),
        _ => None,
    });
    let name_of = |op: &cst::OperationDefinition| {
        op.name()
            .and_then(|n| n.ident_token())
            .map(|t| t.text().to_string())
    };
    let selected = match operation_name {
        Some(wanted) => operations.find(|op| name_of(op).as_deref() == Some(wanted))?,
        None => {
            let first = operations.next()?;
            if operations.next().is_some() {
                return None;
            }
            first
        }
    };
    let kind = match selected.operation_type() {
        None => Kind::Query,
        Some(t) if t.query_token().is_some() => Kind::Query,
        Some(t) if t.mutation_token().is_some() => Kind::Mutation,
        Some(t) if t.subscription_token().is_some() => Kind::Subscription,
        Some(_) => return None,
    };
    Some((kind, name_of(&selected)))
}

fn classify_one(request: &Value) -> Operation {
    let Some(object) = request.as_object() else {
        return Operation::unknown();
    };
    let Some(query) = object.get("query").and_then(Value::as_str) else {
        return Operation::unknown();
    };
    let wanted = object.get("operationName").and_then(Value::as_str);
    match operation_kind(query, wanted) {
        Some((kind, name)) => Operation {
            kind,
            name: wanted.map(str::to_string).or(name),
        },
        None => Operation::unknown(),
    }
}

/// A POST body: one request object, or a batch (a query only if all of its members are).
pub fn classify_body(body: &[u8]) -> Operation {
    let Ok(value) = serde_json::from_slice::<Value>(body) else {
        return Operation::unknown();
    };
    match &value {
        Value::Array(batch) if !batch.is_empty() => {
            let kinds: Vec<Kind> = batch.iter().map(|r| classify_one(r).kind).collect();
            let kind = if kinds.iter().all(|k| *k == Kind::Query) {
                Kind::Query
            } else if kinds.contains(&Kind::Unknown) {
                Kind::Unknown
            } else if kinds.contains(&Kind::Mutation) {
                Kind::Mutation
            } else {
                Kind::Subscription
            };
            Operation { kind, name: None }
        }
        Value::Array(_) => Operation::unknown(),
        other => classify_one(other),
    }
}

/// A GET request's query string: `query=…&operationName=…`.
pub fn classify_query_string(query: &str) -> Operation {
    let mut document = None;
    let mut wanted = None;
    for (key, value) in form_urlencoded::parse(query.as_bytes()) {
        match &*key {
            "query" => document = Some(value.into_owned()),
            "operationName" => wanted = Some(value.into_owned()),
            _ => {}
        }
    }
    let Some(document) = document else {
        return Operation::unknown();
    };
    match operation_kind(&document, wanted.as_deref()) {
        Some((kind, name)) => Operation {
            kind,
            name: wanted.or(name),
        },
        None => Operation::unknown(),
    }
}

/// Shopify's cost data (`extensions.cost`).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Cost {
    pub requested: Option<f64>,
    pub actual: Option<f64>,
    pub available: Option<f64>,
    pub maximum: Option<f64>,
    pub restore_rate: Option<f64>,
}

impl Cost {
    /// The points bucket the answer reports.
    pub fn budget(&self) -> Option<Budget> {
        let maximum = self.maximum.filter(|m| m.is_finite() && *m >= 1.0)?;
        let available = self
            .available
            .filter(|a| a.is_finite())?
            .clamp(0.0, maximum);
        let restore = self.restore_rate.filter(|r| r.is_finite() && *r > 0.0)?;
        Some(Budget {
            remaining: available,
            limit: maximum,
            resets_in: Duration::from_secs_f64(((maximum - available) / restore).min(86_400.0)),
            refill: Some(restore),
        })
    }

    /// How long a throttled query of `cost` points waits for the bucket to hold it.
    pub fn wait_for(&self, cost: f64) -> Option<Duration> {
        let available = self.available?;
        let restore = self.restore_rate.filter(|r| *r > 0.0)?;
        let missing = (cost - available).max(0.0);
        Some(Duration::from_secs_f64(
            (missing / restore).min(MAX_THROTTLE_WAIT.as_secs_f64()),
        ))
    }
}

/// What an answer's body says.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Facts {
    /// Shopify `THROTTLED`, GitHub `RATE_LIMITED`.
    pub throttled: bool,
    pub cost: Option<Cost>,
}

fn number(value: Option<&Value>) -> Option<f64> {
    value
        .and_then(Value::as_f64)
        .filter(|n| n.is_finite() && *n >= 0.0)
        .map(|n| n.min(1e12))
}

/// Read a (complete) GraphQL answer body; anything that is not such an answer says nothing.
pub fn read_answer(body: &[u8]) -> Facts {
    let Ok(value) = serde_json::from_slice::<Value>(body) else {
        return Facts::default();
    };
    let throttled = value
        .get("errors")
        .and_then(Value::as_array)
        .is_some_and(|errors| {
            errors.iter().any(|e| {
                let code = e.pointer("/extensions/code").and_then(Value::as_str);
                let kind = e.get("type").and_then(Value::as_str);
                matches!(code, Some("THROTTLED" | "RATE_LIMITED"))
                    || matches!(kind, Some("RATE_LIMITED"))
            })
        });
    let cost = value.pointer("/extensions/cost").map(|c| Cost {
        requested: number(c.get("requestedQueryCost")),
        actual: number(c.get("actualQueryCost")),
        available: number(c.pointer("/throttleStatus/currentlyAvailable")),
        maximum: number(c.pointer("/throttleStatus/maximumAvailable")),
        restore_rate: number(c.pointer("/throttleStatus/restoreRate")),
    });
    Facts { throttled, cost }
}

/// The last requested costs, per operation name and overall: the estimate of the next query.
#[derive(Default)]
pub struct Costs {
    inner: Mutex<CostsInner>,
}

#[derive(Default)]
struct CostsInner {
    by_name: HashMap<String, f64>,
    last: Option<f64>,
}

impl Costs {
    /// The points a query named `name` is expected to need (1 when nothing is known yet).
    pub fn estimate(&self, name: Option<&str>) -> f64 {
        let inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        name.and_then(|n| inner.by_name.get(n).copied())
            .or(inner.last)
            .unwrap_or(1.0)
            .max(1.0)
    }

    /// Remember what an answer reported (the requested cost: it is what the upstream checks
    /// against the bucket before running the query).
    pub fn learn(&self, name: Option<&str>, cost: &Cost) {
        let Some(points) = cost.requested.or(cost.actual) else {
            return;
        };
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        inner.last = Some(points);
        if let Some(name) = name {
            if inner.by_name.len() < MAX_NAMES || inner.by_name.contains_key(name) {
                inner.by_name.insert(name.to_string(), points);
            }
        }
    }
}

/// Read up to `limit` bytes of `body`. `Ok((chunks, None))`: it ended within the limit;
/// `Ok((chunks, Some(rest)))`: it goes on (chunks hold at least `limit` bytes, or a trailers
/// frame came).
pub async fn read_prefix(
    mut body: BoxBody,
    limit: usize,
) -> Result<(Vec<Bytes>, Option<Prefixed>), BoxError> {
    use http_body_util::BodyExt;
    let mut chunks = Vec::new();
    let mut len = 0usize;
    while len <= limit {
        if body.is_end_stream() {
            return Ok((chunks, None));
        }
        match body.frame().await {
            None => return Ok((chunks, None)),
            Some(Err(e)) => return Err(e),
            Some(Ok(frame)) => match frame.into_data() {
                Ok(data) => {
                    len = len.saturating_add(data.len());
                    chunks.push(data);
                }
                Err(frame) => {
                    let rest = Prefixed::new(chunks.clone(), body, frame.into_trailers().ok());
                    return Ok((chunks, Some(rest)));
                }
            },
        }
    }
    let rest = Prefixed::new(chunks.clone(), body, None);
    Ok((chunks, Some(rest)))
}

pin_project_lite::pin_project! {
    /// A body whose first chunks were read already: those, then the rest.
    pub struct Prefixed {
        prefix: VecDeque<Bytes>,
        trailers: Option<http::HeaderMap>,
        #[pin]
        inner: BoxBody,
    }
}

impl Prefixed {
    fn new(prefix: Vec<Bytes>, inner: BoxBody, trailers: Option<http::HeaderMap>) -> Self {
        Prefixed {
            prefix: prefix.into(),
            trailers,
            inner,
        }
    }
}

impl Body for Prefixed {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.project();
        if let Some(chunk) = this.prefix.pop_front() {
            return Poll::Ready(Some(Ok(Frame::data(chunk))));
        }
        if let Some(trailers) = this.trailers.take() {
            return Poll::Ready(Some(Ok(Frame::trailers(trailers))));
        }
        this.inner.poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.prefix.is_empty() && self.trailers.is_none() && self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        let prefix: u64 = self.prefix.iter().map(|c| c.len() as u64).sum();
        let inner = self.inner.size_hint();
        let mut hint = SizeHint::new();
        hint.set_lower(inner.lower().saturating_add(prefix));
        if let Some(upper) = inner.upper() {
            hint.set_upper(upper.saturating_add(prefix));
        }
        hint
    }
}

pin_project_lite::pin_project! {
    /// A response body passed through as it comes, with a copy of up to [`TAP_BYTES`] handed to
    /// `on_end` when it ends (not when it fails, or is dropped early, or is larger).
    pub struct Tap<F: FnOnce(&[u8])> {
        #[pin]
        inner: BoxBody,
        copy: Option<BytesMut>,
        on_end: Option<F>,
    }
}

impl<F: FnOnce(&[u8])> Tap<F> {
    pub fn new(inner: BoxBody, on_end: F) -> Self {
        Tap {
            inner,
            copy: Some(BytesMut::new()),
            on_end: Some(on_end),
        }
    }
}

impl<F: FnOnce(&[u8])> Body for Tap<F> {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.project();
        let mut inner = this.inner;
        let poll = inner.as_mut().poll_frame(cx);
        match &poll {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    if this
                        .copy
                        .as_ref()
                        .is_some_and(|c| c.len() + data.len() > TAP_BYTES)
                    {
                        *this.copy = None;
                    } else if let Some(copy) = this.copy.as_mut() {
                        copy.extend_from_slice(data);
                    }
                }
                // A sized body may be dropped as soon as it reports its end, before `None`.
                if inner.is_end_stream() {
                    if let (Some(copy), Some(on_end)) = (this.copy.take(), this.on_end.take()) {
                        on_end(&copy);
                    }
                }
            }
            Poll::Ready(None) => {
                if let (Some(copy), Some(on_end)) = (this.copy.take(), this.on_end.take()) {
                    on_end(&copy);
                }
            }
            Poll::Ready(Some(Err(_))) => {
                *this.copy = None;
            }
            Poll::Pending => {}
        }
        poll
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn kind(body: &str) -> Kind {
        classify_body(body.as_bytes()).kind
    }

    #[test]
    fn operations_by_keyword_and_name() {
        assert_eq!(kind(r#"{"query":"{ shop { name } }"}"#), Kind::Query);
        assert_eq!(
            kind(r#"{"query":"query Q { shop { name } }"}"#),
            Kind::Query
        );
        assert_eq!(
            kind(r#"{"query":"mutation M { productCreate(input: {}) { id } }"}"#),
            Kind::Mutation
        );
        assert_eq!(
            kind(r#"{"query":"subscription S { events { id } }"}"#),
            Kind::Subscription
        );
        let two = r#"query A { a } mutation B { b }"#;
        let with =
            |name: &str| serde_json::json!({"query": two, "operationName": name}).to_string();
        assert_eq!(kind(&with("A")), Kind::Query);
        assert_eq!(kind(&with("B")), Kind::Mutation);
        assert_eq!(kind(&with("C")), Kind::Unknown, "no such operation");
        assert_eq!(
            kind(&serde_json::json!({ "query": two }).to_string()),
            Kind::Unknown,
            "two operations and no name"
        );
        let op = classify_body(br#"{"query":"query Products { products { id } }"}"#);
        assert_eq!(op.name.as_deref(), Some("Products"));
    }

    #[test]
    fn batches_are_queries_only_if_all_are() {
        assert_eq!(
            kind(r#"[{"query":"{ a }"},{"query":"query { b }"}]"#),
            Kind::Query
        );
        assert_eq!(
            kind(r#"[{"query":"{ a }"},{"query":"mutation { b }"}]"#),
            Kind::Mutation
        );
        assert_eq!(kind(r#"[{"query":"{ a }"},{"query":"{"}]"#), Kind::Unknown);
        assert_eq!(kind("[]"), Kind::Unknown);
    }

    #[test]
    fn anything_else_is_unknown() {
        for bad in [
            "",
            "not json",
            r#"{"query": 5}"#,
            r#"{"variables": {}}"#,
            r#"{"query": "{ unclosed"}"#,
            r#"{"query": "fragment F on T { a }"}"#,
            "\"just a string\"",
        ] {
            assert_eq!(kind(bad), Kind::Unknown, "{bad}");
        }
        // Deep nesting stops at the recursion limit instead of the stack's end.
        let deep = format!("{}{}", "{ a ".repeat(100_000), "}".repeat(100_000));
        let body = serde_json::json!({ "query": deep }).to_string();
        assert_eq!(kind(&body), Kind::Unknown);
    }

    #[test]
    fn get_query_strings() {
        assert_eq!(
            classify_query_string("query=%7B%20a%20%7D").kind,
            Kind::Query
        );
        assert_eq!(
            classify_query_string("query=mutation+M+%7B+a+%7D&operationName=M").kind,
            Kind::Mutation
        );
        assert_eq!(classify_query_string("operationName=M").kind, Kind::Unknown);
    }

    #[test]
    fn answers_cost_and_throttling() {
        // REFERENCE.md "GraphQL facts": Shopify's cost extension and its THROTTLED answer.
        let ok = br#"{"data":{},"extensions":{"cost":{"requestedQueryCost":101,"actualQueryCost":46,
            "throttleStatus":{"maximumAvailable":1000.0,"currentlyAvailable":954,"restoreRate":50.0}}}}"#;
        let facts = read_answer(ok);
        assert!(!facts.throttled);
        let cost = facts.cost.unwrap();
        assert_eq!((cost.requested, cost.actual), (Some(101.0), Some(46.0)));
        let budget = cost.budget().unwrap();
        assert_eq!(
            (budget.remaining, budget.limit, budget.refill),
            (954.0, 1000.0, Some(50.0))
        );
        let throttled = br#"{"errors":[{"message":"Throttled","extensions":{"code":"THROTTLED"}}],
            "extensions":{"cost":{"requestedQueryCost":100,"throttleStatus":{"maximumAvailable":1000.0,
            "currentlyAvailable":20,"restoreRate":50.0}}}}"#;
        let facts = read_answer(throttled);
        assert!(facts.throttled);
        assert_eq!(
            facts.cost.unwrap().wait_for(100.0),
            Some(Duration::from_millis(1600))
        );
        // GitHub: errors[].type RATE_LIMITED.
        let github = br#"{"errors":[{"type":"RATE_LIMITED","message":"API rate limit exceeded"}]}"#;
        assert!(read_answer(github).throttled);
        assert_eq!(read_answer(b"{\"data\":{}}"), Facts::default());
        assert_eq!(read_answer(b"<html>"), Facts::default());
    }

    #[test]
    fn costs_estimate_per_operation_then_overall() {
        let costs = Costs::default();
        assert_eq!(costs.estimate(Some("A")), 1.0);
        costs.learn(
            Some("A"),
            &Cost {
                requested: Some(100.0),
                ..Default::default()
            },
        );
        costs.learn(
            Some("B"),
            &Cost {
                requested: Some(7.0),
                ..Default::default()
            },
        );
        assert_eq!(costs.estimate(Some("A")), 100.0);
        assert_eq!(costs.estimate(Some("C")), 7.0, "the previous answer's");
        assert_eq!(costs.estimate(None), 7.0);
    }

    #[tokio::test]
    async fn a_long_answer_streams_through_the_peek_and_the_tap() {
        use http_body_util::BodyExt;
        let pad = "x".repeat(3 * PEEK_BYTES);
        let text = format!(
            r#"{{"data":{{"pad":"{pad}"}},"extensions":{{"cost":{{"requestedQueryCost":42}}}}}}"#
        );
        let chunks: Vec<Result<Frame<Bytes>, BoxError>> = text
            .as_bytes()
            .chunks(1000)
            .map(|c| Ok(Frame::data(Bytes::copy_from_slice(c))))
            .collect();
        let body = BodyExt::boxed_unsync(http_body_util::StreamBody::new(
            futures_util::stream::iter(chunks),
        ));
        let (prefix, rest) = read_prefix(body, PEEK_BYTES).await.unwrap();
        assert!(prefix.iter().map(Bytes::len).sum::<usize>() > PEEK_BYTES);
        let seen = std::sync::Arc::new(Mutex::new(None));
        let sink = seen.clone();
        let tapped = Tap::new(
            BodyExt::boxed_unsync(rest.unwrap()),
            move |bytes: &[u8]| *sink.lock().unwrap() = Some(read_answer(bytes)),
        );
        let out = tapped.collect().await.unwrap().to_bytes();
        assert_eq!(out, text.as_bytes(), "passed through unchanged");
        let facts = seen.lock().unwrap().expect("parsed at the end");
        assert_eq!(facts.cost.unwrap().requested, Some(42.0));
        // Past TAP_BYTES nothing is parsed, and the body still passes.
        let big = Bytes::from(vec![b' '; TAP_BYTES + 1]);
        let called = std::sync::Arc::new(Mutex::new(false));
        let flag = called.clone();
        let tapped = Tap::new(crate::body::full(big.clone()), move |_: &[u8]| {
            *flag.lock().unwrap() = true
        });
        assert_eq!(tapped.collect().await.unwrap().to_bytes(), big);
        assert!(!*called.lock().unwrap());
    }

    proptest! {
        #[test]
        fn classifying_never_panics(text in "\\PC{0,300}", name in proptest::option::of("\\PC{0,20}")) {
            let body = serde_json::json!({"query": text, "operationName": name}).to_string();
            let _ = classify_body(body.as_bytes());
            let _ = classify_body(text.as_bytes());
            let _ = classify_query_string(&text);
            let _ = operation_kind(&text, name.as_deref());
            let _ = read_answer(text.as_bytes());
        }

        #[test]
        fn cost_numbers_never_panic(a in any::<f64>(), m in any::<f64>(), r in any::<f64>(), c in any::<f64>()) {
            let cost = Cost { requested: Some(c), actual: None, available: Some(a), maximum: Some(m), restore_rate: Some(r) };
            let _ = cost.budget();
            let _ = cost.wait_for(c);
        }
    }
}
