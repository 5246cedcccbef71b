//! Slack messages, rendered from `message-templates/slack/*.hbs` (Block Kit JSON), so a team can
//! restyle them without touching Rust.
//!
//! Every value is escaped twice on its way in: for Slack's mrkdwn (`&`, `<`, `>`, so user text
//! can never become `<!channel>` or a link) and for a JSON string. Templates put values only
//! inside JSON strings; the result must parse, or rendering fails. The `truncate` helper keeps
//! user-influenced text inside Slack's limits (3,000 characters per section).

use std::path::Path;

use handlebars::{handlebars_helper, Handlebars};
use serde::Serialize;
use serde_json::Value;

/// Escapes text for mrkdwn, then for the inside of a JSON string.
pub(crate) fn slack_json_escape(text: &str) -> String {
    let mrkdwn = text
        .replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;");
    let quoted = serde_json::to_string(&mrkdwn).expect("strings serialise");
    quoted[1..quoted.len() - 1].to_owned()
}

handlebars_helper!(truncate: |text: str, max: u64| {
    let max = max as usize;
    if text.chars().count() <= max {
        text.to_owned()
    } else {
        let mut cut: String = text.chars().take(max.saturating_sub(1)).collect();
        cut.push('…');
        cut
    }
});

/// The compiled Slack templates.
pub struct Messages {
    registry: Handlebars<'static>,
}

#[derive(Debug, thiserror::Error)]
pub enum MessageError {
    #[error("message template {name}: {reason}")]
    Template { name: String, reason: String },
}

impl Messages {
    /// Loads every `*.hbs` in `<templates>/slack`; names are the file stems.
    pub fn load(templates: &Path) -> Result<Messages, MessageError> {
        let mut registry = Handlebars::new();
        registry.set_strict_mode(true);
        registry.register_escape_fn(slack_json_escape);
        registry.register_helper("truncate", Box::new(truncate));
        let dir = templates.join("slack");
        let entries = std::fs::read_dir(&dir).map_err(|e| MessageError::Template {
            name: dir.display().to_string(),
            reason: e.to_string(),
        })?;
        for entry in entries.flatten() {
            let path = entry.path();
            if path.extension().is_some_and(|e| e == "hbs") {
                let name = path
                    .file_stem()
                    .unwrap_or_default()
                    .to_string_lossy()
                    .into_owned();
                registry.register_template_file(&name, &path).map_err(|e| {
                    MessageError::Template {
                        name: name.clone(),
                        reason: e.to_string(),
                    }
                })?;
            }
        }
        Ok(Messages { registry })
    }

    /// Renders a template to a Block Kit JSON value.
    pub fn render(&self, name: &str, data: &impl Serialize) -> Result<Value, MessageError> {
        let error = |reason: String| MessageError::Template {
            name: name.to_owned(),
            reason,
        };
        let text = self
            .registry
            .render(name, data)
            .map_err(|e| error(e.to_string()))?;
        serde_json::from_str(&text).map_err(|e| error(format!("did not render to JSON: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn hostile_text_stays_inert_and_valid() {
        let messages = Messages::load(Path::new("message-templates")).unwrap();
        for hostile in [
            "<!channel> ping",
            "quote \" and \\ backslash",
            "new\nline\ttab",
            "*bold* _it_ `code` ~strike~ <https://evil|click>",
            &"x".repeat(10_000),
        ] {
            let out = messages
                .render("error", &json!({"message": hostile}))
                .unwrap();
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
