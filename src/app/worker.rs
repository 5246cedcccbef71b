//! The loop every outbox consumer runs: it learns which runs are due (told at once after each
//! commit, at the time a consumer asked to look at a run again, and from the store at start and
//! every 30 s), and delivers each due run's events with
//! one task per run at a time, so events stay in order per run, and at most `max_concurrent`
//! runs at once; the rest wait their turn. A failed delivery is tried again after a backoff
//! (0.5 s, doubling, at most 30 s); the run stays due in the store meanwhile.

use std::collections::{HashMap, HashSet, VecDeque};
use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use super::{App, AppError};
use crate::core::ids::RunId;

/// How often the store's due marks are read again.
const RESCAN: Duration = Duration::from_secs(30);
/// The first wait before a failed delivery is tried again; it doubles up to `RESCAN`.
const FIRST_RETRY: Duration = Duration::from_millis(500);

/// A consumer's delivery of one run's pending events.
pub trait Deliver: Clone + Send + Sync + 'static {
    /// Delivers what is pending for the run (see [`App::outbox_pending`]) and records it.
    fn deliver(&self, run: &RunId) -> impl Future<Output = Result<(), AppError>> + Send;
}

/// Which runs are being delivered and which wait.
#[derive(Default)]
struct Work {
    in_flight: HashSet<RunId>,
    /// Runs that became due again while being delivered: they are looked at once more.
    recheck: HashSet<RunId>,
    waiting: VecDeque<RunId>,
    queued: HashSet<RunId>,
    /// Deliveries that failed in a row, per run.
    failures: HashMap<RunId, u32>,
}

struct Worker<D> {
    consumer: &'static str,
    deliver: D,
    max_concurrent: usize,
    work: Arc<Mutex<Work>>,
}

impl<D: Clone> Clone for Worker<D> {
    fn clone(&self) -> Self {
        Worker {
            consumer: self.consumer,
            deliver: self.deliver.clone(),
            max_concurrent: self.max_concurrent,
            work: self.work.clone(),
        }
    }
}

/// Starts the worker of `consumer`; it runs until the process stops.
pub fn spawn<D: Deliver>(
    app: App,
    consumer: &'static str,
    deliver: D,
    max_concurrent: usize,
) -> tokio::task::JoinHandle<()> {
    let worker = Worker {
        consumer,
        deliver,
        max_concurrent: max_concurrent.max(1),
        work: Arc::default(),
    };
    tokio::spawn(async move {
        let mut due = app.outbox_subscribe(consumer);
        let mut rescan = tokio::time::interval(RESCAN);
        loop {
            tokio::select! {
                Some(run) = due.recv() => worker.take(run),
                _ = rescan.tick() => match app.outbox_due(consumer) {
                    Ok(runs) => runs.into_iter().for_each(|run| worker.take(run)),
                    Err(error) => tracing::error!(consumer, %error, "cannot read the outbox"),
                },
            }
        }
    })
}

impl<D: Deliver> Worker<D> {
    fn work(&self) -> MutexGuard<'_, Work> {
        self.work.lock().expect("worker lock poisoned")
    }

    /// Starts delivering a due run, or queues it when enough runs are being delivered.
    fn take(&self, run: RunId) {
        let mut work = self.work();
        if work.in_flight.contains(&run) {
            work.recheck.insert(run);
        } else if work.in_flight.len() < self.max_concurrent {
            self.start(&mut work, run);
        } else if work.queued.insert(run.clone()) {
            work.waiting.push_back(run);
        }
    }

    fn start(&self, work: &mut Work, run: RunId) {
        work.in_flight.insert(run.clone());
        let this = self.clone();
        tokio::spawn(async move {
            loop {
                tracing::debug!(consumer = this.consumer, run = %run, "delivering");
                if let Err(error) = this.deliver.deliver(&run).await {
                    let wait = {
                        let mut work = this.work();
                        let failures = work.failures.entry(run.clone()).or_default();
                        *failures += 1;
                        let wait = FIRST_RETRY
                            .saturating_mul(1 << (*failures - 1).min(6))
                            .min(RESCAN);
                        this.finish(&mut work, &run);
                        wait
                    };
                    tracing::warn!(consumer = this.consumer, run = %run, %error, ?wait, "delivery failed; will retry");
                    let retry = this.clone();
                    tokio::spawn(async move {
                        tokio::time::sleep(wait).await;
                        retry.take(run);
                    });
                    return;
                }
                // Checked under the lock: an event that came meanwhile either flagged the run
                // for a recheck, or will start a new delivery in `take`.
                let mut work = this.work();
                work.failures.remove(&run);
                if !work.recheck.remove(&run) {
                    this.finish(&mut work, &run);
                    return;
                }
            }
        });
    }

    /// A run is done with for now: the next waiting run takes its place.
    fn finish(&self, work: &mut Work, run: &RunId) {
        work.in_flight.remove(run);
        work.recheck.remove(run);
        while work.in_flight.len() < self.max_concurrent {
            let Some(next) = work.waiting.pop_front() else {
                break;
            };
            work.queued.remove(&next);
            if !work.in_flight.contains(&next) {
                self.start(work, next);
            }
        }
    }
}
