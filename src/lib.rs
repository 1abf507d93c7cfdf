//! ctwa-leads: captures leads from WhatsApp Click-to-WhatsApp ads. A delivery flows
//! `webhook` (verify → parse) → `store::log` (durable, then 200) → `store::projector` (leads,
//! with `leads::extract`, a pure function, and the forwarding outbox) → `forward` (signed pushes to
//! the team's systems); `leads::api` serves what was stored, `graph` proxies
//! the ads' WhatsApp assets, and `monitor` exports metrics. `main.rs` only parses the CLI.

// One system call has no safe wrapper in the tree: `store::writeback` allows itself that one
// `unsafe` block, with its SAFETY note. Everything else stays safe.
#![deny(unsafe_code)]

pub mod app;
pub mod capi;
pub mod cli;
pub mod config;
pub mod forward;
pub mod graph;
pub mod http;
pub mod leads;
pub mod monitor;
pub mod simulate;
pub mod store;
pub mod telemetry;
pub mod webhook;

pub use app::Application;
pub use config::Settings;
