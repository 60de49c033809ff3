//! Flink-style SQL for Weir.
//!
//! A script of `SET`, `CREATE TABLE ... WITH (...)`, `CREATE VIEW` and `INSERT INTO ... SELECT`
//! statements ([`script`]) runs against a session's catalog ([`catalog`]); DataFusion plans each
//! query ([`planner`]), and [`compile`] translates the plan into the same JobGraph a YAML job
//! compiles to, so checkpoints, savepoints, rescaling and recovery work unchanged. The
//! operators those plans need (expressions over batches, updating aggregates over keyed
//! state, csv/json decoding, changelog printing) are in [`operators`]; the TaskManager hands
//! [`SqlRuntime`] to the runtime to build them.
//!
//! `docs/sql.md` lists every statement, connector option and function, and what is not
//! supported yet.

pub mod catalog;
pub mod compile;
pub mod error;
pub mod operators;
pub mod planner;
pub mod script;

pub use compile::{compile_script, CompiledJob, CompiledScript, Session};
pub use error::SqlError;
pub use operators::SqlRuntime;
