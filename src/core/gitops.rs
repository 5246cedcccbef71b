//! The `GITOPS` and `GITHUB` invocation methods (CONTRACT §2, §6), compiled from Port's JSON,
//! and the rules both share: which branch a run's change lives on, and which files a GITOPS
//! run holds while it is active (its lock keys).

use serde::Deserialize;
use serde_json::{Map, Value};

use super::action::{deserialize, problem};
use super::iac::{self, Language};
use super::ids::RunId;
use super::schema::SchemaProblem;
use super::template::{self, TemplateError};

/// Where a GITOPS change goes.
#[derive(Debug, Clone, PartialEq)]
pub enum Provider {
    /// GitHub's REST API: a branch, a commit and a pull request in `owner/name`.
    GitHub { repo: String },
    /// Any remote the `git` command accepts (a URL or a path, a local bare repository
    /// included): a branch is pushed; merging it into the base branch ends the run.
    Git { remote: String },
}

impl Provider {
    /// The repository, as lock keys and messages name it.
    pub fn repository(&self) -> &str {
        match self {
            Provider::GitHub { repo } => repo,
            Provider::Git { remote } => remote,
        }
    }
}

/// One file a GITOPS run writes: a template under `iac.templates_path` and the path (a
/// template) it is written to in the repository.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct GitopsFile {
    pub template: String,
    pub path: String,
}

/// A compiled `GITOPS` invocation.
#[derive(Debug, Clone, PartialEq)]
pub struct GitopsInvocation {
    pub provider: Provider,
    pub base_branch: String,
    pub files: Vec<GitopsFile>,
    /// A template; portbot adds a `Portbot-Run: <run id>` trailer.
    pub commit_message: String,
    pub pull_request_title: String,
    /// A template put above portbot's own summary of the run.
    pub pull_request_body: Option<String>,
}

/// A compiled `GITHUB` invocation: a `workflow_dispatch`.
#[derive(Debug, Clone, PartialEq)]
pub struct WorkflowInvocation {
    pub org: String,
    pub repo: String,
    pub workflow: String,
    /// Templates for the workflow's inputs; `port_context` is added.
    pub inputs: Map<String, Value>,
    /// The branch or tag to run the workflow on (portbot's extension; default: the
    /// repository's default branch).
    pub git_ref: Option<String>,
    /// The workflow run's conclusion ends the portbot run, and its URL is the link.
    pub report_status: bool,
}

/// The branch a run's change lives on. Webhooks and polling find the run from it.
pub fn branch(run: &RunId) -> String {
    format!("portbot/{run}")
}

/// The run a `portbot/<run id>` branch belongs to.
pub fn run_of_branch(branch: &str) -> Option<RunId> {
    let id = branch.strip_prefix("refs/heads/").unwrap_or(branch);
    RunId::try_from(id.strip_prefix("portbot/")?.to_owned()).ok()
}

/// The trailer every portbot commit carries, so a merge is recognised even after the branch
/// is gone (squash and rebase merges keep the message).
pub fn trailer(run: &RunId) -> String {
    format!("Portbot-Run: {run}")
}

impl GitopsInvocation {
    /// The repository paths of the run's files, rendered over its context and checked to stay
    /// inside the repository.
    pub fn paths(&self, context: &Value) -> Result<Vec<String>, TemplateError> {
        self.files
            .iter()
            .map(|f| {
                let path = template::render_text(&f.path, context)?;
                safe_path(&path).map_err(|reason| TemplateError {
                    template: f.path.clone(),
                    reason,
                })
            })
            .collect()
    }

    /// What an active run holds: `<repository>:<path>` for each file.
    pub fn lock_keys(&self, context: &Value) -> Result<Vec<String>, TemplateError> {
        let repository = self.provider.repository();
        Ok(self
            .paths(context)?
            .into_iter()
            .map(|p| format!("{repository}:{p}"))
            .collect())
    }
}

/// A relative path inside the repository, without `..`, `.git` or empty parts.
fn safe_path(path: &str) -> Result<String, String> {
    let bad = path.is_empty()
        || path.starts_with('/')
        || path.contains('\\')
        || path.chars().any(char::is_control)
        || path
            .split('/')
            .any(|part| matches!(part, "" | "." | ".." | ".git"));
    if bad {
        Err(format!(
            "`{path}` is not a relative path inside the repository"
        ))
    } else {
        Ok(path.to_owned())
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RawGitops {
    #[serde(rename = "type")]
    _kind: String,
    provider: String,
    repo: Option<String>,
    remote: Option<String>,
    base_branch: String,
    files: Vec<GitopsFile>,
    commit_message: Option<String>,
    #[serde(default)]
    pull_request: RawPullRequest,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawPullRequest {
    title: Option<String>,
    body: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawWorkflow {
    org: String,
    repo: String,
    workflow: String,
    #[serde(default)]
    workflow_inputs: Map<String, Value>,
    #[serde(rename = "ref")]
    git_ref: Option<String>,
    #[serde(default = "yes")]
    report_workflow_status: bool,
}

fn yes() -> bool {
    true
}

const DEFAULT_COMMIT_MESSAGE: &str =
    "{{action.title}}: {{trigger.operation}} by {{trigger.by.user}}";

/// Compiles a `GITOPS` invocation. Template files are checked by the definitions loader,
/// which can read them.
pub fn compile_gitops(
    raw: &Value,
    field: &str,
    problems: &mut Vec<SchemaProblem>,
) -> Option<GitopsInvocation> {
    let parsed: RawGitops = deserialize(raw, field).map_err(|p| problems.push(p)).ok()?;
    let provider = match (parsed.provider.as_str(), parsed.repo, parsed.remote) {
        ("github", Some(repo), _) if valid_repo(&repo) => Some(Provider::GitHub { repo }),
        ("github", _, _) => {
            problems.push(problem(
                format!("{field}.repo"),
                "provider `github` needs `repo` as `owner/name`",
            ));
            None
        }
        ("git", _, Some(remote)) if !remote.trim().is_empty() && !remote.starts_with('-') => {
            Some(Provider::Git { remote })
        }
        ("git", _, _) => {
            problems.push(problem(
                format!("{field}.remote"),
                "provider `git` needs `remote`: a URL or path the `git` command accepts",
            ));
            None
        }
        (other, _, _) => {
            problems.push(problem(
                format!("{field}.provider"),
                format!("`{other}` is not one of github, git"),
            ));
            None
        }
    };
    if !valid_branch(&parsed.base_branch) {
        problems.push(problem(
            format!("{field}.baseBranch"),
            format!("`{}` is not a branch name", parsed.base_branch),
        ));
    }
    if parsed.files.is_empty() {
        problems.push(problem(
            format!("{field}.files"),
            "names no file: [{template, path}, ...]",
        ));
    }
    for (i, file) in parsed.files.iter().enumerate() {
        let at = format!("{field}.files[{i}]");
        if let Err(e) = template::check_syntax(&file.path) {
            problems.push(problem(format!("{at}.path"), e.to_string()));
        }
        if Language::of(&file.path).is_none() {
            problems.push(problem(
                format!("{at}.path"),
                format!(
                    "portbot escapes values for the file's language: the path must end in {}",
                    iac::KNOWN_EXTENSIONS
                ),
            ));
        }
        if safe_path(&file.template).is_err() {
            problems.push(problem(
                format!("{at}.template"),
                "must be a relative path inside iac.templates_path",
            ));
        }
    }
    let commit_message = parsed
        .commit_message
        .unwrap_or_else(|| DEFAULT_COMMIT_MESSAGE.to_owned());
    let title = parsed
        .pull_request
        .title
        .unwrap_or_else(|| commit_message.clone());
    for (name, text) in [
        ("commitMessage", Some(&commit_message)),
        ("pullRequest.title", Some(&title)),
        ("pullRequest.body", parsed.pull_request.body.as_ref()),
    ] {
        if let Some(Err(e)) = text.map(|t| template::check_syntax(t)) {
            problems.push(problem(format!("{field}.{name}"), e.to_string()));
        }
    }
    Some(GitopsInvocation {
        provider: provider?,
        base_branch: parsed.base_branch,
        files: parsed.files,
        commit_message,
        pull_request_title: title,
        pull_request_body: parsed.pull_request.body,
    })
}

/// Compiles a `GITHUB` invocation.
pub fn compile_workflow(
    raw: &Value,
    field: &str,
    problems: &mut Vec<SchemaProblem>,
) -> Option<WorkflowInvocation> {
    let parsed: RawWorkflow = deserialize(raw, field).map_err(|p| problems.push(p)).ok()?;
    if !valid_repo(&format!("{}/{}", parsed.org, parsed.repo)) {
        problems.push(problem(
            format!("{field}.repo"),
            "`org` and `repo` must name a GitHub repository",
        ));
    }
    if parsed.workflow.is_empty() || parsed.workflow.contains(['/', '?', '#']) {
        problems.push(problem(
            format!("{field}.workflow"),
            "must be the workflow's file name (e.g. `deploy.yml`) or id",
        ));
    }
    if parsed.workflow_inputs.contains_key("port_context") {
        problems.push(problem(
            format!("{field}.workflowInputs.port_context"),
            "is set by portbot (it carries the run id)",
        ));
    }
    if let Err(e) = template::check_value_syntax(&Value::Object(parsed.workflow_inputs.clone())) {
        problems.push(problem(format!("{field}.workflowInputs"), e.to_string()));
    }
    Some(WorkflowInvocation {
        org: parsed.org,
        repo: parsed.repo,
        workflow: parsed.workflow,
        inputs: parsed.workflow_inputs,
        git_ref: parsed.git_ref,
        report_status: parsed.report_workflow_status,
    })
}

fn valid_repo(repo: &str) -> bool {
    let mut parts = repo.split('/');
    let ok = |p: Option<&str>| {
        p.is_some_and(|p| {
            !p.is_empty()
                && p != "."
                && p != ".."
                && p.chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        })
    };
    ok(parts.next()) && ok(parts.next()) && parts.next().is_none()
}

fn valid_branch(name: &str) -> bool {
    !name.is_empty()
        && !name.starts_with(['-', '/'])
        && !name.ends_with(['/', '.'])
        && !name.contains("..")
        && !name
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || "~^:?*[\\".contains(c))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn branches_name_their_run() {
        let run = RunId::new(1_700_000_000_000, 1, 2);
        assert_eq!(run_of_branch(&branch(&run)), Some(run.clone()));
        assert_eq!(
            run_of_branch(&format!("refs/heads/{}", branch(&run))),
            Some(run)
        );
        assert_eq!(run_of_branch("main"), None);
        assert_eq!(run_of_branch("portbot/not a run"), None);
    }

    #[test]
    fn paths_stay_inside_the_repository() {
        let gitops = GitopsInvocation {
            provider: Provider::Git {
                remote: "/srv/infra.git".into(),
            },
            base_branch: "main".into(),
            files: vec![GitopsFile {
                template: "db.tf.hbs".into(),
                path: "db/{{inputs.name}}.tf".into(),
            }],
            commit_message: "x".into(),
            pull_request_title: "x".into(),
            pull_request_body: None,
        };
        let keys = gitops
            .lock_keys(&json!({"inputs": {"name": "mailer"}}))
            .unwrap();
        assert_eq!(keys, vec!["/srv/infra.git:db/mailer.tf"]);
        for bad in ["../x", "a/../../x", ".git/config", "a//b", "/etc/passwd"] {
            assert!(
                gitops.paths(&json!({"inputs": {"name": bad}})).is_err(),
                "{bad}"
            );
        }
    }

    #[test]
    fn definitions_name_their_problems() {
        let mut problems = Vec::new();
        let compiled = compile_gitops(
            &json!({"type": "GITOPS", "provider": "github", "repo": "no-slash", "baseBranch": "a..b",
                    "files": [{"template": "../x.hbs", "path": "x/{{inputs.n}}.txt"}]}),
            "invocationMethod",
            &mut problems,
        );
        assert!(compiled.is_none());
        let fields: Vec<_> = problems.iter().map(|p| p.field.as_str()).collect();
        assert_eq!(
            fields,
            vec![
                "invocationMethod.repo",
                "invocationMethod.baseBranch",
                "invocationMethod.files[0].path",
                "invocationMethod.files[0].template"
            ]
        );
    }
}
