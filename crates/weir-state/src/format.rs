//! File formats that protect data: every file Weir writes to checkpoint storage is framed with
//! a magic, a format version and a CRC-32 of its body, so a truncated, corrupted or foreign
//! file is detected on restore and reported with its path, never silently loaded.
//!
//! Frame: `magic (8 bytes) | version u16 | body length u64 | body | crc32(body) u32`, big-endian.
//!
//! The keyed-state body (`KEYED_MAGIC`) is the canonical, backend-independent snapshot of a
//! key-group range: `max_parallelism u32 | start u32 | end u32`, then for each key group of the
//! range `key group u32 | entries u64 | (key len u32, key, value len u32, value)*`. Both
//! backends write and read it, which is what makes full snapshots and savepoints portable.

use crate::StateError;
use weir_core::KeyGroupRange;

/// The format version this build writes and the only one it reads. [`unframe`] rejects any other
/// version and does not try to parse the body.
pub const FORMAT_VERSION: u16 = 1;
/// Magic of a keyed-state file (the canonical key-group file, `keyed-state`).
pub const KEYED_MAGIC: &[u8; 8] = b"WEIRKEYD";
/// Magic of a checkpoint's `_metadata`.
pub const METADATA_MAGIC: &[u8; 8] = b"WEIRMETA";
/// Magic of a subtask's operator list state (`operator-state`).
pub const OPERATOR_MAGIC: &[u8; 8] = b"WEIROPST";
/// Magic of a task's channel state (`input-channels`, `output-channels`).
pub const CHANNEL_MAGIC: &[u8; 8] = b"WEIRCHAN";
/// Bytes before the body: magic, version, body length. The CRC-32 adds 4 more after the body.
const HEADER: usize = 8 + 2 + 8;

/// Wraps `body` in a frame.
///
/// The CRC-32 covers the body only. The magic, version and length are checked by value when the
/// file is read.
pub fn frame(magic: &[u8; 8], body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER + body.len() + 4);
    out.extend_from_slice(magic);
    out.extend_from_slice(&FORMAT_VERSION.to_be_bytes());
    out.extend_from_slice(&(body.len() as u64).to_be_bytes());
    out.extend_from_slice(body);
    out.extend_from_slice(&crc32fast::hash(body).to_be_bytes());
    out
}

/// Checks a frame and returns its body. `path` names the file in errors.
///
/// Checks, in this order: the minimum length, the magic (so a file of another kind is named as
/// such), the version, then that the file length is exactly header + body + CRC (so extra bytes
/// fail just like missing ones), then the CRC-32. Any failure is [`StateError::Corrupt`]. The
/// body is returned only when every check passes.
pub fn unframe<'a>(magic: &[u8; 8], bytes: &'a [u8], path: &str) -> Result<&'a [u8], StateError> {
    let corrupt = |reason: String| StateError::Corrupt { path: path.to_string(), reason };
    if bytes.len() < HEADER + 4 {
        return Err(corrupt(format!("truncated: {} bytes, shorter than any valid file", bytes.len())));
    }
    if &bytes[..8] != magic {
        return Err(corrupt(format!("not a {} file (magic {:?})", String::from_utf8_lossy(magic), String::from_utf8_lossy(&bytes[..8]))));
    }
    let version = u16::from_be_bytes([bytes[8], bytes[9]]);
    if version != FORMAT_VERSION {
        return Err(corrupt(format!("format version {version}, this build reads version {FORMAT_VERSION}")));
    }
    let len = u64::from_be_bytes(bytes[10..18].try_into().expect("8 bytes"));
    // The body length is compared as a u64: a forged length near 2^64 must not wrap around.
    let body_bytes = bytes.len() - (HEADER + 4);
    if len != body_bytes as u64 {
        return Err(corrupt(format!("truncated or padded: header says {len} body bytes, file has {body_bytes}")));
    }
    let len = body_bytes;
    let body = &bytes[HEADER..HEADER + len];
    let crc = u32::from_be_bytes(bytes[HEADER + len..].try_into().expect("4 bytes"));
    if crc32fast::hash(body) != crc {
        return Err(corrupt("checksum mismatch: the file is corrupted".into()));
    }
    Ok(body)
}

/// Writes the keyed-state body of one key-group range, entries grouped by key group.
///
/// Builds the whole file in memory. Callers add entries in key-group order. The hashmap
/// backend walks its groups in order. The RocksDB backend iterates in key order, which is
/// key-group order because every key starts with its key group, big-endian. Every group of the
/// range appears in the file, empty ones with a count of 0.
pub struct KeyedStateWriter {
    /// The body so far, starting with the header (max parallelism, range start, range end).
    body: Vec<u8>,
    /// The open group: (key group, offset of its entry-count placeholder in `body`, entries so
    /// far). The count is patched in when the group closes, so entries stream in without
    /// counting them first.
    current: Option<(u32, usize, u64)>,
    /// The next key group to open. Groups are opened in order, each exactly once.
    next_group: u32,
    /// The range the file covers. `finish` writes groups up to its end.
    range: KeyGroupRange,
}

impl KeyedStateWriter {
    /// Starts the body of a file for `range` by writing its header.
    pub fn new(max_parallelism: u32, range: KeyGroupRange) -> Self {
        let mut body = Vec::new();
        body.extend_from_slice(&max_parallelism.to_be_bytes());
        body.extend_from_slice(&range.start.to_be_bytes());
        body.extend_from_slice(&range.end.to_be_bytes());
        Self { body, current: None, next_group: range.start, range }
    }

    /// Writes the open group's entry count into its placeholder, if a group is open.
    fn close_group(&mut self) {
        if let Some((_, count_at, n)) = self.current.take() {
            self.body[count_at..count_at + 8].copy_from_slice(&n.to_be_bytes());
        }
    }

    /// Starts the next key group; groups must come in increasing order, each exactly once.
    fn open_group(&mut self, kg: u32) {
        self.close_group();
        self.body.extend_from_slice(&kg.to_be_bytes());
        let at = self.body.len();
        self.body.extend_from_slice(&0u64.to_be_bytes());
        self.current = Some((kg, at, 0));
        self.next_group = kg + 1;
    }

    /// Adds an entry of key group `kg` (entries of one group must be contiguous, groups in order).
    ///
    /// Groups between the last one and `kg` are written empty. Panics if `kg` comes before the
    /// group already open (out of order, or a group's entries not contiguous). `kg` must be in
    /// the range; this is only checked in debug builds.
    pub fn add(&mut self, kg: u32, key: &[u8], value: &[u8]) {
        debug_assert!(self.range.contains(kg));
        while self.current.map(|c| c.0) != Some(kg) {
            let next = self.next_group;
            assert!(next <= kg, "key groups out of order");
            self.open_group(next);
        }
        self.body.extend_from_slice(&(key.len() as u32).to_be_bytes());
        self.body.extend_from_slice(key);
        self.body.extend_from_slice(&(value.len() as u32).to_be_bytes());
        self.body.extend_from_slice(value);
        if let Some(c) = &mut self.current {
            c.2 += 1;
        }
    }

    /// Closes every remaining group and returns the framed file.
    ///
    /// Groups up to the end of the range that got no entries are written with a count of 0.
    pub fn finish(mut self) -> Vec<u8> {
        while self.next_group < self.range.end {
            let next = self.next_group;
            self.open_group(next);
        }
        self.close_group();
        frame(KEYED_MAGIC, &self.body)
    }
}

/// Reads a keyed-state file, calling `f(kg, key, value)` for every entry whose key group is in
/// `wanted`. Verifies the frame first: nothing is delivered from a corrupted file.
///
/// Returns the max parallelism and the key-group range recorded in the file. The caller checks
/// them (a restore refuses another max parallelism). Entries outside `wanted` are skipped. That
/// is how a restore at another parallelism takes only its own key groups from an old subtask's
/// file. Groups outside the file's own range, entries that run past the end, and keys that do not
/// start with their group's key group (big-endian `u16`, as every composite key does) are
/// corruption: the RocksDB backend orders entries by that prefix and reads each entry's key group
/// back from it. The first error returned by `f` stops the read.
pub fn read_keyed_state(
    bytes: &[u8],
    path: &str,
    wanted: KeyGroupRange,
    mut f: impl FnMut(u32, &[u8], &[u8]) -> Result<(), StateError>,
) -> Result<(u32, KeyGroupRange), StateError> {
    let body = unframe(KEYED_MAGIC, bytes, path)?;
    let corrupt = |reason: &str| StateError::Corrupt { path: path.to_string(), reason: reason.to_string() };
    let mut r = Reader { buf: body, pos: 0 };
    let max_p = r.u32().ok_or_else(|| corrupt("missing header"))?;
    let start = r.u32().ok_or_else(|| corrupt("missing header"))?;
    let end = r.u32().ok_or_else(|| corrupt("missing header"))?;
    if start > end {
        return Err(corrupt("reversed key-group range"));
    }
    while r.pos < body.len() {
        let kg = r.u32().ok_or_else(|| corrupt("truncated key group"))?;
        let n = r.u64().ok_or_else(|| corrupt("truncated key group"))?;
        if kg < start || kg >= end {
            return Err(corrupt("key group outside the file's range"));
        }
        for _ in 0..n {
            let k = r.slice().ok_or_else(|| corrupt("truncated entry"))?;
            let v = r.slice().ok_or_else(|| corrupt("truncated entry"))?;
            if k.get(..2).map(|p| u16::from_be_bytes([p[0], p[1]]) as u32) != Some(kg) {
                return Err(corrupt("an entry's key does not start with its key group"));
            }
            if wanted.contains(kg) {
                f(kg, k, v)?;
            }
        }
    }
    Ok((max_p, KeyGroupRange::new(start, end)))
}

/// A cursor over a body of big-endian integers and u32-length-prefixed byte strings. Every read
/// returns `None` instead of panicking when the buffer is too short. Callers turn that into an
/// error that names the file or the state (used for framed bodies and for list state).
pub(crate) struct Reader<'a> {
    /// The bytes being read.
    pub buf: &'a [u8],
    /// Offset of the next read. When it reaches `buf.len()`, everything has been read.
    pub pos: usize,
}

impl<'a> Reader<'a> {
    /// A big-endian u32.
    pub fn u32(&mut self) -> Option<u32> {
        let b = self.buf.get(self.pos..self.pos + 4)?;
        self.pos += 4;
        Some(u32::from_be_bytes(b.try_into().ok()?))
    }
    /// A big-endian u64.
    pub fn u64(&mut self) -> Option<u64> {
        let b = self.buf.get(self.pos..self.pos + 8)?;
        self.pos += 8;
        Some(u64::from_be_bytes(b.try_into().ok()?))
    }
    /// A u32 length followed by that many bytes. Returns the bytes, borrowed from `buf`.
    pub fn slice(&mut self) -> Option<&'a [u8]> {
        let n = self.u32()? as usize;
        let b = self.buf.get(self.pos..self.pos + n)?;
        self.pos += n;
        Some(b)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Vec<u8> {
        let mut w = KeyedStateWriter::new(128, KeyGroupRange::new(4, 8));
        w.add(5, b"\0\x05a", b"1");
        w.add(5, b"\0\x05b", b"2");
        w.add(7, b"\0\x07c", b"3");
        w.finish()
    }

    #[test]
    fn a_key_that_does_not_start_with_its_key_group_is_corrupt() {
        // Found by the `state_files` fuzz target: an empty key restored into RocksDB made its next
        // snapshot panic reading the key group back from the key.
        for key in [&b""[..], b"\0", b"\0\x06a", b"\x01\x05a"] {
            let mut w = KeyedStateWriter::new(128, KeyGroupRange::new(4, 8));
            w.add(5, key, b"1");
            let err = read_keyed_state(&w.finish(), "chk-1/op/0/keyed-state", KeyGroupRange::new(0, 128), |_, _, _| Ok(()))
                .unwrap_err()
                .to_string();
            assert!(err.contains("chk-1/op/0/keyed-state") && err.contains("does not start with its key group"), "{key:?}: {err}");
        }
    }

    #[test]
    fn keyed_state_round_trips_and_filters_by_key_group() {
        let bytes = sample();
        let mut all = Vec::new();
        let (max_p, range) = read_keyed_state(&bytes, "f", KeyGroupRange::new(0, 128), |kg, k, v| {
            all.push((kg, k.to_vec(), v.to_vec()));
            Ok(())
        })
        .unwrap();
        assert_eq!((max_p, range), (128, KeyGroupRange::new(4, 8)));
        assert_eq!(all.len(), 3);
        let mut only7 = 0;
        read_keyed_state(&bytes, "f", KeyGroupRange::new(6, 8), |_, _, _| {
            only7 += 1;
            Ok(())
        })
        .unwrap();
        assert_eq!(only7, 1);
    }

    #[test]
    fn a_body_length_that_overflows_is_corrupt_not_a_panic() {
        // Found by the `state_files` fuzz target: header + length + CRC overflowed.
        let mut bytes = frame(OPERATOR_MAGIC, &[0; 40]);
        bytes[10..18].copy_from_slice(&u64::MAX.to_be_bytes());
        let err = unframe(OPERATOR_MAGIC, &bytes, "chk-1/op/0/operator-state").unwrap_err().to_string();
        assert!(err.contains("chk-1/op/0/operator-state") && err.contains("truncated or padded"), "{err}");
        for len in [u64::MAX - 17, u64::MAX - 21, 1 << 63, 41, 39] {
            bytes[10..18].copy_from_slice(&len.to_be_bytes());
            assert!(unframe(OPERATOR_MAGIC, &bytes, "f").is_err(), "length {len}");
        }
    }

    #[test]
    fn every_flipped_byte_and_every_truncation_is_detected() {
        let bytes = sample();
        for i in 0..bytes.len() {
            let mut bad = bytes.clone();
            bad[i] ^= 0x40;
            let err = read_keyed_state(&bad, "chk-1/op/0", KeyGroupRange::new(0, 128), |_, _, _| Ok(())).unwrap_err();
            assert!(err.to_string().contains("chk-1/op/0"), "{err}");
        }
        for len in 0..bytes.len() {
            assert!(read_keyed_state(&bytes[..len], "f", KeyGroupRange::new(0, 128), |_, _, _| Ok(())).is_err());
        }
    }
}
