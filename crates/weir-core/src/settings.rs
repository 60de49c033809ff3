//! Typed configuration: the validated [`Config`] read once into one struct per area, so that
//! every reader takes a typed value (a `Duration`, an enum) instead of looking a key up by
//! name and parsing it again.
//!
//! The key table in [`crate::config`] stays the single source of names, defaults and docs; this
//! module only gives the values their types and checks what no single key can check alone
//! (for example: unaligned checkpoints need EXACTLY_ONCE). Each area is built by
//! `from_config`, which fails with a [`ConfigError`] naming the key, never panics.
//!
//! | struct | read by |
//! |---|---|
//! | [`JobSettings`] (= [`CheckpointConfig`] + [`RestartStrategy`] + [`StateBackendKind`] + parallelism) | JobManager at submission, TaskManager at deployment |
//! | [`NetworkConfig`] | TaskManager (buffers, credits, flush timeout) |
//! | [`S3Config`] | checkpoint storage |
//! | [`JobManagerConfig`] | `weir jobmanager` and the mini cluster |
//! | [`TaskManagerConfig`] | `weir taskmanager` and the mini cluster |

use crate::config::{keys, Config, ConfigError};
use std::time::Duration;

/// `execution.checkpointing.mode`: whether a task with several inputs aligns barriers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum CheckpointingMode {
    /// Barrier alignment: a checkpoint holds exactly the effect of the records before it.
    ExactlyOnce,
    /// No alignment: replays after a restore may duplicate records, never lose them.
    AtLeastOnce,
}

/// `state.backend.type`: where keyed state lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum StateBackendKind {
    /// In memory; a snapshot serializes the key groups.
    HashMap,
    /// One RocksDB instance per operator and subtask; snapshots are RocksDB checkpoints.
    RocksDb,
}

/// Everything `execution.checkpointing.*` says about one job's checkpoints.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckpointConfig {
    /// Periodic checkpoints every `interval`; `None` (the default) turns them off.
    pub interval: Option<Duration>,
    pub mode: CheckpointingMode,
    /// A checkpoint not complete after this long is aborted.
    pub timeout: Duration,
    /// Least time between the completion of one checkpoint and the trigger of the next.
    pub min_pause: Duration,
    pub max_concurrent: usize,
    /// Barriers may overtake in-flight data (FLIP-76).
    pub unaligned: bool,
    /// With `unaligned`: how long a barrier stays aligned before it turns unaligned.
    pub aligned_timeout: Duration,
    /// Checkpoint failures in a row tolerated before the job fails.
    pub tolerable_failures: u64,
    /// Completed checkpoints kept in storage (at least 1).
    pub num_retained: usize,
    /// Upload only new RocksDB SST files.
    pub incremental: bool,
    /// Checkpoint storage URL, once resolved (see [`resolve_checkpoint_dir`]).
    pub dir: Option<String>,
    pub savepoint_dir: Option<String>,
}

impl CheckpointConfig {
    pub fn from_config(c: &Config) -> Result<Self, ConfigError> {
        let mode = match c.get(keys::CHECKPOINT_MODE) {
            "AT_LEAST_ONCE" => CheckpointingMode::AtLeastOnce,
            _ => CheckpointingMode::ExactlyOnce,
        };
        let unaligned = c.bool(keys::CHECKPOINT_UNALIGNED);
        if unaligned && mode == CheckpointingMode::AtLeastOnce {
            return Err(ConfigError::BadValue {
                key: keys::CHECKPOINT_UNALIGNED.into(),
                value: "true".into(),
                reason: "unaligned checkpoints need execution.checkpointing.mode EXACTLY_ONCE".into(),
                origin: String::new(),
            });
        }
        // As in Flink: below 10 ms checkpoints would only churn storage (hundreds of folders a
        // second) and every one would time out.
        const MIN: Duration = Duration::from_millis(10);
        let interval = c.optional_duration(keys::CHECKPOINT_INTERVAL);
        let timeout = c.duration(keys::CHECKPOINT_TIMEOUT);
        for (key, value) in [(keys::CHECKPOINT_INTERVAL, interval), (keys::CHECKPOINT_TIMEOUT, Some(timeout))] {
            if let Some(v) = value.filter(|v| *v < MIN) {
                return Err(ConfigError::BadValue {
                    key: key.into(),
                    value: format!("{}ms", v.as_millis()),
                    reason: "must be at least 10ms".into(),
                    origin: String::new(),
                });
            }
        }
        Ok(Self {
            interval,
            mode,
            timeout,
            min_pause: c.duration(keys::CHECKPOINT_MIN_PAUSE),
            max_concurrent: c.int(keys::CHECKPOINT_MAX_CONCURRENT) as usize,
            unaligned,
            aligned_timeout: c.duration(keys::CHECKPOINT_ALIGNED_TIMEOUT),
            tolerable_failures: c.int(keys::CHECKPOINT_TOLERABLE_FAILED),
            num_retained: (c.int(keys::CHECKPOINT_NUM_RETAINED) as usize).max(1),
            incremental: c.bool(keys::CHECKPOINT_INCREMENTAL),
            dir: c.text(keys::CHECKPOINT_DIR).map(str::to_string),
            savepoint_dir: c.text(keys::SAVEPOINT_DIR).map(str::to_string),
        })
    }

    /// Whether periodic checkpoints are on.
    pub fn enabled(&self) -> bool {
        self.interval.is_some()
    }

    /// How barriers of this job's checkpoints travel: the one reading of
    /// `unaligned.enabled` and `aligned-checkpoint-timeout`.
    pub fn alignment(&self) -> AlignmentPolicy {
        match (self.unaligned, self.aligned_timeout) {
            (false, _) => AlignmentPolicy::Aligned,
            (true, t) if t.is_zero() => AlignmentPolicy::Unaligned,
            (true, t) => AlignmentPolicy::AlignedThenUnaligned(t),
        }
    }
}

/// How a checkpoint's barriers travel (see `docs/checkpointing.md`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AlignmentPolicy {
    /// Barriers travel behind the data and tasks align them: no in-flight data is stored.
    Aligned,
    /// Barriers overtake in-flight data, which is stored as channel state (FLIP-76).
    Unaligned,
    /// A checkpoint starts aligned and turns unaligned at a task whose alignment has lasted
    /// longer than this (`execution.checkpointing.aligned-checkpoint-timeout`).
    AlignedThenUnaligned(Duration),
}

/// Gives a job that checkpoints (or restores) but names no `execution.checkpointing.dir` a
/// local default, `file://<tmp>/weir-checkpoints`: fine on one machine; a cluster needs shared
/// or object storage. The value is set in `config` itself, because the job's configuration is
/// what TaskManagers receive.
pub fn resolve_checkpoint_dir(config: &mut Config, restoring: bool) -> Result<(), ConfigError> {
    if config.is_set(keys::CHECKPOINT_DIR) || !(restoring || config.optional_duration(keys::CHECKPOINT_INTERVAL).is_some()) {
        return Ok(());
    }
    let dir = std::env::temp_dir().join("weir-checkpoints");
    config.set(keys::CHECKPOINT_DIR, &format!("file://{}", dir.display()), "default")
}

/// `restart-strategy.*`: whether a failed job restarts, and after how long.
#[derive(Debug, Clone, PartialEq)]
pub enum RestartStrategy {
    /// Fail for good at the first failure.
    None,
    /// Up to `attempts` restarts, each after `delay`.
    FixedDelay { attempts: u32, delay: Duration },
    /// The pause grows by `multiplier` after each restart, up to `max`; a job that ran
    /// `reset_after` without failing starts again from `initial`.
    ExponentialDelay { initial: Duration, max: Duration, multiplier: u32, reset_after: Duration },
    /// Restart after `delay` unless more than `max_failures` failures fell within `interval`.
    FailureRate { max_failures: u64, interval: Duration, delay: Duration },
}

impl RestartStrategy {
    /// Reads `restart-strategy.type`; unset with checkpointing enabled means
    /// `exponential-delay`, as in Flink.
    pub fn from_config(c: &Config) -> Self {
        let kind = if c.is_set(keys::RESTART_STRATEGY) {
            c.get(keys::RESTART_STRATEGY)
        } else if c.optional_duration(keys::CHECKPOINT_INTERVAL).is_some() {
            "exponential-delay"
        } else {
            "none"
        };
        match kind {
            "fixed-delay" => Self::FixedDelay { attempts: c.int(keys::RESTART_ATTEMPTS) as u32, delay: c.duration(keys::RESTART_DELAY) },
            "exponential-delay" => Self::ExponentialDelay {
                initial: c.duration(keys::RESTART_EXP_INITIAL),
                max: c.duration(keys::RESTART_EXP_MAX),
                multiplier: c.int(keys::RESTART_EXP_MULTIPLIER).min(u32::MAX as u64) as u32,
                reset_after: c.duration(keys::RESTART_EXP_RESET),
            },
            "failure-rate" => Self::FailureRate {
                max_failures: c.int(keys::RESTART_RATE_MAX),
                interval: c.duration(keys::RESTART_RATE_INTERVAL),
                delay: c.duration(keys::RESTART_RATE_DELAY),
            },
            _ => Self::None,
        }
    }
}

/// The settings one job runs with: read once when it is submitted (and again by each
/// TaskManager from the job's shipped configuration).
#[derive(Debug, Clone, PartialEq)]
pub struct JobSettings {
    pub parallelism: u32,
    pub max_parallelism: u32,
    pub checkpoint: CheckpointConfig,
    pub restart: RestartStrategy,
    pub state_backend: StateBackendKind,
    /// `pipeline.auto-watermark-interval`: how often watermark assigners emit.
    pub auto_watermark_interval: Duration,
    /// `state.backend.rocksdb.aggregate-cache`: bytes of the RocksDB aggregate cache per
    /// operator and subtask (0: none).
    pub rocksdb_aggregate_cache: usize,
}

/// The most key groups a job may have, as in Flink (`1 << 15`): key groups are stored in two
/// bytes in front of every RocksDB key.
pub const MAX_KEY_GROUPS: u64 = 1 << 15;

impl JobSettings {
    pub fn from_config(c: &Config) -> Result<Self, ConfigError> {
        let max_parallelism = c.int(keys::MAX_PARALLELISM);
        if max_parallelism > MAX_KEY_GROUPS {
            return Err(ConfigError::BadValue {
                key: keys::MAX_PARALLELISM.into(),
                value: max_parallelism.to_string(),
                reason: format!("must be at most {MAX_KEY_GROUPS}"),
                origin: String::new(),
            });
        }
        Ok(Self {
            parallelism: c.int(keys::PARALLELISM) as u32,
            max_parallelism: max_parallelism as u32,
            checkpoint: CheckpointConfig::from_config(c)?,
            restart: RestartStrategy::from_config(c),
            auto_watermark_interval: c.duration(keys::AUTO_WATERMARK_INTERVAL),
            rocksdb_aggregate_cache: c.size(keys::ROCKSDB_AGGREGATE_CACHE) as usize,
            state_backend: match c.get(keys::STATE_BACKEND) {
                "rocksdb" => StateBackendKind::RocksDb,
                _ => StateBackendKind::HashMap,
            },
        })
    }
}

/// The data plane's buffers and flow control.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetworkConfig {
    /// Target size of one network buffer.
    pub segment_size: usize,
    /// Credits a receiver grants each input channel.
    pub buffers_per_channel: usize,
    /// Floating credits of an input gate with remote channels, for channels with a backlog.
    pub floating_buffers_per_gate: usize,
    /// Buffers a sender queues per output channel before its task is backpressured.
    pub sender_queue_buffers: usize,
    /// Longest time rows wait in a partly filled output buffer.
    pub buffer_timeout: Duration,
    /// `taskmanager.memory.network.max`: the network memory of one TaskManager, in bytes.
    pub memory_max: u64,
    /// `taskmanager.network.memory.buffer-debloat.*`; `None` when debloating is off.
    pub debloat: Option<DebloatConfig>,
}

/// Buffer debloating (`taskmanager.network.memory.buffer-debloat.*`): how an input gate sizes
/// the buffers its senders cut, from its task's throughput.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DebloatConfig {
    /// How long the data in flight towards a gate should take its task to process.
    pub target: Duration,
    /// How often the throughput is measured and the size recomputed.
    pub period: Duration,
    /// The throughput's moving average spans about this many periods.
    pub samples: u32,
    /// A new size is announced only if it differs from the last by more than this percentage.
    pub threshold_percent: u32,
    /// `taskmanager.memory.min-segment-size`: the smallest size asked for, in bytes (at most
    /// the segment size).
    pub min_size: usize,
}

impl NetworkConfig {
    pub fn from_config(c: &Config) -> Self {
        Self {
            segment_size: c.size(keys::SEGMENT_SIZE) as usize,
            buffers_per_channel: c.int(keys::BUFFERS_PER_CHANNEL) as usize,
            floating_buffers_per_gate: c.int(keys::FLOATING_BUFFERS_PER_GATE) as usize,
            sender_queue_buffers: c.int(keys::SENDER_QUEUE_BUFFERS) as usize,
            buffer_timeout: c.duration(keys::BUFFER_TIMEOUT),
            memory_max: c.size(keys::NETWORK_MEMORY_MAX),
            debloat: c.bool(keys::DEBLOAT_ENABLED).then(|| DebloatConfig {
                target: c.duration(keys::DEBLOAT_TARGET),
                period: c.duration(keys::DEBLOAT_PERIOD),
                samples: c.int(keys::DEBLOAT_SAMPLES).min(u32::MAX as u64) as u32,
                threshold_percent: c.int(keys::DEBLOAT_THRESHOLD).min(u32::MAX as u64) as u32,
                min_size: (c.size(keys::MIN_SEGMENT_SIZE) as usize).min(c.size(keys::SEGMENT_SIZE) as usize),
            }),
        }
    }
}

/// `s3.*`: how checkpoint storage reaches an S3-compatible store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct S3Config {
    pub endpoint: Option<String>,
    pub access_key: Option<String>,
    pub secret_key: Option<String>,
    pub region: String,
    pub path_style: bool,
}

impl S3Config {
    pub fn from_config(c: &Config) -> Self {
        Self {
            endpoint: c.text(keys::S3_ENDPOINT).map(str::to_string),
            access_key: c.text(keys::S3_ACCESS_KEY).map(str::to_string),
            secret_key: c.text(keys::S3_SECRET_KEY).map(str::to_string),
            region: c.get(keys::S3_REGION).to_string(),
            path_style: c.bool(keys::S3_PATH_STYLE),
        }
    }
}

/// What a JobManager process needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobManagerConfig {
    /// `jobmanager.bind-host`, else `jobmanager.rpc.address`, else `0.0.0.0`.
    pub bind_host: String,
    /// `jobmanager.job.max-size`: the largest job definition accepted, in bytes.
    pub job_max_size: usize,
    pub port: u16,
    /// Where submitted jobs are recorded for recovery; `None`: no recovery.
    pub catalog_dir: Option<String>,
    pub heartbeat_interval: Duration,
    pub heartbeat_timeout: Duration,
    pub slot_request_timeout: Duration,
    /// `rest.port`: the REST API's port (0: a free one).
    pub rest_port: u16,
    /// `rest.bind-address`; `None`: the gRPC server's bind host.
    pub rest_bind_address: Option<String>,
}

impl JobManagerConfig {
    pub fn from_config(c: &Config) -> Self {
        Self {
            bind_host: c.text(keys::JOBMANAGER_BIND_HOST).or_else(|| c.text(keys::JOBMANAGER_ADDRESS)).unwrap_or("0.0.0.0").to_string(),
            job_max_size: c.size(keys::JOB_MAX_SIZE) as usize,
            port: c.int(keys::JOBMANAGER_PORT) as u16,
            catalog_dir: c.text(keys::JOBMANAGER_CATALOG_DIR).map(str::to_string),
            heartbeat_interval: c.duration(keys::HEARTBEAT_INTERVAL),
            heartbeat_timeout: c.duration(keys::HEARTBEAT_TIMEOUT),
            slot_request_timeout: c.duration(keys::SLOT_REQUEST_TIMEOUT),
            rest_port: c.int(keys::REST_PORT) as u16,
            rest_bind_address: c.text(keys::REST_BIND_ADDRESS).map(str::to_string),
        }
    }
}

/// What a TaskManager process needs (besides the JobManager's address).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskManagerConfig {
    /// The address it advertises; `auto` for the address of its interface towards the
    /// JobManager (see [`TaskManagerConfig::AUTO_HOST`]).
    pub host: String,
    /// The address its ports bind.
    pub bind_host: String,
    pub rpc_port: u16,
    pub data_port: u16,
    /// `metrics.port`: the Prometheus endpoint's port (0: a free one).
    pub metrics_port: u16,
    pub slots: u32,
    pub heartbeat_interval: Duration,
    pub heartbeat_timeout: Duration,
    pub network: NetworkConfig,
    /// Local working directory for state (`taskmanager.tmp.dirs`), if set.
    pub tmp_dir: Option<String>,
}

impl TaskManagerConfig {
    /// The `taskmanager.host` that asks a TaskManager to find its address itself.
    pub const AUTO_HOST: &'static str = "auto";

    pub fn from_config(c: &Config) -> Self {
        Self {
            host: c.get(keys::TASKMANAGER_HOST).to_string(),
            bind_host: c.text(keys::TASKMANAGER_BIND_HOST).map(str::to_string).unwrap_or_else(|| {
                let host = c.get(keys::TASKMANAGER_HOST);
                if host == Self::AUTO_HOST {
                    "0.0.0.0".to_string()
                } else {
                    host.to_string()
                }
            }),
            rpc_port: c.int(keys::TASKMANAGER_RPC_PORT) as u16,
            data_port: c.int(keys::TASKMANAGER_DATA_PORT) as u16,
            metrics_port: c.int(keys::METRICS_PORT) as u16,
            slots: c.int(keys::TASKMANAGER_SLOTS) as u32,
            heartbeat_interval: c.duration(keys::HEARTBEAT_INTERVAL),
            heartbeat_timeout: c.duration(keys::HEARTBEAT_TIMEOUT),
            network: NetworkConfig::from_config(c),
            tmp_dir: c.text(keys::TASKMANAGER_TMP_DIRS).map(str::to_string),
        }
    }
}

/// `security.*`: how processes of one cluster prove themselves to each other. Shared by every
/// process and the CLI; never part of a job's configuration.
#[derive(Clone, PartialEq, Eq)]
pub struct SecurityConfig {
    /// `security.token`, else the `WEIR_SECURITY_TOKEN` environment variable; `None`: no
    /// authentication.
    pub token: Option<String>,
    /// `security.ssl.internal.*` when enabled: PEM paths for TLS with mutual authentication.
    pub tls: Option<TlsPaths>,
}

/// PEM files of internal TLS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsPaths {
    /// This process's certificate chain.
    pub cert: String,
    /// This process's private key.
    pub key: String,
    /// The CA certificate(s) a peer's certificate must chain to.
    pub trust_cert: String,
}

/// The environment variable a token may come from instead of `security.token`.
pub const TOKEN_ENV: &str = "WEIR_SECURITY_TOKEN";

/// Configuration keys that belong to the cluster, never to a job: a job file or submission
/// that sets one is refused.
pub fn is_cluster_only_key(key: &str) -> bool {
    key.starts_with("security.")
}

impl SecurityConfig {
    /// Reads `security.*` (and [`TOKEN_ENV`]); with TLS enabled, each of its three paths must be
    /// set, else the error names the missing key.
    pub fn from_config(c: &Config) -> Result<Self, ConfigError> {
        let token = c.text(keys::SECURITY_TOKEN).map(str::to_string).or_else(|| std::env::var(TOKEN_ENV).ok().filter(|t| !t.is_empty()));
        let tls = if c.bool(keys::SSL_INTERNAL_ENABLED) {
            let path = |key: &str| {
                c.text(key).map(str::to_string).ok_or_else(|| ConfigError::BadValue {
                    key: key.to_string(),
                    value: "none".to_string(),
                    reason: format!("a PEM file is required when {} is true", keys::SSL_INTERNAL_ENABLED),
                    origin: String::new(),
                })
            };
            Some(TlsPaths {
                cert: path(keys::SSL_INTERNAL_CERT)?,
                key: path(keys::SSL_INTERNAL_KEY)?,
                trust_cert: path(keys::SSL_INTERNAL_TRUST_CERT)?,
            })
        } else {
            None
        };
        Ok(Self { token, tls })
    }
}

/// The token is a secret: debug output never shows it.
impl std::fmt::Debug for SecurityConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecurityConfig").field("token", &self.token.as_ref().map(|_| "<set>")).field("tls", &self.tls).finish()
    }
}

/// What a client (`weir run/list/...`) needs to find the cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientConfig {
    /// `host:port` of the JobManager, or `None` for the embedded mini cluster.
    pub jobmanager: Option<String>,
    /// TaskManagers the embedded mini cluster starts, and the slots each offers.
    pub minicluster_taskmanagers: u32,
}

impl ClientConfig {
    pub fn from_config(c: &Config) -> Self {
        Self {
            jobmanager: c.text(keys::JOBMANAGER_ADDRESS).map(|h| format!("{h}:{}", c.int(keys::JOBMANAGER_PORT))),
            minicluster_taskmanagers: c.int(keys::MINICLUSTER_TASKMANAGERS) as u32,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(pairs: &[(&str, &str)]) -> Config {
        let mut c = Config::new();
        for (k, v) in pairs {
            c.set(k, v, "test").unwrap();
        }
        c
    }

    #[test]
    fn defaults_read_into_every_area() {
        let c = Config::new();
        let job = JobSettings::from_config(&c).unwrap();
        assert_eq!(job.parallelism, 1);
        assert_eq!(job.max_parallelism, 128);
        assert_eq!(job.checkpoint.interval, None);
        assert!(!job.checkpoint.enabled());
        assert_eq!(job.checkpoint.mode, CheckpointingMode::ExactlyOnce);
        assert_eq!(job.checkpoint.timeout, Duration::from_secs(600));
        assert_eq!(job.checkpoint.num_retained, 1);
        assert_eq!(job.restart, RestartStrategy::None);
        assert_eq!(job.state_backend, StateBackendKind::HashMap);
        let tm = TaskManagerConfig::from_config(&c);
        assert_eq!(tm.network.segment_size, 64 * 1024);
        assert_eq!(tm.network.buffer_timeout, Duration::from_millis(100));
        let debloat = tm.network.debloat.expect("buffer debloating is on by default");
        assert_eq!((debloat.target, debloat.period), (Duration::from_secs(1), Duration::from_millis(200)));
        assert_eq!((debloat.samples, debloat.threshold_percent, debloat.min_size), (20, 25, 1024));
        assert_eq!(tm.slots, 4);
        let jm = JobManagerConfig::from_config(&c);
        assert_eq!((jm.port, jm.catalog_dir), (6123, None));
        assert_eq!(ClientConfig::from_config(&c).jobmanager, None);
        assert_eq!(S3Config::from_config(&c).region, "us-east-1");
    }

    #[test]
    fn checkpoint_settings_are_typed() {
        let c = config(&[
            (keys::CHECKPOINT_INTERVAL, "10s"),
            (keys::CHECKPOINT_MODE, "at_least_once"),
            (keys::CHECKPOINT_MAX_CONCURRENT, "3"),
            (keys::STATE_BACKEND, "rocksdb"),
        ]);
        let job = JobSettings::from_config(&c).unwrap();
        assert_eq!(job.checkpoint.interval, Some(Duration::from_secs(10)));
        assert_eq!(job.checkpoint.mode, CheckpointingMode::AtLeastOnce);
        assert_eq!(job.checkpoint.max_concurrent, 3);
        assert_eq!(job.state_backend, StateBackendKind::RocksDb);
    }

    #[test]
    fn an_interval_or_timeout_below_10ms_is_an_error_naming_the_key() {
        for key in [keys::CHECKPOINT_INTERVAL, keys::CHECKPOINT_TIMEOUT] {
            let err = CheckpointConfig::from_config(&config(&[(key, "0ms")])).unwrap_err().to_string();
            assert!(err.contains(key) && err.contains("10ms"), "{err}");
            assert!(CheckpointConfig::from_config(&config(&[(key, "10ms")])).is_ok());
        }
    }

    #[test]
    fn unaligned_with_at_least_once_is_an_error_naming_the_key() {
        let c = config(&[(keys::CHECKPOINT_UNALIGNED, "true"), (keys::CHECKPOINT_MODE, "AT_LEAST_ONCE")]);
        let err = JobSettings::from_config(&c).unwrap_err().to_string();
        assert!(err.contains("execution.checkpointing.unaligned.enabled") && err.contains("EXACTLY_ONCE"), "{err}");
    }

    #[test]
    fn max_parallelism_is_bounded_like_flink() {
        assert!(JobSettings::from_config(&config(&[(keys::MAX_PARALLELISM, "32768")])).is_ok());
        let err = JobSettings::from_config(&config(&[(keys::MAX_PARALLELISM, "70000")])).unwrap_err().to_string();
        assert!(err.contains("pipeline.max-parallelism") && err.contains("32768"), "{err}");
    }

    #[test]
    fn restart_strategy_defaults_follow_flink() {
        assert_eq!(RestartStrategy::from_config(&Config::new()), RestartStrategy::None);
        let with_checkpoints = config(&[(keys::CHECKPOINT_INTERVAL, "1s")]);
        assert!(matches!(RestartStrategy::from_config(&with_checkpoints), RestartStrategy::ExponentialDelay { multiplier: 2, .. }));
        let fixed = config(&[(keys::RESTART_STRATEGY, "fixed-delay"), (keys::RESTART_ATTEMPTS, "5"), (keys::RESTART_DELAY, "2s")]);
        assert_eq!(RestartStrategy::from_config(&fixed), RestartStrategy::FixedDelay { attempts: 5, delay: Duration::from_secs(2) });
        let none = config(&[(keys::RESTART_STRATEGY, "none"), (keys::CHECKPOINT_INTERVAL, "1s")]);
        assert_eq!(RestartStrategy::from_config(&none), RestartStrategy::None);
    }

    #[test]
    fn checkpoint_dir_defaults_only_when_needed() {
        let mut off = Config::new();
        resolve_checkpoint_dir(&mut off, false).unwrap();
        assert!(!off.is_set(keys::CHECKPOINT_DIR));
        let mut on = config(&[(keys::CHECKPOINT_INTERVAL, "1s")]);
        resolve_checkpoint_dir(&mut on, false).unwrap();
        assert!(on.text(keys::CHECKPOINT_DIR).is_some_and(|d| d.starts_with("file:///") && d.ends_with("weir-checkpoints")));
        let mut explicit = config(&[(keys::CHECKPOINT_INTERVAL, "1s"), (keys::CHECKPOINT_DIR, "s3://b/p")]);
        resolve_checkpoint_dir(&mut explicit, true).unwrap();
        assert_eq!(CheckpointConfig::from_config(&explicit).unwrap().dir.as_deref(), Some("s3://b/p"));
    }
}
