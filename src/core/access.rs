//! Who may do what: teams map identities to membership, and an [`Audience`] (an action's
//! `execute` or `approve` permission) says which users and teams it admits.
//!
//! The same rules apply to a Slack user, a Discord user and an API client acting for a user.

use std::collections::{BTreeMap, BTreeSet};

use serde::Deserialize;

use super::ids::Identity;

/// Teams and their members, from the `teams` configuration.
#[derive(Debug, Clone, Default)]
pub struct Directory {
    teams: BTreeMap<String, BTreeSet<Identity>>,
}

impl Directory {
    pub fn new(teams: impl IntoIterator<Item = (String, BTreeSet<Identity>)>) -> Self {
        Directory {
            teams: teams.into_iter().collect(),
        }
    }

    pub fn has_team(&self, team: &str) -> bool {
        self.teams.contains_key(team)
    }

    pub fn is_member(&self, team: &str, who: &Identity) -> bool {
        self.teams.get(team).is_some_and(|m| m.contains(who))
    }
}

/// The users and teams a permission admits (Port's `{users, teams}`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct Audience {
    #[serde(default)]
    pub users: BTreeSet<Identity>,
    #[serde(default)]
    pub teams: BTreeSet<String>,
}

impl Audience {
    pub fn admits(&self, who: &Identity, directory: &Directory) -> bool {
        self.users.contains(who) || self.teams.iter().any(|t| directory.is_member(t, who))
    }

    pub fn is_empty(&self) -> bool {
        self.users.is_empty() && self.teams.is_empty()
    }

    /// The approvals an `ALL` policy needs: one from each listed user and one member of each
    /// listed team. Returns the slots that `approvers` have not filled yet.
    pub fn unfilled_slots(&self, approvers: &[&Identity], directory: &Directory) -> Vec<String> {
        let users = self
            .users
            .iter()
            .filter(|u| !approvers.contains(u))
            .map(|u| u.to_string());
        let teams = self
            .teams
            .iter()
            .filter(|t| !approvers.iter().any(|a| directory.is_member(t, a)))
            .map(|t| format!("team {t}"));
        users.chain(teams).collect()
    }
}

/// An action's permissions. `execute` absent means everyone may run it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Permissions {
    pub execute: Option<Audience>,
    pub approve: Audience,
}

impl Permissions {
    pub fn may_execute(&self, who: &Identity, directory: &Directory) -> bool {
        self.execute
            .as_ref()
            .is_none_or(|audience| audience.admits(who, directory))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(s: &str) -> Identity {
        Identity::try_from(s).unwrap()
    }

    #[test]
    fn teams_admit_their_members() {
        let dir = Directory::new([(
            "devops".to_owned(),
            [id("ops@example.com"), id("slack:U1")].into(),
        )]);
        let audience = Audience {
            users: [id("boss@example.com")].into(),
            teams: ["devops".to_owned()].into(),
        };
        assert!(audience.admits(&id("slack:U1"), &dir));
        assert!(audience.admits(&id("boss@example.com"), &dir));
        assert!(!audience.admits(&id("dev@example.com"), &dir));
        assert_eq!(
            audience.unfilled_slots(&[&id("slack:U1")], &dir),
            vec!["boss@example.com"]
        );
    }
}
