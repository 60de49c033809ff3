//! The `hashmap` backend: keyed state on the heap, one hash map per key group.
//!
//! Per key group so that a snapshot is written group by group and a restore at another
//! parallelism takes whole groups. Short keys and values are stored inline in the table
//! (`SmallVec`), so a lookup of a typical key (an integer or a short word) touches one cache
//! line of the table instead of chasing two heap pointers. Point lookups are one hash probe; a map state's iteration
//! scans its key group (the price of hashing instead of ordering; the RocksDB backend scans a
//! sorted range instead). Snapshots are the canonical key-group file (`format.rs`).

use crate::format::{read_keyed_state, KeyedStateWriter};
use crate::keyed::{composite_key, decode_i64, fold, key_group, key_group_of, KeyedStateBackend, Keys};
use crate::StateError;
use hashbrown::HashMap;
use smallvec::SmallVec;
use weir_core::graph::AggKind;
use weir_core::KeyGroupRange;

/// A composite key, inline up to 32 bytes (a short state name with an integer or short key fits).
type InlineKey = SmallVec<[u8; 32]>;
/// A value, inline up to 16 bytes (an i64 aggregate takes 8).
type InlineValue = SmallVec<[u8; 16]>;
/// Every entry of one key group.
type Group = HashMap<InlineKey, InlineValue>;

/// The `hashmap` backend of one operator in one subtask.
///
/// Its state lives only on the heap: it is lost with the process and comes back only through a
/// restore from a checkpoint.
pub struct HashMapBackend {
    /// The job's number of key groups.
    max_parallelism: u32,
    /// The key groups this subtask owns.
    range: KeyGroupRange,
    /// `groups[i]` holds key group `range.start + i`. There is one map per key group of the range.
    groups: Vec<Group>,
    /// A reused buffer for composite keys, so `aggregate_batch` allocates nothing per row.
    scratch: Vec<u8>,
}

impl HashMapBackend {
    /// An empty backend with an empty map for each key group of `range`.
    pub fn new(max_parallelism: u32, range: KeyGroupRange) -> Self {
        Self { max_parallelism, range, groups: (0..range.len()).map(|_| HashMap::new()).collect(), scratch: Vec::new() }
    }

    /// The map of `key`'s key group, or [`StateError::KeyGroup`] if this subtask does not own it.
    fn group(&self, key: &[u8]) -> Result<&Group, StateError> {
        let kg = key_group_of(key);
        self.range
            .contains(kg)
            .then(|| &self.groups[(kg - self.range.start) as usize])
            .ok_or(StateError::KeyGroup { kg, range: self.range })
    }

    /// Mutable [`group`](Self::group).
    fn group_mut(&mut self, key: &[u8]) -> Result<&mut Group, StateError> {
        let kg = key_group_of(key);
        if !self.range.contains(kg) {
            return Err(StateError::KeyGroup { kg, range: self.range });
        }
        Ok(&mut self.groups[(kg - self.range.start) as usize])
    }

    /// Writes the snapshot of every key group (the synchronous part of a checkpoint: a copy).
    ///
    /// The whole file is built in memory, so the state cannot change under the upload. Entries
    /// within a group come in hash-map order, which the format allows.
    pub fn snapshot_bytes(&self) -> Vec<u8> {
        let mut w = KeyedStateWriter::new(self.max_parallelism, self.range);
        for (i, g) in self.groups.iter().enumerate() {
            let kg = self.range.start + i as u32;
            for (k, v) in g {
                w.add(kg, k, v);
            }
        }
        w.finish()
    }

    /// Adds the entries of a keyed-state file that fall in this backend's range.
    ///
    /// Called once per old snapshot that overlaps the range, so a restore at another parallelism
    /// can merge several files. The frame is verified before any entry is inserted.
    pub fn restore_bytes(&mut self, bytes: &[u8], path: &str) -> Result<(), StateError> {
        let range = self.range;
        let groups = &mut self.groups;
        read_keyed_state(bytes, path, range, |kg, k, v| {
            groups[(kg - range.start) as usize].insert(InlineKey::from_slice(k), InlineValue::from_slice(v));
            Ok(())
        })?;
        Ok(())
    }
}

impl KeyedStateBackend for HashMapBackend {
    fn max_parallelism(&self) -> u32 {
        self.max_parallelism
    }

    fn key_group_range(&self) -> KeyGroupRange {
        self.range
    }

    /// One hash probe; the value is copied out.
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StateError> {
        Ok(self.group(key)?.get(key).map(|v| v.to_vec()))
    }

    fn put(&mut self, key: &[u8], value: &[u8]) -> Result<(), StateError> {
        self.group_mut(key)?.insert(InlineKey::from_slice(key), InlineValue::from_slice(value));
        Ok(())
    }

    fn delete(&mut self, key: &[u8]) -> Result<(), StateError> {
        self.group_mut(key)?.remove(key);
        Ok(())
    }

    /// Scans the prefix's whole key group and sorts the matches: the trait promises key order, and
    /// hash maps have none.
    fn scan_prefix(&self, prefix: &[u8]) -> Result<Vec<(Vec<u8>, Vec<u8>)>, StateError> {
        let mut out: Vec<_> =
            self.group(prefix)?.iter().filter(|(k, _)| k.starts_with(prefix)).map(|(k, v)| (k.to_vec(), v.to_vec())).collect();
        out.sort();
        Ok(out)
    }

    /// The sum of the group sizes; it never fails.
    fn entries(&self) -> Result<u64, StateError> {
        Ok(self.groups.iter().map(|g| g.len() as u64).sum())
    }

    /// One hash probe per row, updating the value in place: no allocation but for new keys.
    fn aggregate_batch(
        &mut self,
        state: &str,
        keys: Keys<'_>,
        values: Option<&arrow_array::Int64Array>,
        agg: AggKind,
        out: &mut Vec<i64>,
    ) -> Result<(), StateError> {
        out.clear();
        out.reserve(keys.len());
        let (max_p, range) = (self.max_parallelism, self.range);
        let mut buf = std::mem::take(&mut self.scratch);
        for i in 0..keys.len() {
            let v = values.map_or(1, |vals| vals.value(i));
            let kg = keys.with_key(i, |k| {
                let kg = key_group(k, max_p);
                buf.clear();
                composite_key(&mut buf, kg, state, k, &[]);
                kg
            });
            if !range.contains(kg) {
                self.scratch = buf;
                return Err(StateError::KeyGroup { kg, range });
            }
            let group = &mut self.groups[(kg - range.start) as usize];
            let new = match group.get_mut(buf.as_slice()) {
                Some(cur) => {
                    let new = fold(agg, Some(decode_i64(cur)), v);
                    cur.clear();
                    cur.extend_from_slice(&new.to_le_bytes());
                    new
                }
                None => {
                    group.insert(InlineKey::from_slice(&buf), InlineValue::from_slice(&v.to_le_bytes()));
                    v
                }
            };
            out.push(new);
        }
        self.scratch = buf;
        Ok(())
    }
}
