//! The durable outbox: every run event is stored before anything is said about it, and each
//! consumer (the backend dispatcher, a chat platform) delivers it later, in order per run and
//! exactly once, even across restarts.
//!
//! A consumer is marked *due* for a run in the same store change that adds a wanted event. It
//! reads the run's events after its cursor, delivers them, and then advances its cursor; the
//! mark is removed once the cursor reaches the run's newest event. An event is delivered again
//! only if the process stopped between delivery and the cursor update.

use std::sync::Mutex;

use tokio::sync::mpsc;

use super::{App, AppError};
use crate::core::ids::RunId;
use crate::core::run::{EventKind, RunEvent};
use crate::store::Change;

/// A reader of run events, with the events it wants.
pub struct Consumer {
    pub name: &'static str,
    pub wants: fn(&EventKind) -> bool,
    /// Told the id of each run a durable change made due.
    due: mpsc::UnboundedSender<RunId>,
    /// Taken once, by the consumer's worker.
    receiver: Mutex<Option<mpsc::UnboundedReceiver<RunId>>>,
}

impl Consumer {
    pub fn new(name: &'static str, wants: fn(&EventKind) -> bool) -> Consumer {
        let (due, receiver) = mpsc::unbounded_channel();
        Consumer {
            name,
            wants,
            due,
            receiver: Mutex::new(Some(receiver)),
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

    /// The run's events after the consumer's cursor that it wants, in order.
    pub fn outbox_pending(&self, consumer: &str, run: &RunId) -> Result<Vec<RunEvent>, AppError> {
        let wants = self.consumer(consumer).wants;
        let after = self.inner.store.delivered(consumer, run)?;
        Ok(self
            .inner
            .store
            .events(run, after)?
            .into_iter()
            .filter(|e| wants(&e.kind))
            .collect())
    }

    /// Records that `consumer` delivered the run's events up to `seq`. A `note` (what the
    /// delivery achieved, e.g. "webhook delivered") is logged on the run in the same change.
    pub async fn outbox_delivered(
        &self,
        consumer: &str,
        run: &RunId,
        seq: u64,
        note: Option<String>,
    ) -> Result<(), AppError> {
        let wants = self.consumer(consumer).wants;
        let guard = self.lock_run(run).await;
        let mut change = Change::default();
        let mut noted = None;
        if let Some(note) = note {
            let mut current = self.run(run)?;
            // A run that ended meanwhile takes no more log lines; the delivery still counts.
            if let Ok(kinds) = current.log(note) {
                let events = self.stage(&mut current, kinds, &mut change);
                noted = Some((current, events));
            }
        }
        let staged = noted.iter().flat_map(|(_, events)| events);
        let more = self
            .inner
            .store
            .events(run, seq)?
            .iter()
            .chain(staged)
            .any(|e| wants(&e.kind));
        change.set_delivered(consumer, run, seq, !more);
        self.inner.store.commit(change).await?;
        drop(guard);
        if let Some((current, events)) = noted {
            self.after_commit(&current, &events);
        }
        Ok(())
    }
}
