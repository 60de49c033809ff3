//! The input gate: the receiving end of every input channel of one task.
//!
//! ## Flow control
//! Each channel owns `credits` buffer slots. A buffer occupies a slot from the moment it is
//! queued until the task takes it; taking it returns the credit to the sender: a remote sender
//! gets a credit frame over TCP, a local sender's task is woken once its channel has room again.
//! A remote sender only sends against credits, so a remote channel holds at most `credits`
//! buffers. A local sender never blocks: it checks [`InputGate::has_room`] before it takes its
//! next input, and may overdraw a channel by what one input batch produces (FLIP-227). Either
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
//! every channel's queue. Every push notifies the task's [`Waker`]; taking a buffer that gives
//! a local channel room again notifies its sender's waker. Credits are returned outside the
//! lock.

use crate::buffer::{Event, Item};
use crate::wake::Waker;
use parking_lot::{Condvar, Mutex};
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Returns credits to a remote sender. Called by the gate when a buffer from a remote channel
/// was taken by the task.
pub trait CreditReturn: Send + Sync {
    /// Credits one buffer back for gate channel `channel`. Called once per buffer the task took
    /// (never for events), outside the gate's lock.
    fn return_credit(&self, channel: usize);
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
    /// The waker of the local task sending on this channel, told when the channel regains room.
    sender: Option<Arc<Waker>>,
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
            }),
            waker,
            space: Condvar::new(),
            credits,
            remote,
        }
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
    /// channel regains room, and when the gate fails.
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

    /// Queues an item from the network. The remote sender only sends buffers against credits
    /// this gate granted, so this never waits: a buffer beyond them is an error (the sender
    /// ignores flow control; the caller closes its connection). Items arriving after the gate
    /// failed are dropped.
    pub fn push_remote(&self, channel: usize, item: Item) -> Result<(), String> {
        let mut inner = self.inner.lock();
        if inner.failure.is_some() {
            return Ok(());
        }
        if item.is_buffer() && inner.channels[channel].buffers >= self.credits {
            return Err(format!("a buffer beyond the {} credits granted", self.credits));
        }
        Self::enqueue(&mut inner, channel, item);
        drop(inner);
        self.waker.notify();
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
        let regained_room = is_buffer && q.buffers + 1 == self.credits;
        let sender = if regained_room && self.remote[ch].is_none() { q.sender.clone() } else { None };
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
        }
        drop(inner);
        if is_buffer {
            match &self.remote[ch] {
                Some(r) => r.return_credit(ch),
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
        inner.channels.iter().fold((0, 0), |(q, c), ch| (q + ch.buffers, c + self.credits.saturating_sub(ch.buffers)))
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

    #[test]
    fn remote_credits_are_returned_per_buffer_taken() {
        struct Counter(AtomicUsize);
        impl CreditReturn for Counter {
            fn return_credit(&self, _channel: usize) {
                self.0.fetch_add(1, Ordering::SeqCst);
            }
        }
        let counter = Arc::new(Counter(AtomicUsize::new(0)));
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
