//! Handlebars templates inside action definitions (webhook bodies, command arguments, entity
//! mappings), rendered over a run's context.
//!
//! Strings are rendered strictly (a missing value is an error, not an empty string) and without
//! HTML escaping, because the output is data, not a web page. A string that is exactly one
//! `{{path}}` keeps the type of the value it names, so `"{{inputs.instances}}"` renders to the
//! number 3, not the string "3", and mapped entity properties match their blueprint's types.

use std::sync::OnceLock;

use handlebars::Handlebars;
use serde_json::Value;

fn registry() -> &'static Handlebars<'static> {
    static REGISTRY: OnceLock<Handlebars<'static>> = OnceLock::new();
    REGISTRY.get_or_init(|| {
        let mut hb = Handlebars::new();
        hb.set_strict_mode(true);
        hb.register_escape_fn(handlebars::no_escape);
        hb
    })
}

/// A template that could not be rendered, with the template text for context.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("template `{template}`: {reason}")]
pub struct TemplateError {
    pub template: String,
    pub reason: String,
}

/// Checks a template's syntax without rendering it.
pub fn check_syntax(template: &str) -> Result<(), TemplateError> {
    handlebars::Template::compile(template)
        .map(|_| ())
        .map_err(|e| TemplateError {
            template: template.to_owned(),
            reason: e.to_string(),
        })
}

/// Renders one string template to text.
pub fn render_text(template: &str, context: &Value) -> Result<String, TemplateError> {
    if !is_template(template) {
        return Ok(template.to_owned());
    }
    registry()
        .render_template(template, context)
        .map_err(|e| TemplateError {
            template: template.to_owned(),
            reason: e.reason().to_string(),
        })
}

/// Whether `text` has anything to render; text without is used as it is.
pub fn is_template(text: &str) -> bool {
    text.contains("{{")
}

/// Renders every string inside a JSON value; keys are kept as they are.
pub fn render_value(value: &Value, context: &Value) -> Result<Value, TemplateError> {
    Ok(match value {
        Value::String(s) => match single_path(s).and_then(|path| lookup(context, path)) {
            Some(found) => found.clone(),
            None => Value::String(render_text(s, context)?),
        },
        Value::Array(items) => Value::Array(
            items
                .iter()
                .map(|v| render_value(v, context))
                .collect::<Result<_, _>>()?,
        ),
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(k, v)| Ok((k.clone(), render_value(v, context)?)))
                .collect::<Result<_, TemplateError>>()?,
        ),
        other => other.clone(),
    })
}

/// Checks the syntax of every string inside a JSON value.
pub fn check_value_syntax(value: &Value) -> Result<(), TemplateError> {
    match value {
        Value::String(s) => check_syntax(s),
        Value::Array(items) => items.iter().try_for_each(check_value_syntax),
        Value::Object(map) => map.values().try_for_each(check_value_syntax),
        _ => Ok(()),
    }
}

/// `"{{ inputs.instances }}"` -> `Some("inputs.instances")`.
fn single_path(s: &str) -> Option<&str> {
    let inner = s.strip_prefix("{{")?.strip_suffix("}}")?.trim();
    let is_path = !inner.is_empty()
        && inner
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    is_path.then_some(inner)
}

fn lookup<'a>(context: &'a Value, path: &str) -> Option<&'a Value> {
    path.split('.').try_fold(context, |v, key| match v {
        Value::Object(map) => map.get(key),
        Value::Array(items) => key.parse::<usize>().ok().and_then(|i| items.get(i)),
        _ => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn single_expressions_keep_their_type() {
        let ctx =
            json!({"inputs": {"instances": 3, "name": "db"}, "entity": {"identifier": "mailer"}});
        let out = render_value(
            &json!({"n": "{{inputs.instances}}", "id": "{{entity.identifier}}-{{inputs.name}}", "k": true}),
            &ctx,
        )
        .unwrap();
        assert_eq!(out, json!({"n": 3, "id": "mailer-db", "k": true}));
    }

    #[test]
    fn missing_values_are_errors_and_nothing_is_escaped() {
        let ctx = json!({"inputs": {"q": "a<b & \"c\""}});
        assert_eq!(render_text("{{inputs.q}}!", &ctx).unwrap(), "a<b & \"c\"!");
        assert!(render_text("{{inputs.missing}}!", &ctx).is_err());
        assert!(check_syntax("{{#if x}}").is_err());
    }
}
