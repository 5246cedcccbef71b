//! `POST /slack/interactions`: the `Approve` and `Decline` buttons of approval requests.
//!
//! The click is decided under the same rules as everywhere (the app's `decide`), and Slack gets
//! its 200 at once. Whoever may not decide gets an ephemeral refusal (`chat.postEphemeral`,
//! sent after the ack so a slow Slack never delays it); the request message itself is updated
//! by the approvals consumer once the decision is stored.

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::json;

use super::SlackState;
use crate::core::ids::{Identity, RunId};
use crate::core::run::Decision;

/// The action ids of the buttons in `approval_request.hbs`.
const APPROVE: &str = "approve";
const DECLINE: &str = "decline";

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
    State(state): State<SlackState>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Err(error) = super::verify(&state, &headers, &body) {
        return (StatusCode::UNAUTHORIZED, error.to_string()).into_response();
    }
    let payload = serde_urlencoded::from_bytes::<Form>(&body)
        .ok()
        .and_then(|form| serde_json::from_str::<BlockActions>(&form.payload).ok());
    let Some(payload) = payload else {
        return (StatusCode::BAD_REQUEST, "not an interaction payload").into_response();
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
    if let Err(error) = state.app.decide(&who, &run, decision, None).await {
        if let Some(channel) = payload.channel {
            let refusal = json!({
                "channel": channel.id,
                "user": payload.user.id,
                "text": error.to_string(),
            });
            let api = state.api.clone();
            tokio::spawn(async move {
                if let Err(error) = api.call("chat.postEphemeral", &refusal).await {
                    tracing::warn!(%error, "could not tell a Slack user why their click was refused");
                }
            });
        }
    }
    StatusCode::OK.into_response()
}
