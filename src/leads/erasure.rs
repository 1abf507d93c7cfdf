//! `DELETE /v1/contacts/{wa_id_or_user_id}`: erasure on request (GDPR art. 17). Removes the
//! person's leads and every raw delivery that mentions them, answers with the counts, and writes
//! one audit log line that carries no personal data.

use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::Json;
use tracing::Instrument;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::app::AppState;
use crate::http::error::{ApiError, ErrorEnvelope};
use crate::store::erasure::Erased;
use crate::store::StoreError;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(erase_contact))
}

/// Longest id accepted; a wa_id is a phone number, a BSUID is short too.
const MAX_ID: usize = 128;

/// Erases one person: their leads (by `wa_id` or BSUID `user_id`) and every stored raw delivery
/// that mentions them, as acknowledged before the request (it waits for the projection to take
/// those in, about a second under full load). A batch delivery is removed whole; the other
/// people's leads from it stay.
#[utoipa::path(
    delete,
    path = "/v1/contacts/{id}",
    tag = "leads",
    security(("bearer" = [])),
    params(("id" = String, Path, description = "The person's wa_id or business-scoped user_id")),
    responses(
        (status = 200, description = "What was removed (zero counts when nothing was stored)", body = Erased),
        (status = 400, description = "An empty, over-long or non-UTF-8 id, or one with control characters", body = ErrorEnvelope),
        (status = 401, body = ErrorEnvelope),
        (status = 503, description = "The database did not answer, or the projection is stuck behind the log; nothing was removed", body = ErrorEnvelope, headers(("Retry-After" = String, description = "Seconds to wait before retrying"))),
    )
)]
async fn erase_contact(
    State(state): State<AppState>,
    id: Result<Path<String>, PathRejection>,
) -> Result<Json<Erased>, ApiError> {
    let Path(id) = id?;
    // No stored wa_id or user_id holds one (a NUL, a tab, a line break): a typo or a broken
    // client, told so rather than answered with zero counts as if the person were erased.
    if id.chars().any(char::is_control) {
        return Err(ApiError::bad_request(
            "id: a wa_id or user_id has no control characters",
        ));
    }
    let id = id.trim_matches(' ').to_owned();
    if id.is_empty() || id.chars().count() > MAX_ID {
        return Err(ApiError::bad_request(format!(
            "id: expected a wa_id or user_id of 1 to {MAX_ID} characters"
        )));
    }
    // The wait for the projection gets a third of the request's time: the scan needs the rest.
    let catch_up = state.request_timeout() / 3;
    let store = state.store().clone();
    // A task of its own: once begun, an erasure finishes and leaves its audit line even if the
    // request is timed out or its client goes away (a large log takes a while to scan).
    let erasure = tokio::spawn(
        async move {
            let erased = store.erase_contact(id, catch_up).await?;
            // The audit trail: that an erasure happened and what it removed, never whose.
            tracing::info!(
                target: "audit",
                leads = erased.leads,
                raw_deliveries = erased.raw_deliveries,
                unreadable_raw_deliveries = erased.unreadable_raw_deliveries,
                "erasure request carried out"
            );
            Ok::<_, StoreError>(erased)
        }
        .instrument(tracing::Span::current()),
    );
    let erased = erasure
        .await
        .map_err(ApiError::internal)?
        .map_err(|err| match err {
            StoreError::ProjectionBehind => ApiError::unavailable(
                "the projection is behind the log; nothing was removed, retry later",
                err,
            ),
            err => ApiError::database(err),
        })?;
    Ok(Json(erased))
}
