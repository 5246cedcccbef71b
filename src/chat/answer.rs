//! What a `/port ...` command answers, the same on every platform (CONTRACT §3): the platform
//! parses its request into a [`ChatCommand`], this decides, and the platform renders the
//! [`ChatAnswer`] in its own idiom.

use serde_json::{json, Value};

use super::form::FormState;
use super::view::created_data;
use crate::api::run_json;
use crate::app::{App, AppError, Received, RunRequest};
use crate::core::action::{Action, InputProblems, RawInputs, RequestError};
use crate::core::chat_command::ChatCommand;
use crate::core::ids::{Identity, RunId};

/// Who asked, where, and what their platform can show.
pub struct Asker<'a> {
    pub who: &'a Identity,
    /// The run origin of the platform (`"SLACK"`, `"DISCORD"`).
    pub origin: &'static str,
    pub channel: &'a str,
    /// The command as users type it (`/port`), for help texts.
    pub command: &'a str,
    /// Whether a form can be opened for missing inputs now.
    pub can_ask: bool,
    /// Actions listed at most in one answer.
    pub max_listed: usize,
    /// The delivery the command came in as (its platform's id for it), so that a copy of it
    /// makes no second run.
    pub received: Option<Received<'a>>,
}

/// A command's answer, before a platform renders it.
pub enum ChatAnswer {
    /// A template's name and data (`help`, `list`, `status`, `run_created`).
    Message(&'static str, Value),
    /// Required inputs are missing and none is invalid: ask for them in a form (the problems
    /// are the answer when no form can be shown).
    AskInputs(FormState, InputProblems),
    /// Refused or failed; the text says why, naming the input and the rule.
    Refused(String),
}

pub async fn answer(app: &App, asker: &Asker<'_>, command: ChatCommand) -> ChatAnswer {
    match command {
        ChatCommand::Help => ChatAnswer::Message("help", listing(app, asker, None)),
        ChatCommand::List { entity } => {
            ChatAnswer::Message("list", listing(app, asker, entity.as_deref()))
        }
        ChatCommand::Status { run } => match RunId::try_from(run.clone()).map(|id| app.run(&id)) {
            Ok(Ok(run)) => ChatAnswer::Message("status", json!({ "run": run_json(&run) })),
            _ => ChatAnswer::Refused(format!("there is no run `{run}`")),
        },
        ChatCommand::Run {
            action,
            entity,
            inputs,
        } => {
            let given = inputs.clone();
            let created = app
                .request_run(RunRequest {
                    who: asker.who,
                    action: &action,
                    entity: entity.as_deref(),
                    inputs: RawInputs::Text(inputs),
                    origin: asker.origin,
                    channel: Some(asker.channel).filter(|c| !c.is_empty()),
                    received: asker.received,
                })
                .await;
            match created {
                Ok(run) => ChatAnswer::Message("run_created", created_data(&run, asker.command)),
                Err(AppError::Request(RequestError::Inputs(problems)))
                    if problems.invalid.is_empty() && asker.can_ask =>
                {
                    let form = FormState {
                        user: asker.who.clone(),
                        origin: asker.origin.to_owned(),
                        channel: asker.channel.to_owned(),
                        action,
                        entity,
                        given,
                        missing: problems.missing.clone(),
                    };
                    ChatAnswer::AskInputs(form, problems)
                }
                Err(error) => refusal(error),
            }
        }
    }
}

/// A refused or failed request, in words for the user; a failure of portbot itself is logged
/// and not shown in detail.
pub fn refusal(error: AppError) -> ChatAnswer {
    match error {
        AppError::Request(RequestError::Inputs(problems)) => {
            ChatAnswer::Refused(format!("The run was not created:\n{problems}"))
        }
        error @ (AppError::Request(_)
        | AppError::Run(_)
        | AppError::Catalog(_)
        | AppError::Repeated(_)) => ChatAnswer::Refused(error.to_string()),
        error => {
            tracing::error!(%error, "a chat command failed");
            ChatAnswer::Refused("portbot could not record the run; please try again.".into())
        }
    }
}

/// The actions the asker may run, optionally only those on `entity`'s blueprint.
fn listing(app: &App, asker: &Asker<'_>, entity: Option<&str>) -> Value {
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
        .filter(|a| a.permissions.may_execute(asker.who, app.directory()) && on_entity(a))
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
    let more = allowed.len().saturating_sub(asker.max_listed);
    json!({
        "command": asker.command,
        "entity": entity,
        "actions": allowed.into_iter().take(asker.max_listed).collect::<Vec<_>>(),
        "more": more,
    })
}
