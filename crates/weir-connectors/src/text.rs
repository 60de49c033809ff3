//! A `Utf8` column built straight from one value buffer and an offsets vector, shared by the
//! sources that produce text (`socket`, `file`, the string fields of `datagen`). Readers append
//! bytes in place (e.g. `read_until` into [`Utf8Column::values_mut`]) and close each value
//! with [`Utf8Column::commit_value`], so a batch costs a couple of allocations, not one per row.

use arrow_array::StringArray;
use arrow_buffer::{Buffer, OffsetBuffer, ScalarBuffer};
use weir_core::operator::{OpResult, OperatorError};

pub struct Utf8Column {
    values: Vec<u8>,
    /// Always starts with 0; one more entry than committed values.
    offsets: Vec<i32>,
}

impl Utf8Column {
    pub fn with_capacity(rows: usize, bytes: usize) -> Self {
        let mut offsets = Vec::with_capacity(rows + 1);
        offsets.push(0);
        Self { values: Vec::with_capacity(bytes), offsets }
    }

    /// Number of committed values.
    pub fn len(&self) -> usize {
        self.offsets.len() - 1
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes held so far (committed or not).
    pub fn value_bytes(&self) -> usize {
        self.values.len()
    }

    /// The value buffer, for appending the bytes of the next value in place. Only appends are
    /// allowed; the bytes appended since the last commit become the next value.
    pub fn values_mut(&mut self) -> &mut Vec<u8> {
        &mut self.values
    }

    /// Where the value being built starts in the value buffer.
    pub fn pending_start(&self) -> usize {
        // The last offset is always within i32 and non-negative: commit_value checks it.
        self.offsets[self.offsets.len() - 1] as usize
    }

    /// Drops bytes of the value being built from its end (e.g. a line terminator).
    pub fn truncate_pending(&mut self, len: usize) {
        let start = self.pending_start();
        self.values.truncate(start + len);
    }

    /// Closes the value made of the bytes appended since the previous commit. Input text is
    /// not trusted to be UTF-8: an invalid value is replaced by its lossy decoding (the only
    /// path that allocates, and only for bad input) rather than failing the job.
    /// `context` names the input (path or address) in the error for an oversized batch.
    pub fn commit_value(&mut self, context: &str) -> OpResult {
        let start = self.pending_start();
        if let Err(_invalid) = std::str::from_utf8(&self.values[start..]) {
            let fixed = String::from_utf8_lossy(&self.values[start..]).into_owned();
            self.values.truncate(start);
            self.values.extend_from_slice(fixed.as_bytes());
        }
        let end = i32::try_from(self.values.len())
            .map_err(|_| OperatorError::Failed(format!("{context}: a batch of text exceeds the 2 GiB limit of a Utf8 column")))?;
        self.offsets.push(end);
        Ok(())
    }

    /// Appends and commits one value given as bytes.
    pub fn push_bytes(&mut self, bytes: &[u8], context: &str) -> OpResult {
        self.values.extend_from_slice(bytes);
        self.commit_value(context)
    }

    /// The finished column; any uncommitted trailing bytes are dropped.
    pub fn finish(mut self) -> OpResult<StringArray> {
        let committed = self.pending_start();
        self.values.truncate(committed);
        let offsets = OffsetBuffer::new(ScalarBuffer::from(self.offsets));
        Ok(StringArray::try_new(offsets, Buffer::from_vec(self.values), None)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow_array::Array;

    #[test]
    fn builds_values_and_repairs_invalid_utf8() {
        let mut col = Utf8Column::with_capacity(4, 16);
        col.push_bytes(b"abc", "t").expect("push");
        col.values_mut().extend_from_slice(b"de\n");
        col.truncate_pending(2);
        col.commit_value("t").expect("commit");
        col.push_bytes(&[b'x', 0xff, b'y'], "t").expect("push");
        col.push_bytes(b"", "t").expect("push");
        col.values_mut().extend_from_slice(b"dangling");
        assert_eq!(col.len(), 4);
        let arr = col.finish().expect("finish");
        assert_eq!(arr.len(), 4);
        assert_eq!(arr.value(0), "abc");
        assert_eq!(arr.value(1), "de");
        assert_eq!(arr.value(2), "x\u{fffd}y");
        assert_eq!(arr.value(3), "");
    }
}
