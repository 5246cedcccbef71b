//! Backends: what runs an action once its run may start.
//!
//! The dispatcher is an outbox consumer. When a run's `Started` event is due it records the
//! attempt durably, invokes the action's backend off the request path, and reports the outcome
//! through the same [`App`] commands the runs API uses. A run that ends while its command is
//! still running gets the command killed.
//!
//! After a restart, a due `Started` event is invoked again, except for `COMMAND`: a command
//! that may already have run partly is not started twice; its run fails with an explanation.

mod command;
mod webhook;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

use crate::app::{App, AppError, Consumer};
use crate::config::{ApiClient, WebhookSettings};
use crate::core::action::Invocation;
use crate::core::ids::RunId;
use crate::core::run::{EventKind, Run, RunStatus};

pub use webhook::{sign, SIGNATURE_HEADER, TIMESTAMP_HEADER};

/// The outbox consumer name of the dispatcher.
pub const CONSUMER: &str = "backend";

/// The dispatcher's outbox registration: it wants starts and ends.
pub fn consumer() -> Consumer {
    Consumer::new(CONSUMER, |kind| {
        matches!(kind, EventKind::Started | EventKind::Ended { .. })
    })
}

/// What the backends need besides the app.
#[derive(Clone)]
pub struct BackendConfig {
    pub webhook: WebhookSettings,
    pub clients: Vec<ApiClient>,
}

#[derive(Clone)]
struct Dispatcher {
    app: App,
    config: Arc<BackendConfig>,
    http: reqwest::Client,
    /// Runs being handled, with a signal that stops their command when the run ends.
    in_flight: Arc<Mutex<HashMap<RunId, Arc<Notify>>>>,
}

/// Starts the dispatcher; it runs until the process stops.
pub fn spawn(app: App, config: BackendConfig) -> tokio::task::JoinHandle<()> {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(config.webhook.timeout_seconds))
        .build()
        .expect("the HTTP client builds");
    let dispatcher = Dispatcher {
        app,
        config: Arc::new(config),
        http,
        in_flight: Arc::default(),
    };
    tokio::spawn(async move { dispatcher.run().await })
}

impl Dispatcher {
    async fn run(self) {
        loop {
            match self.app.outbox_due(CONSUMER) {
                Ok(due) => {
                    for run in due {
                        self.take(run);
                    }
                }
                Err(error) => tracing::error!(%error, "cannot read the backend outbox"),
            }
            // Woken by new work; the tick also retries runs whose handling failed.
            let _ =
                tokio::time::timeout(Duration::from_secs(5), self.app.outbox_wait(CONSUMER)).await;
        }
    }

    /// Starts handling a due run, or, if it is being handled, passes an end on to it.
    fn take(&self, run: RunId) {
        let mut in_flight = self.in_flight.lock().expect("in-flight lock poisoned");
        if let Some(stop) = in_flight.get(&run) {
            let ended = self
                .app
                .outbox_pending(CONSUMER, &run)
                .map(|events| {
                    events
                        .iter()
                        .any(|e| matches!(e.kind, EventKind::Ended { .. }))
                })
                .unwrap_or(false);
            if ended {
                stop.notify_one();
            }
            return;
        }
        let stop = Arc::new(Notify::new());
        in_flight.insert(run.clone(), stop.clone());
        let this = self.clone();
        tokio::spawn(async move {
            if let Err(error) = this.handle(&run, &stop).await {
                tracing::error!(run = %run, %error, "backend dispatch failed; will retry");
            }
            this.in_flight
                .lock()
                .expect("in-flight lock poisoned")
                .remove(&run);
        });
    }

    async fn handle(&self, id: &RunId, stop: &Notify) -> Result<(), AppError> {
        for event in self.app.outbox_pending(CONSUMER, id)? {
            if event.kind == EventKind::Started {
                let run = self.app.run(id)?;
                if !run.status.is_ended() {
                    self.invoke(run, stop).await?;
                }
            }
            self.app.outbox_delivered(CONSUMER, id, event.seq).await?;
        }
        Ok(())
    }

    async fn invoke(&self, run: Run, stop: &Notify) -> Result<(), AppError> {
        let earlier_attempts = self.app.begin_invocation(&run.id).await?;
        let Ok(action) = self.app.action(run.action.identifier.as_str()) else {
            return self
                .end(
                    &run.id,
                    "the action is no longer defined, so it cannot be run".into(),
                    RunStatus::Failure,
                )
                .await;
        };
        let started = Instant::now();
        let kind = action.invocation.kind();
        let result = match &action.invocation {
            Invocation::Webhook(hook) => {
                if earlier_attempts > 0 {
                    self.log(&run.id, "portbot restarted before the webhook was confirmed; sending it again".into())
                        .await;
                }
                webhook::invoke(self, &run, action, hook).await
            }
            Invocation::Command(cmd) if earlier_attempts > 0 => {
                self.end(
                    &run.id,
                    "portbot stopped while the command was running; it is not started again, so it cannot run twice. Run the action again if needed.".into(),
                    RunStatus::Failure,
                )
                .await
            }
            Invocation::Command(cmd) => command::run(self, &run, cmd, stop).await,
            Invocation::UpsertEntity(_) => self.app.complete_with_upsert(&run.id).await.map(|_| ()),
        };
        let ok = self
            .app
            .run(&run.id)
            .map(|r| r.status != RunStatus::Failure)
            .unwrap_or(false);
        self.app
            .metrics()
            .backend_finished(kind, ok && result.is_ok(), started.elapsed());
        result
    }

    /// A log line on the run. A run that ended meanwhile refuses it, which is fine.
    async fn log(&self, run: &RunId, message: String) {
        if let Err(error) = self.app.append_log(run, message, None, None).await {
            tracing::debug!(run = %run, %error, "log line not recorded");
        }
    }

    /// Ends the run with a final log line, unless it has ended already.
    async fn end(&self, run: &RunId, message: String, status: RunStatus) -> Result<(), AppError> {
        match self.app.append_log(run, message, Some(status), None).await {
            Ok(_) | Err(AppError::Run(_)) => Ok(()),
            Err(other) => Err(other),
        }
    }
}
