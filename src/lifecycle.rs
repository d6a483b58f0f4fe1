//! The process's serving state: whether it is draining for shutdown, and how many HTTP requests
//! it has started and finished. Readiness, the HTTP middleware and the shutdown sequence
//! (`startup::Application::run_until`) share it through `routes::AppState`.
//!
//! The two request counters are what proves a graceful shutdown kept its promise: when the
//! process exits, every request it started reading has been answered, so `started ==
//! finished`. The shutdown log line reports both.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

#[derive(Debug, Default)]
pub struct Lifecycle {
    draining: AtomicBool,
    http_started: AtomicU64,
    http_finished: AtomicU64,
}

impl Lifecycle {
    /// From now on readiness answers 503 and every response closes its connection.
    pub fn begin_drain(&self) {
        self.draining.store(true, Ordering::Relaxed);
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    pub fn request_started(&self) {
        self.http_started.fetch_add(1, Ordering::Relaxed);
    }

    pub fn request_finished(&self) {
        self.http_finished.fetch_add(1, Ordering::Relaxed);
    }

    /// `(started, finished)` HTTP requests since start.
    pub fn requests(&self) -> (u64, u64) {
        // Finished first: a request counted as finished is then surely counted as started.
        let finished = self.http_finished.load(Ordering::Relaxed);
        let started = self.http_started.load(Ordering::Relaxed);
        (started, finished)
    }

    /// HTTP requests being handled now.
    pub fn requests_in_flight(&self) -> u64 {
        let (started, finished) = self.requests();
        started.saturating_sub(finished)
    }
}
