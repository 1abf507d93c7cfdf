//! `/v1/message_templates`: list (with the seed's filters and Graph paging), create and delete
//! a WABA's message templates (seed `004`). Enum values, required fields, component and button
//! types and the name's alphabet are checked here, so a wrong request costs no Graph call.

use std::collections::HashMap;

use axum::extract::rejection::JsonRejection;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::Json;
use reqwest::Method;
use serde::Deserialize;
use serde_json::Value;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::{GraphResponse, Payload};
use crate::app::AppState;
use crate::http::error::{ApiError, ErrorEnvelope};
use crate::http::query::Params;

const EDGE: &str = "message_templates";

/// `category` values accepted by the list filter (seed 004).
pub const LIST_CATEGORIES: &[&str] = &[
    "ACCOUNT_UPDATE",
    "PAYMENT_UPDATE",
    "PERSONAL_FINANCE_UPDATE",
    "SHIPPING_UPDATE",
    "RESERVATION_UPDATE",
    "ISSUE_RESOLUTION",
    "APPOINTMENT_UPDATE",
    "TRANSPORTATION_UPDATE",
    "TICKET_UPDATE",
    "ALERT_UPDATE",
    "AUTO_REPLY",
    "TRANSACTIONAL",
    "OTP",
    "UTILITY",
    "MARKETING",
    "AUTHENTICATION",
];
pub const QUALITY_SCORES: &[&str] = &["GREEN", "YELLOW", "RED", "UNKNOWN"];
pub const STATUSES: &[&str] = &[
    "APPROVED",
    "IN_APPEAL",
    "PENDING",
    "REJECTED",
    "PENDING_DELETION",
    "DELETED",
    "DISABLED",
    "PAUSED",
    "LIMIT_EXCEEDED",
];
/// `category` values a new template may have.
pub const CREATE_CATEGORIES: &[&str] = &["UTILITY", "MARKETING", "AUTHENTICATION"];
pub const COMPONENT_TYPES: &[&str] = &[
    "GREETING",
    "HEADER",
    "BODY",
    "FOOTER",
    "BUTTONS",
    "CAROUSEL",
    "LIMITED_TIME_OFFER",
];
pub const FORMATS: &[&str] = &["TEXT", "IMAGE", "DOCUMENT", "VIDEO", "LOCATION"];
pub const BUTTON_TYPES: &[&str] = &[
    "QUICK_REPLY",
    "URL",
    "PHONE_NUMBER",
    "OTP",
    "MPM",
    "CATALOG",
    "FLOW",
    "VOICE_CALL",
];
pub const SUB_CATEGORIES: &[&str] = &["ORDER_DETAILS", "ORDER_STATUS"];

/// Query parameters `GET` forwards; anything else is refused, so no typo is silently ignored.
const LIST_PARAMS: &[&str] = &[
    "category",
    "content",
    "language",
    "name",
    "name_or_content",
    "quality_score",
    "status",
    "limit",
    "after",
    "before",
    "fields",
    "summary",
];

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(list_templates, create_template, delete_template))
}

fn one_of(field: &str, value: &str, allowed: &[&str]) -> Result<(), ApiError> {
    if allowed.contains(&value.to_ascii_uppercase().as_str()) {
        Ok(())
    } else {
        Err(ApiError::bad_request(format!(
            "{field}: {value:?} is not one of {}",
            allowed.join(", ")
        )))
    }
}

/// Checks a comma-separated list of enum values (Graph's array filters).
fn each_of(field: &str, value: &str, allowed: &[&str]) -> Result<(), ApiError> {
    value
        .split(',')
        .map(str::trim)
        .try_for_each(|v| one_of(field, v, allowed))
}

/// Filters and paging for listing templates; array filters take comma-separated values.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)] // documents the parameters; the handler reads them from a map
pub struct ListParams {
    /// One or more of the seed's categories, comma-separated (e.g. `UTILITY,MARKETING`).
    category: Option<String>,
    content: Option<String>,
    /// Language codes, comma-separated.
    language: Option<String>,
    name: Option<String>,
    name_or_content: Option<String>,
    /// GREEN, YELLOW, RED or UNKNOWN, comma-separated.
    quality_score: Option<String>,
    /// APPROVED, IN_APPEAL, PENDING, REJECTED, PENDING_DELETION, DELETED, DISABLED, PAUSED or LIMIT_EXCEEDED, comma-separated.
    status: Option<String>,
    limit: Option<String>,
    after: Option<String>,
    before: Option<String>,
    fields: Option<String>,
    /// e.g. `total_count,message_template_count`.
    summary: Option<String>,
}

pub fn validate_list(params: &HashMap<String, String>) -> Result<Vec<(String, String)>, ApiError> {
    let mut query = Vec::new();
    let mut keys: Vec<&String> = params.keys().collect();
    keys.sort();
    for key in keys {
        let value = &params[key];
        if !LIST_PARAMS.contains(&key.as_str()) {
            return Err(ApiError::bad_request(format!(
                "{key}: not a message_templates parameter (expected one of {})",
                LIST_PARAMS.join(", ")
            )));
        }
        match key.as_str() {
            "category" => each_of(key, value, LIST_CATEGORIES)?,
            "quality_score" => each_of(key, value, QUALITY_SCORES)?,
            "status" => each_of(key, value, STATUSES)?,
            "limit" => match value.parse::<u32>() {
                Ok(n) if n > 0 => {}
                _ => {
                    return Err(ApiError::bad_request(
                        "limit: expected a whole number above 0",
                    ))
                }
            },
            _ => {}
        }
        query.push((key.clone(), value.clone()));
    }
    Ok(query)
}

/// Lists templates; Graph's `data`, `paging` and `summary` are passed through.
#[utoipa::path(
    get,
    path = "/v1/message_templates",
    tag = "message templates",
    security(("bearer" = [])),
    params(ListParams),
    responses(
        (status = 200, description = "`{\"data\": [...], \"paging\": {...}, \"summary\": {...}}` from Graph", body = Object),
        (status = 400, description = "A value outside the seed's enums (no Graph call), or Graph's error", body = ErrorEnvelope),
        (status = 401, body = ErrorEnvelope),
        (status = 502, body = ErrorEnvelope),
        (status = 504, body = ErrorEnvelope),
    )
)]
async fn list_templates(
    State(state): State<AppState>,
    headers: HeaderMap,
    raw: Params,
) -> Result<GraphResponse, ApiError> {
    let params: HashMap<String, String> = raw.to()?;
    let query = validate_list(&params)?;
    let answer = state
        .graph()
        .call(Method::GET, EDGE, Payload::Query(query))
        .await?;
    Ok(answer.with_own_paging(state.links(), &headers, "/v1/message_templates", &raw))
}

/// A new template (seed 004's POST body). Unknown fields are forwarded as they are.
#[derive(Debug, Deserialize, ToSchema)]
#[allow(dead_code)] // the OpenAPI shape; the handler validates the JSON itself
pub struct TemplateBody {
    /// Lowercase letters, digits and underscores.
    #[schema(example = "seasonal_promotion")]
    name: String,
    #[schema(example = "en_US")]
    language: String,
    /// UTILITY, MARKETING or AUTHENTICATION.
    #[schema(example = "MARKETING")]
    category: String,
    /// HEADER, BODY, FOOTER, BUTTONS, … components; at least one.
    #[schema(value_type = Vec<Object>)]
    components: Vec<Value>,
    allow_category_change: Option<bool>,
    /// AUTHENTICATION templates only.
    message_send_ttl_seconds: Option<i64>,
    /// ORDER_DETAILS or ORDER_STATUS.
    sub_category: Option<String>,
}

fn str_field<'a>(
    obj: &'a serde_json::Map<String, Value>,
    field: &str,
    path: &str,
) -> Result<Option<&'a str>, ApiError> {
    match obj.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(ApiError::bad_request(format!("{path}: expected a string"))),
    }
}

fn required_str<'a>(
    obj: &'a serde_json::Map<String, Value>,
    field: &str,
) -> Result<&'a str, ApiError> {
    match str_field(obj, field, field)? {
        Some(s) if !super::is_blank(s) => Ok(s),
        _ => Err(ApiError::bad_request(format!("{field}: required"))),
    }
}

/// Checks a template body against seed 004's rules; the error names the offending field.
pub fn validate_template(body: &Value) -> Result<(), ApiError> {
    let Value::Object(obj) = body else {
        return Err(ApiError::bad_request("body: expected a JSON object"));
    };
    let name = required_str(obj, "name")?;
    if name.len() > 512
        || !name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
    {
        return Err(ApiError::bad_request(
            "name: only lowercase letters, digits and underscores (at most 512)",
        ));
    }
    required_str(obj, "language")?;
    let category = required_str(obj, "category")?;
    one_of("category", category, CREATE_CATEGORIES)?;
    match obj.get("allow_category_change") {
        None | Some(Value::Null) | Some(Value::Bool(_)) => {}
        Some(_) => {
            return Err(ApiError::bad_request(
                "allow_category_change: expected true or false",
            ))
        }
    }
    match obj.get("message_send_ttl_seconds") {
        None | Some(Value::Null) => {}
        Some(v) if super::whole_number(v).is_some() => {
            if !category.eq_ignore_ascii_case("AUTHENTICATION") {
                return Err(ApiError::bad_request(
                    "message_send_ttl_seconds: only allowed for AUTHENTICATION templates",
                ));
            }
        }
        Some(_) => {
            return Err(ApiError::bad_request(
                "message_send_ttl_seconds: expected a whole number within ±(2^53 - 1)",
            ))
        }
    }
    if let Some(sub) = str_field(obj, "sub_category", "sub_category")? {
        one_of("sub_category", sub, SUB_CATEGORIES)?;
    }
    let components = match obj.get("components") {
        Some(Value::Array(c)) if !c.is_empty() => c,
        Some(Value::Array(_)) => {
            return Err(ApiError::bad_request("components: must not be empty"))
        }
        _ => {
            return Err(ApiError::bad_request(
                "components: required, a non-empty array",
            ))
        }
    };
    for (i, component) in components.iter().enumerate() {
        validate_component(i, component)?;
    }
    Ok(())
}

fn validate_component(i: usize, component: &Value) -> Result<(), ApiError> {
    let path = format!("components[{i}]");
    let Value::Object(c) = component else {
        return Err(ApiError::bad_request(format!("{path}: expected an object")));
    };
    let kind = str_field(c, "type", &format!("{path}.type"))?
        .ok_or_else(|| ApiError::bad_request(format!("{path}.type: required")))?;
    one_of(&format!("{path}.type"), kind, COMPONENT_TYPES)?;
    let kind = kind.to_ascii_uppercase();
    let format = str_field(c, "format", &format!("{path}.format"))?;
    if let Some(format) = format {
        one_of(&format!("{path}.format"), format, FORMATS)?;
    }
    // The seed requires text for HEADER, BODY and FOOTER; a media or location header (its own
    // sample has a LOCATION header without text) carries its media in `example` instead.
    let text_header = format.is_none_or(|f| f.eq_ignore_ascii_case("TEXT"));
    let needs_text =
        matches!(kind.as_str(), "BODY" | "FOOTER") || (kind == "HEADER" && text_header);
    let text = str_field(c, "text", &format!("{path}.text"))?;
    if needs_text && text.is_none_or(super::is_blank) {
        return Err(ApiError::bad_request(format!(
            "{path}.text: required for a {kind} component"
        )));
    }
    if kind == "BUTTONS" {
        let buttons = match c.get("buttons") {
            Some(Value::Array(b)) if !b.is_empty() => b,
            _ => {
                return Err(ApiError::bad_request(format!(
                    "{path}.buttons: required, a non-empty array, for a BUTTONS component"
                )))
            }
        };
        for (j, button) in buttons.iter().enumerate() {
            let bpath = format!("{path}.buttons[{j}]");
            let Value::Object(b) = button else {
                return Err(ApiError::bad_request(format!(
                    "{bpath}: expected an object"
                )));
            };
            let btype = str_field(b, "type", &format!("{bpath}.type"))?
                .ok_or_else(|| ApiError::bad_request(format!("{bpath}.type: required")))?;
            one_of(&format!("{bpath}.type"), btype, BUTTON_TYPES)?;
            str_field(b, "text", &format!("{bpath}.text"))?;
        }
    }
    Ok(())
}

/// Creates a template; the JSON body is forwarded as it is once it passes the checks.
#[utoipa::path(
    post,
    path = "/v1/message_templates",
    tag = "message templates",
    security(("bearer" = [])),
    request_body = TemplateBody,
    responses(
        (status = 200, description = "`{\"id\", \"status\", \"category\"}` from Graph", body = Object),
        (status = 400, description = "Invalid body (no Graph call), or Graph's error", body = ErrorEnvelope),
        (status = 401, body = ErrorEnvelope),
        (status = 502, body = ErrorEnvelope),
        (status = 504, body = ErrorEnvelope),
    )
)]
async fn create_template(
    State(state): State<AppState>,
    body: Result<Json<Value>, JsonRejection>,
) -> Result<GraphResponse, ApiError> {
    let body: Value = Value::Object(crate::http::error::object_body(body)?);
    validate_template(&body)?;
    state
        .graph()
        .call(Method::POST, EDGE, Payload::Json(body))
        .await
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct DeleteParams {
    /// The template's name (required).
    name: Option<String>,
    /// The template's id, to delete one language version only.
    hsm_id: Option<String>,
}

/// Deletes a template by name (all languages), or one version with `hsm_id`.
#[utoipa::path(
    delete,
    path = "/v1/message_templates",
    tag = "message templates",
    security(("bearer" = [])),
    params(DeleteParams),
    responses(
        (status = 200, description = "`{\"success\": true}`", body = Object),
        (status = 400, description = "Missing name, or Graph's error", body = ErrorEnvelope),
        (status = 401, body = ErrorEnvelope),
        (status = 502, body = ErrorEnvelope),
        (status = 504, body = ErrorEnvelope),
    )
)]
async fn delete_template(
    State(state): State<AppState>,
    params: Params,
) -> Result<GraphResponse, ApiError> {
    let params: DeleteParams = params.only(&["name", "hsm_id"])?.to()?;
    let name = params
        .name
        .filter(|n| !super::is_blank(n))
        .ok_or_else(|| ApiError::bad_request("name: required to delete a template"))?;
    let mut query = vec![("name".to_owned(), name)];
    if let Some(id) = params.hsm_id.filter(|id| !super::is_blank(id)) {
        query.push(("hsm_id".to_owned(), id));
    }
    state
        .graph()
        .call(Method::DELETE, EDGE, Payload::Query(query))
        .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn seed_sample() -> Value {
        json!({"name": "seasonal_promotion", "language": "en", "category": "MARKETING", "components": [
            {"type": "HEADER", "format": "TEXT", "text": "Our {{1}} is on!", "example": {"header_text": ["Summer Sale"]}},
            {"type": "BODY", "text": "Shop now through {{1}}", "example": {"body_text": [["the end of August"]]}},
            {"type": "FOOTER", "text": "Use the buttons below"},
            {"type": "BUTTONS", "buttons": [{"type": "QUICK_REPLY", "text": "Unsubscribe"}]}]})
    }

    #[test]
    fn the_seed_sample_is_valid_and_a_location_header_needs_no_text() {
        validate_template(&seed_sample()).unwrap();
        let mut t = seed_sample();
        t["components"][0] = json!({"type": "HEADER", "format": "LOCATION"});
        validate_template(&t).unwrap();
    }

    #[test]
    fn each_rule_names_its_field() {
        type Mutation = fn(&mut Value);
        let cases: Vec<(Mutation, &str)> = vec![
            (|t| t["name"] = json!("Seasonal Promo"), "name"),
            (
                |t| {
                    t.as_object_mut().unwrap().remove("language");
                },
                "language",
            ),
            (|t| t["category"] = json!("PROMO"), "category"),
            (|t| t["components"] = json!([]), "components"),
            (
                |t| t["components"][1]["type"] = json!("TITLE"),
                "components[1].type",
            ),
            (
                |t| t["components"][0]["format"] = json!("GIF"),
                "components[0].format",
            ),
            (
                |t| {
                    t["components"][2].as_object_mut().unwrap().remove("text");
                },
                "components[2].text",
            ),
            (
                |t| {
                    t["components"][0].as_object_mut().unwrap().remove("text");
                },
                "components[0].text",
            ),
            (
                |t| t["components"][3]["buttons"][0]["type"] = json!("CALL_ME"),
                "components[3].buttons[0].type",
            ),
            (
                |t| t["components"][3]["buttons"] = json!([]),
                "components[3].buttons",
            ),
            (
                |t| t["message_send_ttl_seconds"] = json!(60),
                "message_send_ttl_seconds",
            ),
            (|t| t["sub_category"] = json!("OTHER"), "sub_category"),
            (
                |t| t["allow_category_change"] = json!("yes"),
                "allow_category_change",
            ),
        ];
        for (mutate, field) in cases {
            let mut t = seed_sample();
            mutate(&mut t);
            let err = validate_template(&t).unwrap_err().to_string();
            assert!(err.starts_with(field), "{field}: {err}");
        }
        let mut auth = seed_sample();
        auth["category"] = json!("AUTHENTICATION");
        auth["message_send_ttl_seconds"] = json!(60);
        validate_template(&auth).unwrap();
    }

    #[test]
    fn list_filters_are_checked_against_the_seed_enums() {
        let q = |pairs: &[(&str, &str)]| {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect::<HashMap<_, _>>()
        };
        assert!(validate_list(&q(&[
            ("category", "utility,MARKETING"),
            ("status", "APPROVED")
        ]))
        .is_ok());
        for (k, v) in [
            ("category", "PROMO"),
            ("quality_score", "BLUE"),
            ("status", "APPROVED,NOPE"),
            ("limit", "0"),
            ("colour", "x"),
        ] {
            let err = validate_list(&q(&[(k, v)])).unwrap_err().to_string();
            assert!(err.starts_with(k), "{k}: {err}");
        }
    }
}
