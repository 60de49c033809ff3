//! Configuration: one table of every key Weir understands, with its default and the kind of
//! value it takes, and a [`Config`] that only ever holds validated values.
//!
//! Layers, lowest first: built-in defaults, the cluster's `config.yaml`, the `WEIR_PROPERTIES`
//! environment variable (for containers), the job file's `config:` section, then `-D key=value`
//! on the command line. Every layer goes through [`Config::set`], so an unknown key or a bad
//! value is an error naming the key, wherever it came from. Keys follow Flink's names where
//! Flink has the concept. `docs/configuration.md` documents every key.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

/// What a configuration value must look like.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `10s`, `500ms`, `1min`, `2h`.
    Duration,
    /// A duration or `none` (feature off).
    OptionalDuration,
    /// `32kb`, `4mb`, or a plain number of bytes.
    Size,
    /// A size, or `0` (feature off).
    SizeOrZero,
    /// An unsigned integer, at least the given minimum.
    Int {
        min: u64,
    },
    /// A TCP port, 0 to 65535 (0 = pick a free one).
    Port,
    Bool,
    /// One of the given words (case-insensitive; stored in the listed spelling).
    Enum(&'static [&'static str]),
    /// Free text (addresses, paths, credentials).
    Text,
}

/// One configuration key.
#[derive(Debug, Clone, Copy)]
pub struct KeyDef {
    pub key: &'static str,
    pub default: &'static str,
    pub kind: Kind,
    pub doc: &'static str,
}

macro_rules! keys {
    ($( $const:ident = $key:literal, $default:literal, $kind:expr, $doc:literal; )*) => {
        /// The names of every configuration key, as constants.
        pub mod keys {
            $( pub const $const: &str = $key; )*
        }
        /// Every key Weir understands.
        pub const KEYS: &[KeyDef] = &[
            $( KeyDef { key: $key, default: $default, kind: $kind, doc: $doc }, )*
        ];
    };
}

use Kind::*;

keys! {
    PARALLELISM = "parallelism.default", "1", Int { min: 1 },
        "Parallelism of operators that do not set their own.";
    MAX_PARALLELISM = "pipeline.max-parallelism", "128", Int { min: 1 },
        "Number of key groups (at most 32768); the upper bound for any operator's parallelism.";
    AUTO_WATERMARK_INTERVAL = "pipeline.auto-watermark-interval", "200ms", Duration,
        "How often a watermark assigner emits its watermark (if event time advanced).";
    SOURCE_IDLE_TIMEOUT = "table.exec.source.idle-timeout", "0ms", Duration,
        "SQL: a source subtask without rows for this long is idle, and downstream event time no longer waits for it; 0ms: never.";
    CHECKPOINT_INTERVAL = "execution.checkpointing.interval", "none", OptionalDuration,
        "Interval between checkpoint triggers; `none` disables checkpointing.";
    CHECKPOINT_MODE = "execution.checkpointing.mode", "EXACTLY_ONCE", Enum(&["EXACTLY_ONCE", "AT_LEAST_ONCE"]),
        "EXACTLY_ONCE aligns barriers; AT_LEAST_ONCE never blocks an input.";
    CHECKPOINT_TIMEOUT = "execution.checkpointing.timeout", "10min", Duration,
        "A checkpoint not complete after this long is aborted.";
    CHECKPOINT_MIN_PAUSE = "execution.checkpointing.min-pause", "0ms", Duration,
        "Minimum time between the end of one checkpoint and the trigger of the next.";
    CHECKPOINT_MAX_CONCURRENT = "execution.checkpointing.max-concurrent-checkpoints", "1", Int { min: 1 },
        "How many checkpoints may be in progress at once.";
    CHECKPOINT_UNALIGNED = "execution.checkpointing.unaligned.enabled", "false", Bool,
        "Let barriers overtake in-flight data, which then becomes part of the checkpoint.";
    CHECKPOINT_ALIGNED_TIMEOUT = "execution.checkpointing.aligned-checkpoint-timeout", "0ms", Duration,
        "With unaligned enabled: how long a barrier stays aligned before it switches to unaligned.";
    CHECKPOINT_TOLERABLE_FAILED = "execution.checkpointing.tolerable-failed-checkpoints", "0", Int { min: 0 },
        "Checkpoint failures in a row that are tolerated before the job fails.";
    CHECKPOINT_NUM_RETAINED = "execution.checkpointing.num-retained", "1", Int { min: 1 },
        "Completed checkpoints kept in checkpoint storage.";
    CHECKPOINT_INCREMENTAL = "execution.checkpointing.incremental", "true", Bool,
        "Upload only new RocksDB SST files (rocksdb backend).";
    CHECKPOINT_DIR = "execution.checkpointing.dir", "none", Text,
        "Checkpoint storage URL: file:///path, s3://bucket/path or memory://.";
    SAVEPOINT_DIR = "execution.checkpointing.savepoint-dir", "none", Text,
        "Default directory for savepoints.";
    SAVEPOINT_PATH = "execution.savepoint.path", "none", Text,
        "Savepoint or retained checkpoint a submitted job starts from (as `weir run -s`).";
    SAVEPOINT_IGNORE_UNCLAIMED = "execution.savepoint.ignore-unclaimed-state", "false", Bool,
        "Start from `execution.savepoint.path` even if some of its state maps to no operator (as `-n`).";
    STATE_BACKEND = "state.backend.type", "hashmap", Enum(&["hashmap", "rocksdb"]),
        "Where keyed state lives: in memory (hashmap) or in RocksDB.";
    ROCKSDB_AGGREGATE_CACHE = "state.backend.rocksdb.aggregate-cache", "64mb", SizeOrZero,
        "Write-back cache of the built-in keyed aggregates in front of RocksDB, per operator and subtask; 0 turns it off.";
    RESTART_STRATEGY = "restart-strategy.type", "none", Enum(&["none", "fixed-delay", "exponential-delay", "failure-rate"]),
        "What to do when a job fails. Unset with checkpointing enabled means exponential-delay, as in Flink.";
    RESTART_ATTEMPTS = "restart-strategy.fixed-delay.attempts", "3", Int { min: 0 },
        "fixed-delay: restarts before the job fails for good.";
    RESTART_DELAY = "restart-strategy.fixed-delay.delay", "1s", Duration,
        "fixed-delay: pause before each restart.";
    RESTART_EXP_INITIAL = "restart-strategy.exponential-delay.initial-backoff", "1s", Duration,
        "exponential-delay: pause before the first restart.";
    RESTART_EXP_MAX = "restart-strategy.exponential-delay.max-backoff", "1min", Duration,
        "exponential-delay: longest pause between restarts.";
    RESTART_EXP_MULTIPLIER = "restart-strategy.exponential-delay.backoff-multiplier", "2", Int { min: 1 },
        "exponential-delay: factor applied to the pause after each restart.";
    RESTART_EXP_RESET = "restart-strategy.exponential-delay.reset-backoff-threshold", "1h", Duration,
        "exponential-delay: a job running this long without failure starts again from the initial backoff.";
    RESTART_RATE_MAX = "restart-strategy.failure-rate.max-failures-per-interval", "1", Int { min: 1 },
        "failure-rate: failures tolerated within one interval; one more fails the job.";
    RESTART_RATE_INTERVAL = "restart-strategy.failure-rate.failure-rate-interval", "1min", Duration,
        "failure-rate: the interval failures are counted over.";
    RESTART_RATE_DELAY = "restart-strategy.failure-rate.delay", "1s", Duration,
        "failure-rate: pause before each restart.";
    TASKMANAGER_SLOTS = "taskmanager.numberOfTaskSlots", "4", Int { min: 1 },
        "Slots a TaskManager offers; a slot runs one subtask of every operator of a job.";
    TASKMANAGER_HOST = "taskmanager.host", "127.0.0.1", Text,
        "Address a TaskManager advertises to the JobManager and its peers (and binds, unless taskmanager.bind-host is set); `auto`: the address of its interface that reaches the JobManager (containers).";
    TASKMANAGER_BIND_HOST = "taskmanager.bind-host", "none", Text,
        "Address a TaskManager's gRPC and data ports bind; `none`: taskmanager.host, or 0.0.0.0 when that is `auto`.";
    TASKMANAGER_RPC_PORT = "taskmanager.rpc.port", "0", Port,
        "TaskManager gRPC port; 0 picks a free port.";
    TASKMANAGER_DATA_PORT = "taskmanager.data.port", "0", Port,
        "TaskManager data-plane (TCP) port; 0 picks a free port.";
    TASKMANAGER_TMP_DIRS = "taskmanager.tmp.dirs", "none", Text,
        "Local working directory for state; defaults to the system temp directory.";
    SEGMENT_SIZE = "taskmanager.memory.segment-size", "64kb", Size,
        "Target size of one network buffer: output is flushed when a channel's buffer reaches it.";
    BUFFERS_PER_CHANNEL = "taskmanager.network.memory.buffers-per-channel", "4", Int { min: 1 },
        "Credits (buffers) a receiver grants each input channel: its exclusive buffers.";
    FLOATING_BUFFERS_PER_GATE = "taskmanager.network.memory.floating-buffers-per-gate", "8", Int { min: 0 },
        "Extra credits an input gate with remote channels grants, on top of the exclusive ones, to the channels whose senders report a backlog.";
    SENDER_QUEUE_BUFFERS = "taskmanager.network.sender-queue-buffers", "4", Int { min: 1 },
        "Buffers a sender may queue per output channel before its task blocks.";
    DEBLOAT_ENABLED = "taskmanager.network.memory.buffer-debloat.enabled", "true", Bool,
        "Buffer debloating (Flink's FLIP-183): each input gate measures how fast its task consumes and asks its senders for buffers sized so that its in-flight data takes about buffer-debloat.target to process; under backpressure buffers shrink, and checkpoints wait behind (aligned) or persist (unaligned) less data.";
    DEBLOAT_TARGET = "taskmanager.network.memory.buffer-debloat.target", "1s", Duration,
        "Buffer debloating: how long the data in flight towards one input gate should take its task to process.";
    DEBLOAT_PERIOD = "taskmanager.network.memory.buffer-debloat.period", "200ms", Duration,
        "Buffer debloating: how often a gate measures its task's throughput and recomputes the buffer size.";
    DEBLOAT_SAMPLES = "taskmanager.network.memory.buffer-debloat.samples", "20", Int { min: 1 },
        "Buffer debloating: the throughput is averaged over about this many periods (exponential moving average).";
    DEBLOAT_THRESHOLD = "taskmanager.network.memory.buffer-debloat.threshold-percentages", "25", Int { min: 0 },
        "Buffer debloating: a new buffer size is announced to the senders only if it differs from the last one by more than this percentage.";
    MIN_SEGMENT_SIZE = "taskmanager.memory.min-segment-size", "1kb", Size,
        "Buffer debloating: the smallest buffer size a gate asks for (at most taskmanager.memory.segment-size).";
    NETWORK_MEMORY_MAX = "taskmanager.memory.network.max", "512mb", Size,
        "Network memory a TaskManager hands out to the channels of its tasks; a deployment that needs more fails, naming what it needs.";
    JOBMANAGER_ADDRESS = "jobmanager.rpc.address", "none", Text,
        "JobManager host. Clients use it to find the cluster; `none` makes `weir run` start a local mini cluster.";
    JOBMANAGER_PORT = "jobmanager.rpc.port", "6123", Port,
        "JobManager gRPC port; 0 picks a free port.";
    JOBMANAGER_CATALOG_DIR = "jobmanager.catalog.dir", "none", Text,
        "Directory where the JobManager records submitted jobs; a JobManager restarted on it resumes them from their latest checkpoint. `none`: no recovery.";
    JOBMANAGER_BIND_HOST = "jobmanager.bind-host", "none", Text,
        "Address the JobManager's gRPC server binds; `none`: jobmanager.rpc.address when set, else 0.0.0.0.";
    JOB_MAX_SIZE = "jobmanager.job.max-size", "4mb", Size,
        "Largest job definition the JobManager accepts; a larger one is refused naming this key.";
    REST_PORT = "rest.port", "8081", Port,
        "Port of the JobManager's REST API; 0 picks a free port (the embedded mini cluster's default).";
    REST_BIND_ADDRESS = "rest.bind-address", "none", Text,
        "Address the REST API binds; `none`: the JobManager's gRPC bind address (the embedded mini cluster: 127.0.0.1).";
    METRICS_PORT = "metrics.port", "9249", Port,
        "Port of a TaskManager's Prometheus endpoint (/metrics); 0 picks a free port (the embedded mini cluster's default). The JobManager serves its /metrics on rest.port.";
    HEARTBEAT_INTERVAL = "heartbeat.interval", "1s", Duration,
        "How often TaskManagers heartbeat the JobManager (at least once a second: heartbeats carry the task metrics).";
    HEARTBEAT_TIMEOUT = "heartbeat.timeout", "10s", Duration,
        "A TaskManager (or JobManager) silent this long is declared lost.";
    SLOT_REQUEST_TIMEOUT = "slot.request.timeout", "5min", Duration,
        "How long a job waits for enough free slots before it fails.";
    BUFFER_TIMEOUT = "execution.buffer-timeout", "100ms", Duration,
        "Longest time rows wait in a partly filled output buffer before it is flushed.";
    MINICLUSTER_TASKMANAGERS = "minicluster.taskmanagers", "1", Int { min: 1 },
        "TaskManagers the embedded mini cluster starts.";
    S3_ENDPOINT = "s3.endpoint", "none", Text,
        "S3 endpoint URL (MinIO and other S3-compatible stores).";
    S3_ACCESS_KEY = "s3.access-key", "none", Text, "S3 access key.";
    S3_SECRET_KEY = "s3.secret-key", "none", Text, "S3 secret key.";
    S3_REGION = "s3.region", "us-east-1", Text, "S3 region.";
    S3_PATH_STYLE = "s3.path.style.access", "false", Bool,
        "Address buckets as path segments (needed by MinIO and most S3-compatible stores).";
    SECURITY_TOKEN = "security.token", "none", Text,
        "Shared secret every gRPC call and data-plane connection must prove; also WEIR_SECURITY_TOKEN. `none`: no authentication.";
    SSL_INTERNAL_ENABLED = "security.ssl.internal.enabled", "false", Bool,
        "TLS with mutual authentication on gRPC and the data plane between JobManager, TaskManagers and clients.";
    SSL_INTERNAL_CERT = "security.ssl.internal.cert", "none", Text,
        "PEM file with this process's certificate chain (internal TLS).";
    SSL_INTERNAL_KEY = "security.ssl.internal.key", "none", Text,
        "PEM file with this process's private key (internal TLS).";
    SSL_INTERNAL_TRUST_CERT = "security.ssl.internal.trust-cert", "none", Text,
        "PEM file with the CA certificate(s) a peer's certificate must chain to (internal TLS).";
}

/// A configuration error: always names the key, and where the value came from when known.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error("unknown configuration key '{key}'{}", origin_suffix(.origin))]
    UnknownKey { key: String, origin: String },
    #[error("bad value '{value}' for configuration key '{key}'{}: {reason}", origin_suffix(.origin))]
    BadValue { key: String, value: String, reason: String, origin: String },
    #[error("cannot read configuration file {path}: {reason}")]
    File { path: String, reason: String },
}

fn origin_suffix(origin: &str) -> String {
    if origin.is_empty() {
        String::new()
    } else {
        format!(" (in {origin})")
    }
}

/// A validated value, parsed once when it is set: reading it never parses again.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Value {
    Duration(Duration),
    OptionalDuration(Option<Duration>),
    Size(u64),
    Int(u64),
    Bool(bool),
    /// Enum words, text and ports keep their (normalized) text.
    Text,
}

/// Validated configuration values. Keys not set explicitly read as their default.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Config {
    /// The explicitly set values, normalized, as they are shipped between processes.
    values: BTreeMap<String, String>,
    /// The same values, parsed.
    parsed: BTreeMap<String, Value>,
}

/// The parsed default of every key (every default is valid: a unit test checks it).
fn default_value(key: &str) -> Option<(&'static str, Value)> {
    static DEFAULTS: std::sync::LazyLock<BTreeMap<&'static str, Value>> =
        std::sync::LazyLock::new(|| KEYS.iter().filter_map(|d| validate(d, d.default).ok().map(|(_, v)| (d.key, v))).collect());
    let def = Config::key_def(key)?;
    DEFAULTS.get(def.key).map(|v| (def.default, v.clone()))
}

impl Config {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn key_def(key: &str) -> Option<&'static KeyDef> {
        KEYS.iter().find(|k| k.key == key)
    }

    /// Sets `key` to `value` after validating both. `origin` names where it came from
    /// (a file, `-D`, the job file) for the error message.
    pub fn set(&mut self, key: &str, value: &str, origin: &str) -> Result<(), ConfigError> {
        let key = key.trim();
        let value = value.trim();
        let def = Self::key_def(key).ok_or_else(|| ConfigError::UnknownKey { key: key.to_string(), origin: origin.to_string() })?;
        let (normalized, parsed) = validate(def, value).map_err(|reason| ConfigError::BadValue {
            key: key.to_string(),
            value: value.to_string(),
            reason,
            origin: origin.to_string(),
        })?;
        self.values.insert(key.to_string(), normalized);
        self.parsed.insert(key.to_string(), parsed);
        Ok(())
    }

    /// Applies every `key = value` pair of `other` on top of this configuration.
    pub fn merge(&mut self, other: &Config) {
        for (k, v) in &other.values {
            self.values.insert(k.clone(), v.clone());
        }
        for (k, v) in &other.parsed {
            self.parsed.insert(k.clone(), v.clone());
        }
    }

    /// Parses a YAML mapping of keys to scalar values (the `config.yaml` format; nested maps
    /// are flattened with dots, as Flink does).
    pub fn from_yaml_str(text: &str, origin: &str) -> Result<Self, ConfigError> {
        let mut cfg = Config::new();
        if text.trim().is_empty() {
            return Ok(cfg);
        }
        let value: serde_norway::Value =
            serde_norway::from_str(text).map_err(|e| ConfigError::File { path: origin.to_string(), reason: e.to_string() })?;
        cfg.apply_yaml(&value, origin)?;
        Ok(cfg)
    }

    /// Applies a YAML mapping (as in `config.yaml` or a job file's `config:`).
    pub fn apply_yaml(&mut self, value: &serde_norway::Value, origin: &str) -> Result<(), ConfigError> {
        let mut flat = Vec::new();
        flatten("", value, &mut flat).map_err(|reason| ConfigError::File { path: origin.to_string(), reason })?;
        for (k, v) in flat {
            self.set(&k, &v, origin)?;
        }
        Ok(())
    }

    pub fn from_yaml_file(path: &Path) -> Result<Self, ConfigError> {
        let text =
            std::fs::read_to_string(path).map_err(|e| ConfigError::File { path: path.display().to_string(), reason: e.to_string() })?;
        Self::from_yaml_str(&text, &path.display().to_string())
    }

    /// Parses `key: value` or `key=value` lines (the `WEIR_PROPERTIES` environment variable).
    pub fn apply_properties(&mut self, text: &str, origin: &str) -> Result<(), ConfigError> {
        for line in text.lines() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (k, v) = split_pair(line).ok_or_else(|| ConfigError::BadValue {
                key: line.to_string(),
                value: String::new(),
                reason: "expected 'key: value' or 'key=value'".into(),
                origin: origin.to_string(),
            })?;
            self.set(k, v, origin)?;
        }
        Ok(())
    }

    /// Parses one `-D key=value` argument.
    pub fn apply_dynamic(&mut self, arg: &str) -> Result<(), ConfigError> {
        let (k, v) = arg.split_once('=').ok_or_else(|| ConfigError::BadValue {
            key: arg.to_string(),
            value: String::new(),
            reason: "expected -D key=value".into(),
            origin: "-D".into(),
        })?;
        self.set(k, v, "-D")
    }

    /// The explicitly set values (not defaults), e.g. to ship a job's configuration.
    pub fn explicit(&self) -> &BTreeMap<String, String> {
        &self.values
    }

    pub fn is_set(&self, key: &str) -> bool {
        self.values.contains_key(key)
    }

    /// The configuration of a process started from the command line (the `weir` binary and a
    /// DataStream application's), layer by layer: defaults, the configuration file (`file`, else
    /// `$WEIR_CONF_DIR/config.yaml` when it exists), `WEIR_PROPERTIES`, then the `-D key=value`
    /// arguments `dynamic`. Returns the merged configuration and the `-D` layer alone (what a
    /// submitted job carries as its overrides).
    pub fn load_layers(file: Option<&Path>, dynamic: &[String]) -> Result<(Config, Config), ConfigError> {
        let path = match file {
            Some(p) => Some(p.to_path_buf()),
            None => std::env::var_os("WEIR_CONF_DIR").map(|d| Path::new(&d).join("config.yaml")).filter(|p| p.exists()),
        };
        let mut cfg = match &path {
            Some(p) => Config::from_yaml_file(p)?,
            None => Config::new(),
        };
        if let Ok(props) = std::env::var("WEIR_PROPERTIES") {
            cfg.apply_properties(&props, "WEIR_PROPERTIES")?;
        }
        let mut overrides = Config::new();
        for d in dynamic {
            overrides.apply_dynamic(d)?;
        }
        cfg.merge(&overrides);
        Ok((cfg, overrides))
    }

    /// Builds a configuration from already-validated pairs (shipped between processes).
    pub fn from_pairs<'a>(pairs: impl IntoIterator<Item = (&'a String, &'a String)>) -> Result<Self, ConfigError> {
        let mut cfg = Config::new();
        for (k, v) in pairs {
            cfg.set(k, v, "")?;
        }
        Ok(cfg)
    }

    /// The raw (validated, normalized) value of `key`, or its default. Panics only for a key
    /// that is not in the key table: key names are the constants of [`keys`].
    pub fn get(&self, key: &str) -> &str {
        match self.values.get(key) {
            Some(v) => v,
            None => Self::key_def(key).map(|d| d.default).unwrap_or_else(|| panic!("undeclared config key {key}")),
        }
    }

    fn value(&self, key: &str) -> Value {
        match self.parsed.get(key) {
            Some(v) => v.clone(),
            None => default_value(key).map(|(_, v)| v).unwrap_or_else(|| panic!("undeclared config key {key}")),
        }
    }

    /// Typed reads, for [`crate::settings`] only: every other crate takes the typed settings.
    /// The key table fixes each key's kind, so asking a key for another kind is a bug in Weir
    /// (caught by the settings tests), not a user error.
    pub(crate) fn duration(&self, key: &str) -> Duration {
        match self.value(key) {
            Value::Duration(d) => d,
            other => panic!("config key {key} is not a duration: {other:?}"),
        }
    }

    pub(crate) fn optional_duration(&self, key: &str) -> Option<Duration> {
        match self.value(key) {
            Value::OptionalDuration(d) => d,
            other => panic!("config key {key} is not an optional duration: {other:?}"),
        }
    }

    pub(crate) fn size(&self, key: &str) -> u64 {
        match self.value(key) {
            Value::Size(n) => n,
            other => panic!("config key {key} is not a size: {other:?}"),
        }
    }

    pub(crate) fn int(&self, key: &str) -> u64 {
        match self.value(key) {
            Value::Int(n) => n,
            other => panic!("config key {key} is not a number: {other:?}"),
        }
    }

    pub(crate) fn bool(&self, key: &str) -> bool {
        match self.value(key) {
            Value::Bool(b) => b,
            other => panic!("config key {key} is not a boolean: {other:?}"),
        }
    }

    /// A text value, or `None` when it is `none`.
    pub fn text(&self, key: &str) -> Option<&str> {
        match self.get(key) {
            "none" | "" => None,
            v => Some(v),
        }
    }
}

fn split_pair(line: &str) -> Option<(&str, &str)> {
    let colon = line.find(": ");
    let eq = line.find('=');
    match (colon, eq) {
        (Some(c), Some(e)) if e < c => Some((&line[..e], &line[e + 1..])),
        (Some(c), _) => Some((&line[..c], &line[c + 2..])),
        (None, Some(e)) => Some((&line[..e], &line[e + 1..])),
        (None, None) => line.strip_suffix(':').map(|k| (k, "")),
    }
}

fn flatten(prefix: &str, value: &serde_norway::Value, out: &mut Vec<(String, String)>) -> Result<(), String> {
    use serde_norway::Value;
    match value {
        Value::Mapping(map) => {
            for (k, v) in map {
                let k = match k {
                    Value::String(s) => s.clone(),
                    other => scalar(other).ok_or("configuration keys must be text")?,
                };
                let key = if prefix.is_empty() { k } else { format!("{prefix}.{k}") };
                flatten(&key, v, out)?;
            }
            Ok(())
        }
        Value::Null if prefix.is_empty() => Ok(()),
        other => {
            let v = scalar(other).ok_or_else(|| format!("value of '{prefix}' must be a single value, not a list"))?;
            out.push((prefix.to_string(), v));
            Ok(())
        }
    }
}

fn scalar(value: &serde_norway::Value) -> Option<String> {
    use serde_norway::Value;
    match value {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        Value::Null => Some("none".into()),
        _ => None,
    }
}

/// Checks `value` against the key's kind; returns its normalized text and parsed value.
fn validate(def: &KeyDef, value: &str) -> Result<(String, Value), String> {
    match def.kind {
        Duration => parse_duration(value).map(|d| (value.to_string(), Value::Duration(d))),
        OptionalDuration => {
            if value.eq_ignore_ascii_case("none") || value.is_empty() {
                Ok(("none".into(), Value::OptionalDuration(None)))
            } else {
                parse_duration(value).map(|d| (value.to_string(), Value::OptionalDuration(Some(d))))
            }
        }
        Size => parse_size(value).map(|n| (value.to_string(), Value::Size(n))),
        SizeOrZero if value.trim() == "0" => Ok(("0".into(), Value::Size(0))),
        SizeOrZero => parse_size(value).map(|n| (value.to_string(), Value::Size(n))),
        Int { min } => {
            let n: u64 = value.parse().map_err(|_| "expected a whole number".to_string())?;
            if n < min {
                Err(format!("must be at least {min}"))
            } else {
                Ok((n.to_string(), Value::Int(n)))
            }
        }
        Port => match value.parse::<u16>() {
            Ok(p) => Ok((p.to_string(), Value::Int(p.into()))),
            Err(_) => Err("expected a port number from 0 to 65535".into()),
        },
        Bool => match value.to_ascii_lowercase().as_str() {
            "true" => Ok(("true".into(), Value::Bool(true))),
            "false" => Ok(("false".into(), Value::Bool(false))),
            _ => Err("expected true or false".into()),
        },
        Enum(options) => options
            .iter()
            .find(|o| o.eq_ignore_ascii_case(value))
            .map(|o| (o.to_string(), Value::Text))
            .ok_or_else(|| format!("expected one of {}", options.join(", "))),
        Text => Ok((value.to_string(), Value::Text)),
    }
}

/// Parses durations the way Flink writes them, with `humantime`: `10s`, `500ms`, `1min`,
/// `2 h`, `1d`, `1h 30min`. A bare number is milliseconds, as in Flink, and Flink's unit words
/// that `humantime` lacks (`millis`, `secs`, `mins`, ...) are accepted too.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    if let Ok(ms) = s.parse::<u64>() {
        return Ok(Duration::from_millis(ms));
    }
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let unit = unit.trim();
    // One number and one unit word ("2 h", "5 Millis"): joined, in any case, with Flink's
    // spellings mapped.
    // Anything else ("1h 30min") goes to humantime as written.
    let text = if num.is_empty() || unit.is_empty() || unit.contains(char::is_whitespace) {
        s.to_string()
    } else {
        let lower = unit.to_ascii_lowercase();
        let unit = match lower.as_str() {
            "milli" | "millis" | "millisecond" | "milliseconds" => "ms",
            "secs" => "s",
            "mins" => "min",
            other => other,
        };
        format!("{num}{unit}")
    };
    humantime::parse_duration(&text).map_err(|e| format!("expected a duration like 10s, 500ms or 1min, got '{s}' ({e})"))
}

/// Parses sizes: `32kb`, `4 mb`, `1gb`, or bytes.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num.parse().map_err(|_| format!("expected a size like 32kb or 4mb, got '{s}'"))?;
    let mult = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" | "bytes" => 1,
        "k" | "kb" | "kib" => 1024,
        "m" | "mb" | "mib" => 1024 * 1024,
        "g" | "gb" | "gib" => 1024 * 1024 * 1024,
        other => return Err(format!("unknown size unit '{other}' (use b, kb, mb or gb)")),
    };
    if n == 0 {
        return Err("size must be positive".into());
    }
    Ok(n * mult)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_and_sizes_parse_like_flink() {
        assert_eq!(parse_duration("10s").unwrap(), Duration::from_secs(10));
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("1min").unwrap(), Duration::from_secs(60));
        assert_eq!(parse_duration("250").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("2 h").unwrap(), Duration::from_secs(7200));
        assert_eq!(parse_duration("5 millis").unwrap(), Duration::from_millis(5));
        assert_eq!(parse_duration("10secs").unwrap(), Duration::from_secs(10));
        assert_eq!(parse_duration("3 mins").unwrap(), Duration::from_secs(180));
        assert_eq!(parse_duration("1h 30min").unwrap(), Duration::from_secs(5400));
        assert_eq!(parse_duration("1d").unwrap(), Duration::from_secs(86_400));
        assert!(parse_duration("ten seconds").is_err());
        assert!(parse_duration("5 fortnights").is_err());
        assert_eq!(parse_size("32kb").unwrap(), 32 * 1024);
        assert_eq!(parse_size("4 mb").unwrap(), 4 << 20);
        assert!(parse_size("0").is_err());
        let mut c = Config::new();
        c.set(keys::ROCKSDB_AGGREGATE_CACHE, "0", "-D").unwrap();
        assert_eq!(c.size(keys::ROCKSDB_AGGREGATE_CACHE), 0, "0 turns the cache off");
        assert!(c.set(keys::SEGMENT_SIZE, "0", "-D").is_err(), "a plain size is positive");
    }

    #[test]
    fn unknown_key_is_an_error_naming_the_key() {
        let err = Config::new().set("execution.checkpointing.intervall", "10s", "-D").unwrap_err();
        assert_eq!(err.to_string(), "unknown configuration key 'execution.checkpointing.intervall' (in -D)");
    }

    #[test]
    fn bad_value_is_an_error_naming_key_and_value() {
        let err = Config::new().set(keys::CHECKPOINT_MODE, "SOMETIMES", "job.yaml").unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("'execution.checkpointing.mode'"), "{msg}");
        assert!(msg.contains("SOMETIMES") && msg.contains("EXACTLY_ONCE"), "{msg}");
        assert!(Config::new().set(keys::PARALLELISM, "0", "").is_err());
        assert!(Config::new().set(keys::HEARTBEAT_TIMEOUT, "soon", "").is_err());
        assert!(Config::new().set(keys::JOBMANAGER_PORT, "70000", "").is_err());
    }

    #[test]
    fn defaults_apply_until_set_and_layers_override() {
        let mut cfg = Config::new();
        assert_eq!(cfg.int(keys::MAX_PARALLELISM), 128);
        assert_eq!(cfg.optional_duration(keys::CHECKPOINT_INTERVAL), None);
        cfg.set(keys::CHECKPOINT_INTERVAL, "10s", "").unwrap();
        let mut job = Config::new();
        job.set(keys::CHECKPOINT_INTERVAL, "2s", "").unwrap();
        cfg.merge(&job);
        assert_eq!(cfg.optional_duration(keys::CHECKPOINT_INTERVAL), Some(Duration::from_secs(2)));
        assert_eq!(cfg.get(keys::CHECKPOINT_MODE), "EXACTLY_ONCE");
        cfg.set(keys::CHECKPOINT_MODE, "at_least_once", "").unwrap();
        assert_eq!(cfg.get(keys::CHECKPOINT_MODE), "AT_LEAST_ONCE");
    }

    #[test]
    fn yaml_files_flatten_nested_keys_and_properties_parse() {
        let cfg =
            Config::from_yaml_str("parallelism.default: 4\nexecution:\n  checkpointing:\n    interval: 10s\n", "config.yaml").unwrap();
        assert_eq!(cfg.int(keys::PARALLELISM), 4);
        assert_eq!(cfg.optional_duration(keys::CHECKPOINT_INTERVAL), Some(Duration::from_secs(10)));
        let err = Config::from_yaml_str("bogus.key: 1\n", "conf/config.yaml").unwrap_err();
        assert!(err.to_string().contains("'bogus.key' (in conf/config.yaml)"));

        let mut env = Config::new();
        env.apply_properties("jobmanager.rpc.address: jm\ntaskmanager.numberOfTaskSlots=8\n", "WEIR_PROPERTIES").unwrap();
        assert_eq!(env.text(keys::JOBMANAGER_ADDRESS), Some("jm"));
        assert_eq!(env.int(keys::TASKMANAGER_SLOTS), 8);
        assert!(env.apply_dynamic("no-equals-sign").is_err());
    }

    #[test]
    fn every_default_is_valid() {
        for def in KEYS {
            validate(def, def.default).unwrap_or_else(|e| panic!("default of {}: {e}", def.key));
        }
    }
}

#[cfg(test)]
mod docs_tests {
    /// docs/configuration.md documents every key: adding a key without documenting it fails.
    #[test]
    fn every_key_is_documented() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/configuration.md");
        let doc = std::fs::read_to_string(path).expect("docs/configuration.md exists");
        let missing: Vec<_> = super::KEYS.iter().map(|k| k.key).filter(|k| !doc.contains(&format!("`{k}`"))).collect();
        assert!(missing.is_empty(), "undocumented configuration keys: {missing:?}");
    }
}
