//! Keys kept in sled many to a key.
//!
//! sled costs about 3 µs per key written, whatever the value's size, and more for each key it
//! has never held: a leaf splits every 8 or so new keys, and a split writes both halves again.
//! The small per-run index entries (`active/<run>`, `due/<consumer>/<run>`) were half of the
//! keys a run wrote, and a new run's record was a new key. So sled holds them, the inbound
//! deliveries' receipts (`rcpt/t_<time>/<id>`) and the run records (`run/<run>`) in *chunks*:
//! entries of one family whose keys share their first bytes after the family prefix (the
//! family's [`Family::bucket`]: for index entries the same 16 ms of run ids and receipt times,
//! for run records one millisecond) live in one sled value under
//! `ix/<family prefix><bucket>`, written once per drain of the store's memory layer however
//! many entries changed.
//!
//! Everywhere above sled (the log, the memory layers, the store's reads) an entry is still a
//! key of its own; only `memtable`'s sled side knows chunks. Chunk keys sort like the entries
//! they hold (a bucket is a prefix of its entries' ids), so a family's chunks read in order give
//! its entries in order.
//!
//! A chunk is its entries in key order, each `[len: u16][entry][len: u32][value]`
//! (little-endian), the entry being the key after the family prefix.

use sled::IVec;

/// Which keys are chunked.
pub struct Chunking {
    /// The top-level prefixes of the chunked families (stores from before chunks kept their
    /// entries as keys of their own under these).
    pub prefixes: &'static [&'static [u8]],
    /// The family of a chunked key; `None` for any other key.
    pub family: fn(&[u8]) -> Option<Family>,
}

/// Where a chunked key's family prefix ends, and how its entries share chunks.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Family {
    /// The length of the family prefix (`active/`, `run/`, `due/<consumer>/`).
    pub prefix: usize,
    /// Entries sharing this many first bytes after the family prefix share a chunk.
    pub bucket: usize,
}

/// No key is chunked (for tests of the layers alone).
#[cfg(test)]
pub const NO_CHUNKS: Chunking = Chunking {
    prefixes: &[],
    family: |_| None,
};

/// Where chunk keys live: apart from every logical key.
const CHUNK_PREFIX: &[u8] = b"ix/";

impl Chunking {
    /// The sled key of the chunk holding `key`, and where `key`'s entry starts, when `key` is
    /// chunked.
    pub fn locate(&self, key: &[u8]) -> Option<(Vec<u8>, usize)> {
        let Family { prefix, bucket } = (self.family)(key)?;
        let end = prefix + bucket.min(key.len() - prefix);
        Some(([CHUNK_PREFIX, &key[..end]].concat(), prefix))
    }

    /// The prefix of the chunks holding a family's entries, when `prefix` is exactly a chunked
    /// family's prefix.
    pub fn family_chunks(&self, prefix: &[u8]) -> Option<Vec<u8>> {
        (self.family)(prefix)
            .is_some_and(|family| family.prefix == prefix.len())
            .then(|| [CHUNK_PREFIX, prefix].concat())
    }
}

fn corrupt() -> sled::Error {
    sled::Error::Io(std::io::Error::new(
        std::io::ErrorKind::InvalidData,
        "an index chunk does not decode",
    ))
}

/// A chunk's entries and values, in order, as they are read.
fn entries(chunk: &[u8]) -> impl Iterator<Item = sled::Result<(&[u8], &[u8])>> {
    fn take<'a>(bytes: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
        let (head, tail) = (bytes.get(..n)?, bytes.get(n..)?);
        *bytes = tail;
        Some(head)
    }
    let mut rest = chunk;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let mut next = || -> Option<(&[u8], &[u8])> {
            let len = u16::from_le_bytes(take(&mut rest, 2)?.try_into().ok()?);
            let entry = take(&mut rest, len.into())?;
            let len = u32::from_le_bytes(take(&mut rest, 4)?.try_into().ok()?);
            Some((entry, take(&mut rest, len as usize)?))
        };
        let entry = next().ok_or_else(corrupt);
        if entry.is_err() {
            rest = &[];
        }
        Some(entry)
    })
}

/// A chunk's entries and values, in order.
pub fn decode(chunk: &[u8]) -> sled::Result<Vec<(&[u8], &[u8])>> {
    entries(chunk).collect()
}

/// One entry's value in a chunk.
pub fn find(chunk: &[u8], entry: &[u8]) -> sled::Result<Option<IVec>> {
    for item in entries(chunk) {
        let (found, value) = item?;
        match found.cmp(entry) {
            std::cmp::Ordering::Less => continue,
            std::cmp::Ordering::Equal => return Ok(Some(IVec::from(value))),
            // Entries are in order: it is not there.
            std::cmp::Ordering::Greater => break,
        }
    }
    Ok(None)
}

/// Applies writes (`None` removes), given in entry order, to a chunk; `None` when no entry is
/// left. Both are in order, so the new chunk is one merge of the two, each entry copied once.
pub fn update<'a>(
    chunk: Option<&[u8]>,
    writes: impl IntoIterator<Item = (&'a [u8], &'a Option<IVec>)>,
) -> sled::Result<Option<Vec<u8>>> {
    let mut kept = match chunk {
        Some(chunk) => decode(chunk)?,
        None => Vec::new(),
    }
    .into_iter()
    .peekable();
    let mut out = Vec::with_capacity(chunk.map_or(0, <[u8]>::len));
    let mut last: Option<&[u8]> = None;
    for (entry, value) in writes {
        debug_assert!(last.is_none_or(|last| last < entry), "writes out of order");
        last = Some(entry);
        while let Some((old, old_value)) = kept.next_if(|(old, _)| *old < entry) {
            put(&mut out, old, old_value);
        }
        // The write replaces the entry it names, if the chunk has it.
        kept.next_if(|(old, _)| *old == entry);
        if let Some(value) = value {
            put(&mut out, entry, value);
        }
    }
    for (old, old_value) in kept {
        put(&mut out, old, old_value);
    }
    Ok((!out.is_empty()).then_some(out))
}

fn put(out: &mut Vec<u8>, entry: &[u8], value: &[u8]) {
    out.extend_from_slice(&(entry.len() as u16).to_le_bytes());
    out.extend_from_slice(entry);
    out.extend_from_slice(&(value.len() as u32).to_le_bytes());
    out.extend_from_slice(value);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn family(key: &[u8]) -> Option<Family> {
        key.starts_with(b"ix-test/").then_some(Family {
            prefix: 8,
            bucket: 3,
        })
    }

    const CHUNKING: Chunking = Chunking {
        prefixes: &[b"ix-test/"],
        family,
    };

    #[test]
    fn entries_share_a_chunk_by_their_first_bytes_and_read_back() {
        let (chunk, at) = CHUNKING.locate(b"ix-test/r_1234").unwrap();
        assert_eq!((chunk.as_slice(), at), (&b"ix/ix-test/r_1"[..], 8));
        let (short, _) = CHUNKING.locate(b"ix-test/r").unwrap();
        assert_eq!(short, b"ix/ix-test/r", "a short entry is its own bucket");
        assert_eq!(CHUNKING.locate(b"other/r_1"), None);
        assert_eq!(
            CHUNKING.family_chunks(b"ix-test/"),
            Some(b"ix/ix-test/".to_vec())
        );
        assert_eq!(CHUNKING.family_chunks(b"ix-test/r"), None);

        let (one, two) = (Some(IVec::from("1")), Some(IVec::from("")));
        let chunk = update(None, [(&b"a"[..], &two), (&b"b"[..], &one)])
            .unwrap()
            .unwrap();
        let entries = decode(&chunk).unwrap();
        assert_eq!(entries, [(&b"a"[..], &b""[..]), (&b"b"[..], &b"1"[..])]);
        assert_eq!(find(&chunk, b"b").unwrap().as_deref(), Some(&b"1"[..]));
        assert_eq!(find(&chunk, b"c").unwrap(), None);
        let (three, four) = (Some(IVec::from("3")), Some(IVec::from("4")));
        let merged = update(Some(&chunk), [(&b"a2"[..], &three), (&b"b"[..], &four)]);
        let merged = merged.unwrap().unwrap();
        let entries = decode(&merged).unwrap();
        let expected = [(&b"a"[..], &b""[..]), (b"a2", b"3"), (b"b", b"4")];
        assert_eq!(entries, expected, "writes merge into the entries, in order");
        let chunk = update(Some(&chunk), [(&b"a"[..], &None)]).unwrap().unwrap();
        assert_eq!(decode(&chunk).unwrap().len(), 1);
        assert_eq!(update(Some(&chunk), [(&b"b"[..], &None)]).unwrap(), None);
        assert!(decode(&chunk[..chunk.len() - 1]).is_err(), "a torn chunk");
    }
}
