//! The Slack adapter: `POST /slack/commands` and `/slack/interactions` (CONTRACT §3–§5), the
//! run card and its thread (`thread`), and approval requests (`approvals`).
//!
//! It verifies Slack's signature, turns the form into a [`ChatCommand`], asks the app, and
//! answers within Slack's 3 seconds with a message rendered from `message-templates/slack/`.
//! It knows Slack's shapes; the rules live in the core and the app.

pub mod approvals;
mod interactions;
pub mod manifest;
mod messages;
mod modal;
mod pace;
mod signature;
pub mod socket;
pub mod thread;
mod web_api;

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::api::run_json;
use crate::app::{App, AppError};
use crate::core::action::{Action, RawInputs, RequestError};
use crate::core::chat_command::ChatCommand;
use crate::core::ids::{Identity, RunId};
use crate::core::run::RunStatus;

pub use messages::{MessageError, Messages};
use modal::{modal_data, FormState};
pub use pace::Pace;
pub use signature::{SignatureError, Verifier};
pub use web_api::{SlackApi, SlackApiError};

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
}

pub fn router(state: SlackState) -> Router {
    Router::new()
        .route("/slack/commands", post(commands))
        .route("/slack/interactions", post(interactions::interactions))
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .with_state(state)
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

async fn commands(State(state): State<SlackState>, headers: HeaderMap, body: Bytes) -> Response {
    if let Err(error) = verify(&state, &headers, &body) {
        return (StatusCode::UNAUTHORIZED, error.to_string()).into_response();
    }
    let Ok(form) = serde_urlencoded::from_bytes::<SlashCommand>(&body) else {
        return (StatusCode::BAD_REQUEST, "not a slash command form").into_response();
    };
    command_reply(&state, form).await
}

/// The answer to a slash command, however it arrived (HTTP or Socket Mode).
async fn command_reply(state: &SlackState, form: SlashCommand) -> Response {
    if form.ssl_check.is_some() {
        return StatusCode::OK.into_response();
    }
    let Ok(who) = Identity::try_from(format!("slack:{}", form.user_id)) else {
        return (StatusCode::BAD_REQUEST, "no user_id").into_response();
    };
    let reply = match ChatCommand::parse(&form.text) {
        Ok(command) => answer(state, &who, &form, command).await,
        Err(error) => Reply::Error(error.to_string()),
    };
    reply.render(state)
}

/// What the command answers, before rendering.
enum Reply {
    Message(&'static str, Value),
    Error(String),
    /// An empty 200: Slack shows nothing (a modal opened instead).
    Nothing,
}

impl Reply {
    fn render(self, state: &SlackState) -> Response {
        let (name, data) = match self {
            Reply::Message(name, data) => (name, data),
            Reply::Error(message) => ("error", json!({ "message": message })),
            Reply::Nothing => return StatusCode::OK.into_response(),
        };
        match state.messages.render(name, &data) {
            Ok(body) => Json(body).into_response(),
            Err(error) => {
                tracing::error!(%error, "a Slack message did not render");
                Json(json!({"response_type": "ephemeral", "text": "portbot could not render its answer; the operators have been told in the logs."}))
                    .into_response()
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
    let channel = form.channel_id.as_str();
    let app = &state.app;
    match command {
        ChatCommand::Help => Reply::Message("help", listing(state, who, None)),
        ChatCommand::List { entity } => {
            let data = listing(state, who, entity.as_deref());
            Reply::Message("list", data)
        }
        ChatCommand::Status { run } => match RunId::try_from(run.clone()).map(|id| app.run(&id)) {
            Ok(Ok(run)) => Reply::Message("status", json!({ "run": run_json(&run) })),
            _ => Reply::Error(format!("there is no run `{run}`")),
        },
        ChatCommand::Run {
            action,
            entity,
            inputs,
        } => {
            let given = inputs.clone();
            let created = app
                .request_run(
                    who,
                    &action,
                    entity.as_deref(),
                    RawInputs::Text(inputs),
                    "SLACK",
                    Some(channel).filter(|c| !c.is_empty()),
                )
                .await;
            match created {
                Ok(run) => Reply::Message(
                    "run_created",
                    // Only what the answer shows: it is rendered on the ack's path.
                    json!({
                        "run": {
                            "id": run.id,
                            "status": run.status,
                            "action": {"title": run.action.title},
                            "entity": run.entity.as_ref().map(|e| json!({"identifier": e.identifier})),
                        },
                        "waiting": run.status == RunStatus::WaitingForApproval,
                        "command": state.command,
                    }),
                ),
                Err(AppError::Request(RequestError::Inputs(problems)))
                    if problems.invalid.is_empty() && !form.trigger_id.is_empty() =>
                {
                    let asked = FormState {
                        user: form.user_id.clone(),
                        channel: channel.to_owned(),
                        action,
                        entity,
                        given,
                    };
                    match open_form(state, &form.trigger_id, asked, &problems.missing).await {
                        Ok(()) => Reply::Nothing,
                        Err(error) => Reply::Error(format!("The run was not created:\n{problems}\n(The form could not be opened: {error})")),
                    }
                }
                Err(AppError::Request(RequestError::Inputs(problems))) => {
                    Reply::Error(format!("The run was not created:\n{problems}"))
                }
                Err(error @ (AppError::Request(_) | AppError::Run(_) | AppError::Catalog(_))) => {
                    Reply::Error(error.to_string())
                }
                Err(error) => {
                    tracing::error!(%error, "a Slack command failed");
                    Reply::Error("portbot could not record the run; please try again.".into())
                }
            }
        }
    }
}

/// Keeps what the command said and opens the form for the missing inputs (`views.open` must
/// come within 3 seconds of the command, while its `trigger_id` is valid).
async fn open_form(
    state: &SlackState,
    trigger_id: &str,
    asked: FormState,
    missing: &[String],
) -> Result<(), String> {
    let app = &state.app;
    let action = app.action(&asked.action).map_err(|e| e.to_string())?;
    let current = asked
        .entity
        .as_deref()
        .and_then(|id| crate::core::ids::EntityId::try_from(id).ok())
        .and_then(|id| {
            app.catalog()
                .entity(&action.blueprint, &id)
                .map(|e| e.properties.clone())
        })
        .unwrap_or_default();
    let key = hex::encode(rand::random::<[u8; 16]>());
    let view = state
        .messages
        .render(
            "input_modal",
            &modal_data(action, missing, &current, &key, asked.entity.as_deref()),
        )
        .map_err(|e| e.to_string())?;
    let saved = serde_json::to_value(&asked).expect("form state serialises");
    app.save_form(&key, Some(&saved))
        .await
        .map_err(|e| e.to_string())?;
    let opened = tokio::time::timeout(
        std::time::Duration::from_millis(2500),
        state.api.call(
            "views.open",
            &json!({"trigger_id": trigger_id, "view": view}),
        ),
    )
    .await;
    match opened {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(error)) => Err(error.to_string()),
        Err(_) => Err("Slack did not answer in time".into()),
    }
}

/// The actions `who` may run, optionally only those on `entity`'s blueprint.
fn listing(state: &SlackState, who: &Identity, entity: Option<&str>) -> Value {
    let app = &state.app;
    let on_entity = |action: &Action| match entity {
        None => true,
        Some(id) => {
            let catalog = app.catalog();
            action.operation.needs_entity()
                && catalog
                    .entities_of(&action.blueprint)
                    .any(|e| e.identifier.as_str() == id)
        }
    };
    let allowed: Vec<Value> = app
        .actions()
        .filter(|a| a.permissions.may_execute(who, app.directory()) && on_entity(a))
        .map(|a| {
            json!({
                "identifier": a.identifier,
                "title": a.title,
                "description": a.description,
                "operation": a.operation.as_str(),
                "blueprint": a.blueprint,
            })
        })
        .collect();
    let more = allowed.len().saturating_sub(MAX_LISTED);
    json!({
        "command": state.command,
        "entity": entity,
        "actions": allowed.into_iter().take(MAX_LISTED).collect::<Vec<_>>(),
        "more": more,
    })
}
