//! Which wamids are stored, for deduplication without a random-keyed index. The leads table
//! indexes `wamid` only behind the lead's id range (`leads_wamid_by_range`, migration 0009), so
//! an insert lands in the newest range's leaves instead of a random leaf of a wamid-ordered
//! index; the price is that an exact look-up must search every range. [`Seen`] spares almost
//! every new lead that search: a Bloom filter over every stored wamid answers "certainly new"
//! for all but about 1% of new wamids, and only a "maybe" (a re-delivery, or a false positive)
//! searches the index. It never answers "new" for a stored wamid, so deduplication stays exact:
//! the filter is loaded from the file before the projector's first round, every insert is
//! added to it, leads another writer inserted (an offline `reextract`) are read in at the start
//! of each round by id, and after a failed round it is loaded again. It also numbers new leads:
//! above every id given before, erased leads' included (`projection.lead_ids_taken`, which an
//! erasure raises before it deletes), since SQLite alone would give the highest id again once
//! its row is gone.

use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;

use rusqlite::{params, Connection, OptionalExtension};

/// Filter bits per wamid it is sized for: ~1% false positives with [`HASHES`] probes.
const BITS_PER_KEY: usize = 10;
const HASHES: u32 = 7;
/// Wamids a new filter has room for at least (1.25 MiB of bits).
const MIN_CAPACITY: usize = 1 << 20;
/// Room a loaded filter leaves for new wamids, as a share of those stored: when it is used
/// up, the filter is read again, larger.
const HEADROOM: f64 = 0.5;

/// Page cache, in KiB, for reading the whole index at load: pages read once, in order.
const SCAN_CACHE_KIB: i64 = 256;

/// Runs `scan` with `conn`'s page cache held to [`SCAN_CACHE_KIB`], then restores it. Reading
/// every wamid through the projector's own cache (then 8 MiB) filled all of it with index
/// pages that its rounds never read again: on a database of 1M leads the server's RSS rose by
/// 11 MB at the first round, and that memory stayed resident.
fn with_small_cache<T>(
    conn: &Connection,
    scan: impl FnOnce() -> rusqlite::Result<T>,
) -> rusqlite::Result<T> {
    let before: i64 = conn.query_row("PRAGMA cache_size", [], |r| r.get(0))?;
    conn.pragma_update(None, "cache_size", -SCAN_CACHE_KIB)?;
    let scanned = scan();
    let restored = conn.pragma_update(None, "cache_size", before);
    let scanned = scanned?;
    restored?;
    Ok(scanned)
}

/// The highest stored lead id (0 for none), and the highest ever given as an erasure recorded
/// it before deleting (`projection.lead_ids_taken`).
fn highest_ids(conn: &Connection) -> rusqlite::Result<(i64, i64)> {
    conn.prepare_cached(
        "SELECT (SELECT coalesce(max(id), 0) FROM leads), \
         (SELECT coalesce(max(lead_ids_taken), 0) FROM projection)",
    )?
    .query_row([], |r| Ok((r.get(0)?, r.get(1)?)))
}

/// One cache line of bits: every probe of a wamid falls in the same block (a blocked Bloom
/// filter), so a check costs one memory access, not seven.
#[derive(Clone, Copy)]
#[repr(align(64))]
struct Block([u64; 8]);

/// A Bloom filter of the stored wamids, and the highest lead id it covers.
pub(super) struct Seen {
    blocks: Vec<Block>,
    capacity: usize,
    len: usize,
    hasher: RandomState,
    /// Every lead with an id up to this one is in the filter.
    covered: i64,
    /// The highest lead id given so far, as far as this filter knows (never below `covered`:
    /// [`Seen::add`] raises both): new leads go above it.
    taken: i64,
}

impl Seen {
    fn with_capacity(capacity: usize) -> Self {
        let capacity = capacity.max(MIN_CAPACITY);
        let blocks = (capacity * BITS_PER_KEY).div_ceil(512);
        Self {
            blocks: vec![Block([0; 8]); blocks],
            capacity,
            len: 0,
            hasher: RandomState::new(),
            covered: 0,
            taken: 0,
        }
    }

    /// Reads every stored wamid (the index alone, in id-range order), with room for
    /// [`HEADROOM`] more before [`Seen::refresh`] rebuilds it larger. It is sized by the
    /// largest id, one look-up, which is at least the number of leads (ids count up from 1).
    pub(super) fn load(conn: &Connection) -> rusqlite::Result<Self> {
        let (max, taken) = highest_ids(conn)?;
        let mut seen = Self::with_capacity((max.max(0) as f64 * (1.0 + HEADROOM)) as usize);
        with_small_cache(conn, || seen.read_from(conn, 0))?;
        seen.taken = seen.taken.max(taken);
        Ok(seen)
    }

    /// Adds the wamids of leads with ids above `after`.
    fn read_from(&mut self, conn: &Connection, after: i64) -> rusqlite::Result<()> {
        let mut stmt = conn.prepare_cached(
            "SELECT id, wamid FROM leads INDEXED BY leads_wamid_by_range WHERE id > ?1",
        )?;
        let mut rows = stmt.query(params![after])?;
        while let Some(row) = rows.next()? {
            let id: i64 = row.get(0)?;
            let wamid = row.get_ref(1)?.as_str()?;
            self.add(id, wamid);
        }
        Ok(())
    }

    /// At the start of a round, inside its transaction: takes in leads that another writer of
    /// the file inserted since (ids are assigned above the largest), and rebuilds a filter
    /// that holds more wamids than it was sized for. It takes the filter by value so that a
    /// rebuild frees the old bits before it allocates the new ones (at 3M leads, 3.75 MB that
    /// would otherwise sit beside the new 5.6 MB for the whole scan), and so that a filter
    /// whose refresh failed cannot be used.
    pub(super) fn refresh(mut self, conn: &Connection) -> rusqlite::Result<Self> {
        if self.len > self.capacity {
            drop(self);
            return Self::load(conn);
        }
        let (max, taken) = highest_ids(conn)?;
        if max > self.covered {
            self.read_from(conn, self.covered)?;
        }
        self.taken = self.taken.max(taken);
        Ok(self)
    }

    /// The id for the next lead inserted in this transaction (then [`Seen::add`] it).
    pub(super) fn next_id(&self) -> i64 {
        self.taken + 1
    }

    /// Whether `wamid` is stored, in the transaction `conn`: the filter first, the index only
    /// when the filter cannot tell.
    pub(super) fn is_stored(&mut self, conn: &Connection, wamid: &str) -> rusqlite::Result<bool> {
        if !self.may_hold(wamid) {
            return Ok(false);
        }
        Ok(conn
            .prepare_cached(super::leads::WAMID_STORED)?
            .query_row(params![wamid], |_| Ok(()))
            .optional()?
            .is_some())
    }

    /// Records that the lead `id` with `wamid` is stored.
    pub(super) fn add(&mut self, id: i64, wamid: &str) {
        let (block, bits) = self.probes(wamid);
        let words = &mut self.blocks[block].0;
        for i in 0..HASHES {
            let bit = (bits >> (9 * i)) & 511;
            words[(bit / 64) as usize] |= 1 << (bit % 64);
        }
        self.len += 1;
        self.covered = self.covered.max(id);
        self.taken = self.taken.max(id);
    }

    fn may_hold(&self, wamid: &str) -> bool {
        let (block, bits) = self.probes(wamid);
        let words = &self.blocks[block].0;
        (0..HASHES).all(|i| {
            let bit = (bits >> (9 * i)) & 511;
            words[(bit / 64) as usize] & (1 << (bit % 64)) != 0
        })
    }

    /// The block (from one SipHash of the wamid under this process's random key, mapped onto
    /// the blocks by multiplication) and a second word whose 9-bit groups pick the bits in it.
    fn probes(&self, wamid: &str) -> (usize, u64) {
        let h = self.hasher.hash_one(wamid.as_bytes());
        let block = ((u128::from(h) * self.blocks.len() as u128) >> 64) as usize;
        // splitmix64's finaliser: a second, independent-looking word from the first.
        let mut z = h.wrapping_add(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        (block, z ^ (z >> 31))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leads_table() -> Connection {
        let conn = Connection::open_in_memory().expect("memory");
        conn.execute_batch(
            "CREATE TABLE leads (id INTEGER PRIMARY KEY, wamid TEXT NOT NULL);
             CREATE INDEX leads_wamid_by_range ON leads (id >> 14, wamid);
             CREATE TABLE projection (id INTEGER PRIMARY KEY, lead_ids_taken INTEGER NOT NULL);
             INSERT INTO projection VALUES (1, 0);",
        )
        .expect("schema");
        conn
    }

    fn insert(conn: &Connection, id: i64, wamid: &str) {
        conn.execute(
            "INSERT INTO leads (id, wamid) VALUES (?1, ?2)",
            params![id, wamid],
        )
        .expect("insert");
    }

    #[test]
    fn a_stored_wamid_is_never_reported_new_and_few_new_ones_search_the_index() {
        let conn = leads_table();
        // Ids across several id ranges, so the search must look in more than the newest.
        for i in 0..5_000_i64 {
            insert(&conn, 1 + i * 17, &format!("wamid.stored{i}"));
        }
        conn.pragma_update(None, "cache_size", -8192)
            .expect("cache");
        let mut seen = Seen::load(&conn).expect("load");
        let cache: i64 = conn
            .query_row("PRAGMA cache_size", [], |r| r.get(0))
            .expect("cache");
        assert_eq!(
            cache, -8192,
            "the connection's own cache is back after the scan"
        );
        for i in 0..5_000 {
            assert!(seen
                .is_stored(&conn, &format!("wamid.stored{i}"))
                .expect("check"));
        }
        let held = (0..5_000)
            .filter(|i| seen.may_hold(&format!("wamid.stored{i}")))
            .count();
        assert_eq!(held, 5_000, "the filter holds every stored wamid");
        let mut new = 0;
        for i in 0..20_000 {
            new += usize::from(
                !seen
                    .is_stored(&conn, &format!("wamid.new{i}"))
                    .expect("check"),
            );
        }
        assert_eq!(new, 20_000, "a wamid that is not stored is new");
        // ~1% false positives by design; far more would mean the filter is broken.
        let searched = (0..20_000)
            .filter(|i| seen.may_hold(&format!("wamid.new{i}")))
            .count();
        assert!(searched < 400, "{searched} of 20,000 searched");
    }

    #[test]
    fn new_ids_go_above_every_id_given_erased_ones_included() {
        let conn = leads_table();
        insert(&conn, 1, "wamid.a");
        insert(&conn, 2, "wamid.b");
        assert_eq!(Seen::load(&conn).expect("load").next_id(), 3);
        // An erasure recorded id 4 as given, then deleted leads 3 and 4.
        conn.execute("UPDATE projection SET lead_ids_taken = 4", [])
            .expect("taken");
        let mut seen = Seen::load(&conn).expect("load");
        assert_eq!(seen.next_id(), 5, "not 3, the highest stored plus one");
        seen.add(5, "wamid.c");
        assert_eq!(seen.next_id(), 6);
        // A later erasure of that lead, seen by a filter already in use.
        conn.execute("UPDATE projection SET lead_ids_taken = 9", [])
            .expect("taken");
        let seen = seen.refresh(&conn).expect("refresh");
        assert_eq!(seen.next_id(), 10);
    }

    #[test]
    fn leads_another_writer_inserted_are_taken_in_and_an_overfull_filter_is_rebuilt() {
        let conn = leads_table();
        insert(&conn, 1, "wamid.a");
        let seen = Seen::load(&conn).expect("load");
        insert(&conn, 2, "wamid.b"); // by someone else: not added to the filter
        let mut seen = seen.refresh(&conn).expect("refresh");
        assert!(seen.may_hold("wamid.b"), "taken in by id");
        assert!(seen.is_stored(&conn, "wamid.b").expect("check"));

        seen.len = seen.capacity + 1;
        let seen = seen.refresh(&conn).expect("rebuild");
        assert_eq!(seen.len, 2, "rebuilt from the file");
        assert!(seen.may_hold("wamid.a") && seen.may_hold("wamid.b"));
    }
}
