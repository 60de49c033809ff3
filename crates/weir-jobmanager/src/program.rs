//! Program jobs: JobGraphs compiled by a DataStream program (the `weir` crate) rather than by
//! this JobManager from a job file.
//!
//! A program's user operators (`OperatorSpec::User { function, .. }`) run only where their
//! code is: in the TaskManagers the program started itself (its embedded cluster, or the
//! application binary's `taskmanager` command). Such a TaskManager lists the function ids it
//! carries when it registers. The rules, in one place:
//!
//! - A TaskManager *carries* a job when it carries every function the job's graph names
//!   ([`required_functions`]); a job without user operators is carried by every TaskManager.
//! - Placement: slot i runs subtask i of every vertex, so every slot of a program job must be
//!   on a TaskManager that carries it; the others (session TaskManagers, `weir taskmanager`,
//!   or another application's) are skipped, and the job waits for slots as any job does.
//! - Submission over gRPC is refused when no registered TaskManager carries the job, naming a
//!   missing function and how to start the right TaskManagers ([`refusal`]). Recovery by a
//!   restarted JobManager is not refused: no TaskManager has registered again yet, so the job
//!   waits for carrying ones within `slot.request.timeout`. The embedded cluster submits
//!   before its TaskManagers registered, and is not refused either.

use std::collections::{BTreeSet, HashSet};
use weir_core::config::Config;
use weir_core::graph::{JobGraph, OperatorSpec};
use weir_core::settings::{resolve_checkpoint_dir, JobSettings};

/// The ids of the user functions `graph` runs.
pub(crate) fn required_functions(graph: &JobGraph) -> BTreeSet<String> {
    graph
        .vertices
        .iter()
        .flat_map(|v| &v.operators)
        .filter_map(|op| match &op.spec {
            OperatorSpec::User { function, .. } => Some(function.clone()),
            _ => None,
        })
        .collect()
}

/// Whether a TaskManager carrying `carried` can run every subtask of a job needing `required`.
pub(crate) fn carries(carried: &HashSet<String>, required: &BTreeSet<String>) -> bool {
    required.iter().all(|f| carried.contains(f))
}

/// Why a program job needing `required` cannot be accepted by a cluster whose TaskManagers
/// carry `registered` (one set per TaskManager); `None` if one of them carries it.
pub(crate) fn refusal<'a>(required: &BTreeSet<String>, registered: impl IntoIterator<Item = &'a HashSet<String>>) -> Option<String> {
    if required.is_empty() {
        return None;
    }
    let registered: Vec<&HashSet<String>> = registered.into_iter().collect();
    if registered.iter().any(|c| carries(c, required)) {
        return None;
    }
    const HOW: &str = "a program's functions run only on TaskManagers started from the application's own binary \
                       (`<application> taskmanager --jobmanager HOST:PORT`); session TaskManagers (`weir taskmanager`) \
                       run job files and SQL only";
    if registered.is_empty() {
        return Some(format!("no TaskManager is registered to run the program's functions; start them first: {HOW}"));
    }
    // The TaskManager closest to carrying the job names what it lacks.
    let best = registered.iter().max_by_key(|c| required.iter().filter(|f| c.contains(*f)).count()).copied().unwrap_or(registered[0]);
    let missing: Vec<&str> = required.iter().filter(|f| !best.contains(*f)).map(String::as_str).collect();
    Some(format!(
        "no registered TaskManager carries the program's function '{}'{}: {HOW}",
        missing[0],
        match missing.len() {
            1 => String::new(),
            n => format!(" (and {} more)", n - 1),
        }
    ))
}

/// The effective configuration of a program job: the cluster's (`base`) with the program's
/// keys over it, the checkpoint directory resolved, and its typed settings. A cluster-only
/// key (`security.*`) among the program's is refused, without echoing its value.
pub(crate) fn job_config(base: &Config, program: &Config, restoring: bool) -> Result<(Config, JobSettings), String> {
    for k in program.explicit().keys() {
        if weir_core::settings::is_cluster_only_key(k) {
            return Err(format!("'{k}' is a cluster setting: it cannot be set for one job"));
        }
    }
    let mut config = base.clone();
    config.merge(program);
    let restoring = restoring || config.text(weir_core::config::keys::SAVEPOINT_PATH).is_some();
    resolve_checkpoint_dir(&mut config, restoring).map_err(|e| e.to_string())?;
    let settings = JobSettings::from_config(&config).map_err(|e| e.to_string())?;
    Ok((config, settings))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(ids: &[&str]) -> HashSet<String> {
        ids.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn a_program_job_is_refused_naming_a_function_no_taskmanager_carries() {
        let required: BTreeSet<String> = ["counts", "tokenize"].iter().map(|s| s.to_string()).collect();
        let none = refusal(&required, []).unwrap();
        assert!(none.contains("no TaskManager is registered") && none.contains("taskmanager --jobmanager"), "{none}");
        let session = set(&[]);
        let err = refusal(&required, [&session]).unwrap();
        assert!(err.contains("function 'counts' (and 1 more)") && err.contains("weir taskmanager"), "{err}");
        let partial = set(&["counts"]);
        let err = refusal(&required, [&session, &partial]).unwrap();
        assert!(err.contains("function 'tokenize':"), "{err}");
        let app = set(&["counts", "tokenize", "other"]);
        assert_eq!(refusal(&required, [&session, &app]), None);
        assert_eq!(refusal(&BTreeSet::new(), []), None, "a job without user operators needs no functions");
    }
}
