//! What happened to a run's change under review (GITOPS) or to its workflow run (GITHUB), and
//! what that means for the run. `/github/webhook` reports [`Observation`]s as GitHub sends
//! events; without a webhook, the poller here looks every `github.poll_interval_seconds` at
//! each active run that waits on a branch, a pull request or a workflow run.
//!
//! A merge ends the run SUCCESS (so the action's onSuccess updates the catalog, once), a
//! close without merge (or a deleted branch) ends it FAILURE, CI results become log lines and
//! status labels, and a workflow run's conclusion ends a GITHUB run that reports its status.
//! Each reaches the chat thread like any other run event. A second report of the same end
//! (webhook and poller) finds the run ended and changes nothing.

use std::time::Duration;

use super::{github_workflow, gitops, Dispatcher};
use crate::app::{App, AppError};
use crate::core::action::Invocation;
use crate::core::ids::RunId;
use crate::core::run::{EventKind, RunError, RunStatus};

/// Something GitHub or the git remote said about a run.
#[derive(Debug, Clone)]
pub enum Observation {
    /// The change was merged into the base branch (GITOPS); the text says how it was seen.
    Merged(String),
    /// The pull request was closed unmerged, or the branch deleted (GITOPS).
    Closed(String),
    /// A CI check or workflow on the run's branch (GITOPS), e.g. a Terraform plan.
    Check {
        name: String,
        /// `completed`, `in_progress`, `queued`, ...
        status: String,
        conclusion: Option<String>,
        url: Option<String>,
    },
    /// The workflow run a GITHUB run dispatched.
    Workflow {
        status: String,
        conclusion: Option<String>,
        url: String,
    },
}

/// Applies an observation to the run, if it concerns an active run of the right kind.
pub async fn conclude(app: &App, id: &RunId, observation: Observation) -> Result<(), AppError> {
    let run = app.run(id)?;
    if run.status != RunStatus::InProgress {
        return Ok(());
    }
    let invocation = app
        .action(run.action.identifier.as_str())
        .map(|a| a.invocation.clone());
    let result = match (invocation, observation) {
        (Ok(Invocation::Gitops(_)), Observation::Merged(how)) => {
            app.append_log(
                id,
                how,
                Some(RunStatus::Success),
                Some("merged".into()),
                None,
            )
            .await
        }
        (Ok(Invocation::Gitops(_)), Observation::Closed(how)) => {
            app.append_log(
                id,
                how,
                Some(RunStatus::Failure),
                Some("closed unmerged".into()),
                None,
            )
            .await
        }
        (
            Ok(Invocation::Gitops(_)),
            Observation::Check {
                name,
                status,
                conclusion,
                url,
            },
        ) => {
            let outcome = conclusion.unwrap_or(status);
            let link = url.map(|u| format!(" ({u})")).unwrap_or_default();
            let line = format!("CI {name}: {outcome}{link}");
            // Polling sees a finished check again and again, and GitHub may redeliver: each
            // result is logged once.
            let logged = app
                .events(id, 0)?
                .into_iter()
                .any(|e| matches!(e.kind, EventKind::Log { message } if message == line));
            if logged {
                return Ok(());
            }
            app.append_log(id, line, None, Some(format!("{name}: {outcome}")), None)
                .await
        }
        (
            Ok(Invocation::GithubWorkflow(w)),
            Observation::Workflow {
                status,
                conclusion,
                url,
            },
        ) if w.report_status => {
            if run.link.as_deref() != Some(url.as_str()) {
                let line = format!("workflow run {url}");
                app.append_log(id, line, None, Some(status.clone()), Some(url.clone()))
                    .await?;
            }
            match (status.as_str(), conclusion.as_deref()) {
                ("completed", Some("success")) => {
                    app.append_log(
                        id,
                        "the workflow run succeeded".into(),
                        Some(RunStatus::Success),
                        Some("success".into()),
                        None,
                    )
                    .await
                }
                ("completed", other) => {
                    let conclusion = other.unwrap_or("unknown");
                    app.append_log(
                        id,
                        format!("the workflow run ended: {conclusion}"),
                        Some(RunStatus::Failure),
                        Some(conclusion.to_owned()),
                        None,
                    )
                    .await
                }
                _ => return Ok(()),
            }
        }
        _ => return Ok(()),
    };
    match result {
        Ok(_) | Err(AppError::Run(RunError::Ended { .. })) => Ok(()),
        Err(other) => Err(other),
    }
}

/// Starts the poller; it runs until the process stops.
pub(super) fn spawn(dispatcher: Dispatcher, every: Duration) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every.max(Duration::from_millis(100)));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            poll(&dispatcher).await;
        }
    })
}

/// Looks once at every run in progress that waits on GitHub or a git remote.
async fn poll(dispatcher: &Dispatcher) {
    let app = &dispatcher.app;
    let external = |a: &crate::core::action::Action| {
        matches!(
            a.invocation,
            Invocation::Gitops(_) | Invocation::GithubWorkflow(_)
        )
    };
    let runs = match app.active_runs_of(external) {
        Ok(runs) => runs,
        Err(error) => {
            tracing::error!(%error, "cannot list the active runs");
            return;
        }
    };
    for run in runs
        .into_iter()
        .filter(|r| r.status == RunStatus::InProgress)
    {
        let Ok(action) = app.action(run.action.identifier.as_str()) else {
            continue;
        };
        let observed = match &action.invocation {
            // Only once the change is published (its link is set).
            Invocation::Gitops(g) if run.link.is_some() => {
                for check in gitops::checks(dispatcher, &run, g)
                    .await
                    .unwrap_or_else(|reason| {
                        tracing::warn!(run = %run.id, %reason, "cannot poll the checks");
                        Vec::new()
                    })
                {
                    if let Err(error) = conclude(app, &run.id, check).await {
                        tracing::warn!(run = %run.id, %error, "polled check not recorded");
                    }
                }
                match gitops::review(dispatcher, &run, g).await {
                    Ok(gitops::Review::Merged) => Ok(Some(Observation::Merged(format!(
                        "the change was merged into {} (seen by polling)",
                        g.base_branch
                    )))),
                    Ok(gitops::Review::Closed) => Ok(Some(Observation::Closed(
                        "the change was closed without merging (seen by polling)".into(),
                    ))),
                    Ok(gitops::Review::Open) => Ok(None),
                    Err(reason) => Err(reason),
                }
            }
            Invocation::GithubWorkflow(w) if w.report_status => {
                github_workflow::review(dispatcher, w, &run.id).await
            }
            _ => Ok(None),
        };
        match observed {
            Ok(Some(observation)) => {
                if let Err(error) = conclude(app, &run.id, observation).await {
                    tracing::warn!(run = %run.id, %error, "polled state not recorded");
                }
            }
            Ok(None) => {}
            Err(reason) => tracing::warn!(run = %run.id, %reason, "cannot poll the run's change"),
        }
    }
}
