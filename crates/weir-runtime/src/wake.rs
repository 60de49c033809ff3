//! The one thing a task thread waits on.
//!
//! A task never blocks inside an operator or a send; when it cannot go on (no input, or an
//! output without room) it waits on its [`Waker`], until a deadline (a buffer flush, an
//! alignment timeout, a throttle) at the latest. Everything that may let it go on notifies
//! that waker: its input gate when an item arrives (data or a priority event), the input gates
//! of downstream tasks and the network writer when an output channel regains room (a local
//! one once drained to half its credits), the TaskManager when it hands the task a command or
//! cancels it.
//!
//! A notification is a flag, not a count: one that arrives while the task is busy makes its
//! next wait return at once, so none is lost, and many coalesce into one wake-up. The task
//! re-checks everything after each wake, so a spurious wake-up costs one loop.

use parking_lot::{Condvar, Mutex};
use std::time::Instant;

/// A task's wake-up flag and the condition variable it sleeps on.
#[derive(Default)]
pub struct Waker {
    /// Set by [`Waker::notify`], cleared by the wait that observes it.
    notified: Mutex<bool>,
    /// Signalled by [`Waker::notify`].
    cv: Condvar,
}

impl Waker {
    /// A waker with no pending notification.
    pub fn new() -> Self {
        Self::default()
    }

    /// Wakes the task's current or next wait.
    pub fn notify(&self) {
        let mut n = self.notified.lock();
        if !*n {
            *n = true;
            drop(n);
            self.cv.notify_one();
        }
    }

    /// Waits until notified or until `deadline` (forever with `None`). Returns at once, clearing
    /// it, if a notification arrived since the last wait. Returns whether it was notified.
    pub fn wait(&self, deadline: Option<Instant>) -> bool {
        let mut n = self.notified.lock();
        loop {
            if *n {
                *n = false;
                return true;
            }
            match deadline {
                None => self.cv.wait(&mut n),
                Some(d) => {
                    if Instant::now() >= d || self.cv.wait_until(&mut n, d).timed_out() {
                        let was = *n;
                        *n = false;
                        return was;
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::Duration;

    #[test]
    fn a_notification_before_the_wait_is_not_lost() {
        let w = Waker::new();
        w.notify();
        assert!(w.wait(None), "the earlier notification ends the wait at once");
        assert!(!w.wait(Some(Instant::now())), "and is consumed");
    }

    #[test]
    fn another_thread_wakes_a_waiting_task() {
        let w = Arc::new(Waker::new());
        let w2 = w.clone();
        let t = std::thread::spawn(move || w2.wait(Some(Instant::now() + Duration::from_secs(60))));
        // However the two threads interleave, the notification is seen.
        w.notify();
        assert!(t.join().unwrap());
    }
}
