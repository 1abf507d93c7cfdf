//! ctwa-leads: captures leads from WhatsApp Click-to-WhatsApp ads. A delivery flows
//! `webhook` (verify → parse) → `store::log` (durable, then 200) → `store::projector` (leads,
//! with `leads::extract`, a pure function, and the forwarding outbox) → `forward` (signed pushes to
//! the team's systems); `leads::api` serves what was stored, `graph` proxies
//! the ads' WhatsApp assets, and `monitor` exports metrics. `main.rs` only parses the CLI.

#![forbid(unsafe_code)]

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
