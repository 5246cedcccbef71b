//! Builds the running bot from settings: definitions, store, app, backends and HTTP server.
//! Tests use [`Application::build`] too, on a random port with a temporary store.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::{bail, Context};
use tokio::net::TcpListener;

use crate::api::{self, ApiState};
use crate::app::{worker, App};
use crate::backends::{self, BackendConfig};
use crate::config::Settings;
use crate::definitions;
use crate::metrics::Metrics;
use crate::slack;
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
            std::time::Duration::from_millis(settings.storage.checkpoint_interval_ms),
        )
        .with_context(|| {
            format!(
                "cannot open the store at {}",
                settings.storage.path.display()
            )
        })?;
        let mut consumers = vec![backends::consumer()];
        if settings.slack.enabled {
            consumers.push(slack::thread::consumer());
            if settings.slack.approval_channel.is_some() {
                consumers.push(slack::approvals::consumer());
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
    let messages = Arc::new(slack::Messages::load(&settings.templates.path)?);
    let api = slack::SlackApi::new(&settings.slack.api_url, bot_token);
    let poster = slack::thread::Poster {
        app: app.clone(),
        api: api.clone(),
        messages: messages.clone(),
        pace: slack::Pace::new(std::time::Duration::from_millis(
            settings.slack.message_interval_ms,
        )),
    };
    let threads = slack::thread::Threads {
        poster: poster.clone(),
    };
    worker::spawn(
        app.clone(),
        slack::thread::CONSUMER,
        threads,
        settings.slack.max_concurrent,
    );
    if let Some(channel) = settings.slack.approval_channel.clone() {
        let approvals = slack::approvals::Approvals { poster, channel };
        worker::spawn(
            app.clone(),
            slack::approvals::CONSUMER,
            approvals,
            settings.slack.max_concurrent,
        );
    }
    let state = slack::SlackState {
        app: app.clone(),
        verifier: Arc::new(slack::Verifier::new(signing_secret)),
        messages,
        api,
        command: settings.slack.command.clone(),
    };
    if let Some(app_token) = settings.slack.app_token.clone() {
        slack::socket::spawn(state.clone(), app_token);
    }
    Ok(slack::router(state))
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
