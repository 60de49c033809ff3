//! The TaskManager: offers slots to the JobManager, runs the subtasks deployed to it, wires
//! their channels (in-memory queues to local subtasks, the TCP data plane to remote ones), and
//! reports every task state change. It heartbeats the JobManager; when the JobManager no
//! longer knows it, or is silent for `heartbeat.timeout`, it cancels its tasks and registers
//! again.

mod deploy;
pub mod network_memory;
mod service;

use parking_lot::Mutex;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, watch};
use weir_core::config::Config;
use weir_core::operator::ConnectorFactory;
use weir_core::retry::{retry, Backoff, Failure};
use weir_core::settings::{SecurityConfig, TaskManagerConfig};
use weir_proto::job_manager_service_client::JobManagerServiceClient;
use weir_proto::metrics::{self, TaskSeries};
use weir_proto::security::{self, Dialer, GrpcChannel, SecurityError, Timeouts, TokenCheck};
use weir_proto::task_manager_service_server::TaskManagerServiceServer;
use weir_proto::{
    AcknowledgeCheckpointRequest, CheckpointKind, DeclineCheckpointRequest, ExecutionId, HeartbeatRequest, RegisterTaskManagerRequest,
    UpdateTaskStateRequest,
};
use weir_runtime::barrier::SnapshotKind;
use weir_runtime::metrics::{CheckpointFigures, TaskSample};
use weir_runtime::task::CheckpointAck;
use weir_runtime::user::{NoUserFunctions, UserFunctions};
use weir_runtime::{NetworkEnvironment, Task};

#[derive(Debug, thiserror::Error)]
pub enum TaskManagerError {
    #[error("cannot bind the TaskManager RPC port {addr}: {source}")]
    Bind { addr: String, source: std::io::Error },
    #[error("cannot bind the TaskManager's metrics endpoint (metrics.port) at {addr}: {source}")]
    MetricsBind { addr: String, source: std::io::Error },
    #[error(transparent)]
    Net(#[from] weir_runtime::net::NetError),
    #[error("taskmanager.host is auto, but no address of this machine reaches the JobManager at {addr}: {reason}")]
    NoRoute { addr: String, reason: String },
    #[error("cannot resolve taskmanager.host '{host}': {reason}")]
    Host { host: String, reason: String },
    #[error("bad JobManager address '{0}'")]
    JobManagerAddress(String),
    #[error(transparent)]
    Security(SecurityError),
}

/// A TaskManager's settings: its typed configuration plus what it is given at start.
#[derive(Debug, Clone)]
pub struct TaskManagerSettings {
    /// A fresh id (`tm-` and 12 hex digits) for each process.
    pub id: String,
    /// `host:port` of the JobManager it registers with.
    pub jobmanager: String,
    /// Host, ports, slots, heartbeats and network buffers (`taskmanager.*`, `heartbeat.*`).
    pub config: TaskManagerConfig,
    /// Working directory for state (RocksDB instances), from `taskmanager.tmp.dirs`.
    pub local_dir: std::path::PathBuf,
    /// `security.*`: the token and TLS files of its gRPC server, its JobManager client and its
    /// data plane.
    pub security: SecurityConfig,
}

impl TaskManagerSettings {
    /// Fails only for `security.*` settings that do not hold together (TLS without its files).
    pub fn from_config(config: &Config, jobmanager: &str) -> Result<Self, weir_core::ConfigError> {
        let security = SecurityConfig::from_config(config)?;
        let config = TaskManagerConfig::from_config(config);
        Ok(Self {
            id: format!("tm-{}", &uuid::Uuid::new_v4().simple().to_string()[..12]),
            jobmanager: jobmanager.to_string(),
            local_dir: config.tmp_dir.clone().map(std::path::PathBuf::from).unwrap_or_else(std::env::temp_dir),
            config,
            security,
        })
    }
}

/// The subtasks of one job attempt on this TaskManager.
pub(crate) struct JobTasks {
    pub job_key: u128,
    /// The job's name and its vertices' names, by vertex id: the labels of its tasks' metrics.
    pub job_name: String,
    pub vertex_names: Vec<String>,
    pub tasks: HashMap<(u32, u32), Task>,
    /// Subtasks deployed, and those that reported their end.
    pub expected: usize,
    pub ended: std::collections::HashSet<(u32, u32)>,
    /// The network memory its channels may hold; given back when the entry goes.
    pub _network: network_memory::Reservation,
}

pub(crate) struct Shared {
    pub settings: TaskManagerSettings,
    pub net: Arc<NetworkEnvironment>,
    /// Builds the sources and sinks of deployed tasks.
    pub connectors: Arc<dyn ConnectorFactory>,
    /// Builds the functions of DataStream programs: empty in the `weir` binary's TaskManagers.
    pub functions: Arc<dyn UserFunctions>,
    /// Builds the operators of SQL jobs.
    pub sql: Arc<dyn weir_runtime::sql::SqlOperators>,
    pub jobs: Mutex<HashMap<(String, u32), JobTasks>>,
    /// `taskmanager.memory.network.max`, reserved per job attempt at deployment.
    pub network_memory: Arc<network_memory::NetworkMemory>,
    pub updates: mpsc::UnboundedSender<UpdateTaskStateRequest>,
    pub acks: mpsc::UnboundedSender<(String, u32, CheckpointAck)>,
}

impl Shared {
    /// Runs `f` on every task of one job attempt here.
    pub fn for_tasks(&self, job_id: &str, attempt: u32, f: impl Fn(&Task)) {
        if let Some(j) = self.jobs.lock().get(&(job_id.to_string(), attempt)) {
            j.tasks.values().for_each(f);
        }
    }

    /// Cancels every task of one job attempt and drops its channels.
    pub fn cancel_job(&self, job_id: &str, attempt: u32, reason: &str) {
        let entry = self.jobs.lock().remove(&(job_id.to_string(), attempt));
        if let Some(job) = entry {
            for t in job.tasks.values() {
                t.cancel();
            }
            self.net.release_job(job.job_key, attempt, reason);
            std::thread::spawn(move || {
                for (_, t) in job.tasks {
                    t.join();
                }
            });
        }
    }

    pub fn cancel_all(&self, reason: &str) {
        let keys: Vec<_> = self.jobs.lock().keys().cloned().collect();
        for (job, attempt) in keys {
            tracing::warn!(job = %job, "canceling tasks: {reason}");
            self.cancel_job(&job, attempt, reason);
        }
    }

    /// Reads the metrics of every task still running here, handing `f` each reading with its
    /// job's name and its vertex's name (the labels `/metrics` adds; the heartbeat needs none).
    fn each_reading(&self, mut f: impl FnMut(&str, &str, weir_proto::TaskMetrics)) {
        let jobs = self.jobs.lock();
        for ((job, attempt), tasks) in jobs.iter() {
            for ((v, s), task) in &tasks.tasks {
                if task.is_finished() {
                    continue;
                }
                let execution = ExecutionId { job_id: job.clone(), attempt: *attempt, vertex: *v, subtask: *s };
                let vertex = tasks.vertex_names.get(*v as usize).map_or("", String::as_str);
                f(&tasks.job_name, vertex, task_metrics(execution, task.sample()));
            }
        }
    }

    /// Every running task's reading with its Prometheus labels, for `/metrics`.
    fn task_series(&self) -> Vec<TaskSeries> {
        let mut out = Vec::new();
        self.each_reading(|job_name, vertex, m| {
            let e = m.execution.as_ref().expect("each reading names its execution");
            let labels = metrics::task_labels(&e.job_id, job_name, vertex, e.subtask, &self.settings.id);
            out.push(TaskSeries { labels, metrics: m });
        });
        out
    }

    fn running(&self) -> Vec<ExecutionId> {
        let jobs = self.jobs.lock();
        jobs.iter()
            .flat_map(|((job, attempt), tasks)| {
                tasks.tasks.iter().filter(|(_, t)| !t.is_finished()).map(move |((v, s), _)| ExecutionId {
                    job_id: job.clone(),
                    attempt: *attempt,
                    vertex: *v,
                    subtask: *s,
                })
            })
            .collect()
    }
}

/// A started TaskManager.
pub struct TaskManagerHandle {
    pub id: String,
    pub rpc_addr: SocketAddr,
    pub data_addr: SocketAddr,
    /// Where its Prometheus endpoint (`/metrics`) listens.
    pub metrics_addr: SocketAddr,
    shutdown: watch::Sender<bool>,
    shared: Arc<Shared>,
    /// The JobManager, told when this TaskManager leaves.
    jobmanager: JobManagerServiceClient<GrpcChannel>,
}

impl TaskManagerHandle {
    /// Stops the TaskManager: cancels its tasks and closes its servers.
    pub fn shutdown(&self) {
        self.shared.cancel_all("TaskManager shutting down");
        let _ = self.shutdown.send(true);
    }

    /// Stops the TaskManager on a signal (SIGTERM from `docker-compose stop` or Kubernetes):
    /// first tells the JobManager it leaves (within 5 s), so that jobs with tasks here restart
    /// at once elsewhere instead of after `heartbeat.timeout`, then stops as
    /// [`TaskManagerHandle::shutdown`]. An unreachable JobManager only costs the wait.
    pub async fn shutdown_gracefully(&self, reason: &str) {
        let request = weir_proto::DeregisterTaskManagerRequest { taskmanager_id: self.id.clone(), reason: reason.to_string() };
        let mut client = self.jobmanager.clone();
        match tokio::time::timeout(Duration::from_secs(5), client.deregister_task_manager(request)).await {
            Ok(Ok(_)) => tracing::info!(id = %self.id, "deregistered from the JobManager"),
            Ok(Err(e)) => tracing::warn!(id = %self.id, "could not deregister from the JobManager: {}", e.message()),
            Err(_) => tracing::warn!(id = %self.id, "could not deregister from the JobManager within 5 s"),
        }
        self.shutdown();
    }

    /// Resolves when the TaskManager has been shut down.
    pub async fn stopped(&self) {
        let mut rx = self.shutdown.subscribe();
        while !*rx.borrow() {
            if rx.changed().await.is_err() {
                return;
            }
        }
    }
}

/// The address this TaskManager advertises, when it is not the address its ports bind:
/// `taskmanager.host: auto` is the address of the interface that routes to the JobManager (as
/// Flink's TaskManagers find theirs), which in a container is the container's address on the
/// network it shares with the JobManager; an explicit host with another bind host is resolved.
/// `None`: advertise the bound address (the host is the bind host).
async fn advertised_ip(settings: &TaskManagerSettings) -> Result<Option<std::net::IpAddr>, TaskManagerError> {
    let c = &settings.config;
    if c.host == weir_core::settings::TaskManagerConfig::AUTO_HOST {
        // The JobManager's name may not resolve yet while the containers start: retry a while.
        let mut last = String::new();
        for _ in 0..30 {
            match tokio::net::lookup_host(&settings.jobmanager).await {
                Ok(mut addrs) => match addrs.next() {
                    Some(jm) => {
                        let route = || -> std::io::Result<std::net::IpAddr> {
                            let any = if jm.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" };
                            let socket = std::net::UdpSocket::bind(any)?;
                            socket.connect(jm)?;
                            Ok(socket.local_addr()?.ip())
                        };
                        return route()
                            .map(Some)
                            .map_err(|e| TaskManagerError::NoRoute { addr: settings.jobmanager.clone(), reason: e.to_string() });
                    }
                    None => last = "no address".into(),
                },
                Err(e) => last = e.to_string(),
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        return Err(TaskManagerError::NoRoute { addr: settings.jobmanager.clone(), reason: last });
    }
    if c.host == c.bind_host {
        return Ok(None);
    }
    let mut addrs = tokio::net::lookup_host((c.host.as_str(), 0))
        .await
        .map_err(|e| TaskManagerError::Host { host: c.host.clone(), reason: e.to_string() })?;
    addrs.next().map(|a| Some(a.ip())).ok_or_else(|| TaskManagerError::Host { host: c.host.clone(), reason: "no address".into() })
}

/// The channel to the JobManager (connected on first use), with this TaskManager's token and
/// TLS files.
fn jobmanager_channel(addr: &str, dialer: &Dialer) -> Result<GrpcChannel, TaskManagerError> {
    let timeouts = Timeouts { connect: Duration::from_secs(5), request: Duration::from_secs(10) };
    dialer.connect_lazy(addr, timeouts).map_err(|e| match e {
        SecurityError::Address(_) => TaskManagerError::JobManagerAddress(addr.to_string()),
        e => TaskManagerError::Security(e),
    })
}

/// Starts a TaskManager: binds its RPC and data ports, then registers with the JobManager
/// (retrying until it answers) and heartbeats it. It runs job files and SQL jobs; a DataStream
/// program's functions need [`start_with_functions`].
pub async fn start(settings: TaskManagerSettings) -> Result<TaskManagerHandle, TaskManagerError> {
    start_with_functions(settings, Arc::new(NoUserFunctions), Vec::new()).await
}

/// Starts a TaskManager that also runs the functions of the program that registered them in
/// `functions` (the embedded cluster of a DataStream program, or its application
/// TaskManagers). `function_ids` are the ids `functions` resolves: the TaskManager lists them
/// when it registers, and the JobManager places a program's job only on TaskManagers that
/// list all of its functions.
pub async fn start_with_functions(
    settings: TaskManagerSettings,
    functions: Arc<dyn UserFunctions>,
    function_ids: Vec<String>,
) -> Result<TaskManagerHandle, TaskManagerError> {
    let dialer = Dialer::new(&settings.security).map_err(TaskManagerError::Security)?;
    let jobmanager = jobmanager_channel(&settings.jobmanager, &dialer)?;
    let mut server = security::server(&settings.security).map_err(TaskManagerError::Security)?;
    let token_check = TokenCheck::new(&settings.security);
    let advertised = advertised_ip(&settings).await?;
    let rpc_bind = format!("{}:{}", settings.config.bind_host, settings.config.rpc_port);
    let listener =
        tokio::net::TcpListener::bind(&rpc_bind).await.map_err(|source| TaskManagerError::Bind { addr: rpc_bind.clone(), source })?;
    let rpc_addr = listener.local_addr().map_err(|source| TaskManagerError::Bind { addr: rpc_bind, source })?;
    let rpc_addr = SocketAddr::new(advertised.unwrap_or(rpc_addr.ip()), rpc_addr.port());
    let net = NetworkEnvironment::start(
        &settings.id,
        &format!("{}:{}", settings.config.bind_host, settings.config.data_port),
        &settings.config.network,
        weir_runtime::net::NetSecurity::from_config(&settings.security)?,
    )
    .await?;
    let data_addr = SocketAddr::new(advertised.unwrap_or(net.local_addr().ip()), net.local_addr().port());
    let (updates_tx, updates_rx) = mpsc::unbounded_channel();
    let (acks_tx, acks_rx) = mpsc::unbounded_channel();
    let shared = Arc::new(Shared {
        settings: settings.clone(),
        net,
        connectors: Arc::new(weir_connectors::BuiltinConnectors),
        functions,
        sql: Arc::new(weir_sql::SqlRuntime),
        jobs: Mutex::new(HashMap::new()),
        network_memory: network_memory::NetworkMemory::new(settings.config.network.memory_max),
        updates: updates_tx,
        acks: acks_tx,
    });
    let (shutdown_tx, shutdown_rx) = watch::channel(false);

    let service = service::TaskManagerRpc { shared: shared.clone() };
    let mut srx = shutdown_rx.clone();
    tokio::spawn(async move {
        let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
        let service = TaskManagerServiceServer::new(service).max_decoding_message_size(weir_proto::MAX_MESSAGE_BYTES);
        let result = server
            .add_service(tonic::service::interceptor::InterceptedService::new(service, token_check))
            .serve_with_incoming_shutdown(incoming, async move {
                let _ = srx.wait_for(|s| *s).await;
            })
            .await;
        if let Err(e) = result {
            tracing::error!("TaskManager RPC server failed: {e}");
        }
    });

    let client = JobManagerServiceClient::new(jobmanager);
    tokio::spawn(forward_updates(client.clone(), updates_rx, shutdown_rx.clone()));
    tokio::spawn(forward_acks(shared.clone(), client.clone(), acks_rx));
    let metrics_addr = serve_metrics(&shared, shutdown_rx.clone()).await?;
    let metrics_addr = SocketAddr::new(advertised.unwrap_or(metrics_addr.ip()), metrics_addr.port());
    tokio::spawn(heartbeat_loop(shared.clone(), client.clone(), [rpc_addr, data_addr, metrics_addr], function_ids, shutdown_rx));
    tracing::info!(id = %settings.id, rpc = %rpc_addr, data = %data_addr, metrics = %metrics_addr, slots = settings.config.slots, "TaskManager started");
    security::warn_if_open("The TaskManager", rpc_addr, &settings.security);
    Ok(TaskManagerHandle { id: settings.id.clone(), rpc_addr, data_addr, metrics_addr, shutdown: shutdown_tx, shared, jobmanager: client })
}

/// How a task state report is retried while the JobManager does not take it: waits from 100 ms
/// doubling to 1 s, about a minute in all, then the report is dropped (a JobManager silent for
/// that long declares this TaskManager lost anyway).
const TASK_STATE_REPORT_RETRY: Backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(1)).with_max_attempts(64);

/// Sends task state changes to the JobManager in order, retrying while it is unreachable.
async fn forward_updates(
    client: JobManagerServiceClient<GrpcChannel>,
    mut rx: mpsc::UnboundedReceiver<UpdateTaskStateRequest>,
    shutdown: watch::Receiver<bool>,
) {
    while let Some(update) = rx.recv().await {
        let report = || {
            let (mut client, update) = (client.clone(), update.clone());
            async move { client.update_task_state(update).await }
        };
        let retry_while_running = |failure: &Failure<'_, tonic::Status>| {
            tracing::debug!(attempt = failure.attempt, "cannot report task state yet: {}", failure.error);
            !*shutdown.borrow()
        };
        if let Err(e) = retry(&TASK_STATE_REPORT_RETRY, report, retry_while_running).await {
            tracing::warn!("dropping a task state report the JobManager did not take: {e}");
        }
    }
}

/// Sends checkpoint acknowledgements and declines to the JobManager, and records each
/// acknowledged checkpoint's figures in its task's metrics.
async fn forward_acks(
    shared: Arc<Shared>,
    mut client: JobManagerServiceClient<GrpcChannel>,
    mut rx: mpsc::UnboundedReceiver<(String, u32, CheckpointAck)>,
) {
    while let Some((job_id, attempt, ack)) = rx.recv().await {
        if ack.result.is_ok() {
            let figures = CheckpointFigures {
                id: ack.checkpoint,
                sync: ack.sync_duration,
                async_: ack.async_duration,
                alignment: ack.alignment,
                persisted_bytes: ack.inflight_bytes,
                state_size: ack.size.saturating_sub(ack.inflight_bytes),
            };
            if let Some(j) = shared.jobs.lock().get(&(job_id.clone(), attempt)) {
                if let Some(t) = j.tasks.get(&(ack.vertex, ack.subtask)) {
                    t.metrics().checkpointed(figures);
                }
            }
        }
        let execution = Some(ExecutionId { job_id, attempt, vertex: ack.vertex, subtask: ack.subtask });
        let result = match ack.result {
            Ok(states) => {
                let state = serde_json::to_vec(&states).expect("state handles serialize");
                client
                    .acknowledge_checkpoint(AcknowledgeCheckpointRequest {
                        execution,
                        checkpoint_id: ack.checkpoint,
                        state,
                        alignment_ms: ack.alignment.as_millis() as u64,
                        size_bytes: ack.size,
                        inflight_bytes: ack.inflight_bytes,
                        kind: match ack.kind {
                            SnapshotKind::Aligned => CheckpointKind::Aligned,
                            SnapshotKind::Unaligned => CheckpointKind::Unaligned,
                            SnapshotKind::TimedOut => CheckpointKind::TimedOutToUnaligned,
                        } as i32,
                        sync_ms: ack.sync_duration.as_millis() as u64,
                        async_ms: ack.async_duration.as_millis() as u64,
                    })
                    .await
            }
            Err(reason) => client.decline_checkpoint(DeclineCheckpointRequest { execution, checkpoint_id: ack.checkpoint, reason }).await,
        };
        if let Err(e) = result {
            tracing::warn!(checkpoint = ack.checkpoint, "cannot report to the JobManager: {}", e.message());
        }
    }
}

/// Registration is tried again this soon after a first failure, then less and less often, down
/// to once per heartbeat interval: a TaskManager started just before its JobManager joins at
/// once, and an absent JobManager is not called more often than it would be heartbeated.
const REGISTRATION_FIRST_RETRY: Duration = Duration::from_millis(100);

/// Registers with the JobManager, retrying with backoff until it answers; false if the
/// TaskManager shuts down first. The first failure of each round is a warning, the rest debug.
async fn register_with_jobmanager(
    client: &JobManagerServiceClient<GrpcChannel>,
    request: &RegisterTaskManagerRequest,
    settings: &TaskManagerSettings,
    shutdown: &mut watch::Receiver<bool>,
) -> bool {
    let max_delay = settings.config.heartbeat_interval.max(REGISTRATION_FIRST_RETRY);
    let policy = Backoff::new(REGISTRATION_FIRST_RETRY, max_delay);
    let stopping = shutdown.clone();
    let attempts = retry(
        &policy,
        || {
            let (mut client, request) = (client.clone(), request.clone());
            async move { client.register_task_manager(request).await }
        },
        |failure| {
            let (jobmanager, error) = (&settings.jobmanager, failure.error.message());
            if failure.attempt == 1 {
                tracing::warn!(%jobmanager, "cannot register with the JobManager (retrying): {error}");
            } else {
                tracing::debug!(%jobmanager, attempt = failure.attempt, "cannot register with the JobManager yet: {error}");
            }
            !*stopping.borrow()
        },
    );
    tokio::select! {
        result = attempts => {
            let registered = result.is_ok();
            if registered {
                tracing::info!(jobmanager = %settings.jobmanager, "registered with the JobManager");
            }
            registered
        }
        _ = shutdown.wait_for(|stop| *stop) => false,
    }
}

async fn heartbeat_loop(
    shared: Arc<Shared>,
    mut client: JobManagerServiceClient<GrpcChannel>,
    [rpc_addr, data_addr, metrics_addr]: [SocketAddr; 3],
    user_functions: Vec<String>,
    mut shutdown: watch::Receiver<bool>,
) {
    let s = &shared.settings;
    let register = RegisterTaskManagerRequest {
        taskmanager_id: s.id.clone(),
        rpc_address: rpc_addr.to_string(),
        data_address: data_addr.to_string(),
        slots: s.config.slots,
        user_functions,
        metrics_address: metrics_addr.to_string(),
    };
    let mut registered = false;
    let mut last_ok = Instant::now();
    loop {
        if *shutdown.borrow() {
            return;
        }
        if !registered {
            if !register_with_jobmanager(&client, &register, s, &mut shutdown).await {
                return;
            }
            registered = true;
            last_ok = Instant::now();
        } else {
            let mut metrics = Vec::new();
            shared.each_reading(|_, _, m| metrics.push(m));
            let req = HeartbeatRequest { taskmanager_id: s.id.clone(), running: shared.running(), metrics };
            match client.heartbeat(req).await {
                Ok(resp) if resp.get_ref().known => last_ok = Instant::now(),
                Ok(_) => {
                    tracing::warn!("the JobManager no longer knows this TaskManager: canceling tasks and registering again");
                    shared.cancel_all("the JobManager declared this TaskManager lost");
                    registered = false;
                    continue;
                }
                Err(e) => {
                    if last_ok.elapsed() > s.config.heartbeat_timeout {
                        tracing::warn!("JobManager lost (no heartbeat answer for {:?}): {}", s.config.heartbeat_timeout, e.message());
                        shared.cancel_all("JobManager lost");
                        registered = false;
                    }
                }
            }
        }
        // The heartbeat carries the task metrics: at least once a second.
        tokio::select! {
            _ = tokio::time::sleep(s.config.heartbeat_interval.min(METRICS_INTERVAL)) => {}
            _ = shutdown.changed() => {}
        }
    }
}

/// The longest time between two heartbeats, whatever `heartbeat.interval` says: they carry
/// the live task metrics.
const METRICS_INTERVAL: Duration = Duration::from_secs(1);

/// A task's reading as the heartbeat and `/metrics` carry it.
fn task_metrics(execution: ExecutionId, s: TaskSample) -> weir_proto::TaskMetrics {
    let ms = |d: Duration| d.as_millis() as u64;
    let c = s.checkpoint.unwrap_or_default();
    weir_proto::TaskMetrics {
        execution: Some(execution),
        uptime_ms: ms(s.uptime),
        records_in: s.records_in,
        records_out: s.records_out,
        bytes_in: s.bytes_in,
        bytes_out: s.bytes_out,
        busy_ms: ms(s.busy),
        idle_ms: ms(s.idle),
        backpressured_ms: ms(s.backpressured),
        input_queue: s.input_queue,
        input_credit: s.input_credit,
        output_queue: s.output_queue,
        output_credit: s.output_credit,
        checkpoint_id: c.id,
        checkpoint_sync_ms: ms(c.sync),
        checkpoint_async_ms: ms(c.async_),
        checkpoint_alignment_ms: ms(c.alignment),
        checkpoint_persisted_bytes: c.persisted_bytes,
        state_size: c.state_size,
        debloated_buffer_size: s.debloated_buffer_size,
    }
}

/// Serves `/metrics` (Prometheus) on `metrics.port` of the TaskManager's bind host until
/// shutdown; a port that cannot be bound fails the start, naming the key.
async fn serve_metrics(shared: &Arc<Shared>, mut shutdown: watch::Receiver<bool>) -> Result<SocketAddr, TaskManagerError> {
    let c = &shared.settings.config;
    let addr = format!("{}:{}", c.bind_host, c.metrics_port);
    let listener =
        tokio::net::TcpListener::bind(&addr).await.map_err(|source| TaskManagerError::MetricsBind { addr: addr.clone(), source })?;
    let local = listener.local_addr().map_err(|source| TaskManagerError::MetricsBind { addr, source })?;
    let weak = Arc::downgrade(shared);
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let weak = weak.clone();
            async move {
                let tasks = weak.upgrade().map(|s| s.task_series()).unwrap_or_default();
                ([(axum::http::header::CONTENT_TYPE, metrics::CONTENT_TYPE)], metrics::render(metrics::task_families(&tasks)))
            }
        }),
    );
    tokio::spawn(async move {
        let stop = async move {
            let _ = shutdown.wait_for(|s| *s).await;
        };
        if let Err(e) = axum::serve(listener, app).with_graceful_shutdown(stop).await {
            tracing::error!("the TaskManager's metrics endpoint failed: {e}");
        }
    });
    Ok(local)
}
