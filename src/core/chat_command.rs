//! What a chat user asked for with `/port ...` (CONTRACT §3), the same for every platform:
//! `help`, `list [ENTITY]`, `status RUN_ID`, or `ACTION [ENTITY] [key=value ...]`.

use super::command_text::{self, CommandText};

/// A parsed `/port` command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChatCommand {
    Help,
    /// The actions the user may run, optionally those for one entity.
    List {
        entity: Option<String>,
    },
    Status {
        run: String,
    },
    Run {
        action: String,
        entity: Option<String>,
        inputs: Vec<(String, String)>,
    },
}

/// Why the text is not a command, in words for the user.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChatCommandError {
    #[error(transparent)]
    Syntax(#[from] command_text::ParseError),
    #[error("`status` needs a run id: status RUN_ID")]
    StatusWithoutRun,
    #[error("`{0}` takes no inputs")]
    UnexpectedInputs(&'static str),
    #[error(
        "`{extra}` is neither an entity nor key=value: the form is ACTION [ENTITY] [key=value ...]"
    )]
    TooManyWords { extra: String },
}

impl ChatCommand {
    /// Parses the text typed after the slash command. Empty text asks for help.
    pub fn parse(text: &str) -> Result<ChatCommand, ChatCommandError> {
        Self::from_text(command_text::parse(text)?)
    }

    pub fn from_text(text: CommandText) -> Result<ChatCommand, ChatCommandError> {
        let CommandText { words, inputs } = text;
        let mut words = words.into_iter();
        let first = words.next();
        let second = words.next();
        if let Some(extra) = words.next() {
            return Err(ChatCommandError::TooManyWords { extra });
        }
        let no_inputs = |name: &'static str| {
            if inputs.is_empty() {
                Ok(())
            } else {
                Err(ChatCommandError::UnexpectedInputs(name))
            }
        };
        match first.as_deref() {
            None | Some("help") if second.is_none() => {
                no_inputs("help")?;
                Ok(ChatCommand::Help)
            }
            Some("list") => {
                no_inputs("list")?;
                Ok(ChatCommand::List { entity: second })
            }
            Some("status") => {
                no_inputs("status")?;
                second
                    .map(|run| ChatCommand::Status { run })
                    .ok_or(ChatCommandError::StatusWithoutRun)
            }
            _ => Ok(ChatCommand::Run {
                action: first.unwrap_or_default(),
                entity: second,
                inputs,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn subcommands_and_runs() {
        assert_eq!(ChatCommand::parse("").unwrap(), ChatCommand::Help);
        assert_eq!(ChatCommand::parse("help").unwrap(), ChatCommand::Help);
        assert_eq!(
            ChatCommand::parse("list mailer").unwrap(),
            ChatCommand::List {
                entity: Some("mailer".into())
            }
        );
        assert_eq!(
            ChatCommand::parse("status r_1").unwrap(),
            ChatCommand::Status { run: "r_1".into() }
        );
        assert_eq!(
            ChatCommand::parse("add-documentdb mailer instances=3 name=\"my db\"").unwrap(),
            ChatCommand::Run {
                action: "add-documentdb".into(),
                entity: Some("mailer".into()),
                inputs: vec![
                    ("instances".into(), "3".into()),
                    ("name".into(), "my db".into())
                ],
            }
        );
        assert_eq!(
            ChatCommand::parse("status"),
            Err(ChatCommandError::StatusWithoutRun)
        );
        assert!(matches!(
            ChatCommand::parse("a b c"),
            Err(ChatCommandError::TooManyWords { .. })
        ));
    }

    proptest! {
        #[test]
        fn parse_never_panics(text in prop_oneof![
            any::<String>(),
            "((help|list|status|r_1|add-db|k=|=v|\"|'|\\\\|\u{201c}) ?){0,6}",
        ]) {
            let _ = ChatCommand::parse(&text);
        }
    }
}
