//! The Stripe profile: `/v1/customers`, `/v1/charges`, idempotent POSTs, Stripe's error shape.
//!
//! Objects mirror the fields of the real API that clients commonly read; parameters are
//! checked the way Stripe checks them (unknown parameters, required ones, integer and length
//! limits, metadata rules), so a client that passes here sends what Stripe accepts.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hash, Hasher};
use std::sync::{Mutex, PoisonError};

use base64::Engine as _;
use bytes::Bytes;
use http::request::Parts;
use hyper::header::{HeaderMap, HeaderName, HeaderValue, AUTHORIZATION, WWW_AUTHENTICATE};
use hyper::{Method, StatusCode};
use serde_json::{json, Map, Value};

use super::form;
use super::store::Bounded;
use super::{key_accepted, looks_like_email, random_id, unix_now, Reply};

/// Objects of one kind kept at once; the oldest is evicted first.
const MAX_OBJECTS: usize = 10_000;
/// Serialized bytes of one kind kept at once.
const MAX_OBJECT_BYTES: usize = 8 * 1024 * 1024;
/// Idempotent results kept at once.
const MAX_IDEMPOTENT: usize = 10_000;
const MAX_IDEMPOTENT_BYTES: usize = 8 * 1024 * 1024;
/// Stripe's limits.
const MAX_STRING_CHARS: usize = 5_000;
const MAX_METADATA_KEYS: usize = 50;
const MAX_METADATA_KEY_CHARS: usize = 40;
const MAX_METADATA_VALUE_CHARS: usize = 500;
const MAX_IDEMPOTENCY_KEY_CHARS: usize = 255;
const MAX_AMOUNT: i64 = 99_999_999;
const DEFAULT_LIST_LIMIT: usize = 10;
const MAX_LIST_LIMIT: usize = 100;

const IDEMPOTENCY_KEY: HeaderName = HeaderName::from_static("idempotency-key");
const IDEMPOTENT_REPLAYED: HeaderName = HeaderName::from_static("idempotent-replayed");
const ORIGINAL_REQUEST: HeaderName = HeaderName::from_static("original-request");

type Params = [(String, String)];

/// Check the API key: `Authorization: Bearer <key>` or HTTP basic with the key as username.
/// Returns the key (used only to scope idempotency keys, never echoed).
pub(super) fn authenticate(expected: Option<&str>, headers: &HeaderMap) -> Result<String, Reply> {
    presented_key(headers)
        .filter(|key| key_accepted(expected, key, "sk_test_"))
        .ok_or_else(|| {
            error_reply(
                StatusCode::UNAUTHORIZED,
                error_object("invalid_request_error", "Invalid API Key provided"),
            )
            .with_header(
                WWW_AUTHENTICATE,
                HeaderValue::from_static("Basic realm=\"Stripe\""),
            )
        })
}

fn presented_key(headers: &HeaderMap) -> Option<String> {
    if let Some(token) = super::bearer_token(headers) {
        return Some(token.to_string());
    }
    let value = headers.get(AUTHORIZATION)?.to_str().ok()?;
    let (scheme, encoded) = value.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()?;
    let decoded = String::from_utf8(decoded).ok()?;
    let username = decoded.split_once(':').map_or(decoded.as_str(), |(u, _)| u);
    Some(username.to_string()).filter(|u| !u.is_empty())
}

/// A Stripe error answer for a status produced outside the API (faults, body limits).
pub(super) fn error_for_status(status: StatusCode, message: &str) -> Reply {
    let object = match status {
        StatusCode::TOO_MANY_REQUESTS => {
            error_object("invalid_request_error", message).code("rate_limit")
        }
        s if s.is_server_error() => error_object("api_error", message),
        _ => error_object("invalid_request_error", message),
    };
    error_reply(status, object)
}

/// In-memory objects and idempotent results of one mock.
pub(super) struct State {
    inner: Mutex<Inner>,
    hasher: RandomState,
}

struct Inner {
    customers: Bounded<String, Value>,
    charges: Bounded<String, Value>,
    idempotent: Bounded<(u64, String), Saved>,
}

/// The first answer to an idempotent request.
struct Saved {
    fingerprint: u64,
    status: StatusCode,
    body: Bytes,
    request_id: String,
}

impl State {
    pub(super) fn new() -> Self {
        Self {
            inner: Mutex::new(Inner {
                customers: Bounded::new(MAX_OBJECTS, MAX_OBJECT_BYTES),
                charges: Bounded::new(MAX_OBJECTS, MAX_OBJECT_BYTES),
                idempotent: Bounded::new(MAX_IDEMPOTENT, MAX_IDEMPOTENT_BYTES),
            }),
            hasher: RandomState::new(),
        }
    }

    /// Serve an authenticated API request.
    pub(super) fn handle(
        &self,
        parts: &Parts,
        api_key: &str,
        body: &Bytes,
        request_id: &str,
    ) -> Reply {
        let path = parts.uri.path();
        let params = if parts.method == Method::POST {
            form::decode(body)
        } else {
            form::decode(parts.uri.query().unwrap_or_default().as_bytes())
        };
        let idempotency_key = (parts.method == Method::POST)
            .then(|| parts.headers.get(IDEMPOTENCY_KEY))
            .flatten();
        let mut inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        let Some(header) = idempotency_key else {
            return route(&mut inner, &parts.method, path, &params);
        };

        let key = match header.to_str() {
            Ok(key) if !key.is_empty() && key.chars().count() <= MAX_IDEMPOTENCY_KEY_CHARS => key,
            _ => {
                return invalid(
                    "Invalid idempotency key: it must be 1 to 255 printable ASCII characters.",
                    None,
                )
            }
        };
        let scope = self.hash(&[api_key.as_bytes()]);
        let fingerprint = self.hash(&[parts.method.as_str().as_bytes(), path.as_bytes(), body]);
        let slot = (scope, key.to_string());
        if let Some(saved) = inner.idempotent.get(&slot) {
            if saved.fingerprint != fingerprint {
                let message = format!(
                    "Keys for idempotent requests can only be used with the same parameters they were first used with. Try using a key other than '{key}' if you meant to execute a different request."
                );
                return error_reply(
                    StatusCode::BAD_REQUEST,
                    error_object("idempotency_error", &message),
                )
                .with_header(IDEMPOTENCY_KEY, header.clone());
            }
            let mut reply = Reply::json_bytes(saved.status, saved.body.clone())
                .with_header(IDEMPOTENCY_KEY, header.clone())
                .with_header(IDEMPOTENT_REPLAYED, HeaderValue::from_static("true"));
            if let Ok(original) = HeaderValue::from_str(&saved.request_id) {
                reply.set_header(ORIGINAL_REQUEST, original);
            }
            return reply;
        }

        let reply = route(&mut inner, &parts.method, path, &params);
        // Like Stripe, keep results of requests that ran (success or card decline), not those
        // rejected before running (validation, unknown URL), so a fixed request can reuse the key.
        if reply.status.is_success() || reply.status == StatusCode::PAYMENT_REQUIRED {
            let weight = reply.body.len() + key.len() + request_id.len() + 64;
            let saved = Saved {
                fingerprint,
                status: reply.status,
                body: reply.body.clone(),
                request_id: request_id.to_string(),
            };
            inner.idempotent.insert(slot, saved, weight);
        }
        reply.with_header(IDEMPOTENCY_KEY, header.clone())
    }

    fn hash(&self, parts: &[&[u8]]) -> u64 {
        let mut hasher = self.hasher.build_hasher();
        for part in parts {
            part.hash(&mut hasher);
        }
        hasher.finish()
    }
}

fn route(inner: &mut Inner, method: &Method, path: &str, params: &Params) -> Reply {
    let segments: Vec<&str> = match path.strip_prefix("/v1/") {
        Some(rest) => rest.split('/').collect(),
        None => Vec::new(),
    };
    let result = match (method.as_str(), segments.as_slice()) {
        ("POST", ["customers"]) => create_customer(inner, params),
        ("GET", ["customers"]) => list(
            &inner.customers,
            "/v1/customers",
            "customer",
            ("email", "email"),
            params,
        ),
        ("GET", ["customers", id]) if !id.is_empty() => retrieve(&inner.customers, "customer", id),
        ("POST", ["customers", id]) if !id.is_empty() => update_customer(inner, id, params),
        ("DELETE", ["customers", id]) if !id.is_empty() => delete_customer(inner, id),
        ("POST", ["charges"]) => create_charge(inner, params),
        ("GET", ["charges"]) => list(
            &inner.charges,
            "/v1/charges",
            "charge",
            ("customer", "customer"),
            params,
        ),
        ("GET", ["charges", id]) if !id.is_empty() => retrieve(&inner.charges, "charge", id),
        _ => Err(error_reply(
            StatusCode::NOT_FOUND,
            error_object(
                "invalid_request_error",
                &format!("Unrecognized request URL ({method}: {path})."),
            ),
        )),
    };
    match result {
        Ok(reply) | Err(reply) => reply,
    }
}

// ---- customers ----

#[derive(Default)]
struct CustomerParams {
    fields: Vec<(&'static str, String)>,
    metadata: Metadata,
}

fn customer_params(params: &Params) -> Result<CustomerParams, Reply> {
    let mut out = CustomerParams::default();
    for (name, value) in params {
        check_length(name, value)?;
        let field = match name.as_str() {
            "email" => {
                if !value.is_empty() && !looks_like_email(value) {
                    return Err(invalid(
                        &format!("Invalid email address: {value}"),
                        Some("email"),
                    ));
                }
                "email"
            }
            "name" => "name",
            "description" => "description",
            "phone" => "phone",
            _ => {
                out.metadata.collect(name, value)?;
                continue;
            }
        };
        out.fields.push((field, value.clone()));
    }
    Ok(out)
}

/// Set each field; an empty value unsets it, as in Stripe.
fn apply_fields(object: &mut Map<String, Value>, fields: Vec<(&'static str, String)>) {
    for (field, value) in fields {
        let value = if value.is_empty() {
            Value::Null
        } else {
            Value::String(value)
        };
        object.insert(field.to_string(), value);
    }
}

fn create_customer(inner: &mut Inner, params: &Params) -> Result<Reply, Reply> {
    let input = customer_params(params)?;
    let id = random_id("cus_", 14);
    let mut customer = json!({
        "id": id,
        "object": "customer",
        "address": null,
        "balance": 0,
        "created": unix_now(),
        "currency": null,
        "default_source": null,
        "delinquent": false,
        "description": null,
        "discount": null,
        "email": null,
        "invoice_prefix": random_id("", 8).to_ascii_uppercase(),
        "livemode": false,
        "metadata": {},
        "name": null,
        "phone": null,
        "preferred_locales": [],
        "shipping": null,
        "tax_exempt": "none",
        "test_clock": null,
    });
    if let Value::Object(object) = &mut customer {
        apply_fields(object, input.fields);
        input.metadata.apply(object)?;
    }
    Ok(store(&mut inner.customers, id, customer))
}

fn update_customer(inner: &mut Inner, id: &str, params: &Params) -> Result<Reply, Reply> {
    let mut customer = inner
        .customers
        .get(id)
        .cloned()
        .ok_or_else(|| no_such(StatusCode::NOT_FOUND, "customer", id, "id"))?;
    let input = customer_params(params)?;
    if let Value::Object(object) = &mut customer {
        apply_fields(object, input.fields);
        input.metadata.apply(object)?;
    }
    Ok(store(&mut inner.customers, id.to_string(), customer))
}

fn delete_customer(inner: &mut Inner, id: &str) -> Result<Reply, Reply> {
    inner
        .customers
        .remove(id)
        .ok_or_else(|| no_such(StatusCode::NOT_FOUND, "customer", id, "id"))?;
    Ok(Reply::pretty_json(
        StatusCode::OK,
        &json!({"id": id, "object": "customer", "deleted": true}),
    ))
}

// ---- charges ----

fn create_charge(inner: &mut Inner, params: &Params) -> Result<Reply, Reply> {
    let mut amount = None;
    let mut currency = None;
    let mut customer = None;
    let mut source = None;
    let mut capture = true;
    let mut fields = Vec::new();
    let mut metadata = Metadata::default();
    for (name, value) in params {
        check_length(name, value)?;
        match name.as_str() {
            "amount" => amount = Some(parse_amount(value)?),
            "currency" => {
                if value.len() != 3 || !value.bytes().all(|b| b.is_ascii_alphabetic()) {
                    return Err(invalid(
                        &format!("Invalid currency: {value}."),
                        Some("currency"),
                    ));
                }
                currency = Some(value.to_ascii_lowercase());
            }
            "customer" => customer = Some(value.as_str()),
            "source" => source = Some(value.as_str()),
            "capture" => {
                capture = match value.as_str() {
                    "true" => true,
                    "false" => false,
                    _ => {
                        return Err(invalid(
                            &format!("Invalid boolean: {value}"),
                            Some("capture"),
                        ))
                    }
                }
            }
            "description" | "statement_descriptor" => {
                let field = if name == "description" {
                    "description"
                } else {
                    "statement_descriptor"
                };
                fields.push((field, value.clone()));
            }
            "receipt_email" => {
                if !looks_like_email(value) {
                    return Err(invalid(
                        &format!("Invalid email address: {value}"),
                        Some("receipt_email"),
                    ));
                }
                fields.push(("receipt_email", value.clone()));
            }
            _ => metadata.collect(name, value)?,
        }
    }
    let amount = amount.ok_or_else(|| missing_param("amount"))?;
    let currency = currency.ok_or_else(|| missing_param("currency"))?;
    if customer.is_none() && source.is_none() {
        return Err(invalid("Must provide source or customer.", None));
    }
    if let Some(id) = customer {
        if inner.customers.get(id).is_none() {
            return Err(no_such(StatusCode::BAD_REQUEST, "customer", id, "customer"));
        }
    }
    let decline = match source {
        Some(token) if !token.starts_with("tok_") || token.len() <= 4 => {
            return Err(no_such(StatusCode::BAD_REQUEST, "token", token, "source"));
        }
        Some("tok_chargeDeclined") => Some(("generic_decline", "Your card was declined.")),
        Some("tok_chargeDeclinedInsufficientFunds") => {
            Some(("insufficient_funds", "Your card has insufficient funds."))
        }
        _ => None,
    };

    let id = random_id("ch_", 24);
    let paid = decline.is_none();
    let captured = paid && capture;
    let mut charge = json!({
        "id": id,
        "object": "charge",
        "amount": amount,
        "amount_captured": if captured { amount } else { 0 },
        "amount_refunded": 0,
        "balance_transaction": if captured { Value::String(random_id("txn_", 24)) } else { Value::Null },
        "captured": captured,
        "created": unix_now(),
        "currency": currency,
        "customer": customer,
        "description": null,
        "failure_code": decline.map(|_| "card_declined"),
        "failure_message": decline.map(|(_, message)| message),
        "livemode": false,
        "metadata": {},
        "outcome": {
            "network_status": if paid { "approved_by_network" } else { "declined_by_network" },
            "reason": decline.map(|(code, _)| code),
            "risk_level": "normal",
            "seller_message": if paid { "Payment complete." } else { "The bank did not return any further details with this decline." },
            "type": if paid { "authorized" } else { "issuer_declined" },
        },
        "paid": paid,
        "receipt_email": null,
        "refunded": false,
        "statement_descriptor": null,
        "status": if paid { "succeeded" } else { "failed" },
    });
    if let Value::Object(object) = &mut charge {
        apply_fields(object, fields);
        metadata.apply(object)?;
    }
    let reply = store(&mut inner.charges, id.clone(), charge);
    match decline {
        None => Ok(reply),
        Some((decline_code, message)) => {
            let mut object = error_object("card_error", message).code("card_declined");
            object.insert("decline_code".into(), decline_code.into());
            object.insert("charge".into(), id.into());
            Err(error_reply(StatusCode::PAYMENT_REQUIRED, object))
        }
    }
}

fn parse_amount(value: &str) -> Result<i64, Reply> {
    let amount = value
        .parse::<i64>()
        .map_err(|_| invalid(&format!("Invalid integer: {value}"), Some("amount")))?;
    if amount < 1 {
        return Err(invalid(
            "This value must be greater than or equal to 1.",
            Some("amount"),
        ));
    }
    if amount > MAX_AMOUNT {
        return Err(invalid(
            &format!("Amount must be no more than {MAX_AMOUNT}."),
            Some("amount"),
        ));
    }
    Ok(amount)
}

// ---- shared object handling ----

/// Store an object and answer it.
fn store(objects: &mut Bounded<String, Value>, id: String, object: Value) -> Reply {
    let reply = Reply::pretty_json(StatusCode::OK, &object);
    let weight = reply.body.len() + id.len();
    objects.insert(id, object, weight);
    reply
}

fn retrieve(objects: &Bounded<String, Value>, kind: &str, id: &str) -> Result<Reply, Reply> {
    let object = objects
        .get(id)
        .ok_or_else(|| no_such(StatusCode::NOT_FOUND, kind, id, "id"))?;
    Ok(Reply::pretty_json(StatusCode::OK, object))
}

/// A list object, newest first, honouring `limit`, `starting_after` and one equality filter
/// `(parameter, field)`.
fn list(
    objects: &Bounded<String, Value>,
    url: &str,
    kind: &str,
    (filter_param, filter_field): (&str, &str),
    params: &Params,
) -> Result<Reply, Reply> {
    let mut limit = DEFAULT_LIST_LIMIT;
    let mut starting_after = None;
    let mut filter = None;
    for (name, value) in params {
        match name.as_str() {
            "limit" => limit = parse_limit(value)?,
            "starting_after" => starting_after = Some(value.as_str()),
            n if n == filter_param => filter = Some(value.as_str()),
            n if is_expand(n) => {}
            _ => return Err(unknown_param(name)),
        }
    }
    let newest = objects.newest_first(starting_after).ok_or_else(|| {
        no_such(
            StatusCode::BAD_REQUEST,
            kind,
            starting_after.unwrap_or_default(),
            "starting_after",
        )
    })?;
    let mut matching = newest
        .map(|(_, object)| object)
        .filter(|object| match filter {
            None => true,
            Some(want) => object.get(filter_field).and_then(Value::as_str) == Some(want),
        });
    let data: Vec<Value> = matching.by_ref().take(limit).cloned().collect();
    let has_more = matching.next().is_some();
    Ok(Reply::pretty_json(
        StatusCode::OK,
        &json!({"object": "list", "data": data, "has_more": has_more, "url": url}),
    ))
}

fn parse_limit(value: &str) -> Result<usize, Reply> {
    let limit = value
        .parse::<i64>()
        .map_err(|_| invalid(&format!("Invalid integer: {value}"), Some("limit")))?;
    if limit < 1 {
        return Err(invalid(
            "This value must be greater than or equal to 1.",
            Some("limit"),
        ));
    }
    usize::try_from(limit)
        .ok()
        .filter(|l| *l <= MAX_LIST_LIMIT)
        .ok_or_else(|| {
            invalid(
                "This value must be less than or equal to 100.",
                Some("limit"),
            )
        })
}

/// `metadata[key]=value` parameters (and `metadata=` to clear all), applied after validation.
#[derive(Default)]
struct Metadata {
    clear: bool,
    entries: Vec<(String, String)>,
}

impl Metadata {
    /// Take `name` if it is a metadata or expand parameter, else reject it as unknown.
    fn collect(&mut self, name: &str, value: &str) -> Result<(), Reply> {
        if name == "metadata" && value.is_empty() {
            self.clear = true;
            return Ok(());
        }
        if is_expand(name) {
            return Ok(());
        }
        let Some(key) = form::bracketed(name, "metadata") else {
            return Err(unknown_param(name));
        };
        if key.is_empty()
            || key.chars().count() > MAX_METADATA_KEY_CHARS
            || key.contains(['[', ']'])
        {
            return Err(invalid(
                "Metadata keys must be 1 to 40 characters long and cannot contain '[' or ']'.",
                Some("metadata"),
            ));
        }
        let chars = value.chars().count();
        if chars > MAX_METADATA_VALUE_CHARS {
            return Err(invalid(
                &format!("Metadata values can have up to 500 characters, but you passed in a value that is {chars} characters."),
                Some(name),
            ));
        }
        self.entries.push((key.to_string(), value.to_string()));
        Ok(())
    }

    /// Merge into `object["metadata"]`; an empty value deletes the key.
    fn apply(self, object: &mut Map<String, Value>) -> Result<(), Reply> {
        let mut metadata = match object.remove("metadata") {
            Some(Value::Object(map)) if !self.clear => map,
            _ => Map::new(),
        };
        for (key, value) in self.entries {
            if value.is_empty() {
                metadata.remove(&key);
            } else {
                metadata.insert(key, Value::String(value));
            }
        }
        if metadata.len() > MAX_METADATA_KEYS {
            return Err(invalid(
                "You can specify up to 50 keys in metadata.",
                Some("metadata"),
            ));
        }
        object.insert("metadata".to_string(), Value::Object(metadata));
        Ok(())
    }
}

fn is_expand(name: &str) -> bool {
    name == "expand[]" || form::bracketed(name, "expand").is_some()
}

fn check_length(name: &str, value: &str) -> Result<(), Reply> {
    if value.chars().count() > MAX_STRING_CHARS {
        return Err(invalid(
            "Invalid string: must be at most 5000 characters.",
            Some(name),
        ));
    }
    Ok(())
}

// ---- errors ----

/// The object inside `{"error": …}`.
fn error_object(kind: &str, message: &str) -> Map<String, Value> {
    let mut object = Map::new();
    object.insert("type".into(), kind.into());
    object.insert("message".into(), message.into());
    object
}

trait ErrorObjectExt {
    fn code(self, code: &str) -> Self;
    fn param(self, param: Option<&str>) -> Self;
}

impl ErrorObjectExt for Map<String, Value> {
    fn code(mut self, code: &str) -> Self {
        self.insert("code".into(), code.into());
        self
    }

    fn param(mut self, param: Option<&str>) -> Self {
        if let Some(param) = param {
            self.insert("param".into(), param.into());
        }
        self
    }
}

fn error_reply(status: StatusCode, object: Map<String, Value>) -> Reply {
    Reply::pretty_json(status, &json!({ "error": object }))
}

/// 400 `invalid_request_error`, naming the parameter when there is one.
fn invalid(message: &str, param: Option<&str>) -> Reply {
    error_reply(
        StatusCode::BAD_REQUEST,
        error_object("invalid_request_error", message).param(param),
    )
}

fn missing_param(name: &str) -> Reply {
    error_reply(
        StatusCode::BAD_REQUEST,
        error_object(
            "invalid_request_error",
            &format!("Missing required param: {name}."),
        )
        .code("parameter_missing")
        .param(Some(name)),
    )
}

fn unknown_param(name: &str) -> Reply {
    error_reply(
        StatusCode::BAD_REQUEST,
        error_object(
            "invalid_request_error",
            &format!("Received unknown parameter: {name}"),
        )
        .code("parameter_unknown")
        .param(Some(name)),
    )
}

/// `No such customer: 'cus_…'` (404 for the URL's object, 400 for a parameter).
fn no_such(status: StatusCode, kind: &str, id: &str, param: &str) -> Reply {
    error_reply(
        status,
        error_object("invalid_request_error", &format!("No such {kind}: '{id}'"))
            .code("resource_missing")
            .param(Some(param)),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(method: Method, uri: &str, headers: &[(&str, &str)]) -> Parts {
        let mut builder = http::Request::builder().method(method).uri(uri);
        for (name, value) in headers {
            builder = builder.header(*name, *value);
        }
        builder.body(()).expect("valid test request").into_parts().0
    }

    fn body_json(reply: &Reply) -> Value {
        serde_json::from_slice(&reply.body).expect("json body")
    }

    #[test]
    fn basic_auth_uses_the_username() {
        let encoded = base64::engine::general_purpose::STANDARD.encode("sk_test_abc:");
        let mut headers = HeaderMap::new();
        headers.insert(
            AUTHORIZATION,
            HeaderValue::from_str(&format!("Basic {encoded}")).expect("header"),
        );
        assert_eq!(
            authenticate(None, &headers).ok().as_deref(),
            Some("sk_test_abc")
        );
        headers.insert(AUTHORIZATION, HeaderValue::from_static("Basic !!!"));
        assert!(authenticate(None, &headers).is_err());
    }

    #[test]
    fn metadata_rules() {
        let state = State::new();
        let parts = request(Method::POST, "/v1/customers", &[]);
        let body = Bytes::from("metadata[a]=1&metadata[b]=2&name=Jenny");
        let reply = state.handle(&parts, "sk_test_1", &body, "req_1");
        let customer = body_json(&reply);
        assert_eq!(customer["metadata"], json!({"a": "1", "b": "2"}));
        let id = customer["id"].as_str().expect("id").to_string();

        let update = request(Method::POST, &format!("/v1/customers/{id}"), &[]);
        let body = Bytes::from("metadata[a]=&metadata[c]=3");
        let updated = body_json(&state.handle(&update, "sk_test_1", &body, "req_2"));
        assert_eq!(updated["metadata"], json!({"b": "2", "c": "3"}));
        assert_eq!(updated["name"], "Jenny");

        let bad = Bytes::from("metadata[a[b]]=1");
        let reply = state.handle(&update, "sk_test_1", &bad, "req_3");
        assert_eq!(reply.status, StatusCode::BAD_REQUEST);
        let too_many: Vec<String> = (0..51).map(|i| format!("metadata[k{i}]=v")).collect();
        let reply = state.handle(&update, "sk_test_1", &Bytes::from(too_many.join("&")), "r");
        assert_eq!(reply.status, StatusCode::BAD_REQUEST);
        let unknown = state.handle(&update, "sk_test_1", &Bytes::from("colour=red"), "r");
        assert_eq!(body_json(&unknown)["error"]["param"], "colour");
    }

    #[test]
    fn idempotency_is_scoped_by_key_and_checks_parameters() {
        let state = State::new();
        let parts = request(Method::POST, "/v1/customers", &[("idempotency-key", "k1")]);
        let body = Bytes::from("name=A");
        let first = state.handle(&parts, "sk_test_1", &body, "req_1");
        let again = state.handle(&parts, "sk_test_1", &body, "req_2");
        assert_eq!(first.body, again.body);
        assert_eq!(
            again.header(&ORIGINAL_REQUEST).map(|v| v.as_bytes()),
            Some(&b"req_1"[..])
        );
        let other_account = state.handle(&parts, "sk_test_2", &body, "req_3");
        assert_ne!(first.body, other_account.body);
        let changed = state.handle(&parts, "sk_test_1", &Bytes::from("name=B"), "req_4");
        assert_eq!(changed.status, StatusCode::BAD_REQUEST);
        assert_eq!(body_json(&changed)["error"]["type"], "idempotency_error");
    }

    #[test]
    fn declined_card_is_stored_and_402() {
        let state = State::new();
        let parts = request(Method::POST, "/v1/charges", &[]);
        let body = Bytes::from("amount=500&currency=USD&source=tok_chargeDeclined");
        let reply = state.handle(&parts, "sk_test_1", &body, "req_1");
        assert_eq!(reply.status, StatusCode::PAYMENT_REQUIRED);
        let error = &body_json(&reply)["error"];
        assert_eq!(error["decline_code"], "generic_decline");
        let charge_id = error["charge"].as_str().expect("charge id");
        let get = request(Method::GET, &format!("/v1/charges/{charge_id}"), &[]);
        let charge = body_json(&state.handle(&get, "sk_test_1", &Bytes::new(), "req_2"));
        assert_eq!(charge["status"], "failed");
        assert_eq!(charge["currency"], "usd");
    }

    #[test]
    fn list_pages_with_starting_after() {
        let state = State::new();
        let create = request(Method::POST, "/v1/customers", &[]);
        let ids: Vec<String> = (0..3)
            .map(|_| {
                let reply = state.handle(&create, "sk_test_1", &Bytes::new(), "r");
                body_json(&reply)["id"].as_str().expect("id").to_string()
            })
            .collect();
        let first = request(Method::GET, "/v1/customers?limit=2", &[]);
        let page = body_json(&state.handle(&first, "sk_test_1", &Bytes::new(), "r"));
        assert_eq!(page["has_more"], true);
        assert_eq!(page["data"][0]["id"], ids[2].as_str());
        let next = request(
            Method::GET,
            &format!("/v1/customers?limit=2&starting_after={}", ids[1]),
            &[],
        );
        let page = body_json(&state.handle(&next, "sk_test_1", &Bytes::new(), "r"));
        assert_eq!(page["has_more"], false);
        assert_eq!(page["data"].as_array().map(Vec::len), Some(1));
        for bad in [
            "limit=0",
            "limit=101",
            "limit=x",
            "starting_after=cus_nope",
            "foo=1",
        ] {
            let parts = request(Method::GET, &format!("/v1/customers?{bad}"), &[]);
            let reply = state.handle(&parts, "sk_test_1", &Bytes::new(), "r");
            assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{bad}");
        }
    }
}
