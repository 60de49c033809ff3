//! Buffer debloating (Flink's FLIP-183): an input gate sizes the buffers its senders cut from
//! how fast its task consumes, so that the data in flight towards it takes about
//! `taskmanager.network.memory.buffer-debloat.target` to process.
//!
//! Without it, what a gate holds is a count of buffers of `taskmanager.memory.segment-size`
//! each, whatever the rate: under backpressure, where a slow task takes a few hundred kilobytes
//! a second, an aligned barrier waits seconds behind them and an unaligned checkpoint persists
//! all of them. With it, a slow task asks for small buffers and a fast one keeps full segments
//! (the size is capped at the segment size: debloating never grows the network memory).
//!
//! ## The measure
//! The task tells its [`BufferDebloater`] the bytes it took from the gate (a running total) on
//! every round, and how long it waited for input. Once per `period` the debloater divides the
//! bytes of the period by its *busy* time (the period minus the time spent waiting for input,
//! as Flink does): a task that waits for input would consume faster, and must not shrink its
//! buffers; a task blocked on its outputs or paused by an operator (a throttle) consumes no
//! faster than measured, and gets small ones. The throughput is an exponential moving average
//! over about `samples` periods. The size is then `throughput × target / buffers`, where
//! `buffers` is what the gate can hold (its channels' credits and its floating pool), within
//! `taskmanager.memory.min-segment-size` and the segment size.
//!
//! ## Announcing
//! A new size goes to the senders only if it differs from the last one by more than
//! `threshold-percentages` (or reaches a bound): see [`crate::gate::InputGate::announce_buffer_size`],
//! which local senders read and remote ones receive in a `BUFFER_SIZE` frame. A sender cuts its
//! pending rows into a buffer once they reach the announced size.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use weir_core::settings::DebloatConfig;

/// The buffer size a gate last asked its senders for: set by the receiving side (the gate for
/// its local senders, the network reader for a remote sending end), read by the sending task
/// once per batch. None before the first announcement.
#[derive(Debug, Default)]
pub struct AnnouncedSize(AtomicUsize);

impl AnnouncedSize {
    /// Records `size` bytes; 0 is not a size and is ignored.
    pub fn set(&self, size: usize) {
        if size > 0 {
            self.0.store(size, Ordering::Relaxed);
        }
    }

    /// The size last announced, if any.
    pub fn get(&self) -> Option<usize> {
        match self.0.load(Ordering::Relaxed) {
            0 => None,
            n => Some(n),
        }
    }
}

/// One gate's buffer-size calculation; owned by the receiving task's thread.
#[derive(Debug)]
pub struct BufferDebloater {
    config: DebloatConfig,
    /// The segment size: the largest size asked for, and what senders use before any
    /// announcement.
    max: usize,
    /// `config.min_size`, at most `max`.
    min: usize,
    /// The buffers the gate can hold: every channel's credits and its floating pool.
    buffers: usize,
    /// Smoothing of the moving average: `2 / (samples + 1)`.
    alpha: f64,
    /// Bytes per second of busy time, averaged; `None` before the first measured period.
    throughput: Option<f64>,
    /// When the current period started, and the task's byte count then.
    since: Instant,
    bytes_at: u64,
    /// Time the task waited for input in the current period.
    idle: Duration,
    /// The size last announced; the segment size before the first announcement.
    announced: usize,
}

impl BufferDebloater {
    /// A debloater for a gate that holds `buffers` buffers, with segments of `max` bytes; the
    /// first period starts at `now` with the task's byte count at `bytes_in`.
    pub fn new(config: DebloatConfig, max: usize, buffers: usize, now: Instant, bytes_in: u64) -> Self {
        Self {
            config,
            max,
            min: config.min_size.clamp(1, max.max(1)),
            buffers: buffers.max(1),
            alpha: 2.0 / (f64::from(config.samples.max(1)) + 1.0),
            throughput: None,
            since: now,
            bytes_at: bytes_in,
            idle: Duration::ZERO,
            announced: max,
        }
    }

    /// The task waited `waited` for input (its gate had nothing for it): not busy time.
    pub fn idle(&mut self, waited: Duration) {
        self.idle += waited;
    }

    /// The size last announced (the segment size before any).
    pub fn announced(&self) -> usize {
        self.announced
    }

    /// The averaged throughput in bytes per second of busy time, once measured.
    pub fn throughput(&self) -> Option<f64> {
        self.throughput
    }

    /// Called by the task every round with the bytes it has taken from the gate so far. Once a
    /// period has passed, measures it and returns the new buffer size if the senders should be
    /// told (see the module header). A period without busy time (the task waited for input
    /// throughout) measures nothing.
    pub fn update(&mut self, now: Instant, bytes_in: u64) -> Option<usize> {
        let elapsed = now.saturating_duration_since(self.since);
        if elapsed < self.config.period {
            return None;
        }
        let bytes = bytes_in.saturating_sub(self.bytes_at);
        let busy = elapsed.saturating_sub(self.idle);
        self.since = now;
        self.bytes_at = bytes_in;
        self.idle = Duration::ZERO;
        if busy.is_zero() {
            return None;
        }
        let sample = bytes as f64 / busy.as_secs_f64();
        let throughput = match self.throughput {
            None => sample,
            Some(t) => t + self.alpha * (sample - t),
        };
        self.throughput = Some(throughput);
        let wanted = throughput * self.config.target.as_secs_f64() / self.buffers as f64;
        let size = if wanted >= self.max as f64 { self.max } else { (wanted as usize).max(self.min) };
        let last = self.announced;
        let at_bound = size == self.min || size == self.max;
        let small_change = size.abs_diff(last) as u128 * 100 <= u128::from(self.config.threshold_percent) * last as u128;
        if size == last || (!at_bound && small_change) {
            return None;
        }
        self.announced = size;
        Some(size)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    fn config() -> DebloatConfig {
        DebloatConfig { target: Duration::from_secs(1), period: 200 * MS, samples: 1, threshold_percent: 25, min_size: 1024 }
    }

    #[test]
    fn a_slow_task_asks_for_buffers_that_hold_one_target_of_its_throughput() {
        let t0 = Instant::now();
        // 16 buffers, 32 KiB segments; the task takes 160 kB/s and is busy all the time.
        let mut d = BufferDebloater::new(config(), 32 << 10, 16, t0, 0);
        assert_eq!(d.update(t0 + 100 * MS, 16_000), None, "not a full period yet");
        assert_eq!(d.update(t0 + 200 * MS, 32_000), Some(10_000), "160 kB/s for 1 s over 16 buffers");
        assert_eq!(d.announced(), 10_000);
        // The same rate again: nothing new to announce.
        assert_eq!(d.update(t0 + 400 * MS, 64_000), None);
    }

    #[test]
    fn time_spent_waiting_for_input_is_not_counted_against_the_throughput() {
        let t0 = Instant::now();
        let mut d = BufferDebloater::new(config(), 32 << 10, 16, t0, 0);
        // 32 kB in a period of which 190 ms were spent waiting for input: 3.2 MB/s while busy,
        // which fills full segments.
        d.idle(190 * MS);
        assert_eq!(d.update(t0 + 200 * MS, 32_000), None, "a full segment is what the senders use already");
        assert_eq!(d.throughput().map(|t| t.round() as u64), Some(3_200_000));
        // The same bytes without the wait: a tenth of a segment's worth.
        assert_eq!(d.update(t0 + 400 * MS, 64_000), Some(10_000));
    }

    #[test]
    fn a_period_spent_entirely_waiting_for_input_measures_nothing() {
        let t0 = Instant::now();
        let mut d = BufferDebloater::new(config(), 32 << 10, 16, t0, 0);
        d.idle(200 * MS);
        assert_eq!(d.update(t0 + 200 * MS, 0), None);
        assert_eq!(d.throughput(), None);
    }

    #[test]
    fn sizes_stay_within_the_minimum_and_the_segment_and_small_changes_are_not_announced() {
        let t0 = Instant::now();
        let mut d = BufferDebloater::new(config(), 32 << 10, 16, t0, 0);
        // A task blocked on its output all period took nothing: the minimum.
        assert_eq!(d.update(t0 + 200 * MS, 0), Some(1024));
        // 2 kB/s would be 125 bytes a buffer: still the minimum, already announced.
        assert_eq!(d.update(t0 + 400 * MS, 400), None);
        // 160 kB/s: 10 000 bytes.
        assert_eq!(d.update(t0 + 600 * MS, 400 + 32_000), Some(10_000));
        // 11 000 is within 25% of 10 000: not announced.
        assert_eq!(d.update(t0 + 800 * MS, 400 + 32_000 + 35_200), None);
        assert_eq!(d.announced(), 10_000);
        // Far above a segment: the segment size, announced as it is a bound.
        assert_eq!(d.update(t0 + 1000 * MS, 100_000_000), Some(32 << 10));
    }

    #[test]
    fn the_throughput_is_a_moving_average_over_about_samples_periods() {
        let t0 = Instant::now();
        let c = DebloatConfig { samples: 3, ..config() };
        let mut d = BufferDebloater::new(c, 1 << 20, 1, t0, 0);
        d.update(t0 + 200 * MS, 200_000); // 1 MB/s
        assert_eq!(d.throughput().map(|t| t.round() as u64), Some(1_000_000));
        d.update(t0 + 400 * MS, 200_000); // nothing taken: halfway down with alpha 2/(3+1)
        assert_eq!(d.throughput().map(|t| t.round() as u64), Some(500_000));
    }
}
