//! The input gate: the receiving end of every input channel of one task.
//!
//! ## Flow control
//! Each channel owns `credits` buffer slots. A buffer occupies a slot from the moment it is
//! queued until the task takes it; taking it returns the credit to the sender: a remote sender
//! gets a credit frame over TCP, a local sender's task is woken once its channel has room again.
//! A remote sender only sends against credits, so a remote channel holds at most `credits`
//! buffers, plus the floating credits it holds: a gate with remote channels has a pool of
//! them (`taskmanager.network.memory.floating-buffers-per-gate`, [`InputGate::with_floating`]),
//! granted to a channel whose sender reports a backlog (the buffers it has queued behind the
//! one that arrived) and given back to the pool as the task takes buffers once the sender
//! reports none, or when the channel ends. Credits go back to a remote sender half a window
//! at a time (one at a time with fewer than 4): fewer `CREDIT` frames, never a stall, since a
//! sender out of credit has its whole window in flight, queued here or taken.
//!
//! A local sender never blocks: it checks [`InputGate::has_room`] before it takes its next
//! input, and may overdraw a channel by what one input batch produces (FLIP-227). Once it
//! found no room and waits, it is woken when the task has taken the channel down to half its
//! credits, so it wakes once per few buffers, not once per buffer. Either
//! way a slow task stops its senders, which stop theirs: backpressure reaches the sources with
//! bounded memory. Events take no slot.
//!
//! ## Priority
//! [`InputGate::push_priority`] puts an event (an unaligned barrier, a cancellation marker)
//! ahead of the buffers queued on its channel: right after the last event already queued, so
//! priority events keep their order among themselves and never overtake an earlier event
//! (an end of partition, an aligned barrier). It records how many buffers it overtook; when the
//! task takes it ([`GatePoll::Priority`]) it gets those buffers (cheap clones) as well: they are
//! the barrier's input channel state, and are still processed normally afterwards. A priority
//! event at the head of its channel is served before any other item, even on a blocked
//! channel. [`InputGate::prioritize_barrier`] turns an aligned barrier already queued into a
//! priority one (the aligned-checkpoint timeout).
//!
//! ## Blocking
//! A channel can be blocked ([`InputGate::set_blocked`]): its buffers stay queued (and keep
//! their credits) until it is unblocked. Aligned barriers rely on this: a blocked channel
//! returns no credit, so its upstream stalls once the credits are used up.
//!
//! ## Threads
//! Only the task thread takes items. Local upstream task threads push with
//! [`InputGate::push`], the network reader with [`InputGate::push_remote`] and
//! [`InputGate::push_priority`], the TaskManager calls [`InputGate::fail`]. One mutex guards
//! every channel's queue. Every push notifies the task's [`Waker`]; taking a buffer that leaves
//! a local channel at half its credits notifies its sender's waker. Credits are returned
//! outside the lock.

use crate::buffer::{Event, Item};
use crate::debloat::{AnnouncedSize, BufferDebloater};
use crate::wake::Waker;
use parking_lot::{Condvar, Mutex};
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};
use weir_core::settings::DebloatConfig;

/// Returns or grants credits to a remote sender: called by the gate, outside its lock, when
/// the task took half a window of buffers from a remote channel, or when the channel is granted
/// floating credits.
pub trait CreditReturn: Send + Sync {
    /// Gives the sender of gate channel `channel` `n` more credits.
    fn return_credit(&self, channel: usize, n: u32);

    /// Tells the sender of gate channel `channel` to cut its buffers at `size` bytes (buffer
    /// debloating, see [`crate::debloat`]).
    fn announce_buffer_size(&self, channel: usize, size: u32);
}

/// One queued item.
#[derive(Debug)]
struct Entry {
    item: Item,
    /// A priority event: it overtook the `overtakes` buffers queued behind it when it arrived.
    priority: Option<usize>,
}

/// One input channel's queue and flags.
#[derive(Default)]
struct ChannelQueue {
    /// Items in arrival order, except priority events (see the module header).
    items: VecDeque<Entry>,
    /// Buffers (not events) in `items`: the credits in use.
    buffers: usize,
    /// The channel is in `ready` (has items and is not blocked).
    in_ready: bool,
    /// Set during barrier alignment: the channel is kept out of `ready`.
    blocked: bool,
    /// The waker of the local task sending on this channel, told when the channel is down to half
    /// its credits.
    sender: Option<Arc<Waker>>,
    /// Floating credits this remote channel holds (granted to its sender, in flight, queued or
    /// taken and not returned yet): its window is `credits + floating`.
    floating: usize,
    /// The backlog the channel's sender reported with its last buffer.
    backlog: usize,
    /// Buffers the task took whose credits have not gone back to the sender yet.
    unreturned: usize,
}

impl ChannelQueue {
    /// Whether the head of the queue is a priority event.
    fn priority_at_head(&self) -> bool {
        self.items.front().is_some_and(|e| e.priority.is_some())
    }
}

/// Everything the gate's mutex guards.
struct GateInner {
    /// One queue per input channel, in gate order (see [`crate::wiring`]).
    channels: Vec<ChannelQueue>,
    /// Channels that have items and are not blocked, each at most once, served round robin (a
    /// channel goes to the back after each item it yields).
    ready: VecDeque<usize>,
    /// Channels whose head is a priority event, blocked or not, in arrival order: served first.
    priority: VecDeque<usize>,
    /// Set once by [`InputGate::fail`] (the first reason wins): every later poll reports it and
    /// pushes fail with it.
    failure: Option<String>,
    /// Ends of partition the task took; when it reaches the channel count the gate is finished.
    ended: usize,
    /// Whether aligned barriers are announced on arrival ([`InputGate::set_announce`]).
    announce: bool,
    /// Aligned barriers that arrived and were not announced to the task yet, with their channel.
    announcements: VecDeque<(usize, crate::buffer::Barrier)>,
    /// Floating credits no channel holds.
    floating_free: usize,
}

/// What [`InputGate::try_poll`] and [`InputGate::poll`] return.
#[derive(Debug)]
pub enum GatePoll {
    /// An item from gate channel `.0`. If it is a buffer, its credit has already been returned.
    Item(usize, Item),
    /// A priority event from `channel`, with the buffers it overtook in that channel's queue
    /// (still queued behind it, and taken normally later).
    Priority { channel: usize, event: Event, overtaken: Vec<Item> },
    /// An aligned barrier arrived on `channel` (it waits in the queue behind buffers): the task
    /// may start its alignment timeout now. The barrier itself is taken later, as usual.
    Announce { channel: usize, barrier: crate::buffer::Barrier },
    /// Nothing to take now (or before the deadline, for [`InputGate::poll`]).
    Timeout,
    /// Every channel has delivered its end of partition.
    Finished,
    /// The gate was failed (a connection was lost, the task is cancelled).
    Failed(String),
}

/// The receiving end of every input channel of one task: per-channel queues bounded by
/// credits, served to the task thread round robin, priority events first. See the module
/// header for flow control, priority, blocking and threads.
pub struct InputGate {
    inner: Mutex<GateInner>,
    /// The receiving task's waker: notified on every push and on failure.
    waker: Arc<Waker>,
    /// Signalled when a slot frees up on a local channel (or the gate fails), for
    /// [`InputGate::push_blocking`] callers (tests and feeders that are not tasks).
    space: Condvar,
    /// Buffers each channel may hold (`taskmanager.network.memory.buffers-per-channel`): what a
    /// remote channel announces to its sender, and what [`InputGate::has_room`] compares with.
    credits: usize,
    /// `Some` for channels fed from the network: returns each taken buffer's credit to the
    /// sender. `None` for local channels: taking a buffer may wake their sender instead.
    remote: Vec<Option<Arc<dyn CreditReturn>>>,
    /// The floating credits the gate was given ([`InputGate::with_floating`]).
    floating: usize,
    /// Buffer debloating, with the segment size: see [`InputGate::with_debloat`].
    debloat: Option<(DebloatConfig, usize)>,
    /// The buffer size last announced to the senders ([`InputGate::announce_buffer_size`]).
    buffer_size: AnnouncedSize,
}

impl InputGate {
    /// A gate with `remote.len()` channels, each granting `credits` buffers, with its own waker.
    pub fn new(credits: usize, remote: Vec<Option<Arc<dyn CreditReturn>>>) -> Self {
        Self::with_waker(credits, remote, Arc::new(Waker::new()))
    }

    /// A gate that notifies `waker` (the receiving task's) whenever something arrives.
    pub fn with_waker(credits: usize, remote: Vec<Option<Arc<dyn CreditReturn>>>, waker: Arc<Waker>) -> Self {
        let n = remote.len();
        Self {
            inner: Mutex::new(GateInner {
                channels: (0..n).map(|_| ChannelQueue::default()).collect(),
                ready: VecDeque::with_capacity(n),
                priority: VecDeque::new(),
                failure: None,
                ended: 0,
                announce: false,
                announcements: VecDeque::new(),
                floating_free: 0,
            }),
            waker,
            space: Condvar::new(),
            credits,
            remote,
            floating: 0,
            debloat: None,
            buffer_size: AnnouncedSize::default(),
        }
    }

    /// Gives the gate a pool of `n` floating credits for its remote channels (see the module
    /// header).
    pub fn with_floating(mut self, n: usize) -> Self {
        self.inner.lock().floating_free = n;
        self.floating = n;
        self
    }

    /// Turns buffer debloating on for this gate: its task sizes its senders' buffers from its
    /// throughput (see [`crate::debloat`]), at most `segment_size` bytes.
    pub fn with_debloat(mut self, config: DebloatConfig, segment_size: usize) -> Self {
        self.debloat = Some((config, segment_size));
        self
    }

    /// The receiving task's debloater, if debloating is on: it sizes buffers for everything
    /// the gate can hold (every channel's credits and the floating pool).
    pub fn debloater(&self, now: Instant, bytes_in: u64) -> Option<BufferDebloater> {
        let (config, segment) = self.debloat?;
        Some(BufferDebloater::new(config, segment, self.num_channels() * self.credits + self.floating, now, bytes_in))
    }

    /// Asks every sender of this gate to cut its buffers at `size` bytes: local senders read it
    /// ([`InputGate::buffer_size`]), remote ones are told over the network.
    pub fn announce_buffer_size(&self, size: usize) {
        self.buffer_size.set(size);
        let size = size.min(u32::MAX as usize) as u32;
        for (channel, remote) in self.remote.iter().enumerate() {
            if let Some(r) = remote {
                r.announce_buffer_size(channel, size);
            }
        }
    }

    /// The buffer size last announced to this gate's senders, if any.
    pub fn buffer_size(&self) -> Option<usize> {
        self.buffer_size.get()
    }

    /// Floating credits no channel holds (for tests and metrics).
    pub fn floating_free(&self) -> usize {
        self.inner.lock().floating_free
    }

    /// The receiving task's waker.
    pub fn waker(&self) -> &Arc<Waker> {
        &self.waker
    }

    /// The number of input channels: one per upstream subtask of each input edge.
    pub fn num_channels(&self) -> usize {
        self.remote.len()
    }

    /// The credits each channel grants.
    pub fn credits_per_channel(&self) -> usize {
        self.credits
    }

    /// Registers the waker of the local task that sends on `channel`: it is notified when the
    /// task has taken the channel down to half its credits, and when the gate fails.
    pub fn set_sender_waker(&self, channel: usize, waker: Arc<Waker>) {
        self.inner.lock().channels[channel].sender = Some(waker);
    }

    /// Announce aligned barriers as they arrive ([`GatePoll::Announce`]): for the
    /// aligned-checkpoint timeout, which counts from a barrier's arrival, not from when the task
    /// reaches it behind the buffers queued before it.
    pub fn set_announce(&self, announce: bool) {
        self.inner.lock().announce = announce;
    }

    /// Whether local `channel` has a free credit: its sender may take its next input.
    pub fn has_room(&self, channel: usize) -> bool {
        let inner = self.inner.lock();
        inner.channels[channel].buffers < self.credits || inner.failure.is_some()
    }

    /// Adds an item at the back of `channel` and keeps `ready` in step: a non-blocked channel
    /// with items is in `ready` exactly once.
    fn enqueue(inner: &mut GateInner, channel: usize, item: Item) {
        let q = &mut inner.channels[channel];
        if item.is_buffer() {
            q.buffers += 1;
        }
        let announce = match &item {
            Item::Event(Event::Barrier(b)) if inner.announce && !b.unaligned => Some(b.clone()),
            _ => None,
        };
        q.items.push_back(Entry { item, priority: None });
        if !q.blocked && !q.in_ready {
            q.in_ready = true;
            inner.ready.push_back(channel);
        }
        if let Some(b) = announce {
            inner.announcements.push_back((channel, b));
        }
    }

    /// Queues an item from a local sender without waiting: the sender checked
    /// [`InputGate::has_room`] before producing it and may overdraw by one input batch's
    /// output. Returns an error if the gate failed (the receiving task is gone).
    pub fn push(&self, channel: usize, item: Item) -> Result<(), String> {
        self.push_inner(channel, item, false)
    }

    /// Queues an item, waiting while the channel has no free credit: for feeders that are not
    /// tasks (tests). Returns an error if the gate failed.
    pub fn push_blocking(&self, channel: usize, item: Item) -> Result<(), String> {
        self.push_inner(channel, item, true)
    }

    /// Queues an item, first waiting for a free credit if `wait` and it is a buffer.
    fn push_inner(&self, channel: usize, item: Item, wait: bool) -> Result<(), String> {
        let mut inner = self.inner.lock();
        if wait && item.is_buffer() {
            while inner.channels[channel].buffers >= self.credits && inner.failure.is_none() {
                self.space.wait(&mut inner);
            }
        }
        if let Some(f) = &inner.failure {
            return Err(f.clone());
        }
        Self::enqueue(&mut inner, channel, item);
        drop(inner);
        self.waker.notify();
        Ok(())
    }

    /// Queues an item from the network: an event, or a buffer whose sender reported no backlog
    /// (see [`InputGate::push_remote_buffer`]).
    pub fn push_remote(&self, channel: usize, item: Item) -> Result<(), String> {
        self.push_remote_buffer(channel, item, 0)
    }

    /// Queues a buffer from the network, whose sender has `backlog` more queued behind it. The
    /// remote sender only sends buffers against credits this gate granted, so this never waits:
    /// a buffer beyond them is an error (the sender ignores flow control; the caller closes its
    /// connection). Grants the channel floating credits, if the pool has some, so that its
    /// sender has room for its backlog and a full window behind it (Flink's rule). Items
    /// arriving after the gate failed are dropped.
    pub fn push_remote_buffer(&self, channel: usize, item: Item, backlog: usize) -> Result<(), String> {
        let mut inner = self.inner.lock();
        if inner.failure.is_some() {
            return Ok(());
        }
        let mut grant = 0;
        if item.is_buffer() {
            let q = &mut inner.channels[channel];
            let window = self.credits + q.floating;
            if q.buffers >= window {
                return Err(format!("a buffer beyond the {window} credits granted"));
            }
            q.backlog = backlog;
            if backlog > 0 {
                // The sender's unused credits, at most (some may be in flight towards us).
                let sender_free = window.saturating_sub(q.buffers + 1 + q.unreturned);
                let want = (self.credits + backlog).saturating_sub(sender_free);
                grant = want.min(inner.floating_free);
                inner.floating_free -= grant;
                inner.channels[channel].floating += grant;
            }
        }
        Self::enqueue(&mut inner, channel, item);
        drop(inner);
        self.waker.notify();
        if grant > 0 {
            if let Some(r) = &self.remote[channel] {
                r.return_credit(channel, grant as u32);
            }
        }
        Ok(())
    }

    /// Puts `event` ahead of the buffers queued on `channel`, right after the last queued event,
    /// and records how many buffers it overtook. Takes no credit. At the head of its channel it
    /// is served before anything else, even if the channel is blocked. Returns how many buffers
    /// it overtook (an error if the gate failed).
    pub fn push_priority(&self, channel: usize, event: Event) -> Result<usize, String> {
        let mut inner = self.inner.lock();
        if let Some(f) = &inner.failure {
            return Err(f.clone());
        }
        let overtakes = Self::insert_priority(&mut inner, channel, Item::Event(event), None);
        drop(inner);
        self.waker.notify();
        Ok(overtakes)
    }

    /// Inserts a priority item in `channel`'s queue after the last event before `limit` (the
    /// queue's end when `None`), returns how many buffers it overtook, and keeps `priority`
    /// and `ready` in step.
    fn insert_priority(inner: &mut GateInner, channel: usize, item: Item, limit: Option<usize>) -> usize {
        let q = &mut inner.channels[channel];
        let end = limit.unwrap_or(q.items.len());
        let at = q.items.range(..end).rposition(|e| !e.item.is_buffer()).map_or(0, |i| i + 1);
        let overtakes = end - at;
        q.items.insert(at, Entry { item, priority: Some(overtakes) });
        if at == 0 && !inner.priority.contains(&channel) {
            inner.priority.push_back(channel);
        }
        let q = &mut inner.channels[channel];
        if !q.blocked && !q.in_ready {
            q.in_ready = true;
            inner.ready.push_back(channel);
        }
        overtakes
    }

    /// The aligned-checkpoint timeout switched checkpoint `id` to unaligned: on every channel
    /// where its barrier still waits behind buffers, it becomes a priority event that overtakes
    /// them (see [`InputGate::push_priority`]). Channels whose barrier has not arrived yet are
    /// not affected.
    pub fn prioritize_barrier(&self, id: u64) {
        let mut inner = self.inner.lock();
        let mut moved = false;
        for ch in 0..inner.channels.len() {
            let q = &mut inner.channels[ch];
            let pos = q.items.iter().position(|e| e.priority.is_none() && matches!(&e.item, Item::Event(Event::Barrier(b)) if b.id == id));
            let Some(pos) = pos else { continue };
            let entry = q.items.remove(pos).expect("found above");
            Self::insert_priority(&mut inner, ch, entry.item, Some(pos));
            moved = true;
        }
        drop(inner);
        if moved {
            self.waker.notify();
        }
    }

    /// Blocks or unblocks a channel. A blocked channel's buffers stay queued, with their credits;
    /// a priority event at its head is still served.
    ///
    /// The task calls this for the barrier handler's `Block` and `Unblock` actions. Blocking
    /// takes the channel out of the ready list; unblocking puts it back at the tail if it has
    /// items, and wakes the task.
    pub fn set_blocked(&self, channel: usize, blocked: bool) {
        let mut inner = self.inner.lock();
        let q = &mut inner.channels[channel];
        q.blocked = blocked;
        if blocked {
            if q.in_ready {
                q.in_ready = false;
                inner.ready.retain(|c| *c != channel);
            }
        } else if !q.items.is_empty() && !q.in_ready {
            q.in_ready = true;
            inner.ready.push_back(channel);
            drop(inner);
            self.waker.notify();
        }
    }

    /// Fails the gate: the task's next poll returns the reason, pushes fail, and local senders
    /// waiting for room are woken. The first reason wins. Called when the task is cancelled or
    /// has ended (so upstream senders are released), and by the network when a connection
    /// feeding a remote channel breaks.
    pub fn fail(&self, reason: &str) {
        let mut inner = self.inner.lock();
        if inner.failure.is_none() {
            inner.failure = Some(reason.to_string());
        }
        let senders: Vec<Arc<Waker>> = inner.channels.iter().filter_map(|q| q.sender.clone()).collect();
        drop(inner);
        self.waker.notify();
        self.space.notify_all();
        for s in senders {
            s.notify();
        }
    }

    /// Takes the next item without waiting. Called by the task thread only.
    ///
    /// Checks in this order: a failure, a barrier announcement, a priority event at the head of
    /// any channel (blocked or not), then — only if `data` (the task's outputs have room) — the next ready channel's
    /// item, round robin; then the end of every channel. Taking a buffer returns its credit
    /// after the lock is released: a `CREDIT` frame for a remote channel, a wake-up of the local
    /// sender once its channel has room again. Taking an end of partition counts its channel as
    /// ended.
    pub fn try_poll(&self, data: bool) -> GatePoll {
        let mut inner = self.inner.lock();
        if let Some(f) = &inner.failure {
            return GatePoll::Failed(f.clone());
        }
        if let Some((channel, barrier)) = inner.announcements.pop_front() {
            return GatePoll::Announce { channel, barrier };
        }
        let ch = match inner.priority.pop_front() {
            Some(ch) => ch,
            None if data => match inner.ready.front() {
                Some(&ch) => ch,
                None => {
                    return if inner.ended == inner.channels.len() { GatePoll::Finished } else { GatePoll::Timeout };
                }
            },
            None => return GatePoll::Timeout,
        };
        let q = &mut inner.channels[ch];
        let entry = q.items.pop_front().expect("a ready channel has items");
        let overtaken: Vec<Item> = match entry.priority {
            Some(n) => q.items.iter().filter(|e| e.item.is_buffer()).take(n).map(|e| e.item.clone()).collect(),
            None => Vec::new(),
        };
        let is_buffer = entry.item.is_buffer();
        if is_buffer {
            q.buffers -= 1;
        }
        let returned = if is_buffer && self.remote[ch].is_some() {
            let GateInner { channels, floating_free, .. } = &mut *inner;
            Self::take_credit(&mut channels[ch], self.credits, floating_free)
        } else {
            0
        };
        let q = &mut inner.channels[ch];
        // A blocked local sender wakes once its channel is down to half its credits, not at the
        // first free one: each wake-up then has room for several buffers (at parallelism 1 the
        // keyed count spent about a tenth of its CPU waking its source buffer by buffer). A
        // sender blocks only with the channel full, so the drain passes this point.
        let drained_to_half = is_buffer && q.buffers == self.credits / 2;
        let sender = if drained_to_half && self.remote[ch].is_none() { q.sender.clone() } else { None };
        let (empty, next_priority, blocked) = (q.items.is_empty(), q.priority_at_head(), q.blocked);
        // Keep the ready list in step: the channel leaves it when empty, and otherwise goes to
        // the back (round robin).
        if let Some(pos) = inner.ready.iter().position(|c| *c == ch) {
            inner.ready.remove(pos);
            if !empty && !blocked {
                inner.ready.push_back(ch);
            }
        }
        if empty {
            inner.channels[ch].in_ready = false;
        }
        if next_priority && !inner.priority.contains(&ch) {
            inner.priority.push_front(ch);
        }
        if matches!(entry.item, Item::Event(Event::EndOfPartition)) {
            inner.ended += 1;
            // Nothing more comes on this channel: its floating credits go back to the pool.
            let floating = std::mem::take(&mut inner.channels[ch].floating);
            inner.floating_free += floating;
        }
        drop(inner);
        if is_buffer {
            match &self.remote[ch] {
                Some(r) if returned > 0 => r.return_credit(ch, returned),
                Some(_) => {}
                None => {
                    self.space.notify_all();
                    if let Some(s) = sender {
                        s.notify();
                    }
                }
            }
        }
        match (entry.priority, entry.item) {
            (Some(_), Item::Event(event)) => GatePoll::Priority { channel: ch, event, overtaken },
            (_, item) => GatePoll::Item(ch, item),
        }
    }

    /// The credit of a buffer the task took from remote channel `q` (window `credits` plus its
    /// floating credits): back to the pool if the channel holds floating credits and its sender
    /// reported no backlog; otherwise counted. The counted credits go back once half the window
    /// (one with fewer than 4) waits, checked after every take, also one that shrank the window:
    /// so what waits is always less than half the window, and a sender out of credit always has
    /// buffers in flight or queued here, whose taking returns its credits. Returns the credits
    /// to send back now.
    fn take_credit(q: &mut ChannelQueue, credits: usize, floating_free: &mut usize) -> u32 {
        if q.floating > 0 && q.backlog == 0 {
            q.floating -= 1;
            *floating_free += 1;
        } else {
            q.unreturned += 1;
        }
        let window = credits + q.floating;
        let batch = if window < 4 { 1 } else { window / 2 };
        if q.unreturned == 0 || q.unreturned < batch {
            return 0;
        }
        std::mem::take(&mut q.unreturned) as u32
    }

    /// Takes the next item, waiting on the gate's waker until `deadline` at the latest: for
    /// tests and simple consumers (a task uses [`InputGate::try_poll`] and its own loop).
    pub fn poll(&self, deadline: Option<Instant>) -> GatePoll {
        loop {
            match self.try_poll(true) {
                GatePoll::Timeout => {
                    if deadline.is_some_and(|d| Instant::now() >= d) {
                        return GatePoll::Timeout;
                    }
                    self.waker.wait(deadline);
                }
                other => return other,
            }
        }
    }

    /// Items (buffers and events) currently queued on `channel` (for tests).
    pub fn queued_items(&self, channel: usize) -> usize {
        self.inner.lock().channels[channel].items.len()
    }

    /// Buffers currently queued on `channel` (for tests and metrics).
    pub fn queued_buffers(&self, channel: usize) -> usize {
        self.inner.lock().channels[channel].buffers
    }

    /// Buffers queued on all channels, and the credit left for more (summed over channels; a
    /// channel overdrawn by its sender counts as none left).
    pub fn queue_and_credit(&self) -> (usize, usize) {
        let inner = self.inner.lock();
        inner.channels.iter().fold((0, 0), |(q, c), ch| (q + ch.buffers, c + (self.credits + ch.floating).saturating_sub(ch.buffers)))
    }
}

/// Polls with a relative timeout (see [`InputGate::poll`]).
pub fn poll_for(gate: &InputGate, timeout: Duration) -> GatePoll {
    gate.poll(Some(Instant::now() + timeout))
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow_array::{Int64Array, RecordBatch};
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn batch(v: i64) -> Item {
        Item::Buffer(RecordBatch::try_from_iter(vec![("v", Arc::new(Int64Array::from(vec![v])) as _)]).unwrap())
    }

    fn value(item: &Item) -> i64 {
        match item {
            Item::Buffer(b) => b.column(0).as_any().downcast_ref::<Int64Array>().unwrap().value(0),
            other => panic!("expected a buffer, got {other:?}"),
        }
    }

    #[test]
    fn local_sender_blocks_when_credits_are_used_up() {
        let gate = Arc::new(InputGate::new(2, vec![None]));
        gate.push_blocking(0, batch(1)).unwrap();
        gate.push_blocking(0, batch(2)).unwrap();
        let sent = Arc::new(AtomicUsize::new(0));
        let (g, s) = (gate.clone(), sent.clone());
        let sender = std::thread::spawn(move || {
            g.push_blocking(0, batch(3)).unwrap();
            s.store(1, Ordering::SeqCst);
        });
        // The third buffer cannot be queued while both credits are taken.
        assert!(matches!(poll_for(&gate, Duration::from_millis(0)), GatePoll::Item(0, _)));
        sender.join().unwrap();
        assert_eq!(sent.load(Ordering::SeqCst), 1);
        assert_eq!(gate.queued_buffers(0), 2);
    }

    #[test]
    fn a_full_local_channel_wakes_its_sender_once_drained_to_half_its_credits() {
        let gate = InputGate::new(4, vec![None]);
        let sender = Arc::new(Waker::new());
        gate.set_sender_waker(0, sender.clone());
        for v in 0..4 {
            gate.push(0, batch(v)).unwrap();
        }
        assert!(!gate.has_room(0));
        let woken = || sender.wait(Some(Instant::now()));
        assert!(matches!(gate.try_poll(true), GatePoll::Item(0, _)));
        assert!(gate.has_room(0), "one credit is free again");
        assert!(!woken(), "but the sender sleeps on until half the credits are free");
        assert!(matches!(gate.try_poll(true), GatePoll::Item(0, _)));
        assert!(woken(), "two of four free: the sender wakes");
        assert!(matches!(gate.try_poll(true), GatePoll::Item(0, _)));
        assert!(!woken(), "once per drain, not per buffer");
    }

    #[test]
    fn sender_stays_blocked_until_the_task_takes_a_buffer() {
        let gate = Arc::new(InputGate::new(1, vec![None]));
        gate.push_blocking(0, batch(1)).unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let g = gate.clone();
        let sender = std::thread::spawn(move || {
            g.push_blocking(0, batch(2)).unwrap();
            tx.send(()).unwrap();
        });
        assert!(rx.recv_timeout(Duration::from_millis(50)).is_err(), "sender must wait for a credit");
        assert_eq!(gate.queued_buffers(0), 1);
        let GatePoll::Item(_, first) = gate.poll(None) else { panic!() };
        assert_eq!(value(&first), 1);
        rx.recv_timeout(Duration::from_secs(30)).expect("sender resumes once a credit is back");
        sender.join().unwrap();
    }

    #[test]
    fn priority_event_overtakes_queued_buffers_and_hands_them_over() {
        let gate = InputGate::new(4, vec![None, None]);
        gate.push_blocking(0, batch(1)).unwrap();
        gate.push_blocking(1, batch(2)).unwrap();
        gate.push_blocking(1, batch(3)).unwrap();
        assert_eq!(gate.push_priority(1, Event::CancelCheckpoint(7)).unwrap(), 2);
        let GatePoll::Priority { channel, event, overtaken } = gate.poll(None) else { panic!() };
        assert_eq!((channel, event), (1, Event::CancelCheckpoint(7)));
        assert_eq!(overtaken.iter().map(value).collect::<Vec<_>>(), vec![2, 3], "the buffers it overtook");
        let order: Vec<i64> = (0..3)
            .map(|_| match gate.poll(None) {
                GatePoll::Item(_, i) => value(&i),
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(order, vec![1, 2, 3], "the overtaken buffers are still processed");
    }

    #[test]
    fn priority_events_keep_their_order_and_never_overtake_an_earlier_event() {
        let gate = InputGate::new(8, vec![None]);
        let barrier = |id| Event::Barrier(crate::buffer::Barrier { unaligned: true, ..crate::buffer::Barrier::new(id, 0) });
        gate.push_blocking(0, batch(1)).unwrap();
        assert_eq!(gate.push_priority(0, barrier(1)).unwrap(), 1);
        gate.push_blocking(0, batch(2)).unwrap();
        // Barrier 2 goes behind barrier 1 and overtakes both buffers.
        assert_eq!(gate.push_priority(0, barrier(2)).unwrap(), 2);
        let mut seen = Vec::new();
        for _ in 0..2 {
            match gate.try_poll(false) {
                GatePoll::Priority { event: Event::Barrier(b), overtaken, .. } => seen.push((b.id, overtaken.len())),
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(seen, vec![(1, 1), (2, 2)]);
    }

    #[test]
    fn a_priority_event_is_served_on_a_blocked_channel() {
        let gate = InputGate::new(4, vec![None]);
        gate.set_blocked(0, true);
        gate.push_blocking(0, batch(1)).unwrap();
        assert!(matches!(gate.try_poll(true), GatePoll::Timeout), "a blocked channel yields no buffer");
        gate.push_priority(0, Event::CancelCheckpoint(3)).unwrap();
        assert!(matches!(gate.try_poll(false), GatePoll::Priority { channel: 0, .. }), "but its priority event, even without output room");
        assert!(matches!(gate.try_poll(true), GatePoll::Timeout));
    }

    #[test]
    fn a_queued_aligned_barrier_can_be_turned_into_a_priority_one() {
        let gate = InputGate::new(8, vec![None, None]);
        gate.push_blocking(0, batch(1)).unwrap();
        gate.push_blocking(0, batch(2)).unwrap();
        gate.push_blocking(0, Item::Event(Event::Barrier(crate::buffer::Barrier::new(5, 0)))).unwrap();
        gate.push_blocking(0, batch(3)).unwrap();
        gate.prioritize_barrier(5);
        let GatePoll::Priority { channel: 0, event: Event::Barrier(b), overtaken } = gate.try_poll(false) else { panic!() };
        assert_eq!((b.id, overtaken.iter().map(value).collect::<Vec<_>>()), (5, vec![1, 2]), "it overtook the buffers before it only");
    }

    #[test]
    fn blocked_channel_keeps_its_items_until_unblocked() {
        let gate = InputGate::new(4, vec![None, None]);
        gate.set_blocked(0, true);
        gate.push_blocking(0, batch(1)).unwrap();
        gate.push_blocking(1, batch(2)).unwrap();
        let GatePoll::Item(ch, _) = gate.poll(None) else { panic!() };
        assert_eq!(ch, 1);
        assert!(matches!(poll_for(&gate, Duration::from_millis(1)), GatePoll::Timeout));
        gate.set_blocked(0, false);
        assert!(matches!(gate.poll(None), GatePoll::Item(0, _)));
    }

    /// Counts the credits the gate hands back, per channel.
    /// Also records the buffer sizes announced, per channel.
    #[derive(Default)]
    struct Counter(AtomicUsize, parking_lot::Mutex<Vec<(usize, u32)>>, parking_lot::Mutex<Vec<(usize, u32)>>);
    impl CreditReturn for Counter {
        fn return_credit(&self, channel: usize, n: u32) {
            self.0.fetch_add(n as usize, Ordering::SeqCst);
            self.1.lock().push((channel, n));
        }

        fn announce_buffer_size(&self, channel: usize, size: u32) {
            self.2.lock().push((channel, size));
        }
    }

    #[test]
    fn a_buffer_size_announcement_reaches_every_sender_local_and_remote() {
        let credits = Arc::new(Counter::default());
        let r: Arc<dyn CreditReturn> = credits.clone();
        let config = DebloatConfig {
            target: Duration::from_secs(1),
            period: Duration::from_millis(200),
            samples: 20,
            threshold_percent: 25,
            min_size: 1024,
        };
        let gate = InputGate::new(4, vec![None, Some(r.clone()), Some(r)]).with_floating(8).with_debloat(config, 32 << 10);
        assert_eq!(gate.buffer_size(), None, "local senders use the segment size until told otherwise");
        let d = gate.debloater(Instant::now(), 0).expect("debloating is on");
        assert_eq!(d.announced(), 32 << 10);
        gate.announce_buffer_size(5000);
        assert_eq!(gate.buffer_size(), Some(5000));
        assert_eq!(*credits.2.lock(), vec![(1, 5000), (2, 5000)], "each remote channel is told once");
        assert!(InputGate::new(4, vec![None]).debloater(Instant::now(), 0).is_none(), "off unless configured");
    }

    impl Counter {
        fn take(&self) -> Vec<(usize, u32)> {
            std::mem::take(&mut *self.1.lock())
        }
    }

    #[test]
    fn remote_credits_go_back_half_a_window_at_a_time() {
        let counter = Arc::new(Counter::default());
        let gate = InputGate::new(4, vec![Some(counter.clone() as Arc<dyn CreditReturn>)]);
        for v in 0..4 {
            gate.push_remote(0, batch(v)).unwrap();
        }
        let err = gate.push_remote(0, batch(4)).unwrap_err();
        assert!(err.contains("beyond the 4 credits"), "{err}");
        assert!(matches!(gate.poll(None), GatePoll::Item(0, _)));
        assert_eq!(counter.take(), vec![], "one taken buffer of a window of 4 waits for the next");
        assert!(matches!(gate.poll(None), GatePoll::Item(0, _)));
        assert_eq!(counter.take(), vec![(0, 2)]);
    }

    #[test]
    fn a_channel_whose_sender_has_a_backlog_gets_floating_credits_and_gives_them_back() {
        let counter = Arc::new(Counter::default());
        let remote = |c: &Arc<Counter>| Some(c.clone() as Arc<dyn CreditReturn>);
        let gate = InputGate::new(2, vec![remote(&counter), remote(&counter)]).with_floating(3);
        // Channel 0's sender has 5 buffers behind this one: it wants its backlog plus a window
        // of credits, and gets the whole pool (its 1 unused exclusive credit counts).
        gate.push_remote_buffer(0, batch(0), 5).unwrap();
        assert_eq!(counter.take(), vec![(0, 3)]);
        assert_eq!(gate.floating_free(), 0);
        // Its window is now 2 + 3: five buffers fit, the sixth is beyond it.
        for (v, backlog) in [(1, 4), (2, 3), (3, 2), (4, 1)] {
            gate.push_remote_buffer(0, batch(v), backlog).unwrap();
        }
        assert!(gate.push_remote_buffer(0, batch(5), 0).unwrap_err().contains("beyond the 5 credits"));
        // A second busy channel finds the pool empty: its exclusive credits still let it go on.
        gate.push_remote_buffer(1, batch(10), 7).unwrap();
        assert_eq!(counter.take(), vec![]);
        // While channel 0's sender reports a backlog, its credits go back to it half a window
        // (2 of 5) at a time; channel 1's (a window of 2) one at a time. Round robin: 0, 1, 0.
        for ch in [0, 1, 0] {
            assert!(matches!(gate.poll(None), GatePoll::Item(c, _) if c == ch));
        }
        assert_eq!(counter.take(), vec![(1, 1), (0, 2)]);
        // Its sender caught up: the next buffer reports no backlog, and from then on channel 0's
        // floating credits go back to the pool as its buffers are taken, not to the sender.
        gate.push_remote_buffer(0, batch(6), 0).unwrap();
        for _ in 0..3 {
            assert!(matches!(gate.poll(None), GatePoll::Item(0, _)));
        }
        assert_eq!(gate.floating_free(), 3, "the pool has its floating credits back");
        assert_eq!(counter.take(), vec![], "none went back to the sender");
        // The channel's window is its 2 exclusive credits again: they go back one at a time.
        assert!(matches!(gate.poll(None), GatePoll::Item(0, _)));
        assert_eq!(counter.take(), vec![(0, 1)]);
        // Now channel 1's sender reports a backlog and gets the pool.
        gate.push_remote_buffer(1, batch(11), 2).unwrap();
        assert_eq!(counter.take(), vec![(1, 3)]);
    }

    proptest::proptest! {
        /// A remote sender that sends only against its credits, with any backlogs it reports,
        /// and a task taking buffers at any pace: whenever the gate has nothing queued on the
        /// channel, the sender has a credit (nothing stalls), and no buffer is ever beyond the
        /// credits. Floating credits that a shrinking window gives back to the pool still let
        /// the credits waiting to be returned go back.
        #[test]
        fn a_remote_sender_never_stalls_whatever_its_backlogs(
            ops in proptest::collection::vec((proptest::bool::ANY, 0usize..12), 1..300),
            exclusive in 1usize..6,
            floating in 0usize..12,
        ) {
            let counter = Arc::new(Counter::default());
            let gate = InputGate::new(exclusive, vec![Some(counter.clone() as Arc<dyn CreditReturn>)]).with_floating(floating);
            let mut sender_credits = exclusive as u64;
            for (v, (push, backlog)) in ops.into_iter().enumerate() {
                if push && sender_credits > 0 {
                    sender_credits -= 1;
                    gate.push_remote_buffer(0, batch(v as i64), backlog).unwrap();
                } else if gate.queued_buffers(0) > 0 {
                    proptest::prop_assert!(matches!(gate.try_poll(true), GatePoll::Item(0, _)));
                }
                sender_credits += counter.take().iter().map(|(_, n)| u64::from(*n)).sum::<u64>();
                proptest::prop_assert!(
                    sender_credits > 0 || gate.queued_buffers(0) > 0,
                    "the sender is out of credit and the gate has nothing to take"
                );
            }
        }
    }

    #[test]
    fn a_channel_that_ends_gives_its_floating_credits_back() {
        let counter = Arc::new(Counter::default());
        let gate = InputGate::new(2, vec![Some(counter.clone() as Arc<dyn CreditReturn>)]).with_floating(4);
        gate.push_remote_buffer(0, batch(0), 3).unwrap();
        assert_eq!(gate.floating_free(), 0);
        gate.push_remote(0, Item::Event(Event::EndOfPartition)).unwrap();
        assert!(matches!(gate.poll(None), GatePoll::Item(0, _)));
        assert!(matches!(gate.poll(None), GatePoll::Item(0, Item::Event(Event::EndOfPartition))));
        assert_eq!(gate.floating_free(), 4, "credits the sender never used are not lost to the gate");
    }

    #[test]
    fn remote_credits_are_returned_per_buffer_taken() {
        let counter = Arc::new(Counter::default());
        let gate = InputGate::new(2, vec![Some(counter.clone() as Arc<dyn CreditReturn>)]);
        gate.push_remote(0, batch(1)).unwrap();
        gate.push_remote(0, Item::Event(Event::EndOfPartition)).unwrap();
        assert!(matches!(gate.poll(None), GatePoll::Item(0, _)));
        assert!(matches!(gate.poll(None), GatePoll::Item(0, Item::Event(_))));
        assert_eq!(counter.0.load(Ordering::SeqCst), 1, "events take no credit");
        assert!(matches!(gate.poll(None), GatePoll::Finished));
    }

    #[test]
    fn failing_the_gate_releases_blocked_senders() {
        let gate = Arc::new(InputGate::new(1, vec![None]));
        gate.push_blocking(0, batch(1)).unwrap();
        let g = gate.clone();
        let sender = std::thread::spawn(move || g.push_blocking(0, batch(2)));
        gate.fail("cancelled");
        assert_eq!(sender.join().unwrap(), Err("cancelled".to_string()));
        assert!(matches!(gate.poll(None), GatePoll::Failed(_)));
    }
}
