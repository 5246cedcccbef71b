//! The only module that touches sled: runs, run events, the outbox, backend invocation marks,
//! chat forms and catalog entities, in one tree. A [`Change`] is one atomic record in the
//! write-ahead log, so after a crash it is either wholly there or not at all.
//!
//! Writes become durable through a write-ahead log (`wal`), whose writer thread is sled's only
//! writer: [`Store::commit`] returns once a change is logged, synced and applied, and changes
//! waiting at the same time share one sync (group commit), so a busy server pays one
//! `fdatasync` per group of requests. sled itself is flushed at checkpoints.
//!
//! Key layout (`/` separated, numbers big-endian so that byte order is numeric order):
//!
//! | key                       | value                                    |
//! |---------------------------|------------------------------------------|
//! | `run/<run>`               | the run (JSON)                           |
//! | `ev/<run>/<seq>`          | events up to `<seq>`, the last one's (JSON: one event, or an array of them): one change's, or several changes' that reached sled together |
//! | `active/<run>`            | the run's action id; the run has not ended |
//! | `due/<consumer>/<run>`    | the run has events to deliver, from this seq on, or the consumer kept it due for a later step (8 bytes; empty in stores before that: see `cur/`) |
//! | `cur/<consumer>/<run>`    | seq of the last delivered event, as stores before due marks held a seq wrote it |
//! | `ref/<consumer>/<run>`    | what the consumer keeps (chat message ids) |
//! | `inv/<run>`               | backend invocation attempts so far       |
//! | `form/<key>`              | a chat form (modal) in progress          |
//! | `ent/<blueprint>/<id>`    | an entity (JSON)                         |
//! | `src/<blueprint>/<id>`    | hash of the catalog file it was loaded from |
//! | `rcpt/t_<ms>/<delivery>`  | an inbound delivery taken at `<ms>` (12 hex digits), and the run it made, if any (see `app::receipts`) |
//!
//! These are the keys the store reads and writes. In sled, `active/`, `due/`, `rcpt/` and `run/`
//! entries live in chunks of many entries each (`ix/...`, see `chunks`), since sled's cost is
//! per key; for the same reason a run's `ev/` keys that reach sled in the same drain become one
//! (`memtable`'s [`Merging`]), so a reader of events takes a key to hold any events before its
//! own too.

mod chunks;
mod decoded;
mod memtable;
mod wal;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::core::catalog::Entity;
use crate::core::ids::{BlueprintId, EntityId, RunId};
use crate::core::run::{EventKind, Run, RunEvent, RunStatus};
use chunks::{Chunking, Family};
use decoded::{DecodedRuns, Written};
use memtable::{Merging, Tree};
use wal::{Wal, Write};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("storage: {0}")]
    Sled(#[from] sled::Error),
    #[error("storage: a stored record does not decode: {0}")]
    Decode(#[from] serde_json::Error),
    #[error("storage: the database could not be flushed: {0}")]
    Flush(String),
}

pub type StoreResult<T> = Result<T, StoreError>;

#[derive(Clone)]
pub struct Store {
    tree: Arc<Tree>,
    wal: Arc<Wal>,
    decoded: Arc<DecodedRuns>,
}

/// A run's stored record (see [`Store::run_record`]); records compare by their bytes.
pub struct RunRecord {
    id: RunId,
    bytes: sled::IVec,
    decoded: Arc<DecodedRuns>,
}

impl PartialEq for RunRecord {
    fn eq(&self, other: &RunRecord) -> bool {
        self.bytes == other.bytes
    }
}

impl RunRecord {
    /// The run: as written, where the store kept it decoded (see `decoded`).
    pub fn decode(&self) -> StoreResult<Run> {
        match self.decoded.get(&self.id, &self.bytes) {
            Some(run) => Ok(run),
            None => Ok(decode(&self.bytes)?),
        }
    }
}

/// A set of writes committed atomically by [`Store::commit`].
#[derive(Default)]
pub struct Change {
    ops: Vec<wal::Op>,
    /// The runs it writes, each with the index of its write in `ops`.
    runs: Vec<(usize, Written)>,
}

/// The keys sled keeps in chunks (see `chunks`): the small index entries `active/<run>`,
/// `due/<consumer>/<run>` and `rcpt/t_<ms>/<delivery>`, a chunk holding the entries made within
/// the same 16 ms (a run id's first 13 characters: `r_` and the creation time in milliseconds
/// but its last hex digit; a receipt's `t_` and time the same way); and the run records
/// `run/<run>`, a chunk holding the runs created in the same millisecond (14 characters), so
/// that a chunk, rewritten whole when one of its runs changes, stays small.
const CHUNKS: Chunking = Chunking {
    prefixes: &[b"active/", b"due/", b"rcpt/", b"run/"],
    family: chunk_family,
};

/// Index entries share a chunk by their first 13 characters: 16 ms of run ids or receipt times.
const INDEX_BUCKET: usize = 13;
/// Run records share a chunk by their first 14: the runs of one millisecond.
const RUN_BUCKET: usize = 14;

fn chunk_family(key: &[u8]) -> Option<Family> {
    let families = [
        (&b"active/"[..], INDEX_BUCKET),
        (b"rcpt/", INDEX_BUCKET),
        (b"run/", RUN_BUCKET),
    ];
    for (prefix, bucket) in families {
        if key.starts_with(prefix) {
            let prefix = prefix.len();
            return Some(Family { prefix, bucket });
        }
    }
    let consumer_and_run = key.strip_prefix(b"due/")?;
    let consumer = consumer_and_run.iter().position(|&b| b == b'/')?;
    Some(Family {
        prefix: b"due/".len() + consumer + 1,
        bucket: INDEX_BUCKET,
    })
}

/// A run's `ev/` keys, which reach sled merged: a group is one run's events.
const EVENT_MERGING: Merging = Merging {
    group: event_group,
    merge: merge_events,
};

/// `ev/<run>/` of `ev/<run>/<seq>`.
fn event_group(key: &[u8]) -> Option<usize> {
    let prefix = key.len().checked_sub(8)?;
    let named = prefix > b"ev/".len() && key.starts_with(b"ev/") && key[prefix - 1] == b'/';
    named.then_some(prefix)
}

/// One `ev/` value holding the events of `values`, each one event or an array of them, in
/// order. Joined as text: the values are the store's own compact JSON.
fn merge_events(values: &[&[u8]]) -> Vec<u8> {
    let mut out = Vec::with_capacity(values.iter().map(|v| v.len() + 1).sum::<usize>() + 1);
    out.push(b'[');
    for value in values {
        let value = value.trim_ascii();
        let events = match value.strip_prefix(b"[").and_then(|v| v.strip_suffix(b"]")) {
            Some(array) => array.trim_ascii(),
            None => value,
        };
        if events.is_empty() {
            continue;
        }
        if out.len() > 1 {
            out.push(b',');
        }
        out.extend_from_slice(events);
    }
    out.push(b']');
    out
}

fn run_key(id: &RunId) -> Vec<u8> {
    key(&[b"run/", id.as_str().as_bytes()])
}

/// `active/<run>` -> `run/<run>`.
fn run_key_from_index(index_key: &[u8]) -> Vec<u8> {
    let mut key = b"run/".to_vec();
    key.extend_from_slice(&index_key[b"active/".len()..]);
    key
}

fn event_key(id: &RunId, seq: u64) -> Vec<u8> {
    let mut key = key(&[b"ev/", id.as_str().as_bytes(), b"/"]);
    key.extend_from_slice(&seq.to_be_bytes());
    key
}

fn due_key(consumer: &str, run: &RunId) -> Vec<u8> {
    key(&[b"due/", consumer.as_bytes(), b"/", run.as_str().as_bytes()])
}

fn reference_key(consumer: &str, run: &RunId) -> Vec<u8> {
    key(&[b"ref/", consumer.as_bytes(), b"/", run.as_str().as_bytes()])
}

fn invocation_key(run: &RunId) -> Vec<u8> {
    key(&[b"inv/", run.as_str().as_bytes()])
}

/// `parts` joined into one key. Keys are made for every read and write, and `format!` made
/// them several times slower (1 % of a run's instructions).
fn key(parts: &[&[u8]]) -> Vec<u8> {
    // Room for a sequence number after them (`event_key`).
    let mut key = Vec::with_capacity(parts.iter().map(|p| p.len()).sum::<usize>() + 8);
    for part in parts {
        key.extend_from_slice(part);
    }
    key
}

/// `rcpt/t_<at_ms as 12 hex digits>/<delivery>`: receipts sort by the time they were taken.
fn receipt_key(at_ms: u64, delivery: &str) -> Vec<u8> {
    let time = format!("t_{at_ms:012x}/");
    key(&[RECEIPTS, time.as_bytes(), delivery.as_bytes()])
}

const RECEIPTS: &[u8] = b"rcpt/";

/// A receipt as [`Store::receipts`] reads it back.
#[derive(Debug, PartialEq)]
pub struct StoredReceipt {
    pub at_ms: u64,
    pub delivery: String,
    pub run: Option<RunId>,
}

fn entity_key(blueprint: &BlueprintId, id: &EntityId) -> Vec<u8> {
    catalog_key(b"ent/", blueprint, id)
}

/// `src/<blueprint>/<id>`: the hash of the catalog file an entity was loaded from.
fn source_key(blueprint: &BlueprintId, id: &EntityId) -> Vec<u8> {
    catalog_key(b"src/", blueprint, id)
}

fn catalog_key(prefix: &[u8], blueprint: &BlueprintId, id: &EntityId) -> Vec<u8> {
    let (blueprint, id) = (blueprint.as_str().as_bytes(), id.as_str().as_bytes());
    key(&[prefix, blueprint, b"/", id])
}

/// A stored JSON record. Read as text after one UTF-8 check of the whole record: read from
/// bytes, serde_json checks each string on its own, which took a twentieth of a run's
/// instructions under callgrind (a run's record has some forty strings, keys included).
fn decode<T: DeserializeOwned>(bytes: &[u8]) -> serde_json::Result<T> {
    match std::str::from_utf8(bytes) {
        Ok(text) => serde_json::from_str(text),
        // serde_json names where the bytes go wrong.
        Err(_) => serde_json::from_slice(bytes),
    }
}

/// The events under one `ev/` key: one event, or an array of them.
fn decode_events(bytes: &[u8]) -> serde_json::Result<Vec<RunEvent>> {
    match bytes.first() {
        Some(b'[') => decode(bytes),
        _ => Ok(vec![decode(bytes)?]),
    }
}

fn json<T: Serialize>(value: &T) -> Vec<u8> {
    serde_json::to_vec(value).expect("portbot's records always serialise")
}

impl Change {
    fn insert(&mut self, key: Vec<u8>, value: impl Into<Vec<u8>>) {
        self.ops.push((key, Write::Insert(value.into())));
    }

    fn remove(&mut self, key: Vec<u8>) {
        self.ops.push((key, Write::Remove));
    }

    /// How many writes the change holds; with [`Change::truncate`], a savepoint.
    pub fn len(&self) -> usize {
        self.ops.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    /// Drops the writes added after the change held `len` of them.
    pub fn truncate(&mut self, len: usize) {
        self.ops.truncate(len);
        self.runs.retain(|(op, _)| *op < len);
    }

    pub fn put_run(&mut self, run: &Run) {
        let record = json(run);
        self.runs.push((
            self.ops.len(),
            Written {
                record: record.clone(),
                run: run.clone(),
            },
        ));
        self.insert(run_key(&run.id), record);
    }

    /// The runs written, for the store to keep decoded once the change is committed.
    fn written_runs(&mut self) -> impl Iterator<Item = Written> {
        std::mem::take(&mut self.runs).into_iter().map(|(_, w)| w)
    }

    /// Stores events of a run of `action`, made together, under one key (each key costs sled
    /// a write of its own); a run's creation and end also update the index of active runs,
    /// which names each run's action.
    pub fn put_events(&mut self, events: &[RunEvent], action: &str) {
        let (Some(first), Some(last)) = (events.first(), events.last()) else {
            return;
        };
        let value = match events {
            [one] => json(one),
            many => json(&many),
        };
        self.insert(event_key(&last.run_id, last.seq), value);
        let active = || key(&[b"active/", first.run_id.as_str().as_bytes()]);
        for event in events {
            match event.kind {
                EventKind::Created => self.insert(active(), action.as_bytes()),
                EventKind::Ended { .. } => self.remove(active()),
                _ => {}
            }
        }
    }

    /// Marks the run as having events for `consumer` to deliver from `from_seq` on, unless it
    /// is due already (from an earlier event, which it stays).
    pub fn mark_due(&mut self, consumer: &str, run: &RunId, from_seq: u64) {
        self.ops.push((
            due_key(consumer, run),
            Write::InsertIfAbsent(from_seq.to_be_bytes().to_vec()),
        ));
    }

    /// [`Change::mark_due`] for a run this change creates: no mark can be there yet, so applying
    /// it need not look (for a due mark, that look reads its chunk from sled).
    pub fn mark_new_run_due(&mut self, consumer: &str, run: &RunId, from_seq: u64) {
        self.insert(due_key(consumer, run), from_seq.to_be_bytes());
    }

    /// `consumer` delivered the run's events up to `seq`: the run stays due from `seq + 1`, or
    /// is no longer due once caught up. One write either way: the due mark is the cursor.
    pub fn set_delivered(&mut self, consumer: &str, run: &RunId, seq: u64, caught_up: bool) {
        match caught_up {
            true => self.remove(due_key(consumer, run)),
            false => self.insert(due_key(consumer, run), (seq + 1).to_be_bytes()),
        }
    }

    /// A form in progress (a chat modal's state), so a restart between opening and submitting
    /// it loses nothing; `None` removes it.
    pub fn set_form(&mut self, key: &str, form: Option<&serde_json::Value>) {
        let key = format!("form/{key}").into_bytes();
        match form {
            Some(form) => self.insert(key, json(form)),
            None => self.remove(key),
        }
    }

    /// What a consumer keeps about a run (its chat message ids, for one).
    pub fn set_reference(&mut self, consumer: &str, run: &RunId, reference: &serde_json::Value) {
        self.insert(reference_key(consumer, run), json(reference));
    }

    pub fn set_invocation_attempts(&mut self, run: &RunId, attempts: u32) {
        self.insert(invocation_key(run), attempts.to_be_bytes());
    }

    /// An inbound delivery taken at `at_ms`, with the run it made, if any: kept so that it is
    /// known again after a restart (see `app::receipts`).
    pub fn put_receipt(&mut self, at_ms: u64, delivery: &str, run: Option<&RunId>) {
        let run = run.map_or(&b""[..], |r| r.as_str().as_bytes());
        self.insert(receipt_key(at_ms, delivery), run);
    }

    pub fn remove_receipt(&mut self, at_ms: u64, delivery: &str) {
        self.remove(receipt_key(at_ms, delivery));
    }

    pub fn put_entity(&mut self, entity: &Entity) {
        self.insert(
            entity_key(&entity.blueprint, &entity.identifier),
            json(entity),
        );
    }

    pub fn remove_entity(&mut self, blueprint: &BlueprintId, id: &EntityId) {
        self.remove(entity_key(blueprint, id));
        self.remove(source_key(blueprint, id));
    }

    pub fn set_entity_source(&mut self, entity: &Entity, hash: u64) {
        self.insert(
            source_key(&entity.blueprint, &entity.identifier),
            hash.to_be_bytes(),
        );
    }
}

impl Store {
    /// Opens (or creates) the database at `path`, with its write-ahead log beside it
    /// (`<path>.wal/`), and replays what a crash left in the log. One process per path: sled
    /// locks it.
    pub fn open(
        path: &Path,
        cache_capacity_mb: u64,
        checkpoint_every: Duration,
    ) -> StoreResult<Store> {
        let db = sled::Config::new()
            .path(path)
            .cache_capacity(cache_capacity_mb * 1024 * 1024)
            // The log's checkpoints flush sled; its own timer would only add flushes.
            .flush_every_ms(None)
            .open()?;
        let mut wal_dir = path.as_os_str().to_owned();
        wal_dir.push(".wal");
        let tree = Arc::new(Tree::open(db, CHUNKS, Some(EVENT_MERGING))?);
        Ok(Store {
            wal: Arc::new(Wal::open(&tree, wal_dir.into(), checkpoint_every)?),
            tree,
            decoded: Arc::default(),
        })
    }

    /// Writes a change; returns once it is durable and visible. Changes waiting at the same
    /// time share one log write and one sync.
    pub async fn commit(&self, mut change: Change) -> StoreResult<()> {
        let runs = change.written_runs();
        self.wal.write(change.ops).await?;
        self.decoded.keep(runs);
        Ok(())
    }

    /// Like [`Store::commit`], blocking the thread: for the rare changes made under a lock
    /// that must not be held across an await (the catalog's).
    pub fn commit_blocking(&self, mut change: Change) -> StoreResult<()> {
        let runs = change.written_runs();
        self.wal.write_blocking(change.ops)?;
        self.decoded.keep(runs);
        Ok(())
    }

    fn get<T: DeserializeOwned>(&self, key: &[u8]) -> StoreResult<Option<T>> {
        self.tree
            .get(key)?
            .map(|bytes| decode(&bytes))
            .transpose()
            .map_err(Into::into)
    }

    pub fn run(&self, id: &RunId) -> StoreResult<Option<Run>> {
        self.run_record(id)?
            .map(|record| record.decode())
            .transpose()
    }

    /// A run's record as stored, not decoded yet: two reads of the same record compare equal.
    pub fn run_record(&self, id: &RunId) -> StoreResult<Option<RunRecord>> {
        Ok(self.tree.get(&run_key(id))?.map(|bytes| RunRecord {
            id: id.clone(),
            bytes,
            decoded: Arc::clone(&self.decoded),
        }))
    }

    /// A run's status alone: its record is read without building the rest of it.
    pub fn run_status(&self, id: &RunId) -> StoreResult<Option<RunStatus>> {
        #[derive(serde::Deserialize)]
        struct StatusOnly {
            status: RunStatus,
        }
        Ok(self.get::<StatusOnly>(&run_key(id))?.map(|r| r.status))
    }

    /// Runs newest first (only those not ended with `active_only`), those `keep` accepts, at
    /// most `limit`.
    pub fn runs(
        &self,
        limit: usize,
        active_only: bool,
        keep: impl Fn(&Run) -> bool,
    ) -> StoreResult<Vec<Run>> {
        let mut out = Vec::new();
        let records: Box<dyn Iterator<Item = sled::Result<sled::IVec>>> = if active_only {
            // The index is small: only runs that have not ended.
            let ids = self.tree.scan_prefix(b"active/", true).map(|item| {
                let (key, _) = item?;
                let run = run_key_from_index(&key);
                Ok(self.tree.get(&run)?.unwrap_or_default())
            });
            Box::new(ids)
        } else {
            Box::new(
                self.tree
                    .scan_prefix(b"run/", true)
                    .map(|item| item.map(|(_, v)| v)),
            )
        };
        for bytes in records {
            let bytes = bytes?;
            if bytes.is_empty() {
                continue;
            }
            let run: Run = decode(&bytes)?;
            if keep(&run) {
                out.push(run);
                if out.len() == limit {
                    break;
                }
            }
        }
        Ok(out)
    }

    /// A run's events with a sequence number above `after`, up to `newest` (the run's
    /// `last_seq` as read), in order.
    pub fn events(&self, run: &RunId, after: u64, newest: u64) -> StoreResult<Vec<RunEvent>> {
        if after >= newest {
            return Ok(Vec::new());
        }
        // A reader usually wants no more than the newest change: its key is known, and one
        // lookup is far cheaper than a sled scan.
        if let Some(bytes) = self.tree.get(&event_key(run, newest))? {
            let mut events = decode_events(&bytes)?;
            if events.first().is_some_and(|e| e.seq <= after + 1) {
                events.retain(|e| e.seq > after);
                return Ok(events);
            }
        }
        // A key names the last event it holds, so the first key at or past `after + 1` may
        // hold earlier events too. Merged keys may also hold events that a key before them
        // holds as well (a drain after a restart merges what an earlier one wrote apart).
        let start = event_key(run, after + 1);
        let end = memtable::prefix_end(format!("ev/{run}/").as_bytes());
        let mut out: Vec<RunEvent> = Vec::new();
        for item in self.tree.range(start, end, false) {
            for event in decode_events(&item?.1)? {
                if out.last().is_none_or(|last| event.seq > last.seq) {
                    out.push(event);
                }
            }
        }
        out.retain(|e| e.seq > after && e.seq <= newest);
        Ok(out)
    }

    /// Runs with events not yet delivered to `consumer`, or that it kept due.
    pub fn due_runs(&self, consumer: &str) -> StoreResult<Vec<RunId>> {
        self.ids_under(format!("due/{consumer}/").as_bytes())
    }

    /// The sequence number of the last event delivered to `consumer` while the run is due for
    /// it; `None` when it is not (everything was delivered).
    pub fn delivered(&self, consumer: &str, run: &RunId) -> StoreResult<Option<u64>> {
        let seq = |bytes: &[u8]| bytes.try_into().ok().map(u64::from_be_bytes);
        let Some(due) = self.tree.get(&due_key(consumer, run))? else {
            return Ok(None);
        };
        if let Some(from) = seq(&due) {
            return Ok(Some(from.saturating_sub(1)));
        }
        // A mark from a store written before due marks held a seq: its cursor is apart.
        let cursor = self.tree.get(format!("cur/{consumer}/{run}").as_bytes())?;
        Ok(Some(cursor.and_then(|c| seq(&c)).unwrap_or(0)))
    }

    pub fn form(&self, key: &str) -> StoreResult<Option<serde_json::Value>> {
        self.get(format!("form/{key}").as_bytes())
    }

    pub fn reference(&self, consumer: &str, run: &RunId) -> StoreResult<Option<serde_json::Value>> {
        self.get(&reference_key(consumer, run))
    }

    pub fn invocation_attempts(&self, run: &RunId) -> StoreResult<u32> {
        Ok(self
            .tree
            .get(&invocation_key(run))?
            .and_then(|v| v.as_ref().try_into().ok().map(u32::from_be_bytes))
            .unwrap_or(0))
    }

    pub fn entities(&self) -> StoreResult<Vec<Entity>> {
        self.tree
            .scan_prefix(b"ent/", false)
            .map(|item| Ok(decode(&item?.1)?))
            .collect()
    }

    /// The stored receipts, oldest first; one whose key does not decode is left out.
    pub fn receipts(&self) -> StoreResult<Vec<StoredReceipt>> {
        let mut out = Vec::new();
        for item in self.tree.scan_prefix(RECEIPTS, false) {
            let (key, run) = item?;
            let parsed = (|| {
                let rest = key.strip_prefix(RECEIPTS)?.strip_prefix(b"t_")?;
                let (time, delivery) = (rest.get(..12)?, rest.get(13..)?);
                let at_ms = u64::from_str_radix(std::str::from_utf8(time).ok()?, 16).ok()?;
                let delivery = String::from_utf8(delivery.to_vec()).ok()?;
                let run = String::from_utf8(run.to_vec())
                    .ok()
                    .and_then(|r| RunId::try_from(r).ok());
                Some(StoredReceipt {
                    at_ms,
                    delivery,
                    run,
                })
            })();
            out.extend(parsed);
        }
        Ok(out)
    }

    /// The hash of the catalog file version an entity was last loaded from.
    pub fn entity_source(
        &self,
        blueprint: &BlueprintId,
        id: &EntityId,
    ) -> StoreResult<Option<u64>> {
        Ok(self
            .tree
            .get(&source_key(blueprint, id))?
            .and_then(|v| v.as_ref().try_into().ok().map(u64::from_be_bytes)))
    }

    /// The runs that have not ended whose action `wanted` accepts, found by the index alone
    /// (only those runs are read). Runs indexed before the index named actions are read to
    /// find out.
    pub fn active_runs_of(&self, wanted: impl Fn(&str) -> bool) -> StoreResult<Vec<Run>> {
        let mut out = Vec::new();
        for item in self.tree.scan_prefix(b"active/", false) {
            let (key, action) = item?;
            if !action.is_empty() && !wanted(&String::from_utf8_lossy(&action)) {
                continue;
            }
            let Some(bytes) = self.tree.get(&run_key_from_index(&key))? else {
                continue;
            };
            let run: Run = decode(&bytes)?;
            if wanted(run.action.identifier.as_str()) {
                out.push(run);
            }
        }
        Ok(out)
    }

    fn ids_under(&self, prefix: &[u8]) -> StoreResult<Vec<RunId>> {
        let mut out = Vec::new();
        for item in self.tree.scan_prefix(prefix, false) {
            let (key, _) = item?;
            let id = String::from_utf8_lossy(&key[prefix.len()..]).into_owned();
            if let Ok(id) = RunId::try_from(id) {
                out.push(id);
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(run: &RunId, seq: u64, kind: EventKind) -> RunEvent {
        RunEvent {
            run_id: run.clone(),
            seq,
            at: chrono::Utc::now(),
            kind,
        }
    }

    fn log(run: &RunId, seq: u64) -> RunEvent {
        let message = format!("line {seq}");
        event(run, seq, EventKind::Log { message })
    }

    fn store(dir: &tempfile::TempDir) -> Store {
        Store::open(&dir.path().join("db"), 8, Duration::from_secs(60)).unwrap()
    }

    async fn commit(store: &Store, write: impl FnOnce(&mut Change)) {
        let mut change = Change::default();
        write(&mut change);
        store.commit(change).await.unwrap();
    }

    #[tokio::test]
    async fn a_due_mark_is_the_cursor_and_keeps_the_earliest_undelivered_event() {
        let dir = tempfile::tempdir().unwrap();
        let store = store(&dir);
        let run = RunId::new(1_700_000_000_000, 0, 1);
        assert_eq!(store.delivered("c", &run).unwrap(), None, "not due");
        commit(&store, |c| c.mark_due("c", &run, 1)).await;
        commit(&store, |c| c.mark_due("c", &run, 3)).await;
        assert_eq!(
            store.delivered("c", &run).unwrap(),
            Some(0),
            "due from event 1"
        );
        commit(&store, |c| c.set_delivered("c", &run, 2, false)).await;
        assert_eq!(store.delivered("c", &run).unwrap(), Some(2));
        assert_eq!(store.due_runs("c").unwrap(), std::slice::from_ref(&run));
        commit(&store, |c| c.set_delivered("c", &run, 3, true)).await;
        assert_eq!(store.delivered("c", &run).unwrap(), None, "caught up");
        assert!(store.due_runs("c").unwrap().is_empty());
        commit(&store, |c| c.mark_due("c", &run, 7)).await;
        assert_eq!(store.delivered("c", &run).unwrap(), Some(6));
        assert_eq!(store.delivered("other", &run).unwrap(), None);
    }

    #[tokio::test]
    async fn a_due_mark_written_before_marks_held_a_seq_reads_its_cursor() {
        let dir = tempfile::tempdir().unwrap();
        let store = store(&dir);
        let run = RunId::new(1_700_000_000_000, 0, 1);
        commit(&store, |c| {
            c.insert(format!("due/c/{run}").into_bytes(), Vec::new());
            c.insert(format!("cur/c/{run}").into_bytes(), 4u64.to_be_bytes());
        })
        .await;
        assert_eq!(store.delivered("c", &run).unwrap(), Some(4));
        commit(&store, |c| {
            c.insert(format!("due/c/{run}").into_bytes(), Vec::new())
        })
        .await;
        commit(&store, |c| c.remove(format!("cur/c/{run}").into_bytes())).await;
        assert_eq!(
            store.delivered("c", &run).unwrap(),
            Some(0),
            "no cursor: from the start"
        );
    }

    #[tokio::test]
    async fn events_stored_together_or_alone_read_back_in_order_after_any_seq() {
        let dir = tempfile::tempdir().unwrap();
        let store = store(&dir);
        let run = RunId::new(1_700_000_000_000, 0, 1);
        let other = RunId::new(1_700_000_000_001, 0, 1);
        let mut change = Change::default();
        change.put_events(&[event(&run, 1, EventKind::Created), log(&run, 2)], "a");
        change.put_events(&[log(&run, 3)], "a");
        change.put_events(&[log(&run, 4), log(&run, 5), log(&run, 6)], "a");
        change.put_events(&[event(&other, 1, EventKind::Created)], "a");
        store.commit(change).await.unwrap();
        let seqs = |after| event_seqs(&store, &run, after, 6);
        assert_eq!(seqs(0), [1, 2, 3, 4, 5, 6]);
        assert_eq!(seqs(1), [2, 3, 4, 5, 6], "a group is cut at `after`");
        assert_eq!(seqs(4), [5, 6]);
        assert_eq!(seqs(6), Vec::<u64>::new());
        assert_eq!(store.events(&run, 1, 5).unwrap().len(), 4, "up to `newest`");
        assert_eq!(store.events(&other, 0, 1).unwrap().len(), 1);
        assert_eq!(
            store.active_runs_of(|_| true).unwrap().len(),
            0,
            "no run records"
        );
        let index: Vec<_> = store.tree.scan_prefix(b"active/", false).collect();
        assert_eq!(index.len(), 2, "both creations are indexed");
    }

    #[tokio::test]
    async fn run_records_kept_as_keys_of_their_own_move_into_chunks_and_read_the_same() {
        let dir = tempfile::tempdir().unwrap();
        let mut runs: Vec<Run> = [5, 5, 9].map(decoded::tests::run).to_vec();
        runs[1].id = RunId::new(5, 1, 0);
        {
            // As a store from before run chunks wrote them.
            let db = sled::open(dir.path().join("db")).unwrap();
            for run in &runs {
                db.insert(run_key(&run.id), json(run)).unwrap();
            }
            db.flush().unwrap();
        }
        let store = store(&dir);
        let sled_keys = |prefix: &[u8]| store.tree.db().scan_prefix(prefix).count();
        assert_eq!(sled_keys(b"run/"), 0, "no run record is left on its own");
        assert_eq!(sled_keys(b"ix/run/"), 2, "one chunk per millisecond");
        for run in &runs {
            assert_eq!(store.run(&run.id).unwrap().as_ref(), Some(run));
        }
        let listed = store.runs(10, false, |_| true).unwrap();
        let ids: Vec<&RunId> = listed.iter().map(|r| &r.id).collect();
        assert_eq!(ids, [&runs[2].id, &runs[1].id, &runs[0].id], "newest first");

        let mut changed = runs[0].clone();
        changed.status = RunStatus::Success;
        commit(&store, |c| c.put_run(&changed)).await;
        store.tree.drain_all().unwrap();
        assert_eq!(
            store.run(&changed.id).unwrap(),
            Some(changed),
            "read from its chunk"
        );
        assert_eq!(store.run(&runs[1].id).unwrap().as_ref(), Some(&runs[1]));
    }

    /// The seqs of the run's events after `after`, up to `newest`, as the store reads them.
    fn event_seqs(store: &Store, run: &RunId, after: u64, newest: u64) -> Vec<u64> {
        let events = store.events(run, after, newest).unwrap();
        events.iter().map(|e| e.seq).collect()
    }

    fn event_keys_in_sled(store: &Store) -> Vec<Vec<u8>> {
        let keys = store.tree.db().scan_prefix(b"ev/").keys();
        keys.map(|k| k.unwrap().to_vec()).collect()
    }

    /// The `ev/` keys in sled once everything applied is drained, waiting (up to 5 s) for `count`
    /// of them: the store's drain thread may have taken the layer first and still be writing it.
    fn drained_event_keys(store: &Store, count: usize) -> Vec<Vec<u8>> {
        for _ in 0..500 {
            store.tree.drain_all().unwrap();
            let keys = event_keys_in_sled(store);
            if keys.len() == count {
                return keys;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        event_keys_in_sled(store)
    }

    #[tokio::test]
    async fn a_runs_events_that_reach_sled_together_become_one_key_and_read_the_same() {
        let dir = tempfile::tempdir().unwrap();
        let store = store(&dir);
        let run = RunId::new(1_700_000_000_000, 0, 1);
        let other = RunId::new(1_700_000_000_001, 0, 1);
        // Three changes' keys in one commit, so that they surely reach sled in the same drain.
        commit(&store, |c| {
            c.put_events(&[event(&run, 1, EventKind::Created), log(&run, 2)], "a");
            c.put_events(&[log(&run, 3)], "a");
            c.put_events(&[event(&other, 1, EventKind::Created)], "a");
            c.put_events(&[log(&run, 4), log(&run, 5)], "a");
        })
        .await;
        let seqs = |after, newest| event_seqs(&store, &run, after, newest);
        let before: Vec<_> = (0..=5).map(|after| seqs(after, 5)).collect();
        assert_eq!(
            drained_event_keys(&store, 2),
            [event_key(&run, 5), event_key(&other, 1)],
            "one key per run"
        );
        let after: Vec<_> = (0..=5).map(|after| seqs(after, 5)).collect();
        assert_eq!(after, before);
        assert_eq!(after[0], [1, 2, 3, 4, 5]);
        assert_eq!(
            seqs(1, 3),
            [2, 3],
            "up to `newest`, from inside the merged key"
        );
        assert_eq!(store.events(&other, 0, 1).unwrap().len(), 1);

        // Later events reach sled in keys of their own, read after the merged one.
        commit(&store, |c| c.put_events(&[log(&run, 6)], "a")).await;
        assert_eq!(drained_event_keys(&store, 3).len(), 3);
        assert_eq!(seqs(0, 6), [1, 2, 3, 4, 5, 6]);
        assert_eq!(seqs(4, 6), [5, 6]);
    }

    #[tokio::test]
    async fn events_a_merged_key_holds_twice_are_read_once() {
        // A drain after a restart replays changes that an earlier drain wrote, and may merge
        // keys that sled already holds apart: `ev/<run>/2` stays beside `ev/<run>/4`.
        let dir = tempfile::tempdir().unwrap();
        let store = store(&dir);
        let run = RunId::new(1_700_000_000_000, 0, 1);
        let (one, two) = (event(&run, 1, EventKind::Created), log(&run, 2));
        let all = [one.clone(), two.clone(), log(&run, 3), log(&run, 4)];
        let db = store.tree.db();
        db.insert(event_key(&run, 2), json(&[one, two])).unwrap();
        db.insert(event_key(&run, 4), json(&all)).unwrap();
        // A newest key of its own, so that reads go through all of them.
        db.insert(event_key(&run, 5), json(&log(&run, 5))).unwrap();
        let seqs = |after| event_seqs(&store, &run, after, 5);
        assert_eq!(seqs(0), [1, 2, 3, 4, 5]);
        assert_eq!(seqs(1), [2, 3, 4, 5]);
        assert_eq!(seqs(2), [3, 4, 5]);
        assert_eq!(seqs(4), [5]);
    }

    #[test]
    fn merged_event_values_are_one_array_of_all_their_events() {
        let merged = merge_events(&[
            br#"{"seq":1}"#,
            br#"[{"seq":2},{"seq":3}]"#,
            br#" {"seq":4} "#,
        ]);
        assert_eq!(
            String::from_utf8(merged).unwrap(),
            r#"[{"seq":1},{"seq":2},{"seq":3},{"seq":4}]"#
        );
        let run = RunId::new(1_700_000_000_000, 0, 1);
        assert_eq!(
            event_group(&event_key(&run, 7)),
            Some(format!("ev/{run}/").len())
        );
        assert_eq!(event_group(b"ev/12345"), None, "too short to name a run");
        assert_eq!(event_group(format!("run/{run}").as_bytes()), None);
    }
}
