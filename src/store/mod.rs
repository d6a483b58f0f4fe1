//! PostgreSQL access: connection pools, database creation, migrations, and every SQL statement
//! Tally runs. Nothing outside this module writes SQL.

pub mod audit;
pub mod balances;
pub mod events;
pub mod health;
pub mod idempotency;
pub mod journal;
pub mod lockout;
pub mod tokens;
pub mod transactions;
pub mod users;

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
/// `application_name` of the health check's connection.
pub const HEALTH_APP_NAME: &str = "tally-health";

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

fn pg_config(
    settings: &DatabaseSettings,
    application_name: &str,
) -> anyhow::Result<tokio_postgres::Config> {
    let mut config: tokio_postgres::Config = settings
        .url
        .parse()
        .context("database.url is not a PostgreSQL URL")?;
    config
        .application_name(application_name)
        .connect_timeout(Duration::from_millis(settings.connect_timeout_ms))
        // Invariant 3: a 2xx means the commit reached disk. Set explicitly so that a server-wide
        // `synchronous_commit = off` cannot weaken it.
        .options("-c synchronous_commit=on");
    Ok(config)
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
    let (mut client, connection) = pg_config(settings, APP_NAME)?
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

/// True for errors that a retry of the same transaction can cure (deadlock, serialization).
pub fn is_transient(error: &tokio_postgres::Error) -> bool {
    matches!(error.code(), Some(code) if *code == SqlState::T_R_DEADLOCK_DETECTED || *code == SqlState::T_R_SERIALIZATION_FAILURE)
}

/// A statement or lock wait ran past `statement_timeout` or `lock_timeout`: the database is
/// too slow or a row is held too long, which the caller reports as unavailable (503), never as
/// a broken request.
pub fn is_timeout(error: &tokio_postgres::Error) -> bool {
    matches!(error.code(), Some(code) if *code == SqlState::QUERY_CANCELED || *code == SqlState::LOCK_NOT_AVAILABLE)
}
