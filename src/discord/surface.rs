//! Discord as a delivery surface (see `chat::delivery`): the run card in the channel of the
//! command with a thread started from it for every later event, and approval requests in
//! `discord.approval_channel`.
//!
//! A message's thread has the message's id. The card is recorded as soon as it is posted (so a
//! restart does not post it twice), and the first reply starts its thread (a thread Discord
//! says exists already was started before a restart). Where
//! the bot may not post (no access to the channel), the card goes to the requester as a
//! direct message that says which permissions to give, so no run is left without a thread.

use std::sync::Arc;

use reqwest::Method;
use serde_json::{json, Value};

use super::messages::{code_block_json, discord_json_escape, fit};
use super::rest::{DiscordApi, DiscordApiError};
use crate::app::{App, AppError};
use crate::chat::delivery::{card_shows, updated_card};
use crate::chat::messages::Messages;
use crate::chat::view::{
    card_data, card_update_data, one_each, reply_data, request_data, LogLimit,
};
use crate::chat::{CardUpdate, Surface};
use crate::core::ids::{self, Identity};
use crate::core::run::{Run, RunEvent};

/// Discord's JSON error codes portbot acts on.
const UNKNOWN_CHANNEL: u64 = 10_003;
const MISSING_ACCESS: u64 = 50_001;
const MISSING_PERMISSIONS: u64 = 50_013;
const THREAD_EXISTS: u64 = 160_004;

#[derive(Clone)]
pub struct DiscordSurface {
    pub app: App,
    pub api: DiscordApi,
    pub messages: Arc<Messages>,
    /// Where approval requests go (empty when they are off: no consumer then).
    pub approval_channel: String,
}

impl Surface for DiscordSurface {
    const ORIGIN: &'static str = super::ORIGIN;
    const THREADS: &'static str = "discord";
    const APPROVALS: &'static str = "discord-approvals";
    /// Under Discord's 2,000 characters per message, with room for the code block (where
    /// nothing is escaped).
    const LOG_LIMIT: LogLimit = LogLimit {
        chars: 1_900,
        width: one_each,
    };

    fn app(&self) -> &App {
        &self.app
    }

    async fn place_card(&self, run: &Run, channel: &str) -> Result<Value, AppError> {
        let card = self.render("run_card", card_data_with_link(run))?;
        let shows = card_shows(&card.to_string());
        let nonce = Nonce::of("card", run, &[]);
        // Recorded at once, so a restart does not post the card again; the first reply starts
        // its thread.
        match self.post_message(channel, card, &nonce).await {
            Ok(posted) => Ok(json!({"channel": channel, "card": posted["id"], "shows": shows})),
            Err(error)
                if matches!(
                    error.code(),
                    Some(UNKNOWN_CHANNEL | MISSING_ACCESS | MISSING_PERMISSIONS)
                ) =>
            {
                self.card_in_direct_message(run, channel).await
            }
            Err(error) => Err(delivery(error)),
        }
    }

    async fn reply(
        &self,
        card: &Value,
        run: &Run,
        group: &[RunEvent],
    ) -> Result<Option<Value>, AppError> {
        let mut data = reply_data(run, group, Self::LOG_LIMIT, mention);
        data["requester_id"] = json!(user_id(&run.created_by));
        if let Some(lines) = data["text"].as_str() {
            data["text"] = json!(code_block_json(lines));
        }
        data["link"] = json!(data["link"].as_str().and_then(safe_link));
        let mut message = self.render("thread_reply", data)?;
        let (channel, id) = (text(&card["channel"]), text(&card["card"]));
        // The thread (it has the card's id) is started by the first reply. Where Discord
        // refuses threads (a direct message, no permission), replies go under the card in its
        // channel instead.
        let started = match card.get("thread") {
            Some(_) => None,
            None => {
                let thread = match self.start_thread(channel, id, run).await {
                    Ok(()) => Some(id),
                    Err(error) if error.code() == Some(THREAD_EXISTS) => Some(id),
                    Err(error @ DiscordApiError::Refused { .. }) => {
                        tracing::warn!(%error, run = %run.id, "no thread for the run card; replying under it");
                        None
                    }
                    Err(error) => return Err(delivery(error)),
                };
                let mut started = card.clone();
                started["thread"] = json!(thread);
                Some(started)
            }
        };
        let card = started.as_ref().unwrap_or(card);
        let target = match card["thread"].as_str() {
            Some(thread) => thread,
            None => {
                message["message_reference"] =
                    json!({"message_id": id, "fail_if_not_exists": false});
                channel
            }
        };
        let seqs = [group.first(), group.last()].map(|e| e.map_or(0, |e| e.seq));
        self.post_message(target, message, &Nonce::of("reply", run, &seqs))
            .await
            .map_err(delivery)?;
        Ok(started)
    }

    /// Edits count against the bot's one request budget (`rest`), so an update never waits
    /// apart from posts.
    async fn update_card(&self, card: &Value, run: &Run) -> Result<CardUpdate, AppError> {
        let data = card_update_data(card_data_with_link(run), card);
        let message = self.render("run_card", data)?;
        let Some(updated) = updated_card(card, &message.to_string()) else {
            return Ok(CardUpdate::Shown);
        };
        self.edit_message(text(&card["channel"]), text(&card["card"]), &message)
            .await?;
        Ok(CardUpdate::Updated(updated))
    }

    async fn post_request(&self, run: &Run) -> Result<Value, AppError> {
        let message = self.render("approval_request", request_data(run, mention))?;
        let posted = self
            .post_message(
                &self.approval_channel,
                message,
                &Nonce::of("request", run, &[]),
            )
            .await
            .map_err(delivery)?;
        Ok(json!({"channel": self.approval_channel, "message": posted["id"]}))
    }

    async fn update_request(&self, request: &Value, run: &Run) -> Result<(), AppError> {
        let message = self.render("approval_request", request_data(run, mention))?;
        self.edit_message(
            text(&request["channel"]),
            text(&request["message"]),
            &message,
        )
        .await
    }
}

impl DiscordSurface {
    pub(super) fn render(&self, template: &str, data: Value) -> Result<Value, AppError> {
        let mut message = self
            .messages
            .render(template, data)
            .map_err(|e| AppError::Delivery(e.to_string()))?;
        fit(&mut message);
        Ok(message)
    }

    /// Posts a message that Discord creates once for its nonce: when a restart repeats a post
    /// whose answer was lost, Discord returns the message it already made.
    async fn post_message(
        &self,
        channel: &str,
        mut message: Value,
        nonce: &Nonce,
    ) -> Result<Value, DiscordApiError> {
        message["nonce"] = json!(nonce.0);
        message["enforce_nonce"] = json!(true);
        let path = format!("/channels/{channel}/messages");
        self.api.request(Method::POST, &path, Some(&message)).await
    }

    async fn edit_message(&self, channel: &str, id: &str, message: &Value) -> Result<(), AppError> {
        let path = format!("/channels/{channel}/messages/{id}");
        match self.api.request(Method::PATCH, &path, Some(message)).await {
            Ok(_) => Ok(()),
            Err(DiscordApiError::Refused { code, message, .. }) if MESSAGE_GONE.contains(&code) => {
                Err(AppError::MessageGone(format!("{message} (code {code})")))
            }
            Err(error) => Err(delivery(error)),
        }
    }

    async fn start_thread(
        &self,
        channel: &str,
        message: &str,
        run: &Run,
    ) -> Result<(), DiscordApiError> {
        let name: String = format!("{} · {}", run.action.title, run.id)
            .chars()
            .take(100)
            .collect();
        let path = format!("/channels/{channel}/messages/{message}/threads");
        let body = json!({"name": name, "auto_archive_duration": 1440});
        self.api
            .request(Method::POST, &path, Some(&body))
            .await
            .map(|_| ())
    }

    /// The card in a direct message with the requester, saying why it is there; returns where
    /// it went. The reference keeps the channel it could not reach, so updates still say why.
    async fn card_in_direct_message(&self, run: &Run, channel: &str) -> Result<Value, AppError> {
        let recipient = user_id(&run.created_by).ok_or_else(|| {
            AppError::Delivery(format!("portbot may not post in channel {channel}"))
        })?;
        let opened = self
            .api
            .request(
                Method::POST,
                "/users/@me/channels",
                Some(&json!({"recipient_id": recipient})),
            )
            .await
            .map_err(delivery)?;
        let direct = text(&opened["id"]).to_owned();
        let mut data = card_data_with_link(run);
        data["unreachable_channel"] = json!(channel);
        let card = self.render("run_card", data)?;
        let shows = card_shows(&card.to_string());
        let posted = self
            .post_message(&direct, card, &Nonce::of("card", run, &[]))
            .await
            .map_err(delivery)?;
        Ok(json!({
            "channel": direct,
            "card": posted["id"],
            "shows": shows,
            "unreachable_channel": channel,
        }))
    }
}

/// What names a message to Discord (at most 25 characters), the same in every process: the
/// kind of message, the run and, for a reply, the first and last event it shows.
struct Nonce(String);

impl Nonce {
    fn of(kind: &str, run: &Run, seqs: &[u64]) -> Nonce {
        let named = format!("{kind}/{}/{seqs:?}", run.id);
        Nonce(format!("{:016x}", ids::fnv1a(&named)))
    }
}

/// The card's data, with the run's link only when it is a plain web address (it lands in
/// markdown unescaped).
fn card_data_with_link(run: &Run) -> Value {
    let mut data = card_data(run, mention);
    data["link"] = json!(run.link.as_deref().and_then(safe_link));
    data
}

/// A web link that can stand in markdown's `[text](link)`, JSON-escaped, or nothing.
fn safe_link(link: &str) -> Option<String> {
    let url = url::Url::parse(link).ok()?;
    if !matches!(url.scheme(), "http" | "https") {
        return None;
    }
    let plain = url.as_str().replace('(', "%28").replace(')', "%29");
    let quoted = serde_json::to_string(&plain).ok()?;
    Some(quoted[1..quoted.len() - 1].to_owned())
}

/// Discord's refusals of an edit that no later try changes ([`AppError::MessageGone`]): unknown
/// channel, unknown message (deleted), a message of another author's.
const MESSAGE_GONE: [u64; 3] = [10003, 10008, 50005];

fn delivery(error: DiscordApiError) -> AppError {
    AppError::Delivery(error.to_string())
}

fn text(value: &Value) -> &str {
    value.as_str().unwrap_or_default()
}

/// A Discord user's id, for `discord:` identities.
fn user_id(who: &Identity) -> Option<&str> {
    who.as_str()
        .strip_prefix("discord:")
        .filter(|id| !id.is_empty() && id.chars().all(|c| c.is_ascii_digit()))
}

/// A Discord mention for Discord users (`<@123>`); anyone else by name, escaped.
pub(super) fn mention(who: &Identity) -> String {
    match user_id(who) {
        Some(id) => format!("<@{id}>"),
        None => discord_json_escape(who.as_str()),
    }
}
