//! The write-ahead log that makes store changes durable.
//!
//! sled's own flush writes many small pages per call (about eight writes and syncs per run in
//! the benchmark), which capped portbot at under 2,000 durable runs/s. So durability comes from
//! this append-only log instead, and sled holds the state:
//!
//! 1. [`Wal::append`] applies a change to sled and appends its writes to an in-memory buffer,
//!    under one lock, so the log's order is sled's order.
//! 2. [`Wal::durable`] hands a waiter to the commit thread, which writes the buffer and calls
//!    `fdatasync` once for every waiter it collected (group commit).
//! 3. The checkpoint thread starts a new log segment, flushes sled (which now holds everything
//!    in the older segments), and deletes the older segments.
//! 4. At start, [`Wal::open`] replays any segments left by a crash into sled, in order. A torn
//!    record at the tail (one whose write was never confirmed) is ignored.
//!
//! A record is `[len: u32][crc32: u32][ops]`, each op `[1][klen: u32][key][vlen: u32][value]` for
//! an insert or `[0][klen: u32][key]` for a removal, all little-endian.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

use tokio::sync::oneshot;

use super::{StoreError, StoreResult};

type Op = (Vec<u8>, Option<Vec<u8>>);
type Waiter = oneshot::Sender<Result<(), String>>;

struct Log {
    file: Arc<File>,
    segment: u64,
    /// Records appended since the commit thread last took them.
    pending: Vec<u8>,
}

pub struct Wal {
    log: Arc<Mutex<Log>>,
    waiters: mpsc::Sender<Waiter>,
    /// Dropped with the log: tells the checkpoint thread to stop, so sled can close.
    _stop: mpsc::Sender<()>,
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

fn open_segment(dir: &Path, segment: u64) -> std::io::Result<File> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(segment_path(dir, segment))
}

fn encode(ops: &[Op], out: &mut Vec<u8>) {
    let mut body = Vec::new();
    for (key, value) in ops {
        body.push(u8::from(value.is_some()));
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
            let insert = take(&mut rest, 1)?[0] == 1;
            let len = u32_at(&mut rest)?;
            let key = take(&mut rest, len)?.to_vec();
            let value = if insert {
                let len = u32_at(&mut rest)?;
                Some(take(&mut rest, len)?.to_vec())
            } else {
                None
            };
            ops.push((key, value));
        }
        Some(ops)
    }
    let mut rest = bytes;
    let mut records = Vec::new();
    while let (Some(len), Some(crc)) = (u32_at(&mut rest), u32_at(&mut rest)) {
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

fn to_batch(ops: &[Op]) -> sled::Batch {
    let mut batch = sled::Batch::default();
    for (key, value) in ops {
        match value {
            Some(value) => batch.insert(key.as_slice(), value.as_slice()),
            None => batch.remove(key.as_slice()),
        }
    }
    batch
}

impl Wal {
    /// Replays what a crash left into `db`, then starts a fresh segment and the commit and
    /// checkpoint threads; a checkpoint runs every `checkpoint_every`.
    pub fn open(db: &sled::Db, dir: PathBuf, checkpoint_every: Duration) -> StoreResult<Wal> {
        std::fs::create_dir_all(&dir).map_err(io_error)?;
        let left = segments(&dir).map_err(io_error)?;
        let mut replayed = 0usize;
        for segment in &left {
            let mut bytes = Vec::new();
            File::open(segment_path(&dir, *segment))
                .and_then(|mut f| f.read_to_end(&mut bytes))
                .map_err(io_error)?;
            for ops in decode(&bytes) {
                db.apply_batch(to_batch(&ops))?;
                replayed += 1;
            }
        }
        if replayed > 0 {
            tracing::info!(records = replayed, "replayed the write-ahead log");
        }
        db.flush()?;
        for segment in &left {
            std::fs::remove_file(segment_path(&dir, *segment)).map_err(io_error)?;
        }
        let segment = left.last().map_or(0, |s| s + 1);
        let log = Arc::new(Mutex::new(Log {
            file: Arc::new(open_segment(&dir, segment).map_err(io_error)?),
            segment,
            pending: Vec::new(),
        }));
        let (waiters, rx) = mpsc::channel::<Waiter>();
        let commit_log = log.clone();
        std::thread::Builder::new()
            .name("portbot-wal-commit".into())
            .spawn(move || commit_loop(&commit_log, &rx))
            .map_err(io_error)?;
        let (stop, stopped) = mpsc::channel::<()>();
        let checkpoint_log = log.clone();
        let checkpoint_db = db.clone();
        std::thread::Builder::new()
            .name("portbot-wal-checkpoint".into())
            .spawn(move || {
                // Runs until the store is dropped, which disconnects the channel.
                while let Err(mpsc::RecvTimeoutError::Timeout) = stopped.recv_timeout(checkpoint_every) {
                    if let Err(error) = checkpoint(&checkpoint_log, &checkpoint_db, &dir) {
                        tracing::error!(%error, "checkpoint failed; the log keeps growing until one succeeds");
                    }
                }
            })
            .map_err(io_error)?;
        Ok(Wal {
            log,
            waiters,
            _stop: stop,
        })
    }

    /// Applies the writes to sled and queues them for the log, in one order for both.
    pub fn append(&self, db: &sled::Db, ops: &[Op]) -> StoreResult<()> {
        let batch = to_batch(ops);
        let mut record = Vec::new();
        encode(ops, &mut record);
        let mut log = self.log.lock().expect("wal lock poisoned");
        db.apply_batch(batch)?;
        log.pending.extend_from_slice(&record);
        Ok(())
    }

    /// Waits until everything appended before this call is on disk.
    pub async fn durable(&self) -> StoreResult<()> {
        let (tx, rx) = oneshot::channel();
        self.waiters
            .send(tx)
            .map_err(|_| StoreError::Flush("the log's commit thread has stopped".into()))?;
        rx.await
            .map_err(|_| StoreError::Flush("the log's commit thread has stopped".into()))?
            .map_err(StoreError::Flush)
    }
}

/// Writes and syncs the pending records once per group of waiters.
fn commit_loop(log: &Mutex<Log>, waiters: &mpsc::Receiver<Waiter>) {
    while let Ok(first) = waiters.recv() {
        let mut group = vec![first];
        group.extend(waiters.try_iter());
        let (file, records) = {
            let mut log = log.lock().expect("wal lock poisoned");
            (log.file.clone(), std::mem::take(&mut log.pending))
        };
        let result = (&*file)
            .write_all(&records)
            .and_then(|()| file.sync_data())
            .map_err(|e| format!("the write-ahead log could not be written: {e}"));
        for waiter in group {
            // A waiter whose request was dropped no longer listens.
            let _ = waiter.send(result.clone());
        }
    }
}

/// Starts a new segment, makes sled durable, then drops the segments sled now covers.
fn checkpoint(log: &Mutex<Log>, db: &sled::Db, dir: &Path) -> StoreResult<()> {
    let current = {
        let mut log = log.lock().expect("wal lock poisoned");
        if log.pending.is_empty() && log.file.metadata().map_err(io_error)?.len() == 0 {
            return Ok(());
        }
        let next = log.segment + 1;
        // Pending records go to the new segment: sled already has them, and replaying them
        // again, in order, before anything newer, leaves the same state.
        log.file = Arc::new(open_segment(dir, next).map_err(io_error)?);
        log.segment = next;
        next
    };
    // Every change in the older segments was applied to sled before the switch.
    db.flush()?;
    for segment in segments(dir).map_err(io_error)? {
        if segment < current {
            std::fs::remove_file(segment_path(dir, segment)).map_err(io_error)?;
        }
    }
    Ok(())
}

fn io_error(e: std::io::Error) -> StoreError {
    StoreError::Flush(e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_a_torn_tail_is_ignored() {
        let ops: Vec<Op> = vec![(b"a".to_vec(), Some(b"1".to_vec())), (b"b".to_vec(), None)];
        let mut bytes = Vec::new();
        encode(&ops, &mut bytes);
        encode(&ops[..1], &mut bytes);
        let whole = bytes.len();
        encode(&ops, &mut bytes);
        assert_eq!(decode(&bytes).len(), 3);
        assert_eq!(
            decode(&bytes[..whole + 5]),
            vec![ops.clone(), ops[..1].to_vec()]
        );
        bytes[whole + 9] ^= 0xff;
        assert_eq!(decode(&bytes).len(), 2, "a corrupt record ends the replay");
    }
}
