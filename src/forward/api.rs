//! `/v1/deliveries` and `/v1/forward/{destination}/replay`: what forwarding did (attempts, last
//! status code, last error, next attempt), a failed delivery made due again, and every lead in
//! a time range enqueued again (new webhook ids) for a destination that was down too long or
//! was added later.

use axum::extract::rejection::PathRejection;
use axum::extract::{OriginalUri, Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::Json;
use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::app::AppState;
use crate::http::error::{ApiError, ErrorEnvelope};
use crate::http::id_paging::{self, RowId};
use crate::http::query::{self, Params};
use crate::leads::api::Paging;
use crate::store::outbox::{self, DeliveryFilter, DeliveryRow};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_deliveries))
        .routes(routes!(get_delivery))
        .routes(routes!(retry_delivery))
        .routes(routes!(replay))
}

/// One lead's delivery to one destination.
#[derive(Debug, Serialize, ToSchema)]
pub struct Delivery {
    pub id: i64,
    /// The `webhook-id` header: the same on every attempt (the receiver's idempotency key).
    pub webhook_id: String,
    pub destination: String,
    pub lead_id: i64,
    /// `pending`, `succeeded` or `failed`.
    pub status: String,
    pub attempts: i64,
    /// The HTTP status of the last attempt, if it got an answer.
    pub last_status_code: Option<i64>,
    pub last_error: Option<String>,
    /// When the next attempt is due (pending only), RFC 3339 UTC.
    pub next_attempt_at: Option<String>,
    pub created_at: String,
    pub updated_at: String,
}

fn rfc3339(ms: i64) -> String {
    DateTime::<Utc>::from_timestamp_millis(ms)
        .map(|t| t.to_rfc3339_opts(SecondsFormat::Millis, true))
        .unwrap_or_default()
}

impl From<DeliveryRow> for Delivery {
    fn from(r: DeliveryRow) -> Self {
        Delivery {
            id: r.id,
            webhook_id: r.webhook_id,
            destination: r.destination,
            lead_id: r.lead_id,
            next_attempt_at: (r.status == "pending")
                .then_some(r.next_attempt_at)
                .flatten()
                .map(rfc3339),
            status: r.status,
            attempts: r.attempts,
            last_status_code: r.last_status_code,
            last_error: r.last_error,
            created_at: rfc3339(r.created_at),
            updated_at: rfc3339(r.updated_at),
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct DeliveryPage {
    pub data: Vec<Delivery>,
    pub paging: Paging,
}

#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct DeliveryParams {
    /// A destination's name.
    destination: Option<String>,
    /// `pending`, `failed` or `succeeded`.
    #[param(pattern = "^(pending|failed|succeeded)$")]
    status: Option<String>,
    /// The lead's id.
    #[param(value_type = Option<i64>, minimum = 1)]
    lead_id: Option<String>,
    /// Deliveries per page, 1 to 500 (default 50).
    #[param(value_type = Option<u32>, minimum = 1, maximum = 500)]
    limit: Option<String>,
    /// The cursor from the previous page's `paging.cursors.after`.
    #[param(pattern = r"^[0-9]{1,18}$")]
    after: Option<String>,
}

/// Lists deliveries, newest first, with filters and cursor paging.
#[utoipa::path(
    get,
    path = "/v1/deliveries",
    tag = "forwarding",
    security(("bearer" = [])),
    params(DeliveryParams),
    responses(
        (status = 200, body = DeliveryPage),
        (status = 400, description = "A bad filter, limit or cursor", body = ErrorEnvelope),
        (status = 401, body = ErrorEnvelope),
    )
)]
async fn list_deliveries(
    State(state): State<AppState>,
    OriginalUri(uri): OriginalUri,
    headers: HeaderMap,
    params: Params,
) -> Result<Json<DeliveryPage>, ApiError> {
    params.only(&["destination", "status", "lead_id", "limit", "after"])?;
    let p: DeliveryParams = params.to()?;
    query::one_of(
        "status",
        p.status.as_deref(),
        &["pending", "failed", "succeeded"],
    )?;
    let page = id_paging::Request::read(p.limit.as_deref(), p.after.as_deref())?;
    let filter = DeliveryFilter {
        destination: p.destination,
        status: p.status,
        lead_id: p
            .lead_id
            .as_deref()
            .map(|v| id_paging::whole("lead_id", v, 1))
            .transpose()?,
    };
    let rows = outbox::page(state.store(), &filter, page.before, page.fetch())
        .await
        .map_err(ApiError::database)?;
    let (rows, paging) = page.finish(rows, |r| r.id, &state, &headers, uri.path(), &params);
    Ok(Json(DeliveryPage {
        data: rows.into_iter().map(Delivery::from).collect(),
        paging,
    }))
}

/// One delivery by id.
#[utoipa::path(
    get,
    path = "/v1/deliveries/{id}",
    tag = "forwarding",
    security(("bearer" = [])),
    params(("id" = i64, Path, description = "The delivery's id")),
    responses(
        (status = 200, body = Delivery),
        (status = 404, body = ErrorEnvelope),
        (status = 401, body = ErrorEnvelope),
    )
)]
async fn get_delivery(
    State(state): State<AppState>,
    id: Result<Path<String>, PathRejection>,
    params: Params,
) -> Result<Json<Delivery>, ApiError> {
    params.only(&[])?;
    let id = RowId::read(id, "delivery")?;
    outbox::by_id(state.store(), id.id)
        .await
        .map_err(ApiError::database)?
        .map(|row| Json(Delivery::from(row)))
        .ok_or_else(|| id.not_found())
}

/// Makes a delivery due now. A failed one gets one more attempt (if that fails too, it is
/// failed again); a pending one is sent without waiting for its scheduled time.
#[utoipa::path(
    post,
    path = "/v1/deliveries/{id}/retry",
    tag = "forwarding",
    security(("bearer" = [])),
    params(("id" = i64, Path, description = "The delivery's id")),
    responses(
        (status = 200, description = "The delivery, pending and due now", body = Delivery),
        (status = 404, body = ErrorEnvelope),
        (status = 409, description = "Already delivered (replay sends a lead again), or its destination is disabled", body = ErrorEnvelope),
        (status = 401, body = ErrorEnvelope),
    )
)]
async fn retry_delivery(
    State(state): State<AppState>,
    id: Result<Path<String>, PathRejection>,
    params: Params,
) -> Result<Json<Delivery>, ApiError> {
    params.only(&[])?;
    let row_id = RowId::read(id, "delivery")?;
    let id = row_id.id;
    let row = outbox::by_id(state.store(), id)
        .await
        .map_err(ApiError::database)?
        .ok_or_else(|| row_id.not_found())?;
    if row.status == "succeeded" {
        return Err(ApiError::client(
            StatusCode::CONFLICT,
            "already_delivered",
            "this delivery succeeded; to send its lead again, replay the destination",
        ));
    }
    crate::forward::usable(state.forwarding(), &row.destination)
        .map_err(|why| ApiError::client(StatusCode::CONFLICT, "destination_unavailable", why))?;
    let last_step = state.forwarding().schedule.len().saturating_sub(1) as i64;
    let now = Utc::now().timestamp_millis();
    let row = outbox::retry(state.store(), id, now, last_step)
        .await
        .map_err(ApiError::database)?
        .ok_or_else(|| {
            ApiError::client(
                StatusCode::CONFLICT,
                "already_delivered",
                "this delivery succeeded meanwhile",
            )
        })?;
    state.store().outbox_wake().rescan();
    Ok(Json(Delivery::from(row)))
}

#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ReplayParams {
    /// Leads received at or after: RFC 3339 (or unix seconds). Default: the first.
    #[param(value_type = Option<String>, format = DateTime)]
    since: Option<String>,
    /// Leads received at or before: RFC 3339 (or unix seconds). Default: now.
    #[param(value_type = Option<String>, format = DateTime)]
    until: Option<String>,
}

/// What a replay enqueued.
#[derive(Debug, Serialize, ToSchema)]
pub struct Replayed {
    pub destination: String,
    /// New deliveries: every lead in the range that matches the destination's filters.
    pub enqueued: u64,
}

/// Enqueues every lead received in the range (and matching the destination's filters) again,
/// as new deliveries with new webhook ids, in lead order.
#[utoipa::path(
    post,
    path = "/v1/forward/{destination}/replay",
    tag = "forwarding",
    security(("bearer" = [])),
    params(("destination" = String, Path, description = "The destination's name"), ReplayParams),
    responses(
        (status = 202, description = "Enqueued; GET /v1/deliveries shows them go", body = Replayed),
        (status = 400, description = "A bad time", body = ErrorEnvelope),
        (status = 404, description = "No such destination", body = ErrorEnvelope),
        (status = 409, description = "The destination is disabled", body = ErrorEnvelope),
        (status = 401, body = ErrorEnvelope),
    )
)]
async fn replay(
    State(state): State<AppState>,
    destination: Result<Path<String>, PathRejection>,
    params: Params,
) -> Result<(StatusCode, Json<Replayed>), ApiError> {
    let Path(name) = destination?;
    params.only(&["since", "until"])?;
    let p: ReplayParams = params.to()?;
    let time = |what: &str, v: &str| {
        crate::leads::parse_time(v).map_err(|why| ApiError::bad_request(format!("{what}: {why}")))
    };
    let since = p.since.as_deref().map(|v| time("since", v)).transpose()?;
    let until = p.until.as_deref().map(|v| time("until", v)).transpose()?;
    let forwarding = state.forwarding();
    let Some(found) = forwarding.destination(&name) else {
        return Err(ApiError::not_found(format!(
            "no forwarding destination named {name:?}"
        )));
    };
    crate::forward::usable(forwarding, &name)
        .map_err(|why| ApiError::client(StatusCode::CONFLICT, "destination_unavailable", why))?;
    let now = Utc::now().timestamp_millis();
    let first_delay = forwarding
        .schedule
        .first()
        .map_or(0, |d| d.as_millis() as i64);
    let enqueued = outbox::replay(
        state.store(),
        &name,
        &found.settings.filters,
        since.unwrap_or(i64::MIN),
        until.unwrap_or(now),
        now + first_delay,
        now,
    )
    .await
    .map_err(ApiError::database)?;
    state.store().outbox_wake().notify();
    tracing::info!(destination = %name, enqueued, "forwarding replay enqueued");
    Ok((
        StatusCode::ACCEPTED,
        Json(Replayed {
            destination: name,
            enqueued,
        }),
    ))
}
