//! The runtime for work nobody is waiting on: outbox deliveries (run cards, thread replies,
//! approval requests), backend invocations and GitHub polling.
//!
//! That work shares the machine with the requests, and a burst of it took the CPU from the
//! answers a user or an API client waits for: in the Slack bench every card is paced to its
//! channel's second, so up to `slack.max_concurrent` deliveries start at the same moment, and for
//! about 150 ms of each second acks came at a third of their rate (`docs/benchmarks.md`,
//! 2026-12-02). So this work has threads of its own that the OS runs behind the request threads
//! (nice [`NICE`]); programs a COMMAND backend starts inherit it. When the requests leave the CPU
//! idle, the background has all of it; when they do not, it waits, and nothing is lost by
//! waiting: what is due is in the store's outbox.

use std::io;

use tokio::runtime::{EnterGuard, Handle, Runtime};

/// How far behind the request threads the background threads are scheduled: the `nice` value,
/// at which a busy thread gets about a third of the CPU a busy request thread does. Further
/// back (10, 19) made completing a run slower in `api_runs` (p99 21–25 ms against 17–18): a
/// background task that holds a run's lock across its commit is resumed later, and the request
/// waiting for that lock with it.
const NICE: libc::c_int = 5;

/// The background runtime; it stops, dropping its tasks, when this is dropped.
pub struct Background {
    runtime: Option<Runtime>,
}

impl Background {
    pub fn start() -> io::Result<Background> {
        let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .thread_name("portbot-background")
            .on_thread_start(lower_priority)
            .enable_all()
            .build()?;
        Ok(Background {
            runtime: Some(runtime),
        })
    }

    /// While the guard lives, `tokio::spawn` on this thread spawns onto the background runtime.
    pub fn enter(&self) -> EnterGuard<'_> {
        self.handle().enter()
    }

    pub fn handle(&self) -> &Handle {
        self.runtime
            .as_ref()
            .expect("the runtime lives as long as this")
            .handle()
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        // Without waiting: this may be dropped on a thread of another runtime.
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

/// Lowers the calling thread's priority: on Linux a thread has a nice value of its own, and
/// `setpriority` with `who` 0 sets the caller's.
fn lower_priority() {
    // SAFETY: setpriority reads no memory of ours; it only changes this thread's nice value.
    let set = unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, NICE) };
    if set != 0 {
        tracing::warn!(error = %io::Error::last_os_error(), "background threads run at normal priority");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn background_threads_run_behind_the_others() {
        let background = Background::start().unwrap();
        let nice = background.handle().block_on(async {
            tokio::spawn(async {
                // SAFETY: getpriority reads no memory of ours.
                unsafe { libc::getpriority(libc::PRIO_PROCESS, 0) }
            })
            .await
            .unwrap()
        });
        assert_eq!(nice, NICE);
    }
}
