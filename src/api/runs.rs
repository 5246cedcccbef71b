//! Tokens, actions and runs: `/v1/auth`, `/v1/actions`, `/v1/actions/runs/...`.

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

use super::auth::{issue, Caller};
use super::{ok, ApiError, ApiState, Body, Params, Segments};
use crate::app::{RunPatch, RunRequest};
use crate::core::action::RawInputs;
use crate::core::ids::RunId;
use crate::core::run::{Decision, EventKind, Run, RunStatus};

type Reply = Result<Json<Value>, ApiError>;

/// A run in Port's shape: the run, with `requiredApproval` as Port writes it.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RunView<'a> {
    #[serde(flatten)]
    run: &'a Run,
    required_approval: Value,
}

impl<'a> RunView<'a> {
    pub fn new(run: &'a Run) -> RunView<'a> {
        RunView {
            run,
            required_approval: match &run.approval {
                Some(approval) => json!({"type": approval.policy}),
                None => Value::Bool(false),
            },
        }
    }
}

/// A run in Port's shape, as a JSON value (for templates).
pub fn run_json(run: &Run) -> Value {
    serde_json::to_value(RunView::new(run)).expect("runs serialise")
}

/// `{"ok": true, "run": ...}`, serialised straight from the run (the hot path of the API).
#[derive(Serialize)]
pub struct RunReply<'a> {
    ok: bool,
    run: RunView<'a>,
}

fn run_reply(run: &Run) -> Result<Response, ApiError> {
    Ok(Json(RunReply {
        ok: true,
        run: RunView::new(run),
    })
    .into_response())
}

fn run_id(raw: String) -> Result<RunId, ApiError> {
    RunId::try_from(raw).map_err(|e| ApiError::not_found(format!("there is no run {}", e.0)))
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Credentials {
    client_id: String,
    client_secret: String,
}

pub async fn access_token(State(state): State<ApiState>, Body(creds): Body<Credentials>) -> Reply {
    let client = state
        .clients
        .iter()
        .find(|c| {
            c.client_id == creds.client_id
                && subtle::ConstantTimeEq::ct_eq(
                    c.client_secret.expose().as_bytes(),
                    creds.client_secret.as_bytes(),
                )
                .into()
        })
        .ok_or_else(|| ApiError::unauthorized("unknown client id or wrong secret"))?;
    // Saturating: a TTL too large for a timestamp (`u64::MAX`, say) means "does not expire",
    // not a wrapped expiry in the past.
    let ttl = i64::try_from(state.token_ttl_seconds).unwrap_or(i64::MAX);
    let expires = chrono::Utc::now().timestamp().saturating_add(ttl);
    Ok(ok(json!({
        "accessToken": issue(client, expires),
        "expiresIn": state.token_ttl_seconds,
        "tokenType": "Bearer",
    })))
}

pub async fn actions(State(state): State<ApiState>, _caller: Caller) -> Reply {
    let actions: Vec<&Value> = state.app.actions().map(|a| &a.raw).collect();
    Ok(ok(json!({ "actions": actions })))
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CreateRun {
    entity: Option<String>,
    #[serde(default)]
    properties: Map<String, Value>,
    /// portbot's extension: the properties are text as a person typed it (the CLI), to be
    /// typed by the action's schema exactly as chat input is.
    #[serde(default)]
    inputs_as_text: bool,
}

pub async fn create(
    State(state): State<ApiState>,
    caller: Caller,
    Segments(action): Segments<String>,
    Body(body): Body<CreateRun>,
) -> Result<Response, ApiError> {
    caller.require_admin()?;
    let inputs = if body.inputs_as_text {
        let pairs = body.properties.into_iter().map(|(k, v)| {
            let text = match v {
                Value::String(s) => s,
                other => other.to_string(),
            };
            (k, text)
        });
        RawInputs::Text(pairs.collect())
    } else {
        RawInputs::Json(body.properties)
    };
    let run = state
        .app
        .request_run(RunRequest {
            who: &caller.acting_as,
            action: &action,
            entity: body.entity.as_deref(),
            inputs,
            origin: "API",
            channel: None,
            received: None,
        })
        .await?;
    run_reply(&run)
}

#[derive(Deserialize)]
pub struct RunsQuery {
    entity: Option<String>,
    action: Option<String>,
    active: Option<bool>,
    limit: Option<usize>,
}

pub async fn list(
    State(state): State<ApiState>,
    _caller: Caller,
    Params(q): Params<RunsQuery>,
) -> Reply {
    let limit = q.limit.unwrap_or(100).clamp(1, 1000);
    let runs = state.app.runs(limit, q.active == Some(true), |run| {
        q.entity.as_deref().is_none_or(|e| {
            run.entity
                .as_ref()
                .is_some_and(|r| r.identifier.as_str() == e)
        }) && q
            .action
            .as_deref()
            .is_none_or(|a| run.action.identifier.as_str() == a)
            && q.active
                .is_none_or(|active| active != run.status.is_ended())
    })?;
    let runs: Vec<Value> = runs.iter().map(run_json).collect();
    Ok(ok(json!({ "runs": runs })))
}

pub async fn get_one(
    State(state): State<ApiState>,
    _caller: Caller,
    Segments(id): Segments<String>,
) -> Result<Response, ApiError> {
    let run = state.app.run(&run_id(id)?)?;
    run_reply(&run)
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct UpdateRun {
    status: Option<RunStatus>,
    status_label: Option<String>,
    link: Option<Link>,
    summary: Option<String>,
}

/// Port accepts a link or a list of links; the last one is kept.
#[derive(Deserialize)]
#[serde(untagged)]
pub enum Link {
    One(String),
    Many(Vec<String>),
}

pub async fn update(
    State(state): State<ApiState>,
    _caller: Caller,
    Segments(id): Segments<String>,
    Body(body): Body<UpdateRun>,
) -> Result<Response, ApiError> {
    let patch = RunPatch {
        status: body.status,
        status_label: body.status_label,
        link: body.link.and_then(|l| match l {
            Link::One(s) => Some(s),
            Link::Many(v) => v.into_iter().last(),
        }),
        summary: body.summary,
    };
    let run = state.app.update_run(&run_id(id)?, patch).await?;
    run_reply(&run)
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AddLog {
    message: String,
    termination_status: Option<RunStatus>,
    status_label: Option<String>,
}

pub async fn add_log(
    State(state): State<ApiState>,
    _caller: Caller,
    Segments(id): Segments<String>,
    Body(body): Body<AddLog>,
) -> Result<Response, ApiError> {
    let run = state
        .app
        .append_log(
            &run_id(id)?,
            body.message,
            body.termination_status,
            body.status_label,
            None,
        )
        .await?;
    run_reply(&run)
}

#[derive(Deserialize)]
pub struct After {
    #[serde(default)]
    after: u64,
}

/// Port's run logs: the log lines, in order, each with its sequence number.
pub async fn logs(
    State(state): State<ApiState>,
    _caller: Caller,
    Segments(id): Segments<String>,
    Params(After { after }): Params<After>,
) -> Reply {
    let logs: Vec<Value> = state
        .app
        .events(&run_id(id)?, after)?
        .into_iter()
        .filter_map(|e| match e.kind {
            EventKind::Log { message } => {
                Some(json!({"seq": e.seq, "message": message, "createdAt": e.at}))
            }
            _ => None,
        })
        .collect();
    Ok(ok(json!({ "runLogs": logs })))
}

/// Every event of a run (portbot's own endpoint, used by `portbot logs --follow`).
pub async fn events(
    State(state): State<ApiState>,
    _caller: Caller,
    Segments(id): Segments<String>,
    Params(After { after }): Params<After>,
) -> Reply {
    let events = state.app.events(&run_id(id)?, after)?;
    Ok(ok(json!({ "events": events })))
}

#[derive(Deserialize)]
pub struct DecideBody {
    status: Decision,
    description: Option<String>,
}

pub async fn decide(
    State(state): State<ApiState>,
    caller: Caller,
    Segments(id): Segments<String>,
    Body(body): Body<DecideBody>,
) -> Result<Response, ApiError> {
    caller.require_admin()?;
    let run = state
        .app
        .decide(
            &caller.acting_as,
            &run_id(id)?,
            body.status,
            body.description,
        )
        .await?;
    run_reply(&run)
}
