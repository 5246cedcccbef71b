//! Backends: what runs an action once its run may start.
//!
//! The dispatcher is an outbox consumer. When a run's `Started` event is due it invokes the
//! action's backend off the request path (a command's attempt is recorded durably first), and
//! reports the outcome through the same [`App`] commands the runs API uses. At most `max_concurrent` runs are
//! handled at once; the others wait their turn. A run that ends while its command is still
//! running (cancelled, or ended by a backend through the API) gets the command killed.
//!
//! After a restart, a due `Started` event is invoked again (a webhook is sent again), except for
//! `COMMAND`: a command that may already have run partly is not started twice; its run fails
//! with an explanation. `GITOPS` and `GITHUB` look for what an earlier attempt made first.
//!
//! GITOPS and GITHUB runs wait on GitHub or a git remote after their invocation; `watch`
//! follows them (webhook reports and polling).

mod command;
mod github_workflow;
mod gitops;
pub mod watch;
mod webhook;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::app::worker::{self, Deliver};
use crate::app::{App, AppError, Consumer, Delivery, DeliveryNote};
use crate::config::{ApiClient, GithubSettings, WebhookSettings};
use crate::core::action::Invocation;
use crate::core::ids::RunId;
use crate::core::run::{EventKind, Run, RunStatus};

pub use github_workflow::workflow_observation;
pub use gitops::check_observation;
pub(crate) use webhook::without_url;
pub use webhook::{sign, SIGNATURE_HEADER, TIMESTAMP_HEADER};

/// How an invocation went: `Ok(Some(note))` when the backend took the run and will report on its
/// own; the note is recorded together with the delivery, in one change.
type Outcome = Result<Option<DeliveryNote>, AppError>;

/// The outbox consumer name of the dispatcher.
pub const CONSUMER: &str = "backend";

/// The dispatcher's outbox registration: it wants starts, and the unsuccessful end of a run
/// that published something (a GITOPS branch or pull request, withdrawn then). A running
/// command notices on its own when its run ends.
pub fn consumer() -> Consumer {
    Consumer::new(CONSUMER, |run, kind| match kind {
        EventKind::Started => true,
        EventKind::Ended { status } => *status != RunStatus::Success && run.link.is_some(),
        _ => false,
    })
}

/// What the backends need besides the app.
#[derive(Clone)]
pub struct BackendConfig {
    pub webhook: WebhookSettings,
    pub clients: Vec<ApiClient>,
    /// Runs handled at once; more wait their turn (in memory as ids, durably as outbox marks).
    pub max_concurrent: usize,
    pub github: GithubSettings,
    /// `iac.templates_path`: GITOPS file templates.
    pub iac_templates: PathBuf,
    /// Where GITOPS clones repositories (beside the store).
    pub work_dir: PathBuf,
    /// `server.public_url`, for links back to runs.
    pub public_url: String,
}

#[derive(Clone)]
struct Dispatcher {
    app: App,
    config: Arc<BackendConfig>,
    http: reqwest::Client,
    github: crate::github::GitHub,
}

/// Starts the dispatcher; it runs until the process stops.
pub fn spawn(app: App, config: BackendConfig) -> tokio::task::JoinHandle<()> {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(config.webhook.timeout_seconds))
        // A webhook's request is signed for the action's url: a redirect would take its
        // signature somewhere else (or, for 301 and 302, turn the POST into a GET without
        // the body). A redirect is answered as a failure that names where it pointed.
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("the HTTP client builds");
    let max_concurrent = config.max_concurrent;
    let poll_every = Duration::from_secs(config.github.poll_interval_seconds);
    let dispatcher = Dispatcher {
        app: app.clone(),
        github: crate::github::GitHub::new(&config.github),
        config: Arc::new(config),
        http,
    };
    watch::spawn(dispatcher.clone(), poll_every);
    worker::spawn(app, CONSUMER, dispatcher, max_concurrent)
}

impl Deliver for Dispatcher {
    /// Invokes the backend of a run that started, and records the delivery with what the
    /// backend answered.
    async fn deliver(&self, id: &RunId) -> Result<(), AppError> {
        let pending = self.app.outbox_pending(CONSUMER, id)?;
        let Some(last) = pending.events.last().map(|e| e.seq) else {
            return Ok(());
        };
        let ended = pending
            .events
            .iter()
            .any(|e| matches!(e.kind, EventKind::Ended { .. }));
        let run = &pending.run;
        // A run starts once; a run that ended before its start was delivered is not invoked.
        let note = match run.status.is_ended() {
            true => None,
            false => self.invoke(run).await?,
        };
        if ended {
            self.withdraw(run).await;
        }
        let delivery = Delivery {
            seq: last,
            note,
            reference: None,
            keep_due: false,
            read: Some(&pending),
        };
        self.app.outbox_delivered(CONSUMER, id, delivery).await
    }
}

impl Dispatcher {
    async fn invoke(&self, run: &Run) -> Outcome {
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
            Invocation::Webhook(hook) => webhook::invoke(self, run, action, hook).await,
            // A command is never started twice: the attempt is recorded before it starts.
            Invocation::Command(cmd) => match self.app.begin_invocation(&run.id).await? {
                0 => command::run(self, run, cmd).await,
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
            // Safe to repeat: each looks for the branch, pull request or workflow run first.
            Invocation::Gitops(gitops) => gitops::invoke(self, run, action, gitops).await,
            Invocation::GithubWorkflow(workflow) => {
                github_workflow::invoke(self, run, action, workflow).await
            }
        };
        let ok = match &result {
            // Taken: whatever the backend reports later is the run's, not the invocation's.
            Ok(Some(_)) => true,
            // The backend ended the run itself (or it ended meanwhile): failed, or not.
            Ok(None) => self
                .app
                .run_status(&run.id)
                .is_ok_and(|status| status != RunStatus::Failure),
            Err(_) => false,
        };
        self.app
            .metrics()
            .backend_finished(kind, ok, started.elapsed());
        result
    }

    /// After a GITOPS run ended without success (cancelled, failed, closed), its change must
    /// not be merged later by mistake: the pull request is closed, or the branch deleted.
    async fn withdraw(&self, run: &Run) {
        let Ok(action) = self.app.action(run.action.identifier.as_str()) else {
            return;
        };
        if let Invocation::Gitops(gitops) = &action.invocation {
            match gitops::withdraw(self, run, gitops).await {
                Ok(what) => {
                    tracing::info!(run = %run.id, what, "withdrew the change of a run that ended without success")
                }
                Err(reason) => {
                    tracing::warn!(run = %run.id, %reason, "cannot withdraw the change of a run that ended")
                }
            }
        }
    }

    /// A log line on the run. A run that ended meanwhile refuses it, which is fine.
    async fn log(&self, run: &RunId, message: String) {
        if let Err(error) = self.app.append_log(run, message, None, None, None).await {
            tracing::debug!(run = %run, %error, "log line not recorded");
        }
    }

    /// Ends the run with a final log line, unless it has ended already.
    async fn end(&self, run: &RunId, message: String, status: RunStatus) -> Outcome {
        match self
            .app
            .append_log(run, message, Some(status), None, None)
            .await
        {
            Ok(_) | Err(AppError::Run(_)) => Ok(None),
            Err(other) => Err(other),
        }
    }
}
