//! Slack's side of the tests: signed slash-command forms, button clicks and form submissions in
//! the shapes Slack posts (PROTOCOL-NOTES §1, §4).

use hmac::{Hmac, Mac};
use serde_json::{json, Value};
use sha2::Sha256;

use super::{FakeSlack, TestApp};

pub const SECRET: &str = "test-signing-secret";
pub const BOT_TOKEN: &str = "xoxb-test-token";

/// Turns Slack on against `fake`: approvals in `CAPPROVE`, `UDEV` a developer and `UOPS` in
/// devops.
pub fn enable(settings: &mut portbot::config::Settings, fake: &FakeSlack) {
    settings.slack.enabled = true;
    settings.slack.signing_secret = Some(serde_json::from_value(json!(SECRET)).unwrap());
    settings.slack.bot_token = Some(serde_json::from_value(json!(BOT_TOKEN)).unwrap());
    settings.slack.api_url = fake.api_url();
    settings.slack.approval_channel = Some("CAPPROVE".into());
    settings.slack.message_interval_ms = 100;
    for team in &mut settings.teams {
        match team.identifier.as_str() {
            "developers" => team.slack_users.push("UDEV".into()),
            "devops" => team.slack_users.push("UOPS".into()),
            _ => {}
        }
    }
}

/// Posts `body` to `path` signed as Slack signs it at `timestamp`; the status and the body.
pub async fn send_signed(
    app: &TestApp,
    path: &str,
    body: &str,
    timestamp: i64,
    secret: &str,
) -> (u16, String) {
    let response = app
        .http
        .post(format!("{}{path}", app.base))
        .header("content-type", "application/x-www-form-urlencoded")
        .header("x-slack-request-timestamp", timestamp.to_string())
        .header("x-slack-signature", signature(secret, timestamp, body))
        .body(body.to_owned())
        .send()
        .await
        .unwrap();
    (response.status().as_u16(), response.text().await.unwrap())
}

pub fn signature(secret: &str, timestamp: i64, body: &str) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(format!("v0:{timestamp}:{body}").as_bytes());
    format!("v0={}", hex::encode(mac.finalize().into_bytes()))
}

/// The form Slack posts for `/port <text>` typed by `user`.
pub fn form(user: &str, text: &str) -> String {
    form_answered_at(user, text, "https://hooks.slack.invalid/commands/1")
}

/// The same, with late answers going to `response_url`. Each form has a `trigger_id` of its
/// own, as each command Slack sends does (portbot takes one command per `trigger_id`).
pub fn form_answered_at(user: &str, text: &str, response_url: &str) -> String {
    static TRIGGERS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    let n = TRIGGERS.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    let trigger = format!("{n}.456.abc");
    serde_urlencoded::to_string([
        ("token", "deprecated"),
        ("team_id", "T1"),
        ("team_domain", "acme"),
        ("channel_id", "C123"),
        ("channel_name", "dev"),
        ("user_id", user),
        ("user_name", "someone"),
        ("command", "/port"),
        ("text", text),
        ("api_app_id", "A1"),
        ("is_enterprise_install", "false"),
        ("response_url", response_url),
        ("trigger_id", trigger.as_str()),
    ])
    .unwrap()
}

/// The `trigger_id` of a slash command's form.
pub fn trigger_of(form: &str) -> String {
    let fields: Vec<(String, String)> = serde_urlencoded::from_str(form).unwrap();
    let (_, trigger) = fields.into_iter().find(|(k, _)| k == "trigger_id").unwrap();
    trigger
}

/// A click on an approval request's button, as Slack posts it (PROTOCOL-NOTES §4).
pub fn click(user: &str, action: &str, run: &str) -> String {
    let payload = json!({
        "type": "block_actions",
        "user": {"id": user, "username": "someone", "name": "someone", "team_id": "T1"},
        "api_app_id": "A1",
        "token": "deprecated",
        "container": {"type": "message", "message_ts": "1700000000.000002", "channel_id": "CAPPROVE", "is_ephemeral": false},
        "trigger_id": "123.456.def",
        "team": {"id": "T1", "domain": "acme"},
        "enterprise": null,
        "is_enterprise_install": false,
        "channel": {"id": "CAPPROVE", "name": "approvals"},
        "message": {"type": "message", "ts": "1700000000.000002", "text": "Approval needed", "blocks": []},
        "response_url": "https://hooks.slack.invalid/actions/1",
        "actions": [{
            "action_id": action, "block_id": "approval",
            "text": {"type": "plain_text", "text": "Approve", "emoji": true},
            "value": run, "style": "primary", "type": "button", "action_ts": "1700000001.000000"
        }],
        "state": {"values": {}}
    });
    serde_urlencoded::to_string([("payload", payload.to_string())]).unwrap()
}

/// A submission of the inputs form, as Slack posts it (PROTOCOL-NOTES §4).
pub fn submission(user: &str, key: &str, values: Value) -> String {
    view_submission(user, "portbot_inputs", key, values)
}

/// A submission of the reason form a decliner gets, as Slack posts it; `metadata` is what the
/// opened form carried.
pub fn decline_submission(user: &str, metadata: &str, reason: &str) -> String {
    let values = json!({"reason": {"value": {"type": "plain_text_input", "value": reason}}});
    view_submission(user, "portbot_decline", metadata, values)
}

/// A `view_submission` of the form `callback_id` that carried `metadata`, as Slack posts it.
fn view_submission(user: &str, callback_id: &str, metadata: &str, values: Value) -> String {
    let payload = json!({
        "type": "view_submission",
        "team": {"id": "T1", "domain": "acme"},
        "user": {"id": user, "username": "someone", "name": "someone", "team_id": "T1"},
        "api_app_id": "A1",
        "token": "deprecated",
        "trigger_id": "789.012.ghi",
        "view": {
            "id": "V1", "team_id": "T1", "type": "modal", "callback_id": callback_id,
            "private_metadata": metadata, "blocks": [], "state": {"values": values},
            "hash": "h", "title": {"type": "plain_text", "text": "Run an action"},
            "root_view_id": "V1", "previous_view_id": null, "app_id": "A1", "external_id": "",
            "bot_id": "B1", "clear_on_close": false, "notify_on_close": false
        },
        "response_urls": [],
        "is_enterprise_install": false,
        "enterprise": null
    });
    serde_urlencoded::to_string([("payload", payload.to_string())]).unwrap()
}

/// The `chat.update` calls of the card at `card_ts`, blocks as JSON text, in order.
pub fn card_updates(fake: &FakeSlack, card_ts: &str) -> Vec<String> {
    fake.calls()
        .iter()
        .filter(|c| c.method == "chat.update" && c.body["ts"] == card_ts)
        .map(|c| c.body["blocks"].to_string())
        .collect()
}

/// For a run in progress whose card is at `card_ts`: sets `labels` as its status label one at
/// a time, each waited for on the card (so each is an update of its own), then ends the run with
/// SUCCESS and waits for the thread's last reply. Panics if a labelled card is not shown.
pub async fn label_then_end(
    app: &TestApp,
    fake: &FakeSlack,
    run: &str,
    card_ts: &str,
    labels: &[&str],
) {
    for label in labels {
        let (status, body) = app.patch_run(run, json!({"statusLabel": label})).await;
        assert_eq!(status, 200, "{body}");
        fake.calls_when(|_| {
            card_updates(fake, card_ts)
                .iter()
                .any(|c| c.contains(label))
        })
        .await;
        assert!(
            card_updates(fake, card_ts)
                .iter()
                .any(|c| c.contains(label)),
            "the card never showed `{label}`: {:?}",
            fake.calls()
        );
    }
    let (status, body) = app.patch_run(run, json!({"status": "SUCCESS"})).await;
    assert_eq!(status, 200, "{body}");
    fake.calls_when(|calls| super::mentions(calls, "your run ended"))
        .await;
    assert!(
        super::mentions(&fake.calls(), "your run ended"),
        "{:?}",
        fake.calls()
    );
}
