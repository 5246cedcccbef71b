//! The durable outbox: every run event is stored before anything is said about it, and each
//! consumer (the backend dispatcher, a chat platform) delivers it later, in order per run and
//! exactly once, even across restarts.
//!
//! A consumer is marked *due* for a run in the same store change that adds a wanted event. It
//! reads the run's events after its cursor, delivers them, and then advances its cursor; the
//! mark is removed once the cursor reaches the run's newest event. An event is delivered again
//! only if the process stopped between delivery and the cursor update.

use tokio::sync::Notify;

use super::{App, AppError};
use crate::core::ids::RunId;
use crate::core::run::{EventKind, RunEvent};
use crate::store::Change;

/// A reader of run events, with the events it wants.
pub struct Consumer {
    pub name: &'static str,
    pub wants: fn(&EventKind) -> bool,
    /// Woken after a change marked it due.
    pub wake: Notify,
}

impl Consumer {
    pub fn new(name: &'static str, wants: fn(&EventKind) -> bool) -> Consumer {
        Consumer {
            name,
            wants,
            wake: Notify::new(),
        }
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

    /// Waits until a change marks `consumer` due for some run.
    pub async fn outbox_wait(&self, consumer: &str) {
        self.consumer(consumer).wake.notified().await;
    }

    /// Runs with events `consumer` has not delivered yet.
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

    /// Records that `consumer` delivered the run's events up to `seq`.
    pub async fn outbox_delivered(
        &self,
        consumer: &str,
        run: &RunId,
        seq: u64,
    ) -> Result<(), AppError> {
        let wants = self.consumer(consumer).wants;
        let guard = self.lock_run(run).await;
        let more = self
            .inner
            .store
            .events(run, seq)?
            .iter()
            .any(|e| wants(&e.kind));
        let mut change = Change::default();
        change.set_delivered(consumer, run, seq, !more);
        self.inner.store.apply(change)?;
        drop(guard);
        self.inner.store.durable().await?;
        Ok(())
    }
}
