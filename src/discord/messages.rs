//! Discord's messages: `message-templates/discord/*.hbs` render Discord message objects
//! (`content`, `embeds`, `components`, `allowed_mentions`) and modals.
//!
//! Every value is escaped for Discord's markdown (so user text cannot format, quote, or form
//! a mention such as `<@123>` or a masked link) and for a JSON string. Whatever a template
//! renders is then fitted to Discord's limits ([`fit`]): 2,000 characters of `content`, the
//! embed limits, and `allowed_mentions` that lets nothing ping unless a template names a user.

use std::path::Path;

use serde_json::{json, Value};

use crate::chat::messages::{json_escape_with, MessageError, Messages};

/// Characters of `content` in one message.
pub const CONTENT: usize = 2_000;
const EMBED_TITLE: usize = 256;
const EMBED_DESCRIPTION: usize = 4_096;
const EMBED_FIELDS: usize = 25;
const FIELD_NAME: usize = 256;
const FIELD_VALUE: usize = 1_024;
const EMBED_TOTAL: usize = 6_000;

/// Loads the Discord templates.
pub fn load(templates: &Path) -> Result<Messages, MessageError> {
    Messages::load(templates, "discord", markdown)
}

/// Escapes Discord markdown (each markup character gets a backslash), then for the inside of a
/// JSON string.
pub(crate) fn discord_json_escape(text: &str) -> String {
    json_escape_with(text, markdown)
}

/// Discord markdown's escapes: a backslash before each markup character. `_` is left alone:
/// identifiers (run ids, input names) carry it, also in `custom_id`s, and at worst it italicises.
fn markdown(c: char) -> Option<&'static str> {
    Some(match c {
        '\\' => "\\\\",
        '*' => "\\*",
        '~' => "\\~",
        '`' => "\\`",
        '|' => "\\|",
        '>' => "\\>",
        '<' => "\\<",
        '#' => "\\#",
        '[' => "\\[",
        ']' => "\\]",
        '@' => "\\@",
        _ => return None,
    })
}

/// Text inside a code block: nothing is markdown there but a closing fence, which is broken
/// up; then escaped for the inside of a JSON string (templates insert it with `{{{ }}}`).
pub(crate) fn code_block_json(text: &str) -> String {
    json_escape_with(&text.replace("```", "`\u{200b}``"), |_| None)
}

/// Fits a rendered message to Discord's limits, cutting text with a visible note, and makes
/// sure it pings nobody but the users its template names.
pub fn fit(message: &mut Value) {
    // `get_mut`, not indexing: indexing would add the keys as `null`, which Discord refuses.
    if let Some(content) = message.get_mut("content") {
        fit_text(content, CONTENT);
    }
    if let Some(embeds) = message.get_mut("embeds").and_then(Value::as_array_mut) {
        embeds.truncate(10);
        for embed in embeds {
            fit_embed(embed);
        }
    }
    if message.get("allowed_mentions").is_none() && message.is_object() {
        message["allowed_mentions"] = json!({"parse": []});
    }
}

/// Fits a rendered modal to Discord's limits (title and labels 45 characters, descriptions and
/// placeholders 100, values 4,000, at most 5 components).
pub fn fit_modal(modal: &mut Value) {
    fit_key(modal, "title", 45);
    if let Some(components) = modal.get_mut("components").and_then(Value::as_array_mut) {
        components.truncate(5);
        for label in components {
            fit_key(label, "label", 45);
            fit_key(label, "description", 100);
            if let Some(input) = label.get_mut("component") {
                fit_key(input, "placeholder", 100);
                fit_key(input, "value", 4_000);
            }
        }
    }
}

fn fit_embed(embed: &mut Value) {
    fit_key(embed, "title", EMBED_TITLE);
    fit_key(embed, "description", EMBED_DESCRIPTION);
    if let Some(fields) = embed.get_mut("fields").and_then(Value::as_array_mut) {
        fields.truncate(EMBED_FIELDS);
        for field in fields {
            fit_key(field, "name", FIELD_NAME);
            fit_key(field, "value", FIELD_VALUE);
        }
    }
    // All of an embed's text together: fields go from the end first, then the description
    // is cut.
    let total = |embed: &Value| {
        text_len(&embed["title"])
            + text_len(&embed["description"])
            + embed["fields"].as_array().map_or(0, |fields| {
                fields
                    .iter()
                    .map(|f| text_len(&f["name"]) + text_len(&f["value"]))
                    .sum()
            })
    };
    while total(embed) > EMBED_TOTAL {
        match embed.get_mut("fields").and_then(Value::as_array_mut) {
            Some(fields) if !fields.is_empty() => {
                fields.pop();
            }
            _ => break,
        }
    }
    let over = total(embed).saturating_sub(EMBED_TOTAL);
    if over > 0 {
        let room = text_len(&embed["description"]).saturating_sub(over);
        fit_key(embed, "description", room.max(1));
    }
}

fn text_len(value: &Value) -> usize {
    value.as_str().map_or(0, |t| t.chars().count())
}

/// Cuts `object[key]` to `max` characters, when it is there.
fn fit_key(object: &mut Value, key: &str, max: usize) {
    if let Some(value) = object.get_mut(key) {
        fit_text(value, max);
    }
}

fn fit_text(value: &mut Value, max: usize) {
    if let Some(text) = value.as_str() {
        if text.chars().count() > max {
            *value = json!(cut(text, max));
        }
    }
}

/// Text cut to `max` characters, its head kept and the cut said.
fn cut(text: &str, max: usize) -> String {
    const NOTE: &str = "… [cut]";
    let keep = max.saturating_sub(NOTE.chars().count());
    let mut kept: String = text.chars().take(keep).collect();
    kept.push_str(NOTE);
    kept
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_text_cannot_mention_or_format() {
        let escaped = discord_json_escape("<@123> @everyone **bold** [x](https://evil) \"q\"");
        let text: String = serde_json::from_str(&format!("\"{escaped}\"")).unwrap();
        assert!(!text.contains("<@123>"), "{text}");
        assert!(text.contains("\\@everyone"), "{text}");
        assert!(!text.contains("**"), "{text}");
    }

    #[test]
    fn messages_are_fitted_to_the_limits() {
        let mut message = json!({
            "content": "x".repeat(5_000),
            "embeds": [{"title": "t".repeat(300), "description": "d".repeat(5_000),
                        "fields": (0..30).map(|_| json!({"name": "n", "value": "v".repeat(2_000)})).collect::<Vec<_>>()}],
        });
        fit(&mut message);
        assert_eq!(
            message["content"].as_str().unwrap().chars().count(),
            CONTENT
        );
        assert!(message["content"].as_str().unwrap().ends_with("[cut]"));
        let embed = &message["embeds"][0];
        assert!(embed["fields"].as_array().unwrap().len() <= EMBED_FIELDS);
        assert!(text_len(&embed["title"]) <= EMBED_TITLE);
        let all: usize = text_len(&embed["title"])
            + text_len(&embed["description"])
            + embed["fields"]
                .as_array()
                .unwrap()
                .iter()
                .map(|f| text_len(&f["name"]) + text_len(&f["value"]))
                .sum::<usize>();
        assert!(all <= EMBED_TOTAL, "{all}");
        assert_eq!(message["allowed_mentions"], json!({"parse": []}));
    }
}
