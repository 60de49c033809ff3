//! Event time in a program: [`WatermarkStrategy`], what `assign_timestamps_and_watermarks`
//! takes (Flink's `WatermarkStrategy.forBoundedOutOfOrderness(..).withTimestampAssigner(..)
//! .withIdleness(..)`).
//!
//! The assigner computes each record's timestamp (milliseconds since the epoch) into the
//! stream's timestamp column ([`crate::records::TIMESTAMP`]); the operators downstream keep it
//! and `process` reads it as [`Context::timestamp`](crate::process::Context::timestamp). Its
//! watermark is the largest timestamp seen minus the out-of-orderness minus 1 ms, emitted every
//! `pipeline.auto-watermark-interval` if it advanced; it travels through the data plane, and a
//! task with several inputs follows the smallest of them (see `weir_runtime::watermarks`).
//! Event-time timers fire when it passes them; when a bounded source ends, event time ends
//! and every timer fires.

use std::sync::Arc;
use std::time::Duration;

/// How a stream's records get their timestamps and its watermarks.
pub struct WatermarkStrategy<T> {
    pub(crate) out_of_orderness: Duration,
    pub(crate) idleness: Option<Duration>,
    pub(crate) assigner: Option<Arc<dyn Fn(&T) -> i64 + Send + Sync>>,
}

impl<T> Clone for WatermarkStrategy<T> {
    fn clone(&self) -> Self {
        Self { out_of_orderness: self.out_of_orderness, idleness: self.idleness, assigner: self.assigner.clone() }
    }
}

impl<T> WatermarkStrategy<T> {
    /// Records may arrive up to `max_out_of_orderness` later than the latest timestamp seen and
    /// still be on time.
    pub fn for_bounded_out_of_orderness(max_out_of_orderness: Duration) -> Self {
        Self { out_of_orderness: max_out_of_orderness, idleness: None, assigner: None }
    }

    /// Timestamps only ever increase (out-of-orderness zero).
    pub fn for_monotonous_timestamps() -> Self {
        Self::for_bounded_out_of_orderness(Duration::ZERO)
    }

    /// How each record's timestamp (milliseconds since the epoch) is computed. Required.
    pub fn with_timestamp_assigner(mut self, assigner: impl Fn(&T) -> i64 + Send + Sync + 'static) -> Self {
        self.assigner = Some(Arc::new(assigner));
        self
    }

    /// A subtask that saw no record for `timeout` declares itself idle, so the tasks it feeds
    /// advance their event time without it; its next record makes it active again.
    pub fn with_idleness(mut self, timeout: Duration) -> Self {
        self.idleness = Some(timeout);
        self
    }
}
