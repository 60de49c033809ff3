//! Event time: watermarks, how they are made and how a task with several inputs combines them.
//!
//! A watermark `w` on a channel says that event time on it has reached `w` (milliseconds since
//! the epoch): no row with a timestamp at or before `w` is expected after it. Watermarks travel
//! as [`Event::Watermark`](crate::buffer::Event::Watermark) events in order with the buffers
//! (never with priority: a watermark that overtook rows would declare them late), and pass the
//! operators of a chain through [`Operator::on_watermark`], where event-time timers fire.
//!
//! ## Where they come from
//! A [`WatermarkGenerator`] (behind a watermark assigner, Flink's
//! `assignTimestampsAndWatermarks` or SQL's `WATERMARK FOR`) follows the largest timestamp it
//! saw and emits `largest - out_of_orderness - 1` every `pipeline.auto-watermark-interval` if it
//! advanced (Flink's bounded out-of-orderness watermarks). Its largest timestamp is its
//! operator state, so a restored job resumes from the event time of its checkpoint instead of
//! from the beginning of time. A subtask that saw no row for the idle timeout declares itself
//! idle ([`Event::WatermarkStatus`](crate::buffer::Event::WatermarkStatus)), so that its
//! consumers' event time advances without it; its next row makes it active again. When a
//! bounded source ends, the task sends [`MAX_WATERMARK`]: every event-time timer fires.
//!
//! ## How a task combines its inputs ([`WatermarkValve`])
//! As Flink's `StatusWatermarkValve`: each input channel keeps the largest watermark it
//! delivered; the task's event time is the minimum over its active channels, and it emits a
//! watermark only when that minimum advances, so event time never goes back. An idle channel
//! does not count; one that becomes active again counts once its watermark caught up with what
//! the task already emitted. A channel that ended counts no more. When every channel is idle,
//! the task emits the largest watermark among them and goes idle itself.

use std::time::{Duration, Instant};
use weir_core::operator::{Collector, OpResult, OperatorError, MAX_WATERMARK};

/// What the valve tells its task to emit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ValveOutput {
    /// Event time advanced to this watermark.
    Watermark(i64),
    /// Every input went idle (`true`), or one came back (`false`).
    Status { idle: bool },
}

#[derive(Debug, Clone, Copy)]
struct ChannelTime {
    /// The largest watermark the channel delivered.
    watermark: i64,
    idle: bool,
    /// The channel counts in the minimum: its watermark caught up with the task's output.
    aligned: bool,
    ended: bool,
}

/// Combines the watermarks of a task's input channels (see the module header).
#[derive(Debug)]
pub struct WatermarkValve {
    channels: Vec<ChannelTime>,
    /// The last watermark emitted (`i64::MIN` before the first).
    last: i64,
    /// Whether the task announced itself idle.
    idle: bool,
}

impl WatermarkValve {
    /// A valve over `channels` input channels, none of which has delivered a watermark.
    pub fn new(channels: usize) -> Self {
        let fresh = ChannelTime { watermark: i64::MIN, idle: false, aligned: true, ended: false };
        Self { channels: vec![fresh; channels], last: i64::MIN, idle: false }
    }

    /// The task's current event time: the last watermark it emitted.
    pub fn current(&self) -> i64 {
        self.last
    }

    /// Channel `channel` delivered watermark `watermark`.
    pub fn watermark(&mut self, channel: usize, watermark: i64) -> Vec<ValveOutput> {
        let mut out = Vec::new();
        let Some(c) = self.channels.get_mut(channel) else { return out };
        if c.ended {
            return out;
        }
        if c.idle {
            // A watermark from an idle channel means it is active again.
            c.idle = false;
        }
        c.watermark = c.watermark.max(watermark);
        if c.watermark >= self.last {
            c.aligned = true;
        }
        self.wake_up(&mut out);
        self.advance(&mut out);
        out
    }

    /// Channel `channel` went idle or active again.
    pub fn status(&mut self, channel: usize, idle: bool) -> Vec<ValveOutput> {
        let mut out = Vec::new();
        let last = self.last;
        let Some(c) = self.channels.get_mut(channel) else { return out };
        if c.ended || c.idle == idle {
            return out;
        }
        c.idle = idle;
        if idle {
            self.advance(&mut out);
        } else {
            c.aligned = c.watermark >= last;
            self.wake_up(&mut out);
        }
        out
    }

    /// Channel `channel` delivered its end of partition: it no longer holds event time back.
    pub fn end(&mut self, channel: usize) -> Vec<ValveOutput> {
        let mut out = Vec::new();
        if let Some(c) = self.channels.get_mut(channel) {
            c.ended = true;
            self.advance(&mut out);
        }
        out
    }

    /// If the task was idle and a channel is active now, it is active again.
    fn wake_up(&mut self, out: &mut Vec<ValveOutput>) {
        if self.idle && self.channels.iter().any(|c| !c.ended && !c.idle) {
            self.idle = false;
            out.push(ValveOutput::Status { idle: false });
        }
    }

    /// Emits the new minimum over the aligned active channels if it advanced; when every open
    /// channel is idle, the largest of their watermarks, then the idle status.
    fn advance(&mut self, out: &mut Vec<ValveOutput>) {
        let open: Vec<&ChannelTime> = self.channels.iter().filter(|c| !c.ended).collect();
        if open.is_empty() {
            return;
        }
        let active = open.iter().filter(|c| !c.idle && c.aligned).map(|c| c.watermark).min();
        match active {
            Some(min) => {
                if min > self.last {
                    self.last = min;
                    out.push(ValveOutput::Watermark(min));
                }
            }
            None if open.iter().all(|c| c.idle) => {
                let max = open.iter().map(|c| c.watermark).max().unwrap_or(i64::MIN);
                if max > self.last {
                    self.last = max;
                    out.push(ValveOutput::Watermark(max));
                }
                if !self.idle {
                    self.idle = true;
                    out.push(ValveOutput::Status { idle: true });
                }
            }
            // Active channels that have not caught up yet: wait for them.
            None => {}
        }
    }
}

/// Bounded out-of-orderness watermarks with periodic emission and idleness (see the module
/// header). The owner feeds it each batch's largest timestamp ([`WatermarkGenerator::observe`])
/// and calls [`WatermarkGenerator::on_time`] at [`WatermarkGenerator::next_timer`].
#[derive(Debug)]
pub struct WatermarkGenerator {
    out_of_orderness: i64,
    interval: Duration,
    idle_timeout: Option<Duration>,
    /// The largest timestamp seen (or restored); `None` before any.
    max_timestamp: Option<i64>,
    /// The last watermark emitted by this attempt.
    emitted: i64,
    /// When the next periodic emission is due.
    next: Instant,
    /// When the last row arrived (for idleness).
    last_row: Instant,
    idle: bool,
}

impl WatermarkGenerator {
    /// A generator that lets rows be up to `out_of_orderness` late, emits every `interval`
    /// (at least 1 ms), and declares itself idle after `idle_timeout` without rows.
    pub fn new(out_of_orderness: Duration, interval: Duration, idle_timeout: Option<Duration>) -> Self {
        let now = Instant::now();
        let interval = interval.max(Duration::from_millis(1));
        Self {
            out_of_orderness: out_of_orderness.as_millis().min(i64::MAX as u128) as i64,
            interval,
            idle_timeout,
            max_timestamp: None,
            emitted: i64::MIN,
            next: now + interval,
            last_row: now,
            idle: false,
        }
    }

    /// The watermark the rows seen so far allow.
    pub fn current(&self) -> i64 {
        match self.max_timestamp {
            Some(ts) => ts.saturating_sub(self.out_of_orderness).saturating_sub(1),
            None => i64::MIN,
        }
    }

    /// A batch arrived whose largest timestamp is `max` (`None`: no row had one). A generator
    /// that was idle becomes active again before the batch goes on.
    pub fn observe(&mut self, max: Option<i64>, out: &mut dyn Collector) -> OpResult {
        self.last_row = Instant::now();
        if let Some(ts) = max {
            self.max_timestamp = Some(self.max_timestamp.map_or(ts, |m| m.max(ts)));
        }
        if self.idle {
            self.idle = false;
            out.emit_watermark_status(false)?;
        }
        Ok(())
    }

    /// When [`WatermarkGenerator::on_time`] is due next.
    pub fn next_timer(&self) -> Option<Instant> {
        let idle_at = self.idle_timeout.filter(|_| !self.idle).map(|t| self.last_row + t);
        Some(idle_at.map_or(self.next, |i| i.min(self.next)))
    }

    /// Periodic work: the watermark if it advanced, the idle status if the timeout passed.
    pub fn on_time(&mut self, now: Instant, out: &mut dyn Collector) -> OpResult {
        if now >= self.next {
            self.next = now + self.interval;
            let wm = self.current();
            if wm > self.emitted {
                self.emitted = wm;
                out.emit_watermark(wm)?;
            }
        }
        if let Some(t) = self.idle_timeout {
            if !self.idle && now >= self.last_row + t {
                self.idle = true;
                out.emit_watermark_status(true)?;
            }
        }
        Ok(())
    }

    /// A watermark from upstream: an assigner makes its own, so only the end of event time
    /// ([`MAX_WATERMARK`]) goes on.
    pub fn on_upstream_watermark(&mut self, watermark: i64, out: &mut dyn Collector) -> OpResult {
        if watermark == MAX_WATERMARK && self.emitted < MAX_WATERMARK {
            self.emitted = MAX_WATERMARK;
            out.emit_watermark(MAX_WATERMARK)?;
        }
        Ok(())
    }

    /// The generator's operator state: its largest timestamp, if it saw one.
    pub fn snapshot(&self) -> Option<Vec<Vec<u8>>> {
        self.max_timestamp.map(|ts| vec![ts.to_le_bytes().to_vec()])
    }

    /// Resumes from snapshots of one or more old subtasks: from the smallest of their largest
    /// timestamps, so no subtask's rows turn late after a rescale.
    pub fn restore(&mut self, elements: Vec<Vec<u8>>, operator: &str) -> OpResult {
        for e in elements {
            let bytes: [u8; 8] = e.as_slice().try_into().map_err(|_| {
                OperatorError::Failed(format!("watermark assigner '{operator}': its checkpointed event time is not 8 bytes"))
            })?;
            let ts = i64::from_le_bytes(bytes);
            self.max_timestamp = Some(self.max_timestamp.map_or(ts, |m| m.min(ts)));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow_array::RecordBatch;

    #[derive(Default)]
    struct Seen(Vec<String>);
    impl Collector for Seen {
        fn collect(&mut self, _batch: RecordBatch) -> OpResult {
            self.0.push("rows".into());
            Ok(())
        }
        fn emit_watermark(&mut self, watermark: i64) -> OpResult {
            self.0.push(format!("wm {watermark}"));
            Ok(())
        }
        fn emit_watermark_status(&mut self, idle: bool) -> OpResult {
            self.0.push(format!("idle {idle}"));
            Ok(())
        }
    }

    use ValveOutput::*;

    #[test]
    fn the_valve_emits_the_minimum_of_its_channels_only_when_it_advances() {
        let mut v = WatermarkValve::new(2);
        assert_eq!(v.watermark(0, 10), vec![], "channel 1 has no watermark yet");
        assert_eq!(v.watermark(1, 5), vec![Watermark(5)]);
        assert_eq!(v.watermark(1, 20), vec![Watermark(10)]);
        assert_eq!(v.watermark(0, 8), vec![], "a channel's watermark never goes back");
        assert_eq!(v.watermark(0, 15), vec![Watermark(15)]);
        assert_eq!(v.end(0), vec![Watermark(20)], "an ended channel no longer holds event time back");
        assert_eq!(v.current(), 20);
    }

    #[test]
    fn idle_channels_do_not_hold_event_time_back_and_rejoin_once_caught_up() {
        let mut v = WatermarkValve::new(3);
        v.watermark(0, 10);
        v.watermark(1, 10);
        assert_eq!(v.status(2, true), vec![Watermark(10)], "the idle channel without a watermark is left out");
        assert_eq!(v.watermark(0, 30), vec![]);
        assert_eq!(v.watermark(1, 40), vec![Watermark(30)]);
        assert_eq!(v.status(2, false), vec![], "active again but behind: it does not pull event time back");
        assert_eq!(v.watermark(0, 50), vec![Watermark(40)], "channel 2 is still behind and not counted");
        assert_eq!(v.watermark(2, 45), vec![], "caught up: it counts again");
        assert_eq!(v.watermark(1, 60), vec![Watermark(45)]);
    }

    #[test]
    fn when_every_channel_is_idle_the_task_goes_idle_with_their_largest_watermark() {
        let mut v = WatermarkValve::new(2);
        v.watermark(0, 10);
        v.watermark(1, 20);
        assert_eq!(v.status(0, true), vec![Watermark(20)]);
        assert_eq!(v.status(1, true), vec![Status { idle: true }]);
        assert_eq!(v.watermark(0, 25), vec![Status { idle: false }, Watermark(25)]);
    }

    #[test]
    fn the_generator_emits_periodically_what_advanced_and_goes_idle_without_rows() {
        let mut g = WatermarkGenerator::new(Duration::from_millis(5), Duration::from_millis(200), Some(Duration::from_secs(1)));
        let mut out = Seen::default();
        let start = Instant::now();
        g.on_time(start + Duration::from_millis(250), &mut out).unwrap();
        assert!(out.0.is_empty(), "no row, no watermark");
        g.observe(Some(100), &mut out).unwrap();
        g.observe(Some(90), &mut out).unwrap();
        assert!(out.0.is_empty(), "rows alone emit nothing before the interval");
        g.on_time(start + Duration::from_millis(500), &mut out).unwrap();
        g.on_time(start + Duration::from_millis(800), &mut out).unwrap();
        assert_eq!(out.0, vec!["wm 94"], "largest timestamp - 5 ms - 1, once");
        g.on_time(Instant::now() + Duration::from_secs(2), &mut out).unwrap();
        assert_eq!(out.0.last().unwrap(), "idle true");
        g.observe(Some(200), &mut out).unwrap();
        assert_eq!(out.0.last().unwrap(), "idle false");
        g.on_upstream_watermark(50, &mut out).unwrap();
        assert_eq!(out.0.last().unwrap(), "idle false", "an upstream watermark is replaced by the assigner's own");
        g.on_upstream_watermark(MAX_WATERMARK, &mut out).unwrap();
        assert_eq!(out.0.last().unwrap(), &format!("wm {MAX_WATERMARK}"), "the end of event time goes on");
    }

    #[test]
    fn the_generator_resumes_from_the_smallest_restored_event_time() {
        let mut g = WatermarkGenerator::new(Duration::ZERO, Duration::from_millis(1), None);
        g.restore(vec![300i64.to_le_bytes().to_vec(), 200i64.to_le_bytes().to_vec()], "w").unwrap();
        assert_eq!(g.current(), 199);
        assert_eq!(g.snapshot(), Some(vec![200i64.to_le_bytes().to_vec()]));
        assert!(g.restore(vec![vec![1, 2]], "w").unwrap_err().to_string().contains("watermark assigner 'w'"));
    }
}
