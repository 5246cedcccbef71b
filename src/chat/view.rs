//! The template data of the messages every chat platform shows about a run: the run card, a
//! reply in its thread, and the approval request. Platforms differ only in how a person is
//! named (a mention) and in how much text fits in one message; both are passed in.

use serde_json::{json, Value};

use super::messages::fitting;
use crate::api::run_json;
use crate::core::ids::Identity;
use crate::core::run::{ApprovalStatus, EventKind, Run, RunEvent};
use crate::core::schema::plain_text;

/// Input fields shown on a card (Slack allows 10 fields per section; one is the status).
const CARD_INPUTS: usize = 9;

/// How a platform names a person in a message: a mention for its own users, the escaped
/// identity for anyone else.
pub type Mention = fn(&Identity) -> String;

/// The run card: the run, its requester and its inputs (old → new for a DAY-2 change).
pub fn card_data(run: &Run, mention: Mention) -> Value {
    let inputs: Vec<Value> = run
        .properties
        .iter()
        .take(CARD_INPUTS)
        .map(|(name, value)| {
            let old = run
                .entity
                .as_ref()
                .and_then(|e| e.properties.get(name))
                .filter(|old| *old != value)
                .map(plain_text);
            json!({"name": name, "value": plain_text(value), "old": old})
        })
        .collect();
    // Values built here are moved in: `json!` would copy each through its serializer (that was
    // two thirds of this function).
    let mut data = json!({
        "requester": mention(&run.created_by),
        "more_inputs": run.properties.len().saturating_sub(CARD_INPUTS),
    });
    data["run"] = run_json(run);
    data["inputs"] = Value::Array(inputs);
    data
}

/// Card data for updating the card at `card` (its stored reference): a card that went to the
/// requester instead keeps saying which channel it could not reach (`unreachable_channel`,
/// kept in the reference when it was placed).
pub fn card_update_data(mut data: Value, card: &Value) -> Value {
    if let Some(unreachable) = card.get("unreachable_channel") {
        data["unreachable_channel"] = unreachable.clone();
    }
    data
}

/// The approval request: the card's data, the decisions so far and whether the buttons show.
pub fn request_data(run: &Run, mention: Mention) -> Value {
    let mut data = card_data(run, mention);
    let approval = run.approval.as_ref();
    data["pending"] = json!(
        approval.is_some_and(|a| a.status == ApprovalStatus::Pending) && !run.status.is_ended()
    );
    let decisions: Vec<Value> = approval
        .map(|a| a.decisions.as_slice())
        .unwrap_or_default()
        .iter()
        .map(|d| {
            json!({
                "by": mention(&d.by),
                "decision": d.decision,
                "description": d.description,
                "at": d.at.format("%Y-%m-%d %H:%M UTC").to_string(),
            })
        })
        .collect();
    data["decisions"] = Value::Array(decisions);
    data
}

/// What a reply to a run command shows, kept small: it is rendered on the ack's path.
pub fn created_data(run: &Run, command: &str) -> Value {
    json!({
        "run": {
            "id": run.id,
            "status": run.status,
            "action": {"title": run.action.title},
            "entity": run.entity.as_ref().map(|e| json!({"identifier": e.identifier})),
        },
        "waiting": run.status == crate::core::run::RunStatus::WaitingForApproval,
        "command": command,
    })
}

/// How much log text one thread message holds: `chars` characters, each counted as long as
/// `width` says the message shows it (Slack's `<` is `&lt;` there: four).
#[derive(Debug, Clone, Copy)]
pub struct LogLimit {
    pub chars: usize,
    pub width: fn(char) -> usize,
}

impl LogLimit {
    fn width_of(&self, text: &str) -> usize {
        text.chars().map(self.width).sum()
    }
}

/// Every character counts one.
pub fn one_each(_: char) -> usize {
    1
}

/// Events as thread messages: consecutive log lines share one message of at most `limit`
/// of log text; every other event is a message of its own.
pub fn group_for_thread(events: &[RunEvent], limit: LogLimit) -> Vec<&[RunEvent]> {
    let mut groups = Vec::new();
    let mut start = 0;
    let mut chars = 0;
    for (i, event) in events.iter().enumerate() {
        let line = match &event.kind {
            EventKind::Log { message } => Some(limit.width_of(message).min(limit.chars) + 1),
            _ => None,
        };
        let joins = i > start
            && matches!(events[i - 1].kind, EventKind::Log { .. })
            && line.is_some_and(|len| chars + len <= limit.chars);
        if i > start && !joins {
            groups.push(&events[start..i]);
            start = i;
            chars = 0;
        }
        chars += line.unwrap_or(0);
    }
    if start < events.len() {
        groups.push(&events[start..]);
    }
    groups
}

/// One thread reply for a group of events (see [`group_for_thread`]).
pub fn reply_data(run: &Run, group: &[RunEvent], limit: LogLimit, mention: Mention) -> Value {
    let first = &group[0];
    let mut data = serde_json::to_value(first).expect("events serialise");
    if let EventKind::Log { .. } = first.kind {
        let lines: Vec<String> = group
            .iter()
            .filter_map(|e| match &e.kind {
                EventKind::Log { message } => Some(cut(message, limit)),
                _ => None,
            })
            .collect();
        data["text"] = json!(lines.join("\n"));
    }
    if let EventKind::Decided { by, .. } = &first.kind {
        data["by"] = json!(mention(by));
    }
    data["run"] = run_json(run);
    data["requester"] = json!(mention(&run.created_by));
    data
}

/// One log line within `limit`, keeping its head and tail (where a summary usually is) and
/// marking the cut.
fn cut(line: &str, limit: LogLimit) -> String {
    if limit.width_of(line) <= limit.chars {
        return line.to_owned();
    }
    const MARK: &str = " … [line cut] … ";
    let keep = limit.chars.saturating_sub(limit.width_of(MARK));
    let head: String = fitting(line.chars(), keep / 2, limit.width)
        .into_iter()
        .collect();
    let tail: String = fitting(line.chars().rev(), keep - keep / 2, limit.width)
        .into_iter()
        .rev()
        .collect();
    format!("{head}{MARK}{tail}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::ids::RunId;
    use chrono::Utc;

    fn log(seq: u64, message: &str) -> RunEvent {
        RunEvent {
            run_id: RunId::new(1, 1, 1),
            seq,
            at: Utc::now(),
            kind: EventKind::Log {
                message: message.into(),
            },
        }
    }

    #[test]
    fn log_lines_share_messages_within_the_limit() {
        let started = RunEvent {
            kind: EventKind::Started,
            ..log(1, "")
        };
        let long = "x".repeat(2_000);
        let events = vec![
            started,
            log(2, "a"),
            log(3, "b"),
            log(4, &long),
            log(5, &long),
        ];
        let groups: Vec<Vec<u64>> = group_for_thread(&events, limit(2_800))
            .iter()
            .map(|g| g.iter().map(|e| e.seq).collect())
            .collect();
        assert_eq!(groups, vec![vec![1], vec![2, 3, 4], vec![5]]);
    }

    #[test]
    fn a_long_line_keeps_its_head_and_tail() {
        let line = format!("start{}end", "y".repeat(10_000));
        let kept = cut(&line, limit(100));
        assert!(kept.chars().count() <= 100, "{kept}");
        assert!(kept.starts_with("start") && kept.ends_with("end"), "{kept}");
        assert!(kept.contains("[line cut]"));
    }

    fn limit(chars: usize) -> LogLimit {
        LogLimit {
            chars,
            width: one_each,
        }
    }

    #[test]
    fn lines_are_measured_as_the_message_shows_them() {
        let wide = LogLimit {
            chars: 100,
            width: |c| if c == '<' { 4 } else { 1 },
        };
        let line = format!("start{}end", "<".repeat(100));
        let kept = cut(&line, wide);
        assert!((96..=100).contains(&wide.width_of(&kept)), "{kept}");
        assert!(kept.starts_with("start") && kept.ends_with("end"), "{kept}");
        let events = vec![log(1, &"<".repeat(20)), log(2, &"<".repeat(20))];
        assert_eq!(group_for_thread(&events, wide).len(), 2, "80 + 80 > 100");
    }
}
