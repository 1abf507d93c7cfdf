//! Early writeback of the files whose bytes would otherwise stall the log's flushes. The flush
//! threads `fdatasync` the log's WAL about a thousand times a second, and a flush that lands
//! behind a burst of other writes to the same disk waits for it, 10–50 ms, with every delivery
//! of its batch. Such bursts come from pages left dirty in the page cache until an fsync sends
//! them at once: the leads file's (the projector commits at `synchronous=NORMAL`; its WAL frames
//! and what each checkpoint copies wait for a checkpoint's fsync) and the log's database file
//! (see [`spawn`]). So these files are kicked: Linux's `sync_file_range` with
//! `SYNC_FILE_RANGE_WRITE` queues the writeback of a file's dirty pages and returns, without
//! waiting for it and without flushing the disk's cache. The projector kicks its WAL after each
//! round commits (a timer would also catch frames that a round spills before it commits and
//! rewrites later, and write them twice), and a thread of its own kicks both database files
//! every [`PERIOD`], during checkpoints too. The same bytes then reach the disk in small steps.
//! Durability does not change: SQLite's own syncs stay where they were. On other systems a kick
//! does nothing.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

/// How often the database files are kicked. In 20 s runs at 64 connections on the
/// production-shaped mix (2026-12-04, the kicks made by a process beside the server), kicking
/// both leads files every 20 ms left no log flush over 25 ms per run, every 100 ms 4–10 of them,
/// the WAL alone 5–12 and the database file alone 20–22, against 22–27 without kicks.
pub(super) const PERIOD: Duration = Duration::from_millis(20);

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

    /// Queues the writeback of the file's dirty pages, and returns.
    pub(super) fn kick(&mut self) {
        if Instant::now() >= self.reopen_at {
            self.file = File::open(&self.path).ok();
            self.reopen_at = Instant::now() + REOPEN;
        }
        if let Some(file) = &self.file {
            if let Err(err) = start_writeback(file).map(|()| self.queued += 1) {
                tracing::debug!(%err, path = %self.path.display(), "could not start a writeback");
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
pub(super) fn spawn(paths: Vec<PathBuf>, stop: CancellationToken) -> std::io::Result<()> {
    let files = paths.into_iter().map(Writeback::new).collect();
    std::thread::Builder::new()
        .name("writeback".into())
        .spawn(move || run(files, PERIOD, &stop))
        .map(drop)
}

/// The loop: a kick of every file each `period` until `stop`. Returns the files.
fn run(mut files: Vec<Writeback>, period: Duration, stop: &CancellationToken) -> Vec<Writeback> {
    while !stop.is_cancelled() {
        for file in &mut files {
            file.kick();
        }
        std::thread::sleep(period);
    }
    files
}

/// Queues the writeback of every dirty page of `file`, and returns without waiting for it.
#[cfg(target_os = "linux")]
#[allow(unsafe_code)]
fn start_writeback(file: &File) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    // SAFETY: the descriptor is open for the whole call (borrowed from `file`); offset 0 with
    // length 0 means the whole file; the call reads and writes no memory of ours.
    let rc = unsafe { libc::sync_file_range(file.as_raw_fd(), 0, 0, libc::SYNC_FILE_RANGE_WRITE) };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

#[cfg(not(target_os = "linux"))]
fn start_writeback(_file: &File) -> std::io::Result<()> {
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
        start_writeback(&reader).unwrap();
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
        let stop = CancellationToken::new();
        let stopper = stop.clone();
        let thread = std::thread::spawn(move || run(files, Duration::from_millis(1), &stop));
        std::thread::sleep(Duration::from_millis(50));
        stopper.cancel();
        let files = thread.join().expect("the loop does not panic");
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
}
