//! Tally: an actor-based concurrent transaction processor, a double-entry money ledger with a
//! REST API.
//!
//! Requests enter through `routes` (actix-web), are validated into `domain` types, and money
//! movements go through the `ledger` pipeline: a bounded submission queue, worker actors,
//! per-account balance actors, and a journal writer that group-commits many transactions in
//! one PostgreSQL transaction through `store`. See `ARCHITECTURE.md` for the map and the
//! invariants each module keeps.

pub mod amqp;
pub mod auth;
pub mod cache;
pub mod cli;
pub mod clock;
pub mod config;
pub mod domain;
pub mod error;
pub mod feed;
pub mod import;
pub mod ledger;
pub mod lifecycle;
pub mod replay;
pub mod routes;
pub mod scheduler;
pub mod startup;
pub mod store;
pub mod telemetry;
pub mod verify;
pub mod webhooks;
