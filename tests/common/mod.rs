//! Test harness: the real app on a random loopback port with sled in a temporary folder, the
//! shipped catalog plus per-test actions, and small fake backends.

#![allow(dead_code)] // each test binary uses a different part of the harness

pub mod discord;
pub mod git;
pub mod github;
pub mod slack;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::http::{HeaderMap, StatusCode};
use hmac::Mac;
use serde_json::{json, Value};
use tempfile::TempDir;

use portbot::config::Settings;
use portbot::startup::{Application, DEMO_SECRET};

pub const ADMIN: &str = "portbot-cli";
pub const BACKEND: &str = "portbot-backend";

/// Seeded mutations of `bodies` (so a failure names a body that fails again): 60 rounds of
/// each, one change per body, two every third round; each with the index of the body it came
/// from. No text comes twice: the same body signed in the same second would be a replay.
pub fn mutations(bodies: &[String], seed: u64) -> Vec<(usize, String)> {
    use rand::SeedableRng;
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut seen = std::collections::HashSet::new();
    let mut out = Vec::new();
    for round in 0..60 {
        for (index, body) in bodies.iter().enumerate() {
            let mut body = mutated(body, &mut rng);
            if round % 3 == 0 {
                body = mutated(&body, &mut rng);
            }
            if seen.insert(body.clone()) {
                out.push((index, body));
            }
        }
    }
    out
}

/// `body` with one random change: cut short, a stretch removed, characters that mean
/// something to a form or JSON parser put in, or (in a quarter of the changes to a JSON body,
/// or to a form whose `payload` is JSON) one value of the JSON turned into another kind, so that
/// a body that still parses reaches every reading of its fields.
fn mutated(body: &str, rng: &mut impl rand::Rng) -> String {
    if rng.random_range(0..4) == 0 {
        if let Some(retyped) = retyped(body, rng) {
            return retyped;
        }
    }
    const TRICKY: [&str; 14] = [
        "%", "%ZZ", "%FF", "&", "=", "+", "{", "}", "[", "\"", "\\", "\u{0}", "é", "%7B",
    ];
    let mut chars: Vec<char> = body.chars().collect();
    let at = rng.random_range(0..=chars.len());
    match rng.random_range(0..3) {
        0 => chars.truncate(at),
        1 => {
            let end = (at + rng.random_range(1..40)).min(chars.len());
            chars.drain(at..end);
        }
        _ => {
            let insert = TRICKY[rng.random_range(0..TRICKY.len())];
            chars.splice(at..at, insert.chars());
        }
    }
    chars.into_iter().collect()
}

/// `body` (JSON, or a form with a JSON `payload`) with one value of its JSON, at any depth,
/// replaced by a value of another kind; `None` for a body with no JSON in it.
fn retyped(body: &str, rng: &mut impl rand::Rng) -> Option<String> {
    let mut fields: Vec<(String, String)> = match serde_json::from_str::<Value>(body) {
        Ok(_) => vec![(String::new(), body.to_owned())],
        Err(_) => serde_urlencoded::from_str(body).ok()?,
    };
    let (_, text) = fields
        .iter_mut()
        .find(|(name, _)| name.is_empty() || name == "payload")?;
    let mut json: Value = serde_json::from_str(text).ok()?;
    let mut places = Vec::new();
    json_places(&json, "", &mut places);
    let place = places
        .get(rng.random_range(0..places.len().max(1)))?
        .clone();
    let kinds = [
        Value::Null,
        json!(true),
        json!(-1),
        json!(1.5),
        json!(""),
        json!("r_0123456789abcdef"),
        json!([]),
        json!({}),
        json!([{"value": 7}]),
        json!("x".repeat(5000)),
    ];
    *json.pointer_mut(&place)? = kinds[rng.random_range(0..kinds.len())].clone();
    *text = json.to_string();
    match fields[0].0.is_empty() {
        true => Some(fields.swap_remove(0).1),
        false => serde_urlencoded::to_string(fields).ok(),
    }
}

/// The JSON pointers of every value inside `json` (not `json` itself), below `at`.
fn json_places(json: &Value, at: &str, places: &mut Vec<String>) {
    let children: Vec<(String, &Value)> = match json {
        Value::Object(map) => map
            .iter()
            .map(|(key, value)| (key.replace('~', "~0").replace('/', "~1"), value))
            .collect(),
        Value::Array(items) => items
            .iter()
            .enumerate()
            .map(|(index, value)| (index.to_string(), value))
            .collect(),
        _ => return,
    };
    for (step, value) in children {
        let place = format!("{at}/{step}");
        places.push(place.clone());
        json_places(value, &place, places);
    }
}

/// The answers to malformed requests, by status: each must be an answer a client can act on
/// (200, 400, 413), never a server error.
#[derive(Default)]
pub struct MalformedAnswers(std::collections::BTreeMap<u16, usize>);

impl MalformedAnswers {
    pub fn record(&mut self, status: u16, answer: &dyn std::fmt::Display, body: &str) {
        assert!(
            matches!(status, 200 | 400 | 413),
            "answered {status} ({answer}) to {body:?}"
        );
        *self.0.entry(status).or_default() += 1;
    }

    /// That the bodies got past the signature check and into the parsers: some were refused,
    /// some acted on.
    pub fn assert_parsed(&self) {
        println!("answers by status: {:?}", self.0);
        assert!(
            self.0.contains_key(&400) && self.0.contains_key(&200),
            "{:?}",
            self.0
        );
    }
}

/// Copies a folder tree.
pub fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.path().is_dir() {
            copy_tree(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

/// A temporary deployment folder: the shipped catalog plus `extra_actions`.
pub fn deployment(extra_actions: &[Value]) -> TempDir {
    let dir = tempfile::tempdir().unwrap();
    copy_tree(Path::new("config/catalog"), &dir.path().join("catalog"));
    for action in extra_actions {
        let name = action["identifier"].as_str().unwrap();
        std::fs::write(
            dir.path().join(format!("catalog/actions/{name}.json")),
            serde_json::to_vec_pretty(action).unwrap(),
        )
        .unwrap();
    }
    dir
}

pub fn settings_for(dir: &Path) -> Settings {
    let mut settings = Settings::load(None).expect("config/default.toml loads");
    settings.server.bind = "127.0.0.1:0".parse().unwrap();
    settings.storage.path = dir.join("db");
    settings.catalog.path = dir.join("catalog");
    settings.backends.webhook.max_attempts = 4;
    settings.backends.webhook.initial_backoff_ms = 100;
    settings.backends.webhook.max_backoff_ms = 300;
    settings.backends.webhook.timeout_seconds = 5;
    settings
}

pub struct TestApp {
    pub base: String,
    pub http: reqwest::Client,
    pub dir: TempDir,
    admin_token: String,
    backend_token: String,
}

impl TestApp {
    pub async fn spawn(extra_actions: &[Value]) -> TestApp {
        TestApp::spawn_with(extra_actions, |_| {}).await
    }

    /// Like [`TestApp::spawn`], with settings changed by `tweak` first.
    pub async fn spawn_with(extra_actions: &[Value], tweak: impl FnOnce(&mut Settings)) -> TestApp {
        let dir = deployment(extra_actions);
        let mut settings = settings_for(dir.path());
        tweak(&mut settings);
        let application = Application::build(settings).await.expect("app builds");
        let addr = application.local_addr();
        tokio::spawn(application.run_until_stopped());
        TestApp::connect(addr, dir).await
    }

    /// Connects to a running server (in-process or a child process).
    pub async fn connect(addr: SocketAddr, dir: TempDir) -> TestApp {
        let http = reqwest::Client::new();
        let base = format!("http://{addr}");
        let admin_token = token(&http, &base, ADMIN, DEMO_SECRET).await;
        let backend_token = token(&http, &base, BACKEND, DEMO_SECRET).await;
        TestApp {
            base,
            http,
            dir,
            admin_token,
            backend_token,
        }
    }

    /// A request as the admin client, acting for `user` when given.
    pub async fn admin(
        &self,
        method: &str,
        path: &str,
        user: Option<&str>,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut url = format!("{}{path}", self.base);
        if let Some(user) = user {
            url.push(if path.contains('?') { '&' } else { '?' });
            url.push_str(&format!("run_as={user}"));
        }
        self.send(method, &url, &self.admin_token.clone(), body)
            .await
    }

    /// A request as the backend client.
    pub async fn backend(
        &self,
        method: &str,
        path: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let url = format!("{}{path}", self.base);
        self.send(method, &url, &self.backend_token.clone(), body)
            .await
    }

    pub async fn send(
        &self,
        method: &str,
        url: &str,
        token: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut request = self
            .http
            .request(method.parse().unwrap(), url)
            .bearer_auth(token);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.expect("the server answers");
        let status = StatusCode::from_u16(response.status().as_u16()).unwrap();
        let body = response.json().await.unwrap_or(Value::Null);
        (status, body)
    }

    /// Sends `body` as it is, with `content_type`, as the admin client.
    pub async fn send_raw(
        &self,
        method: &str,
        path: &str,
        content_type: &str,
        body: Vec<u8>,
    ) -> (StatusCode, Value) {
        let response = self
            .http
            .request(method.parse().unwrap(), format!("{}{path}", self.base))
            .bearer_auth(&self.admin_token)
            .header("content-type", content_type)
            .body(body)
            .send()
            .await
            .expect("the server answers");
        let status = StatusCode::from_u16(response.status().as_u16()).unwrap();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    /// Requests a run as `user`; returns the status and the body.
    pub async fn request_run(
        &self,
        user: &str,
        action: &str,
        entity: Option<&str>,
        properties: Value,
    ) -> (StatusCode, Value) {
        self.admin(
            "POST",
            &format!("/v1/actions/{action}/runs"),
            Some(user),
            Some(json!({"entity": entity, "properties": properties})),
        )
        .await
    }

    /// Requests a run that must be accepted; returns its id.
    pub async fn run_id(
        &self,
        user: &str,
        action: &str,
        entity: Option<&str>,
        properties: Value,
    ) -> String {
        let (status, body) = self.request_run(user, action, entity, properties).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        body["run"]["id"].as_str().unwrap().to_owned()
    }

    pub async fn decide(&self, user: &str, run: &str, decision: &str) -> (StatusCode, Value) {
        self.admin(
            "PATCH",
            &format!("/v1/actions/runs/{run}/approval"),
            Some(user),
            Some(json!({"status": decision, "description": "from a test"})),
        )
        .await
    }

    pub async fn run(&self, id: &str) -> Value {
        let (status, body) = self
            .admin("GET", &format!("/v1/actions/runs/{id}"), None, None)
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        body["run"].clone()
    }

    /// Waits (up to 20 s) until the run has `status`.
    pub async fn wait_for(&self, id: &str, status: &str) -> Value {
        for _ in 0..200 {
            let run = self.run(id).await;
            if run["status"] == status {
                return run;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("run {id} never reached {status}: {}", self.run(id).await);
    }

    /// Port's `PATCH /runs/{id}` as the backend client.
    pub async fn patch_run(&self, id: &str, patch: Value) -> (StatusCode, Value) {
        let path = format!("/v1/actions/runs/{id}");
        self.backend("PATCH", &path, Some(patch)).await
    }

    /// Waits (up to 20 s) until the run has a link or is no longer in progress: a GITOPS or
    /// GITHUB run has then published its change (or failed to).
    pub async fn wait_for_link(&self, id: &str) -> Value {
        for _ in 0..200 {
            let run = self.run(id).await;
            if run["link"].is_string() || run["status"] != "IN_PROGRESS" {
                return run;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("run {id} never got a link: {}", self.run(id).await);
    }

    /// Asserts, reading the log once, that a line of the run matches. Right after the run's link
    /// appears is a fair moment: a backend's note on what it did is recorded in the same change
    /// as the link.
    pub async fn assert_logged(&self, id: &str, wanted: impl Fn(&str) -> bool) {
        let lines = self.log_lines(id).await;
        assert!(
            lines.iter().any(|l| wanted(l)),
            "run {id} has not logged the line: {lines:?}"
        );
    }

    /// Waits (up to 10 s) until a line of the run matches; a backend's note on what it did is
    /// recorded after the receiver has it.
    pub async fn wait_for_logged(&self, id: &str, wanted: impl Fn(&str) -> bool) {
        for _ in 0..100 {
            if self.log_lines(id).await.iter().any(|l| wanted(l)) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        self.assert_logged(id, wanted).await;
    }

    /// A catalog entity through the API: the status and the entity (`Null` if none).
    pub async fn entity(&self, blueprint: &str, id: &str) -> (StatusCode, Value) {
        let path = format!("/v1/blueprints/{blueprint}/entities/{id}");
        let (status, body) = self.admin("GET", &path, None, None).await;
        (status, body["entity"].clone())
    }

    pub async fn log_lines(&self, id: &str) -> Vec<String> {
        let (status, body) = self
            .admin("GET", &format!("/v1/actions/runs/{id}/logs"), None, None)
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        body["runLogs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| l["message"].as_str().unwrap().to_owned())
            .collect()
    }
}

async fn token(http: &reqwest::Client, base: &str, id: &str, secret: &str) -> String {
    let body: Value = http
        .post(format!("{base}/v1/auth/access_token"))
        .json(&json!({"clientId": id, "clientSecret": secret}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    body["accessToken"].as_str().expect("a token").to_owned()
}

/// One request a fake webhook receiver got.
#[derive(Clone, Debug)]
pub struct Received {
    /// The request's path and query.
    pub path: String,
    pub headers: HeaderMap,
    pub body: Vec<u8>,
}

/// A fake webhook receiver on loopback that records requests and answers `status`.
#[derive(Clone)]
pub struct Receiver {
    pub received: Arc<Mutex<Vec<Received>>>,
    pub status: Arc<std::sync::atomic::AtomicU16>,
    pub addr: SocketAddr,
}

impl Receiver {
    pub async fn start() -> Receiver {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        Receiver::serve(listener)
    }

    /// Starts listening on an address chosen earlier (a backend that comes up late).
    pub async fn start_on(addr: SocketAddr) -> Receiver {
        let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
        Receiver::serve(listener)
    }

    fn serve(listener: tokio::net::TcpListener) -> Receiver {
        let receiver = Receiver {
            received: Arc::default(),
            status: Arc::new(std::sync::atomic::AtomicU16::new(202)),
            addr: listener.local_addr().unwrap(),
        };
        let state = receiver.clone();
        let router = axum::Router::new().fallback(
            move |uri: axum::http::Uri, headers: HeaderMap, body: axum::body::Bytes| {
                let state = state.clone();
                async move {
                    state.received.lock().unwrap().push(Received {
                        path: uri.to_string(),
                        headers,
                        body: body.to_vec(),
                    });
                    StatusCode::from_u16(state.status.load(std::sync::atomic::Ordering::SeqCst))
                        .unwrap()
                }
            },
        );
        tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
        receiver
    }

    pub fn url(&self) -> String {
        format!("http://{}/hook", self.addr)
    }

    pub fn count(&self) -> usize {
        self.received.lock().unwrap().len()
    }

    /// The first request received, waiting up to 10 s for it.
    pub async fn first(&self) -> Received {
        for _ in 0..100 {
            if let Some(first) = self.received.lock().unwrap().first() {
                return first.clone();
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("the receiver got no request in 10 s");
    }
}

/// Verifies `x-port-signature` exactly as a Port webhook receiver does.
pub fn verify_port_signature(secret: &str, received: &Received) -> bool {
    let timestamp = received.headers["x-port-timestamp"].to_str().unwrap();
    let signature = received.headers["x-port-signature"].to_str().unwrap();
    let Some(encoded) = signature.strip_prefix("v1,") else {
        return false;
    };
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(format!("{timestamp}.").as_bytes());
    mac.update(&received.body);
    let expected = base64::Engine::encode(
        &base64::engine::general_purpose::STANDARD,
        mac.finalize().into_bytes(),
    );
    let age = chrono::Utc::now().timestamp() - timestamp.parse::<i64>().unwrap();
    expected == encoded && (0..300).contains(&age)
}

/// A loopback address nothing listens on (yet).
pub fn free_addr() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

/// A minimal action definition on Component with the given invocation.
pub fn action(identifier: &str, operation: &str, invocation: Value, approval: bool) -> Value {
    json!({
        "identifier": identifier,
        "title": identifier,
        "trigger": {
            "type": "self-service",
            "operation": operation,
            "blueprintIdentifier": "Component",
            "userInputs": {"properties": {"size": {"type": "number", "minimum": 1, "maximum": 3, "default": 1}}, "required": []}
        },
        "invocationMethod": invocation,
        "requiredApproval": approval,
        "permissions": {"execute": {"teams": ["developers", "devops"]}, "approve": {"teams": ["devops"]}}
    })
}

/// The path of the built binary, for tests that start and kill it.
pub fn binary() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_portbot"))
}

/// One Web API call a fake Slack received.
#[derive(Clone, Debug)]
pub struct SlackCall {
    pub method: String,
    pub authorization: String,
    pub content_type: String,
    pub body: Value,
}

/// A fake Slack Web API on loopback: records calls and answers like Slack (`ts` for posts).
/// It refuses with 429 a post that comes sooner than `FAKE_SLACK_INTERVAL` after the previous
/// post to the same channel, as Slack does, and can be told to answer 429 a few times.
#[derive(Clone)]
pub struct FakeSlack {
    pub calls: Arc<Mutex<Vec<SlackCall>>>,
    pub addr: SocketAddr,
    /// Posts refused for coming too fast.
    pub too_fast: Arc<std::sync::atomic::AtomicUsize>,
    /// Answer this many next calls with 429 `Retry-After: 1`.
    pub throttle_next: Arc<std::sync::atomic::AtomicUsize>,
    /// Answer this many next calls with `{"ok": false, "error": "internal_error"}`.
    pub refuse_next: Arc<std::sync::atomic::AtomicUsize>,
    /// While set to (method, error), answer every call of the method with `{"ok": false, error}`.
    pub refuse_method: Arc<Mutex<Option<(String, String)>>>,
    /// While set, a message whose blocks take more than this many characters (as JSON) is
    /// refused with `msg_blocks_too_long`, as Slack has done below its documented limits.
    pub refuse_blocks_over: Arc<Mutex<Option<usize>>>,
    /// While set, a message whose blocks hold this text (as JSON) is refused with
    /// `invalid_blocks`, as Slack refuses a block it takes for malformed.
    pub refuse_blocks_with: Arc<Mutex<Option<String>>>,
    /// The channels of the calls `refuse_method` refused, in order.
    pub refused_in: Arc<Mutex<Vec<String>>>,
    /// Answer this many next calls with HTTP 503.
    pub fail_next: Arc<std::sync::atomic::AtomicUsize>,
    /// Answer every call with this bot token with HTTP 503, even one that arrives late: a bot
    /// process killed during an outage never gets through.
    pub down_for_token: Arc<Mutex<Option<String>>>,
    /// Channels the bot is not in: posts get `not_in_channel` until it joins.
    pub not_in: Arc<Mutex<std::collections::HashSet<String>>>,
    /// Channels the bot cannot join (private ones).
    pub private: Arc<Mutex<std::collections::HashSet<String>>>,
    /// What `apps.connections.open` hands out (Socket Mode).
    pub socket_url: Arc<Mutex<Option<String>>>,
    /// Calls refused for breaking Slack's message limits (blocks, text lengths).
    pub invalid: Arc<std::sync::atomic::AtomicUsize>,
    /// When each `trigger_id` was handed out; `views.open` refuses one older than 3 s.
    pub triggers: Arc<Mutex<std::collections::HashMap<String, std::time::Instant>>>,
    last_post: Arc<Mutex<std::collections::HashMap<String, std::time::Instant>>>,
}

/// A request header's text; empty when it is missing or not text.
fn header_text(headers: &HeaderMap, name: &str) -> String {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned()
}

/// The pace the fake Slack enforces per channel (portbot's is set a little slower in tests).
pub const FAKE_SLACK_INTERVAL: std::time::Duration = std::time::Duration::from_millis(90);

impl FakeSlack {
    pub async fn start() -> FakeSlack {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let fake = FakeSlack {
            calls: Arc::default(),
            addr: listener.local_addr().unwrap(),
            too_fast: Arc::default(),
            throttle_next: Arc::default(),
            refuse_next: Arc::default(),
            refuse_method: Arc::default(),
            refused_in: Arc::default(),
            refuse_blocks_over: Arc::default(),
            refuse_blocks_with: Arc::default(),
            fail_next: Arc::default(),
            down_for_token: Arc::default(),
            not_in: Arc::default(),
            private: Arc::default(),
            socket_url: Arc::default(),
            invalid: Arc::default(),
            triggers: Arc::default(),
            last_post: Arc::default(),
        };
        let state = fake.clone();
        let router =
            axum::Router::new().route(
                "/api/{method}",
                axum::routing::post(
                    move |axum::extract::Path(method): axum::extract::Path<String>,
                          headers: HeaderMap,
                          body: axum::body::Bytes| {
                        let state = state.clone();
                        async move {
                            let header = |name: &str| header_text(&headers, name);
                            use axum::response::IntoResponse;
                            use std::sync::atomic::Ordering::SeqCst;
                            let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
                            let take = |counter: &std::sync::atomic::AtomicUsize| {
                                counter
                                    .fetch_update(SeqCst, SeqCst, |n| n.checked_sub(1))
                                    .is_ok()
                            };
                            let down = state.down_for_token.lock().unwrap().as_ref().is_some_and(
                                |token| header("authorization") == format!("Bearer {token}"),
                            );
                            if down || take(&state.fail_next) {
                                return StatusCode::SERVICE_UNAVAILABLE.into_response();
                            }
                            let refused_method = state
                                .refuse_method
                                .lock()
                                .unwrap()
                                .clone()
                                .filter(|(refused, _)| *refused == method)
                                .map(|(_, error)| error);
                            if let Some(error) = refused_method {
                                let channel = body["channel"].as_str().unwrap_or_default();
                                state.refused_in.lock().unwrap().push(channel.to_owned());
                                return axum::Json(json!({"ok": false, "error": error}))
                                    .into_response();
                            }
                            if take(&state.refuse_next) {
                                return axum::Json(json!({"ok": false, "error": "internal_error"}))
                                    .into_response();
                            }
                            let channel = body["channel"].as_str().unwrap_or_default().to_owned();
                            let refuse = |error: &str| {
                                axum::Json(json!({"ok": false, "error": error})).into_response()
                            };
                            if method == "conversations.join" {
                                if state.private.lock().unwrap().contains(&channel) {
                                    return refuse("method_not_supported_for_channel_type");
                                }
                                state.not_in.lock().unwrap().remove(&channel);
                            }
                            if method == "apps.connections.open" {
                                let url = state.socket_url.lock().unwrap().clone();
                                state.calls.lock().unwrap().push(SlackCall {
                                    method: method.clone(),
                                    authorization: header("authorization"),
                                    content_type: header("content-type"),
                                    body: body.clone(),
                                });
                                return axum::Json(json!({"ok": true, "url": url})).into_response();
                            }
                            let blocks_over = *state.refuse_blocks_over.lock().unwrap();
                            if blocks_over.is_some_and(|most| {
                                body.get("blocks")
                                    .is_some_and(|b| b.to_string().len() > most)
                            }) {
                                return refuse("msg_blocks_too_long");
                            }
                            let blocks_with = state.refuse_blocks_with.lock().unwrap().clone();
                            if blocks_with.is_some_and(|text| {
                                body.get("blocks")
                                    .is_some_and(|b| b.to_string().contains(&text))
                            }) {
                                return refuse("invalid_blocks");
                            }
                            if let Some(problem) = limits_broken(&method, &body) {
                                state.invalid.fetch_add(1, SeqCst);
                                return refuse(&problem);
                            }
                            if method == "views.open" {
                                let trigger = body["trigger_id"].as_str().unwrap_or_default();
                                let issued = state.triggers.lock().unwrap().get(trigger).copied();
                                if issued.is_some_and(|at| {
                                    at.elapsed() > std::time::Duration::from_secs(3)
                                }) {
                                    return refuse("expired_trigger_id");
                                }
                            }
                            if method == "conversations.open" {
                                let user = body["users"].as_str().unwrap_or_default();
                                return axum::Json(
                                    json!({"ok": true, "channel": {"id": format!("D{user}")}}),
                                )
                                .into_response();
                            }
                            if method == "chat.postMessage"
                                && state.not_in.lock().unwrap().contains(&channel)
                            {
                                return refuse("not_in_channel");
                            }
                            let throttled = state
                                .throttle_next
                                .fetch_update(SeqCst, SeqCst, |n| n.checked_sub(1))
                                .is_ok();
                            let too_fast = method == "chat.postMessage" && {
                                let mut last = state.last_post.lock().unwrap();
                                let now = std::time::Instant::now();
                                let early = last
                                    .get(&channel)
                                    .is_some_and(|t| now.duration_since(*t) < FAKE_SLACK_INTERVAL);
                                if !early && !throttled {
                                    last.insert(channel.clone(), now);
                                }
                                early
                            };
                            if too_fast {
                                state.too_fast.fetch_add(1, SeqCst);
                            }
                            if throttled || too_fast {
                                return (StatusCode::TOO_MANY_REQUESTS, [("retry-after", "1")], "")
                                    .into_response();
                            }
                            let mut calls = state.calls.lock().unwrap();
                            calls.push(SlackCall {
                                method: method.clone(),
                                authorization: header("authorization"),
                                content_type: header("content-type"),
                                body: body.clone(),
                            });
                            let ts = slack_ts(calls.len() - 1);
                            axum::Json(json!({"ok": true, "channel": body["channel"], "ts": ts}))
                                .into_response()
                        }
                    },
                ),
            );
        // A command's response_url: what is posted there is recorded as a `response_url` call.
        let state = fake.clone();
        let router = router.route(
            "/response/{*rest}",
            axum::routing::post(move |headers: HeaderMap, body: axum::body::Bytes| {
                let state = state.clone();
                async move {
                    state.calls.lock().unwrap().push(SlackCall {
                        method: "response_url".into(),
                        authorization: header_text(&headers, "authorization"),
                        content_type: header_text(&headers, "content-type"),
                        body: serde_json::from_slice(&body).unwrap_or(Value::Null),
                    });
                    "ok"
                }
            }),
        );
        tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
        fake
    }

    /// A slash command's `response_url` at this fake.
    pub fn response_url(&self) -> String {
        format!("http://{}/response/T1/1/secret", self.addr)
    }

    pub fn api_url(&self) -> String {
        format!("http://{}/api/", self.addr)
    }

    /// Fails the test if portbot sent anything that broke Slack's message limits.
    pub fn assert_within_limits(&self) {
        let broken = self.invalid.load(std::sync::atomic::Ordering::SeqCst);
        assert_eq!(broken, 0, "{broken} messages broke Slack's limits");
    }

    pub fn calls(&self) -> Vec<SlackCall> {
        self.calls.lock().unwrap().clone()
    }

    /// The calls so far, once `done` holds for them (or after 10 s, for the test to judge).
    pub async fn calls_when(&self, done: impl Fn(&[SlackCall]) -> bool) -> Vec<SlackCall> {
        for _ in 0..100 {
            let calls = self.calls();
            if done(&calls) {
                return calls;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        self.calls()
    }

    /// Everything posted to `channel`, blocks as JSON text, one call a line.
    pub fn text_in(&self, channel: &str) -> String {
        self.calls()
            .iter()
            .filter(|c| c.body["channel"] == channel)
            .map(|c| c.body["blocks"].to_string())
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// The `ts` of the run card posted first in `channel`, and the replies posted after it there as
/// one text, a line each; every reply must be in the card's thread.
pub fn card_thread(calls: &[SlackCall], channel: &str) -> (String, String) {
    let posted_here =
        |c: &&SlackCall| c.method == "chat.postMessage" && c.body["channel"] == channel;
    let at = calls
        .iter()
        .position(|c| posted_here(&c))
        .expect("a run card");
    let card_ts = slack_ts(at);
    let replies: Vec<String> = calls[at + 1..]
        .iter()
        .filter(posted_here)
        .map(|c| {
            assert_eq!(c.body["thread_ts"], card_ts, "{:?}", c.body);
            c.body["blocks"].to_string()
        })
        .collect();
    (card_ts, replies.join("\n"))
}

/// Asserts that each of `expected` occurs in `text`, in this order.
pub fn assert_in_order(text: &str, expected: &[&str]) {
    let mut at = 0;
    for wanted in expected {
        let found = text[at..]
            .find(wanted)
            .unwrap_or_else(|| panic!("`{wanted}` missing or out of order in:\n{text}"));
        at += found;
    }
}

/// The `ts` the fake Slack gives the message of its `index`th recorded call.
pub fn slack_ts(index: usize) -> String {
    format!("1700000000.{:06}", index + 1)
}

/// Whether any call's blocks contain `text`.
pub fn mentions(calls: &[SlackCall], text: &str) -> bool {
    calls
        .iter()
        .any(|c| c.body["blocks"].to_string().contains(text))
}

/// What Slack would refuse in a message or view: more than 50 blocks (100 in a modal), a
/// section text over 3,000 characters, or a fallback text over 40,000.
fn limits_broken(method: &str, body: &Value) -> Option<String> {
    let blocks = match method {
        "views.open" => &body["view"]["blocks"],
        "chat.postMessage" | "chat.update" | "chat.postEphemeral" => &body["blocks"],
        _ => return None,
    };
    let max_blocks = if method == "views.open" { 100 } else { 50 };
    let blocks = blocks.as_array().map(Vec::as_slice).unwrap_or_default();
    if blocks.len() > max_blocks {
        return Some(format!("invalid_blocks: {} blocks", blocks.len()));
    }
    for block in blocks {
        if block["text"]["text"]
            .as_str()
            .is_some_and(|t| t.chars().count() > 3000)
        {
            return Some("invalid_blocks: a section text over 3000 characters".into());
        }
    }
    if body["text"]
        .as_str()
        .is_some_and(|t| t.chars().count() > 40_000)
    {
        return Some("msg_too_long".into());
    }
    None
}
