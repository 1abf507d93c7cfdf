//! `GET /v1/leads/export`: every lead matching the list's filters, streamed a page at a time
//! as CSV (RFC 4180, CRLF, referral fields flattened, formula-like cells neutralised) or
//! NDJSON (each line exactly the lead the list returns), so memory stays flat however many
//! rows match.

use std::borrow::Cow;

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use chrono::Utc;
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use utoipa::IntoParams;

use super::api::{rfc3339_millis, rfc3339_secs, FilterParams, Lead, FILTERS, FORMAT};
use crate::app::AppState;
use crate::http::error::{ApiError, ErrorEnvelope};
use crate::http::query::Params;
use crate::store::leads::{self as q, LeadRow};

/// Leads read from the database per streamed chunk.
const EXPORT_PAGE: u32 = 1000;

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ExportParams {
    /// `csv` (default) or `ndjson`.
    format: Option<String>,
}

/// One row per lead, referral fields flattened: the CSV export's columns. Text cells are
/// neutralised against formula injection (see [`neutralize`]).
#[derive(Serialize)]
struct FlatLead<'a> {
    id: i64,
    wamid: Cow<'a, str>,
    waba_id: Option<Cow<'a, str>>,
    phone_number_id: Option<Cow<'a, str>>,
    display_phone_number: Option<Cow<'a, str>>,
    wa_id: Option<Cow<'a, str>>,
    user_id: Option<Cow<'a, str>>,
    profile_name: Option<Cow<'a, str>>,
    message_type: Option<Cow<'a, str>>,
    text: Option<Cow<'a, str>>,
    timestamp: Option<String>,
    received_at: String,
    source_url: Option<Cow<'a, str>>,
    source_id: Option<Cow<'a, str>>,
    source_type: Option<Cow<'a, str>>,
    headline: Option<Cow<'a, str>>,
    body: Option<Cow<'a, str>>,
    media_type: Option<Cow<'a, str>>,
    image_url: Option<Cow<'a, str>>,
    video_url: Option<Cow<'a, str>>,
    thumbnail_url: Option<Cow<'a, str>>,
    ctwa_clid: Option<Cow<'a, str>>,
    #[serde(rename = "ref")]
    ref_: Option<Cow<'a, str>>,
    welcome_message: Option<Cow<'a, str>>,
}

impl<'a> From<&'a LeadRow> for FlatLead<'a> {
    fn from(r: &'a LeadRow) -> Self {
        FlatLead {
            id: r.id,
            wamid: neutralize(&r.wamid),
            waba_id: cell(r.waba_id.as_deref()),
            phone_number_id: cell(r.phone_number_id.as_deref()),
            display_phone_number: cell(r.display_phone_number.as_deref()),
            wa_id: cell(r.wa_id.as_deref()),
            user_id: cell(r.user_id.as_deref()),
            profile_name: cell(r.profile_name.as_deref()),
            message_type: cell(r.message_type.as_deref()),
            text: cell(r.text.as_deref()),
            timestamp: r.timestamp.and_then(rfc3339_secs),
            received_at: rfc3339_millis(r.received_at),
            source_url: cell(r.source_url.as_deref()),
            source_id: cell(r.source_id.as_deref()),
            source_type: cell(r.source_type.as_deref()),
            headline: cell(r.headline.as_deref()),
            body: cell(r.body.as_deref()),
            media_type: cell(r.media_type.as_deref()),
            image_url: cell(r.image_url.as_deref()),
            video_url: cell(r.video_url.as_deref()),
            thumbnail_url: cell(r.thumbnail_url.as_deref()),
            ctwa_clid: cell(r.ctwa_clid.as_deref()),
            ref_: cell(r.ref_.as_deref()),
            welcome_message: cell(r.welcome_message.as_deref()),
        }
    }
}

/// A cell that a spreadsheet would run as a formula (it starts with `=`, `+`, `-`, `@`, a tab
/// or a carriage return) gets a leading `'`, as OWASP recommends: WhatsApp users choose their
/// profile name and message text. Only the CSV export does this; JSON and NDJSON stay exact.
pub fn neutralize(value: &str) -> Cow<'_, str> {
    if value.starts_with(['=', '+', '-', '@', '\t', '\r']) {
        Cow::Owned(format!("'{value}"))
    } else {
        Cow::Borrowed(value)
    }
}

fn cell(value: Option<&str>) -> Option<Cow<'_, str>> {
    value.map(neutralize)
}

const CSV_HEADER: &str = "id,wamid,waba_id,phone_number_id,display_phone_number,wa_id,user_id,\
profile_name,message_type,text,timestamp,received_at,source_url,source_id,source_type,headline,\
body,media_type,image_url,video_url,thumbnail_url,ctwa_clid,ref,welcome_message\r\n";

#[derive(Clone, Copy)]
enum Format {
    Csv,
    Ndjson,
}

fn encode_page(format: Format, rows: Vec<LeadRow>) -> Result<Bytes, std::io::Error> {
    match format {
        Format::Csv => {
            // RFC 4180 line endings, like the header row.
            let mut w = csv::WriterBuilder::new()
                .has_headers(false)
                .terminator(csv::Terminator::CRLF)
                .from_writer(Vec::with_capacity(rows.len() * 512));
            for row in &rows {
                w.serialize(FlatLead::from(row))
                    .map_err(std::io::Error::other)?;
            }
            w.into_inner()
                .map(Bytes::from)
                .map_err(|e| std::io::Error::other(e.to_string()))
        }
        Format::Ndjson => {
            let mut out = Vec::with_capacity(rows.len() * 700);
            for row in rows {
                serde_json::to_writer(&mut out, &Lead::from(row))?;
                out.push(b'\n');
            }
            Ok(Bytes::from(out))
        }
    }
}

/// Streams every matching lead as CSV (a header row, referral fields flattened) or NDJSON.
#[utoipa::path(
    get,
    path = "/v1/leads/export",
    tag = "leads",
    security(("bearer" = [])),
    params(ExportParams, FilterParams),
    responses(
        (status = 200, description = "CSV (RFC 4180, CRLF; formula-like cells prefixed with `'`) or NDJSON, streamed", content(
            (String = "text/csv"),
            (String = "application/x-ndjson"),
        )),
        (status = 400, body = ErrorEnvelope),
        (status = 401, body = ErrorEnvelope),
    )
)]
pub(super) async fn export_leads(
    State(state): State<AppState>,
    params: Params,
) -> Result<Response, ApiError> {
    params.only_in(&[FILTERS, FORMAT])?;
    let (format, content_type, ext) = match params.to::<ExportParams>()?.format.as_deref() {
        None | Some("csv") => (Format::Csv, "text/csv; charset=utf-8", "csv"),
        Some("ndjson") => (Format::Ndjson, "application/x-ndjson", "ndjson"),
        Some(_) => return Err(ApiError::bad_request("format: expected csv or ndjson")),
    };
    let filter = params.to::<FilterParams>()?.into_filter()?;
    let pages = q::pages(state.store().clone(), filter, EXPORT_PAGE);
    let header = match format {
        Format::Csv => Some(Ok(Bytes::from_static(CSV_HEADER.as_bytes()))),
        Format::Ndjson => None,
    };
    let body = futures_util::stream::iter(header).chain(pages.map(move |page| {
        let rows = page.map_err(|err| {
            // The status line is gone; ending the stream early tells the client.
            tracing::error!(%err, "export stopped: the database failed");
            std::io::Error::other("database error")
        })?;
        encode_page(format, rows)
    }));
    let filename = format!("leads-{}.{ext}", Utc::now().format("%Y%m%dT%H%M%SZ"));
    Ok((
        [
            (header::CONTENT_TYPE, content_type.to_owned()),
            (
                header::CONTENT_DISPOSITION,
                format!("attachment; filename=\"{filename}\""),
            ),
        ],
        Body::from_stream(body),
    )
        .into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formula_cells_are_neutralised() {
        for risky in [
            "=HYPERLINK(\"http://evil\",\"click\")",
            "+1",
            "-2",
            "@SUM(A1)",
            "\tx",
            "\rx",
        ] {
            assert_eq!(neutralize(risky), format!("'{risky}"));
        }
        for plain in ["Jane", "4915112345678", "a=b", ""] {
            assert_eq!(neutralize(plain), plain);
        }
    }
}
