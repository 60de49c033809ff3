//! Generated tonic/prost code for Weir's control plane (`proto/weir/v1`), and nothing else.
#![allow(clippy::all)]

pub mod v1 {
    tonic::include_proto!("weir.v1");
}

pub use v1::*;
