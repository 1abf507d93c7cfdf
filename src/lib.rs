//! ctwa-leads: captures leads from WhatsApp Click-to-WhatsApp ads. A delivery flows
//! `webhook` (verify → parse) → `leads::extract` (pure) → `store` (all SQL); `leads::api` serves
//! what was stored, and `graph` proxies the ads' WhatsApp assets. `main.rs` only parses the CLI.

#![forbid(unsafe_code)]

pub mod app;
pub mod cli;
pub mod config;
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
