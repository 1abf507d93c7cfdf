//! Integration tests: the real application on 127.0.0.1:0 over real HTTP, with wiremock as
//! Graph. One binary with modules, so the suite links once.

mod capi;
mod faults;
mod forward;
mod graph;
mod hardening;
mod helpers;
mod hostile;
mod leads;
mod maintenance;
mod operations;
mod webhook;
