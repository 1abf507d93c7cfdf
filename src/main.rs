//! The `ctwa-leads` binary: caps the C allocator's arenas, parses the command line and hands
//! over to the library.

// The library forbids `unsafe`; the binary allows it in one place, the `mallopt` call below.
#![deny(unsafe_code)]

use clap::Parser;

fn main() -> std::process::ExitCode {
    arenas::cap();
    ctwa_leads::cli::run(ctwa_leads::cli::Cli::parse())
}

/// glibc gives every thread that allocates under contention an arena of its own, up to eight
/// per core, and freed memory in one arena is not reused by another. With the HTTP workers, the
/// log writer, its flush threads and the projector all allocating, that is about ten arenas,
/// and under load the service's RSS grows by a fifth from that alone (`bench/run.sh`, 64
/// connections: peak RSS 63–64 MB with glibc's default, 52–57 MB with one arena per core, at
/// the same throughput within the machine's noise). So the binary asks for one arena per core
/// before any thread starts, unless the operator set `MALLOC_ARENA_MAX` or a glibc tunable.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
mod arenas {
    pub fn cap() {
        let operator_chose = std::env::var_os("MALLOC_ARENA_MAX").is_some()
            || std::env::var("GLIBC_TUNABLES").is_ok_and(|t| t.contains("arena_max"));
        if operator_chose {
            return;
        }
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        let arenas = libc::c_int::try_from(cores.max(2)).unwrap_or(libc::c_int::MAX);
        // SAFETY: `mallopt` only sets an allocator parameter. It runs first thing in `main`,
        // before any other thread exists, so nothing allocates concurrently; a refused value
        // (it returns 0) leaves glibc's default in place, which is only a missed saving.
        #[allow(unsafe_code)]
        unsafe {
            libc::mallopt(libc::M_ARENA_MAX, arenas);
        }
    }
}

/// Other allocators (musl, macOS) keep their own defaults.
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
mod arenas {
    pub fn cap() {}
}
