//! The TaskManager's network memory (`taskmanager.memory.network.max`), handed out per job
//! attempt when its tasks are deployed, as Flink's network buffer pool is.
//!
//! Network memory is bounded by construction: a channel holds at most its credits at the
//! receiver (`taskmanager.network.memory.buffers-per-channel`), a gate with remote channels at
//! most its floating credits besides (`taskmanager.network.memory.floating-buffers-per-gate`),
//! a channel its queue at a remote sender
//! (`taskmanager.network.sender-queue-buffers`) and one partly filled buffer at the sender, each
//! about `taskmanager.memory.segment-size`. What a deployment can hold at once is therefore
//! known before it runs: it is reserved here, and a deployment that needs more than is free
//! fails at once with an error that says what it needs and which keys change that, rather
//! than growing past the bound while it runs.

use parking_lot::Mutex;
use std::sync::Arc;
use weir_core::config::keys;
use weir_core::settings::NetworkConfig;

/// What the tasks of one deployment need, in buffers of one segment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NetworkDemand {
    /// Input channels of the deployed subtasks (local and remote).
    pub input_channels: u64,
    /// Input gates with at least one remote channel: each has floating credits.
    pub remote_gates: u64,
    /// Output channels to subtasks on other TaskManagers.
    pub remote_output_channels: u64,
    /// Every output channel (each may hold one partly filled buffer).
    pub output_channels: u64,
}

impl NetworkDemand {
    /// Bytes of network memory these channels can hold at most.
    pub fn bytes(&self, network: &NetworkConfig) -> u64 {
        let buffers = self.input_channels * network.buffers_per_channel as u64
            + self.remote_gates * network.floating_buffers_per_gate as u64
            + self.remote_output_channels * network.sender_queue_buffers as u64
            + self.output_channels;
        buffers.saturating_mul(network.segment_size as u64)
    }
}

/// The pool: its size and what is reserved.
#[derive(Debug)]
pub struct NetworkMemory {
    max: u64,
    reserved: Mutex<u64>,
}

/// Network memory reserved for one job attempt; given back when dropped.
#[derive(Debug)]
pub struct Reservation {
    pool: Arc<NetworkMemory>,
    bytes: u64,
}

impl Drop for Reservation {
    fn drop(&mut self) {
        let mut reserved = self.pool.reserved.lock();
        *reserved = reserved.saturating_sub(self.bytes);
    }
}

impl NetworkMemory {
    /// A pool of `max` bytes.
    pub fn new(max: u64) -> Arc<Self> {
        Arc::new(Self { max, reserved: Mutex::new(0) })
    }

    /// Bytes reserved now.
    pub fn reserved(&self) -> u64 {
        *self.reserved.lock()
    }

    /// Reserves what `demand` needs, or says why it cannot: how much it needs, from which
    /// channels, how much is free, and the keys that change either.
    pub fn reserve(self: &Arc<Self>, demand: NetworkDemand, network: &NetworkConfig) -> Result<Reservation, String> {
        let bytes = demand.bytes(network);
        let mut reserved = self.reserved.lock();
        let free = self.max.saturating_sub(*reserved);
        if bytes > free {
            return Err(format!(
                "not enough network memory: the tasks need {} ({} input channels × {} buffers, {} gates with remote inputs × {} \
                 floating buffers, {} remote output channels × {} queued buffers and {} partly filled output buffers, of {} each), \
                 but {} of the {} of {} are free; raise {}, or lower the parallelism, {}, {}, {} or {}",
                human(bytes),
                demand.input_channels,
                network.buffers_per_channel,
                demand.remote_gates,
                network.floating_buffers_per_gate,
                demand.remote_output_channels,
                network.sender_queue_buffers,
                demand.output_channels,
                human(network.segment_size as u64),
                human(free),
                human(self.max),
                keys::NETWORK_MEMORY_MAX,
                keys::NETWORK_MEMORY_MAX,
                keys::BUFFERS_PER_CHANNEL,
                keys::FLOATING_BUFFERS_PER_GATE,
                keys::SENDER_QUEUE_BUFFERS,
                keys::SEGMENT_SIZE,
            ));
        }
        *reserved += bytes;
        Ok(Reservation { pool: self.clone(), bytes })
    }
}

/// Bytes for people: `512 B`, `32 KiB`, `1.5 MiB`.
fn human(b: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if b < 1024 {
        return format!("{b} B");
    }
    let mut v = b as f64 / 1024.0;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    if v.fract() == 0.0 {
        format!("{v:.0} {}", UNITS[unit])
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn network() -> NetworkConfig {
        NetworkConfig {
            segment_size: 32 << 10,
            buffers_per_channel: 2,
            floating_buffers_per_gate: 3,
            sender_queue_buffers: 2,
            buffer_timeout: Duration::from_millis(100),
            memory_max: 1 << 20,
            debloat: None,
        }
    }

    #[test]
    fn reservations_are_bounded_and_given_back() {
        let pool = NetworkMemory::new(1 << 20);
        // 4 inputs × 2 + 2 remote × 2 + 4 outputs = 16 buffers of 32 KiB = 512 KiB.
        let demand = NetworkDemand { input_channels: 4, remote_output_channels: 2, output_channels: 4, remote_gates: 0 };
        assert_eq!(demand.bytes(&network()), 512 << 10);
        // A gate with remote inputs holds its floating buffers besides: 3 more.
        assert_eq!(NetworkDemand { remote_gates: 1, ..demand }.bytes(&network()), (16 + 3) * (32 << 10));
        let first = pool.reserve(demand, &network()).unwrap();
        let second = pool.reserve(demand, &network()).unwrap();
        assert_eq!(pool.reserved(), 1 << 20);
        let err = pool.reserve(NetworkDemand { output_channels: 1, ..Default::default() }, &network()).unwrap_err();
        assert!(err.contains("need 32 KiB") && err.contains("0 B of the 1 MiB of taskmanager.memory.network.max are free"), "{err}");
        drop(first);
        assert_eq!(pool.reserved(), 512 << 10);
        let err = pool.reserve(NetworkDemand { input_channels: 16, remote_gates: 1, ..Default::default() }, &network()).unwrap_err();
        assert!(err.contains("16 input channels × 2 buffers") && err.contains("taskmanager.network.memory.buffers-per-channel"), "{err}");
        assert!(err.contains("1 gates with remote inputs × 3 floating buffers"), "{err}");
        drop(second);
        assert_eq!(pool.reserved(), 0);
    }

    #[test]
    fn sizes_read_like_sizes() {
        assert_eq!(human(512), "512 B");
        assert_eq!(human(32 << 10), "32 KiB");
        assert_eq!(human(3 << 19), "1.5 MiB");
        assert_eq!(human(512 << 20), "512 MiB");
    }
}
