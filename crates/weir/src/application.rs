//! Application mode: one binary that is a DataStream program, its JobManager and its
//! TaskManagers, as Flink's application mode ships a job with its cluster.
//!
//! A program hands its job-building function to [`main`]; the binary then understands:
//!
//! | command | what it does |
//! |---|---|
//! | (none), or `run` without a JobManager | runs the program on an embedded mini cluster, as `execute` does |
//! | `jobmanager [-D k=v]` | a JobManager, exactly as `weir jobmanager` |
//! | `taskmanager --jobmanager HOST:PORT [-D k=v]` | a TaskManager that carries the program's functions |
//! | `run --jobmanager HOST:PORT [--detached] [-s PATH [-n]] [-D k=v]` | builds the JobGraph and submits it over gRPC (from a savepoint with `-s`) |
//!
//! The TaskManager builds the program once, without running it, to fill its function
//! registry. Function ids are the operators' uids, so the TaskManager resolves exactly the
//! ids of the graph `run` submits, as long as both come from the same binary. It lists the
//! ids when it registers; the JobManager places the job only on TaskManagers listing all of
//! them, and refuses the submission when no registered TaskManager does (see
//! `weir-jobmanager`'s `program.rs`).
//!
//! Configuration is read as the `weir` binary reads it ([`Config::load_layers`]): `--config`
//! or `$WEIR_CONF_DIR/config.yaml`, `WEIR_PROPERTIES`, then `-D`. For `run`, the program's
//! own settings (`set_parallelism`, `enable_checkpointing`, ...) come first and `-D` overrides
//! them, as `-D` overrides a job file's `config:`.

use crate::client::remote::{RemoteJobManager, Restore};
use crate::{ApiError, JobClient, StreamExecutionEnvironment};
use clap::{Args, CommandFactory, FromArgMatches, Parser, Subcommand, ValueEnum};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;
use weir_core::config::Config;
use weir_core::settings::{ClientConfig, JobManagerConfig, JobSettings, SecurityConfig};
use weir_jobmanager::JobManagerHandle;

/// What a program's job-building function may fail with.
pub type BuildError = Box<dyn std::error::Error + Send + Sync>;

/// Defines the program on the environment it is given: sources, transforms, sinks and
/// settings, without calling `execute` (application mode decides where it runs).
pub type BuildJob = fn(&mut StreamExecutionEnvironment) -> Result<(), BuildError>;

#[derive(Parser)]
#[command(about = "A Weir DataStream application: run it embedded, or as its own cluster's JobManager, TaskManagers and client")]
struct Cli {
    /// Cluster configuration file (default: $WEIR_CONF_DIR/config.yaml when set).
    #[arg(long, global = true, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Log format on stderr; RUST_LOG sets the level.
    #[arg(long, global = true, value_enum, env = "WEIR_LOG_FORMAT", default_value = "text")]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Option<Command>,
}

/// The log format of a Weir process on stderr.
#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Args, Clone, Default)]
struct Dynamic {
    /// Set a configuration key: -D key=value (repeatable).
    #[arg(short = 'D', value_name = "KEY=VALUE")]
    properties: Vec<String>,
}

#[derive(Subcommand)]
enum Command {
    /// Run a JobManager (as `weir jobmanager`).
    Jobmanager {
        #[command(flatten)]
        dynamic: Dynamic,
    },
    /// Run a TaskManager that carries this program's functions and registers with a JobManager.
    Taskmanager {
        /// The JobManager's RPC address (default: jobmanager.rpc.address:jobmanager.rpc.port).
        #[arg(long, value_name = "HOST:PORT")]
        jobmanager: Option<String>,
        #[command(flatten)]
        dynamic: Dynamic,
    },
    /// Run the program: submit it to a JobManager, or without one on an embedded mini cluster.
    Run {
        /// The JobManager to submit to (default: jobmanager.rpc.address, if set; else embedded).
        #[arg(long, value_name = "HOST:PORT")]
        jobmanager: Option<String>,
        /// Print the job id and return instead of waiting for the job to end.
        #[arg(long, requires = "jobmanager")]
        detached: bool,
        /// Start from a savepoint folder or a retained checkpoint <dir>/<job-id>/chk-<n> (with
        /// --jobmanager). A path without a scheme is a local file path.
        #[arg(short = 's', long = "from-savepoint", visible_alias = "from-checkpoint", value_name = "PATH", requires = "jobmanager")]
        restore: Option<String>,
        /// With -s: skip the state of operators (uids) the program no longer has instead of
        /// refusing the job.
        #[arg(short = 'n', long, requires = "restore")]
        allow_non_restored_state: bool,
        #[command(flatten)]
        dynamic: Dynamic,
    },
}

/// Runs the application: parses the command line, then runs the program embedded, or as a
/// JobManager, a TaskManager or a client of one (see the module header). `job_name` names the
/// job; `build_job` defines it. Errors are printed on stderr; the exit code is 0 when the
/// job FINISHED (or the process was stopped by a signal), 1 otherwise, 2 for a bad command line.
pub fn main(job_name: &str, build_job: BuildJob) -> ExitCode {
    let binary = std::env::args_os()
        .next()
        .and_then(|a| PathBuf::from(a).file_name().map(|n| n.to_string_lossy().into_owned()))
        .unwrap_or_else(|| "application".into());
    let matches = Cli::command().bin_name(binary).get_matches();
    let cli = match Cli::from_arg_matches(&matches) {
        Ok(cli) => cli,
        Err(e) => e.exit(),
    };
    match run(cli, job_name, build_job) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", weir_core::error_chain(&*e));
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli, job_name: &str, build_job: BuildJob) -> Result<(), BuildError> {
    let command = cli.command.unwrap_or(Command::Run {
        jobmanager: None,
        detached: false,
        restore: None,
        allow_non_restored_state: false,
        dynamic: Dynamic::default(),
    });
    match command {
        Command::Jobmanager { dynamic } => {
            let (cfg, _) = Config::load_layers(cli.config.as_deref(), &dynamic.properties)?;
            init_logging(cli.log_format, "info");
            runtime()?.block_on(async {
                let jm = start_jobmanager(cfg).await?;
                println!("JobManager listening on {}", jm.rpc_addr);
                println!("REST API on http://{}", jm.rest_addr);
                wait_for_signal().await;
                jm.shutdown();
                Ok(())
            })
        }
        Command::Taskmanager { jobmanager, dynamic } => {
            let (cfg, overrides) = Config::load_layers(cli.config.as_deref(), &dynamic.properties)?;
            init_logging(cli.log_format, "info");
            let jm =
                jobmanager_address(&jobmanager, &cfg).ok_or("no JobManager: pass --jobmanager HOST:PORT or set jobmanager.rpc.address")?;
            let (_, graph_functions, _) = build(job_name, build_job, &overrides)?;
            let ids: Vec<String> = graph_functions.ids().map(str::to_string).collect();
            let settings = weir_taskmanager::TaskManagerSettings::from_config(&cfg, &jm)?;
            runtime()?.block_on(async {
                let tm = weir_taskmanager::start_with_functions(settings, Arc::new(graph_functions), ids.clone()).await?;
                println!(
                    "TaskManager {} rpc {} data {} metrics http://{}/metrics functions {}",
                    tm.id,
                    tm.rpc_addr,
                    tm.data_addr,
                    tm.metrics_addr,
                    ids.join(",")
                );
                wait_for_signal().await;
                tm.shutdown_gracefully("the TaskManager was stopped (SIGTERM or Ctrl-C)").await;
                Ok(())
            })
        }
        Command::Run { jobmanager, detached, restore, allow_non_restored_state, dynamic } => {
            let (cfg, overrides) = Config::load_layers(cli.config.as_deref(), &dynamic.properties)?;
            init_logging(cli.log_format, "warn");
            let (graph, functions, job_config) = build(job_name, build_job, &overrides)?;
            match jobmanager_address(&jobmanager, &cfg) {
                None => {
                    // The embedded cluster runs under the process's configuration with the
                    // program's over it, as `execute` does.
                    let mut config = cfg;
                    config.merge(&job_config);
                    let result = JobClient::start(config, graph, functions)?.wait()?;
                    println!("job {} FINISHED after {} restart(s)", result.job_id, result.restarts);
                    Ok(())
                }
                Some(address) => {
                    let security = SecurityConfig::from_config(&cfg)?;
                    let restore = restore.as_deref().map(storage_location).transpose()?;
                    let restore = restore.as_deref().map(|path| Restore { path, allow_non_restored_state });
                    runtime()?.block_on(async {
                        let mut jm = RemoteJobManager::connect(&address, &security).await?;
                        let (job_id, warnings) = jm.submit(&graph, &job_config, restore).await?;
                        for w in &warnings {
                            eprintln!("warning: {w}");
                        }
                        println!("Job {job_id} submitted");
                        if !detached {
                            let status = jm.wait(&job_id, Duration::from_secs(60)).await?;
                            println!("job {job_id} FINISHED after {} restart(s)", status.restarts);
                        }
                        Ok(())
                    })
                }
            }
        }
    }
}

/// Builds the program: its JobGraph, its functions by id, and the job's configuration (the
/// program's settings with `overrides`, the `-D` layer, over them).
fn build(
    job_name: &str,
    build_job: BuildJob,
    overrides: &Config,
) -> Result<(weir_core::graph::JobGraph, crate::ProgramFunctions, Config), BuildError> {
    let mut env = StreamExecutionEnvironment::get_execution_environment();
    build_job(&mut env)?;
    let (mut job_config, _) = env.all_settings().to_config()?;
    job_config.merge(overrides);
    let settings = JobSettings::from_config(&job_config).map_err(ApiError::Config)?;
    let (graph, functions) = env.program.borrow().build(job_name, &settings)?;
    Ok((graph, functions, job_config))
}

/// A location as the JobManager reads it: a URL as given, a path made absolute (the
/// JobManager's working directory is not this one).
fn storage_location(location: &str) -> Result<String, BuildError> {
    if location.contains("://") {
        return Ok(location.to_string());
    }
    let absolute = std::path::absolute(location).map_err(|e| format!("bad path '{location}': {e}"))?;
    Ok(absolute.display().to_string())
}

fn runtime() -> Result<tokio::runtime::Runtime, BuildError> {
    Ok(tokio::runtime::Builder::new_multi_thread().enable_all().build()?)
}

/// The JobManager address from the flag or the configuration (`jobmanager.rpc.address`), if any.
fn jobmanager_address(flag: &Option<String>, cfg: &Config) -> Option<String> {
    flag.clone().or_else(|| ClientConfig::from_config(cfg).jobmanager)
}

/// Starts a JobManager process's JobManager: bound to `jobmanager.bind-host` and
/// `jobmanager.rpc.port`, with the configuration's `security.*` (shared by `weir jobmanager`
/// and an application's `jobmanager`).
pub async fn start_jobmanager(cfg: Config) -> Result<JobManagerHandle, weir_jobmanager::JobManagerError> {
    let settings = JobManagerConfig::from_config(&cfg);
    let bind = format!("{}:{}", settings.bind_host, settings.port);
    weir_jobmanager::start_with_sql(cfg, &bind, Some(sql_compiler())).await
}

/// The SQL planner, for a JobManager's `POST /jobs` of SQL scripts: compiles as `weir run
/// script.sql` does, errors naming the line and column.
pub fn sql_compiler() -> weir_jobmanager::SqlCompiler {
    std::sync::Arc::new(|script: &str, base: &Config, overrides: &Config| {
        let compiled = weir_sql::compile_script(script, "the submitted script", base, overrides).map_err(|e| e.to_string())?;
        let jobs = compiled
            .jobs
            .into_iter()
            .map(|j| weir_jobmanager::SqlJob {
                graph_json: String::from_utf8_lossy(&j.graph.to_json()).into_owned(),
                settings: j.settings,
                query: !j.columns.is_empty(),
            })
            .collect();
        Ok(weir_jobmanager::CompiledSql { jobs, output: compiled.output, notices: compiled.notices })
    })
}

/// Logs to stderr in `format`; `RUST_LOG` sets the level, else `default_level`.
pub fn init_logging(format: LogFormat, default_level: &str) {
    let filter =
        tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_level));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}

/// Resolves on Ctrl-C or SIGTERM: a JobManager or TaskManager process then shuts down cleanly.
pub async fn wait_for_signal() {
    #[cfg(unix)]
    {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    let _ = tokio::signal::ctrl_c().await;
}
