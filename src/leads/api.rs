//! `/v1/leads`: list (filtered, keyset-paged, newest first), look up and count per ad and day
//! (the export is [`super::export`]). Query parameters are parsed here, at the edge, into a
//! [`LeadFilter`]; a bad one gets 400 naming it. All SQL is in `store::leads`.

use axum::extract::rejection::PathRejection;
use axum::extract::{OriginalUri, Path, State};
use axum::http::HeaderMap;
use axum::Json;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::app::AppState;
use crate::http::error::{ApiError, ErrorEnvelope};
use crate::http::id_paging::RowId;
use crate::http::query::Params;
use crate::store::leads::{self as q, Cursor, LeadFilter, LeadRow};

const DEFAULT_LIMIT: u32 = 50;
const MAX_LIMIT: u32 = 500;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_leads))
        .routes(routes!(super::export::export_leads))
        .routes(routes!(lead_stats))
        .routes(routes!(get_lead))
}

/// Filters shared by list, export and stats; all optional, combined with AND.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct FilterParams {
    /// The ad id (`referral.source_id`).
    source_id: Option<String>,
    /// The click id.
    ctwa_clid: Option<String>,
    /// The ad's `ref`.
    #[serde(rename = "ref")]
    #[param(rename = "ref")]
    ref_: Option<String>,
    /// `ad` or `post`.
    source_type: Option<String>,
    /// The sender's WhatsApp id.
    wa_id: Option<String>,
    /// The sender's business-scoped user id.
    user_id: Option<String>,
    phone_number_id: Option<String>,
    waba_id: Option<String>,
    /// Received at or after: RFC 3339 (or unix seconds).
    #[param(value_type = Option<String>, format = DateTime)]
    since: Option<String>,
    /// Received at or before: RFC 3339 (or unix seconds).
    #[param(value_type = Option<String>, format = DateTime)]
    until: Option<String>,
}

impl FilterParams {
    pub(super) fn into_filter(self) -> Result<LeadFilter, ApiError> {
        Ok(LeadFilter {
            since_ms: self
                .since
                .as_deref()
                .map(|v| parse_time("since", v))
                .transpose()?,
            until_ms: self
                .until
                .as_deref()
                .map(|v| parse_time("until", v))
                .transpose()?,
            source_id: self.source_id,
            ctwa_clid: self.ctwa_clid,
            ref_: self.ref_,
            source_type: self.source_type,
            wa_id: self.wa_id,
            user_id: self.user_id,
            phone_number_id: self.phone_number_id,
            waba_id: self.waba_id,
        })
    }
}

fn parse_time(name: &str, value: &str) -> Result<i64, ApiError> {
    super::parse_time(value).map_err(|why| ApiError::bad_request(format!("{name}: {why}")))
}

#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct PageParams {
    /// Leads per page, 1 to 500 (default 50).
    #[param(value_type = Option<u32>, minimum = 1, maximum = 500)]
    limit: Option<String>,
    /// The cursor from the previous page's `paging.cursors.after`.
    #[param(pattern = r"^[0-9]{1,15}\.[0-9]{1,18}$")]
    after: Option<String>,
}

fn parse_limit(value: Option<&str>) -> Result<u32, ApiError> {
    let Some(value) = value else {
        return Ok(DEFAULT_LIMIT);
    };
    match value.parse::<u32>() {
        Ok(n) if (1..=MAX_LIMIT).contains(&n) => Ok(n),
        _ => Err(ApiError::bad_request(format!(
            "limit: expected a whole number from 1 to {MAX_LIMIT}"
        ))),
    }
}

/// `{received_at_ms}.{id}`: plain, so the document can state its exact form.
fn encode_cursor(c: Cursor) -> String {
    format!("{}.{}", c.received_at_ms, c.id)
}

/// Reads a cursor; the base64 form earlier versions handed out is still accepted.
fn decode_cursor(value: &str) -> Result<Cursor, ApiError> {
    let bad = || ApiError::bad_request("after: not a cursor from a previous page");
    let legacy: String;
    let (at, id) = match value.split_once('.') {
        Some(parts) => parts,
        None => {
            let raw = URL_SAFE_NO_PAD.decode(value).map_err(|_| bad())?;
            legacy = String::from_utf8(raw).map_err(|_| bad())?;
            legacy.split_once(':').ok_or_else(bad)?
        }
    };
    // Both parts are non-negative as handed out (a time in ms, a lead id): a sign is forged.
    let part = |s: &str| match s.parse::<i64>() {
        Ok(n) if n >= 0 && !s.starts_with('+') => Ok(n),
        _ => Err(bad()),
    };
    Ok(Cursor {
        received_at_ms: part(at)?,
        id: part(id)?,
    })
}

/// A captured lead.
#[derive(Debug, Serialize, ToSchema)]
pub struct Lead {
    pub id: i64,
    /// The WhatsApp message id; unique.
    pub wamid: String,
    pub waba_id: Option<String>,
    pub phone_number_id: Option<String>,
    pub display_phone_number: Option<String>,
    pub wa_id: Option<String>,
    pub user_id: Option<String>,
    pub profile_name: Option<String>,
    pub message_type: Option<String>,
    pub text: Option<String>,
    /// Message time, RFC 3339 UTC.
    pub timestamp: Option<String>,
    /// When ctwa-leads received it, RFC 3339 UTC.
    pub received_at: String,
    pub referral: Referral,
}

/// The ad the lead came from.
#[derive(Debug, Serialize, ToSchema)]
pub struct Referral {
    pub source_url: Option<String>,
    pub source_id: Option<String>,
    pub source_type: Option<String>,
    pub headline: Option<String>,
    pub body: Option<String>,
    pub media_type: Option<String>,
    pub image_url: Option<String>,
    pub video_url: Option<String>,
    pub thumbnail_url: Option<String>,
    pub ctwa_clid: Option<String>,
    #[serde(rename = "ref")]
    #[schema(rename = "ref")]
    pub ref_: Option<String>,
    pub welcome_message: Option<WelcomeMessage>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct WelcomeMessage {
    pub text: String,
}

pub(super) fn rfc3339_secs(secs: i64) -> Option<String> {
    DateTime::<Utc>::from_timestamp(secs, 0).map(|t| t.to_rfc3339_opts(SecondsFormat::Secs, true))
}

pub(super) fn rfc3339_millis(ms: i64) -> String {
    DateTime::<Utc>::from_timestamp_millis(ms)
        .map(|t| t.to_rfc3339_opts(SecondsFormat::Millis, true))
        .unwrap_or_default()
}

impl From<LeadRow> for Lead {
    fn from(r: LeadRow) -> Self {
        Lead {
            id: r.id,
            wamid: r.wamid,
            waba_id: r.waba_id,
            phone_number_id: r.phone_number_id,
            display_phone_number: r.display_phone_number,
            wa_id: r.wa_id,
            user_id: r.user_id,
            profile_name: r.profile_name,
            message_type: r.message_type,
            text: r.text,
            timestamp: r.timestamp.and_then(rfc3339_secs),
            received_at: rfc3339_millis(r.received_at),
            referral: Referral {
                source_url: r.source_url,
                source_id: r.source_id,
                source_type: r.source_type,
                headline: r.headline,
                body: r.body,
                media_type: r.media_type,
                image_url: r.image_url,
                video_url: r.video_url,
                thumbnail_url: r.thumbnail_url,
                ctwa_clid: r.ctwa_clid,
                ref_: r.ref_,
                welcome_message: r.welcome_message.map(|text| WelcomeMessage { text }),
            },
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct LeadPage {
    pub data: Vec<Lead>,
    pub paging: Paging,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Paging {
    pub cursors: Cursors,
    /// The next page's URL; absent on the last page.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Cursors {
    /// Pass as `after` for the next page; absent on the last page.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub after: Option<String>,
}

/// Parameters each route takes.
pub(super) const FILTERS: &[&str] = &[
    "source_id",
    "ctwa_clid",
    "ref",
    "source_type",
    "wa_id",
    "user_id",
    "phone_number_id",
    "waba_id",
    "since",
    "until",
];
/// What list and export take besides the filters.
const PAGING: &[&str] = &["limit", "after"];
pub(super) const FORMAT: &[&str] = &["format"];

/// Lists leads, newest first, with filters and cursor paging.
#[utoipa::path(
    get,
    path = "/v1/leads",
    tag = "leads",
    security(("bearer" = [])),
    params(FilterParams, PageParams),
    responses(
        (status = 200, body = LeadPage),
        (status = 400, description = "A bad limit, time or cursor", body = ErrorEnvelope),
        (status = 401, body = ErrorEnvelope),
    )
)]
async fn list_leads(
    State(state): State<AppState>,
    OriginalUri(uri): OriginalUri,
    headers: HeaderMap,
    params: Params,
) -> Result<Json<LeadPage>, ApiError> {
    params.only_in(&[FILTERS, PAGING])?;
    let filter = params.to::<FilterParams>()?.into_filter()?;
    let paging: PageParams = params.to()?;
    let limit = parse_limit(paging.limit.as_deref())?;
    let before = paging.after.as_deref().map(decode_cursor).transpose()?;
    // One extra row says whether another page exists.
    let mut rows = q::page(state.store(), &filter, before, limit + 1)
        .await
        .map_err(ApiError::database)?;
    let more = rows.len() > limit as usize;
    rows.truncate(limit as usize);
    let after = more
        .then(|| rows.last().map(|r| encode_cursor(r.cursor())))
        .flatten();
    let next = after.as_deref().map(|a| {
        state
            .links()
            .page(&headers, uri.path(), &params, ("after", a))
    });
    Ok(Json(LeadPage {
        data: rows.into_iter().map(Lead::from).collect(),
        paging: Paging {
            cursors: Cursors { after },
            next,
        },
    }))
}

/// One lead by id.
#[utoipa::path(
    get,
    path = "/v1/leads/{id}",
    tag = "leads",
    security(("bearer" = [])),
    params(("id" = i64, Path, description = "The lead's id")),
    responses(
        (status = 200, body = LeadDetail),
        (status = 404, body = ErrorEnvelope),
        (status = 401, body = ErrorEnvelope),
    )
)]
async fn get_lead(
    State(state): State<AppState>,
    id: Result<Path<String>, PathRejection>,
) -> Result<Json<LeadDetail>, ApiError> {
    let id = RowId::read(id, "lead")?;
    let row = q::by_id(state.store(), id.id)
        .await
        .map_err(ApiError::database)?
        .ok_or_else(|| id.not_found())?;
    let (conversions, detected_events) =
        crate::capi::api::events_of(&state, row.id, row.ctwa_clid.as_deref())
            .await
            .map_err(ApiError::database)?;
    Ok(Json(LeadDetail {
        lead: Lead::from(row),
        conversions,
        detected_events,
    }))
}

/// One lead, with what was reported to Meta about it and what Meta detected itself.
#[derive(Debug, Serialize, ToSchema)]
pub struct LeadDetail {
    #[serde(flatten)]
    pub lead: Lead,
    /// Conversion events reported for this lead (`POST /v1/leads/{id}/conversions`, or
    /// `capi.auto_lead_submitted`), oldest first, with their status.
    pub conversions: Vec<crate::capi::api::Conversion>,
    /// Events Meta detected in the chat (`automatic_events` webhooks) with this lead's
    /// `ctwa_clid`.
    pub detected_events: Vec<crate::capi::api::DetectedEvent>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Stats {
    pub data: Vec<Stat>,
}

/// Leads from one ad on one UTC day.
#[derive(Debug, Serialize, ToSchema)]
pub struct Stat {
    pub source_id: Option<String>,
    /// `YYYY-MM-DD`, UTC, by received time.
    pub day: String,
    pub leads: i64,
}

/// Leads counted per ad (`source_id`) and per day, within the filters.
#[utoipa::path(
    get,
    path = "/v1/leads/stats",
    tag = "leads",
    security(("bearer" = [])),
    params(FilterParams),
    responses(
        (status = 200, body = Stats),
        (status = 400, body = ErrorEnvelope),
        (status = 401, body = ErrorEnvelope),
    )
)]
async fn lead_stats(
    State(state): State<AppState>,
    params: Params,
) -> Result<Json<Stats>, ApiError> {
    params.only(FILTERS)?;
    let filter = params.to::<FilterParams>()?.into_filter()?;
    let rows = q::stats(state.store(), &filter)
        .await
        .map_err(ApiError::database)?;
    Ok(Json(Stats {
        data: rows
            .into_iter()
            .map(|r| Stat {
                source_id: r.source_id,
                day: r.day,
                leads: r.leads,
            })
            .collect(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_garbage_is_refused() {
        let c = Cursor {
            received_at_ms: 1_732_262_400_123,
            id: 42,
        };
        assert_eq!(decode_cursor(&encode_cursor(c)).unwrap(), c);
        for bad in [
            "",
            "!!",
            "MTIz",
            &URL_SAFE_NO_PAD.encode("a:b"),
            "-5.-5",
            "1732262400123.-1",
            "+1.2",
            &URL_SAFE_NO_PAD.encode("-1:42"),
        ] {
            assert!(decode_cursor(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn times_parse_as_rfc3339_or_unix_seconds() {
        assert_eq!(
            parse_time("since", "1732262400").unwrap(),
            1_732_262_400_000
        );
        assert_eq!(
            parse_time("since", "2024-11-22T08:00:00Z").unwrap(),
            1_732_262_400_000
        );
        assert_eq!(
            parse_time("since", "2024-11-22T09:00:00+01:00").unwrap(),
            1_732_262_400_000
        );
        let err = parse_time("until", "yesterday").unwrap_err();
        assert!(err.to_string().starts_with("until:"));
    }

    #[test]
    fn limit_bounds() {
        assert_eq!(parse_limit(None).unwrap(), 50);
        assert_eq!(parse_limit(Some("500")).unwrap(), 500);
        for bad in ["0", "501", "-1", "ten", ""] {
            assert!(parse_limit(Some(bad)).is_err(), "{bad}");
        }
    }
}
