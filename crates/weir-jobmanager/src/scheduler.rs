//! Scheduling: a job waits for enough free slots (`slot.request.timeout`), takes them spread
//! over the TaskManagers, then is deployed. With slot sharing, slot i runs subtask i of
//! every vertex, so a job needs as many slots as its highest parallelism.

use crate::state::{humanize, JobManagerState, TaskEntry};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;
use weir_core::config::keys;
use weir_proto::{DeployTasksRequest, JobState, SubtaskLocation, SubtaskRef, TaskState};

/// Picks `needed` slots, one at a time from the TaskManager with the most free slots, so
/// subtasks spread evenly over the cluster. None if there are not enough free slots.
fn pick_slots(free: &mut [(String, u32)], needed: u32) -> Option<Vec<String>> {
    let total: u32 = free.iter().map(|(_, f)| f).sum();
    if total < needed {
        return None;
    }
    let mut picked = Vec::with_capacity(needed as usize);
    for _ in 0..needed {
        // Most free slots first; ties broken by id so placement is deterministic.
        let best =
            free.iter_mut().filter(|(_, f)| *f > 0).max_by(|a, b| a.1.cmp(&b.1).then_with(|| b.0.cmp(&a.0))).expect("enough free slots");
        best.1 -= 1;
        picked.push(best.0.clone());
    }
    Some(picked)
}

/// Waits for slots, allocates them and deploys the job. Runs as its own task per job.
pub(crate) async fn schedule(state: Arc<JobManagerState>, job_id: String) {
    let timeout = state.config.duration(keys::SLOT_REQUEST_TIMEOUT);
    let deadline = Instant::now() + timeout;
    let requests = loop {
        let notified = state.slots_changed.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        {
            let mut inner = state.inner.lock();
            let Some(job) = inner.jobs.get(&job_id) else { return };
            if job.state != JobState::Created {
                return; // canceled while waiting
            }
            let needed = job.graph.slots_needed();
            let mut free: Vec<(String, u32)> = inner.tms.values().map(|t| (t.id.clone(), t.slots - t.used)).collect();
            free.sort();
            if let Some(slots) = pick_slots(&mut free, needed) {
                for tm in &slots {
                    if let Some(e) = inner.tms.get_mut(tm) {
                        e.used += 1;
                    }
                }
                let mut locations = Vec::new();
                let job = inner.jobs.get_mut(&job_id).expect("checked above");
                let mut per_tm: HashMap<String, Vec<SubtaskRef>> = HashMap::new();
                job.tasks.clear();
                for v in &job.graph.vertices {
                    for i in 0..v.parallelism {
                        let tm = slots[i as usize].clone();
                        per_tm.entry(tm.clone()).or_default().push(SubtaskRef { vertex: v.id, subtask: i });
                        job.tasks.insert((v.id, i), TaskEntry { state: TaskState::Deploying, records_in: 0, records_out: 0 });
                        locations.push((v.id, i, tm));
                    }
                }
                job.slots = slots;
                job.state = JobState::Running;
                let graph_json = job.graph.to_json();
                let restore = job.restore.as_ref().map(|r| serde_json::to_vec(r).expect("restore info serializes")).unwrap_or_default();
                let config: HashMap<String, String> = job.config.explicit().clone().into_iter().collect();
                let attempt = job.attempt;
                let locations: Vec<SubtaskLocation> = locations
                    .into_iter()
                    .map(|(vertex, subtask, tm)| SubtaskLocation {
                        vertex,
                        subtask,
                        data_address: inner.tms.get(&tm).map(|e| e.data_address.clone()).unwrap_or_default(),
                        taskmanager_id: tm,
                    })
                    .collect();
                let requests: Vec<_> = per_tm
                    .into_iter()
                    .filter_map(|(tm, subtasks)| {
                        let client = inner.tms.get(&tm)?.client.clone();
                        Some((
                            tm,
                            client,
                            DeployTasksRequest {
                                job_id: job_id.clone(),
                                attempt,
                                job_graph: graph_json.clone(),
                                config: config.clone(),
                                locations: locations.clone(),
                                subtasks,
                                restore: restore.clone(),
                            },
                        ))
                    })
                    .collect();
                break requests;
            }
            if Instant::now() >= deadline {
                let free_total: u32 = free.iter().map(|(_, f)| f).sum();
                let total: u32 = inner.tms.values().map(|t| t.slots).sum();
                let reason = format!(
                    "could not get {needed} slots within slot.request.timeout ({}): {free_total} free of {total} on {} TaskManager(s)",
                    humanize(timeout),
                    inner.tms.len()
                );
                drop(inner);
                state.fail_job(&job_id, None, &reason);
                return;
            }
        }
        let _ = tokio::time::timeout_at(deadline.into(), notified).await;
    };
    tracing::info!(job = %job_id, taskmanagers = requests.len(), "deploying");
    let calls = requests.into_iter().map(|(tm, mut client, req)| async move {
        client.deploy_tasks(req).await.map_err(|e| format!("deploying to TaskManager {tm} failed: {}", e.message()))
    });
    for result in futures_join_all(calls).await {
        if let Err(reason) = result {
            state.fail_job(&job_id, None, &reason);
            return;
        }
    }
}

/// Runs the futures concurrently and collects their results in order.
async fn futures_join_all<F: std::future::Future>(futs: impl IntoIterator<Item = F>) -> Vec<F::Output>
where
    F: Send + 'static,
    F::Output: Send + 'static,
{
    let handles: Vec<_> = futs.into_iter().map(tokio::spawn).collect();
    let mut out = Vec::with_capacity(handles.len());
    for h in handles {
        out.push(h.await.expect("deploy call panicked"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_spread_over_taskmanagers() {
        let mut free = vec![("a".to_string(), 4), ("b".to_string(), 4)];
        let picked = pick_slots(&mut free, 4).unwrap();
        assert_eq!(picked.iter().filter(|t| *t == "a").count(), 2);
        assert_eq!(picked.iter().filter(|t| *t == "b").count(), 2);
        assert!(pick_slots(&mut free, 5).is_none());
    }
}
