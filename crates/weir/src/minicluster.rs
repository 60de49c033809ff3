//! The embedded mini cluster: a JobManager and TaskManagers in this process, talking the same
//! gRPC and TCP protocols over loopback as a real cluster. `weir run` without a JobManager
//! and a DataStream program's `execute` both run on it; a program's TaskManagers carry its
//! functions.

use std::sync::Arc;
use weir_core::config::Config;
use weir_core::settings::{ClientConfig, TaskManagerConfig};
use weir_jobmanager::{JobManagerError, JobManagerHandle};
use weir_runtime::user::{NoUserFunctions, UserFunctions};
use weir_taskmanager::{TaskManagerError, TaskManagerHandle, TaskManagerSettings};

/// Why the mini cluster did not start.
#[derive(Debug, thiserror::Error)]
pub enum MiniClusterError {
    #[error("embedded JobManager: {0}")]
    JobManager(#[from] JobManagerError),
    #[error("embedded TaskManager: {0}")]
    TaskManager(#[from] TaskManagerError),
    #[error(transparent)]
    Config(#[from] weir_core::ConfigError),
}

pub struct MiniCluster {
    jm: JobManagerHandle,
    tms: Vec<TaskManagerHandle>,
}

impl MiniCluster {
    /// Starts `minicluster.taskmanagers` TaskManagers with enough slots for `slots_needed`;
    /// they run job files and SQL only.
    pub async fn start(cfg: &Config, slots_needed: Option<u32>) -> Result<Self, MiniClusterError> {
        Self::start_with_functions(cfg, slots_needed, Arc::new(NoUserFunctions), Vec::new()).await
    }

    /// Starts the cluster with TaskManagers that also run the functions in `functions`, whose
    /// ids are `function_ids` (the TaskManagers advertise them when they register).
    pub async fn start_with_functions(
        cfg: &Config,
        slots_needed: Option<u32>,
        functions: Arc<dyn UserFunctions>,
        function_ids: Vec<String>,
    ) -> Result<Self, MiniClusterError> {
        // The REST API on loopback, on a free port unless `rest.port` is set: several embedded
        // clusters may run on one machine.
        let mut jm_cfg = cfg.clone();
        if !jm_cfg.explicit().contains_key(weir_core::config::keys::REST_PORT) {
            jm_cfg.set(weir_core::config::keys::REST_PORT, "0", "mini cluster")?;
        }
        if !jm_cfg.explicit().contains_key(weir_core::config::keys::REST_BIND_ADDRESS) {
            jm_cfg.set(weir_core::config::keys::REST_BIND_ADDRESS, "127.0.0.1", "mini cluster")?;
        }
        let jm = weir_jobmanager::start_with_sql(jm_cfg, "127.0.0.1:0", Some(crate::application::sql_compiler())).await?;
        tracing::info!("REST API of the embedded cluster at http://{}", jm.rest_addr);
        let n = ClientConfig::from_config(cfg).minicluster_taskmanagers;
        let per_tm = TaskManagerConfig::from_config(cfg).slots.max(slots_needed.unwrap_or(0).div_ceil(n));
        let mut tms = Vec::new();
        for _ in 0..n {
            let mut settings = TaskManagerSettings::from_config(cfg, &jm.rpc_addr.to_string())?;
            settings.config.host = "127.0.0.1".into();
            settings.config.bind_host = "127.0.0.1".into();
            settings.config.slots = per_tm;
            if !cfg.explicit().contains_key(weir_core::config::keys::METRICS_PORT) {
                settings.config.metrics_port = 0;
            }
            tms.push(weir_taskmanager::start_with_functions(settings, functions.clone(), function_ids.clone()).await?);
        }
        Ok(Self { jm, tms })
    }

    pub fn address(&self) -> String {
        self.jm.rpc_addr.to_string()
    }

    /// The embedded JobManager, for in-process submission and status.
    pub fn jobmanager(&self) -> &JobManagerHandle {
        &self.jm
    }

    pub fn shutdown(&self) {
        for tm in &self.tms {
            tm.shutdown();
        }
        self.jm.shutdown();
    }
}
