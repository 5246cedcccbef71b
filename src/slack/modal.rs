//! The Slack side of the form for missing inputs (see `chat::form`): the modal is rendered
//! from `input_modal.hbs` (one input block per missing input, `block_id` = its name), and its
//! submission's values are read back here.

use serde_json::Value;

/// The modal's `callback_id`, to recognise its submissions.
pub const CALLBACK_ID: &str = "portbot_inputs";

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

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use serde_json::json;

    use super::*;
    use crate::edge_input;

    const FIELDS: &[&str] = &["type", "value", "selected_option", "selected_options"];
    const WORDS: &[&str] = &["static_select", "checkboxes", "plain_text_input", "3"];

    #[test]
    fn each_element_kind_is_read() {
        let state = json!({"values": {
            "size": {"a": {"type": "static_select", "selected_option": {"value": "large"}}},
            "zones": {"a": {"type": "checkboxes", "selected_options": [{"value": "a"}, {"value": "b"}]}},
            "name": {"a": {"type": "plain_text_input", "value": "db"}},
        }});
        let mut read = submitted_values(&state);
        read.sort();
        let expected = [("name", "db"), ("size", "large"), ("zones", "a,b")];
        assert_eq!(read, expected.map(|(k, v)| (k.to_owned(), v.to_owned())));
    }

    proptest! {
        /// Submissions shaped as Slack's (`values.<input>.<action>`), with any element.
        #[test]
        fn submissions_never_panic(
            elements in prop::collection::vec((edge_input::text(), edge_input::json(FIELDS, WORDS)), 0..4),
        ) {
            let values: serde_json::Map<String, Value> = elements
                .into_iter()
                .map(|(input, element)| (input, json!({ "action": element })))
                .collect();
            let _ = submitted_values(&json!({ "values": values }));
        }
    }
}
