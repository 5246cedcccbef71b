//! Approval requests in `slack.approval_channel`: the `slack-approvals` outbox consumer posts
//! one for every run that waits for approval (whatever the run's origin), with `Approve` and
//! `Decline` buttons, and updates it when a decision is made: who decided, and the buttons gone
//! once the run is decided. Clicks arrive on `/slack/interactions` (see `interactions`).

use serde_json::{json, Value};

use super::thread::{card_data, Poster};
use crate::app::worker::Deliver;
use crate::app::{AppError, Consumer, Pending};
use crate::core::ids::RunId;
use crate::core::run::{ApprovalStatus, EventKind, Run};

/// The outbox consumer name of the approval requests.
pub const CONSUMER: &str = "slack-approvals";

pub fn consumer() -> Consumer {
    Consumer::new(CONSUMER, |_, kind| {
        matches!(
            kind,
            EventKind::ApprovalRequested { .. } | EventKind::Decided { .. }
        )
    })
}

#[derive(Clone)]
pub struct Approvals {
    pub poster: Poster,
    pub channel: String,
}

impl Deliver for Approvals {
    async fn deliver(&self, id: &RunId) -> Result<(), AppError> {
        let Pending {
            run,
            events,
            reference,
        } = self.poster.app.outbox_pending(CONSUMER, id)?;
        let mut posted = reference
            .as_ref()
            .and_then(|r| r["ts"].as_str().map(str::to_owned));
        for event in &events {
            let mut message = self
                .poster
                .render("approval_request", &request_data(&run))?;
            message["channel"] = json!(self.channel);
            match &posted {
                None => {
                    let answer = self.poster.post("chat.postMessage", &message).await?;
                    let ts = answer["ts"].as_str().unwrap_or_default().to_owned();
                    let reference = json!({"channel": self.channel, "ts": ts});
                    self.poster
                        .record(CONSUMER, id, event.seq, Some(reference))
                        .await?;
                    posted = Some(ts);
                }
                Some(ts) => {
                    message["ts"] = json!(ts);
                    self.poster.post("chat.update", &message).await?;
                    self.poster.record(CONSUMER, id, event.seq, None).await?;
                }
            }
        }
        Ok(())
    }
}

/// The run card's data, plus the decisions so far and whether the buttons still show.
fn request_data(run: &Run) -> Value {
    let mut data = card_data(run);
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
                "by": super::thread::mention(&d.by),
                "decision": d.decision,
                "description": d.description,
                "at": d.at.format("%Y-%m-%d %H:%M UTC").to_string(),
            })
        })
        .collect();
    data["decisions"] = json!(decisions);
    data
}
