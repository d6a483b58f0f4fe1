//! Black-box tests of the real application over HTTP, against real PostgreSQL.

mod helpers;

mod auth;
mod bad_input;
mod concurrency;
mod crash;
mod database_fault;
mod ops;
mod outage;
mod process;
mod shutdown;
mod traces;
mod transactions;
