//! Typed identifiers: blueprints, entities, actions, runs and the people who act.
//!
//! Raw strings become one of these at the edge, so a function that wants an entity id cannot be
//! handed an action id by mistake.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Serialises a string newtype as its text. (serde's `into = "String"` would copy it into a new
/// `String` first: ids are written many times per run, and that was 2 % of a run's instructions.)
macro_rules! serialize_as_text {
    ($name:ident) => {
        impl Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.serialize_str(&self.0)
            }
        }
    };
}

/// Defines a string newtype for a catalog identifier (Port allows letters, digits and `-_.@`).
macro_rules! catalog_identifier {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Deserialize)]
        #[serde(try_from = "String")]
        pub struct $name(String);

        serialize_as_text!($name);

        impl $name {
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl TryFrom<String> for $name {
            type Error = InvalidIdentifier;
            fn try_from(raw: String) -> Result<Self, Self::Error> {
                check_identifier(&raw)?;
                Ok(Self(raw))
            }
        }

        impl TryFrom<&str> for $name {
            type Error = InvalidIdentifier;
            fn try_from(raw: &str) -> Result<Self, Self::Error> {
                Self::try_from(raw.to_owned())
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

catalog_identifier!(
    /// A blueprint's identifier, e.g. `Component`.
    BlueprintId
);
catalog_identifier!(
    /// An entity's identifier, unique within its blueprint, e.g. `mailer`.
    EntityId
);
catalog_identifier!(
    /// A self-service action's identifier, e.g. `add-documentdb`.
    ActionId
);

/// Why a string is not an identifier.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{0}` is not a valid identifier (use 1 to 100 letters, digits and - _ . @)")]
pub struct InvalidIdentifier(pub String);

fn check_identifier(raw: &str) -> Result<(), InvalidIdentifier> {
    let ok = !raw.is_empty()
        && raw.len() <= 100
        && raw
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '@'));
    if ok {
        Ok(())
    } else {
        Err(InvalidIdentifier(raw.to_owned()))
    }
}

/// A run's identifier: `r_`, the creation time, a per-process sequence number and a random part,
/// so that the store's key order is creation order.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Deserialize)]
#[serde(try_from = "String")]
pub struct RunId(String);

serialize_as_text!(RunId);

impl RunId {
    /// A new id for a run created at `millis` (Unix epoch milliseconds). `sequence` orders ids
    /// made in the same millisecond; `random` keeps ids from two processes apart.
    pub fn new(millis: u64, sequence: u16, random: u32) -> Self {
        Self(format!(
            "r_{millis:012x}{sequence:04x}{:06x}",
            random & 0xff_ffff
        ))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for RunId {
    type Error = InvalidIdentifier;
    fn try_from(raw: String) -> Result<Self, Self::Error> {
        let ok = raw.len() <= 64
            && raw.strip_prefix("r_").is_some_and(|rest| {
                !rest.is_empty() && rest.chars().all(|c| c.is_ascii_alphanumeric())
            });
        if ok {
            Ok(Self(raw))
        } else {
            Err(InvalidIdentifier(raw))
        }
    }
}

impl fmt::Display for RunId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Someone who acts: a portal user (`alice@example.com`), a chat user (`slack:U123`,
/// `discord:8123...`) or an API client acting for itself (`client:ci-bot`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Deserialize)]
#[serde(try_from = "String")]
pub struct Identity(String);

serialize_as_text!(Identity);

impl Identity {
    pub fn slack(user_id: &str) -> Self {
        Self(format!("slack:{user_id}"))
    }

    pub fn discord(user_id: &str) -> Self {
        Self(format!("discord:{user_id}"))
    }

    pub fn api_client(client_id: &str) -> Self {
        Self(format!("client:{client_id}"))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for Identity {
    type Error = InvalidIdentifier;
    fn try_from(raw: String) -> Result<Self, Self::Error> {
        let ok = !raw.is_empty()
            && raw.len() <= 200
            && !raw.chars().any(|c| c.is_whitespace() || c.is_control());
        if ok {
            Ok(Self(raw))
        } else {
            Err(InvalidIdentifier(raw))
        }
    }
}

impl TryFrom<&str> for Identity {
    type Error = InvalidIdentifier;
    fn try_from(raw: &str) -> Result<Self, Self::Error> {
        Self::try_from(raw.to_owned())
    }
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// FNV-1a: a small, fast hash that is the same in every process and version, for picking a
/// lock stripe and for naming a message so that it is not posted twice.
pub fn fnv1a(text: &str) -> u64 {
    text.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifiers_accept_port_characters_only() {
        assert!(EntityId::try_from("mailer-documentdb_1.x@y").is_ok());
        assert!(EntityId::try_from("").is_err());
        assert!(EntityId::try_from("has space").is_err());
        assert!(EntityId::try_from("a/b").is_err());
    }

    #[test]
    fn run_ids_sort_by_creation_time() {
        let earlier = RunId::new(1_700_000_000_000, 7, u32::MAX);
        let same_ms = RunId::new(1_700_000_000_000, 8, 0);
        let later = RunId::new(1_700_000_000_001, 0, 0);
        assert!(earlier < same_ms && same_ms < later);
        assert_eq!(RunId::try_from(earlier.to_string()), Ok(earlier));
        assert!(RunId::try_from("x_1".to_owned()).is_err());
    }
}
