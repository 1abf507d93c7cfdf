//! Reading leads: the row type, look-ups, filtered keyset pages, the export stream and stats.
//! Pages walk `(received_at, id)` downwards, newest first, and the cursor is the last pair seen.
//! Rows present when a walk starts never move, so following cursors visits each exactly once;
//! every filter column has a `(column, received_at)` index (the click id: its last 16 characters),
//! so a page reads an index in order.

use futures_util::stream::BoxStream;
use futures_util::StreamExt;
use sqlx::{FromRow, QueryBuilder, Sqlite, SqlitePool};

use super::Store;

/// A stored lead, as the database holds it.
#[derive(Debug, Clone, FromRow, PartialEq, Eq)]
pub struct LeadRow {
    pub id: i64,
    pub wamid: String,
    pub waba_id: Option<String>,
    pub phone_number_id: Option<String>,
    pub display_phone_number: Option<String>,
    pub wa_id: Option<String>,
    pub user_id: Option<String>,
    pub profile_name: Option<String>,
    pub message_type: Option<String>,
    pub text: Option<String>,
    pub timestamp: Option<i64>,
    pub received_at: i64,
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
    #[sqlx(rename = "ref")]
    pub ref_: Option<String>,
    pub welcome_message: Option<String>,
}

pub(super) const COLUMNS: &str =
    "id, wamid, waba_id, phone_number_id, display_phone_number, wa_id, user_id, \
    profile_name, message_type, text, timestamp, received_at, source_url, source_id, \
    source_type, headline, body, media_type, image_url, video_url, thumbnail_url, ctwa_clid, \
    ref, welcome_message";

/// Filters shared by list, export and stats. Every field is optional; set ones combine (AND).
#[derive(Debug, Clone, Default)]
pub struct LeadFilter {
    pub source_id: Option<String>,
    pub ctwa_clid: Option<String>,
    pub ref_: Option<String>,
    pub source_type: Option<String>,
    pub wa_id: Option<String>,
    pub user_id: Option<String>,
    pub phone_number_id: Option<String>,
    pub waba_id: Option<String>,
    /// Received at or after, unix milliseconds.
    pub since_ms: Option<i64>,
    /// Received at or before, unix milliseconds.
    pub until_ms: Option<i64>,
}

/// The id range of a lead in the contact indexes (`leads_*_by_range`): `id >> 14`, 16,384 leads a
/// range, written exactly as migration 0008 creates them so that SQLite matches the expression.
macro_rules! id_range {
    () => {
        concat!("(id >> ", range_shift!(), ")")
    };
}

/// The shift of [`id_range!`]; the migration's text must match it (a planner test checks).
macro_rules! range_shift {
    () => {
        "14"
    };
}

/// Every id range, newest first, as the recursive CTE `r`. A contact's leads are spread over the
/// ranges (122 at 2M leads), so a look-up searches each; in return the projector's inserts stay
/// inside the newest range, whose leaves stay cached (migrations 0007 and 0008 say why).
macro_rules! id_ranges {
    () => {
        concat!(
            "r(x) AS (SELECT (SELECT max(id) FROM leads) >> ",
            range_shift!(),
            " UNION ALL SELECT x - 1 FROM r WHERE x > 0)"
        )
    };
}
const ID_RANGES: &str = concat!("(WITH RECURSIVE ", id_ranges!(), " SELECT x FROM r)");

/// The ids of every lead of one contact (`?1`, a `wa_id` or a BSUID `user_id`), through the two
/// contact indexes, over one list of the id ranges.
pub(super) const CONTACT_LEAD_IDS: &str = concat!(
    "WITH RECURSIVE ",
    id_ranges!(),
    " SELECT id FROM leads INDEXED BY leads_wa_id_by_range WHERE ",
    id_range!(),
    " IN r AND wa_id = ?1 UNION SELECT id FROM leads INDEXED BY leads_user_id_by_range WHERE ",
    id_range!(),
    " IN r AND user_id = ?1"
);

/// A query's text for the lead with the wamid `?1`, selecting `$columns`: the wamid's index
/// (migration 0009) searched in every id range.
macro_rules! wamid_search {
    ($columns:literal) => {
        concat!(
            "WITH RECURSIVE ",
            id_ranges!(),
            " SELECT ",
            $columns,
            " FROM leads INDEXED BY leads_wamid_by_range WHERE ",
            id_range!(),
            " IN r AND wamid = ?1"
        )
    };
}

/// `1` when the wamid `?1` is stored.
pub(super) const WAMID_STORED: &str = concat!(wamid_search!("1"), " LIMIT 1");

/// The one contact key a filter is looked up by, when it has any: the click id (one lead), else
/// the `wa_id`, else the `user_id`. The others, if also given, are compared on the rows found.
#[derive(Clone, Copy, PartialEq, Eq)]
enum ContactKey {
    Clid,
    WaId,
    UserId,
}

impl LeadFilter {
    fn contact_key(&self) -> Option<ContactKey> {
        if self.ctwa_clid.is_some() {
            Some(ContactKey::Clid)
        } else if self.wa_id.is_some() {
            Some(ContactKey::WaId)
        } else if self.user_id.is_some() {
            Some(ContactKey::UserId)
        } else {
            None
        }
    }

    /// Appends ` FROM leads WHERE …` to `q`; `before` adds the keyset bound. A contact key
    /// (click id, `wa_id`, `user_id`) names its index, so that no estimate of the planner's
    /// (after an operator's `ANALYZE`, say) can trade it for a walk of `received_at` that reads
    /// rows until one matches; its matches, one contact's leads, are sorted.
    fn push_from_where<'a>(&'a self, q: &mut QueryBuilder<'a, Sqlite>, before: Option<Cursor>) {
        q.push(" FROM leads");
        let key = self.contact_key();
        let mut sep = " WHERE ";
        if let Some(key) = key {
            let index = match key {
                ContactKey::Clid => "leads_ctwa_clid_tail_by_range",
                ContactKey::WaId => "leads_wa_id_by_range",
                ContactKey::UserId => "leads_user_id_by_range",
            };
            q.push(" INDEXED BY ")
                .push(index)
                .push(concat!(" WHERE ", id_range!(), " IN "))
                .push(ID_RANGES);
            sep = " AND ";
        }
        if let Some(clid) = &self.ctwa_clid {
            q.push(sep);
            push_clid(q, clid);
            sep = " AND ";
        }
        let equals = [
            ("source_id", &self.source_id),
            ("ref", &self.ref_),
            ("source_type", &self.source_type),
            ("wa_id", &self.wa_id),
            ("user_id", &self.user_id),
            ("phone_number_id", &self.phone_number_id),
            ("waba_id", &self.waba_id),
        ];
        for (column, value) in equals {
            if let Some(value) = value {
                q.push(sep)
                    .push(column)
                    .push(" = ")
                    .push_bind(value.as_str());
                sep = " AND ";
            }
        }
        if let Some(since) = self.since_ms {
            q.push(sep).push("received_at >= ").push_bind(since);
            sep = " AND ";
        }
        if let Some(until) = self.until_ms {
            q.push(sep).push("received_at <= ").push_bind(until);
            sep = " AND ";
        }
        if let Some(c) = before {
            q.push(sep)
                .push("(received_at, id) < (")
                .push_bind(c.received_at_ms)
                .push(", ")
                .push_bind(c.id)
                .push(")");
        }
    }
}

/// The `WHERE` condition for one click id: its last 16 characters, which
/// `leads_ctwa_clid_tail_by_range` indexes (the expression written exactly as the index has it,
/// and compared with a bound value: the planner does not match `substr(?, -16)`), and then the
/// whole value. That one is written
/// `+ctwa_clid`: a plain `ctwa_clid = ?` lets SQLite (3.40's shell, at least) propagate the
/// constant into `substr(ctwa_clid, -16)`, which then no longer matches the index, and the
/// look-up becomes a scan.
fn push_clid<'a>(q: &mut QueryBuilder<'a, Sqlite>, clid: &'a str) {
    q.push("substr(ctwa_clid, -16) = ")
        .push_bind(clid_tail(clid))
        .push(" AND +ctwa_clid = ")
        .push_bind(clid);
}

/// What SQLite's `substr(value, -16)` gives for a text value: its last 16 characters (code
/// points, not bytes), or all of it if shorter.
fn clid_tail(clid: &str) -> &str {
    match clid.char_indices().rev().nth(15) {
        Some((at, _)) => &clid[at..],
        None => clid,
    }
}

/// A position in the newest-first order: the last lead a page returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cursor {
    pub received_at_ms: i64,
    pub id: i64,
}

impl LeadRow {
    /// The lead from a rusqlite row holding [`COLUMNS`] in order from column `at`.
    pub(super) fn from_rusqlite(row: &rusqlite::Row<'_>, at: usize) -> rusqlite::Result<Self> {
        Ok(Self {
            id: row.get(at)?,
            wamid: row.get(at + 1)?,
            waba_id: row.get(at + 2)?,
            phone_number_id: row.get(at + 3)?,
            display_phone_number: row.get(at + 4)?,
            wa_id: row.get(at + 5)?,
            user_id: row.get(at + 6)?,
            profile_name: row.get(at + 7)?,
            message_type: row.get(at + 8)?,
            text: row.get(at + 9)?,
            timestamp: row.get(at + 10)?,
            received_at: row.get(at + 11)?,
            source_url: row.get(at + 12)?,
            source_id: row.get(at + 13)?,
            source_type: row.get(at + 14)?,
            headline: row.get(at + 15)?,
            body: row.get(at + 16)?,
            media_type: row.get(at + 17)?,
            image_url: row.get(at + 18)?,
            video_url: row.get(at + 19)?,
            thumbnail_url: row.get(at + 20)?,
            ctwa_clid: row.get(at + 21)?,
            ref_: row.get(at + 22)?,
            welcome_message: row.get(at + 23)?,
        })
    }

    pub fn cursor(&self) -> Cursor {
        Cursor {
            received_at_ms: self.received_at,
            id: self.id,
        }
    }
}

pub async fn by_id(store: &Store, id: i64) -> Result<Option<LeadRow>, sqlx::Error> {
    sqlx::query_as(&format!("SELECT {COLUMNS} FROM leads WHERE id = ?"))
        .bind(id)
        .fetch_optional(store.read_pool())
        .await
}

/// The lead with this click id (the newest, should a click id repeat).
pub async fn id_by_clid(store: &Store, ctwa_clid: &str) -> Result<Option<i64>, sqlx::Error> {
    let filter = LeadFilter {
        ctwa_clid: Some(ctwa_clid.to_owned()),
        ..LeadFilter::default()
    };
    let mut q = QueryBuilder::new("SELECT id");
    filter.push_from_where(&mut q, None);
    q.push(" ORDER BY received_at DESC LIMIT 1");
    q.build_query_scalar()
        .fetch_optional(store.read_pool())
        .await
}

pub async fn by_wamid(store: &Store, wamid: &str) -> Result<Option<LeadRow>, sqlx::Error> {
    sqlx::query_as(&format!(wamid_search!("{}"), COLUMNS))
        .bind(wamid)
        .fetch_optional(store.read_pool())
        .await
}

fn push_page<'a>(
    q: &mut QueryBuilder<'a, Sqlite>,
    filter: &'a LeadFilter,
    before: Option<Cursor>,
    limit: u32,
) {
    q.push(format_args!("SELECT {COLUMNS}"));
    filter.push_from_where(q, before);
    q.push(" ORDER BY received_at DESC, id DESC LIMIT ")
        .push_bind(i64::from(limit));
}

/// One page, newest first: at most `limit` leads after `before`.
pub async fn page(
    store: &Store,
    filter: &LeadFilter,
    before: Option<Cursor>,
    limit: u32,
) -> Result<Vec<LeadRow>, sqlx::Error> {
    let mut q = QueryBuilder::new("");
    push_page(&mut q, filter, before, limit);
    q.build_query_as().fetch_all(store.read_pool()).await
}

/// SQLite's plan for a page with `filter`, one line per step (for tests and benchmarks). It takes
/// a pool, not a [`Store`]: a plan is this backend's own, and the tests read one on a pool that
/// has run `ANALYZE`.
pub async fn page_plan(
    pool: &SqlitePool,
    filter: &LeadFilter,
    before: Option<Cursor>,
) -> Result<Vec<String>, sqlx::Error> {
    let mut q = QueryBuilder::new("EXPLAIN QUERY PLAN ");
    push_page(&mut q, filter, before, 50);
    let rows: Vec<(i64, i64, i64, String)> = q.build_query_as().fetch_all(pool).await?;
    Ok(rows.into_iter().map(|r| r.3).collect())
}

/// Every matching lead, newest first, a page at a time: memory holds one page, and no read
/// transaction stays open for the whole export (which would hold back WAL checkpoints).
pub fn pages(
    store: Store,
    filter: LeadFilter,
    page_size: u32,
) -> BoxStream<'static, Result<Vec<LeadRow>, sqlx::Error>> {
    futures_util::stream::unfold(
        (store, filter, None::<Cursor>, false),
        move |(store, filter, before, done)| async move {
            if done {
                return None;
            }
            match page(&store, &filter, before, page_size).await {
                Ok(rows) if rows.is_empty() => None,
                Ok(rows) => {
                    let last = rows.last().map(LeadRow::cursor);
                    let done = rows.len() < page_size as usize;
                    Some((Ok(rows), (store, filter, last, done)))
                }
                Err(err) => Some((Err(err), (store, filter, before, true))),
            }
        },
    )
    .boxed()
}

/// Leads per ad and per UTC day.
#[derive(Debug, Clone, FromRow, PartialEq, Eq)]
pub struct StatRow {
    pub source_id: Option<String>,
    pub day: String,
    pub leads: i64,
}

pub async fn stats(store: &Store, filter: &LeadFilter) -> Result<Vec<StatRow>, sqlx::Error> {
    let mut q = QueryBuilder::new(
        "SELECT source_id, strftime('%Y-%m-%d', received_at / 1000, 'unixepoch') AS day, \
         COUNT(*) AS leads",
    );
    filter.push_from_where(&mut q, None);
    q.push(" GROUP BY source_id, day ORDER BY day DESC, leads DESC, source_id");
    q.build_query_as().fetch_all(store.read_pool()).await
}

pub async fn count(store: &Store) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar("SELECT COUNT(*) FROM leads")
        .fetch_one(store.read_pool())
        .await
}

#[cfg(test)]
mod tests {
    use super::clid_tail;

    #[tokio::test]
    async fn the_click_id_tail_is_what_sqlite_indexes() {
        let pool = sqlx::SqlitePool::connect("sqlite::memory:").await.unwrap();
        for clid in [
            "",
            "ARAk",
            "0123456789abcdef",
            "0123456789abcdefg",
            "ARAkLkA8rmlFeiCktEJQ-QTwRiyYHAFDLMNDBH0CD3qpjd0HR4irJ6LEkR7JwFF4XvnO2E4Nx0",
            "ÄRÄk-ü-🎉-ß-é-ñ-ø-å-æ-œ-ÿ",
            "🎉🎉🎉🎉🎉🎉🎉🎉🎉🎉🎉🎉🎉🎉🎉🎉🎉",
        ] {
            let sqlite: String = sqlx::query_scalar("SELECT substr(?, -16)")
                .bind(clid)
                .fetch_one(&pool)
                .await
                .unwrap();
            assert_eq!(clid_tail(clid), sqlite, "{clid}");
        }
    }
}
