//! Pacing of a platform's requests, per key: every request takes its key's next slot, so one
//! busy key waits its turn while the others go on. Slack accepts about one message per second
//! per channel (PROTOCOL-NOTES §5), so Slack paces per channel; Discord allows a bot about 50
//! requests per second in all, which Discord only reports once it is exceeded, so Discord paces
//! every request under one key. (A 429 is still waited out by each platform's client.)
//!
//! A pace may also hold every key to one shared budget: Slack keeps a workspace-wide limit on
//! `chat.postMessage` beside the per-channel one. The budget allows a burst of its whole
//! allowance, then one request per share of its period (a token bucket, kept as the time its
//! budget is next full: the generic cell rate algorithm). Slots are reserved, not polled:
//! each request learns its time at once and sleeps until then, so waiting requests go out in
//! the order they asked, and none wakes only to find it must wait again.
//!
//! Slack measures the interval between the messages it receives, so a Slack channel's next
//! slot also counts from when its last message was answered ([`Pace::slot`]'s [`Slot`]
//! dropped), not only from when it was due: one that went out late (behind a burst of
//! others) must not let the next follow it sooner. Discord counts requests as they come, and
//! its requests overlap, so it only waits its turn ([`Pace::wait`]).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

#[derive(Clone)]
pub struct Pace {
    interval: Duration,
    state: Arc<Mutex<State>>,
}

struct State {
    /// Each key's next free slot. Keys whose slot has passed are dropped now and then, so a
    /// bot that posts to many channels does not keep one entry per channel forever.
    next: HashMap<String, Instant>,
    /// The length of `next` after it was last pruned.
    pruned_at: usize,
    shared: Option<Budget>,
}

/// At most `allowance` requests at once over all keys, then one every `spacing`.
struct Budget {
    spacing: Duration,
    /// How far `full_at` may be ahead of a request's time: `allowance - 1` spacings.
    tolerance: Duration,
    /// When the budget would be whole again if nothing more were taken.
    full_at: Instant,
}

impl Pace {
    pub fn new(interval: Duration) -> Pace {
        Pace {
            interval,
            state: Arc::new(Mutex::new(State {
                next: HashMap::new(),
                pruned_at: 0,
                shared: None,
            })),
        }
    }

    /// Holds every key together to `allowance` requests per `period` (none when 0): a burst
    /// of `allowance`, then one each `period / allowance`.
    pub fn with_shared_budget(self, allowance: u32, period: Duration) -> Pace {
        if allowance > 0 {
            let spacing = period / allowance;
            self.state.lock().expect("pace lock poisoned").shared = Some(Budget {
                spacing,
                tolerance: spacing * (allowance - 1),
                full_at: Instant::now(),
            });
        }
        self
    }

    /// Waits for the key's next free slot (and the shared budget's), and takes it; the next
    /// slot is one interval after this one's, whenever the request goes out.
    pub async fn wait(&self, key: &str) {
        let at = {
            let mut state = self.state.lock().expect("pace lock poisoned");
            let now = Instant::now();
            let mut at = state
                .next
                .get(key)
                .copied()
                .filter(|t| *t > now)
                .unwrap_or(now);
            if let Some(budget) = &mut state.shared {
                if budget.full_at > at + budget.tolerance {
                    at = budget.full_at - budget.tolerance;
                }
                budget.full_at = budget.full_at.max(at) + budget.spacing;
            }
            state.next.insert(key.to_owned(), at + self.interval);
            state.prune(now);
            at
        };
        tokio::time::sleep_until(at).await;
    }

    /// [`Pace::wait`], and the key's next slot is also at least one interval after the request
    /// was answered: keep the slot until then.
    pub async fn slot(&self, key: &str) -> Slot<'_> {
        self.wait(key).await;
        Slot {
            pace: self,
            key: key.to_owned(),
        }
    }
}

/// A request's turn; when it is dropped, its key's next slot is at least an interval away.
#[must_use = "the key's next slot counts from when the slot is dropped"]
pub struct Slot<'a> {
    pace: &'a Pace,
    key: String,
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        let next = Instant::now() + self.pace.interval;
        let mut state = self.pace.state.lock().expect("pace lock poisoned");
        let slot = state
            .next
            .entry(std::mem::take(&mut self.key))
            .or_insert(next);
        *slot = (*slot).max(next);
    }
}

impl State {
    /// Drops the keys whose slot has passed once `next` has doubled since the last time, so
    /// each request pays for its pruning in constant time on average.
    fn prune(&mut self, now: Instant) {
        if self.next.len() > 2 * self.pruned_at.max(512) {
            self.next.retain(|_, slot| *slot > now);
            self.pruned_at = self.next.len();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn one_channel_waits_its_turn_and_others_do_not() {
        let pace = Pace::new(Duration::from_secs(1));
        let start = Instant::now();
        pace.wait("C1").await;
        pace.wait("C2").await;
        assert_eq!(start.elapsed(), Duration::ZERO);
        pace.wait("C1").await;
        assert_eq!(start.elapsed(), Duration::from_secs(1));
    }

    #[tokio::test(start_paused = true)]
    async fn a_turn_alone_counts_from_when_it_was_due() {
        let pace = Pace::new(Duration::from_secs(1));
        let start = Instant::now();
        pace.wait("global").await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        pace.wait("global").await;
        assert_eq!(start.elapsed(), Duration::from_secs(1));
    }

    #[tokio::test(start_paused = true)]
    async fn the_interval_counts_from_the_answer_when_that_came_late() {
        let pace = Pace::new(Duration::from_secs(1));
        let start = Instant::now();
        let slot = pace.slot("C1").await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        drop(slot);
        pace.wait("C1").await;
        assert_eq!(start.elapsed(), Duration::from_millis(1_300));
    }

    #[tokio::test(start_paused = true)]
    async fn a_shared_budget_allows_its_burst_then_spaces_every_channel() {
        // 3 a minute: a burst of three, then one every 20 s, whichever the channel.
        let pace = Pace::new(Duration::from_secs(1)).with_shared_budget(3, Duration::from_secs(60));
        let start = Instant::now();
        for channel in ["C1", "C2", "C3"] {
            pace.wait(channel).await;
        }
        assert_eq!(start.elapsed(), Duration::ZERO);
        pace.wait("C4").await;
        assert_eq!(start.elapsed(), Duration::from_secs(20));
        pace.wait("C5").await;
        assert_eq!(start.elapsed(), Duration::from_secs(40));
        // Idle for a while, the budget fills up again, but never beyond its allowance.
        tokio::time::sleep(Duration::from_secs(600)).await;
        let idle_end = Instant::now();
        for channel in ["C1", "C2", "C3", "C4"] {
            pace.wait(channel).await;
        }
        assert_eq!(idle_end.elapsed(), Duration::from_secs(20));
    }

    #[tokio::test(start_paused = true)]
    async fn a_channel_s_own_pace_still_holds_under_a_shared_budget() {
        let pace =
            Pace::new(Duration::from_secs(1)).with_shared_budget(600, Duration::from_secs(60));
        let start = Instant::now();
        pace.wait("C1").await;
        pace.wait("C1").await;
        assert_eq!(start.elapsed(), Duration::from_secs(1));
    }

    #[tokio::test(start_paused = true)]
    async fn waiting_requests_are_served_in_the_order_they_asked() {
        let pace = Pace::new(Duration::from_secs(1)).with_shared_budget(1, Duration::from_secs(1));
        let order = Arc::new(Mutex::new(Vec::new()));
        let mut tasks = Vec::new();
        for n in 0..5 {
            let (pace, order) = (pace.clone(), order.clone());
            tasks.push(tokio::spawn(async move {
                pace.wait(&format!("C{n}")).await;
                order.lock().unwrap().push(n);
            }));
            tokio::task::yield_now().await;
        }
        for task in tasks {
            task.await.unwrap();
        }
        assert_eq!(*order.lock().unwrap(), vec![0, 1, 2, 3, 4]);
    }

    #[tokio::test(start_paused = true)]
    async fn channels_whose_slot_has_passed_are_forgotten() {
        let pace = Pace::new(Duration::from_secs(1));
        for n in 0..2_000 {
            pace.wait(&format!("C{n}")).await;
            if n == 999 {
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
        }
        let kept = pace.state.lock().unwrap().next.len();
        assert!(kept < 2_000, "{kept} channels kept");
    }
}
