//! The TCP data exchange between TaskManagers.
//!
//! ## Connections
//! One TCP connection per pair of TaskManagers carries every logical channel between them, in
//! both directions. To make "one per pair" hold without a race, only the TaskManager with the
//! smaller id dials; the other waits for it. A [`PeerLink`] is the logical link to one peer: it
//! exists from the moment a channel needs it, queues work until the socket is up, and then
//! runs one writer and one reader task on it.
//!
//! ## Frames
//! `u32 length | u8 kind | body`, big-endian. Kinds: `HELLO` (the dialer's TaskManager id),
//! `BUFFER` (channel id + Arrow IPC batch), `EVENT` (channel id + event), `ANNOUNCE` and
//! `CREDIT` (channel id + u32 count).
//!
//! ## Credits
//! A receiving channel announces its credits (free buffers) with an `ANNOUNCE` frame when it is
//! registered, and returns one with a `CREDIT` frame each time its task takes a buffer. The
//! sender's [`RemoteSubpartition`] sends nothing before that announcement (so nothing arrives
//! for a channel that does not exist yet), sends a buffer only against a credit, and sends
//! events at any time; events pushed with priority go ahead of queued buffers. Its task blocks
//! once `taskmanager.network.sender-queue-buffers` buffers wait for credit: that is
//! backpressure.
//!
//! The announcement may arrive before the sending task is deployed, so it creates the sending
//! end; a returned credit never does. Once its end of partition went out, a subpartition is
//! dropped, and the credits the receiver still returns for the buffers it takes afterwards are
//! ignored: they cannot bring back a channel that would never end.
//!
//! A broken connection fails every channel that used it, on both ends, naming the peer.

use crate::buffer::{encode_batch, ChannelId, Event, Item};
use crate::gate::{CreditReturn, InputGate};
use bytes::{Buf, BufMut, Bytes, BytesMut};
use parking_lot::{Condvar, Mutex};
use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufWriter};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;

const HELLO: u8 = 0;
const BUFFER: u8 = 1;
const EVENT: u8 = 2;
const CREDIT: u8 = 3;
const ANNOUNCE: u8 = 4;
/// Upper bound on one frame, against corrupt length prefixes.
const MAX_FRAME: usize = 256 << 20;

#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error("cannot bind the data port {addr}: {source}")]
    Bind { addr: String, source: std::io::Error },
}

struct InputRegistration {
    gate: Arc<InputGate>,
    index: usize,
}

/// A TaskManager's data-plane endpoint: its listener, its links to peers, and the channels
/// registered on them.
pub struct NetworkEnvironment {
    tm_id: String,
    local_addr: SocketAddr,
    sender_queue_buffers: usize,
    peers: Mutex<HashMap<String, Arc<PeerLink>>>,
    inputs: Mutex<HashMap<ChannelId, InputRegistration>>,
    outputs: Mutex<HashMap<ChannelId, Arc<RemoteSubpartition>>>,
    runtime: tokio::runtime::Handle,
}

impl NetworkEnvironment {
    /// Binds the data port and starts accepting peers. Must be called inside a tokio runtime.
    pub async fn start(tm_id: &str, bind: &str, sender_queue_buffers: usize) -> Result<Arc<Self>, NetError> {
        let listener = TcpListener::bind(bind).await.map_err(|source| NetError::Bind { addr: bind.to_string(), source })?;
        let local_addr = listener.local_addr().map_err(|source| NetError::Bind { addr: bind.to_string(), source })?;
        let env = Arc::new(Self {
            tm_id: tm_id.to_string(),
            local_addr,
            sender_queue_buffers,
            peers: Mutex::new(HashMap::new()),
            inputs: Mutex::new(HashMap::new()),
            outputs: Mutex::new(HashMap::new()),
            runtime: tokio::runtime::Handle::current(),
        });
        let weak = Arc::downgrade(&env);
        tokio::spawn(async move {
            loop {
                let Ok((socket, _)) = listener.accept().await else { continue };
                let Some(env) = weak.upgrade() else { return };
                tokio::spawn(async move { env.accept(socket).await });
            }
        });
        Ok(env)
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    pub fn tm_id(&self) -> &str {
        &self.tm_id
    }

    async fn accept(self: Arc<Self>, mut socket: TcpStream) {
        let _ = socket.set_nodelay(true);
        let hello = match tokio::time::timeout(Duration::from_secs(30), read_frame(&mut socket)).await {
            Ok(Ok((HELLO, body))) => body,
            _ => return,
        };
        let Ok(peer_id) = std::str::from_utf8(&hello) else { return };
        let link = self.link(peer_id, None);
        link.attach(self.clone(), socket);
    }

    /// The link to `peer`, created (and, if this side dials, connected) on first use.
    pub fn link(self: &Arc<Self>, peer: &str, peer_addr: Option<&str>) -> Arc<PeerLink> {
        let mut peers = self.peers.lock();
        if let Some(l) = peers.get(peer) {
            if !l.is_broken() {
                return l.clone();
            }
        }
        let link = Arc::new(PeerLink { peer: peer.to_string(), state: Mutex::new(LinkState::default()), notify: Notify::new() });
        peers.insert(peer.to_string(), link.clone());
        drop(peers);
        if self.tm_id.as_str() < peer {
            if let Some(addr) = peer_addr {
                let (env, link, addr) = (self.clone(), link.clone(), addr.to_string());
                self.runtime.spawn(async move { link.dial(env, addr).await });
            }
        }
        link
    }

    /// Registers input channel `index` of `gate`, fed by `peer`, and announces its credits.
    pub fn register_input(self: &Arc<Self>, id: ChannelId, gate: Arc<InputGate>, index: usize, peer: &str, peer_addr: &str) {
        let credits = gate.credits_per_channel() as u32;
        self.inputs.lock().insert(id, InputRegistration { gate, index });
        let link = self.link(peer, Some(peer_addr));
        link.push_credit(ANNOUNCE, id, credits);
    }

    /// The credit-return handle for remote input channels `ids` (indexed by channel) of a gate.
    /// `None` entries are local channels, whose credits never travel.
    pub fn credit_return(self: &Arc<Self>, ids: Vec<Option<(ChannelId, String, String)>>) -> Arc<dyn CreditReturn> {
        let links = ids.iter().map(|c| c.as_ref().map(|(id, peer, addr)| (*id, self.link(peer, Some(addr))))).collect();
        Arc::new(RemoteCredits { links })
    }

    /// The sending end of channel `id` towards `peer`.
    pub fn register_output(self: &Arc<Self>, id: ChannelId, peer: &str, peer_addr: &str) -> Arc<RemoteSubpartition> {
        let link = self.link(peer, Some(peer_addr));
        self.output(id, &link)
    }

    fn output(&self, id: ChannelId, link: &Arc<PeerLink>) -> Arc<RemoteSubpartition> {
        let mut outputs = self.outputs.lock();
        let sub = outputs
            .entry(id)
            .or_insert_with(|| {
                Arc::new(RemoteSubpartition {
                    id,
                    state: Mutex::new(SubState { capacity: self.sender_queue_buffers, ..Default::default() }),
                    space: Condvar::new(),
                    link: link.clone(),
                })
            })
            .clone();
        drop(outputs);
        link.add_subpartition(&sub);
        sub
    }

    /// Drops every channel of one job attempt: queued data is discarded and blocked senders and
    /// receivers are released with `reason`.
    pub fn release_job(&self, job: u128, attempt: u32, reason: &str) {
        let subs: Vec<_> = {
            let mut outputs = self.outputs.lock();
            let ids: Vec<_> = outputs.keys().filter(|k| k.job == job && k.attempt == attempt).copied().collect();
            ids.iter().filter_map(|id| outputs.remove(id)).collect()
        };
        for s in subs {
            s.fail(reason);
            s.link.remove_subpartition(&s.id);
        }
        self.release_inputs(job, attempt);
    }

    /// Unregisters the input channels of a job attempt that ended normally. Its outputs stay
    /// until their end of partition has been sent.
    pub fn release_inputs(&self, job: u128, attempt: u32) {
        let of_attempt = |k: &ChannelId| k.job == job && k.attempt == attempt;
        self.inputs.lock().retain(|k, _| !of_attempt(k));
        let links: Vec<_> = self.peers.lock().values().cloned().collect();
        for link in links {
            link.state.lock().input_channels.retain(|k| !of_attempt(k));
        }
    }

    fn on_link_broken(&self, link: &PeerLink, reason: &str) {
        {
            let mut peers = self.peers.lock();
            if peers.get(&link.peer).is_some_and(|l| std::ptr::eq(l.as_ref(), link)) {
                peers.remove(&link.peer);
            }
        }
        let subs: Vec<_> = link.state.lock().subs.drain(..).collect();
        for s in &subs {
            s.fail(reason);
            self.outputs.lock().remove(&s.id);
        }
        // Inputs fed by this peer: fail their gates.
        let peer_channels = link.state.lock().input_channels.clone();
        let inputs = self.inputs.lock();
        for id in peer_channels {
            if let Some(reg) = inputs.get(&id) {
                reg.gate.fail(reason);
            }
        }
    }

    fn deliver(&self, id: ChannelId, item: Item) {
        if let Some(reg) = self.inputs.lock().get(&id) {
            reg.gate.push_remote(reg.index, item);
        }
        // A channel that is not registered belongs to a cancelled or finished task: dropped.
    }
}

#[derive(Default)]
struct LinkState {
    /// Credit frames to send: (`ANNOUNCE` or `CREDIT`, channel, count).
    credits: Vec<(u8, ChannelId, u32)>,
    subs: Vec<Arc<RemoteSubpartition>>,
    /// Input channels whose credits went out on this link (their data comes back on it).
    input_channels: Vec<ChannelId>,
    broken: Option<String>,
    attached: bool,
}

/// The logical link to one peer TaskManager.
pub struct PeerLink {
    peer: String,
    state: Mutex<LinkState>,
    /// Wakes the writer: new credits to send, or a subpartition has something sendable.
    notify: Notify,
}

impl PeerLink {
    fn is_broken(&self) -> bool {
        self.state.lock().broken.is_some()
    }

    /// Queues a credit frame: `ANNOUNCE` for a newly registered input channel, `CREDIT` for a
    /// returned one.
    fn push_credit(&self, kind: u8, id: ChannelId, n: u32) {
        let mut st = self.state.lock();
        if kind == ANNOUNCE && !st.input_channels.contains(&id) {
            st.input_channels.push(id);
        }
        st.credits.push((kind, id, n));
        drop(st);
        self.notify.notify_one();
    }

    fn add_subpartition(&self, sub: &Arc<RemoteSubpartition>) {
        let mut st = self.state.lock();
        if let Some(reason) = &st.broken {
            sub.fail(reason);
            return;
        }
        if !st.subs.iter().any(|s| Arc::ptr_eq(s, sub)) {
            st.subs.push(sub.clone());
        }
    }

    fn remove_subpartition(&self, id: &ChannelId) {
        self.state.lock().subs.retain(|s| &s.id != id);
    }

    async fn dial(self: Arc<Self>, env: Arc<NetworkEnvironment>, addr: String) {
        let mut delay = Duration::from_millis(50);
        for attempt in 0..8 {
            match TcpStream::connect(&addr).await {
                Ok(mut socket) => {
                    let _ = socket.set_nodelay(true);
                    let mut frame = BytesMut::new();
                    put_frame(&mut frame, HELLO, env.tm_id.as_bytes());
                    if socket.write_all(&frame).await.is_ok() {
                        self.attach(env, socket);
                        return;
                    }
                }
                Err(e) => tracing::debug!(peer = %self.peer, %addr, attempt, "dial failed: {e}"),
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_secs(1));
        }
        let reason = format!("cannot open a data connection to TaskManager {} at {addr}", self.peer);
        self.break_link(&env, &reason);
    }

    fn break_link(&self, env: &NetworkEnvironment, reason: &str) {
        {
            let mut st = self.state.lock();
            if st.broken.is_some() {
                return;
            }
            st.broken = Some(reason.to_string());
        }
        tracing::warn!(peer = %self.peer, "{reason}");
        env.on_link_broken(self, reason);
        self.notify.notify_one();
    }

    fn attach(self: Arc<Self>, env: Arc<NetworkEnvironment>, socket: TcpStream) {
        {
            let mut st = self.state.lock();
            if st.attached || st.broken.is_some() {
                return; // one connection per pair: a duplicate is dropped
            }
            st.attached = true;
        }
        let (read, write) = socket.into_split();
        self.notify_writer();
        let (link, env2) = (self.clone(), env.clone());
        tokio::spawn(async move {
            let reason = match link.clone().write_loop(&env2, write).await {
                Ok(()) => return,
                Err(e) => format!("data connection to TaskManager {} lost: {e}", link.peer),
            };
            link.break_link(&env2, &reason);
        });
        tokio::spawn(async move {
            let reason = match self.clone().read_loop(&env, read).await {
                Ok(()) => format!("data connection to TaskManager {} closed", self.peer),
                Err(e) => format!("data connection to TaskManager {} lost: {e}", self.peer),
            };
            self.break_link(&env, &reason);
        });
    }

    fn notify_writer(&self) {
        self.notify.notify_one();
    }

    async fn write_loop(self: Arc<Self>, env: &NetworkEnvironment, write: tokio::net::tcp::OwnedWriteHalf) -> std::io::Result<()> {
        let mut out = BufWriter::with_capacity(256 << 10, write);
        let mut frames: Vec<(u8, ChannelId, Bytes)> = Vec::new();
        let mut head = BytesMut::with_capacity(64);
        loop {
            {
                let mut st = self.state.lock();
                if st.broken.is_some() {
                    return Ok(());
                }
                for (kind, id, n) in st.credits.drain(..) {
                    frames.push((kind, id, Bytes::copy_from_slice(&n.to_be_bytes())));
                }
                let subs = st.subs.clone();
                drop(st);
                let mut finished = Vec::new();
                for s in &subs {
                    if s.take_sendable(&mut frames) {
                        finished.push(s.id);
                    }
                }
                if !finished.is_empty() {
                    self.state.lock().subs.retain(|s| !finished.contains(&s.id));
                    let mut outputs = env.outputs.lock();
                    for id in &finished {
                        outputs.remove(id);
                    }
                }
            }
            if frames.is_empty() {
                out.flush().await?;
                self.notify.notified().await;
                continue;
            }
            for (kind, id, body) in frames.drain(..) {
                head.clear();
                head.put_u32((1 + ChannelId::ENCODED_LEN + body.len()) as u32);
                head.put_u8(kind);
                id.encode(&mut head);
                out.write_all(&head).await?;
                out.write_all(&body).await?;
            }
        }
    }

    async fn read_loop(self: Arc<Self>, env: &Arc<NetworkEnvironment>, mut read: tokio::net::tcp::OwnedReadHalf) -> std::io::Result<()> {
        loop {
            let (kind, mut body) = match read_frame(&mut read).await {
                Ok(f) => f,
                Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(()),
                Err(e) => return Err(e),
            };
            let id = ChannelId::decode(&mut body).ok_or_else(|| invalid("frame without a channel id"))?;
            match kind {
                BUFFER => env.deliver(id, Item::Encoded(body)),
                EVENT => {
                    let ev = Event::decode(&body).map_err(|e| invalid(&e))?;
                    env.deliver(id, Item::Event(ev));
                }
                ANNOUNCE | CREDIT => {
                    if body.len() < 4 {
                        return Err(invalid("short credit frame"));
                    }
                    let n = body.get_u32();
                    let sub = if kind == ANNOUNCE {
                        Some(env.output(id, &self))
                    } else {
                        // None: the channel already sent its end of partition, or was released.
                        env.outputs.lock().get(&id).cloned()
                    };
                    if let Some(sub) = sub {
                        sub.add_credit(n);
                        self.notify_writer();
                    }
                }
                other => return Err(invalid(&format!("unknown frame kind {other}"))),
            }
        }
    }
}

fn invalid(msg: &str) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, msg.to_string())
}

fn put_frame(buf: &mut BytesMut, kind: u8, body: &[u8]) {
    buf.put_u32(1 + body.len() as u32);
    buf.put_u8(kind);
    buf.put_slice(body);
}

async fn read_frame<R: AsyncReadExt + Unpin>(r: &mut R) -> std::io::Result<(u8, Bytes)> {
    let len = r.read_u32().await? as usize;
    if len == 0 || len > MAX_FRAME {
        return Err(invalid(&format!("bad frame length {len}")));
    }
    let mut buf = BytesMut::zeroed(len);
    r.read_exact(&mut buf).await?;
    let mut buf = buf.freeze();
    let kind = buf.get_u8();
    Ok((kind, buf))
}

struct RemoteCredits {
    links: Vec<Option<(ChannelId, Arc<PeerLink>)>>,
}

impl CreditReturn for RemoteCredits {
    fn return_credit(&self, channel: usize) {
        if let Some((id, link)) = &self.links[channel] {
            link.push_credit(CREDIT, *id, 1);
        }
    }
}

#[derive(Default)]
struct SubState {
    /// Frames waiting to be sent, as (frame kind `BUFFER` or `EVENT`, body), in sending order:
    /// a buffer waits for a credit, and so does everything queued behind it, except events
    /// pushed with priority, which go to the front.
    queue: VecDeque<(u8, Bytes)>,
    /// `BUFFER` frames in `queue`.
    buffers: usize,
    /// `taskmanager.network.sender-queue-buffers`: the sending task blocks at this many.
    capacity: usize,
    /// Buffers the receiver has room for.
    credits: u32,
    /// The receiver has registered and announced its credits.
    announced: bool,
    /// End of partition was queued: the subpartition goes away once it is sent.
    ended: bool,
    failure: Option<String>,
}

/// The sending end of one channel to a remote TaskManager.
pub struct RemoteSubpartition {
    id: ChannelId,
    state: Mutex<SubState>,
    space: Condvar,
    link: Arc<PeerLink>,
}

impl RemoteSubpartition {
    /// Queues an item (encoding buffers to Arrow IPC on the caller's thread), waiting while
    /// `sender-queue-buffers` buffers already wait for credit.
    pub fn push_blocking(&self, item: Item) -> Result<(), String> {
        let (kind, body) = match item {
            Item::Buffer(b) => (BUFFER, encode_batch(&b).map_err(|e| format!("cannot encode a buffer: {e}"))?),
            Item::Encoded(b) => (BUFFER, b),
            Item::Event(e) => (EVENT, e.encode()),
        };
        let mut st = self.state.lock();
        if kind == BUFFER {
            while st.buffers >= st.capacity && st.failure.is_none() {
                self.space.wait(&mut st);
            }
        }
        if let Some(f) = &st.failure {
            return Err(f.clone());
        }
        if kind == BUFFER {
            st.buffers += 1;
        }
        if kind == EVENT && matches!(Event::decode(&body), Ok(Event::EndOfPartition)) {
            st.ended = true;
        }
        st.queue.push_back((kind, body));
        drop(st);
        self.link.notify_writer();
        Ok(())
    }

    /// Puts an event at the head of the queue, ahead of every buffer waiting for credit.
    pub fn push_priority(&self, event: Event) -> Result<(), String> {
        let mut st = self.state.lock();
        if let Some(f) = &st.failure {
            return Err(f.clone());
        }
        st.queue.push_front((EVENT, event.encode()));
        drop(st);
        self.link.notify_writer();
        Ok(())
    }

    fn add_credit(&self, n: u32) {
        let mut st = self.state.lock();
        st.credits += n;
        st.announced = true;
    }

    fn fail(&self, reason: &str) {
        let mut st = self.state.lock();
        if st.failure.is_none() {
            st.failure = Some(reason.to_string());
        }
        st.queue.clear();
        drop(st);
        self.space.notify_all();
    }

    /// Moves what may be sent now into `out`. Returns true once the end of partition went out.
    fn take_sendable(&self, out: &mut Vec<(u8, ChannelId, Bytes)>) -> bool {
        let mut st = self.state.lock();
        if !st.announced || st.failure.is_some() {
            return false;
        }
        let mut freed = false;
        while let Some((kind, _)) = st.queue.front() {
            if *kind == BUFFER {
                if st.credits == 0 {
                    break;
                }
                st.credits -= 1;
                st.buffers -= 1;
                freed = true;
            }
            let (kind, body) = st.queue.pop_front().expect("front exists");
            out.push((kind, self.id, body));
        }
        let done = st.ended && st.queue.is_empty();
        drop(st);
        if freed {
            self.space.notify_all();
        }
        done
    }

    /// Buffers queued and waiting for credit (for tests and metrics).
    pub fn queued_buffers(&self) -> usize {
        self.state.lock().buffers
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gate::GatePoll;
    use arrow_array::{Int64Array, RecordBatch};
    use std::time::Instant;

    fn batch(v: i64) -> Item {
        Item::Buffer(RecordBatch::try_from_iter(vec![("v", Arc::new(Int64Array::from(vec![v])) as _)]).unwrap())
    }

    async fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !cond() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Two environments on loopback, a channel from `a` to `b` with 2 credits: the sender
    /// queues at most its queue capacity beyond the credits, the receiver never holds more
    /// than its credits, and everything arrives in order once the receiver drains.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn credits_bound_in_flight_buffers_across_tcp() {
        let a = NetworkEnvironment::start("tm-a", "127.0.0.1:0", 2).await.unwrap();
        let b = NetworkEnvironment::start("tm-b", "127.0.0.1:0", 2).await.unwrap();
        let id = ChannelId { job: 1, attempt: 0, edge: 0, from: 0, to: 0 };
        let credits = b.credit_return(vec![Some((id, "tm-a".into(), a.local_addr().to_string()))]);
        let gate = Arc::new(InputGate::new(2, vec![Some(credits)]));
        b.register_input(id, gate.clone(), 0, "tm-a", &a.local_addr().to_string());
        let sub = a.register_output(id, "tm-b", &b.local_addr().to_string());

        let sender = {
            let sub = sub.clone();
            std::thread::spawn(move || {
                for v in 0..10 {
                    sub.push_blocking(batch(v)).unwrap();
                }
                sub.push_blocking(Item::Event(Event::EndOfPartition)).unwrap();
            })
        };
        // Receiver does not consume: 2 buffers arrive (credits), 2 wait at the sender.
        wait_until("credits used", || gate.queued_buffers(0) == 2 && sub.queued_buffers() == 2).await;
        assert!(!sender.is_finished(), "the sending task must be blocked by backpressure");

        let g = gate.clone();
        let received = tokio::task::spawn_blocking(move || {
            let mut got = Vec::new();
            loop {
                match g.poll(Some(Instant::now() + Duration::from_secs(30))) {
                    GatePoll::Item(_, Item::Encoded(bytes)) => {
                        let b = crate::buffer::decode_batch(&bytes).unwrap();
                        got.push(b.column(0).as_any().downcast_ref::<Int64Array>().unwrap().value(0));
                    }
                    GatePoll::Item(_, Item::Event(Event::EndOfPartition)) => {}
                    GatePoll::Finished => return got,
                    other => panic!("unexpected {other:?}"),
                }
            }
        })
        .await
        .unwrap();
        assert_eq!(received, (0..10).collect::<Vec<_>>());
        sender.join().unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn priority_event_overtakes_buffers_waiting_for_credit() {
        let a = NetworkEnvironment::start("tm-a", "127.0.0.1:0", 8).await.unwrap();
        let b = NetworkEnvironment::start("tm-b", "127.0.0.1:0", 8).await.unwrap();
        let id = ChannelId { job: 2, attempt: 0, edge: 0, from: 0, to: 0 };
        let credits = b.credit_return(vec![Some((id, "tm-a".into(), a.local_addr().to_string()))]);
        let gate = Arc::new(InputGate::new(1, vec![Some(credits)]));
        let sub = a.register_output(id, "tm-b", &b.local_addr().to_string());
        for v in 0..4 {
            sub.push_blocking(batch(v)).unwrap();
        }
        b.register_input(id, gate.clone(), 0, "tm-a", &a.local_addr().to_string());
        wait_until("first buffer", || gate.queued_buffers(0) == 1).await;
        sub.push_priority(Event::EndOfPartition).unwrap();
        // The event needs no credit and overtakes the 3 buffers still queued at the sender.
        let g = gate.clone();
        let first_two = tokio::task::spawn_blocking(move || {
            let mut kinds = Vec::new();
            for _ in 0..2 {
                match g.poll(Some(Instant::now() + Duration::from_secs(30))) {
                    GatePoll::Item(_, item) => kinds.push(item.is_buffer()),
                    other => panic!("unexpected {other:?}"),
                }
            }
            kinds
        })
        .await
        .unwrap();
        // Buffer 0 was already delivered; the event comes before buffers 1..3.
        assert_eq!(first_two, vec![true, false]);
    }

    /// The receiver returns a credit for every buffer it takes, also after the sender's end of
    /// partition went out. Those late credits must not bring the finished channel back as an
    /// output that never ends (and that the writer would scan on every wake from then on).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn credits_returned_after_end_of_partition_do_not_revive_the_channel() {
        let a = NetworkEnvironment::start("tm-a", "127.0.0.1:0", 8).await.unwrap();
        let b = NetworkEnvironment::start("tm-b", "127.0.0.1:0", 8).await.unwrap();
        let a_addr = a.local_addr().to_string();
        let id = ChannelId { job: 4, attempt: 0, edge: 0, from: 0, to: 0 };
        let credits = b.credit_return(vec![Some((id, "tm-a".into(), a_addr.clone()))]);
        let gate = Arc::new(InputGate::new(4, vec![Some(credits)]));
        b.register_input(id, gate.clone(), 0, "tm-a", &a_addr);
        let sub = a.register_output(id, "tm-b", &b.local_addr().to_string());
        let s = sub.clone();
        tokio::task::spawn_blocking(move || {
            for v in 0..3 {
                s.push_blocking(batch(v)).unwrap();
            }
            s.push_blocking(Item::Event(Event::EndOfPartition)).unwrap();
        })
        .await
        .unwrap();
        // Everything arrives before the receiver takes anything, so every credit it returns
        // comes after the end of partition was sent.
        wait_until("all buffers and the end of partition", || gate.queued_buffers(0) == 3 && a.outputs.lock().is_empty()).await;
        let g = gate.clone();
        tokio::task::spawn_blocking(move || while !matches!(g.poll(Some(Instant::now() + Duration::from_secs(30))), GatePoll::Finished) {})
            .await
            .unwrap();

        // A channel registered now announces its credits behind the returned ones, on the same
        // connection: once the sender knows it, it has processed every returned credit.
        let later = ChannelId { edge: 1, ..id };
        let gate2 = Arc::new(InputGate::new(4, vec![None]));
        b.register_input(later, gate2, 0, "tm-a", &a_addr);
        wait_until("the second channel's announcement", || a.outputs.lock().contains_key(&later)).await;
        let outputs: Vec<ChannelId> = a.outputs.lock().keys().copied().collect();
        assert_eq!(outputs, vec![later], "the finished channel came back");
        let link = a.peers.lock().get("tm-b").cloned().unwrap();
        assert_eq!(link.state.lock().subs.len(), 1);

        // The receiver forgets the job's input channels when the job ends there.
        b.release_inputs(4, 0);
        let link = b.peers.lock().get("tm-a").cloned().unwrap();
        assert!(link.state.lock().input_channels.is_empty());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn lost_peer_fails_channels_naming_it() {
        let a = NetworkEnvironment::start("tm-a", "127.0.0.1:0", 2).await.unwrap();
        // Nothing listens on this port.
        let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
        let id = ChannelId { job: 3, attempt: 0, edge: 0, from: 0, to: 0 };
        let sub = a.register_output(id, "tm-z", &dead.to_string());
        let s = sub.clone();
        let err = tokio::task::spawn_blocking(move || loop {
            if let Err(e) = s.push_blocking(batch(1)) {
                return e;
            }
        })
        .await
        .unwrap();
        assert!(err.contains("tm-z"), "{err}");
    }
}
