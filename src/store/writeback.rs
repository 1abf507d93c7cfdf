//! Early writeback of the files whose bytes would otherwise stall the log's flushes. The flush
//! threads `fdatasync` the log's WAL about a thousand times a second, and on a disk with a
//! volatile write cache each flush waits until everything else written to that disk since the
//! last one is persisted too, with every delivery of its batch. Left alone, the leads file's
//! pages (the projector commits at `synchronous=NORMAL`) and the log's database file (see
//! [`spawn`]) stayed dirty in the page cache until a checkpoint's fsync sent tens of MB at once.
//! So one thread sends them on their way in small steps, with Linux's `sync_file_range`
//! (`SYNC_FILE_RANGE_WRITE` queues the writeback and returns, without waiting for it and
//! without flushing the disk's cache): both database files whole every [`PERIOD`], and the
//! leads WAL a slice of its committed tail every [`STEP`] ([`WalTail`]; frames of a round still
//! open are left, since SQLite may rewrite them before it commits). Durability does not change:
//! SQLite's own syncs stay where they were. On other systems a kick does nothing.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

/// How often the database files are kicked. In 20 s runs at 64 connections on the
/// production-shaped mix (2026-12-04, the kicks made by a process beside the server), kicking
/// both leads files every 20 ms left no log flush over 25 ms per run, every 100 ms 4–10 of them,
/// the WAL alone 5–12 and the database file alone 20–22, against 22–27 without kicks. With the
/// WAL's tail followed every [`STEP`] (2026-12-07, three rounds of sequential runs, a fresh
/// server each), every 5 ms against every 20 left flushes over 5 ms at 0.17–0.25% of them
/// against 0.37–0.41 (0.43–0.50 before either change), and the acknowledgement p99 at 2.60–2.75
/// times its mean against 2.79–2.97; every 2 ms was no better, every 10 ms in between.
pub(super) const PERIOD: Duration = Duration::from_millis(5);

/// How often the files are opened again: a WAL that SQLite deleted and created anew (when its
/// last connection closed) is then followed.
const REOPEN: Duration = Duration::from_secs(1);

/// One file whose dirty pages are sent on their way at each [`Writeback::kick`].
pub(super) struct Writeback {
    path: PathBuf,
    file: Option<File>,
    reopen_at: Instant,
    /// Writebacks queued so far.
    queued: usize,
}

impl Writeback {
    /// For the file at `path`, which need not exist yet.
    pub(super) fn new(path: PathBuf) -> Self {
        Self {
            path,
            file: None,
            reopen_at: Instant::now(),
            queued: 0,
        }
    }

    /// The open file, opened again every [`REOPEN`].
    fn file(&mut self) -> Option<&File> {
        if Instant::now() >= self.reopen_at {
            self.file = File::open(&self.path).ok();
            self.reopen_at = Instant::now() + REOPEN;
        }
        self.file.as_ref()
    }

    /// Queues the writeback of the file's dirty pages, and returns.
    pub(super) fn kick(&mut self) {
        self.kick_range(0, 0);
    }

    /// Queues the writeback of the dirty pages in `len` bytes from `offset` (0: to the end).
    fn kick_range(&mut self, offset: u64, len: u64) {
        let Some(file) = self.file() else { return };
        match start_writeback(file, offset, len) {
            Ok(()) => self.queued += 1,
            Err(err) => {
                tracing::debug!(%err, path = %self.path.display(), "could not start a writeback")
            }
        }
    }
}

/// The path of the WAL of the SQLite database at `path`.
pub(super) fn wal_of(path: &Path) -> PathBuf {
    let mut wal = path.as_os_str().to_owned();
    wal.push("-wal");
    wal.into()
}

/// The committed tail of a SQLite WAL, sent to the disk a slice at a time.
///
/// Kicking the leads WAL whole after each projection round queued the round's frames at once
/// (about 8 MB at 18,000 deliveries/s and a round every 100 ms), and the log flush that came
/// next persisted them all with its own few KB. This follows the WAL's committed end instead:
/// SQLite publishes it at each commit as `mxFrame` in the wal-index header (byte 16 of the
/// `-shm` file, beside the page size at byte 14 and the salts at 32; walformat.html), and each
/// [`WalTail::step`]
/// queues at most one [`WalTail::slice`] of what was committed since. Frames of a transaction
/// still open are never queued, so a spilled frame that is rewritten before the commit is
/// written once.
pub(super) struct WalTail {
    wal: Writeback,
    /// The `-shm` file, only read; [`Writeback::file`] opens it again as it does the WAL.
    shm: Writeback,
    /// The first byte not yet queued.
    cursor: u64,
    /// The committed end at the last step.
    last_end: u64,
    /// The WAL's salts at the last step: new ones mean that it started over.
    salts: [u8; 8],
}

impl WalTail {
    /// For the WAL of the database at `db`.
    pub(super) fn new(db: &Path) -> Self {
        let mut shm = db.as_os_str().to_owned();
        shm.push("-shm");
        Self {
            wal: Writeback::new(wal_of(db)),
            shm: Writeback::new(shm.into()),
            cursor: 0,
            last_end: 0,
            salts: [0; 8],
        }
    }

    /// The most one step queues when `backlog` bytes are committed and not yet queued: an
    /// eighth of them, and at least [`MIN_SLICE`], so a backlog is gone within a few steps.
    fn slice(backlog: u64) -> u64 {
        (backlog / 8).max(MIN_SLICE)
    }

    /// The WAL's committed end in bytes, and its salts, from the wal-index header; `None` when
    /// unreadable.
    fn committed_end(&mut self) -> Option<(u64, [u8; 8])> {
        let mut header = [0u8; 40];
        read_at(self.shm.file()?, &mut header).ok()?;
        let page = match u16::from_ne_bytes([header[14], header[15]]) {
            1 => 65_536,
            0 => return None,
            size => u64::from(size),
        };
        let frames = u64::from(u32::from_ne_bytes([
            header[16], header[17], header[18], header[19],
        ]));
        let mut salts = [0u8; 8];
        salts.copy_from_slice(&header[32..40]);
        Some((WAL_HEADER + frames * (page + FRAME_HEADER), salts))
    }

    /// Queues the writeback of the next slice of committed frames, if any.
    ///
    /// Returns whether the WAL is being written: a commit since the last step, or a backlog.
    pub(super) fn step(&mut self) -> bool {
        let Some((end, salts)) = self.committed_end() else {
            // No wal-index to follow (none yet, or unreadable): the whole WAL, as a timer would.
            self.wal.kick();
            return false;
        };
        let moved = end != self.last_end;
        self.last_end = end;
        if salts != self.salts || end < self.cursor {
            // The WAL started over from its first frame after a checkpoint (SQLite draws new
            // salts for it), and its new frames may already reach past the cursor.
            self.cursor = 0;
            self.salts = salts;
        }
        if end == self.cursor {
            return moved;
        }
        let len = Self::slice(end - self.cursor).min(end - self.cursor);
        self.wal.kick_range(self.cursor, len);
        self.cursor += len;
        true
    }
}

/// A WAL file's header, and each frame's header before its page (walformat.html).
const WAL_HEADER: u64 = 32;
const FRAME_HEADER: u64 = 24;

/// The least a [`WalTail::step`] queues of a backlog: 256 KiB a step, every [`STEP`], is
/// 128 MB/s, above the ~80 MB/s the leads WAL takes at 18,000 deliveries/s.
const MIN_SLICE: u64 = 256 << 10;

/// How often the leads WAL's committed tail is followed ([`WalTail::step`]); the database
/// files are kicked every [`PERIOD`].
pub(super) const STEP: Duration = Duration::from_millis(2);

/// How long the leads WAL must go unwritten before the thread wakes only every [`QUIET_STEP`]
/// (which is then also how often the database files are kicked). An idle server's thread took
/// 1.9% of a core at [`STEP`] against 0.6% before the tail was followed.
const QUIET: Duration = Duration::from_millis(200);
const QUIET_STEP: Duration = Duration::from_millis(20);

#[cfg(unix)]
fn read_at(file: &File, buf: &mut [u8]) -> std::io::Result<()> {
    std::os::unix::fs::FileExt::read_exact_at(file, buf, 0)
}

#[cfg(not(unix))]
fn read_at(_file: &File, _buf: &mut [u8]) -> std::io::Result<()> {
    Err(std::io::ErrorKind::Unsupported.into())
}

/// Starts the thread that kicks the database files at `paths` every [`PERIOD`], until `stop`.
///
/// The log's database file is one of them. Its checkpointer copies the log's WAL into it every
/// 200 ms, but SQLite syncs a database file only after a checkpoint that copied the whole WAL,
/// and under load only the log writer's own backstop checkpoint does that (a commit lands while
/// any other connection copies). That checkpoint then fsynced everything copied since the last
/// one, tens of MB, on the writer's thread, with no delivery committed meanwhile: at 64
/// connections on the production-shaped mix, the writer's 13 fsyncs in 10 s took 155 ms in all
/// and up to 43.8 ms each; with the log's file kicked too, 12 took 11.6 ms in all and at most
/// 2.8 ms (`perf record -e syscalls:sys_enter_fsync -e syscalls:sys_exit_fsync`, 2026-12-07).
pub(super) fn spawn(
    paths: Vec<PathBuf>,
    tail: WalTail,
    stop: CancellationToken,
) -> std::io::Result<()> {
    let files = paths.into_iter().map(Writeback::new).collect();
    std::thread::Builder::new()
        .name("writeback".into())
        .spawn(move || run(files, tail, &stop))
        .map(drop)
}

/// The loop: a step of `tail` every [`STEP`] and a kick of every file each [`PERIOD`], until
/// `stop`. Returns the files and the tail.
fn run(
    mut files: Vec<Writeback>,
    mut tail: WalTail,
    stop: &CancellationToken,
) -> (Vec<Writeback>, WalTail) {
    let mut next_kick = Instant::now();
    let mut written_at = Instant::now();
    while !stop.is_cancelled() {
        if tail.step() {
            written_at = Instant::now();
        }
        if Instant::now() >= next_kick {
            for file in &mut files {
                file.kick();
            }
            next_kick = Instant::now() + PERIOD;
        }
        // Idle, the thread wakes as seldom as before the tail was followed.
        let quiet = written_at.elapsed() >= QUIET;
        std::thread::sleep(if quiet { QUIET_STEP } else { STEP });
    }
    (files, tail)
}

/// Queues the writeback of the dirty pages in `len` bytes of `file` from `offset` (0: to its
/// end), and returns without waiting for it.
#[cfg(target_os = "linux")]
#[allow(unsafe_code)]
fn start_writeback(file: &File, offset: u64, len: u64) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let (Ok(offset), Ok(len)) = (i64::try_from(offset), i64::try_from(len)) else {
        return Err(std::io::ErrorKind::InvalidInput.into());
    };
    // SAFETY: the descriptor is open for the whole call (borrowed from `file`); a length of 0
    // means to the end of the file; the call reads and writes no memory of ours.
    let rc = unsafe {
        libc::sync_file_range(file.as_raw_fd(), offset, len, libc::SYNC_FILE_RANGE_WRITE)
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

#[cfg(not(target_os = "linux"))]
fn start_writeback(_file: &File, _offset: u64, _len: u64) -> std::io::Result<()> {
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn a_written_file_is_sent_on_its_way_without_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("leads.db-wal");
        let mut file = File::create(&path).unwrap();
        file.write_all(&vec![7u8; 1 << 20]).unwrap();
        let reader = File::open(&path).unwrap();
        start_writeback(&reader, 0, 0).unwrap();
        // The bytes are untouched: writeback only moves them towards the disk.
        assert_eq!(std::fs::read(&path).unwrap(), vec![7u8; 1 << 20]);
    }

    #[test]
    fn a_missing_file_is_skipped_and_followed_once_it_exists() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("leads.db");
        let wal = wal_of(&path);
        assert_eq!(wal, dir.path().join("leads.db-wal"));
        let mut writeback = Writeback::new(wal.clone());
        writeback.kick();
        assert!(writeback.file.is_none());
        std::fs::write(&wal, b"x").unwrap();
        writeback.reopen_at = Instant::now();
        writeback.kick();
        assert!(writeback.file.is_some());
    }

    #[test]
    fn the_loop_kicks_every_file_until_told_to_stop() {
        let dir = tempfile::tempdir().unwrap();
        let paths = [dir.path().join("leads.db"), dir.path().join("leads-log.db")];
        for path in &paths {
            std::fs::write(path, vec![1u8; 1 << 16]).unwrap();
        }
        let files = paths.iter().cloned().map(Writeback::new).collect();
        let tail = WalTail::new(&paths[0]);
        let stop = CancellationToken::new();
        let stopper = stop.clone();
        let thread = std::thread::spawn(move || run(files, tail, &stop));
        std::thread::sleep(QUIET_STEP * 5);
        stopper.cancel();
        let (files, _) = thread.join().expect("the loop does not panic");
        assert_eq!(files.len(), 2);
        for file in &files {
            assert!(
                file.queued >= 2,
                "{} was kicked on every round until told: {} writebacks queued",
                file.path.display(),
                file.queued
            );
        }
    }

    /// A database in WAL mode that never checkpoints on its own, with `rows` rows of 1 KB.
    fn wal_database(path: &Path, rows: usize) -> rusqlite::Connection {
        let conn = rusqlite::Connection::open(path).unwrap();
        conn.pragma_update(None, "journal_mode", "wal").unwrap();
        conn.pragma_update(None, "wal_autocheckpoint", 0).unwrap();
        conn.execute("CREATE TABLE t (v BLOB)", []).unwrap();
        insert(&conn, rows);
        conn
    }

    /// A [`wal_database`] of `rows` rows in a folder of its own, and a tail following its WAL.
    fn followed_database(
        rows: usize,
    ) -> (tempfile::TempDir, PathBuf, rusqlite::Connection, WalTail) {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("leads.db");
        let conn = wal_database(&db, rows);
        let tail = WalTail::new(&db);
        (dir, db, conn, tail)
    }

    fn insert(conn: &rusqlite::Connection, rows: usize) {
        for _ in 0..rows {
            conn.execute("INSERT INTO t VALUES (randomblob(1000))", [])
                .unwrap();
        }
    }

    #[test]
    fn the_tail_is_queued_in_slices_up_to_the_committed_end_and_again_after_a_restart() {
        let (_dir, db, conn, mut tail) = followed_database(3_000);
        let wal_len = std::fs::metadata(wal_of(&db)).unwrap().len();
        // Nothing has restarted the WAL, so every frame in it is committed.
        assert_eq!(tail.committed_end().map(|(end, _)| end), Some(wal_len));
        assert!(wal_len > 4 * MIN_SLICE, "{wal_len} bytes of WAL");

        assert!(tail.step(), "a WAL that was written is followed closely");
        assert_eq!(tail.cursor, WalTail::slice(wal_len), "one slice a step");
        assert!(tail.cursor < wal_len);
        let mut steps = 1;
        while tail.cursor < wal_len {
            tail.step();
            steps += 1;
            assert!(steps < 100, "the backlog is worked off");
        }
        assert_eq!(tail.cursor, wal_len, "never past what was committed");
        assert!(tail.wal.queued >= 2);
        assert!(!tail.step(), "nothing committed since, nothing left: quiet");

        // A checkpoint that copied everything lets the next commit start the WAL over; this
        // one's frames reach past where the last generation's ended.
        conn.query_row("PRAGMA wal_checkpoint(RESTART)", [], |_| Ok(()))
            .unwrap();
        insert(&conn, 4_000);
        let (end, _) = tail.committed_end().unwrap();
        assert!(end > wal_len, "a longer generation: {end} after {wal_len}");
        assert!(tail.step());
        assert_eq!(
            tail.cursor,
            WalTail::slice(end),
            "followed from the first frame again"
        );
    }

    #[test]
    fn frames_of_a_transaction_still_open_are_not_followed() {
        let (_dir, db, conn, mut tail) = followed_database(10);
        let (committed, _) = tail.committed_end().unwrap();
        // A page cache of 16 pages makes a large transaction spill frames into the WAL.
        conn.pragma_update(None, "cache_size", 16).unwrap();
        conn.execute_batch("BEGIN").unwrap();
        insert(&conn, 2_000);
        let written = std::fs::metadata(wal_of(&db)).unwrap().len();
        assert!(
            written > committed,
            "frames spilled: {written} against {committed}"
        );
        assert_eq!(tail.committed_end().map(|(end, _)| end), Some(committed));
        while tail.cursor < committed {
            tail.step();
        }
        tail.step();
        assert_eq!(
            tail.cursor, committed,
            "spilled frames wait for their commit"
        );
        conn.execute_batch("COMMIT").unwrap();
        assert!(tail.committed_end().unwrap().0 > committed);
    }

    #[test]
    fn without_a_wal_index_the_whole_wal_is_kicked() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("leads.db");
        let mut tail = WalTail::new(&db);
        assert!(tail.committed_end().is_none());
        assert!(!tail.step(), "nothing to follow is quiet");
        assert_eq!(
            (tail.cursor, tail.wal.queued),
            (0, 0),
            "nor anything to kick"
        );
        std::fs::write(wal_of(&db), vec![3u8; 1 << 16]).unwrap();
        tail.wal.reopen_at = Instant::now();
        assert!(!tail.step());
        assert_eq!(tail.cursor, 0);
        assert_eq!(
            tail.wal.queued, 1,
            "a WAL without its index is kicked whole"
        );
    }
}
