//! `POST /slack/interactions`: the `Approve` and `Decline` buttons of approval requests, and
//! the submitted forms (missing inputs, a decline's reason).
//!
//! The click is decided under the same rules as everywhere (the app's `decide`), and Slack gets
//! its 200 once the decision is stored, or after `slack.defer_after_ms` while it goes on.
//! `Decline` first asks a permitted decliner for an optional reason (a modal); the decline is
//! made when it is submitted. A form's problems are answered in it at once (checking waits for
//! nothing); only storing may go on after the form closed. Whoever may not decide gets an
//! ephemeral refusal (`chat.postEphemeral`, sent after the ack so a slow Slack never delays
//! it); the request message itself is updated by the approvals consumer once the decision is
//! stored.

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
    let Some(payload) = payload(&body) else {
        return (StatusCode::BAD_REQUEST, "not an interaction payload").into_response();
    };
    interaction_reply(&state, payload).await
}

/// The JSON of an HTTP interaction, which comes as the form field `payload`.
fn payload(body: &[u8]) -> Option<Value> {
    let form = serde_urlencoded::from_bytes::<Form>(body).ok()?;
    serde_json::from_str(&form.payload).ok()
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
            Ok(()) => match open_decline_form(state, &payload.trigger_id, run, &channel).await {
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

/// Tells a Slack user, privately, why their click or form did nothing (`error.hbs`); sent
/// after the ack.
fn refuse(state: &SlackState, channel: &str, user: &str, message: String) {
    if channel.is_empty() {
        return;
    }
    let refusal = match state
        .messages
        .render_message("error", json!({ "message": message }))
    {
        Ok(text) => text
            .with("channel", &Value::from(channel))
            .with("user", &Value::from(user)),
        Err(error) => {
            tracing::error!(%error, "a Slack refusal did not render");
            return;
        }
    };
    let api = state.api.clone();
    tokio::spawn(async move {
        if let Err(error) = api
            .call_text("chat.postEphemeral", refusal.into_string())
            .await
        {
            tracing::warn!(%error, "could not tell a Slack user why they were refused");
        }
    });
}

/// The form that asks a decliner for a reason.
async fn open_decline_form(
    state: &SlackState,
    trigger_id: &str,
    run: &RunId,
    channel: &str,
) -> Result<(), String> {
    let run = state.app.run(run).map_err(|e| e.to_string())?;
    let mut data = card_data(&run, mention);
    data["callback_id"] = json!(DECLINE_CALLBACK_ID);
    data["private_metadata"] = json!(format!("{} {channel}", run.id));
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

/// A submitted reason form: the decline, with the reason as its description. Who may not
/// decline is told in the form; past `defer_after` the form closes while the decline goes on,
/// and a refusal that comes after (someone decided first) reaches the decliner privately in
/// the channel of the click.
async fn submit_decline(state: &Arc<SlackState>, payload: &Value) -> Response {
    let view = &payload["view"];
    let reason = view["state"]["values"]["reason"]["value"]["value"]
        .as_str()
        .map(str::trim)
        .filter(|r| !r.is_empty())
        .map(str::to_owned);
    let user = payload["user"]["id"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    // `RUN CHANNEL`; a form opened before the channel was added carries the run alone.
    let metadata = view["private_metadata"].as_str().unwrap_or_default();
    let (run, channel) = metadata.split_once(' ').unwrap_or((metadata, ""));
    let (Ok(who), Ok(run)) = (
        Identity::try_from(format!("slack:{user}")),
        RunId::try_from(run.to_owned()),
    ) else {
        return StatusCode::BAD_REQUEST.into_response();
    };
    let reason_error = |error: AppError| {
        Json(json!({"response_action": "errors", "errors": {"reason": error.to_string()}}))
            .into_response()
    };
    if let Err(error) = state.app.may_decide(&who, &run) {
        return reason_error(error);
    }
    let worker = state.clone();
    let work = async move {
        worker
            .app
            .decide(&who, &run, Decision::Decline, reason)
            .await
            .map(|_| ())
    };
    let late = state.clone();
    let channel = channel.to_owned();
    let late_user = user.clone();
    let decided = super::within(state.defer_after, work, move |decided| async move {
        if let Err(error) = decided {
            refuse(&late, &channel, &late_user, error.to_string());
        }
    });
    match decided.await {
        Some(Err(error)) => reason_error(error),
        Some(Ok(())) | None => StatusCode::OK.into_response(),
    }
}

/// A submitted form for missing inputs (see `chat::form`). Problems come back under the field
/// they concern, so the user fixes them in place. What is checked is answered at once; past
/// `defer_after` the form closes while the run is stored, and a refusal that comes after it
/// (a GITOPS file taken meanwhile, a store error) reaches the user privately in the channel
/// of the command.
async fn submit_form(state: &Arc<SlackState>, payload: &Value) -> Response {
    let view = &payload["view"];
    let submitted = submitted_values(&view["state"]);
    let fields: Vec<String> = submitted.iter().map(|(name, _)| name.clone()).collect();
    let user = payload["user"]["id"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let Ok(who) = Identity::try_from(format!("slack:{user}")) else {
        return StatusCode::BAD_REQUEST.into_response();
    };
    let key = view["private_metadata"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let checked = match form::check(&state.app, &key, &who, submitted) {
        Ok(checked) => checked,
        Err(outcome) => return form_answer(outcome, &fields),
    };
    let channel = checked.channel().unwrap_or_default().to_owned();
    let worker = state.clone();
    let work = async move { form::create(&worker.app, checked).await };
    let late = state.clone();
    let created = super::within(state.defer_after, work, move |outcome| async move {
        if let Some(problems) = form_problems(outcome, "") {
            let listed: Vec<String> = problems.into_iter().map(|(_, message)| message).collect();
            let message = format!("The run was not created: {}", listed.join("; "));
            refuse(&late, &channel, &user, message);
        }
    });
    match created.await {
        Some(outcome) => form_answer(outcome, &fields),
        None => StatusCode::OK.into_response(),
    }
}

/// What a submitted form's outcome says under its fields: an empty 200 (which closes the form)
/// for a run made, else the errors. Slack shows errors only under fields of the form, so the
/// others go under the first one.
fn form_answer(outcome: Submitted, fields: &[String]) -> Response {
    let first_field = fields.first().map(String::as_str).unwrap_or_default();
    let Some(problems) = form_problems(outcome, first_field) else {
        return StatusCode::OK.into_response();
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
        errors.insert(first_field.to_owned(), Value::from(text.join("; ")));
    }
    Json(json!({"response_action": "errors", "errors": errors})).into_response()
}

/// A form's problems by field (those that concern no input under `general`); none when its
/// run was made.
fn form_problems(outcome: Submitted, general: &str) -> Option<Vec<(String, String)>> {
    match outcome {
        Submitted::Created(_) => None,
        Submitted::Expired => Some(vec![(
            general.to_owned(),
            "This form has expired; run the command again.".to_owned(),
        )]),
        Submitted::Refused(message) => Some(vec![(general.to_owned(), message)]),
        Submitted::Problems(problems) => Some(problems),
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::edge_input;

    const FIELDS: &[&str] = &[
        "type",
        "user",
        "id",
        "channel",
        "trigger_id",
        "actions",
        "action_id",
        "value",
        "view",
        "callback_id",
        "private_metadata",
        "state",
        "values",
        "reason",
        "selected_option",
        "selected_options",
    ];
    const WORDS: &[&str] = &[
        "block_actions",
        "view_submission",
        CALLBACK_ID,
        DECLINE_CALLBACK_ID,
        APPROVE,
        DECLINE,
        "static_select",
        "checkboxes",
        "plain_text_input",
        "U1",
        "r_0193e5a1b2c30001abcdef",
        "r_0193e5a1b2c30001abcdef C1",
    ];

    /// The parsers `interaction_reply` hands a payload to; the rest of its reading is of
    /// `Value`s, which the live app's malformed-request tests (`tests/slack.rs`) reach.
    fn read(payload: Value) {
        let _ = submitted_values(&payload["view"]["state"]);
        let _ = serde_json::from_value::<BlockActions>(payload);
    }

    #[test]
    fn a_payload_comes_in_its_form_field() {
        let body =
            serde_urlencoded::to_string([("payload", r#"{"type":"block_actions"}"#)]).unwrap();
        assert_eq!(
            payload(body.as_bytes()),
            Some(json!({"type": "block_actions"}))
        );
        assert_eq!(payload(b"payload=%FF"), None);
        assert_eq!(payload(b"other=1"), None);
    }

    proptest! {
        #[test]
        fn interaction_forms_never_panic(body in edge_input::form(
            &["payload", "type"],
            prop_oneof![edge_input::text(), edge_input::json(FIELDS, WORDS).prop_map(|v| v.to_string())].boxed(),
        )) {
            if let Some(payload) = payload(&body) {
                read(payload);
            }
        }

        #[test]
        fn interaction_payloads_never_panic(payload in edge_input::json(FIELDS, WORDS)) {
            read(payload);
        }
    }
}
