//! Builds the running bot from settings: definitions, store, app, backends and HTTP server.
//! Tests use [`Application::build`] too, on a random port with a temporary store.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use tokio::net::TcpListener;

use crate::api::{self, ApiState};
use crate::app::{worker, App};
use crate::backends::{self, BackendConfig};
use crate::chat::delivery::{self, Approvals, Surface, Threads};
use crate::chat::pace::Pace;
use crate::config::Settings;
use crate::definitions;
use crate::discord::{self, DiscordSurface};
use crate::metrics::Metrics;
use crate::slack::{self, SlackSurface, UpdateBudget};
use crate::store::Store;

/// The client secret shipped in `config/default.toml` for the local quick start.
pub const DEMO_SECRET: &str = "portbot-demo-secret-change-me";

pub struct Application {
    listener: TcpListener,
    router: axum::Router,
    app: App,
}

impl Application {
    /// Loads and checks everything, opens the store, starts the backend dispatcher and binds
    /// the HTTP listener. A broken definition stops it here, listing every problem.
    pub async fn build(settings: Settings) -> anyhow::Result<Application> {
        refuse_demo_secret_in_public(&settings)?;
        let definitions = definitions::load(&settings).map_err(|problems| {
            let lines: Vec<String> = problems.iter().map(|p| format!("  {p}")).collect();
            anyhow::anyhow!(
                "the definitions have {} problem(s):\n{}",
                problems.len(),
                lines.join("\n")
            )
        })?;
        if let Some(parent) = settings.storage.path.parent() {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("cannot create {}", parent.display()))?;
        }
        let store = Store::open(
            &settings.storage.path,
            settings.storage.cache_capacity_mb,
            Duration::from_millis(settings.storage.checkpoint_interval_ms),
        )
        .with_context(|| {
            format!(
                "cannot open the store at {}",
                settings.storage.path.display()
            )
        })?;
        let mut consumers = vec![backends::consumer()];
        if settings.slack.enabled {
            consumers.push(delivery::threads_consumer::<SlackSurface>());
            if settings.slack.approval_channel.is_some() {
                consumers.push(delivery::approvals_consumer::<SlackSurface>());
            }
        }
        if settings.discord.enabled {
            consumers.push(delivery::threads_consumer::<DiscordSurface>());
            if settings.discord.approval_channel.is_some() {
                consumers.push(delivery::approvals_consumer::<DiscordSurface>());
            }
        }
        let app = App::new(store, definitions, consumers, Metrics::new()).await?;
        backends::spawn(
            app.clone(),
            BackendConfig {
                webhook: settings.backends.webhook.clone(),
                clients: settings.api.clients.clone(),
                max_concurrent: settings.backends.max_concurrent.max(1),
                github: settings.github.clone(),
                iac_templates: settings.iac.templates_path.clone(),
                work_dir: beside(&settings.storage.path, "gitops"),
                public_url: settings.server.public_url.clone(),
            },
        );
        let mut router = api::router(ApiState {
            app: app.clone(),
            clients: Arc::new(settings.api.clients.clone()),
            token_ttl_seconds: settings.api.token_ttl_seconds,
        });
        if settings.slack.enabled {
            router = router.merge(start_slack(&settings, &app)?);
        }
        if settings.discord.enabled {
            router = router.merge(start_discord(&settings, &app)?);
        }
        if let Some(secret) = settings.github.webhook_secret.clone() {
            router = router.merge(crate::github::webhook::router(app.clone(), secret));
        }
        let listener = TcpListener::bind(settings.server.bind)
            .await
            .with_context(|| format!("cannot listen on {}", settings.server.bind))?;
        Ok(Application {
            listener,
            router,
            app,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("a bound listener has an address")
    }

    pub fn app(&self) -> &App {
        &self.app
    }

    /// Serves until SIGINT or SIGTERM, then finishes requests in flight.
    pub async fn run_until_stopped(self) -> std::io::Result<()> {
        tracing::info!(addr = %self.local_addr(), "portbot is serving");
        axum::serve(self.listener, self.router)
            .with_graceful_shutdown(shutdown_signal())
            .await
    }
}

/// How long a chat answer may take before it is deferred: under the 3 s Slack and Discord
/// wait, or deferring would come too late to help.
fn answer_deadline(platform: &str, defer_after_ms: u64) -> anyhow::Result<Duration> {
    if defer_after_ms >= 3_000 {
        bail!(
            "{platform}.defer_after_ms is {defer_after_ms}, but {platform} waits only 3000 ms for \
             an answer: set it lower (the default 2500 leaves room for the network)"
        );
    }
    Ok(Duration::from_millis(defer_after_ms))
}

/// Slack, when enabled: the thread delivery worker and the endpoints. Missing secrets stop the
/// start.
fn start_slack(settings: &Settings, app: &App) -> anyhow::Result<axum::Router> {
    let (Some(signing_secret), Some(bot_token)) = (
        settings.slack.signing_secret.clone(),
        settings.slack.bot_token.clone(),
    ) else {
        bail!(
            "slack.enabled is true but slack.signing_secret or slack.bot_token is not set \
             (PORTBOT__SLACK__SIGNING_SECRET, PORTBOT__SLACK__BOT_TOKEN)"
        );
    };
    let messages = Arc::new(slack::load_messages(&settings.templates.path)?);
    let api = slack::SlackApi::new(&settings.slack.api_url, bot_token);
    let surface = SlackSurface {
        app: app.clone(),
        api: api.clone(),
        messages: messages.clone(),
        pace: Pace::new(Duration::from_millis(settings.slack.message_interval_ms))
            .with_shared_budget(settings.slack.messages_per_minute, Duration::from_secs(60)),
        updates: UpdateBudget::new(settings.slack.updates_per_minute),
        approval_channel: settings.slack.approval_channel.clone().unwrap_or_default(),
    };
    spawn_deliveries(
        app,
        surface,
        settings.slack.approval_channel.is_some(),
        settings.slack.max_concurrent,
    );
    let state = slack::SlackState {
        app: app.clone(),
        verifier: Arc::new(slack::Verifier::new(
            signing_secret,
            chrono::Utc::now().timestamp(),
        )),
        messages,
        api,
        command: settings.slack.command.clone(),
        defer_after: answer_deadline("slack", settings.slack.defer_after_ms)?,
    };
    if let Some(app_token) = settings.slack.app_token.clone() {
        let ping_every = Duration::from_millis(settings.slack.socket_ping_interval_ms.max(1));
        slack::socket::spawn(state.clone(), app_token, ping_every);
    }
    Ok(slack::router(state))
}

/// Discord, when enabled: the delivery workers and the interactions endpoint. Missing or bad
/// settings stop the start.
fn start_discord(settings: &Settings, app: &App) -> anyhow::Result<axum::Router> {
    let discord = &settings.discord;
    let (Some(bot_token), Some(application_id)) =
        (discord.bot_token.clone(), discord.application_id.clone())
    else {
        bail!(
            "discord.enabled is true but discord.bot_token or discord.application_id is not set \
             (PORTBOT__DISCORD__BOT_TOKEN, PORTBOT__DISCORD__APPLICATION_ID)"
        );
    };
    let verifier = match discord.public_key.as_deref() {
        Some(key) => Some(Arc::new(discord_verifier(key)?)),
        None if discord.gateway => None,
        None => bail!(
            "discord.public_key is not set: the interactions endpoint needs it \
             (PORTBOT__DISCORD__PUBLIC_KEY), or use discord.gateway = true"
        ),
    };
    let messages = Arc::new(discord::load_messages(&settings.templates.path)?);
    let api = discord::DiscordApi::new(
        &discord.api_url,
        bot_token.clone(),
        discord.requests_per_second,
    );
    let surface = DiscordSurface {
        app: app.clone(),
        api: api.clone(),
        messages: messages.clone(),
        approval_channel: discord.approval_channel.clone().unwrap_or_default(),
    };
    spawn_deliveries(
        app,
        surface,
        discord.approval_channel.is_some(),
        discord.max_concurrent,
    );
    let state = discord::DiscordState {
        app: app.clone(),
        verifier,
        messages,
        api,
        application_id,
        command: discord.command.clone(),
        answered: Arc::default(),
        started: chrono::Utc::now().timestamp(),
        answer_within: answer_deadline("discord", discord.defer_after_ms)?,
    };
    if discord.gateway {
        discord::gateway::spawn(state.clone(), bot_token);
    }
    Ok(match state.verifier.is_some() {
        true => discord::router(state),
        false => axum::Router::new(),
    })
}

fn discord_verifier(public_key: &str) -> anyhow::Result<serenity::interactions_endpoint::Verifier> {
    let key: [u8; 32] = hex::decode(public_key.trim())
        .ok()
        .and_then(|bytes| bytes.try_into().ok())
        .context("discord.public_key must be the application's public key: 64 hex digits")?;
    serenity::interactions_endpoint::Verifier::try_new(key)
        .map_err(|e| anyhow::anyhow!("discord.public_key: {e}"))
}

/// A chat platform's outbox workers: its run cards and threads and, when it has an approval
/// channel, its approval requests.
fn spawn_deliveries<S: Surface>(app: &App, surface: S, approvals: bool, max_concurrent: usize) {
    if approvals {
        let requests = Approvals(surface.clone());
        worker::spawn(app.clone(), S::APPROVALS, requests, max_concurrent);
    }
    worker::spawn(app.clone(), S::THREADS, Threads(surface), max_concurrent);
}

/// `<path>.<suffix>`: a folder beside the store (as its write-ahead log is).
fn beside(path: &std::path::Path, suffix: &str) -> std::path::PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".");
    name.push(suffix);
    name.into()
}

fn refuse_demo_secret_in_public(settings: &Settings) -> anyhow::Result<()> {
    let demo = settings
        .api
        .clients
        .iter()
        .any(|c| c.client_secret.expose() == DEMO_SECRET);
    if demo && !settings.server.bind.ip().is_loopback() {
        bail!(
            "server.bind is {} but an API client still has the demo secret from config/default.toml; \
             set real secrets (e.g. in a --config file) before serving beyond this machine",
            settings.server.bind
        );
    }
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_answer_deadline_must_come_before_the_platforms_3_seconds() {
        assert_eq!(
            answer_deadline("slack", 2500).unwrap(),
            Duration::from_millis(2500)
        );
        assert!(answer_deadline("slack", 0).unwrap().is_zero());
        let error = answer_deadline("discord", 3000).unwrap_err().to_string();
        assert!(
            error.starts_with("discord.defer_after_ms is 3000"),
            "{error}"
        );
    }
}
