//! GITOPS with the `git` provider end to end: the shipped "add a DocumentDB" example against a
//! real local bare repository. Create, day-2 and delete runs make exactly the expected commits
//! and files; a second run on the same file is refused while the first is active; a merge
//! (seen by polling) ends the run SUCCESS and updates the catalog; a deleted branch ends it
//! FAILURE; hostile inputs land escaped in a file that parses (and passes `terraform fmt`); a
//! Slack form refused for a taken file after it closed tells its user why.

mod common;

use common::git::{terraform_fmt_check, BareRepo};
use common::slack::{form, form_answered_at, send_signed, submission, trigger_of, SECRET};
use common::{mentions, FakeSlack, TestApp};
use serde_json::{json, Value};

const DEV: &str = "dev@example.com";
const OPS: &str = "ops@example.com";
const FILE: &str = "terraform/documentdb/mailer-documentdb.tf";

/// A shipped action, its remote pointed at `repo`.
fn shipped(identifier: &str, repo: &BareRepo) -> Value {
    let text =
        std::fs::read_to_string(format!("config/catalog/actions/{identifier}.json")).unwrap();
    let mut action: Value = serde_json::from_str(&text).unwrap();
    action["invocationMethod"]["remote"] = json!(repo.remote());
    action
}

async fn spawn(repo: &BareRepo) -> TestApp {
    spawn_with(repo, |_| {}).await
}

async fn spawn_with(
    repo: &BareRepo,
    tweak: impl FnOnce(&mut portbot::config::Settings),
) -> TestApp {
    let actions = [
        shipped("add-documentdb-gitops", repo),
        shipped("remove-documentdb-gitops", repo),
    ];
    TestApp::spawn_with(&actions, |s| {
        s.github.poll_interval_seconds = 1;
        tweak(s);
    })
    .await
}

async fn approved_and_published(app: &TestApp, run: &str) -> Value {
    let (status, body) = app.decide(OPS, run, "APPROVE").await;
    assert_eq!(status, 200, "{body}");
    app.wait_for_link(run).await
}

#[tokio::test]
async fn create_day2_and_delete_runs_change_one_file_through_reviewed_branches() {
    let repo = BareRepo::new();
    let app = spawn(&repo).await;

    // 1. Add a DocumentDB to mailer: a branch with one commit that adds one file.
    let first = app
        .run_id(
            DEV,
            "add-documentdb-gitops",
            Some("mailer"),
            json!({"instances": 3}),
        )
        .await;
    let (status, body) = app
        .request_run(
            DEV,
            "add-documentdb-gitops",
            Some("mailer"),
            json!({"instances": 2}),
        )
        .await;
    assert_eq!(status, 409, "{body}");
    assert_eq!(body["error"], "resource_locked");
    let message = body["message"].as_str().unwrap();
    assert!(
        message.contains(FILE) && message.contains(&first),
        "{message}"
    );

    let run = approved_and_published(&app, &first).await;
    let branch = format!("portbot/{first}");
    assert_eq!(run["status"], "IN_PROGRESS", "{run}");
    assert_eq!(run["statusLabel"], "awaiting merge");
    assert_eq!(run["link"], format!("{}#{branch}", repo.remote()));
    assert_eq!(
        repo.commits(&format!("main..{branch}")),
        vec!["DocumentDB for mailer: 3 x db.t3.medium|portbot|portbot@localhost"]
    );
    let message = repo.git(&["log", "-1", "--format=%B", &branch]);
    assert!(
        message.ends_with(&format!("Portbot-Run: {first}")),
        "{message}"
    );
    assert_eq!(
        repo.git(&["diff", "--name-status", "main", &branch]),
        format!("A\t{FILE}")
    );
    let tf = repo.file(&branch, FILE);
    assert!(tf.contains("module \"mailer-documentdb\" {"), "{tf}");
    assert!(tf.contains("  instances      = \"3\"\n"), "{tf}");
    assert!(tf.contains("  notes          = \"\"\n"), "{tf}");
    hcl::parse(&tf).expect("the committed file parses");
    terraform_fmt_check(&tf);
    let pushed = format!("pushed branch {branch} (");
    app.assert_logged(&first, |l| l.starts_with(&pushed)).await;

    // A merge, seen by polling, ends the run and updates the catalog once.
    repo.merge(&branch);
    let done = app.wait_for(&first, "SUCCESS").await;
    assert_eq!(done["statusLabel"], "merged");
    let (_, resource) = app.entity("Resource", "mailer-documentdb").await;
    assert_eq!(resource["properties"]["instances"], 3, "{resource}");
    let (_, mailer) = app.entity("Component", "mailer").await;
    assert!(
        mailer["relations"]["resources"]
            .as_array()
            .unwrap()
            .contains(&json!("mailer-documentdb")),
        "{mailer}"
    );

    // 2. Day-2 (3 -> 4): the same file changes; no second file appears.
    let second = app
        .run_id(
            DEV,
            "add-documentdb-gitops",
            Some("mailer"),
            json!({"instances": 4}),
        )
        .await;
    approved_and_published(&app, &second).await;
    let branch = format!("portbot/{second}");
    assert_eq!(repo.commits(&format!("main..{branch}")).len(), 1);
    assert_eq!(
        repo.git(&["diff", "--name-status", "main", &branch]),
        format!("M\t{FILE}")
    );
    let diff = repo.git(&["diff", "-U0", "main", &branch, "--", FILE]);
    assert!(
        diff.contains("-  instances      = \"3\"") && diff.contains("+  instances      = \"4\""),
        "{diff}"
    );
    repo.merge(&branch);
    app.wait_for(&second, "SUCCESS").await;
    let documentdb_files: Vec<String> = repo
        .files("main")
        .into_iter()
        .filter(|f| f.starts_with("terraform/documentdb/"))
        .collect();
    assert_eq!(documentdb_files, vec![FILE.to_owned()]);
    let (_, resource) = app.entity("Resource", "mailer-documentdb").await;
    assert_eq!(resource["properties"]["instances"], 4);

    // 3. Delete: a branch that removes the file. Deleting the branch unmerged fails the run.
    let abandoned = app
        .run_id(
            DEV,
            "remove-documentdb-gitops",
            Some("mailer-documentdb"),
            json!({}),
        )
        .await;
    approved_and_published(&app, &abandoned).await;
    let branch = format!("portbot/{abandoned}");
    assert_eq!(
        repo.git(&["diff", "--name-status", "main", &branch]),
        format!("D\t{FILE}")
    );
    repo.delete_branch(&branch);
    let failed = app.wait_for(&abandoned, "FAILURE").await;
    assert_eq!(failed["statusLabel"], "closed unmerged");

    let removal = app
        .run_id(
            DEV,
            "remove-documentdb-gitops",
            Some("mailer-documentdb"),
            json!({}),
        )
        .await;
    approved_and_published(&app, &removal).await;
    repo.merge(&format!("portbot/{removal}"));
    app.wait_for(&removal, "SUCCESS").await;
    assert!(!repo.files("main").contains(&FILE.to_owned()));
    let (status, _) = app.entity("Resource", "mailer-documentdb").await;
    assert_eq!(status, 404);

    // Deleting what is not there is refused with the reason.
    let (status, body) = app
        .request_run(
            DEV,
            "remove-documentdb-gitops",
            Some("cart-sql-sb"),
            json!({}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let nothing = body["run"]["id"].as_str().unwrap().to_owned();
    app.decide(OPS, &nothing, "APPROVE").await;
    app.wait_for(&nothing, "FAILURE").await;
    let logs = app.log_lines(&nothing).await;
    assert!(
        logs.iter().any(|l| l.contains("terraform/documentdb/cart-sql-sb.tf` does not exist on main, so there is nothing to remove")),
        "{logs:?}"
    );
}

#[tokio::test]
async fn hostile_inputs_land_escaped_in_a_file_that_parses() {
    let repo = BareRepo::new();
    let app = spawn(&repo).await;
    let hostile = "x\"\n}\nresource \"aws_iam_user\" \"evil\" {\n  name = \"${file(\"/etc/passwd\")}\" %{ if true }\n<<EOF\nEOF\n☃ \\";
    let run = app
        .run_id(
            DEV,
            "add-documentdb-gitops",
            Some("mailer"),
            json!({"instances": 2, "notes": hostile}),
        )
        .await;
    approved_and_published(&app, &run).await;
    let tf = repo.file(&format!("portbot/{run}"), FILE);
    let body = hcl::parse(&tf).expect("the committed file parses");
    assert_eq!(
        body.blocks().count(),
        1,
        "one module, no injected resource:\n{tf}"
    );
    let module = body.blocks().next().unwrap();
    let notes = module
        .body()
        .attributes()
        .find(|a| a.key() == "notes")
        .unwrap();
    assert_eq!(notes.expr(), &hcl::Expression::String(hostile.to_owned()));
    terraform_fmt_check(&tf);
}

#[test]
fn check_reports_unsafe_iac_templates_with_file_and_field() {
    let repo = BareRepo::new();
    let mut on_github = common::github::gitops_on_github();
    on_github["identifier"] = json!("add-documentdb-on-github");
    let deployment = common::deployment(&[shipped("add-documentdb-gitops", &repo), on_github]);
    let iac = deployment.path().join("iac");
    std::fs::create_dir_all(&iac).unwrap();
    std::fs::write(
        iac.join("documentdb.tf.hbs"),
        "module \"db\" {\n  name = \"{{{entity.identifier}}}\"\n  instances = {{inputs.instances}}\n}\n",
    )
    .unwrap();
    let out = std::process::Command::new(common::binary())
        .arg("check")
        .env("PORTBOT__CATALOG__PATH", deployment.path().join("catalog"))
        .env("PORTBOT__IAC__TEMPLATES_PATH", &iac)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    let prefix = format!(
        "{}: invocationMethod.files[0].template: {}: ",
        deployment
            .path()
            .join("catalog/actions/add-documentdb-gitops.json")
            .display(),
        iac.join("documentdb.tf.hbs").display()
    );
    let github_action = deployment
        .path()
        .join("catalog/actions/add-documentdb-on-github.json");
    assert!(
        text.contains(&format!(
            "{}: invocationMethod: calls GitHub, but github.token is not set (PORTBOT__GITHUB__TOKEN)",
            github_action.display()
        )),
        "{text}"
    );
    for expected in [
        "line 2: `{{{entity.identifier}}}` would put a value in without escaping",
        "line 3: `{{inputs.instances}}` is outside a quoted string",
    ] {
        assert!(
            text.contains(&format!("{prefix}{expected}")),
            "expected `{expected}` in:\n{text}"
        );
    }
}

#[tokio::test]
async fn the_chat_thread_shows_the_branch_the_merge_and_the_catalog_change() {
    let repo = BareRepo::new();
    let slack = FakeSlack::start().await;
    let app = spawn_with(&repo, |s| common::slack::enable(s, &slack)).await;
    let (status, body) = send_signed(
        &app,
        "/slack/commands",
        &form("UDEV", "add-documentdb-gitops mailer instances=3"),
        chrono::Utc::now().timestamp(),
        SECRET,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let (_, runs) = app.admin("GET", "/v1/actions/runs", None, None).await;
    let run = runs["runs"][0]["id"].as_str().unwrap().to_owned();
    let (status, body) = app.decide("slack:UOPS", &run, "APPROVE").await;
    assert_eq!(status, 200, "{body}");
    app.wait_for_link(&run).await;
    repo.merge(&format!("portbot/{run}"));
    app.wait_for(&run, "SUCCESS").await;
    let calls = slack
        .calls_when(|calls| mentions(calls, "your run ended: *SUCCESS*"))
        .await;
    let thread = calls
        .iter()
        .filter(|c| c.method == "chat.postMessage" && c.body["channel"] == "C123")
        .map(|c| c.body["blocks"].to_string())
        .collect::<Vec<_>>()
        .join("\n");
    common::assert_in_order(
        &thread,
        &[
            "Approved by <@UOPS>",
            &format!("pushed branch portbot/{run}"),
            "the change was merged into main (seen by polling)",
            "Catalog",
            "<@UDEV> your run ended: *SUCCESS*",
        ],
    );
}

#[tokio::test]
async fn a_run_cancelled_after_its_push_has_its_branch_deleted() {
    let repo = BareRepo::new();
    let app = spawn(&repo).await;
    let run = app
        .run_id(
            DEV,
            "add-documentdb-gitops",
            Some("mailer"),
            json!({"instances": 1}),
        )
        .await;
    approved_and_published(&app, &run).await;
    let branch = format!("portbot/{run}");
    assert!(repo.has_branch(&branch));
    let (status, body) = app.patch_run(&run, json!({"status": "CANCELLED"})).await;
    assert_eq!(status, 200, "{body}");
    for _ in 0..100 {
        if !repo.has_branch(&branch) {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    panic!("the branch of a cancelled run is still there, ready to be merged by mistake");
}

#[tokio::test]
async fn a_slack_form_refused_after_it_closed_tells_the_user_why() {
    let repo = BareRepo::new();
    let slack = FakeSlack::start().await;
    // 0: no answer is waited for, so what is not known at once comes after the form closed.
    let app = spawn_with(&repo, |s| {
        common::slack::enable(s, &slack);
        s.slack.defer_after_ms = 0;
    })
    .await;
    let first = app
        .run_id(
            DEV,
            "add-documentdb-gitops",
            Some("mailer"),
            json!({"instances": 3}),
        )
        .await;
    let typed = form_answered_at(
        "UDEV",
        "add-documentdb-gitops mailer",
        &slack.response_url(),
    );
    slack
        .triggers
        .lock()
        .unwrap()
        .insert(trigger_of(&typed), std::time::Instant::now());
    let now = chrono::Utc::now().timestamp();
    let (status, _) = send_signed(&app, "/slack/commands", &typed, now, SECRET).await;
    assert_eq!(status, 200);
    let calls = slack
        .calls_when(|calls| calls.iter().any(|c| c.method == "views.open"))
        .await;
    let open = calls.iter().find(|c| c.method == "views.open").unwrap();
    let key = open.body["view"]["private_metadata"].as_str().unwrap();
    let instances = |v: &str| json!({"instances": {"value": {"type": "number_input", "value": v}}});

    // What the form's inputs break is still shown in place: checking waits for nothing.
    let (status, body) = send_signed(
        &app,
        "/slack/interactions",
        &submission("UDEV", key, instances("9")),
        chrono::Utc::now().timestamp(),
        SECRET,
    )
    .await;
    assert_eq!(status, 200);
    let reply: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        reply["errors"]["instances"],
        "instances must be at most 5 (got 9)"
    );

    // The file is taken, which creating finds: the form has closed by then, so the user is
    // told privately in the channel of the command.
    let (status, body) = send_signed(
        &app,
        "/slack/interactions",
        &submission("UDEV", key, instances("2")),
        chrono::Utc::now().timestamp(),
        SECRET,
    )
    .await;
    assert_eq!((status, body.as_str()), (200, ""), "the form closes");
    let calls = slack
        .calls_when(|calls| calls.iter().any(|c| c.method == "chat.postEphemeral"))
        .await;
    let refusal = calls
        .iter()
        .find(|c| c.method == "chat.postEphemeral")
        .expect("a private refusal");
    assert_eq!(refusal.body["channel"], "C123");
    assert_eq!(refusal.body["user"], "UDEV");
    let text = refusal.body["blocks"].to_string();
    assert!(
        text.contains("The run was not created") && text.contains(FILE) && text.contains(&first),
        "{text}"
    );
    let (_, runs) = app.admin("GET", "/v1/actions/runs", None, None).await;
    assert_eq!(runs["runs"].as_array().unwrap().len(), 1, "{runs}");
}
