//! What the conversion routes show: a reported event with its status and Graph's error, and an
//! event Meta detected itself; built from the stored rows.

use chrono::{DateTime, SecondsFormat, Utc};
use serde::Serialize;
use serde_json::Value;
use utoipa::ToSchema;

use crate::store::conversions::{ConversionRow, DetectedRow};

/// A conversion event and what became of it.
#[derive(Debug, Serialize, ToSchema)]
pub struct Conversion {
    pub id: i64,
    /// Meta deduplicates on it: by default `ctwa-leads.{lead_id}.{event_name}`.
    pub event_id: String,
    pub lead_id: i64,
    pub event_name: String,
    /// When it happened, RFC 3339 UTC.
    pub event_time: String,
    pub value: Option<f64>,
    pub currency: Option<String>,
    /// `pending`, `sent` or `failed`.
    pub status: String,
    pub attempts: i64,
    /// When the next attempt is due (pending only), RFC 3339 UTC.
    pub next_attempt_at: Option<String>,
    /// Why the last attempt did not succeed (Graph's error when Graph answered).
    pub error: Option<ConversionError>,
    /// Graph's trace id of the last answer.
    pub fbtrace_id: Option<String>,
    pub created_at: String,
    pub updated_at: String,
}

/// Graph's error, as kept on a conversion.
#[derive(Debug, Serialize, ToSchema)]
pub struct ConversionError {
    /// The HTTP status Graph answered with; absent when there was no answer or the event was
    /// refused before sending.
    pub status: Option<i64>,
    pub message: String,
    pub code: Option<i64>,
    pub subcode: Option<i64>,
}

fn rfc3339_ms(ms: i64) -> String {
    DateTime::<Utc>::from_timestamp_millis(ms)
        .map(|t| t.to_rfc3339_opts(SecondsFormat::Millis, true))
        .unwrap_or_default()
}

impl From<ConversionRow> for Conversion {
    fn from(r: ConversionRow) -> Self {
        let error = r.last_error.map(|message| ConversionError {
            status: r.last_status_code,
            message,
            code: r.error_code,
            subcode: r.error_subcode,
        });
        Conversion {
            id: r.id,
            event_id: r.event_id,
            lead_id: r.lead_id,
            event_name: r.event_name,
            event_time: rfc3339_ms(r.event_time * 1000),
            value: r.value,
            currency: r.currency,
            next_attempt_at: (r.status == "pending")
                .then_some(r.next_attempt_at)
                .flatten()
                .map(rfc3339_ms),
            status: r.status,
            attempts: r.attempts,
            error,
            fbtrace_id: r.fbtrace_id,
            created_at: rfc3339_ms(r.created_at),
            updated_at: rfc3339_ms(r.updated_at),
        }
    }
}

/// An event Meta detected itself in the chat (`automatic_events` webhook).
#[derive(Debug, Serialize, ToSchema)]
pub struct DetectedEvent {
    /// Meta's id of the event.
    pub id: String,
    pub event_name: String,
    /// Meta's timestamp, RFC 3339 UTC.
    pub timestamp: Option<String>,
    pub ctwa_clid: Option<String>,
    /// As Meta sent it (for purchases: currency and value).
    #[schema(value_type = Option<Object>)]
    pub custom_data: Option<Value>,
    pub received_at: String,
}

impl From<DetectedRow> for DetectedEvent {
    fn from(r: DetectedRow) -> Self {
        DetectedEvent {
            id: r.id,
            event_name: r.event_name,
            timestamp: r.event_time.map(|s| rfc3339_ms(s * 1000)),
            ctwa_clid: r.ctwa_clid,
            custom_data: r.custom_data.and_then(|c| serde_json::from_str(&c).ok()),
            received_at: rfc3339_ms(r.received_at),
        }
    }
}
