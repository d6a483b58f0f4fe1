//! The balance cache in Redis (bb8-redis): `GET /balances/current` is served from it when the
//! entry is complete, and the journal writer writes every committed balance through to it
//! before answering the caller, so a client always reads its own writes.
//!
//! Layout: one hash per user, `tally:bal:<epoch>:<user id>`, one field per currency with
//! `amount:pending:version:updated_at_µs`, plus `_complete` when the hash was filled from
//! PostgreSQL with every currency of the user. Writes only ever replace a field with a larger
//! `version` (Lua scripts, atomic in Redis), so a slow filler can never overwrite a newer
//! write-through with an older balance.
//!
//! Failure: every call has a timeout (`redis.timeout_ms`) and goes through a circuit breaker
//! (open after `breaker_failures` consecutive failures, one probe after `breaker_cooldown_ms`).
//! A write-through that fails or is skipped leaves the cache possibly stale, so the cache is
//! marked dirty: reads bypass it until `INCR tally:cache:epoch` succeeds, which moves every
//! reader and writer to fresh, empty keys. A process also starts dirty: a predecessor killed
//! between a commit and its write-through leaves an older balance behind, which must never be
//! served after the restart. Several processes share the cache, so a lost write-through is
//! followed by that invalidation before the callers are answered ([`WriteThrough`]); only when
//! Redis neither takes the write nor the invalidation, and does not refuse connections either
//! (it hangs for this process, and may answer another), is the commit answered as of unknown
//! outcome. Redis down never fails a request; it only costs a PostgreSQL read and makes
//! `/health/ready` report `degraded`.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bb8_redis::redis::{self, Script};
use bb8_redis::RedisConnectionManager;
use chrono::{DateTime, Utc};

use crate::config::RedisSettings;
use crate::domain::{AccountKey, AccountState, CommittedBalance, Currency, UserId};
use crate::store::balances::BalanceRecord;
use crate::telemetry::names;

const EPOCH_KEY: &str = "tally:cache:epoch";
const PREFIX: &str = "tally:bal:";

/// One cached balance, minor units.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CachedBalance {
    pub currency: Currency,
    pub amount: i64,
    pub pending: i64,
    /// How far below zero `amount - pending` may go, minor units.
    pub overdraft_limit: i64,
    pub version: i64,
    pub updated_at: DateTime<Utc>,
}

/// What became of a write-through, and so whether its commit may be acknowledged (DESIGN.md
/// section 2, invariant 6: no process may serve the old balance after the new one was
/// acknowledged).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteThrough {
    /// Written, or there is no cache.
    Landed,
    /// Not written, but every process moved to fresh keys: acknowledge.
    Invalidated,
    /// Redis refuses connections: nobody can read the old balances: acknowledge.
    Unreachable,
    /// Neither written nor invalidated while Redis may still answer other processes (it timed
    /// out): the commit must be answered as of unknown outcome (503; the retry with the same
    /// Idempotency-Key replays it once Redis answers again).
    Unknown,
}

impl WriteThrough {
    /// Whether the callers may be told their transactions committed.
    pub fn may_acknowledge(self) -> bool {
        self != WriteThrough::Unknown
    }
}

/// What a cache lookup found.
#[derive(Debug)]
pub enum Lookup {
    /// Every balance of the user.
    Hit(Vec<CachedBalance>),
    /// Not cached: read PostgreSQL, then `fill` with this token.
    Miss(FillToken),
    /// The cache cannot be used now: read PostgreSQL, do not fill.
    Unavailable,
}

/// The cache epoch a miss saw; a fill under a later epoch is dropped.
#[derive(Debug)]
pub struct FillToken {
    epoch: String,
}

/// What `/health/ready` reports for the cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheHealth {
    /// No `redis.url`: every read goes to PostgreSQL.
    Disabled,
    Ok,
    /// Redis is failing or the cache is being invalidated: reads go to PostgreSQL.
    Degraded,
}

impl CacheHealth {
    pub fn as_str(self) -> &'static str {
        match self {
            CacheHealth::Disabled => "disabled",
            CacheHealth::Ok => "ok",
            CacheHealth::Degraded => "degraded",
        }
    }
}

/// Circuit breaker states, as exported in `tally_cache_breaker_state`.
const CLOSED: u8 = 0;
const HALF_OPEN: u8 = 1;
const OPEN: u8 = 2;

/// A lock-free circuit breaker.
struct Breaker {
    state: AtomicU8,
    failures: AtomicU32,
    opened_at_ms: AtomicU64,
    threshold: u32,
    cooldown: Duration,
    clock: Instant,
}

impl Breaker {
    fn now_ms(&self) -> u64 {
        self.clock.elapsed().as_millis() as u64
    }

    /// Whether a call may go to Redis now. In the open state, one caller per cooldown becomes
    /// the probe (half-open).
    fn allow(&self) -> bool {
        match self.state.load(Ordering::Acquire) {
            CLOSED => true,
            OPEN => {
                let due = self.now_ms()
                    >= self.opened_at_ms.load(Ordering::Acquire) + self.cooldown.as_millis() as u64;
                due && self
                    .state
                    .compare_exchange(OPEN, HALF_OPEN, Ordering::AcqRel, Ordering::Acquire)
                    .is_ok()
            }
            _ => false,
        }
    }

    fn success(&self) {
        self.failures.store(0, Ordering::Release);
        self.state.store(CLOSED, Ordering::Release);
    }

    fn failure(&self) {
        let failures = self.failures.fetch_add(1, Ordering::AcqRel) + 1;
        if self.state.load(Ordering::Acquire) == HALF_OPEN || failures >= self.threshold {
            self.opened_at_ms.store(self.now_ms(), Ordering::Release);
            self.state.store(OPEN, Ordering::Release);
        }
    }

    fn state(&self) -> u8 {
        self.state.load(Ordering::Acquire)
    }
}

pub struct BalanceCache {
    pool: Option<bb8::Pool<RedisConnectionManager>>,
    /// For invalidations that must not wait behind the pool or the breaker (`invalidate_now`).
    client: Option<redis::Client>,
    breaker: Breaker,
    /// Set when a write-through failed or was skipped: reads bypass the cache until the epoch
    /// is bumped.
    dirty: AtomicBool,
    ttl_s: u64,
    timeout: Duration,
    invalidate_timeout: Duration,
    read: Script,
    write: Script,
}

/// Reads a user's hash: `{epoch, field, value, ...}` when complete, `{epoch}` otherwise. KEYS[1]
/// epoch key; ARGV: prefix, user.
const READ_SCRIPT: &str = r"
local epoch = redis.call('GET', KEYS[1]) or '0'
local key = ARGV[1] .. epoch .. ':' .. ARGV[2]
if redis.call('HEXISTS', key, '_complete') == 0 then return {epoch} end
local fields = redis.call('HGETALL', key)
table.insert(fields, 1, epoch)
return fields
";

/// Writes fields whose version is newer. KEYS[1] epoch key; ARGV: prefix, ttl, complete-user
/// (or ''), expected epoch (or ''), then (user, currency, value, version) quadruples. A fill
/// names the epoch its miss saw: when the cache was invalidated since, the balances it read
/// may predate a lost write-through, so it writes nothing.
const WRITE_SCRIPT: &str = r"
local epoch = redis.call('GET', KEYS[1]) or '0'
if ARGV[4] ~= '' and ARGV[4] ~= epoch then return 0 end
for i = 5, #ARGV, 4 do
  local key = ARGV[1] .. epoch .. ':' .. ARGV[i]
  local current = redis.call('HGET', key, ARGV[i + 1])
  local current_version = current and tonumber(string.match(current, '^[^:]*:[^:]*:([^:]*)')) or -1
  if current_version < tonumber(ARGV[i + 3]) then
    redis.call('HSET', key, ARGV[i + 1], ARGV[i + 2])
  end
  if redis.call('TTL', key) < 0 then redis.call('EXPIRE', key, ARGV[2]) end
end
if ARGV[3] ~= '' then
  local key = ARGV[1] .. epoch .. ':' .. ARGV[3]
  redis.call('HSET', key, '_complete', '1')
  redis.call('EXPIRE', key, ARGV[2])
end
return 1
";

impl BalanceCache {
    /// A cache on `redis.url`, or a disabled one when the URL is empty. Connections are made on
    /// demand, so this succeeds while Redis is down. Errors: a malformed URL.
    pub fn new(settings: &RedisSettings) -> anyhow::Result<Arc<BalanceCache>> {
        let timeout = Duration::from_millis(settings.timeout_ms);
        let pool = if settings.url.is_empty() {
            None
        } else {
            let manager = RedisConnectionManager::new(settings.url.as_str())?;
            Some(
                bb8::Pool::builder()
                    .max_size(settings.pool_size)
                    .connection_timeout(timeout)
                    .retry_connection(false)
                    .build_unchecked(manager),
            )
        };
        let client = if settings.url.is_empty() {
            None
        } else {
            Some(redis::Client::open(settings.url.as_str())?)
        };
        Ok(Arc::new(BalanceCache {
            pool,
            client,
            breaker: Breaker {
                state: AtomicU8::new(CLOSED),
                failures: AtomicU32::new(0),
                opened_at_ms: AtomicU64::new(0),
                threshold: settings.breaker_failures.max(1),
                cooldown: Duration::from_millis(settings.breaker_cooldown_ms),
                clock: Instant::now(),
            },
            // A new process starts dirty: a predecessor killed between a commit and its
            // write-through may have left an older balance in Redis, so the first use bumps
            // the epoch and nothing written before this start is ever read.
            dirty: AtomicBool::new(true),
            ttl_s: settings.ttl_s.max(1),
            timeout,
            invalidate_timeout: Duration::from_millis(settings.invalidate_timeout_ms),
            read: Script::new(READ_SCRIPT),
            write: Script::new(WRITE_SCRIPT),
        }))
    }

    pub fn health(&self) -> CacheHealth {
        if self.pool.is_none() {
            CacheHealth::Disabled
        } else if self.breaker.state() != CLOSED || self.dirty.load(Ordering::Acquire) {
            CacheHealth::Degraded
        } else {
            CacheHealth::Ok
        }
    }

    /// For readiness: while degraded, one call through the breaker (at most one probe per
    /// cooldown; the invalidation when the cache is dirty, else a PING), so that readiness
    /// recovers when Redis is back even without any balance traffic.
    pub async fn probe(&self) {
        if self.health() != CacheHealth::Degraded {
            return;
        }
        if self.dirty.load(Ordering::Acquire) {
            self.clean_if_dirty().await;
        } else {
            self.call(|mut connection| async move {
                redis::cmd("PING")
                    .query_async::<String>(&mut connection)
                    .await
            })
            .await;
        }
    }

    /// Breaker state for the gauge: 0 closed, 1 half-open, 2 open.
    pub fn breaker_state(&self) -> u8 {
        self.breaker.state()
    }

    /// Runs `op` on a connection (multiplexed: the clone shares the pooled socket), through the
    /// breaker and with the timeout. `None` when the cache is disabled, the breaker is open, or
    /// the call failed or timed out.
    async fn call<T, Fut>(
        &self,
        op: impl FnOnce(redis::aio::MultiplexedConnection) -> Fut,
    ) -> Option<T>
    where
        Fut: std::future::Future<Output = redis::RedisResult<T>>,
    {
        let pool = self.pool.as_ref()?;
        if !self.breaker.allow() {
            return None;
        }
        let attempt = async {
            let connection = (*pool.get().await.map_err(|error| error.to_string())?).clone();
            op(connection).await.map_err(|error| error.to_string())
        };
        match tokio::time::timeout(self.timeout, attempt).await {
            Ok(Ok(value)) => {
                self.breaker.success();
                Some(value)
            }
            Ok(Err(error)) => {
                tracing::debug!(%error, "redis call failed");
                self.breaker.failure();
                None
            }
            Err(_) => {
                self.breaker.failure();
                None
            }
        }
    }

    /// Moves everyone to fresh keys when the cache may hold stale balances.
    async fn clean_if_dirty(&self) -> bool {
        if !self.dirty.load(Ordering::Acquire) {
            return true;
        }
        let bumped = self
            .call(|mut connection| async move {
                redis::cmd("INCR")
                    .arg(EPOCH_KEY)
                    .query_async::<i64>(&mut connection)
                    .await
            })
            .await;
        if bumped.is_some() {
            self.dirty.store(false, Ordering::Release);
            tracing::info!("balance cache invalidated (epoch bumped) after Redis failures");
        }
        bumped.is_some()
    }

    /// The user's balances when the cache holds all of them. On a miss, the token to fill it
    /// with once the balances are read from PostgreSQL. `Unavailable` when the cache is off,
    /// failing, or dirty (the caller reads PostgreSQL and does not fill).
    pub async fn get(&self, user: UserId) -> Lookup {
        if self.pool.is_none() {
            return Lookup::Unavailable;
        }
        if !self.clean_if_dirty().await {
            metrics::counter!(names::CACHE_REQUESTS, "result" => "error").increment(1);
            return Lookup::Unavailable;
        }
        let user_text = user.to_string();
        let fields = self
            .call(|mut connection| {
                let mut invocation = self.read.key(EPOCH_KEY);
                invocation.arg(PREFIX).arg(&user_text);
                async move {
                    invocation
                        .invoke_async::<Vec<String>>(&mut connection)
                        .await
                }
            })
            .await;
        let Some(mut fields) = fields else {
            metrics::counter!(names::CACHE_REQUESTS, "result" => "error").increment(1);
            return Lookup::Unavailable;
        };
        let epoch = if fields.is_empty() {
            "0".to_owned()
        } else {
            fields.remove(0)
        };
        if fields.is_empty() {
            metrics::counter!(names::CACHE_REQUESTS, "result" => "miss").increment(1);
            return Lookup::Miss(FillToken { epoch });
        }
        let mut balances = Vec::with_capacity(fields.len() / 2);
        for pair in fields.chunks(2) {
            let decoded = match pair {
                [field, _] if field == "_complete" => continue,
                [field, value] => decode(field, value),
                _ => None,
            };
            let Some(balance) = decoded else {
                metrics::counter!(names::CACHE_REQUESTS, "result" => "error").increment(1);
                return Lookup::Unavailable;
            };
            balances.push(balance);
        }
        metrics::counter!(names::CACHE_REQUESTS, "result" => "hit").increment(1);
        balances.sort_by_key(|balance| balance.currency);
        Lookup::Hit(balances)
    }

    /// Stores every balance of `user` as read from PostgreSQL after the miss that gave `token`
    /// (read them AFTER the miss). Written only if the cache was not invalidated in between.
    pub async fn fill(&self, user: UserId, records: &[BalanceRecord], token: FillToken) {
        if self.pool.is_none() || self.dirty.load(Ordering::Acquire) {
            return;
        }
        let user_text = user.to_string();
        let mut args: Vec<String> = vec![
            PREFIX.to_owned(),
            self.ttl_s.to_string(),
            user_text.clone(),
            token.epoch,
        ];
        for record in records {
            args.extend([
                user_text.clone(),
                record.currency.code().to_owned(),
                encode(
                    &AccountState {
                        account: AccountKey {
                            user,
                            currency: record.currency,
                        },
                        amount: record.amount,
                        pending: record.pending,
                        overdraft_limit: record.overdraft_limit,
                        version: record.version,
                    },
                    record.updated_at,
                ),
                record.version.to_string(),
            ]);
        }
        self.run_write(args, false).await;
    }

    /// Writes committed balances through, before their callers are answered. When the write
    /// fails or is skipped (breaker open), another process could still serve the old balances
    /// from Redis after this one acknowledges the new ones, so the whole cache is invalidated
    /// at once (`invalidate_now`); the result says whether the callers may be told.
    pub async fn write_through(&self, balances: &[CommittedBalance]) -> WriteThrough {
        if self.pool.is_none() || balances.is_empty() {
            return WriteThrough::Landed;
        }
        let mut args: Vec<String> = vec![
            PREFIX.to_owned(),
            self.ttl_s.to_string(),
            String::new(),
            String::new(),
        ];
        for balance in balances {
            let state = balance.state;
            args.extend([
                state.account.user.to_string(),
                state.account.currency.code().to_owned(),
                encode(&state, balance.at),
                state.version.to_string(),
            ]);
        }
        if self.run_write(args, true).await {
            WriteThrough::Landed
        } else {
            self.invalidate_now().await
        }
    }

    /// Before an acknowledgement that does not go through `write_through` (an idempotent
    /// replay): when a write-through of this process was lost and not yet made up for by an
    /// invalidation, make it now. `false` means the replay must not be acknowledged yet.
    pub async fn ready_to_acknowledge(&self) -> bool {
        if self.pool.is_none() || !self.dirty.load(Ordering::Acquire) {
            return true;
        }
        self.invalidate_now().await != WriteThrough::Unknown
    }

    /// Bumps the epoch on a connection of its own, past the breaker and the pool: every process
    /// then reads and writes fresh keys, so none can serve a balance written before. Connecting refused means no Redis serves anyone (nothing stale
    /// can be read); a timeout (`redis.invalidate_timeout_ms`, connecting included) or an error
    /// once connected leaves the outcome unknown.
    async fn invalidate_now(&self) -> WriteThrough {
        let Some(client) = &self.client else {
            return WriteThrough::Landed;
        };
        let started = tokio::time::Instant::now();
        let connection = tokio::time::timeout(
            self.invalidate_timeout,
            client.get_multiplexed_async_connection(),
        )
        .await;
        let mut connection = match connection {
            Ok(Ok(connection)) => connection,
            Ok(Err(error)) if error.is_connection_refusal() => {
                self.dirty.store(true, Ordering::Release);
                return WriteThrough::Unreachable;
            }
            Ok(Err(_)) | Err(_) => {
                self.dirty.store(true, Ordering::Release);
                metrics::counter!(names::CACHE_REQUESTS, "result" => "error").increment(1);
                return WriteThrough::Unknown;
            }
        };
        let bumped = tokio::time::timeout_at(
            started + self.invalidate_timeout,
            redis::cmd("INCR")
                .arg(EPOCH_KEY)
                .query_async::<i64>(&mut connection),
        )
        .await;
        if let Ok(Ok(_)) = bumped {
            self.dirty.store(false, Ordering::Release);
            tracing::info!("balance cache invalidated (epoch bumped) after a lost write-through");
            WriteThrough::Invalidated
        } else {
            self.dirty.store(true, Ordering::Release);
            WriteThrough::Unknown
        }
    }

    /// Whether the write landed (a fill's refusal under a newer epoch counts as landed).
    async fn run_write(&self, args: Vec<String>, must_land: bool) -> bool {
        let written = self
            .call(|mut connection| {
                let mut invocation = self.write.key(EPOCH_KEY);
                for arg in &args {
                    invocation.arg(arg);
                }
                async move { invocation.invoke_async::<i64>(&mut connection).await }
            })
            .await;
        if written.is_none() && must_land {
            self.dirty.store(true, Ordering::Release);
        }
        written.is_some()
    }
}

/// `amount:pending:version:micros:overdraft_limit`. The version stays third: `WRITE_SCRIPT`
/// compares it. A value of an earlier release (four fields) does not decode, so the reader
/// falls back to PostgreSQL until a newer write replaces it.
fn encode(state: &AccountState, at: DateTime<Utc>) -> String {
    format!(
        "{}:{}:{}:{}:{}",
        state.amount,
        state.pending,
        state.version,
        at.timestamp_micros(),
        state.overdraft_limit
    )
}

fn decode(currency: &str, value: &str) -> Option<CachedBalance> {
    let mut parts = value.split(':');
    let mut next = || parts.next()?.parse::<i64>().ok();
    let (amount, pending, version, micros, overdraft_limit) =
        (next()?, next()?, next()?, next()?, next()?);
    if parts.next().is_some() {
        return None;
    }
    Some(CachedBalance {
        currency: Currency::parse(currency).ok()?,
        amount,
        pending,
        overdraft_limit,
        version,
        updated_at: DateTime::from_timestamp_micros(micros)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn breaker(threshold: u32, cooldown_ms: u64) -> Breaker {
        Breaker {
            state: AtomicU8::new(CLOSED),
            failures: AtomicU32::new(0),
            opened_at_ms: AtomicU64::new(0),
            threshold,
            cooldown: Duration::from_millis(cooldown_ms),
            clock: Instant::now(),
        }
    }

    #[test]
    fn breaker_opens_after_the_threshold_and_probes_once() {
        let breaker = breaker(3, 0);
        breaker.failure();
        breaker.failure();
        assert_eq!(breaker.state(), CLOSED);
        breaker.failure();
        assert_eq!(breaker.state(), OPEN);
        assert!(breaker.allow(), "cooldown 0: the first caller probes");
        assert_eq!(breaker.state(), HALF_OPEN);
        assert!(!breaker.allow(), "only one probe at a time");
        breaker.failure();
        assert_eq!(breaker.state(), OPEN, "a failed probe reopens");
        assert!(breaker.allow());
        breaker.success();
        assert_eq!(breaker.state(), CLOSED);
        assert!(breaker.allow());
    }

    #[test]
    fn an_open_breaker_waits_for_its_cooldown() {
        let breaker = breaker(1, 60_000);
        breaker.failure();
        assert!(!breaker.allow());
    }

    #[test]
    fn values_round_trip() {
        let at = DateTime::from_timestamp_micros(1_795_254_541_696_364).unwrap();
        let state = AccountState {
            account: AccountKey {
                user: UserId::from_uuid(uuid::Uuid::nil()),
                currency: Currency::parse("USD").unwrap(),
            },
            amount: -42,
            pending: 7,
            overdraft_limit: 100,
            version: 9,
        };
        let decoded = decode("USD", &encode(&state, at)).unwrap();
        assert_eq!(
            (
                decoded.amount,
                decoded.pending,
                decoded.overdraft_limit,
                decoded.version,
                decoded.updated_at
            ),
            (-42, 7, 100, 9, at)
        );
        assert!(decode("USD", "garbage").is_none());
        // An earlier release's value (no overdraft limit) is not read.
        assert!(decode("USD", "-42:7:9:1795254541696364").is_none());
    }
}
