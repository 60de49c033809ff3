//! The `datagen` source: deterministic synthetic rows for demos, tests and benchmarks.
//!
//! Row `n` (a global row number) is a pure function of the spec's seed, the field index and
//! `n`, and subtask `i` of `p` produces exactly the rows `n ≡ i (mod p)`. So a replay after a
//! failure, or the same job at another parallelism, yields the same multiset of rows.

use crate::state::{self, rescale_error};
use crate::text::Utf8Column;
use arrow_array::{ArrayRef, Int64Array, RecordBatch};
use arrow_schema::SchemaRef;
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::time::{Duration, Instant};
use weir_core::graph::{DatagenKind, DatagenSpec};
use weir_core::operator::{OpResult, OperatorError, SourcePoll, SourceReader, SubtaskInfo};

/// Most rows one poll of the datagen source emits.
pub const DATAGEN_BATCH_ROWS: usize = 4096;

/// Longest a rate-limited reader asks to be left alone, so the task still polls (and reacts
/// to cancellation) regularly at very low rates.
const MAX_IDLE: Duration = Duration::from_millis(100);

const NANOS_PER_SEC: u128 = 1_000_000_000;

/// Magic of a datagen state element (a [`DatagenPosition`]).
const STATE_MAGIC: &[u8; 4] = b"WDG2";

/// A datagen subtask's checkpoint state: which subtask it is and how far it got.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
struct DatagenPosition {
    parallelism: u64,
    index: u64,
    /// How many of its rows the subtask has emitted: its next row is `index + emitted * parallelism`.
    emitted: u64,
}

/// SplitMix64's finalizer: a cheap, well-mixed bijection of 64-bit values.
pub(crate) fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Decorrelates fields: two random fields of one row must not share their hash.
fn field_salt(field_idx: usize) -> u64 {
    splitmix64((field_idx as u64).wrapping_add(1).wrapping_mul(0xD1B5_4A32_D192_ED03))
}

/// One field's generator, with everything that does not depend on the row precomputed.
enum FieldGen {
    Sequence {
        start: i64,
    },
    /// `span` = max - min + 1, in `[1, 2^64]`, hence u128.
    RandomInt {
        min: i64,
        span: u128,
        key: u64,
    },
    RandomString {
        length: usize,
        key: u64,
    },
}

impl FieldGen {
    fn new(kind: &DatagenKind, field_idx: usize, seed: u64) -> Self {
        let key = seed ^ field_salt(field_idx);
        match *kind {
            DatagenKind::Sequence { start, .. } => FieldGen::Sequence { start },
            DatagenKind::RandomInt { min, max } => {
                // A reversed range is read as the same range rather than rejected: the job
                // compiler owns validation, and the reader must not panic on odd input.
                let (lo, hi) = if min <= max { (min, max) } else { (max, min) };
                FieldGen::RandomInt { min: lo, span: (hi as i128 - lo as i128 + 1) as u128, key }
            }
            DatagenKind::RandomString { length } => FieldGen::RandomString { length, key },
        }
    }

    /// The column for rows `first, first + step, ...` (`rows` of them).
    fn column(&self, first: u64, step: u64, rows: usize) -> OpResult<ArrayRef> {
        let row_numbers = (0..rows as u64).map(|k| first + k * step);
        Ok(match *self {
            FieldGen::Sequence { start } => {
                let values: Vec<i64> = row_numbers.map(|n| start.wrapping_add(n as i64)).collect();
                Arc::new(Int64Array::from(values))
            }
            FieldGen::RandomInt { min, span, key } => {
                // The same values as `x as u128 % span`, with a 64-bit division (a 128-bit one
                // is a library call per row) unless the span is the whole i64 range.
                let values: Vec<i64> = match u64::try_from(span) {
                    Ok(span) => row_numbers.map(|n| min.wrapping_add((splitmix64(key ^ n) % span) as i64)).collect(),
                    Err(_) => row_numbers.map(|n| min.wrapping_add(splitmix64(key ^ n) as i64)).collect(),
                };
                Arc::new(Int64Array::from(values))
            }
            FieldGen::RandomString { length, key } => {
                let mut col = Utf8Column::with_capacity(rows, rows.saturating_mul(length));
                for n in row_numbers {
                    random_letters(key, n, length, col.values_mut());
                    col.commit_value("datagen source")?;
                }
                Arc::new(col.finish()?)
            }
        })
    }
}

/// Appends `length` lowercase letters for row `n`: 8 letters per 64-bit hash of
/// (field key, row, chunk index), so the string is a pure function of its inputs.
fn random_letters(key: u64, n: u64, length: usize, out: &mut Vec<u8>) {
    let row_hash = splitmix64(key ^ n);
    let mut left = length;
    let mut chunk: u64 = 0;
    while left > 0 {
        let mut h = splitmix64(row_hash ^ chunk.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        let take = left.min(8);
        for _ in 0..take {
            out.push(b'a' + (h % 26) as u8);
            h /= 26;
        }
        left -= take;
        chunk += 1;
    }
}

/// Token-style rate limit: by `elapsed` seconds after the first poll, `share * elapsed` rows
/// may have been emitted in total.
struct RateLimit {
    share: u64,
    start: Option<Instant>,
    emitted: u64,
}

impl RateLimit {
    /// Rows that may be emitted now, or how long until the next one may.
    fn budget(&mut self) -> Result<u64, Duration> {
        let start = *self.start.get_or_insert_with(Instant::now);
        let elapsed = start.elapsed().as_nanos();
        let allowed = self.share as u128 * elapsed / NANOS_PER_SEC;
        let budget = allowed.saturating_sub(self.emitted as u128);
        if budget > 0 {
            return Ok(budget.min(u64::MAX as u128) as u64);
        }
        // The (emitted+1)-th row is allowed once share * t >= emitted + 1.
        let next_at = (self.emitted as u128 + 1) * NANOS_PER_SEC;
        let next_at = next_at.div_ceil(self.share as u128);
        let wait = next_at.saturating_sub(elapsed).min(MAX_IDLE.as_nanos());
        Err(Duration::from_nanos(wait as u64))
    }
}

pub struct DatagenReader {
    schema: SchemaRef,
    fields: Vec<FieldGen>,
    /// This subtask's first global row number, and the stride between its rows.
    index: u64,
    parallelism: u64,
    /// Rows this subtask produces in all (unbounded sources stop where row numbers would
    /// overflow, which no job reaches).
    local_total: u64,
    /// Rows of this subtask emitted so far.
    next_local: u64,
    batch_rows: usize,
    rate: Option<RateLimit>,
}

impl DatagenReader {
    pub fn new(spec: &DatagenSpec, info: &SubtaskInfo, schema: SchemaRef) -> Self {
        let parallelism = u64::from(info.parallelism.max(1));
        let index = u64::from(info.index);
        let local_total = match spec.total_rows() {
            Some(total) if total > index => (total - index - 1) / parallelism + 1,
            Some(_) => 0,
            None if index == u64::MAX => 1,
            None => ((u64::MAX - index) / parallelism).saturating_add(1),
        };
        let fields: Vec<FieldGen> = spec.fields.iter().enumerate().map(|(i, f)| FieldGen::new(&f.kind, i, spec.seed)).collect();
        // Keep every string column of a batch within a Utf8 column's 2 GiB of values.
        let longest = fields.iter().map(|f| if let FieldGen::RandomString { length, .. } = f { *length } else { 0 }).max().unwrap_or(0);
        let batch_rows = match (i32::MAX as usize).checked_div(longest) {
            Some(fit) => DATAGEN_BATCH_ROWS.min(fit).max(1),
            None => DATAGEN_BATCH_ROWS,
        };
        let rate = spec.rows_per_second.map(|total_rate| RateLimit { share: (total_rate / parallelism).max(1), start: None, emitted: 0 });
        Self { schema, fields, index, parallelism, local_total, next_local: 0, batch_rows, rate }
    }
}

impl SourceReader for DatagenReader {
    fn poll_next(&mut self) -> OpResult<SourcePoll> {
        let remaining = self.local_total - self.next_local;
        if remaining == 0 {
            return Ok(SourcePoll::End);
        }
        let mut rows = remaining.min(self.batch_rows as u64);
        if let Some(rate) = &mut self.rate {
            match rate.budget() {
                Ok(budget) => rows = rows.min(budget),
                Err(wait) => return Ok(SourcePoll::Idle(wait)),
            }
        }
        let rows = rows as usize;
        let first = self.index + self.next_local * self.parallelism;
        let columns = self.fields.iter().map(|f| f.column(first, self.parallelism, rows)).collect::<OpResult<Vec<_>>>()?;
        let batch = RecordBatch::try_new(self.schema.clone(), columns)?;
        self.next_local += rows as u64;
        if let Some(rate) = &mut self.rate {
            rate.emitted += rows as u64;
        }
        Ok(SourcePoll::Batch(batch))
    }

    /// One element: (parallelism, index, rows emitted). Taken between two polls, it covers
    /// exactly the rows of the batches returned so far.
    fn snapshot_state(&mut self, _checkpoint: u64) -> OpResult<Option<Vec<Vec<u8>>>> {
        let position = DatagenPosition { parallelism: self.parallelism, index: self.index, emitted: self.next_local };
        Ok(Some(vec![state::encode(STATE_MAGIC, &position, "datagen")?]))
    }

    /// Resumes right after the last row emitted before the snapshot. Only the subtask's own
    /// position at the same parallelism is accepted: rows are dealt by `n mod p`, so other
    /// subtasks' positions at another parallelism do not describe a set of rows this subtask
    /// could continue from without duplicates or gaps.
    fn restore_state(&mut self, elements: Vec<Vec<u8>>) -> OpResult {
        let positions =
            elements.iter().map(|e| state::decode::<DatagenPosition>(e, STATE_MAGIC, "datagen")).collect::<OpResult<Vec<_>>>()?;
        let now = self.parallelism as u32;
        let emitted = match positions.as_slice() {
            [] => return Err(rescale_error("datagen", &format!("at most {}", self.index), now)),
            [p] if p.parallelism == self.parallelism && p.index == self.index => p.emitted,
            [p, ..] if p.parallelism != self.parallelism => return Err(rescale_error("datagen", &p.parallelism.to_string(), now)),
            _ => {
                let got: Vec<String> = positions.iter().map(|p| format!("{} of {}", p.index, p.parallelism)).collect();
                return Err(OperatorError::Failed(format!(
                    "datagen subtask {} of {} cannot restore from the positions of subtasks [{}]",
                    self.index,
                    self.parallelism,
                    got.join(", ")
                )));
            }
        };
        self.next_local = emitted.min(self.local_total);
        if let Some(rate) = &mut self.rate {
            // The rate clock starts over at the first poll after the restore.
            rate.start = None;
            rate.emitted = 0;
        }
        tracing::debug!(index = self.index, rows = self.next_local, "datagen restored its position");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::info;
    use arrow_array::cast::AsArray;
    use arrow_array::types::Int64Type;
    use arrow_schema::{DataType, Field, Schema};
    use weir_core::graph::DatagenField;

    fn field(name: &str, kind: DatagenKind) -> DatagenField {
        DatagenField { name: name.into(), kind }
    }

    fn spec(number_of_rows: Option<u64>, rows_per_second: Option<u64>) -> DatagenSpec {
        DatagenSpec {
            fields: vec![
                field("id", DatagenKind::Sequence { start: 10, end: None }),
                field("small", DatagenKind::RandomInt { min: -5, max: 5 }),
                field("name", DatagenKind::RandomString { length: 13 }),
                field("any", DatagenKind::RandomInt { min: i64::MIN, max: i64::MAX }),
                field("empty", DatagenKind::RandomString { length: 0 }),
            ],
            rows_per_second,
            number_of_rows,
            seed: 42,
        }
    }

    fn schema_of(spec: &DatagenSpec) -> SchemaRef {
        Arc::new(Schema::new(
            spec.fields
                .iter()
                .map(|f| {
                    let ty = match f.kind {
                        DatagenKind::RandomString { .. } => DataType::Utf8,
                        _ => DataType::Int64,
                    };
                    Field::new(&f.name, ty, false)
                })
                .collect::<Vec<_>>(),
        ))
    }

    type Row = (i64, i64, String, i64, String);

    fn rows_of(b: &RecordBatch) -> Vec<Row> {
        let id = b.column(0).as_primitive::<Int64Type>();
        let small = b.column(1).as_primitive::<Int64Type>();
        let name = b.column(2).as_string::<i32>();
        let any = b.column(3).as_primitive::<Int64Type>();
        let empty = b.column(4).as_string::<i32>();
        (0..b.num_rows())
            .map(|i| (id.value(i), small.value(i), name.value(i).to_string(), any.value(i), empty.value(i).to_string()))
            .collect()
    }

    /// Polls a reader to the end, checking batch sizes on the way.
    fn drain_reader(reader: &mut DatagenReader) -> Vec<Row> {
        let mut rows = Vec::new();
        loop {
            match reader.poll_next().expect("poll") {
                SourcePoll::Batch(b) => {
                    assert!(b.num_rows() > 0 && b.num_rows() <= DATAGEN_BATCH_ROWS);
                    rows.extend(rows_of(&b));
                }
                SourcePoll::Idle(_) => panic!("an unlimited datagen never idles"),
                SourcePoll::End => break,
            }
        }
        // Once ended, it stays ended.
        assert!(matches!(reader.poll_next().expect("poll"), SourcePoll::End));
        rows
    }

    /// Polls one subtask to the end.
    fn drain(spec: &DatagenSpec, index: u32, parallelism: u32) -> Vec<Row> {
        drain_reader(&mut DatagenReader::new(spec, &info(index, parallelism), schema_of(spec)))
    }

    #[test]
    fn datagen_parallel_union_equals_single() {
        let spec = spec(Some(10_001), None);
        let single = drain(&spec, 0, 1);
        assert_eq!(single.len(), 10_001);
        let mut union = Vec::new();
        for index in 0..3 {
            let part = drain(&spec, index, 3);
            // Subtask i gets rows n ≡ i (mod 3), in increasing n.
            for (k, row) in part.iter().enumerate() {
                assert_eq!(row.0, 10 + index as i64 + 3 * k as i64);
            }
            union.extend(part);
        }
        let mut single_sorted = single.clone();
        single_sorted.sort();
        union.sort();
        assert_eq!(single_sorted, union);
    }

    #[test]
    fn datagen_values_sequence_bounds_and_lengths() {
        let spec = spec(Some(9_000), None);
        let rows = drain(&spec, 0, 1);
        assert_eq!(rows.len(), 9_000);
        let mut distinct_small = std::collections::BTreeSet::new();
        for (n, (id, small, name, _any, empty)) in rows.iter().enumerate() {
            assert_eq!(*id, 10 + n as i64);
            assert!((-5..=5).contains(small), "{small} out of [-5, 5]");
            distinct_small.insert(*small);
            assert_eq!(name.len(), 13);
            assert!(name.bytes().all(|b| b.is_ascii_lowercase()), "{name}");
            assert!(empty.is_empty());
        }
        // Every value of a small range shows up: the hash is not stuck.
        assert_eq!(distinct_small.len(), 11);
        // Pure function of the seed: a second reader agrees, another seed does not.
        assert_eq!(drain(&spec, 0, 1), rows);
        let mut other = spec.clone();
        other.seed = 43;
        assert_ne!(drain(&other, 0, 1), rows);
    }

    #[test]
    fn unbounded_datagen_at_parallelism_one_keeps_producing() {
        let spec = DatagenSpec {
            fields: vec![DatagenField { name: "k".into(), kind: DatagenKind::RandomInt { min: 0, max: 9 } }],
            rows_per_second: None,
            number_of_rows: None,
            seed: 1,
        };
        let schema = Arc::new(Schema::new(vec![Field::new("k", DataType::Int64, false)]));
        let mut reader = DatagenReader::new(&spec, &info(0, 1), schema);
        for _ in 0..3 {
            assert!(matches!(reader.poll_next().unwrap(), SourcePoll::Batch(_)));
        }
    }

    #[test]
    fn datagen_bounded_sequence_sets_total() {
        let spec = DatagenSpec {
            fields: vec![field("id", DatagenKind::Sequence { start: 1, end: Some(100) })],
            rows_per_second: None,
            number_of_rows: None,
            seed: 0,
        };
        let schema = schema_of(&spec);
        let mut seen = Vec::new();
        for index in 0..4 {
            let mut reader = DatagenReader::new(&spec, &info(index, 4), schema.clone());
            while let SourcePoll::Batch(b) = reader.poll_next().expect("poll") {
                seen.extend(b.column(0).as_primitive::<Int64Type>().values().iter().copied());
            }
        }
        seen.sort();
        assert_eq!(seen, (1..=100).collect::<Vec<i64>>());
    }

    #[test]
    fn datagen_more_subtasks_than_rows() {
        let spec = spec(Some(2), None);
        assert_eq!(drain(&spec, 0, 4).len(), 1);
        assert_eq!(drain(&spec, 1, 4).len(), 1);
        assert!(drain(&spec, 2, 4).is_empty());
        assert!(drain(&spec, 3, 4).is_empty());
    }

    #[test]
    fn datagen_unbounded_keeps_producing() {
        let spec = spec(None, None);
        let mut reader = DatagenReader::new(&spec, &info(1, 2), schema_of(&spec));
        for _ in 0..5 {
            match reader.poll_next().expect("poll") {
                SourcePoll::Batch(b) => assert_eq!(b.num_rows(), DATAGEN_BATCH_ROWS),
                _ => panic!("an unbounded, unlimited datagen always has a full batch"),
            }
        }
    }

    #[test]
    fn datagen_rate_limit_idles_when_over_budget() {
        let spec = spec(Some(1_000_000), Some(1));
        let mut reader = DatagenReader::new(&spec, &info(0, 1), schema_of(&spec));
        match reader.poll_next().expect("poll") {
            SourcePoll::Batch(b) => assert!(b.num_rows() <= 1),
            SourcePoll::Idle(wait) => assert!(wait <= MAX_IDLE),
            SourcePoll::End => panic!("not done yet"),
        }
    }

    #[test]
    fn rate_limit_budget_arithmetic() {
        // A start in the past stands in for elapsed time, so no sleeping is needed.
        let past = Instant::now().checked_sub(Duration::from_secs(2));
        let Some(start) = past else { return };
        let mut rate = RateLimit { share: 1000, start: Some(start), emitted: 0 };
        let budget = rate.budget().expect("two seconds of budget");
        assert!(budget >= 2000, "{budget}");
        rate.emitted = 1_000_000;
        let wait = rate.budget().expect_err("far over budget");
        assert_eq!(wait, MAX_IDLE);
    }

    /// Emits `before` batches, snapshots, emits `lost` more batches (output after the
    /// snapshot, lost in a crash), then restores a fresh reader and drains it.
    fn interrupted_run(spec: &DatagenSpec, index: u32, parallelism: u32, before: usize, lost: usize) -> Vec<Row> {
        let schema = schema_of(spec);
        let mut first = DatagenReader::new(spec, &info(index, parallelism), schema.clone());
        let mut rows = Vec::new();
        for _ in 0..before {
            if let SourcePoll::Batch(b) = first.poll_next().expect("poll") {
                rows.extend(rows_of(&b));
            }
        }
        let state = first.snapshot_state(1).expect("snapshot").expect("datagen has state");
        assert_eq!(state.len(), 1, "one element per subtask");
        for _ in 0..lost {
            first.poll_next().expect("poll");
        }
        drop(first);
        let mut restored = DatagenReader::new(spec, &info(index, parallelism), schema);
        restored.restore_state(state).expect("restore");
        rows.extend(drain_reader(&mut restored));
        rows
    }

    #[test]
    fn datagen_snapshot_restore_continues_exactly() {
        let spec = spec(Some(100_000), None);
        for (index, parallelism) in [(0, 1), (1, 3), (2, 3)] {
            let uninterrupted = drain(&spec, index, parallelism);
            assert!(uninterrupted.len() > 4 * DATAGEN_BATCH_ROWS);
            for (before, lost) in [(0, 0), (0, 2), (1, 1), (3, 2), (100, 1)] {
                assert_eq!(
                    interrupted_run(&spec, index, parallelism, before, lost),
                    uninterrupted,
                    "subtask {index} of {parallelism}, snapshot after {before} polls"
                );
            }
        }
    }

    #[test]
    fn datagen_restore_restarts_the_rate_clock() {
        let spec = spec(Some(1_000_000), Some(1_000_000));
        let mut reader = DatagenReader::new(&spec, &info(0, 1), schema_of(&spec));
        let state = reader.snapshot_state(3).expect("snapshot").expect("state");
        if let Some(rate) = &mut reader.rate {
            rate.start = Instant::now().checked_sub(Duration::from_secs(1));
            rate.emitted = 77;
        }
        reader.restore_state(state).expect("restore");
        let rate = reader.rate.as_ref().expect("rate limited");
        assert!(rate.start.is_none() && rate.emitted == 0);
    }

    #[test]
    fn datagen_restore_at_another_parallelism_is_an_error() {
        let spec = spec(Some(1000), None);
        let schema = schema_of(&spec);
        let snapshot = |index, parallelism| {
            let mut reader = DatagenReader::new(&spec, &info(index, parallelism), schema.clone());
            reader.poll_next().expect("poll");
            reader.snapshot_state(1).expect("snapshot").expect("state").remove(0)
        };
        let restore = |index, parallelism, elements: Vec<Vec<u8>>| {
            let mut reader = DatagenReader::new(&spec, &info(index, parallelism), schema.clone());
            reader.restore_state(elements).expect_err("restore must fail").to_string()
        };
        // Scale up: subtask 0 of 3 got the element of subtask 0 of 2; subtask 2 got nothing.
        let err = restore(0, 3, vec![snapshot(0, 2)]);
        assert!(err.contains("datagen cannot be restored at a different parallelism (was 2, now 3)"), "{err}");
        let err = restore(2, 3, vec![]);
        assert!(err.contains("datagen cannot be restored at a different parallelism (was at most 2, now 3)"), "{err}");
        // Scale down: both old elements on the one new subtask.
        let err = restore(0, 1, vec![snapshot(0, 2), snapshot(1, 2)]);
        assert!(err.contains("datagen cannot be restored at a different parallelism (was 2, now 1)"), "{err}");
        // Same parallelism, but another subtask's position.
        let err = restore(0, 2, vec![snapshot(1, 2)]);
        assert!(err.contains("subtasks [1 of 2]"), "{err}");
        // Not a datagen element at all.
        let err = restore(0, 1, vec![b"garbage".to_vec()]);
        assert!(err.contains("datagen cannot restore"), "{err}");
    }

    #[test]
    fn random_ints_are_the_values_of_the_128_bit_formula() {
        // The column is computed with a 64-bit division; the values are part of what a restored
        // job replays, so they must stay those of `min + (x as u128 % span)`.
        for (min, max) in [(0, 99_999), (-5, 5), (i64::MIN, i64::MAX), (-5, i64::MAX), (i64::MIN, 0), (7, 7)] {
            let gen = FieldGen::new(&DatagenKind::RandomInt { min, max }, 1, 42);
            let col = gen.column(3, 7, 500).unwrap();
            let got = col.as_any().downcast_ref::<Int64Array>().unwrap();
            let span = (max as i128 - min as i128 + 1) as u128;
            let key = 42 ^ field_salt(1);
            for (k, v) in got.values().iter().enumerate() {
                let n = 3 + k as u64 * 7;
                let want = (min as i128 + (splitmix64(key ^ n) as u128 % span) as i128) as i64;
                assert_eq!(*v, want, "{min}..={max} row {n}");
            }
        }
    }
}
