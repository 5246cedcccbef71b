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
