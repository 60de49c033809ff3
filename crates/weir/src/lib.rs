//! Weir's DataStream API: Flink-style programs in Rust, with the program's own functions
//! running on Weir's runtime, batch at a time, checkpointed like the built-in operators.
//!
//! ```no_run
//! use weir::prelude::*;
//! use std::time::Duration;
//!
//! let mut env = StreamExecutionEnvironment::get_execution_environment();
//! env.set_parallelism(2).enable_checkpointing(Duration::from_secs(10));
//! env.from_iter(vec!["to be".to_string(), "or not".to_string()])
//!     .flat_map(|line: String, out: &mut Vec<(String, i64)>| {
//!         out.extend(line.split_whitespace().map(|w| (w.to_string(), 1)))
//!     })
//!     .key_by(|(word, _): &(String, i64)| word.clone())
//!     .sum(|(_, n): &mut (String, i64)| n)
//!     .print();
//! env.execute("word count").unwrap();
//! ```
//!
//! How it fits together:
//! - [`env`]: the environment and its configuration, written as `weir-core` configuration
//!   keys and validated by the same typed settings as a job file;
//! - [`stream`]: sources, transforms, keyed reductions and sinks, each appending an operator
//!   to the program; [`program`](crate::program) turns them into a JobGraph whose user
//!   operators are `OperatorSpec::User { function, .. }`;
//! - [`functions`](crate::functions): the batch operators that call the closures, registered by
//!   function id in the registry the TaskManagers get (`weir_runtime::user`);
//! - [`process`] and [`state`]: `process` on a keyed stream, a [`KeyedProcessFunction`] with
//!   keyed state and processing-time timers, all in the job's keyed state backend;
//! - [`event_time`]: timestamps and watermarks ([`WatermarkStrategy`]); event-time timers fire
//!   as watermarks pass them;
//! - [`records`]: user records as Arrow batches (one postcard-encoded `Binary` column);
//! - [`minicluster`] and [`JobClient`]: `execute` runs the job on an embedded JobManager and
//!   TaskManagers, the same processes a cluster runs, on loopback;
//! - [`application`]: application mode, one binary that is the program, its JobManager and
//!   its TaskManagers (`weir::application::main`).
//!
//! See `docs/datastream.md` for the mapping from Flink's Java API and what is not built yet.

pub mod application;
mod client;
pub mod env;
pub mod event_time;
mod functions;
pub mod minicluster;
pub mod process;
mod program;
pub mod records;
pub mod state;
pub mod stream;
mod timers;

pub use client::JobClient;
pub use env::{CheckpointConfig, CheckpointingMode, JobExecutionResult, StateBackend, StreamExecutionEnvironment};
pub use event_time::WatermarkStrategy;
pub use functions::{ProgramFunctions, Record};
pub use process::{Context, FunctionError, FunctionResult, KeyedProcessFunction, OnTimerContext, TimeDomain, TimerService};
pub use state::{
    ListState, ListStateDescriptor, MapState, MapStateDescriptor, ReducingState, ReducingStateDescriptor, ValueState, ValueStateDescriptor,
};
pub use stream::{DataStream, DataStreamSink, KeyedStream};

/// What a program's `execute` (or its configuration) can fail with.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// A configuration key set by the program (or one of the values together) is wrong; the
    /// message names the key.
    #[error(transparent)]
    Config(weir_core::ConfigError),
    /// The program's operators do not make a job (no operators, a duplicate uid, a parallelism
    /// out of bounds).
    #[error("invalid program: {0}")]
    Program(String),
    /// The embedded cluster did not start, or did not accept the job.
    #[error("embedded cluster: {0}")]
    Cluster(String),
    /// The job FAILED, after `restarts` restarts; `failure` names the task and its error.
    #[error("job {job_id} failed after {restarts} restart(s): {failure}")]
    JobFailed { job_id: String, restarts: u32, failure: String },
    #[error("job {job_id} was canceled")]
    JobCanceled { job_id: String },
}

/// Everything a program needs: `use weir::prelude::*;`.
pub mod prelude {
    pub use crate::{
        ApiError, CheckpointConfig, CheckpointingMode, Context, DataStream, DataStreamSink, FunctionError, FunctionResult, JobClient,
        JobExecutionResult, KeyedProcessFunction, KeyedStream, ListState, ListStateDescriptor, MapState, MapStateDescriptor,
        OnTimerContext, ReducingState, ReducingStateDescriptor, StateBackend, StreamExecutionEnvironment, TimeDomain, TimerService,
        ValueState, ValueStateDescriptor, WatermarkStrategy,
    };
}
