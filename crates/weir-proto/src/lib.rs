//! Weir's control plane on the wire: the tonic/prost code generated from `proto/weir/v1`, and
//! how every gRPC server and client of the cluster authenticates and encrypts it
//! ([`security`]), and the Prometheus exposition of task metrics every process serves
//! ([`metrics`]).

pub mod metrics;
pub mod security;

#[allow(clippy::all)]
pub mod v1 {
    tonic::include_proto!("weir.v1");
}

pub use v1::*;

/// The largest gRPC message any Weir server accepts and any Weir client sends (tonic's default
/// is 4 MiB). A deployment carries the compiled JobGraph and the checkpoint to restore; the
/// JobManager refuses at submission a job whose graph would not fit (see its `submit_job`).
pub const MAX_MESSAGE_BYTES: usize = 64 << 20;

/// A job state's name as users see it (`weir status`, the REST API): `RUNNING`, `CANCELING`, …;
/// an unknown value (a newer JobManager's) is `UNKNOWN`.
pub fn job_state_name(state: i32) -> &'static str {
    match JobState::try_from(state).unwrap_or(JobState::Unspecified) {
        JobState::Created => "CREATED",
        JobState::Running => "RUNNING",
        JobState::Finished => "FINISHED",
        JobState::Failed => "FAILED",
        JobState::Canceling => "CANCELING",
        JobState::Canceled => "CANCELED",
        JobState::Restarting => "RESTARTING",
        JobState::Finishing => "FINISHING",
        JobState::Suspended => "SUSPENDED",
        JobState::Unspecified => "UNKNOWN",
    }
}
