//! JobManager recovery: on start, every job of the catalog that had not ended is added again
//! under its id, as a new attempt, restoring the latest checkpoint whose `_metadata` is in
//! its checkpoint storage (a `_metadata` that does not read is reported and skipped, and the
//! next older one is tried). It is then scheduled as soon as TaskManagers (re-)register.

use crate::state::JobManagerState;
use std::sync::Arc;
use weir_core::config::{keys, Config};
use weir_state::metadata::{CheckpointMetadata, RestoreInfo};
use weir_state::CheckpointStorage;

pub(crate) async fn recover_jobs(state: &Arc<JobManagerState>) {
    let Some(catalog) = state.catalog.clone() else { return };
    for record in catalog.load().into_iter().filter(|r| !r.is_terminal()) {
        let id = record.id.clone();
        match recover(state, record).await {
            Ok(checkpoint) => {
                tracing::info!(job = %id, checkpoint, "recovered job from the catalog");
                tokio::spawn(crate::scheduler::schedule(state.clone(), id.clone()));
                tokio::spawn(crate::coordinate::coordinator_loop(state.clone(), id));
            }
            Err(e) => tracing::error!(job = %id, "cannot recover job: {e}"),
        }
    }
}

async fn recover(state: &Arc<JobManagerState>, r: crate::catalog::JobRecord) -> Result<Option<u64>, String> {
    let overrides = Config::from_pairs(r.config.iter()).map_err(|e| e.to_string())?;
    let (graph, config) = weir_core::job::compile_job(&r.definition, &r.origin, &state.config, &overrides).map_err(|e| e.to_string())?;
    let mut restore = None;
    if let Some(url) = config.text(keys::CHECKPOINT_DIR) {
        let storage = CheckpointStorage::open(url, &config).map_err(|e| e.to_string())?;
        restore = latest_checkpoint(&storage, &r.id).await.map(|metadata| RestoreInfo { storage_url: url.to_string(), metadata });
    }
    let next = restore.as_ref().map_or(1, |x| x.metadata.checkpoint_id + 1);
    let checkpoint = restore.as_ref().map(|x| x.metadata.checkpoint_id);
    state.insert_job(r.id, r.name, graph, config, restore, (r.definition, r.origin), r.attempt + 1, next)?;
    Ok(checkpoint)
}

/// The newest readable `_metadata` of `job`.
pub(crate) async fn latest_checkpoint(storage: &CheckpointStorage, job: &str) -> Option<CheckpointMetadata> {
    let files = storage.list(job).await.ok()?;
    let mut ids: Vec<u64> = files
        .iter()
        .filter_map(|p| p.strip_suffix("/_metadata"))
        .filter_map(|p| p.rsplit_once("/chk-").and_then(|(_, n)| n.parse().ok()))
        .collect();
    ids.sort_unstable_by(|a, b| b.cmp(a));
    for n in ids {
        match CheckpointMetadata::read(storage, &weir_state::storage::layout::metadata(job, n)).await {
            Ok(m) => return Some(m),
            Err(e) => tracing::error!(job, checkpoint = n, "skipping an unreadable checkpoint: {e}"),
        }
    }
    None
}
