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
            for (template, data) in [
                ("error", json!({"message": hostile})),
                ("working", json!({"command": "/port", "text": hostile})),
            ] {
                let out = messages.render(template, data).unwrap();
                let text = out.to_string();
                assert!(!text.contains("<!channel>"), "{text}");
                assert!(!text.contains("<https://evil"), "{text}");
                for block in out["blocks"].as_array().unwrap() {
                    if let Some(t) = block["text"]["text"].as_str() {
                        assert!(t.chars().count() <= 3000, "section too long");
                    }
                }
            }
        }
    }
}
