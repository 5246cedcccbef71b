//! The form for missing inputs (CONTRACT §3): a Slack modal with one field per missing input,
//! in the element that fits its type (number input with its range, select for an enum,
//! checkboxes for a list of enum values, text otherwise), labelled with the input's title and
//! prefilled, for a DAY-2 action, with the entity's current value.
//!
//! What the command already said is kept in the store under a random key carried in the
//! modal's `private_metadata`, so a restart between opening and submitting loses nothing.

use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

use crate::core::action::Action;
use crate::core::schema::{plain_text, ValueKind, ValueSchema};

/// The modal's `callback_id`, to recognise its submissions.
pub const CALLBACK_ID: &str = "portbot_inputs";

/// What the form remembers between opening and submitting.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FormState {
    pub user: String,
    pub channel: String,
    pub action: String,
    pub entity: Option<String>,
    /// The inputs the command gave, as typed.
    pub given: Vec<(String, String)>,
}

/// The template data of the modal asking for `missing` inputs.
pub fn modal_data(
    action: &Action,
    missing: &[String],
    current: &Map<String, Value>,
    key: &str,
    entity: Option<&str>,
) -> Value {
    let fields: Vec<Value> = missing
        .iter()
        .filter_map(|name| {
            action
                .input(name)
                .map(|schema| field(name, schema, current.get(name)))
        })
        .collect();
    json!({
        "callback_id": CALLBACK_ID,
        "key": key,
        "action": action.title,
        "entity": entity,
        "fields": fields,
    })
}

fn field(name: &str, schema: &ValueSchema, current: Option<&Value>) -> Value {
    let enum_of = |s: &ValueSchema| {
        s.allowed
            .as_ref()
            .map(|a| a.iter().map(plain_text).collect::<Vec<_>>())
    };
    let initial = current.map(plain_text);
    let (kind, options) = match &schema.kind {
        ValueKind::Number { .. } => ("number", None),
        ValueKind::Array { items: Some(items) } if items.allowed.is_some() => {
            ("checkboxes", enum_of(items))
        }
        _ if schema.allowed.is_some() => ("select", enum_of(schema)),
        _ => ("text", None),
    };
    let initial_options: Vec<String> = match current {
        Some(Value::Array(items)) => items.iter().map(plain_text).collect(),
        _ => Vec::new(),
    };
    json!({
        "name": name,
        "label": schema.title.clone().unwrap_or_else(|| name.to_owned()),
        "hint": schema.description,
        "kind": kind,
        "decimal": matches!(schema.kind, ValueKind::Number { integer: false }),
        "min": schema.minimum.map(|m| m.to_string()),
        "max": schema.maximum.map(|m| m.to_string()),
        "options": options.map(|o| o.into_iter().take(100).collect::<Vec<_>>()),
        "initial": if kind == "checkboxes" { None } else { initial },
        "initial_options": initial_options,
    })
}

/// The values a `view_submission` carries, as text, by input name (PROTOCOL-NOTES §4 shapes).
pub fn submitted_values(state: &Value) -> Vec<(String, String)> {
    let Some(blocks) = state["values"].as_object() else {
        return Vec::new();
    };
    blocks
        .iter()
        .filter_map(|(input, actions)| {
            let element = actions.as_object()?.values().next()?;
            let text = match element["type"].as_str()? {
                "static_select" => element["selected_option"]["value"].as_str()?.to_owned(),
                "checkboxes" => element["selected_options"]
                    .as_array()?
                    .iter()
                    .filter_map(|o| o["value"].as_str())
                    .collect::<Vec<_>>()
                    .join(","),
                _ => element["value"].as_str()?.to_owned(),
            };
            Some((input.clone(), text))
        })
        .collect()
}
