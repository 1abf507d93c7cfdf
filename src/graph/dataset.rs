//! `POST /v1/dataset`: creates the WhatsApp Business Account's Conversions API dataset
//! (`POST /{waba_id}/dataset` with `dataset_name`) and passes Graph's `{"id"}` back, for
//! `[capi] dataset_id`. The body is checked before Graph sees it, as on the other proxy routes.

use axum::extract::rejection::JsonRejection;
use axum::extract::State;
use axum::Json;
use reqwest::Method;
use serde::Deserialize;
use serde_json::Value;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::{is_blank, GraphResponse, Payload};
use crate::app::AppState;
use crate::http::error::{object_body, ApiError, ErrorEnvelope};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(create_dataset))
}

/// `POST /v1/dataset`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DatasetBody {
    /// A name for the dataset, shown in Events Manager.
    #[schema(example = "ctwa-leads conversions", min_length = 1, max_length = 255)]
    dataset_name: Value,
}

/// Creates the WABA's dataset (Graph `POST /{waba_id}/dataset`) and returns its id, for
/// `[capi] dataset_id`.
#[utoipa::path(
    post,
    path = "/v1/dataset",
    tag = "conversions",
    security(("bearer" = [])),
    request_body = DatasetBody,
    responses(
        (status = 200, description = "Graph's answer: `{\"id\": …}`", body = Object),
        (status = 400, description = "Invalid body (checked before any Graph call), or Graph's error", body = ErrorEnvelope),
        (status = 401, body = ErrorEnvelope),
        (status = 502, description = "Graph unreachable or not JSON", body = ErrorEnvelope),
        (status = 504, description = "Graph slower than graph.timeout_secs", body = ErrorEnvelope),
    )
)]
async fn create_dataset(
    State(state): State<AppState>,
    body: Result<Json<Value>, JsonRejection>,
) -> Result<GraphResponse, ApiError> {
    let b: DatasetBody = object_body(body)?;
    let name = match &b.dataset_name {
        Value::String(s) if !is_blank(s) && s.chars().count() <= 255 => s.clone(),
        _ => {
            return Err(ApiError::bad_request(
                "dataset_name: expected a string of 1 to 255 characters",
            ))
        }
    };
    state
        .graph()
        .call(
            Method::POST,
            "dataset",
            Payload::Json(serde_json::json!({ "dataset_name": name })),
        )
        .await
}
