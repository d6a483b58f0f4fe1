//! PostgreSQL access: connection pools, database creation, migrations, and every SQL statement
//! Tally runs. Nothing outside this module writes SQL.

pub mod alerts;
pub mod audit;
pub mod balances;
pub mod chain;
pub mod events;
pub mod fx;
pub mod health;
pub mod idempotency;
pub mod journal;
pub mod limits;
pub mod lockout;
pub mod schedules;
pub mod tokens;
pub mod transactions;
pub mod users;
pub mod webhooks;

use std::time::Duration;

use anyhow::Context;
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use tokio_postgres::error::SqlState;
use tokio_postgres::NoTls;

use crate::config::DatabaseSettings;

pub use health::{AcquireError, DatabaseHealth, DbPool};

mod embedded {
    refinery::embed_migrations!("migrations");
}

/// `application_name` of the request handlers' connections.
pub const APP_NAME: &str = "tally";
/// `application_name` of the journal writer's connections (the group commits). Operators and
/// the fault tests find the pipeline's backends by it.
pub const JOURNAL_APP_NAME: &str = "tally-journal";
/// `application_name` of the live feed tailer's connection (`LISTEN tally_events`).
pub const FEED_APP_NAME: &str = "tally-feed";
/// The application name of the event publisher's connection (`amqp::cdc`).
pub const CDC_APP_NAME: &str = "tally-cdc";
/// `application_name` of the health check's connection.
pub const HEALTH_APP_NAME: &str = "tally-health";
/// `application_name` of `tally verify`'s connection.
pub const VERIFY_APP_NAME: &str = "tally-verify";

/// Session settings of the journal writer's connections, on top of [`pg_config`]'s.
///
/// Every statement of a group commit looks rows up by key (`unnest` of the batch's keys joined
/// to a primary key), which is only fast as an index nested loop. The planner cannot be trusted
/// to see that: a prepared statement's generic plan is made once per connection, with the
/// statistics of that moment, and a plan made while `balances` was small (a new database, the
/// first minutes of a run) joins by hash over a sequential scan of the whole table. Measured:
/// 274 of 840 logged batch statements did exactly that in a 10 s `transfer-uniform` run
/// (`auto_explain`); with these settings `transfer-uniform` went from 3,294 to 4,924
/// requests/s (`tally-load run --workload transfer-uniform --clients 64 --duration-s 20`, fresh
/// database, before and after). Turning the other join methods and sequential scans off (they stay possible
/// when nothing else is, at a penalty) makes the lookup plan the only plan; JIT is off because
/// that penalty would otherwise make every such plan look expensive enough to compile.
const JOURNAL_PLANNER_OPTIONS: &str =
    "-c enable_hashjoin=off -c enable_mergejoin=off -c enable_seqscan=off -c jit=off";

/// The connection settings of every session the service opens: `application_name`, the connect
/// timeout, and the startup options of [`session_options`] with the configured
/// `database.statement_timeout_ms`.
fn pg_config(
    settings: &DatabaseSettings,
    application_name: &str,
) -> anyhow::Result<tokio_postgres::Config> {
    session_config(settings, application_name, settings.statement_timeout_ms)
}

/// Like [`pg_config`] with no statement timeout, for work that scans or rewrites whole tables
/// and so legitimately runs longer than any request (migrations, `tally verify`). The lock
/// timeout still applies: such a session must not queue behind a lock (and make every request
/// queue behind it) for longer than a request would.
fn maintenance_config(
    settings: &DatabaseSettings,
    application_name: &str,
) -> anyhow::Result<tokio_postgres::Config> {
    session_config(settings, application_name, 0)
}

fn session_config(
    settings: &DatabaseSettings,
    application_name: &str,
    statement_timeout_ms: u64,
) -> anyhow::Result<tokio_postgres::Config> {
    let mut config: tokio_postgres::Config = settings
        .url
        .parse()
        .context("database.url is not a PostgreSQL URL")?;
    let options = session_options(
        config.get_options(),
        statement_timeout_ms,
        settings.lock_timeout_ms,
    );
    config
        .application_name(application_name)
        .connect_timeout(Duration::from_millis(settings.connect_timeout_ms))
        .options(options);
    Ok(config)
}

/// The startup options (`-c name=value`, sent with the connection request, so they cost no round
/// trip and hold from the session's first statement) of every session: `url_options` (the
/// `options` of `database.url`, if any) first, then Tally's own, which therefore win.
///
/// - `synchronous_commit=on`: invariant 3, a 2xx means the commit reached disk; set explicitly
///   so that a server-wide `synchronous_commit = off` cannot weaken it.
/// - `statement_timeout` and `lock_timeout` (`database.statement_timeout_ms`,
///   `database.lock_timeout_ms`): no request waits on the database without a bound.
/// - `timezone=UTC`: the server's, database's or role's default time zone must not change what
///   Tally computes; `timestamptz` arithmetic (`+ interval '1 day'`, `generate_series`,
///   `date_trunc`) follows the session's zone, and Tally's calendar is UTC (DESIGN.md section 8).
///   Startup options override `ALTER DATABASE ... SET` and `ALTER ROLE ... SET`.
fn session_options(
    url_options: Option<&str>,
    statement_timeout_ms: u64,
    lock_timeout_ms: u64,
) -> String {
    let ours = format!(
        "-c synchronous_commit=on -c statement_timeout={statement_timeout_ms} \
         -c lock_timeout={lock_timeout_ms} -c timezone=UTC"
    );
    match url_options
        .map(str::trim)
        .filter(|options| !options.is_empty())
    {
        Some(theirs) => format!("{theirs} {ours}"),
        None => ours,
    }
}

/// Creates the configured database if it does not exist (connecting to the `postgres`
/// maintenance database of the same server), then applies the embedded migrations.
///
/// Errors: the server is unreachable, the role may not create databases, or a migration fails.
pub async fn prepare_database(settings: &DatabaseSettings) -> anyhow::Result<()> {
    let config = pg_config(settings, APP_NAME)?;
    let dbname = config
        .get_dbname()
        .context("database.url names no database")?
        .to_owned();
    let mut admin = config.clone();
    admin.dbname("postgres");
    let (client, connection) = admin
        .connect(NoTls)
        .await
        .context("connecting to PostgreSQL")?;
    let connection = tokio::spawn(connection);
    let exists = client
        .query_opt("SELECT 1 FROM pg_database WHERE datname = $1", &[&dbname])
        .await
        .context("looking up the database")?
        .is_some();
    if !exists {
        let quoted = format!("\"{}\"", dbname.replace('"', "\"\""));
        match client
            .batch_execute(&format!("CREATE DATABASE {quoted}"))
            .await
        {
            Ok(()) => tracing::info!(database = %dbname, "created database"),
            // Another process created it between our check and our CREATE.
            Err(error) if error.code() == Some(&SqlState::DUPLICATE_DATABASE) => {}
            Err(error) => return Err(error).context("creating the database"),
        }
    }
    drop(client);
    let _ = connection.await;
    migrate(settings).await
}

/// Applies the embedded refinery migrations (`migrations/`) that have not run yet.
pub async fn migrate(settings: &DatabaseSettings) -> anyhow::Result<()> {
    let (mut client, connection) = maintenance_config(settings, APP_NAME)?
        .connect(NoTls)
        .await
        .context("connecting to the database")?;
    let connection = tokio::spawn(connection);
    let report = embedded::migrations::runner()
        .run_async(&mut client)
        .await
        .context("applying migrations")?;
    for migration in report.applied_migrations() {
        tracing::info!(migration = %migration, "applied migration");
    }
    drop(client);
    let _ = connection.await;
    Ok(())
}

/// One connection for whole-ledger maintenance work (`tally verify`): the session settings of
/// [`maintenance_config`] (no statement timeout; the lock timeout and UTC apply). Returns the
/// client and the task driving the connection, which ends when the client is dropped.
///
/// Errors: `database.url` is not a URL, or the server cannot be reached.
pub async fn connect_for_maintenance(
    settings: &DatabaseSettings,
    application_name: &str,
) -> anyhow::Result<(tokio_postgres::Client, tokio::task::JoinHandle<()>)> {
    let (client, connection) = maintenance_config(settings, application_name)?
        .connect(NoTls)
        .await
        .context("connecting to the database")?;
    let connection = tokio::spawn(async move {
        if let Err(error) = connection.await {
            tracing::warn!(%error, "maintenance connection failed");
        }
    });
    Ok((client, connection))
}

/// One connection of its own with the request handlers' session settings ([`pg_config`]), for
/// a task that must not share a pool: the live feed's tailer, which `LISTEN`s on it. Returns the
/// client and the connection, which the caller drives (to read its notifications).
///
/// Errors: `database.url` is not a URL, or the server cannot be reached.
pub async fn connect_dedicated(
    settings: &DatabaseSettings,
    application_name: &str,
) -> anyhow::Result<(
    tokio_postgres::Client,
    tokio_postgres::Connection<tokio_postgres::Socket, tokio_postgres::tls::NoTlsStream>,
)> {
    pg_config(settings, application_name)?
        .connect(NoTls)
        .await
        .context("connecting to the database")
}

/// A pool of at most `size` connections named `application_name`. Connections are made on
/// demand, so building the pool succeeds while the database is down.
pub fn pool(
    settings: &DatabaseSettings,
    application_name: &str,
    size: usize,
) -> anyhow::Result<Pool> {
    build_pool(settings, pg_config(settings, application_name)?, size)
}

/// The journal writer's pool: `size` connections named [`JOURNAL_APP_NAME`], planning every
/// statement as keyed lookups ([`JOURNAL_PLANNER_OPTIONS`]).
pub fn journal_pool(settings: &DatabaseSettings, size: usize) -> anyhow::Result<Pool> {
    let mut config = pg_config(settings, JOURNAL_APP_NAME)?;
    let options = format!(
        "{} {JOURNAL_PLANNER_OPTIONS}",
        config.get_options().unwrap_or_default()
    );
    config.options(options.trim());
    build_pool(settings, config, size)
}

fn build_pool(
    settings: &DatabaseSettings,
    config: tokio_postgres::Config,
    size: usize,
) -> anyhow::Result<Pool> {
    let manager = Manager::from_config(
        config,
        NoTls,
        ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        },
    );
    Pool::builder(manager)
        .max_size(size)
        .runtime(Runtime::Tokio1)
        .wait_timeout(Some(settings.acquire_timeout()))
        .create_timeout(Some(Duration::from_millis(settings.connect_timeout_ms)))
        .recycle_timeout(Some(Duration::from_millis(settings.connect_timeout_ms)))
        .build()
        .context("building the connection pool")
}

/// True when the error means the connection (or the server) is gone rather than that the
/// statement was wrong: the caller should answer 503 and let the pool reconnect. Errors without a
/// SQLSTATE count only when they come from I/O; a decoding error or an unexpected row count is
/// a bug, reported as such (500), not as an outage.
pub fn is_connection_error(error: &tokio_postgres::Error) -> bool {
    use std::error::Error as _;
    if error.is_closed() {
        return true;
    }
    match error.code() {
        None => error
            .source()
            .is_some_and(|source| source.is::<std::io::Error>()),
        Some(code) => {
            code.code().starts_with("08")
                || *code == SqlState::ADMIN_SHUTDOWN
                || *code == SqlState::CRASH_SHUTDOWN
                || *code == SqlState::CANNOT_CONNECT_NOW
        }
    }
}

/// True when the server cancelled the statement because a bound of the session ran out:
/// `lock_timeout` (SQLSTATE 55P03) or `statement_timeout` (57014, which a cancel request also
/// gives; Tally sends none).
pub fn is_timeout(error: &tokio_postgres::Error) -> bool {
    matches!(error.code(), Some(code) if *code == SqlState::LOCK_NOT_AVAILABLE || *code == SqlState::QUERY_CANCELED)
}

/// True for errors that a retry of the same transaction can cure (deadlock, serialization).
pub fn is_transient(error: &tokio_postgres::Error) -> bool {
    matches!(error.code(), Some(code) if *code == SqlState::T_R_DEADLOCK_DETECTED || *code == SqlState::T_R_SERIALIZATION_FAILURE)
}
