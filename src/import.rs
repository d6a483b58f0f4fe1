//! `tally import FILE`: feeds a CSV or NDJSON file of transactions to a running Tally through
//! `POST /api/v1/transactions/bulk` (mode `independent`), in chunks, with a progress bar.
//!
//! Exactly once across re-runs: chunk boundaries depend only on the file and `--chunk`, and each
//! chunk is sent with the Idempotency-Key `import-<file sha-256 prefix>-<first line>-<last line>`
//! (item `i` of the chunk is then key `...#i` on the server), so re-running the same import
//! after a crash replays what was applied and applies the rest. Items the server refuses as
//! invalid are reported by line and the rest of their chunk is sent again under a key that also
//! names the excluded lines (deterministic, so re-runs find it too).
//!
//! File formats (amounts are integers of minor units):
//! - CSV with a header row naming any of `type, user_id, from_user_id, to_user_id, amount,
//!   currency, description, reference` (empty cells are absent);
//! - NDJSON: one bulk item object per line (blank lines are skipped).

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};

/// How many times a chunk is retried after 429/503 or a transport error before giving up.
const CHUNK_ATTEMPTS_MAX: u32 = 8;
/// Longest pause between attempts, whatever `Retry-After` says.
const RETRY_PAUSE_MAX: Duration = Duration::from_secs(10);

/// What the import is told on the command line.
#[derive(Debug, Clone)]
pub struct ImportOptions {
    /// Base URL of the service, e.g. `http://127.0.0.1:8080`.
    pub url: String,
    pub username: String,
    pub password: String,
    /// Items per bulk request (at most the server's `bulk.max_items`).
    pub chunk: usize,
    /// Draw a progress bar on stderr.
    pub progress: bool,
}

/// One line of the file, as a bulk item.
#[derive(Debug, Clone)]
struct Line {
    /// 1-based line number in the file (the CSV header is line 1).
    number: usize,
    item: Value,
}

/// What an import did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ImportSummary {
    pub lines: usize,
    /// Completed transactions (applied now or by an earlier run of the same import).
    pub applied: usize,
    /// Items that did not apply, by reason (`insufficient_funds`, `invalid`, ...).
    pub failed: BTreeMap<String, usize>,
    pub elapsed: Duration,
}

impl ImportSummary {
    /// Lines per second.
    pub fn rate(&self) -> f64 {
        self.lines as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// Reads `path` and sends it. Errors: unreadable or malformed file, login refused, or a chunk
/// that still failed after `CHUNK_ATTEMPTS_MAX` attempts (a re-run resumes safely).
pub async fn run(path: &Path, options: &ImportOptions) -> anyhow::Result<ImportSummary> {
    anyhow::ensure!(options.chunk >= 1, "--chunk must be at least 1");
    let content = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let file_id = hex::encode(&Sha256::digest(&content)[..8]);
    let is_csv = path
        .extension()
        .is_some_and(|extension| extension.eq_ignore_ascii_case("csv"));
    let lines = if is_csv {
        parse_csv(&content)?
    } else {
        parse_ndjson(&content)?
    };
    let started = Instant::now();
    let client = Client::login(options).await?;
    let bar = if options.progress {
        let bar = indicatif::ProgressBar::new(lines.len() as u64);
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{bar:40} {pos}/{len} lines, {per_sec}, eta {eta}",
            )
            .context("progress bar template")?,
        );
        bar
    } else {
        indicatif::ProgressBar::hidden()
    };
    let mut summary = ImportSummary {
        lines: lines.len(),
        ..ImportSummary::default()
    };
    let mut client = client;
    for chunk in lines.chunks(options.chunk) {
        let first = chunk.first().expect("chunks are never empty").number;
        let last = chunk.last().expect("chunks are never empty").number;
        let base_key = format!("import-{file_id}-{first}-{last}");
        send_chunk(&mut client, options, chunk, &base_key, &mut summary).await?;
        bar.inc(chunk.len() as u64);
    }
    bar.finish_and_clear();
    summary.elapsed = started.elapsed();
    Ok(summary)
}

/// Sends one chunk; on `validation_failed` drops the invalid lines (counted as `invalid`) and
/// sends the rest under a key naming the excluded lines.
async fn send_chunk(
    client: &mut Client,
    options: &ImportOptions,
    chunk: &[Line],
    base_key: &str,
    summary: &mut ImportSummary,
) -> anyhow::Result<()> {
    let mut excluded: BTreeSet<usize> = BTreeSet::new();
    // Each round excludes at least one more line, so this ends.
    for _ in 0..=chunk.len() {
        let kept: Vec<&Line> = chunk
            .iter()
            .filter(|line| !excluded.contains(&line.number))
            .collect();
        if kept.is_empty() {
            return Ok(());
        }
        let key = if excluded.is_empty() {
            base_key.to_owned()
        } else {
            let mut hasher = Sha256::new();
            for number in &excluded {
                hasher.update(number.to_be_bytes());
            }
            format!("{base_key}-x{}", hex::encode(&hasher.finalize()[..6]))
        };
        let body = json!({
            "mode": "independent",
            "transactions": kept.iter().map(|line| line.item.clone()).collect::<Vec<_>>(),
        });
        let (status, reply) = client.post_bulk(options, &key, &body).await?;
        if status == 200 {
            for result in reply["results"]
                .as_array()
                .map(Vec::as_slice)
                .unwrap_or_default()
            {
                match result["status"].as_str() {
                    Some("completed") => summary.applied += 1,
                    _ => {
                        let reason = result["error"]["code"]
                            .as_str()
                            .unwrap_or("unknown")
                            .to_owned();
                        *summary.failed.entry(reason).or_default() += 1;
                    }
                }
            }
            return Ok(());
        }
        if status == 422 && reply["code"] == "validation_failed" {
            let before = excluded.len();
            for error in reply["errors"]
                .as_array()
                .map(Vec::as_slice)
                .unwrap_or_default()
            {
                let field = error["field"].as_str().unwrap_or_default();
                if let Some(index) = item_index(field) {
                    if let Some(line) = kept.get(index) {
                        if excluded.insert(line.number) {
                            let name = field.split_once("].").map_or(field, |(_, name)| name);
                            eprintln!(
                                "line {}: {name} {}",
                                line.number,
                                error["message"].as_str().unwrap_or_default()
                            );
                            *summary.failed.entry("invalid".to_owned()).or_default() += 1;
                        }
                    }
                }
            }
            if excluded.len() > before {
                continue;
            }
        }
        bail!(
            "lines {}..: the server answered {status}: {reply}",
            kept[0].number
        );
    }
    Ok(())
}

/// `transactions[12].amount` → 12.
fn item_index(field: &str) -> Option<usize> {
    field
        .strip_prefix("transactions[")?
        .split(']')
        .next()?
        .parse()
        .ok()
}

fn parse_csv(content: &[u8]) -> anyhow::Result<Vec<Line>> {
    let mut reader = csv::ReaderBuilder::new()
        .trim(csv::Trim::All)
        .from_reader(content);
    let headers = reader.headers().context("reading the CSV header")?.clone();
    let mut lines = Vec::new();
    for (row, record) in reader.records().enumerate() {
        let record = record.with_context(|| format!("CSV line {}", row + 2))?;
        let mut item = Map::new();
        for (name, value) in headers.iter().zip(record.iter()) {
            if value.is_empty() {
                continue;
            }
            let value = match name {
                // Keep what is not an integer as text: the server names the field when it refuses.
                "amount" => value
                    .parse::<i64>()
                    .map_or_else(|_| Value::from(value), Value::from),
                _ => Value::from(value),
            };
            item.insert(name.to_owned(), value);
        }
        lines.push(Line {
            number: row + 2,
            item: Value::Object(item),
        });
    }
    Ok(lines)
}

fn parse_ndjson(content: &[u8]) -> anyhow::Result<Vec<Line>> {
    let text = std::str::from_utf8(content).context("the NDJSON file is not UTF-8")?;
    let mut lines = Vec::new();
    for (row, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let item: Value =
            serde_json::from_str(line).with_context(|| format!("NDJSON line {}", row + 1))?;
        lines.push(Line {
            number: row + 1,
            item,
        });
    }
    Ok(lines)
}

/// An HTTP client that logs in, and logs in again when its access token expires.
struct Client {
    http: reqwest::Client,
    token: String,
}

impl Client {
    async fn login(options: &ImportOptions) -> anyhow::Result<Client> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(120))
            // Below the server's 5 s keep-alive: no request goes out on a connection it is closing.
            .pool_idle_timeout(Duration::from_secs(2))
            .build()?;
        let token = Self::token(&http, options).await?;
        Ok(Client { http, token })
    }

    async fn token(http: &reqwest::Client, options: &ImportOptions) -> anyhow::Result<String> {
        let reply = http
            .post(format!("{}/api/v1/auth/login", options.url))
            .json(&json!({"username": options.username, "password": options.password}))
            .send()
            .await
            .context("connecting to Tally")?;
        let status = reply.status();
        let body: Value = reply.json().await.unwrap_or(Value::Null);
        anyhow::ensure!(status.is_success(), "login refused ({status}): {body}");
        body["access_token"]
            .as_str()
            .map(str::to_owned)
            .context("no access_token in the login reply")
    }

    /// Posts a bulk, retrying 429/503 and transport errors (bounded) and re-logging in on 401.
    async fn post_bulk(
        &mut self,
        options: &ImportOptions,
        key: &str,
        body: &Value,
    ) -> anyhow::Result<(u16, Value)> {
        let mut last_error = String::new();
        for attempt in 1..=CHUNK_ATTEMPTS_MAX {
            let sent = self
                .http
                .post(format!("{}/api/v1/transactions/bulk", options.url))
                .bearer_auth(&self.token)
                .header("Idempotency-Key", key)
                .json(body)
                .send()
                .await;
            let pause = match sent {
                Ok(reply) => {
                    let status = reply.status().as_u16();
                    let retry_after = reply
                        .headers()
                        .get("retry-after")
                        .and_then(|value| value.to_str().ok())
                        .and_then(|value| value.parse::<u64>().ok());
                    let reply: Value = reply.json().await.unwrap_or(Value::Null);
                    match status {
                        401 => {
                            self.token = Self::token(&self.http, options).await?;
                            Duration::ZERO
                        }
                        429 | 503 => {
                            last_error = format!("{status}: {reply}");
                            Duration::from_secs(retry_after.unwrap_or(1))
                        }
                        _ => return Ok((status, reply)),
                    }
                }
                Err(error) => {
                    last_error = error.to_string();
                    Duration::from_millis(200 * u64::from(attempt))
                }
            };
            // Pacing a retry after the server asked to wait, not synchronization.
            tokio::time::sleep(pause.min(RETRY_PAUSE_MAX)).await;
        }
        bail!("giving up after {CHUNK_ATTEMPTS_MAX} attempts: {last_error}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_lines_keep_their_numbers_and_skip_empty_cells() {
        let lines =
            parse_csv(b"type,user_id,amount,currency\ncredit,,100,USD\ndebit,,abc,EUR\n").unwrap();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0].number, 2);
        assert_eq!(
            lines[0].item,
            json!({"type": "credit", "amount": 100, "currency": "USD"})
        );
        assert_eq!(lines[1].item["amount"], "abc");
    }

    #[test]
    fn ndjson_skips_blank_lines_and_numbers_from_one() {
        let lines = parse_ndjson(b"{\"type\":\"credit\"}\n\n{\"type\":\"debit\"}\n").unwrap();
        assert_eq!(
            lines.iter().map(|line| line.number).collect::<Vec<_>>(),
            vec![1, 3]
        );
    }

    #[test]
    fn item_indices_come_from_field_names() {
        assert_eq!(item_index("transactions[12].amount"), Some(12));
        assert_eq!(item_index("mode"), None);
    }
}
