//! Discord's side of the tests: interactions signed with a test key pair (RFC 8032, test 1) in
//! the shapes Discord posts (PROTOCOL-NOTES Discord §2–§3), and a fake REST API on loopback that
//! checks `Authorization: Bot …`, JSON bodies and Discord's limits, answers like Discord
//! (messages with ids, threads with their message's id), and can answer 429 and 5xx.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use ed25519_dalek::{Signer, SigningKey};
use serde_json::{json, Value};

use super::TestApp;

/// RFC 8032 test 1: the secret key, and its public key as `discord.public_key` takes it.
const SECRET_KEY: &str = "9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60";
pub const PUBLIC_KEY: &str = "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a";
pub const BOT_TOKEN: &str = "discord-test-bot-token";
pub const APPLICATION_ID: &str = "1100000000000000001";
/// The channel `/port` is used in, and the approval channel.
pub const CHANNEL: &str = "1200000000000000001";
pub const APPROVALS: &str = "1200000000000000002";
/// A developer and an approver (in the shipped `developers` and `devops` teams in tests).
pub const DEV: &str = "1300000000000000001";
pub const OPS: &str = "1300000000000000002";

fn signing_key() -> SigningKey {
    SigningKey::from_bytes(&hex::decode(SECRET_KEY).unwrap().try_into().unwrap())
}

/// Posts an interaction signed as Discord signs it, at `timestamp`; the status and the JSON.
pub async fn send_signed(app: &TestApp, body: &Value, timestamp: i64) -> (u16, Value) {
    send_signed_text(app, &body.to_string(), timestamp).await
}

/// Posts any text signed as Discord signs it, at `timestamp`.
pub async fn send_signed_text(app: &TestApp, body: &str, timestamp: i64) -> (u16, Value) {
    let signature = signing_key().sign(format!("{timestamp}{body}").as_bytes());
    send_raw(
        app,
        body,
        &timestamp.to_string(),
        &hex::encode(signature.to_bytes()),
    )
    .await
}

/// Posts an interaction signed now.
pub async fn send(app: &TestApp, body: &Value) -> (u16, Value) {
    send_signed(app, body, chrono::Utc::now().timestamp()).await
}

/// Posts a body with the given signature headers, however wrong.
pub async fn send_raw(app: &TestApp, body: &str, timestamp: &str, signature: &str) -> (u16, Value) {
    let response = app
        .http
        .post(format!("{}/discord/interactions", app.base))
        .header("content-type", "application/json")
        .header("x-signature-ed25519", signature)
        .header("x-signature-timestamp", timestamp)
        .body(body.to_owned())
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    let text = response.text().await.unwrap();
    let answer = serde_json::from_str(&text).unwrap_or(Value::String(text));
    if let Some(problem) = limits_broken(&answer["data"]) {
        panic!("Discord would refuse this interaction response ({problem}): {answer}");
    }
    (status, answer)
}

/// Turns Discord on against `fake`: approvals in `APPROVALS`, `DEV` a developer and `OPS` in
/// devops.
pub fn enable(settings: &mut portbot::config::Settings, fake: &FakeDiscord) {
    settings.discord.enabled = true;
    settings.discord.bot_token = Some(serde_json::from_value(json!(BOT_TOKEN)).unwrap());
    settings.discord.public_key = Some(PUBLIC_KEY.into());
    settings.discord.application_id = Some(APPLICATION_ID.into());
    settings.discord.api_url = fake.api_url();
    settings.discord.approval_channel = Some(APPROVALS.into());
    for team in &mut settings.teams {
        match team.identifier.as_str() {
            "developers" => team.discord_users.push(DEV.into()),
            "devops" => team.discord_users.push(OPS.into()),
            _ => {}
        }
    }
}

static INTERACTION: AtomicU64 = AtomicU64::new(1_400_000_000_000_000_000);

/// An interaction of `kind` by `user` in `channel` with `data`, with every field Discord sends.
pub fn interaction(kind: u8, user: &str, channel: &str, data: Value) -> Value {
    let id = INTERACTION.fetch_add(1, SeqCst).to_string();
    json!({
        "id": id,
        "application_id": APPLICATION_ID,
        "type": kind,
        "data": data,
        "guild_id": "1000000000000000001",
        "channel": {"id": channel, "type": 0, "guild_id": "1000000000000000001", "name": "dev"},
        "channel_id": channel,
        "member": {
            "user": {"id": user, "username": format!("user{user}"), "global_name": "Someone", "discriminator": "0", "avatar": null},
            "roles": [], "permissions": "2248473465835073", "joined_at": "2026-01-01T00:00:00.000000+00:00",
            "deaf": false, "mute": false, "flags": 0, "pending": false, "nick": null, "avatar": null
        },
        "token": format!("interaction-token-{id}"),
        "version": 1,
        "app_permissions": "2248473465835073",
        "locale": "en-US",
        "guild_locale": "en-US",
        "entitlements": [],
        "authorizing_integration_owners": {"0": "1000000000000000001"},
        "context": 0,
        "attachment_size_limit": 26214400
    })
}

/// `/port action:… [entity:…] [inputs:…]` typed by `user`.
pub fn command(user: &str, action: &str, entity: Option<&str>, inputs: Option<&str>) -> Value {
    let mut options = vec![json!({"name": "action", "type": 3, "value": action})];
    if let Some(entity) = entity {
        options.push(json!({"name": "entity", "type": 3, "value": entity}));
    }
    if let Some(inputs) = inputs {
        options.push(json!({"name": "inputs", "type": 3, "value": inputs}));
    }
    interaction(
        2,
        user,
        CHANNEL,
        json!({"id": "1500000000000000001", "name": "port", "type": 1, "options": options}),
    )
}

/// An autocomplete request while `focused` is typed.
pub fn autocomplete(user: &str, action: &str, entity: Option<&str>, focused: &str) -> Value {
    let mut options =
        vec![json!({"name": "action", "type": 3, "value": action, "focused": focused == "action"})];
    if let Some(entity) = entity {
        options.push(
            json!({"name": "entity", "type": 3, "value": entity, "focused": focused == "entity"}),
        );
    }
    interaction(
        4,
        user,
        CHANNEL,
        json!({"id": "1500000000000000001", "name": "port", "type": 1, "options": options}),
    )
}

/// A click on a button with `custom_id` in the approval channel.
pub fn click(user: &str, custom_id: &str) -> Value {
    let mut click = interaction(
        3,
        user,
        APPROVALS,
        json!({"custom_id": custom_id, "component_type": 2, "id": 3}),
    );
    click["message"] = json!({"id": "1600000000000000001", "channel_id": APPROVALS, "content": "", "components": []});
    click
}

/// A submitted modal, in Discord's current shape (Label components).
pub fn submit(user: &str, custom_id: &str, values: &[(&str, &str)]) -> Value {
    let components: Vec<Value> = values
        .iter()
        .enumerate()
        .map(|(i, (id, value))| json!({"type": 18, "id": i * 2 + 1, "component": {"type": 4, "id": i * 2 + 2, "custom_id": id, "value": value}}))
        .collect();
    interaction(
        5,
        user,
        CHANNEL,
        json!({"custom_id": custom_id, "components": components}),
    )
}

/// One REST call the fake Discord accepted.
#[derive(Clone, Debug)]
pub struct DiscordCall {
    pub method: String,
    pub path: String,
    pub body: Value,
    /// When the fake received it.
    pub at: std::time::Instant,
}

impl DiscordCall {
    /// The message text the call sent, if any.
    pub fn content(&self) -> &str {
        self.body["content"].as_str().unwrap_or_default()
    }
}

/// A fake Discord REST API (`…/api/v10`) on loopback.
#[derive(Clone, Default)]
pub struct FakeDiscord {
    pub addr: Option<SocketAddr>,
    pub calls: Arc<Mutex<Vec<DiscordCall>>>,
    /// Calls refused: bad auth, no JSON content type, broken limits, pings allowed.
    pub refused: Arc<Mutex<Vec<String>>>,
    /// Answer this many next calls with 429 (`retry_after` 0.2 s).
    pub throttle_next: Arc<AtomicUsize>,
    /// Answer this many next calls with HTTP 502.
    pub fail_next: Arc<AtomicUsize>,
    /// Create this many next messages but answer HTTP 502, as when an answer is lost.
    pub lose_answers_next: Arc<AtomicUsize>,
    /// 429s answered.
    pub throttled: Arc<AtomicUsize>,
    /// Channels the bot may not see (403, code 50001).
    pub forbidden: Arc<Mutex<HashSet<String>>>,
    /// Refuse to start threads (as in a channel without the permission).
    pub no_threads: Arc<std::sync::atomic::AtomicBool>,
    /// While set, every message is as if deleted by a member: an edit gets 404, Unknown Message.
    pub messages_deleted: Arc<std::sync::atomic::AtomicBool>,
    /// Edits answered so.
    pub edits_of_deleted: Arc<AtomicUsize>,
    /// Answer this many next thread starts with HTTP 502.
    pub fail_threads_next: Arc<AtomicUsize>,
    /// What `GET /gateway/bot` hands out.
    pub gateway_url: Arc<Mutex<Option<String>>>,
    next_id: Arc<AtomicU64>,
    /// Threads by id (= their message's id).
    threads: Arc<Mutex<HashSet<String>>>,
    messages: Arc<Mutex<HashMap<String, String>>>,
    /// Messages created with `enforce_nonce`, by nonce: a repeat gets the same message back.
    nonces: Arc<Mutex<HashMap<String, Value>>>,
}

impl FakeDiscord {
    pub async fn start() -> FakeDiscord {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let fake = FakeDiscord {
            addr: Some(listener.local_addr().unwrap()),
            next_id: Arc::new(AtomicU64::new(1_700_000_000_000_000_000)),
            ..FakeDiscord::default()
        };
        let state = fake.clone();
        let router = axum::Router::new().fallback(
            move |method: Method,
                  uri: axum::http::Uri,
                  headers: HeaderMap,
                  body: axum::body::Bytes| {
                let state = state.clone();
                async move { state.answer(method, uri.path(), &headers, &body) }
            },
        );
        tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
        fake
    }

    pub fn api_url(&self) -> String {
        format!("http://{}/api/v10", self.addr.unwrap())
    }

    /// Fails the test if portbot sent anything Discord would refuse.
    pub fn assert_nothing_refused(&self) {
        let refused = self.refused.lock().unwrap();
        assert!(refused.is_empty(), "Discord would refuse: {refused:?}");
    }

    pub fn calls(&self) -> Vec<DiscordCall> {
        self.calls.lock().unwrap().clone()
    }

    /// The calls so far, once `done` holds for them (or after 15 s, for the test to judge).
    pub async fn calls_when(&self, done: impl Fn(&[DiscordCall]) -> bool) -> Vec<DiscordCall> {
        for _ in 0..150 {
            let calls = self.calls();
            if done(&calls) {
                return calls;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        self.calls()
    }

    /// The first call to `path` (as the fake sees it, `/api/v10/...`), once there is one.
    pub async fn call_to(&self, path: &str) -> DiscordCall {
        let calls = self
            .calls_when(|calls| calls.iter().any(|c| c.path == path))
            .await;
        let found = calls.into_iter().find(|c| c.path == path);
        found.unwrap_or_else(|| panic!("no call to {path}"))
    }

    /// Messages posted to a channel (or thread), in order.
    pub fn posted_in(&self, channel: &str) -> Vec<Value> {
        let path = format!("/api/v10/channels/{channel}/messages");
        self.calls()
            .into_iter()
            .filter(|c| c.method == "POST" && c.path == path)
            .map(|c| c.body)
            .collect()
    }

    fn answer(&self, method: Method, path: &str, headers: &HeaderMap, body: &[u8]) -> Response {
        let header = |name: &str| {
            headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
        };
        let take = |counter: &AtomicUsize| {
            counter
                .fetch_update(SeqCst, SeqCst, |n| n.checked_sub(1))
                .is_ok()
        };
        let error = |status: StatusCode, code: u64, message: &str| {
            (
                status,
                axum::Json(json!({"code": code, "message": message})),
            )
                .into_response()
        };
        let refuse = |why: String| {
            self.refused.lock().unwrap().push(why.clone());
            error(StatusCode::BAD_REQUEST, 50035, &why)
        };
        let Some(route) = path.strip_prefix("/api/v10") else {
            return refuse(format!("not under /api/v10: {path}"));
        };
        // Interaction responses and follow-ups carry the interaction's token instead.
        let webhook = route.starts_with("/webhooks/") || route.starts_with("/interactions/");
        if !webhook && header("authorization") != format!("Bot {BOT_TOKEN}") {
            self.refused
                .lock()
                .unwrap()
                .push(format!("authorization on {route}"));
            return error(StatusCode::UNAUTHORIZED, 0, "401: Unauthorized");
        }
        let body: Value = if body.is_empty() {
            Value::Null
        } else {
            if !header("content-type").starts_with("application/json") {
                return refuse("no JSON content type".into());
            }
            match serde_json::from_slice(body) {
                Ok(v) => v,
                Err(_) => return refuse("body is not JSON".into()),
            }
        };
        if take(&self.fail_next) {
            return StatusCode::BAD_GATEWAY.into_response();
        }
        if take(&self.throttle_next) {
            self.throttled.fetch_add(1, SeqCst);
            return (
                StatusCode::TOO_MANY_REQUESTS,
                [("retry-after", "1"), ("x-ratelimit-scope", "user")],
                axum::Json(json!({"message": "You are being rate limited.", "retry_after": 0.2, "global": false})),
            )
                .into_response();
        }
        if let Some(problem) = limits_broken(&body) {
            return refuse(problem);
        }
        let parts: Vec<&str> = route.trim_start_matches('/').split('/').collect();
        let mut lost = false;
        let answer = match (method.as_str(), parts.as_slice()) {
            ("POST", ["channels", channel, "messages"]) => {
                if self.forbidden.lock().unwrap().contains(*channel) {
                    return error(StatusCode::FORBIDDEN, 50001, "Missing Access");
                }
                let is_message = self.messages.lock().unwrap().contains_key(*channel);
                if is_message && !self.threads.lock().unwrap().contains(*channel) {
                    return error(StatusCode::NOT_FOUND, 10003, "Unknown Channel");
                }
                let nonce = body["nonce"]
                    .as_str()
                    .filter(|_| body["enforce_nonce"] == true);
                if let Some(earlier) =
                    nonce.and_then(|n| self.nonces.lock().unwrap().get(n).cloned())
                {
                    return axum::Json(earlier).into_response();
                }
                let id = self.next_id.fetch_add(1, SeqCst).to_string();
                self.messages
                    .lock()
                    .unwrap()
                    .insert(id.clone(), channel.to_string());
                let created = message(&id, channel, &body);
                lost = take(&self.lose_answers_next);
                if let Some(nonce) = nonce {
                    self.nonces
                        .lock()
                        .unwrap()
                        .insert(nonce.to_owned(), created.clone());
                }
                created
            }
            ("PATCH", ["channels", channel, "messages", id]) => {
                if self.messages_deleted.load(SeqCst) {
                    self.edits_of_deleted.fetch_add(1, SeqCst);
                    return error(StatusCode::NOT_FOUND, 10008, "Unknown Message");
                }
                message(id, channel, &body)
            }
            ("POST", ["channels", channel, "messages", id, "threads"]) => {
                if take(&self.fail_threads_next) {
                    return StatusCode::BAD_GATEWAY.into_response();
                }
                if self.no_threads.load(SeqCst) {
                    return error(StatusCode::FORBIDDEN, 50013, "Missing Permissions");
                }
                if !self.threads.lock().unwrap().insert(id.to_string()) {
                    return error(
                        StatusCode::BAD_REQUEST,
                        160004,
                        "A thread has already been created for this message",
                    );
                }
                json!({"id": id, "type": 11, "parent_id": channel, "name": body["name"]})
            }
            ("POST", ["users", "@me", "channels"]) => {
                json!({"id": format!("9{}", body["recipient_id"].as_str().unwrap_or_default()), "type": 1})
            }
            ("PUT", ["applications", _, "commands"])
            | ("PUT", ["applications", _, "guilds", _, "commands"]) => body.clone(),
            ("GET", ["gateway", "bot"]) => {
                json!({"url": self.gateway_url.lock().unwrap().clone(), "shards": 1})
            }
            ("POST", ["interactions", _, _, "callback"]) => Value::Null,
            ("PATCH", ["webhooks", _, _, "messages", "@original"])
            | ("POST", ["webhooks", _, _]) => message("1", "0", &body),
            _ => return error(StatusCode::NOT_FOUND, 0, "404: Not Found"),
        };
        self.calls.lock().unwrap().push(DiscordCall {
            method: method.to_string(),
            path: path.to_owned(),
            body: body.clone(),
            at: std::time::Instant::now(),
        });
        if lost {
            return StatusCode::BAD_GATEWAY.into_response();
        }
        axum::Json(answer).into_response()
    }
}

/// A message object as Discord returns it.
fn message(id: &str, channel: &str, body: &Value) -> Value {
    json!({
        "id": id, "channel_id": channel, "type": 0, "content": body["content"].as_str().unwrap_or_default(),
        "author": {"id": APPLICATION_ID, "username": "portbot", "bot": true},
        "embeds": body["embeds"].as_array().cloned().unwrap_or_default(),
        "components": body["components"].as_array().cloned().unwrap_or_default(),
        "timestamp": "2026-11-25T12:00:00.000000+00:00", "edited_timestamp": null, "flags": 0,
        "mentions": [], "mention_roles": [], "mention_everyone": false, "pinned": false, "tts": false, "attachments": []
    })
}

/// What Discord would refuse, and what portbot must never send: content over 2,000 characters,
/// embeds over their limits, a `custom_id` over 100 characters, or a message that may ping
/// everyone or roles.
fn limits_broken(body: &Value) -> Option<String> {
    let len = |v: &Value| v.as_str().map_or(0, |t| t.chars().count());
    // Discord refuses a `null` where a message object expects an array.
    for key in ["embeds", "components", "choices"] {
        if body.get(key) == Some(&Value::Null) || body["data"].get(key) == Some(&Value::Null) {
            return Some(format!("`{key}` is null"));
        }
    }
    if len(&body["nonce"]) > 25 {
        return Some("a nonce over 25 characters".into());
    }
    if len(&body["content"]) > 2_000 {
        return Some(format!("content of {} characters", len(&body["content"])));
    }
    for embed in body["embeds"].as_array().into_iter().flatten() {
        let fields = embed["fields"].as_array().cloned().unwrap_or_default();
        let total = len(&embed["title"])
            + len(&embed["description"])
            + fields
                .iter()
                .map(|f| len(&f["name"]) + len(&f["value"]))
                .sum::<usize>();
        if len(&embed["title"]) > 256
            || len(&embed["description"]) > 4_096
            || fields.len() > 25
            || total > 6_000
            || fields
                .iter()
                .any(|f| len(&f["value"]) > 1_024 || len(&f["name"]) > 256)
        {
            return Some("an embed over Discord's limits".into());
        }
    }
    let text = body.to_string();
    if text.contains("\"custom_id\"") {
        let mut stack = vec![body];
        while let Some(v) = stack.pop() {
            match v {
                Value::Object(map) => {
                    if map.get("custom_id").is_some_and(|c| len(c) > 100) {
                        return Some("a custom_id over 100 characters".into());
                    }
                    stack.extend(map.values());
                }
                Value::Array(items) => stack.extend(items),
                _ => {}
            }
        }
    }
    let parse = &body["allowed_mentions"]["parse"];
    let has_message = body.get("content").is_some() || body.get("embeds").is_some();
    if has_message
        && body.get("name").is_none()
        && (!parse.is_array() || !parse.as_array().unwrap().is_empty())
    {
        return Some("a message without allowed_mentions {parse: []}".into());
    }
    None
}

/// A fake Discord gateway (WebSocket, v10 JSON): `Hello` with a short heartbeat interval,
/// `READY` after `Identify`, `RESUMED` after `Resume`, heartbeats acknowledged; the test sends
/// dispatches and `Reconnect` to whoever is connected, and reads what the bot sent.
#[derive(Clone, Default)]
pub struct FakeGateway {
    pub url: String,
    /// Every frame the bot sent, in order.
    pub received: Arc<Mutex<Vec<Value>>>,
    /// Connections accepted so far.
    pub connections: Arc<AtomicUsize>,
    current: Arc<Mutex<Option<tokio::sync::mpsc::UnboundedSender<Value>>>>,
    seq: Arc<AtomicU64>,
}

impl FakeGateway {
    pub async fn start() -> FakeGateway {
        use futures_util::{SinkExt, StreamExt};
        use tokio_tungstenite::tungstenite::Message;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let fake = FakeGateway {
            url: format!("ws://{}", listener.local_addr().unwrap()),
            ..FakeGateway::default()
        };
        let state = fake.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let Ok(socket) = tokio_tungstenite::accept_async(stream).await else {
                    continue;
                };
                state.connections.fetch_add(1, SeqCst);
                let (mut outgoing, mut incoming) = socket.split();
                let (send, mut to_send) = tokio::sync::mpsc::unbounded_channel::<Value>();
                *state.current.lock().unwrap() = Some(send.clone());
                let _ = send.send(json!({"op": 10, "d": {"heartbeat_interval": 300}}));
                let state = state.clone();
                tokio::spawn(async move {
                    loop {
                        tokio::select! {
                            Some(frame) = to_send.recv() => {
                                if outgoing.send(Message::text(frame.to_string())).await.is_err() {
                                    return;
                                }
                            }
                            message = incoming.next() => {
                                let Some(Ok(Message::Text(text))) = message else { return };
                                let frame: Value = serde_json::from_str(&text).unwrap();
                                state.received.lock().unwrap().push(frame.clone());
                                let reply = match frame["op"].as_u64() {
                                    Some(1) => json!({"op": 11}),
                                    Some(2) => state.event("READY", json!({"session_id": "s1", "resume_gateway_url": state.url})),
                                    Some(6) => state.event("RESUMED", json!({})),
                                    _ => continue,
                                };
                                let _ = send.send(reply);
                            }
                        }
                    }
                });
            }
        });
        fake
    }

    fn event(&self, name: &str, data: Value) -> Value {
        json!({"op": 0, "t": name, "s": self.seq.fetch_add(1, SeqCst) + 1, "d": data})
    }

    fn to_bot(&self, frame: Value) {
        let current = self.current.lock().unwrap();
        current
            .as_ref()
            .expect("a connected bot")
            .send(frame)
            .unwrap();
    }

    /// Sends an interaction to the connected bot.
    pub fn dispatch(&self, interaction: Value) {
        self.to_bot(self.event("INTERACTION_CREATE", interaction));
    }

    /// Asks the connected bot to reconnect.
    pub fn reconnect(&self) {
        self.to_bot(json!({"op": 7, "d": null}));
    }

    /// The frames with opcode `op` the bot sent, once there are `count` (or after 10 s).
    pub async fn sent(&self, op: u64, count: usize) -> Vec<Value> {
        let frames = || -> Vec<Value> {
            let received = self.received.lock().unwrap();
            received.iter().filter(|f| f["op"] == op).cloned().collect()
        };
        for _ in 0..100 {
            if frames().len() >= count {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        frames()
    }
}
