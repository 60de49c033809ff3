//! The barrier handler: decides, from the barriers, cancellation markers and ends of partition
//! that arrive on a task's input channels, when the task snapshots its state and which
//! channels it must stop reading meanwhile.
//!
//! ## Protocol (see `docs/checkpointing.md`)
//! - **Exactly-once (aligned).** Barrier n on channel c blocks c: its later buffers belong to
//!   after n and must wait. When barrier n has arrived on every channel that has not ended,
//!   the task snapshots n and every channel is unblocked. A barrier m > n arriving while n is
//!   still aligning means n can no longer complete (an upstream task aborted it), so n is
//!   aborted and alignment continues for m.
//! - **At-least-once.** No channel is ever blocked; the snapshot is taken when the last barrier
//!   of n arrives. Records after a barrier may end up in the snapshot: replays may duplicate,
//!   never lose. Several checkpoints may be in flight.
//! - **Cancellation** (`CancelCheckpoint(n)` from upstream) aborts n here too.
//! - A channel that ended counts as having delivered every later barrier.
//!
//! State is kept per checkpoint and per channel, never as one "current checkpoint", so
//! overlapping checkpoints (the unaligned protocol's concurrent checkpoints) fit the same
//! structure. The handler is pure: the task applies the actions it returns.

use crate::buffer::Barrier;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CheckpointingMode {
    ExactlyOnce,
    AtLeastOnce,
}

/// What happened on the inputs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Input {
    Barrier { channel: usize, barrier: Barrier },
    Cancel { channel: usize, id: u64 },
    EndOfPartition { channel: usize },
}

/// What the task must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Stop taking items from this channel (they stay queued with their credits).
    Block(usize),
    Unblock(usize),
    /// Snapshot state for this barrier, then forward it downstream.
    Snapshot {
        barrier: Barrier,
        alignment: Duration,
    },
    /// The checkpoint cannot complete: tell downstream and the JobManager.
    Abort {
        id: u64,
        reason: String,
    },
}

/// Progress of one checkpoint at this task.
#[derive(Debug)]
struct Alignment {
    barrier: Barrier,
    received: Vec<bool>,
    count: usize,
    started: Instant,
}

#[derive(Debug)]
pub struct BarrierHandler {
    mode: CheckpointingMode,
    ended: Vec<bool>,
    pending: BTreeMap<u64, Alignment>,
    /// Highest checkpoint id already snapshotted or aborted here: older barriers are stale.
    last_done: u64,
}

impl BarrierHandler {
    pub fn new(mode: CheckpointingMode, channels: usize) -> Self {
        Self { mode, ended: vec![false; channels], pending: BTreeMap::new(), last_done: 0 }
    }

    fn live(&self) -> usize {
        self.ended.iter().filter(|e| !**e).count()
    }

    /// The one transition function.
    pub fn handle(&mut self, input: Input, now: Instant) -> Vec<Action> {
        let mut actions = Vec::new();
        match input {
            Input::Barrier { channel, barrier } => {
                if barrier.id <= self.last_done {
                    return actions; // stale: that checkpoint is over here
                }
                if self.mode == CheckpointingMode::ExactlyOnce {
                    // Older checkpoints still aligning cannot complete any more.
                    let older: Vec<u64> = self.pending.range(..barrier.id).map(|(id, _)| *id).collect();
                    for id in older {
                        self.abort(id, format!("barrier {} arrived before checkpoint {id} was aligned", barrier.id), &mut actions);
                    }
                }
                let n = self.ended.len();
                let a = self.pending.entry(barrier.id).or_insert_with(|| Alignment {
                    barrier,
                    received: vec![false; n],
                    count: 0,
                    started: now,
                });
                if !a.received[channel] {
                    a.received[channel] = true;
                    a.count += 1;
                    if self.mode == CheckpointingMode::ExactlyOnce {
                        actions.push(Action::Block(channel));
                    }
                }
                self.complete_aligned(now, &mut actions);
            }
            Input::Cancel { id, .. } => {
                if id > self.last_done {
                    self.abort(id, format!("checkpoint {id} was canceled upstream"), &mut actions);
                }
            }
            Input::EndOfPartition { channel } => {
                self.ended[channel] = true;
                self.complete_aligned(now, &mut actions);
            }
        }
        actions
    }

    fn abort(&mut self, id: u64, reason: String, actions: &mut Vec<Action>) {
        if let Some(a) = self.pending.remove(&id) {
            if self.mode == CheckpointingMode::ExactlyOnce {
                for (c, got) in a.received.iter().enumerate() {
                    if *got && !self.ended[c] {
                        actions.push(Action::Unblock(c));
                    }
                }
            }
        }
        self.last_done = self.last_done.max(id);
        actions.push(Action::Abort { id, reason });
    }

    /// Snapshots every pending checkpoint whose barrier arrived on all live channels, oldest first.
    fn complete_aligned(&mut self, now: Instant, actions: &mut Vec<Action>) {
        loop {
            let live = self.live();
            let ready = self
                .pending
                .iter()
                .find(|(_, a)| a.received.iter().zip(&self.ended).filter(|(got, ended)| **got && !**ended).count() >= live);
            let Some((&id, _)) = ready else { return };
            let a = self.pending.remove(&id).expect("found above");
            // Older incomplete checkpoints are subsumed by a newer complete one.
            let older: Vec<u64> = self.pending.range(..id).map(|(k, _)| *k).collect();
            for o in older {
                self.abort(o, format!("subsumed by checkpoint {id}"), actions);
            }
            if self.mode == CheckpointingMode::ExactlyOnce {
                for (c, got) in a.received.iter().enumerate() {
                    if *got && !self.ended[c] {
                        actions.push(Action::Unblock(c));
                    }
                }
            }
            self.last_done = self.last_done.max(id);
            actions.push(Action::Snapshot { barrier: a.barrier, alignment: now.saturating_duration_since(a.started) });
        }
    }

    /// Checkpoints currently aligning (for tests and metrics).
    pub fn pending(&self) -> Vec<u64> {
        self.pending.keys().copied().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn b(id: u64) -> Barrier {
        Barrier { id, timestamp_ms: 0, savepoint: false }
    }

    fn snapshots(actions: &[Action]) -> Vec<u64> {
        actions
            .iter()
            .filter_map(|a| match a {
                Action::Snapshot { barrier, .. } => Some(barrier.id),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn aligned_blocks_each_channel_until_all_barriers_arrived() {
        let mut h = BarrierHandler::new(CheckpointingMode::ExactlyOnce, 3);
        let t = Instant::now();
        assert_eq!(h.handle(Input::Barrier { channel: 1, barrier: b(1) }, t), vec![Action::Block(1)]);
        assert_eq!(h.handle(Input::Barrier { channel: 0, barrier: b(1) }, t), vec![Action::Block(0)]);
        let done = h.handle(Input::Barrier { channel: 2, barrier: b(1) }, t + Duration::from_millis(5));
        assert_eq!(done[0], Action::Block(2));
        assert!(done.contains(&Action::Unblock(0)) && done.contains(&Action::Unblock(1)) && done.contains(&Action::Unblock(2)));
        assert_eq!(done.last(), Some(&Action::Snapshot { barrier: b(1), alignment: Duration::from_millis(5) }));
        assert!(h.pending().is_empty());
    }

    #[test]
    fn a_newer_barrier_aborts_a_checkpoint_still_aligning() {
        let mut h = BarrierHandler::new(CheckpointingMode::ExactlyOnce, 2);
        let t = Instant::now();
        h.handle(Input::Barrier { channel: 0, barrier: b(1) }, t);
        // Channel 1's upstream aborted checkpoint 1 and sends barrier 2.
        let a = h.handle(Input::Barrier { channel: 1, barrier: b(2) }, t);
        assert!(a.contains(&Action::Unblock(0)));
        assert!(matches!(a.iter().find(|x| matches!(x, Action::Abort { .. })), Some(Action::Abort { id: 1, .. })));
        assert_eq!(h.pending(), vec![2]);
        let a = h.handle(Input::Barrier { channel: 0, barrier: b(2) }, t);
        assert_eq!(snapshots(&a), vec![2]);
        // A late barrier 1 is ignored.
        assert!(h.handle(Input::Barrier { channel: 1, barrier: b(1) }, t).is_empty());
    }

    #[test]
    fn at_least_once_never_blocks_and_snapshots_on_the_last_barrier() {
        let mut h = BarrierHandler::new(CheckpointingMode::AtLeastOnce, 2);
        let t = Instant::now();
        assert!(h.handle(Input::Barrier { channel: 0, barrier: b(1) }, t).is_empty());
        assert!(h.handle(Input::Barrier { channel: 0, barrier: b(2) }, t).is_empty(), "concurrent checkpoints");
        assert_eq!(snapshots(&h.handle(Input::Barrier { channel: 1, barrier: b(1) }, t)), vec![1]);
        assert_eq!(snapshots(&h.handle(Input::Barrier { channel: 1, barrier: b(2) }, t)), vec![2]);
    }

    #[test]
    fn ended_channels_count_as_aligned_and_cancellation_aborts() {
        let mut h = BarrierHandler::new(CheckpointingMode::ExactlyOnce, 2);
        let t = Instant::now();
        h.handle(Input::Barrier { channel: 0, barrier: b(3) }, t);
        let a = h.handle(Input::EndOfPartition { channel: 1 }, t);
        assert_eq!(snapshots(&a), vec![3]);
        assert_eq!(snapshots(&h.handle(Input::Barrier { channel: 0, barrier: b(4) }, t)), vec![4]);
        h = BarrierHandler::new(CheckpointingMode::ExactlyOnce, 2);
        h.handle(Input::Barrier { channel: 0, barrier: b(5) }, t);
        let a = h.handle(Input::Cancel { channel: 1, id: 5 }, t);
        assert!(a.contains(&Action::Unblock(0)) && matches!(a.last(), Some(Action::Abort { id: 5, .. })));
    }

    proptest! {
        /// Whatever the interleaving of barriers over channels, each checkpoint is snapshotted
        /// at most once, in increasing order, only after its barrier arrived on every channel;
        /// and blocked channels are always unblocked again.
        #[test]
        fn every_interleaving_snapshots_in_order_once(order in proptest::collection::vec(0usize..3, 0..60), aligned in any::<bool>()) {
            let mode = if aligned { CheckpointingMode::ExactlyOnce } else { CheckpointingMode::AtLeastOnce };
            let mut h = BarrierHandler::new(mode, 3);
            // Each channel delivers barriers 1, 2, 3... in order; `order` picks the next channel.
            let mut next = [1u64; 3];
            let mut blocked = [false; 3];
            let mut snapped = Vec::new();
            let t = Instant::now();
            for c in order {
                if blocked[c] { continue; } // a blocked channel delivers nothing
                let id = next[c];
                next[c] += 1;
                for a in h.handle(Input::Barrier { channel: c, barrier: b(id) }, t) {
                    match a {
                        Action::Block(x) => blocked[x] = true,
                        Action::Unblock(x) => blocked[x] = false,
                        Action::Snapshot { barrier, .. } => {
                            prop_assert!(next.iter().all(|n| *n > barrier.id), "snapshot {} before all barriers", barrier.id);
                            snapped.push(barrier.id);
                        }
                        Action::Abort { .. } => {}
                    }
                }
            }
            prop_assert!(snapped.windows(2).all(|w| w[0] < w[1]));
            if !h.pending().is_empty() { prop_assert!(aligned || !blocked.iter().any(|b| *b)); }
            else { prop_assert!(!blocked.iter().any(|b| *b)); }
        }
    }
}
