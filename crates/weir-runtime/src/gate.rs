//! The input gate: the receiving end of every input channel of one task.
//!
//! ## Flow control
//! Each channel owns `credits` buffer slots. A buffer occupies a slot from the moment it is
//! queued until the task takes it; taking it returns the credit to the sender: a local sender
//! blocked on a full channel wakes up, a remote sender gets a credit frame over TCP. So at most
//! `credits` buffers per channel sit here, and a slow task stops its senders, which stop
//! theirs: backpressure reaches the sources with bounded memory. Events take no slot.
//!
//! ## Priority
//! [`InputGate::push_priority`] puts an event at the head of its channel's queue and the
//! channel at the head of the gate's ready list, so it is the next thing the task sees, ahead
//! of every queued buffer. It is meant for unaligned checkpoint barriers, which are not built
//! yet: nothing in the runtime calls it, and events from the network arrive through
//! [`InputGate::push_remote`], in order. On a blocked channel a priority event waits at the
//! head of the channel until it is unblocked (the design wants it to become ready at once).
//!
//! ## Blocking
//! A channel can be blocked ([`InputGate::set_blocked`]): its items stay queued (and keep
//! their credits) until it is unblocked. Barrier alignment relies on this: a blocked channel
//! returns no credit, so its upstream stalls once the credits are used up.
//!
//! ## Threads
//! Only the task thread polls. Local upstream task threads push with
//! [`InputGate::push_blocking`], the network reader with [`InputGate::push_remote`], the
//! TaskManager calls [`InputGate::fail`] and [`InputGate::interrupt`]. One mutex guards every
//! channel's queue; two condvars wake the task (`data`) and local senders (`space`). Credits
//! are returned outside the lock.

use crate::buffer::{Event, Item};
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

/// One input channel's queue and flags.
#[derive(Default)]
struct ChannelQueue {
    /// Items in arrival order, except priority events, which go to the front.
    items: VecDeque<Item>,
    /// Buffers (not events) in `items`: the credits in use; at most the gate's `credits` for a
    /// local channel.
    buffers: usize,
    /// The channel is in `ready` (has items and is not blocked).
    in_ready: bool,
    /// Set during barrier alignment: the channel is kept out of `ready`.
    blocked: bool,
    /// The task took this channel's end of partition. Recorded, but nothing reads it:
    /// `GateInner::ended` counts ended channels, without checking this flag.
    ended: bool,
}

/// Everything the gate's mutex guards.
struct GateInner {
    /// One queue per input channel, in gate order (see [`crate::wiring`]).
    channels: Vec<ChannelQueue>,
    /// Channels that have items and are not blocked, each at most once, in the order the task is
    /// served: round robin (a channel goes to the back after each item it yields), except that a
    /// priority push moves its channel to the front.
    ready: VecDeque<usize>,
    /// Set once by [`InputGate::fail`] (the first reason wins): every later poll reports it and
    /// local senders stop waiting.
    failure: Option<String>,
    /// Ends of partition the task took; when it reaches the channel count the gate is finished.
    /// A channel that (wrongly) sent two would be counted twice.
    ended: usize,
    /// Set by [`InputGate::interrupt`], cleared by the poll that reports it.
    interrupted: bool,
}

/// What [`InputGate::poll`] returns.
#[derive(Debug)]
pub enum GatePoll {
    /// An item from gate channel `.0`. If it is a buffer, its credit has already been returned.
    Item(usize, Item),
    /// Nothing arrived before the deadline.
    Timeout,
    /// Every channel has delivered its end of partition.
    Finished,
    /// The gate was failed (a connection was lost, the task is cancelled).
    Failed(String),
    /// [`InputGate::interrupt`] was called: the task has a command to look at.
    Interrupted,
}

/// The receiving end of every input channel of one task: per-channel queues bounded by
/// credits, served to the task thread round robin. See the module header for flow control,
/// priority, blocking and threads.
pub struct InputGate {
    inner: Mutex<GateInner>,
    /// Signalled when an item becomes available to the task (or the gate fails).
    data: Condvar,
    /// Signalled when a slot frees up on a local channel (or the gate fails).
    space: Condvar,
    /// Buffers each channel may hold (`taskmanager.network.memory.buffers-per-channel`): what a
    /// remote channel announces to its sender, and what bounds a local sender.
    credits: usize,
    /// `Some` for channels fed from the network: returns each taken buffer's credit to the
    /// sender. `None` for local channels: taking a buffer wakes `space` instead.
    remote: Vec<Option<Arc<dyn CreditReturn>>>,
}

impl InputGate {
    /// A gate with `remote.len()` channels, each granting `credits` buffers.
    pub fn new(credits: usize, remote: Vec<Option<Arc<dyn CreditReturn>>>) -> Self {
        let n = remote.len();
        Self {
            inner: Mutex::new(GateInner {
                channels: (0..n).map(|_| ChannelQueue::default()).collect(),
                ready: VecDeque::with_capacity(n),
                failure: None,
                ended: 0,
                interrupted: false,
            }),
            data: Condvar::new(),
            space: Condvar::new(),
            credits,
            remote,
        }
    }

    /// The number of input channels: one per upstream subtask of each input edge.
    pub fn num_channels(&self) -> usize {
        self.remote.len()
    }

    /// The credits each channel grants.
    pub fn credits_per_channel(&self) -> usize {
        self.credits
    }

    /// Adds an item at the back (or, for `front`, the head) of `channel` and keeps `ready` in
    /// step: a non-blocked channel with items is in `ready` exactly once, and a front push moves
    /// it to the head of `ready`. A blocked channel stays out of `ready`, even for a front push.
    /// Does not wait and does not check credits: callers do.
    fn enqueue(inner: &mut GateInner, channel: usize, item: Item, front: bool) {
        let q = &mut inner.channels[channel];
        if item.is_buffer() {
            q.buffers += 1;
        }
        if front {
            q.items.push_front(item);
        } else {
            q.items.push_back(item);
        }
        if !q.blocked {
            if front {
                if q.in_ready {
                    inner.ready.retain(|c| *c != channel);
                }
                inner.ready.push_front(channel);
                inner.channels[channel].in_ready = true;
            } else if !q.in_ready {
                q.in_ready = true;
                inner.ready.push_back(channel);
            }
        }
    }

    /// Queues an item from a local sender, waiting while the channel has no free credit.
    /// Returns an error if the gate failed (the receiving task is gone).
    ///
    /// This is where a local upstream task blocks under backpressure, on its own thread. Events
    /// never wait. A waiting sender wakes when the task takes a buffer from any local channel of
    /// this gate (the condvar is per gate), rechecks its own channel, or when the gate fails.
    pub fn push_blocking(&self, channel: usize, item: Item) -> Result<(), String> {
        let mut inner = self.inner.lock();
        if item.is_buffer() {
            while inner.channels[channel].buffers >= self.credits && inner.failure.is_none() {
                self.space.wait(&mut inner);
            }
        }
        if let Some(f) = &inner.failure {
            return Err(f.clone());
        }
        Self::enqueue(&mut inner, channel, item, false);
        drop(inner);
        self.data.notify_one();
        Ok(())
    }

    /// Queues an item from the network. The remote sender only sends buffers against credits
    /// this gate granted, so this never waits. The count is not checked: the gate trusts the
    /// sender's accounting. Items arriving after the gate failed are dropped.
    pub fn push_remote(&self, channel: usize, item: Item) {
        let mut inner = self.inner.lock();
        if inner.failure.is_some() {
            return;
        }
        Self::enqueue(&mut inner, channel, item, false);
        drop(inner);
        self.data.notify_one();
    }

    /// Puts an event at the head of `channel`, ahead of every queued buffer, and the channel at
    /// the head of the ready list. Takes no credit. Several priority events on one channel come
    /// out newest first. On a blocked channel the event waits for the unblock. Unused outside
    /// the tests so far.
    pub fn push_priority(&self, channel: usize, event: Event) {
        let mut inner = self.inner.lock();
        Self::enqueue(&mut inner, channel, Item::Event(event), true);
        drop(inner);
        self.data.notify_one();
    }

    /// Blocks or unblocks a channel. A blocked channel's items stay queued, with their credits.
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
            self.data.notify_one();
        }
    }

    /// Fails the gate: the task's next poll returns the reason and local senders stop waiting.
    /// The first reason wins. Called when the task is cancelled or has ended (so upstream
    /// senders blocked on it are released), and by the network when a connection feeding a
    /// remote channel breaks.
    pub fn fail(&self, reason: &str) {
        let mut inner = self.inner.lock();
        if inner.failure.is_none() {
            inner.failure = Some(reason.to_string());
        }
        drop(inner);
        self.data.notify_all();
        self.space.notify_all();
    }

    /// Wakes the task's next (or current) poll with [`GatePoll::Interrupted`]. The TaskManager
    /// calls it with every command, so a task waiting for input looks at its commands at once.
    pub fn interrupt(&self) {
        self.inner.lock().interrupted = true;
        self.data.notify_all();
    }

    /// Takes the next item, waiting until `deadline` at the latest. Called by the task thread
    /// only; the task passes its partition's next flush deadline.
    ///
    /// Checks in this order: a failure, a pending interrupt, a ready item, the end of every
    /// channel, then waits. So a failure or an interrupt is reported ahead of queued items, and
    /// `Finished` comes only once every channel's end of partition was taken. Taking a buffer
    /// returns its credit after the lock is released: a `CREDIT` frame for a remote channel,
    /// a wake-up of blocked local senders otherwise. Taking an end of partition counts its
    /// channel as ended.
    pub fn poll(&self, deadline: Option<Instant>) -> GatePoll {
        let mut inner = self.inner.lock();
        loop {
            if let Some(f) = &inner.failure {
                return GatePoll::Failed(f.clone());
            }
            if inner.interrupted {
                inner.interrupted = false;
                return GatePoll::Interrupted;
            }
            if let Some(ch) = inner.ready.pop_front() {
                let q = &mut inner.channels[ch];
                let item = q.items.pop_front().expect("a ready channel has items");
                if q.items.is_empty() {
                    q.in_ready = false;
                } else {
                    inner.ready.push_back(ch);
                }
                let q = &mut inner.channels[ch];
                if item.is_buffer() {
                    q.buffers -= 1;
                }
                if matches!(item, Item::Event(Event::EndOfPartition)) {
                    q.ended = true;
                    inner.ended += 1;
                }
                drop(inner);
                if item.is_buffer() {
                    match &self.remote[ch] {
                        Some(r) => r.return_credit(ch),
                        None => {
                            self.space.notify_all();
                        }
                    }
                }
                return GatePoll::Item(ch, item);
            }
            if inner.ended == inner.channels.len() {
                return GatePoll::Finished;
            }
            match deadline {
                None => self.data.wait(&mut inner),
                Some(d) => {
                    if (Instant::now() >= d || self.data.wait_until(&mut inner, d).timed_out())
                        && inner.ready.is_empty()
                        && inner.failure.is_none()
                        && !inner.interrupted
                    {
                        return GatePoll::Timeout;
                    }
                }
            }
        }
    }

    /// Buffers currently queued on `channel` (for tests and metrics).
    pub fn queued_buffers(&self, channel: usize) -> usize {
        self.inner.lock().channels[channel].buffers
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
    fn priority_event_overtakes_queued_buffers() {
        let gate = InputGate::new(4, vec![None, None]);
        gate.push_blocking(0, batch(1)).unwrap();
        gate.push_blocking(1, batch(2)).unwrap();
        gate.push_blocking(1, batch(3)).unwrap();
        gate.push_priority(1, Event::EndOfPartition);
        let GatePoll::Item(ch, item) = gate.poll(None) else { panic!() };
        assert_eq!((ch, item.is_buffer()), (1, false));
        let order: Vec<i64> = (0..3)
            .map(|_| match gate.poll(None) {
                GatePoll::Item(_, i) => value(&i),
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(order, vec![1, 2, 3]);
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
        gate.push_remote(0, batch(1));
        gate.push_remote(0, Item::Event(Event::EndOfPartition));
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
