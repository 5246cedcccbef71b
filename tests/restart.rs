//! Crash safety: the real binary is killed with SIGKILL mid-run and started again on the same
//! store. Nothing acknowledged is lost, pending approvals stay decidable, a webhook that was not
//! yet confirmed is sent after the restart, and an interrupted command is not run twice.

mod common;

use std::collections::{HashMap, HashSet};
use std::ffi::OsString;
use std::net::SocketAddr;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::github::{gitops_on_github, FakeGitHub, REPO, TOKEN};
use common::slack::{card_updates, click, form, label_then_end, send_signed, submission};
use common::{action, free_addr, FakeSlack, Receiver, TestApp};
use serde_json::json;

const DEV: &str = "dev@example.com";
const OPS: &str = "ops@example.com";

/// The tests here start and kill real servers; one at a time keeps their timing (and their
/// loopback ports) to themselves.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

struct Server(Child);

impl Server {
    /// SIGKILL: no graceful shutdown, no final flush.
    fn kill(mut self) {
        self.0.kill().unwrap();
        self.0.wait().unwrap();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// [`start_with`], and a client of it.
async fn serve(
    dir: &Path,
    addr: SocketAddr,
    log: &str,
    env: &[(&str, String)],
) -> (Server, TestApp) {
    let server = start_with(dir, addr, log, env).await;
    let app = TestApp::connect(addr, tempfile::tempdir().unwrap()).await;
    (server, app)
}

/// Starts the binary, with `env` over the tests' defaults; its log goes to `log`. Checkpoints
/// are rare, so that what the first server acknowledged survives the kill in the write-ahead
/// log only, and the restart must replay it.
async fn start_with(dir: &Path, addr: SocketAddr, log: &str, env: &[(&str, String)]) -> Server {
    let server = Server(
        Command::new(common::binary())
            .arg("serve")
            .env("PORTBOT__STORAGE__CHECKPOINT_INTERVAL_MS", "600000")
            .env("PORTBOT__SERVER__BIND", addr.to_string())
            .env("PORTBOT__STORAGE__PATH", dir.join("db"))
            .env("PORTBOT__CATALOG__PATH", dir.join("catalog"))
            .env("PORTBOT__BACKENDS__WEBHOOK__INITIAL_BACKOFF_MS", "200")
            .env("PORTBOT__BACKENDS__WEBHOOK__MAX_BACKOFF_MS", "400")
            .env("PORTBOT__BACKENDS__WEBHOOK__MAX_ATTEMPTS", "100")
            // The workers' deliveries too, to explain a message sent twice.
            .env("RUST_LOG", "info,portbot::app::worker=debug")
            // After the defaults, so that a test may change them.
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join(log)).unwrap())
            .spawn()
            .expect("the binary starts"),
    );
    for _ in 0..100 {
        if reqwest::get(format!("http://{addr}/healthz")).await.is_ok() {
            return server;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("portbot did not come up on {addr}");
}

#[tokio::test]
async fn a_killed_bot_loses_nothing_and_resumes() {
    let _alone = ONE_AT_A_TIME.lock().await;
    let hook_addr = free_addr();
    let webhook = action(
        "notify",
        "DAY-2",
        json!({"type": "WEBHOOK", "url": format!("http://{hook_addr}/hook")}),
        false,
    );
    let long = action(
        "long",
        "DAY-2",
        json!({"type": "COMMAND", "command": ["sh", "-c", "echo begun; sleep 60"]}),
        false,
    );
    let dir = common::deployment(&[webhook, long]);
    let addr = free_addr();
    let (server, app) = serve(dir.path(), addr, "first.log", &[]).await;

    let waiting = app
        .run_id(
            DEV,
            "add-documentdb",
            Some("mailer"),
            json!({"instances": 2}),
        )
        .await;
    let reported = app
        .run_id(
            DEV,
            "add-documentdb",
            Some("mailer"),
            json!({"instances": 1}),
        )
        .await;
    for i in 0..20 {
        let (status, _) = app
            .backend(
                "POST",
                &format!("/v1/actions/runs/{reported}/logs"),
                Some(json!({"message": format!("line {i}")})),
            )
            .await;
        assert_eq!(status, 200);
    }
    let unsent = app.run_id(DEV, "notify", Some("mailer"), json!({})).await;
    let interrupted = app.run_id(DEV, "long", Some("mailer"), json!({})).await;
    for _ in 0..50 {
        if app
            .log_lines(&interrupted)
            .await
            .contains(&"begun".to_owned())
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    server.kill();
    let receiver = Receiver::start_on(hook_addr).await;
    let _server = start_with(dir.path(), addr, "second.log", &[]).await;
    let log = std::fs::read_to_string(dir.path().join("second.log")).unwrap();
    assert!(log.contains("replayed the write-ahead log"), "{log}");
    let app = TestApp::connect(addr, tempfile::tempdir().unwrap()).await;

    // Every acknowledged log line is still there, in order.
    let expected: Vec<String> = (0..20).map(|i| format!("line {i}")).collect();
    assert_eq!(app.log_lines(&reported).await, expected);
    // The pending approval is still decidable.
    assert_eq!(app.run(&waiting).await["status"], "WAITING_FOR_APPROVAL");
    let (status, body) = app.decide(OPS, &waiting, "APPROVE").await;
    assert_eq!(status, 200, "{body}");
    app.wait_for(&waiting, "SUCCESS").await;
    // The webhook that never got through is sent now, once.
    for _ in 0..100 {
        if receiver.count() > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        receiver.count(),
        1,
        "the unsent webhook is delivered exactly once after the restart"
    );
    let body: serde_json::Value =
        serde_json::from_slice(&receiver.received.lock().unwrap()[0].body).unwrap();
    assert_eq!(body["context"]["runId"], unsent);
    // The command that was cut off is not run again: its run fails and says why.
    let failed = app.wait_for(&interrupted, "FAILURE").await;
    assert_eq!(failed["status"], "FAILURE");
    let logs = app.log_lines(&interrupted).await;
    assert!(
        logs.last()
            .unwrap()
            .starts_with("portbot stopped while the command was running"),
        "{logs:?}"
    );
}

/// With a checkpoint every 20 ms, the log's segments are reused all the time, so the kill leaves
/// a segment whose file still holds, behind the newest records, older records of its earlier
/// life. The restart must replay only the newest ones: an older copy of the run replayed after
/// them would hide its latest log lines.
#[tokio::test]
async fn a_kill_while_log_segments_are_reused_loses_nothing() {
    let _alone = ONE_AT_A_TIME.lock().await;
    let dir = common::deployment(&[]);
    let addr = free_addr();
    let often = [("PORTBOT__STORAGE__CHECKPOINT_INTERVAL_MS", "20".to_owned())];
    let (server, app) = serve(dir.path(), addr, "first.log", &often).await;
    let run = app
        .run_id(
            DEV,
            "add-documentdb",
            Some("mailer"),
            json!({"instances": 1}),
        )
        .await;
    // Which names each log file has had: a file seen under two segment names was reused.
    let wal = dir.path().join("db.wal");
    let mut names: HashMap<u64, HashSet<OsString>> = HashMap::new();
    let expected: Vec<String> = (0..300).map(|i| format!("line {i}")).collect();
    for line in &expected {
        let (status, _) = app
            .backend(
                "POST",
                &format!("/v1/actions/runs/{run}/logs"),
                Some(json!({ "message": line })),
            )
            .await;
        assert_eq!(status, 200);
        for entry in std::fs::read_dir(&wal).unwrap().flatten() {
            if entry.path().extension() == Some("log".as_ref()) {
                if let Ok(meta) = entry.metadata() {
                    names
                        .entry(meta.ino())
                        .or_default()
                        .insert(entry.file_name());
                }
            }
        }
    }
    server.kill();
    assert!(
        names.values().any(|names| names.len() > 1),
        "no log file was reused as a later segment: {names:?}"
    );

    let (_server, app) = serve(dir.path(), addr, "second.log", &often).await;
    assert_eq!(app.log_lines(&run).await, expected);
    assert_eq!(app.run(&run).await["status"], "WAITING_FOR_APPROVAL");
}

const SECRET: &str = "restart-signing-secret";

/// Posts a signed Slack request; the status and body.
async fn post_slack(app: &TestApp, path: &str, body: &str) -> (u16, String) {
    send_signed(app, path, body, chrono::Utc::now().timestamp(), SECRET).await
}

/// Waits up to 30 s for `check`; on time-out shows what the fake Slack got and the server log.
async fn until(what: &str, fake: &FakeSlack, log: &Path, mut check: impl FnMut() -> bool) {
    for _ in 0..300 {
        if check() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let calls: Vec<String> = fake
        .calls()
        .iter()
        .map(|c| {
            format!(
                "{} {} in thread: {} text: {}",
                c.method,
                c.body["channel"],
                c.body.get("thread_ts").is_some(),
                c.body["text"]
            )
        })
        .collect();
    let log = std::fs::read_to_string(log).unwrap_or_default();
    panic!(
        "timed out waiting for {what}; Slack got:\n{}\nserver log:\n{log}",
        calls.join("\n")
    );
}

/// A config file whose teams have a chat developer and a chat approver (`key` is
/// `slack_users` or `discord_users`).
fn teams_file(dir: &Path, key: &str, developer: &str, approver: &str) -> std::path::PathBuf {
    let config = dir.join("teams.toml");
    let teams = format!(
        "[[teams]]\nidentifier = \"developers\"\n{key} = [\"{developer}\"]\n\n\
         [[teams]]\nidentifier = \"devops\"\n{key} = [\"{approver}\"]\n"
    );
    std::fs::write(&config, teams).unwrap();
    config
}

/// The environment of a server with Slack on against `fake`: approvals in CAPPROVE, UDEV a
/// developer and UOPS in devops.
fn slack_env(dir: &Path, fake: &FakeSlack) -> Vec<(&'static str, String)> {
    let config = teams_file(dir, "slack_users", "UDEV", "UOPS");
    vec![
        ("PORTBOT_CONFIG", config.display().to_string()),
        ("PORTBOT__SLACK__ENABLED", "true".to_owned()),
        ("PORTBOT__SLACK__SIGNING_SECRET", SECRET.to_owned()),
        ("PORTBOT__SLACK__BOT_TOKEN", "xoxb-restart".to_owned()),
        ("PORTBOT__SLACK__API_URL", fake.api_url()),
        ("PORTBOT__SLACK__APPROVAL_CHANNEL", "CAPPROVE".to_owned()),
        ("PORTBOT__SLACK__MESSAGE_INTERVAL_MS", "100".to_owned()),
    ]
}

/// Kills `server` and starts the next one on the same store, in a later second than anything
/// signed before the kill; with a client of it.
async fn restarted_a_second_later(
    server: Server,
    dir: &Path,
    addr: SocketAddr,
    env: &[(&str, String)],
) -> (Server, TestApp) {
    server.kill();
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    serve(dir, addr, "b.log", env).await
}

async fn assert_one_run(app: &TestApp) -> String {
    let (_, runs) = app.admin("GET", "/v1/actions/runs", None, None).await;
    assert_eq!(runs["runs"].as_array().unwrap().len(), 1, "{runs}");
    runs["runs"][0]["id"].as_str().unwrap().to_owned()
}

/// `answer` says that its request was taken before and names the one run it made.
async fn assert_received_already(app: &TestApp, answer: &str) {
    let run = assert_one_run(app).await;
    assert!(answer.contains("received already"), "{answer}");
    assert!(answer.contains(&run), "names {run}: {answer}");
}

/// The signatures seen are in memory; a command replayed after a restart is refused all the same,
/// and a copy signed anew is known by its `trigger_id` from the store's receipts.
#[tokio::test]
async fn a_slack_command_replayed_or_sent_again_after_a_restart_makes_no_second_run() {
    let _alone = ONE_AT_A_TIME.lock().await;
    let fake = FakeSlack::start().await;
    let dir = common::deployment(&[]);
    let env = slack_env(dir.path(), &fake);
    let addr = free_addr();
    let (server, app) = serve(dir.path(), addr, "a.log", &env).await;
    let body = form("UDEV", "add-documentdb mailer instances=2");
    let signed_at = chrono::Utc::now().timestamp();
    let command = "/slack/commands";
    assert_eq!(
        send_signed(&app, command, &body, signed_at, SECRET).await.0,
        200
    );
    let (status, _) = send_signed(&app, command, &body, signed_at, SECRET).await;
    assert_eq!(status, 401, "a replay");
    let (_server, app) = restarted_a_second_later(server, dir.path(), addr, &env).await;
    let (status, answer) = send_signed(&app, command, &body, signed_at, SECRET).await;
    assert_eq!(status, 401, "{answer}");
    // The same command signed anew (a copy Slack sends again): its trigger_id was taken.
    let now = chrono::Utc::now().timestamp();
    let (status, answer) = send_signed(&app, command, &body, now, SECRET).await;
    assert_eq!(status, 200, "{answer}");
    assert_received_already(&app, &answer).await;
}

#[tokio::test]
async fn slack_steps_survive_a_kill() {
    let _alone = ONE_AT_A_TIME.lock().await;
    let fake = FakeSlack::start().await;
    let dir = common::deployment(&[]);
    let env = slack_env(dir.path(), &fake);
    let addr = free_addr();
    // The first process has a token of its own, so that the outage below holds for every
    // call it made, even one the fake reads after the kill.
    let mut first_env = env.clone();
    first_env.retain(|(key, _)| *key != "PORTBOT__SLACK__BOT_TOKEN");
    first_env.push(("PORTBOT__SLACK__BOT_TOKEN", "xoxb-killed".to_owned()));
    let (server, app) = serve(dir.path(), addr, "a.log", &first_env).await;

    // 1. A form opens; 2. a run is stored while Slack is down, so its card is not posted yet.
    let (status, _) = post_slack(
        &app,
        "/slack/commands",
        &form("UDEV", "add-documentdb mailer"),
    )
    .await;
    assert_eq!(status, 200);
    let key = fake
        .calls()
        .iter()
        .find(|c| c.method == "views.open")
        .expect("a form")
        .body["view"]["private_metadata"]
        .as_str()
        .unwrap()
        .to_owned();
    *fake.down_for_token.lock().unwrap() = Some("xoxb-killed".to_owned());
    let (status, _) = post_slack(
        &app,
        "/slack/commands",
        &form("UDEV", "add-documentdb mailer instances=2"),
    )
    .await;
    assert_eq!(status, 200);
    let (_, body) = app.admin("GET", "/v1/actions/runs", None, None).await;
    let first = body["runs"][0]["id"].as_str().unwrap().to_owned();
    server.kill();

    // After the restart the card and the approval request go out, once each.
    let (server, app) = serve(dir.path(), addr, "b.log", &env).await;
    let posted_about = |channel: &str, run: &str| {
        fake.calls()
            .iter()
            .filter(|c| {
                c.method == "chat.postMessage"
                    && c.body["channel"] == channel
                    && c.body.get("thread_ts").is_none()
            })
            .filter(|c| c.body["blocks"].to_string().contains(run))
            .count()
    };
    until(
        "the card and the approval request",
        &fake,
        &dir.path().join("b.log"),
        || posted_about("C123", &first) == 1 && posted_about("CAPPROVE", &first) == 1,
    )
    .await;

    // The form opened before the kill can still be submitted.
    let values =
        serde_json::json!({"instances": {"value": {"type": "number_input", "value": "3"}}});
    let (status, body) = post_slack(
        &app,
        "/slack/interactions",
        &submission("UDEV", &key, values),
    )
    .await;
    assert_eq!((status, body.as_str()), (200, ""));
    let (_, runs) = app.admin("GET", "/v1/actions/runs", None, None).await;
    assert_eq!(runs["runs"][0]["properties"]["instances"], 3);

    // 3. The approval request posted before a kill is still decided by its button.
    server.kill();
    let (_server, app) = serve(dir.path(), addr, "c.log", &env).await;
    let (status, _) = post_slack(
        &app,
        "/slack/interactions",
        &click("UOPS", "approve", &first),
    )
    .await;
    assert_eq!(status, 200);
    app.wait_for(&first, "SUCCESS").await;
    until(
        "the request updated after the restart",
        &fake,
        &dir.path().join("c.log"),
        || {
            fake.calls().iter().any(|c| {
                c.method == "chat.update"
                    && c.body["channel"] == "CAPPROVE"
                    && c.body["blocks"].to_string().contains("Approved by <@UOPS>")
            })
        },
    )
    .await;
    assert_eq!(
        posted_about("C123", &first),
        1,
        "the card was never posted twice"
    );
    assert_eq!(
        posted_about("CAPPROVE", &first),
        1,
        "the request was never posted twice"
    );
}

#[tokio::test]
async fn a_card_update_held_back_by_slacks_limit_is_made_after_a_kill() {
    let _alone = ONE_AT_A_TIME.lock().await;
    let receiver = Receiver::start().await;
    let hook = action(
        "hook",
        "DAY-2",
        json!({"type": "WEBHOOK", "url": receiver.url()}),
        false,
    );
    let fake = FakeSlack::start().await;
    let dir = common::deployment(&[hook]);
    // The first process may update three times, then once every 20 s: the fourth update
    // waits past the kill. The second has a fresh budget (of one).
    let with_updates = |per_minute: &str| {
        let mut env = slack_env(dir.path(), &fake);
        env.push(("PORTBOT__SLACK__UPDATES_PER_MINUTE", per_minute.to_owned()));
        env
    };
    let (first_env, env) = (with_updates("3"), with_updates("1"));
    let addr = free_addr();
    let (server, app) = serve(dir.path(), addr, "a.log", &first_env).await;
    let (status, _) = post_slack(&app, "/slack/commands", &form("UDEV", "hook mailer")).await;
    assert_eq!(status, 200);
    let (_, body) = app.admin("GET", "/v1/actions/runs", None, None).await;
    let run = body["runs"][0]["id"].as_str().unwrap().to_owned();
    fake.calls_when(|calls| calls.iter().any(|c| c.body["channel"] == "C123"))
        .await;
    let card_ts = common::card_thread(&fake.calls(), "C123").0;
    label_then_end(&app, &fake, &run, &card_ts, &["one", "two", "three"]).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(card_updates(&fake, &card_ts).len(), 3, "the fourth waits");
    server.kill();

    // The run was kept due for its card: the new process updates it in its own budget's turn.
    let _server = start_with(dir.path(), addr, "b.log", &env).await;
    until(
        "the card updated to the end",
        &fake,
        &dir.path().join("b.log"),
        || card_updates(&fake, &card_ts).len() > 3,
    )
    .await;
    let updates = card_updates(&fake, &card_ts);
    assert_eq!(updates.len(), 4, "{updates:#?}");
    assert!(updates[3].contains("SUCCESS"), "{}", updates[3]);
    let (_, thread) = common::card_thread(&fake.calls(), "C123");
    assert_eq!(thread.matches("your run ended").count(), 1, "{thread}");
}

/// The environment of a portbot with Discord against `fake`.
fn discord_env(dir: &Path, fake: &common::discord::FakeDiscord) -> Vec<(&'static str, String)> {
    use common::discord::{self as discord, APPROVALS};
    let config = teams_file(dir, "discord_users", discord::DEV, discord::OPS);
    vec![
        ("PORTBOT_CONFIG", config.display().to_string()),
        ("PORTBOT__DISCORD__ENABLED", "true".to_owned()),
        ("PORTBOT__DISCORD__BOT_TOKEN", discord::BOT_TOKEN.to_owned()),
        (
            "PORTBOT__DISCORD__PUBLIC_KEY",
            discord::PUBLIC_KEY.to_owned(),
        ),
        (
            "PORTBOT__DISCORD__APPLICATION_ID",
            discord::APPLICATION_ID.to_owned(),
        ),
        ("PORTBOT__DISCORD__API_URL", fake.api_url()),
        ("PORTBOT__DISCORD__APPROVAL_CHANNEL", APPROVALS.to_owned()),
    ]
}

/// Discord's repeats are caught in memory; one replayed after a restart is refused all the same,
/// and a copy signed anew is known by its interaction id from the store's receipts.
#[tokio::test]
async fn a_discord_command_replayed_or_sent_again_after_a_restart_makes_no_second_run() {
    use common::discord::{self as discord, FakeDiscord};
    let _alone = ONE_AT_A_TIME.lock().await;
    let fake = FakeDiscord::start().await;
    let dir = common::deployment(&[]);
    let env = discord_env(dir.path(), &fake);
    let addr = free_addr();
    let (server, app) = serve(dir.path(), addr, "a.log", &env).await;
    let command = discord::command(
        discord::DEV,
        "add-documentdb",
        Some("mailer"),
        Some("instances=2"),
    );
    let signed_at = chrono::Utc::now().timestamp();
    let (status, answer) = discord::send_signed(&app, &command, signed_at).await;
    assert_eq!(status, 200, "{answer}");
    let (_server, app) = restarted_a_second_later(server, dir.path(), addr, &env).await;
    let (status, answer) = discord::send_signed(&app, &command, signed_at).await;
    assert_eq!(status, 401, "{answer}");
    let now = chrono::Utc::now().timestamp();
    let (status, answer) = discord::send_signed(&app, &command, now).await;
    assert_eq!(status, 200, "{answer}");
    assert_received_already(&app, &answer.to_string()).await;
}

#[tokio::test]
async fn discord_steps_survive_a_kill() {
    use common::discord::{self as discord, FakeDiscord, APPROVALS, CHANNEL};
    use std::sync::atomic::Ordering::SeqCst;
    let _alone = ONE_AT_A_TIME.lock().await;
    let fake = FakeDiscord::start().await;
    let dir = common::deployment(&[]);
    let env = discord_env(dir.path(), &fake);
    let addr = free_addr();
    let (server, app) = serve(dir.path(), addr, "a.log", &env).await;
    let posted_about = |channel: &str, run: &str| {
        fake.posted_in(channel)
            .iter()
            .filter(|m| m.to_string().contains(run))
            .count()
    };

    // 1. A form opens; 2. a run is stored while Discord is down, so nothing is posted yet.
    let (_, modal) = discord::send(
        &app,
        &discord::command(discord::DEV, "add-documentdb", Some("mailer"), None),
    )
    .await;
    let form = modal["data"]["custom_id"]
        .as_str()
        .expect("a form")
        .to_owned();
    fake.fail_next.store(100_000, SeqCst);
    let (status, answer) = discord::send(
        &app,
        &discord::command(
            discord::DEV,
            "add-documentdb",
            Some("mailer"),
            Some("instances=2"),
        ),
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    let (_, body) = app.admin("GET", "/v1/actions/runs", None, None).await;
    let first = body["runs"][0]["id"].as_str().unwrap().to_owned();
    server.kill();

    // After the restart the card, its thread and the approval request go out, once each. A
    // post of the killed process that the fake reads only now does not count twice either:
    // Discord creates one message per nonce.
    fake.fail_next.store(0, SeqCst);
    let (server, app) = serve(dir.path(), addr, "b.log", &env).await;
    fake.calls_when(|_| posted_about(CHANNEL, &first) == 1 && posted_about(APPROVALS, &first) == 1)
        .await;
    assert_eq!(
        posted_about(CHANNEL, &first),
        1,
        "the card, after the restart; server log:\n{}",
        std::fs::read_to_string(dir.path().join("b.log")).unwrap_or_default()
    );
    assert_eq!(
        posted_about(APPROVALS, &first),
        1,
        "the request, after the restart"
    );

    // The form opened before the kill can still be submitted.
    let (_, created) = discord::send(
        &app,
        &discord::submit(discord::DEV, &form, &[("instances", "3")]),
    )
    .await;
    assert_eq!(created["type"], 4, "{created}");
    let (_, runs) = app.admin("GET", "/v1/actions/runs", None, None).await;
    assert_eq!(runs["runs"][0]["properties"]["instances"], 3);

    // 3. The approval request posted before a kill is still decided by its button.
    server.kill();
    let (_server, app) = serve(dir.path(), addr, "c.log", &env).await;
    let (_, answer) = discord::send(
        &app,
        &discord::click(discord::OPS, &format!("approve:{first}")),
    )
    .await;
    assert_eq!(answer["type"], 6, "{answer}");
    app.wait_for(&first, "SUCCESS").await;
    let calls = fake
        .calls_when(|calls| {
            calls.iter().any(|c| {
                c.method == "PATCH"
                    && c.path.contains(APPROVALS)
                    && c.body["components"] == json!([])
                    && c.body.to_string().contains(&first)
            }) && calls.iter().any(|c| {
                c.body["content"]
                    .as_str()
                    .unwrap_or_default()
                    .contains("SUCCESS")
            })
        })
        .await;
    assert!(
        calls.iter().any(|c| c.body["content"]
            .as_str()
            .unwrap_or_default()
            .contains("SUCCESS")),
        "the thread followed the run"
    );
    assert_eq!(
        posted_about(CHANNEL, &first),
        1,
        "the card was never posted twice: {:#?}",
        fake.calls()
            .iter()
            .map(|c| format!("{} {} {}", c.method, c.path, c.body))
            .collect::<Vec<_>>()
    );
    assert_eq!(
        posted_about(APPROVALS, &first),
        1,
        "the request was never posted twice"
    );
}

#[tokio::test]
async fn a_restart_between_the_commit_and_the_pull_request_opens_exactly_one() {
    let _alone = ONE_AT_A_TIME.lock().await;
    let fake = FakeGitHub::start().await;
    // GitHub holds the pull request's creation; portbot is killed meanwhile.
    *fake.hold_pulls.lock().unwrap() = Some(Duration::from_secs(60));
    let dir = common::deployment(&[gitops_on_github()]);
    let addr = free_addr();
    let env = [
        ("PORTBOT__GITHUB__API_URL", fake.api_url()),
        ("PORTBOT__GITHUB__TOKEN", TOKEN.to_owned()),
        ("PORTBOT__GITHUB__POLL_INTERVAL_SECONDS", "1".to_owned()),
    ];
    let (server, app) = serve(dir.path(), addr, "first.log", &env).await;
    let run = app
        .run_id(
            DEV,
            "add-documentdb-gitops",
            Some("mailer"),
            json!({"instances": 3}),
        )
        .await;
    app.decide(OPS, &run, "APPROVE").await;
    let pulls = format!("/repos/{REPO}/pulls");
    for _ in 0..100 {
        if !fake.calls_to("POST", &pulls).is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        fake.calls_to("POST", &pulls).len(),
        1,
        "the pull request was being opened"
    );
    server.kill();
    *fake.hold_pulls.lock().unwrap() = None;

    let (_server, app) = serve(dir.path(), addr, "second.log", &env).await;
    let current = app.wait_for_link(&run).await;
    assert_eq!(
        current["link"],
        format!("https://github.example/{REPO}/pull/1"),
        "{current}"
    );
    assert_eq!(current["status"], "IN_PROGRESS");
    assert_eq!(
        fake.repo.lock().unwrap().pulls.len(),
        1,
        "exactly one pull request"
    );
    assert_eq!(
        fake.calls_to("POST", &format!("/repos/{REPO}/git/commits"))
            .len(),
        1,
        "the commit was made once and kept"
    );
    let branch = format!("branch portbot/{run} (");
    app.assert_logged(&run, |l| {
        l.starts_with(&branch)
            && l.contains("was made by an earlier attempt; kept; opened pull request")
    })
    .await;
}
