//! The `ctwa-leads` binary: tunes the C allocator (arenas, mmap threshold, a periodic trim),
//! parses the command line and hands over to the library.

// The library forbids `unsafe`; the binary allows it in one place, the allocator calls below.
#![deny(unsafe_code)]

use clap::Parser;

fn main() -> std::process::ExitCode {
    allocator::tune();
    allocator::trim_periodically();
    ctwa_leads::cli::run(ctwa_leads::cli::Cli::parse())
}

/// Two glibc defaults that cost this service memory, each set before any thread starts unless
/// the operator chose it (its `MALLOC_*` variable or a `GLIBC_TUNABLES` entry).
///
/// - **Arenas.** glibc gives every thread that allocates under contention an arena of its own,
///   up to eight per core, and freed memory in one arena is not reused by another. Before the
///   mmap threshold below was fixed, glibc's default cost a fifth more RSS under load
///   (`bench/run.sh`, 64 connections: peak RSS 63–64 MB, against 52–57 MB with one arena per
///   core). With that threshold fixed, too few arenas cost CPU instead: the HTTP workers, the
///   log writer, its flush threads and the projector (SQLite allocates on every page) share
///   them. Four per core, eight here: in six pairs of `bench/side_by_side.sh A B 32 20`
///   (production-shaped `--mix real`, each setting on both sides) 0.95–0.99 of the CPU per
///   delivery of one per core, mean 0.965, every pair below 1; peak RSS 54.3 MB against 54.8 on
///   a database of 1M leads under 64 connections and a full export (one run each).
/// - **The mmap threshold.** A block above it (128 KiB at start) gets a mapping of its own,
///   returned to the kernel when freed; but each such block freed raises the threshold to its
///   size, up to 32 MiB. After a few 1000-message deliveries (about 1 MB each, their parse and
///   leads a few MB more) those buffers come from the arenas instead and stay resident once
///   freed. Fixed at 128 KiB: after a prefill of 300,000 leads in 1000-message deliveries and
///   10 s at 5,000 deliveries/s, peak RSS 55–58 MB instead of 61–65 MB (three runs each).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
mod allocator {
    use std::time::Duration;

    /// Enough for the threads that allocate on the hot path (see "Arenas" above).
    const ARENAS_PER_CORE: usize = 4;

    /// Whether the operator set `variable`, or the glibc tunable named `tunable`.
    fn operator_chose(variable: &str, tunable: &str) -> bool {
        std::env::var_os(variable).is_some()
            || std::env::var("GLIBC_TUNABLES").is_ok_and(|t| t.contains(tunable))
    }

    pub fn tune() {
        let arenas = (!operator_chose("MALLOC_ARENA_MAX", "arena_max")).then(|| {
            let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
            libc::c_int::try_from(cores.max(2).saturating_mul(ARENAS_PER_CORE))
                .unwrap_or(libc::c_int::MAX)
        });
        let threshold =
            (!operator_chose("MALLOC_MMAP_THRESHOLD_", "mmap_threshold")).then_some(128 * 1024);
        for (parameter, value) in [
            (libc::M_ARENA_MAX, arenas),
            (libc::M_MMAP_THRESHOLD, threshold),
        ] {
            let Some(value) = value else { continue };
            // SAFETY: `mallopt` only sets an allocator parameter. It runs first thing in
            // `main`, before any other thread exists, so nothing allocates concurrently; a
            // refused value (it returns 0) leaves glibc's default in place, which is only a
            // missed saving.
            #[allow(unsafe_code)]
            unsafe {
                libc::mallopt(parameter, value);
            }
        }
    }

    /// How often the trim thread looks at the process (see [`trim_periodically`]).
    const TRIM_CHECK_EVERY: Duration = Duration::from_secs(1);
    /// Resident memory above which freed pages go back even under load.
    const TRIM_ABOVE_BYTES: u64 = 48 << 20;
    /// CPU time of the whole process over one check below which it counts as idle (2% of a
    /// core; an idle server uses well under 1%).
    const IDLE_CPU: Duration = Duration::from_millis(20);
    /// Growth since the last trim that an idle process hands back.
    const IDLE_GROWTH_BYTES: u64 = 1 << 20;

    /// Hands the free pages of every arena back to the kernel, from a thread of its own: once
    /// the process is idle (it used under [`IDLE_CPU`] in the last second) after its resident
    /// memory grew, and at once whenever it is over [`TRIM_ABOVE_BYTES`]. glibc returns only
    /// the free top of a heap by itself; pages freed in the middle of an arena (a finished
    /// export's rows, a request's buffers, the filter of wamids the projector replaced) stay
    /// resident until `malloc_trim` releases them: after a load on a database of 2M leads, one
    /// trim took an idle server from 47 MB to 37 MB. Until 2026-12-06 it trimmed every second,
    /// load or not; but a trim holds each arena's lock while it walks that arena (0.8–7 ms at
    /// 64 connections), and the pages it hands back fault in again. Under load RSS now stays
    /// within its bound without those trims (README, *Trimming every second cost the
    /// acknowledgements*).
    pub fn trim_periodically() {
        // A thread that cannot start only costs the saving.
        let _ = std::thread::Builder::new()
            .name("malloc-trim".into())
            .stack_size(64 * 1024)
            .spawn(|| {
                let mut cpu_before = process_cpu();
                let mut after_trim = resident_bytes();
                loop {
                    std::thread::sleep(TRIM_CHECK_EVERY);
                    let cpu = process_cpu();
                    let idle = cpu.saturating_sub(cpu_before) < IDLE_CPU;
                    cpu_before = cpu;
                    let resident = resident_bytes();
                    if resident > TRIM_ABOVE_BYTES
                        || (idle && resident > after_trim.saturating_add(IDLE_GROWTH_BYTES))
                    {
                        // SAFETY: `malloc_trim` takes each arena's own lock while it releases
                        // that arena's free pages, as `free` does; it is safe to call from any
                        // thread at any time.
                        #[allow(unsafe_code)]
                        unsafe {
                            libc::malloc_trim(0);
                        }
                        after_trim = resident_bytes();
                    }
                }
            });
    }

    /// CPU time used by every thread of the process so far (zero if the clock cannot be read,
    /// which makes every check look busy: trims then come only above [`TRIM_ABOVE_BYTES`]).
    fn process_cpu() -> Duration {
        let mut now = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: `clock_gettime` writes one `timespec` through the pointer, which points to
        // a live, writable one.
        #[allow(unsafe_code)]
        let read = unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut now) };
        if read != 0 {
            return Duration::ZERO;
        }
        Duration::new(
            u64::try_from(now.tv_sec).unwrap_or(0),
            u32::try_from(now.tv_nsec).unwrap_or(0),
        )
    }

    /// Resident memory, from `/proc/self/status`; unknown counts as over the bound, so the
    /// thread then trims every check, as it always did before.
    fn resident_bytes() -> u64 {
        std::fs::read_to_string("/proc/self/status")
            .ok()
            .and_then(|status| {
                let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
                let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
                Some(kib.saturating_mul(1024))
            })
            .unwrap_or(u64::MAX)
    }
}

/// Other allocators (musl, macOS) keep their own defaults.
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
mod allocator {
    pub fn tune() {}
    pub fn trim_periodically() {}
}
