//! Definitions: the seed article's blueprints and entities load as they are, and `portbot check`
//! reports every problem with its file and field.

mod common;

use std::process::Command;

use portbot::core::catalog::{Blueprint, Catalog, Entity};
use serde_json::{json, Value};

/// The JSON blocks of the seed article, with its typographic quotes made straight.
fn seed_blocks() -> Option<Vec<Value>> {
    let dir = std::path::Path::new("../shared/seed");
    let file = std::fs::read_dir(dir).ok()?.next()?.ok()?.path();
    let text = std::fs::read_to_string(file)
        .ok()?
        .replace(['“', '”'], "\"");
    let mut blocks = Vec::new();
    let mut rest = text.as_str();
    while let Some(start) = rest.find("\n{") {
        let mut stream =
            serde_json::Deserializer::from_str(&rest[start + 1..]).into_iter::<Value>();
        match stream.next() {
            Some(Ok(value)) => {
                blocks.push(value);
                rest = &rest[start + 1 + stream.byte_offset()..];
            }
            _ => rest = &rest[start + 2..],
        }
    }
    Some(blocks)
}

#[test]
fn the_seed_blueprints_and_entities_load_as_they_are() {
    let Some(blocks) = seed_blocks() else {
        println!("skipped: ../shared/seed is not beside the repository");
        return;
    };
    let blueprints: Vec<Blueprint> = blocks
        .iter()
        .filter(|b| b.get("schema").is_some())
        .map(|b| Blueprint::parse(b.clone()).expect("a seed blueprint parses"))
        .collect();
    let names: Vec<&str> = blueprints.iter().map(|b| b.identifier.as_str()).collect();
    assert_eq!(names, ["Component", "Resource", "API", "Domain", "System"]);
    let mut catalog = Catalog::new(blueprints);
    // Entities without `blueprint` get it from where the article shows them.
    let blueprint_of = |e: &Value| match e["identifier"].as_str().unwrap() {
        "Orders" => "Domain",
        "Cart" | "Products" => "System",
        "cart-sql-sb" => "Resource",
        _ => "Component",
    };
    let mut count = 0;
    for block in blocks
        .iter()
        .filter(|b| b.get("identifier").is_some() && b.get("schema").is_none())
    {
        let mut entity = block.clone();
        if entity.get("blueprint").is_none() {
            entity["blueprint"] = json!(blueprint_of(block));
        }
        catalog.insert(serde_json::from_value::<Entity>(entity).expect("a seed entity parses"));
        count += 1;
    }
    assert_eq!(count, 9);
    let problems: Vec<String> = catalog
        .check_all()
        .iter()
        .map(|(e, err)| format!("{}: {err}", e.identifier))
        .collect();
    assert!(problems.is_empty(), "{problems:#?}");
}

#[test]
fn check_reports_every_problem_with_file_and_field() {
    let ok = Command::new(common::binary())
        .arg("check")
        .output()
        .unwrap();
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stdout)
    );
    assert!(String::from_utf8_lossy(&ok.stdout).starts_with("ok: 5 blueprints"));

    let broken = common::deployment(&[json!({
        "identifier": "broken",
        "trigger": {"type": "self-service", "operation": "DAY-3", "blueprintIdentifier": "Component",
            "userInputs": {"properties": {"n": {"type": "number", "minimum": 5, "maximum": 1}}}},
        "invocationMethod": {"type": "GITOPS"},
        "requiredApproval": true,
        "permissions": {"approve": {"teams": ["nobody"]}}
    })]);
    let catalog = broken.path().join("catalog");
    std::fs::write(
        catalog.join("entities/Component/bad.json"),
        r#"{"identifier": "bad", "properties": {"type": "daemon"}}"#,
    )
    .unwrap();
    std::fs::write(catalog.join("blueprints/oops.json"), "{ not json").unwrap();
    let out = Command::new(common::binary())
        .arg("check")
        .env("PORTBOT__CATALOG__PATH", &catalog)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    let action_file = catalog.join("actions/broken.json");
    for expected in [
        format!(
            "{}: not valid JSON",
            catalog.join("blueprints/oops.json").display()
        ),
        format!(
            "{}: properties.type: `bad` must be one of: service, library",
            catalog.join("entities/Component/bad.json").display()
        ),
        format!(
            "{}: trigger.operation: `DAY-3` is not one of CREATE, DAY-2, DELETE",
            action_file.display()
        ),
        format!(
            "{}: trigger.userInputs.properties.n.minimum: 5 is greater than maximum 1",
            action_file.display()
        ),
        format!(
            "{}: invocationMethod: missing field `provider`",
            action_file.display()
        ),
        format!(
            "{}: permissions.approve.teams: there is no team `nobody`",
            action_file.display()
        ),
    ] {
        assert!(
            text.contains(&expected),
            "expected `{expected}` in:\n{text}"
        );
    }
    // serve refuses to start on the same definitions.
    let serve = Command::new(common::binary())
        .arg("serve")
        .env("PORTBOT__CATALOG__PATH", &catalog)
        .env("PORTBOT__SERVER__BIND", "127.0.0.1:0")
        .env("PORTBOT__STORAGE__PATH", broken.path().join("db"))
        .output()
        .unwrap();
    assert!(!serve.status.success());
    assert!(String::from_utf8_lossy(&serve.stderr).contains("problem(s)"));
}

#[test]
fn the_slack_manifest_points_slack_at_this_bot() {
    let out = Command::new(common::binary())
        .args(["slack-manifest", "--url", "https://portbot.example.com/"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let manifest: Value = serde_json::from_slice(&out.stdout).unwrap();
    let command = &manifest["features"]["slash_commands"][0];
    assert_eq!(command["command"], "/port");
    assert_eq!(command["url"], "https://portbot.example.com/slack/commands");
    assert_eq!(
        manifest["settings"]["interactivity"]["request_url"],
        "https://portbot.example.com/slack/interactions"
    );
    assert_eq!(
        manifest["oauth_config"]["scopes"]["bot"],
        json!([
            "commands",
            "chat:write",
            "chat:write.public",
            "channels:join",
            "im:write"
        ])
    );
    let socket = Command::new(common::binary())
        .args(["slack-manifest", "--socket-mode"])
        .output()
        .unwrap();
    let socket: Value = serde_json::from_slice(&socket.stdout).unwrap();
    assert_eq!(socket["settings"]["socket_mode_enabled"], true);
    assert!(socket["features"]["slash_commands"][0].get("url").is_none());
    let plain = Command::new(common::binary())
        .args(["slack-manifest", "--url", "http://insecure"])
        .output()
        .unwrap();
    assert!(!plain.status.success());
}
