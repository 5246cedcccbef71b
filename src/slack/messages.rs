//! Slack's messages: `message-templates/slack/*.hbs` render Block Kit JSON. Every value is
//! escaped for Slack's mrkdwn (`&`, `<`, `>`, so user text can never become `<!channel>` or a
//! link) and for a JSON string; templates keep text within Slack's limits (3,000 characters
//! per section) with `truncate`.

use std::path::Path;

use crate::chat::messages::{json_escape_with, shown_width, MessageError, Messages};

/// Loads the Slack templates.
pub fn load(templates: &Path) -> Result<Messages, MessageError> {
    Messages::load(templates, "slack", mrkdwn)
}

/// mrkdwn's escapes: the three characters Slack asks apps to escape.
fn mrkdwn(c: char) -> Option<&'static str> {
    match c {
        '&' => Some("&amp;"),
        '<' => Some("&lt;"),
        '>' => Some("&gt;"),
        _ => None,
    }
}

/// How long a character is in a message once escaped for mrkdwn (Slack's limits count that).
pub(crate) fn mrkdwn_width(c: char) -> usize {
    shown_width(mrkdwn, c)
}

/// Escapes text for mrkdwn, then for the inside of a JSON string.
pub(crate) fn slack_json_escape(text: &str) -> String {
    json_escape_with(text, mrkdwn)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// A run card's or approval request's data with `hostile` in every text a user can set.
    fn run_data(hostile: &str) -> serde_json::Value {
        let input = json!({"name": hostile, "value": hostile, "old": hostile});
        let decision = json!({"by": "<@U2>", "decision": "DECLINE", "description": hostile, "at": "2026-12-03 10:00 UTC"});
        json!({
            "run": {
                "id": "r_0123", "status": "SUCCESS", "statusLabel": hostile, "link": null,
                "createdBy": hostile, "action": {"identifier": "a", "title": hostile},
                "entity": {"identifier": hostile},
            },
            "requester": "<@U1>",
            "inputs": vec![input; 9],
            "more_inputs": 3,
            "decisions": vec![decision; 30],
            "pending": true,
            "error": hostile,
            "unreachable_channel": "<#C1>",
        })
    }

    #[test]
    fn hostile_text_stays_inert_and_valid() {
        let messages = load(Path::new("message-templates")).unwrap();
        for hostile in [
            "<!channel> ping",
            "quote \" and \\ backslash",
            "new\nline\ttab",
            "*bold* _it_ `code` ~strike~ <https://evil|click>",
            &"x".repeat(10_000),
            &"<".repeat(3_000),
            &"&".repeat(3_000),
        ] {
            let run_templates = [
                "run_card",
                "run_card_short",
                "approval_request",
                "approval_request_short",
            ];
            let rendered = [
                ("error", json!({"message": hostile})),
                ("working", json!({"command": "/port", "text": hostile})),
            ]
            .into_iter()
            .chain(run_templates.map(|t| (t, run_data(hostile))));
            for (template, data) in rendered {
                let out = messages.render(template, data).unwrap();
                let text = out.to_string();
                assert!(!text.contains("<!channel>"), "{template}: {text}");
                assert!(!text.contains("<https://evil"), "{template}: {text}");
                let blocks = out["blocks"].as_array().unwrap();
                assert!(blocks.len() <= 50, "{template}: too many blocks");
                for block in blocks {
                    let fields = block["fields"].as_array().into_iter().flatten();
                    let elements = block["elements"].as_array().into_iter().flatten();
                    let texts = [&block["text"]].into_iter().chain(fields).chain(elements);
                    for t in texts.filter_map(|t| t["text"].as_str()) {
                        let most = if block["fields"].is_array() {
                            2_000
                        } else {
                            3_000
                        };
                        assert!(t.chars().count() <= most, "{template}: a text too long");
                    }
                }
            }
        }
    }
}
