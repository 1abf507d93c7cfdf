//! The `ctwa-leads` binary: parses the command line and hands over to the library.

#![forbid(unsafe_code)]

use clap::Parser;

fn main() -> std::process::ExitCode {
    ctwa_leads::cli::run(ctwa_leads::cli::Cli::parse())
}
