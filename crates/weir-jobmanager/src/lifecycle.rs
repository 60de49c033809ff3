//! The job lifecycle: the states a job goes through and the one transition function that
//! moves it between them. Every change of a job's state in the JobManager goes through
//! [`transition`]; an event that makes no sense in the current state is an
//! [`IllegalTransition`], never a silent change.
//!
//! ```text
//!            SlotsAllocated          InputsEnded           AllTasksFinished
//!  CREATED ───────────────► RUNNING ─────────────► FINISHING ─────────────► FINISHED
//!     ▲                      │  │ AllTasksFinished (no checkpointing) ──────► FINISHED
//!     │ RestartDelayElapsed  │  │
//!     │                      │  └─ CancelRequested ─► CANCELLING ─ AllTasksStopped ─► CANCELED
//!  RESTARTING ◄── Failed{restart: true} ── (CREATED, RUNNING, FINISHING)
//!                          Failed{restart: false} ──► FAILED
//!  any non-terminal state ── Suspended ──► SUSPENDED   (the JobManager shuts down)
//! ```
//!
//! A cancel of a job that is not running tasks (CREATED, RESTARTING) ends it at once. The
//! transition function is pure: the side effects of a state change (freeing slots, canceling
//! tasks, aborting checkpoints) are decided by the caller from the state it moved to.

use std::fmt;
use weir_proto::JobState;

/// A job's state, as Flink names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum JobStatus {
    /// Submitted (or restarted), waiting for slots.
    Created,
    /// Deployed: its tasks run.
    Running,
    /// Every task's input ended; the final checkpoint commits the output before they finish.
    Finishing,
    /// A failure was seen; the restart strategy's delay runs before the next attempt.
    Restarting,
    /// A cancel was asked for; waiting for the tasks to stop.
    Cancelling,
    Finished,
    Failed,
    Canceled,
    /// The JobManager shut down with the job unfinished; a JobManager started on the same
    /// catalog resumes it.
    Suspended,
}

impl JobStatus {
    /// Finished, failed or canceled: nothing will happen to the job any more. (A suspended
    /// job is not terminal: it resumes when a JobManager starts on its catalog.)
    pub fn is_terminal(self) -> bool {
        matches!(self, Self::Finished | Self::Failed | Self::Canceled)
    }

    /// Whether the job's tasks are deployed and may take checkpoints.
    pub fn tasks_active(self) -> bool {
        matches!(self, Self::Running | Self::Finishing)
    }

    /// The state on the wire.
    pub fn proto(self) -> JobState {
        match self {
            Self::Created => JobState::Created,
            Self::Running => JobState::Running,
            Self::Finishing => JobState::Finishing,
            Self::Restarting => JobState::Restarting,
            Self::Cancelling => JobState::Canceling,
            Self::Finished => JobState::Finished,
            Self::Failed => JobState::Failed,
            Self::Canceled => JobState::Canceled,
            Self::Suspended => JobState::Suspended,
        }
    }

    /// The state's name, as shown by the CLI and written to the job catalog.
    pub fn name(self) -> &'static str {
        self.proto().as_str_name()
    }
}

impl fmt::Display for JobStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// What happens to a job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LifecycleEvent {
    /// Slots were allocated and the tasks are being deployed.
    SlotsAllocated,
    /// Every task's input ended, with checkpointing on: the final checkpoint follows.
    InputsEnded,
    /// Every task finished.
    AllTasksFinished,
    /// The job failed; `restart` says whether the restart strategy allows another attempt.
    Failed { restart: bool },
    /// The restart delay passed: a new attempt waits for slots.
    RestartDelayElapsed,
    /// The user asked to cancel the job.
    CancelRequested,
    /// Every task stopped (or its TaskManager is gone) after a cancel.
    AllTasksStopped,
    /// The JobManager shuts down.
    Suspended,
}

/// An event that is not allowed in the job's current state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("job state {from}: {event:?} is not allowed")]
pub struct IllegalTransition {
    pub from: JobStatus,
    pub event: LifecycleEvent,
}

/// The lifecycle's transition function.
pub fn transition(from: JobStatus, event: LifecycleEvent) -> Result<JobStatus, IllegalTransition> {
    use JobStatus::*;
    use LifecycleEvent as E;
    let to = match (from, event) {
        (Created, E::SlotsAllocated) => Running,
        (Running, E::InputsEnded) => Finishing,
        (Running | Finishing, E::AllTasksFinished) => Finished,
        (Created | Running | Finishing, E::Failed { restart: true }) => Restarting,
        (Created | Running | Finishing, E::Failed { restart: false }) => Failed,
        (Restarting, E::RestartDelayElapsed) => Created,
        (Created | Restarting, E::CancelRequested) => Canceled,
        (Running | Finishing, E::CancelRequested) => Cancelling,
        (Cancelling, E::CancelRequested) => Cancelling,
        (Cancelling, E::AllTasksStopped) => Canceled,
        (s, E::Suspended) if !s.is_terminal() => Suspended,
        _ => return Err(IllegalTransition { from, event }),
    };
    Ok(to)
}

#[cfg(test)]
mod tests {
    use super::JobStatus::*;
    use super::LifecycleEvent as E;
    use super::*;

    const ALL: [JobStatus; 9] = [Created, Running, Finishing, Restarting, Cancelling, Finished, Failed, Canceled, Suspended];
    const EVENTS: [LifecycleEvent; 9] = [
        E::SlotsAllocated,
        E::InputsEnded,
        E::AllTasksFinished,
        E::Failed { restart: true },
        E::Failed { restart: false },
        E::RestartDelayElapsed,
        E::CancelRequested,
        E::AllTasksStopped,
        E::Suspended,
    ];

    #[test]
    fn a_job_runs_to_the_end() {
        let s = transition(Created, E::SlotsAllocated).unwrap();
        assert_eq!(s, Running);
        assert_eq!(transition(s, E::AllTasksFinished), Ok(Finished));
        let s = transition(s, E::InputsEnded).unwrap();
        assert_eq!(s, Finishing);
        assert_eq!(transition(s, E::AllTasksFinished), Ok(Finished));
    }

    #[test]
    fn a_failure_restarts_or_fails_by_the_strategy() {
        for from in [Created, Running, Finishing] {
            assert_eq!(transition(from, E::Failed { restart: true }), Ok(Restarting));
            assert_eq!(transition(from, E::Failed { restart: false }), Ok(Failed));
        }
        assert_eq!(transition(Restarting, E::RestartDelayElapsed), Ok(Created));
        // A failure while restarting or cancelling is moot: the attempt is already gone.
        assert!(transition(Restarting, E::Failed { restart: false }).is_err());
    }

    #[test]
    fn a_cancel_waits_for_running_tasks_and_ends_idle_jobs_at_once() {
        assert_eq!(transition(Running, E::CancelRequested), Ok(Cancelling));
        assert_eq!(transition(Finishing, E::CancelRequested), Ok(Cancelling));
        assert_eq!(transition(Cancelling, E::AllTasksStopped), Ok(Canceled));
        assert_eq!(transition(Created, E::CancelRequested), Ok(Canceled));
        assert_eq!(transition(Restarting, E::CancelRequested), Ok(Canceled));
        assert_eq!(transition(Cancelling, E::CancelRequested), Ok(Cancelling));
    }

    #[test]
    fn terminal_states_accept_no_event() {
        for from in ALL.into_iter().filter(|s| s.is_terminal()) {
            for event in EVENTS {
                assert_eq!(transition(from, event), Err(IllegalTransition { from, event }), "{from} {event:?}");
            }
        }
    }

    #[test]
    fn illegal_transitions_are_errors() {
        assert!(transition(Created, E::AllTasksFinished).is_err());
        assert!(transition(Running, E::RestartDelayElapsed).is_err());
        assert!(transition(Cancelling, E::Failed { restart: true }).is_err());
        assert!(transition(Restarting, E::SlotsAllocated).is_err());
        assert!(transition(Suspended, E::SlotsAllocated).is_err());
        let err = transition(Finished, E::CancelRequested).unwrap_err();
        assert_eq!(err.to_string(), "job state FINISHED: CancelRequested is not allowed");
    }

    #[test]
    fn every_unfinished_job_can_be_suspended() {
        for from in ALL {
            assert_eq!(transition(from, E::Suspended).is_ok(), !from.is_terminal(), "{from}");
        }
    }

    #[test]
    fn every_state_has_a_wire_name() {
        let names: Vec<&str> = ALL.iter().map(|s| s.name()).collect();
        assert_eq!(names, ["CREATED", "RUNNING", "FINISHING", "RESTARTING", "CANCELING", "FINISHED", "FAILED", "CANCELED", "SUSPENDED"]);
    }
}
