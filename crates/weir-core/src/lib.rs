//! Weir's data model, shared by every other crate: configuration keys and their parsing,
//! job files and the JobGraph they compile to, key groups, and the batch-at-a-time operator
//! interfaces that sources, transforms and sinks implement.

pub mod config;
pub mod graph;
pub mod job;
pub mod keygroup;
pub mod operator;
pub mod retry;
pub mod settings;

pub use config::{Config, ConfigError};
pub use graph::{Edge, JobGraph, OperatorSpec, Partitioning, Vertex};
pub use job::JobError;
pub use keygroup::KeyGroupRange;
