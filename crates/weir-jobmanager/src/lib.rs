//! The JobManager: cluster membership (TaskManager registration and heartbeats), job
//! submission, slot allocation and scheduling, the job lifecycle, checkpoint coordination and
//! failover. Its gRPC service is used by TaskManagers and by the CLI.
//!
//! How the modules stand to each other (each uses only those below it):
//!
//! ```text
//!  lib ── service, recover ──┐
//!  driver ── scheduler, failover ──┐
//!                          state ── job ── lifecycle, coordinator, restart
//!                            ├── program (program jobs: functions, placement, refusal)
//!                            └── coordinate ── effects ── catalog
//! ```
//! - Pure state machines: `lifecycle` (job states), `coordinator` (checkpoints), `restart`
//!   (restart strategies). No I/O, no clock: time is an input.
//! - `state`: all cluster state under one lock, never held across an `.await`; every change
//!   returns the effects it calls for.
//! - `effects`: performs them (RPCs, storage, catalog, timers); outcomes come back as
//!   follow-ups, which `driver` routes to `state` again.
//!
//! A TaskManager silent for `heartbeat.timeout` is removed, and every job with a subtask on it
//! fails naming it.

mod catalog;
mod clock;
mod coordinate;
mod coordinator;
mod driver;
mod effects;
mod failover;
mod job;
mod lifecycle;
mod metrics;
mod program;
mod recover;
mod rest;
mod restart;
mod savepoint;
mod scheduler;
mod service;
mod state;
mod ui;

use effects::Executor;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::sync::watch;
use weir_core::config::Config;
use weir_core::settings::{is_cluster_only_key, JobManagerConfig, SecurityConfig};
use weir_proto::job_manager_service_server::JobManagerServiceServer;
use weir_proto::security::{self, Dialer, TokenCheck};

pub use state::JobManagerState;

#[derive(Debug, thiserror::Error)]
pub enum JobManagerError {
    #[error("cannot bind the JobManager RPC port {addr}: {source}")]
    Bind { addr: String, source: std::io::Error },
    #[error("cannot bind the REST API (rest.bind-address, rest.port) at {addr}: {error}")]
    RestBind { addr: String, error: std::io::Error },
    #[error("cannot open the job catalog jobmanager.catalog.dir = {dir}: {source}")]
    Catalog { dir: String, source: std::io::Error },
    #[error(transparent)]
    Config(#[from] weir_core::ConfigError),
    #[error(transparent)]
    Security(#[from] security::SecurityError),
    /// A program's job the JobManager did not accept.
    #[error("job not accepted: {0}")]
    Submit(String),
}

/// One job a SQL script compiled to: its graph (JSON of `weir_core::graph::JobGraph`) and the
/// job's own settings (its `SET`s and job options), as `weir run script.sql` submits it.
#[derive(Debug, Clone)]
pub struct SqlJob {
    pub graph_json: String,
    pub settings: std::collections::BTreeMap<String, String>,
    /// The job's statement runs a query whose rows would go back to a client (a `SELECT`
    /// without `INSERT INTO`): only the SQL client can run it.
    pub query: bool,
}

/// What a SQL script compiled to: its jobs, what `SHOW`, `DESCRIBE` and `EXPLAIN` printed, and
/// notices for the user.
#[derive(Debug, Clone, Default)]
pub struct CompiledSql {
    pub jobs: Vec<SqlJob>,
    pub output: Vec<String>,
    pub notices: Vec<String>,
}

/// Compiles SQL scripts for `POST /jobs`: `(script, cluster configuration, the request's
/// configuration overrides)`; an error names the line and column. The JobManager does not link
/// the SQL planner itself: the `weir` binary hands it in ([`start_with_sql`]).
pub type SqlCompiler = Arc<dyn Fn(&str, &Config, &Config) -> Result<CompiledSql, String> + Send + Sync>;

/// A started JobManager.
pub struct JobManagerHandle {
    pub rpc_addr: SocketAddr,
    /// Where the REST API listens.
    pub rest_addr: SocketAddr,
    state: Arc<JobManagerState>,
    executor: Executor,
    shutdown: watch::Sender<bool>,
}

impl JobManagerHandle {
    /// Stops the JobManager. Jobs that have not ended are recorded SUSPENDED in the catalog:
    /// a JobManager started on it resumes them.
    pub fn shutdown(&self) {
        self.executor.perform(self.state.suspend_all());
        let _ = self.shutdown.send(true);
    }

    /// Submits a JobGraph built in this process by a DataStream program, under the cluster's
    /// configuration plus `overrides` (from `execution.savepoint.path` if they set it); returns
    /// the job id and the warnings of its restore. Its TaskManagers must have been started with
    /// the program's functions.
    pub async fn submit_graph(
        &self,
        graph: weir_core::graph::JobGraph,
        overrides: &Config,
    ) -> Result<(String, Vec<String>), JobManagerError> {
        service::submit_graph(&self.state, &self.executor, graph, overrides).await.map_err(JobManagerError::Submit)
    }

    /// Cancels a job, as `CancelJob` does: at once if it runs no tasks, else once its tasks
    /// stopped. An unknown id is an error naming it.
    pub fn cancel_job(&self, id: &str) -> Result<(), JobManagerError> {
        let effects = self.state.cancel_job(id).map_err(JobManagerError::Submit)?;
        self.executor.perform(effects);
        Ok(())
    }

    /// Takes a savepoint of a job (`stop`: then stops it, as `weir stop`) into a new folder under
    /// `directory` (empty: the job's `execution.checkpointing.savepoint-dir`), in the canonical
    /// format; returns the folder once its `_metadata` is written. Errors say why it failed.
    pub async fn savepoint(&self, id: &str, directory: &str, stop: bool) -> Result<String, JobManagerError> {
        let rpc = service::JobManagerRpc { state: self.state.clone(), executor: self.executor.clone() };
        let mode = stop.then_some(coordinator::StopMode::Suspend);
        rpc.savepoint(id, directory, false, mode).await.map(|r| r.path).map_err(|s| JobManagerError::Submit(s.message().to_string()))
    }

    /// A job's state, failure and counters, as `GetJob` answers; `None` for an unknown id.
    pub fn job_status(&self, id: &str) -> Option<weir_proto::JobStatus> {
        self.state.job_status(id)
    }

    /// A job's checkpoint history, as `ListCheckpoints` answers; `None` for an unknown id.
    pub fn checkpoints(&self, id: &str) -> Option<Vec<weir_proto::CheckpointInfo>> {
        self.state.checkpoint_history(id)
    }
}

/// Starts the JobManager's gRPC server on `bind` (host:port; port 0 picks a free one) with the
/// cluster configuration `config`. With `security.token` every call must carry the token,
/// with `security.ssl.internal.enabled` it is TLS with client certificates; the JobManager
/// calls its TaskManagers the same way.
pub async fn start(config: Config, bind: &str) -> Result<JobManagerHandle, JobManagerError> {
    start_with_sql(config, bind, None).await
}

/// [`start`], with a SQL compiler for `POST /jobs` of SQL scripts (without one they are refused).
pub async fn start_with_sql(config: Config, bind: &str, sql: Option<SqlCompiler>) -> Result<JobManagerHandle, JobManagerError> {
    let settings = JobManagerConfig::from_config(&config);
    let (rest_port, rest_bind_address) = (settings.rest_port, settings.rest_bind_address.clone());
    let security = SecurityConfig::from_config(&config)?;
    let mut server = security::server(&security)?;
    let dialer = Dialer::new(&security)?;
    let listener = tokio::net::TcpListener::bind(bind).await.map_err(|source| JobManagerError::Bind { addr: bind.to_string(), source })?;
    let rpc_addr = listener.local_addr().map_err(|source| JobManagerError::Bind { addr: bind.to_string(), source })?;
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let catalog = match &settings.catalog_dir {
        Some(dir) => Some(catalog::Catalog::open(dir).map_err(|source| JobManagerError::Catalog { dir: dir.clone(), source })?),
        None => None,
    };
    let (followups_tx, followups_rx) = tokio::sync::mpsc::unbounded_channel();
    let executor = Executor::new(followups_tx, catalog.clone());
    // The cluster's secrets stay with this process: jobs are compiled under the rest, so no
    // job's configuration (deployed to TaskManagers, recorded in the catalog) carries them.
    let job_base = Config::from_pairs(config.explicit().iter().filter(|(key, _)| !is_cluster_only_key(key)))?;
    let state = Arc::new(JobManagerState::new(job_base, settings, dialer));
    tokio::spawn(driver::run(state.clone(), executor.clone(), followups_rx, shutdown_rx.clone()));
    if let Some(catalog) = &catalog {
        recover::recover_jobs(&state, &executor, catalog).await;
    }
    tokio::spawn(failover::heartbeat_monitor(state.clone(), executor.clone(), shutdown_rx.clone()));
    // The REST API: bound before anything answers, so a taken port fails the start.
    let rest_host = rest_bind_address.unwrap_or_else(|| rpc_addr.ip().to_string());
    let rest_bind = if rest_host.contains(':') && !rest_host.starts_with('[') {
        format!("[{rest_host}]:{rest_port}")
    } else {
        format!("{rest_host}:{rest_port}")
    };
    let rest_listener =
        tokio::net::TcpListener::bind(&rest_bind).await.map_err(|error| JobManagerError::RestBind { addr: rest_bind.clone(), error })?;
    let rest_addr = rest_listener.local_addr().map_err(|error| JobManagerError::RestBind { addr: rest_bind.clone(), error })?;
    let rest_api =
        rest::Rest::new(service::JobManagerRpc { state: state.clone(), executor: executor.clone() }, TokenCheck::new(&security), sql);
    tokio::spawn(rest::serve(rest_listener, rest_api, shutdown_rx.clone()));
    let service = service::JobManagerRpc { state: state.clone(), executor: executor.clone() };
    let mut server_shutdown = shutdown_rx;
    let token_check = TokenCheck::new(&security);
    tokio::spawn(async move {
        let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
        let service = JobManagerServiceServer::new(service).max_decoding_message_size(weir_proto::MAX_MESSAGE_BYTES);
        let result = server
            .add_service(tonic::service::interceptor::InterceptedService::new(service, token_check))
            .serve_with_incoming_shutdown(incoming, async move {
                let _ = server_shutdown.wait_for(|s| *s).await;
            })
            .await;
        if let Err(e) = result {
            tracing::error!("JobManager RPC server failed: {e}");
        }
    });
    tracing::info!(rpc = %rpc_addr, rest = %rest_addr, tls = security.tls.is_some(), token = security.token.is_some(), "JobManager started");
    security::warn_if_open("The JobManager", rpc_addr, &security);
    security::warn_if_open("The REST API", rest_addr, &security);
    Ok(JobManagerHandle { rpc_addr, rest_addr, state, executor, shutdown: shutdown_tx })
}
