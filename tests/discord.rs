//! Discord end to end: signed interactions on `/discord/interactions`, a fake Discord REST API,
//! the real app with sled in a temp dir, and the shipped catalog (`add-documentdb` needs a
//! devops approval and runs a command that logs and then adds the Resource to the catalog).

mod common;

use std::sync::atomic::Ordering::SeqCst;

use common::discord::{
    autocomplete, click, command, send, send_raw, send_signed, send_signed_text, submit,
    FakeDiscord, APPROVALS, BOT_TOKEN, CHANNEL, DEV, OPS,
};
use common::TestApp;
use serde_json::{json, Value};

async fn discord_app(fake: &FakeDiscord) -> TestApp {
    discord_app_with(fake, |_| {}).await
}

/// Like [`discord_app`], with settings changed by `tweak` after Discord is on.
async fn discord_app_with(
    fake: &FakeDiscord,
    tweak: impl FnOnce(&mut portbot::config::Settings),
) -> TestApp {
    TestApp::spawn_with(&[], |settings| {
        common::discord::enable(settings, fake);
        tweak(settings);
    })
    .await
}

async fn run_count(app: &TestApp) -> usize {
    let (_, body) = app.admin("GET", "/v1/actions/runs", None, None).await;
    body["runs"].as_array().unwrap().len()
}

/// The text of an interaction's private answer, after checking it is private.
fn private_text(answer: &Value) -> String {
    assert_eq!(answer["type"], 4, "{answer}");
    assert_eq!(answer["data"]["flags"], 64, "not ephemeral: {answer}");
    answer["data"]["content"].as_str().unwrap().to_owned()
}

fn run_in(text: &str) -> String {
    let at = text.find("r_").expect("a run id in the text");
    text[at..]
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
        .collect()
}

/// A run of `add-documentdb` on `mailer` requested in Discord by the developer: its id.
async fn new_run(app: &TestApp) -> String {
    let asked = command(DEV, "add-documentdb", Some("mailer"), Some("instances=3"));
    let (_, created) = send(app, &asked).await;
    run_in(&private_text(&created))
}

/// The fake's calls once a message containing `text` was posted (or after 15 s).
async fn until_posted(fake: &FakeDiscord, text: &str) -> Vec<common::discord::DiscordCall> {
    fake.calls_when(|calls| calls.iter().any(|c| c.content().contains(text)))
        .await
}

#[tokio::test]
async fn pings_are_answered_and_forged_or_stale_requests_are_refused_storing_nothing() {
    let fake = FakeDiscord::start().await;
    let app = discord_app(&fake).await;
    let (status, pong) = send(
        &app,
        &json!({"type": 1, "id": "1", "application_id": "1", "token": "t", "version": 1}),
    )
    .await;
    assert_eq!((status, pong), (200, json!({"type": 1})));

    let body = command(DEV, "add-documentdb", Some("mailer"), Some("instances=3")).to_string();
    let now = chrono::Utc::now().timestamp().to_string();
    let (status, _) = send_raw(&app, &body, &now, &"00".repeat(64)).await;
    assert_eq!(status, 401, "a forged signature");
    let (status, _) = send_raw(&app, &body, &now, "not hex").await;
    assert_eq!(status, 401, "a malformed signature");
    let (status, _) = send_raw(&app, &body, "", "").await;
    assert_eq!(status, 401, "unsigned");
    let stale = chrono::Utc::now().timestamp() - 600;
    let (status, _) = send_signed(
        &app,
        &command(DEV, "add-documentdb", Some("mailer"), Some("instances=3")),
        stale,
    )
    .await;
    assert_eq!(status, 401, "a replay from ten minutes ago");
    // A body changed after signing.
    let signed = command(DEV, "add-documentdb", Some("mailer"), Some("instances=3"));
    let (status, _) = send(&app, &signed).await;
    assert_eq!(status, 200);
    assert_eq!(run_count(&app).await, 1);
    let (status, _) = send_raw(
        &app,
        &body.replace("instances=3", "instances=4"),
        &now,
        &"11".repeat(64),
    )
    .await;
    assert_eq!(status, 401);
    assert_eq!(
        run_count(&app).await,
        1,
        "nothing stored by refused requests"
    );
    // Malformed payloads get a 400, never a panic.
    for garbage in [
        json!([]),
        json!({"type": 2}),
        json!({"type": "x"}),
        json!({"type": 3, "member": {"user": {"id": "x"}}}),
    ] {
        let (status, _) = send(&app, &garbage).await;
        assert_eq!(status, 400, "{garbage}");
    }
}

#[tokio::test]
async fn signed_but_malformed_interactions_get_an_answer_and_the_bot_stays_up() {
    let fake = FakeDiscord::start().await;
    let app = discord_app(&fake).await;
    let valid = [
        command(DEV, "add-documentdb", Some("mailer"), Some("instances=3")),
        command(DEV, "add-documentdb", Some("mailer"), None),
        autocomplete(DEV, "add-", None, "action"),
        click(OPS, "approve:r_0123456789abcdef"),
        click(OPS, "decline:r_0123456789abcdef"),
        submit(DEV, "inputs:x", &[("instances", "3")]),
    ]
    .map(|interaction| interaction.to_string());
    let mut answered = common::MalformedAnswers::default();
    for (_, body) in common::mutations(&valid, 0xd15c) {
        let now = chrono::Utc::now().timestamp();
        let (status, answer) = send_signed_text(&app, &body, now).await;
        answered.record(status, &answer, &body);
    }
    answered.assert_parsed();
    let before = run_count(&app).await;
    let (status, _) = send(
        &app,
        &command(DEV, "add-documentdb", Some("mailer"), Some("instances=3")),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(
        run_count(&app).await,
        before + 1,
        "a valid command still makes a run"
    );
}

#[tokio::test]
async fn the_whole_story_command_approval_backend_logs_success_and_catalog() {
    let fake = FakeDiscord::start().await;
    let app = discord_app(&fake).await;
    let (status, answer) = send(
        &app,
        &command(DEV, "add-documentdb", Some("mailer"), Some("instances=3")),
    )
    .await;
    assert_eq!(status, 200);
    let text = private_text(&answer);
    assert!(text.contains("WAITING_FOR_APPROVAL"), "{text}");
    let run = run_in(&text);
    assert_eq!(app.run(&run).await["createdBy"], format!("discord:{DEV}"));

    // The card in the channel, its thread, and the request in the approval channel.
    let calls = fake
        .calls_when(|calls| calls.iter().filter(|c| c.method == "POST").count() >= 4)
        .await;
    let card = &fake.posted_in(CHANNEL)[0];
    assert!(
        card["embeds"][0]["title"]
            .as_str()
            .unwrap()
            .contains("DocumentDB"),
        "{card}"
    );
    let card_id = calls
        .iter()
        .find_map(|c| c.path.strip_suffix("/threads"))
        .and_then(|p| p.rsplit('/').next())
        .expect("a thread started from the card")
        .to_owned();
    let request = &fake.posted_in(APPROVALS)[0];
    let buttons = &request["components"][0]["components"];
    assert_eq!(buttons[0]["label"], "Approve");
    assert_eq!(buttons[1]["label"], "Decline");
    assert_eq!(buttons[0]["custom_id"], format!("approve:{run}"));
    assert!(
        request.to_string().contains(&format!("<@{DEV}>")),
        "requester named: {request}"
    );

    // The requester may not approve; nobody else outside devops either.
    for user in [DEV, "1399999999999999999"] {
        let (_, answer) = send(&app, &click(user, &format!("approve:{run}"))).await;
        let text = private_text(&answer);
        assert!(
            text.contains("may not") || text.contains("not an approver"),
            "{text}"
        );
    }
    assert_eq!(app.run(&run).await["status"], "WAITING_FOR_APPROVAL");

    let (_, answer) = send(&app, &click(OPS, &format!("approve:{run}"))).await;
    assert_eq!(answer, json!({"type": 6}));
    let (_, again) = send(&app, &click(OPS, &format!("approve:{run}"))).await;
    assert!(private_text(&again).contains("already"), "{again}");

    let done = app.wait_for(&run, "SUCCESS").await;
    assert_eq!(done["status"], "SUCCESS");
    let thread = format!("/api/v10/channels/{card_id}/messages");
    let calls = fake
        .calls_when(|calls| {
            calls
                .iter()
                .any(|c| c.path == thread && c.content().contains("SUCCESS"))
        })
        .await;
    let in_thread: Vec<String> = calls
        .iter()
        .filter(|c| c.path == thread)
        .map(|c| c.body["content"].as_str().unwrap().to_owned())
        .collect();
    let all = in_thread.join("\n");
    assert!(all.contains("Approved by"), "{all}");
    assert!(all.contains("```"), "log lines in the thread: {all}");
    assert!(all.contains("Catalog"), "{all}");
    let ended = calls.iter().rfind(|c| c.path == thread).unwrap();
    assert_eq!(
        ended.body["allowed_mentions"]["users"],
        json!([DEV]),
        "only the requester is pinged"
    );
    // The request lost its buttons and names the approver; the card shows SUCCESS.
    let edits: Vec<&common::discord::DiscordCall> =
        calls.iter().filter(|c| c.method == "PATCH").collect();
    let request_edit = edits
        .iter()
        .rfind(|c| c.path.contains(APPROVALS))
        .expect("request edited");
    assert_eq!(request_edit.body["components"], json!([]));
    assert!(request_edit.body.to_string().contains(&format!("<@{OPS}>")));
    let calls = fake
        .calls_when(|calls| {
            calls.iter().any(|c| {
                c.method == "PATCH"
                    && c.path.contains(CHANNEL)
                    && c.body.to_string().contains("SUCCESS")
            })
        })
        .await;
    assert!(calls.iter().any(|c| c.method == "PATCH"
        && c.path.contains(CHANNEL)
        && c.body.to_string().contains("SUCCESS")));
    let (status, entity) = app.entity("Resource", "mailer-documentdb").await;
    assert_eq!(status, 200, "{entity}");
    fake.assert_nothing_refused();
}

#[tokio::test]
async fn refusals_are_private_name_the_input_and_the_rule_and_create_nothing() {
    let fake = FakeDiscord::start().await;
    let app = discord_app(&fake).await;
    for (user, action, entity, inputs, expected) in [
        (
            DEV,
            "add-documentdb",
            Some("mailer"),
            Some("instances=9"),
            "must be at most 5 (got 9)",
        ),
        (
            DEV,
            "add-documentdb",
            Some("mailer"),
            Some("instances=three"),
            "must be a number",
        ),
        (
            DEV,
            "add-documentdb",
            Some("mailr"),
            Some("instances=2"),
            "did you mean: mailer",
        ),
        (
            DEV,
            "add-docdb",
            Some("mailer"),
            None,
            "did you mean: add-documentdb",
        ),
        (
            DEV,
            "add-documentdb",
            Some("mailer"),
            Some("name=\"unclosed"),
            "never closed",
        ),
        (
            DEV,
            "add-documentdb",
            None,
            Some("mailer instances=2"),
            "neither an entity nor key=value",
        ),
        (
            "1399999999999999999",
            "add-documentdb",
            Some("mailer"),
            Some("instances=2"),
            "may not run",
        ),
    ] {
        let (status, answer) = send(&app, &command(user, action, entity, inputs)).await;
        assert_eq!(status, 200);
        let text = private_text(&answer);
        assert!(
            text.contains(expected),
            "{action} {inputs:?}: expected `{expected}` in {text}"
        );
    }
    assert_eq!(run_count(&app).await, 0);
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert!(
        fake.calls().is_empty(),
        "nothing posted: {:?}",
        fake.calls()
    );
}

#[tokio::test]
async fn help_list_status_and_autocomplete() {
    let fake = FakeDiscord::start().await;
    let app = discord_app(&fake).await;
    let (_, help) = send(&app, &command(DEV, "help", None, None)).await;
    assert!(private_text(&help).contains("add-documentdb"), "{help}");
    let (_, list) = send(&app, &command(DEV, "list", Some("mailer"), None)).await;
    let listed = private_text(&list);
    assert!(
        listed.contains("add-documentdb") && !listed.contains("scaffold-service"),
        "{listed}"
    );
    let run = new_run(&app).await;
    let (_, status) = send(&app, &command(DEV, "status", Some(&run), None)).await;
    assert!(
        private_text(&status).contains("WAITING_FOR_APPROVAL"),
        "{status}"
    );

    let (_, actions) = send(&app, &autocomplete(DEV, "docum", None, "action")).await;
    assert_eq!(actions["type"], 8);
    let values: Vec<&str> = actions["data"]["choices"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["value"].as_str().unwrap())
        .collect();
    assert!(
        values.contains(&"add-documentdb") && !values.contains(&"scaffold-service"),
        "{values:?}"
    );
    let (_, entities) = send(
        &app,
        &autocomplete(DEV, "add-documentdb", Some("mai"), "entity"),
    )
    .await;
    assert_eq!(
        entities["data"]["choices"][0]["value"], "mailer",
        "{entities}"
    );
}

#[tokio::test]
async fn missing_inputs_open_a_modal_checked_on_submit() {
    let fake = FakeDiscord::start().await;
    let app = discord_app(&fake).await;
    let (_, modal) = send(&app, &command(DEV, "add-documentdb", Some("mailer"), None)).await;
    assert_eq!(modal["type"], 9, "{modal}");
    let form = &modal["data"];
    let custom_id = form["custom_id"].as_str().unwrap().to_owned();
    assert!(custom_id.starts_with("inputs:") && custom_id.len() <= 100);
    let field = &form["components"][0];
    assert_eq!(field["type"], 18);
    assert_eq!(field["component"]["custom_id"], "instances");
    assert!(
        field["component"]["placeholder"]
            .as_str()
            .unwrap()
            .contains("1 to 5"),
        "{field}"
    );

    let (_, refused) = send(&app, &submit(DEV, &custom_id, &[("instances", "9")])).await;
    assert!(
        private_text(&refused).contains("instances must be at most 5"),
        "{refused}"
    );
    let (_, someone_else) = send(&app, &submit(OPS, &custom_id, &[("instances", "3")])).await;
    assert!(
        private_text(&someone_else).contains("expired"),
        "{someone_else}"
    );
    assert_eq!(run_count(&app).await, 0);
    let (_, created) = send(&app, &submit(DEV, &custom_id, &[("instances", "3")])).await;
    let run = run_in(&private_text(&created));
    assert_eq!(app.run(&run).await["properties"]["instances"], 3);
    let (_, used) = send(&app, &submit(DEV, &custom_id, &[("instances", "3")])).await;
    assert!(
        private_text(&used).contains("expired"),
        "a used form: {used}"
    );
    assert_eq!(run_count(&app).await, 1);
}

#[tokio::test]
async fn a_repeated_interaction_gets_the_same_answer_and_does_nothing_twice() {
    let fake = FakeDiscord::start().await;
    let app = discord_app(&fake).await;
    let once = command(DEV, "add-documentdb", Some("mailer"), Some("instances=3"));
    let (_, first) = send(&app, &once).await;
    let (_, second) = send(&app, &once).await;
    assert_eq!(first, second);
    assert_eq!(run_count(&app).await, 1);
}

#[tokio::test]
async fn declining_asks_for_a_reason_that_reaches_the_thread() {
    let fake = FakeDiscord::start().await;
    let app = discord_app(&fake).await;
    let run = new_run(&app).await;
    let (_, refused) = send(&app, &click(DEV, &format!("decline:{run}"))).await;
    assert!(
        private_text(&refused).contains("may not decide"),
        "{refused}"
    );
    let (_, modal) = send(&app, &click(OPS, &format!("decline:{run}"))).await;
    assert_eq!(modal["type"], 9, "{modal}");
    assert_eq!(modal["data"]["custom_id"], format!("reason:{run}"));
    let (_, done) = send(
        &app,
        &submit(
            OPS,
            &format!("reason:{run}"),
            &[("reason", "use <@everyone> the shared cluster")],
        ),
    )
    .await;
    assert_eq!(done, json!({"type": 6}));
    assert_eq!(app.run(&run).await["status"], "DECLINED");
    let calls = fake
        .calls_when(|calls| calls.iter().any(|c| c.content().contains("Declined")))
        .await;
    let declined = calls
        .iter()
        .find(|c| c.content().contains("Declined"))
        .unwrap();
    let content = declined.body["content"].as_str().unwrap();
    assert!(
        content.contains("the shared cluster") && !content.contains("<@everyone>"),
        "{content}"
    );
    fake.assert_nothing_refused();
}

#[tokio::test]
async fn rate_limits_and_outages_are_waited_out_and_every_line_arrives_once_in_order() {
    let fake = FakeDiscord::start().await;
    fake.throttle_next.store(3, SeqCst);
    fake.fail_next.store(2, SeqCst);
    let app = discord_app(&fake).await;
    // A run through the API whose backend is the test: it logs long lines and ends.
    let run = new_run(&app).await;
    let long = "x".repeat(5_000);
    let mut lines: Vec<String> = (0..30).map(|i| format!("line {i:02}")).collect();
    lines.insert(10, long.clone());
    for line in &lines {
        let (status, body) = app
            .backend(
                "POST",
                &format!("/v1/actions/runs/{run}/logs"),
                Some(json!({"message": line})),
            )
            .await;
        assert_eq!(status, 200, "{body}");
    }
    let calls = fake
        .calls_when(|calls| calls.iter().any(|c| c.content().contains("line 29")))
        .await;
    let text: String = calls
        .iter()
        .filter_map(|c| c.body["content"].as_str())
        .collect::<Vec<_>>()
        .join("\n");
    let mut at = 0;
    for i in 0..30 {
        let line = format!("line {i:02}");
        assert_eq!(text.matches(&line).count(), 1, "{line} once");
        let found = text[at..]
            .find(&line)
            .unwrap_or_else(|| panic!("{line} in order"));
        at += found;
    }
    assert!(text.contains("[line cut]"), "the long line is cut visibly");
    assert!(fake.throttled.load(SeqCst) >= 3);
    fake.assert_nothing_refused();
}

#[tokio::test]
async fn a_message_whose_answer_was_lost_is_not_posted_again() {
    let fake = FakeDiscord::start().await;
    // The card, the approval request and the first thread reply are created, but portbot only
    // hears 502s, so it posts each again.
    fake.lose_answers_next.store(3, SeqCst);
    let app = discord_app(&fake).await;
    let run = new_run(&app).await;
    let (status, body) = app
        .backend(
            "POST",
            &format!("/v1/actions/runs/{run}/logs"),
            Some(json!({"message": "provisioning"})),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    fake.calls_when(|calls| calls.iter().any(|c| c.content().contains("provisioning")))
        .await;
    let about_run = |channel: &str| {
        fake.posted_in(channel)
            .iter()
            .filter(|m| m.to_string().contains(&run))
            .count()
    };
    assert_eq!(about_run(CHANNEL), 1, "the card once");
    assert_eq!(about_run(APPROVALS), 1, "the approval request once");
    let replies = fake
        .calls()
        .iter()
        .filter(|c| c.content().contains("provisioning"))
        .count();
    assert_eq!(replies, 1, "the thread reply once");
    assert_eq!(fake.lose_answers_next.load(SeqCst), 0);
    fake.assert_nothing_refused();
}

#[tokio::test]
async fn without_access_to_the_channel_the_card_goes_to_the_requester_and_a_missing_thread_is_started(
) {
    let fake = FakeDiscord::start().await;
    fake.forbidden.lock().unwrap().insert(CHANNEL.into());
    let app = discord_app(&fake).await;
    let run = new_run(&app).await;
    let direct = format!("9{DEV}");
    let calls = fake
        .calls_when(|calls| calls.iter().any(|c| c.path.ends_with("/threads")))
        .await;
    let card = fake.posted_in(&direct);
    assert!(card[0].to_string().contains("can't post in"), "{card:?}");
    assert!(calls
        .iter()
        .any(|c| c.path == "/api/v10/users/@me/channels"));
    let (_, _) = app.decide(&format!("discord:{OPS}"), &run, "APPROVE").await;
    app.wait_for(&run, "SUCCESS").await;
    // Updated, the card still says why it is in a direct message.
    let edits_of_card = |calls: &[common::discord::DiscordCall]| -> Vec<String> {
        let prefix = format!("/api/v10/channels/{direct}/messages/");
        calls
            .iter()
            .filter(|c| c.method == "PATCH" && c.path.starts_with(&prefix))
            .map(|c| c.body.to_string())
            .collect()
    };
    let calls = fake
        .calls_when(|calls| edits_of_card(calls).iter().any(|e| e.contains("SUCCESS")))
        .await;
    let edits = edits_of_card(&calls);
    assert!(
        edits.iter().any(|e| e.contains("SUCCESS"))
            && edits.iter().all(|e| e.contains("can't post in")),
        "{edits:?}"
    );
}

/// A card and an approval request someone deleted are tried once each, and the thread goes on.
#[tokio::test]
async fn deleted_messages_are_not_edited_again_and_the_thread_goes_on() {
    let fake = FakeDiscord::start().await;
    let app = discord_app(&fake).await;
    let run = new_run(&app).await;
    let request = format!("/api/v10/channels/{APPROVALS}/messages");
    fake.calls_when(|calls| {
        calls.iter().any(|c| c.path.ends_with("/threads"))
            && calls.iter().any(|c| c.path == request)
    })
    .await;
    fake.messages_deleted.store(true, SeqCst);
    let (status, body) = app.decide(&format!("discord:{OPS}"), &run, "APPROVE").await;
    assert_eq!(status, 200, "{body}");
    app.wait_for(&run, "SUCCESS").await;
    let calls = until_posted(&fake, "your run ended").await;
    assert!(
        calls.iter().any(|c| c.content().contains("your run ended")),
        "{calls:?}"
    );
    // Long enough for a retry (after 0.5 s, then 1 s) to show.
    tokio::time::sleep(std::time::Duration::from_millis(2_000)).await;
    assert_eq!(
        fake.edits_of_deleted.load(SeqCst),
        2,
        "the card and the request, once each"
    );
    assert!(!fake
        .calls()
        .iter()
        .any(|c| c.method == "PATCH" && c.path.contains("/channels/")));
}

#[tokio::test]
async fn discord_register_puts_the_port_command() {
    let fake = FakeDiscord::start().await;
    let output = tokio::process::Command::new(common::binary())
        .arg("discord-register")
        .arg("--guild")
        .arg("42")
        .env("PORTBOT__DISCORD__BOT_TOKEN", BOT_TOKEN)
        .env(
            "PORTBOT__DISCORD__APPLICATION_ID",
            common::discord::APPLICATION_ID,
        )
        .env("PORTBOT__DISCORD__API_URL", fake.api_url())
        .output()
        .await
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let calls = fake.calls();
    assert_eq!(calls.len(), 1);
    assert_eq!(calls[0].method, "PUT");
    assert_eq!(
        calls[0].path,
        format!(
            "/api/v10/applications/{}/guilds/42/commands",
            common::discord::APPLICATION_ID
        )
    );
    assert_eq!(calls[0].body[0]["name"], "port");
    assert_eq!(calls[0].body[0]["options"][0]["autocomplete"], true);
}

#[tokio::test]
async fn where_threads_are_refused_replies_go_under_the_card() {
    let fake = FakeDiscord::start().await;
    fake.no_threads.store(true, SeqCst);
    let app = discord_app(&fake).await;
    let run = new_run(&app).await;
    app.decide(&format!("discord:{OPS}"), &run, "APPROVE").await;
    app.wait_for(&run, "SUCCESS").await;
    let calls = until_posted(&fake, "SUCCESS").await;
    let card = calls
        .iter()
        .find(|c| c.path.ends_with(&format!("{CHANNEL}/messages")))
        .unwrap();
    let replies: Vec<_> = fake.posted_in(CHANNEL).into_iter().skip(1).collect();
    assert!(replies.len() >= 3, "{replies:?}");
    assert!(
        replies
            .iter()
            .all(|r| r["message_reference"]["message_id"].is_string()),
        "{replies:?}"
    );
    assert!(card.body.get("message_reference").is_none());
    assert!(replies
        .iter()
        .any(|r| r["content"].as_str().unwrap().contains("SUCCESS")));
}

/// One app with Slack and Discord both on.
async fn both_platforms(slack: &common::FakeSlack, discord: &FakeDiscord) -> TestApp {
    TestApp::spawn_with(&[], |settings| {
        common::slack::enable(settings, slack);
        common::discord::enable(settings, discord);
    })
    .await
}

#[tokio::test]
async fn a_run_started_in_slack_is_approved_in_discord_and_both_follow_it() {
    let slack = common::FakeSlack::start().await;
    let discord = FakeDiscord::start().await;
    let app = both_platforms(&slack, &discord).await;
    let form = common::slack::form("UDEV", "add-documentdb mailer instances=3");
    let now = chrono::Utc::now().timestamp();
    let (status, body) =
        common::slack::send_signed(&app, "/slack/commands", &form, now, common::slack::SECRET)
            .await;
    assert_eq!(status, 200, "{body}");
    let run = app.admin("GET", "/v1/actions/runs", None, None).await.1["runs"][0]["id"]
        .as_str()
        .unwrap()
        .to_owned();

    // Both approval channels get the request; the Discord approver decides.
    discord
        .calls_when(|calls| calls.iter().any(|c| c.path.contains(APPROVALS)))
        .await;
    assert_eq!(
        discord.posted_in(APPROVALS)[0]["components"][0]["components"][0]["custom_id"],
        format!("approve:{run}")
    );
    let (_, answer) = send(&app, &click(OPS, &format!("approve:{run}"))).await;
    assert_eq!(answer, json!({"type": 6}));
    app.wait_for(&run, "SUCCESS").await;

    // Slack's thread says who approved; Slack's request lost its buttons; no Discord card.
    let calls = slack
        .calls_when(|calls| {
            common::mentions(calls, "SUCCESS") && common::mentions(calls, &format!("discord:{OPS}"))
        })
        .await;
    assert!(
        common::mentions(&calls, &format!("Approved by discord:{OPS}")),
        "{}",
        slack.text_in("C123")
    );
    let slack_request = calls
        .iter()
        .rfind(|c| c.method == "chat.update" && c.body["channel"] == "CAPPROVE")
        .unwrap();
    assert!(
        !slack_request.body["blocks"]
            .to_string()
            .contains("\"actions\""),
        "buttons gone in Slack"
    );
    let discord_edit = discord
        .calls_when(|calls| {
            calls
                .iter()
                .any(|c| c.method == "PATCH" && c.path.contains(APPROVALS))
        })
        .await;
    let edit = discord_edit
        .iter()
        .rfind(|c| c.method == "PATCH" && c.path.contains(APPROVALS))
        .unwrap();
    assert_eq!(
        edit.body["components"],
        json!([]),
        "buttons gone in Discord"
    );
    assert!(
        discord.posted_in(CHANNEL).is_empty(),
        "a Slack run has no Discord card"
    );
}

#[tokio::test]
async fn a_run_started_in_discord_is_approved_in_slack_and_both_follow_it() {
    let slack = common::FakeSlack::start().await;
    let discord = FakeDiscord::start().await;
    let app = both_platforms(&slack, &discord).await;
    let run = new_run(&app).await;
    slack
        .calls_when(|calls| calls.iter().any(|c| c.body["channel"] == "CAPPROVE"))
        .await;
    let click = common::slack::click("UOPS", "approve", &run);
    let now = chrono::Utc::now().timestamp();
    let (status, _) = common::slack::send_signed(
        &app,
        "/slack/interactions",
        &click,
        now,
        common::slack::SECRET,
    )
    .await;
    assert_eq!(status, 200);
    app.wait_for(&run, "SUCCESS").await;
    let calls = discord
        .calls_when(|calls| {
            let all: String = calls
                .iter()
                .filter_map(|c| c.body["content"].as_str())
                .collect();
            all.contains("Approved by") && all.contains("SUCCESS")
        })
        .await;
    let thread: String = calls
        .iter()
        .filter_map(|c| c.body["content"].as_str())
        .collect::<Vec<_>>()
        .join("\n");
    assert!(thread.contains("Approved by slack:UOPS"), "{thread}");
    let discord_edit = discord
        .calls_when(|calls| {
            calls
                .iter()
                .any(|c| c.method == "PATCH" && c.path.contains(APPROVALS))
        })
        .await;
    assert!(discord_edit.iter().any(|c| c.method == "PATCH"
        && c.path.contains(APPROVALS)
        && c.body["components"] == json!([])));
    assert!(
        !slack.text_in("C123").contains(&run),
        "a Discord run has no Slack card"
    );
}

#[tokio::test]
async fn a_thread_that_fails_to_start_is_started_when_the_reply_is_tried_again() {
    let fake = FakeDiscord::start().await;
    fake.fail_threads_next.store(1, SeqCst);
    let app = discord_app(&fake).await;
    let run = new_run(&app).await;
    app.decide(&format!("discord:{OPS}"), &run, "APPROVE").await;
    app.wait_for(&run, "SUCCESS").await;
    let calls = until_posted(&fake, "SUCCESS").await;
    let card = calls
        .iter()
        .find(|c| c.method == "POST" && c.path.ends_with(&format!("{CHANNEL}/messages")))
        .unwrap();
    let threads: Vec<_> = calls
        .iter()
        .filter(|c| c.path.ends_with("/threads"))
        .collect();
    assert_eq!(threads.len(), 1, "started once, by the first reply");
    let card_id = threads[0].path.split('/').nth_back(1).unwrap();
    assert!(
        fake.posted_in(card_id).len() >= 3,
        "the replies are in the thread"
    );
    assert!(card.body.get("message_reference").is_none());
}

#[tokio::test]
async fn gateway_mode_answers_interactions_and_resumes_after_a_reconnect() {
    let fake = FakeDiscord::start().await;
    let gateway = common::discord::FakeGateway::start().await;
    *fake.gateway_url.lock().unwrap() = Some(gateway.url.clone());
    let app = discord_app_with(&fake, |s| {
        s.discord.public_key = None;
        s.discord.gateway = true;
    })
    .await;
    let identify = gateway.sent(2, 1).await;
    assert_eq!(identify[0]["d"]["token"], BOT_TOKEN);
    assert_eq!(identify[0]["d"]["intents"], 0);
    assert!(!gateway.sent(1, 1).await.is_empty(), "heartbeats");
    // Without a public key there is no HTTP endpoint.
    let (status, _) = send(&app, &json!({"type": 1})).await;
    assert_eq!(status, 404);

    let asked = command(DEV, "add-documentdb", Some("mailer"), Some("instances=3"));
    gateway.dispatch(asked.clone());
    let callback = format!(
        "/api/v10/interactions/{}/{}/callback",
        asked["id"].as_str().unwrap(),
        asked["token"].as_str().unwrap()
    );
    let answer = fake.call_to(&callback).await.body;
    let run = run_in(&private_text(&answer));

    // Discord asks for a reconnect: the session is resumed from the last sequence number.
    gateway.reconnect();
    let resume = gateway.sent(6, 1).await;
    assert_eq!(resume.len(), 1, "resumed");
    assert_eq!(resume[0]["d"]["session_id"], "s1");
    assert!(resume[0]["d"]["seq"].as_u64().unwrap() >= 2);
    assert_eq!(gateway.sent(2, 1).await.len(), 1, "not identified again");
    let click = click(OPS, &format!("approve:{run}"));
    gateway.dispatch(click.clone());
    app.wait_for(&run, "SUCCESS").await;
}

#[tokio::test]
async fn a_late_answer_is_deferred_then_sent_where_discord_expects_it() {
    let fake = FakeDiscord::start().await;
    let app = discord_app_with(&fake, |s| {
        s.discord.defer_after_ms = 0;
    })
    .await;
    // A command: "thinking…" (private), then the answer replaces it.
    let asked = command(DEV, "add-documentdb", Some("mailer"), Some("instances=3"));
    let (_, first) = send(&app, &asked).await;
    assert_eq!(first, json!({"type": 5, "data": {"flags": 64}}));
    let original = format!(
        "/api/v10/webhooks/{}/{}/messages/@original",
        common::discord::APPLICATION_ID,
        asked["token"].as_str().unwrap()
    );
    let edit = fake.call_to(&original).await;
    assert_eq!(edit.method, "PATCH");
    assert!(
        edit.content().contains("WAITING_FOR_APPROVAL"),
        "{:?}",
        edit.body
    );
    let run = run_in(edit.content());

    // A click: acknowledged at once, and a refusal follows privately.
    let refused = click(DEV, &format!("approve:{run}"));
    let (_, first) = send(&app, &refused).await;
    assert_eq!(first["type"], 6, "{first}");
    let follow_up = format!(
        "/api/v10/webhooks/{}/{}",
        common::discord::APPLICATION_ID,
        refused["token"].as_str().unwrap()
    );
    let sent = fake.call_to(&follow_up).await;
    assert_eq!(
        (sent.method.as_str(), &sent.body["flags"]),
        ("POST", &json!(64))
    );
    assert!(sent.content().contains("may not"), "{:?}", sent.body);
    fake.assert_nothing_refused();
}

#[tokio::test]
async fn requests_keep_under_the_bots_global_limit() {
    let fake = FakeDiscord::start().await;
    let app = discord_app_with(&fake, |s| {
        s.discord.requests_per_second = 10;
    })
    .await;
    // Three runs at once: cards, threads, approval requests and replies, all to one bot.
    for _ in 0..3 {
        new_run(&app).await;
    }
    let calls = fake.calls_when(|calls| calls.len() >= 12).await;
    assert!(calls.len() >= 12, "{} calls", calls.len());
    let mut times: Vec<std::time::Instant> = calls.iter().map(|c| c.at).collect();
    times.sort();
    for pair in times.windows(2) {
        let gap = pair[1] - pair[0];
        // 100 ms apart at 10 a second, less what scheduling may shift one request.
        assert!(
            gap >= std::time::Duration::from_millis(80),
            "{gap:?} between two requests"
        );
    }
}

#[tokio::test]
async fn a_day_2_modal_is_prefilled_with_the_entitys_current_values() {
    let fake = FakeDiscord::start().await;
    let app = discord_app(&fake).await;
    let resource = json!({"identifier": "mailer-documentdb", "properties": {"type": "documentdb", "instances": 3}});
    let (status, _) = app
        .backend("POST", "/v1/blueprints/Resource/entities", Some(resource))
        .await;
    assert_eq!(status, 200);
    let (_, modal) = send(
        &app,
        &command(DEV, "update-documentdb", Some("mailer-documentdb"), None),
    )
    .await;
    assert_eq!(modal["type"], 9, "{modal}");
    let fields = modal["data"]["components"].as_array().unwrap();
    let instances = fields
        .iter()
        .find(|f| f["component"]["custom_id"] == "instances")
        .expect("an instances field");
    assert_eq!(instances["component"]["value"], "3");
}
