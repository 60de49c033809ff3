//! The TCP data exchange between TaskManagers.
//!
//! ## Connections
//! One TCP connection per pair of TaskManagers carries every logical channel between them, in
//! both directions. To make "one per pair" hold without a race, only the TaskManager with the
//! smaller id dials; the other waits for it. A [`PeerLink`] is the logical link to one peer: it
//! exists from the moment a channel needs it, queues work until the connection is up, and then
//! runs one writer (buffered) and one reader (buffered) task on it.
//!
//! A new connection first runs TLS with mutual authentication if `security.ssl.internal.enabled`,
//! then the handshake of [`handshake`]: the acceptor sends a nonce, the dialer answers with its
//! TaskManager id and, with `security.token`, an HMAC of the nonce and its id under the token;
//! the acceptor answers with its own proof. A peer that fails any step is refused, with a log
//! on both sides naming the other; the whole exchange has 10 s, and at most
//! [`MAX_PENDING_HANDSHAKES`] connections may be in it at once. See `docs/security.md`.
//!
//! ## Frames
//! `u32 length | u8 kind | body`, big-endian (see [`frame`]). Kinds after the handshake:
//! `SCHEMA` (channel id + Arrow IPC schema message), `BUFFER` (channel id + the sender's
//! backlog + the Arrow IPC messages of one batch, without its schema), `EVENT` and
//! `PRIORITY_EVENT` (channel id + event), `ANNOUNCE` and `CREDIT` (channel id + u32 count),
//! `BUFFER_SIZE` (channel id + u32 bytes). Every body starts with the channel id (32 bytes,
//! [`ChannelId::encode`]).
//!
//! ## Buffers
//! A channel's schema travels once: a `SCHEMA` frame goes ahead of its first buffer, and again
//! only if the schema changes; the receiver keeps it with the channel's registration and hands
//! every buffer to the gate with it ([`Encoded`]). A sending task encodes a batch without
//! copying its rows (the frame's parts borrow the batch's arrays, written straight into the
//! socket's buffer); the reader reads each frame into an allocation of its own, so the arrays
//! start 8-byte aligned and the receiving task decodes them in place. A broadcast buffer is
//! encoded once for all its remote channels.
//!
//! `length` counts the kind byte and the body. It is checked before anything is allocated:
//! during the handshake no frame may exceed 1 KiB; after it, a buffer may be up to
//! [`frame::max_buffer_len`] (64 × `taskmanager.memory.segment-size`, at least 64 MiB: a
//! buffer is about a segment, but one wide row or schema may exceed it). A larger length, an
//! unknown kind, a truncated channel id or a body that does not parse is a protocol violation:
//! that connection closes, with a warning naming the peer, and only the channels on it fail.
//! Even a frame within the limit is allocated as its bytes arrive, not as announced. A sending
//! task whose buffer exceeds the limit fails with an error saying so.
//!
//! ## Who may send what
//! A frame about a channel is taken only from the TaskManager that owns its other end: data and
//! events only from the peer the input channel was registered with
//! ([`NetworkEnvironment::register_input`]), `ANNOUNCE`, `CREDIT` and `BUFFER_SIZE` only from
//! the peer the sending end sends to. A frame naming a channel another peer owns, or a buffer beyond the
//! credits granted, is a protocol violation (the connection closes); a frame for a channel
//! nobody registered (a released attempt) is dropped.
//!
//! `ANNOUNCE`, `CREDIT` and `BUFFER_SIZE` flow from the receiving TaskManager to the sending
//! one, against the channel's data. A `PRIORITY_EVENT` overtook the buffers queued at the sender, and the
//! receiver queues it ahead of the buffers waiting in its gate too.
//!
//! ## Credits
//! A receiving channel announces its credits (free buffers) with an `ANNOUNCE` frame when it is
//! registered, and returns them as its task takes buffers, half the channel's window per
//! `CREDIT` frame (see [`NetworkEnvironment::credit_return`]); credits that wait for the writer
//! are summed into one `CREDIT` frame per channel.
//!
//! Those are a channel's exclusive credits (`taskmanager.network.memory.buffers-per-channel`).
//! A gate also has floating credits (`taskmanager.network.memory.floating-buffers-per-gate`),
//! as Flink's floating buffers: each `BUFFER` carries the sender's backlog (the buffers queued
//! behind it), and a channel whose sender has a backlog is granted floating credits from its
//! gate's pool, enough for that backlog plus a window as far as the pool goes, in a `CREDIT`
//! frame at once (see [`InputGate::push_remote_buffer`]); once its sender reports no
//! backlog, the channel gives them back to the pool as its task takes buffers, instead of
//! returning them to the sender. A busy channel thus gets a deeper window (fewer round trips
//! per buffer) while the memory stays bounded per gate, not per channel.
//!
//! The sender's [`RemoteSubpartition`] sends nothing before that announcement (so nothing arrives
//! for a channel that does not exist yet), sends a buffer only against a credit, and sends
//! events at any time; events pushed with priority go ahead of queued buffers. Its task takes
//! no further input once `taskmanager.network.sender-queue-buffers` buffers wait for credit
//! (it never blocks in the send itself): that is backpressure.
//!
//! The announcement may arrive before the sending task is deployed: it is then kept on its link
//! as a pending announcement, which the sending end takes when it is registered for that peer.
//! A returned credit never creates anything. Once its end of partition went out, a subpartition
//! is dropped, and the credits the receiver still returns for the buffers it takes afterwards
//! are ignored: they cannot bring back a channel that would never end.
//!
//! A broken connection fails every channel that used it, on both ends, naming the peer.
//!
//! ## Buffer sizes
//! With buffer debloating ([`crate::debloat`]) a receiving gate tells its remote senders the
//! size to cut their buffers at in a `BUFFER_SIZE` frame, sent like an `ANNOUNCE` (after it, in
//! order on the link); the sending end keeps the latest ([`RemoteSubpartition::buffer_size`]).
//! One that arrives before the sending end is registered waits with the channel's pending
//! announcement.
//!
//! ## Attempts
//! A channel id includes the job's attempt. After a restart, frames and credits of the failed
//! attempt that are still in flight name channels nobody registered any more: data is
//! dropped, credits are ignored. They never reach the new attempt's gates or senders.
//!
//! ## Threads
//! Each link has one reader and one writer, tokio tasks on the runtime `start` ran in. The
//! reader hands `BUFFER` bodies to the gate still encoded, for the receiving task to decode. A
//! sending task encodes its batch on its own thread and queues it in its
//! [`RemoteSubpartition`].
//!
//! On a plain TCP connection the thread that makes frames sendable writes them itself, without
//! waking the writer: the sending task after queuing a buffer, the reader after a `CREDIT`, the
//! receiving task when it returns credits. It takes the link's wire lock, moves what the
//! credits allow from the queue to the socket with one non-blocking `writev`, and lets go.
//! Frames leave a queue only under that lock, so each channel's frames keep their order. What
//! the socket does not take at once stays queued under the lock (as `Bytes`, not copied) for the
//! writer, which waits for the socket to drain; the writer also sends what was queued before
//! the connection was up, and whatever a thread could not send directly. Without these
//! hand-offs a buffer crosses with one thread wake-up (the receiving task's) instead of three.
//! A TLS connection has one session state: only its writer task writes it, through a buffer.
//!
//! ## Known limitations
//! - Only the dialing side gives up (9 attempts, about 4.5 s of backoff in all; at once if it
//!   was refused). The side that waits to be dialed has no timeout: its sending tasks block once
//!   their queues are full, until the connection comes or the job is released.
//! - An `ANNOUNCE` for a channel whose attempt this side has already released stays a pending
//!   announcement until the link breaks (at most [`MAX_PENDING_ANNOUNCES`] per link; more is
//!   a protocol violation).
//! - Without a token, a TaskManager id in `HELLO` is claimed, not proven: whoever reaches the
//!   data port first as a given id holds that peer's link.
//! - Events take no credit: the TaskManager that feeds a channel (it passed the handshake) can
//!   queue events on it without bound.

pub mod frame;
pub mod handshake;
#[cfg(test)]
mod hostile_peers;

pub use frame::max_buffer_len;
pub use handshake::{NetSecurity, SecurityError};

use crate::buffer::{schema_message, BatchEncoder, ChannelId, Encoded, Event, Item};
use crate::debloat::AnnouncedSize;
use crate::gate::{CreditReturn, InputGate};
use bytes::{Bytes, BytesMut};
use frame::{read_frame, Frame, FrameError, ANNOUNCE, BUFFER_SIZE, CREDIT, EVENT, FRAME_OVERHEAD, PRIORITY_EVENT, SCHEMA};
use handshake::{Connection, HandshakeError, ReadHalf, WriteHalf, WriteSide, HANDSHAKE_TIMEOUT};
use parking_lot::{Condvar, Mutex};
use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncWriteExt, BufReader, BufWriter};
use tokio::net::tcp::OwnedWriteHalf;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;
use weir_core::retry::{retry, Backoff, Failure};
use weir_core::settings::NetworkConfig;

/// How a link dials its peer: 9 attempts, 50 ms apart doubling up to 1 s (about 4.5 s in all).
const DIAL_RETRY: Backoff = Backoff::new(Duration::from_millis(50), Duration::from_secs(1)).with_max_attempts(9);
/// Announcements a link keeps for sending ends not registered yet. Far above what two
/// TaskManagers need (a channel waits only until its sending task is deployed), low enough that
/// a peer cannot fill memory with announcements of channels that never come.
pub const MAX_PENDING_ANNOUNCES: usize = 1 << 18;
/// The reader's buffer: many small frames (credits, events) per system call, yet small enough
/// that most of a buffer's body (a segment, 64 KiB by default) skips it and is read straight
/// into the body's own allocation (tokio's `BufReader` reads past its buffer when it is empty
/// and the read is larger).
const READ_BUFFER: usize = 8 << 10;
/// Connections in their handshake at once; more are closed at once. A TaskManager dials each
/// peer once, so this is far above what a cluster needs, and bounds what strangers that connect
/// and say nothing cost until their handshake times out.
pub const MAX_PENDING_HANDSHAKES: usize = 1024;

/// Why the data plane could not start.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// The data port could not be bound (in use, not permitted, not an address of this host).
    #[error("cannot bind the data port {addr}: {source}")]
    Bind { addr: String, source: std::io::Error },
    /// `security.*` could not be loaded (a PEM file, a TLS configuration).
    #[error(transparent)]
    Security(#[from] SecurityError),
}

/// Where the frames of a registered remote input channel go: channel `index` of `gate`, fed by
/// TaskManager `peer` only.
struct InputRegistration {
    gate: Arc<InputGate>,
    index: usize,
    peer: String,
    /// The schema of the channel's buffers: from its last `SCHEMA` frame.
    schema: Option<arrow_schema::SchemaRef>,
}

/// A TaskManager's data-plane endpoint: its listener, its links to peers, and the channels
/// registered on them.
pub struct NetworkEnvironment {
    /// This TaskManager's id: sent in `HELLO`, and compared with a peer's to decide who dials.
    tm_id: String,
    /// The bound data port's address.
    local_addr: SocketAddr,
    /// `taskmanager.network.sender-queue-buffers`: buffers one remote subpartition queues beyond
    /// its credits before its sending task blocks.
    sender_queue_buffers: usize,
    /// The largest buffer body sent or received ([`frame::max_buffer_len`] of the segment size).
    max_buffer: usize,
    /// Token and TLS of every connection.
    security: NetSecurity,
    /// The current link per peer id. A broken link is removed, and replaced on next use.
    peers: Mutex<HashMap<String, Arc<PeerLink>>>,
    /// Remote input channels registered here. Data for any other channel id is dropped.
    inputs: Mutex<HashMap<ChannelId, InputRegistration>>,
    /// Sending ends by channel id, created by `register_output` (taking the announcement if it
    /// came first); removed once their end of partition went out, on release, or when their
    /// link breaks.
    outputs: Mutex<HashMap<ChannelId, Arc<RemoteSubpartition>>>,
    /// The runtime that dials run on (callers of `link` may be threads outside any runtime).
    runtime: tokio::runtime::Handle,
}

impl NetworkEnvironment {
    /// Binds the data port and starts accepting peers. Must be called inside a tokio runtime,
    /// which then runs every link's writer and reader. `bind` is `host:port`; port 0 picks a
    /// free port (see [`NetworkEnvironment::local_addr`]). `network` gives the segment size
    /// (hence the frame limit) and the sender queues; `security` the token and TLS of every
    /// connection. The accept loop ends once the environment is dropped (at the next accepted
    /// connection).
    pub async fn start(tm_id: &str, bind: &str, network: &NetworkConfig, security: NetSecurity) -> Result<Arc<Self>, NetError> {
        let listener = TcpListener::bind(bind).await.map_err(|source| NetError::Bind { addr: bind.to_string(), source })?;
        let local_addr = listener.local_addr().map_err(|source| NetError::Bind { addr: bind.to_string(), source })?;
        if !security.has_token() && !local_addr.ip().is_loopback() {
            tracing::warn!(
                addr = %local_addr,
                "the data port listens on a non-loopback address without {}: anyone who reaches it can join as a TaskManager",
                weir_core::config::keys::SECURITY_TOKEN
            );
        }
        let env = Arc::new(Self {
            tm_id: tm_id.to_string(),
            local_addr,
            sender_queue_buffers: network.sender_queue_buffers,
            max_buffer: max_buffer_len(network.segment_size),
            security,
            peers: Mutex::new(HashMap::new()),
            inputs: Mutex::new(HashMap::new()),
            outputs: Mutex::new(HashMap::new()),
            runtime: tokio::runtime::Handle::current(),
        });
        let weak = Arc::downgrade(&env);
        let handshakes = Arc::new(tokio::sync::Semaphore::new(MAX_PENDING_HANDSHAKES));
        tokio::spawn(async move {
            loop {
                let Ok((socket, remote)) = listener.accept().await else {
                    // Out of file descriptors, most likely: pause rather than spin.
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                };
                let Some(env) = weak.upgrade() else { return };
                let Ok(permit) = handshakes.clone().try_acquire_owned() else {
                    tracing::debug!(%remote, "{MAX_PENDING_HANDSHAKES} data connections in their handshake: closed");
                    continue;
                };
                tokio::spawn(async move {
                    env.accept(socket, remote, permit).await;
                });
            }
        });
        Ok(env)
    }

    /// The address the data port is bound to: what peers dial.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// This TaskManager's id.
    pub fn tm_id(&self) -> &str {
        &self.tm_id
    }

    /// An incoming connection: runs TLS (if enabled) and the accepting side of the handshake
    /// within [`HANDSHAKE_TIMEOUT`], holding one of [`MAX_PENDING_HANDSHAKES`] permits, then attaches the connection to the link for that peer,
    /// creating the link if no channel needed it yet. A refused connection is logged with the
    /// remote address and closed.
    async fn accept(self: Arc<Self>, socket: TcpStream, remote: SocketAddr, permit: tokio::sync::OwnedSemaphorePermit) {
        let _ = socket.set_nodelay(true);
        let env = &self;
        let handshake = async move {
            let mut conn = env.security.server(socket).await?;
            let peer = handshake::accept(&mut conn, &env.security, &env.tm_id, |peer| env.admit(peer)).await?;
            Ok::<_, HandshakeError>((conn, peer))
        };
        let outcome = tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake).await;
        drop(permit);
        match outcome {
            Ok(Ok((conn, peer))) => {
                let link = self.link(&peer, None);
                link.attach(self.clone(), conn, remote);
            }
            Ok(Err(e)) => tracing::warn!(%remote, "refused a data connection: {e}"),
            Err(_) => tracing::warn!(%remote, "refused a data connection: no handshake within {HANDSHAKE_TIMEOUT:?}"),
        }
    }

    /// Whether a peer that passed the handshake may have a connection: it must be the side that
    /// dials (the smaller id), and have none open already.
    fn admit(&self, peer: &str) -> Result<(), String> {
        if peer >= self.tm_id.as_str() {
            return Err(format!("TaskManager {peer} dialed TaskManager {}: only the smaller id dials", self.tm_id));
        }
        if let Some(link) = self.peers.lock().get(peer) {
            let st = link.state.lock();
            if st.attached && st.broken.is_none() {
                return Err(format!("TaskManager {} already has a data connection from TaskManager {peer}", self.tm_id));
            }
        }
        Ok(())
    }

    /// The link to `peer`, created (and, if this side dials, connected) on first use.
    ///
    /// Only the side whose id is smaller (as strings) dials, and only when given the peer's
    /// address; the other side waits for the peer's connection to attach it. A
    /// broken link is replaced by a new one, which dials again.
    pub fn link(self: &Arc<Self>, peer: &str, peer_addr: Option<&str>) -> Arc<PeerLink> {
        let mut peers = self.peers.lock();
        if let Some(l) = peers.get(peer) {
            if !l.is_broken() {
                return l.clone();
            }
        }
        let link = Arc::new(PeerLink {
            peer: peer.to_string(),
            state: Mutex::new(LinkState::default()),
            wire: Mutex::new(None),
            handed_over: Default::default(),
            notify: Notify::new(),
        });
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
    /// Frames for this channel are then taken from `peer`'s connection only.
    ///
    /// The `ANNOUNCE` frame grants the gate's credits per channel and tells the sender the
    /// channel exists; data may follow at once, so the gate must be ready and registered before
    /// its task runs (the TaskManager registers every remote input, then starts the tasks).
    pub fn register_input(self: &Arc<Self>, id: ChannelId, gate: Arc<InputGate>, index: usize, peer: &str, peer_addr: &str) {
        let credits = gate.credits_per_channel() as u32;
        self.inputs.lock().insert(id, InputRegistration { gate, index, peer: peer.to_string(), schema: None });
        let link = self.link(peer, Some(peer_addr));
        link.push_credit(ANNOUNCE, id, credits);
    }

    /// The credit-return handle for remote input channels `ids` (indexed by channel) of a gate.
    /// `None` entries are local channels, whose credits never travel. Each entry is the channel
    /// id, the peer's TaskManager id and its data address.
    pub fn credit_return(self: &Arc<Self>, ids: Vec<Option<(ChannelId, String, String)>>) -> Arc<dyn CreditReturn> {
        let links: Vec<_> = ids.iter().map(|c| c.as_ref().map(|(id, peer, addr)| (*id, self.link(peer, Some(addr))))).collect();
        Arc::new(RemoteCredits { links })
    }

    /// The sending end of channel `id` towards `peer`. If `peer`'s `ANNOUNCE` came first, the
    /// end starts with its credits. Nothing is sent before the announcement.
    pub fn register_output(self: &Arc<Self>, id: ChannelId, peer: &str, peer_addr: &str) -> Arc<RemoteSubpartition> {
        let link = self.link(peer, Some(peer_addr));
        let mut outputs = self.outputs.lock();
        let sub = outputs
            .entry(id)
            .or_insert_with(|| {
                Arc::new(RemoteSubpartition {
                    id,
                    state: Mutex::new(SubState { capacity: self.sender_queue_buffers, ..Default::default() }),
                    encoder: Mutex::new(BatchEncoder::default()),
                    space: Condvar::new(),
                    link: link.clone(),
                    max_buffer: self.max_buffer,
                    buffer_size: AnnouncedSize::default(),
                })
            })
            .clone();
        // Under the outputs lock, as the reader's `announce`: an announcement is either pending
        // here or finds the sending end.
        let pending = link.state.lock().pending_announces.remove(&id);
        drop(outputs);
        if let Some(p) = pending {
            sub.buffer_size.set(p.buffer_size as usize);
            sub.add_credit(p.credits);
        }
        link.add_subpartition(&sub);
        sub
    }

    /// Drops every channel of one job attempt: queued data is discarded and blocked senders are
    /// released with `reason`; pending announcements and input registrations are removed, so
    /// later data for them is dropped. Gates are not failed here: the TaskManager cancels the
    /// attempt's tasks, which fails their gates, before calling this.
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
        let links: Vec<_> = self.peers.lock().values().cloned().collect();
        for link in links {
            link.state.lock().pending_announces.retain(|k, _| !(k.job == job && k.attempt == attempt));
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

    /// After a link broke: forgets it (if it is still the peer's current link), fails its sending
    /// ends, and fails the gate of every input channel announced on it. Runs once per link.
    fn on_link_broken(&self, link: &PeerLink, reason: &str) {
        {
            let mut peers = self.peers.lock();
            if peers.get(&link.peer).is_some_and(|l| std::ptr::eq(l.as_ref(), link)) {
                peers.remove(&link.peer);
            }
        }
        let subs: Vec<_> = {
            let mut st = link.state.lock();
            st.pending_announces.clear();
            st.subs.drain(..).collect()
        };
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

    /// Hands a buffer or event that arrived from `peer` to its registered gate channel, in
    /// arrival order. A channel nobody registered belongs to a cancelled or finished task: the
    /// item is dropped. A channel another peer feeds, or a buffer beyond the credits granted,
    /// is an error: the connection is not the channel's.
    fn deliver(&self, peer: &str, id: ChannelId, item: Item) -> Result<(), String> {
        let mut inputs = self.inputs.lock();
        let Some(reg) = Self::fed_by(&mut inputs, peer, id, "data")? else { return Ok(()) };
        reg.gate.push_remote(reg.index, item).map_err(|e| format!("TaskManager {peer} on channel {id:?}: {e}"))
    }

    /// The registration of input channel `id`, which `peer` must feed; `None` if nobody
    /// registered it (its frames are dropped). `what` from another peer is an error.
    fn fed_by<'a>(
        inputs: &'a mut HashMap<ChannelId, InputRegistration>,
        peer: &str,
        id: ChannelId,
        what: &str,
    ) -> Result<Option<&'a mut InputRegistration>, String> {
        match inputs.get_mut(&id) {
            Some(reg) if reg.peer != peer => {
                Err(format!("TaskManager {peer} sent {what} for channel {id:?}, which TaskManager {} feeds", reg.peer))
            }
            reg => Ok(reg),
        }
    }

    /// A `BUFFER` from `peer`, with `backlog` more waiting at its sender: delivered as
    /// [`NetworkEnvironment::deliver`] with the schema its channel's last `SCHEMA` frame gave. A
    /// buffer before any schema is an error.
    fn deliver_buffer(&self, peer: &str, id: ChannelId, backlog: u32, body: Bytes) -> Result<(), String> {
        let mut inputs = self.inputs.lock();
        let Some(reg) = Self::fed_by(&mut inputs, peer, id, "data")? else { return Ok(()) };
        let schema = reg.schema.clone().ok_or_else(|| format!("TaskManager {peer} sent a buffer before its schema on channel {id:?}"))?;
        let item = Item::Encoded(Encoded::received(schema, body));
        reg.gate.push_remote_buffer(reg.index, item, backlog as usize).map_err(|e| format!("TaskManager {peer} on channel {id:?}: {e}"))
    }

    /// A `SCHEMA` from `peer`: the schema of the channel's buffers from now on.
    fn set_schema(&self, peer: &str, id: ChannelId, schema: arrow_schema::SchemaRef) -> Result<(), String> {
        let mut inputs = self.inputs.lock();
        if let Some(reg) = Self::fed_by(&mut inputs, peer, id, "a schema")? {
            reg.schema = Some(schema);
        }
        Ok(())
    }

    /// Hands a priority event that arrived from `peer` to its registered gate channel, ahead of
    /// its queued buffers; checked as [`NetworkEnvironment::deliver`].
    fn deliver_priority(&self, peer: &str, id: ChannelId, event: Event) -> Result<(), String> {
        let mut inputs = self.inputs.lock();
        let Some(reg) = Self::fed_by(&mut inputs, peer, id, "an event")? else { return Ok(()) };
        let _ = reg.gate.push_priority(reg.index, event);
        Ok(())
    }

    /// An `ANNOUNCE` from `link`'s peer: grants credits to the sending end if it exists (it must
    /// send to that peer), else keeps the announcement on the link until it is registered.
    fn announce(&self, link: &PeerLink, id: ChannelId, n: u32) -> Result<(), String> {
        let outputs = self.outputs.lock();
        if let Some(sub) = outputs.get(&id) {
            sends_to(sub, link, "announced channel")?;
            let sub = sub.clone();
            drop(outputs);
            sub.add_credit(n);
            return Ok(());
        }
        let mut st = link.state.lock();
        if st.pending_announces.len() >= MAX_PENDING_ANNOUNCES && !st.pending_announces.contains_key(&id) {
            return Err(format!("TaskManager {} announced more than {MAX_PENDING_ANNOUNCES} channels not deployed here", link.peer));
        }
        let pending = st.pending_announces.entry(id).or_default();
        pending.credits = pending.credits.saturating_add(n);
        Ok(())
    }

    /// A `BUFFER_SIZE` from `link`'s peer: the sending end cuts its buffers at `n` bytes from
    /// now on. It must send to that peer; before it is registered the size waits with the
    /// channel's pending announcement (which came first on the link); without either it is
    /// ignored (the end is gone).
    fn buffer_size(&self, link: &PeerLink, id: ChannelId, n: u32) -> Result<(), String> {
        let outputs = self.outputs.lock();
        if let Some(sub) = outputs.get(&id) {
            sends_to(sub, link, "sent a buffer size for channel")?;
            sub.buffer_size.set(n as usize);
            return Ok(());
        }
        if let Some(p) = link.state.lock().pending_announces.get_mut(&id) {
            p.buffer_size = n;
        }
        Ok(())
    }

    /// A `CREDIT` from `link`'s peer: grants credits to the sending end, which must send to that
    /// peer; ignored if the end is gone (its end of partition went out, or it was released).
    fn credit(&self, link: &PeerLink, id: ChannelId, n: u32) -> Result<(), String> {
        let Some(sub) = self.outputs.lock().get(&id).cloned() else { return Ok(()) };
        sends_to(&sub, link, "returned a credit for channel")?;
        sub.add_credit(n);
        Ok(())
    }
}

/// Checks that a frame about sending end `sub` came from the peer it sends to (`ANNOUNCE`,
/// `CREDIT`, `BUFFER_SIZE`); otherwise an error naming both peers, `did` being what the frame
/// did ("announced channel").
fn sends_to(sub: &RemoteSubpartition, link: &PeerLink, did: &str) -> Result<(), String> {
    if sub.link.peer == link.peer {
        return Ok(());
    }
    Err(format!("TaskManager {} {did} {:?}, which sends to TaskManager {}", link.peer, sub.id, sub.link.peer))
}

/// What the peer announced for a channel whose sending end is not registered yet.
#[derive(Debug, Default, Clone, Copy)]
struct PendingAnnounce {
    /// Credits announced.
    credits: u32,
    /// The buffer size last asked for; 0 if none.
    buffer_size: u32,
}

/// What a link's writer sends next.
enum Outgoing {
    /// `ANNOUNCE`, `CREDIT` or `BUFFER_SIZE`: (kind, channel, count or size).
    Credit(u8, ChannelId, u32),
    /// A sending end's frame; for a buffer, with the backlog behind it (buffers still queued).
    Frame(ChannelId, Queued, u32),
}

/// What the writer, the reader and the rest of the environment share about one link.
#[derive(Default)]
struct LinkState {
    /// Credit frames to send: (`ANNOUNCE`, `CREDIT` or `BUFFER_SIZE`, channel, count or size).
    credits: Vec<(u8, ChannelId, u32)>,
    /// Where each channel's `CREDIT` waits in `credits`: credits returned while the writer is
    /// busy are summed into one frame per channel.
    returned: HashMap<ChannelId, usize>,
    /// Sending ends whose frames this link's writer sends, until their end of partition is out.
    subs: Vec<Arc<RemoteSubpartition>>,
    /// Sending ends that may have something to send (each once, see `SubState::scheduled`):
    /// the writer looks at these only, never at every sending end of the link.
    ready: Vec<Arc<RemoteSubpartition>>,
    /// Sending ends whose end of partition a thread sent directly: the writer drops them.
    finished: Vec<ChannelId>,
    /// Input channels whose credits went out on this link (their data comes back on it).
    input_channels: Vec<ChannelId>,
    /// Credits (and the latest buffer size) the peer announced for channels whose sending end
    /// is not registered yet.
    pending_announces: HashMap<ChannelId, PendingAnnounce>,
    /// Why the link broke; set once. A broken link is never used again.
    broken: Option<String>,
    /// A connection is attached; another one for this link is dropped.
    attached: bool,
    /// The attached connection's remote address, for logs.
    remote: Option<SocketAddr>,
}

/// The logical link to one peer TaskManager: exists as soon as a channel needs it, queues
/// credits and data until its connection is attached, then runs one writer and one reader on it.
pub struct PeerLink {
    /// The peer's TaskManager id.
    peer: String,
    /// Shared with the writer and reader; never held across an `.await`.
    state: Mutex<LinkState>,
    /// The wire lock: the socket of a plain TCP connection, written by whichever thread holds
    /// it (see "Threads" in the module header); `None` before the connection is up, over TLS,
    /// and once the link broke. Taken before `state` and a sending end's lock, never after.
    wire: Mutex<Option<DirectWire>>,
    /// How often a thread left bytes the socket did not take for the writer (for tests).
    handed_over: std::sync::atomic::AtomicU64,
    /// Wakes the writer: new credits to send, or a subpartition has something sendable.
    notify: Notify,
}

impl PeerLink {
    /// Whether the link broke (it is then replaced on next use).
    fn is_broken(&self) -> bool {
        self.state.lock().broken.is_some()
    }

    /// Queues a credit frame: `ANNOUNCE` for a newly registered input channel, `CREDIT` for a
    /// returned one, `BUFFER_SIZE` for a debloated one.
    /// Credits returned for a channel whose `CREDIT` has not gone out yet are added to it.
    fn push_credit(&self, kind: u8, id: ChannelId, n: u32) {
        if kind == CREDIT && self.send_direct(None, Some((kind, id, n))) {
            return;
        }
        let mut st = self.state.lock();
        if kind == CREDIT {
            if let Some(&i) = st.returned.get(&id) {
                st.credits[i].2 = st.credits[i].2.saturating_add(n);
                return; // the writer was woken for the first one
            }
            let i = st.credits.len();
            st.returned.insert(id, i);
        }
        if kind == ANNOUNCE && !st.input_channels.contains(&id) {
            st.input_channels.push(id);
        }
        st.credits.push((kind, id, n));
        drop(st);
        self.notify.notify_one();
    }

    /// Puts a sending end on the ready list and wakes the writer.
    fn schedule(&self, sub: Arc<RemoteSubpartition>) {
        self.state.lock().ready.push(sub);
        self.notify.notify_one();
    }

    /// Adds a sending end to the writer's list, once; on a broken link the end fails at once.
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

    /// Takes a sending end off the writer's list (its job attempt was released).
    fn remove_subpartition(&self, id: &ChannelId) {
        self.state.lock().subs.retain(|s| &s.id != id);
    }

    /// Connects to the peer at `addr` and runs TLS (if enabled) and the dialing side of the
    /// handshake within [`HANDSHAKE_TIMEOUT`], retrying per [`DIAL_RETRY`] (the shared
    /// [`weir_core::retry`] helper) while the failure may pass (not after a refusal or a TLS
    /// error). If all fail, the link breaks, failing every channel on it with a reason naming the
    /// peer, the address and the last error.
    async fn dial(self: Arc<Self>, env: Arc<NetworkEnvironment>, addr: String) {
        let (addr_ref, env_ref, peer) = (&addr, &env, self.peer.as_str());
        let connect = || async move {
            let attempt = async {
                let socket = TcpStream::connect(addr_ref).await?;
                let _ = socket.set_nodelay(true);
                let remote = socket.peer_addr()?;
                let mut conn = env_ref.security.client(socket, addr_ref).await?;
                handshake::dial(&mut conn, &env_ref.security, &env_ref.tm_id, peer).await?;
                Ok::<_, HandshakeError>((conn, remote))
            };
            match tokio::time::timeout(HANDSHAKE_TIMEOUT, attempt).await {
                Ok(result) => result,
                Err(_) => Err(HandshakeError::Io(std::io::Error::new(std::io::ErrorKind::TimedOut, "no handshake within 10 s"))),
            }
        };
        let log = |f: &Failure<'_, HandshakeError>| {
            tracing::debug!(peer = %self.peer, addr = %addr_ref, attempt = f.attempt, "dial failed: {}", f.error);
            f.error.is_transient()
        };
        match retry(&DIAL_RETRY, connect, log).await {
            Ok((conn, remote)) => self.attach(env, conn, remote),
            Err(e) => {
                let reason = format!("cannot open a data connection to TaskManager {} at {addr}: {e}", self.peer);
                self.break_link(&env, &reason);
            }
        }
    }

    /// Marks the link broken (the first reason wins; later calls do nothing), fails its channels
    /// on this side, and wakes the writer so it exits. The peer notices the closed socket and
    /// fails its side.
    fn break_link(&self, env: &NetworkEnvironment, reason: &str) {
        let remote = {
            let mut st = self.state.lock();
            if st.broken.is_some() {
                return;
            }
            st.broken = Some(reason.to_string());
            st.remote
        };
        match remote {
            Some(remote) => tracing::warn!(peer = %self.peer, %remote, "{reason}"),
            None => tracing::warn!(peer = %self.peer, "{reason}"),
        }
        *self.wire.lock() = None;
        env.on_link_broken(self, reason);
        self.notify.notify_one();
    }

    /// Starts the writer and reader on `conn` (from `remote`), unless a connection is already
    /// attached or the link broke. A writer error, or the reader's end (closed by the peer, an
    /// error, a protocol violation), breaks the link; a writer that stops because the link broke
    /// does nothing more.
    fn attach(self: Arc<Self>, env: Arc<NetworkEnvironment>, conn: Connection, remote: SocketAddr) {
        let (read, write) = conn.into_split();
        let write = {
            // The wire lock first (the lock order), so that a `break_link` either comes before
            // (and the connection is dropped here) or finds the wire set and clears it.
            let mut wire = self.wire.lock();
            let mut st = self.state.lock();
            if st.attached || st.broken.is_some() {
                return; // one connection per pair: a duplicate is dropped
            }
            st.attached = true;
            st.remote = Some(remote);
            match write {
                WriteSide::Plain(socket) => {
                    let socket = Arc::new(socket);
                    *wire = Some(DirectWire::new(socket.clone()));
                    Ok(socket)
                }
                WriteSide::Tls(tls) => Err(tls),
            }
        };
        self.notify_writer();
        let (link, env2) = (self.clone(), env.clone());
        tokio::spawn(async move {
            let written = match write {
                Ok(socket) => link.clone().write_loop_direct(&env2, socket).await,
                Err(tls) => link.clone().write_loop(&env2, tls).await,
            };
            let reason = match written {
                Ok(()) => return,
                Err(e) => format!("data connection to TaskManager {} at {remote} lost: {e}", link.peer),
            };
            link.break_link(&env2, &reason);
        });
        tokio::spawn(async move {
            let reason = match self.clone().read_loop(&env, read).await {
                Ok(()) => format!("data connection to TaskManager {} at {remote} closed", self.peer),
                Err(e) => format!("data connection to TaskManager {} at {remote} failed: {e}", self.peer),
            };
            self.break_link(&env, &reason);
        });
    }

    /// Wakes the writer. `Notify` keeps one permit, so a wake-up sent while the writer is busy is
    /// not lost.
    fn notify_writer(&self) {
        self.notify.notify_one();
    }

    /// Sends on the calling thread, over a plain TCP connection: `credit` (a credit frame), then
    /// what `sub`'s credits allow from its queue. Returns false, having done nothing, if the
    /// link has no wire to write (not connected yet, TLS, broken): the caller then hands the
    /// work to the writer. Wakes the writer if the socket did not take everything, if the write
    /// failed (the writer breaks the link), or if the end of partition went out (the writer
    /// drops the sending end).
    fn send_direct(&self, sub: Option<&RemoteSubpartition>, credit: Option<(u8, ChannelId, u32)>) -> bool {
        let mut guard = self.wire.lock();
        let Some(wire) = guard.as_mut() else { return false };
        if wire.failed.is_some() {
            return false;
        }
        if let Some((kind, id, n)) = credit {
            wire.frames.push(Outgoing::Credit(kind, id, n));
        }
        let finished = sub.is_some_and(|s| s.take_sendable(&mut wire.frames));
        let handed_over = wire.send();
        drop(guard);
        if handed_over {
            self.handed_over.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        let wake = handed_over || finished;
        if finished {
            self.state.lock().finished.push(sub.expect("finished implies a sending end").id);
        }
        if wake {
            self.notify_writer();
        }
        true
    }

    /// Takes what the writer sends next into `frames`: the queued credit frames (ahead of data
    /// queued at the same time), then, from each sending end on the ready list (those pushed to
    /// or granted credits since the last round; never a scan of every sending end), what its
    /// credits allow. Drops the sending ends whose end of partition went out, from the link and
    /// from `outputs`, so late credits for them find nothing. `false` once the link broke.
    fn collect(&self, env: &NetworkEnvironment, frames: &mut Vec<Outgoing>) -> bool {
        let (ready, mut finished) = {
            let mut st = self.state.lock();
            if st.broken.is_some() {
                return false;
            }
            frames.extend(st.credits.drain(..).map(|(kind, id, n)| Outgoing::Credit(kind, id, n)));
            st.returned.clear();
            (std::mem::take(&mut st.ready), std::mem::take(&mut st.finished))
        };
        for s in &ready {
            if s.take_sendable(frames) {
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
        true
    }

    /// The writer of a plain TCP connection. Each round, under the wire lock, it sends what
    /// [`PeerLink::collect`] finds after what earlier rounds or other threads left queued; then
    /// it waits for the socket to drain if something is still queued, else until notified.
    /// Returns `Ok` when the link broke, an error when a write (its own or a thread's) failed.
    async fn write_loop_direct(self: Arc<Self>, env: &NetworkEnvironment, socket: Arc<OwnedWriteHalf>) -> std::io::Result<()> {
        loop {
            let blocked = {
                let mut guard = self.wire.lock();
                let Some(wire) = guard.as_mut() else { return Ok(()) };
                if !self.collect(env, &mut wire.frames) {
                    *guard = None;
                    return Ok(());
                }
                // A failed write, this round's or another thread's, breaks the link.
                let blocked = wire.send();
                if let Some(e) = wire.failed.take() {
                    return Err(e);
                }
                blocked
            };
            if blocked {
                socket.writable().await?;
            } else {
                self.notify.notified().await;
            }
        }
    }

    /// The writer of a TLS connection: each round sends what [`PeerLink::collect`] finds
    /// through a buffer; with nothing left it flushes the buffer and sleeps until notified.
    /// Returns `Ok` only when the link broke.
    async fn write_loop(self: Arc<Self>, env: &NetworkEnvironment, write: WriteHalf) -> std::io::Result<()> {
        let mut out = BufWriter::with_capacity(256 << 10, write);
        let mut frames: Vec<Outgoing> = Vec::new();
        let mut head = BytesMut::with_capacity(64);
        let mut chunks = VecDeque::new();
        loop {
            if !self.collect(env, &mut frames) {
                return Ok(());
            }
            if frames.is_empty() {
                out.flush().await?;
                self.notify.notified().await;
                continue;
            }
            gather(&mut frames, &mut head, &mut chunks);
            for chunk in chunks.drain(..) {
                out.write_all(&chunk).await?;
            }
        }
    }

    /// The reader: dispatches frames until the peer closes (`Ok`) or an error, which names what
    /// the peer did wrong. Data and events go to the registered gate channel (dropped if none),
    /// `ANNOUNCE` and `CREDIT` to the sending end; each only if this peer owns the channel's
    /// other end (see the module header). Any violation is an error, which breaks the link.
    async fn read_loop(self: Arc<Self>, env: &Arc<NetworkEnvironment>, read: ReadHalf) -> Result<(), String> {
        let mut read = BufReader::with_capacity(READ_BUFFER, read);
        let max = env.max_buffer + FRAME_OVERHEAD;
        loop {
            let (kind, body) = match read_frame(&mut read, max).await {
                Ok(f) => f,
                Err(FrameError::Closed) => return Ok(()),
                Err(e) => return Err(e.to_string()),
            };
            match Frame::decode(kind, body).map_err(|e| e.to_string())? {
                Frame::Buffer(id, backlog, body) => env.deliver_buffer(&self.peer, id, backlog, body)?,
                Frame::Schema(id, schema) => env.set_schema(&self.peer, id, schema)?,
                Frame::Event(id, event) => env.deliver(&self.peer, id, Item::Event(event))?,
                Frame::PriorityEvent(id, event) => env.deliver_priority(&self.peer, id, event)?,
                Frame::Announce(id, n) => env.announce(&self, id, n)?,
                Frame::Credit(id, n) => env.credit(&self, id, n)?,
                Frame::BufferSize(id, n) => env.buffer_size(&self, id, n)?,
            }
        }
    }
}

/// The socket of a plain TCP connection and what waits to be written to it (see "Threads" in
/// the module header); behind the link's wire lock.
struct DirectWire {
    socket: Arc<OwnedWriteHalf>,
    /// Frames taken from the queues, on their way to `pending` (kept for its allocation).
    frames: Vec<Outgoing>,
    /// Frame headers and small frames, before they are cut into `pending`.
    head: BytesMut,
    /// Bytes queued for the socket that it has not taken yet, in order: headers, and the
    /// buffers' own bytes (not copied).
    pending: VecDeque<Bytes>,
    /// The error of a write on another thread than the writer's: the writer breaks the link.
    failed: Option<std::io::Error>,
}

impl DirectWire {
    fn new(socket: Arc<OwnedWriteHalf>) -> Self {
        Self { socket, frames: Vec::new(), head: BytesMut::with_capacity(4096), pending: VecDeque::new(), failed: None }
    }

    /// Turns `frames` into bytes behind what is pending, and writes as much as the socket takes
    /// without blocking. Returns whether the writer must take over: bytes are left, or the
    /// write failed (`failed` is set).
    fn send(&mut self) -> bool {
        gather(&mut self.frames, &mut self.head, &mut self.pending);
        if let Err(e) = write_pending(&self.socket, &mut self.pending) {
            self.failed = Some(e);
            self.pending.clear();
            return true;
        }
        !self.pending.is_empty()
    }
}

/// Appends the wire form of `frames` (drained) to `out`: headers, credit frames and events are
/// written into `head` and cut off as one chunk before each buffer; a buffer's parts follow as
/// they are (reference-counted, not copied).
fn gather(frames: &mut Vec<Outgoing>, head: &mut BytesMut, out: &mut VecDeque<Bytes>) {
    for f in frames.drain(..) {
        match f {
            Outgoing::Credit(kind, id, n) => {
                frame::put_frame_header(head, kind, Some(&id), 4);
                head.extend_from_slice(&n.to_be_bytes());
            }
            Outgoing::Frame(id, Queued::Event(body), _) => {
                frame::put_frame_header(head, EVENT, Some(&id), body.len());
                head.extend_from_slice(&body);
            }
            Outgoing::Frame(id, Queued::Priority(body), _) => {
                frame::put_frame_header(head, PRIORITY_EVENT, Some(&id), body.len());
                head.extend_from_slice(&body);
            }
            Outgoing::Frame(id, Queued::Buffer { schema, buffer }, backlog) => {
                if let Some(schema) = schema {
                    frame::put_frame_header(head, SCHEMA, Some(&id), schema.len());
                    head.extend_from_slice(&schema);
                }
                frame::put_buffer_header(head, &id, backlog, buffer.len());
                out.push_back(head.split().freeze());
                out.extend(buffer.parts().iter().filter(|p| !p.is_empty()).cloned());
            }
        }
    }
    if !head.is_empty() {
        out.push_back(head.split().freeze());
    }
}

/// Slices per `writev` (Linux takes up to 1024).
const MAX_IOVECS: usize = 64;

/// Writes `pending` to `socket` without blocking, as far as the socket takes it: the written
/// bytes leave `pending`, the rest stays. An error other than "would block" is returned.
fn write_pending(socket: &OwnedWriteHalf, pending: &mut VecDeque<Bytes>) -> std::io::Result<()> {
    use bytes::Buf;
    while !pending.is_empty() {
        let mut slices = [std::io::IoSlice::new(&[]); MAX_IOVECS];
        let n = pending.iter().zip(slices.iter_mut()).map(|(b, s)| *s = std::io::IoSlice::new(b)).count();
        let mut written = match socket.try_write_vectored(&slices[..n]) {
            Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        while written > 0 {
            let front = pending.front_mut().expect("written bytes were pending");
            if written >= front.len() {
                written -= front.len();
                pending.pop_front();
            } else {
                front.advance(written);
                written = 0;
            }
        }
    }
    Ok(())
}

/// The [`CreditReturn`] of a gate with remote channels: the credits the gate hands back (half a
/// window at a time, and floating grants) go to their senders as `CREDIT` frames on the links.
/// Keeps the links it was made with: after one breaks, its credits go nowhere (the gates it fed
/// have been failed by then).
struct RemoteCredits {
    /// Per gate channel: its id and link; `None` for a local channel.
    links: Vec<Option<(ChannelId, Arc<PeerLink>)>>,
}

impl CreditReturn for RemoteCredits {
    fn return_credit(&self, channel: usize, n: u32) {
        if let Some((id, link)) = &self.links[channel] {
            link.push_credit(CREDIT, *id, n);
        }
    }

    fn announce_buffer_size(&self, channel: usize, size: u32) {
        if let Some((id, link)) = &self.links[channel] {
            link.push_credit(BUFFER_SIZE, *id, size);
        }
    }
}

/// One frame waiting in a sending end's queue.
#[derive(Debug)]
enum Queued {
    /// A buffer (takes a credit), preceded on the wire by a `SCHEMA` frame when it is the
    /// channel's first buffer or its schema changed (the schema message's bytes).
    Buffer { schema: Option<Bytes>, buffer: Encoded },
    /// An event in order with the buffers (`EVENT`).
    Event(Bytes),
    /// An event that overtook the queued buffers (`PRIORITY_EVENT`).
    Priority(Bytes),
}

impl Queued {
    fn is_buffer(&self) -> bool {
        matches!(self, Queued::Buffer { .. })
    }

    /// The barrier this event is, if it is one.
    fn barrier(&self) -> Option<crate::buffer::Barrier> {
        match self {
            Queued::Event(body) => match Event::decode(body) {
                Ok(Event::Barrier(b)) => Some(b),
                _ => None,
            },
            _ => None,
        }
    }
}

/// The queue and credit account of one sending end.
#[derive(Default)]
struct SubState {
    /// Frames waiting to be sent, in sending order: a buffer waits for a credit, and so does
    /// everything queued behind it, except events pushed with priority, which go ahead of the
    /// buffers (after the last event).
    queue: VecDeque<Queued>,
    /// Buffers in `queue`.
    buffers: usize,
    /// `taskmanager.network.sender-queue-buffers`: the sending task takes no further input while
    /// this many wait (it may overdraw by one input batch's output).
    capacity: usize,
    /// The schema of the last buffer queued: a buffer with another one goes with a `SCHEMA`
    /// frame.
    schema: Option<arrow_schema::SchemaRef>,
    /// The sending task's waker: told when the queue drops below `capacity` or the channel fails.
    waker: Option<Arc<crate::wake::Waker>>,
    /// Buffers the receiver has room for.
    credits: u32,
    /// The receiver has registered and announced its credits.
    announced: bool,
    /// End of partition was queued: the subpartition goes away once it is sent.
    ended: bool,
    /// In its link's ready list: the writer will look at it.
    scheduled: bool,
    /// Why the channel failed (link broken, attempt released): every push returns it. Set once.
    failure: Option<String>,
}

/// The sending end of one channel to a remote TaskManager: a queue of encoded frames, drained
/// by its link's writer as credits allow.
pub struct RemoteSubpartition {
    /// The channel it sends on.
    id: ChannelId,
    /// Queue, credits and flags, shared by the sending task and the writer.
    state: Mutex<SubState>,
    /// The sending task's encoder (only that thread takes it): keeps the schema's IPC encoding.
    encoder: Mutex<BatchEncoder>,
    /// Signalled when buffers leave the queue or the channel fails: wakes a sender waiting in
    /// `push_blocking` (tests; tasks use their waker). One sender per channel: `notify_one`.
    space: Condvar,
    /// The link whose writer sends this channel's frames.
    link: Arc<PeerLink>,
    /// The largest buffer body the data plane carries: a larger buffer fails the push.
    max_buffer: usize,
    /// The buffer size the receiving gate last asked for (`BUFFER_SIZE`).
    buffer_size: AnnouncedSize,
}

impl RemoteSubpartition {
    /// Queues an item without waiting (encoding buffers to Arrow IPC on the caller's thread,
    /// without copying their rows). The sending task checks [`RemoteSubpartition::has_room`]
    /// before it takes the input that produces it. Queuing an end of partition marks the
    /// channel ended: once it is sent, the sending end is dropped.
    pub fn push(self: &Arc<Self>, item: Item) -> Result<(), String> {
        self.push_inner(item, false)
    }

    /// Queues an item, waiting while `sender-queue-buffers` buffers already wait for credit: for
    /// senders that are not tasks (tests). Events never wait.
    pub fn push_blocking(self: &Arc<Self>, item: Item) -> Result<(), String> {
        self.push_inner(item, true)
    }

    /// Queues an item, first waiting for queue room if `wait` and it is a buffer. A buffer
    /// above the frame limit is an error (the receiver would close the connection for it).
    fn push_inner(self: &Arc<Self>, item: Item, wait: bool) -> Result<(), String> {
        let ends = matches!(item, Item::Event(Event::EndOfPartition));
        let queued = match item {
            Item::Buffer(b) => {
                let encoded = self.encoder.lock().encode(&b).map_err(|e| format!("cannot encode a buffer: {e}"))?;
                Queued::Buffer { schema: None, buffer: encoded }
            }
            Item::Encoded(buffer) => Queued::Buffer { schema: None, buffer },
            Item::Event(e) => Queued::Event(e.encode()),
        };
        if let Queued::Buffer { buffer, .. } = &queued {
            if buffer.len() > self.max_buffer {
                return Err(format!(
                    "a buffer of {} bytes for channel {:?} exceeds the data plane's limit of {} bytes \
                     (64 times {}, at least 64 MiB): a row this large cannot go to another TaskManager",
                    buffer.len(),
                    self.id,
                    self.max_buffer,
                    weir_core::config::keys::SEGMENT_SIZE
                ));
            }
        }
        let mut st = self.state.lock();
        if wait && queued.is_buffer() {
            while st.buffers >= st.capacity && st.failure.is_none() {
                self.space.wait(&mut st);
            }
        }
        if let Some(f) = &st.failure {
            return Err(f.clone());
        }
        st.ended |= ends;
        Self::enqueue(&mut st, queued)?;
        self.send_unlocking(st);
        Ok(())
    }

    /// Appends a frame, counting buffers and attaching the schema message to a buffer whose
    /// schema the receiver does not have yet.
    fn enqueue(st: &mut SubState, mut queued: Queued) -> Result<(), String> {
        if let Queued::Buffer { schema, buffer } = &mut queued {
            st.buffers += 1;
            let known = st.schema.as_ref().is_some_and(|s| Arc::ptr_eq(s, &buffer.schema) || **s == *buffer.schema);
            if !known {
                *schema = Some(schema_message(&buffer.schema).map_err(|e| format!("cannot encode a schema: {e}"))?);
                st.schema = Some(buffer.schema.clone());
            }
        }
        st.queue.push_back(queued);
        Ok(())
    }

    /// Puts the sending end on its link's ready list (unless it is there already) and wakes the
    /// link's writer.
    fn schedule(self: &Arc<Self>) {
        let schedule = !std::mem::replace(&mut self.state.lock().scheduled, true);
        if schedule {
            self.link.schedule(self.clone());
        }
    }

    /// For a caller that changed the queue or the credits: releases the lock, then, if a frame
    /// can go now, sends on this thread over a plain TCP connection (see "Threads" in the module
    /// header), or schedules the end for the writer. If nothing can go (no announcement yet, a
    /// buffer at the head without credit, a failed channel), the credit that lets it go will
    /// send it.
    fn send_unlocking(self: &Arc<Self>, st: parking_lot::MutexGuard<'_, SubState>) {
        let sendable = st.announced && st.failure.is_none() && st.queue.front().is_some_and(|q| !q.is_buffer() || st.credits > 0);
        drop(st);
        if sendable && !self.link.send_direct(Some(self.as_ref()), None) {
            self.schedule();
        }
    }

    /// The buffer size the receiving gate last asked for (buffer debloating), if any.
    pub fn buffer_size(&self) -> Option<usize> {
        self.buffer_size.get()
    }

    /// Whether the sending task may take its next input: fewer than `sender-queue-buffers`
    /// buffers wait (or the channel failed, which the next push reports).
    pub fn has_room(&self) -> bool {
        let st = self.state.lock();
        st.buffers < st.capacity || st.failure.is_some()
    }

    /// Registers the sending task's waker.
    pub fn set_waker(&self, waker: Arc<crate::wake::Waker>) {
        self.state.lock().waker = Some(waker);
    }

    /// Puts an event ahead of the buffers waiting for credit, right after the last queued event
    /// (so priority events keep their order and never overtake an earlier one), as a
    /// `PRIORITY_EVENT` frame the receiver also queues ahead of its buffers. Takes no queue
    /// slot and still waits for the announcement. Returns the buffers it overtook: they are
    /// still sent after it, and the sender persists them as output channel state.
    pub fn push_priority(self: &Arc<Self>, event: Event) -> Result<Vec<Encoded>, String> {
        let mut st = self.state.lock();
        if let Some(f) = &st.failure {
            return Err(f.clone());
        }
        let at = st.queue.iter().rposition(|q| !q.is_buffer()).map_or(0, |i| i + 1);
        let overtaken = Self::buffers_in(st.queue.range(at..));
        st.queue.insert(at, Queued::Priority(event.encode()));
        self.send_unlocking(st);
        Ok(overtaken)
    }

    /// The buffers among queued frames (cheap clones).
    fn buffers_in<'a>(queued: impl Iterator<Item = &'a Queued>) -> Vec<Encoded> {
        queued
            .filter_map(|q| match q {
                Queued::Buffer { buffer, .. } => Some(buffer.clone()),
                _ => None,
            })
            .collect()
    }

    /// Whether the aligned barrier of checkpoint `id` still waits in this queue.
    pub fn holds_barrier(&self, id: u64) -> bool {
        self.state.lock().queue.iter().any(|q| q.barrier().is_some_and(|b| b.id == id))
    }

    /// Turns the aligned barrier of checkpoint `id`, if it still waits in this queue, into an
    /// unaligned one sent with priority: it moves ahead of the buffers queued before it (right
    /// after the last event before it) and is marked unaligned. Returns the buffers it
    /// overtook (output channel state), or `None` if the barrier already left.
    pub fn prioritize_barrier(self: &Arc<Self>, id: u64) -> Option<Vec<Encoded>> {
        let mut st = self.state.lock();
        let (pos, b) = st.queue.iter().enumerate().find_map(|(i, q)| q.barrier().filter(|b| b.id == id).map(|b| (i, b)))?;
        st.queue.remove(pos);
        let at = st.queue.range(..pos).rposition(|q| !q.is_buffer()).map_or(0, |i| i + 1);
        let overtaken = Self::buffers_in(st.queue.range(at..pos));
        st.queue.insert(at, Queued::Priority(Event::Barrier(crate::buffer::Barrier { unaligned: true, ..b }).encode()));
        self.send_unlocking(st);
        Some(overtaken)
    }

    /// Grants `n` credits; the first grant (from the `ANNOUNCE`) also allows sending at all.
    /// Sends what waited for them.
    fn add_credit(self: &Arc<Self>, n: u32) {
        let mut st = self.state.lock();
        st.credits = st.credits.saturating_add(n);
        st.announced = true;
        self.send_unlocking(st);
    }

    /// Fails the channel: queued frames are discarded and the sending task wakes; its next push
    /// returns `reason`.
    fn fail(&self, reason: &str) {
        let mut st = self.state.lock();
        if st.failure.is_none() {
            st.failure = Some(reason.to_string());
        }
        st.queue.clear();
        let waker = st.waker.clone();
        drop(st);
        self.space.notify_one();
        if let Some(w) = waker {
            w.notify();
        }
    }

    /// Moves what may be sent now into `out`, and takes the sending end off the ready list (a
    /// later push or credit puts it back). Returns true once the end of partition went out.
    ///
    /// Nothing goes before the announcement or after a failure. Frames leave in queue order:
    /// a buffer at the head without a credit stops the channel, and whatever is queued behind
    /// it waits too (only priority events get ahead of it). Each buffer sent uses a credit and
    /// frees a queue slot, waking a blocked sender.
    fn take_sendable(&self, out: &mut Vec<Outgoing>) -> bool {
        let mut st = self.state.lock();
        st.scheduled = false;
        if !st.announced || st.failure.is_some() {
            return false;
        }
        let mut freed = false;
        while let Some(front) = st.queue.front() {
            if front.is_buffer() {
                if st.credits == 0 {
                    break;
                }
                st.credits -= 1;
                st.buffers -= 1;
                freed = true;
            }
            let queued = st.queue.pop_front().expect("front exists");
            out.push(Outgoing::Frame(self.id, queued, st.buffers as u32));
        }
        let done = st.ended && st.queue.is_empty();
        let waker = if freed && st.buffers < st.capacity { st.waker.clone() } else { None };
        drop(st);
        if freed {
            self.space.notify_one();
            if let Some(w) = waker {
                w.notify();
            }
        }
        done
    }

    /// Buffers queued and waiting for credit, and the receiver's credit not used yet (for
    /// tests and metrics).
    pub fn queued_buffers(&self) -> usize {
        self.state.lock().buffers
    }

    pub fn queue_and_credit(&self) -> (usize, usize) {
        let st = self.state.lock();
        (st.buffers, st.credits as usize)
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

    fn network(sender_queue_buffers: usize) -> NetworkConfig {
        NetworkConfig {
            segment_size: 32 << 10,
            buffers_per_channel: 2,
            floating_buffers_per_gate: 0,
            sender_queue_buffers,
            buffer_timeout: Duration::from_millis(10),
            memory_max: 1 << 30,
            debloat: None,
        }
    }

    /// An environment on a free loopback port, without token or TLS.
    async fn start(id: &str, sender_queue_buffers: usize) -> Arc<NetworkEnvironment> {
        NetworkEnvironment::start(id, "127.0.0.1:0", &network(sender_queue_buffers), NetSecurity::none()).await.unwrap()
    }

    async fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !cond() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Channel 0 → 0 of job 1 from `a` to `b`, registered on both ends, into a gate of
    /// `credits` exclusive and `floating` floating credits.
    fn tcp_channel(
        a: &Arc<NetworkEnvironment>,
        b: &Arc<NetworkEnvironment>,
        credits: usize,
        floating: usize,
    ) -> (Arc<InputGate>, Arc<RemoteSubpartition>) {
        let id = ChannelId { job: 1, attempt: 0, edge: 0, from: 0, to: 0 };
        let credit_return = b.credit_return(vec![Some((id, a.tm_id().into(), a.local_addr().to_string()))]);
        let gate = Arc::new(InputGate::new(credits, vec![Some(credit_return)]).with_floating(floating));
        b.register_input(id, gate.clone(), 0, a.tm_id(), &a.local_addr().to_string());
        let sub = a.register_output(id, b.tm_id(), &b.local_addr().to_string());
        (gate, sub)
    }

    /// A sending thread: buffers of the values `0..n`, then the end of partition.
    fn send_values(sub: &Arc<RemoteSubpartition>, n: i64) -> std::thread::JoinHandle<()> {
        let sub = sub.clone();
        std::thread::spawn(move || {
            for v in 0..n {
                sub.push_blocking(batch(v)).unwrap();
            }
            sub.push_blocking(Item::Event(Event::EndOfPartition)).unwrap();
        })
    }

    /// The value of a one-row buffer taken from a gate.
    fn value(item: GatePoll) -> i64 {
        match item {
            GatePoll::Item(_, Item::Encoded(encoded)) => {
                encoded.decode().unwrap().column(0).as_any().downcast_ref::<Int64Array>().unwrap().value(0)
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    /// Takes every buffer left on `gate` until it is finished, on a blocking thread.
    async fn receive_rest(gate: &Arc<InputGate>) -> Vec<i64> {
        let g = gate.clone();
        tokio::task::spawn_blocking(move || {
            let mut got = Vec::new();
            loop {
                match g.poll(Some(Instant::now() + Duration::from_secs(30))) {
                    GatePoll::Item(_, Item::Event(Event::EndOfPartition)) => {}
                    GatePoll::Finished => return got,
                    item => got.push(value(item)),
                }
            }
        })
        .await
        .unwrap()
    }

    /// A gate's buffer size reaches its remote sender in a `BUFFER_SIZE` frame: sent before the
    /// sending end is registered it waits with the pending announcement, and later ones
    /// replace it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_debloated_buffer_size_reaches_the_remote_sender() {
        let a = start("tm-a", 4).await;
        let b = start("tm-b", 4).await;
        let id = ChannelId { job: 1, attempt: 0, edge: 0, from: 0, to: 0 };
        let credit_return = b.credit_return(vec![Some((id, a.tm_id().into(), a.local_addr().to_string()))]);
        let gate = Arc::new(InputGate::new(2, vec![Some(credit_return)]));
        b.register_input(id, gate.clone(), 0, a.tm_id(), &a.local_addr().to_string());
        // Before the sending end exists: kept with the announcement on `a`'s link to `b`.
        gate.announce_buffer_size(3000);
        let link = a.link(b.tm_id(), Some(&b.local_addr().to_string()));
        wait_until("the pending size", || link.state.lock().pending_announces.get(&id).is_some_and(|p| p.buffer_size == 3000)).await;
        let sub = a.register_output(id, b.tm_id(), &b.local_addr().to_string());
        assert_eq!(sub.buffer_size(), Some(3000), "taken from the pending announcement");
        assert_eq!(sub.queue_and_credit().1, 2, "with its credits");
        gate.announce_buffer_size(20_000);
        wait_until("the new size", || sub.buffer_size() == Some(20_000)).await;
    }

    /// Two environments on loopback, a channel from `a` to `b` with 2 credits: the sender
    /// queues at most its queue capacity beyond the credits, the receiver never holds more
    /// than its credits, and everything arrives in order once the receiver drains.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn credits_bound_in_flight_buffers_across_tcp() {
        let a = start("tm-a", 2).await;
        let b = start("tm-b", 2).await;
        let (gate, sub) = tcp_channel(&a, &b, 2, 0);
        let sender = send_values(&sub, 10);
        // Receiver does not consume: 2 buffers arrive (credits), 2 wait at the sender.
        wait_until("credits used", || gate.queued_buffers(0) == 2 && sub.queued_buffers() == 2).await;
        assert!(!sender.is_finished(), "the sending task must be blocked by backpressure");
        assert_eq!(receive_rest(&gate).await, (0..10).collect::<Vec<_>>());
        sender.join().unwrap();
    }

    /// A channel with 2 exclusive credits in a gate with 3 floating ones: once its sender
    /// reports a backlog, the gate grants it the pool over TCP and it holds 5 buffers; every
    /// buffer still arrives in order, and the pool is whole again at the end.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_sender_with_a_backlog_gets_floating_credits_across_tcp() {
        let a = start("tm-a", 4).await;
        let b = start("tm-b", 4).await;
        let (gate, sub) = tcp_channel(&a, &b, 2, 3);
        let sender = send_values(&sub, 12);
        // The exclusive credits are used and the sender's queue is full: a backlog. The sender
        // reports it with its next buffer: at once if it had queued buffers before the
        // announcement came, else once the task takes a buffer and a credit goes back.
        wait_until("exclusive credits used", || gate.queued_buffers(0) >= 2 && sub.queued_buffers() == 4).await;
        let mut got = Vec::new();
        if gate.floating_free() == 3 {
            got.push(value(gate.poll(Some(Instant::now() + Duration::from_secs(30)))));
        }
        // The gate granted its pool, and the channel fills a window of 2 + 3 (less the one
        // taken, if the grant came just before it).
        wait_until("floating credits used", || gate.floating_free() == 0 && gate.queued_buffers(0) + got.len() >= 5).await;
        assert!(gate.queued_buffers(0) > 2, "the channel holds more than its exclusive credits");
        got.extend(receive_rest(&gate).await);
        assert_eq!(got, (0..12).collect::<Vec<_>>());
        assert_eq!(gate.floating_free(), 3, "the floating credits are back in the pool");
        sender.join().unwrap();
    }

    /// Four channels over one link, each fed by its own thread, with buffers far larger than
    /// the socket takes at once: the sending threads write directly, leave what the socket did
    /// not take to the writer (which must have happened), and every channel's buffers still
    /// arrive whole and in order.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn direct_sends_keep_each_channels_order_when_the_socket_is_full() {
        const CHANNELS: u32 = 4;
        const BUFFERS: i64 = 60;
        const ROWS: usize = 100_000; // 800 KB a buffer
        let a = start("tm-a", 2).await;
        let b = start("tm-b", 2).await;
        let (a_addr, b_addr) = (a.local_addr().to_string(), b.local_addr().to_string());
        let mut receivers = Vec::new();
        let mut senders = Vec::new();
        for c in 0..CHANNELS {
            let id = ChannelId { job: 7, attempt: 0, edge: 0, from: c, to: 0 };
            let credits = b.credit_return(vec![Some((id, "tm-a".into(), a_addr.clone()))]);
            let gate = Arc::new(InputGate::new(4, vec![Some(credits)]));
            b.register_input(id, gate.clone(), 0, "tm-a", &a_addr);
            receivers.push(tokio::task::spawn_blocking(move || {
                let mut next = 0;
                loop {
                    match gate.poll(Some(Instant::now() + Duration::from_secs(60))) {
                        GatePoll::Item(_, Item::Encoded(encoded)) => {
                            let batch = encoded.decode().unwrap();
                            let col = batch.column(0).as_any().downcast_ref::<Int64Array>().unwrap();
                            assert_eq!(col.len(), ROWS);
                            assert!(col.values().iter().all(|&v| v == next), "buffer {next} arrived whole and in order");
                            next += 1;
                        }
                        GatePoll::Item(_, Item::Event(Event::EndOfPartition)) => {}
                        GatePoll::Finished => return next,
                        other => panic!("unexpected {other:?}"),
                    }
                }
            }));
            let sub = a.register_output(id, "tm-b", &b_addr);
            senders.push(std::thread::spawn(move || {
                for v in 0..BUFFERS {
                    let rows = Int64Array::from(vec![v; ROWS]);
                    sub.push_blocking(Item::Buffer(RecordBatch::try_from_iter(vec![("v", Arc::new(rows) as _)]).unwrap())).unwrap();
                }
                sub.push_blocking(Item::Event(Event::EndOfPartition)).unwrap();
            }));
        }
        for s in senders {
            s.join().unwrap();
        }
        for r in receivers {
            assert_eq!(r.await.unwrap(), BUFFERS);
        }
        let link = a.peers.lock().get("tm-b").cloned().expect("the link to tm-b");
        assert!(
            link.handed_over.load(std::sync::atomic::Ordering::Relaxed) > 0,
            "the socket must have been full at least once, so that the writer took over"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn priority_event_overtakes_buffers_waiting_for_credit() {
        let a = start("tm-a", 8).await;
        let b = start("tm-b", 8).await;
        let id = ChannelId { job: 2, attempt: 0, edge: 0, from: 0, to: 0 };
        let credits = b.credit_return(vec![Some((id, "tm-a".into(), a.local_addr().to_string()))]);
        let gate = Arc::new(InputGate::new(1, vec![Some(credits)]));
        let sub = a.register_output(id, "tm-b", &b.local_addr().to_string());
        for v in 0..4 {
            sub.push_blocking(batch(v)).unwrap();
        }
        b.register_input(id, gate.clone(), 0, "tm-a", &a.local_addr().to_string());
        wait_until("first buffer", || gate.queued_buffers(0) == 1).await;
        assert_eq!(sub.push_priority(Event::CancelCheckpoint(9)).unwrap().len(), 3, "the sender keeps the 3 buffers it overtook");
        // The event needs no credit and overtakes the 3 buffers still queued at the sender, and
        // at the receiver the one already delivered but not taken.
        wait_until("the priority event", || gate.queued_items(0) == 2).await;
        let g = gate.clone();
        let (first, overtaken) = tokio::task::spawn_blocking(move || match g.poll(Some(Instant::now() + Duration::from_secs(30))) {
            GatePoll::Priority { event, overtaken, .. } => (event, overtaken.len()),
            other => panic!("unexpected {other:?}"),
        })
        .await
        .unwrap();
        assert_eq!((first, overtaken), (Event::CancelCheckpoint(9), 1));
    }

    /// The receiver returns a credit for every buffer it takes, also after the sender's end of
    /// partition went out. Those late credits must not bring the finished channel back as an
    /// output that never ends (and that the writer would scan on every wake from then on).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn credits_returned_after_end_of_partition_do_not_revive_the_channel() {
        let a = start("tm-a", 8).await;
        let b = start("tm-b", 8).await;
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
        // Its sending task is not deployed: the announcement waits on the link.
        let link = a.peers.lock().get("tm-b").cloned().unwrap();
        wait_until("the second channel's announcement", || link.state.lock().pending_announces.contains_key(&later)).await;
        assert!(a.outputs.lock().is_empty(), "the finished channel came back");
        assert!(link.state.lock().subs.is_empty());
        let sub = a.register_output(later, "tm-b", &b.local_addr().to_string());
        assert_eq!(sub.state.lock().credits, 4, "the sending end takes the pending announcement");
        assert!(link.state.lock().pending_announces.is_empty());

        // The receiver forgets the job's input channels when the job ends there.
        b.release_inputs(4, 0);
        let link = b.peers.lock().get("tm-a").cloned().unwrap();
        assert!(link.state.lock().input_channels.is_empty());
    }

    /// What waits in a sending end's queue, as (has a schema frame, buffer address) per buffer.
    fn queued(sub: &RemoteSubpartition) -> Vec<(bool, usize)> {
        sub.state
            .lock()
            .queue
            .iter()
            .filter_map(|q| match q {
                Queued::Buffer { schema, buffer } => Some((schema.is_some(), buffer.address())),
                _ => None,
            })
            .collect()
    }

    /// The schema goes with a channel's first buffer and again only when it changes.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_schema_travels_once_per_channel_and_again_when_it_changes() {
        let a = start("tm-a", 8).await;
        let b = start("tm-b", 8).await;
        // No receiver announces the channel: everything stays queued for inspection.
        let sub = a.register_output(ChannelId { job: 5, attempt: 0, edge: 0, from: 0, to: 0 }, "tm-b", &b.local_addr().to_string());
        for v in 0..3 {
            sub.push(batch(v)).unwrap();
        }
        let other = RecordBatch::try_from_iter(vec![("w", Arc::new(Int64Array::from(vec![1])) as _)]).unwrap();
        sub.push(Item::Buffer(other)).unwrap();
        sub.push(batch(4)).unwrap();
        let schemas: Vec<bool> = queued(&sub).into_iter().map(|(schema, _)| schema).collect();
        assert_eq!(schemas, vec![true, false, false, true, true]);
    }

    /// A broadcast edge encodes each buffer once, whatever its number of remote channels.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_broadcast_buffer_is_encoded_once_for_every_remote_channel() {
        use crate::partition::{ChannelWriter, OutputEdge, ResultPartition};
        let a = start("tm-a", 8).await;
        let b = start("tm-b", 8).await;
        let subs: Vec<_> = (0..3)
            .map(|to| a.register_output(ChannelId { job: 6, attempt: 0, edge: 0, from: 0, to }, "tm-b", &b.local_addr().to_string()))
            .collect();
        let channels = subs.iter().cloned().map(ChannelWriter::Remote).collect();
        let edge = OutputEdge::new(weir_core::graph::Partitioning::Broadcast, None, 128, channels, 0);
        let mut partition = ResultPartition::new(vec![edge], 32 << 10, Duration::from_secs(60));
        for v in 0..2 {
            let Item::Buffer(b) = batch(v) else { unreachable!() };
            partition.emit(b).unwrap();
            partition.flush_all().unwrap();
        }
        let first = queued(&subs[0]);
        assert_eq!(first.len(), 2);
        for sub in &subs[1..] {
            assert_eq!(queued(sub), first, "the same encoded buffers, schema frames on each channel");
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn lost_peer_fails_channels_naming_it() {
        let a = start("tm-a", 2).await;
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
