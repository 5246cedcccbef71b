//! The Slack adapter: `POST /slack/commands` and `/slack/interactions` (CONTRACT §3–§5), and
//! Slack as a delivery surface for run cards, threads and approval requests (`surface`).
//!
//! It verifies Slack's signature, turns the form into a [`ChatCommand`], asks the shared chat
//! layer (`crate::chat`), and answers within Slack's 3 seconds with a message rendered from
//! `message-templates/slack/`. It knows Slack's shapes; the rules live in the core and the app.

mod interactions;
pub mod manifest;
mod messages;
mod modal;
mod signature;
pub mod socket;
pub mod surface;
mod web_api;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::app::{App, Received};
use crate::chat::messages::Messages;
use crate::chat::{self, Asker, ChatAnswer, FormState};
use crate::core::chat_command::ChatCommand;
use crate::core::ids::Identity;

pub use messages::load as load_messages;
pub use signature::{SignatureError, Verifier};
pub use surface::{SlackSurface, UpdateBudget};
pub use web_api::{SlackApi, SlackApiError};

/// The origin of runs requested in Slack.
pub const ORIGIN: &str = "SLACK";
/// Slack sends small forms; anything larger is not Slack.
const MAX_BODY: usize = 64 * 1024;
/// Actions listed in one message (Slack allows 50 blocks).
const MAX_LISTED: usize = 40;

#[derive(Clone)]
pub struct SlackState {
    pub app: App,
    pub verifier: Arc<Verifier>,
    pub messages: Arc<Messages>,
    pub api: SlackApi,
    /// The slash command, e.g. `/port`, for help texts.
    pub command: String,
    /// Past this, a command's answer follows at its `response_url`, and a click is answered
    /// while its decision goes on (`slack.defer_after_ms`).
    pub defer_after: Duration,
}

pub fn router(state: SlackState) -> Router {
    Router::new()
        .route("/slack/commands", post(commands))
        .route("/slack/interactions", post(interactions::interactions))
        .layer(DefaultBodyLimit::max(MAX_BODY))
        // Shared, so a request does not copy the state's strings and handles.
        .with_state(Arc::new(state))
}

/// A slash command's form fields (HTTP) or payload (Socket Mode) (PROTOCOL-NOTES §1); the ones portbot does not use are left out.
#[derive(Deserialize)]
pub(crate) struct SlashCommand {
    #[serde(default)]
    user_id: String,
    #[serde(default)]
    channel_id: String,
    #[serde(default)]
    trigger_id: String,
    #[serde(default)]
    text: String,
    /// Where an answer that comes late goes (Slack takes up to five there within 30 minutes).
    #[serde(default)]
    response_url: String,
    ssl_check: Option<String>,
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// Checks Slack's signature; a failure is logged (the request is then answered 401).
fn verify(state: &SlackState, headers: &HeaderMap, body: &[u8]) -> Result<(), SignatureError> {
    state
        .verifier
        .verify(
            header(headers, "x-slack-request-timestamp"),
            header(headers, "x-slack-signature"),
            body,
            chrono::Utc::now().timestamp(),
        )
        .inspect_err(|error| tracing::warn!(%error, "refused a Slack request"))
}

async fn commands(
    State(state): State<Arc<SlackState>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Err(error) = verify(&state, &headers, &body) {
        return (StatusCode::UNAUTHORIZED, error.to_string()).into_response();
    }
    let Ok(form) = serde_urlencoded::from_bytes::<SlashCommand>(&body) else {
        return (StatusCode::BAD_REQUEST, "not a slash command form").into_response();
    };
    command_reply(&state, form).await
}

/// The answer to a slash command within Slack's 3 seconds, however it arrived (HTTP or Socket
/// Mode): the answer itself when it is ready within `defer_after`; else a note that it follows,
/// and the answer goes to the command's `response_url` once ready. So a slow moment of the
/// store or of Slack never leaves a user with Slack's timeout error for a run that was made.
pub(crate) async fn command_reply(state: &Arc<SlackState>, mut form: SlashCommand) -> Response {
    if form.ssl_check.is_some() {
        return StatusCode::OK.into_response();
    }
    let Ok(who) = Identity::try_from(format!("slack:{}", form.user_id)) else {
        return (StatusCode::BAD_REQUEST, "no user_id").into_response();
    };
    let late_to = LateAnswer {
        response_url: std::mem::take(&mut form.response_url),
        channel: form.channel_id.clone(),
        user: form.user_id.clone(),
    };
    let typed = form.text.clone();
    let worker = state.clone();
    let work = async move {
        let reply = match ChatCommand::parse(&form.text) {
            Ok(command) => answer(&worker, &who, &form, command).await,
            Err(error) => Reply::Error(error.to_string()),
        };
        reply.body(&worker)
    };
    let late = state.clone();
    let answered = within(state.defer_after, work, |body| async move {
        if let Some(body) = body {
            late_to.send(&late, body).await;
        }
    });
    match answered.await {
        Some(body) => respond(body),
        None => {
            let working = json!({"command": state.command, "text": typed});
            respond(Reply::Message("working", working).body(state))
        }
    }
}

/// `work`'s result when it is ready within `limit` (0: never waited for). Else `None`, and
/// `work` goes on after the answer to Slack, its result handed to `late`.
async fn within<T, L>(
    limit: Duration,
    work: impl Future<Output = T> + Send + 'static,
    late: impl FnOnce(T) -> L + Send + 'static,
) -> Option<T>
where
    T: Send + 'static,
    L: Future<Output = ()> + Send,
{
    let mut work = Box::pin(work);
    if !limit.is_zero() {
        if let Ok(done) = tokio::time::timeout(limit, &mut work).await {
            return Some(done);
        }
    }
    tokio::spawn(async move { late(work.await).await });
    None
}

/// A command's answer as the HTTP response: its JSON, or an empty 200.
fn respond(body: Option<String>) -> Response {
    match body {
        Some(body) => (
            [(axum::http::header::CONTENT_TYPE, "application/json")],
            body,
        )
            .into_response(),
        None => StatusCode::OK.into_response(),
    }
}

/// Where a command's answer that was not ready in time goes: its `response_url`, or, should
/// that fail (expired, or Slack unreachable three times), privately to the user in the
/// command's channel through the Web API.
struct LateAnswer {
    response_url: String,
    channel: String,
    user: String,
}

impl LateAnswer {
    async fn send(self, state: &SlackState, body: String) {
        let error = match state.api.respond(&self.response_url, body.clone()).await {
            Ok(()) => {
                return tracing::info!("a Slack command's answer followed at its response_url")
            }
            Err(error) => error,
        };
        tracing::warn!(%error, "a Slack command's late answer failed at its response_url; sending it privately instead");
        let Ok(Value::Object(mut message)) = serde_json::from_str::<Value>(&body) else {
            return;
        };
        message.remove("response_type");
        message.insert("channel".into(), Value::from(self.channel));
        message.insert("user".into(), Value::from(self.user));
        if let Err(error) = state
            .api
            .call("chat.postEphemeral", &Value::Object(message))
            .await
        {
            tracing::warn!(%error, "a Slack command's late answer was not delivered");
        }
    }
}

/// What the command answers, before rendering.
enum Reply {
    Message(&'static str, Value),
    Error(String),
    /// An empty 200: Slack shows nothing (a modal opened instead).
    Nothing,
}

impl Reply {
    /// The message's JSON text; `None` for nothing.
    fn body(self, state: &SlackState) -> Option<String> {
        let (name, data) = match self {
            Reply::Message(name, data) => (name, data),
            Reply::Error(message) => ("error", json!({ "message": message })),
            Reply::Nothing => return None,
        };
        match state.messages.render_text(name, data) {
            Ok(body) => Some(body),
            Err(error) => {
                tracing::error!(%error, "a Slack message did not render");
                Some(json!({"response_type": "ephemeral", "text": "portbot could not render its answer; the operators have been told in the logs."}).to_string())
            }
        }
    }
}

async fn answer(
    state: &SlackState,
    who: &Identity,
    form: &SlashCommand,
    command: ChatCommand,
) -> Reply {
    // A command's `trigger_id` is unique to it: a copy of the command carries the same one.
    let delivery = format!("slack:{}", form.trigger_id);
    let asker = Asker {
        who,
        origin: ORIGIN,
        channel: &form.channel_id,
        command: &state.command,
        can_ask: !form.trigger_id.is_empty(),
        max_listed: MAX_LISTED,
        received: (!form.trigger_id.is_empty()).then_some(Received::Delivery(&delivery)),
    };
    match chat::answer(&state.app, &asker, command).await {
        ChatAnswer::Message(name, data) => Reply::Message(name, data),
        ChatAnswer::Refused(message) => Reply::Error(message),
        ChatAnswer::AskInputs(asked, problems) => {
            match open_form(state, &form.trigger_id, asked).await {
                Ok(()) => Reply::Nothing,
                Err(error) => Reply::Error(format!(
                    "The run was not created:\n{problems}\n(The form could not be opened: {error})"
                )),
            }
        }
    }
}

/// Keeps what the command said and opens the form for the missing inputs. The form is stored
/// first, so a submission always finds it; but `views.open` must come within 3 seconds of the
/// command, while its `trigger_id` is valid, so a store slower than `FORM_SAVE_HEAD_START`
/// (a disk stall) is not waited for before it.
async fn open_form(state: &SlackState, trigger_id: &str, asked: FormState) -> Result<(), String> {
    const FORM_SAVE_HEAD_START: std::time::Duration = std::time::Duration::from_millis(500);
    let app = &state.app;
    let key = chat::form::new_key();
    let mut data = asked.data(app, &key).map_err(|e| e.to_string())?;
    data["callback_id"] = json!(modal::CALLBACK_ID);
    let view = state
        .messages
        .render("input_modal", data)
        .map_err(|e| e.to_string())?;
    // Once polled, the write is with the store's writer; awaiting it later only hears back.
    let save = asked.save(app, &key);
    tokio::pin!(save);
    let saved_first = tokio::time::timeout(FORM_SAVE_HEAD_START, &mut save).await;
    let opened = tokio::time::timeout(
        std::time::Duration::from_millis(2500),
        state.api.call(
            "views.open",
            &json!({"trigger_id": trigger_id, "view": view}),
        ),
    )
    .await;
    let saved = match saved_first {
        Ok(saved) => saved,
        Err(_) => save.await,
    };
    let opened = match opened {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(error)) => Err(error.to_string()),
        Err(_) => Err("Slack did not answer in time".into()),
    };
    if opened.is_err() {
        // No one can submit a form that did not open.
        if let Err(error) = app.save_form(&key, None).await {
            tracing::warn!(%error, "could not drop a form that did not open");
        }
    }
    opened.and(saved.map_err(|e| e.to_string()))
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::edge_input;

    /// The fields of a slash command (a form over HTTP, JSON in Socket Mode).
    pub(super) const COMMAND_FIELDS: &[&str] = &[
        "user_id",
        "channel_id",
        "trigger_id",
        "text",
        "response_url",
        "ssl_check",
        "command",
        "token",
    ];
    pub(super) const WORDS: &[&str] = &["U1", "help", "list", "status r_1", "a b c", "k=v"];

    // What the handler reads from the form after this (the user's identity, the command text)
    // is tested where it is parsed: `core::chat_command`, and the live app's malformed-request
    // tests (`tests/slack.rs`).
    proptest! {
        #[test]
        fn slash_command_forms_never_panic(body in edge_input::form(COMMAND_FIELDS, edge_input::text().boxed())) {
            let _ = serde_urlencoded::from_bytes::<SlashCommand>(&body);
        }

        /// Socket Mode carries the same fields as JSON.
        #[test]
        fn slash_command_payloads_never_panic(payload in edge_input::json(COMMAND_FIELDS, WORDS)) {
            let _ = serde_json::from_value::<SlashCommand>(payload);
        }
    }
}
