//! The `GITHUB` backend: a `workflow_dispatch` of the action's workflow with its
//! `workflowInputs` (rendered, as strings) and `port_context`, a JSON string carrying the run
//! id, entity, blueprint, action and requester.
//!
//! With `reportWorkflowStatus` (the default) the workflow run's conclusion ends the portbot run
//! and its URL becomes the link. GitHub's dispatch answer names no workflow run, so the run is
//! recognised by its title: the workflow must set
//! `run-name: ${{ fromJSON(inputs.port_context).runId }}` (the title may hold more text). Its
//! `workflow_run` events reach `/github/webhook`; without a webhook the workflow's runs are
//! polled. Before dispatching, portbot looks for a workflow run that already carries the run
//! id, so a restart does not dispatch twice.

use serde_json::{json, Map, Value};

use super::watch::Observation;
use super::{Dispatcher, Outcome};
use crate::core::action::Action;
use crate::core::gitops::WorkflowInvocation;
use crate::core::ids::RunId;
use crate::core::run::{Run, RunStatus};
use crate::core::schema::plain_text;
use crate::core::template;

pub(super) async fn invoke(
    dispatcher: &Dispatcher,
    run: &Run,
    action: &Action,
    workflow: &WorkflowInvocation,
) -> Outcome {
    match dispatch(dispatcher, run, action, workflow).await {
        Ok(note) => Ok(Some(note.into())),
        Err(reason) => dispatcher.end(&run.id, reason, RunStatus::Failure).await,
    }
}

async fn dispatch(
    dispatcher: &Dispatcher,
    run: &Run,
    action: &Action,
    workflow: &WorkflowInvocation,
) -> Result<String, String> {
    let repo = format!("{}/{}", workflow.org, workflow.repo);
    if workflow.report_status {
        if let Some(Observation::Workflow { url, .. }) =
            review(dispatcher, workflow, &run.id).await?
        {
            return Ok(format!(
                "workflow run {url} was dispatched before a restart; not dispatched again"
            ));
        }
    }
    let context = dispatcher.app.template_context(run);
    let rendered = template::render_value(&Value::Object(workflow.inputs.clone()), &context)
        .map_err(|e| format!("the workflow inputs could not be built: {e}"))?;
    let mut inputs: Map<String, Value> = rendered
        .as_object()
        .map(|m| {
            m.iter()
                .map(|(k, v)| (k.clone(), Value::from(plain_text(v))))
                .collect()
        })
        .unwrap_or_default();
    let port_context = json!({
        "runId": run.id,
        "blueprint": action.blueprint,
        "entity": run.entity.as_ref().map(|e| &e.identifier),
        "action": action.identifier,
        "user": run.created_by,
    });
    inputs.insert("port_context".into(), Value::from(port_context.to_string()));
    let git_ref = match &workflow.git_ref {
        Some(r) => r.clone(),
        None => {
            let body = dispatcher
                .github
                .get(&format!("/repos/{repo}"), "the repository")
                .await
                .and_then(|a| a.success("the repository"))
                .map_err(|e| e.to_string())?;
            body["default_branch"].as_str().unwrap_or("main").to_owned()
        }
    };
    dispatcher
        .github
        .post(
            &format!(
                "/repos/{repo}/actions/workflows/{}/dispatches",
                workflow.workflow
            ),
            &json!({"ref": git_ref, "inputs": inputs}),
            "the workflow dispatch",
        )
        .await
        .and_then(|a| a.success("the workflow dispatch"))
        .map_err(|e| e.to_string())?;
    let then = if workflow.report_status {
        "its conclusion ends this run"
    } else {
        "the workflow reports through the API"
    };
    Ok(format!(
        "workflow {} dispatched on {git_ref} in {repo}; {then}",
        workflow.workflow
    ))
}

/// The workflow run that carries the run id in its title, if GitHub lists one yet.
pub(super) async fn review(
    dispatcher: &Dispatcher,
    workflow: &WorkflowInvocation,
    run: &RunId,
) -> Result<Option<Observation>, String> {
    let path = format!(
        "/repos/{}/{}/actions/workflows/{}/runs?event=workflow_dispatch&per_page=100",
        workflow.org, workflow.repo, workflow.workflow
    );
    let body = dispatcher
        .github
        .get(&path, "the workflow runs")
        .await
        .and_then(|a| a.success("the workflow runs"))
        .map_err(|e| e.to_string())?;
    let runs = body["workflow_runs"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    Ok(runs
        .iter()
        .find(|r| {
            r["display_title"]
                .as_str()
                .is_some_and(|t| t.contains(run.as_str()))
        })
        .map(workflow_observation))
}

/// A workflow run (GitHub's JSON) as an observation.
pub fn workflow_observation(workflow_run: &Value) -> Observation {
    Observation::Workflow {
        status: workflow_run["status"]
            .as_str()
            .unwrap_or("unknown")
            .to_owned(),
        conclusion: workflow_run["conclusion"].as_str().map(str::to_owned),
        url: workflow_run["html_url"]
            .as_str()
            .unwrap_or_default()
            .to_owned(),
    }
}
