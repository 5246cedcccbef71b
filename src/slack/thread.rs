//! The run card and its thread: the `slack` outbox consumer.
//!
//! For a run requested in Slack it posts the run card in the channel (joining it, or falling
//! back to a direct message with the requester), then every later event as a reply in the
//! card's thread (log lines that come together share one message), and updates
//! the card to the run's current status. Each message's delivery is recorded before the next is
//! sent, so after a crash at most the message in flight is sent again. Posts keep each channel's
//! pace (`pace.rs`); while Slack rate-limits, the delivery waits as Slack asks; while it refuses
//! or cannot be reached, the run stays due and is retried with a backoff.

use serde_json::{json, Value};

use super::messages::{slack_json_escape, Messages};
use super::pace::Pace;
use super::web_api::{SlackApi, SlackApiError};
use crate::api::run_json;
use crate::app::worker::Deliver;
use crate::app::{App, AppError, Consumer, Delivery, Pending};
use crate::core::ids::{Identity, RunId};
use crate::core::run::{EventKind, Run, RunEvent};
use crate::core::schema::plain_text;

/// The outbox consumer name of the Slack thread delivery.
pub const CONSUMER: &str = "slack";

/// Characters of log text per message, under Slack's 3,000 per section.
const LOG_CHARS: usize = 2_800;
/// Input fields on a card (Slack allows 10 fields per section; one is the status).
const CARD_INPUTS: usize = 9;

/// Runs requested in a Slack channel get a card and a thread.
pub fn consumer() -> Consumer {
    Consumer::new(CONSUMER, |run, _| {
        run.origin == "SLACK" && run.channel.is_some()
    })
}

/// What posting to Slack from the outbox needs: the app, the Web API and the templates.
#[derive(Clone)]
pub struct Poster {
    pub app: App,
    pub api: SlackApi,
    pub messages: std::sync::Arc<Messages>,
    pub pace: Pace,
}

#[derive(Clone)]
pub struct Threads {
    pub poster: Poster,
}

impl Deliver for Threads {
    async fn deliver(&self, id: &RunId) -> Result<(), AppError> {
        let Pending {
            run,
            events,
            reference,
        } = self.poster.app.outbox_pending(CONSUMER, id)?;
        let Some(requested_in) = run.channel.clone().filter(|_| !events.is_empty()) else {
            return Ok(());
        };
        // Where the card went: the channel of the command, or a direct message (see `place_card`).
        let mut channel = reference
            .as_ref()
            .and_then(|r| r["channel"].as_str())
            .map_or(requested_in.clone(), str::to_owned);
        let mut card = reference
            .as_ref()
            .and_then(|r| r["card_ts"].as_str())
            .map(str::to_owned);
        let mut rest = events.as_slice();
        if card.is_none() {
            // The card stands for the run's creation (its first event).
            let (posted_in, ts) = self.place_card(&run, &requested_in).await?;
            channel = posted_in;
            let (first, others) = rest.split_first().expect("there are events");
            let reference = json!({"channel": channel, "card_ts": ts});
            self.poster
                .record(CONSUMER, id, first.seq, Some(reference))
                .await?;
            card = Some(ts);
            rest = others;
        }
        let card = card.expect("the card exists now");
        for group in group_for_thread(rest) {
            let mut message = self
                .poster
                .render("thread_reply", &reply_data(&run, group))?;
            message["channel"] = json!(channel);
            message["thread_ts"] = json!(card);
            self.poster.post("chat.postMessage", &message).await?;
            let seq = group.last().expect("groups are not empty").seq;
            self.poster.record(CONSUMER, id, seq, None).await?;
        }
        if !rest.is_empty() {
            let mut message = self.poster.render("run_card", &card_data(&run))?;
            message["channel"] = json!(channel);
            message["ts"] = json!(card);
            self.poster.post("chat.update", &message).await?;
        }
        Ok(())
    }
}

impl Threads {
    /// Posts the card in the channel of the command. When the bot is not in it, it joins (a
    /// public channel); when it cannot (a private channel, a DM), the card goes to the
    /// requester as a direct message that says how to invite the bot, so no run is left
    /// without a thread. Returns the channel and the card's `ts`.
    async fn place_card(&self, run: &Run, channel: &str) -> Result<(String, String), AppError> {
        let mut card = self.poster.render("run_card", &card_data(run))?;
        card["channel"] = json!(channel);
        self.poster.pace.slot(channel).await;
        let refusal = match self.poster.api.call("chat.postMessage", &card).await {
            Ok(answer) => return Ok((channel.to_owned(), ts_of(&answer))),
            Err(SlackApiError::Refused { error, .. })
                if error == "not_in_channel" || error == "channel_not_found" =>
            {
                error
            }
            Err(SlackApiError::RateLimited(_)) | Err(SlackApiError::Unreachable { .. }) => {
                // Paced and retried like any post.
                let answer = self.poster.post("chat.postMessage", &card).await?;
                return Ok((channel.to_owned(), ts_of(&answer)));
            }
            Err(error) => return Err(AppError::Delivery(error.to_string())),
        };
        if refusal == "not_in_channel"
            && self
                .poster
                .api
                .call("conversations.join", &json!({"channel": channel}))
                .await
                .is_ok()
        {
            let answer = self.poster.post("chat.postMessage", &card).await?;
            return Ok((channel.to_owned(), ts_of(&answer)));
        }
        let user = run
            .created_by
            .as_str()
            .strip_prefix("slack:")
            .unwrap_or_default();
        let opened = self
            .poster
            .post("conversations.open", &json!({"users": user}))
            .await?;
        let direct = opened["channel"]["id"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        let mut data = card_data(run);
        data["unreachable_channel"] =
            json!(if channel.chars().all(|c| c.is_ascii_alphanumeric()) {
                format!("<#{channel}>")
            } else {
                slack_json_escape(channel)
            });
        let mut card = self.poster.render("run_card", &data)?;
        card["channel"] = json!(direct);
        let answer = self.poster.post("chat.postMessage", &card).await?;
        Ok((direct, ts_of(&answer)))
    }
}

fn ts_of(answer: &Value) -> String {
    answer["ts"].as_str().unwrap_or_default().to_owned()
}

impl Poster {
    pub(super) fn render(&self, template: &str, data: &Value) -> Result<Value, AppError> {
        self.messages
            .render(template, data)
            .map_err(|e| AppError::Delivery(e.to_string()))
    }

    /// Calls Slack, waiting out rate limits as Slack asks.
    pub(super) async fn post(&self, method: &str, body: &Value) -> Result<Value, AppError> {
        if let ("chat.postMessage", Some(channel)) = (method, body["channel"].as_str()) {
            self.pace.slot(channel).await;
        }
        loop {
            match self.api.call(method, body).await {
                Ok(answer) => return Ok(answer),
                Err(SlackApiError::RateLimited(wait)) => tokio::time::sleep(wait).await,
                Err(error) => return Err(AppError::Delivery(error.to_string())),
            }
        }
    }

    /// Records a consumer's delivery up to `seq`, and its new reference if any.
    pub(super) async fn record(
        &self,
        consumer: &str,
        id: &RunId,
        seq: u64,
        reference: Option<Value>,
    ) -> Result<(), AppError> {
        let delivery = Delivery {
            seq,
            note: None,
            reference,
        };
        self.app.outbox_delivered(consumer, id, delivery).await
    }
}

/// A Slack mention for Slack users (`<@U123>`); anyone else by name, escaped.
pub(super) fn mention(who: &Identity) -> String {
    match who.as_str().strip_prefix("slack:") {
        Some(user) if !user.is_empty() && user.chars().all(|c| c.is_ascii_alphanumeric()) => {
            format!("<@{user}>")
        }
        _ => slack_json_escape(who.as_str()),
    }
}

pub(super) fn card_data(run: &Run) -> Value {
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
    json!({
        "run": run_json(run),
        "requester": mention(&run.created_by),
        "inputs": inputs,
        "more_inputs": run.properties.len().saturating_sub(CARD_INPUTS),
    })
}

/// Events as thread messages: consecutive log lines share one message (split to stay within
/// Slack's limits); every other event is a message of its own.
fn group_for_thread(events: &[RunEvent]) -> Vec<&[RunEvent]> {
    let mut groups = Vec::new();
    let mut start = 0;
    let mut chars = 0;
    for (i, event) in events.iter().enumerate() {
        let line = match &event.kind {
            EventKind::Log { message } => Some(message.chars().count().min(LOG_CHARS) + 1),
            _ => None,
        };
        let joins = i > start
            && matches!(events[i - 1].kind, EventKind::Log { .. })
            && line.is_some_and(|len| chars + len <= LOG_CHARS);
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

fn reply_data(run: &Run, group: &[RunEvent]) -> Value {
    let first = &group[0];
    let mut data = serde_json::to_value(first).expect("events serialise");
    if let EventKind::Log { .. } = first.kind {
        let lines: Vec<String> = group
            .iter()
            .filter_map(|e| match &e.kind {
                EventKind::Log { message } => Some(cut(message)),
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

/// One log line within the message limit, marked when cut.
fn cut(line: &str) -> String {
    if line.chars().count() <= LOG_CHARS {
        line.to_owned()
    } else {
        let mut kept: String = line.chars().take(LOG_CHARS - 20).collect();
        kept.push_str(" … [line cut]");
        kept
    }
}

#[cfg(test)]
mod tests {
    use super::*;
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
        let groups: Vec<Vec<u64>> = group_for_thread(&events)
            .iter()
            .map(|g| g.iter().map(|e| e.seq).collect())
            .collect();
        assert_eq!(groups, vec![vec![1], vec![2, 3, 4], vec![5]]);
        assert!(cut(&"y".repeat(10_000)).ends_with("[line cut]"));
    }
}
