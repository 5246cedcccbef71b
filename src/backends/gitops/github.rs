//! The `github` provider: the run's commit is made with GitHub's Git Data API (one tree and one
//! commit on top of the base branch, then the branch ref), and the pull request with the pulls
//! API.
//!
//! Each step first looks for what an earlier attempt made, so a restart between the commit and
//! the pull request opens exactly one pull request: an existing `portbot/<run id>` branch is
//! kept, and a pull request from it (any state) is reused. GitHub's 422 "Reference already
//! exists" and "A pull request already exists" mean the same and are followed by a look-up.

use reqwest::StatusCode;
use serde_json::{json, Value};

use super::{pull_request_body, FileSet, Published, Review};
use crate::backends::watch::Observation;
use crate::backends::Dispatcher;
use crate::core::action::Operation;
use crate::core::gitops::{self, GitopsInvocation};
use crate::core::ids::RunId;
use crate::core::run::Run;
use crate::core::template;
use crate::github::{encode_path, encode_query, GitHub};

pub(super) async fn publish(
    dispatcher: &Dispatcher,
    repo: &str,
    run: &Run,
    gitops: &GitopsInvocation,
    files: &FileSet,
) -> Result<Published, String> {
    let github = &dispatcher.github;
    let mut notes = Vec::new();
    match branch_sha(github, repo, &files.branch).await? {
        Some(sha) => notes.push(format!(
            "branch {} ({}) was made by an earlier attempt; kept",
            files.branch,
            short(&sha)
        )),
        None => {
            let sha = commit(github, repo, files).await?;
            notes.push(format!(
                "committed {} on branch {}",
                short(&sha),
                files.branch
            ));
        }
    }
    let context = dispatcher.app.template_context(run);
    let title =
        template::render_text(&gitops.pull_request_title, &context).map_err(|e| e.to_string())?;
    let intro = match &gitops.pull_request_body {
        Some(body) => Some(template::render_text(body, &context).map_err(|e| e.to_string())?),
        None => None,
    };
    let body = pull_request_body(intro.as_deref(), run, &dispatcher.config.public_url);
    let (url, opened) = match find_pull(github, repo, &files.branch).await? {
        Some(pull) => (pull, false),
        None => open_pull(github, repo, files, &title, &body).await?,
    };
    notes.push(if opened {
        format!("opened pull request {url}")
    } else {
        format!("pull request {url} was opened by an earlier attempt; kept")
    });
    Ok(Published {
        link: url,
        note: notes.join("; "),
    })
}

fn short(sha: &str) -> &str {
    &sha[..sha.len().min(12)]
}

fn owner(repo: &str) -> &str {
    repo.split('/').next().unwrap_or(repo)
}

/// The commit a branch points at, if the branch exists.
async fn branch_sha(github: &GitHub, repo: &str, branch: &str) -> Result<Option<String>, String> {
    let answer = github
        .get(
            &format!("/repos/{repo}/git/ref/heads/{}", encode_path(branch)),
            &format!("the branch {branch}"),
        )
        .await
        .map_err(|e| e.to_string())?;
    if answer.status == StatusCode::NOT_FOUND {
        return Ok(None);
    }
    let body = answer
        .success(&format!("the branch {branch}"))
        .map_err(|e| e.to_string())?;
    Ok(body["object"]["sha"].as_str().map(str::to_owned))
}

/// One commit with the run's files on top of the base branch, and the run's branch at it.
async fn commit(github: &GitHub, repo: &str, files: &FileSet) -> Result<String, String> {
    let fail = |e: crate::github::GitHubError| e.to_string();
    let base_sha = branch_sha(github, repo, &files.base)
        .await?
        .ok_or_else(|| format!("the base branch `{}` does not exist in {repo}", files.base))?;
    let base_commit = github
        .get(
            &format!("/repos/{repo}/git/commits/{base_sha}"),
            "the base commit",
        )
        .await
        .map_err(fail)?
        .success("the base commit")
        .map_err(fail)?;
    let base_tree = base_commit["tree"]["sha"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let mut entries = Vec::new();
    for file in &files.files {
        let exists = github
            .get(
                &format!(
                    "/repos/{repo}/contents/{}?ref={}",
                    encode_path(&file.path),
                    encode_query(&files.base)
                ),
                &format!("the file {}", file.path),
            )
            .await
            .map_err(fail)?;
        let exists = match exists.status {
            StatusCode::NOT_FOUND => false,
            _ => {
                exists
                    .success(&format!("the file {}", file.path))
                    .map_err(fail)?;
                true
            }
        };
        if let Some(refusal) = files.refusal(&file.path, exists) {
            return Err(refusal);
        }
        entries.push(match &file.content {
            Some(content) => {
                json!({"path": file.path, "mode": "100644", "type": "blob", "content": content})
            }
            None => {
                json!({"path": file.path, "mode": "100644", "type": "blob", "sha": Value::Null})
            }
        });
    }
    let tree = github
        .post(
            &format!("/repos/{repo}/git/trees"),
            &json!({"base_tree": base_tree, "tree": entries}),
            "the new tree",
        )
        .await
        .map_err(fail)?
        .success("the new tree")
        .map_err(fail)?;
    let tree_sha = tree["sha"].as_str().unwrap_or_default();
    if tree_sha == base_tree && files.operation != Operation::Delete {
        return Err(format!(
            "the rendered files are the same as on {}: there is nothing to change",
            files.base
        ));
    }
    let commit = github
        .post(
            &format!("/repos/{repo}/git/commits"),
            &json!({
                "message": files.message,
                "tree": tree_sha,
                "parents": [base_sha],
                "author": {"name": "portbot", "email": "portbot@localhost"},
            }),
            "the commit",
        )
        .await
        .map_err(fail)?
        .success("the commit")
        .map_err(fail)?;
    let sha = commit["sha"].as_str().unwrap_or_default().to_owned();
    let created = github
        .post(
            &format!("/repos/{repo}/git/refs"),
            &json!({"ref": format!("refs/heads/{}", files.branch), "sha": sha}),
            "the branch",
        )
        .await
        .map_err(fail)?;
    if created.status == StatusCode::UNPROCESSABLE_ENTITY
        && created.message().contains("Reference already exists")
    {
        // An earlier attempt's answer was lost: its branch stands.
        return branch_sha(github, repo, &files.branch)
            .await?
            .ok_or_else(|| "GitHub says the branch exists but does not show it".to_owned());
    }
    created.success("the branch").map_err(fail)?;
    Ok(sha)
}

/// The pull request from the run's branch, in any state: its URL.
async fn find_pull(github: &GitHub, repo: &str, branch: &str) -> Result<Option<String>, String> {
    Ok(pulls(github, repo, branch)
        .await?
        .first()
        .and_then(|p| p["html_url"].as_str())
        .map(str::to_owned))
}

async fn pulls(github: &GitHub, repo: &str, branch: &str) -> Result<Vec<Value>, String> {
    let head = encode_query(&format!("{}:{branch}", owner(repo)));
    let body = github
        .get(
            &format!("/repos/{repo}/pulls?head={head}&state=all"),
            "the pull requests",
        )
        .await
        .and_then(|a| a.success("the pull requests"))
        .map_err(|e| e.to_string())?;
    Ok(body.as_array().cloned().unwrap_or_default())
}

/// Opens the pull request; its URL, and whether this call opened it.
async fn open_pull(
    github: &GitHub,
    repo: &str,
    files: &FileSet,
    title: &str,
    body: &str,
) -> Result<(String, bool), String> {
    let answer = github
        .post(
            &format!("/repos/{repo}/pulls"),
            &json!({"title": title, "head": files.branch, "base": files.base, "body": body}),
            "the pull request",
        )
        .await
        .map_err(|e| e.to_string())?;
    if answer.status == StatusCode::UNPROCESSABLE_ENTITY
        && answer.message().contains("A pull request already exists")
    {
        let url = find_pull(github, repo, &files.branch)
            .await?
            .ok_or("GitHub says the pull request exists but does not list it")?;
        return Ok((url, false));
    }
    let pull = answer
        .success("the pull request")
        .map_err(|e| e.to_string())?;
    let url = pull["html_url"].as_str().unwrap_or_default().to_owned();
    Ok((url, true))
}

/// Closes the run's pull request, if it is open.
pub(super) async fn withdraw(
    dispatcher: &Dispatcher,
    repo: &str,
    run: &RunId,
) -> Result<&'static str, String> {
    let found = pulls(&dispatcher.github, repo, &gitops::branch(run)).await?;
    let Some(number) = found
        .iter()
        .find(|p| p["state"] == "open")
        .and_then(|p| p["number"].as_u64())
    else {
        return Ok("no open pull request");
    };
    dispatcher
        .github
        .call(
            reqwest::Method::PATCH,
            &format!("/repos/{repo}/pulls/{number}"),
            Some(&json!({"state": "closed"})),
            "closing the pull request",
        )
        .await
        .and_then(|a| a.success("closing the pull request"))
        .map_err(|e| e.to_string())?;
    Ok("closed the pull request")
}

/// The completed check runs on the run's branch.
pub(super) async fn checks(
    dispatcher: &Dispatcher,
    repo: &str,
    run: &RunId,
) -> Result<Vec<Observation>, String> {
    let branch = gitops::branch(run);
    let body = dispatcher
        .github
        .get(
            &format!("/repos/{repo}/commits/{}/check-runs", encode_path(&branch)),
            "the check runs",
        )
        .await
        .and_then(|a| a.success("the check runs"))
        .map_err(|e| e.to_string())?;
    Ok(body["check_runs"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|c| c["status"] == "completed")
        .map(check_observation)
        .collect())
}

/// A check run (GitHub's JSON) as an observation.
pub fn check_observation(check: &Value) -> Observation {
    let text = |v: &Value| v.as_str().map(str::to_owned);
    Observation::Check {
        name: text(&check["name"]).unwrap_or_else(|| "check".into()),
        status: text(&check["status"]).unwrap_or_default(),
        conclusion: text(&check["conclusion"]),
        url: text(&check["html_url"]),
    }
}

/// Where the run's pull request stands.
pub(super) async fn review(
    dispatcher: &Dispatcher,
    repo: &str,
    run: &RunId,
) -> Result<Review, String> {
    let found = pulls(&dispatcher.github, repo, &gitops::branch(run)).await?;
    Ok(match found.first() {
        Some(pull) if pull["merged_at"].is_string() => Review::Merged,
        Some(pull) if pull["state"] == "closed" => Review::Closed,
        _ => Review::Open,
    })
}
