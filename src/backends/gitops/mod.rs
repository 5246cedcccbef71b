//! The `GITOPS` backend: renders the action's IaC files over the run's context, commits them on
//! the run's own branch (`portbot/<run id>`) and, with provider `github`, opens a pull request.
//! The pull request (or branch) becomes the run's link; the run then waits for the merge,
//! learned from `/github/webhook` or by polling (`watch`).
//!
//! A run that ends without success after publishing has its change withdrawn (the pull request
//! closed, the branch deleted), so a later merge cannot change infrastructure behind the
//! catalog's back.
//!
//! A CREATE run adds the files (refused if one already exists on the base branch), a DAY-2 run
//! changes them (refused if one is missing), a DELETE run removes them. Publishing is safe to
//! repeat: after a restart the dispatcher invokes a started run again, and each provider first
//! looks for the branch and the pull request an earlier attempt made.

mod git;
mod github;

pub use github::check_observation;

use std::path::{Path, PathBuf};

use serde_json::Value;

use super::watch::Observation;
use super::{Dispatcher, Outcome};
use crate::core::action::{Action, Operation};
use crate::core::gitops::{self, GitopsInvocation, Provider};
use crate::core::iac::{self, Language};
use crate::core::run::{Run, RunStatus};
use crate::core::template;

/// What a run changes in the repository, rendered.
pub struct FileSet {
    pub operation: Operation,
    pub base: String,
    pub branch: String,
    pub message: String,
    pub files: Vec<FileChange>,
}

pub struct FileChange {
    pub path: String,
    /// The new content; `None` removes the file.
    pub content: Option<String>,
}

impl FileSet {
    /// The reason the run's operation cannot apply to a file that does (or does not) exist on
    /// the base branch, if it cannot. DAY-2 writes the file either way: it adds to an existing
    /// entity (a DocumentDB for a service) or changes what it added before.
    pub fn refusal(&self, path: &str, exists: bool) -> Option<String> {
        match (self.operation, exists) {
            (Operation::Create, true) => Some(format!(
                "`{path}` already exists on {}: use a DAY-2 action to change it",
                self.base
            )),
            (Operation::Delete, false) => Some(format!(
                "`{path}` does not exist on {}, so there is nothing to remove",
                self.base
            )),
            _ => None,
        }
    }
}

/// What publishing achieved.
pub struct Published {
    /// The pull request, or the branch, as the run's link.
    pub link: String,
    /// A log line: what was done (or found done by an earlier attempt).
    pub note: String,
}

/// The outcome of a change under review.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Review {
    Open,
    Merged,
    Closed,
}

pub(super) async fn invoke(
    dispatcher: &Dispatcher,
    run: &Run,
    action: &Action,
    gitops: &GitopsInvocation,
) -> Outcome {
    let files = match render(dispatcher, run, action, gitops) {
        Ok(files) => files,
        Err(reason) => {
            return dispatcher
                .end(
                    &run.id,
                    format!("the change could not be rendered: {reason}"),
                    RunStatus::Failure,
                )
                .await
        }
    };
    let published = match &gitops.provider {
        Provider::Git { remote } => {
            git::publish(&dispatcher.config.work_dir, remote, run, &files).await
        }
        Provider::GitHub { repo } => github::publish(dispatcher, repo, run, gitops, &files).await,
    };
    match published {
        // Recorded with the delivery; a run that ended meanwhile (cancelled) keeps its end.
        Ok(published) => Ok(Some(crate::app::DeliveryNote {
            line: published.note,
            status_label: Some("awaiting merge".into()),
            link: Some(published.link),
        })),
        Err(reason) => dispatcher.end(&run.id, reason, RunStatus::Failure).await,
    }
}

/// The run's files, rendered and parsed, with its branch and commit message.
fn render(
    dispatcher: &Dispatcher,
    run: &Run,
    action: &Action,
    gitops: &GitopsInvocation,
) -> Result<FileSet, String> {
    let context = dispatcher.app.template_context(run);
    let paths = gitops.paths(&context).map_err(|e| e.to_string())?;
    let mut files = Vec::new();
    for (file, path) in gitops.files.iter().zip(paths) {
        let content = match action.operation {
            Operation::Delete => None,
            _ => Some(render_file(
                &dispatcher.config.iac_templates,
                &file.template,
                &path,
                &context,
            )?),
        };
        files.push(FileChange { path, content });
    }
    let message =
        template::render_text(&gitops.commit_message, &context).map_err(|e| e.to_string())?;
    Ok(FileSet {
        operation: action.operation,
        base: gitops.base_branch.clone(),
        branch: gitops::branch(&run.id),
        message: format!("{}\n\n{}\n", message.trim_end(), gitops::trailer(&run.id)),
        files,
    })
}

fn render_file(root: &Path, template: &str, path: &str, context: &Value) -> Result<String, String> {
    let language = Language::of(path)
        .ok_or_else(|| format!("`{path}` must end in {}", iac::KNOWN_EXTENSIONS))?;
    let source: PathBuf = root.join(template);
    let text = std::fs::read_to_string(&source)
        .map_err(|e| format!("cannot read the template {}: {e}", source.display()))?;
    iac::render(language, &text, context).map_err(|e| format!("{path} (from {template}): {e}"))
}

/// Where a GITOPS run's change stands now, for the watcher.
pub(super) async fn review(
    dispatcher: &Dispatcher,
    run: &Run,
    gitops: &GitopsInvocation,
) -> Result<Review, String> {
    match &gitops.provider {
        Provider::Git { remote } => {
            git::review(
                &dispatcher.config.work_dir,
                remote,
                &gitops.base_branch,
                &run.id,
            )
            .await
        }
        Provider::GitHub { repo } => github::review(dispatcher, repo, &run.id).await,
    }
}

/// Withdraws the change of a run that ended without success; says what was done.
pub(super) async fn withdraw(
    dispatcher: &Dispatcher,
    run: &Run,
    gitops: &GitopsInvocation,
) -> Result<&'static str, String> {
    match &gitops.provider {
        Provider::Git { remote } => {
            git::withdraw(&dispatcher.config.work_dir, remote, &run.id).await
        }
        Provider::GitHub { repo } => github::withdraw(dispatcher, repo, &run.id).await,
    }
}

/// The finished CI checks of the run's change (GitHub's check runs on its branch); a plain git
/// remote has none to ask for.
pub(super) async fn checks(
    dispatcher: &Dispatcher,
    run: &Run,
    gitops: &GitopsInvocation,
) -> Result<Vec<Observation>, String> {
    match &gitops.provider {
        Provider::Git { .. } => Ok(Vec::new()),
        Provider::GitHub { repo } => github::checks(dispatcher, repo, &run.id).await,
    }
}

/// The body of a pull request: the action's own text, then who asked for what, who approved,
/// and the way back to the run.
pub fn pull_request_body(intro: Option<&str>, run: &Run, public_url: &str) -> String {
    let mut body = String::new();
    if let Some(intro) = intro.filter(|t| !t.trim().is_empty()) {
        body.push_str(intro.trim_end());
        body.push_str("\n\n");
    }
    body.push_str(&format!(
        "Opened by portbot for run `{}` ({}).\n\n",
        run.id, run.action.title
    ));
    body.push_str(&format!("- Requested by: {}\n", run.created_by));
    if let Some(entity) = &run.entity {
        body.push_str(&format!("- Entity: {}\n", entity.identifier));
    }
    let approvers: Vec<String> = run
        .approval
        .as_ref()
        .map(|a| a.decisions.iter().map(|d| d.by.to_string()).collect())
        .unwrap_or_default();
    body.push_str(&format!(
        "- Approved by: {}\n",
        if approvers.is_empty() {
            "no approval needed".to_owned()
        } else {
            approvers.join(", ")
        }
    ));
    body.push_str("- Inputs:\n");
    for (name, value) in &run.properties {
        body.push_str(&format!(
            "  - `{name}`: `{}`\n",
            crate::core::schema::plain_text(value).replace('`', "'")
        ));
    }
    body.push_str(&format!(
        "\nRun: {}/v1/actions/runs/{}\n\nMerging ends the run SUCCESS and updates the catalog; closing it unmerged ends the run FAILURE.\n",
        public_url.trim_end_matches('/'),
        run.id
    ));
    body
}
