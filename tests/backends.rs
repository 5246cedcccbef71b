//! Backends end to end: signed webhooks checked as a receiver checks them, retries while the
//! receiver is down, redirects not followed, synchronized mode, and COMMAND output, exit codes
//! and timeouts.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use axum::http::StatusCode;
use common::{action, free_addr, verify_port_signature, Receiver, TestApp};
use serde_json::{json, Value};

const DEV: &str = "dev@example.com";
const OPS: &str = "ops@example.com";

#[tokio::test]
async fn webhooks_carry_ports_body_and_a_verifiable_signature() {
    let receiver = Receiver::start().await;
    let hook = action(
        "deploy",
        "DAY-2",
        json!({"type": "WEBHOOK", "url": receiver.url()}),
        true,
    );
    let app = TestApp::spawn(&[hook]).await;
    let run = app
        .run_id(DEV, "deploy", Some("mailer"), json!({"size": 2}))
        .await;
    assert_eq!(receiver.count(), 0, "nothing is sent before approval");
    app.decide(OPS, &run, "APPROVE").await;
    let received = receiver.first().await;
    assert!(verify_port_signature(
        portbot::startup::DEMO_SECRET,
        &received
    ));
    let mut tampered = received.clone();
    tampered.body.push(b' ');
    assert!(!verify_port_signature(
        portbot::startup::DEMO_SECRET,
        &tampered
    ));

    let body: Value = serde_json::from_slice(&received.body).unwrap();
    assert_eq!(body["action"], "deploy");
    assert_eq!(body["resourceType"], "run");
    assert_eq!(body["status"], "TRIGGERED");
    assert_eq!(body["trigger"]["by"]["user"], DEV);
    assert_eq!(body["trigger"]["operation"], "DAY-2");
    assert_eq!(
        body["context"],
        json!({"entity": "mailer", "blueprint": "Component", "runId": run})
    );
    assert_eq!(body["trigger"]["origin"], "API");
    assert!(body["trigger"]["at"]
        .as_str()
        .is_some_and(|at| chrono::DateTime::parse_from_rfc3339(at).is_ok()));
    assert_eq!(body["payload"]["properties"], json!({"size": 2}));
    assert_eq!(
        body["payload"]["action"],
        json!({"identifier": "deploy", "title": "deploy", "blueprint": "Component", "operation": "DAY-2"})
    );
    let (_, mailer) = app.entity("Component", "mailer").await;
    assert_eq!(
        body["payload"]["entity"],
        json!({
            "identifier": "mailer",
            "title": mailer["title"],
            "blueprint": "Component",
            "properties": mailer["properties"],
            "relations": mailer["relations"],
        })
    );

    // Asynchronous: the run stays in progress until the backend reports through the API.
    app.wait_for_logged(&run, |l| l.starts_with("webhook delivered (HTTP 202)"))
        .await;
    assert_eq!(app.run(&run).await["status"], "IN_PROGRESS");
    let (status, body) = app
        .backend(
            "POST",
            &format!("/v1/actions/runs/{run}/logs"),
            Some(json!({"message": "deployed", "terminationStatus": "SUCCESS", "statusLabel": "done"})),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let done = app.run(&run).await;
    assert_eq!(
        (done["status"].clone(), done["statusLabel"].clone()),
        (json!("SUCCESS"), json!("done"))
    );
    assert_eq!(receiver.count(), 1, "delivered exactly once");
}

#[tokio::test]
async fn a_webhook_receiver_that_is_down_then_up_gets_the_run() {
    let addr = free_addr();
    let hook = action(
        "sync-deploy",
        "CREATE",
        json!({"type": "WEBHOOK", "url": format!("http://{addr}/hook"), "synchronized": true,
               "body": {"run": "{{run.id}}", "size": "{{inputs.size}}", "who": "{{trigger.by.user}}"}}),
        false,
    );
    let app = TestApp::spawn(&[hook]).await;
    let run = app
        .run_id(DEV, "sync-deploy", None, json!({"size": 3}))
        .await;
    tokio::time::sleep(std::time::Duration::from_millis(150)).await;
    let receiver = Receiver::start_on(addr).await;
    receiver
        .status
        .store(200, std::sync::atomic::Ordering::SeqCst);
    let done = app.wait_for(&run, "SUCCESS").await;
    assert_eq!(done["status"], "SUCCESS");
    let logs = app.log_lines(&run).await;
    assert!(
        logs[0].starts_with("webhook attempt 1 failed (connection failed"),
        "{logs:?}"
    );
    assert_eq!(logs.last().unwrap(), "the webhook answered HTTP 200");
    let body: Value = serde_json::from_slice(&receiver.received.lock().unwrap()[0].body).unwrap();
    assert_eq!(
        body,
        json!({"run": run, "size": 3, "who": DEV}),
        "the custom body keeps types"
    );
}

#[tokio::test]
async fn a_webhook_url_template_is_rendered_per_run_and_a_bad_result_fails_the_run() {
    let receiver = Receiver::start().await;
    let per_size = action(
        "per-size",
        "CREATE",
        json!({"type": "WEBHOOK", "url": format!("http://{}/hooks/{{{{inputs.size}}}}", receiver.addr)}),
        false,
    );
    let nowhere = action(
        "nowhere",
        "CREATE",
        json!({"type": "WEBHOOK", "url": "hooks/{{inputs.size}}"}),
        false,
    );
    let app = TestApp::spawn(&[per_size, nowhere]).await;

    app.run_id(DEV, "per-size", None, json!({"size": 2})).await;
    assert_eq!(receiver.first().await.path, "/hooks/2");

    let run = app.run_id(DEV, "nowhere", None, json!({"size": 3})).await;
    app.wait_for(&run, "FAILURE").await;
    assert_eq!(
        app.log_lines(&run).await,
        ["the webhook could not be built: `hooks/3` is not a URL: relative URL without a base"]
    );
}

#[tokio::test]
async fn a_webhook_that_never_recovers_fails_the_run_with_the_reason() {
    let receiver = Receiver::start().await;
    receiver
        .status
        .store(503, std::sync::atomic::Ordering::SeqCst);
    let hook = action(
        "flaky",
        "CREATE",
        json!({"type": "WEBHOOK", "url": receiver.url(), "synchronized": true}),
        false,
    );
    let refusing = Receiver::start().await;
    refusing
        .status
        .store(404, std::sync::atomic::Ordering::SeqCst);
    let refused = action(
        "refused",
        "CREATE",
        json!({"type": "WEBHOOK", "url": refusing.url()}),
        false,
    );
    let app = TestApp::spawn(&[hook, refused]).await;

    let run = app.run_id(DEV, "flaky", None, json!({})).await;
    app.wait_for(&run, "FAILURE").await;
    assert_eq!(receiver.count(), 4, "max_attempts in the test settings");
    let logs = app.log_lines(&run).await;
    assert_eq!(
        logs.last().unwrap(),
        "the webhook backend could not be reached after 4 attempts: HTTP 503"
    );

    // A 4xx is an answer, not an outage: no retry.
    let run = app.run_id(DEV, "refused", None, json!({})).await;
    app.wait_for(&run, "FAILURE").await;
    assert_eq!(refusing.count(), 1);
    assert!(
        app.log_lines(&run).await[0].starts_with("the webhook backend refused the run: HTTP 404")
    );
}

#[tokio::test]
async fn a_webhook_that_redirects_is_not_followed_and_the_run_says_where_it_pointed() {
    // The receiver the redirect points at must not get the signed request.
    let elsewhere = Receiver::start().await;
    let target = format!("{}?token=secret", elsewhere.url());
    let redirecting = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = redirecting.local_addr().unwrap();
    let asked = Arc::new(AtomicUsize::new(0));
    let counted = Arc::clone(&asked);
    let router = axum::Router::new().fallback(move || {
        counted.fetch_add(1, Ordering::SeqCst);
        let target = target.clone();
        async move { (StatusCode::TEMPORARY_REDIRECT, [("location", target)]) }
    });
    tokio::spawn(async move { axum::serve(redirecting, router).await.unwrap() });
    let hook = action(
        "moved",
        "CREATE",
        json!({"type": "WEBHOOK", "url": format!("http://{addr}/hook")}),
        false,
    );
    let app = TestApp::spawn(&[hook]).await;

    let run = app.run_id(DEV, "moved", None, json!({})).await;
    app.wait_for(&run, "FAILURE").await;
    assert_eq!(
        app.log_lines(&run).await,
        [format!(
            "the webhook answered HTTP 307, a redirect to {}: portbot does not follow \
             redirects, since the request is signed for the action's url; set the url to \
             where the backend is",
            elsewhere.url()
        )]
    );
    assert_eq!(asked.load(Ordering::SeqCst), 1, "a redirect is not retried");
    assert_eq!(elsewhere.count(), 0, "the redirect was not followed");
}

#[tokio::test]
async fn commands_get_context_and_their_output_and_exit_code_count() {
    let script = r#"read -r ctx; echo "stdin run: $(printf '%s' "$ctx" | grep -o '"id":"r_[a-z0-9]*"')"; echo "size=$PORT_INPUT_SIZE entity=$PORT_ENTITY user=$PORT_USER secret=${PORTBOT__TEST__SECRET:-none}"; echo oops >&2; exit 3"#;
    let failing = action(
        "script",
        "DAY-2",
        json!({"type": "COMMAND", "command": ["sh", "-c", script]}),
        false,
    );
    let slow = action(
        "slow",
        "DAY-2",
        json!({"type": "COMMAND", "command": ["sh", "-c", "echo starting; sleep 30 & wait"], "timeoutSeconds": 1}),
        false,
    );
    // portbot's own settings (secrets) must not reach the program.
    std::env::set_var("PORTBOT__TEST__SECRET", "leaked");
    let app = TestApp::spawn(&[failing, slow]).await;

    let run = app
        .run_id(DEV, "script", Some("mailer"), json!({"size": 2}))
        .await;
    app.wait_for(&run, "FAILURE").await;
    let logs = app.log_lines(&run).await;
    assert!(
        logs.contains(&format!("stdin run: \"id\":\"{run}\"")),
        "{logs:?}"
    );
    assert!(
        logs.contains(&"size=2 entity=mailer user=dev@example.com secret=none".to_owned()),
        "{logs:?}"
    );
    assert!(logs.contains(&"oops".to_owned()), "{logs:?}");
    assert_eq!(logs.last().unwrap(), "the command exited with code 3");

    let started = std::time::Instant::now();
    let run = app.run_id(DEV, "slow", Some("mailer"), json!({})).await;
    app.wait_for(&run, "FAILURE").await;
    assert!(started.elapsed() < std::time::Duration::from_secs(10));
    let logs = app.log_lines(&run).await;
    assert!(logs.contains(&"starting".to_owned()), "{logs:?}");
    assert_eq!(
        logs.last().unwrap(),
        "the command did not finish within 1 s and was killed"
    );
}

#[tokio::test]
async fn cancelling_a_run_kills_its_command() {
    let marker = tempfile::tempdir().unwrap();
    let touched = marker.path().join("finished");
    let script = format!("echo started; sleep 2; touch {}", touched.display());
    let slow = action(
        "slow-cancel",
        "DAY-2",
        json!({"type": "COMMAND", "command": ["sh", "-c", script]}),
        false,
    );
    let app = TestApp::spawn(&[slow]).await;
    let run = app
        .run_id(DEV, "slow-cancel", Some("mailer"), json!({}))
        .await;
    for _ in 0..50 {
        if app.log_lines(&run).await.contains(&"started".to_owned()) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let (status, body) = app
        .backend(
            "PATCH",
            &format!("/v1/actions/runs/{run}"),
            Some(json!({"status": "CANCELLED"})),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    tokio::time::sleep(std::time::Duration::from_secs(3)).await;
    assert!(
        !touched.exists(),
        "the command was killed before it finished"
    );
    assert_eq!(app.run(&run).await["status"], "CANCELLED");
}
