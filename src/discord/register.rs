//! `portbot discord-register`: bulk-overwrites the application's commands with the one `/port`
//! command (CONTRACT §3), globally or, with `--guild`, in one guild (which takes effect at once).
//! The command is built with serenity's builder, so its shape is Discord's.

use reqwest::Method;
use serde_json::Value;
use serenity::all::{CommandOptionType, CreateCommand, CreateCommandOption};

use super::rest::{DiscordApi, DiscordApiError};

/// The `/port` command: `action` (required, autocompleted), `entity` (autocompleted) and
/// `inputs` (`key=value ...`).
pub fn command(name: &str) -> CreateCommand {
    let string = |name: &str, description: &str| {
        CreateCommandOption::new(CommandOptionType::String, name, description)
    };
    CreateCommand::new(name)
        .description("Run a self-service action of the developer portal")
        .add_option(
            string("action", "The action to run, or help, list, status")
                .required(true)
                .set_autocomplete(true),
        )
        .add_option(
            string(
                "entity",
                "The entity to run it on (or the run id for status)",
            )
            .set_autocomplete(true),
        )
        .add_option(
            string(
                "inputs",
                "Inputs as key=value, quoted when they have spaces",
            )
            .max_length(6000),
        )
}

/// Registers the command; returns Discord's answer (the registered commands).
pub async fn register(
    api: &DiscordApi,
    application_id: &str,
    guild: Option<&str>,
    name: &str,
) -> Result<Value, DiscordApiError> {
    let path = match guild {
        Some(guild) => format!("/applications/{application_id}/guilds/{guild}/commands"),
        None => format!("/applications/{application_id}/commands"),
    };
    let body = serde_json::to_value(vec![command(name)]).expect("commands serialise");
    api.request(Method::PUT, &path, Some(&body)).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_command_has_three_string_options_action_first() {
        let json = serde_json::to_value(command("port")).unwrap();
        assert_eq!(json["name"], "port");
        let options = json["options"].as_array().unwrap();
        let names: Vec<&str> = options
            .iter()
            .map(|o| o["name"].as_str().unwrap())
            .collect();
        assert_eq!(names, ["action", "entity", "inputs"]);
        assert!(options.iter().all(|o| o["type"] == 3));
        assert_eq!(options[0]["required"], true);
        assert_eq!(options[0]["autocomplete"], true);
    }
}
