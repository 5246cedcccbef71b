//! `POST /github/webhook` (CONTRACT §5): GitHub's events about the branches, pull requests and
//! workflow runs portbot made, verified with `X-Hub-Signature-256` (HMAC-SHA256 of the raw body
//! with `github.webhook_secret`, compared in constant time). A bad signature gets 401 and
//! changes nothing. The route exists only when the secret is set.
//!
//! - `ping`: answered.
//! - `pull_request` closed: merged ends the GITOPS run SUCCESS, unmerged FAILURE.
//! - `check_run` and `workflow_run` on a `portbot/<run id>` branch: CI results become the
//!   GITOPS run's log lines and status label.
//! - `workflow_run` whose title carries a run id: the GITHUB run's workflow (link, end).
//!
//! The run is found from the branch name or the title, so nothing is stored to map them. A
//! delivery taken within the hour (`X-GitHub-Delivery`, kept across restarts by the app's
//! receipts) is acknowledged and not applied again.

use std::sync::OnceLock;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use hmac::{Hmac, Mac};
use serde_json::{json, Value};
use sha2::Sha256;

use crate::app::{App, AppError};
use crate::backends::watch::{conclude, Observation};
use crate::backends::{check_observation, workflow_observation};
use crate::config::Secret;
use crate::core::gitops::run_of_branch;
use crate::core::ids::RunId;

#[derive(Clone)]
struct WebhookState {
    app: App,
    secret: Secret,
}

pub fn router(app: App, secret: Secret) -> Router {
    Router::new()
        .route("/github/webhook", post(receive))
        .with_state(WebhookState { app, secret })
}

/// `sha256=<hex>` of the body, checked in constant time.
pub fn verify(secret: &str, signature: Option<&str>, body: &[u8]) -> bool {
    let Some(expected) = signature
        .and_then(|s| s.strip_prefix("sha256="))
        .and_then(|h| hex::decode(h).ok())
    else {
        return false;
    };
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC takes any key");
    mac.update(body);
    mac.verify_slice(&expected).is_ok()
}

fn answer(status: StatusCode, message: &str) -> Response {
    let ok = status.is_success();
    let body = if ok {
        json!({"ok": true, "message": message})
    } else {
        json!({"ok": false, "error": status.canonical_reason().unwrap_or("error").to_lowercase().replace(' ', "_"), "message": message})
    };
    (status, Json(body)).into_response()
}

async fn receive(State(state): State<WebhookState>, headers: HeaderMap, body: Bytes) -> Response {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    if !verify(state.secret.expose(), header("x-hub-signature-256"), &body) {
        return answer(
            StatusCode::UNAUTHORIZED,
            "the X-Hub-Signature-256 signature does not match",
        );
    }
    let Ok(payload) = serde_json::from_slice::<Value>(&body) else {
        return answer(StatusCode::BAD_REQUEST, "the body is not JSON");
    };
    let event = header("x-github-event").unwrap_or_default();
    let Some((run, observation)) = observation(event, &payload) else {
        return answer(StatusCode::OK, "nothing for portbot in this event");
    };
    // Asked to send an event again, GitHub uses the same delivery id. (Claimed only for events
    // about a run: the others, however many, leave no receipt.)
    let claim = match header("x-github-delivery") {
        Some(delivery) => match state.app.claim_delivery(&format!("github:{delivery}")) {
            Ok(claim) => Some(claim),
            Err(_) => return answer(StatusCode::OK, "this delivery was received before"),
        },
        None => None,
    };
    let applied = match conclude(&state.app, &run, observation).await {
        Ok(()) | Err(AppError::RunNotFound(_)) => Ok(()),
        Err(error) => Err(error),
    };
    // A claim not kept is released, so the delivery is taken when it comes again.
    let kept = match (applied, claim) {
        (Ok(()), Some(claim)) => state.app.keep_delivery(claim).await,
        (applied, _) => applied,
    };
    match kept {
        Ok(()) => answer(StatusCode::OK, "received"),
        Err(error) => failed(&error, Some(&run)),
    }
}

fn failed(error: &AppError, run: Option<&RunId>) -> Response {
    tracing::error!(%error, run = ?run.map(RunId::as_str), "a GitHub event could not be recorded");
    answer(
        StatusCode::INTERNAL_SERVER_ERROR,
        "portbot could not record the event; send it again",
    )
}

/// The run an event concerns, and what it says.
fn observation(event: &str, payload: &Value) -> Option<(RunId, Observation)> {
    let text = |v: &Value| v.as_str().map(str::to_owned);
    match event {
        "pull_request" if payload["action"] == "closed" => {
            let pull = &payload["pull_request"];
            let run = run_of_branch(pull["head"]["ref"].as_str()?)?;
            let url = pull["html_url"].as_str().unwrap_or("the pull request");
            let observation = if pull["merged"] == true {
                let by = pull["merged_by"]["login"].as_str().unwrap_or("someone");
                Observation::Merged(format!("pull request {url} was merged by {by}"))
            } else {
                Observation::Closed(format!("pull request {url} was closed without merging"))
            };
            Some((run, observation))
        }
        "check_run" => {
            let check = &payload["check_run"];
            let branch = check["check_suite"]["head_branch"]
                .as_str()
                .or_else(|| check["pull_requests"][0]["head"]["ref"].as_str())?;
            Some((run_of_branch(branch)?, check_observation(check)))
        }
        "workflow_run" => {
            let workflow_run = &payload["workflow_run"];
            if let Some(run) = workflow_run["head_branch"].as_str().and_then(run_of_branch) {
                return Some((
                    run,
                    Observation::Check {
                        name: text(&workflow_run["name"]).unwrap_or_else(|| "workflow".into()),
                        status: text(&workflow_run["status"]).unwrap_or_default(),
                        conclusion: text(&workflow_run["conclusion"]),
                        url: text(&workflow_run["html_url"]),
                    },
                ));
            }
            let title = workflow_run["display_title"].as_str()?;
            Some((run_in(title)?, workflow_observation(workflow_run)))
        }
        _ => None,
    }
}

/// The first run id in a text (a workflow run's title).
fn run_in(text: &str) -> Option<RunId> {
    static PATTERN: OnceLock<regex::Regex> = OnceLock::new();
    let pattern =
        PATTERN.get_or_init(|| regex::Regex::new(r"\br_[0-9a-f]{22}\b").expect("a valid pattern"));
    RunId::try_from(pattern.find(text)?.as_str().to_owned()).ok()
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::edge_input;

    const FIELDS: &[&str] = &[
        "action",
        "pull_request",
        "head",
        "ref",
        "html_url",
        "merged",
        "merged_by",
        "login",
        "check_run",
        "check_suite",
        "head_branch",
        "pull_requests",
        "name",
        "status",
        "conclusion",
        "workflow_run",
        "display_title",
    ];
    const WORDS: &[&str] = &[
        "closed",
        "completed",
        "success",
        "portbot/r_0193e5a1b2c30001abcdef",
        "refs/heads/portbot/r_0193e5a1b2c30001abcdef",
        "portbot/",
        "deploy r_0193e5a1b2c30001abcdef",
    ];
    const EVENTS: &[&str] = &["pull_request", "check_run", "workflow_run", "ping", ""];

    #[test]
    fn signatures_are_checked_over_the_raw_body() {
        let mut mac = Hmac::<Sha256>::new_from_slice(b"s3cret").unwrap();
        mac.update(b"{}");
        let good = format!("sha256={}", hex::encode(mac.finalize().into_bytes()));
        assert!(verify("s3cret", Some(&good), b"{}"));
        assert!(!verify("s3cret", Some(&good), b"{} "));
        assert!(!verify("other", Some(&good), b"{}"));
        assert!(!verify("s3cret", None, b"{}"));
        assert!(!verify("s3cret", Some("sha256=zz"), b"{}"));
    }

    #[test]
    fn runs_are_found_in_titles() {
        let run = RunId::new(1_700_000_000_000, 3, 7);
        assert_eq!(run_in(&format!("deploy {run} now")), Some(run));
        assert_eq!(run_in("deploy r_123"), None);
    }

    proptest! {
        #[test]
        fn events_never_panic(
            event in prop_oneof![
                4 => prop::sample::select(EVENTS).prop_map(str::to_owned),
                1 => edge_input::text(),
            ],
            payload in edge_input::json(FIELDS, WORDS),
        ) {
            let _ = observation(&event, &payload);
        }

        /// Payloads of GitHub's shape, with anything where its values go (random nesting
        /// seldom reaches `pull_request.head.ref`).
        #[test]
        fn events_of_githubs_shape_never_panic(
            event in prop::sample::select(EVENTS),
            at in prop::collection::vec(edge_input::json(FIELDS, WORDS), 6),
        ) {
            let payload = serde_json::json!({
                "action": at[0],
                "pull_request": {"head": {"ref": at[1]}, "merged": at[2], "merged_by": {"login": at[3]}, "html_url": at[4]},
                "check_run": {"check_suite": {"head_branch": at[5]}, "pull_requests": [{"head": {"ref": at[1]}}], "name": at[3]},
                "workflow_run": {"head_branch": at[5], "display_title": at[1], "name": at[3], "status": at[0], "conclusion": at[2]},
            });
            let _ = observation(event, &payload);
        }

        #[test]
        fn signatures_never_panic(
            signature in prop::option::of(prop_oneof!["sha256=[0-9a-fA-F]{0,70}", edge_input::text()]),
            body in any::<Vec<u8>>(),
        ) {
            prop_assert!(!verify("s3cret", signature.as_deref(), &body));
        }
    }
}
