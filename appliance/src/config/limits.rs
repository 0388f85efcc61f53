//! `limits`: connection limits and timeouts of every listener, and the descriptor reserve.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Connection limits and timeouts (the README's "Limits" table).
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct LimitsConfig {
    /// Connections open at once on each NVMe/TCP listener (each controller's port, discovery).
    #[serde(default = "default_nvme_tcp_connections")]
    pub nvme_tcp_connections: usize,
    /// Connections open at once on each stream listener (control, HTTP, each data port).
    #[serde(default = "default_stream_connections")]
    pub stream_connections: usize,
    /// Connections open at once on the admin API.
    #[serde(default = "default_admin_connections")]
    pub admin_connections: usize,
    /// From accept to the end of the first exchange: ICReq and Connect, an HTTP request
    /// head, a stream ATTACH or control request (milliseconds).
    #[serde(default = "default_handshake_timeout")]
    pub handshake_timeout_ms: u64,
    /// A connection with nothing in flight and no keep-alive of its own that stays silent
    /// this long is closed (milliseconds).
    #[serde(default = "default_idle_timeout")]
    pub idle_timeout_ms: u64,
    /// A peer that takes no bytes of a pending send for this long is dropped (milliseconds).
    #[serde(default = "default_send_timeout")]
    pub send_timeout_ms: u64,
    /// Descriptors kept for everything that is not a connection (devices, files, runtimes);
    /// connections of all listeners together may use the rest of the process's limit.
    #[serde(default = "default_reserved_descriptors")]
    pub reserved_descriptors: usize,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            nvme_tcp_connections: default_nvme_tcp_connections(),
            stream_connections: default_stream_connections(),
            admin_connections: default_admin_connections(),
            handshake_timeout_ms: default_handshake_timeout(),
            idle_timeout_ms: default_idle_timeout(),
            send_timeout_ms: default_send_timeout(),
            reserved_descriptors: default_reserved_descriptors(),
        }
    }
}

fn default_nvme_tcp_connections() -> usize {
    1024
}
fn default_stream_connections() -> usize {
    1024
}
fn default_admin_connections() -> usize {
    64
}
fn default_handshake_timeout() -> u64 {
    10_000
}
fn default_idle_timeout() -> u64 {
    300_000
}
fn default_send_timeout() -> u64 {
    30_000
}
fn default_reserved_descriptors() -> usize {
    256
}

impl LimitsConfig {
    fn with_connections(&self, max_connections: usize) -> listener::Limits {
        listener::Limits {
            max_connections,
            handshake_timeout: Duration::from_millis(self.handshake_timeout_ms),
            idle_timeout: Duration::from_millis(self.idle_timeout_ms),
            send_timeout: Duration::from_millis(self.send_timeout_ms),
        }
    }

    /// The NVMe/TCP listeners' limits.
    pub fn nvme_tcp(&self) -> listener::Limits {
        self.with_connections(self.nvme_tcp_connections)
    }

    /// The stream service's listeners' limits.
    pub fn stream(&self) -> listener::Limits {
        self.with_connections(self.stream_connections)
    }

    /// The admin API's limits.
    pub fn admin(&self) -> listener::Limits {
        self.with_connections(self.admin_connections)
    }

    /// Range checks; the error is (key under `limits`, message).
    pub(super) fn validate(&self) -> Result<(), (&'static str, String)> {
        for (key, n) in [
            ("nvme_tcp_connections", self.nvme_tcp_connections),
            ("stream_connections", self.stream_connections),
            ("admin_connections", self.admin_connections),
        ] {
            if !(1..=1_000_000).contains(&n) {
                return Err((key, "must be in 1..=1000000".into()));
            }
        }
        for (key, ms) in [
            ("handshake_timeout_ms", self.handshake_timeout_ms),
            ("idle_timeout_ms", self.idle_timeout_ms),
            ("send_timeout_ms", self.send_timeout_ms),
        ] {
            if !(100..=86_400_000).contains(&ms) {
                return Err((key, "must be in 100..=86400000 (100 ms to one day)".into()));
            }
        }
        if !(32..=1_000_000).contains(&self.reserved_descriptors) {
            return Err(("reserved_descriptors", "must be in 32..=1000000".into()));
        }
        Ok(())
    }
}
