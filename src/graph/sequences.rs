//! `/v1/welcome_message_sequences`: create, update, list, get and delete the welcome message
//! sequences a Click-to-WhatsApp ad opens with (seed `000`). A body is checked here before Graph
//! sees it; `welcome_message_sequence` is sent as a JSON string form field, as Graph documents.

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

use super::{scalar_text, GraphResponse, Payload};
use crate::app::AppState;
use crate::http::error::{ApiError, ErrorEnvelope};
use crate::http::query::Params;

const EDGE: &str = "welcome_message_sequences";
const MAX_ICE_BREAKERS: usize = 3;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(list_sequences, upsert_sequence, delete_sequence))
}

/// Create (`name` and `welcome_message_sequence`) or update (`sequence_id` and at least one of
/// the others) a sequence.
#[derive(Debug, Deserialize, ToSchema)]
pub struct SequenceBody {
    /// Present to update an existing sequence.
    #[schema(value_type = Option<String>, example = "186473890")]
    sequence_id: Option<Value>,
    #[schema(value_type = Option<String>, example = "Driver sign-up")]
    name: Option<Value>,
    /// `{"text": str, "autofill_message": {"content": str}, "ice_breakers": [{"title": str}, …≤3]}`
    #[schema(value_type = Option<Object>)]
    welcome_message_sequence: Option<Value>,
}

/// Checks a `welcome_message_sequence` object; the error names the offending field.
pub fn validate_sequence(seq: &Value) -> Result<(), ApiError> {
    let bad = |msg: &str| ApiError::bad_request(format!("welcome_message_sequence.{msg}"));
    let Value::Object(seq) = seq else {
        return Err(ApiError::bad_request(
            "welcome_message_sequence: expected a JSON object",
        ));
    };
    if let Some(text) = seq.get("text") {
        if !text.is_string() {
            return Err(bad("text: expected a string"));
        }
    }
    if let Some(autofill) = seq.get("autofill_message") {
        match autofill.get("content") {
            Some(Value::String(_)) => {}
            _ => return Err(bad("autofill_message.content: expected a string")),
        }
    }
    if let Some(ice) = seq.get("ice_breakers") {
        let Value::Array(items) = ice else {
            return Err(bad("ice_breakers: expected a list"));
        };
        if items.len() > MAX_ICE_BREAKERS {
            return Err(bad(&format!(
                "ice_breakers: at most {MAX_ICE_BREAKERS} items, got {}",
                items.len()
            )));
        }
        for (i, item) in items.iter().enumerate() {
            match item.get("title") {
                Some(Value::String(t)) if !t.is_empty() => {}
                _ => {
                    return Err(bad(&format!(
                        "ice_breakers[{i}].title: expected a non-empty string"
                    )))
                }
            }
        }
    }
    Ok(())
}

fn text_field(name: &str, value: &Value) -> Result<String, ApiError> {
    match scalar_text(value) {
        Some(s) if !super::is_blank(&s) => Ok(s),
        _ => Err(ApiError::bad_request(format!(
            "{name}: expected a non-empty string"
        ))),
    }
}

fn form_fields(body: &SequenceBody) -> Result<Vec<(String, String)>, ApiError> {
    let mut fields = Vec::new();
    if let Some(id) = &body.sequence_id {
        fields.push(("sequence_id".to_owned(), text_field("sequence_id", id)?));
    }
    if let Some(name) = &body.name {
        fields.push(("name".to_owned(), text_field("name", name)?));
    }
    if let Some(seq) = &body.welcome_message_sequence {
        validate_sequence(seq)?;
        fields.push(("welcome_message_sequence".to_owned(), seq.to_string()));
    }
    let updating = body.sequence_id.is_some();
    if updating && body.name.is_none() && body.welcome_message_sequence.is_none() {
        return Err(ApiError::bad_request(
            "name or welcome_message_sequence: an update needs at least one of them",
        ));
    }
    if !updating {
        if body.name.is_none() {
            return Err(ApiError::bad_request("name: required to create a sequence"));
        }
        if body.welcome_message_sequence.is_none() {
            return Err(ApiError::bad_request(
                "welcome_message_sequence: required to create a sequence",
            ));
        }
    }
    Ok(fields)
}

/// Creates a sequence, or updates one when `sequence_id` is given.
#[utoipa::path(
    post,
    path = "/v1/welcome_message_sequences",
    tag = "welcome message sequences",
    security(("bearer" = [])),
    request_body = SequenceBody,
    responses(
        (status = 200, description = "Graph's answer: `{\"sequence_id\": …}` or `{\"success\": true}`", body = Object),
        (status = 400, description = "Invalid body (checked before any Graph call), or Graph's error", body = ErrorEnvelope),
        (status = 401, body = ErrorEnvelope),
        (status = 502, description = "Graph unreachable or not JSON", body = ErrorEnvelope),
        (status = 504, description = "Graph slower than graph.timeout_secs", body = ErrorEnvelope),
    )
)]
async fn upsert_sequence(
    State(state): State<AppState>,
    body: Result<Json<Value>, JsonRejection>,
) -> Result<GraphResponse, ApiError> {
    let body: SequenceBody = crate::http::error::object_body(body)?;
    let fields = form_fields(&body)?;
    state
        .graph()
        .call(Method::POST, EDGE, Payload::Form(fields))
        .await
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListParams {
    /// Only this sequence.
    sequence_id: Option<String>,
    /// How many sequences to fetch.
    limit: Option<String>,
}

/// Lists sequences (or one, with `sequence_id`). Graph's bare JSON array is passed through.
#[utoipa::path(
    get,
    path = "/v1/welcome_message_sequences",
    tag = "welcome message sequences",
    security(("bearer" = [])),
    params(ListParams),
    responses(
        (status = 200, description = "Graph's array of sequences", body = Vec<Object>),
        (status = 400, body = ErrorEnvelope),
        (status = 401, body = ErrorEnvelope),
        (status = 502, body = ErrorEnvelope),
        (status = 504, body = ErrorEnvelope),
    )
)]
async fn list_sequences(
    State(state): State<AppState>,
    headers: HeaderMap,
    raw: Params,
) -> Result<GraphResponse, ApiError> {
    let params: ListParams = raw.only(&["sequence_id", "limit"])?.to()?;
    let mut query = Vec::new();
    if let Some(id) = params.sequence_id {
        if super::is_blank(&id) {
            return Err(ApiError::bad_request("sequence_id: must not be empty"));
        }
        query.push(("sequence_id".to_owned(), id));
    }
    if let Some(limit) = params.limit {
        match limit.parse::<u32>() {
            Ok(n) if n > 0 => query.push(("limit".to_owned(), n.to_string())),
            _ => {
                return Err(ApiError::bad_request(
                    "limit: expected a whole number above 0",
                ))
            }
        }
    }
    let answer = state
        .graph()
        .call(Method::GET, EDGE, Payload::Query(query))
        .await?;
    Ok(answer.with_own_paging(
        state.links(),
        &headers,
        "/v1/welcome_message_sequences",
        &raw,
    ))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct DeleteParams {
    /// The sequence to delete (required).
    sequence_id: Option<String>,
}

/// Deletes a sequence. `sequence_id` is required.
#[utoipa::path(
    delete,
    path = "/v1/welcome_message_sequences",
    tag = "welcome message sequences",
    security(("bearer" = [])),
    params(DeleteParams),
    responses(
        (status = 200, description = "`{\"success\": true}`", body = Object),
        (status = 400, description = "Missing sequence_id, or Graph's error (e.g. 4027012: used in an ad)", body = ErrorEnvelope),
        (status = 401, body = ErrorEnvelope),
        (status = 502, body = ErrorEnvelope),
        (status = 504, body = ErrorEnvelope),
    )
)]
async fn delete_sequence(
    State(state): State<AppState>,
    params: Params,
) -> Result<GraphResponse, ApiError> {
    let params: DeleteParams = params.only(&["sequence_id"])?.to()?;
    let id = params
        .sequence_id
        .filter(|id| !super::is_blank(id))
        .ok_or_else(|| ApiError::bad_request("sequence_id: required to delete a sequence"))?;
    state
        .graph()
        .call(
            Method::DELETE,
            EDGE,
            Payload::Query(vec![("sequence_id".into(), id)]),
        )
        .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_seed_example_is_valid() {
        let seq = json!({"text": "This is a welcome message authored in a 3P tool",
            "autofill_message": {"content": "Hello! Can I get more info on this!"},
            "ice_breakers": [{"title": "Quick reply 1"}, {"title": "Quick reply 2"}, {"title": "Quick reply 3"}]});
        validate_sequence(&seq).unwrap();
    }

    #[test]
    fn each_rule_names_its_field() {
        let cases = [
            (json!("text"), "welcome_message_sequence"),
            (json!({"text": 5}), "text"),
            (
                json!({"autofill_message": {"content": ["x"]}}),
                "autofill_message.content",
            ),
            (json!({"autofill_message": "x"}), "autofill_message.content"),
            (json!({"ice_breakers": {"title": "x"}}), "ice_breakers"),
            (
                json!({"ice_breakers": [{"title": "1"}, {"title": "2"}, {"title": "3"}, {"title": "4"}]}),
                "at most 3",
            ),
            (
                json!({"ice_breakers": [{"title": "1"}, {"name": "2"}]}),
                "ice_breakers[1].title",
            ),
        ];
        for (seq, needle) in cases {
            let err = validate_sequence(&seq).unwrap_err().to_string();
            assert!(err.contains(needle), "{seq}: {err}");
        }
    }
}
