//! Turning a deployment request into running tasks: one input gate per subtask with inputs,
//! its channels wired to local senders or registered with the data plane for remote ones,
//! one result partition per subtask whose channels lead to local gates or remote
//! subpartitions, then one thread per task.
//!
//! Which channels exist and how they are numbered is the runtime's [`ChannelPlan`], computed
//! from the job graph alone (so sender and receiver agree); this module only performs each
//! subtask's plan, choosing a local queue or the data plane by where the peer subtask runs.

use crate::network_memory::NetworkDemand;
use crate::{JobTasks, Shared};
use std::collections::HashMap;
use std::sync::Arc;
use weir_core::config::Config;
use weir_core::graph::JobGraph;
use weir_core::operator::SubtaskInfo;
use weir_core::settings::JobSettings;
use weir_proto::{DeployTasksRequest, ExecutionId, TaskState as ProtoTaskState, UpdateTaskStateRequest};
use weir_runtime::gate::CreditReturn;
use weir_runtime::operators::StateConfig;
use weir_runtime::partition::{ChannelWriter, OutputEdge, ResultPartition};
use weir_runtime::task::{CheckpointSettings, RestoreSettings};
use weir_runtime::task::{TaskEvent, TaskState};
use weir_runtime::wiring::{ChannelPlan, SubtaskRef, WiringError};
use weir_runtime::{ChannelId, InputGate, Task, TaskDescriptor};
use weir_state::metadata::RestoreInfo;
use weir_state::CheckpointStorage;

#[derive(Debug, thiserror::Error)]
pub enum DeployError {
    #[error("job {job}: the job graph does not parse: {reason}")]
    Graph { job: String, reason: String },
    #[error("job {job}: {reason}")]
    Invalid { job: String, reason: String },
    #[error("job {job}: {source}")]
    Wiring { job: String, source: WiringError },
}

/// Parses a job id (32 hex digits) into the number channel ids carry.
pub fn job_key(job_id: &str) -> Option<u128> {
    u128::from_str_radix(job_id, 16).ok()
}

pub(crate) fn deploy(shared: &Arc<Shared>, req: DeployTasksRequest) -> Result<(), DeployError> {
    let job = req.job_id.clone();
    let invalid = |reason: String| DeployError::Invalid { job: job.clone(), reason };
    let graph = JobGraph::from_json(&req.job_graph).map_err(|e| DeployError::Graph { job: job.clone(), reason: e.to_string() })?;
    let config = Config::from_pairs(req.config.iter()).map_err(|e| invalid(e.to_string()))?;
    let key = job_key(&job).ok_or_else(|| invalid("job id is not 32 hex digits".into()))?;
    let me = shared.settings.id.clone();
    let mut location: HashMap<(u32, u32), (String, String)> = HashMap::new();
    for l in &req.locations {
        location.insert((l.vertex, l.subtask), (l.taskmanager_id.clone(), l.data_address.clone()));
    }
    let loc = |t: SubtaskRef| {
        location.get(&(t.vertex, t.subtask)).ok_or_else(|| invalid(format!("no location for subtask {} of vertex {}", t.subtask, t.vertex)))
    };
    for r in &req.subtasks {
        if r.vertex as usize >= graph.vertices.len() {
            return Err(invalid(format!("no vertex {}", r.vertex)));
        }
    }
    let s = &shared.settings;
    let settings = JobSettings::from_config(&config).map_err(|e| invalid(e.to_string()))?;
    let state = StateConfig {
        backend: settings.state_backend,
        local_dir: s.local_dir.clone(),
        rocksdb_aggregate_cache: settings.rocksdb_aggregate_cache,
    };
    let runtime = tokio::runtime::Handle::current();
    let storage = match &settings.checkpoint.dir {
        Some(url) => Some(CheckpointStorage::open(url, &config).map_err(|e| invalid(e.to_string()))?),
        None => None,
    };
    // Tasks checkpoint only when the job does (an interval is set); a restore alone does not.
    let checkpoint_storage = storage.clone().filter(|_| settings.checkpoint.enabled());
    let checkpointing = checkpoint_storage.map(|storage| {
        let acks = shared.acks.clone();
        let (job, attempt) = (job.clone(), req.attempt);
        // Savepoint folders are opened with the job's configuration (S3 endpoint, credentials).
        let job_config = config.clone();
        CheckpointSettings {
            mode: settings.checkpoint.mode,
            alignment: settings.checkpoint.alignment(),
            storage,
            open_storage: Arc::new(move |url: &str| CheckpointStorage::open(url, &job_config)),
            incremental: settings.checkpoint.incremental,
            runtime: runtime.clone(),
            report: Arc::new(move |ack| {
                let _ = acks.send((job.clone(), attempt, ack));
            }),
        }
    });
    let restore = if req.restore.is_empty() {
        None
    } else {
        let info: RestoreInfo =
            serde_json::from_slice(&req.restore).map_err(|e| invalid(format!("restore information does not parse: {e}")))?;
        let storage = CheckpointStorage::open(&info.storage_url, &config).map_err(|e| invalid(e.to_string()))?;
        Some(RestoreSettings { metadata: Arc::new(info.metadata), storage, runtime: runtime.clone() })
    };

    let mut plans = Vec::with_capacity(req.subtasks.len());
    for r in &req.subtasks {
        plans.push(
            ChannelPlan::for_subtask(&graph, r.vertex, r.subtask).map_err(|source| DeployError::Wiring { job: job.clone(), source })?,
        );
    }

    // The network memory the channels of these subtasks can hold, reserved before any exists.
    let mut demand = NetworkDemand::default();
    for plan in &plans {
        demand.input_channels += plan.inputs.len() as u64;
        let mut remote_input = false;
        for c in &plan.inputs {
            remote_input |= &loc(c.from)?.0 != &me;
        }
        demand.remote_gates += u64::from(remote_input);
        for c in plan.outputs.iter().flat_map(|o| &o.channels) {
            demand.output_channels += 1;
            demand.remote_output_channels += u64::from(&loc(c.to)?.0 != &me);
        }
    }
    let network = shared
        .network_memory
        .reserve(demand, &s.config.network)
        .map_err(|e| invalid(format!("TaskManager {me} cannot deploy {} subtasks: {e}", plans.len())))?;

    // 1. Gates, so local senders can find them.
    let mut gates: HashMap<SubtaskRef, Arc<InputGate>> = HashMap::new();
    let mut remote_inputs = Vec::new();
    for plan in &plans {
        if plan.inputs.is_empty() {
            continue;
        }
        let mut remote: Vec<Option<(ChannelId, String, String)>> = Vec::new();
        for c in &plan.inputs {
            let (tm, addr) = loc(c.from)?;
            remote.push((tm != &me).then(|| (c.id(key, req.attempt), tm.clone(), addr.clone())));
        }
        // Only a gate with remote channels returns credits over the network and has floating ones.
        let (credit, floating) = if remote.iter().any(Option::is_some) {
            (Some(shared.net.credit_return(remote.clone())), s.config.network.floating_buffers_per_gate)
        } else {
            (None, 0)
        };
        let per_channel: Vec<Option<Arc<dyn CreditReturn>>> = remote.iter().map(|r| r.as_ref().and(credit.clone())).collect();
        let mut gate = InputGate::new(s.config.network.buffers_per_channel, per_channel).with_floating(floating);
        if let Some(debloat) = s.config.network.debloat {
            gate = gate.with_debloat(debloat, s.config.network.segment_size);
        }
        let gate = Arc::new(gate);
        for (idx, r) in remote.into_iter().enumerate() {
            if let Some((id, tm, addr)) = r {
                remote_inputs.push((id, gate.clone(), idx, tm, addr));
            }
        }
        gates.insert(plan.subtask, gate);
    }

    // 2. Partitions and tasks.
    let mut descriptors = Vec::new();
    for plan in plans {
        let at = plan.subtask;
        let vertex = graph.vertex(at.vertex).clone();
        let mut edges = Vec::new();
        for out in plan.outputs {
            let mut channels = Vec::new();
            for c in &out.channels {
                let (tm, addr) = loc(c.to)?;
                if tm == &me {
                    let gate = gates
                        .get(&c.to)
                        .ok_or_else(|| invalid(format!("subtask {} of vertex {} is not deployed here", c.to.subtask, c.to.vertex)))?;
                    channels.push(ChannelWriter::Local { gate: gate.clone(), index: c.gate_index });
                } else {
                    channels.push(ChannelWriter::Remote(shared.net.register_output(c.id(key, req.attempt), tm, addr)));
                }
            }
            edges.push(OutputEdge::new(out.partitioning, out.key_column, graph.max_parallelism, channels, at.subtask as usize));
        }
        let info = SubtaskInfo {
            job_id: job.clone(),
            attempt: req.attempt,
            vertex: at.vertex,
            vertex_name: vertex.name.clone(),
            index: at.subtask,
            parallelism: vertex.parallelism,
            max_parallelism: graph.max_parallelism,
        };
        descriptors.push(TaskDescriptor {
            info,
            vertex,
            input_schema: plan.input_schema,
            gate: gates.get(&at).cloned(),
            partition: ResultPartition::new(edges, s.config.network.segment_size, s.config.network.buffer_timeout),
            state: state.clone(),
            checkpointing: checkpointing.clone(),
            restore: restore.clone(),
            connectors: shared.connectors.clone(),
            functions: shared.functions.clone(),
            sql: shared.sql.clone(),
        });
    }

    // 3. Announce credits for remote inputs, then start the tasks.
    for (id, gate, idx, tm, addr) in remote_inputs {
        shared.net.register_input(id, gate, idx, &tm, &addr);
    }
    // The entry exists before any task runs, so a task that ends at once is accounted for.
    shared.jobs.lock().insert(
        (job.clone(), req.attempt),
        JobTasks {
            job_key: key,
            job_name: graph.name.clone(),
            vertex_names: graph.vertices.iter().map(|v| v.name.clone()).collect(),
            tasks: HashMap::new(),
            expected: descriptors.len(),
            ended: Default::default(),
            _network: network,
        },
    );
    for d in descriptors {
        let (v, i) = (d.info.vertex, d.info.index);
        let report = reporter(shared, &job, req.attempt);
        let task = Task::spawn(d, report).map_err(|e| invalid(format!("cannot start a task thread: {e}")))?;
        if let Some(j) = shared.jobs.lock().get_mut(&(job.clone(), req.attempt)) {
            j.tasks.insert((v, i), task);
        } else {
            task.cancel(); // the job was canceled while deploying
        }
    }
    tracing::info!(job = %job, attempt = req.attempt, tasks = req.subtasks.len(), "deployed");
    Ok(())
}

fn reporter(shared: &Arc<Shared>, job: &str, attempt: u32) -> Arc<dyn Fn(TaskEvent) + Send + Sync> {
    let tx = shared.updates.clone();
    let (tm, job) = (shared.settings.id.clone(), job.to_string());
    let weak = Arc::downgrade(shared);
    Arc::new(move |ev: TaskEvent| {
        let (state, failure) = match &ev.state {
            TaskState::Running => (ProtoTaskState::TaskRunning, String::new()),
            TaskState::Finishing => (ProtoTaskState::TaskFinishing, String::new()),
            TaskState::Finished => (ProtoTaskState::TaskFinished, String::new()),
            TaskState::Failed(r) => (ProtoTaskState::TaskFailed, r.clone()),
            TaskState::Canceled => (ProtoTaskState::TaskCanceled, String::new()),
        };
        let _ = tx.send(UpdateTaskStateRequest {
            taskmanager_id: tm.clone(),
            execution: Some(ExecutionId { job_id: job.clone(), attempt, vertex: ev.vertex, subtask: ev.subtask }),
            state: state as i32,
            failure,
            records_in: ev.records_in,
            records_out: ev.records_out,
        });
        if ev.state != TaskState::Running && ev.state != TaskState::Finishing {
            if let Some(shared) = weak.upgrade() {
                let mut jobs = shared.jobs.lock();
                let key = (job.clone(), attempt);
                if let Some(j) = jobs.get_mut(&key) {
                    j.ended.insert((ev.vertex, ev.subtask));
                    if j.ended.len() == j.expected {
                        let j = jobs.remove(&key).expect("present");
                        drop(jobs);
                        shared.net.release_inputs(j.job_key, attempt);
                        std::thread::spawn(move || j.tasks.into_values().for_each(Task::join));
                    }
                }
            }
        }
    })
}
