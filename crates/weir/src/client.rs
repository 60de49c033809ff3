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
        let cluster = runtime
            .block_on(MiniCluster::start_with_functions(&config, Some(slots), Arc::new(functions)))
            .map_err(|e| ApiError::Cluster(e.to_string()))?;
        // The cluster was started with the program's configuration; the job carries the same
        // keys, minus the cluster's own secrets (`security.*`).
        let job_config = Config::from_pairs(config.explicit().iter().filter(|(k, _)| !weir_core::settings::is_cluster_only_key(k)))
            .map_err(ApiError::Config)?;
        let job_id = {
            let _guard = runtime.enter();
            cluster.jobmanager().submit_graph(graph, &job_config)
        };
        let job_id = match job_id {
            Ok(id) => id,
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
