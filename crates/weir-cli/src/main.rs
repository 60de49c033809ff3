//! The `weir` binary: clap commands wired to the JobManager, the TaskManager, the embedded
//! mini cluster and the gRPC client. Nothing but wiring lives here.

/// Prints a line on stdout like `println!`, but a closed pipe (`weir list | head -1`) ends the
/// process quietly with exit code 141, as a Unix tool killed by SIGPIPE, instead of a panic.
macro_rules! outln {
    ($($arg:tt)*) => {
        $crate::stdout_line(format_args!($($arg)*))
    };
}

mod client;
mod minicluster;
mod sql_client;

use anyhow::{anyhow, Context, Result};
use clap::{Args, Parser, Subcommand, ValueEnum};
use std::path::PathBuf;
use std::time::Duration;
use weir::application::{init_logging, start_jobmanager, wait_for_signal, LogFormat};
use weir_core::config::{keys, parse_duration, Config};
use weir_core::settings::{ClientConfig, SecurityConfig};
use weir_proto::SavepointFormat;

#[derive(Parser)]
#[command(name = "weir", version, about = "Weir: a distributed stream processor with consistent checkpoints")]
struct Cli {
    /// Cluster configuration file (default: $WEIR_CONF_DIR/config.yaml when set).
    #[arg(long, global = true, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Log format on stderr; RUST_LOG sets the level.
    #[arg(long, global = true, value_enum, env = "WEIR_LOG_FORMAT", default_value = "text")]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum, PartialEq, Eq)]
pub enum Output {
    Text,
    Json,
}

/// How a savepoint stores keyed state (`--type`).
#[derive(Clone, Copy, ValueEnum)]
enum SavepointType {
    /// The canonical key-group files: restore into either backend, at any parallelism.
    Canonical,
    /// The backend's own files (RocksDB SSTs): faster for large state, same backend only.
    Native,
}

impl From<SavepointType> for SavepointFormat {
    fn from(t: SavepointType) -> Self {
        match t {
            SavepointType::Canonical => SavepointFormat::Canonical,
            SavepointType::Native => SavepointFormat::Native,
        }
    }
}

/// What `weir savepoint` and `weir stop` have in common.
#[derive(Args, Clone)]
struct SavepointArgs {
    /// How keyed state is written.
    #[arg(long = "type", value_enum, default_value = "canonical")]
    format: SavepointType,
    /// How long to wait for the JobManager's answer (and, for `stop`, for the job to finish).
    #[arg(long, value_name = "DURATION", default_value = "10min", value_parser = parse_duration)]
    timeout: Duration,
}

#[derive(Args, Clone, Default)]
struct Dynamic {
    /// Set a configuration key: -D key=value (repeatable).
    #[arg(short = 'D', value_name = "KEY=VALUE")]
    properties: Vec<String>,
}

#[derive(Args, Clone)]
struct ClientArgs {
    /// JobManager to talk to (default: jobmanager.rpc.address and jobmanager.rpc.port).
    #[arg(long, value_name = "HOST:PORT")]
    jobmanager: Option<String>,
    /// Output format: text for people, json for scripts.
    #[arg(long, value_enum, default_value = "text")]
    output: Output,
}

/// What `weir run` and `weir sql` share.
#[derive(Args, Clone)]
struct RunOptions {
    /// Default parallelism of the job's operators.
    #[arg(short = 'p', long)]
    parallelism: Option<u32>,
    /// Print the job id and return instead of waiting for the job to end.
    #[arg(long)]
    detached: bool,
    /// Start from a savepoint folder or a retained checkpoint <dir>/<job-id>/chk-<n> (or
    /// their _metadata). A path without a scheme is a local file path.
    #[arg(short = 's', long = "from-savepoint", visible_alias = "from-checkpoint", value_name = "PATH")]
    restore: Option<String>,
    /// With -s: skip the state of operators (uids) the job no longer has instead of
    /// refusing the job.
    #[arg(short = 'n', long, requires = "restore")]
    allow_non_restored_state: bool,
    #[command(flatten)]
    client: ClientArgs,
    #[command(flatten)]
    dynamic: Dynamic,
}

#[derive(Subcommand)]
enum Command {
    /// Run the JobManager (coordinator).
    Jobmanager {
        #[command(flatten)]
        dynamic: Dynamic,
    },
    /// Run a TaskManager (worker) that registers with a JobManager.
    Taskmanager {
        /// The JobManager's RPC address (default: jobmanager.rpc.address:jobmanager.rpc.port).
        #[arg(long, value_name = "HOST:PORT")]
        jobmanager: Option<String>,
        #[command(flatten)]
        dynamic: Dynamic,
    },
    /// Run a JobManager and TaskManagers in this process (a local cluster to submit jobs to).
    Local {
        #[command(flatten)]
        dynamic: Dynamic,
    },
    /// Submit a job file (YAML pipeline, or a SQL script when it ends in .sql); without a
    /// JobManager, run it on an embedded mini cluster.
    Run {
        /// The job file (YAML pipeline or .sql script).
        jobfile: PathBuf,
        #[command(flatten)]
        options: RunOptions,
    },
    /// Run a Flink-style SQL script (-f): SET, CREATE TABLE/VIEW, INSERT INTO, statement
    /// sets; every INSERT (or statement set) is one job. Without -f, the interactive SQL
    /// client. Without a JobManager, both run on an embedded mini cluster.
    Sql {
        /// The script to run (without it: statements from the prompt or stdin).
        #[arg(short = 'f', long = "file", value_name = "FILE")]
        file: Option<PathBuf>,
        #[command(flatten)]
        options: RunOptions,
    },
    /// List the jobs of the cluster.
    List {
        #[command(flatten)]
        client: ClientArgs,
        #[command(flatten)]
        dynamic: Dynamic,
    },
    /// Show one job.
    Status {
        job_id: String,
        #[command(flatten)]
        client: ClientArgs,
        #[command(flatten)]
        dynamic: Dynamic,
    },
    /// Cancel a job and wait until it ended: exit 0 once it is CANCELED, 1 if it ended otherwise.
    Cancel {
        job_id: String,
        /// How long to wait for the job to end.
        #[arg(long, value_name = "DURATION", default_value = "1min", value_parser = parse_duration)]
        timeout: Duration,
        #[command(flatten)]
        client: ClientArgs,
        #[command(flatten)]
        dynamic: Dynamic,
    },
    /// Change checkpoint settings of a running job, from its next checkpoint on:
    /// `weir config JOB_ID -D execution.checkpointing.interval=200ms` (see docs/rest.md).
    Config {
        job_id: String,
        #[command(flatten)]
        client: ClientArgs,
        #[command(flatten)]
        dynamic: Dynamic,
    },
    /// Take a savepoint of a running job and print its path (the job goes on running).
    Savepoint {
        job_id: String,
        /// Directory to create the savepoint's folder in (default:
        /// execution.checkpointing.savepoint-dir). A path without a scheme is a local file path.
        directory: Option<String>,
        #[command(flatten)]
        savepoint: SavepointArgs,
        #[command(flatten)]
        client: ClientArgs,
        #[command(flatten)]
        dynamic: Dynamic,
    },
    /// Stop a job with a savepoint: sinks commit exactly up to it; waits until the job finished.
    Stop {
        job_id: String,
        /// Directory to create the savepoint's folder in (default:
        /// execution.checkpointing.savepoint-dir).
        #[arg(long, value_name = "DIR")]
        savepoint_dir: Option<String>,
        /// End the sources first and let the job flush everything before the savepoint.
        #[arg(long)]
        drain: bool,
        #[command(flatten)]
        savepoint: SavepointArgs,
        #[command(flatten)]
        client: ClientArgs,
        #[command(flatten)]
        dynamic: Dynamic,
    },
    /// Manage savepoints.
    Savepoints {
        #[command(subcommand)]
        command: SavepointsCommand,
    },
    /// List a job's checkpoints and savepoints: id, type, status, kind, trigger time, duration,
    /// size, alignment, path.
    Checkpoints {
        job_id: String,
        #[command(flatten)]
        client: ClientArgs,
        #[command(flatten)]
        dynamic: Dynamic,
    },
    /// Show the cluster's TaskManagers, their slots and how many program functions each carries.
    Cluster {
        #[command(flatten)]
        client: ClientArgs,
        #[command(flatten)]
        dynamic: Dynamic,
    },
}

#[derive(Subcommand)]
enum SavepointsCommand {
    /// Delete a savepoint's folder (after the JobManager checked that it is a savepoint).
    Dispose {
        /// The savepoint's folder, as `weir savepoint` printed it.
        path: String,
        #[command(flatten)]
        client: ClientArgs,
        #[command(flatten)]
        dynamic: Dynamic,
    },
}

/// Loads the configuration layers: defaults, config file, WEIR_PROPERTIES, then -D.
fn load_config(file: &Option<PathBuf>, dynamic: &Dynamic) -> Result<(Config, Config)> {
    Ok(Config::load_layers(file.as_deref(), &dynamic.properties)?)
}

/// The JobManager address from the flag or the configuration, if any.
fn jobmanager_address(flag: &Option<String>, cfg: &Config) -> Option<String> {
    flag.clone().or_else(|| ClientConfig::from_config(cfg).jobmanager)
}

#[tokio::main]
async fn main() {
    let cli = Cli::parse();
    match run(cli).await {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("error: {}", error_text(&e));
            std::process::exit(1);
        }
    }
}

/// An error and its causes as one line, `outer: cause: …`, leaving out a cause whose text the
/// line already holds (many errors print their source in their own message).
fn error_text(e: &anyhow::Error) -> String {
    let mut text = e.to_string();
    for cause in e.chain().skip(1) {
        let cause = cause.to_string();
        if !text.contains(&cause) {
            text.push_str(": ");
            text.push_str(&cause);
        }
    }
    text
}

async fn run(cli: Cli) -> Result<i32> {
    match cli.command {
        Command::Jobmanager { dynamic } => {
            let (cfg, _) = load_config(&cli.config, &dynamic)?;
            init_logging(cli.log_format, "info");
            let jm = start_jobmanager(cfg).await?;
            outln!("JobManager listening on {}", jm.rpc_addr);
            outln!("REST API on http://{}", jm.rest_addr);
            wait_for_signal().await;
            jm.shutdown();
            Ok(0)
        }
        Command::Taskmanager { jobmanager, dynamic } => {
            let (cfg, _) = load_config(&cli.config, &dynamic)?;
            init_logging(cli.log_format, "info");
            let jm = jobmanager_address(&jobmanager, &cfg)
                .ok_or_else(|| anyhow!("no JobManager: pass --jobmanager HOST:PORT or set jobmanager.rpc.address"))?;
            let settings = weir_taskmanager::TaskManagerSettings::from_config(&cfg, &jm)?;
            let tm = weir_taskmanager::start(settings).await?;
            outln!("TaskManager {} rpc {} data {} metrics http://{}/metrics", tm.id, tm.rpc_addr, tm.data_addr, tm.metrics_addr);
            wait_for_signal().await;
            tm.shutdown_gracefully("the TaskManager was stopped (SIGTERM or Ctrl-C)").await;
            Ok(0)
        }
        Command::Local { dynamic } => {
            let (cfg, _) = load_config(&cli.config, &dynamic)?;
            init_logging(cli.log_format, "info");
            let cluster = minicluster::MiniCluster::start(&cfg, None).await?;
            outln!("Local cluster: JobManager at {}", cluster.address());
            wait_for_signal().await;
            cluster.shutdown();
            Ok(0)
        }
        Command::Run { jobfile, options } if is_sql_script(&jobfile) => run_sql(&cli.config, cli.log_format, &jobfile, options).await,
        Command::Sql { file: Some(file), options } => run_sql(&cli.config, cli.log_format, &file, options).await,
        Command::Sql { file: None, options } => {
            let RunOptions { parallelism, client, mut dynamic, .. } = options;
            if let Some(p) = parallelism {
                dynamic.properties.push(format!("{}={p}", keys::PARALLELISM));
            }
            let (cfg, overrides) = load_config(&cli.config, &dynamic)?;
            init_logging(cli.log_format, "warn");
            let security = SecurityConfig::from_config(&cfg)?;
            let (address, cluster) = match jobmanager_address(&client.jobmanager, &cfg) {
                Some(a) => (a, None),
                None => {
                    // Room for a few queries and INSERTs at once.
                    let cluster = minicluster::MiniCluster::start(&cfg, Some(8)).await?;
                    (cluster.address(), Some(cluster))
                }
            };
            let address = client::JobManagerEndpoint { address, security };
            let result = sql_client::run(&address, &cfg, &overrides).await;
            if let Some(c) = cluster {
                c.shutdown();
            }
            result
        }
        Command::Run { jobfile, options } => {
            let RunOptions { parallelism, detached, restore, allow_non_restored_state, client, mut dynamic } = options;
            if let Some(p) = parallelism {
                dynamic.properties.push(format!("{}={p}", keys::PARALLELISM));
            }
            let (cfg, overrides) = load_config(&cli.config, &dynamic)?;
            init_logging(cli.log_format, "warn");
            let text = std::fs::read_to_string(&jobfile).with_context(|| format!("cannot read job file {}", jobfile.display()))?;
            let origin = jobfile.display().to_string();
            // Compile here too, so a bad job file fails before anything starts.
            let (graph, job_cfg) = weir_core::job::compile_job(&text, &origin, &cfg, &overrides)?;
            weir_core::settings::JobSettings::from_config(&job_cfg)?;
            let security = SecurityConfig::from_config(&cfg)?;
            let (address, cluster) = match jobmanager_address(&client.jobmanager, &cfg) {
                Some(a) => (a, None),
                None => {
                    let cluster = minicluster::MiniCluster::start(&cfg, Some(graph.slots_needed())).await?;
                    (cluster.address(), Some(cluster))
                }
            };
            let address = client::JobManagerEndpoint { address, security };
            let restore = restore.as_deref().map(storage_location).transpose()?;
            let submit = client::Submit {
                text: &text,
                origin: &origin,
                overrides: &overrides,
                restore: restore.as_deref(),
                allow_non_restored_state,
            };
            let result = client::run_job(&address, submit, detached && cluster.is_none(), client.output).await;
            if let Some(c) = cluster {
                c.shutdown();
            }
            result
        }
        Command::List { client, dynamic } => {
            let (cfg, _) = load_config(&cli.config, &dynamic)?;
            init_logging(cli.log_format, "warn");
            client::list(&require_jm(&client, &cfg)?, client.output).await
        }
        Command::Status { job_id, client, dynamic } => {
            let (cfg, _) = load_config(&cli.config, &dynamic)?;
            init_logging(cli.log_format, "warn");
            client::status(&require_jm(&client, &cfg)?, &job_id, client.output).await
        }
        Command::Cancel { job_id, timeout, client, dynamic } => {
            let (cfg, _) = load_config(&cli.config, &dynamic)?;
            init_logging(cli.log_format, "warn");
            client::cancel(&require_jm(&client, &cfg)?, &job_id, timeout, client.output).await
        }
        Command::Config { job_id, client, dynamic } => {
            let (cfg, _) = load_config(&cli.config, &dynamic)?;
            init_logging(cli.log_format, "warn");
            // Every -D but the client's own keys (the JobManager's address, the token) is a change.
            let changes: Vec<(String, String)> = dynamic
                .properties
                .iter()
                .filter_map(|p| p.split_once('=').map(|(k, v)| (k.trim().to_string(), v.trim().to_string())))
                .filter(|(k, _)| !weir_core::settings::is_cluster_only_key(k) && !k.starts_with("jobmanager.rpc."))
                .collect();
            client::update_config(&require_jm(&client, &cfg)?, &job_id, changes, client.output).await
        }
        Command::Savepoint { job_id, directory, savepoint, client, dynamic } => {
            let (cfg, _) = load_config(&cli.config, &dynamic)?;
            init_logging(cli.log_format, "warn");
            let directory = savepoint_directory(directory, &cfg)?;
            let request = client::SavepointRequest { job_id: &job_id, directory: &directory, format: savepoint.format.into() };
            client::savepoint(&require_jm(&client, &cfg)?, request, savepoint.timeout, client.output).await
        }
        Command::Stop { job_id, savepoint_dir, drain, savepoint, client, dynamic } => {
            let (cfg, _) = load_config(&cli.config, &dynamic)?;
            init_logging(cli.log_format, "warn");
            let directory = savepoint_directory(savepoint_dir, &cfg)?;
            let request = client::SavepointRequest { job_id: &job_id, directory: &directory, format: savepoint.format.into() };
            client::stop(&require_jm(&client, &cfg)?, request, drain, savepoint.timeout, client.output).await
        }
        Command::Savepoints { command: SavepointsCommand::Dispose { path, client, dynamic } } => {
            let (cfg, _) = load_config(&cli.config, &dynamic)?;
            init_logging(cli.log_format, "warn");
            client::dispose_savepoint(&require_jm(&client, &cfg)?, &storage_location(&path)?, client.output).await
        }
        Command::Checkpoints { job_id, client, dynamic } => {
            let (cfg, _) = load_config(&cli.config, &dynamic)?;
            init_logging(cli.log_format, "warn");
            client::checkpoints(&require_jm(&client, &cfg)?, &job_id, client.output).await
        }
        Command::Cluster { client, dynamic } => {
            let (cfg, _) = load_config(&cli.config, &dynamic)?;
            init_logging(cli.log_format, "warn");
            client::cluster(&require_jm(&client, &cfg)?, client.output).await
        }
    }
}

/// Whether `weir run` was given a SQL script rather than a YAML job file.
fn is_sql_script(path: &std::path::Path) -> bool {
    path.extension().is_some_and(|e| e.eq_ignore_ascii_case("sql"))
}

/// `weir sql -f FILE` / `weir run FILE.sql`: compiles the script here (its errors name line and
/// column before anything starts), prints what SHOW/DESCRIBE/EXPLAIN produced, then submits
/// each job's graph with its own settings and, unless detached, waits for all of them.
async fn run_sql(config: &Option<PathBuf>, log_format: LogFormat, file: &std::path::Path, options: RunOptions) -> Result<i32> {
    let RunOptions { parallelism, detached, restore, allow_non_restored_state, client, mut dynamic } = options;
    if let Some(p) = parallelism {
        dynamic.properties.push(format!("{}={p}", keys::PARALLELISM));
    }
    let (cfg, overrides) = load_config(config, &dynamic)?;
    init_logging(log_format, "warn");
    let text = std::fs::read_to_string(file).with_context(|| format!("cannot read SQL script {}", file.display()))?;
    let origin = file.display().to_string();
    let compiled = weir_sql::compile_script(&text, &origin, &cfg, &overrides)?;
    for notice in &compiled.notices {
        eprintln!("notice: {notice}");
    }
    for output in &compiled.output {
        outln!("{output}");
    }
    if compiled.jobs.is_empty() {
        return Ok(0);
    }
    if restore.is_some() && compiled.jobs.len() > 1 {
        return Err(anyhow!(
            "-s restores one job, and {origin} submits {} (one per INSERT): put the INSERTs into one EXECUTE STATEMENT SET",
            compiled.jobs.len()
        ));
    }
    for job in &compiled.jobs {
        weir_core::settings::JobSettings::from_config(&job.config)
            .with_context(|| format!("{origin}:{}:{}: job '{}'", job.at.0, job.at.1, job.graph.name))?;
    }
    let security = SecurityConfig::from_config(&cfg)?;
    let (address, cluster) = match jobmanager_address(&client.jobmanager, &cfg) {
        Some(a) => (a, None),
        None => {
            let slots = compiled.jobs.iter().map(|j| j.graph.slots_needed()).sum();
            let cluster = minicluster::MiniCluster::start(&cfg, Some(slots)).await?;
            (cluster.address(), Some(cluster))
        }
    };
    let address = client::JobManagerEndpoint { address, security };
    let restore = restore.as_deref().map(storage_location).transpose()?;
    let jobs = compiled.jobs.into_iter().map(|j| client::GraphSubmit { graph: j.graph, settings: j.settings }).collect();
    let result = client::run_graphs(
        &address,
        jobs,
        &origin,
        restore.as_deref(),
        allow_non_restored_state,
        detached && cluster.is_none(),
        client.output,
    )
    .await;
    if let Some(c) = cluster {
        c.shutdown();
    }
    result
}

/// The JobManager to call: its address from the flag or the configuration, and this command's
/// `security.*` settings.
fn require_jm(client: &ClientArgs, cfg: &Config) -> Result<client::JobManagerEndpoint> {
    let address = jobmanager_address(&client.jobmanager, cfg)
        .ok_or_else(|| anyhow!("no JobManager configured: pass --jobmanager HOST:PORT or set jobmanager.rpc.address"))?;
    Ok(client::JobManagerEndpoint { address, security: SecurityConfig::from_config(cfg)? })
}

/// A storage location as the JobManager should read it: a URL (`file://`, `s3://`, …) as
/// given, a local path made absolute against this command's working directory (the
/// JobManager runs elsewhere, so a relative path would mean its directory, not the user's).
fn storage_location(location: &str) -> Result<String> {
    if location.contains("://") {
        return Ok(location.to_string());
    }
    let absolute = std::path::absolute(location).with_context(|| format!("bad path '{location}'"))?;
    Ok(absolute.display().to_string())
}

/// The savepoint directory to ask for: the argument, else `execution.checkpointing.savepoint-dir`
/// from this command's configuration (file, WEIR_PROPERTIES, -D), else empty, which lets the
/// JobManager use the job's own setting.
fn savepoint_directory(arg: Option<String>, cfg: &Config) -> Result<String> {
    match arg.or_else(|| cfg.text(keys::SAVEPOINT_DIR).map(str::to_string)) {
        Some(dir) => storage_location(&dir),
        None => Ok(String::new()),
    }
}

/// Writes one line to stdout for [`outln!`]; see there.
fn stdout_line(args: std::fmt::Arguments) {
    use std::io::Write;
    if let Err(e) = writeln!(std::io::stdout().lock(), "{args}") {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(141);
        }
        eprintln!("error: cannot write to stdout: {e}");
        std::process::exit(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_error_prints_each_cause_once() {
        let io = std::io::Error::new(std::io::ErrorKind::AddrInUse, "address in use");
        let bind = weir_jobmanager::JobManagerError::Bind { addr: "0.0.0.0:6123".into(), source: io };
        let e = anyhow::Error::new(bind).context("cannot start the JobManager");
        assert_eq!(error_text(&e), "cannot start the JobManager: cannot bind the JobManager RPC port 0.0.0.0:6123: address in use");
        let e = anyhow!("outer").context("top");
        assert_eq!(error_text(&e), "top: outer");
    }

    #[test]
    fn urls_pass_as_given_and_local_paths_become_absolute() {
        assert_eq!(storage_location("s3://bucket/savepoints").unwrap(), "s3://bucket/savepoints");
        assert_eq!(storage_location("file:///sp/savepoint-1").unwrap(), "file:///sp/savepoint-1");
        assert_eq!(storage_location("/sp/savepoint-1").unwrap(), "/sp/savepoint-1");
        let relative = storage_location("sp/savepoint-1").unwrap();
        assert_eq!(PathBuf::from(&relative), std::env::current_dir().unwrap().join("sp/savepoint-1"));
    }

    #[test]
    fn the_savepoint_directory_comes_from_the_argument_then_the_configuration_then_the_job() {
        let mut cfg = Config::new();
        assert_eq!(savepoint_directory(None, &cfg).unwrap(), "");
        cfg.apply_dynamic("execution.checkpointing.savepoint-dir=s3://b/sp").unwrap();
        assert_eq!(savepoint_directory(None, &cfg).unwrap(), "s3://b/sp");
        assert_eq!(savepoint_directory(Some("file:///elsewhere".into()), &cfg).unwrap(), "file:///elsewhere");
    }

    #[test]
    fn savepoint_commands_parse_like_flinks() {
        let cli = Cli::try_parse_from(["weir", "savepoint", "3f2c", "/sp", "--type", "native"]).unwrap();
        let Command::Savepoint { job_id, directory, savepoint, .. } = cli.command else { panic!("savepoint expected") };
        assert_eq!((job_id.as_str(), directory.as_deref()), ("3f2c", Some("/sp")));
        assert_eq!(SavepointFormat::from(savepoint.format), SavepointFormat::Native);
        assert_eq!(savepoint.timeout, Duration::from_secs(600));

        let cli = Cli::try_parse_from(["weir", "stop", "3f2c", "--drain", "--savepoint-dir", "/sp", "--timeout", "30s"]).unwrap();
        let Command::Stop { drain, savepoint_dir, savepoint, .. } = cli.command else { panic!("stop expected") };
        assert!(drain);
        assert_eq!(savepoint_dir.as_deref(), Some("/sp"));
        assert_eq!(SavepointFormat::from(savepoint.format), SavepointFormat::Canonical);
        assert_eq!(savepoint.timeout, Duration::from_secs(30));

        let cli = Cli::try_parse_from(["weir", "savepoints", "dispose", "/sp/savepoint-1"]).unwrap();
        assert!(matches!(cli.command, Command::Savepoints { command: SavepointsCommand::Dispose { .. } }));

        let cli =
            Cli::try_parse_from(["weir", "run", "job.yaml", "-s", "/sp/savepoint-1", "-p", "3", "--allow-non-restored-state"]).unwrap();
        let Command::Run { options: RunOptions { restore, allow_non_restored_state, parallelism, .. }, .. } = cli.command else {
            panic!("run expected")
        };
        assert_eq!((restore.as_deref(), allow_non_restored_state, parallelism), (Some("/sp/savepoint-1"), true, Some(3)));
        // The old spelling still works; skipping state needs something to restore.
        assert!(Cli::try_parse_from(["weir", "run", "job.yaml", "--from-checkpoint", "/chk-3"]).is_ok());
        assert!(Cli::try_parse_from(["weir", "run", "job.yaml", "--allow-non-restored-state"]).is_err());
    }
}
