//! The [`StreamExecutionEnvironment`]: a program's configuration, in Flink's words, and the
//! place its streams are built and executed.
//!
//! Every setter writes a configuration key of `weir-core`'s key table (the same keys a job
//! file's `config:` section sets); nothing is validated twice. At `execute` the keys are parsed
//! by [`Config::set`] and read by [`JobSettings::from_config`], so a bad value is an error that
//! names its key, exactly as in a job file.

use crate::program::Program;
use crate::{ApiError, DataStream, JobClient};
use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;
use std::time::Duration;
use weir_core::config::{keys, Config};
use weir_core::settings::JobSettings;

/// `execution.checkpointing.mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CheckpointingMode {
    ExactlyOnce,
    AtLeastOnce,
}

/// `state.backend.type`: where keyed state lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StateBackend {
    /// In memory; a snapshot serializes the key groups.
    HashMap,
    /// One RocksDB per subtask; snapshots upload its SST files (incrementally by default).
    RocksDb,
}

fn duration(d: Duration) -> String {
    format!("{}ms", d.as_millis())
}

/// The configuration keys a program set, by key: the last value set wins.
#[derive(Debug, Clone, Default)]
pub(crate) struct Settings(BTreeMap<String, String>);

impl Settings {
    fn set(&mut self, key: &str, value: impl Into<String>) {
        self.0.insert(key.to_string(), value.into());
    }

    /// The configuration the program asked for: each value parsed under its key, then the
    /// typed job settings read once, so that errors name the key (e.g. a zero parallelism,
    /// an unknown checkpoint storage scheme).
    pub(crate) fn to_config(&self) -> Result<(Config, JobSettings), ApiError> {
        let mut config = Config::new();
        for (k, v) in &self.0 {
            config.set(k, v, "the program").map_err(ApiError::Config)?;
        }
        let settings = JobSettings::from_config(&config).map_err(ApiError::Config)?;
        Ok((config, settings))
    }
}

/// Checkpointing settings (`execution.checkpointing.*`), as Flink's `CheckpointConfig`.
#[derive(Debug, Default)]
pub struct CheckpointConfig {
    pub(crate) settings: Settings,
}

impl CheckpointConfig {
    /// `execution.checkpointing.mode`: exactly-once aligns barriers, at-least-once never blocks.
    pub fn set_checkpointing_mode(&mut self, mode: CheckpointingMode) -> &mut Self {
        let v = match mode {
            CheckpointingMode::ExactlyOnce => "EXACTLY_ONCE",
            CheckpointingMode::AtLeastOnce => "AT_LEAST_ONCE",
        };
        self.settings.set(keys::CHECKPOINT_MODE, v);
        self
    }

    /// `execution.checkpointing.timeout`.
    pub fn set_checkpoint_timeout(&mut self, timeout: Duration) -> &mut Self {
        self.settings.set(keys::CHECKPOINT_TIMEOUT, duration(timeout));
        self
    }

    /// `execution.checkpointing.min-pause`.
    pub fn set_min_pause_between_checkpoints(&mut self, pause: Duration) -> &mut Self {
        self.settings.set(keys::CHECKPOINT_MIN_PAUSE, duration(pause));
        self
    }

    /// `execution.checkpointing.max-concurrent-checkpoints`.
    pub fn set_max_concurrent_checkpoints(&mut self, n: u32) -> &mut Self {
        self.settings.set(keys::CHECKPOINT_MAX_CONCURRENT, n.to_string());
        self
    }

    /// `execution.checkpointing.unaligned.enabled`.
    pub fn enable_unaligned_checkpoints(&mut self, enabled: bool) -> &mut Self {
        self.settings.set(keys::CHECKPOINT_UNALIGNED, enabled.to_string());
        self
    }

    /// `execution.checkpointing.aligned-checkpoint-timeout`: with unaligned checkpoints, how
    /// long a barrier stays aligned before it switches.
    pub fn set_aligned_checkpoint_timeout(&mut self, timeout: Duration) -> &mut Self {
        self.settings.set(keys::CHECKPOINT_ALIGNED_TIMEOUT, duration(timeout));
        self
    }

    /// `execution.checkpointing.tolerable-failed-checkpoints`.
    pub fn set_tolerable_checkpoint_failure_number(&mut self, n: u32) -> &mut Self {
        self.settings.set(keys::CHECKPOINT_TOLERABLE_FAILED, n.to_string());
        self
    }

    /// `execution.checkpointing.dir`: `file:///path`, `s3://bucket/path` or `memory://`.
    pub fn set_checkpoint_storage(&mut self, url: &str) -> &mut Self {
        self.settings.set(keys::CHECKPOINT_DIR, url);
        self
    }
}

/// The context a program runs in: its configuration and the streams it builds.
///
/// Not `Send`: a program builds its graph on one thread, then [`execute`](Self::execute)
/// runs it on the embedded cluster.
pub struct StreamExecutionEnvironment {
    pub(crate) settings: Settings,
    checkpoint_config: CheckpointConfig,
    pub(crate) program: Rc<RefCell<Program>>,
}

impl StreamExecutionEnvironment {
    /// The environment of this program: for now always the embedded mini cluster, with
    /// Weir's defaults until the program sets otherwise.
    pub fn get_execution_environment() -> Self {
        Self { settings: Settings::default(), checkpoint_config: CheckpointConfig::default(), program: Default::default() }
    }

    /// `parallelism.default`: the parallelism of operators that set none.
    pub fn set_parallelism(&mut self, parallelism: u32) -> &mut Self {
        self.settings.set(keys::PARALLELISM, parallelism.to_string());
        self
    }

    /// `pipeline.max-parallelism`: the number of key groups.
    pub fn set_max_parallelism(&mut self, max_parallelism: u32) -> &mut Self {
        self.settings.set(keys::MAX_PARALLELISM, max_parallelism.to_string());
        self
    }

    /// `execution.checkpointing.interval`.
    pub fn enable_checkpointing(&mut self, interval: Duration) -> &mut Self {
        self.settings.set(keys::CHECKPOINT_INTERVAL, duration(interval));
        self
    }

    /// The checkpointing settings beyond the interval.
    pub fn checkpoint_config(&mut self) -> &mut CheckpointConfig {
        &mut self.checkpoint_config
    }

    /// `state.backend.type`.
    pub fn set_state_backend(&mut self, backend: StateBackend) -> &mut Self {
        let v = match backend {
            StateBackend::HashMap => "hashmap",
            StateBackend::RocksDb => "rocksdb",
        };
        self.settings.set(keys::STATE_BACKEND, v);
        self
    }

    /// Any configuration key by name (as Flink's `configure`): restart strategies, network
    /// buffers, `minicluster.taskmanagers`, ... The value is checked at `execute`, and an
    /// unknown key or a bad value is an error naming the key.
    pub fn set_config(&mut self, key: &str, value: &str) -> &mut Self {
        self.settings.set(key, value);
        self
    }

    /// The program's configuration, validated: what `execute` would run with (cluster and
    /// job settings together, since the cluster is embedded).
    pub fn config(&self) -> Result<Config, ApiError> {
        self.all_settings().to_config().map(|(c, _)| c)
    }

    pub(crate) fn all_settings(&self) -> Settings {
        let mut all = self.settings.clone();
        for (k, v) in &self.checkpoint_config.settings.0 {
            all.set(k, v.clone());
        }
        all
    }

    pub(crate) fn stream<T>(&self, node: usize) -> DataStream<T> {
        DataStream::new(self.program.clone(), node)
    }

    /// Builds the program's JobGraph, starts the embedded cluster with the program's functions,
    /// runs the job and returns once it ended: `Ok` when it FINISHED, an error naming the
    /// failure when it FAILED (after the restarts its strategy allows).
    pub fn execute(&self, job_name: &str) -> Result<JobExecutionResult, ApiError> {
        self.execute_async(job_name)?.wait()
    }

    /// Like [`execute`](Self::execute), but returns as soon as the job is submitted, with a
    /// client to watch it (its checkpoints, its state) and to wait for its end.
    pub fn execute_async(&self, job_name: &str) -> Result<JobClient, ApiError> {
        let (config, settings) = self.all_settings().to_config()?;
        let (graph, functions) = self.program.borrow().build(job_name, &settings)?;
        JobClient::start(config, graph, functions)
    }
}

/// How a job that finished went.
#[derive(Debug, Clone)]
pub struct JobExecutionResult {
    pub job_id: String,
    /// Restarts the job went through before it finished.
    pub restarts: u32,
    /// Wall time from submission to the end.
    pub net_runtime: Duration,
}
