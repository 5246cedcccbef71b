//! `portbot slack-manifest --url BASE`: the Slack app manifest for this deployment, so a new
//! workspace is set up by pasting it at api.slack.com/apps ("From an app manifest").

use serde_json::{json, Value};

/// The bot scopes portbot uses: the slash command; posting and updating messages (also in
/// public channels it has not joined) and ephemeral refusals; joining a public channel where a
/// command was typed; and a direct message to the requester where it cannot post.
pub const BOT_SCOPES: &[&str] = &[
    "commands",
    "chat:write",
    "chat:write.public",
    "channels:join",
    "im:write",
];

/// The manifest for a bot reachable at `base` (e.g. `https://portbot.example.com`), or, with
/// `base` `None`, for Socket Mode (no public URL).
pub fn manifest(base: Option<&str>, command: &str) -> Value {
    let mut manifest = over_http(base.unwrap_or_default().trim_end_matches('/'), command);
    if base.is_none() {
        manifest["settings"]["socket_mode_enabled"] = json!(true);
        manifest["settings"]["interactivity"] = json!({"is_enabled": true});
        if let Some(command) = manifest["features"]["slash_commands"][0].as_object_mut() {
            command.remove("url");
        }
    }
    manifest
}

fn over_http(base: &str, command: &str) -> Value {
    json!({
        "_metadata": {"major_version": 1, "minor_version": 1},
        "display_information": {
            "name": "portbot",
            "description": "Self-service actions from your developer portal",
        },
        "features": {
            "bot_user": {"display_name": "portbot", "always_online": true},
            "slash_commands": [{
                "command": command,
                "url": format!("{base}/slack/commands"),
                "description": "Run a self-service action",
                "usage_hint": "ACTION [ENTITY] [key=value ...] | help | list | status RUN_ID",
                "should_escape": false,
            }],
        },
        "oauth_config": {"scopes": {"bot": BOT_SCOPES}},
        "settings": {
            "interactivity": {"is_enabled": true, "request_url": format!("{base}/slack/interactions")},
            "org_deploy_enabled": false,
            "socket_mode_enabled": false,
            "token_rotation_enabled": false,
        },
    })
}
