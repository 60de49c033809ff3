//! [`JobClient`]: a program's running job on its embedded cluster.

use crate::env::JobExecutionResult;
use crate::functions::ProgramFunctions;
use crate::minicluster::MiniCluster;
use crate::ApiError;
use std::sync::Arc;
use std::time::{Duration, Instant};
use weir_core::config::Config;
use weir_core::graph::JobGraph;
use weir_proto::{CheckpointInfo, CheckpointStatus, JobState, JobStatus};

/// A submitted job and the embedded cluster that runs it; dropping it stops the cluster.
pub struct JobClient {
    runtime: tokio::runtime::Runtime,
    cluster: MiniCluster,
    job_id: String,
    started: Instant,
}

impl JobClient {
    pub(crate) fn start(config: Config, graph: JobGraph, functions: ProgramFunctions) -> Result<Self, ApiError> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .thread_name("weir-embedded")
            .build()
            .map_err(|e| ApiError::Cluster(format!("cannot start the embedded cluster's runtime: {e}")))?;
        let slots = graph.slots_needed();
        let ids = functions.ids().map(str::to_string).collect();
        let cluster = runtime
            .block_on(MiniCluster::start_with_functions(&config, Some(slots), Arc::new(functions), ids))
            .map_err(|e| ApiError::Cluster(e.to_string()))?;
        // The cluster was started with the program's configuration; the job carries the same
        // keys, minus the cluster's own secrets (`security.*`).
        let job_config = Config::from_pairs(config.explicit().iter().filter(|(k, _)| !weir_core::settings::is_cluster_only_key(k)))
            .map_err(ApiError::Config)?;
        let job_id = runtime.block_on(cluster.jobmanager().submit_graph(graph, &job_config));
        let job_id = match job_id {
            Ok((id, warnings)) => {
                for w in warnings {
                    eprintln!("warning: {w}");
                }
                id
            }
            Err(e) => {
                cluster.shutdown();
                return Err(ApiError::Cluster(e.to_string()));
            }
        };
        Ok(Self { runtime, cluster, job_id, started: Instant::now() })
    }

    pub fn job_id(&self) -> &str {
        &self.job_id
    }

    /// The job's state, failure and counters.
    pub fn status(&self) -> Option<JobStatus> {
        self.cluster.jobmanager().job_status(&self.job_id)
    }

    /// The job's checkpoint history (as `weir checkpoints` shows it).
    pub fn checkpoints(&self) -> Vec<CheckpointInfo> {
        self.cluster.jobmanager().checkpoints(&self.job_id).unwrap_or_default()
    }

    /// How many of the job's checkpoints completed.
    pub fn completed_checkpoints(&self) -> usize {
        self.checkpoints().iter().filter(|c| c.status == CheckpointStatus::Completed as i32 && !c.savepoint).count()
    }

    /// Takes a savepoint into a new folder under `directory` (empty: the program's
    /// `execution.checkpointing.savepoint-dir`) and returns the folder; the job goes on.
    pub fn trigger_savepoint(&self, directory: &str) -> Result<String, ApiError> {
        self.runtime
            .block_on(self.cluster.jobmanager().savepoint(&self.job_id, directory, false))
            .map_err(|e| ApiError::Cluster(e.to_string()))
    }

    /// Stops the job with a savepoint (Flink's `JobClient.stopWithSavepoint`): once the
    /// savepoint is written the sources stop, the job ends FINISHED, and the savepoint's folder
    /// is returned. Start a program from it with `execution.savepoint.path`.
    pub fn stop_with_savepoint(self, directory: &str) -> Result<String, ApiError> {
        let path = self
            .runtime
            .block_on(self.cluster.jobmanager().savepoint(&self.job_id, directory, true))
            .map_err(|e| ApiError::Cluster(e.to_string()))?;
        self.wait()?;
        Ok(path)
    }

    /// Cancels the job (Flink's `JobClient.cancel()`) and waits until it ended: `Ok` once it is
    /// CANCELED (or had already ended).
    pub fn cancel(self) -> Result<(), ApiError> {
        {
            let _guard = self.runtime.enter();
            self.cluster.jobmanager().cancel_job(&self.job_id).map_err(|e| ApiError::Cluster(e.to_string()))?;
        }
        match self.wait() {
            Ok(_) | Err(ApiError::JobCanceled { .. }) | Err(ApiError::JobFailed { .. }) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Waits until the job ended: `Ok` if it FINISHED, an error with its failure otherwise.
    pub fn wait(self) -> Result<JobExecutionResult, ApiError> {
        let result = loop {
            let status = self.status().ok_or_else(|| ApiError::Cluster(format!("the JobManager lost job {}", self.job_id)))?;
            match JobState::try_from(status.state).unwrap_or(JobState::Unspecified) {
                JobState::Finished => {
                    break Ok(JobExecutionResult {
                        job_id: self.job_id.clone(),
                        restarts: status.restarts,
                        net_runtime: self.started.elapsed(),
                    })
                }
                JobState::Failed => {
                    break Err(ApiError::JobFailed { job_id: self.job_id.clone(), restarts: status.restarts, failure: status.failure })
                }
                JobState::Canceled => break Err(ApiError::JobCanceled { job_id: self.job_id.clone() }),
                _ => std::thread::sleep(Duration::from_millis(20)),
            }
        };
        result
    }
}

impl Drop for JobClient {
    fn drop(&mut self) {
        let _guard = self.runtime.enter();
        self.cluster.shutdown();
    }
}

/// A program's job submitted to a running JobManager over gRPC (`my-job run --jobmanager`):
/// the graph travels as JSON with the program's configuration, and the JobManager refuses it
/// unless a registered TaskManager carries the program's functions.
pub(crate) mod remote {
    use crate::ApiError;
    use std::time::Duration;
    use weir_core::config::Config;
    use weir_core::graph::JobGraph;
    use weir_core::settings::{is_cluster_only_key, SecurityConfig};
    use weir_proto::job_manager_service_client::JobManagerServiceClient;
    use weir_proto::security::{Dialer, GrpcChannel, Timeouts};
    use weir_proto::{GetJobRequest, JobState, JobStatus, SubmitJobRequest};

    /// What a submitted job starts from (`run -s`).
    pub struct Restore<'a> {
        /// A savepoint folder or retained checkpoint, as a URL or an absolute path.
        pub path: &'a str,
        /// Skip the state of operators the program no longer has instead of refusing the job.
        pub allow_non_restored_state: bool,
    }

    /// A connection to the JobManager at `address`, with the process's `security.*`.
    pub struct RemoteJobManager {
        address: String,
        client: JobManagerServiceClient<GrpcChannel>,
    }

    impl RemoteJobManager {
        pub async fn connect(address: &str, security: &SecurityConfig) -> Result<Self, ApiError> {
            let dialer = Dialer::new(security).map_err(|e| ApiError::Cluster(e.to_string()))?;
            let timeouts = Timeouts { connect: Duration::from_secs(5), request: Duration::from_secs(60) };
            let channel = dialer
                .connect(address, timeouts)
                .await
                .map_err(|e| ApiError::Cluster(format!("cannot reach the JobManager at {address}: {}", weir_core::error_chain(&e))))?;
            let client = JobManagerServiceClient::new(channel).max_decoding_message_size(weir_proto::MAX_MESSAGE_BYTES);
            Ok(Self { address: address.to_string(), client })
        }

        /// Submits `graph` with the job's configuration `job_config` (its cluster-only keys
        /// left out: the token and TLS files are this client's), starting from `restore` if
        /// given; returns the job id and the JobManager's warnings.
        pub async fn submit(
            &mut self,
            graph: &JobGraph,
            job_config: &Config,
            restore: Option<Restore<'_>>,
        ) -> Result<(String, Vec<String>), ApiError> {
            let request = SubmitJobRequest {
                job_graph: String::from_utf8_lossy(&graph.to_json()).into_owned(),
                config: job_config
                    .explicit()
                    .iter()
                    .filter(|(k, _)| !is_cluster_only_key(k))
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect(),
                source_name: format!("program '{}'", graph.name),
                restore_path: restore.as_ref().map(|r| r.path.to_string()).unwrap_or_default(),
                allow_non_restored_state: restore.is_some_and(|r| r.allow_non_restored_state),
                job_definition: String::new(),
            };
            let response = self
                .client
                .submit_job(request)
                .await
                .map_err(|s| ApiError::Cluster(format!("the JobManager at {} refused the job: {}", self.address, s.message())))?
                .into_inner();
            Ok((response.job_id, response.warnings))
        }

        /// The job's status, as `weir status` shows it.
        pub async fn status(&mut self, job_id: &str) -> Result<JobStatus, ApiError> {
            self.client
                .get_job(GetJobRequest { job_id: job_id.to_string() })
                .await
                .map(|r| r.into_inner())
                .map_err(|s| ApiError::Cluster(format!("job {job_id} at the JobManager at {}: {}", self.address, s.message())))
        }

        /// Waits until the job ended: FINISHED is `Ok` with its status, FAILED and CANCELED are
        /// errors. A status request that fails is tried again until `patience` passed.
        pub async fn wait(&mut self, job_id: &str, patience: Duration) -> Result<JobStatus, ApiError> {
            let mut last_ok = std::time::Instant::now();
            loop {
                match self.status(job_id).await {
                    Ok(status) => {
                        last_ok = std::time::Instant::now();
                        match JobState::try_from(status.state).unwrap_or(JobState::Unspecified) {
                            JobState::Finished => return Ok(status),
                            JobState::Failed => {
                                return Err(ApiError::JobFailed {
                                    job_id: job_id.to_string(),
                                    restarts: status.restarts,
                                    failure: status.failure,
                                })
                            }
                            JobState::Canceled => return Err(ApiError::JobCanceled { job_id: job_id.to_string() }),
                            _ => {}
                        }
                    }
                    Err(e) if last_ok.elapsed() > patience => return Err(e),
                    Err(_) => {}
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
}
