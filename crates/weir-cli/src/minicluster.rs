//! The embedded mini cluster: a JobManager and TaskManagers in this process, talking the same
//! gRPC and TCP protocols over loopback as a real cluster.

use anyhow::Result;
use weir_core::config::Config;
use weir_core::settings::{ClientConfig, TaskManagerConfig};
use weir_jobmanager::JobManagerHandle;
use weir_taskmanager::{TaskManagerHandle, TaskManagerSettings};

pub struct MiniCluster {
    jm: JobManagerHandle,
    tms: Vec<TaskManagerHandle>,
}

impl MiniCluster {
    /// Starts `minicluster.taskmanagers` TaskManagers with enough slots for `slots_needed`.
    pub async fn start(cfg: &Config, slots_needed: Option<u32>) -> Result<Self> {
        let jm = weir_jobmanager::start(cfg.clone(), "127.0.0.1:0").await?;
        let n = ClientConfig::from_config(cfg).minicluster_taskmanagers;
        let per_tm = TaskManagerConfig::from_config(cfg).slots.max(slots_needed.unwrap_or(0).div_ceil(n));
        let mut tms = Vec::new();
        for _ in 0..n {
            let mut settings = TaskManagerSettings::from_config(cfg, &jm.rpc_addr.to_string())?;
            settings.config.host = "127.0.0.1".into();
            settings.config.slots = per_tm;
            tms.push(weir_taskmanager::start(settings).await?);
        }
        Ok(Self { jm, tms })
    }

    pub fn address(&self) -> String {
        self.jm.rpc_addr.to_string()
    }

    pub fn shutdown(&self) {
        for tm in &self.tms {
            tm.shutdown();
        }
        self.jm.shutdown();
    }
}
