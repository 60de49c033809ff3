//! Retrying with exponential backoff: one policy type and one async loop for every place that
//! calls a peer which may not be up yet (a TaskManager registering with its JobManager, a
//! data connection to another TaskManager, a report to the JobManager).
//!
//! [`Backoff`] says how long to wait after each failed attempt (`initial_delay`, multiplied by
//! `multiplier` after every attempt, never more than `max_delay`) and how many attempts to
//! make in all. [`retry`] runs an operation under a policy; the caller's `should_retry`
//! decides, per error, whether another attempt is worth making (an unreachable peer is, a
//! refusal is not) and is where callers log. [`retry`] waits on tokio's clock; [`retry_with`]
//! takes the wait as a function, which is how the tests run it on a virtual clock without real
//! sleeps (and without tokio's `test-util`, whose pausable clock would otherwise be compiled
//! into every build that shares the test build's dependencies).
//!
//! This is for calls that fail transiently. Restart strategies (how a failed job restarts)
//! are policy of the JobManager, not retries, and live there.

use std::future::Future;
use std::time::Duration;

/// An exponential backoff policy: the waits between the attempts of one operation.
///
/// The wait after failed attempt `n` (counting from 1) is
/// `min(initial_delay * multiplier^(n-1), max_delay)`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Backoff {
    /// The wait after the first failed attempt.
    pub initial_delay: Duration,
    /// What each wait is multiplied by to give the next one (at least 1).
    pub multiplier: f64,
    /// The longest wait.
    pub max_delay: Duration,
    /// Attempts in all, the first one included; `None` keeps trying until the operation
    /// succeeds or `should_retry` says no.
    pub max_attempts: Option<u32>,
}

impl Backoff {
    /// Waits doubling from `initial_delay` up to `max_delay`, with no limit on attempts.
    pub const fn new(initial_delay: Duration, max_delay: Duration) -> Self {
        Backoff { initial_delay, multiplier: 2.0, max_delay, max_attempts: None }
    }

    pub const fn with_multiplier(self, multiplier: f64) -> Self {
        Backoff { multiplier, ..self }
    }

    /// At most `attempts` attempts in all (the first one included).
    pub const fn with_max_attempts(self, attempts: u32) -> Self {
        Backoff { max_attempts: Some(attempts), ..self }
    }

    /// The wait after failed attempt `attempt` (counting from 1), or None if the policy allows
    /// no further attempt.
    pub fn delay_after(&self, attempt: u32) -> Option<Duration> {
        if self.max_attempts.is_some_and(|max| attempt >= max) {
            return None;
        }
        let factor = self.multiplier.max(1.0).powi(attempt.saturating_sub(1).min(i32::MAX as u32) as i32);
        // Past max_delay (or not finite) the product is clamped, so it never overflows.
        let secs = self.initial_delay.as_secs_f64() * factor;
        Some(if secs.is_finite() && secs < self.max_delay.as_secs_f64() { Duration::from_secs_f64(secs) } else { self.max_delay })
    }
}

/// A failed attempt, as `should_retry` sees it.
#[derive(Debug)]
pub struct Failure<'a, E> {
    /// The error of this attempt.
    pub error: &'a E,
    /// Which attempt failed, counting from 1.
    pub attempt: u32,
    /// How long [`retry`] waits before the next attempt if `should_retry` says yes.
    pub next_delay: Duration,
}

/// Runs `operation` until it succeeds, the policy allows no further attempt, or `should_retry`
/// returns false for an error; returns the success or the last error.
///
/// `should_retry` is called after every failed attempt that the policy would follow with
/// another one (not after the last one: its error is returned), before the wait. To stop on
/// shutdown, drop the future (e.g. in `tokio::select!`): it holds nothing that needs cleaning
/// up between attempts.
pub async fn retry<T, E, F, Fut>(policy: &Backoff, operation: F, should_retry: impl FnMut(&Failure<'_, E>) -> bool) -> Result<T, E>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    retry_with(policy, operation, should_retry, tokio::time::sleep).await
}

/// [`retry`], waiting with `sleep` between attempts.
pub async fn retry_with<T, E, F, Fut, S, SleepFut>(
    policy: &Backoff,
    mut operation: F,
    mut should_retry: impl FnMut(&Failure<'_, E>) -> bool,
    mut sleep: S,
) -> Result<T, E>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
    S: FnMut(Duration) -> SleepFut,
    SleepFut: Future<Output = ()>,
{
    let mut attempt = 1;
    loop {
        let error = match operation().await {
            Ok(value) => return Ok(value),
            Err(error) => error,
        };
        let Some(next_delay) = policy.delay_after(attempt) else { return Err(error) };
        if !should_retry(&Failure { error: &error, attempt, next_delay }) {
            return Err(error);
        }
        sleep(next_delay).await;
        attempt += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;

    /// A virtual clock: its `sleep` advances it at once.
    #[derive(Default)]
    struct Clock(Cell<Duration>);

    impl Clock {
        fn elapsed(&self) -> Duration {
            self.0.get()
        }

        fn sleep(&self) -> impl FnMut(Duration) -> std::future::Ready<()> + '_ {
            move |d| {
                self.0.set(self.0.get() + d);
                std::future::ready(())
            }
        }
    }

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn delays_grow_by_the_multiplier_up_to_the_maximum() {
        let policy = Backoff::new(50 * MS, 1000 * MS).with_max_attempts(8);
        let delays: Vec<Option<Duration>> = (1..=8).map(|n| policy.delay_after(n)).collect();
        let ms = |v: u32| Some(v * MS);
        assert_eq!(delays, vec![ms(50), ms(100), ms(200), ms(400), ms(800), ms(1000), ms(1000), None]);
        let tripling = Backoff::new(10 * MS, 100 * MS).with_multiplier(3.0);
        assert_eq!((1..=4).map(|n| tripling.delay_after(n)).collect::<Vec<_>>(), vec![ms(10), ms(30), ms(90), ms(100)]);
        // Unlimited attempts never overflow, and a multiplier below 1 does not shrink waits.
        assert_eq!(Backoff::new(MS, 5 * MS).delay_after(u32::MAX), ms(5));
        assert_eq!(Backoff::new(7 * MS, 9 * MS).with_multiplier(0.5).delay_after(3), ms(7));
        assert_eq!(Backoff::new(MS, MS).with_max_attempts(1).delay_after(1), None);
    }

    #[tokio::test]
    async fn retries_until_success_waiting_the_policys_delays() {
        let start = Clock::default();
        let calls = Cell::new(0);
        let mut seen = Vec::new();
        let result: Result<u32, &str> = retry_with(
            &Backoff::new(50 * MS, 150 * MS),
            || {
                calls.set(calls.get() + 1);
                let n = calls.get();
                async move {
                    if n < 4 {
                        Err("unreachable")
                    } else {
                        Ok(n)
                    }
                }
            },
            |f| {
                seen.push((f.attempt, f.next_delay, start.elapsed()));
                true
            },
            start.sleep(),
        )
        .await;
        assert_eq!(result, Ok(4));
        // Each decision is made right after its attempt, before the wait.
        assert_eq!(seen, vec![(1, 50 * MS, Duration::ZERO), (2, 100 * MS, 50 * MS), (3, 150 * MS, 150 * MS)]);
        assert_eq!(start.elapsed(), 300 * MS);
    }

    #[tokio::test]
    async fn gives_up_after_max_attempts_with_the_last_error() {
        let start = Clock::default();
        let calls = Cell::new(0);
        let mut decisions = 0;
        let result: Result<(), u32> = retry_with(
            &Backoff::new(10 * MS, 1000 * MS).with_max_attempts(3),
            || {
                calls.set(calls.get() + 1);
                let n = calls.get();
                async move { Err(n) }
            },
            |_| {
                decisions += 1;
                true
            },
            start.sleep(),
        )
        .await;
        assert_eq!(result, Err(3));
        assert_eq!(decisions, 2, "not asked after the last attempt");
        assert_eq!(start.elapsed(), 30 * MS);
    }

    #[tokio::test]
    async fn stops_at_once_when_should_retry_says_no() {
        let start = Clock::default();
        let calls = Cell::new(0);
        let result: Result<(), &str> = retry_with(
            &Backoff::new(10 * MS, 1000 * MS),
            || {
                calls.set(calls.get() + 1);
                let error = if calls.get() == 1 { "unreachable" } else { "refused" };
                async move { Err(error) }
            },
            |f| *f.error == "unreachable",
            start.sleep(),
        )
        .await;
        assert_eq!(result, Err("refused"));
        assert_eq!(calls.get(), 2);
        assert_eq!(start.elapsed(), 10 * MS);
    }
}
