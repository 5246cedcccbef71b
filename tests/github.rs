//! The GitHub backends against a fake GitHub API on loopback: GITOPS with provider `github`
//! (commit, pull request, CI results, merge and close through `/github/webhook`, merge seen by
//! polling, forged webhooks, GitHub's 422 "already exists", outages and secondary rate limits),
//! and the GITHUB workflow backend (dispatch with `port_context`, its workflow run's end).

mod common;

use std::time::Duration;

use common::github::{
    gitops_on_github, send_delivery, send_event, FakeGitHub, REPO, TOKEN, WEBHOOK_SECRET,
};
use common::{action, TestApp};
use serde_json::{json, Value};

const DEV: &str = "dev@example.com";
const OPS: &str = "ops@example.com";
const FILE: &str = "terraform/documentdb/mailer-documentdb.tf";

async fn spawn(fake: &FakeGitHub, actions: &[Value], webhook: bool) -> TestApp {
    let api_url = fake.api_url();
    TestApp::spawn_with(actions, |s| {
        s.github.api_url = api_url;
        s.github.token = Some(serde_json::from_value(json!(TOKEN)).unwrap());
        if webhook {
            s.github.webhook_secret = Some(serde_json::from_value(json!(WEBHOOK_SECRET)).unwrap());
        }
        s.github.poll_interval_seconds = 1;
        s.github.max_attempts = 4;
        s.github.initial_backoff_ms = 50;
        s.github.max_backoff_ms = 1500;
    })
    .await
}

/// Requests and approves a run; waits until it has a link or has ended.
async fn approved(app: &TestApp, action: &str, entity: &str, inputs: Value) -> (String, Value) {
    let run = app.run_id(DEV, action, Some(entity), inputs).await;
    let (status, body) = app.decide(OPS, &run, "APPROVE").await;
    assert_eq!(status, 200, "{body}");
    let current = app.wait_for_link(&run).await;
    (run, current)
}

#[tokio::test]
async fn a_pull_request_is_opened_and_its_merge_through_the_webhook_ends_the_run() {
    let fake = FakeGitHub::start().await;
    let app = spawn(&fake, &[gitops_on_github()], true).await;
    let (run, current) = approved(
        &app,
        "add-documentdb-gitops",
        "mailer",
        json!({"instances": 3}),
    )
    .await;
    let branch = format!("portbot/{run}");
    assert_eq!(
        current["link"],
        format!("https://github.example/{REPO}/pull/1"),
        "{current}"
    );
    assert_eq!(current["status"], "IN_PROGRESS");

    // One commit on main with the rendered file, on the run's branch.
    let files = fake.repo.lock().unwrap().files(&branch);
    assert_eq!(files.keys().collect::<Vec<_>>(), vec!["README.md", FILE]);
    assert!(
        files[FILE].contains("  instances      = \"3\"\n"),
        "{}",
        files[FILE]
    );
    let commit = &fake.calls_to("POST", &format!("/repos/{REPO}/git/commits"))[0].body;
    assert_eq!(
        commit["parents"],
        json!([fake.repo.lock().unwrap().refs["main"]])
    );
    assert_eq!(commit["author"]["name"], "portbot");
    assert!(commit["message"]
        .as_str()
        .unwrap()
        .ends_with(&format!("Portbot-Run: {run}\n")));
    let pulls = fake.calls_to("POST", &format!("/repos/{REPO}/pulls"));
    assert_eq!(pulls.len(), 1);
    let pull = &pulls[0].body;
    assert_eq!(pull["head"], branch);
    assert_eq!(pull["base"], "main");
    assert_eq!(pull["title"], "DocumentDB for mailer (3 x db.t3.medium)");
    let body = pull["body"].as_str().unwrap();
    for expected in [
        "Adds or changes the DocumentDB module call for `mailer`.",
        &format!("- Requested by: {DEV}"),
        &format!("- Approved by: {OPS}"),
        "  - `instances`: `3`",
        &format!("/v1/actions/runs/{run}"),
    ] {
        assert!(body.contains(expected), "`{expected}` in:\n{body}");
    }

    // CI's plan reaches the run's log and label.
    let check = json!({"action": "completed", "check_run": {
        "name": "terraform-plan", "status": "completed", "conclusion": "success",
        "html_url": "https://github.example/acme/infra/runs/7",
        "check_suite": {"head_branch": branch}}});
    let delivery = "72d3162e-cc78-11e3-81ab-4c9367dc0958";
    let (status, _) = send_delivery(&app.base, "check_run", &check, WEBHOOK_SECRET, delivery).await;
    assert_eq!(status, 200);
    let current = app.run(&run).await;
    assert_eq!(current["statusLabel"], "terraform-plan: success");
    let plan = "CI terraform-plan: success (https://github.example/acme/infra/runs/7)";
    // The same delivery again (GitHub redelivers it with the same id): taken once.
    let (status, body) =
        send_delivery(&app.base, "check_run", &check, WEBHOOK_SECRET, delivery).await;
    assert_eq!(
        (status, &body["message"]),
        (200, &json!("this delivery was received before"))
    );
    // The same event under a new delivery id, as when portbot stopped after applying it but
    // before keeping its receipt: each observation applies once by what it says.
    let (status, _) = send_event(&app.base, "check_run", &check, WEBHOOK_SECRET).await;
    assert_eq!(status, 200);
    let logs = app.log_lines(&run).await;
    assert_eq!(logs.iter().filter(|l| *l == plan).count(), 1, "{logs:?}");

    // A forged event changes nothing.
    let merged = json!({"action": "closed", "pull_request": fake.close_pull(&branch, true)});
    let (status, body) = send_event(&app.base, "pull_request", &merged, "not-the-secret").await;
    assert_eq!(status, 401, "{body}");
    let (status, _) = send_event(
        &app.base,
        "ping",
        &json!({"zen": "Keep it logically awesome."}),
        "wrong",
    )
    .await;
    assert_eq!(status, 401);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(app.run(&run).await["status"], "IN_PROGRESS");

    let (status, _) = send_event(
        &app.base,
        "ping",
        &json!({"zen": "Keep it logically awesome."}),
        WEBHOOK_SECRET,
    )
    .await;
    assert_eq!(status, 200);
    let (status, _) = send_event(&app.base, "pull_request", &merged, WEBHOOK_SECRET).await;
    assert_eq!(status, 200);
    let done = app.wait_for(&run, "SUCCESS").await;
    assert_eq!(done["statusLabel"], "merged");
    let logs = app.log_lines(&run).await;
    assert!(
        logs.contains(&format!(
            "pull request https://github.example/{REPO}/pull/1 was merged by octo-reviewer"
        )),
        "{logs:?}"
    );
    let (_, resource) = app.entity("Resource", "mailer-documentdb").await;
    assert_eq!(resource["properties"]["instances"], 3, "{resource}");
    // Sent again (GitHub's redelivery): nothing changes.
    let (status, _) = send_event(&app.base, "pull_request", &merged, WEBHOOK_SECRET).await;
    assert_eq!(status, 200);
    assert_eq!(app.run(&run).await["status"], "SUCCESS");
}

#[tokio::test]
async fn a_pull_request_closed_unmerged_fails_the_run_and_malformed_events_get_an_answer() {
    let fake = FakeGitHub::start().await;
    let app = spawn(&fake, &[gitops_on_github()], true).await;
    let (run, _) = approved(
        &app,
        "add-documentdb-gitops",
        "mailer",
        json!({"instances": 2}),
    )
    .await;
    let branch = format!("portbot/{run}");
    let client = reqwest::Client::new();
    let garbage = b"{not json".to_vec();
    let response = client
        .post(format!("{}/github/webhook", app.base))
        .header("x-github-event", "pull_request")
        .header(
            "x-hub-signature-256",
            common::github::signature(WEBHOOK_SECRET, &garbage),
        )
        .body(garbage)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    for (event, payload) in [
        ("pull_request", json!({"action": "closed"})),
        ("check_run", json!({"check_run": 7})),
        (
            "workflow_run",
            json!({"workflow_run": {"display_title": "no run here"}}),
        ),
        ("push", json!({})),
    ] {
        let (status, _) = send_event(&app.base, event, &payload, WEBHOOK_SECRET).await;
        assert_eq!(status, 200, "{event}");
    }
    let closed = json!({"action": "closed", "pull_request": fake.close_pull(&branch, false)});
    let (status, _) = send_event(&app.base, "pull_request", &closed, WEBHOOK_SECRET).await;
    assert_eq!(status, 200);
    let failed = app.wait_for(&run, "FAILURE").await;
    assert_eq!(failed["statusLabel"], "closed unmerged");

    // A run cancelled in portbot closes its pull request, so it cannot be merged by mistake.
    let (cancelled, _) = approved(
        &app,
        "add-documentdb-gitops",
        "mailer",
        json!({"instances": 4}),
    )
    .await;
    let (status, body) = app
        .patch_run(&cancelled, json!({"status": "CANCELLED"}))
        .await;
    assert_eq!(status, 200, "{body}");
    for _ in 0..50 {
        if !fake
            .calls_to("PATCH", &format!("/repos/{REPO}/pulls/2"))
            .is_empty()
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let closing = fake.calls_to("PATCH", &format!("/repos/{REPO}/pulls/2"));
    assert_eq!(closing.len(), 1);
    assert_eq!(closing[0].body, json!({"state": "closed"}));
    assert!(
        fake.calls_to("PATCH", &format!("/repos/{REPO}/pulls/1"))
            .is_empty(),
        "the pull request closed on GitHub is left alone"
    );
    let (status, _) = app.entity("Resource", "mailer-documentdb").await;
    assert_eq!(status, 404, "no catalog change without a merge");
}

#[tokio::test]
async fn without_a_webhook_polling_sees_the_merge_and_the_endpoint_is_absent() {
    let fake = FakeGitHub::start().await;
    let app = spawn(&fake, &[gitops_on_github()], false).await;
    let response = reqwest::Client::new()
        .post(format!("{}/github/webhook", app.base))
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 404);
    let (run, _) = approved(
        &app,
        "add-documentdb-gitops",
        "mailer",
        json!({"instances": 3}),
    )
    .await;
    // CI's plan, polled: logged once however often it is seen.
    fake.repo.lock().unwrap().check_runs.push(
        json!({"name": "terraform-plan", "status": "completed",
        "conclusion": "success", "html_url": "https://github.example/acme/infra/runs/9",
        "head_branch": format!("portbot/{run}")}),
    );
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let current = app.run(&run).await;
    assert_eq!(
        current["status"], "IN_PROGRESS",
        "an open pull request waits"
    );
    assert_eq!(current["statusLabel"], "terraform-plan: success");
    let plan = "CI terraform-plan: success (https://github.example/acme/infra/runs/9)";
    let logs = app.log_lines(&run).await;
    assert_eq!(logs.iter().filter(|l| *l == plan).count(), 1, "{logs:?}");
    fake.close_pull(&format!("portbot/{run}"), true);
    app.wait_for(&run, "SUCCESS").await;
    let logs = app.log_lines(&run).await;
    assert!(
        logs.contains(&"the change was merged into main (seen by polling)".to_owned()),
        "{logs:?}"
    );
}

#[tokio::test]
async fn lost_answers_and_outages_are_retried_and_a_lasting_outage_fails_with_the_reason() {
    let fake = FakeGitHub::start().await;
    let app = spawn(&fake, &[gitops_on_github()], true).await;
    // GitHub made the branch and the pull request but its answers were lost (422 "already
    // exists"); before that a 502, a 503 and a secondary rate limit.
    fake.lose_ref_answer
        .store(true, std::sync::atomic::Ordering::SeqCst);
    fake.lose_pull_answer
        .store(true, std::sync::atomic::Ordering::SeqCst);
    *fake.fail_next.lock().unwrap() = vec![502, 503];
    fake.rate_limit_next
        .store(1, std::sync::atomic::Ordering::SeqCst);
    let (run, current) = approved(
        &app,
        "add-documentdb-gitops",
        "mailer",
        json!({"instances": 3}),
    )
    .await;
    assert_eq!(current["status"], "IN_PROGRESS", "{current}");
    assert_eq!(
        current["link"],
        format!("https://github.example/{REPO}/pull/1")
    );
    assert_eq!(
        fake.repo.lock().unwrap().pulls.len(),
        1,
        "exactly one pull request"
    );
    let first_call = &fake.calls()[0];
    assert_eq!(
        fake.calls()
            .iter()
            .filter(|c| c.path == first_call.path)
            .count(),
        5,
        "the branch look-up: 502, 503, a secondary rate limit, answered; then again after the lost 422"
    );
    let kept = format!(
        "pull request https://github.example/{REPO}/pull/1 was opened by an earlier attempt; kept"
    );
    app.assert_logged(&run, |l| l.ends_with(&kept)).await;

    // An outage that does not end: the run fails with the reason.
    fake.down.store(true, std::sync::atomic::Ordering::SeqCst);
    let (other, _) = approved(
        &app,
        "add-documentdb-gitops",
        "CartService",
        json!({"instances": 1}),
    )
    .await;
    let failed = app.wait_for(&other, "FAILURE").await;
    assert!(failed["link"].is_null());
    let logs = app.log_lines(&other).await;
    assert!(
        logs.iter().any(
            |l| l.starts_with("GitHub did not answer the branch portbot/")
                && l.ends_with("after 4 attempts: HTTP 503 (server error)")
        ),
        "{logs:?}"
    );
}

#[tokio::test]
async fn workflows_are_dispatched_with_the_run_and_their_conclusion_ends_it() {
    let fake = FakeGitHub::start().await;
    let workflow = action(
        "deploy-workflow",
        "DAY-2",
        json!({"type": "GITHUB", "org": "acme", "repo": "infra", "workflow": "deploy.yml",
               "workflowInputs": {"service": "{{entity.identifier}}", "size": "{{inputs.size}}"},
               "reportWorkflowStatus": true}),
        true,
    );
    let app = spawn(&fake, &[workflow], true).await;
    let run = app
        .run_id(DEV, "deploy-workflow", Some("mailer"), json!({"size": 2}))
        .await;
    app.decide(OPS, &run, "APPROVE").await;
    let dispatch_path = format!("/repos/{REPO}/actions/workflows/deploy.yml/dispatches");
    for _ in 0..50 {
        if !fake.calls_to("POST", &dispatch_path).is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let dispatched = fake.calls_to("POST", &dispatch_path)[0].body.clone();
    assert_eq!(dispatched["ref"], "main");
    assert_eq!(dispatched["inputs"]["service"], "mailer");
    assert_eq!(
        dispatched["inputs"]["size"], "2",
        "GitHub's inputs are strings"
    );
    let context: Value =
        serde_json::from_str(dispatched["inputs"]["port_context"].as_str().unwrap()).unwrap();
    assert_eq!(context["runId"], run);
    assert_eq!(context["entity"], "mailer");

    // The workflow's `run-name` carries the run id: its events find the run.
    let url = "https://github.example/acme/infra/actions/runs/42";
    let mut workflow_run = json!({"name": "deploy", "display_title": format!("deploy {run}"),
        "status": "in_progress", "conclusion": null, "html_url": url, "head_branch": "main"});
    let (status, _) = send_event(
        &app.base,
        "workflow_run",
        &json!({"action": "in_progress", "workflow_run": workflow_run}),
        WEBHOOK_SECRET,
    )
    .await;
    assert_eq!(status, 200);
    let current = app.run(&run).await;
    assert_eq!(
        (current["link"].as_str(), current["status"].as_str()),
        (Some(url), Some("IN_PROGRESS"))
    );
    // The line that reports the link is there with it. (The event is handled before GitHub's
    // request is answered, so this cannot tell one change from two.)
    app.assert_logged(&run, |l| l == format!("workflow run {url}"))
        .await;
    workflow_run["status"] = json!("completed");
    workflow_run["conclusion"] = json!("success");
    send_event(
        &app.base,
        "workflow_run",
        &json!({"action": "completed", "workflow_run": workflow_run}),
        WEBHOOK_SECRET,
    )
    .await;
    app.wait_for(&run, "SUCCESS").await;

    // Polling finds a failed workflow run of another run.
    let second = app
        .run_id(
            DEV,
            "deploy-workflow",
            Some("CartService"),
            json!({"size": 1}),
        )
        .await;
    app.decide(OPS, &second, "APPROVE").await;
    fake.repo.lock().unwrap().workflow_runs.push(json!({"name": "deploy", "display_title": format!("deploy {second}"),
        "status": "completed", "conclusion": "failure", "html_url": "https://github.example/acme/infra/actions/runs/43"}));
    let failed = app.wait_for(&second, "FAILURE").await;
    assert_eq!(
        failed["link"],
        "https://github.example/acme/infra/actions/runs/43"
    );
    assert!(app
        .log_lines(&second)
        .await
        .contains(&"the workflow run ended: failure".to_owned()));
}
