//! Keyed state for Weir's operators.
//!
//! This crate is the seam between operators and where their state lives. Today it holds the
//! in-memory backend behind the one interface keyed operators use; the RocksDB backend,
//! snapshots per key-group range and checkpoint storage plug in behind the same interface
//! (see `docs/state.md`).
//!
//! The interface is batch-at-a-time: an operator hands a whole column of keys (and values)
//! and gets the updated aggregates back, so a backend can batch its reads and writes (a
//! RocksDB backend does one `multi_get` and one `WriteBatch` per record batch).

use arrow_array::{Array, Int64Array, StringArray};
use hashbrown::HashMap;
use weir_core::graph::AggKind;

/// The key column of a batch.
#[derive(Clone, Copy)]
pub enum Keys<'a> {
    Utf8(&'a StringArray),
    Int64(&'a Int64Array),
}

impl Keys<'_> {
    pub fn len(&self) -> usize {
        match self {
            Keys::Utf8(a) => a.len(),
            Keys::Int64(a) => a.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A keyed running aggregate (count, sum, min, max) over i64 values.
pub trait AggregatingState: Send {
    /// For every row `i`: folds `values[i]` (1 for count) into the state of `keys[i]` and
    /// writes the key's updated aggregate to `out[i]`. `out` is cleared first.
    fn update_batch(&mut self, keys: Keys<'_>, values: Option<&Int64Array>, out: &mut Vec<i64>);

    /// Number of keys with state.
    fn len(&self) -> usize;

    fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The in-memory (`hashmap`) backend's aggregating state.
pub struct HashMapAggregatingState {
    kind: AggKind,
    text: HashMap<Box<[u8]>, i64>,
    ints: HashMap<i64, i64>,
}

impl HashMapAggregatingState {
    pub fn new(kind: AggKind) -> Self {
        Self { kind, text: HashMap::new(), ints: HashMap::new() }
    }
}

#[inline]
fn fold(kind: AggKind, acc: Option<i64>, v: i64) -> i64 {
    match (kind, acc) {
        (_, None) => v,
        (AggKind::Count | AggKind::Sum, Some(a)) => a.wrapping_add(v),
        (AggKind::Min, Some(a)) => a.min(v),
        (AggKind::Max, Some(a)) => a.max(v),
    }
}

impl AggregatingState for HashMapAggregatingState {
    fn update_batch(&mut self, keys: Keys<'_>, values: Option<&Int64Array>, out: &mut Vec<i64>) {
        out.clear();
        out.reserve(keys.len());
        let kind = self.kind;
        let value = |i: usize| values.map_or(1, |v| v.value(i));
        match keys {
            Keys::Utf8(arr) => {
                for i in 0..arr.len() {
                    let key = arr.value(i).as_bytes();
                    let v = value(i);
                    let new = match self.text.get_mut(key) {
                        Some(acc) => {
                            *acc = fold(kind, Some(*acc), v);
                            *acc
                        }
                        None => {
                            self.text.insert(key.into(), v);
                            v
                        }
                    };
                    out.push(new);
                }
            }
            Keys::Int64(arr) => {
                for i in 0..arr.len() {
                    let v = value(i);
                    let acc = self.ints.entry(arr.value(i)).and_modify(|a| *a = fold(kind, Some(*a), v)).or_insert(v);
                    out.push(*acc);
                }
            }
        }
    }

    fn len(&self) -> usize {
        self.text.len() + self.ints.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn count_sum_min_max_fold_per_key() {
        let keys = StringArray::from(vec!["a", "b", "a", "a"]);
        let vals = Int64Array::from(vec![5, 1, -2, 7]);
        let mut out = Vec::new();
        let mut count = HashMapAggregatingState::new(AggKind::Count);
        count.update_batch(Keys::Utf8(&keys), None, &mut out);
        assert_eq!(out, vec![1, 1, 2, 3]);
        let mut sum = HashMapAggregatingState::new(AggKind::Sum);
        sum.update_batch(Keys::Utf8(&keys), Some(&vals), &mut out);
        assert_eq!(out, vec![5, 1, 3, 10]);
        let mut min = HashMapAggregatingState::new(AggKind::Min);
        min.update_batch(Keys::Utf8(&keys), Some(&vals), &mut out);
        assert_eq!(out, vec![5, 1, -2, -2]);
        let ikeys = Int64Array::from(vec![1, 1, 2]);
        let mut max = HashMapAggregatingState::new(AggKind::Max);
        max.update_batch(Keys::Int64(&ikeys), Some(&Int64Array::from(vec![3, 9, 4])), &mut out);
        assert_eq!(out, vec![3, 9, 4]);
        assert_eq!(max.len(), 2);
    }
}
