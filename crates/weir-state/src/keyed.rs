//! The keyed-state interface shared by both backends.
//!
//! State is scoped to the current key and a namespace (e.g. a window); the backend knows the
//! key's key group, so state can be snapshotted, restored and redistributed per key group.
//! Every entry is stored under one composite key, whose first two bytes are the key group
//! (big-endian) so a key-group range is a contiguous byte range:
//!
//! ```text
//! key group u16 | state name len u8 | state name | key len u32 | key | namespace len u16 | namespace | [map user key]
//! ```
//!
//! The layout relies on these invariants:
//! - the key group is cast to a u16, so key groups must stay below 65,536
//!   (`pipeline.max-parallelism` at most 65,536), which nothing here checks;
//! - a state name is under 256 bytes, because its length is stored in one byte;
//! - a key's bytes are the bytes the partitioner hashes ([`Keys::with_key`]), so state lands
//!   in the subtask the record was routed to;
//! - everything stored here goes into checkpoints and savepoints, so changing an encoding
//!   breaks restores from older ones.
//!
//! Typed states ([`ValueState`], [`ListState`], [`MapState`], [`ReducingState`]) encode values
//! with [`StateCodec`]; the batch path ([`KeyedStateBackend::aggregate_batch`]) serves the
//! built-in keyed aggregates a whole record batch at a time.

use crate::StateError;
use std::marker::PhantomData;
use weir_core::graph::AggKind;
use weir_core::keygroup::{hash_bytes, key_group_for_hash};
use weir_core::KeyGroupRange;

/// A key column of a batch, for [`KeyedStateBackend::aggregate_batch`].
///
/// Borrowed from the batch: the batch path reads the key bytes straight from the Arrow arrays.
#[derive(Clone, Copy)]
pub enum Keys<'a> {
    /// A string key column. The key bytes are the UTF-8 text.
    Utf8(&'a arrow_array::StringArray),
    /// An i64 key column. The key bytes are the 8 little-endian bytes.
    Int64(&'a arrow_array::Int64Array),
}

impl Keys<'_> {
    /// Number of rows.
    pub fn len(&self) -> usize {
        use arrow_array::Array;
        match self {
            Keys::Utf8(a) => a.len(),
            Keys::Int64(a) => a.len(),
        }
    }

    /// Whether the column has no rows.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The key bytes of row `i`: UTF-8 for text, little-endian for integers — the same bytes
    /// the hash partitioner hashes, so a key's key group is the same here and on the wire.
    #[inline]
    pub fn with_key<R>(&self, i: usize, f: impl FnOnce(&[u8]) -> R) -> R {
        match self {
            Keys::Utf8(a) => f(a.value(i).as_bytes()),
            Keys::Int64(a) => f(&a.value(i).to_le_bytes()),
        }
    }

    /// Replaces `buf` with row `i`'s composite key in state `state` (empty namespace) and
    /// returns the key's key group.
    #[inline]
    pub fn composite_key(&self, i: usize, state: &str, max_parallelism: u32, buf: &mut Vec<u8>) -> u32 {
        self.with_key(i, |k| {
            let kg = key_group(k, max_parallelism);
            buf.clear();
            composite_key(buf, kg, state, k, &[]);
            kg
        })
    }
}

/// Builds composite keys.
///
/// The operator's current key and namespace. The typed states build their composite keys from
/// it. The key group is computed once per key in [`set_key`](Self::set_key), not on every state
/// access.
#[derive(Debug, Clone, Default)]
pub struct KeyContext {
    /// The current key's bytes.
    pub key: Vec<u8>,
    /// The key group of `key`. It must be updated with the key, so set both with `set_key`.
    pub key_group: u32,
    /// The current namespace (e.g. a window). Empty when the state has none.
    pub namespace: Vec<u8>,
}

/// Appends the composite-key prefix of (key group, state, key, namespace) to `out`.
///
/// Lengths are written as u8 (state name), u32 (key) and u16 (namespace), each big-endian, and the
/// key group as u16. The casts truncate silently, so callers keep within those limits. A map
/// state appends its encoded user key after this prefix.
#[inline]
pub fn composite_key(out: &mut Vec<u8>, kg: u32, state: &str, key: &[u8], ns: &[u8]) {
    out.extend_from_slice(&(kg as u16).to_be_bytes());
    out.push(state.len() as u8);
    out.extend_from_slice(state.as_bytes());
    out.extend_from_slice(&(key.len() as u32).to_be_bytes());
    out.extend_from_slice(key);
    out.extend_from_slice(&(ns.len() as u16).to_be_bytes());
    out.extend_from_slice(ns);
}

/// The key group stored in a composite key.
///
/// Panics if `composite` is shorter than the 2-byte key-group prefix.
#[inline]
pub fn key_group_of(composite: &[u8]) -> u32 {
    u16::from_be_bytes([composite[0], composite[1]]) as u32
}

/// The key group of a key.
///
/// The same function the hash partitioner uses (`weir_core::keygroup`). A key's state therefore
/// lives in the subtask its records are sent to.
#[inline]
pub fn key_group(key: &[u8], max_parallelism: u32) -> u32 {
    key_group_for_hash(hash_bytes(key), max_parallelism)
}

/// A keyed state backend of one operator in one subtask.
///
/// The byte-level methods work on composite keys; calls block (RocksDB does I/O), so they
/// run on task threads, never on async runtime threads.
///
/// Every key passed in is a composite key ([`composite_key`]) whose key group is in
/// [`key_group_range`](Self::key_group_range). The hashmap backend rejects other keys with
/// [`StateError::KeyGroup`].
pub trait KeyedStateBackend: Send {
    /// The job's number of key groups (`pipeline.max-parallelism`). It is fixed for the job's life,
    /// restores included.
    fn max_parallelism(&self) -> u32;
    /// The key groups this subtask owns. Snapshots of this backend cover exactly this range.
    fn key_group_range(&self) -> KeyGroupRange;

    /// The value stored under a composite key, if any.
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StateError>;
    /// Inserts or overwrites the value of a composite key.
    fn put(&mut self, key: &[u8], value: &[u8]) -> Result<(), StateError>;
    /// Removes a composite key. Removing an absent key is not an error.
    fn delete(&mut self, key: &[u8]) -> Result<(), StateError>;
    /// All (key, value) pairs whose key starts with `prefix`, in key order.
    ///
    /// `prefix` must contain at least the key group (2 bytes): the hashmap backend looks only
    /// inside that key group.
    fn scan_prefix(&self, prefix: &[u8]) -> Result<Vec<(Vec<u8>, Vec<u8>)>, StateError>;
    /// Number of entries (for metrics and tests).
    fn entries(&self) -> Result<u64, StateError>;

    /// Looks up many keys at once (RocksDB: one `multi_get`).
    fn multi_get(&self, keys: &[Vec<u8>]) -> Result<Vec<Option<Vec<u8>>>, StateError> {
        keys.iter().map(|k| self.get(k)).collect()
    }

    /// Applies puts (`Some`) and deletes (`None`) atomically (RocksDB: one `WriteBatch`).
    fn write_batch(&mut self, ops: Vec<(Vec<u8>, Option<Vec<u8>>)>) -> Result<(), StateError> {
        for (k, v) in ops {
            match v {
                Some(v) => self.put(&k, &v)?,
                None => self.delete(&k)?,
            }
        }
        Ok(())
    }

    /// The keyed running aggregate of state `state` over a batch: for every row `i`, folds
    /// `values[i]` (1 for count) into the key's i64 and writes the updated value to `out[i]`.
    /// The default reads every distinct key once and writes each once, in one batch.
    ///
    /// `out` is cleared and gets one value per row: the running value after that row. A key that
    /// appears twice in a batch therefore sees its own first update. Values are stored as
    /// little-endian i64 under the composite key (`state`, key, empty namespace).
    fn aggregate_batch(
        &mut self,
        state: &str,
        keys: Keys<'_>,
        values: Option<&arrow_array::Int64Array>,
        agg: AggKind,
        out: &mut Vec<i64>,
    ) -> Result<(), StateError> {
        aggregate_batch_generic(self, state, keys, values, agg, out)
    }
}

/// [`KeyedStateBackend::aggregate_batch`]'s generic path: every distinct key of the batch read
/// with one `multi_get` and written with one `write_batch`.
pub fn aggregate_batch_generic<B: KeyedStateBackend + ?Sized>(
    backend: &mut B,
    state: &str,
    keys: Keys<'_>,
    values: Option<&arrow_array::Int64Array>,
    agg: AggKind,
    out: &mut Vec<i64>,
) -> Result<(), StateError> {
    out.clear();
    let max_p = backend.max_parallelism();
    let mut index: hashbrown::HashMap<Vec<u8>, usize> = hashbrown::HashMap::new();
    let mut composite: Vec<Vec<u8>> = Vec::new();
    let mut rows: Vec<usize> = Vec::with_capacity(keys.len());
    for i in 0..keys.len() {
        let slot = keys.with_key(i, |k| {
            let mut ck = Vec::with_capacity(k.len() + state.len() + 9);
            composite_key(&mut ck, key_group(k, max_p), state, k, &[]);
            let next = composite.len();
            *index.entry(ck).or_insert_with_key(|k| {
                composite.push(k.clone());
                next
            })
        });
        rows.push(slot);
    }
    let current = backend.multi_get(&composite)?;
    let mut acc: Vec<Option<i64>> = current.iter().map(|v| v.as_deref().map(decode_i64)).collect();
    for (i, slot) in rows.iter().enumerate() {
        let v = values.map_or(1, |vals| vals.value(i));
        let new = fold(agg, acc[*slot], v);
        acc[*slot] = Some(new);
        out.push(new);
    }
    let ops = composite.into_iter().zip(acc).map(|(k, v)| (k, v.map(|v| v.to_le_bytes().to_vec()))).collect();
    backend.write_batch(ops)
}

/// Folds `v` into a key's running aggregate. A key's first value starts the aggregate. Count and
/// sum add with wrapping arithmetic (never an overflow panic); min and max compare. For count the
/// caller passes `v = 1`.
#[inline]
pub fn fold(agg: AggKind, acc: Option<i64>, v: i64) -> i64 {
    match (agg, acc) {
        (_, None) => v,
        (AggKind::Count | AggKind::Sum, Some(a)) => a.wrapping_add(v),
        (AggKind::Min, Some(a)) => a.min(v),
        (AggKind::Max, Some(a)) => a.max(v),
    }
}

/// Reads a stored aggregate (little-endian i64). It never fails: shorter input is zero-extended
/// and bytes past the eighth are ignored.
#[inline]
pub fn decode_i64(b: &[u8]) -> i64 {
    let mut a = [0u8; 8];
    let n = b.len().min(8);
    a[..n].copy_from_slice(&b[..n]);
    i64::from_le_bytes(a)
}

/// How a state value is turned into bytes and back.
///
/// Encodings are stored in checkpoints and savepoints and read back by later runs, so an
/// implementation's encoding must not change.
pub trait StateCodec: Sized {
    /// Appends the encoding to `out`. It appends because a map state puts the user key right after
    /// the composite-key prefix.
    fn encode(&self, out: &mut Vec<u8>);
    /// Decodes exactly what `encode` wrote, or fails with [`StateError::Codec`].
    fn decode(bytes: &[u8]) -> Result<Self, StateError>;
}

/// 8 little-endian bytes.
impl StateCodec for i64 {
    fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.to_le_bytes());
    }
    fn decode(b: &[u8]) -> Result<Self, StateError> {
        b.try_into().map(i64::from_le_bytes).map_err(|_| StateError::Codec("expected 8 bytes for an i64".into()))
    }
}

/// 8 little-endian bytes.
impl StateCodec for u64 {
    fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.to_le_bytes());
    }
    fn decode(b: &[u8]) -> Result<Self, StateError> {
        b.try_into().map(u64::from_le_bytes).map_err(|_| StateError::Codec("expected 8 bytes for a u64".into()))
    }
}

/// The UTF-8 bytes, without a length (the backend keeps value lengths).
impl StateCodec for String {
    fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(self.as_bytes());
    }
    fn decode(b: &[u8]) -> Result<Self, StateError> {
        String::from_utf8(b.to_vec()).map_err(|_| StateError::Codec("invalid UTF-8 in a string state".into()))
    }
}

/// The bytes as they are.
impl StateCodec for Vec<u8> {
    fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(self);
    }
    fn decode(b: &[u8]) -> Result<Self, StateError> {
        Ok(b.to_vec())
    }
}

/// The composite key of a state for the backend's current key and namespace.
fn state_key(ctx: &KeyContext, name: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(ctx.key.len() + name.len() + 16);
    composite_key(&mut k, ctx.key_group, name, &ctx.key, &ctx.namespace);
    k
}

impl KeyContext {
    /// Sets the current key (its bytes as [`Keys::with_key`] gives them).
    ///
    /// Also computes the key's key group, once for every state access under this key.
    pub fn set_key(&mut self, key: &[u8], max_parallelism: u32) {
        self.key.clear();
        self.key.extend_from_slice(key);
        self.key_group = key_group(key, max_parallelism);
    }

    /// Sets the namespace (e.g. a window's bytes) for the following state accesses.
    pub fn set_namespace(&mut self, ns: &[u8]) {
        self.namespace.clear();
        self.namespace.extend_from_slice(ns);
    }
}

/// A single value per key and namespace.
///
/// Holds only the state's name. The value lives in the backend, so one `ValueState` serves
/// every key and namespace.
pub struct ValueState<T> {
    name: String,
    _t: PhantomData<T>,
}

impl<T: StateCodec> ValueState<T> {
    /// Declares a state called `name`. Panics if the name is 256 bytes or longer (the composite key
    /// stores its length in one byte).
    pub fn new(name: &str) -> Self {
        assert!(name.len() < 256, "state names are shorter than 256 bytes");
        Self { name: name.to_string(), _t: PhantomData }
    }
    /// The value for `ctx`'s key and namespace, if one was set.
    pub fn get(&self, b: &dyn KeyedStateBackend, ctx: &KeyContext) -> Result<Option<T>, StateError> {
        b.get(&state_key(ctx, &self.name))?.map(|v| T::decode(&v)).transpose()
    }
    /// Sets the value for the current key and namespace.
    pub fn update(&self, b: &mut dyn KeyedStateBackend, ctx: &KeyContext, v: &T) -> Result<(), StateError> {
        let mut buf = Vec::new();
        v.encode(&mut buf);
        b.put(&state_key(ctx, &self.name), &buf)
    }
    /// Removes the value for the current key and namespace.
    pub fn clear(&self, b: &mut dyn KeyedStateBackend, ctx: &KeyContext) -> Result<(), StateError> {
        b.delete(&state_key(ctx, &self.name))
    }
}

/// A list of values per key and namespace, stored as one length-prefixed sequence.
///
/// Each element is a u32 big-endian length and then its encoding. The whole list is one backend
/// value, so `add` reads and rewrites the list: cheap for short lists, quadratic for long ones.
pub struct ListState<T> {
    name: String,
    _t: PhantomData<T>,
}

impl<T: StateCodec> ListState<T> {
    /// Declares a list state called `name`. Unlike [`ValueState::new`] it does not check the name's
    /// length, which must still be under 256 bytes.
    pub fn new(name: &str) -> Self {
        Self { name: name.to_string(), _t: PhantomData }
    }
    /// The elements in insertion order. Empty when nothing was stored.
    pub fn get(&self, b: &dyn KeyedStateBackend, ctx: &KeyContext) -> Result<Vec<T>, StateError> {
        let Some(raw) = b.get(&state_key(ctx, &self.name))? else { return Ok(Vec::new()) };
        let mut r = crate::format::Reader { buf: &raw, pos: 0 };
        let mut out = Vec::new();
        while r.pos < raw.len() {
            let item = r.slice().ok_or_else(|| StateError::Codec("truncated list state".into()))?;
            out.push(T::decode(item)?);
        }
        Ok(out)
    }
    /// Appends one element.
    pub fn add(&self, b: &mut dyn KeyedStateBackend, ctx: &KeyContext, v: &T) -> Result<(), StateError> {
        let key = state_key(ctx, &self.name);
        let mut raw = b.get(&key)?.unwrap_or_default();
        let mut item = Vec::new();
        v.encode(&mut item);
        raw.extend_from_slice(&(item.len() as u32).to_be_bytes());
        raw.extend_from_slice(&item);
        b.put(&key, &raw)
    }
    /// Replaces the whole list. An empty slice stores an empty list; it does not remove the value.
    pub fn update(&self, b: &mut dyn KeyedStateBackend, ctx: &KeyContext, vs: &[T]) -> Result<(), StateError> {
        let mut raw = Vec::new();
        for v in vs {
            let mut item = Vec::new();
            v.encode(&mut item);
            raw.extend_from_slice(&(item.len() as u32).to_be_bytes());
            raw.extend_from_slice(&item);
        }
        b.put(&state_key(ctx, &self.name), &raw)
    }
    /// Removes the list.
    pub fn clear(&self, b: &mut dyn KeyedStateBackend, ctx: &KeyContext) -> Result<(), StateError> {
        b.delete(&state_key(ctx, &self.name))
    }
}

/// A map per key and namespace; each entry is its own composite key, so a lookup touches one
/// entry and iteration is a prefix scan.
pub struct MapState<K, V> {
    name: String,
    _t: PhantomData<(K, V)>,
}

impl<K: StateCodec, V: StateCodec> MapState<K, V> {
    /// Declares a map state called `name`. Like [`ListState::new`] it does not check the name's
    /// length, which must still be under 256 bytes.
    pub fn new(name: &str) -> Self {
        Self { name: name.to_string(), _t: PhantomData }
    }
    /// The composite key of one map entry: the state's prefix followed by the encoded user key.
    fn entry_key(&self, ctx: &KeyContext, uk: &K) -> Vec<u8> {
        let mut k = state_key(ctx, &self.name);
        uk.encode(&mut k);
        k
    }
    /// The value of user key `uk`, if present.
    pub fn get(&self, b: &dyn KeyedStateBackend, ctx: &KeyContext, uk: &K) -> Result<Option<V>, StateError> {
        b.get(&self.entry_key(ctx, uk))?.map(|v| V::decode(&v)).transpose()
    }
    /// Inserts or overwrites the entry for `uk`.
    pub fn put(&self, b: &mut dyn KeyedStateBackend, ctx: &KeyContext, uk: &K, v: &V) -> Result<(), StateError> {
        let mut buf = Vec::new();
        v.encode(&mut buf);
        b.put(&self.entry_key(ctx, uk), &buf)
    }
    /// Removes the entry for `uk`, if present.
    pub fn remove(&self, b: &mut dyn KeyedStateBackend, ctx: &KeyContext, uk: &K) -> Result<(), StateError> {
        b.delete(&self.entry_key(ctx, uk))
    }
    /// Every entry for the current key and namespace, ordered by encoded user key. This is a prefix
    /// scan: the hashmap backend scans the whole key group to do it.
    pub fn entries(&self, b: &dyn KeyedStateBackend, ctx: &KeyContext) -> Result<Vec<(K, V)>, StateError> {
        let prefix = state_key(ctx, &self.name);
        b.scan_prefix(&prefix)?.into_iter().map(|(k, v)| Ok((K::decode(&k[prefix.len()..])?, V::decode(&v)?))).collect()
    }
    /// Removes every entry in one write batch.
    pub fn clear(&self, b: &mut dyn KeyedStateBackend, ctx: &KeyContext) -> Result<(), StateError> {
        let prefix = state_key(ctx, &self.name);
        let ops = b.scan_prefix(&prefix)?.into_iter().map(|(k, _)| (k, None)).collect();
        b.write_batch(ops)
    }
}

/// A value per key and namespace folded with a reduce function on every `add`.
///
/// Stored exactly like a [`ValueState`]: the reduce function is code, not state, and must be the
/// same when the state is restored.
pub struct ReducingState<T> {
    /// The reduced value.
    value: ValueState<T>,
    /// Combines the stored value (first argument) with a new one.
    reduce: fn(&T, &T) -> T,
}

impl<T: StateCodec> ReducingState<T> {
    /// Declares a reducing state called `name` (under 256 bytes, as for [`ValueState::new`]).
    pub fn new(name: &str, reduce: fn(&T, &T) -> T) -> Self {
        Self { value: ValueState::new(name), reduce }
    }
    /// The reduced value, if anything was added.
    pub fn get(&self, b: &dyn KeyedStateBackend, ctx: &KeyContext) -> Result<Option<T>, StateError> {
        self.value.get(b, ctx)
    }
    /// Stores `v` if the state is empty, otherwise `reduce(stored, v)`.
    pub fn add(&self, b: &mut dyn KeyedStateBackend, ctx: &KeyContext, v: T) -> Result<(), StateError> {
        let new = match self.value.get(b, ctx)? {
            Some(acc) => (self.reduce)(&acc, &v),
            None => v,
        };
        self.value.update(b, ctx, &new)
    }
    /// Removes the reduced value.
    pub fn clear(&self, b: &mut dyn KeyedStateBackend, ctx: &KeyContext) -> Result<(), StateError> {
        self.value.clear(b, ctx)
    }
}
