//! A fake GitHub REST API on loopback: just enough of the Git Data, contents, pulls, repository
//! and Actions APIs for portbot's GitHub backends, with GitHub's answers (404, 422 "already
//! exists"), and faults on demand (5xx, secondary rate limits, an outage, a slow answer). It
//! refuses any call without the expected token and GitHub's headers, and records every call.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use hmac::{Hmac, Mac};
use serde_json::{json, Value};
use sha2::Sha256;

pub const TOKEN: &str = "ghp_test_token";
pub const WEBHOOK_SECRET: &str = "webhook-test-secret";
pub const REPO: &str = "acme/infra";

/// One call the fake received.
#[derive(Clone, Debug)]
pub struct Call {
    pub method: String,
    /// Path and query.
    pub path: String,
    pub body: Value,
}

#[derive(Default)]
pub struct Repo {
    /// Branch -> commit sha.
    pub refs: BTreeMap<String, String>,
    /// Commit sha -> (tree sha, message).
    pub commits: HashMap<String, (String, String)>,
    /// Tree sha -> files.
    pub trees: HashMap<String, BTreeMap<String, String>>,
    pub pulls: Vec<Value>,
    pub workflow_runs: Vec<Value>,
    /// Check runs, each with the `head_branch` it ran on.
    pub check_runs: Vec<Value>,
    next: usize,
}

impl Repo {
    fn sha(&mut self) -> String {
        self.next += 1;
        format!("{:040x}", self.next)
    }

    /// The files of a branch.
    pub fn files(&self, branch: &str) -> BTreeMap<String, String> {
        let commit = &self.refs[branch];
        self.trees[&self.commits[commit].0].clone()
    }
}

#[derive(Clone)]
pub struct FakeGitHub {
    pub addr: SocketAddr,
    pub calls: Arc<Mutex<Vec<Call>>>,
    pub repo: Arc<Mutex<Repo>>,
    /// Statuses to answer the next calls with, in order (e.g. 502, 503).
    pub fail_next: Arc<Mutex<Vec<u16>>>,
    /// Answer this many next calls with a secondary rate limit (403, `retry-after: 1`).
    pub rate_limit_next: Arc<AtomicUsize>,
    /// Answer every call with 503.
    pub down: Arc<AtomicBool>,
    /// Creating the branch succeeds but answers 422 "Reference already exists" (a lost answer).
    pub lose_ref_answer: Arc<AtomicBool>,
    /// Opening the pull request succeeds but answers 422 "A pull request already exists".
    pub lose_pull_answer: Arc<AtomicBool>,
    /// Hold `POST /pulls` this long before answering (to kill portbot meanwhile).
    pub hold_pulls: Arc<Mutex<Option<Duration>>>,
}

impl FakeGitHub {
    /// A fake whose `acme/infra` has `main` with a README.
    pub async fn start() -> FakeGitHub {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut repo = Repo::default();
        let tree = repo.sha();
        repo.trees.insert(
            tree.clone(),
            [("README.md".to_owned(), "# infra\n".to_owned())].into(),
        );
        let commit = repo.sha();
        repo.commits.insert(commit.clone(), (tree, "start".into()));
        repo.refs.insert("main".into(), commit);
        let fake = FakeGitHub {
            addr: listener.local_addr().unwrap(),
            calls: Arc::default(),
            repo: Arc::new(Mutex::new(repo)),
            fail_next: Arc::default(),
            rate_limit_next: Arc::default(),
            down: Arc::default(),
            lose_ref_answer: Arc::default(),
            lose_pull_answer: Arc::default(),
            hold_pulls: Arc::default(),
        };
        let state = fake.clone();
        let router = axum::Router::new().fallback(
            move |method: Method, uri: axum::http::Uri, headers: HeaderMap, body: Bytes| {
                let state = state.clone();
                async move { state.answer(method, uri, headers, body).await }
            },
        );
        tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
        fake
    }

    pub fn api_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn calls(&self) -> Vec<Call> {
        self.calls.lock().unwrap().clone()
    }

    /// Calls whose method and path (without query) match.
    pub fn calls_to(&self, method: &str, path: &str) -> Vec<Call> {
        self.calls()
            .into_iter()
            .filter(|c| c.method == method && c.path.split('?').next() == Some(path))
            .collect()
    }

    async fn answer(
        &self,
        method: Method,
        uri: axum::http::Uri,
        headers: HeaderMap,
        body: Bytes,
    ) -> Response {
        let header = |name: &str| {
            headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
        };
        if header("authorization") != format!("Bearer {TOKEN}") {
            return (
                StatusCode::UNAUTHORIZED,
                axum::Json(json!({"message": "Bad credentials"})),
            )
                .into_response();
        }
        if header("accept") != "application/vnd.github+json"
            || header("x-github-api-version").is_empty()
            || header("user-agent").is_empty()
        {
            return (
                StatusCode::BAD_REQUEST,
                axum::Json(json!({"message": "missing GitHub headers"})),
            )
                .into_response();
        }
        let path = uri
            .path_and_query()
            .map(|p| p.as_str().to_owned())
            .unwrap_or_default();
        let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
        self.calls.lock().unwrap().push(Call {
            method: method.to_string(),
            path: path.clone(),
            body: body.clone(),
        });
        if self.down.load(SeqCst) {
            return StatusCode::SERVICE_UNAVAILABLE.into_response();
        }
        let failure = {
            let mut queue = self.fail_next.lock().unwrap();
            (!queue.is_empty()).then(|| queue.remove(0))
        };
        if let Some(status) = failure {
            return StatusCode::from_u16(status).unwrap().into_response();
        }
        if self
            .rate_limit_next
            .fetch_update(SeqCst, SeqCst, |n| n.checked_sub(1))
            .is_ok()
        {
            return (
                StatusCode::FORBIDDEN,
                [("retry-after", "1")],
                axum::Json(json!({"message": "You have exceeded a secondary rate limit."})),
            )
                .into_response();
        }
        let hold = *self.hold_pulls.lock().unwrap();
        if let (Some(hold), true) = (hold, method == Method::POST && path.ends_with("/pulls")) {
            tokio::time::sleep(hold).await;
        }
        let (status, value) = self.route(&method, &path, &body);
        if status == StatusCode::NO_CONTENT {
            return status.into_response();
        }
        (status, axum::Json(value)).into_response()
    }

    fn route(&self, method: &Method, path: &str, body: &Value) -> (StatusCode, Value) {
        let (path, query) = path.split_once('?').unwrap_or((path, ""));
        let query: HashMap<String, String> = url::form_urlencoded::parse(query.as_bytes())
            .into_owned()
            .collect();
        let not_found = (StatusCode::NOT_FOUND, json!({"message": "Not Found"}));
        let Some(rest) = path.strip_prefix(&format!("/repos/{REPO}")) else {
            return not_found;
        };
        let mut repo = self.repo.lock().unwrap();
        match (method.as_str(), rest) {
            ("GET", "") => (
                StatusCode::OK,
                json!({"full_name": REPO, "default_branch": "main"}),
            ),
            ("GET", r) if r.starts_with("/git/ref/heads/") => {
                let branch = &r["/git/ref/heads/".len()..];
                match repo.refs.get(branch) {
                    Some(sha) => (
                        StatusCode::OK,
                        json!({"ref": format!("refs/heads/{branch}"), "object": {"sha": sha, "type": "commit"}}),
                    ),
                    None => not_found,
                }
            }
            ("GET", r) if r.starts_with("/git/commits/") => {
                let sha = &r["/git/commits/".len()..];
                match repo.commits.get(sha) {
                    Some((tree, message)) => (
                        StatusCode::OK,
                        json!({"sha": sha, "tree": {"sha": tree}, "message": message}),
                    ),
                    None => not_found,
                }
            }
            ("GET", r) if r.starts_with("/contents/") => {
                let file = &r["/contents/".len()..];
                let branch = query.get("ref").cloned().unwrap_or_else(|| "main".into());
                match repo.refs.contains_key(&branch) && repo.files(&branch).contains_key(file) {
                    true => (StatusCode::OK, json!({"path": file, "type": "file"})),
                    false => not_found,
                }
            }
            ("POST", "/git/trees") => {
                let mut files = repo
                    .trees
                    .get(body["base_tree"].as_str().unwrap_or_default())
                    .cloned()
                    .unwrap_or_default();
                for entry in body["tree"].as_array().into_iter().flatten() {
                    let path = entry["path"].as_str().unwrap().to_owned();
                    match entry["content"].as_str() {
                        Some(content) => {
                            files.insert(path, content.to_owned());
                        }
                        None => {
                            files.remove(&path);
                        }
                    }
                }
                let existing = repo
                    .trees
                    .iter()
                    .find(|(_, t)| **t == files)
                    .map(|(sha, _)| sha.clone());
                let sha = existing.unwrap_or_else(|| {
                    let sha = repo.sha();
                    repo.trees.insert(sha.clone(), files);
                    sha
                });
                (StatusCode::CREATED, json!({"sha": sha}))
            }
            ("POST", "/git/commits") => {
                let sha = repo.sha();
                let tree = body["tree"].as_str().unwrap_or_default().to_owned();
                repo.commits.insert(
                    sha.clone(),
                    (
                        tree,
                        body["message"].as_str().unwrap_or_default().to_owned(),
                    ),
                );
                (StatusCode::CREATED, json!({"sha": sha}))
            }
            ("POST", "/git/refs") => {
                let branch = body["ref"]
                    .as_str()
                    .unwrap_or_default()
                    .trim_start_matches("refs/heads/")
                    .to_owned();
                if repo.refs.contains_key(&branch) {
                    return (
                        StatusCode::UNPROCESSABLE_ENTITY,
                        json!({"message": "Reference already exists"}),
                    );
                }
                repo.refs
                    .insert(branch, body["sha"].as_str().unwrap_or_default().to_owned());
                if self.lose_ref_answer.swap(false, SeqCst) {
                    return (
                        StatusCode::UNPROCESSABLE_ENTITY,
                        json!({"message": "Reference already exists"}),
                    );
                }
                (StatusCode::CREATED, json!({"ref": body["ref"]}))
            }
            ("GET", "/pulls") => {
                let head = query.get("head").cloned().unwrap_or_default();
                let found: Vec<Value> = repo
                    .pulls
                    .iter()
                    .filter(|p| {
                        head.is_empty()
                            || format!("acme:{}", p["head"]["ref"].as_str().unwrap()) == head
                    })
                    .cloned()
                    .collect();
                (StatusCode::OK, Value::Array(found))
            }
            ("POST", "/pulls") => {
                let head = body["head"].as_str().unwrap_or_default().to_owned();
                if !repo.refs.contains_key(&head) {
                    return (
                        StatusCode::UNPROCESSABLE_ENTITY,
                        json!({"message": "Validation Failed", "errors": [{"message": "head is invalid"}]}),
                    );
                }
                if repo.pulls.iter().any(|p| p["head"]["ref"] == head.as_str()) {
                    return (
                        StatusCode::UNPROCESSABLE_ENTITY,
                        json!({"message": "Validation Failed", "errors": [{"message": format!("A pull request already exists for acme:{head}.")}]}),
                    );
                }
                let number = repo.pulls.len() + 1;
                let pull = json!({
                    "number": number, "state": "open", "merged_at": null,
                    "html_url": format!("https://github.example/{REPO}/pull/{number}"),
                    "title": body["title"], "body": body["body"],
                    "head": {"ref": head}, "base": {"ref": body["base"]},
                });
                repo.pulls.push(pull.clone());
                if self.lose_pull_answer.swap(false, SeqCst) {
                    return (
                        StatusCode::UNPROCESSABLE_ENTITY,
                        json!({"message": "Validation Failed", "errors": [{"message": format!("A pull request already exists for acme:{head}.")}]}),
                    );
                }
                (StatusCode::CREATED, pull)
            }
            ("GET", r) if r.starts_with("/commits/") && r.ends_with("/check-runs") => {
                let branch = &r["/commits/".len()..r.len() - "/check-runs".len()];
                let runs: Vec<&Value> = repo
                    .check_runs
                    .iter()
                    .filter(|c| c["head_branch"] == branch)
                    .collect();
                (
                    StatusCode::OK,
                    json!({"total_count": runs.len(), "check_runs": runs}),
                )
            }
            ("PATCH", r) if r.starts_with("/pulls/") => {
                let number: u64 = r["/pulls/".len()..].parse().unwrap_or_default();
                match repo.pulls.iter_mut().find(|p| p["number"] == number) {
                    Some(pull) => {
                        if let Some(state) = body["state"].as_str() {
                            pull["state"] = json!(state);
                        }
                        (StatusCode::OK, pull.clone())
                    }
                    None => not_found,
                }
            }
            ("POST", r) if r.starts_with("/actions/workflows/") && r.ends_with("/dispatches") => {
                (StatusCode::NO_CONTENT, Value::Null)
            }
            ("GET", r) if r.starts_with("/actions/workflows/") && r.ends_with("/runs") => (
                StatusCode::OK,
                json!({"total_count": repo.workflow_runs.len(), "workflow_runs": repo.workflow_runs}),
            ),
            _ => not_found,
        }
    }

    /// What a reviewer does on GitHub: the pull request from `branch` is merged or closed.
    pub fn close_pull(&self, branch: &str, merged: bool) -> Value {
        let mut repo = self.repo.lock().unwrap();
        let pull = repo
            .pulls
            .iter_mut()
            .find(|p| p["head"]["ref"] == branch)
            .expect("a pull request");
        pull["state"] = json!("closed");
        pull["merged"] = json!(merged);
        if merged {
            pull["merged_at"] = json!("2026-11-25T12:00:00Z");
            pull["merged_by"] = json!({"login": "octo-reviewer"});
        }
        pull.clone()
    }
}

/// The shipped GitOps example, on GitHub instead of a git remote.
pub fn gitops_on_github() -> Value {
    let text =
        std::fs::read_to_string("config/catalog/actions/add-documentdb-gitops.json").unwrap();
    let mut action: Value = serde_json::from_str(&text).unwrap();
    let method = &mut action["invocationMethod"];
    method["provider"] = json!("github");
    method["repo"] = json!(REPO);
    method.as_object_mut().unwrap().remove("remote");
    action
}

/// `sha256=<hex>` as GitHub signs a webhook body.
pub fn signature(secret: &str, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// Sends a GitHub event to portbot's webhook, signed with `secret`; the status and body.
pub async fn send_event(base: &str, event: &str, payload: &Value, secret: &str) -> (u16, Value) {
    let delivery = format!("{:x}", rand::random::<u64>());
    send_delivery(base, event, payload, secret, &delivery).await
}

/// [`send_event`] with the delivery id GitHub gives it (the same when it is sent again).
pub async fn send_delivery(
    base: &str,
    event: &str,
    payload: &Value,
    secret: &str,
    delivery: &str,
) -> (u16, Value) {
    let body = serde_json::to_vec(payload).unwrap();
    let response = reqwest::Client::new()
        .post(format!("{base}/github/webhook"))
        .header("x-github-event", event)
        .header("x-github-delivery", delivery)
        .header("x-hub-signature-256", signature(secret, &body))
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}
