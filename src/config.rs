//! Configuration: the defaults compiled into the binary, then `config/default.toml` and
//! `config/<profile>.toml` from the working directory when present, then `TALLY__SECTION__KEY`
//! environment variables (DESIGN.md section 6). The key names are part of the interface.

use std::time::Duration;

use anyhow::Context;
use serde::Deserialize;

/// The compiled-in defaults, so the binary runs from any directory.
const DEFAULTS: &str = include_str!("../config/default.toml");

/// Everything Tally can be told at start.
#[derive(Debug, Clone, Deserialize)]
pub struct Settings {
    pub database: DatabaseSettings,
    pub http: HttpSettings,
    pub auth: AuthSettings,
    pub pipeline: PipelineSettings,
    pub idempotency: IdempotencySettings,
    pub log: LogSettings,
    pub telemetry: TelemetrySettings,
}

#[derive(Debug, Clone, Deserialize)]
pub struct DatabaseSettings {
    /// A libpq-style URL, `postgres://user@host:port/dbname`. The database is created if missing.
    pub url: String,
    /// Connections in the pool (handlers, balance loads and the journal writer).
    pub pool_size: usize,
    pub connect_timeout_ms: u64,
    /// How long a caller waits for a pooled connection before giving up with 503.
    pub acquire_timeout_ms: u64,
    /// Period of the database health ping, in milliseconds.
    pub health_check_interval_ms: u64,
}

#[derive(Debug, Clone, Deserialize)]
pub struct HttpSettings {
    /// `host:port`; port 0 picks a free one (tests), reported by `Application::port`.
    pub bind: String,
    /// actix-web worker threads; 0 means one per core.
    pub workers: usize,
    /// Largest request body in bytes; larger bodies get 413.
    pub body_limit_bytes: usize,
    /// Idle keep-alive connections are closed after this many seconds.
    pub keep_alive_s: u64,
    /// How long readiness reports "shutting down" before the listener closes, in milliseconds.
    pub shutdown_delay_ms: u64,
    /// The whole graceful shutdown (delay, HTTP drain, pipeline drain, pools) must end within
    /// this many milliseconds of the signal.
    pub shutdown_timeout_ms: u64,
}

#[derive(Debug, Clone, Deserialize)]
pub struct AuthSettings {
    /// HS256 key; empty means "generate one and warn" (development only).
    pub jwt_secret: String,
    pub access_token_ttl_s: u64,
    pub refresh_token_ttl_s: u64,
}

#[derive(Debug, Clone, Deserialize)]
pub struct PipelineSettings {
    /// Transactions admitted and not yet answered, at most (the submission queue's capacity).
    pub queue_capacity: usize,
    /// Worker actors draining the submission queue.
    pub workers: usize,
    /// Most transactions in one group commit.
    pub batch_size_max: usize,
    /// How long the journal writer lingers for more work before committing, in microseconds.
    pub batch_linger_us: u64,
    /// Idle time after which a balance actor is stopped, in milliseconds.
    pub actor_idle_timeout_ms: u64,
    /// Longest a caller waits for its commit before it is told 503, in milliseconds.
    pub reply_timeout_ms: u64,
    /// `Retry-After` seconds sent with 503 `overloaded`.
    pub retry_after_s: u64,
}

#[derive(Debug, Clone, Deserialize)]
pub struct IdempotencySettings {
    /// Age in hours after which an idempotency key is forgotten.
    pub retention_hours: u64,
}

#[derive(Debug, Clone, Deserialize)]
pub struct LogSettings {
    /// `json` or `pretty`.
    pub format: String,
    /// tracing `EnvFilter` directives; `RUST_LOG` wins when set.
    pub filter: String,
    /// Log one line per HTTP request (target `tally::access`).
    pub access: bool,
}

#[derive(Debug, Clone, Deserialize)]
pub struct TelemetrySettings {
    /// OTLP/HTTP collector URL; empty disables span export.
    pub otlp_endpoint: String,
    /// `service.name` resource attribute of exported spans.
    pub service_name: String,
}

impl Settings {
    /// Loads the layered configuration. `profile` (or `TALLY__PROFILE`) selects
    /// `config/<profile>.toml`.
    ///
    /// Errors: a malformed file, or a value of the wrong type in a file or variable.
    pub fn load(profile: Option<&str>) -> anyhow::Result<Settings> {
        let profile = profile
            .map(str::to_owned)
            .or_else(|| std::env::var("TALLY__PROFILE").ok());
        let mut builder = config::Config::builder()
            .add_source(config::File::from_str(DEFAULTS, config::FileFormat::Toml))
            .add_source(config::File::with_name("config/default").required(false));
        if let Some(profile) = &profile {
            builder = builder
                .add_source(config::File::with_name(&format!("config/{profile}")).required(false));
        }
        let settings = builder
            .add_source(
                config::Environment::with_prefix("TALLY")
                    .prefix_separator("__")
                    .separator("__")
                    .ignore_empty(true)
                    .try_parsing(true),
            )
            .build()
            .context("reading configuration")?
            .try_deserialize::<Settings>()
            .context("invalid configuration")?;
        settings.validate()?;
        Ok(settings)
    }

    /// Refuses settings the pipeline cannot run with (zero-sized queues and pools).
    pub fn validate(&self) -> anyhow::Result<()> {
        anyhow::ensure!(
            self.database.pool_size >= 2,
            "database.pool_size must be at least 2"
        );
        anyhow::ensure!(
            self.pipeline.queue_capacity >= 1,
            "pipeline.queue_capacity must be at least 1"
        );
        anyhow::ensure!(
            self.pipeline.workers >= 1,
            "pipeline.workers must be at least 1"
        );
        anyhow::ensure!(
            self.pipeline.batch_size_max >= 1,
            "pipeline.batch_size_max must be at least 1"
        );
        anyhow::ensure!(
            self.http.body_limit_bytes >= 1024,
            "http.body_limit_bytes must be at least 1024"
        );
        anyhow::ensure!(
            self.http.shutdown_delay_ms < self.http.shutdown_timeout_ms,
            "http.shutdown_delay_ms must be shorter than http.shutdown_timeout_ms"
        );
        anyhow::ensure!(
            self.database.health_check_interval_ms >= 10,
            "database.health_check_interval_ms must be at least 10"
        );
        Ok(())
    }
}

impl DatabaseSettings {
    pub fn acquire_timeout(&self) -> Duration {
        Duration::from_millis(self.acquire_timeout_ms)
    }

    pub fn connect_timeout(&self) -> Duration {
        Duration::from_millis(self.connect_timeout_ms)
    }

    pub fn health_check_interval(&self) -> Duration {
        Duration::from_millis(self.health_check_interval_ms)
    }
}

impl HttpSettings {
    pub fn shutdown_delay(&self) -> Duration {
        Duration::from_millis(self.shutdown_delay_ms)
    }

    pub fn shutdown_timeout(&self) -> Duration {
        Duration::from_millis(self.shutdown_timeout_ms)
    }
}
