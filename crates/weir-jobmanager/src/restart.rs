//! Restart strategies at work: given a job's [`RestartStrategy`] (`restart-strategy.*`) and its
//! history of failures, whether the next failure restarts the job, and after what delay.
//!
//! [`RestartTracker`] knows nothing of jobs or clocks: the caller passes the time of the
//! failure and how long the attempt had been running, so every strategy is tested with
//! made-up times.

use std::collections::VecDeque;
use std::time::{Duration, Instant};
use weir_core::settings::RestartStrategy;

/// The restart history of one job under its strategy.
#[derive(Debug, Clone)]
pub struct RestartTracker {
    strategy: RestartStrategy,
    /// Restarts granted so far.
    restarts: u32,
    /// exponential-delay: the last delay granted.
    backoff: Option<Duration>,
    /// failure-rate: the times of recent failures.
    failures: VecDeque<Instant>,
}

impl RestartTracker {
    pub fn new(strategy: RestartStrategy) -> Self {
        Self { strategy, restarts: 0, backoff: None, failures: VecDeque::new() }
    }

    /// Restarts granted so far.
    pub fn restarts(&self) -> u32 {
        self.restarts
    }

    /// A failure at `now`, after the attempt had been running for `ran_for`: the delay before
    /// the next attempt, or `None` if the job must fail for good.
    pub fn on_failure(&mut self, now: Instant, ran_for: Duration) -> Option<Duration> {
        let delay = match &self.strategy {
            RestartStrategy::None => None,
            RestartStrategy::FixedDelay { attempts, delay } => (self.restarts < *attempts).then_some(*delay),
            RestartStrategy::ExponentialDelay { initial, max, multiplier, reset_after } => {
                let next = match self.backoff {
                    Some(prev) if ran_for < *reset_after => prev.saturating_mul(*multiplier).min(*max),
                    _ => *initial,
                };
                self.backoff = Some(next);
                Some(next)
            }
            RestartStrategy::FailureRate { max_failures, interval, delay } => {
                while self.failures.front().is_some_and(|t| now.duration_since(*t) >= *interval) {
                    self.failures.pop_front();
                }
                self.failures.push_back(now);
                (self.failures.len() as u64 <= *max_failures).then_some(*delay)
            }
        };
        if delay.is_some() {
            self.restarts += 1;
        }
        delay
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    #[test]
    fn none_never_restarts() {
        let mut t = RestartTracker::new(RestartStrategy::None);
        assert_eq!(t.on_failure(Instant::now(), S), None);
        assert_eq!(t.restarts(), 0);
    }

    #[test]
    fn fixed_delay_restarts_up_to_its_attempts() {
        let mut t = RestartTracker::new(RestartStrategy::FixedDelay { attempts: 2, delay: 3 * S });
        let now = Instant::now();
        assert_eq!(t.on_failure(now, S), Some(3 * S));
        assert_eq!(t.on_failure(now, S), Some(3 * S));
        assert_eq!(t.on_failure(now, S), None);
        assert_eq!(t.restarts(), 2);
    }

    #[test]
    fn exponential_delay_grows_caps_and_resets_after_a_long_run() {
        let strategy = RestartStrategy::ExponentialDelay { initial: S, max: 5 * S, multiplier: 2, reset_after: 60 * S };
        let mut t = RestartTracker::new(strategy);
        let now = Instant::now();
        let delays: Vec<_> = (0..5).map(|_| t.on_failure(now, S).unwrap()).collect();
        assert_eq!(delays, [S, 2 * S, 4 * S, 5 * S, 5 * S]);
        // An attempt that ran past the reset threshold starts over from the initial backoff.
        assert_eq!(t.on_failure(now, 61 * S), Some(S));
        assert_eq!(t.on_failure(now, S), Some(2 * S));
    }

    #[test]
    fn failure_rate_fails_when_too_many_failures_fall_in_one_interval() {
        let mut t = RestartTracker::new(RestartStrategy::FailureRate { max_failures: 2, interval: 10 * S, delay: S });
        let t0 = Instant::now();
        assert_eq!(t.on_failure(t0, S), Some(S));
        assert_eq!(t.on_failure(t0 + 5 * S, S), Some(S));
        // The first failure left the window: two in the window again.
        assert_eq!(t.on_failure(t0 + 11 * S, S), Some(S));
        // Three within 10 s.
        assert_eq!(t.on_failure(t0 + 12 * S, S), None);
    }
}
