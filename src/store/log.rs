//! The delivery log: its own SQLite file, written only by the ingest writer and read by the
//! projector. A verified delivery is acknowledged once its log entry is durable; leads are built
//! from the log behind it. An entry is one row in a table with no secondary index: the body
//! compressed (see [`super::codec`]), its parse status, what kind of delivery it was, and how many
//! leads it holds. [`Progress`] carries the watermarks the writer and the projector publish to
//! each other and to `/readyz`.

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Condvar, Mutex};
use std::time::Duration;

use rusqlite::Connection;

use super::codec;
pub use super::codec::Unpacker;
use crate::leads::packed::PackedLead;

use crate::leads::detected::NewDetected;
use crate::leads::extract::{Extracted, ParseStatus};

/// The log's schema, applied by `PRAGMA user_version`.
const SCHEMA: &[&str] = &["CREATE TABLE IF NOT EXISTS log (
        id          INTEGER PRIMARY KEY,
        received_at INTEGER NOT NULL,   -- unix milliseconds
        status      INTEGER NOT NULL,   -- 0 parsed, 1 partial, 2 invalid
        kind        INTEGER NOT NULL,   -- 0 leads, 1 messages, 2 statuses only, 3 other
        lead_count  INTEGER NOT NULL,
        codec       INTEGER NOT NULL,   -- see store::codec: 0 raw, 1 zstd, 2 zstd + META_V1
        body        BLOB    NOT NULL
    )"];

/// What a delivery carries, decided by the parse on the acknowledgement path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// At least one referral message.
    Leads,
    /// Inbound messages, none with a referral.
    Messages,
    /// Only statuses (or errors): no inbound message.
    Statuses,
    /// Not a WhatsApp messages delivery we model.
    Other,
}

impl Kind {
    /// What `extracted` says the delivery carries.
    pub fn of(extracted: &Extracted) -> Self {
        if !extracted.leads.is_empty() {
            Kind::Leads
        } else if extracted.messages > 0 {
            Kind::Messages
        } else if extracted.statuses > 0 && extracted.other == 0 {
            Kind::Statuses
        } else {
            Kind::Other
        }
    }

    pub fn code(self) -> i64 {
        match self {
            Kind::Leads => 0,
            Kind::Messages => 1,
            Kind::Statuses => 2,
            Kind::Other => 3,
        }
    }
}

pub fn status_code(status: ParseStatus) -> i64 {
    match status {
        ParseStatus::Parsed => 0,
        ParseStatus::Partial => 1,
        ParseStatus::Invalid => 2,
    }
}

pub fn status_from_code(code: i64) -> ParseStatus {
    match code {
        0 => ParseStatus::Parsed,
        1 => ParseStatus::Partial,
        _ => ParseStatus::Invalid,
    }
}

/// One log entry, ready for the writer: the body is already compressed (on the request's own
/// task, so compression runs on every core, not on the writer's thread).
#[derive(Debug)]
pub struct LogRecord {
    pub received_at_ms: i64,
    pub status: ParseStatus,
    pub kind: Kind,
    pub lead_count: usize,
    pub codec: i64,
    pub body: Vec<u8>,
    /// The leads the acknowledgement path already extracted, packed: handed to the projector in
    /// memory (see [`Progress::offer`]), never stored as such.
    pub leads: Vec<PackedLead>,
    /// Likewise, the events Meta detected (`automatic_events`).
    pub detected: Vec<NewDetected>,
}

impl LogRecord {
    pub fn new(
        received_at_ms: i64,
        status: ParseStatus,
        kind: Kind,
        lead_count: usize,
        raw: &[u8],
    ) -> Self {
        let (codec, body) = codec::pack(raw);
        Self {
            received_at_ms,
            status,
            kind,
            lead_count,
            codec,
            body,
            leads: Vec::new(),
            detected: Vec::new(),
        }
    }

    /// Carries `leads` (extracted from this body) to the projector.
    pub fn with_leads(mut self, leads: Vec<PackedLead>) -> Self {
        self.leads = leads;
        self
    }

    /// Carries detected events (extracted from this body) to the projector.
    pub fn with_detected(mut self, detected: Vec<NewDetected>) -> Self {
        self.detected = detected;
        self
    }
}

/// A committed entry's leads, handed from the writer to the projector in memory.
#[derive(Debug)]
pub struct Handed {
    pub id: i64,
    pub received_at: i64,
    pub leads: Vec<PackedLead>,
    pub detected: Vec<NewDetected>,
}

impl Handed {
    /// Whether this entry is a projection round by itself ([`LARGE_ENTRY_LEADS`]).
    fn is_large(&self) -> bool {
        self.leads.len() >= LARGE_ENTRY_LEADS
    }
}

/// Leads in hand worth a projection round without waiting out its pace, however few entries
/// hold them. Production-shaped traffic carries about one lead per entry, so there the round's
/// entry count (1,024) decides. Large batches (1,000 leads each) used to pile up in hand for the
/// whole pace and then be built in one round of several thousand leads, and the acknowledgements
/// that queued behind that round's work and commit stalled. Twenty sequential 1000-message
/// deliveries, five interleaved pairs: a max of 15.5–18.6 ms against 16.8–27.1 before; the p50
/// rose from 9.0 to 10.4 ms (means), since projection now runs beside more of them instead of in
/// one burst. Production-shaped load never holds this many leads within a pace, so it does
/// not change there (one pair each at 16 and 64 connections: differences within noise). Since
/// 2026-12-07 one such entry is a round by itself ([`LARGE_ENTRY_LEADS`]).
pub const ROUND_LEADS: usize = 2048;

/// Leads that make one entry worth a round by itself, however few are in hand beside it. The
/// pace lets one-lead entries share the index pages a round dirties; an entry of hundreds of
/// leads shares little by waiting, and its projection (~10 ms of CPU per 1,000 leads) then ran
/// beside the next delivery: sequential 1000-message deliveries piled up in hand until a
/// third crossed [`ROUND_LEADS`], and the round of all three ran while the fourth was being
/// acknowledged. Projected as soon as it is durable, it runs while the sender prepares the
/// next one. Production-shaped entries hold one to five leads, so they never count.
pub const LARGE_ENTRY_LEADS: usize = 512;

/// Leads the in-memory hand-off holds at most; past it, entries are left to the projector to
/// read back from the log (a gap in the hand-off sends it there).
const HANDOFF_MAX_LEADS: usize = 8192;

#[derive(Debug, Default)]
struct Handoff {
    entries: std::collections::VecDeque<Handed>,
    leads: usize,
    /// Entries in hand that hold [`LARGE_ENTRY_LEADS`] or more.
    large: usize,
}

impl Handoff {
    fn push(&mut self, entry: Handed) {
        self.leads += entry.leads.len();
        self.large += usize::from(entry.is_large());
        self.entries.push_back(entry);
    }

    fn pop(&mut self) -> Option<Handed> {
        let entry = self.entries.pop_front()?;
        self.leads -= entry.leads.len();
        self.large -= usize::from(entry.is_large());
        Some(entry)
    }
}

/// Appends `record` as entry `id` in the caller's transaction; an id already taken is an error
/// (the writer owns the ids: a row written behind its back must fail the batch, not vanish).
pub fn insert(conn: &Connection, id: i64, record: &LogRecord) -> rusqlite::Result<()> {
    insert_with(conn, "INSERT", id, record)
}

/// As [`insert`], but an entry already there is kept (for idempotent copies).
pub fn insert_or_ignore(conn: &Connection, id: i64, record: &LogRecord) -> rusqlite::Result<()> {
    insert_with(conn, "INSERT OR IGNORE", id, record)
}

fn insert_with(conn: &Connection, verb: &str, id: i64, record: &LogRecord) -> rusqlite::Result<()> {
    conn.prepare_cached(&format!(
        "{verb} INTO log (id, received_at, status, kind, lead_count, codec, body) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)"
    ))?
    .execute(rusqlite::params![
        id,
        record.received_at_ms,
        status_code(record.status),
        record.kind.code(),
        record.lead_count as i64,
        record.codec,
        &record.body[..],
    ])?;
    Ok(())
}

/// Creates the log file's table if needed (the folder must exist).
pub fn migrate(conn: &Connection) -> rusqlite::Result<()> {
    let version: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    for (i, statement) in SCHEMA.iter().enumerate().skip(version as usize) {
        conn.execute_batch(statement)?;
        conn.pragma_update(None, "user_version", (i + 1) as i64)?;
    }
    Ok(())
}

/// Opens (creating) the log at `path` in WAL mode and applies its schema.
pub fn create(path: &Path) -> rusqlite::Result<()> {
    let conn = Connection::open(path)?;
    conn.busy_timeout(Duration::from_secs(5))?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    migrate(&conn)?;
    conn.close().map_err(|(_, err)| err)
}

/// The watermarks the writer and the projector share.
#[derive(Debug, Default)]
pub struct Progress {
    /// Highest log id that is durable (fsynced in FULL durability): the projector reads only up
    /// to here, so it never builds a lead from an entry that a power cut could still undo.
    pub durable: AtomicI64,
    /// Highest log id the projector has turned into leads (and recorded with them).
    pub projected: AtomicI64,
    /// `received_at` (ms) of the oldest entry not yet projected, 0 when caught up.
    pub oldest_unprojected_ms: AtomicI64,
    /// The projector's last transaction failed.
    pub projector_failing: AtomicBool,
    /// The projector is waiting for work: only then does a new durable id need to wake it (a
    /// wake for every flush cost it, and the flush thread, a context switch each).
    idle: AtomicBool,
    /// A round's worth of leads came into hand since the last ring (see [`Self::offer`]).
    round_due: AtomicBool,
    handoff: Mutex<Handoff>,
    wake: Mutex<bool>,
    bell: Condvar,
}

impl Progress {
    /// Offers a committed entry's leads to the projector, in id order. When the hand-off is
    /// full the entry is dropped from it (the projector reads it from the log instead).
    pub fn offer(&self, entry: Handed) {
        let Ok(mut h) = self.handoff.lock() else {
            return;
        };
        if h.leads + entry.leads.len() > HANDOFF_MAX_LEADS {
            return;
        }
        let before = h.leads;
        let large = entry.is_large();
        h.push(entry);
        if large || (before < ROUND_LEADS && h.leads >= ROUND_LEADS) {
            // Enough for a round: a pacing projector's wait ends at the next flush's ring
            // (see `ring`), after that flush's acknowledgements, not now: woken now, it would
            // take a core from the flush this entry still waits for, to project only older
            // entries. (A flush already under way may ring before this entry is durable.)
            self.round_due.store(true, Ordering::SeqCst);
        }
    }

    /// Leads in hand, not yet taken by the projector (the tests' view; the projector asks
    /// [`Progress::round_in_hand`]).
    #[cfg(test)]
    fn handed_leads(&self) -> usize {
        self.handoff.lock().map_or(0, |h| h.leads)
    }

    /// Whether the leads in hand are worth a round without waiting out its pace: a round's
    /// worth in all ([`ROUND_LEADS`]), or one large entry ([`LARGE_ENTRY_LEADS`]).
    pub fn round_in_hand(&self) -> bool {
        self.handoff
            .lock()
            .is_ok_and(|h| h.leads >= ROUND_LEADS || h.large > 0)
    }

    /// Takes the handed entries that continue exactly at `from`, up to id `upto`, until
    /// `max_leads` are taken; entries before `from` (already projected from the log) are
    /// dropped. Empty when the next entry is not in hand.
    pub fn take(&self, from: i64, upto: i64, max_leads: usize) -> Vec<Handed> {
        let Ok(mut h) = self.handoff.lock() else {
            return Vec::new();
        };
        while h.entries.front().is_some_and(|e| e.id < from) {
            h.pop();
        }
        let mut out = Vec::new();
        let mut next = from;
        let mut leads = 0;
        while let Some(front) = h.entries.front() {
            if front.id != next || front.id > upto || (leads >= max_leads && !out.is_empty()) {
                break;
            }
            if let Some(e) = h.pop() {
                leads += e.leads.len();
                next += 1;
                out.push(e);
            }
        }
        out
    }

    /// Publishes the projector's new watermark. The lag's age then starts at the next entry
    /// when it is in hand (otherwise it keeps the last round's, until the next round starts,
    /// which overstates it by at most a round).
    pub fn mark_projected(&self, mark: i64) {
        self.age_from_hand(mark);
        self.projected.store(mark, Ordering::Release);
    }

    /// Dates the lag from the entry after `projected` when it is in hand: when a round ends,
    /// and when new entries arrive at a caught-up projector (which paces before its round).
    pub fn age_from_hand(&self, projected: i64) {
        if let Ok(h) = self.handoff.lock() {
            let next = h
                .entries
                .get(h.entries.partition_point(|e| e.id <= projected));
            if let Some(next) = next.filter(|e| e.id == projected + 1) {
                self.oldest_unprojected_ms
                    .store(next.received_at, Ordering::Release);
            }
        }
    }

    /// Publishes a durable id, and wakes the projector if it is waiting for work.
    pub fn mark_durable(&self, id: i64) {
        self.publish_durable(id);
        self.ring();
    }

    /// Publishes a durable id without waking the projector: the flush thread answers the
    /// acknowledgements first and [`Self::ring`]s after, so that the projector's round does not
    /// take the core they need (on two cores, a projector woken first ran for milliseconds
    /// while the flush thread it was woken beside queued behind it).
    pub fn publish_durable(&self, id: i64) {
        self.durable.fetch_max(id, Ordering::SeqCst);
    }

    /// Wakes the projector if it is waiting for work, or pacing while a round's worth of leads
    /// came into hand. Call after [`Self::publish_durable`]: SeqCst on both sides (there and in
    /// `wait_for_work`), so either the projector sees the new id before it sleeps, or this sees
    /// it idle and rings.
    pub fn ring(&self) {
        let round = self.round_due.swap(false, Ordering::SeqCst);
        if round || self.idle.load(Ordering::SeqCst) {
            self.wake();
        }
    }

    /// The projector's wait when it has projected everything up to `seen`: until a durable id
    /// past it is published, [`Self::wake`] is called, or `timeout` passes.
    pub fn wait_for_work(&self, seen: i64, timeout: Duration) {
        self.idle.store(true, Ordering::SeqCst);
        if self.durable.load(Ordering::SeqCst) <= seen {
            self.wait(timeout);
        }
        self.idle.store(false, Ordering::SeqCst);
    }

    /// Wakes the projector (to see new durable entries, or that it should stop).
    pub fn wake(&self) {
        if let Ok(mut woken) = self.wake.lock() {
            *woken = true;
            self.bell.notify_all();
        }
    }

    /// Waits for [`Self::wake`] (or a durable id while idle, see [`Self::wait_for_work`]) or
    /// `timeout`.
    pub fn wait(&self, timeout: Duration) {
        let Ok(mut woken) = self.wake.lock() else {
            return;
        };
        if !*woken {
            woken = match self.bell.wait_timeout(woken, timeout) {
                Ok((w, _)) => w,
                Err(_) => return,
            };
        }
        *woken = false;
    }

    /// Entries durable but not yet projected.
    pub fn lag_entries(&self) -> u64 {
        let durable = self.durable.load(Ordering::Acquire);
        let projected = self.projected.load(Ordering::Acquire);
        durable.saturating_sub(projected).max(0) as u64
    }

    /// Age of the oldest unprojected entry, in seconds (0 when caught up).
    pub fn lag_seconds(&self) -> f64 {
        let oldest = self.oldest_unprojected_ms.load(Ordering::Acquire);
        if oldest == 0 || self.lag_entries() == 0 {
            return 0.0;
        }
        let now = chrono::Utc::now().timestamp_millis();
        (now - oldest).max(0) as f64 / 1000.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An entry holding `n` leads.
    fn batch(id: i64, n: usize) -> Handed {
        let lead: crate::leads::extract::NewLead = crate::leads::extract::NewLead {
            wamid: "w".into(),
            ..crate::leads::extract::NewLead::default()
        };
        Handed {
            id,
            received_at: 0,
            leads: vec![PackedLead::pack(&lead); n],
            detected: Vec::new(),
        }
    }

    /// Runs `f` on a thread of its own after 50 ms: what a wait under test should wake for.
    fn soon(f: impl FnOnce() + Send + 'static) -> std::thread::JoinHandle<()> {
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            f();
        })
    }

    /// Whether a pacing wait ends soon after another thread makes entry `id` durable.
    fn woken_by_flush(p: &std::sync::Arc<Progress>, id: i64) -> bool {
        let flusher = {
            let p = p.clone();
            soon(move || p.mark_durable(id))
        };
        let started = std::time::Instant::now();
        p.wait(Duration::from_secs(10));
        let woken = started.elapsed() < Duration::from_secs(5);
        flusher.join().expect("flusher");
        woken
    }

    #[test]
    fn the_handoff_gives_only_what_continues_the_watermark() {
        let p = Progress::default();
        for id in [1, 2, 4] {
            p.offer(batch(id, 1));
        }
        assert!(p.take(0, 10, 100).is_empty(), "entry 0 is not in hand");
        let got: Vec<i64> = p.take(1, 10, 100).iter().map(|h| h.id).collect();
        assert_eq!(got, [1, 2], "stops at the gap before 4");
        assert!(p.take(3, 10, 100).is_empty());
        assert_eq!(p.take(4, 3, 100).len(), 0, "not beyond the durable id");
        assert_eq!(p.take(4, 10, 100).len(), 1);
        // Past its bound the hand-off refuses, and the projector reads the log.
        for id in 10..(10 + HANDOFF_MAX_LEADS as i64 + 5) {
            p.offer(batch(id, 1));
        }
        let taken = p.take(10, i64::MAX, usize::MAX);
        assert_eq!(taken.len(), HANDOFF_MAX_LEADS);
    }

    #[test]
    fn a_durable_id_wakes_an_idle_projector_but_not_a_pacing_one() {
        let p = std::sync::Arc::new(Progress::default());
        let marker = {
            let p = p.clone();
            soon(move || p.mark_durable(1))
        };
        let started = std::time::Instant::now();
        p.wait_for_work(0, Duration::from_secs(10));
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "the new id ended the idle wait"
        );
        marker.join().expect("marker");
        // Already past what was seen: no wait at all.
        let started = std::time::Instant::now();
        p.wait_for_work(0, Duration::from_secs(10));
        assert!(started.elapsed() < Duration::from_secs(5));

        // While pacing (not idle), new ids leave the wait to its timeout.
        p.mark_durable(2);
        let started = std::time::Instant::now();
        p.wait(Duration::from_millis(200));
        assert!(started.elapsed() >= Duration::from_millis(200));
        // `wake` (how stop reaches it) does end it.
        let waker = {
            let p = p.clone();
            soon(move || p.wake())
        };
        let started = std::time::Instant::now();
        p.wait(Duration::from_secs(10));
        assert!(started.elapsed() < Duration::from_secs(5));
        waker.join().expect("waker");
    }

    #[test]
    fn a_round_s_worth_of_leads_in_hand_ends_a_pacing_wait() {
        let p = std::sync::Arc::new(Progress::default());
        // Below a round's worth (and no entry large by itself), a pacing wait lasts its timeout.
        let small = LARGE_ENTRY_LEADS - 1;
        p.offer(batch(1, small));
        assert_eq!(p.handed_leads(), small);
        assert!(!p.round_in_hand());
        let started = std::time::Instant::now();
        p.wait(Duration::from_millis(200));
        assert!(started.elapsed() >= Duration::from_millis(200));
        // The entry that brings the hand-off to a round's worth (a large batch) ends it once
        // it is durable: the offer alone (made at commit, before the flush) does not.
        p.offer(batch(2, ROUND_LEADS));
        let started = std::time::Instant::now();
        p.wait(Duration::from_millis(200));
        assert!(
            started.elapsed() >= Duration::from_millis(200),
            "the offer alone woke it"
        );
        assert!(
            woken_by_flush(&p, 2),
            "the flush that made it durable woke it"
        );
        // Rung once: the next flush does not wake a pacing projector again.
        p.mark_durable(3);
        let started = std::time::Instant::now();
        p.wait(Duration::from_millis(200));
        assert!(started.elapsed() >= Duration::from_millis(200));
        assert_eq!(p.handed_leads(), small + ROUND_LEADS);
        assert!(p.round_in_hand());
        assert_eq!(p.take(1, 2, usize::MAX).len(), 2);
        assert_eq!(p.handed_leads(), 0);
        assert!(!p.round_in_hand());
    }

    #[test]
    fn one_large_entry_is_a_round_by_itself_and_small_ones_are_not() {
        let p = std::sync::Arc::new(Progress::default());
        // Many production-shaped entries (a few leads each), fewer than a round's worth in all.
        for id in 1..=100 {
            p.offer(batch(id, 5));
        }
        assert!(!p.round_in_hand());
        p.mark_durable(100);
        let started = std::time::Instant::now();
        p.wait(Duration::from_millis(200));
        assert!(
            started.elapsed() >= Duration::from_millis(200),
            "small entries rang a pacing projector"
        );
        // One entry of a large batch: a round in hand, and its flush ends the pacing wait.
        p.offer(batch(101, LARGE_ENTRY_LEADS));
        assert!(p.round_in_hand());
        assert!(
            woken_by_flush(&p, 101),
            "the flush that made the large entry durable woke it"
        );
        // Taken (or dropped as already projected), it no longer counts.
        assert_eq!(p.take(1, 100, usize::MAX).len(), 100);
        assert!(p.round_in_hand());
        assert_eq!(p.take(102, 102, usize::MAX).len(), 0);
        assert!(
            !p.round_in_hand(),
            "the large entry was dropped as projected"
        );
        assert_eq!(p.handed_leads(), 0);
    }

    #[test]
    fn lag_is_durable_minus_projected() {
        let p = Progress::default();
        p.mark_durable(10);
        p.projected.store(4, Ordering::Release);
        assert_eq!(p.lag_entries(), 6);
        p.projected.store(10, Ordering::Release);
        assert_eq!(p.lag_entries(), 0);
        assert_eq!(p.lag_seconds(), 0.0);
    }

    fn handed(id: i64, received_at: i64) -> Handed {
        Handed {
            id,
            received_at,
            leads: Vec::new(),
            detected: Vec::new(),
        }
    }

    #[test]
    fn after_a_round_the_lag_is_as_old_as_the_next_entry_in_hand() {
        let now = chrono::Utc::now().timestamp_millis();
        let p = Progress::default();
        p.offer(handed(1, now - 5_000));
        p.offer(handed(2, now - 100));
        p.mark_durable(2);
        p.oldest_unprojected_ms
            .store(now - 5_000, Ordering::Release);
        assert!(p.lag_seconds() >= 5.0);
        let _ = p.take(1, 1, 10);
        p.mark_projected(1);
        let lag = p.lag_seconds();
        assert!(lag < 1.0, "entry 2 is 0.1 s old, not 5 s: {lag}");
        p.mark_projected(2);
        assert_eq!(p.lag_seconds(), 0.0);
    }
}
