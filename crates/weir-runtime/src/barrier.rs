//! The barrier handler: decides, from the barriers, cancellation markers, ends of partition and
//! timer ticks that reach a task's input channels, when the task snapshots its state, which
//! channels it must stop reading meanwhile, and — for unaligned checkpoints — which in-flight
//! buffers belong to a checkpoint's channel state.
//!
//! ## Protocol (see `docs/checkpointing.md`)
//! - **Exactly-once, aligned.** Barrier n on channel c blocks c: its later buffers belong to
//!   after n and must wait. When barrier n has arrived on every channel that has not ended,
//!   the task snapshots n and every channel is unblocked. A barrier m > n arriving on a channel
//!   that has not delivered n means n can no longer complete: channels deliver barriers in
//!   increasing order, so that channel skipped n (its upstream aborted n, or never got its
//!   trigger). So n is aborted, and a barrier of a checkpoint that is over arriving later is
//!   stale (aligning it would block a channel for a checkpoint that cannot complete).
//! - **Exactly-once, unaligned (FLIP-76).** On the first barrier of n the task snapshots at once
//!   (`Snapshot` with [`SnapshotKind::Unaligned`]) and forwards the barrier ahead of its queued
//!   output. No channel is blocked. The buffers the barrier overtook in the input queue are
//!   channel state of n (`Persist`), and so is every buffer taken from a channel before that
//!   channel's barrier n arrives ([`BarrierHandler::records`]); each later barrier of n adds
//!   what it overtook (`Persist`). When barrier n has arrived on every live channel, n's channel
//!   state is complete (`ChannelStateDone`). Several unaligned checkpoints may be collecting at
//!   once: a buffer may belong to several of them.
//! - **Aligned, then unaligned after a timeout.** A checkpoint starts aligned; if its alignment
//!   at this task has lasted `aligned-checkpoint-timeout` (measured from its first barrier here,
//!   checked on `Tick`), or a barrier of it arrives that an upstream task already sent
//!   unaligned, it switches: snapshot now ([`SnapshotKind::TimedOut`]), unblock its channels
//!   (their later buffers are after the barrier: not channel state), ask the gate to move the
//!   barrier ahead where it is still queued behind data (`Prioritize`), and record the other
//!   channels until their barrier arrives, as in unaligned mode.
//! - **Savepoints** are always aligned, whatever the policy.
//! - **Which policy.** Each barrier carries the policy its checkpoint was triggered with
//!   ([`Barrier::alignment`]), so a running job's unaligned setting and aligned-checkpoint
//!   timeout change from one checkpoint to the next; a barrier without one follows the policy
//!   the task was deployed with.
//! - **At-least-once.** No channel is ever blocked and nothing is recorded; the snapshot is taken
//!   when the last barrier of n arrives. Records after a barrier may end up in the snapshot:
//!   replays may duplicate, never lose. Several checkpoints may be in flight.
//! - **Cancellation** (`CancelCheckpoint(n)` from upstream) aborts n here too, and only n. A
//!   marker may overtake older barriers (it is a priority event), so older and newer
//!   checkpoints keep going; later barriers of n are ignored. An unaligned checkpoint may be
//!   aborted after its snapshot: its channel state is then dropped.
//! - A channel that ended counts as having delivered every later barrier.
//!
//! ## Invariants
//! - Each checkpoint ends here at most once: an aligned `Snapshot`, a `ChannelStateDone` (after
//!   its unaligned `Snapshot`), or an `Abort`. Snapshots come in increasing id order.
//! - A channel is blocked exactly while an aligning (exactly-once, not yet switched) checkpoint
//!   has received its barrier on it; whatever ends or switches a checkpoint unblocks its
//!   channels.
//! - For every checkpoint that completes here, the buffers processed before its snapshot plus
//!   its channel state are exactly the buffers sent before its barrier on every channel, each
//!   once (the property test checks this against a model of the channels).
//!
//! State is kept per checkpoint and per channel, never as one "current checkpoint". The handler
//! is pure: the task applies the actions it returns, and time is an input.
//!
//! ## Where the actions go
//! The task (`crate::task`) feeds every event it takes from its input gate, and a `Tick` when a
//! deadline from [`BarrierHandler::next_deadline`] passes, to [`BarrierHandler::handle`], and
//! performs the returned [`Action`]s in order: `Block`/`Unblock` become
//! [`InputGate::set_blocked`](crate::gate::InputGate::set_blocked), `Prioritize` becomes
//! [`InputGate::prioritize_barrier`](crate::gate::InputGate::prioritize_barrier), `Snapshot` takes
//! the task's part of the checkpoint and forwards the barrier, `Persist` adds the buffers the
//! barrier overtook to the channel state, `ChannelStateDone` uploads it and acknowledges, and
//! `Abort` sends a cancellation marker downstream and declines the checkpoint.

use crate::buffer::Barrier;
use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

/// How a task with several inputs treats the records behind a barrier: the typed
/// `execution.checkpointing.mode` (aligned barriers for exactly-once state, or no alignment).
pub use weir_core::settings::CheckpointingMode;

/// How barriers travel in this job: aligned, unaligned, or aligned until a timeout.
pub use weir_core::settings::AlignmentPolicy;

/// What happened on the inputs: one event the task took from its input gate, with the gate
/// index of the channel that delivered it, or the passing of time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Input {
    /// Checkpoint barrier `barrier` was taken from gate channel `channel`: every item before it on
    /// that channel has been taken (an unaligned barrier arrives with the buffers it overtook).
    /// Channels deliver barriers in increasing id order.
    Barrier { channel: usize, barrier: Barrier },
    /// A cancellation marker for checkpoint `id` was taken from `channel`: an upstream task aborted
    /// `id`. A marker may arrive before older barriers on other channels.
    Cancel { channel: usize, id: u64 },
    /// `channel` delivered its end of partition: it carries nothing more, and from now on counts as
    /// having delivered every later barrier.
    EndOfPartition { channel: usize },
    /// Time passed: alignments that have lasted longer than the aligned-checkpoint timeout switch
    /// to unaligned.
    Tick,
    /// An aligned barrier arrived in `channel`'s queue, behind buffers the task has not taken
    /// yet. In timeout mode its checkpoint's alignment (and timeout) starts now; the barrier is
    /// still delivered as `Barrier` when the task reaches it. Ignored in other modes.
    Announce { channel: usize, barrier: Barrier },
}

/// How a task took its snapshot of a checkpoint; reported to the JobManager.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum SnapshotKind {
    /// After every barrier arrived: no channel state.
    Aligned,
    /// On the first barrier, overtaking in-flight data: channel state follows.
    Unaligned,
    /// Aligned first, then switched to unaligned by the aligned-checkpoint timeout (here or
    /// upstream).
    TimedOut,
}

/// What the task must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Stop taking items from this channel (they stay queued with their credits). Exactly-once
    /// aligned checkpoints only, once per checkpoint and channel, when its barrier arrived on it.
    Block(usize),
    /// Take items from this channel again: the checkpoint that held it ended or switched to
    /// unaligned, and no other aligning checkpoint has received its barrier on it.
    Unblock(usize),
    /// Snapshot state for this barrier, then forward it downstream: behind the output for an
    /// aligned snapshot, ahead of it (a priority event, `barrier.unaligned` set) otherwise.
    /// Snapshots come in increasing id order; the `Unblock`s of the same checkpoint come before
    /// an aligned one in the action list.
    Snapshot {
        /// The barrier to forward: the first one of this checkpoint that arrived here (marked
        /// unaligned for an unaligned snapshot).
        barrier: Barrier,
        /// From the first barrier of this checkpoint at this task to the input that completed
        /// (or switched) it; zero when its first barrier did. Reported to the JobManager.
        alignment: Duration,
        /// Aligned, unaligned from the start, or switched by the timeout.
        kind: SnapshotKind,
    },
    /// The buffers the barrier just taken from `channel` overtook in the input queue belong to
    /// checkpoint `id`'s channel state. Comes after that checkpoint's unaligned `Snapshot`.
    Persist { id: u64, channel: usize },
    /// Checkpoint `id` switched to unaligned: where its barrier still waits behind buffers in a
    /// channel's queue, move it ahead of them (the buffers it overtakes are persisted when the
    /// barrier is taken).
    Prioritize { id: u64 },
    /// Barrier `id` (an unaligned checkpoint) has arrived on every live channel: its channel
    /// state is complete and may be uploaded and acknowledged.
    ChannelStateDone { id: u64 },
    /// The checkpoint cannot complete: tell downstream and the JobManager (and drop its channel
    /// state, if it had any).
    Abort {
        /// The checkpoint that ends here without completing.
        id: u64,
        /// Why, for the decline message and logs: a newer barrier overtook it, a newer checkpoint
        /// subsumed it, or it was canceled upstream.
        reason: String,
    },
}

/// Where one checkpoint stands at this task.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Waiting for barriers; in exactly-once mode its received channels are blocked. Switches
    /// to unaligned at `deadline`, if any.
    Aligning { deadline: Option<Instant> },
    /// Snapshotted unaligned: collecting channel state until every barrier arrived.
    Collecting,
}

/// Progress of one checkpoint at this task, from its first barrier until it ends.
#[derive(Debug)]
struct Pending {
    /// The first barrier of this checkpoint to arrive (what `Snapshot` forwards).
    barrier: Barrier,
    /// Per channel: its barrier arrived.
    received: Vec<bool>,
    /// When that first barrier arrived: the start of the alignment time.
    started: Instant,
    phase: Phase,
}

/// The per-task barrier state machine; see the module documentation.
#[derive(Debug)]
pub struct BarrierHandler {
    /// Exactly-once blocks channels during alignment (or records them, unaligned);
    /// at-least-once does neither.
    mode: CheckpointingMode,
    /// How this job's barriers travel when a barrier does not say (see [`Barrier::alignment`]).
    policy: AlignmentPolicy,
    /// Per channel: its end of partition arrived. Ended channels are not waited for.
    ended: Vec<bool>,
    /// Checkpoints whose first barrier arrived and that have not ended yet, by id.
    pending: BTreeMap<u64, Pending>,
    /// Every checkpoint up to this id that is not pending is over here: completed, subsumed, or
    /// skipped by a newer barrier. Their barriers are stale.
    settled: u64,
    /// Checkpoints above `settled` that a cancellation marker aborted: their barriers are
    /// ignored, and older or newer checkpoints are not affected.
    canceled: BTreeSet<u64>,
    /// Pending checkpoints in the `Collecting` phase (a fast path for [`Self::records`]).
    collecting: usize,
}

impl BarrierHandler {
    /// A handler for a task with `channels` input channels (the gate's channel count; zero for a
    /// source task, which gets no barriers through a gate).
    pub fn new(mode: CheckpointingMode, policy: AlignmentPolicy, channels: usize) -> Self {
        let policy = if mode == CheckpointingMode::AtLeastOnce { AlignmentPolicy::Aligned } else { policy };
        Self { mode, policy, ended: vec![false; channels], pending: BTreeMap::new(), settled: 0, canceled: BTreeSet::new(), collecting: 0 }
    }

    /// How checkpoint `barrier.id` travels: as the barrier says (the JobManager's setting when it
    /// triggered it), else as the task was deployed; always aligned at-least-once.
    fn policy_of(&self, barrier: &Barrier) -> AlignmentPolicy {
        match self.mode {
            CheckpointingMode::AtLeastOnce => AlignmentPolicy::Aligned,
            CheckpointingMode::ExactlyOnce => barrier.alignment.unwrap_or(self.policy),
        }
    }

    /// Channels that have not delivered their end of partition yet.
    fn live(&self) -> usize {
        self.ended.iter().filter(|e| !**e).count()
    }

    /// Whether checkpoint `id` already ended here (its barriers change nothing).
    fn is_over(&self, id: u64) -> bool {
        !self.pending.contains_key(&id) && (id <= self.settled || self.canceled.contains(&id))
    }

    /// Marks every checkpoint up to `id` that is not pending as over.
    fn settle(&mut self, id: u64) {
        if id > self.settled {
            self.settled = id;
            self.canceled = self.canceled.split_off(&(id + 1));
        }
    }

    /// The unaligned checkpoints whose channel state the next buffer taken from `channel` belongs
    /// to: those collecting whose barrier has not arrived on it yet. Empty (and cheap) when no
    /// checkpoint is collecting.
    pub fn records(&self, channel: usize) -> impl Iterator<Item = u64> + '_ {
        let any = self.collecting > 0;
        self.pending.iter().filter(move |(_, p)| any && p.phase == Phase::Collecting && !p.received[channel]).map(|(id, _)| *id)
    }

    /// Whether some checkpoint is collecting channel state.
    pub fn is_collecting(&self) -> bool {
        self.collecting > 0
    }

    /// The earliest instant at which a `Tick` may switch an alignment to unaligned.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.pending
            .values()
            .filter_map(|p| match p.phase {
                Phase::Aligning { deadline } => deadline,
                Phase::Collecting => None,
            })
            .min()
    }

    /// The one transition function: applies one input and returns what the task must do, in
    /// order (see the module documentation for the rules of each mode).
    ///
    /// `now` measures alignment times and timeouts only, so tests may pass any instant.
    pub fn handle(&mut self, input: Input, now: Instant) -> Vec<Action> {
        let mut actions = Vec::new();
        match input {
            Input::Barrier { channel, barrier } => {
                if self.is_over(barrier.id) {
                    return actions;
                }
                let n = barrier.id;
                if self.mode == CheckpointingMode::ExactlyOnce {
                    // This channel skipped every older checkpoint it has not delivered: none of
                    // them can complete any more.
                    let skipped: Vec<u64> = self.pending.range(..n).filter(|(_, p)| !p.received[channel]).map(|(id, _)| *id).collect();
                    for id in skipped {
                        self.abort(id, format!("barrier {n} arrived before checkpoint {id} was aligned"), &mut actions);
                    }
                    self.settle(n.saturating_sub(1));
                }
                if !self.pending.contains_key(&n) {
                    let policy = self.policy_of(&barrier);
                    let unaligned = self.mode == CheckpointingMode::ExactlyOnce
                        && !barrier.is_savepoint()
                        && (policy == AlignmentPolicy::Unaligned || barrier.unaligned);
                    let deadline = match policy {
                        AlignmentPolicy::AlignedThenUnaligned(t) if !barrier.is_savepoint() => Some(now + t),
                        _ => None,
                    };
                    let channels = self.ended.len();
                    self.pending
                        .insert(n, Pending { barrier, received: vec![false; channels], started: now, phase: Phase::Aligning { deadline } });
                    if unaligned {
                        let kind = if policy == AlignmentPolicy::Unaligned { SnapshotKind::Unaligned } else { SnapshotKind::TimedOut };
                        self.switch(n, kind, now, &mut actions);
                    }
                } else if barrier.unaligned && !barrier.is_savepoint() && self.mode == CheckpointingMode::ExactlyOnce {
                    // An upstream task already switched this checkpoint: aligning here would
                    // only wait for what upstream persists anyway.
                    if matches!(self.pending[&n].phase, Phase::Aligning { .. }) {
                        self.switch(n, SnapshotKind::TimedOut, now, &mut actions);
                    }
                }
                let p = self.pending.get_mut(&n).expect("inserted above");
                if !p.received[channel] {
                    p.received[channel] = true;
                    match p.phase {
                        Phase::Collecting => actions.push(Action::Persist { id: n, channel }),
                        Phase::Aligning { .. } if self.mode == CheckpointingMode::ExactlyOnce => actions.push(Action::Block(channel)),
                        Phase::Aligning { .. } => {}
                    }
                }
                self.complete(now, &mut actions);
            }
            Input::Cancel { id, .. } => {
                if !self.is_over(id) {
                    self.canceled.insert(id);
                    self.abort(id, format!("checkpoint {id} was canceled upstream"), &mut actions);
                }
            }
            Input::EndOfPartition { channel } => {
                self.ended[channel] = true;
                self.complete(now, &mut actions);
            }
            Input::Announce { barrier, .. } => {
                let timeout = match self.policy_of(&barrier) {
                    AlignmentPolicy::AlignedThenUnaligned(t) if !barrier.is_savepoint() && self.mode == CheckpointingMode::ExactlyOnce => t,
                    _ => return actions,
                };
                if !self.is_over(barrier.id) && !self.pending.contains_key(&barrier.id) {
                    let channels = self.ended.len();
                    self.pending.insert(
                        barrier.id,
                        Pending {
                            barrier,
                            received: vec![false; channels],
                            started: now,
                            phase: Phase::Aligning { deadline: Some(now + timeout) },
                        },
                    );
                }
            }
            Input::Tick => {
                let due: Vec<u64> = self
                    .pending
                    .iter()
                    .filter(|(_, p)| matches!(p.phase, Phase::Aligning { deadline: Some(d) } if d <= now))
                    .map(|(id, _)| *id)
                    .collect();
                for id in due {
                    self.switch(id, SnapshotKind::TimedOut, now, &mut actions);
                }
            }
        }
        actions
    }

    /// Turns aligning checkpoint `id` unaligned: snapshot now, release the channels it blocked
    /// (what follows its barrier there is after the checkpoint), and have the gate move its
    /// barrier ahead of the data where it still waits in a queue.
    ///
    /// Older checkpoints still aligning switch first, so snapshots stay in id order (a priority
    /// barrier may reach a channel an older alignment blocks); an older savepoint, which must
    /// stay aligned, is aborted instead.
    fn switch(&mut self, id: u64, kind: SnapshotKind, now: Instant, actions: &mut Vec<Action>) {
        let older: Vec<(u64, bool)> = self
            .pending
            .range(..id)
            .filter(|(_, p)| matches!(p.phase, Phase::Aligning { .. }))
            .map(|(k, p)| (*k, p.barrier.is_savepoint()))
            .collect();
        for (o, savepoint) in older {
            if savepoint {
                self.abort(o, format!("savepoint {o} was overtaken by unaligned checkpoint {id}"), actions);
            } else {
                self.switch(o, SnapshotKind::TimedOut, now, actions);
            }
        }
        // An older checkpoint not seen here yet (its barrier still queued behind an aligned
        // one) can no longer snapshot before this one: it is over here, its barriers stale. The
        // JobManager subsumes it once this one completes.
        self.settle(id.saturating_sub(1));
        let p = self.pending.get_mut(&id).expect("switching a pending checkpoint");
        p.phase = Phase::Collecting;
        p.barrier.unaligned = true;
        self.collecting += 1;
        let (barrier, alignment) = (p.barrier.clone(), now.saturating_duration_since(p.started));
        let received = p.received.clone();
        self.release(&received, actions);
        actions.push(Action::Snapshot { barrier, alignment, kind });
        if kind == SnapshotKind::TimedOut && received.iter().zip(&self.ended).any(|(got, ended)| !got && !ended) {
            actions.push(Action::Prioritize { id });
        }
    }

    /// Ends checkpoint `id` without completing it; the caller records why it is over.
    fn abort(&mut self, id: u64, reason: String, actions: &mut Vec<Action>) {
        if let Some(p) = self.pending.remove(&id) {
            if p.phase == Phase::Collecting {
                self.collecting -= 1;
            } else {
                self.release(&p.received, actions);
            }
        }
        actions.push(Action::Abort { id, reason });
    }

    /// Unblocks the channels in `received` (of a checkpoint that no longer aligns) that no
    /// aligning checkpoint still holds.
    fn release(&self, received: &[bool], actions: &mut Vec<Action>) {
        if self.mode != CheckpointingMode::ExactlyOnce {
            return;
        }
        for (c, got) in received.iter().enumerate() {
            let held = self.pending.values().any(|p| matches!(p.phase, Phase::Aligning { .. }) && p.received[c]);
            if *got && !self.ended[c] && !held {
                actions.push(Action::Unblock(c));
            }
        }
    }

    /// Ends every pending checkpoint whose barrier arrived on all live channels, oldest first: an
    /// aligning one is snapshotted (older aligning ones are aborted as subsumed first), a
    /// collecting one has its channel state done. The id is settled, so its late barriers and
    /// those of older checkpoints are stale.
    fn complete(&mut self, now: Instant, actions: &mut Vec<Action>) {
        loop {
            let live = self.live();
            let ready = self
                .pending
                .iter()
                .find(|(_, p)| p.received.iter().zip(&self.ended).filter(|(got, ended)| **got && !**ended).count() >= live);
            let Some((&id, _)) = ready else { return };
            let p = self.pending.remove(&id).expect("found above");
            match p.phase {
                Phase::Collecting => {
                    self.collecting -= 1;
                    actions.push(Action::ChannelStateDone { id });
                }
                Phase::Aligning { .. } => {
                    // Older incomplete checkpoints are subsumed by a newer complete one.
                    let older: Vec<u64> = self.pending.range(..id).filter(|(_, o)| o.phase != Phase::Collecting).map(|(k, _)| *k).collect();
                    for o in older {
                        self.abort(o, format!("subsumed by checkpoint {id}"), actions);
                    }
                    self.release(&p.received, actions);
                    actions.push(Action::Snapshot {
                        barrier: p.barrier,
                        alignment: now.saturating_duration_since(p.started),
                        kind: SnapshotKind::Aligned,
                    });
                }
            }
            self.settle(id);
        }
    }

    /// Checkpoints currently pending here, aligning or collecting (for tests and metrics).
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
        Barrier::new(id, 0)
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
        let mut h = BarrierHandler::new(CheckpointingMode::ExactlyOnce, AlignmentPolicy::Aligned, 3);
        let t = Instant::now();
        assert_eq!(h.handle(Input::Barrier { channel: 1, barrier: b(1) }, t), vec![Action::Block(1)]);
        assert_eq!(h.handle(Input::Barrier { channel: 0, barrier: b(1) }, t), vec![Action::Block(0)]);
        let done = h.handle(Input::Barrier { channel: 2, barrier: b(1) }, t + Duration::from_millis(5));
        assert_eq!(done[0], Action::Block(2));
        assert!(done.contains(&Action::Unblock(0)) && done.contains(&Action::Unblock(1)) && done.contains(&Action::Unblock(2)));
        assert_eq!(
            done.last(),
            Some(&Action::Snapshot { barrier: b(1), alignment: Duration::from_millis(5), kind: SnapshotKind::Aligned })
        );
        assert!(h.pending().is_empty());
    }

    #[test]
    fn each_checkpoint_travels_as_its_barrier_says_whatever_the_task_was_deployed_with() {
        // Deployed aligned; the job turned unaligned on while running.
        let mut h = BarrierHandler::new(CheckpointingMode::ExactlyOnce, AlignmentPolicy::Aligned, 2);
        let t = Instant::now();
        let a = h.handle(Input::Barrier { channel: 0, barrier: b(1).with_alignment(AlignmentPolicy::Unaligned) }, t);
        assert!(matches!(a.first(), Some(Action::Snapshot { kind: SnapshotKind::Unaligned, .. })), "{a:?}");
        // Then an aligned timeout: checkpoint 2 aligns until its deadline, then switches.
        let timeout = AlignmentPolicy::AlignedThenUnaligned(Duration::from_millis(10));
        h.handle(Input::Barrier { channel: 1, barrier: b(1).with_alignment(AlignmentPolicy::Unaligned) }, t);
        assert_eq!(h.handle(Input::Barrier { channel: 0, barrier: b(2).with_alignment(timeout) }, t), vec![Action::Block(0)]);
        assert_eq!(h.next_deadline(), Some(t + Duration::from_millis(10)));
        let a = h.handle(Input::Tick, t + Duration::from_millis(10));
        assert!(a.iter().any(|x| matches!(x, Action::Snapshot { kind: SnapshotKind::TimedOut, .. })), "{a:?}");
        // Deployed unaligned, a checkpoint triggered aligned aligns.
        let mut h = BarrierHandler::new(CheckpointingMode::ExactlyOnce, AlignmentPolicy::Unaligned, 2);
        assert_eq!(
            h.handle(Input::Barrier { channel: 1, barrier: b(1).with_alignment(AlignmentPolicy::Aligned) }, t),
            vec![Action::Block(1)]
        );
        // At-least-once ignores what the barrier says.
        let mut h = BarrierHandler::new(CheckpointingMode::AtLeastOnce, AlignmentPolicy::Aligned, 2);
        assert!(h.handle(Input::Barrier { channel: 0, barrier: b(1).with_alignment(AlignmentPolicy::Unaligned) }, t).is_empty());
    }

    #[test]
    fn a_newer_barrier_aborts_a_checkpoint_still_aligning() {
        let mut h = BarrierHandler::new(CheckpointingMode::ExactlyOnce, AlignmentPolicy::Aligned, 2);
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
        let mut h = BarrierHandler::new(CheckpointingMode::AtLeastOnce, AlignmentPolicy::Aligned, 2);
        let t = Instant::now();
        assert!(h.handle(Input::Barrier { channel: 0, barrier: b(1) }, t).is_empty());
        assert!(h.handle(Input::Barrier { channel: 0, barrier: b(2) }, t).is_empty(), "concurrent checkpoints");
        assert_eq!(snapshots(&h.handle(Input::Barrier { channel: 1, barrier: b(1) }, t)), vec![1]);
        assert_eq!(snapshots(&h.handle(Input::Barrier { channel: 1, barrier: b(2) }, t)), vec![2]);
    }

    #[test]
    fn ended_channels_count_as_aligned_and_cancellation_aborts() {
        let mut h = BarrierHandler::new(CheckpointingMode::ExactlyOnce, AlignmentPolicy::Aligned, 2);
        let t = Instant::now();
        h.handle(Input::Barrier { channel: 0, barrier: b(3) }, t);
        let a = h.handle(Input::EndOfPartition { channel: 1 }, t);
        assert_eq!(snapshots(&a), vec![3]);
        assert_eq!(snapshots(&h.handle(Input::Barrier { channel: 0, barrier: b(4) }, t)), vec![4]);
        h = BarrierHandler::new(CheckpointingMode::ExactlyOnce, AlignmentPolicy::Aligned, 2);
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
            let mut h = BarrierHandler::new(mode, AlignmentPolicy::Aligned, 3);
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
        let mut h = BarrierHandler::new(CheckpointingMode::ExactlyOnce, AlignmentPolicy::Aligned, 2);
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
            let mut h = BarrierHandler::new(mode, AlignmentPolicy::Aligned, channels);
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
                    Input::Tick | Input::Announce { .. } => {}
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
                        other => prop_assert!(false, "aligned policy produced {other:?}"),
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

    /// What an upstream task sends on one channel, in the order it arrives here.
    #[derive(Debug, Clone, PartialEq)]
    enum Wire {
        Buf(u32),
        /// A barrier; `priority` if the upstream sent it unaligned (it overtakes queued buffers
        /// in the receiving gate).
        Barrier {
            id: u64,
            priority: bool,
        },
        Cancel(u64),
        End,
    }

    /// An item in the simulated gate queue: priority items carry the buffers they overtook.
    #[derive(Debug, Clone)]
    struct Queued {
        wire: Wire,
        priority: bool,
        overtook: Vec<u32>,
    }

    /// Inserts a priority item as the gate does: after the last event queued on the channel,
    /// overtaking the buffers behind that point.
    fn insert_priority(q: &mut VecDeque<Queued>, wire: Wire) {
        let at = q.iter().rposition(|x| !matches!(x.wire, Wire::Buf(_))).map_or(0, |i| i + 1);
        let overtook = q.iter().skip(at).filter_map(|x| if let Wire::Buf(b) = x.wire { Some(b) } else { None }).collect();
        q.insert(at, Queued { wire, priority: true, overtook });
    }

    fn wire_script() -> impl Strategy<Value = Vec<(u8, Step, bool)>> {
        // Per checkpoint 1..=3: buffers before it, what the upstream does, whether its barrier
        // travels with priority.
        proptest::collection::vec((0u8..3, step(), any::<bool>()), 3)
    }

    proptest! {
        /// Unaligned and timeout modes against a model of the channels: for every interleaving
        /// of arrivals (priority barriers overtaking queued buffers), takes and timer ticks, with
        /// concurrent checkpoints, cancellation markers and skipped barriers, every checkpoint
        /// that completes here is a consistent cut: the buffers processed before its snapshot
        /// plus its channel state are exactly the buffers sent before its barrier on every
        /// channel, each once. Nothing deadlocks, each checkpoint ends once, snapshots come in
        /// increasing order, and nothing is left pending or blocked at the end.
        #[test]
        fn unaligned_checkpoints_are_consistent_cuts(
            scripts in proptest::collection::vec(wire_script(), 2..=3),
            steps in proptest::collection::vec((0u8..3, 0usize..3), 0..120),
            timeout_mode in any::<bool>(),
        ) {
            let policy = if timeout_mode { AlignmentPolicy::AlignedThenUnaligned(Duration::from_millis(10)) } else { AlignmentPolicy::Unaligned };
            let channels = scripts.len();
            let mut wires: Vec<VecDeque<Wire>> = Vec::new();
            let mut next_buf = 0u32;
            for script in &scripts {
                let mut w = VecDeque::new();
                for (i, (bufs, step, prio)) in script.iter().enumerate() {
                    for _ in 0..*bufs {
                        w.push_back(Wire::Buf(next_buf));
                        next_buf += 1;
                    }
                    let id = i as u64 + 1;
                    // In unaligned mode every barrier travels with priority.
                    let priority = !timeout_mode || *prio;
                    match step {
                        Step::Barrier => w.push_back(Wire::Barrier { id, priority }),
                        Step::Cancel => w.push_back(Wire::Cancel(id)),
                        Step::Skip => {}
                    }
                }
                w.push_back(Wire::Buf(next_buf));
                next_buf += 1;
                w.push_back(Wire::End);
                wires.push(w);
            }
            // The reference: per checkpoint and channel, the buffers sent before its barrier
            // (all of them if the channel never sends it).
            let before = |id: u64, c: usize| -> BTreeSet<u32> {
                let mut set = BTreeSet::new();
                for x in &wires[c] {
                    match x {
                        Wire::Barrier { id: b, .. } if *b == id => break,
                        Wire::Buf(b) => { set.insert(*b); }
                        _ => {}
                    }
                }
                set
            };
            let expected: BTreeMap<u64, BTreeSet<u32>> =
                (1..=3u64).map(|id| (id, (0..channels).flat_map(|c| before(id, c)).collect())).collect();

            let mut h = BarrierHandler::new(CheckpointingMode::ExactlyOnce, policy, channels);
            let mut now = Instant::now();
            let mut queues: Vec<VecDeque<Queued>> = vec![VecDeque::new(); channels];
            let mut blocked = vec![false; channels];
            let mut processed: BTreeSet<u32> = BTreeSet::new();
            let mut at_snapshot: BTreeMap<u64, BTreeSet<u32>> = BTreeMap::new();
            let mut state: BTreeMap<u64, BTreeSet<u32>> = BTreeMap::new();
            let mut over: BTreeSet<u64> = BTreeSet::new();
            let mut last_snapshot = 0u64;
            let mut steps = steps.into_iter();
            loop {
                // 0: an item arrives on a channel; 1: the task takes one; 2: time passes.
                let (kind, c) = match steps.next() {
                    Some(s) => s,
                    None => {
                        // Drain: everything arrives, then the task takes what it can, then ticks.
                        if let Some(c) = (0..channels).find(|c| !wires[*c].is_empty()) {
                            (0, c)
                        } else if let Some(c) = (0..channels).find(|c| queues[*c].front().is_some_and(|q| q.priority || !blocked[*c])) {
                            (1, c)
                        } else if h.next_deadline().is_some() {
                            (2, 0)
                        } else {
                            break;
                        }
                    }
                };
                let c = c % channels;
                match kind {
                    0 => {
                        let Some(w) = wires[c].pop_front() else { continue };
                        let prio = matches!(w, Wire::Barrier { priority: true, .. } | Wire::Cancel(_));
                        let announce = match &w {
                            Wire::Barrier { id, priority: false } => Some(*id),
                            _ => None,
                        };
                        if prio {
                            insert_priority(&mut queues[c], w);
                        } else {
                            queues[c].push_back(Queued { wire: w, priority: false, overtook: Vec::new() });
                        }
                        if let Some(id) = announce {
                            // The gate announces an aligned barrier when it arrives.
                            let actions = h.handle(Input::Announce { channel: c, barrier: b(id) }, now);
                            prop_assert!(actions.is_empty(), "an announcement only starts a timer: {actions:?}");
                        }
                        // Restore the wire for the reference (it was computed up front).
                        continue;
                    }
                    2 => {
                        now += Duration::from_millis(4);
                        let actions = h.handle(Input::Tick, now);
                        apply(&actions, None, &mut Vec::new(), &mut queues, &mut blocked, &processed, &mut at_snapshot, &mut state, &mut over, &mut last_snapshot, &expected)?;
                        continue;
                    }
                    _ => {}
                }
                let Some(head) = queues[c].front() else { continue };
                if blocked[c] && !head.priority {
                    continue;
                }
                let item = queues[c].pop_front().expect("head");
                let input = match item.wire {
                    Wire::Buf(b) => {
                        for id in h.records(c) {
                            prop_assert!(state.entry(id).or_default().insert(b), "buffer {b} recorded twice for {id}");
                        }
                        processed.insert(b);
                        continue;
                    }
                    Wire::Barrier { id, priority } => Input::Barrier { channel: c, barrier: Barrier { unaligned: priority, ..b(id) } },
                    Wire::Cancel(id) => Input::Cancel { channel: c, id },
                    Wire::End => Input::EndOfPartition { channel: c },
                };
                let actions = h.handle(input, now);
                let overtook = item.overtook.clone();
                apply(&actions, Some(c), &mut overtook.clone(), &mut queues, &mut blocked, &processed, &mut at_snapshot, &mut state, &mut over, &mut last_snapshot, &expected)?;
            }
            prop_assert!(queues.iter().all(|q| q.is_empty()), "deadlock: blocked {blocked:?}, queues {queues:?}, pending {:?}", h.pending());
            prop_assert!(h.pending().is_empty(), "pending at the end: {:?}", h.pending());
            prop_assert!(!blocked.iter().any(|b| *b));
        }
    }

    /// Applies the handler's actions to the simulated gate and task, checking each completed
    /// checkpoint against the reference.
    #[allow(clippy::too_many_arguments)]
    fn apply(
        actions: &[Action],
        channel: Option<usize>,
        overtook: &mut Vec<u32>,
        queues: &mut [VecDeque<Queued>],
        blocked: &mut [bool],
        processed: &BTreeSet<u32>,
        at_snapshot: &mut BTreeMap<u64, BTreeSet<u32>>,
        state: &mut BTreeMap<u64, BTreeSet<u32>>,
        over: &mut BTreeSet<u64>,
        last_snapshot: &mut u64,
        expected: &BTreeMap<u64, BTreeSet<u32>>,
    ) -> Result<(), TestCaseError> {
        let check =
            |id: u64, at_snapshot: &BTreeMap<u64, BTreeSet<u32>>, state: &BTreeMap<u64, BTreeSet<u32>>| -> Result<(), TestCaseError> {
                let snap = at_snapshot.get(&id).cloned().unwrap_or_default();
                let st = state.get(&id).cloned().unwrap_or_default();
                prop_assert!(
                    snap.is_disjoint(&st),
                    "checkpoint {id}: buffers both processed before the snapshot and in channel state: {:?}",
                    snap.intersection(&st).collect::<Vec<_>>()
                );
                let cut: BTreeSet<u32> = snap.union(&st).copied().collect();
                prop_assert_eq!(
                    &cut,
                    &expected[&id],
                    "checkpoint {} is not the cut at its barriers (snapshot {:?}, channel state {:?})",
                    id,
                    snap,
                    st
                );
                Ok(())
            };
        for a in actions {
            match a {
                Action::Block(x) => blocked[*x] = true,
                Action::Unblock(x) => blocked[*x] = false,
                Action::Snapshot { barrier, kind, .. } => {
                    prop_assert!(barrier.id > *last_snapshot, "snapshot {} after {}", barrier.id, last_snapshot);
                    *last_snapshot = barrier.id;
                    at_snapshot.insert(barrier.id, processed.clone());
                    if *kind == SnapshotKind::Aligned {
                        prop_assert!(over.insert(barrier.id), "checkpoint {} ended twice", barrier.id);
                        prop_assert!(state.get(&barrier.id).is_none_or(|s| s.is_empty()), "aligned checkpoint with channel state");
                        check(barrier.id, at_snapshot, state)?;
                    }
                }
                Action::Persist { id, channel: c } => {
                    prop_assert_eq!(Some(*c), channel, "persist for another channel");
                    prop_assert!(at_snapshot.contains_key(id), "persist before the snapshot of {}", id);
                    for b in overtook.drain(..) {
                        prop_assert!(state.entry(*id).or_default().insert(b), "buffer {} persisted twice for {}", b, id);
                    }
                }
                Action::Prioritize { id } => {
                    for q in queues.iter_mut() {
                        if let Some(pos) = q.iter().position(|x| x.wire == Wire::Barrier { id: *id, priority: false }) {
                            let item = q.remove(pos).expect("found");
                            let mut rest: VecDeque<Queued> = q.split_off(pos);
                            insert_priority(q, Wire::Barrier { id: *id, priority: false });
                            let _ = item;
                            q.append(&mut rest);
                        }
                    }
                }
                Action::ChannelStateDone { id } => {
                    prop_assert!(over.insert(*id), "checkpoint {} ended twice", id);
                    check(*id, at_snapshot, state)?;
                }
                Action::Abort { id, .. } => {
                    prop_assert!(over.insert(*id), "checkpoint {} ended twice", id);
                    state.remove(id);
                }
            }
        }
        Ok(())
    }
}
