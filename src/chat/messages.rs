//! Chat messages, rendered from `message-templates/<platform>/*.hbs` to the platform's JSON
//! (Slack's Block Kit, Discord's message objects), so a team can restyle them without touching
//! Rust.
//!
//! Every value is escaped on its way in by the platform's escape function: for its markup (so
//! user text can never become a mention or a link) and for a JSON string. Templates put values
//! only inside JSON strings; the result must parse, or rendering fails. The `truncate` helper
//! keeps user-influenced text inside the platform's limits.

use std::path::Path;

use handlebars::{handlebars_helper, Context, Handlebars};
use serde::de::IgnoredAny;
use serde_json::Value;

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

/// One platform's compiled templates.
pub struct Messages {
    registry: Handlebars<'static>,
}

#[derive(Debug, thiserror::Error)]
pub enum MessageError {
    #[error("message template {name}: {reason}")]
    Template { name: String, reason: String },
}

impl Messages {
    /// Loads every `*.hbs` in `<templates>/<platform>`, escaping values with `escape`; names
    /// are the file stems.
    pub fn load(
        templates: &Path,
        platform: &str,
        escape: fn(&str) -> String,
    ) -> Result<Messages, MessageError> {
        let mut registry = Handlebars::new();
        registry.set_strict_mode(true);
        registry.register_escape_fn(escape);
        registry.register_helper("truncate", Box::new(truncate));
        let dir = templates.join(platform);
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

    /// Renders a template to a JSON value.
    pub fn render(&self, name: &str, data: Value) -> Result<Value, MessageError> {
        let text = self.handlebars(name, data)?;
        serde_json::from_str(&text).map_err(|e| not_json(name, e))
    }

    /// Renders a template to JSON text, checked to parse: for an answer that goes out as it
    /// is, without being built into a value first.
    pub fn render_text(&self, name: &str, data: Value) -> Result<String, MessageError> {
        let text = self.handlebars(name, data)?;
        serde_json::from_str::<IgnoredAny>(&text).map_err(|e| not_json(name, e))?;
        Ok(text)
    }

    fn handlebars(&self, name: &str, data: Value) -> Result<String, MessageError> {
        // Owned data becomes the context as it is; a borrowed one would be copied.
        self.registry
            .render_with_context(name, &Context::from(data))
            .map_err(|e| MessageError::template(name, e.to_string()))
    }
}

fn not_json(name: &str, error: serde_json::Error) -> MessageError {
    MessageError::template(name, format!("did not render to JSON: {error}"))
}

impl MessageError {
    fn template(name: &str, reason: String) -> MessageError {
        MessageError::Template {
            name: name.to_owned(),
            reason,
        }
    }
}
