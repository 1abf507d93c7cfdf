//! Row ids in the API. Paging by row id, newest first, as the id-ordered listings
//! (`/v1/deliveries`, `/v1/conversions`, `/v1/erasures`) do it: `limit` (1–500, default 50) and
//! `after`, the previous page's last id. [`Request`] reads both from the query;
//! [`Request::finish`] trims the extra row fetched to learn whether another page exists, and
//! builds the `paging` object with its `next` link. [`RowId`] reads one row's id from the path.

use axum::extract::rejection::PathRejection;
use axum::extract::Path;
use axum::http::HeaderMap;

use crate::app::AppState;
use crate::http::error::ApiError;
use crate::http::query::Params;
use crate::leads::api::{Cursors, Paging};

pub const DEFAULT_LIMIT: u32 = 50;
pub const MAX_LIMIT: u32 = 500;

/// A whole number of at least `min`, for a query parameter named `name`.
pub fn whole(name: &str, value: &str, min: i64) -> Result<i64, ApiError> {
    value
        .parse::<i64>()
        .ok()
        .filter(|n| *n >= min)
        .ok_or_else(|| ApiError::bad_request(format!("{name}: expected a whole number from {min}")))
}

/// One page's request: how many rows, and below which id.
#[derive(Debug, Clone, Copy)]
pub struct Request {
    pub limit: u32,
    /// Rows with ids below this one (the previous page's last).
    pub before: Option<i64>,
}

impl Request {
    pub fn read(limit: Option<&str>, after: Option<&str>) -> Result<Self, ApiError> {
        let limit = match limit {
            None => DEFAULT_LIMIT,
            Some(v) => v
                .parse::<u32>()
                .ok()
                .filter(|n| (1..=MAX_LIMIT).contains(n))
                .ok_or_else(|| {
                    ApiError::bad_request(format!(
                        "limit: expected a whole number from 1 to {MAX_LIMIT}"
                    ))
                })?,
        };
        let before = after
            .map(|v| whole("after", v, 0))
            .transpose()
            .map_err(|_| ApiError::bad_request("after: not a cursor from a previous page"))?;
        Ok(Self { limit, before })
    }

    /// Rows to fetch: one more than the page, to learn whether another follows.
    pub fn fetch(&self) -> u32 {
        self.limit + 1
    }

    /// The page's rows (the extra one dropped) and its paging object.
    pub fn finish<R>(
        &self,
        mut rows: Vec<R>,
        id: impl Fn(&R) -> i64,
        state: &AppState,
        headers: &HeaderMap,
        path: &str,
        params: &Params,
    ) -> (Vec<R>, Paging) {
        let more = rows.len() > self.limit as usize;
        rows.truncate(self.limit as usize);
        let after = more
            .then(|| rows.last().map(|r| id(r).to_string()))
            .flatten();
        let next = after
            .as_deref()
            .map(|a| state.links().page(headers, path, params, ("after", a)));
        (
            rows,
            Paging {
                cursors: Cursors { after },
                next,
            },
        )
    }
}

/// One row's id from the request path (`/v1/leads/{id}`, `/v1/deliveries/{id}`, …). A path
/// that is not a whole number names no row: 404, as an unknown id gets.
#[derive(Debug)]
pub struct RowId {
    pub id: i64,
    /// The id as the client wrote it, for the message.
    text: String,
    /// What the row is, for the message ("lead", "delivery").
    what: &'static str,
}

impl RowId {
    pub fn read(
        path: Result<Path<String>, PathRejection>,
        what: &'static str,
    ) -> Result<Self, ApiError> {
        let Path(text) = path?;
        match text.parse::<i64>() {
            Ok(id) => Ok(Self { id, text, what }),
            Err(_) => Err(no_row(what, &text)),
        }
    }

    /// 404: no such row.
    pub fn not_found(&self) -> ApiError {
        no_row(self.what, &self.text)
    }
}

fn no_row(what: &str, text: &str) -> ApiError {
    ApiError::not_found(format!("no {what} with id {text}"))
}
