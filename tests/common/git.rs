//! A local bare git repository standing in for a team's infrastructure repository, with what a
//! reviewer does to it (merge a branch, delete one) and ways to read it back.

use std::path::{Path, PathBuf};
use std::process::Command;

/// Runs git in `dir`; its trimmed output. Panics with git's message on failure.
pub fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .args([
            "-c",
            "user.name=reviewer",
            "-c",
            "user.email=reviewer@example.com",
        ])
        .args(args)
        .current_dir(dir)
        .env("GIT_TERMINAL_PROMPT", "0")
        .output()
        .expect("git runs");
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

pub struct BareRepo {
    pub path: PathBuf,
    _dir: tempfile::TempDir,
}

impl BareRepo {
    /// A bare repository whose `main` has one commit with a README.
    pub fn new() -> BareRepo {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("infra.git");
        std::fs::create_dir_all(&path).unwrap();
        git(
            &path,
            &["init", "--quiet", "--bare", "--initial-branch=main"],
        );
        let repo = BareRepo { path, _dir: dir };
        repo.in_clone(|work| {
            std::fs::write(work.join("README.md"), "# infra\n").unwrap();
            git(work, &["add", "README.md"]);
            git(work, &["commit", "--quiet", "-m", "start"]);
            git(work, &["push", "--quiet", "origin", "HEAD:main"]);
        });
        repo
    }

    pub fn remote(&self) -> String {
        self.path.to_string_lossy().into_owned()
    }

    /// Runs `work` in a fresh clone.
    pub fn in_clone<T>(&self, work: impl FnOnce(&Path) -> T) -> T {
        let clone = tempfile::tempdir().unwrap();
        git(clone.path(), &["clone", "--quiet", &self.remote(), "."]);
        work(clone.path())
    }

    pub fn git(&self, args: &[&str]) -> String {
        git(&self.path, args)
    }

    /// Whether the branch exists.
    pub fn has_branch(&self, branch: &str) -> bool {
        !self.git(&["branch", "--list", branch]).is_empty()
    }

    /// Paths in the tree of `rev`.
    pub fn files(&self, rev: &str) -> Vec<String> {
        self.git(&["ls-tree", "-r", "--name-only", rev])
            .lines()
            .map(str::to_owned)
            .collect()
    }

    pub fn file(&self, rev: &str, path: &str) -> String {
        self.git(&["show", &format!("{rev}:{path}")])
    }

    /// `subject|author name|author email` of each commit in `range`, newest first.
    pub fn commits(&self, range: &str) -> Vec<String> {
        self.git(&["log", "--format=%s|%an|%ae", range])
            .lines()
            .map(str::to_owned)
            .collect()
    }

    /// What a reviewer's merge does: `branch` merged into main with a merge commit, pushed.
    pub fn merge(&self, branch: &str) {
        self.in_clone(|work| {
            git(
                work,
                &[
                    "merge",
                    "--quiet",
                    "--no-ff",
                    "-m",
                    "merge",
                    &format!("origin/{branch}"),
                ],
            );
            git(work, &["push", "--quiet", "origin", "HEAD:main"]);
        });
    }

    pub fn delete_branch(&self, branch: &str) {
        self.git(&["branch", "-D", branch]);
    }
}

/// Runs `terraform fmt -check` on HCL text where terraform is installed; prints why not where
/// it is not.
pub fn terraform_fmt_check(hcl: &str) {
    let Ok(version) = Command::new("terraform").arg("version").output() else {
        println!("terraform fmt -check skipped: `terraform` is not installed on this machine");
        return;
    };
    assert!(version.status.success());
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("main.tf"), hcl).unwrap();
    let out = Command::new("terraform")
        .args(["fmt", "-check", "-diff", "main.tf"])
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "terraform fmt -check failed:\n{}\n{}\n{hcl}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
