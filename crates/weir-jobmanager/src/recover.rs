//! JobManager recovery: on start, every job of the catalog that had not ended is added again
//! under its id, as a new attempt, restoring the latest checkpoint whose `_metadata` is in
//! its checkpoint storage (a `_metadata` that does not read is reported and skipped, and the
//! next older one is tried). It is then scheduled as soon as TaskManagers (re-)register.
//! The newest `num-retained` readable checkpoints are handed to its checkpoint coordinator
//! ([`Event::Recovered`]): they are retained as before, their shared files registered (so
//! they are deleted once unreferenced, and never while referenced), and everything else the
//! previous JobManager left in the job's storage is swept away.
//!
//! Which jobs come back is decided by the state name of their last catalog entry: FINISHED,
//! FAILED and CANCELED stay ended; every other state (SUSPENDED after a clean shutdown, or
//! whatever state the job was in when the JobManager died) is resumed. The job is compiled
//! again from the job file kept in its entry (a program's job is read back from its graph's
//! JSON, and waits for TaskManagers that carry its functions), with the configuration it ran under (every
//! explicitly set key: the old cluster's, the job file's, `-D`) applied over this
//! JobManager's: a key the old cluster set keeps its old value, a key left at its default
//! takes the new cluster's. Nothing of the previous JobManager's memory survives: restart
//! history, the checkpoint history of `weir checkpoints`, and what the job was first started
//! from with `weir run -s` (the entry does not record it) start afresh.

use crate::catalog::{Catalog, JobRecord};
use crate::coordinator::Event;
use crate::effects::{Executor, Followup};
use crate::job::{DefinitionKind, JobDefinition, NewJob};
use crate::program;
use crate::state::JobManagerState;
use weir_core::config::Config;
use weir_core::settings::JobSettings;
use weir_state::metadata::{CheckpointMetadata, RestoreInfo};
use weir_state::CheckpointStorage;

/// Adds every unfinished job of the catalog again, each as a new attempt from its latest
/// readable checkpoint. A job that cannot be recovered (its job file no longer compiles, its
/// storage cannot be opened) is reported and left out; the others still recover.
///
/// Called by [`crate::start`] once, after the driver runs and before the RPC server and the
/// heartbeat monitor start, so no TaskManager is registered yet: every recovered job waits
/// for slots, and its `slot.request.timeout` counts from here. Its catalog entry is written
/// again (CREATED, the new attempt) by [`JobManagerState::add_job`].
pub(crate) async fn recover_jobs(state: &JobManagerState, executor: &Executor, catalog: &Catalog) {
    for record in catalog.load().into_iter().filter(|r| !r.is_terminal()) {
        let id = record.id.clone();
        match recover(state, record).await {
            Ok((new, checkpoint, checkpoints)) => {
                tracing::info!(job = %id, checkpoint, "recovered job from the catalog");
                executor.perform(state.add_job(new));
                if !checkpoints.is_empty() {
                    executor.send(Followup::Checkpoint { job_id: id, event: Event::Recovered { checkpoints } });
                }
            }
            Err(e) => tracing::error!(job = %id, "cannot recover job: {e}"),
        }
    }
}

/// The job a catalog record describes, compiled under this JobManager's configuration, with
/// its restore point, the checkpoint id it continues from, and the checkpoints it retains
/// (newest first).
///
/// The attempt continues after the recorded one, so that messages of the previous
/// JobManager's tasks, should any still arrive, never count; checkpoint ids continue after
/// the restore point. Errors are messages for the log, naming what failed to compile or
/// open.
async fn recover(state: &JobManagerState, r: JobRecord) -> Result<(NewJob, Option<u64>, Vec<CheckpointMetadata>), String> {
    let overrides = Config::from_pairs(r.config.iter()).map_err(|e| e.to_string())?;
    let (graph, config, settings) = match r.kind {
        DefinitionKind::JobFile => {
            let (graph, config) =
                weir_core::job::compile_job(&r.definition, &r.origin, state.config(), &overrides).map_err(|e| e.to_string())?;
            let settings = JobSettings::from_config(&config).map_err(|e| e.to_string())?;
            (graph, config, settings)
        }
        // A program's graph is kept as it was compiled; its functions come back with the
        // application's TaskManagers when they register again.
        DefinitionKind::JobGraph => {
            let graph = weir_core::graph::JobGraph::from_json(r.definition.as_bytes())
                .map_err(|e| format!("its job graph ({}) does not parse: {e}", r.origin))?;
            let (config, settings) = program::job_config(state.config(), &overrides, false)?;
            (graph, config, settings)
        }
    };
    let mut restore = None;
    let mut storage = None;
    let mut retained = Vec::new();
    if let Some(url) = &settings.checkpoint.dir {
        let s = CheckpointStorage::open(url, &config).map_err(|e| e.to_string())?;
        retained = latest_checkpoints(&s, &r.id, settings.checkpoint.num_retained.max(1)).await;
        restore = retained.first().map(|metadata| RestoreInfo { storage_url: url.clone(), metadata: metadata.clone() });
        storage = Some(s);
    }
    // A completed stop savepoint newer than the latest checkpoint committed the sinks' output
    // up to it: restoring anything older would commit rows twice.
    if let Some(location) = &r.restore_savepoint {
        let s = CheckpointStorage::open(location, &config).map_err(|e| e.to_string())?;
        let metadata = CheckpointMetadata::read(&s, "_metadata").await.map_err(|e| format!("its stop savepoint {location}: {e}"))?;
        if restore.as_ref().is_none_or(|x| x.metadata.checkpoint_id < metadata.checkpoint_id) {
            restore = Some(RestoreInfo { storage_url: location.clone(), metadata });
        }
    }
    let checkpoint = restore.as_ref().map(|x| x.metadata.checkpoint_id);
    let new = NewJob {
        id: r.id,
        name: r.name,
        graph,
        config,
        settings,
        storage,
        definition: JobDefinition { kind: r.kind, text: r.definition, origin: r.origin },
        restore,
        attempt: r.attempt + 1,
        next_checkpoint: checkpoint.map_or(1, |c| c + 1),
    };
    Ok((new, checkpoint, retained))
}

/// The newest `count` readable `_metadata` of `job`, newest first, found by listing its
/// `chk-<n>/_metadata` files in `storage`. Empty if there is none, if none reads, or if the
/// listing itself fails: the job then starts without state. The first is the restore point.
pub(crate) async fn latest_checkpoints(storage: &CheckpointStorage, job: &str, count: usize) -> Vec<CheckpointMetadata> {
    let Ok(files) = storage.list(job).await else { return Vec::new() };
    let mut ids: Vec<u64> = files
        .iter()
        .filter_map(|p| p.strip_suffix("/_metadata"))
        .filter_map(|p| p.rsplit_once("/chk-").and_then(|(_, n)| n.parse().ok()))
        .collect();
    ids.sort_unstable_by(|a, b| b.cmp(a));
    let mut out = Vec::new();
    for n in ids {
        if out.len() == count {
            break;
        }
        match CheckpointMetadata::read(storage, &weir_state::storage::layout::metadata(job, n)).await {
            Ok(m) => out.push(m),
            Err(e) => tracing::error!(job, checkpoint = n, "skipping an unreadable checkpoint: {e}"),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use weir_core::settings::JobManagerConfig;

    const JOB: &str =
        "name: t\npipeline:\n  - source: datagen\n    fields:\n      - {name: k, kind: sequence, start: 0}\n  - sink: blackhole\n";

    fn metadata(job: &str, id: u64, savepoint: bool) -> CheckpointMetadata {
        CheckpointMetadata { job_id: job.into(), checkpoint_id: id, timestamp_ms: 0, savepoint, operators: Vec::new() }
    }

    /// A job recovered after its stop savepoint completed restores that savepoint, not the
    /// older checkpoint (whose restore would commit rows twice); a newer checkpoint wins.
    #[tokio::test]
    async fn a_recovered_job_restores_its_stop_savepoint_when_it_is_newer() {
        let dir = tempfile::tempdir().unwrap();
        let checkpoints = format!("file://{}/chk", dir.path().display());
        let savepoint = format!("file://{}/sp/savepoint-j1-0", dir.path().display());
        let storage = CheckpointStorage::open(&checkpoints, &Config::new()).unwrap();
        metadata("j1", 3, false).write(&storage).await.unwrap();
        let sp = CheckpointStorage::open(&savepoint, &Config::new()).unwrap();
        metadata("j1", 5, true).write_at(&sp, "_metadata").await.unwrap();
        let state =
            JobManagerState::new(Config::new(), JobManagerConfig::from_config(&Config::new()), weir_proto::security::Dialer::plaintext());
        let record = |restore_savepoint: Option<String>| JobRecord {
            id: "j1".into(),
            name: "t".into(),
            definition: JOB.into(),
            kind: DefinitionKind::JobFile,
            origin: "t".into(),
            config: [
                ("execution.checkpointing.dir".to_string(), checkpoints.clone()),
                ("execution.checkpointing.interval".to_string(), "1s".to_string()),
            ]
            .into(),
            attempt: 0,
            state: "RUNNING".into(),
            restore_savepoint,
        };
        let (new, id, _) = recover(&state, record(Some(savepoint.clone()))).await.unwrap();
        let restore = new.restore.unwrap();
        assert_eq!((restore.storage_url.as_str(), id, new.next_checkpoint), (savepoint.as_str(), Some(5), 6));
        let (new, id, retained) = recover(&state, record(None)).await.unwrap();
        assert_eq!((new.restore.unwrap().storage_url, id), (checkpoints.clone(), Some(3)));
        assert_eq!(retained.iter().map(|m| m.checkpoint_id).collect::<Vec<_>>(), [3], "the retained checkpoints go to the coordinator");
        metadata("j1", 7, false).write(&storage).await.unwrap();
        let (_, id, _) = recover(&state, record(Some(savepoint))).await.unwrap();
        assert_eq!(id, Some(7), "a checkpoint newer than the stop savepoint is the restore point");
    }

    /// A program's job comes back from the graph JSON its entry keeps, under the
    /// configuration it ran with, without being compiled from a job file.
    #[tokio::test]
    async fn a_program_job_is_recovered_from_its_graph() {
        let (graph, _) = weir_core::job::compile_job(JOB, "t", &Config::new(), &Config::new()).unwrap();
        let state =
            JobManagerState::new(Config::new(), JobManagerConfig::from_config(&Config::new()), weir_proto::security::Dialer::plaintext());
        let record = JobRecord {
            id: "p1".into(),
            name: graph.name.clone(),
            definition: String::from_utf8(graph.to_json()).unwrap(),
            kind: DefinitionKind::JobGraph,
            origin: "program 't'".into(),
            config: [("parallelism.default".to_string(), "3".to_string())].into(),
            attempt: 2,
            state: "RUNNING".into(),
            restore_savepoint: None,
        };
        let (new, checkpoint, _) = recover(&state, record.clone()).await.unwrap();
        assert_eq!((new.graph, checkpoint, new.attempt), (graph, None, 3));
        assert_eq!(new.config.get("parallelism.default"), "3");
        assert_eq!(new.definition.kind, DefinitionKind::JobGraph);
        let broken = JobRecord { definition: "{".into(), ..record };
        let err = recover(&state, broken).await.err().unwrap();
        assert!(err.contains("its job graph (program 't') does not parse"), "{err}");
    }
}
