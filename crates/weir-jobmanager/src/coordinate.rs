//! Turns the checkpoint coordinator's [`Action`]s into [`Effect`]s: which TaskManagers get
//! which RPC, what is written to and deleted from checkpoint storage. The coordinator
//! (`coordinator.rs`) decides; this only addresses, and the [`crate::effects::Executor`]
//! performs.

use crate::coordinator::{Action, CheckpointKind, SavepointRequest, StopMode, TriggerTarget};
use crate::effects::{CheckpointCall, Effect, Followup, TmTarget};
use weir_core::config::Config;
use weir_core::settings::AlignmentPolicy;
use weir_proto::{Alignment, CheckpointRequest};
use weir_state::CheckpointStorage;

/// Where a job's checkpoint effects go.
pub(crate) struct Targets<'a> {
    pub job_id: &'a str,
    /// The attempt the actions belong to.
    pub attempt: u32,
    /// TaskManagers running the job's source subtasks.
    pub sources: Vec<TmTarget>,
    /// Every TaskManager running a subtask of the job.
    pub all: Vec<TmTarget>,
    pub storage: Option<&'a CheckpointStorage>,
    /// The job's configuration: savepoint folders are opened with it (S3 credentials).
    pub config: &'a Config,
}

/// The request every checkpoint RPC carries; `final_checkpoint` asks every task (not only
/// sources) to take the final checkpoint.
fn request(job_id: &str, attempt: u32, id: u64, timestamp_ms: i64, final_checkpoint: bool) -> CheckpointRequest {
    CheckpointRequest { job_id: job_id.to_string(), attempt, checkpoint_id: id, timestamp_ms, final_checkpoint, ..Default::default() }
}

/// A savepoint's trigger carries its folder and format, and for `weir stop` (without
/// `--drain`) asks the sources to stop after its barrier.
fn with_savepoint(mut request: CheckpointRequest, savepoint: Option<&SavepointRequest>) -> CheckpointRequest {
    if let Some(s) = savepoint {
        request.savepoint = true;
        request.savepoint_location = s.location.clone();
        request.native = s.native;
        request.stop = s.stop == Some(StopMode::Suspend);
    }
    request
}

/// A trigger carries how its barriers travel, from the job's settings now (a running job's
/// unaligned setting and aligned-checkpoint timeout may have changed since its tasks were
/// deployed). Settings that do not parse leave it to the tasks' deployed policy.
fn with_alignment(mut request: CheckpointRequest, config: &Config) -> CheckpointRequest {
    if let Ok(c) = weir_core::settings::CheckpointConfig::from_config(config) {
        let (alignment, timeout) = match c.alignment() {
            AlignmentPolicy::Aligned => (Alignment::Aligned, 0),
            AlignmentPolicy::Unaligned => (Alignment::Unaligned, 0),
            AlignmentPolicy::AlignedThenUnaligned(t) => (Alignment::AlignedThenUnaligned, t.as_millis() as u64),
        };
        request.alignment = alignment as i32;
        request.aligned_timeout_ms = timeout;
    }
    request
}

/// The effects that carry out `actions`, in order:
/// - a periodic trigger goes to the source TaskManagers, the final one to every TaskManager;
/// - completion notices go to every TaskManager (every task may have a sink to commit);
/// - aborts go to every TaskManager of the attempt: each task drops what it collected for the
///   checkpoint and sends a cancellation marker downstream (a priority event);
/// - `_metadata` writes and deletions go to the job's checkpoint storage (a job without
///   storage never triggers, so a write without storage can only fail);
/// - a failed job is a follow-up for the state, tied to this attempt.
pub(crate) fn effects_of(actions: Vec<Action>, t: &Targets<'_>, now_ms: i64) -> Vec<Effect> {
    let mut out = Vec::with_capacity(actions.len());
    for action in actions {
        match action {
            Action::Trigger { id, attempt, timestamp_ms, kind, target, savepoint } => {
                let to = match target {
                    TriggerTarget::Sources => t.sources.clone(),
                    TriggerTarget::AllTasks => t.all.clone(),
                };
                if let Some(s) = &savepoint {
                    tracing::info!(job = %t.job_id, checkpoint = id, location = %s.location, "triggering a savepoint");
                }
                let request =
                    with_savepoint(request(t.job_id, attempt, id, timestamp_ms, kind == CheckpointKind::Final), savepoint.as_ref());
                let request = with_alignment(request, t.config);
                out.push(Effect::CheckpointRpc { call: CheckpointCall::Trigger, to, request });
            }
            Action::EndInput { attempt } => {
                tracing::info!(job = %t.job_id, "stopping with drain: the sources end their input");
                let request = CheckpointRequest { end_input: true, ..request(t.job_id, attempt, 0, now_ms, false) };
                out.push(Effect::CheckpointRpc { call: CheckpointCall::Trigger, to: t.sources.clone(), request });
            }
            Action::RemindComplete { id, attempt } => {
                let request = request(t.job_id, attempt, id, now_ms, false);
                out.push(Effect::CheckpointRpc { call: CheckpointCall::NotifyComplete, to: t.all.clone(), request });
            }
            Action::SavepointDone { ticket, result } => {
                match &result {
                    Ok((id, path)) => tracing::info!(job = %t.job_id, checkpoint = id, path = %path, "savepoint completed"),
                    Err(why) => tracing::warn!(job = %t.job_id, "savepoint failed: {why}"),
                }
                out.push(Effect::SavepointDone { job_id: t.job_id.to_string(), ticket, result });
            }
            Action::DiscardSavepoint { location } => {
                out.push(Effect::DeleteSavepoint { location, config: t.config.clone() });
            }
            Action::WriteMetadata { metadata, savepoint: Some(location) } => {
                out.push(Effect::WriteSavepointMetadata { job_id: t.job_id.to_string(), location, config: t.config.clone(), metadata });
            }
            Action::WriteMetadata { metadata, savepoint: None } => match t.storage {
                Some(storage) => out.push(Effect::WriteMetadata { job_id: t.job_id.to_string(), storage: storage.clone(), metadata }),
                // Without storage no checkpoint is triggered; should one get here, it fails.
                None => out.push(Effect::Followup(Followup::Checkpoint {
                    job_id: t.job_id.to_string(),
                    event: crate::coordinator::Event::MetadataWritten {
                        id: metadata.checkpoint_id,
                        result: Err("no checkpoint storage (execution.checkpointing.dir)".into()),
                    },
                })),
            },
            Action::NotifyComplete { id, attempt } => {
                tracing::info!(job = %t.job_id, checkpoint = id, "checkpoint completed");
                let request = request(t.job_id, attempt, id, now_ms, false);
                out.push(Effect::CheckpointRpc { call: CheckpointCall::NotifyComplete, to: t.all.clone(), request });
            }
            Action::Abort { id, attempt, reason } => {
                if reason.counts_as_failure() {
                    tracing::warn!(job = %t.job_id, checkpoint = id, "checkpoint failed: {reason}");
                } else {
                    tracing::info!(job = %t.job_id, checkpoint = id, "checkpoint aborted: {reason}");
                }
                // Every task hears of it, not only the sources: a task aligning or persisting
                // channel state for it stops at once.
                let request = request(t.job_id, attempt, id, now_ms, false);
                out.push(Effect::CheckpointRpc { call: CheckpointCall::Abort, to: t.all.clone(), request });
            }
            Action::Discard { id } => {
                if let Some(storage) = t.storage {
                    out.push(Effect::DeleteCheckpoint { job_id: t.job_id.to_string(), storage: storage.clone(), id });
                }
            }
            Action::DeleteSharedFiles(paths) => {
                if let Some(storage) = t.storage {
                    out.push(Effect::DeleteFiles { storage: storage.clone(), paths });
                }
            }
            Action::CollectGarbage { sweep, repeat } => {
                if let Some(storage) = t.storage {
                    out.push(Effect::CollectGarbage { storage: storage.clone(), sweep, repeat });
                }
            }
            Action::FailJob(reason) => {
                out.push(Effect::Followup(Followup::FailJob { job_id: t.job_id.to_string(), attempt: Some(t.attempt), reason }));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_trigger_carries_the_alignment_of_the_jobs_settings_now() {
        let request = |pairs: &[(&str, &str)]| {
            let pairs: Vec<(String, String)> = pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
            let config = Config::from_pairs(pairs.iter().map(|(k, v)| (k, v))).unwrap();
            with_alignment(CheckpointRequest::default(), &config)
        };
        let aligned = request(&[]);
        assert_eq!(aligned.alignment, Alignment::Aligned as i32);
        let unaligned = request(&[("execution.checkpointing.unaligned.enabled", "true")]);
        assert_eq!(unaligned.alignment, Alignment::Unaligned as i32);
        let timed =
            request(&[("execution.checkpointing.unaligned.enabled", "true"), ("execution.checkpointing.aligned-checkpoint-timeout", "2s")]);
        assert_eq!((timed.alignment, timed.aligned_timeout_ms), (Alignment::AlignedThenUnaligned as i32, 2000));
    }
}
