//! `POST /slack/interactions`: the `Approve` and `Decline` buttons of approval requests.
//!
//! The click is decided under the same rules as everywhere (the app's `decide`), and Slack gets
//! its 200 once the decision is stored, or after `slack.defer_after_ms` while it goes on.
//! `Decline` first asks a permitted decliner for an optional reason (a modal); the decline is
//! made when it is submitted. Whoever may not decide gets an ephemeral refusal
//! (`chat.postEphemeral`, sent after the ack so a slow Slack never delays it); the request
//! message itself is updated by the approvals consumer once the decision is stored.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Map, Value};

use super::modal::{submitted_values, CALLBACK_ID};
use super::surface::mention;
use super::SlackState;
use crate::app::AppError;
use crate::chat::form::{self, Submitted};
use crate::chat::view::card_data;
use crate::core::ids::{Identity, RunId};
use crate::core::run::Decision;

/// The action ids of the buttons in `approval_request.hbs`.
const APPROVE: &str = "approve";
const DECLINE: &str = "decline";
/// The `callback_id` of the reason form a decliner gets.
const DECLINE_CALLBACK_ID: &str = "portbot_decline";

#[derive(Deserialize)]
struct Form {
    payload: String,
}

/// The parts of a `block_actions` payload portbot reads (PROTOCOL-NOTES §4).
#[derive(Deserialize)]
struct BlockActions {
    #[serde(rename = "type")]
    kind: String,
    user: User,
    channel: Option<Channel>,
    #[serde(default)]
    trigger_id: String,
    #[serde(default)]
    actions: Vec<ButtonAction>,
}

#[derive(Deserialize)]
struct User {
    id: String,
}

#[derive(Deserialize)]
struct Channel {
    id: String,
}

#[derive(Deserialize)]
struct ButtonAction {
    action_id: String,
    #[serde(default)]
    value: String,
}

pub(super) async fn interactions(
    State(state): State<Arc<SlackState>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Err(error) = super::verify(&state, &headers, &body) {
        return (StatusCode::UNAUTHORIZED, error.to_string()).into_response();
    }
    let payload = serde_urlencoded::from_bytes::<Form>(&body)
        .ok()
        .and_then(|form| serde_json::from_str::<Value>(&form.payload).ok());
    let Some(payload) = payload else {
        return (StatusCode::BAD_REQUEST, "not an interaction payload").into_response();
    };
    interaction_reply(&state, payload).await
}

/// The answer to an interaction payload, however it arrived (HTTP or Socket Mode).
pub(super) async fn interaction_reply(state: &Arc<SlackState>, payload: Value) -> Response {
    if payload["type"] == "view_submission" {
        let callback = &payload["view"]["callback_id"];
        if callback == CALLBACK_ID {
            return submit_form(state, &payload).await;
        }
        if callback == DECLINE_CALLBACK_ID {
            return submit_decline(state, &payload).await;
        }
    }
    let Ok(payload) = serde_json::from_value::<BlockActions>(payload) else {
        // Interactions portbot does not use are acknowledged and ignored.
        return StatusCode::OK.into_response();
    };
    // Other interactions (and buttons of other apps' messages) are acknowledged and ignored.
    let Some(action) = payload
        .actions
        .first()
        .filter(|_| payload.kind == "block_actions")
    else {
        return StatusCode::OK.into_response();
    };
    let decision = match action.action_id.as_str() {
        APPROVE => Decision::Approve,
        DECLINE => Decision::Decline,
        _ => return StatusCode::OK.into_response(),
    };
    let (Ok(who), Ok(run)) = (
        Identity::try_from(format!("slack:{}", payload.user.id)),
        RunId::try_from(action.value.clone()),
    ) else {
        return (StatusCode::BAD_REQUEST, "unknown user or run").into_response();
    };
    // The click answers nothing but its 200; what is not done by `defer_after` goes on after it.
    let worker = state.clone();
    let work = async move { click(&worker, &who, &run, decision, payload).await };
    super::within(state.defer_after, work, |()| async {}).await;
    StatusCode::OK.into_response()
}

/// Decides a click on `Approve` or `Decline`; whoever may not is told why.
async fn click(
    state: &SlackState,
    who: &Identity,
    run: &RunId,
    decision: Decision,
    payload: BlockActions,
) {
    let channel = payload.channel.map(|c| c.id).unwrap_or_default();
    let tell = |error: AppError| refuse(state, &channel, &payload.user.id, error.to_string());
    if decision == Decision::Decline {
        // A permitted decliner is asked for a reason first; the decline happens on submit.
        match state.app.may_decide(who, run) {
            Err(error) => tell(error),
            Ok(()) => match open_decline_form(state, &payload.trigger_id, run).await {
                Ok(()) => {}
                Err(why) => {
                    tracing::warn!(%why, "no reason form; declining without a reason");
                    if let Err(error) = state.app.decide(who, run, decision, None).await {
                        tell(error);
                    }
                }
            },
        }
    } else if let Err(error) = state.app.decide(who, run, decision, None).await {
        tell(error);
    }
}

/// Tells a Slack user, privately, why their click did nothing; sent after the ack.
fn refuse(state: &SlackState, channel: &str, user: &str, text: String) {
    if channel.is_empty() {
        return;
    }
    let refusal = json!({"channel": channel, "user": user, "text": text});
    let api = state.api.clone();
    tokio::spawn(async move {
        if let Err(error) = api.call("chat.postEphemeral", &refusal).await {
            tracing::warn!(%error, "could not tell a Slack user why their click was refused");
        }
    });
}

/// The form that asks a decliner for a reason.
async fn open_decline_form(
    state: &SlackState,
    trigger_id: &str,
    run: &RunId,
) -> Result<(), String> {
    let run = state.app.run(run).map_err(|e| e.to_string())?;
    let mut data = card_data(&run, mention);
    data["callback_id"] = json!(DECLINE_CALLBACK_ID);
    let view = state
        .messages
        .render("decline_modal", data)
        .map_err(|e| e.to_string())?;
    state
        .api
        .call(
            "views.open",
            &json!({"trigger_id": trigger_id, "view": view}),
        )
        .await
        .map(|_| ())
        .map_err(|e| e.to_string())
}

/// A submitted reason form: the decline, with the reason as its description.
async fn submit_decline(state: &SlackState, payload: &Value) -> Response {
    let view = &payload["view"];
    let reason = view["state"]["values"]["reason"]["value"]["value"]
        .as_str()
        .map(str::trim)
        .filter(|r| !r.is_empty())
        .map(str::to_owned);
    let who = Identity::try_from(format!(
        "slack:{}",
        payload["user"]["id"].as_str().unwrap_or_default()
    ));
    let run = RunId::try_from(
        view["private_metadata"]
            .as_str()
            .unwrap_or_default()
            .to_owned(),
    );
    let (Ok(who), Ok(run)) = (who, run) else {
        return StatusCode::BAD_REQUEST.into_response();
    };
    match state
        .app
        .decide(&who, &run, Decision::Decline, reason)
        .await
    {
        Ok(_) => StatusCode::OK.into_response(),
        Err(error) => {
            Json(json!({"response_action": "errors", "errors": {"reason": error.to_string()}}))
                .into_response()
        }
    }
}

/// A submitted form for missing inputs (see `chat::form::submit`). Problems come back under
/// the field they concern, so the user fixes them in place; Slack shows errors only under
/// fields of the form, so the others go under the first one.
async fn submit_form(state: &SlackState, payload: &Value) -> Response {
    let view = &payload["view"];
    let submitted = submitted_values(&view["state"]);
    let first_field = submitted
        .first()
        .map(|(name, _)| name.clone())
        .unwrap_or_default();
    let fields: Vec<String> = submitted.iter().map(|(name, _)| name.clone()).collect();
    let Ok(who) = Identity::try_from(format!(
        "slack:{}",
        payload["user"]["id"].as_str().unwrap_or_default()
    )) else {
        return StatusCode::BAD_REQUEST.into_response();
    };
    let key = view["private_metadata"].as_str().unwrap_or_default();
    let problems = match form::submit(&state.app, key, &who, submitted).await {
        Submitted::Created(_) => return StatusCode::OK.into_response(),
        Submitted::Expired => vec![(
            first_field.clone(),
            "This form has expired; run the command again.".to_owned(),
        )],
        Submitted::Refused(message) => vec![(first_field.clone(), message)],
        Submitted::Problems(problems) => problems,
    };
    let (shown, elsewhere): (Vec<_>, Vec<_>) = problems
        .into_iter()
        .partition(|(field, _)| fields.contains(field));
    let mut errors: Map<String, Value> = shown
        .into_iter()
        .map(|(field, message)| (field, Value::from(message)))
        .collect();
    if !elsewhere.is_empty() {
        let text: Vec<String> = elsewhere.into_iter().map(|(_, message)| message).collect();
        errors.insert(first_field, Value::from(text.join("; ")));
    }
    Json(json!({"response_action": "errors", "errors": errors})).into_response()
}
