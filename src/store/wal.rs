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
//!    to sled, it flushes sled and retires the older segments (kept as spares, see below).
//!    Writing goes on meanwhile.
//! 4. At start, [`Wal::open`] replays the segments a crash left, in order, into sled. A record
//!    whose write was torn was never confirmed to anyone and is ignored.
//!
//! The log is written before sled is touched, so whatever sled may have persisted on its own
//! (at a checkpoint's flush or when its buffers fill) is in a segment that is kept until a later
//! flush, and the replay completes it: for each key, sled holds the result of some first part
//! of that key's writes. One writer, switching segments only between groups, means every group
//! in a segment below a checkpoint is wholly in sled before that checkpoint's flush starts.
//!
//! A record is `[len: u32][crc: u32][ops]`, each op `[1][klen: u32][key][vlen: u32][value]` for
//! an insert, `[2][klen: u32][key][vlen: u32][value]` for an insert that keeps a value already
//! there, or `[0][klen: u32][key]` for a removal, all little-endian. Replaying any tail of the
//! log in order gives the same state as applying it once: each key's last insert or removal
//! decides, and a keeping insert after it decides the same way both times.
//!
//! A checkpoint does not delete a segment it no longer needs but keeps it as a spare
//! (`<n>.free`, at most [`SPARES`]), and the next segment reuses it, written over from its
//! start. Appending grows a file, so every sync must also write the file's new size (its
//! inode; on this machine's ext4, 130 µs a sync against 95 µs writing over blocks that exist,
//! and a quarter more CPU).
//! What a spare held before stays behind the new records, so `crc` is the CRC-32 of the
//! segment's number (8 bytes, little-endian) and then the ops: a record left from the file's
//! earlier life does not check as part of this segment and ends the replay, as a torn tail
//! does. Records from before spares were kept have the CRC-32 of their ops alone, and still
//! replay.

use std::fs::{File, OpenOptions};
use std::io::Read;
use std::os::unix::fs::FileExt;
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

/// How many segments the checkpoints keep for reuse; older ones are deleted.
const SPARES: usize = 2;

fn segment_path(dir: &Path, segment: u64) -> PathBuf {
    dir.join(format!("{segment:020}.log"))
}

fn spare_path(dir: &Path, segment: u64) -> PathBuf {
    dir.join(format!("{segment:020}.free"))
}

/// The numbers of the files in `dir` named `<n><suffix>`, in order.
fn numbered(dir: &Path, suffix: &str) -> std::io::Result<Vec<u64>> {
    let mut found: Vec<u64> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().to_str()?.strip_suffix(suffix)?.parse().ok())
        .collect();
    found.sort_unstable();
    Ok(found)
}

fn segments(dir: &Path) -> std::io::Result<Vec<u64>> {
    numbered(dir, ".log")
}

fn spares(dir: &Path) -> std::io::Result<Vec<u64>> {
    numbered(dir, ".free")
}

/// The segment to write next, at its start: a spare renamed, or a new file. Its name is synced
/// before anything is written under it, so that what is written lasts under this name (under a
/// spare's old name, its records would not check).
fn open_segment(dir: &Path, segment: u64) -> std::io::Result<File> {
    let path = segment_path(dir, segment);
    let reused = spares(dir)?
        .into_iter()
        .any(|spare| std::fs::rename(spare_path(dir, spare), &path).is_ok());
    let file = OpenOptions::new().create(!reused).write(true).open(path)?;
    File::open(dir)?.sync_all()?;
    Ok(file)
}

/// Keeps a segment no longer needed as a spare, or deletes it when there are enough.
fn retire_segment(dir: &Path, segment: u64) -> std::io::Result<()> {
    let path = segment_path(dir, segment);
    match spares(dir)?.len() < SPARES {
        true => std::fs::rename(path, spare_path(dir, segment)),
        false => std::fs::remove_file(path),
    }
}

/// The check of a record's ops in segment `segment`.
fn record_crc(segment: u64, body: &[u8]) -> u32 {
    let mut crc = crc32fast::Hasher::new();
    crc.update(&segment.to_le_bytes());
    crc.update(body);
    crc.finalize()
}

fn encode(segment: u64, ops: &[Op], out: &mut Vec<u8>) {
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
    out.extend_from_slice(&record_crc(segment, &body).to_le_bytes());
    out.extend_from_slice(&body);
}

/// The records of segment `segment`; stops at the first incomplete or corrupt one (a torn tail,
/// or what a reused file held before).
fn decode(segment: u64, bytes: &[u8]) -> Vec<Vec<Op>> {
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
        let crc = crc as u32;
        // The second form: a record from before segments were reused (see the module's doc).
        if crc != record_crc(segment, body) && crc != crc32fast::hash(body) {
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
    /// Where the next record goes in `file`; what lies beyond is a spare's past, or nothing.
    end: u64,
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
            for ops in decode(*segment, &bytes) {
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
        // Deleted, not kept as spares: they may hold records of the older format, whose
        // check would not tell them from a reused segment's own.
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
            end: 0,
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
        encode(self.segment, ops, &mut record);
        self.file
            .write_all_at(&record, self.end)
            .map_err(io_error)?;
        self.end += record.len() as u64;
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
        if self.end == 0 {
            return;
        }
        let next = self.segment + 1;
        match open_segment(&self.dir, next) {
            Ok(file) => {
                self.file = file;
                self.segment = next;
                self.end = 0;
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

/// Makes sled durable, then retires the segments below `below`: every group in them was in sled
/// before this flush started.
fn checkpoint(db: &sled::Db, dir: &Path, below: u64) -> StoreResult<()> {
    db.flush()?;
    for segment in segments(dir).map_err(io_error)? {
        if segment < below {
            retire_segment(dir, segment).map_err(io_error)?;
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
        encode(7, &ops, &mut bytes);
        encode(7, &ops[..1], &mut bytes);
        let whole = bytes.len();
        encode(7, &ops, &mut bytes);
        assert_eq!(decode(7, &bytes).len(), 3);
        let mut zero_tail = bytes.clone();
        zero_tail.resize(bytes.len() + 4096, 0);
        assert_eq!(
            decode(7, &zero_tail).len(),
            3,
            "the zeros after the records end them"
        );
        assert_eq!(
            decode(7, &bytes[..whole + 5]),
            vec![ops.clone(), ops[..1].to_vec()]
        );
        bytes[whole + 9] ^= 0xff;
        assert_eq!(
            decode(7, &bytes).len(),
            2,
            "a corrupt record ends the replay"
        );
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
            let tree = Arc::new(Tree::open(db, super::super::chunks::NO_CHUNKS, None).unwrap());
            for op in &ops[..applied] {
                tree.apply(vec![op.clone()]).unwrap();
                tree.drain_all().unwrap();
            }
            let log = dir.path().join("wal");
            std::fs::create_dir_all(&log).unwrap();
            let mut bytes = Vec::new();
            encode(0, &ops, &mut bytes);
            std::fs::write(segment_path(&log, 0), bytes).unwrap();
            let _wal = Wal::open(&tree, log, Duration::from_secs(60)).unwrap();
            assert_eq!(
                tree.db().get(b"k").unwrap().as_deref(),
                Some(&b"9"[..]),
                "after {applied} ops"
            );
        }
    }

    #[test]
    fn a_reused_segment_replays_only_its_own_records() {
        let dir = tempfile::tempdir().unwrap();
        let old = |n: u32| vec![(b"k".to_vec(), Write::Insert(n.to_string().into_bytes()))];
        // Segment 3's life: many records, the last of them k = 100.
        let mut bytes = Vec::new();
        for n in 1..=100 {
            encode(3, &old(n), &mut bytes);
        }
        std::fs::write(segment_path(dir.path(), 3), &bytes).unwrap();
        retire_segment(dir.path(), 3).unwrap();
        assert_eq!(spares(dir.path()).unwrap(), vec![3]);

        // Segment 4 reuses that file and writes one short record over its start.
        let file = open_segment(dir.path(), 4).unwrap();
        assert!(spares(dir.path()).unwrap().is_empty());
        let mut record = Vec::new();
        encode(4, &old(500), &mut record);
        file.write_all_at(&record, 0).unwrap();
        let on_disk = std::fs::read(segment_path(dir.path(), 4)).unwrap();
        assert_eq!(on_disk.len(), bytes.len(), "written over, not truncated");
        assert_eq!(
            decode(4, &on_disk),
            vec![old(500)],
            "segment 3's records left behind end the replay"
        );
    }

    #[test]
    fn records_from_before_segments_were_reused_still_replay() {
        let ops: Vec<Op> = vec![(b"a".to_vec(), Write::Insert(b"1".to_vec()))];
        let mut record = Vec::new();
        encode(0, &ops, &mut record);
        // The older format: the CRC of the ops alone, whatever the segment.
        let ops_bytes = record[8..].to_vec();
        let mut legacy = Vec::new();
        legacy.extend_from_slice(&(ops_bytes.len() as u32).to_le_bytes());
        legacy.extend_from_slice(&crc32fast::hash(&ops_bytes).to_le_bytes());
        legacy.extend_from_slice(&ops_bytes);
        assert_eq!(decode(12, &legacy), vec![ops]);
    }

    #[test]
    fn checkpoints_keep_at_most_two_spares() {
        let dir = tempfile::tempdir().unwrap();
        for segment in 0..5 {
            std::fs::write(segment_path(dir.path(), segment), b"x").unwrap();
            retire_segment(dir.path(), segment).unwrap();
        }
        assert_eq!(spares(dir.path()).unwrap(), vec![0, 1]);
        assert!(segments(dir.path()).unwrap().is_empty());
    }
}
