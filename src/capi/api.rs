//! The conversion routes: `POST /v1/leads/{id}/conversions` and `POST /v1/conversions` (by
//! click id) check an event against Meta's rules and queue it, once per (lead, event name)
//! unless the caller brings its own `event_id`; `GET /v1/conversions` lists them with their
//! status and Graph's error. (The dataset they go to is created by `graph::dataset`.)

use axum::extract::rejection::{JsonRejection, PathRejection};
use axum::extract::{OriginalUri, Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::Json;
use chrono::Utc;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub use super::views::{Conversion, ConversionError, DetectedEvent};
use super::MAX_EVENT_ID;
use crate::app::AppState;
use crate::http::error::{object_body, ApiError, ErrorEnvelope};
use crate::http::id_paging::{self, RowId};
use crate::http::query::{self, Params};
use crate::leads::api::Paging;
use crate::store::conversions::{self, NewConversion};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(lead_conversion))
        .routes(routes!(clid_conversion, list_conversions))
}

/// A conversion for a lead given in the path.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ConversionBody {
    /// One of Meta's business-messaging event names (see the README), e.g. `Purchase`.
    #[schema(example = "Purchase")]
    event_name: String,
    /// Required with `currency`; at least 0.
    #[schema(example = 123.45, minimum = 0)]
    value: Option<f64>,
    /// ISO 4217, e.g. `USD`; required with `value`.
    #[schema(example = "USD")]
    currency: Option<String>,
    /// Unix seconds (as Meta takes it); not in the future, at most 7 days ago. Default: now.
    #[schema(value_type = Option<i64>)]
    event_time: Option<Value>,
    /// Your own id for this event (1–128 characters): repeats with it are one event. Without
    /// it, a lead reports each event name once.
    event_id: Option<String>,
}

/// A conversion for the lead with a click id (what an order system knows of the chat): the
/// fields of [`ConversionBody`], plus `ctwa_clid`. (Written out, not flattened: serde's
/// `deny_unknown_fields` does not work through `flatten`.)
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ClidConversionBody {
    /// The `ctwa_clid` of the lead's referral.
    ctwa_clid: String,
    #[schema(example = "Purchase")]
    event_name: String,
    #[schema(example = 123.45, minimum = 0)]
    value: Option<f64>,
    #[schema(example = "USD")]
    currency: Option<String>,
    /// Unix seconds; not in the future, at most 7 days ago. Default: now.
    #[schema(value_type = Option<i64>)]
    event_time: Option<Value>,
    /// Your own id for this event (1–128 characters).
    event_id: Option<String>,
}

impl ClidConversionBody {
    /// The click id, and the event as the lead route takes it.
    fn split(self) -> (String, ConversionBody) {
        let event = ConversionBody {
            event_name: self.event_name,
            value: self.value,
            currency: self.currency,
            event_time: self.event_time,
            event_id: self.event_id,
        };
        (self.ctwa_clid, event)
    }
}

/// The event, checked against Meta's rules (everything but the lead).
struct Checked {
    event_name: String,
    value: Option<f64>,
    currency: Option<String>,
    event_time: i64,
    event_id: Option<String>,
}

fn check(body: ConversionBody) -> Result<Checked, ApiError> {
    let ConversionBody {
        event_name,
        value,
        currency,
        event_time,
        event_id,
    } = body;
    if !super::is_allowed(&event_name) {
        return Err(ApiError::bad_request(format!(
            "event_name: {event_name:?} is not an event Meta takes for business messaging; use one of {}",
            super::CONFIRMED_EVENTS
                .iter()
                .chain(super::LISTED_EVENTS)
                .copied()
                .collect::<Vec<_>>()
                .join(", ")
        )));
    }
    if let Some(v) = value {
        if !v.is_finite() || !(0.0..=super::MAX_VALUE).contains(&v) {
            return Err(ApiError::bad_request(format!(
                "value: expected a number from 0 to {}",
                super::MAX_VALUE
            )));
        }
    }
    match (&value, &currency) {
        (Some(_), None) => {
            return Err(ApiError::bad_request(
                "currency: required with value (ISO 4217, e.g. USD)",
            ))
        }
        (None, Some(_)) => {
            return Err(ApiError::bad_request("value: required with currency"));
        }
        (_, Some(c)) if !super::is_currency(c) => {
            return Err(ApiError::bad_request(
                "currency: expected an ISO 4217 code in capitals, e.g. USD",
            ));
        }
        _ => {}
    }
    let now_ms = Utc::now().timestamp_millis();
    let event_time = match event_time {
        None => now_ms / 1000,
        Some(Value::Null) => now_ms / 1000,
        Some(v @ Value::Number(_)) => crate::graph::whole_number(&v)
            .ok_or_else(|| ApiError::bad_request("event_time: expected whole unix seconds"))?,
        Some(_) => {
            return Err(ApiError::bad_request(
                "event_time: expected whole unix seconds",
            ))
        }
    };
    // A minute of clock skew is tolerated.
    if event_time * 1000 > now_ms + 60_000 {
        return Err(ApiError::bad_request("event_time: in the future"));
    }
    if !super::within_window(event_time, now_ms) {
        return Err(ApiError::bad_request(
            "event_time: more than 7 days ago; Meta rejects such events",
        ));
    }
    if let Some(id) = &event_id {
        if id.is_empty() || id.chars().count() > MAX_EVENT_ID || id.chars().any(char::is_control) {
            return Err(ApiError::bad_request(format!(
                "event_id: expected 1 to {MAX_EVENT_ID} printable characters"
            )));
        }
    }
    Ok(Checked {
        event_name,
        value,
        currency,
        event_time,
        event_id,
    })
}

fn not_configured() -> ApiError {
    ApiError::client(
        StatusCode::CONFLICT,
        "capi_not_configured",
        "conversions are not reported: set [capi] dataset_id (POST /v1/dataset creates one)",
    )
}

/// Queues `checked` for `lead_id`: 202 with the new event, or 200 with the existing one.
async fn queue(
    state: &AppState,
    lead_id: i64,
    checked: Checked,
) -> Result<(StatusCode, Json<Conversion>), ApiError> {
    let lead = crate::store::leads::by_id(state.store(), lead_id)
        .await
        .map_err(ApiError::database)?
        .ok_or_else(|| ApiError::not_found(format!("no lead with id {lead_id}")))?;
    if lead.ctwa_clid.is_none() {
        return Err(ApiError::client(
            StatusCode::UNPROCESSABLE_ENTITY,
            "no_click_id",
            format!("lead {lead_id} has no ctwa_clid (it did not come from a Click-to-WhatsApp ad click), so Meta cannot attribute a conversion to it"),
        ));
    }
    let new = NewConversion {
        event_id: checked
            .event_id
            .unwrap_or_else(|| conversions::default_event_id(lead_id, &checked.event_name)),
        lead_id,
        event_name: checked.event_name,
        event_time: checked.event_time,
        value: checked.value,
        currency: checked.currency,
    };
    let now = Utc::now().timestamp_millis();
    let (row, created) = conversions::insert(state.store(), &new, now)
        .await
        .map_err(ApiError::database)?
        .ok_or_else(|| ApiError::not_found(format!("no lead with id {lead_id}")))?;
    if row.lead_id != lead_id {
        return Err(ApiError::client(
            StatusCode::CONFLICT,
            "event_id_taken",
            format!(
                "event_id {:?} belongs to another lead's event",
                new.event_id
            ),
        ));
    }
    if created {
        state.store().outbox_wake().notify();
        Ok((StatusCode::ACCEPTED, Json(row.into())))
    } else {
        Ok((StatusCode::OK, Json(row.into())))
    }
}

/// Reports a conversion of this lead to Meta (queued; sent in the background).
#[utoipa::path(
    post,
    path = "/v1/leads/{id}/conversions",
    tag = "conversions",
    security(("bearer" = [])),
    params(("id" = i64, Path, description = "The lead's id", minimum = 1)),
    request_body = ConversionBody,
    responses(
        (status = 202, description = "Queued", body = Conversion),
        (status = 200, description = "Already queued or sent: the existing event (nothing new is sent)", body = Conversion),
        (status = 400, description = "The event breaks one of Meta's rules", body = ErrorEnvelope),
        (status = 401, body = ErrorEnvelope),
        (status = 404, description = "No such lead", body = ErrorEnvelope),
        (status = 409, description = "[capi] is not configured, or the event_id is another lead's", body = ErrorEnvelope),
        (status = 422, description = "The lead has no ctwa_clid", body = ErrorEnvelope),
    )
)]
async fn lead_conversion(
    State(state): State<AppState>,
    id: Result<Path<String>, PathRejection>,
    body: Result<Json<Value>, JsonRejection>,
) -> Result<(StatusCode, Json<Conversion>), ApiError> {
    let lead_id = RowId::read(id, "lead")?.id;
    let checked = check(object_body(body)?)?;
    if !state.capi().enabled() {
        return Err(not_configured());
    }
    queue(&state, lead_id, checked).await
}

/// Reports a conversion of the lead with this click id.
#[utoipa::path(
    post,
    path = "/v1/conversions",
    tag = "conversions",
    security(("bearer" = [])),
    request_body = ClidConversionBody,
    responses(
        (status = 202, description = "Queued", body = Conversion),
        (status = 200, description = "Already queued or sent: the existing event", body = Conversion),
        (status = 400, description = "The event breaks one of Meta's rules", body = ErrorEnvelope),
        (status = 401, body = ErrorEnvelope),
        (status = 404, description = "No lead with this ctwa_clid", body = ErrorEnvelope),
        (status = 409, description = "[capi] is not configured, or the event_id is another lead's", body = ErrorEnvelope),
    )
)]
async fn clid_conversion(
    State(state): State<AppState>,
    body: Result<Json<Value>, JsonRejection>,
) -> Result<(StatusCode, Json<Conversion>), ApiError> {
    let (ctwa_clid, event) = object_body::<ClidConversionBody>(body)?.split();
    if crate::graph::is_blank(&ctwa_clid) {
        return Err(ApiError::bad_request("ctwa_clid: must not be empty"));
    }
    let checked = check(event)?;
    if !state.capi().enabled() {
        return Err(not_configured());
    }
    let lead_id = crate::store::leads::id_by_clid(state.store(), &ctwa_clid)
        .await
        .map_err(ApiError::database)?
        .ok_or_else(|| ApiError::not_found("no lead with this ctwa_clid"))?;
    queue(&state, lead_id, checked).await
}

#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ConversionParams {
    /// `pending`, `sent` or `failed`.
    #[param(pattern = "^(pending|sent|failed)$")]
    status: Option<String>,
    /// The lead's id.
    #[param(value_type = Option<i64>, minimum = 1)]
    lead_id: Option<String>,
    /// Events per page, 1 to 500 (default 50).
    #[param(value_type = Option<u32>, minimum = 1, maximum = 500)]
    limit: Option<String>,
    /// The cursor from the previous page's `paging.cursors.after`.
    #[param(pattern = r"^[0-9]{1,18}$")]
    after: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ConversionPage {
    pub data: Vec<Conversion>,
    pub paging: Paging,
}

/// Lists conversion events, newest first.
#[utoipa::path(
    get,
    path = "/v1/conversions",
    tag = "conversions",
    security(("bearer" = [])),
    params(ConversionParams),
    responses(
        (status = 200, body = ConversionPage),
        (status = 400, description = "A bad filter, limit or cursor", body = ErrorEnvelope),
        (status = 401, body = ErrorEnvelope),
    )
)]
async fn list_conversions(
    State(state): State<AppState>,
    OriginalUri(uri): OriginalUri,
    headers: HeaderMap,
    params: Params,
) -> Result<Json<ConversionPage>, ApiError> {
    params.only(&["status", "lead_id", "limit", "after"])?;
    let p: ConversionParams = params.to()?;
    query::one_of(
        "status",
        p.status.as_deref(),
        &["pending", "sent", "failed"],
    )?;
    let page = id_paging::Request::read(p.limit.as_deref(), p.after.as_deref())?;
    let lead_id = p
        .lead_id
        .as_deref()
        .map(|v| id_paging::whole("lead_id", v, 1))
        .transpose()?;
    let rows = conversions::page(
        state.store(),
        p.status.as_deref(),
        lead_id,
        page.before,
        page.fetch(),
    )
    .await
    .map_err(ApiError::database)?;
    let (rows, paging) = page.finish(rows, |r| r.id, &state, &headers, uri.path(), &params);
    Ok(Json(ConversionPage {
        data: rows.into_iter().map(Conversion::from).collect(),
        paging,
    }))
}

/// A lead's conversions and detected events, for `GET /v1/leads/{id}`.
pub async fn events_of(
    state: &AppState,
    lead_id: i64,
    ctwa_clid: Option<&str>,
) -> Result<(Vec<Conversion>, Vec<DetectedEvent>), sqlx::Error> {
    let store = state.store();
    let mut reported =
        conversions::page(store, None, Some(lead_id), None, id_paging::MAX_LIMIT).await?;
    reported.reverse();
    let detected = match ctwa_clid {
        Some(clid) => conversions::detected_for(store, clid).await?,
        None => Vec::new(),
    };
    Ok((
        reported.into_iter().map(Conversion::from).collect(),
        detected.into_iter().map(DetectedEvent::from).collect(),
    ))
}
