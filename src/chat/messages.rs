//! Chat messages, rendered from `message-templates/<platform>/*.hbs` to the platform's JSON
//! (Slack's Block Kit, Discord's message objects), so a team can restyle them without touching
//! Rust.
//!
//! Every value is escaped on its way in for the platform's markup (each character by its
//! [`Markup`], so user text can never become a mention or a link) and for a JSON string.
//! Templates put values only inside JSON strings; the result must parse, or rendering fails.
//! The `truncate` helper keeps user-influenced text inside the platform's limits, counting each
//! character as long as its markup escape makes it (Slack's `<` is `&lt;`: four).

use std::path::Path;

use handlebars::{
    Context, Handlebars, Helper, HelperDef, RenderContext, RenderError, RenderErrorReason,
    ScopedJson,
};
use serde::de::IgnoredAny;
use serde_json::Value;

/// A platform's markup escapes: a character's replacement, or `None` to keep it.
pub type Markup = fn(char) -> Option<&'static str>;

/// How many characters `c` is once escaped by `markup`.
pub fn shown_width(markup: Markup, c: char) -> usize {
    markup(c).map_or(1, |replacement| replacement.chars().count())
}

/// The longest start of `chars` whose widths add up to at most `budget`.
pub fn fitting(
    chars: impl Iterator<Item = char>,
    mut budget: usize,
    width: impl Fn(char) -> usize,
) -> Vec<char> {
    chars
        .take_while(|c| match budget.checked_sub(width(*c)) {
            Some(left) => {
                budget = left;
                true
            }
            None => false,
        })
        .collect()
}

/// `{{truncate text max}}`: `text`, cut with `…` so that it is at most `max` characters once
/// escaped (the helper's result is escaped as any value is).
struct Truncate(Markup);

impl HelperDef for Truncate {
    fn call_inner<'reg: 'rc, 'rc>(
        &self,
        helper: &Helper<'rc>,
        _: &'reg Handlebars<'reg>,
        _: &'rc Context,
        _: &mut RenderContext<'reg, 'rc>,
    ) -> Result<ScopedJson<'rc>, RenderError> {
        let text = helper.param(0).and_then(|p| p.value().as_str());
        let max = helper.param(1).and_then(|p| p.value().as_u64());
        let (Some(text), Some(max)) = (text, max) else {
            return Err(RenderErrorReason::ParamTypeMismatchForName(
                "truncate",
                "text, max".into(),
                "str, u64".into(),
            )
            .into());
        };
        let max = usize::try_from(max).unwrap_or(usize::MAX);
        let width = |c: char| shown_width(self.0, c);
        if text.chars().map(width).sum::<usize>() <= max {
            return Ok(ScopedJson::Derived(Value::from(text)));
        }
        let mut cut: String = fitting(text.chars(), max.saturating_sub(1), width)
            .into_iter()
            .collect();
        cut.push('…');
        Ok(ScopedJson::Derived(Value::from(cut)))
    }
}

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
    /// Loads every `*.hbs` in `<templates>/<platform>`, escaping values for `markup` and JSON;
    /// names are the file stems.
    pub fn load(
        templates: &Path,
        platform: &str,
        markup: Markup,
    ) -> Result<Messages, MessageError> {
        let mut registry = Handlebars::new();
        registry.set_strict_mode(true);
        registry.register_escape_fn(move |text| json_escape_with(text, markup));
        registry.register_helper("truncate", Box::new(Truncate(markup)));
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

    /// Renders a template to a message object's text, to which fields can still be added.
    pub fn render_message(&self, name: &str, data: Value) -> Result<MessageText, MessageError> {
        let text = self.render_text(name, data)?;
        match text.trim_start().starts_with('{') {
            true => Ok(MessageText(text)),
            false => Err(MessageError::template(
                name,
                "did not render to a JSON object".into(),
            )),
        }
    }

    fn handlebars(&self, name: &str, data: Value) -> Result<String, MessageError> {
        // Owned data becomes the context as it is; a borrowed one would be copied.
        self.registry
            .render_with_context(name, &Context::from(data))
            .map_err(|e| MessageError::template(name, e.to_string()))
    }
}

/// A rendered message: the text of a JSON object, checked to parse. It goes out as it is, with
/// the fields only the sender knows (a channel, a thread) added to its end as text, so it is
/// never built into a value and written out again (that was a tenth of a Slack delivery).
#[derive(Debug, Clone)]
pub struct MessageText(String);

impl MessageText {
    /// The message with `key` set to `value`: added last, so it also wins over a field of the
    /// same name from the template, as it would in a value.
    pub fn with(mut self, key: &str, value: &Value) -> MessageText {
        // A parsed object's text ends in its closing brace, perhaps with whitespace after it.
        let closing = self.0.trim_end().len() - 1;
        self.0.truncate(closing);
        if !self.0.trim_end().ends_with('{') {
            self.0.push(',');
        }
        let mut out = std::mem::take(&mut self.0).into_bytes();
        serde_json::to_writer(&mut out, key).expect("strings serialise");
        out.push(b':');
        serde_json::to_writer(&mut out, value).expect("JSON values serialise");
        out.push(b'}');
        self.0 = String::from_utf8(out).expect("JSON is UTF-8");
        self
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn into_string(self) -> String {
        self.0
    }
}

/// `text` for the inside of a JSON string, each character first escaped for the platform's
/// markup by `markup` (its replacement, or `None` to keep it), in one pass. The JSON escapes
/// are serde_json's, so the result is what serialising the marked-up text would give.
pub fn json_escape_with(text: &str, markup: Markup) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    // Characters that stay as they are are copied in runs, not one by one.
    let mut kept = 0;
    for (at, c) in text.char_indices() {
        let replacement = markup(c);
        if replacement.is_none() && !needs_json_escape(c) {
            continue;
        }
        out.push_str(&text[kept..at]);
        kept = at + c.len_utf8();
        match replacement {
            Some(replacement) => replacement
                .chars()
                .for_each(|r| push_json_char(&mut out, r)),
            None => push_json_char(&mut out, c),
        }
    }
    out.push_str(&text[kept..]);
    out
}

fn needs_json_escape(c: char) -> bool {
    c < ' ' || c == '"' || c == '\\'
}

fn push_json_char(out: &mut String, c: char) {
    match c {
        '"' => out.push_str("\\\""),
        '\\' => out.push_str("\\\\"),
        '\n' => out.push_str("\\n"),
        '\r' => out.push_str("\\r"),
        '\t' => out.push_str("\\t"),
        '\u{8}' => out.push_str("\\b"),
        '\u{c}' => out.push_str("\\f"),
        c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
        c => out.push(c),
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

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    /// What escaping meant before it was one pass: mark up, then let serde_json quote it.
    fn reference(text: &str, markup: impl Fn(char) -> Option<&'static str>) -> String {
        let marked: String = text
            .chars()
            .map(|c| markup(c).map_or_else(|| c.to_string(), str::to_owned))
            .collect();
        let quoted = serde_json::to_string(&marked).unwrap();
        quoted[1..quoted.len() - 1].to_owned()
    }

    fn markup(c: char) -> Option<&'static str> {
        match c {
            '<' => Some("&lt;"),
            '*' => Some("\\*"),
            _ => None,
        }
    }

    #[test]
    fn fields_added_to_a_message_read_as_set_in_a_value() {
        let added = |text: &str| {
            let message = MessageText(text.to_owned())
                .with("channel", &json!("C1"))
                .with("ts", &json!("1.2"));
            serde_json::from_str::<Value>(&message.into_string()).unwrap()
        };
        assert_eq!(added("{}"), json!({"channel": "C1", "ts": "1.2"}));
        assert_eq!(added("\n{ }\n\n"), json!({"channel": "C1", "ts": "1.2"}));
        assert_eq!(
            added("{\"text\": \"a}\", \"channel\": \"template's\"}\n"),
            json!({"text": "a}", "channel": "C1", "ts": "1.2"}),
            "the sender's field wins"
        );
    }

    proptest! {
        #[test]
        fn one_pass_escaping_gives_what_serde_json_gives(text in "(?s).{0,40}|[\\x00-\\x1f\"\\\\<*a]{0,20}") {
            prop_assert_eq!(json_escape_with(&text, markup), reference(&text, markup));
            prop_assert_eq!(json_escape_with(&text, |_| None), reference(&text, |_| None));
        }
    }
}
