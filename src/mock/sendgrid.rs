//! The SendGrid profile: `POST /v3/mail/send`, `GET /v3/user/profile`, SendGrid's error shape.
//!
//! Mail is validated the way the v3 API validates it (every problem reported at once, with the
//! JSON path of the offending field) and then dropped: nothing is stored, so the profile needs
//! no memory beyond the request being served.

use bytes::Bytes;
use http::request::Parts;
use hyper::header::{HeaderMap, HeaderName, HeaderValue};
use hyper::{Method, StatusCode};
use serde_json::{json, Value};

use super::{bearer_token, key_accepted, looks_like_email, random_id, Reply};

/// SendGrid's limits on one send.
const MAX_PERSONALIZATIONS: usize = 1_000;
const MAX_RECIPIENTS: usize = 1_000;

const MESSAGE_ID: HeaderName = HeaderName::from_static("x-message-id");

/// Check `Authorization: Bearer SG.…` (or the configured key). Returns the key.
pub(super) fn authenticate(expected: Option<&str>, headers: &HeaderMap) -> Result<String, Reply> {
    let Some(token) = bearer_token(headers) else {
        return Err(error(StatusCode::UNAUTHORIZED, "authorization required"));
    };
    if !key_accepted(expected, token, "SG.") {
        return Err(error(
            StatusCode::UNAUTHORIZED,
            "The provided authorization grant is invalid, expired, or revoked",
        ));
    }
    Ok(token.to_string())
}

/// `{"errors":[{"field":null,"message":…,"help":null}]}` with `status`.
pub(super) fn error(status: StatusCode, message: &str) -> Reply {
    Reply::json(
        status,
        &json!({"errors": [{"field": null, "message": message, "help": null}]}),
    )
}

/// Serve an authenticated API request.
pub(super) fn handle(parts: &Parts, body: &Bytes) -> Reply {
    match parts.uri.path() {
        "/v3/mail/send" if parts.method == Method::POST => send(body),
        "/v3/user/profile" if parts.method == Method::GET => Reply::json(
            StatusCode::OK,
            &json!({
                "address": "",
                "address2": "",
                "city": "",
                "company": "Outpost Mock",
                "country": "",
                "first_name": "Mock",
                "last_name": "User",
                "phone": "",
                "state": "",
                "website": "",
                "zip": "",
            }),
        ),
        "/v3/mail/send" | "/v3/user/profile" => {
            error(StatusCode::METHOD_NOT_ALLOWED, "method not allowed")
        }
        _ => Reply::json(
            StatusCode::NOT_FOUND,
            &json!({"errors": [{"field": null, "message": "not found"}]}),
        ),
    }
}

fn send(body: &Bytes) -> Reply {
    let Ok(mail) = serde_json::from_slice::<Value>(body) else {
        return error(
            StatusCode::BAD_REQUEST,
            "The request body is not valid JSON.",
        );
    };
    let problems = validate(&mail);
    if !problems.is_empty() {
        let errors: Vec<Value> = problems
            .into_iter()
            .map(|(field, message)| json!({"message": message, "field": field, "help": null}))
            .collect();
        return Reply::json(StatusCode::BAD_REQUEST, &json!({ "errors": errors }));
    }
    let mut reply = Reply::empty(StatusCode::ACCEPTED);
    if let Ok(id) = HeaderValue::from_str(&random_id("", 22)) {
        reply.set_header(MESSAGE_ID, id);
    }
    reply
}

/// Every problem with a v3 mail body, as `(field path, message)`.
fn validate(mail: &Value) -> Vec<(String, String)> {
    let mut problems = Vec::new();
    let mut problem = |field: String, message: &str| problems.push((field, message.to_string()));
    if !mail.is_object() {
        problem(String::new(), "The request body must be a JSON object.");
        return problems;
    }
    let has_template = non_empty_str(&mail["template_id"]);

    let personalizations = mail["personalizations"]
        .as_array()
        .filter(|p| !p.is_empty());
    let mut every_personalization_has_subject = false;
    match personalizations {
        None => problem(
            "personalizations".into(),
            "The personalizations field is required and must have at least one personalization.",
        ),
        Some(list) if list.len() > MAX_PERSONALIZATIONS => problem(
            "personalizations".into(),
            "You may not have more than 1000 personalizations per API request.",
        ),
        Some(list) => {
            every_personalization_has_subject = true;
            let mut recipients = 0;
            for (i, personalization) in list.iter().enumerate() {
                every_personalization_has_subject &= non_empty_str(&personalization["subject"]);
                let has_to = personalization["to"]
                    .as_array()
                    .is_some_and(|to| !to.is_empty());
                if !has_to {
                    problem(
                        format!("personalizations.{i}.to"),
                        "The to array is required for all personalization objects, and must have at least one email object with a valid email address.",
                    );
                }
                for kind in ["to", "cc", "bcc"] {
                    let Some(addresses) = personalization[kind].as_array() else {
                        continue;
                    };
                    recipients += addresses.len();
                    for (j, address) in addresses.iter().enumerate() {
                        if !address["email"].as_str().is_some_and(looks_like_email) {
                            problem(
                                format!("personalizations.{i}.{kind}.{j}.email"),
                                "Does not contain a valid address.",
                            );
                        }
                    }
                }
            }
            if recipients > MAX_RECIPIENTS {
                problem(
                    "personalizations".into(),
                    "The total number of recipients must be no more than 1000.",
                );
            }
        }
    }

    match mail["from"]["email"].as_str() {
        None => problem(
            "from.email".into(),
            "The from object must be provided for every email send. It is an object that requires the email parameter, but may also contain a name parameter.",
        ),
        Some(email) if !looks_like_email(email) => problem(
            "from.email".into(),
            "The from email does not contain a valid address.",
        ),
        Some(_) => {}
    }

    if !has_template && !every_personalization_has_subject && !non_empty_str(&mail["subject"]) {
        problem(
            "subject".into(),
            "The subject is required. You can get around this requirement if you use a template with a subject defined or if every personalization has a subject defined.",
        );
    }

    match mail["content"].as_array() {
        Some(blocks) if !blocks.is_empty() => {
            for (k, block) in blocks.iter().enumerate() {
                if !non_empty_str(&block["type"]) {
                    problem(
                        format!("content.{k}.type"),
                        "The content type must be a string at least one character in length.",
                    );
                }
                if !non_empty_str(&block["value"]) {
                    problem(
                        format!("content.{k}.value"),
                        "The content value must be a string at least one character in length.",
                    );
                }
            }
        }
        _ if has_template => {}
        _ => problem(
            "content".into(),
            "Unless a valid template_id is provided, the content parameter is required. There must be at least one defined content block. We typically suggest both text/plain and text/html blocks are included, but only one block is required.",
        ),
    }
    problems
}

fn non_empty_str(value: &Value) -> bool {
    value.as_str().is_some_and(|s| !s.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(mail: Value) -> Vec<String> {
        validate(&mail)
            .into_iter()
            .map(|(field, _)| field)
            .collect()
    }

    #[test]
    fn valid_mail_and_template_mail() {
        let mail = json!({
            "personalizations": [{"to": [{"email": "a@example.com"}]}],
            "from": {"email": "b@example.com"},
            "subject": "Hi",
            "content": [{"type": "text/plain", "value": "Hello"}],
        });
        assert!(fields(mail).is_empty());
        let template = json!({
            "personalizations": [{"to": [{"email": "a@example.com"}]}],
            "from": {"email": "b@example.com"},
            "template_id": "d-123",
        });
        assert!(fields(template).is_empty());
    }

    #[test]
    fn every_problem_is_reported_with_its_path() {
        let mail = json!({
            "personalizations": [{"to": []}, {"to": [{"email": "nope"}], "cc": [{}]}],
            "from": {"name": "x"},
            "content": [{"type": "text/plain", "value": ""}],
        });
        assert_eq!(
            fields(mail),
            [
                "personalizations.0.to",
                "personalizations.1.to.0.email",
                "personalizations.1.cc.0.email",
                "from.email",
                "subject",
                "content.0.value",
            ]
        );
        assert_eq!(fields(json!([1, 2])), [""]);
        assert_eq!(
            fields(json!({})),
            ["personalizations", "from.email", "subject", "content"]
        );
    }

    #[test]
    fn subject_may_come_from_every_personalization() {
        let mail = json!({
            "personalizations": [{"to": [{"email": "a@example.com"}], "subject": "Hi"}],
            "from": {"email": "b@example.com"},
            "content": [{"type": "text/plain", "value": "Hello"}],
        });
        assert!(fields(mail).is_empty());
    }
}
