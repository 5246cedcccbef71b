//! The `portbot` binary: `serve` (the default) runs the bot, `check` validates definitions, and
//! the other subcommands are the API client (CONTRACT §1).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use portbot::cli::{self, Client, Connection};
use portbot::config::Settings;
use portbot::{definitions, startup::Application, telemetry};

#[derive(Parser)]
#[command(
    name = "portbot",
    version,
    about = "Self-service actions from your developer portal, in chat"
)]
struct Args {
    /// A settings file layered over config/default.toml (also PORTBOT_CONFIG).
    #[arg(long, global = true, value_name = "FILE")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    client: ClientArgs,
}

#[derive(clap::Args)]
struct ClientArgs {
    /// The portbot API (default: server.public_url from the settings).
    #[arg(long, global = true, env = "PORTBOT_API_URL")]
    api_url: Option<String>,
    /// API client id (default: the first admin client in the settings).
    #[arg(long, global = true, env = "PORTBOT_CLIENT_ID")]
    client_id: Option<String>,
    /// API client secret (default: that client's secret in the settings).
    #[arg(
        long,
        global = true,
        env = "PORTBOT_CLIENT_SECRET",
        hide_env_values = true
    )]
    client_secret: Option<String>,
    /// The user to act for, e.g. dev@example.com (the API's run_as).
    #[arg(long = "as", global = true, env = "PORTBOT_AS", value_name = "USER")]
    acting_as: Option<String>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the bot (the default).
    Serve,
    /// Validate settings, catalog, actions and templates; print every problem.
    Check,
    /// Print the Slack app manifest for a bot reachable at URL (or for Socket Mode).
    SlackManifest {
        /// The bot's public base URL, e.g. https://portbot.example.com
        #[arg(long, required_unless_present = "socket_mode")]
        url: Option<String>,
        /// For Socket Mode (slack.app_token), where Slack needs no URL.
        #[arg(long, conflicts_with = "url")]
        socket_mode: bool,
    },
    /// Register the /port command with Discord (bulk overwrite), globally or in one guild.
    DiscordRegister {
        /// A guild id: register there only (takes effect at once; global commands can take
        /// up to an hour to show).
        #[arg(long)]
        guild: Option<String>,
    },
    /// Request a run: portbot run ACTION [ENTITY] [key=value ...]
    Run {
        #[arg(required = true, num_args = 1.., value_name = "ACTION [ENTITY] [key=value]")]
        args: Vec<String>,
    },
    /// List recent runs.
    Runs {
        #[arg(long)]
        active: bool,
        #[arg(long)]
        action: Option<String>,
        #[arg(long)]
        entity: Option<String>,
    },
    /// Approve a run waiting for approval.
    Approve {
        run: String,
        #[arg(long)]
        reason: Option<String>,
    },
    /// Decline a run waiting for approval.
    Decline {
        run: String,
        #[arg(long)]
        reason: Option<String>,
    },
    /// Show a run's events; --follow keeps printing until it ends.
    Logs {
        run: String,
        #[arg(long, short)]
        follow: bool,
    },
    /// Show a blueprint's entities, or one entity.
    Entities {
        blueprint: String,
        id: Option<String>,
    },
}

fn main() -> ExitCode {
    portbot::allocator::purge_freed_memory_sooner();
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("the tokio runtime starts")
        .block_on(run(Args::parse()))
}

async fn run(args: Args) -> ExitCode {
    let result = match args.command.unwrap_or(Command::Serve) {
        Command::Serve => serve(args.config).await,
        Command::Check => check(args.config),
        Command::SlackManifest { url, .. } => slack_manifest(args.config, url.as_deref()),
        Command::DiscordRegister { guild } => discord_register(args.config, guild.as_deref()).await,
        client_command => run_client(args.config, args.client, client_command).await,
    };
    match result {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(config: Option<PathBuf>) -> anyhow::Result<ExitCode> {
    telemetry::init();
    let settings = Settings::load(config.as_deref())?;
    let application = Application::build(settings).await?;
    application.run_until_stopped().await?;
    Ok(ExitCode::SUCCESS)
}

fn check(config: Option<PathBuf>) -> anyhow::Result<ExitCode> {
    let settings = Settings::load(config.as_deref())?;
    match definitions::load(&settings) {
        Ok(defs) => {
            println!(
                "ok: {} blueprints, {} entities, {} actions",
                defs.blueprints.len(),
                defs.entities.len(),
                defs.actions.len()
            );
            Ok(ExitCode::SUCCESS)
        }
        Err(problems) => {
            for problem in &problems {
                println!("{problem}");
            }
            println!("{} problem(s)", problems.len());
            Ok(ExitCode::FAILURE)
        }
    }
}

fn slack_manifest(config: Option<PathBuf>, url: Option<&str>) -> anyhow::Result<ExitCode> {
    if url.is_some_and(|u| !u.starts_with("https://")) {
        anyhow::bail!("Slack only calls https URLs: give --url https://... (or --socket-mode)");
    }
    let settings = Settings::load(config.as_deref())?;
    let manifest = portbot::slack::manifest::manifest(url, &settings.slack.command);
    println!("{}", serde_json::to_string_pretty(&manifest)?);
    Ok(ExitCode::SUCCESS)
}

async fn discord_register(
    config: Option<PathBuf>,
    guild: Option<&str>,
) -> anyhow::Result<ExitCode> {
    let settings = Settings::load(config.as_deref())?;
    let discord = &settings.discord;
    let (Some(token), Some(application_id)) =
        (discord.bot_token.clone(), discord.application_id.as_deref())
    else {
        anyhow::bail!("discord.bot_token and discord.application_id must be set (PORTBOT__DISCORD__BOT_TOKEN, PORTBOT__DISCORD__APPLICATION_ID)");
    };
    let api =
        portbot::discord::DiscordApi::new(&discord.api_url, token, discord.requests_per_second);
    let registered =
        portbot::discord::register::register(&api, application_id, guild, &discord.command).await?;
    let names: Vec<&str> = registered
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|c| c["name"].as_str())
        .collect();
    println!(
        "registered /{} ({})",
        names.join(", /"),
        guild.map_or("global".to_owned(), |g| format!("guild {g}"))
    );
    Ok(ExitCode::SUCCESS)
}

async fn run_client(
    config: Option<PathBuf>,
    flags: ClientArgs,
    command: Command,
) -> anyhow::Result<ExitCode> {
    // The settings only supply defaults here; a client without them uses its flags.
    let settings = Settings::load(config.as_deref()).ok();
    let conn = Connection::resolve(
        settings.as_ref(),
        flags.api_url,
        flags.client_id,
        flags.client_secret,
        flags.acting_as,
    )?;
    let client = Client::connect(conn).await?;
    match command {
        Command::Run { args } => cli::run(&client, &args).await?,
        Command::Runs {
            active,
            action,
            entity,
        } => cli::runs(&client, active, action, entity).await?,
        Command::Approve { run, reason } => cli::decide(&client, &run, true, reason).await?,
        Command::Decline { run, reason } => cli::decide(&client, &run, false, reason).await?,
        Command::Logs { run, follow } => cli::logs(&client, &run, follow).await?,
        Command::Entities { blueprint, id } => {
            cli::entities(&client, &blueprint, id.as_deref()).await?
        }
        Command::Serve
        | Command::Check
        | Command::SlackManifest { .. }
        | Command::DiscordRegister { .. } => {
            unreachable!("handled in main")
        }
    }
    Ok(ExitCode::SUCCESS)
}
