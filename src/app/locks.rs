//! Locks on the files a GITOPS run changes, as Atlantis locks a project: while a run is
//! active (waiting for approval or in progress) no other run may change the same file in the
//! same repository. A second request is refused at once, naming the run that holds the file.
//!
//! The locks need no records of their own: they are the file paths of the active runs, which
//! the store keeps durably, so a lock survives a restart and is released when its run ends.
//! Requests that take locks are serialised, so two cannot both find the file free.

use super::{App, AppError};
use crate::core::action::{Action, Invocation, RequestError};
use crate::core::run::Run;

impl App {
    /// Refuses `run` (not stored yet) when an active run holds one of its files.
    pub(super) fn check_locks(&self, action: &Action, run: &Run) -> Result<(), AppError> {
        let Invocation::Gitops(gitops) = &action.invocation else {
            return Ok(());
        };
        let wanted = gitops.lock_keys(&self.template_context(run))?;
        let gitops = |a: &Action| matches!(a.invocation, Invocation::Gitops(_));
        for active in self.active_runs_of(gitops)? {
            let Ok(Invocation::Gitops(theirs)) = self
                .action(active.action.identifier.as_str())
                .map(|a| &a.invocation)
            else {
                continue;
            };
            // A run whose paths no longer render (its entity is gone) holds nothing it could
            // still write; it must not block every other request.
            let Ok(held) = theirs.lock_keys(&self.template_context(&active)) else {
                continue;
            };
            if let Some(resource) = wanted.iter().find(|key| held.contains(key)) {
                return Err(RequestError::Locked {
                    resource: resource.clone(),
                    holder: active.id,
                }
                .into());
            }
        }
        Ok(())
    }
}
