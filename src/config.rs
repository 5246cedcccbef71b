//! Settings, loaded in layers (CONTRACT §1): `config/default.toml`, then the file named by
//! `--config` or `PORTBOT_CONFIG`, then `PORTBOT__SECTION__KEY` environment variables.

use std::collections::BTreeSet;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::core::access::Directory;
use crate::core::ids::Identity;

/// A secret from configuration. It never shows in `Debug` output or logs.
#[derive(Clone, Deserialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

#[derive(Debug, Clone, Deserialize)]
pub struct Settings {
    pub server: ServerSettings,
    pub storage: StorageSettings,
    pub catalog: CatalogSettings,
    pub templates: TemplateSettings,
    pub api: ApiSettings,
    pub slack: SlackSettings,
    pub discord: DiscordSettings,
    #[serde(default)]
    pub teams: Vec<TeamSettings>,
    pub backends: BackendSettings,
    pub iac: IacSettings,
    pub github: GithubSettings,
}

#[derive(Debug, Clone, Deserialize)]
pub struct ServerSettings {
    pub bind: SocketAddr,
    pub public_url: String,
}

#[derive(Debug, Clone, Deserialize)]
pub struct StorageSettings {
    pub path: PathBuf,
    /// sled's page cache; its default of 1 GiB is far more than portbot needs.
    pub cache_capacity_mb: u64,
    /// How often sled is flushed and the write-ahead log trimmed.
    pub checkpoint_interval_ms: u64,
}

#[derive(Debug, Clone, Deserialize)]
pub struct CatalogSettings {
    pub path: PathBuf,
}

#[derive(Debug, Clone, Deserialize)]
pub struct TemplateSettings {
    pub path: PathBuf,
}

/// The Slack app (CONTRACT §1). Its endpoints exist only when `enabled`.
#[derive(Debug, Clone, Deserialize)]
pub struct SlackSettings {
    pub enabled: bool,
    pub bot_token: Option<Secret>,
    pub signing_secret: Option<Secret>,
    /// An app-level token (`xapp-…`): receive commands and clicks over Socket Mode.
    pub app_token: Option<Secret>,
    pub api_url: String,
    pub approval_channel: Option<String>,
    pub command: String,
    /// The least time between two messages to one channel (Slack allows about one a second).
    pub message_interval_ms: u64,
    /// Messages a minute to all channels together at most, in bursts of up to as many (Slack
    /// keeps a workspace-wide limit on `chat.postMessage` of several hundred a minute); 0 for
    /// no such limit.
    pub messages_per_minute: u32,
    /// `chat.update` calls a minute at most (card and approval request updates), in bursts of
    /// up to as many: Slack's Tier 3, about 50 a minute for the workspace; 0 for no limit.
    pub updates_per_minute: u32,
    /// Runs whose messages are being delivered at once. Most of a delivery is waiting for its
    /// channel's next slot, so this is high.
    pub max_concurrent: usize,
    /// A slash command's answer not ready this long after the command arrived goes to its
    /// `response_url` when ready, and the command is answered at once that it follows (Slack
    /// waits 3 s); 0 sends every answer that way.
    pub defer_after_ms: u64,
    /// Socket Mode: portbot pings Slack this often, and takes a connection that has sent
    /// nothing for twice as long for dead and opens a new one (such connections have gone
    /// silent for hours without a word of closing).
    pub socket_ping_interval_ms: u64,
}

/// The Discord application (CONTRACT §1). Its endpoint exists only when `enabled`.
#[derive(Debug, Clone, Deserialize)]
pub struct DiscordSettings {
    pub enabled: bool,
    pub bot_token: Option<Secret>,
    /// The application's Ed25519 public key, hex (64 digits); needed for the HTTP endpoint.
    pub public_key: Option<String>,
    /// Receive interactions over Discord's gateway (a WebSocket portbot opens), for bots
    /// Discord cannot reach over HTTPS.
    pub gateway: bool,
    pub application_id: Option<String>,
    /// The REST API root, with its version (`https://discord.com/api/v10`).
    pub api_url: String,
    pub approval_channel: Option<String>,
    /// The application command's name (`port`).
    pub command: String,
    /// Runs whose messages are being delivered at once.
    pub max_concurrent: usize,
    /// An answer not ready this long after an interaction arrived is deferred (Discord waits
    /// 3 s for the first response) and sent when ready; 0 defers every answer.
    pub defer_after_ms: u64,
    /// Requests a second to Discord's REST API at most (its global limit for a bot is 50);
    /// interaction responses are not counted, as Discord does not count them.
    pub requests_per_second: u32,
}

/// Where GITOPS actions' file templates live.
#[derive(Debug, Clone, Deserialize)]
pub struct IacSettings {
    pub templates_path: PathBuf,
}

/// GitHub: the REST API for GITOPS (`provider: github`) and GITHUB actions, and the webhook
/// (`/github/webhook` exists only with `webhook_secret`).
#[derive(Debug, Clone, Deserialize)]
pub struct GithubSettings {
    pub api_url: String,
    pub token: Option<Secret>,
    pub webhook_secret: Option<Secret>,
    /// How often active GITOPS and GITHUB runs are checked (pull request, branch, workflow
    /// run) when no webhook said what happened.
    pub poll_interval_seconds: u64,
    /// Tries of one API call in all (5xx, connection errors, secondary rate limits), the
    /// first included, before the run fails with the reason.
    pub max_attempts: usize,
    pub initial_backoff_ms: u64,
    /// The longest wait between tries, also for a rate limit's reset time.
    pub max_backoff_ms: u64,
    pub timeout_seconds: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ClientRole {
    /// Runs and approves actions for users (`?run_as=`), and everything a backend may do.
    Admin,
    /// Reports on runs (status, logs) and upserts entities; never runs or approves.
    Backend,
}

#[derive(Debug, Clone, Deserialize)]
pub struct ApiClient {
    pub client_id: String,
    pub client_secret: Secret,
    pub role: ClientRole,
}

#[derive(Debug, Clone, Deserialize)]
pub struct ApiSettings {
    #[serde(default)]
    pub clients: Vec<ApiClient>,
    pub token_ttl_seconds: u64,
}

#[derive(Debug, Clone, Deserialize)]
pub struct TeamSettings {
    pub identifier: String,
    #[serde(default)]
    pub users: Vec<String>,
    #[serde(default)]
    pub slack_users: Vec<String>,
    #[serde(default)]
    pub discord_users: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct BackendSettings {
    /// Runs whose backends are invoked at once; the rest wait in the outbox.
    pub max_concurrent: usize,
    pub webhook: WebhookSettings,
}

#[derive(Debug, Clone, Deserialize)]
pub struct WebhookSettings {
    /// Tries in all, the first included, before a run fails for an unreachable backend.
    pub max_attempts: usize,
    pub initial_backoff_ms: u64,
    pub max_backoff_ms: u64,
    pub timeout_seconds: u64,
}

/// The committed defaults, relative to the working directory.
pub const DEFAULT_FILE: &str = "config/default.toml";

impl Settings {
    /// Loads the layers. `explicit` is `--config`; without it `PORTBOT_CONFIG` is used if set.
    pub fn load(explicit: Option<&Path>) -> Result<Settings, config::ConfigError> {
        let overlay = explicit
            .map(Path::to_path_buf)
            .or_else(|| std::env::var_os("PORTBOT_CONFIG").map(PathBuf::from));
        let mut builder = config::Config::builder()
            .add_source(config::File::with_name(DEFAULT_FILE).required(true));
        if let Some(file) = overlay {
            builder = builder.add_source(config::File::from(file).required(true));
        }
        builder
            .add_source(
                config::Environment::with_prefix("PORTBOT")
                    .prefix_separator("__")
                    .separator("__")
                    .try_parsing(true),
            )
            .build()?
            .try_deserialize()
    }

    /// Teams as the core sees them: chat user ids become `slack:U…` / `discord:…` identities.
    pub fn directory(&self) -> Result<Directory, String> {
        let mut teams = Vec::new();
        for team in &self.teams {
            let mut members = BTreeSet::new();
            let all = team
                .users
                .iter()
                .map(|u| Identity::try_from(u.as_str()))
                .chain(team.slack_users.iter().map(|u| Ok(Identity::slack(u))))
                .chain(team.discord_users.iter().map(|u| Ok(Identity::discord(u))));
            for member in all {
                members.insert(member.map_err(|e| format!("teams.{}: {e}", team.identifier))?);
            }
            teams.push((team.identifier.clone(), members));
        }
        Ok(Directory::new(teams))
    }
}
