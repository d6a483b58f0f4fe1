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
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// `development` (the default) or another profile name; only `development` may run
    /// without a configured JWT key.
    pub profile: String,
    pub database: DatabaseSettings,
    pub http: HttpSettings,
    pub auth: AuthSettings,
    pub pipeline: PipelineSettings,
    pub idempotency: IdempotencySettings,
    pub holds: HoldSettings,
    pub log: LogSettings,
    pub telemetry: TelemetrySettings,
    pub rate_limit: RateLimitSettings,
    pub bootstrap: BootstrapSettings,
    pub redis: RedisSettings,
    pub bulk: BulkSettings,
    pub ledger: LedgerSettings,
    pub limits: LimitsSettings,
    pub fx: FxSettings,
    pub schedules: ScheduleSettings,
    pub events: EventSettings,
    pub webhooks: WebhookSettings,
    pub feed: FeedSettings,
    pub amqp: AmqpSettings,
}

/// `[amqp]`: queue ingestion and change data capture over RabbitMQ (DESIGN.md section 12,
/// `crate::amqp`). Everything here is off while `url` is empty.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AmqpSettings {
    /// The broker, `amqp://user:password@host:port/vhost` (the default vhost is `%2f`); empty
    /// turns ingestion and publishing off.
    pub url: String,
    /// Consume transaction requests from `requests_queue`.
    pub ingest: bool,
    /// The durable queue of transaction requests, and the durable queue that malformed ones
    /// are moved to with their reason (both declared by Tally).
    pub requests_queue: String,
    pub dead_letter_queue: String,
    /// Who a request may act as: user ids or usernames of active users. A request naming
    /// anyone else is dead-lettered.
    pub service_users: Vec<String>,
    /// Consumers of `requests_queue` per instance (1 to 64), each on a thread (actix arbiter)
    /// and a broker connection of its own: one thread parses, answers and replies to about
    /// 2,000 single requests a second.
    pub consumers: usize,
    /// Requests delivered and not yet acknowledged, per consumer (1 to 10000): what is in
    /// flight at most.
    pub prefetch: u16,
    /// Publish the event log to `events_exchange` (a durable topic exchange, routing key =
    /// event type), one instance at a time.
    pub publish_events: bool,
    pub events_exchange: String,
    /// Most events published (and confirmed) before the cursor is stored (1 to 10000).
    pub publish_batch: u32,
    /// How often the publisher looks for new events when it has caught up, milliseconds
    /// (10 to 60000).
    pub poll_interval_ms: u64,
    /// The longest wait between two attempts to reach the broker, milliseconds (100 to
    /// 60000); the wait doubles from 100 ms up to it.
    pub reconnect_max_ms: u64,
}

impl AmqpSettings {
    pub fn enabled(&self) -> bool {
        !self.url.is_empty()
    }

    pub fn poll_interval(&self) -> Duration {
        Duration::from_millis(self.poll_interval_ms)
    }

    pub fn reconnect_max(&self) -> Duration {
        Duration::from_millis(self.reconnect_max_ms)
    }
}

/// `[feed]`: the live WebSocket feed, `GET /api/v1/ws` (DESIGN.md section 10).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FeedSettings {
    /// Seconds between pings (1 to 3600); a connection that answered none of the last two is
    /// closed.
    pub heartbeat_s: u64,
    /// Events waiting for one connection at most (1 to 100000); a client that falls further
    /// behind is closed with the last cursor it was sent (close code 4008).
    pub buffer_messages: usize,
    /// Open feed connections per instance at most (1 to 1000000); more are refused with 503.
    pub max_connections: usize,
    /// Open feed connections per user and instance at most (1 to 10000); more are refused
    /// with 429.
    pub max_connections_per_user: usize,
    /// Lifetime of a ticket from `POST /api/v1/ws/ticket`, seconds (1 to 300).
    pub ticket_ttl_s: u64,
    /// How often the tailer reads the log without a notification, milliseconds (10 to
    /// 60000): what bounds the delay when a notification is lost.
    pub poll_interval_ms: u64,
}

impl FeedSettings {
    pub fn heartbeat(&self) -> std::time::Duration {
        std::time::Duration::from_secs(self.heartbeat_s)
    }

    pub fn poll_interval(&self) -> std::time::Duration {
        std::time::Duration::from_millis(self.poll_interval_ms)
    }
}

/// `[webhooks]`: webhook delivery (DESIGN.md section 10, `crate::webhooks`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookSettings {
    /// Hosts a subscription's URL may name: exact names or IP literals, or `*.suffix` for any
    /// name below `suffix`; case-insensitive. Nothing else is ever contacted.
    pub allowed_hosts: Vec<String>,
    /// How often each instance fans out new events and looks for due deliveries, milliseconds
    /// (10 to 60000).
    pub poll_interval_ms: u64,
    /// Most events fanned out in one database transaction (1 to 10000).
    pub dispatch_batch: u32,
    /// Deliveries one instance sends at once (1 to 256).
    pub concurrency: u32,
    /// A POST fails after this long, connecting included, milliseconds (100 to 60000).
    pub timeout_ms: u64,
    /// A claimed delivery not recorded within this long is due again, milliseconds (longer
    /// than `timeout_ms`, at most 3600000).
    pub lease_ms: u64,
    /// The delay after failed attempt n is `backoff_base_ms * 2^(n-1)`, at most
    /// `backoff_max_ms` (milliseconds; 1 <= base <= max <= 604800000).
    pub backoff_base_ms: u64,
    pub backoff_max_ms: u64,
    /// Attempts of one delivery before it is recorded `failed` (1 to 100).
    pub max_attempts: u32,
    /// Failed attempts in a row that disable a subscription (1 to 10000).
    pub disable_after_failures: u32,
}

impl WebhookSettings {
    pub fn poll_interval(&self) -> Duration {
        Duration::from_millis(self.poll_interval_ms)
    }

    pub fn timeout(&self) -> Duration {
        Duration::from_millis(self.timeout_ms)
    }

    /// The delay before the attempt after failed attempt `attempt` (from 1): exponential from
    /// `backoff_base_ms`, bounded by `backoff_max_ms`.
    pub fn backoff(&self, attempt: u32) -> Duration {
        let exponent = attempt.saturating_sub(1).min(40);
        let delay_ms = self
            .backoff_base_ms
            .saturating_mul(1u64 << exponent)
            .min(self.backoff_max_ms);
        Duration::from_millis(delay_ms)
    }
}
/// `[events]`: the event log's hash chain (DESIGN.md section 10).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventSettings {
    /// How often each instance tries to seal new events into the hash chain, milliseconds (10
    /// to 60000). One instance at a time seals; the others give way.
    pub seal_interval_ms: u64,
    /// Most events sealed in one database transaction (100 to 100000); a full batch is
    /// followed by the next at once.
    pub seal_batch: u32,
}

impl EventSettings {
    pub fn seal_interval(&self) -> std::time::Duration {
        std::time::Duration::from_millis(self.seal_interval_ms)
    }
}

/// `[fx]`: currency exchange (DESIGN.md section 9).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FxSettings {
    /// How long a quote fixes its rate, seconds (1 to 3600).
    pub quote_ttl_s: u32,
    /// The spread kept on every exchange, basis points of the amount sold (0 to 1000).
    pub spread_bps: u32,
}

/// `[schedules]`: the executor of scheduled transactions (DESIGN.md section 9).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScheduleSettings {
    /// How often each instance's executor looks for due occurrences, milliseconds: while an
    /// instance runs, an occurrence runs at most about this long after it is due.
    pub tick_ms: u64,
    /// Most schedules one tick takes (the next tick takes the rest).
    pub batch_max: u32,
    /// How far in the past `start_at` may be when a schedule is created, seconds (a client's
    /// clock and its request's travel time).
    pub start_grace_s: u64,
    /// An occurrence found due more than this long ago (after downtime) is a misfire: its
    /// schedule's `misfire_policy` decides. Seconds.
    pub misfire_grace_s: u64,
    /// With `on_failure: retry`, how long after a refused attempt the next one is made, seconds.
    pub retry_interval_s: u64,
    /// With `on_failure: retry`, the most attempts of one occurrence (then it is failed).
    pub retry_max_attempts: u32,
}

impl ScheduleSettings {
    pub fn tick(&self) -> std::time::Duration {
        std::time::Duration::from_millis(self.tick_ms)
    }
}

/// `[limits]`: the configured limits (DESIGN.md section 8).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsSettings {
    /// The default limits of every account of role `user`, written into the database the first
    /// time a database is started (`store::limits::seed_defaults`); from then on
    /// `PUT /api/v1/limits/defaults` decides and this list is not read again.
    pub defaults: Vec<LimitDefaultSettings>,
}

/// One entry of `limits.defaults`: `{ kind, currency, value, window_s? }` as on the wire
/// (`currency` an ISO 4217 code or `*`; `value` in minor units, a count for `velocity`;
/// `window_s` in seconds, only for `rolling_debit` and `velocity`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitDefaultSettings {
    pub kind: String,
    pub currency: String,
    pub value: i64,
    #[serde(default)]
    pub window_s: Option<i64>,
}

impl LimitsSettings {
    /// The validated defaults, in the order given.
    ///
    /// Errors, naming the entry and key (`limits.defaults[1].window_s`): what
    /// [`crate::domain::LimitSpec::new`] refuses, an unknown currency, or a (kind, currency)
    /// given twice.
    pub fn defaults(&self) -> anyhow::Result<Vec<crate::domain::LimitSpec>> {
        use crate::domain::{Currency, LimitKind, LimitSpec};
        let mut specs: Vec<LimitSpec> = Vec::with_capacity(self.defaults.len());
        for (index, entry) in self.defaults.iter().enumerate() {
            let key = |field: &str| format!("limits.defaults[{index}].{field}");
            let kind = LimitKind::parse(&entry.kind).ok_or_else(|| {
                anyhow::anyhow!("{}: unknown limit kind {:?}", key("kind"), entry.kind)
            })?;
            let currency = match entry.currency.as_str() {
                "*" => None,
                code => Some(
                    Currency::parse(code)
                        .map_err(|error| anyhow::anyhow!("{}: {error}", key("currency")))?,
                ),
            };
            let spec = LimitSpec::new(kind, currency, entry.value, entry.window_s)
                .map_err(|error| anyhow::anyhow!("{} {error}", key(error.field())))?;
            anyhow::ensure!(
                !specs.iter().any(|other| other.kind() == spec.kind()
                    && other.currency() == spec.currency()),
                "{}: {} on {} is given twice",
                key("currency"),
                spec.kind().as_str(),
                spec.currency_code()
            );
            specs.push(spec);
        }
        Ok(specs)
    }
}

/// The bounds of invariant 7 (DESIGN.md section 2), in minor units of each currency.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LedgerSettings {
    /// Highest balance any account may hold.
    pub balance_max_minor: i64,
    /// Most money that may be issued in a currency (credits minus debits, i.e. the negated
    /// `system` balance).
    pub supply_max_minor: i64,
    /// Per-currency overrides of both, keyed by ISO 4217 code:
    /// `[ledger.currencies.JPY] balance_max_minor = ..., supply_max_minor = ...`.
    #[serde(default)]
    pub currencies: std::collections::BTreeMap<String, CurrencyBoundsSettings>,
}

/// One currency's overrides in `[ledger.currencies.<CODE>]`; a missing key keeps the default.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CurrencyBoundsSettings {
    pub balance_max_minor: Option<i64>,
    pub supply_max_minor: Option<i64>,
}

impl LedgerSettings {
    /// The validated bounds.
    ///
    /// Errors: an unknown currency code, or bounds [`crate::domain::Bounds::new`] refuses.
    pub fn bounds(&self) -> anyhow::Result<crate::domain::Bounds> {
        use crate::domain::{Currency, CurrencyBounds};
        let default = CurrencyBounds {
            balance_max_minor: self.balance_max_minor,
            supply_max_minor: self.supply_max_minor,
        };
        let mut overrides = std::collections::BTreeMap::new();
        for (code, bounds) in &self.currencies {
            // Environment variables arrive lower-cased (TALLY__LEDGER__CURRENCIES__JPY__...).
            let currency = Currency::parse(&code.to_ascii_uppercase())
                .map_err(|error| anyhow::anyhow!("ledger.currencies.{code}: {error}"))?;
            overrides.insert(
                currency,
                CurrencyBounds {
                    balance_max_minor: bounds
                        .balance_max_minor
                        .unwrap_or(default.balance_max_minor),
                    supply_max_minor: bounds.supply_max_minor.unwrap_or(default.supply_max_minor),
                },
            );
        }
        Ok(crate::domain::Bounds::new(default, overrides)?)
    }
}

/// `POST /transactions/bulk` limits.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BulkSettings {
    /// Most items in one request (at most `pipeline.queue_capacity`, so a bulk always fits).
    pub max_items: usize,
    /// Largest request body, in bytes.
    pub body_limit_bytes: usize,
}

/// The Redis balance cache (`cache.rs`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedisSettings {
    /// `redis://host:port`; empty disables the cache.
    pub url: String,
    pub pool_size: u32,
    /// Longest wait for any Redis call, in milliseconds.
    pub timeout_ms: u64,
    /// Longest wait, in milliseconds, for the invalidation that follows a lost write-through
    /// (connecting included) before the commit is answered 503 as of unknown outcome.
    pub invalidate_timeout_ms: u64,
    /// Lifetime of a cached user's balances, in seconds.
    pub ttl_s: u64,
    /// Consecutive failures that open the breaker.
    pub breaker_failures: u32,
    /// Open time before one probe, in milliseconds.
    pub breaker_cooldown_ms: u64,
    /// Users loaded into the cache at start, most recently active first.
    pub warm_up_users: u32,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
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
    /// PostgreSQL `statement_timeout` of every session Tally opens, in milliseconds: the longest
    /// any one statement may run before the server cancels it (migrations and `tally verify`,
    /// which work on whole tables, are exempt; see `store`).
    pub statement_timeout_ms: u64,
    /// PostgreSQL `lock_timeout` of every session Tally opens, in milliseconds: the longest any
    /// statement waits for a row or table lock. Below `statement_timeout_ms`.
    pub lock_timeout_ms: u64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpSettings {
    /// `host:port`; port 0 picks a free one (tests), reported by `Application::port`.
    pub bind: String,
    /// actix-web worker threads; 0 means one per core.
    pub workers: usize,
    /// Largest request body in bytes; larger bodies get 413.
    pub body_limit_bytes: usize,
    /// Origins allowed by CORS; empty allows none.
    pub cors_allowed_origins: Vec<String>,
    /// Idle keep-alive connections are closed after this many seconds.
    pub keep_alive_s: u64,
    /// A client must send a request's headers within this many milliseconds of the connection
    /// being accepted, or it is answered 408 and closed (slow-header protection). actix-web
    /// starts the timer at accept, so a worker stalled longer than this answers 408 to clients
    /// that did nothing wrong (actix-web #1269).
    pub client_request_timeout_ms: u64,
    /// How long readiness reports "shutting down" before the listener closes, in milliseconds.
    pub shutdown_delay_ms: u64,
    /// The whole graceful shutdown (delay, HTTP drain, pipeline drain, pools) must end within
    /// this many milliseconds of the signal.
    pub shutdown_timeout_ms: u64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthSettings {
    /// HS256 key; empty means "generate one and warn" (development only).
    pub jwt_secret: String,
    pub access_token_ttl_s: u64,
    pub refresh_token_ttl_s: u64,
    /// Failed logins for one username within `lockout_window_s` that lock it for
    /// `lockout_duration_s`.
    pub lockout_threshold: u32,
    pub lockout_window_s: u64,
    pub lockout_duration_s: u64,
}

/// GCRA limits (governor): per client IP on `/auth/*`, per user elsewhere.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitSettings {
    pub enabled: bool,
    pub auth_per_second: u32,
    pub auth_burst: u32,
    pub api_per_second: u32,
    pub api_burst: u32,
}

/// An admin created at start when all three are set and the username is free.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BootstrapSettings {
    pub admin_username: String,
    pub admin_email: String,
    pub admin_password: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PipelineSettings {
    /// Transactions admitted and not yet answered, at most (the submission queue's capacity).
    pub queue_capacity: usize,
    /// Worker actors draining the submission queue.
    pub workers: usize,
    /// Most transactions in one group commit.
    pub batch_size_max: usize,
    /// How long the journal writer lingers for more work before committing, in microseconds.
    pub batch_linger_us: u64,
    /// Batches committed at once, each on its own connection (1 = strictly one after another).
    pub commit_concurrency: usize,
    /// Idle time after which a balance actor is stopped, in milliseconds.
    pub actor_idle_timeout_ms: u64,
    /// Longest a caller waits for its commit before it is told 503, in milliseconds.
    pub reply_timeout_ms: u64,
    /// `Retry-After` seconds sent with 503 `overloaded`.
    pub retry_after_s: u64,
}

/// Two-phase holds (DESIGN.md section 7).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HoldSettings {
    /// Longest `hold.timeout_s` a request may ask for, seconds.
    pub timeout_s_max: u32,
    /// How often each instance's sweeper looks for holds past their deadline, milliseconds:
    /// an expired hold is released at most about this long after its deadline while an
    /// instance runs.
    pub sweep_interval_ms: u64,
    /// Most holds one sweep releases (the next sweep takes the rest at once).
    pub sweep_batch: u32,
}

impl HoldSettings {
    pub fn sweep_interval(&self) -> std::time::Duration {
        std::time::Duration::from_millis(self.sweep_interval_ms)
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IdempotencySettings {
    /// Age in hours after which an idempotency key is forgotten.
    pub retention_hours: u64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogSettings {
    /// `json` or `pretty`.
    pub format: String,
    /// tracing `EnvFilter` directives; `RUST_LOG` wins when set.
    pub filter: String,
    /// Log one line per HTTP request (target `tally::access`).
    pub access: bool,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
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
        let mut builder = builder.add_source(
            config::Environment::with_prefix("TALLY")
                .prefix_separator("__")
                .separator("__")
                .ignore_empty(true)
                .try_parsing(true)
                .list_separator(",")
                .with_list_parse_key("http.cors_allowed_origins")
                .with_list_parse_key("webhooks.allowed_hosts")
                .with_list_parse_key("amqp.service_users"),
        );
        if let Some(profile) = &profile {
            builder = builder
                .set_override("profile", profile.as_str())
                .context("profile")?;
        }
        let merged = builder.build().context("reading configuration")?;
        refuse_unknown_keys(&merged)?;
        let settings = merged
            .try_deserialize::<Settings>()
            .context("invalid configuration")?;
        settings.validate()?;
        Ok(settings)
    }

    /// Whether this is the development profile, the only one allowed a generated JWT key.
    pub fn is_development(&self) -> bool {
        self.profile == "development"
    }

    /// Refuses settings the pipeline cannot run with (zero-sized queues and pools).
    pub fn validate(&self) -> anyhow::Result<()> {
        anyhow::ensure!(
            self.database.pool_size >= 2,
            "database.pool_size must be at least 2"
        );
        anyhow::ensure!(
            (1..=3600).contains(&self.fx.quote_ttl_s),
            "fx.quote_ttl_s must be from 1 to 3600"
        );
        anyhow::ensure!(
            crate::domain::SpreadBps::new(self.fx.spread_bps).is_some(),
            "fx.spread_bps must be from 0 to 1000"
        );
        anyhow::ensure!(
            self.holds.timeout_s_max >= 1,
            "holds.timeout_s_max must be at least 1"
        );
        anyhow::ensure!(
            self.holds.sweep_interval_ms >= 10 && self.holds.sweep_batch >= 1,
            "holds.sweep_interval_ms must be at least 10 and holds.sweep_batch at least 1"
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
            (1..=8).contains(&self.pipeline.commit_concurrency),
            "pipeline.commit_concurrency must be from 1 to 8"
        );
        anyhow::ensure!(
            self.database.pool_size >= self.pipeline.commit_concurrency + 2,
            "database.pool_size must exceed pipeline.commit_concurrency + 1 (the journal writer's connections)"
        );
        anyhow::ensure!(
            self.http.body_limit_bytes >= 1024,
            "http.body_limit_bytes must be at least 1024"
        );
        anyhow::ensure!(
            self.bulk.max_items >= 1 && self.bulk.max_items <= self.pipeline.queue_capacity,
            "bulk.max_items must be from 1 to pipeline.queue_capacity"
        );
        anyhow::ensure!(
            self.is_development() || !self.auth.jwt_secret.is_empty(),
            "auth.jwt_secret (TALLY__AUTH__JWT_SECRET) is required outside the development profile"
        );
        anyhow::ensure!(
            self.http.shutdown_delay_ms < self.http.shutdown_timeout_ms,
            "http.shutdown_delay_ms must be shorter than http.shutdown_timeout_ms"
        );
        anyhow::ensure!(
            self.database.health_check_interval_ms >= 10,
            "database.health_check_interval_ms must be at least 10"
        );
        // Ten years: a bound far past any use, so the retention never overflows an interval.
        anyhow::ensure!(
            self.idempotency.retention_hours <= 87_600,
            "idempotency.retention_hours must be at most 87600"
        );
        // PostgreSQL reads 0 as "no limit": refused, every wait has a bound.
        anyhow::ensure!(
            self.database.lock_timeout_ms >= 1,
            "database.lock_timeout_ms must be at least 1"
        );
        // A lock wait as long as the statement timeout could never end as a lock timeout.
        anyhow::ensure!(
            self.database.lock_timeout_ms < self.database.statement_timeout_ms,
            "database.lock_timeout_ms must be shorter than database.statement_timeout_ms"
        );
        // PostgreSQL takes both as a 32-bit count of milliseconds.
        anyhow::ensure!(
            self.database.statement_timeout_ms <= i32::MAX as u64,
            "database.statement_timeout_ms must be at most 2147483647"
        );
        anyhow::ensure!(
            (10..=60_000).contains(&self.events.seal_interval_ms),
            "events.seal_interval_ms must be from 10 to 60000"
        );
        anyhow::ensure!(
            (100..=100_000).contains(&self.events.seal_batch),
            "events.seal_batch must be from 100 to 100000"
        );
        self.validate_webhooks()?;
        self.validate_amqp()?;
        let feed = &self.feed;
        anyhow::ensure!(
            (1..=3600).contains(&feed.heartbeat_s),
            "feed.heartbeat_s must be from 1 to 3600"
        );
        anyhow::ensure!(
            (1..=100_000).contains(&feed.buffer_messages),
            "feed.buffer_messages must be from 1 to 100000"
        );
        anyhow::ensure!(
            (1..=1_000_000).contains(&feed.max_connections),
            "feed.max_connections must be from 1 to 1000000"
        );
        anyhow::ensure!(
            (1..=10_000).contains(&feed.max_connections_per_user),
            "feed.max_connections_per_user must be from 1 to 10000"
        );
        anyhow::ensure!(
            (1..=300).contains(&feed.ticket_ttl_s),
            "feed.ticket_ttl_s must be from 1 to 300"
        );
        anyhow::ensure!(
            (10..=60_000).contains(&feed.poll_interval_ms),
            "feed.poll_interval_ms must be from 10 to 60000"
        );
        let schedules = &self.schedules;
        anyhow::ensure!(
            (10..=3_600_000).contains(&schedules.tick_ms),
            "schedules.tick_ms must be from 10 to 3600000"
        );
        anyhow::ensure!(
            (1..=10_000).contains(&schedules.batch_max),
            "schedules.batch_max must be from 1 to 10000"
        );
        anyhow::ensure!(
            schedules.start_grace_s <= 86_400 && schedules.misfire_grace_s <= 86_400,
            "schedules.start_grace_s and schedules.misfire_grace_s must be at most 86400"
        );
        anyhow::ensure!(
            (1..=86_400).contains(&schedules.retry_interval_s),
            "schedules.retry_interval_s must be from 1 to 86400"
        );
        anyhow::ensure!(
            (1..=100).contains(&schedules.retry_max_attempts),
            "schedules.retry_max_attempts must be from 1 to 100"
        );
        self.ledger.bounds()?;
        self.limits.defaults()?;
        // The deltas of one group commit statement must stay inside ±MONEY_BOUND_MINOR, so that
        // no sum in it can overflow 64 bits (invariant 7; see domain::rules).
        let batch_max = crate::domain::MONEY_BOUND_MINOR / crate::domain::Amount::MAX_MINOR;
        anyhow::ensure!(
            self.pipeline.batch_size_max <= usize::try_from(batch_max).unwrap_or(usize::MAX),
            "pipeline.batch_size_max must be at most {batch_max}: a batch of that many largest \
             amounts ({} minor units each) must stay within 2^61 minor units",
            crate::domain::Amount::MAX_MINOR
        );
        Ok(())
    }
}

impl Settings {
    fn validate_amqp(&self) -> anyhow::Result<()> {
        let amqp = &self.amqp;
        anyhow::ensure!(
            amqp.url.is_empty() || amqp.url.starts_with("amqp://"),
            "amqp.url must be empty or an amqp:// URL (this build has no TLS stack for amqps)"
        );
        anyhow::ensure!(
            (1..=64).contains(&amqp.consumers),
            "amqp.consumers must be from 1 to 64"
        );
        anyhow::ensure!(
            (1..=10_000).contains(&amqp.prefetch),
            "amqp.prefetch must be from 1 to 10000"
        );
        anyhow::ensure!(
            (1..=10_000).contains(&amqp.publish_batch),
            "amqp.publish_batch must be from 1 to 10000"
        );
        anyhow::ensure!(
            (10..=60_000).contains(&amqp.poll_interval_ms),
            "amqp.poll_interval_ms must be from 10 to 60000"
        );
        anyhow::ensure!(
            (100..=60_000).contains(&amqp.reconnect_max_ms),
            "amqp.reconnect_max_ms must be from 100 to 60000"
        );
        for (key, name) in [
            ("amqp.requests_queue", &amqp.requests_queue),
            ("amqp.dead_letter_queue", &amqp.dead_letter_queue),
            ("amqp.events_exchange", &amqp.events_exchange),
        ] {
            anyhow::ensure!(
                !name.is_empty() && name.len() <= 255 && !name.starts_with("amq."),
                "{key} must be 1 to 255 bytes and not begin with `amq.` (reserved by the broker)"
            );
        }
        anyhow::ensure!(
            !(amqp.enabled() && amqp.ingest && amqp.service_users.is_empty()),
            "amqp.service_users must name at least one user while amqp.url is set and \
             amqp.ingest is on (else every request taken from the queue is dead-lettered); \
             set amqp.ingest = false to only publish events"
        );
        anyhow::ensure!(
            amqp.requests_queue != amqp.dead_letter_queue,
            "amqp.dead_letter_queue must differ from amqp.requests_queue"
        );
        Ok(())
    }

    fn validate_webhooks(&self) -> anyhow::Result<()> {
        let hooks = &self.webhooks;
        anyhow::ensure!(
            (10..=60_000).contains(&hooks.poll_interval_ms),
            "webhooks.poll_interval_ms must be from 10 to 60000"
        );
        anyhow::ensure!(
            (1..=10_000).contains(&hooks.dispatch_batch),
            "webhooks.dispatch_batch must be from 1 to 10000"
        );
        anyhow::ensure!(
            (1..=256).contains(&hooks.concurrency),
            "webhooks.concurrency must be from 1 to 256"
        );
        anyhow::ensure!(
            (100..=60_000).contains(&hooks.timeout_ms),
            "webhooks.timeout_ms must be from 100 to 60000"
        );
        anyhow::ensure!(
            hooks.lease_ms > hooks.timeout_ms && hooks.lease_ms <= 3_600_000,
            "webhooks.lease_ms must be longer than webhooks.timeout_ms and at most 3600000"
        );
        anyhow::ensure!(
            hooks.backoff_base_ms >= 1
                && hooks.backoff_base_ms <= hooks.backoff_max_ms
                && hooks.backoff_max_ms <= 604_800_000,
            "webhooks.backoff_base_ms must be at least 1 and at most webhooks.backoff_max_ms, \
             which must be at most 604800000 (a week)"
        );
        anyhow::ensure!(
            (1..=100).contains(&hooks.max_attempts),
            "webhooks.max_attempts must be from 1 to 100"
        );
        anyhow::ensure!(
            (1..=10_000).contains(&hooks.disable_after_failures),
            "webhooks.disable_after_failures must be from 1 to 10000"
        );
        for host in &hooks.allowed_hosts {
            anyhow::ensure!(
                crate::webhooks::HostPattern::parse(host).is_some(),
                "webhooks.allowed_hosts: {host:?} is not a host name, an IP address or *.suffix"
            );
        }
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

/// Refuses keys that Tally does not know, naming every one of them and the variable that
/// would set it, so that a misspelt setting (`TALLY__LOG__LEVEL` for `log.filter`) stops the
/// start instead of being silently ignored. The known keys are those of the compiled-in
/// `config/default.toml`, which documents every key; `deny_unknown_fields` on every settings
/// struct keeps the two equal (a key missing from the file fails as a missing field, one
/// missing from the structs as an unknown field).
fn refuse_unknown_keys(merged: &config::Config) -> anyhow::Result<()> {
    let known = known_keys();
    let mut given = Vec::new();
    key_paths(&merged.cache, "", &mut given);
    let unknown: Vec<String> = given
        .into_iter()
        .filter(|key| !known.contains(key))
        .map(|key| {
            let variable = format!("TALLY__{}", key.replace('.', "__").to_uppercase());
            format!("`{key}` (in a file in config/, or the variable {variable})")
        })
        .collect();
    anyhow::ensure!(
        unknown.is_empty(),
        "unknown configuration key {}: config/default.toml lists every key",
        unknown.join(", ")
    );
    Ok(())
}

/// Every configuration key, dotted (`database.url`, `profile`): those of the compiled-in
/// `config/default.toml`.
pub fn known_keys() -> Vec<String> {
    let defaults = config::Config::builder()
        .add_source(config::File::from_str(DEFAULTS, config::FileFormat::Toml))
        .build()
        .expect("the compiled-in defaults are valid TOML (every test loads them)");
    let mut known = Vec::new();
    key_paths(&defaults.cache, "", &mut known);
    known
}

/// The dotted path of every leaf under `value` (tables are walked, arrays are leaves).
fn key_paths(value: &config::Value, prefix: &str, paths: &mut Vec<String>) {
    match &value.kind {
        config::ValueKind::Table(table) => {
            for (key, value) in table {
                let path = if prefix.is_empty() {
                    key.clone()
                } else {
                    format!("{prefix}.{key}")
                };
                key_paths(value, &path, paths);
            }
        }
        _ => paths.push(prefix.to_owned()),
    }
}

impl IdempotencySettings {
    pub fn retention(&self) -> Duration {
        Duration::from_secs(self.retention_hours.saturating_mul(3600))
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
