//! The durable outbox: every run event is stored before anything is said about it, and each
//! consumer (the backend dispatcher, a chat platform) delivers it later, in order per run and
//! exactly once, even across restarts.
//!
//! A consumer is marked *due* for a run in the same store change that adds a wanted event. It
//! reads the run's events after its cursor, delivers them, and then advances its cursor; the
//! mark is removed once the cursor reaches the run's newest event, unless the consumer keeps the
//! run due for something it may do only later (a chat platform's card update that waits for its
//! turn: [`Delivery::keep_due`]). An event is delivered again only if the process stopped
//! between delivery and the cursor update.

use std::collections::HashMap;
use std::sync::Mutex;

use tokio::sync::mpsc;
use tokio::time::Instant;

use super::{App, AppError};
use crate::core::ids::RunId;
use serde_json::Value;

use crate::core::run::{EventKind, Run, RunEvent};
use crate::store::{Change, RunRecord};

/// A reader of run events, with the events it wants.
pub struct Consumer {
    pub name: &'static str,
    pub wants: fn(&Run, &EventKind) -> bool,
    /// Told the id of each run a durable change made due.
    due: mpsc::UnboundedSender<RunId>,
    /// Taken once, by the consumer's worker.
    receiver: Mutex<Option<mpsc::UnboundedReceiver<RunId>>>,
    /// The runs to be looked at again at a time ([`App::outbox_wake_at`]): the earliest time
    /// asked for each, so a run delivered often while it waits has one wake-up, not one a delivery.
    wakes: Mutex<HashMap<RunId, Instant>>,
}

impl Consumer {
    pub fn new(name: &'static str, wants: fn(&Run, &EventKind) -> bool) -> Consumer {
        let (due, receiver) = mpsc::unbounded_channel();
        Consumer {
            name,
            wants,
            due,
            receiver: Mutex::new(Some(receiver)),
            wakes: Mutex::default(),
        }
    }

    /// Passes on a run that has new wanted events (after they are durable).
    pub(super) fn notify(&self, run: &RunId) {
        // Without a worker listening the run stays due in the store; nothing is lost.
        let _ = self.due.send(run.clone());
    }
}

impl App {
    fn consumer(&self, name: &str) -> &Consumer {
        self.inner
            .consumers
            .iter()
            .find(|c| c.name == name)
            .expect("consumers are registered when the app is built")
    }

    /// The runs that become due for `consumer` from now on, as they do. A worker takes this
    /// once, then reads [`App::outbox_due`] for what was due before it started.
    pub fn outbox_subscribe(&self, consumer: &str) -> mpsc::UnboundedReceiver<RunId> {
        self.consumer(consumer)
            .receiver
            .lock()
            .expect("consumer lock poisoned")
            .take()
            .expect("a consumer has one worker")
    }

    /// Runs with events `consumer` has not delivered yet, from the store.
    pub fn outbox_due(&self, consumer: &str) -> Result<Vec<RunId>, AppError> {
        Ok(self.inner.store.due_runs(consumer)?)
    }

    /// The run, and its events after the consumer's cursor that it wants, in order.
    pub fn outbox_pending(&self, consumer: &str, run: &RunId) -> Result<Pending, AppError> {
        let wants = self.consumer(consumer).wants;
        let record = self.run_record(run)?;
        let current = record.decode()?;
        let cursor = self.inner.store.delivered(consumer, run)?;
        let events = match cursor {
            Some(after) => self
                .inner
                .store
                .events(run, after, current.last_seq)?
                .into_iter()
                .filter(|e| wants(&current, &e.kind))
                .collect(),
            // Not due: everything was delivered.
            None => Vec::new(),
        };
        Ok(Pending {
            run: current,
            events,
            cursor,
            record,
        })
    }

    /// Has `consumer`'s worker look at the run again at `at` (or sooner, if a wake-up is set
    /// for earlier), in this process: for a consumer that kept the run due
    /// ([`Delivery::keep_due`]) for something it may only do then. The store still holds the
    /// due mark, so after a restart the worker's first reading finds the run.
    pub fn outbox_wake_at(&self, consumer: &str, run: &RunId, at: Instant) {
        let wanted = self.consumer(consumer);
        {
            let mut wakes = wanted.wakes.lock().expect("consumer lock poisoned");
            if wakes.get(run).is_some_and(|set| *set <= at) {
                return;
            }
            wakes.insert(run.clone(), at);
        }
        let (app, consumer, run) = (self.clone(), wanted.name, run.clone());
        tokio::spawn(async move {
            tokio::time::sleep_until(at).await;
            let woken = app.consumer(consumer);
            {
                let mut wakes = woken.wakes.lock().expect("consumer lock poisoned");
                if wakes.get(&run) == Some(&at) {
                    wakes.remove(&run);
                }
            }
            woken.notify(&run);
        });
    }

    /// What `consumer` recorded at its last delivery of the run (its chat message ids, say).
    pub fn outbox_reference(&self, consumer: &str, run: &RunId) -> Result<Option<Value>, AppError> {
        Ok(self.inner.store.reference(consumer, run)?)
    }

    /// Records that `consumer` delivered the run's events up to `delivery.seq`, with what the
    /// delivery achieved, in one change.
    pub async fn outbox_delivered(
        &self,
        consumer: &str,
        run: &RunId,
        delivery: Delivery<'_>,
    ) -> Result<(), AppError> {
        let wants = self.consumer(consumer).wants;
        let guard = self.lock_run(run).await;
        let mut change = Change::default();
        let record = self.run_record(run)?;
        // Unchanged since the consumer read it: that reading is the run as it is.
        let decoded;
        let stored = match delivery.read {
            Some(read) if read.record == record => &read.run,
            _ => {
                decoded = record.decode()?;
                &decoded
            }
        };
        let stored_last = stored.last_seq;
        let mut updated = None;
        let mut staged = Vec::new();
        if let Some(note) = delivery.note {
            let mut noted = stored.clone();
            // A run that ended meanwhile takes no more changes; the delivery still counts.
            let kinds = noted
                .update(note.status_label, note.link, None)
                .and_then(|mut kinds| {
                    kinds.extend(noted.log(note.line)?);
                    Ok(kinds)
                });
            if let Ok(kinds) = kinds {
                staged = self.stage(&mut noted, kinds, &mut change);
                updated = Some(noted);
            }
        }
        let current = updated.as_ref().unwrap_or(stored);
        if let Some(reference) = &delivery.reference {
            change.set_reference(consumer, run, reference);
        }
        let more = self
            .inner
            .store
            .events(run, delivery.seq, stored_last)?
            .iter()
            .chain(&staged)
            .any(|e| wants(current, &e.kind));
        change.set_delivered(consumer, run, delivery.seq, !more && !delivery.keep_due);
        self.inner.store.commit(change).await?;
        drop(guard);
        if !staged.is_empty() {
            self.after_commit(current, &staged);
        }
        Ok(())
    }
}

/// What a consumer has to deliver for one run.
pub struct Pending {
    /// The run as it is now.
    pub run: Run,
    pub events: Vec<RunEvent>,
    /// The last event delivered before these, when the run is due (it may be due with no
    /// events pending, see [`Delivery::keep_due`]).
    pub cursor: Option<u64>,
    /// What `run` was read from.
    record: RunRecord,
}

/// A delivery to record.
pub struct Delivery<'a> {
    /// The last event delivered.
    pub seq: u64,
    /// What the delivery achieved, for the run's log.
    pub note: Option<DeliveryNote>,
    /// Replaces the consumer's reference for the run.
    pub reference: Option<Value>,
    /// The run stays due even when no events are left, for work still to do about them (a
    /// chat card to update once the platform allows it): durable, unlike a wake-up.
    pub keep_due: bool,
    /// What the consumer read for this delivery: recording it need not decode the run again
    /// when the run has not changed since.
    pub read: Option<&'a Pending>,
}

/// What a delivery adds to its run, in the same change as the delivery: a log line ("webhook
/// delivered"), and the run's new label and link (a GITOPS pull request, "awaiting merge").
pub struct DeliveryNote {
    pub line: String,
    pub status_label: Option<String>,
    pub link: Option<String>,
}

impl From<String> for DeliveryNote {
    fn from(line: String) -> DeliveryNote {
        DeliveryNote {
            line,
            status_label: None,
            link: None,
        }
    }
}
