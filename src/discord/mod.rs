//! The Discord adapter: `POST /discord/interactions` (CONTRACT §3–§5), the `/port` application
//! command and its registration (`register`), and Discord as a delivery surface for run cards,
//! threads and approval requests (`surface`).
//!
//! It verifies Discord's Ed25519 signature (serenity's verifier) and the request's age, parses
//! the interaction at the edge (`interaction`), asks the shared chat layer (`crate::chat`), and
//! answers within Discord's 3 seconds: at once when it can, else with a deferred response that
//! is edited when the answer is ready. A repeated interaction (same id) gets the first one's
//! answer and changes nothing. Refusals are ephemeral and name the input and the rule.

pub mod gateway;
mod interaction;
mod messages;
pub mod register;
mod rest;
pub mod surface;

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use reqwest::Method;
use serde_json::{json, Value};
use serenity::interactions_endpoint::Verifier;
use tokio::sync::OnceCell;
use tokio::time::Instant;

use crate::app::{App, Received};
use crate::chat::form::{self, Submitted};
use crate::chat::messages::Messages;
use crate::chat::view::{card_data, created_data};
use crate::chat::{self, Asker, ChatAnswer};
use crate::core::ids::{Identity, RunId};
use crate::core::run::Decision;
use interaction::{CommandOptions, Interaction, Invocation};
use surface::mention;

pub use messages::load as load_messages;
pub use rest::{DiscordApi, DiscordApiError};
pub use surface::DiscordSurface;

/// The origin of runs requested in Discord.
pub const ORIGIN: &str = "DISCORD";

/// Discord's interactions are small; anything larger is not Discord.
const MAX_BODY: usize = 64 * 1024;
/// Requests older (or newer) than this are refused as replays.
const MAX_AGE_SECONDS: i64 = 300;
/// An interaction's token lives 15 minutes; its answer is kept as long for repeats, for at
/// most this many interactions (the oldest are forgotten first), so memory stays bounded.
const REMEMBERED: Duration = Duration::from_secs(15 * 60);
const REMEMBERED_AT_MOST: usize = 50_000;
/// Text inputs in one Discord modal.
const MODAL_INPUTS: usize = 5;
/// Choices in one autocomplete answer, and actions listed in one message.
const CHOICES: usize = 25;

/// Interaction response types (PROTOCOL-NOTES Discord §4).
const PONG: u8 = 1;
const MESSAGE: u8 = 4;
const DEFERRED_MESSAGE: u8 = 5;
const DEFERRED_UPDATE: u8 = 6;
const AUTOCOMPLETE_RESULT: u8 = 8;
const MODAL: u8 = 9;
/// The message flag that shows a message only to the one who asked.
const EPHEMERAL: u64 = 64;

#[derive(Clone)]
pub struct DiscordState {
    pub app: App,
    /// The application's public key; without it (gateway only) there is no HTTP endpoint.
    pub verifier: Option<Arc<Verifier>>,
    pub messages: Arc<Messages>,
    pub api: DiscordApi,
    pub application_id: String,
    /// The application command's name (`port`), for help texts.
    pub command: String,
    pub answered: Arc<Answered>,
    /// When the process started (Unix seconds). [`Answered`] is in memory, so an interaction
    /// signed earlier is refused: the process before may have taken it (Discord does not send
    /// one again, so only a replay, or one caught in transit by the restart, is refused).
    pub started: i64,
    /// Discord waits 3 seconds for the first response; past this portbot defers.
    pub answer_within: Duration,
}

pub fn router(state: DiscordState) -> Router {
    Router::new()
        .route("/discord/interactions", post(interactions))
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .with_state(state)
}

/// The answers of recent interactions by id, so a repeat gets the same answer and does nothing.
#[derive(Default)]
pub struct Answered {
    recent: Mutex<Recent>,
}

#[derive(Default)]
struct Recent {
    /// Each answer as the JSON it was sent as, so a repeat costs no second rendering.
    cells: HashMap<String, Arc<OnceCell<Bytes>>>,
    /// Ids by arrival, to forget them when their token has expired.
    order: VecDeque<(Instant, String)>,
}

impl Answered {
    /// The answer cell of an interaction, new or the one of its first delivery.
    fn cell(&self, id: &str) -> Arc<OnceCell<Bytes>> {
        let mut recent = self.recent.lock().expect("answer cache poisoned");
        let Recent { cells, order } = &mut *recent;
        let now = Instant::now();
        while let Some((at, old)) = order.front() {
            if now.duration_since(*at) < REMEMBERED && order.len() < REMEMBERED_AT_MOST {
                break;
            }
            cells.remove(old);
            order.pop_front();
        }
        cells
            .entry(id.to_owned())
            .or_insert_with(|| {
                order.push_back((now, id.to_owned()));
                Arc::default()
            })
            .clone()
    }
}

async fn interactions(
    State(state): State<DiscordState>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Err(why) = verify(&state, &headers, &body) {
        tracing::warn!(%why, "refused a Discord request");
        return (StatusCode::UNAUTHORIZED, why).into_response();
    }
    let interaction = match Interaction::parse(&body) {
        Ok(interaction) => interaction,
        Err(error) => return (StatusCode::BAD_REQUEST, error.to_string()).into_response(),
    };
    let answer = respond(&state, interaction).await;
    ([(header::CONTENT_TYPE, "application/json")], answer).into_response()
}

/// The first response to an interaction, however it arrived (HTTP or the gateway), as JSON:
/// the answer when it is ready within `answer_within` (Discord waits 3 seconds), else a
/// deferral, and the answer follows when it is ready.
async fn respond(state: &DiscordState, interaction: Interaction) -> Bytes {
    let (id, token, deferral) = match &interaction {
        Interaction::Ping => return encode(&json!({"type": PONG})),
        // Suggestions change nothing and must come at once.
        Interaction::Autocomplete(asked) => return encode(&autocomplete(state, asked)),
        Interaction::Other => return encode(&json!({"type": DEFERRED_UPDATE})),
        Interaction::Command(asked) => (asked.id.clone(), asked.token.clone(), DEFERRED_MESSAGE),
        Interaction::ModalSubmit(asked) => {
            (asked.id.clone(), asked.token.clone(), DEFERRED_MESSAGE)
        }
        Interaction::Button(asked) => (asked.id.clone(), asked.token.clone(), DEFERRED_UPDATE),
    };
    // A repeat shares the first delivery's answer.
    let cell = state.answered.cell(&id);
    let worker = state.clone();
    let mut work = Box::pin(async move {
        cell.get_or_init(|| async { encode(&answer(&worker, interaction).await) })
            .await
            .clone()
    });
    // With no time to wait, the answer always comes as a follow-up.
    let ready = match state.answer_within.is_zero() {
        true => None,
        false => tokio::select! {
            biased;
            answer = &mut work => Some(answer),
            _ = tokio::time::sleep(state.answer_within) => None,
        },
    };
    match ready {
        Some(answer) => answer,
        None => {
            // The work goes on after the deferral, and its answer follows.
            let state = state.clone();
            tokio::spawn(async move {
                let answer = work.await;
                follow_up(&state, &token, deferral, &answer).await;
            });
            encode(&json!({"type": deferral, "data": {"flags": EPHEMERAL}}))
        }
    }
}

fn encode(answer: &Value) -> Bytes {
    Bytes::from(serde_json::to_vec(answer).expect("JSON values serialise"))
}

/// Checks the Ed25519 signature over timestamp and body, and that the request is recent.
fn verify(state: &DiscordState, headers: &HeaderMap, body: &[u8]) -> Result<(), &'static str> {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let (Some(signature), Some(timestamp)) = (
        header("x-signature-ed25519"),
        header("x-signature-timestamp"),
    ) else {
        return Err("the request is not signed");
    };
    let at: i64 = timestamp.parse().map_err(|_| "bad timestamp")?;
    if chrono::Utc::now().timestamp().abs_diff(at) > MAX_AGE_SECONDS.unsigned_abs() {
        return Err("the request is too old (or from the future)");
    }
    state
        .verifier
        .as_ref()
        .ok_or("no public key is configured")?
        .verify(signature, timestamp, body)
        .map_err(|()| "bad signature")?;
    if at < state.started {
        return Err(
            "the request was signed before portbot started; it may have been received before",
        );
    }
    Ok(())
}

/// The answer to a command, a button or a form, as Discord's interaction response.
async fn answer(state: &DiscordState, interaction: Interaction) -> Value {
    match interaction {
        Interaction::Command(asked) => command(state, &asked).await,
        Interaction::Button(asked) => button(state, &asked).await,
        Interaction::ModalSubmit(asked) => modal_submit(state, &asked).await,
        Interaction::Ping | Interaction::Autocomplete(_) | Interaction::Other => {
            json!({"type": DEFERRED_UPDATE})
        }
    }
}

async fn command(state: &DiscordState, asked: &Invocation<CommandOptions>) -> Value {
    let who = Identity::discord(&asked.user_id);
    let command = match asked.data.command() {
        Ok(command) => command,
        Err(error) => return state.refusal(error.to_string()),
    };
    let delivery = format!("discord:{}", asked.id);
    let asker = Asker {
        who: &who,
        origin: ORIGIN,
        channel: &asked.channel_id,
        command: &state.command,
        can_ask: true,
        max_listed: CHOICES,
        received: Some(Received::Delivery(&delivery)),
    };
    match chat::answer(&state.app, &asker, command).await {
        ChatAnswer::Message(name, data) => state.message(name, data),
        ChatAnswer::Refused(message) => state.refusal(message),
        ChatAnswer::AskInputs(asked, problems) if asked.missing.len() > MODAL_INPUTS => {
            let example: Vec<String> = asked.missing.iter().map(|m| format!("{m}=…")).collect();
            state.refusal(format!(
                "The run was not created:\n{problems}\nThat is more than a Discord form holds ({MODAL_INPUTS}); give them in `inputs`: {}",
                example.join(" ")
            ))
        }
        ChatAnswer::AskInputs(asked, problems) => match asked.open(&state.app).await {
            Ok(form) => state.modal("input_modal", form),
            Err(error) => state.refusal(format!(
                "The run was not created:\n{problems}\n(The form could not be opened: {error})"
            )),
        },
    }
}

/// `Approve` and `Decline` (custom ids `approve:RUN` / `decline:RUN`). Whoever may not decide
/// is told why, privately; a permitted decliner is asked for a reason first.
async fn button(state: &DiscordState, asked: &Invocation<String>) -> Value {
    let Some((decision, run)) = asked.data.split_once(':') else {
        return json!({"type": DEFERRED_UPDATE});
    };
    let Ok(run) = RunId::try_from(run.to_owned()) else {
        return state.refusal(format!("there is no run `{run}`"));
    };
    let who = Identity::discord(&asked.user_id);
    let app = &state.app;
    match decision {
        "approve" => match app.decide(&who, &run, Decision::Approve, None).await {
            // The request message is edited by the approvals delivery once the decision is stored.
            Ok(_) => json!({"type": DEFERRED_UPDATE}),
            Err(error) => state.refusal(error.to_string()),
        },
        "decline" => match app.may_decide(&who, &run).and_then(|()| app.run(&run)) {
            Ok(run) => state.modal("decline_modal", card_data(&run, mention)),
            Err(error) => state.refusal(error.to_string()),
        },
        _ => json!({"type": DEFERRED_UPDATE}),
    }
}

/// A submitted form for missing inputs (`inputs:KEY`) or a decline reason (`reason:RUN`).
async fn modal_submit(
    state: &DiscordState,
    asked: &Invocation<(String, Vec<(String, String)>)>,
) -> Value {
    let (custom_id, values) = &asked.data;
    let who = Identity::discord(&asked.user_id);
    match custom_id.split_once(':') {
        Some(("inputs", key)) => match form::submit(&state.app, key, &who, values.clone()).await {
            Submitted::Created(run) => {
                state.message("run_created", created_data(&run, &state.command))
            }
            Submitted::Expired => {
                state.refusal("This form has expired; run the command again.".into())
            }
            Submitted::Problems(problems) => {
                let lines: Vec<String> = problems.into_iter().map(|(_, m)| m).collect();
                state.refusal(format!(
                    "The run was not created:\n{}\nRun the command again with these fixed.",
                    lines.join("\n")
                ))
            }
            Submitted::Refused(message) => state.refusal(message),
        },
        Some(("reason", run)) => {
            let Ok(run) = RunId::try_from(run.to_owned()) else {
                return state.refusal(format!("there is no run `{run}`"));
            };
            let reason = values
                .iter()
                .find(|(id, _)| id == "reason")
                .map(|(_, text)| text.trim().to_owned())
                .filter(|text| !text.is_empty());
            match state
                .app
                .decide(&who, &run, Decision::Decline, reason)
                .await
            {
                Ok(_) => json!({"type": DEFERRED_UPDATE}),
                Err(error) => state.refusal(error.to_string()),
            }
        }
        _ => json!({"type": DEFERRED_UPDATE}),
    }
}

/// Suggestions for the option being typed: actions the user may run, or entities of the
/// chosen action's blueprint, whose identifier or title contains what was typed.
fn autocomplete(state: &DiscordState, asked: &Invocation<CommandOptions>) -> Value {
    let app = &state.app;
    let who = Identity::discord(&asked.user_id);
    let options = &asked.data;
    let choice = |identifier: &str, title: &str| {
        let name: String = format!("{title} ({identifier})")
            .chars()
            .take(100)
            .collect();
        json!({"name": name, "value": identifier})
    };
    let matches = |typed: &Option<String>, identifier: &str, title: &str| {
        let typed = typed.as_deref().unwrap_or_default().to_lowercase();
        identifier.to_lowercase().contains(&typed) || title.to_lowercase().contains(&typed)
    };
    let choices: Vec<Value> = match options.focused.as_deref() {
        Some("action") => app
            .actions()
            .filter(|a| a.permissions.may_execute(&who, app.directory()))
            .filter(|a| matches(&options.action, a.identifier.as_str(), &a.title))
            .take(CHOICES)
            .map(|a| choice(a.identifier.as_str(), &a.title))
            .collect(),
        Some("entity") => match options.action.as_deref().map(|a| app.action(a)) {
            Some(Ok(action)) => app
                .catalog()
                .entities_of(&action.blueprint)
                .filter(|e| {
                    let title = e.title.as_deref().unwrap_or_default();
                    matches(&options.entity, e.identifier.as_str(), title)
                })
                .take(CHOICES)
                .map(|e| {
                    choice(
                        e.identifier.as_str(),
                        e.title.as_deref().unwrap_or_default(),
                    )
                })
                .collect(),
            _ => Vec::new(),
        },
        _ => Vec::new(),
    };
    json!({"type": AUTOCOMPLETE_RESULT, "data": {"choices": choices}})
}

/// Finishes a deferred interaction: the answer replaces the "thinking…" response (or, after a
/// deferred click, comes as a private follow-up).
async fn follow_up(state: &DiscordState, token: &str, deferral: u8, answer: &[u8]) {
    let answer: Value = serde_json::from_slice(answer).unwrap_or_default();
    let data = match answer["type"].as_u64() {
        Some(t) if t == u64::from(MESSAGE) => answer["data"].clone(),
        Some(t) if t == u64::from(MODAL) => state.refusal(
            "portbot took too long to open the form; please run the command again.".into(),
        )["data"]
            .clone(),
        _ => return,
    };
    let app_id = &state.application_id;
    let (method, path) = match deferral {
        DEFERRED_MESSAGE => (
            Method::PATCH,
            format!("/webhooks/{app_id}/{token}/messages/@original"),
        ),
        _ => (Method::POST, format!("/webhooks/{app_id}/{token}")),
    };
    if let Err(error) = state.api.request(method, &path, Some(&data)).await {
        tracing::warn!(%error, "a deferred Discord answer was not delivered");
    }
}

impl DiscordState {
    /// A private message rendered from a template.
    fn message(&self, template: &str, data: Value) -> Value {
        match self.messages.render(template, data) {
            Ok(mut message) => {
                messages::fit(&mut message);
                message["flags"] = json!(EPHEMERAL);
                // Moved in: `json!` would copy the message through its serializer.
                let mut answer = json!({ "type": MESSAGE });
                answer["data"] = message;
                answer
            }
            Err(error) => {
                tracing::error!(%error, "a Discord message did not render");
                json!({"type": MESSAGE, "data": {"content": "portbot could not render its answer; the operators have been told in the logs.", "flags": EPHEMERAL, "allowed_mentions": {"parse": []}}})
            }
        }
    }

    /// A private refusal that says why.
    fn refusal(&self, message: String) -> Value {
        self.message("error", json!({ "message": message }))
    }

    /// A modal rendered from a template, fitted to Discord's limits.
    fn modal(&self, template: &str, data: Value) -> Value {
        match self.messages.render(template, data) {
            Ok(mut modal) => {
                messages::fit_modal(&mut modal);
                let mut answer = json!({ "type": MODAL });
                answer["data"] = modal;
                answer
            }
            Err(error) => self.refusal(format!("the form could not be shown: {error}")),
        }
    }
}
