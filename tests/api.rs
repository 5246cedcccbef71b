//! The Port-compatible API end to end: auth, every endpoint, guardrails, RBAC, decisions and
//! immutability, against the real app on loopback with sled in a temporary folder.

mod common;

use axum::http::StatusCode;
use common::TestApp;
use serde_json::{json, Value};

const DEV: &str = "dev@example.com";
const OPS: &str = "ops@example.com";
const OUTSIDER: &str = "someone@example.com";

#[tokio::test]
async fn tokens_are_required_and_roles_are_enforced() {
    let app = TestApp::spawn(&[]).await;
    let response = app
        .http
        .get(format!("{}/v1/blueprints", app.base))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["ok"], false);
    assert_eq!(body["error"], "unauthorized");

    let (status, body) = app
        .send(
            "GET",
            &format!("{}/v1/blueprints", app.base),
            "forged.token",
            None,
        )
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");

    let response = app
        .http
        .post(format!("{}/v1/auth/access_token", app.base))
        .json(&json!({"clientId": common::ADMIN, "clientSecret": "wrong"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);

    // A backend client reports on runs but never runs or approves.
    let (status, body) = app
        .backend(
            "POST",
            "/v1/actions/add-documentdb/runs",
            Some(json!({"entity": "mailer", "properties": {"instances": 2}})),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    let (status, _) = app
        .backend("GET", "/v1/actions/runs?run_as=ops@example.com", None)
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn a_token_lifetime_too_long_for_a_timestamp_gives_tokens_that_work() {
    let app = TestApp::spawn_with(&[], |s| s.api.token_ttl_seconds = u64::MAX).await;
    let (status, body) = app.admin("GET", "/v1/blueprints", None, None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

#[tokio::test]
async fn catalog_endpoints_read_upsert_and_delete() {
    let app = TestApp::spawn(&[]).await;
    let (status, body) = app.admin("GET", "/v1/blueprints", None, None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["blueprints"].as_array().unwrap().len(), 5);
    let (_, body) = app
        .admin("GET", "/v1/blueprints/Component", None, None)
        .await;
    assert_eq!(body["blueprint"]["relations"]["resources"]["many"], true);
    let (status, _) = app.admin("GET", "/v1/blueprints/Nope", None, None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (_, body) = app
        .admin("GET", "/v1/blueprints/Component/entities", None, None)
        .await;
    assert!(body["entities"]
        .as_array()
        .unwrap()
        .iter()
        .any(|e| e["identifier"] == "mailer"));
    let (_, body) = app
        .admin(
            "GET",
            "/v1/blueprints/Component/entities/mailer",
            None,
            None,
        )
        .await;
    assert_eq!(body["entity"]["relations"]["system"], "Messaging");

    // Create, then merge: properties merge key by key, many-relations gain targets.
    let (status, body) = app
        .backend(
            "POST",
            "/v1/blueprints/Resource/entities",
            Some(json!({"identifier": "q1", "properties": {"type": "kafka-topic"}})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = app
        .backend(
            "POST",
            "/v1/blueprints/Resource/entities",
            Some(json!({"identifier": "q1", "properties": {"type": "s3-bucket"}})),
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    let (status, body) = app
        .backend(
            "POST",
            "/v1/blueprints/Component/entities?upsert=true&merge=true",
            Some(json!({"identifier": "mailer", "relations": {"resources": ["q1"]}})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["entity"]["relations"]["resources"], json!(["q1"]));
    assert_eq!(body["entity"]["properties"]["language"], "go");

    // Broken entities are refused with the field and rule.
    let (status, body) = app
        .backend(
            "POST",
            "/v1/blueprints/Component/entities?upsert=true",
            Some(json!({"identifier": "x", "properties": {"type": "daemon"}, "relations": {"system": "Nowhere"}})),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    let message = body["message"].as_str().unwrap();
    assert!(
        message.contains("`properties.type` must be one of: service, library"),
        "{message}"
    );
    assert!(
        message.contains(
            "`relations.system` must name an existing System entity (there is no `Nowhere`)"
        ),
        "{message}"
    );

    // Deleting removes references; a required relation blocks deletion.
    let (status, _) = app
        .backend("DELETE", "/v1/blueprints/Resource/entities/q1", None)
        .await;
    assert_eq!(status, StatusCode::OK);
    let (_, body) = app
        .admin(
            "GET",
            "/v1/blueprints/Component/entities/mailer",
            None,
            None,
        )
        .await;
    assert_eq!(body["entity"]["relations"]["resources"], json!([]));
    let (status, body) = app
        .backend(
            "DELETE",
            "/v1/blueprints/Component/entities/CartService",
            None,
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert!(body["message"].as_str().unwrap().contains("API `CartAPI`"));
    let (status, _) = app
        .backend("DELETE", "/v1/blueprints/Resource/entities/q1", None)
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn every_guardrail_names_the_input_and_the_rule() {
    let app = TestApp::spawn(&[]).await;
    let cases = [
        (
            "add-documentdb",
            Some("mailer"),
            json!({"instances": 9}),
            "`instances` must be at most 5 (got 9)",
        ),
        (
            "add-documentdb",
            Some("mailer"),
            json!({"instances": 0}),
            "`instances` must be at least 1 (got 0)",
        ),
        (
            "add-documentdb",
            Some("mailer"),
            json!({"instances": "3"}),
            "`instances` must be a number",
        ),
        (
            "add-documentdb",
            Some("mailer"),
            json!({"instances": 2, "instance_class": "huge"}),
            "`instance_class` must be one of: db.t3.medium, db.r6g.large, db.r6g.xlarge",
        ),
        (
            "add-documentdb",
            Some("mailer"),
            json!({"instances": 2, "colour": "red"}),
            "`colour` is not an input of this action",
        ),
        (
            "add-documentdb",
            Some("mailer"),
            json!({}),
            "`instances` is required",
        ),
        (
            "scaffold-service",
            None,
            json!({"name": "Bad Name", "system": "Cart"}),
            "`name` must match the pattern ^[a-z][a-z0-9-]{2,30}$",
        ),
        (
            "scaffold-service",
            None,
            json!({"name": "billing", "system": "Nowhere"}),
            "`system` must name an existing System entity (there is no `Nowhere`)",
        ),
    ];
    for (action, entity, properties, expected) in cases {
        let (status, body) = app
            .request_run(DEV, action, entity, properties.clone())
            .await;
        assert_eq!(
            status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{properties}: {body}"
        );
        assert_eq!(body["error"], "invalid_inputs");
        let message = body["message"].as_str().unwrap();
        assert!(
            message.contains(expected),
            "{properties}: expected `{expected}` in `{message}`"
        );
    }
    // Text inputs (the CLI, chat) are typed by the schema and checked the same way.
    let (status, body) = app
        .admin(
            "POST",
            "/v1/actions/add-documentdb/runs?run_as=dev@example.com",
            None,
            Some(json!({"entity": "mailer", "properties": {"instances": "three"}, "inputsAsText": true})),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(
        body["details"][0],
        json!({"input": "instances", "rule": "must be a number"})
    );

    let (status, body) = app
        .request_run(
            DEV,
            "add-documentdb",
            Some("mailr"),
            json!({"instances": 2}),
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("did you mean: mailer"),
        "{body}"
    );
    let (status, body) = app
        .request_run(DEV, "add-documentdb", None, json!({"instances": 2}))
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("name the Component entity"),
        "{body}"
    );
    let (status, body) = app
        .request_run(DEV, "add-docdb", Some("mailer"), json!({}))
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("did you mean: add-documentdb"),
        "{body}"
    );

    // Nothing was created by any refused request.
    let (_, body) = app.admin("GET", "/v1/actions/runs", None, None).await;
    assert_eq!(body["runs"], json!([]));
}

#[tokio::test]
async fn rbac_refuses_outsiders_self_approval_and_second_decisions() {
    let app = TestApp::spawn(&[]).await;
    let (status, body) = app
        .request_run(
            OUTSIDER,
            "add-documentdb",
            Some("mailer"),
            json!({"instances": 2}),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(body["error"], "not_permitted");

    let run = app
        .run_id(
            DEV,
            "add-documentdb",
            Some("mailer"),
            json!({"instances": 2}),
        )
        .await;
    let (status, body) = app.decide(DEV, &run, "APPROVE").await;
    assert_eq!(
        (status, body["error"].clone()),
        (StatusCode::FORBIDDEN, json!("self_approval"))
    );
    let (status, body) = app.decide(OUTSIDER, &run, "APPROVE").await;
    assert_eq!(
        (status, body["error"].clone()),
        (StatusCode::FORBIDDEN, json!("not_approver"))
    );
    assert_eq!(app.run(&run).await["status"], "WAITING_FOR_APPROVAL");

    // An ops engineer who requests a run may not approve it either.
    let own = app
        .run_id(
            OPS,
            "add-documentdb",
            Some("mailer"),
            json!({"instances": 2}),
        )
        .await;
    let (status, _) = app.decide(OPS, &own, "APPROVE").await;
    assert_eq!(status, StatusCode::FORBIDDEN);

    let (status, body) = app.decide(OPS, &run, "DECLINE").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["run"]["status"], "DECLINED");
    assert_eq!(body["run"]["approval"]["decisions"][0]["by"], OPS);
    let (status, body) = app.decide(OPS, &run, "APPROVE").await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert_eq!(
        body["message"],
        format!("run {run} was already declined by {OPS}")
    );
}

#[tokio::test]
async fn the_demo_runs_through_approval_a_command_and_updates_the_catalog() {
    let app = TestApp::spawn(&[]).await;
    let run = app
        .run_id(
            DEV,
            "add-documentdb",
            Some("mailer"),
            json!({"instances": 3}),
        )
        .await;
    let created = app.run(&run).await;
    assert_eq!(created["status"], "WAITING_FOR_APPROVAL");
    assert_eq!(created["requiredApproval"], json!({"type": "ANY"}));
    assert_eq!(
        created["properties"],
        json!({"instances": 3, "instance_class": "db.t3.medium", "engine_version": "5.0"})
    );
    assert_eq!(created["createdBy"], DEV);

    let (status, body) = app.decide(OPS, &run, "APPROVE").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let done = app.wait_for(&run, "SUCCESS").await;
    assert_eq!(
        done["affectedEntities"],
        json!([
            {"blueprint": "Resource", "identifier": "mailer-documentdb", "operation": "UPSERT"},
            {"blueprint": "Component", "identifier": "mailer", "operation": "UPSERT"}
        ])
    );
    let logs = app.log_lines(&run).await;
    assert!(
        logs.contains(&"instance mailer-documentdb-3: available".to_owned()),
        "{logs:?}"
    );
    assert_eq!(logs.last().unwrap(), "the command exited with code 0");

    let (_, resource) = app.entity("Resource", "mailer-documentdb").await;
    assert_eq!(resource["properties"]["instances"], 3);
    let (_, mailer) = app.entity("Component", "mailer").await;
    assert_eq!(
        mailer["relations"]["resources"],
        json!(["mailer-documentdb"])
    );

    // Day 2: the DocumentDB grows to 4 instances, the catalog follows.
    let day2 = app
        .run_id(
            DEV,
            "update-documentdb",
            Some("mailer-documentdb"),
            json!({"instances": 4}),
        )
        .await;
    assert_eq!(
        app.run(&day2).await["entity"]["properties"]["instances"],
        3,
        "the run keeps the old value"
    );
    app.decide(OPS, &day2, "APPROVE").await;
    app.wait_for(&day2, "SUCCESS").await;
    let (_, resource) = app.entity("Resource", "mailer-documentdb").await;
    assert_eq!(resource["properties"]["instances"], 4);
    assert_eq!(resource["properties"]["type"], "documentdb");

    // The event stream tells the whole story in order.
    let (_, body) = app
        .admin("GET", &format!("/v1/actions/runs/{run}/events"), None, None)
        .await;
    let kinds: Vec<&str> = body["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["type"].as_str().unwrap())
        .collect();
    assert_eq!(
        &kinds[..4],
        ["CREATED", "APPROVAL_REQUESTED", "DECIDED", "STARTED"]
    );
    assert_eq!(&kinds[kinds.len() - 2..], ["CATALOG_CHANGED", "ENDED"]);
    let (_, body) = app
        .admin(
            "GET",
            &format!("/v1/actions/runs/{run}/events?after=3"),
            None,
            None,
        )
        .await;
    assert_eq!(body["events"][0]["seq"], 4);
}

#[tokio::test]
async fn upsert_entity_actions_create_entities() {
    let app = TestApp::spawn(&[]).await;
    let run = app
        .run_id(
            DEV,
            "scaffold-service",
            None,
            json!({"name": "billing", "system": "Cart"}),
        )
        .await;
    let done = app.wait_for(&run, "SUCCESS").await;
    assert_eq!(done["affectedEntities"][0]["identifier"], "billing");
    let (_, body) = app
        .admin(
            "GET",
            "/v1/blueprints/Component/entities/billing",
            None,
            None,
        )
        .await;
    assert_eq!(
        body["entity"]["properties"],
        json!({"type": "service", "language": "rust"})
    );
    assert_eq!(body["entity"]["relations"]["system"], "Cart");
}

#[tokio::test]
async fn backends_report_and_ended_runs_are_immutable() {
    let app = TestApp::spawn(&[]).await;
    let run = app
        .run_id(
            DEV,
            "add-documentdb",
            Some("mailer"),
            json!({"instances": 1}),
        )
        .await;
    // While waiting for approval a backend cannot end it.
    let (status, body) = app
        .backend(
            "PATCH",
            &format!("/v1/actions/runs/{run}"),
            Some(json!({"status": "SUCCESS"})),
        )
        .await;
    assert_eq!(
        (status, body["error"].clone()),
        (StatusCode::CONFLICT, json!("invalid_transition"))
    );

    let (status, body) = app
        .backend(
            "PATCH",
            &format!("/v1/actions/runs/{run}"),
            Some(json!({"statusLabel": "queued", "link": ["https://ci.example.com/1"], "summary": "waiting"})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["run"]["link"], "https://ci.example.com/1");
    assert_eq!(body["run"]["statusLabel"], "queued");

    let (status, body) = app
        .backend(
            "POST",
            &format!("/v1/actions/runs/{run}/logs"),
            Some(json!({"message": "hello"})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    // An entity upserted on behalf of a run is recorded on it.
    let (status, body) = app
        .backend(
            "POST",
            &format!("/v1/blueprints/Resource/entities?upsert=true&run_id={run}"),
            Some(json!({"identifier": "queue-1", "properties": {"type": "rabbit-queue"}})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        app.run(&run).await["affectedEntities"],
        json!([{"blueprint": "Resource", "identifier": "queue-1", "operation": "UPSERT"}])
    );
    let (status, body) = app
        .backend(
            "PATCH",
            &format!("/v1/actions/runs/{run}"),
            Some(json!({"status": "CANCELLED"})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(body["run"]["endedAt"].is_string());

    for (method, path, payload) in [
        (
            "PATCH",
            format!("/v1/actions/runs/{run}"),
            json!({"status": "SUCCESS"}),
        ),
        (
            "PATCH",
            format!("/v1/actions/runs/{run}"),
            json!({"statusLabel": "again"}),
        ),
        (
            "POST",
            format!("/v1/actions/runs/{run}/logs"),
            json!({"message": "late"}),
        ),
        (
            "POST",
            format!("/v1/actions/runs/{run}/logs"),
            json!({"message": "late", "terminationStatus": "FAILURE"}),
        ),
    ] {
        let (status, body) = app.backend(method, &path, Some(payload)).await;
        assert_eq!(status, StatusCode::CONFLICT, "{body}");
        assert_eq!(body["error"], "run_ended");
    }
    let (status, body) = app.decide(OPS, &run, "APPROVE").await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert_eq!(app.log_lines(&run).await, vec!["hello"]);

    // Listing filters.
    let (_, body) = app
        .admin("GET", "/v1/actions/runs?active=true", None, None)
        .await;
    assert_eq!(body["runs"], json!([]));
    let (_, body) = app
        .admin(
            "GET",
            "/v1/actions/runs?entity=mailer&action=add-documentdb",
            None,
            None,
        )
        .await;
    assert_eq!(body["runs"][0]["id"], run);
    let (status, _) = app
        .admin("GET", "/v1/actions/runs?active=maybe", None, None)
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, _) = app
        .admin("GET", "/v1/actions/runs/r_doesnotexist", None, None)
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, body) = app
        .backend(
            "PATCH",
            &format!("/v1/actions/runs/{run}"),
            Some(json!({"status": 7})),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
}

/// Whatever goes wrong at the edge of /v1, the answer is the contract's JSON error.
#[tokio::test]
async fn malformed_requests_get_the_contracts_json_errors() {
    let app = TestApp::spawn(&[]).await;
    let runs = "/v1/actions/add-documentdb/runs";
    // (method, path, content type, body, status, error code)
    type Case<'a> = (&'a str, &'a str, &'a str, Vec<u8>, StatusCode, &'a str);
    let cases: Vec<Case> = vec![
        (
            "GET",
            "/v1/blueprints/%FF",
            "application/json",
            vec![],
            StatusCode::BAD_REQUEST,
            "bad_request",
        ),
        (
            "GET",
            "/v1/nothing-here",
            "application/json",
            vec![],
            StatusCode::NOT_FOUND,
            "not_found",
        ),
        (
            "PUT",
            "/v1/actions",
            "application/json",
            vec![],
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
        ),
        (
            "POST",
            runs,
            "text/plain",
            b"{}".to_vec(),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
        ),
        (
            "POST",
            runs,
            "application/json",
            vec![b' '; 3_000_000],
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
        ),
        (
            "POST",
            runs,
            "application/json",
            b"{".to_vec(),
            StatusCode::BAD_REQUEST,
            "bad_request",
        ),
    ];
    for (method, path, content_type, body, status, code) in cases {
        let (got, answer) = app.send_raw(method, path, content_type, body).await;
        assert_eq!(
            (got, &answer["error"]),
            (status, &json!(code)),
            "{method} {path}: {answer}"
        );
        assert_eq!(answer["ok"], false, "{answer}");
        assert!(
            answer["message"].as_str().is_some_and(|m| !m.is_empty()),
            "{answer}"
        );
    }
}

#[tokio::test]
async fn service_endpoints_answer() {
    let app = TestApp::spawn(&[]).await;
    let (status, body) = app.admin("GET", "/v1/actions", None, None).await;
    assert_eq!(status, StatusCode::OK);
    // The shipped actions: three, and the two GitOps ones of the worked example.
    assert_eq!(body["actions"].as_array().unwrap().len(), 5);
    let health = app
        .http
        .get(format!("{}/healthz", app.base))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), 200);
    // Methods of a client's own invention share one series.
    for invented in ["FOO1", "FOO2"] {
        let method = reqwest::Method::from_bytes(invented.as_bytes()).unwrap();
        app.http
            .request(method, format!("{}/healthz", app.base))
            .send()
            .await
            .unwrap();
    }
    app.run_id(
        DEV,
        "add-documentdb",
        Some("mailer"),
        json!({"instances": 1}),
    )
    .await;
    let metrics = app
        .http
        .get(format!("{}/metrics", app.base))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("portbot_runs_total{status=\"WAITING_FOR_APPROVAL\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("portbot_http_request_duration_seconds_bucket"),
        "{metrics}"
    );
    assert!(
        metrics.contains("route=\"/v1/actions/{action}/runs\""),
        "{metrics}"
    );
    assert!(!metrics.contains("FOO"), "{metrics}");
    assert!(metrics.contains("method=\"other\""), "{metrics}");
    // Disabled chat platforms have no endpoints.
    let slack = app
        .http
        .post(format!("{}/slack/commands", app.base))
        .send()
        .await
        .unwrap();
    assert_eq!(slack.status(), 404);
}
