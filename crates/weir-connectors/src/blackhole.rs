//! The `blackhole` sink: accepts and drops every batch, so a benchmark measures the pipeline
//! in front of it rather than output formatting or I/O.

use arrow_array::RecordBatch;
use weir_core::operator::{Collector, OpResult, Operator};

pub struct BlackholeSink;

impl Operator for BlackholeSink {
    fn process_batch(&mut self, _batch: RecordBatch, _out: &mut dyn Collector) -> OpResult {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::NoOutput;
    use arrow_array::{ArrayRef, Int64Array};
    use std::sync::Arc;

    #[test]
    fn blackhole_discards_batches() {
        let mut sink = crate::blackhole_sink();
        let col: ArrayRef = Arc::new(Int64Array::from(vec![1, 2, 3]));
        let batch = RecordBatch::try_from_iter([("x", col)]).expect("batch");
        sink.process_batch(batch, &mut NoOutput).expect("process");
        sink.finish(&mut NoOutput).expect("finish");
    }
}
