//! Weir's task runtime: the data plane (channels, credit-based flow control, the TCP exchange
//! between TaskManagers), the channel wiring rules, the built-in operators, and the task loop
//! that runs an operator chain for one subtask. Sources and sinks come from a
//! [`weir_core::operator::ConnectorFactory`] the TaskManager hands in: the runtime does not
//! know the connectors. See `docs/architecture.md` for the path of a record through it.
//!
//! ## Map
//! - [`wiring`]: which channels a subtask reads and writes, from the JobGraph alone.
//! - [`buffer`]: what a channel carries (buffers, events) and their encoding.
//! - [`gate`]: the receiving end of a task's channels: credits, priority, blocking.
//! - [`debloat`]: buffer debloating: the buffer size a gate asks its senders for, from its
//!   task's throughput.
//! - [`metrics`]: a task's live counters (rows, bytes, busy/idle/backpressured time, queues,
//!   its last checkpoint), published by its thread, sampled by the TaskManager.
//! - [`partition`]: the sending end: partitioning, output batching, flush deadlines.
//! - [`net`]: the TCP exchange between TaskManagers: one connection per pair, credit frames,
//!   the handshake (token, TLS) and the checks every frame passes.
//! - [`barrier`]: the barrier handler, the pure state machine of checkpoint alignment: aligned,
//!   unaligned, and aligned until a timeout.
//! - [`operators`]: the built-in transforms (the throttle included) and the operator chain.
//! - [`task`]: the thread that runs one subtask, never blocking in a send, and takes its part of
//!   each checkpoint (channel state included).
//! - [`user`]: the functions of a DataStream program, resolved through the registry the
//!   TaskManager hands in, with panics in user code turned into task failures.
//! - [`wake`]: the one thing a task waits on.
//! - [`watermarks`]: event time: the watermark generator of assigners and the valve that
//!   combines a task's input channels.
//!
//! ## Checkpoints
//! Exactly-once with aligned barriers, unaligned barriers (priority events that overtake
//! in-flight data, which is stored as channel state), or aligned barriers that turn unaligned
//! after `aligned-checkpoint-timeout`; or at-least-once without alignment. See
//! `docs/checkpointing.md`.

pub mod barrier;
pub mod buffer;
pub mod debloat;
pub mod gate;
pub mod metrics;
pub mod net;
pub mod operators;
pub mod partition;
pub mod sql;
pub mod task;
pub mod user;
pub mod wake;
pub mod watermarks;
pub mod wiring;

pub use buffer::{ChannelId, Event, Item};
pub use gate::InputGate;
pub use net::NetworkEnvironment;
pub use task::{Task, TaskDescriptor, TaskEvent, TaskState};
pub use wiring::{ChannelPlan, WiringError};
