//! Weir's task runtime: the data plane (channels, credit-based flow control, the TCP exchange
//! between TaskManagers), the channel wiring rules, the built-in operators, and the task loop
//! that runs an operator chain for one subtask. Sources and sinks come from a
//! [`weir_core::operator::ConnectorFactory`] the TaskManager hands in: the runtime does not
//! know the connectors. See `docs/architecture.md` for the path of a record through it.

pub mod barrier;
pub mod buffer;
pub mod gate;
pub mod net;
pub mod operators;
pub mod partition;
pub mod task;
pub mod wiring;

pub use buffer::{ChannelId, Event, Item};
pub use gate::InputGate;
pub use net::NetworkEnvironment;
pub use task::{Task, TaskDescriptor, TaskEvent, TaskState};
pub use wiring::{ChannelPlan, WiringError};
