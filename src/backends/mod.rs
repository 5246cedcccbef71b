//! Backends: what runs an action once its run may start.
//!
//! The dispatcher is an outbox consumer. When a run's `Started` event is due it records the
//! attempt durably, invokes the action's backend off the request path, and reports the outcome
//! through the same [`App`] commands the runs API uses. At most `max_concurrent` runs are
//! handled at once; the others wait their turn. A run that ends while its command is still
//! running (cancelled, or ended by a backend through the API) gets the command killed.
//!
//! After a restart, a due `Started` event is invoked again (a webhook is sent again), except for
//! `COMMAND`: a command that may already have run partly is not started twice; its run fails
//! with an explanation.

mod command;
mod webhook;

use std::collections::{HashSet, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::app::{App, AppError, Consumer, Delivery, Pending};
use crate::config::{ApiClient, WebhookSettings};
use crate::core::action::Invocation;
use crate::core::ids::RunId;
use crate::core::run::{EventKind, Run, RunStatus};

pub use webhook::{sign, SIGNATURE_HEADER, TIMESTAMP_HEADER};

/// How an invocation went: `Ok(Some(note))` when the backend took the run and will report on its
/// own; the note is logged together with the delivery.
type Outcome = Result<Option<String>, AppError>;

/// The outbox consumer name of the dispatcher.
pub const CONSUMER: &str = "backend";

/// The dispatcher's outbox registration: it wants starts. (A running command notices on its
/// own when its run ends.)
pub fn consumer() -> Consumer {
    Consumer::new(CONSUMER, |_, kind| matches!(kind, EventKind::Started))
}

/// What the backends need besides the app.
#[derive(Clone)]
pub struct BackendConfig {
    pub webhook: WebhookSettings,
    pub clients: Vec<ApiClient>,
    /// Runs handled at once; more wait their turn (in memory as ids, durably as outbox marks).
    pub max_concurrent: usize,
}

/// Which runs are being handled and which wait.
#[derive(Default)]
struct Work {
    /// Runs being handled.
    in_flight: HashSet<RunId>,
    /// Runs that became due again while being handled: their handler looks once more.
    recheck: HashSet<RunId>,
    waiting: VecDeque<RunId>,
    queued: HashSet<RunId>,
}

#[derive(Clone)]
struct Dispatcher {
    app: App,
    config: Arc<BackendConfig>,
    http: reqwest::Client,
    work: Arc<Mutex<Work>>,
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
        work: Arc::default(),
    };
    tokio::spawn(async move { dispatcher.run().await })
}

impl Dispatcher {
    async fn run(self) {
        let mut due = self.app.outbox_subscribe(CONSUMER);
        // What was due before this start (a restart), then every 30 s: runs whose handling
        // failed (a store error) are tried again.
        let mut rescan = tokio::time::interval(Duration::from_secs(30));
        loop {
            tokio::select! {
                Some(run) = due.recv() => self.take(run),
                _ = rescan.tick() => match self.app.outbox_due(CONSUMER) {
                    Ok(runs) => runs.into_iter().for_each(|run| self.take(run)),
                    Err(error) => tracing::error!(%error, "cannot read the backend outbox"),
                },
            }
        }
    }

    fn work(&self) -> MutexGuard<'_, Work> {
        self.work.lock().expect("dispatcher lock poisoned")
    }

    /// Starts handling a due run, or queues it when enough runs are being handled. A run
    /// being handled already sees its new events in [`Dispatcher::handle`].
    fn take(&self, run: RunId) {
        let mut work = self.work();
        if work.in_flight.contains(&run) {
            work.recheck.insert(run);
            return;
        }
        if work.in_flight.len() < self.config.max_concurrent {
            self.start(&mut work, run);
        } else if work.queued.insert(run.clone()) {
            work.waiting.push_back(run);
        }
    }

    fn start(&self, work: &mut Work, run: RunId) {
        work.in_flight.insert(run.clone());
        let this = self.clone();
        tokio::spawn(async move {
            if let Err(error) = this.handle(&run).await {
                tracing::error!(run = %run, %error, "backend dispatch failed; will retry");
                this.finish(&mut this.work(), &run);
            }
        });
    }

    /// A run is done with for now: the next waiting run takes its place.
    fn finish(&self, work: &mut Work, run: &RunId) {
        work.in_flight.remove(run);
        work.recheck.remove(run);
        while work.in_flight.len() < self.config.max_concurrent {
            let Some(next) = work.waiting.pop_front() else {
                break;
            };
            work.queued.remove(&next);
            if !work.in_flight.contains(&next) {
                self.start(work, next);
            }
        }
    }

    /// Delivers the run's pending events until none is left. A run that became due again
    /// meanwhile was flagged by [`Dispatcher::take`], and is looked at once more.
    async fn handle(&self, id: &RunId) -> Result<(), AppError> {
        loop {
            let Pending { run, events, .. } = self.app.outbox_pending(CONSUMER, id)?;
            if let Some(last) = events.last().map(|e| e.seq) {
                // Only `Started` is wanted, and a run starts once.
                let note = match run.status.is_ended() {
                    true => None,
                    false => self.invoke(run).await?,
                };
                let delivery = Delivery {
                    seq: last,
                    note,
                    reference: None,
                };
                self.app.outbox_delivered(CONSUMER, id, delivery).await?;
            }
            let mut work = self.work();
            if !work.recheck.remove(id) {
                self.finish(&mut work, id);
                return Ok(());
            }
        }
    }

    async fn invoke(&self, run: Run) -> Outcome {
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
            // Sent again after a restart that came before its confirmation: receivers can
            // recognise a repeat by `context.runId`.
            Invocation::Webhook(hook) => webhook::invoke(self, &run, action, hook).await,
            // A command is never started twice: the attempt is recorded before it starts.
            Invocation::Command(cmd) => match self.app.begin_invocation(&run.id).await? {
                0 => command::run(self, &run, cmd).await,
                _ => {
                    self.end(
                        &run.id,
                        "portbot stopped while the command was running; it is not started again, so it cannot run twice. Run the action again if needed.".into(),
                        RunStatus::Failure,
                    )
                    .await
                }
            },
            Invocation::UpsertEntity(_) => self.app.complete_with_upsert(&run.id).await.map(|_| None),
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
    async fn end(&self, run: &RunId, message: String, status: RunStatus) -> Outcome {
        match self.app.append_log(run, message, Some(status), None).await {
            Ok(_) | Err(AppError::Run(_)) => Ok(None),
            Err(other) => Err(other),
        }
    }
}
