//! The two outbox consumers every chat platform runs, written once over a [`Surface`]:
//!
//! - [`Threads`]: for a run requested on the platform, the run card where it was requested,
//!   then every later event as a reply in the card's thread (log lines that come together share
//!   one message), the card first updated to the run's current status (a card this delivery
//!   places shows it already), or after them in its turn where the platform limits updates
//!   apart from posts (see [`CardUpdate::NotBefore`]);
//! - [`Approvals`]: for every run that waits for approval, whatever its origin, a request with
//!   `Approve` / `Decline` buttons in the platform's approval channel, updated after each decision.
//!
//! Each message's delivery is recorded before the next is sent, so after a crash at most the
//! message in flight is sent again. A surface waits out rate limits itself; any other failure
//! leaves the run due, and the worker tries again with a backoff, except a card or request the
//! platform will never edit again ([`AppError::MessageGone`]): it is left as it is (a card's
//! reference keeps why, under `gone`), and the thread goes on.

use std::future::Future;

use serde_json::Value;
use tokio::time::Instant;

use super::view::{group_for_thread, LogLimit};
use crate::app::worker::Deliver;
use crate::app::{App, AppError, Consumer, Delivery, Pending};
use crate::core::ids::RunId;
use crate::core::run::{EventKind, Run, RunEvent};

/// A chat platform, as the delivery consumers see it. References are the platform's own
/// JSON (where a card or request was posted); they are stored with the consumer's cursor.
pub trait Surface: Clone + Send + Sync + 'static {
    /// The origin of runs requested on this platform (`"SLACK"`, `"DISCORD"`).
    const ORIGIN: &'static str;
    /// The outbox consumer names of the thread and approval deliveries.
    const THREADS: &'static str;
    const APPROVALS: &'static str;
    /// Log text in one thread message.
    const LOG_LIMIT: LogLimit;

    fn app(&self) -> &App;

    /// Posts the run card for a run requested in `channel`; returns where it went.
    fn place_card(
        &self,
        run: &Run,
        channel: &str,
    ) -> impl Future<Output = Result<Value, AppError>> + Send;

    /// Posts one reply (events grouped by [`group_for_thread`]) in the card's thread; returns
    /// what to keep about the card instead, when that changed (a thread it started).
    fn reply(
        &self,
        card: &Value,
        run: &Run,
        group: &[RunEvent],
    ) -> impl Future<Output = Result<Option<Value>, AppError>> + Send;

    /// Shows the run's current state on its card, unless the card shows it already (see
    /// [`updated_card`]) or the platform allows no update yet.
    fn update_card(
        &self,
        card: &Value,
        run: &Run,
    ) -> impl Future<Output = Result<CardUpdate, AppError>> + Send;

    /// Posts the approval request; returns where it went.
    fn post_request(&self, run: &Run) -> impl Future<Output = Result<Value, AppError>> + Send;

    /// Shows the decisions so far on the request (the buttons go once the run is decided).
    fn update_request(
        &self,
        request: &Value,
        run: &Run,
    ) -> impl Future<Output = Result<(), AppError>> + Send;
}

/// What came of bringing a run card up to date.
#[derive(Debug)]
pub enum CardUpdate {
    /// The card shows the run as it is.
    Shown,
    /// The card was updated: what to keep about it now.
    Updated(Value),
    /// The card needs an update that the platform allows only from then (Slack limits
    /// `chat.update` apart from posts); the turn is held for this run until then.
    NotBefore(Instant),
}

/// The outbox registration of a platform's thread delivery: runs requested in one of its
/// channels.
pub fn threads_consumer<S: Surface>() -> Consumer {
    Consumer::new(S::THREADS, requested_on::<S>)
}

fn requested_on<S: Surface>(run: &Run, _: &EventKind) -> bool {
    run.origin == S::ORIGIN && run.channel.is_some()
}

/// The outbox registration of a platform's approval requests.
pub fn approvals_consumer<S: Surface>() -> Consumer {
    Consumer::new(S::APPROVALS, |_, kind| {
        matches!(
            kind,
            EventKind::ApprovalRequested { .. } | EventKind::Decided { .. }
        )
    })
}

/// The run card and its thread on one platform.
#[derive(Clone)]
pub struct Threads<S>(pub S);

impl<S: Surface> Deliver for Threads<S> {
    async fn deliver(&self, id: &RunId) -> Result<(), AppError> {
        let surface = &self.0;
        let app = surface.app();
        let pending = app.outbox_pending(S::THREADS, id)?;
        let (run, events) = (&pending.run, &pending.events);
        let (Some(requested_in), Some(cursor)) = (run.channel.as_deref(), pending.cursor) else {
            return Ok(());
        };
        let mut rest = events.as_slice();
        let mut later = None;
        let (mut card, mut updated) = match app.outbox_reference(S::THREADS, id)? {
            // The card is brought to this reading of the run before the replies go, so it
            // never shows less than its thread; what it now shows is recorded with the first
            // reply. When the platform allows no update yet, the replies go first, recorded
            // with the run kept due, and the update follows in its turn (a later delivery,
            // maybe with no events pending, finds the card still behind and updates it).
            Some(card) if card.get("gone").is_some() => (card, None),
            Some(card) => match surface.update_card(&card, run).await {
                Ok(CardUpdate::Shown) => (card, None),
                Ok(CardUpdate::Updated(shown)) => (shown.clone(), Some(shown)),
                Ok(CardUpdate::NotBefore(at)) => {
                    later = Some(at);
                    (card, None)
                }
                Err(AppError::MessageGone(reason)) => {
                    tracing::warn!(run = %id, %reason, "a run card can no longer be updated; its thread goes on without it");
                    let mut gone = card;
                    gone["gone"] = Value::String(reason);
                    (gone.clone(), Some(gone))
                }
                Err(error) => return Err(error),
            },
            None => {
                // The card stands for the run's creation (its first event) and shows this reading.
                let Some((first, others)) = rest.split_first() else {
                    return Ok(());
                };
                let card = surface.place_card(run, requested_in).await?;
                record(
                    app,
                    S::THREADS,
                    &pending,
                    first.seq,
                    Some(card.clone()),
                    false,
                )
                .await?;
                rest = others;
                (card, None)
            }
        };
        let mut unrecorded = rest.len() == events.len();
        for group in group_for_thread(rest, S::LOG_LIMIT) {
            let started = surface.reply(&card, run, group).await?;
            // Taken either way: a reference from the reply (a thread it started) is built on
            // `card`, which holds the update already.
            let shown = updated.take();
            let changed = started.or(shown);
            let seq = group.last().expect("groups are not empty").seq;
            record(
                app,
                S::THREADS,
                &pending,
                seq,
                changed.clone(),
                later.is_some(),
            )
            .await?;
            card = changed.unwrap_or(card);
            unrecorded = false;
        }
        match later {
            Some(at) => app.outbox_wake_at(S::THREADS, id, at),
            // Nothing was pending but the card's update (or nothing at all): the run is done with.
            None if unrecorded => record(app, S::THREADS, &pending, cursor, updated, false).await?,
            None => {}
        }
        Ok(())
    }
}

/// The card's reference with what `message` (a rendered card) shows, when the card does not show
/// it already: a run's log lines leave its card as it was, and Slack allows `chat.update`
/// less often than posts (Tier 3, about 50 a minute), so an unchanged card is not sent again.
/// The reference keeps a digest of the message (`shows`, see [`card_shows`]), not the message.
pub fn updated_card(card: &Value, message: &str) -> Option<Value> {
    let shows = card_shows(message);
    (card.get("shows") != Some(&shows)).then(|| {
        let mut card = card.clone();
        card["shows"] = shows;
        card
    })
}

/// What a card's reference keeps of the rendered card it shows: a digest of its text.
pub fn card_shows(message: &str) -> Value {
    use sha2::{Digest, Sha256};
    let digest = Sha256::digest(message.as_bytes());
    Value::String(hex::encode(&digest[..8]))
}

/// The approval requests on one platform.
#[derive(Clone)]
pub struct Approvals<S>(pub S);

impl<S: Surface> Deliver for Approvals<S> {
    async fn deliver(&self, id: &RunId) -> Result<(), AppError> {
        let surface = &self.0;
        let app = surface.app();
        let pending = app.outbox_pending(S::APPROVALS, id)?;
        let Some(last) = pending.events.last().map(|e| e.seq) else {
            return Ok(());
        };
        // A message shows the run as it is now, so one post or update covers every pending event.
        match app.outbox_reference(S::APPROVALS, id)? {
            None => {
                let request = surface.post_request(&pending.run).await?;
                record(app, S::APPROVALS, &pending, last, Some(request), false).await
            }
            Some(request) => {
                match surface.update_request(&request, &pending.run).await {
                    Err(AppError::MessageGone(reason)) => {
                        tracing::warn!(run = %id, %reason, "an approval request can no longer be updated; the decision stands");
                    }
                    updated => updated?,
                }
                record(app, S::APPROVALS, &pending, last, None, false).await
            }
        }
    }
}

/// Records a consumer's delivery of `pending` up to `seq`, and its new reference if any. Recording
/// changes no run record, so the one reading serves every record of a delivery.
async fn record(
    app: &App,
    consumer: &str,
    pending: &Pending,
    seq: u64,
    reference: Option<Value>,
    keep_due: bool,
) -> Result<(), AppError> {
    let delivery = Delivery {
        seq,
        note: None,
        reference,
        keep_due,
        read: Some(pending),
    };
    app.outbox_delivered(consumer, &pending.run.id, delivery)
        .await
}
