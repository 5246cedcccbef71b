//! The write-ahead log that makes store changes durable, and the single writer of the store.
//!
//! sled syncs its own log on every `apply_batch`, and its `flush` writes many small pages, which
//! capped portbot at under 2,000 durable runs/s. So one writer thread does this instead:
//!
//! 1. It takes every change waiting at that moment (group commit; under load it first lets
//!    them gather for a moment), writes them to the log as one record and calls `fdatasync`
//!    once.
//! 2. Only then are they applied, by the applier thread, in log order, to the in-memory layer in
//!    front of sled (`memtable`), while the writer already logs the next group; then the
//!    writers are told: their change is durable and visible. The drain thread writes frozen
//!    layers to sled (sled's own syncs are not needed).
//! 3. Every checkpoint interval, between groups, it starts a new log segment and tells the
//!    applier, which freezes everything applied so far; once the drain thread has written that
//!    to sled, it flushes sled and deletes the older segments. Writing goes on meanwhile.
//! 4. At start, [`Wal::open`] replays the segments a crash left, in order, into sled. A record
//!    whose write was torn was never confirmed to anyone and is ignored.
//!
//! The log is written before sled is touched, so whatever sled may have persisted on its own
//! (at a checkpoint's flush or when its buffers fill) is in a segment that is kept until a later
//! flush, and the replay completes it: for each key, sled holds the result of some first part
//! of that key's writes. One writer, switching segments only between groups, means every group
//! in a segment below a checkpoint is wholly in sled before that checkpoint's flush starts.
//!
//! A record is `[len: u32][crc32: u32][ops]`, each op `[1][klen: u32][key][vlen: u32][value]` for
//! an insert, `[2][klen: u32][key][vlen: u32][value]` for an insert that keeps a value already
//! there, or `[0][klen: u32][key]` for a removal, all little-endian. Replaying any tail of the
//! log in order gives the same state as applying it once: each key's last insert or removal
//! decides, and a keeping insert after it decides the same way both times.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write as _};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use super::memtable::{Drain, Tree, FREEZE_AFTER};
use super::{StoreError, StoreResult};

/// How long the writer lets changes gather before it logs a group, when the last group held
/// more than one. A sync costs about the same CPU whatever it writes (50 µs here, most of it in
/// the kernel), so under load fewer, larger groups leave more CPU for the requests; a lone change
/// (a CLI user, a quiet chat) never waits. Measured in `docs/benchmarks.md` (2026-12-01, late).
const GATHER_WHEN_BUSY: Duration = Duration::from_micros(200);

/// One write to the store.
#[derive(Debug, Clone, PartialEq)]
pub enum Write {
    Insert(Vec<u8>),
    /// Inserts unless the key has a value, which it keeps.
    InsertIfAbsent(Vec<u8>),
    Remove,
}

pub type Op = (Vec<u8>, Write);

/// A change waiting for the writer, and who to tell.
enum Reply {
    Async(oneshot::Sender<Result<(), String>>),
    Blocking(mpsc::Sender<Result<(), String>>),
}

type Submitted = (Vec<Op>, Reply);

pub struct Wal {
    submit: mpsc::Sender<Submitted>,
}

fn segment_path(dir: &Path, segment: u64) -> PathBuf {
    dir.join(format!("{segment:020}.log"))
}

fn segments(dir: &Path) -> std::io::Result<Vec<u64>> {
    let mut found: Vec<u64> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().to_str()?.strip_suffix(".log")?.parse().ok())
        .collect();
    found.sort_unstable();
    Ok(found)
}

/// A new, empty segment to append to. Its name is synced, so that it lasts as well as what is
/// written under it.
fn open_segment(dir: &Path, segment: u64) -> std::io::Result<File> {
    let file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(segment_path(dir, segment))?;
    File::open(dir)?.sync_all()?;
    Ok(file)
}

fn encode(ops: &[Op], out: &mut Vec<u8>) {
    let mut body = Vec::new();
    for (key, write) in ops {
        let (kind, value) = match write {
            Write::Remove => (0, None),
            Write::Insert(value) => (1, Some(value)),
            Write::InsertIfAbsent(value) => (2, Some(value)),
        };
        body.push(kind);
        body.extend_from_slice(&(key.len() as u32).to_le_bytes());
        body.extend_from_slice(key);
        if let Some(value) = value {
            body.extend_from_slice(&(value.len() as u32).to_le_bytes());
            body.extend_from_slice(value);
        }
    }
    out.extend_from_slice(&(body.len() as u32).to_le_bytes());
    out.extend_from_slice(&crc32fast::hash(&body).to_le_bytes());
    out.extend_from_slice(&body);
}

/// The records of a segment; stops at the first incomplete or corrupt one (a torn tail).
fn decode(bytes: &[u8]) -> Vec<Vec<Op>> {
    fn take<'a>(bytes: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
        let (head, tail) = (bytes.get(..n)?, bytes.get(n..)?);
        *bytes = tail;
        Some(head)
    }
    fn u32_at(bytes: &mut &[u8]) -> Option<usize> {
        Some(u32::from_le_bytes(take(bytes, 4)?.try_into().ok()?) as usize)
    }
    fn record(body: &[u8]) -> Option<Vec<Op>> {
        let mut rest = body;
        let mut ops = Vec::new();
        while !rest.is_empty() {
            let kind = take(&mut rest, 1)?[0];
            let len = u32_at(&mut rest)?;
            let key = take(&mut rest, len)?.to_vec();
            let mut value = || -> Option<Vec<u8>> {
                let len = u32_at(&mut rest)?;
                Some(take(&mut rest, len)?.to_vec())
            };
            let write = match kind {
                0 => Write::Remove,
                1 => Write::Insert(value()?),
                2 => Write::InsertIfAbsent(value()?),
                _ => return None,
            };
            ops.push((key, write));
        }
        Some(ops)
    }
    let mut rest = bytes;
    let mut records = Vec::new();
    while let (Some(len), Some(crc)) = (u32_at(&mut rest), u32_at(&mut rest)) {
        if len == 0 {
            // Zeros, as a file system may leave after a crash; no record is empty.
            break;
        }
        let Some(body) = take(&mut rest, len) else {
            break;
        };
        if crc32fast::hash(body) != crc as u32 {
            break;
        }
        match record(body) {
            Some(ops) => records.push(ops),
            None => break,
        }
    }
    records
}

fn io_error(e: std::io::Error) -> StoreError {
    StoreError::Flush(e.to_string())
}

/// What the writer hands to the applier thread, in log order.
enum Logged {
    /// A durable group: apply it, then reply.
    Group(Vec<Op>, Vec<Reply>),
    /// The writer moved on to segment `below`: once every group before this is applied, the
    /// older segments can go at the next flush.
    Checkpoint(u64),
}

/// The writer thread's state.
struct Writer {
    dir: PathBuf,
    file: File,
    segment: u64,
    checkpoint_every: Duration,
    last_checkpoint: Instant,
    /// Set while a checkpoint is drained and flushed; no new checkpoint starts until it is done.
    checkpointing: Arc<AtomicBool>,
    applier: mpsc::Sender<Logged>,
}

impl Wal {
    /// Replays what a crash left into `tree` (and on into sled), then starts a fresh segment and
    /// the writer, applier and drain threads; a checkpoint runs every `checkpoint_every`.
    pub fn open(tree: &Arc<Tree>, dir: PathBuf, checkpoint_every: Duration) -> StoreResult<Wal> {
        std::fs::create_dir_all(&dir).map_err(io_error)?;
        let left = segments(&dir).map_err(io_error)?;
        let mut replayed = 0usize;
        for segment in &left {
            let mut bytes = Vec::new();
            File::open(segment_path(&dir, *segment))
                .and_then(|mut f| f.read_to_end(&mut bytes))
                .map_err(io_error)?;
            for ops in decode(&bytes) {
                tree.apply(ops)?;
                if let Some(drain) = tree.freeze_if_due(&mut None) {
                    tree.drain(&drain)?;
                }
                replayed += 1;
            }
        }
        if replayed > 0 {
            tracing::info!(records = replayed, "replayed the write-ahead log");
        }
        tree.drain_all()?;
        tree.db().flush()?;
        for segment in &left {
            std::fs::remove_file(segment_path(&dir, *segment)).map_err(io_error)?;
        }
        let segment = left.last().map_or(0, |s| s + 1);
        let checkpointing = Arc::new(AtomicBool::new(false));
        let (drains, frozen) = mpsc::channel::<Drain>();
        let (drain_tree, drain_dir, flag) = (tree.clone(), dir.clone(), checkpointing.clone());
        std::thread::Builder::new()
            .name("portbot-store-drain".into())
            .spawn(move || {
                // Ends when the applier thread does.
                for drain in frozen {
                    drain_loop(&drain_tree, &drain_dir, &drain, &flag);
                }
            })
            .map_err(io_error)?;
        let (applier, logged) = mpsc::channel::<Logged>();
        let applier_tree = tree.clone();
        std::thread::Builder::new()
            .name("portbot-store-applier".into())
            .spawn(move || apply_loop(&applier_tree, &logged, &drains))
            .map_err(io_error)?;
        let mut writer = Writer {
            file: open_segment(&dir, segment).map_err(io_error)?,
            dir,
            segment,
            checkpoint_every,
            last_checkpoint: Instant::now(),
            checkpointing,
            applier,
        };
        let (submit, submitted) = mpsc::channel::<Submitted>();
        std::thread::Builder::new()
            .name("portbot-store-writer".into())
            .spawn(move || writer.run(&submitted))
            .map_err(io_error)?;
        Ok(Wal { submit })
    }

    /// Writes a change; returns once it is durable and visible.
    pub async fn write(&self, ops: Vec<Op>) -> StoreResult<()> {
        let (tx, rx) = oneshot::channel();
        self.submit
            .send((ops, Reply::Async(tx)))
            .map_err(|_| stopped())?;
        rx.await.map_err(|_| stopped())?.map_err(StoreError::Flush)
    }

    /// Like [`Wal::write`], blocking the calling thread: for the rare changes made under a
    /// lock that must not be held across an await (the catalog's).
    pub fn write_blocking(&self, ops: Vec<Op>) -> StoreResult<()> {
        let (tx, rx) = mpsc::channel();
        self.submit
            .send((ops, Reply::Blocking(tx)))
            .map_err(|_| stopped())?;
        rx.recv().map_err(|_| stopped())?.map_err(StoreError::Flush)
    }
}

fn stopped() -> StoreError {
    StoreError::Flush("the store's writer thread has stopped".into())
}

impl Writer {
    /// Until the store is dropped: group, log, sync, hand to the applier; checkpoint between
    /// groups.
    fn run(&mut self, submitted: &mpsc::Receiver<Submitted>) {
        // Whether the last group had company: then more changes are likely on their way.
        let mut busy = false;
        loop {
            let first = match submitted.recv_timeout(self.checkpoint_every) {
                Ok(first) => first,
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    self.checkpoint_if_due();
                    continue;
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => return,
            };
            if busy {
                std::thread::sleep(GATHER_WHEN_BUSY);
            }
            let mut group = vec![first];
            group.extend(submitted.try_iter());
            busy = group.len() > 1;
            let ops: Vec<Op> = group
                .iter_mut()
                .flat_map(|(ops, _)| std::mem::take(ops))
                .collect();
            let replies: Vec<Reply> = group.into_iter().map(|(_, reply)| reply).collect();
            let logged = match ops.is_empty() {
                true => Ok(()),
                false => self.log(&ops),
            };
            match logged {
                Ok(()) => {
                    // The applier only stops after this thread.
                    let _ = self.applier.send(Logged::Group(ops, replies));
                }
                Err(error) => answer(replies, &Err(error.to_string())),
            }
            self.checkpoint_if_due();
        }
    }

    fn log(&mut self, ops: &[Op]) -> StoreResult<()> {
        let mut record = Vec::new();
        encode(ops, &mut record);
        self.file.write_all(&record).map_err(io_error)?;
        self.file.sync_data().map_err(io_error)
    }

    /// Starts a new segment and has the applier freeze what the older ones hold, for the drain
    /// thread to write, flush and delete them.
    fn checkpoint_if_due(&mut self) {
        if self.last_checkpoint.elapsed() < self.checkpoint_every
            || self.checkpointing.load(Ordering::Acquire)
        {
            return;
        }
        self.last_checkpoint = Instant::now();
        if self.file.metadata().map(|m| m.len() == 0).unwrap_or(true) {
            return;
        }
        let next = self.segment + 1;
        match open_segment(&self.dir, next) {
            Ok(file) => {
                self.file = file;
                self.segment = next;
                self.checkpointing.store(true, Ordering::Release);
                let _ = self.applier.send(Logged::Checkpoint(next));
            }
            Err(error) => tracing::error!(%error, "cannot start a new log segment; will retry"),
        }
    }
}

/// Tells the writers whether their change made it.
fn answer(replies: Vec<Reply>, result: &Result<(), String>) {
    for reply in replies {
        // A writer whose request was dropped no longer listens.
        match reply {
            Reply::Async(tx) => {
                let _ = tx.send(result.clone());
            }
            Reply::Blocking(tx) => {
                let _ = tx.send(result.clone());
            }
        }
    }
}

/// Applies logged groups to the store's memory layer in log order, and hands frozen layers to
/// the drain thread: when due, and for a checkpoint once everything before it is applied.
fn apply_loop(tree: &Tree, logged: &mpsc::Receiver<Logged>, drains: &mpsc::Sender<Drain>) {
    let mut checkpoint_below = None;
    loop {
        match logged.recv_timeout(FREEZE_AFTER) {
            Ok(Logged::Group(ops, replies)) => {
                answer(replies, &tree.apply(ops).map_err(|e| e.to_string()));
            }
            Ok(Logged::Checkpoint(below)) => checkpoint_below = Some(below),
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => return,
        }
        if let Some(drain) = tree.freeze_if_due(&mut checkpoint_below) {
            // The drain thread only stops after this one.
            let _ = drains.send(drain);
        }
    }
}

/// Writes a frozen layer to sled (retrying until sled takes it: the layer's writes are only in
/// memory and the log until then), then makes the checkpoint it carries.
fn drain_loop(tree: &Tree, dir: &Path, drain: &Drain, checkpointing: &AtomicBool) {
    while let Err(error) = tree.drain(drain) {
        tracing::error!(%error, "cannot write to the database; retrying in a second");
        std::thread::sleep(Duration::from_secs(1));
    }
    if let Some(below) = drain.checkpoint_below {
        if let Err(error) = checkpoint(tree.db(), dir, below) {
            tracing::error!(%error, "checkpoint failed; the log is kept until one succeeds");
        }
        checkpointing.store(false, Ordering::Release);
    }
}

/// Makes sled durable, then deletes the segments below `below`: every group in them was in sled
/// before this flush started.
fn checkpoint(db: &sled::Db, dir: &Path, below: u64) -> StoreResult<()> {
    db.flush()?;
    for segment in segments(dir).map_err(io_error)? {
        if segment < below {
            std::fs::remove_file(segment_path(dir, segment)).map_err(io_error)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_a_torn_tail_is_ignored() {
        let ops: Vec<Op> = vec![
            (b"a".to_vec(), Write::Insert(b"1".to_vec())),
            (b"b".to_vec(), Write::Remove),
            (b"c".to_vec(), Write::InsertIfAbsent(b"2".to_vec())),
        ];
        let mut bytes = Vec::new();
        encode(&ops, &mut bytes);
        encode(&ops[..1], &mut bytes);
        let whole = bytes.len();
        encode(&ops, &mut bytes);
        assert_eq!(decode(&bytes).len(), 3);
        let mut zero_tail = bytes.clone();
        zero_tail.resize(bytes.len() + 4096, 0);
        assert_eq!(
            decode(&zero_tail).len(),
            3,
            "the zeros after the records end them"
        );
        assert_eq!(
            decode(&bytes[..whole + 5]),
            vec![ops.clone(), ops[..1].to_vec()]
        );
        bytes[whole + 9] ^= 0xff;
        assert_eq!(decode(&bytes).len(), 2, "a corrupt record ends the replay");
    }

    #[test]
    fn replaying_a_log_over_any_state_it_partly_reached_gives_the_same_state() {
        let ops: Vec<Op> = vec![
            (b"k".to_vec(), Write::InsertIfAbsent(b"1".to_vec())),
            (b"k".to_vec(), Write::Insert(b"5".to_vec())),
            (b"k".to_vec(), Write::Remove),
            (b"k".to_vec(), Write::InsertIfAbsent(b"9".to_vec())),
            (b"k".to_vec(), Write::InsertIfAbsent(b"10".to_vec())),
        ];
        // What sled may hold on its own after a crash: any prefix of the log applied.
        for applied in 0..=ops.len() {
            let dir = tempfile::tempdir().unwrap();
            let db = sled::open(dir.path().join("db")).unwrap();
            let tree = Arc::new(Tree::open(db, super::super::chunks::NO_CHUNKS).unwrap());
            for op in &ops[..applied] {
                tree.apply(vec![op.clone()]).unwrap();
                tree.drain_all().unwrap();
            }
            let log = dir.path().join("wal");
            std::fs::create_dir_all(&log).unwrap();
            let mut bytes = Vec::new();
            encode(&ops, &mut bytes);
            std::fs::write(segment_path(&log, 0), bytes).unwrap();
            let _wal = Wal::open(&tree, log, Duration::from_secs(60)).unwrap();
            assert_eq!(
                tree.db().get(b"k").unwrap().as_deref(),
                Some(&b"9"[..]),
                "after {applied} ops"
            );
        }
    }
}
