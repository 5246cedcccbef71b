//! The interactions Discord posts to `/discord/interactions` (PROTOCOL-NOTES Discord §2–§3),
//! parsed at the edge into what portbot acts on. Unknown fields are ignored and missing ones
//! default, so a payload Discord extends tomorrow still parses (serenity's models are strict,
//! and its 0.12 modal model predates the Label component Discord now sends).

use serde::Deserialize;
use serde_json::Value;

use crate::core::chat_command::{ChatCommand, ChatCommandError};
use crate::core::command_text::{self, CommandText};

/// An interaction, by what it asks.
#[derive(Debug)]
pub enum Interaction {
    Ping,
    /// `/port` itself.
    Command(Invocation<CommandOptions>),
    /// The user is typing an option that autocompletes.
    Autocomplete(Invocation<CommandOptions>),
    /// A button was clicked.
    Button(Invocation<String>),
    /// A modal was submitted: its `custom_id` and its text inputs by `custom_id`.
    ModalSubmit(Invocation<(String, Vec<(String, String)>)>),
    /// Something portbot does not use (it is acknowledged).
    Other,
}

/// What every interaction other than a ping carries, and its data.
#[derive(Debug)]
pub struct Invocation<T> {
    pub id: String,
    pub token: String,
    pub user_id: String,
    pub channel_id: String,
    pub data: T,
}

/// The `/port` options: `action`, `entity`, `inputs`, and which one is being typed.
#[derive(Debug, Default)]
pub struct CommandOptions {
    pub action: Option<String>,
    pub entity: Option<String>,
    pub inputs: Option<String>,
    pub focused: Option<String>,
}

#[derive(Debug, thiserror::Error)]
#[error("not a Discord interaction: {0}")]
pub struct ParseError(String);

#[derive(Deserialize)]
struct Raw {
    #[serde(rename = "type")]
    kind: u8,
    #[serde(default)]
    id: String,
    #[serde(default)]
    token: String,
    #[serde(default)]
    channel_id: Option<String>,
    #[serde(default)]
    channel: Option<Value>,
    #[serde(default)]
    member: Option<Member>,
    #[serde(default)]
    user: Option<User>,
    #[serde(default)]
    data: Value,
}

#[derive(Deserialize)]
struct Member {
    user: User,
}

#[derive(Deserialize)]
struct User {
    id: String,
}

impl Interaction {
    /// An interaction from the body Discord posts.
    pub fn parse(body: &[u8]) -> Result<Interaction, ParseError> {
        serde_json::from_slice(body)
            .map_err(|e| ParseError(e.to_string()))
            .and_then(Interaction::from_raw)
    }

    /// An interaction from a gateway event's data.
    pub fn from_value(data: Value) -> Result<Interaction, ParseError> {
        serde_json::from_value(data)
            .map_err(|e| ParseError(e.to_string()))
            .and_then(Interaction::from_raw)
    }

    fn from_raw(raw: Raw) -> Result<Interaction, ParseError> {
        if raw.kind == 1 {
            return Ok(Interaction::Ping);
        }
        let user_id = raw
            .member
            .map(|m| m.user)
            .or(raw.user)
            .map(|u| u.id)
            .filter(|id| !id.is_empty() && id.chars().all(|c| c.is_ascii_digit()))
            .ok_or_else(|| ParseError("no user".into()))?;
        let channel_id = raw
            .channel_id
            .or_else(|| {
                raw.channel
                    .as_ref()
                    .and_then(|c| c["id"].as_str().map(str::to_owned))
            })
            .unwrap_or_default();
        let invocation = Invocation {
            id: raw.id,
            token: raw.token,
            user_id,
            channel_id,
            data: (),
        };
        let custom_id = raw.data["custom_id"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        Ok(match raw.kind {
            2 => Interaction::Command(invocation.with(CommandOptions::from_data(&raw.data))),
            4 => Interaction::Autocomplete(invocation.with(CommandOptions::from_data(&raw.data))),
            3 if raw.data["component_type"] == 2 => Interaction::Button(invocation.with(custom_id)),
            5 => {
                let values = text_inputs(&raw.data["components"]);
                Interaction::ModalSubmit(invocation.with((custom_id, values)))
            }
            _ => Interaction::Other,
        })
    }
}

impl Invocation<()> {
    fn with<T>(self, data: T) -> Invocation<T> {
        Invocation {
            id: self.id,
            token: self.token,
            user_id: self.user_id,
            channel_id: self.channel_id,
            data,
        }
    }
}

impl CommandOptions {
    fn from_data(data: &Value) -> CommandOptions {
        let mut options = CommandOptions::default();
        for option in data["options"].as_array().into_iter().flatten() {
            let value = option["value"].as_str().map(str::to_owned);
            let name = option["name"].as_str().unwrap_or_default();
            if option["focused"] == true {
                options.focused = Some(name.to_owned());
            }
            match name {
                "action" => options.action = value,
                "entity" => options.entity = value,
                "inputs" => options.inputs = value,
                _ => {}
            }
        }
        options
    }

    /// The command the options spell, as Slack's text would (CONTRACT §3): `action` is the
    /// first word, `entity` the second, and `inputs` only `key=value` pairs.
    pub fn command(&self) -> Result<ChatCommand, ChatCommandError> {
        let given = self.inputs.as_deref().unwrap_or_default();
        let CommandText { words, inputs } = command_text::parse(given)?;
        if let Some(stray) = words.into_iter().next() {
            return Err(ChatCommandError::TooManyWords { extra: stray });
        }
        let words = [&self.action, &self.entity]
            .into_iter()
            .flatten()
            .map(|w| w.trim().to_owned())
            .filter(|w| !w.is_empty())
            .collect();
        ChatCommand::from_text(CommandText { words, inputs })
    }
}

/// The text inputs of a submitted modal, in either shape Discord sends (PROTOCOL-NOTES Discord
/// §3): Label components (`{type: 18, component: {...}}`) or legacy Action Rows
/// (`{type: 1, components: [...]}`).
fn text_inputs(components: &Value) -> Vec<(String, String)> {
    let mut found = Vec::new();
    for top in components.as_array().into_iter().flatten() {
        let inner: Vec<&Value> = match top["type"].as_u64() {
            Some(18) => vec![&top["component"]],
            Some(1) => top["components"].as_array().into_iter().flatten().collect(),
            _ => vec![top],
        };
        for input in inner {
            if let (Some(id), Some(value)) = (input["custom_id"].as_str(), input["value"].as_str())
            {
                found.push((id.to_owned(), value.to_owned()));
            }
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use serde_json::json;

    use super::*;
    use crate::edge_input;

    const FIELDS: &[&str] = &[
        "type",
        "id",
        "token",
        "channel_id",
        "channel",
        "member",
        "user",
        "data",
        "custom_id",
        "component_type",
        "components",
        "component",
        "options",
        "name",
        "value",
        "focused",
    ];
    const WORDS: &[&str] = &[
        "123",
        "action",
        "entity",
        "inputs",
        "k=v",
        "k=\"",
        "approve:r_1",
        "inputs:abc",
        "reason:r_1",
    ];

    /// Everything the HTTP endpoint and the gateway read from an interaction before asking
    /// the app.
    fn read(parsed: Result<Interaction, ParseError>) {
        if let Ok(Interaction::Command(asked) | Interaction::Autocomplete(asked)) = parsed {
            let _ = asked.data.command();
        }
    }

    #[test]
    fn both_modal_shapes_are_read() {
        let label = json!([{"type": 18, "id": 1, "component": {"type": 4, "id": 2, "custom_id": "instances", "value": "3"}}]);
        let legacy = json!([{"type": 1, "components": [{"type": 4, "custom_id": "instances", "value": "3"}]}]);
        for shape in [label, legacy] {
            assert_eq!(text_inputs(&shape), vec![("instances".into(), "3".into())]);
        }
    }

    #[test]
    fn options_become_the_slack_command() {
        let options = CommandOptions {
            action: Some("add-documentdb".into()),
            entity: Some("mailer".into()),
            inputs: Some("instances=3 name=\"my db\"".into()),
            focused: None,
        };
        assert_eq!(
            options.command().unwrap(),
            ChatCommand::parse("add-documentdb mailer instances=3 name=\"my db\"").unwrap()
        );
        let stray = CommandOptions {
            action: Some("add-documentdb".into()),
            inputs: Some("mailer".into()),
            ..Default::default()
        };
        assert!(stray.command().is_err());
    }

    #[test]
    fn garbage_never_panics() {
        for body in [
            &b""[..],
            b"{}",
            b"[]",
            b"{\"type\":2}",
            b"{\"type\":3,\"member\":{\"user\":{\"id\":\"1\"}},\"data\":7}",
        ] {
            let _ = Interaction::parse(body);
        }
    }

    proptest! {
        #[test]
        fn interaction_bodies_never_panic(body in prop_oneof![
            any::<Vec<u8>>(),
            edge_input::json(FIELDS, WORDS).prop_map(|v| v.to_string().into_bytes()),
        ]) {
            read(Interaction::parse(&body));
        }

        /// Objects with a type and, mostly, a user, so the parse reaches `data` (the gateway's
        /// path).
        #[test]
        fn interaction_values_never_panic(
            kind in 0u8..7,
            user in prop_oneof![
                3 => "[0-9]{1,20}".prop_map(|id| json!({ "id": id })),
                1 => edge_input::json(FIELDS, WORDS),
            ],
            data in edge_input::json(FIELDS, WORDS),
        ) {
            let interaction = json!({"type": kind, "id": "1", "member": {"user": user}, "data": data});
            read(Interaction::from_value(interaction));
        }
    }
}
