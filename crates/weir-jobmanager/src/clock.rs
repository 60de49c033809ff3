//! Time for the JobManager: the current [`Now`] handed to the pure state machines, and
//! durations written the way users configure them.

use crate::coordinator::Now;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch (what users see: trigger times, start and end times).
pub fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

/// The time now, for an event of a state machine.
pub fn now() -> Now {
    Now { instant: Instant::now(), epoch_ms: now_ms() }
}

/// A duration as configured: `10s`, `1min`, `1s 500ms`.
pub fn humanize(d: Duration) -> String {
    humantime::format_duration(Duration::from_millis(d.as_millis() as u64)).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_like_the_configuration() {
        assert_eq!(humanize(Duration::from_secs(10)), "10s");
        assert_eq!(humanize(Duration::from_millis(1500)), "1s 500ms");
        assert_eq!(humanize(Duration::from_secs(300)), "5m");
    }
}
