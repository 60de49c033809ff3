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

/// An error and every source below it as one line: `outer: cause: root cause`.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut msg = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        msg = format!("{msg}: {s}");
        cur = s.source();
    }
    msg
}
