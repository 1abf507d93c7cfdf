//! Leads: [`extract`] turns a verified delivery into leads (pure, no I/O), and [`api`] serves
//! the stored ones over `/v1/leads`.

pub mod api;
pub mod extract;
