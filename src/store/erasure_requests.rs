//! Erasure requests (migration 0012): recorded when `DELETE /v1/contacts/{id}` comes, taken
//! oldest first by the eraser, and kept once done as the record of what was removed, never of
//! whose. The person's id is stored only while the request waits or runs, so that a restart
//! resumes it; the transaction that removes the leads clears it ([`super::erasure`]).

use sqlx::FromRow;

use super::Store;

/// One erasure request as stored.
#[derive(Debug, Clone, PartialEq, Eq, FromRow)]
pub struct ErasureRow {
    pub id: i64,
    pub requested_at: i64,
    pub started_at: Option<i64>,
    pub finished_at: Option<i64>,
    pub attempts: i64,
    pub last_error: Option<String>,
    pub leads: i64,
    pub raw_deliveries: i64,
    pub unreadable_raw_deliveries: i64,
}

const COLUMNS: &str = "id, requested_at, started_at, finished_at, attempts, last_error, leads, \
    raw_deliveries, unreadable_raw_deliveries";

/// A request the eraser is to carry out.
#[derive(Clone, PartialEq, Eq)]
pub struct Pending {
    pub id: i64,
    /// The wa_id or user_id to erase.
    pub subject: String,
}

// The subject is a person's id: never in a `Debug` print, so never in a log line.
impl std::fmt::Debug for Pending {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pending").field("id", &self.id).finish()
    }
}

/// Records a request to erase `subject`, or returns the one already waiting for it: a client
/// that repeats its request (after a 202, a time-out or a lost answer) does not queue a second
/// scan. A request the eraser has begun is not joined, since it may have searched the log
/// before the deliveries acknowledged since.
pub async fn request(store: &Store, subject: &str, now_ms: i64) -> Result<ErasureRow, sqlx::Error> {
    let turn = store.write_turn().await;
    let pool = turn.pool();
    let waiting: Option<ErasureRow> = sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM erasures \
         WHERE subject IS NOT NULL AND subject = ?1 AND started_at IS NULL ORDER BY id LIMIT 1"
    ))
    .bind(subject)
    .fetch_optional(pool)
    .await?;
    if let Some(row) = waiting {
        return Ok(row);
    }
    sqlx::query_as(&format!(
        "INSERT INTO erasures (subject, requested_at) VALUES (?1, ?2) RETURNING {COLUMNS}"
    ))
    .bind(subject)
    .bind(now_ms)
    .fetch_one(pool)
    .await
}

/// One request by id.
pub async fn by_id(store: &Store, id: i64) -> Result<Option<ErasureRow>, sqlx::Error> {
    sqlx::query_as(&format!("SELECT {COLUMNS} FROM erasures WHERE id = ?"))
        .bind(id)
        .fetch_optional(store.read_pool())
        .await
}

/// The oldest request not yet done, marked as begun (one attempt more).
pub async fn take_next(store: &Store, now_ms: i64) -> Result<Option<Pending>, sqlx::Error> {
    let turn = store.write_turn().await;
    sqlx::query_as::<_, (i64, String)>(
        "UPDATE erasures SET started_at = coalesce(started_at, ?1), attempts = attempts + 1 \
         WHERE id = (SELECT id FROM erasures WHERE subject IS NOT NULL ORDER BY id LIMIT 1) \
         RETURNING id, subject",
    )
    .bind(now_ms)
    .fetch_optional(turn.pool())
    .await
    .map(|row| row.map(|(id, subject)| Pending { id, subject }))
}

/// Why the last attempt at request `id` did not finish it (it stays pending, and is retried).
pub async fn attempt_failed(store: &Store, id: i64, error: &str) -> Result<(), sqlx::Error> {
    let turn = store.write_turn().await;
    sqlx::query("UPDATE erasures SET last_error = ?2 WHERE id = ?1")
        .bind(id)
        .bind(error)
        .execute(turn.pool())
        .await
        .map(drop)
}

/// A page of requests, newest first: `done` true for the finished ones only, false for the
/// pending ones only; ids below `before`.
pub async fn page(
    store: &Store,
    done: Option<bool>,
    before: Option<i64>,
    limit: u32,
) -> Result<Vec<ErasureRow>, sqlx::Error> {
    let mut q: sqlx::QueryBuilder<sqlx::Sqlite> =
        sqlx::QueryBuilder::new(format!("SELECT {COLUMNS} FROM erasures WHERE 1 = 1"));
    match done {
        Some(true) => q.push(" AND finished_at IS NOT NULL"),
        Some(false) => q.push(" AND finished_at IS NULL"),
        None => &mut q,
    };
    if let Some(b) = before {
        q.push(" AND id < ").push_bind(b);
    }
    q.push(" ORDER BY id DESC LIMIT ")
        .push_bind(i64::from(limit));
    q.build_query_as().fetch_all(store.read_pool()).await
}

/// How many requests are not yet done, and when the oldest of them came (unix ms).
pub async fn backlog(store: &Store) -> Result<(i64, Option<i64>), sqlx::Error> {
    sqlx::query_as("SELECT COUNT(*), MIN(requested_at) FROM erasures WHERE subject IS NOT NULL")
        .fetch_one(store.read_pool())
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_repeated_request_joins_one_not_yet_begun_but_not_one_under_way() {
        let dir = tempfile::tempdir().unwrap();
        let (store, writer) = super::super::test_store(dir.path()).await;
        let first = request(&store, "4915100000001", 1).await.unwrap();
        let again = request(&store, "4915100000001", 2).await.unwrap();
        assert_eq!(again.id, first.id, "waiting: joined");
        let other = request(&store, "4915100000002", 3).await.unwrap();
        assert_ne!(other.id, first.id);
        let taken = take_next(&store, 4).await.unwrap().unwrap();
        assert_eq!(taken.id, first.id, "oldest first");
        let later = request(&store, "4915100000001", 5).await.unwrap();
        assert_ne!(
            later.id, first.id,
            "under way, it may have searched the log already: a request of its own"
        );
        writer.shutdown().await;
    }
}
