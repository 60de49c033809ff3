//! Timers of a process function, kept per key in its keyed state: processing-time timers under
//! the reserved state `weir.timers`, event-time timers under `weir.event-timers`.
//!
//! A timer is an entry of its reserved state whose namespace is the timer's
//! timestamp (milliseconds since the Unix epoch, order-preserving big-endian) and whose value
//! is empty: `key group | "weir.timers" | key | timestamp`. So timers are snapshotted, restored
//! and rescaled with their key group like every keyed state, and registering the same (key,
//! timestamp) twice stores one entry: a timer fires at most once, as in Flink.
//!
//! [`TimerQueue`] mirrors one kind in memory, ordered by time, so the task can ask for the next
//! one without reading the backend. The queue is rebuilt from the backend ([`TimerQueue::load`],
//! one prefix scan per key group of the subtask) before the operator's first batch or timer
//! after it started, which is after a restore. Until then [`TimerQueue::next_instant`] answers
//! "now", so the task calls the operator at once even if no input ever comes.

use std::collections::BTreeSet;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use weir_state::keyed::composite_key;
use weir_state::{KeyedStateBackend, StateError};

/// The state processing-time timers are stored under.
pub(crate) const TIMERS: &str = "weir.timers";
/// The state event-time timers are stored under.
pub(crate) const EVENT_TIMERS: &str = "weir.event-timers";

/// The current processing time: milliseconds since the Unix epoch.
pub(crate) fn processing_time() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

/// A timestamp as a namespace whose byte order is the numeric order.
fn namespace(ts: i64) -> [u8; 8] {
    ((ts as u64) ^ (1 << 63)).to_be_bytes()
}

fn timestamp(namespace: &[u8]) -> Option<i64> {
    let bytes: [u8; 8] = namespace.try_into().ok()?;
    Some((u64::from_be_bytes(bytes) ^ (1 << 63)) as i64)
}

/// The composite key of a timer in state `state`.
fn timer_key(state: &str, key_group: u32, key: &[u8], ts: i64) -> Vec<u8> {
    let mut k = Vec::with_capacity(key.len() + state.len() + 17);
    composite_key(&mut k, key_group, state, key, &namespace(ts));
    k
}

/// The (key, timestamp) of a timer's composite key in state `state`, `None` if it is not one.
fn parse_timer_key(state: &str, composite: &[u8]) -> Option<(Vec<u8>, i64)> {
    let rest = composite.get(3 + state.len()..)?;
    let key_len = u32::from_be_bytes(rest.get(..4)?.try_into().ok()?) as usize;
    let key = rest.get(4..4 + key_len)?;
    let rest = &rest[4 + key_len..];
    let ns_len = u16::from_be_bytes(rest.get(..2)?.try_into().ok()?) as usize;
    let ts = timestamp(rest.get(2..2 + ns_len)?)?;
    Some((key.to_vec(), ts))
}

/// The timers of one kind of one subtask's process operator.
pub(crate) struct TimerQueue {
    /// The reserved state they are stored under ([`TIMERS`] or [`EVENT_TIMERS`]).
    state: &'static str,
    /// (timestamp, key bytes, key group), earliest first.
    queue: BTreeSet<(i64, Vec<u8>, u32)>,
    /// Whether `queue` reflects the backend (set by [`TimerQueue::load`]).
    loaded: bool,
}

impl TimerQueue {
    /// Processing-time timers.
    pub fn processing_time() -> Self {
        Self { state: TIMERS, queue: BTreeSet::new(), loaded: false }
    }

    /// Event-time timers.
    pub fn event_time() -> Self {
        Self { state: EVENT_TIMERS, queue: BTreeSet::new(), loaded: false }
    }

    /// Reads the timers of the backend's key groups into the queue, once.
    pub fn load(&mut self, backend: &dyn KeyedStateBackend) -> Result<(), StateError> {
        if self.loaded {
            return Ok(());
        }
        for key_group in backend.key_group_range().range() {
            let mut prefix = Vec::with_capacity(3 + self.state.len());
            prefix.extend_from_slice(&(key_group as u16).to_be_bytes());
            prefix.push(self.state.len() as u8);
            prefix.extend_from_slice(self.state.as_bytes());
            for (composite, _) in backend.scan_prefix(&prefix)? {
                let (key, ts) = parse_timer_key(self.state, &composite)
                    .ok_or_else(|| StateError::Codec(format!("a corrupt timer entry in key group {key_group}")))?;
                self.queue.insert((ts, key, key_group));
            }
        }
        self.loaded = true;
        Ok(())
    }

    /// Registers a timer at `ts` for `key` (nothing if it exists).
    pub fn register(&mut self, backend: &mut dyn KeyedStateBackend, key: &[u8], key_group: u32, ts: i64) -> Result<(), StateError> {
        if self.queue.insert((ts, key.to_vec(), key_group)) {
            backend.put(&timer_key(self.state, key_group, key, ts), &[])?;
        }
        Ok(())
    }

    /// Deletes the timer at `ts` for `key`, if there is one.
    pub fn delete(&mut self, backend: &mut dyn KeyedStateBackend, key: &[u8], key_group: u32, ts: i64) -> Result<(), StateError> {
        if self.queue.remove(&(ts, key.to_vec(), key_group)) {
            backend.delete(&timer_key(self.state, key_group, key, ts))?;
        }
        Ok(())
    }

    /// The earliest timer's time, if any (of a loaded queue).
    #[cfg(test)]
    pub fn first(&self) -> Option<i64> {
        self.queue.first().map(|(ts, _, _)| *ts)
    }

    /// When the next processing-time timer is due; "now" until the queue was loaded.
    pub fn next_instant(&self) -> Option<Instant> {
        if !self.loaded {
            return Some(Instant::now());
        }
        let (ts, _, _) = self.queue.first()?;
        let wait = Duration::from_millis(ts.saturating_sub(processing_time()).max(0) as u64);
        let now = Instant::now();
        // A timer centuries away is simply "not soon".
        Some(now.checked_add(wait).unwrap_or(now + Duration::from_secs(86_400)))
    }

    /// Removes the timers due at `now` (milliseconds) from the queue and the backend, earliest
    /// first. Timers registered while these fire wait for the next call.
    pub fn take_due(&mut self, backend: &mut dyn KeyedStateBackend, now: i64) -> Result<Vec<(i64, Vec<u8>, u32)>, StateError> {
        let mut due = Vec::new();
        while self.queue.first().is_some_and(|(ts, _, _)| *ts <= now) {
            let timer = self.queue.pop_first().expect("a first timer");
            backend.delete(&timer_key(self.state, timer.2, &timer.1, timer.0))?;
            due.push(timer);
        }
        Ok(due)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use weir_core::KeyGroupRange;
    use weir_state::hashmap::HashMapBackend;

    #[test]
    fn timers_are_stored_once_per_key_and_time_and_reloaded_in_order() {
        let mut backend = HashMapBackend::new(128, KeyGroupRange::for_subtask(128, 1, 0));
        let mut timers = TimerQueue::processing_time();
        timers.load(&backend).unwrap();
        let kg = weir_state::keyed::key_group(b"a", 128);
        timers.register(&mut backend, b"a", kg, 20).unwrap();
        timers.register(&mut backend, b"a", kg, 20).unwrap();
        timers.register(&mut backend, b"a", kg, -5).unwrap();
        timers.register(&mut backend, b"a", kg, 30).unwrap();
        timers.delete(&mut backend, b"a", kg, 30).unwrap();
        assert_eq!(backend.entries().unwrap(), 2);

        let mut restored = TimerQueue::processing_time();
        assert!(restored.next_instant().is_some_and(|t| t <= Instant::now()), "asks to be called before it loaded");
        restored.load(&backend).unwrap();
        let due = restored.take_due(&mut backend, 25).unwrap();
        assert_eq!(due, vec![(-5, b"a".to_vec(), kg), (20, b"a".to_vec(), kg)]);
        assert_eq!(backend.entries().unwrap(), 0);
        assert_eq!(restored.next_instant(), None);
    }

    #[test]
    fn event_time_timers_are_kept_apart_from_processing_time_timers() {
        let mut backend = HashMapBackend::new(128, KeyGroupRange::for_subtask(128, 1, 0));
        let kg = weir_state::keyed::key_group(b"a", 128);
        let mut processing = TimerQueue::processing_time();
        let mut event = TimerQueue::event_time();
        processing.load(&backend).unwrap();
        event.load(&backend).unwrap();
        processing.register(&mut backend, b"a", kg, 10).unwrap();
        event.register(&mut backend, b"a", kg, 10).unwrap();
        event.register(&mut backend, b"a", kg, 20).unwrap();
        let mut reloaded = TimerQueue::event_time();
        reloaded.load(&backend).unwrap();
        assert_eq!(reloaded.take_due(&mut backend, 15).unwrap(), vec![(10, b"a".to_vec(), kg)]);
        assert_eq!(reloaded.first(), Some(20));
        let mut reloaded = TimerQueue::processing_time();
        reloaded.load(&backend).unwrap();
        assert_eq!(reloaded.first(), Some(10), "the processing-time timer at the same time is untouched");
    }
}
