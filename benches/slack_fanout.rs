//! Log fan-out to Slack: 200 runs, each requested in its own channel, each getting 50 log lines
//! at once, against a fake Slack that allows one message per second per channel (and answers
//! 429 to anything faster). Reports messages sent, card updates, lines lost (must be 0), 429s, and the drain
//! time against the limits' lower bound: (messages in the busiest channel - 1) seconds.
//!
//! Twice, each with a portbot of its own:
//!
//! 1. portbot held to the fake Slack's limits: one message per second per channel, and no
//!    workspace-wide limit (`slack.messages_per_minute` 0). The issue's target is this one.
//! 2. portbot on its shipped settings, which also keep to a workspace-wide budget of
//!    `slack.messages_per_minute` (600: a burst of 600, then ten a second), as against Slack.
//!    Thread replies may use that burst only down to a reserve of a fifth, kept for run cards
//!    and approval requests (`chat::pace`); the 200 cards come first and fit in, so the lower
//!    bound is (messages - 480) x 0.1 s.
//!
//!
//! Both report the cards (`chat.update`) apart: the second keeps to `slack.updates_per_minute`
//! (50, Slack's Tier 3), so it waits after the messages until every card shows its run's end,
//! and reports that drain against its own bound, (cards - 50) x 1.2 s. Cards do not hold up the
//! threads' messages.
//!
//! Run with `cargo bench --bench slack_fanout` (about 4 min, 3 of them the cards' drain). `FANOUT_RUNS` and `FANOUT_LINES`
//! change the size. Everything runs in this process on 127.0.0.1.

mod support;

use support::{copy_dir, env_u64};

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::response::IntoResponse;
use serde_json::{json, Value};

use portbot::app::RunRequest;
use portbot::config::Settings;
use portbot::core::action::RawInputs;
use portbot::core::ids::{Identity, RunId};
use portbot::core::run::RunStatus;
use portbot::startup::Application;

/// What the fake Slack saw.
#[derive(Default)]
struct Seen {
    /// Messages accepted per channel, with the time of the last one.
    per_channel: HashMap<String, (usize, Instant)>,
    refused: usize,
    /// When each card update (`chat.update`) came: Slack allows them less often than posts
    /// (Tier 3).
    updates: Vec<Instant>,
    /// The channels whose card shows the run's end, and when the last of them first did.
    cards_ended: HashSet<String>,
    last_card_end: Option<Instant>,
    /// Log lines seen in thread messages, by text.
    lines: HashMap<String, usize>,
    ended: usize,
    last_message: Option<Instant>,
}

async fn fake_slack(seen: Arc<Mutex<Seen>>) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let router = axum::Router::new().route(
        "/api/{method}",
        axum::routing::post(
            move |axum::extract::Path(method): axum::extract::Path<String>, body: axum::body::Bytes| {
                let seen = seen.clone();
                async move {
                    let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
                    let channel = body["channel"].as_str().unwrap_or_default().to_owned();
                    let mut seen = seen.lock().unwrap();
                    let now = Instant::now();
                    if method == "chat.update" {
                        seen.updates.push(now);
                        if body["blocks"].to_string().contains("SUCCESS") && seen.cards_ended.insert(channel.clone()) {
                            seen.last_card_end = Some(now);
                        }
                    }
                    if method == "chat.postMessage" {
                        let (count, last) = seen.per_channel.get(&channel).copied().unwrap_or((0, now - Duration::from_secs(10)));
                        if now.duration_since(last) < Duration::from_millis(990) {
                            seen.refused += 1;
                            return (axum::http::StatusCode::TOO_MANY_REQUESTS, [("retry-after", "1")], "").into_response();
                        }
                        seen.per_channel.insert(channel.clone(), (count + 1, now));
                        seen.last_message = Some(now);
                        let text = body["blocks"].to_string();
                        if let Some(start) = text.find("```") {
                            let end = text[start + 3..].find("```").map_or(text.len(), |e| start + 3 + e);
                            for line in text[start + 3..end].split("\\n") {
                                *seen.lines.entry(line.to_owned()).or_default() += 1;
                            }
                        }
                        if text.contains("your run ended") {
                            seen.ended += 1;
                        }
                    }
                    axum::Json(json!({"ok": true, "channel": channel, "ts": format!("{}.000100", now.elapsed().as_nanos())})).into_response()
                }
            },
        ),
    );
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    format!("http://{addr}/api/")
}
#[tokio::main]
async fn main() {
    let runs = env_u64("FANOUT_RUNS", 200) as usize;
    let lines = env_u64("FANOUT_LINES", 50) as usize;
    println!("## portbot slack_fanout benchmark\n");
    println!("{runs} runs, each in its own channel, x {lines} log lines; fake Slack allows 1 message/s/channel.\n");
    println!("### 1. portbot held to the fake Slack's limits (slack.messages_per_minute 0, slack.updates_per_minute 0)\n");
    fan_out(runs, lines, |s| {
        s.slack.messages_per_minute = 0;
        s.slack.updates_per_minute = 0;
    })
    .await;
    let shipped = Settings::load(None).unwrap().slack;
    println!(
        "\n### 2. portbot's shipped settings (slack.messages_per_minute {}, slack.updates_per_minute {})\n",
        shipped.messages_per_minute, shipped.updates_per_minute
    );
    fan_out(runs, lines, |_| {}).await;
}

/// Fans out `runs` x `lines` through a portbot on the shipped settings changed by `configure`.
async fn fan_out(runs: usize, lines: usize, configure: impl FnOnce(&mut Settings)) {
    let dir = tempfile::tempdir().unwrap();
    let crate_root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    std::env::set_current_dir(crate_root).unwrap();
    let catalog = dir.path().join("catalog");
    for part in ["blueprints", "entities"] {
        copy_dir(
            &crate_root.join("config/catalog").join(part),
            &catalog.join(part),
        );
    }
    std::fs::create_dir_all(catalog.join("actions")).unwrap();
    // A backend that takes the run and reports later: the bench reports for it.
    let receiver = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hook = format!("http://{}/hook", receiver.local_addr().unwrap());
    tokio::spawn(async move {
        let router = axum::Router::new().fallback(|| async { axum::http::StatusCode::ACCEPTED });
        axum::serve(receiver, router).await.unwrap()
    });
    let action = json!({
        "identifier": "fanout", "title": "Fan-out",
        "trigger": {"type": "self-service", "operation": "CREATE", "blueprintIdentifier": "Component",
                    "userInputs": {"properties": {}, "required": []}},
        "invocationMethod": {"type": "WEBHOOK", "url": hook},
        "requiredApproval": false
    });
    std::fs::write(catalog.join("actions/fanout.json"), action.to_string()).unwrap();

    let seen = Arc::new(Mutex::new(Seen::default()));
    let api_url = fake_slack(seen.clone()).await;
    let mut settings = Settings::load(None).unwrap();
    settings.server.bind = "127.0.0.1:0".parse().unwrap();
    settings.storage.path = dir.path().join("db");
    settings.catalog.path = catalog;
    settings.slack.enabled = true;
    settings.slack.signing_secret = Some(serde_json::from_value(json!("bench")).unwrap());
    settings.slack.bot_token = Some(serde_json::from_value(json!("xoxb-bench")).unwrap());
    settings.slack.api_url = api_url;
    configure(&mut settings);
    let per_minute = settings.slack.messages_per_minute as usize;
    let updates_per_minute = settings.slack.updates_per_minute as usize;
    let application = Application::build(settings).await.unwrap();
    let app = application.app().clone();
    tokio::spawn(application.run_until_stopped());

    let who = Identity::try_from("slack:UBENCH").unwrap();
    let started = Instant::now();
    let mut ids: Vec<RunId> = Vec::new();
    for i in 0..runs {
        let channel = format!("C{i:05}");
        let run = app
            .request_run(RunRequest {
                who: &who,
                action: "fanout",
                entity: None,
                inputs: RawInputs::Text(vec![]),
                origin: "SLACK",
                channel: Some(&channel),
                received: None,
            })
            .await
            .unwrap();
        ids.push(run.id);
    }
    // Every run's backend reports its lines at once, then ends it.
    let mut tasks = Vec::new();
    for (r, id) in ids.iter().enumerate() {
        let (app, id) = (app.clone(), id.clone());
        tasks.push(tokio::spawn(async move {
            for l in 0..lines {
                app.append_log(&id, format!("run {r} line {l}"), None, None, None)
                    .await
                    .unwrap();
            }
            app.append_log(
                &id,
                format!("run {r} done"),
                Some(RunStatus::Success),
                None,
                None,
            )
            .await
            .unwrap();
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    let stored = started.elapsed();

    let expected = runs * lines;
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let done = {
            let seen = seen.lock().unwrap();
            seen.ended == runs
        };
        if done || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    {
        let seen = seen.lock().unwrap();
        let drain = seen
            .last_message
            .map_or(Duration::ZERO, |t| t.duration_since(started));
        let delivered = (0..runs)
            .flat_map(|r| (0..lines).map(move |l| format!("run {r} line {l}")))
            .filter(|line| seen.lines.contains_key(line))
            .count();
        let duplicated = (0..runs)
            .flat_map(|r| (0..lines).map(move |l| format!("run {r} line {l}")))
            .filter(|line| seen.lines.get(line).is_some_and(|n| *n > 1))
            .count();
        let messages: usize = seen.per_channel.values().map(|(n, _)| n).sum();
        let busiest = seen
            .per_channel
            .values()
            .map(|(n, _)| *n)
            .max()
            .unwrap_or(0);
        let per_channel = Duration::from_secs(busiest.saturating_sub(1) as u64);
        // Past the replies' burst (`per_minute` less the fifth kept for cards and approval
        // requests, which here all come first), one message per 60 s / `per_minute`.
        let burst = per_minute - per_minute / 5;
        let workspace = match per_minute {
            0 => Duration::ZERO,
            n => Duration::from_secs(60) * messages.saturating_sub(burst) as u32 / n as u32,
        };
        let bound = per_channel.max(workspace);
        println!("| measure | value |\n|---|---:|");
        println!(
            "| events stored (runs created, lines logged, runs ended) | {:.2} s |",
            stored.as_secs_f64()
        );
        println!(
            "| messages sent | {messages} ({:.1} per run) |",
            messages as f64 / runs as f64
        );
        println!("| card updates (chat.update) | {} |", seen.updates.len());
        println!(
            "| cards showing the run's end when the last message went | {} of {runs} |",
            seen.cards_ended.len()
        );
        println!(
            "| messages refused with 429 (sent too fast) | {} |",
            seen.refused
        );
        println!("| log lines delivered | {delivered} of {expected} |");
        println!("| log lines lost | {} |", expected - delivered);
        println!("| log lines delivered twice | {duplicated} |");
        println!("| runs whose end was posted | {} of {runs} |", seen.ended);
        println!(
            "| drain time (first run created to last message) | {:.2} s |",
            drain.as_secs_f64()
        );
        println!(
            "| lower bound ((messages in the busiest channel - 1) x 1 s) | {:.0} s |",
            per_channel.as_secs_f64()
        );
        if per_minute > 0 {
            println!(
                "| lower bound of the workspace budget ((messages - {burst}) x 60 s / {per_minute}) | {:.0} s |",
                workspace.as_secs_f64()
            );
        }
        println!(
            "| drain / bound | {:.2} |",
            drain.as_secs_f64() / bound.as_secs_f64().max(1.0)
        );
    }
    if updates_per_minute > 0 {
        cards_drain(&seen, started, runs, updates_per_minute).await;
    }
}

/// The most of `times` (in order) within any 60 s.
fn busiest_minute(times: &[Instant]) -> usize {
    let mut first = 0;
    let mut most = 0;
    for (last, at) in times.iter().enumerate() {
        while at.duration_since(times[first]) >= Duration::from_secs(60) {
            first += 1;
        }
        most = most.max(last + 1 - first);
    }
    most
}

/// Waits for every card to show its run's end, and reports when the last did against the
/// `chat.update` budget's lower bound: a burst of `per_minute`, then one per 60 s / `per_minute`.
async fn cards_drain(seen: &Mutex<Seen>, started: Instant, runs: usize, per_minute: usize) {
    let deadline = Instant::now() + Duration::from_secs(600);
    while seen.lock().unwrap().cards_ended.len() < runs && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let seen = seen.lock().unwrap();
    let drain = seen
        .last_card_end
        .map_or(Duration::ZERO, |t| t.duration_since(started));
    let bound =
        Duration::from_secs(60) * runs.saturating_sub(per_minute) as u32 / per_minute as u32;
    println!(
        "| cards showing the run's end | {} of {runs} |",
        seen.cards_ended.len()
    );
    println!(
        "| card updates in the busiest 60 s (the budget's burst plus a minute's spacing: {}) | {} |",
        2 * per_minute - 1,
        busiest_minute(&seen.updates)
    );
    println!(
        "| card drain (first run created to the last card showing its end) | {:.2} s |",
        drain.as_secs_f64()
    );
    println!(
        "| its lower bound ((cards - {per_minute}) x 60 s / {per_minute}) | {:.0} s |",
        bound.as_secs_f64()
    );
    println!(
        "| card drain / bound | {:.2} |",
        drain.as_secs_f64() / bound.as_secs_f64().max(1.0)
    );
}
