//! Keyed state of a process function: descriptors that declare a state by name and type, and
//! the handles a [`Context`](crate::process::Context) gives for the current key.
//!
//! Every state lives in the job's keyed state backend (`hashmap` or `rocksdb`) of the process
//! operator, under the backend's composite key
//! (`key group | state name | key | namespace`, see `weir_state::keyed`): the key is the
//! postcard bytes `key_by` put in the hidden key column, so it is the same key group the
//! record was routed by. The task snapshots, restores and rescales that backend by key group
//! like every keyed state, and a state is found again after a restore by its name: keep the
//! names (and the operator's uid) stable across versions of a program.
//!
//! Values are postcard-encoded, like records. A [`ListState`] is one backend value (its
//! elements length-prefixed, so `add` appends without decoding); a [`MapState`] stores each
//! entry under its own composite key (the state's prefix followed by the entry's encoded key),
//! so `get`/`put` touch one entry and `iter` is a prefix scan. Each access goes to the backend:
//! state is read per record, as in Flink.
//!
//! Names starting with `weir.` are reserved (the timers are stored as `weir.timers`).

use crate::functions::Record;
use crate::records;
use std::marker::PhantomData;
use std::sync::Arc;
use weir_core::operator::{OpResult, OperatorError};
use weir_state::keyed::composite_key;
use weir_state::{KeyedStateBackend, StateError};

/// The prefix of state names Weir keeps for itself.
pub(crate) const RESERVED_PREFIX: &str = "weir.";

/// Panics unless `name` is a state name a program may declare.
fn check_name(name: &str) {
    assert!(!name.is_empty() && name.len() < 256, "a state name has 1 to 255 bytes, not {}: '{name}'", name.len());
    assert!(!name.starts_with(RESERVED_PREFIX), "state names starting with '{RESERVED_PREFIX}' are reserved: '{name}'");
}

/// Declares a [`ValueState`]: one value of type `T` per key.
pub struct ValueStateDescriptor<T> {
    name: String,
    _t: PhantomData<fn() -> T>,
}

impl<T> ValueStateDescriptor<T> {
    /// A value state called `name` (1 to 255 bytes, not starting with `weir.`; panics otherwise).
    pub fn new(name: &str) -> Self {
        check_name(name);
        Self { name: name.to_string(), _t: PhantomData }
    }

    pub fn name(&self) -> &str {
        &self.name
    }
}

/// Declares a [`ListState`]: a list of `T` per key.
pub struct ListStateDescriptor<T> {
    name: String,
    _t: PhantomData<fn() -> T>,
}

impl<T> ListStateDescriptor<T> {
    /// A list state called `name` (as [`ValueStateDescriptor::new`]).
    pub fn new(name: &str) -> Self {
        check_name(name);
        Self { name: name.to_string(), _t: PhantomData }
    }

    pub fn name(&self) -> &str {
        &self.name
    }
}

/// Declares a [`MapState`]: a map from `UK` to `UV` per key.
pub struct MapStateDescriptor<UK, UV> {
    name: String,
    _t: PhantomData<fn() -> (UK, UV)>,
}

impl<UK, UV> MapStateDescriptor<UK, UV> {
    /// A map state called `name` (as [`ValueStateDescriptor::new`]).
    pub fn new(name: &str) -> Self {
        check_name(name);
        Self { name: name.to_string(), _t: PhantomData }
    }

    pub fn name(&self) -> &str {
        &self.name
    }
}

/// Declares a [`ReducingState`]: one value per key, folded with `reduce` on every `add`.
pub struct ReducingStateDescriptor<T> {
    name: String,
    reduce: Arc<dyn Fn(T, T) -> T + Send + Sync>,
}

impl<T> ReducingStateDescriptor<T> {
    /// A reducing state called `name` (as [`ValueStateDescriptor::new`]); `reduce` combines the
    /// stored value (first) with an added one. It is code, not state: a restored program must
    /// reduce the same way.
    pub fn new(name: &str, reduce: impl Fn(T, T) -> T + Send + Sync + 'static) -> Self {
        check_name(name);
        Self { name: name.to_string(), reduce: Arc::new(reduce) }
    }

    pub fn name(&self) -> &str {
        &self.name
    }
}

/// The current key's place in the backend, lent to one state handle.
pub(crate) struct Scope<'s> {
    pub backend: &'s mut dyn KeyedStateBackend,
    /// The key's bytes (the hidden key column's).
    pub key: &'s [u8],
    pub key_group: u32,
    /// The operator's name, for errors.
    pub operator: &'s str,
}

impl Scope<'_> {
    fn state_key(&self, name: &str) -> Vec<u8> {
        let mut k = Vec::with_capacity(self.key.len() + name.len() + 9);
        composite_key(&mut k, self.key_group, name, self.key, &[]);
        k
    }

    fn error(&self, name: &str, e: StateError) -> OperatorError {
        OperatorError::Failed(format!("operator '{}': keyed state '{name}': {e}", self.operator))
    }

    fn get(&self, name: &str, key: &[u8]) -> OpResult<Option<Vec<u8>>> {
        self.backend.get(key).map_err(|e| self.error(name, e))
    }

    fn put(&mut self, name: &str, key: &[u8], value: &[u8]) -> OpResult {
        self.backend.put(key, value).map_err(|e| self.error(name, e))
    }

    fn delete(&mut self, name: &str, key: &[u8]) -> OpResult {
        self.backend.delete(key).map_err(|e| self.error(name, e))
    }

    fn encode<T: Record>(&self, value: &T) -> OpResult<Vec<u8>> {
        let mut buf = Vec::new();
        records::encode_into(value, &mut buf, self.operator)?;
        Ok(buf)
    }
}

/// The current key's value of a [`ValueStateDescriptor`] (Flink's `ValueState`).
pub struct ValueState<'s, T> {
    pub(crate) scope: Scope<'s>,
    pub(crate) name: &'s str,
    pub(crate) _t: PhantomData<fn() -> T>,
}

impl<T: Record> ValueState<'_, T> {
    /// The value, or `None` if none was set for this key.
    pub fn value(&self) -> OpResult<Option<T>> {
        let key = self.scope.state_key(self.name);
        self.scope.get(self.name, &key)?.map(|b| records::decode(&b, self.scope.operator)).transpose()
    }

    /// Sets the value.
    pub fn update(&mut self, value: &T) -> OpResult {
        let (key, bytes) = (self.scope.state_key(self.name), self.scope.encode(value)?);
        self.scope.put(self.name, &key, &bytes)
    }

    /// Removes the value.
    pub fn clear(&mut self) -> OpResult {
        let key = self.scope.state_key(self.name);
        self.scope.delete(self.name, &key)
    }
}

/// The current key's list of a [`ListStateDescriptor`] (Flink's `ListState`).
pub struct ListState<'s, T> {
    pub(crate) scope: Scope<'s>,
    pub(crate) name: &'s str,
    pub(crate) _t: PhantomData<fn() -> T>,
}

/// Appends one length-prefixed element.
fn append_element(raw: &mut Vec<u8>, element: &[u8]) {
    raw.extend_from_slice(&(element.len() as u32).to_be_bytes());
    raw.extend_from_slice(element);
}

impl<T: Record> ListState<'_, T> {
    /// The elements in the order they were added; empty if none.
    pub fn get(&self) -> OpResult<Vec<T>> {
        let key = self.scope.state_key(self.name);
        let Some(raw) = self.scope.get(self.name, &key)? else { return Ok(Vec::new()) };
        let corrupt = || self.scope.error(self.name, StateError::Codec("truncated list state".into()));
        let (mut out, mut rest) = (Vec::new(), raw.as_slice());
        while !rest.is_empty() {
            let len = rest.get(..4).ok_or_else(corrupt)?;
            let len = u32::from_be_bytes([len[0], len[1], len[2], len[3]]) as usize;
            let element = rest.get(4..4 + len).ok_or_else(corrupt)?;
            out.push(records::decode(element, self.scope.operator)?);
            rest = &rest[4 + len..];
        }
        Ok(out)
    }

    /// Appends `value` (the stored elements are not decoded).
    pub fn add(&mut self, value: &T) -> OpResult {
        let key = self.scope.state_key(self.name);
        let mut raw = self.scope.get(self.name, &key)?.unwrap_or_default();
        append_element(&mut raw, &self.scope.encode(value)?);
        self.scope.put(self.name, &key, &raw)
    }

    /// Replaces the list with `values`.
    pub fn update(&mut self, values: &[T]) -> OpResult {
        let key = self.scope.state_key(self.name);
        let mut raw = Vec::new();
        for v in values {
            append_element(&mut raw, &self.scope.encode(v)?);
        }
        self.scope.put(self.name, &key, &raw)
    }

    /// Removes the list.
    pub fn clear(&mut self) -> OpResult {
        let key = self.scope.state_key(self.name);
        self.scope.delete(self.name, &key)
    }
}

/// The current key's map of a [`MapStateDescriptor`] (Flink's `MapState`).
pub struct MapState<'s, UK, UV> {
    pub(crate) scope: Scope<'s>,
    pub(crate) name: &'s str,
    pub(crate) _t: PhantomData<fn() -> (UK, UV)>,
}

impl<UK: Record, UV: Record> MapState<'_, UK, UV> {
    fn entry_key(&self, user_key: &UK) -> OpResult<Vec<u8>> {
        let mut key = self.scope.state_key(self.name);
        key.extend_from_slice(&self.scope.encode(user_key)?);
        Ok(key)
    }

    /// The value under `user_key`, if any.
    pub fn get(&self, user_key: &UK) -> OpResult<Option<UV>> {
        let key = self.entry_key(user_key)?;
        self.scope.get(self.name, &key)?.map(|b| records::decode(&b, self.scope.operator)).transpose()
    }

    /// Sets the value under `user_key`.
    pub fn put(&mut self, user_key: &UK, value: &UV) -> OpResult {
        let (key, bytes) = (self.entry_key(user_key)?, self.scope.encode(value)?);
        self.scope.put(self.name, &key, &bytes)
    }

    /// Removes the entry under `user_key`, if any.
    pub fn remove(&mut self, user_key: &UK) -> OpResult {
        let key = self.entry_key(user_key)?;
        self.scope.delete(self.name, &key)
    }

    /// Whether there is an entry under `user_key`.
    pub fn contains(&self, user_key: &UK) -> OpResult<bool> {
        let key = self.entry_key(user_key)?;
        Ok(self.scope.get(self.name, &key)?.is_some())
    }

    /// Every entry of the key, ordered by the bytes of the encoded user keys (not by `UK`'s own
    /// order). A prefix scan: the hashmap backend looks through the key's whole key group.
    pub fn iter(&self) -> OpResult<Vec<(UK, UV)>> {
        let prefix = self.scope.state_key(self.name);
        let entries = self.scope.backend.scan_prefix(&prefix).map_err(|e| self.scope.error(self.name, e))?;
        entries
            .into_iter()
            .map(|(k, v)| Ok((records::decode(&k[prefix.len()..], self.scope.operator)?, records::decode(&v, self.scope.operator)?)))
            .collect()
    }

    /// Removes every entry of the key (one write batch).
    pub fn clear(&mut self) -> OpResult {
        let prefix = self.scope.state_key(self.name);
        let entries = self.scope.backend.scan_prefix(&prefix).map_err(|e| self.scope.error(self.name, e))?;
        let ops = entries.into_iter().map(|(k, _)| (k, None)).collect();
        self.scope.backend.write_batch(ops).map_err(|e| self.scope.error(self.name, e))
    }
}

/// The current key's value of a [`ReducingStateDescriptor`] (Flink's `ReducingState`).
pub struct ReducingState<'s, T> {
    pub(crate) scope: Scope<'s>,
    pub(crate) name: &'s str,
    pub(crate) reduce: &'s (dyn Fn(T, T) -> T + Send + Sync),
}

impl<T: Record> ReducingState<'_, T> {
    /// The reduced value, or `None` if nothing was added for this key.
    pub fn get(&self) -> OpResult<Option<T>> {
        let key = self.scope.state_key(self.name);
        self.scope.get(self.name, &key)?.map(|b| records::decode(&b, self.scope.operator)).transpose()
    }

    /// Stores `value` if the state is empty, otherwise `reduce(stored, value)`.
    pub fn add(&mut self, value: T) -> OpResult {
        let key = self.scope.state_key(self.name);
        let new = match self.scope.get(self.name, &key)? {
            Some(b) => (self.reduce)(records::decode(&b, self.scope.operator)?, value),
            None => value,
        };
        let bytes = self.scope.encode(&new)?;
        self.scope.put(self.name, &key, &bytes)
    }

    /// Removes the value.
    pub fn clear(&mut self) -> OpResult {
        let key = self.scope.state_key(self.name);
        self.scope.delete(self.name, &key)
    }
}

impl<T> ReducingStateDescriptor<T> {
    pub(crate) fn reduce_fn(&self) -> &(dyn Fn(T, T) -> T + Send + Sync) {
        self.reduce.as_ref()
    }
}
