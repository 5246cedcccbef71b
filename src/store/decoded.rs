//! The runs the store wrote last, kept decoded beside the bytes written for them, so that
//! reading a busy run back need not decode its JSON again.
//!
//! A run is read soon after each write: its creation by the dispatcher and the chat
//! consumers, the dispatcher's note by the backend's `PATCH`, that by the delivery's record.
//! Decoding a run's record took about 12,000 instructions under callgrind, three times per
//! created and completed run (8 % of its instructions); a clone of the decoded run costs a
//! fraction of that. A kept run is handed out only while the stored record is byte for byte
//! the one written for it, so a write this cache missed, or one it heard of out of order,
//! can only make it decode, never answer with an older run.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

use crate::core::ids::RunId;
use crate::core::run::Run;

/// How many runs are kept: at 10,000 runs a second, those of the last 200 ms or so, which is
/// when they are read again; about 2 KiB each.
const CAPACITY: usize = 2048;

#[derive(Default)]
pub(super) struct DecodedRuns {
    kept: Mutex<Kept>,
}

#[derive(Default)]
struct Kept {
    runs: HashMap<RunId, Written>,
    /// Oldest first: the order in which runs came in, for dropping the oldest.
    order: VecDeque<RunId>,
}

/// A run as written, and the record written for it.
pub(super) struct Written {
    pub record: Vec<u8>,
    pub run: Run,
}

impl DecodedRuns {
    /// Keeps runs just written, in the order written.
    pub fn keep(&self, written: impl IntoIterator<Item = Written>) {
        let mut kept = self.kept.lock().expect("decoded runs lock poisoned");
        for written in written {
            // What a read is given must be what decoding the record would give; every test
            // run in debug checks it for each run written.
            debug_assert_eq!(
                super::decode::<Run>(&written.record).ok().as_ref(),
                Some(&written.run),
                "a run reads back as it was written"
            );
            let id = written.run.id.clone();
            if kept.runs.insert(id.clone(), written).is_none() {
                kept.order.push_back(id);
            }
        }
        while kept.runs.len() > CAPACITY {
            let Some(oldest) = kept.order.pop_front() else {
                break;
            };
            kept.runs.remove(&oldest);
        }
    }

    /// The run whose stored record is `record`, if it is the one kept for it.
    pub fn get(&self, id: &RunId, record: &[u8]) -> Option<Run> {
        let kept = self.kept.lock().expect("decoded runs lock poisoned");
        kept.runs
            .get(id)
            .filter(|written| written.record == record)
            .map(|written| written.run.clone())
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    /// A run like the ones portbot stores, created at `n` ms.
    pub(crate) fn run(n: u64) -> Run {
        serde_json::from_value(serde_json::json!({
            "id": RunId::new(n, 0, 0), "status": "IN_PROGRESS", "statusLabel": null,
            "link": null, "summary": null,
            "action": {"identifier": "add-documentdb", "title": "Add a DocumentDB"},
            "blueprint": "service", "operation": "DAY-2",
            "entity": {"identifier": "mailer", "properties": {"instances": 1}},
            "properties": {"instances": 3}, "createdBy": "dev@example.com", "origin": "API",
            "createdAt": "2026-12-02T17:00:00.123456789Z",
            "updatedAt": "2026-12-02T17:00:00.123456789Z", "endedAt": null,
            "approval": null, "affectedEntities": [], "lastSeq": 2
        }))
        .expect("the sample run decodes")
    }

    fn written(run: &Run) -> Written {
        Written {
            record: serde_json::to_vec(run).unwrap(),
            run: run.clone(),
        }
    }

    #[test]
    fn a_kept_run_is_given_only_for_the_record_written_for_it() {
        let cache = DecodedRuns::default();
        let mut first = run(1);
        cache.keep([written(&first)]);
        let record = serde_json::to_vec(&first).unwrap();
        assert_eq!(cache.get(&first.id, &record), Some(first.clone()));
        first.last_seq += 1;
        let newer = serde_json::to_vec(&first).unwrap();
        assert_eq!(cache.get(&first.id, &newer), None, "a write it missed");
        cache.keep([written(&first)]);
        assert_eq!(cache.get(&first.id, &record), None, "an older record");
        assert_eq!(cache.get(&first.id, &newer), Some(first));
    }

    #[test]
    fn the_oldest_runs_make_room() {
        let cache = DecodedRuns::default();
        let runs: Vec<Run> = (0..CAPACITY as u64 + 10).map(run).collect();
        cache.keep(runs.iter().map(written));
        // Written again: it keeps its place in the order.
        cache.keep([written(&runs[20])]);
        let held = |r: &Run| cache.get(&r.id, &serde_json::to_vec(r).unwrap()).is_some();
        assert!(!held(&runs[9]) && held(&runs[10]) && held(&runs[CAPACITY + 9]));
        assert_eq!(cache.kept.lock().unwrap().order.len(), CAPACITY);
    }
}
