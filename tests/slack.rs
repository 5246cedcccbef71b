//! Slack's slash command end to end, signed exactly as Slack signs: runs created or refused
//! with a clear ephemeral answer, help/list/status, and forged, stale or replayed requests
//! refused with 401 and nothing stored.

mod common;

use common::slack::{
    card_updates, click, decline_submission, form, form_answered_at, label_then_end, send_signed,
    signature, submission, trigger_of, BOT_TOKEN, SECRET,
};
use common::{mentions, verify_port_signature, FakeSlack, Receiver, TestApp};
use serde_json::{json, Value};

async fn slack_app() -> TestApp {
    slack_app_with(&FakeSlack::start().await).await
}

async fn slack_app_with(fake: &FakeSlack) -> TestApp {
    slack_app_tweaked(fake, |_| {}).await
}

async fn slack_app_tweaked(
    fake: &FakeSlack,
    tweak: impl FnOnce(&mut portbot::config::Settings),
) -> TestApp {
    TestApp::spawn_with(&[], move |settings| {
        tweak(settings);
        common::slack::enable(settings, fake);
    })
    .await
}

async fn post_signed(app: &TestApp, body: &str, timestamp: i64, secret: &str) -> (u16, String) {
    send_signed(app, "/slack/commands", body, timestamp, secret).await
}

async fn command(app: &TestApp, user: &str, text: &str) -> Value {
    let (status, body) = post_signed(
        app,
        &form(user, text),
        chrono::Utc::now().timestamp(),
        SECRET,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

fn all_text(reply: &Value) -> String {
    reply["blocks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b.to_string())
        .collect::<Vec<_>>()
        .join("\n")
}

async fn run_count(app: &TestApp) -> usize {
    let (_, body) = app.admin("GET", "/v1/actions/runs", None, None).await;
    body["runs"].as_array().unwrap().len()
}

/// Slack documents no retries of slash commands, but a copy of one (same `trigger_id`, signed
/// anew) is answered with the run the first one made, and makes no second.
#[tokio::test]
async fn a_command_that_comes_twice_makes_one_run() {
    let app = slack_app().await;
    let typed = form("UDEV", "add-documentdb mailer instances=3");
    let now = chrono::Utc::now().timestamp();
    let (status, first) = post_signed(&app, &typed, now, SECRET).await;
    assert_eq!(status, 200, "{first}");
    let (status, again) = post_signed(&app, &typed, now + 1, SECRET).await;
    assert_eq!(status, 200, "{again}");
    let (_, runs) = app.admin("GET", "/v1/actions/runs", None, None).await;
    assert_eq!(runs["runs"].as_array().unwrap().len(), 1, "{runs}");
    let run = runs["runs"][0]["id"].as_str().unwrap();
    assert!(first.contains(run), "{first}");
    let again: Value = serde_json::from_str(&again).unwrap();
    let shown = all_text(&again);
    assert_eq!(again["response_type"], "ephemeral");
    assert!(
        shown.contains("received already") && shown.contains(run),
        "{shown}"
    );
    // Another command (its own trigger_id) is a run of its own.
    command(&app, "UDEV", "add-documentdb mailer instances=3").await;
    assert_eq!(run_count(&app).await, 2);
}

#[tokio::test]
async fn a_valid_command_creates_the_run_for_the_slack_user() {
    let app = slack_app().await;
    let reply = command(&app, "UDEV", "add-documentdb mailer instances=3").await;
    assert_eq!(reply["response_type"], "ephemeral");
    let text = all_text(&reply);
    assert!(text.contains("WAITING_FOR_APPROVAL"), "{text}");
    let (_, body) = app.admin("GET", "/v1/actions/runs", None, None).await;
    let run = &body["runs"][0];
    assert_eq!(run["createdBy"], "slack:UDEV");
    assert_eq!(run["origin"], "SLACK");
    assert_eq!(run["properties"]["instances"], 3);
    assert!(text.contains(run["id"].as_str().unwrap()), "{text}");
    // The approver in the devops team approves through the API as the same Slack identity.
    let (status, body) = app
        .decide("slack:UOPS", run["id"].as_str().unwrap(), "APPROVE")
        .await;
    assert_eq!(status, 200, "{body}");
}

#[tokio::test]
async fn an_answer_not_ready_in_time_follows_at_the_response_url() {
    let fake = FakeSlack::start().await;
    // 0: no answer is ever waited for, so each takes the late way.
    let app = slack_app_tweaked(&fake, |s| s.slack.defer_after_ms = 0).await;
    let text = "add-documentdb mailer instances=3";
    let (status, body) = post_signed(
        &app,
        &form_answered_at("UDEV", text, &fake.response_url()),
        chrono::Utc::now().timestamp(),
        SECRET,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let working: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(working["response_type"], "ephemeral");
    assert!(
        all_text(&working).contains(&format!("Working on `/port {text}`")),
        "{working}"
    );

    let calls = fake
        .calls_when(|calls| calls.iter().any(|c| c.method == "response_url"))
        .await;
    let late = calls
        .iter()
        .find(|c| c.method == "response_url")
        .expect("the answer follows at the response_url");
    assert_eq!(late.content_type, "application/json; charset=utf-8");
    assert_eq!(
        late.authorization, "",
        "the bot token stays with the Web API"
    );
    let (_, runs) = app.admin("GET", "/v1/actions/runs", None, None).await;
    let run = runs["runs"][0]["id"].as_str().unwrap();
    assert_eq!(late.body["response_type"], "ephemeral");
    let answer = all_text(&late.body);
    assert!(
        answer.contains(run) && answer.contains("WAITING_FOR_APPROVAL"),
        "{answer}"
    );

    // A refusal takes the same way, and still creates nothing.
    post_signed(
        &app,
        &form_answered_at(
            "UDEV",
            "add-documentdb mailer instances=9",
            &fake.response_url(),
        ),
        chrono::Utc::now().timestamp(),
        SECRET,
    )
    .await;
    let calls = fake
        .calls_when(|calls| calls.iter().filter(|c| c.method == "response_url").count() == 2)
        .await;
    let refusal = calls.iter().rfind(|c| c.method == "response_url").unwrap();
    assert!(
        all_text(&refusal.body).contains("instances"),
        "{:?}",
        refusal.body
    );
    assert_eq!(run_count(&app).await, 1);

    // A response_url that no longer takes answers (Slack's 404): the answer goes to the user
    // privately through the Web API instead.
    let expired = format!("http://{}/expired/T1/2/secret", fake.addr);
    post_signed(
        &app,
        &form_answered_at("UDEV", "add-documentdb mailer instances=4", &expired),
        chrono::Utc::now().timestamp(),
        SECRET,
    )
    .await;
    let calls = fake
        .calls_when(|calls| calls.iter().any(|c| c.method == "chat.postEphemeral"))
        .await;
    let private = calls
        .iter()
        .find(|c| c.method == "chat.postEphemeral")
        .expect("the answer, privately");
    assert_eq!(private.authorization, format!("Bearer {BOT_TOKEN}"));
    assert_eq!(
        (&private.body["channel"], &private.body["user"]),
        (&json!("C123"), &json!("UDEV"))
    );
    assert!(
        all_text(&private.body).contains("WAITING_FOR_APPROVAL"),
        "{:?}",
        private.body
    );
    assert_eq!(run_count(&app).await, 2);

    // A response_url neither on Slack's hooks host nor on the Web API's origin gets nothing:
    // the answer goes privately through the Web API.
    let elsewhere = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let elsewhere_url = format!(
        "http://{}/commands/T1/3/secret",
        elsewhere.local_addr().unwrap()
    );
    post_signed(
        &app,
        &form_answered_at("UDEV", "add-documentdb mailer instances=5", &elsewhere_url),
        chrono::Utc::now().timestamp(),
        SECRET,
    )
    .await;
    let calls = fake
        .calls_when(|calls| {
            calls
                .iter()
                .filter(|c| c.method == "chat.postEphemeral")
                .count()
                == 2
        })
        .await;
    let private = calls
        .iter()
        .rfind(|c| c.method == "chat.postEphemeral")
        .unwrap();
    assert!(
        all_text(&private.body).contains("WAITING_FOR_APPROVAL"),
        "{:?}",
        private.body
    );
    let contacted =
        tokio::time::timeout(std::time::Duration::from_millis(200), elsewhere.accept()).await;
    assert!(contacted.is_err(), "portbot connected to {elsewhere_url}");
    assert_eq!(run_count(&app).await, 3);
}

#[tokio::test]
async fn forms_show_their_problems_at_once_and_close_while_the_rest_goes_on() {
    let fake = FakeSlack::start().await;
    // 0: no answer is ever waited for: only what is checked without waiting is answered.
    let app = slack_app_tweaked(&fake, |s| s.slack.defer_after_ms = 0).await;
    let form = form_answered_at("UDEV", "add-documentdb mailer", &fake.response_url());
    fake.triggers
        .lock()
        .unwrap()
        .insert(trigger_of(&form), std::time::Instant::now());
    let (status, _) = post_signed(&app, &form, chrono::Utc::now().timestamp(), SECRET).await;
    assert_eq!(status, 200);
    let opened = |calls: &[common::SlackCall]| {
        calls
            .iter()
            .filter(|c| c.method == "views.open")
            .map(|c| {
                c.body["view"]["private_metadata"]
                    .as_str()
                    .unwrap()
                    .to_owned()
            })
            .collect::<Vec<_>>()
    };
    let key = opened(&fake.calls_when(|c| !opened(c).is_empty()).await)[0].clone();
    let instances = |v: &str| json!({"instances": {"value": {"type": "number_input", "value": v}}});
    let (_, body) = post_interaction_reply(&app, &submission("UDEV", &key, instances("0"))).await;
    let reply: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        reply["errors"]["instances"],
        "instances must be at least 1 (got 0)"
    );
    let (status, body) =
        post_interaction_reply(&app, &submission("UDEV", &key, instances("2"))).await;
    assert_eq!((status, body.as_str()), (200, ""), "the form closes");
    let run = loop {
        let (_, runs) = app.admin("GET", "/v1/actions/runs", None, None).await;
        if let Some(id) = runs["runs"][0]["id"].as_str() {
            break id.to_owned();
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    };
    assert_eq!(app.run(&run).await["properties"]["instances"], 2);

    // The reason form: who may not decline is told in the form; a decline closes it at once.
    post_interaction(&app, &click("UOPS", "decline", &run)).await;
    let metadata = opened(&fake.calls_when(|c| opened(c).len() == 2).await)[1].clone();
    let (_, body) =
        post_interaction_reply(&app, &decline_submission("UDEV", &metadata, "mine")).await;
    let reply: Value = serde_json::from_str(&body).unwrap();
    assert!(
        reply["errors"]["reason"]
            .as_str()
            .is_some_and(|e| e.contains("may not decide")),
        "{reply}"
    );
    let (status, body) =
        post_interaction_reply(&app, &decline_submission("UOPS", &metadata, "not now")).await;
    assert_eq!((status, body.as_str()), (200, ""));
    let declined = app.wait_for(&run, "DECLINED").await;
    assert_eq!(
        declined["approval"]["decisions"][0]["description"],
        "not now"
    );
    assert_eq!(run_count(&app).await, 1);
}

#[tokio::test]
async fn refusals_name_the_input_and_the_rule_and_create_nothing() {
    let app = slack_app().await;
    for (user, text, expected) in [
        (
            "UDEV",
            "add-documentdb mailer instances=9",
            "`instances` must be at most 5 (got 9)",
        ),
        (
            "UDEV",
            "add-documentdb mailer instances=three",
            "`instances` must be a number",
        ),
        (
            "UDEV",
            "add-documentdb mailr instances=2",
            "did you mean: mailer",
        ),
        ("UDEV", "add-docdb mailer", "did you mean: add-documentdb"),
        (
            "UDEV",
            "add-documentdb mailer name=\"unclosed",
            "never closed",
        ),
        (
            "UNOBODY",
            "add-documentdb mailer instances=2",
            "slack:UNOBODY may not run `add-documentdb`",
        ),
    ] {
        let reply = command(&app, user, text).await;
        assert_eq!(reply["response_type"], "ephemeral");
        let shown = all_text(&reply);
        assert!(
            shown.contains(expected),
            "{text}: expected `{expected}` in {shown}"
        );
    }
    assert_eq!(run_count(&app).await, 0);
}

#[tokio::test]
async fn help_list_and_status() {
    let app = slack_app().await;
    let help = all_text(&command(&app, "UDEV", "help").await);
    assert!(
        help.contains("`add-documentdb`") && help.contains("`scaffold-service`"),
        "{help}"
    );
    let list = all_text(&command(&app, "UDEV", "list mailer").await);
    assert!(
        list.contains("`add-documentdb`") && !list.contains("`scaffold-service`"),
        "{list}"
    );
    let nobody = all_text(&command(&app, "UNOBODY", "list").await);
    assert!(
        nobody.contains("There are no actions you may run"),
        "{nobody}"
    );

    command(&app, "UDEV", "add-documentdb mailer instances=2").await;
    let (_, body) = app.admin("GET", "/v1/actions/runs", None, None).await;
    let id = body["runs"][0]["id"].as_str().unwrap().to_owned();
    let status = all_text(&command(&app, "UDEV", &format!("status {id}")).await);
    assert!(
        status.contains("WAITING_FOR_APPROVAL") && status.contains("slack:UDEV"),
        "{status}"
    );
    let missing = all_text(&command(&app, "UDEV", "status r_nope").await);
    assert!(missing.contains("there is no run `r_nope`"), "{missing}");
}

#[tokio::test]
async fn forged_stale_and_replayed_requests_are_refused_and_store_nothing() {
    let app = slack_app().await;
    let body = form("UDEV", "add-documentdb mailer instances=2");
    let now = chrono::Utc::now().timestamp();
    assert_eq!(post_signed(&app, &body, now, "wrong-secret").await.0, 401);
    assert_eq!(post_signed(&app, &body, now - 301, SECRET).await.0, 401);
    let unsigned = app
        .http
        .post(format!("{}/slack/commands", app.base))
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(unsigned.status(), 401);
    assert_eq!(run_count(&app).await, 0);

    assert_eq!(post_signed(&app, &body, now, SECRET).await.0, 200);
    assert_eq!(
        post_signed(&app, &body, now, SECRET).await.0,
        401,
        "a replay is refused"
    );
    assert_eq!(run_count(&app).await, 1);

    // Slack's occasional SSL check is answered.
    let (status, _) = post_signed(&app, "ssl_check=1&token=x", now, SECRET).await;
    assert_eq!(status, 200);
}

/// Bodies a signed request may carry that are no Slack request portbot can act on: each gets
/// an answer (never a server error or a dropped connection), and the bot stays up.
fn malformed_bodies() -> Vec<(&'static str, String)> {
    let payload = |json: &str| serde_urlencoded::to_string([("payload", json)]).unwrap();
    let mut bodies: Vec<(&str, String)> = [
        "",
        "=",
        "&&&",
        "command=/port",
        "user_id=UDEV&command=/port&text=add-documentdb%20mailer",
        "user_id=UDEV&channel_id=C1&text=%E0%A4&command=/port",
        "user_id=UDEV&channel_id=C1&text=%ZZ&command=/port",
    ]
    .into_iter()
    .map(|body| ("/slack/commands", body.to_owned()))
    .collect();
    bodies.push(("/slack/commands", form("UDEV", &"x".repeat(100_000))));
    for json in [
        "",
        "{",
        "null",
        "[]",
        "42",
        r#"{"type":"block_actions"}"#,
        r#"{"type":"block_actions","user":{"id":"UDEV"},"actions":[{}]}"#,
        r#"{"type":"block_actions","user":{"id":"UDEV"},"actions":[{"action_id":"approve","value":"no-such-run"}]}"#,
        r#"{"type":"view_submission","user":{"id":"UDEV"}}"#,
        r#"{"type":"view_submission","user":{"id":"UDEV"},"view":{"callback_id":"portbot_inputs","private_metadata":"{","state":{"values":[]}}}"#,
        r#"{"type":"view_submission","user":{"id":"UDEV"},"view":{"callback_id":"portbot_decline","private_metadata":"","state":{"values":{}}}}"#,
        r#"{"type":"shortcut","user":{"id":"UDEV"}}"#,
    ] {
        bodies.push(("/slack/interactions", payload(json)));
    }
    bodies.push(("/slack/interactions", "payload".to_owned()));
    bodies.push(("/slack/interactions", "payload=%7B%22type".to_owned()));
    bodies
}

#[tokio::test]
async fn signed_but_malformed_requests_get_an_answer_and_the_bot_stays_up() {
    let fake = FakeSlack::start().await;
    let app = slack_app_with(&fake).await;
    let valid = [
        (
            "/slack/commands",
            form("UDEV", "add-documentdb mailer instances=2"),
        ),
        ("/slack/commands", form("UDEV", "add-documentdb mailer")),
        (
            "/slack/interactions",
            click("UOPS", "approve", "r_0123456789abcdef"),
        ),
        (
            "/slack/interactions",
            click("UOPS", "decline", "r_0123456789abcdef"),
        ),
        (
            "/slack/interactions",
            submission(
                "UDEV",
                "{}",
                json!({"instances": {"value": {"type": "plain_text_input", "value": "2"}}}),
            ),
        ),
        (
            "/slack/interactions",
            decline_submission("UOPS", "{}", "no"),
        ),
    ];
    let bodies = valid.clone().map(|(_, body)| body);
    let mut requests = malformed_bodies();
    for (index, body) in common::mutations(&bodies, 0x5eed) {
        // Sent twice in a second, a body is a replay (401), not a malformed request.
        if requests.iter().all(|(_, sent)| *sent != body) {
            requests.push((valid[index].0, body));
        }
    }
    let mut answered = common::MalformedAnswers::default();
    for (path, body) in requests {
        let now = chrono::Utc::now().timestamp();
        let (status, answer) = send_signed(&app, path, &body, now, SECRET).await;
        answered.record(status, &format!("{path}: {answer}"), &body);
    }
    answered.assert_parsed();
    let healthy = app
        .http
        .get(format!("{}/healthz", app.base))
        .send()
        .await
        .unwrap();
    assert_eq!(healthy.status(), 200);
    let before = run_count(&app).await;
    let reply = command(&app, "UDEV", "add-documentdb mailer instances=2").await;
    assert!(all_text(&reply).contains("mailer"), "{reply}");
    assert_eq!(
        run_count(&app).await,
        before + 1,
        "a valid command still makes a run"
    );
}

/// Waits (up to 10 s) until the fake Slack got `count` calls.
async fn calls_until(fake: &FakeSlack, count: usize) -> Vec<common::SlackCall> {
    fake.calls_when(|calls| calls.len() >= count).await
}

/// The calls once the card at `card_ts` was updated to show `text`.
async fn card_updated_to(fake: &FakeSlack, card_ts: &str, text: &str) -> Vec<common::SlackCall> {
    fake.calls_when(|calls| {
        calls.iter().any(|c| {
            c.method == "chat.update"
                && c.body["ts"] == card_ts
                && c.body["blocks"].to_string().contains(text)
        })
    })
    .await
}

/// Requests a run that needs approval in C123: the calls once its card is posted, and where the
/// card is among them.
async fn command_with_card(app: &TestApp, fake: &FakeSlack) -> (Vec<common::SlackCall>, usize) {
    command(app, "UDEV", "add-documentdb mailer instances=2").await;
    let calls = calls_until(fake, 2).await;
    let at = calls
        .iter()
        .position(|c| c.body["channel"] == "C123")
        .expect("a card was posted");
    (calls, at)
}

#[tokio::test]
async fn the_run_card_and_its_thread_follow_the_run() {
    let fake = FakeSlack::start().await;
    let app = slack_app_with(&fake).await;
    let (calls, at) = command_with_card(&app, &fake).await;
    let card = &calls[at];
    assert_eq!(card.method, "chat.postMessage");
    assert_eq!(card.authorization, format!("Bearer {BOT_TOKEN}"));
    assert_eq!(card.content_type, "application/json; charset=utf-8");
    assert_eq!(card.body["channel"], "C123");
    assert!(
        card.body.get("thread_ts").is_none(),
        "the card starts the thread"
    );
    let card_text = card.body["blocks"].to_string();
    assert!(
        card_text.contains("<@UDEV>") && card_text.contains("WAITING_FOR_APPROVAL"),
        "{card_text}"
    );
    let card_ts = common::slack_ts(at);
    // The first delivery's events after the card are replies; the card it just placed shows
    // that state already, so it is not updated to the same.
    let calls = fake
        .calls_when(|calls| calls.iter().any(|c| c.body["thread_ts"] == card_ts))
        .await;
    assert!(calls.iter().any(|c| c.body["thread_ts"] == card_ts));
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert!(
        !fake
            .calls()
            .iter()
            .any(|c| c.method == "chat.update" && c.body["channel"] == "C123"),
        "{:?}",
        fake.calls()
    );

    let (_, body) = app.admin("GET", "/v1/actions/runs", None, None).await;
    let run = body["runs"][0]["id"].as_str().unwrap().to_owned();
    let (status, body) = app.decide("slack:UOPS", &run, "APPROVE").await;
    assert_eq!(status, 200, "{body}");
    app.wait_for(&run, "SUCCESS").await;

    // Every event after the card is a reply in its thread, in order; the card shows the end.
    let mut calls = Vec::new();
    for _ in 0..100 {
        calls = fake.calls();
        let updated_to_success = calls
            .iter()
            .any(|c| c.method == "chat.update" && c.body["blocks"].to_string().contains("SUCCESS"));
        if updated_to_success && mentions(&calls, "your run ended") {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let (card, thread) = common::card_thread(&calls, "C123");
    assert_eq!(card, card_ts);
    common::assert_in_order(
        &thread,
        &[
            "Waiting for approval",
            "Approved by <@UOPS>",
            "Started",
            "instance mailer-documentdb-2: available",
            "Catalog",
            "<@UDEV> your run ended: *SUCCESS*",
        ],
    );
    let updates: Vec<&common::SlackCall> = calls
        .iter()
        .filter(|c| c.method == "chat.update" && c.body["channel"] == "C123")
        .collect();
    assert!(!updates.is_empty() && updates.iter().all(|c| c.body["ts"] == card_ts));
    assert_eq!(
        fake.too_fast.load(std::sync::atomic::Ordering::SeqCst),
        0,
        "portbot kept Slack's pace per channel"
    );
    fake.assert_within_limits();
}

#[tokio::test]
async fn a_rate_limited_slack_is_waited_out_and_nothing_is_lost() {
    let fake = FakeSlack::start().await;
    fake.throttle_next
        .store(3, std::sync::atomic::Ordering::SeqCst);
    let app = slack_app_with(&fake).await;
    command(&app, "UDEV", "scaffold-service name=billing system=Cart").await;
    let (_, body) = app.admin("GET", "/v1/actions/runs", None, None).await;
    let run = body["runs"][0]["id"].as_str().unwrap().to_owned();
    app.wait_for(&run, "SUCCESS").await;
    fake.calls_when(|c| mentions(c, "your run ended")).await;
    let thread = fake.text_in("C123");
    assert!(
        thread.contains("Scaffold a service") && thread.contains("your run ended: *SUCCESS*"),
        "{thread}"
    );
    assert_eq!(
        fake.throttle_next.load(std::sync::atomic::Ordering::SeqCst),
        0
    );
}

#[tokio::test]
async fn messages_past_the_workspace_budget_wait_their_turn_in_the_outbox() {
    let fake = FakeSlack::start().await;
    // Two a minute: a burst of two, then one every 30 s, whichever the channel (too slow to
    // wait for here; `slack_fanout` shows that all the messages past a budget arrive).
    let app = slack_app_tweaked(&fake, |s| s.slack.messages_per_minute = 2).await;
    // Each run needs approval: a card in C123 and a request in the approval channel.
    command(&app, "UDEV", "add-documentdb mailer instances=2").await;
    command(&app, "UDEV", "add-documentdb mailer instances=3").await;
    let posts = |calls: &[common::SlackCall]| {
        calls
            .iter()
            .filter(|c| c.method == "chat.postMessage")
            .count()
    };
    let calls = fake.calls_when(|calls| posts(calls) >= 2).await;
    assert_eq!(posts(&calls), 2, "{calls:?}");
    tokio::time::sleep(std::time::Duration::from_millis(1_500)).await;
    assert_eq!(
        posts(&fake.calls()),
        2,
        "the budget let a third message through"
    );
}

/// Slack against `fake` with `updates_per_minute`, and a WEBHOOK action `hook` on components
/// (to `receiver`, which leaves its runs in progress).
async fn hook_app(receiver: &Receiver, fake: &FakeSlack, updates_per_minute: u32) -> TestApp {
    let hook = common::action(
        "hook",
        "DAY-2",
        json!({"type": "WEBHOOK", "url": receiver.url()}),
        false,
    );
    TestApp::spawn_with(&[hook], |settings| {
        common::slack::enable(settings, fake);
        settings.slack.updates_per_minute = updates_per_minute;
    })
    .await
}

/// A run of `hook` (see [`hook_app`]) requested in C123 by UDEV: the run and where its card is.
async fn hook_run_with_card(app: &TestApp, fake: &FakeSlack) -> (String, String) {
    command(app, "UDEV", "hook mailer").await;
    let calls = fake
        .calls_when(|calls| calls.iter().any(|c| c.body["channel"] == "C123"))
        .await;
    let at = calls
        .iter()
        .position(|c| c.body["channel"] == "C123")
        .expect("a card was posted");
    let (_, body) = app.admin("GET", "/v1/actions/runs", None, None).await;
    let run = body["runs"][0]["id"].as_str().unwrap().to_owned();
    (run, common::slack_ts(at))
}

#[tokio::test]
async fn card_updates_past_slacks_limit_wait_their_turn_while_the_thread_goes_on() {
    let receiver = Receiver::start().await;
    let fake = FakeSlack::start().await;
    // Three updates a minute: a burst of three, then one every 20 s.
    let app = hook_app(&receiver, &fake, 3).await;
    let (run, card_ts) = hook_run_with_card(&app, &fake).await;
    label_then_end(&app, &fake, &run, &card_ts, &["one", "two", "three"]).await;
    let spent = std::time::Instant::now();

    // The run's end is in its thread at once; its card waits for the budget.
    let (_, thread) = common::card_thread(&fake.calls(), "C123");
    common::assert_in_order(&thread, &["three", "<@UDEV> your run ended: *SUCCESS*"]);
    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    assert_eq!(card_updates(&fake, &card_ts).len(), 3, "{:?}", fake.calls());

    // It is updated in its turn, to the end, once.
    let mut updates = Vec::new();
    for _ in 0..400 {
        updates = card_updates(&fake, &card_ts);
        if updates.len() > 3 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(
        spent.elapsed() > std::time::Duration::from_secs(10),
        "the update did not wait for the budget: {updates:#?}"
    );
    assert_eq!(updates.len(), 4, "{updates:#?}");
    assert!(updates[3].contains("SUCCESS"), "{}", updates[3]);
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    assert_eq!(card_updates(&fake, &card_ts).len(), 4);
    let (_, thread) = common::card_thread(&fake.calls(), "C123");
    assert_eq!(thread.matches("your run ended").count(), 1, "{thread}");
}

/// The backend of `run` logs `lines` and ends it with SUCCESS: Slack's calls once the thread
/// says it ended.
async fn log_then_end(
    app: &TestApp,
    fake: &FakeSlack,
    run: &str,
    lines: &[String],
) -> Vec<common::SlackCall> {
    let logs = format!("/v1/actions/runs/{run}/logs");
    for line in lines {
        let (status, body) = app
            .backend("POST", &logs, Some(json!({"message": line})))
            .await;
        assert_eq!(status, 200, "{body}");
    }
    let (status, body) = app.patch_run(run, json!({"status": "SUCCESS"})).await;
    assert_eq!(status, 200, "{body}");
    fake.calls_when(|c| mentions(c, "your run ended")).await
}

/// Log lines of characters mrkdwn escapes (`<` is `&lt;`) are measured as Slack counts them:
/// each message keeps within 3,000 characters, and no line is lost.
#[tokio::test]
async fn log_lines_full_of_escaped_characters_keep_within_slacks_limits() {
    let receiver = Receiver::start().await;
    let fake = FakeSlack::start().await;
    let app = hook_app(&receiver, &fake, 0).await;
    let (run, _) = hook_run_with_card(&app, &fake).await;
    let mut lines: Vec<String> = (0..3).map(|n| format!("{n}{}", "<".repeat(600))).collect();
    lines.push(format!("long{}end", "&".repeat(2_000)));
    lines.push("a -> b && c".into());
    let calls = log_then_end(&app, &fake, &run, &lines).await;
    let (_, thread) = common::card_thread(&calls, "C123");
    for n in 0..3 {
        let escaped = format!("{n}{}", "&lt;".repeat(600));
        assert_eq!(thread.matches(&escaped).count(), 1, "line {n} whole, once");
    }
    assert!(
        thread.contains("long&amp;") && thread.contains("&amp;end"),
        "head and tail kept"
    );
    assert!(thread.contains("[line cut]"), "the cut is marked");
    assert!(thread.contains("a -&gt; b &amp;&amp; c"));
    fake.assert_within_limits();
}

/// A reply Slack refuses as too long, below its documented limits, becomes a short note that
/// says where the whole log is, and the thread goes on.
#[tokio::test]
async fn a_reply_slack_refuses_as_too_long_becomes_a_short_note() {
    let receiver = Receiver::start().await;
    let fake = FakeSlack::start().await;
    let app = hook_app(&receiver, &fake, 0).await;
    let (run, _) = hook_run_with_card(&app, &fake).await;
    *fake.refuse_blocks_over.lock().unwrap() = Some(1_000);
    let line = format!("start{}end", "x".repeat(1_500));
    let calls = log_then_end(&app, &fake, &run, &[line]).await;
    let note = calls
        .iter()
        .find(|c| {
            c.body["text"]
                .as_str()
                .is_some_and(|t| t.contains("refused this reply"))
        })
        .unwrap_or_else(|| panic!("no note: {calls:?}"));
    let text = note.body["text"].as_str().unwrap();
    assert!(text.contains(&format!("portbot logs {run}")), "{text}");
    assert!(text.contains("startxxx") && text.contains('…'), "{text}");
    assert!(
        note.body["thread_ts"].is_string(),
        "in the thread: {:?}",
        note.body
    );
    assert!(mentions(&calls, "your run ended"), "the thread went on");
}

/// Slack has refused messages below its documented limits: a run card or approval request it
/// refuses goes as its template's short version, buttons and all, and so do their updates.
#[tokio::test]
async fn a_card_and_an_approval_request_slack_refuses_go_in_their_short_versions() {
    let fake = FakeSlack::start().await;
    let app = slack_app_with(&fake).await;
    // The full versions show inputs as a section's fields; the short ones do not.
    *fake.refuse_blocks_with.lock().unwrap() = Some("\"fields\"".into());
    command(&app, "UDEV", "add-documentdb mailer instances=2").await;
    let (_, body) = app.admin("GET", "/v1/actions/runs", None, None).await;
    let run = body["runs"][0]["id"].as_str().unwrap().to_owned();
    let posted_in = |calls: &[common::SlackCall], channel: &str| {
        calls
            .iter()
            .filter(|c| c.method == "chat.postMessage" && c.body["channel"] == channel)
            .filter(|c| c.body.get("thread_ts").is_none())
            .map(|c| c.body.clone())
            .collect::<Vec<Value>>()
    };
    let calls = fake
        .calls_when(|calls| {
            !posted_in(calls, "CAPPROVE").is_empty() && !posted_in(calls, "C123").is_empty()
        })
        .await;
    // (The fake records only the calls it accepts.)
    let card = posted_in(&calls, "C123")[0].clone();
    let shown = card["blocks"].to_string();
    assert!(
        shown.contains(&run) && shown.contains("invalid_blocks"),
        "{shown}"
    );
    let request = posted_in(&calls, "CAPPROVE")[0].clone();
    let shown = request["blocks"].to_string();
    assert!(
        shown.contains("Approval needed") && shown.contains("`instances` = 2"),
        "{shown}"
    );
    let buttons = request["blocks"].as_array().unwrap().last().unwrap()["elements"].clone();
    assert_eq!(
        (&buttons[0]["value"], &buttons[1]["action_id"]),
        (&json!(run), &json!("decline"))
    );

    assert_eq!(
        post_interaction(&app, &click("UOPS", "approve", &run)).await,
        200
    );
    app.wait_for(&run, "SUCCESS").await;
    let updated = |calls: &[common::SlackCall], channel: &str| {
        calls
            .iter()
            .rev()
            .find(|c| c.method == "chat.update" && c.body["channel"] == channel)
            .map(|c| c.body["blocks"].to_string())
    };
    let calls = fake
        .calls_when(|calls| {
            updated(calls, "CAPPROVE").is_some_and(|b| b.contains("Approved by <@UOPS>"))
                && updated(calls, "C123").is_some_and(|b| b.contains("SUCCESS"))
        })
        .await;
    let request = updated(&calls, "CAPPROVE").unwrap();
    assert!(
        !request.contains("\"actions\""),
        "the buttons are gone: {request}"
    );
    fake.assert_within_limits();
}

#[tokio::test]
async fn an_approval_request_is_updated_ahead_of_the_cards_waiting_for_their_turn() {
    let receiver = Receiver::start().await;
    let fake = FakeSlack::start().await;
    // Three updates a minute, spent on the first run's card; its end waits for the next, at 20 s.
    let app = hook_app(&receiver, &fake, 3).await;
    let (hooked, card_ts) = hook_run_with_card(&app, &fake).await;
    label_then_end(&app, &fake, &hooked, &card_ts, &["one", "two", "three"]).await;
    let spent = std::time::Instant::now();

    command(&app, "UDEV", "add-documentdb mailer instances=2").await;
    fake.calls_when(|calls| calls.iter().any(|c| c.body["channel"] == "CAPPROVE"))
        .await;
    let (_, body) = app.admin("GET", "/v1/actions/runs", None, None).await;
    let run = body["runs"][0]["id"].as_str().unwrap().to_owned();
    assert_ne!(run, hooked);
    let (status, body) = app.decide("slack:UOPS", &run, "APPROVE").await;
    assert_eq!(status, 200, "{body}");

    // The request takes the budget's next slot, the card's turn comes one slot later.
    let updates = || {
        fake.calls()
            .into_iter()
            .filter(|c| c.method == "chat.update")
            .map(|c| c.body["channel"].as_str().unwrap_or_default().to_owned())
            .collect::<Vec<_>>()
    };
    let mut seen = Vec::new();
    let mut request_at = None;
    for _ in 0..600 {
        seen = updates();
        if request_at.is_none() && seen.iter().any(|c| c == "CAPPROVE") {
            request_at = Some(spent.elapsed());
        }
        if seen.len() == 5 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(seen, ["C123", "C123", "C123", "CAPPROVE", "C123"]);
    let request_at = request_at.unwrap();
    let card_at = spent.elapsed();
    assert!(
        request_at > std::time::Duration::from_secs(10),
        "the request overdrew the budget: {request_at:?}"
    );
    assert!(
        card_at > request_at + std::time::Duration::from_secs(10),
        "the card did not wait a turn more: {request_at:?}, {card_at:?}"
    );
    let approved = fake
        .calls()
        .into_iter()
        .find(|c| c.method == "chat.update" && c.body["channel"] == "CAPPROVE")
        .unwrap();
    assert!(
        approved.body["blocks"]
            .to_string()
            .contains("Approved by <@UOPS>"),
        "{:?}",
        approved.body
    );
    assert!(card_updates(&fake, &card_ts)[3].contains("SUCCESS"));
}

#[tokio::test]
async fn runs_requested_through_the_api_get_an_approval_request_but_no_thread() {
    let fake = FakeSlack::start().await;
    let app = slack_app_with(&fake).await;
    app.run_id(
        "dev@example.com",
        "add-documentdb",
        Some("mailer"),
        json!({"instances": 1}),
    )
    .await;
    let calls = calls_until(&fake, 1).await;
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert_eq!(calls.len(), 1, "{calls:?}");
    assert_eq!(calls[0].body["channel"], "CAPPROVE");
    assert!(calls[0].body["blocks"]
        .to_string()
        .contains("dev@example.com"));
}

async fn post_interaction(app: &TestApp, body: &str) -> u16 {
    post_interaction_reply(app, body).await.0
}

#[tokio::test]
async fn approvals_in_the_approval_channel_follow_the_rules() {
    let fake = FakeSlack::start().await;
    let app = slack_app_with(&fake).await;
    command(&app, "UDEV", "add-documentdb mailer instances=2").await;
    let (_, body) = app.admin("GET", "/v1/actions/runs", None, None).await;
    let run = body["runs"][0]["id"].as_str().unwrap().to_owned();

    let mut request = None;
    for _ in 0..100 {
        request = fake
            .calls()
            .into_iter()
            .find(|c| c.body["channel"] == "CAPPROVE");
        if request.is_some() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let request = request.expect("an approval request was posted");
    let shown = request.body["blocks"].to_string();
    assert!(
        shown.contains("Approval needed") && shown.contains("<@UDEV>"),
        "{shown}"
    );
    let buttons = request.body["blocks"].as_array().unwrap().last().unwrap()["elements"].clone();
    assert_eq!(buttons[0]["text"]["text"], "Approve");
    assert_eq!(buttons[1]["text"]["text"], "Decline");
    assert_eq!(buttons[0]["value"], run);

    // The requester and an outsider are refused, ephemerally, and nothing changes.
    assert_eq!(
        post_interaction(&app, &click("UDEV", "approve", &run)).await,
        200
    );
    assert_eq!(
        post_interaction(&app, &click("UNOBODY", "approve", &run)).await,
        200
    );
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let refusals: Vec<common::SlackCall> = fake
        .calls()
        .into_iter()
        .filter(|c| c.method == "chat.postEphemeral")
        .collect();
    assert_eq!(refusals.len(), 2, "{refusals:?}");
    assert_eq!(refusals[0].body["user"], "UDEV");
    assert!(
        refusals[0].body["text"]
            .as_str()
            .unwrap()
            .contains("may not decide"),
        "{:?}",
        refusals[0]
    );
    assert!(
        refusals[1].body["text"]
            .as_str()
            .unwrap()
            .contains("is not an approver"),
        "{:?}",
        refusals[1]
    );
    assert_eq!(app.run(&run).await["status"], "WAITING_FOR_APPROVAL");

    // A devops engineer approves; a second click is told it was decided.
    assert_eq!(
        post_interaction(&app, &click("UOPS", "approve", &run)).await,
        200
    );
    app.wait_for(&run, "SUCCESS").await;
    assert_eq!(
        post_interaction(&app, &click("UOPS", "decline", &run)).await,
        200
    );
    let mut update = None;
    for _ in 0..100 {
        let calls = fake.calls();
        update = calls
            .iter()
            .find(|c| c.method == "chat.update" && c.body["channel"] == "CAPPROVE")
            .cloned();
        let told = calls
            .iter()
            .filter(|c| c.method == "chat.postEphemeral")
            .count()
            == 3;
        if update.is_some() && told {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let update = update.expect("the request was updated");
    assert_eq!(update.body["ts"], request_ts(&fake));
    let shown = update.body["blocks"].to_string();
    assert!(shown.contains("Approved by <@UOPS>"), "{shown}");
    assert!(
        !shown.contains("\"actions\""),
        "the buttons are gone: {shown}"
    );
    let last = fake
        .calls()
        .into_iter()
        .rfind(|c| c.method == "chat.postEphemeral")
        .unwrap();
    assert!(
        last.body["text"]
            .as_str()
            .unwrap()
            .contains("already approved by slack:UOPS"),
        "{last:?}"
    );

    // Forged clicks are refused before anything happens.
    let now = chrono::Utc::now().timestamp();
    let forged = app
        .http
        .post(format!("{}/slack/interactions", app.base))
        .header("x-slack-request-timestamp", now.to_string())
        .header("x-slack-signature", signature("wrong", now, "payload=x"))
        .body("payload=x")
        .send()
        .await
        .unwrap();
    assert_eq!(forged.status(), 401);
}

/// The `ts` Slack gave the approval request.
fn request_ts(fake: &FakeSlack) -> String {
    let calls = fake.calls();
    let index = calls
        .iter()
        .position(|c| c.method == "chat.postMessage" && c.body["channel"] == "CAPPROVE")
        .unwrap();
    common::slack_ts(index)
}

async fn post_interaction_reply(app: &TestApp, body: &str) -> (u16, String) {
    let now = chrono::Utc::now().timestamp();
    send_signed(app, "/slack/interactions", body, now, SECRET).await
}

#[tokio::test]
async fn missing_inputs_open_a_form_whose_errors_show_in_place() {
    let fake = FakeSlack::start().await;
    let app = slack_app_with(&fake).await;
    let command = form("UDEV", "add-documentdb mailer");
    fake.triggers
        .lock()
        .unwrap()
        .insert(trigger_of(&command), std::time::Instant::now());
    let (status, body) = post_signed(&app, &command, chrono::Utc::now().timestamp(), SECRET).await;
    assert_eq!(
        (status, body.as_str()),
        (200, ""),
        "the modal replaces an answer"
    );
    let open = fake
        .calls()
        .into_iter()
        .find(|c| c.method == "views.open")
        .expect("views.open");
    assert_eq!(open.body["trigger_id"], trigger_of(&command));
    let view = &open.body["view"];
    assert_eq!(view["callback_id"], "portbot_inputs");
    let field = view["blocks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["block_id"] == "instances")
        .expect("an instances field");
    assert_eq!(field["label"]["text"], "Instances");
    assert_eq!(field["element"]["type"], "number_input");
    assert_eq!(field["element"]["min_value"], "1");
    assert_eq!(field["element"]["max_value"], "5");
    assert_eq!(run_count(&app).await, 0);
    let key = view["private_metadata"].as_str().unwrap().to_owned();

    let value = |v: &str| json!({"instances": {"value": {"type": "number_input", "value": v}}});
    let (status, body) = post_interaction_reply(&app, &submission("UDEV", &key, value("9"))).await;
    assert_eq!(status, 200);
    let reply: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(reply["response_action"], "errors");
    assert_eq!(
        reply["errors"]["instances"],
        "instances must be at most 5 (got 9)"
    );
    assert_eq!(run_count(&app).await, 0);

    // Someone else cannot submit this user's form.
    let (_, body) = post_interaction_reply(&app, &submission("UOPS", &key, value("3"))).await;
    assert!(body.contains("expired"), "{body}");

    // Submitted four times at once (a double click, copies from Slack, each signed anew): one run.
    let submitted = submission("UDEV", &key, value("3"));
    let now = chrono::Utc::now().timestamp();
    let answers = futures_util::future::join_all(
        (0..4).map(|n| send_signed(&app, "/slack/interactions", &submitted, now + n, SECRET)),
    )
    .await;
    assert_eq!(run_count(&app).await, 1, "{answers:?}");
    let closed = answers
        .iter()
        .filter(|(status, body)| (*status, body.as_str()) == (200, ""));
    assert_eq!(
        closed.count(),
        1,
        "an empty 200 closes the form: {answers:?}"
    );
    for (_, body) in answers.iter().filter(|(_, body)| !body.is_empty()) {
        assert!(
            body.contains("received already") || body.contains("expired"),
            "{body}"
        );
    }
    let (_, runs) = app.admin("GET", "/v1/actions/runs", None, None).await;
    assert_eq!(runs["runs"][0]["properties"]["instances"], 3);
    assert_eq!(runs["runs"][0]["createdBy"], "slack:UDEV");
    assert_eq!(runs["runs"][0]["channel"], "C123");
    // A form is used once.
    let (_, body) = post_interaction_reply(&app, &submission("UDEV", &key, value("4"))).await;
    assert!(body.contains("expired"), "{body}");
}

#[tokio::test]
async fn a_day_2_form_is_prefilled_with_the_entitys_current_values() {
    let fake = FakeSlack::start().await;
    let app = slack_app_with(&fake).await;
    let (status, _) = app
        .backend(
            "POST",
            "/v1/blueprints/Resource/entities",
            Some(json!({"identifier": "mailer-documentdb", "properties": {"type": "documentdb", "instances": 3}})),
        )
        .await;
    assert_eq!(status, 200);
    let (status, _) = post_signed(
        &app,
        &form("UDEV", "update-documentdb mailer-documentdb"),
        chrono::Utc::now().timestamp(),
        SECRET,
    )
    .await;
    assert_eq!(status, 200);
    let open = fake
        .calls()
        .into_iter()
        .find(|c| c.method == "views.open")
        .expect("views.open");
    let field = open.body["view"]["blocks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["block_id"] == "instances")
        .cloned()
        .unwrap();
    assert_eq!(field["element"]["initial_value"], "3");
}

#[tokio::test]
async fn a_failing_slack_is_retried_and_the_card_is_posted_once() {
    let fake = FakeSlack::start().await;
    let app = slack_app_with(&fake).await;
    fake.fail_next.store(1, std::sync::atomic::Ordering::SeqCst);
    fake.refuse_next
        .store(1, std::sync::atomic::Ordering::SeqCst);
    command(&app, "UDEV", "scaffold-service name=billing system=Cart").await;
    let mut cards = 0;
    for _ in 0..100 {
        let calls = fake.calls();
        cards = calls
            .iter()
            .filter(|c| {
                c.body["channel"] == "C123"
                    && c.body.get("thread_ts").is_none()
                    && c.method == "chat.postMessage"
            })
            .count();
        if calls
            .iter()
            .any(|c| c.body["blocks"].to_string().contains("your run ended"))
        {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(cards, 1, "{:?}", fake.calls());
    assert_eq!(fake.fail_next.load(std::sync::atomic::Ordering::SeqCst), 0);
    assert_eq!(
        fake.refuse_next.load(std::sync::atomic::Ordering::SeqCst),
        0
    );
}

/// A run requested in C123 whose card is in place, then approved while Slack answers every
/// `chat.update` with `error`, once it succeeded: the app and where the card is.
async fn approved_with_updates_refused(fake: &FakeSlack, error: &str) -> (TestApp, String) {
    let app = slack_app_with(fake).await;
    let (_, at) = command_with_card(&app, fake).await;
    let card_ts = common::slack_ts(at);
    fake.calls_when(|calls| calls.iter().any(|c| c.body["thread_ts"] == card_ts))
        .await;
    *fake.refuse_method.lock().unwrap() = Some(("chat.update".into(), error.into()));
    let (_, body) = app.admin("GET", "/v1/actions/runs", None, None).await;
    let run = body["runs"][0]["id"].as_str().unwrap().to_owned();
    let (status, body) = app.decide("slack:UOPS", &run, "APPROVE").await;
    assert_eq!(status, 200, "{body}");
    app.wait_for(&run, "SUCCESS").await;
    (app, card_ts)
}

/// The thread in C123 once its run ended, checked to say it was approved, started and ended.
async fn ended_thread(fake: &FakeSlack) -> String {
    let calls = fake.calls_when(|c| mentions(c, "your run ended")).await;
    let (_, thread) = common::card_thread(&calls, "C123");
    common::assert_in_order(
        &thread,
        &[
            "Approved by <@UOPS>",
            "Started",
            "<@UDEV> your run ended: *SUCCESS*",
        ],
    );
    thread
}

/// A card or approval request Slack will never update (deleted, say) is tried once, and the
/// thread goes on to the end.
#[tokio::test]
async fn a_message_slack_will_not_update_any_more_is_tried_once_and_the_thread_goes_on() {
    let fake = FakeSlack::start().await;
    let (_app, _) = approved_with_updates_refused(&fake, "message_not_found").await;
    ended_thread(&fake).await;
    // Long enough for a retry (after 0.5 s, then 1 s) to show.
    tokio::time::sleep(std::time::Duration::from_millis(2_000)).await;
    let mut refused = fake.refused_in.lock().unwrap().clone();
    refused.sort();
    assert_eq!(refused, ["C123", "CAPPROVE"]);
}

/// A card update Slack refuses is tried again: the card never stays on an old status.
#[tokio::test]
async fn a_refused_card_update_is_tried_again_until_the_card_shows_the_end() {
    let fake = FakeSlack::start().await;
    let (_app, card_ts) = approved_with_updates_refused(&fake, "internal_error").await;
    // Long enough for the deliveries after the approval to meet the refusals.
    tokio::time::sleep(std::time::Duration::from_millis(1_500)).await;
    *fake.refuse_method.lock().unwrap() = None;

    let calls = card_updated_to(&fake, &card_ts, "SUCCESS").await;
    let last_update = calls
        .iter()
        .rfind(|c| c.method == "chat.update" && c.body["ts"] == card_ts)
        .map(|c| c.body["blocks"].to_string())
        .unwrap_or_default();
    assert!(last_update.contains("SUCCESS"), "{calls:?}");
    let thread = ended_thread(&fake).await;
    assert_eq!(
        thread.matches("your run ended").count(),
        1,
        "no reply was posted twice: {thread}"
    );
}

#[tokio::test]
async fn the_bot_joins_a_public_channel_and_falls_back_to_a_direct_message() {
    let fake = FakeSlack::start().await;
    let app = slack_app_with(&fake).await;
    fake.not_in.lock().unwrap().insert("C123".into());
    command(&app, "UDEV", "scaffold-service name=billing system=Cart").await;
    let calls = fake.calls_when(|c| mentions(c, "your run ended")).await;
    assert!(calls
        .iter()
        .any(|c| c.method == "conversations.join" && c.body["channel"] == "C123"));
    assert!(
        calls
            .iter()
            .any(|c| c.method == "chat.postMessage" && c.body["channel"] == "C123"),
        "{calls:?}"
    );

    // A private channel cannot be joined: the card and its thread go to the requester.
    let fake = FakeSlack::start().await;
    let app = slack_app_with(&fake).await;
    fake.not_in.lock().unwrap().insert("C123".into());
    fake.private.lock().unwrap().insert("C123".into());
    command(&app, "UDEV", "scaffold-service name=billing system=Cart").await;
    let calls = fake.calls_when(|c| mentions(c, "your run ended")).await;
    let in_dm: Vec<&common::SlackCall> = calls
        .iter()
        .filter(|c| c.method == "chat.postMessage" && c.body["channel"] == "DUDEV")
        .collect();
    assert!(in_dm.len() >= 2, "{calls:?}");
    assert!(
        in_dm[0].body["blocks"]
            .to_string()
            .contains("I can't post in <#C123>"),
        "{:?}",
        in_dm[0]
    );
    assert!(in_dm
        .iter()
        .skip(1)
        .all(|c| c.body.get("thread_ts").is_some()));

    // A card in a direct message still says why it is there once updated.
    command(&app, "UDEV", "add-documentdb mailer instances=2").await;
    let (_, body) = app.admin("GET", "/v1/actions/runs", None, None).await;
    let run = body["runs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["status"] == "WAITING_FOR_APPROVAL")
        .expect("the run waits")["id"]
        .as_str()
        .unwrap()
        .to_owned();
    fake.calls_when(|calls| calls.iter().any(|c| c.body["channel"] == "CAPPROVE"))
        .await;
    let (status, body) = app.decide("slack:UOPS", &run, "APPROVE").await;
    assert_eq!(status, 200, "{body}");
    app.wait_for(&run, "SUCCESS").await;
    let calls = fake
        .calls_when(|calls| {
            calls.iter().any(|c| {
                c.method == "chat.update"
                    && c.body["channel"] == "DUDEV"
                    && c.body["blocks"].to_string().contains("SUCCESS")
            })
        })
        .await;
    let updates: Vec<String> = calls
        .iter()
        .filter(|c| c.method == "chat.update" && c.body["channel"] == "DUDEV")
        .map(|c| c.body["blocks"].to_string())
        .collect();
    assert!(
        updates.iter().any(|u| u.contains("SUCCESS"))
            && updates
                .iter()
                .all(|u| u.contains("I can't post in <#C123>")),
        "{updates:?}"
    );
}

/// The approval channel is joined like any public channel; one the bot cannot join holds the
/// requests back (nothing is lost) until the bot is invited.
#[tokio::test]
async fn the_bot_joins_the_approval_channel_or_holds_requests_until_invited() {
    let requests = |calls: &[common::SlackCall]| {
        calls
            .iter()
            .filter(|c| c.method == "chat.postMessage" && c.body["channel"] == "CAPPROVE")
            .count()
    };
    let fake = FakeSlack::start().await;
    fake.not_in.lock().unwrap().insert("CAPPROVE".into());
    let app = slack_app_with(&fake).await;
    command(&app, "UDEV", "add-documentdb mailer instances=2").await;
    let calls = fake.calls_when(|calls| requests(calls) == 1).await;
    assert!(calls
        .iter()
        .any(|c| c.method == "conversations.join" && c.body["channel"] == "CAPPROVE"));
    assert_eq!(requests(&calls), 1, "{calls:?}");

    let fake = FakeSlack::start().await;
    fake.not_in.lock().unwrap().insert("CAPPROVE".into());
    fake.private.lock().unwrap().insert("CAPPROVE".into());
    let app = slack_app_with(&fake).await;
    command(&app, "UDEV", "add-documentdb mailer instances=2").await;
    fake.calls_when(|calls| calls.iter().any(|c| c.body["channel"] == "C123"))
        .await;
    tokio::time::sleep(std::time::Duration::from_millis(1_000)).await;
    assert_eq!(requests(&fake.calls()), 0);
    // Invited: the next try posts the request, once.
    fake.private.lock().unwrap().remove("CAPPROVE");
    fake.not_in.lock().unwrap().remove("CAPPROVE");
    let calls = fake.calls_when(|calls| requests(calls) == 1).await;
    assert_eq!(requests(&calls), 1, "{calls:?}");
}

#[tokio::test]
async fn declining_asks_for_a_reason_that_reaches_the_requester() {
    let fake = FakeSlack::start().await;
    let app = slack_app_with(&fake).await;
    command(&app, "UDEV", "add-documentdb mailer instances=2").await;
    let (_, body) = app.admin("GET", "/v1/actions/runs", None, None).await;
    let run = body["runs"][0]["id"].as_str().unwrap().to_owned();

    assert_eq!(
        post_interaction(&app, &click("UOPS", "decline", &run)).await,
        200
    );
    let open = fake
        .calls()
        .into_iter()
        .find(|c| c.method == "views.open")
        .expect("a reason form");
    assert_eq!(open.body["trigger_id"], "123.456.def");
    // The form carries the run and the channel of the click.
    let metadata = open.body["view"]["private_metadata"].as_str().unwrap();
    assert_eq!(metadata, format!("{run} CAPPROVE"));
    assert_eq!(
        app.run(&run).await["status"],
        "WAITING_FOR_APPROVAL",
        "nothing is decided before the form"
    );

    let body = decline_submission("UOPS", metadata, "too big for now");
    let (status, reply) = post_interaction_reply(&app, &body).await;
    assert_eq!((status, reply.as_str()), (200, ""));
    let declined = app.run(&run).await;
    assert_eq!(declined["status"], "DECLINED");
    assert_eq!(
        declined["approval"]["decisions"][0]["description"],
        "too big for now"
    );
    fake.calls_when(|c| mentions(c, "your run ended")).await;
    let thread = fake.text_in("C123");
    assert!(
        thread.contains("Declined by <@UOPS>: too big for now"),
        "{thread}"
    );
    assert!(
        thread.contains("<@UDEV> your run ended: *DECLINED*"),
        "{thread}"
    );
}

/// Sends a Socket Mode envelope as Slack does and returns portbot's ack of it.
async fn exchange(
    socket: &mut tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>,
    envelope: Value,
) -> Value {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    socket
        .send(Message::text(envelope.to_string()))
        .await
        .unwrap();
    loop {
        match socket.next().await.unwrap().unwrap() {
            Message::Text(text) => return serde_json::from_str(&text).unwrap(),
            // Answered by tungstenite as the stream is read.
            Message::Ping(_) | Message::Pong(_) => {}
            other => panic!("expected an ack, got {other:?}"),
        }
    }
}

/// The socket a Socket Mode portbot opens next, after Slack's `hello`.
async fn next_socket(
    listener: &tokio::net::TcpListener,
) -> tokio_tungstenite::WebSocketStream<tokio::net::TcpStream> {
    use futures_util::SinkExt;
    let (stream, _) = listener.accept().await.unwrap();
    let mut socket = tokio_tungstenite::accept_async(stream).await.unwrap();
    let hello = json!({"type": "hello", "num_connections": 1}).to_string();
    socket
        .send(tokio_tungstenite::tungstenite::Message::text(hello))
        .await
        .unwrap();
    socket
}

/// A Socket Mode connection that goes silent (it answers no ping) is given up and opened anew,
/// and commands arrive on the new one.
#[tokio::test]
async fn a_silent_socket_mode_connection_is_opened_anew() {
    let fake = FakeSlack::start().await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    *fake.socket_url.lock().unwrap() =
        Some(format!("ws://{}/link", listener.local_addr().unwrap()));
    let app = slack_app_tweaked(&fake, |settings| {
        settings.slack.app_token = Some(serde_json::from_value(json!("xapp-test")).unwrap());
        settings.slack.socket_ping_interval_ms = 100;
    })
    .await;
    // Never read, so its pings go unanswered.
    let _silent = next_socket(&listener).await;
    let accepted =
        tokio::time::timeout(std::time::Duration::from_secs(5), next_socket(&listener)).await;
    let mut socket = accepted.expect("a new connection after the silence");
    let opened = fake
        .calls()
        .iter()
        .filter(|c| c.method == "apps.connections.open")
        .count();
    assert_eq!(opened, 2);
    let pairs: Vec<(String, String)> =
        serde_urlencoded::from_str(&form("UDEV", "add-documentdb mailer instances=2")).unwrap();
    let command: serde_json::Map<String, Value> = pairs
        .into_iter()
        .map(|(k, v)| (k, Value::from(v)))
        .collect();
    let envelope = json!({"envelope_id": "e-1", "type": "slash_commands", "payload": command, "accepts_response_payload": true});
    let ack = exchange(&mut socket, envelope).await;
    assert_eq!(ack["payload"]["response_type"], "ephemeral", "{ack}");
    assert_eq!(run_count(&app).await, 1);
}

#[tokio::test]
async fn socket_mode_carries_commands_and_clicks() {
    let fake = FakeSlack::start().await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    *fake.socket_url.lock().unwrap() =
        Some(format!("ws://{}/link", listener.local_addr().unwrap()));
    let app = slack_app_tweaked(&fake, |settings| {
        settings.slack.app_token = Some(serde_json::from_value(json!("xapp-test")).unwrap());
    })
    .await;
    let mut socket = next_socket(&listener).await;
    let form_json = |body: &str| -> Value {
        let pairs: Vec<(String, String)> = serde_urlencoded::from_str(body).unwrap();
        Value::Object(
            pairs
                .into_iter()
                .map(|(k, v)| (k, Value::from(v)))
                .collect(),
        )
    };
    let command = form_json(&form("UDEV", "add-documentdb mailer instances=2"));
    let envelope = json!({"envelope_id": "e-1", "type": "slash_commands", "payload": command, "accepts_response_payload": true});
    let ack = exchange(&mut socket, envelope).await;
    assert_eq!(ack["envelope_id"], "e-1");
    assert_eq!(ack["payload"]["response_type"], "ephemeral");
    assert!(
        ack["payload"]["blocks"]
            .to_string()
            .contains("WAITING_FOR_APPROVAL"),
        "{ack}"
    );
    let (_, body) = app.admin("GET", "/v1/actions/runs", None, None).await;
    let run = body["runs"][0]["id"].as_str().unwrap().to_owned();
    assert_eq!(body["runs"][0]["createdBy"], "slack:UDEV");

    let pairs: Vec<(String, String)> =
        serde_urlencoded::from_str(&click("UOPS", "approve", &run)).unwrap();
    let click_payload: Value = serde_json::from_str(&pairs[0].1).unwrap();
    let envelope = json!({"envelope_id": "e-2", "type": "interactive", "payload": click_payload, "accepts_response_payload": false});
    let ack = exchange(&mut socket, envelope).await;
    assert_eq!(
        ack,
        json!({"envelope_id": "e-2"}),
        "no payload where none is accepted"
    );
    app.wait_for(&run, "SUCCESS").await;
    assert!(fake
        .calls()
        .iter()
        .any(|c| c.method == "apps.connections.open" && c.authorization == "Bearer xapp-test"));
}

#[tokio::test]
async fn a_form_that_cannot_open_in_time_says_what_is_missing() {
    let fake = FakeSlack::start().await;
    let app = slack_app_with(&fake).await;
    // Slack's trigger_id lives 3 s; this one is already stale when the command arrives.
    let stale = std::time::Instant::now() - std::time::Duration::from_secs(4);
    let typed = form("UDEV", "add-documentdb mailer");
    fake.triggers
        .lock()
        .unwrap()
        .insert(trigger_of(&typed), stale);
    let (status, body) = post_signed(&app, &typed, chrono::Utc::now().timestamp(), SECRET).await;
    assert_eq!(status, 200, "{body}");
    let reply: Value = serde_json::from_str(&body).unwrap();
    let shown = all_text(&reply);
    assert!(shown.contains("`instances` is required"), "{shown}");
    assert!(shown.contains("The form could not be opened"), "{shown}");
    assert_eq!(run_count(&app).await, 0);
}

/// The product's whole story in Slack, in one run: a command that lacks an input opens the
/// form, the submitted run waits for approval in the approval channel, a devops click starts
/// it, the signed webhook reaches the backend, the backend reports log lines, a status label
/// and SUCCESS through the runs API as Port's backends do, every step lands in the run card's
/// thread in order, the card shows the end, and the catalog holds the new resource.
#[tokio::test]
async fn the_whole_story_from_a_command_to_the_catalog_through_a_webhook_backend() {
    let receiver = Receiver::start().await;
    let shipped = std::fs::read_to_string("config/catalog/actions/add-documentdb.json").unwrap();
    let mut hook: Value = serde_json::from_str(&shipped).unwrap();
    hook["identifier"] = json!("add-documentdb-hook");
    hook["invocationMethod"] = json!({"type": "WEBHOOK", "url": receiver.url()});
    let fake = FakeSlack::start().await;
    let app = TestApp::spawn_with(&[hook], |settings| common::slack::enable(settings, &fake)).await;

    // The command names the entity and one input but not the required `instances`.
    let typed = form(
        "UDEV",
        "add-documentdb-hook mailer instance_class=db.r6g.large",
    );
    fake.triggers
        .lock()
        .unwrap()
        .insert(trigger_of(&typed), std::time::Instant::now());
    let now = chrono::Utc::now().timestamp();
    let (status, body) = post_signed(&app, &typed, now, SECRET).await;
    assert_eq!((status, body.as_str()), (200, ""), "a form opens instead");
    let open = fake
        .calls()
        .into_iter()
        .find(|c| c.method == "views.open")
        .expect("views.open");
    let asked: Vec<&Value> = open.body["view"]["blocks"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|b| b.get("block_id"))
        .collect();
    assert!(
        asked.contains(&&json!("instances")) && !asked.contains(&&json!("instance_class")),
        "the form asks only for what is missing: {asked:?}"
    );
    let key = open.body["view"]["private_metadata"]
        .as_str()
        .unwrap()
        .to_owned();
    let values = json!({"instances": {"value": {"type": "number_input", "value": "3"}}});
    let (status, body) = post_interaction_reply(&app, &submission("UDEV", &key, values)).await;
    assert_eq!((status, body.as_str()), (200, ""), "the form closes");
    let (_, runs) = app.admin("GET", "/v1/actions/runs", None, None).await;
    let run = runs["runs"][0]["id"].as_str().unwrap().to_owned();
    assert_eq!(runs["runs"][0]["status"], "WAITING_FOR_APPROVAL");

    // The approval request reaches the approval channel; devops approves.
    fake.calls_when(|calls| calls.iter().any(|c| c.body["channel"] == "CAPPROVE"))
        .await;
    assert_eq!(receiver.count(), 0, "nothing is invoked before approval");
    assert_eq!(
        post_interaction(&app, &click("UOPS", "approve", &run)).await,
        200
    );

    // The webhook arrives, signed as Port signs it, with the inputs of the command and form.
    let received = receiver.first().await;
    assert!(verify_port_signature(
        portbot::startup::DEMO_SECRET,
        &received
    ));
    let webhook: Value = serde_json::from_slice(&received.body).unwrap();
    assert_eq!(webhook["context"]["runId"], run);
    assert_eq!(webhook["trigger"]["origin"], "SLACK");
    assert_eq!(webhook["payload"]["properties"]["instances"], 3);
    assert_eq!(
        webhook["payload"]["properties"]["instance_class"],
        "db.r6g.large"
    );

    // The backend reports back through the runs API.
    // Each log line is waited for in the thread, so each is a delivery of its own.
    let logs = format!("/v1/actions/runs/{run}/logs");
    for line in [
        "creating cluster mailer-documentdb",
        "instance 1 of 3 available",
    ] {
        let (status, body) = app
            .backend("POST", &logs, Some(json!({"message": line})))
            .await;
        assert_eq!(status, 200, "{body}");
        fake.calls_when(|calls| mentions(calls, line)).await;
    }
    let (status, body) = app
        .patch_run(&run, json!({"statusLabel": "waiting for replicas"}))
        .await;
    assert_eq!(status, 200, "{body}");
    let done = json!({"message": "cluster ready", "terminationStatus": "SUCCESS"});
    let (status, body) = app.backend("POST", &logs, Some(done)).await;
    assert_eq!(status, 200, "{body}");
    app.wait_for(&run, "SUCCESS").await;

    // Every step is a reply in the card's thread, in order, and the card shows the end.
    let calls = fake
        .calls_when(|calls| mentions(calls, "your run ended"))
        .await;
    let (card_ts, thread) = common::card_thread(&calls, "C123");
    common::assert_in_order(
        &thread,
        &[
            "Waiting for approval",
            "Approved by <@UOPS>",
            "Started",
            "creating cluster mailer-documentdb",
            "instance 1 of 3 available",
            "waiting for replicas",
            "cluster ready",
            "Catalog",
            "<@UDEV> your run ended: *SUCCESS*",
        ],
    );
    let calls = card_updated_to(&fake, &card_ts, "SUCCESS").await;
    let card_updates: Vec<&common::SlackCall> = calls
        .iter()
        .filter(|c| c.method == "chat.update" && c.body["channel"] == "C123")
        .collect();
    assert!(
        card_updates
            .iter()
            .any(|c| c.body["blocks"].to_string().contains("SUCCESS")),
        "the card shows the end"
    );
    assert!(card_updates.iter().all(|c| c.body["ts"] == card_ts));
    // A delivery that leaves the card as it was (log lines) does not send it again.
    let shown: Vec<String> = card_updates
        .iter()
        .map(|c| c.body["blocks"].to_string())
        .collect();
    assert!(
        shown.windows(2).all(|pair| pair[0] != pair[1]),
        "the card was sent unchanged: {shown:#?}"
    );
    fake.assert_within_limits();

    // The catalog: mailer gained a DocumentDB resource built from the inputs.
    let (status, resource) = app.entity("Resource", "mailer-documentdb").await;
    assert_eq!(status, 200, "{resource}");
    assert_eq!(resource["properties"]["instances"], 3);
    assert_eq!(resource["properties"]["instance_class"], "db.r6g.large");
    let (_, mailer) = app.entity("Component", "mailer").await;
    assert!(
        mailer["relations"]["resources"]
            .as_array()
            .is_some_and(|r| r.contains(&json!("mailer-documentdb"))),
        "{mailer}"
    );
}
