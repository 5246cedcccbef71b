//! The one door: every adapter (HTTP API, CLI through the API, chat platforms) and every backend
//! changes state through [`App`].
//!
//! Each command loads what it needs, asks the core to decide, commits the new state together with
//! the run's events and outbox marks as one atomic store change, and answers only once that change
//! is durable. Changes to one run are serialised by a lock stripe; changes to different runs that
//! are committed at the same time share one log sync (see `store::wal`).

mod catalog_change;
mod locks;
pub mod outbox;
pub mod receipts;
pub mod worker;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{Arc, RwLock, RwLockReadGuard};

use chrono::Utc;
use serde_json::{Map, Value};
use tokio::sync::{Mutex, MutexGuard};

use crate::core::access::Directory;
use crate::core::action::{suggest, Action, EntityMapping, Invocation, RawInputs, RequestError};
use crate::core::catalog::{Blueprint, Catalog, CatalogError, Entity};
use crate::core::ids::{self, ActionId, BlueprintId, EntityId, Identity, RunId};
use crate::core::run::{
    ApprovalRules, ChangeOperation, Decision, EntityChange, EventKind, NewRun, Run, RunError,
    RunEvent, RunStatus,
};
use crate::core::template::{self, TemplateError};
use crate::definitions::Definitions;
use crate::metrics::Metrics;
use crate::store::{Change, RunRecord, Store, StoreError};
use catalog_change::CatalogChange;
pub use outbox::{Consumer, Delivery, DeliveryNote, Pending};
pub use receipts::Received;
use receipts::{Claim, Receipts, Repeated};

/// Why a command was refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error(transparent)]
    Request(#[from] RequestError),
    #[error(transparent)]
    Run(#[from] RunError),
    #[error(transparent)]
    Catalog(#[from] CatalogError),
    #[error("there is no run {0}")]
    RunNotFound(RunId),
    #[error(transparent)]
    Template(#[from] TemplateError),
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A consumer could not deliver to its platform (it is retried later).
    #[error("delivery failed: {0}")]
    Delivery(String),
    /// A message of a consumer's (a run card, an approval request) that its platform will never
    /// edit again (someone deleted it, say), with the platform's reason: it is left as it is.
    #[error("the message can no longer be edited: {0}")]
    MessageGone(String),
    /// The same delivery (by its platform's id) was taken already (see `receipts`).
    #[error("{}", repeated_text(.0))]
    Repeated(Repeated),
}

fn repeated_text(repeated: &Repeated) -> String {
    match &repeated.run {
        Some(run) => {
            format!("This was received already and made run `{run}`; it is not run again.")
        }
        None => "This was received already and is being handled; it is not run again.".into(),
    }
}

/// Someone asking for a run of an action, as an adapter received it: the inputs are still
/// raw, as [`App::check_run`] parses them against the action.
pub struct RunRequest<'a> {
    pub who: &'a Identity,
    pub action: &'a str,
    pub entity: Option<&'a str>,
    pub inputs: RawInputs,
    /// Where it came from (`"API"`, `"SLACK"`, `"DISCORD"`).
    pub origin: &'a str,
    /// The chat channel it was made in, where its run card goes.
    pub channel: Option<&'a str>,
    /// The delivery or form it came in as, so that the same one coming again makes no second
    /// run; `None` for requests with no such id (the API's).
    pub received: Option<Received<'a>>,
}

/// A request that passed its checks ([`App::check_run`]) and is not stored yet.
pub struct CheckedRun {
    run: Run,
    kinds: Vec<EventKind>,
    /// Its delivery, claimed; and the form it was asked in, which its creation drops.
    claim: Option<Claim>,
    form: Option<String>,
}

impl CheckedRun {
    /// Where its run card goes, if it came from a chat.
    pub fn channel(&self) -> Option<&str> {
        self.run.channel.as_deref()
    }
}

/// What a backend or API client may change on a run (Port's `PATCH /runs/{id}`).
#[derive(Debug, Clone, Default)]
pub struct RunPatch {
    pub status: Option<RunStatus>,
    pub status_label: Option<String>,
    pub link: Option<String>,
    pub summary: Option<String>,
}

const RUN_LOCK_STRIPES: usize = 256;

#[derive(Clone)]
pub struct App {
    inner: Arc<Inner>,
}

struct Inner {
    store: Store,
    actions: BTreeMap<ActionId, Action>,
    directory: Directory,
    catalog: RwLock<Catalog>,
    run_locks: Vec<Mutex<()>>,
    /// Orders the ids of runs created in the same millisecond.
    run_sequence: AtomicU16,
    consumers: Vec<Consumer>,
    metrics: Metrics,
    /// Serialises the requests that take file locks (see `locks`).
    file_locks: Mutex<()>,
    receipts: Arc<Receipts>,
}

impl App {
    /// Builds the app over a store: catalog entities from files are merged into the stored
    /// catalog (a file that changed since it was last loaded wins; otherwise what runs and the
    /// API changed is kept).
    pub async fn new(
        store: Store,
        definitions: Definitions,
        consumers: Vec<Consumer>,
        metrics: Metrics,
    ) -> Result<App, AppError> {
        let mut change = Change::default();
        for file in &definitions.entities {
            let entity = &file.entity;
            if store.entity_source(&entity.blueprint, &entity.identifier)? != Some(file.hash) {
                change.put_entity(entity);
                change.set_entity_source(entity, file.hash);
            }
        }
        store.commit(change).await?;
        let mut catalog = Catalog::new(definitions.blueprints);
        for entity in store.entities()? {
            if catalog.blueprint(&entity.blueprint).is_some() {
                catalog.insert(entity);
            }
        }
        for (entity, error) in catalog.check_all() {
            tracing::warn!(blueprint = %entity.blueprint, entity = %entity.identifier, %error, "stored entity breaks a rule");
        }
        let receipts = Receipts::load(store.receipts()?, now_ms());
        Ok(App {
            inner: Arc::new(Inner {
                store,
                actions: definitions.actions,
                directory: definitions.directory,
                catalog: RwLock::new(catalog),
                run_locks: (0..RUN_LOCK_STRIPES).map(|_| Mutex::new(())).collect(),
                run_sequence: AtomicU16::new(0),
                consumers,
                metrics,
                file_locks: Mutex::new(()),
                receipts: Arc::new(receipts),
            }),
        })
    }

    pub fn metrics(&self) -> &Metrics {
        &self.inner.metrics
    }

    pub fn actions(&self) -> impl Iterator<Item = &Action> {
        self.inner.actions.values()
    }

    pub fn action(&self, id: &str) -> Result<&Action, RequestError> {
        ActionId::try_from(id)
            .ok()
            .and_then(|id| self.inner.actions.get(&id))
            .ok_or_else(|| RequestError::UnknownAction {
                given: id.to_owned(),
                suggestions: suggest(id, self.inner.actions.keys().map(ActionId::as_str)),
            })
    }

    /// Read access to the catalog. Never hold it across an await.
    pub fn catalog(&self) -> RwLockReadGuard<'_, Catalog> {
        self.inner.catalog.read().expect("catalog lock poisoned")
    }

    pub fn blueprint(&self, id: &BlueprintId) -> Option<Blueprint> {
        self.catalog().blueprint(id).cloned()
    }

    /// Teams and their members, for permission checks in adapters.
    pub fn directory(&self) -> &Directory {
        &self.inner.directory
    }

    pub fn run(&self, id: &RunId) -> Result<Run, AppError> {
        self.inner
            .store
            .run(id)?
            .ok_or_else(|| AppError::RunNotFound(id.clone()))
    }

    fn run_record(&self, id: &RunId) -> Result<RunRecord, AppError> {
        self.inner
            .store
            .run_record(id)?
            .ok_or_else(|| AppError::RunNotFound(id.clone()))
    }

    pub fn run_status(&self, id: &RunId) -> Result<RunStatus, AppError> {
        self.inner
            .store
            .run_status(id)?
            .ok_or_else(|| AppError::RunNotFound(id.clone()))
    }

    /// The runs not ended of the actions `wanted` accepts; other runs are not read.
    pub fn active_runs_of(&self, wanted: impl Fn(&Action) -> bool) -> Result<Vec<Run>, AppError> {
        let wanted = |id: &str| self.action(id).is_ok_and(&wanted);
        Ok(self.inner.store.active_runs_of(wanted)?)
    }

    /// Runs newest first: only those not ended with `active_only`, then those `keep` accepts.
    pub fn runs(
        &self,
        limit: usize,
        active_only: bool,
        keep: impl Fn(&Run) -> bool,
    ) -> Result<Vec<Run>, AppError> {
        Ok(self.inner.store.runs(limit, active_only, keep)?)
    }

    /// A run's events after `after`, in order.
    pub fn events(&self, id: &RunId, after: u64) -> Result<Vec<RunEvent>, AppError> {
        let run = self.run(id)?;
        Ok(self.inner.store.events(id, after, run.last_seq)?)
    }

    /// Checks a request and, when it passes, creates the run.
    pub async fn request_run(&self, request: RunRequest<'_>) -> Result<Run, AppError> {
        let checked = self.check_run(request)?;
        self.create_run(checked).await
    }

    /// Checks a request, without waiting for anything or storing anything: a form can show
    /// what is wrong at once and leave only the durable write to come after its answer.
    pub fn check_run(&self, request: RunRequest<'_>) -> Result<CheckedRun, AppError> {
        let RunRequest {
            who,
            action,
            entity,
            inputs,
            origin,
            channel,
            received,
        } = request;
        let action = self.action(action)?;
        let now = Utc::now();
        let claim = received
            .map(|r| self.inner.receipts.claim(r, now.timestamp_millis() as u64))
            .transpose()
            .map_err(AppError::Repeated)?;
        let form = match received {
            Some(Received::Form(key)) => Some(key.to_owned()),
            _ => None,
        };
        // The entity is read in place; the catalog's lock goes before anything awaits.
        let catalog = self.catalog();
        let checked = action.check_request(who, entity, inputs, &catalog, &self.inner.directory)?;
        let sequence = self.inner.run_sequence.fetch_add(1, Ordering::Relaxed);
        let id = RunId::new(now.timestamp_millis() as u64, sequence, rand::random());
        let (run, kinds) = Run::create(
            NewRun {
                id,
                action,
                entity: checked.entity,
                properties: checked.inputs,
                created_by: who.clone(),
                origin: origin.to_owned(),
                channel: channel.map(str::to_owned),
            },
            now,
        );
        Ok(CheckedRun {
            run,
            kinds,
            claim,
            form,
        })
    }

    /// Creates a checked run, once no active run holds its files (GITOPS); answers once it is
    /// durable. The same change keeps its delivery's receipt and drops the form it was asked in.
    pub async fn create_run(&self, checked: CheckedRun) -> Result<Run, AppError> {
        let CheckedRun {
            mut run,
            kinds,
            mut claim,
            form,
        } = checked;
        let action = self.action(run.action.identifier.as_str())?;
        let _locks = match action.invocation {
            Invocation::Gitops(_) => Some(self.inner.file_locks.lock().await),
            _ => None,
        };
        self.check_locks(action, &run)?;
        let mut change = Change::default();
        let events = self.stage(&mut run, kinds, &mut change);
        if let Some(claim) = &mut claim {
            claim.record(&mut change, Some(&run.id));
        }
        if let Some(form) = &form {
            change.set_form(form, None);
        }
        self.inner.store.commit(change).await?;
        if let Some(claim) = claim {
            claim.keep(Some(run.id.clone()));
        }
        self.after_commit(&run, &events);
        Ok(run)
    }

    /// Claims a delivery that changes no run's creation (a GitHub event, say): taken already
    /// gives [`Repeated`]; [`App::keep_delivery`] once it was applied.
    pub fn claim_delivery(&self, id: &str) -> Result<Claim, Repeated> {
        self.inner.receipts.claim(Received::Delivery(id), now_ms())
    }

    /// Stores the receipt of a claimed delivery that was applied. (Applying and keeping are
    /// two changes: a crash between them lets the delivery be applied again when it comes
    /// again. GitHub's events are the only such deliveries, and each of their observations
    /// applies once by what it says (a check's line is logged once, an ended run takes no
    /// more), so that second time changes nothing.)
    pub async fn keep_delivery(&self, mut claim: Claim) -> Result<(), AppError> {
        let mut change = Change::default();
        claim.record(&mut change, None);
        self.inner.store.commit(change).await?;
        claim.keep(None);
        Ok(())
    }

    /// An approver's decision, under the same rules in every adapter.
    pub async fn decide(
        &self,
        who: &Identity,
        id: &RunId,
        decision: Decision,
        description: Option<String>,
    ) -> Result<Run, AppError> {
        self.mutate_run(id, |app, run| {
            app.apply_decision(run, who, decision, description)
        })
        .await
    }

    /// Whether `who` may decide on the run now (a decision tried on a copy, not stored): for
    /// asking a decliner for a reason before the decline is made.
    pub fn may_decide(&self, who: &Identity, id: &RunId) -> Result<(), AppError> {
        let mut copy = self.run(id)?;
        self.apply_decision(&mut copy, who, Decision::Decline, None)
            .map(|_| ())
    }

    fn apply_decision(
        &self,
        run: &mut Run,
        who: &Identity,
        decision: Decision,
        description: Option<String>,
    ) -> Result<Vec<EventKind>, AppError> {
        let action = self.inner.actions.get(&run.action.identifier);
        let nobody = Default::default();
        let rules = ApprovalRules {
            approvers: action.map_or(&nobody, |a| &a.permissions.approve),
            directory: &self.inner.directory,
            allow_self_approval: action.is_some_and(|a| a.allow_self_approval),
        };
        Ok(run.decide(who, decision, description, &rules, Utc::now())?)
    }

    /// Appends a log line; with `termination` the run also ends (Port's `terminationStatus`).
    /// A new label and link (what a backend's report points at) come in the same change.
    pub async fn append_log(
        &self,
        id: &RunId,
        message: String,
        termination: Option<RunStatus>,
        status_label: Option<String>,
        link: Option<String>,
    ) -> Result<Run, AppError> {
        self.mutate_run(id, |_, run| {
            let mut kinds = run.log(message)?;
            kinds.extend(run.update(status_label, link, None)?);
            if let Some(status) = termination {
                kinds.extend(run.finish(status, Utc::now())?);
            }
            Ok(kinds)
        })
        .await
    }

    /// Several log lines in one change: what a backend printed in quick succession.
    pub async fn append_logs(&self, id: &RunId, messages: Vec<String>) -> Result<Run, AppError> {
        self.mutate_run(id, |_, run| {
            let mut kinds = Vec::new();
            for message in messages {
                kinds.extend(run.log(message)?);
            }
            Ok(kinds)
        })
        .await
    }

    /// Port's `PATCH /runs/{id}`: label, link, summary and, optionally, the end.
    pub async fn update_run(&self, id: &RunId, patch: RunPatch) -> Result<Run, AppError> {
        self.mutate_run(id, |_, run| {
            let mut kinds = run.update(patch.status_label, patch.link, patch.summary)?;
            if let Some(status) = patch.status {
                kinds.extend(run.finish(status, Utc::now())?);
            }
            Ok(kinds)
        })
        .await
    }

    /// Ends a run as the `UPSERT_ENTITY` backend: the mapped entity is upserted and the run
    /// ends, in one change; a mapping the catalog refuses ends it FAILURE with the reason.
    pub async fn complete_with_upsert(&self, id: &RunId) -> Result<Run, AppError> {
        self.mutate_run_with(id, |app, run, catalog, change| {
            let action = app.inner.actions.get(&run.action.identifier);
            let Some(Invocation::UpsertEntity(mapping)) = action.map(|a| &a.invocation) else {
                let mut kinds = run.log("the action no longer upserts an entity".into())?;
                kinds.extend(run.finish(RunStatus::Failure, Utc::now())?);
                return Ok(kinds);
            };
            let mark = change.len();
            let upserted = app
                .map_entity(run, mapping, catalog.view())
                .and_then(|entity| Ok(catalog.upsert(entity, true, change)?));
            let mut kinds = Vec::new();
            let status = match upserted {
                Ok(entity) => {
                    let record = EntityChange {
                        blueprint: entity.blueprint,
                        identifier: entity.identifier,
                        operation: ChangeOperation::Upsert,
                    };
                    run.affected_entities.push(record.clone());
                    kinds.push(EventKind::CatalogChanged {
                        changes: vec![record],
                    });
                    RunStatus::Success
                }
                Err(error) => {
                    catalog.rollback();
                    change.truncate(mark);
                    kinds.extend(run.log(format!("the entity could not be upserted: {error}"))?);
                    RunStatus::Failure
                }
            };
            kinds.extend(run.finish(status, Utc::now())?);
            Ok(kinds)
        })
        .await
    }

    /// Upserts an entity through the API; with `run` the run records the change.
    pub async fn upsert_entity(
        &self,
        entity: Entity,
        merge: bool,
        run: Option<&RunId>,
    ) -> Result<Entity, AppError> {
        let change_record = EntityChange {
            blueprint: entity.blueprint.clone(),
            identifier: entity.identifier.clone(),
            operation: ChangeOperation::Upsert,
        };
        let Some(run_id) = run else {
            return self.change_catalog(|catalog, change| catalog.upsert(entity, merge, change));
        };
        // Kept as upserted: read back from the catalog once the lock is gone, it may already
        // have been deleted by another request (that was a panic).
        let mut stored = None;
        self.mutate_run_with(run_id, |_, run, catalog, change| {
            if run.status.is_ended() {
                return Err(RunError::Ended {
                    id: run.id.clone(),
                    status: run.status,
                }
                .into());
            }
            stored = Some(catalog.upsert(entity, merge, change)?);
            run.affected_entities.push(change_record.clone());
            Ok(vec![EventKind::CatalogChanged {
                changes: vec![change_record],
            }])
        })
        .await?;
        Ok(stored.expect("a change that was made upserted the entity"))
    }

    pub async fn delete_entity(
        &self,
        blueprint: &BlueprintId,
        id: &EntityId,
    ) -> Result<(), AppError> {
        self.change_catalog(|catalog, change| catalog.delete(blueprint, id, change))
    }

    /// A catalog change outside any run, committed when `edit` succeeds.
    fn change_catalog<T>(
        &self,
        edit: impl FnOnce(&mut CatalogChange, &mut Change) -> Result<T, CatalogError>,
    ) -> Result<T, AppError> {
        let mut change = Change::default();
        let mut catalog = CatalogChange::begin(&self.inner.catalog);
        let out = edit(&mut catalog, &mut change)?;
        self.inner.store.commit_blocking(change)?;
        catalog.keep();
        Ok(out)
    }

    /// Saves (or, with `None`, drops) a chat form in progress, durably.
    pub async fn save_form(&self, key: &str, form: Option<&Value>) -> Result<(), AppError> {
        let mut change = Change::default();
        change.set_form(key, form);
        Ok(self.inner.store.commit(change).await?)
    }

    pub fn form(&self, key: &str) -> Result<Option<Value>, AppError> {
        Ok(self.inner.store.form(key)?)
    }

    /// Records a backend invocation attempt durably before it is made; returns the attempts
    /// made before this one (non-zero after a restart interrupted an earlier attempt).
    pub async fn begin_invocation(&self, id: &RunId) -> Result<u32, AppError> {
        let previous = self.inner.store.invocation_attempts(id)?;
        let mut change = Change::default();
        change.set_invocation_attempts(id, previous + 1);
        self.inner.store.commit(change).await?;
        Ok(previous)
    }

    async fn lock_run(&self, id: &RunId) -> MutexGuard<'_, ()> {
        let stripe = ids::fnv1a(id.as_str()) as usize % RUN_LOCK_STRIPES;
        self.inner.run_locks[stripe].lock().await
    }

    async fn mutate_run(
        &self,
        id: &RunId,
        decide: impl FnOnce(&App, &mut Run) -> Result<Vec<EventKind>, AppError>,
    ) -> Result<Run, AppError> {
        self.mutate_run_with(id, |app, run, _, _| decide(app, run))
            .await
    }

    /// Loads a run under its lock, lets `decide` change it (and the catalog), applies onSuccess
    /// when the run succeeded, and commits run, events, outbox marks and entities together.
    async fn mutate_run_with(
        &self,
        id: &RunId,
        decide: impl FnOnce(
            &App,
            &mut Run,
            &mut CatalogChange,
            &mut Change,
        ) -> Result<Vec<EventKind>, AppError>,
    ) -> Result<Run, AppError> {
        let guard = self.lock_run(id).await;
        // Synchronous to the end of the block: the catalog's write lock must not cross an await.
        // A change that touched the catalog is committed inside (blocking, rare); any other
        // after the block.
        let (run, events, queued) = {
            let mut run = self.run(id)?;
            let mut change = Change::default();
            let mut catalog = CatalogChange::begin(&self.inner.catalog);
            let mut kinds = decide(self, &mut run, &mut catalog, &mut change)?;
            if kinds.is_empty() {
                return Ok(run);
            }
            if kinds.contains(&EventKind::Ended {
                status: RunStatus::Success,
            }) {
                self.apply_on_success(&mut run, &mut kinds, &mut catalog, &mut change);
            }
            let events = self.stage(&mut run, kinds, &mut change);
            if catalog.touched() {
                self.inner.store.commit_blocking(change)?;
                catalog.keep();
                (run, events, None)
            } else {
                (run, events, Some(change))
            }
        };
        if let Some(change) = queued {
            self.inner.store.commit(change).await?;
        }
        drop(guard);
        self.after_commit(&run, &events);
        Ok(run)
    }

    /// The action's onSuccess catalog changes. If one fails, none is kept and the run ends
    /// FAILURE instead, with the reason in its log: the catalog must not silently drift.
    fn apply_on_success(
        &self,
        run: &mut Run,
        kinds: &mut Vec<EventKind>,
        catalog: &mut CatalogChange,
        change: &mut Change,
    ) {
        let Some(action) = self.inner.actions.get(&run.action.identifier) else {
            return;
        };
        let on_success = &action.on_success;
        if on_success.upsert.is_empty() && on_success.delete.is_empty() {
            return;
        }
        let mark = change.len();
        let mut apply = || -> Result<Vec<EntityChange>, AppError> {
            let mut done = Vec::new();
            for mapping in &on_success.upsert {
                let entity = self.map_entity(run, mapping, catalog.view())?;
                let stored = catalog.upsert(entity, true, change)?;
                done.push(EntityChange {
                    blueprint: stored.blueprint,
                    identifier: stored.identifier,
                    operation: ChangeOperation::Upsert,
                });
            }
            for deletion in &on_success.delete {
                let context = run.template_context(self.run_entity(run, catalog.view()));
                let rendered = template::render_text(&deletion.identifier, &context)?;
                let id = EntityId::try_from(rendered).map_err(|e| TemplateError {
                    template: deletion.identifier.clone(),
                    reason: e.to_string(),
                })?;
                catalog.delete(&deletion.blueprint, &id, change)?;
                done.push(EntityChange {
                    blueprint: deletion.blueprint.clone(),
                    identifier: id,
                    operation: ChangeOperation::Delete,
                });
            }
            Ok(done)
        };
        match apply() {
            Ok(done) => {
                run.affected_entities.extend(done.iter().cloned());
                // Before the final Ended event, so the thread shows the change, then the end.
                kinds.insert(kinds.len() - 1, EventKind::CatalogChanged { changes: done });
            }
            Err(error) => {
                catalog.rollback();
                change.truncate(mark);
                kinds.pop();
                run.status = RunStatus::InProgress;
                run.ended_at = None;
                kinds.push(EventKind::Log {
                    message: format!(
                        "the backend succeeded but the catalog update failed: {error}"
                    ),
                });
                kinds.extend(
                    run.finish(RunStatus::Failure, Utc::now())
                        .expect("the run is in progress"),
                );
            }
        }
    }

    /// The entity a mapping describes, rendered over the run's context.
    fn map_entity(
        &self,
        run: &Run,
        mapping: &EntityMapping,
        catalog: &Catalog,
    ) -> Result<Entity, AppError> {
        let context = run.template_context(self.run_entity(run, catalog));
        let mut rendered = template::render_value(&mapping.mapping, &context)?;
        rendered["blueprint"] = Value::from(mapping.blueprint.as_str());
        for key in ["properties", "relations"] {
            if rendered.get(key).is_none() {
                rendered[key] = Value::Object(Map::new());
            }
        }
        serde_json::from_value(rendered).map_err(|e| {
            AppError::Template(TemplateError {
                template: format!("the {} mapping", mapping.blueprint),
                reason: e.to_string(),
            })
        })
    }

    /// The context an action's templates are rendered over, with the run's entity as the
    /// catalog has it now.
    pub fn template_context(&self, run: &Run) -> Value {
        self.with_run_entity(run, |entity| run.template_context(entity))
    }

    /// Calls `f` with the run's entity as the catalog has it now, without copying it.
    pub fn with_run_entity<T>(&self, run: &Run, f: impl FnOnce(Option<&Entity>) -> T) -> T {
        f(self.run_entity(run, &self.catalog()))
    }

    fn run_entity<'c>(&self, run: &Run, catalog: &'c Catalog) -> Option<&'c Entity> {
        run.entity
            .as_ref()
            .and_then(|e| catalog.entity(&run.blueprint, &e.identifier))
    }

    /// Numbers the events and adds run, events and outbox marks to the change.
    fn stage(&self, run: &mut Run, kinds: Vec<EventKind>, change: &mut Change) -> Vec<RunEvent> {
        let events = run.record(kinds, Utc::now());
        change.put_run(run);
        change.put_events(&events, run.action.identifier.as_str());
        let creates_run = events.first().is_some_and(|e| e.seq == 1);
        for consumer in &self.inner.consumers {
            if let Some(first) = events.iter().find(|e| (consumer.wants)(run, &e.kind)) {
                match creates_run {
                    true => change.mark_new_run_due(consumer.name, &run.id, first.seq),
                    false => change.mark_due(consumer.name, &run.id, first.seq),
                }
            }
        }
        events
    }

    /// After a durable commit: tells metrics and consumers.
    fn after_commit(&self, run: &Run, events: &[RunEvent]) {
        for event in events {
            let entered = match &event.kind {
                EventKind::Created => Some(if run.approval.is_some() {
                    RunStatus::WaitingForApproval
                } else {
                    RunStatus::InProgress
                }),
                EventKind::Started if event.seq > 2 => Some(RunStatus::InProgress),
                EventKind::Ended { status } => Some(*status),
                _ => None,
            };
            if let Some(status) = entered {
                self.inner.metrics.run_entered(status);
            }
        }
        for consumer in &self.inner.consumers {
            if events.iter().any(|e| (consumer.wants)(run, &e.kind)) {
                consumer.notify(&run.id);
            }
        }
    }
}

fn now_ms() -> u64 {
    Utc::now().timestamp_millis() as u64
}
