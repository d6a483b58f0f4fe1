//! The `tally` binary: parses the command line and runs it (`tally::cli`).

use std::process::ExitCode;

use clap::Parser;

#[actix_web::main]
async fn main() -> anyhow::Result<ExitCode> {
    return_large_allocations_to_the_os();
    tally::cli::run(tally::cli::Cli::parse()).await
}

/// glibc raises its mmap threshold after large blocks are freed, so argon2id's 19 MiB blocks end
/// up in per-thread heaps that are never returned to the OS: the resident size then grows with
/// every thread that ever hashed a password (2.4 GB seen after 400 registrations). A fixed
/// threshold keeps every allocation of 1 MiB or more in its own mapping, unmapped when freed.
fn return_large_allocations_to_the_os() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets an allocator parameter; called before any thread is started.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 1024 * 1024);
    }
}
