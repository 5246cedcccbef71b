//! Index entries kept in sled many to a key.
//!
//! sled costs about 3 µs per key written, whatever the value's size, and the small per-run
//! index entries (`active/<run>`, `due/<consumer>/<run>`) were half of the keys a run wrote.
//! So sled holds them, and the inbound deliveries' receipts (`rcpt/t_<time>/<id>`), in
//! *chunks*: entries of one family whose keys share their first [`Chunking::bucket`] bytes
//! after the family prefix (for run ids and receipt times alike, the same 16 ms) live in one
//! sled value under `ix/<family prefix><bucket>`, written once per drain of the store's memory
//! layer however many entries changed.
//!
//! Everywhere above sled (the log, the memory layers, the store's reads) an entry is still a
//! key of its own; only `memtable`'s sled side knows chunks. Chunk keys sort like the entries
//! they hold (a bucket is a prefix of its entries' ids), so a family's chunks read in order give
//! its entries in order.
//!
//! A chunk is its entries in key order, each `[len: u16][entry][len: u32][value]`
//! (little-endian), the entry being the key after the family prefix.

use std::collections::BTreeMap;

use sled::IVec;

/// Which keys are chunked index entries.
pub struct Chunking {
    /// The top-level prefixes of the chunked families (stores from before chunks kept their
    /// entries as keys of their own under these).
    pub prefixes: &'static [&'static [u8]],
    /// For a key of a chunked family, the length of its family prefix (`active/`, `rcpt/`,
    /// `due/<consumer>/`); `None` for any other key.
    pub family: fn(&[u8]) -> Option<usize>,
    /// Entries sharing this many first bytes after the family prefix share a chunk.
    pub bucket: usize,
}

/// No key is chunked (for tests of the layers alone).
#[cfg(test)]
pub const NO_CHUNKS: Chunking = Chunking {
    prefixes: &[],
    family: |_| None,
    bucket: 0,
};

/// Where chunk keys live: apart from every logical key.
const CHUNK_PREFIX: &[u8] = b"ix/";

impl Chunking {
    /// The sled key of the chunk holding `key`, and where `key`'s entry starts, when `key` is a
    /// chunked index entry.
    pub fn locate(&self, key: &[u8]) -> Option<(Vec<u8>, usize)> {
        let family = (self.family)(key)?;
        let end = family + self.bucket.min(key.len() - family);
        Some(([CHUNK_PREFIX, &key[..end]].concat(), family))
    }

    /// The prefix of the chunks holding a family's entries, when `prefix` is exactly a chunked
    /// family's prefix.
    pub fn family_chunks(&self, prefix: &[u8]) -> Option<Vec<u8>> {
        ((self.family)(prefix) == Some(prefix.len())).then(|| [CHUNK_PREFIX, prefix].concat())
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

pub fn encode(entries: &BTreeMap<Vec<u8>, IVec>) -> Vec<u8> {
    let size: usize = entries.iter().map(|(e, v)| 6 + e.len() + v.len()).sum();
    let mut out = Vec::with_capacity(size);
    for (entry, value) in entries {
        out.extend_from_slice(&(entry.len() as u16).to_le_bytes());
        out.extend_from_slice(entry);
        out.extend_from_slice(&(value.len() as u32).to_le_bytes());
        out.extend_from_slice(value);
    }
    out
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

/// Applies writes (`None` removes) to a chunk; `None` when no entry is left.
pub fn update<'a>(
    chunk: Option<&[u8]>,
    writes: impl IntoIterator<Item = (&'a [u8], &'a Option<IVec>)>,
) -> sled::Result<Option<Vec<u8>>> {
    let mut entries: BTreeMap<Vec<u8>, IVec> = match chunk {
        Some(chunk) => decode(chunk)?
            .into_iter()
            .map(|(e, v)| (e.to_vec(), IVec::from(v)))
            .collect(),
        None => BTreeMap::new(),
    };
    for (entry, value) in writes {
        match value {
            Some(value) => entries.insert(entry.to_vec(), value.clone()),
            None => entries.remove(entry),
        };
    }
    Ok((!entries.is_empty()).then(|| encode(&entries)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn family(key: &[u8]) -> Option<usize> {
        key.starts_with(b"ix-test/").then_some(8)
    }

    const CHUNKING: Chunking = Chunking {
        prefixes: &[b"ix-test/"],
        family,
        bucket: 3,
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
        let chunk = update(None, [(&b"b"[..], &one), (&b"a"[..], &two)])
            .unwrap()
            .unwrap();
        let entries = decode(&chunk).unwrap();
        assert_eq!(entries, [(&b"a"[..], &b""[..]), (&b"b"[..], &b"1"[..])]);
        assert_eq!(find(&chunk, b"b").unwrap().as_deref(), Some(&b"1"[..]));
        assert_eq!(find(&chunk, b"c").unwrap(), None);
        let chunk = update(Some(&chunk), [(&b"a"[..], &None)]).unwrap().unwrap();
        assert_eq!(decode(&chunk).unwrap().len(), 1);
        assert_eq!(update(Some(&chunk), [(&b"b"[..], &None)]).unwrap(), None);
        assert!(decode(&chunk[..chunk.len() - 1]).is_err(), "a torn chunk");
    }
}
