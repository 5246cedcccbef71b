//! Pacing of a platform's requests, per key: every request takes its key's next slot, so one
//! busy key waits its turn while the others go on. Slack accepts about one message per second
//! per channel (PROTOCOL-NOTES §5), so Slack paces per channel; Discord allows a bot about 50
//! requests per second in all, which Discord only reports once it is exceeded, so Discord paces
//! every request under one key. (A 429 is still waited out by each platform's client.)
//!
//! A pace may also hold every key to one shared budget: Slack keeps a workspace-wide limit on
//! `chat.postMessage` beside the per-channel one. The budget allows a burst of its whole
//! allowance, then one request per share of its period (a token bucket, kept as the time its
//! budget is next full: the generic cell rate algorithm). Urgent slots are reserved, not
//! polled: each such request learns its time at once and sleeps until then, so they go out in
//! the order they asked, and none wakes only to find it must wait again.
//!
//! A budget serves two kinds of request. Urgent ones (a run card, an approval request: someone
//! waits for them) reserve their slot at once and may draw on the whole budget. Bulk ones
//! (thread replies) may draw on it only down to a reserve of a fifth of its allowance, and
//! when that is spent they do not reserve ahead: they queue, and only the first of them
//! watches the budget's clock. Reserved bulk slots would move the clock past any reserve, so
//! an approval request would still wait behind every queued reply.
//!
//! Slack measures the interval between the messages it receives, so a Slack channel's next
//! slot also counts from when its last message was answered ([`Pace::slot`]'s [`Slot`]
//! dropped), not only from when it was due: one that went out late (behind a burst of
//! others) must not let the next follow it sooner. Discord counts requests as they come, and
//! its requests overlap, so it only waits its turn ([`Pace::wait`]).

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::oneshot;
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

/// How much of a shared budget a request may draw on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Priority {
    /// All of it, at once: someone waits for this (a run card, an approval request).
    Urgent,
    /// All but the reserve kept for urgent requests, in turn (thread replies, log lines).
    Bulk,
}

/// At most `allowance` requests at once over all keys, then one every `spacing`.
struct Budget {
    spacing: Duration,
    /// How far `full_at` may be ahead of an urgent request's time: `allowance - 1` spacings.
    tolerance: Duration,
    /// The same for a bulk request: a fifth of the allowance fewer.
    bulk_tolerance: Duration,
    /// When the budget would be whole again if nothing more were taken.
    full_at: Instant,
    /// Whether a bulk request (the head) is watching for the budget to allow it.
    watched: bool,
    /// Bulk requests behind the head, in the order they came; each is told when it is the head.
    waiting: VecDeque<oneshot::Sender<()>>,
}

impl Budget {
    /// The first slot at `at` or after that `tolerance` allows.
    fn earliest(&self, at: Instant, tolerance: Duration) -> Instant {
        match self.full_at > at + tolerance {
            true => self.full_at - tolerance,
            false => at,
        }
    }

    /// Takes a slot at `at`, or as soon after as `tolerance` allows.
    fn take(&mut self, at: Instant, tolerance: Duration) -> Instant {
        let at = self.earliest(at, tolerance);
        self.full_at = self.full_at.max(at) + self.spacing;
        at
    }

    /// When a bulk request for `at` may have its slot, if not at `at`.
    fn bulk_not_before(&self, at: Instant) -> Option<Instant> {
        (self.full_at > at + self.bulk_tolerance).then(|| self.full_at - self.bulk_tolerance)
    }

    /// The head is done: the next waiting bulk request becomes the head, if any.
    fn hand_over(&mut self) {
        while let Some(next) = self.waiting.pop_front() {
            if next.send(()).is_ok() {
                return;
            }
        }
        self.watched = false;
    }
}

/// What a request does next.
enum Step {
    /// Goes at this time; its slot is taken.
    Go(Instant),
    /// As the bulk head, looks again at this time.
    Watch(Instant),
    /// Waits to become the bulk head.
    Queue(oneshot::Receiver<()>),
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
            let tolerance = spacing * (allowance - 1);
            self.lock().shared = Some(Budget {
                spacing,
                tolerance,
                bulk_tolerance: tolerance.saturating_sub(spacing * (allowance / 5)),
                full_at: Instant::now(),
                watched: false,
                waiting: VecDeque::new(),
            });
        }
        self
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().expect("pace lock poisoned")
    }

    /// A bulk head that goes no further passes its turn to the next waiting bulk request.
    fn hand_over_bulk_turn(&self) {
        if let Some(budget) = &mut self.lock().shared {
            budget.hand_over();
        }
    }

    /// Waits for the key's next free slot (and the shared budget's, drawing on all of it), and
    /// takes it; the next slot is one interval after this one's, whenever the request goes out.
    pub async fn wait(&self, key: &str) {
        self.turn(key, Priority::Urgent).await
    }

    /// Takes the key's next free slot as [`Pace::wait`] does, without waiting for it: when the
    /// request may go. A caller that does not go then leaves the slot unused.
    pub fn reserve(&self, key: &str) -> Instant {
        let mut state = self.lock();
        let now = Instant::now();
        let wanted = state.wanted(key, now);
        let at = match &mut state.shared {
            Some(budget) => budget.take(wanted, budget.tolerance),
            None => wanted,
        };
        state.took(key, at + self.interval, now);
        at
    }

    /// When [`Pace::reserve`] would give the key its slot now, without taking it.
    pub fn next_free(&self, key: &str) -> Instant {
        let state = self.lock();
        let wanted = state.wanted(key, Instant::now());
        match &state.shared {
            Some(budget) => budget.earliest(wanted, budget.tolerance),
            None => wanted,
        }
    }

    /// [`Pace::wait`] for a request of `priority`, and the key's next slot is also at least one
    /// interval after the request was answered: keep the slot until then.
    pub async fn slot(&self, key: &str, priority: Priority) -> Slot<'_> {
        self.turn(key, priority).await;
        Slot {
            pace: self,
            key: key.to_owned(),
        }
    }

    async fn turn(&self, key: &str, priority: Priority) {
        if priority == Priority::Urgent {
            return tokio::time::sleep_until(self.reserve(key)).await;
        }
        // Set while this request is the bulk head; passes the turn on if it is dropped.
        let mut head: Option<BulkHead<'_>> = None;
        loop {
            let step = {
                let mut state = self.lock();
                let now = Instant::now();
                let wanted = state.wanted(key, now);
                let step = match &mut state.shared {
                    None => Step::Go(wanted),
                    Some(budget) => {
                        let in_line = budget.watched || !budget.waiting.is_empty();
                        if head.is_none() && in_line {
                            let (told, turn) = oneshot::channel();
                            budget.waiting.push_back(told);
                            Step::Queue(turn)
                        } else if let Some(later) = budget.bulk_not_before(wanted) {
                            budget.watched = true;
                            Step::Watch(later)
                        } else {
                            let at = budget.take(wanted, budget.bulk_tolerance);
                            if let Some(head) = &mut head {
                                head.0 = None;
                                budget.hand_over();
                            }
                            Step::Go(at)
                        }
                    }
                };
                if let Step::Go(at) = step {
                    state.took(key, at + self.interval, now);
                }
                step
            };
            match step {
                Step::Go(at) => return tokio::time::sleep_until(at).await,
                Step::Watch(later) => {
                    head.get_or_insert(BulkHead(Some(self)));
                    tokio::time::sleep_until(later).await;
                }
                Step::Queue(turn) => {
                    let mut waiting = Waiting { turn, pace: self };
                    // Told, or the budget is gone with the pace: either way this is the head.
                    let _ = (&mut waiting.turn).await;
                    head = Some(BulkHead(Some(self)));
                }
            }
        }
    }
}

/// The bulk head's turn: passed on to the next waiting request should the head be dropped
/// (its delivery stopped) before it went.
struct BulkHead<'a>(Option<&'a Pace>);

impl Drop for BulkHead<'_> {
    fn drop(&mut self) {
        if let Some(pace) = self.0 {
            pace.hand_over_bulk_turn();
        }
    }
}

/// A bulk request waiting for its turn; if it is dropped after being told, it passes the turn on.
struct Waiting<'a> {
    turn: oneshot::Receiver<()>,
    pace: &'a Pace,
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        if self.turn.try_recv().is_ok() {
            self.pace.hand_over_bulk_turn();
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
        let mut state = self.pace.lock();
        let slot = state
            .next
            .entry(std::mem::take(&mut self.key))
            .or_insert(next);
        *slot = (*slot).max(next);
    }
}

impl State {
    /// When a request for `key` asking at `now` would want to go, before any shared budget.
    fn wanted(&self, key: &str, now: Instant) -> Instant {
        self.next
            .get(key)
            .copied()
            .filter(|t| *t > now)
            .unwrap_or(now)
    }

    /// A request for `key` took its slot: the key's next one is at `next`.
    fn took(&mut self, key: &str, next: Instant, now: Instant) {
        self.next.insert(key.to_owned(), next);
        self.prune(now);
    }

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
        let slot = pace.slot("C1", Priority::Bulk).await;
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
    async fn a_reserved_slot_is_taken_without_waiting_for_it() {
        let pace = Pace::new(Duration::ZERO).with_shared_budget(3, Duration::from_secs(60));
        let start = Instant::now();
        let turns: Vec<Duration> = (0..5)
            .map(|_| pace.reserve("chat.update") - start)
            .collect();
        assert_eq!(start.elapsed(), Duration::ZERO, "reserving does not wait");
        let secs = Duration::from_secs;
        assert_eq!(turns, [secs(0), secs(0), secs(0), secs(20), secs(40)]);
        // A request that waits comes after every reserved slot.
        pace.wait("chat.update").await;
        assert_eq!(start.elapsed(), secs(60));
    }

    /// Ten per 10 s (a slot a second, two of the ten kept for urgent requests), with the
    /// bulk requests' burst of eight already spent.
    async fn ten_per_ten_seconds_bulk_spent() -> Pace {
        let pace =
            Pace::new(Duration::from_secs(1)).with_shared_budget(10, Duration::from_secs(10));
        let start = Instant::now();
        for n in 0..8 {
            drop(pace.slot(&format!("C{n}"), Priority::Bulk).await);
        }
        assert_eq!(start.elapsed(), Duration::ZERO);
        pace
    }

    /// Starts a bulk request for `key` that records when it went.
    fn bulk(
        pace: &Pace,
        key: &str,
        went: &Arc<Mutex<Vec<(String, Duration)>>>,
        start: Instant,
    ) -> tokio::task::JoinHandle<()> {
        let (pace, key, went) = (pace.clone(), key.to_owned(), went.clone());
        tokio::spawn(async move {
            drop(pace.slot(&key, Priority::Bulk).await);
            went.lock().unwrap().push((key, start.elapsed()));
        })
    }

    #[tokio::test(start_paused = true)]
    async fn urgent_requests_go_ahead_of_queued_bulk_ones() {
        let pace = ten_per_ten_seconds_bulk_spent().await;
        let start = Instant::now();
        let went = Arc::new(Mutex::new(Vec::new()));
        let queued: Vec<_> = (8..12)
            .map(|n| bulk(&pace, &format!("C{n}"), &went, start))
            .collect();
        tokio::task::yield_now().await;
        // Four replies wait; the approval request still goes at once, and so does a second.
        drop(pace.slot("APPROVALS", Priority::Urgent).await);
        pace.wait("C99").await;
        assert_eq!(start.elapsed(), Duration::ZERO, "an urgent request waited");
        for task in queued {
            task.await.unwrap();
        }
        // The replies follow in the order they came, one a second once the budget allows
        // (the two urgent ones took two of its slots).
        let went = went.lock().unwrap().clone();
        let secs = |s| Duration::from_secs(s);
        assert_eq!(
            went,
            vec![
                ("C8".into(), secs(3)),
                ("C9".into(), secs(4)),
                ("C10".into(), secs(5)),
                ("C11".into(), secs(6))
            ]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_bulk_request_dropped_while_it_waits_does_not_hold_up_the_rest() {
        let pace = ten_per_ten_seconds_bulk_spent().await;
        let start = Instant::now();
        let went = Arc::new(Mutex::new(Vec::new()));
        // The head and the first in line are stopped while they wait; the last still goes.
        let head = bulk(&pace, "C8", &went, start);
        tokio::task::yield_now().await;
        let second = bulk(&pace, "C9", &went, start);
        tokio::task::yield_now().await;
        let third = bulk(&pace, "C10", &went, start);
        tokio::task::yield_now().await;
        head.abort();
        second.abort();
        third.await.unwrap();
        assert_eq!(
            *went.lock().unwrap(),
            vec![("C10".to_owned(), Duration::from_secs(1))]
        );
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
