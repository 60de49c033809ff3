//! Restart strategies (`restart-strategy.type`): whether a failed job restarts, and after
//! how long. Unset with checkpointing enabled means `exponential-delay`, as in Flink.

use crate::state::Job;
use std::time::{Duration, Instant};
use weir_core::config::keys;

/// The delay before the next restart of `job`, or None if it must fail for good.
pub(crate) fn next_delay(job: &mut Job) -> Option<Duration> {
    let c = &job.config;
    let strategy = if c.is_set(keys::RESTART_STRATEGY) {
        c.get(keys::RESTART_STRATEGY)
    } else if c.optional_duration(keys::CHECKPOINT_INTERVAL).is_some() {
        "exponential-delay"
    } else {
        "none"
    };
    match strategy {
        "fixed-delay" => (job.restarts < c.int(keys::RESTART_ATTEMPTS) as u32).then(|| c.duration(keys::RESTART_DELAY)),
        "exponential-delay" => {
            let initial = c.duration(keys::RESTART_EXP_INITIAL);
            let max = c.duration(keys::RESTART_EXP_MAX);
            let reset = c.duration(keys::RESTART_EXP_RESET);
            let next = match job.backoff {
                Some(prev) if job.running_since.elapsed() < reset => (prev * c.int(keys::RESTART_EXP_MULTIPLIER) as u32).min(max),
                _ => initial,
            };
            job.backoff = Some(next);
            Some(next)
        }
        "failure-rate" => {
            let now = Instant::now();
            let interval = c.duration(keys::RESTART_RATE_INTERVAL);
            job.failure_times.retain(|t| now.duration_since(*t) < interval);
            job.failure_times.push(now);
            (job.failure_times.len() as u64 <= c.int(keys::RESTART_RATE_MAX)).then(|| c.duration(keys::RESTART_RATE_DELAY))
        }
        _ => None,
    }
}
