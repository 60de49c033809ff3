//! The `hashmap` backend: keyed state on the heap, one hash map per key group.
//!
//! Per key group so that a snapshot is written group by group and a restore at another
//! parallelism takes whole groups. Short keys and values are stored inline in the table
//! (`SmallVec`), so a lookup of a typical key (an integer or a short word) touches one cache
//! line of the table instead of chasing two heap pointers. Point lookups are one hash probe; a map state's iteration
//! scans its key group (the price of hashing instead of ordering; the RocksDB backend scans a
//! sorted range instead). Snapshots are the canonical key-group file (`format.rs`).
//!
//! ## Typed aggregates
//! The built-in keyed aggregates (`count`, `sum`, `min`, `max` through
//! [`KeyedStateBackend::aggregate_batch`]) are the hot path of keyed jobs. Their states are
//! kept typed: one hash table per state holding `(key, i64)` for `Int64` keys or
//! `(Box<str>, i64)` for `Utf8` keys, looked up with the key's own hash — the one that also
//! gives its key group — so a row costs one hash and one probe, with no composite key built
//! and nothing allocated but for a new string key. To everything else they are the same
//! composite-key entries as any state (`key group | state | key bytes | empty namespace` → 8
//! little-endian bytes): `get`, `put`, `delete` and scans see them through
//! [`HashMapBackend`]'s routing, snapshots write them in the canonical format, and a restore
//! (which fills the generic maps) moves a state's entries into its table the first time the
//! aggregate runs. A state whose restored entries do not fit the key column's type stays
//! generic.

use crate::format::{read_keyed_state, KeyedStateWriter};
use crate::keyed::{composite_key, decode_i64, fold, key_group, key_group_of, KeyedStateBackend, Keys};
use crate::StateError;
use arrow_array::Array;
use hashbrown::{HashMap, HashTable};
use smallvec::SmallVec;
use weir_core::graph::AggKind;
use weir_core::keygroup::{hash_bytes, hash_i64, KeyGroups};
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
    /// The aggregates kept typed (see the module header), by state name.
    typed: Vec<TypedState>,
    /// States whose restored entries did not fit a typed table: they stay generic.
    untyped: Vec<String>,
}

/// One aggregate state kept typed.
struct TypedState {
    name: String,
    table: TypedTable,
}

enum TypedTable {
    Int64(HashTable<(i64, i64)>),
    Utf8(HashTable<(Box<str>, i64)>),
}

impl TypedTable {
    fn len(&self) -> usize {
        match self {
            TypedTable::Int64(t) => t.len(),
            TypedTable::Utf8(t) => t.len(),
        }
    }
}

/// The table hash of a key hash: its high half, so that keys of one key group (which share the
/// hash's low bits when the max parallelism is a power of two) still spread over the buckets.
#[inline]
fn table_hash(key_hash: u64) -> u64 {
    key_hash.rotate_right(32)
}

#[inline]
fn int_hash(k: i64) -> u64 {
    table_hash(hash_i64(k))
}

#[inline]
fn str_hash(k: &str) -> u64 {
    table_hash(hash_bytes(k.as_bytes()))
}

/// The parts of a composite key: (key group, state name, key, namespace); `None` if it is not
/// one (a map state's entry has bytes after its namespace and is never a typed entry).
fn split_composite(c: &[u8]) -> Option<(u32, &[u8], &[u8], &[u8])> {
    let name_len = *c.get(2)? as usize;
    let name = c.get(3..3 + name_len)?;
    let rest = &c[3 + name_len..];
    let key_len = u32::from_be_bytes(rest.get(..4)?.try_into().ok()?) as usize;
    let key = rest.get(4..4 + key_len)?;
    let rest = &rest[4 + key_len..];
    let ns_len = u16::from_be_bytes(rest.get(..2)?.try_into().ok()?) as usize;
    let ns = rest.get(2..2 + ns_len)?;
    if rest.len() != 2 + ns_len {
        return None;
    }
    Some((key_group_of(c), name, key, ns))
}

/// The composite key of a typed entry.
fn typed_composite(out: &mut Vec<u8>, max_parallelism: u32, state: &str, key: &[u8]) -> u32 {
    let kg = key_group(key, max_parallelism);
    out.clear();
    composite_key(out, kg, state, key, &[]);
    kg
}

/// A key type of the typed path: a row's key as the batch holds it, and how it is hashed (for
/// its key group), compared with and turned into the key the table stores.
trait TypedKey: Copy {
    type Stored;
    /// The key's hash, as partitioning computes it (its key group follows from it).
    fn key_hash(self) -> u64;
    fn is(self, stored: &Self::Stored) -> bool;
    fn store(self) -> Self::Stored;
    /// The table's hash of a stored key (when the table grows).
    fn stored_hash(stored: &Self::Stored) -> u64;
}

impl TypedKey for i64 {
    type Stored = i64;
    fn key_hash(self) -> u64 {
        hash_i64(self)
    }
    fn is(self, stored: &i64) -> bool {
        self == *stored
    }
    fn store(self) -> i64 {
        self
    }
    fn stored_hash(stored: &i64) -> u64 {
        int_hash(*stored)
    }
}

impl TypedKey for &str {
    type Stored = Box<str>;
    fn key_hash(self) -> u64 {
        hash_bytes(self.as_bytes())
    }
    fn is(self, stored: &Box<str>) -> bool {
        &**stored == self
    }
    fn store(self) -> Box<str> {
        self.into()
    }
    fn stored_hash(stored: &Box<str>) -> u64 {
        str_hash(stored)
    }
}

/// Runs the typed aggregate over a batch's keys (in row order) with the fold chosen once per
/// batch: one hash and one probe per row, the value updated in place.
#[inline(always)]
fn run_typed<K: TypedKey>(
    table: &mut HashTable<(K::Stored, i64)>,
    keys: impl Iterator<Item = K>,
    values: Option<&arrow_array::Int64Array>,
    groups: KeyGroups,
    range: KeyGroupRange,
    out: &mut Vec<i64>,
    f: impl Fn(i64, i64) -> i64,
) -> Result<(), StateError> {
    for (i, k) in keys.enumerate() {
        let h = k.key_hash();
        let kg = groups.of(h);
        if !range.contains(kg) {
            return Err(StateError::KeyGroup { kg, range });
        }
        let v = values.map_or(1, |vals| vals.value(i));
        let th = table_hash(h);
        let new = match table.find_mut(th, |e| k.is(&e.0)) {
            Some(e) => {
                e.1 = f(e.1, v);
                e.1
            }
            None => {
                table.insert_unique(th, (k.store(), v), |e| K::stored_hash(&e.0));
                v
            }
        };
        out.push(new);
    }
    Ok(())
}

impl HashMapBackend {
    /// An empty backend with an empty map for each key group of `range`.
    pub fn new(max_parallelism: u32, range: KeyGroupRange) -> Self {
        Self {
            max_parallelism,
            range,
            groups: (0..range.len()).map(|_| HashMap::new()).collect(),
            scratch: Vec::new(),
            typed: Vec::new(),
            untyped: Vec::new(),
        }
    }

    /// The typed state a composite key belongs to, with its key: `None` for every other entry.
    fn typed_entry<'k>(&self, composite: &'k [u8]) -> Option<(usize, &'k [u8])> {
        if self.typed.is_empty() {
            return None;
        }
        let (_, name, key, ns) = split_composite(composite)?;
        if !ns.is_empty() {
            return None;
        }
        let i = self.typed.iter().position(|t| t.name.as_bytes() == name)?;
        Some((i, key))
    }

    /// The value of a typed entry.
    fn typed_get(&self, i: usize, key: &[u8]) -> Option<i64> {
        match &self.typed[i].table {
            TypedTable::Int64(t) => {
                let k = i64::from_le_bytes(key.try_into().ok()?);
                t.find(int_hash(k), |e| e.0 == k).map(|e| e.1)
            }
            TypedTable::Utf8(t) => {
                let k = std::str::from_utf8(key).ok()?;
                t.find(str_hash(k), |e| &*e.0 == k).map(|e| e.1)
            }
        }
    }

    /// Writes (`Some`) or removes (`None`) a typed entry; `false` if the key does not fit the
    /// table's type (the caller then errs).
    fn typed_set(&mut self, i: usize, key: &[u8], value: Option<i64>) -> bool {
        match &mut self.typed[i].table {
            TypedTable::Int64(t) => {
                let Ok(bytes) = key.try_into() else { return false };
                let k = i64::from_le_bytes(bytes);
                let found = t.find_entry(int_hash(k), |e| e.0 == k);
                match (found, value) {
                    (Ok(mut e), Some(v)) => e.get_mut().1 = v,
                    (Ok(e), None) => {
                        e.remove();
                    }
                    (Err(_), Some(v)) => {
                        t.insert_unique(int_hash(k), (k, v), |e| int_hash(e.0));
                    }
                    (Err(_), None) => {}
                }
            }
            TypedTable::Utf8(t) => {
                let Ok(k) = std::str::from_utf8(key) else { return false };
                let found = t.find_entry(str_hash(k), |e| &*e.0 == k);
                match (found, value) {
                    (Ok(mut e), Some(v)) => e.get_mut().1 = v,
                    (Ok(e), None) => {
                        e.remove();
                    }
                    (Err(_), Some(v)) => {
                        t.insert_unique(str_hash(k), (k.into(), v), |e| str_hash(&e.0));
                    }
                    (Err(_), None) => {}
                }
            }
        }
        true
    }

    /// Every typed entry as (key group, composite key, value).
    fn typed_entries(&self) -> Vec<(u32, Vec<u8>, [u8; 8])> {
        let mut out = Vec::new();
        let mut buf = Vec::new();
        for t in &self.typed {
            match &t.table {
                TypedTable::Int64(table) => {
                    for (k, v) in table.iter() {
                        let kg = typed_composite(&mut buf, self.max_parallelism, &t.name, &k.to_le_bytes());
                        out.push((kg, buf.clone(), v.to_le_bytes()));
                    }
                }
                TypedTable::Utf8(table) => {
                    for (k, v) in table.iter() {
                        let kg = typed_composite(&mut buf, self.max_parallelism, &t.name, k.as_bytes());
                        out.push((kg, buf.clone(), v.to_le_bytes()));
                    }
                }
            }
        }
        out
    }

    /// The index of `state`'s typed table for keys like `keys`, created on first use with the
    /// state's generic entries moved into it; `None` if the state stays generic (its entries do
    /// not fit the type).
    fn typed_state(&mut self, state: &str, keys: &Keys<'_>) -> Option<usize> {
        if let Some(i) = self.typed.iter().position(|t| t.name == state) {
            let fits =
                matches!((&self.typed[i].table, keys), (TypedTable::Int64(_), Keys::Int64(_)) | (TypedTable::Utf8(_), Keys::Utf8(_)));
            return fits.then_some(i);
        }
        if self.untyped.iter().any(|u| u == state) {
            return None;
        }
        // Entries of this state restored into the generic maps.
        let mut existing: Vec<(Vec<u8>, i64)> = Vec::new();
        for g in &self.groups {
            for (k, v) in g {
                if let Some((_, name, key, ns)) = split_composite(k) {
                    if name == state.as_bytes() && ns.is_empty() {
                        existing.push((key.to_vec(), decode_i64(v)));
                    }
                }
            }
        }
        let table = match keys {
            Keys::Int64(_) => {
                let mut t = HashTable::with_capacity(existing.len());
                for (k, v) in &existing {
                    let Ok(bytes) = k.as_slice().try_into() else {
                        self.untyped.push(state.to_string());
                        return None;
                    };
                    let k = i64::from_le_bytes(bytes);
                    t.insert_unique(int_hash(k), (k, *v), |e: &(i64, i64)| int_hash(e.0));
                }
                TypedTable::Int64(t)
            }
            Keys::Utf8(_) => {
                let mut t = HashTable::with_capacity(existing.len());
                for (k, v) in &existing {
                    let Ok(k) = std::str::from_utf8(k) else {
                        self.untyped.push(state.to_string());
                        return None;
                    };
                    t.insert_unique(str_hash(k), (k.into(), *v), |e: &(Box<str>, i64)| str_hash(&e.0));
                }
                TypedTable::Utf8(t)
            }
        };
        if !existing.is_empty() {
            for g in &mut self.groups {
                g.retain(|k, _| !split_composite(k).is_some_and(|(_, name, _, ns)| name == state.as_bytes() && ns.is_empty()));
            }
        }
        self.typed.push(TypedState { name: state.to_string(), table });
        Some(self.typed.len() - 1)
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
        // Typed entries join their key group's.
        let mut typed: Vec<Vec<(Vec<u8>, [u8; 8])>> = vec![Vec::new(); if self.typed.is_empty() { 0 } else { self.groups.len() }];
        for (kg, k, v) in self.typed_entries() {
            typed[(kg - self.range.start) as usize].push((k, v));
        }
        for (i, g) in self.groups.iter().enumerate() {
            let kg = self.range.start + i as u32;
            for (k, v) in g {
                w.add(kg, k, v);
            }
            for (k, v) in typed.get(i).into_iter().flatten() {
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
        let mut typed = Vec::new();
        read_keyed_state(bytes, path, range, |kg, k, v| {
            groups[(kg - range.start) as usize].insert(InlineKey::from_slice(k), InlineValue::from_slice(v));
            Ok(())
        })?;
        // Entries of states already typed (a restore into a backend that ran) go to their tables.
        if !self.typed.is_empty() {
            for g in &mut self.groups {
                g.retain(|k, v| {
                    let is_typed = split_composite(k)
                        .is_some_and(|(_, name, _, ns)| ns.is_empty() && self.typed.iter().any(|t| t.name.as_bytes() == name));
                    if is_typed {
                        typed.push((k.to_vec(), decode_i64(v)));
                    }
                    !is_typed
                });
            }
            for (k, v) in typed {
                if let Some((i, key)) = self.typed_entry(&k) {
                    self.typed_set(i, key, Some(v));
                }
            }
        }
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
        let group = self.group(key)?;
        if let Some((i, k)) = self.typed_entry(key) {
            return Ok(self.typed_get(i, k).map(|v| v.to_le_bytes().to_vec()));
        }
        Ok(group.get(key).map(|v| v.to_vec()))
    }

    fn put(&mut self, key: &[u8], value: &[u8]) -> Result<(), StateError> {
        self.group_mut(key)?;
        if let Some((i, k)) = self.typed_entry(key) {
            let k = k.to_vec();
            if !self.typed_set(i, &k, Some(decode_i64(value))) {
                return Err(StateError::Codec(format!("a key of {} bytes for aggregate state '{}'", k.len(), self.typed[i].name)));
            }
            return Ok(());
        }
        self.group_mut(key)?.insert(InlineKey::from_slice(key), InlineValue::from_slice(value));
        Ok(())
    }

    fn delete(&mut self, key: &[u8]) -> Result<(), StateError> {
        self.group_mut(key)?;
        if let Some((i, k)) = self.typed_entry(key) {
            let k = k.to_vec();
            self.typed_set(i, &k, None);
            return Ok(());
        }
        self.group_mut(key)?.remove(key);
        Ok(())
    }

    /// Scans the prefix's whole key group and sorts the matches: the trait promises key order, and
    /// hash maps have none.
    fn scan_prefix(&self, prefix: &[u8]) -> Result<Vec<(Vec<u8>, Vec<u8>)>, StateError> {
        let mut out: Vec<_> =
            self.group(prefix)?.iter().filter(|(k, _)| k.starts_with(prefix)).map(|(k, v)| (k.to_vec(), v.to_vec())).collect();
        if !self.typed.is_empty() {
            out.extend(self.typed_entries().into_iter().filter(|(_, k, _)| k.starts_with(prefix)).map(|(_, k, v)| (k, v.to_vec())));
        }
        out.sort();
        Ok(out)
    }

    /// The sum of the group and typed table sizes; it never fails.
    fn entries(&self) -> Result<u64, StateError> {
        Ok(self.groups.iter().map(|g| g.len() as u64).sum::<u64>() + self.typed.iter().map(|t| t.table.len() as u64).sum::<u64>())
    }

    /// The typed path (see the module header): one hash of the key and one probe per row,
    /// updating the value in place, the fold chosen once per batch. A state that must stay
    /// generic takes one composite-key probe per row instead.
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
        if let Some(i) = self.typed_state(state, &keys) {
            let (groups, range) = (KeyGroups::new(self.max_parallelism), self.range);
            let add = |a: i64, v: i64| a.wrapping_add(v);
            return match (&mut self.typed[i].table, keys) {
                (TypedTable::Int64(t), Keys::Int64(k)) => {
                    let keys = || k.values().iter().copied();
                    match agg {
                        AggKind::Count | AggKind::Sum => run_typed(t, keys(), values, groups, range, out, add),
                        AggKind::Min => run_typed(t, keys(), values, groups, range, out, i64::min),
                        AggKind::Max => run_typed(t, keys(), values, groups, range, out, i64::max),
                    }
                }
                (TypedTable::Utf8(t), Keys::Utf8(k)) => {
                    let keys = || (0..k.len()).map(|i| k.value(i));
                    match agg {
                        AggKind::Count | AggKind::Sum => run_typed(t, keys(), values, groups, range, out, add),
                        AggKind::Min => run_typed(t, keys(), values, groups, range, out, i64::min),
                        AggKind::Max => run_typed(t, keys(), values, groups, range, out, i64::max),
                    }
                }
                _ => unreachable!("typed_state checks the key type"),
            };
        }
        let (max_p, range) = (self.max_parallelism, self.range);
        let mut buf = std::mem::take(&mut self.scratch);
        for i in 0..keys.len() {
            let v = values.map_or(1, |vals| vals.value(i));
            let kg = keys.composite_key(i, state, max_p, &mut buf);
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

#[cfg(test)]
mod tests {
    use super::*;
    use arrow_array::{Int64Array, StringArray};

    fn composite(state: &str, key: &[u8]) -> Vec<u8> {
        let mut k = Vec::new();
        composite_key(&mut k, key_group(key, 128), state, key, &[]);
        k
    }

    fn full() -> HashMapBackend {
        HashMapBackend::new(128, KeyGroupRange::new(0, 128))
    }

    #[test]
    fn typed_aggregates_are_ordinary_entries_to_every_other_call() {
        let mut b = full();
        let mut out = Vec::new();
        let keys = Int64Array::from(vec![7, 8, 7, 7]);
        b.aggregate_batch("count", Keys::Int64(&keys), None, AggKind::Count, &mut out).unwrap();
        assert_eq!(out, vec![1, 1, 2, 3]);
        let words = StringArray::from(vec!["a", "b", "a"]);
        let vals = Int64Array::from(vec![5, -1, 3]);
        b.aggregate_batch("max", Keys::Utf8(&words), Some(&vals), AggKind::Max, &mut out).unwrap();
        assert_eq!(out, vec![5, -1, 5]);
        b.put(&composite("other", b"x"), b"value").unwrap();

        assert_eq!(b.entries().unwrap(), 5);
        assert_eq!(b.get(&composite("count", &7i64.to_le_bytes())).unwrap(), Some(3i64.to_le_bytes().to_vec()));
        assert_eq!(b.get(&composite("max", b"b")).unwrap(), Some((-1i64).to_le_bytes().to_vec()));
        assert_eq!(b.get(&composite("count", &9i64.to_le_bytes())).unwrap(), None);
        b.put(&composite("count", &9i64.to_le_bytes()), &40i64.to_le_bytes()).unwrap();
        b.delete(&composite("count", &8i64.to_le_bytes())).unwrap();
        let key7 = composite("count", &7i64.to_le_bytes());
        assert_eq!(b.scan_prefix(&key7).unwrap(), vec![(key7.clone(), 3i64.to_le_bytes().to_vec())], "a prefix scan finds it");
        let keys = Int64Array::from(vec![9, 8]);
        b.aggregate_batch("count", Keys::Int64(&keys), None, AggKind::Count, &mut out).unwrap();
        assert_eq!(out, vec![41, 1], "the typed path sees what put and delete did");
        assert!(b.put(&composite("count", b"short"), &1i64.to_le_bytes()).is_err(), "a key that is no i64 is refused");
    }

    #[test]
    fn typed_snapshots_restore_into_a_fresh_backend_and_a_split_one() {
        let mut b = full();
        let mut out = Vec::new();
        let keys = Int64Array::from((0..1000).map(|i| i % 100).collect::<Vec<i64>>());
        b.aggregate_batch("count", Keys::Int64(&keys), None, AggKind::Count, &mut out).unwrap();
        b.put(&composite("other", b"x"), b"v").unwrap();
        let snapshot = b.snapshot_bytes();

        // Restored whole, the aggregate goes on from the restored counts.
        let mut r = full();
        r.restore_bytes(&snapshot, "snap").unwrap();
        assert_eq!(r.entries().unwrap(), 101);
        let again = Int64Array::from(vec![3, 3]);
        r.aggregate_batch("count", Keys::Int64(&again), None, AggKind::Count, &mut out).unwrap();
        assert_eq!(out, vec![11, 12]);
        assert_eq!(r.entries().unwrap(), 101, "restored entries moved into the table, none left twice");
        assert_eq!(r.get(&composite("other", b"x")).unwrap(), Some(b"v".to_vec()));

        // Split in two: each half holds its key groups' counts, and the snapshot format is
        // the generic one (the halves read it entry by entry).
        let mut total = 0;
        for half in [KeyGroupRange::new(0, 64), KeyGroupRange::new(64, 128)] {
            let mut h = HashMapBackend::new(128, half);
            h.restore_bytes(&snapshot, "snap").unwrap();
            for k in 0..100i64 {
                let c = composite("count", &k.to_le_bytes());
                if half.contains(key_group_of(&c)) {
                    assert_eq!(h.get(&c).unwrap(), Some(10i64.to_le_bytes().to_vec()));
                    total += 1;
                }
            }
        }
        assert_eq!(total, 100);
    }

    #[test]
    fn restored_entries_that_are_no_i64_keep_the_state_generic() {
        let mut b = full();
        b.put(&composite("count", b"word"), &4i64.to_le_bytes()).unwrap();
        let snapshot = b.snapshot_bytes();
        let mut r = full();
        r.restore_bytes(&snapshot, "snap").unwrap();
        let mut out = Vec::new();
        let keys = Int64Array::from(vec![1, 1]);
        r.aggregate_batch("count", Keys::Int64(&keys), None, AggKind::Count, &mut out).unwrap();
        assert_eq!(out, vec![1, 2]);
        assert_eq!(r.get(&composite("count", b"word")).unwrap(), Some(4i64.to_le_bytes().to_vec()));
        assert_eq!(r.entries().unwrap(), 2);
    }

    #[test]
    fn a_key_outside_the_range_is_refused() {
        let mut b = HashMapBackend::new(128, KeyGroupRange::new(0, 1));
        let keys = Int64Array::from((0..50).collect::<Vec<i64>>());
        let err = b.aggregate_batch("count", Keys::Int64(&keys), None, AggKind::Count, &mut Vec::new()).unwrap_err();
        assert!(matches!(err, StateError::KeyGroup { .. }), "{err}");
    }
}
