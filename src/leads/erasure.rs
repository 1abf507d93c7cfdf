//! `DELETE /v1/contacts/{wa_id_or_user_id}`: erasure on request (GDPR art. 17), and
//! `GET /v1/erasures/{id}`: how a request stands. A request is recorded, then carried out by
//! the eraser ([`super::eraser`]); the answer is 200 with what was removed when that is done
//! within two thirds of the request's time, else 202 with where to look.

use axum::extract::rejection::PathRejection;
use axum::extract::{OriginalUri, Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::app::AppState;
use crate::http::error::{ApiError, ErrorEnvelope};
use crate::http::id_paging::{self, RowId};
use crate::http::query::{self, Params};
use crate::leads::api::Paging;
use crate::store::erasure_requests::{self, ErasureRow};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(erase_contact))
        .routes(routes!(get_erasure))
        .routes(routes!(list_erasures))
}

/// Longest id accepted; a wa_id is a phone number, a BSUID is short too.
const MAX_ID: usize = 128;

/// An erasure request: how it stands, and what it removed. It never names the person.
#[derive(Debug, Serialize, ToSchema)]
pub struct Erasure {
    /// The request's id: `GET /v1/erasures/{id}`.
    pub id: i64,
    pub status: ErasureStatus,
    /// RFC 3339 UTC.
    pub requested_at: String,
    /// When it was done, RFC 3339 UTC; null while pending.
    pub finished_at: Option<String>,
    /// Attempts begun (an attempt is retried after a pause when it could not finish).
    pub attempts: i64,
    /// Why the last attempt did not finish (for example, the projection behind the log).
    pub last_error: Option<String>,
    /// Leads removed (their `wa_id` or `user_id` was the id); 0 while pending.
    pub leads: i64,
    /// Raw deliveries removed that mentioned the id; 0 while pending.
    pub raw_deliveries: i64,
    /// Raw deliveries whose stored body no longer unpacks (a damaged page, or a codec of a
    /// later version), so the erasure could not tell whether they mention the id. They are
    /// kept, and an error log line names each one's log id. Zero on a sound log.
    pub unreadable_raw_deliveries: i64,
}

/// Where an erasure request stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum ErasureStatus {
    /// Waiting for its turn, under way, or to be retried after `last_error`.
    Pending,
    /// Carried out: the counts are final.
    Done,
}

impl From<ErasureRow> for Erasure {
    fn from(r: ErasureRow) -> Self {
        Erasure {
            id: r.id,
            status: if r.finished_at.is_some() {
                ErasureStatus::Done
            } else {
                ErasureStatus::Pending
            },
            requested_at: super::api::rfc3339_millis(r.requested_at),
            finished_at: r.finished_at.map(super::api::rfc3339_millis),
            attempts: r.attempts,
            last_error: r.last_error,
            leads: r.leads,
            raw_deliveries: r.raw_deliveries,
            unreadable_raw_deliveries: r.unreadable_raw_deliveries,
        }
    }
}

/// Erases one person: their leads (by `wa_id` or BSUID `user_id`) and every stored raw delivery
/// that mentions them, as acknowledged before the request. A batch delivery is removed whole;
/// the other people's leads from it stay. The request is recorded first and carried out even
/// if the answer is not awaited: 200 when it is done in time, else 202 with a `Location` to
/// follow (a large log takes a while to search; the projection may be behind). Repeating a
/// request that has not begun yet joins it.
#[utoipa::path(
    delete,
    path = "/v1/contacts/{id}",
    tag = "leads",
    security(("bearer" = [])),
    params(("id" = String, Path, description = "The person's wa_id or business-scoped user_id")),
    responses(
        (status = 200, description = "Done: what was removed (zero counts when nothing was stored)", body = Erasure),
        (status = 202, description = "Recorded and under way (or waiting for the projection): follow `Location`", body = Erasure, headers(("Location" = String, description = "The request: /v1/erasures/{id}"))),
        (status = 400, description = "An empty, over-long or non-UTF-8 id, or one with control characters", body = ErrorEnvelope),
        (status = 401, body = ErrorEnvelope),
        (status = 503, description = "The database did not answer; nothing was recorded", body = ErrorEnvelope, headers(("Retry-After" = String, description = "Seconds to wait before retrying"))),
    )
)]
async fn erase_contact(
    State(state): State<AppState>,
    headers: HeaderMap,
    id: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    let Path(id) = id?;
    // No stored wa_id or user_id holds one (a NUL, a tab, a line break): a typo or a broken
    // client, told so rather than answered with zero counts as if the person were erased.
    if id.chars().any(char::is_control) {
        return Err(ApiError::bad_request(
            "id: a wa_id or user_id has no control characters",
        ));
    }
    let id = id.trim_matches(' ');
    if id.is_empty() || id.chars().count() > MAX_ID {
        return Err(ApiError::bad_request(format!(
            "id: expected a wa_id or user_id of 1 to {MAX_ID} characters"
        )));
    }
    let store = state.store();
    let now = chrono::Utc::now().timestamp_millis();
    let request = erasure_requests::request(store, id, now)
        .await
        .map_err(ApiError::database)?;
    state.erasures().wake();
    // Ties this request (and its request id) to the eraser's audit line, without the person.
    tracing::info!(erasure = request.id, "erasure requested");
    // The rest of the request's time is the margin before its deadline answers 408.
    let within = state.request_timeout() * 2 / 3;
    let row = state
        .erasures()
        .wait(store, request.id, within)
        .await
        .map_err(ApiError::database)?;
    let erasure = Erasure::from(row);
    if erasure.finished_at.is_some() {
        return Ok(Json(erasure).into_response());
    }
    let location = state
        .links()
        .to(&headers, &format!("/v1/erasures/{}", erasure.id));
    Ok((
        StatusCode::ACCEPTED,
        [(header::LOCATION, location)],
        Json(erasure),
    )
        .into_response())
}

/// One erasure request by id: pending, or done with what it removed.
#[utoipa::path(
    get,
    path = "/v1/erasures/{id}",
    tag = "leads",
    security(("bearer" = [])),
    params(("id" = i64, Path, description = "The request's id, from `DELETE /v1/contacts/{id}`", example = 1)),
    responses(
        (status = 200, body = Erasure),
        (status = 404, body = ErrorEnvelope),
        (status = 401, body = ErrorEnvelope),
        (status = 503, description = "The database did not answer", body = ErrorEnvelope, headers(("Retry-After" = String, description = "Seconds to wait before retrying"))),
    )
)]
async fn get_erasure(
    State(state): State<AppState>,
    id: Result<Path<String>, PathRejection>,
    params: Params,
) -> Result<Json<Erasure>, ApiError> {
    params.only(&[])?;
    let id = RowId::read(id, "erasure request")?;
    erasure_requests::by_id(state.store(), id.id)
        .await
        .map_err(ApiError::database)?
        .map(|row| Json(Erasure::from(row)))
        .ok_or_else(|| id.not_found())
}

#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ErasureParams {
    /// `pending` or `done`.
    #[param(pattern = "^(pending|done)$")]
    status: Option<String>,
    /// Requests per page, 1 to 500 (default 50).
    #[param(value_type = Option<u32>, minimum = 1, maximum = 500)]
    limit: Option<String>,
    /// The cursor from the previous page's `paging.cursors.after`.
    #[param(pattern = r"^[0-9]{1,18}$")]
    after: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ErasurePage {
    pub data: Vec<Erasure>,
    pub paging: Paging,
}

/// Lists erasure requests, newest first: `?status=pending` finds one that waits (the
/// `ctwa_erasures_oldest_pending_seconds` alert) and its `last_error`.
#[utoipa::path(
    get,
    path = "/v1/erasures",
    tag = "leads",
    security(("bearer" = [])),
    params(ErasureParams),
    responses(
        (status = 200, body = ErasurePage),
        (status = 400, description = "A bad status, limit or cursor", body = ErrorEnvelope),
        (status = 401, body = ErrorEnvelope),
        (status = 503, description = "The database did not answer", body = ErrorEnvelope, headers(("Retry-After" = String, description = "Seconds to wait before retrying"))),
    )
)]
async fn list_erasures(
    State(state): State<AppState>,
    OriginalUri(uri): OriginalUri,
    headers: HeaderMap,
    params: Params,
) -> Result<Json<ErasurePage>, ApiError> {
    params.only(&["status", "limit", "after"])?;
    let p: ErasureParams = params.to()?;
    query::one_of("status", p.status.as_deref(), &["pending", "done"])?;
    let page = id_paging::Request::read(p.limit.as_deref(), p.after.as_deref())?;
    let done = p.status.as_deref().map(|s| s == "done");
    let rows = erasure_requests::page(state.store(), done, page.before, page.fetch())
        .await
        .map_err(ApiError::database)?;
    let (rows, paging) = page.finish(rows, |r| r.id, &state, &headers, uri.path(), &params);
    Ok(Json(ErasurePage {
        data: rows.into_iter().map(Erasure::from).collect(),
        paging,
    }))
}
