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
        Command::Admin {
            command:
                AdminCommand::Create {
                    username,
                    email,
                    password_stdin: _,
                },
        } => {
            let mut password = String::new();
            std::io::stdin().read_line(&mut password)?;
            let password = password.trim_end_matches(['\r', '\n']);
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
