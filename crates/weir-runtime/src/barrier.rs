//! The barrier handler: decides, from the barriers, cancellation markers and ends of partition
//! that arrive on a task's input channels, when the task snapshots its state and which
//! channels it must stop reading meanwhile.
//!
//! ## Protocol (see `docs/checkpointing.md`)
//! - **Exactly-once (aligned).** Barrier n on channel c blocks c: its later buffers belong to
//!   after n and must wait. When barrier n has arrived on every channel that has not ended,
//!   the task snapshots n and every channel is unblocked. A barrier m > n arriving while n is
//!   still aligning means n can no longer complete: channels deliver barriers in increasing
//!   order, so the channel that delivered m skipped n (its upstream aborted n, or never got its
//!   trigger). So n is aborted, alignment continues for m, and every checkpoint older than m is
//!   over here: a barrier of one arriving later is stale (aligning it would block a channel
//!   for a checkpoint that cannot complete).
//! - **At-least-once.** No channel is ever blocked; the snapshot is taken when the last barrier
//!   of n arrives. Records after a barrier may end up in the snapshot: replays may duplicate,
//!   never lose. Several checkpoints may be in flight.
//! - **Cancellation** (`CancelCheckpoint(n)` from upstream) aborts n here too, and only n. A
//!   marker may overtake older barriers (an upstream task forwards it at once, even while it
//!   still aligns an older checkpoint), so older and newer checkpoints keep aligning; later
//!   barriers of n are ignored.
//! - A channel that ended counts as having delivered every later barrier.
//!
//! ## Invariants
//! - Each checkpoint ends here at most once: one `Snapshot` or one `Abort`, and snapshots come
//!   in increasing order (a newer snapshot subsumes older checkpoints still pending).
//! - In exactly-once mode a channel is blocked exactly while a pending checkpoint has received
//!   its barrier on it; whatever ends a checkpoint (snapshot, abort) unblocks its channels.
//!
//! State is kept per checkpoint and per channel, never as one "current checkpoint", so
//! overlapping checkpoints (the unaligned protocol's concurrent checkpoints) fit the same
//! structure. The handler is pure: the task applies the actions it returns.
//!
//! ## Where the actions go
//! The task (`crate::task`) feeds every event it takes from its input gate to
//! [`BarrierHandler::handle`] and performs the returned [`Action`]s in order: `Block` and
//! `Unblock` become [`InputGate::set_blocked`](crate::gate::InputGate::set_blocked), `Snapshot`
//! takes the task's part of the checkpoint and forwards the barrier, `Abort` sends a cancellation
//! marker downstream and declines the checkpoint to the JobManager.
//!
//! ## Not here yet
//! There is no unaligned mode and no aligned-checkpoint timeout: barriers reach the handler in
//! order behind the data, and `execution.checkpointing.unaligned.enabled` and
//! `aligned-checkpoint-timeout` are validated but not acted on (`docs/checkpointing.md`, "Not
//! yet").

use crate::buffer::Barrier;
use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

/// How a task with several inputs treats the records behind a barrier: the typed
/// `execution.checkpointing.mode` (aligned barriers for exactly-once state, or no alignment).
pub use weir_core::settings::CheckpointingMode;

/// What happened on the inputs: one event the task took from its input gate, with the gate
/// index of the channel that delivered it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Input {
    /// Checkpoint barrier `barrier` was taken from gate channel `channel`: every item before it on
    /// that channel has been processed. Channels deliver barriers in increasing id order.
    Barrier { channel: usize, barrier: Barrier },
    /// A cancellation marker for checkpoint `id` was taken from `channel`: an upstream task aborted
    /// `id`. A marker may arrive before older barriers on other channels.
    Cancel { channel: usize, id: u64 },
    /// `channel` delivered its end of partition: it carries nothing more, and from now on counts as
    /// having delivered every later barrier.
    EndOfPartition { channel: usize },
}

/// What the task must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Stop taking items from this channel (they stay queued with their credits). Exactly-once
    /// mode only, once per checkpoint and channel, when that checkpoint's barrier arrived on it.
    Block(usize),
    /// Take items from this channel again: the checkpoint that held it ended (snapshot or abort)
    /// and no other pending checkpoint has received its barrier on it.
    Unblock(usize),
    /// Snapshot state for this barrier, then forward it downstream. Snapshots come in increasing
    /// id order; the `Unblock`s of the same checkpoint come before it in the action list.
    Snapshot {
        /// The barrier to forward: the first one of this checkpoint that arrived here.
        barrier: Barrier,
        /// From the first barrier of this checkpoint at this task to the input that completed it
        /// (zero when its first barrier completes it); reported to the JobManager.
        alignment: Duration,
    },
    /// The checkpoint cannot complete: tell downstream and the JobManager.
    Abort {
        /// The checkpoint that ends here without a snapshot.
        id: u64,
        /// Why, for the decline message and logs: a newer barrier overtook it, a newer checkpoint
        /// subsumed it, or it was canceled upstream.
        reason: String,
    },
}

/// Progress of one checkpoint at this task, from its first barrier until it ends.
#[derive(Debug)]
struct Alignment {
    /// The first barrier of this checkpoint to arrive (what `Snapshot` forwards).
    barrier: Barrier,
    /// Per channel: its barrier arrived.
    received: Vec<bool>,
    /// When that first barrier arrived: the start of the alignment time.
    started: Instant,
}

/// The per-task barrier state machine; see the module documentation.
///
/// In exactly-once mode at most one checkpoint is pending at a time (a barrier of n aborts
/// every older pending checkpoint and makes every older barrier stale); in at-least-once mode
/// several may be, and a completing one subsumes the older ones.
#[derive(Debug)]
pub struct BarrierHandler {
    /// Exactly-once blocks channels during alignment; at-least-once never does.
    mode: CheckpointingMode,
    /// Per channel: its end of partition arrived. Ended channels are not waited for.
    ended: Vec<bool>,
    /// Checkpoints whose first barrier arrived and that have not ended yet, by id.
    pending: BTreeMap<u64, Alignment>,
    /// Every checkpoint up to this id is over here: snapshotted, subsumed by a newer snapshot,
    /// or (exactly-once) overtaken by a newer barrier. Their barriers are stale.
    settled: u64,
    /// Checkpoints above `settled` that a cancellation marker aborted: their barriers are
    /// ignored, and older or newer checkpoints are not affected.
    canceled: BTreeSet<u64>,
}

impl BarrierHandler {
    /// A handler for a task with `channels` input channels (the gate's channel count; zero for a
    /// source task, which gets no barriers through a gate).
    pub fn new(mode: CheckpointingMode, channels: usize) -> Self {
        Self { mode, ended: vec![false; channels], pending: BTreeMap::new(), settled: 0, canceled: BTreeSet::new() }
    }

    /// Channels that have not delivered their end of partition yet.
    fn live(&self) -> usize {
        self.ended.iter().filter(|e| !**e).count()
    }

    /// Whether checkpoint `id` already ended here (its barriers change nothing).
    fn is_over(&self, id: u64) -> bool {
        id <= self.settled || self.canceled.contains(&id)
    }

    /// Marks every checkpoint up to `id` as over.
    fn settle(&mut self, id: u64) {
        if id > self.settled {
            self.settled = id;
            self.canceled = self.canceled.split_off(&(id + 1));
        }
    }

    /// The one transition function: applies one input and returns what the task must do, in
    /// order.
    ///
    /// - `Barrier` of a checkpoint that is over here (settled or canceled): ignored, nothing is
    ///   blocked.
    /// - `Barrier` n, exactly-once: every pending checkpoint older than n is aborted (this channel
    ///   skipped it, so it can never align) and every id below n is settled; n is recorded on the
    ///   channel, the channel is blocked, and n is snapshotted if its barrier is now on every
    ///   live channel.
    /// - `Barrier` n, at-least-once: recorded on the channel, never blocking; n is snapshotted
    ///   when it is on every live channel, aborting ("subsumed") older pending checkpoints.
    /// - `Cancel` n: unless n is already over, n alone is aborted and its channels released. The
    ///   `Abort` is returned even if no barrier of n arrived here yet, so the task still tells
    ///   downstream and the JobManager; later barriers of n are ignored.
    /// - `EndOfPartition`: the channel stops counting, which may complete pending checkpoints.
    ///
    /// `now` only measures alignment times, so tests may pass any instant.
    pub fn handle(&mut self, input: Input, now: Instant) -> Vec<Action> {
        let mut actions = Vec::new();
        match input {
            Input::Barrier { channel, barrier } => {
                if self.is_over(barrier.id) {
                    return actions;
                }
                if self.mode == CheckpointingMode::ExactlyOnce {
                    // This channel skipped every older checkpoint: none of them can align any more.
                    let older: Vec<u64> = self.pending.range(..barrier.id).map(|(id, _)| *id).collect();
                    for id in older {
                        self.abort(id, format!("barrier {} arrived before checkpoint {id} was aligned", barrier.id), &mut actions);
                    }
                    self.settle(barrier.id.saturating_sub(1));
                }
                let n = self.ended.len();
                let a = self.pending.entry(barrier.id).or_insert_with(|| Alignment { barrier, received: vec![false; n], started: now });
                if !a.received[channel] {
                    a.received[channel] = true;
                    if self.mode == CheckpointingMode::ExactlyOnce {
                        actions.push(Action::Block(channel));
                    }
                }
                self.complete_aligned(now, &mut actions);
            }
            Input::Cancel { id, .. } => {
                if !self.is_over(id) {
                    self.canceled.insert(id);
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

    /// Ends checkpoint `id` without a snapshot; the caller records why it is over.
    fn abort(&mut self, id: u64, reason: String, actions: &mut Vec<Action>) {
        if let Some(a) = self.pending.remove(&id) {
            self.release(&a, actions);
        }
        actions.push(Action::Abort { id, reason });
    }

    /// Unblocks the channels `a` (no longer pending) held that no other pending checkpoint holds.
    fn release(&self, a: &Alignment, actions: &mut Vec<Action>) {
        if self.mode != CheckpointingMode::ExactlyOnce {
            return;
        }
        for (c, got) in a.received.iter().enumerate() {
            if *got && !self.ended[c] && !self.pending.values().any(|p| p.received[c]) {
                actions.push(Action::Unblock(c));
            }
        }
    }

    /// Snapshots every pending checkpoint whose barrier arrived on all live channels, oldest first.
    /// Older pending checkpoints are aborted as subsumed first (in exactly-once mode there are
    /// none left by then: the newer barrier already aborted them), and the snapshotted id is
    /// settled, so its late barriers and those of older checkpoints are stale.
    fn complete_aligned(&mut self, now: Instant, actions: &mut Vec<Action>) {
        loop {
            let live = self.live();
            let ready = self
                .pending
                .iter()
                .find(|(_, a)| a.received.iter().zip(&self.ended).filter(|(got, ended)| **got && !**ended).count() >= live);
            let Some((&id, _)) = ready else { return };
            // Older incomplete checkpoints are subsumed by a newer complete one.
            let older: Vec<u64> = self.pending.range(..id).map(|(k, _)| *k).collect();
            for o in older {
                self.abort(o, format!("subsumed by checkpoint {id}"), actions);
            }
            let a = self.pending.remove(&id).expect("found above");
            self.release(&a, actions);
            self.settle(id);
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
    use std::collections::{BTreeSet, VecDeque};

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

    #[test]
    fn a_cancel_aborts_only_its_own_checkpoint() {
        // Checkpoint 1 is aligning when the cancellation marker of checkpoint 2 overtakes
        // barrier 1 on another channel (its upstream forwarded the cancel while it was still
        // aligning 1 itself): 1 must still complete and release its channels.
        for mode in [CheckpointingMode::ExactlyOnce, CheckpointingMode::AtLeastOnce] {
            let mut h = BarrierHandler::new(mode, 3);
            let t = Instant::now();
            h.handle(Input::Barrier { channel: 0, barrier: b(1) }, t);
            let a = h.handle(Input::Cancel { channel: 1, id: 2 }, t);
            assert!(matches!(a.as_slice(), [Action::Abort { id: 2, .. }]), "{mode:?}: {a:?}");
            assert_eq!(h.pending(), vec![1], "{mode:?}");
            h.handle(Input::Barrier { channel: 1, barrier: b(1) }, t);
            let a = h.handle(Input::Barrier { channel: 2, barrier: b(1) }, t);
            assert_eq!(snapshots(&a), vec![1], "{mode:?}");
            if mode == CheckpointingMode::ExactlyOnce {
                assert!((0..3).all(|c| a.contains(&Action::Unblock(c))), "{a:?}");
            }
            // Barriers of the canceled checkpoint are ignored; a later one aligns as usual.
            assert!(h.handle(Input::Barrier { channel: 0, barrier: b(2) }, t).is_empty(), "{mode:?}");
            for c in 0..3 {
                h.handle(Input::Barrier { channel: c, barrier: b(3) }, t);
            }
            assert!(h.pending().is_empty(), "{mode:?}");
        }
    }

    #[test]
    fn an_older_barrier_after_a_newer_one_is_stale_and_blocks_nothing() {
        // Channel 0's upstream never got checkpoint 1 (its trigger was lost) and sends barrier
        // 2; barrier 1 then arrives on channel 1. Aligning 1 would block channel 1 while
        // channel 0 waits for it to deliver barrier 2: a deadlock.
        let mut h = BarrierHandler::new(CheckpointingMode::ExactlyOnce, 2);
        let t = Instant::now();
        assert_eq!(h.handle(Input::Barrier { channel: 0, barrier: b(2) }, t), vec![Action::Block(0)]);
        assert!(h.handle(Input::Barrier { channel: 1, barrier: b(1) }, t).is_empty());
        let a = h.handle(Input::Barrier { channel: 1, barrier: b(2) }, t);
        assert_eq!(snapshots(&a), vec![2]);
        assert!(a.contains(&Action::Unblock(0)) && a.contains(&Action::Unblock(1)));
    }

    /// What one input channel's upstream does for one checkpoint.
    #[derive(Debug, Clone, Copy)]
    enum Step {
        Barrier,
        /// It aborted the checkpoint and sent a cancellation marker.
        Cancel,
        /// It never heard of the checkpoint (its trigger was lost).
        Skip,
    }

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![4 => Just(Step::Barrier), 1 => Just(Step::Cancel), 1 => Just(Step::Skip)]
    }

    proptest! {
        /// Whatever each upstream does per checkpoint (barrier, cancellation marker or nothing),
        /// and whatever the interleaving of the channels: no set of blocked channels ever waits
        /// on each other, each checkpoint ends at most once, snapshots come in increasing order
        /// and only once every channel delivered the barrier or ended, a canceled checkpoint is
        /// never snapshotted, one whose barrier came on every channel always is, and at the end
        /// nothing is pending or blocked.
        #[test]
        fn every_interleaving_of_barriers_and_cancels_ends_cleanly(
            scripts in proptest::collection::vec(proptest::collection::vec(step(), 5), 3),
            order in proptest::collection::vec(0usize..3, 0..80),
            aligned in any::<bool>(),
        ) {
            let mode = if aligned { CheckpointingMode::ExactlyOnce } else { CheckpointingMode::AtLeastOnce };
            let channels = scripts.len();
            let mut h = BarrierHandler::new(mode, channels);
            let t = Instant::now();
            // Each channel delivers its script in checkpoint order, then its end of partition.
            let mut queues: Vec<VecDeque<Input>> = scripts
                .iter()
                .enumerate()
                .map(|(c, script)| {
                    let mut q: VecDeque<Input> = script
                        .iter()
                        .enumerate()
                        .filter_map(|(i, s)| {
                            let id = i as u64 + 1;
                            match s {
                                Step::Barrier => Some(Input::Barrier { channel: c, barrier: b(id) }),
                                Step::Cancel => Some(Input::Cancel { channel: c, id }),
                                Step::Skip => None,
                            }
                        })
                        .collect();
                    q.push_back(Input::EndOfPartition { channel: c });
                    q
                })
                .collect();
            let mut blocked = vec![false; channels];
            let mut ended = vec![false; channels];
            let mut got_barrier = vec![BTreeSet::new(); channels];
            let mut got_cancel = BTreeSet::new();
            let mut snapped: Vec<u64> = Vec::new();
            let mut over = BTreeSet::new();
            let mut order = order.into_iter();
            loop {
                let ready: Vec<usize> = (0..channels).filter(|c| !blocked[*c] && !queues[*c].is_empty()).collect();
                if ready.is_empty() {
                    prop_assert!(queues.iter().all(|q| q.is_empty()), "deadlock: blocked {blocked:?}, pending {:?}", h.pending());
                    break;
                }
                // Follow the generated order while it lasts, then drain round-robin.
                let c = match order.next() {
                    Some(c) if ready.contains(&c) => c,
                    Some(_) => continue,
                    None => ready[0],
                };
                let input = queues[c].pop_front().expect("ready");
                match &input {
                    Input::Barrier { barrier, .. } => { got_barrier[c].insert(barrier.id); }
                    Input::Cancel { id, .. } => { got_cancel.insert(*id); }
                    Input::EndOfPartition { .. } => ended[c] = true,
                }
                for a in h.handle(input, t) {
                    match a {
                        Action::Block(x) => {
                            prop_assert!(aligned, "at-least-once blocked channel {x}");
                            blocked[x] = true;
                        }
                        Action::Unblock(x) => blocked[x] = false,
                        Action::Snapshot { barrier, .. } => {
                            let id = barrier.id;
                            prop_assert!(over.insert(id), "checkpoint {id} ended twice");
                            prop_assert!(!got_cancel.contains(&id), "canceled checkpoint {id} snapshotted");
                            prop_assert!((0..channels).all(|x| ended[x] || got_barrier[x].contains(&id)), "snapshot {id} before all barriers");
                            prop_assert!(snapped.last().is_none_or(|l| *l < id), "snapshot {id} after {snapped:?}");
                            snapped.push(id);
                        }
                        Action::Abort { id, .. } => prop_assert!(over.insert(id), "checkpoint {id} ended twice"),
                    }
                }
            }
            prop_assert!(h.pending().is_empty(), "pending at the end: {:?}", h.pending());
            prop_assert!(!blocked.iter().any(|b| *b));
            for id in 1..=5u64 {
                if (0..channels).all(|c| got_barrier[c].contains(&id)) {
                    prop_assert!(snapped.contains(&id), "checkpoint {id} had every barrier but was not snapshotted");
                }
            }
        }
    }
}
