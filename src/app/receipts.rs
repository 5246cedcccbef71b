//! Inbound deliveries already taken, by their platform's id (a Slack command's `trigger_id`, a
//! Discord interaction's id, GitHub's `X-GitHub-Delivery`, the key of the chat form a run was
//! asked in), so that the same delivery arriving again (a platform's retry, a duplicate, a replay,
//! a form submitted twice) is answered and not applied twice.
//!
//! PROTOCOL-NOTES asks for at least an hour, across restarts. A delivery is *claimed* in memory,
//! under one lock, so two copies arriving together cannot both pass. The claim is *kept* once the
//! change it belongs to is durable: its receipt is written in that same store change (a run's
//! creation, say), so after a crash a delivery is either taken together with what it did or not
//! at all. A claim dropped without being kept (the request was refused, the store failed) is
//! released, so the delivery is taken when it comes again. (A request cancelled after its
//! change reached the log but before the claim was kept releases it too: until a restart, a
//! copy would be taken again. Nothing portbot does cancels them; a client hanging up does not.)
//! At start the receipts of the last [`KEPT`] are read back from the store; older ones are
//! removed from it by the later changes that carry a claim (at most [`REMOVED_PER_CHANGE`]
//! each, put back when that change fails).
//!
//! A form's receipt is not stored: the run's change drops the form itself, and a form that is
//! gone cannot be submitted again.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use sha2::{Digest, Sha256};

use crate::core::ids::RunId;
use crate::store::{Change, StoredReceipt};

/// How long a delivery is remembered.
pub const KEPT: Duration = Duration::from_secs(3600);

/// Receipts remembered at most; past it the oldest are forgotten early (at a hundred thousand
/// commands an hour a chat bot is under attack, and memory must stay bounded). Claims still in
/// flight are never forgotten early.
const AT_MOST: usize = 100_000;

/// Expired receipts one change removes at most, so that a change stays small after a start
/// that found many.
const REMOVED_PER_CHANGE: usize = 1_000;

/// Delivery ids longer than this are remembered by their hash (ids are a platform's, but a
/// store entry's key must stay short).
const LONGEST_ID: usize = 128;

/// What a request came in as, for [`Receipts`].
#[derive(Debug, Clone, Copy)]
pub enum Received<'a> {
    /// A platform's delivery, by an id unique to it (prefixed with the platform's name).
    Delivery(&'a str),
    /// A submission of the chat form with this key.
    Form(&'a str),
}

/// The same delivery was taken already.
#[derive(Debug, Clone, PartialEq)]
pub struct Repeated {
    /// The run it made; `None` while its first copy is still being handled, or when it made none.
    pub run: Option<RunId>,
}

#[derive(Default)]
pub struct Receipts {
    taken: Mutex<Taken>,
}

#[derive(Default)]
struct Taken {
    by_id: HashMap<Arc<str>, Entry>,
    /// Ids by the time they were claimed, to forget them in that order.
    order: VecDeque<(u64, Arc<str>)>,
    /// Stored receipts forgotten here, for the next change that writes a receipt to remove.
    expired: Vec<(u64, Arc<str>)>,
}

struct Entry {
    at_ms: u64,
    state: State,
    stored: bool,
}

enum State {
    InFlight,
    Kept(Option<RunId>),
}

/// A delivery claimed and not kept yet: dropped without [`Claim::keep`], it is released.
pub struct Claim {
    receipts: Arc<Receipts>,
    id: Arc<str>,
    at_ms: u64,
    stored: bool,
    kept: bool,
    /// Expired receipts [`Claim::record`] put in its change for removal: given back when the
    /// claim is dropped without being kept, so a later change removes them.
    removing: Vec<(u64, Arc<str>)>,
}

/// The id a delivery is remembered by: forms and deliveries apart, long ids by their hash.
fn remembered_id(received: Received<'_>) -> String {
    let (kind, id) = match received {
        Received::Delivery(id) => ("d:", id),
        Received::Form(key) => ("form:", key),
    };
    match id.len() > LONGEST_ID {
        true => format!(
            "{kind}sha256:{}",
            hex::encode(Sha256::digest(id.as_bytes()))
        ),
        false => format!("{kind}{id}"),
    }
}

impl Receipts {
    /// Receipts read back from the store: those taken within [`KEPT`] of `now_ms` are
    /// remembered, the others are removed by the next change that stores one.
    pub fn load(stored: Vec<StoredReceipt>, now_ms: u64) -> Receipts {
        let receipts = Receipts::default();
        {
            let mut taken = receipts.lock();
            for receipt in stored {
                let id: Arc<str> = Arc::from(receipt.delivery);
                taken.order.push_back((receipt.at_ms, id.clone()));
                let state = State::Kept(receipt.run);
                let entry = Entry {
                    at_ms: receipt.at_ms,
                    state,
                    stored: true,
                };
                // The same id taken twice (over an hour apart): the older one only waits to
                // be removed. (Read in time order: keys sort by their fixed-width time.)
                if let Some(older) = taken.by_id.insert(id.clone(), entry) {
                    taken.expired.push((older.at_ms, id));
                }
            }
            taken.forget_old(now_ms);
        }
        receipts
    }

    fn lock(&self) -> MutexGuard<'_, Taken> {
        self.taken.lock().expect("receipts poisoned")
    }

    /// Claims a delivery at `now_ms`, or says it was taken already.
    pub fn claim(self: &Arc<Self>, received: Received<'_>, now_ms: u64) -> Result<Claim, Repeated> {
        let stored = matches!(received, Received::Delivery(_));
        let id: Arc<str> = Arc::from(remembered_id(received));
        let mut taken = self.lock();
        taken.forget_old(now_ms);
        if let Some(entry) = taken.by_id.get(&id) {
            return Err(Repeated {
                run: match &entry.state {
                    State::Kept(run) => run.clone(),
                    State::InFlight => None,
                },
            });
        }
        taken.order.push_back((now_ms, id.clone()));
        let entry = Entry {
            at_ms: now_ms,
            state: State::InFlight,
            stored: false,
        };
        taken.by_id.insert(id.clone(), entry);
        Ok(Claim {
            receipts: Arc::clone(self),
            id,
            at_ms: now_ms,
            stored,
            kept: false,
            removing: Vec::new(),
        })
    }
}

impl Taken {
    /// Forgets what was claimed more than [`KEPT`] before `now_ms`, or past [`AT_MOST`].
    fn forget_old(&mut self, now_ms: u64) {
        let kept_ms = KEPT.as_millis() as u64;
        // Each entry is looked at once at most, so claims in flight put back cannot loop.
        for _ in 0..self.order.len() {
            let Some((at_ms, _)) = self.order.front() else {
                break;
            };
            let expired = now_ms.saturating_sub(*at_ms) >= kept_ms;
            if !expired && self.by_id.len() <= AT_MOST {
                break;
            }
            let (at_ms, id) = self.order.pop_front().expect("looked at just now");
            // An id released (and perhaps claimed again) has no entry of this time.
            let Some(entry) = self.by_id.get(&id).filter(|e| e.at_ms == at_ms) else {
                continue;
            };
            if !expired && matches!(entry.state, State::InFlight) {
                self.order.push_back((at_ms, id));
                continue;
            }
            if self.by_id.remove(&id).is_some_and(|e| e.stored) {
                self.expired.push((at_ms, id));
            }
        }
        // Released claims leave their place in `order`; a flood of them is dropped here.
        if self.order.len() > 2 * AT_MOST.max(self.by_id.len()) {
            let by_id = &self.by_id;
            self.order
                .retain(|(at_ms, id)| by_id.get(id).is_some_and(|e| e.at_ms == *at_ms));
        }
    }
}

impl Claim {
    /// Adds the receipt to `change`, the change that does what the delivery asked, with the
    /// removal of receipts forgotten since; [`Claim::keep`] once it is committed.
    pub fn record(&mut self, change: &mut Change, run: Option<&RunId>) {
        if self.stored {
            change.put_receipt(self.at_ms, &self.id, run);
        }
        {
            let mut taken = self.receipts.lock();
            let from = taken.expired.len().saturating_sub(REMOVED_PER_CHANGE);
            self.removing.extend(taken.expired.drain(from..));
        }
        for (at_ms, id) in &self.removing {
            change.remove_receipt(*at_ms, id);
        }
    }

    /// The delivery's change is durable: it stays taken, with the run it made.
    pub fn keep(mut self, run: Option<RunId>) {
        self.kept = true;
        let mut taken = self.receipts.lock();
        if let Some(entry) = taken.by_id.get_mut(&self.id) {
            if entry.at_ms == self.at_ms {
                entry.state = State::Kept(run);
                entry.stored = self.stored;
            }
        }
    }
}

impl Drop for Claim {
    fn drop(&mut self) {
        if self.kept {
            return;
        }
        let mut taken = self.receipts.lock();
        taken.expired.append(&mut self.removing);
        if taken
            .by_id
            .get(&self.id)
            .is_some_and(|e| e.at_ms == self.at_ms)
        {
            taken.by_id.remove(&self.id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOUR_MS: u64 = 3_600_000;

    fn run() -> RunId {
        RunId::new(1, 0, 0)
    }

    #[test]
    fn a_delivery_is_taken_once_and_its_run_is_named_when_it_comes_again() {
        let receipts = Arc::new(Receipts::default());
        let first = receipts.claim(Received::Delivery("slack:T1"), 0).unwrap();
        let again = receipts.claim(Received::Delivery("slack:T1"), 1).err();
        assert_eq!(again, Some(Repeated { run: None }), "in flight");
        first.keep(Some(run()));
        let again = receipts.claim(Received::Delivery("slack:T1"), 2).err();
        assert_eq!(again, Some(Repeated { run: Some(run()) }));
        assert!(
            receipts.claim(Received::Form("slack:T1"), 3).is_ok(),
            "forms apart"
        );
    }

    #[test]
    fn a_claim_dropped_without_being_kept_is_released() {
        let receipts = Arc::new(Receipts::default());
        drop(receipts.claim(Received::Delivery("d1"), 0).unwrap());
        let again = receipts.claim(Received::Delivery("d1"), 1).unwrap();
        again.keep(None);
        assert!(receipts.claim(Received::Delivery("d1"), 2).is_err());
    }

    #[test]
    fn a_receipt_is_forgotten_after_an_hour_and_then_removed_from_the_store() {
        let receipts = Arc::new(Receipts::default());
        let mut change = Change::default();
        let mut first = receipts.claim(Received::Delivery("d1"), 0).unwrap();
        first.record(&mut change, Some(&run()));
        assert_eq!(change.len(), 1, "the receipt");
        first.keep(Some(run()));
        assert!(receipts
            .claim(Received::Delivery("d1"), HOUR_MS - 1)
            .is_err());
        let mut later = receipts.claim(Received::Delivery("d2"), HOUR_MS).unwrap();
        let mut change = Change::default();
        later.record(&mut change, None);
        assert_eq!(change.len(), 2, "d2's receipt and d1's removal");
        assert!(receipts.claim(Received::Delivery("d1"), HOUR_MS).is_ok());
    }

    #[test]
    fn receipts_read_back_are_remembered_for_the_rest_of_their_hour() {
        let stored = |at_ms, delivery: &str| StoredReceipt {
            at_ms,
            delivery: delivery.into(),
            run: Some(run()),
        };
        let loaded = Receipts::load(vec![stored(0, "d:old"), stored(10, "d:new")], HOUR_MS + 5);
        let receipts = Arc::new(loaded);
        assert_eq!(
            receipts.claim(Received::Delivery("new"), HOUR_MS + 6).err(),
            Some(Repeated { run: Some(run()) })
        );
        let mut old = receipts
            .claim(Received::Delivery("old"), HOUR_MS + 6)
            .unwrap();
        let mut change = Change::default();
        old.record(&mut change, None);
        assert_eq!(
            change.len(),
            2,
            "old's new receipt and its expired one's removal"
        );
    }

    #[test]
    fn a_change_removes_a_bounded_number_of_expired_receipts() {
        let stored = (0..2_500)
            .map(|n| StoredReceipt {
                at_ms: n,
                delivery: format!("d:{n}"),
                run: None,
            })
            .collect();
        let receipts = Arc::new(Receipts::load(stored, 2 * HOUR_MS));
        for (n, removed) in [(0, 1_000), (1, 1_000), (2, 500), (3, 0)] {
            let mut claim = receipts
                .claim(Received::Delivery(&format!("new{n}")), 2 * HOUR_MS)
                .unwrap();
            let mut change = Change::default();
            claim.record(&mut change, None);
            assert_eq!(change.len(), 1 + removed);
            claim.keep(None);
        }
    }

    #[test]
    fn removals_of_a_change_that_failed_go_to_the_next() {
        let stored = vec![StoredReceipt {
            at_ms: 0,
            delivery: "d:old".into(),
            run: None,
        }];
        let receipts = Arc::new(Receipts::load(stored, 2 * HOUR_MS));
        let mut failed = receipts
            .claim(Received::Delivery("a"), 2 * HOUR_MS)
            .unwrap();
        let mut change = Change::default();
        failed.record(&mut change, None);
        assert_eq!(change.len(), 2);
        drop(failed);
        let mut next = receipts
            .claim(Received::Delivery("a"), 2 * HOUR_MS)
            .unwrap();
        let mut change = Change::default();
        next.record(&mut change, None);
        assert_eq!(change.len(), 2, "the receipt and the removal given back");
    }

    #[test]
    fn an_id_stored_twice_has_its_older_receipt_removed() {
        let stored = |at_ms| StoredReceipt {
            at_ms,
            delivery: "d:x".into(),
            run: None,
        };
        let receipts = Arc::new(Receipts::load(
            vec![stored(0), stored(HOUR_MS)],
            HOUR_MS + 1,
        ));
        assert!(receipts
            .claim(Received::Delivery("x"), HOUR_MS + 2)
            .is_err());
        let mut other = receipts
            .claim(Received::Delivery("y"), HOUR_MS + 2)
            .unwrap();
        let mut change = Change::default();
        other.record(&mut change, None);
        assert_eq!(change.len(), 2, "y's receipt and x's older one's removal");
    }

    #[test]
    fn past_the_cap_the_oldest_kept_go_but_claims_in_flight_stay() {
        let receipts = Arc::new(Receipts::default());
        let in_flight = receipts.claim(Received::Delivery("first"), 0).unwrap();
        for n in 0..AT_MOST + 10 {
            let id = format!("d{n}");
            receipts
                .claim(Received::Delivery(&id), 1)
                .unwrap()
                .keep(None);
        }
        assert_eq!(
            receipts.claim(Received::Delivery("first"), 2).err(),
            Some(Repeated { run: None }),
            "still in flight"
        );
        assert!(
            receipts.claim(Received::Delivery("d0"), 2).is_ok(),
            "forgotten early"
        );
        assert!(receipts.claim(Received::Delivery("d500"), 2).is_err());
        in_flight.keep(None);
        assert!(receipts.lock().by_id.len() <= AT_MOST + 1);
    }

    #[test]
    fn released_claims_leave_no_lasting_trace() {
        let receipts = Arc::new(Receipts::default());
        for n in 0..3 * AT_MOST {
            drop(
                receipts
                    .claim(Received::Delivery(&format!("d{n}")), 1)
                    .unwrap(),
            );
        }
        assert!(receipts.lock().order.len() <= 2 * AT_MOST + 1);
    }

    #[test]
    fn long_ids_are_remembered_by_their_hash() {
        let long = "x".repeat(1000);
        let receipts = Arc::new(Receipts::default());
        receipts
            .claim(Received::Delivery(&long), 0)
            .unwrap()
            .keep(None);
        assert!(receipts.claim(Received::Delivery(&long), 1).is_err());
        assert!(remembered_id(Received::Delivery(&long)).len() < 80);
    }
}
