//! The `git` provider: any remote the `git` command accepts (a URL or a path, a local bare
//! repository included), for teams without GitHub and for the offline quick start.
//!
//! Publishing clones the remote into a fresh folder under the storage path, commits the run's
//! files as `portbot` on `portbot/<run id>` from the base branch, and pushes that branch. If the
//! branch is already on the remote (an earlier attempt pushed it before a restart), nothing is
//! pushed again. The run ends when the branch is merged into the base branch (its commit, or
//! one whose message carries the run's `Portbot-Run:` trailer, is on the base branch), or fails
//! when the branch is deleted unmerged.
//!
//! `git` runs without a shell, never prompts (`GIT_TERMINAL_PROMPT=0`) and gets none of
//! portbot's `PORTBOT*` variables; remotes are shown without any password they carry.

use std::path::{Path, PathBuf};
use std::process::Stdio;

use tokio::process::Command;

use super::{FileSet, Published, Review};
use crate::core::gitops;
use crate::core::ids::RunId;
use crate::core::run::Run;

const AUTHOR: [&str; 4] = [
    "-c",
    "user.name=portbot",
    "-c",
    "user.email=portbot@localhost",
];

/// Runs `git args` in `dir`; its output, or why it failed (with git's own message).
async fn git(dir: &Path, args: &[&str]) -> Result<String, String> {
    let mut command = Command::new("git");
    command
        .args(AUTHOR)
        .args([
            "-c",
            "commit.gpgsign=false",
            "-c",
            "core.hooksPath=/dev/null",
        ])
        .args(args)
        .current_dir(dir)
        .env("GIT_TERMINAL_PROMPT", "0")
        .env("GIT_ASKPASS", "true")
        .stdin(Stdio::null())
        .kill_on_drop(true);
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("PORTBOT") {
            command.env_remove(key);
        }
    }
    let output = command
        .output()
        .await
        .map_err(|e| format!("cannot run git: {e}"))?;
    if output.status.success() {
        Ok(String::from_utf8_lossy(&output.stdout).trim().to_owned())
    } else {
        let stderr = String::from_utf8_lossy(&output.stderr);
        Err(format!("`git {}` failed: {}", args[0], stderr.trim()))
    }
}

/// A remote as it may be shown: without the password of `https://user:password@host/...`.
pub fn shown(remote: &str) -> String {
    match remote.split_once("://") {
        Some((scheme, rest)) => match rest.split_once('@') {
            Some((userinfo, host)) if !userinfo.contains('/') => {
                let user = userinfo.split(':').next().unwrap_or_default();
                format!("{scheme}://{user}:***@{host}")
            }
            _ => remote.to_owned(),
        },
        None => remote.to_owned(),
    }
}

/// Hides the remote's password in git's messages too.
fn hide(remote: &str, message: String) -> String {
    let shown = shown(remote);
    if shown == remote {
        message
    } else {
        message.replace(remote, &shown)
    }
}

/// The remote as `git` is given it: a relative local path is taken from portbot's working
/// folder (git runs in its own), so `data/infra.git` in the shipped config works.
fn resolved(remote: &str) -> String {
    let is_url = remote.contains("://")
        || remote
            .split_once(':')
            .is_some_and(|(host, _)| !host.contains('/'));
    let path = Path::new(remote);
    if is_url || path.is_absolute() {
        return remote.to_owned();
    }
    std::env::current_dir()
        .map(|cwd| cwd.join(path).to_string_lossy().into_owned())
        .unwrap_or_else(|_| remote.to_owned())
}

/// A folder under `work_dir`, emptied.
fn fresh_dir(work_dir: &Path, name: &str) -> Result<PathBuf, String> {
    let dir = work_dir.join(name);
    if dir.exists() {
        std::fs::remove_dir_all(&dir)
            .map_err(|e| format!("cannot clear {}: {e}", dir.display()))?;
    }
    std::fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    Ok(dir)
}

pub(super) async fn publish(
    work_dir: &Path,
    remote: &str,
    run: &Run,
    files: &FileSet,
) -> Result<Published, String> {
    let dir = fresh_dir(work_dir, run.id.as_str())?;
    let result = publish_in(&dir, remote, files)
        .await
        .map_err(|e| hide(remote, e));
    let _ = std::fs::remove_dir_all(&dir);
    let (sha, again) = result?;
    let short = &sha[..sha.len().min(12)];
    let note = if again {
        format!(
            "branch {} ({short}) was already pushed to {} before a restart; not pushed again",
            files.branch,
            shown(remote)
        )
    } else {
        format!(
            "pushed branch {} ({short}) to {}: merge it into {} to apply the change, or delete it to cancel",
            files.branch,
            shown(remote),
            files.base
        )
    };
    Ok(Published {
        link: format!("{}#{}", shown(remote), files.branch),
        note,
    })
}

/// Commits and pushes in a fresh clone; the branch's commit, and whether it was there already.
async fn publish_in(dir: &Path, remote: &str, files: &FileSet) -> Result<(String, bool), String> {
    git(
        dir,
        &[
            "clone",
            "--quiet",
            "--no-tags",
            "--",
            &resolved(remote),
            ".",
        ],
    )
    .await?;
    let existing = format!("refs/remotes/origin/{}", files.branch);
    if let Ok(sha) = git(dir, &["rev-parse", "--verify", "--quiet", &existing]).await {
        return Ok((sha, true));
    }
    let base = format!("origin/{}", files.base);
    if git(dir, &["rev-parse", "--verify", "--quiet", &base])
        .await
        .is_err()
    {
        return Err(format!(
            "the base branch `{}` does not exist in {}",
            files.base,
            shown(remote)
        ));
    }
    git(dir, &["checkout", "--quiet", "-B", &files.branch, &base]).await?;
    for file in &files.files {
        let target = dir.join(&file.path);
        if let Some(refusal) = files.refusal(&file.path, target.is_file()) {
            return Err(refusal);
        }
        match &file.content {
            Some(content) => {
                if let Some(parent) = target.parent() {
                    std::fs::create_dir_all(parent).map_err(|e| e.to_string())?;
                }
                std::fs::write(&target, content).map_err(|e| e.to_string())?;
            }
            None => std::fs::remove_file(&target).map_err(|e| e.to_string())?,
        }
        git(dir, &["add", "--all", "--", &file.path]).await?;
    }
    if git(dir, &["diff", "--cached", "--quiet"]).await.is_ok() {
        return Err(format!(
            "the rendered files are the same as on {}: there is nothing to change",
            files.base
        ));
    }
    git(
        dir,
        &["commit", "--quiet", "--no-verify", "-m", &files.message],
    )
    .await?;
    let refspec = format!("refs/heads/{0}:refs/heads/{0}", files.branch);
    git(dir, &["push", "--quiet", "origin", &refspec]).await?;
    Ok((git(dir, &["rev-parse", "HEAD"]).await?, false))
}

/// Deletes the run's branch from the remote, if it is there.
pub(super) async fn withdraw(
    work_dir: &Path,
    remote: &str,
    run: &RunId,
) -> Result<&'static str, String> {
    let dir = fresh_dir(work_dir, &format!("withdraw-{run}"))?;
    let branch = format!("refs/heads/{}", gitops::branch(run));
    let remote_path = resolved(remote);
    let result = async {
        git(&dir, &["init", "--quiet"]).await?;
        let found = git(&dir, &["ls-remote", "--heads", "--", &remote_path, &branch]).await?;
        if found.is_empty() {
            return Ok("the branch was already gone");
        }
        git(
            &dir,
            &["push", "--quiet", &remote_path, &format!(":{branch}")],
        )
        .await?;
        Ok("deleted the branch")
    }
    .await
    .map_err(|e| hide(remote, e));
    let _ = std::fs::remove_dir_all(&dir);
    result
}

/// Where the run's branch stands on the remote, from a bare mirror kept under `work_dir`.
pub(super) async fn review(
    work_dir: &Path,
    remote: &str,
    base: &str,
    run: &RunId,
) -> Result<Review, String> {
    let mirror = work_dir.join("mirrors").join(format!(
        "{:016x}",
        crate::definitions::stable_hash(&remote.into())
    ));
    if !mirror.join("HEAD").is_file() {
        let dir = fresh_dir(&mirror, "")?;
        git(
            &dir,
            &["clone", "--quiet", "--bare", "--", &resolved(remote), "."],
        )
        .await
        .map_err(|e| hide(remote, e))?;
    } else {
        git(
            &mirror,
            &[
                "fetch",
                "--quiet",
                "--prune",
                "origin",
                "+refs/heads/*:refs/heads/*",
            ],
        )
        .await
        .map_err(|e| hide(remote, e))?;
    }
    let base_ref = format!("refs/heads/{base}");
    let grep = gitops::trailer(run);
    let merged = git(
        &mirror,
        &[
            "log",
            &base_ref,
            "--fixed-strings",
            "--grep",
            &grep,
            "--format=%H",
            "-n",
            "1",
        ],
    )
    .await?;
    let branch = format!("refs/heads/{}", gitops::branch(run));
    let branch_tip = git(&mirror, &["rev-parse", "--verify", "--quiet", &branch])
        .await
        .ok();
    Ok(match branch_tip {
        _ if !merged.is_empty() => Review::Merged,
        Some(tip)
            if git(&mirror, &["merge-base", "--is-ancestor", &tip, &base_ref])
                .await
                .is_ok() =>
        {
            Review::Merged
        }
        Some(_) => Review::Open,
        None => Review::Closed,
    })
}
