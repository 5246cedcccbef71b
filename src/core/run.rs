//! A run of an action and its state machine (CONTRACT §4).
//!
//! Every method takes `now` and returns the events the change produced; the caller numbers them
//! with [`Run::record`] and persists run and events together. Ended runs refuse every change.
//!
//! ```text
//! WAITING_FOR_APPROVAL --approve--> IN_PROGRESS --SUCCESS|FAILURE--> ended
//!          |--decline--> DECLINED          |--cancel--> CANCELLED
//!          `--cancel---> CANCELLED
//! ```

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::access::{Audience, Directory};
use super::action::{Action, ApprovalPolicy, Operation};
use super::catalog::Entity;
use super::ids::{ActionId, BlueprintId, EntityId, Identity, RunId};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum RunStatus {
    WaitingForApproval,
    InProgress,
    Success,
    Failure,
    Declined,
    Cancelled,
}

impl RunStatus {
    pub const ALL: [RunStatus; 6] = [
        RunStatus::WaitingForApproval,
        RunStatus::InProgress,
        RunStatus::Success,
        RunStatus::Failure,
        RunStatus::Declined,
        RunStatus::Cancelled,
    ];

    pub fn is_ended(self) -> bool {
        !matches!(self, RunStatus::WaitingForApproval | RunStatus::InProgress)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            RunStatus::WaitingForApproval => "WAITING_FOR_APPROVAL",
            RunStatus::InProgress => "IN_PROGRESS",
            RunStatus::Success => "SUCCESS",
            RunStatus::Failure => "FAILURE",
            RunStatus::Declined => "DECLINED",
            RunStatus::Cancelled => "CANCELLED",
        }
    }
}

impl std::str::FromStr for RunStatus {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        RunStatus::ALL
            .into_iter()
            .find(|st| st.as_str() == s)
            .ok_or_else(|| format!("`{s}` is not a run status"))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Decision {
    Approve,
    Decline,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum ApprovalStatus {
    Pending,
    Approved,
    Declined,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DecisionRecord {
    pub by: Identity,
    pub decision: Decision,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    #[serde(with = "crate::core::timestamp")]
    pub at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ApprovalState {
    pub policy: ApprovalPolicy,
    pub status: ApprovalStatus,
    pub decisions: Vec<DecisionRecord>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ActionRef {
    pub identifier: ActionId,
    pub title: String,
}

/// The entity a run acts on, with its properties as they were when the run was requested
/// (the "old" side of a DAY-2 change).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EntityRef {
    pub identifier: EntityId,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub title: Option<String>,
    pub properties: Map<String, Value>,
}

/// A catalog change a run made.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EntityChange {
    pub blueprint: BlueprintId,
    pub identifier: EntityId,
    pub operation: ChangeOperation,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum ChangeOperation {
    Upsert,
    Delete,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Run {
    pub id: RunId,
    pub status: RunStatus,
    pub status_label: Option<String>,
    pub link: Option<String>,
    pub summary: Option<String>,
    pub action: ActionRef,
    pub blueprint: BlueprintId,
    pub operation: Operation,
    pub entity: Option<EntityRef>,
    pub properties: Map<String, Value>,
    pub created_by: Identity,
    /// Where the request came from: `API`, `CLI`, `SLACK`, `DISCORD`.
    pub origin: String,
    /// The chat channel the request was typed in, where the run card goes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub channel: Option<String>,
    #[serde(with = "crate::core::timestamp")]
    pub created_at: DateTime<Utc>,
    #[serde(with = "crate::core::timestamp")]
    pub updated_at: DateTime<Utc>,
    #[serde(default, with = "crate::core::timestamp::option")]
    pub ended_at: Option<DateTime<Utc>>,
    pub approval: Option<ApprovalState>,
    pub affected_entities: Vec<EntityChange>,
    /// The sequence number of the run's newest event.
    pub last_seq: u64,
}

/// Something that happened to a run. Persisted with the run, then delivered from the outbox.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "SCREAMING_SNAKE_CASE")]
pub enum EventKind {
    Created,
    ApprovalRequested {
        policy: ApprovalPolicy,
    },
    #[serde(rename_all = "camelCase")]
    Decided {
        by: Identity,
        decision: Decision,
        description: Option<String>,
        /// Approvals still needed under an `ALL` policy; empty once decided.
        waiting_for: Vec<String>,
    },
    Started,
    Log {
        message: String,
    },
    #[serde(rename_all = "camelCase")]
    Updated {
        status_label: Option<String>,
        link: Option<String>,
        summary: Option<String>,
    },
    CatalogChanged {
        changes: Vec<EntityChange>,
    },
    #[serde(rename_all = "camelCase")]
    Ended {
        status: RunStatus,
    },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RunEvent {
    pub run_id: RunId,
    pub seq: u64,
    #[serde(with = "crate::core::timestamp")]
    pub at: DateTime<Utc>,
    #[serde(flatten)]
    pub kind: EventKind,
}

/// Why a run refused a change.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum RunError {
    #[error("run {id} has ended with {} and can no longer change", .status.as_str())]
    Ended { id: RunId, status: RunStatus },
    #[error("run {id} was already {} by {by}", past_tense(.decision))]
    AlreadyDecided {
        id: RunId,
        decision: Decision,
        by: Identity,
    },
    #[error("run {id} does not need approval")]
    NoApprovalNeeded { id: RunId },
    #[error("you already approved run {id}; it is waiting for {}", .waiting_for.join(", "))]
    AlreadyApprovedByYou { id: RunId, waiting_for: Vec<String> },
    #[error("{who} requested run {id} and may not decide on it")]
    SelfApproval { id: RunId, who: Identity },
    #[error("{who} is not an approver of `{action}`")]
    NotApprover { action: ActionId, who: Identity },
    #[error("run {id} is {} and cannot end with {}", .from.as_str(), .to.as_str())]
    BadTransition {
        id: RunId,
        from: RunStatus,
        to: RunStatus,
    },
}

fn past_tense(d: &Decision) -> &'static str {
    match d {
        Decision::Approve => "approved",
        Decision::Decline => "declined",
    }
}

/// Who may decide on a run: the action's approvers, resolved through the team directory.
pub struct ApprovalRules<'a> {
    pub approvers: &'a Audience,
    pub directory: &'a Directory,
    pub allow_self_approval: bool,
}

/// What a new run is made of.
pub struct NewRun<'a> {
    pub id: RunId,
    pub action: &'a Action,
    pub entity: Option<&'a Entity>,
    pub properties: Map<String, Value>,
    pub created_by: Identity,
    pub origin: String,
    pub channel: Option<String>,
}

impl Run {
    /// A new run: waiting for approval when the action needs it, else in progress at once.
    pub fn create(new: NewRun, now: DateTime<Utc>) -> (Run, Vec<EventKind>) {
        let approval = new.action.approval.map(|policy| ApprovalState {
            policy,
            status: ApprovalStatus::Pending,
            decisions: Vec::new(),
        });
        let (status, next) = match new.action.approval {
            Some(policy) => (
                RunStatus::WaitingForApproval,
                EventKind::ApprovalRequested { policy },
            ),
            None => (RunStatus::InProgress, EventKind::Started),
        };
        let run = Run {
            id: new.id,
            status,
            status_label: None,
            link: None,
            summary: None,
            action: ActionRef {
                identifier: new.action.identifier.clone(),
                title: new.action.title.clone(),
            },
            blueprint: new.action.blueprint.clone(),
            operation: new.action.operation,
            entity: new.entity.map(|e| EntityRef {
                identifier: e.identifier.clone(),
                title: e.title.clone(),
                properties: e.properties.clone(),
            }),
            properties: new.properties,
            created_by: new.created_by,
            origin: new.origin,
            channel: new.channel,
            created_at: now,
            updated_at: now,
            ended_at: None,
            approval,
            affected_entities: Vec::new(),
            last_seq: 0,
        };
        (run, vec![EventKind::Created, next])
    }

    fn refuse_if_ended(&self) -> Result<(), RunError> {
        if self.status.is_ended() {
            Err(RunError::Ended {
                id: self.id.clone(),
                status: self.status,
            })
        } else {
            Ok(())
        }
    }

    /// An approver's decision. The first decline, or the approval that completes the policy,
    /// decides; later decisions are refused with who decided.
    pub fn decide(
        &mut self,
        who: &Identity,
        decision: Decision,
        description: Option<String>,
        rules: &ApprovalRules,
        now: DateTime<Utc>,
    ) -> Result<Vec<EventKind>, RunError> {
        let id = self.id.clone();
        let Some(approval) = self.approval.as_mut() else {
            self.refuse_if_ended()?;
            return Err(RunError::NoApprovalNeeded { id });
        };
        if approval.status != ApprovalStatus::Pending {
            let decisive = approval
                .decisions
                .iter()
                .rev()
                .find(|d| {
                    approval.status != ApprovalStatus::Declined || d.decision == Decision::Decline
                })
                .expect("a decided approval has a decision");
            return Err(RunError::AlreadyDecided {
                id,
                decision: decisive.decision,
                by: decisive.by.clone(),
            });
        }
        if self.status.is_ended() {
            return Err(RunError::Ended {
                id,
                status: self.status,
            });
        }
        if who == &self.created_by && !rules.allow_self_approval {
            return Err(RunError::SelfApproval {
                id,
                who: who.clone(),
            });
        }
        if !rules.approvers.admits(who, rules.directory) {
            return Err(RunError::NotApprover {
                action: self.action.identifier.clone(),
                who: who.clone(),
            });
        }
        let approved_by = |decisions: &[DecisionRecord]| -> Vec<Identity> {
            decisions
                .iter()
                .filter(|d| d.decision == Decision::Approve)
                .map(|d| d.by.clone())
                .collect()
        };
        if decision == Decision::Approve && approved_by(&approval.decisions).contains(who) {
            let before = approved_by(&approval.decisions);
            return Err(RunError::AlreadyApprovedByYou {
                id,
                waiting_for: rules
                    .approvers
                    .unfilled_slots(&before.iter().collect::<Vec<_>>(), rules.directory),
            });
        }
        approval.decisions.push(DecisionRecord {
            by: who.clone(),
            decision,
            description: description.clone(),
            at: now,
        });
        let waiting_for = match (decision, approval.policy) {
            (Decision::Decline, _) | (Decision::Approve, ApprovalPolicy::Any) => Vec::new(),
            (Decision::Approve, ApprovalPolicy::All) => {
                let approvers = approved_by(&approval.decisions);
                rules
                    .approvers
                    .unfilled_slots(&approvers.iter().collect::<Vec<_>>(), rules.directory)
            }
        };
        let mut events = vec![EventKind::Decided {
            by: who.clone(),
            decision,
            description,
            waiting_for: waiting_for.clone(),
        }];
        match decision {
            Decision::Decline => {
                approval.status = ApprovalStatus::Declined;
                events.extend(self.end_as(RunStatus::Declined, now));
            }
            Decision::Approve if waiting_for.is_empty() => {
                approval.status = ApprovalStatus::Approved;
                self.status = RunStatus::InProgress;
                events.push(EventKind::Started);
            }
            Decision::Approve => {}
        }
        Ok(events)
    }

    /// A log line from the backend or from portbot itself.
    pub fn log(&mut self, message: String) -> Result<Vec<EventKind>, RunError> {
        self.refuse_if_ended()?;
        Ok(vec![EventKind::Log { message }])
    }

    /// Status label, link and summary, as reported by the backend.
    pub fn update(
        &mut self,
        status_label: Option<String>,
        link: Option<String>,
        summary: Option<String>,
    ) -> Result<Vec<EventKind>, RunError> {
        self.refuse_if_ended()?;
        if status_label.is_none() && link.is_none() && summary.is_none() {
            return Ok(Vec::new());
        }
        if status_label.is_some() {
            self.status_label.clone_from(&status_label);
        }
        if link.is_some() {
            self.link.clone_from(&link);
        }
        if summary.is_some() {
            self.summary.clone_from(&summary);
        }
        Ok(vec![EventKind::Updated {
            status_label,
            link,
            summary,
        }])
    }

    /// Ends the run: SUCCESS or FAILURE while in progress, CANCELLED while not yet ended.
    pub fn finish(
        &mut self,
        status: RunStatus,
        now: DateTime<Utc>,
    ) -> Result<Vec<EventKind>, RunError> {
        self.refuse_if_ended()?;
        let allowed = match status {
            RunStatus::Success | RunStatus::Failure => self.status == RunStatus::InProgress,
            RunStatus::Cancelled => true,
            RunStatus::WaitingForApproval | RunStatus::InProgress | RunStatus::Declined => false,
        };
        if !allowed {
            return Err(RunError::BadTransition {
                id: self.id.clone(),
                from: self.status,
                to: status,
            });
        }
        Ok(self.end_as(status, now))
    }

    fn end_as(&mut self, status: RunStatus, now: DateTime<Utc>) -> Vec<EventKind> {
        self.status = status;
        self.ended_at = Some(now);
        vec![EventKind::Ended { status }]
    }

    /// Numbers new events after the run's last one and stamps the run as updated.
    pub fn record(&mut self, kinds: Vec<EventKind>, now: DateTime<Utc>) -> Vec<RunEvent> {
        if !kinds.is_empty() {
            self.updated_at = now;
        }
        kinds
            .into_iter()
            .map(|kind| {
                self.last_seq += 1;
                RunEvent {
                    run_id: self.id.clone(),
                    seq: self.last_seq,
                    at: now,
                    kind,
                }
            })
            .collect()
    }

    /// The context templates in the action's definition are rendered over.
    pub fn template_context(&self, entity: Option<&Entity>) -> Value {
        serde_json::json!({
            "inputs": self.properties,
            "entity": EntityView(entity),
            "run": {"id": self.id},
            "action": {"identifier": self.action.identifier, "title": self.action.title},
            "trigger": {"by": {"user": self.created_by}, "operation": self.operation.as_str()},
        })
    }
}

/// A run's entity as templates and backends see it: its identifier, title (the identifier when
/// it has none), blueprint, properties and relations; an empty object when the run has none.
pub struct EntityView<'a>(pub Option<&'a Entity>);

impl Serialize for EntityView<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let Some(entity) = self.0 else {
            return serializer.serialize_map(Some(0))?.end();
        };
        let mut map = serializer.serialize_map(Some(5))?;
        map.serialize_entry("identifier", &entity.identifier)?;
        map.serialize_entry(
            "title",
            entity
                .title
                .as_deref()
                .unwrap_or(entity.identifier.as_str()),
        )?;
        map.serialize_entry("blueprint", &entity.blueprint)?;
        map.serialize_entry("properties", &entity.properties)?;
        map.serialize_entry("relations", &entity.relations)?;
        map.end()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::action::DefinitionContext;
    use crate::core::catalog::{Blueprint, Catalog};
    use serde_json::json;

    fn id(s: &str) -> Identity {
        Identity::try_from(s).unwrap()
    }

    fn setup(policy: &str) -> (Action, Directory) {
        let catalog = Catalog::new([Blueprint::parse(json!({"identifier": "Component"})).unwrap()]);
        let dir = Directory::new([
            ("devops".to_owned(), [id("ops1"), id("ops2")].into()),
            ("dba".to_owned(), [id("dba1")].into()),
        ]);
        let action = Action::parse(
            json!({"identifier": "a", "trigger": {"type": "self-service", "operation": "CREATE", "blueprintIdentifier": "Component"},
                   "invocationMethod": {"type": "COMMAND", "command": ["true"]},
                   "requiredApproval": {"type": policy},
                   "permissions": {"approve": {"teams": ["devops", "dba"]}}}),
            &DefinitionContext { catalog: &catalog, directory: &dir },
        )
        .unwrap();
        (action, dir)
    }

    fn new_run(action: &Action, by: &str) -> Run {
        Run::create(
            NewRun {
                id: RunId::new(1, 1, 1),
                action,
                entity: None,
                properties: Map::new(),
                created_by: id(by),
                origin: "API".into(),
                channel: None,
            },
            Utc::now(),
        )
        .0
    }

    #[test]
    fn any_policy_first_decision_wins() {
        let (action, dir) = setup("ANY");
        let rules = ApprovalRules {
            approvers: &action.permissions.approve,
            directory: &dir,
            allow_self_approval: false,
        };
        let mut run = new_run(&action, "ops1");
        assert_eq!(run.status, RunStatus::WaitingForApproval);
        assert!(matches!(
            run.decide(&id("ops1"), Decision::Approve, None, &rules, Utc::now()),
            Err(RunError::SelfApproval { .. })
        ));
        assert!(matches!(
            run.decide(&id("dev"), Decision::Approve, None, &rules, Utc::now()),
            Err(RunError::NotApprover { .. })
        ));
        let events = run
            .decide(&id("ops2"), Decision::Approve, None, &rules, Utc::now())
            .unwrap();
        assert_eq!(events.last(), Some(&EventKind::Started));
        assert_eq!(run.status, RunStatus::InProgress);
        let err = run
            .decide(&id("dba1"), Decision::Decline, None, &rules, Utc::now())
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "run r_0000000000010001000001 was already approved by ops2"
        );
    }

    #[test]
    fn all_policy_needs_every_team_and_a_decline_ends_it() {
        let (action, dir) = setup("ALL");
        let rules = ApprovalRules {
            approvers: &action.permissions.approve,
            directory: &dir,
            allow_self_approval: false,
        };
        let mut run = new_run(&action, "dev");
        let events = run
            .decide(&id("ops1"), Decision::Approve, None, &rules, Utc::now())
            .unwrap();
        assert!(
            matches!(&events[0], EventKind::Decided { waiting_for, .. } if waiting_for == &vec!["team dba".to_owned()])
        );
        assert!(matches!(
            run.decide(&id("ops1"), Decision::Approve, None, &rules, Utc::now()),
            Err(RunError::AlreadyApprovedByYou { .. })
        ));
        run.decide(&id("dba1"), Decision::Approve, None, &rules, Utc::now())
            .unwrap();
        assert_eq!(run.status, RunStatus::InProgress);

        let mut run = new_run(&action, "dev");
        run.decide(
            &id("dba1"),
            Decision::Decline,
            Some("too big".into()),
            &rules,
            Utc::now(),
        )
        .unwrap();
        assert_eq!(run.status, RunStatus::Declined);
        assert!(run.ended_at.is_some());
    }

    #[test]
    fn ended_runs_are_immutable() {
        let (action, _) = setup("ANY");
        let mut run = new_run(&action, "dev");
        assert!(matches!(
            run.finish(RunStatus::Success, Utc::now()),
            Err(RunError::BadTransition { .. })
        ));
        run.finish(RunStatus::Cancelled, Utc::now()).unwrap();
        assert!(matches!(run.log("x".into()), Err(RunError::Ended { .. })));
        assert!(matches!(
            run.update(Some("l".into()), None, None),
            Err(RunError::Ended { .. })
        ));
        assert!(matches!(
            run.finish(RunStatus::Failure, Utc::now()),
            Err(RunError::Ended { .. })
        ));
        let events = run.record(vec![EventKind::Created, EventKind::Started], Utc::now());
        assert_eq!(events.iter().map(|e| e.seq).collect::<Vec<_>>(), vec![1, 2]);
    }
}
