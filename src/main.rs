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
    }
    Ok(())
}
