//! The embedded mini cluster, from the `weir` library crate (which DataStream programs share).

pub use weir::minicluster::MiniCluster;
