//! The `tally` binary: `tally serve` (the default) runs the service, `tally migrate` applies the
//! database migrations and exits.

use clap::{Parser, Subcommand};
use tally::config::Settings;
use tally::startup::Application;

#[derive(Parser)]
#[command(
    name = "tally",
    version,
    about = "Tally: a double-entry money ledger with a REST API"
)]
struct Cli {
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

#[actix_web::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let settings = Settings::load(cli.profile.as_deref())?;
    tally::telemetry::init_logs(&settings.log);
    match cli.command.unwrap_or(Command::Serve) {
        Command::Serve => {
            Application::build(settings)
                .await?
                .run_until_stopped()
                .await?
        }
        Command::Migrate => tally::store::prepare_database(&settings.database).await?,
        Command::Import {
            file,
            url,
            username,
            password_stdin: _,
            chunk,
            quiet,
        } => {
            let password = read_password()?;
            let options = tally::import::ImportOptions {
                url,
                username,
                password,
                chunk,
                progress: !quiet,
            };
            let summary = tally::import::run(&file, &options).await?;
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
        }
        Command::Admin {
            command:
                AdminCommand::Create {
                    username,
                    email,
                    password_stdin: _,
                },
        } => {
            let password = read_password()?;
            let password = password.as_str();
            tally::store::prepare_database(&settings.database).await?;
            let pool = tally::store::pool(&settings.database, tally::store::APP_NAME, 2)?;
            let email = email.unwrap_or_else(|| format!("{username}@admin.invalid"));
            if tally::auth::create_admin(&pool, &username, &email, password).await? {
                println!("admin {username} created");
            } else {
                println!("admin {username} already exists");
            }
        }
    }
    Ok(())
}

/// The first line of standard input, without its line ending.
fn read_password() -> anyhow::Result<String> {
    let mut password = String::new();
    std::io::stdin().read_line(&mut password)?;
    Ok(password.trim_end_matches(['\r', '\n']).to_owned())
}
