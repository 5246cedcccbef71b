//! Slash-command acks: portbot against a bare axum server that only checks Slack's signature.
//!
//! Two phases in one process, on 127.0.0.1, with the same load: `BENCH_CLIENTS` concurrent
//! keep-alive clients, each looping a freshly signed `/port add-documentdb mailer instances=2`
//! (unique `trigger_id` and channel per command, so no signature repeats: portbot refuses
//! replays). Each phase measures `BENCH_SECONDS` s in `BENCH_ROUNDS` slices that alternate with
//! the other phase's (this machine's speed drifts within a minute; alternating slices see the
//! same drift), each after `BENCH_WARMUP` s unmeasured.
//!
//! 1. bare: an axum route `POST /slack/commands` that checks the signature (HMAC-SHA256,
//!    constant-time compare, 5-minute window) and answers a small ephemeral JSON. It is the
//!    machine's ceiling for this work.
//! 2. portbot: the real app (`Application::build`) with Slack enabled, a store in a temporary
//!    directory and a fake Slack Web API in this process. Each command creates a durable run
//!    (the action needs approval: `WAITING_FOR_APPROVAL`) and the outbox posts its run card to
//!    the fake Slack afterwards, paced as configured: one message a second per channel, and
//!    all channels together to `slack.messages_per_minute` (600). The fake Slack has no limits
//!    of its own, but portbot keeps to Slack's, so most runs' messages are still queued
//!    (durably) when the window ends, as they would be against Slack;
//!    `PORTBOT__SLACK__MESSAGES_PER_MINUTE=0` shows the acks beside deliveries paced per
//!    channel only (up to `slack.max_concurrent` runs at once).
//!
//! The servers (and sled's threads) run on one tokio runtime, the load generator and the fake
//! Slack on another whose threads are named `load-*`, so their CPU can be told apart through
//! `/proc/self/task/*/stat`: "server CPU" is the process's CPU minus the load runtime's threads.
//! Both phases share the machine with the load generator alike.
//!
//! Run with `cargo bench --bench slack_commands` (about 30 s). Knobs (defaults in brackets):
//! `BENCH_SECONDS` [8], `BENCH_WARMUP` [1], `BENCH_CLIENTS` [64], `BENCH_ROUNDS` [4].

mod support;

use support::load::{developers, Bench, BuildRequest, Phase, Platform};
use support::verdict;

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use hmac::{Hmac, Mac};
use serde_json::json;
use sha2::Sha256;

use portbot::config::Settings;

const SECRET: &str = "bench-signing-secret";
const USER: &str = "UBENCH";
const TEXT: &str = "add-documentdb mailer instances=2";
const WINDOW_SECONDS: i64 = 5 * 60;

const TARGET_SHARE: f64 = 0.35;
const TARGET_P99_MS: f64 = 10.0;

// ---------------------------------------------------------------------------------------------
// Signing, as Slack does.

fn sign(timestamp: i64, body: &str) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(SECRET.as_bytes()).expect("HMAC takes any key");
    mac.update(format!("v0:{timestamp}:").as_bytes());
    mac.update(body.as_bytes());
    format!("v0={}", hex::encode(mac.finalize().into_bytes()))
}

/// The form Slack posts for `/port add-documentdb mailer instances=2`, unique per `n`.
fn slash_form(client: usize, n: u64) -> String {
    serde_urlencoded::to_string([
        ("token", "deprecated"),
        ("team_id", "T1"),
        ("team_domain", "acme"),
        ("channel_id", &format!("C{n:08}")),
        ("channel_name", "dev"),
        ("user_id", USER),
        ("user_name", "bench"),
        ("command", "/port"),
        ("text", TEXT),
        ("api_app_id", "A1"),
        ("is_enterprise_install", "false"),
        (
            "response_url",
            &format!("https://hooks.slack.invalid/commands/T1/{n}/bench"),
        ),
        ("trigger_id", &format!("{n}.{client}.b3nch{n:016x}")),
    ])
    .expect("the form encodes")
}

/// Each request: the form for `n`, signed now, to `url`.
fn slash_command(url: String) -> Arc<BuildRequest> {
    Arc::new(move |http, client, n| {
        let body = slash_form(client, n);
        let timestamp = chrono::Utc::now().timestamp();
        let signature = sign(timestamp, &body);
        http.post(&url)
            .header("content-type", "application/x-www-form-urlencoded")
            .header("x-slack-request-timestamp", timestamp.to_string())
            .header("x-slack-signature", signature)
            .body(body)
    })
}

// ---------------------------------------------------------------------------------------------
// The bare server: checks the signature and answers.

fn bare_verify(headers: &HeaderMap, body: &[u8]) -> bool {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let (Some(timestamp), Some(signature)) = (
        header("x-slack-request-timestamp"),
        header("x-slack-signature"),
    ) else {
        return false;
    };
    let Ok(at) = timestamp.trim().parse::<i64>() else {
        return false;
    };
    if (chrono::Utc::now().timestamp() - at).abs() > WINDOW_SECONDS {
        return false;
    }
    let Some(given) = signature
        .strip_prefix("v0=")
        .and_then(|h| hex::decode(h).ok())
    else {
        return false;
    };
    let mut mac = Hmac::<Sha256>::new_from_slice(SECRET.as_bytes()).expect("HMAC takes any key");
    mac.update(format!("v0:{timestamp}:").as_bytes());
    mac.update(body);
    // verify_slice compares in constant time.
    mac.verify_slice(&given).is_ok()
}

async fn bare_command(headers: HeaderMap, body: Bytes) -> axum::response::Response {
    if !bare_verify(&headers, &body) {
        return (StatusCode::UNAUTHORIZED, "bad signature").into_response();
    }
    axum::Json(json!({"response_type": "ephemeral", "text": "Got it."})).into_response()
}

fn bare_router() -> axum::Router {
    axum::Router::new().route("/slack/commands", axum::routing::post(bare_command))
}

// ---------------------------------------------------------------------------------------------
// portbot, with a fake Slack Web API.

#[derive(Default)]
struct FakeSlack {
    /// `chat.postMessage` without `thread_ts`: a run card.
    cards: AtomicU64,
    /// `chat.postMessage` in a card's thread.
    replies: AtomicU64,
    /// Any other method (`chat.update` of the card).
    other: AtomicU64,
}

impl FakeSlack {
    fn snapshot(&self) -> [u64; 3] {
        [&self.cards, &self.replies, &self.other].map(|n| n.load(Ordering::Relaxed))
    }
}

/// Slack's Web API as portbot calls it: every method answers ok, and is counted.
fn fake_slack(seen: Arc<FakeSlack>) -> axum::Router {
    axum::Router::new().route(
        "/api/{method}",
        axum::routing::post(
            move |axum::extract::Path(method): axum::extract::Path<String>, body: Bytes| {
                let seen = seen.clone();
                async move {
                    let in_thread = body.windows(11).any(|w| w == b"\"thread_ts\"");
                    if method == "chat.postMessage" && in_thread {
                        seen.replies.fetch_add(1, Ordering::Relaxed);
                    } else if method == "chat.postMessage" {
                        seen.cards.fetch_add(1, Ordering::Relaxed);
                    } else {
                        seen.other.fetch_add(1, Ordering::Relaxed);
                    }
                    axum::Json(json!({"ok": true, "ts": "1.000100"}))
                }
            },
        ),
    )
}

/// portbot with Slack on `api_url`, `USER` a developer and no approval channel.
fn slack_settings(settings: &mut Settings, api_url: String) {
    settings.slack.enabled = true;
    settings.slack.signing_secret = Some(serde_json::from_value(json!(SECRET)).unwrap());
    settings.slack.bot_token = Some(serde_json::from_value(json!("xoxb-bench")).unwrap());
    settings.slack.api_url = api_url;
    settings.slack.approval_channel = None;
    developers(settings).slack_users.push(USER.into());
}

// ---------------------------------------------------------------------------------------------
fn main() {
    portbot::allocator::purge_freed_memory_sooner();
    let bench = Bench::new();
    let slack = Arc::new(FakeSlack::default());
    let seen = slack.clone();
    let [bare, portbot] = bench.bare_then_portbot(Platform {
        name: "slack-commands",
        route: "/slack/commands",
        request: slash_command,
        bare: bare_router(),
        bare_answer: &["ephemeral"],
        portbot_answer: &["WAITING_FOR_APPROVAL"],
        fake: fake_slack(slack),
        api_path: "/api/",
        configure: slack_settings,
        calls: Box::new(move || seen.snapshot()),
    });
    println!("{}", report(&bench, &bare, &portbot));
    bench.stop();
}

fn report(bench: &Bench, bare: &Phase<3>, portbot: &Phase<3>) -> String {
    let mut out = String::new();
    let w = &mut out;
    let _ = write!(
        w,
        "\n## portbot slack_commands benchmark\n\n\
         `/port {TEXT}`, freshly signed per command (HMAC-SHA256 checked by both servers), "
    );
    support::load::write_setup(w, bench, "Slack");
    support::load::write_table(w, "command", &[bare, portbot]);
    support::load::write_cpu_notes(w, bench.cores, &[bare, portbot]);
    let [cards, replies, other] = portbot.platform_calls;
    let _ = writeln!(
        w,
        "- portbot's outbox posted {cards} run cards, {replies} thread replies and {other} other \
         Slack calls in the window, for {} acked commands: messages are paced per channel \
         (slack.message_interval_ms) and to slack.messages_per_minute in all, and delivered by at \
         most slack.max_concurrent runs at once, so most of their cost comes after the window and \
         is not in the CPU/command above. Every portbot ack said WAITING_FOR_APPROVAL: one \
         durable run each.",
        portbot.acks
    );
    let share = portbot.rate() / bare.rate();
    let _ = writeln!(
        w,
        "\nportbot reaches {:.1} % of the bare server's commands/s.\n",
        share * 100.0
    );
    let _ = writeln!(w, "| target | measured | verdict |\n|---|---:|---|");
    let _ = writeln!(
        w,
        "| ≥ {:.0} % of the bare server's commands/s | {:.1} % | {} |",
        TARGET_SHARE * 100.0,
        share * 100.0,
        verdict(share >= TARGET_SHARE)
    );
    let _ = writeln!(
        w,
        "| portbot ack p99 < {TARGET_P99_MS:.0} ms | {:.2} ms | {} |",
        portbot.p99,
        verdict(portbot.p99 < TARGET_P99_MS)
    );
    out
}
