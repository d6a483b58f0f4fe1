//! The `tally` command line: `tally serve` (the default) runs the service; `tally migrate`
//! applies the database migrations; `tally verify` checks the ledger contract in the database;
//! `tally healthcheck` asks a running instance whether it is ready (for container health
//! checks, so the image needs no HTTP client); `tally import` sends a file through the bulk
//! endpoint; `tally replay` rebuilds the projections from the event log into an empty database
//! and compares them; `tally admin create` creates an admin.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};

use crate::config::Settings;
use crate::startup::Application;

/// The command line (`tally --help`).
#[derive(Parser)]
#[command(
    name = "tally",
    version,
    about = "Tally: a double-entry money ledger with a REST API"
)]
pub struct Cli {
    /// Configuration profile: also reads config/<PROFILE>.toml (or set TALLY__PROFILE).
    #[arg(long, global = true)]
    profile: Option<String>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the service (default).
    Serve,
    /// Create the database if needed, apply migrations, and exit.
    Migrate,
    /// Check the ledger contract by SQL against database.url; exit 1 on any violation.
    Verify,
    /// GET /health/ready on the local instance (port of http.bind); exit 0 when it is ready.
    Healthcheck,
    /// Send a CSV or NDJSON file of transactions through the bulk endpoint, exactly once
    /// (safe to re-run after a crash).
    Import {
        /// The file: `.csv` (with a header row) or NDJSON (anything else).
        file: std::path::PathBuf,
        /// The service's base URL.
        #[arg(long, default_value = "http://127.0.0.1:8080")]
        url: String,
        #[arg(long)]
        username: String,
        /// Read the password from the first line of standard input.
        #[arg(long, required = true)]
        password_stdin: bool,
        /// Items per bulk request.
        #[arg(long, default_value_t = 1000)]
        chunk: usize,
        /// No progress bar.
        #[arg(long)]
        quiet: bool,
    },
    /// Rebuild balances, entries, holds and transaction states from the event log of
    /// database.url alone into an empty database, and compare them with the source; exit 1 on
    /// any difference.
    Replay {
        /// The empty database to rebuild into (it must exist), e.g.
        /// postgres://postgres@127.0.0.1:5432/tally_replay.
        #[arg(long)]
        into: String,
        /// No progress bar.
        #[arg(long)]
        quiet: bool,
    },
    /// Administration.
    Admin {
        #[command(subcommand)]
        command: AdminCommand,
    },
}

#[derive(Subcommand)]
enum AdminCommand {
    /// Create an admin user (the first one, typically). Reads the password from stdin.
    Create {
        #[arg(long)]
        username: String,
        /// Defaults to <username>@admin.invalid.
        #[arg(long)]
        email: Option<String>,
        /// Read the password from the first line of standard input (required: passwords never
        /// go on the command line, where `ps` would show them).
        #[arg(long, required = true)]
        password_stdin: bool,
    },
}

/// Bound on each step of `tally healthcheck`.
const HEALTHCHECK_TIMEOUT: Duration = Duration::from_secs(3);

/// Runs the command `cli` names (serving when it names none) to its end.
///
/// Errors: the configuration is invalid, or the command failed; `verify` and `healthcheck`
/// report their findings through the exit code instead.
pub async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let mut settings = Settings::load(cli.profile.as_deref())?;
    let command = cli.command.unwrap_or(Command::Serve);
    if !matches!(command, Command::Serve) {
        // Only the service exports spans.
        settings.telemetry.otlp_endpoint.clear();
    }
    let telemetry = crate::telemetry::init(&settings.log, &settings.telemetry)?;
    match command {
        Command::Serve => {
            Application::build(settings)
                .await?
                .with_telemetry(telemetry)
                .run_until_stopped()
                .await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Migrate => {
            crate::store::prepare_database(&settings.database).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Import {
            file,
            url,
            username,
            password_stdin: _,
            chunk,
            quiet,
        } => {
            let options = crate::import::ImportOptions {
                url,
                username,
                password: read_password()?,
                chunk,
                progress: !quiet,
            };
            import(&file, &options).await
        }
        Command::Replay { into, quiet } => replay(&settings, &into, quiet).await,
        Command::Admin {
            command:
                AdminCommand::Create {
                    username,
                    email,
                    password_stdin: _,
                },
        } => {
            let email = email.unwrap_or_else(|| format!("{username}@admin.invalid"));
            create_admin(&settings, &username, &email, &read_password()?).await
        }
        Command::Verify => verify(&settings).await,
        Command::Healthcheck => healthcheck(&settings),
    }
}

/// Imports `file` and prints a summary: lines, applied, failed (by reason), rate.
async fn import(
    file: &std::path::Path,
    options: &crate::import::ImportOptions,
) -> anyhow::Result<ExitCode> {
    let summary = crate::import::run(file, options).await?;
    println!(
        "{} lines: {} applied, {} failed, {:.1?}, {:.0} lines/s",
        summary.lines,
        summary.applied,
        summary.failed.values().sum::<usize>(),
        summary.elapsed,
        summary.rate()
    );
    for (reason, count) in &summary.failed {
        println!("  failed {reason}: {count}");
    }
    Ok(ExitCode::SUCCESS)
}

/// Creates the admin `username` (the database is created and migrated first when needed);
/// an existing user of that name is left as it is.
async fn create_admin(
    settings: &Settings,
    username: &str,
    email: &str,
    password: &str,
) -> anyhow::Result<ExitCode> {
    crate::store::prepare_database(&settings.database).await?;
    let pool = crate::store::pool(&settings.database, crate::store::APP_NAME, 2)?;
    if crate::auth::create_admin(&pool, username, email, password).await? {
        println!("admin {username} created");
    } else {
        println!("admin {username} already exists");
    }
    Ok(ExitCode::SUCCESS)
}

/// Replays the event log of database.url into `into` and prints the summary.
async fn replay(settings: &Settings, into: &str, quiet: bool) -> anyhow::Result<ExitCode> {
    let (source, source_connection) =
        crate::store::connect_for_maintenance(&settings.database, crate::store::VERIFY_APP_NAME)
            .await
            .context("connecting to database.url")?;
    let source_connection = tokio::spawn(source_connection);
    let (mut target, target_connection) = tokio_postgres::connect(into, tokio_postgres::NoTls)
        .await
        .context("connecting to the --into database")?;
    let target_connection = tokio::spawn(target_connection);
    let bar = if quiet {
        indicatif::ProgressBar::hidden()
    } else {
        let bar = indicatif::ProgressBar::new(0);
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{bar:40} {pos}/{len} events ({per_sec}, {eta} left)",
            )
            .expect("a valid progress template"),
        );
        bar
    };
    let summary = crate::replay::replay(&source, &mut target, |read, total| {
        bar.set_length(total);
        bar.set_position(read);
    })
    .await;
    bar.finish_and_clear();
    drop((source, target));
    let _ = source_connection.await;
    let _ = target_connection.await;
    let summary = summary?;
    print!("{summary}");
    Ok(if summary.difference_count == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// Prints one line per check of the ledger contract and every violation found.
async fn verify(settings: &Settings) -> anyhow::Result<ExitCode> {
    let (client, connection) =
        crate::store::connect_for_maintenance(&settings.database, crate::store::VERIFY_APP_NAME)
            .await
            .context("connecting to database.url")?;
    let report = crate::verify::verify(&client, settings.idempotency.retention()).await?;
    drop(client);
    let _ = connection.await;
    print!("{report}");
    Ok(if report.is_clean() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// A minimal HTTP/1.1 GET of /health/ready on 127.0.0.1 (or the configured host).
fn healthcheck(settings: &Settings) -> anyhow::Result<ExitCode> {
    let mut address: SocketAddr = settings
        .http
        .bind
        .to_socket_addrs()
        .context("http.bind")?
        .next()
        .context("http.bind names no address")?;
    if address.ip().is_unspecified() {
        address.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
    }
    let mut stream = TcpStream::connect_timeout(&address, HEALTHCHECK_TIMEOUT)
        .with_context(|| format!("connecting to {address}"))?;
    stream.set_read_timeout(Some(HEALTHCHECK_TIMEOUT))?;
    stream.set_write_timeout(Some(HEALTHCHECK_TIMEOUT))?;
    write!(
        stream,
        "GET /health/ready HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n"
    )?;
    let mut reply = String::new();
    stream
        .take(64 * 1024)
        .read_to_string(&mut reply)
        .context("reading the reply")?;
    let status_line = reply.lines().next().unwrap_or_default();
    let body = reply.split("\r\n\r\n").nth(1).unwrap_or_default();
    println!("{status_line} {body}");
    Ok(if status_line.split_whitespace().nth(1) == Some("200") {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// The first line of standard input, without its line ending.
fn read_password() -> anyhow::Result<String> {
    let mut password = String::new();
    std::io::stdin().read_line(&mut password)?;
    Ok(password.trim_end_matches(['\r', '\n']).to_owned())
}
