//! The JobManager: cluster membership (TaskManager registration and heartbeats), job
//! submission and compilation, slot allocation and scheduling, and the job lifecycle
//! (CREATED → RUNNING → FINISHED / FAILED / CANCELED). Its gRPC service is used by
//! TaskManagers and by the CLI.
//!
//! Invariants: all cluster state sits behind one lock that is never held across an `.await`;
//! calls to TaskManagers are made after releasing it. A TaskManager silent for
//! `heartbeat.timeout` is removed, and every job with a subtask on it fails naming it.

mod catalog;
mod checkpoint;
mod coordinate;
mod recover;
mod restart;
mod scheduler;
mod service;
mod state;

use std::net::SocketAddr;
use std::sync::Arc;
use tokio::sync::watch;
use weir_core::config::{keys, Config};
use weir_proto::job_manager_service_server::JobManagerServiceServer;

pub use state::JobManagerState;

#[derive(Debug, thiserror::Error)]
pub enum JobManagerError {
    #[error("cannot bind the JobManager RPC port {addr}: {source}")]
    Bind { addr: String, source: std::io::Error },
    #[error("cannot open the job catalog jobmanager.catalog.dir = {dir}: {source}")]
    Catalog { dir: String, source: std::io::Error },
}

/// A started JobManager.
pub struct JobManagerHandle {
    pub rpc_addr: SocketAddr,
    shutdown: watch::Sender<bool>,
}

impl JobManagerHandle {
    pub fn shutdown(&self) {
        let _ = self.shutdown.send(true);
    }
}

/// Starts the JobManager's gRPC server on `bind` (host:port; port 0 picks a free one) with the
/// cluster configuration `config`.
pub async fn start(config: Config, bind: &str) -> Result<JobManagerHandle, JobManagerError> {
    let listener = tokio::net::TcpListener::bind(bind).await.map_err(|source| JobManagerError::Bind { addr: bind.to_string(), source })?;
    let rpc_addr = listener.local_addr().map_err(|source| JobManagerError::Bind { addr: bind.to_string(), source })?;
    let (shutdown_tx, mut shutdown_rx) = watch::channel(false);
    let catalog = match config.text(keys::JOBMANAGER_CATALOG_DIR) {
        Some(dir) => Some(catalog::Catalog::open(dir).map_err(|source| JobManagerError::Catalog { dir: dir.to_string(), source })?),
        None => None,
    };
    let state = Arc::new(JobManagerState::new(config.clone(), catalog));
    recover::recover_jobs(&state).await;
    tokio::spawn(state::heartbeat_monitor(state.clone(), config.duration(keys::HEARTBEAT_TIMEOUT), shutdown_rx.clone()));
    let service = service::JobManagerRpc { state };
    tokio::spawn(async move {
        let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
        let result = tonic::transport::Server::builder()
            .add_service(JobManagerServiceServer::new(service))
            .serve_with_incoming_shutdown(incoming, async move {
                let _ = shutdown_rx.wait_for(|s| *s).await;
            })
            .await;
        if let Err(e) = result {
            tracing::error!("JobManager RPC server failed: {e}");
        }
    });
    tracing::info!(rpc = %rpc_addr, "JobManager started");
    Ok(JobManagerHandle { rpc_addr, shutdown: shutdown_tx })
}
