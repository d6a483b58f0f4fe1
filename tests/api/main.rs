//! Black-box tests of the real application over HTTP, against real PostgreSQL.

mod helpers;

mod access;
mod auth;
mod bad_input;
mod bulk;
mod cache;
mod concurrency;
mod config;
mod crash;
mod database_fault;
mod database_limits;
mod exchange;
mod feed;
mod history;
mod holds;
mod import;
mod instances;
mod lifecycle;
mod limits;
mod limits_admin;
mod limits_model;
mod load_smoke;
mod middleware;
mod openapi;
mod ops;
mod outage;
mod posting;
mod process;
mod reversals;
mod schedules;
mod shutdown;
mod traces;
mod transactions;
mod users;
