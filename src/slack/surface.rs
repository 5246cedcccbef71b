//! Slack as a delivery surface (see `chat::delivery`): the run card in the channel of the
//! command and replies in its thread (`thread_ts`), and approval requests in
//! `slack.approval_channel`, all through `chat.postMessage` / `chat.update`.
//!
//! When the bot is not in the channel of the command it joins (a public channel); when it
//! cannot (a private channel, a DM), the card goes to the requester as a direct message that
//! says how to invite the bot, so no run is left without a thread. It joins the approval
//! channel the same way; where it cannot, requests wait (retried) until it is invited, and the
//! log says so. Posts keep each channel's
//! pace (`pace.rs`); while Slack rate-limits, the delivery waits as Slack asks.
//!
//! `chat.update` has a limit of its own (Tier 3: about 50 a minute for the workspace), kept
//! by [`UpdateBudget`]. An approval request's update takes the budget's next slot (at once,
//! unless other approval requests spent it); a run card whose turn is further off than a second
//! lets its thread go on, waits in line, and is updated in its turn, to the run as it is then.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::time::Instant;

use serde_json::{json, Value};

use super::messages::{mrkdwn_width, slack_json_escape};
use super::web_api::{SlackApi, SlackApiError};
use crate::app::{App, AppError};
use crate::chat::delivery::{card_shows, updated_card};
use crate::chat::messages::{MessageText, Messages};
use crate::chat::pace::Pace;
use crate::chat::pace::Priority::{self, Bulk, Urgent};
use crate::chat::view::{card_data, card_update_data, reply_data, request_data, LogLimit};
use crate::chat::{CardUpdate, Surface};
use crate::core::ids::{Identity, RunId};
use crate::core::run::{Run, RunEvent};

/// What posting to Slack from the outbox needs: the app, the Web API and the templates.
#[derive(Clone)]
pub struct SlackSurface {
    pub app: App,
    pub api: SlackApi,
    pub messages: Arc<Messages>,
    pub pace: Pace,
    pub updates: UpdateBudget,
    /// Where approval requests go.
    pub approval_channel: String,
}

impl Surface for SlackSurface {
    const ORIGIN: &'static str = super::ORIGIN;
    const THREADS: &'static str = "slack";
    const APPROVALS: &'static str = "slack-approvals";
    /// Under Slack's 3,000 characters per section, as escaped for mrkdwn.
    const LOG_LIMIT: LogLimit = LogLimit {
        chars: 2_800,
        width: mrkdwn_width,
    };

    fn app(&self) -> &App {
        &self.app
    }

    async fn place_card(&self, run: &Run, channel: &str) -> Result<Value, AppError> {
        let card = self.render("run_card", card_data(run, mention))?;
        let shows = card_shows(card.as_str());
        let short = Short {
            template: "run_card",
            data: &|| card_data(run, mention),
        };
        if let Posted::Sent(answer) = self.post_in(channel, card, run, short).await? {
            return Ok(card_reference(channel, &answer, shows));
        }
        let user = run
            .created_by
            .as_str()
            .strip_prefix("slack:")
            .unwrap_or_default();
        let opened = self
            .post(
                "conversations.open",
                None,
                json!({"users": user}).to_string(),
            )
            .await?;
        let direct = opened["channel"]["id"].as_str().unwrap_or_default();
        let mut data = card_data(run, mention);
        data["unreachable_channel"] =
            json!(if channel.chars().all(|c| c.is_ascii_alphanumeric()) {
                format!("<#{channel}>")
            } else {
                slack_json_escape(channel)
            });
        let unreachable = data["unreachable_channel"].clone();
        let card = self.render("run_card", data.clone())?;
        let short = Short {
            template: "run_card",
            data: &|| data.clone(),
        };
        let shows = card_shows(card.as_str());
        let to = [("channel", &json!(direct))];
        let answer = self
            .call_or_shorter(POST, Some((direct, Urgent)), card, &to, run, short)
            .await
            .map_err(|error| AppError::Delivery(error.to_string()))?;
        let mut reference = card_reference(direct, &answer, shows);
        // Kept so that updates of the card still say why it is here.
        reference["unreachable_channel"] = unreachable;
        Ok(reference)
    }

    async fn reply(
        &self,
        card: &Value,
        run: &Run,
        group: &[RunEvent],
    ) -> Result<Option<Value>, AppError> {
        let in_thread = [
            ("channel", &card["channel"]),
            ("thread_ts", &card["card_ts"]),
        ];
        let paced_in = card["channel"].as_str().map(|channel| (channel, Bulk));
        let data = || reply_data(run, group, Self::LOG_LIMIT, mention);
        let message = self.render("thread_reply", data())?;
        let short = Short {
            template: "thread_reply",
            data: &data,
        };
        self.call_or_shorter(POST, paced_in, message, &in_thread, run, short)
            .await
            .map(|_| None)
            .map_err(|error| AppError::Delivery(error.to_string()))
    }

    async fn update_card(&self, card: &Value, run: &Run) -> Result<CardUpdate, AppError> {
        let data = card_update_data(card_data(run, mention), card);
        let message = self.render("run_card", data)?;
        let Some(updated) = updated_card(card, message.as_str()) else {
            self.updates.leave_line(&run.id);
            return Ok(CardUpdate::Shown);
        };
        match self.updates.card_turn(&run.id) {
            Turn::Soon(at) => tokio::time::sleep_until(at).await,
            Turn::Later(at) => return Ok(CardUpdate::NotBefore(at)),
        }
        let short = Short {
            template: "run_card",
            data: &|| card_update_data(card_data(run, mention), card),
        };
        self.update(message, run, short, &card["channel"], &card["card_ts"])
            .await?;
        Ok(CardUpdate::Updated(updated))
    }

    async fn post_request(&self, run: &Run) -> Result<Value, AppError> {
        let channel = &self.approval_channel;
        let message = self.render("approval_request", request_data(run, mention))?;
        let short = Short {
            template: "approval_request",
            data: &|| request_data(run, mention),
        };
        match self.post_in(channel, message, run, short).await? {
            Posted::Sent(answer) => Ok(json!({"channel": channel, "ts": answer["ts"]})),
            // Tried again with a backoff, so the request goes once the bot is invited.
            Posted::Barred(reason) => Err(AppError::Delivery(format!(
                "approval requests cannot be posted in slack.approval_channel `{channel}` \
                 ({reason}): invite the bot there with `/invite @portbot`"
            ))),
        }
    }

    async fn update_request(&self, request: &Value, run: &Run) -> Result<(), AppError> {
        let message = self.render("approval_request", request_data(run, mention))?;
        let short = Short {
            template: "approval_request",
            data: &|| request_data(run, mention),
        };
        tokio::time::sleep_until(self.updates.request_turn()).await;
        self.update(message, run, short, &request["channel"], &request["ts"])
            .await
    }
}

/// Slack's refusals of `chat.update` that no later try changes ([`AppError::MessageGone`]): the
/// message was deleted, is not the bot's, may no longer be edited, or its channel is gone or
/// archived.
const MESSAGE_GONE: [&str; 5] = [
    "message_not_found",
    "cant_update_message",
    "edit_window_closed",
    "channel_not_found",
    "is_archived",
];

/// Slack's refusals of a message as too long, which it has also given below its documented
/// limits (PROTOCOL-NOTES, seen in the wild): the message is then sent again in its template's
/// short version (`<template>_short`), which leaves out what can be long.
const TOO_LONG: [&str; 3] = ["msg_too_long", "msg_blocks_too_long", "invalid_blocks"];

/// Slack's error when it refused a message as too long ([`TOO_LONG`]).
fn too_long(error: &SlackApiError) -> Option<&str> {
    match error {
        SlackApiError::Refused { error, .. } if TOO_LONG.contains(&error.as_str()) => Some(error),
        _ => None,
    }
}

/// What a message's short version is rendered from, should Slack refuse the full one: the full
/// message's template (the short one is `<template>_short`, given Slack's `error` too) and how
/// to build its data again.
#[derive(Clone, Copy)]
struct Short<'a> {
    template: &'static str,
    data: &'a (dyn Fn() -> Value + Send + Sync),
}

const POST: &str = "chat.postMessage";

/// The key of `chat.update` in its [`UpdateBudget`]'s pace.
const UPDATES: &str = "chat.update";
/// A card update whose turn is at most this far off waits for it, ahead of the thread's replies.
const WAIT_FOR_UPDATE: Duration = Duration::from_secs(1);

/// A card first in line that has not come for its turn this long after it gives its place up
/// (its run was delivered late, or is no longer delivered here), so the line never stalls.
const MISSED_TURN: Duration = Duration::from_secs(10);

/// Slack's workspace-wide limit on `chat.update`, and the run cards in line for it.
///
/// Nothing is reserved ahead: a card takes a slot only when it is first in line and the slot is
/// at most [`WAIT_FOR_UPDATE`] off, and an approval request takes the next slot when it comes.
/// So cards are updated in the order they fell behind, an approval request puts each card in
/// line one turn back, and the budget is never overdrawn (slots reserved for waiting cards would
/// leave an approval request the choice of going behind all of them or past the budget).
#[derive(Clone)]
pub struct UpdateBudget {
    pace: Pace,
    /// The budget's time between two slots once its burst is spent.
    spacing: Duration,
    line: Arc<Mutex<VecDeque<InLine>>>,
}

/// A run whose card waits for its turn, and when it was last told that turn would be.
struct InLine {
    run: RunId,
    turn: Instant,
}

/// When a card's update may go.
enum Turn {
    /// At this time, close enough to wait for; the slot is taken.
    Soon(Instant),
    /// Not before this time; the card keeps its place in line.
    Later(Instant),
}

impl UpdateBudget {
    /// At most `per_minute` updates a minute, in bursts of up to as many; 0: no limit.
    pub fn new(per_minute: u32) -> UpdateBudget {
        let minute = Duration::from_secs(60);
        UpdateBudget {
            pace: Pace::new(Duration::ZERO).with_shared_budget(per_minute, minute),
            spacing: minute.checked_div(per_minute).unwrap_or_default(),
            line: Arc::default(),
        }
    }

    fn line(&self) -> MutexGuard<'_, VecDeque<InLine>> {
        self.line.lock().expect("update budget lock poisoned")
    }

    /// Takes the budget's next slot for an approval request's update, whose approvers watch it:
    /// when it may go. It goes ahead of the cards in line.
    fn request_turn(&self) -> Instant {
        self.pace.reserve(UPDATES)
    }

    /// The turn of the card of `run`: a slot taken when the card is first in line (or the line is
    /// empty) and the budget allows one within [`WAIT_FOR_UPDATE`]; else its place in line, kept
    /// however often the run is delivered meanwhile, and when its turn should come.
    fn card_turn(&self, run: &RunId) -> Turn {
        let mut line = self.line();
        let now = Instant::now();
        while line
            .front()
            .is_some_and(|first| first.turn + MISSED_TURN < now)
        {
            line.pop_front();
        }
        let place = line.iter().position(|card| &card.run == run);
        let ahead = place.unwrap_or(line.len());
        let free = self.pace.next_free(UPDATES).max(now);
        if ahead == 0 && free <= now + WAIT_FOR_UPDATE {
            if place.is_some() {
                line.pop_front();
            }
            return Turn::Soon(self.pace.reserve(UPDATES));
        }
        let turn = free + self.spacing * ahead as u32;
        match place {
            Some(place) => line[place].turn = turn,
            None => line.push_back(InLine {
                run: run.clone(),
                turn,
            }),
        }
        Turn::Later(turn)
    }

    /// The card of `run` needs no update (any more): it leaves the line, if it was in it.
    fn leave_line(&self, run: &RunId) {
        self.line().retain(|card| &card.run != run);
    }
}

/// What came of posting in a channel the bot may not be in.
enum Posted {
    /// Slack's answer to the post.
    Sent(Value),
    /// The bot may not post there and could not join (a private channel, a DM): Slack's reason.
    Barred(String),
}

/// Where a card went: its channel and `ts` (the thread's `thread_ts`), and what it shows.
fn card_reference(channel: &str, answer: &Value, shows: Value) -> Value {
    json!({"channel": channel, "card_ts": answer["ts"], "shows": shows})
}

impl SlackSurface {
    pub(super) fn render(&self, template: &str, data: Value) -> Result<MessageText, AppError> {
        self.messages
            .render_message(template, data)
            .map_err(|e| AppError::Delivery(e.to_string()))
    }

    /// Edits the message at `ts` in `channel` to show `message` (or its `short` version, see
    /// [`SlackSurface::call_or_shorter`]).
    async fn update(
        &self,
        message: MessageText,
        run: &Run,
        short: Short<'_>,
        channel: &Value,
        ts: &Value,
    ) -> Result<(), AppError> {
        let at = [("channel", channel), ("ts", ts)];
        match self
            .call_or_shorter("chat.update", None, message, &at, run, short)
            .await
        {
            Ok(_) => Ok(()),
            Err(SlackApiError::Refused { error, .. }) if MESSAGE_GONE.contains(&error.as_str()) => {
                Err(AppError::MessageGone(error))
            }
            Err(error) => Err(AppError::Delivery(error.to_string())),
        }
    }

    /// Posts a card or an approval request (urgent) in `channel`; where Slack says the bot is
    /// not in it, the bot joins (a public channel) and posts again.
    async fn post_in(
        &self,
        channel: &str,
        message: MessageText,
        run: &Run,
        short: Short<'_>,
    ) -> Result<Posted, AppError> {
        let to = json!(channel);
        let to = [("channel", &to)];
        let post =
            |message| self.call_or_shorter(POST, Some((channel, Urgent)), message, &to, run, short);
        let refusal = match post(message.clone()).await {
            Ok(answer) => return Ok(Posted::Sent(answer)),
            Err(SlackApiError::Refused { error, .. })
                if error == "not_in_channel" || error == "channel_not_found" =>
            {
                error
            }
            Err(error) => return Err(AppError::Delivery(error.to_string())),
        };
        let joined = refusal == "not_in_channel"
            && self
                .api
                .call("conversations.join", &json!({"channel": channel}))
                .await
                .is_ok();
        if !joined {
            return Ok(Posted::Barred(refusal));
        }
        post(message)
            .await
            .map(Posted::Sent)
            .map_err(|error| AppError::Delivery(error.to_string()))
    }

    /// Sends `message` with `method` (`chat.postMessage`, waiting for a slot in `paced_in`, or
    /// `chat.update`), with `fields` (its channel, its `ts` or `thread_ts`) added. Where Slack
    /// refuses it as too long, it goes once more in its `short` version. (A card that fits only
    /// short so costs two calls per update, the refused one outside the `UpdateBudget`.)
    async fn call_or_shorter(
        &self,
        method: &str,
        paced_in: Option<(&str, Priority)>,
        message: MessageText,
        fields: &[(&str, &Value)],
        run: &Run,
        short: Short<'_>,
    ) -> Result<Value, SlackApiError> {
        let with_fields = |message: MessageText| {
            let full = fields
                .iter()
                .fold(message, |m, (key, value)| m.with(key, value));
            full.into_string()
        };
        let refused = match self
            .call_paced(method, paced_in, with_fields(message))
            .await
        {
            Err(refused) if too_long(&refused).is_some() => refused,
            answer => return answer,
        };
        let error = too_long(&refused).unwrap_or_default();
        let mut data = (short.data)();
        data["error"] = json!(error);
        match self.render(&format!("{}_short", short.template), data) {
            Ok(short) => {
                tracing::warn!(run = %run.id, method, %error, "Slack refused a message as too long; its short version goes instead");
                self.call_paced(method, paced_in, with_fields(short)).await
            }
            Err(render) => {
                tracing::error!(run = %run.id, %render, "the short version of a message does not render");
                Err(refused)
            }
        }
    }

    /// Calls Slack, waiting out rate limits as Slack asks; a message posted to a channel
    /// (`paced_in`) first waits for that channel's next slot, which it keeps until answered.
    /// Cards and approval requests are urgent; thread replies are bulk (see `chat::pace`).
    async fn post(
        &self,
        method: &str,
        paced_in: Option<(&str, Priority)>,
        body: String,
    ) -> Result<Value, AppError> {
        self.call_paced(method, paced_in, body)
            .await
            .map_err(|error| AppError::Delivery(error.to_string()))
    }

    /// [`SlackSurface::post`], with Slack's refusal as it came, for a caller that acts on it.
    async fn call_paced(
        &self,
        method: &str,
        paced_in: Option<(&str, Priority)>,
        body: String,
    ) -> Result<Value, SlackApiError> {
        let _slot = match paced_in {
            Some((channel, priority)) => Some(self.pace.slot(channel, priority).await),
            None => None,
        };
        loop {
            match self.api.call_text(method, body.clone()).await {
                Err(SlackApiError::RateLimited(wait)) => tokio::time::sleep(wait).await,
                answer => return answer,
            }
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Three a minute (a slot every 20 s once the burst is spent), the burst spent by three cards.
    fn three_a_minute_spent() -> (UpdateBudget, Instant) {
        let budget = UpdateBudget::new(3);
        let start = Instant::now();
        for n in 0..3 {
            assert!(matches!(budget.card_turn(&run(n)), Turn::Soon(at) if at == start));
        }
        (budget, start)
    }

    fn run(n: u16) -> RunId {
        RunId::new(1, n, 0)
    }

    /// A card's turn, from `start`: `Ok` when its slot is taken, `Err` when it waits in line.
    fn turn_of(budget: &UpdateBudget, n: u16, start: Instant) -> Result<u64, u64> {
        match budget.card_turn(&run(n)) {
            Turn::Soon(at) => Ok((at - start).as_secs()),
            Turn::Later(at) => Err((at - start).as_secs()),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn cards_wait_in_line_without_taking_slots_and_an_approval_request_goes_first() {
        let (budget, start) = three_a_minute_spent();
        assert_eq!(turn_of(&budget, 3, start), Err(20));
        assert_eq!(turn_of(&budget, 4, start), Err(40));
        assert_eq!(
            turn_of(&budget, 3, start),
            Err(20),
            "a card keeps its place"
        );
        // The budget's next slot is still free: the request takes it, and the line moves back.
        assert_eq!(budget.request_turn() - start, Duration::from_secs(20));
        assert_eq!(turn_of(&budget, 4, start), Err(60));
        assert_eq!(turn_of(&budget, 3, start), Err(40));
        tokio::time::advance(Duration::from_secs(40)).await;
        assert_eq!(
            turn_of(&budget, 4, start),
            Err(60),
            "the second waits for the first"
        );
        assert_eq!(turn_of(&budget, 3, start), Ok(40));
        assert_eq!(turn_of(&budget, 4, start), Err(60));
        tokio::time::advance(Duration::from_millis(19_500)).await;
        assert_eq!(
            turn_of(&budget, 4, start),
            Ok(60),
            "within a second: waited for"
        );
        assert!(budget.line().is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn a_card_that_needs_no_update_leaves_the_line() {
        let (budget, start) = three_a_minute_spent();
        assert_eq!(turn_of(&budget, 3, start), Err(20));
        budget.leave_line(&run(3));
        assert_eq!(turn_of(&budget, 4, start), Err(20));
    }

    #[tokio::test(start_paused = true)]
    async fn a_card_that_misses_its_turn_gives_its_place_up() {
        let (budget, start) = three_a_minute_spent();
        assert_eq!(turn_of(&budget, 3, start), Err(20));
        assert_eq!(turn_of(&budget, 4, start), Err(40));
        tokio::time::advance(Duration::from_secs(25)).await;
        assert_eq!(
            turn_of(&budget, 4, start),
            Err(45),
            "the first may still come"
        );
        tokio::time::advance(Duration::from_secs(6)).await;
        assert_eq!(turn_of(&budget, 4, start), Ok(31));
        assert_eq!(
            turn_of(&budget, 3, start),
            Err(40),
            "back in line, at its end"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn without_a_budget_every_card_goes_at_once() {
        let budget = UpdateBudget::new(0);
        let start = Instant::now();
        for n in 0..100 {
            assert_eq!(turn_of(&budget, n, start), Ok(0));
        }
    }
}
