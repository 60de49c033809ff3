//! Weir's control plane on the wire: the tonic/prost code generated from `proto/weir/v1`, and
//! how every gRPC server and client of the cluster authenticates and encrypts it
//! ([`security`]).

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
