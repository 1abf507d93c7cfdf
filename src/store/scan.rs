//! A paged read of the whole delivery log in id order, for the offline scans that must look at
//! every stored body (`reextract`, and erasure's search for a person). Each page is one query, so
//! no read transaction holds the log's WAL for the whole scan, and within a page the rows are
//! streamed, not collected: erasure's page of 1,000 entries, if each were a 1000-message batch,
//! would hold ~190 MB of bodies. One decompression context serves the whole scan; making one per
//! entry (a zstd context is about 100 KB, allocated and freed each time) took an erasure over
//! 391,964 entries from 8.0–8.6 s to 16.3–16.4 s. A body that does not unpack reaches the caller as
//! its error, to be counted or skipped there. (The projector reads the log its own way: a lead
//! budget per round, and only the bodies that hold leads.)

use rusqlite::{params, Connection};

use super::log::Unpacker;

/// One log entry as a scan hands it over.
pub(super) struct Entry {
    pub id: i64,
    /// Unix milliseconds.
    pub received_at: i64,
    /// The stored parse status code (see `log::status_code`).
    pub status: i64,
    /// The body as received, or why it could not be unpacked.
    pub body: std::io::Result<Vec<u8>>,
}

/// A scan's position and bounds; [`LogScan::next_page`] moves it forward.
pub(super) struct LogScan {
    /// The last entry handed over.
    after: i64,
    upto: i64,
    since_ms: i64,
    page: i64,
    unpacker: Unpacker,
}

impl LogScan {
    /// A scan of every entry, `page` entries a query.
    pub fn new(page: i64) -> Self {
        Self {
            after: 0,
            upto: i64::MAX,
            since_ms: i64::MIN,
            page,
            unpacker: Unpacker::new(),
        }
    }

    /// Stops after the entry with id `upto`.
    pub fn upto(self, upto: i64) -> Self {
        Self { upto, ..self }
    }

    /// Skips entries received before `since_ms` (unix milliseconds), if given.
    pub fn since(self, since_ms: Option<i64>) -> Self {
        Self {
            since_ms: since_ms.unwrap_or(i64::MIN),
            ..self
        }
    }

    /// Reads the next page, handing each entry to `visit` in id order. Returns how many
    /// entries the page held: 0 when the scan is done.
    pub fn next_page<E: From<rusqlite::Error>>(
        &mut self,
        log: &Connection,
        mut visit: impl FnMut(Entry) -> Result<(), E>,
    ) -> Result<usize, E> {
        let mut stmt = log.prepare_cached(
            "SELECT id, received_at, status, codec, body FROM log \
             WHERE id > ?1 AND id <= ?2 AND received_at >= ?3 ORDER BY id LIMIT ?4",
        )?;
        let mut rows = stmt.query(params![self.after, self.upto, self.since_ms, self.page])?;
        let mut entries = 0;
        while let Some(row) = rows.next()? {
            let id = row.get(0)?;
            self.after = id;
            entries += 1;
            let body = self.unpacker.unpack(row.get(3)?, row.get(4)?);
            visit(Entry {
                id,
                received_at: row.get(1)?,
                status: row.get(2)?,
                body,
            })?;
        }
        Ok(entries)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::codec;

    /// A log of entries 1..=n, received at `10 × id` ms, entry 3's body damaged.
    fn log_of(n: i64) -> Connection {
        let conn = Connection::open_in_memory().unwrap();
        conn.execute_batch(
            "CREATE TABLE log (id INTEGER PRIMARY KEY, received_at INTEGER NOT NULL,
             status INTEGER NOT NULL, kind INTEGER NOT NULL, lead_count INTEGER NOT NULL,
             codec INTEGER NOT NULL, body BLOB NOT NULL)",
        )
        .unwrap();
        for id in 1..=n {
            let (codec, body) = if id == 3 {
                (codec::ZSTD_META_V1, vec![0, 1, 2, 3])
            } else {
                (codec::RAW, format!("body {id}").into_bytes())
            };
            conn.execute(
                "INSERT INTO log VALUES (?1, ?2, 0, 0, 0, ?3, ?4)",
                params![id, id * 10, codec, body],
            )
            .unwrap();
        }
        conn
    }

    fn scan_all(log: &Connection, mut scan: LogScan) -> (Vec<i64>, Vec<usize>) {
        let (mut ids, mut pages) = (Vec::new(), Vec::new());
        loop {
            let n = scan
                .next_page(log, |e| {
                    match e.body {
                        Ok(body) => assert_eq!(body, format!("body {}", e.id).into_bytes()),
                        Err(_) => assert_eq!(e.id, 3, "only the damaged entry fails"),
                    }
                    ids.push(e.id);
                    Ok::<_, rusqlite::Error>(())
                })
                .unwrap();
            if n == 0 {
                return (ids, pages);
            }
            pages.push(n);
        }
    }

    #[test]
    fn every_entry_once_in_id_order_page_by_page_within_the_bounds() {
        let log = log_of(10);
        assert_eq!(
            scan_all(&log, LogScan::new(4)),
            ((1..=10).collect(), vec![4, 4, 2])
        );
        assert_eq!(
            scan_all(&log, LogScan::new(4).upto(7).since(Some(25))),
            ((3..=7).collect(), vec![4, 1])
        );
        assert_eq!(scan_all(&log, LogScan::new(4).upto(0)), (vec![], vec![]));
    }

    #[test]
    fn a_visit_s_error_ends_the_page() {
        let log = log_of(5);
        let mut seen = Vec::new();
        let err = LogScan::new(10)
            .next_page(&log, |e| {
                seen.push(e.id);
                if e.id == 2 {
                    Err(rusqlite::Error::InvalidQuery)
                } else {
                    Ok(())
                }
            })
            .unwrap_err();
        assert!(matches!(err, rusqlite::Error::InvalidQuery));
        assert_eq!(seen, vec![1, 2]);
    }
}
