//! The store's view of its data: sled, with the latest writes held in memory in front of it.
//!
//! sled costs a few microseconds per key written, and most of portbot's keys are short-lived:
//! a run's record is rewritten at every change, its `active/` and `due/` marks are removed soon
//! after they are set. So logged changes are applied to an in-memory ordered map (the *active*
//! layer), which readers see at once. Every [`FREEZE_AFTER`], or sooner when it grows large,
//! the active layer is *frozen* and handed to the drain thread, which writes it to sled in key
//! order: a key written many times in that window costs sled one write, and a key set and
//! removed in it costs none. Keys of a [`Merging`] group (a run's events) that reach sled in the
//! same drain are written as one key, the last, holding all their values.
//!
//! Readers look in the active layer, then the frozen one, then sled; a removal is kept in a
//! layer as a tombstone until it reaches sled. A frozen layer is dropped only after all of it is
//! in sled, under the same lock readers take, so a reader never misses a write. Durability is
//! the write-ahead log's: a checkpoint drains everything applied before it, flushes sled, and
//! only then deletes the log it covers (see `wal`).

use std::cmp::Ordering;
use std::collections::BTreeMap;
use std::ops::Bound;
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{Duration, Instant};

use sled::IVec;

use super::chunks::{self, Chunking};
use super::wal::{Op, Write};

/// How long writes gather in the active layer before they go to sled.
pub const FREEZE_AFTER: Duration = Duration::from_millis(50);
/// The active layer is frozen sooner when its writes reach this many bytes.
const FREEZE_AT_BYTES: usize = 1 << 20;
/// When the drain falls this far behind, applying waits for it, so memory stays bounded.
const WAIT_FOR_DRAIN_AT_BYTES: usize = 4 * FREEZE_AT_BYTES;

/// A key's latest write: its value, or `None` for a removal.
type Layer = BTreeMap<Vec<u8>, Option<IVec>>;

#[derive(Default)]
struct Layers {
    active: Layer,
    /// When the active layer got its first write since it was last frozen.
    active_since: Option<Instant>,
    /// The bytes of keys and values written to the active layer (overwritten ones included).
    active_bytes: usize,
    /// Being written to sled by the drain thread.
    frozen: Option<Arc<Layer>>,
}

impl Layers {
    /// The latest write of `key` held in memory, if any.
    fn latest(&self, key: &[u8]) -> Option<&Option<IVec>> {
        self.active
            .get(key)
            .or_else(|| self.frozen.as_ref()?.get(key))
    }
}

pub struct Tree {
    db: sled::Db,
    layers: RwLock<Layers>,
    chunking: Chunking,
    merging: Option<Merging>,
}

/// Keys that may reach sled many as one: keys of a *group* (sharing a prefix), each written once
/// and never removed, whose readers read a group from a key on and accept that a key also holds
/// the values of the group's keys before it, even ones sled still has on their own.
pub struct Merging {
    /// For a key of a merged family, the length of its group's prefix (`ev/<run>/`).
    pub group: fn(&[u8]) -> Option<usize>,
    /// One value holding these values of a group's keys, given in key order.
    pub merge: fn(&[&[u8]]) -> Vec<u8>,
}

/// A frozen layer for the drain thread, and the checkpoint to make once it is in sled.
pub struct Drain {
    layer: Arc<Layer>,
    pub checkpoint_below: Option<u64>,
}

/// Iterates over keys and values in key order (or reverse), the layers' over sled's.
pub type Entries<'a> = Box<dyn Iterator<Item = sled::Result<(IVec, IVec)>> + 'a>;

impl Tree {
    /// The store's tree over `db`, whose chunked keys `chunking` names (see `chunks`), and whose
    /// groups `merging` names. Keys a store from before chunks kept as keys of their own are
    /// moved into chunks first.
    pub fn open(db: sled::Db, chunking: Chunking, merging: Option<Merging>) -> sled::Result<Tree> {
        let tree = Tree {
            db,
            layers: RwLock::default(),
            chunking,
            merging,
        };
        tree.chunk_loose_entries()?;
        Ok(tree)
    }

    /// Moves keys of chunked families that sled holds as keys of their own (a store from
    /// before their family was chunked) into chunks, a batch at a time, so that a large store's
    /// runs need not fit in memory at once. A batch's chunks are written and flushed before its
    /// loose keys go, so a crash in between only repeats it. Returns how many keys it moved.
    fn chunk_loose_entries(&self) -> sled::Result<usize> {
        const BATCH: usize = 4096;
        let mut moved = 0;
        let mut batch = Layer::new();
        for prefix in self.chunking.prefixes {
            for item in self.db.scan_prefix(prefix) {
                let (key, value) = item?;
                if self.chunking.locate(&key).is_some() {
                    batch.insert(key.to_vec(), Some(value));
                }
                if batch.len() == BATCH {
                    moved += self.move_into_chunks(std::mem::take(&mut batch))?;
                }
            }
        }
        moved += self.move_into_chunks(batch)?;
        if moved > 0 {
            tracing::info!(entries = moved, "moved keys into chunks");
        }
        Ok(moved)
    }

    /// Writes loose keys into their chunks, then removes them; how many there were.
    fn move_into_chunks(&self, loose: Layer) -> sled::Result<usize> {
        if loose.is_empty() {
            return Ok(0);
        }
        self.write_to_sled(&loose)?;
        self.db.flush()?;
        for key in loose.keys() {
            self.db.remove(key)?;
        }
        self.db.flush()?;
        Ok(loose.len())
    }

    /// sled itself: for replaying the log at start and for flushing.
    pub fn db(&self) -> &sled::Db {
        &self.db
    }

    fn read(&self) -> RwLockReadGuard<'_, Layers> {
        self.layers.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, Layers> {
        self.layers.write().unwrap_or_else(|e| e.into_inner())
    }

    pub fn get(&self, key: &[u8]) -> sled::Result<Option<IVec>> {
        if let Some(latest) = self.read().latest(key) {
            return Ok(latest.clone());
        }
        // Not in memory: sled has it, since a frozen layer goes only after it reached sled.
        self.stored(key)
    }

    /// What sled holds for `key`, in its chunk for an index entry.
    fn stored(&self, key: &[u8]) -> sled::Result<Option<IVec>> {
        match self.chunking.locate(key) {
            Some((chunk, entry)) => match self.db.get(chunk)? {
                Some(chunk) => chunks::find(&chunk, &key[entry..]),
                None => Ok(None),
            },
            None => self.db.get(key),
        }
    }

    /// Keys starting with `prefix`, in order, or in reverse order with `rev`. For index entries,
    /// `prefix` is a whole family's (`active/`).
    pub fn scan_prefix(&self, prefix: &[u8], rev: bool) -> Entries<'_> {
        let Some(family_chunks) = self.chunking.family_chunks(prefix) else {
            return self.range(prefix.to_vec(), prefix_end(prefix), rev);
        };
        let family = prefix.to_vec();
        let expand = move |item: sled::Result<(IVec, IVec)>| -> Vec<sled::Result<(IVec, IVec)>> {
            let entries = item.and_then(|(_, chunk)| {
                let entries = chunks::decode(&chunk)?;
                let key = |entry: &[u8]| IVec::from([family.as_slice(), entry].concat());
                Ok(entries
                    .into_iter()
                    .map(|(entry, value)| Ok((key(entry), IVec::from(value))))
                    .collect::<Vec<_>>())
            });
            match entries {
                Ok(entries) if rev => entries.into_iter().rev().collect(),
                Ok(entries) => entries,
                Err(error) => vec![Err(error)],
            }
        };
        self.merged(prefix.to_vec(), prefix_end(prefix), rev, |_| {
            let chunks = self.db.scan_prefix(family_chunks);
            match rev {
                false => Box::new(chunks.flat_map(expand)),
                true => Box::new(chunks.rev().flat_map(expand)),
            }
        })
    }

    /// Keys from `start` on, below `end` when there is one; not for index entries.
    pub fn range(&self, start: Vec<u8>, end: Option<Vec<u8>>, rev: bool) -> Entries<'_> {
        debug_assert!(
            self.chunking.locate(&start).is_none(),
            "a range of index entries"
        );
        self.merged(start, end, rev, |bounds| {
            let stored = self.db.range::<Vec<u8>, _>(bounds);
            match rev {
                false => Box::new(stored),
                true => Box::new(stored.rev()),
            }
        })
    }

    /// What memory holds from `start` (below `end`) merged over what `stored` reads from sled
    /// for the same keys in the same order.
    fn merged<'a>(
        &'a self,
        start: Vec<u8>,
        end: Option<Vec<u8>>,
        rev: bool,
        stored: impl FnOnce((Bound<Vec<u8>>, Bound<Vec<u8>>)) -> Entries<'a>,
    ) -> Entries<'a> {
        let bounds = (
            Bound::Included(start),
            end.map_or(Bound::Unbounded, Bound::Excluded),
        );
        // What memory holds in the range is taken first: a frozen layer may reach sled and
        // go while sled is read, but then sled has it.
        let held: Vec<(Vec<u8>, Option<IVec>)> = {
            let layers = self.read();
            let mut held: Layer = match &layers.frozen {
                Some(frozen) => frozen
                    .range::<Vec<u8>, _>(bounds.clone())
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect(),
                None => Layer::new(),
            };
            held.extend(
                layers
                    .active
                    .range::<Vec<u8>, _>(bounds.clone())
                    .map(|(k, v)| (k.clone(), v.clone())),
            );
            held.into_iter().collect()
        };
        let stored = stored(bounds);
        match rev {
            false => Box::new(Merge::new(held.into_iter(), stored, Ordering::Less)),
            true => Box::new(Merge::new(
                held.into_iter().rev(),
                stored,
                Ordering::Greater,
            )),
        }
    }

    /// Applies logged writes to the active layer; they are visible when this returns.
    pub fn apply(&self, ops: Vec<Op>) -> sled::Result<()> {
        let mut layers = self.write();
        layers.active_since.get_or_insert_with(Instant::now);
        for (key, write) in ops {
            let value = match write {
                Write::Insert(value) => Some(IVec::from(value)),
                Write::Remove => None,
                Write::InsertIfAbsent(value) => {
                    let present = match layers.latest(&key) {
                        Some(latest) => latest.is_some(),
                        None => self.stored(&key)?.is_some(),
                    };
                    if present {
                        continue;
                    }
                    Some(IVec::from(value))
                }
            };
            layers.active_bytes += key.len() + value.as_ref().map_or(0, |v| v.len());
            layers.active.insert(key, value);
        }
        Ok(())
    }

    /// Freezes the active layer when it is due (or when a checkpoint waits, `checkpoint_below`)
    /// and the drain thread is free; waits for the drain when it is far behind.
    pub fn freeze_if_due(&self, checkpoint_below: &mut Option<u64>) -> Option<Drain> {
        loop {
            let mut layers = self.write();
            let bytes = layers.active_bytes;
            if layers.frozen.is_some() {
                if bytes < WAIT_FOR_DRAIN_AT_BYTES {
                    return None;
                }
                drop(layers);
                std::thread::sleep(Duration::from_millis(1));
                continue;
            }
            let old = layers
                .active_since
                .is_some_and(|t| t.elapsed() >= FREEZE_AFTER);
            if checkpoint_below.is_none() && !old && bytes < FREEZE_AT_BYTES {
                return None;
            }
            layers.active_since = None;
            layers.active_bytes = 0;
            let layer = Arc::new(std::mem::take(&mut layers.active));
            layers.frozen = Some(layer.clone());
            return Some(Drain {
                layer,
                checkpoint_below: checkpoint_below.take(),
            });
        }
    }

    /// Writes everything held in memory to sled now: at open, before the drain thread starts.
    pub fn drain_all(&self) -> sled::Result<()> {
        // A checkpoint's mark freezes the layer whatever its age or size.
        match self.freeze_if_due(&mut Some(0)) {
            Some(drain) => self.drain(&drain),
            None => Ok(()),
        }
    }

    /// Writes a frozen layer to sled, then lets it go.
    pub fn drain(&self, drain: &Drain) -> sled::Result<()> {
        self.write_to_sled(&drain.layer)?;
        self.write().frozen = None;
        Ok(())
    }

    /// Writes a layer to sled in key order, each changed chunk once, and each run of a group's
    /// keys as one. Only one thread at a time writes sled (the drain thread, or the opening one
    /// before it starts), so a chunk does not change between its read and its write.
    fn write_to_sled(&self, layer: &Layer) -> sled::Result<()> {
        let mut changed_chunks = BTreeMap::<Vec<u8>, Vec<(&[u8], &Option<IVec>)>>::new();
        // Consecutive keys of one group, written once the group ends.
        let mut grouped = Vec::<(&[u8], &IVec)>::new();
        let mut group: &[u8] = &[];
        for (key, value) in layer {
            if let Some((chunk, entry)) = self.chunking.locate(key) {
                changed_chunks
                    .entry(chunk)
                    .or_default()
                    .push((&key[entry..], value));
                continue;
            }
            if let Some((prefix, value)) = self.grouped(key, value) {
                if prefix != group {
                    self.write_group(&mut grouped)?;
                    group = prefix;
                }
                grouped.push((key, value));
                continue;
            }
            self.write_group(&mut grouped)?;
            group = &[];
            match value {
                Some(value) => self.db.insert(key.as_slice(), value.clone())?,
                None => self.db.remove(key.as_slice())?,
            };
        }
        self.write_group(&mut grouped)?;
        for (key, writes) in changed_chunks {
            let chunk = self.db.get(&key)?;
            match chunks::update(chunk.as_deref(), writes)? {
                Some(chunk) => self.db.insert(key, chunk)?,
                None => self.db.remove(key)?,
            };
        }
        Ok(())
    }

    /// The group prefix of a key `merging` names, with the value written (removals are not
    /// merged).
    fn grouped<'k>(&self, key: &'k [u8], value: &'k Option<IVec>) -> Option<(&'k [u8], &'k IVec)> {
        let prefix = (self.merging.as_ref()?.group)(key)?;
        Some((&key[..prefix], value.as_ref()?))
    }

    /// Writes the keys of one group as one: the last key, holding all their values.
    fn write_group(&self, grouped: &mut Vec<(&[u8], &IVec)>) -> sled::Result<()> {
        match grouped.as_slice() {
            [] => {}
            [(key, value)] => {
                self.db.insert(*key, (*value).clone())?;
            }
            [.., (last, _)] => {
                let values: Vec<&[u8]> = grouped.iter().map(|(_, value)| value.as_ref()).collect();
                let merge = self
                    .merging
                    .as_ref()
                    .expect("only merged keys are grouped")
                    .merge;
                self.db.insert(*last, merge(&values))?;
            }
        }
        grouped.clear();
        Ok(())
    }
}

/// The first key after every key that starts with `prefix`; `None` when there is none.
pub fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < u8::MAX {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

/// Merges the writes held in memory into sled's entries, both in the same order (`first`: the
/// ordering of a key that comes first); memory wins a tie, and its removals hide sled's entries.
struct Merge<H: Iterator, S: Iterator> {
    held: std::iter::Peekable<H>,
    stored: std::iter::Peekable<S>,
    first: Ordering,
}

impl<H, S> Merge<H, S>
where
    H: Iterator<Item = (Vec<u8>, Option<IVec>)>,
    S: Iterator<Item = sled::Result<(IVec, IVec)>>,
{
    fn new(held: H, stored: S, first: Ordering) -> Self {
        Merge {
            held: held.peekable(),
            stored: stored.peekable(),
            first,
        }
    }
}

impl<H, S> Iterator for Merge<H, S>
where
    H: Iterator<Item = (Vec<u8>, Option<IVec>)>,
    S: Iterator<Item = sled::Result<(IVec, IVec)>>,
{
    type Item = sled::Result<(IVec, IVec)>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            let order = match (self.held.peek(), self.stored.peek()) {
                (None, None) => return None,
                (Some(_), None) => self.first,
                (None, Some(_)) | (_, Some(Err(_))) => self.first.reverse(),
                (Some((held, _)), Some(Ok((stored, _)))) => held.as_slice().cmp(stored),
            };
            if order != self.first {
                let stored = self.stored.next()?;
                if order == self.first.reverse() {
                    return Some(stored);
                }
                // The same key: memory's write is the later one.
            }
            let (key, value) = self.held.next()?;
            if let Some(value) = value {
                return Some(Ok((IVec::from(key), value)));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn insert(key: &str, value: &str) -> Op {
        (key.into(), Write::Insert(value.into()))
    }

    fn remove(key: &str) -> Op {
        (key.into(), Write::Remove)
    }

    fn scan(tree: &Tree, prefix: &str, rev: bool) -> Vec<(String, String)> {
        let text = |b: &[u8]| String::from_utf8(b.to_vec()).unwrap();
        tree.scan_prefix(prefix.as_bytes(), rev)
            .map(|item| item.map(|(k, v)| (text(&k), text(&v))).unwrap())
            .collect()
    }

    fn freeze_now(tree: &Tree) -> Drain {
        // A checkpoint's mark freezes the layer whatever its age or size.
        tree.freeze_if_due(&mut Some(0)).expect("the drain is free")
    }

    #[test]
    fn reads_see_every_layer_and_the_latest_write_wins() {
        let dir = tempfile::tempdir().unwrap();
        let tree = Tree::open(sled::open(dir.path()).unwrap(), chunks::NO_CHUNKS, None).unwrap();
        tree.db.insert("a/1", "sled").unwrap();
        tree.db.insert("a/2", "sled").unwrap();
        tree.db.insert("a/4", "sled").unwrap();
        tree.db.insert("b/1", "sled").unwrap();
        tree.apply(vec![insert("a/2", "frozen"), insert("a/3", "frozen")])
            .unwrap();
        tree.apply(vec![remove("a/4")]).unwrap();
        let drain = freeze_now(&tree);
        tree.apply(vec![
            insert("a/3", "active"),
            remove("a/1"),
            insert("a/5", "active"),
        ])
        .unwrap();
        let expected = [("a/2", "frozen"), ("a/3", "active"), ("a/5", "active")];
        let expected: Vec<(String, String)> = expected
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        assert_eq!(scan(&tree, "a/", false), expected);
        let reversed: Vec<_> = expected.iter().rev().cloned().collect();
        assert_eq!(scan(&tree, "a/", true), reversed);
        assert_eq!(tree.get(b"a/1").unwrap(), None, "removed in memory");
        assert_eq!(tree.get(b"b/1").unwrap().as_deref(), Some(&b"sled"[..]));

        tree.drain(&drain).unwrap();
        assert_eq!(scan(&tree, "a/", false), expected, "the same after a drain");
        assert_eq!(
            tree.db.get("a/4").unwrap(),
            None,
            "the removal reached sled"
        );
        tree.drain(&freeze_now(&tree)).unwrap();
        assert_eq!(scan(&tree, "a/", false), expected, "all in sled");
        assert_eq!(tree.db.len(), expected.len() + 1);
    }

    #[test]
    fn insert_if_absent_sees_every_layer() {
        let dir = tempfile::tempdir().unwrap();
        let tree = Tree::open(sled::open(dir.path()).unwrap(), chunks::NO_CHUNKS, None).unwrap();
        tree.db.insert("s", "sled").unwrap();
        let keep = |k: &str| {
            (
                k.as_bytes().to_vec(),
                Write::InsertIfAbsent(b"new".to_vec()),
            )
        };
        tree.apply(vec![insert("f", "frozen"), remove("s")])
            .unwrap();
        let _drain = freeze_now(&tree);
        tree.apply(vec![keep("f"), keep("s"), keep("n"), keep("n")])
            .unwrap();
        let value = |k: &str| tree.get(k.as_bytes()).unwrap().unwrap().to_vec();
        assert_eq!(value("f"), b"frozen");
        assert_eq!(value("s"), b"new", "removed in memory: absent");
        assert_eq!(value("n"), b"new");
        tree.db.insert("only-sled", "sled").unwrap();
        tree.apply(vec![keep("only-sled")]).unwrap();
        assert_eq!(value("only-sled"), b"sled");
    }

    /// Keys under `k/` are index entries, chunked by their first digit.
    const CHUNKED: Chunking = Chunking {
        prefixes: &[b"k/"],
        family: |key| {
            key.starts_with(b"k/").then_some(chunks::Family {
                prefix: 2,
                bucket: 1,
            })
        },
    };

    #[test]
    fn index_entries_kept_as_keys_move_into_chunks_and_read_the_same() {
        let dir = tempfile::tempdir().unwrap();
        let db = sled::open(dir.path()).unwrap();
        for key in ["k/11", "k/12", "k/21"] {
            db.insert(key, key).unwrap();
        }
        db.insert("other", "x").unwrap();
        let tree = Tree::open(db, CHUNKED, None).unwrap();
        let keys: Vec<_> = tree.db.iter().keys().map(|k| k.unwrap().to_vec()).collect();
        assert_eq!(keys, [&b"ix/k/1"[..], b"ix/k/2", b"other"]);
        let all = |tree: &Tree| scan(tree, "k/", false);
        let pair = |k: &str, v: &str| (k.to_string(), v.to_string());
        assert_eq!(
            all(&tree),
            [
                pair("k/11", "k/11"),
                pair("k/12", "k/12"),
                pair("k/21", "k/21")
            ]
        );
        assert_eq!(tree.get(b"k/12").unwrap().as_deref(), Some(&b"k/12"[..]));

        tree.apply(vec![remove("k/12"), insert("k/13", "new"), remove("k/21")])
            .unwrap();
        tree.drain(&freeze_now(&tree)).unwrap();
        assert_eq!(all(&tree), [pair("k/11", "k/11"), pair("k/13", "new")]);
        assert_eq!(tree.db.get("ix/k/2").unwrap(), None, "an empty chunk goes");
        let reversed: Vec<_> = scan(&tree, "k/", true);
        assert_eq!(reversed, [pair("k/13", "new"), pair("k/11", "k/11")]);
    }

    #[test]
    fn many_loose_keys_move_into_chunks_in_batches_and_read_the_same() {
        let dir = tempfile::tempdir().unwrap();
        let db = sled::Config::new()
            .temporary(true)
            .path(dir.path())
            .open()
            .unwrap();
        let keys: Vec<String> = (0..9_000).map(|n| format!("k/{n:04}")).collect();
        for key in &keys {
            db.insert(key, key.as_bytes()).unwrap();
        }
        let tree = Tree::open(db, CHUNKED, None).unwrap();
        assert_eq!(tree.db.len(), 9, "one chunk per first digit, no loose key");
        let expected: Vec<_> = keys.iter().map(|k| (k.clone(), k.clone())).collect();
        assert_eq!(scan(&tree, "k/", false), expected);
        assert_eq!(
            tree.chunk_loose_entries().unwrap(),
            0,
            "nothing is left to move"
        );
    }

    /// A step of the property test: a write, or moving layers on.
    #[derive(Debug, Clone)]
    enum Step {
        Insert(u8, u8),
        Remove(u8),
        InsertIfAbsent(u8, u8),
        Freeze,
        Drain,
    }

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            4 => (0..12u8, any::<u8>()).prop_map(|(k, v)| Step::Insert(k, v)),
            2 => (0..12u8).prop_map(Step::Remove),
            2 => (0..12u8, any::<u8>()).prop_map(|(k, v)| Step::InsertIfAbsent(k, v)),
            1 => Just(Step::Freeze),
            1 => Just(Step::Drain),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// Whatever is in memory, frozen or in sled, reads give what a plain map would.
        #[test]
        fn reads_match_a_plain_map_at_every_step(
            steps in proptest::collection::vec(step(), 1..60),
            chunked in any::<bool>(),
        ) {
            let dir = tempfile::tempdir().unwrap();
            let db = sled::Config::new().temporary(true).path(dir.path()).open().unwrap();
            let chunking = match chunked {
                true => CHUNKED,
                false => chunks::NO_CHUNKS,
            };
            let tree = Tree::open(db, chunking, None).unwrap();
            let mut model = BTreeMap::<Vec<u8>, Vec<u8>>::new();
            let mut frozen = None;
            let key = |k: u8| format!("k/{k:02}").into_bytes();
            for step in steps {
                match step {
                    Step::Insert(k, v) => {
                        tree.apply(vec![(key(k), Write::Insert(vec![v]))]).unwrap();
                        model.insert(key(k), vec![v]);
                    }
                    Step::Remove(k) => {
                        tree.apply(vec![(key(k), Write::Remove)]).unwrap();
                        model.remove(&key(k));
                    }
                    Step::InsertIfAbsent(k, v) => {
                        tree.apply(vec![(key(k), Write::InsertIfAbsent(vec![v]))]).unwrap();
                        model.entry(key(k)).or_insert(vec![v]);
                    }
                    Step::Freeze if frozen.is_none() => frozen = tree.freeze_if_due(&mut Some(0)),
                    Step::Freeze => {}
                    Step::Drain => {
                        if let Some(drain) = frozen.take() {
                            tree.drain(&drain).unwrap();
                        }
                    }
                }
                let read = |rev| -> Vec<(Vec<u8>, Vec<u8>)> {
                    tree.scan_prefix(b"k/", rev)
                        .map(|item| item.map(|(k, v)| (k.to_vec(), v.to_vec())).unwrap())
                        .collect()
                };
                let expected: Vec<_> = model.clone().into_iter().collect();
                prop_assert_eq!(read(false), expected.clone());
                prop_assert_eq!(read(true), expected.into_iter().rev().collect::<Vec<_>>());
                for k in 0..12 {
                    let got = tree.get(&key(k)).unwrap().map(|v| v.to_vec());
                    prop_assert_eq!(got.as_ref(), model.get(&key(k)));
                }
                if chunked {
                    continue;
                }
                let from = key(5);
                let middle: Vec<_> = tree
                    .range(from.clone(), Some(key(9)), false)
                    .map(|item| item.unwrap().0.to_vec())
                    .collect();
                let expected: Vec<_> = model.range(from..key(9)).map(|(k, _)| k.clone()).collect();
                prop_assert_eq!(middle, expected);
            }
        }
    }

    #[test]
    fn the_end_of_a_prefix_is_the_next_key_after_all_it_starts() {
        assert_eq!(prefix_end(b"run/"), Some(b"run0".to_vec()));
        assert_eq!(prefix_end(b"a\xff"), Some(b"b".to_vec()));
        assert_eq!(prefix_end(b"\xff\xff"), None);
    }
}
